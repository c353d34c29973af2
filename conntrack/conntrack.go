// Package conntrack is rawlb's flow table for full NAT.
//
// A client C connects to the balancer's VIP. The engine picks backend B and
// calls Create, which allocates a NAT port N unique toward B; the engine then
// sends C's packets to B as coming from the balancer's address and port N.
// Packets from C find their flow by ClientKey, replies from B by BackendKey
// (B's address, B's port, N).
//
// The table knows nothing about sockets or packet parsing. Several packet
// workers call LookupClient, LookupBackend and Observe at once: lookups take a
// read lock on one shard of one index, Observe touches only the flow's
// atomics, and none of them allocates. Create, Remove and Sweep are the slow
// paths that take write locks.
//
// Lock order, for anyone adding a path that holds more than one lock: forward
// shard, then reverse shard, then a backend's NAT port allocator. No path
// takes two shards of the same index.
package conntrack

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
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
	DefaultShards             = 64
)

// maxShards bounds Config.Shards; beyond it shards only cost memory.
const maxShards = 1 << 16

// Config configures a Table. Zero fields take the defaults above.
type Config struct {
	// Backends are the servers behind the VIP; Create takes an index into it.
	// They must be distinct: two entries for one server would share reverse
	// keys while allocating NAT ports independently.
	Backends []Endpoint

	// NATPortFirst and NATPortLast bound the NAT ports, inclusive (default
	// 40000-59999 when both are zero). Keep the range out of the kernel's
	// ip_local_port_range so local sockets never collide with NAT flows.
	NATPortFirst, NATPortLast uint16

	// PortQuiet is how long a freed NAT port is kept from being handed out
	// again toward the same backend (the backend's TIME_WAIT), unless nothing
	// else is free.
	PortQuiet time.Duration

	// HalfOpenTimeout is the idle timeout in StateSynSent.
	HalfOpenTimeout time.Duration

	// EstablishedTimeout is the idle timeout in StateEstablished and
	// StateFinWait (a half-close is legal and can last).
	EstablishedTimeout time.Duration

	// ClosingTimeout is the idle timeout in StateClosing and StateClosed,
	// long enough for the last ACKs and retransmitted FINs to get through.
	ClosingTimeout time.Duration

	// MaxFlows caps the table; beyond it Create fails with ErrTableFull.
	MaxFlows int

	// Shards is the number of lock shards of each index, rounded up to a
	// power of two.
	Shards int

	// Clock returns monotonic nanoseconds. The default counts from New.
	// Every time the table takes or returns (now, LastSeen) is on this clock.
	Clock func() int64
}

// Sentinel errors of Create.
var (
	ErrTableFull = errors.New("conntrack: flow table full (Config.MaxFlows reached): " +
		"new connections are refused until flows close or expire")
	ErrNATPortsExhausted = errors.New("conntrack: no free NAT port toward this backend: " +
		"widen Config.NATPortFirst..NATPortLast or add backends")
)

// Stats are cumulative counters of a Table.
type Stats struct {
	Created        uint64 // flows inserted by Create
	Expired        uint64 // flows removed by Sweep
	Removed        uint64 // flows removed by Remove
	RefusedFull    uint64 // Create calls that failed with ErrTableFull
	NATExhausted   uint64 // Create calls that failed with ErrNATPortsExhausted
	NATQuietReused uint64 // NAT ports handed out while still in PortQuiet, because no other port was free
}

// cacheLine is the assumed size of a cache line, for padding hot shared data.
const cacheLine = 64

type fwdShard struct {
	mu sync.RWMutex
	m  map[ClientKey]*Flow
	_  [cacheLine - unsafe.Sizeof(sync.RWMutex{}) - unsafe.Sizeof(map[int]int(nil))]byte
}

type revShard struct {
	mu sync.RWMutex
	m  map[BackendKey]*Flow
	_  [cacheLine - unsafe.Sizeof(sync.RWMutex{}) - unsafe.Sizeof(map[int]int(nil))]byte
}

// liveCount is padded so that workers creating flows toward different
// backends do not bounce one cache line between cores.
type liveCount struct {
	n atomic.Int64
	_ [cacheLine - 8]byte
}

