package registry

import (
	"strings"
	"testing"
	"time"
)

// TestDecodeConfig: one decoder for every section of the config file.
// Keys match in Consul's spellings, map keys are kept as written, unknown
// keys and bad values are one-line errors naming the key, durations are Go
// durations, and keys the section leaves out keep their values.
func TestDecodeConfig(t *testing.T) {
	type inner struct {
		ReadTimeout time.Duration     `json:"read_timeout"`
		Meta        map[string]string `json:"meta"`
	}
	type section struct {
		MaxFails    int               `json:"max_fails"`
		NodeMeta    map[string]string `json:"node_meta"`
		Inner       inner             `json:"inner"`
		List        []inner           `json:"list"`
		KeepDefault string            `json:"keep_default"`
	}
	for _, spelling := range []string{"max_fails", "MaxFails", "max-fails", "maxfails", "MAX_FAILS"} {
		s := section{KeepDefault: "d"}
		if err := DecodeConfig("proxy", []byte(`{"`+spelling+`":3}`), &s); err != nil || s.MaxFails != 3 || s.KeepDefault != "d" {
			t.Errorf("%s: %+v %v", spelling, s, err)
		}
	}
	var s section
	in := `{"node_meta":{"rack_id":"r1","Rack-ID":"r2"},"Inner":{"ReadTimeout":"1m30s","meta":{"some_Key":"x"}},"list":[{"read-timeout":"10s"}]}`
	if err := DecodeConfig("", []byte(in), &s); err != nil {
		t.Fatal(err)
	}
	if s.NodeMeta["rack_id"] != "r1" || s.NodeMeta["Rack-ID"] != "r2" || len(s.NodeMeta) != 2 || s.Inner.Meta["some_Key"] != "x" {
		t.Errorf("map keys rewritten: %+v", s)
	}
	if s.Inner.ReadTimeout != 90*time.Second || len(s.List) != 1 || s.List[0].ReadTimeout != 10*time.Second {
		t.Errorf("durations: %+v", s)
	}
	s.Inner.ReadTimeout = time.Minute
	for _, unset := range []string{`null`, `""`} {
		if err := DecodeConfig("", []byte(`{"inner":{"read_timeout":`+unset+`}}`), &s); err != nil || s.Inner.ReadTimeout != time.Minute {
			t.Errorf("duration %s: %v %v", unset, s.Inner.ReadTimeout, err)
		}
	}
	for in, want := range map[string]string{
		`{"max_fail":3}`:                        `unknown key "proxy.max_fail"`,
		`{"inner":{"read_timeout":"soon"}}`:     `proxy.inner.read_timeout: invalid duration "soon"`,
		`{"inner":{"read_timeout":"-1s"}}`:      `proxy.inner.read_timeout: invalid duration "-1s"`,
		`{"inner":{"read_timeout":10}}`:         `proxy.inner.read_timeout: 10 is not a duration`,
		`{"list":[{},{"bogus":1}]}`:             `unknown key "proxy.list[1].bogus"`,
		`{"max_fails":"3"}`:                     `proxy.max_fails: want an integer, got a string`,
		`{"max_fails":1.5}`:                     `proxy.max_fails`,
		`{"max_fails":1,"MaxFails":2}`:          `proxy.MaxFails: given twice`,
		`{"node_meta":{"a":1}}`:                 `proxy.node_meta.a: want a string, got a number`,
		`{"inner":{"meta":{"k":"v"},"x":true}}`: `unknown key "proxy.inner.x"`,
	} {
		var s section
		err := DecodeConfig("proxy", []byte(in), &s)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", in, err, want)
		}
	}
}
