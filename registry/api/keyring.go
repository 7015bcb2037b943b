package api

import (
	"encoding/json"
	"net/http"
	"strings"
)

// KeyringAnswer is one node's answer to a keyring operation.
type KeyringAnswer struct {
	Node    string
	Keys    []string
	Primary string
	Error   string
}

// Keyringer is the part of the cluster that rotates the gossip key; the
// Cluster given in Config may implement it.
type Keyringer interface {
	KeyringOp(op, key string) ([]KeyringAnswer, error)
}

// keyringResponse is Consul's KeyringResponse.
type keyringResponse struct {
	WAN         bool
	Datacenter  string
	Segment     string
	Keys        map[string]int
	PrimaryKeys map[string]int
	NumNodes    int
	Messages    map[string]string
}

func (s *Server) keyringRoutes() {
	s.route("GET /v1/operator/keyring", s.keyring("list"), keyringRead) // or operator without a keyring rule
	s.route("POST /v1/operator/keyring", s.keyring("install"), keyringWrite)
	s.route("PUT /v1/operator/keyring", s.keyring("use"), keyringWrite)
	s.route("DELETE /v1/operator/keyring", s.keyring("remove"), keyringWrite)
}

func (s *Server) keyring(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		kr, ok := s.cfg.Cluster.(Keyringer)
		if !ok {
			httpError(w, http.StatusNotImplemented, "this agent runs without a cluster")
			return
		}
		var body struct{ Key string }
		if op != "list" {
			b, ok := s.readBody(w, r)
			if !ok {
				return
			}
			if err := json.Unmarshal(b, &body); err != nil || body.Key == "" {
				httpError(w, http.StatusBadRequest, "Key: give the key as {\"Key\": \"<base64>\"}")
				return
			}
		}
		answers, err := kr.KeyringOp(op, body.Key)
		if err != nil {
			code := http.StatusInternalServerError
			if strings.Contains(err.Error(), "key") && !strings.Contains(err.Error(), "not enabled") {
				code = http.StatusBadRequest
			}
			httpError(w, code, "%v", err)
			return
		}
		out := keyringResponse{Datacenter: s.reg.Config().Datacenter, Keys: map[string]int{}, PrimaryKeys: map[string]int{}, Messages: map[string]string{}, NumNodes: len(answers)}
		var failed []string
		for _, a := range answers {
			if a.Error != "" {
				out.Messages[a.Node] = a.Error
				failed = append(failed, a.Node+": "+a.Error)
			}
			for _, k := range a.Keys {
				out.Keys[k]++
			}
			if a.Primary != "" {
				out.PrimaryKeys[a.Primary]++
			}
		}
		if op != "list" && len(failed) > 0 {
			// As Consul: an operation that some node refused is an error.
			httpError(w, http.StatusInternalServerError, "%d of %d nodes failed: %s", len(failed), len(answers), strings.Join(failed, "; "))
			return
		}
		if op == "list" {
			writeJSON(w, r, []keyringResponse{out})
		}
	}
}
