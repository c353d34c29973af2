package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// script is an injected Dialer whose answer per address the test sets
// before each round; a failing answer carries a numbered error so tests can
// tell which failure an Event reports. A passing dial returns one end of a
// net.Pipe, so the tcp check that follows runs for real.
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

func (s *script) count(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[addr]
}

func (s *script) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" {
		return nil, fmt.Errorf("network %q, want tcp", network)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[addr]++
	if s.up[addr] {
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	return nil, fmt.Errorf("%s: failure %d", addr, s.calls[addr])
}

// recorder collects events, and results per target.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	results map[uint32][]bool
}

func newRecorder() *recorder { return &recorder{results: map[uint32][]bool{}} }

// attach points cfg's callbacks at r.
func (r *recorder) attach(cfg *Config) {
	cfg.OnChange = func(e Event) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.events = append(r.events, e)
	}
	cfg.OnResult = func(id uint32, ok bool, d time.Duration) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if d < 0 {
			panic(fmt.Sprintf("negative check duration %v", d))
		}
		r.results[id] = append(r.results[id], ok)
	}
}

// take returns the events so far and forgets them.
func (r *recorder) take() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// nresults is how many results target id has had.
func (r *recorder) nresults(id uint32) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.results[id])
}

// newChecker returns a Checker over a script (unless cfg has a Dialer) with
// a recorder attached and the given targets set.
func newChecker(t testing.TB, cfg Config, targets ...Target) (*Checker, *script, *recorder) {
	t.Helper()
	s := newScript()
	if cfg.Dialer == nil {
		cfg.Dialer = s.dial
	}
	r := newRecorder()
	r.attach(&cfg)
	c := New(cfg)
	if err := c.Set(targets); err != nil {
		t.Fatalf("Set: %v", err)
	}
	return c, s, r
}

// tcpTargets returns one tcp target per address, with IDs 1, 2, ... and
// check ck.
func tcpTargets(ck Check, addrs ...string) []Target {
	out := make([]Target, len(addrs))
	for i, a := range addrs {
		out[i] = Target{ID: uint32(i + 1), Name: fmt.Sprintf("svc/b%d", i+1), Addr: a, Check: ck}
	}
	return out
}

