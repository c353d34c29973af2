package rawlb_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// One machine and two network arms: the setups docs/one-machine.md
// describes, each as a user would run it.
//
//   - TestOneHostLoopback: client, rawlb and backends all on 127.0.0.1.
//   - TestOneHostAddress, TestOneHostLoopbackBackends: rawlb on the host's
//     own address with backends on the host (on that address, or on
//     127.0.0.1), clients remote and local at once.
//   - TestTwoArms: clients on one segment, backends on another, the
//     balancer on both.
//
// Every frame rawlb sends to something on its own host goes into lo, and
// the kernel routes such a frame as if it came off a wire: without lo's
// accept_local and route_localnet (firewall/loopback.go) it is dropped as
// a martian, silently, and these tests hang in connect.

// launchOn starts `rawlb [flags] addr backends...` on host h with the
// usual test flags (metrics on 127.0.0.1:9120 of h's namespace, fast
// health checks, the test's own state directory) and waits until want
// backends are up with their next hops resolved. The setup's lab has h as
// its balancer and its client, so s.metric scrapes h's namespace and
// s.dial connects from h.
func launchOn(t *testing.T, h *netlab.Host, addr string, backends []string, want int, flags ...string) *setup {
	t.Helper()
	skipE2E(t)
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	s := &setup{lab: &netlab.Lab{Client: h, Balancer: h}, vip: fmt.Sprintf("%s:%d", addr, lbPort), stateDir: t.TempDir()}
	args := []string{"-metrics", metricsAddr, "-hc-interval", "500ms", "-hc-timeout", "400ms", "-state-dir", s.stateDir}
	args = append(args, flags...)
	args = append(args, addr)
	args = append(args, backends...)
	s.args = args
	s.lb = h.StartProcess(t, bin, args...)
	if err := s.lb.WaitForOutput("rawlb started", 20*time.Second); err != nil {
		t.Fatalf("rawlb did not start: %v\n%s", err, s.lb.Output())
	}
	s.waitResolved(t, want)
	return s
}

// waitResolved waits until want backends are up and have a next hop.
func (s *setup) waitResolved(t *testing.T, want int) {
	t.Helper()
	netlab.WaitFor(t, 10*time.Second, fmt.Sprintf("%d backends usable", want), func() bool {
		return int(s.metric(t, "rawlb_backend_up")) == want && strings.Count(s.lb.Output(), "next hop resolved") >= want
	})
}

// dialFrom connects from host h to addr and reads the backend's greeting.
func dialFrom(t *testing.T, h *netlab.Host, addr string) (net.Conn, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("connect from %s to %s: %w", h.Name, addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	name, err := netlab.Hello(c)
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("greeting from %s, connected from %s: %w", addr, h.Name, err)
	}
	return c, name, nil
}

// kernelWatch watches one namespace's TCP stack for answers to rawlb's
// traffic. Nothing listens on the service port or the NAT ports, so the
// stack, which gets its own copy of every frame rawlb reads, would answer
// each with a RST (tcp_v4_send_reset) unless the firewall's prerouting
// drops keep the frames from it. An nftables counter in a table of the
// test's own counts the RSTs the stack sends from those ports, in an
// output chain at priority -350, before rawlb's own output chain (priority
// filter) drops them as a safety net. RSTs rawlb sends itself leave
// through its AF_PACKET socket and pass no netfilter hook.
//
// Tcp.OutRsts would not do: it also counts the RSTs of sockets that close
// with unread data, as a health check does when the backend's greeting
// arrives before its close, and then the backend's answer to that RST.
type kernelWatch struct {
	h *netlab.Host
	// resets and csumErrors are the counts when watching began.
	resets, csumErrors int64
}

