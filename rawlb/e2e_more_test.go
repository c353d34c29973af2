package rawlb_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/packet"
)

// hold opens a connection that stays open until closed.
func (s *setup) hold(t *testing.T) (net.Conn, string) {
	t.Helper()
	c, name := s.dial(t)
	if _, err := io.WriteString(c, "HOLD\n"); err != nil {
		t.Fatal(err)
	}
	return c, name
}

// backendFlows waits until rawlb's live-flow gauge for every backend
// matches want.
func (s *setup) waitBackendFlows(t *testing.T, want map[string]int) {
	t.Helper()
	netlab.WaitFor(t, 15*time.Second, fmt.Sprintf("live flows per backend %v", want), func() bool {
		for i, h := range s.lab.Backends {
			be := fmt.Sprintf("%s:%d", h.IP, backendPort)
			if int(s.metric(t, "rawlb_backend_flows", "backend", be)) != want[fmt.Sprintf("backend-%d", i+1)] {
				return false
			}
		}
		return true
	})
}

func TestLeastConnections(t *testing.T) {
	t.Parallel()
	s := start(t, "-algo", "lc")
	conns := map[string][]net.Conn{}
	defer func() {
		for _, cs := range conns {
			for _, c := range cs {
				c.Close()
			}
		}
	}()
	// Three long-lived connections spread one per backend.
	for i := 0; i < 3; i++ {
		c, name := s.hold(t)
		conns[name] = append(conns[name], c)
	}
	if len(conns) != 3 {
		t.Fatalf("three connections on equal backends went to %d backends", len(conns))
	}
	s.waitBackendFlows(t, map[string]int{"backend-1": 1, "backend-2": 1, "backend-3": 1})
	// Load backend-1 and backend-3 with one more each by closing
	// backend-2's: every new connection must go to the least loaded.
	conns["backend-2"][0].Close()
	conns["backend-2"] = nil
	s.waitBackendFlows(t, map[string]int{"backend-1": 1, "backend-2": 0, "backend-3": 1})
	c, name := s.hold(t)
	conns[name] = append(conns[name], c)
	if name != "backend-2" {
		t.Fatalf("with live flows 1/0/1 a new connection went to %s, want backend-2", name)
	}
	s.waitBackendFlows(t, map[string]int{"backend-1": 1, "backend-2": 1, "backend-3": 1})
	for _, cc := range conns["backend-1"] {
		cc.Close()
	}
	conns["backend-1"] = nil
	s.waitBackendFlows(t, map[string]int{"backend-1": 0, "backend-2": 1, "backend-3": 1})
	for i := 0; i < 4; i++ {
		// Each lands on a least-loaded backend: the first on backend-1
		// (0/1/1), then the loads climb evenly to 2/2/2.
		c, name := s.hold(t)
		conns[name] = append(conns[name], c)
		if i == 0 && name != "backend-1" {
			t.Fatalf("with live flows 0/1/1 a new connection went to %s, want backend-1", name)
		}
		s.waitBackendFlows(t, map[string]int{"backend-1": len(conns["backend-1"]), "backend-2": len(conns["backend-2"]), "backend-3": len(conns["backend-3"])})
	}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("backend-%d", i)
		if n := len(conns[name]); n != 2 {
			t.Errorf("%s holds %d connections, want 2 after six least-connections picks", name, n)
		}
	}
}

// TestLargeTransfers moves 64 MiB each way through rawlb's engine, GSO
// super-segments included. The fast path is off: it takes a flow once
// established, and the engine would see none of the transfer
// (TestFastpathTransfers is the same with it on).
func TestLargeTransfers(t *testing.T) {
	t.Parallel()
	s := start(t, "-fastpath", "off")
	const size = 64 << 20
	t.Run("download", func(t *testing.T) {
		c, name := s.dial(t)
		defer c.Close()
		sum, got, err := netlab.Get(c, size)
		if err != nil || got != size {
			t.Fatalf("GET %d bytes from %s: got %d, %v", size, name, got, err)
		}
		if sum != netlab.ExpectedGET(size) {
			t.Fatalf("64 MiB from %s arrived with a different SHA-256", name)
		}
	})
	t.Run("upload", func(t *testing.T) {
		c, name := s.dial(t)
		defer c.Close()
		data := netlab.GETStream(size) // any reproducible stream will do
		h := sha256.New()
		got, err := netlab.Put(c, io.TeeReader(data, h), size)
		if err != nil {
			t.Fatalf("PUT to %s: %v", name, err)
		}
		if want := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Fatalf("64 MiB reached %s with SHA-256 %s, want %s", name, got, want)
		}
	})
	if n := s.metric(t, "rawlb_gso_frames_total"); n == 0 {
		t.Error("no frame went through as a GSO segment: the large-segment path was not exercised")
	}
}

