package packet

import "encoding/binary"

// TCP SACK option (RFC 2018 section 3): kind 5, length 2 + 8n, n pairs of
// left and right edges, each a sequence number of the side that receives
// the option's segment.
const (
	optSACK      = 5
	sackBlockLen = 8
)

// SeqEnd returns the sequence number just past the segment: its sequence
// number plus the payload length, plus one each for SYN and FIN. Once the
// sender has sent it, it is what the receiver's rcv_nxt becomes, and what
// a TIME_WAIT socket compares a new SYN's sequence number against.
func (t TCP) SeqEnd() uint32 {
	n := uint32(len(t) - t.HeaderLen())
	if t.Flags()&FlagSYN != 0 {
		n++
	}
	if t.Flags()&FlagFIN != 0 {
		n++
	}
	return t.Seq() + n
}

// AddSeqAck adds seqDelta to the sequence number and ackDelta to the
// acknowledgment number, modulo 2^32, adjusting a complete checksum. A
// partial checksum needs nothing: the header is part of what the offload
// sums later.
func (t TCP) AddSeqAck(seqDelta, ackDelta uint32, state CsumState) {
	if seqDelta == 0 && ackDelta == 0 {
		return
	}
	d := t.wordsBefore(4, 12, state)
	binary.BigEndian.PutUint32(t[4:8], t.Seq()+seqDelta)
	binary.BigEndian.PutUint32(t[8:12], t.Ack()+ackDelta)
	t.wordsAfter(4, 12, state, d)
}

// AddSACK adds by to every edge of the segment's SACK option, if it has
// one, modulo 2^32, adjusting a complete checksum. The option may start at
// any byte. A malformed option list is left as it is, from the first option
// that does not fit.
func (t TCP) AddSACK(by uint32, state CsumState) {
	if by == 0 {
		return
	}
	hl := t.HeaderLen()
	for i := TCPMinLen; i < hl; {
		switch t[i] {
		case optEnd:
			return
		case optNOP:
			i++
			continue
		}
		if i+1 >= hl {
			return
		}
		l := int(t[i+1])
		if l < 2 || i+l > hl {
			return
		}
		if t[i] == optSACK && l > 2 && (l-2)%sackBlockLen == 0 {
			d := t.wordsBefore(i+2, i+l, state)
			for j := i + 2; j < i+l; j += 4 {
				binary.BigEndian.PutUint32(t[j:], binary.BigEndian.Uint32(t[j:])+by)
			}
			t.wordsAfter(i+2, i+l, state, d)
		}
		i += l
	}
}

// wordsBefore starts a checksum adjustment for a change to bytes [from, to)
// of the header: for a complete checksum it records the 16-bit words
// (counted from the header's start, so aligned to the checksum's words)
// that cover them. wordsAfter, called once the bytes have changed, records
// the new words and applies the difference. Both do nothing for a partial
// checksum. Two calls rather than one taking a func: no closure on the
// packet path.
func (t TCP) wordsBefore(from, to int, state CsumState) (d delta) {
	if state == CsumComplete {
		for i := from &^ 1; i < (to+1)&^1; i += 2 {
			d.add(binary.BigEndian.Uint16(t[i:]), 0)
		}
	}
	return d
}

// wordsAfter completes what wordsBefore started.
func (t TCP) wordsAfter(from, to int, state CsumState, d delta) {
	if state != CsumComplete {
		return
	}
	for i := from &^ 1; i < (to+1)&^1; i += 2 {
		d.add(0, binary.BigEndian.Uint16(t[i:]))
	}
	t.SetChecksum(d.apply(t.Checksum()))
}

// AddInnerSeq adds by to the sequence number of the segment an ICMP
// error quotes, keeping the quoted TCP checksum as valid as it was when the
// quote reaches it. Call it before TranslateICMP, which sums the ICMP
// checksum afresh over the changed quote.
func (f *Frame) AddInnerSeq(by uint32) {
	tcp := TCP(f.InnerTCP)
	if by == 0 || len(tcp) < 8 {
		return
	}
	// A quote too short to hold the checksum has none to keep valid.
	state := CsumPartial
	if len(tcp) >= 18 {
		state = CsumComplete
	}
	d := tcp.wordsBefore(4, 8, state)
	binary.BigEndian.PutUint32(tcp[4:8], tcp.Seq()+by)
	tcp.wordsAfter(4, 8, state, d)
}

// MaxSACK returns the highest right edge of the segment's SACK blocks, and
// whether it has any: what connection tracking takes as the furthest the
// receiver acknowledges (the kernel's tcp_sack). A malformed option list is
// read up to the first option that does not fit.
func (t TCP) MaxSACK() (edge uint32, ok bool) {
	hl := t.HeaderLen()
	for i := TCPMinLen; i < hl; {
		switch t[i] {
		case optEnd:
			return edge, ok
		case optNOP:
			i++
			continue
		}
		if i+1 >= hl {
			return edge, ok
		}
		l := int(t[i+1])
		if l < 2 || i+l > hl {
			return edge, ok
		}
		if t[i] == optSACK && l > 2 && (l-2)%sackBlockLen == 0 {
			for j := i + 2; j < i+l; j += sackBlockLen {
				if r := binary.BigEndian.Uint32(t[j+4:]); !ok || int32(r-edge) > 0 {
					edge, ok = r, true
				}
			}
		}
		i += l
	}
	return edge, ok
}
