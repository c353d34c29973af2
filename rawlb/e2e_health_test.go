package rawlb_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// Honest health (issue 11): a backend takes new flows only when rawlb can
// both check it and send to it, the API and the metrics say which part
// failed, and the flows of a backend that died are reset (or kept) as the
// service says.

// hcAPIBackend is the part of a backend in GET /api/services these tests
// read, decoded from the JSON names an operator's script would use.
type hcAPIBackend struct {
	Name   string `json:"name"`
	Health string `json:"health"`
	Usable bool   `json:"usable"`
	Why    string `json:"why"`
	Flows  int64  `json:"flows"`
}

// hcAPI runs curl in the balancer's namespace, as an operator would, and
// returns every backend of GET /api/services keyed "service/backend".
func hcAPI(t *testing.T, s *setup) map[string]hcAPIBackend {
	t.Helper()
	out := s.lab.Balancer.Run(t, "curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "10", "http://"+metricsAddr+"/api/services")
	var svcs []struct {
		Name     string         `json:"name"`
		Backends []hcAPIBackend `json:"backends"`
	}
	if err := json.Unmarshal([]byte(out), &svcs); err != nil {
		t.Fatalf("GET /api/services: %v\n%s", err, out)
	}
	m := map[string]hcAPIBackend{}
	for _, sv := range svcs {
		for _, b := range sv.Backends {
			m[sv.Name+"/"+b.Name] = b
		}
	}
	return m
}

// hcWaitAPI polls the API until cond holds of it and returns what it saw
// last. It polls every 50 ms, not WaitFor's 5: each poll is a curl process.
func hcWaitAPI(t *testing.T, s *setup, what string, cond func(map[string]hcAPIBackend) bool) map[string]hcAPIBackend {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		m := hcAPI(t, s)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; the API says %+v", what, m)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logLines counts rawlb's log lines that contain every one of parts.
func logLines(out string, parts ...string) int {
	n := 0
next:
	for _, l := range strings.Split(out, "\n") {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		n++
	}
	return n
}

// TestUnreachableBackendIsDown makes one of three backends unreachable
// through the balancer's interface while it still passes its health
// checks. The model: rawlb is told to use eth0 only (interfaces: [eth0]),
// and a more specific route sends the balancer's own traffic to the backend
// over a second link, direct0, a veth straight into the backend. The
// kernel's health-check connections follow that route and succeed; rawlb's
// frames could only leave through eth0, which the route no longer takes.
// That is what the issue reports: the backend answers, just not through
// the interface rawlb sends on. (No route at all, or an address whose ARP
// nobody answers, would also fail the kernel's checks, and the test would
// no longer tell "healthy but unreachable" from "down".)
func TestUnreachableBackendIsDown(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := webLab(t)
	s := launchConfig(t, lab, "interfaces: [eth0]\n"+servicesYAML(lab, svcSpec{name: "web", listen: lbPort, bePort: backendPort}))
	s.waitUp(t, 3)
	lb, x := lab.Balancer, lab.Backends[2]
	const name = "web3"
	unreachableLogged := func() int { return logLines(s.lb.Output(), "backend unreachable", " backend="+name+" ") }
	if n := unreachableLogged(); n != 0 {
		t.Fatalf("rawlb logged %s unreachable %d times before anything changed", name, n)
	}
	resolvedBefore := logLines(s.lb.Output(), "next hop resolved", " backend="+name+" ")

	cut := time.Now()
	bypassEth0(t, lb, x)

	netlab.WaitFor(t, 10*time.Second, name+" not usable", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "web", "backend", name) == 0
	})
	t.Logf("%s out of rotation %v after its route left eth0", name, time.Since(cut).Round(time.Millisecond))

	// It keeps passing its checks (so the checks alone would call it up)
	// for six more rounds, three seconds: three refreshes of the next hops,
	// each of which would have logged again if the line were per check.
	ok := func() float64 { return s.metric(t, "rawlb_healthcheck_total", "backend", name, "result", "ok") }
	okThen := ok()
	netlab.WaitFor(t, 15*time.Second, name+" passing six more checks", func() bool { return ok() >= okThen+6 })
	if up := s.metric(t, "rawlb_backend_up", "service", "web", "backend", name); up != 0 {
		t.Fatalf("rawlb_backend_up of %s = %v while its route leaves through direct0, want 0", name, up)
	}
	b := hcAPI(t, s)["web/"+name]
	if b.Usable || b.Health != "up" || !strings.Contains(b.Why, "direct0") || !strings.Contains(b.Why, "not among the configured interfaces") {
		t.Errorf("GET /api/services shows %s as %+v; want usable false, health up (its checks pass), and a why naming direct0 and the configured interfaces", name, b)
	}
	if n := unreachableLogged(); n != 1 {
		t.Errorf("rawlb logged %q for %s %d times over %v, want once", "backend unreachable", name, n, time.Since(cut).Round(time.Second))
	}
	for i := 0; i < 9; i++ {
		c, got := dialName(t, s, s.vip)
		if got == name {
			c.Close()
			t.Fatalf("new connection %d went to %s, which rawlb cannot send to", i+1, name)
		}
		if err := netlab.EchoRoundTrip(c, []byte(fmt.Sprintf("around %s %d", name, i))); err != nil {
			t.Fatalf("echo through %s: %v", got, err)
		}
		c.Close()
	}

	// Deleting the link deletes its routes: eth0 leads to the backend again.
	back := time.Now()
	lb.Run(t, "ip", "link", "del", "direct0")
	netlab.WaitFor(t, 10*time.Second, name+" usable again", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "web", "backend", name) == 1
	})
	t.Logf("%s back in rotation %v after eth0 led to it again", name, time.Since(back).Round(time.Millisecond))
	if b := hcAPI(t, s)["web/"+name]; !b.Usable || b.Why != "" {
		t.Errorf("GET /api/services shows %s as %+v once reachable, want usable and no why", name, b)
	}
	if logLines(s.lb.Output(), "next hop resolved", " backend="+name+" ") <= resolvedBefore {
		t.Errorf("rawlb did not log the next hop of %s resolved again", name)
	}
	seen := map[string]bool{}
	for i := 0; i < 6; i++ {
		c, got := dialName(t, s, s.vip)
		seen[got] = true
		if err := netlab.EchoRoundTrip(c, []byte("again")); err != nil {
			t.Fatalf("echo through %s: %v", got, err)
		}
		c.Close()
	}
	if !seen[name] {
		t.Errorf("%s is reachable again but took none of six new connections (they went to %v)", name, seen)
	}
	if n := unreachableLogged(); n != 1 {
		t.Errorf("rawlb logged %s unreachable %d times in all, want once", name, n)
	}
}

