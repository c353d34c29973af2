package ring

import (
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// OpenGroup opens n sockets joined in a new PACKET_FANOUT group, so that
// each frame reaches exactly one of them. With prog, the group runs in
// PACKET_FANOUT_CBPF mode: the classic BPF program sees the frame from its
// network header (not the Ethernet header: fanout runs before the socket's
// own link-layer view) and returns the index of the socket that gets it,
// modulo n. Without prog, frames are spread by flow hash.
//
// The group id is chosen by the kernel (PACKET_FANOUT_FLAG_UNIQUEID, Linux
// 4.3+) and read back for the other members. Fanout ids are per network
// namespace and shared by every process in it: an id derived from the pid,
// as rawlb once did, let two balancers whose pids differ in the low bit
// join one group and take each other's frames.
func OpenGroup(c Config, n int, prog []bpf.RawInstruction) ([]*Socket, uint16, error) {
	if n < 1 || n > 256 {
		return nil, 0, fmt.Errorf("ring: fanout group of %d sockets: need 1 to 256", n)
	}
	mode := unix.PACKET_FANOUT_HASH
	if len(prog) > 0 {
		mode = unix.PACKET_FANOUT_CBPF
	}
	// A socket that joins a group hands its packet hook over to the
	// group's, which ignores outgoing frames only if the group says so
	// (fanout_add, net/packet/af_packet.c): each socket's own
	// PACKET_IGNORE_OUTGOING no longer applies. Without the flag, every
	// frame the host sends to rawlb over lo reached a worker twice, once
	// as PACKET_OUTGOING (copied, then dropped as not_host: 824 of them in
	// TestOneHostLoopback with two workers) and once as incoming. Every
	// member must give the same flags.
	mode |= unix.PACKET_FANOUT_FLAG_IGNORE_OUTGOING
	var socks []*Socket
	fail := func(err error) ([]*Socket, uint16, error) {
		for _, s := range socks {
			s.Free()
		}
		return nil, 0, err
	}
	if n == 1 {
		s, err := Open(c) // a group of one needs no fanout
		if err != nil {
			return nil, 0, err
		}
		return []*Socket{s}, 0, nil
	}
	// Until the last member has joined, the kernel spreads frames over the
	// members there are (fanout_demux_bpf: the program's answer modulo the
	// current count), so the first socket would get every frame meant for
	// the others. A worker that finds another's flow in its ring answers it
	// as unknown, with a RST: 19 of 300 connections handed over by a
	// restart were reset so (TestSlowRestartKeepsConnections, two workers).
	// So each member drops everything until the group is whole, and only
	// then gets its filter: a frame of that moment is lost, and the sender
	// retransmits it, as for the restart's own gap.
	want := c.Filter
	if len(want) == 0 {
		want = acceptAll
	}
	c.Filter = dropAll
	var id uint16
	for i := 0; i < n; i++ {
		s, err := Open(c)
		if err != nil {
			return fail(err)
		}
		socks = append(socks, s)
		arg := int(id) | mode<<16
		if i == 0 {
			arg = (mode | unix.PACKET_FANOUT_FLAG_UNIQUEID) << 16
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_FANOUT, arg); err != nil {
			return fail(fmt.Errorf("ring: joining fanout group %d: %w", id, err))
		}
		if i == 0 {
			got, err := unix.GetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
			if err != nil {
				return fail(fmt.Errorf("ring: reading the fanout group id: %w", err))
			}
			id = uint16(got)
			if len(prog) > 0 {
				if err := s.SetFanoutProgram(prog); err != nil {
					return fail(err)
				}
			}
		}
	}
	for _, s := range socks {
		if err := s.SetFilter(want); err != nil {
			return fail(err)
		}
	}
	return socks, id, nil
}

// dropAll and acceptAll are socket filters: a classic BPF program's
// return value is how many bytes of the frame to keep.
var (
	dropAll   = []bpf.RawInstruction{{Op: 0x06, K: 0}}          // BPF_RET|BPF_K 0
	acceptAll = []bpf.RawInstruction{{Op: 0x06, K: 0xffffffff}} // BPF_RET|BPF_K all
)

// SetFanoutProgram replaces the group's PACKET_FANOUT_CBPF program; any
// member may set it for all.
func (s *Socket) SetFanoutProgram(prog []bpf.RawInstruction) error {
	p := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	if err := unix.SetsockoptSockFprog(s.fd, unix.SOL_PACKET, unix.PACKET_FANOUT_DATA, &p); err != nil {
		return fmt.Errorf("ring: setting the fanout program: %w", err)
	}
	return nil
}
