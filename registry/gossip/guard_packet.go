package gossip

import (
	"errors"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// maxPacketInflated bounds what one compressed gossip datagram may inflate
// to. memberlist compresses a datagram of at most its UDP buffer (64 KiB);
// LZW turns one crafted 64 KiB datagram into about 170 MB.
const maxPacketInflated = 1 << 20

// PacketCh hands memberlist the datagrams that passed checkPacket.
func (t *guardedTransport) PacketCh() <-chan *memberlist.Packet {
	if t.packets == nil {
		return t.NodeAwareTransport.PacketCh()
	}
	return t.packets
}

func (t *guardedTransport) filterPackets() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.PacketCh()
	for {
		select {
		case <-t.stopped:
			return
		case p := <-in:
			buf, err := checkPacket(p.Buf)
			if err != nil {
				t.log.Warn("refusing a gossip datagram", "from", p.From, "err", err)
				if t.packetRejected != nil {
					t.packetRejected()
				}
				continue
			}
			p.Buf = buf
			select {
			case t.packets <- p:
			case <-t.stopped:
				return
			}
		}
	}
}

// checkPacket refuses a plain compressed datagram that inflates past
// maxPacketInflated, and hands memberlist the inflated message instead (it
// takes plain messages as well), so no datagram is inflated twice. An
// encrypted one passes as it is: only a holder of the key can make one,
// and memberlist decrypts it before anything else.
func checkPacket(pkt []byte) ([]byte, error) {
	b, labelLen := pkt, 0
	if len(b) > 0 && b[0] == wireLabel {
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return nil, errors.New("gossip: truncated label")
		}
		labelLen = 2 + int(b[1])
		b = b[labelLen:]
	}
	if len(b) == 0 || b[0] != wireCompress {
		return pkt, nil
	}
	inner, err := decompressed(b[1:], maxPacketInflated)
	if err != nil {
		return nil, fmt.Errorf("gossip: compressed datagram: %w", err)
	}
	return append(pkt[:labelLen:labelLen], inner...), nil
}
