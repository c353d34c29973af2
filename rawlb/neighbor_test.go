package rawlb

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/internal/netlab"
)

// TestNeighborResolution checks that rawlb gets a backend's MAC from the
// kernel without sending anything itself: the first refresh finds no
// neighbour entry and asks the kernel to resolve one (RTM_NEWNEIGH with
// NTF_USE), and a later refresh reads the MAC the kernel learned by ARP.
// A backend on the host itself is reached over lo, with zero MACs.
func TestNeighborResolution(t *testing.T) {
	lab := netlab.New(t, netlab.Options{Backends: 1})
	lb, be := lab.Balancer, lab.Backends[0]
	svc := &Service{Name: "s"}
	remote := &Backend{Name: "remote", Service: svc, Addr: conntrack.Endpoint{IP: be.IP.As4(), Port: 8090}}
	local := &Backend{Name: "local", Service: svc, Addr: conntrack.Endpoint{IP: lb.IP.As4(), Port: 8090}}
	n := &neighbors{log: slog.New(slog.DiscardHandler), warned: map[*Backend]string{}}
	backends := []*Backend{remote, local}
	if err := lb.Do(func() { n.refresh(backends) }); err != nil {
		t.Fatal(err)
	}
	if remote.hop.Load() != nil {
		t.Fatal("a MAC was known before anything asked the kernel for it")
	}
	if h := local.hop.Load(); h == nil || h.dst != [6]byte{} {
		t.Fatalf("a backend on the balancer's own address: hop %+v, want lo with zero MACs", h)
	}
	netlab.WaitFor(t, 5*time.Second, "the kernel to resolve the backend's MAC", func() bool {
		_ = lb.Do(func() { n.refresh(backends) })
		return remote.hop.Load() != nil
	})
	h := remote.hop.Load()
	if got := net.HardwareAddr(h.dst[:]).String(); got != be.MAC.String() {
		t.Fatalf("resolved %s, want the backend's %s", got, be.MAC)
	}
	if net.HardwareAddr(h.src[:]).String() != lb.MAC.String() {
		t.Fatalf("source MAC %v, want the balancer's %s", net.HardwareAddr(h.src[:]), lb.MAC)
	}
	// The kernel's entry is a real one, learned by ARP.
	var state int
	_ = lb.Do(func() {
		neighs, _ := netlink.NeighList(int(h.ifindex), netlink.FAMILY_V4)
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
