package flood

import (
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// maxFrameLen is the longest frame a generator may make: a TX ring slot is
// sized for it. A SYN with every option is 74 bytes.
const maxFrameLen = 96

// sender hands frames to the kernel. It belongs to one goroutine.
type sender interface {
	// send makes n frames (n <= batchSize) with g and sends them; it
	// returns how many the kernel took.
	send(n int, g generator) (int, error)
	close()
	name() string
}

// openSenders creates n sockets bound to link.Iface inside link.Netns and
// returns them with the interface's MAC.
func openSenders(link Link, m Method, n int) ([]sender, net.HardwareAddr, error) {
	var (
		senders []sender
		mac     net.HardwareAddr
	)
	err := inNetns(link.Netns, func() error {
		ifi, err := net.InterfaceByName(link.Iface)
		if err != nil {
			return fmt.Errorf("flood: interface %q in namespace %q: %w", link.Iface, nsLabel(link.Netns), err)
		}
		mac = ifi.HardwareAddr
		for range n {
			var s sender
			var err error
			if m == TXRing {
				s, err = openRing(ifi)
			} else {
				s, err = openMmsg(ifi)
			}
			if err != nil {
				for _, s := range senders {
					s.close()
				}
				senders = nil
				return fmt.Errorf("flood: %v socket on %s in namespace %q: %w", m, link.Iface, nsLabel(link.Netns), err)
			}
			senders = append(senders, s)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if len(mac) != 6 {
		for _, s := range senders {
			s.close()
		}
		return nil, nil, fmt.Errorf("flood: %s has no Ethernet address (%q)", link.Iface, mac)
	}
	return senders, mac, nil
}

func nsLabel(name string) string {
	if name == "" {
		return "(the caller's)"
	}
	return name
}

// inNetns runs fn on a thread inside the named namespace, or on the
// calling goroutine if name is empty.
//
// A socket stays in the namespace its creating thread was in when
// socket(2) ran, whichever thread later uses it; but setns(2) moves a
// thread, and the Go scheduler moves goroutines between threads. So fn
// runs on a fresh goroutine locked to its thread, and that goroutine exits
// without unlocking: the runtime then ends the thread, which never returns
// to the pool still inside the lab's namespace (the same reasoning as
// internal/netlab's InNetNS).
func inNetns(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread; see above.
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("flood: open namespace %s: %w", name, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("flood: enter namespace %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// packetSocket opens an AF_PACKET socket for sending only and binds it to
// ifi. Protocol 0 registers no receive hook, so the socket never queues a
// copy of the lab's traffic. PACKET_QDISC_BYPASS sends straight to the
// driver: it skips the qdisc layer (a veth has none anyway) and the taps
// (dev_queue_xmit_nit), so a capture on the sending host does not slow the
// flood down by cloning every frame.
func packetSocket(ifi *net.Interface, setup func(fd int) error) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}
	if setup != nil {
		if err := setup(fd); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind: %w", err)
	}
	return fd, nil
}

// mmsgSender sends a batch from one slab of frames with sendmmsg(2).
type mmsgSender struct {
	fd    int
	iface string
	slab  []byte
	iovs  []unix.Iovec
	msgs  []unix.Mmsghdr
	flen  int
}

func openMmsg(ifi *net.Interface) (*mmsgSender, error) {
	fd, err := packetSocket(ifi, nil)
	if err != nil {
		return nil, err
	}
	return &mmsgSender{fd: fd, iface: ifi.Name}, nil
}

func (s *mmsgSender) send(n int, g generator) (int, error) {
	if s.flen != g.frameLen() {
		s.flen = g.frameLen()
		s.slab = make([]byte, batchSize*s.flen)
		s.iovs = make([]unix.Iovec, batchSize)
		s.msgs = make([]unix.Mmsghdr, batchSize)
		for i := range s.msgs {
			s.iovs[i].Base = &s.slab[i*s.flen]
			s.iovs[i].SetLen(s.flen)
			s.msgs[i].Hdr.Iov = &s.iovs[i]
			s.msgs[i].Hdr.SetIovlen(1)
		}
	}
	for i := range n {
		g.next(s.slab[i*s.flen : (i+1)*s.flen])
	}
	done := 0
	var b backoff
	for done < n {
		// After a refused message sendmmsg returns the count before
		// it, so the next call starts with the refused one.
		k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[done])), uintptr(n-done), 0, 0, 0)
		switch errno {
		case 0:
			done += int(k)
			b = backoff{}
		case unix.EINTR:
		case unix.ENOBUFS:
			if err := b.wait(); err != nil {
				return done, err
			}
		default:
			return done, errno
		}
	}
	return done, nil
}

// backoff paces the retries of a send the kernel refused with ENOBUFS.
// AF_PACKET reports a frame the device dropped that way
// (net_xmit_errno), and a veth drops one when its peer's backlog is full
// (netdev_max_backlog), which happens when the receiving softirq falls
// behind on a busy machine; it drains as soon as that softirq runs again.
// So the first retries only yield the CPU, later ones sleep, and after
// maxCongestion of refusals in a row the send fails: the link is then
// most likely down (no carrier drops every frame the same way).
type backoff struct {
	tries  int
	waited time.Duration
}

const maxCongestion = time.Second

func (b *backoff) wait() error {
	b.tries++
	if b.tries <= 16 {
		runtime.Gosched()
		return nil
	}
	if b.waited >= maxCongestion {
		return fmt.Errorf("%w for %v: is the link down (no carrier)?", unix.ENOBUFS, maxCongestion)
	}
	d := min(time.Duration(b.tries)*10*time.Microsecond, time.Millisecond)
	time.Sleep(d)
	b.waited += d
	return nil
}

func (s *mmsgSender) close()       { unix.Close(s.fd) }
func (s *mmsgSender) name() string { return s.iface }

// ringSender writes frames into a TPACKET_V2 transmit ring and flushes
// each batch with one send(2). The kernel walks the ring from its own
// cursor, taking every slot marked TP_STATUS_SEND_REQUEST and handing it
// back as TP_STATUS_AVAILABLE once the frame's skb is freed; a veth frees
// (orphans) it as soon as it forwards it, so a blocking send returns with
// the whole batch's slots free again. The cursor here mirrors the
// kernel's: both advance one slot per frame and wrap at ringFrames.
type ringSender struct {
	fd    int
	iface string
	mem   []byte
	cur   int
}

const (
	// ringSlot holds the 32-byte tpacket2_hdr, then the frame: for a
	// V2 TX ring the kernel reads data at tp_hdrlen - sizeof(sockaddr_ll)
	// = 52 - 20 = 32 (tpacket_parse_header in af_packet.c).
	ringSlot    = 128
	ringDataOff = 32
	ringBlock   = 4096
	// ringFrames slots: 4 batches, so the kernel never waits for a slot
	// the generator has not handed back yet.
	ringFrames = 4 * batchSize
)

func openRing(ifi *net.Interface) (*ringSender, error) {
	if ringDataOff+maxFrameLen > ringSlot {
		panic("flood: ring slot too small")
	}
	fd, err := packetSocket(ifi, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
			return fmt.Errorf("PACKET_VERSION TPACKET_V2: %w", err)
		}
		req := unix.TpacketReq{
			Block_size: ringBlock,
			Block_nr:   ringFrames * ringSlot / ringBlock,
			Frame_size: ringSlot,
			Frame_nr:   ringFrames,
		}
		if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req); err != nil {
			return fmt.Errorf("PACKET_TX_RING: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, ringFrames*ringSlot, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap TX ring: %w", err)
	}
	return &ringSender{fd: fd, iface: ifi.Name, mem: mem}, nil
}

// status is slot i's tp_status word, shared with the kernel.
func (s *ringSender) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&s.mem[i*ringSlot]))
}

