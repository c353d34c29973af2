package healthcheck

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds, failing the test after a generous
// bound (the machine is shared and slow; the bound is not a measurement).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// startRun runs c.Run until the test ends.
func startRun(t *testing.T, c *Checker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, "Run to start", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.runCtx != nil
	})
}

// nextDue is when target id's next scheduled check is due.
func nextDue(c *Checker, id uint32) time.Time {
	t := (*c.index.Load())[id]
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.next
}

// TestSetAddUnderRun: a target added while Run runs starts down, is first
// checked within a tenth of its interval, and its first result decides.
func TestSetAddUnderRun(t *testing.T) {
	long := Check{Interval: time.Hour, Timeout: time.Second, Rise: 3, Fall: 3}
	c, s, r := newChecker(t, Config{}, tcpTargets(long, "198.18.0.10:80")...)
	s.set("198.18.0.10:80", true)
	s.set("198.18.0.11:80", true)
	c.CheckOnce(context.Background())
	r.take()
	startRun(t, c)

	short := Check{Interval: time.Second, Timeout: time.Second, Rise: 3, Fall: 3}
	added := time.Now()
	if err := c.Set([]Target{
		{ID: 1, Name: "svc/b1", Addr: "198.18.0.10:80", Check: long},
		{ID: 2, Name: "svc/b2", Addr: "198.18.0.11:80", Check: short},
	}); err != nil {
		t.Fatal(err)
	}
	if c.Healthy(2) {
		t.Error("a new target is up before its first check")
	}
	if due := nextDue(c, 2); due.Sub(added) >= short.Interval/10 {
		t.Errorf("new target's first check due %v after Set, want within %v", due.Sub(added), short.Interval/10)
	}
	waitFor(t, "the new target's first result", func() bool { return r.nresults(2) > 0 })
	if !c.Healthy(2) {
		t.Error("new target not up after one passing check (the first result decides, whatever Rise says)")
	}
	if ev := r.take(); len(ev) != 1 || ev[0].ID != 2 || !ev[0].Up {
		t.Errorf("events = %v, want one: target 2 up", ev)
	}
	if n := s.count("198.18.0.10:80"); n != 1 {
		t.Errorf("the unchanged target was checked %d times, want only by CheckOnce (its interval is 1h)", n)
	}
}

