package packet

import "encoding/binary"

// TCP flag bits beyond those in header.go: URG, and ECE and CWR for ECN
// (RFC 3168 section 6.1.1: a SYN with both asks for ECN, a SYN-ACK with
// ECE alone agrees).
const (
	FlagURG = 0x20
	FlagECE = 0x40
	FlagCWR = 0x80
)

// Option kinds and lengths of the SYN options (RFC 9293 section 3.2, RFC
// 7323 sections 2 and 3, RFC 2018 section 2). The timestamp and SACK
// constants live beside their rewrites in timestamp.go and seq.go.
const (
	optMSS         = 2
	optMSSLen      = 4
	optWScale      = 3
	optWScaleLen   = 3
	optSACKPerm    = 4
	optSACKPermLen = 2
)

// MaxWScale is the largest window scale shift: RFC 7323 section 2.3 has a
// receiver use 14 for anything larger.
const MaxWScale = 14

// TCPOptions are the options a connection negotiates in its handshake.
// Mind the zero value's WScale: 0 is a window scale option with shift 0,
// -1 is none.
type TCPOptions struct {
	MSS           uint16 // 0: no MSS option
	WScale        int8   // window scale shift 0..14; -1: no window scale option
	SACKPermitted bool
	Timestamp     bool   // a timestamp option, with TSval and TSecr
	TSval, TSecr  uint32 // meaningful only with Timestamp
}

// SYNOptions returns the MSS, window scale, SACK-permitted and timestamp
// options of the segment, in whatever order they come. It parses as Linux's
// tcp_parse_options does: an option of a known kind with the wrong length is
// skipped, a later copy of an option overrides an earlier one, an MSS of 0
// counts as none, a window scale above 14 as 14, and the walk stops at
// the end-of-list option or at the first option that does not fit in the
// header, keeping what it found before. It reads nothing past the header
// (nor past the view, should the data offset claim more than it holds),
// and never panics.
func (t TCP) SYNOptions() TCPOptions {
	o := TCPOptions{WScale: -1}
	if len(t) < TCPMinLen {
		return o
	}
	hl := min(t.HeaderLen(), len(t))
	for i := TCPMinLen; i < hl; {
		kind := t[i]
		switch kind {
		case optEnd:
			return o
		case optNOP:
			i++
			continue
		}
		if i+1 >= hl {
			return o
		}
		l := int(t[i+1])
		if l < 2 || i+l > hl {
			return o
		}
		switch {
		case kind == optMSS && l == optMSSLen:
			if mss := binary.BigEndian.Uint16(t[i+2:]); mss != 0 {
				o.MSS = mss
			}
		case kind == optWScale && l == optWScaleLen:
			o.WScale = int8(min(t[i+2], MaxWScale))
		case kind == optSACKPerm && l == optSACKPermLen:
			o.SACKPermitted = true
		case kind == optTimestamp && l == optTSLen:
			o.Timestamp = true
			o.TSval = binary.BigEndian.Uint32(t[i+2:])
			o.TSecr = binary.BigEndian.Uint32(t[i+6:])
		}
		i += l
	}
	return o
}
