package flood

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// These tests check the frames without a socket. Every frame is decoded by
// gopacket and serialized again with gopacket computing lengths and
// checksums: the bytes must come back identical, so the checksums are
// checked by code that shares nothing with this package's.

var (
	macA    = net.HardwareAddr{0x02, 0x52, 0x4c, 0, 0, 0x0a}
	macB    = net.HardwareAddr{0x02, 0x52, 0x4c, 0, 0, 0x02}
	target  = netip.MustParseAddrPort("198.18.0.2:20000")
	spoofed = netip.MustParsePrefix("198.18.128.0/17")
)

func testFlood() *SYNFlood {
	return &SYNFlood{
		// No such interface anywhere: should a check below ever let a
		// Run through, it fails to open a socket instead of sending on
		// the host's own network.
		Link:     Link{Iface: "rlb-noiface0", SrcMAC: macA, DstMAC: macB},
		Dst:      target,
		Sources:  spoofed,
		Count:    1,
		Duration: time.Second,
		Seed:     1,
	}
}

// decoded is a frame taken apart by gopacket.
type decoded struct {
	eth *layers.Ethernet
	ip  *layers.IPv4
	tcp *layers.TCP
}

// decodeAndReserialize decodes frame with gopacket, serializes the layers
// again with fresh lengths and checksums, and fails t unless the result is
// byte for byte the frame.
func decodeAndReserialize(t testing.TB, frame []byte) decoded {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode the frame: %v\n% x", el.Error(), frame)
	}
	var d decoded
	var ok bool
	if d.eth, ok = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		t.Fatalf("no Ethernet layer in % x", frame)
	}
	if d.ip, ok = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok {
		t.Fatalf("no IPv4 layer in % x", frame)
	}
	if d.tcp, ok = p.Layer(layers.LayerTypeTCP).(*layers.TCP); !ok {
		t.Fatalf("no TCP layer in % x", frame)
	}
	if len(d.tcp.Payload) != 0 {
		t.Fatalf("TCP payload of %d bytes, want none", len(d.tcp.Payload))
	}
	ip := *d.ip
	tcp := *d.tcp
	ip.Checksum, tcp.Checksum = 0, 0
	if err := tcp.SetNetworkLayerForChecksum(&ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, d.eth, &ip, &tcp); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()
	// gopacket pads a short frame to Ethernet's 60-byte minimum, as a NIC
	// would; the flood leaves that to the driver.
	if len(out) > len(frame) && len(out) == 60 && !bytes.ContainsFunc(out[len(frame):], func(r rune) bool { return r != 0 }) {
		out = out[:len(frame)]
	}
	if !bytes.Equal(out, frame) {
		t.Fatalf("gopacket re-serializes the frame differently (lengths or checksums wrong):\n got % x\nwant % x", frame, out)
	}
	return d
}

