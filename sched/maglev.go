package sched

import (
	"encoding/binary"
	"slices"
	"strings"
)

// MaglevTableSize is the lookup table's size M: a prime, so that every skip
// in 1..M-1 walks all M entries (Maglev, section 3.4), and much larger than
// the number of backends, which keeps shares within about N/M of even.
// 65537 is also what Katran uses. Each table is 256 KiB of ids.
const MaglevTableSize = 65537

// Fixed hash seeds. The table must be the same in every process and after
// a restart, or a restarted or second balancer would send established
// clients elsewhere; so no hash/maphash and no random seed. Changing any of
// these moves nearly every client of every maglev service.
const (
	seedOffset uint64 = 0x243f6a8885a308d3 // digits of pi, nothing up the sleeve
	seedSkip   uint64 = 0x13198a2e03707344
	seedAddr   uint64 = 0xa4093822299f31d0
)

// maglev answers Pick with one table lookup.
type maglev struct {
	table []uint32 // MaglevTableSize backend ids; empty for an empty set
	n     int
}

func newMaglev(entries []Entry) *maglev {
	return &maglev{table: maglevTable(entries), n: len(entries)}
}

// Pick returns the backend owning the client's table entry. The same h
// picks the same backend for as long as the set and weights are unchanged.
func (m *maglev) Pick(h uint64, _ LiveCounter) (uint32, bool) {
	if len(m.table) == 0 {
		return 0, false
	}
	// A constant divisor: the compiler turns this into a multiply.
	return m.table[h%MaglevTableSize], true
}

// Len is the number of entries.
func (m *maglev) Len() int { return m.n }

// Kind is Maglev.
func (m *maglev) Kind() Kind { return Maglev }

// permutation returns where a backend's preference list starts and its
// stride: its j-th preferred entry is (offset + j*skip) mod M (section 3.4,
// with h1 and h2 made two independent 64-bit hashes of one key).
func permutation(key string) (offset, skip uint32) {
	f := fnv1a64(key)
	offset = uint32(mix64(f^seedOffset) % MaglevTableSize)
	skip = uint32(mix64(f^seedSkip)%(MaglevTableSize-1)) + 1
	return offset, skip
}

// maglevTable populates the table as the paper's Pseudocode 1 does, round by
// round, each backend taking its next preferred entry that is still free,
// until every entry has an owner. Entries are taken in Key order, so the
// table depends on the set alone.
//
// Weights: in each round a backend earns credit equal to its weight and
// takes one entry per whole largest weight of credit. The heaviest
// backends take an entry every round, one with half their weight every
// other round, and so on; after R rounds backend i has taken
// floor(R*w_i/w_max) entries, so with W = sum(w) it ends with more than
// M*w_i/W - 2 and fewer than M*w_i/W + 1 + N*w_i/W entries: a couple of
// entries from exact. (Katran's MaglevHashV2 uses the same credit.) Equal
// weights reduce to the paper's unweighted population exactly, and every
// backend ends with M/N rounded down or up.
//
// The preference lists are generated as they are walked, not stored: O(N)
// memory instead of the paper's O(N*M) permutation table. A build for 100
// backends took 2-3 ms (about 1 ms for 3, 3-5 ms for 1000) on a shared
// 2-core machine under a load average of 10-20 (BenchmarkMaglevBuild).
func maglevTable(entries []Entry) []uint32 {
	if len(entries) == 0 {
		return nil
	}
	ws, total := walkers(entries)
	// Both populations give the same table (TestMaglevPopulationsAgree).
	// Round by round costs a visit per backend per round, and there are
	// about M*wmax/W rounds; the heap costs log2(N) steps per entry but
	// skips rounds in which a light backend takes nothing. One backend of
	// weight 1000 among 99 of weight 1 is about M rounds of 100 visits.
	if uint64(len(ws))*ws[0].wmax <= 4*total {
		return populateRounds(ws)
	}
	return populateHeap(ws)
}

// walkers starts one walker per entry, in Key order, and sums the weights.
func walkers(entries []Entry) ([]walker, uint64) {
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	var wmax, total uint64
	for _, e := range sorted {
		wmax = max(wmax, uint64(e.Weight))
		total += uint64(e.Weight)
	}
	ws := make([]walker, len(sorted))
	for i, e := range sorted {
		off, skip := permutation(e.Key)
		ws[i] = walker{next: off, skip: skip, id: e.ID, weight: uint64(e.Weight), wmax: wmax}
		ws[i].round = ws[i].placementRound()
	}
	return ws, total
}

