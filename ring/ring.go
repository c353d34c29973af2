// Package ring is rawlb's link to the wire: AF_PACKET sockets with a
// TPACKET_V2 receive ring and virtio-net headers, fanout groups, and batched
// sends that choose the interface per frame.
//
// Why TPACKET_V2 and not V3: V3 hands blocks to user space only when a
// block fills or its retire timer (at least 1 ms) fires, so a forwarder
// would hold a lone packet for a millisecond when traffic is light. V2
// frames are handed over one by one as they land.
//
// Why small slots: a V2 ring has fixed-size slots, and a slot big enough for
// a 64 KB GSO frame (17 pages) makes a ring that holds a burst of thousands
// of SYNs cost hundreds of megabytes. So slots are sized for a full-size
// Ethernet frame, and the few frames that do not fit take the kernel's copy
// path (PACKET_COPY_THRESH, tpacket_rcv in net/packet/af_packet.c): the slot
// is marked TP_STATUS_COPY with a truncated copy, and the whole frame is
// queued on the socket's receive queue, from which Receive reads it in ring
// order. Order is kept because the kernel queues the frame under the same
// lock that hands out the slot.
//
// Why virtio-net headers (PACKET_VNET_HDR): with TSO/GSO on the senders and
// GRO on receiving NICs, the kernel hands AF_PACKET TCP segments far above
// the MTU, often with a checksum left for offload. The header tells which
// (NEEDS_CSUM, gso_type, gso_size), and giving the same header back on send
// lets the kernel segment and checksum on the way out, so a 64 KB segment
// costs one send.
//
// Why unbound sockets: a socket bound to no interface receives from every
// interface, and the sockaddr_ll the kernel writes beside each frame says
// which. One ring per worker then serves a balancer whose clients arrive on
// one interface and whose backends sit behind another (or on lo), and each
// frame sent names its own interface. The socket filter decides which
// interfaces count.
package ring

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
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

// Packet types from sockaddr_ll (include/uapi/linux/if_packet.h).
const (
	PacketHost     = 0 // addressed to this host
	PacketOutgoing = 4 // sent by this host (PACKET_IGNORE_OUTGOING keeps them out)
)

