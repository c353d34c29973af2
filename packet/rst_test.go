package packet

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestBuildReset(t *testing.T) {
	vlanSyn := synSpec()
	vlanSyn.vlan = true
	synData := synSpec()
	synData.payload = []byte("fast open data")
	tests := []struct {
		name     string
		spec     segSpec
		seq, ack uint32
		flags    uint8
	}{
		// A SYN has no ACK: seq 0, ack = ISN + 1 (the SYN occupies one).
		{"syn", synSpec(), 0, 1001, FlagRST | FlagACK},
		{"syn on a vlan", vlanSyn, 0, 1001, FlagRST | FlagACK},
		{"syn with data", synData, 0, 1001 + 14, FlagRST | FlagACK},
		{"fin without ack", segSpec{src: ipClient, dst: ipLB, sport: 5, dport: 20000, seq: 10, fin: true, payload: []byte("ab")}, 0, 13, FlagRST | FlagACK},
		// A segment with an ACK: the reset takes its sequence from it.
		{"ack", segSpec{src: ipClient, dst: ipLB, sport: 5, dport: 20000, seq: 10, ack: 777, ackf: true}, 777, 0, FlagRST},
	}
	var p Parser
	var f Frame
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Parse(build(t, tc.spec), &f); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, MaxResetLen)
			if BuildReset(buf[:MaxResetLen-1], &f) != 0 {
				t.Error("BuildReset wrote into a buffer that is too short")
			}
			n := BuildReset(buf, &f)
			pkt := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
			eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if eth == nil || ip == nil || tcp == nil {
				t.Fatalf("gopacket cannot decode the reset: %v", pkt.ErrorLayer())
			}
			if eth.DstMAC.String() != macClient.String() || eth.SrcMAC.String() != macLB.String() {
				t.Errorf("MACs %v -> %v", eth.SrcMAC, eth.DstMAC)
			}
			if (pkt.Layer(layers.LayerTypeDot1Q) != nil) != tc.spec.vlan {
				t.Error("VLAN tag not carried over")
			}
			if [4]byte(ip.SrcIP.To4()) != tc.spec.dst || [4]byte(ip.DstIP.To4()) != tc.spec.src {
				t.Errorf("addresses %v -> %v", ip.SrcIP, ip.DstIP)
			}
			if uint16(tcp.SrcPort) != tc.spec.dport || uint16(tcp.DstPort) != tc.spec.sport {
				t.Errorf("ports %d -> %d", tcp.SrcPort, tcp.DstPort)
			}
			if tcp.Seq != tc.seq || tcp.Ack != tc.ack || buf[n-20+13] != tc.flags || len(tcp.Payload) != 0 {
				t.Errorf("seq %d ack %d flags %#x, want %d %d %#x", tcp.Seq, tcp.Ack, buf[n-20+13], tc.seq, tc.ack, tc.flags)
			}
			ipb := buf[n-40 : n]
			if !ipHeaderOK(ipb) || !tcpOK(ipb) {
				t.Error("reset checksums do not verify")
			}
		})
	}
}