// refChecksumOK sums a frame's IPv4 header and its TCP segment with the
// pseudo-header one 16-bit word at a time, the plainest RFC 1071 code,
// and reports whether both verify (fold to 0xffff).
func refChecksumOK(frame []byte) (ipOK, tcpOK bool) {
	ip := frame[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	fold := func(s uint32) uint32 {
		for s > 0xffff {
			s = s>>16 + s&0xffff
		}
		return s
	}
	sum := func(b []byte, s uint32) uint32 {
		for i := 0; i+1 < len(b); i += 2 {
			s += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			s += uint32(b[len(b)-1]) << 8
		}
		return s
	}
	ipOK = fold(sum(ip[:ihl], 0)) == 0xffff
	seg := ip[ihl:total]
	pseudo := sum(ip[12:20], 0) + uint32(ip[9]) + uint32(len(seg))
	tcpOK = fold(sum(seg, pseudo)) == 0xffff
	return ipOK, tcpOK
}

func TestSYNFramesAreLinuxSYNs(t *testing.T) {
	f := testFlood()
	frames, err := f.Frames(3000)
	if err != nil {
		t.Fatal(err)
	}
	first := f.Sources.Masked().Addr()
	last := netip.MustParseAddr("198.18.255.255")
	for i, fr := range frames {
		if len(fr) != 74 {
			t.Fatalf("frame %d is %d bytes, want 74 (14 + 20 + 40)", i, len(fr))
		}
		if ipOK, tcpOK := refChecksumOK(fr); !ipOK || !tcpOK {
			t.Fatalf("frame %d: IPv4 checksum ok %v, TCP checksum ok %v", i, ipOK, tcpOK)
		}
		d := decodeAndReserialize(t, fr)
		if !bytes.Equal(d.eth.SrcMAC, macA) || !bytes.Equal(d.eth.DstMAC, macB) {
			t.Fatalf("frame %d: MACs %v -> %v", i, d.eth.SrcMAC, d.eth.DstMAC)
		}
		src, _ := netip.AddrFromSlice(d.ip.SrcIP)
		if !f.Sources.Contains(src) || src == first || src == last {
			t.Fatalf("frame %d: source %v outside %v or its network/broadcast address", i, src, f.Sources)
		}
		if d.ip.DstIP.String() != "198.18.0.2" || d.ip.TTL != 64 || d.ip.Flags != layers.IPv4DontFragment || d.ip.TOS != 0 {
			t.Fatalf("frame %d: IPv4 header %+v", i, d.ip)
		}
		tcp := d.tcp
		if tcp.DstPort != 20000 || tcp.SrcPort < 1024 {
			t.Fatalf("frame %d: ports %d -> %d", i, tcp.SrcPort, tcp.DstPort)
		}
		if !tcp.SYN || tcp.ACK || tcp.RST || tcp.FIN || tcp.PSH || tcp.URG || tcp.ECE || tcp.CWR || tcp.Ack != 0 {
			t.Fatalf("frame %d: flags or ack wrong: %+v", i, tcp)
		}
		if tcp.Window != 64240 {
			t.Fatalf("frame %d: window %d, want 64240", i, tcp.Window)
		}
		// The options exactly as Linux writes them: MSS, SACK-permitted,
		// timestamps, NOP, window scale.
		kinds := []layers.TCPOptionKind{layers.TCPOptionKindMSS, layers.TCPOptionKindSACKPermitted,
			layers.TCPOptionKindTimestamps, layers.TCPOptionKindNop, layers.TCPOptionKindWindowScale}
		if len(tcp.Options) != len(kinds) {
			t.Fatalf("frame %d: options %v", i, tcp.Options)
		}
		for j, k := range kinds {
			if tcp.Options[j].OptionType != k {
				t.Fatalf("frame %d: option %d is %v, want %v", i, j, tcp.Options[j].OptionType, k)
			}
		}
		if mss := binary.BigEndian.Uint16(tcp.Options[0].OptionData); mss != 1460 {
			t.Fatalf("frame %d: MSS %d", i, mss)
		}
		if tsecr := binary.BigEndian.Uint32(tcp.Options[2].OptionData[4:]); tsecr != 0 {
			t.Fatalf("frame %d: TSecr %d, want 0 in a SYN", i, tsecr)
		}
		if ws := tcp.Options[4].OptionData[0]; ws != 7 {
			t.Fatalf("frame %d: window scale %d", i, ws)
		}
	}
}

// A Linux 6.x client's SYN options, as tcpdump -x shows them, with TSval
// zeroed.
var linuxSYNOptions = []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7}

func TestSYNOptionLayouts(t *testing.T) {
	cases := []struct {
		name string
		o    SYNOptions
		want []byte // options with TSval zeroed
	}{
		{"linux", LinuxSYN, linuxSYNOptions},
		{"no timestamps (Windows-like)", SYNOptions{MSS: 1460, SACKPermitted: true, WindowScale: true, WScale: 8},
			[]byte{2, 4, 0x05, 0xb4, 1, 1, 4, 2, 1, 3, 3, 8}},
		{"timestamps without SACK", SYNOptions{MSS: 1400, Timestamps: true},
			[]byte{2, 4, 0x05, 0x78, 1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"MSS only", SYNOptions{MSS: 536}, []byte{2, 4, 0x02, 0x18}},
		{"no options", SYNOptions{}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := testFlood()
			f.Options = &c.o
			frames, err := f.Frames(200)
			if err != nil {
				t.Fatal(err)
			}
			for _, fr := range frames {
				if len(fr) != 54+len(c.want) {
					t.Fatalf("frame is %d bytes, want %d", len(fr), 54+len(c.want))
				}
				opts := append([]byte(nil), fr[54:]...)
				if c.o.Timestamps {
					// TSval is random; everything else is fixed.
					i := bytes.Index(c.want, []byte{8, 10}) + 2
					if binary.BigEndian.Uint32(opts[i:]) == 0 && binary.BigEndian.Uint32(fr[54+i:]) == 0 {
						t.Fatalf("TSval is 0")
					}
					copy(opts[i:i+4], []byte{0, 0, 0, 0})
				}
				if !bytes.Equal(opts, c.want) {
					t.Fatalf("options % x, want % x", opts, c.want)
				}
				decodeAndReserialize(t, fr)
			}
		})
	}
}

