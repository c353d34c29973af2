package syncookie

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// testJar returns a Jar with keys drawn from seed, so that every run checks
// the same cookies.
func testJar(t testing.TB, seed uint64) *Jar {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, KeyLen)
	for i := 0; i < KeyLen; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	j, err := FromKeys(b)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

var (
	tuple = Tuple{Src: [4]byte{198, 18, 0, 10}, Dst: [4]byte{198, 18, 0, 2}, SrcPort: 51000, DstPort: 20000}
	// epoch is the first second of a cookie period.
	epoch = time.Unix(1_700_000_000-1_700_000_000%60, 0)
)

func TestMakeCheckMSS(t *testing.T) {
	j := testJar(t, 1)
	for _, c := range []struct{ client, want uint16 }{
		{0, 536}, {88, 536}, {535, 536}, {536, 536}, {1299, 536}, {1300, 1300}, {1439, 1300},
		{1440, 1440}, {1452, 1440}, {1459, 1440}, {1460, 1460}, {8960, 1460}, {65535, 1460},
	} {
		cookie, mss := j.Make(tuple, 0x12345678, c.client, epoch)
		if mss != c.want {
			t.Errorf("client MSS %d: Make chose %d, want %d", c.client, mss, c.want)
		}
		got, ok := j.Check(tuple, 0x12345678, cookie, epoch)
		if !ok || got != c.want {
			t.Errorf("client MSS %d: Check = %d, %v; want %d, true", c.client, got, ok, c.want)
		}
	}
}

// TestCheckWindow: a cookie validates from the start of its period to the
// end of the next one, and never before it was made or after.
func TestCheckWindow(t *testing.T) {
	j := testJar(t, 2)
	made := epoch.Add(59 * time.Second) // the last second of its period
	cookie, _ := j.Make(tuple, 7, 1460, made)
	for _, c := range []struct {
		at   time.Time
		want bool
	}{
		{epoch, true}, // same period, earlier second: the count is the same
		{made, true},
		{epoch.Add(Period), true},
		{epoch.Add(2*Period - time.Second), true},
		{epoch.Add(2 * Period), false},
		{epoch.Add(3 * Period), false},
		{epoch.Add(256 * Period), false}, // the count in the cookie is 8 bits: 256 periods on, it matches again, but hash2 does not
		{epoch.Add(257 * Period), false},
		{epoch.Add(-time.Second), false}, // a clock stepped back
		{epoch.Add(-Period), false},
	} {
		if mss, ok := j.Check(tuple, 7, cookie, c.at); ok != c.want || ok && mss != 1460 {
			t.Errorf("made at %v, checked at %+v: %d, %v; want %v", made.Unix(), c.at.Sub(epoch), mss, ok, c.want)
		}
	}
}

// TestCheckRejects: everything the cookie binds.
func TestCheckRejects(t *testing.T) {
	j := testJar(t, 3)
	const isn = 0xfffffff0
	cookie, _ := j.Make(tuple, isn, 1440, epoch)
	if _, ok := j.Check(tuple, isn, cookie, epoch); !ok {
		t.Fatal("the cookie does not validate at all")
	}
	var changed []Tuple
	for bit := range 32 {
		s, d := tuple, tuple
		s.Src[bit/8] ^= 1 << (bit % 8)
		d.Dst[bit/8] ^= 1 << (bit % 8)
		changed = append(changed, s, d)
	}
	for bit := range 16 {
		s, d := tuple, tuple
		s.SrcPort ^= 1 << bit
		d.DstPort ^= 1 << bit
		changed = append(changed, s, d)
	}
	swapped := Tuple{Src: tuple.Dst, Dst: tuple.Src, SrcPort: tuple.DstPort, DstPort: tuple.SrcPort}
	changed = append(changed, swapped)
	for _, c := range changed {
		if _, ok := j.Check(c, isn, cookie, epoch); ok {
			t.Errorf("validates for tuple %+v", c)
		}
	}
	// The ISN enters the cookie by addition, so an ISN off by 1 to 3 may
	// land on another MSS index, as in Linux; an attacker gains nothing by
	// it, having had to see this SYN-ACK to know the cookie at all.
	for _, d := range []uint32{4, 5, 0xfffffffc, 1 << 8, 1 << 24, 1 << 31} {
		if _, ok := j.Check(tuple, isn+d, cookie, epoch); ok {
			t.Errorf("validates for ISN %#x", isn+d)
		}
	}
	// Flipping one of the two lowest bits may land on another MSS index, as
	// in Linux; every other single-bit change must fail.
	for bit := 2; bit < 32; bit++ {
		if _, ok := j.Check(tuple, isn, cookie^1<<bit, epoch); ok {
			t.Errorf("validates with bit %d flipped", bit)
		}
	}
	for seed := uint64(10); seed < 20; seed++ {
		if _, ok := testJar(t, seed).Check(tuple, isn, cookie, epoch); ok {
			t.Errorf("validates under the keys of seed %d", seed)
		}
	}
	if _, ok := New().Check(tuple, isn, cookie, epoch); ok {
		t.Error("validates under random keys")
	}
}