// bypassEth0 links the balancer lb straight to backend x with a veth pair,
// direct0 in lb and direct1 in x, and routes each to the other over it, so
// that the balancer's own traffic to x no longer leaves through eth0.
// `ip link del direct0` in lb undoes it: the routes go with the link.
func bypassEth0(t *testing.T, lb, x *netlab.Host) {
	t.Helper()
	lb.Run(t, "ip", "link", "add", "direct0", "type", "veth", "peer", "name", "direct1", "netns", x.Name)
	// No IPv6 link-local addresses: no DAD or router chatter on the link.
	for _, end := range []struct {
		h   *netlab.Host
		dev string
	}{{lb, "direct0"}, {x, "direct1"}} {
		end.h.Run(t, "ip", "link", "set", end.dev, "addrgenmode", "none")
		end.h.Run(t, "ip", "link", "set", end.dev, "up")
	}
	// The return route first, so that the checks' replies take the new
	// link too (a symmetric path: no reverse-path filter can drop them).
	x.Run(t, "ip", "route", "add", lb.IP.String()+"/32", "dev", "direct1")
	lb.Run(t, "ip", "route", "add", x.IP.String()+"/32", "dev", "direct0")
}

// TestUnreachableBackendIsDownAndFailing: a backend both unreachable and
// failing its checks is down for two reasons, and the one that outlasts
// the other is the one the API gives. Once eth0 leads to it again, its
// why still names the failing check (here "connection refused"), not a
// reason that no longer holds and not a why with the cause left out.
func TestUnreachableBackendIsDownAndFailing(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	var servers []*netlab.Backend
	for i, h := range lab.Backends {
		servers = append(servers, h.StartBackend(t, backendPort, fmt.Sprintf("web%d", i+1)))
	}
	s := launchConfig(t, lab, "interfaces: [eth0]\n"+servicesYAML(lab, svcSpec{name: "web", listen: lbPort, bePort: backendPort}))
	s.waitUp(t, 3)
	lb, x := lab.Balancer, lab.Backends[2]
	const name = "web3"
	fails := func() float64 { return s.metric(t, "rawlb_healthcheck_total", "backend", name, "result", "fail") }

	bypassEth0(t, lb, x)
	netlab.WaitFor(t, 10*time.Second, name+" not usable", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "web", "backend", name) == 0
	})
	servers[2].Stop()
	hcWaitAPI(t, s, name+" failing its checks", func(m map[string]hcAPIBackend) bool { return m["web/"+name].Health == "down" })
	// Two more failed checks: a second and more, so a refresh of the next
	// hops has run since the check's reason was stored.
	f := fails()
	netlab.WaitFor(t, 10*time.Second, name+" failing two more checks", func() bool { return fails() >= f+2 })
	if b := hcAPI(t, s)["web/"+name]; b.Usable || !strings.Contains(b.Why, "connection refused") {
		t.Errorf("%s unreachable and refusing its checks: %+v; want its why to name the failing check", name, b)
	}

	resolved := logLines(s.lb.Output(), "next hop resolved", " backend="+name+" ")
	lb.Run(t, "ip", "link", "del", "direct0")
	netlab.WaitFor(t, 10*time.Second, "the next hop of "+name+" resolved again", func() bool {
		return logLines(s.lb.Output(), "next hop resolved", " backend="+name+" ") > resolved
	})
	if b := hcAPI(t, s)["web/"+name]; b.Usable || b.Health != "down" || !strings.Contains(b.Why, "connection refused") {
		t.Errorf("%s reachable again but still refusing its checks: %+v; want usable false, health down, and a why naming the failing check", name, b)
	}

	servers[2].Start()
	netlab.WaitFor(t, 10*time.Second, name+" usable again", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "web", "backend", name) == 1
	})
	if b := hcAPI(t, s)["web/"+name]; !b.Usable || b.Why != "" {
		t.Errorf("%s reachable and passing its checks: %+v, want usable and no why", name, b)
	}
}

