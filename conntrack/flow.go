package conntrack

import "fmt"

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
// as the client sent it. VIP is the service's listen address.
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

// State is a flow's TCP state as a middlebox that sees both directions
// tracks it, after net/netfilter/nf_conntrack_proto_tcp.c: the state of the
// connection as a whole, guessed from the segments that passed.
type State uint8

// Flow states. A flow starts in StateSynSent on the client's SYN, or in
// StateSynProxy when the client's handshake was completed with a SYN cookie.
const (
	StateNone        State = iota // a free slot
	StateSynSent                  // the client's SYN passed
	StateSynRecv                  // the backend's SYN-ACK passed
	StateEstablished              // the client's ACK of the SYN-ACK passed
	StateFinWait                  // a FIN from one side
	StateCloseWait                // that FIN was acknowledged
	StateLastAck                  // FINs from both sides
	StateTimeWait                 // the last FIN was acknowledged
	StateClose                    // a valid RST
	StateSynProxy                 // client established through a SYN cookie; rawlb's SYN to the backend awaits its SYN-ACK
	numStates
)

var stateNames = [numStates]string{
	StateNone:        "None",
	StateSynSent:     "SynSent",
	StateSynRecv:     "SynRecv",
	StateEstablished: "Established",
	StateFinWait:     "FinWait",
	StateCloseWait:   "CloseWait",
	StateLastAck:     "LastAck",
	StateTimeWait:    "TimeWait",
	StateClose:       "Close",
	StateSynProxy:    "SynProxy",
}

// String returns the state's name, e.g. "Established".
func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// HalfOpen reports whether the handshake with the backend is unfinished.
// Half-open flows expire HalfOpenTimeout after they were created, however
// many retransmissions they see: a backend retransmitting its SYN-ACK to a
// spoofed client must not keep the flow (and its NAT port) alive.
func (s State) HalfOpen() bool {
	return s == StateSynSent || s == StateSynRecv || s == StateSynProxy
}

// Live reports whether a flow in state s counts toward its backend's load:
// until both sides have sent a FIN or one a RST.
func (s State) Live() bool {
	return s != StateNone && s < StateLastAck || s == StateSynProxy
}

// TCP flag bits as in byte 13 of the TCP header.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagPSH = 0x08
	FlagACK = 0x10
	FlagURG = 0x20
	FlagECE = 0x40
	FlagCWR = 0x80
)

// SYN is what a flow keeps of the client's SYN: enough to build the SYN
// again toward the backend (a SYN cookie handshake, or a new try after a
// backend's TIME_WAIT refused the first), and the numbers the offsets
// toward the backend start from.
type SYN struct {
	Seq      uint32 // the client's initial sequence number
	TSval    uint32 // the timestamp option's TSval, if HasTS
	HasTS    bool   // the SYN carries a TCP timestamp option
	MSS      uint16 // 0: no MSS option
	WScale   int8   // -1: no window scale option
	SACKPerm bool
	Window   uint16 // the raw window field
}

