package packet

import (
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// sackOpt is a SACK option with the given edges (left, right, left, ...).
func sackOpt(edges ...uint32) layers.TCPOption {
	d := make([]byte, 4*len(edges))
	for i, e := range edges {
		binary.BigEndian.PutUint32(d[4*i:], e)
	}
	return layers.TCPOption{OptionType: layers.TCPOptionKindSACK, OptionLength: uint8(2 + len(d)), OptionData: d}
}

// sackEdges reads back the edges of the first SACK option, walking the
// options independently of AddSACK.
func sackEdges(t *testing.T, tcp TCP) []uint32 {
	t.Helper()
	for i := TCPMinLen; i < tcp.HeaderLen(); {
		if tcp[i] == optNOP {
			i++
			continue
		}
		if tcp[i] == optSACK {
			var e []uint32
			for j := i + 2; j < i+int(tcp[i+1]); j += 4 {
				e = append(e, binary.BigEndian.Uint32(tcp[j:]))
			}
			return e
		}
		i += int(tcp[i+1])
	}
	return nil
}

func TestSeqEnd(t *testing.T) {
	for _, tc := range []struct {
		name     string
		spec     segSpec
		wantPlus uint32
	}{
		{"syn", segSpec{syn: true}, 1}, // padded to 60 bytes by the serializer: padding is not payload
		{"ack", segSpec{ackf: true}, 0},
		{"data", segSpec{ackf: true, payload: make([]byte, 1000)}, 1000},
		{"data+fin", segSpec{ackf: true, fin: true, payload: []byte("bye")}, 4},
		{"wraps", segSpec{ackf: true, seq: 0xffff_fffe, payload: []byte("abcd")}, 4},
	} {
		tc.spec.src, tc.spec.dst, tc.spec.sport, tc.spec.dport = ipClient, ipLB, 1, 20000
		if tc.spec.seq == 0 {
			tc.spec.seq = 1000
		}
		f := parsed(t, build(t, tc.spec))
		if got, want := f.TCP.SeqEnd(), tc.spec.seq+tc.wantPlus; got != want {
			t.Errorf("%s: SeqEnd %d, want %d", tc.name, got, want)
		}
	}
}

func TestAddSeqAck(t *testing.T) {
	for _, state := range []CsumState{CsumComplete, CsumPartial} {
		spec := segSpec{src: ipClient, dst: ipLB, sport: 1, dport: 20000, seq: 0xffff_ff00, ack: 5, ackf: true, payload: []byte("hello")}
		f := parsed(t, build(t, spec))
		if state == CsumPartial {
			makePartial(f.IP)
		}
		f.TCP.AddSeqAck(0x1234_5678, ^uint32(9), state) // ack - 10, wrapping below 0
		if state == CsumPartial {
			completePartial(f.IP)
		}
		if got, want := f.TCP.Seq(), uint32(0x1234_5578); got != want { // 0xffff_ff00 + 0x1234_5678 mod 2^32
			t.Errorf("state %d: seq %#x, want %#x", state, got, want)
		}
		if got, want := f.TCP.Ack(), ^uint32(4); got != want { // 5 - 10 mod 2^32
			t.Errorf("state %d: ack %#x, want %#x", state, got, want)
		}
		if !tcpOK(f.IP) {
			t.Errorf("state %d: checksum does not verify after the change", state)
		}
	}
}

func TestAddSACK(t *testing.T) {
	nop := layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	tests := []struct {
		name  string
		opts  []layers.TCPOption
		edges []uint32
	}{
		{"nop nop ts nop nop sack", []layers.TCPOption{nop, nop, tsOpt(1, 2), nop, nop, sackOpt(100, 200)}, []uint32{100, 200}},
		{"odd offset, three blocks", []layers.TCPOption{nop, sackOpt(1, 2, 0xffff_fff0, 5, 7, 9), nop, nop, nop}, []uint32{1, 2, 0xffff_fff0, 5, 7, 9}},
		{"none", []layers.TCPOption{nop, nop, tsOpt(1, 2)}, nil},
	}
	const by = uint32(0x8000_0001)
	for _, tc := range tests {
		for _, state := range []CsumState{CsumComplete, CsumPartial} {
			spec := segSpec{src: ipBackend, dst: ipLB, sport: 8090, dport: 40000, ackf: true, tcpOptions: tc.opts}
			f := parsed(t, build(t, spec))
			ts := f.TCP.TimestampOption()
			val, ecr := f.TCP.TSval(ts), f.TCP.TSecr(ts)
			if state == CsumPartial {
				makePartial(f.IP)
			}
			f.TCP.AddSACK(by, state)
			if state == CsumPartial {
				completePartial(f.IP)
			}
			got := sackEdges(t, f.TCP)
			if len(got) != len(tc.edges) {
				t.Fatalf("%s: edges %v, want %d of them", tc.name, got, len(tc.edges))
			}
			for i := range got {
				if got[i] != tc.edges[i]+by {
					t.Errorf("%s: edge %d is %#x, want %#x", tc.name, i, got[i], tc.edges[i]+by)
				}
			}
			if ts >= 0 && (f.TCP.TSval(ts) != val || f.TCP.TSecr(ts) != ecr) {
				t.Errorf("%s: the timestamps changed too", tc.name)
			}
			if !tcpOK(f.IP) {
				t.Errorf("%s (state %d): checksum does not verify after the change", tc.name, state)
			}
		}
	}
}

func TestAddSACKMalformed(t *testing.T) {
	// A SACK option whose length is not 2+8n, or that runs past the header,
	// is left alone, without a panic.
	for _, opts := range [][]byte{
		{5, 6, 1, 2, 3, 4},                 // one edge only
		{5, 10, 0, 0, 0, 1, 0, 0},          // claims 10 bytes, 8 present
		{5, 2},                             // no blocks
		{1, 5},                             // kind with no length byte
		{0, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2}, // end of options first
	} {
		hdr := make([]byte, 20+(len(opts)+3)/4*4)
		copy(hdr[20:], opts)
		hdr[12] = byte(len(hdr)/4) << 4
		before := string(hdr)
		TCP(hdr).AddSACK(7, CsumPartial)
		if string(hdr) != before {
			t.Errorf("options %v: changed to %v", opts, hdr[20:])
		}
	}
}

func TestAddInnerSeq(t *testing.T) {
	// The backend-side hop quotes a segment whose sequence number rawlb
	// had shifted; toward the client the quote must carry the client's own
	// number again, with every checksum still valid.
	sent := build(t, segSpec{src: ipLB, dst: ipBackend, sport: natPort, dport: backendPort, seq: 50, ackf: true, payload: []byte("quoted payload!")})[14:]
	router := [4]byte{198, 18, 1, 1}
	for _, quoteLen := range []int{28, len(sent)} {
		f := parsed(t, icmpFrame(t, router, ipLB, ICMPDestUnreachable, ICMPCodeFragNeeded, 1400, sent, quoteLen))
		f.AddInnerSeq(^uint32(99)) // -100, wrapping below 0
		f.TranslateICMP(ipLB, ipClient, ipClient, 51000, ipLB, 20000)
		if got, want := binary.BigEndian.Uint32(f.InnerTCP[4:8]), ^uint32(49); got != want { // 50 - 100 mod 2^32
			t.Errorf("quote %d: inner seq %#x, want %#x", quoteLen, got, want)
		}
		if refSum(f.ICMP) != 0xffff {
			t.Errorf("quote %d: ICMP checksum does not verify", quoteLen)
		}
		if quoteLen == len(sent) && !tcpOK(f.Inner) {
			t.Errorf("quote %d: quoted TCP checksum does not verify", quoteLen)
		}
	}
}

func TestMaxSACK(t *testing.T) {
	nop := layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	tests := []struct {
		name string
		opts []layers.TCPOption
		edge uint32
		ok   bool
	}{
		{"one block", []layers.TCPOption{nop, nop, tsOpt(1, 2), nop, nop, sackOpt(100, 200)}, 200, true},
		{"highest is not last", []layers.TCPOption{nop, nop, sackOpt(500, 900, 100, 200, 300, 400)}, 900, true},
		// Sequence space wraps: 5 comes after 0xffff_fff0.
		{"across the wrap", []layers.TCPOption{nop, nop, sackOpt(0xffff_ff00, 0xffff_fff0, 0xffff_fff8, 5)}, 5, true},
		{"none", []layers.TCPOption{nop, nop, tsOpt(1, 2)}, 0, false},
	}
	for _, tc := range tests {
		f := parsed(t, build(t, segSpec{src: ipBackend, dst: ipLB, sport: 8090, dport: 40000, ackf: true, tcpOptions: tc.opts}))
		if edge, ok := f.TCP.MaxSACK(); edge != tc.edge || ok != tc.ok {
			t.Errorf("%s: MaxSACK = %d, %v; want %d, %v", tc.name, edge, ok, tc.edge, tc.ok)
		}
	}
	// Malformed lists: nothing read past the first option that does not
	// fit, and no panic.
	for _, opts := range [][]byte{
		{5, 6, 1, 2, 3, 4},
		{5, 10, 0, 0, 0, 1, 0, 0},
		{5, 2},
		{1, 5},
		{0, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2},
	} {
		hdr := make([]byte, 20+(len(opts)+3)/4*4)
		copy(hdr[20:], opts)
		hdr[12] = byte(len(hdr)/4) << 4
		if edge, ok := TCP(hdr).MaxSACK(); ok {
			t.Errorf("options %v: MaxSACK = %d, want none", opts, edge)
		}
	}
}