func TestSYNFramesDistinct(t *testing.T) {
	f := testFlood()
	const n = 10000
	frames, err := f.Frames(n)
	if err != nil {
		t.Fatal(err)
	}
	pairs := map[[6]byte]bool{}
	seqs := map[uint32]bool{}
	tsvals := map[uint32]bool{}
	var lowPorts, highPorts int
	var octets [256]int // third octet of the source, to see the prefix covered
	for _, fr := range frames {
		var pair [6]byte
		copy(pair[:4], fr[26:30]) // IPv4 source
		copy(pair[4:], fr[34:36]) // TCP source port
		pairs[pair] = true
		seqs[binary.BigEndian.Uint32(fr[38:42])] = true
		tsvals[binary.BigEndian.Uint32(fr[62:66])] = true
		port := binary.BigEndian.Uint16(fr[34:36])
		if port < 1024+64512/2 {
			lowPorts++
		} else {
			highPorts++
		}
		octets[fr[28]]++
	}
	for name, got := range map[string]int{"source address/port pairs": len(pairs), "sequence numbers": len(seqs), "TSvals": len(tsvals)} {
		if got < n*99/100 {
			t.Errorf("%d distinct %s in %d frames, want at least 99%%", got, name, n)
		}
	}
	// Each half of the port range holds 5000 ± 4σ (σ = 50).
	if lowPorts < 4800 || highPorts < 4800 {
		t.Errorf("source ports unbalanced: %d in the lower half, %d in the upper", lowPorts, highPorts)
	}
	// A /17 spans third octets 128-255; every one is hit (about 78
	// times each), none outside.
	for o, c := range octets {
		if (o >= 128) != (c > 0) {
			t.Errorf("third octet %d seen %d times", o, c)
		}
	}
}

func TestSYNFramesReproducible(t *testing.T) {
	a, _ := testFlood().Frames(100)
	b, _ := testFlood().Frames(100)
	other := testFlood()
	other.Seed = 2
	c, _ := other.Frames(100)
	w1 := testFlood().newGen(macA, 1)
	same, differ := 0, 0
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("frame %d differs between two runs with seed 1", i)
		}
		if bytes.Equal(a[i], c[i]) {
			same++
		}
		fr := make([]byte, w1.frameLen())
		w1.next(fr)
		if !bytes.Equal(a[i], fr) {
			differ++
		}
	}
	if same != 0 {
		t.Errorf("%d of 100 frames equal with seeds 1 and 2", same)
	}
	if differ != 100 {
		t.Errorf("worker 1 repeats %d of worker 0's frames", 100-differ)
	}
}

func TestSYNSourcesSmallPrefixes(t *testing.T) {
	cases := []struct {
		prefix string
		want   []string
	}{
		{"198.18.200.7/32", []string{"198.18.200.7"}},
		{"198.18.200.6/31", []string{"198.18.200.6", "198.18.200.7"}},
		{"198.18.200.4/30", []string{"198.18.200.5", "198.18.200.6"}},
		{"198.18.200.0/29", []string{"198.18.200.1", "198.18.200.2", "198.18.200.3", "198.18.200.4", "198.18.200.5", "198.18.200.6"}},
	}
	for _, c := range cases {
		f := testFlood()
		f.Sources = netip.MustParsePrefix(c.prefix)
		frames, err := f.Frames(500)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, fr := range frames {
			seen[netip.AddrFrom4([4]byte(fr[26:30])).String()] = true
			if ipOK, tcpOK := refChecksumOK(fr); !ipOK || !tcpOK {
				t.Fatalf("%s: bad checksum", c.prefix)
			}
		}
		var got []string
		for _, a := range c.want {
			if seen[a] {
				got = append(got, a)
			}
		}
		if len(got) != len(c.want) || len(seen) != len(c.want) {
			t.Errorf("%s: sources %v, want exactly %v", c.prefix, seen, c.want)
		}
	}
}

