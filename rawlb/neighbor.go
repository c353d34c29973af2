package rawlb

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// neighbors keeps each backend's next hop (interface and MACs), read from
// the kernel's route and neighbour tables. It runs in the control plane on
// a ticker; workers only load the resulting pointers.
//
// Each frame to a backend leaves where the route to the backend leads: a
// Raspberry Pi with clients on wlan0 and servers on eth0 sends each side's
// frames out its own interface. A backend on the host itself is reached
// over lo, whose "MACs" are zero: the kernel's loopback takes any frame
// (loopback_xmit hands it back to the receive path), and the frames
// arriving on lo carry zero MACs too.
type neighbors struct {
	log    *slog.Logger
	warned map[*Backend]string
	// pending counts the refreshes a backend's next hop has been
	// unresolved for: a first ARP takes a moment and is not worth a warning.
	pending map[*Backend]int
	// allowed restricts next hops to these interfaces (the configuration's
	// interfaces list); nil allows any.
	allowed map[int]bool
	// moved, with the fast path on, is told of each next hop that changed:
	// the program has the MACs a flow was offloaded with (startFast).
	moved func()
}

// route is what a frame to a backend needs: the interface and the address
// whose MAC it is sent to.
type route struct {
	ifindex int
	via     netip.Addr // the backend itself, or a gateway
	lo      bool
}

// routeTo returns the route the kernel would use toward dst.
func (n *neighbors) routeTo(dst netip.Addr) (route, error) {
	routes, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(routes) == 0 {
		return route{}, fmt.Errorf("no route to %v: %v", dst, err)
	}
	r := routes[0]
	link, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return route{}, fmt.Errorf("the route to %v leaves through interface %d: %v", dst, r.LinkIndex, err)
	}
	a := link.Attrs()
	if n.allowed != nil && !n.allowed[a.Index] {
		return route{}, fmt.Errorf("the route to %v leaves through %s, which is not among the configured interfaces", dst, a.Name)
	}
	if a.Flags&net.FlagUp == 0 || a.OperState == netlink.OperDown || a.OperState == netlink.OperLowerLayerDown {
		return route{}, fmt.Errorf("the route to %v leaves through %s, which is down", dst, a.Name)
	}
	if a.Flags&net.FlagLoopback != 0 {
		return route{ifindex: a.Index, via: dst, lo: true}, nil
	}
	if len(a.HardwareAddr) != 6 {
		return route{}, fmt.Errorf("the route to %v leaves through %s (%s), which is not an Ethernet interface", dst, a.Name, link.Type())
	}
	via := dst
	if r.Gw != nil {
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
			via = gw
		}
	}
	return route{ifindex: a.Index, via: via}, nil
}

// refresh updates every backend's next hop, asks the kernel to resolve the
// MACs it lacks, and returns whether any backend's reachability changed
// (the schedulers then need rebuilding).
func (n *neighbors) refresh(backends []*Backend) (changed bool) {
	neighs, err := netlink.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		n.log.Warn("reading the neighbour table failed", "err", err)
		return false
	}
	type nk struct {
		ifindex int
		ip      netip.Addr
	}
	known := make(map[nk][6]byte, len(neighs))
	for _, e := range neighs {
		if e.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED|netlink.NUD_NOARP) != 0 || len(e.HardwareAddr) != 6 {
			continue
		}
		if a, ok := netip.AddrFromSlice(e.IP.To4()); ok {
			known[nk{e.LinkIndex, a}] = [6]byte(e.HardwareAddr)
		}
	}
	macs := map[int][6]byte{}
	for _, b := range backends {
		addr := netip.AddrFrom4(b.Addr.IP)
		rt, err := n.routeTo(addr)
		if err != nil {
			changed = n.unreachable(b, err.Error()) || changed
			continue
		}
		src, ok := macs[rt.ifindex]
		if !ok && !rt.lo {
			if l, err := netlink.LinkByIndex(rt.ifindex); err == nil && len(l.Attrs().HardwareAddr) == 6 {
				src = [6]byte(l.Attrs().HardwareAddr)
			}
			macs[rt.ifindex] = src
		}
		var dst [6]byte
		if !rt.lo {
			mac, ok := known[nk{rt.ifindex, rt.via}]
			if !ok {
				n.resolve(rt.ifindex, rt.via)
				if b.hop.Load() == nil {
					if n.pending == nil {
						n.pending = map[*Backend]int{}
					}
					if n.pending[b]++; n.pending[b] > 3 {
						changed = n.unreachable(b, fmt.Sprintf("next hop %v does not answer ARP", rt.via)) || changed
					} else {
						w := fmt.Sprintf("resolving next hop %v", rt.via)
						b.routeWhy.Store(&w)
					}
				}
				continue // keep the last MAC if there was one: stale beats none
			}
			delete(n.pending, b)
			dst = mac
		}
		h := &hop{ifindex: int32(rt.ifindex), dst: dst, src: src}
		if old := b.hop.Load(); old == nil || *old != *h {
			n.log.Info("next hop resolved", "service", b.Service.Name, "backend", b.Name, "addr", addr,
				"next_hop", rt.via, "ifindex", rt.ifindex, "mac", net.HardwareAddr(dst[:]).String())
			b.hop.Store(h)
			if n.moved != nil && old != nil {
				// Only a hop that changed: no flow went with one that
				// was not there (a backend resolved after the start
				// took every offloaded flow back).
				n.moved()
			}
			changed = changed || old == nil
		}
		// Reachable: whatever the refresh said before (unreachable, or
		// still resolving) no longer holds.
		delete(n.warned, b)
		b.routeWhy.Store(nil)
	}
	return changed
}

// forget drops what n remembers of b, a backend that is gone.
func (n *neighbors) forget(b *Backend) {
	delete(n.warned, b)
	delete(n.pending, b)
}

// unreachable marks b as one rawlb cannot send to, logging why once per
// reason. It reports whether b was reachable before.
func (n *neighbors) unreachable(b *Backend, why string) bool {
	if n.warned[b] != why {
		n.warned[b] = why
		n.log.Error("backend unreachable from the balancer: it takes no flows", "service", b.Service.Name, "backend", b.Name, "reason", why)
	}
	w := why
	b.routeWhy.Store(&w)
	return b.hop.Swap(nil) != nil
}

// resolve asks the kernel to resolve addr's MAC on ifindex, as a send to it
// would: RTM_NEWNEIGH with NTF_USE runs neigh_event_send
// (net/core/neighbour.c) without sending anything to the host itself.
func (n *neighbors) resolve(ifindex int, addr netip.Addr) {
	err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: ifindex,
		Family:    netlink.FAMILY_V4,
		IP:        net.IP(addr.AsSlice()),
		State:     netlink.NUD_NONE,
		Flags:     unix.NTF_USE,
	})
	if err != nil {
		n.log.Debug("asking the kernel to resolve a neighbour failed", "addr", addr, "err", err)
	}
}
