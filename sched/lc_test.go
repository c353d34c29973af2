package sched

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func TestLeastConnFollowsLiveCounts(t *testing.T) {
	const a, b, c = idBase, idBase + 1, idBase + 2
	s := mustNew(t, LeastConnections, equal(3))
	for _, tc := range []struct {
		live liveCounts
		want uint32
	}{
		{liveCounts{a: 5, b: 3, c: 9}, b},
		{liveCounts{a: 0, b: 3, c: 9}, a},
		{liveCounts{a: 5, b: 3, c: 2}, c},
		{liveCounts{a: 1 << 40, b: 1<<40 + 1, c: 1 << 41}, a},
		{liveCounts{a: 4, b: -7, c: 1}, b}, // a negative count reads as idle
	} {
		// Whatever the rotation's start, the minimum wins.
		for range 3 {
			if id, _ := s.Pick(0, tc.live); id != tc.want {
				t.Fatalf("live %v: picked %d; want %d", tc.live, id, tc.want)
			}
		}
	}
}

func TestLeastConnWeights(t *testing.T) {
	const a, b = idBase, idBase + 1
	s := mustNew(t, LeastConnections, weighted(1, 2))
	for _, tc := range []struct {
		live liveCounts
		want uint32
	}{
		{liveCounts{a: 10, b: 15}, b}, // 15/2 < 10/1
		{liveCounts{a: 7, b: 15}, a},  // 7 < 7.5
		{liveCounts{a: 3, b: 5}, b},   // 2.5 < 3
	} {
		for range 2 {
			if id, _ := s.Pick(0, tc.live); id != tc.want {
				t.Fatalf("live %v: picked %d; want %d", tc.live, id, tc.want)
			}
		}
	}

	// Flows that never close fill backends in proportion to weight.
	es := weighted(1, 2, 3)
	s = mustNew(t, LeastConnections, es)
	live := liveCounts{}
	for range 6000 {
		id, _ := s.Pick(0, live)
		live[id]++
	}
	for _, e := range es {
		if want := int64(1000 * e.Weight); live[e.ID] < want-1 || live[e.ID] > want+1 {
			t.Errorf("%s weight %d: %d flows of 6000; want %d ±1", e.Key, e.Weight, live[e.ID], want)
		}
	}
}

// Equal load, equal weight: the rotating start shares ties exactly.
func TestLeastConnTiesRotate(t *testing.T) {
	const a, b, c, d = idBase, idBase + 1, idBase + 2, idBase + 3
	s := mustNew(t, LeastConnections, equal(4))
	for _, live := range []LiveCounter{nil, liveCounts{a: 4, b: 4, c: 4, d: 4}} {
		for k := range 3 {
			got := make([]uint32, 4)
			for i := range got {
				got[i], _ = s.Pick(0, live)
			}
			slices.Sort(got)
			if !slices.Equal(got, []uint32{a, b, c, d}) {
				t.Fatalf("round %d with %v: four picks %v; want each backend once", k, live, got)
			}
		}
	}
	// Ties between only some backends rotate among those.
	live := liveCounts{a: 9, b: 2, c: 9, d: 2}
	count := map[uint32]int{}
	for range 100 {
		id, _ := s.Pick(0, live)
		count[id]++
	}
	if count[b] != 50 || count[d] != 50 {
		t.Fatalf("ties between b and d: %v; want 50 each", count)
	}
	// Equal load per weight is a tie too: 2/1 == 4/2.
	s = mustNew(t, LeastConnections, weighted(1, 2))
	live = liveCounts{a: 2, b: 4}
	count = map[uint32]int{}
	for range 10 {
		id, _ := s.Pick(0, live)
		count[id]++
	}
	if count[a] != 5 || count[b] != 5 {
		t.Fatalf("2/1 vs 4/2: %v; want 5 each", count)
	}
}

// atomicLive is what an engine would pass: per-backend atomic counters.
type atomicLive []atomic.Int64

func (l *atomicLive) Live(id uint32) int64 { return (*l)[id-idBase].Load() }

// Concurrent picks against counters that move under them: no race (run with
// -race), every flow lands on a backend of the set, and load stays even. A
// pick can act on counts that others are changing, but each goroutine has
// at most one such pick in flight, so no backend can run further ahead of
// another than a few picks per goroutine.
func TestLeastConnConcurrent(t *testing.T) {
	const n, goroutines, each = 5, 8, 5000
	s := mustNew(t, LeastConnections, equal(n))
	counters := make(atomicLive, n)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				id, ok := s.Pick(0, &counters)
				if !ok || id < idBase || id >= idBase+n {
					t.Errorf("Pick = %d, %v", id, ok)
					return
				}
				counters[id-idBase].Add(1)
			}
		})
	}
	wg.Wait()
	var total, lo, hi int64 = 0, 1 << 62, 0
	for i := range counters {
		v := counters[i].Load()
		total += v
		lo, hi = min(lo, v), max(hi, v)
	}
	if total != goroutines*each {
		t.Fatalf("%d flows counted; want %d", total, goroutines*each)
	}
	if hi-lo > 4*goroutines {
		t.Fatalf("live counts range %d..%d after %d concurrent picks; want within %d", lo, hi, total, 4*goroutines)
	}
}
