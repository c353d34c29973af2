package rawlb

import (
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/fastpath"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
	"github.com/rawlb/rawlb/sched"
	"github.com/rawlb/rawlb/syncookie"
)

// dataplane is what every packet worker shares: set up once, then read.
// What changes while running (the registry, the cookie settings) is behind
// atomics.
type dataplane struct {
	natSrc            [4]byte
	natFirst, natLast uint16
	reg               atomic.Pointer[registry]
	tables            []*conntrack.Table // every worker's, for cross-worker counts
	shared            *conntrack.Shared
	live              *liveCounter
	jar               *syncookie.Jar
	cookieMode        atomic.Pointer[config.SYNCookieMode]
	cookieThreshold   atomic.Int64
	rates             atomic.Pointer[config.RateLimits] // replaced by a reload
	debug             bool                              // per-flow log lines, decided once at start
	fast              *fastState                        // nil: every segment through the engine
	log               *slog.Logger
}

// halfOpen returns the half-open flows over every worker's table.
func (dp *dataplane) halfOpen() int64 {
	var n int64
	for _, t := range dp.tables {
		n += int64(t.HalfOpen())
	}
	return n
}

// link is what a worker needs of its socket: a batch in, a batch out. Tests
// and benchmarks drive the real loop over a fake one.
type link interface {
	Receive(pkts []ring.Packet) (int, error)
	Release(n int)
	Send(out []ring.Out) (dropped int, err error)
	SetReadDeadline(t time.Time) error
}

// sweepEvery is how often a busy worker sweeps a slice of its flow table,
// and the longest it waits for a frame before doing so. A worker that had
// no frame since its last sweep waits twice as long each time, up to
// idleWaitMax, and sweeps as much more at each wake-up: with the fast path
// a worker sees only SYNs, and while the kernel carries the rest, twenty
// wake-ups a second per worker cost 0.04 s of CPU in 8 s of iperf3 -P 4
// but, preempting the iperf3 processes on a 2-core machine, 15% of its
// throughput (docs/performance.md, "An idle worker sleeps").
const (
	sweepEvery  = 50 * time.Millisecond
	idleWaitMax = time.Second
)

// worker owns one ring socket, one flow table and everything it touches per
// packet, so the loop below takes no lock of its own and allocates nothing.
type worker struct {
	id     int
	dp     *dataplane
	link   link
	table  *conntrack.Table
	parser packet.Parser
	frame  packet.Frame
	pkts   []ring.Packet
	out    []ring.Out // frames to send, in order; they point into the ring or gen
	gen    [][]byte   // buffers for the frames the worker originates
	ngen   int
	reg    *registry // loaded once per batch
	stats  *workerStats
	bucket [numGenKinds]bucket

	now         int64     // table clock of the batch
	wall        time.Time // wall clock of the batch (cookies)
	cookieUntil int64     // until when ACKs without a flow may carry a cookie of ours
	nextSweep   int64
	wait        time.Duration      // until the next sweep: sweepEvery, or longer while idle
	busy        bool               // frames since the last sweep
	rates       *config.RateLimits // what the buckets were made from
	workers     int
	guard       synGuard
	guardOn     atomic.Bool // read by the control plane, for the log and metrics
	stop        atomic.Bool
	lastSendErr time.Time

	// The fast path's (fast.go): flows to offload before and after this
	// batch is sent and the insert they go in, flows given with their SYN
	// or SYN-ACK whose handshake is awaited and the free handshake slots,
	// and scratch space for the map values.
	fastPending []pendingOffload // established, to go after the batch is sent
	fastQueued  []pendingOffload // with their SYN or SYN-ACK, to go before it is sent
	fastBatch   *fastpath.Batch
	fastEarly   []pendingOffload
	fastFree    []uint32
	fastEvents  *fastpath.Events
	fastEvent   fastpath.Event
	fastDone    []uint32 // ids of closed flows whose entries are to go
	fastGen     uint32
	fastFlow    fastpath.Flow
	fastKey     [2]fastpath.Key
	fastHdr     [fastpath.MaxHeaders]byte
	fastHopGen  uint64
}

