package conntrack

// TCP tracking, as strict as a stateful firewall's.
//
// The state machine and the window checks follow Linux's
// net/netfilter/nf_conntrack_proto_tcp.c (its tcp_conntracks table and
// tcp_in_window, itself after Guido van Rooij's "Real Stateful TCP Packet
// Filtering in IP Filter"): for each side, td_end (the highest sequence end
// it sent), td_maxend (the highest ack + window the other side allowed it),
// td_maxwin (the largest window it was offered) and td_maxack (the highest
// ack it sent), and a segment passes only if
//
//	I.   seq <= sender.maxend
//	II.  end >= sender.end - receiver.maxwin
//	III. ack <= receiver.end
//	IV.  ack >= receiver.end - max(sender.maxwin, 66000)
//
// Where rawlb differs from the kernel, and why:
//   - A flow is established only by the client's ACK that acknowledges
//     exactly the backend's SYN (RFC 9293 3.10.7.4: SND.UNA < SEG.ACK <=
//     SND.NXT, and in SYN-RECEIVED SND.NXT is ISN+1). The kernel takes any
//     ACK within the window bounds above, 66,000 sequence numbers wide.
//   - A RST is accepted only with the exact sequence number the receiver
//     expects (its last ACK), or the sender's own next sequence number (a
//     RST that ends a train of data, as the kernel also allows). A RST
//     within the receiver's window but not exact is dropped and answered
//     with a challenge ACK (RFC 5961 section 3.2); one outside is dropped.
//     The kernel forwards the in-window RST and leaves the challenge to
//     the endpoint; rawlb answers for the endpoint because it cannot know
//     whether the backend implements RFC 5961, and so that a blind RST
//     never reaches the backend at all.
//   - A SYN on a synchronized flow is dropped and answered with a
//     challenge ACK (RFC 5961 section 4); the kernel forwards it. A SYN on
//     a flow in TIME_WAIT or closed starts a new flow, as in the kernel.
//   - Handshakes expire HalfOpenTimeout after the flow was created, not
//     after the last segment (the kernel refreshes SYN_RECV on every
//     retransmitted SYN-ACK, which lets a spoofed handshake live on).
//   - No mid-stream pickup (the kernel's nf_conntrack_tcp_loose): a segment
//     of a flow rawlb does not know is answered with a RST, as the host
//     without the socket would; after a restart the flows come from the
//     state the old process handed over, windows included.
//   - The kernel's "ignored" segments (retransmissions of acknowledged data,
//     overly delayed ACKs, a retransmitted SYN-ACK) pass without changing
//     the state, as in the kernel.

// maxAckWinConst is the kernel's MAXACKWINCONST: check IV allows ACKs this
// far behind even when the window is smaller.
const maxAckWinConst = 66000

// maxWScale is the largest window scale RFC 7323 section 2.3 allows.
const maxWScale = 14

// peer is one side's sender state (the kernel's struct ip_ct_tcp_state).
// Sequence numbers are in that side's own numbering, as it sends them;
// acknowledgment numbers are translated into the other side's numbering.
type peer struct {
	end    uint32 // highest sequence end sent (td_end)
	maxend uint32 // highest sequence end the other side allows (td_maxend)
	maxwin uint32 // largest window offered to the other side, scaled (td_maxwin)
	maxack uint32 // highest acknowledgment sent (td_maxack)
	win    uint16 // last window field sent, unscaled
	scale  uint8  // window scale this side applies to its windows
	flags  uint8
}

// peer flags.
const (
	peerWScale   = 1 << iota // sent a window scale option
	peerSACKPerm             // sent SACK-permitted
	peerMaxAck               // maxack is set
)

// Segment is what tracking needs of a TCP segment, read by the engine from
// the frame before any rewrite.
type Segment struct {
	Flags uint8
	Seq   uint32
	Ack   uint32
	Win   uint16 // the raw window field
	Len   uint32 // payload bytes
	// SACK is the highest right edge of the segment's SACK blocks, if
	// HasSACK. The engine reads the blocks only when the option is there.
	SACK    uint32
	HasSACK bool
	// Options of a SYN or SYN-ACK.
	WScale   int8 // -1: none
	SACKPerm bool
}

