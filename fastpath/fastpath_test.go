package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"maps"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/internal/testenv"
)

// The Go mirrors of the program's map values must have its layout: sizes
// and field offsets from the object's BTF.
func TestLayoutMatchesProgram(t *testing.T) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytesReader(object))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		size uintptr
		offs map[string]uintptr
	}{
		{"fp_key", unsafe.Sizeof(Key{}), map[string]uintptr{"sport": unsafe.Offsetof(Key{}.SrcPort)}},
		{"fp_ref", unsafe.Sizeof(ref{}), nil},
		{"fp_peer", unsafe.Sizeof(Peer{}), map[string]uintptr{"win": unsafe.Offsetof(Peer{}.Win), "flags": unsafe.Offsetof(Peer{}.Flags)}},
		{"fp_dir", unsafe.Sizeof(Dir{}), map[string]uintptr{"ifindex": unsafe.Offsetof(Dir{}.Ifindex), "dmac": unsafe.Offsetof(Dir{}.DstMAC), "win_shift": unsafe.Offsetof(Dir{}.WinShift)}},
		{"fp_flow", unsafe.Sizeof(Flow{}), map[string]uintptr{
			"evicted": unsafe.Offsetof(Flow{}.Evicted), "peers": unsafe.Offsetof(Flow{}.Peers), "dir": unsafe.Offsetof(Flow{}.Dir),
			"last_ns": unsafe.Offsetof(Flow{}.LastNs), "packets": unsafe.Offsetof(Flow{}.Packets), "bytes": unsafe.Offsetof(Flow{}.Bytes),
			"ts_last": unsafe.Offsetof(Flow{}.TSLast), "seq_end": unsafe.Offsetof(Flow{}.SeqEnd), "note": unsafe.Offsetof(Flow{}.Note),
			"backend": unsafe.Offsetof(Flow{}.Backend), "state": unsafe.Offsetof(Flow{}.State), "early": unsafe.Offsetof(Flow{}.Early),
			"gen": unsafe.Offsetof(Flow{}.Gen),
		}},
		// fp_event has no BTF (only a stack variable has its type):
		// TestFollowsTheClose checks every field of an event as read.
	} {
		var s *btf.Struct
		if err := spec.Types.TypeByName(c.name, &s); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if uintptr(s.Size) != c.size {
			t.Errorf("%s: %d bytes in C, %d in Go", c.name, s.Size, c.size)
		}
		for _, m := range s.Members {
			if off, ok := c.offs[m.Name]; ok && uintptr(m.Offset.Bytes()) != off {
				t.Errorf("%s.%s: offset %d in C, %d in Go", c.name, m.Name, m.Offset.Bytes(), off)
			}
		}
	}
}

// seg describes a test segment.
type seg struct {
	src, dst     [4]byte
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	win          uint16
	ts           *[2]uint32 // NOP NOP TIMESTAMP
	sack         bool       // a SACK block after the timestamps
	mss          bool       // an MSS option (which no established segment carries)
	opts         []byte     // raw options instead of the above, a multiple of 4 bytes
	payload      int
}

const (
	fFIN = 0x01
	fSYN = 0x02
	fRST = 0x04
	fPSH = 0x08
	fACK = 0x10
)

var (
	macClient = [6]byte{2, 0x52, 0x4c, 0, 0, 2}
	macLB     = [6]byte{2, 0x52, 0x4c, 0, 0, 1}
	macBE     = [6]byte{2, 0x52, 0x4c, 0, 0, 0x0b}
	ipClient  = [4]byte{198, 18, 0, 2}
	ipVIP     = [4]byte{198, 18, 0, 1}
	ipBE      = [4]byte{198, 18, 0, 11}
)

// frame builds an Ethernet frame with valid checksums.
func frame(s seg) []byte {
	opt := 0
	if s.ts != nil {
		opt = 12
	}
	if s.sack {
		opt += 12
	}
	if s.mss {
		opt += 4
	}
	if s.opts != nil {
		opt = len(s.opts)
	}
	tl := 20 + opt
	b := make([]byte, 14+20+tl+s.payload)
	copy(b[0:6], macLB[:])
	copy(b[6:12], macClient[:])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(20+tl+s.payload))
	copy(ip[12:16], s.src[:])
	copy(ip[16:20], s.dst[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip[:20], 0)))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], s.sport)
	binary.BigEndian.PutUint16(tcp[2:], s.dport)
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	binary.BigEndian.PutUint32(tcp[8:], s.ack)
	tcp[12] = byte(tl/4) << 4
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], s.win)
	o := tcp[20:]
	if s.opts != nil {
		copy(o, s.opts)
	} else if s.ts != nil {
		copy(o, []byte{1, 1, 8, 10})
		binary.BigEndian.PutUint32(o[4:], s.ts[0])
		binary.BigEndian.PutUint32(o[8:], s.ts[1])
		o = o[12:]
	}
	if s.sack && s.opts == nil {
		copy(o, []byte{1, 1, 5, 10})
		binary.BigEndian.PutUint32(o[4:], s.ack+1000)
		binary.BigEndian.PutUint32(o[8:], s.ack+2000)
		o = o[12:]
	}
	if s.mss && s.opts == nil {
		copy(o, []byte{2, 4, 5, 0xb4})
	}
	for i := range s.payload {
		tcp[tl+i] = byte(i * 7)
	}
	binary.BigEndian.PutUint16(tcp[16:], ^fold(sum(tcp, pseudo(ip))))
	return b
}

