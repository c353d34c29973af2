package packet

import "encoding/binary"

// Sum adds b to the running one's-complement sum acc (RFC 1071) and returns
// the unfolded result. An odd trailing byte is padded with zero, so Sum may
// only be chained across pieces whose lengths are even, as every header is.
func Sum(b []byte, acc uint64) uint64 {
	// Eight bytes at a time into a 64-bit accumulator: the carries collect in
	// the upper bits and fold out at the end, which is what makes the
	// one's-complement sum independent of word size (RFC 1071 section 2(B)).
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		acc1 := acc + v
		if acc1 < acc {
			acc1++ // end-around carry
		}
		acc = acc1
		b = b[8:]
	}
	// Fold to 33 bits so the word additions below cannot overflow.
	acc = (acc >> 32) + (acc & 0xffffffff)
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// Fold folds a 64-bit one's-complement accumulator to 16 bits.
func Fold(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// Checksum returns the Internet checksum of b: the complement of its folded
// one's-complement sum, ready to store in a header.
func Checksum(b []byte) uint16 {
	return ^Fold(Sum(b, 0))
}

// PseudoHeaderSum is the unfolded sum of the IPv4 pseudo-header used by TCP
// (RFC 793 section 3.1): source, destination, protocol and segment length.
func PseudoHeaderSum(src, dst [4]byte, proto uint8, length int) uint64 {
	return uint64(binary.BigEndian.Uint16(src[0:2])) + uint64(binary.BigEndian.Uint16(src[2:4])) +
		uint64(binary.BigEndian.Uint16(dst[0:2])) + uint64(binary.BigEndian.Uint16(dst[2:4])) +
		uint64(proto) + uint64(length)
}

// delta accumulates the change of 16-bit words for an incremental update
// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). Keeping the difference
// separate lets one rewrite touch several fields and adjust each checksum
// once.
type delta uint64

// add records that the 16-bit word old became new.
func (d *delta) add(old, new uint16) {
	*d += delta(^old) + delta(new)
}

// add32 records that a 32-bit field (an IPv4 address) changed.
func (d *delta) add32(old, new [4]byte) {
	d.add(binary.BigEndian.Uint16(old[0:2]), binary.BigEndian.Uint16(new[0:2]))
	d.add(binary.BigEndian.Uint16(old[2:4]), binary.BigEndian.Uint16(new[2:4]))
}

// apply returns a stored (complemented) checksum adjusted by d.
func (d delta) apply(check uint16) uint16 {
	return ^Fold(uint64(^check) + uint64(d))
}

// applyPartial adjusts a checksum field in the CHECKSUM_PARTIAL state. There
// the field holds the folded pseudo-header sum, not complemented (Linux
// __tcp_v4_send_check stores ~csum_fold(...)), and the device or the
// receiving kernel later sums the segment over it and complements. So the
// change is added to the sum directly.
func (d delta) applyPartial(sum uint16) uint16 {
	return Fold(uint64(sum) + uint64(d))
}
