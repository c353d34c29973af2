package sched

import (
	"fmt"
	"math/bits"
	"strings"
	"testing"
)

var kinds = []Kind{RoundRobin, LeastConnections, Maglev}

// idBase keeps ids apart from slice indexes, so a scheduler that returns an
// index where it should return an id fails every test.
const idBase = 1000

// equal returns n entries of weight 1.
func equal(n int) []Entry {
	w := make([]uint32, n)
	for i := range w {
		w[i] = 1
	}
	return weighted(w...)
}

// weighted returns one entry per weight, id idBase+i, key "svc/backend-i".
func weighted(weights ...uint32) []Entry {
	es := make([]Entry, len(weights))
	for i, w := range weights {
		es[i] = Entry{ID: uint32(idBase + i), Key: fmt.Sprintf("svc/backend-%d", i), Weight: w}
	}
	return es
}

func mustNew(tb testing.TB, kind Kind, es []Entry) Scheduler {
	tb.Helper()
	s, err := New(kind, es)
	if err != nil {
		tb.Fatalf("New(%s, %d entries): %v", kind, len(es), err)
	}
	return s
}

// liveCounts is a LiveCounter over a map, for tests that set counts by id.
type liveCounts map[uint32]int64

func (l liveCounts) Live(id uint32) int64 { return l[id] }

func TestNewRejects(t *testing.T) {
	tooMany := make([]Entry, MaglevTableSize+1)
	for i := range tooMany {
		tooMany[i] = Entry{ID: uint32(i), Key: fmt.Sprint(i), Weight: 1}
	}
	for _, tc := range []struct {
		name    string
		kind    Kind
		entries []Entry
		want    string
	}{
		{"unknown kind", "wrr", equal(2), `unknown scheduler "wrr"`},
		{"empty kind", "", equal(2), `unknown scheduler ""`},
		{"weight 0", RoundRobin, []Entry{{1, "a", 1}, {2, "b", 0}}, `"b" (id 2) has weight 0`},
		{"duplicate id", LeastConnections, []Entry{{1, "a", 1}, {1, "b", 1}}, `"a" and "b" share id 1`},
		{"duplicate key", Maglev, []Entry{{1, "a", 1}, {2, "a", 1}}, `share key "a"`},
		{"table too small", Maglev, tooMany, "do not fit a Maglev table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.kind, tc.entries)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, %v; want an error containing %q", s, err, tc.want)
			}
		})
	}
}

func TestEmptySetPicksNothing(t *testing.T) {
	for _, k := range kinds {
		for _, es := range [][]Entry{nil, {}} {
			s := mustNew(t, k, es)
			if id, ok := s.Pick(1, liveCounts{}); ok {
				t.Errorf("%s: empty set picked %d", k, id)
			}
			if s.Len() != 0 || s.Kind() != k {
				t.Errorf("%s: Len %d Kind %q; want 0, %q", k, s.Len(), s.Kind(), k)
			}
		}
	}
}

func TestSingleBackendAlwaysPicked(t *testing.T) {
	es := []Entry{{ID: 7, Key: "only", Weight: 3}}
	for _, k := range kinds {
		s := mustNew(t, k, es)
		for h := range uint64(100) {
			if id, ok := s.Pick(h*0x9e3779b97f4a7c15, liveCounts{7: int64(h)}); !ok || id != 7 {
				t.Fatalf("%s: Pick = %d, %v; want 7, true", k, id, ok)
			}
		}
		if s.Len() != 1 {
			t.Errorf("%s: Len = %d", k, s.Len())
		}
	}
}

// New must copy what it needs: the engine reuses its slice for the next build.
func TestNewDoesNotKeepEntries(t *testing.T) {
	for _, k := range kinds {
		es := equal(3)
		s := mustNew(t, k, es)
		for i := range es {
			es[i] = Entry{ID: 99, Key: "changed", Weight: 5}
		}
		for range 10 {
			if id, _ := s.Pick(12345, nil); id < idBase || id >= idBase+3 {
				t.Fatalf("%s: picked %d after the caller reused its slice", k, id)
			}
		}
	}
}

// counterArray is pointer-shaped when passed as *counterArray, as an engine's
// backend table would be.
type counterArray [100]int64

func (c *counterArray) Live(id uint32) int64 { return c[id%100] }

func TestPickAllocatesNothing(t *testing.T) {
	var live counterArray
	var lc LiveCounter = &live
	fn := LiveFunc(func(id uint32) int64 { return live[id%100] })
	for _, k := range kinds {
		s := mustNew(t, k, weighted(1, 2, 3, 4, 5))
		h := uint64(0)
		for _, counter := range []LiveCounter{lc, fn, nil} {
			if a := testing.AllocsPerRun(1000, func() {
				h += 0x9e3779b97f4a7c15
				s.Pick(h, counter)
			}); a != 0 {
				t.Errorf("%s with %T: %v allocations per Pick", k, counter, a)
			}
		}
	}
}

