// Package conntrack is rawlb's flow table for full NAT, with TCP tracking
// as strict as a stateful firewall's (tcp.go).
//
// A client C connects to a service's VIP. The engine picks backend B and
// calls Create, which allocates a NAT port N unique toward B; the engine then
// sends C's packets to B as coming from the balancer's address and port N.
// Packets from C find their flow by ClientKey, replies from B by BackendKey
// (B's address, B's port, N).
//
// Each packet worker owns one Table, and both directions of every flow in
// it: the fanout program sends a client's segments to the worker its address
// and port hash to, and a backend's segments to the worker N mod workers
// names, and Create gives a worker's flows only NAT ports that name it. So
// nothing in a Table is shared between workers and the per-packet path
// takes no lock: lookups are plain map reads, Track updates plain fields.
// What other goroutines read (counts for metrics, the scheduler's live
// flows per backend, the half-open total for the SYN-cookie switch) is kept
// in atomics. What all workers share (the flow limit, the per-client
// counts) lives in Shared, also in atomics.
//
// Flows live in a slab of fixed-size chunks that never move, indexed by
// uint32 from maps whose keys and values hold no pointers: a million flows
// cost the garbage collector nothing to scan.
package conntrack

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Defaults for zero Config fields.
const (
	DefaultNATPortFirst       = 40000
	DefaultNATPortLast        = 59999
	DefaultPortQuiet          = 60 * time.Second // Linux TIME_WAIT
	DefaultHalfOpenTimeout    = 30 * time.Second
	DefaultEstablishedTimeout = time.Hour
	DefaultClosingTimeout     = 10 * time.Second
	DefaultMaxFlows           = 1_000_000
)

// MaxBackends bounds the engine's backend ids: per-backend counts are
// arrays indexed by id.
const MaxBackends = 4096

// chunkSize is the number of flows per slab chunk.
const chunkSize = 1024

// Config configures a worker's Table.
type Config struct {
	// Worker and Workers: this table hands out the NAT ports p with
	// p % Workers == Worker. Workers 0 means 1.
	Worker, Workers int

	// NATPortFirst and NATPortLast bound the NAT ports, inclusive (default
	// 40000-59999 when both are zero).
	NATPortFirst, NATPortLast uint16

	// PortQuiet is how long a freed NAT port is kept from being handed out
	// again toward the same backend (the backend's TIME_WAIT), unless nothing
	// else is free.
	PortQuiet time.Duration
	// HalfOpenTimeout bounds a handshake, from the flow's creation.
	HalfOpenTimeout time.Duration
	// EstablishedTimeout is the idle timeout of synchronized flows,
	// half-closed ones included (a half-close is legal and can last).
	EstablishedTimeout time.Duration
	// ClosingTimeout is the idle timeout once both FINs or a RST passed,
	// long enough for the last ACKs and retransmitted FINs.
	ClosingTimeout time.Duration

	// Shared holds what every worker's table shares. Required.
	Shared *Shared

	// Clock returns monotonic nanoseconds; every time the table takes or
	// returns is on it. The default counts from New.
	Clock func() int64
	// WallClock returns nanoseconds since the Unix epoch, for the TSval and
	// ISN clocks that must keep rising across processes. Default time.Now.
	WallClock func() int64
	// ISNHash is RFC 6528's F for a connection toward backend from NAT
	// port natPort: a keyed hash that stays the same across restarts (its
	// key is kept with the state). Default 0.
	ISNHash func(natPort uint16, backend Endpoint) uint32
}

// Sentinel errors of Create.
var (
	ErrTableFull = errors.New("conntrack: flow table full (max flows reached): " +
		"new connections are refused until flows close or expire")
	ErrNATPortsExhausted = errors.New("conntrack: no free NAT port toward this backend: " +
		"widen the NAT port range or add backends")
	ErrClientLimit = errors.New("conntrack: the client address holds its share of the flows (max flows per client)")
)

// Stats are cumulative counters of a Table.
type Stats struct {
	Created        uint64 // flows inserted by Create
	Expired        uint64 // flows removed by Sweep on their timeout
	Removed        uint64 // flows removed by Remove, or by Sweep on the engine's word
	RefusedFull    uint64 // Create calls refused with ErrTableFull
	RefusedClient  uint64 // Create calls refused with ErrClientLimit
	NATExhausted   uint64 // Create calls refused with ErrNATPortsExhausted
	NATQuietReused uint64 // NAT ports handed out within PortQuiet because no rested one was free
}

