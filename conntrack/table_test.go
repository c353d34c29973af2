package conntrack

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func TestNATPortShares(t *testing.T) {
	sh, _ := NewShared(1_000_000, 0)
	const workers = 3
	seen := map[uint16]int{}
	for w := 0; w < workers; w++ {
		tab := newTable(t, Config{Worker: w, Workers: workers, NATPortFirst: 40000, NATPortLast: 40029, Shared: sh})
		for i := 0; ; i++ {
			f, err := tab.Create(key(w*100+i), 0, back0, mac, 2, 0, SYN{}, false)
			if errors.Is(err, ErrNATPortsExhausted) {
				if i != 10 {
					t.Fatalf("worker %d ran out after %d ports, want 10 of 30", w, i)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if Owner(f.NATPort, workers) != w {
				t.Fatalf("worker %d got NAT port %d, owned by worker %d", w, f.NATPort, Owner(f.NATPort, workers))
			}
			seen[f.NATPort]++
		}
		// Another backend has ports of its own.
		if _, err := tab.Create(key(w*100+50), 1, back1, mac, 2, 0, SYN{}, false); err != nil {
			t.Fatalf("second backend: %v", err)
		}
	}
	if len(seen) != 30 {
		t.Fatalf("%d distinct ports over the three workers, want 30", len(seen))
	}
	for p, n := range seen {
		if n != 1 {
			t.Fatalf("port %d handed out %d times", p, n)
		}
	}
}

func TestNATPortQuietFIFO(t *testing.T) {
	now := int64(0)
	tab := newTable(t, Config{NATPortFirst: 40000, NATPortLast: 40002, Clock: func() int64 { return now }})
	var fs []*Flow
	for i := 0; i < 3; i++ {
		f, err := tab.Create(key(i), 0, back0, mac, 2, now, SYN{}, false)
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	first := fs[0].NATPort
	tab.Remove(fs[0], now)
	now = 10 * sec
	tab.Remove(fs[1], now)
	f, err := tab.Create(key(10), 0, back0, mac, 2, now, SYN{}, false)
	if err != nil || f.NATPort != first {
		t.Fatalf("got port %v (%v), want the least recently freed %d", f, err, first)
	}
	if st := tab.Stats(); st.NATQuietReused != 1 {
		t.Fatalf("quiet reuse counted %d, want 1 (freed 10 s ago, quiet 60 s)", st.NATQuietReused)
	}
}

func TestSharedLimits(t *testing.T) {
	sh, _ := NewShared(5, 0)
	a := newTable(t, Config{Worker: 0, Workers: 2, Shared: sh})
	b := newTable(t, Config{Worker: 1, Workers: 2, Shared: sh})
	for i := 0; i < 5; i++ {
		tab := a
		if i%2 == 1 {
			tab = b
		}
		if _, err := tab.Create(key(i), 0, back0, mac, 2, 0, SYN{}, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Create(key(9), 0, back0, mac, 2, 0, SYN{}, false); !errors.Is(err, ErrTableFull) {
		t.Fatalf("sixth flow over two tables: %v, want ErrTableFull", err)
	}
	if sh.Len() != 5 || a.Len()+b.Len() != 5 {
		t.Fatalf("shared %d, tables %d+%d", sh.Len(), a.Len(), b.Len())
	}
}

func TestMaxFlowsConcurrent(t *testing.T) {
	sh, _ := NewShared(1000, 0)
	var wg sync.WaitGroup
	made := make([]int, 4)
	for w := 0; w < 4; w++ {
		tab := newTable(t, Config{Worker: w, Workers: 4, Shared: sh})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				if _, err := tab.Create(key(w*1000+i), 0, back0, mac, 2, 0, SYN{}, false); err == nil {
					made[w]++
				}
			}
		}()
	}
	wg.Wait()
	if total := made[0] + made[1] + made[2] + made[3]; total != 1000 || sh.Len() != 1000 {
		t.Fatalf("workers made %v (%d), shared count %d; want exactly 1000", made, total, sh.Len())
	}
}

func TestClientLimit(t *testing.T) {
	sh, _ := NewShared(1_000_000, 3)
	tab := newTable(t, Config{Shared: sh})
	c := Endpoint{IP: [4]byte{198, 18, 0, 10}}
	var fs []*Flow
	for port := uint16(1); port <= 3; port++ {
		c.Port = port
		f, err := tab.Create(ClientKey{Client: c, VIP: vip}, 0, back0, mac, 2, 0, SYN{}, false)
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	c.Port = 4
	if _, err := tab.Create(ClientKey{Client: c, VIP: vip}, 0, back0, mac, 2, 0, SYN{}, false); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("fourth flow of one client: %v, want ErrClientLimit", err)
	}
	// Other clients are not affected, even many of them.
	for i := 0; i < 2000; i++ {
		other := ClientKey{Client: Endpoint{IP: [4]byte{100, 64, byte(i >> 8), byte(i)}, Port: 5000}, VIP: vip}
		if _, err := tab.Create(other, 0, back0, mac, 2, 0, SYN{}, false); err != nil {
			t.Fatalf("client %d refused: %v", i, err)
		}
	}
	tab.Remove(fs[0], 0)
	if _, err := tab.Create(ClientKey{Client: c, VIP: vip}, 0, back0, mac, 2, 0, SYN{}, false); err != nil {
		t.Fatalf("after one flow ended: %v", err)
	}
	if st := tab.Stats(); st.RefusedClient != 1 {
		t.Fatalf("RefusedClient %d", st.RefusedClient)
	}
}

// judge records what a sweep asked.
type judge struct {
	drop    map[ClientKey]bool
	expired []ClientKey
}

func (j *judge) Keep(f *Flow) bool { return !j.drop[f.Key] }
func (j *judge) Expired(f *Flow)   { j.expired = append(j.expired, f.Key) }

func TestSweepTimeouts(t *testing.T) {
	tab := newTable(t, Config{HalfOpenTimeout: 5 * time.Second, EstablishedTimeout: 100 * time.Second, ClosingTimeout: 2 * time.Second})
	half := open(t, tab, key(1), 1)
	est := open(t, tab, key(2), 1)
	est.establish()
	closing := open(t, tab, key(3), 1)
	closing.establish()
	closing.client(FlagRST, 0)
	// The backend keeps retransmitting its SYN-ACK to a client that never
	// answers (a spoofed SYN): the flow still expires 5 s after creation.
	half.backend(FlagSYN|FlagACK, 0)
	for s := int64(1); s <= 4; s++ {
		half.now = s * sec
		seg := Segment{Flags: FlagSYN | FlagACK, Seq: half.bseq - 1, Ack: half.cseq + half.f.SeqOff, Win: 1000, WScale: 7}
		tab.Track(half.f, FromBackend, &seg, half.now)
	}
	j := &judge{}
	if n := tab.Sweep(3*sec, 100, j); n != 1 || len(j.expired) != 1 || j.expired[0] != key(3) {
		t.Fatalf("sweep at 3 s removed %d (%v), want only the closed flow", n, j.expired)
	}
	if n := tab.Sweep(5*sec+1, 100, j); n != 1 || j.expired[1] != key(1) {
		t.Fatalf("sweep at 5 s: %d %v, want the half-open flow", n, j.expired)
	}
	if tab.HalfOpen() != 0 || tab.Len() != 1 {
		t.Fatalf("half-open %d, len %d", tab.HalfOpen(), tab.Len())
	}
	j.drop = map[ClientKey]bool{key(2): true}
	if n := tab.Sweep(6*sec, 100, j); n != 1 || tab.Len() != 0 || tab.Live(0) != 0 || tab.Flows(0) != 0 {
		t.Fatalf("judge's drop: removed %d, len %d live %d flows %d", n, tab.Len(), tab.Live(0), tab.Flows(0))
	}
}

func TestSweepBudgetCoversTable(t *testing.T) {
	tab := newTable(t, Config{ClosingTimeout: time.Second})
	for i := 0; i < 5000; i++ {
		c := open(t, tab, key(i), 1)
		c.establish()
		c.client(FlagRST, 0)
	}
	removed := 0
	for k := 0; k < 20; k++ {
		removed += tab.Sweep(2*sec, 250, nil)
	}
	if removed != 5000 || tab.Len() != 0 {
		t.Fatalf("20 sweeps of 250 slots removed %d of 5000", removed)
	}
}

func TestOffsetsFromClocks(t *testing.T) {
	wall := int64(1_700_000_000) * sec
	tab := newTable(t, Config{NATPortFirst: 40000, NATPortLast: 40000, WallClock: func() int64 { return wall },
		ISNHash: func(p uint16, b Endpoint) uint32 { return 12345 }})
	syn := SYN{Seq: 777, TSval: 42, HasTS: true, WScale: -1}
	f, err := tab.Create(key(1), 0, back0, mac, 2, 0, syn, false)
	if err != nil {
		t.Fatal(err)
	}
	wantTS := uint32(wall / int64(time.Millisecond))
	if 42+f.TSOff != wantTS {
		t.Fatalf("TSval toward the backend %d, want the wall clock's %d ms", 42+f.TSOff, wantTS)
	}
	wantISN := uint32(wall/isnTick) + 12345
	if 777+f.SeqOff != wantISN {
		t.Fatalf("ISN toward the backend %d, want RFC 6528's %d", 777+f.SeqOff, wantISN)
	}
	// The flow sends far beyond the clocks (a fast timestamp clock, a
	// long transfer); the next flow on the port must start beyond what it
	// left.
	f.NoteToBackend(wantTS+1_000_000, true, wantISN+1_500_000_000)
	tab.Remove(f, 0)
	g, err := tab.Create(key(2), 0, back0, mac, 2, 0, SYN{Seq: 5, TSval: 9, HasTS: true, WScale: -1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if ts := 9 + g.TSOff; ts != wantTS+1_000_001 {
		t.Fatalf("next flow's TSval %d, want one above the port's last %d", ts, wantTS+1_000_000)
	}
	if isn := 5 + g.SeqOff; isn != wantISN+1_500_000_000+seqGap {
		t.Fatalf("next flow's ISN %d, want beyond the port's last sequence end", isn)
	}
}

func TestRestartKeepsPort(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	port := c.f.NATPort
	c.client(FlagRST, 0) // the client gives up on the handshake
	if c.f.State() != StateClose {
		t.Fatalf("state %v", c.f.State())
	}
	// Everything that says where the flow's frames go stays: the frames
	// to the client went out from a zero MAC, which a bridge drops, when
	// Restart lost LocalMAC.
	c.f.LocalMAC = [6]byte{2, 0x52, 0x4c, 0, 0, 1}
	type where struct {
		k          ClientKey
		b          Endpoint
		cmac, lmac [6]byte
		ifindex    int32
		backend    uint32
	}
	was := where{c.f.Key, c.f.BackendAddr, c.f.ClientMAC, c.f.LocalMAC, c.f.ClientIf, c.f.Backend}
	tab.Restart(c.f, SYN{Seq: 5000, WScale: -1}, 3*sec)
	if is := (where{c.f.Key, c.f.BackendAddr, c.f.ClientMAC, c.f.LocalMAC, c.f.ClientIf, c.f.Backend}); is != was {
		t.Errorf("Restart changed where the flow goes: %+v, was %+v", is, was)
	}
	if c.f.NATPort != port || c.f.State() != StateSynSent || tab.HalfOpen() != 1 || tab.Live(0) != 1 {
		t.Fatalf("after Restart: port %d (was %d), %v, half-open %d live %d", c.f.NATPort, port, c.f.State(), tab.HalfOpen(), tab.Live(0))
	}
	if got := tab.LookupBackend(c.f.ReverseKey()); got != c.f {
		t.Fatal("the restarted flow is not found by its reverse key")
	}
}

func TestExportImport(t *testing.T) {
	src := newTable(t, Config{Worker: 1, Workers: 2})
	c := open(t, src, key(1), 1000)
	c.establish()
	c.client(FlagACK|FlagPSH, 100)
	c.f.NoteToBackend(c.f.tsLast+5, true, c.cseq+c.f.SeqOff)
	st := c.f.Export(10 * sec)
	other := open(t, src, key(2), 5)
	src.Remove(other.f, 11*sec)
	ports := src.ExportPorts(12 * sec)

	dst := newTable(t, Config{Worker: 1, Workers: 2, Clock: func() int64 { return 100 * sec }})
	if _, err := newTable(t, Config{Worker: 0, Workers: 2}).Import(st, 3, 100*sec); !errors.Is(err, ErrNotMine) {
		t.Fatalf("import into the wrong worker: %v", err)
	}
	f, err := dst.Import(st, 3, 100*sec)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if err := dst.ImportPort(p, 100*sec); err != nil {
			t.Fatal(err)
		}
	}
	if f.State() != StateEstablished || f.Backend != 3 || f.NATPort != c.f.NATPort || f.SeqOff != c.f.SeqOff || f.TSOff != c.f.TSOff {
		t.Fatalf("imported %+v", f)
	}
	if f.LastSeen != 100*sec-int64(st.Idle) || dst.Live(3) != 1 || dst.Len() != 1 {
		t.Fatalf("ages or counts wrong: last %d, live %d len %d", f.LastSeen, dst.Live(3), dst.Len())
	}
	if dst.LookupClient(key(1)) != f || dst.LookupBackend(f.ReverseKey()) != f {
		t.Fatal("imported flow not found")
	}
	// The windows came along: the next data segment passes, a blind one
	// does not.
	next := Segment{Flags: FlagACK | FlagPSH, Seq: c.cseq, Ack: c.bseq + f.BSeqOff, Win: 500, Len: 10}
	if v := dst.Track(f, FromClient, &next, 100*sec); v.Action != Forward {
		t.Fatalf("next segment after import: %+v", v)
	}
	blind := Segment{Flags: FlagRST, Seq: c.cseq + 5000}
	if v := dst.Track(f, FromClient, &blind, 100*sec); v.Action == Forward {
		t.Fatalf("blind RST after import: %+v", v)
	}
	// The removed flow's port kept its memory: a new flow on it starts
	// beyond.
	if len(ports) == 0 {
		t.Fatal("no port memory exported")
	}
}

func TestLookupsAllocateNothing(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	rk := c.f.ReverseKey()
	if n := testing.AllocsPerRun(1000, func() {
		_ = tab.LookupClient(key(1))
		_ = tab.LookupBackend(rk)
	}); n != 0 {
		t.Fatalf("lookups allocate %v times", n)
	}
}

// fakeFast is an Offloader whose flows reach LastAck when told to.
type fakeFast struct {
	tab       *Table
	refreshes int
	closed    bool // the fast path took its flow to LastAck
}

func (o *fakeFast) Release(f *Flow) { f.SetOffloaded(false) }

func (o *fakeFast) Refresh(f *Flow) {
	o.refreshes++
	if o.closed && f.State() != StateLastAck {
		o.tab.SetState(f, StateLastAck)
	}
}

// TestSweepAsksAboutIdleOffloadedFlows: the fast path forwards both FINs,
// so an offloaded flow the engine thinks established may be in LastAck,
// whose timeout is the closing one. The sweep asks once per closing
// timeout about a flow idle that long, and removes it on the closing
// timeout once it is in LastAck, not after the established one.
func TestSweepAsksAboutIdleOffloadedFlows(t *testing.T) {
	now := int64(0)
	tab := newTable(t, Config{NATPortFirst: 40000, NATPortLast: 40009, ClosingTimeout: 10 * time.Second,
		EstablishedTimeout: time.Hour, Clock: func() int64 { return now }})
	off := &fakeFast{tab: tab}
	tab.SetOffloader(off)
	f, err := tab.Create(key(1), 0, back0, mac, 2, now, SYN{}, false)
	if err != nil {
		t.Fatal(err)
	}
	tab.SetState(f, StateEstablished)
	f.SetOffloaded(true)
	sweep := func() int { return tab.Sweep(now, 100, nil) }
	for now = sec; now <= 10*sec; now += sec {
		sweep()
	}
	if off.refreshes != 0 {
		t.Fatalf("%d refreshes of a flow idle for at most the closing timeout", off.refreshes)
	}
	for ; now <= 40*sec; now += sec {
		sweep()
	}
	if off.refreshes != 3 {
		t.Fatalf("%d refreshes of a flow idle for 40 s, want 3: one per closing timeout after the first", off.refreshes)
	}
	off.closed = true
	removed := 0
	for ; now <= 70*sec && removed == 0; now += sec {
		removed = sweep()
	}
	if removed != 1 || f.State() != StateNone {
		t.Fatalf("a flow the fast path took to LastAck: removed %d by %d s, state %v; want it gone within a closing timeout", removed, now/sec, f.State())
	}
}
