package gossip

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sync"
)

// User events are Consul's (consul event, consul watch -type=event): a
// name and a small payload that every agent of the datacenter hears once,
// each keeping it only if it passes the event's node, service and tag
// filters. They travel as broadcasts that every node passes on once, as
// Serf's user events do, and are never stored anywhere but in each agent's
// last few: a node that was away when one was fired never hears it.

// UserEvent is Consul's user event.
type UserEvent struct {
	ID            string // a UUID, made by the node that fired it
	Name          string
	Payload       []byte
	NodeFilter    string // regular expressions; empty: any
	ServiceFilter string
	TagFilter     string // only with ServiceFilter
	Version       int
	LTime         uint64 // the event's Lamport time
}

const (
	// MaxEventSize is Serf's user_event_size_limit, which Consul's events
	// are held to: the event's name, payload, filters and ID together.
	MaxEventSize = 512
	// maxEvents is how many accepted events an agent keeps, as Consul's
	// agent does.
	maxEvents = 256
	// eventWindow is how far behind the Lamport clock an event may be and
	// still be taken: older ones could be duplicates the seen set has
	// forgotten.
	eventWindow      = 4096
	userEventVersion = 1
)

// eventSize is the size the limit applies to.
func eventSize(e UserEvent) int {
	return len(e.ID) + len(e.Name) + len(e.Payload) + len(e.NodeFilter) + len(e.ServiceFilter) + len(e.TagFilter)
}

// ValidateEvent checks what the firing node checks, as Consul does: a name,
// a tag filter only with a service filter, filters that compile.
func ValidateEvent(e UserEvent) error {
	if e.Name == "" {
		return errors.New("User event missing name")
	}
	if e.TagFilter != "" && e.ServiceFilter == "" {
		return errors.New("Cannot provide tag filter without service filter")
	}
	for _, f := range []struct{ what, re string }{{"node", e.NodeFilter}, {"service", e.ServiceFilter}, {"tag", e.TagFilter}} {
		if f.re == "" {
			continue
		}
		if _, err := regexp.Compile(f.re); err != nil {
			return fmt.Errorf("Invalid %s filter: %v", f.what, err)
		}
	}
	return nil
}

// events is an agent's user-event state: the Lamport clock, the IDs seen
// lately (for deduplication) and the last maxEvents accepted.
type events struct {
	mu      sync.Mutex
	clock   uint64 // the next event fired here gets this time
	seen    map[string]uint64
	kept    []UserEvent // oldest first
	changed chan struct{}
}

func newEvents() *events {
	return &events{seen: map[string]uint64{}, changed: make(chan struct{})}
}

// witness moves the clock past lt; it returns false for an event seen
// before or too old to tell.
func (ev *events) witness(id string, lt uint64) bool {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if lt > math.MaxUint64-eventWindow || lt+eventWindow < ev.clock {
		return false
	}
	if _, dup := ev.seen[id]; dup {
		return false
	}
	ev.clock = max(ev.clock, lt+1)
	ev.seen[id] = lt
	if len(ev.seen) > 2*eventWindow {
		for k, t := range ev.seen {
			if t+eventWindow < ev.clock {
				delete(ev.seen, k)
			}
		}
	}
	// Many events at one time (only a peer that crafts them makes that)
	// would still grow the set: past a bound, any go; at worst an event is
	// kept twice.
	for k := range ev.seen {
		if len(ev.seen) <= 4*eventWindow {
			break
		}
		delete(ev.seen, k)
	}
	return true
}

// now answers the clock, for push/pull.
func (ev *events) now() uint64 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.clock
}

// catchUp moves the clock to a peer's, learnt by push/pull.
func (ev *events) catchUp(clock uint64) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if clock < math.MaxUint64-eventWindow {
		ev.clock = max(ev.clock, clock)
	}
}

// tick answers the time of an event fired here and moves the clock on.
func (ev *events) tick(id string) uint64 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	lt := ev.clock
	ev.clock++
	ev.seen[id] = lt
	return lt
}

