// Package fastpath forwards the segments of a flow inside the kernel, with
// a tc (tcx) ingress program, instead of through the packet ring: no copy
// into the ring, no wake-up of a worker, no copy out again into sendmmsg,
// and the receiving host's stack runs on the CPU the segment arrived on,
// as with the kernel's own NAT.
//
// The engine stays in charge. It schedules each new flow and decides which
// flows the program gets: a flow with its SYN (or SYN-ACK) queued, an
// established one. The program forwards the backend's SYN-ACK, the
// client's ACK that completes the handshake (Established flags it in a
// shared array), the data, both FINs and the ACK that closes the flow,
// with conntrack's transitions; at that close it deletes the flow's keys
// and tells the flow's worker through its ring buffer (Events). It hands a
// flow back, marking it evicted under the flow's lock, at the first
// segment it does not forward exactly as the engine would: a SYN or RST,
// options other than those of its usual layouts, or a sequence or
// acknowledgment number outside the windows. That segment and every later
// one then go to the ring in order, and the engine takes the flow's window
// state back before it tracks them (Take). The window check is conntrack's
// own (conntrack/tcp.go, after the kernel's tcp_in_window), so a flow is
// tracked as strictly in the kernel as in the engine; the kernel's
// flowtable offload (nf_flow_table) does no window check at all.
//
// The segments the program forwards never reach the packet sockets: those
// must be bound to ETH_P_IP, whose handlers run after tc ingress, not to
// ETH_P_ALL, whose taps run before it (__netif_receive_skb_core).
package fastpath

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The program, built from bpf/fastpath.c by `make fastpath` (clang -target
// bpf); the object is committed so that building rawlb needs no clang.
//
//go:embed fastpath_bpfel.o
var object []byte

// Key is a segment's addresses and ports as it arrives, in network order:
// the key of one direction of an offloaded flow.
type Key struct {
	Src, Dst         [4]byte
	SrcPort, DstPort [2]byte
}

// MakeKey returns the key of segments from src:sport to dst:dport.
func MakeKey(src [4]byte, sport uint16, dst [4]byte, dport uint16) Key {
	return Key{Src: src, Dst: dst, SrcPort: [2]byte{byte(sport >> 8), byte(sport)}, DstPort: [2]byte{byte(dport >> 8), byte(dport)}}
}

// ref is fp_ref: which flow a key belongs to, and from which side.
type ref struct {
	ID, Dir uint32
}

// Peer is one side's window state, conntrack's peer (fp_peer).
type Peer struct {
	End, MaxEnd, MaxWin, MaxAck uint32
	Win                         uint16
	Scale, Flags                uint8
}

// Dir says how the segments of one direction are rewritten (fp_dir): the
// new addresses and ports, what is added to the sequence and
// acknowledgment numbers and to the timestamps, the window scaling, and
// where the frame goes.
type Dir struct {
	Src, Dst                           [4]byte
	SrcPort, DstPort                   [2]byte
	SeqAdd, AckAdd, TSvalAdd, TSecrAdd uint32
	Ifindex                            uint32
	DstMAC, SrcMAC                     [6]byte
	WinShift                           int8
	_                                  [3]byte
}

// Flow is an offloaded flow (fp_flow), indexed by direction: 0 from the
// client, 1 from the backend.
type Flow struct {
	lock    uint32 // struct bpf_spin_lock: the kernel's; never copied in or out
	Evicted uint32 // why the program gave the flow back (an Evict* value); 0 while it forwards
	Peers   [2]Peer
	Dir     [2]Dir
	// LastNs is the CLOCK_MONOTONIC time of the last segment that moved
	// the window state.
	LastNs         uint64
	Packets, Bytes [2]uint64 // forwarded by the program
	// TSLast and SeqEnd are the last TSval and the furthest sequence end
	// sent toward the backend, after the offsets (conntrack's
	// NoteToBackend); TSLast only if Note has NoteTS.
	TSLast, SeqEnd uint32
	Note           uint32
	// Backend is the engine's backend id: Live sums the counters by it.
	Backend uint32
	// State is the flow's conntrack.State: SynSent, SynRecv or
	// Established when it goes, SynRecv after the SYN-ACK, Established
	// after the handshake's ACK, FinWait, CloseWait or LastAck after the
	// FINs, TimeWait after the ACK that closes it.
	State uint32
	// Early is, for a flow given in SynSent or SynRecv, 1 + the slot whose flag
	// (Established) the program sets when the handshake completes; else 0.
	Early uint32
	// Gen is the engine's number for this offload, which the program
	// copies into the Event that says it closed the flow: an event about
	// an earlier offload of the same flow id is told apart.
	Gen uint32
	_   uint32
}

// Event is fp_event: the program forwarded the ACK that takes flow ID to
// TimeWait, deleted its keys, and tells its worker how the flow ended. The
// flow's entry stays in the map until the engine deletes it (DeleteFlows).
type Event struct {
	ID, Gen        uint32
	State, Note    uint32
	TSLast, SeqEnd uint32
	Peers          [2]Peer
	LastNs         uint64
	Packets, Bytes [2]uint64
}

// NoteTS is Flow.Note's bit for a TSLast that is set.
const NoteTS = 1

// Why a flow was given back (Flow.Evicted).
const (
	EvictFlags   = 1 // a SYN or RST, or a segment without ACK
	EvictOptions = 2 // options the program does not read, or IP options
	EvictWindow  = 3 // outside the windows: the engine decides
	EvictClose   = 4 // the flow closed: the ACK in LastAck, which takes it to TimeWait
	NumEvict     = 5 // one more than the highest Evict* value
)

// Counters of the program, summed over CPUs (fp_stats).
const (
	StatPackets = iota
	StatBytes
	StatEvictFlags
	StatEvictOptions
	StatEvictWindow
	StatPassed      // segments of a flow already given back, passed to the engine
	StatIgnored     // forwarded without changing the state (conntrack's "ignore")
	StatEvictClose  // flows given back at the ACK that ends them
	StatEstablished // handshakes of flows given in SynRecv completed by the program
	StatClosed      // flows the program took to TimeWait and told the engine of (Event)
	StatEventsLost  // closes the program could not tell (the worker's ring was full): the ACK went to the engine
	NumStats
)

// Config sizes the maps.
type Config struct {
	// Flows is how many flows the program may hold at once; an offload
	// beyond it fails with ErrFull and the flow stays with the engine.
	Flows int
	// Slots is how many flows may be given in SynRecv at once (Flow.Early,
	// Established); 0 for none.
	Slots int
	// Workers is how many event rings to make (Events), one per worker:
	// the top 8 bits of a flow id say whose a flow is.
	Workers int
	// EventRing is each event ring's size in bytes, a power of 2 and a
	// multiple of the page size; 0 for DefaultEventRing.
	EventRing int
}

// DefaultEventRing is the size of a worker's event ring: 2,500 events
// (104 bytes and an 8-byte header each), which a worker that reads it
// after every batch and at least every 50 ms does not fill below 50,000
// closes a second.
const DefaultEventRing = 256 << 10

// ErrFull is returned by InsertBatch when the program holds Config.Flows flows.
var ErrFull = errors.New("fastpath: flow map full")

// Path is the loaded program and its maps. InsertBatch, Take, Peek and
// Remove may be called from any goroutine, each flow from one at a time
// (a Batch from one at a time too); they allocate nothing.
type Path struct {
	coll               *ebpf.Collection
	prog               *ebpf.Program
	keys, flows, stats *ebpf.Map
	keysFD, flowsFD    uint32
	lateFD             uint32
	// est is fp_est, mapped: a uint64 flag per slot.
	est    []uint64
	estMap []byte
	events []*Events

	mu    sync.Mutex
	links map[int]link.Link
}

// Load loads the program and creates its maps. It needs CAP_BPF and
// CAP_NET_ADMIN (or CAP_SYS_ADMIN), and Linux 6.6 for tcx.
func Load(c Config) (*Path, error) {
	if c.Flows < 1 || c.Workers < 1 || c.Workers > 256 {
		return nil, fmt.Errorf("fastpath: Config.Flows = %d, Workers = %d: need at least 1 of each, at most 256 workers", c.Flows, c.Workers)
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(object))
	if err != nil {
		return nil, fmt.Errorf("fastpath: reading the program: %w", err)
	}
	spec.Maps["fp_flows"].MaxEntries = uint32(c.Flows)
	spec.Maps["fp_keys"].MaxEntries = uint32(2 * c.Flows)
	spec.Maps["fp_est"].MaxEntries = uint32(max(c.Slots, 1))
	spec.Maps["fp_events"].MaxEntries = uint32(c.Workers)
	if c.EventRing != 0 {
		if c.EventRing&(c.EventRing-1) != 0 || c.EventRing%unix.Getpagesize() != 0 {
			return nil, fmt.Errorf("fastpath: Config.EventRing = %d: want a power of 2 and a multiple of the page size", c.EventRing)
		}
		spec.Maps["fp_events"].InnerMap.MaxEntries = uint32(c.EventRing)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("fastpath: the kernel refused the program: %+v", ve)
		}
		return nil, fmt.Errorf("fastpath: loading the program (needs CAP_BPF and CAP_NET_ADMIN): %w", err)
	}
	p := &Path{coll: coll, prog: coll.Programs["rawlb_fastpath"], keys: coll.Maps["fp_keys"],
		flows: coll.Maps["fp_flows"], stats: coll.Maps["fp_stats"], links: map[int]link.Link{}}
	p.keysFD, p.flowsFD = uint32(p.keys.FD()), uint32(p.flows.FD())
	p.lateFD = uint32(coll.Programs["rawlb_late"].FD())
	// The flags as the engine's own memory: an array map's values start at
	// offset 0 of its mapping, each rounded up to 8 bytes.
	size := (8*max(c.Slots, 1) + unix.Getpagesize() - 1) &^ (unix.Getpagesize() - 1)
	m, err := unix.Mmap(coll.Maps["fp_est"].FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("fastpath: mapping the handshake flags: %w", err)
	}
	p.estMap = m
	p.est = unsafe.Slice((*uint64)(unsafe.Pointer(&m[0])), c.Slots)
	for w := range c.Workers {
		e, err := newEvents(spec.Maps["fp_events"].InnerMap, coll.Maps["fp_events"], w)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.events = append(p.events, e)
	}
	return p, nil
}