func (s *ringSender) send(n int, g generator) (int, error) {
	flen := g.frameLen()
	first := s.cur
	for range n {
		st := s.status(s.cur)
		if atomic.LoadUint32(st) != unix.TP_STATUS_AVAILABLE {
			// Only possible after a failed send left slots queued;
			// flush them before reusing their slots.
			if err := s.flush(); err != nil {
				return 0, err
			}
			if v := atomic.LoadUint32(st); v != unix.TP_STATUS_AVAILABLE {
				return 0, fmt.Errorf("TX ring slot %d still has status %#x after a flush", s.cur, v)
			}
		}
		slot := s.mem[s.cur*ringSlot : (s.cur+1)*ringSlot]
		g.next(slot[ringDataOff : ringDataOff+flen])
		// tp_len, then the status store that hands the slot over:
		// the atomic store orders it after the frame's bytes.
		*(*uint32)(unsafe.Pointer(&slot[4])) = uint32(flen)
		atomic.StoreUint32(st, unix.TP_STATUS_SEND_REQUEST)
		s.cur = (s.cur + 1) % ringFrames
	}
	// A frame the device refused is marked SEND_REQUEST again and the
	// kernel's cursor stays on it (tpacket_snd's out_status), so the next
	// flush retries it and everything after it.
	var err error
	var b backoff
	for {
		err = s.flush()
		if err != unix.ENOBUFS {
			break
		}
		if err = b.wait(); err != nil {
			break
		}
	}
	// Slots the kernel did not take are still SEND_REQUEST.
	sent := 0
	for i := range n {
		if atomic.LoadUint32(s.status((first+i)%ringFrames)) != unix.TP_STATUS_SEND_REQUEST {
			sent++
		}
	}
	return sent, err
}

// flush asks the kernel to send every queued slot and, being a blocking
// send, waits until their skbs are released (tpacket_snd's need_wait).
func (s *ringSender) flush() error {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

func (s *ringSender) close() {
	unix.Munmap(s.mem)
	unix.Close(s.fd)
}

func (s *ringSender) name() string { return s.iface }
