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
	"syscall"
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
	fd     int
	file   *os.File        // owns fd once set up; its poller does the waiting
	rc     syscall.RawConn // file's, for Read/Write callbacks on readiness
	ring   []byte
	frames int
	size   int
	head   int
	closed atomic.Bool
	msgs   []unix.Mmsghdr
	iovs   []unix.Iovec

	// State for the readiness callbacks, bound once in setup so that
	// waiting allocates nothing (a closure per wait would).
	rxPkts  []Packet
	rxN     int
	rxFn    func(uintptr) bool
	txN     int
	txR     int
	txErrno unix.Errno
	txFn    func(uintptr) bool
}

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
	s := &Socket{fd: fd, frames: c.Frames, size: c.FrameSize}
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
	// Waiting goes through Go's netpoller (epoll), not a blocking poll(2):
	// a blocked system call pins a thread and makes the scheduler hand its
	// P to another, which at one packet per wake-up cost more CPU than the
	// packet itself. AF_PACKET signals readiness per frame (sk_data_ready
	// in tpacket_rcv) and packet_poll reports the ring's state, so no
	// frame is missed between a look at the ring and the wait.
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("ring: non-blocking socket: %w", err)
	}
	s.file = os.NewFile(uintptr(fd), "afpacket")
	if s.rc, err = s.file.SyscallConn(); err != nil {
		return fmt.Errorf("ring: %w", err)
	}
	s.rxFn = s.tryReceive
	s.txFn = s.trySend
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
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if n := s.fill(pkts); n > 0 {
		return n, nil
	}
	s.rxPkts, s.rxN = pkts, 0
	err := s.rc.Read(s.rxFn)
	n := s.rxN
	s.rxPkts = nil
	if n > 0 {
		return n, nil
	}
	if err == nil || s.closed.Load() {
		return 0, ErrClosed
	}
	return 0, fmt.Errorf("ring: waiting for frames: %w", err)
}

// tryReceive is Receive's readiness callback: true once frames are ready.
func (s *Socket) tryReceive(uintptr) bool {
	s.rxN = s.fill(s.rxPkts)
	return s.rxN > 0 || s.closed.Load()
}

// fill takes the ready frames at the head of the ring, without waiting.
func (s *Socket) fill(pkts []Packet) int {
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
		n++
	}
	return n
}

// Release hands the n oldest received frames back to the kernel.
func (s *Socket) Release(n int) {
	for k := 0; k < n; k++ {
		atomic.StoreUint32(s.status((s.head+k)%s.frames), unix.TP_STATUS_KERNEL)
	}
	s.head = (s.head + n) % s.frames
}

// Send transmits each buffer (a virtio-net header followed by a frame) with
// as few sendmmsg calls as it takes, waiting while the socket's send buffer
// is full. A buffer the kernel refuses is skipped and counted; the rest
// still go. It returns how many were refused and the last such error.
func (s *Socket) Send(bufs [][]byte) (dropped int, err error) {
	for len(bufs) > 0 {
		n := min(len(bufs), len(s.msgs))
		for i := 0; i < n; i++ {
			s.iovs[i].Base = &bufs[i][0]
			s.iovs[i].SetLen(len(bufs[i]))
		}
		s.txN = n
		if werr := s.rc.Write(s.txFn); werr != nil {
			return dropped + len(bufs), werr
		}
		if s.txErrno != 0 {
			// sendmmsg fails only when its first message does: drop
			// that one and go on with the rest.
			dropped++
			err = s.txErrno
			bufs = bufs[1:]
			continue
		}
		bufs = bufs[s.txR:]
	}
	return dropped, err
}

// trySend is Send's readiness callback: one sendmmsg of the prepared
// messages; false (wait for room) when the send buffer is full.
//
// It is a raw system call, without the runtime's entersyscall/exitsyscall.
// On a veth the kernel runs the receiving host's whole stack inside this
// call, so it often outlasts the 20 µs after which Go's sysmon treats a
// system call as blocking and may hand the P to another thread. Measured
// under the benchmark's conn load: with the ordinary call, sysmon's thread
// woke 3,400 times a second (2% of all CPU samples) and the worker ran on
// four threads in turn; with the raw call, sysmon woke 32 times a second,
// the worker stayed on one thread, and rawlb spent 15-20% less CPU per
// request (docs/performance.md). The call cannot block: the socket is
// non-blocking, so a full send buffer is EAGAIN (sendmmsg adds
// MSG_DONTWAIT for an O_NONBLOCK file), and the wait for room goes
// through the netpoller like any other.
func (s *Socket) trySend(fd uintptr) bool {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.msgs[0])), uintptr(s.txN), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		s.txR, s.txErrno = int(r), errno
		return true
	}
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

// Close ends a blocking Receive and closes the socket. Receive returns
// ErrClosed afterwards. The ring stays mapped until Free, so a Receive or
// Send still running on another goroutine never touches unmapped memory.
func (s *Socket) Close() {
	if s.closed.Swap(true) {
		return
	}
	// fd itself is left as it is: Stats may still read it from another
	// goroutine, and gets EBADF once the descriptor is gone.
	if s.file != nil {
		_ = s.file.Close()
	} else {
		unix.Close(s.fd)
	}
}

// Free closes the socket if need be and unmaps the ring. Call it after the
// goroutine using the socket has returned (or never started).
func (s *Socket) Free() {
	s.Close()
	if s.ring != nil {
		_ = unix.Munmap(s.ring)
		s.ring = nil
	}
}
