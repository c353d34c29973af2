package rawlb_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// The fast path (-fastpath, package fastpath): established flows forwarded
// by a tc program in the balancer's kernel, taken back by rawlb for their
// end.

// csumErrors sums the TCP checksum errors the hosts' kernels counted.
func csumErrors(t *testing.T, hosts ...*netlab.Host) int64 {
	var n int64
	for _, h := range hosts {
		n += h.Snmp(t)["Tcp.InCsumErrors"]
	}
	return n
}

// TestFastpathTransfers moves 64 MiB each way through the fast path: the
// bytes arrive intact (SHA-256 at both ends), no receiving kernel saw a bad
// checksum, nearly every packet went through the kernel, and both flows
// came back to rawlb for their FINs and ended; and while a flow is in the
// kernel, the per-backend counters see its packets.
func TestFastpathTransfers(t *testing.T) {
	t.Parallel()
	s := start(t, "-fastpath", "on", "-closing-timeout", "2s")
	hosts := append([]*netlab.Host{s.lab.Client}, s.lab.Backends...)
	csumBefore := csumErrors(t, hosts...)
	// While a flow is in the kernel, the counters see its packets.
	c, name := s.dial(t)
	if _, err := io.WriteString(c, "ECHO\n"); err != nil {
		t.Fatal(err)
	}
	s.echoIntoFastPath(t, c)
	// It went with the backend's SYN-ACK, so the program completed the
	// handshake; rawlb learns it between batches and counts the flow
	// established, not half-open (its SYN cookies turn on that count).
	netlab.WaitFor(t, 5*time.Second, "the echo flow established for rawlb too", func() bool {
		return s.metric(t, "rawlb_flows_half_open") == 0 && s.metric(t, "rawlb_flows", "state", "Established") == 1
	})
	if n := s.metric(t, "rawlb_fastpath_handshakes_total"); n != 1 {
		t.Errorf("the program completed %v handshakes, want the echo's", n)
	}
	be := s.backendLabel(t, name)
	toClient := func() float64 {
		return s.metric(t, "rawlb_backend_packets_total", "backend", be, "direction", "to_client")
	}
	before := toClient()
	for i := 0; i < 20; i++ {
		if err := echoByte(c, byte(i), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if n := toClient() - before; n < 20 || s.metric(t, "rawlb_fastpath_flows") != 1 {
		t.Errorf("20 echoes in the kernel moved %s's to_client packets by %v (flow still in the kernel: %v)", be, n, s.metric(t, "rawlb_fastpath_flows"))
	}
	c.Close()
	netlab.WaitFor(t, 10*time.Second, "the echo flow gone", func() bool { return s.metric(t, "rawlb_flows_active") == 0 })

	const size = 64 << 20
	c, name = s.dial(t)
	sum, got, err := netlab.Get(c, size)
	c.Close()
	if err != nil || got != size {
		t.Fatalf("GET %d bytes from %s: got %d, %v", size, name, got, err)
	}
	if sum != netlab.ExpectedGET(size) {
		t.Fatalf("64 MiB from %s arrived with a different SHA-256", name)
	}
	c, name = s.dial(t)
	h := sha256.New()
	put, err := netlab.Put(c, io.TeeReader(netlab.GETStream(size), h), size)
	c.Close()
	if err != nil {
		t.Fatalf("PUT to %s: %v", name, err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); put != want {
		t.Fatalf("64 MiB reached %s with SHA-256 %s, want %s", name, put, want)
	}

	// Both flows end: the program forwards both FINs and the last ACK,
	// and tells rawlb through the worker's event ring, which brings each
	// back (reason "close") in TimeWait; the table empties after the
	// closing timeout.
	netlab.WaitFor(t, 10*time.Second, "both flows back from the fast path and gone", func() bool {
		return s.metric(t, "rawlb_fastpath_flows") == 0 && s.metric(t, "rawlb_fastpath_returns_total", "reason", "close") >= 3 &&
			s.metric(t, "rawlb_flows_active") == 0
	})
	if n, lost := s.metric(t, "rawlb_fastpath_closes_total"), s.metric(t, "rawlb_fastpath_events_lost_total"); n != 3 || lost != 0 {
		t.Errorf("the program closed %v flows (%v closes not told), want all 3", n, lost)
	}
	if n, hs := s.metric(t, "rawlb_fastpath_offloads_total"), s.metric(t, "rawlb_fastpath_handshakes_total"); n != 3 || hs != 3 {
		t.Errorf("%v flows offloaded, %v of them with their SYN-ACK; want the echo and the 2 transfers, all 3", n, hs)
	}
	// Once a flow is back, rawlb_packets_total counts its packets from
	// both paths.
	fast := s.metric(t, "rawlb_fastpath_packets_total")
	all := s.metric(t, "rawlb_packets_total", "direction", "to_backend") + s.metric(t, "rawlb_packets_total", "direction", "to_client")
	t.Logf("packets: %v, %v of them by the fast path, %v run through it late; returns: close %v, flags %v, options %v, window %v, engine %v",
		all, fast, s.metric(t, "rawlb_fastpath_late_total"), s.metric(t, "rawlb_fastpath_returns_total", "reason", "close"),
		s.metric(t, "rawlb_fastpath_returns_total", "reason", "flags"), s.metric(t, "rawlb_fastpath_returns_total", "reason", "options"),
		s.metric(t, "rawlb_fastpath_returns_total", "reason", "window"), s.metric(t, "rawlb_fastpath_returns_total", "reason", "engine"))
	if fast < 0.9*all {
		t.Errorf("only %v of %v packets went through the fast path", fast, all)
	}
	if n := csumErrors(t, hosts...) - csumBefore; n != 0 {
		t.Errorf("%d TCP checksum errors at the client and backends", n)
	}
	for _, b := range s.backends {
		if a := b.Active(); a != 0 {
			t.Errorf("%s still has %d connections open", b.Name(), a)
		}
	}
}

// echoIntoFastPath echoes bytes over c, a connection in ECHO mode, until
// it is the one flow in rawlb's fast path (it goes with the backend's
// SYN-ACK; after coming back early, after 16 segments rawlb forwarded
// itself).
func (s *setup) echoIntoFastPath(t *testing.T, c net.Conn) {
	t.Helper()
	for i := 0; s.metric(t, "rawlb_fastpath_flows") != 1; i++ {
		if i == 50 {
			t.Fatalf("the connection is not in the fast path after %d round trips", i)
		}
		if err := echoByte(c, byte(i), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// backendHost returns the lab host of the backend that greets as name.
func (s *setup) backendHost(t *testing.T, name string) *netlab.Host {
	t.Helper()
	for i, b := range s.backends {
		if b.Name() == name {
			return s.lab.Backends[i]
		}
	}
	t.Fatalf("greeting names %q, which is none of the backends", name)
	return nil
}

// backendLabel returns the backend label (its address, on the command
// line) of the lab's backend that greets as name.
func (s *setup) backendLabel(t *testing.T, name string) string {
	return fmt.Sprintf("%v:%d", s.backendHost(t, name).IP, backendPort)
}

// TestFastpathDeadBackendFlowsAreReset: a flow in the kernel whose backend
// dies is reset like any other (on_backend_down: reset, the command line's
// default), and the client accepts the RST. It carries the sequence
// number the kernel's state has, not the older one rawlb had when the flow
// went: a RST behind the client's RCV.NXT would be ignored and the client
// would hang.
func TestFastpathDeadBackendFlowsAreReset(t *testing.T) {
	t.Parallel()
	s := start(t, "-fastpath", "on")
	c, name := s.dial(t)
	defer c.Close()
	if _, err := io.WriteString(c, "ECHO\n"); err != nil {
		t.Fatal(err)
	}
	s.echoIntoFastPath(t, c)
	// Traffic in the kernel only: rawlb's own idea of the windows falls
	// behind.
	fastBefore := s.metric(t, "rawlb_fastpath_packets_total")
	for i := 0; i < 20; i++ {
		if err := echoByte(c, byte(i), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	netlab.WaitFor(t, 5*time.Second, "the echoes forwarded by the fast path", func() bool {
		return s.metric(t, "rawlb_fastpath_packets_total")-fastBefore >= 40
	})
	x := s.backendHost(t, name)
	x.Run(t, "ip", "link", "set", x.Iface, "down")
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	var buf [16]byte
	n, err := c.Read(buf[:])
	if n > 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the connection on the dead %s ended with %q, %v; want ECONNRESET (rawlb's RST)", name, buf[:n], err)
	}
	if n := s.metric(t, "rawlb_fastpath_returns_total", "reason", "engine"); n < 1 {
		t.Errorf("the flow was not taken back by rawlb (returns by the engine: %v)", n)
	}
}

// TestIdleBalancerSleeps: with nothing for them to do (the fast path
// carries established flows, so the workers often see nothing for long
// stretches), rawlb's threads wake a few times a second, not the 20 times
// a second per worker of a fixed 50 ms sweep, which on a 2-core machine
// took 15% of iperf3 -P 4's throughput by preempting it. Measured with the
// kernel's count of each thread's voluntary context switches.
func TestIdleBalancerSleeps(t *testing.T) {
	t.Parallel()
	// Health checks every hour: each probe wakes several threads, and
	// this test counts the data path's wake-ups.
	s := start(t, "-fastpath", "on", "-workers", "2", "-hc-interval", "1h")
	c, _ := s.dial(t)
	defer c.Close()
	if _, err := io.WriteString(c, "ECHO\n"); err != nil {
		t.Fatal(err)
	}
	s.echoIntoFastPath(t, c) // a flow in the kernel, idle, as in a pause of a long transfer
	pid := s.lb.Pid()
	const window = 2 * time.Second
	// Each timer that fires costs the Go runtime 4-5 thread wake-ups
	// (the netpoller's, sysmon's, a spinning M's). With a 50 ms sweep this
	// test measured 166-201 a second; with the idle back-off 24-50.
	const most = 80.0
	var rate float64
	netlab.WaitFor(t, 15*time.Second, fmt.Sprintf("rawlb waking at most %v times a second", most), func() bool {
		before := wakeups(t, pid)
		time.Sleep(window) // the measurement's window, not a wait for a condition
		rate = float64(wakeups(t, pid)-before) / window.Seconds()
		t.Logf("rawlb's threads woke %.1f times a second", rate)
		return rate <= most
	})
	if err := echoByte(c, 1, 5*time.Second); err != nil {
		t.Fatalf("the idle flow no longer echoes: %v", err)
	}
}

// wakeups returns how often pid's threads went to sleep and were woken
// (voluntary_ctxt_switches, summed over /proc/PID/task).
func wakeups(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of pid %d: %v", pid, err)
	}
	n := 0
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				k, _ := strconv.Atoi(strings.TrimSpace(v))
				n += k
			}
		}
	}
	return n
}