func TestRSTFrames(t *testing.T) {
	client := netip.MustParseAddrPort("198.18.0.10:51000")
	seq, ack := uint32(0xfffffff0), uint32(12345)
	base := func() *RSTSpray {
		return &RSTSpray{Link: Link{Iface: "rlb-noiface0", SrcMAC: macA, DstMAC: macB}, Src: client, Dst: target, Count: 1, Seed: 9}
	}
	check := func(t *testing.T, r *RSTSpray, n int, wantSeq func(i int) (uint32, bool)) {
		t.Helper()
		frames, err := r.Frames(n)
		if err != nil {
			t.Fatal(err)
		}
		seqs := map[uint32]bool{}
		for i, fr := range frames {
			if len(fr) != 54 {
				t.Fatalf("RST %d is %d bytes, want 54", i, len(fr))
			}
			d := decodeAndReserialize(t, fr)
			if d.ip.SrcIP.String() != "198.18.0.10" || d.ip.DstIP.String() != "198.18.0.2" ||
				d.tcp.SrcPort != 51000 || d.tcp.DstPort != 20000 {
				t.Fatalf("RST %d: wrong 4-tuple %v:%d -> %v:%d", i, d.ip.SrcIP, d.tcp.SrcPort, d.ip.DstIP, d.tcp.DstPort)
			}
			if !d.tcp.RST || d.tcp.SYN || d.tcp.FIN || d.tcp.Window != 0 {
				t.Fatalf("RST %d: flags %+v", i, d.tcp)
			}
			if r.Ack != nil && (!d.tcp.ACK || d.tcp.Ack != *r.Ack) || r.Ack == nil && (d.tcp.ACK || d.tcp.Ack != 0) {
				t.Fatalf("RST %d: ACK %v ack %d, want ack %v", i, d.tcp.ACK, d.tcp.Ack, r.Ack)
			}
			if want, exact := wantSeq(i); exact && d.tcp.Seq != want {
				t.Fatalf("RST %d: seq %#x, want %#x", i, d.tcp.Seq, want)
			}
			seqs[d.tcp.Seq] = true
		}
		if _, exact := wantSeq(0); !exact && len(seqs) < n*99/100 {
			t.Fatalf("%d distinct random sequence numbers in %d RSTs", len(seqs), n)
		}
	}
	t.Run("random", func(t *testing.T) {
		check(t, base(), 2000, func(int) (uint32, bool) { return 0, false })
	})
	t.Run("exact", func(t *testing.T) {
		r := base()
		r.Seq = &seq
		check(t, r, 50, func(int) (uint32, bool) { return seq, true })
	})
	t.Run("stepping through the window, wrapping", func(t *testing.T) {
		r := base()
		r.Seq, r.SeqStep, r.Ack = &seq, 8, &ack
		check(t, r, 50, func(i int) (uint32, bool) { return seq + uint32(i)*8, true })
	})
}

func TestValidation(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*SYNFlood)
		want   string
	}{
		{"no count", func(f *SYNFlood) { f.Count = 0 }, "Count"},
		{"no duration", func(f *SYNFlood) { f.Duration = 0 }, "Duration"},
		{"negative rate", func(f *SYNFlood) { f.Rate = -1 }, "Rate"},
		{"no destination MAC", func(f *SYNFlood) { f.DstMAC = nil }, "DstMAC"},
		{"IPv6 target", func(f *SYNFlood) { f.Dst = netip.MustParseAddrPort("[2001:db8::1]:80") }, "Dst"},
		{"no port", func(f *SYNFlood) { f.Dst = netip.AddrPortFrom(target.Addr(), 0) }, "Dst"},
		{"IPv6 sources", func(f *SYNFlood) { f.Sources = netip.MustParsePrefix("2001:db8::/64") }, "Sources"},
		{"sources hold the target", func(f *SYNFlood) { f.Sources = netip.MustParsePrefix("198.18.0.0/24") }, "contains"},
		{"window scale", func(f *SYNFlood) { o := LinuxSYN; o.WScale = 15; f.Options = &o }, "WScale"},
		{"workers", func(f *SYNFlood) { f.Workers = 99 }, "Workers"},
		{"method", func(f *SYNFlood) { f.Method = 42 }, "Method"},
	}
	for _, c := range cases {
		f := testFlood()
		c.mutate(f)
		_, err := f.Run(t.Context())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Run error %v, want one naming %s", c.name, err, c.want)
		}
	}
	f := testFlood()
	f.SrcMAC = nil
	if _, err := f.Frames(1); err != errNoMAC {
		t.Errorf("Frames without SrcMAC: %v", err)
	}
	r := &RSTSpray{Link: Link{Iface: "rlb-noiface0", DstMAC: macB}, Src: netip.MustParseAddrPort("198.18.0.10:1"), Dst: target}
	if _, err := r.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "Count") {
		t.Errorf("RSTSpray without Count: %v", err)
	}
}