func newWorker(id int, dp *dataplane, l link, table *conntrack.Table, batch int, stats *workerStats, rates config.RateLimits, workers int) *worker {
	w := &worker{id: id, dp: dp, link: l, table: table, pkts: make([]ring.Packet, batch), out: make([]ring.Out, 0, 3*batch), stats: stats, wait: sweepEvery}
	if dp.fast != nil {
		w.fastPending = make([]pendingOffload, 0, batch)
		w.fastQueued = make([]pendingOffload, 0, batch)
		w.fastBatch = fastpath.NewBatch(batch)
		w.fastEarly = make([]pendingOffload, 0, 2*fastSlots)
		w.fastEvents = dp.fast.path.Events(id)
		w.fastDone = make([]uint32, 0, 256)
		w.fastFree = make([]uint32, fastSlots)
		for i := range w.fastFree {
			w.fastFree[i] = uint32(id*fastSlots + fastSlots - 1 - i) // the lowest first
		}
		table.SetOffloader(w)
	}
	w.gen = make([][]byte, 2*batch)
	for i := range w.gen {
		w.gen[i] = make([]byte, ring.VNetHdrLen+packet.MaxSegmentLen)
	}
	w.workers = workers
	w.setRates(&rates)
	return w
}

// setRates makes the worker's token buckets: its share of each rate.
func (w *worker) setRates(r *config.RateLimits) {
	per := func(r int) int64 {
		if r <= 0 {
			return 0
		}
		return max(int64(r)/int64(w.workers), 1)
	}
	w.rates = r
	w.bucket[genReset] = newBucket(per(r.Resets))
	w.bucket[genChallenge] = newBucket(per(r.ChallengeACKs))
	w.bucket[genSYNACK] = newBucket(per(r.SYNACKs))
}

// run is the per-packet loop: receive a batch, handle each frame in place,
// send what is to be sent in one go, hand the slots back; between batches,
// sweep a slice of the flow table.
func (w *worker) run() error {
	_ = w.link.SetReadDeadline(time.Now().Add(w.wait))
	for {
		n, err := w.link.Receive(w.pkts)
		woken := false
		switch {
		case errors.Is(err, ring.ErrClosed):
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			n, woken = 0, true
		case err != nil:
			return err
		}
		w.batch(n, woken)
		if w.stop.Load() {
			return nil
		}
	}
}

// batch handles n received packets, sends what they produced and releases
// them; then sweeps if due or if the read deadline woke the worker (its
// own, or the control plane's: Balancer.wakeWorkers).
func (w *worker) batch(n int, woken bool) {
	w.begin()
	if n > 0 {
		w.busy = true
		if w.wait > sweepEvery {
			w.awake()
		}
	}
	if w.fastEvents != nil && w.fastEvents.Pending() {
		w.fastClosed() // before any segment of this batch meets a closed flow
	}
	for i := 0; i < n; i++ {
		w.handle(&w.pkts[i])
	}
	w.flush()
	if len(w.fastPending) > 0 {
		w.offloadPending()
	}
	if len(w.fastEarly) > 0 {
		w.fastHandshakes()
	}
	w.link.Release(n)
	if woken || w.now >= w.nextSweep {
		w.housekeep()
	}
}

// awake brings an idle worker back to sweeping every sweepEvery, at its
// first frames. Handshakes the program completed while it slept are
// counted first, so that the SYNs of this batch meet the true half-open
// count (which turns the SYN cookies on).
func (w *worker) awake() {
	w.wait = sweepEvery
	w.nextSweep = min(w.nextSweep, w.now+int64(sweepEvery))
	_ = w.link.SetReadDeadline(w.wall.Add(sweepEvery))
	if len(w.fastEarly) > 0 {
		w.fastHandshakes()
	}
}

// begin starts a batch: one clock reading and one registry load for all of
// it.
func (w *worker) begin() {
	w.now = w.table.Now()
	w.wall = time.Now()
	w.reg = w.dp.reg.Load()
	w.out = w.out[:0]
	w.ngen = 0
}