func TestSetValidates(t *testing.T) {
	ok := Target{ID: 1, Name: "svc/a", Addr: "198.18.0.10:80"}
	with := func(f func(*Target)) []Target {
		tg := ok
		f(&tg)
		return []Target{ok, tg}
	}
	tests := []struct {
		name    string
		targets []Target
		want    string
	}{
		{"duplicate id", []Target{ok, ok}, "targets 0 (svc/a) and 1 (svc/a) share ID 1"},
		{"no port", with(func(tg *Target) { tg.ID, tg.Addr = 2, "198.18.0.11" }), `target 2 (svc/a): address "198.18.0.11" is not ip:port`},
		{"name not ip", with(func(tg *Target) { tg.ID, tg.Addr = 2, "db.example:80" }), `address "db.example:80" is not ip:port (the engine resolves names`},
		{"port zero", with(func(tg *Target) { tg.ID, tg.Addr = 2, "198.18.0.11:0" }), "has port 0"},
		{"negative interval", with(func(tg *Target) { tg.ID, tg.Check.Interval = 2, -time.Second }), "interval -1s is negative"},
		{"negative timeout", with(func(tg *Target) { tg.ID, tg.Check.Timeout = 2, -time.Second }), "timeout -1s is negative"},
		{"timeout over interval", with(func(tg *Target) { tg.ID, tg.Check.Interval, tg.Check.Timeout = 2, time.Second, 2*time.Second }), "timeout 2s exceeds interval 1s"},
		{"negative rise", with(func(tg *Target) { tg.ID, tg.Check.Rise = 2, -1 }), "rise -1"},
		{"negative fall", with(func(tg *Target) { tg.ID, tg.Check.Fall = 2, -2 }), "fall -2"},
		{"unknown kind", with(func(tg *Target) { tg.ID, tg.Check.Kind = 2, "icmp" }), `unknown kind "icmp": use tcp or http`},
		{"http field on tcp", with(func(tg *Target) { tg.ID, tg.Check.Path = 2, "/health" }), "path, status and host are for http checks"},
		{"tcp field on http", with(func(tg *Target) { tg.ID, tg.Check.Kind, tg.Check.Expect = 2, HTTP, "OK" }), "send and expect are for tcp checks"},
		{"path without slash", with(func(tg *Target) { tg.ID, tg.Check.Kind, tg.Check.Path = 2, HTTP, "health" }), `path "health" must start with "/"`},
		{"path with space", with(func(tg *Target) { tg.ID, tg.Check.Kind, tg.Check.Path = 2, HTTP, "/a b" }), "has a space or control character"},
		{"host with CRLF", with(func(tg *Target) { tg.ID, tg.Check.Kind, tg.Check.Host = 2, HTTP, "a\r\nX-Evil: 1" }), "host \"a\\r\\nX-Evil: 1\" has a space or control character"},
		{"status out of range", with(func(tg *Target) { tg.ID, tg.Check.Kind, tg.Check.Status = 2, HTTP, 42 }), "status 42 is not an HTTP status"},
		{"expect too long", with(func(tg *Target) { tg.ID, tg.Check.Expect = 2, strings.Repeat("x", MaxReply+1) }), "expect is 4097 bytes"},
	}
	for _, tt := range tests {
		c, _, _ := newChecker(t, Config{}, ok)
		err := c.Set(tt.targets)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Set = %v, want an error containing %q", tt.name, err, tt.want)
		}
		// A rejected Set changes nothing: the earlier set stands.
		if _, _, _, known := c.Status(1); !known || len(*c.index.Load()) != 1 {
			t.Errorf("%s: a rejected Set changed the targets", tt.name)
		}
	}
}

