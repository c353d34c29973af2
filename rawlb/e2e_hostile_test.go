package rawlb_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/internal/flood"
	"github.com/rawlb/rawlb/internal/netlab"
)

// Hostile and bursty traffic: spoofed SYN floods, blind RSTs, connect
// bursts. The floods come from internal/flood in the client namespace,
// bounded in count and time, with sources in 198.18.128.0/17, which has no
// route back.

var spoofed = netip.MustParsePrefix("198.18.128.0/17")

// synFlood floods the balancer's service from the client host.
func (s *setup) synFlood(count int, d time.Duration, rate int) *flood.SYNFlood {
	return &flood.SYNFlood{
		Link:     flood.Link{Netns: s.lab.Client.Name, Iface: s.lab.Client.Iface, DstMAC: s.lab.Balancer.MAC},
		Dst:      netip.AddrPortFrom(s.lab.Balancer.IP, lbPort),
		Sources:  spoofed,
		Count:    count,
		Duration: d,
		Rate:     rate,
		Seed:     uint64(time.Now().UnixNano()),
	}
}

// echoLoad keeps n keep-alive connections echoing small messages, counting
// round trips, until stop is closed.
type echoLoad struct {
	trips atomic.Int64
	errs  atomic.Int64
	wg    sync.WaitGroup
	stop  chan struct{}
}

func (s *setup) startEchoLoad(t *testing.T, n int) *echoLoad {
	t.Helper()
	l := &echoLoad{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		c, _ := s.dial(t)
		if _, err := io.WriteString(c, "ECHO\n"); err != nil {
			t.Fatal(err)
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer c.Close()
			msg := make([]byte, 64)
			got := make([]byte, 64)
			for k := 0; ; k++ {
				select {
				case <-l.stop:
					return
				default:
				}
				msg[0] = byte(k)
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(msg); err != nil {
					l.errs.Add(1)
					return
				}
				if _, err := io.ReadFull(c, got); err != nil || got[0] != msg[0] {
					l.errs.Add(1)
					return
				}
				l.trips.Add(1)
			}
		}()
	}
	return l
}

// rate measures the load's round trips per second over d.
func (l *echoLoad) rate(d time.Duration) float64 {
	before := l.trips.Load()
	time.Sleep(d) // a measurement window, not a wait for a condition
	return float64(l.trips.Load()-before) / d.Seconds()
}

func (l *echoLoad) close() { close(l.stop); l.wg.Wait() }

// connectLoop connects again and again until stop, recording each
// connect's time; a connect that does not succeed within limit counts as
// failed.
type connectLoop struct {
	mu    sync.Mutex
	times []time.Duration
	fails int
	wg    sync.WaitGroup
	stop  chan struct{}
}

func (s *setup) startConnectLoop(t *testing.T, workers int, limit time.Duration) *connectLoop {
	l := &connectLoop{stop: make(chan struct{})}
	loopUntil(&l.wg, l.stop, workers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		start := time.Now()
		c, err := s.lab.Client.Dial(ctx, "tcp", s.vip)
		took := time.Since(start)
		cancel()
		l.mu.Lock()
		if err != nil {
			l.fails++
		} else {
			l.times = append(l.times, took)
		}
		l.mu.Unlock()
		if c != nil {
			c.Close()
		}
		time.Sleep(20 * time.Millisecond) // pacing: a client, not a load
	})
	return l
}

// result stops the loop and returns successes, failures and the p99
// connect time.
func (l *connectLoop) result() (ok, failed int, p99 time.Duration) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.Sort(l.times)
	if n := len(l.times); n > 0 {
		p99 = l.times[min(n-1, n*99/100)]
	}
	return len(l.times), l.fails, p99
}

// percentile returns the p-th percentile connect time (after result).
func (l *connectLoop) percentile(p int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.times); n > 0 {
		return l.times[min(n-1, n*p/100)]
	}
	return 0
}

