package rawlb

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/fastpath"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
)

// The engine's side of the fast path (package fastpath): which flows go to
// the kernel, and taking them back.
//
// A flow goes with the client's SYN: the program forwards the backend's
// SYN-ACK, completes the handshake with the client's ACK, forwards the
// request, the response, both FINs and the ACK that ends the flow, and
// then tells the worker through its event ring, so the engine handles one
// segment of a connection that carries one request instead of ten
// (docs/fastpath.md, "When a flow goes"). It goes before the batch with
// the SYN is sent: the SYN-ACK cannot come before it, and on a veth it
// comes inside the very send. A flow whose SYN-ACK the program gave back
// (a layout of options it does not read) goes with its SYN-ACK, as do that
// backend's later flows; one that could not go then (no handshake slot
// free, SYN cookies) goes once its ACK has established it, after the batch
// that decided it was sent, so that no segment the program forwards
// overtakes one still queued here.
// It comes back when the program closes it (an event, read between
// batches), when the program evicts it (its next segment, in the ring,
// finds it offloaded), when the table removes it, when a next hop changes,
// and before a hand-off.

// fastSlots is how many flows a worker may have given to the program
// before their handshake completed: the slots of the flags through which
// the program tells it (fastpath.Path.Established). Beyond it, a flow goes
// once established. A handshake that never completes (a spoofed SYN that
// the backend answered) holds its slot until the half-open timeout, so a
// SYN flood below the cookie threshold costs at most this many early
// offloads per worker.
const fastSlots = 1024

// fastAfter is how many segments of an established flow the engine
// forwards itself before offloading it: the handshake's ACK.
const fastAfter = 1

// fastAgainAfter is how many it forwards before offloading again a flow
// that came back early (options the program does not read, a window it
// refuses): such a flow may well come back again, and each round trip
// costs the map updates.
const fastAgainAfter = 16

// fastMaxEvictions is how often a flow may come back early (options the
// program does not read, a window it refuses) before it stays with the
// engine: a flow that keeps coming back would pay the map updates for
// nothing.
const fastMaxEvictions = 8

// fastState is what the dataplane knows of the fast path.
type fastState struct {
	path *fastpath.Path
	// ifs are the interfaces the program is attached to, fixed before the
	// workers start: a flow whose client or backend is behind another
	// interface stays with the engine.
	ifs map[int32]bool
	// hopGen counts next-hop changes: the program has the MACs of the hop
	// a flow was offloaded with, so a worker that sees it move takes back
	// its flows (they go again with the new hop).
	hopGen atomic.Uint64
}

// fastStats are a worker's fast-path counters.
type fastStats struct {
	offloads  atomic.Uint64
	failed    atomic.Uint64                    // offloads the map refused (full)
	back      [fastpath.NumEvict]atomic.Uint64 // flows taken back, by fastpath.Evict* reason (0: by the engine)
	offloaded atomic.Int64                     // flows the program has now
	late      atomic.Uint64                    // segments that were in the ring when their flow went, run through the program
}

// pendingOffload is a flow decided for the fast path in this batch, to go
// with the batch's others in one fastpath.InsertBatch; once given with
// its SYN or SYN-ACK, it waits in fastEarly for the program to complete
// the handshake (slot stays fl.FastSlot while the entry is current).
type pendingOffload struct {
	fl   *conntrack.Flow
	key  conntrack.ClientKey // the slot may hold another flow by the time it goes
	slot uint32              // for a flow going with its SYN or SYN-ACK, fl.FastSlot as reserved; else 0
	gen  uint32              // the Flow.Gen it goes with
}

// startFast loads the program and attaches it to every interface that is
// up, is not a loopback and is allowed (cfg.Interfaces).
func startFast(flows, workers int, allowed map[int]bool) (*fastState, []string, error) {
	p, err := fastpath.Load(fastpath.Config{Flows: flows, Slots: workers * fastSlots, Workers: workers})
	if err != nil {
		return nil, nil, err
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		p.Close()
		return nil, nil, fmt.Errorf("fastpath: listing interfaces: %w", err)
	}
	fs := &fastState{path: p, ifs: map[int32]bool{}}
	var names []string
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || allowed != nil && !allowed[ifc.Index] {
			continue
		}
		if err := p.Attach(ifc.Index); err != nil {
			p.Close()
			return nil, nil, err
		}
		fs.ifs[int32(ifc.Index)] = true
		names = append(names, ifc.Name)
	}
	if len(names) == 0 {
		p.Close()
		return nil, nil, errors.New("fastpath: no interface to attach to (up, not a loopback)")
	}
	return fs, names, nil
}