// TestCookieLayout recomputes a cookie with the general SipHash over the
// message bytes as the hash's doc comment lays them out: the format a
// successor process depends on. The pinned value catches a change to it.
func TestCookieLayout(t *testing.T) {
	keys := make([]byte, KeyLen)
	for i := range keys {
		keys[i] = byte(i + 1)
	}
	j, err := FromKeys(keys)
	if err != nil {
		t.Fatal(err)
	}
	msg := func(count uint32) []byte {
		b := append(append([]byte(nil), tuple.Src[:]...), tuple.Dst[:]...)
		b = binary.BigEndian.AppendUint16(b, tuple.SrcPort)
		b = binary.BigEndian.AppendUint16(b, tuple.DstPort)
		return binary.LittleEndian.AppendUint32(b, count)
	}
	key := func(c int) (uint64, uint64) {
		return binary.LittleEndian.Uint64(keys[16*c:]), binary.LittleEndian.Uint64(keys[16*c+8:])
	}
	count := uint32(epoch.Unix() / 60)
	k0, k1 := key(0)
	h1 := uint32(sipHash(k0, k1, msg(0)))
	k0, k1 = key(1)
	h2 := uint32(sipHash(k0, k1, msg(count)))
	const isn, idx = 1000, 2 // MSS 1440
	want := h1 + isn + count<<24 + (h2+idx)&0xffffff

	got, mss := j.Make(tuple, isn, 1440, epoch)
	if got != want || mss != 1440 {
		t.Fatalf("Make = %#x, %d; recomputed %#x, 1440", got, mss, want)
	}
	if got != 0x51d24ceb {
		t.Errorf("cookie %#x differs from the pinned 0x51d24ceb: the format changed, and a successor would reject its predecessor's cookies", got)
	}
}

func TestKeys(t *testing.T) {
	a := New()
	b, err := FromKeys(a.Keys())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Keys(), b.Keys()) {
		t.Fatal("Keys does not round-trip through FromKeys")
	}
	cookie, _ := a.Make(tuple, 42, 1300, epoch)
	if mss, ok := b.Check(tuple, 42, cookie, epoch.Add(Period)); !ok || mss != 1300 {
		t.Errorf("successor's Check = %d, %v; want 1300, true", mss, ok)
	}
	if bytes.Equal(a.Keys(), New().Keys()) {
		t.Error("two New Jars share their keys")
	}
	for _, bad := range [][]byte{nil, make([]byte, KeyLen-1), make([]byte, KeyLen+1), make([]byte, KeyLen)} {
		if _, err := FromKeys(bad); err == nil {
			t.Errorf("FromKeys accepted %d bytes %x", len(bad), bad)
		}
	}
}

// guesses is how many cookies TestGuessRate guesses of each kind; fewer
// under the race detector (race_test.go).
var guesses = 4 << 20

// TestGuessRate measures how often a guessed cookie validates. Blind
// guesses must pass at about 8 in 2^32 (2 of 256 counts, 4 of 2^24 hash
// residues); guesses that know the count byte (an attacker who saw a
// cookie for another tuple learns nothing else) at 4 in 2^24.
func TestGuessRate(t *testing.T) {
	j := testJar(t, 4)
	n := guesses
	if testing.Short() {
		n = 1 << 20
	}
	r := rand.New(rand.NewPCG(5, 6))
	blind := 0
	for range n {
		if _, ok := j.Check(tuple, 99, r.Uint32(), epoch); ok {
			blind++
		}
	}
	// Expected: n * 2^-29, under 0.01. Allowing 3 is generous and still
	// two orders of magnitude below one in 2^24.
	if blind > 3 {
		t.Errorf("%d of %d blind guesses validated", blind, n)
	}

	// With the count byte right, only the 24-bit check remains: expected
	// n * 4 / 2^24, 1 for n = 2^22.
	real, _ := j.Make(tuple, 99, 536, epoch)
	informed := 0
	for range n {
		guess := real&^0xffffff | r.Uint32()&0xffffff
		if _, ok := j.Check(tuple, 99, guess, epoch); ok {
			informed++
		}
	}
	limit := 4*n>>24 + 8
	t.Logf("blind %d of %d, informed %d of %d (expected %.2g and %.2g)", blind, n, informed, n, float64(n)/(1<<29), float64(n)/(1<<22))
	if informed > limit {
		t.Errorf("%d of %d guesses with the right count validated, more than %d", informed, n, limit)
	}
}