// TestSlowSYNFlood floods the service with spoofed SYNs for 20 s as fast
// as the flood generator goes, while a client keeps connecting and a
// keep-alive load runs: at least 99% of the client's connects must succeed
// within 3 s, the half-open flows must be gone within -half-open-timeout
// + 1 s of the flood's end, and the RSTs rawlb sends must stay within
// their limit.
func TestSlowSYNFlood(t *testing.T) {
	slowTest(t)
	t.Parallel()
	const halfOpen, resetRate = 5 * time.Second, 1000
	// A short closing timeout: the legitimate connects of the test end
	// until the flood does, and their flows would otherwise stay for the
	// default 10 s; the check is about the flood's half-open flows.
	s := start(t, "-half-open-timeout", halfOpen.String(), "-reset-rate", fmt.Sprint(resetRate), "-closing-timeout", "1s", "-workers", "2")
	load := s.startEchoLoad(t, 8)
	defer load.close()
	before := load.rate(3 * time.Second)
	flowsBefore := s.metric(t, "rawlb_flows_active")
	resetsBefore := s.metric(t, "rawlb_originated_total", "kind", "reset")

	fl := s.synFlood(100_000_000, 20*time.Second, 0)
	type res struct {
		st  flood.Stats
		err error
	}
	done := make(chan res, 1)
	go func() {
		st, err := fl.Run(context.Background())
		done <- res{st, err}
	}()
	// Measure once the flood is in full swing: cookies answering it.
	netlab.WaitFor(t, 10*time.Second, "the flood to switch SYN cookies on", func() bool {
		return s.metric(t, "rawlb_syn_cookies_sent_total") >= 20_000
	})
	conns := s.startConnectLoop(t, 8, 3*time.Second)
	during := load.rate(10 * time.Second)
	r := <-done
	ok, failed, p99 := conns.result()
	if r.err != nil {
		t.Fatalf("flood: %v", r.err)
	}
	end := time.Now()
	t.Logf("flood: %d SYNs in %v (%.0f/s, %v x%d); cookies sent %v, validated %v",
		r.st.Sent, r.st.Elapsed.Round(time.Millisecond), r.st.Rate(), r.st.Method, r.st.Workers,
		s.metric(t, "rawlb_syn_cookies_sent_total"), s.metric(t, "rawlb_syn_cookies_validated_total"))
	t.Logf("legitimate connects during the flood: %d ok, %d failed within 3 s; connect time p50 %v, p90 %v, p99 %v", ok, failed,
		conns.percentile(50).Round(time.Microsecond), conns.percentile(90).Round(time.Microsecond), p99.Round(time.Microsecond))
	t.Logf("keep-alive round trips: %.0f/s before, %.0f/s during (%.2fx)", before, during, during/before)
	t.Logf("ring drops %v, rate-limited SYN-ACKs %v", s.metric(t, "rawlb_ring_drops_total"), s.metric(t, "rawlb_rate_limited_total", "kind", "syn_ack"))
	if total := ok + failed; total < 50 || float64(ok) < 0.99*float64(total) {
		t.Errorf("%d of %d legitimate connects succeeded within 3 s during the flood, want at least 99%%", ok, total)
	}
	if load.errs.Load() != 0 {
		t.Errorf("%d keep-alive connections failed during the flood", load.errs.Load())
	}
	netlab.WaitFor(t, halfOpen+time.Second+2*time.Second, "flows back to their pre-flood count", func() bool {
		n := s.metric(t, "rawlb_flows_active")
		t.Logf("flows %v: established %v finwait %v closewait %v lastack %v timewait %v close %v synrecv %v", n,
			s.metric(t, "rawlb_flows", "state", "Established"), s.metric(t, "rawlb_flows", "state", "FinWait"), s.metric(t, "rawlb_flows", "state", "CloseWait"),
			s.metric(t, "rawlb_flows", "state", "LastAck"), s.metric(t, "rawlb_flows", "state", "TimeWait"), s.metric(t, "rawlb_flows", "state", "Close"), s.metric(t, "rawlb_flows", "state", "SynRecv"))
		return n <= flowsBefore
	})
	t.Logf("flows back to %v (from before the flood %v) %v after the flood ended", s.metric(t, "rawlb_flows_active"), flowsBefore, time.Since(end).Round(time.Millisecond))
	if took := time.Since(end); took > halfOpen+time.Second {
		t.Errorf("flows took %v to drain after the flood, want within -half-open-timeout + 1 s", took)
	}
	resets := s.metric(t, "rawlb_originated_total", "kind", "reset") - resetsBefore
	if limit := float64(resetRate) * (r.st.Elapsed.Seconds() + halfOpen.Seconds() + 3 + 1); resets > limit {
		t.Errorf("rawlb sent %v RSTs during and after the flood, beyond its limit of %d/s (%v)", resets, resetRate, limit)
	}
}