func TestConcurrentEcho(t *testing.T) {
	// Two workers, named rather than left to the default (one per CPU),
	// so that the flows are spread over workers on a one-CPU machine too:
	// each worker must see both directions of its own flows.
	t.Parallel()
	s := start(t, "-workers", "2")
	const conns, size = 200, 1 << 20
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	perBackend := make(chan string, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := s.lab.Client.Dial(ctx, "tcp", s.vip)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(120 * time.Second))
			name, err := netlab.Hello(c)
			if err != nil {
				errs <- err
				return
			}
			perBackend <- name
			data := make([]byte, size)
			_, _ = rand.Read(data)
			if err := netlab.EchoRoundTrip(c, data); err != nil {
				errs <- fmt.Errorf("echo via %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(perBackend)
	for err := range errs {
		t.Error(err)
	}
	count := map[string]int{}
	for n := range perBackend {
		count[n]++
	}
	// Round robin deals 66 or 67 to each; by name, so that a backend that
	// got none is caught too.
	for i := 1; i <= 3; i++ {
		if n := count[fmt.Sprintf("backend-%d", i)]; n < 60 {
			t.Errorf("200 connections spread unevenly: backend-%d got %d (all: %v)", i, n, count)
		}
	}
}

func TestHealthChecks(t *testing.T) {
	const interval, fall, rise = 500 * time.Millisecond, 3, 2
	t.Parallel()
	s := start(t, "-hc-interval", interval.String(), "-hc-fall", strconv.Itoa(fall), "-hc-rise", strconv.Itoa(rise))
	be2 := fmt.Sprintf("%s:%d", s.lab.Backends[1].IP, backendPort)
	fails := func() float64 { return s.metric(t, "rawlb_healthcheck_total", "backend", be2, "result", "fail") }

	failsBefore := fails()
	s.backends[1].Stop()
	stopped := time.Now()
	// The bound is the feature: a backend is out of rotation within
	// interval x fall plus one second. It is checked on rawlb's own clock
	// (the time of its log line), not by how soon a scrape sees it: on two
	// cores shared with other tests a scrape can take a second by itself.
	netlab.WaitFor(t, 15*time.Second, "backend-2 marked down", func() bool { return s.metric(t, "rawlb_backend_up", "backend", be2) == 0 })
	if n := fails() - failsBefore; n < fall {
		t.Errorf("backend-2 marked down after %v failed checks, want -hc-fall = %d", n, fall)
	}
	down := s.logTime(t, "backend down", be2, stopped)
	t.Logf("backend-2 marked down %v after it stopped", down.Sub(stopped).Round(time.Millisecond))
	if took := down.Sub(stopped); took > interval*fall+time.Second {
		t.Errorf("backend-2 marked down %v after it stopped, want within %v", took, interval*fall+time.Second)
	}
	for i := 0; i < 9; i++ {
		c, name := s.dial(t)
		c.Close()
		if name == "backend-2" {
			t.Fatal("a new connection went to the stopped backend")
		}
	}

	s.backends[1].Start()
	started := time.Now()
	netlab.WaitFor(t, 15*time.Second, "backend-2 up again", func() bool { return s.metric(t, "rawlb_backend_up", "backend", be2) == 1 })
	if took := s.logTime(t, "backend up", be2, started).Sub(started); took > interval*(rise+1)+time.Second {
		t.Errorf("backend-2 back up %v after it restarted, want within %v", took, interval*(rise+1)+time.Second)
	}
	seen := false
	for i := 0; i < 3; i++ {
		c, name := s.dial(t)
		c.Close()
		seen = seen || name == "backend-2"
	}
	if !seen {
		t.Fatal("backend-2 is up again but took none of three new connections")
	}

	for _, b := range s.backends {
		b.Stop()
	}
	netlab.WaitFor(t, 15*time.Second, "every backend down", func() bool { return s.metric(t, "rawlb_backend_up") == 0 })
	resets := s.metric(t, "rawlb_resets_sent_total")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.lab.Client.Dial(ctx, "tcp", s.vip)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect with every backend down: %v, want connection refused (a RST from rawlb, not a timeout)", err)
	}
	if n := s.metric(t, "rawlb_resets_sent_total") - resets; n < 1 {
		t.Fatalf("rawlb_resets_sent_total grew by %v after refusing a SYN", n)
	}
}

// logTime returns the time rawlb logged msg for backend at or after
// since, waiting a little for the line: the gauge a test polls may flip
// just before the line is written.
func (s *setup) logTime(t *testing.T, msg, backend string, since time.Time) time.Time {
	t.Helper()
	// slog's text handler writes milliseconds: compare at that precision.
	since = since.Truncate(time.Millisecond)
	var at time.Time
	netlab.WaitFor(t, 5*time.Second, fmt.Sprintf("rawlb to log %q for %s", msg, backend), func() bool {
		for _, line := range strings.Split(s.lb.Output(), "\n") {
			if !strings.Contains(line, fmt.Sprintf("msg=%q", msg)) || !strings.Contains(line, " backend="+backend+" ") {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			when, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				t.Fatalf("rawlb log line without a time: %q", line)
			}
			if !when.Before(since) {
				at = when
				return true
			}
		}
		return false
	})
	return at
}

func TestFlowsDrainAndKernelStaysQuiet(t *testing.T) {
	// Health checks are TCP connections of the balancer host's own stack,
	// and a test backend's greeting left unread makes that stack close
	// with a RST of its own. An hour between checks keeps them out of the
	// count; the first round runs at start, the next in six minutes.
	t.Parallel()
	s := start(t, "-hc-interval", "1h", "-hc-timeout", "1s", "-closing-timeout", "2s")
	netlab.WaitFor(t, 10*time.Second, "the start-up health checks done", func() bool {
		return s.metric(t, "rawlb_healthcheck_total", "result", "ok") >= 3
	})
	before := s.lab.Balancer.Snmp(t)["Tcp.OutRsts"]
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Not s.dial: t.Fatal must not be called off the test's goroutine.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := s.lab.Client.Dial(ctx, "tcp", s.vip)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := netlab.Hello(c); err != nil {
				t.Error(err)
			} else if err := netlab.EchoRoundTrip(c, bytes.Repeat([]byte("x"), 100_000)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := s.metric(t, "rawlb_flows_created_total"); n < 20 {
		t.Fatalf("flows created %v, want at least 20", n)
	}
	netlab.WaitFor(t, 20*time.Second, "active flows back to 0", func() bool { return s.metric(t, "rawlb_flows_active") == 0 })
	if after := s.lab.Balancer.Snmp(t)["Tcp.OutRsts"]; after != before {
		t.Fatalf("the balancer host's kernel sent %d RSTs of its own", after-before)
	}
}

// frame builds an Ethernet frame from the client to the balancer.
func (s *setup) frame(t *testing.T, ip *layers.IPv4, l4 gopacket.SerializableLayer, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: s.lab.Client.MAC, DstMAC: s.lab.Balancer.MAC, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func TestStrayAndMalformedFrames(t *testing.T) {
	t.Parallel()
	s := start(t)
	pc := s.lab.Client.PacketConn(t)
	mk := func(flags func(*layers.TCP), mod func([]byte) []byte) []byte {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.lab.Client.IP.AsSlice(), DstIP: s.lab.Balancer.IP.AsSlice()}
		tcp := &layers.TCP{SrcPort: 33333, DstPort: lbPort, Seq: 1, Ack: 1, ACK: true, Window: 1000}
		if flags != nil {
			flags(tcp)
		}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		b := s.frame(t, ip, tcp, make([]byte, 100))
		if mod != nil {
			b = mod(b)
		}
		return b
	}
	cases := []struct {
		reason string
		frame  []byte
	}{
		{"no_flow", mk(nil, nil)}, // an ACK for no connection
		{"no_flow", mk(func(t *layers.TCP) { t.DstPort = 45000 }, nil)},              // to a NAT port nobody uses
		{"fragment", mk(nil, func(b []byte) []byte { b[20] |= 0x20; return b })},     // more fragments
		{"fragment", mk(nil, func(b []byte) []byte { b[21] = 0x10; return b })},      // an offset
		{"bad_ip_header", mk(nil, func(b []byte) []byte { b[14] = 0x44; return b })}, // IHL 4
		{"bad_ip_length", mk(nil, func(b []byte) []byte { return b[:len(b)-30] })},   // total length past the frame
		{"bad_tcp_header", mk(nil, func(b []byte) []byte { b[14+20+12] = 0x30; return b })},
		{"bad_tcp_header", mk(nil, func(b []byte) []byte { b[14+20+12] = 0xf0; binary.BigEndian.PutUint16(b[16:], 20+40); return b[:14+60] })},
	}
	want := map[string]float64{}
	for _, c := range cases {
		want[c.reason]++
	}
	base := map[string]float64{}
	for r := range want {
		base[r] = s.metric(t, "rawlb_drops_total", "reason", r)
	}
	for _, c := range cases {
		if err := pc.Send(c.frame); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for r := range want {
				t.Logf("drops %s: %v (was %v)", r, s.metric(t, "rawlb_drops_total", "reason", r), base[r])
			}
		}
	})
	for r, n := range want {
		netlab.WaitFor(t, 5*time.Second, fmt.Sprintf("%v more drops for %s", n, r), func() bool { return s.metric(t, "rawlb_drops_total", "reason", r)-base[r] >= n })
	}
	// Still serving.
	c, _ := s.dial(t)
	defer c.Close()
	if err := netlab.EchoRoundTrip(c, []byte("still here")); err != nil {
		t.Fatal(err)
	}
}

