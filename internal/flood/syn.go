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

// SYNFlood is a spoofed SYN flood: TCP SYNs to Dst from random addresses
// in Sources, with random source ports (1024-65535), sequence numbers,
// TSvals and IP IDs, carrying the options a Linux client sends, so that a
// SYN-cookie path sees what real clients send. Sources should have no route
// back: the target's SYN-ACKs (or RSTs) must go nowhere.
type SYNFlood struct {
	Link
	// Dst is the target, 198.18.0.2:20000 in a lab.
	Dst netip.AddrPort
	// Sources is the IPv4 prefix source addresses are drawn from, e.g.
	// 198.18.128.0/17. Its network and broadcast addresses are left out
	// (for prefixes up to /30), as no real host sends from them.
	Sources netip.Prefix
	// Options are the SYN's TCP options; nil means LinuxSYN.
	Options *SYNOptions
	// Count bounds the frames sent. Required.
	Count int
	// Duration bounds the time spent sending. Required.
	Duration time.Duration
	// Rate is frames per second over all workers; 0 sends as fast as the
	// machine can.
	Rate int
	// Seed seeds the PCG behind every random field: the same Seed, Workers
	// 1 and a run stopped by Count give the same frames. Log it.
	Seed uint64
	// Method is how frames reach the kernel; Auto is the fastest here.
	Method Method
	// Workers is the number of sending goroutines, each with its own
	// socket and its own PCG stream; 0 means the fastest measured here
	// (two, or one on a single core). Set 1 for frames reproducible in
	// order.
	Workers int
}

// SYNOptions are the TCP options of each SYN, laid out as Linux's
// tcp_options_write does, so that the frames are byte for byte what a
// Linux client sends apart from the random fields.
type SYNOptions struct {
	// MSS is the maximum segment size option; 0 leaves it out.
	MSS uint16
	// SACKPermitted adds the SACK-permitted option (RFC 2018).
	SACKPermitted bool
	// Timestamps adds the timestamps option (RFC 7323) with a random
	// TSval and TSecr 0.
	Timestamps bool
	// WindowScale adds the window scale option with shift WScale.
	WindowScale bool
	WScale      uint8
}

// LinuxSYN are the options of a Linux 6.x client's SYN on an Ethernet
// link: MSS 1460, SACK permitted, timestamps and window scale 7.
var LinuxSYN = SYNOptions{MSS: 1460, SACKPermitted: true, Timestamps: true, WindowScale: true, WScale: 7}

// synWindow is a Linux client's SYN window for MSS 1460 (44 × 1460).
const synWindow = 64240

// Run sends the flood and reports what it sent. It returns nil when Count
// or Duration stopped it, and ctx's error if ctx ended first.
func (f *SYNFlood) Run(ctx context.Context) (Stats, error) {
	if err := f.check(false); err != nil {
		return Stats{}, err
	}
	m, workers, err := resolve(f.Method, f.Workers)
	if err != nil {
		return Stats{}, err
	}
	lim := limits{count: f.Count, duration: f.Duration, rate: f.Rate}
	return run(ctx, f.Link, m, workers, lim, func(src net.HardwareAddr, w int) generator {
		return f.newGen(src, w)
	})
}

// Frames returns the first n frames worker 0 of a Run would send, without
// a socket: for tests of the frames themselves, or to send them some other
// way. It needs Link.SrcMAC.
func (f *SYNFlood) Frames(n int) ([][]byte, error) {
	if err := f.check(true); err != nil {
		return nil, err
	}
	g := f.newGen(f.SrcMAC, 0)
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, g.frameLen())
		g.next(out[i])
	}
	return out, nil
}

func (f *SYNFlood) check(needSrc bool) error {
	if err := checkMACs(f.Link, needSrc); err != nil {
		return err
	}
	if !f.Dst.Addr().Is4() || f.Dst.Port() == 0 {
		return fmt.Errorf("flood: Dst %v: want an IPv4 address and a port", f.Dst)
	}
	if !f.Sources.IsValid() || !f.Sources.Addr().Is4() {
		return fmt.Errorf("flood: Sources %v: want an IPv4 prefix such as 198.18.128.0/17", f.Sources)
	}
	if f.Sources.Contains(f.Dst.Addr()) {
		return fmt.Errorf("flood: Sources %v contains the target %v", f.Sources, f.Dst.Addr())
	}
	if o := f.Options; o != nil && o.WindowScale && o.WScale > 14 {
		return fmt.Errorf("flood: WScale %d: RFC 7323 allows at most 14", o.WScale)
	}
	return limits{count: f.Count, duration: f.Duration, rate: f.Rate}.check(true)
}

// synGen makes SYNs from one template. The template's checksum fields are
// zero and so are its variable fields; ipSum and tcpSum are the template's
// unfolded sums (the TCP one with the pseudo-header, source address zero).
// A frame's checksum is then the template's sum plus its own variable
// words, folded and complemented: an RFC 1624 update from the zeroed
// template, without summing the frame again.
type synGen struct {
	tmpl          []byte
	ipSum, tcpSum uint64
	tsOff         int // TSval's offset in the frame; 0 without timestamps
	srcBase       uint32
	hostFirst     uint32 // first usable host number in Sources
	hostCount     uint64 // usable host numbers, from hostFirst on
	rng           *rand.PCG
}

