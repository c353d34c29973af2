package sched

import (
	"fmt"
	"testing"
)

// benchLive is per-backend counts indexed by id - idBase, passed as a
// pointer so the interface conversion does not allocate.
type benchLive []int64

func (l *benchLive) Live(id uint32) int64 { return (*l)[id-idBase] }

func BenchmarkPick(b *testing.B) {
	for _, k := range kinds {
		for _, n := range []int{3, 100} {
			b.Run(fmt.Sprintf("%s/%d", k, n), func(b *testing.B) {
				ws := make([]uint32, n)
				live := make(benchLive, n)
				for i := range ws {
					ws[i] = uint32(1 + i%5)
					live[i] = int64(100 + i*7%13)
				}
				s := mustNew(b, k, weighted(ws...))
				var counter LiveCounter = &live
				b.ReportAllocs()
				h := uint64(0)
				var sink uint32
				for b.Loop() {
					h += 0x9e3779b97f4a7c15
					id, _ := s.Pick(h, counter)
					sink += id
				}
				_ = sink
			})
		}
	}
}

// Every core picking at once: rr and lc share one atomic counter.
func BenchmarkPickParallel(b *testing.B) {
	for _, k := range kinds {
		b.Run(string(k), func(b *testing.B) {
			s := mustNew(b, k, weighted(1, 2, 3))
			live := make(benchLive, 3)
			var counter LiveCounter = &live
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				h := uint64(0)
				for pb.Next() {
					h += 0x9e3779b97f4a7c15
					s.Pick(h, counter)
				}
			})
		})
	}
}

func BenchmarkHashAddr(b *testing.B) {
	var sink uint64
	ip := [4]byte{198, 18, 1, 0}
	for b.Loop() {
		ip[3]++
		sink += HashAddr(ip)
	}
	_ = sink
}

// The build runs off the packet path on every change of a service's set;
// the brief's budget is well under 10 ms for 100 backends.
func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{3, 100, 1000} {
		// skewed: one backend of weight 1000 among weight-1 ones, the
		// most rounds the weighted population can take.
		for _, name := range []string{"equal", "weighted", "skewed"} {
			b.Run(fmt.Sprintf("%d/%s", n, name), func(b *testing.B) {
				ws := make([]uint32, n)
				for i := range ws {
					ws[i] = 1
					switch {
					case name == "weighted":
						ws[i] = uint32(1 + i%10)
					case name == "skewed" && i == 0:
						ws[i] = 1000
					}
				}
				es := weighted(ws...)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := New(Maglev, es); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// The worst case of the smooth sequence's O(turns x backends) build:
// unequal weights filling the cap.
func BenchmarkRoundRobinBuild(b *testing.B) {
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ws := make([]uint32, n)
			for i := range ws {
				ws[i] = uint32(100_000 + 997*i)
			}
			es := weighted(ws...)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(RoundRobin, es); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