// Table is the flow table. Its methods are safe for concurrent use.
type Table struct {
	backends []Endpoint
	clock    func() int64

	quietNs       int64
	halfOpenNs    int64
	establishedNs int64
	closingNs     int64
	maxFlows      int64

	shardMask uint64
	seed      uint64 // per-table hash seed, so clients cannot aim at one shard
	fwd       []fwdShard
	rev       []revShard

	ports []*natPorts // per backend
	live  []liveCount // per backend
	count atomic.Int64

	nCreated, nExpired, nRemoved           atomic.Uint64
	nRefusedFull, nNATExhausted, nQuietUse atomic.Uint64

	sweepMu  sync.Mutex
	sweepBuf []*Flow // scratch for Sweep, kept to avoid reallocating each tick
}

// New validates cfg, fills in defaults and returns an empty table.
func New(cfg Config) (*Table, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("conntrack: Config.Backends is empty: at least one backend is needed")
	}
	seen := make(map[Endpoint]int, len(cfg.Backends))
	for i, b := range cfg.Backends {
		if b.IP == [4]byte{} || b.Port == 0 {
			return nil, fmt.Errorf("conntrack: Config.Backends[%d] = %v: backend needs a non-zero IP and port", i, b)
		}
		if j, dup := seen[b]; dup {
			return nil, fmt.Errorf("conntrack: Config.Backends[%d] and [%d] are both %v: "+
				"backends must be distinct, or their NAT ports would collide", j, i, b)
		}
		seen[b] = i
	}

	first, last := cfg.NATPortFirst, cfg.NATPortLast
	switch {
	case first == 0 && last == 0:
		first, last = DefaultNATPortFirst, DefaultNATPortLast
	case first == 0 || last == 0:
		return nil, fmt.Errorf("conntrack: NAT port range %d-%d: set both ends to non-zero ports, or both to zero for the default %d-%d",
			first, last, DefaultNATPortFirst, DefaultNATPortLast)
	case first > last:
		return nil, fmt.Errorf("conntrack: NAT port range %d-%d: NATPortFirst must not exceed NATPortLast", first, last)
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

	switch {
	case cfg.MaxFlows < 0:
		return nil, fmt.Errorf("conntrack: Config.MaxFlows = %d: must not be negative (zero means the default %d)", cfg.MaxFlows, DefaultMaxFlows)
	case cfg.MaxFlows == 0:
		cfg.MaxFlows = DefaultMaxFlows
	}
	switch {
	case cfg.Shards < 0 || cfg.Shards > maxShards:
		return nil, fmt.Errorf("conntrack: Config.Shards = %d: must be between 1 and %d (zero means the default %d)", cfg.Shards, maxShards, DefaultShards)
	case cfg.Shards == 0:
		cfg.Shards = DefaultShards
	}
	shards := 1 << bits.Len(uint(cfg.Shards-1)) // next power of two

	if cfg.Clock == nil {
		start := time.Now()
		// time.Since uses the monotonic reading taken by time.Now, so the
		// table's clock does not jump with the wall clock.
		cfg.Clock = func() int64 { return int64(time.Since(start)) }
	}

	t := &Table{
		backends:      append([]Endpoint(nil), cfg.Backends...),
		clock:         cfg.Clock,
		quietNs:       int64(cfg.PortQuiet),
		halfOpenNs:    int64(cfg.HalfOpenTimeout),
		establishedNs: int64(cfg.EstablishedTimeout),
		closingNs:     int64(cfg.ClosingTimeout),
		maxFlows:      int64(cfg.MaxFlows),
		shardMask:     uint64(shards - 1),
		seed:          rand.Uint64(),
		fwd:           make([]fwdShard, shards),
		rev:           make([]revShard, shards),
		ports:         make([]*natPorts, len(cfg.Backends)),
		live:          make([]liveCount, len(cfg.Backends)),
	}
	for i := range t.fwd {
		t.fwd[i].m = make(map[ClientKey]*Flow)
		t.rev[i].m = make(map[BackendKey]*Flow)
	}
	for i := range t.ports {
		t.ports[i] = newNATPorts(first, last)
	}
	return t, nil
}

// mix is the splitmix64 finalizer: cheap, allocation-free, and good enough to
// spread keys that differ in a few low bits (client ports) over the shards.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func ip32(ip [4]byte) uint64 {
	return uint64(ip[0])<<24 | uint64(ip[1])<<16 | uint64(ip[2])<<8 | uint64(ip[3])
}

func (t *Table) fwdShard(k ClientKey) *fwdShard {
	a := ip32(k.Client.IP)<<32 | ip32(k.VIP.IP)
	b := uint64(k.Client.Port)<<16 | uint64(k.VIP.Port)
	return &t.fwd[mix(a^mix(b^t.seed))&t.shardMask]
}

