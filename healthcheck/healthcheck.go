// Package healthcheck decides which backends are up by checking them: a TCP
// connect (optionally with a send and an expected reply) or an HTTP GET.
//
// A backend goes down after Fall failed checks in a row and comes back
// after Rise passed ones, so a single lost SYN neither drops a backend nor
// revives a flapping one. The set of targets changes at run time with Set,
// which keeps the state and schedule of every target whose check did not
// change, so a reload does not make healthy backends blink. The packet
// path reads the result with Healthy: no lock, no allocation.
//
// Health checks are the balancer host's own TCP connections, made through
// the kernel's stack from its ephemeral port range; every one is closed
// when its check ends, including when Set removes its target mid-check.
package healthcheck

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config is what a Checker reports to and how it connects. Every field is
// optional.
type Config struct {
	// OnChange is called for every state transition, including the first
	// state a target gets from its first check. It runs on a checking
	// goroutine and holds up further checks of that target (not of others)
	// until it returns; calls for one target never overlap and arrive in
	// order. It must not call Set.
	OnChange func(Event)
	// OnResult is called after every check with how long it took, for
	// metrics. It runs like OnChange, before OnChange for the same check.
	// It must not call Set.
	OnResult func(id uint32, ok bool, d time.Duration)
	// Dialer connects to a target; it must give up when ctx is done (ctx
	// carries the check's Timeout). nil means a net.Dialer.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger gets one line per state transition (Info up, Warn down) and a
	// Debug line per failed check and per target Set adds, changes or
	// removes. nil logs nothing.
	Logger *slog.Logger
}

// Event reports a target changing state.
type Event struct {
	// ID, Name and Addr are the target's, as of the check that decided.
	ID   uint32
	Name string
	Addr string
	// Up is the new state.
	Up bool
	// Err is why the target went down: the error of the check that
	// crossed Fall (or of its first check). nil when it comes up.
	Err error
}

// String formats e for logs.
func (e Event) String() string {
	if e.Up {
		return fmt.Sprintf("%s (%s) up", e.Name, e.Addr)
	}
	return fmt.Sprintf("%s (%s) down: %v", e.Name, e.Addr, e.Err)
}

// Checker checks a changing set of targets, each on its own schedule.
// Its methods are safe for concurrent use.
type Checker struct {
	onChange func(Event)
	onResult func(id uint32, ok bool, d time.Duration)
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	log      *slog.Logger

	// index is what Healthy reads: Set publishes a new map and never
	// changes a published one, so a reader needs no lock.
	index atomic.Pointer[map[uint32]*target]

	mu      sync.Mutex         // serialises Set and the start and end of Run
	targets map[uint32]*target // the published map
	runCtx  context.Context    // Run's context while Run runs, else nil
	loops   sync.WaitGroup     // Run's per-target goroutines
	live    atomic.Int32       // loops running, for tests of their removal
}

// target is the state of one target. Its identity is the ID: a change of
// address or check keeps the struct (and the state Healthy reads) and bumps
// gen, so the result of a check started before the change is dropped.
type target struct {
	id uint32
	// up is the state Healthy reads.
	up atomic.Bool
	// sem holds a token while a check of the target runs, so that Run's
	// schedule and CheckOnce never check one target twice at once.
	sem chan struct{}
	// report is held while a result is applied and reported. Set takes it
	// after removing or changing the target to wait out a report already
	// under way, so that no event about the old target follows Set.
	report sync.Mutex
	// wake tells the target's Run goroutine that Set moved its schedule.
	wake chan struct{}
	// stop ends the target's Run goroutine; guarded by Checker.mu.
	stop context.CancelFunc

	mu      sync.Mutex
	name    string
	addr    string
	check   Check
	expect  []byte // check.Expect, converted once
	gen     uint64
	removed bool
	known   bool      // a result of the current gen or before set the state
	streak  int       // results in a row that disagree with the state
	since   time.Time // when the state began (or the target was added)
	lastErr error     // of the last check; nil if it passed
	next    time.Time // when the next scheduled check is due; zero: not scheduled yet
	cancel  context.CancelFunc
}

