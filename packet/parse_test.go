package packet

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func synSpec() segSpec {
	return segSpec{src: ipClient, dst: ipLB, sport: 51000, dport: 20000, seq: 1000, syn: true,
		tcpOptions: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}}
}

// icmpFrame builds an ICMP error from src to dst quoting quoted (an IPv4
// packet), cut to quoteLen bytes.
func icmpFrame(t testing.TB, src, dst [4]byte, typ, code uint8, mtu uint16, quoted []byte, quoteLen int) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.IP(src[:]), DstIP: net.IP(dst[:])}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	if typ == ICMPDestUnreachable && code == ICMPCodeFragNeeded {
		icmp.Seq = mtu // the low 16 bits of the "rest of header" carry the next-hop MTU
	}
	if quoteLen > len(quoted) {
		quoteLen = len(quoted)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, icmp, gopacket.Payload(quoted[:quoteLen]))
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func TestParseAccepts(t *testing.T) {
	withIPOpts := synSpec()
	// A router-alert option: 4 bytes, IHL 6. IP options are legal and rare;
	// the TCP header must be found after them.
	withIPOpts.ipOptions = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	vlan := synSpec()
	vlan.vlan = true
	data := segSpec{src: ipClient, dst: ipLB, sport: 51000, dport: 20000, seq: 5, ack: 9, ackf: true, psh: true, payload: []byte("hello, balancer")}
	// 54 bytes: gopacket's serializer pads the frame to 60, as a NIC would.
	short := segSpec{src: ipClient, dst: ipLB, sport: 51000, dport: 20000, ackf: true}

	tests := []struct {
		name   string
		spec   segSpec
		l3     int
		ihl    int
		tcpLen int
		frame  int // Len(): without padding
	}{
		{"syn with options", synSpec(), 14, 20, 32, 14 + 20 + 32},
		{"ip options", withIPOpts, 14, 24, 32, 14 + 24 + 32},
		{"802.1Q tag", vlan, 18, 20, 32, 18 + 20 + 32},
		{"data", data, 14, 20, 20 + 15, 14 + 20 + 35},
		{"ethernet padding ignored", short, 14, 20, 20, 54},
	}
	var p Parser
	var f Frame
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := build(t, tc.spec)
			if tc.name == "ethernet padding ignored" && len(b) != 60 {
				t.Fatalf("frame is %d bytes, want a padded 60", len(b))
			}
			if err := p.Parse(b, &f); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(f.Eth) != tc.l3 || f.VLAN != tc.spec.vlan {
				t.Errorf("l2 len %d vlan %v, want %d %v", len(f.Eth), f.VLAN, tc.l3, tc.spec.vlan)
			}
			if f.IP.HeaderLen() != tc.ihl || len(f.TCP) != tc.tcpLen || f.Len() != tc.frame {
				t.Errorf("ihl %d tcp %d len %d, want %d %d %d", f.IP.HeaderLen(), len(f.TCP), f.Len(), tc.ihl, tc.tcpLen, tc.frame)
			}
			if f.IP.Source() != tc.spec.src || f.IP.Destination() != tc.spec.dst {
				t.Errorf("addresses %v -> %v", f.IP.Source(), f.IP.Destination())
			}
			if f.TCP.SourcePort() != tc.spec.sport || f.TCP.DestinationPort() != tc.spec.dport || f.TCP.Seq() != tc.spec.seq {
				t.Errorf("ports %d -> %d seq %d", f.TCP.SourcePort(), f.TCP.DestinationPort(), f.TCP.Seq())
			}
			if string(f.TCP[f.TCP.HeaderLen():]) != string(tc.spec.payload) {
				t.Errorf("payload %q, want %q", f.TCP[f.TCP.HeaderLen():], tc.spec.payload)
			}
			if f.IsICMP() {
				t.Error("TCP segment reported as ICMP")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	base := func() []byte { return build(t, synSpec()) }
	mod := func(fn func(b []byte) []byte) []byte { return fn(base()) }
	setIP := func(off int, v byte) []byte { return mod(func(b []byte) []byte { b[14+off] = v; return b }) }
	long := segSpec{src: ipClient, dst: ipLB, sport: 1, dport: 20000, ackf: true, payload: make([]byte, 100)}
	mf := synSpec()
	mf.flagsMF = true
	off := synSpec()
	off.fragOffset = 8
	udp := func() []byte {
		buf := gopacket.NewSerializeBuffer()
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IP(ipClient[:]), DstIP: net.IP(ipLB[:])}
		u := &layers.UDP{SrcPort: 53, DstPort: 20000}
		_ = u.SetNetworkLayerForChecksum(ip)
		_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv4}, ip, u, gopacket.Payload(make([]byte, 30)))
		return buf.Bytes()
	}

	tests := []struct {
		name string
		b    []byte
		want Reason
	}{
		{"empty", nil, ReasonTruncated},
		{"half an ethernet header", base()[:10], ReasonTruncated},
		{"tag without inner type", build(t, segSpec{vlan: true, syn: true})[:16], ReasonTruncated},
		{"ethernet only", base()[:14], ReasonTruncated},
		{"ip header cut", base()[:30], ReasonTruncated},
		{"arp", mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[12:], 0x0806); return b }), ReasonNotIPv4},
		{"ipv6 ethertype", mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[12:], 0x86dd); return b }), ReasonNotIPv4},
		{"version 6 in header", setIP(0, 0x65), ReasonBadIPHeader},
		{"ihl 4", setIP(0, 0x44), ReasonBadIPHeader},
		{"ihl 0", setIP(0, 0x40), ReasonBadIPHeader},
		{"ihl past total length", mod(func(b []byte) []byte {
			b[14] = 0x4f // 60-byte header
			binary.BigEndian.PutUint16(b[16:], 40)
			return b[:14+40]
		}), ReasonBadIPHeader},
		{"total length longer than frame", base()[:14+20+20], ReasonBadIPLength},
		{"total length shorter than long frame", append(build(t, long), 1, 2, 3, 4, 5, 6, 7, 8), ReasonBadIPLength},
		{"total length zero", mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 0); return b }), ReasonBadIPHeader},
		{"more fragments", build(t, mf), ReasonFragment},
		{"fragment offset", build(t, off), ReasonFragment},
		{"tcp data offset 4", mod(func(b []byte) []byte { b[14+20+12] = 4 << 4; return b }), ReasonBadTCPHeader},
		{"tcp data offset past segment", mod(func(b []byte) []byte { b[14+20+12] = 15 << 4; return b }), ReasonBadTCPHeader},
		{"tcp header cut by total length", mod(func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[16:], 20+10)
			return b[:14+30]
		}), ReasonBadTCPHeader},
		{"udp", udp(), ReasonUnhandledProto},
		{"ip option with length 0", func() []byte {
			// The lengths add up; gopacket's option walk refuses an option
			// shorter than its own type and length bytes (RFC 791 3.1).
			s := synSpec()
			s.ipOptions = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
			b := build(t, s)
			b[14+21] = 0
			return b
		}(), ReasonDecode},
	}
	var p Parser
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := Frame{IP: IPv4{1}} // stale views must not survive a failed parse
			err := p.Parse(tc.b, &f)
			var r Reason
			if !errors.As(err, &r) || r != tc.want {
				t.Fatalf("Parse = %v, want %v", err, tc.want)
			}
			if f.TCP != nil || f.ICMP != nil {
				t.Error("views left set after a failed parse")
			}
		})
	}
}