// TestSetUnchangedKeepsState: Set with the same ID, Addr and Check keeps
// the state, the count towards Fall and the schedule; a new Name only
// changes what events say.
func TestSetUnchangedKeepsState(t *testing.T) {
	ck := Check{Interval: time.Hour, Timeout: time.Second, Rise: 2, Fall: 2}
	addr := "198.18.0.10:80"
	c, s, r := newChecker(t, Config{}, tcpTargets(ck, addr)...)
	s.set(addr, true)
	c.CheckOnce(context.Background())
	s.set(addr, false)
	c.CheckOnce(context.Background()) // one failure of two
	r.take()
	before := nextDue(c, 1)
	_, since, _, _ := c.Status(1)
	startRun(t, c)

	for i := range 50 {
		// The address written differently is the same address.
		a := addr
		if i%2 == 1 {
			a = "198.18.0.10:0080"
		}
		if err := c.Set([]Target{{ID: 1, Name: fmt.Sprintf("svc/renamed-%d", i), Addr: a, Check: ck}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := nextDue(c, 1); !got.Equal(before) {
		t.Errorf("next check moved from %v to %v by unchanged Sets", before, got)
	}
	if up, s2, _, _ := c.Status(1); !up || !s2.Equal(since) {
		t.Errorf("Status after unchanged Sets: up=%v since %v; want up since %v", up, s2, since)
	}
	if n := s.count(addr); n != 2 {
		t.Errorf("target checked %d times, want 2 (unchanged Sets start no check)", n)
	}
	// The failure counted before the Sets still counts: one more is Fall.
	c.CheckOnce(context.Background())
	ev := r.take()
	if len(ev) != 1 || ev[0].Up || ev[0].Name != "svc/renamed-49" {
		t.Errorf("events = %v, want one: svc/renamed-49 down (the streak survived the Sets)", ev)
	}
}

// TestSetChangeKeepsStateUntilDecided: a changed address or check keeps the
// current state, restarts the count, and the new checks decide with the
// new Rise and Fall.
func TestSetChangeKeepsStateUntilDecided(t *testing.T) {
	old, moved := "198.18.0.10:80", "198.18.0.20:80"
	ck := Check{Interval: time.Hour, Timeout: time.Second, Rise: 2, Fall: 3}
	c, s, r := newChecker(t, Config{}, tcpTargets(ck, old)...)
	s.set(old, true)
	c.CheckOnce(context.Background())
	s.set(old, false)
	c.CheckOnce(context.Background())
	c.CheckOnce(context.Background()) // two failures of three
	r.take()
	_, since, _, _ := c.Status(1)

	// A new Fall restarts the count: two more failures, not one.
	ck.Fall = 2
	set := func(addr string) {
		t.Helper()
		if err := c.Set([]Target{{ID: 1, Name: "svc/b1", Addr: addr, Check: ck}}); err != nil {
			t.Fatal(err)
		}
	}
	set(old)
	if up, s2, _, _ := c.Status(1); !up || !s2.Equal(since) {
		t.Fatalf("after changing Fall: up=%v since %v, want still up since %v", up, s2, since)
	}
	c.CheckOnce(context.Background())
	if !c.Healthy(1) {
		t.Fatal("down after one failure under the new check: the old count was kept")
	}
	// A new address restarts it again, and its checks go to the new address.
	set(moved)
	if !c.Healthy(1) {
		t.Fatal("a changed target lost its state before any new check")
	}
	c.CheckOnce(context.Background())
	if !c.Healthy(1) || s.count(moved) != 1 {
		t.Fatalf("after one failure at the new address: Healthy=%v, %d checks of %s; want up, 1", c.Healthy(1), s.count(moved), moved)
	}
	c.CheckOnce(context.Background())
	ev := r.take()
	if c.Healthy(1) || len(ev) != 1 || ev[0].Up || ev[0].Addr != moved || ev[0].Err.Error() != "connect: "+moved+": failure 2" {
		t.Errorf("after two failures at %s: Healthy=%v, events %v; want down, one event for the new address", moved, c.Healthy(1), ev)
	}
	if n := s.count(old); n != 4 {
		t.Errorf("old address checked %d times, want 4 (none after the move)", n)
	}
}

// TestSetChangeCancelsInFlight: a check of the old address in flight when
// Set changes the target is cancelled and its result dropped; the next
// check goes to the new address within a tenth of the interval.
func TestSetChangeCancelsInFlight(t *testing.T) {
	old, moved := "198.18.0.10:80", "198.18.0.20:80"
	entered := make(chan struct{}, 1)
	var oldCancelled atomic.Bool
	s := newScript()
	s.set(moved, true)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != old {
			return s.dial(ctx, network, addr)
		}
		entered <- struct{}{}
		<-ctx.Done()
		oldCancelled.Store(ctx.Err() == context.Canceled)
		a, b := net.Pipe() // a late "success" that must not count
		b.Close()
		return a, nil
	}
	ck := Check{Interval: 2 * time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 1}
	c, _, r := newChecker(t, Config{Dialer: dial}, tcpTargets(ck, old)...)
	startRun(t, c)
	<-entered // the first check of the old address hangs
	if err := c.Set(tcpTargets(ck, moved)); err != nil {
		t.Fatal(err)
	}
	// Cancelled, not timed out: the wait is far below the 2 s timeout.
	waitFor(t, "Set to cancel the old address's check", oldCancelled.Load)
	waitFor(t, "a result for the new address", func() bool { return r.nresults(1) > 0 })
	ev := r.take()
	if r.nresults(1) != 1 || len(ev) != 1 || ev[0].Addr != moved || !ev[0].Up {
		t.Errorf("results %d, events %v; want one, from the new address (the old check's result dropped)", r.nresults(1), ev)
	}
}

// TestSetRemove: removing a target mid-check cancels the check (its socket
// closes at once), ends its goroutine, makes Healthy and Status forget it,
// and no callback for it follows Set's return.
func TestSetRemove(t *testing.T) {
	// A real server that reads and never answers, so the check hangs on
	// Expect until Set cancels it; the server sees the close.
	accepted := make(chan struct{}, 1)
	closed := make(chan time.Time, 1)
	addr := serve(t, func(conn net.Conn) {
		select { // only the first connection is watched
		case accepted <- struct{}{}:
		default:
		}
		io.Copy(io.Discard, conn)
		select {
		case closed <- time.Now():
		default:
		}
	})
	s := newScript()
	s.set("198.18.0.10:80", true)
	dial := func(ctx context.Context, network, a string) (net.Conn, error) {
		if a == addr {
			var d net.Dialer
			return d.DialContext(ctx, network, a)
		}
		return s.dial(ctx, network, a)
	}
	var removed atomic.Bool
	var late atomic.Value
	var results atomic.Int32
	c := New(Config{
		Dialer: dial,
		OnResult: func(id uint32, ok bool, d time.Duration) {
			results.Add(1)
			if removed.Load() && id == 2 {
				late.Store(fmt.Sprintf("OnResult(%d, %v) after Set removed it", id, ok))
			}
		},
		OnChange: func(e Event) {
			if removed.Load() && e.ID == 2 {
				late.Store(fmt.Sprintf("OnChange(%v) after Set removed it", e))
			}
		},
	})
	keep := Target{ID: 1, Name: "svc/keep", Addr: "198.18.0.10:80", Check: Check{Interval: 10 * time.Millisecond, Timeout: 10 * time.Millisecond}}
	hang := Target{ID: 2, Name: "svc/hang", Addr: addr, Check: Check{Interval: time.Minute, Timeout: time.Minute, Expect: "never"}}
	if err := c.Set([]Target{keep, hang}); err != nil {
		t.Fatal(err)
	}
	startRun(t, c)
	waitFor(t, "two Run goroutines", func() bool { return c.live.Load() == 2 })
	// Run's first check of the hanging target is due only within 6 s (a
	// tenth of its interval); CheckOnce starts one now.
	checked := make(chan struct{})
	go func() {
		c.CheckOnce(context.Background())
		close(checked)
	}()
	<-accepted

	setAt := time.Now()
	if err := c.Set([]Target{keep}); err != nil {
		t.Fatal(err)
	}
	removed.Store(true)
	if c.Healthy(2) {
		t.Error("Healthy(removed) = true")
	}
	if _, _, _, ok := c.Status(2); ok {
		t.Error("Status(removed) ok = true")
	}
	// The check's socket closes long before its 1 minute timeout.
	if d := (<-closed).Sub(setAt); d > 10*time.Second {
		t.Errorf("the removed target's connection closed %v after Set", d)
	}
	<-checked // the cancelled check let CheckOnce return
	waitFor(t, "the removed target's goroutine to end", func() bool { return c.live.Load() == 1 })
	// The kept target goes on being checked.
	n := results.Load()
	waitFor(t, "more checks of the kept target", func() bool { return results.Load() > n+5 })
	if v := late.Load(); v != nil {
		t.Error(v)
	}
}

// TestSetWaitsForReport: a Set that removes a target whose OnChange is
// running returns only after it has returned, so "no event after removal"
// holds even for an event already under way.
func TestSetWaitsForReport(t *testing.T) {
	inCallback := make(chan struct{})
	release := make(chan struct{})
	cfg := Config{OnChange: func(Event) {
		close(inCallback)
		<-release
	}}
	s := newScript()
	s.set("198.18.0.10:80", true)
	cfg.Dialer = s.dial
	c := New(cfg)
	if err := c.Set(tcpTargets(Check{}, "198.18.0.10:80")); err != nil {
		t.Fatal(err)
	}
	checked := make(chan struct{})
	go func() {
		c.CheckOnce(context.Background())
		close(checked)
	}()
	<-inCallback
	setDone := make(chan struct{})
	go func() {
		c.Set(nil)
		close(setDone)
	}()
	select {
	case <-setDone:
		t.Fatal("Set returned while an OnChange for the target it removed was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-setDone
	<-checked
	// Gone: a further round checks nothing.
	c.CheckOnce(context.Background())
	if n := s.count("198.18.0.10:80"); n != 1 {
		t.Errorf("removed target checked %d times, want 1", n)
	}
}

// TestReAddStartsFresh: an ID removed and added again is a new target: it
// starts down and its first result decides.
func TestReAddStartsFresh(t *testing.T) {
	addr := "198.18.0.10:80"
	c, s, r := newChecker(t, Config{}, tcpTargets(Check{Rise: 3}, addr)...)
	s.set(addr, true)
	c.CheckOnce(context.Background())
	c.Set(nil)
	c.Set(tcpTargets(Check{Rise: 3}, addr))
	if c.Healthy(1) {
		t.Error("re-added target is up before its first check")
	}
	c.CheckOnce(context.Background())
	if ev := r.take(); len(ev) != 2 || !ev[1].Up || !c.Healthy(1) {
		t.Errorf("events %v, Healthy %v; want a first-result up event for each incarnation", ev, c.Healthy(1))
	}
}

// TestChecksNeverOverlap: Run's schedule, CheckOnce rounds and Sets that
// change the check all at once never run two checks of one target at the
// same time.
func TestChecksNeverOverlap(t *testing.T) {
	const n = 4
	var mu sync.Mutex
	inFlight := map[string]int{}
	var overlap atomic.Value
	var checks atomic.Int32
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		mu.Lock()
		inFlight[addr]++
		if inFlight[addr] > 1 {
			overlap.Store(addr)
		}
		mu.Unlock()
		checks.Add(1)
		select { // hold the check a little, or until cancelled
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
		}
		mu.Lock()
		inFlight[addr]--
		mu.Unlock()
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.0.%d:80", 10+i)
	}
	c, _, _ := newChecker(t, Config{Dialer: dial}, tcpTargets(Check{Interval: 2 * time.Millisecond, Timeout: 2 * time.Millisecond}, addrs...)...)
	startRun(t, c)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for range 50 {
				c.CheckOnce(context.Background())
			}
		})
	}
	wg.Go(func() {
		for i := range 100 {
			// Alternate the timeout: a changed check, each time.
			c.Set(tcpTargets(Check{Interval: 2 * time.Millisecond, Timeout: time.Duration(1+i%2) * time.Millisecond}, addrs...))
		}
	})
	wg.Wait()
	if v := overlap.Load(); v != nil {
		t.Errorf("two checks of %v ran at once", v)
	}
	if checks.Load() < 150*n {
		t.Errorf("only %d checks ran", checks.Load())
	}
}

