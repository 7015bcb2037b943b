package gossip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/klauspost/compress/flate"

	"github.com/pier-dev/pier/registry"
)

// Message types, the first byte of every user message.
const (
	msgEntry        byte = 'e' // one Entry, JSON
	msgEntryZ       byte = 'z' // one Entry, deflated JSON
	msgForceLeave   byte = 'f' // a node name that an operator forced out
	msgLeave        byte = 'l' // a node name that is about to leave gracefully
	msgKeyring      byte = 'K' // a keyring operation another node asks for (JSON)
	msgKeyringReply byte = 'k' // a node's answer to one (JSON)
	msgEvent        byte = 'E' // a user event (events.go), JSON
	stateZ          byte = 'S' // push/pull: []NodeState, deflated JSON
)

// maxForward bounds how many entries learnt from one push/pull are passed on
// as broadcasts: a whole large catalog would flood the queue.
const maxForward = 512

// maxBroadcast keeps a broadcast well inside memberlist's ~1,400-byte UDP
// packet next to its own headers; a larger entry travels by push/pull only.
const maxBroadcast = 1200

// maxState is memberlist's cap on a push/pull state (it refuses more than
// 20 MB); a service with a check compresses to some 40-130 bytes.
const maxState = 20 << 20

func encodeEntry(e registry.Entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	if len(b)+1 <= maxBroadcast/2 {
		return append([]byte{msgEntry}, b...), nil
	}
	z, err := deflate(msgEntryZ, b)
	if err != nil {
		return nil, err
	}
	if len(z) < len(b)+1 {
		return z, nil
	}
	return append([]byte{msgEntry}, b...), nil
}

func decodeEntry(msg []byte) (registry.Entry, error) {
	e, _, err := decodeEntryIf(msg, nil)
	return e, err
}

// entryHeader is what says which entry a message carries and its version.
type entryHeader struct {
	Node    string             `json:"n"`
	Kind    registry.EntryKind `json:"k"`
	Key     string             `json:"id"`
	Version uint64             `json:"v"`
}

// decodeEntryIf decodes an entry message unless held says, from its
// header, that this node already holds the entry at that version or newer
// (held nil: always); then ok is false. Reading the header scans the
// message without building the entry's contents (a node's maps, a
// service), which is what decoding costs.
func decodeEntryIf(msg []byte, held func(h entryHeader) bool) (e registry.Entry, ok bool, err error) {
	if len(msg) == 0 {
		return e, false, errors.New("empty message")
	}
	body := msg[1:]
	if msg[0] == msgEntryZ {
		if body, err = inflate(body, maxBroadcast*64); err != nil {
			return e, false, err
		}
	}
	if held != nil {
		var h entryHeader
		if err := json.Unmarshal(body, &h); err != nil {
			return e, false, err
		}
		if held(h) {
			return e, false, nil
		}
	}
	e, err = decodeEntryBody(body)
	return e, err == nil, err
}

func decodeEntryBody(body []byte) (e registry.Entry, err error) {
	var w wireEntry
	if err := json.Unmarshal(body, &w); err != nil {
		return e, err
	}
	if w.changedKey() {
		err := json.Unmarshal(body, &e) // registry.Entry notes the change
		return e, err
	}
	return registry.Entry(w), nil
}

// wireEntry is a registry.Entry as decoded from gossip: without Entry's
// UnmarshalJSON, which notes a KV key whose invalid UTF-8 the encoding
// replaced (registry/kv.go) by decoding each entry a second time. Through
// that method encoding/json scanned every entry three times (to find its
// end, to check it, to decode it) and set up a decoder for each: most of
// the CPU of decoding a push/pull state or a repair message. A KV entry
// whose key may have changed is decoded again as a registry.Entry, so that
// the note is kept where it is read.
type wireEntry registry.Entry

func (w *wireEntry) changedKey() bool {
	return w.Kind == registry.KindKV && strings.ContainsRune(w.Key, utf8.RuneError)
}

type wireNodeState struct {
	Node     string      `json:"n"`
	Complete uint64      `json:"c"`
	Entries  []wireEntry `json:"e"`
}

// nodeStates is the node states of a push/pull or a repair message: encoded
// as []registry.NodeState, decoded through wireEntry in one pass.
type nodeStates []registry.NodeState

func (ns *nodeStates) UnmarshalJSON(b []byte) error {
	var ws []wireNodeState
	if err := json.Unmarshal(b, &ws); err != nil {
		return err
	}
	out := make([]registry.NodeState, len(ws))
	for i, w := range ws {
		es := make([]registry.Entry, len(w.Entries))
		for j := range w.Entries {
			if w.Entries[j].changedKey() {
				return json.Unmarshal(b, (*[]registry.NodeState)(ns))
			}
			es[j] = registry.Entry(w.Entries[j])
		}
		if w.Entries == nil {
			es = nil
		}
		out[i] = registry.NodeState{Node: w.Node, Complete: w.Complete, Entries: es}
	}
	*ns = out
	return nil
}

