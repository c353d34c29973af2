package packet

import "encoding/binary"

// maxOptionsLen is the most option space BuildSegment lays out: MSS (4),
// SACK-permitted and timestamps (12), NOP and window scale (4).
const maxOptionsLen = 20

// MaxSegmentLen is the most BuildSegment writes: Ethernet with one 802.1Q
// tag, IPv4 without options, and a TCP header with every option it lays
// out.
const MaxSegmentLen = EthernetLen + Dot1QLen + IPv4MinLen + TCPMinLen + maxOptionsLen

// Segment describes a TCP segment without payload that the balancer
// originates rather than forwards: the SYN-ACK that carries a SYN cookie,
// the SYN to a backend, and the ACKs that complete both handshakes.
type Segment struct {
	SrcMAC, DstMAC   [6]byte
	VLAN             uint16 // the TCI of an 802.1Q tag to send it with; 0: untagged
	Src, Dst         [4]byte
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            uint8 // FlagSYN, FlagACK, ...: ECE and CWR too
	Window           uint16
	// Options are laid out as Linux's tcp_options_write lays them out, so
	// that the segment looks like any Linux host's to middleboxes and to
	// tcpdump users. MSS, window scale and SACK-permitted are written only
	// when Flags has SYN (RFC 9293 section 3.7.1, RFC 7323 section 2.2,
	// RFC 2018 section 2 allow them nowhere else), so the zero WScale of a
	// TCPOptions made for an ACK is harmless.
	Options TCPOptions
	// Csum is the state to leave the TCP checksum in. CsumComplete sums the
	// segment; CsumPartial stores the folded pseudo-header sum for the
	// kernel to complete (virtio-net header NEEDS_CSUM, csum_start at the
	// TCP header, csum_offset 16), which saves summing the 20 to 40 bytes
	// of header and nothing else.
	Csum CsumState
}

// optionsLen is the length of the options BuildSegment writes for s.
func (s *Segment) optionsLen() int {
	o, syn := &s.Options, s.Flags&FlagSYN != 0
	n := 0
	if syn && o.MSS != 0 {
		n += 4
	}
	if o.Timestamp {
		n += 12 // with SACK-permitted in place of its two NOPs, if both
	} else if syn && o.SACKPermitted {
		n += 4
	}
	if syn && o.WScale >= 0 {
		n += 4
	}
	return n
}

// BuildSegment writes the frame s describes into buf: Ethernet, IPv4 with
// DF set, TTL 64 and ID 0 (RFC 6864 section 4.1: an atomic datagram's ID
// means nothing), and TCP with its options, the IPv4 checksum and the TCP
// checksum complete or partial as s.Csum says. It returns the frame's
// length, or 0 if buf is too short (MaxSegmentLen always suffices). It
// does not allocate.
func BuildSegment(buf []byte, s *Segment) int {
	l2 := EthernetLen
	if s.VLAN != 0 {
		l2 += Dot1QLen
	}
	tcpLen := TCPMinLen + s.optionsLen()
	n := l2 + IPv4MinLen + tcpLen
	if len(buf) < n {
		return 0
	}
	buf = buf[:n]

	eth := Ethernet(buf)
	eth.SetDestination(s.DstMAC)
	eth.SetSource(s.SrcMAC)
	if s.VLAN != 0 {
		binary.BigEndian.PutUint16(buf[12:14], EtherTypeDot1Q)
		binary.BigEndian.PutUint16(buf[14:16], s.VLAN)
	}
	binary.BigEndian.PutUint16(buf[l2-2:l2], EtherTypeIPv4)

	ip := IPv4(buf[l2:])
	ip[0] = 0x45
	ip[1] = 0 // no DSCP; no ECT either, which RFC 3168 section 6.1.1 forbids on SYN and SYN-ACK
	binary.BigEndian.PutUint16(ip[2:4], uint16(IPv4MinLen+tcpLen))
	binary.BigEndian.PutUint16(ip[4:6], 0)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8] = 64
	ip[9] = ProtoTCP
	copy(ip[12:16], s.Src[:])
	copy(ip[16:20], s.Dst[:])
	ip.SetChecksum(0)
	ip.SetChecksum(ip.CalculateChecksum())

	tcp := TCP(ip[IPv4MinLen:])
	binary.BigEndian.PutUint16(tcp[0:2], s.SrcPort)
	binary.BigEndian.PutUint16(tcp[2:4], s.DstPort)
	binary.BigEndian.PutUint32(tcp[4:8], s.Seq)
	binary.BigEndian.PutUint32(tcp[8:12], s.Ack)
	tcp[12] = uint8(tcpLen/4) << 4
	tcp[13] = s.Flags
	binary.BigEndian.PutUint16(tcp[14:16], s.Window)
	binary.BigEndian.PutUint32(tcp[16:20], 0) // checksum, urgent pointer
	writeOptions(tcp[TCPMinLen:], s)

	pseudo := PseudoHeaderSum(s.Src, s.Dst, ProtoTCP, tcpLen)
	if s.Csum == CsumPartial {
		tcp.SetChecksum(Fold(pseudo))
	} else {
		tcp.SetChecksum(^Fold(Sum(tcp, pseudo)))
	}
	return n
}

// writeOptions lays out the options in 32-bit words, in the order of
// Linux's tcp_options_write: MSS; SACK-permitted and timestamps, or NOP NOP
// and timestamps; NOP NOP SACK-permitted without timestamps; NOP and window
// scale. The padding NOPs keep TSval, TSecr and the 16-bit MSS on 32-bit
// boundaries, as RFC 7323 appendix A suggests.
func writeOptions(b []byte, s *Segment) {
	o, syn := &s.Options, s.Flags&FlagSYN != 0
	i := 0
	if syn && o.MSS != 0 {
		b[0], b[1] = optMSS, optMSSLen
		binary.BigEndian.PutUint16(b[2:], o.MSS)
		i += 4
	}
	sack := syn && o.SACKPermitted
	if o.Timestamp {
		if sack {
			b[i], b[i+1] = optSACKPerm, optSACKPermLen
		} else {
			b[i], b[i+1] = optNOP, optNOP
		}
		b[i+2], b[i+3] = optTimestamp, optTSLen
		binary.BigEndian.PutUint32(b[i+4:], o.TSval)
		binary.BigEndian.PutUint32(b[i+8:], o.TSecr)
		i += 12
	} else if sack {
		b[i], b[i+1], b[i+2], b[i+3] = optNOP, optNOP, optSACKPerm, optSACKPermLen
		i += 4
	}
	if syn && o.WScale >= 0 {
		b[i], b[i+1], b[i+2], b[i+3] = optNOP, optWScale, optWScaleLen, uint8(min(o.WScale, MaxWScale))
	}
}
