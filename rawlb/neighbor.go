package rawlb

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// neighbors keeps the next-hop MAC toward each backend, read from the
// kernel's route and neighbour tables. It runs in the control plane on a
// ticker; workers only load the resulting pointers.
type neighbors struct {
	ifindex  int
	backends []netip.Addr
	dp       *dataplane
	log      *slog.Logger
	warned   map[int]bool
}

// nextHopOf returns the address whose MAC a frame to dst needs: dst itself
// on the link, or the gateway of the route toward it.
func (n *neighbors) nextHopOf(dst netip.Addr) (netip.Addr, error) {
	routes, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route to %v: %v", dst, err)
	}
	r := routes[0]
	if r.LinkIndex != n.ifindex {
		return netip.Addr{}, fmt.Errorf("the route to %v leaves through interface %d, not the balancer's (%d); rawlb sends on one interface", dst, r.LinkIndex, n.ifindex)
	}
	if r.Gw != nil {
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
			return gw, nil
		}
	}
	return dst, nil
}

// refresh updates every backend's next-hop MAC, and asks the kernel to
// resolve the ones it lacks.
func (n *neighbors) refresh() {
	neighs, err := netlink.NeighList(n.ifindex, netlink.FAMILY_V4)
	if err != nil {
		n.log.Warn("reading the neighbour table failed", "err", err)
		return
	}
	known := make(map[netip.Addr][6]byte, len(neighs))
	for _, e := range neighs {
		if e.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED|netlink.NUD_NOARP) != 0 || len(e.HardwareAddr) != 6 {
			continue
		}
		if a, ok := netip.AddrFromSlice(e.IP.To4()); ok {
			known[a] = [6]byte(e.HardwareAddr)
		}
	}
	for i, b := range n.backends {
		nh, err := n.nextHopOf(b)
		if err != nil {
			if !n.warned[i] {
				n.warned[i] = true
				n.log.Error("backend unreachable from the balancer's interface", "backend", b, "err", err)
			}
			n.dp.nextHop[i].Store(nil)
			continue
		}
		mac, ok := known[nh]
		if !ok {
			n.resolve(nh)
			continue // keep the last MAC if there was one: stale beats none
		}
		if old := n.dp.nextHop[i].Load(); old == nil || *old != mac {
			n.log.Info("next hop resolved", "backend", b, "next_hop", nh, "mac", net.HardwareAddr(mac[:]).String())
			m := mac
			n.dp.nextHop[i].Store(&m)
		}
		n.warned[i] = false
	}
}

// resolve asks the kernel to resolve addr's MAC, as a send to it would:
// RTM_NEWNEIGH with NTF_USE runs neigh_event_send (net/core/neighbour.c)
// without sending anything to the host itself.
func (n *neighbors) resolve(addr netip.Addr) {
	err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: n.ifindex,
		Family:    netlink.FAMILY_V4,
		IP:        net.IP(addr.AsSlice()),
		State:     netlink.NUD_NONE,
		Flags:     unix.NTF_USE,
	})
	if err != nil {
		n.log.Debug("asking the kernel to resolve a neighbour failed", "addr", addr, "err", err)
	}
}
