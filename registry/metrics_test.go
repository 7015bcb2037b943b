package registry

import (
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCatalogMetrics(t *testing.T) {
	prom := prometheus.NewPedanticRegistry()
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address, cfg.Registerer = "n1", "127.0.0.1", prom
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []Service{{ID: "web1", Name: "web", Port: 80}, {ID: "web2", Name: "web", Port: 81}, {ID: "db1", Name: "db", Port: 5432}} {
		if err := r.RegisterService(s, nil, SourceAPI); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.DeregisterService("db1"); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP pier_catalog_nodes Nodes in this agent's catalog, failed ones included until they are reaped.
# TYPE pier_catalog_nodes gauge
pier_catalog_nodes 1
# HELP pier_catalog_service_instances Service instances in this agent's catalog, on every node.
# TYPE pier_catalog_service_instances gauge
pier_catalog_service_instances 3
# HELP pier_catalog_services Distinct service names in this agent's catalog.
# TYPE pier_catalog_services gauge
pier_catalog_services 2
`
	// consul (the agent itself) and web; db is gone.
	if err := testutil.GatherAndCompare(prom, strings.NewReader(want), "pier_catalog_nodes", "pier_catalog_services", "pier_catalog_service_instances"); err != nil {
		t.Error(err)
	}
	idx := r.Snapshot().Index()
	if err := testutil.GatherAndCompare(prom, strings.NewReader(`
# HELP pier_catalog_index The catalog's modify index (X-Consul-Index): it grows with every change.
# TYPE pier_catalog_index gauge
pier_catalog_index `+strconv.FormatUint(idx, 10)+"\n"), "pier_catalog_index"); err != nil {
		t.Error(err)
	}
	if r.Snapshot().Time().IsZero() {
		t.Error("snapshot without a publication time")
	}
}
