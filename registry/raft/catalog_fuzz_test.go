package raft

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// FuzzRegisterBody decodes a /v1/catalog/register body as the API will and
// validates it: a refusal is a FieldError naming a field; a valid body
// applies to the state machine, failing only on a check of a service the
// node does not have, and then leaves the state as it was; a body applied
// twice changes nothing the second time.
func FuzzRegisterBody(f *testing.F) {
	for _, s := range []string{
		esmBody,
		`{"Node":"n","Address":"1.2.3.4"}`,
		`{"Node":"n","ID":"40e4a748-2192-161a-0510-9bf59fe950b5","Address":"h","TaggedAddresses":{"wan":"5.6.7.8"},"SkipNodeUpdate":true}`,
		`{"Node":"n","Address":"a","Service":{"ID":"x","Service":"s","Weights":{"Passing":3,"Warning":0},"EnableTagOverride":true,"Meta":{"k":"v"}}}`,
		`{"Node":"n","Address":"a","Checks":[{"Name":"c"},null,{"CheckID":"d","ServiceID":"nope"}]}`,
		`{"Node":"n","Address":"a","Service":{"Service":"s","Address":"::"}}`,
		`{"Node":"n\u0000","Address":"a"}`,
		`{"Node":"N","Address":"a","Check":{"Node":"n","Name":"x","Status":"maintenance"}}`,
		`[]`, `{"Service":7}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req RegisterRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		if err := req.Validate(); err != nil {
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field == "" || fe.Msg == "" {
				t.Fatalf("Validate(%s): %v is not a FieldError naming a field", body, err)
			}
			return
		}
		a := newApplier(t, nil)
		r := a.apply(command{Type: cmdCatalogRegister, Register: &req})
		if r.Err != nil {
			if !errors.Is(r.Err, ErrMissingService) {
				t.Fatalf("a valid body failed to apply: %v\n%s", r.Err, body)
			}
			if len(a.f.State().ExternalNodes()) != 0 {
				t.Fatal("a failed registration left a node")
			}
			return
		}
		en, ok := a.f.State().ExternalNode(req.Node)
		if !ok {
			t.Fatalf("registered node %q not in the state", req.Node)
		}
		idx := a.f.State().CatalogIndex()
		a.apply(command{Type: cmdCatalogRegister, Register: &req})
		if en2, _ := a.f.State().ExternalNode(req.Node); en2 != en || a.f.State().CatalogIndex() != idx {
			t.Fatalf("the same registration twice changed the state\n%s", body)
		}
	})
}
