package packet

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var macBackend = [6]byte{0x02, 0, 0, 0, 0, 0x11}

type buildCase struct {
	name string
	seg  Segment
	// opts is the option area the segment must carry, byte for byte, as a
	// Linux host lays it out.
	opts []byte
}

func buildCases() []buildCase {
	cookieSYNACK := Segment{
		SrcMAC: [6]byte(macLB), DstMAC: [6]byte(macClient), Src: ipLB, Dst: ipClient,
		SrcPort: 20000, DstPort: 51000, Seq: 0x51d24ceb, Ack: 0x12345679,
		Flags: FlagSYN | FlagACK | FlagECE, Window: 0,
		Options: TCPOptions{MSS: 1460, WScale: 7, SACKPermitted: true, Timestamp: true, TSval: 0x00abcd17, TSecr: 0x01020304},
	}
	backendSYN := Segment{
		SrcMAC: [6]byte(macLB), DstMAC: macBackend, Src: ipLB, Dst: ipBackend,
		SrcPort: 40007, DstPort: 8090, Seq: 0x12345678, Flags: FlagSYN | FlagECE | FlagCWR, Window: 64240,
		Options: TCPOptions{MSS: 1440, WScale: 14, Timestamp: true, TSval: 0xfffffff0, TSecr: 0},
	}
	sackNoTS := backendSYN
	sackNoTS.Flags = FlagSYN
	sackNoTS.Options = TCPOptions{MSS: 536, WScale: 20, SACKPermitted: true} // 20: written as 14
	bare := backendSYN
	bare.Flags = FlagSYN
	bare.Options = TCPOptions{WScale: -1}
	ack := Segment{
		SrcMAC: [6]byte(macLB), DstMAC: macBackend, Src: ipLB, Dst: ipBackend,
		SrcPort: 40007, DstPort: 8090, Seq: 0x12345679, Ack: 0x9abcdef1, Flags: FlagACK, Window: 502,
		// MSS, window scale and SACK-permitted are for SYNs only: ignored.
		Options: TCPOptions{MSS: 1460, SACKPermitted: true, Timestamp: true, TSval: 1000, TSecr: 0x00abcd17},
	}
	ackNoOpts := ack
	ackNoOpts.Options = TCPOptions{}
	tagged := cookieSYNACK
	tagged.VLAN = 0x2000 | 42 // priority 1, VLAN 42
	partial := cookieSYNACK
	partial.Csum = CsumPartial
	partialACK := ack
	partialACK.Csum = CsumPartial

	linuxSYNACK := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x00, 0xab, 0xcd, 0x17, 1, 2, 3, 4, 1, 3, 3, 7}
	tsACK := []byte{1, 1, 8, 10, 0, 0, 0x03, 0xe8, 0x00, 0xab, 0xcd, 0x17}
	return []buildCase{
		{"cookie SYN-ACK", cookieSYNACK, linuxSYNACK},
		{"backend SYN", backendSYN, []byte{2, 4, 0x05, 0xa0, 1, 1, 8, 10, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0, 1, 3, 3, 14}},
		{"SYN with SACK and no timestamps", sackNoTS, []byte{2, 4, 0x02, 0x18, 1, 1, 4, 2, 1, 3, 3, 14}},
		{"SYN without options", bare, nil},
		{"ACK with timestamps", ack, tsACK},
		{"ACK without options", ackNoOpts, nil},
		{"tagged SYN-ACK", tagged, linuxSYNACK},
		{"partial SYN-ACK", partial, linuxSYNACK},
		{"partial ACK", partialACK, tsACK},
	}
}

