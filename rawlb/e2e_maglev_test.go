package rawlb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
	"github.com/rawlb/rawlb/sched"
)

const (
	// magService is the service's name, and so the prefix of its backends'
	// names (web1, web2, web3) and of the Keys Maglev hashes ("web/web1").
	magService = "web"
	// magClients is how many client addresses spread over the backends.
	magClients = 1000
	// magConcurrency bounds the connections in progress at once: enough
	// to finish a round in seconds, few enough that two shared cores and
	// rawlb's half-open limits see an ordinary burst.
	magConcurrency = 32
	// magIperfStreams is iperf3's -P. iperf3 opens a control connection
	// and then one connection per stream, all from the client's address
	// (iperf 3.12 measured here: 5 flows for -P 4, forward and -R alike).
	magIperfStreams = 4
)

// TestSlowMaglevAffinity proves Maglev's promises as users see them, with
// the real binary, a configuration file and real clients: iperf3's
// several connections of one test all reach one backend (it hangs or
// fails otherwise); a thousand client addresses spread evenly and keep
// their backend; a backend that goes down moves its own clients only, and
// they come back with it; a backend removed from the configuration moves
// its clients and the very few others sched's tables predict.
func TestSlowMaglevAffinity(t *testing.T) {
	slowTest(t)
	t.Parallel()
	skipE2E(t)
	iperf := magNeedTool(t, "iperf3")
	lab := netlab.New(t, netlab.Options{Backends: 3})
	names := make([]string, len(lab.Backends))
	for i := range lab.Backends {
		names[i] = fmt.Sprintf("%s%d", magService, i+1)
	}

	// 1. iperf3 first, on the port the lab protocol's backends take over
	// afterwards: the service stays one service over one port throughout.
	// iperf3 (3.12) closes and reopens its listener after every test, and
	// takes any connection to an idle server for a test: a health check
	// on its port, every 500 ms, would make it recycle the listener and
	// refuse or reset a client that arrives meanwhile. So while iperf3
	// serves, the checks go to a listener of their own on healthPort.
	const healthPort = backendPort + 1
	var servers []*netlab.Process
	var checked []*netlab.Backend
	for i, h := range lab.Backends {
		// --forceflush: its "Server listening" lines, which say when it
		// takes a new test, reach the pipe as they are written.
		servers = append(servers, h.StartProcess(t, iperf, "-s", "-p", strconv.Itoa(backendPort), "--forceflush"))
		checked = append(checked, h.StartBackend(t, healthPort, "health-"+names[i]))
	}
	s := launchConfig(t, lab, magYAML(lab, healthPort, 0, 1, 2))
	s.waitUp(t, 3)
	served := make([]int, len(servers)) // tests each server has finished
	for _, reverse := range []bool{false, true} {
		for i, p := range servers {
			netlab.WaitFor(t, 10*time.Second, "iperf3 -s on "+lab.Backends[i].Name+" to listen for a new test", func() bool {
				return strings.Count(p.Output(), "Server listening on") == served[i]+1
			})
		}
		if i := magIperf(t, s, iperf, names, reverse); i >= 0 {
			served[i]++
		}
	}
	for i, p := range servers {
		if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Fatalf("stop iperf3 on %s: %v", lab.Backends[i].Name, err)
		}
		netlab.WaitFor(t, 10*time.Second, "iperf3 -s on "+lab.Backends[i].Name+" to exit", func() bool {
			return errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone)
		})
	}
	var backends []*netlab.Backend
	for i, h := range lab.Backends {
		backends = append(backends, h.StartBackend(t, backendPort, names[i]))
	}
	// From here on the checks go to the service's port, so that a backend
	// whose server stops goes down (step 4).
	s.reload(t, magYAML(lab, 0, 0, 1, 2))
	for _, b := range checked {
		b.Stop()
	}
	for _, n := range names {
		// With healthPort closed, a passing check is one on the service's port.
		ok := s.metric(t, "rawlb_healthcheck_total", "service", magService, "backend", n, "result", "ok")
		netlab.WaitFor(t, 15*time.Second, "a passing health check of "+n+" on its own port", func() bool {
			return s.metric(t, "rawlb_healthcheck_total", "service", magService, "backend", n, "result", "ok") > ok
		})
	}
	s.waitUp(t, 3)

	// 2. A thousand client addresses, one connection each.
	clients := magAddClients(t, lab.Client)
	all := magPredict(t, names, clients)
	first := magRound(t, s, clients, names)
	count := map[string]int{}
	for _, n := range first {
		count[n]++
	}
	even := float64(magClients) / float64(len(names))
	for _, n := range names {
		if c := float64(count[n]); c < 0.9*even || c > 1.1*even {
			t.Errorf("%s took %d of %d clients, want within 10%% of %.1f (all: %v)", n, count[n], magClients, even, count)
		}
	}
	t.Logf("spread of %d client addresses: %v", magClients, count)
	if d := magDiff(clients, all, first); len(d) > 0 {
		t.Errorf("%d of %d clients did not reach the backend sched's Maglev table over %v gives them: %s", len(d), magClients, names, magShow(d))
	}

	// 3. The same clients again: each keeps its backend.
	again := magRound(t, s, clients, names)
	if d := magDiff(clients, first, again); len(d) > 0 {
		t.Errorf("repeated: %d of %d clients reached another backend: %s", len(d), magClients, magShow(d))
	}

	// 4. A backend down moves its own clients only, and back.
	const down = 1 // web2
	backends[down].Stop()
	magWaitUp(t, s, names[down], 0)
	during := magRound(t, s, clients, []string{names[0], names[2]})
	survivors := magPredict(t, []string{names[0], names[2]}, clients)
	var own int
	var othersMoved, ownMisplaced []string
	for i := range clients {
		switch {
		case first[i] == names[down]:
			own++
			if during[i] != survivors[i] {
				ownMisplaced = append(ownMisplaced, fmt.Sprintf("%s %s, want %s", clients[i], during[i], survivors[i]))
			}
		case during[i] != first[i]:
			othersMoved = append(othersMoved, fmt.Sprintf("%s %s->%s", clients[i], first[i], during[i]))
		}
	}
	t.Logf("%s down: its %d clients moved, %d others moved", names[down], own, len(othersMoved))
	if len(othersMoved) > 0 {
		t.Errorf("%s down: %d clients of other backends moved: %s", names[down], len(othersMoved), magShow(othersMoved))
	}
	if len(ownMisplaced) > 0 {
		t.Errorf("%s down: %d of its %d clients did not reach the backend Maglev over the usable ones gives them: %s", names[down], len(ownMisplaced), own, magShow(ownMisplaced))
	}
	backends[down].Start()
	magWaitUp(t, s, names[down], 1)
	back := magRound(t, s, clients, names)
	if d := magDiff(clients, first, back); len(d) > 0 {
		t.Errorf("%s up again: %d of %d clients are not where they were at first: %s", names[down], len(d), magClients, magShow(d))
	}

	// 5. A backend removed from the configuration: its clients move, and
	// of the others those whose table entries the rebuilt table gives to
	// someone else, which sched predicts exactly.
	const removed = 2 // web3
	kept := []string{names[0], names[1]}
	s.reload(t, magYAML(lab, 0, 0, 1))
	s.waitUp(t, 2)
	after := magRound(t, s, clients, kept)
	predicted := magPredict(t, kept, clients)
	var others, moved, want int
	for i := range clients {
		if first[i] == names[removed] {
			if after[i] == names[removed] {
				t.Fatalf("client %s reached %s after the reload removed it", clients[i], names[removed])
			}
			continue
		}
		others++
		if after[i] != first[i] {
			moved++
		}
	}
	for i := range clients {
		// sched's own figure: the others whose entries the table over the
		// two remaining backends gives to the other one.
		if all[i] != names[removed] && predicted[i] != all[i] {
			want++
		}
	}
	if d := magDiff(clients, predicted, after); len(d) > 0 {
		t.Errorf("after removing %s: %d clients did not reach the backend sched's table over %v gives them: %s", names[removed], len(d), kept, magShow(d))
	}
	t.Logf("%s removed: %d of %d other clients moved (sched predicts %d)", names[removed], moved, others, want)
	if moved*100 > others {
		t.Errorf("%s removed: %d of %d other clients moved, want at most 1%%", names[removed], moved, others)
	}
	if moved != want {
		t.Errorf("%s removed: %d other clients moved, sched's tables predict %d", names[removed], moved, want)
	}
}