// Table is one worker's flow table. Only the owning worker may call its
// methods, except those documented as safe from any goroutine.
type Table struct {
	worker, workers int
	natFirst        uint16
	natLast         uint16
	quietNs         int64
	halfOpenNs      int64
	establishedNs   int64
	closingNs       int64
	shared          *Shared
	clock           func() int64
	wall            func() int64
	isnHash         func(uint16, Endpoint) uint32

	fwd    map[ClientKey]uint32
	rev    map[BackendKey]uint32
	chunks [][]Flow
	free   []uint32
	used   uint32 // slots ever handed out: the sweep's range
	cursor uint32 // where the next sweep starts

	ports map[Endpoint]*natPorts
	off   Offloader // nil: no fast path

	// Read from other goroutines.
	count    atomic.Int64
	halfOpen atomic.Int64
	states   [numStates]atomic.Int64
	live     [MaxBackends]atomic.Int64 // flows toward each backend id that are Live
	flows    [MaxBackends]atomic.Int64 // flows toward each backend id, in any state
	nCreated, nExpired, nRemoved, nRefusedFull,
	nRefusedClient, nNATExhausted, nQuietUse atomic.Uint64
}

// New validates cfg, fills in defaults and returns an empty table.
func New(cfg Config) (*Table, error) {
	if cfg.Shared == nil {
		return nil, errors.New("conntrack: Config.Shared is required")
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.Workers < 1 || cfg.Worker < 0 || cfg.Worker >= cfg.Workers {
		return nil, fmt.Errorf("conntrack: worker %d of %d", cfg.Worker, cfg.Workers)
	}
	first, last := cfg.NATPortFirst, cfg.NATPortLast
	switch {
	case first == 0 && last == 0:
		first, last = DefaultNATPortFirst, DefaultNATPortLast
	case first == 0 || last == 0:
		return nil, fmt.Errorf("conntrack: NAT port range %d-%d: set both ends to non-zero ports, or both to zero for the default %d-%d",
			first, last, DefaultNATPortFirst, DefaultNATPortLast)
	case first > last:
		return nil, fmt.Errorf("conntrack: NAT port range %d-%d: the first port must not exceed the last", first, last)
	case int(last)-int(first)+1 < cfg.Workers:
		return nil, fmt.Errorf("conntrack: NAT port range %d-%d has fewer ports than the %d workers", first, last, cfg.Workers)
	}
	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"PortQuiet", &cfg.PortQuiet, DefaultPortQuiet},
		{"HalfOpenTimeout", &cfg.HalfOpenTimeout, DefaultHalfOpenTimeout},
		{"EstablishedTimeout", &cfg.EstablishedTimeout, DefaultEstablishedTimeout},
		{"ClosingTimeout", &cfg.ClosingTimeout, DefaultClosingTimeout},
	}
	for _, d := range durations {
		switch {
		case *d.d < 0:
			return nil, fmt.Errorf("conntrack: Config.%s = %v: must not be negative (zero means the default %v)", d.name, *d.d, d.def)
		case *d.d == 0:
			*d.d = d.def
		}
	}
	if cfg.Clock == nil {
		start := time.Now()
		// time.Since uses the monotonic reading taken by time.Now, so the
		// table's clock does not jump with the wall clock.
		cfg.Clock = func() int64 { return int64(time.Since(start)) }
	}
	if cfg.WallClock == nil {
		cfg.WallClock = func() int64 { return time.Now().UnixNano() }
	}
	if cfg.ISNHash == nil {
		cfg.ISNHash = func(uint16, Endpoint) uint32 { return 0 }
	}
	return &Table{
		worker:        cfg.Worker,
		workers:       cfg.Workers,
		natFirst:      first,
		natLast:       last,
		quietNs:       int64(cfg.PortQuiet),
		halfOpenNs:    int64(cfg.HalfOpenTimeout),
		establishedNs: int64(cfg.EstablishedTimeout),
		closingNs:     int64(cfg.ClosingTimeout),
		shared:        cfg.Shared,
		clock:         cfg.Clock,
		wall:          cfg.WallClock,
		isnHash:       cfg.ISNHash,
		fwd:           make(map[ClientKey]uint32),
		rev:           make(map[BackendKey]uint32),
		ports:         make(map[Endpoint]*natPorts),
	}, nil
}

