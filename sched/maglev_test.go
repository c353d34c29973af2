package sched

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func table(tb testing.TB, es []Entry) []uint32 {
	tb.Helper()
	return mustNew(tb, Maglev, es).(*maglev).table
}

func shares(tab []uint32) map[uint32]int {
	n := map[uint32]int{}
	for _, id := range tab {
		n[id]++
	}
	return n
}

// (a) Every backend's preference list visits each entry exactly once: M is
// prime and 1 <= skip < M, and the hashes must keep it that way.
func TestMaglevPermutation(t *testing.T) {
	seen := make([]bool, MaglevTableSize)
	for _, key := range []string{"svc/backend-0", "svc/backend-1", "", "web/10.0.0.1:80"} {
		offset, skip := permutation(key)
		if offset >= MaglevTableSize || skip < 1 || skip >= MaglevTableSize {
			t.Fatalf("%q: offset %d skip %d out of range", key, offset, skip)
		}
		clear(seen)
		c := offset
		for j := range MaglevTableSize {
			if seen[c] {
				t.Fatalf("%q: entry %d visited twice, at step %d", key, c, j)
			}
			seen[c] = true
			if want := uint32((uint64(offset) + uint64(j+1)*uint64(skip)) % MaglevTableSize); step(c, skip) != want {
				t.Fatalf("%q: step from %d = %d; want (offset + j*skip) mod M = %d", key, c, step(c, skip), want)
			}
			c = step(c, skip)
		}
	}
	// Keys that differ in one byte get unrelated lists.
	o0, s0 := permutation("svc/backend-0")
	o1, s1 := permutation("svc/backend-1")
	if o0 == o1 || s0 == s1 {
		t.Fatalf("neighbouring keys share offset or skip: %d/%d %d/%d", o0, o1, s0, s1)
	}
}

// (b) Equal weights: every share within 1% of M/N (in fact within one entry).
func TestMaglevEqualShares(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 100, 1000} {
		es := equal(n)
		got := shares(table(t, es))
		want := float64(MaglevTableSize) / float64(n)
		var worst float64
		for _, e := range es {
			dev := math.Abs(float64(got[e.ID]) - want)
			worst = max(worst, dev)
			if dev/want > 0.01 || dev >= 1 {
				t.Errorf("N=%d: %s owns %d entries; want %.1f (within one)", n, e.Key, got[e.ID], want)
			}
		}
		if len(got) != n {
			t.Errorf("N=%d: table holds %d distinct ids", n, len(got))
		}
		t.Logf("N=%d: worst share %.2f entries from M/N", n, worst)
	}
}

// (c) Weights 1:2:3 give shares within 2% of 1/6, 2/6, 3/6 (and within the
// couple of entries maglevTable promises).
func TestMaglevWeightedShares(t *testing.T) {
	for _, ws := range [][]uint32{{1, 2, 3}, {3, 2, 1}, {100, 200, 300}, {1, 1, 1, 1, 1, 50}, {1000, 1}} {
		es := weighted(ws...)
		got := shares(table(t, es))
		var total float64
		for _, w := range ws {
			total += float64(w)
		}
		for _, e := range es {
			want := float64(MaglevTableSize) * float64(e.Weight) / total
			if dev := math.Abs(float64(got[e.ID]) - want); dev/want > 0.02 || dev > 2+float64(len(es))*float64(e.Weight)/total {
				t.Errorf("weights %v: %s owns %d entries; want %.1f", ws, e.Key, got[e.ID], want)
			}
		}
		if len(ws) == 3 && ws[0] == 1 {
			t.Logf("weights %v: %d, %d, %d entries of %d", ws, got[idBase], got[idBase+1], got[idBase+2], MaglevTableSize)
		}
	}
}

