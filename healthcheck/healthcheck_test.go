package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// script is an injected Dial whose answer per backend the test sets before
// each round; a failing answer carries a numbered error so tests can tell
// which failure an Event reports.
type script struct {
	mu    sync.Mutex
	up    map[string]bool
	calls map[string]int
}

func newScript() *script {
	return &script{up: map[string]bool{}, calls: map[string]int{}}
}

func (s *script) set(addr string, up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.up[addr] = up
}

func (s *script) dial(ctx context.Context, addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[addr]++
	if s.up[addr] {
		return nil
	}
	return fmt.Errorf("%s: failure %d", addr, s.calls[addr])
}

// recorder collects events, and results per backend.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	results map[int][]bool
}

func (r *recorder) attach(c *Checker) {
	r.results = map[int][]bool{}
	c.OnChange(func(e Event) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.events = append(r.events, e)
	})
	c.OnResult(func(i int, ok bool, d time.Duration) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if d < 0 {
			panic(fmt.Sprintf("negative check duration %v", d))
		}
		r.results[i] = append(r.results[i], ok)
	})
}

// take returns the events so far and forgets them.
func (r *recorder) take() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

func newChecker(t *testing.T, addrs []string, cfg Config) (*Checker, *script, *recorder) {
	t.Helper()
	s := newScript()
	if cfg.Dial == nil {
		cfg.Dial = s.dial
	}
	c, err := New(addrs, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r := &recorder{}
	r.attach(c)
	return c, s, r
}

func TestNewValidates(t *testing.T) {
	addrs := []string{"198.18.0.10:80"}
	tests := []struct {
		name  string
		addrs []string
		cfg   Config
		want  string
	}{
		{"no backends", nil, Config{}, "no backends"},
		{"bad address", []string{"198.18.0.10:80", "198.18.0.11"}, Config{}, `backend 1: "198.18.0.11" is not host:port`},
		{"negative interval", addrs, Config{Interval: -time.Second}, "interval -1s is negative"},
		{"negative timeout", addrs, Config{Timeout: -time.Second}, "timeout -1s is negative"},
		{"timeout over interval", addrs, Config{Interval: time.Second, Timeout: 2 * time.Second}, "timeout 2s exceeds interval 1s"},
		{"negative rise", addrs, Config{Rise: -1}, "rise -1"},
		{"negative fall", addrs, Config{Fall: -2}, "fall -2"},
	}
	for _, tt := range tests {
		_, err := New(tt.addrs, tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestNewDefaults(t *testing.T) {
	c, err := New([]string{"198.18.0.10:80"}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.Interval != 2*time.Second || c.cfg.Timeout != time.Second || c.cfg.Rise != 2 || c.cfg.Fall != 3 || c.cfg.Dial == nil {
		t.Errorf("defaults = %+v, want interval 2s, timeout 1s, rise 2, fall 3, a dialer", c.cfg)
	}
	// A short interval alone lowers the default timeout instead of failing.
	c, err = New([]string{"198.18.0.10:80"}, Config{Interval: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("New with only Interval 300ms: %v", err)
	}
	if c.cfg.Timeout != 300*time.Millisecond {
		t.Errorf("timeout with interval 300ms = %v, want 300ms", c.cfg.Timeout)
	}
}

// TestInitialState: before any check every backend is down; the first
// round sets each state directly from its result, whatever Rise and Fall
// say, with one event per backend.
func TestInitialState(t *testing.T) {
	addrs := []string{"198.18.0.10:80", "198.18.0.11:80", "198.18.0.12:80"}
	c, s, r := newChecker(t, addrs, Config{Rise: 5, Fall: 5})
	for i := range addrs {
		if c.Healthy(i) {
			t.Errorf("backend %d healthy before any check", i)
		}
	}
	s.set(addrs[0], true)
	s.set(addrs[2], true)
	c.CheckOnce(context.Background())

	want := []bool{true, false, true}
	for i, w := range want {
		if c.Healthy(i) != w {
			t.Errorf("after first round Healthy(%d) = %v, want %v", i, c.Healthy(i), w)
		}
	}
	if c.HealthyCount() != 2 {
		t.Errorf("HealthyCount() = %d, want 2", c.HealthyCount())
	}
	ev := r.take()
	slices.SortFunc(ev, func(a, b Event) int { return a.Backend - b.Backend })
	if len(ev) != 3 {
		t.Fatalf("first round gave %d events, want 3: %v", len(ev), ev)
	}
	for i, e := range ev {
		if e.Backend != i || e.Addr != addrs[i] || e.Up != want[i] {
			t.Errorf("event %d = %+v, want backend %d (%s) up=%v", i, e, i, addrs[i], want[i])
		}
		if e.Up != (e.Err == nil) {
			t.Errorf("event %+v: Err must be set exactly when going down", e)
		}
	}

	// The second round agrees: nothing changes, nothing fires.
	c.CheckOnce(context.Background())
	if ev := r.take(); len(ev) != 0 {
		t.Errorf("unchanged second round fired %v", ev)
	}
}

// TestFallAndRise walks one backend through a scripted history and checks
// the state after every round and the complete event list.
func TestFallAndRise(t *testing.T) {
	addr := "198.18.0.10:80"
	c, s, r := newChecker(t, []string{addr}, Config{Rise: 2, Fall: 3})
	rounds := []struct {
		ok   bool
		want bool // Healthy after the round
	}{
		{true, true},   // first round: up directly
		{false, true},  // 1 failure
		{false, true},  // 2 failures
		{true, true},   // success resets the count
		{false, true},  // 1
		{false, true},  // 2
		{false, false}, // 3: down (check 7)
		{false, false},
		{true, false},  // 1 success
		{false, false}, // failure resets
		{true, false},  // 1
		{true, true},   // 2: up
		{true, true},
	}
	for n, rd := range rounds {
		s.set(addr, rd.ok)
		c.CheckOnce(context.Background())
		if got := c.Healthy(0); got != rd.want {
			t.Fatalf("round %d (ok=%v): Healthy = %v, want %v", n+1, rd.ok, got, rd.want)
		}
	}
	ev := r.take()
	if len(ev) != 3 || !ev[0].Up || ev[1].Up || !ev[2].Up {
		t.Fatalf("events = %v, want up, down, up", ev)
	}
	if ev[1].Err == nil || ev[1].Err.Error() != addr+": failure 7" {
		t.Errorf("down event Err = %v, want the failure that crossed Fall (%s: failure 7)", ev[1].Err, addr)
	}
	if got := len(r.results[0]); got != len(rounds) {
		t.Errorf("OnResult called %d times, want once per check (%d)", got, len(rounds))
	}
}

// TestFlapping: a backend that alternates never builds a streak, so it
// keeps the state its first check gave it and fires nothing more.
func TestFlapping(t *testing.T) {
	addrs := []string{"198.18.0.10:80", "198.18.0.11:80"}
	c, s, r := newChecker(t, addrs, Config{Rise: 2, Fall: 2})
	s.set(addrs[0], true) // starts up
	c.CheckOnce(context.Background())
	r.take()
	for n := 0; n < 20; n++ {
		// Opposite phases: backend 0 fails when 1 succeeds.
		s.set(addrs[0], n%2 == 1)
		s.set(addrs[1], n%2 == 0)
		c.CheckOnce(context.Background())
		if !c.Healthy(0) || c.Healthy(1) {
			t.Fatalf("round %d: flapping changed state: Healthy = %v, %v; want true, false", n, c.Healthy(0), c.Healthy(1))
		}
	}
	if ev := r.take(); len(ev) != 0 {
		t.Errorf("flapping fired %v", ev)
	}
}

// TestRiseFallOne: with Rise and Fall 1 every change of result is a
// transition, each reported once.
func TestRiseFallOne(t *testing.T) {
	addr := "198.18.0.10:80"
	c, s, r := newChecker(t, []string{addr}, Config{Rise: 1, Fall: 1})
	results := []bool{false, true, true, false, false, true}
	var want []bool
	prev := !results[0]
	for _, ok := range results {
		s.set(addr, ok)
		c.CheckOnce(context.Background())
		if ok != prev {
			want = append(want, ok)
		}
		prev = ok
	}
	var got []bool
	for _, e := range r.take() {
		got = append(got, e.Up)
	}
	if !slices.Equal(got, want) {
		t.Errorf("transitions = %v, want %v", got, want)
	}
}

// TestTimeout: Dial gets a context with the Timeout deadline, and a dial
// that runs into it is a failure carrying context.DeadlineExceeded.
func TestTimeout(t *testing.T) {
	const timeout = 20 * time.Millisecond
	var sawDeadline atomic.Bool
	var badDeadline atomic.Value
	hang := func(ctx context.Context, addr string) error {
		dl, ok := ctx.Deadline()
		// Only an upper bound: the goroutine may start late on a busy machine.
		if left := time.Until(dl); ok && left <= timeout {
			sawDeadline.Store(true)
		} else {
			badDeadline.Store(fmt.Sprintf("deadline set %v, %v left", ok, left))
		}
		<-ctx.Done()
		return ctx.Err()
	}
	c, _, r := newChecker(t, []string{"198.18.0.10:80"}, Config{Interval: time.Second, Timeout: timeout, Dial: hang})
	c.CheckOnce(context.Background())
	if !sawDeadline.Load() {
		t.Errorf("Dial's context: %v, want a deadline within the %v timeout", badDeadline.Load(), timeout)
	}
	ev := r.take()
	if len(ev) != 1 || ev[0].Up || !errors.Is(ev[0].Err, context.DeadlineExceeded) {
		t.Errorf("events = %v, want one down event with context.DeadlineExceeded", ev)
	}
}

// TestLateSuccessIsTimeout: a Dial that ignores its deadline and reports
// success after it has passed still counts as a timeout.
func TestLateSuccessIsTimeout(t *testing.T) {
	late := func(ctx context.Context, addr string) error {
		<-ctx.Done()
		return nil
	}
	c, _, r := newChecker(t, []string{"198.18.0.10:80"}, Config{Interval: time.Second, Timeout: time.Millisecond, Dial: late})
	c.CheckOnce(context.Background())
	if c.Healthy(0) {
		t.Error("backend up after a check that exceeded its timeout")
	}
	if ev := r.take(); len(ev) != 1 || !errors.Is(ev[0].Err, context.DeadlineExceeded) {
		t.Errorf("events = %v, want one down event with context.DeadlineExceeded", ev)
	}
}

// TestShutdownDoesNotCount: a check cut short because the caller's context
// ended says nothing about the backend and must not take it down.
func TestShutdownDoesNotCount(t *testing.T) {
	addr := "198.18.0.10:80"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelNext atomic.Bool
	dial := func(dctx context.Context, _ string) error {
		if cancelNext.Load() {
			cancel() // shutdown arrives while the check is in flight
			<-dctx.Done()
			return dctx.Err()
		}
		return nil
	}
	c, _, r := newChecker(t, []string{addr}, Config{Rise: 1, Fall: 1, Dial: dial})
	c.CheckOnce(ctx)
	r.take()
	cancelNext.Store(true)
	c.CheckOnce(ctx)
	if !c.Healthy(0) {
		t.Error("backend went down because of shutdown")
	}
	if ev := r.take(); len(ev) != 0 {
		t.Errorf("shutdown fired %v", ev)
	}
	if n := len(r.results[0]); n != 1 {
		t.Errorf("OnResult called %d times, want 1 (the cancelled check is not a result)", n)
	}
	// And once ctx is done no check starts at all.
	c.CheckOnce(ctx)
	if n := len(r.results[0]); n != 1 {
		t.Errorf("OnResult called %d times after cancel, want still 1", n)
	}
}

// TestCheckOnceIsParallel: every backend's check must be in flight at the
// same time; a sequential round would never get past the barrier.
func TestCheckOnceIsParallel(t *testing.T) {
	const n = 8
	var entered atomic.Int32
	all := make(chan struct{})
	dial := func(ctx context.Context, addr string) error {
		if entered.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("not all %d checks ran at once: %w", n, ctx.Err())
		}
	}
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.0.%d:80", 10+i)
	}
	c, _, r := newChecker(t, addrs, Config{Interval: time.Minute, Timeout: time.Minute, Dial: dial})
	c.CheckOnce(context.Background())
	// CheckOnce waited for all of them.
	if c.HealthyCount() != n {
		t.Errorf("HealthyCount() = %d after CheckOnce, want %d; events %v", c.HealthyCount(), n, r.take())
	}
}

// TestRunSlowBackendDoesNotDelayOthers: while backend 1's check hangs,
// backend 0 keeps being checked on its own schedule; and Run returns once
// its context is done and in-flight checks finish.
func TestRunSlowBackendDoesNotDelayOthers(t *testing.T) {
	addrs := []string{"198.18.0.10:80", "198.18.0.11:80"}
	release := make(chan struct{})
	var slowCalls atomic.Int32
	dial := func(ctx context.Context, addr string) error {
		// The slow backend answers its first check (the initial round) and
		// then hangs, ignoring its deadline, until the test releases it.
		if addr == addrs[1] && slowCalls.Add(1) > 1 {
			<-release
		}
		return nil
	}
	c, err := New(addrs, Config{Interval: time.Millisecond, Timeout: time.Millisecond, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	const want = 20
	fastChecks := make(chan struct{}, want)
	var fast atomic.Int32
	c.OnResult(func(i int, ok bool, d time.Duration) {
		if i == 0 && fast.Add(1) <= want {
			fastChecks <- struct{}{}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.Run(ctx)
		close(done)
	}()
	for range want {
		<-fastChecks
	}
	if n := slowCalls.Load(); n > 2 {
		t.Errorf("slow backend checked %d times while its check hung", n)
	}
	close(release)
	cancel()
	<-done
	// Run has returned: no more checks, so no more results.
	after := fast.Load()
	c.CheckOnce(ctx) // ctx is done: starts nothing
	if fast.Load() != after {
		t.Error("a check ran after Run returned with its context done")
	}
}

func TestHealthyIsCheap(t *testing.T) {
	c, s, _ := newChecker(t, []string{"198.18.0.10:80", "198.18.0.11:80"}, Config{})
	s.set("198.18.0.10:80", true)
	c.CheckOnce(context.Background())
	var sink bool
	allocs := testing.AllocsPerRun(1000, func() {
		sink = c.Healthy(0) && !c.Healthy(1)
	})
	if allocs != 0 {
		t.Errorf("Healthy allocates %v times per call, want 0", allocs)
	}
	if !sink {
		t.Error("Healthy(0), Healthy(1) = not (true, false)")
	}
	for _, i := range []int{-1, 2, 1 << 40} {
		if c.Healthy(i) {
			t.Errorf("Healthy(%d) out of range = true, want false", i)
		}
	}
}

func BenchmarkHealthy(b *testing.B) {
	c, err := New([]string{"198.18.0.10:80"}, Config{Dial: func(context.Context, string) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	c.CheckOnce(context.Background())
	b.ReportAllocs()
	for b.Loop() {
		if !c.Healthy(0) {
			b.Fatal("down")
		}
	}
}

// TestDefaultDialer checks the real TCP connect against a listener and a
// closed port on loopback.
func TestDefaultDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A port that was just free: bind it, then close. Nothing else on a
	// test machine picks this exact port in the meantime in practice.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	c, err := New([]string{ln.Addr().String(), closedAddr}, Config{Interval: 10 * time.Second, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var r recorder
	r.attach(c)
	c.CheckOnce(context.Background())
	if !c.Healthy(0) {
		t.Errorf("listener %s reported down: %v", ln.Addr(), r.take())
	}
	if c.Healthy(1) {
		t.Errorf("closed port %s reported up", closedAddr)
	}
	for _, e := range r.take() {
		if e.Backend == 1 && !errors.Is(e.Err, syscall.ECONNREFUSED) {
			t.Errorf("closed port event Err = %v, want connection refused", e.Err)
		}
	}
}