// TestCheckOnceSlowServers: a round over many targets that each take 200 ms
// to answer takes about 200 ms, not the sum; the bound is half the sum, so
// only a sequential round fails it.
func TestCheckOnceSlowServers(t *testing.T) {
	const n, delay = 20, 200 * time.Millisecond
	addr := serve(t, func(conn net.Conn) {
		time.Sleep(delay)
		io.WriteString(conn, "+OK\r\n")
	})
	targets := make([]Target, n)
	for i := range targets {
		targets[i] = Target{ID: uint32(i + 1), Name: fmt.Sprintf("svc/slow%d", i), Addr: addr, Check: Check{Timeout: 5 * time.Second, Interval: 10 * time.Second, Expect: "+OK"}}
	}
	c := New(Config{})
	if err := c.Set(targets); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.CheckOnce(context.Background())
	took := time.Since(start)
	for i := range targets {
		if up, _, err, _ := c.Status(uint32(i + 1)); !up {
			t.Errorf("target %d down: %v", i+1, err)
		}
	}
	if took < delay || took > n*delay/2 {
		t.Errorf("CheckOnce over %d targets answering after %v took %v, want about %v (under %v)", n, delay, took, delay, n*delay/2)
	}
	t.Logf("CheckOnce over %d targets answering after %v: %v", n, delay, took)
}