func sum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func pseudo(ip []byte) uint32 {
	return sum(ip[12:20], 0) + 6 + uint32(binary.BigEndian.Uint16(ip[2:])-20)
}

// checksumsOK verifies a frame's IPv4 and TCP checksums the plain way.
func checksumsOK(t *testing.T, b []byte) {
	t.Helper()
	ip := b[14:]
	if fold(sum(ip[:20], 0)) != 0xffff {
		t.Errorf("IPv4 checksum does not verify")
	}
	if fold(sum(ip[20:binary.BigEndian.Uint16(ip[2:])], pseudo(ip))) != 0xffff {
		t.Errorf("TCP checksum does not verify")
	}
}

const actOK = 0 // TC_ACT_OK: up the stack, to the engine

// lab is a loaded program holding one flow: client 198.18.0.2:40000 to the
// VIP 198.18.0.1:80, through NAT port 61000 to the backend 198.18.0.11:8080.
type lab struct {
	p     *Path
	keys  [2]Key
	id    uint32
	batch *Batch
}

const (
	cISN   = 1000
	bISN   = 5000
	seqOff = 0x10000 // SeqOff: client numbers as the backend sees them
)

func newLab(t testing.TB) *lab {
	return newLabConfig(t, Config{Flows: 16, Slots: 4, Workers: 1})
}

// labGen is the lab flow's Flow.Gen.
const labGen = 9

func newLabConfig(t testing.TB, c Config) *lab {
	testenv.RequirePrivileged(t)
	p, err := Load(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	l := &lab{p: p, id: 7, batch: NewBatch(1)}
	l.keys[0] = MakeKey(ipClient, 40000, ipVIP, 80)
	l.keys[1] = MakeKey(ipBE, 8080, ipVIP, 61000)
	l.reset(t)
	return l
}

// insert gives the program flow id alone, in a batch of one (a worker's
// batch with one new flow).
func (l *lab) insert(id uint32, f *Flow, k *[2]Key) error {
	l.batch.Reset()
	v, bk := l.batch.Add(id)
	*v, *bk = *f, *k
	_, err := l.p.InsertBatch(l.batch)
	return err
}

// reset inserts the lab's flow afresh.
func (l *lab) reset(t testing.TB) {
	var f Flow
	l.fill(&f)
	if err := l.insert(l.id, &f, &l.keys); err != nil {
		t.Fatal(err)
	}
}

// fill writes the lab's flow into f.
func (l *lab) fill(f *Flow) {
	// Established, each side has sent its SYN and acknowledged the
	// other's; windows of 64 KiB unscaled.
	f.Peers[0] = Peer{End: cISN + 1, MaxEnd: cISN + 1 + 65535, MaxWin: 65535, MaxAck: bISN + 1, Win: 65535, Flags: 4}
	f.Peers[1] = Peer{End: bISN + 1, MaxEnd: bISN + 1 + 65535, MaxWin: 65535, MaxAck: cISN + 1, Win: 65535, Flags: 4}
	f.Dir[0] = Dir{Src: ipVIP, Dst: ipBE, SrcPort: [2]byte{61000 >> 8, 61000 & 0xff}, DstPort: [2]byte{8080 >> 8, 8080 & 0xff},
		SeqAdd: seqOff, TSvalAdd: 100, Ifindex: 3, DstMAC: macBE, SrcMAC: macLB}
	f.Dir[1] = Dir{Src: ipVIP, Dst: ipClient, SrcPort: [2]byte{0, 80}, DstPort: [2]byte{40000 >> 8, 40000 & 0xff},
		AckAdd: negate(seqOff), TSecrAdd: negate(100), Ifindex: 2, DstMAC: macClient, SrcMAC: macLB}
	f.State = stEstablished
	f.Gen = labGen
}

func (l *lab) run(t testing.TB, b []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(b)+256)
	ret, err := l.p.prog.Run(&ebpf.RunOptions{Data: b, DataOut: out})
	if err != nil {
		t.Fatal(err)
	}
	return ret, out[:len(b)]
}

// peek0 returns the flow the lab inserts, without inserting it.
func (l *lab) peek0() Flow {
	var f Flow
	l.fill(&f)
	return f
}

