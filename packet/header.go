package packet

import "encoding/binary"

// Header sizes and protocol numbers the balancer relies on.
const (
	EthernetLen   = 14 // destination MAC, source MAC, EtherType
	Dot1QLen      = 4  // one 802.1Q tag: TPID is the outer EtherType, then TCI and the inner EtherType
	IPv4MinLen    = 20 // IPv4 header without options
	TCPMinLen     = 20 // TCP header without options
	ICMPHeaderLen = 8  // type, code, checksum, 4 bytes that depend on the type

	EtherTypeIPv4  = 0x0800
	EtherTypeDot1Q = 0x8100

	ProtoICMP = 1
	ProtoTCP  = 6
)

// TCP flag bits, as they sit in byte 13 of the TCP header.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagPSH = 0x08
	FlagACK = 0x10
)

// Ethernet is a view of an Ethernet header (and, when tagged, its 802.1Q tag).
type Ethernet []byte

// Destination returns the destination MAC address.
func (e Ethernet) Destination() [6]byte { return [6]byte(e[0:6]) }

// Source returns the source MAC address.
func (e Ethernet) Source() [6]byte { return [6]byte(e[6:12]) }

// SetDestination sets the destination MAC address.
func (e Ethernet) SetDestination(mac [6]byte) { copy(e[0:6], mac[:]) }

// SetSource sets the source MAC address.
func (e Ethernet) SetSource(mac [6]byte) { copy(e[6:12], mac[:]) }

// IPv4 is a view of an IPv4 header followed by its payload, as in gVisor's
// header.IPv4: accessors read straight from the bytes, nothing is copied.
type IPv4 []byte

// HeaderLen returns the header length in bytes (IHL * 4).
func (ip IPv4) HeaderLen() int { return int(ip[0]&0x0f) * 4 }

// TotalLen returns the total length field.
func (ip IPv4) TotalLen() int { return int(binary.BigEndian.Uint16(ip[2:4])) }

// Protocol returns the protocol number of the payload.
func (ip IPv4) Protocol() uint8 { return ip[9] }

// TTL returns the time to live.
func (ip IPv4) TTL() uint8 { return ip[8] }

// Checksum returns the header checksum field.
func (ip IPv4) Checksum() uint16 { return binary.BigEndian.Uint16(ip[10:12]) }

// SetChecksum sets the header checksum field.
func (ip IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(ip[10:12], c) }

// Source returns the source address.
func (ip IPv4) Source() [4]byte { return [4]byte(ip[12:16]) }

// Destination returns the destination address.
func (ip IPv4) Destination() [4]byte { return [4]byte(ip[16:20]) }

// Payload returns the bytes after the header, up to the end of the view.
func (ip IPv4) Payload() []byte { return ip[ip.HeaderLen():] }

// More reports whether the more-fragments flag is set.
func (ip IPv4) More() bool { return ip[6]&0x20 != 0 }

// FragmentOffset returns the fragment offset in bytes.
func (ip IPv4) FragmentOffset() int { return int(binary.BigEndian.Uint16(ip[6:8])&0x1fff) * 8 }

// IsFragment reports whether the packet is a fragment of a larger datagram
// (RFC 791: the first has MF set, later ones a non-zero offset).
func (ip IPv4) IsFragment() bool { return ip.More() || ip.FragmentOffset() != 0 }

// CalculateChecksum sums the header from scratch; a header with a correct
// checksum field yields 0. Used to build packets and by tests, never to
// rewrite one.
func (ip IPv4) CalculateChecksum() uint16 { return Checksum(ip[:ip.HeaderLen()]) }

// TCP is a view of a TCP header followed by its payload.
type TCP []byte

// SourcePort returns the source port.
func (t TCP) SourcePort() uint16 { return binary.BigEndian.Uint16(t[0:2]) }

// DestinationPort returns the destination port.
func (t TCP) DestinationPort() uint16 { return binary.BigEndian.Uint16(t[2:4]) }

// Seq returns the sequence number.
func (t TCP) Seq() uint32 { return binary.BigEndian.Uint32(t[4:8]) }

// Ack returns the acknowledgment number.
func (t TCP) Ack() uint32 { return binary.BigEndian.Uint32(t[8:12]) }

// HeaderLen returns the header length in bytes (data offset * 4).
func (t TCP) HeaderLen() int { return int(t[12]>>4) * 4 }

// Flags returns the flag byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
func (t TCP) Flags() uint8 { return t[13] }

// Checksum returns the checksum field.
func (t TCP) Checksum() uint16 { return binary.BigEndian.Uint16(t[16:18]) }

// Window returns the window field, unscaled.
func (t TCP) Window() uint16 { return binary.BigEndian.Uint16(t[14:16]) }

// SetWindow sets the window field, adjusting a complete checksum for the
// one word that changed (RFC 1624). A partial checksum needs nothing: the
// header is part of what the offload sums later.
func (t TCP) SetWindow(w uint16, state CsumState) {
	if state == CsumComplete {
		var d delta
		d.add(t.Window(), w)
		t.SetChecksum(d.apply(t.Checksum()))
	}
	binary.BigEndian.PutUint16(t[14:16], w)
}

// SetChecksum sets the checksum field.
func (t TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(t[16:18], c) }

// ICMPv4 is a view of an ICMP message: the 8-byte header and its body.
type ICMPv4 []byte

// Type returns the ICMP type.
func (m ICMPv4) Type() uint8 { return m[0] }

// Code returns the ICMP code.
func (m ICMPv4) Code() uint8 { return m[1] }

// Checksum returns the checksum field.
func (m ICMPv4) Checksum() uint16 { return binary.BigEndian.Uint16(m[2:4]) }

// SetChecksum sets the checksum field.
func (m ICMPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(m[2:4], c) }

// MTU returns the next-hop MTU of a fragmentation-needed message (RFC 1191).
func (m ICMPv4) MTU() uint16 { return binary.BigEndian.Uint16(m[6:8]) }

// ICMP types and codes the balancer translates.
const (
	ICMPDestUnreachable = 3
	ICMPTimeExceeded    = 11

	ICMPCodePortUnreachable = 3
	ICMPCodeFragNeeded      = 4
)