// TestSIGINTRemovesRules: a stop for good (SIGINT, systemctl stop with
// the unit's KillSignal) leaves no rule and no reserved port behind. (A
// SIGTERM is a stop for a restart: see TestSIGTERMHandsOff.)
func TestSIGINTRemovesRules(t *testing.T) {
	t.Parallel()
	s := start(t)
	lb := s.lab.Balancer
	if out := lb.Run(t, "nft", "list", "tables"); !strings.Contains(out, "rawlb_20000") {
		t.Fatalf("no rawlb table while running: %q", out)
	}
	if out := lb.Run(t, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"); !strings.Contains(out, "40000-59999") {
		t.Fatalf("NAT range not reserved while running: %q", out)
	}
	if err := s.lb.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code, err := s.lb.Wait(10 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit after SIGINT: code %d, %v\n%s", code, err, s.lb.Output())
	}
	if out := lb.Run(t, "nft", "list", "tables"); strings.Contains(out, "rawlb") {
		t.Fatalf("rules left behind: %q", out)
	}
	if out := strings.TrimSpace(lb.Run(t, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports")); out != "" {
		t.Fatalf("reserved ports left behind: %q", out)
	}
}

func TestBadCommandLine(t *testing.T) {
	t.Parallel()
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	cases := []struct {
		args []string
		want string
	}{
		{nil, "need the balancer's source IP"},
		{[]string{"198.18.0.2"}, "at least one backend"},
		{[]string{"-port", "70000", "198.18.0.2", "198.18.0.11:80"}, "bad -port"},
		{[]string{"-nat-ports", "50000-40000", "198.18.0.2", "198.18.0.11:80"}, "bad -nat-ports"},
		{[]string{"-nat-ports", "banana", "198.18.0.2", "198.18.0.11:80"}, "bad -nat-ports"},
		{[]string{"-algo", "random", "198.18.0.2", "198.18.0.11:80"}, "bad -algo"},
		{[]string{"-no-such-flag", "198.18.0.2", "198.18.0.11:80"}, "flag provided but not defined"},
		{[]string{"not-an-ip", "198.18.0.11:80"}, "bad source IP"},
		{[]string{"198.18.0.2", "198.18.0.11"}, "bad backend"},
		{[]string{"198.18.0.2", "198.18.0.11:0"}, "port must be"},
		{[]string{"198.18.0.2", "no-such-host.invalid:80"}, "cannot resolve"},
		{[]string{"-port", "45000", "198.18.0.2", "198.18.0.11:80"}, "inside nat_ports"},
		{[]string{"-hc-interval", "1s", "-hc-timeout", "2s", "198.18.0.2", "198.18.0.11:80"}, "longer than -hc-interval"},
	}
	for _, c := range cases {
		cmd := exec.Command(bin, c.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want status 2", c.args, err)
		}
		out := strings.TrimRight(stderr.String(), "\n")
		if strings.Count(out, "\n") != 0 || !strings.Contains(out, c.want) || !strings.HasPrefix(out, "rawlb: ") {
			t.Errorf("%v: stderr %q, want one line containing %q", c.args, out, c.want)
		}
	}
	// -version prints and exits 0 (the original's "ip port" pairs are
	// TestIPPortPairs, and cmd/rawlb's unit tests).
	if out, err := exec.Command(bin, "-version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "rawlb ") || strings.Count(string(out), "\n") != 1 {
		t.Errorf("-version: %q %v, want one line \"rawlb VERSION\" and status 0", out, err)
	}
}

func TestRunTimeErrors(t *testing.T) {
	t.Parallel()
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	lab := netlab.New(t, netlab.Options{Backends: 1})
	lb := lab.Balancer
	be := fmt.Sprintf("%s:%d", lab.Backends[0].IP, backendPort)
	// A second interface, left down, holding an address of its own.
	lb.Run(t, "ip", "link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
	lb.Run(t, "ip", "addr", "add", "198.18.1.2/24", "dev", "spare0")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"198.18.0.99", be}, "not an address of any interface"},
		{[]string{"-iface", "nope0", lb.IP.String(), be}, "unknown interface"},
		{[]string{"-iface", "spare0", lb.IP.String(), be}, "not an address of interface spare0"},
		{[]string{"198.18.1.2", be}, "is down"},
	}
	for _, c := range cases {
		cmd := lb.Command(context.Background(), bin, c.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("%v: exit %v, want status 1", c.args, err)
		}
		if out := strings.TrimRight(stderr.String(), "\n"); strings.Count(out, "\n") != 0 || !strings.Contains(out, c.want) {
			t.Errorf("%v: stderr %q, want one line containing %q", c.args, out, c.want)
		}
	}
	// Without CAP_NET_RAW and CAP_NET_ADMIN the error names both. (The lab
	// already required root, which setpriv needs to drop them.)
	cmd := lb.Command(context.Background(), "setpriv", "--inh-caps=-all", "--bounding-set=-net_raw,-net_admin", bin, lb.IP.String(), be)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("without capabilities: exit %v, want status 1", err)
	}
	if out := stderr.String(); !strings.Contains(out, "CAP_NET_RAW") || !strings.Contains(out, "CAP_NET_ADMIN") {
		t.Errorf("without capabilities: %q, want both named", out)
	}
}

