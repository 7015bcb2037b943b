package registry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// catalogCollector reports the size and index of the current snapshot when
// Prometheus scrapes: the write path does no metric work, and the numbers
// are those of one consistent snapshot.
type catalogCollector struct {
	r                                 *Registry
	index, nodes, services, instances *prometheus.Desc
}

func registerMetrics(reg prometheus.Registerer, r *Registry) error {
	if reg == nil {
		return nil
	}
	return reg.Register(catalogCollector{r: r,
		index: prometheus.NewDesc("pier_catalog_index",
			"The catalog's modify index (X-Consul-Index): it grows with every change.", nil, nil),
		nodes: prometheus.NewDesc("pier_catalog_nodes",
			"Nodes in this agent's catalog, failed ones included until they are reaped.", nil, nil),
		services: prometheus.NewDesc("pier_catalog_services",
			"Distinct service names in this agent's catalog.", nil, nil),
		instances: prometheus.NewDesc("pier_catalog_service_instances",
			"Service instances in this agent's catalog, on every node.", nil, nil),
	})
}

func (c catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.index
	ch <- c.nodes
	ch <- c.services
	ch <- c.instances
}

func (c catalogCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Snapshot()
	nodes, instances, _ := s.Counts()
	ch <- prometheus.MustNewConstMetric(c.index, prometheus.GaugeValue, float64(s.Index()))
	ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(nodes))
	names, last := 0, ""
	s.t.services.Ascend(func(e *ServiceEntry) bool { // by name: count the changes of name
		if names == 0 || e.Name != last {
			names, last = names+1, e.Name
		}
		return true
	})
	ch <- prometheus.MustNewConstMetric(c.services, prometheus.GaugeValue, float64(names))
	ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(instances))
}
