// Package ring is rawlb's link to the wire: an AF_PACKET socket with a
// TPACKET_V2 receive ring and virtio-net headers, and batched sends.
//
// Why TPACKET_V2 and not V3: V3 hands blocks to user space only when a
// block fills or its retire timer (at least 1 ms) fires, so a forwarder
// would hold a lone packet for a millisecond when traffic is light. V2
// frames are handed over one by one as they land.
//
// Why virtio-net headers (PACKET_VNET_HDR): with TSO/GSO on the senders and
// GRO on receiving NICs, the kernel hands AF_PACKET TCP segments far above
// the MTU, often with a checksum left for offload. The header tells which
// (NEEDS_CSUM, gso_type, gso_size), and giving the same header back on send
// lets the kernel segment and checksum on the way out, so a 64 KB segment
// costs one send.
package ring

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// VNetHdrLen is the size of struct virtio_net_hdr, which precedes every
// frame in the ring and every frame handed to Send.
const VNetHdrLen = 10

// virtio-net header flags and GSO types (include/uapi/linux/virtio_net.h).
const (
	VNetFlagNeedsCsum = 1 // the L4 checksum is partial: csum_start/csum_offset say where
	VNetFlagDataValid = 2 // the checksum was verified on receive
	VNetGSONone       = 0
	VNetGSOTCPv4      = 1
)

// VNetHdr is a view of a struct virtio_net_hdr (native byte order, as
// AF_PACKET uses it on little- and big-endian hosts alike).
type VNetHdr []byte

// Flags returns the flags byte.
func (h VNetHdr) Flags() uint8 { return h[0] }

// SetFlags sets the flags byte.
func (h VNetHdr) SetFlags(f uint8) { h[0] = f }

// GSOType returns the GSO type.
func (h VNetHdr) GSOType() uint8 { return h[1] }

// GSOSize returns the segment size the kernel cuts a GSO frame into.
func (h VNetHdr) GSOSize() uint16 { return *(*uint16)(unsafe.Pointer(&h[4])) }

// SetCsum marks the L4 checksum partial, starting at start and stored at
// start+offset, both counted from the frame's first byte.
func (h VNetHdr) SetCsum(start, offset uint16) {
	h[0] |= VNetFlagNeedsCsum
	*(*uint16)(unsafe.Pointer(&h[6])) = start
	*(*uint16)(unsafe.Pointer(&h[8])) = offset
}

// Packet is one received frame. Its slices point into the ring and are
// valid until the frame is released.
type Packet struct {
	// Buf is the virtio-net header followed by the frame: exactly what
	// Send takes, so a frame rewritten in place goes back out without a
	// copy.
	Buf     []byte
	Frame   []byte  // the Ethernet frame, Buf[VNetHdrLen:]
	VNet    VNetHdr // Buf[:VNetHdrLen]
	Status  uint32  // tp_status: TP_STATUS_CSUMNOTREADY, TP_STATUS_VLAN_VALID, ...
	WireLen int     // tp_len: the frame's real length; longer than Frame when the ring truncated it
	PktType uint8   // sll_pkttype: PACKET_HOST, PACKET_OUTGOING, ...
}

// Truncated reports whether the ring frame was too small for the packet.
func (p *Packet) Truncated() bool { return len(p.Frame) < p.WireLen }

// Config sizes and filters a Socket.
type Config struct {
	Ifindex int
	// FrameSize is the size of one ring slot. It must hold the largest
	// GSO frame the interface can hand over (64 KB IP packets) plus the
	// TPACKET and virtio-net headers; the default 69632 (17 pages) does.
	FrameSize int
	Frames    int // slots in the ring; default 256
	Batch     int // the most packets Receive returns and Send takes at once; default 64
	// Filter is a classic BPF program run by the kernel before a frame is
	// copied into the ring.
	Filter []bpf.RawInstruction
	// FanoutGroup, when non-zero, joins the socket to a PACKET_FANOUT
	// group hashing flows across the group's sockets.
	FanoutGroup uint16
	// QdiscBypass sends straight to the driver (PACKET_QDISC_BYPASS).
	QdiscBypass bool
}

