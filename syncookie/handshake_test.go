package syncookie

import (
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/rawlb/rawlb/packet"
)

// TestHandshake runs the stateless half of a proxied handshake with the
// pieces the engine wires together: the client's SYN and ACK are built by
// gopacket, the balancer's SYN-ACK and backend SYN by packet.BuildSegment,
// and nothing is remembered between the SYN and the ACK but the Jar.
func TestHandshake(t *testing.T) {
	j := testJar(t, 20)
	macC, macLB := net.HardwareAddr{2, 0, 0, 0, 0, 0x10}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	client, vip, backend := [4]byte{198, 18, 0, 10}, [4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 11}
	const clientISN, clientTS = 0x0badcafe, 777777
	tsClock := uint32(0x00c0ffee) // the balancer's timestamp clock, in ms

	clientSeg := func(tcp *layers.TCP) []byte {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(client[:]), DstIP: net.IP(vip[:])}
		tcp.SrcPort, tcp.DstPort, tcp.Window = 51000, 20000, 64240
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		buf := gopacket.NewSerializeBuffer()
		eth := &layers.Ethernet{SrcMAC: macC, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv4}
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	var parser packet.Parser
	var f packet.Frame
	parse := func(b []byte) *packet.Frame {
		if err := parser.Parse(b, &f); err != nil {
			t.Fatal(err)
		}
		return &f
	}

	// The client's SYN, as Linux sends it, asking for ECN.
	syn := parse(clientSeg(&layers.TCP{Seq: clientISN, SYN: true, ECE: true, CWR: true, Options: []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted},
		{OptionType: layers.TCPOptionKindTimestamps, OptionData: []byte{0, 0x0b, 0xde, 0x31, 0, 0, 0, 0}},
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindWindowScale, OptionData: []byte{9}},
	}}))
	so := syn.TCP.SYNOptions()
	tp := Tuple{Src: syn.IP.Source(), Dst: syn.IP.Destination(), SrcPort: syn.TCP.SourcePort(), DstPort: syn.TCP.DestinationPort()}
	ecn := syn.TCP.Flags()&(packet.FlagECE|packet.FlagCWR) == packet.FlagECE|packet.FlagCWR
	now := epoch.Add(30 * time.Second)
	cookie, mss := j.Make(tp, syn.TCP.Seq(), so.MSS, now)
	synack := packet.Segment{
		SrcMAC: syn.Eth.Destination(), DstMAC: syn.Eth.Source(), Src: tp.Dst, Dst: tp.Src,
		SrcPort: tp.DstPort, DstPort: tp.SrcPort, Seq: cookie, Ack: syn.TCP.Seq() + 1,
		Flags: packet.FlagSYN | packet.FlagACK | packet.FlagECE, Window: 0,
		Options: packet.TCPOptions{MSS: mss, WScale: 7, SACKPermitted: so.SACKPermitted, Timestamp: true,
			TSval: EncodeTS(tsClock, int(so.WScale), so.SACKPermitted, ecn), TSecr: so.TSval},
	}
	buf := make([]byte, packet.MaxSegmentLen)
	n := packet.BuildSegment(buf, &synack)

	// The client's stack answers the SYN-ACK: decode it as the client would.
	p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
	sa := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	var tsval uint32
	for _, o := range sa.Options {
		if o.OptionType == layers.TCPOptionKindTimestamps {
			tsval = uint32(o.OptionData[0])<<24 | uint32(o.OptionData[1])<<16 | uint32(o.OptionData[2])<<8 | uint32(o.OptionData[3])
		}
	}
	if !sa.SYN || !sa.ACK || sa.Window != 0 || tsval != synack.Options.TSval {
		t.Fatalf("SYN-ACK as the client sees it: %+v", sa)
	}
	ackFrame := clientSeg(&layers.TCP{Seq: clientISN + 1, Ack: sa.Seq + 1, ACK: true, Options: []layers.TCPOption{
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindTimestamps, OptionData: []byte{0, 0x0b, 0xde, 0x32, byte(tsval >> 24), byte(tsval >> 16), byte(tsval >> 8), byte(tsval)}},
	}})

	// Forty seconds on, in the next period, with no state: the ACK alone.
	ack := parse(ackFrame)
	tp = Tuple{Src: ack.IP.Source(), Dst: ack.IP.Destination(), SrcPort: ack.TCP.SourcePort(), DstPort: ack.TCP.DestinationPort()}
	gotMSS, ok := j.Check(tp, ack.TCP.Seq()-1, ack.TCP.Ack()-1, now.Add(40*time.Second))
	if !ok || gotMSS != 1460 {
		t.Fatalf("Check = %d, %v; want 1460, true", gotMSS, ok)
	}
	ao := ack.TCP.SYNOptions()
	if !ao.Timestamp {
		t.Fatal("the ACK lost its timestamp option")
	}
	ws, sack, gotECN := DecodeTS(ao.TSecr)
	if ws != 9 || !sack || !gotECN {
		t.Fatalf("DecodeTS = %d, %v, %v; want the SYN's 9, true, true", ws, sack, gotECN)
	}

	// The balancer's SYN to the backend offers what the client offered.
	bsyn := packet.Segment{
		SrcMAC: [6]byte(macLB), DstMAC: [6]byte{2, 0, 0, 0, 0, 0x11}, Src: vip, Dst: backend, SrcPort: 40007, DstPort: 8090,
		Seq: ack.TCP.Seq() - 1, Flags: packet.FlagSYN | packet.FlagECE | packet.FlagCWR, Window: 64240,
		Options: packet.TCPOptions{MSS: gotMSS, WScale: int8(ws), SACKPermitted: sack, Timestamp: true, TSval: ao.TSval},
	}
	n = packet.BuildSegment(buf, &bsyn)
	bo := parse(buf[:n]).TCP.SYNOptions()
	if bo.MSS != 1460 || bo.WScale != 9 || !bo.SACKPermitted || !bo.Timestamp || bo.TSval != ao.TSval {
		t.Errorf("backend SYN carries %+v", bo)
	}
}