// maybeStartFast starts the fast path as cfg.Fastpath says: off never,
// on or fail, auto if the kernel allows it, else with one line saying why
// not (a kernel before 6.6 has no tcx; a container without CAP_BPF cannot
// load programs).
func (b *Balancer) maybeStartFast(workers int) error {
	mode := b.cfg.Fastpath
	if mode == config.FastpathOff {
		return nil
	}
	err := b.startFast(workers)
	if err != nil && mode == config.FastpathAuto {
		b.log.Warn("fastpath: off, every segment goes through the packet rings (fastpath: auto)", "err", err)
		return nil
	}
	return err
}

// startFast loads the fast path and attaches it; the workers are made
// after it.
func (b *Balancer) startFast(workers int) error {
	fs, names, err := startFast(fastFlows, workers, b.nb.allowed)
	if err != nil {
		return err
	}
	b.dp.fast = fs
	b.nb.moved = func() {
		fs.hopGen.Add(1)
		b.wakeWorkers() // the flows go back to the engine (fastHousekeep)
	}
	b.log.Info("fastpath: forwarding established flows in the kernel", "interfaces", names, "max_flows", fastFlows)
	return nil
}

// fastFlows is how many flows the fast path holds at once (its maps take
// about 300 bytes a flow, 20 MB for this many, allocated up front).
// Beyond it, flows stay with the engine.
const fastFlows = 65536

// fastKeys fills w.fastKey with fl's two directions as their segments
// arrive.
func (w *worker) fastKeys(fl *conntrack.Flow) *[2]fastpath.Key {
	w.fillKeys(&w.fastKey, fl)
	return &w.fastKey
}

// fillKeys writes fl's two directions' keys into k.
func (w *worker) fillKeys(k *[2]fastpath.Key, fl *conntrack.Flow) {
	k[0] = fastpath.MakeKey(fl.Key.Client.IP, fl.Key.Client.Port, fl.Key.VIP.IP, fl.Key.VIP.Port)
	k[1] = fastpath.MakeKey(fl.BackendAddr.IP, fl.BackendAddr.Port, w.dp.natSrc, fl.NATPort)
}

// countForFast counts a segment the engine forwarded for fl, and queues
// fl for the fast path when it is due; a flow whose SYN or SYN-ACK was
// just queued goes at once.
func (w *worker) countForFast(fl *conntrack.Flow) {
	if fl.Offloaded() || fl.FastEvictions >= fastMaxEvictions {
		return
	}
	switch fl.State() {
	case conntrack.StateEstablished:
	case conntrack.StateSynSent:
		if be := w.reg.backends[fl.Backend]; fl.FastEvictions == 0 && be != nil && !be.synAckOptions.Load() {
			w.offloadEarly(fl)
		}
		return
	case conntrack.StateSynRecv:
		if fl.FastEvictions == 0 {
			w.offloadEarly(fl)
		}
		return
	default:
		return
	}
	fl.FastRun++
	due := uint16(fastAfter)
	if fl.FastEvictions > 0 {
		due = fastAgainAfter
	}
	if fl.FastRun == due && len(w.fastPending) < cap(w.fastPending) {
		w.fastPending = append(w.fastPending, pendingOffload{fl: fl, key: fl.Key})
	}
}

// offloadPending offloads the established flows queued in this batch,
// whose segments have been sent.
func (w *worker) offloadPending() {
	w.insertOffloads(w.fastPending)
	w.fastPending = w.fastPending[:0]
}