// flush sends what the batch produced, after giving the program the
// flows whose SYN or SYN-ACK is among it.
func (w *worker) flush() {
	if len(w.fastQueued) > 0 {
		w.offloadQueued()
	}
	if len(w.out) > 0 {
		if dropped, err := w.link.Send(w.out); dropped > 0 {
			w.stats.drops[dropSendError].Add(uint64(dropped))
			w.logSendError(err)
		}
	}
	w.out = w.out[:0]
	w.ngen = 0
}

func (w *worker) drop(r dropReason) { w.stats.drops[r].Add(1) }

// handle classifies one frame and forwards, answers or drops it.
func (w *worker) handle(p *ring.Packet) {
	switch {
	case p.Truncated():
		w.drop(dropRingTruncated)
		return
	case p.Status&unix.TP_STATUS_VLAN_VALID != 0:
		w.drop(dropVLANOffload)
		return
	case p.PktType != ring.PacketHost:
		w.drop(dropNotHost)
		return
	}
	if p.Status&unix.TP_STATUS_COPY != 0 {
		// Larger than a ring slot: read whole from the socket queue (a
		// 64 KB segment on lo, a GRO or GSO one on a veth).
		w.stats.bigFrames.Add(1)
	}
	f := &w.frame
	if err := w.parser.Parse(p.Frame, f); err != nil {
		r, _ := err.(packet.Reason)
		w.drop(dropReason(r))
		return
	}
	if f.IsICMP() {
		w.handleICMP(p, f)
		return
	}
	state := packet.CsumComplete
	if p.VNet.Flags()&ring.VNetFlagNeedsCsum != 0 || p.Status&unix.TP_STATUS_CSUMNOTREADY != 0 {
		state = packet.CsumPartial
	}
	dp := w.dp
	if dport := f.TCP.DestinationPort(); dport >= dp.natFirst && dport <= dp.natLast && f.IP.Destination() == dp.natSrc {
		w.fromBackend(p, f, state)
		return
	}
	w.fromClient(p, f, state)
}

// segment reads what connection tracking needs of f's TCP header.
func segment(t packet.TCP) conntrack.Segment {
	s := conntrack.Segment{Flags: t.Flags(), Seq: t.Seq(), Ack: t.Ack(), Win: t.Window(), Len: uint32(len(t) - t.HeaderLen()), WScale: -1}
	if s.Flags&packet.FlagSYN != 0 {
		o := t.SYNOptions()
		s.WScale, s.SACKPerm = o.WScale, o.SACKPermitted
	} else if t.HeaderLen() > packet.TCPMinLen+12 {
		// Only a header longer than NOP NOP TIMESTAMP can hold SACK.
		s.SACK, s.HasSACK = t.MaxSACK()
	}
	return s
}

// fromClient handles a client's segment: forwarded to its flow's backend,
// or, without a flow, a new connection, a SYN cookie's ACK, or a stray.
func (w *worker) fromClient(p *ring.Packet, f *packet.Frame, state packet.CsumState) {
	key := conntrack.ClientKey{
		Client: conntrack.Endpoint{IP: f.IP.Source(), Port: f.TCP.SourcePort()},
		VIP:    conntrack.Endpoint{IP: f.IP.Destination(), Port: f.TCP.DestinationPort()},
	}
	fl := w.table.LookupClient(key)
	if fl == nil {
		w.noFlowFromClient(p, f, key)
		return
	}
	if fl.Offloaded() && w.fastSegment(p, f, fl, conntrack.FromClient, state) {
		return
	}
	seg := segment(f.TCP)
	if fl.State() == conntrack.StateSynProxy {
		w.proxyFromClient(p, f, fl, &seg)
		return
	}
	v, ok := w.track(p, f, fl, conntrack.FromClient, &seg)
	if !ok {
		return
	}
	if v.Action == conntrack.Reopen {
		w.reopen(p, f, fl, key)
		return
	}
	w.toBackend(p, f, fl, state)
}