func (l *lab) peek(t *testing.T) Flow {
	t.Helper()
	var f Flow
	if err := l.p.Peek(l.id, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestForwardsEstablishedSegments(t *testing.T) {
	l := newLab(t)
	// Client data with timestamps.
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH, win: 502,
		ts: &[2]uint32{111, 222}, payload: 100})
	ret, out := l.run(t, in)
	if ret != actRedirect {
		t.Fatalf("client data: action %d, want redirect", ret)
	}
	checksumsOK(t, out)
	ip, tcp := out[14:], out[34:]
	if [6]byte(out[0:6]) != macBE || [6]byte(out[6:12]) != macLB {
		t.Errorf("MACs % x -> % x", out[6:12], out[0:6])
	}
	if [4]byte(ip[12:16]) != ipVIP || [4]byte(ip[16:20]) != ipBE {
		t.Errorf("addresses %v -> %v", ip[12:16], ip[16:20])
	}
	if sp, dp := binary.BigEndian.Uint16(tcp), binary.BigEndian.Uint16(tcp[2:]); sp != 61000 || dp != 8080 {
		t.Errorf("ports %d -> %d", sp, dp)
	}
	if s, a := binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:]); s != cISN+1+seqOff || a != bISN+1 {
		t.Errorf("seq %d ack %d, want %d %d", s, a, cISN+1+seqOff, bISN+1)
	}
	if tv, te := binary.BigEndian.Uint32(tcp[24:]), binary.BigEndian.Uint32(tcp[28:]); tv != 211 || te != 222 {
		t.Errorf("timestamps %d %d, want 211 222", tv, te)
	}
	f := l.peek(t)
	if f.Peers[0].End != cISN+1+100 || f.Packets[0] != 1 || f.Bytes[0] != uint64(len(in)-14) || f.LastNs == 0 {
		t.Errorf("after client data: end %d packets %d bytes %d last %d", f.Peers[0].End, f.Packets[0], f.Bytes[0], f.LastNs)
	}
	if f.Note&NoteTS == 0 || f.TSLast != 211 || f.SeqEnd != cISN+1+100+seqOff {
		t.Errorf("note toward the backend: ts %d (%d) seq end %d", f.TSLast, f.Note, f.SeqEnd)
	}

	// The backend's answer, acknowledging it (in its numbering).
	in = frame(seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 1, ack: cISN + 1 + 100 + seqOff, flags: fACK, win: 509,
		ts: &[2]uint32{999, 211}, payload: 1000})
	ret, out = l.run(t, in)
	if ret != actRedirect {
		t.Fatalf("backend data: action %d, want redirect", ret)
	}
	checksumsOK(t, out)
	tcp = out[34:]
	if [4]byte(out[14+16:14+20]) != ipClient || binary.BigEndian.Uint16(tcp) != 80 || binary.BigEndian.Uint16(tcp[2:]) != 40000 {
		t.Errorf("toward the client: %v:%d", out[30:34], binary.BigEndian.Uint16(tcp[2:]))
	}
	if a := binary.BigEndian.Uint32(tcp[8:]); a != cISN+1+100 {
		t.Errorf("ack toward the client %d, want %d", a, cISN+1+100)
	}
	if te := binary.BigEndian.Uint32(tcp[28:]); te != 111 {
		t.Errorf("TSecr toward the client %d, want 111", te)
	}
	f = l.peek(t)
	if f.Peers[1].End != bISN+1+1000 || f.Peers[1].MaxAck != cISN+1+100 || f.Peers[0].MaxEnd != cISN+1+65535 {
		t.Errorf("after backend data: backend end %d maxack %d, client maxend %d", f.Peers[1].End, f.Peers[1].MaxAck, f.Peers[0].MaxEnd)
	}

	// The backend SACKs data of the client's beyond a hole: forwarded, the
	// edges translated like the ACK, the highest one moving the window.
	l.run(t, frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 101, ack: bISN + 1001, flags: fACK, win: 502, payload: 3000}))
	sackIn := frame(seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 1001, ack: cISN + 1 + seqOff, flags: fACK, win: 509,
		ts: &[2]uint32{1000, 211}, sack: true})
	ret, out = l.run(t, sackIn)
	if ret != actRedirect {
		t.Fatalf("backend SACK: action %d, want redirect", ret)
	}
	checksumsOK(t, out)
	if lft, r := binary.BigEndian.Uint32(out[34+36:]), binary.BigEndian.Uint32(out[34+40:]); lft != cISN+1+1000 || r != cISN+1+2000 {
		t.Errorf("SACK block toward the client %d-%d, want %d-%d", lft, r, cISN+1+1000, cISN+1+2000)
	}
	f = l.peek(t)

	// A retransmission of the client's data: forwarded, state as it was.
	ret, _ = l.run(t, frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 502, payload: 100}))
	if ret != actRedirect {
		t.Errorf("retransmission: action %d, want redirect", ret)
	}
	if g := l.peek(t); g.Peers != f.Peers || g.Evicted != 0 {
		t.Errorf("a retransmission changed the state: %+v -> %+v", f.Peers, g.Peers)
	}
}