func TestICMPFragNeededTranslated(t *testing.T) {
	t.Parallel()
	s := start(t)
	c, name := s.hold(t)
	defer c.Close()
	clientPort := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	be := s.backendHost(t, name)
	// The NAT port rawlb chose, as the backend sees it: from srcIP and in
	// the NAT range (40000-59999 by default), which tells it from a health
	// check's connection, also from srcIP but from an ephemeral port.
	var natPort uint16
	netlab.WaitFor(t, 5*time.Second, "the connection in the backend's socket table", func() bool {
		out := be.Run(t, "ss", "-Htn", "state", "established", fmt.Sprintf("( sport = :%d )", backendPort))
		for _, f := range strings.Fields(out) {
			if p, ok := strings.CutPrefix(f, s.lab.Balancer.IP.String()+":"); ok {
				if n, err := strconv.Atoi(p); err == nil && n >= 40000 && n <= 59999 {
					natPort = uint16(n)
					return true
				}
			}
		}
		return false
	})

	// The backend's stack says a segment it got from srcIP:natPort was too
	// big: the quote is that segment's IP header and first TCP bytes.
	quoted := func() []byte {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.lab.Balancer.IP.AsSlice(), DstIP: be.IP.AsSlice(), Flags: layers.IPv4DontFragment}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(natPort), DstPort: backendPort, Seq: 12345, ACK: true, Window: 500}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(make([]byte, 1400))); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()[:20+28]
	}()
	eth := &layers.Ethernet{SrcMAC: be.MAC, DstMAC: s.lab.Balancer.MAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: be.IP.AsSlice(), DstIP: s.lab.Balancer.IP.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: 1280}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, gopacket.Payload(quoted)); err != nil {
		t.Fatal(err)
	}

	watch := s.lab.Client.PacketConn(t)
	if err := be.PacketConn(t).Send(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	got, err := watch.Receive(5*time.Second, func(b []byte) bool {
		return len(b) > 14+20 && b[14+9] == 1 && b[14+20] == 3
	})
	if err != nil {
		t.Fatalf("no ICMP error reached the client: %v", err)
	}
	pkt := gopacket.NewPacket(got, layers.LayerTypeEthernet, gopacket.Default)
	oip := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	oicmp := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if !oip.SrcIP.Equal(s.lab.Balancer.IP.AsSlice()) || !oip.DstIP.Equal(s.lab.Client.IP.AsSlice()) {
		t.Errorf("outer %v -> %v, want balancer -> client", oip.SrcIP, oip.DstIP)
	}
	if oicmp.TypeCode.Code() != 4 || binary.BigEndian.Uint16(got[14+20+6:]) != 1280 {
		t.Errorf("type/code or MTU changed: %v", oicmp.TypeCode)
	}
	in := got[14+20+8:]
	inSrc, inDst := net.IP(in[12:16]), net.IP(in[16:20])
	inSport, inDport := binary.BigEndian.Uint16(in[20:]), binary.BigEndian.Uint16(in[22:])
	if !inSrc.Equal(s.lab.Client.IP.AsSlice()) || inSport != clientPort || !inDst.Equal(s.lab.Balancer.IP.AsSlice()) || inDport != lbPort {
		t.Errorf("quoted %v:%d -> %v:%d, want client:%d -> balancer:%d", inSrc, inSport, inDst, inDport, clientPort, lbPort)
	}
	// Both checksums verify: the outer IP header and the ICMP message.
	if packet.Checksum(got[14:14+20]) != 0 || packet.Checksum(got[14+20:14+int(binary.BigEndian.Uint16(got[16:]))]) != 0 {
		t.Error("translated ICMP checksums do not verify")
	}
}