// offloadEarly queues fl to go to the program in SynSent or SynRecv, with
// a handshake slot, before the batch with its SYN or SYN-ACK is sent
// (flush calls offloadQueued). A flow already queued holds its slot.
func (w *worker) offloadEarly(fl *conntrack.Flow) {
	n := len(w.fastFree)
	if n == 0 || fl.FastSlot != 0 || len(w.fastQueued) == cap(w.fastQueued) ||
		len(w.fastEarly)+len(w.fastQueued) >= cap(w.fastEarly) {
		return
	}
	slot := w.fastFree[n-1]
	w.fastFree = w.fastFree[:n-1]
	fl.FastSlot = slot + 1
	w.fastQueued = append(w.fastQueued, pendingOffload{fl: fl, key: fl.Key, slot: slot + 1})
}

// offloadQueued gives the program the flows offloadEarly queued, before
// their SYN or SYN-ACK is sent, so that the answer finds its flow in the
// kernel.
func (w *worker) offloadQueued() {
	w.insertOffloads(w.fastQueued)
	w.fastQueued = w.fastQueued[:0]
}

// insertOffloads gives the program, in one InsertBatch (two system calls),
// the flows of q that are still as they were when queued (a segment later
// in the batch may have reset or replaced one): each is written as it is
// now. A flow that goes is marked offloaded, and one given with its
// handshake waits in fastEarly for the program to complete it; one that
// does not go (the map full, no way to reach its backend) stays with the
// engine and gives its handshake slot back.
func (w *worker) insertOffloads(q []pendingOffload) {
	b := w.fastBatch
	b.Reset()
	keep := q[:0]
	for _, p := range q {
		if w.stillDue(&p) && w.fastFill(&p, b) {
			keep = append(keep, p)
		} else {
			w.unqueue(&p)
		}
	}
	n, _ := w.dp.fast.path.InsertBatch(b)
	for i := range keep {
		p := &keep[i]
		fl := p.fl
		if i >= n {
			w.stats.fast.failed.Add(1)
			w.unqueue(p)
		} else {
			fl.FastGen = p.gen
			fl.SetOffloaded(true)
			w.stats.fast.offloads.Add(1)
			w.stats.fast.offloaded.Add(1)
			if p.slot != 0 {
				w.fastEarly = append(w.fastEarly, *p)
			}
		}
		p.fl = nil
	}
	clear(q[len(keep):])
}

// stillDue reports whether p's flow is still the one queued, in a state it
// goes in.
func (w *worker) stillDue(p *pendingOffload) bool {
	fl := p.fl
	if fl.Key != p.key || fl.Offloaded() {
		return false
	}
	if p.slot == 0 {
		return fl.State() == conntrack.StateEstablished
	}
	s := fl.State()
	return fl.FastSlot == p.slot && (s == conntrack.StateSynSent || s == conntrack.StateSynRecv)
}

// unqueue gives back the handshake slot of a queued flow that does not go.
func (w *worker) unqueue(p *pendingOffload) {
	if p.slot == 0 {
		return
	}
	w.fastFree = append(w.fastFree, p.slot-1)
	if p.fl.FastSlot == p.slot {
		p.fl.FastSlot = 0
	}
}

// fastHandshakes runs between batches: flows whose handshake the program
// completed are Established for the engine too (its count of half-open
// flows turns the SYN cookies on), and entries of flows that came back or
// went are dropped.
func (w *worker) fastHandshakes() {
	keep := w.fastEarly[:0]
	for _, e := range w.fastEarly {
		fl := e.fl
		if fl.FastSlot != e.slot || fl.Key != e.key {
			continue // taken back (the slot is free again) or gone
		}
		if !w.dp.fast.path.Established(int(e.slot - 1)) {
			keep = append(keep, e)
			continue
		}
		if fl.State().HalfOpen() {
			w.table.SetState(fl, conntrack.StateEstablished)
			fl.LastSeen = w.now
		}
		w.freeSlot(fl)
	}
	clear(w.fastEarly[len(keep):])
	w.fastEarly = keep
}

// freeSlot gives fl's handshake slot back, if it has one.
func (w *worker) freeSlot(fl *conntrack.Flow) {
	if fl.FastSlot != 0 {
		w.fastFree = append(w.fastFree, fl.FastSlot-1)
		fl.FastSlot = 0
	}
}