// Events returns worker w's event ring.
func (p *Path) Events(w int) *Events { return p.events[w] }

// ClearEstablished clears slot's flag, before a flow is given with it.
func (p *Path) ClearEstablished(slot int) { atomic.StoreUint64(&p.est[slot], 0) }

// Established reports whether the program completed the handshake of the
// flow given with slot. It reads shared memory: no system call.
func (p *Path) Established(slot int) bool { return atomic.LoadUint64(&p.est[slot]) != 0 }

// Attach puts the program on ifindex's ingress, after any program already
// there (tcx keeps each link's own place).
func (p *Path) Attach(ifindex int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.links[ifindex]; ok {
		return nil
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p.prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("fastpath: attaching to interface %d (tcx needs Linux 6.6): %w", ifindex, err)
	}
	p.links[ifindex] = l
	return nil
}

// Detach takes the program off every interface. When it returns, no
// instance of the program runs any more (the kernel waits for an RCU grace
// period when a tcx link goes), so the flows in the map are still.
func (p *Path) Detach() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for i, l := range p.links {
		errs = append(errs, l.Close())
		delete(p.links, i)
	}
	return errors.Join(errs...)
}

// Close detaches the program and frees the maps.
func (p *Path) Close() error {
	err := p.Detach()
	p.coll.Close()
	if p.estMap != nil {
		_ = unix.Munmap(p.estMap)
		p.estMap, p.est = nil, nil
	}
	for _, e := range p.events {
		e.close()
	}
	p.events = nil
	return err
}

