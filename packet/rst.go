package packet

import "encoding/binary"

// MaxResetLen is the most BuildReset writes: Ethernet with one 802.1Q tag,
// IPv4 and TCP headers without options.
const MaxResetLen = EthernetLen + Dot1QLen + IPv4MinLen + TCPMinLen

// BuildReset writes into buf the TCP RST that answers the segment in seg
// (RFC 793 section 3.4, "Reset Generation"): addressed back to the sender,
// on the same VLAN, from the MAC the segment was sent to. If the segment
// carries an ACK the reset takes its sequence number from it; otherwise the
// reset has sequence number zero and acknowledges everything the segment
// occupied (SYN and FIN count one each), which is what makes a client's
// connect fail at once with "connection refused". It returns the frame's
// length, or 0 if buf is shorter than MaxResetLen.
func BuildReset(buf []byte, seg *Frame) int {
	if len(buf) < MaxResetLen {
		return 0
	}
	l2 := len(seg.Eth)
	copy(buf[:l2], seg.Eth)
	eth := Ethernet(buf[:l2])
	eth.SetDestination(seg.Eth.Source())
	eth.SetSource(seg.Eth.Destination())

	ip := IPv4(buf[l2 : l2+IPv4MinLen+TCPMinLen])
	ip[0] = 0x45
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:4], IPv4MinLen+TCPMinLen)
	binary.BigEndian.PutUint16(ip[4:6], 0)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8] = 64
	ip[9] = ProtoTCP
	ip.SetChecksum(0)
	src, dst := seg.IP.Destination(), seg.IP.Source()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	ip.SetChecksum(ip.CalculateChecksum())

	in := seg.TCP
	tcp := TCP(ip[IPv4MinLen:])
	binary.BigEndian.PutUint16(tcp[0:2], in.DestinationPort())
	binary.BigEndian.PutUint16(tcp[2:4], in.SourcePort())
	if in.Flags()&FlagACK != 0 {
		binary.BigEndian.PutUint32(tcp[4:8], in.Ack())
		binary.BigEndian.PutUint32(tcp[8:12], 0)
		tcp[13] = FlagRST
	} else {
		segLen := uint32(len(in) - in.HeaderLen())
		if in.Flags()&FlagSYN != 0 {
			segLen++
		}
		if in.Flags()&FlagFIN != 0 {
			segLen++
		}
		binary.BigEndian.PutUint32(tcp[4:8], 0)
		binary.BigEndian.PutUint32(tcp[8:12], in.Seq()+segLen)
		tcp[13] = FlagRST | FlagACK
	}
	tcp[12] = 5 << 4
	binary.BigEndian.PutUint16(tcp[14:16], 0) // window
	binary.BigEndian.PutUint16(tcp[18:20], 0) // urgent pointer
	tcp.SetChecksum(0)
	tcp.SetChecksum(^Fold(Sum(tcp, PseudoHeaderSum(src, dst, ProtoTCP, len(tcp)))))
	return l2 + len(ip)
}