// Now returns the table's clock. Safe from any goroutine.
func (t *Table) Now() int64 { return t.clock() }

// flow returns the flow in slot i.
func (t *Table) flow(i uint32) *Flow { return &t.chunks[i/chunkSize][i%chunkSize] }

// LookupClient returns the flow of a packet from a client, or nil.
func (t *Table) LookupClient(k ClientKey) *Flow {
	if i, ok := t.fwd[k]; ok {
		return t.flow(i)
	}
	return nil
}

// LookupBackend returns the flow of a reply from a backend, or nil.
func (t *Table) LookupBackend(k BackendKey) *Flow {
	if i, ok := t.rev[k]; ok {
		return t.flow(i)
	}
	return nil
}

// seqGap is how far beyond the end of a port's previous flow a new flow's
// initial sequence number lands when the clock alone would not put it
// beyond: any distance in (0, 2^31) satisfies the TIME_WAIT check; 2^16
// clears a last window of data still in flight, as Linux's own choice for a
// SYN it accepts in TIME_WAIT (tw_snd_nxt + 65537) does.
const seqGap = 1 << 16

// isnTick is RFC 6528's timer M: one step per 4 microseconds.
const isnTick = 4000

// Create inserts a flow for the client's SYN toward backend (id and
// address), in StateSynSent, or in StateSynProxy when proxy is set (the
// client's handshake was completed with a SYN cookie). It allocates a NAT
// port of this worker's share that is unique toward backend, and counts the
// flow against the shared limits. now becomes its Created and LastSeen.
//
// The caller looks the key up first: Create does not check for an existing
// flow (a worker owns its keys, so there is no race to lose).
//
// Create sets TSOff and SeqOff so that what the backend sees on the NAT port
// keeps rising, across flows, restarts and other users of the address.
// Why: once connections come faster than the NAT range over the backend's
// TIME_WAIT (20,000 ports / 60 s), a NAT port goes to a new client while the
// backend still holds the previous connection on the same 4-tuple in
// TIME_WAIT. Linux (tcp_timewait_state_process) accepts a SYN on such a
// 4-tuple only if its timestamp is newer than the old connection's (PAWS,
// RFC 7323 section 5) or its sequence number lies beyond the old one's last
// (RFC 1122 section 4.2.2.13); each client has its own timestamp clock and
// random initial sequence numbers, so an unrelated client's SYN is refused
// about half the time, and after a restart rawlb would not even know the
// previous numbers. So the TSval toward the backend comes from a clock rawlb
// owns, milliseconds of the wall clock (which a new process carries on),
// and the initial sequence number from RFC 6528's clock, 4 microsecond
// ticks plus a keyed hash of the connection; and where what the port's
// previous flow left is known and the clock would not beat it, from just
// beyond that. The engine adds the offsets toward the backend and takes
// them off what the backend echoes (TSecr, ACK numbers, SACK edges), so
// the client sees its own values.
func (t *Table) Create(k ClientKey, backendID uint32, backend Endpoint, clientMAC [6]byte, clientIf int32, now int64, syn SYN, proxy bool) (*Flow, error) {
	if backendID >= MaxBackends {
		return nil, fmt.Errorf("conntrack: backend id %d is beyond MaxBackends", backendID)
	}
	sh := t.shared
	if !sh.reserve() {
		t.nRefusedFull.Add(1)
		return nil, ErrTableFull
	}
	if !sh.clientAdd(k.Client.IP) {
		sh.release()
		t.nRefusedClient.Add(1)
		return nil, ErrClientLimit
	}
	pool := t.ports[backend]
	if pool == nil {
		pool = newNATPorts(t.natFirst, t.natLast, t.worker, t.workers)
		t.ports[backend] = pool
	}
	port, mem, quiet, ok := pool.get(now, t.quietNs)
	if !ok {
		sh.clientDone(k.Client.IP)
		sh.release()
		t.nNATExhausted.Add(1)
		return nil, ErrNATPortsExhausted
	}
	i := t.alloc()
	f := t.flow(i)
	*f = Flow{
		Key: k, BackendAddr: backend, NATPort: port, ClientMAC: clientMAC, ClientIf: clientIf, Backend: backendID,
		Syn: syn, Created: now, LastSeen: now, idx: i,
	}
	t.setOffsets(f, mem)
	f.state = StateSynSent
	if proxy {
		f.state = StateSynProxy
		f.flags |= flagProxy
	}
	// The client's side is known from its SYN (the kernel's tcp_new).
	c := &f.peers[FromClient]
	c.end = syn.Seq + 1
	c.maxend = c.end
	c.maxwin = max(uint32(syn.Window), 1)
	c.win = syn.Window
	if syn.WScale >= 0 {
		c.flags |= peerWScale
		c.scale = uint8(min(syn.WScale, maxWScale))
	}
	if syn.SACKPerm {
		c.flags |= peerSACKPerm
	}
	t.fwd[k] = i
	t.rev[f.ReverseKey()] = i
	t.count.Add(1)
	t.halfOpen.Add(1)
	t.states[f.state].Add(1)
	f.flags |= flagLive
	t.live[backendID].Add(1)
	t.flows[backendID].Add(1)
	t.nCreated.Add(1)
	if quiet {
		t.nQuietUse.Add(1)
	}
	return f, nil
}