// fastFill adds p's flow to b: its windows as tracked so far, and how
// each direction is rewritten, as toBackend and toClient do it; a flow
// given in SynSent or SynRecv has its handshake slot's flag cleared. It
// reports false for a flow the program cannot have: its backend or client
// behind an interface without the program, or no hop to the backend.
func (w *worker) fastFill(p *pendingOffload, b *fastpath.Batch) bool {
	fs, fl := w.dp.fast, p.fl
	_, h := w.hopOf(fl)
	if h == nil || !fs.ifs[h.ifindex] || !fs.ifs[fl.ClientIf] {
		return false
	}
	id, ok := w.table.FlowID(fl)
	if !ok {
		return false
	}
	v, k := b.Add(id)
	if v == nil {
		return false
	}
	w.fillKeys(k, fl)
	if p.slot != 0 {
		fs.path.ClearEstablished(int(p.slot - 1))
	}
	v.Peers[0] = fastpath.Peer(fl.Window(conntrack.FromClient))
	v.Peers[1] = fastpath.Peer(fl.Window(conntrack.FromBackend))
	// Each direction's new addresses and ports are the reverse of the
	// other direction's key.
	v.Dir[0] = fastpath.Dir{Src: k[1].Dst, Dst: k[1].Src, SrcPort: k[1].DstPort, DstPort: k[1].SrcPort,
		SeqAdd: fl.SeqOff, AckAdd: -fl.BSeqOff, TSvalAdd: fl.TSOff, TSecrAdd: -fl.BTSOff,
		Ifindex: uint32(h.ifindex), DstMAC: h.dst, SrcMAC: h.src}
	v.Dir[1] = fastpath.Dir{Src: k[0].Dst, Dst: k[0].Src, SrcPort: k[0].DstPort, DstPort: k[0].SrcPort,
		SeqAdd: fl.BSeqOff, AckAdd: -fl.SeqOff, TSvalAdd: fl.BTSOff, TSecrAdd: -fl.TSOff, WinShift: fl.WinShift,
		Ifindex: uint32(fl.ClientIf), DstMAC: fl.ClientMAC, SrcMAC: fl.LocalMAC}
	ts, hasTS, seqEnd := fl.BackendNote()
	v.TSLast, v.SeqEnd = ts, seqEnd
	if hasTS {
		v.Note = fastpath.NoteTS
	}
	v.LastNs = uint64(fastpath.Monotonic())
	v.Backend = fl.Backend
	v.State = uint32(fl.State())
	v.Early = p.slot
	w.fastGen++
	v.Gen, p.gen = w.fastGen, w.fastGen
	return true
}

// fastSegment handles a segment of an offloaded flow that reached the
// engine, from direction d, and reports whether it is done with it. Either
// the program gave the flow back (this is the first segment it did not
// forward, or one after it): the flow is taken back and the caller tracks
// the segment. Or the segment was in the ring before the flow went (the
// ACKs a receiver sent while the engine's last batch was being sent are
// always there, and a busy sender's next segments): the program runs on its
// headers, through the same maps, and the engine sends the frame with what
// it rewrote, so the fast path's state stays whole and the flow stays.
func (w *worker) fastSegment(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, d conntrack.Direction, state packet.CsumState) bool {
	// The program may have closed it since this batch began (a peer's
	// retransmitted FIN, say, just behind the last ACK).
	if w.fastEvents.Pending() {
		w.fastClosed()
		if !fl.Offloaded() {
			return false
		}
	}
	hl := len(f.Eth) + f.IP.HeaderLen() + f.TCP.HeaderLen()
	if hl <= fastpath.MaxHeaders {
		hdr := w.fastHdr[:hl]
		copy(hdr, p.Frame[:hl])
		fwd, err := w.dp.fast.path.RunLate(hdr, len(f.IP))
		if err == nil && fwd {
			copy(p.Frame[:hl], hdr)
			if state == packet.CsumPartial {
				f.SetPseudoChecksum() // the program summed it as complete
			}
			w.stats.fast.late.Add(1)
			ifindex := fl.ClientIf
			if d == conntrack.FromClient {
				_, h := w.hopOf(fl)
				if h == nil {
					w.drop(dropNoNeighbor)
					return true
				}
				ifindex = h.ifindex
			}
			w.queue(p, f, ifindex) // addressed and counted by the program
			return true
		}
	}
	w.takeBack(fl)
	return false
}