// bpf(2) commands and flags (include/uapi/linux/bpf.h).
const (
	cmdLookup      = 1
	cmdUpdate      = 2
	cmdDelete      = 3
	cmdUpdateBatch = 26
	cmdDeleteBatch = 27
	flagLock       = 4 // BPF_F_LOCK: copy the value under its spin lock
)

// batchAttr is union bpf_attr for the BPF_MAP_*_BATCH commands.
type batchAttr struct {
	inBatch, outBatch, keys, values uint64
	count, fd                       uint32
	elemFlags, flags                uint64
}

// batch runs a batch command on n keys (and values), and returns how many
// elements it did.
func batch(cmd uintptr, fd uint32, keys, values unsafe.Pointer, n uint32) (uint32, error) {
	a := batchAttr{keys: uint64(uintptr(keys)), values: uint64(uintptr(values)), count: n, fd: fd}
	_, _, e := unix.Syscall(unix.SYS_BPF, cmd, uintptr(unsafe.Pointer(&a)), unsafe.Sizeof(a))
	if e != 0 {
		return a.count, e
	}
	return a.count, nil
}

// elemAttr is union bpf_attr for the map element commands.
type elemAttr struct {
	fd    uint32
	_     uint32
	key   uint64
	value uint64
	flags uint64
}

// elem runs one map element command. It is a plain system call rather than
// cilium/ebpf's Map methods so that the engine's worker, which calls it,
// allocates nothing.
func elem(cmd uintptr, fd uint32, key, value unsafe.Pointer, flags uint64) error {
	a := elemAttr{fd: fd, key: uint64(uintptr(key)), value: uint64(uintptr(value)), flags: flags}
	_, _, e := unix.Syscall(unix.SYS_BPF, cmd, uintptr(unsafe.Pointer(&a)), unsafe.Sizeof(a))
	if e != 0 {
		return e
	}
	return nil
}