// setOffsets chooses f's TSOff and SeqOff (see Create) given what the NAT
// port's previous flow left.
func (t *Table) setOffsets(f *Flow, mem portMemory) {
	wall := t.wall()
	syn := f.Syn
	if syn.HasTS {
		ts := uint32(wall / int64(time.Millisecond))
		if mem.flags&memTS != 0 && !after(ts, mem.ts) {
			ts = mem.ts + 1
		}
		f.TSOff = ts - syn.TSval
		f.tsLast = ts
		f.flags |= flagTS
	}
	isn := uint32(wall/isnTick) + t.isnHash(f.NATPort, f.BackendAddr)
	if mem.flags&memSeq != 0 && !after(isn, mem.seqEnd) {
		isn = mem.seqEnd + seqGap
	}
	f.SeqOff = isn - syn.Seq
	f.seqEnd = isn + 1
}

// Restart starts a flow afresh in place for a new SYN on the same client
// key, keeping its NAT port and backend: for a client that reset a
// handshake that never completed (answering an ACK from the backend's
// TIME_WAIT, say) and retransmits its SYN. A new NAT port would likely meet
// another TIME_WAIT; this one's history is known.
func (t *Table) Restart(f *Flow, syn SYN, now int64) {
	mem := portMemory{seqEnd: f.seqEnd, flags: memSeq}
	if f.flags&flagTS != 0 {
		mem.ts, mem.flags = f.tsLast, mem.flags|memTS
	}
	wasHalf := f.state.HalfOpen()
	wasLive := f.flags&flagLive != 0
	t.states[f.state].Add(-1)
	keep := *f
	*f = Flow{
		Key: keep.Key, BackendAddr: keep.BackendAddr, NATPort: keep.NATPort, ClientMAC: keep.ClientMAC,
		LocalMAC: keep.LocalMAC, ClientIf: keep.ClientIf, Backend: keep.Backend, Syn: syn, Created: now, LastSeen: now, idx: keep.idx,
	}
	t.setOffsets(f, mem)
	f.state = StateSynSent
	c := &f.peers[FromClient]
	c.end, c.maxend, c.maxwin, c.win = syn.Seq+1, syn.Seq+1, max(uint32(syn.Window), 1), syn.Window
	if syn.WScale >= 0 {
		c.flags |= peerWScale
		c.scale = uint8(min(syn.WScale, maxWScale))
	}
	if syn.SACKPerm {
		c.flags |= peerSACKPerm
	}
	if !wasHalf {
		t.halfOpen.Add(1)
	}
	t.states[f.state].Add(1)
	f.flags |= flagLive
	if !wasLive {
		t.live[f.Backend].Add(1)
	}
}

// alloc returns a free slab slot.
func (t *Table) alloc() uint32 {
	if n := len(t.free); n > 0 {
		i := t.free[n-1]
		t.free = t.free[:n-1]
		return i
	}
	if t.used%chunkSize == 0 {
		t.chunks = append(t.chunks, make([]Flow, chunkSize))
	}
	i := t.used
	t.used++
	return i
}

// Track is Flow.Track plus the table's counts of half-open and live flows.
func (t *Table) Track(f *Flow, d Direction, s *Segment, now int64) Verdict {
	v := f.Track(d, s, now)
	if f.state != v.Old {
		t.transition(f, v.Old)
	}
	return v
}

