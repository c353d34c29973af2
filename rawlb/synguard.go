package rawlb

import "github.com/rawlb/rawlb/packet"

// The SYN guard: the last line of the SYN-flood defence, for floods faster
// than rawlb can answer.
//
// SYN cookies keep a flood from filling the flow table, but each spoofed
// SYN still costs a SYN-ACK, about 2.5 µs of CPU here (the cookie, the
// frame, and the kernel's send through the veth and bridge), while the
// flood generator of the end-to-end test sends one for about 1.6 µs. On the
// test machine a 536,000 SYN/s flood then overran the receive ring: 54% of
// all frames were dropped by the kernel, the keep-alive load fell to 1% of
// its rate, and 4 of 37 legitimate connects failed.
//
// A spoofed flood never retransmits: each SYN carries a new address, port
// and sequence number. A real client's SYN, unanswered, comes again after
// its retransmission timeout (1 s on Linux, RFC 6298 section 2.1), with
// the same tuple and sequence number. So while SYNs arrive faster than the
// SYN-ACK rate limit allows, the guard answers only a SYN it has seen
// before; the first of each is remembered and dropped. A flood SYN then
// costs a hash and a table write (tens of nanoseconds), the rings drain,
// and every real client connects, one retransmission late.
//
// The memory is a 4-way set-associative table of fingerprints and times,
// replacing the oldest entry of a set: at a million SYNs a second, an entry
// survives about a second (2^18 sets, 4 ways) — long enough for the first
// retransmission.
const (
	guardSets   = 1 << 18
	guardWays   = 4
	guardWindow = 100 * 1e6 // ns: the SYN rate is judged per window
	guardMaxAge = 5000      // ms: a retransmission within this is answered
)

type guardEntry struct {
	fp uint32 // fingerprint of tuple and ISN; 0 is empty
	ms uint32 // when it was first seen, milliseconds on the worker's clock
}

// synGuard is one worker's guard: the worker owns it, so no locks.
type synGuard struct {
	table []guardEntry // allocated the first time the guard engages

	window  int64 // start of the current window (table clock)
	syns    int   // SYNs without a flow in the current window
	until   int64 // the guard stays on until then
	engaged bool
}

// guardHold is how long the guard stays on after the last window that
// called for it: while on, the worker is cheap per SYN and so counts more
// of them than it would otherwise reach, and it must not flap off and on.
const guardHold = 2 * 1e9

// count notes a SYN without a flow at now and reports whether the guard is
// engaged: SYNs came faster than perSec in the last full window.
func (g *synGuard) count(now int64, perSec int64) bool {
	if now-g.window >= guardWindow {
		last := g.syns
		if now-g.window >= 2*guardWindow {
			last = 0 // a window without SYNs passed
		}
		if perSec > 0 && int64(last)*10 > perSec {
			g.until = now + guardHold
		}
		g.engaged = now < g.until
		g.syns = 0
		g.window = now
	}
	g.syns++
	return g.engaged
}

// seen reports whether the SYN with this tuple and ISN came before (within
// guardMaxAge), and remembers it if not.
func (g *synGuard) seen(f *packet.Frame, nowMs uint32) bool {
	if g.table == nil {
		g.table = make([]guardEntry, guardSets*guardWays)
	}
	src, dst := f.IP.Source(), f.IP.Destination()
	a := uint64(be32(src))<<32 | uint64(be32(dst))
	b := uint64(f.TCP.SourcePort())<<48 | uint64(f.TCP.DestinationPort())<<32 | uint64(f.TCP.Seq())
	h := mix64(a ^ mix64(b))
	fp := uint32(h>>32) | 1
	set := g.table[(h&(guardSets-1))*guardWays:][:guardWays]
	oldest := 0
	for i := range set {
		e := &set[i]
		if e.fp == fp && nowMs-e.ms <= guardMaxAge {
			// Kept: a client whose SYN-ACK is lost retransmits again.
			return true
		}
		if e.fp == 0 || nowMs-e.ms > nowMs-set[oldest].ms {
			oldest = i
		}
	}
	set[oldest] = guardEntry{fp: fp, ms: nowMs}
	return false
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
