// Package flood puts hostile traffic on a lab link for end-to-end tests:
// a spoofed SYN flood (SYNFlood) and blind resets against a live
// connection (RSTSpray).
//
// Both send prebuilt Ethernet frames from an AF_PACKET socket, so the
// sending host's TCP stack never sees them and nothing limits the rate but
// the machine. Each frame is a copy of one template whose variable fields
// (source address and port, sequence number, TSval, IP ID) are drawn from a
// seeded PCG, with both checksums completed from the template's precomputed
// sum plus the changed words (RFC 1624). Making a frame costs about 20 ns
// (BenchmarkSYNFrame), sending it about 1.6 µs of CPU, most of it the
// receiving host's stack, which a veth runs inside the send. The same Seed
// gives the same frames.
//
// Every run is bounded: Count frames at most, and for a SYN flood Duration
// as well; Run stops at whichever comes first, or when its context ends.
//
// The socket must be created inside the sending host's network namespace.
// Set Link.Netns to the namespace's name (netlab.Host.Name) and Run enters
// it on a locked OS thread for socket(2) only; or leave it empty and call
// Run on a thread already inside it (netlab.InNetNS). The frames then go
// out of Link.Iface of that namespace, whatever thread sends them.
package flood

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Link says where frames go: out of Iface in namespace Netns, from SrcMAC
// to DstMAC. The generator never resolves anything: the test knows both
// MACs (netlab.Host.MAC), and a flood must not wait for ARP.
type Link struct {
	// Netns names the network namespace (as `ip netns` knows it) whose
	// Iface sends. Empty means the calling thread's namespace.
	Netns string
	// Iface is the interface to send on, "eth0" in a lab host.
	Iface string
	// SrcMAC is the frames' source MAC; nil means Iface's own.
	SrcMAC net.HardwareAddr
	// DstMAC is the next hop's MAC, the balancer's eth0 in a lab.
	DstMAC net.HardwareAddr
}

// Method is how frames are handed to the kernel.
type Method int

const (
	// Auto is the method that measured fastest here: Sendmmsg
	// (docs/performance.md, "A bounded SYN flood").
	Auto Method = iota
	// Sendmmsg copies a batch of frames from user memory with one
	// sendmmsg(2). Each frame becomes a small linear skb.
	Sendmmsg
	// TXRing writes frames into a TPACKET_V2 transmit ring shared with
	// the kernel (PACKET_TX_RING) and flushes a batch with one send(2).
	// It saves the copy from user memory, yet here it cost 4-19% more
	// CPU per frame than Sendmmsg (medians of five runs). Probably
	// because the kernel attaches everything past the Ethernet header as
	// a fragment of the ring's page (tpacket_fill_skb), which the
	// receiving stack must pull into the linear header again.
	TXRing
)