// take gives the walker its next preferred entry that is still free.
func (w *walker) take(table []uint32, taken []bool) {
	c := w.next
	for taken[c] {
		c = step(c, w.skip)
	}
	table[c], taken[c] = w.id, true
	w.next = step(c, w.skip)
	w.placed++
}

// populateRounds is the paper's loop with credit: every round, every walker
// earns its weight and takes an entry per whole wmax earned.
func populateRounds(ws []walker) []uint32 {
	table := make([]uint32, MaglevTableSize)
	taken := make([]bool, MaglevTableSize)
	credit := make([]uint64, len(ws))
	for filled := 0; ; {
		for i := range ws {
			w := &ws[i]
			if credit[i] += w.weight; credit[i] < w.wmax {
				continue
			}
			credit[i] -= w.wmax
			w.take(table, taken)
			if filled++; filled == MaglevTableSize {
				return table
			}
		}
	}
}

// populateHeap visits only the walkers due: they wait in a heap ordered by
// (round of their next entry, position in Key order), the order in which
// populateRounds reaches them.
func populateHeap(ws []walker) []uint32 {
	heap := make([]int32, len(ws))
	for i := range heap {
		heap[i] = int32(i)
	}
	for i := len(heap)/2 - 1; i >= 0; i-- {
		siftDown(heap, ws, i)
	}
	table := make([]uint32, MaglevTableSize)
	taken := make([]bool, MaglevTableSize)
	for range MaglevTableSize {
		w := &ws[heap[0]]
		w.take(table, taken)
		w.round = w.placementRound()
		siftDown(heap, ws, 0)
	}
	return table
}

// walker is one backend's progress through its preference list.
type walker struct {
	next, skip, id uint32 // next preferred entry, stride, backend id
	weight, wmax   uint64
	placed         uint64 // entries taken so far
	round          uint64 // round in which it takes its next entry (populateHeap)
}

// placementRound is the round of the walker's next entry: credit after r
// rounds is r*weight, so its k-th entry comes in the first round with
// r*weight >= k*wmax. k <= M < 2^17 and wmax < 2^32: no overflow.
func (w *walker) placementRound() uint64 {
	k := w.placed + 1
	return (k*w.wmax + w.weight - 1) / w.weight
}

// before orders walkers as the round-by-round population visits them.
func before(ws []walker, a, b int32) bool {
	ra, rb := ws[a].round, ws[b].round
	return ra < rb || ra == rb && a < b
}

func siftDown(heap []int32, ws []walker, i int) {
	for {
		l := 2*i + 1
		if l >= len(heap) {
			return
		}
		m := l
		if r := l + 1; r < len(heap) && before(ws, heap[r], heap[l]) {
			m = r
		}
		if !before(ws, heap[m], heap[i]) {
			return
		}
		heap[i], heap[m] = heap[m], heap[i]
		i = m
	}
}

// step is (c + skip) mod M for c, skip < M; the sum fits in 32 bits.
func step(c, skip uint32) uint32 {
	c += skip
	if c >= MaglevTableSize {
		c -= MaglevTableSize
	}
	return c
}

// HashAddr is the client hash maglev's Pick takes: a fixed-seed mix of the
// IPv4 address, the same in every process and after restarts, so a client
// keeps its backend across a balancer restart or failover to a second
// balancer with the same set. It hashes the address only, not the port: all
// of a client's connections go to one backend (source affinity).
func HashAddr(ip [4]byte) uint64 {
	return mix64(uint64(binary.BigEndian.Uint32(ip[:])) ^ seedAddr)
}

// fnv1a64 is FNV-1a, 64 bits, written out rather than taken from hash/fnv:
// no []byte copy of the key, and the definition every table's stability
// rests on is here to read.
func fnv1a64(s string) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime64
	}
	return h
}

// mix64 is MurmurHash3's 64-bit finaliser: a bijection in which every input
// bit flips each output bit with probability close to 1/2. FNV-1a alone
// spreads keys that differ only in their last byte ("web-1", "web-2")
// poorly over the high bits; the modulo by M needs all of them mixed.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
