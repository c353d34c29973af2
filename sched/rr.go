package sched

import (
	"math"
	"sync/atomic"

	"golang.org/x/sys/cpu"
)

// RoundRobinMaxSequence caps the precomputed round-robin sequence. Weights
// whose sum (after dividing by their gcd) is larger are scaled down to sum
// to about this many turns, each kept at least 1, so a backend's share is
// off by at most half a turn in RoundRobinMaxSequence: 0.3% for a backend
// with 1% of the weight. The cap bounds both the sequence's memory (64 KiB
// of ids) and its build, which is O(sequence x backends): 16384 turns over
// 100 unequal backends took 3-6 ms, over 1000 16-50 ms, on a shared 2-core
// machine under a load average of 10-20 (BenchmarkRoundRobinBuild), off the
// packet path. Equal weights skip that loop (the cycle is the entries in
// order), and with more backends than the cap every backend still gets one
// turn.
const RoundRobinMaxSequence = 1 << 14

// roundRobin steps one shared counter through a precomputed smooth weighted
// sequence, so Pick is a single atomic add and an index.
type roundRobin struct {
	seq []uint32 // backend ids, one per turn
	n   int      // entries the sequence was built from

	// Workers on every core add to next; the padding keeps its cache
	// line from also holding seq, which every Pick reads.
	_    cpu.CacheLinePad
	next atomic.Uint64
	_    cpu.CacheLinePad
}

func newRoundRobin(entries []Entry) *roundRobin {
	return &roundRobin{seq: smoothSequence(entries), n: len(entries)}
}

// Pick returns the next turn. Every call takes one turn, so n consecutive
// picks over n equal backends land on each exactly once.
func (r *roundRobin) Pick(uint64, LiveCounter) (uint32, bool) {
	if len(r.seq) == 0 {
		return 0, false
	}
	i := r.next.Add(1) - 1
	return r.seq[i%uint64(len(r.seq))], true
}

// Len is the number of entries.
func (r *roundRobin) Len() int { return r.n }

// Kind is RoundRobin.
func (r *roundRobin) Kind() Kind { return RoundRobin }

// smoothSequence is one full cycle of nginx's smooth weighted round robin
// (ngx_http_upstream_get_peer): every turn each backend's current weight
// grows by its weight, the largest (the first of equals) is chosen and
// loses the total. A cycle has sum(weights) turns and gives each backend
// exactly its weight in turns, spread as evenly as the weights allow.
func smoothSequence(entries []Entry) []uint32 {
	if len(entries) == 0 {
		return nil
	}
	w := scaledWeights(entries)
	var total int64
	for _, x := range w {
		total += x
	}
	seq := make([]uint32, total)
	if int(total) == len(w) {
		// Equal weights: the cycle is the entries in order, and this
		// keeps a service of thousands of equal backends from paying
		// the O(sequence x backends) build below.
		for i, e := range entries {
			seq[i] = e.ID
		}
		return seq
	}
	current := make([]int64, len(w))
	for t := range seq {
		best, bestCurrent := 0, int64(math.MinInt64)
		for i, x := range w {
			c := current[i] + x
			current[i] = c
			if c > bestCurrent {
				best, bestCurrent = i, c
			}
		}
		current[best] -= total
		seq[t] = entries[best].ID
	}
	return seq
}

// scaledWeights divides the weights by their gcd, which shortens the cycle
// without changing the order (5,1,1 and 50,10,10 give the same turns), and
// scales them down if the cycle would still exceed RoundRobinMaxSequence.
func scaledWeights(entries []Entry) []int64 {
	var g, total uint64
	for _, e := range entries {
		g = gcd(uint64(e.Weight), g)
	}
	for _, e := range entries {
		total += uint64(e.Weight) / g
	}
	w := make([]int64, len(entries))
	if total <= RoundRobinMaxSequence {
		for i, e := range entries {
			w[i] = int64(uint64(e.Weight) / g)
		}
		return w
	}
	// total > cap >= 1 and weights are below 2^32, so the products fit
	// in 64 bits; round to nearest, keep every backend in the cycle.
	var g2 uint64
	for i, e := range entries {
		x := (uint64(e.Weight)/g*RoundRobinMaxSequence + total/2) / total
		x = max(x, 1)
		w[i] = int64(x)
		g2 = gcd(x, g2)
	}
	for i := range w {
		w[i] /= int64(g2)
	}
	return w
}