// moved counts entries whose owner differs between two tables.
func moved(a, b []uint32) (n int) {
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// (d) Removing a backend moves its own entries and few others; adding one
// moves about 1/(N+1) of the table, nearly all of it to the new backend.
func TestMaglevMinimalDisruption(t *testing.T) {
	for _, n := range []int{3, 10, 100} {
		es := equal(n)
		before := table(t, es)

		// Remove each backend in turn (every tenth of 100, to keep the
		// test short under -race); the worst case is asserted.
		worstKept := 1.0
		for r := 0; r < n; r += max(1, n/10) {
			rest := slices.Delete(slices.Clone(es), r, r+1)
			after := table(t, rest)
			removed := es[r].ID
			var others, kept int
			for i, id := range before {
				if id == removed {
					if after[i] == removed {
						t.Fatalf("N=%d: entry %d still on the removed backend", n, i)
					}
					continue
				}
				others++
				if after[i] == id {
					kept++
				}
			}
			worstKept = min(worstKept, float64(kept)/float64(others))
		}
		t.Logf("N=%d remove one: at worst %.3f%% of the other backends' entries kept their backend", n, 100*worstKept)
		if n == 10 && worstKept < 0.99 {
			t.Errorf("N=10: only %.3f%% of entries not on the removed backend kept it; want >= 99%%", 100*worstKept)
		}

		// Add one: the new backend takes about 1/(N+1); what else moves
		// is the same kind of collateral as above.
		grown := append(slices.Clone(es), Entry{ID: idBase + uint32(n), Key: fmt.Sprintf("svc/backend-%d", n), Weight: 1})
		after := table(t, grown)
		frac := float64(moved(before, after)) / MaglevTableSize
		ideal := 1 / float64(n+1)
		t.Logf("N=%d add one: %.3f%% of entries moved; minimum possible %.3f%%", n, 100*frac, 100*ideal)
		if frac < ideal*0.99 || frac > ideal+0.01 {
			t.Errorf("N=%d add one: %.3f%% of entries moved; want about %.3f%%", n, 100*frac, 100*ideal)
		}
	}
}

// (e) The table depends on the set alone: rebuilt, or built from the set in
// another order, it is the same. The golden checksum pins it across
// processes and versions; if it changes, every maglev client moves on
// upgrade, so change it only on purpose and say so in the release notes.
func TestMaglevDeterministic(t *testing.T) {
	es := weighted(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	first := table(t, es)
	if again := table(t, es); !slices.Equal(first, again) {
		t.Fatalf("rebuilt table differs in %d entries", moved(first, again))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		shuffled := slices.Clone(es)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if other := table(t, shuffled); !slices.Equal(first, other) {
			t.Fatalf("table from reordered entries differs in %d entries", moved(first, other))
		}
	}

	for _, tc := range []struct {
		es   []Entry
		want uint32
	}{
		{equal(3), 0x39db51f1},
		{es, 0xb15fe96d},
	} {
		tab := table(t, tc.es)
		var b []byte
		for _, id := range tab {
			b = binary.LittleEndian.AppendUint32(b, id)
		}
		sum := crc32.ChecksumIEEE(b)
		if sum != tc.want {
			t.Errorf("table for %d backends has CRC-32 %#08x; golden %#08x: the hashes changed", len(tc.es), sum, tc.want)
		}
	}
	// The hashes themselves, pinned in case a change keeps the tables
	// above by chance.
	if o, s := permutation("svc/backend-0"); o != 9793 || s != 63313 {
		t.Errorf("permutation(svc/backend-0) = %d, %d; golden 9793, 63313", o, s)
	}
	if h := HashAddr([4]byte{198, 18, 0, 10}); h != 0x8ff978284f39ba91 {
		t.Errorf("HashAddr(198.18.0.10) = %#x; golden 0x8ff978284f39ba91", h)
	}
	for _, key := range []string{"", "a", "svc/backend-0"} {
		f := fnv.New64a()
		f.Write([]byte(key))
		if got, want := fnv1a64(key), f.Sum64(); got != want {
			t.Errorf("fnv1a64(%q) = %#x; hash/fnv says %#x", key, got, want)
		}
	}
}

// (f) 1,000 consecutive client addresses, 198.18.1.0 to 198.18.4.231,
// spread over 3 equal backends within 10% of even.
func TestMaglevHashAddrSpread(t *testing.T) {
	s := mustNew(t, Maglev, equal(3))
	count := map[uint32]int{}
	seen := map[uint64]bool{}
	for i := range 1000 {
		ip := [4]byte{198, 18, byte(1 + i/256), byte(i)}
		h := HashAddr(ip)
		seen[h] = true
		id, _ := s.Pick(h, nil)
		count[id]++
		if again, _ := s.Pick(HashAddr(ip), nil); again != id {
			t.Fatalf("%v: picked %d then %d", ip, id, again)
		}
	}
	if len(seen) != 1000 {
		t.Fatalf("%d distinct hashes for 1000 addresses", len(seen))
	}
	t.Logf("1000 clients over 3 backends: %v", count)
	for id, c := range count {
		if c < 300 || c > 367 {
			t.Errorf("backend %d: %d of 1000 clients; want 333 ±10%%", id, c)
		}
	}
	if len(count) != 3 {
		t.Fatalf("clients reached %d backends: %v", len(count), count)
	}
}

// The two populations maglevTable chooses between build the same table,
// whatever the weights.
func TestMaglevPopulationsAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	sets := [][]uint32{{1}, {1, 1, 1}, {1, 2, 3}, {1000, 1, 1, 1}, {math.MaxUint32, 1, 7}}
	for range 10 {
		ws := make([]uint32, 1+rng.IntN(20))
		limit := uint32(1 + rng.IntN(1000))
		for i := range ws {
			ws[i] = 1 + rng.Uint32N(limit)
		}
		sets = append(sets, ws)
	}
	for _, ws := range sets {
		es := weighted(ws...)
		a, _ := walkers(es)
		b, _ := walkers(es)
		if r, h := populateRounds(a), populateHeap(b); !slices.Equal(r, h) {
			t.Fatalf("weights %v: populations differ in %d entries", ws, moved(r, h))
		}
	}
}