// magNeedTool finds a program a test runs. Without it the test cannot
// run: it skips, and fails under RAWLB_REQUIRE_PRIVILEGED=1, where CI has
// installed it (scripts/deps.sh) and a skip would hide the test.
func magNeedTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(testenv.RequireEnv) == "1" {
		t.Fatalf("%s not found (scripts/deps.sh installs it) and %s=1 forbids skipping: %v", name, testenv.RequireEnv, err)
	}
	t.Skipf("%s not found (scripts/deps.sh installs it): %v", name, err)
	return ""
}

// magYAML is the services: section of one maglev service over the lab's
// backend hosts of the given indices, each named for its index, so that a
// host keeps its name, and its Maglev Key, whatever else is listed. The
// health checks go to healthPort, or to the backends' own port for 0.
func magYAML(lab *netlab.Lab, healthPort int, hosts ...int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services:\n  - name: %s\n    listen: %d\n    scheduler: maglev\n", magService, lbPort)
	port := ""
	if healthPort != 0 {
		port = fmt.Sprintf(", port: %d", healthPort)
	}
	fmt.Fprintf(&b, "    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2%s}\n    backends:\n", port)
	for _, i := range hosts {
		fmt.Fprintf(&b, "      - {name: %s%d, address: \"%s:%d\"}\n", magService, i+1, lab.Backends[i].IP, backendPort)
	}
	return b.String()
}

