package gossip

import (
	"bufio"
	"bytes"
	"compress/lzw"
	"strings"
	"testing"
	"time"
)

func mpStr(s string) []byte { return append([]byte{0xa0 | byte(len(s))}, s...) }

// pushPull frames a push/pull the way memberlist writes it: the type, the
// header map, one map per node, then the raw user state.
func pushPull(nodes, claimed int, state []byte) []byte {
	b := []byte{wirePushPull, 0x83}
	b = append(append(b, mpStr("Nodes")...), 0xce, byte(claimed>>24), byte(claimed>>16), byte(claimed>>8), byte(claimed))
	b = append(append(b, mpStr("UserStateLen")...), 0xcd, byte(len(state)>>8), byte(len(state)))
	b = append(append(b, mpStr("Join")...), 0xc2)
	for range nodes {
		b = append(b, 0x83)
		b = append(append(b, mpStr("Name")...), mpStr("n1")...)
		b = append(append(b, mpStr("Addr")...), 0xc4, 4, 127, 0, 0, 1)
		b = append(append(b, mpStr("Vsn")...), 0x96, 1, 5, 5, 2, 5, 5)
	}
	return append(b, state...)
}

// compressed wraps msg in memberlist's compress{Algo, Buf}.
func compressed(msg []byte) []byte {
	var z bytes.Buffer
	w := lzw.NewWriter(&z, lzw.LSB, 8)
	w.Write(msg)
	w.Close()
	b := []byte{wireCompress, 0x82}
	b = append(append(b, mpStr("Algo")...), 0)
	n := z.Len()
	b = append(append(b, mpStr("Buf")...), 0xc6, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	return append(b, z.Bytes()...)
}

func TestCheckStream(t *testing.T) {
	lim := streamLimits{nodes: 10, bytes: 1000, timeout: time.Second, inflight: 1, waiting: 1}
	state := bytes.Repeat([]byte("s"), 100)
	for _, tc := range []struct {
		name string
		msg  []byte
		err  string // "" accepts
	}{
		{"push/pull", pushPull(3, 3, state), ""},
		{"labelled push/pull", append([]byte{wireLabel, 2, 'd', 'c'}, pushPull(3, 3, state)...), ""},
		{"compressed push/pull", compressed(pushPull(3, 3, state)), ""},
		{"a million nodes claimed", pushPull(0, 1<<20, nil), "claims 1048576 nodes"},
		{"compressed million claimed", compressed(pushPull(0, 1<<20, nil)), "claims 1048576 nodes"},
		{"fewer nodes than claimed", pushPull(2, 5, nil), "EOF"},
		{"state over the limit", pushPull(0, 0, bytes.Repeat([]byte("s"), 2000)), "bytes of state"},
		{"LZW bomb", compressed(append(pushPull(0, 0, nil), make([]byte, 1<<20)...)), "inflates past"},
		{"huge user message", []byte("\x08\x81\xaaUserMsgLen\xcf\x00\x00\x01\x00\x00\x00\x00\x00"), "user message claims"},
		{"encrypted over the limit", []byte{wireEncrypt, 0x7f, 0, 0, 0}, "encrypted stream"},
		{"unknown type", []byte{3, 0x80}, "unexpected stream message type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &wireReader{br: bufio.NewReader(bytes.NewReader(tc.msg)), keep: true, max: lim.total()}
			err := checkStream(r, lim)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err == "" && !bytes.Equal(r.buf, tc.msg):
				t.Fatalf("read %d of %d bytes", len(r.buf), len(tc.msg))
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("got %v, want an error with %q", err, tc.err)
			}
		})
	}
}

func TestCheckPacket(t *testing.T) {
	ping := []byte{wirePing, 0x80}
	if got, err := checkPacket(ping); err != nil || !bytes.Equal(got, ping) {
		t.Errorf("a plain datagram: %x %v", got, err)
	}
	// A compressed datagram is handed on inflated, a label kept in front.
	if got, err := checkPacket(compressed(ping)); err != nil || !bytes.Equal(got, ping) {
		t.Errorf("a compressed datagram: %x %v", got, err)
	}
	label := append([]byte{wireLabel, 2}, "dc"...)
	if got, err := checkPacket(append(append([]byte{}, label...), compressed(ping)...)); err != nil ||
		!bytes.Equal(got, append(append([]byte{}, label...), ping...)) {
		t.Errorf("a labelled compressed datagram: %x %v", got, err)
	}
	// 64 MB of zeros compress to about 50 KB: refused, not inflated.
	bomb := compressed(append([]byte{wirePing}, make([]byte, 64<<20)...))
	if len(bomb) > 1<<17 {
		t.Fatalf("the bomb is %d bytes, more than a datagram", len(bomb))
	}
	if _, err := checkPacket(bomb); err == nil || !strings.Contains(err.Error(), "inflates past") {
		t.Errorf("a compression bomb: %v", err)
	}
	if _, err := checkPacket([]byte{wireLabel, 9, 'x'}); err == nil {
		t.Error("a truncated label passed")
	}
}