const (
	ipOff  = packet.EthernetLen
	tcpOff = ipOff + packet.IPv4MinLen
	// Offsets of the variable fields, from the frame's start.
	ipIDOff    = ipOff + 4
	ipCsumOff  = ipOff + 10
	ipSrcOff   = ipOff + 12
	tcpSrcOff  = tcpOff + 0
	tcpSeqOff  = tcpOff + 4
	tcpCsumOff = tcpOff + 16
)

// pcg returns worker w's generator for seed: the worker number selects the
// stream, so workers never draw the same numbers.
func pcg(seed uint64, w int) *rand.PCG {
	return rand.NewPCG(seed, 0x9e3779b97f4a7c15*uint64(w+1))
}

// synOptions lays the options out as Linux does (tcp_options_write):
// MSS; SACK-permitted fused with the timestamps' kind and length, or
// NOP NOP before either alone; NOP before window scale. Every option thus
// starts where Linux puts it and TSval sits on a 4-byte boundary.
func synOptions(o SYNOptions) (opts []byte, tsval int) {
	if o.MSS != 0 {
		opts = append(opts, 2, 4, byte(o.MSS>>8), byte(o.MSS))
	}
	switch {
	case o.Timestamps && o.SACKPermitted:
		opts = append(opts, 4, 2, 8, 10)
	case o.Timestamps:
		opts = append(opts, 1, 1, 8, 10)
	case o.SACKPermitted:
		opts = append(opts, 1, 1, 4, 2)
	}
	if o.Timestamps {
		tsval = len(opts)
		opts = append(opts, make([]byte, 8)...) // TSval, TSecr
	}
	if o.WindowScale {
		opts = append(opts, 1, 3, 3, o.WScale)
	}
	return opts, tsval
}

func (f *SYNFlood) newGen(src net.HardwareAddr, w int) *synGen {
	o := LinuxSYN
	if f.Options != nil {
		o = *f.Options
	}
	opts, tsval := synOptions(o)
	tcpLen := packet.TCPMinLen + len(opts)
	b := make([]byte, tcpOff+tcpLen)
	copy(b[0:6], f.DstMAC)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], packet.EtherTypeIPv4)

	dst := f.Dst.Addr().As4()
	ip := b[ipOff:tcpOff]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(packet.IPv4MinLen+tcpLen))
	ip[6] = 0x40 // DF, as Linux sets on every TCP segment (PMTU discovery)
	ip[8] = 64
	ip[9] = packet.ProtoTCP
	copy(ip[16:20], dst[:])

	tcp := b[tcpOff:]
	binary.BigEndian.PutUint16(tcp[2:4], f.Dst.Port())
	tcp[12] = byte(tcpLen/4) << 4
	tcp[13] = packet.FlagSYN
	binary.BigEndian.PutUint16(tcp[14:16], synWindow)
	copy(tcp[packet.TCPMinLen:], opts)

	g := &synGen{
		tmpl:   b,
		ipSum:  packet.Sum(ip, 0),
		tcpSum: packet.Sum(tcp, packet.PseudoHeaderSum([4]byte{}, dst, packet.ProtoTCP, tcpLen)),
		rng:    pcg(f.Seed, w),
	}
	if o.Timestamps {
		g.tsOff = tcpOff + packet.TCPMinLen + tsval
	}
	bits := 32 - f.Sources.Bits()
	g.srcBase = binary.BigEndian.Uint32(f.Sources.Masked().Addr().AsSlice())
	g.hostCount = 1 << bits
	if bits >= 2 {
		g.hostFirst, g.hostCount = 1, g.hostCount-2
	}
	return g
}

func (g *synGen) frameLen() int { return len(g.tmpl) }

func (g *synGen) next(b []byte) {
	copy(b, g.tmpl)
	r1, r2 := g.rng.Uint64(), g.rng.Uint64()
	// Lemire's multiply-shift maps 32 random bits onto [0, hostCount)
	// without a division; the bias is below 2^-15 for any prefix.
	src := g.srcBase + g.hostFirst + uint32((r1&0xffffffff)*g.hostCount>>32)
	sport := uint16(1024 + (r1>>32&0xffff)*(65536-1024)>>16)
	id := uint16(r1 >> 48)
	seq := uint32(r2)
	tsval := uint32(r2 >> 32)

	binary.BigEndian.PutUint16(b[ipIDOff:], id)
	binary.BigEndian.PutUint32(b[ipSrcOff:], src)
	binary.BigEndian.PutUint16(b[tcpSrcOff:], sport)
	binary.BigEndian.PutUint32(b[tcpSeqOff:], seq)

	srcWords := uint64(src>>16) + uint64(src&0xffff)
	binary.BigEndian.PutUint16(b[ipCsumOff:], ^packet.Fold(g.ipSum+uint64(id)+srcWords))
	tcpSum := g.tcpSum + srcWords + uint64(sport) + uint64(seq>>16) + uint64(seq&0xffff)
	if g.tsOff != 0 {
		binary.BigEndian.PutUint32(b[g.tsOff:], tsval)
		tcpSum += uint64(tsval>>16) + uint64(tsval&0xffff)
	}
	binary.BigEndian.PutUint16(b[tcpCsumOff:], ^packet.Fold(tcpSum))
}
