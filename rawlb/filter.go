package rawlb

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/net/bpf"
)

// Offsets into an untagged Ethernet frame carrying IPv4, as the filter
// sees it (the virtio-net header is not part of what a socket filter reads).
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

// buildFilter returns the classic BPF program that lets into the ring only
// what the balancer handles: IPv4 to srcIP that is TCP to the balancer port
// or to a NAT port, or an ICMP destination-unreachable or time-exceeded.
// Everything else addressed to the host never costs a copy.
//
// TCP to srcIP that cannot be classified by port (a fragment, an IHL below
// 5, a frame cut before the ports) passes too, so the daemon can count and
// drop it instead of it vanishing unseen; the firewall rules only drop
// packets to our ports, so the kernel still handles such packets for other
// services as before.
func buildFilter(srcIP [4]byte, port, natFirst, natLast uint16) ([]bpf.RawInstruction, error) {
	const (
		accept = "accept"
		reject = "reject"
	)
	// Jump targets are resolved by label below: classic BPF only jumps
	// forward by instruction counts, which are easy to get wrong by hand.
	type ins struct {
		i      bpf.Instruction
		label  string
		jt, jf string
		cond   bpf.JumpTest
		val    uint32
		isJump bool
	}
	var prog []ins
	emit := func(i bpf.Instruction) { prog = append(prog, ins{i: i}) }
	label := func(l string) { prog = append(prog, ins{label: l}) }
	jif := func(cond bpf.JumpTest, val uint32, jt, jf string) {
		prog = append(prog, ins{isJump: true, cond: cond, val: val, jt: jt, jf: jf})
	}

	emit(bpf.LoadAbsolute{Off: offEtherType, Size: 2})
	jif(bpf.JumpEqual, 0x0800, "", reject)
	emit(bpf.LoadAbsolute{Off: offIPDst, Size: 4})
	jif(bpf.JumpEqual, binary.BigEndian.Uint32(srcIP[:]), "", reject)
	emit(bpf.LoadAbsolute{Off: offIPProto, Size: 1})
	jif(bpf.JumpEqual, 6, "tcp", "")
	jif(bpf.JumpEqual, 1, "icmp", reject)

	label("tcp")
	emit(bpf.LoadAbsolute{Off: offIPFrag, Size: 2})
	jif(bpf.JumpBitsSet, 0x3fff, accept, "") // MF or an offset: a fragment
	emit(bpf.LoadAbsolute{Off: offIP, Size: 1})
	emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f})
	jif(bpf.JumpLessThan, 5, accept, "") // IHL below 5
	emit(bpf.LoadMemShift{Off: offIP})   // X = IHL * 4
	emit(bpf.LoadExtension{Num: bpf.ExtLen})
	emit(bpf.ALUOpX{Op: bpf.ALUOpSub})
	jif(bpf.JumpLessThan, offIP+4, accept, "") // cut before the ports
	emit(bpf.LoadIndirect{Off: offIP + 2, Size: 2})
	jif(bpf.JumpEqual, uint32(port), accept, "")
	jif(bpf.JumpLessThan, uint32(natFirst), reject, "")
	jif(bpf.JumpGreaterThan, uint32(natLast), reject, accept)

	label("icmp")
	emit(bpf.LoadMemShift{Off: offIP})
	emit(bpf.LoadIndirect{Off: offIP, Size: 1})
	jif(bpf.JumpEqual, 3, accept, "")
	jif(bpf.JumpEqual, 11, accept, reject)

	label(accept)
	emit(bpf.RetConstant{Val: acceptAll})
	label(reject)
	emit(bpf.RetConstant{Val: 0})

	// Resolve labels to instruction indexes.
	pos := map[string]int{}
	n := 0
	for _, p := range prog {
		if p.label != "" {
			pos[p.label] = n
			continue
		}
		n++
	}
	var out []bpf.Instruction
	idx := 0
	for _, p := range prog {
		if p.label != "" {
			continue
		}
		skip := func(to string) (uint8, error) {
			if to == "" {
				return 0, nil
			}
			d := pos[to] - idx - 1
			if d < 0 || d > 255 {
				return 0, fmt.Errorf("filter: jump to %s out of range", to)
			}
			return uint8(d), nil
		}
		switch {
		case p.isJump:
			jt, err := skip(p.jt)
			if err != nil {
				return nil, err
			}
			jf, err := skip(p.jf)
			if err != nil {
				return nil, err
			}
			out = append(out, bpf.JumpIf{Cond: p.cond, Val: p.val, SkipTrue: jt, SkipFalse: jf})
		default:
			out = append(out, p.i)
		}
		idx++
	}
	return bpf.Assemble(out)
}
