package rawlb

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/internal/testenv"
)

func frameFor(t *testing.T, dst [4]byte, proto layers.IPProtocol, dport uint16, icmpType uint8, mod func([]byte)) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: net.IP{198, 18, 0, 10}, DstIP: net.IP(dst[:])}
	var l4 gopacket.SerializableLayer
	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: 5555, DstPort: layers.TCPPort(dport), SYN: true}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: 5555, DstPort: layers.UDPPort(dport)}
		_ = udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	default:
		l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(icmpType, 0)}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload(make([]byte, 28))); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if mod != nil {
		mod(b)
	}
	return b
}

func vmFor(t *testing.T, prog []bpf.RawInstruction) *bpf.VM {
	t.Helper()
	insns, ok := bpf.Disassemble(prog)
	if !ok {
		t.Fatal("program does not disassemble")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestSocketFilter(t *testing.T) {
	src := [4]byte{198, 18, 0, 2}
	vip2 := [4]byte{198, 18, 0, 5}
	other := [4]byte{198, 18, 0, 3}
	o := &ours{natSrc: src, natFirst: 40000, natLast: 59999, listen: []netip.AddrPort{
		netip.AddrPortFrom(netip.AddrFrom4(src), 20000), netip.AddrPortFrom(netip.AddrFrom4(src), 20001),
		netip.AddrPortFrom(netip.AddrFrom4(vip2), 80),
	}}
	prog, err := o.socketFilter()
	if err != nil {
		t.Fatal(err)
	}
	vm := vmFor(t, prog)
	tcp, udp, icmp := layers.IPProtocolTCP, layers.IPProtocolUDP, layers.IPProtocolICMPv4
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"tcp to the first service", frameFor(t, src, tcp, 20000, 0, nil), true},
		{"tcp to the second service", frameFor(t, src, tcp, 20001, 0, nil), true},
		{"tcp to a service on another address", frameFor(t, vip2, tcp, 80, 0, nil), true},
		{"that port on the NAT source", frameFor(t, src, tcp, 80, 0, nil), false},
		{"a service port on the other address", frameFor(t, vip2, tcp, 20000, 0, nil), false},
		{"tcp to the first nat port", frameFor(t, src, tcp, 40000, 0, nil), true},
		{"tcp to the last nat port", frameFor(t, src, tcp, 59999, 0, nil), true},
		{"a nat port on the other address", frameFor(t, vip2, tcp, 45000, 0, nil), false},
		{"tcp below the nat range", frameFor(t, src, tcp, 39999, 0, nil), false},
		{"tcp above the nat range", frameFor(t, src, tcp, 60000, 0, nil), false},
		{"ssh to the host", frameFor(t, src, tcp, 22, 0, nil), false},
		{"tcp to another address", frameFor(t, other, tcp, 20000, 0, nil), false},
		{"udp to the balancer port", frameFor(t, src, udp, 20000, 0, nil), false},
		{"icmp unreachable", frameFor(t, src, icmp, 0, 3, nil), true},
		{"icmp unreachable to a vip", frameFor(t, vip2, icmp, 0, 3, nil), true},
		{"icmp time exceeded", frameFor(t, src, icmp, 0, 11, nil), true},
		{"icmp echo", frameFor(t, src, icmp, 0, 8, nil), false},
		{"icmp unreachable to another address", frameFor(t, other, icmp, 0, 3, nil), false},
		{"arp", frameFor(t, src, tcp, 20000, 0, func(b []byte) { binary.BigEndian.PutUint16(b[12:], 0x0806) }), false},
		// Malformed TCP to one of our addresses passes so the worker counts it.
		{"fragment", frameFor(t, src, tcp, 22, 0, func(b []byte) { b[20] |= 0x20 }), true},
		{"fragment to a vip", frameFor(t, vip2, tcp, 22, 0, func(b []byte) { b[20] |= 0x20 }), true},
		{"fragment elsewhere", frameFor(t, other, tcp, 22, 0, func(b []byte) { b[20] |= 0x20 }), false},
		{"later fragment", frameFor(t, src, tcp, 22, 0, func(b []byte) { b[21] = 1 }), true},
		{"ihl 4", frameFor(t, src, tcp, 22, 0, func(b []byte) { b[14] = 0x44 }), true},
		{"cut before the ports", frameFor(t, src, tcp, 20000, 0, nil)[:14+20+2], true},
		{"cut inside the ip header", frameFor(t, src, tcp, 20000, 0, nil)[:14+10], false},
	}
	for _, tc := range tests {
		n, err := vm.Run(tc.b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := n > 0; got != tc.want {
			t.Errorf("%s: passes = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSocketFilterManyServices(t *testing.T) {
	o := &ours{natSrc: [4]byte{198, 18, 0, 2}, natFirst: 40000, natLast: 59999}
	for p := 1; p <= 500; p++ {
		o.listen = append(o.listen, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(p % 7)}), uint16(p)))
	}
	prog, err := o.socketFilter()
	if err != nil {
		t.Fatalf("500 services: %v", err)
	}
	vm := vmFor(t, prog)
	if n, _ := vm.Run(frameFor(t, [4]byte{198, 18, 1, 500 % 7}, layers.IPProtocolTCP, 500, 0, nil)); n == 0 {
		t.Fatal("the last of 500 services is not let in")
	}
}

// TestFanoutProgram checks that the fanout program sends both directions of
// a flow to one worker: a client segment to clientWorker of its address and
// port, a backend's to its NAT port mod n, and an ICMP error by the segment
// it quotes, the same way.
func TestFanoutProgram(t *testing.T) {
	o := &ours{natSrc: [4]byte{198, 18, 0, 2}, natFirst: 40000, natLast: 59999}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 4, 7} {
		prog, err := o.fanoutProgram(n)
		if err != nil {
			t.Fatal(err)
		}
		vm := vmFor(t, prog)
		run := func(frame []byte) int {
			t.Helper()
			// Fanout programs see the frame from the IPv4 header.
			v, err := vm.Run(frame[14:])
			if err != nil {
				t.Fatal(err)
			}
			return v % n
		}
		seen := make([]int, n)
		for i := 0; i < 2000; i++ {
			cip := [4]byte{198, 18, byte(rng.IntN(256)), byte(rng.IntN(256))}
			cport := uint16(1024 + rng.IntN(60000))
			want := clientWorker(cip, cport, n)
			seen[want]++
			c := frameFor(t, o.natSrc, layers.IPProtocolTCP, 20000, 0, func(b []byte) {
				copy(b[26:30], cip[:])
				binary.BigEndian.PutUint16(b[34:], cport)
			})
			if got := run(c); got != want {
				t.Fatalf("n=%d: client %v:%d went to %d, want %d", n, cip, cport, got, want)
			}
			nat := uint16(40000 + rng.IntN(20000))
			be := frameFor(t, o.natSrc, layers.IPProtocolTCP, nat, 0, nil)
			if got := run(be); got != int(nat)%n {
				t.Fatalf("n=%d: NAT port %d went to %d, want %d", n, nat, got, int(nat)%n)
			}
			// ICMP errors quoting a segment toward a backend (source port
			// the NAT port) and toward a client (destination the client).
			if got := run(icmpQuoting(t, o.natSrc, [4]byte{198, 18, 0, 11}, nat, 8090)); got != int(nat)%n {
				t.Fatalf("n=%d: ICMP about NAT port %d went to %d, want %d", n, nat, got, int(nat)%n)
			}
			if got := run(icmpQuoting(t, o.natSrc, cip, 20000, cport)); got != want {
				t.Fatalf("n=%d: ICMP about client %v:%d went to %d, want %d", n, cip, cport, got, want)
			}
		}
		for w, k := range seen {
			if n > 1 && (k < 2000/n*8/10 || k > 2000/n*12/10) {
				t.Errorf("n=%d: worker %d gets %d of 2000 clients, want about %d", n, w, k, 2000/n)
			}
		}
	}
}