func (ev *events) keep(e UserEvent) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.kept) == maxEvents {
		copy(ev.kept, ev.kept[1:])
		ev.kept = ev.kept[:maxEvents-1]
	}
	ev.kept = append(ev.kept, e)
	close(ev.changed)
	ev.changed = make(chan struct{})
}

// FireEvent sends a user event to every agent, this one included, and
// returns it with its ID, version and Lamport time. An event over
// MaxEventSize or with a filter that does not compile is refused.
func (g *Gossip) FireEvent(e UserEvent) (UserEvent, error) {
	if err := ValidateEvent(e); err != nil {
		return UserEvent{}, err
	}
	e.ID = newEventID()
	e.Version = userEventVersion
	if n := eventSize(e); n > MaxEventSize {
		return UserEvent{}, fmt.Errorf("user event exceeds the limit of %d bytes (name, payload, filters and ID: %d)", MaxEventSize, n)
	}
	e.LTime = g.ev.tick(e.ID)
	msg, err := encodeEvent(e)
	if err != nil {
		return UserEvent{}, err
	}
	if len(msg) > maxBroadcast {
		return UserEvent{}, fmt.Errorf("user event is %d bytes encoded, over the %d of one packet", len(msg), maxBroadcast)
	}
	g.queue.QueueBroadcast(&broadcast{name: "\x00event\x00" + e.ID, msg: msg})
	g.met.broadcastQueued()
	g.acceptEvent(e)
	return e, nil
}

// Events returns the user events this agent kept, oldest first, and a
// channel closed when it keeps another.
func (g *Gossip) Events() ([]UserEvent, <-chan struct{}) {
	g.ev.mu.Lock()
	defer g.ev.mu.Unlock()
	return append([]UserEvent(nil), g.ev.kept...), g.ev.changed
}

// onEvent takes a user event from the network: news is passed on once and
// kept if it passes the filters here.
func (g *Gossip) onEvent(msg []byte) {
	e, err := decodeEvent(msg)
	if err != nil {
		g.log.Warn("dropping a user event that does not decode", "err", err)
		return
	}
	if !g.ev.witness(e.ID, e.LTime) {
		return
	}
	if len(msg) <= maxBroadcast {
		g.queue.QueueBroadcast(&broadcast{name: "\x00event\x00" + e.ID, msg: msg})
		g.met.broadcastQueued()
	}
	g.acceptEvent(e)
}

// acceptEvent keeps e if this node passes its filters, as each Consul agent
// decides for itself: the node name, and some local service whose name (and,
// with a tag filter, one of whose tags) matches.
func (g *Gossip) acceptEvent(e UserEvent) {
	if e.Version > userEventVersion {
		g.log.Warn("user event of a newer version may use features this agent lacks", "event", e.Name, "version", e.Version)
	}
	self := g.reg.Self().Name
	if e.NodeFilter != "" {
		re, err := regexp.Compile(e.NodeFilter)
		if err != nil {
			g.log.Warn("user event filter does not compile", "event", e.Name, "filter", "node", "err", err)
			return
		}
		if !re.MatchString(self) {
			return
		}
	}
	if e.ServiceFilter != "" {
		svcRe, err := regexp.Compile(e.ServiceFilter)
		if err != nil {
			g.log.Warn("user event filter does not compile", "event", e.Name, "filter", "service", "err", err)
			return
		}
		var tagRe *regexp.Regexp
		if e.TagFilter != "" {
			if tagRe, err = regexp.Compile(e.TagFilter); err != nil {
				g.log.Warn("user event filter does not compile", "event", e.Name, "filter", "tag", "err", err)
				return
			}
		}
		found := false
	services:
		for _, s := range g.reg.Snapshot().NodeServices(self) {
			if !svcRe.MatchString(s.Name) {
				continue
			}
			if tagRe == nil {
				found = true
				break
			}
			for _, t := range s.Tags {
				if tagRe.MatchString(t) {
					found = true
					break services
				}
			}
		}
		if !found {
			return
		}
	}
	g.log.Debug("user event", "event", e.Name, "id", e.ID)
	g.ev.keep(e)
}

func newEventID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
