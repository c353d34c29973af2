package ring_test

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket/afpacket"
	"golang.org/x/net/bpf"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/ring"
)

// testFrame is an Ethernet frame from one lab host to another, with an
// EtherType no stack answers, so nothing else reacts to it.
func testFrame(dst, src net.HardwareAddr, seq int, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	f[12], f[13] = 0x88, 0xb5 // IEEE 802 local experimental EtherType
	f[14], f[15] = byte(seq>>8), byte(seq)
	return f
}

// onlyExperimental is a filter that passes only testFrame's EtherType, so
// stray ARP or other traffic in the lab cannot disturb a count.
var onlyExperimental = mustAssemble([]bpf.Instruction{
	bpf.LoadAbsolute{Off: 12, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x88b5, SkipFalse: 1},
	bpf.RetConstant{Val: 0xffffffff},
	bpf.RetConstant{Val: 0},
})

func mustAssemble(p []bpf.Instruction) []bpf.RawInstruction {
	r, err := bpf.Assemble(p)
	if err != nil {
		panic(err)
	}
	return r
}

// openOn opens a ring socket on host's interface, inside its namespace.
func openOn(t testing.TB, h *netlab.Host, c ring.Config) *ring.Socket {
	t.Helper()
	var s *ring.Socket
	var err error
	if nsErr := h.Do(func() {
		var ifi *net.Interface
		if ifi, err = net.InterfaceByName(h.Iface); err != nil {
			return
		}
		c.Ifindex = ifi.Index
		s, err = ring.Open(c)
	}); nsErr != nil || err != nil {
		t.Fatalf("open ring in %s: %v %v", h.Name, nsErr, err)
	}
	t.Cleanup(func() { s.Close(); s.Free() })
	return s
}

func TestReceiveAndSend(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Backends: 1})
	lb, client := lab.Balancer, lab.Client
	s := openOn(t, lb, ring.Config{Frames: 8, Filter: onlyExperimental})
	pc := client.PacketConn(t)

	want := testFrame(lb.MAC, client.MAC, 1, 200)
	if err := pc.Send(want); err != nil {
		t.Fatal(err)
	}
	pkts := make([]ring.Packet, 4)
	n, err := s.Receive(pkts)
	if err != nil || n != 1 {
		t.Fatalf("Receive = %d, %v; want 1 frame", n, err)
	}
	p := pkts[0]
	if !bytes.Equal(p.Frame, want) || p.Truncated() || len(p.Buf) != ring.VNetHdrLen+len(want) {
		t.Fatalf("received %d bytes (wire %d), want the %d sent", len(p.Frame), p.WireLen, len(want))
	}
	if p.VNet.Flags() != 0 || p.VNet.GSOType() != ring.VNetGSONone {
		t.Errorf("plain frame has virtio-net flags %#x gso %d", p.VNet.Flags(), p.VNet.GSOType())
	}
	s.Release(n)

	// Send back with the header a plain frame needs, from ring memory's
	// layout: header, then frame.
	out := append(make([]byte, ring.VNetHdrLen), testFrame(client.MAC, lb.MAC, 2, 300)...)
	if dropped, err := s.Send([][]byte{out}); dropped != 0 {
		t.Fatalf("Send dropped %d: %v", dropped, err)
	}
	got, err := pc.Receive(2*time.Second, func(b []byte) bool { return len(b) >= 16 && b[12] == 0x88 && b[15] == 2 })
	if err != nil || !bytes.Equal(got, out[ring.VNetHdrLen:]) {
		t.Fatalf("the client did not get the sent frame intact: %v", err)
	}

	// What the balancer sent must not come back into its own ring
	// (PACKET_IGNORE_OUTGOING): the next frame received is the client's.
	if err := pc.Send(testFrame(lb.MAC, client.MAC, 3, 100)); err != nil {
		t.Fatal(err)
	}
	n, err = s.Receive(pkts)
	if err != nil || n != 1 || pkts[0].Frame[15] != 3 {
		t.Fatalf("after a send, Receive = %d %v, first seq %d; want only the client's frame 3", n, err, pkts[0].Frame[15])
	}
	s.Release(n)

	// Close ends a blocking Receive.
	done := make(chan error)
	go func() { _, err := s.Receive(pkts); done <- err }()
	s.Close()
	select {
	case err := <-done:
		if err != ring.ErrClosed {
			t.Fatalf("Receive after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a blocking Receive")
	}
}