func (t *Table) revShard(k BackendKey) *revShard {
	a := ip32(k.Backend.IP)<<32 | uint64(k.Backend.Port)<<16 | uint64(k.NATPort)
	return &t.rev[mix(a^t.seed)&t.shardMask]
}

// Now returns the table's clock.
func (t *Table) Now() int64 { return t.clock() }

// LookupClient returns the flow of a packet from a client, or nil.
func (t *Table) LookupClient(k ClientKey) *Flow {
	s := t.fwdShard(k)
	s.mu.RLock()
	f := s.m[k]
	s.mu.RUnlock()
	return f
}

// LookupBackend returns the flow of a reply from a backend, or nil.
func (t *Table) LookupBackend(k BackendKey) *Flow {
	s := t.revShard(k)
	s.mu.RLock()
	f := s.m[k]
	s.mu.RUnlock()
	return f
}

// seqGap is how far beyond the end of a port's previous flow a shifted
// initial sequence number lands: any distance in (0, 2^31) satisfies the
// TIME_WAIT check; 2^16 clears a last window of data still in flight, as
// Linux's own choice for a SYN it accepts in TIME_WAIT (tw_snd_nxt + 65537)
// does.
const seqGap = 1 << 16

// SYN is what Create needs to know of the client's SYN.
type SYN struct {
	Seq   uint32 // the client's initial sequence number
	TSval uint32 // the timestamp option's TSval, if HasTS
	HasTS bool   // the SYN carries a TCP timestamp option
}

// Create inserts a flow in StateSynSent for the client's SYN toward backend
// index backend, allocating a NAT port unique among the live flows toward
// that backend, and counts it in Live(backend). now becomes its LastSeen and
// is the time the NAT port's quiet period is measured against.
//
// If a flow with key k exists already (two workers raced on the same SYN, or
// a retransmitted SYN), Create returns that flow and a nil error, whatever its
// backend and state: the engine decides whether a Closing or Closed flow
// should be removed first. Otherwise it fails with ErrTableFull or
// ErrNATPortsExhausted, which it counts in Stats.
//
// Create sets the flow's TSOffset and SeqOffset so that the backend, which
// may still hold the NAT port's previous connection in TIME_WAIT, accepts
// the new SYN. Why: once connections come faster than the NAT range over
// the backend's TIME_WAIT (20,000 ports / 60 s), a NAT port goes to a new
// client while the backend still holds the previous connection on the same
// 4-tuple in TIME_WAIT. Linux (tcp_timewait_state_process) accepts a SYN on
// such a 4-tuple only if its timestamp is newer than the old connection's
// (PAWS, RFC 7323 section 5) or, without timestamps, if its sequence number
// is beyond the old connection's last one (RFC 1122 section 4.2.2.13).
// Linux gives every connection its own random timestamp offset and initial
// sequence number, so an unrelated client's SYN is refused with a stale ACK
// about half the time, and the client waits a second to retry.
//
// So when the SYN has a timestamp and the port's previous flow had one,
// TSOffset puts the new TSval one above the port's last. Otherwise, when
// the SYN's sequence number is not beyond the end of the previous flow's
// last segment, SeqOffset puts it 2^16 beyond. The engine adds the offsets
// toward the backend and takes them off what the backend echoes (TSecr,
// the acknowledgment number, SACK edges), so the client sees its own values.
func (t *Table) Create(k ClientKey, backend int, clientMAC [6]byte, now int64, syn SYN) (*Flow, error) {
	if uint(backend) >= uint(len(t.backends)) {
		return nil, fmt.Errorf("conntrack: Create toward backend %d: only %d backends are configured", backend, len(t.backends))
	}
	// No read-locked lookup first: the engine calls Create after LookupClient
	// missed, so the key is almost always new. The flow is allocated before
	// taking the write lock, to keep the lock short; it is wasted only when
	// another worker won the race on the same SYN.
	s := t.fwdShard(k)
	nf := &Flow{Key: k, Backend: backend, BackendAddr: t.backends[backend], ClientMAC: clientMAC}
	nf.word.Store(uint32(StateSynSent) | liveBit)
	nf.lastSeen.Store(now)

	s.mu.Lock()
	if f := s.m[k]; f != nil {
		s.mu.Unlock()
		return f, nil
	}
	// Reserve first and check after: creates on different shards run in
	// parallel, and a load-then-add would let them overshoot MaxFlows.
	if t.count.Add(1) > t.maxFlows {
		t.count.Add(-1)
		s.mu.Unlock()
		t.nRefusedFull.Add(1)
		return nil, ErrTableFull
	}
	port, last, quiet, ok := t.ports[backend].get(now, t.quietNs)
	if !ok {
		t.count.Add(-1)
		s.mu.Unlock()
		t.nNATExhausted.Add(1)
		return nil, ErrNATPortsExhausted
	}
	nf.NATPort = port
	nf.setOffsets(syn, last)
	// Count the flow before publishing it: once it is in the maps, an RST seen
	// by another worker may take it out of Live again.
	t.live[backend].n.Add(1)
	s.m[k] = nf
	rk := nf.ReverseKey()
	rs := t.revShard(rk)
	rs.mu.Lock()
	rs.m[rk] = nf
	rs.mu.Unlock()
	s.mu.Unlock()

	t.nCreated.Add(1)
	if quiet {
		t.nQuietUse.Add(1)
	}
	return nf, nil
}