func TestCheckDefaults(t *testing.T) {
	ck, err := Check{}.withDefaults()
	want := Check{Kind: TCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	if err != nil || ck != want {
		t.Errorf("Check{} with defaults = %+v, %v; want %+v", ck, err, want)
	}
	ck, err = Check{Kind: HTTP}.withDefaults()
	want = Check{Kind: HTTP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Path: "/", Status: 200}
	if err != nil || ck != want {
		t.Errorf("http Check with defaults = %+v, %v; want %+v", ck, err, want)
	}
	// A short interval alone lowers the default timeout instead of failing.
	ck, err = Check{Interval: 300 * time.Millisecond}.withDefaults()
	if err != nil || ck.Timeout != 300*time.Millisecond {
		t.Errorf("timeout with interval 300ms = %v, %v; want 300ms", ck.Timeout, err)
	}
}

// TestInitialState: before any check every target is down; the first round
// sets each state directly from its result, whatever Rise and Fall say,
// with one event per target.
func TestInitialState(t *testing.T) {
	addrs := []string{"198.18.0.10:80", "198.18.0.11:80", "198.18.0.12:80"}
	c, s, r := newChecker(t, Config{}, tcpTargets(Check{Rise: 5, Fall: 5}, addrs...)...)
	for id := uint32(1); id <= 3; id++ {
		if c.Healthy(id) {
			t.Errorf("target %d healthy before any check", id)
		}
		if up, since, err, ok := c.Status(id); up || since.IsZero() || err != nil || !ok {
			t.Errorf("Status(%d) before any check = %v, %v, %v, %v; want down since it was added, no error, known", id, up, since, err, ok)
		}
	}
	s.set(addrs[0], true)
	s.set(addrs[2], true)
	c.CheckOnce(context.Background())

	want := []bool{true, false, true}
	for i, w := range want {
		if got := c.Healthy(uint32(i + 1)); got != w {
			t.Errorf("after first round Healthy(%d) = %v, want %v", i+1, got, w)
		}
	}
	ev := r.take()
	slices.SortFunc(ev, func(a, b Event) int { return int(a.ID) - int(b.ID) })
	if len(ev) != 3 {
		t.Fatalf("first round gave %d events, want 3: %v", len(ev), ev)
	}
	for i, e := range ev {
		if e.ID != uint32(i+1) || e.Addr != addrs[i] || e.Name != fmt.Sprintf("svc/b%d", i+1) || e.Up != want[i] {
			t.Errorf("event %d = %+v, want target %d (svc/b%d, %s) up=%v", i, e, i+1, i+1, addrs[i], want[i])
		}
		if e.Up != (e.Err == nil) {
			t.Errorf("event %+v: Err must be set exactly when going down", e)
		}
	}
	if _, _, err, _ := c.Status(2); err == nil || err.Error() != "connect: 198.18.0.11:80: failure 1" {
		t.Errorf("Status(2) lastErr = %v, want connect: 198.18.0.11:80: failure 1", err)
	}

	// The second round agrees: nothing changes, nothing fires.
	c.CheckOnce(context.Background())
	if ev := r.take(); len(ev) != 0 {
		t.Errorf("unchanged second round fired %v", ev)
	}
}

// TestFallAndRise walks one target through a scripted history and checks
// the state after every round and the complete event list.
func TestFallAndRise(t *testing.T) {
	addr := "198.18.0.10:80"
	c, s, r := newChecker(t, Config{}, tcpTargets(Check{Rise: 2, Fall: 3}, addr)...)
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
	var sinces []time.Time
	for n, rd := range rounds {
		s.set(addr, rd.ok)
		c.CheckOnce(context.Background())
		if got := c.Healthy(1); got != rd.want {
			t.Fatalf("round %d (ok=%v): Healthy = %v, want %v", n+1, rd.ok, got, rd.want)
		}
		up, since, lastErr, _ := c.Status(1)
		if up != rd.want || (lastErr == nil) != rd.ok {
			t.Fatalf("round %d: Status = %v, %v; want up=%v and an error exactly when the check failed", n+1, up, lastErr, rd.want)
		}
		sinces = append(sinces, since)
	}
	ev := r.take()
	if len(ev) != 3 || !ev[0].Up || ev[1].Up || !ev[2].Up {
		t.Fatalf("events = %v, want up, down, up", ev)
	}
	if ev[1].Err == nil || ev[1].Err.Error() != "connect: "+addr+": failure 7" {
		t.Errorf("down event Err = %v, want the failure that crossed Fall (connect: %s: failure 7)", ev[1].Err, addr)
	}
	if got := r.nresults(1); got != len(rounds) {
		t.Errorf("OnResult called %d times, want once per check (%d)", got, len(rounds))
	}
	// since moves exactly at the transitions (rounds 1, 7, 12).
	for n := 1; n < len(sinces); n++ {
		moved := !sinces[n].Equal(sinces[n-1])
		if want := n == 6 || n == 11; moved != want {
			t.Errorf("round %d: since moved = %v, want %v", n+1, moved, want)
		}
	}
}

// TestFlapping: a target that alternates never builds a streak, so it keeps
// the state its first check gave it and fires nothing more.
func TestFlapping(t *testing.T) {
	addrs := []string{"198.18.0.10:80", "198.18.0.11:80"}
	c, s, r := newChecker(t, Config{}, tcpTargets(Check{Rise: 2, Fall: 2}, addrs...)...)
	s.set(addrs[0], true) // starts up
	c.CheckOnce(context.Background())
	r.take()
	for n := range 20 {
		// Opposite phases: target 1 fails when 2 succeeds.
		s.set(addrs[0], n%2 == 1)
		s.set(addrs[1], n%2 == 0)
		c.CheckOnce(context.Background())
		if !c.Healthy(1) || c.Healthy(2) {
			t.Fatalf("round %d: flapping changed state: Healthy = %v, %v; want true, false", n, c.Healthy(1), c.Healthy(2))
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
	c, s, r := newChecker(t, Config{}, tcpTargets(Check{Rise: 1, Fall: 1}, addr)...)
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

// TestDialTimeout: the Dialer gets a context with the Timeout deadline, and
// a dial that runs into it is a failure that says so and carries
// context.DeadlineExceeded.
func TestDialTimeout(t *testing.T) {
	const timeout = 20 * time.Millisecond
	var sawDeadline atomic.Bool
	var badDeadline atomic.Value
	hang := func(ctx context.Context, _, _ string) (net.Conn, error) {
		dl, ok := ctx.Deadline()
		// Only an upper bound: the goroutine may start late on a busy machine.
		if left := time.Until(dl); ok && left <= timeout {
			sawDeadline.Store(true)
		} else {
			badDeadline.Store(fmt.Sprintf("deadline set %v, %v left", ok, left))
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	c, _, r := newChecker(t, Config{Dialer: hang}, tcpTargets(Check{Interval: time.Second, Timeout: timeout}, "198.18.0.10:80")...)
	c.CheckOnce(context.Background())
	if !sawDeadline.Load() {
		t.Errorf("Dialer's context: %v, want a deadline within the %v timeout", badDeadline.Load(), timeout)
	}
	ev := r.take()
	if len(ev) != 1 || ev[0].Up || !errors.Is(ev[0].Err, context.DeadlineExceeded) || ev[0].Err.Error() != "connect: timeout after 20ms" {
		t.Errorf("events = %v, want one down event \"connect: timeout after 20ms\" with context.DeadlineExceeded", ev)
	}
}

// TestLateSuccessIsTimeout: a Dialer that ignores its deadline and connects
// after it has passed still counts as a timeout, and its connection is
// closed.
func TestLateSuccessIsTimeout(t *testing.T) {
	var peer net.Conn
	late := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		a, b := net.Pipe()
		peer = b
		return a, nil
	}
	c, _, r := newChecker(t, Config{Dialer: late}, tcpTargets(Check{Interval: time.Second, Timeout: time.Millisecond}, "198.18.0.10:80")...)
	c.CheckOnce(context.Background())
	if c.Healthy(1) {
		t.Error("target up after a check that exceeded its timeout")
	}
	if ev := r.take(); len(ev) != 1 || !errors.Is(ev[0].Err, context.DeadlineExceeded) {
		t.Errorf("events = %v, want one down event with context.DeadlineExceeded", ev)
	}
	// The check's end of the pipe is closed: the peer reads EOF.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("peer read after the late dial = %v, want EOF (the check closed its connection)", err)
	}
}

// TestShutdownDoesNotCount: a check cut short because the caller's context
// ended says nothing about the target and must not take it down.
func TestShutdownDoesNotCount(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelNext atomic.Bool
	dial := func(dctx context.Context, _, _ string) (net.Conn, error) {
		if cancelNext.Load() {
			cancel() // shutdown arrives while the check is in flight
			<-dctx.Done()
			return nil, dctx.Err()
		}
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	c, _, r := newChecker(t, Config{Dialer: dial}, tcpTargets(Check{Rise: 1, Fall: 1}, "198.18.0.10:80")...)
	c.CheckOnce(ctx)
	r.take()
	cancelNext.Store(true)
	c.CheckOnce(ctx)
	if !c.Healthy(1) {
		t.Error("target went down because of shutdown")
	}
	if ev := r.take(); len(ev) != 0 {
		t.Errorf("shutdown fired %v", ev)
	}
	if n := r.nresults(1); n != 1 {
		t.Errorf("OnResult called %d times, want 1 (the cancelled check is not a result)", n)
	}
	// And once ctx is done no check starts at all.
	c.CheckOnce(ctx)
	if n := r.nresults(1); n != 1 {
		t.Errorf("OnResult called %d times after cancel, want still 1", n)
	}
}

// TestCheckOnceIsParallel: every target's check must be in flight at the
// same time; a sequential round would never get past the barrier.
func TestCheckOnceIsParallel(t *testing.T) {
	const n = 8
	var entered atomic.Int32
	all := make(chan struct{})
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		if entered.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			a, b := net.Pipe()
			b.Close()
			return a, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("not all %d checks ran at once: %w", n, ctx.Err())
		}
	}
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.0.%d:80", 10+i)
	}
	c, _, r := newChecker(t, Config{Dialer: dial}, tcpTargets(Check{Interval: time.Minute, Timeout: time.Minute}, addrs...)...)
	c.CheckOnce(context.Background())
	// CheckOnce waited for all of them.
	for id := uint32(1); id <= n; id++ {
		if !c.Healthy(id) {
			t.Errorf("target %d down after CheckOnce; events %v", id, r.take())
		}
	}
}

// TestRunSlowTargetDoesNotDelayOthers: while target 2's check hangs, target
// 1 keeps being checked on its own schedule; and Run returns once its
// context is done, cancelling the hung check.
func TestRunSlowTargetDoesNotDelayOthers(t *testing.T) {
	addrs := []string{"198.18.0.10:80", "198.18.0.11:80"}
	var slowCalls atomic.Int32
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		// The slow target answers its first check and then hangs until its
		// context (timeout 1 minute) ends.
		if addr == addrs[1] && slowCalls.Add(1) > 1 {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	const want = 20
	fastChecks := make(chan struct{}, want)
	var fast atomic.Int32
	c := New(Config{
		Dialer: dial,
		OnResult: func(id uint32, ok bool, d time.Duration) {
			if id == 1 && fast.Add(1) <= want {
				fastChecks <- struct{}{}
			}
		},
	})
	if err := c.Set([]Target{
		{ID: 1, Name: "svc/fast", Addr: addrs[0], Check: Check{Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond}},
		{ID: 2, Name: "svc/slow", Addr: addrs[1], Check: Check{Interval: time.Minute, Timeout: time.Minute}},
	}); err != nil {
		t.Fatal(err)
	}
	c.CheckOnce(context.Background())
	fast.Store(0)
	// Make target 2 due at once, so its second check hangs from the start.
	(*c.index.Load())[2].mu.Lock()
	(*c.index.Load())[2].next = time.Now()
	(*c.index.Load())[2].mu.Unlock()

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
		t.Errorf("slow target checked %d times while its check hung", n)
	}
	cancel()
	<-done // the hung check was cancelled, or this never returns
	if n := c.live.Load(); n != 0 {
		t.Errorf("%d Run goroutines left after Run returned", n)
	}
	// Run has returned: no more checks, so no more results.
	after := fast.Load()
	c.CheckOnce(ctx) // ctx is done: starts nothing
	if fast.Load() != after {
		t.Error("a check ran after Run returned with its context done")
	}
}

// TestRunTwicePanics: two Runs at once would start two loops per target.
func TestRunTwicePanics(t *testing.T) {
	c, _, _ := newChecker(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.Run(ctx)
		close(done)
	}()
	for {
		c.mu.Lock()
		running := c.runCtx != nil
		c.mu.Unlock()
		if running {
			break
		}
		time.Sleep(time.Millisecond)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a second concurrent Run did not panic")
			}
		}()
		c.Run(ctx)
	}()
	cancel()
	<-done
	// After Run returns, Run may run again.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	c.Run(ctx2)
}