// TestSlowSpoofedSYNsExpire sends 3,000 spoofed SYNs: their flows must be
// gone -half-open-timeout after they were created, however often the
// backends retransmit their SYN-ACKs to the addresses that never answer.
func TestSlowSpoofedSYNsExpire(t *testing.T) {
	slowTest(t)
	t.Parallel()
	// Health checks are the balancer host's own connections, which close
	// with a RST of their own (the test backends' greeting is left
	// unread): one round at start, then none for an hour.
	s := start(t, "-half-open-timeout", "5s", "-hc-interval", "1h", "-hc-timeout", "1s")
	rstsBefore := s.lab.Balancer.Snmp(t)["Tcp.OutRsts"]
	st, err := s.synFlood(3000, 10*time.Second, 20000).Run(context.Background())
	if err != nil || st.Sent != 3000 {
		t.Fatalf("flood: %d sent, %v", st.Sent, err)
	}
	sent := time.Now()
	netlab.WaitFor(t, 5*time.Second, "the spoofed SYNs to reach rawlb", func() bool {
		return s.metric(t, "rawlb_flows_created_total")+s.metric(t, "rawlb_syn_cookies_sent_total") >= 3000
	})
	t.Logf("flows %v, half-open %v, cookies sent %v", s.metric(t, "rawlb_flows_active"), s.metric(t, "rawlb_flows_half_open"), s.metric(t, "rawlb_syn_cookies_sent_total"))
	for time.Since(sent) < 12*time.Second {
		time.Sleep(100 * time.Millisecond) // the test's subject is what remains at a time
	}
	if n := s.metric(t, "rawlb_flows_active"); n > 10 {
		t.Fatalf("%v flows remain 12 s after 3,000 spoofed SYNs with -half-open-timeout 5s, want at most 10", n)
	}
	// The balancer's own stack never answered the spoofed traffic.
	if rsts := s.lab.Balancer.Snmp(t)["Tcp.OutRsts"] - rstsBefore; rsts != 0 {
		t.Errorf("the balancer host's kernel sent %d RSTs", rsts)
	}
}

// TestBlindResets sprays 1,000 RSTs with random sequence numbers at a live
// idle connection, spoofing its client: the connection must still work
// after the closing timeout, when a flow closed by one of them would be
// gone; then one RST with the exact sequence number must close it.
func TestBlindResets(t *testing.T) {
	t.Parallel()
	blindResets(t, false)
}

// TestFastpathBlindResets is TestBlindResets with the connection in the
// kernel's fast path: the first RST takes the flow back to rawlb, whose
// windows are then the kernel's, and the exact RST also arrives while the
// flow is in the kernel.
func TestFastpathBlindResets(t *testing.T) {
	t.Parallel()
	blindResets(t, true)
}

