package netlab

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/rawlb/rawlb/internal/testenv"
)

// Loopback returns a machine of its own with nothing but its loopback
// interface: a fresh network namespace with lo up, for a test that runs a
// client, a balancer and its backends on one host, all over 127.0.0.1. Its
// IP is 127.0.0.1, its Iface "lo" and its MAC all zeros, as lo's is.
// Whatever runs in it is killed and the namespace deleted in t.Cleanup,
// pass or fail; the test's own namespace and its lo are never touched.
func Loopback(t testing.TB) *Host {
	t.Helper()
	testenv.RequirePrivileged(t)
	h := &Host{
		Name:  labPrefix(t) + "solo",
		IP:    netip.MustParseAddr("127.0.0.1"),
		Iface: "lo",
		MAC:   make(net.HardwareAddr, 6),
	}
	addNetNS(t, h.Name)
	t.Cleanup(func() { destroy(t, []string{h.Name}) })
	// A new namespace's lo is down, and 127.0.0.1 with it.
	ipBatch(t, h.Name, "link set lo up")
	return h
}

// LinkStats are an interface's kernel counters (struct
// rtnl_link_stats64): what the driver was handed to send and what it
// delivered. A GSO frame counts once, with all its bytes, on lo and veth
// alike, since neither segments it.
type LinkStats struct {
	RxPackets, RxBytes, TxPackets, TxBytes uint64
}

// LinkStats returns iface's counters in h's namespace.
func (h *Host) LinkStats(t testing.TB, iface string) LinkStats {
	t.Helper()
	out := h.Run(t, "ip", "-j", "-s", "link", "show", "dev", iface)
	var links []struct {
		Stats64 struct {
			Rx struct{ Bytes, Packets uint64 }
			Tx struct{ Bytes, Packets uint64 }
		}
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("netlab: %s: ip -j -s link show dev %s: %v\n%s", h.Name, iface, err, out)
	}
	s := links[0].Stats64
	return LinkStats{RxPackets: s.Rx.Packets, RxBytes: s.Rx.Bytes, TxPackets: s.Tx.Packets, TxBytes: s.Tx.Bytes}
}

// String prints the counters for a failure message.
func (s LinkStats) String() string {
	return fmt.Sprintf("rx %d packets %d bytes, tx %d packets %d bytes", s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes)
}
