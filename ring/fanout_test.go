package ring_test

import (
	"net"
	"testing"
	"time"

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