// watchKernel starts counting in h's namespace. The ports counted are the
// service port, the port checkQuiet's probe uses, and the default NAT
// ports.
func watchKernel(t *testing.T, h *netlab.Host) *kernelWatch {
	t.Helper()
	rules := filepath.Join(t.TempDir(), "rsts.nft")
	ruleset := fmt.Sprintf(`table ip rlbtest {
	counter rsts {
	}
	chain out {
		type filter hook output priority -350; policy accept;
		tcp flags & rst == rst tcp sport { %d-%d, 40000-59999 } counter name "rsts"
	}
}
`, lbPort, lbPort+1)
	if err := os.WriteFile(rules, []byte(ruleset), 0o644); err != nil {
		t.Fatal(err)
	}
	h.Run(t, "nft", "-f", rules)
	w := &kernelWatch{h: h}
	w.resets, w.csumErrors = w.read(t)
	return w
}

// read returns the RSTs counted and the segments the stack received with
// a bad checksum (Tcp.InCsumErrors: a partial checksum passed on as
// complete, or a rewrite that broke one, shows there).
func (w *kernelWatch) read(t *testing.T) (resets, csumErrors int64) {
	t.Helper()
	var out struct {
		Nftables []struct {
			Counter *struct{ Packets int64 }
		}
	}
	if err := json.Unmarshal([]byte(w.h.Run(t, "nft", "-j", "list", "counter", "ip", "rlbtest", "rsts")), &out); err != nil {
		t.Fatalf("reading the RST counter: %v", err)
	}
	resets = -1
	for _, o := range out.Nftables {
		if o.Counter != nil {
			resets = o.Counter.Packets
		}
	}
	if resets < 0 {
		t.Fatal("nft listed no counter rsts")
	}
	return resets, w.h.Snmp(t)["Tcp.InCsumErrors"]
}

// checkQuiet fails t if the stack sent a RST from rawlb's ports or saw a
// bad checksum since watching began; then it proves the counter can move,
// by connecting to addr on a port nobody serves and seeing exactly the one
// RST the stack answers with.
func (w *kernelWatch) checkQuiet(t *testing.T, addr netip.Addr) {
	t.Helper()
	resets, csumErrors := w.read(t)
	if n := resets - w.resets; n != 0 {
		t.Errorf("%s's TCP stack sent %d RSTs from rawlb's ports: it answered traffic that was rawlb's", w.h.Name, n)
	}
	if n := csumErrors - w.csumErrors; n != 0 {
		t.Errorf("%s's TCP stack received %d segments with a bad checksum", w.h.Name, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := w.h.Dial(ctx, "tcp", netip.AddrPortFrom(addr, lbPort+1).String()); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("connect to a port nobody serves: %v, want connection refused", err)
	}
	if again, _ := w.read(t); again-resets != 1 {
		t.Errorf("a connect to a closed port moved the RST counter by %d, want 1: the check above cannot see the stack's RSTs", again-resets)
	}
}

// randomBytes returns n reproducible bytes.
func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	rnd := rand.NewChaCha8([32]byte{seed})
	_, _ = rnd.Read(b)
	return b
}

// getPut downloads and uploads n bytes through the balancer at addr,
// checking both by SHA-256: one connection for each, from h.
func getPut(t *testing.T, h *netlab.Host, addr string, n int64) {
	t.Helper()
	c, name, err := dialFrom(t, h, addr)
	if err != nil {
		t.Fatal(err)
	}
	sum, got, err := netlab.Get(c, n)
	c.Close()
	if err != nil || sum != netlab.ExpectedGET(n) {
		t.Fatalf("GET %d bytes from %s: %d arrived, %v; SHA-256 as sent: %v", n, name, got, err, sum == netlab.ExpectedGET(n))
	}
	if c, name, err = dialFrom(t, h, addr); err != nil {
		t.Fatal(err)
	}
	hs := sha256.New()
	hexsum, err := netlab.Put(c, io.TeeReader(netlab.GETStream(n), hs), n)
	c.Close()
	if want := hex.EncodeToString(hs.Sum(nil)); err != nil || hexsum != want {
		t.Fatalf("PUT %d bytes to %s: %v; the backend's SHA-256 %s, want %s", n, name, err, hexsum, want)
	}
}