// icmpQuoting builds a destination-unreachable from a router to the
// balancer, quoting a segment src:sport -> dst:dport.
func icmpQuoting(t *testing.T, src, dst [4]byte, sport, dport uint16) []byte {
	t.Helper()
	inner := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(src[:]), DstIP: net.IP(dst[:])}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true}
	_ = tcp.SetNetworkLayerForChecksum(inner)
	qb := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(qb, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, inner, tcp)
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.IP{198, 18, 0, 1}, DstIP: net.IP(src[:])}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4)}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, gopacket.Payload(qb.Bytes()[:28])); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestFiltersLoad attaches both programs to a real socket: the kernel's
// checker refuses programs that bpf.VM runs happily (see initScratch).
func TestFiltersLoad(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequirePrivileged(t)
	}
	o := &ours{natSrc: [4]byte{198, 18, 0, 2}, natFirst: 40000, natLast: 59999, listen: []netip.AddrPort{
		netip.MustParseAddrPort("198.18.0.2:20000"), netip.MustParseAddrPort("198.18.0.5:80")}}
	sf, err := o.socketFilter()
	if err != nil {
		t.Fatal(err)
	}
	fp, err := o.fanoutProgram(3)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for name, prog := range map[string][]bpf.RawInstruction{"socket filter": sf, "fanout program": fp} {
		f := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &f); err != nil {
			t.Errorf("the kernel refuses the %s: %v", name, err)
		}
	}
}