func TestGivesBackWhatItDoesNotForward(t *testing.T) {
	for _, c := range []struct {
		name string
		s    seg
		why  uint32
	}{
		{"FIN without ACK", seg{seq: cISN + 1, flags: fFIN, win: 100}, EvictFlags},
		{"RST", seg{seq: cISN + 1, ack: bISN + 1, flags: fRST, win: 0}, EvictFlags},
		{"SYN", seg{seq: cISN, flags: fSYN, win: 100}, EvictFlags},
		{"no ACK", seg{seq: cISN + 1, flags: fPSH, win: 100, payload: 10}, EvictFlags},
		{"an MSS option", seg{seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 100, mss: true}, EvictOptions},
		{"beyond the window", seg{seq: cISN + 1 + 70000, ack: bISN + 1, flags: fACK, win: 100, payload: 10}, EvictWindow},
		{"acknowledging unsent data", seg{seq: cISN + 1, ack: bISN + 5000, flags: fACK, win: 100}, EvictWindow},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := newLab(t)
			s := c.s
			s.src, s.dst, s.sport, s.dport = ipClient, ipVIP, 40000, 80
			in := frame(s)
			ret, out := l.run(t, in)
			if ret != actOK {
				t.Fatalf("action %d, want OK (to the engine)", ret)
			}
			if string(out) != string(in) {
				t.Errorf("the frame was changed on its way to the engine")
			}
			f := l.peek(t)
			if f.Evicted != c.why {
				t.Errorf("evicted %d, want %d", f.Evicted, c.why)
			}
			// Every later segment follows it, even one it would forward.
			ret, _ = l.run(t, frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 100}))
			if ret != actOK {
				t.Errorf("a segment after the eviction: action %d, want OK", ret)
			}
			st, err := l.p.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st[StatPassed] == 0 || st[StatPackets] != 0 {
				t.Errorf("counters %v", st)
			}
		})
	}
}

// The program's ST_* are conntrack's State values: the engine stores them
// as they come back (fastState in rawlb/fast.go).
const (
	stSynRecv     = uint32(conntrack.StateSynRecv)
	stEstablished = uint32(conntrack.StateEstablished)
	stFinWait     = uint32(conntrack.StateFinWait)
	stCloseWait   = uint32(conntrack.StateCloseWait)
	stLastAck     = uint32(conntrack.StateLastAck)
)

// TestCompletesTheHandshake gives the program a flow with the backend's
// SYN-ACK, as the engine does before it sends it: only the client's ACK of
// exactly the backend's ISN+1 takes it to Established, and sets the flow's
// slot in the shared flags, which the engine reads without a system call.
func TestCompletesTheHandshake(t *testing.T) {
	const slot = 2
	synRecv := func(t *testing.T) *lab {
		l := newLab(t)
		l.p.Remove(l.id, &l.keys)
		l.p.ClearEstablished(slot)
		f := l.peek0()
		f.State, f.Early = stSynRecv, slot+1
		f.Peers[0].Flags, f.Peers[0].MaxAck = 0, 0 // the client has acknowledged nothing yet
		if err := l.insert(l.id, &f, &l.keys); err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, c := range []struct {
		name string
		s    seg
	}{
		{"an ACK of something else", seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 2, flags: fACK, win: 502}},
		{"an ACK with a FIN", seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fFIN, win: 502}},
		{"the backend's ACK", seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 1, ack: cISN + 1 + seqOff, flags: fACK, win: 509}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := synRecv(t)
			in := frame(c.s)
			if ret, out := l.run(t, in); ret != actOK || string(out) != string(in) {
				t.Fatalf("action %d, changed %v; want it unchanged, to the engine", ret, string(out) != string(in))
			}
			if f := l.peek(t); f.Evicted != EvictWindow || f.State != stSynRecv || l.p.Established(slot) {
				t.Errorf("evicted %d state %d established %v; want EvictWindow, SynRecv, not established", f.Evicted, f.State, l.p.Established(slot))
			}
		})
	}
	t.Run("the handshake's ACK", func(t *testing.T) {
		l := synRecv(t)
		steps := []seg{
			{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 502},
			{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH, win: 502, payload: 100},
		}
		for i, s := range steps {
			ret, out := l.run(t, frame(s))
			if ret != actRedirect {
				t.Fatalf("segment %d: action %d, want redirect", i, ret)
			}
			checksumsOK(t, out)
			if got := binary.BigEndian.Uint32(out[14+20+4:]); got != cISN+1+seqOff {
				t.Errorf("segment %d: sequence number %d, want %d", i, got, cISN+1+seqOff)
			}
			if f := l.peek(t); f.State != stEstablished || f.Evicted != 0 {
				t.Errorf("segment %d: state %d evicted %d, want Established", i, f.State, f.Evicted)
			}
		}
		for i := range 4 {
			if got := l.p.Established(i); got != (i == slot) {
				t.Errorf("slot %d established %v", i, got)
			}
		}
		st, err := l.p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st[StatEstablished] != 1 || st[StatPackets] != 2 {
			t.Errorf("counters %v", st)
		}
		// A slot is cleared before it is used again.
		l.p.ClearEstablished(slot)
		if l.p.Established(slot) {
			t.Errorf("slot %d still set after ClearEstablished", slot)
		}
	})
}

