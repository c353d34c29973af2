package fastpath

import (
	"testing"
	"time"
)

// BenchmarkProgram is the program's cost for one data segment of an
// offloaded flow (lookup, window check under the lock, rewrite, checksums),
// as the kernel's test run times it, without the run's own skb set-up. The
// test run feeds its output back in, so two flows rewrite the segment into
// each other's key: every run forwards (after the first, as a
// retransmission, which skips the state's stores).
func BenchmarkProgram(b *testing.B) {
	l := newLab(b)
	var f Flow
	f.Peers[0] = Peer{End: cISN + 1, MaxEnd: cISN + 1 + 65535, MaxWin: 65535, MaxAck: bISN + 1, Win: 65535, Flags: 4}
	f.Peers[1] = Peer{End: bISN + 1, MaxEnd: bISN + 1 + 65535, MaxWin: 65535, MaxAck: cISN + 1, Win: 65535, Flags: 4}
	there, back := MakeKey(ipClient, 40000, ipVIP, 80), MakeKey(ipVIP, 61000, ipBE, 8080)
	for id, k := range map[uint32][2]Key{1: {there, MakeKey(ipBE, 1, ipVIP, 1)}, 2: {back, MakeKey(ipBE, 2, ipVIP, 2)}} {
		to := back
		if id == 2 {
			to = there
		}
		f.Dir[0] = Dir{Src: to.Src, Dst: to.Dst, SrcPort: to.SrcPort, DstPort: to.DstPort, Ifindex: 3, DstMAC: macBE, SrcMAC: macLB}
		// The other direction's rewrite is the reverse of this key, which
		// the program checks under the lock.
		f.Dir[1] = Dir{Src: k[0].Dst, Dst: k[0].Src, SrcPort: k[0].DstPort, DstPort: k[0].SrcPort}
		if err := l.insert(id, &f, &k); err != nil {
			b.Fatal(err)
		}
	}
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH, win: 502,
		ts: &[2]uint32{111, 222}, payload: 100})
	var per time.Duration
	for b.Loop() {
		ret, d, err := l.p.prog.Benchmark(in, 10000, nil)
		if err != nil || ret != actRedirect {
			b.Fatalf("%d %v", ret, err)
		}
		per = d
	}
	st, _ := l.p.Stats()
	if st[StatPackets] == 0 || st[StatEvictFlags]+st[StatEvictOptions]+st[StatEvictWindow] != 0 {
		b.Fatalf("counters %v: not every run forwarded", st)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/segment")
}

// BenchmarkOffload is what rawlb pays for a flow that goes to the kernel
// and comes back early (evicted, or removed by rawlb): an insert of one,
// then Take. Both are plain bpf(2) calls: 0 allocs.
func BenchmarkOffload(b *testing.B) {
	l := newLab(b)
	var f, back Flow
	if err := l.p.Take(l.id, &l.keys, &f); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := l.insert(l.id, &f, &l.keys); err != nil {
			b.Fatal(err)
		}
		if err := l.p.Take(l.id, &l.keys, &back); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOffloadClosed is what rawlb pays for a flow that goes to the
// kernel and closes there: an insert of one, then, after reading the
// close event from its own mapping of the ring, its share of a
// DeleteFlows (here one flow a call, the most it can cost; rawlb deletes a
// batch's worth at a time). The program deletes the keys itself, so the
// insert finds them gone in rawlb, and here finds them in place: the same
// update either way.
func BenchmarkOffloadClosed(b *testing.B) {
	l := newLab(b)
	var f Flow
	if err := l.p.Take(l.id, &l.keys, &f); err != nil {
		b.Fatal(err)
	}
	ids := []uint32{l.id}
	b.ReportAllocs()
	for b.Loop() {
		if err := l.insert(l.id, &f, &l.keys); err != nil {
			b.Fatal(err)
		}
		l.p.DeleteFlows(ids)
	}
}

// BenchmarkRunLate is a segment that was in the ring when its flow went,
// run through rawlb_late: one test run of the program on its headers.
func BenchmarkRunLate(b *testing.B) {
	l := newLab(b)
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 502,
		ts: &[2]uint32{111, 222}})
	hdr := make([]byte, len(in))
	b.ReportAllocs()
	for b.Loop() {
		copy(hdr, in)
		fwd, err := l.p.RunLate(hdr, len(in)-14)
		if err != nil || !fwd {
			b.Fatalf("%v %v", fwd, err)
		}
	}
}

// BenchmarkInsertEach and BenchmarkInsertBatch give the program the 4 new
// flows of a conn load's batch (4.3 a batch, counted in the lab), each
// in its own one-flow InsertBatch (two system calls a flow, as before
// c17fbb6) or all in one, and delete them as the engine does after their
// close events (one DeleteFlows; the program deletes the keys itself,
// here they are left in place, the same update either way). Compare the
// two in one run.
func BenchmarkInsertEach(b *testing.B) { benchInsert(b, false) }

// BenchmarkInsertBatch: see BenchmarkInsertEach.
func BenchmarkInsertBatch(b *testing.B) { benchInsert(b, true) }

func benchInsert(b *testing.B, batched bool) {
	const flows = 4
	l := newLab(b)
	l.p.Remove(l.id, &l.keys)
	var fs [flows]Flow
	var ks [flows][2]Key
	ids := make([]uint32, flows)
	for i := range flows {
		l.fill(&fs[i])
		ks[i] = batchKeys(i)
		ids[i] = uint32(100 + i)
	}
	bt := NewBatch(flows)
	b.ReportAllocs()
	for b.Loop() {
		if batched {
			bt.Reset()
			for i := range flows {
				f, k := bt.Add(ids[i])
				*f, *k = fs[i], ks[i]
			}
			if n, err := l.p.InsertBatch(bt); n != flows {
				b.Fatal(n, err)
			}
		} else {
			for i := range flows {
				if err := l.insert(ids[i], &fs[i], &ks[i]); err != nil {
					b.Fatal(err)
				}
			}
		}
		l.p.DeleteFlows(ids)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*flows), "ns/flow")
}
