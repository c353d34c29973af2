package rawlb

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
)

// BenchmarkForwardLoop is the whole per-packet loop on one core, with real
// system calls: one worker receives from its ring on the balancer's veth,
// parses, looks up an established flow, tracks it, rewrites, sends with
// sendmmsg and releases the slots. Each round the client fills the ring
// with 128 segments of that flow (timer stopped); the timer runs while the
// worker forwards them. The frames go to a MAC no host has, so the bridge
// floods and every port drops them: no stack answers and nothing comes
// back.
//
// ns/op is per packet and includes the kernel's transmit work (veth,
// bridge), which on a NIC would be the driver's.
func BenchmarkForwardLoop(b *testing.B) {
	const frames = 128
	lab := netlab.New(b, netlab.Options{Backends: 1})
	lb, cli := lab.Balancer, lab.Client

	// The flow, established through the in-process harness (its addresses,
	// not the lab's: the frames below are written raw, so any address
	// reaches the balancer's veth), with a window large enough for every
	// round's segments.
	h := newHarness(b, nil)
	syn := client(packet.FlagSYN, 1000, 0)
	syn.ts, syn.mss, syn.wscale, syn.sack = &[2]uint32{5000, 0}, 1460, 7, true
	toBe := one(b, h.in(syn.frame(b)))
	nat := uint16(toBe.tcp.SrcPort)
	sa := fromBe(nat, packet.FlagSYN|packet.FlagACK, 9000, toBe.tcp.Seq+1)
	sa.ts, sa.mss, sa.wscale, sa.sack, sa.win = &[2]uint32{77, 0}, 1460, 7, true, 65535
	h.in(sa.frame(b))
	ack := client(packet.FlagACK, 1001, 9001)
	ack.ts = &[2]uint32{5001, 77}
	h.in(ack.frame(b))
	wide := fromBe(nat, packet.FlagACK, 9001, toBe.tcp.Seq+1)
	wide.ts, wide.win = &[2]uint32{78, 0}, 65535 // scaled by 128: 8 MB
	h.in(wide.frame(b))

	var sock *ring.Socket
	var err error
	var ifindex int
	o := &ours{natSrc: tSrcIP, natFirst: 40000, natLast: 59999, listen: h.b.dp.reg.Load().vips}
	filter, _ := o.socketFilter()
	if nsErr := lb.Do(func() {
		ifi, e := net.InterfaceByName(lb.Iface)
		if e != nil {
			err = e
			return
		}
		ifindex = ifi.Index
		sock, err = ring.Open(ring.Config{Ifindex: ifi.Index, Frames: 256, Filter: filter})
	}); nsErr != nil || err != nil {
		b.Fatalf("ring: %v %v", nsErr, err)
	}
	defer sock.Free()
	nowhere := [6]byte{0x02, 0, 0, 0, 0xde, 0xad}
	for _, be := range h.b.dp.reg.Load().backends {
		if be != nil {
			be.hop.Store(&hop{ifindex: int32(ifindex), dst: nowhere, src: [6]byte(lb.MAC)})
		}
	}
	w := h.w
	w.link = sock

	// 128 segments of the established flow, 1400 bytes each, complete
	// checksums (as from a NIC: AF_PACKET sends leave them as written).
	batch := make([][]byte, frames)
	for i := range batch {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: tClient[:], DstIP: tSrcIP[:]}
		tcp := &layers.TCP{SrcPort: 51000, DstPort: layers.TCPPort(tPort), Seq: 1001 + uint32(i*1400), Ack: 9001, ACK: true, Window: 1000}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: cli.MAC, DstMAC: lb.MAC, EthernetType: layers.EthernetTypeIPv4}, ip, tcp, gopacket.Payload(make([]byte, 1400))); err != nil {
			b.Fatal(err)
		}
		batch[i] = append([]byte(nil), buf.Bytes()...)
	}
	pc := cli.PacketConn(b)
	before := w.stats.packets[dirToBackend].Load()

	b.ReportAllocs()
	b.ResetTimer()
	forwarded := 0
	for forwarded < b.N {
		b.StopTimer()
		if err := pc.SendBatch(batch); err != nil {
			b.Fatal(err)
		}
		ready := netlab.Arrived(b, frames, func() (int, int) {
			p, d, err := sock.Stats()
			if err != nil {
				b.Fatal(err)
			}
			return int(p), int(d)
		})
		b.StartTimer()
		for ready > 0 {
			n, err := sock.Receive(w.pkts[:min(len(w.pkts), ready)])
			if err != nil {
				b.Fatal(err)
			}
			w.batch(n, false)
			ready -= n
			forwarded += n
		}
	}
	b.StopTimer()
	if got := w.stats.packets[dirToBackend].Load() - before; got != uint64(forwarded) {
		b.Fatalf("forwarded %d of %d frames", got, forwarded)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(forwarded), "ns/packet")
	b.ReportMetric(float64(forwarded)/b.Elapsed().Seconds(), "packets/s")
}