// Flow is one tracked connection. It belongs to the worker whose Table
// holds it: nothing here is safe for concurrent use, by design (both
// directions of a flow reach the same worker; see package doc).
type Flow struct {
	Key         ClientKey
	BackendAddr Endpoint
	NATPort     uint16
	ClientMAC   [6]byte // the MAC the client's frames come from, to answer it with
	LocalMAC    [6]byte // the MAC the client's frames are sent to, to answer it from
	ClientIf    int32   // the interface the client's frames arrive on
	Backend     uint32  // the engine's backend id

	// TSOff is added to the client's TSval on the way to the backend and
	// taken off the backend's TSecr on the way back; SeqOff likewise for
	// the client's sequence numbers and the backend's acknowledgment
	// numbers and SACK edges. They keep what the backend sees on each NAT
	// port rising (see Table.Create).
	TSOff, SeqOff uint32
	// BTSOff and BSeqOff translate the backend's TSval and sequence
	// numbers toward the client (and the client's TSecr and ACK back) for
	// a flow whose handshake rawlb completed itself with a SYN cookie: the
	// client knows rawlb's numbers, not the backend's. Zero otherwise.
	BTSOff, BSeqOff uint32
	// WinShift scales the backend's window toward the client of a SYN
	// cookie flow when the window scale rawlb announced differs from the
	// backend's: win << WinShift (a negative shift is to the right).
	WinShift int8

	state State
	flags uint8
	// Syn is the client's SYN (see SYN).
	Syn   SYN
	peers [2]peer // indexed by Direction: each side's sender state

	// Created and LastSeen are Table clock values.
	Created, LastSeen int64
	// tsLast and seqEnd are the last TSval and the furthest sequence end
	// sent toward the backend (after the offsets): what the backend's
	// TIME_WAIT for the NAT port will remember.
	tsLast, seqEnd uint32
	// Cookie is rawlb's initial sequence number toward the client of a SYN
	// cookie flow, and CookieTS the TSval it sent with it.
	Cookie, CookieTS uint32
	idx              uint32 // slab slot

	// FastRun and FastEvictions are the engine's fast-path bookkeeping:
	// how many segments it forwarded itself since the flow was created or
	// last came back from the fast path, and how often the fast path gave
	// the flow back before its end (a flow that keeps coming back stays
	// with the engine).
	FastRun       uint16
	FastEvictions uint8
	// FastSlot is 1 + the fast path's handshake slot while the flow was
	// given to it before its handshake completed, else 0.
	FastSlot uint32
	// FastGen numbers the flow's last offload, to tell the fast path's
	// news of it from news of an earlier one.
	FastGen uint32
	// peeked is when the sweep last asked the fast path about the flow
	// (Table clock).
	peeked int64
}

// Flow flags.
const (
	flagTS          = 1 << iota // the flow carries TCP timestamps (tsLast is set)
	flagLive                    // counted in the table's per-backend live counts
	flagProxy                   // the handshake was completed with a SYN cookie
	flagAssist                  // rawlb already sent the SYN again after a TIME_WAIT's ACK
	flagEstablished             // the flow was Established at some time
	flagOffload                 // the fast path has the flow (see Offloader)
)

// State returns the flow's state.
func (f *Flow) State() State { return f.state }

// EverEstablished reports whether the flow's handshake ever completed.
func (f *Flow) EverEstablished() bool { return f.flags&flagEstablished != 0 }

// Assisted reports whether rawlb already sent the SYN again for this flow
// after a backend's TIME_WAIT refused it, and MarkAssisted records that it
// did.
func (f *Flow) Assisted() bool { return f.flags&flagAssist != 0 }

// MarkAssisted: see Assisted.
func (f *Flow) MarkAssisted() { f.flags |= flagAssist }

// Proxied reports whether rawlb completed the client's handshake itself
// with a SYN cookie.
func (f *Flow) Proxied() bool { return f.flags&flagProxy != 0 }

// ReverseKey returns the key under which replies from the backend find f.
func (f *Flow) ReverseKey() BackendKey {
	return BackendKey{Backend: f.BackendAddr, NATPort: f.NATPort}
}

// NoteToBackend records what a segment forwarded to the backend carried,
// after the offsets: its TSval (if ts) and its sequence end. When the flow
// ends, its NAT port keeps both, so that the next flow on the port starts
// above them.
func (f *Flow) NoteToBackend(tsval uint32, ts bool, seqEnd uint32) {
	if ts {
		f.tsLast = tsval
		f.flags |= flagTS
	}
	if int32(seqEnd-f.seqEnd) > 0 {
		f.seqEnd = seqEnd
	}
}

// SentSYN records a SYN sent toward the backend (again): unlike data, it
// restarts the sequence end, which may move backwards when the offsets
// changed.
func (f *Flow) SentSYN(tsval uint32, ts bool, seqEnd uint32) {
	if ts {
		f.tsLast = tsval
		f.flags |= flagTS
	}
	f.seqEnd = seqEnd
}

// String describes the flow for logs.
func (f *Flow) String() string {
	return fmt.Sprintf("%v->%v via :%d to %v %v", f.Key.Client, f.Key.VIP, f.NATPort, f.BackendAddr, f.state)
}
