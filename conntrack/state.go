package conntrack

import (
	"errors"
	"fmt"
	"time"
)

// FlowState is a flow as it travels to another process: a successor after a
// restart or an upgrade, or one day a standby balancer. It names the backend
// by address, not by this process's id, and gives times as ages, not as
// this process's clock.
type FlowState struct {
	Client, VIP, Backend Endpoint
	NATPort              uint16
	ClientMAC            [6]byte
	LocalMAC             [6]byte
	ClientIf             int32 // an interface index: meaningful on the same host only
	State                State
	Proxied              bool
	Established          bool // the handshake completed at some time
	TSOff, SeqOff        uint32
	BTSOff, BSeqOff      uint32
	WinShift             int8
	Syn                  SYN
	Peers                [2]PeerState
	Created, Idle        time.Duration // ages at export
	TSLast, SeqEnd       uint32
	HasTS                bool
	Cookie, CookieTS     uint32
}

// PeerState is one side's window tracking state (see tcp.go).
type PeerState struct {
	End, MaxEnd, MaxWin, MaxAck uint32
	Win                         uint16
	Scale, Flags                uint8
}

// state returns p as it travels.
func (p peer) state() PeerState {
	return PeerState{End: p.end, MaxEnd: p.maxend, MaxWin: p.maxwin, MaxAck: p.maxack, Win: p.win, Scale: p.scale, Flags: p.flags}
}

// peer returns s as the tracker keeps it.
func (s PeerState) peer() peer {
	return peer{end: s.End, maxend: s.MaxEnd, maxwin: s.MaxWin, maxack: s.MaxAck, win: s.Win, scale: s.Scale, flags: s.Flags}
}

// PortState is what a NAT port remembers of its last flow toward a backend,
// and how long ago it was freed.
type PortState struct {
	Backend Endpoint
	Port    uint16
	TS      uint32
	SeqEnd  uint32
	HasTS   bool
	HasSeq  bool
	Freed   time.Duration // age; negative: never freed
}

// Export returns f as it travels to another process, with ages at now.
func (f *Flow) Export(now int64) FlowState {
	s := FlowState{
		Client: f.Key.Client, VIP: f.Key.VIP, Backend: f.BackendAddr, NATPort: f.NATPort,
		ClientMAC: f.ClientMAC, LocalMAC: f.LocalMAC, ClientIf: f.ClientIf, State: f.state, Established: f.flags&flagEstablished != 0, Proxied: f.flags&flagProxy != 0,
		TSOff: f.TSOff, SeqOff: f.SeqOff, BTSOff: f.BTSOff, BSeqOff: f.BSeqOff, WinShift: f.WinShift,
		Syn: f.Syn, Created: time.Duration(now - f.Created), Idle: time.Duration(now - f.LastSeen),
		TSLast: f.tsLast, SeqEnd: f.seqEnd, HasTS: f.flags&flagTS != 0, Cookie: f.Cookie, CookieTS: f.CookieTS,
	}
	for d, p := range f.peers {
		s.Peers[d] = p.state()
	}
	return s
}

// Owner returns the worker that owns a flow on natPort when there are
// workers workers: the one the fanout program sends its backend's segments
// to.
func Owner(natPort uint16, workers int) int { return int(natPort) % max(workers, 1) }

// ErrNotMine is returned by Import for a flow whose NAT port belongs to
// another worker's share.
var ErrNotMine = errors.New("conntrack: NAT port belongs to another worker")