// Defaults for zero Config fields.
const (
	// DefaultFrameSize holds a 1514-byte frame with the TPACKET and
	// virtio-net headers in front of it.
	DefaultFrameSize = 2048
	// DefaultFrames holds a burst of several thousand SYNs: 3,000
	// concurrent connects overflowed 256 slots by 2,181 frames.
	DefaultFrames = 8192
	// DefaultBatch is the most frames one Receive returns.
	DefaultBatch = 64
	// DefaultLargeFrames is how many frames larger than a slot one batch
	// may hold; a batch ends early when they are all in use.
	DefaultLargeFrames = 16
	// largeFrameSize holds the largest GSO frame (a 64 KB IPv4 packet),
	// its Ethernet header and a VLAN tag, behind the virtio-net header.
	largeFrameSize = VNetHdrLen + 65535 + 18 + 64
	// defaultRcvBuf bounds the socket queue of frames larger than a slot:
	// the kernel copies a frame there only while the queue is below it.
	defaultRcvBuf = 32 << 20
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

// Packet is one received frame. Its slices point into the ring (or into a
// large-frame buffer of the socket) and are valid until the frame is
// released.
type Packet struct {
	// Buf is the virtio-net header followed by the frame: exactly what
	// Send takes, so a frame rewritten in place goes back out without a
	// copy.
	Buf     []byte
	Frame   []byte  // the Ethernet frame, Buf[VNetHdrLen:]
	VNet    VNetHdr // Buf[:VNetHdrLen]
	Status  uint32  // tp_status: TP_STATUS_CSUMNOTREADY, TP_STATUS_VLAN_VALID, ...
	WireLen int     // tp_len: the frame's real length; longer than Frame when it was truncated
	Ifindex int32   // the interface it arrived on
	PktType uint8   // PacketHost, ...
}

// Truncated reports whether the frame was cut short (larger than a slot,
// and the kernel could not queue the whole of it).
func (p *Packet) Truncated() bool { return len(p.Frame) < p.WireLen }

// Out is a frame to send: a virtio-net header followed by the frame, and the
// interface to send it on.
type Out struct {
	Buf     []byte
	Ifindex int32
}

// Config sizes and filters a Socket.
type Config struct {
	// Ifindex binds the socket to one interface; 0 receives from every
	// interface and leaves the choice to Filter.
	Ifindex int
	// FrameSize is the size of one ring slot (default DefaultFrameSize). A
	// frame that does not fit is read from the socket queue instead.
	FrameSize int
	// Frames is the number of slots (default DefaultFrames).
	Frames int
	// Batch is the most packets Receive returns at once (default DefaultBatch).
	Batch int
	// LargeFrames is how many frames larger than a slot one batch may
	// hold (default DefaultLargeFrames).
	LargeFrames int
	// Filter is a classic BPF program run by the kernel before a frame is
	// copied into the ring.
	Filter []bpf.RawInstruction
	// QdiscBypass sends straight to the driver (PACKET_QDISC_BYPASS).
	QdiscBypass bool
	// IPOnly binds the socket to ETH_P_IP instead of ETH_P_ALL. The kernel
	// hands a frame to ETH_P_ALL sockets before tc ingress runs and to
	// ETH_P_IP ones after it (__netif_receive_skb_core), so only an IPOnly
	// socket misses the frames a tc program redirected (package fastpath).
	IPOnly bool
}

func (c *Config) defaults() {
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	if c.Frames == 0 {
		c.Frames = DefaultFrames
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.LargeFrames == 0 {
		c.LargeFrames = DefaultLargeFrames
	}
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

	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	addrs []unix.RawSockaddrLinklayer

	large  [][]byte // buffers for frames larger than a slot
	nlarge int      // of them in use by the current batch

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

// Open creates the socket, its ring and filter, and binds it. It needs
// CAP_NET_RAW.
func Open(c Config) (*Socket, error) {
	c.defaults()
	if c.FrameSize%16 != 0 || os.Getpagesize()%c.FrameSize != 0 && c.FrameSize%os.Getpagesize() != 0 {
		return nil, fmt.Errorf("ring: frame size %d must divide the page size or be a multiple of it", c.FrameSize)
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
	s := &Socket{fd: fd}
	if err := s.setup(c); err != nil {
		s.Free()
		return nil, err
	}
	if err := s.mapRing(c); err != nil {
		s.Free()
		return nil, err
	}
	return s, nil
}

// Inherit takes over a socket set up by Open in an earlier process (a binary
// upgrade passes its descriptor on): the ring, filter and fanout group come
// with it. c must size the ring as the earlier process did, and head is the
// slot it would have read next, so no frame is skipped or read twice.
func Inherit(fd int, c Config, head int) (*Socket, error) {
	c.defaults()
	if head < 0 || head >= c.Frames {
		return nil, fmt.Errorf("ring: inherited head %d outside a ring of %d slots", head, c.Frames)
	}
	s := &Socket{fd: fd}
	if err := s.mapRing(c); err != nil {
		s.fd = -1 // not ours to close on failure: the caller decides
		return nil, err
	}
	s.head = head
	return s, nil
}

// IPOnly reports whether the socket is bound to ETH_P_IP (see
// Config.IPOnly), for an inherited socket whose Config is not known.
func (s *Socket) IPOnly() (bool, error) {
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		return false, fmt.Errorf("ring: getsockname: %w", err)
	}
	ll, ok := sa.(*unix.SockaddrLinklayer)
	if !ok {
		return false, fmt.Errorf("ring: getsockname: not a packet socket")
	}
	return ll.Protocol == htons(unix.ETH_P_IP), nil
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
	if err := s.SetFilter(c.Filter); err != nil {
		return err
	}
	// Frames larger than a slot are queued whole on the socket as well;
	// the queue is bounded by the receive buffer.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_COPY_THRESH, 1); err != nil {
		return fmt.Errorf("ring: PACKET_COPY_THRESH: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, defaultRcvBuf); err != nil {
		// Without CAP_NET_ADMIN, SO_RCVBUF up to rmem_max still works.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, defaultRcvBuf)
	}
	req := unix.TpacketReq{Block_size: uint32(max(c.FrameSize, os.Getpagesize())), Frame_size: uint32(c.FrameSize), Frame_nr: uint32(c.Frames)}
	req.Block_nr = req.Frame_nr * req.Frame_size / req.Block_size
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("ring: PACKET_RX_RING (%d x %d bytes): %w", c.Frames, c.FrameSize, err)
	}
	// Frames the host itself sends are not ours to forward, and copying
	// them would only cost time (Linux 4.20+).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fmt.Errorf("ring: PACKET_IGNORE_OUTGOING: %w", err)
	}
	if c.QdiscBypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("ring: PACKET_QDISC_BYPASS: %w", err)
		}
	}
	proto := uint16(unix.ETH_P_ALL)
	if c.IPOnly {
		proto = unix.ETH_P_IP
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: c.Ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("ring: binding to interface %d: %w", c.Ifindex, err)
	}
	return nil
}

