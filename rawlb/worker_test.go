package rawlb

import (
	"encoding/binary"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
)

// These tests drive the per-packet code with frames built by gopacket, no
// socket involved: what goes out is checked byte for byte.

var (
	tSrcIP    = [4]byte{198, 18, 0, 2}
	tClient   = [4]byte{198, 18, 0, 10}
	tBackends = []conntrack.Endpoint{{IP: [4]byte{198, 18, 0, 11}, Port: 8090}, {IP: [4]byte{198, 18, 0, 12}, Port: 8090}}
	tOurMAC   = [6]byte{2, 0, 0, 0, 0, 2}
	tCliMAC   = [6]byte{2, 0, 0, 0, 0, 10}
	tBeMAC    = [6]byte{2, 0, 0, 0, 0, 11}
)

func testWorker(t testing.TB, healthy func(int) bool) *worker {
	t.Helper()
	table, err := conntrack.New(conntrack.Config{Backends: tBackends})
	if err != nil {
		t.Fatal(err)
	}
	dp := &dataplane{srcIP: tSrcIP, port: 20000, natFirst: 40000, natLast: 59999, mac: tOurMAC, table: table,
		nextHop: make([]atomic.Pointer[[6]byte], len(tBackends)), log: slog.New(slog.DiscardHandler)}
	for i := range dp.nextHop {
		m := tBeMAC
		m[5] = byte(11 + i)
		dp.nextHop[i].Store(&m)
	}
	dp.sched = &scheduler{algo: RoundRobin, n: len(tBackends), usable: healthy, live: table.Live}
	return newWorker(dp, nil, 8, &workerStats{})
}

// segment builds a vnet header + frame from src to dst.
func segment(t testing.TB, src [4]byte, sport uint16, dst [4]byte, dport uint16, flags uint8, payload []byte) []byte {
	t.Helper()
	return tcpFrame(t, src, dst, &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 100, Ack: 200, Window: 1000,
		SYN: flags&packet.FlagSYN != 0, ACK: flags&packet.FlagACK != 0, FIN: flags&packet.FlagFIN != 0, RST: flags&packet.FlagRST != 0}, payload)
}

// tcpFrame serializes tcp from src to dst, with the client's MAC as the
// source, behind a zero virtio-net header.
func tcpFrame(t testing.TB, src, dst [4]byte, tcp *layers.TCP, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(src[:]), DstIP: net.IP(dst[:])}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	eth := &layers.Ethernet{SrcMAC: tCliMAC[:], DstMAC: tOurMAC[:], EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append(make([]byte, ring.VNetHdrLen), buf.Bytes()...)
}

func pkt(buf []byte) ring.Packet {
	return ring.Packet{Buf: buf, VNet: ring.VNetHdr(buf[:ring.VNetHdrLen]), Frame: buf[ring.VNetHdrLen:], WireLen: len(buf) - ring.VNetHdrLen}
}

// sent decodes the i-th frame the worker queued.
func sent(t *testing.T, w *worker, i int) (*layers.Ethernet, *layers.IPv4, *layers.TCP, []byte) {
	t.Helper()
	if i >= len(w.out) {
		t.Fatalf("worker queued %d frames, want at least %d", len(w.out), i+1)
	}
	b := w.out[i][ring.VNetHdrLen:]
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if eth == nil || ip == nil || tcp == nil {
		t.Fatalf("queued frame does not decode: %v", p.ErrorLayer())
	}
	return eth, ip, tcp, b[14:]
}

func verifies(ip []byte) bool {
	hl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	s := packet.PseudoHeaderSum([4]byte(ip[12:16]), [4]byte(ip[16:20]), 6, total-hl)
	return packet.Checksum(ip[:hl]) == 0 && ^packet.Fold(packet.Sum(ip[hl:total], s)) == 0
}

