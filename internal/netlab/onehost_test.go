package netlab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

// TestTwoArms checks a two-arm lab's shape: the client and the balancer's
// eth0 on one segment, the balancer's eth1 and the backends on the other,
// nothing routed between them, and each arm's traffic on its own
// interface.
func TestTwoArms(t *testing.T) {
	testenv.RequirePrivileged(t)
	lab := netlab.New(t, netlab.Options{Backends: 2, TwoArms: true})
	arm := lab.BackendArm
	if arm == nil || lab.BackendSwitch == "" {
		t.Fatalf("a two-arm lab without BackendArm (%v) or BackendSwitch (%q)", arm, lab.BackendSwitch)
	}
	if arm.Name != lab.Balancer.Name || arm.Iface != "eth1" || arm.IP.String() != "198.18.1.2" {
		t.Errorf("BackendArm = %s %s %v, want the balancer's namespace, eth1, 198.18.1.2", arm.Name, arm.Iface, arm.IP)
	}
	for i, h := range lab.Backends {
		if want := fmt.Sprintf("198.18.1.%d", 11+i); h.IP.String() != want || !netlab.BackendSubnet.Contains(h.IP) {
			t.Errorf("backend %d at %v, want %s", i+1, h.IP, want)
		}
	}
	for _, h := range append(lab.Hosts(), arm) {
		if mac := strings.TrimSpace(h.Run(t, "cat", "/sys/class/net/"+h.Iface+"/address")); mac != h.MAC.String() {
			t.Errorf("%s: %s has MAC %s, Host.MAC says %s", h.Name, h.Iface, mac, h.MAC)
		}
	}
	if lab.Balancer.MAC.String() == arm.MAC.String() {
		t.Errorf("the balancer's two interfaces share MAC %s", arm.MAC)
	}

	b := lab.Backends[0].StartBackend(t, backendPort, "backend-1")
	eth0, eth1 := lab.Balancer.LinkStats(t, "eth0"), lab.Balancer.LinkStats(t, "eth1")
	c := dial(t, lab.Balancer, fmt.Sprintf("%s:%d", lab.Backends[0].IP, backendPort))
	hello(t, c, b.Name())
	if err := netlab.EchoRoundTrip(c, make([]byte, 1<<20)); err != nil {
		t.Fatalf("balancer to backend over eth1: %v", err)
	}
	d0, d1 := lab.Balancer.LinkStats(t, "eth0").TxBytes-eth0.TxBytes, lab.Balancer.LinkStats(t, "eth1").TxBytes-eth1.TxBytes
	if d1 < 1<<20 || d0 > 4096 {
		t.Errorf("1 MiB to a backend: %d bytes left by eth1 and %d by eth0, want it all by eth1", d1, d0)
	}

	// The client cannot reach the backends' network, nor a backend the
	// client's: only the balancer joins them.
	for _, x := range []struct {
		from *netlab.Host
		to   string
	}{{lab.Client, lab.Backends[0].IP.String()}, {lab.Backends[0], lab.Client.IP.String()}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := x.from.Dial(ctx, "tcp", net.JoinHostPort(x.to, fmt.Sprint(backendPort)))
		cancel()
		if !errors.Is(err, syscall.ENETUNREACH) {
			if c != nil {
				c.Close()
			}
			t.Errorf("%s to %s: %v, want network unreachable", x.from.Name, x.to, err)
		}
	}
}

// TestLoopback checks a Loopback host: lo only, up, 127.0.0.1 serving,
// and its counters moving.
func TestLoopback(t *testing.T) {
	testenv.RequirePrivileged(t)
	h := netlab.Loopback(t)
	if h.Iface != "lo" || h.IP.String() != "127.0.0.1" || h.MAC.String() != "00:00:00:00:00:00" {
		t.Errorf("Loopback host %s %v %s, want lo 127.0.0.1 00:00:00:00:00:00", h.Iface, h.IP, h.MAC)
	}
	if out := h.Run(t, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo: <LOOPBACK,UP") {
		t.Errorf("want lo alone and up, got:\n%s", out)
	}
	b := h.StartBackend(t, backendPort, "solo")
	before := h.LinkStats(t, "lo")
	c := dial(t, h, fmt.Sprintf("127.0.0.1:%d", backendPort))
	hello(t, c, b.Name())
	if err := netlab.EchoRoundTrip(c, []byte("over lo")); err != nil {
		t.Fatal(err)
	}
	after := h.LinkStats(t, "lo")
	// lo counts each frame once sent and once received.
	if after.TxPackets == before.TxPackets || after.TxPackets-before.TxPackets != after.RxPackets-before.RxPackets {
		t.Errorf("lo counters around one connection: before %v, after %v", before, after)
	}
}