// TestBuildSegment decodes each built frame with gopacket and checks every
// field, the option bytes, and both checksums with gopacket's verifier and
// with the plain reference sum.
func TestBuildSegment(t *testing.T) {
	for _, c := range buildCases() {
		t.Run(c.name, func(t *testing.T) {
			s := &c.seg
			buf := bytes.Repeat([]byte{0xee}, MaxSegmentLen+10) // stale bytes must not leak in
			n := BuildSegment(buf, s)
			l2 := EthernetLen
			if s.VLAN != 0 {
				l2 += Dot1QLen
			}
			if want := l2 + IPv4MinLen + TCPMinLen + len(c.opts); n != want {
				t.Fatalf("length %d, want %d", n, want)
			}
			frame := buf[:n]
			p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatalf("gopacket: %v", el.Error())
			}
			eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if !bytes.Equal(eth.SrcMAC, s.SrcMAC[:]) || !bytes.Equal(eth.DstMAC, s.DstMAC[:]) {
				t.Errorf("MACs %v -> %v", eth.SrcMAC, eth.DstMAC)
			}
			if s.VLAN != 0 {
				q, _ := p.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
				if eth.EthernetType != layers.EthernetTypeDot1Q || q == nil || q.VLANIdentifier != 42 || q.Priority != 1 || q.Type != layers.EthernetTypeIPv4 {
					t.Errorf("802.1Q tag: ethertype %v, %+v", eth.EthernetType, q)
				}
			} else if eth.EthernetType != layers.EthernetTypeIPv4 {
				t.Errorf("EtherType %v", eth.EthernetType)
			}

			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if ip.Version != 4 || ip.IHL != 5 || ip.TOS != 0 || int(ip.Length) != n-l2 || ip.Id != 0 ||
				ip.Flags != layers.IPv4DontFragment || ip.FragOffset != 0 || ip.TTL != 64 || ip.Protocol != layers.IPProtocolTCP ||
				!ip.SrcIP.Equal(net.IP(s.Src[:])) || !ip.DstIP.Equal(net.IP(s.Dst[:])) || len(ip.Options) != 0 {
				t.Errorf("IPv4 header %+v", ip)
			}

			tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			flags := [8]bool{tcp.FIN, tcp.SYN, tcp.RST, tcp.PSH, tcp.ACK, tcp.URG, tcp.ECE, tcp.CWR}
			for i, set := range flags {
				if set != (s.Flags&(1<<i) != 0) {
					t.Errorf("flag bit %d is %v", i, set)
				}
			}
			if uint16(tcp.SrcPort) != s.SrcPort || uint16(tcp.DstPort) != s.DstPort || tcp.Seq != s.Seq || tcp.Ack != s.Ack ||
				tcp.Window != s.Window || tcp.Urgent != 0 || int(tcp.DataOffset)*4 != TCPMinLen+len(c.opts) || tcp.NS || len(tcp.Payload) != 0 {
				t.Errorf("TCP header %+v", tcp)
			}
			if got := frame[l2+IPv4MinLen+TCPMinLen:]; !bytes.Equal(got, c.opts) {
				t.Errorf("options % x, want % x", got, c.opts)
			}

			ipb := frame[l2:]
			if !ipHeaderOK(ipb) {
				t.Error("IPv4 checksum does not verify")
			}
			if s.Csum == CsumPartial {
				if got, want := binary.BigEndian.Uint16(ipb[IPv4MinLen+16:]), uint16(pseudoRef(ipb)); got != want {
					t.Errorf("partial checksum field %#04x, want the pseudo-header sum %#04x", got, want)
				}
				completePartial(ipb)
			}
			if !tcpOK(ipb) {
				t.Error("TCP checksum does not verify")
			}
			// gopacket checks the same again, independently of refSum.
			p = gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			ip = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			tcp = p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
				t.Fatal(err)
			}
			for _, l := range []gopacket.LayerWithChecksum{ip, tcp} {
				if err, res := l.VerifyChecksum(); err != nil || !res.Valid {
					t.Errorf("gopacket: %T checksum %v %+v", l, err, res)
				}
			}

			// Our own parser accepts it, and SYNOptions reads back what a SYN
			// carries.
			f := parsed(t, frame)
			want := s.Options
			if s.Flags&FlagSYN == 0 {
				want = TCPOptions{WScale: -1, Timestamp: s.Options.Timestamp, TSval: s.Options.TSval, TSecr: s.Options.TSecr}
			}
			want.WScale = min(want.WScale, MaxWScale)
			if !want.Timestamp {
				want.TSval, want.TSecr = 0, 0
			}
			if got := f.TCP.SYNOptions(); got != want {
				t.Errorf("SYNOptions %+v, want %+v", got, want)
			}
			if !bytes.Equal(buf[n:], bytes.Repeat([]byte{0xee}, len(buf)-n)) {
				t.Error("wrote past the frame")
			}
		})
	}
}