// mapRing maps the ring and prepares the send and wait state.
func (s *Socket) mapRing(c Config) error {
	n := c.Frames * c.FrameSize
	ring, err := unix.Mmap(s.fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_LOCKED)
	if err != nil {
		// MAP_LOCKED can fail under a low RLIMIT_MEMLOCK; the ring works
		// unlocked too, only it may be paged out.
		ring, err = unix.Mmap(s.fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("ring: mmap of %d bytes: %w", n, err)
		}
	}
	s.ring, s.frames, s.size = ring, c.Frames, c.FrameSize
	// Waiting goes through Go's netpoller (epoll), not a blocking poll(2):
	// a blocked system call pins a thread and makes the scheduler hand its
	// P to another, which at one packet per wake-up cost more CPU than the
	// packet itself. AF_PACKET signals readiness per frame (sk_data_ready
	// in tpacket_rcv) and packet_poll reports the ring's state, so no
	// frame is missed between a look at the ring and the wait.
	if err := unix.SetNonblock(s.fd, true); err != nil {
		return fmt.Errorf("ring: non-blocking socket: %w", err)
	}
	s.file = os.NewFile(uintptr(s.fd), "afpacket")
	if s.rc, err = s.file.SyscallConn(); err != nil {
		return fmt.Errorf("ring: %w", err)
	}
	s.rxFn = s.tryReceive
	s.txFn = s.trySend
	s.msgs = make([]unix.Mmsghdr, c.Batch)
	s.iovs = make([]unix.Iovec, c.Batch)
	s.addrs = make([]unix.RawSockaddrLinklayer, c.Batch)
	for i := range s.msgs {
		s.msgs[i].Hdr.Iov = &s.iovs[i]
		s.msgs[i].Hdr.SetIovlen(1)
		s.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&s.addrs[i]))
		s.msgs[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
		s.addrs[i].Family = unix.AF_PACKET
		s.addrs[i].Protocol = htons(unix.ETH_P_IP)
	}
	s.large = make([][]byte, c.LargeFrames)
	for i := range s.large {
		s.large[i] = make([]byte, largeFrameSize)
	}
	return nil
}

// SetFilter replaces the socket filter; the kernel swaps it atomically, so a
// reload that changes what traffic is ours loses no frame. A nil program
// accepts everything.
func (s *Socket) SetFilter(prog []bpf.RawInstruction) error {
	if len(prog) == 0 {
		return nil
	}
	p := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	if err := unix.SetsockoptSockFprog(s.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &p); err != nil {
		return fmt.Errorf("ring: attaching the BPF filter: %w", err)
	}
	return nil
}

// FD returns the socket's descriptor, to hand it to a successor process.
func (s *Socket) FD() int { return s.fd }

