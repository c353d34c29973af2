package packet

import "encoding/binary"

// Checksum states of a TCP segment as the balancer receives it.
type CsumState uint8

const (
	// CsumComplete: the checksum field holds the full Internet checksum
	// (from a real NIC, or a packet the kernel already verified).
	CsumComplete CsumState = iota
	// CsumPartial: the sender's kernel left the checksum to offload
	// (CHECKSUM_PARTIAL). The field holds only the pseudo-header sum, and
	// the kernel or device that finally transmits the frame sums the
	// segment over it. AF_PACKET shows this for local and veth senders
	// as TP_STATUS_CSUMNOTREADY or the virtio-net header's NEEDS_CSUM.
	CsumPartial
)

// RewriteTCP sets the segment's addresses and ports in place and adjusts the
// IPv4 header checksum and the TCP checksum for exactly the words that
// changed (RFC 1624), never summing the segment.
//
// In the partial state only the address change enters the TCP checksum
// field, because the field holds the pseudo-header sum alone: the ports are
// part of the segment, which the offload sums later as it then is.
func (f *Frame) RewriteTCP(src [4]byte, srcPort uint16, dst [4]byte, dstPort uint16, state CsumState) {
	tcp := f.TCP
	d := setAddresses(f.IP, src, dst)
	if state == CsumPartial {
		tcp.SetChecksum(d.applyPartial(tcp.Checksum()))
		setPorts(tcp, nil, srcPort, dstPort)
		return
	}
	setPorts(tcp, &d, srcPort, dstPort)
	tcp.SetChecksum(d.apply(tcp.Checksum()))
}

// setAddresses writes src and dst into ip's header and adjusts its
// checksum. It returns the change, for the checksums that cover the
// pseudo-header too.
func setAddresses(ip IPv4, src, dst [4]byte) delta {
	var d delta
	d.add32(ip.Source(), src)
	d.add32(ip.Destination(), dst)
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	ip.SetChecksum(d.apply(ip.Checksum()))
	return d
}

// setPorts writes the ports at the start of a TCP header (whole, or the 8
// bytes an ICMP error quotes), adding the change to d unless d is nil.
func setPorts(tcp []byte, d *delta, srcPort, dstPort uint16) {
	if d != nil {
		d.add(binary.BigEndian.Uint16(tcp[0:2]), srcPort)
		d.add(binary.BigEndian.Uint16(tcp[2:4]), dstPort)
	}
	binary.BigEndian.PutUint16(tcp[0:2], srcPort)
	binary.BigEndian.PutUint16(tcp[2:4], dstPort)
}

// TranslateICMP rewrites an ICMP error about a tracked flow for the other
// side of the balancer: the outer source and destination, and the quoted
// packet's addresses and ports, so the receiver matches it to its own
// socket (path MTU discovery depends on it: RFC 1191, RFC 5927).
//
// The outer and quoted IPv4 header checksums and the quoted TCP checksum
// (when the quote reaches it) are adjusted incrementally. The ICMP checksum
// covers the whole quote, so it is summed again: an ICMP error is at most a
// few hundred bytes and rare, unlike the segments RewriteTCP handles.
func (f *Frame) TranslateICMP(outerSrc, outerDst [4]byte, innerSrc [4]byte, innerSrcPort uint16, innerDst [4]byte, innerDstPort uint16) {
	setAddresses(f.IP, outerSrc, outerDst)
	tcp := f.InnerTCP
	d := setAddresses(f.Inner, innerSrc, innerDst)
	if len(tcp) >= 18 {
		// The quote reaches the TCP checksum: keep it as valid as it was.
		setPorts(tcp, &d, innerSrcPort, innerDstPort)
		binary.BigEndian.PutUint16(tcp[16:18], d.apply(binary.BigEndian.Uint16(tcp[16:18])))
	} else {
		setPorts(tcp, nil, innerSrcPort, innerDstPort)
	}

	f.ICMP.SetChecksum(0)
	f.ICMP.SetChecksum(Checksum(f.ICMP))
}

// InnerSourcePort returns the quoted segment's source port.
func (f *Frame) InnerSourcePort() uint16 { return binary.BigEndian.Uint16(f.InnerTCP[0:2]) }

// InnerDestinationPort returns the quoted segment's destination port.
func (f *Frame) InnerDestinationPort() uint16 { return binary.BigEndian.Uint16(f.InnerTCP[2:4]) }

// SetPseudoChecksum puts the segment into the partial state for its
// current addresses: the TCP checksum field gets the folded pseudo-header
// sum, for the kernel to complete on the way out. The daemon uses it for a
// GRO-merged segment whose checksum field still belongs to the first
// packet merged: once the kernel splits it again, each segment's checksum
// is computed afresh from this sum.
func (f *Frame) SetPseudoChecksum() {
	f.TCP.SetChecksum(Fold(PseudoHeaderSum(f.IP.Source(), f.IP.Destination(), ProtoTCP, len(f.TCP))))
}
