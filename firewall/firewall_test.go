package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

var testRules = Rules{
	SrcIP:    netip.MustParseAddr("198.18.0.2"),
	Port:     20000,
	NATFirst: 40000,
	NATLast:  59999,
}

func TestValidate(t *testing.T) {
	if err := testRules.Validate(); err != nil {
		t.Fatalf("Validate(%+v): %v", testRules, err)
	}
	mapped := testRules
	mapped.SrcIP = netip.MustParseAddr("::ffff:198.18.0.2")
	if err := mapped.Validate(); err != nil {
		t.Errorf("IPv4-mapped source rejected: %v", err)
	}
	bad := []struct {
		name string
		edit func(*Rules)
		want string
	}{
		{"no address", func(r *Rules) { r.SrcIP = netip.Addr{} }, "no source address"},
		{"ipv6", func(r *Rules) { r.SrcIP = netip.MustParseAddr("2001:db8::1") }, "not IPv4"},
		{"port 0", func(r *Rules) { r.Port = 0 }, "port 0"},
		{"nat first 0", func(r *Rules) { r.NATFirst = 0 }, "NAT port range"},
		{"nat backwards", func(r *Rules) { r.NATFirst, r.NATLast = 50000, 40000 }, "NAT port range"},
		{"port in nat range", func(r *Rules) { r.Port = 45000 }, "inside the NAT port range"},
	}
	for _, tt := range bad {
		r := testRules
		tt.edit(&r)
		err := r.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate(%+v) = %v, want an error mentioning %q", tt.name, r, err, tt.want)
		}
		if _, err := Install(r); err == nil {
			t.Errorf("%s: Install accepted invalid rules %+v", tt.name, r)
		}
	}
}

func TestTableName(t *testing.T) {
	if got := testRules.TableName(); got != "rawlb_20000" {
		t.Errorf("TableName() = %q, want rawlb_20000", got)
	}
}

func TestNftErrorSaysWhatToDo(t *testing.T) {
	err := nftError("installing nftables table rawlb_20000", fmt.Errorf("netlink receive: %w", syscall.EPERM))
	if !strings.Contains(err.Error(), "needs CAP_NET_ADMIN (run as root or setcap cap_net_admin") {
		t.Errorf("permission error %q does not say how to get CAP_NET_ADMIN", err)
	}
	if !errors.Is(err, syscall.EPERM) {
		t.Errorf("permission error %q does not wrap EPERM", err)
	}
}

// TestInstallRemove installs over a stale table in a throwaway namespace,
// checks the ruleset with nft(8) and the sysctl, and checks that Remove
// leaves both exactly as they were.
func TestInstallRemove(t *testing.T) {
	testenv.RequirePrivileged(t)
	hostReserved := readFile(t, ReservedPortsPath)
	ns := newNetNS(t)

	// Ports inside and outside the NAT range already reserved: Remove must
	// give them back untouched.
	prior := "1000,40000-40010,60000"
	nsRun(t, ns, "sh", "-c", "echo "+prior+" > "+ReservedPortsPath)
	priorRaw := nsRun(t, ns, "cat", ReservedPortsPath)
	if priorRaw != prior+"\n" {
		t.Fatalf("namespace reserved ports = %q, want %q", priorRaw, prior+"\n")
	}
	// A crashed run's leftovers, with a chain Install does not create.
	nsRun(t, ns, "nft", "add table ip rawlb_20000; add chain ip rawlb_20000 leftover")

	var in *Installed
	inNetNS(t, ns, func() error {
		var err error
		in, err = Install(testRules)
		return err
	})

	listing := nsRun(t, ns, "nft", "list", "table", "ip", "rawlb_20000")
	t.Logf("nft list table ip rawlb_20000:\n%s", listing)
	if strings.Contains(listing, "leftover") {
		t.Errorf("stale table was not replaced: listing still has chain leftover")
	}
	comment := `comment "rawlb 198.18.0.2:20000"`
	for _, want := range []string{
		"chain prerouting {",
		"type filter hook prerouting priority raw; policy accept;",
		"ip daddr 198.18.0.2 tcp dport 20000 drop " + comment,
		"ip daddr 198.18.0.2 tcp dport 40000-59999 drop " + comment,
		"chain output {",
		"type filter hook output priority filter; policy accept;",
		"ip saddr 198.18.0.2 tcp sport 20000 tcp flags & rst == rst drop " + comment,
		"ip saddr 198.18.0.2 tcp sport 40000-59999 tcp flags & rst == rst drop " + comment,
	} {
		if !hasLine(listing, want) {
			t.Errorf("nft listing has no line %q", want)
		}
	}
	if got, want := nsRun(t, ns, "cat", ReservedPortsPath), "1000,40000-60000\n"; got != want {
		t.Errorf("reserved ports after Install = %q, want %q", got, want)
	}

	inNetNS(t, ns, in.Remove)
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", "rawlb_20000").CombinedOutput(); err == nil {
		t.Errorf("table rawlb_20000 still exists after Remove:\n%s", out)
	}
	if got := nsRun(t, ns, "cat", ReservedPortsPath); got != priorRaw {
		t.Errorf("reserved ports after Remove = %q, want the prior %q", got, priorRaw)
	}
	if got := nsRun(t, ns, "nft", "list", "ruleset"); strings.TrimSpace(got) != "" {
		t.Errorf("ruleset not empty after Remove:\n%s", got)
	}
	// Idempotent, also when run again from the namespace.
	inNetNS(t, ns, in.Remove)
	if got := nsRun(t, ns, "cat", ReservedPortsPath); got != priorRaw {
		t.Errorf("reserved ports after second Remove = %q, want %q", got, priorRaw)
	}

	if got := readFile(t, ReservedPortsPath); got != hostReserved {
		t.Errorf("host's reserved ports changed from %q to %q: the test leaked out of its namespace", hostReserved, got)
	}
}

