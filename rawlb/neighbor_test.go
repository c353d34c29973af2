package rawlb

import (
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/rawlb/rawlb/internal/netlab"
)

// TestNeighborResolution checks that rawlb gets a backend's MAC from the
// kernel without sending anything itself: the first refresh finds no
// neighbour entry and asks the kernel to resolve one (RTM_NEWNEIGH with
// NTF_USE), and a later refresh reads the MAC the kernel learned by ARP.
func TestNeighborResolution(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Backends: 1})
	lb, be := lab.Balancer, lab.Backends[0]
	dp := &dataplane{nextHop: make([]atomic.Pointer[[6]byte], 1)}
	n := &neighbors{backends: []netip.Addr{be.IP}, dp: dp, log: slog.New(slog.DiscardHandler), warned: map[int]bool{}}
	if err := lb.Do(func() {
		ifi, err := net.InterfaceByName(lb.Iface)
		if err != nil {
			t.Error(err)
			return
		}
		n.ifindex = ifi.Index
		n.refresh()
	}); err != nil {
		t.Fatal(err)
	}
	if dp.nextHop[0].Load() != nil {
		t.Fatal("a MAC was known before anything asked the kernel for it")
	}
	netlab.WaitFor(t, 5*time.Second, "the kernel to resolve the backend's MAC", func() bool {
		_ = lb.Do(func() { n.refresh() })
		return dp.nextHop[0].Load() != nil
	})
	if got := net.HardwareAddr(dp.nextHop[0].Load()[:]).String(); got != be.MAC.String() {
		t.Fatalf("resolved %s, want the backend's %s", got, be.MAC)
	}
	// The kernel's entry is a real one, learned by ARP.
	var state int
	_ = lb.Do(func() {
		neighs, _ := netlink.NeighList(n.ifindex, netlink.FAMILY_V4)
		for _, e := range neighs {
			if e.IP.Equal(be.IP.AsSlice()) {
				state = e.State
			}
		}
	})
	if state&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) == 0 {
		t.Fatalf("neighbour state %#x, want one learned by ARP", state)
	}
}
