package gossip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// netTransport is the gossip port: UDP datagrams and TCP streams on one
// address and port, as memberlist's NetTransport, with two differences
// that make an idle agent cheaper. memberlist reads every datagram into a
// fresh 64 KiB buffer, which a ping of 40 bytes then keeps alive until the
// next collection (with LZW off, most of what an idle agent allocated);
// here one buffer is reused and memberlist gets a copy of the datagram's
// size. And the check of compressed datagrams (checkPacket) runs on the
// reader, not on a goroutine of its own that each datagram would wake.
type netTransport struct {
	udp      *net.UDPConn
	tcp      *net.TCPListener
	packets  chan *memberlist.Packet
	streams  chan net.Conn
	log      *slog.Logger
	rejected func() // a datagram checkPacket refused; may be nil
	done     chan struct{}
	closed   atomic.Bool
	once     sync.Once
	wg       sync.WaitGroup
}

// maxDatagram is the largest datagram read whole, as memberlist's.
const maxDatagram = 65536

// udpRecvBuffer is the receive buffer asked for, as memberlist's: a join
// of many nodes at once arrives in bursts. The kernel may give less.
const udpRecvBuffer = 2 << 20

var _ memberlist.NodeAwareTransport = (*netTransport)(nil)

func newNetTransport(addr string, port int, log *slog.Logger, rejected func()) (*netTransport, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	tcp := ln.(*net.TCPListener)
	port = tcp.Addr().(*net.TCPAddr).Port
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(addr), Port: port})
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	for size := udpRecvBuffer; size > 0; size /= 2 {
		if udp.SetReadBuffer(size) == nil {
			break
		}
	}
	t := &netTransport{udp: udp, tcp: tcp, packets: make(chan *memberlist.Packet), streams: make(chan net.Conn),
		log: log, rejected: rejected, done: make(chan struct{})}
	t.wg.Add(2)
	go t.readPackets()
	go t.accept()
	return t, nil
}

// FinalAdvertiseAddr is the address given, else the bound one.
func (t *netTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	bound := t.udp.LocalAddr().(*net.UDPAddr)
	adv := bound.IP
	if ip != "" {
		if adv = net.ParseIP(ip); adv == nil {
			return nil, 0, fmt.Errorf("gossip: advertise address %q is not an IP address", ip)
		}
	} else if adv.IsUnspecified() {
		return nil, 0, errors.New("gossip: bound to every address and none given to advertise")
	}
	if v4 := adv.To4(); v4 != nil {
		adv = v4
	}
	if port == 0 {
		port = bound.Port
	}
	return adv, port, nil
}

func (t *netTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.udp.WriteTo(b, to)
	return time.Now(), err
}

func (t *netTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *netTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *netTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", addr)
}

func (t *netTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

func (t *netTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *netTransport) Shutdown() error {
	t.once.Do(func() {
		t.closed.Store(true)
		close(t.done)
		t.udp.Close()
		t.tcp.Close()
		t.wg.Wait()
	})
	return nil
}

func (t *netTransport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := t.udp.ReadFromUDP(buf)
		at := time.Now()
		if err != nil {
			if t.closed.Load() {
				return
			}
			t.log.Warn("reading a gossip datagram", "err", err)
			continue
		}
		if n == 0 {
			continue
		}
		pkt, err := checkPacket(append([]byte(nil), buf[:n]...))
		if err != nil {
			t.log.Warn("refusing a gossip datagram", "from", from, "err", err)
			if t.rejected != nil {
				t.rejected()
			}
			continue
		}
		select {
		case t.packets <- &memberlist.Packet{Buf: pkt, From: from, Timestamp: at}:
		case <-t.done:
			return
		}
	}
}

func (t *netTransport) accept() {
	defer t.wg.Done()
	pause := 5 * time.Millisecond
	for {
		c, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.closed.Load() {
				return
			}
			// Out of descriptors, most often: wait a little, as
			// net/http's server does.
			t.log.Warn("accepting a gossip stream", "err", err)
			select {
			case <-time.After(pause):
			case <-t.done:
				return
			}
			pause = min(2*pause, time.Second)
			continue
		}
		pause = 5 * time.Millisecond
		select {
		case t.streams <- c:
		case <-t.done:
			c.Close()
			return
		}
	}
}
