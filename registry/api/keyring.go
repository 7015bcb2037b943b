package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/pier-dev/pier/registry"
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

// keyringResponse is Consul's KeyringResponse: one gossip pool's keys.
type keyringResponse struct {
	WAN         bool
	Datacenter  string
	Segment     string
	Messages    map[string]string `json:",omitempty"`
	Keys        map[string]int
	PrimaryKeys map[string]int
	NumNodes    int
	Error       string `json:",omitempty"`
}

// A keyring operation covers every datacenter, as Consul's: the server it
// reaches (a client hands it to one) applies it to its own datacenter's
// agents, and sends it over the WAN to a server of each other datacenter,
// which applies it to its own (with the same token, checked there). A
// server's WAN pool shares its LAN pool's keyring, so the servers' answers
// are also the WAN pool's. The list answers one entry per pool: the WAN
// pool's first, then each datacenter's LAN pool, this one first; with
// ?local-only, this datacenter's LAN pool only.

// keyringFromHeader on a keyring request says it came from another
// datacenter's server: applied here only, answered node by node.
const keyringFromHeader = dcHeader

func (s *Server) keyringRoutes() {
	// The server port serves them too: a client hands them to a server, and
	// another datacenter's server sends them over the WAN.
	s.raftRoute("GET /v1/operator/keyring", s.keyring("list"), keyringRead) // or operator without a keyring rule
	s.raftRoute("POST /v1/operator/keyring", s.keyring("install"), keyringWrite)
	s.raftRoute("PUT /v1/operator/keyring", s.keyring("use"), keyringWrite)
	s.raftRoute("DELETE /v1/operator/keyring", s.keyring("remove"), keyringWrite)
}

func (s *Server) keyring(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		kr, ok := s.cfg.Cluster.(Keyringer)
		if !ok {
			httpError(w, http.StatusNotImplemented, "this agent runs without a cluster")
			return
		}
		localOnly := false
		if v := r.URL.Query().Get("local-only"); v != "" {
			var err error
			if localOnly, err = strconv.ParseBool(v); err != nil {
				httpError(w, http.StatusBadRequest, "Error parsing local-only: %v", err)
				return
			}
			if localOnly && op != "list" {
				httpError(w, http.StatusBadRequest, "Invalid use of local-only: local-only can only be set for list requests")
				return
			}
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
			r.Body = io.NopCloser(bytes.NewReader(b)) // whole again, should it go to a server
		}
		// Consul's agents hand every keyring operation to a server, which
		// knows the other datacenters.
		if s.clientOfServers() && r.Header.Get(hopHeader) == "" && len(s.cfg.Consensus.Servers()) > 0 {
			s.forwardToServer(w, r)
			return
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
		own := s.reg.Config().Datacenter
		if r.Header.Get(keyringFromHeader) != "" {
			writeJSON(w, r, answers) // to the server of the datacenter that asked
			return
		}
		var out []keyringResponse
		if s.cfg.WAN != nil && !localOnly {
			remote, err := s.keyringRemote(r.Context(), r, op, body.Key)
			if err != nil {
				httpError(w, http.StatusInternalServerError, "%v", err)
				return
			}
			byDC := map[string][]KeyringAnswer{own: answers}
			for _, d := range remote {
				byDC[d.dc] = d.answers
			}
			out = append(out, wanResponse(own, s.cfg.WAN.Members(), byDC), lanResponse(own, answers))
			for _, d := range remote {
				out = append(out, lanResponse(d.dc, d.answers))
			}
		} else {
			out = []keyringResponse{lanResponse(own, answers)}
		}
		if msg := keyringErrors(out); msg != "" {
			// As Consul: an operation (or a list) that some node could
			// not do, or did not answer, is an error.
			httpError(w, http.StatusInternalServerError, "%s", msg)
			return
		}
		if op == "list" {
			writeJSON(w, r, out)
		}
	}
}

// lanResponse sums a datacenter's answers into its LAN pool's entry.
func lanResponse(dc string, answers []KeyringAnswer) keyringResponse {
	out := newKeyringResponse(dc, false)
	for _, a := range answers {
		out.add(a.Node, a)
	}
	return out
}