// String names the method as benchmarks and logs print it.
func (m Method) String() string {
	switch m {
	case Auto:
		return "auto"
	case Sendmmsg:
		return "sendmmsg"
	case TXRing:
		return "txring"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// defaultMethod and defaultWorkers are what Auto and Workers 0 mean: the
// fastest combination measured on the lab (docs/performance.md). Two
// workers cost about the same CPU per frame as one (no lock is shared:
// each has its own socket), and on two cores shared with other work they
// sent 14% more frames per second than one.
const (
	defaultMethod  = Sendmmsg
	defaultWorkers = 2
	// batchSize frames go to the kernel per system call. A frame costs
	// 1.6-1.9 µs of CPU here, because on a veth the receiving host's
	// stack runs inside the send; a system call's entry, spread over 64
	// frames, is under 1% of that, and a bigger batch would only make
	// the Duration and context checks coarser.
	batchSize = 64
	// maxWorkers bounds Workers: each has its own socket, and more
	// senders than cores only queue on the same locks.
	maxWorkers = 16
)

// Stop says which bound ended a run.
type Stop int

const (
	// StopCount means Count frames were sent.
	StopCount Stop = iota
	// StopDuration means Duration passed first.
	StopDuration
	// StopCanceled means the context ended first.
	StopCanceled
	// StopError means a send failed; Run returns the error.
	StopError
)

// String names the reason.
func (s Stop) String() string {
	switch s {
	case StopCount:
		return "count"
	case StopDuration:
		return "duration"
	case StopCanceled:
		return "canceled"
	case StopError:
		return "error"
	}
	return fmt.Sprintf("Stop(%d)", int(s))
}

// Stats reports a run.
type Stats struct {
	// Sent is how many frames the kernel took; never more than Count.
	// A frame the sending interface refuses (ENOBUFS: a veth whose
	// peer's backlog is full) is sent again, and counted once. One
	// dropped further on, by the bridge port toward the target, is lost
	// without a word but for that port's TX dropped counter.
	Sent int
	// Elapsed is the time from the start of sending until every worker
	// stopped.
	Elapsed time.Duration
	// Stop is the bound that ended the run.
	Stop Stop
	// Method and Workers are what the run actually used (Auto and 0
	// resolved).
	Method  Method
	Workers int
}

// Rate returns frames per second over the run.
func (s Stats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Sent) / s.Elapsed.Seconds()
}

// generator writes frames of one fixed length. Each worker has its own,
// seeded apart, so workers never share state on the hot path.
type generator interface {
	frameLen() int
	// next writes the next frame into b, len(b) == frameLen().
	next(b []byte)
}

// limits are a run's bounds, already validated.
type limits struct {
	count    int
	duration time.Duration // 0: none (only RSTSpray allows it)
	rate     int           // frames/s over all workers; 0: unlimited
}

func (l limits) check(needDuration bool) error {
	if l.count <= 0 {
		return fmt.Errorf("flood: Count = %d: set an upper bound on frames (> 0)", l.count)
	}
	if l.duration < 0 || (needDuration && l.duration == 0) {
		return fmt.Errorf("flood: Duration = %v: set an upper bound on time (> 0)", l.duration)
	}
	if l.rate < 0 {
		return fmt.Errorf("flood: Rate = %d: want frames per second, or 0 for as fast as possible", l.rate)
	}
	return nil
}

func resolve(m Method, workers int) (Method, int, error) {
	switch m {
	case Auto:
		m = defaultMethod
	case Sendmmsg, TXRing:
	default:
		return 0, 0, fmt.Errorf("flood: unknown Method %d", int(m))
	}
	if workers == 0 {
		workers = min(defaultWorkers, runtime.NumCPU())
	}
	if workers < 0 || workers > maxWorkers {
		return 0, 0, fmt.Errorf("flood: Workers = %d: want 0 (default) to %d", workers, maxWorkers)
	}
	return m, workers, nil
}

// run opens workers sockets on link, builds each worker's generator with
// the frames' source MAC (link.SrcMAC, or the interface's own), and sends
// until a bound is reached. Sockets are opened before the clock starts, so
// Elapsed and the Duration bound cover sending only.
func run(ctx context.Context, link Link, m Method, workers int, lim limits, build func(src net.HardwareAddr, worker int) generator) (Stats, error) {
	st := Stats{Method: m, Workers: workers}
	senders, mac, err := openSenders(link, m, workers)
	if err != nil {
		return st, err
	}
	defer func() {
		for _, s := range senders {
			s.close()
		}
	}()
	if link.SrcMAC != nil {
		mac = link.SrcMAC
	}
	gens := make([]generator, workers)
	for i := range gens {
		gens[i] = build(mac, i)
	}

	var (
		left     atomic.Int64 // frames not yet reserved by a worker
		sent     atomic.Int64
		stopMask atomic.Uint32 // 1<<Stop for every reason a worker saw
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	left.Store(int64(lim.count))
	// A failed worker stops the others through wctx.
	wctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	start := time.Now()
	var deadline time.Time
	if lim.duration > 0 {
		deadline = start.Add(lim.duration)
	}
	for i, g := range gens {
		rate := 0.0
		if lim.rate > 0 {
			// Each worker paces its share; the shares add up to Rate.
			rate = float64(lim.rate) / float64(len(gens))
		}
		w := worker{s: senders[i], g: g, left: &left, sent: &sent, deadline: deadline, pace: newPacer(rate, start)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			why, err := w.loop(wctx)
			stopMask.Or(1 << why)
			if err != nil {
				errOnce.Do(func() { firstErr = err })
				stopAll()
			}
		}()
	}
	wg.Wait()
	st.Elapsed = time.Since(start)
	st.Sent = int(sent.Load())
	mask := stopMask.Load()
	switch {
	case firstErr != nil:
		st.Stop = StopError
		return st, firstErr
	case mask&(1<<StopCanceled) != 0:
		st.Stop = StopCanceled
	case mask&(1<<StopCount) != 0:
		st.Stop = StopCount
	default:
		st.Stop = StopDuration
	}
	if st.Stop == StopCanceled {
		return st, ctx.Err()
	}
	return st, nil
}

// worker is one sending goroutine with its own socket and generator.
type worker struct {
	s        sender
	g        generator
	left     *atomic.Int64
	sent     *atomic.Int64
	deadline time.Time
	pace     *pacer
}

// loop sends batches until Count is used up, the deadline passes, the
// context ends or a send fails. Bounds are checked before every batch, so
// a run overshoots Duration by one batch's send at most.
func (w *worker) loop(ctx context.Context) (Stop, error) {
	done := ctx.Done()
	for {
		select {
		case <-done:
			return StopCanceled, nil
		default:
		}
		now := time.Now()
		if !w.deadline.IsZero() && !now.Before(w.deadline) {
			return StopDuration, nil
		}
		n := batchSize
		if w.pace != nil {
			var wait time.Duration
			if n, wait = w.pace.take(now, n); n == 0 {
				if !w.deadline.IsZero() && now.Add(wait).After(w.deadline) {
					wait = w.deadline.Sub(now)
				}
				if !sleep(ctx, wait) {
					return StopCanceled, nil
				}
				continue
			}
		}
		n = reserve(w.left, n)
		if n == 0 {
			return StopCount, nil
		}
		k, err := w.s.send(n, w.g)
		w.sent.Add(int64(k))
		if err != nil {
			return StopError, fmt.Errorf("flood: send on %s: %w", w.s.name(), err)
		}
	}
}

// reserve takes up to n frames from the shared budget and returns how many
// it got.
func reserve(left *atomic.Int64, n int) int {
	for {
		l := left.Load()
		if l <= 0 {
			return 0
		}
		take := min(int64(n), l)
		if left.CompareAndSwap(l, l-take) {
			return int(take)
		}
	}
}

// sleep waits d or until ctx ends; it reports false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// pacer is a token bucket, one per worker with its share of the rate. It
// starts with one token, so the first frame leaves at once, and a run can
// never send more than Workers + Rate×elapsed frames. The bucket holds at most 10 ms of tokens: after a
// stall (a descheduled sender on a busy machine) the run resumes at the
// rate instead of bursting to make up for it.
type pacer struct {
	rate   float64 // frames per second
	burst  float64
	tokens float64
	last   time.Time
}

func newPacer(rate float64, start time.Time) *pacer {
	if rate <= 0 {
		return nil
	}
	return &pacer{rate: rate, burst: math.Max(1, math.Min(batchSize, rate/100)), tokens: 1, last: start}
}

// take returns how many of n frames may go now, or 0 and how long to wait.
// It waits for a millisecond's worth of frames (one frame at low rates) so
// that a sleep, whose granularity is about a millisecond, moves a batch.
func (p *pacer) take(now time.Time, n int) (int, time.Duration) {
	p.tokens = math.Min(p.burst, p.tokens+now.Sub(p.last).Seconds()*p.rate)
	p.last = now
	if p.tokens < 1 {
		want := math.Min(p.burst, math.Max(1, p.rate/1000))
		return 0, time.Duration((want - p.tokens) / p.rate * float64(time.Second))
	}
	k := min(n, int(p.tokens))
	p.tokens -= float64(k)
	return k, 0
}

// errNoMAC is returned by Frames without a SrcMAC: only Run can read the
// interface's own.
var errNoMAC = errors.New("flood: Frames needs Link.SrcMAC (Run reads it from Iface)")

func checkMACs(l Link, needSrc bool) error {
	if len(l.DstMAC) != 6 {
		return fmt.Errorf("flood: DstMAC %q: want the next hop's 6-byte MAC (netlab.Host.MAC)", l.DstMAC)
	}
	if l.SrcMAC != nil && len(l.SrcMAC) != 6 {
		return fmt.Errorf("flood: SrcMAC %q: want a 6-byte MAC, or nil for Iface's own", l.SrcMAC)
	}
	if needSrc && l.SrcMAC == nil {
		return errNoMAC
	}
	return nil
}