// transition updates the counts after f left state old.
func (t *Table) transition(f *Flow, old State) {
	t.states[old].Add(-1)
	t.states[f.state].Add(1)
	if f.state == StateEstablished {
		f.flags |= flagEstablished
	}
	if old.HalfOpen() && !f.state.HalfOpen() {
		t.halfOpen.Add(-1)
	}
	if f.flags&flagLive != 0 && !f.state.Live() {
		f.flags &^= flagLive
		t.live[f.Backend].Add(-1)
	}
}

// SetState moves f to state s (the engine's SYN cookie handshake), keeping
// the counts right.
func (t *Table) SetState(f *Flow, s State) {
	old := f.state
	f.state = s
	if old.HalfOpen() != s.HalfOpen() && s.HalfOpen() {
		t.halfOpen.Add(1)
	}
	t.transition(f, old)
}

// CompleteProxy finishes a SYN cookie flow's handshakes once the backend's
// SYN-ACK is known: both sides' window state as if each had seen the
// other's handshake directly, and the flow Established. client describes
// the client's SYN as rawlb knows it from the cookie, with the window of
// its ACK.
func (t *Table) CompleteProxy(f *Flow, client, synack *Segment, now int64) {
	f.initSender(FromClient, client)
	f.initSender(FromBackend, synack)
	c, b := &f.peers[FromClient], &f.peers[FromBackend]
	// What each side may send: the other's first window (the client's
	// came in its ACK, so it is scaled already).
	c.maxend = c.end + max(uint32(synack.Win), 1)
	b.maxend = b.end + max(uint32(client.Win)<<c.scale, 1)
	c.maxwin = max(uint32(client.Win)<<c.scale, 1)
	// The client acknowledged the cookie, which is the backend's SYN as it
	// knows it; the backend's SYN-ACK acknowledges the client's SYN.
	c.maxack, c.flags = b.end, c.flags|peerMaxAck
	b.maxack, b.flags = c.end, b.flags|peerMaxAck
	t.SetState(f, StateEstablished)
	f.LastSeen = now
}

// Remove deletes f now and frees its NAT port into quiet time. The engine
// uses it when a new SYN arrives for a key whose flow is over, and to reset
// flows.
func (t *Table) Remove(f *Flow, now int64) {
	if f.state == StateNone {
		return
	}
	t.unlink(f, now)
	t.nRemoved.Add(1)
}

// unlink removes f from the maps and the counts, and frees its slot and
// NAT port.
func (t *Table) unlink(f *Flow, now int64) {
	if f.flags&flagOffload != 0 {
		if t.off != nil {
			t.off.Release(f) // first: it brings the NAT port's memory up to date
		}
		f.flags &^= flagOffload
	}
	delete(t.fwd, f.Key)
	delete(t.rev, f.ReverseKey())
	if f.state.HalfOpen() {
		t.halfOpen.Add(-1)
	}
	if f.flags&flagLive != 0 {
		t.live[f.Backend].Add(-1)
	}
	t.flows[f.Backend].Add(-1)
	t.states[f.state].Add(-1)
	mem := portMemory{seqEnd: f.seqEnd, flags: memSeq}
	if f.flags&flagTS != 0 {
		mem.ts, mem.flags = f.tsLast, mem.flags|memTS
	}
	t.ports[f.BackendAddr].put(f.NATPort, now, mem)
	t.shared.clientDone(f.Key.Client.IP)
	t.shared.release()
	t.count.Add(-1)
	f.state = StateNone
	t.free = append(t.free, f.idx)
}

// timeout returns how long f may stay idle in its state, and from when.
func (t *Table) expired(f *Flow, now int64) bool {
	switch {
	case f.state.HalfOpen():
		return now-f.Created > t.halfOpenNs
	case f.state == StateEstablished || f.state == StateFinWait || f.state == StateCloseWait:
		return now-f.LastSeen > t.establishedNs
	}
	return now-f.LastSeen > t.closingNs
}

// mayHaveClosed reports whether an offloaded flow, idle by the engine's
// clock, may have reached LastAck in the fast path, which forwards both
// FINs: then the closing timeout applies, not the established one. A peer
// that sends its FIN and never the last ACK must not hold the NAT port for
// an hour. The fast path is asked at most once per closing timeout per
// flow: an idle keep-alive connection costs one map lookup every 10 s.
func (t *Table) mayHaveClosed(f *Flow, now int64) bool {
	return now-f.LastSeen > t.closingNs && now-f.peeked > t.closingNs
}

