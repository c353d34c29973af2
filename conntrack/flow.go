package conntrack

import (
	"fmt"
	"sync/atomic"
)

// Endpoint is an IPv4 address and TCP port.
type Endpoint struct {
	IP   [4]byte
	Port uint16
}

// String formats e as "a.b.c.d:port".
func (e Endpoint) String() string {
	return fmt.Sprintf("%d.%d.%d.%d:%d", e.IP[0], e.IP[1], e.IP[2], e.IP[3], e.Port)
}

// ClientKey is the forward key: the client's (srcIP, srcPort, dstIP, dstPort)
// as the client sent it.
type ClientKey struct {
	Client Endpoint
	VIP    Endpoint
}

// BackendKey is the reverse key: (backendIP, backendPort, natPort). A reply
// from the backend carries exactly these three values (as source address,
// source port and destination port), which is why NAT ports only need to be
// unique per backend.
type BackendKey struct {
	Backend Endpoint
	NATPort uint16
}

// Direction says which side sent a packet.
type Direction uint8

// Directions of a packet relative to a flow.
const (
	FromClient Direction = iota
	FromBackend
)

// String returns "client" or "backend".
func (d Direction) String() string {
	switch d {
	case FromClient:
		return "client"
	case FromBackend:
		return "backend"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// State is the coarse TCP state of a flow, as far as a middlebox that sees
// both directions can tell. It only has to be good enough to pick a timeout
// and to know when a connection stops counting toward its backend's load.
type State uint8

// Flow states. See Table.Observe for the transitions.
const (
	StateSynSent     State = iota // created by the client's SYN, no SYN-ACK from the backend yet
	StateEstablished              // the backend answered with SYN-ACK
	StateFinWait                  // FIN from one side: a half-close, which is legal and can last
	StateClosing                  // FINs from both sides
	StateClosed                   // RST from either side
)

var stateNames = [...]string{
	StateSynSent:     "SynSent",
	StateEstablished: "Established",
	StateFinWait:     "FinWait",
	StateClosing:     "Closing",
	StateClosed:      "Closed",
}

// String returns the state's name, e.g. "Established".
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// TCP flag bits as in byte 13 of the TCP header; Observe takes that byte.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagACK = 0x10
)

// The mutable part of a flow's state machine lives in one 32-bit word so that
// a transition (state, FIN bits and the live flag together) is a single CAS:
// whoever clears liveBit is the one goroutine that decrements the backend's
// live count, whether it is Observe, Sweep or Remove.
const (
	stateMask  = 0x0f
	finClient  = 1 << 4 // FIN seen from the client
	finBackend = 1 << 5 // FIN seen from the backend
	finBoth    = finClient | finBackend
	liveBit    = 1 << 6 // the flow still counts in Table.Live
)

// Flow is one tracked connection. The exported fields are set by Create and
// never change afterwards, so the engine may read them without
// synchronization; everything else is updated with atomics.
type Flow struct {
	Key         ClientKey // immutable after Create
	Backend     int       // index into Config.Backends
	BackendAddr Endpoint  // Config.Backends[Backend]
	NATPort     uint16    // source port toward the backend
	ClientMAC   [6]byte   // the MAC to answer the client with (source MAC of its SYN frame)
	// TSOffset is added to the client's TCP timestamps (TSval) on the way
	// to the backend and taken off the echoes (TSecr) on the way back; 0
	// for most flows. See Table.Create.
	TSOffset uint32
	// SeqOffset is added to the client's sequence numbers on the way to
	// the backend and taken off the backend's acknowledgment numbers and
	// SACK edges on the way back; 0 for most flows. See Table.Create.
	SeqOffset uint32

	word     atomic.Uint32    // state | fin bits | liveBit
	tsLast   atomic.Uint64    // recorded | the last TSval sent to the backend, after TSOffset
	seqEnd   atomic.Uint64    // recorded | the furthest SeqEnd sent to the backend, after SeqOffset
	lastSeen atomic.Int64     // Clock value of the last packet (or of Create)
	packets  [2]atomic.Uint64 // indexed by Direction
	bytes    [2]atomic.Uint64 // indexed by Direction
}

// recorded marks a recorded 32-bit value (a TSval, a sequence number) in
// the 64-bit word that holds it: 0 means none was seen.
const recorded = 1 << 32

// NoteTSval records the timestamp value last sent toward the backend (after
// TSOffset). When the flow ends, its NAT port keeps it, so that the next
// flow on the same port continues above it.
func (f *Flow) NoteTSval(v uint32) { f.tsLast.Store(recorded | uint64(v)) }

// NoteSeqEnd records the end of a segment sent toward the backend (its
// packet.TCP.SeqEnd, after SeqOffset), if it is beyond the furthest one so
// far: a retransmission must not move it back. When the flow ends, its NAT
// port keeps it, so that the next flow's SYN can be put beyond it. Only the
// worker that handles the flow's client direction calls it (PACKET_FANOUT
// hashes each direction of a flow to one worker), so the load and store
// need not be one atomic step.
func (f *Flow) NoteSeqEnd(end uint32) {
	if old := f.seqEnd.Load(); old&recorded == 0 || int32(end-uint32(old)) > 0 {
		f.seqEnd.Store(recorded | uint64(end))
	}
}

// setOffsets chooses the flow's TSOffset and SeqOffset for its SYN, given
// what the NAT port's previous flow left (see Table.Create).
func (f *Flow) setOffsets(syn SYN, last portMemory) {
	tsCovers := syn.HasTS && last.ts&recorded != 0
	if tsCovers {
		if prev := uint32(last.ts); int32(syn.TSval-prev) <= 0 {
			f.TSOffset = prev - syn.TSval + 1
		}
	}
	if syn.HasTS {
		f.tsLast.Store(recorded | uint64(syn.TSval+f.TSOffset))
	}
	if !tsCovers && last.seqEnd&recorded != 0 {
		if prev := uint32(last.seqEnd); int32(syn.Seq-prev) <= 0 {
			f.SeqOffset = prev + seqGap - syn.Seq
		}
	}
	f.seqEnd.Store(recorded | uint64(syn.Seq+f.SeqOffset+1))
}

// State returns the flow's current state.
func (f *Flow) State() State { return State(f.word.Load() & stateMask) }

// LastSeen returns the Clock value of the flow's last packet, or of its
// creation if it has seen none.
func (f *Flow) LastSeen() int64 { return f.lastSeen.Load() }

// Counters returns the packets and IP bytes observed in direction d.
func (f *Flow) Counters(d Direction) (packets, bytes uint64) {
	return f.packets[d&1].Load(), f.bytes[d&1].Load()
}

// ReverseKey returns the key under which replies from the backend find f.
func (f *Flow) ReverseKey() BackendKey {
	return BackendKey{Backend: f.BackendAddr, NATPort: f.NATPort}
}

// String describes the flow for logs.
func (f *Flow) String() string {
	return fmt.Sprintf("%v->%v via :%d to %v %v", f.Key.Client, f.Key.VIP, f.NATPort, f.BackendAddr, f.State())
}

// next computes the state word after a packet from d with the given flags.
//
// Deliberate choices:
//   - Closed is final, and Closing only moves to Closed (on RST): a late
//     SYN-ACK or FIN must not resurrect a flow that no longer counts as live.
//   - A FIN before the handshake completes is ignored. No real stack sends
//     one (a client closing in SYN_SENT just drops its TCB), and honouring it
//     would let a spoofed SYN then FIN pin a table slot for the hour-long
//     EstablishedTimeout instead of the 30 s HalfOpenTimeout.
func next(w uint32, d Direction, flags uint8) uint32 {
	s := State(w & stateMask)
	switch {
	case s == StateClosed:
		return w
	case flags&FlagRST != 0:
		return w&^(stateMask|liveBit) | uint32(StateClosed)
	case s == StateClosing:
		return w
	}
	if s == StateSynSent {
		if d != FromBackend || flags&(FlagSYN|FlagACK) != FlagSYN|FlagACK {
			return w
		}
		s = StateEstablished
	}
	if flags&FlagFIN != 0 {
		if d == FromClient {
			w |= finClient
		} else {
			w |= finBackend
		}
		s = StateFinWait
		if w&finBoth == finBoth {
			s = StateClosing
			w &^= liveBit
		}
	}
	return w&^stateMask | uint32(s)
}