// FuzzSYNFrame checks that any seed, prefix and option set gives frames
// whose checksums verify and whose sources lie inside the prefix.
func FuzzSYNFrame(f *testing.F) {
	f.Add(uint64(1), uint32(0xc6128000), uint8(17), uint16(1460), uint8(0xf), uint8(7))
	f.Add(uint64(0), uint32(0xc612c807), uint8(32), uint16(0), uint8(0), uint8(0))
	f.Add(uint64(1<<63), uint32(0x0a000000), uint8(1), uint16(65535), uint8(0x5), uint8(14))
	f.Fuzz(func(t *testing.T, seed uint64, addr uint32, bits uint8, mss uint16, flags uint8, ws uint8) {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], addr)
		p, err := netip.AddrFrom4(a).Prefix(int(bits % 33))
		if err != nil || p.Contains(target.Addr()) {
			return
		}
		fl := testFlood()
		fl.Seed, fl.Sources = seed, p
		fl.Options = &SYNOptions{MSS: mss, SACKPermitted: flags&1 != 0, Timestamps: flags&2 != 0, WindowScale: flags&4 != 0, WScale: ws % 15}
		frames, err := fl.Frames(64)
		if err != nil {
			t.Fatal(err)
		}
		for _, fr := range frames {
			if ipOK, tcpOK := refChecksumOK(fr); !ipOK || !tcpOK {
				t.Fatalf("checksums: IPv4 %v TCP %v\n% x", ipOK, tcpOK, fr)
			}
			if !p.Contains(netip.AddrFrom4([4]byte(fr[26:30]))) {
				t.Fatalf("source %v outside %v", netip.AddrFrom4([4]byte(fr[26:30])), p)
			}
			decodeAndReserialize(t, fr)
		}
	})
}

func TestPacerNeverRunsAhead(t *testing.T) {
	start := time.Unix(1000, 0)
	const rate = 5000.0
	p := newPacer(rate, start)
	now := start
	sent := 0
	for step := range 20000 {
		// Uneven steps, and one long stall halfway through.
		d := time.Duration(step%7) * 37 * time.Microsecond
		if step == 10000 {
			d = 2 * time.Second
		}
		now = now.Add(d)
		before := sent
		n, wait := p.take(now, batchSize)
		sent += n
		if n == 0 && wait <= 0 {
			t.Fatalf("step %d: no frames and no wait", step)
		}
		if limit := 1 + rate*now.Sub(start).Seconds(); float64(sent) > limit+1e-9 {
			t.Fatalf("step %d: %d frames sent after %v, more than 1 + rate x elapsed = %.1f", step, sent, now.Sub(start), limit)
		}
		if step == 10000 && sent-before > int(rate/100) {
			t.Fatalf("after a 2 s stall the pacer let %d frames go at once, want at most 10 ms worth (%d)", sent-before, int(rate/100))
		}
	}
	if sent < int(rate*now.Sub(start).Seconds()*0.5) {
		t.Errorf("only %d frames in %v at %v/s", sent, now.Sub(start), rate)
	}
}

// BenchmarkSYNFrame is the cost of making one SYN, without sending it.
func BenchmarkSYNFrame(b *testing.B) {
	g := testFlood().newGen(macA, 0)
	fr := make([]byte, g.frameLen())
	b.SetBytes(int64(len(fr)))
	for b.Loop() {
		g.next(fr)
	}
}