// walkToLastAck takes the lab's flow through both FINs, checking each
// segment on the way, and returns the flow in LastAck.
func walkToLastAck(t *testing.T, l *lab) Flow {
	t.Helper()
	steps := []struct {
		name  string
		s     seg
		state uint32
	}{
		{"client data and FIN", seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH | fFIN, win: 502, payload: 10}, stFinWait},
		{"backend ACK of the FIN", seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 1, ack: cISN + 12 + seqOff, flags: fACK, win: 509}, stCloseWait},
		{"backend data", seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 1, ack: cISN + 12 + seqOff, flags: fACK | fPSH, win: 509, payload: 100}, stCloseWait},
		{"backend FIN", seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 101, ack: cISN + 12 + seqOff, flags: fACK | fFIN, win: 509}, stLastAck},
		{"backend FIN again", seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 101, ack: cISN + 12 + seqOff, flags: fACK | fFIN, win: 509}, stLastAck},
	}
	for _, st := range steps {
		in := frame(st.s)
		ret, out := l.run(t, in)
		if ret != actRedirect {
			t.Fatalf("%s: action %d, want redirect", st.name, ret)
		}
		checksumsOK(t, out)
		if out[14+20+13] != st.s.flags {
			t.Errorf("%s: flags %#x, want %#x", st.name, out[14+20+13], st.s.flags)
		}
		f := l.peek(t)
		if f.State != st.state || f.Evicted != 0 {
			t.Errorf("%s: state %d evicted %d, want state %d", st.name, f.State, f.Evicted, st.state)
		}
	}
	f := l.peek(t)
	if want := uint32(cISN + 1 + 10 + 1 + seqOff); f.SeqEnd != want {
		t.Errorf("sequence end toward the backend %d, want %d (the FIN counts)", f.SeqEnd, want)
	}
	if f.Peers[0].End != cISN+12 || f.Peers[1].End != bISN+102 {
		t.Errorf("ends %d and %d, want %d and %d", f.Peers[0].End, f.Peers[1].End, cISN+12, bISN+102)
	}
	return f
}

// lastACK is the client's ACK of the backend's FIN in walkToLastAck.
func lastACK() []byte {
	return frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 12, ack: bISN + 102, flags: fACK, win: 502})
}

// synAckOptions is a Linux SYN-ACK's options (tcp_options_write): MSS,
// SACK-permitted with the timestamps, a NOP and the window scale.
func synAckOptions(tsval, tsecr uint32, ws byte) []byte {
	b := []byte{2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, ws}
	binary.BigEndian.PutUint32(b[8:], tsval)
	binary.BigEndian.PutUint32(b[12:], tsecr)
	return b
}

// TestForwardsTheSynAck gives the program a flow with the client's SYN, as
// the engine does before it sends it: it forwards the backend's SYN-ACK of
// that SYN, in the option layouts Linux writes, with conntrack's
// initSender and window check, and the flow goes on to SynRecv; the
// client's ACK then completes the handshake. Anything else in SynSent goes
// to the engine.
func TestForwardsTheSynAck(t *testing.T) {
	const slot = 1
	synSent := func(t *testing.T) *lab {
		l := newLab(t)
		l.p.Remove(l.id, &l.keys)
		l.p.ClearEstablished(slot)
		f := l.peek0()
		f.State, f.Early = uint32(conntrack.StateSynSent), slot+1
		// The client's SYN: ISN cISN, window 64240, scale 7, SACK.
		f.Peers[0] = Peer{End: cISN + 1, MaxEnd: cISN + 1, MaxWin: 64240, Win: 64240, Scale: 7, Flags: 1 | 2}
		f.Peers[1] = Peer{}
		if err := l.insert(l.id, &f, &l.keys); err != nil {
			t.Fatal(err)
		}
		return l
	}
	sa := seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN, ack: cISN + 1 + seqOff, flags: fSYN | fACK, win: 65160,
		opts: synAckOptions(777, 555+100, 7)}
	t.Run("the SYN-ACK and the ACK", func(t *testing.T) {
		l := synSent(t)
		ret, out := l.run(t, frame(sa))
		if ret != actRedirect {
			t.Fatalf("the SYN-ACK: action %d, want redirect", ret)
		}
		checksumsOK(t, out)
		tcp := out[14+20:]
		if ack := binary.BigEndian.Uint32(tcp[8:]); ack != cISN+1 || tcp[13] != fSYN|fACK {
			t.Errorf("the SYN-ACK toward the client: ack %d flags %#x, want %d and SYN-ACK", ack, tcp[13], cISN+1)
		}
		if tsval, tsecr := binary.BigEndian.Uint32(tcp[28:]), binary.BigEndian.Uint32(tcp[32:]); tsval != 777 || tsecr != 555 {
			t.Errorf("timestamps toward the client %d %d, want 777 555 (the client's TSval back in its numbering)", tsval, tsecr)
		}
		f := l.peek(t)
		// conntrack's initSender and inWindow: the backend's side from
		// its SYN-ACK (window unscaled, scale 7 as both sent one), its ACK
		// of the client's SYN; what the client may send, up to the
		// SYN-ACK's window.
		wantB := Peer{End: bISN + 1, MaxEnd: bISN + 1, MaxWin: 65160, MaxAck: cISN + 1, Win: 65160, Scale: 7, Flags: 1 | 2 | 4}
		if f.State != stSynRecv || f.Evicted != 0 || f.Peers[1] != wantB || f.Peers[0].MaxEnd != cISN+1+65160 || f.Peers[0].Scale != 7 {
			t.Errorf("after the SYN-ACK: state %d evicted %d peers %+v; want SynRecv and backend %+v, client max end %d",
				f.State, f.Evicted, f.Peers, wantB, cISN+1+65160)
		}
		ack := seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 502}
		if ret, _ := l.run(t, frame(ack)); ret != actRedirect {
			t.Fatalf("the client's ACK: action %d, want redirect", ret)
		}
		if f := l.peek(t); f.State != stEstablished || !l.p.Established(slot) {
			t.Errorf("after the ACK: state %d, slot set %v; want Established, set", f.State, l.p.Established(slot))
		}
	})
	for _, c := range []struct {
		name string
		s    seg
		why  uint32
	}{
		{"a SYN-ACK of another SYN", func() seg { s := sa; s.ack++; return s }(), EvictWindow},
		{"options in another order", func() seg { s := sa; s.opts = []byte{1, 3, 3, 7, 2, 4, 5, 0xb4}; return s }(), EvictOptions},
		{"the backend's ACK (its TIME_WAIT)", func() seg { s := sa; s.flags = fACK; s.opts = nil; return s }(), EvictFlags},
		{"the client's SYN again", seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN, flags: fSYN, win: 64240}, EvictFlags},
		{"a RST from the backend", seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: 0, ack: cISN + 1 + seqOff, flags: fRST | fACK}, EvictFlags},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := synSent(t)
			before := l.peek(t)
			in := frame(c.s)
			if ret, out := l.run(t, in); ret != actOK || string(out) != string(in) {
				t.Fatalf("action %d, changed %v; want it unchanged, to the engine", ret, string(out) != string(in))
			}
			if f := l.peek(t); f.Evicted != c.why || f.State != uint32(conntrack.StateSynSent) || f.Peers != before.Peers {
				t.Errorf("evicted %d state %d, peers changed %v; want %d, SynSent, unchanged", f.Evicted, f.State, f.Peers != before.Peers, c.why)
			}
		})
	}
}

