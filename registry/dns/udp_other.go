//go:build !linux

package dns

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// udpSockets: one UDP socket per address where SO_REUSEPORT is not used.
func udpSockets(int) int { return 1 }

// udpSock is a UDP socket in Go's network poller; Linux has its own.
type udpSock struct{ *net.UDPConn }

func listenUDP(ip net.IP, port int) (*udpSock, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(4 << 20) // absorb bursts; the kernel caps it
	return &udpSock{c}, nil
}

// wake: closing the socket ends its readers here.
func (u *udpSock) wake() { u.UDPConn.Close() }

func (u *udpSock) Close() error {
	if err := u.UDPConn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (u *udpSock) writeTo(b []byte, to netip.AddrPort) error {
	_, err := u.WriteToUDPAddrPort(b, to)
	return err
}

// udpBatch batches reads and writes with x/net where the system has
// recvmmsg, one at a time elsewhere.
type udpBatch struct {
	pc    *ipv4.PacketConn // addresses of either family pass through
	in    []ipv4.Message
	out   []ipv4.Message
	obufs [][]byte
	k     int
}

func newUDPBatch(u *udpSock) *udpBatch {
	b := &udpBatch{
		pc:    ipv4.NewPacketConn(u.UDPConn),
		in:    make([]ipv4.Message, udpBatchLen),
		out:   make([]ipv4.Message, udpBatchLen),
		obufs: make([][]byte, udpBatchLen),
	}
	bufs := make([]byte, udpBatchLen*maxQuery)
	for i := range b.in {
		b.in[i].Buffers = [][]byte{bufs[i*maxQuery : (i+1)*maxQuery]}
		b.out[i].Buffers = [][]byte{nil}
		b.obufs[i] = make([]byte, 0, 4096)
	}
	return b
}

func (b *udpBatch) read() (int, error) {
	n, err := b.pc.ReadBatch(b.in, 0)
	if err == nil && n == 0 {
		return 0, errWoken
	}
	return n, err
}

func (b *udpBatch) query(i int) ([]byte, netip.AddrPort) {
	pkt := b.in[i].Buffers[0][:b.in[i].N]
	if ua, ok := b.in[i].Addr.(*net.UDPAddr); ok {
		return pkt, ua.AddrPort()
	}
	return pkt, netip.AddrPort{}
}

func (b *udpBatch) buf() []byte { return b.obufs[b.k][:0] }

func (b *udpBatch) reply(i int, resp []byte) {
	if len(resp) == 0 {
		return
	}
	if cap(resp) > cap(b.obufs[b.k]) {
		b.obufs[b.k] = resp[:0]
	}
	b.out[b.k].Buffers[0], b.out[b.k].Addr = resp, b.in[i].Addr
	b.k++
}

func (b *udpBatch) flush(log *slog.Logger) {
	for sent := 0; sent < b.k; {
		w, err := b.pc.WriteBatch(b.out[sent:b.k], 0)
		if err != nil {
			log.Debug("udp write", "to", b.out[sent].Addr, "err", err)
			w = max(w, 1)
		}
		sent += w
	}
	b.k = 0
}