// fastClosed reads the worker's event ring: the flows the program closed
// (it forwarded the ACK in LastAck and deleted their keys) come back in
// TimeWait, and their entries go in one system call. An event about a flow
// taken back since (Take read and deleted the entry) is dropped.
func (w *worker) fastClosed() {
	ev := &w.fastEvent
	for w.fastEvents.Next(ev) {
		fl := w.table.FlowByID(ev.ID)
		if fl == nil || !fl.Offloaded() || fl.FastGen != ev.Gen {
			continue
		}
		v := &w.fastFlow
		*v = fastpath.Flow{Peers: ev.Peers, LastNs: ev.LastNs, Packets: ev.Packets, Bytes: ev.Bytes,
			TSLast: ev.TSLast, SeqEnd: ev.SeqEnd, Note: ev.Note, State: ev.State, Evicted: fastpath.EvictClose}
		w.fastBack(fl)
		w.restore(fl, v)
		w.fastDone = append(w.fastDone, ev.ID)
		if len(w.fastDone) == cap(w.fastDone) {
			w.dp.fast.path.DeleteFlows(w.fastDone)
			w.fastDone = w.fastDone[:0]
		}
	}
	if len(w.fastDone) > 0 {
		w.dp.fast.path.DeleteFlows(w.fastDone)
		w.fastDone = w.fastDone[:0]
	}
}

// fastBack marks fl as the engine's again.
func (w *worker) fastBack(fl *conntrack.Flow) {
	fl.SetOffloaded(false)
	fl.FastRun = 0
	w.freeSlot(fl)
	w.stats.fast.offloaded.Add(-1)
}

// takeBack takes fl back from the program: its windows, last-seen time,
// what it sent the backend, and its counters.
func (w *worker) takeBack(fl *conntrack.Flow) {
	w.fastBack(fl)
	id, _ := w.table.FlowID(fl)
	v := &w.fastFlow
	if err := w.dp.fast.path.Take(id, w.fastKeys(fl), v); err != nil {
		// Cannot happen while rawlb alone owns the maps; the flow goes on
		// with the windows it had when it went.
		w.dp.log.Warn("taking a flow back from the fast path failed", "flow", fl.String(), "err", err)
		return
	}
	w.restore(fl, v)
}

// restore gives fl the state the program left it in: its windows,
// last-seen time, what it sent the backend, and its counters.
func (w *worker) restore(fl *conntrack.Flow, v *fastpath.Flow) {
	if fl.State() == conntrack.StateSynSent {
		w.fastSynAck(fl, v)
	}
	fl.SetWindow(conntrack.FromClient, conntrack.PeerState(v.Peers[0]))
	fl.SetWindow(conntrack.FromBackend, conntrack.PeerState(v.Peers[1]))
	fl.NoteToBackend(v.TSLast, v.Note&fastpath.NoteTS != 0, v.SeqEnd)
	w.fastLastSeen(fl, v.LastNs)
	w.fastState(fl, v.State)
	if v.Evicted != fastpath.EvictFlags && v.Evicted != fastpath.EvictClose {
		fl.FastEvictions++
	}
	w.stats.fast.back[min(v.Evicted, fastpath.NumEvict-1)].Add(1)
	// The program's direction 0 is conntrack.FromClient, whose segments go
	// to the backend: dirToBackend, also 0.
	be := w.reg.backends[fl.Backend]
	for d := range 2 {
		w.stats.packets[d].Add(v.Packets[d])
		w.stats.bytes[d].Add(v.Bytes[d])
		if be != nil {
			be.stats[w.id].packets[d].Add(v.Packets[d])
			be.stats[w.id].bytes[d].Add(v.Bytes[d])
		}
	}
}

