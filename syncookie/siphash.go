package syncookie

import (
	"encoding/binary"
	"math/bits"
)

// SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF",
// 2012), the PRF Linux has keyed its SYN cookies with since 4.13. It is
// written out here because the module proxy serves no maintained SipHash,
// and the cookie needs only the 16-byte case, which sipHash16 does on
// registers without touching memory. sipHash is the general form, kept so
// that the tests can run the paper's reference vectors and show sipHash16
// computes the same function.

// The initialisation constants: "somepseudorandomlygeneratedbytes".
const (
	sipC0 = 0x736f6d6570736575
	sipC1 = 0x646f72616e646f6d
	sipC2 = 0x6c7967656e657261
	sipC3 = 0x7465646279746573
)

// sipRound is one SipRound of the paper's section 2.
func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}

// sipHash returns SipHash-2-4 of msg under the key (k0, k1), the key's
// first and last eight bytes read little-endian.
func sipHash(k0, k1 uint64, msg []byte) uint64 {
	v0, v1, v2, v3 := k0^sipC0, k1^sipC1, k0^sipC2, k1^sipC3
	n := len(msg)
	for ; len(msg) >= 8; msg = msg[8:] {
		m := binary.LittleEndian.Uint64(msg)
		v3 ^= m
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= m
	}
	// The last block: the remaining bytes, and the length mod 256 in the
	// top byte.
	b := uint64(n) << 56
	for i, c := range msg {
		b |= uint64(c) << (8 * i)
	}
	return sipFinish(v0, v1, v2, v3, b)
}

// sipHash16 is sipHash of a 16-byte message given as its two
// little-endian words.
func sipHash16(k0, k1, m0, m1 uint64) uint64 {
	v0, v1, v2, v3 := k0^sipC0, k1^sipC1, k0^sipC2, k1^sipC3
	v3 ^= m0
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= m0
	v3 ^= m1
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= m1
	return sipFinish(v0, v1, v2, v3, 16<<56)
}

// sipFinish compresses the last block b and runs the four finalisation
// rounds.
func sipFinish(v0, v1, v2, v3, b uint64) uint64 {
	v3 ^= b
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= b
	v2 ^= 0xff
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	return v0 ^ v1 ^ v2 ^ v3
}