func TestTimestampOptions(t *testing.T) {
	nows := []uint32{0, 1, 62, 63, 64, 65, 0x7fffffff, 0x80000000, 0xffffffc0, 0xffffffff}
	r := rand.New(rand.NewPCG(7, 8))
	for range 20 {
		nows = append(nows, r.Uint32())
	}
	for _, now := range nows {
		for ws := -1; ws <= MaxWScale; ws++ {
			for _, sack := range []bool{false, true} {
				for _, ecn := range []bool{false, true} {
					ts := EncodeTS(now, ws, sack, ecn)
					if back := now - ts; back >= 64 {
						t.Fatalf("EncodeTS(%#x, %d, %v, %v) = %#x: %d ticks from now, want 0..63 behind", now, ws, sack, ecn, ts, int32(ts-now))
					}
					gws, gsack, gecn := DecodeTS(ts)
					if gws != ws || gsack != sack || gecn != ecn {
						t.Fatalf("DecodeTS(EncodeTS(%#x, %d, %v, %v)) = %d, %v, %v", now, ws, sack, ecn, gws, gsack, gecn)
					}
				}
			}
		}
		// RFC 7323 section 2.3: a shift above 14 counts as 14.
		for _, ws := range []int{15, 16, 255, 1 << 20} {
			if gws, _, _ := DecodeTS(EncodeTS(now, ws, false, false)); gws != MaxWScale {
				t.Errorf("window scale %d decodes as %d, want 14", ws, gws)
			}
		}
	}
	// Linux's layout, bit for bit: wscale 7, SACK, no ECN at now 0x1000.
	if ts := EncodeTS(0x1000, 7, true, false); ts != 0x1000-64+0x17 {
		t.Errorf("EncodeTS(0x1000, 7, sack) = %#x, want %#x", ts, 0x1000-64+0x17)
	}
	if ts := EncodeTS(0x10ff, -1, false, true); ts != 0x10ef {
		t.Errorf("EncodeTS(0x10ff, none, ecn) = %#x, want 0x10ef", ts)
	}
}

// TestConcurrent: one Jar, many goroutines (run with -race).
func TestConcurrent(t *testing.T) {
	j := testJar(t, 9)
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Go(func() {
			tp := tuple
			tp.SrcPort = uint16(1000 + g)
			for i := range uint32(2000) {
				c, mss := j.Make(tp, i, 1460, epoch)
				if got, ok := j.Check(tp, i, c, epoch); !ok || got != mss {
					errs <- "a cookie made concurrently does not validate"
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestNoAllocs(t *testing.T) {
	j := testJar(t, 10)
	cookie, _ := j.Make(tuple, 1, 1460, epoch)
	if n := testing.AllocsPerRun(100, func() { j.Make(tuple, 1, 1460, epoch) }); n != 0 {
		t.Errorf("Make allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { j.Check(tuple, 1, cookie, epoch) }); n != 0 {
		t.Errorf("Check allocates %v times", n)
	}
}

func BenchmarkMake(b *testing.B) {
	j := testJar(b, 11)
	b.ReportAllocs()
	var isn uint32
	for b.Loop() {
		isn++
		j.Make(tuple, isn, 1460, epoch)
	}
}

func BenchmarkCheck(b *testing.B) {
	j := testJar(b, 12)
	cookie, _ := j.Make(tuple, 1, 1460, epoch)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := j.Check(tuple, 1, cookie, epoch); !ok {
			b.Fatal("cookie rejected")
		}
	}
}

// BenchmarkCheckInvalid is the cost of a flood of forged ACKs: most fail
// on the count byte after one hash.
func BenchmarkCheckInvalid(b *testing.B) {
	j := testJar(b, 13)
	b.ReportAllocs()
	var guess uint32
	for b.Loop() {
		guess += 0x9e3779b9
		j.Check(tuple, 1, guess, epoch)
	}
}
