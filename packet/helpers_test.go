package packet

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Packets in these tests are built with gopacket's serializer, never with
// this package's code, so a test cannot agree with a bug in it.

var (
	macClient = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	macLB     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	ipClient  = [4]byte{198, 18, 0, 10}
	ipLB      = [4]byte{198, 18, 0, 2}
	ipBackend = [4]byte{198, 18, 0, 11}
)

// segSpec describes a TCP segment to build.
type segSpec struct {
	src, dst       [4]byte
	sport, dport   uint16
	seq, ack       uint32
	syn, ackf, fin bool
	rst, psh       bool
	payload        []byte
	ipOptions      []layers.IPv4Option
	tcpOptions     []layers.TCPOption
	vlan           bool
	flagsMF        bool
	fragOffset     uint16
	pad            int // zero bytes appended after the IP packet
}

// build serializes the segment with correct lengths and checksums.
func build(t testing.TB, s segSpec) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{
		Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Id: 0x1234,
		SrcIP: net.IP(s.src[:]), DstIP: net.IP(s.dst[:]), Options: s.ipOptions,
		FragOffset: s.fragOffset,
	}
	if s.flagsMF {
		ip.Flags = layers.IPv4MoreFragments
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport),
		Seq: s.seq, Ack: s.ack, SYN: s.syn, ACK: s.ackf, FIN: s.fin, RST: s.rst, PSH: s.psh,
		Window: 64240, Options: s.tcpOptions,
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	var ls []gopacket.SerializableLayer
	if s.vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, eth, &layers.Dot1Q{VLANIdentifier: 42, Type: layers.EthernetTypeIPv4})
	} else {
		ls = append(ls, eth)
	}
	ls = append(ls, ip, tcp, gopacket.Payload(s.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	out := append([]byte(nil), buf.Bytes()...)
	return append(out, make([]byte, s.pad)...)
}

// refSum is a plain RFC 1071 sum, one 16-bit word at a time: deliberately
// the simplest code, independent of Sum's 64-bit loop.
func refSum(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return s
}

// pseudoRef is the pseudo-header sum of an IPv4 packet's TCP segment.
func pseudoRef(ip []byte) uint32 {
	hl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	ph := make([]byte, 12)
	copy(ph[0:8], ip[12:20])
	ph[9] = ip[9]
	binary.BigEndian.PutUint16(ph[10:12], uint16(total-hl))
	return refSum(ph)
}

// ipHeaderOK reports whether an IPv4 header's checksum verifies.
func ipHeaderOK(ip []byte) bool {
	hl := int(ip[0]&0xf) * 4
	return refSum(ip[:hl]) == 0xffff
}

// tcpOK reports whether the TCP checksum of an IPv4 packet verifies.
func tcpOK(ip []byte) bool {
	hl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	s := pseudoRef(ip) + refSum(ip[hl:total])
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return s == 0xffff
}

// makePartial turns a complete TCP checksum into the CHECKSUM_PARTIAL state
// Linux leaves for offload: the field holds the folded pseudo-header sum.
func makePartial(ip []byte) {
	hl := int(ip[0]&0xf) * 4
	binary.BigEndian.PutUint16(ip[hl+16:], uint16(pseudoRef(ip)))
}

// completePartial does what the device (or skb_checksum_help) does to a
// CHECKSUM_PARTIAL segment: sum from csum_start, over the field as it is,
// and store the complement.
func completePartial(ip []byte) {
	hl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	binary.BigEndian.PutUint16(ip[hl+16:], ^uint16(refSum(ip[hl:total])))
}

// parsed parses b, failing t if Parse rejects it.
func parsed(t testing.TB, b []byte) *Frame {
	t.Helper()
	var p Parser
	f := new(Frame)
	if err := p.Parse(b, f); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}