// Head returns the slot Receive reads next (see Inherit).
func (s *Socket) Head() int { return s.head }

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
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, err
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

// Offsets in a TPACKET_V2 slot: struct tpacket2_hdr, then struct
// sockaddr_ll at TPACKET_ALIGN(sizeof(struct tpacket2_hdr)).
const (
	sllOffset  = 32
	sllIfindex = sllOffset + 4
	sllPktType = sllOffset + 10
)

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
		p := &pkts[n]
		if st&unix.TP_STATUS_COPY != 0 {
			if s.nlarge == len(s.large) {
				break // the batch ends here; the next one reads on
			}
			if !s.readLarge(p) {
				// The queued copy is missing (it cannot be, by the
				// kernel's ordering): keep the truncated slot, which
				// the caller counts and drops.
				s.slot(p, base, hdr)
			}
		} else {
			s.slot(p, base, hdr)
		}
		p.Status = st
		p.WireLen = int(hdr.Len)
		p.Ifindex = *(*int32)(unsafe.Pointer(&s.ring[base+sllIfindex]))
		p.PktType = s.ring[base+sllPktType]
		n++
	}
	return n
}

// slot points p at the frame in the ring slot at base.
func (s *Socket) slot(p *Packet, base int, hdr *unix.Tpacket2Hdr) {
	mac := base + int(hdr.Mac)
	p.Buf = s.ring[mac-VNetHdrLen : mac+int(hdr.Snaplen)]
	p.VNet = VNetHdr(p.Buf[:VNetHdrLen])
	p.Frame = p.Buf[VNetHdrLen:]
}

// readLarge reads the next frame of the socket queue, the whole of a frame
// whose slot holds a truncated copy, into a large-frame buffer.
func (s *Socket) readLarge(p *Packet) bool {
	buf := s.large[s.nlarge]
	r, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(s.fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	if errno != 0 || int(r) < VNetHdrLen {
		return false
	}
	s.nlarge++
	p.Buf = buf[:r]
	p.VNet = VNetHdr(p.Buf[:VNetHdrLen])
	p.Frame = p.Buf[VNetHdrLen:]
	return true
}

// Release hands the n oldest received frames back to the kernel, and the
// large-frame buffers with them: call it after the batch was sent.
func (s *Socket) Release(n int) {
	for k := 0; k < n; k++ {
		atomic.StoreUint32(s.status((s.head+k)%s.frames), unix.TP_STATUS_KERNEL)
	}
	s.head = (s.head + n) % s.frames
	s.nlarge = 0
}

// Send transmits each frame on its interface with as few sendmmsg calls as
// it takes, waiting while the socket's send buffer is full. A frame the
// kernel refuses is skipped and counted; the rest still go. It returns how
// many were refused and the last such error.
func (s *Socket) Send(out []Out) (dropped int, err error) {
	for len(out) > 0 {
		n := min(len(out), len(s.msgs))
		for i := 0; i < n; i++ {
			s.iovs[i].Base = &out[i].Buf[0]
			s.iovs[i].SetLen(len(out[i].Buf))
			s.addrs[i].Ifindex = out[i].Ifindex
		}
		s.txN = n
		if werr := s.rc.Write(s.txFn); werr != nil {
			return dropped + len(out), werr
		}
		if s.txErrno != 0 {
			// sendmmsg fails only when its first message does: drop
			// that one and go on with the rest.
			dropped++
			err = s.txErrno
			out = out[1:]
			continue
		}
		out = out[s.txR:]
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

// SetReadDeadline makes a Receive that is waiting return
// os.ErrDeadlineExceeded at t, so that the worker can do timed housekeeping
// while no frame arrives. The zero time clears it.
func (s *Socket) SetReadDeadline(t time.Time) error { return s.file.SetReadDeadline(t) }

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
	} else if s.fd >= 0 {
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

// Frames returns the number of ring slots.
func (s *Socket) Frames() int { return s.frames }

// FrameSize returns the size of a ring slot.
func (s *Socket) FrameSize() int { return s.size }