// New returns a Checker with no targets; give it some with Set.
func New(cfg Config) *Checker {
	c := &Checker{
		onChange: cfg.OnChange,
		onResult: cfg.OnResult,
		dial:     cfg.Dialer,
		log:      cfg.Logger,
		targets:  map[uint32]*target{},
	}
	// The published map, not &c.targets: Set reassigns the field.
	none := c.targets
	if c.dial == nil {
		// KeepAlive is off: a check's connection lives for one exchange.
		d := &net.Dialer{KeepAlive: -1}
		c.dial = d.DialContext
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.index.Store(&none)
	return c
}

// Healthy reports whether target id is up; an unknown or removed id is
// down. It is safe at packet rate from any goroutine: an atomic pointer
// load, a map lookup and an atomic load, no lock, no allocation.
func (c *Checker) Healthy(id uint32) bool {
	t := (*c.index.Load())[id]
	return t != nil && t.up.Load()
}

// Status returns target id's state, when it began (when the target was
// added, if it has had no result yet), and the error of its last check (nil
// if that check passed or none has run). ok is false for an unknown id.
func (c *Checker) Status(id uint32) (up bool, since time.Time, lastErr error, ok bool) {
	t := (*c.index.Load())[id]
	if t == nil {
		return false, time.Time{}, nil, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.up.Load(), t.since, t.lastErr, true
}

// Set replaces the set of targets. It validates every target first and
// changes nothing if one is invalid or two share an ID.
//
//   - A target whose ID, Addr and Check are unchanged keeps its state, its
//     counts and its schedule; a new Name only changes what logs say.
//   - A target whose Addr or Check changed keeps its current state until
//     its new checks decide it, with Rise and Fall counted afresh from the
//     first new check, which is due within a tenth of the new interval.
//     A check of the old address or check still in flight is cancelled and
//     its result dropped.
//   - A new target starts down; its first result sets its state directly.
//     Under Run its first check is due within a tenth of its interval.
//   - A removed target stops: its check in flight is cancelled, its Run
//     goroutine ends, Healthy reports it down, and no OnChange or OnResult
//     call for it follows Set's return.
func (c *Checker) Set(targets []Target) error {
	want := make([]Target, len(targets))
	seen := make(map[uint32]int, len(targets))
	for i, tg := range targets {
		if j, dup := seen[tg.ID]; dup {
			return fmt.Errorf("healthcheck: targets %d (%s) and %d (%s) share ID %d", j, targets[j].Name, i, tg.Name, tg.ID)
		}
		seen[tg.ID] = i
		var err error
		if want[i], err = tg.withDefaults(); err != nil {
			return fmt.Errorf("healthcheck: target %d (%s): %w", tg.ID, tg.Name, err)
		}
	}

	c.mu.Lock()
	now := time.Now()
	var settle []*target // removed or changed: wait out their reports
	next := make(map[uint32]*target, len(want))
	for _, tg := range want {
		t := c.targets[tg.ID]
		if t == nil {
			t = &target{
				id:     tg.ID,
				sem:    make(chan struct{}, 1),
				wake:   make(chan struct{}, 1),
				name:   tg.Name,
				addr:   tg.Addr,
				check:  tg.Check,
				expect: []byte(tg.Check.Expect),
				since:  now,
			}
			if c.runCtx != nil {
				c.startLoop(t)
			}
			c.log.Debug("health check added", "backend", tg.Name, "addr", tg.Addr, "kind", tg.Check.Kind)
			next[tg.ID] = t
			continue
		}
		t.mu.Lock()
		t.name = tg.Name
		if t.addr != tg.Addr || t.check != tg.Check {
			t.gen++
			t.addr, t.check, t.expect = tg.Addr, tg.Check, []byte(tg.Check.Expect)
			t.streak = 0
			t.next = now.Add(firstDelay(tg.Check.Interval))
			if t.cancel != nil {
				t.cancel()
			}
			select {
			case t.wake <- struct{}{}:
			default: // a wake-up is already pending
			}
			settle = append(settle, t)
			c.log.Debug("health check changed", "backend", tg.Name, "addr", tg.Addr, "kind", tg.Check.Kind)
		}
		t.mu.Unlock()
		next[tg.ID] = t
	}
	for id, t := range c.targets {
		if next[id] != nil {
			continue
		}
		if t.stop != nil {
			// Before marking it removed, so its goroutine finds its context
			// done rather than spinning on checks that return at once.
			t.stop()
			t.stop = nil
		}
		t.mu.Lock()
		t.removed = true
		if t.cancel != nil {
			t.cancel()
		}
		c.log.Debug("health check removed", "backend", t.name, "addr", t.addr)
		t.mu.Unlock()
		settle = append(settle, t)
	}
	c.targets = next
	c.index.Store(&next)
	c.mu.Unlock()

	for _, t := range settle {
		t.report.Lock()
		//lint:ignore SA2001 an empty critical section: waiting for a report in flight to end is the point
		t.report.Unlock()
	}
	return nil
}

// CheckOnce checks every target once now, all in parallel, and returns when
// all checks are done. Called before traffic it gives the balancer a true
// picture for the first SYN instead of every backend down. A target's next
// scheduled check under Run follows an Interval after this one. If ctx is
// already done it checks nothing.
func (c *Checker) CheckOnce(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range *c.index.Load() {
		wg.Go(func() { c.check(ctx, t, false) })
	}
	wg.Wait()
}

// Run checks every target on its own schedule until ctx is done, then
// returns once the checks in flight have been cancelled and their
// goroutines have ended. Targets Set adds while Run runs are checked too.
// A target with no result yet is first checked within a tenth of its
// interval; call CheckOnce first for every state to be known at once. Run
// may be called again after it returns, but not twice at the same time.
func (c *Checker) Run(ctx context.Context) {
	c.mu.Lock()
	if c.runCtx != nil {
		c.mu.Unlock()
		panic("healthcheck: Run called while Run is running")
	}
	c.runCtx = ctx
	for _, t := range c.targets {
		c.startLoop(t)
	}
	c.mu.Unlock()

	<-ctx.Done()

	c.mu.Lock()
	c.runCtx = nil
	for _, t := range c.targets {
		if t.stop != nil {
			t.stop()
			t.stop = nil
		}
	}
	c.mu.Unlock()
	c.loops.Wait()
}

// startLoop starts t's Run goroutine. c.mu must be held and Run running.
func (c *Checker) startLoop(t *target) {
	ctx, stop := context.WithCancel(c.runCtx)
	t.stop = stop
	c.loops.Add(1)
	c.live.Add(1)
	go c.loop(ctx, t)
}

// loop checks t whenever its next check is due, until ctx is done.
func (c *Checker) loop(ctx context.Context, t *target) {
	defer c.loops.Done()
	defer c.live.Add(-1)
	t.mu.Lock()
	if t.next.IsZero() {
		t.next = time.Now().Add(firstDelay(t.check.Interval))
	}
	t.mu.Unlock()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		t.mu.Lock()
		wait := time.Until(t.next)
		t.mu.Unlock()
		if wait > 0 {
			// Timer.Reset drops a stale expiry (Go 1.23 timers), so the
			// timer is reused without draining.
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-t.wake: // Set moved the schedule
			case <-timer.C: // due, unless CheckOnce moved it: look again
			}
			continue
		}
		c.check(ctx, t, true)
		if ctx.Err() != nil {
			return
		}
	}
}

