package rawlb

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
)

func frameFor(t *testing.T, dst [4]byte, proto layers.IPProtocol, dport uint16, icmpType uint8, mod func([]byte)) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: net.IP{198, 18, 0, 10}, DstIP: net.IP(dst[:])}
	var l4 gopacket.SerializableLayer
	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: 5555, DstPort: layers.TCPPort(dport), SYN: true}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: 5555, DstPort: layers.UDPPort(dport)}
		_ = udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	default:
		l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(icmpType, 0)}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload(make([]byte, 28))); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if mod != nil {
		mod(b)
	}
	return b
}

func TestFilter(t *testing.T) {
	src := [4]byte{198, 18, 0, 2}
	other := [4]byte{198, 18, 0, 3}
	prog, err := buildFilter(src, 20000, 40000, 59999)
	if err != nil {
		t.Fatal(err)
	}
	insns, ok := bpf.Disassemble(prog)
	if !ok {
		t.Fatal("filter does not disassemble")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	tcp, udp, icmp := layers.IPProtocolTCP, layers.IPProtocolUDP, layers.IPProtocolICMPv4
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"tcp to the balancer port", frameFor(t, src, tcp, 20000, 0, nil), true},
		{"tcp to the first nat port", frameFor(t, src, tcp, 40000, 0, nil), true},
		{"tcp to the last nat port", frameFor(t, src, tcp, 59999, 0, nil), true},
		{"tcp below the nat range", frameFor(t, src, tcp, 39999, 0, nil), false},
		{"tcp above the nat range", frameFor(t, src, tcp, 60000, 0, nil), false},
		{"ssh to the host", frameFor(t, src, tcp, 22, 0, nil), false},
		{"tcp to another address", frameFor(t, other, tcp, 20000, 0, nil), false},
		{"udp to the balancer port", frameFor(t, src, udp, 20000, 0, nil), false},
		{"icmp unreachable", frameFor(t, src, icmp, 0, 3, nil), true},
		{"icmp time exceeded", frameFor(t, src, icmp, 0, 11, nil), true},
		{"icmp echo", frameFor(t, src, icmp, 0, 8, nil), false},
		{"arp", frameFor(t, src, tcp, 20000, 0, func(b []byte) { binary.BigEndian.PutUint16(b[12:], 0x0806) }), false},
		// Malformed TCP to srcIP passes so the daemon counts it.
		{"fragment", frameFor(t, src, tcp, 22, 0, func(b []byte) { b[20] |= 0x20 }), true},
		{"later fragment", frameFor(t, src, tcp, 22, 0, func(b []byte) { b[21] = 1 }), true},
		{"ihl 4", frameFor(t, src, tcp, 22, 0, func(b []byte) { b[14] = 0x44 }), true},
		{"cut before the ports", frameFor(t, src, tcp, 20000, 0, nil)[:14+20+2], true},
		{"cut inside the ip header", frameFor(t, src, tcp, 20000, 0, nil)[:14+10], false},
	}
	for _, tc := range tests {
		n, err := vm.Run(tc.b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := n > 0; got != tc.want {
			t.Errorf("%s: passes = %v, want %v", tc.name, got, tc.want)
		}
	}
}
