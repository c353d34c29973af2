package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

// loSettings reads lo's settings of loopbackSysctls in ns, as "a=0 b=1".
func loSettings(t *testing.T, ns string) string {
	t.Helper()
	var out []string
	for _, name := range loopbackSysctls {
		out = append(out, name+"="+strings.TrimSpace(nsRun(t, ns, "cat", loopbackConf+name)))
	}
	return strings.Join(out, " ")
}

// TestGuardLoopbackSettings checks the lifecycle of lo's settings: a
// Guard turns on those that are off, the namespace's last instance to
// leave turns off those it turned on, and one the administrator had on
// stays on.
func TestGuardLoopbackSettings(t *testing.T) {
	testenv.RequirePrivileged(t)
	const off, on = "accept_local=0 route_localnet=0", "accept_local=1 route_localnet=1"
	a := Config{Instance: "a", NATSource: lbIP, NATFirst: 40000, NATLast: 49999, Listen: []netip.AddrPort{ap("198.18.0.2:20000")}}
	b := Config{Instance: "b", NATSource: lbIP, NATFirst: 50000, NATLast: 59999, Listen: []netip.AddrPort{ap("198.18.0.2:20001")}}
	remove := func(t *testing.T, ns string, g *Guard) {
		t.Helper()
		if err := netlab.InNetNS(ns, g.Remove); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}

	t.Run("one instance", func(t *testing.T) {
		ns := newNetNS(t)
		if got := loSettings(t, ns); got != off {
			t.Fatalf("a new namespace has %s, want %s", got, off)
		}
		g := startIn(t, ns, a, Options{})
		if got := loSettings(t, ns); got != on {
			t.Errorf("after Start: %s, want %s", got, on)
		}
		remove(t, ns, g)
		if got := loSettings(t, ns); got != off {
			t.Errorf("after Remove: %s, want %s again", got, off)
		}
	})

	t.Run("administrator's", func(t *testing.T) {
		ns := newNetNS(t)
		nsRun(t, ns, "sh", "-c", "echo 1 > "+loopbackConf+"accept_local")
		g := startIn(t, ns, a, Options{})
		if got := loSettings(t, ns); got != on {
			t.Errorf("after Start: %s, want %s", got, on)
		}
		remove(t, ns, g)
		if got, want := loSettings(t, ns), "accept_local=1 route_localnet=0"; got != want {
			t.Errorf("after Remove: %s, want %s (the administrator's accept_local kept)", got, want)
		}
	})

	t.Run("two instances", func(t *testing.T) {
		ns := newNetNS(t)
		ga := startIn(t, ns, a, Options{})
		gb := startIn(t, ns, b, Options{})
		remove(t, ns, ga)
		if got := loSettings(t, ns); got != on {
			t.Errorf("with b still running: %s, want %s", got, on)
		}
		remove(t, ns, gb)
		// b found them on and leaves them so: which instance turned them
		// on is not recorded, and on is harmless (see loopbackSysctls).
		if got := loSettings(t, ns); got != on {
			t.Errorf("after both: %s, want %s", got, on)
		}
	})
}