func TestHealthyIsCheap(t *testing.T) {
	c, s, _ := newChecker(t, Config{}, tcpTargets(Check{}, "198.18.0.10:80", "198.18.0.11:80")...)
	s.set("198.18.0.10:80", true)
	c.CheckOnce(context.Background())
	var sink bool
	allocs := testing.AllocsPerRun(1000, func() {
		sink = c.Healthy(1) && !c.Healthy(2)
	})
	if allocs != 0 {
		t.Errorf("Healthy allocates %v times per call, want 0", allocs)
	}
	if !sink {
		t.Error("Healthy(1), Healthy(2) = not (true, false)")
	}
	for _, id := range []uint32{0, 3, 1 << 31, ^uint32(0)} {
		if c.Healthy(id) {
			t.Errorf("Healthy(%d) of an unknown id = true, want false", id)
		}
		if _, _, _, ok := c.Status(id); ok {
			t.Errorf("Status(%d) of an unknown id: ok = true", id)
		}
	}
	// A Checker with no targets at all.
	if New(Config{}).Healthy(1) {
		t.Error("Healthy on an empty Checker = true")
	}
}

// TestLogger: transitions are logged at Info (up) and Warn (down) with the
// target's name, address and error.
func TestLogger(t *testing.T) {
	var mu sync.Mutex
	var out strings.Builder
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	})
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, s, _ := newChecker(t, Config{Logger: log}, tcpTargets(Check{Rise: 1, Fall: 1}, "198.18.0.10:80")...)
	c.CheckOnce(context.Background())
	s.set("198.18.0.10:80", true)
	c.CheckOnce(context.Background())
	mu.Lock()
	got := out.String()
	mu.Unlock()
	for _, want := range []string{
		`level=WARN msg="backend down" backend=svc/b1 addr=198.18.0.10:80 err="connect: 198.18.0.10:80: failure 1"`,
		`level=INFO msg="backend up" backend=svc/b1 addr=198.18.0.10:80`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q; got:\n%s", want, got)
		}
	}
	if strings.Contains(got, "level=DEBUG") {
		t.Errorf("Debug lines at level Info:\n%s", got)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestEventString(t *testing.T) {
	up := Event{ID: 1, Name: "web/a", Addr: "198.18.0.10:80", Up: true}
	down := Event{ID: 1, Name: "web/a", Addr: "198.18.0.10:80", Err: errors.New("connect: connection refused")}
	if got := up.String(); got != "web/a (198.18.0.10:80) up" {
		t.Errorf("up event = %q", got)
	}
	if got := down.String(); got != "web/a (198.18.0.10:80) down: connect: connection refused" {
		t.Errorf("down event = %q", got)
	}
}

func TestJitter(t *testing.T) {
	const interval = time.Second
	lo, hi := interval, time.Duration(0)
	for range 10000 {
		d := nextDelay(interval)
		lo, hi = min(lo, d), max(hi, d)
		if f := firstDelay(interval); f < 0 || f >= interval/10 {
			t.Fatalf("firstDelay(1s) = %v, want in [0, 100ms)", f)
		}
	}
	// Within ±5%, and actually spread (10000 draws over a 100 ms window).
	if lo < 950*time.Millisecond || hi >= 1050*time.Millisecond || hi-lo < 90*time.Millisecond {
		t.Errorf("nextDelay(1s) ranged over [%v, %v], want spread over [950ms, 1050ms)", lo, hi)
	}
	// Intervals too short to split do not panic.
	if d := nextDelay(5); d != 5 {
		t.Errorf("nextDelay(5ns) = %v", d)
	}
	if d := firstDelay(5); d != 0 {
		t.Errorf("firstDelay(5ns) = %v", d)
	}
}

func BenchmarkHealthy(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("targets=%d", n), func(b *testing.B) {
			addrs := make([]string, n)
			for i := range addrs {
				addrs[i] = fmt.Sprintf("198.18.%d.%d:80", i/250, 1+i%250)
			}
			c, s, _ := newChecker(b, Config{}, tcpTargets(Check{}, addrs...)...)
			s.set(addrs[n/2], true)
			c.CheckOnce(context.Background())
			id := uint32(n/2 + 1)
			b.ReportAllocs()
			for b.Loop() {
				if !c.Healthy(id) {
					b.Fatal("down")
				}
			}
		})
	}
}