// TestSlowNATPortReuseIntoTimeWait drives connections through a small NAT
// range so that every port is reused toward a backend that still holds the
// previous connection on it in TIME_WAIT (backends close first here, as
// HTTP servers do with Connection: close). Linux gives each connection its
// own timestamp offset, so without rawlb's timestamp offset about half the
// reused SYNs would be refused as PAWS failures and retried a second later.
//
// Slow: 6,000 connections. It counts SYN retransmissions, which a SYN
// delayed past the client's 1 s timer would cause, yet it ran clean in
// parallel with the whole suite (eight runs, -parallel 2 and 8, on two
// loaded cores), so it runs in parallel too.
func TestSlowNATPortReuseIntoTimeWait(t *testing.T) {
	slowTest(t)
	t.Parallel()
	natPortReuse(t, true)
}

// TestSlowNATPortReuseWithoutTimestamps is the same for a client that sends no
// TCP timestamps (Windows' default): the backend's TIME_WAIT then accepts
// a SYN only beyond the old connection's last sequence number, and Linux
// picks each connection's ISN at random, so without rawlb's sequence
// offset about half the reused SYNs would get a stale ACK.
// Slow and parallel, as TestSlowNATPortReuseIntoTimeWait.
func TestSlowNATPortReuseWithoutTimestamps(t *testing.T) {
	slowTest(t)
	t.Parallel()
	natPortReuse(t, false)
}

