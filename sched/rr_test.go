package sched

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
)

func picks(s Scheduler, n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i], _ = s.Pick(0, nil)
	}
	return out
}

func TestRoundRobinExactRotation(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 100} {
		for _, w := range []uint32{1, 7} {
			t.Run(fmt.Sprintf("%d backends weight %d", n, w), func(t *testing.T) {
				es := equal(n)
				for i := range es {
					es[i].Weight = w
				}
				s := mustNew(t, RoundRobin, es)
				// Every window of n consecutive picks, not only those
				// starting at 0, lands on each backend once, in order.
				got := picks(s, 5*n)
				for i, id := range got {
					if want := uint32(idBase + i%n); id != want {
						t.Fatalf("pick %d = %d; want %d (picks %v)", i, id, want, got[:min(len(got), 20)])
					}
				}
			})
		}
	}
}

// nginx's smooth weighted round robin: the example from the commit message
// that introduced it ("Upstream: smooth weighted round-robin balancing").
func TestRoundRobinSmoothSequence(t *testing.T) {
	const a, b, c = idBase, idBase + 1, idBase + 2
	want := []uint32{a, a, b, a, c, a, a}
	for _, ws := range [][]uint32{{5, 1, 1}, {50, 10, 10}} {
		s := mustNew(t, RoundRobin, weighted(ws...))
		got := picks(s, 3*len(want))
		for i, id := range got {
			if id != want[i%len(want)] {
				t.Fatalf("weights %v: picks %v; want %v repeated", ws, got, want)
			}
		}
	}
	// A second shape, worked by hand from the algorithm: 4,2,1.
	got := picks(mustNew(t, RoundRobin, weighted(4, 2, 1)), 7)
	if want := []uint32{a, b, a, c, a, b, a}; !slices.Equal(got, want) {
		t.Fatalf("weights 4,2,1: picks %v; want %v", got, want)
	}
}

// spread picks cycles*turns times and checks every backend's share is within
// tol (relative) of its weight's share.
func spread(t *testing.T, es []Entry, n int, tol float64) (worst float64) {
	t.Helper()
	s := mustNew(t, RoundRobin, es)
	count := map[uint32]int{}
	for range n {
		id, _ := s.Pick(0, nil)
		count[id]++
	}
	var total float64
	for _, e := range es {
		total += float64(e.Weight)
	}
	for _, e := range es {
		want := float64(n) * float64(e.Weight) / total
		dev := math.Abs(float64(count[e.ID])-want) / want
		worst = max(worst, dev)
		if dev > tol {
			t.Errorf("%s weight %d: %d of %d picks; want %.0f ±%.0f%%", e.Key, e.Weight, count[e.ID], n, want, 100*tol)
		}
	}
	return worst
}

func TestRoundRobinSpread(t *testing.T) {
	// Under the cap: a whole number of cycles is exact, and a million
	// picks that are not one (1e6 mod 116 != 0) stay well within 1%.
	if w := spread(t, weighted(1, 2, 3, 10, 100), 1_000_000, 0.01); w > 0.001 {
		t.Errorf("uncapped worst deviation %.4f%%", 100*w)
	}

	// Over the cap: 100 backends with weights 100000..198703 (gcd 1)
	// sum to 15M, far past RoundRobinMaxSequence, and are scaled down to
	// 110..217 turns each; rounding costs each at most half a turn.
	ws := make([]uint32, 100)
	for i := range ws {
		ws[i] = uint32(100_000 + 997*i)
	}
	es := weighted(ws...)
	r := mustNew(t, RoundRobin, es).(*roundRobin)
	if len(r.seq) > RoundRobinMaxSequence+len(es) || len(r.seq) < RoundRobinMaxSequence/2 {
		t.Fatalf("capped sequence has %d turns; want about %d", len(r.seq), RoundRobinMaxSequence)
	}
	worst := spread(t, es, 10*len(r.seq), 0.01)
	t.Logf("capped: %d turns, worst deviation from weight share %.3f%%", len(r.seq), 100*worst)
}

// A backend far lighter than the rest keeps at least one turn per cycle.
func TestRoundRobinCapKeepsEveryBackend(t *testing.T) {
	es := weighted(math.MaxUint32, math.MaxUint32-1, 1)
	r := mustNew(t, RoundRobin, es).(*roundRobin)
	if len(r.seq) > RoundRobinMaxSequence+len(es) || !slices.Contains(r.seq, idBase+2) {
		t.Fatalf("sequence of %d turns, light backend present: %v", len(r.seq), slices.Contains(r.seq, idBase+2))
	}
}

// Many equal backends take the fast path and rotate exactly past the cap.
func TestRoundRobinManyEqualBackends(t *testing.T) {
	n := 3 * RoundRobinMaxSequence
	s := mustNew(t, RoundRobin, equal(n))
	for i, id := range picks(s, n+5) {
		if want := uint32(idBase + i%n); id != want {
			t.Fatalf("pick %d = %d; want %d", i, id, want)
		}
	}
}

// Concurrent picks share one counter: any number of whole cycles, however
// the goroutines interleave, gives each backend exactly its turns.
func TestRoundRobinConcurrent(t *testing.T) {
	es := weighted(5, 1, 1, 3)
	s := mustNew(t, RoundRobin, es)
	const goroutines, each = 8, 10 * 1000
	var mu sync.Mutex
	count := map[uint32]int{}
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			local := map[uint32]int{}
			for range each {
				id, ok := s.Pick(0, nil)
				if !ok {
					t.Error("Pick reported an empty set")
					return
				}
				local[id]++
			}
			mu.Lock()
			for id, c := range local {
				count[id] += c
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	cycles := goroutines * each / 10 // 80000 picks, 10 turns a cycle
	for _, e := range es {
		if want := cycles * int(e.Weight); count[e.ID] != want {
			t.Errorf("%s: %d picks; want %d", e.Key, count[e.ID], want)
		}
	}
}