// TestFollowsTheClose walks a flow through both FINs: the program forwards
// them and their ACKs with conntrack's transitions and counts each FIN in
// the sequence end toward the backend. It forwards the ACK that takes the
// flow to TimeWait too, deletes both keys, and tells the flow's worker its
// last state in an event; the entry stays until the engine deletes it.
func TestFollowsTheClose(t *testing.T) {
	l := newLab(t)
	f := walkToLastAck(t, l)
	if l.p.Events(0).Pending() {
		t.Fatal("an event before the flow closed")
	}
	ret, out := l.run(t, lastACK())
	if ret != actRedirect {
		t.Fatalf("the last ACK: action %d, want redirect", ret)
	}
	checksumsOK(t, out)
	if got := binary.BigEndian.Uint32(out[14+20+4:]); got != cISN+12+seqOff {
		t.Errorf("the last ACK's sequence number %d, want %d", got, cISN+12+seqOff)
	}
	var ev Event
	if !l.p.Events(0).Next(&ev) {
		t.Fatal("no event for the closed flow")
	}
	if ev.ID != l.id || ev.Gen != labGen || ev.State != uint32(conntrack.StateTimeWait) || ev.SeqEnd != f.SeqEnd ||
		ev.Packets != [2]uint64{2, 4} || ev.Bytes != [2]uint64{f.Bytes[0] + 40, f.Bytes[1]} || ev.Peers[1] != f.Peers[1] || ev.Peers[0].MaxAck != bISN+102 || ev.LastNs == 0 {
		t.Errorf("event %+v; flow before the last ACK %+v", ev, f)
	}
	if l.p.Events(0).Next(&ev) || l.p.Events(0).Pending() {
		t.Error("a second event")
	}
	for d, k := range l.keys {
		var r ref
		if err := elem(cmdLookup, l.p.keysFD, unsafe.Pointer(&k), unsafe.Pointer(&r), 0); !errors.Is(err, unix.ENOENT) {
			t.Errorf("key %d after the close: %v, want ENOENT", d, err)
		}
	}
	// What comes after goes to the engine, which has the flow in TimeWait.
	again := frame(seg{src: ipBE, dst: ipVIP, sport: 8080, dport: 61000, seq: bISN + 101, ack: cISN + 12 + seqOff, flags: fACK | fFIN, win: 509})
	if ret, out := l.run(t, again); ret != actOK || string(out) != string(again) {
		t.Errorf("a FIN after the close: action %d, changed %v; want it unchanged, to the engine", ret, string(out) != string(again))
	}
	if g := l.peek(t); g.State != uint32(conntrack.StateTimeWait) {
		t.Errorf("the entry after the close: state %d", g.State)
	}
	l.p.DeleteFlows([]uint32{99, l.id, 98}) // ids without an entry are skipped
	var g Flow
	if err := l.p.Peek(l.id, &g); !errors.Is(err, unix.ENOENT) {
		t.Errorf("the entry after DeleteFlows: %v, want ENOENT", err)
	}
	stats, err := l.p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stats[StatClosed] != 1 || stats[StatEvictClose] != 0 || stats[StatPackets] != 6 {
		t.Errorf("counters %v", stats)
	}
}

