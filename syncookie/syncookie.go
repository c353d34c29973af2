// Package syncookie makes and checks TCP SYN cookies (RFC 4987 section
// 3.6), so that rawlb can answer a SYN without keeping state and open the
// connection to a backend only once the client has proved, with its ACK,
// that it receives at the address it claims.
//
// The arithmetic is Linux's (net/ipv4/syncookies.c): the SYN-ACK's
// sequence number is
//
//	hash1(tuple) + clientISN + count<<24 + ((hash2(tuple, count) + mssIndex) mod 2^24)
//
// with count a clock that steps once a Period, and the hashes SipHash-2-4
// under two secret keys. The cookie carries the MSS (one of four values),
// and is valid for the count it was made in and the one after. The TCP
// options a cookie has no room for (window scale, SACK-permitted, ECN) ride
// in the low six bits of the SYN-ACK's TSval, which the client echoes in
// the TSecr of its ACK (EncodeTS, DecodeTS). A client that sends no
// timestamps loses them: its connection goes without window scaling and
// SACK, exactly as it would behind a Linux listener in cookie mode.
//
// Nothing here allocates or locks: a Jar does not change once made, and
// every worker may use the same one.
package syncookie

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"
)

// Period is how long one count of the cookie clock lasts, Linux's
// TCP_SYNCOOKIE_PERIOD. A cookie validates during the period it was made
// in and the next one, so it lives between one and two periods: long
// enough for a SYN-ACK's retransmissions (1 s, 3 s, 7 s, ...) to be
// answered, short enough that a captured cookie soon stops working.
const Period = time.Minute

// maxAge is how many counts a cookie validates for (Linux's
// MAX_SYNCOOKIE_AGE): the current and the previous one.
const maxAge = 2

// The cookie's layout: the top 8 bits carry the count, the low 24 the
// keyed hash plus the MSS index.
const (
	cookieBits = 24
	cookieMask = 1<<cookieBits - 1
)

// mssTable holds the MSS values a cookie can carry, sorted. They are
// Linux's, chosen from the measured distribution of advertised MSS values
// (Alcock and Nelson, 2011): 1460 for Ethernet, 1440 for PPPoE and
// tunnels, 1300 for the smaller tunnels, 536 for the rest (RFC 9293
// section 3.7.1's default).
var mssTable = [...]uint16{536, 1300, 1440, 1460}

// KeyLen is the length of a Jar's key material.
const KeyLen = 32

// Tuple identifies the connection a cookie is for: the client's address
// and port, and the balancer's (the service's) address and port.
type Tuple struct {
	Src, Dst         [4]byte
	SrcPort, DstPort uint16
}

// Jar holds the two SipHash keys: keys[0] keys the hash that hides the
// client's ISN, keys[1] the one that binds count and MSS index to the
// tuple, as Linux's syncookie_secret[2]. Each key is (k0, k1) as the
// SipHash paper reads 16 key bytes: two little-endian words.
type Jar struct {
	keys [2][2]uint64
}

// New returns a Jar with fresh random keys.
func New() *Jar {
	var b [KeyLen]byte
	// crypto/rand.Read never fails since Go 1.24: it crashes the program
	// instead of handing out weak keys.
	rand.Read(b[:])
	return jarFrom(b[:])
}

// FromKeys returns a Jar with the key material a predecessor's Keys
// returned, so that after a binary upgrade the new process validates the
// cookies the old one handed out in the last two periods.
func FromKeys(b []byte) (*Jar, error) {
	if len(b) != KeyLen {
		return nil, fmt.Errorf("syncookie: key material is %d bytes, want %d (as Jar.Keys returns it)", len(b), KeyLen)
	}
	var or byte
	for _, c := range b {
		or |= c
	}
	if or == 0 {
		return nil, errors.New("syncookie: key material is all zero: pass what Jar.Keys returned, or use New for random keys")
	}
	return jarFrom(b), nil
}

func jarFrom(b []byte) *Jar {
	j := new(Jar)
	for i := range j.keys {
		j.keys[i][0] = binary.LittleEndian.Uint64(b[16*i:])
		j.keys[i][1] = binary.LittleEndian.Uint64(b[16*i+8:])
	}
	return j
}

// Keys returns the key material, for FromKeys in a successor process (or
// in another balancer behind the same address, so that whichever receives
// the ACK validates it). It is a secret: whoever holds it can forge
// cookies, so hand it over with the ring descriptors and flow state, never
// through a log, a flag or a file others can read.
func (j *Jar) Keys() []byte {
	b := make([]byte, KeyLen)
	for i := range j.keys {
		binary.LittleEndian.PutUint64(b[16*i:], j.keys[i][0])
		binary.LittleEndian.PutUint64(b[16*i+8:], j.keys[i][1])
	}
	return b
}

// hash is SipHash-2-4 under key c of the 16-byte message
//
//	src (4) | dst (4) | srcPort (2, big-endian) | dstPort (2, big-endian) | count (4, little-endian)
//
// truncated to 32 bits. The layout is part of the cookie format: a
// successor process must hash the same bytes to validate old cookies.
func (j *Jar) hash(c int, t *Tuple, count uint32) uint32 {
	m0 := uint64(binary.LittleEndian.Uint32(t.Src[:])) | uint64(binary.LittleEndian.Uint32(t.Dst[:]))<<32
	m1 := uint64(bits.ReverseBytes16(t.SrcPort)) | uint64(bits.ReverseBytes16(t.DstPort))<<16 | uint64(count)<<32
	return uint32(sipHash16(j.keys[c][0], j.keys[c][1], m0, m1))
}

