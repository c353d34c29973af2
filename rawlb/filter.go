package rawlb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/net/bpf"
)

// ours describes what traffic belongs to this balancer: TCP to a service's
// listen address, TCP to the NAT source's NAT ports, and the ICMP errors
// about either. It generates both the socket filter and the fanout program
// (and the firewall gets the same addresses and ports), so the three never
// disagree.
type ours struct {
	natSrc            [4]byte
	natFirst, natLast uint16
	listen            []netip.AddrPort
}

// addrs returns every address the balancer receives on: the NAT source and
// each listen address, without duplicates.
func (o *ours) addrs() [][4]byte {
	out := [][4]byte{o.natSrc}
	for _, l := range o.listen {
		if a := l.Addr().As4(); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// Offsets into an untagged Ethernet frame carrying IPv4, as the socket
// filter sees it (the virtio-net header is not part of what it reads).
const (
	offEtherType = 12
	offIP        = 14
	offIPFrag    = offIP + 6
	offIPProto   = offIP + 9
	offIPDst     = offIP + 16
)

// acceptAll is the snap length a passing frame gets: whole, GSO frames
// included.
const acceptAll = 0xffffffff

// prog assembles classic BPF with forward jumps to labels, which classic
// BPF counts in instructions and which are easy to get wrong by hand.
type prog struct {
	ins []insn
}

// insn is an instruction, a label, or a jump to labels.
type insn struct {
	i      bpf.Instruction
	label  string
	jt, jf string
	cond   bpf.JumpTest
	val    uint32
	isJump bool
}

func (p *prog) emit(i bpf.Instruction) {
	p.ins = append(p.ins, insn{i: i})
}

func (p *prog) label(l string) {
	p.ins = append(p.ins, insn{label: l})
}

// jif jumps to jt if cond holds, else to jf; "" falls through.
func (p *prog) jif(cond bpf.JumpTest, val uint32, jt, jf string) {
	p.ins = append(p.ins, insn{isJump: true, cond: cond, val: val, jt: jt, jf: jf})
}

// initScratch zeroes scratch cells M[0..n-1]. The kernel's checker
// (check_load_and_stores in net/core/filter.c) follows the program in
// order and carries what it knows past a RET into the next block, as if
// control could fall through; a cell written on every path that reaches a
// load, but not before that RET, is then refused with EINVAL.
func (p *prog) initScratch(n int) {
	p.emit(bpf.LoadConstant{Dst: bpf.RegA, Val: 0})
	for i := 0; i < n; i++ {
		p.emit(bpf.StoreScratch{Src: bpf.RegA, N: i})
	}
}

// goTo jumps to l unconditionally (a conditional jump with both ways there).
func (p *prog) goTo(l string) { p.jif(bpf.JumpEqual, 0, l, l) }

func (p *prog) assemble() ([]bpf.RawInstruction, error) {
	pos := map[string]int{}
	n := 0
	for _, in := range p.ins {
		if in.label != "" {
			pos[in.label] = n
			continue
		}
		n++
	}
	var out []bpf.Instruction
	idx := 0
	for _, in := range p.ins {
		if in.label != "" {
			continue
		}
		if in.isJump {
			skip := func(to string) (uint8, error) {
				if to == "" {
					return 0, nil
				}
				at, ok := pos[to]
				if !ok {
					return 0, fmt.Errorf("filter: no label %s", to)
				}
				d := at - idx - 1
				if d < 0 || d > 255 {
					return 0, fmt.Errorf("filter: jump to %s out of range (%d)", to, d)
				}
				return uint8(d), nil
			}
			jt, err := skip(in.jt)
			if err != nil {
				return nil, err
			}
			jf, err := skip(in.jf)
			if err != nil {
				return nil, err
			}
			out = append(out, bpf.JumpIf{Cond: in.cond, Val: in.val, SkipTrue: jt, SkipFalse: jf})
		} else {
			out = append(out, in.i)
		}
		idx++
	}
	if len(out) > maxBPFInstructions {
		return nil, fmt.Errorf("filter: %d instructions, more than classic BPF allows (%d): too many services", len(out), maxBPFInstructions)
	}
	return bpf.Assemble(out)
}

func be32(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

// socketFilter returns the classic BPF program that lets into a worker's
// ring only what the balancer handles, so that nothing else addressed to
// the host costs a copy.
//
// TCP to one of the balancer's addresses that cannot be classified by port
// (a fragment, an IHL below 5, a frame cut before the ports) passes too,
// so the worker can count and drop it instead of it vanishing unseen; the
// firewall drops only packets to the balancer's ports, so the host still
// handles such packets for its other services as before.
//
// Which interface a frame came in on and whether it was addressed to the
// host's MAC is checked by the worker: the filter keeps to plain loads so
// that bpf.VM can run it in tests.
func (o *ours) socketFilter() ([]bpf.RawInstruction, error) {
	var p prog
	addrs := o.addrs()
	// M[0]: destination address, M[1]: TCP destination port. The list of
	// services comes last, so that every jump stays within the 255
	// instructions classic BPF can skip, however many services there are.
	p.initScratch(2)
	p.emit(bpf.LoadAbsolute{Off: offEtherType, Size: 2})
	p.jif(bpf.JumpEqual, 0x0800, "", "reject")
	p.emit(bpf.LoadAbsolute{Off: offIPDst, Size: 4})
	p.emit(bpf.StoreScratch{Src: bpf.RegA, N: 0})
	p.emit(bpf.LoadAbsolute{Off: offIPProto, Size: 1})
	p.jif(bpf.JumpEqual, 6, "tcp", "")
	p.jif(bpf.JumpEqual, 1, "icmp", "reject")
	p.label("reject")
	p.emit(bpf.RetConstant{Val: 0})

	p.label("tcp")
	p.emit(bpf.LoadAbsolute{Off: offIPFrag, Size: 2})
	p.jif(bpf.JumpBitsSet, 0x3fff, "ouraddr", "") // MF or an offset: a fragment
	p.emit(bpf.LoadAbsolute{Off: offIP, Size: 1})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f})
	p.jif(bpf.JumpLessThan, 5, "ouraddr", "") // IHL below 5
	p.emit(bpf.LoadMemShift{Off: offIP})      // X = IHL * 4
	p.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	p.emit(bpf.ALUOpX{Op: bpf.ALUOpSub})
	p.jif(bpf.JumpLessThan, offIP+4, "ouraddr", "") // cut before the ports
	p.emit(bpf.LoadIndirect{Off: offIP + 2, Size: 2})
	p.emit(bpf.StoreScratch{Src: bpf.RegA, N: 1})
	// The NAT ports, on the NAT source only.
	p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 0})
	p.jif(bpf.JumpEqual, be32(o.natSrc), "", "services")
	p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 1})
	p.jif(bpf.JumpLessThan, uint32(o.natFirst), "services", "")
	p.jif(bpf.JumpGreaterThan, uint32(o.natLast), "services", "")
	p.emit(bpf.RetConstant{Val: acceptAll})

	// A malformed TCP segment to one of our addresses.
	p.label("ouraddr")
	p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 0})
	for i, a := range addrs {
		next := fmt.Sprintf("oa%d", i+1)
		p.jif(bpf.JumpEqual, be32(a), "", next)
		p.emit(bpf.RetConstant{Val: acceptAll})
		p.label(next)
	}
	p.emit(bpf.RetConstant{Val: 0})

	// Destination unreachable and time exceeded, to one of our addresses.
	p.label("icmp")
	p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 0})
	for i, a := range addrs {
		next := fmt.Sprintf("ia%d", i+1)
		p.jif(bpf.JumpEqual, be32(a), "icmptype", next)
		p.label(next)
	}
	p.emit(bpf.RetConstant{Val: 0})
	p.label("icmptype")
	p.emit(bpf.LoadMemShift{Off: offIP})
	p.emit(bpf.LoadIndirect{Off: offIP, Size: 1})
	p.jif(bpf.JumpEqual, 3, "accept", "")
	p.jif(bpf.JumpEqual, 11, "accept", "")
	p.emit(bpf.RetConstant{Val: 0})
	p.label("accept")
	p.emit(bpf.RetConstant{Val: acceptAll})

	p.label("services")
	for i, l := range o.listen {
		next := fmt.Sprintf("svc%d", i+1)
		p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 1})
		p.jif(bpf.JumpEqual, uint32(l.Port()), "", next)
		p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 0})
		p.jif(bpf.JumpEqual, be32(l.Addr().As4()), "", next)
		p.emit(bpf.RetConstant{Val: acceptAll})
		p.label(next)
	}
	p.emit(bpf.RetConstant{Val: 0})
	return p.assemble()
}