// Observe records a packet of flow f from direction d: tcpFlags is the raw
// TCP flag byte, n the IP packet length. It updates the counters, LastSeen
// and the state:
//
//   - SynSent -> Established on SYN+ACK from the backend.
//   - Established -> FinWait on a FIN from either side; FinWait -> Closing
//     once both sides have sent a FIN.
//   - Any state -> Closed on RST from either side.
//
// Other packets (ACKs, data, retransmissions) leave the state as it is; a FIN
// before the handshake completes and anything after Closed are ignored. The
// flow leaves Live when it enters Closing or Closed.
//
// Observe takes no lock and does not allocate. It may be called on a flow that
// was removed meanwhile; the update is then lost with the flow.
func (t *Table) Observe(f *Flow, d Direction, tcpFlags uint8, n int, now int64) {
	d &= 1 // keep a bad Direction from panicking the packet path
	f.packets[d].Add(1)
	f.bytes[d].Add(uint64(n))
	// Skip the store when the clock has not moved (a coarse clock, or one
	// reading per batch) and keep a worker that read the clock earlier from
	// moving LastSeen back. The check is not atomic with the store, so two
	// workers can still race it; that costs the flow nanoseconds of its
	// timeout, not worth a CAS loop per packet.
	if f.lastSeen.Load() < now {
		f.lastSeen.Store(now)
	}
	if tcpFlags&(FlagSYN|FlagFIN|FlagRST) == 0 {
		return // ACK and data never change the state
	}
	for {
		old := f.word.Load()
		nw := next(old, d, tcpFlags)
		if nw == old {
			return
		}
		if f.word.CompareAndSwap(old, nw) {
			if old&liveBit != 0 && nw&liveBit == 0 {
				t.live[f.Backend].n.Add(-1)
			}
			return
		}
	}
}

// unlive takes f out of Live unless a state transition or an earlier removal
// already did.
func (t *Table) unlive(f *Flow) {
	for {
		old := f.word.Load()
		if old&liveBit == 0 {
			return
		}
		if f.word.CompareAndSwap(old, old&^liveBit) {
			t.live[f.Backend].n.Add(-1)
			return
		}
	}
}

// unlinkLocked deletes f from the reverse index and from the forward shard s,
// whose write lock the caller holds. It reports false if f is no longer in the
// table (a concurrent Remove or Sweep won, or k now names a newer flow).
func (t *Table) unlinkLocked(s *fwdShard, f *Flow) bool {
	if s.m[f.Key] != f {
		return false
	}
	delete(s.m, f.Key)
	rk := f.ReverseKey()
	rs := t.revShard(rk)
	rs.mu.Lock()
	if rs.m[rk] == f {
		delete(rs.m, rk)
	}
	rs.mu.Unlock()
	return true
}

// release finishes removing an unlinked flow. Its NAT port goes back only now
// that no index can lead to the flow, so the port cannot be handed out while a
// reply could still find the old flow.
func (t *Table) release(f *Flow, now int64) {
	t.unlive(f)
	t.ports[f.Backend].put(f.NATPort, now, portMemory{ts: f.tsLast.Load(), seqEnd: f.seqEnd.Load()})
	t.count.Add(-1)
}

