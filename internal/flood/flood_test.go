package flood_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/internal/flood"
	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/packet"
)

// These tests flood the lab's balancer host (198.18.0.2, nothing running
// on it but its kernel) from the client host and look at what arrives
// there: every frame through an AF_PACKET capture, and the kernel's own
// counts of TCP segments received and of checksum errors.

var (
	target  = netip.MustParseAddrPort("198.18.0.2:20000")
	spoofed = netip.MustParsePrefix("198.18.128.0/17")
)

// twoHosts is a lab of a client and the balancer host, nothing else: no
// frame on its segment but the test's.
func twoHosts(t testing.TB) *netlab.Lab {
	t.Helper()
	return netlab.New(t, netlab.Options{Backends: 0})
}

func linkFrom(l *netlab.Lab) flood.Link {
	return flood.Link{Netns: l.Client.Name, Iface: l.Client.Iface, DstMAC: l.Balancer.MAC}
}

// capture is an AF_PACKET socket on a host's eth0 that keeps every
// incoming IPv4 frame. Its receive buffer is forced to 64 MiB, room for
// well over 10,000 small frames, so it can be read after the flood.
type capture struct {
	fd int
}

func startCapture(t testing.TB, h *netlab.Host) *capture {
	t.Helper()
	var c capture
	var err error
	if nsErr := h.Do(func() {
		var ifi *net.Interface
		if ifi, err = net.InterfaceByName(h.Iface); err != nil {
			return
		}
		proto := int(htons(unix.ETH_P_IP))
		if c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return
		}
		if err = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return
		}
		err = unix.Bind(c.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index})
	}); nsErr != nil || err != nil {
		t.Fatalf("capture on %s: %v %v", h.Name, nsErr, err)
	}
	t.Cleanup(func() { unix.Close(c.fd) })
	return &c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// collect reads incoming frames that match until it has want of them, or
// until nothing has arrived for a second (frames lost or never sent).
func (c *capture) collect(t testing.TB, want int, match func([]byte) bool) [][]byte {
	t.Helper()
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	buf := make([]byte, 2048)
	last := time.Now()
	for len(got) < want && time.Since(last) < time.Second {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			got = append(got, append([]byte(nil), buf[:n]...))
			last = time.Now()
		}
	}
	return got
}

// drops returns how many frames the capture's buffer had no room for.
func (c *capture) drops(t testing.TB) int {
	s, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		t.Fatal(err)
	}
	return int(s.Drops)
}

// tcpTo matches IPv4 TCP frames to dst with exactly the given flags.
func tcpTo(dst netip.AddrPort, flags uint8) func([]byte) bool {
	d := dst.Addr().As4()
	return func(f []byte) bool {
		if len(f) < 54 || binary.BigEndian.Uint16(f[12:14]) != packet.EtherTypeIPv4 {
			return false
		}
		ip := packet.IPv4(f[14:])
		if ip.Protocol() != packet.ProtoTCP || ip.Destination() != d {
			return false
		}
		tcp := packet.TCP(ip.Payload())
		return tcp.DestinationPort() == dst.Port() && tcp.Flags() == flags
	}
}

// checksumsVerify checks a received frame's IPv4 and TCP checksums with
// package packet's sums: a header that holds a correct checksum sums to 0.
func checksumsVerify(f []byte) error {
	ip := packet.IPv4(f[14:])
	if c := packet.Checksum(ip[:ip.HeaderLen()]); c != 0 {
		return fmt.Errorf("IPv4 header sums to %#04x", c)
	}
	seg := ip[ip.HeaderLen():ip.TotalLen()]
	if c := ^packet.Fold(packet.Sum(seg, packet.PseudoHeaderSum(ip.Source(), ip.Destination(), packet.ProtoTCP, len(seg)))); c != 0 {
		return fmt.Errorf("TCP segment sums to %#04x", c)
	}
	return nil
}

