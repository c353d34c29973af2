package conntrack

import (
	"math/rand/v2"
	"runtime"
	"testing"
)

// fill creates flows for keys [from, to) spread over two backends.
func fill(tb testing.TB, tab *Table, from, to int) {
	tb.Helper()
	for i := from; i < to; i++ {
		// 32 backends: a million flows need more NAT ports than two have.
		be := Endpoint{IP: [4]byte{10, 0, 0, byte(i % 32)}, Port: 8080}
		k := ClientKey{Client: Endpoint{IP: [4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)}, Port: 1024 + uint16(i%50000)}, VIP: vip}
		if _, err := tab.Create(k, uint32(i%32), be, mac, 2, 0, SYN{}, false); err != nil {
			tb.Fatal(err)
		}
	}
}

func BenchmarkLookupClient(b *testing.B) {
	tab := newTable(b, Config{})
	fill(b, tab, 0, 10000)
	k := ClientKey{Client: Endpoint{IP: [4]byte{100, 0, 19, 136}, Port: 1024 + 5000}, VIP: vip}
	b.ReportAllocs()
	for b.Loop() {
		if tab.LookupClient(k) == nil {
			b.Fatal("missing")
		}
	}
}

func BenchmarkLookupBackend(b *testing.B) {
	tab := newTable(b, Config{})
	fill(b, tab, 0, 10000)
	f := tab.LookupClient(ClientKey{Client: Endpoint{IP: [4]byte{100, 0, 19, 136}, Port: 1024 + 5000}, VIP: vip})
	if f == nil {
		b.Fatal("missing")
	}
	rk := f.ReverseKey()
	b.ReportAllocs()
	for b.Loop() {
		if tab.LookupBackend(rk) == nil {
			b.Fatal("missing")
		}
	}
}

func BenchmarkTrackEstablished(b *testing.B) {
	tab := newTable(b, Config{})
	f, _ := tab.Create(key(1), 0, back0, mac, 2, 0, SYN{Seq: 1, WScale: 7, SACKPerm: true, Window: 64240}, false)
	sa := Segment{Flags: FlagSYN | FlagACK, Seq: 100, Ack: 2 + f.SeqOff, Win: 65160, WScale: 7, SACKPerm: true}
	tab.Track(f, FromBackend, &sa, 0)
	ack := Segment{Flags: FlagACK, Seq: 2, Ack: 101, Win: 500}
	tab.Track(f, FromClient, &ack, 0)
	seg := Segment{Flags: FlagACK | FlagPSH, Seq: 2, Ack: 101, Win: 500, Len: 0}
	b.ReportAllocs()
	for b.Loop() {
		tab.Track(f, FromClient, &seg, 0)
	}
}

func BenchmarkCreateRemove(b *testing.B) {
	tab := newTable(b, Config{})
	fill(b, tab, 0, 10000)
	k := key(1 << 30)
	b.ReportAllocs()
	for b.Loop() {
		f, err := tab.Create(k, 0, back0, mac, 2, 0, SYN{}, false)
		if err != nil {
			b.Fatal(err)
		}
		tab.Remove(f, 0)
	}
}

// BenchmarkSweep1M times one sweep pass over a million flows, none expired
// (the common case: the sweep only looks).
func BenchmarkSweep1M(b *testing.B) {
	tab := newTable(b, Config{NATPortFirst: 1024, NATPortLast: 65535})
	fill(b, tab, 0, 1_000_000)
	b.ReportAllocs()
	for b.Loop() {
		tab.Sweep(0, 1_000_000, nil)
	}
}

// TestMemoryPerFlow reports (and bounds) the heap a flow costs, slab and
// both indexes included.
func TestMemoryPerFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a million flows; run without -short")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tab := newTable(t, Config{NATPortFirst: 1024, NATPortLast: 65535})
	fill(t, tab, 0, 1_000_000)
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / 1e6
	t.Logf("%.0f bytes per flow at 1,000,000 flows", per)
	if per > 400 {
		t.Errorf("%.0f bytes per flow, want at most 400", per)
	}
	runtime.KeepAlive(tab)
}

// BenchmarkImport is a hand-off's import of 14,000 flows toward one
// backend into a fresh table (the restart scenario of make bench). Each
// Import claims the flow's NAT port: a scan of the free list made this
// quadratic (1.2 s for the lot); with the position index it is linear.
func BenchmarkImport(b *testing.B) {
	const n = 14000
	src := newTable(b, Config{NATPortFirst: 40000, NATPortLast: 59999})
	be := Endpoint{IP: [4]byte{198, 18, 0, 11}, Port: 8090}
	var states []FlowState
	for i := 0; i < n; i++ {
		k := ClientKey{Client: Endpoint{IP: [4]byte{198, 19, byte(i >> 8), byte(i)}, Port: 50000}, VIP: Endpoint{IP: [4]byte{198, 18, 0, 2}, Port: 20000}}
		f, err := src.Create(k, 0, be, [6]byte{2}, 2, 0, SYN{Seq: 1}, false)
		if err != nil {
			b.Fatal(err)
		}
		states = append(states, f.Export(0))
	}
	// In the order the old process's table lists them, which is not the
	// order their ports were handed out.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(states), func(i, j int) { states[i], states[j] = states[j], states[i] })
	b.ReportAllocs()
	for b.Loop() {
		dst := newTable(b, Config{NATPortFirst: 40000, NATPortLast: 59999})
		for _, s := range states {
			if _, err := dst.Import(s, 0, 0); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
}