// Batch is flows to give the program in one InsertBatch: their ids,
// values and keys, laid out as the batch system calls read them. A worker
// keeps one, fills it while it handles a batch of frames and inserts it
// before it sends them: two system calls for every flow of the batch
// instead of two for each (a conn load's batch has 4 to 5 new flows).
type Batch struct {
	ids   []uint32
	flows []Flow
	keys  []Key // 2 a flow, k[0] from the client and k[1] from the backend
	refs  []ref
	n     int
}

// NewBatch returns a batch of at most size flows.
func NewBatch(size int) *Batch {
	return &Batch{ids: make([]uint32, size), flows: make([]Flow, size), keys: make([]Key, 2*size), refs: make([]ref, 2*size)}
}

// Add appends flow id and returns where its value and its two keys go, to
// be filled before InsertBatch; nil, nil when the batch is full.
func (b *Batch) Add(id uint32) (*Flow, *[2]Key) {
	if b.n == len(b.ids) {
		return nil, nil
	}
	i := b.n
	b.n++
	b.ids[i] = id
	b.flows[i] = Flow{}
	return &b.flows[i], (*[2]Key)(b.keys[2*i : 2*i+2])
}

// Reset empties the batch.
func (b *Batch) Reset() { b.n = 0 }

// InsertBatch gives the program every flow of b, each found under the
// keys of its two directions (k[0] from the client, k[1] from the
// backend), and reports how many went: the first n, in order. When not all did, err says
// why (ErrFull: the program holds Config.Flows flows) and none of the
// others is left in the maps. b stays as it was until Reset.
func (p *Path) InsertBatch(b *Batch) (n int, err error) {
	n = b.n
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		b.flows[i].Evicted = 0
		b.refs[2*i] = ref{ID: b.ids[i], Dir: 0}
		b.refs[2*i+1] = ref{ID: b.ids[i], Dir: 1}
	}
	// The flows first, so that no key ever names a flow that is not there.
	// A batch update stops at its first failure and says how many it did
	// (generic_map_update_batch).
	done, ferr := batch(cmdUpdateBatch, p.flowsFD, unsafe.Pointer(&b.ids[0]), unsafe.Pointer(&b.flows[0]), uint32(n))
	if ferr != nil {
		n, err = int(done), batchErr("flows", ferr)
		if n == 0 {
			return 0, err
		}
	}
	kd, kerr := batch(cmdUpdateBatch, p.keysFD, unsafe.Pointer(&b.keys[0]), unsafe.Pointer(&b.refs[0]), uint32(2*n))
	if kerr == nil {
		return n, err
	}
	whole := int(kd) / 2
	if kd%2 == 1 {
		_ = elem(cmdDelete, p.keysFD, unsafe.Pointer(&b.keys[kd-1]), nil, 0) // one key of a flow that does not go
	}
	p.DeleteFlows(b.ids[whole:n])
	return whole, batchErr("keys", kerr)
}

// batchErr names what a batch insert failed on; E2BIG is a full map.
func batchErr(what string, err error) error {
	if err == unix.E2BIG {
		return ErrFull
	}
	return fmt.Errorf("fastpath: inserting a batch of %s: %w", what, err)
}

// DeleteFlows deletes the entries of flows the engine has read the Event
// of: one system call for them all. An id without an entry is skipped.
func (p *Path) DeleteFlows(ids []uint32) {
	for len(ids) > 0 {
		n, err := batch(cmdDeleteBatch, p.flowsFD, unsafe.Pointer(&ids[0]), nil, uint32(len(ids)))
		if err == nil {
			return
		}
		// The kernel stops at the first id it does not find (ENOENT),
		// having deleted n: skip that one and go on.
		ids = ids[min(int(n)+1, len(ids)):]
	}
}

// Take removes flow id from the program and returns it as it was at the
// end: first the keys, so that no new segment finds it, then the flow,
// read under its lock. A segment the program was forwarding as the keys
// went can still update the flow after the read; a flow the program
// evicted is still already (the engine takes evicted flows back when their
// next segment reaches it, in the ring, well after that).
func (p *Path) Take(id uint32, k *[2]Key, f *Flow) error {
	p.deleteKeys(k)
	err := p.Peek(id, f)
	_ = elem(cmdDelete, p.flowsFD, unsafe.Pointer(&id), nil, 0)
	return err
}