// TestClosesWithAFullRing fills a worker's event ring with closes the
// engine does not read: the close that finds it full gives the flow back
// instead, at its last ACK, as for any eviction, so that nothing is lost.
func TestClosesWithAFullRing(t *testing.T) {
	l := newLabConfig(t, Config{Flows: 16, Slots: 4, Workers: 1, EventRing: 4096})
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("100 closes did not fill a 4 KiB ring")
		}
		if i > 0 {
			l.p.Remove(l.id, &l.keys)
			l.reset(t)
		}
		walkToLastAck(t, l)
		last := lastACK()
		ret, out := l.run(t, last)
		if ret == actRedirect {
			continue
		}
		if ret != actOK || string(out) != string(last) {
			t.Fatalf("close %d: action %d, changed %v; want it unchanged, to the engine", i, ret, string(out) != string(last))
		}
		if f := l.peek(t); f.Evicted != EvictClose || f.State != uint32(conntrack.StateTimeWait) {
			t.Errorf("close %d with the ring full: evicted %d state %d, want EvictClose in TimeWait", i, f.Evicted, f.State)
		}
		st, err := l.p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		var ev Event
		for l.p.Events(0).Next(&ev) {
			n++
		}
		if st[StatEventsLost] != 1 || st[StatClosed] != uint64(i) || n != i || i < 4096/(112+8) {
			t.Errorf("after %d closes: counters %v, %d events read", i, st, n)
		}
		return
	}
}

// TestEntryOfAnotherFlow: the maps reuse a deleted entry's memory at
// once, so a segment whose key still leads to an id may find the entry
// holding another flow (the engine deleted this one after its close event
// and offloaded a new one under the id). The program must not rewrite the
// segment with the other flow's addresses: it passes it to the engine.
// (Found in a capture of the conn load: a backend's last ACK sent to the
// wrong client port.)
func TestEntryOfAnotherFlow(t *testing.T) {
	l := newLab(t)
	other := l.peek0()
	other.Dir[1].DstPort = [2]byte{40001 >> 8, 40001 & 0xff} // another client port
	if err := elem(cmdUpdate, l.p.flowsFD, unsafe.Pointer(&l.id), unsafe.Pointer(&other), 0); err != nil {
		t.Fatal(err)
	}
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH, win: 502, payload: 10})
	if ret, out := l.run(t, in); ret != actOK || string(out) != string(in) {
		t.Errorf("a segment of the flow whose entry holds another: action %d, changed %v; want it unchanged, to the engine", ret, string(out) != string(in))
	}
	if f := l.peek(t); f.Packets != [2]uint64{} || f.Peers != other.Peers {
		t.Errorf("the other flow's state changed: %+v", f)
	}
}

func TestUnknownSegmentsPass(t *testing.T) {
	l := newLab(t)
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40001, dport: 80, seq: 1, ack: 1, flags: fACK, win: 100})
	if ret, out := l.run(t, in); ret != actOK || string(out) != string(in) {
		t.Errorf("another flow's segment: action %d, changed %v", ret, string(out) != string(in))
	}
	// The flow's segment cut short anywhere in its headers (the kernel's
	// test run needs the IPv4 header): passed, never forwarded.
	for n := 34; n < 54; n++ {
		b := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 100})[:n]
		if ret, _ := l.run(t, b); ret == actRedirect {
			t.Errorf("a %d-byte frame was forwarded", n)
		}
	}
}

