package packet

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// natCases are segments as a client sends them, with odd and even payloads,
// options and a VLAN tag: each shape an incremental update can get wrong.
func natCases() map[string]segSpec {
	ipOpts := synSpec()
	ipOpts.ipOptions = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	vlan := synSpec()
	vlan.vlan = true
	return map[string]segSpec{
		"syn":          synSpec(),
		"ip options":   ipOpts,
		"vlan":         vlan,
		"odd payload":  {src: ipClient, dst: ipLB, sport: 65535, dport: 20000, seq: 1, ack: 2, ackf: true, psh: true, payload: []byte("odd")},
		"even payload": {src: ipClient, dst: ipLB, sport: 1, dport: 20000, seq: 0xffffffff, ack: 2, ackf: true, payload: bytes.Repeat([]byte{0xff}, 1448)},
		"fin":          {src: ipClient, dst: ipLB, sport: 33333, dport: 20000, fin: true, ackf: true},
	}
}

var (
	natPort     = uint16(40007)
	backendPort = uint16(8090)
)

func TestRewriteTCPComplete(t *testing.T) {
	for name, spec := range natCases() {
		t.Run(name, func(t *testing.T) {
			b := build(t, spec)
			f := parsed(t, b)
			f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumComplete)
			checkRewritten(t, b, f, ipLB, natPort, ipBackend, backendPort, spec.payload)

			// And back, as a reply would travel: the original comes out.
			f.RewriteTCP(spec.src, spec.sport, spec.dst, spec.dport, CsumComplete)
			if !bytes.Equal(b, build(t, spec)) {
				t.Error("rewriting there and back did not restore the frame byte for byte")
			}
		})
	}
}

// checkRewritten decodes the frame with gopacket and checks every field and
// both checksums with the reference sum.
func checkRewritten(t *testing.T, b []byte, f *Frame, src [4]byte, sport uint16, dst [4]byte, dport uint16, payload []byte) {
	t.Helper()
	pkt := gopacket.NewPacket(b[:f.Len()], layers.LayerTypeEthernet, gopacket.Default)
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip == nil || tcp == nil {
		t.Fatalf("gopacket cannot decode the result: %v", pkt.ErrorLayer())
	}
	if [4]byte(ip.SrcIP.To4()) != src || [4]byte(ip.DstIP.To4()) != dst || uint16(tcp.SrcPort) != sport || uint16(tcp.DstPort) != dport {
		t.Errorf("got %v:%d -> %v:%d", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	if !bytes.Equal(tcp.Payload, payload) {
		t.Error("payload changed")
	}
	if !ipHeaderOK(f.IP) {
		t.Error("IPv4 header checksum does not verify")
	}
	if !tcpOK(f.IP) {
		t.Error("TCP checksum does not verify")
	}
}

func TestRewriteTCPPartial(t *testing.T) {
	for name, spec := range natCases() {
		t.Run(name, func(t *testing.T) {
			b := build(t, spec)
			f := parsed(t, b)
			makePartial(f.IP)
			f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumPartial)
			// The field must now be the pseudo-header sum of the new
			// addresses, which is what the kernel would have put there had
			// it sent the segment to the backend itself.
			hl := f.IP.HeaderLen()
			if got, want := binary.BigEndian.Uint16(f.IP[hl+16:]), uint16(pseudoRef(f.IP)); got != want {
				t.Errorf("partial field %#04x, want pseudo-header sum %#04x", got, want)
			}
			completePartial(f.IP)
			checkRewritten(t, b, f, ipLB, natPort, ipBackend, backendPort, spec.payload)
		})
	}
}

// TestRewriteTCPPartialNeedsState shows the two states are not
// interchangeable: treating a partial checksum as complete folds the port
// change into the pseudo-header sum, and the segment arrives corrupt.
func TestRewriteTCPPartialNeedsState(t *testing.T) {
	f := parsed(t, build(t, natCases()["odd payload"]))
	makePartial(f.IP)
	f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumComplete)
	completePartial(f.IP)
	if tcpOK(f.IP) {
		t.Fatal("a partial checksum rewritten as complete verified; the test cannot tell the states apart")
	}
}

func TestRewriteTCPAllocatesNothing(t *testing.T) {
	f := parsed(t, build(t, natCases()["odd payload"]))
	if n := testing.AllocsPerRun(100, func() {
		f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumComplete)
		f.RewriteTCP(ipClient, 65535, ipLB, 20000, CsumComplete)
	}); n != 0 {
		t.Fatalf("RewriteTCP allocates %.1f times per run", n)
	}
}

func TestTranslateICMP(t *testing.T) {
	// rawlb sent srcIP:natPort -> backend:8090; a hop toward the backend
	// says it needs fragmentation and quotes the whole segment (Linux
	// quotes up to 576 bytes), so even the quoted TCP checksum can be
	// verified after translation.
	sent := build(t, segSpec{src: ipLB, dst: ipBackend, sport: natPort, dport: backendPort, seq: 99, ackf: true, psh: true, payload: []byte("quoted payload!")})[14:]
	router := [4]byte{198, 18, 1, 1}
	for _, quoteLen := range []int{28, 40, len(sent)} {
		b := icmpFrame(t, router, ipLB, ICMPDestUnreachable, ICMPCodeFragNeeded, 1400, sent, quoteLen)
		f := parsed(t, b)
		// Toward the client the error must look like it is about the
		// client's own segment to srcIP:20000.
		f.TranslateICMP(ipLB, ipClient, ipClient, 51000, ipLB, 20000)

		pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		icmp, _ := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ip == nil || icmp == nil {
			t.Fatalf("quote %d: gopacket cannot decode the result", quoteLen)
		}
		if [4]byte(ip.SrcIP.To4()) != ipLB || [4]byte(ip.DstIP.To4()) != ipClient {
			t.Errorf("quote %d: outer %v -> %v", quoteLen, ip.SrcIP, ip.DstIP)
		}
		if icmp.TypeCode.Type() != 3 || icmp.TypeCode.Code() != 4 || f.ICMP.MTU() != 1400 {
			t.Errorf("quote %d: type/code/MTU changed", quoteLen)
		}
		if !ipHeaderOK(f.IP) {
			t.Errorf("quote %d: outer IPv4 checksum does not verify", quoteLen)
		}
		if refSum(f.ICMP) != 0xffff {
			t.Errorf("quote %d: ICMP checksum does not verify", quoteLen)
		}
		if !ipHeaderOK(f.Inner) {
			t.Errorf("quote %d: quoted IPv4 checksum does not verify", quoteLen)
		}
		if f.Inner.Source() != ipClient || f.Inner.Destination() != ipLB || f.InnerSourcePort() != 51000 || f.InnerDestinationPort() != 20000 {
			t.Errorf("quote %d: quoted %v:%d -> %v:%d", quoteLen, f.Inner.Source(), f.InnerSourcePort(), f.Inner.Destination(), f.InnerDestinationPort())
		}
		if quoteLen == len(sent) && !tcpOK(f.Inner) {
			t.Error("quoted TCP checksum does not verify after translation")
		}
	}
}

func TestSetPseudoChecksum(t *testing.T) {
	f := parsed(t, build(t, natCases()["even payload"]))
	f.TCP.SetChecksum(0x1234) // a stale value, as GRO leaves it
	f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumPartial)
	f.SetPseudoChecksum()
	completePartial(f.IP)
	if !tcpOK(f.IP) {
		t.Fatal("a segment put into the partial state does not verify once completed")
	}
}