// TestDeadBackendFlowsAreReset: with on_backend_down: reset, the flows of
// a backend whose link went down get a RST, so that their clients learn
// at once and reconnect, rather than waiting for a TCP timeout.
func TestDeadBackendFlowsAreReset(t *testing.T) {
	t.Parallel()
	deadBackendFlows(t, "reset")
}

// TestDeadBackendFlowsAreKept: with on_backend_down: keep, rawlb leaves a
// dead backend's flows alone, and they work again when the backend does
// (a link that flaps for a few seconds loses nothing).
func TestDeadBackendFlowsAreKept(t *testing.T) {
	t.Parallel()
	deadBackendFlows(t, "keep")
}

// deadBackendFlows holds five connections on one backend and two on each
// other, takes the backend's link down in its own namespace (the server
// process lives on and never closes anything: only the wire is gone) and
// checks what onDown promises. The health check is servicesYAML's: every
// 500 ms, down after two failures.
func deadBackendFlows(t *testing.T, onDown string) {
	skipE2E(t)
	const interval, fall = 500 * time.Millisecond, 2
	lab := webLab(t)
	// on_backend_down is given, not left to the default: the file's
	// default (keep) differs from the command line's (reset).
	s := launchConfig(t, lab, servicesYAML(lab, svcSpec{name: "web", listen: lbPort, bePort: backendPort,
		extra: "    on_backend_down: " + onDown + "\n"}))
	s.waitUp(t, 3)
	x, name := lab.Backends[1], "web2"

	var onX, others []net.Conn
	defer func() {
		for _, c := range append(onX, others...) {
			c.Close()
		}
	}()
	perOther := map[string]int{}
	for i := 0; len(onX) < 5 || len(others) < 4; i++ {
		if i == 30 {
			t.Fatalf("30 connections gave %d on %s and %d elsewhere (%v), want 5 and 4", len(onX), name, len(others), perOther)
		}
		c, got := dialName(t, s, s.vip)
		switch {
		case got == name && len(onX) < 5:
			onX = append(onX, c)
		case got != name && perOther[got] < 2:
			perOther[got]++
			others = append(others, c)
		default:
			c.Close()
		}
	}
	flowsOnX := func() float64 { return s.metric(t, "rawlb_backend_flows", "service", "web", "backend", name) }
	netlab.WaitFor(t, 10*time.Second, "five live flows on "+name, func() bool { return flowsOnX() == 5 })

	// In reset mode each connection holds (HOLD: the server reads until
	// the client closes) and a reader waits for whatever ends it. In keep
	// mode they stay at the greeting, where the server still takes a
	// command: ECHO after the outage shows the very same flow carries data.
	type ended struct {
		i   int
		err error
		at  time.Time
	}
	results := make(chan ended, len(onX))
	if onDown == "reset" {
		for i, c := range onX {
			if _, err := io.WriteString(c, "HOLD\n"); err != nil {
				t.Fatal(err)
			}
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				var buf [64]byte
				n, err := c.Read(buf[:])
				if n > 0 {
					err = fmt.Errorf("read %q where nothing was due", buf[:n])
				}
				results <- ended{i, err, time.Now()}
			}()
		}
	}
	flowsReset := func() float64 { return s.metric(t, "rawlb_flows_reset_total") }
	resetsSent := func() float64 { return s.metric(t, "rawlb_resets_sent_total") }
	flowsResetBefore, resetsBefore := flowsReset(), resetsSent()

	linkDown := time.Now()
	x.Run(t, "ip", "link", "set", x.Iface, "down")
	netlab.WaitFor(t, 15*time.Second, name+" marked down", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "web", "backend", name) == 0
	})
	markedDown := s.logTime(t, "backend down", name, linkDown)
	t.Logf("%s marked down %v after its link went down (rawlb's clock)", name, markedDown.Sub(linkDown).Round(time.Millisecond))

	if onDown == "reset" {
		bound := interval*fall + 2*time.Second
		var last time.Time
		for range onX {
			var r ended
			select {
			case r = <-results:
			case <-time.After(30 * time.Second):
				t.Fatal("a held connection's reader never returned")
			}
			if !errors.Is(r.err, syscall.ECONNRESET) {
				t.Errorf("connection %d on %s ended with %v, want ECONNRESET (a RST from rawlb, not a timeout or a close)", r.i+1, name, r.err)
			}
			if r.at.After(last) {
				last = r.at
			}
		}
		took := last.Sub(linkDown)
		t.Logf("the last of the 5 connections on %s ended %v after its link went down (%v after rawlb marked it down)",
			name, took.Round(time.Millisecond), last.Sub(markedDown).Round(time.Millisecond))
		if took > bound {
			t.Errorf("the last connection on %s ended %v after its link went down, want reset within interval x fall + 2s = %v", name, took, bound)
		}
		if n := flowsReset() - flowsResetBefore; n != 5 {
			t.Errorf("rawlb_flows_reset_total grew by %v, want 5 (the flows on %s)", n, name)
		}
		if n := resetsSent() - resetsBefore; n < 10 {
			t.Errorf("rawlb_resets_sent_total grew by %v, want at least 10 (a RST to each end of 5 flows)", n)
		}
		netlab.WaitFor(t, 10*time.Second, "no flow left on "+name, func() bool { return flowsOnX() == 0 })
	} else {
		// A reset would come at the first sweep after the backend went
		// down (the reset twin measures it within a second of that); four
		// more failed checks take two seconds or more.
		fails := func() float64 { return s.metric(t, "rawlb_healthcheck_total", "backend", name, "result", "fail") }
		failsThen := fails()
		netlab.WaitFor(t, 15*time.Second, name+" failing four more checks", func() bool { return fails() >= failsThen+4 })
		if n := flowsReset() - flowsResetBefore; n != 0 {
			t.Errorf("with on_backend_down: keep, rawlb_flows_reset_total grew by %v, want 0", n)
		}
		if n := flowsOnX(); n != 5 {
			t.Errorf("with on_backend_down: keep, %s has %v live flows, want its 5", name, n)
		}
		for i, c := range onX {
			// Nothing may have arrived: a short read must time out.
			_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			var buf [64]byte
			n, err := c.Read(buf[:])
			if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("connection %d on the dead %s: read %q, %v; want nothing (a timeout): rawlb keeps its flows", i+1, name, buf[:n], err)
			}
		}
		up := time.Now()
		x.Run(t, "ip", "link", "set", x.Iface, "up")
		netlab.WaitFor(t, 15*time.Second, name+" up again", func() bool {
			return s.metric(t, "rawlb_backend_up", "service", "web", "backend", name) == 1
		})
		t.Logf("%s up again %v after its link came back", name, time.Since(up).Round(time.Millisecond))
		for i, c := range onX {
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if err := netlab.EchoRoundTrip(c, []byte(fmt.Sprintf("kept across the outage %d", i))); err != nil {
				t.Errorf("connection %d on %s after its link came back: %v", i+1, name, err)
			}
		}
	}

	for i, c := range others {
		if err := netlab.EchoRoundTrip(c, []byte(fmt.Sprintf("other %d", i))); err != nil {
			t.Errorf("connection %d to another backend, after %s died: %v", i+1, name, err)
		}
	}
	if onDown == "reset" {
		for i := 0; i < 4; i++ {
			c, got := dialName(t, s, s.vip)
			err := netlab.EchoRoundTrip(c, []byte("new"))
			c.Close()
			if got == name || err != nil {
				t.Fatalf("new connection %d: reached %s, echo %v; want another backend, working", i+1, got, err)
			}
		}
	}
}