// blindResets sprays 1,000 random-sequence RSTs spoofing a live idle
// connection, which must still work 3 s after (past the closing timeout),
// then sends one with the exact sequence number, which must end it. With
// fast, each step starts with the flow in the fast path.
func blindResets(t *testing.T, fast bool) {
	s := start(t, append(fastFlag(fast), "-closing-timeout", "2s")...)
	c, _ := s.dial(t)
	defer c.Close()
	if _, err := io.WriteString(c, "ECHO\n"); err != nil {
		t.Fatal(err)
	}
	roundTrip := func(b byte) error { return echoByte(c, b, 5*time.Second) }
	if err := roundTrip(1); err != nil {
		t.Fatal(err)
	}
	// offload echoes until the flow is in the fast path (again, after a
	// RST brought it back).
	offload := func() {
		if fast {
			s.echoIntoFastPath(t, c)
		}
	}
	offload()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	spray := &flood.RSTSpray{
		Link: flood.Link{Netns: s.lab.Client.Name, Iface: s.lab.Client.Iface, DstMAC: s.lab.Balancer.MAC},
		Src:  local, Dst: netip.AddrPortFrom(s.lab.Balancer.IP, lbPort), Count: 1000, Duration: 10 * time.Second,
		Seed: uint64(time.Now().UnixNano()),
	}
	dropsBefore := s.metric(t, "rawlb_drops_total", "reason", "rst_out_of_window") + s.metric(t, "rawlb_drops_total", "reason", "rst_in_window")
	if st, err := spray.Run(context.Background()); err != nil || st.Sent != 1000 {
		t.Fatalf("spray: %d sent, %v", st.Sent, err)
	}
	netlab.WaitFor(t, 5*time.Second, "the RSTs counted as out of the window", func() bool {
		return s.metric(t, "rawlb_drops_total", "reason", "rst_out_of_window")+s.metric(t, "rawlb_drops_total", "reason", "rst_in_window")-dropsBefore >= 1000
	})
	t.Logf("RSTs dropped: %v out of the window, %v in it (challenged, %v challenge ACKs sent)",
		s.metric(t, "rawlb_drops_total", "reason", "rst_out_of_window"), s.metric(t, "rawlb_drops_total", "reason", "rst_in_window"),
		s.metric(t, "rawlb_originated_total", "kind", "challenge_ack"))
	if fast {
		if n := s.metric(t, "rawlb_fastpath_returns_total", "reason", "flags"); n != 1 {
			t.Errorf("the flow came back from the fast path %v times for a RST, want once", n)
		}
	}
	time.Sleep(3 * time.Second) // past the 2 s closing timeout: a flow the spray had closed would be gone
	if err := roundTrip(2); err != nil {
		t.Fatalf("the connection died after 1,000 blind RSTs: %v", err)
	}
	offload()
	// The exact sequence number: what the balancer expects next from the
	// client. The echo just finished, so nothing is in flight: learn it
	// from the client's next segment, as it reaches the balancer.
	pc := s.lab.Balancer.PacketConn(t)
	errc := make(chan error, 1)
	go func() { _, err := c.Write([]byte{3}); errc <- err }()
	var seq uint32
	if _, err := pc.Receive(5*time.Second, func(b []byte) bool {
		if len(b) < 54 || b[23] != 6 || netip.AddrFrom4([4]byte(b[26:30])) != local.Addr() || uint16(b[34])<<8|uint16(b[35]) != local.Port() {
			return false
		}
		seq = uint32(b[38])<<24 | uint32(b[39])<<16 | uint32(b[40])<<8 | uint32(b[41])
		return len(b)-14-20-int(b[46]>>4)*4 == 1 // the 1-byte write
	}); err != nil {
		t.Fatalf("capturing the client's segment: %v", err)
	}
	<-errc
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	exact := seq + 1
	one := &flood.RSTSpray{Link: spray.Link, Src: spray.Src, Dst: spray.Dst, Count: 1, Duration: time.Second, Seq: &exact}
	if _, err := one.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The backend got the RST: the connection is over.
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var rerr error
	for i := 0; i < 20 && rerr == nil; i++ {
		if _, rerr = c.Write([]byte{4}); rerr == nil {
			_, rerr = c.Read(got)
		}
	}
	if !errors.Is(rerr, syscall.ECONNRESET) && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, syscall.EPIPE) {
		t.Fatalf("after the exact RST the connection still works (%v)", rerr)
	}
}