// TestOneHostLoopback runs a one-machine setup entirely on loopback, in a
// namespace of its own with nothing but lo: three backends on
// 127.0.0.1:8090-8092, `rawlb 127.0.0.1 127.0.0.1:8090 127.0.0.1:8091
// 127.0.0.1:8092`, and clients on the same host connecting to
// 127.0.0.1:20000.
//
// Segments on lo are up to 64 KB (lo's MTU is 65536) with the checksum
// left partial (CHECKSUM_PARTIAL: lo offers checksum offload), some of
// them GSO: the test moves 1 MiB each way per connection and checks every
// byte, that frames larger than a ring slot went through, and that the
// kernel saw no bad checksum.
//
// Two workers, so the sockets form a fanout group: every frame on lo
// passes the taps twice, once outgoing and once incoming, and the group
// must ignore the outgoing copy as each socket alone does.
func TestOneHostLoopback(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	h := netlab.Loopback(t)
	var backends []string
	for i := range 3 {
		h.StartBackend(t, backendPort+i, fmt.Sprintf("backend-%d", i+1))
		backends = append(backends, fmt.Sprintf("127.0.0.1:%d", backendPort+i))
	}
	kernel := watchKernel(t, h)
	s := launchOn(t, h, "127.0.0.1", backends, 3, "-workers", "2")
	large, gso := s.metric(t, "rawlb_large_frames_total"), s.metric(t, "rawlb_gso_frames_total")
	outgoing := s.metric(t, "rawlb_drops_total", "reason", "not_host")
	lo := h.LinkStats(t, "lo")

	const size = 1 << 20
	data := randomBytes(size, 'l')
	start := time.Now()
	count := map[string]int{}
	for i := range 9 {
		c, name, err := dialFrom(t, h, s.vip)
		if err != nil {
			t.Fatalf("%v\nrawlb output:\n%s", err, s.lb.Output())
		}
		count[name]++
		if err := netlab.EchoRoundTrip(c, data); err != nil {
			t.Fatalf("connection %d, to %s: 1 MiB echoed over lo: %v", i, name, err)
		}
		c.Close()
	}
	elapsed := time.Since(start)
	for i := 1; i <= 3; i++ {
		if n := count[fmt.Sprintf("backend-%d", i)]; n != 3 {
			t.Errorf("backend-%d got %d of 9 connections, want 3 (all: %v)", i, n, count)
		}
	}
	getPut(t, h, s.vip, size)

	if n := s.metric(t, "rawlb_large_frames_total") - large; n == 0 {
		t.Error("no frame larger than a ring slot went through: lo's 64 KB segments were not exercised")
	}
	if n := s.metric(t, "rawlb_drops_total", "reason", "not_host") - outgoing; n != 0 {
		t.Errorf("%v frames reached the workers as outgoing copies (dropped as not_host): the fanout group does not ignore outgoing frames", n)
	}
	after := h.LinkStats(t, "lo")
	t.Logf("9 × 1 MiB echoed through rawlb on lo in %v (%.0f MB/s each way); then 1 MiB down and up; lo carried %d frames, %d bytes; frames larger than a slot %v, GSO %v",
		elapsed.Round(time.Millisecond), 9*size/elapsed.Seconds()/1e6, after.TxPackets-lo.TxPackets, after.TxBytes-lo.TxBytes,
		s.metric(t, "rawlb_large_frames_total")-large, s.metric(t, "rawlb_gso_frames_total")-gso)
	kernel.checkQuiet(t, h.IP)
}

