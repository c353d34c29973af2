package conntrack

import (
	"runtime"
	"testing"
	"time"
	"unsafe"
)

const sizeofFlow = unsafe.Sizeof(*(*Flow)(nil))

// raceEnabled is set by race_test.go when built with -race.
var raceEnabled bool

// manyBackends returns n distinct backends, enough NAT ports for a million
// flows with the default range when n >= 50.
func manyBackends(n int) []Endpoint {
	bs := make([]Endpoint, n)
	for i := range bs {
		bs[i] = Endpoint{IP: [4]byte{10, 2, byte(i >> 8), byte(i)}, Port: 8080}
	}
	return bs
}

// fill creates flows [from, to) round-robin over the backends at now.
func fill(tb testing.TB, tab *Table, from, to int, now int64) {
	tb.Helper()
	for i := from; i < to; i++ {
		if _, err := tab.Create(key(i), i%len(tab.backends), mac, now, SYN{}); err != nil {
			tb.Fatalf("Create %d: %v", i, err)
		}
	}
}

func BenchmarkLookupClient(b *testing.B) {
	tab := newTable(b, Config{Backends: manyBackends(64)})
	const n = 100_000
	fill(b, tab, 0, n, 0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if tab.LookupClient(key(i)) == nil {
			b.Fatal("miss")
		}
		if i++; i == n {
			i = 0
		}
	}
}

func BenchmarkLookupBackend(b *testing.B) {
	tab := newTable(b, Config{Backends: manyBackends(64)})
	const n = 100_000
	fill(b, tab, 0, n, 0)
	keys := make([]BackendKey, n)
	for i := range keys {
		keys[i] = tab.LookupClient(key(i)).ReverseKey()
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if tab.LookupBackend(keys[i]) == nil {
			b.Fatal("miss")
		}
		if i++; i == n {
			i = 0
		}
	}
}

// BenchmarkLookupParallel is LookupClient from GOMAXPROCS workers, each over
// its own keys, as with a fanout that hashes flows to workers.
func BenchmarkLookupParallel(b *testing.B) {
	tab := newTable(b, Config{Backends: manyBackends(64)})
	const n = 100_000
	fill(b, tab, 0, n, 0)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if tab.LookupClient(key(i)) == nil {
				b.Fatal("miss")
			}
			if i += 7; i >= n {
				i -= n
			}
		}
	})
}

// BenchmarkObserve is the per-packet update of an established flow (data or
// ACK), the common case.
func BenchmarkObserve(b *testing.B) {
	tab := newTable(b, Config{})
	f := mustCreate(b, tab, key(1), 0, 0)
	tab.Observe(f, FromBackend, FlagSYN|FlagACK, 60, 0)
	b.ReportAllocs()
	now := int64(0)
	for b.Loop() {
		now++
		tab.Observe(f, FromClient, FlagACK, 1500, now)
	}
}

// BenchmarkObserveLifecycle is a whole short connection's flag sequence,
// including every state transition.
func BenchmarkObserveLifecycle(b *testing.B) {
	tab := newTable(b, Config{})
	seq := []step{bSYNACK, cACK, cData, bACK, cFIN, bFIN, cACK}
	f := &Flow{Backend: 0}
	b.ReportAllocs()
	for b.Loop() {
		f.word.Store(uint32(StateSynSent) | liveBit)
		tab.live[0].n.Add(1)
		for i, s := range seq {
			tab.Observe(f, s.d, s.flags, 100, int64(i))
		}
	}
}

// BenchmarkCreate inserts new flows into a growing table (so map growth is
// part of the cost), starting over with an empty table every 2^20 flows.
func BenchmarkCreate(b *testing.B) {
	cfg := Config{Backends: manyBackends(64), MaxFlows: 1 << 21}
	tab := newTable(b, cfg)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == 1<<20 {
			b.StopTimer()
			tab, i = newTable(b, cfg), 0
			b.StartTimer()
		}
		if _, err := tab.Create(key(i), i&63, mac, 0, SYN{}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkCreateRemove is the steady state: one flow in, one out.
func BenchmarkCreateRemove(b *testing.B) {
	tab := newTable(b, Config{Backends: manyBackends(64)})
	fill(b, tab, 0, 100_000, 0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f, err := tab.Create(key(100_000+i), i&63, mac, 0, SYN{})
		if err != nil {
			b.Fatal(err)
		}
		tab.Remove(f)
		i = (i + 1) & 0xffff
	}
}

// BenchmarkSweep1M sweeps a table of 1,000,000 flows of which half have
// expired. The expired half is created again, outside the timer, before each
// sweep.
func BenchmarkSweep1M(b *testing.B) {
	const n = 1_000_000
	tab := newTable(b, Config{Backends: manyBackends(64), HalfOpenTimeout: time.Second})
	old, fresh := int64(0), 10*sec
	fill(b, tab, 0, n/2, fresh)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		fill(b, tab, n/2, n, old)
		if tab.Len() != n {
			b.Fatalf("Len %d", tab.Len())
		}
		runtime.GC() // the refill's garbage is not the sweep's cost
		b.StartTimer()
		if got := tab.Sweep(fresh); got != n/2 {
			b.Fatalf("Sweep removed %d, want %d", got, n/2)
		}
	}
}

// TestMemoryPerFlow reports the heap cost of a flow in a full default-sized
// table (1,000,000 flows) and fails if it regresses badly.
func TestMemoryPerFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts 1,000,000 flows")
	}
	if raceEnabled {
		t.Skip("too slow under the race detector")
	}
	const n = 1_000_000
	tab := newTable(t, Config{Backends: manyBackends(64)})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fill(t, tab, 0, n, 0)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if tab.Len() != n {
		t.Fatalf("Len %d", tab.Len())
	}
	perFlow := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per flow (Flow struct %d bytes; heap %d MiB for %d flows)",
		perFlow, sizeofFlow, (after.HeapAlloc-before.HeapAlloc)>>20, n)
	if perFlow > 1024 {
		t.Errorf("%.0f bytes per flow, want < 1 KiB", perFlow)
	}
	runtime.KeepAlive(tab)
}