// track runs fl's tracking on seg from direction d, and handles a segment
// that does not go on: counted by reason, and answered with a challenge
// ACK where RFC 5961 says so. It reports the verdict and whether the
// caller goes on with it (Forward, or Reopen, which only the client side
// acts on).
func (w *worker) track(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, d conntrack.Direction, seg *conntrack.Segment) (conntrack.Verdict, bool) {
	v := w.table.Track(fl, d, seg, w.now)
	switch v.Action {
	case conntrack.Drop:
		w.drop(ctBase + dropReason(v.Reason))
		return v, false
	case conntrack.Challenge:
		w.drop(ctBase + dropReason(v.Reason))
		w.challenge(p, f, fl, d)
		return v, false
	}
	return v, true
}

// noFlowFromClient handles a client segment without a flow.
func (w *worker) noFlowFromClient(p *ring.Packet, f *packet.Frame, key conntrack.ClientKey) {
	svc := w.reg.service(key.VIP)
	if svc == nil {
		w.drop(dropNoService)
		return
	}
	flags := f.TCP.Flags()
	if svc.removed.Load() && flags&(packet.FlagSYN|packet.FlagACK|packet.FlagRST) == packet.FlagSYN {
		w.refuse(p, f, svc, refuseNoBackend)
		return
	}
	switch {
	case flags&(packet.FlagSYN|packet.FlagACK|packet.FlagRST|packet.FlagFIN) == packet.FlagSYN:
		w.newConnection(p, f, svc, key)
	case flags&(packet.FlagSYN|packet.FlagACK|packet.FlagRST) == packet.FlagACK && w.now < w.cookieUntil && w.acceptCookie(p, f, svc, key):
	case flags&packet.FlagRST != 0:
		w.drop(dropNoFlow) // never answer a RST
	default:
		// A segment of a connection rawlb does not know (expired, or from
		// before a crash): a RST, as the host without the socket would
		// send (RFC 9293 3.10.7.1), so the client does not hang.
		w.drop(dropNoFlow)
		w.reset(p, f)
	}
}

// newConnection answers a client's SYN: a SYN cookie when the defence is
// on, else a new flow toward a scheduled backend, or a RST if none can take
// it.
func (w *worker) newConnection(p *ring.Packet, f *packet.Frame, svc *Service, key conntrack.ClientKey) {
	if w.dp.shared.Full() {
		w.refuse(p, f, svc, refuseTableFull)
		return
	}
	if w.guard.count(w.now, w.bucket[genSYNACK].rate) {
		w.guardOn.Store(true)
		if !w.guard.seen(f, uint32(w.now/1e6)) {
			w.drop(dropSYNFirst)
			return
		}
	} else if w.guardOn.Load() {
		w.guardOn.Store(false)
	}
	if w.cookiesOn() {
		w.sendCookie(p, f, svc)
		return
	}
	be, why := w.pick(svc, key)
	if be == nil {
		w.refuse(p, f, svc, why)
		return
	}
	o := f.TCP.SYNOptions()
	syn := conntrack.SYN{Seq: f.TCP.Seq(), MSS: o.MSS, WScale: o.WScale, SACKPerm: o.SACKPermitted, Window: f.TCP.Window()}
	if o.Timestamp {
		syn.TSval, syn.HasTS = o.TSval, true
	}
	fl, ok := w.create(p, f, svc, be, key, syn, false)
	if !ok {
		return
	}
	state := packet.CsumComplete
	if p.VNet.Flags()&ring.VNetFlagNeedsCsum != 0 || p.Status&unix.TP_STATUS_CSUMNOTREADY != 0 {
		state = packet.CsumPartial
	}
	seg := segment(f.TCP)
	w.table.Track(fl, conntrack.FromClient, &seg, w.now) // a retransmission of the flow's own SYN: nothing changes
	w.toBackend(p, f, fl, state)
}