func TestWorkerForwardsBothWays(t *testing.T) {
	w := testWorker(t, func(int) bool { return true })
	syn := pkt(segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, nil))
	w.pkts[0] = syn
	w.handleBatch(1, 1)
	eth, ip, tcp, raw := sent(t, w, 0)
	if [6]byte(eth.DstMAC) != [6]byte{2, 0, 0, 0, 0, 11} || [6]byte(eth.SrcMAC) != tOurMAC {
		t.Errorf("to backend: MACs %v -> %v", eth.SrcMAC, eth.DstMAC)
	}
	if [4]byte(ip.SrcIP.To4()) != tSrcIP || [4]byte(ip.DstIP.To4()) != tBackends[0].IP || tcp.DstPort != 8090 {
		t.Errorf("to backend: %v:%d -> %v:%d", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	if tcp.SrcPort < 40000 || tcp.SrcPort > 59999 || !verifies(raw) {
		t.Errorf("to backend: NAT port %d, checksums ok %v", tcp.SrcPort, verifies(raw))
	}
	nat := uint16(tcp.SrcPort)

	// The backend answers srcIP:natPort; the client must see srcIP:20000.
	w.pkts[0] = pkt(segment(t, tBackends[0].IP, 8090, tSrcIP, nat, packet.FlagSYN|packet.FlagACK, []byte("hi")))
	w.handleBatch(1, 2)
	eth, ip, tcp, raw = sent(t, w, 0)
	if [6]byte(eth.DstMAC) != tCliMAC || [4]byte(ip.SrcIP.To4()) != tSrcIP || tcp.SrcPort != 20000 || [4]byte(ip.DstIP.To4()) != tClient || tcp.DstPort != 51000 {
		t.Errorf("to client: %v %v:%d -> %v:%d", eth.DstMAC, ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	if !verifies(raw) || string(tcp.Payload) != "hi" {
		t.Error("to client: checksums or payload wrong")
	}
	if w.dp.table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: tClient, Port: 51000}, VIP: conntrack.Endpoint{IP: tSrcIP, Port: 20000}}).State() != conntrack.StateEstablished {
		t.Error("flow not established after the SYN-ACK")
	}
}

func TestWorkerPartialChecksumAndGSO(t *testing.T) {
	w := testWorker(t, func(int) bool { return true })
	w.pkts[0] = pkt(segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, nil))
	w.handleBatch(1, 1)

	// A GSO segment as a veth sender hands it over: partial checksum
	// (the field holds the pseudo-header sum), NEEDS_CSUM set.
	buf := segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagACK, make([]byte, 3000))
	ipb := buf[ring.VNetHdrLen+14:]
	binary.BigEndian.PutUint16(ipb[36:], packet.Fold(packet.PseudoHeaderSum(tClient, tSrcIP, 6, len(ipb)-20)))
	buf[0], buf[1] = ring.VNetFlagNeedsCsum, ring.VNetGSOTCPv4
	w.pkts[0] = pkt(buf)
	w.handleBatch(1, 2)
	_, _, _, raw := sent(t, w, 0)
	// Complete it the way the kernel would, then verify.
	binary.BigEndian.PutUint16(raw[36:], ^packet.Fold(packet.Sum(raw[20:], 0)))
	if !verifies(raw) {
		t.Error("partial checksum wrong after the rewrite")
	}
	if w.stats.gsoFrames.Load() != 1 {
		t.Error("GSO frame not counted")
	}

	// A GRO-merged segment from a NIC: GSO without NEEDS_CSUM, its
	// checksum field stale. It must leave as partial, with csum_start at
	// the TCP header.
	buf = segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagACK, make([]byte, 3000))
	buf[ring.VNetHdrLen+14+36] ^= 0xff // stale
	buf[0], buf[1] = ring.VNetFlagDataValid, ring.VNetGSOTCPv4
	w.pkts[0] = pkt(buf)
	w.handleBatch(1, 3)
	out := w.out[0]
	if out[0] != ring.VNetFlagNeedsCsum || binary.NativeEndian.Uint16(out[6:]) != 34 || binary.NativeEndian.Uint16(out[8:]) != 16 {
		t.Fatalf("vnet header %x: want NEEDS_CSUM, csum_start 34, csum_offset 16", out[:10])
	}
	raw = out[ring.VNetHdrLen+14:]
	binary.BigEndian.PutUint16(raw[36:], ^packet.Fold(packet.Sum(raw[20:], 0)))
	if !verifies(raw) {
		t.Error("GRO segment's checksum wrong once completed")
	}
}