// wanResponse is the WAN pool's entry: the answers of its alive members,
// the servers of every datacenter, found among their datacenters' answers
// (their WAN keyring is their LAN one). A member no answer came from is
// reported as such.
func wanResponse(own string, members []registry.Member, byDC map[string][]KeyringAnswer) keyringResponse {
	out := newKeyringResponse(own, true)
	for _, m := range members {
		if m.Status != registry.MemberAlive {
			continue
		}
		dc := m.Tags["dc"]
		node := strings.TrimSuffix(m.Name, "."+dc)
		i := slices.IndexFunc(byDC[dc], func(a KeyringAnswer) bool { return a.Node == node })
		if i < 0 {
			out.add(m.Name, KeyringAnswer{Error: "no answer"})
			continue
		}
		out.add(m.Name, byDC[dc][i])
	}
	return out
}

func newKeyringResponse(dc string, wan bool) keyringResponse {
	return keyringResponse{WAN: wan, Datacenter: dc, Keys: map[string]int{}, PrimaryKeys: map[string]int{}, Messages: map[string]string{}}
}

// add counts one member's answer.
func (k *keyringResponse) add(name string, a KeyringAnswer) {
	k.NumNodes++
	for _, key := range a.Keys {
		k.Keys[key]++
	}
	if a.Primary != "" {
		k.PrimaryKeys[a.Primary]++
	}
	if a.Error != "" {
		k.Messages[name] = a.Error
		k.Error = fmt.Sprintf("%d of %d nodes failed", len(k.Messages), k.NumNodes)
	}
}

// keyringErrors is Consul's message for the pools that failed: "WAN
// error: ...", "dc1 (LAN) error: ..." and each node's; "" when none did.
func keyringErrors(rs []keyringResponse) string {
	var parts []string
	for _, k := range rs {
		if k.Error == "" {
			continue
		}
		pool := k.Datacenter + " (LAN)"
		if k.WAN {
			pool = "WAN"
		}
		parts = append(parts, pool+" error: "+k.Error)
		for _, n := range slices.Sorted(maps.Keys(k.Messages)) {
			parts = append(parts, n+": "+k.Messages[n])
		}
	}
	return strings.Join(parts, "; ")
}

// remoteKeyring is another datacenter's answers to a keyring operation.
type remoteKeyring struct {
	dc      string
	answers []KeyringAnswer
}

// keyringRemote sends the operation to a server of every other datacenter
// at once, nearest first by the order of the answers; any datacenter that
// cannot be reached fails the whole operation, as Consul's (its own
// datacenter has applied it by then; the operations can all be repeated).
func (s *Server) keyringRemote(ctx context.Context, r *http.Request, op, key string) ([]remoteKeyring, error) {
	own := s.reg.Config().Datacenter
	var dcs []string
	for _, dc := range s.cfg.WAN.Datacenters() {
		if dc != own {
			dcs = append(dcs, dc)
		}
	}
	out := make([]remoteKeyring, len(dcs))
	errs := make([]error, len(dcs))
	var wg sync.WaitGroup
	for i, dc := range dcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = remoteKeyring{dc: dc}
			out[i].answers, errs[i] = s.keyringIn(ctx, r, dc, key)
		}()
	}
	wg.Wait()
	var failed []string
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", dcs[i], err))
		}
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("keyring %s: %s", op, strings.Join(failed, "; "))
	}
	return out, nil
}

// keyringIn runs r's operation in dc through its nearest server that can
// be dialled, with r's token.
func (s *Server) keyringIn(ctx context.Context, r *http.Request, dc, key string) ([]KeyringAnswer, error) {
	servers := s.cfg.WAN.ServerAddrs(dc)
	if len(servers) == 0 {
		return nil, fmt.Errorf("No path to datacenter %q", dc)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*s.cfg.RPCHoldTimeout)
	defer cancel()
	var body []byte
	if r.Method != http.MethodGet {
		body, _ = json.Marshal(map[string]string{"Key": key})
	}
	var last error
	for _, addr := range servers {
		req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+addr+"/v1/operator/keyring", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		if t := s.requestToken(r); t != "" {
			req.Header.Set("X-Consul-Token", t)
		}
		req.Header.Set(keyringFromHeader, s.reg.Config().Datacenter)
		resp, err := s.wanFwd.RoundTrip(req)
		if err != nil {
			if unsent(err) {
				last = err
				continue // the next server
			}
			return nil, err
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, s.cfg.MaxBodySize))
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
		}
		var answers []KeyringAnswer
		if err := json.Unmarshal(b, &answers); err != nil {
			return nil, fmt.Errorf("an answer that does not decode: %w", err)
		}
		return answers, nil
	}
	return nil, last
}