// TestOneHostAddress is rawlb on the host's own address with its backends
// on that address too, `rawlb 198.18.0.2 198.18.0.2:8090 198.18.0.2:8091
// 198.18.0.2:8092`: the route to each backend is the host's local route,
// over lo. A remote client and a client on the balancer host itself use
// the service at once.
func TestOneHostAddress(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	testOwnHost(t, func(lab *netlab.Lab) netip.Addr { return lab.Balancer.IP })
}

// TestOneHostLoopbackBackends is TestOneHostAddress with the backends on
// 127.0.0.1, where a server meant only for the host itself listens:
// `rawlb 198.18.0.2 127.0.0.1:8090 127.0.0.1:8091 127.0.0.1:8092`.
func TestOneHostLoopbackBackends(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	testOwnHost(t, func(*netlab.Lab) netip.Addr { return netip.MustParseAddr("127.0.0.1") })
}

// testOwnHost runs three backends on the balancer host at backendAddr's
// address, ports 8090-8092, and rawlb on the balancer's address in front
// of them; it checks round robin for a remote client, then three remote
// and three local connections open at once.
func testOwnHost(t *testing.T, backendAddr func(*netlab.Lab) netip.Addr) {
	lab := netlab.New(t, netlab.Options{})
	lb := lab.Balancer
	var backends []string
	var servers []*netlab.Backend
	for i := range 3 {
		servers = append(servers, lb.StartBackend(t, backendPort+i, fmt.Sprintf("backend-%d", i+1)))
		backends = append(backends, netip.AddrPortFrom(backendAddr(lab), uint16(backendPort+i)).String())
	}
	kernel := watchKernel(t, lb)
	s := launchOn(t, lb, lb.IP.String(), backends, 3)
	for _, l := range strings.Split(s.lb.Output(), "\n") {
		if strings.Contains(l, "next hop resolved") && !strings.Contains(l, "ifindex=1 ") {
			t.Errorf("a backend on the host itself is not reached over lo (ifindex 1): %s", l)
		}
	}

	t.Run("remote", func(t *testing.T) {
		data := randomBytes(256<<10, 'r')
		count := map[string]int{}
		for i := range 9 {
			c, name, err := dialFrom(t, lab.Client, s.vip)
			if err != nil {
				t.Fatalf("%v\nrawlb output:\n%s", err, s.lb.Output())
			}
			count[name]++
			if err := netlab.EchoRoundTrip(c, data); err != nil {
				t.Fatalf("connection %d, to %s: %v", i, name, err)
			}
			c.Close()
		}
		for i := 1; i <= 3; i++ {
			if n := count[fmt.Sprintf("backend-%d", i)]; n != 3 {
				t.Errorf("backend-%d got %d of 9 connections, want 3 (all: %v)", i, n, count)
			}
		}
		getPut(t, lab.Client, s.vip, 1<<20)
	})

	// Six connections open at once, three from the client and three from
	// the balancer host itself (whose traffic to its own address goes
	// over lo), then data over all six concurrently.
	t.Run("local and remote", func(t *testing.T) {
		type conn struct {
			from    string
			c       net.Conn
			backend string
		}
		var conns []conn
		defer func() {
			for _, c := range conns {
				c.c.Close()
			}
		}()
		for _, h := range []*netlab.Host{lab.Client, lb, lab.Client, lb, lab.Client, lb} {
			c, name, err := dialFrom(t, h, s.vip)
			if err != nil {
				t.Fatalf("%v\nrawlb output:\n%s", err, s.lb.Output())
			}
			from := "remote"
			if h == lb {
				from = "local"
			}
			conns = append(conns, conn{from, c, name})
		}
		// All six are open together at the backends (a health check's
		// connection may add one for a moment).
		netlab.WaitFor(t, 10*time.Second, "six connections open at the backends", func() bool {
			n := 0
			for _, b := range servers {
				n += b.Active()
			}
			return n == 6
		})
		var wg sync.WaitGroup
		errs := make([]error, len(conns))
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := netlab.EchoRoundTrip(c.c, randomBytes(512<<10, byte(i))); err != nil {
					errs[i] = fmt.Errorf("%s connection %d, to %s: %w", c.from, i, c.backend, err)
				}
			}()
		}
		wg.Wait()
		seen := map[string]bool{}
		for i, err := range errs {
			if err != nil {
				t.Error(err)
			}
			seen[conns[i].backend] = true
		}
		if len(seen) != 3 {
			t.Errorf("six connections reached %v, want all three backends", seen)
		}
	})
	kernel.checkQuiet(t, lb.IP)
}

