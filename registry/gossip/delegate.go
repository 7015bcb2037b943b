package gossip

import (
	"encoding/json"
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist.Delegate and EventDelegate. Memberlist calls
// these concurrently from its network goroutines: every method copies what it
// needs into the inbox and returns at once.
type delegate struct {
	g *Gossip
}

// NodeMeta carries the member's tags that its node record does not (dc and
// id are there): every alive message carries the meta, and at 50 agents
// joining at once an 80-byte meta took join convergence from 1.5 s to 32 s
// (deploy/bench/gossip.sh).
func (d delegate) NodeMeta(limit int) []byte {
	tags := maps.Clone(d.g.cfg.Tags)
	delete(tags, "dc")
	delete(tags, "id")
	if len(tags) == 0 {
		return nil
	}
	b, _ := json.Marshal(tags)
	if len(b) > limit {
		return nil
	}
	return b
}

func (d delegate) NotifyMsg(b []byte) {
	if len(b) == 0 {
		return
	}
	d.g.in.put(item{kind: itemMsg, buf: append([]byte(nil), b...)})
}

func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	msgs := d.g.queue.GetBroadcasts(overhead, limit)
	d.g.met.broadcastsSent(len(msgs))
	return msgs
}

// LocalState reads the registry, which never blocks for long: its writers
// hold their lock only to apply a change.
//
// A node that others join answers every joiner with its whole state: when
// 99 nodes join one at once, it encoded and deflated the whole catalog 99
// times in a few seconds, and the last joiners waited seconds for it. A
// state encoded for a joiner within joinStateTTL is served again: a state a
// moment old is what a slower network would have delivered, and merging is
// by version, so the joiner loses nothing (what changed since reaches it by
// broadcast and the digest repair).
func (d delegate) LocalState(join bool) []byte {
	if !join {
		return d.encodeLocalState()
	}
	c := &d.g.joinState
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.b == nil || time.Since(c.at) >= joinStateTTL {
		c.b, c.at = d.encodeLocalState(), time.Now()
	} else {
		d.g.met.stateSent()
	}
	return c.b
}

// joinStateTTL is how long the state encoded for a joiner is served again.
const joinStateTTL = 500 * time.Millisecond

// stateCache is the state last encoded for a joining node.
type stateCache struct {
	mu sync.Mutex
	at time.Time
	b  []byte
}

func (d delegate) encodeLocalState() []byte {
	b, err := encodeState(state{Nodes: d.g.cfg.Registry.FullState(), KV: d.g.cfg.Registry.KVState(), EventClock: d.g.ev.now()})
	if err != nil {
		d.g.log.Error("encoding state for push/pull", "err", err)
		return nil
	}
	if len(b) > maxState {
		d.g.log.Error("catalog state is over memberlist's push/pull limit; anti-entropy is off until it shrinks", "bytes", len(b), "limit", maxState)
		return nil
	}
	d.g.met.stateSent()
	return b
}

func (d delegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	d.g.met.stateReceived()
	d.g.in.put(item{kind: itemState, buf: append([]byte(nil), buf...)})
}

func (d delegate) NotifyJoin(n *memberlist.Node) { d.g.in.put(item{kind: itemJoin, node: copyNode(n)}) }
func (d delegate) NotifyLeave(n *memberlist.Node) {
	d.g.in.put(item{kind: itemLeave, node: copyNode(n)})
}
func (d delegate) NotifyUpdate(n *memberlist.Node) {
	d.g.in.put(item{kind: itemUpdate, node: copyNode(n)})
}

func copyNode(n *memberlist.Node) memberlist.Node {
	c := *n
	c.Addr = append([]byte(nil), n.Addr...)
	c.Meta = append([]byte(nil), n.Meta...)
	return c
}

// broadcast is one queued message. Its name is the entry's identity, so a
// newer version of an entry replaces an older one still in the queue.
type broadcast struct {
	name string
	msg  []byte
}

func (b *broadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(memberlist.NamedBroadcast)
	return ok && o.Name() == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