// Judge is the engine's say in a sweep.
type Judge interface {
	// Keep is asked about each flow the sweep visits that has not expired;
	// false removes it (the engine has reset both sides first: a drained
	// backend's timeout, a dead backend's flows).
	Keep(f *Flow) bool
	// Expired is told about each flow the sweep is about to remove on its
	// timeout.
	Expired(f *Flow)
}

// Sweep visits up to budget slab slots from where the last sweep stopped,
// removing expired flows and those the judge gives up, and returns how
// many it removed. The engine's worker calls it between batches; a budget
// of a twentieth of the table every 50 ms visits every flow once a second.
func (t *Table) Sweep(now int64, budget int, j Judge) int {
	removed := 0
	for ; budget > 0 && t.used > 0; budget-- {
		if t.cursor >= t.used {
			t.cursor = 0
		}
		f := t.flow(t.cursor)
		t.cursor++
		if f.state == StateNone {
			continue
		}
		expired := t.expired(f, now)
		if f.flags&flagOffload != 0 && t.off != nil && (expired || t.mayHaveClosed(f, now)) {
			// Its LastSeen and its state are the engine's, from before
			// the fast path had it.
			f.peeked = now
			t.off.Refresh(f)
			expired = t.expired(f, now)
		}
		if expired {
			if j != nil {
				j.Expired(f)
			}
			t.unlink(f, now)
			t.nExpired.Add(1)
			removed++
			continue
		}
		if j != nil && !j.Keep(f) {
			t.unlink(f, now)
			t.nRemoved.Add(1)
			removed++
		}
	}
	return removed
}

// Slots returns how many slab slots the sweep covers (used at some time).
func (t *Table) Slots() int { return int(t.used) }

// Range calls fn for every flow, for a state hand-off with the worker
// stopped.
func (t *Table) Range(fn func(f *Flow)) {
	for i := uint32(0); i < t.used; i++ {
		if f := t.flow(i); f.state != StateNone {
			fn(f)
		}
	}
}

// Len returns the number of flows. Safe from any goroutine.
func (t *Table) Len() int { return int(t.count.Load()) }

// HalfOpen returns the number of flows whose handshake with the backend is
// unfinished. Safe from any goroutine.
func (t *Table) HalfOpen() int { return int(t.halfOpen.Load()) }

// InState returns the flows in state s. Safe from any goroutine.
func (t *Table) InState(s State) int64 {
	if s >= numStates {
		return 0
	}
	return t.states[s].Load()
}

// States lists every state but StateNone, for metrics by state.
func States() []State {
	var out []State
	for s := StateSynSent; s < numStates; s++ {
		out = append(out, s)
	}
	return out
}

// Live returns the flows toward backend id that are Live. Safe from any
// goroutine.
func (t *Table) Live(id uint32) int64 {
	if id >= MaxBackends {
		return 0
	}
	return t.live[id].Load()
}

// Flows returns the flows toward backend id in any state. Safe from any
// goroutine.
func (t *Table) Flows(id uint32) int64 {
	if id >= MaxBackends {
		return 0
	}
	return t.flows[id].Load()
}

// Stats returns the table's cumulative counters. Safe from any goroutine.
func (t *Table) Stats() Stats {
	return Stats{
		Created:        t.nCreated.Load(),
		Expired:        t.nExpired.Load(),
		Removed:        t.nRemoved.Load(),
		RefusedFull:    t.nRefusedFull.Load(),
		RefusedClient:  t.nRefusedClient.Load(),
		NATExhausted:   t.nNATExhausted.Load(),
		NATQuietReused: t.nQuietUse.Load(),
	}
}

// Add returns the sum of s and o.
func (s Stats) Add(o Stats) Stats {
	return Stats{
		Created: s.Created + o.Created, Expired: s.Expired + o.Expired, Removed: s.Removed + o.Removed,
		RefusedFull: s.RefusedFull + o.RefusedFull, RefusedClient: s.RefusedClient + o.RefusedClient,
		NATExhausted: s.NATExhausted + o.NATExhausted, NATQuietReused: s.NATQuietReused + o.NATQuietReused,
	}
}

// FreeNATPorts returns how many of this worker's NAT ports toward backend
// are free (including those in quiet time).
func (t *Table) FreeNATPorts(backend Endpoint) int {
	if p := t.ports[backend]; p != nil {
		return p.n
	}
	return len(newNATPorts(t.natFirst, t.natLast, t.worker, t.workers).port)
}