// TestSlowConnectBurst opens 3,000 connections at once against -max-flows
// 1000: exactly the capacity is accepted, every other connect is refused
// by a RST in under 100 ms, no frame is lost in the receive rings, and no
// accepted connection times out. SYN cookies are off: with them on, the
// handshakes the table cannot take would be refused at the client's ACK,
// after its connect succeeded (see docs/hostile-traffic.md).
func TestSlowConnectBurst(t *testing.T) {
	slowTest(t)
	t.Parallel()
	// Resets at 5,000/s: the 2,000 refusals come at once, within a
	// burst's worth of the rate limit (a second's).
	s := start(t, "-max-flows", "1000", "-syn-cookies", "off", "-reset-rate", "5000")
	const n = 3000
	// The connects are issued from one thread in the client's namespace,
	// non-blocking, and waited for with epoll: so each time measured is
	// the network's (SYN out to SYN-ACK or RST back), not the test's own
	// cost of 3,000 goroutines entering a namespace.
	res, err := burstConnect(s.lab.Client, netip.MustParseAddrPort(s.vip), n, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var accepted []net.Conn
	refused, slow := 0, 0
	var others []error
	var slowest time.Duration
	for _, r := range res {
		switch {
		case r.err == nil:
			accepted = append(accepted, r.conn)
		case errors.Is(r.err, syscall.ECONNREFUSED):
			refused++
			slowest = max(slowest, r.took)
			if r.took > 100*time.Millisecond {
				slow++
			}
		default:
			others = append(others, r.err)
		}
	}
	defer func() {
		for _, c := range accepted {
			c.Close()
		}
	}()
	t.Logf("accepted %d, refused %d (slowest refusal %v, %d after more than 100 ms), other errors %d; ring drops %v",
		len(accepted), refused, slowest.Round(time.Microsecond), slow, len(others), s.metric(t, "rawlb_ring_drops_total"))
	if len(others) > 0 {
		t.Errorf("%d connects failed otherwise, first: %v", len(others), others[0])
	}
	if len(accepted) != 1000 || refused != n-1000 {
		t.Errorf("accepted %d and refused %d of %d, want exactly the capacity 1000 accepted and the rest refused", len(accepted), refused, n)
	}
	if slow > 0 {
		t.Errorf("%d refusals took more than 100 ms (a SYN lost and retransmitted)", slow)
	}
	if d := s.metric(t, "rawlb_ring_drops_total"); d != 0 {
		t.Errorf("%v frames dropped by the receive rings", d)
	}
	// Every accepted connection works: a greeting from its backend.
	var wg sync.WaitGroup
	var bad atomic.Int64
	for _, c := range accepted {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := netlab.Hello(c); err != nil {
				bad.Add(1)
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d accepted connections timed out or failed", bad.Load())
	}
}

// burstResult is one connect of burstConnect.
type burstResult struct {
	conn net.Conn
	err  error
	took time.Duration
}

// burstConnect starts n non-blocking connects to dst from h at once, from
// one thread in h's namespace, and waits up to limit for each to be
// connected or refused.
func burstConnect(h *netlab.Host, dst netip.AddrPort, n int, limit time.Duration) ([]burstResult, error) {
	out := make([]burstResult, n)
	err := netlab.InNetNS(h.Name, func() error {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return err
		}
		defer unix.Close(ep)
		sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		fds := make([]int, n)
		starts := make([]time.Time, n)
		for i := range fds {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds[i] = fd
		}
		for i, fd := range fds {
			starts[i] = time.Now()
			if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
				out[i].err = err
				continue
			}
			ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLERR | unix.EPOLLHUP, Fd: int32(i)}
			if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
				return err
			}
		}
		left := n
		deadline := time.Now().Add(limit)
		events := make([]unix.EpollEvent, 256)
		for left > 0 {
			ms := int(time.Until(deadline).Milliseconds())
			if ms <= 0 {
				break
			}
			k, err := unix.EpollWait(ep, events, ms)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			now := time.Now()
			for _, e := range events[:k] {
				i := int(e.Fd)
				fd := fds[i]
				_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil)
				out[i].took = now.Sub(starts[i])
				if soerr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); soerr != 0 {
					out[i].err = syscall.Errno(soerr)
				}
				left--
			}
		}
		for i, fd := range fds {
			if out[i].err == nil && out[i].took == 0 {
				out[i].err = fmt.Errorf("no answer within %v", limit)
			}
			if out[i].err != nil {
				unix.Close(fd)
				continue
			}
			f := os.NewFile(uintptr(fd), "burst")
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				out[i].err = err
				continue
			}
			out[i].conn = c
		}
		return nil
	})
	return out, err
}