// wireEvent is a user event on the wire, with short keys: it has to fit in
// one packet.
type wireEvent struct {
	ID            string `json:"id"`
	Name          string `json:"n"`
	Payload       []byte `json:"p,omitempty"`
	NodeFilter    string `json:"nf,omitempty"`
	ServiceFilter string `json:"sf,omitempty"`
	TagFilter     string `json:"tf,omitempty"`
	Version       int    `json:"v"`
	LTime         uint64 `json:"lt"`
}

func encodeEvent(e UserEvent) ([]byte, error) {
	b, err := json.Marshal(wireEvent(e))
	if err != nil {
		return nil, err
	}
	return append([]byte{msgEvent}, b...), nil
}

// decodeEvent reads a user event; one without an ID or a name is refused,
// as it could be neither deduplicated nor listed.
func decodeEvent(msg []byte) (UserEvent, error) {
	if len(msg) == 0 || msg[0] != msgEvent {
		return UserEvent{}, errors.New("not a user event")
	}
	var w wireEvent
	if err := json.Unmarshal(msg[1:], &w); err != nil {
		return UserEvent{}, err
	}
	if w.ID == "" || w.Name == "" {
		return UserEvent{}, errors.New("user event without an ID or a name")
	}
	return UserEvent(w), nil
}

// state is what a push/pull carries: every member's records, the KV
// store and the user-event clock.
type state struct {
	Nodes nodeStates       `json:"n"`
	KV    []registry.Entry `json:"kv,omitempty"`
	// EventClock is the sender's user-event Lamport clock, as Serf's
	// push/pull carries it: a node that restarts from 0 learns the
	// cluster's time before it fires, else the others would take its
	// events for old ones.
	EventClock uint64 `json:"el,omitempty"`
}

func encodeState(st state) ([]byte, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	if len(b) <= maxStored {
		return stored(stateZ, b), nil
	}
	return deflate(stateZ, b)
}

// maxStored is the largest state sent in deflate's stored blocks rather
// than compressed. A fresh agent's first push/pull, its join, carries its
// own few entries (a few hundred bytes): compressing them would build its
// first flate.Writer (some 600 KB to allocate and clear: 4 % of the CPU and
// a tenth of the page faults of an agent's start) to save a few hundred
// bytes of one TCP exchange.
const maxStored = 4 << 10

// stored frames b as a deflate stream of stored (uncompressed) blocks
// (RFC 1951, 3.2.4), which every inflater reads, older agents' included.
func stored(kind byte, b []byte) []byte {
	const maxBlock = 65535
	out := make([]byte, 0, 1+len(b)+5*(len(b)/maxBlock+1))
	out = append(out, kind)
	for {
		n := min(len(b), maxBlock)
		final := byte(0)
		if n == len(b) {
			final = 1 // BFINAL; BTYPE 00 is a stored block
		}
		out = append(out, final, byte(n), byte(n>>8), ^byte(n), ^byte(n>>8))
		out = append(out, b[:n]...)
		b = b[n:]
		if final == 1 {
			return out
		}
	}
}

func decodeState(buf []byte) (state, error) {
	if len(buf) == 0 || buf[0] != stateZ {
		return state{}, errors.New("not a pier state")
	}
	b, err := inflate(buf[1:], 16*maxState)
	if err != nil {
		return state{}, err
	}
	var st state
	err = json.Unmarshal(b, &st)
	return st, err
}

// deflate compresses with klauspost/compress's stateless encoder: a join of
// 100 agents deflates thousands of push/pull states and repair messages,
// mostly of a few KB. The standard library's flate.Writer holds some 600 KB
// of tables that its Reset clears at the default level and that a pool
// emptied by every garbage collection allocated again: that was most of the
// CPU of deflating such a message. The stateless encoder keeps nothing
// between messages, takes a third of the time of the standard library's
// fastest level and compresses the catalog's JSON as well. What it writes
// is a plain deflate stream, which every inflater (older agents') reads.
func deflate(kind byte, b []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(1 + len(b)/3)
	buf.WriteByte(kind)
	if err := flate.StatelessDeflate(&buf, b, true, nil); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// inflaters are reused: flate.NewReader allocates its 32 KB window and
// tables for every message. klauspost/compress's inflater reads any deflate
// stream, a quarter faster than the standard library's.
var inflaters sync.Pool

// inflate decompresses at most limit bytes: a hostile peer must not make us
// allocate without bound.
func inflate(b []byte, limit int64) ([]byte, error) {
	br := bytes.NewReader(b)
	r, _ := inflaters.Get().(io.ReadCloser)
	if r == nil {
		r = flate.NewReader(br)
	} else if err := r.(flate.Resetter).Reset(br, nil); err != nil {
		return nil, err
	}
	defer func() {
		r.Close()
		inflaters.Put(r)
	}()
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("decompressed message over %d bytes", limit)
	}
	return out, nil
}