// linkDrops sums the drop counters on the path from the client to the
// balancer host that mean a frame was lost: a veth that cannot hand a
// frame to its peer's backlog counts it as a TX drop of the sending end
// (veth_xmit). The client's own eth0 is left out: a frame it refuses
// fails the send with ENOBUFS and the flood sends it again.
func linkDrops(t testing.TB, l *netlab.Lab) int64 {
	t.Helper()
	read := func(ns, iface, counter string) int64 {
		out := netlab.RunIn(t, ns, nil, "cat", "/sys/class/net/"+iface+"/statistics/"+counter)
		v, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if err != nil {
			t.Fatalf("%s %s %s: %q", ns, iface, counter, out)
		}
		return v
	}
	return read(l.Switch, "client", "rx_dropped") + read(l.Switch, "lb", "tx_dropped") +
		read(l.Balancer.Name, l.Balancer.Iface, "rx_dropped")
}

func TestSYNFloodArrives(t *testing.T) {
	cases := []struct {
		method  flood.Method
		workers int
	}{
		{flood.Auto, 0},
		{flood.Sendmmsg, 1},
		{flood.TXRing, 1},
		{flood.TXRing, 2},
		{flood.Sendmmsg, 2},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v/workers=%d", c.method, c.workers), func(t *testing.T) {
			l := twoHosts(t)
			capt := startCapture(t, l.Balancer)
			before := l.Balancer.Snmp(t)
			dropsBefore := linkDrops(t, l)
			const n = 10000
			f := flood.SYNFlood{
				Link: linkFrom(l), Dst: target, Sources: spoofed,
				Count: n, Duration: time.Minute, Seed: 42, Method: c.method, Workers: c.workers,
			}
			st, err := f.Run(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v: %.0f frames/s", st, st.Rate())
			if st.Sent != n || st.Stop != flood.StopCount {
				t.Fatalf("Sent %d, stopped by %v; want %d stopped by count", st.Sent, st.Stop, n)
			}
			got := capt.collect(t, n+1, tcpTo(target, packet.FlagSYN))
			// The target's TCP took in the segments and verified their
			// checksums itself: from an AF_PACKET sender they arrive
			// CHECKSUM_NONE, so the kernel sums every one in software.
			// Nothing else on the segment speaks TCP.
			after := l.Balancer.Snmp(t)
			in := after["Tcp.InSegs"] - before["Tcp.InSegs"]
			lost := linkDrops(t, l) - dropsBefore
			t.Logf("captured %d SYNs (capture drops %d); Tcp.InSegs +%d; veth drops %d", len(got), capt.drops(t), in, lost)
			if d := capt.drops(t); d != 0 {
				t.Fatalf("the capture dropped %d frames: results incomplete", d)
			}
			if bad := after["Tcp.InCsumErrors"] - before["Tcp.InCsumErrors"]; bad != 0 {
				t.Fatalf("the target's TCP counted %d checksum errors", bad)
			}
			// The count bound holds on the wire, and every frame is
			// accounted for: captured, or dropped by a veth whose
			// receiver's backlog was full (a busy machine can do that;
			// the veth counts it).
			if len(got)+int(lost) != n || in != int64(len(got)) {
				t.Fatalf("%d SYNs captured, %d dropped by the veths, %d TCP segments received; Count was %d", len(got), lost, in, n)
			}
			if len(got) < n/2 {
				t.Fatalf("only %d of %d SYNs arrived: too few to check", len(got), n)
			}
			pairs := map[netip.AddrPort]bool{}
			for i, fr := range got {
				if err := checksumsVerify(fr); err != nil {
					t.Fatalf("frame %d: %v\n% x", i, err, fr)
				}
				ip := packet.IPv4(fr[14:])
				src := netip.AddrFrom4(ip.Source())
				if !spoofed.Contains(src) {
					t.Fatalf("frame %d from %v, outside %v", i, src, spoofed)
				}
				if string(fr[0:6]) != string(l.Balancer.MAC) || string(fr[6:12]) != string(l.Client.MAC) {
					t.Fatalf("frame %d: MACs % x -> % x", i, fr[6:12], fr[0:6])
				}
				pairs[netip.AddrPortFrom(src, packet.TCP(ip.Payload()).SourcePort())] = true
			}
			if len(pairs) < len(got)*99/100 {
				t.Fatalf("%d distinct source address/port pairs in %d SYNs, want at least 99%%", len(pairs), len(got))
			}
		})
	}
}