// fastSynAck learns what the engine learns from a SYN-ACK it forwards
// (learnWScale) for a flow that went with its SYN: the backend's window
// scale, if the program forwarded the SYN-ACK and both sides announced one;
// or, if the program gave the SYN-ACK back for its options, that this
// backend's flows had better go with their SYN-ACK.
func (w *worker) fastSynAck(fl *conntrack.Flow, v *fastpath.Flow) {
	be := w.reg.backends[fl.Backend]
	if be == nil {
		return
	}
	const wscale = 1 // conntrack's peerWScale
	switch {
	case v.State > uint32(conntrack.StateSynSent) && v.Peers[0].Flags&wscale != 0 && v.Peers[1].Flags&wscale != 0:
		if s := int32(v.Peers[1].Scale); s != be.Service.wscale.Load() {
			be.Service.wscale.Store(s)
		}
	case v.Evicted == fastpath.EvictOptions && !be.synAckOptions.Load():
		be.synAckOptions.Store(true)
		w.dp.log.Info("fastpath: this backend's SYN-ACKs carry options the program does not read; its flows go to the kernel with their SYN-ACK", "backend", be.Name)
	}
}

// fastLastSeen moves fl.LastSeen up to the program's last segment.
func (w *worker) fastLastSeen(fl *conntrack.Flow, lastNs uint64) {
	if lastNs == 0 {
		return
	}
	if ls := w.now - (fastpath.Monotonic() - int64(lastNs)); ls > fl.LastSeen {
		fl.LastSeen = ls
	}
}

// fastState moves fl to the state the program took it to with the
// handshake's ACK and the FINs it forwarded.
func (w *worker) fastState(fl *conntrack.Flow, st uint32) {
	s := conntrack.State(st)
	if s == fl.State() || s < conntrack.StateSynSent || s > conntrack.StateTimeWait {
		return
	}
	if fl.State().HalfOpen() && s > conntrack.StateSynRecv {
		// Through Established, which the program passed: the flow counts
		// as established once (conntrack.Flow.EverEstablished), and a new
		// SYN on its key starts a new flow rather than retrying this
		// handshake on the backend it has since closed.
		w.table.SetState(fl, conntrack.StateEstablished)
	}
	if s != conntrack.StateEstablished {
		w.table.SetState(fl, s)
	}
}

// Release implements conntrack.Offloader.
func (w *worker) Release(fl *conntrack.Flow) { w.takeBack(fl) }

// Refresh implements conntrack.Offloader.
func (w *worker) Refresh(fl *conntrack.Flow) {
	id, _ := w.table.FlowID(fl)
	if err := w.dp.fast.path.Peek(id, &w.fastFlow); err == nil {
		w.fastLastSeen(fl, w.fastFlow.LastNs)
		w.fastState(fl, w.fastFlow.State)
	}
}

// takeBackAll takes back every flow the program has of this worker's.
func (w *worker) takeBackAll() {
	w.table.Range(func(fl *conntrack.Flow) {
		if fl.Offloaded() {
			w.takeBack(fl)
		}
	})
}

// fastHousekeep runs between batches: flows offloaded with a next hop that
// has changed since come back.
func (w *worker) fastHousekeep() {
	if g := w.dp.fast.hopGen.Load(); g != w.fastHopGen {
		w.fastHopGen = g
		w.takeBackAll()
	}
}

// stopFast detaches the program and takes every flow back, with the
// workers stopped: what a hand-off or a stop needs before the flows are
// written down.
func (b *Balancer) stopFast() {
	fs := b.dp.fast
	if fs == nil {
		return
	}
	if err := fs.path.Detach(); err != nil {
		b.log.Warn("fastpath: detaching", "err", err)
	}
	for _, w := range b.workers {
		w.begin()
		if w.fastEvents.Pending() {
			w.fastClosed()
		}
		w.takeBackAll()
	}
}

// resumeFast attaches the program again after a failed upgrade.
func (b *Balancer) resumeFast() {
	fs := b.dp.fast
	if fs == nil {
		return
	}
	for i := range fs.ifs {
		if err := fs.path.Attach(int(i)); err != nil {
			b.log.Warn("fastpath: attaching again", "err", err)
		}
	}
}

// fastDescs are the fast path's metrics, exported only while it is on.
type fastDescs struct {
	packets, bytes, offloads, failed, back, flows, passed, ignored, late, handshakes, closes, lost *prometheus.Desc
}

