package firewall

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

// The privileged tests below run each in namespaces of their own: a pair
// joined by a veth, the client side at clientIP and the balancer side at
// lbIP and lbIP2.
var (
	clientIP = netip.MustParseAddr("198.18.0.1")
	lbIP     = netip.MustParseAddr("198.18.0.2")
	lbIP2    = netip.MustParseAddr("198.18.0.3")
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestMain turns the test binary into the helper process of the crash and
// handoff tests when childEnv is set: a separate rawlb-like process that
// can be killed or told to detach.
func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(childMain(spec))
	}
	os.Exit(m.Run())
}

const childEnv = "RAWLB_FIREWALL_TEST_CHILD"

type childSpec struct {
	Config Config
	Grace  time.Duration
}

// childMain starts a Guard, says "ready", and then obeys its standard
// input: "detach" detaches and exits; end of input removes and exits.
func childMain(spec string) int {
	var s childSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	g, err := Start(s.Config, Options{Grace: s.Grace})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "detach" {
			if err := g.Detach(); err != nil {
				fmt.Println("error:", err)
				return 1
			}
			fmt.Println("detached")
			return 0
		}
	}
	if err := g.Remove(); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan error
}

// startChild runs the helper process in namespace ns and waits for its
// Guard to be in place. It is killed in t.Cleanup if still running.
func startChild(t *testing.T, ns string, c Config, grace time.Duration) *child {
	t.Helper()
	// ip execs the binary in place: the child's pid is the command's.
	ch, line := runChild(t, exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^$"), c, grace)
	if line != "ready" {
		t.Fatalf("helper process: %q, want ready", line)
	}
	return ch
}

// runChild starts cmd, which must exec the test binary, as the helper
// process and returns it with its first line of output.
func runChild(t *testing.T, cmd *exec.Cmd, c Config, grace time.Duration) (*child, string) {
	t.Helper()
	spec, err := json.Marshal(childSpec{c, grace})
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 16), done: make(chan error, 1)}
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ch.lines <- sc.Text()
		}
		close(ch.lines)
		ch.done <- cmd.Wait()
		close(exited)
	}()
	// Not cmd.ProcessState == nil: Wait sets it in the goroutine above, and
	// reading it here is a data race (make test-race caught it once a child
	// exited by itself). Kill, then drain the output so Wait can return.
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			go func() {
				for range ch.lines {
				}
			}()
			<-exited
		}
	})
	return ch, ch.expect(t)
}

// expect returns the child's next line of output.
func (ch *child) expect(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-ch.lines:
		if !ok {
			t.Fatalf("helper process exited: %v", <-ch.done)
		}
		return line
	case <-time.After(30 * time.Second):
		t.Fatal("helper process said nothing for 30s")
	}
	return ""
}

// wait waits for the child to exit (and reaps it: a zombie still has a
// /proc entry).
func (ch *child) wait(t *testing.T) {
	t.Helper()
	for range ch.lines {
	}
	select {
	case <-ch.done:
	case <-time.After(30 * time.Second):
		t.Fatal("helper process did not exit within 30s")
	}
}

// pair creates two namespaces joined by a veth pair and returns them:
// the client at clientIP and the balancer at lbIP and lbIP2.
func pair(t *testing.T) (client, lb string) {
	t.Helper()
	client, lb = newNetNS(t), newNetNS(t)
	nsRun(t, client, "ip", "link", "add", "rlbA", "type", "veth", "peer", "name", "rlbB", "netns", lb)
	nsRun(t, client, "ip", "addr", "add", clientIP.String()+"/24", "dev", "rlbA")
	nsRun(t, lb, "ip", "addr", "add", lbIP.String()+"/24", "dev", "rlbB")
	nsRun(t, lb, "ip", "addr", "add", lbIP2.String()+"/24", "dev", "rlbB")
	for _, c := range []struct{ ns, dev string }{{client, "rlbA"}, {lb, "rlbB"}} {
		nsRun(t, c.ns, "ip", "link", "set", c.dev, "up")
		nsRun(t, c.ns, "ip", "link", "set", "lo", "up")
	}
	return client, lb
}

// startIn starts a Guard in namespace ns; t.Cleanup removes it.
func startIn(t *testing.T, ns string, c Config, o Options) *Guard {
	t.Helper()
	g, err := tryStartIn(ns, c, o)
	if err != nil {
		t.Fatalf("Start(%+v) in %s: %v", c, ns, err)
	}
	t.Cleanup(func() { netlab.InNetNS(ns, g.Remove) })
	return g
}

func tryStartIn(ns string, c Config, o Options) (*Guard, error) {
	var g *Guard
	err := netlab.InNetNS(ns, func() error {
		var err error
		g, err = Start(c, o)
		return err
	})
	return g, err
}