func natPortReuse(t *testing.T, timestamps bool) {
	s := start(t, "-nat-ports", "40000-40999", "-closing-timeout", "100ms")
	if !timestamps {
		s.lab.Client.Run(t, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/tcp_timestamps")
		// tcp_timestamps is per network namespace, so this touches only
		// the lab's client; read it back, or the test would quietly run
		// with timestamps again.
		if v := strings.TrimSpace(s.lab.Client.Run(t, "cat", "/proc/sys/net/ipv4/tcp_timestamps")); v != "0" {
			t.Fatalf("client's tcp_timestamps is %q after setting it to 0", v)
		}
	}
	const conns, workers = 6000, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < conns/workers; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := s.lab.Client.Dial(ctx, "tcp", s.vip)
				cancel()
				if err != nil {
					errs <- err
					return
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := netlab.Hello(c); err != nil {
					errs <- err
					c.Close()
					return
				}
				_, _, err = netlab.Get(c, 0) // the backend closes first: TIME_WAIT is on its side
				c.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := s.metric(t, "rawlb_nat_port_quiet_reused_total"); n < 1000 {
		t.Fatalf("only %v NAT ports reused within their quiet time: the test did not exercise reuse", n)
	}
	var paws, tw int64
	for _, h := range s.lab.Backends {
		snmp := h.Snmp(t)
		paws += snmp["TcpExt.PAWSTimewait"]
		tw += snmp["TcpExt.TW"]
	}
	if tw < 1000 {
		t.Fatalf("the backends entered TIME_WAIT only %d times: the test did not exercise it", tw)
	}
	retrans := s.lab.Client.Snmp(t)["TcpExt.TCPSynRetrans"]
	if paws != 0 || retrans != 0 {
		t.Fatalf("backends refused %d reused-port SYNs as PAWS failures; the client retransmitted %d SYNs", paws, retrans)
	}
}
