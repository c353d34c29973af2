package syncookie

import (
	"encoding/binary"
	"testing"
	"time"
)

// FuzzCookie: for any tuple, ISN, MSS and time, a made cookie validates in
// its period and the next with the MSS Make chose, and not two periods on
// or a period before; any guessed cookie either fails or yields an MSS of
// the table. DecodeTS inverts EncodeTS for any clock.
func FuzzCookie(f *testing.F) {
	f.Add(uint32(0xc612000a), uint32(0xc6120002), uint16(51000), uint16(20000), uint32(1), uint16(1460), int64(1_700_000_000), uint32(0), uint32(12345), int8(7), uint8(3))
	f.Add(uint32(0), uint32(0), uint16(0), uint16(0), uint32(0xffffffff), uint16(0), int64(0), uint32(0xffffffff), uint32(0), int8(-1), uint8(0))
	f.Add(uint32(0xffffffff), uint32(1), uint16(65535), uint16(1), uint32(1<<31), uint16(1300), int64(1<<40), uint32(1<<24), uint32(63), int8(14), uint8(1))
	j := testJar(f, 99)
	f.Fuzz(func(t *testing.T, src, dst uint32, sport, dport uint16, isn uint32, clientMSS uint16, unix int64, guess, tsNow uint32, ws int8, flags uint8) {
		tp := Tuple{SrcPort: sport, DstPort: dport}
		binary.BigEndian.PutUint32(tp.Src[:], src)
		binary.BigEndian.PutUint32(tp.Dst[:], dst)
		// Keep the clock where the period arithmetic cannot overflow.
		unix %= 1 << 50
		if unix < 0 {
			unix = -unix
		}
		now := time.Unix(unix, 0)
		cookie, mss := j.Make(tp, isn, clientMSS, now)
		if mss > clientMSS && mss != 536 || mss != 536 && mss != 1300 && mss != 1440 && mss != 1460 {
			t.Fatalf("Make chose MSS %d for a client's %d", mss, clientMSS)
		}
		for _, later := range []time.Duration{0, Period} {
			if got, ok := j.Check(tp, isn, cookie, now.Add(later)); !ok || got != mss {
				t.Fatalf("Check %v later = %d, %v; want %d, true", later, got, ok, mss)
			}
		}
		for _, off := range []time.Duration{2 * Period, -Period} {
			if _, ok := j.Check(tp, isn, cookie, now.Add(off)); ok {
				t.Fatalf("validates %v after it was made", off)
			}
		}
		if got, ok := j.Check(tp, isn, guess, now); ok && got != 536 && got != 1300 && got != 1440 && got != 1460 {
			t.Fatalf("a guess validated with MSS %d", got)
		}

		sack, ecn := flags&1 != 0, flags&2 != 0
		ts := EncodeTS(tsNow, int(ws), sack, ecn)
		want := int(ws)
		if want < 0 {
			want = -1
		}
		want = min(want, MaxWScale)
		if gws, gsack, gecn := DecodeTS(ts); gws != want || gsack != sack || gecn != ecn || tsNow-ts >= 64 {
			t.Fatalf("EncodeTS(%#x, %d, %v, %v) = %#x decodes as %d, %v, %v", tsNow, ws, sack, ecn, ts, gws, gsack, gecn)
		}
	})
}
