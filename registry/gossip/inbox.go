package gossip

import (
	"sync"

	"github.com/hashicorp/memberlist"
)

// item is one thing a memberlist callback handed over, applied in order by
// the gossip loop.
type item struct {
	kind itemKind
	node memberlist.Node // for events: a copy, memberlist may reuse its own
	buf  []byte          // for messages and states: a copy
}

type itemKind uint8

const (
	itemJoin itemKind = iota
	itemLeave
	itemUpdate
	itemMsg
	itemState
)

// inbox is an unbounded queue with a capacity-1 signal: producers never
// block and never drop, and one consumer drains everything at once.
type inbox struct {
	mu     sync.Mutex
	items  []item
	signal chan struct{}
}

func newInbox() *inbox { return &inbox{signal: make(chan struct{}, 1)} }

func (in *inbox) put(it item) {
	in.mu.Lock()
	in.items = append(in.items, it)
	in.mu.Unlock()
	select {
	case in.signal <- struct{}{}:
	default:
	}
}

func (in *inbox) take() []item {
	in.mu.Lock()
	defer in.mu.Unlock()
	items := in.items
	in.items = nil
	return items
}
