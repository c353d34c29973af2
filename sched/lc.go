package sched

import (
	"math/bits"
	"sync/atomic"

	"golang.org/x/sys/cpu"
)

// leastConn is weighted least connections: the backend minimising
// live/weight, with ties broken by a rotating start so equal backends
// share new flows evenly instead of the first one taking every tie.
type leastConn struct {
	ids     []uint32
	weights []uint64

	_    cpu.CacheLinePad // next is written by every worker; see roundRobin
	next atomic.Uint64
	_    cpu.CacheLinePad
}

func newLeastConn(entries []Entry) *leastConn {
	l := &leastConn{ids: make([]uint32, len(entries)), weights: make([]uint64, len(entries))}
	for i, e := range entries {
		l.ids[i], l.weights[i] = e.ID, uint64(e.Weight)
	}
	return l
}

// Pick reads every backend's live count once: O(backends) per new flow.
// Counts are read without a common snapshot, so concurrent Picks can both
// choose the same backend; the next flows correct for it, as with any
// least-connections balancer fed by counters.
func (l *leastConn) Pick(_ uint64, live LiveCounter) (uint32, bool) {
	n := len(l.ids)
	if n == 0 {
		return 0, false
	}
	start := int((l.next.Add(1) - 1) % uint64(n))
	best, bestLive := -1, uint64(0)
	for k := range n {
		i := start + k
		if i >= n {
			i -= n
		}
		var v uint64
		if live != nil {
			// A negative count is a caller's bug; as idle it cannot
			// make a backend look better than idle.
			v = uint64(max(live.Live(l.ids[i]), 0))
		}
		if best < 0 || lessLoaded(v, l.weights[i], bestLive, l.weights[best]) {
			best, bestLive = i, v
		}
	}
	return l.ids[best], true
}

// lessLoaded reports a/wa < b/wb without division, as a*wb < b*wa in 128
// bits: counts near 2^63 times weights near 2^32 do not fit in 64.
func lessLoaded(a, wa, b, wb uint64) bool {
	ahi, alo := bits.Mul64(a, wb)
	bhi, blo := bits.Mul64(b, wa)
	return ahi < bhi || ahi == bhi && alo < blo
}

// Len is the number of entries.
func (l *leastConn) Len() int { return len(l.ids) }

// Kind is LeastConnections.
func (l *leastConn) Kind() Kind { return LeastConnections }
