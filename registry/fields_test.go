package registry

import (
	"reflect"
	"testing"
)

// TestServiceFieldsPersist: Locality, Ports and SocketPath of an API
// registration come back after a restart.
func TestServiceFieldsPersist(t *testing.T) {
	dir := t.TempDir()
	r1 := rtNew(t, dir)
	app, _ := rtReg(t, r1, SourceAPI, `{"ID":"app-1","Name":"app","Locality":{"Region":"eu","Zone":"eu-1b"},
		"Ports":[{"Name":"http","Port":8080,"Default":true},{"Name":"admin","Port":9090}]}`)
	sock, _ := rtReg(t, r1, SourceAPI, `{"ID":"sock-1","Name":"sock","socket_path":"/run/s.sock"}`)
	if app.Port != 8080 || app.Locality == nil || len(app.Ports) != 2 || sock.SocketPath != "/run/s.sock" {
		t.Fatalf("built %+v and %+v", app, sock)
	}
	r2 := rtNew(t, dir)
	for _, want := range []Service{app, sock} {
		got, ok := r2.Snapshot().NodeService(rtNode, want.ID)
		if !ok || !reflect.DeepEqual(got.Service, want) {
			t.Errorf("after restart %s is %+v, want %+v", want.ID, got, want)
		}
	}
}

// TestNodeLocality: the agent's locality is its node's.
func TestNodeLocality(t *testing.T) {
	cfg := rtConfig("")
	cfg.Locality = &Locality{Region: "us", Zone: "us-2"}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l := r.Self().Locality; l == nil || *l != *cfg.Locality {
		t.Errorf("Self().Locality = %+v, want %+v", l, cfg.Locality)
	}
}
