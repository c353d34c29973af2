// Package healthcheck decides which backends are up by connecting to them.
//
// A check is a TCP connect and close: it proves the backend's kernel
// accepts connections on the service port, which is what rawlb forwards to.
// A backend goes down after Fall failed checks in a row and comes back after
// Rise good ones, so a single lost SYN neither drops a backend nor revives a
// flapping one. The per-packet path reads the result with Healthy, one
// atomic load.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero fields of Config.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = 1 * time.Second
	DefaultRise     = 2
	DefaultFall     = 3
)

// Config tunes a Checker. Zero fields take the defaults above.
type Config struct {
	// Interval is the time between the starts of two checks of a backend.
	Interval time.Duration
	// Timeout bounds one check. It may not exceed Interval, so a check
	// always ends before the next one is due. Zero means DefaultTimeout or
	// Interval, whichever is shorter.
	Timeout time.Duration
	// Rise is how many successes in a row bring a down backend up.
	Rise int
	// Fall is how many failures in a row take an up backend down.
	Fall int
	// Dial performs one check against addr and must give up when ctx is
	// done (ctx carries the Timeout deadline). The default connects over
	// TCP and closes the connection at once.
	Dial func(ctx context.Context, addr string) error
}

// Event reports a backend changing state.
type Event struct {
	// Backend is the index of the backend in the list given to New.
	Backend int
	// Addr is its address.
	Addr string
	// Up is the new state.
	Up bool
	// Err is the error of the check that took the backend down; nil when
	// it comes up.
	Err error
}

// String formats e for logs.
func (e Event) String() string {
	if e.Up {
		return fmt.Sprintf("backend %d (%s) up", e.Backend, e.Addr)
	}
	return fmt.Sprintf("backend %d (%s) down: %v", e.Backend, e.Addr, e.Err)
}

// Checker tracks the health of a fixed list of backends.
type Checker struct {
	cfg      Config
	backends []backend
	// healthy is separate from backends so that the per-packet readers
	// touch a dense array of flags, not the mutex-guarded check state.
	healthy []atomic.Bool

	onChange func(Event)
	onResult func(backend int, ok bool, d time.Duration)
}

// backend is the check state of one backend. mu serialises whole checks of
// the backend (dial and bookkeeping), so results are applied in the order
// the checks ran and callbacks for one backend never overlap.
type backend struct {
	addr string

	mu     sync.Mutex
	known  bool // a first result has set the state
	streak int  // checks in a row that disagree with the current state
}

// New returns a Checker for addrs (host:port each), with all backends down
// until the first round of checks (CheckOnce or Run) says otherwise.
func New(addrs []string, cfg Config) (*Checker, error) {
	if len(addrs) == 0 {
		return nil, errors.New("healthcheck: no backends to check")
	}
	for i, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("healthcheck: backend %d: %q is not host:port: %w", i, a, err)
		}
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout == 0 {
		// A short Interval alone must not fail validation against the
		// default Timeout.
		cfg.Timeout = min(DefaultTimeout, cfg.Interval)
	}
	if cfg.Rise == 0 {
		cfg.Rise = DefaultRise
	}
	if cfg.Fall == 0 {
		cfg.Fall = DefaultFall
	}
	if cfg.Dial == nil {
		cfg.Dial = dialTCP
	}
	switch {
	case cfg.Interval < 0:
		return nil, fmt.Errorf("healthcheck: interval %v is negative", cfg.Interval)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("healthcheck: timeout %v is negative", cfg.Timeout)
	case cfg.Timeout > cfg.Interval:
		return nil, fmt.Errorf("healthcheck: timeout %v exceeds interval %v: lower the timeout or raise the interval", cfg.Timeout, cfg.Interval)
	case cfg.Rise < 0:
		return nil, fmt.Errorf("healthcheck: rise %d is negative: it counts successes in a row, at least 1", cfg.Rise)
	case cfg.Fall < 0:
		return nil, fmt.Errorf("healthcheck: fall %d is negative: it counts failures in a row, at least 1", cfg.Fall)
	}
	c := &Checker{
		cfg:      cfg,
		backends: make([]backend, len(addrs)),
		healthy:  make([]atomic.Bool, len(addrs)),
	}
	for i, a := range addrs {
		c.backends[i].addr = a
	}
	return c, nil
}