// ErrClosed is returned by Receive once Close has been called.
var ErrClosed = errors.New("ring: socket closed")

// Socket is an AF_PACKET socket with a receive ring. Receive, Release and
// Send belong to one goroutine; Close may be called from any.
type Socket struct {
	fd      int
	wake    int // eventfd that Close writes to end a blocking Receive
	ring    []byte
	frames  int
	size    int
	head    int
	closed  atomic.Bool
	pollfds [2]unix.PollFd
	msgs    []unix.Mmsghdr
	iovs    []unix.Iovec
}

// tpacket2 header layout (struct tpacket2_hdr, then struct sockaddr_ll at
// TPACKET_ALIGN(sizeof(struct tpacket2_hdr))).
const (
	tpHdrLen     = unix.SizeofTpacket2Hdr
	sllPktTypeAt = tpHdrLen + 10
)

// Open creates the socket, its ring and filter, and binds it to the
// interface. It needs CAP_NET_RAW.
func Open(c Config) (*Socket, error) {
	if c.FrameSize == 0 {
		c.FrameSize = 17 * 4096
	}
	if c.Frames == 0 {
		c.Frames = 256
	}
	if c.Batch == 0 {
		c.Batch = 64
	}
	if c.FrameSize%os.Getpagesize() != 0 {
		return nil, fmt.Errorf("ring: frame size %d is not a multiple of the page size", c.FrameSize)
	}
	// Protocol 0: the socket receives nothing until bound, so no frame
	// reaches it before the filter is attached.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("ring: opening an AF_PACKET socket needs CAP_NET_RAW (run as root or setcap cap_net_raw,cap_net_admin+ep): %w", err)
		}
		return nil, fmt.Errorf("ring: socket: %w", err)
	}
	s := &Socket{fd: fd, wake: -1, frames: c.Frames, size: c.FrameSize}
	if err := s.setup(c); err != nil {
		s.Free()
		return nil, err
	}
	return s, nil
}

func (s *Socket) setup(c Config) error {
	fd := s.fd
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return fmt.Errorf("ring: TPACKET_V2: %w", err)
	}
	// The virtio-net header must be enabled before the ring exists.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fmt.Errorf("ring: PACKET_VNET_HDR: %w", err)
	}
	if len(c.Filter) > 0 {
		prog := unix.SockFprog{Len: uint16(len(c.Filter)), Filter: (*unix.SockFilter)(unsafe.Pointer(&c.Filter[0]))}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
			return fmt.Errorf("ring: attaching the BPF filter: %w", err)
		}
	}
	req := unix.TpacketReq{Block_size: uint32(c.FrameSize), Block_nr: uint32(c.Frames), Frame_size: uint32(c.FrameSize), Frame_nr: uint32(c.Frames)}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("ring: PACKET_RX_RING (%d x %d bytes): %w", c.Frames, c.FrameSize, err)
	}
	ring, err := unix.Mmap(fd, 0, c.Frames*c.FrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_LOCKED)
	if err != nil {
		// MAP_LOCKED can fail under a low RLIMIT_MEMLOCK; the ring works
		// unlocked too, only it may be paged out.
		ring, err = unix.Mmap(fd, 0, c.Frames*c.FrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("ring: mmap: %w", err)
		}
	}
	s.ring = ring
	// Frames the host itself sends on the interface are not ours to
	// forward, and copying them would only cost time (Linux 4.20+).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fmt.Errorf("ring: PACKET_IGNORE_OUTGOING: %w", err)
	}
	if c.QdiscBypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("ring: PACKET_QDISC_BYPASS: %w", err)
		}
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: c.Ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("ring: binding to interface %d: %w", c.Ifindex, err)
	}
	if c.FanoutGroup != 0 {
		arg := int(c.FanoutGroup) | unix.PACKET_FANOUT_HASH<<16
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, arg); err != nil {
			return fmt.Errorf("ring: PACKET_FANOUT: %w", err)
		}
	}
	s.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("ring: eventfd: %w", err)
	}
	s.pollfds = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(s.wake), Events: unix.POLLIN}}
	s.msgs = make([]unix.Mmsghdr, c.Batch)
	s.iovs = make([]unix.Iovec, c.Batch)
	for i := range s.msgs {
		s.msgs[i].Hdr.Iov = &s.iovs[i]
		s.msgs[i].Hdr.SetIovlen(1)
	}
	return nil
}