func TestWorkerRefusesWithReset(t *testing.T) {
	w := testWorker(t, func(int) bool { return false })
	w.pkts[0] = pkt(segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, nil))
	w.handleBatch(1, 1)
	eth, ip, tcp, raw := sent(t, w, 0)
	if [6]byte(eth.DstMAC) != tCliMAC || [4]byte(ip.DstIP.To4()) != tClient || !tcp.RST || !tcp.ACK || tcp.Ack != 101 || tcp.SrcPort != 20000 || !verifies(raw) {
		t.Fatalf("reset: to %v %v:%d rst %v ack %d", eth.DstMAC, ip.DstIP, tcp.DstPort, tcp.RST, tcp.Ack)
	}
	if w.stats.drops[dropNoBackend].Load() != 1 || w.stats.resets.Load() != 1 || w.dp.table.Len() != 0 {
		t.Error("refused SYN not counted, or a flow was created")
	}
}

func TestWorkerDropsStrays(t *testing.T) {
	w := testWorker(t, func(int) bool { return true })
	cases := []struct {
		buf  []byte
		want dropReason
	}{
		{segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagACK, nil), dropNoFlow},
		{segment(t, tBackends[0].IP, 8090, tSrcIP, 40001, packet.FlagACK, nil), dropNoFlow},
		{segment(t, tClient, 51000, tSrcIP, 22, packet.FlagSYN, nil), dropNotOurs},
		{segment(t, tClient, 51000, [4]byte{198, 18, 0, 3}, 20000, packet.FlagSYN, nil), dropNotOurs},
		{segment(t, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, nil)[:ring.VNetHdrLen+20], dropReason(packet.ReasonTruncated)},
	}
	for i, c := range cases {
		w.pkts[0] = pkt(c.buf)
		w.handleBatch(1, 1)
		if len(w.out) != 0 || w.stats.drops[c.want].Load() == 0 {
			t.Errorf("case %d: sent %d frames, drops[%v] = %d", i, len(w.out), c.want, w.stats.drops[c.want].Load())
		}
	}
}

// BenchmarkEstablishedPacket is the per-packet cost of an established
// flow's segment: parse, look up, observe, rewrite, queue. Both directions
// alternate, as in a real flow.
func BenchmarkEstablishedPacket(b *testing.B) {
	w := testWorker(b, func(int) bool { return true })
	w.pkts[0] = pkt(segment(b, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, nil))
	w.handleBatch(1, 1)
	fl := w.dp.table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: tClient, Port: 51000}, VIP: conntrack.Endpoint{IP: tSrcIP, Port: 20000}})
	toBackend := segment(b, tClient, 51000, tSrcIP, 20000, packet.FlagACK, make([]byte, 1400))
	toClient := segment(b, tBackends[0].IP, 8090, tSrcIP, fl.NATPort, packet.FlagACK, make([]byte, 1400))
	// The rewrite happens in place, so each direction gets a private copy
	// restored from a template: the worker must see fresh frames.
	fwd, rev := append([]byte(nil), toBackend...), append([]byte(nil), toClient...)
	b.ReportAllocs()
	for b.Loop() {
		copy(fwd, toBackend)
		copy(rev, toClient)
		w.pkts[0], w.pkts[1] = pkt(fwd), pkt(rev)
		w.handleBatch(2, 2)
		if len(w.out) != 2 {
			b.Fatal("not forwarded")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N), "ns/packet")
}

// segmentTS is segment with a NOP NOP TS option.
func segmentTS(t testing.TB, src [4]byte, sport uint16, dst [4]byte, dport uint16, flags uint8, tsval, tsecr uint32) []byte {
	t.Helper()
	opt := make([]byte, 8)
	binary.BigEndian.PutUint32(opt, tsval)
	binary.BigEndian.PutUint32(opt[4:], tsecr)
	return tcpFrame(t, src, dst, &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 100, Ack: 200, Window: 1000,
		SYN: flags&packet.FlagSYN != 0, ACK: flags&packet.FlagACK != 0,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: opt}}}, nil)
}