// magFlows reads rawlb_backend_flows_total of each backend.
func magFlows(t *testing.T, s *setup, names []string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, n := range names {
		m[n] = s.metric(t, "rawlb_backend_flows_total", "service", magService, "backend", n)
	}
	return m
}

// magIperfReport is the part of iperf3 -J's report the test reads.
type magIperfReport struct {
	Error string `json:"error"`
	End   struct {
		Streams []struct {
			Receiver struct {
				Bytes int64 `json:"bytes"`
			} `json:"receiver"`
		} `json:"streams"`
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// magIperf runs iperf3 -P 4 from the client through the balancer (-R:
// the servers send) and checks that every stream carried data and that
// all of the test's connections reached one backend, whose index it
// returns (-1 if none or several).
func magIperf(t *testing.T, s *setup, iperf string, names []string, reverse bool) int {
	t.Helper()
	what := "iperf3 -P 4"
	args := []string{"-c", s.lab.Balancer.IP.String(), "-p", strconv.Itoa(lbPort), "-P", strconv.Itoa(magIperfStreams), "-t", "3", "-J"}
	if reverse {
		what += " -R"
		args = append(args, "-R")
	}
	before := magFlows(t, s, names)
	// Connections split over backends leave the server that has the
	// control connection waiting for streams that never come, so bound
	// the run.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := s.lab.Client.Command(ctx, iperf, args...)
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v (context: %v)\nstdout:\n%s\nstderr:\n%s", what, err, ctx.Err(), out, stderr.String())
	}
	var r magIperfReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%s: its JSON report: %v\n%s", what, err, out)
	}
	if r.Error != "" {
		t.Fatalf("%s exited 0 but reported an error: %s", what, r.Error)
	}
	if len(r.End.Streams) != magIperfStreams {
		t.Fatalf("%s reported %d streams, want %d\n%s", what, len(r.End.Streams), magIperfStreams, out)
	}
	for i, st := range r.End.Streams {
		if st.Receiver.Bytes <= 0 {
			t.Errorf("%s: stream %d received %d bytes", what, i+1, st.Receiver.Bytes)
		}
	}
	after := magFlows(t, s, names)
	var grew []string
	which := -1
	for i, n := range names {
		if d := after[n] - before[n]; d != 0 {
			grew = append(grew, fmt.Sprintf("%s +%v", n, d))
			which = i
			if d != magIperfStreams+1 {
				t.Errorf("%s: %s got %v new flows, want %d (the control connection and %d streams)", what, n, d, magIperfStreams+1, magIperfStreams)
			}
		}
	}
	t.Logf("%s: %d bytes received, %.2f Gbit/s; new flows: %v", what, r.End.SumReceived.Bytes, r.End.SumReceived.BitsPerSecond/1e9, grew)
	if len(grew) != 1 {
		t.Errorf("%s: new flows went to %v, want all to one backend", what, grew)
		return -1
	}
	return which
}