// End returns the sequence number just past the segment.
func (s *Segment) End() uint32 {
	e := s.Seq + s.Len
	if s.Flags&FlagSYN != 0 {
		e++
	}
	if s.Flags&FlagFIN != 0 {
		e++
	}
	return e
}

// Action is what the engine must do with a tracked segment.
type Action uint8

// Actions of Track.
const (
	Forward   Action = iota // pass it on (translated)
	Drop                    // drop it, counted under the Verdict's Reason
	Challenge               // drop it and answer its sender with a challenge ACK (RFC 5961)
	Reopen                  // a SYN for a flow that is over: remove the flow and start a new one
)

// Reason says why Track dropped or challenged a segment; the engine counts
// each.
type Reason uint8

// Reasons of Track.
const (
	ReasonNone        Reason = iota
	ReasonBadFlags           // a flag combination no TCP sends (SYN+FIN, none at all, ...)
	ReasonState              // not valid in the flow's state (a data segment before the handshake, ...)
	ReasonWindow             // sequence or acknowledgment outside the windows
	ReasonRSTWindow          // a RST outside the receiver's window: dropped
	ReasonRSTInWindow        // a RST in the window but not exact: challenged
	ReasonSYNSynced          // a SYN on a synchronized flow: challenged
	NumReasons
)

var reasonNames = [NumReasons]string{
	ReasonNone:        "none",
	ReasonBadFlags:    "bad_flags",
	ReasonState:       "invalid_state",
	ReasonWindow:      "out_of_window",
	ReasonRSTWindow:   "rst_out_of_window",
	ReasonRSTInWindow: "rst_in_window",
	ReasonSYNSynced:   "syn_on_established",
}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Verdict is Track's result.
type Verdict struct {
	Action Action
	Reason Reason
	// Old is the state before the segment; the flow's State() is the new one.
	Old State
}

// validFlags is the kernel's tcp_valid_flags: the combinations of FIN, SYN,
// RST, ACK and URG a TCP sends (PSH, ECE and CWR are always allowed).
var validFlags = [64]bool{
	FlagSYN:                     true,
	FlagSYN | FlagURG:           true,
	FlagSYN | FlagACK:           true,
	FlagRST:                     true,
	FlagRST | FlagACK:           true,
	FlagFIN | FlagACK:           true,
	FlagFIN | FlagACK | FlagURG: true,
	FlagACK:                     true,
	FlagACK | FlagURG:           true,
}

// ValidFlags reports whether a TCP flag byte is a combination a real TCP
// sends.
func ValidFlags(flags uint8) bool {
	return validFlags[flags&^(FlagPSH|FlagECE|FlagCWR)&0x3f]
}

// Segment kinds, the rows of the transition table.
const (
	kSYN = iota
	kSYNACK
	kFIN
	kACK
	kRST
	kNone
	numKinds
)

func kindOf(flags uint8) int {
	switch {
	case flags&FlagRST != 0:
		return kRST
	case flags&FlagSYN != 0:
		if flags&FlagACK != 0 {
			return kSYNACK
		}
		return kSYN
	case flags&FlagFIN != 0:
		return kFIN
	case flags&FlagACK != 0:
		return kACK
	}
	return kNone
}

// Table entries beyond real states: iv = invalid, ig = pass without a
// state change, ch = challenge (a SYN on a synchronized flow), ro =
// reopen (a SYN after the end).
const (
	iv = numStates + iota
	ig
	ch
	ro
)

const (
	sNO = StateNone
	sSS = StateSynSent
	sSR = StateSynRecv
	sES = StateEstablished
	sFW = StateFinWait
	sCW = StateCloseWait
	sLA = StateLastAck
	sTW = StateTimeWait
	sCL = StateClose
	sSP = StateSynProxy
)