func TestBuildSegmentShortBuffer(t *testing.T) {
	s := buildCases()[0].seg
	n := BuildSegment(make([]byte, MaxSegmentLen), &s)
	if n == 0 {
		t.Fatal("MaxSegmentLen is not enough")
	}
	buf := bytes.Repeat([]byte{0xee}, n-1)
	if got := BuildSegment(buf, &s); got != 0 {
		t.Errorf("wrote %d bytes into %d", got, len(buf))
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{0xee}, n-1)) {
		t.Error("a refused build wrote into the buffer")
	}
	s.VLAN = 1
	if BuildSegment(make([]byte, MaxSegmentLen), &s) != MaxSegmentLen {
		t.Error("a tagged SYN-ACK with every option is not MaxSegmentLen long")
	}
}

func TestBuildSegmentNoAllocs(t *testing.T) {
	s := buildCases()[0].seg
	buf := make([]byte, MaxSegmentLen)
	if n := testing.AllocsPerRun(100, func() { BuildSegment(buf, &s) }); n != 0 {
		t.Errorf("BuildSegment allocates %v times", n)
	}
}

// TestSetWindow: the window reads back and the checksum still verifies, in
// both states, for an even and an odd payload and a header with options.
func TestSetWindow(t *testing.T) {
	specs := map[string]segSpec{
		"odd payload": {src: ipClient, dst: ipLB, sport: 51000, dport: 20000, seq: 5, ack: 6, ackf: true, payload: []byte("abc")},
		"options": {src: ipBackend, dst: ipLB, sport: 8090, dport: 40007, seq: 5, ack: 6, ackf: true, payload: []byte("abcd"),
			tcpOptions: []layers.TCPOption{optNop, optNop, optTSOf(1, 2)}},
	}
	for name, spec := range specs {
		for _, state := range []CsumState{CsumComplete, CsumPartial} {
			for _, w := range []uint16{0, 1, 0xffff, 29200} {
				frame := build(t, spec)
				f := parsed(t, frame)
				if f.TCP.Window() != 64240 {
					t.Fatalf("%s: Window %d, want the 64240 gopacket wrote", name, f.TCP.Window())
				}
				if state == CsumPartial {
					makePartial(f.IP)
				}
				f.TCP.SetWindow(w, state)
				if state == CsumPartial {
					if got := binary.BigEndian.Uint16(f.TCP[16:]); got != uint16(pseudoRef(f.IP)) {
						t.Errorf("%s partial: SetWindow touched the pseudo-header sum", name)
					}
					completePartial(f.IP)
				}
				if f.TCP.Window() != w || binary.BigEndian.Uint16(frame[EthernetLen+IPv4MinLen+14:]) != w {
					t.Errorf("%s: window does not read back as %d", name, w)
				}
				if !tcpOK(f.IP) {
					t.Errorf("%s state %d window %d: TCP checksum does not verify", name, state, w)
				}
			}
		}
	}
}

func BenchmarkBuildSegment(b *testing.B) {
	for _, c := range []struct {
		name  string
		state CsumState
	}{{"complete", CsumComplete}, {"partial", CsumPartial}} {
		b.Run(c.name, func(b *testing.B) {
			s := buildCases()[0].seg
			s.Csum = c.state
			buf := make([]byte, MaxSegmentLen)
			b.ReportAllocs()
			for b.Loop() {
				s.Seq++
				if BuildSegment(buf, &s) == 0 {
					b.Fatal("buffer too short")
				}
			}
		})
	}
}