// peerServer is a server that greets each connection with its name and
// the address the connection came from, "be1 198.18.1.2:40001", to show
// what source a backend sees; then it serves the lab protocol's ECHO, GET
// and PUT as netlab's backends do.
type peerServer struct {
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startPeerServer(t *testing.T, h *netlab.Host, port int, name string) {
	t.Helper()
	ln, err := h.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	p := &peerServer{conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns[c] = true
			p.wg.Add(1)
			p.mu.Unlock()
			go p.serve(c, name)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
}

func (p *peerServer) serve(c net.Conn, name string) {
	defer p.wg.Done()
	defer c.Close()
	fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	verb, arg, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	n, _ := strconv.ParseInt(arg, 10, 64)
	switch verb {
	case "ECHO":
		_, _ = io.Copy(c, br)
	case "GET":
		_, _ = io.Copy(c, netlab.GETStream(n))
	case "PUT":
		h := sha256.New()
		if _, err := io.CopyN(h, br, n); err == nil {
			fmt.Fprintf(c, "%x\n", h.Sum(nil))
		}
	}
}

// TestTwoArms is a balancer between two networks, like a Raspberry Pi
// with wlan0 on the LAN and eth0 on a server switch: clients on
// 198.18.0.0/24, backends on 198.18.1.0/24, the balancer on both (eth0
// 198.18.0.2, eth1 198.18.1.2), nothing routed between them. Each frame
// must leave where the route to its destination leads, which the
// balancer's per-interface counters show: data to the backends leaves by
// eth1 only, data to the clients by eth0 only.
//
// What NAT source the backends should see: the balancer's address on their
// own network, so that they answer it without a route to the clients'
// network, as on any server switch. The command line's single srcIP is
// both the service address and the NAT source, so it cannot say that; a
// configuration file can (address: is the NAT source, a service's listen:
// its own address). The command line works when the backends route the
// clients' network through the balancer, as a router box's servers do.
func TestTwoArms(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	t.Run("config file", func(t *testing.T) {
		t.Parallel()
		lab := netlab.New(t, netlab.Options{Backends: 3, TwoArms: true})
		kernel := watchKernel(t, lab.Balancer)
		var b strings.Builder
		fmt.Fprintf(&b, "services:\n  - name: web\n    listen: %s:%d\n    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n    backends:\n", lab.Balancer.IP, lbPort)
		for i, h := range lab.Backends {
			startPeerServer(t, h, backendPort, fmt.Sprintf("be%d", i+1))
			fmt.Fprintf(&b, "      - {name: be%d, address: \"%s:%d\"}\n", i+1, h.IP, backendPort)
		}
		// launchConfig writes the balancer's address as address:, the NAT
		// source: here the balancer's address on the backends' network.
		s := launchConfig(t, &netlab.Lab{Client: lab.Client, Balancer: lab.BackendArm, Backends: lab.Backends}, b.String())
		s.vip = fmt.Sprintf("%s:%d", lab.Balancer.IP, lbPort)
		s.waitResolved(t, 3)
		testTwoArms(t, lab, kernel, s, lab.BackendArm.IP)
	})
	t.Run("command line", func(t *testing.T) {
		t.Parallel()
		lab := netlab.New(t, netlab.Options{Backends: 3, TwoArms: true})
		kernel := watchKernel(t, lab.Balancer)
		var backends []string
		for i, h := range lab.Backends {
			startPeerServer(t, h, backendPort, fmt.Sprintf("be%d", i+1))
			backends = append(backends, fmt.Sprintf("%s:%d", h.IP, backendPort))
			// The route back to the NAT source, 198.18.0.2, on the
			// clients' network: through the balancer.
			h.Run(t, "ip", "route", "add", netlab.Subnet.String(), "via", lab.BackendArm.IP.String())
		}
		s := launchWith(t, lab, backends)
		testTwoArms(t, lab, kernel, s, lab.Balancer.IP)
	})
}

// testTwoArms checks a two-arm balancer: every backend reached, each
// seeing natSrc as the source, and each direction's data leaving by its
// own interface.
func testTwoArms(t *testing.T, lab *netlab.Lab, kernel *kernelWatch, s *setup, natSrc netip.Addr) {
	lb, eth0, eth1 := lab.Balancer, lab.Balancer.Iface, lab.BackendArm.Iface
	for _, l := range strings.Split(s.lb.Output(), "\n") {
		if strings.Contains(l, "next hop resolved") && !strings.Contains(l, "next_hop=198.18.1.") {
			t.Errorf("a backend's next hop is not on the backends' network: %s", l)
		}
	}
	seen := map[string]bool{}
	for range 3 {
		c, greeting, err := dialFrom(t, lab.Client, s.vip)
		if err != nil {
			t.Fatalf("%v\nrawlb output:\n%s", err, s.lb.Output())
		}
		name, peer, _ := strings.Cut(greeting, " ")
		seen[name] = true
		if ap, err := netip.ParseAddrPort(peer); err != nil || ap.Addr() != natSrc {
			t.Errorf("%s sees the connection from %q, want %v", name, peer, natSrc)
		}
		c.Close()
	}
	if len(seen) != 3 {
		t.Errorf("three connections reached %v, want each backend once", seen)
	}

	// One direction at a time: 2 MiB up to a backend must leave by eth1,
	// with eth0 carrying only the ACKs going back to the client; 2 MiB
	// down, the reverse.
	const size = 2 << 20
	for _, dir := range []struct {
		name      string
		out, back string
		up        bool
	}{{"up to a backend", eth1, eth0, true}, {"down to the client", eth0, eth1, false}} {
		c, name, err := dialFrom(t, lab.Client, s.vip)
		if err != nil {
			t.Fatal(err)
		}
		out0, back0 := lb.LinkStats(t, dir.out), lb.LinkStats(t, dir.back)
		if dir.up {
			hs := sha256.New()
			got, err := netlab.Put(c, io.TeeReader(netlab.GETStream(size), hs), size)
			if want := hex.EncodeToString(hs.Sum(nil)); err != nil || got != want {
				t.Fatalf("PUT %d bytes to %s: %v; SHA-256 %s, want %s", size, name, err, got, want)
			}
		} else if sum, got, err := netlab.Get(c, size); err != nil || sum != netlab.ExpectedGET(size) {
			t.Fatalf("GET %d bytes from %s: %d arrived, %v", size, name, got, err)
		}
		c.Close()
		out, back := lb.LinkStats(t, dir.out).TxBytes-out0.TxBytes, lb.LinkStats(t, dir.back).TxBytes-back0.TxBytes
		t.Logf("%d bytes %s: the balancer sent %d bytes by %s, %d by %s", size, dir.name, out, dir.out, back, dir.back)
		if out < size {
			t.Errorf("%d bytes %s, but only %d bytes left by %s", size, dir.name, out, dir.out)
		}
		// An ACK is 66 bytes for every segment or two of 1,448; health
		// checks and ARP add a little.
		if back > size/8 {
			t.Errorf("%d bytes %s, and %d bytes left by %s too: data went out the wrong arm", size, dir.name, back, dir.back)
		}
	}
	kernel.checkQuiet(t, lab.Balancer.IP)
}
