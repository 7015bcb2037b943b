package gossip

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
)

// gossipMetrics are the gossip layer's metrics. Counters are bumped from
// memberlist's callbacks (an atomic add: they must not block); member
// counts and the queue length are read when Prometheus scrapes.
type gossipMetrics struct {
	queued   prometheus.Counter
	sent     prometheus.Counter
	pushPull *prometheus.CounterVec // direction: sent, received
	pushSent prometheus.Counter
	pushRecv prometheus.Counter
	rejected *prometheus.CounterVec // what: member, stream, packet
	repairs  prometheus.Counter
	joins    prometheus.Counter
	paused   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, g *Gossip) (*gossipMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &gossipMetrics{
		queued: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "gossip", Name: "broadcasts_queued_total",
			Help: "Changed entries of this node queued for broadcast.",
		}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "gossip", Name: "broadcasts_sent_total",
			Help: "Broadcast messages handed to memberlist for sending (each is sent several times).",
		}),
		pushPull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "gossip", Name: "push_pull_total",
			Help: "Full-state exchanges (anti-entropy and joins): state sent to and received from other nodes.",
		}, []string{"direction"}),
	}
	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pier", Subsystem: "gossip", Name: "rejected_total",
		Help: "What the gossip port refused: members without a usable name or address, streams over the limits or beyond the concurrency bound.",
	}, []string{"what"})
	m.repairs = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pier", Subsystem: "gossip", Name: "repaired_entries_total",
		Help: "Entries this node had missed and got from a member whose digest differed.",
	})
	m.joins = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pier", Subsystem: "gossip", Name: "repaired_members_total",
		Help: "Members this node had not heard of, learnt from another node's digest exchange and joined.",
	})
	m.paused = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pier", Subsystem: "gossip", Name: "repair_paused_total",
		Help: "Digests this node did not send or answer because several members had joined or left within the last 2 s.",
	})
	m.pushSent = m.pushPull.WithLabelValues("sent")
	m.pushRecv = m.pushPull.WithLabelValues("received")
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "pier", Subsystem: "gossip", Name: "broadcast_queue",
		Help: "Broadcasts waiting in memberlist's transmit queue.",
	}, func() float64 {
		if g.queue == nil {
			return 0
		}
		return float64(g.queue.NumQueued())
	})
	members := membersCollector{g: g, desc: prometheus.NewDesc("pier_members",
		"Nodes of the cluster as this agent sees them, by status (alive, leaving, left, failed).", []string{"status"}, nil)}
	for _, c := range []prometheus.Collector{m.queued, m.sent, m.pushPull, m.rejected, m.repairs, m.joins, m.paused, queue, members} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *gossipMetrics) broadcastQueued() {
	if m != nil {
		m.queued.Inc()
	}
}

func (m *gossipMetrics) broadcastsSent(n int) {
	if m != nil && n > 0 {
		m.sent.Add(float64(n))
	}
}

func (m *gossipMetrics) stateSent() {
	if m != nil {
		m.pushSent.Inc()
	}
}

func (m *gossipMetrics) stateReceived() {
	if m != nil {
		m.pushRecv.Inc()
	}
}

func (m *gossipMetrics) memberRejected() {
	if m != nil {
		m.rejected.WithLabelValues("member").Inc()
	}
}

func (m *gossipMetrics) repaired(n int) {
	if m != nil && n > 0 {
		m.repairs.Add(float64(n))
	}
}

func (m *gossipMetrics) memberRepaired() {
	if m != nil {
		m.joins.Inc()
	}
}

func (m *gossipMetrics) repairPaused() {
	if m != nil {
		m.paused.Inc()
	}
}

func (m *gossipMetrics) streamRejected() {
	if m != nil {
		m.rejected.WithLabelValues("stream").Inc()
	}
}

func (m *gossipMetrics) packetRejected() {
	if m != nil {
		m.rejected.WithLabelValues("packet").Inc()
	}
}

// membersCollector counts the members by status; every status is reported,
// zero included, so that a dashboard's series do not come and go.
type membersCollector struct {
	g    *Gossip
	desc *prometheus.Desc
}

func (c membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c membersCollector) Collect(ch chan<- prometheus.Metric) {
	var n [registry.MemberFailed + 1]int
	for _, m := range c.g.Members() {
		if m.Status >= 0 && int(m.Status) < len(n) {
			n[m.Status]++
		}
	}
	for _, st := range []registry.MemberStatus{registry.MemberAlive, registry.MemberLeaving, registry.MemberLeft, registry.MemberFailed} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n[st]), st.String())
	}
}