// create makes a flow, refusing the client with a RST on failure.
func (w *worker) create(p *ring.Packet, f *packet.Frame, svc *Service, be *Backend, key conntrack.ClientKey, syn conntrack.SYN, proxy bool) (*conntrack.Flow, bool) {
	fl, err := w.table.Create(key, be.ID, be.Addr, f.Eth.Source(), p.Ifindex, w.now, syn, proxy)
	if err != nil {
		why := refuseNATExhausted
		switch {
		case errors.Is(err, conntrack.ErrTableFull):
			why = refuseTableFull
		case errors.Is(err, conntrack.ErrClientLimit):
			why = refuseClientLimit
		}
		w.refuse(p, f, svc, why)
		return nil, false
	}
	fl.LocalMAC = f.Eth.Destination()
	be.stats[w.id].flows.Add(1)
	if w.dp.debug {
		w.dp.log.Debug("new flow", "service", svc.Name, "client", key.Client.String(), "backend", be.Name,
			"nat_port", fl.NATPort, "syn_cookie", proxy)
	}
	return fl, true
}

// pick schedules a backend for a new flow of svc, or returns why none.
func (w *worker) pick(svc *Service, key conntrack.ClientKey) (*Backend, int) {
	if m := svc.Config.MaxFlows; m > 0 && svc.flows(w.dp.live) >= int64(m) {
		return nil, refuseServiceFull
	}
	h := svc.sched.Load()
	if h == nil {
		return nil, refuseNoBackend
	}
	hash := sched.HashAddr(key.Client.IP)
	if h.stable != nil {
		if id, ok := h.stable.Pick(hash, nil); ok {
			if be := w.reg.backends[id]; be != nil && !w.atMax(be) {
				if ok, _ := be.usable(); ok {
					return be, 0
				}
			}
		}
	}
	// A backend at its max_flows passes the flow on: up to a few tries.
	for try := 0; try < 4; try++ {
		id, ok := h.s.Pick(hash+uint64(try)*0x9e3779b97f4a7c15, w.dp.live)
		if !ok {
			return nil, refuseNoBackend
		}
		be := w.reg.backends[id]
		if be == nil || w.atMax(be) {
			continue
		}
		return be, 0
	}
	return nil, refuseNoBackend
}

// atMax reports whether be holds its max_flows.
func (w *worker) atMax(be *Backend) bool {
	m := be.maxFlows.Load()
	return m > 0 && w.dp.live.Live(be.ID) >= m
}

// refuse answers a SYN that no backend takes with a RST, so the connect
// fails at once instead of timing out.
func (w *worker) refuse(p *ring.Packet, f *packet.Frame, svc *Service, why int) {
	svc.stats[w.id].refused[why].Add(1)
	w.drop(dropRefused)
	w.reset(p, f)
}

// reopen handles a SYN for a flow that is over (TIME_WAIT, or reset): a
// flow whose handshake never completed starts again on the same NAT port
// and backend, whose history is known; any other is removed and the SYN
// starts a new one.
func (w *worker) reopen(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, key conntrack.ClientKey) {
	if !fl.EverEstablished() {
		if be := w.reg.backends[fl.Backend]; be != nil {
			if ok, _ := be.usable(); ok {
				o := f.TCP.SYNOptions()
				syn := conntrack.SYN{Seq: f.TCP.Seq(), MSS: o.MSS, WScale: o.WScale, SACKPerm: o.SACKPermitted, Window: f.TCP.Window()}
				if o.Timestamp {
					syn.TSval, syn.HasTS = o.TSval, true
				}
				w.table.Restart(fl, syn, w.now)
				state := packet.CsumComplete
				if p.VNet.Flags()&ring.VNetFlagNeedsCsum != 0 || p.Status&unix.TP_STATUS_CSUMNOTREADY != 0 {
					state = packet.CsumPartial
				}
				w.toBackend(p, f, fl, state)
				return
			}
		}
	}
	w.table.Remove(fl, w.now)
	if svc := w.reg.service(key.VIP); svc != nil {
		w.newConnection(p, f, svc, key)
	} else {
		w.drop(dropNoService)
	}
}

