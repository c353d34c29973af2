package rawlb

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/fastpath"
	"github.com/rawlb/rawlb/internal/testenv"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
)

// newFastHarness is newHarness with the fast path's maps loaded and its
// worker made anew to use them. The program is attached to no interface:
// what is tested is what the worker puts in the maps, and when.
func newFastHarness(t testing.TB) *harness {
	testenv.RequirePrivileged(t)
	h := newHarness(t, nil)
	p, err := fastpath.Load(fastpath.Config{Flows: 64, Slots: fastSlots, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	h.b.dp.fast = &fastState{path: p, ifs: map[int32]bool{tClientIf: true, tBeIf: true}}
	h.w = newWorker(0, h.b.dp, h.link, h.w.table, 8, h.b.stats[0], h.b.cfg.RateLimits, 1)
	return h
}

// flowOf returns the flow of the test client's port, or nil.
func (h *harness) flowOf(port uint16) *conntrack.Flow {
	return h.w.table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: tClient, Port: port}, VIP: conntrack.Endpoint{IP: tSrcIP, Port: tPort}})
}

// inKernel returns the fast path's copy of fl, or the error of reading it.
func (h *harness) inKernel(fl *conntrack.Flow) (fastpath.Flow, error) {
	var v fastpath.Flow
	id, _ := h.w.table.FlowID(fl)
	err := h.b.dp.fast.path.Peek(id, &v)
	return v, err
}

// The SYNs of one batch go to the program together, before the batch is
// sent (the backends' SYN-ACKs must find their flows there), each flow
// once, with a handshake slot each.
func TestSYNsOfABatchGoBeforeTheyAreSent(t *testing.T) {
	h := newFastHarness(t)
	synA := client(packet.FlagSYN, 1000, 0)
	synB := synA
	synB.sport = 51001
	sends := 0
	h.link.onSend = func() {
		sends++
		for _, port := range []uint16{51000, 51001} {
			fl := h.flowOf(port)
			if fl == nil {
				t.Fatalf("as the batch is sent: no flow for port %d", port)
			}
			v, err := h.inKernel(fl)
			if err != nil || v.State != uint32(conntrack.StateSynSent) || v.Early == 0 || v.Early != fl.FastSlot {
				t.Errorf("as the batch is sent, port %d's flow in the kernel: %v, state %d, slot %d (the engine's %d)",
					port, err, v.State, v.Early, fl.FastSlot)
			}
		}
	}
	// Port 51000's SYN twice (a retransmission in the same batch).
	out := h.in(synA.frame(t), synB.frame(t), synA.frame(t))
	if sends != 1 || len(out) != 3 {
		t.Fatalf("%d sends of %d frames, want 1 of 3", sends, len(out))
	}
	for _, port := range []uint16{51000, 51001} {
		if fl := h.flowOf(port); !fl.Offloaded() || fl.FastSlot == 0 {
			t.Errorf("port %d's flow: offloaded %v, slot %d", port, fl.Offloaded(), fl.FastSlot)
		}
	}
	if n, free, early := h.w.stats.fast.offloads.Load(), len(h.w.fastFree), len(h.w.fastEarly); n != 2 || free != fastSlots-2 || early != 2 {
		t.Errorf("%d offloads, %d slots free, %d handshakes awaited; want 2, %d, 2", n, free, early, fastSlots-2)
	}
}

// A flow queued with its SYN that a later segment of the batch resets does
// not go, and its handshake slot comes back.
func TestAFlowResetInItsSYNsBatchStays(t *testing.T) {
	h := newFastHarness(t)
	out := h.in(client(packet.FlagSYN, 1000, 0).frame(t), client(packet.FlagRST, 1001, 0).frame(t))
	if len(out) == 0 {
		t.Fatal("nothing sent")
	}
	if fl := h.flowOf(51000); fl != nil {
		if _, err := h.inKernel(fl); fl.Offloaded() || fl.FastSlot != 0 || !errors.Is(err, unix.ENOENT) {
			t.Errorf("the reset flow (%v): offloaded %v, slot %d, in the kernel: %v", fl.State(), fl.Offloaded(), fl.FastSlot, err)
		}
	}
	if n, free, early := h.w.stats.fast.offloads.Load(), len(h.w.fastFree), len(h.w.fastEarly); n != 0 || free != fastSlots || early != 0 {
		t.Errorf("%d offloads, %d slots free, %d handshakes awaited; want 0, %d, 0", n, free, early, fastSlots)
	}
}

