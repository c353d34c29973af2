package flood

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/rawlb/rawlb/packet"
)

// RSTSpray sends blind resets that spoof one side of a live connection:
// Count RST segments from Src to Dst (the client's ip:port and the
// balancer's, say) with random sequence numbers, as an off-path attacker
// guessing sequence numbers would (RFC 5961 section 3). With Seq set they
// carry that sequence number instead, stepping by SeqStep from one RST to
// the next, so a test can place a reset exactly, just inside or outside
// the receive window.
type RSTSpray struct {
	Link
	// Src and Dst are the spoofed connection's ends: frames go from Src
	// to Dst.
	Src, Dst netip.AddrPort
	// Count is the number of RSTs. Required.
	Count int
	// Duration bounds the time spent sending; 0 means no bound but Count.
	Duration time.Duration
	// Rate is RSTs per second; 0 sends as fast as the machine can.
	Rate int
	// Seq, if set, is the first RST's sequence number; otherwise each
	// RST's is random.
	Seq *uint32
	// SeqStep is added to the sequence number from one RST to the next
	// when Seq is set (modulo 2^32): 0 repeats Seq exactly, a receive
	// window's size walks the sequence space as a blind attack does.
	SeqStep uint32
	// Ack, if set, makes the segments RST+ACK acknowledging *Ack, as a
	// reset answering a segment is; otherwise they are plain RSTs with
	// acknowledgment number 0.
	Ack *uint32
	// Seed seeds the PCG behind the IP IDs and random sequence numbers.
	Seed uint64
	// Method is how frames reach the kernel; Auto is the fastest here.
	// A spray always has one worker, so its RSTs leave in order.
	Method Method
}

// Run sends the RSTs and reports what it sent. It returns nil when Count
// or Duration stopped it, and ctx's error if ctx ended first.
func (r *RSTSpray) Run(ctx context.Context) (Stats, error) {
	if err := r.check(false); err != nil {
		return Stats{}, err
	}
	m, _, err := resolve(r.Method, 1)
	if err != nil {
		return Stats{}, err
	}
	lim := limits{count: r.Count, duration: r.Duration, rate: r.Rate}
	return run(ctx, r.Link, m, 1, lim, func(src net.HardwareAddr, _ int) generator {
		return r.newGen(src)
	})
}

// Frames returns the first n frames a Run would send, without a socket.
// It needs Link.SrcMAC.
func (r *RSTSpray) Frames(n int) ([][]byte, error) {
	if err := r.check(true); err != nil {
		return nil, err
	}
	g := r.newGen(r.SrcMAC)
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, g.frameLen())
		g.next(out[i])
	}
	return out, nil
}

func (r *RSTSpray) check(needSrc bool) error {
	if err := checkMACs(r.Link, needSrc); err != nil {
		return err
	}
	for _, ap := range []netip.AddrPort{r.Src, r.Dst} {
		if !ap.Addr().Is4() || ap.Port() == 0 {
			return fmt.Errorf("flood: %v: want an IPv4 address and a port for both Src and Dst", ap)
		}
	}
	return limits{count: r.Count, duration: r.Duration, rate: r.Rate}.check(false)
}

// rstGen makes RSTs from one template, as synGen makes SYNs: the template
// holds everything but the IP ID and, when random, the sequence number.
type rstGen struct {
	tmpl          []byte
	ipSum, tcpSum uint64
	seq           uint32
	step          uint32
	random        bool
	rng           *rand.PCG
}

const rstLen = tcpOff + packet.TCPMinLen

func (r *RSTSpray) newGen(srcMAC net.HardwareAddr) *rstGen {
	b := make([]byte, rstLen)
	copy(b[0:6], r.DstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:14], packet.EtherTypeIPv4)

	src, dst := r.Src.Addr().As4(), r.Dst.Addr().As4()
	ip := b[ipOff:tcpOff]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], packet.IPv4MinLen+packet.TCPMinLen)
	ip[6] = 0x40 // DF
	ip[8] = 64
	ip[9] = packet.ProtoTCP
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])

	tcp := b[tcpOff:]
	binary.BigEndian.PutUint16(tcp[0:2], r.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:4], r.Dst.Port())
	tcp[12] = (packet.TCPMinLen / 4) << 4
	tcp[13] = packet.FlagRST
	if r.Ack != nil {
		tcp[13] |= packet.FlagACK
		binary.BigEndian.PutUint32(tcp[8:12], *r.Ack)
	}
	// Window 0: a reset advertises none (Linux tcp_v4_send_reset).

	g := &rstGen{
		tmpl:   b,
		ipSum:  packet.Sum(ip, 0),
		tcpSum: packet.Sum(tcp, packet.PseudoHeaderSum(src, dst, packet.ProtoTCP, packet.TCPMinLen)),
		random: r.Seq == nil,
		step:   r.SeqStep,
		rng:    pcg(r.Seed, 0),
	}
	if r.Seq != nil {
		g.seq = *r.Seq
	}
	return g
}

func (g *rstGen) frameLen() int { return len(g.tmpl) }

func (g *rstGen) next(b []byte) {
	copy(b, g.tmpl)
	rnd := g.rng.Uint64()
	id := uint16(rnd >> 48)
	seq := g.seq
	if g.random {
		seq = uint32(rnd)
	} else {
		g.seq += g.step
	}
	binary.BigEndian.PutUint16(b[ipIDOff:], id)
	binary.BigEndian.PutUint32(b[tcpSeqOff:], seq)
	binary.BigEndian.PutUint16(b[ipCsumOff:], ^packet.Fold(g.ipSum+uint64(id)))
	binary.BigEndian.PutUint16(b[tcpCsumOff:], ^packet.Fold(g.tcpSum+uint64(seq>>16)+uint64(seq&0xffff)))
}