// TestTwoBalancers checks that instances on different ports get separate
// tables and that removing one leaves the other's rules and ports alone.
func TestTwoBalancers(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	a := Rules{SrcIP: netip.MustParseAddr("198.18.0.2"), Port: 20000, NATFirst: 40000, NATLast: 49999}
	b := Rules{SrcIP: netip.MustParseAddr("198.18.0.2"), Port: 20001, NATFirst: 50000, NATLast: 59999}
	var inA, inB *Installed
	inNetNS(t, ns, func() error {
		var err error
		if inA, err = Install(a); err != nil {
			return err
		}
		inB, err = Install(b)
		return err
	})
	if got, want := nsRun(t, ns, "cat", ReservedPortsPath), "40000-59999\n"; got != want {
		t.Errorf("reserved ports with both installed = %q, want %q", got, want)
	}
	inNetNS(t, ns, inA.Remove)
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", "rawlb_20000").CombinedOutput(); err == nil {
		t.Errorf("table rawlb_20000 still exists after its Remove:\n%s", out)
	}
	if listing := nsRun(t, ns, "nft", "list", "table", "ip", "rawlb_20001"); !strings.Contains(listing, "tcp dport 50000-59999 drop") {
		t.Errorf("removing rawlb_20000 damaged rawlb_20001:\n%s", listing)
	}
	if got, want := nsRun(t, ns, "cat", ReservedPortsPath), "50000-59999\n"; got != want {
		t.Errorf("reserved ports after removing the first = %q, want %q", got, want)
	}
	inNetNS(t, ns, inB.Remove)
	if got := nsRun(t, ns, "cat", ReservedPortsPath); got != "\n" {
		t.Errorf("reserved ports after removing both = %q, want empty", got)
	}
}

// TestSilencesHostStack shows the point of the package with two namespaces
// joined by a veth pair. Before Install, B's stack answers a SYN to its
// listener with a SYN-ACK and a SYN to a NAT port with a RST; with the rules
// in B both go unanswered (A's connect times out), and after Remove B's
// stack answers again.
func TestSilencesHostStack(t *testing.T) {
	testenv.RequirePrivileged(t)
	nsA, nsB := newNetNS(t), newNetNS(t)
	nsRun(t, nsA, "ip", "link", "add", "rlbA", "type", "veth", "peer", "name", "rlbB", "netns", nsB)
	for _, c := range []struct{ ns, dev, addr string }{{nsA, "rlbA", "198.18.0.1/24"}, {nsB, "rlbB", "198.18.0.2/24"}} {
		nsRun(t, c.ns, "ip", "addr", "add", c.addr, "dev", c.dev)
		nsRun(t, c.ns, "ip", "link", "set", c.dev, "up")
		nsRun(t, c.ns, "ip", "link", "set", "lo", "up")
	}

	var ln net.Listener
	inNetNS(t, nsB, func() error {
		var err error
		ln, err = net.Listen("tcp", "198.18.0.2:20000")
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	const listener, natPort = "198.18.0.2:20000", "198.18.0.2:40000"
	// The silent cases wait for a timeout, so it is short; the answered
	// cases get a generous one, as veth answers in microseconds.
	const silent, answered = 300 * time.Millisecond, 10 * time.Second
	expectConnect := func(stage string) {
		t.Helper()
		if err := dialFrom(t, nsA, listener, answered); err != nil {
			t.Errorf("%s: connect to %s: %v, want success", stage, listener, err)
		}
		if err := dialFrom(t, nsA, natPort, answered); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: connect to %s: %v, want connection refused (the host's RST)", stage, natPort, err)
		}
	}

	expectConnect("before Install")

	var in *Installed
	inNetNS(t, nsB, func() error {
		var err error
		in, err = Install(testRules)
		return err
	})
	t.Cleanup(func() { inNetNS(t, nsB, in.Remove) })
	for _, addr := range []string{listener, natPort} {
		err := dialFrom(t, nsA, addr, silent)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("with rules installed: connect to %s: %v, want a timeout (SYN dropped, no answer)", addr, err)
		}
	}

	inNetNS(t, nsB, in.Remove)
	expectConnect("after Remove")
}

// dialFrom connects to addr from a thread in namespace ns and closes the
// connection.
func dialFrom(t *testing.T, ns, addr string, timeout time.Duration) error {
	t.Helper()
	var dialErr error
	inNetNS(t, ns, func() error {
		c, err := (&net.Dialer{Timeout: timeout}).Dial("tcp", addr)
		if err != nil {
			dialErr = err
			return nil
		}
		return c.Close()
	})
	return dialErr
}

// newNetNS creates a throwaway network namespace, deleted when the test
// ends, pass or fail.
func newNetNS(t *testing.T) string { return netlab.NewNetNS(t, "rlbfw") }

// inNetNS runs fn on an OS thread switched into namespace ns and fails the
// test if fn returns an error. The thread stays locked and is discarded when
// the goroutine exits, so no goroutine ever runs in ns by accident and the
// test's own threads never leave the host namespace.
func inNetNS(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := netlab.InNetNS(ns, fn); err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

// nsRun runs a command in namespace ns and returns its standard output.
func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return netlab.RunIn(t, ns, nil, args...)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}
