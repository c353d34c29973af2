package fastpath

import (
	"encoding/binary"
	"testing"
)

// FuzzProgram runs any frame through the program with one flow offloaded:
// the program either hands the frame up unchanged or forwards it rewritten
// for that flow, the same length, with checksums that verify if they
// verified before.
func FuzzProgram(f *testing.F) {
	for _, s := range []seg{
		{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH, win: 502, ts: &[2]uint32{1, 2}, payload: 100},
		{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 1, ack: cISN + 1 + seqOff, flags: fACK, win: 509, ts: &[2]uint32{3, 4}, sack: true},
		{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fFIN, win: 100},
		{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 100, mss: true},
	} {
		f.Add(frame(s))
	}
	l := newLab(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		// The kernel's test run wants the IPv4 header, and one page.
		if len(in) < 34 || len(in) > MaxHeaders+1000 {
			return
		}
		l.reset(t)
		validBefore := len(in) >= 54 && verifies(in)
		ret, out := l.run(t, in)
		switch ret {
		case actOK:
			if string(out) != string(in) {
				t.Fatalf("handed up changed:\n% x\n% x", in, out)
			}
		case actRedirect:
			ip := out[14:]
			dir := 0
			if [4]byte(ip[16:20]) == ipClient {
				dir = 1
			}
			want := [2][4]byte{ipBE, ipClient}[dir]
			if [4]byte(ip[16:20]) != want || [4]byte(ip[12:16]) != ipVIP {
				t.Fatalf("forwarded to %v from %v", ip[16:20], ip[12:16])
			}
			if validBefore && !verifies(out) {
				t.Fatalf("checksums verified before the rewrite and not after:\n% x\n% x", in, out)
			}
		default:
			t.Fatalf("action %d", ret)
		}
	})
}

// verifies reports whether a frame's IPv4 and TCP checksums verify, over
// the IP length the header gives.
func verifies(b []byte) bool {
	ip := b[14:]
	ihl := int(ip[0]&15) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || tot < ihl+20 || tot > len(ip) {
		return false
	}
	if fold(sum(ip[:ihl], 0)) != 0xffff {
		return false
	}
	ps := sum(ip[12:20], 0) + 6 + uint32(tot-ihl)
	return fold(sum(ip[ihl:tot], ps)) == 0xffff
}