// jitterShare is the width of the window a check's start is spread over,
// as a share of the interval (10%): hundreds of backends added by one
// reload, or started by one Run, are checked over 200 ms of a 2 s interval
// instead of in one burst of SYNs from the balancer, and keep drifting
// apart instead of falling into step.
const jitterShare = 10

// firstDelay is when a target's first check under Run is due: within the
// first tenth of its interval.
func firstDelay(interval time.Duration) time.Duration {
	if w := interval / jitterShare; w > 0 {
		return rand.N(w)
	}
	return 0
}

// nextDelay is the time from the start of one check to the start of the
// next: Interval, plus or minus half the jitter window, so the mean period
// is Interval.
func nextDelay(interval time.Duration) time.Duration {
	w := interval / jitterShare
	if w <= 0 {
		return interval
	}
	return interval - w/2 + rand.N(w)
}

// check runs one check of t and applies its result. scheduled is true for
// Run's checks, which are skipped if CheckOnce checked t meanwhile.
func (c *Checker) check(ctx context.Context, t *target, scheduled bool) {
	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-t.sem }()

	t.mu.Lock()
	start := time.Now()
	if t.removed || ctx.Err() != nil || (scheduled && start.Before(t.next)) {
		t.mu.Unlock()
		return
	}
	gen, addr, ck, expect := t.gen, t.addr, t.check, t.expect
	t.next = start.Add(nextDelay(ck.Interval))
	cctx, cancel := context.WithTimeout(ctx, ck.Timeout)
	t.cancel = cancel
	t.mu.Unlock()

	err := c.probe(cctx, addr, &ck, expect)
	d := time.Since(start)
	cancel()
	ok := err == nil

	t.report.Lock()
	defer t.report.Unlock()
	t.mu.Lock()
	t.cancel = nil
	// A check cut short by shutdown says nothing about the backend (counting
	// it would take every backend down on the way out), and one whose
	// target Set removed or changed meanwhile is about a target that is
	// gone.
	if ctx.Err() != nil || t.removed || t.gen != gen {
		t.mu.Unlock()
		return
	}
	t.lastErr = err
	changed := t.apply(ok, time.Now())
	ev := Event{ID: t.id, Name: t.name, Addr: addr, Up: ok, Err: err}
	t.mu.Unlock()

	if !ok {
		c.log.Debug("health check failed", "backend", ev.Name, "addr", addr, "err", err, "took", d)
	}
	if c.onResult != nil {
		c.onResult(t.id, ok, d)
	}
	if !changed {
		return
	}
	if ok {
		c.log.Info("backend up", "backend", ev.Name, "addr", addr)
	} else {
		c.log.Warn("backend down", "backend", ev.Name, "addr", addr, "err", err)
	}
	if c.onChange != nil {
		c.onChange(ev)
	}
}

// apply records one result and reports whether the state changed. The
// first result sets the state outright; after that, Rise passed or Fall
// failed checks in a row are needed to flip it. t.mu must be held.
func (t *target) apply(ok bool, now time.Time) bool {
	if !t.known {
		t.known = true
		t.streak = 0
		t.up.Store(ok)
		t.since = now
		return true
	}
	if ok == t.up.Load() {
		t.streak = 0
		return false
	}
	t.streak++
	need := t.check.Fall
	if ok {
		need = t.check.Rise
	}
	if t.streak < need {
		return false
	}
	t.streak = 0
	t.up.Store(ok)
	t.since = now
	return true
}