func TestTakeReturnsTheState(t *testing.T) {
	l := newLab(t)
	l.run(t, frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 300, payload: 10}))
	var f Flow
	if err := l.p.Take(l.id, &l.keys, &f); err != nil {
		t.Fatal(err)
	}
	if f.Peers[0].End != cISN+11 || f.Peers[0].Win != 300 {
		t.Errorf("taken: %+v", f.Peers[0])
	}
	if err := l.p.Peek(l.id, &f); !errors.Is(err, errNotExist()) {
		t.Errorf("the flow is still there after Take: %v", err)
	}
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 11, ack: bISN + 1, flags: fACK, win: 300})
	if ret, _ := l.run(t, in); ret != actOK {
		t.Errorf("after Take: action %d, want OK", ret)
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

func errNotExist() error { return unix.ENOENT }

// negate returns -v modulo 2^32, what the engine adds to take v off.
func negate(v uint32) uint32 { return -v }

func TestLive(t *testing.T) {
	l := newLab(t)
	l.run(t, frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK, win: 300, payload: 10}))
	n := 0
	if err := l.p.Live(func(be uint32, packets, bytes [2]uint64) {
		n++
		if packets != [2]uint64{1, 0} || bytes[0] != 20+20+10 {
			t.Errorf("flow of backend %d: packets %v bytes %v", be, packets, bytes)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("Live saw %d flows, want 1", n)
	}
}

// batchKeys are the keys of a flow other than the lab's, numbered i.
func batchKeys(i int) [2]Key {
	return [2]Key{MakeKey(ipClient, uint16(41000+i), ipVIP, 80), MakeKey(ipBE, 8080, ipVIP, uint16(62000+i))}
}

// keyRefs returns every key of the map and the flow it names.
func keyRefs(t *testing.T, p *Path) map[Key]ref {
	t.Helper()
	out := map[Key]ref{}
	var k Key
	var r ref
	it := p.keys.Iterate()
	for it.Next(&k, &r) {
		out[k] = r
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInsertBatch(t *testing.T) {
	l := newLabConfig(t, Config{Flows: 4, Slots: 4, Workers: 1})
	l.p.Remove(l.id, &l.keys)
	b := NewBatch(8)
	f, k := b.Add(l.id)
	l.fill(f)
	*k = l.keys
	for i := range 5 {
		f, k := b.Add(uint32(100 + i))
		l.fill(f)
		*k = batchKeys(i)
	}
	// Room for 4 of the 6: the first 4 go, the other 2 leave nothing behind.
	n, err := l.p.InsertBatch(b)
	if n != 4 || !errors.Is(err, ErrFull) {
		t.Fatalf("InsertBatch of 6 into room for 4: %d, %v; want 4, ErrFull", n, err)
	}
	in := frame(seg{src: ipClient, dst: ipVIP, sport: 40000, dport: 80, seq: cISN + 1, ack: bISN + 1, flags: fACK | fPSH, win: 502, payload: 10})
	if ret, out := l.run(t, in); ret != actRedirect {
		t.Errorf("a segment of the batch's first flow: action %d, want redirect", ret)
	} else {
		checksumsOK(t, out)
	}
	want := map[Key]ref{l.keys[0]: {l.id, 0}, l.keys[1]: {l.id, 1}}
	for i := range 3 {
		k := batchKeys(i)
		want[k[0]], want[k[1]] = ref{uint32(100 + i), 0}, ref{uint32(100 + i), 1}
	}
	if got := keyRefs(t, l.p); !maps.Equal(got, want) {
		t.Errorf("keys after the batch: %v, want %v", got, want)
	}
	var got Flow
	for i := range 5 {
		err := l.p.Peek(uint32(100+i), &got)
		if i < 3 && (err != nil || got.State != stEstablished) {
			t.Errorf("flow %d: %v, state %d", 100+i, err, got.State)
		}
		if i >= 3 && !errors.Is(err, errNotExist()) {
			t.Errorf("flow %d, beyond the room: %v, want it absent", 100+i, err)
		}
	}
	// An empty batch is no system call and no error.
	b.Reset()
	if n, err := l.p.InsertBatch(b); n != 0 || err != nil {
		t.Errorf("an empty batch: %d, %v", n, err)
	}
}

// A batch whose keys do not all fit (the keys map holds keys of flows the
// program closed, whose entries the engine has not yet deleted) keeps the
// flows whose both keys went, and removes the rest, flows and keys.
func TestInsertBatchKeysFull(t *testing.T) {
	for _, stray := range []int{2, 3} {
		l := newLabConfig(t, Config{Flows: 4, Slots: 4, Workers: 1})
		l.p.Remove(l.id, &l.keys)
		want := map[Key]ref{}
		for i := range stray {
			k := MakeKey(ipClient, uint16(50000+i), ipVIP, 80)
			r := ref{ID: 999, Dir: 0}
			if err := elem(cmdUpdate, l.p.keysFD, unsafe.Pointer(&k), unsafe.Pointer(&r), 0); err != nil {
				t.Fatal(err)
			}
			want[k] = r
		}
		b := NewBatch(4)
		for i := range 4 {
			f, k := b.Add(uint32(100 + i))
			l.fill(f)
			*k = batchKeys(i)
		}
		// 8 keys of room, stray taken: (8 - stray) / 2 flows whole.
		whole := (8 - stray) / 2
		n, err := l.p.InsertBatch(b)
		if n != whole || !errors.Is(err, ErrFull) {
			t.Fatalf("%d stray keys: InsertBatch %d, %v; want %d, ErrFull", stray, n, err, whole)
		}
		for i := range whole {
			k := batchKeys(i)
			want[k[0]], want[k[1]] = ref{uint32(100 + i), 0}, ref{uint32(100 + i), 1}
		}
		if got := keyRefs(t, l.p); !maps.Equal(got, want) {
			t.Errorf("%d stray keys: keys %v, want %v", stray, got, want)
		}
		var f Flow
		for i := range 4 {
			err := l.p.Peek(uint32(100+i), &f)
			if (i < whole) != (err == nil) {
				t.Errorf("%d stray keys: flow %d: %v (whole: %d)", stray, 100+i, err, whole)
			}
		}
	}
}