// transitions[dir][kind][state] is the next state, after the kernel's
// tcp_conntracks with the differences listed at the top of this file.
// SynProxy flows are handled by the engine before Track (rawlb holds both
// handshakes itself), so their column only matters for FIN and RST.
var transitions = [2][numKinds][numStates]State{
	FromClient: {
		//          sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sSP
		kSYN:    {sSS, sSS, sSR, ch, ch, ch, ch, ro, ro, ch},
		kSYNACK: {iv, iv, iv, iv, iv, iv, iv, iv, iv, iv},
		kFIN:    {iv, iv, sFW, sFW, sLA, sLA, sLA, sTW, sCL, iv},
		kACK:    {iv, iv, sES, sES, sCW, sCW, sTW, sTW, sCL, iv},
		kRST:    {iv, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
		kNone:   {iv, iv, iv, iv, iv, iv, iv, iv, iv, iv},
	},
	FromBackend: {
		//          sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sSP
		kSYN:    {iv, iv, iv, iv, iv, iv, iv, iv, iv, iv},
		kSYNACK: {iv, sSR, ig, ig, ig, ig, ig, ig, ig, iv},
		kFIN:    {iv, iv, sFW, sFW, sLA, sLA, sLA, sTW, sCL, iv},
		kACK:    {iv, ig, sSR, sES, sCW, sCW, sTW, sTW, sCL, iv},
		kRST:    {iv, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
		kNone:   {iv, iv, iv, iv, iv, iv, iv, iv, iv, iv},
	},
}

// Track checks a segment of f from direction d against the flow's state and
// windows, and updates them. It takes no lock and allocates nothing.
func (f *Flow) Track(d Direction, s *Segment, now int64) Verdict {
	d &= 1
	old := f.state
	v := Verdict{Old: old}
	if !ValidFlags(s.Flags) {
		v.Action, v.Reason = Drop, ReasonBadFlags
		return v
	}
	kind := kindOf(s.Flags)
	next := transitions[d][kind][old]
	switch next {
	case iv:
		v.Action, v.Reason = Drop, ReasonState
		return v
	case ch:
		v.Action, v.Reason = Challenge, ReasonSYNSynced
		return v
	case ro:
		v.Action = Reopen
		return v
	}
	snd, rcv := &f.peers[d], &f.peers[d^1]
	switch {
	case kind == kRST:
		if ok, r := f.rstAcceptable(d, s); !ok {
			v.Action, v.Reason = Drop, ReasonRSTWindow
			if r == Challenge {
				v.Action, v.Reason = Challenge, ReasonRSTInWindow
			}
			return v
		}
		if old != StateClose {
			f.LastSeen = now
		}
		f.state = StateClose
		return v
	case old == StateSynRecv && d == FromClient && kind == kACK:
		// RFC 9293 3.10.7.4: in SYN-RECEIVED only an ACK of exactly the
		// backend's ISN+1 completes the handshake.
		if s.Flags&FlagACK == 0 || f.toReceiver(d, s.Ack) != rcv.end {
			v.Action, v.Reason = Drop, ReasonWindow
			return v
		}
	case old == StateSynSent && d == FromBackend && kind == kSYNACK:
		if f.toReceiver(d, s.Ack) != rcv.end {
			// Not an answer to our SYN (a late SYN-ACK of an earlier
			// connection on the NAT port).
			v.Action, v.Reason = Drop, ReasonWindow
			return v
		}
	}
	if next == ig {
		if old == StateSynSent && d == FromBackend && kind == kACK && s.Flags&FlagACK != 0 {
			// An ACK from an older connection on the NAT port (the
			// backend's TIME_WAIT refusing our SYN, the kernel's
			// "possible challenge ACK"): if it reaches the client, the
			// client's RST answers it with this number.
			snd.maxack = f.toReceiver(d, s.Ack)
			snd.flags |= peerMaxAck
		}
		v.Action = Forward
		return v
	}
	switch f.inWindow(d, s) {
	case windowInvalid:
		v.Action, v.Reason = Drop, ReasonWindow
		return v
	case windowIgnore:
		return v // forwarded, no state change (the kernel's NFCT_TCP_IGNORE)
	}
	// A flow that is over does not live on through what still comes
	// (a peer retransmitting into a closed connection, RSTs answering
	// it): its closing timeout runs from the end. What comes after it is
	// answered as for an unknown connection, with a RST the peer accepts.
	if next != old || (old != StateClose && old != StateTimeWait) {
		f.LastSeen = now
	}
	f.state = next
	return v
}

// toReceiver translates an acknowledgment number sent by side d into the
// other side's own numbering: the client acknowledges the backend's bytes
// in the numbering rawlb shows it (BSeqOff), the backend the client's in the
// numbering rawlb shows the backend (SeqOff).
func (f *Flow) toReceiver(d Direction, ack uint32) uint32 {
	if d == FromClient {
		return ack - f.BSeqOff
	}
	return ack - f.SeqOff
}

// fromReceiver is toReceiver's inverse: a sequence number of side d^1, in
// the numbering side d sees.
func (f *Flow) fromReceiver(d Direction, seq uint32) uint32 {
	if d == FromClient {
		return seq + f.BSeqOff
	}
	return seq + f.SeqOff
}

const (
	windowOK = iota
	windowIgnore
	windowInvalid
)

func before(a, b uint32) bool { return int32(a-b) < 0 }
func after(a, b uint32) bool  { return int32(b-a) < 0 }

// inWindow is tcp_in_window: the four bounds, then the updates.
func (f *Flow) inWindow(d Direction, s *Segment) int {
	snd, rcv := &f.peers[d], &f.peers[d^1]
	seq := s.Seq
	end := s.End()
	win := uint32(s.Win)
	ack := f.toReceiver(d, s.Ack)
	sack := ack
	if s.HasSACK && rcv.flags&peerSACKPerm != 0 {
		if e := f.toReceiver(d, s.SACK); after(e, sack) {
			sack = e
		}
	}
	syn := s.Flags&FlagSYN != 0
	if snd.maxwin == 0 {
		if !syn {
			return windowInvalid // no pickup in the middle of a connection
		}
		f.initSender(d, s)
		if s.Flags&FlagACK == 0 {
			return windowOK
		}
	} else if syn && after(end, snd.end) && (f.state == StateSynSent || f.state == StateSynRecv) {
		// A SYN again with a higher sequence number: RFC 9293 lets a
		// reinitialised TCP go on with larger numbers.
		f.initSender(d, s)
		if s.Flags&FlagACK == 0 {
			return windowOK
		}
	}
	if s.Flags&FlagACK == 0 {
		ack, sack = rcv.end, rcv.end
	} else if s.Flags&(FlagACK|FlagRST) == FlagACK|FlagRST && s.Ack == 0 {
		ack, sack = rcv.end, rcv.end // broken stacks send RST+ACK with ack 0
	}

	if !before(seq, snd.maxend+1) {
		// I fails. Tolerate a sender overshooting the window by at most
		// one window, as the kernel does, when the rest holds: record the
		// data so its ACK is not refused later, but drop the segment.
		overshot := end - snd.maxend + 1
		if rcv.maxwin != 0 && after(end, snd.end-rcv.maxwin-1) && after(sack, rcv.end-maxAckWindow(snd)-1) &&
			overshot <= rcv.maxwin && before(sack, rcv.end+1) {
			snd.end = end
		}
		return windowInvalid
	}
	if !before(sack, rcv.end+1) {
		return windowInvalid // III: acknowledges data not seen yet
	}
	if rcv.maxwin != 0 && !after(end, snd.end-rcv.maxwin-1) {
		return windowIgnore // II: retransmission of acknowledged data
	}
	if !after(sack, rcv.end-maxAckWindow(snd)-1) {
		return windowIgnore // IV: an overly delayed ACK
	}

	if !syn {
		win <<= snd.scale
	}
	if swin := win + (sack - ack); snd.maxwin < swin {
		snd.maxwin = swin
	}
	if after(end, snd.end) {
		snd.end = end
	}
	if s.Flags&FlagACK != 0 {
		if snd.flags&peerMaxAck == 0 || after(ack, snd.maxack) {
			snd.maxack = ack
			snd.flags |= peerMaxAck
		}
	}
	if rcv.maxwin != 0 && after(end, snd.maxend) {
		rcv.maxwin += end - snd.maxend
	}
	if after(sack+win, rcv.maxend-1) {
		rcv.maxend = sack + win
		if win == 0 {
			rcv.maxend++
		}
	}
	snd.win = s.Win
	return windowOK
}

func maxAckWindow(p *peer) uint32 { return max(p.maxwin, maxAckWinConst) }

// initSender is tcp_init_sender: a side's state from its SYN or SYN-ACK.
func (f *Flow) initSender(d Direction, s *Segment) {
	snd, rcv := &f.peers[d], &f.peers[d^1]
	end := s.End()
	snd.end, snd.maxend = end, end
	snd.maxwin = max(uint32(s.Win), 1)
	snd.win = s.Win
	snd.flags &^= peerWScale | peerSACKPerm | peerMaxAck
	snd.scale = 0
	if s.WScale >= 0 {
		snd.flags |= peerWScale
		snd.scale = uint8(min(s.WScale, maxWScale))
	}
	if s.SACKPerm {
		snd.flags |= peerSACKPerm
	}
	// RFC 7323 section 2.2: scaling applies only if both sides sent the
	// option, which is known once the SYN-ACK is seen.
	if d == FromBackend && (snd.flags&peerWScale == 0 || rcv.flags&peerWScale == 0) {
		snd.scale, rcv.scale = 0, 0
	}
}

// rstAcceptable applies RFC 5961 section 3.2 to a RST from side d. It
// returns true for a RST to act on, or false and Challenge for one in the
// window that is not exact.
func (f *Flow) rstAcceptable(d Direction, s *Segment) (bool, Action) {
	snd, rcv := &f.peers[d], &f.peers[d^1]
	seq := s.Seq
	switch f.state {
	case StateSynSent, StateSynProxy:
		if d == FromBackend {
			// The backend refuses our SYN (RFC 9293 3.10.7.3: in
			// SYN-SENT a RST is acceptable if it acknowledges the SYN).
			return s.Flags&FlagACK != 0 && f.toReceiver(d, s.Ack) == rcv.end, Drop
		}
		// The client aborts its connect, or answers an ACK the backend
		// sent from an older connection (then its seq is that ACK's
		// acknowledgment number, the backend's maxack).
		return seq == snd.end || rcv.flags&peerMaxAck != 0 && seq == rcv.maxack, Drop
	case StateSynRecv:
		if d == FromBackend {
			return seq == snd.end, Drop
		}
		return seq == snd.end || seq == snd.end-1, Drop
	}
	if rcv.flags&peerMaxAck != 0 && seq == rcv.maxack || seq == snd.end {
		return true, Drop
	}
	// In window: from what the receiver acknowledged to the right edge of
	// the window it advertised.
	left := snd.end
	if rcv.flags&peerMaxAck != 0 {
		left = rcv.maxack
	}
	if !before(seq, left) && before(seq, snd.maxend) {
		return false, Challenge
	}
	return false, Drop
}

// ChallengeACK returns what a challenge ACK to side d carries, in the
// numbering d sees: the sequence number the other side sends next and the
// acknowledgment number it expects, and its last window.
func (f *Flow) ChallengeACK(d Direction) (seq, ack uint32, win uint16) {
	snd, rcv := &f.peers[d], &f.peers[d^1]
	ack = snd.end
	if rcv.flags&peerMaxAck != 0 {
		ack = rcv.maxack
	}
	// ack is in d's own numbering already; seq is the other side's.
	return f.fromReceiver(d, rcv.end), ack, rcv.win
}

// ResetSeq returns the sequence number a RST to side d must carry to be
// exact for it (RFC 5961 section 3.2: its RCV.NXT), in d's view: what d
// last acknowledged, or, before it acknowledged anything, what the other
// side sends next.
func (f *Flow) ResetSeq(d Direction) uint32 {
	p, o := &f.peers[d], &f.peers[d^1]
	seq := o.end
	if p.flags&peerMaxAck != 0 {
		seq = p.maxack
	}
	return f.fromReceiver(d, seq)
}

// Expects reports the sequence numbers in flight: the next one side d
// sends (in its own numbering) and the next it expects from the other side
// (in the other side's numbering), for building segments on a flow's
// behalf.
func (f *Flow) Expects(d Direction) (next, ack uint32) {
	return f.peers[d].end, f.peers[d^1].end
}

// SetProxyWindows initialises both sides' window state for a flow whose
// handshakes rawlb completed itself (a SYN cookie), once the backend's
// SYN-ACK is known: client and backend as if each had seen the other's
// handshake directly.
func (f *Flow) SetProxyWindows(client, backendSYNACK *Segment) {
	f.initSender(FromClient, client)
	f.initSender(FromBackend, backendSYNACK)
}
