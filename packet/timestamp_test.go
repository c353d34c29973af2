package packet

import (
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

func tsOpt(val, ecr uint32) layers.TCPOption {
	d := make([]byte, 8)
	binary.BigEndian.PutUint32(d, val)
	binary.BigEndian.PutUint32(d[4:], ecr)
	return layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: d}
}

func TestTimestamps(t *testing.T) {
	nop := layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	mss := layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}}
	sack := layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	ws := layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}
	tests := []struct {
		name string
		opts []layers.TCPOption
		off  int
	}{
		{"nop nop ts", []layers.TCPOption{nop, nop, tsOpt(0xfffffff0, 77)}, 22},
		{"linux syn", []layers.TCPOption{mss, sack, tsOpt(1, 0), nop, ws}, 26},
		{"odd offset", []layers.TCPOption{nop, tsOpt(5, 6), nop}, 21},
		{"none", []layers.TCPOption{mss, nop, ws}, -1},
	}
	for _, tc := range tests {
		for _, state := range []CsumState{CsumComplete, CsumPartial} {
			spec := segSpec{src: ipClient, dst: ipLB, sport: 1, dport: 20000, ackf: true, tcpOptions: tc.opts, payload: []byte("abc")}
			f := parsed(t, build(t, spec))
			off := f.TCP.TimestampOption()
			if off != tc.off {
				t.Fatalf("%s: option at %d, want %d", tc.name, off, tc.off)
			}
			if off < 0 {
				continue
			}
			val, ecr := f.TCP.TSval(off), f.TCP.TSecr(off)
			if state == CsumPartial {
				makePartial(f.IP)
			}
			minus7 := ^uint32(6) // -7 modulo 2^32
			f.TCP.AddTimestamps(off, 0x20, minus7, state)
			if state == CsumPartial {
				completePartial(f.IP)
			}
			if f.TCP.TSval(off) != val+0x20 || f.TCP.TSecr(off) != ecr-7 {
				t.Errorf("%s: TSval %d TSecr %d, want %d %d", tc.name, f.TCP.TSval(off), f.TCP.TSecr(off), val+0x20, ecr-7)
			}
			if !tcpOK(f.IP) {
				t.Errorf("%s (state %d): checksum does not verify after the change", tc.name, state)
			}
		}
	}
}

func TestTimestampOptionMalformed(t *testing.T) {
	// Option lengths that run past the header, or are too short, end the
	// walk without a panic or a false match.
	for _, opts := range [][]byte{
		{8, 10, 0, 0},          // TS claiming 10 bytes, 4 present
		{2, 0, 0, 0},           // length 0
		{2, 1, 0, 0},           // length 1
		{1, 1, 1, 8},           // kind with no length byte
		{3, 3, 7, 8, 9, 1, 2},  // stops inside
		{0, 8, 10, 1, 2, 3, 4}, // end of options first
	} {
		hdr := make([]byte, 20+(len(opts)+3)/4*4)
		copy(hdr[20:], opts)
		hdr[12] = byte(len(hdr)/4) << 4
		if off := TCP(hdr).TimestampOption(); off != -1 {
			t.Errorf("options %v: found a timestamp at %d", opts, off)
		}
	}
}