func newFastDescs(d func(name, help string, labels ...string) *prometheus.Desc) fastDescs {
	return fastDescs{
		packets:    d("fastpath_packets_total", "Packets the kernel fast path forwarded (rawlb_packets_total counts them too)."),
		bytes:      d("fastpath_bytes_total", "IP bytes the kernel fast path forwarded."),
		offloads:   d("fastpath_offloads_total", "Flows handed to the kernel fast path."),
		failed:     d("fastpath_offload_failures_total", "Offloads refused because the fast path held its most flows."),
		back:       d("fastpath_returns_total", "Flows taken back from the fast path, by reason: close (the ACK that ends the flow), flags (SYN, RST), options, window, engine (removed, hand-off, next hop changed).", "reason"),
		flows:      d("fastpath_flows", "Flows the kernel fast path holds."),
		passed:     d("fastpath_passed_total", "Segments of flows the fast path had given back, passed to rawlb."),
		late:       d("fastpath_late_total", "Segments that were in the ring when their flow went to the fast path, run through its program by rawlb."),
		ignored:    d("fastpath_ignored_total", "Segments the fast path forwarded without a state change (retransmissions, old ACKs), as conntrack does."),
		closes:     d("fastpath_closes_total", "Flows the kernel fast path closed: it forwarded the ACK that takes them to TimeWait and told rawlb through the event ring (these also count as returns, reason close)."),
		lost:       d("fastpath_events_lost_total", "Closes the kernel fast path could not tell rawlb of because the worker's event ring was full: the last ACK went through rawlb instead."),
		handshakes: d("fastpath_handshakes_total", "Handshakes the kernel fast path completed: flows handed to it with their SYN or SYN-ACK, whose client's ACK it forwarded."),
	}
}

func (f *fastDescs) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{f.packets, f.bytes, f.offloads, f.failed, f.back, f.flows, f.passed, f.ignored, f.late, f.handshakes, f.closes, f.lost} {
		ch <- d
	}
}

// fastReturnNames labels fastStats.back, by fastpath.Evict* value.
var fastReturnNames = [fastpath.NumEvict]string{0: "engine", fastpath.EvictFlags: "flags", fastpath.EvictOptions: "options", fastpath.EvictWindow: "window", fastpath.EvictClose: "close"}

// fastCounts are packets and bytes by direction (dirToBackend,
// dirToClient).
type fastCounts struct{ packets, bytes [2]uint64 }

// live sums what the kernel forwarded for the flows it holds now, by
// backend id. Nil without the fast path.
func (f *fastDescs) live(b *Balancer) map[uint32]fastCounts {
	fs := b.dp.fast
	if fs == nil {
		return nil
	}
	m := map[uint32]fastCounts{}
	_ = fs.path.Live(func(id uint32, packets, bytes [2]uint64) {
		v := m[id]
		for d := range 2 {
			v.packets[d] += packets[d]
			v.bytes[d] += bytes[d]
		}
		m[id] = v
	})
	return m
}

func (f *fastDescs) collect(b *Balancer, counter func(*prometheus.Desc, uint64, ...string), gauge func(*prometheus.Desc, float64, ...string)) {
	fs := b.dp.fast
	if fs == nil {
		return
	}
	var offloads, failed, late uint64
	var back [fastpath.NumEvict]uint64
	var flows int64
	for _, w := range b.stats {
		offloads += w.fast.offloads.Load()
		failed += w.fast.failed.Load()
		late += w.fast.late.Load()
		flows += w.fast.offloaded.Load()
		for i := range back {
			back[i] += w.fast.back[i].Load()
		}
	}
	counter(f.offloads, offloads)
	counter(f.failed, failed)
	counter(f.late, late)
	gauge(f.flows, float64(flows))
	for i, name := range fastReturnNames {
		counter(f.back, back[i], name)
	}
	if st, err := fs.path.Stats(); err == nil {
		counter(f.packets, st[fastpath.StatPackets])
		counter(f.bytes, st[fastpath.StatBytes])
		counter(f.passed, st[fastpath.StatPassed])
		counter(f.ignored, st[fastpath.StatIgnored])
		counter(f.handshakes, st[fastpath.StatEstablished])
		counter(f.closes, st[fastpath.StatClosed])
		counter(f.lost, st[fastpath.StatEventsLost])
	}
}
