package api

import (
	"errors"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// FuzzCatalogRegisterBody: /v1/catalog/register's body. A refusal is a
// *registry.FieldError of one line; an accepted body is a request that
// validates, with a datacenter, and weights that are absent or valid.
func FuzzCatalogRegisterBody(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `null`, `[1]`,
		`{"Node":"ext","Address":"10.0.0.1"}`,
		`{"Node":"ext","Address":"10.0.0.1","Service":{"Service":"db","Port":5432,"Weights":{"Passing":0,"Warning":0}}}`,
		`{"Node":"ext","Address":"a","Service":{"ID":"x","Service":"s","Weights":{"Passing":3,"Warning":0}},"Check":{"CheckID":"c","ServiceID":"x","Status":"passing"}}`,
		`{"Node":"ext","Address":"a","Service":{"Service":"s","Kind":"connect-proxy"}}`,
		`{"Node":"ext","Address":"a","Service":{"Service":"s","Connect":{"SidecarService":{}}}}`,
		`{"Node":"ext","SkipNodeUpdate":true,"Checks":[{"Node":"other","CheckID":"c"}]}`,
		`{"Node":"ext","Address":"a","Datacenter":"dc9","NodeMeta":{"consul-x":"1"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRegister(body, "dc1")
		if err != nil {
			var fe *registry.FieldError
			if !errors.As(err, &fe) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("a refusal that is not one line naming a field: %q", err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("accepted, yet Validate says %v", err)
		}
		if req.Datacenter == "" {
			t.Fatal("accepted without a datacenter")
		}
		if sv := req.Service; sv != nil && sv.Weights != nil && sv.Weights.Passing < 1 {
			t.Fatalf("accepted weights %+v", *sv.Weights)
		}
	})
}