func TestParseICMP(t *testing.T) {
	// What rawlb sent the backend: srcIP:natPort -> backend:8090, with a
	// payload, so the quote can be checked byte for byte.
	quoted := build(t, segSpec{src: ipLB, dst: ipBackend, sport: 40001, dport: 8090, seq: 77, ackf: true, payload: make([]byte, 1400)})[14:]
	var p Parser
	var f Frame

	b := icmpFrame(t, ipBackend, ipLB, ICMPDestUnreachable, ICMPCodeFragNeeded, 1280, quoted, 28)
	if err := p.Parse(b, &f); err != nil {
		t.Fatalf("frag needed: %v", err)
	}
	if !f.IsICMP() || f.TCP != nil || f.ICMP.Type() != 3 || f.ICMP.Code() != 4 || f.ICMP.MTU() != 1280 {
		t.Fatalf("icmp %v type %d code %d mtu %d", f.IsICMP(), f.ICMP.Type(), f.ICMP.Code(), f.ICMP.MTU())
	}
	if f.Inner.Source() != ipLB || f.Inner.Destination() != ipBackend || f.InnerSourcePort() != 40001 || f.InnerDestinationPort() != 8090 {
		t.Errorf("quote %v:%d -> %v:%d", f.Inner.Source(), f.InnerSourcePort(), f.Inner.Destination(), f.InnerDestinationPort())
	}

	rejects := []struct {
		name string
		b    []byte
		want Reason
	}{
		{"quote shorter than 8 tcp bytes", icmpFrame(t, ipBackend, ipLB, 3, 4, 1280, quoted, 27), ReasonBadICMP},
		{"icmp header cut", icmpFrame(t, ipBackend, ipLB, 3, 4, 1280, quoted, 0)[:14+20+4], ReasonBadIPLength},
		{"echo request", icmpFrame(t, ipBackend, ipLB, 8, 0, 0, quoted, 28), ReasonUnhandledICMP},
		{"quotes udp", func() []byte {
			q := append([]byte(nil), quoted...)
			q[9] = 17
			return icmpFrame(t, ipBackend, ipLB, 3, 3, 0, q, 28)
		}(), ReasonUnhandledICMP},
		{"quoted later fragment", func() []byte {
			q := append([]byte(nil), quoted...)
			binary.BigEndian.PutUint16(q[6:], 100)
			return icmpFrame(t, ipBackend, ipLB, 3, 3, 0, q, 28)
		}(), ReasonBadICMP},
	}
	for _, tc := range rejects {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Parse(tc.b, &f); err != tc.want {
				t.Fatalf("Parse = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReasonStrings(t *testing.T) {
	seen := map[string]bool{}
	for r := Reason(0); r < NumReasons; r++ {
		s := r.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Errorf("reason %d has label %q", r, s)
		}
		seen[s] = true
	}
	if NumReasons.String() != "unknown" {
		t.Error("out-of-range reason must say unknown")
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	good := build(t, synSpec())
	bad := build(t, segSpec{flagsMF: true, syn: true})
	var p Parser
	var f Frame
	if n := testing.AllocsPerRun(100, func() {
		_ = p.Parse(good, &f)
		_ = p.Parse(bad, &f)
	}); n != 0 {
		t.Fatalf("Parse allocates %.1f times per run", n)
	}
}