// hopOf returns fl's backend and how to reach it; the hop is nil while
// the backend is gone or rawlb cannot send to it.
func (w *worker) hopOf(fl *conntrack.Flow) (*Backend, *hop) {
	be := w.reg.backends[fl.Backend]
	if be == nil {
		return nil, nil
	}
	return be, be.hop.Load()
}

// toBackend rewrites a client's segment for its flow's backend and queues it.
func (w *worker) toBackend(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, state packet.CsumState) {
	be, h := w.hopOf(fl)
	if h == nil {
		w.drop(dropNoNeighbor)
		return
	}
	f.RewriteTCP(w.dp.natSrc, fl.NATPort, fl.BackendAddr.IP, fl.BackendAddr.Port, state)
	tcp := f.TCP
	ts := tcp.TimestampOption()
	if ts >= 0 {
		tcp.AddTimestamps(ts, fl.TSOff, -fl.BTSOff, state)
	}
	tcp.AddSeqAck(fl.SeqOff, -fl.BSeqOff, state)
	if fl.BSeqOff != 0 {
		tcp.AddSACK(-fl.BSeqOff, state)
	}
	if ts >= 0 {
		fl.NoteToBackend(tcp.TSval(ts), true, tcp.SeqEnd())
	} else {
		fl.NoteToBackend(0, false, tcp.SeqEnd())
	}
	st := &be.stats[w.id]
	st.packets[dirToBackend].Add(1)
	st.bytes[dirToBackend].Add(uint64(len(f.IP)))
	w.emit(p, f, h.ifindex, h.dst, h.src, dirToBackend)
	if w.dp.fast != nil {
		w.countForFast(fl)
	}
}

// fromBackend handles a backend's segment: forwarded to its flow's client,
// or part of a handshake rawlb holds, or a stray answered with a RST.
func (w *worker) fromBackend(p *ring.Packet, f *packet.Frame, state packet.CsumState) {
	fl := w.table.LookupBackend(conntrack.BackendKey{
		Backend: conntrack.Endpoint{IP: f.IP.Source(), Port: f.TCP.SourcePort()},
		NATPort: f.TCP.DestinationPort(),
	})
	if fl == nil {
		w.drop(dropNoFlow)
		if f.TCP.Flags()&packet.FlagRST == 0 {
			// The backend still holds a connection rawlb forgot (a crash
			// without state): a RST frees it.
			w.reset(p, f)
		}
		return
	}
	if fl.Offloaded() && w.fastSegment(p, f, fl, conntrack.FromBackend, state) {
		return
	}
	seg := segment(f.TCP)
	switch fl.State() {
	case conntrack.StateSynProxy:
		w.proxyFromBackend(p, f, fl, &seg)
		return
	case conntrack.StateSynSent:
		if seg.Flags&(packet.FlagSYN|packet.FlagRST|packet.FlagACK) == packet.FlagACK && w.timeWaitAssist(p, f, fl, &seg) {
			return
		}
	}
	v, ok := w.track(p, f, fl, conntrack.FromBackend, &seg)
	if !ok {
		return
	}
	if seg.Flags&(packet.FlagSYN|packet.FlagACK) == packet.FlagSYN|packet.FlagACK && v.Old == conntrack.StateSynSent {
		w.learnWScale(fl, f)
	}
	w.toClient(p, f, fl, state)
}

// learnWScale records the window scale a backend announced, for the SYN
// cookies of its service.
func (w *worker) learnWScale(fl *conntrack.Flow, f *packet.Frame) {
	be := w.reg.backends[fl.Backend]
	if be == nil {
		return
	}
	if o := f.TCP.SYNOptions(); o.WScale >= 0 && int32(o.WScale) != be.Service.wscale.Load() {
		be.Service.wscale.Store(int32(o.WScale))
	}
}