// lineServer answers health checks of a tcp check with send and expect in
// h's namespace: it reads one line and writes reply ("" = never answers),
// then closes. first keeps the first line it read, to show that what rawlb
// sends arrives byte for byte.
type lineServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	first atomic.Pointer[string]
}

func startLineServer(t *testing.T, h *netlab.Host, port int, reply string) *lineServer {
	t.Helper()
	ln, err := h.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &lineServer{ln: ln}
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv.wg.Add(1)
			go func() {
				defer srv.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				srv.first.CompareAndSwap(nil, &line)
				if reply == "" {
					_, _ = io.Copy(io.Discard, c) // silent until the checker gives up
					return
				}
				_, _ = io.WriteString(c, reply)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); srv.wg.Wait() })
	return srv
}

// TestHealthCheckKinds runs the two check kinds against real servers: tcp
// with send and expect (an answer with the string is up, a wrong answer or
// none is down), and http with path, status and Host (200 is up, 503 is
// down, and a change of status alone moves a backend either way). States
// are read from the metrics and from the API, whose why quotes the check.
func TestHealthCheckKinds(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	const tcpPort, httpPort = 8090, 8091
	lab := netlab.New(t, netlab.Options{Backends: 3})

	replies := []string{"+PONG\r\n", "-ERR unknown command\r\n", ""}
	var lines []*lineServer
	for i, h := range lab.Backends {
		lines = append(lines, startLineServer(t, h, tcpPort, replies[i]))
	}

	// The http backends: /healthz answers with the backend's status, for
	// the configured Host only (another gets 421, Misdirected Request, so
	// up proves the Host header); /whoami names the backend, for traffic.
	statuses := make([]atomic.Int32, len(lab.Backends))
	for i, h := range lab.Backends {
		statuses[i].Store(http.StatusOK)
		if i == 1 {
			statuses[i].Store(http.StatusServiceUnavailable)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			if r.Host != "health.test" {
				w.WriteHeader(http.StatusMisdirectedRequest)
				return
			}
			w.WriteHeader(int(statuses[i].Load()))
		})
		mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "http%d", i+1) })
		ln, err := h.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", httpPort))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close() })
	}

	var b strings.Builder
	b.WriteString("services:\n")
	fmt.Fprintf(&b, "  - name: tcpchk\n    listen: %d\n"+
		"    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2, send: \"PING\\r\\n\", expect: \"+PONG\"}\n"+
		"    backends:\n", lbPort)
	for i, h := range lab.Backends {
		fmt.Fprintf(&b, "      - {name: tcp%d, address: \"%s:%d\"}\n", i+1, h.IP, tcpPort)
	}
	fmt.Fprintf(&b, "  - name: httpchk\n    listen: %d\n"+
		"    health: {kind: http, interval: 500ms, timeout: 400ms, rise: 1, fall: 2, path: /healthz, status: 200, host: health.test}\n"+
		"    backends:\n", lbPort+1)
	for i, h := range lab.Backends {
		fmt.Fprintf(&b, "      - {name: http%d, address: \"%s:%d\"}\n", i+1, h.IP, httpPort)
	}
	s := launchConfig(t, lab, b.String())

	api := hcWaitAPI(t, s, "every check decided", func(m map[string]hcAPIBackend) bool {
		for k, want := range map[string]string{
			"tcpchk/tcp1": "up", "tcpchk/tcp2": "down", "tcpchk/tcp3": "down",
			"httpchk/http1": "up", "httpchk/http2": "down", "httpchk/http3": "up",
		} {
			if m[k].Health != want {
				return false
			}
		}
		return true
	})
	for _, c := range []struct {
		key    string
		usable bool
		why    []string // substrings of the API's why
	}{
		{"tcpchk/tcp1", true, nil},
		{"tcpchk/tcp2", false, []string{`expect "+PONG"`, `-ERR unknown command`}},
		{"tcpchk/tcp3", false, []string{"expect", "timeout"}},
		{"httpchk/http1", true, nil},
		{"httpchk/http2", false, []string{"GET /healthz: status 503, want 200"}},
		{"httpchk/http3", true, nil},
	} {
		got := api[c.key]
		svc, be, _ := strings.Cut(c.key, "/")
		up := 0.0
		if c.usable {
			up = 1
		}
		if m := s.metric(t, "rawlb_backend_up", "service", svc, "backend", be); m != up {
			t.Errorf("rawlb_backend_up of %s = %v, want %v", c.key, m, up)
		}
		if got.Usable != c.usable {
			t.Errorf("%s: usable %v, want %v (%+v)", c.key, got.Usable, c.usable, got)
		}
		for _, w := range c.why {
			if !strings.Contains(got.Why, w) {
				t.Errorf("%s: why %q, want it to say %q", c.key, got.Why, w)
			}
		}
		if c.usable && got.Why != "" {
			t.Errorf("%s is usable but the API says why not: %q", c.key, got.Why)
		}
	}
	for i, l := range lines {
		if p := l.first.Load(); p == nil || *p != "PING\r\n" {
			t.Errorf("backend %d's tcp server first read %v, want the check's send, \"PING\\r\\n\"", i+1, p)
		}
	}

	// Traffic follows the checks: the tcp service's only usable backend
	// answers PING with +PONG; the http service's are http1 and http3.
	for i := 0; i < 3; i++ {
		c := hcDial(t, s, lbPort)
		_, _ = io.WriteString(c, "PING\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if line != "+PONG\r\n" {
			t.Fatalf("PING through the tcp service: %q, %v; want +PONG from tcp1, the only backend up", line, err)
		}
	}
	if got := hcWhoami(t, s, 4); got["http2"] != 0 || got["http1"] != 2 || got["http3"] != 2 {
		t.Errorf("four requests through the http service reached %v, want two each on http1 and http3", got)
	}

	// The status alone moves a backend: http2 now answers 200, http3 503.
	statuses[1].Store(http.StatusOK)
	statuses[2].Store(http.StatusServiceUnavailable)
	netlab.WaitFor(t, 10*time.Second, "http2 up and http3 down", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "httpchk", "backend", "http2") == 1 &&
			s.metric(t, "rawlb_backend_up", "service", "httpchk", "backend", "http3") == 0
	})
	api = hcWaitAPI(t, s, "http3 down in the API", func(m map[string]hcAPIBackend) bool { return m["httpchk/http3"].Health == "down" })
	if b := api["httpchk/http3"]; b.Usable || !strings.Contains(b.Why, "status 503, want 200") {
		t.Errorf("http3 after its status became 503: %+v", b)
	}
	if b := api["httpchk/http2"]; !b.Usable || b.Why != "" {
		t.Errorf("http2 after its status became 200: %+v", b)
	}
	if got := hcWhoami(t, s, 4); got["http3"] != 0 || got["http1"] != 2 || got["http2"] != 2 {
		t.Errorf("four requests through the http service reached %v, want two each on http1 and http2", got)
	}
}

// hcDial connects from the client host to the balancer's port.
func hcDial(t *testing.T, s *setup, port int) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.lab.Client.Dial(ctx, "tcp", fmt.Sprintf("%s:%d", s.lab.Balancer.IP, port))
	if err != nil {
		t.Fatalf("connect to port %d: %v\nrawlb output:\n%s", port, err, s.lb.Output())
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// hcWhoami sends n GET /whoami through the http service, one connection
// each, and counts the backends that answered.
func hcWhoami(t *testing.T, s *setup, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		c := hcDial(t, s, lbPort+1)
		_, _ = io.WriteString(c, "GET /whoami HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			c.Close()
			t.Fatalf("GET /whoami through the http service: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /whoami through the http service: %s %q %v", resp.Status, body, err)
		}
		got[string(body)]++
	}
	return got
}