// TestRunSpreadsChecks: many targets added at once are not all checked in
// the same instant: their first checks spread over the jitter window.
func TestRunSpreadsChecks(t *testing.T) {
	const n = 50
	var mu sync.Mutex
	first := map[string]time.Time{}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		mu.Lock()
		if _, ok := first[addr]; !ok {
			first[addr] = time.Now()
		}
		mu.Unlock()
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	c := New(Config{Dialer: dial})
	startRun(t, c)
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.1.%d:80", 10+i)
	}
	if err := c.Set(tcpTargets(Check{Interval: time.Second, Timeout: time.Second}, addrs...)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every first check", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(first) == n
	})
	var lo, hi time.Time
	for _, at := range first {
		if lo.IsZero() || at.Before(lo) {
			lo = at
		}
		if at.After(hi) {
			hi = at
		}
	}
	// 50 uniform draws over 100 ms span nearly all of it; 20 ms is far
	// below what chance gives, and a slow machine only spreads them more.
	if spread := hi.Sub(lo); spread < 20*time.Millisecond {
		t.Errorf("first checks of %d targets spread over %v, want them spread over the 100 ms jitter window", n, spread)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("counting sockets needs /proc: %v", err)
	}
	return len(ents)
}

// TestNoLeaks: many Sets that add, change and remove tcp and http targets
// under Run, against real servers, leave no socket and no goroutine behind
// once Run has returned.
func TestNoLeaks(t *testing.T) {
	tcpAddr := serve(t, func(conn net.Conn) {
		buf := make([]byte, 16)
		conn.Read(buf)
		io.WriteString(conn, "+PONG\r\n")
		io.Copy(io.Discard, conn)
	})
	httpSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "slow") {
			<-r.Context().Done()
		}
	}))
	defer httpSrv.Close()
	httpAddr := strings.TrimPrefix(httpSrv.URL, "http://")
	refused := closedPort(t)

	// Settle the servers' own goroutines first.
	runtime.GC()
	baseFDs, baseG := openFDs(t), runtime.NumGoroutine()

	var results atomic.Int64
	c := New(Config{OnResult: func(uint32, bool, time.Duration) { results.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.Run(ctx)
		close(done)
	}()
	kinds := []Check{
		{Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond, Send: "PING\r\n", Expect: "+PONG"},
		{Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond, Expect: "never"}, // times out
		{Kind: HTTP, Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond},
		{Kind: HTTP, Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond, Path: "/slow"}, // times out
	}
	for round := range 200 {
		var targets []Target
		for id := range 12 {
			if (id+round)%5 == 0 {
				continue // removed this round, back the next
			}
			ck := kinds[(id+round/3)%len(kinds)]
			addr := tcpAddr
			if ck.Kind == HTTP {
				addr = httpAddr
			}
			if id == 11 {
				addr = refused
			}
			targets = append(targets, Target{ID: uint32(id), Name: fmt.Sprintf("svc/b%d", id), Addr: addr, Check: ck})
		}
		if err := c.Set(targets); err != nil {
			t.Fatal(err)
		}
		if round%20 == 0 {
			c.CheckOnce(ctx)
		}
		time.Sleep(time.Millisecond)
	}
	c.Set(nil)
	cancel()
	<-done
	if results.Load() < 200 {
		t.Errorf("only %d checks ran", results.Load())
	}
	if n := c.live.Load(); n != 0 {
		t.Errorf("%d Run goroutines left after Run returned", n)
	}
	// Server-side handlers end when they see the checks' closes.
	waitFor(t, "sockets back to the baseline", func() bool { return openFDs(t) <= baseFDs })
	waitFor(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseG })
	t.Logf("%d checks; fds %d, goroutines %d after (baseline %d, %d)", results.Load(), openFDs(t), runtime.NumGoroutine(), baseFDs, baseG)
}