// toClient rewrites a backend's segment for its flow's client and queues it.
func (w *worker) toClient(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, state packet.CsumState) {
	f.RewriteTCP(fl.Key.VIP.IP, fl.Key.VIP.Port, fl.Key.Client.IP, fl.Key.Client.Port, state)
	tcp := f.TCP
	if ts := tcp.TimestampOption(); ts >= 0 {
		tcp.AddTimestamps(ts, fl.BTSOff, -fl.TSOff, state)
	}
	tcp.AddSeqAck(fl.BSeqOff, -fl.SeqOff, state)
	tcp.AddSACK(-fl.SeqOff, state)
	if fl.WinShift != 0 {
		tcp.SetWindow(shiftWindow(tcp.Window(), fl.WinShift), state)
	}
	if be := w.reg.backends[fl.Backend]; be != nil {
		st := &be.stats[w.id]
		st.packets[dirToClient].Add(1)
		st.bytes[dirToClient].Add(uint64(len(f.IP)))
	}
	w.emit(p, f, fl.ClientIf, fl.ClientMAC, fl.LocalMAC, dirToClient)
	if w.dp.fast != nil {
		w.countForFast(fl)
	}
}

// shiftWindow rescales a window field by shift (negative: to the right),
// saturating at the field's maximum.
func shiftWindow(win uint16, shift int8) uint16 {
	if shift < 0 {
		return win >> uint(-shift)
	}
	return uint16(min(uint32(win)<<uint(shift), 0xffff))
}

// handleICMP translates an ICMP error about a segment the balancer sent,
// for the other side of the flow, so path MTU discovery and unreachable
// errors work through the balancer.
func (w *worker) handleICMP(p *ring.Packet, f *packet.Frame) {
	dp := w.dp
	in := f.Inner
	sport, dport := f.InnerSourcePort(), f.InnerDestinationPort()
	if in.Source() == dp.natSrc && sport >= dp.natFirst && sport <= dp.natLast {
		// About a segment sent toward a backend: tell the client, as if
		// about its own segment to the VIP.
		fl := w.table.LookupBackend(conntrack.BackendKey{Backend: conntrack.Endpoint{IP: in.Destination(), Port: dport}, NATPort: sport})
		if fl == nil {
			w.drop(dropNoFlow)
			return
		}
		c, v := fl.Key.Client, fl.Key.VIP
		f.AddInnerSeq(-fl.SeqOff) // the quote carries the shifted number
		f.TranslateICMP(v.IP, c.IP, c.IP, c.Port, v.IP, v.Port)
		w.stats.icmp[dirToClient].Add(1)
		w.emit(p, f, fl.ClientIf, fl.ClientMAC, fl.LocalMAC, dirToClient)
		return
	}
	// About a segment sent toward a client: tell the backend.
	fl := w.table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: in.Destination(), Port: dport}, VIP: conntrack.Endpoint{IP: in.Source(), Port: sport}})
	if fl == nil {
		w.drop(dropNoFlow)
		return
	}
	_, h := w.hopOf(fl)
	if h == nil {
		w.drop(dropNoNeighbor)
		return
	}
	b := fl.BackendAddr
	f.AddInnerSeq(-fl.BSeqOff)
	f.TranslateICMP(dp.natSrc, b.IP, b.IP, b.Port, dp.natSrc, fl.NATPort)
	w.stats.icmp[dirToBackend].Add(1)
	w.emit(p, f, h.ifindex, h.dst, h.src, dirToBackend)
}

// emit readdresses the frame's Ethernet header and queues it for sending
// on ifindex, without the Ethernet padding, with the virtio-net header it
// came with.
func (w *worker) emit(p *ring.Packet, f *packet.Frame, ifindex int32, dst, src [6]byte, dir int) {
	f.Eth.SetDestination(dst)
	f.Eth.SetSource(src)
	w.stats.packets[dir].Add(1)
	w.stats.bytes[dir].Add(uint64(len(f.IP)))
	w.queue(p, f, ifindex)
}

