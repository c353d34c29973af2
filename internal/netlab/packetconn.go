package netlab

import (
	"fmt"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PacketConn is an AF_PACKET socket on a host's eth0: tests use it to put
// hand-made frames on the wire (malformed ones, ICMP errors) and to watch
// what arrives.
type PacketConn struct {
	fd      int
	ifindex int
}

// PacketConn opens an AF_PACKET socket bound to h's interface; it is
// closed in t.Cleanup.
func (h *Host) PacketConn(t testing.TB) *PacketConn {
	t.Helper()
	var pc PacketConn
	var err error
	nsErr := h.inNetns(func() {
		var ifi *net.Interface
		if ifi, err = net.InterfaceByName(h.Iface); err != nil {
			return
		}
		pc.ifindex = ifi.Index
		if pc.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL))); err != nil {
			return
		}
		err = unix.Bind(pc.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if nsErr != nil || err != nil {
		t.Fatalf("netlab: packet socket in %s: %v %v", h.Name, nsErr, err)
	}
	t.Cleanup(func() { unix.Close(pc.fd) })
	return &pc
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Send puts one Ethernet frame on the wire as it is.
func (pc *PacketConn) Send(frame []byte) error {
	_, err := unix.Write(pc.fd, frame)
	return err
}

// Receive returns the first incoming frame for which match returns true,
// or an error once timeout has passed.
func (pc *PacketConn) Receive(timeout time.Duration, match func([]byte) bool) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("netlab: no matching frame within %v", timeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(pc.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, err
		}
		n, from, err := unix.Recvfrom(pc.fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			return nil, err
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// Do runs fn on a thread inside h's namespace: sockets fn creates belong to
// that namespace for good, and may be used from any goroutine afterwards.
func (h *Host) Do(fn func()) error { return h.inNetns(fn) }

// SendBatch puts frames on the wire with one sendmmsg per call, so a test
// can fill a receiver's ring faster than one write per frame would.
func (pc *PacketConn) SendBatch(frames [][]byte) error {
	msgs := make([]unix.Mmsghdr, len(frames))
	iovs := make([]unix.Iovec, len(frames))
	for i, f := range frames {
		iovs[i].Base = &f[0]
		iovs[i].SetLen(len(f))
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	for len(msgs) > 0 {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(pc.fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
		if errno != 0 {
			return errno
		}
		msgs = msgs[n:]
	}
	return nil
}

// Arrived waits until a receiving socket's kernel counters show want frames
// taken in (or stop growing: a bridge may drop some) and returns how many
// are waiting in its ring. stats returns the counts since its last call;
// the kernel counts a dropped frame in both (af_packet.c adds tp_drops to
// tp_packets). Benchmarks call it with their timer stopped, to fill a ring
// before timing how fast it drains.
func Arrived(t testing.TB, want int, stats func() (packets, drops int)) int {
	var packets, drops int
	idle := 0
	for packets < want && idle < 50 {
		p, d := stats()
		if p == 0 {
			idle++
			time.Sleep(time.Millisecond) // polling the kernel's counters; nothing to wait on
			continue
		}
		idle = 0
		packets += p
		drops += d
	}
	if packets == 0 {
		t.Fatal("netlab: no frame reached the socket")
	}
	return packets - drops
}