// dialTCP is the default check: a full TCP handshake, then close.
func dialTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Len returns the number of backends.
func (c *Checker) Len() int { return len(c.healthy) }

// Addr returns backend i's address.
func (c *Checker) Addr(i int) string { return c.backends[i].addr }

// Healthy reports whether backend i is up. It is safe to call from any
// goroutine at packet rate: a bounds check and one atomic load, no
// allocation. An index out of range is reported as down rather than
// panicking, so a stale index in a flow never crashes the data path.
func (c *Checker) Healthy(i int) bool {
	if uint(i) >= uint(len(c.healthy)) {
		return false
	}
	return c.healthy[i].Load()
}

// HealthyCount returns how many backends are up, for metrics and for
// deciding that no backend can take a new connection.
func (c *Checker) HealthyCount() int {
	n := 0
	for i := range c.healthy {
		if c.healthy[i].Load() {
			n++
		}
	}
	return n
}

// OnChange sets the function called once for every state transition,
// including the first state each backend gets from its first check. It
// must be set before CheckOnce or Run. fn runs on a checking goroutine and
// holds up further checks of that backend (not of others) until it
// returns; calls for one backend never overlap and arrive in order.
func (c *Checker) OnChange(fn func(Event)) { c.onChange = fn }

// OnResult sets the function called after every check, with how long the
// check took, for metrics. It must be set before CheckOnce or Run and runs
// like OnChange's function.
func (c *Checker) OnResult(fn func(backend int, ok bool, d time.Duration)) { c.onResult = fn }

// CheckOnce checks every backend once, all in parallel, and returns when
// all checks are done. Called before Run (Run does it itself) it gives the
// balancer a true picture before the first packet instead of starting with
// every backend down.
func (c *Checker) CheckOnce(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range c.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.check(ctx, i)
		}()
	}
	wg.Wait()
}

// Run checks every backend at once, then each backend every Interval until
// ctx is done, and returns after the last check has finished. Every
// backend has its own schedule, so a backend whose checks hang until the
// timeout does not delay the others.
func (c *Checker) Run(ctx context.Context) {
	c.CheckOnce(ctx)
	var wg sync.WaitGroup
	for i := range c.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(c.cfg.Interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					c.check(ctx, i)
				}
			}
		}()
	}
	wg.Wait()
}

// check runs one check of backend i and applies its result.
func (c *Checker) check(ctx context.Context, i int) {
	b := &c.backends[i]
	b.mu.Lock()
	defer b.mu.Unlock()
	if ctx.Err() != nil {
		return
	}

	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	err := c.cfg.Dial(dctx, b.addr)
	if err == nil && dctx.Err() != nil {
		// A Dial that ignored its deadline and reported success late.
		err = dctx.Err()
	}
	cancel()
	d := time.Since(start)
	// A check cut short by shutdown says nothing about the backend; counting
	// it would take every backend down on the way out.
	if ctx.Err() != nil {
		return
	}
	ok := err == nil

	if c.onResult != nil {
		c.onResult(i, ok, d)
	}
	if c.apply(i, b, ok) && c.onChange != nil {
		ev := Event{Backend: i, Addr: b.addr, Up: ok}
		if !ok {
			ev.Err = err
		}
		c.onChange(ev)
	}
}

// apply records one result for backend i and reports whether its state
// changed. The first result sets the state outright; after that, Rise
// successes or Fall failures in a row are needed to flip it.
func (c *Checker) apply(i int, b *backend, ok bool) bool {
	up := c.healthy[i].Load()
	if !b.known {
		b.known = true
		b.streak = 0
		c.healthy[i].Store(ok)
		return true
	}
	if ok == up {
		b.streak = 0
		return false
	}
	b.streak++
	need := c.cfg.Fall
	if ok {
		need = c.cfg.Rise
	}
	if b.streak < need {
		return false
	}
	b.streak = 0
	c.healthy[i].Store(ok)
	return true
}
