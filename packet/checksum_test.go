package packet

import (
	"math/rand/v2"
	"testing"
)

func TestSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.IntN(1600))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if i%7 == 0 {
			for j := range b {
				b[j] = 0xff // all ones stresses the end-around carry
			}
		}
		if got, want := Fold(Sum(b, 0)), uint16(refSum(b)); got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
			t.Fatalf("len %d: Sum folds to %#04x, reference %#04x", len(b), got, want)
		}
	}
}

func TestChecksumRFC1071Example(t *testing.T) {
	// RFC 1071 section 3: the sum of these bytes is ddf2, the checksum 220d.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Checksum(b); got != 0x220d {
		t.Fatalf("Checksum = %#04x, want 0x220d", got)
	}
}

func TestIncrementalMatchesFull(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 5000; i++ {
		b := make([]byte, 20)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		b[10], b[11] = 0, 0
		c := Checksum(b)
		b[10], b[11] = byte(c>>8), byte(c)
		var d delta
		old := [4]byte(b[12:16])
		nw := [4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())}
		d.add32(old, nw)
		copy(b[12:16], nw[:])
		c = d.apply(c)
		b[10], b[11] = byte(c>>8), byte(c)
		if refSum(b) != 0xffff {
			t.Fatalf("incremental update does not verify for %v -> %v", old, nw)
		}
	}
}