// counter is the cookie clock at now. It counts wall-clock periods since
// the Unix epoch, not time since boot as Linux's jiffies do, so that a
// successor process, which has its own monotonic clock, counts the same.
// A clock stepped back by a period or more invalidates the cookies in
// flight, which costs their clients one SYN retransmission.
func counter(now time.Time) uint32 {
	const p = int64(Period / time.Second)
	s := now.Unix()
	q := s / p
	if s%p < 0 { // floor, not truncation, so a period before 1970 lasts a period too
		q--
	}
	return uint32(q)
}

// Make returns the cookie for the SYN-ACK that answers a client's SYN: the
// SYN-ACK's sequence number. clientISN is the SYN's sequence number,
// clientMSS its MSS option (0 if it had none). The cookie carries the
// largest MSS in Linux's table (536, 1300, 1440, 1460) that is not above
// clientMSS, which Make returns for the SYN-ACK's own MSS option and the
// backend connection; below 536, or without an option, it carries 536,
// the MSS every host must accept (RFC 9293 section 3.7.1).
func (j *Jar) Make(t Tuple, clientISN uint32, clientMSS uint16, now time.Time) (cookie uint32, mss uint16) {
	idx := len(mssTable) - 1
	for ; idx > 0; idx-- {
		if clientMSS >= mssTable[idx] {
			break
		}
	}
	count := counter(now)
	cookie = j.hash(0, &t, 0) + clientISN + count<<cookieBits + (j.hash(1, &t, count)+uint32(idx))&cookieMask
	return cookie, mssTable[idx]
}

// Check validates the cookie of a client's ACK for the tuple: clientISN is
// the ACK's sequence number minus one, cookie its acknowledgment number
// minus one (the SYN and SYN-ACK took one each). It returns the MSS the
// cookie carries and true if the cookie was made by this Jar (or one with
// the same keys) for this tuple and ISN, in now's period or the one
// before. A random cookie passes with a probability of 8 in 2^32: 2 counts
// of 256 times 4 MSS indices of 2^24.
//
// As in Linux, the ISN enters the cookie by addition: ISN+d with cookie+d
// validates too, and an ISN off by up to 3 may yield another MSS. Neither
// helps an attacker, who must have seen the SYN-ACK to know any cookie of
// the tuple.
func (j *Jar) Check(t Tuple, clientISN, cookie uint32, now time.Time) (mss uint16, ok bool) {
	count := counter(now)
	c := cookie - j.hash(0, &t, 0) - clientISN
	// c is now count<<24 + ((hash2 + idx) mod 2^24): the top byte says
	// how many counts ago it was made, modulo 256.
	age := (count - c>>cookieBits) & (1<<(32-cookieBits) - 1)
	if age >= maxAge {
		return 0, false
	}
	idx := (c - j.hash(1, &t, count-age)) & cookieMask
	if idx >= uint32(len(mssTable)) {
		return 0, false
	}
	return mssTable[idx], true
}

// The low bits of a cookie SYN-ACK's TSval, as Linux lays them out
// (cookie_init_timestamp): window scale in bits 0-3 (0xf: the SYN had
// none), SACK-permitted in bit 4, ECN in bit 5.
const (
	tsBits       = 6
	tsWScaleNone = 0xf
	tsSACK       = 1 << 4
	tsECN        = 1 << 5
)

// MaxWScale is the largest window scale shift RFC 7323 section 2.3
// allows; a larger one in a SYN is taken as 14.
const MaxWScale = 14

// EncodeTS returns the TSval for a cookie SYN-ACK at timestamp clock now:
// now with its low six bits replaced by the options the client's SYN
// asked for. wscale is the SYN's window scale shift, or -1 if it had no
// window scale option; a shift above 14 is taken as 14. The result is
// never ahead of now (it steps back by up to 63 ticks instead), because
// the timestamps the balancer sends on the connection afterwards come from
// the same clock, and a TSval that went backwards would make the client
// drop them (PAWS, RFC 7323 section 5).
func EncodeTS(now uint32, wscale int, sack, ecn bool) uint32 {
	opts := uint32(tsWScaleNone)
	if wscale >= 0 {
		opts = uint32(min(wscale, MaxWScale))
	}
	if sack {
		opts |= tsSACK
	}
	if ecn {
		opts |= tsECN
	}
	ts := now&^(1<<tsBits-1) | opts
	if int32(ts-now) > 0 { // serial number arithmetic: ts is ahead of now
		ts -= 1 << tsBits
	}
	return ts
}

// DecodeTS recovers what EncodeTS put into a cookie SYN-ACK's TSval from
// the TSecr of the client's ACK: the client's window scale shift (-1 for
// none), and whether it permitted SACK and asked for ECN. Call it only
// once Check has accepted the cookie, and only if the ACK carries a
// timestamp option: without one the client sent none in its SYN either,
// and the connection has no window scaling and no SACK.
func DecodeTS(tsecr uint32) (wscale int, sack, ecn bool) {
	wscale = int(tsecr & tsWScaleNone)
	if wscale == tsWScaleNone {
		wscale = -1
	}
	return wscale, tsecr&tsSACK != 0, tsecr&tsECN != 0
}

// Sum returns a keyed hash (SipHash-2-4 under the jar's first key) of two
// words. rawlb uses a jar of its own for RFC 6528's F, the keyed part of
// the initial sequence numbers it gives connections toward backends: the
// key travels with the restart state, so a successor's numbers continue
// the predecessor's.
func (j *Jar) Sum(m0, m1 uint64) uint64 { return sipHash16(j.keys[0][0], j.keys[0][1], m0, m1) }