// tsOf returns TSval and TSecr of the queued frame i.
func tsOf(t *testing.T, w *worker, i int) (uint32, uint32, uint16) {
	t.Helper()
	_, _, tcp, raw := sent(t, w, i)
	if !verifies(raw) {
		t.Fatal("checksums do not verify after the timestamp rewrite")
	}
	for _, o := range tcp.Options {
		if o.OptionType == layers.TCPOptionKindTimestamps {
			return binary.BigEndian.Uint32(o.OptionData), binary.BigEndian.Uint32(o.OptionData[4:]), uint16(tcp.SrcPort)
		}
	}
	t.Fatal("no timestamp option in the forwarded segment")
	return 0, 0, 0
}

// oneNATPortWorker is a worker for one backend with one NAT port, 40000,
// so that every flow reuses it.
func oneNATPortWorker(t *testing.T) (*worker, *conntrack.Table) {
	t.Helper()
	table, err := conntrack.New(conntrack.Config{Backends: tBackends[:1], NATPortFirst: 40000, NATPortLast: 40000})
	if err != nil {
		t.Fatal(err)
	}
	w := testWorker(t, func(int) bool { return true })
	w.dp.table = table
	w.dp.sched = &scheduler{algo: RoundRobin, n: 1, usable: func(int) bool { return true }, live: table.Live}
	return w, table
}

func TestWorkerKeepsTimestampsRisingOnReusedPort(t *testing.T) {
	w, table := oneNATPortWorker(t)

	// Flow 1 ends with TSval 5000 seen by the backend on NAT port 40000.
	w.pkts[0] = pkt(segmentTS(t, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, 4000, 0))
	w.handleBatch(1, 1)
	w.pkts[0] = pkt(segmentTS(t, tClient, 51000, tSrcIP, 20000, packet.FlagACK, 5000, 77))
	w.handleBatch(1, 2)
	if val, _, _ := tsOf(t, w, 0); val != 5000 {
		t.Fatalf("first flow's timestamps were changed: %d", val)
	}
	table.Remove(table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: tClient, Port: 51000}, VIP: conntrack.Endpoint{IP: tSrcIP, Port: 20000}}))

	// Flow 2, another client connection whose clock is far behind, gets
	// the same NAT port: the backend must see its SYN above 5000.
	w.pkts[0] = pkt(segmentTS(t, tClient, 52000, tSrcIP, 20000, packet.FlagSYN, 10, 0))
	w.handleBatch(1, 3)
	val, _, port := tsOf(t, w, 0)
	if port != 40000 || val != 5001 {
		t.Fatalf("reused port %d: SYN's TSval %d toward the backend, want 5001 on 40000", port, val)
	}
	// The backend's SYN-ACK echoes 5001; the client must see its own 10.
	w.pkts[0] = pkt(segmentTS(t, tBackends[0].IP, 8090, tSrcIP, 40000, packet.FlagSYN|packet.FlagACK, 999, 5001))
	w.handleBatch(1, 4)
	if val, ecr, _ := tsOf(t, w, 0); val != 999 || ecr != 10 {
		t.Fatalf("to the client: TSval %d TSecr %d, want 999 and its own 10", val, ecr)
	}
	// And later segments stay shifted by the same offset.
	w.pkts[0] = pkt(segmentTS(t, tClient, 52000, tSrcIP, 20000, packet.FlagACK, 20, 999))
	w.handleBatch(1, 5)
	if val, ecr, _ := tsOf(t, w, 0); val != 5011 || ecr != 999 {
		t.Fatalf("toward the backend: TSval %d TSecr %d, want 5011 999", val, ecr)
	}
}

// segmentSeq builds a vnet header + frame with the given sequence and
// acknowledgment numbers, payload and TCP options, and no timestamps.
func segmentSeq(t testing.TB, src [4]byte, sport uint16, dst [4]byte, dport uint16, flags uint8, seq, ack uint32, payload []byte, opts ...layers.TCPOption) []byte {
	t.Helper()
	return tcpFrame(t, src, dst, &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, Window: 1000,
		SYN: flags&packet.FlagSYN != 0, ACK: flags&packet.FlagACK != 0, Options: opts}, payload)
}