// A flow goes with its backend's SYN-ACK when it could not go with its SYN
// (the backend writes SYN-ACK options the program does not read); the
// SYN-ACK twice in one batch (a retransmission) queues it once.
func TestSynAckTwiceInABatchGoesOnce(t *testing.T) {
	h := newFastHarness(t)
	for _, be := range h.w.dp.reg.Load().backends {
		if be != nil {
			be.synAckOptions.Store(true)
		}
	}
	toBe := one(t, h.in(client(packet.FlagSYN, 1000, 0).frame(t)))
	if fl := h.flowOf(51000); fl == nil || fl.Offloaded() {
		t.Fatalf("after the SYN to a backend whose SYN-ACKs the program does not read: %v", fl)
	}
	synAck := fromBe(uint16(toBe.tcp.SrcPort), packet.FlagSYN|packet.FlagACK, 9000, toBe.tcp.Seq+1)
	// Two buffers: the engine rewrites each frame in place.
	if out := h.in(synAck.frame(t), synAck.frame(t)); len(out) != 2 {
		t.Fatalf("sent %d frames for the SYN-ACK twice, want 2", len(out))
	}
	fl := h.flowOf(51000)
	v, err := h.inKernel(fl)
	if !fl.Offloaded() || err != nil || v.State != uint32(conntrack.StateSynRecv) || v.Early != fl.FastSlot {
		t.Errorf("after the SYN-ACKs: offloaded %v; in the kernel %v, state %d, slot %d (the engine's %d)", fl.Offloaded(), err, v.State, v.Early, fl.FastSlot)
	}
	if n, free, early := h.w.stats.fast.offloads.Load(), len(h.w.fastFree), len(h.w.fastEarly); n != 1 || free != fastSlots-1 || early != 1 {
		t.Errorf("%d offloads, %d slots free, %d handshakes awaited; want 1, %d, 1", n, free, early, fastSlots-1)
	}
}

// discardLink takes what the worker sends and keeps nothing.
type discardLink struct{ frames int }

func (l *discardLink) Receive([]ring.Packet) (int, error) { return 0, ring.ErrClosed }
func (l *discardLink) Release(int)                        {}
func (l *discardLink) SetReadDeadline(time.Time) error    { return nil }
func (l *discardLink) Send(out []ring.Out) (int, error)   { l.frames += len(out); return 0, nil }

// synAndRSTBatches returns a function that runs a batch of 8 SYNs of new
// flows, which go to the program in one insert before the batch is sent,
// then a batch of their clients' RSTs, which take them back (the program
// gives a flow back at its RST), and a check that the SYNs did go.
func synAndRSTBatches(tb testing.TB) (run func(), check func()) {
	const n = 8
	h := newFastHarness(tb)
	l := &discardLink{}
	h.w.link = l
	var syns, rsts, bufs [n][]byte
	for i := range n {
		s := client(packet.FlagSYN, 1000, 0)
		s.sport = uint16(51000 + i)
		syns[i] = s.frame(tb)
		r := client(packet.FlagRST, 1001, 0)
		r.sport = s.sport
		rsts[i] = r.frame(tb)
		bufs[i] = make([]byte, len(syns[i]))
	}
	one := func(frames *[n][]byte) {
		for i := range n {
			copy(bufs[i], frames[i]) // the engine rewrites in place
			h.w.pkts[i] = pkt(bufs[i])
		}
		h.w.batch(n, false)
	}
	run = func() {
		one(&syns)
		one(&rsts)
	}
	check = func() {
		tb.Helper()
		if got, back := h.w.stats.fast.offloads.Load(), h.w.stats.fast.back[fastpath.EvictFlags].Load(); got < n || back != got || l.frames < 2*n {
			tb.Fatalf("%d offloads, %d taken back, %d frames sent: the SYNs did not go to the program and come back", got, back, l.frames)
		}
	}
	return run, check
}

// The batches of new flows allocate nothing once the tables have grown.
func TestSYNBatchesAllocateNothing(t *testing.T) {
	run, check := synAndRSTBatches(t)
	for range 100 {
		run()
	}
	if a := testing.AllocsPerRun(200, run); a != 0 {
		t.Errorf("%v allocations a pair of batches, want 0", a)
	}
	check()
}

// BenchmarkSYNBatchFastpath is synAndRSTBatches' pair of batches; ns/op
// is per pair (8 flows) and includes the map system calls.
func BenchmarkSYNBatchFastpath(b *testing.B) {
	run, check := synAndRSTBatches(b)
	b.ReportAllocs()
	for b.Loop() {
		run()
	}
	check()
}