// FuzzSchedulers checks every kind's invariants on arbitrary sets: bytes
// give weights (1..256) and, for lc, live counts.
func FuzzSchedulers(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0}, uint64(1))
	f.Add([]byte{0, 5, 0, 3, 0, 200, 255, 1}, uint64(42))
	f.Add([]byte{255, 0, 1, 9, 128, 7, 3, 3, 3, 3, 3, 3}, uint64(1<<63))
	f.Fuzz(func(t *testing.T, data []byte, h uint64) {
		// Pairs of (weight-1, live); at most 32 backends keeps each run fast.
		n := min(len(data)/2, 32)
		if n == 0 {
			return
		}
		es := make([]Entry, n)
		live := liveCounts{}
		var g, total uint64
		for i := range es {
			es[i] = Entry{ID: uint32(idBase + i), Key: fmt.Sprintf("k%d", i), Weight: uint32(data[2*i]) + 1}
			live[es[i].ID] = int64(data[2*i+1])
			g = gcd(uint64(es[i].Weight), g)
			total += uint64(es[i].Weight)
		}

		// rr: one cycle gives each backend exactly weight/gcd turns
		// (n <= 32 weights <= 256 stay under the cap).
		rr := mustNew(t, RoundRobin, es)
		cycle := total / g
		turns := map[uint32]uint64{}
		for range cycle {
			id, _ := rr.Pick(h, nil)
			turns[id]++
		}
		for _, e := range es {
			if turns[e.ID] != uint64(e.Weight)/g {
				t.Fatalf("rr: %s got %d of %d turns; want %d", e.Key, turns[e.ID], cycle, uint64(e.Weight)/g)
			}
		}

		// lc: no backend is less loaded than the one picked.
		lc := mustNew(t, LeastConnections, es)
		for range 3 {
			id, _ := lc.Pick(h, live)
			pw := uint64(es[id-idBase].Weight)
			for _, e := range es {
				if lessLoaded(uint64(live[e.ID]), uint64(e.Weight), uint64(live[id]), pw) {
					t.Fatalf("lc picked %d (%d live / %d) but %s has %d / %d", id, live[id], pw, e.Key, live[e.ID], e.Weight)
				}
			}
		}

		// maglev: every entry is in the set, shares within the bound
		// maglevTable documents.
		m := mustNew(t, Maglev, es).(*maglev)
		owned := map[uint32]int{}
		for _, id := range m.table {
			owned[id]++
		}
		for _, e := range es {
			ideal := float64(MaglevTableSize) * float64(e.Weight) / float64(total)
			lo, hi := ideal-2, ideal+1+float64(n)*float64(e.Weight)/float64(total)
			if got := float64(owned[e.ID]); got <= lo || got >= hi {
				t.Fatalf("maglev: %s (weight %d of %d) owns %v entries; want in (%.1f, %.1f)", e.Key, e.Weight, total, got, lo, hi)
			}
			delete(owned, e.ID)
		}
		if len(owned) != 0 {
			t.Fatalf("maglev table holds ids outside the set: %v", owned)
		}
		if id, ok := m.Pick(h, nil); !ok || id != m.table[h%MaglevTableSize] {
			t.Fatalf("maglev Pick(%d) = %d, %v; table says %d", h, id, ok, m.table[h%MaglevTableSize])
		}
	})
}

func TestLessLoaded(t *testing.T) {
	const big = 1<<63 - 1
	for _, tc := range []struct {
		a, wa, b, wb uint64
		want         bool
	}{
		{1, 1, 2, 1, true},
		{2, 1, 1, 1, false},
		{1, 1, 1, 1, false},   // equal is not less: ties go to rotation
		{10, 1, 15, 2, false}, // 10 > 7.5
		{15, 2, 10, 1, true},
		{0, 1, 0, 5, false},
		// a*wb and b*wa overflow 64 bits: (2^63-1)/(2^32-1) vs (2^63-2)/(2^32-2)
		{big, 1<<32 - 1, big - 1, 1<<32 - 2, true},
		{big - 1, 1<<32 - 2, big, 1<<32 - 1, false},
	} {
		if got := lessLoaded(tc.a, tc.wa, tc.b, tc.wb); got != tc.want {
			t.Errorf("lessLoaded(%d/%d < %d/%d) = %v", tc.a, tc.wa, tc.b, tc.wb, got)
		}
	}
	// The 128-bit products really are needed for the case above.
	if hi, _ := bits.Mul64(big, 1<<32-2); hi == 0 {
		t.Fatal("test case does not overflow 64 bits")
	}
}
