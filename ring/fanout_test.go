package ring_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/bpf"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/ring"
)

// TestFanoutIgnoresOutgoing sends one frame into lo from another socket
// and checks that a fanout group of unbound sockets sees it exactly once,
// as the frame lo received. A frame sent on lo passes the packet taps
// twice: as PACKET_OUTGOING in dev_queue_xmit_nit, then as PACKET_HOST when
// loopback_xmit hands it to the receive path. A socket's own
// PACKET_IGNORE_OUTGOING stops applying once it joins a group, whose hook
// ignores outgoing frames only with PACKET_FANOUT_FLAG_IGNORE_OUTGOING.
func TestFanoutIgnoresOutgoing(t *testing.T) {
	h := netlab.Loopback(t)
	var group []*ring.Socket
	var err error
	if nsErr := h.Do(func() {
		group, _, err = ring.OpenGroup(ring.Config{Frames: 64, Filter: onlyExperimental}, 2, nil)
	}); nsErr != nil || err != nil {
		t.Fatalf("open group: %v %v", nsErr, err)
	}
	for _, s := range group {
		t.Cleanup(s.Free)
	}
	zero := make(net.HardwareAddr, 6) // lo's address: the frame is for this host
	if err := h.PacketConn(t).Send(testFrame(zero, zero, 7, 64)); err != nil {
		t.Fatal(err)
	}
	pkts := make([]ring.Packet, 8)
	var got []ring.Packet
	drain := func() {
		for _, s := range group {
			_ = s.SetReadDeadline(time.Now().Add(time.Millisecond))
			n, _ := s.Receive(pkts)
			for _, p := range pkts[:n] {
				got = append(got, ring.Packet{PktType: p.PktType, Ifindex: p.Ifindex})
			}
			s.Release(n)
		}
	}
	netlab.WaitFor(t, 5*time.Second, "the frame to reach the group", func() bool {
		drain()
		return len(got) > 0
	})
	// The outgoing copy, if any, was queued first, during the send.
	drain()
	if len(got) != 1 || got[0].PktType != ring.PacketHost || got[0].Ifindex != 1 {
		t.Fatalf("the group got %d copies (%+v), want one, PACKET_HOST on lo", len(got), got)
	}
}

// TestFanoutGroupIsWholeBeforeItReceives opens fanout groups of two while
// frames that the group's program gives to the second socket keep
// arriving: the first socket must never get one. Until the second socket
// has joined, the kernel hands every frame to the members there are, so
// without a drop-all filter while the group forms, the first socket took
// the second's frames (in rawlb: a worker took another's flows for unknown
// ones and reset them).
func TestFanoutGroupIsWholeBeforeItReceives(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Backends: 1})
	lb, client := lab.Balancer, lab.Client
	prog := mustAssemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 2}, // testFrame's sequence number
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: 2},
		bpf.RetA{},
	})
	// Odd sequence numbers only: every frame is the second socket's.
	var frames [][]byte
	for i := 1; i < 128; i += 2 {
		frames = append(frames, testFrame(lb.MAC, client.MAC, i, 64))
	}
	pc := client.PacketConn(t)
	stop := make(chan struct{})
	sent := make(chan int)
	go func() {
		n := 0
		deadline := time.Now().Add(20 * time.Second) // bounded even if the test hangs
		for n < 5_000_000 && time.Now().Before(deadline) {
			select {
			case <-stop:
				sent <- n
				return
			default:
			}
			if pc.SendBatch(frames) == nil {
				n += len(frames)
			}
		}
		<-stop
		sent <- n
	}()
	pkts := make([]ring.Packet, 64)
	stray, second := 0, 0
	for round := 0; round < 30; round++ {
		var group []*ring.Socket
		var err error
		if nsErr := lb.Do(func() {
			group, _, err = ring.OpenGroup(ring.Config{Frames: 64, Filter: onlyExperimental}, 2, prog)
		}); nsErr != nil || err != nil {
			close(stop)
			t.Fatalf("open group: %v %v", nsErr, err)
		}
		for k, s := range group {
			_ = s.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
			n, _ := s.Receive(pkts)
			if k == 0 {
				stray += n
			} else {
				second += n
			}
			s.Release(n)
		}
		for _, s := range group {
			s.Free()
		}
	}
	close(stop)
	n := <-sent
	t.Logf("%d frames sent over 30 group openings; the second socket read %d, the first %d", n, second, stray)
	if second == 0 {
		t.Fatal("the second socket got no frame: the load did not reach the groups, so the test proves nothing")
	}
	if stray != 0 {
		t.Errorf("the first socket got %d frames that the group's program gives the second", stray)
	}
}