// Hash constants of the fanout program: Knuth's multiplicative hash and a
// second odd constant to mix the high bits down.
const (
	fanoutK1 = 0x9e3779b1
	fanoutK2 = 0x85ebca6b
)

// clientWorker is the Go twin of the fanout program's client hash: the
// worker a client's segments (address, port) reach among n.
func clientWorker(ip [4]byte, port uint16, n int) int {
	h := uint32(port)*fanoutK1 ^ be32(ip)
	h ^= h >> 16
	h *= fanoutK2
	return int(h % uint32(n))
}

// fanoutProgram returns the PACKET_FANOUT_CBPF program that sends both
// directions of every flow to the same worker, of n: a backend's segment
// (to a NAT port) to NAT port mod n, whose flow that worker created with a
// NAT port it owns; a client's segment to a hash of its address and port;
// an ICMP error by the segment it quotes, the same way. The program sees
// the frame from its IPv4 header (fanout runs before the link layer is
// pushed back on). Whatever it cannot place goes to worker 0.
func (o *ours) fanoutProgram(n int) ([]bpf.RawInstruction, error) {
	var p prog
	p.initScratch(3)
	p.emit(bpf.LoadAbsolute{Off: 9, Size: 1})
	p.jif(bpf.JumpEqual, 6, "tcp", "")
	p.jif(bpf.JumpEqual, 1, "icmp", "zero")

	p.label("tcp")
	p.emit(bpf.LoadAbsolute{Off: 6, Size: 2})
	p.jif(bpf.JumpBitsSet, 0x3fff, "zero", "")
	p.emit(bpf.LoadMemShift{Off: 0}) // X = IHL * 4
	p.emit(bpf.LoadIndirect{Off: 2, Size: 2})
	p.jif(bpf.JumpLessThan, uint32(o.natFirst), "tcpclient", "")
	p.jif(bpf.JumpGreaterThan, uint32(o.natLast), "tcpclient", "")
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)})
	p.emit(bpf.RetA{})
	p.label("tcpclient")
	// The hash input: M[0] the client's address, A its port.
	p.emit(bpf.LoadAbsolute{Off: 12, Size: 4})
	p.emit(bpf.StoreScratch{Src: bpf.RegA, N: 0})
	p.emit(bpf.LoadIndirect{Off: 0, Size: 2})
	p.goTo("hash")

	p.label("icmp")
	// X = outer IHL*4 + 8 + inner IHL*4: the quoted TCP header.
	p.emit(bpf.LoadMemShift{Off: 0})
	p.emit(bpf.LoadIndirect{Off: 8, Size: 1})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 2})
	p.emit(bpf.ALUOpX{Op: bpf.ALUOpAdd})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 8})
	p.emit(bpf.StoreScratch{Src: bpf.RegA, N: 2}) // M[2]: quoted TCP header
	// The quoted destination address: outer IHL*4 + 8 + 16.
	p.emit(bpf.LoadIndirect{Off: 8 + 16, Size: 4})
	p.emit(bpf.StoreScratch{Src: bpf.RegA, N: 0})
	p.emit(bpf.LoadScratch{Dst: bpf.RegX, N: 2})
	p.emit(bpf.LoadIndirect{Off: 0, Size: 2}) // quoted source port
	p.jif(bpf.JumpLessThan, uint32(o.natFirst), "icmpclient", "")
	p.jif(bpf.JumpGreaterThan, uint32(o.natLast), "icmpclient", "")
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)})
	p.emit(bpf.RetA{})
	p.label("icmpclient")
	// About a segment to a client: its destination, as the client's own
	// segments hash their source.
	p.emit(bpf.LoadIndirect{Off: 2, Size: 2})

	// h = port*K1 ^ addr; h ^= h >> 16; h *= K2; worker = h mod n.
	p.label("hash")
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpMul, Val: fanoutK1})
	p.emit(bpf.StoreScratch{Src: bpf.RegA, N: 1})
	p.emit(bpf.LoadScratch{Dst: bpf.RegX, N: 0})
	p.emit(bpf.LoadScratch{Dst: bpf.RegA, N: 1})
	p.emit(bpf.ALUOpX{Op: bpf.ALUOpXor})
	p.emit(bpf.TAX{})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 16})
	p.emit(bpf.ALUOpX{Op: bpf.ALUOpXor})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpMul, Val: fanoutK2})
	p.emit(bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)})
	p.emit(bpf.RetA{})

	p.label("zero")
	p.emit(bpf.RetConstant{Val: 0})
	return p.assemble()
}

// maxBPFInstructions is the kernel's BPF_MAXINSNS for classic BPF.
const maxBPFInstructions = 4096