// Remove deletes f now, takes it out of Live if it still counted, and frees
// its NAT port into quiet time. The engine uses it when a new SYN arrives for
// a key whose flow is Closing or Closed. Removing a flow that is already gone
// does nothing.
func (t *Table) Remove(f *Flow) {
	s := t.fwdShard(f.Key)
	s.mu.Lock()
	ok := t.unlinkLocked(s, f)
	s.mu.Unlock()
	if ok {
		t.release(f, t.clock())
		t.nRemoved.Add(1)
	}
}

// timeout returns how long a flow in state word w may stay idle.
func (t *Table) timeout(w uint32) int64 {
	switch State(w & stateMask) {
	case StateSynSent:
		return t.halfOpenNs
	case StateEstablished, StateFinWait:
		return t.establishedNs
	default:
		return t.closingNs
	}
}

// expired reports whether f has been idle for longer than its state's
// timeout at now: a flow lives through its deadline (LastSeen + timeout) and
// expires one nanosecond after it.
func (t *Table) expired(f *Flow, now int64) bool {
	return now-f.lastSeen.Load() > t.timeout(f.word.Load())
}

// sweepYield is how many flows Sweep examines under one hold of a shard's
// read lock.
const sweepYield = 1024

// sweepBatch bounds how many flows Sweep removes under one hold of a shard's
// write lock, so lookups on that shard wait for at most one batch.
const sweepBatch = 256

// Sweep removes every flow whose timeout has passed at now, frees their NAT
// ports into quiet time and returns how many it removed. It is for a ticker,
// not the packet path. Shards are handled one at a time: each is scanned
// under its read lock, released every sweepYield flows, and pruned under its
// write lock in batches of sweepBatch, so lookups and Creates on a shard wait
// for a slice of it at most, never for the whole shard. Concurrent Sweeps run one after the other.
func (t *Table) Sweep(now int64) int {
	t.sweepMu.Lock()
	defer t.sweepMu.Unlock()
	total := 0
	for i := range t.fwd {
		s := &t.fwd[i]
		cand := t.sweepBuf[:0]
		seen := 0
		s.mu.RLock()
		for _, f := range s.m {
			if t.expired(f, now) {
				cand = append(cand, f)
			}
			if seen++; seen%sweepYield == 0 {
				// Let a waiting writer in. Go's RWMutex holds new readers
				// back while a writer waits, so one long read hold over a
				// big shard would stall the shard's lookups as well as its
				// Creates. Resuming the range after others changed the map
				// is fine: the iteration then behaves as if this loop had
				// made the changes itself (entries removed meanwhile are not
				// produced, new ones may or may not be).
				s.mu.RUnlock()
				s.mu.RLock()
			}
		}
		s.mu.RUnlock()
		for start := 0; start < len(cand); start += sweepBatch {
			batch := cand[start:min(start+sweepBatch, len(cand))]
			s.mu.Lock()
			for j, f := range batch {
				// Check again: a packet may have refreshed the flow, or a
				// Remove may have taken it, since the scan.
				if !t.expired(f, now) || !t.unlinkLocked(s, f) {
					batch[j] = nil
				}
			}
			s.mu.Unlock()
			for j, f := range batch {
				if f != nil {
					t.release(f, now)
					batch[j] = nil // let the GC have it
					total++
				}
			}
		}
		t.sweepBuf = cand[:0]
	}
	t.nExpired.Add(uint64(total))
	return total
}

// Live returns how many flows toward backend have not yet reached Closing or
// Closed nor been removed, for least-connections scheduling. It returns 0 for
// an index out of range.
func (t *Table) Live(backend int) int {
	if uint(backend) >= uint(len(t.live)) {
		return 0
	}
	return int(t.live[backend].n.Load())
}

// FreeNATPorts returns how many NAT ports toward backend are free (including
// those in quiet time), or 0 for an index out of range.
func (t *Table) FreeNATPorts(backend int) int {
	if uint(backend) >= uint(len(t.ports)) {
		return 0
	}
	return t.ports[backend].free()
}

// Len returns the number of flows in the table.
func (t *Table) Len() int { return int(t.count.Load()) }

// Stats returns the table's cumulative counters.
func (t *Table) Stats() Stats {
	return Stats{
		Created:        t.nCreated.Load(),
		Expired:        t.nExpired.Load(),
		Removed:        t.nRemoved.Load(),
		RefusedFull:    t.nRefusedFull.Load(),
		NATExhausted:   t.nNATExhausted.Load(),
		NATQuietReused: t.nQuietUse.Load(),
	}
}