// htons converts a 16-bit value to network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// status returns a pointer to slot i's tp_status, which the kernel and
// user space hand the slot back and forth with.
func (s *Socket) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&s.ring[i*s.size]))
}

// Receive fills pkts with the frames ready in the ring, in order, waiting
// until at least one is. The frames stay owned by the caller until Release.
func (s *Socket) Receive(pkts []Packet) (int, error) {
	for {
		if s.closed.Load() {
			return 0, ErrClosed
		}
		n := 0
		for n < len(pkts) {
			i := (s.head + n) % s.frames
			st := atomic.LoadUint32(s.status(i))
			if st&unix.TP_STATUS_USER == 0 {
				break
			}
			base := i * s.size
			hdr := (*unix.Tpacket2Hdr)(unsafe.Pointer(&s.ring[base]))
			mac := base + int(hdr.Mac)
			p := &pkts[n]
			p.Buf = s.ring[mac-VNetHdrLen : mac+int(hdr.Snaplen)]
			p.VNet = VNetHdr(p.Buf[:VNetHdrLen])
			p.Frame = p.Buf[VNetHdrLen:]
			p.Status = st
			p.WireLen = int(hdr.Len)
			p.PktType = s.ring[base+sllPktTypeAt]
			n++
		}
		if n > 0 {
			return n, nil
		}
		if _, err := unix.Poll(s.pollfds[:], -1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("ring: poll: %w", err)
		}
	}
}

// Release hands the n oldest received frames back to the kernel.
func (s *Socket) Release(n int) {
	for k := 0; k < n; k++ {
		atomic.StoreUint32(s.status((s.head+k)%s.frames), unix.TP_STATUS_KERNEL)
	}
	s.head = (s.head + n) % s.frames
}

// Send transmits each buffer (a virtio-net header followed by a frame) with
// as few sendmmsg calls as it takes. A buffer the kernel refuses is
// skipped and counted; the rest still go. It returns how many were
// refused and the last such error.
func (s *Socket) Send(bufs [][]byte) (dropped int, err error) {
	for len(bufs) > 0 {
		n := min(len(bufs), len(s.msgs))
		for i := 0; i < n; i++ {
			s.iovs[i].Base = &bufs[i][0]
			s.iovs[i].SetLen(len(bufs[i]))
		}
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[0])), uintptr(n), 0, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			// sendmmsg fails only when its first message does: drop
			// that one and go on with the rest.
			dropped++
			err = errno
			bufs = bufs[1:]
		default:
			bufs = bufs[int(r):]
		}
	}
	return dropped, err
}

// Stats returns the kernel's counts since the last call: frames that
// passed the filter and frames dropped because the ring was full.
func (s *Socket) Stats() (packets, drops uint32, err error) {
	st, err := unix.GetsockoptTpacketStats(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0, 0, err
	}
	return st.Packets, st.Drops, nil
}

// Close ends a blocking Receive and releases the socket and ring. Call it
// once; Receive returns ErrClosed afterwards. The owner goroutine must have
// returned from Receive before the ring is unmapped, so Close only signals
// and Free releases.
func (s *Socket) Close() {
	if s.closed.Swap(true) {
		return
	}
	if s.wake >= 0 {
		var one = [8]byte{1}
		_, _ = unix.Write(s.wake, one[:])
	}
}

// Free unmaps the ring and closes the descriptors. Call it after the
// receiving goroutine has seen ErrClosed (or never started).
func (s *Socket) Free() {
	s.closed.Store(true)
	if s.ring != nil {
		_ = unix.Munmap(s.ring)
		s.ring = nil
	}
	if s.wake >= 0 {
		unix.Close(s.wake)
		s.wake = -1
	}
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}