func TestSYNFloodStopsAtDuration(t *testing.T) {
	l := twoHosts(t)
	const d = 300 * time.Millisecond
	f := flood.SYNFlood{Link: linkFrom(l), Dst: target, Sources: spoofed, Count: 1 << 40, Duration: d, Seed: 1}
	before := l.Balancer.Snmp(t)["Tcp.InSegs"]
	st, err := f.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	in := l.Balancer.Snmp(t)["Tcp.InSegs"] - before
	t.Logf("%+v: %.0f frames/s; Tcp.InSegs +%d", st, st.Rate(), in)
	if st.Stop != flood.StopDuration || st.Sent == 0 || st.Sent >= f.Count {
		t.Fatalf("stopped by %v after %d frames, want by duration", st.Stop, st.Sent)
	}
	// Run checks the clock before every batch of 64, which takes well
	// under a millisecond; 10 s leaves room for any stall of a busy
	// machine and still catches a flood that ignores its deadline.
	if st.Elapsed < d || st.Elapsed > d+10*time.Second {
		t.Fatalf("ran %v with Duration %v", st.Elapsed, d)
	}
	if in > int64(st.Sent) {
		t.Fatalf("the target received %d TCP segments, more than the %d sent", in, st.Sent)
	}
}

func TestSYNFloodStopsOnCancel(t *testing.T) {
	l := twoHosts(t)
	ctx, cancel := context.WithCancel(t.Context())
	f := flood.SYNFlood{Link: linkFrom(l), Dst: target, Sources: spoofed, Count: 1 << 40, Duration: time.Hour, Seed: 1}
	time.AfterFunc(200*time.Millisecond, cancel)
	st, err := f.Run(ctx)
	t.Logf("%+v, %v", st, err)
	if !errors.Is(err, context.Canceled) || st.Stop != flood.StopCanceled || st.Sent == 0 {
		t.Fatalf("Run after cancel: %+v, %v; want context.Canceled with frames sent", st, err)
	}
	if st.Elapsed > time.Minute {
		t.Fatalf("Run returned %v after the cancel", st.Elapsed)
	}
}

func TestSYNFloodRate(t *testing.T) {
	l := twoHosts(t)
	capt := startCapture(t, l.Balancer)
	const rate = 2000
	f := flood.SYNFlood{Link: linkFrom(l), Dst: target, Sources: spoofed, Count: 1 << 40, Duration: 500 * time.Millisecond, Rate: rate, Seed: 3}
	st, err := f.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v: %.0f frames/s", st, st.Rate())
	// Each worker's pacer starts with one frame's credit and never runs
	// ahead, so this bound holds however the machine is loaded.
	// Unlimited, the same half second sends over a hundred times as many.
	if limit := float64(st.Workers) + rate*st.Elapsed.Seconds(); float64(st.Sent) > limit {
		t.Fatalf("%d frames in %v at %d/s: more than %.0f", st.Sent, st.Elapsed, rate, limit)
	}
	if st.Sent < 10 {
		t.Fatalf("only %d frames in %v at %d/s", st.Sent, st.Elapsed, rate)
	}
	if got := capt.collect(t, st.Sent+1, tcpTo(target, packet.FlagSYN)); len(got) > st.Sent {
		t.Fatalf("captured %d SYNs, %d sent", len(got), st.Sent)
	}
}

// TestRunInCallersNamespace runs a flood with Link.Netns empty from a
// thread that netlab.InNetNS has put into the client's namespace.
func TestRunInCallersNamespace(t *testing.T) {
	l := twoHosts(t)
	capt := startCapture(t, l.Balancer)
	link := linkFrom(l)
	link.Netns = ""
	f := flood.SYNFlood{Link: link, Dst: target, Sources: spoofed, Count: 100, Duration: time.Minute}
	var st flood.Stats
	if err := netlab.InNetNS(l.Client.Name, func() (err error) { st, err = f.Run(t.Context()); return err }); err != nil {
		t.Fatal(err)
	}
	got := capt.collect(t, 100, tcpTo(target, packet.FlagSYN))
	if st.Sent != 100 || len(got) != 100 {
		t.Fatalf("sent %d, captured %d; want 100", st.Sent, len(got))
	}
	// With Netns empty, SrcMAC still defaults to the interface's own,
	// read in the caller's namespace: the client's.
	if string(got[0][6:12]) != string(l.Client.MAC) {
		t.Fatalf("source MAC % x, want the client's % x", got[0][6:12], l.Client.MAC)
	}
}

