package firewall

import (
	"fmt"
	"slices"
)

// The reservation bookkeeping of several instances in one namespace, as
// pure functions of what the sysctl and the tables' records say. The
// kernel keeps one bitmap per namespace and no owner per port, so the
// owner of a reserved port is inferred: a port inside some rawlb table's
// NAT range was reserved by rawlb unless a record says the administrator
// had reserved it first; any other reserved port is the administrator's.

// claims is what the other rawlb tables of the namespace say about the
// reserved ports: every port of their NAT ranges is theirs to keep
// reserved, and admin are the ones of those they found reserved before
// rawlb.
type claims struct {
	nat   PortList
	admin PortList
}

// claimsOf folds the records of the namespace's other instances.
func claimsOf(others []record) claims {
	var c claims
	for _, o := range others {
		c.nat = c.nat.Add(o.NAT)
		c.admin = c.admin.Union(o.Admin)
	}
	return c
}

// adminPorts returns the ports of nat that the administrator had reserved
// before any rawlb did, given the reserved list cur, the record of an
// earlier process of the same instance (nil if none) and the other
// instances' claims. A reserved port that some record's NAT range covers is
// rawlb's unless that record counted it as the administrator's; the
// leftover's own reservations are therefore never mistaken for the
// administrator's, which is what lets a Remove after a crash restore the
// list as it was before the first rawlb started.
func adminPorts(cur PortList, nat PortRange, leftover *record, others claims) PortList {
	known, claimed := others.admin, others.nat
	if leftover != nil {
		claimed = claimed.Add(leftover.NAT)
		known = known.Union(leftover.Admin)
	}
	inRange := cur.Intersect(PortList{nat})
	// known ∩ cur: a port the administrator has unreserved since is no
	// longer theirs to get back.
	return inRange.Minus(claimed).Union(known.Intersect(inRange))
}

// releasable returns the ports of nat that rawlb reserved for this instance
// and that nothing else needs: not the administrator's, and not inside any
// other instance's NAT range (on another source address ranges may
// overlap, and each then holds the shared ports reserved).
func releasable(nat PortRange, admin PortList, others claims) PortList {
	return PortList{nat}.Minus(admin).Minus(others.nat)
}

// reservedAfterStart is the list Start writes: cur with the new NAT range
// added and, when a leftover of the same instance used another range, the
// leftover's own ports outside the new range released.
func reservedAfterStart(cur PortList, nat PortRange, leftover *record, others claims) PortList {
	out := cur.Add(nat)
	if leftover != nil {
		stale := releasable(leftover.NAT, leftover.Admin, others).Minus(PortList{nat})
		out = out.Minus(stale)
	}
	return out
}

// conflict reports the first overlap of c with another instance's record:
// the same NAT source with overlapping NAT ranges (each balancer would
// receive the other's backend replies), or a listen address that another
// instance listens on or that lies in its NAT range.
func conflict(c Config, others []record) error {
	for _, o := range others {
		who := describe(scanned{TablePrefix + o.Instance, &o, nil})
		if o.NATSource == c.NATSource && o.NAT.First <= c.NATLast && c.NATFirst <= o.NAT.Last {
			return fmt.Errorf("firewall: NAT range %s:%s overlaps %s:%s of %s: both would receive each other's backend replies; pick disjoint ranges (if instance %s is gone for good, remove its leftovers: firewall.Clean, or start and stop it once)",
				c.NATSource, c.natRange(), o.NATSource, o.NAT, who, o.Instance)
		}
		for _, l := range c.Listen {
			if slices.Contains(o.Listen, l) {
				return fmt.Errorf("firewall: listen address %s is also a service of %s: give each instance its own", l, who)
			}
			if l.Addr() == o.NATSource && o.NAT.First <= l.Port() && l.Port() <= o.NAT.Last {
				return fmt.Errorf("firewall: listen address %s lies in the NAT range %s:%s of %s: move one of them", l, o.NATSource, o.NAT, who)
			}
		}
		for _, l := range o.Listen {
			if l.Addr() == c.NATSource && c.NATFirst <= l.Port() && l.Port() <= c.NATLast {
				return fmt.Errorf("firewall: NAT range %s:%s holds %s, a service of %s: move one of them", c.NATSource, c.natRange(), l, who)
			}
		}
	}
	return nil
}
