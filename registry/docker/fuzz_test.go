package docker

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// FuzzDecodeEvents feeds the event decoder what an engine (or anything on
// the other end of the socket) might send: it must not panic, and every
// event it passes on names a container.
func FuzzDecodeEvents(f *testing.F) {
	f.Add(`{"status":"start","id":"abc","from":"img","Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"name":"x"}},"time":1}` + "\n")
	f.Add(`{"Type":"container","Action":"kill","Actor":{"ID":"abc","Attributes":{"signal":"15"}}}{"status":"die","id":"abc"}`)
	f.Add(`{"Type":"network","Action":"connect","Actor":{"ID":"n"}}`)
	f.Add(`{"Type":"container","Action":"start","Actor":{"ID":""}}[1,2]`)
	f.Add(`{"Actor":{"Attributes":{"a":1}}}`)
	f.Add("\x00\xff{")
	f.Fuzz(func(t *testing.T, in string) {
		n := 0
		err := decodeEvents(strings.NewReader(in), func(e event) error {
			n++
			if e.Actor.ID == "" || e.Type != "" && e.Type != "container" {
				t.Fatalf("passed on %+v", e)
			}
			return nil
		})
		if err == nil {
			t.Fatal("a stream that ends is an error")
		}
	})
}

// FuzzServices applies the conventions to arbitrary containers: no panic,
// and whatever they produce is a valid registration with a unique ID.
func FuzzServices(f *testing.F) {
	f.Add(`{"Name":"/web","Config":{"Image":"nginx","Env":["SERVICE_NAME=web","SERVICE_CHECK_HTTP=/"],"Labels":{"pier.service.tags":"a"}},"NetworkSettings":{"Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"}]}}}`, false)
	f.Add(`{"Name":"/x","Config":{"Image":"a/b:c","Env":["SERVICE_80_ID=same","SERVICE_81_ID=same","SERVICE_CHECK_TTL=5s"],"ExposedPorts":{"80/tcp":{},"81/udp":{}}},"HostConfig":{"NetworkMode":"host"}}`, true)
	f.Add(`{"Config":{"Env":["SERVICE_=","SERVICE_1_=x","SERVICE_CHECK_INTERVAL=-1s","SERVICE_CHECK_TCP=1"]},"NetworkSettings":{"Ports":{"0/tcp":null,"65535/sctp":[{"HostPort":"x"}]}}}`, true)
	f.Fuzz(func(t *testing.T, raw string, internal bool) {
		var c container
		if json.Unmarshal([]byte(raw), &c) != nil {
			return
		}
		regs, _ := services(&c, naming{Hostname: "h", Address: "10.0.0.1", Internal: internal})
		seen := map[string]bool{}
		for _, r := range regs {
			s := r.Service
			if s.ID == "" || s.Name == "" || seen[s.ID] || s.Port < 1 || s.Port > 65535 {
				t.Fatalf("bad registration %+v", s)
			}
			seen[s.ID] = true
			if err := registry.ValidateMeta("Meta", s.Meta); err != nil {
				t.Fatalf("meta: %v", err)
			}
		}
	})
}