func reserved(t *testing.T, ns string) string {
	t.Helper()
	return strings.TrimSuffix(nsRun(t, ns, "cat", ReservedPortsPath), "\n")
}

func setReserved(t *testing.T, ns, list string) {
	t.Helper()
	nsRun(t, ns, "sh", "-c", "echo '"+list+"' > "+ReservedPortsPath)
	if got := reserved(t, ns); got != list {
		t.Fatalf("reserved ports = %q after writing %q", got, list)
	}
}

func tableExists(ns, table string) bool {
	return exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", table).Run() == nil
}

func listTable(t *testing.T, ns, table string) string {
	t.Helper()
	return nsRun(t, ns, "nft", "list", "table", "ip", table)
}

// services lists the elements of a table's set of services with nft -j,
// as "addr:port" sorted and space-separated.
func services(t *testing.T, ns, table string) string {
	t.Helper()
	var out struct {
		Nftables []struct {
			Set *struct {
				Elem []struct {
					Concat []any `json:"concat"`
				} `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(nsRun(t, ns, "nft", "-j", "list", "set", "ip", table, "services")), &out); err != nil {
		t.Fatalf("nft -j list set: %v", err)
	}
	var got []string
	for _, o := range out.Nftables {
		if o.Set == nil {
			continue
		}
		for _, e := range o.Set.Elem {
			if len(e.Concat) != 2 {
				t.Fatalf("set element %v is not address . port", e.Concat)
			}
			got = append(got, fmt.Sprintf("%v:%v", e.Concat[0], e.Concat[1]))
		}
	}
	slices.Sort(got)
	return strings.Join(got, " ")
}

// hasLineMatching reports whether a line of text, trimmed, matches the
// regular expression re in full.
func hasLineMatching(text, re string) bool {
	r := regexp.MustCompile("^" + re + "$")
	for _, l := range strings.Split(text, "\n") {
		if r.MatchString(strings.TrimSpace(l)) {
			return true
		}
	}
	return false
}

// probe connects from ns to addr and says how the host there answered:
// "connected", "refused" (its RST) or "timeout" (the SYN was dropped).
func probe(t *testing.T, ns string, addr netip.AddrPort, timeout time.Duration) string {
	t.Helper()
	err := dialFrom(t, ns, addr.String(), timeout)
	var ne net.Error
	switch {
	case err == nil:
		return "connected"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// dropped is how long a probe waits for an answer before it calls the SYN
// dropped. veth answers in microseconds; a false "dropped" only makes a
// test wait longer, never pass wrongly, since the tests look for refusals.
const dropped = 300 * time.Millisecond

// waitRefused polls until the host in lb answers a SYN to addr with a RST
// and returns how long that took from since.
func waitRefused(t *testing.T, client string, addr netip.AddrPort, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for {
		got := probe(t, client, addr, 200*time.Millisecond)
		if got == "refused" {
			return time.Since(since)
		}
		if got != "timeout" {
			t.Fatalf("connect to %s: %s, want refused or timeout", addr, got)
		}
		if time.Since(since) > limit {
			t.Fatalf("connect to %s still times out %v later: the rules did not lapse", addr, time.Since(since))
		}
	}
}

// TestGuardRoundTrip installs, reloads and removes, checking the ruleset
// with nft(8) and the sysctl at each step, with the administrator's own
// reservations inside and outside the NAT range.
func TestGuardRoundTrip(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	prior := "1000,40000-40010,60000"
	setReserved(t, ns, prior)

	c := Config{Instance: "rt", NATSource: lbIP, NATFirst: 40000, NATLast: 59999,
		Listen: []netip.AddrPort{ap("198.18.0.2:20001"), ap("198.18.0.2:20000"), ap("198.18.0.2:20000")}}
	g := startIn(t, ns, c, Options{Grace: 10 * time.Second})
	listing := listTable(t, ns, "rawlb_rt")
	t.Logf("nft list table ip rawlb_rt:\n%s", listing)
	deadlineRE := `meta time < "([0-9: -]+)"`
	for _, want := range []string{
		`type ipv4_addr \. inet_service`,
		`type filter hook prerouting priority raw; policy accept;`,
		`ip daddr \. tcp dport @services ` + deadlineRE + ` drop comment "rawlb rt: services"`,
		`ip daddr 198\.18\.0\.2 tcp dport 40000-59999 ` + deadlineRE + ` drop comment "rawlb rt: NAT 198\.18\.0\.2:40000-59999"`,
		`type filter hook output priority filter; policy accept;`,
		`ip saddr \. tcp sport @services tcp flags & rst == rst ` + deadlineRE + ` drop comment "rawlb rt: services"`,
		`ip saddr 198\.18\.0\.2 tcp sport 40000-59999 tcp flags & rst == rst ` + deadlineRE + ` drop comment "rawlb rt: NAT 198\.18\.0\.2:40000-59999"`,
		fmt.Sprintf(`continue comment "rawlb v1 instance=rt nat=198\.18\.0\.2:40000-59999 pid=%d start=[0-9]+ id=[0-9a-f]{16} state=running"`, os.Getpid()),
		`continue comment "admin-reserved=40000-40010"`,
	} {
		if !hasLineMatching(listing, want) {
			t.Errorf("nft listing has no line matching %s", want)
		}
	}
	if got, want := services(t, ns, "rawlb_rt"), "198.18.0.2:20000 198.18.0.2:20001"; got != want {
		t.Errorf("set of services = %q, want %q", got, want)
	}
	// The deadline nft prints (to the second, in local time, as this
	// process formats it) is the one the Guard set.
	m := regexp.MustCompile(`meta time < "([0-9: -]+)"`).FindStringSubmatch(listing)
	if m == nil {
		t.Fatal("no deadline in the listing")
	}
	if want := g.Deadline().Local().Format("2006-01-02 15:04:05"); m[1] != want {
		t.Errorf("listed deadline %s, Deadline() %s", m[1], want)
	}
	if got, want := reserved(t, ns), "1000,40000-60000"; got != want {
		t.Errorf("reserved ports after Start = %q, want %q", got, want)
	}

	// The same instance again, while this process runs it.
	if _, err := tryStartIn(ns, c, Options{}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("instance rt already runs as pid %d", os.Getpid())) {
		t.Errorf("second Start of instance rt: %v, want a refusal naming pid %d", err, os.Getpid())
	}
	if err := netlab.InNetNS(ns, func() error { return Clean("rt") }); err == nil || !strings.Contains(err.Error(), "runs as pid") {
		t.Errorf("Clean of a running instance: %v, want a refusal", err)
	}

	// Reload: 20001 goes, 20002 comes.
	c.Listen = []netip.AddrPort{ap("198.18.0.2:20000"), ap("198.18.0.2:20002")}
	if err := g.Update(c); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if got, want := services(t, ns, "rawlb_rt"), "198.18.0.2:20000 198.18.0.2:20002"; got != want {
		t.Errorf("set of services after Update = %q, want %q", got, want)
	}
	moved := c
	moved.NATLast = 59000
	if err := g.Update(moved); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Errorf("Update changing the NAT range: %v, want a refusal", err)
	}

	if err := netlab.InNetNS(ns, g.Remove); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if tableExists(ns, "rawlb_rt") {
		t.Error("table rawlb_rt still exists after Remove")
	}
	if got := reserved(t, ns); got != prior {
		t.Errorf("reserved ports after Remove = %q, want the prior %q", got, prior)
	}
	if got := nsRun(t, ns, "nft", "list", "ruleset"); strings.TrimSpace(got) != "" {
		t.Errorf("ruleset not empty after Remove:\n%s", got)
	}
	if err := g.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := g.Update(c); err == nil {
		t.Error("Update after Remove succeeded")
	}
	if got := reserved(t, ns); got != prior {
		t.Errorf("reserved ports after second Remove = %q, want %q", got, prior)
	}
}

// TestGuardRenews checks that the rules outlive their first deadline
// while the Guard runs, and that a table deleted by hand comes back.
// TestGuardReadOnlySysctl runs the Guard where /proc/sys is mounted
// read-only, as Docker does in an unprivileged container: with the NAT
// ports reserved beforehand (docker run --sysctl) it starts and removes
// cleanly without writing; without them it refuses and says what to do.
func TestGuardReadOnlySysctl(t *testing.T) {
	testenv.RequirePrivileged(t)
	c := Config{Instance: "ro", NATSource: lbIP, NATFirst: 40000, NATLast: 59999, Listen: []netip.AddrPort{ap("198.18.0.2:20000")}}
	// A mount namespace of the child's own, so the read-only /proc/sys is
	// nobody else's.
	readOnly := func(ns string) *exec.Cmd {
		return exec.Command("ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$0" -test.run='^$'`, os.Args[0])
	}

	ns := newNetNS(t)
	if _, line := runChild(t, readOnly(ns), c, 10*time.Second); !strings.Contains(line, "read-only") || !strings.Contains(line, "--sysctl") {
		t.Errorf("without reserved ports: %q, want an error naming the read-only /proc/sys and docker's --sysctl", line)
	}
	if tableExists(ns, "rawlb_ro") {
		t.Error("the failed start left its table behind")
	}

	ns = newNetNS(t)
	setReserved(t, ns, "40000-59999")
	ch, line := runChild(t, readOnly(ns), c, 10*time.Second)
	if line != "ready" {
		t.Fatalf("with the ports reserved: %q, want ready", line)
	}
	if !tableExists(ns, "rawlb_ro") {
		t.Error("no table rawlb_ro while the Guard runs")
	}
	ch.stdin.Close()
	ch.wait(t)
	if !ch.cmd.ProcessState.Success() {
		t.Errorf("Remove under a read-only /proc/sys: %v", ch.cmd.ProcessState)
	}
	if tableExists(ns, "rawlb_ro") {
		t.Error("table rawlb_ro outlived Remove")
	}
	// The administrator's (Docker's) reservation stays: it was not ours.
	if got := reserved(t, ns); got != "40000-59999" {
		t.Errorf("reserved ports after Remove = %q, want 40000-59999 untouched", got)
	}
}

func TestGuardRenews(t *testing.T) {
	testenv.RequirePrivileged(t)
	client, lb := pair(t)
	grace := 3 * time.Second
	svc := ap("198.18.0.2:20000")
	g := startIn(t, lb, Config{Instance: "renew", NATSource: lbIP, NATFirst: 40000, NATLast: 40999, Listen: []netip.AddrPort{svc}}, Options{Grace: grace})
	first := g.Deadline()

	nsRun(t, lb, "nft", "delete", "table", "ip", "rawlb_renew")
	netlab.WaitFor(t, 2*grace, "the renewal to create the deleted table again", func() bool { return tableExists(lb, "rawlb_renew") })

	// Waiting for the kernel's clock to pass the first deadline is the
	// point of the test.
	time.Sleep(time.Until(first.Add(100 * time.Millisecond)))
	if got := probe(t, client, svc, dropped); got != "timeout" {
		t.Errorf("past the first deadline, connect to %s: %s, want a timeout (still dropped)", svc, got)
	}
	if d := g.Deadline(); !d.After(first) {
		t.Errorf("deadline %v did not move past the first %v", d, first)
	}
}

// TestGuardCrash kills the owning process and checks that the rules lapse
// within Grace (the host refuses connections again), and that the next
// Start adopts the leftovers so that its Remove restores the reserved
// ports as they were before the first Start.
func TestGuardCrash(t *testing.T) {
	testenv.RequirePrivileged(t)
	client, lb := pair(t)
	prior := "1000,40000-40010"
	setReserved(t, lb, prior)
	grace := 3 * time.Second
	svc := ap("198.18.0.2:20000")
	c := Config{Instance: "crash", NATSource: lbIP, NATFirst: 40000, NATLast: 49999, Listen: []netip.AddrPort{svc}}

	ch := startChild(t, lb, c, grace)
	pid := ch.cmd.Process.Pid
	if listing := listTable(t, lb, "rawlb_crash"); !strings.Contains(listing, fmt.Sprintf(" pid=%d ", pid)) {
		t.Fatalf("table does not name the helper's pid %d:\n%s", pid, listing)
	}
	if got := probe(t, client, svc, dropped); got != "timeout" {
		t.Errorf("with the helper running, connect to %s: %s, want a timeout", svc, got)
	}
	if _, err := tryStartIn(lb, c, Options{}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("instance crash already runs as pid %d", pid)) {
		t.Errorf("Start while the helper runs: %v, want a refusal naming pid %d", err, pid)
	}

	if err := ch.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	ch.wait(t)
	// The last renewal was at most Grace/3 before the kill: the rules
	// still hold for a good while.
	if got := probe(t, client, svc, 200*time.Millisecond); got != "timeout" {
		t.Errorf("right after the kill, connect to %s: %s, want a timeout (the rules outlive the owner)", svc, got)
	}
	took := waitRefused(t, client, svc, killed, grace+5*time.Second)
	t.Logf("host refused connections %v after the kill (grace %v)", took, grace)
	if took > grace+time.Second {
		t.Errorf("the rules lapsed %v after the kill, want within grace %v + 1s", took, grace)
	}
	if got := reserved(t, lb); got != "1000,40000-49999" {
		t.Errorf("reserved ports after the crash = %q, want the helper's range still reserved", got)
	}
	if !tableExists(lb, "rawlb_crash") {
		t.Fatal("the crashed helper's table is gone: nothing to adopt")
	}

	g := startIn(t, lb, c, Options{Grace: grace})
	listing := listTable(t, lb, "rawlb_crash")
	if !strings.Contains(listing, fmt.Sprintf(" pid=%d ", os.Getpid())) || !strings.Contains(listing, `"admin-reserved=40000-40010"`) {
		t.Errorf("adopted table does not carry this pid and the administrator's ports:\n%s", listing)
	}
	if got := probe(t, client, svc, dropped); got != "timeout" {
		t.Errorf("after adoption, connect to %s: %s, want a timeout", svc, got)
	}
	if err := netlab.InNetNS(lb, g.Remove); err != nil {
		t.Fatal(err)
	}
	if got := reserved(t, lb); got != prior {
		t.Errorf("reserved ports after the adopter's Remove = %q, want %q, as before the first Start", got, prior)
	}
	if tableExists(lb, "rawlb_crash") {
		t.Error("table still exists after the adopter's Remove")
	}
}

// TestGuardHandoff detaches the owning process and starts a successor
// after a gap with no process at all, while SYNs to the service and to a
// NAT port hammer the host: the host must not answer a single one.
func TestGuardHandoff(t *testing.T) {
	testenv.RequirePrivileged(t)
	client, lb := pair(t)
	prior := "45000"
	setReserved(t, lb, prior)
	grace := 3 * time.Second
	svc, natPort, control := ap("198.18.0.2:20000"), ap("198.18.0.2:40000"), ap("198.18.0.2:20999")
	c := Config{Instance: "hand", NATSource: lbIP, NATFirst: 40000, NATLast: 49999, Listen: []netip.AddrPort{svc}}

	old := startChild(t, lb, c, grace)
	h := startHammer(t, client, lbIP, svc.Port(), natPort.Port(), control.Port())
	h.waitSent(t, 200)
	fmt.Fprintln(old.stdin, "detach")
	if line := old.expect(t); line != "detached" {
		t.Fatalf("helper: %q, want detached", line)
	}
	old.wait(t)
	if listing := listTable(t, lb, "rawlb_hand"); !strings.Contains(listing, "state=detached") {
		t.Errorf("detached table not marked so:\n%s", listing)
	}
	// The gap of a restart: no process renews anything.
	gapFrom := h.sentTo(svc.Port())
	time.Sleep(300 * time.Millisecond) // the length of the gap is the point, not a wait for something
	if n := h.sentTo(svc.Port()) - gapFrom; n < 50 {
		t.Fatalf("only %d SYNs sent during the gap: the hammer is too slow to tell anything", n)
	}
	g := startIn(t, lb, c, Options{Grace: grace})
	h.waitSent(t, h.sentTo(svc.Port())+200)
	sent, rsts := h.finish(t)
	t.Logf("SYNs sent %v, RSTs received %v", sent, rsts)
	for _, p := range []uint16{svc.Port(), natPort.Port()} {
		if rsts[p] != 0 {
			t.Errorf("the host answered %d of %d SYNs to port %d during the handoff", rsts[p], sent[p], p)
		}
	}
	if rsts[control.Port()] == 0 {
		t.Errorf("no RST from the control port %d (%d SYNs sent): the hammer sees nothing", control.Port(), sent[control.Port()])
	}
	if listing := listTable(t, lb, "rawlb_hand"); !strings.Contains(listing, fmt.Sprintf(" pid=%d ", os.Getpid())) || !strings.Contains(listing, `"admin-reserved=45000"`) {
		t.Errorf("successor's table:\n%s", listing)
	}
	if err := netlab.InNetNS(lb, g.Remove); err != nil {
		t.Fatal(err)
	}
	if got := reserved(t, lb); got != prior {
		t.Errorf("reserved ports after the successor's Remove = %q, want %q", got, prior)
	}
	if got := probe(t, client, svc, 10*time.Second); got != "refused" {
		t.Errorf("after Remove, connect to %s: %s, want refused", svc, got)
	}
}

// TestGuardDetachLapses detaches with no successor: within Grace the host
// answers again, and Clean then restores the reserved ports.
func TestGuardDetachLapses(t *testing.T) {
	testenv.RequirePrivileged(t)
	client, lb := pair(t)
	setReserved(t, lb, "8080")
	grace := time.Second
	svc := ap("198.18.0.3:20000")
	g := startIn(t, lb, Config{Instance: "lapse", NATSource: lbIP2, NATFirst: 40000, NATLast: 40999, Listen: []netip.AddrPort{svc}}, Options{Grace: grace})
	if got := probe(t, client, svc, dropped); got != "timeout" {
		t.Errorf("with the rules, connect to %s: %s, want a timeout", svc, got)
	}
	detached := time.Now()
	if err := g.Detach(); err != nil {
		t.Fatal(err)
	}
	took := waitRefused(t, client, svc, detached, grace+5*time.Second)
	if took > grace+time.Second {
		t.Errorf("the rules lapsed %v after Detach, want within grace %v + 1s", took, grace)
	}
	if got := reserved(t, lb); got != "8080,40000-40999" {
		t.Errorf("reserved ports after Detach = %q, want them kept for a successor", got)
	}
	if err := netlab.InNetNS(lb, func() error { return Clean("lapse") }); err != nil {
		t.Fatalf("Clean: %v", err)
	}
	if got := reserved(t, lb); got != "8080" || tableExists(lb, "rawlb_lapse") {
		t.Errorf("after Clean: reserved %q (want 8080), table exists %v", got, tableExists(lb, "rawlb_lapse"))
	}
}

// TestGuardTwoInstances runs three instances in one namespace, two on the
// same source address with disjoint ranges and one on another address
// with a range overlapping both, and removes them one by one.
func TestGuardTwoInstances(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	prior := "45000,55000-55010"
	setReserved(t, ns, prior)
	a := Config{Instance: "a", NATSource: lbIP, NATFirst: 40000, NATLast: 49999, Listen: []netip.AddrPort{ap("198.18.0.2:20000")}}
	b := Config{Instance: "b", NATSource: lbIP, NATFirst: 50000, NATLast: 59999, Listen: []netip.AddrPort{ap("198.18.0.2:20001")}}
	e := Config{Instance: "e", NATSource: lbIP2, NATFirst: 45000, NATLast: 54999, Listen: []netip.AddrPort{ap("198.18.0.3:20000")}}
	ga := startIn(t, ns, a, Options{})
	gb := startIn(t, ns, b, Options{})
	if got, want := reserved(t, ns), "40000-59999"; got != want {
		t.Errorf("reserved ports with a and b = %q, want %q", got, want)
	}
	for _, bad := range []struct {
		c    Config
		want string
	}{
		{Config{Instance: "c", NATSource: lbIP, NATFirst: 49000, NATLast: 50500}, "overlaps 198.18.0.2:40000-49999 of instance a, pid"},
		{Config{Instance: "d", NATSource: lbIP, NATFirst: 60000, NATLast: 60010, Listen: []netip.AddrPort{ap("198.18.0.2:20001")}}, "also a service of instance b"},
	} {
		if _, err := tryStartIn(ns, bad.c, Options{}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Start(%+v): %v, want a refusal mentioning %q", bad.c, err, bad.want)
		}
	}
	if got, want := reserved(t, ns), "40000-59999"; got != want {
		t.Errorf("reserved ports after the refusals = %q, want %q", got, want)
	}
	ge := startIn(t, ns, e, Options{})

	steps := []struct {
		g       *Guard
		gone    string
		kept    []string
		wantRes string
	}{
		// a's own are 40000-49999 less the administrator's 45000 and
		// e's 45000-54999.
		{ga, "rawlb_a", []string{"rawlb_b", "rawlb_e"}, "45000-59999"},
		// e shares 50000-54999 with b; 45000 the administrator had.
		{ge, "rawlb_e", []string{"rawlb_b"}, "45000,50000-59999"},
		{gb, "rawlb_b", nil, prior},
	}
	for _, s := range steps {
		if err := netlab.InNetNS(ns, s.g.Remove); err != nil {
			t.Fatalf("Remove %s: %v", s.gone, err)
		}
		if tableExists(ns, s.gone) {
			t.Errorf("%s still exists after its Remove", s.gone)
		}
		for _, k := range s.kept {
			if l := listTable(t, ns, k); !strings.Contains(l, "meta time <") || !strings.Contains(l, "state=running") {
				t.Errorf("removing %s damaged %s:\n%s", s.gone, k, l)
			}
		}
		if got := reserved(t, ns); got != s.wantRes {
			t.Errorf("reserved ports after removing %s = %q, want %q", s.gone, got, s.wantRes)
		}
	}
}

// TestGuardUpdateNoGap reloads over and over, and lets renewals run, while
// SYNs hammer a kept service: the host must answer none of them. A
// removed service is answered by the host afterwards.
func TestGuardUpdateNoGap(t *testing.T) {
	testenv.RequirePrivileged(t)
	client, lb := pair(t)
	kept, dropSvc, added, control := ap("198.18.0.2:20000"), ap("198.18.0.2:20001"), ap("198.18.0.2:20002"), ap("198.18.0.2:20999")
	c := Config{Instance: "upd", NATSource: lbIP, NATFirst: 40000, NATLast: 40999, Listen: []netip.AddrPort{kept, dropSvc}}
	// Renewals (every second) run between the reloads too.
	g := startIn(t, lb, c, Options{Grace: 3 * time.Second})
	h := startHammer(t, client, lbIP, kept.Port(), control.Port())
	var took []time.Duration
	for i := range 40 {
		c.Listen = []netip.AddrPort{kept, added}
		if i%2 == 1 {
			c.Listen = []netip.AddrPort{kept, dropSvc}
		}
		start := time.Now()
		if err := g.Update(c); err != nil {
			t.Fatalf("Update %d: %v", i, err)
		}
		took = append(took, time.Since(start))
		h.waitSent(t, h.sentTo(kept.Port())+50)
	}
	c.Listen = []netip.AddrPort{kept, added}
	if err := g.Update(c); err != nil {
		t.Fatalf("last Update: %v", err)
	}
	h.waitSent(t, h.sentTo(kept.Port())+50)
	sent, rsts := h.finish(t)
	t.Logf("SYNs sent %v, RSTs received %v; Update took %v", sent, rsts, took)
	if rsts[kept.Port()] != 0 {
		t.Errorf("the host answered %d of %d SYNs to the kept service during 40 reloads", rsts[kept.Port()], sent[kept.Port()])
	}
	if rsts[control.Port()] == 0 {
		t.Errorf("no RST from the control port (%d SYNs sent): the hammer sees nothing", sent[control.Port()])
	}
	if got := probe(t, client, dropSvc, 10*time.Second); got != "refused" {
		t.Errorf("removed service %s: %s, want refused by the host", dropSvc, got)
	}
	if got := probe(t, client, added, dropped); got != "timeout" {
		t.Errorf("added service %s: %s, want a timeout (dropped)", added, got)
	}
}

// hammer sends TCP SYNs from a raw socket in the client namespace, as
// fast as a loop with a millisecond pause allows, and counts the RSTs
// that come back, by the port they come from.
type hammer struct {
	fd    int
	dst   netip.Addr
	ports []uint16
	// quiet stops the sender, stop the receiver too.
	quiet, stop chan struct{}
	wg          sync.WaitGroup

	mu   sync.Mutex
	sent map[uint16]int
	rsts map[uint16]int
}

// hammerBurst SYNs per port per loop round of a millisecond or so: about
// 1,200 a second per port on the 2-core test machine. That is enough to
// tell: the same 40 reloads done non-atomically (chains flushed in one
// transaction, rules added in the next) drew 21 RSTs from the host.
const hammerBurst = 4

func startHammer(t *testing.T, ns string, dst netip.Addr, ports ...uint16) *hammer {
	t.Helper()
	h := &hammer{dst: dst, ports: ports, quiet: make(chan struct{}), stop: make(chan struct{}), sent: map[uint16]int{}, rsts: map[uint16]int{}}
	err := netlab.InNetNS(ns, func() error {
		var err error
		h.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	})
	if err != nil {
		t.Fatalf("raw socket in %s: %v", ns, err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(h.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.halt(); unix.Close(h.fd) })
	h.wg.Add(2)
	go h.send(t)
	go h.receive()
	return h
}

func (h *hammer) send(t *testing.T) {
	defer h.wg.Done()
	to := &unix.SockaddrInet4{Addr: h.dst.As4()}
	for i := 0; ; i++ {
		select {
		case <-h.quiet:
			return
		default:
		}
		for _, p := range h.ports {
			for j := range hammerBurst {
				seg := synSegment(clientIP, h.dst, uint16(30000+(i*hammerBurst+j)%20000), p, uint32(i))
				if err := unix.Sendto(h.fd, seg, 0, to); err != nil {
					t.Errorf("hammer: sendto: %v", err)
					return
				}
			}
			h.mu.Lock()
			h.sent[p] += hammerBurst
			h.mu.Unlock()
		}
		time.Sleep(time.Millisecond) // a steady rate; nothing to wait for
	}
}

func (h *hammer) receive() {
	defer h.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := unix.Recvfrom(h.fd, buf, 0)
		if err != nil {
			select {
			case <-h.stop:
				return
			default:
				continue // the receive timeout, to look at stop
			}
		}
		b := buf[:n]
		if n < 20 || netip.AddrFrom4([4]byte(b[12:16])) != h.dst {
			continue
		}
		ihl := int(b[0]&0x0f) * 4
		if n < ihl+14 {
			continue
		}
		tcp := b[ihl:]
		if tcp[13]&tcpFlagRST != 0 {
			h.mu.Lock()
			h.rsts[uint16(tcp[0])<<8|uint16(tcp[1])]++
			h.mu.Unlock()
		}
	}
}

func (h *hammer) sentTo(p uint16) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent[p]
}

