// Package packet parses and rewrites the frames rawlb balances: Ethernet
// (with at most one 802.1Q tag), IPv4 and TCP, and the ICMP errors that quote
// a TCP header. Headers are typed views over the frame's bytes; a rewrite
// changes them in place and adjusts checksums incrementally (RFC 1624). The
// package knows nothing of sockets, and nothing here allocates per packet.
package packet

import (
	"encoding/binary"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Reason says why a frame was rejected. It is the error Parse returns, so a
// caller can count drops by reason without allocating.
type Reason uint8

// Reasons a frame is rejected. The daemon counts each and drops the frame.
const (
	ReasonNone           Reason = iota
	ReasonTruncated             // shorter than the headers it starts
	ReasonNotIPv4               // EtherType is not IPv4, after at most one 802.1Q tag
	ReasonBadIPHeader           // version not 4, IHL below 5 or past the total length
	ReasonBadIPLength           // total length longer than the frame, or shorter than a frame that is not padded
	ReasonFragment              // MF set or non-zero offset: not balanced
	ReasonBadTCPHeader          // data offset below 5 or past the segment
	ReasonUnhandledProto        // neither TCP nor ICMP
	ReasonUnhandledICMP         // ICMP that is not an error quoting a TCP header
	ReasonBadICMP               // an ICMP error whose quote is too short or malformed
	ReasonDecode                // gopacket rejected what the length checks accepted (e.g. bad options)
	NumReasons                  // the number of reasons, for arrays of counters
)

var reasonNames = [NumReasons]string{
	ReasonNone:           "none",
	ReasonTruncated:      "truncated",
	ReasonNotIPv4:        "not_ipv4",
	ReasonBadIPHeader:    "bad_ip_header",
	ReasonBadIPLength:    "bad_ip_length",
	ReasonFragment:       "fragment",
	ReasonBadTCPHeader:   "bad_tcp_header",
	ReasonUnhandledProto: "unhandled_protocol",
	ReasonUnhandledICMP:  "unhandled_icmp",
	ReasonBadICMP:        "bad_icmp",
	ReasonDecode:         "decode",
}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Error implements error. A Reason is one byte, so storing it in an error
// interface does not allocate.
func (r Reason) Error() string { return "packet: " + r.String() }

// minFrame is the shortest Ethernet frame without FCS. Shorter packets are
// padded up to it on the wire, so bytes past the IP total length are normal
// in a frame of this size and mean nothing.
const minFrame = 60

// Frame holds views of a parsed frame. All of them point into the buffer
// given to Parse; the zero value is ready for use, and reusing one Frame
// for every packet keeps the per-packet path free of allocations.
type Frame struct {
	Eth  Ethernet // Ethernet header, including the 802.1Q tag if VLAN
	IP   IPv4     // IPv4 header and payload, cut at the total length (no padding)
	TCP  TCP      // TCP header and payload; empty unless a TCP segment
	ICMP ICMPv4   // the ICMP message; empty unless an ICMP error
	// Inner is the IPv4 packet quoted by an ICMP error (header and as much
	// as was quoted), and InnerTCP the quoted part of its TCP header: at
	// least the ports and sequence number (RFC 792 quotes 8 bytes).
	Inner    IPv4
	InnerTCP []byte
	VLAN     bool // one 802.1Q tag was present
}

// Len returns the length to forward: the Ethernet header plus the IP total
// length, leaving out Ethernet padding.
func (f *Frame) Len() int { return len(f.Eth) + len(f.IP) }

// IsICMP reports whether the frame is an ICMP error quoting a TCP header.
func (f *Frame) IsICMP() bool { return len(f.ICMP) != 0 }

// Parser parses frames with gopacket's decoding layers, preallocated so that
// decoding does not allocate. A Parser is not safe for concurrent use: give
// each packet worker its own.
type Parser struct {
	eth   layers.Ethernet
	dot1q layers.Dot1Q
	ip    layers.IPv4
	tcp   layers.TCP
	icmp  layers.ICMPv4
	inner layers.IPv4
}

// Parse parses data into f. It returns nil for an IPv4 TCP segment or an
// ICMP error quoting TCP; otherwise a Reason. It never panics, whatever data
// holds.
//
// The length checks run before gopacket's decoders so that every rejection
// has an exact reason and costs no allocation (gopacket builds its errors
// with fmt). gopacket then decodes the headers and validates the IP and TCP
// options, which the length checks do not look into.
func (p *Parser) Parse(data []byte, f *Frame) error {
	*f = Frame{}
	if len(data) < EthernetLen {
		return ReasonTruncated
	}
	l3 := EthernetLen
	etherType := binary.BigEndian.Uint16(data[12:14])
	if etherType == EtherTypeDot1Q {
		if len(data) < EthernetLen+Dot1QLen {
			return ReasonTruncated
		}
		l3 += Dot1QLen
		etherType = binary.BigEndian.Uint16(data[16:18])
		f.VLAN = true
	}
	if etherType != EtherTypeIPv4 {
		return ReasonNotIPv4
	}
	ip := IPv4(data[l3:])
	if len(ip) < IPv4MinLen {
		return ReasonTruncated
	}
	hl, total := ip.HeaderLen(), ip.TotalLen()
	switch {
	case ip[0]>>4 != 4 || hl < IPv4MinLen || hl > total:
		return ReasonBadIPHeader
	case total > len(ip):
		return ReasonBadIPLength
	case total < len(ip) && len(data) > minFrame+l3-EthernetLen:
		// Trailing bytes in a frame longer than the minimum are not
		// padding: the packet lies about its length.
		return ReasonBadIPLength
	}
	ip = ip[:total]
	if ip.IsFragment() {
		return ReasonFragment
	}
	f.Eth = Ethernet(data[:l3])
	f.IP = ip
	switch ip.Protocol() {
	case ProtoTCP:
		tcp := TCP(ip[hl:])
		if len(tcp) < TCPMinLen || tcp.HeaderLen() < TCPMinLen || tcp.HeaderLen() > len(tcp) {
			return ReasonBadTCPHeader
		}
		f.TCP = tcp
	case ProtoICMP:
		if r := parseICMPError(f, ip[hl:]); r != ReasonNone {
			return r
		}
	default:
		return ReasonUnhandledProto
	}
	if !p.decode(f) {
		*f = Frame{}
		return ReasonDecode
	}
	return nil
}

// parseICMPError fills f's ICMP views if m is a destination-unreachable or
// time-exceeded message quoting the start of a TCP segment.
func parseICMPError(f *Frame, m []byte) Reason {
	if len(m) < ICMPHeaderLen {
		return ReasonBadICMP
	}
	icmp := ICMPv4(m)
	if t := icmp.Type(); t != ICMPDestUnreachable && t != ICMPTimeExceeded {
		return ReasonUnhandledICMP
	}
	inner := IPv4(m[ICMPHeaderLen:])
	if len(inner) < IPv4MinLen || inner[0]>>4 != 4 {
		return ReasonBadICMP
	}
	hl := inner.HeaderLen()
	if hl < IPv4MinLen || hl+8 > len(inner) {
		return ReasonBadICMP
	}
	if inner.Protocol() != ProtoTCP {
		return ReasonUnhandledICMP
	}
	if inner.FragmentOffset() != 0 {
		// A later fragment quotes no TCP header to translate.
		return ReasonBadICMP
	}
	f.ICMP = icmp
	f.Inner = inner
	f.InnerTCP = inner[hl:]
	return ReasonNone
}

// decode runs gopacket's decoders over what the length checks accepted.
func (p *Parser) decode(f *Frame) bool {
	df := gopacket.NilDecodeFeedback
	if p.eth.DecodeFromBytes(f.Eth, df) != nil {
		return false
	}
	if f.VLAN && p.dot1q.DecodeFromBytes(f.Eth[EthernetLen:], df) != nil {
		return false
	}
	if p.ip.DecodeFromBytes(f.IP, df) != nil {
		return false
	}
	if len(f.TCP) != 0 {
		return p.tcp.DecodeFromBytes(f.TCP, df) == nil
	}
	if p.icmp.DecodeFromBytes(f.ICMP, df) != nil {
		return false
	}
	// The quote is cut short by design (RFC 792 keeps 8 bytes of payload);
	// gopacket marks that as truncated, which is not an error here.
	return p.inner.DecodeFromBytes(f.Inner, df) == nil
}
