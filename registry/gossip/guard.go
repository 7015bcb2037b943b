package gossip

import (
	"bufio"
	"bytes"
	"compress/lzw"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Memberlist's stream message types (its net.go), as they appear on the wire.
const (
	wirePing     byte = 0
	wirePushPull byte = 6
	wireUser     byte = 8
	wireCompress byte = 9
	wireEncrypt  byte = 10
	wireLabel    byte = 244
)

// streamLimits bound what one TCP stream to the gossip port may make this
// node hold.
type streamLimits struct {
	nodes    int           // node states one push/pull may list
	bytes    int           // user state or user message bytes one stream may carry
	timeout  time.Duration // to receive a whole message
	inflight int           // streams read or handled at once
	waiting  int           // streams waiting for a slot; more are closed at once
}

// perNodeWire bounds one node state of a push/pull on the wire: a name, an
// address, memberlist's 512-byte meta and a few integers.
const perNodeWire = 1024

func (l streamLimits) total() int { return l.bytes + l.nodes*perNodeWire + 4096 }

// guardedTransport wraps memberlist's transport so that every incoming
// stream is received whole, within streamLimits, before memberlist decodes
// it. Memberlist sizes its buffers from a push/pull header's claims (a
// million nodes is 112 MB) and a user message's length (unbounded) before
// one byte of the body has arrived; here memory follows the bytes that
// actually arrive, what memberlist then allocates matches them, and claims
// beyond what this cluster can hold are refused unread.
type guardedTransport struct {
	memberlist.NodeAwareTransport
	lim      streamLimits
	log      *slog.Logger
	rejected func()
	// packetRejected counts a refused datagram.
	packetRejected func()

	streams chan net.Conn
	packets chan *memberlist.Packet
	slots   chan struct{}
	waiting atomic.Int32
	ctx     context.Context // canceled on shutdown
	cancel  context.CancelFunc
	stopped chan struct{} // the inner transport has stopped
	once    sync.Once
	err     error
	wg      sync.WaitGroup
}

func newGuardedTransport(inner memberlist.NodeAwareTransport, lim streamLimits, log *slog.Logger, rejected func()) *guardedTransport {
	t := &guardedTransport{
		NodeAwareTransport: inner, lim: lim, log: log, rejected: rejected,
		streams: make(chan net.Conn), slots: make(chan struct{}, lim.inflight), stopped: make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.wg.Add(1)
	go t.accept()
	// pier's own transport checks datagrams as it reads them; any other
	// (a test's) gets a goroutine that does.
	if _, checked := inner.(*netTransport); !checked {
		t.packets = make(chan *memberlist.Packet)
		t.wg.Add(1)
		go t.filterPackets()
	}
	return t
}

func (t *guardedTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *guardedTransport) Shutdown() error {
	t.once.Do(func() {
		t.cancel()
		// The inner listener may be handing over a connection: accept
		// keeps taking (and closing) them until it has stopped.
		t.err = t.NodeAwareTransport.Shutdown()
		close(t.stopped)
		t.wg.Wait()
	})
	return t.err
}

func (t *guardedTransport) accept() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.StreamCh()
	for {
		select {
		case <-t.stopped:
			return
		case c := <-in:
			select {
			case <-t.ctx.Done():
				c.Close()
				continue
			default:
			}
			if int(t.waiting.Add(1)) > t.lim.waiting {
				t.waiting.Add(-1)
				t.reject(c, errors.New("too many streams at once"))
				continue
			}
			t.wg.Add(1)
			go t.inspect(c)
		}
	}
}

func (t *guardedTransport) reject(c net.Conn, err error) {
	t.log.Warn("refusing a gossip stream", "from", c.RemoteAddr(), "err", err)
	c.Close()
	if t.rejected != nil {
		t.rejected()
	}
}

func (t *guardedTransport) inspect(c net.Conn) {
	defer t.wg.Done()
	wait := time.NewTimer(t.lim.timeout)
	defer wait.Stop()
	select {
	case t.slots <- struct{}{}:
		t.waiting.Add(-1)
	case <-wait.C:
		t.waiting.Add(-1)
		t.reject(c, errors.New("no free slot in time"))
		return
	case <-t.ctx.Done():
		t.waiting.Add(-1)
		c.Close()
		return
	}
	release := sync.OnceFunc(func() { <-t.slots })
	c.SetReadDeadline(time.Now().Add(t.lim.timeout))
	r := &wireReader{br: bufio.NewReader(c), keep: true, max: t.lim.total()}
	// A shutdown does not wait for a slow sender.
	stop := context.AfterFunc(t.ctx, func() { c.SetReadDeadline(time.Now()) })
	err := checkStream(r, t.lim)
	stop()
	if err != nil {
		release()
		t.reject(c, err)
		return
	}
	c.SetReadDeadline(time.Time{})
	// What was read is replayed, then whatever the buffer read ahead.
	gc := &guardedConn{Conn: c, r: io.MultiReader(bytes.NewReader(r.buf), r.br), release: release}
	select {
	case t.streams <- gc:
	case <-t.ctx.Done():
		gc.Close()
	}
}

// guardedConn is a checked stream handed to memberlist; it frees its slot
// when memberlist closes it.
type guardedConn struct {
	net.Conn
	r       io.Reader
	release func()
}

func (c *guardedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *guardedConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// checkStream reads one stream message as memberlist frames it: an optional
// label, then a push/pull, a user message or a ping, plain or compressed,
// or an encrypted frame (which only the key opens, and whose length is all
// that can be checked here).
func checkStream(r *wireReader, lim streamLimits) error {
	t, err := r.byte()
	if err != nil {
		return err
	}
	if t == wireLabel {
		n, err := r.byte()
		if err != nil {
			return err
		}
		if err := r.skip(int(n)); err != nil {
			return err
		}
		if t, err = r.byte(); err != nil {
			return err
		}
	}
	switch t {
	case wireEncrypt:
		b, err := r.read(4)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(b)
		if int64(n) > int64(r.max) {
			return fmt.Errorf("gossip: encrypted stream of %d bytes (limit %d)", n, r.max)
		}
		return r.skip(int(n))
	case wireCompress:
		start := len(r.buf)
		if err := r.value(0); err != nil {
			return err
		}
		inner, err := decompressed(r.buf[start:], int64(r.max))
		if err != nil {
			return err
		}
		if len(inner) == 0 {
			return errors.New("gossip: empty compressed stream")
		}
		ir := &wireReader{br: bufio.NewReader(bytes.NewReader(inner[1:])), max: len(inner)}
		return checkMessage(inner[0], ir, lim)
	}
	return checkMessage(t, r, lim)
}

func checkMessage(t byte, r *wireReader, lim streamLimits) error {
	switch t {
	case wirePushPull:
		h, err := r.header("Nodes", "UserStateLen")
		if err != nil {
			return err
		}
		nodes, state := h[0], h[1]
		if nodes < 0 || nodes > int64(lim.nodes) {
			return fmt.Errorf("gossip: push/pull claims %d nodes (limit %d)", nodes, lim.nodes)
		}
		if state < 0 || state > int64(lim.bytes) {
			return fmt.Errorf("gossip: push/pull claims %d bytes of state (limit %d)", state, lim.bytes)
		}
		for range nodes {
			if err := r.value(0); err != nil {
				return err
			}
		}
		return r.skip(int(state))
	case wireUser:
		h, err := r.header("UserMsgLen")
		if err != nil {
			return err
		}
		if h[0] < 0 || h[0] > int64(lim.bytes) {
			return fmt.Errorf("gossip: user message claims %d bytes (limit %d)", h[0], lim.bytes)
		}
		return r.skip(int(h[0]))
	case wirePing:
		return r.value(0)
	}
	return fmt.Errorf("gossip: unexpected stream message type %d", t)
}

// decompressed decodes memberlist's compress{Algo, Buf} (msgpack) and
// inflates Buf, refusing more than limit bytes: LZW turns 64 KB into
// hundreds of megabytes.
func decompressed(msg []byte, limit int64) ([]byte, error) {
	r := &wireReader{br: bufio.NewReader(bytes.NewReader(msg)), keep: true, max: len(msg)}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	var buf []byte
	for range n {
		k, err := r.str()
		if err != nil {
			return nil, err
		}
		switch {
		case strings.EqualFold(k, "Algo"):
			a, err := r.int()
			if err != nil {
				return nil, err
			}
			if a != 0 { // lzwAlgo, the only one
				return nil, fmt.Errorf("gossip: unknown compression %d", a)
			}
		case strings.EqualFold(k, "Buf"):
			start := len(r.buf)
			if err := r.value(0); err != nil {
				return nil, err
			}
			buf = r.buf[start:]
		default:
			if err := r.value(0); err != nil {
				return nil, err
			}
		}
	}
	// buf is the raw msgpack value: drop its str/bin header.
	payload, err := bytesOf(buf)
	if err != nil {
		return nil, err
	}
	lr := lzw.NewReader(bytes.NewReader(payload), lzw.LSB, 8)
	defer lr.Close()
	out, err := io.ReadAll(io.LimitReader(lr, limit+1))
	if err != nil {
		return nil, fmt.Errorf("gossip: compressed stream: %w", err)
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("gossip: compressed stream inflates past %d bytes", limit)
	}
	return out, nil
}

// bytesOf returns the contents of one msgpack str or bin value.
func bytesOf(v []byte) ([]byte, error) {
	r := &wireReader{br: bufio.NewReader(bytes.NewReader(v)), keep: true, max: len(v)}
	b, err := r.byte()
	if err != nil {
		return nil, err
	}
	n, err := r.strLen(b)
	if err != nil {
		return nil, err
	}
	if err := r.skip(n); err != nil {
		return nil, err
	}
	return r.buf[len(r.buf)-n:], nil
}

// wireReader reads msgpack from a stream within a byte budget, keeping what
// it read when keep is set (to replay it to memberlist). Reads of a claimed
// length go in chunks, so memory follows the bytes that arrive rather than
// the claim.
type wireReader struct {
	br   *bufio.Reader
	keep bool
	buf  []byte
	n    int // bytes read so far
	max  int
}

var errTooLarge = errors.New("gossip: stream over its byte limit")

func (r *wireReader) take(n int, want bool) ([]byte, error) {
	if n < 0 || n > r.max-r.n {
		return nil, errTooLarge
	}
	r.n += n
	if !r.keep && !want {
		_, err := io.CopyN(io.Discard, r.br, int64(n))
		return nil, err
	}
	start := len(r.buf)
	for left := n; left > 0; {
		c := min(left, 64<<10)
		at := len(r.buf)
		r.buf = append(r.buf, make([]byte, c)...)
		if _, err := io.ReadFull(r.br, r.buf[at:]); err != nil {
			return nil, err
		}
		left -= c
	}
	out := r.buf[start:]
	if !r.keep {
		r.buf = r.buf[:start]
	}
	return out, nil
}

func (r *wireReader) read(n int) ([]byte, error) { return r.take(n, true) }
func (r *wireReader) skip(n int) error {
	_, err := r.take(n, false)
	return err
}

func (r *wireReader) byte() (byte, error) {
	b, err := r.read(1)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (r *wireReader) uint(size int) (uint64, error) {
	b, err := r.read(size)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

func (r *wireReader) length(size int) (int, error) {
	v, err := r.uint(size)
	if err != nil {
		return 0, err
	}
	if v > uint64(r.max) {
		return 0, errTooLarge
	}
	return int(v), nil
}

// strLen is the length of a str or bin value whose first byte is b.
func (r *wireReader) strLen(b byte) (int, error) {
	switch {
	case b >= 0xa0 && b <= 0xbf:
		return int(b & 0x1f), nil
	case b == 0xd9 || b == 0xc4:
		return r.length(1)
	case b == 0xda || b == 0xc5:
		return r.length(2)
	case b == 0xdb || b == 0xc6:
		return r.length(4)
	}
	return 0, fmt.Errorf("gossip: msgpack 0x%02x is not a string", b)
}

func (r *wireReader) str() (string, error) {
	b, err := r.byte()
	if err != nil {
		return "", err
	}
	n, err := r.strLen(b)
	if err != nil {
		return "", err
	}
	if n > 64 {
		return "", errors.New("gossip: msgpack key too long")
	}
	s, err := r.read(n)
	return string(s), err
}

func (r *wireReader) mapLen() (int, error) {
	b, err := r.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case b >= 0x80 && b <= 0x8f:
		return int(b & 0x0f), nil
	case b == 0xde:
		return r.length(2)
	case b == 0xdf:
		return r.length(4)
	}
	return 0, fmt.Errorf("gossip: msgpack 0x%02x is not a map", b)
}

func (r *wireReader) int() (int64, error) {
	b, err := r.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case b <= 0x7f:
		return int64(b), nil
	case b >= 0xe0:
		return int64(int8(b)), nil
	}
	size := fixedSize(b)
	if size == 0 || b == 0xca || b == 0xcb || b >= 0xd4 {
		return 0, fmt.Errorf("gossip: msgpack 0x%02x is not an integer", b)
	}
	v, err := r.uint(size)
	if err != nil {
		return 0, err
	}
	if b >= 0xd0 { // signed: extend from its size
		shift := 64 - 8*size
		return int64(v<<shift) >> shift, nil
	}
	if v > 1<<62 {
		return 1 << 62, nil
	}
	return int64(v), nil
}

// header reads a msgpack map and returns the integer fields named (matched
// regardless of case, the largest if repeated, as a lenient decoder could
// take any of them); other fields are skipped.
func (r *wireReader) header(names ...string) ([]int64, error) {
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	if n > 16 {
		return nil, fmt.Errorf("gossip: header of %d fields", n)
	}
	out := make([]int64, len(names))
	for range n {
		k, err := r.str()
		if err != nil {
			return nil, err
		}
		i := -1
		for j, name := range names {
			if strings.EqualFold(k, name) {
				i = j
			}
		}
		if i < 0 {
			if err := r.value(0); err != nil {
				return nil, err
			}
			continue
		}
		v, err := r.int()
		if err != nil {
			return nil, fmt.Errorf("gossip: header field %s: %w", k, err)
		}
		if v < 0 {
			return nil, fmt.Errorf("gossip: header field %s is negative", k)
		}
		out[i] = max(out[i], v)
	}
	return out, nil
}

// value skips one msgpack value of any kind.
func (r *wireReader) value(depth int) error {
	if depth > 8 {
		return errors.New("gossip: msgpack nested too deep")
	}
	b, err := r.byte()
	if err != nil {
		return err
	}
	items := 0
	switch {
	case b <= 0x7f || b >= 0xe0:
		return nil
	case b >= 0x80 && b <= 0x8f:
		items = 2 * int(b&0x0f)
	case b >= 0x90 && b <= 0x9f:
		items = int(b & 0x0f)
	case b >= 0xa0 && b <= 0xbf, b == 0xd9, b == 0xda, b == 0xdb, b == 0xc4, b == 0xc5, b == 0xc6:
		n, err := r.strLen(b)
		if err != nil {
			return err
		}
		return r.skip(n)
	case b == 0xc0 || b == 0xc2 || b == 0xc3:
		return nil
	case b == 0xc7 || b == 0xc8 || b == 0xc9: // ext: length, type, data
		n, err := r.length(1 << (b - 0xc7))
		if err != nil {
			return err
		}
		return r.skip(n + 1)
	case b == 0xdc || b == 0xdd:
		if items, err = r.length(2 << (b - 0xdc)); err != nil {
			return err
		}
	case b == 0xde || b == 0xdf:
		if items, err = r.length(2 << (b - 0xde)); err != nil {
			return err
		}
		items *= 2
	default:
		size := fixedSize(b)
		if size == 0 {
			return fmt.Errorf("gossip: msgpack 0x%02x is not valid", b)
		}
		return r.skip(size)
	}
	for range items {
		if err := r.value(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

// fixedSize is how many bytes follow a msgpack number or fixext type byte;
// 0 for any other byte.
func fixedSize(b byte) int {
	switch b {
	case 0xcc, 0xd0:
		return 1
	case 0xcd, 0xd1, 0xd4:
		return 2
	case 0xd5:
		return 3
	case 0xca, 0xce, 0xd2:
		return 4
	case 0xd6:
		return 5
	case 0xcb, 0xcf, 0xd3:
		return 8
	case 0xd7:
		return 9
	case 0xd8:
		return 17
	}
	return 0
}
