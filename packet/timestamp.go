package packet

import "encoding/binary"

// TCP timestamp option (RFC 7323 section 3): kind 8, length 10, TSval then
// TSecr.
const (
	optEnd       = 0
	optNOP       = 1
	optTimestamp = 8
	optTSLen     = 10
)

// TimestampOption returns the offset of the timestamp option within the
// TCP header (the kind byte; TSval follows at +2, TSecr at +6), or -1 if
// the segment carries none. The usual layout, NOP NOP TS right after the
// fixed header, is recognised without walking the options.
func (t TCP) TimestampOption() int {
	hl := t.HeaderLen()
	if hl >= TCPMinLen+12 && t[20] == optNOP && t[21] == optNOP && t[22] == optTimestamp && t[23] == optTSLen {
		return 22
	}
	for i := TCPMinLen; i < hl; {
		switch t[i] {
		case optEnd:
			return -1
		case optNOP:
			i++
			continue
		}
		if i+1 >= hl {
			return -1
		}
		l := int(t[i+1])
		if l < 2 || i+l > hl {
			return -1
		}
		if t[i] == optTimestamp && l == optTSLen {
			return i
		}
		i += l
	}
	return -1
}

// TSval returns the timestamp value of the option at off.
func (t TCP) TSval(off int) uint32 { return binary.BigEndian.Uint32(t[off+2:]) }

// TSecr returns the echoed timestamp of the option at off.
func (t TCP) TSecr(off int) uint32 { return binary.BigEndian.Uint32(t[off+6:]) }

// AddTimestamps adds valDelta to TSval and ecrDelta to TSecr of the option
// at off, modulo 2^32, adjusting a complete checksum for the words that
// changed. A partial checksum needs nothing: the options are part of the
// segment the offload sums later. The option may start at any byte, so the
// checksum is adjusted over the 16-bit words (counted from the header's
// start) that cover it.
func (t TCP) AddTimestamps(off int, valDelta, ecrDelta uint32, state CsumState) {
	if valDelta == 0 && ecrDelta == 0 {
		return
	}
	d := t.wordsBefore(off+2, off+optTSLen, state)
	binary.BigEndian.PutUint32(t[off+2:], t.TSval(off)+valDelta)
	binary.BigEndian.PutUint32(t[off+6:], t.TSecr(off)+ecrDelta)
	t.wordsAfter(off+2, off+optTSLen, state, d)
}
