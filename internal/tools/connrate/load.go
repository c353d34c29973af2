package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// loadConfig is one close load: clients connect to addr, send an HTTP GET
// with Connection: close, read the answer to the end and close, again and
// again until the duration is over.
type loadConfig struct {
	addr     string
	path     string
	host     string
	clients  int
	duration time.Duration
	bucket   time.Duration
	// connectTimeout and ioTimeout bound one attempt. A SYN lost in a
	// forwarding gap is retransmitted after 1 s, then 3 s more: 5 s lets
	// two retransmissions through before the attempt counts as an error.
	connectTimeout, ioTimeout time.Duration
	// backoff is how long a client waits after an error before its next
	// attempt, so that a balancer answering every SYN with a RST makes a
	// few thousand errors a second rather than spinning the client's CPU.
	backoff time.Duration
	// progress, if set, gets a line per second as the load runs.
	progress io.Writer
}

// recorder counts outcomes into buckets; its methods are safe for
// concurrent use by the clients.
type recorder struct {
	start   time.Time
	bucket  time.Duration
	conns   []atomic.Int64
	errs    []atomic.Int64
	slowest []atomic.Int64 // ns, per second
	mu      sync.Mutex
	kinds   map[string]int64
}

func newRecorder(start time.Time, bucket, duration time.Duration) *recorder {
	n := int((duration + bucket - 1) / bucket)
	secs := int((duration + time.Second - 1) / time.Second)
	return &recorder{start: start, bucket: bucket, conns: make([]atomic.Int64, n), errs: make([]atomic.Int64, n),
		slowest: make([]atomic.Int64, secs), kinds: map[string]int64{}}
}

// done counts a connection completed at end that took took. Outcomes
// after the last bucket (an attempt that was under way when the time ran
// out) are not counted.
func (r *recorder) done(end time.Time, took time.Duration) {
	i := int(end.Sub(r.start) / r.bucket)
	if i < 0 || i >= len(r.conns) {
		return
	}
	r.conns[i].Add(1)
	sec := int(end.Sub(r.start) / time.Second)
	if sec < len(r.slowest) {
		for {
			old := r.slowest[sec].Load()
			if int64(took) <= old || r.slowest[sec].CompareAndSwap(old, int64(took)) {
				break
			}
		}
	}
}

// failed counts an attempt that failed at end with an error of kind.
func (r *recorder) failed(end time.Time, kind string) {
	i := int(end.Sub(r.start) / r.bucket)
	if i < 0 || i >= len(r.errs) {
		return
	}
	r.errs[i].Add(1)
	r.mu.Lock()
	r.kinds[kind]++
	r.mu.Unlock()
}

// second returns the counts of second sec so far.
func (r *recorder) second(sec int) (conns, errs int64) {
	per := int(time.Second / r.bucket)
	for i := sec * per; i < (sec+1)*per && i < len(r.conns); i++ {
		conns += r.conns[i].Load()
		errs += r.errs[i].Load()
	}
	return conns, errs
}

func (r *recorder) record(cfg loadConfig) *record {
	out := &record{start: r.start.Truncate(time.Millisecond), bucket: r.bucket, clients: cfg.clients, addr: cfg.addr,
		conns: make([]int64, len(r.conns)), errs: make([]int64, len(r.errs)), kinds: map[string]int64{}}
	for i := range r.conns {
		out.conns[i], out.errs[i] = r.conns[i].Load(), r.errs[i].Load()
	}
	for i := range r.slowest {
		out.slowest = append(out.slowest, time.Duration(r.slowest[i].Load()))
	}
	r.mu.Lock()
	for k, v := range r.kinds {
		out.kinds[k] = v
	}
	r.mu.Unlock()
	return out
}

// runLoad runs the load until the duration is over or ctx is done, and
// returns what it counted.
func runLoad(ctx context.Context, cfg loadConfig) *record {
	start := time.Now()
	rec := newRecorder(start, cfg.bucket, cfg.duration)
	ctx, cancel := context.WithDeadline(ctx, start.Add(cfg.duration))
	defer cancel()
	req := []byte("GET " + cfg.path + " HTTP/1.1\r\nHost: " + cfg.host + "\r\nUser-Agent: connrate\r\nConnection: close\r\n\r\n")
	var wg sync.WaitGroup
	for range cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 16<<10)
			for ctx.Err() == nil {
				t0 := time.Now()
				kind := attempt(ctx, cfg, req, buf)
				end := time.Now()
				if kind == "" {
					rec.done(end, end.Sub(t0))
					continue
				}
				if ctx.Err() != nil {
					return // cut short by the end of the run: not the balancer's error
				}
				rec.failed(end, kind)
				select {
				case <-ctx.Done():
				case <-time.After(cfg.backoff):
				}
			}
		}()
	}
	if cfg.progress != nil {
		go func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for sec := 0; ; sec++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				c, e := rec.second(sec)
				_, _ = fmt.Fprintf(cfg.progress, "connrate: second %d: %d connections, %d errors\n", sec, c, e)
			}
		}()
	}
	wg.Wait()
	return rec.record(cfg)
}

var status200 = [][]byte{[]byte("HTTP/1.1 200 "), []byte("HTTP/1.0 200 ")}

// attempt makes one connection and returns "" or the kind of error:
// connect, write, read (an error or a timeout before the end of the
// answer), or status (an answer that is not 200).
func attempt(ctx context.Context, cfg loadConfig, req, buf []byte) string {
	d := net.Dialer{Timeout: cfg.connectTimeout}
	c, err := d.DialContext(ctx, "tcp", cfg.addr)
	if err != nil {
		return "connect"
	}
	defer c.Close()
	// The end of the run cuts the attempt short too, so that the load
	// ends on time; such an attempt is not counted.
	deadline := time.Now().Add(cfg.ioTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	if _, err := c.Write(req); err != nil {
		return "write"
	}
	// Read to the end: the server closes after the answer (Connection:
	// close), so the TIME_WAIT is on its side, as with wrk's conn load.
	var head []byte // the answer's first bytes, for its status line
	for {
		k, err := c.Read(buf)
		if len(head) < 16 {
			head = append(head, buf[:min(k, 16-len(head))]...)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return "timeout"
			}
			return "read"
		}
	}
	for _, p := range status200 {
		if bytes.HasPrefix(head, p) {
			return ""
		}
	}
	if len(head) == 0 {
		return "read" // closed without an answer
	}
	return "status"
}