// Import inserts a flow handed over by another process, toward backend id,
// with its ages taken back from now. It fails when the NAT port is not in
// this worker's share or is in use, or the flow's key is already here.
func (t *Table) Import(s FlowState, backendID uint32, now int64) (*Flow, error) {
	if backendID >= MaxBackends {
		return nil, fmt.Errorf("conntrack: backend id %d is beyond MaxBackends", backendID)
	}
	if s.State == StateNone || s.State >= numStates {
		return nil, fmt.Errorf("conntrack: flow %v in state %v cannot be imported", s.Client, s.State)
	}
	if s.NATPort < t.natFirst || s.NATPort > t.natLast || Owner(s.NATPort, t.workers) != t.worker {
		return nil, ErrNotMine
	}
	k := ClientKey{Client: s.Client, VIP: s.VIP}
	if _, dup := t.fwd[k]; dup {
		return nil, fmt.Errorf("conntrack: flow %v->%v imported twice", s.Client, s.VIP)
	}
	pool := t.ports[s.Backend]
	if pool == nil {
		pool = newNATPorts(t.natFirst, t.natLast, t.worker, t.workers)
		t.ports[s.Backend] = pool
	}
	if !pool.take(s.NATPort) {
		return nil, fmt.Errorf("conntrack: NAT port %d toward %v imported twice", s.NATPort, s.Backend)
	}
	if !t.shared.reserve() {
		pool.put(s.NATPort, now, portMemory{})
		return nil, ErrTableFull
	}
	t.shared.clientAddForce(s.Client.IP)
	i := t.alloc()
	f := t.flow(i)
	*f = Flow{
		Key: k, BackendAddr: s.Backend, NATPort: s.NATPort, ClientMAC: s.ClientMAC, LocalMAC: s.LocalMAC, ClientIf: s.ClientIf, Backend: backendID,
		TSOff: s.TSOff, SeqOff: s.SeqOff, BTSOff: s.BTSOff, BSeqOff: s.BSeqOff, WinShift: s.WinShift,
		state: s.State, Syn: s.Syn, Created: now - int64(s.Created), LastSeen: now - int64(s.Idle),
		tsLast: s.TSLast, seqEnd: s.SeqEnd, Cookie: s.Cookie, CookieTS: s.CookieTS, idx: i,
	}
	if s.Proxied {
		f.flags |= flagProxy
	}
	if s.HasTS {
		f.flags |= flagTS
	}
	if s.Established {
		f.flags |= flagEstablished
	}
	for d, p := range s.Peers {
		f.peers[d] = p.peer()
	}
	t.fwd[k] = i
	t.rev[f.ReverseKey()] = i
	t.count.Add(1)
	t.states[f.state].Add(1)
	if f.state.HalfOpen() {
		t.halfOpen.Add(1)
	}
	if f.state.Live() {
		f.flags |= flagLive
		t.live[backendID].Add(1)
	}
	t.flows[backendID].Add(1)
	return f, nil
}

// ExportPorts returns what this worker's NAT ports remember, for every port
// that remembers something.
func (t *Table) ExportPorts(now int64) []PortState {
	var out []PortState
	for be, p := range t.ports {
		freed := map[uint16]int64{}
		for k := 0; k < p.n; k++ {
			i := (p.head + k) % len(p.port)
			freed[p.port[i]] = p.freed[i]
		}
		for i, m := range p.mem {
			if m.flags == 0 {
				continue
			}
			port := p.base + uint16(i)*p.step
			ps := PortState{Backend: be, Port: port, TS: m.ts, SeqEnd: m.seqEnd, HasTS: m.flags&memTS != 0, HasSeq: m.flags&memSeq != 0, Freed: -1}
			if at, ok := freed[port]; ok && at != neverFreed {
				ps.Freed = time.Duration(now - at)
			}
			out = append(out, ps)
		}
	}
	return out
}

// ImportPort takes back what a NAT port of this worker's share remembers.
// Import the flows first: a port in use by a flow keeps its memory for when
// the flow ends.
func (t *Table) ImportPort(s PortState, now int64) error {
	if s.Port < t.natFirst || s.Port > t.natLast || Owner(s.Port, t.workers) != t.worker {
		return ErrNotMine
	}
	pool := t.ports[s.Backend]
	if pool == nil {
		pool = newNATPorts(t.natFirst, t.natLast, t.worker, t.workers)
		t.ports[s.Backend] = pool
	}
	i := pool.index(s.Port)
	if i < 0 {
		return ErrNotMine
	}
	var m portMemory
	if s.HasTS {
		m.ts, m.flags = s.TS, m.flags|memTS
	}
	if s.HasSeq {
		m.seqEnd, m.flags = s.SeqEnd, m.flags|memSeq
	}
	pool.mem[i] = m
	if s.Freed >= 0 && pool.take(s.Port) {
		// Back on the free list with its real age, at the tail: a port
		// freed moments before the hand-off must still rest.
		pool.put(s.Port, now-int64(s.Freed), m)
	}
	return nil
}