func TestRSTSpray(t *testing.T) {
	l := twoHosts(t)
	capt := startCapture(t, l.Balancer)
	ln, err := l.Balancer.Listen("tcp", target.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := l.Client.Dial(t.Context(), "tcp", target.String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	src := netip.MustParseAddrPort(client.LocalAddr().String())

	// The server's next expected sequence number (RCV.NXT) is the end of
	// the client's last segment, read off the wire.
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	data := capt.collect(t, 1, func(f []byte) bool {
		return tcpTo(target, packet.FlagACK|packet.FlagPSH)(f) && binary.BigEndian.Uint16(f[34:36]) == src.Port()
	})
	if len(data) != 1 {
		t.Fatal("the client's data segment never reached the server")
	}
	tcp := packet.TCP(packet.IPv4(data[0][14:]).Payload())
	rcvNxt := tcp.Seq() + 5
	echo := func() error {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(server, buf); err != nil {
			return err
		}
		if string(buf) != "hello" {
			return fmt.Errorf("server read %q", buf)
		}
		_, err := server.Write([]byte("x"))
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}

	link := linkFrom(l)
	link.SrcMAC = nil
	spray := func(r flood.RSTSpray) {
		t.Helper()
		r.Link, r.Src, r.Dst = link, src, target
		st, err := r.Run(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if st.Sent != r.Count || st.Stop != flood.StopCount {
			t.Fatalf("RSTSpray: %+v, want %d sent", st, r.Count)
		}
		got := capt.collect(t, r.Count, tcpTo(target, packet.FlagRST))
		if len(got) != r.Count {
			t.Fatalf("captured %d of %d RSTs", len(got), r.Count)
		}
		for i, fr := range got {
			if err := checksumsVerify(fr); err != nil {
				t.Fatalf("RST %d: %v", i, err)
			}
			if netip.AddrFrom4(packet.IPv4(fr[14:]).Source()) != src.Addr() || binary.BigEndian.Uint16(fr[34:36]) != src.Port() {
				t.Fatalf("RST %d not from %v", i, src)
			}
			if seq := packet.TCP(fr[34:]).Seq(); r.Seq != nil && seq != *r.Seq+uint32(i)*r.SeqStep {
				t.Fatalf("RST %d: seq %d, want %d", i, seq, *r.Seq+uint32(i)*r.SeqStep)
			}
		}
	}

	// Random sequence numbers: a RST is accepted only if its sequence
	// number is exactly RCV.NXT (RFC 5961 3.2; one in 2^32 per RST), and
	// one merely inside the window draws a challenge ACK. The connection
	// survives: the server still reads what the client writes.
	spray(flood.RSTSpray{Count: 500, Seed: 7})
	wrong := rcvNxt + 1
	spray(flood.RSTSpray{Count: 1, Seq: &wrong})
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := echo(); err != nil {
		t.Fatalf("the connection did not survive RSTs with wrong sequence numbers: %v", err)
	}
	rcvNxt += 5

	// Exactly RCV.NXT: the server's socket is reset.
	spray(flood.RSTSpray{Count: 1, Seq: &rcvNxt})
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = server.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read after an exact RST: %v, want ECONNRESET", err)
	}
}

// TestSYNFloodLinkDown floods a link without carrier: every frame is
// refused, and Run gives up with an error instead of spinning until its
// Duration.
func TestSYNFloodLinkDown(t *testing.T) {
	for _, m := range []flood.Method{flood.Sendmmsg, flood.TXRing} {
		t.Run(m.String(), func(t *testing.T) {
			l := twoHosts(t)
			netlab.RunIn(t, l.Switch, nil, "ip", "link", "set", "client", "down")
			f := flood.SYNFlood{Link: linkFrom(l), Dst: target, Sources: spoofed, Count: 1000, Duration: time.Minute, Method: m}
			st, err := f.Run(t.Context())
			t.Logf("%+v, %v", st, err)
			if !errors.Is(err, syscall.ENOBUFS) || st.Sent != 0 || st.Stop != flood.StopError {
				t.Fatalf("flood over a link without carrier: %+v, %v; want ENOBUFS and nothing sent", st, err)
			}
			if st.Elapsed > 30*time.Second {
				t.Fatalf("gave up only after %v", st.Elapsed)
			}
		})
	}
}