// Peek reads flow id under its lock, leaving it with the program.
func (p *Path) Peek(id uint32, f *Flow) error {
	if err := elem(cmdLookup, p.flowsFD, unsafe.Pointer(&id), unsafe.Pointer(f), flagLock); err != nil {
		return fmt.Errorf("fastpath: reading flow %d: %w", id, err)
	}
	return nil
}

// Remove deletes flow id and its keys, whatever state they are in.
func (p *Path) Remove(id uint32, k *[2]Key) {
	p.deleteKeys(k)
	_ = elem(cmdDelete, p.flowsFD, unsafe.Pointer(&id), nil, 0)
}

// deleteKeys deletes both directions' keys, so that no new segment finds
// their flow.
func (p *Path) deleteKeys(k *[2]Key) {
	for d := range k {
		_ = elem(cmdDelete, p.keysFD, unsafe.Pointer(&k[d]), nil, 0)
	}
}

// Stats returns the program's counters, summed over CPUs, indexed by the
// Stat* constants.
func (p *Path) Stats() ([NumStats]uint64, error) {
	var out [NumStats]uint64
	var per []uint64
	for i := uint32(0); i < NumStats; i++ {
		if err := p.stats.Lookup(i, &per); err != nil {
			return out, fmt.Errorf("fastpath: reading counter %d: %w", i, err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// Live calls fn with every flow the program holds now, for counters: its
// backend id and what it forwarded in each direction. For scrapes: it
// walks the whole map and allocates.
func (p *Path) Live(fn func(backend uint32, packets, bytes [2]uint64)) error {
	var id uint32
	// As bytes: cilium/ebpf's decoder refuses Flow's unexported lock.
	buf := make([]byte, unsafe.Sizeof(Flow{}))
	f := (*Flow)(unsafe.Pointer(&buf[0]))
	it := p.flows.Iterate()
	for it.Next(&id, &buf) {
		fn(f.Backend, f.Packets, f.Bytes)
	}
	return it.Err()
}

// Monotonic returns CLOCK_MONOTONIC in nanoseconds, the clock of
// Flow.LastNs.
func Monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// runAttr is union bpf_attr for BPF_PROG_TEST_RUN.
type runAttr struct {
	progFD, retval, sizeIn, sizeOut uint32
	dataIn, dataOut                 uint64
	repeat, duration                uint32
	ctxSizeIn, ctxSizeOut           uint32
	ctxIn, ctxOut                   uint64
	flags, cpu, batch               uint32
	_                               uint32
}

const (
	cmdTestRun  = 10
	actRedirect = 7 // TC_ACT_REDIRECT
)

// MaxHeaders is the longest header RunLate takes: Ethernet, and IPv4 and
// TCP with options.
const MaxHeaders = 14 + 60 + 60

// RunLate runs the program on a segment of an offloaded flow that reached
// the engine anyway, because it was already in the ring when the flow
// went: hdr is the frame's headers (Ethernet, IPv4, TCP with options),
// ipLen the whole IP packet's length. The program tracks it in the live
// maps and rewrites hdr in place as it would have rewritten the frame, and
// RunLate reports whether it forwarded it; the engine then sends the frame
// with these headers. The kernel runs the headers with the checksum as
// complete: for a frame whose checksum is partial, the engine sets the
// pseudo-header sum again.
func (p *Path) RunLate(hdr []byte, ipLen int) (bool, error) {
	if len(hdr) < 14 || len(hdr) > MaxHeaders || ipLen <= 0 {
		return false, fmt.Errorf("fastpath: RunLate of %d header bytes, IP length %d", len(hdr), ipLen)
	}
	// struct __sk_buff up to mark: len and pkt_type must be 0.
	ctx := [3]uint32{0, 0, uint32(ipLen)}
	a := runAttr{progFD: p.lateFD, sizeIn: uint32(len(hdr)), sizeOut: uint32(len(hdr)),
		dataIn: uint64(uintptr(unsafe.Pointer(&hdr[0]))), dataOut: uint64(uintptr(unsafe.Pointer(&hdr[0]))), repeat: 1,
		ctxSizeIn: uint32(unsafe.Sizeof(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx[0])))}
	_, _, e := unix.Syscall(unix.SYS_BPF, cmdTestRun, uintptr(unsafe.Pointer(&a)), unsafe.Sizeof(a))
	if e != 0 {
		return false, fmt.Errorf("fastpath: running the program: %w", e)
	}
	return a.retval == actRedirect, nil
}