// waitSent waits until n SYNs went to the first port.
func (h *hammer) waitSent(t *testing.T, n int) {
	t.Helper()
	netlab.WaitFor(t, 30*time.Second, fmt.Sprintf("%d SYNs sent", n), func() bool { return h.sentTo(h.ports[0]) >= n })
}

func (h *hammer) halt() {
	h.hush()
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	h.wg.Wait()
}

func (h *hammer) hush() {
	select {
	case <-h.quiet:
	default:
		close(h.quiet)
	}
}

// finish stops sending and returns the counts once the replies still in
// flight (microseconds on a veth) have had time to arrive.
func (h *hammer) finish(t *testing.T) (sent, rsts map[uint16]int) {
	t.Helper()
	h.hush()
	time.Sleep(200 * time.Millisecond) // late replies; veth delivers in microseconds
	h.halt()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent, h.rsts
}

// synSegment builds a TCP SYN from src:sport to dst:dport, checksum
// included, with gopacket's serializer (independent of the package's own
// code).
func synSegment(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	ip := &layers.IPv4{SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: layers.IPProtocolTCP}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, SYN: true, Window: 64240}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		panic(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, tcp); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// BenchmarkGuardRenew measures one renewal (a record read plus one
// transaction replacing every rule) with 1 and 100 services.
func BenchmarkGuardRenew(b *testing.B) {
	testenv.RequirePrivileged(b)
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			ns := netlab.NewNetNS(b, "rlbfw")
			c := Config{Instance: "bench", NATSource: lbIP, NATFirst: 40000, NATLast: 59999}
			for i := range n {
				c.Listen = append(c.Listen, netip.AddrPortFrom(lbIP, uint16(1000+i)))
			}
			var g *Guard
			if err := netlab.InNetNS(ns, func() (err error) { g, err = Start(c, Options{}); return err }); err != nil {
				b.Fatal(err)
			}
			defer g.Remove()
			for b.Loop() {
				g.mu.Lock()
				err := g.rewrite(g.rec)
				g.mu.Unlock()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestGuardManyServices reloads between two sets of 1,000 services that
// share half: each reload is one transaction with 500 elements out and 500
// in, far more than a rule per service could carry (about 200 rules
// overflowed the netlink socket with acknowledgements).
func TestGuardManyServices(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	listen := func(from int) []netip.AddrPort {
		var l []netip.AddrPort
		for i := from; i < from+1000; i++ {
			l = append(l, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i / 250)}), uint16(1000+i)))
		}
		return l
	}
	c := Config{Instance: "many", NATSource: lbIP, NATFirst: 40000, NATLast: 59999, Listen: listen(0)}
	g := startIn(t, ns, c, Options{})
	for _, from := range []int{500, 0, 500} {
		c.Listen = listen(from)
		start := time.Now()
		if err := g.Update(c); err != nil {
			t.Fatalf("Update to services %d..%d: %v", from, from+999, err)
		}
		t.Logf("Update of 500 out, 500 in: %v", time.Since(start))
	}
	got := strings.Fields(services(t, ns, "rawlb_many"))
	if len(got) != 1000 || !slices.Contains(got, "198.18.1.2:1500") || slices.Contains(got, "198.18.1.1:1499") {
		t.Errorf("after the reloads the set holds %d services (want 1000, from 198.18.1.2:1500)", len(got))
	}
	var rec *record
	if err := netlab.InNetNS(ns, func() error {
		var err error
		rec, _, err = readRecord(g.ns.nft, g.table)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(rec.Listen) != 1000 || rec.Listen[0] != listen(500)[0] {
		t.Errorf("record read back has %d services starting %v", len(rec.Listen), rec.Listen[:1])
	}
}

func TestServiceKey(t *testing.T) {
	a := ap("198.18.0.2:443")
	k := serviceKey(a)
	if want := []byte{198, 18, 0, 2, 0x01, 0xbb, 0, 0}; !slices.Equal(k, want) {
		t.Errorf("serviceKey(%v) = %x, want %x", a, k, want)
	}
	if got, ok := keyService(k); !ok || got != a {
		t.Errorf("keyService(%x) = %v, %v", k, got, ok)
	}
	for _, bad := range [][]byte{k[:6], {198, 18, 0, 2, 0, 0, 0, 0}, {198, 18, 0, 2, 1, 187, 0, 1}} {
		if got, ok := keyService(bad); ok {
			t.Errorf("keyService(%x) = %v, want rejected", bad, got)
		}
	}
}

// TestGuardClockSetRenews stands in for a wall clock step, which a test
// may not cause on a shared host: the watcher's signal must renew the
// deadline at once rather than at the next Grace/3.
func TestGuardClockSetRenews(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	g := startIn(t, ns, Config{Instance: "clock", NATSource: lbIP, NATFirst: 40000, NATLast: 40999}, Options{Grace: time.Minute})
	first := g.Deadline()
	time.Sleep(10 * time.Millisecond) // so that "now + grace" moves measurably
	g.clockSet <- struct{}{}
	netlab.WaitFor(t, 10*time.Second, "a renewal on the clock signal", func() bool { return g.Deadline().After(first) })
}

// TestClockWatch checks that the timerfd arms, stays quiet while the clock
// is left alone, and that close ends a wait.
func TestClockWatch(t *testing.T) {
	w, err := newClockWatch()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.wait() }()
	select {
	case err := <-done:
		t.Fatalf("wait returned %v with nobody setting the clock", err)
	case <-time.After(50 * time.Millisecond):
	}
	w.close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("wait returned nil after close, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not end the wait")
	}
}