// magAddClients gives the client host magClients more addresses,
// 198.19.0.1 upwards, as /32s on its interface: they need no route
// anywhere, since rawlb sends its replies to the MAC the client's frames
// came from, and the backends see only the balancer's address.
func magAddClients(t *testing.T, h *netlab.Host) []netip.Addr {
	t.Helper()
	var addrs []netip.Addr
	var cmds strings.Builder
	a := netip.MustParseAddr("198.19.0.1")
	for range magClients {
		addrs = append(addrs, a)
		fmt.Fprintf(&cmds, "addr add %s/32 dev %s\n", a, h.Iface)
		a = a.Next()
	}
	cmd := exec.Command("ip", "-n", h.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(cmds.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("add %d client addresses in %s: %v\n%s", magClients, h.Name, err, out)
	}
	return addrs
}

// magPredict returns, per client, the backend that sched's Maglev table
// over names gives it: the engine's Keys ("service/backend"), weight 1
// (the configuration's default) and the engine's client hash.
func magPredict(t *testing.T, names []string, clients []netip.Addr) []string {
	t.Helper()
	var entries []sched.Entry
	for i, n := range names {
		entries = append(entries, sched.Entry{ID: uint32(i), Key: magService + "/" + n, Weight: 1})
	}
	table, err := sched.New(sched.Maglev, entries)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(clients))
	for i, c := range clients {
		id, ok := table.Pick(sched.HashAddr(c.As4()), nil)
		if !ok {
			t.Fatalf("Maglev table over %v picked nothing for %s", names, c)
		}
		out[i] = names[id]
	}
	return out
}

// magRound connects to the VIP once from each client address and returns
// the backend each reached; it fails t if any connection failed, and
// checks that the flows counted per backend (of names, the backends
// configured now) are the connections that reached it.
func magRound(t *testing.T, s *setup, clients []netip.Addr, names []string) []string {
	t.Helper()
	before := magFlows(t, s, names)
	got := make([]string, len(clients))
	errs := make([]error, len(clients))
	next := make(chan int)
	var wg sync.WaitGroup
	for range magConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One thread per worker in the client's namespace: the
			// sockets must be created there.
			err := netlab.InNetNS(s.lab.Client.Name, func() error {
				for i := range next {
					got[i], errs[i] = magHello(clients[i], s.vip)
				}
				return nil
			})
			for i := range next { // could not enter: fail the rest
				errs[i] = err
			}
		}()
	}
	for i := range clients {
		next <- i
	}
	close(next)
	wg.Wait()
	var failed []string
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", clients[i], err))
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d connections failed, e.g. %s\nrawlb output:\n%s", len(failed), len(clients), strings.Join(failed[:min(5, len(failed))], "; "), s.lb.Output())
	}
	count := map[string]float64{}
	for _, n := range got {
		count[n]++
	}
	after := magFlows(t, s, names)
	for _, n := range names {
		if d := after[n] - before[n]; d != count[n] {
			t.Errorf("rawlb counted %v new flows to %s, %v connections reached it", d, n, count[n])
		}
	}
	return got
}

// magHello connects from the local address from to vip and returns the
// greeting backend's name. It must run in the client's namespace.
func magHello(from netip.Addr, vip string) (string, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), Timeout: 10 * time.Second}
	c, err := d.Dial("tcp4", vip)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return netlab.Hello(c)
}

// magWaitUp waits until rawlb_backend_up of the backend is up (0 or 1),
// and then for one more health check of it. The gauge reads the backend's
// state, which rawlb sets just before it rebuilds the service's
// schedulers; a new connection in between would still be scheduled by the
// old tables. The next check comes an interval (500 ms) later, when the
// rebuild (milliseconds) is long done.
func magWaitUp(t *testing.T, s *setup, name string, up float64) {
	t.Helper()
	netlab.WaitFor(t, 15*time.Second, fmt.Sprintf("rawlb_backend_up of %s to be %v", name, up), func() bool {
		return s.metric(t, "rawlb_backend_up", "service", magService, "backend", name) == up
	})
	checks := s.metric(t, "rawlb_healthcheck_total", "service", magService, "backend", name)
	netlab.WaitFor(t, 15*time.Second, "one more health check of "+name, func() bool {
		return s.metric(t, "rawlb_healthcheck_total", "service", magService, "backend", name) > checks
	})
}

// magDiff lists the clients whose backends in a and b differ.
func magDiff(clients []netip.Addr, a, b []string) []string {
	var d []string
	for i := range clients {
		if a[i] != b[i] {
			d = append(d, fmt.Sprintf("%s %s->%s", clients[i], a[i], b[i]))
		}
	}
	return d
}

// magShow shows the first few of a long list.
func magShow(d []string) string {
	if len(d) > 10 {
		return strings.Join(d[:10], ", ") + fmt.Sprintf(", ... (%d more)", len(d)-10)
	}
	return strings.Join(d, ", ")
}