// BenchmarkDrain compares receiving from this package's ring with gopacket's
// afpacket (TPACKET_V2, zero-copy reads). Each round fills the receive ring
// from the client with the timer stopped, then times draining it, so the
// figure is the receive cost per frame alone.
func BenchmarkDrain(b *testing.B) {
	// Rounds of 128 frames into a ring of 256 slots. With gopacket v1.7.7
	// the third round stalls: the kernel reports its frames delivered,
	// and ZeroCopyReadPacketData times out (cause not found; see
	// docs/performance.md). Compare the two with -benchtime 250x; this
	// package's ring runs any count.
	const slots, frames = 256, 128
	lab := netlab.New(b, netlab.Options{Backends: 1})
	lb, client := lab.Balancer, lab.Client
	pc := client.PacketConn(b)
	batch := make([][]byte, frames)
	for i := range batch {
		batch[i] = testFrame(lb.MAC, client.MAC, i, 1514)
	}

	b.Run("ring", func(b *testing.B) {
		s := openOn(b, lb, ring.Config{Frames: slots, FrameSize: 4096, Filter: onlyExperimental})
		pkts := make([]ring.Packet, 64)
		b.ReportAllocs()
		for got := 0; got < b.N; {
			b.StopTimer()
			if err := pc.SendBatch(batch); err != nil {
				b.Fatal(err)
			}
			ready := netlab.Arrived(b, frames, func() (int, int) {
				p, d, err := s.Stats()
				if err != nil {
					b.Fatal(err)
				}
				return int(p), int(d)
			})
			b.StartTimer()
			// Every frame that arrived is drained, even past b.N: a frame
			// left behind would be counted in the next round.
			for left := ready; left > 0; {
				n, err := s.Receive(pkts[:min(len(pkts), left)])
				if err != nil {
					b.Fatal(err)
				}
				s.Release(n)
				left -= n
				got += n
			}
		}
	})

	b.Run("gopacket-afpacket", func(b *testing.B) {
		var tp *afpacket.TPacket
		var err error
		if nsErr := lb.Do(func() {
			tp, err = afpacket.NewTPacket(afpacket.OptInterface(lb.Iface), afpacket.OptTPacketVersion(afpacket.TPacketVersion2),
				afpacket.OptFrameSize(4096), afpacket.OptBlockSize(4096), afpacket.OptNumBlocks(slots),
				afpacket.OptPollTimeout(200*time.Millisecond))
		}); nsErr != nil || err != nil {
			b.Fatalf("afpacket: %v %v", nsErr, err)
		}
		defer tp.Close()
		if err := tp.SetBPF(onlyExperimental); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for got := 0; got < b.N; {
			b.StopTimer()
			if err := pc.SendBatch(batch); err != nil {
				b.Fatal(err)
			}
			var last afpacket.SocketStats
			ready := netlab.Arrived(b, frames, func() (int, int) {
				st, _, err := tp.SocketStats()
				if err != nil {
					b.Fatal(err)
				}
				p, d := int(st.Packets()-last.Packets()), int(st.Drops()-last.Drops())
				last = st
				return p, d
			})
			b.StartTimer()
			for left := ready; left > 0; left-- {
				if _, _, err := tp.ZeroCopyReadPacketData(); err != nil {
					b.Skipf("gopacket afpacket stalled after %d frames (%d of this round delivered by the kernel, unread): %v", got, left, err)
				}
				got++
			}
		}
	})
}