func TestWorkerShiftsSequenceNumbersOnReusedPort(t *testing.T) {
	w, table := oneNATPortWorker(t)
	// seqAck forwards one segment and returns what left, checksums checked.
	seqAck := func(frame []byte, now int64) *layers.TCP {
		t.Helper()
		w.pkts[0] = pkt(frame)
		w.handleBatch(1, now)
		_, _, tcp, raw := sent(t, w, 0)
		if !verifies(raw) {
			t.Fatal("checksums do not verify after the sequence number rewrite")
		}
		return tcp
	}
	be := tBackends[0].IP

	// Flow 1, without timestamps, leaves the backend's TIME_WAIT on NAT
	// port 40000 expecting sequence numbers after 1501.
	if tcp := seqAck(segmentSeq(t, tClient, 51000, tSrcIP, 20000, packet.FlagSYN, 1000, 0, nil), 1); tcp.Seq != 1000 {
		t.Fatalf("first flow's SYN changed to seq %d", tcp.Seq)
	}
	seqAck(segmentSeq(t, tClient, 51000, tSrcIP, 20000, packet.FlagACK, 1001, 1, make([]byte, 500)), 2)
	table.Remove(table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: tClient, Port: 51000}, VIP: conntrack.Endpoint{IP: tSrcIP, Port: 20000}}))

	// Flow 2 gets the same port with an ISN behind that: the backend must
	// see its SYN 2^16 beyond the old end.
	const isn, shifted = 10, 1501 + 1<<16
	if tcp := seqAck(segmentSeq(t, tClient, 52000, tSrcIP, 20000, packet.FlagSYN, isn, 0, nil), 3); tcp.Seq != shifted || tcp.SrcPort != 40000 {
		t.Fatalf("reused port %d: SYN seq %d toward the backend, want %d on 40000", tcp.SrcPort, tcp.Seq, shifted)
	}
	// The SYN-ACK acknowledges the shifted number; the client must see its own.
	if tcp := seqAck(segmentSeq(t, be, 8090, tSrcIP, 40000, packet.FlagSYN|packet.FlagACK, 9000, shifted+1, nil), 4); tcp.Ack != isn+1 || tcp.Seq != 9000 {
		t.Fatalf("SYN-ACK to the client: seq %d ack %d, want 9000 %d", tcp.Seq, tcp.Ack, isn+1)
	}
	// Client data goes out shifted...
	if tcp := seqAck(segmentSeq(t, tClient, 52000, tSrcIP, 20000, packet.FlagACK, isn+1, 9001, []byte("data")), 5); tcp.Seq != shifted+1 || tcp.Ack != 9001 {
		t.Fatalf("data toward the backend: seq %d ack %d, want %d 9001", tcp.Seq, tcp.Ack, shifted+1)
	}
	// ...and the backend's SACK blocks come back in the client's numbering.
	sack := make([]byte, 8)
	binary.BigEndian.PutUint32(sack, shifted+101)
	binary.BigEndian.PutUint32(sack[4:], shifted+201)
	nop := layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	tcp := seqAck(segmentSeq(t, be, 8090, tSrcIP, 40000, packet.FlagACK, 9001, shifted+1, nil,
		nop, nop, layers.TCPOption{OptionType: layers.TCPOptionKindSACK, OptionLength: 10, OptionData: sack}), 6)
	if tcp.Ack != isn+1 {
		t.Fatalf("ACK to the client: ack %d, want %d", tcp.Ack, isn+1)
	}
	var edges []uint32
	for _, o := range tcp.Options {
		if o.OptionType == layers.TCPOptionKindSACK {
			edges = append(edges, binary.BigEndian.Uint32(o.OptionData), binary.BigEndian.Uint32(o.OptionData[4:]))
		}
	}
	if len(edges) != 2 || edges[0] != isn+101 || edges[1] != isn+201 {
		t.Fatalf("SACK edges to the client %v, want [%d %d]", edges, isn+101, isn+201)
	}
}
