package rawlb

import (
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/ring"
)

// BenchmarkForwardLoop is the whole per-packet loop on one core, with real
// system calls: one worker receives from its ring on the balancer's veth,
// parses, looks up an established flow, rewrites, sends with sendmmsg and
// releases the slots. Each round the client fills the ring with 128
// segments of that flow (timer stopped); the timer runs while the worker
// forwards them. The frames go to a MAC no host has, so the bridge floods
// and every port drops them: no stack answers and nothing comes back.
//
// ns/op is per packet and includes the kernel's transmit work (veth,
// bridge), which on a NIC would be the driver's.
func BenchmarkForwardLoop(b *testing.B) {
	const frames = 128
	lab := netlab.New(b, netlab.Options{Backends: 1})
	lb, client, be := lab.Balancer, lab.Client, lab.Backends[0]
	srcIP, cli := lb.IP.As4(), client.IP.As4()

	table, err := conntrack.New(conntrack.Config{Backends: []conntrack.Endpoint{{IP: be.IP.As4(), Port: 8090}}})
	if err != nil {
		b.Fatal(err)
	}
	key := conntrack.ClientKey{Client: conntrack.Endpoint{IP: cli, Port: 51000}, VIP: conntrack.Endpoint{IP: srcIP, Port: 20000}}
	if _, err := table.Create(key, 0, [6]byte(client.MAC), 0, conntrack.SYN{}); err != nil {
		b.Fatal(err)
	}
	dp := &dataplane{srcIP: srcIP, port: 20000, natFirst: 40000, natLast: 59999, mac: [6]byte(lb.MAC), table: table,
		nextHop: make([]atomic.Pointer[[6]byte], 1), log: slog.New(slog.DiscardHandler)}
	nowhere := [6]byte{0x02, 0, 0, 0, 0xde, 0xad}
	dp.nextHop[0].Store(&nowhere)
	dp.sched = &scheduler{algo: RoundRobin, n: 1, usable: func(int) bool { return true }, live: table.Live}

	filter, err := buildFilter(srcIP, 20000, 40000, 59999)
	if err != nil {
		b.Fatal(err)
	}
	var sock *ring.Socket
	if nsErr := lb.Do(func() {
		ifi, e := net.InterfaceByName(lb.Iface)
		if e != nil {
			err = e
			return
		}
		sock, err = ring.Open(ring.Config{Ifindex: ifi.Index, Frames: 256, Filter: filter})
	}); nsErr != nil || err != nil {
		b.Fatalf("ring: %v %v", nsErr, err)
	}
	defer sock.Free()
	w := newWorker(dp, sock, 64, &workerStats{})

	// 128 segments of the established flow, 1400 bytes each, complete
	// checksums (as from a NIC: AF_PACKET sends leave them as written).
	batch := make([][]byte, frames)
	for i := range batch {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: client.IP.AsSlice(), DstIP: lb.IP.AsSlice()}
		tcp := &layers.TCP{SrcPort: 51000, DstPort: 20000, Seq: uint32(i * 1400), Ack: 1, ACK: true, Window: 1000}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: client.MAC, DstMAC: lb.MAC, EthernetType: layers.EthernetTypeIPv4}, ip, tcp, gopacket.Payload(make([]byte, 1400))); err != nil {
			b.Fatal(err)
		}
		batch[i] = append([]byte(nil), buf.Bytes()...)
	}
	pc := client.PacketConn(b)

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
			w.handleBatch(n, 1)
			if dropped, err := sock.Send(w.out); dropped > 0 {
				b.Fatalf("send dropped %d: %v", dropped, err)
			}
			sock.Release(n)
			ready -= n
			forwarded += len(w.out)
		}
	}
	b.StopTimer()
	if w.stats.packets[dirToBackend].Load() == 0 {
		b.Fatal("nothing was forwarded")
	}
	for r := range w.stats.drops {
		if n := w.stats.drops[r].Load(); n > 0 {
			b.Fatalf("dropped %d frames: %v", n, dropReason(r))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(forwarded), "ns/packet")
	b.ReportMetric(float64(forwarded)/b.Elapsed().Seconds(), "packets/s")
}