// queue sets the virtio-net header for sending and queues the frame on
// ifindex, without the Ethernet padding.
func (w *worker) queue(p *ring.Packet, f *packet.Frame, ifindex int32) {
	vnet := p.VNet
	if f.IsICMP() {
		vnet.SetFlags(0) // the ICMP checksum was summed afresh
	} else {
		vnet.SetFlags(vnet.Flags() &^ ring.VNetFlagDataValid) // a receive-side flag, meaningless on send
		if vnet.GSOType() != ring.VNetGSONone {
			w.stats.gsoFrames.Add(1)
			if vnet.Flags()&ring.VNetFlagNeedsCsum == 0 {
				// A GRO-merged segment from a NIC: its checksum field
				// belongs to the first packet merged. Hand it to the
				// kernel as partial, so each segment it cuts gets a
				// checksum computed afresh.
				f.SetPseudoChecksum()
				vnet.SetCsum(uint16(len(f.Eth)+f.IP.HeaderLen()), 16)
			}
		}
	}
	w.out = append(w.out, ring.Out{Buf: p.Buf[:ring.VNetHdrLen+f.Len()], Ifindex: ifindex})
}

// genBuf returns a buffer for an originated frame, after the virtio-net
// header (zeroed), or nil when the batch has used them all.
func (w *worker) genBuf() []byte {
	if w.ngen == len(w.gen) {
		// Send what is queued (frames of this batch stay valid until
		// Release) and start over.
		w.flush()
	}
	b := w.gen[w.ngen]
	clear(b[:ring.VNetHdrLen])
	return b
}

// queueGen queues the originated frame of n bytes in the current gen
// buffer, on ifindex.
func (w *worker) queueGen(n int, ifindex int32, kind int) {
	b := w.gen[w.ngen]
	w.ngen++
	w.stats.sent[kind].Add(1)
	w.out = append(w.out, ring.Out{Buf: b[:ring.VNetHdrLen+n], Ifindex: ifindex})
}

// allow takes a token for an originated packet of kind, counting it if
// there is none.
func (w *worker) allow(kind int) bool {
	if w.bucket[kind].allow(w.now) {
		return true
	}
	w.stats.limited[kind].Add(1)
	return false
}

// reset queues the RST answering the segment in f (rate-limited), back out
// the interface it came from.
func (w *worker) reset(p *ring.Packet, f *packet.Frame) {
	buf := w.genBuf()
	if buf == nil || !w.allow(genReset) {
		return
	}
	if n := packet.BuildReset(buf[ring.VNetHdrLen:], f); n > 0 {
		w.queueGen(n, p.Ifindex, genReset)
	}
}

// sendSegment builds s and queues it on ifindex, if the bucket of kind
// allows.
func (w *worker) sendSegment(s *packet.Segment, ifindex int32, kind int) bool {
	buf := w.genBuf()
	if buf == nil {
		w.stats.limited[kind].Add(1)
		return false
	}
	if !w.allow(kind) {
		return false
	}
	if n := packet.BuildSegment(buf[ring.VNetHdrLen:], s); n > 0 {
		w.queueGen(n, ifindex, kind)
		return true
	}
	return false
}

// challenge answers a RST in the window but not exact, or a SYN on a
// synchronized flow, with a challenge ACK to its sender (RFC 5961 sections
// 3.2 and 4.2): a peer that really lost its connection answers with a RST
// of exactly the expected number; a blind attacker never sees it.
func (w *worker) challenge(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, d conntrack.Direction) {
	seq, ack, win := fl.ChallengeACK(d)
	s := packet.Segment{
		SrcMAC: f.Eth.Destination(), DstMAC: f.Eth.Source(), Src: f.IP.Destination(), Dst: f.IP.Source(),
		SrcPort: f.TCP.DestinationPort(), DstPort: f.TCP.SourcePort(), Seq: seq, Ack: ack, Flags: packet.FlagACK, Window: win,
	}
	w.sendSegment(&s, p.Ifindex, genChallenge)
}

// logSendError logs a failed send at most every ten seconds: a full
// transmit queue fails many frames at once and one line says enough.
func (w *worker) logSendError(err error) {
	if now := time.Now(); now.Sub(w.lastSendErr) > 10*time.Second {
		w.lastSendErr = now
		w.dp.log.Warn("sending frames failed; counted in rawlb_drops_total{reason=\"send_error\"}", "worker", w.id, "err", err)
	}
}
