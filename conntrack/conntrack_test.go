package conntrack

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	vip  = Endpoint{IP: [4]byte{192, 0, 2, 1}, Port: 80}
	mac  = [6]byte{0x02, 0, 0, 0, 0, 1}
	back = []Endpoint{
		{IP: [4]byte{10, 1, 0, 1}, Port: 8080},
		{IP: [4]byte{10, 1, 0, 2}, Port: 8080},
	}
)

const sec = int64(time.Second)

// key returns a distinct client key for each i (up to 2^32).
func key(i int) ClientKey {
	return ClientKey{
		Client: Endpoint{IP: [4]byte{100, byte(i >> 24), byte(i >> 16), byte(i >> 8)}, Port: 1024 + uint16(i&0xff)},
		VIP:    vip,
	}
}

// newTable returns a table with two backends and the given overrides; the
// clock is frozen at 0 unless cfg sets one.
func newTable(t testing.TB, cfg Config) *Table {
	t.Helper()
	if cfg.Backends == nil {
		cfg.Backends = back
	}
	if cfg.Clock == nil {
		cfg.Clock = func() int64 { return 0 }
	}
	tab, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tab
}

func mustCreate(t testing.TB, tab *Table, k ClientKey, backend int, now int64) *Flow {
	t.Helper()
	f, err := tab.Create(k, backend, mac, now, SYN{})
	if err != nil {
		t.Fatalf("Create(%v, %d): %v", k, backend, err)
	}
	return f
}

// checkInvariants checks, with the table quiescent, that both indexes hold the
// same flows, Len and Live agree with them, and every NAT port is either free
// or used by exactly one flow per backend.
func checkInvariants(t *testing.T, tab *Table) {
	t.Helper()
	var flows []*Flow
	for i := range tab.fwd {
		for k, f := range tab.fwd[i].m {
			if k != f.Key {
				t.Errorf("forward key %v holds flow keyed %v", k, f.Key)
			}
			flows = append(flows, f)
		}
	}
	nrev := 0
	for i := range tab.rev {
		nrev += len(tab.rev[i].m)
	}
	if nrev != len(flows) || tab.Len() != len(flows) {
		t.Errorf("forward index has %d flows, reverse %d, Len() %d", len(flows), nrev, tab.Len())
	}
	live := make([]int, len(tab.backends))
	used := make([]map[uint16]bool, len(tab.backends))
	for i := range used {
		used[i] = map[uint16]bool{}
	}
	for _, f := range flows {
		if got := tab.LookupBackend(f.ReverseKey()); got != f {
			t.Errorf("LookupBackend(%v) = %v, want %v", f.ReverseKey(), got, f)
		}
		if used[f.Backend][f.NATPort] {
			t.Errorf("NAT port %d used twice toward backend %d", f.NATPort, f.Backend)
		}
		used[f.Backend][f.NATPort] = true
		if f.word.Load()&liveBit != 0 {
			live[f.Backend]++
		}
	}
	for b := range tab.backends {
		if got := tab.Live(b); got != live[b] {
			t.Errorf("Live(%d) = %d, want %d", b, got, live[b])
		}
		if got, want := tab.FreeNATPorts(b)+len(used[b]), len(tab.ports[b].port); got != want {
			t.Errorf("backend %d: %d free + %d used NAT ports, want %d in all", b, tab.FreeNATPorts(b), len(used[b]), want)
		}
	}
}

type step struct {
	d     Direction
	flags uint8
}

var (
	cSYN    = step{FromClient, FlagSYN}
	cACK    = step{FromClient, FlagACK}
	cData   = step{FromClient, FlagACK | 0x08}
	cFIN    = step{FromClient, FlagFIN | FlagACK}
	cRST    = step{FromClient, FlagRST}
	cSYNACK = step{FromClient, FlagSYN | FlagACK}
	bSYN    = step{FromBackend, FlagSYN}
	bSYNACK = step{FromBackend, FlagSYN | FlagACK}
	bACK    = step{FromBackend, FlagACK}
	bFIN    = step{FromBackend, FlagFIN | FlagACK}
	bRST    = step{FromBackend, FlagRST | FlagACK}
)

func TestStateTransitions(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  State
	}{
		{"created", nil, StateSynSent},
		{"syn retransmitted", []step{cSYN, cSYN}, StateSynSent},
		{"client ACK before SYN-ACK", []step{cACK}, StateSynSent},
		{"SYN-ACK from client ignored", []step{cSYNACK}, StateSynSent},
		{"bare SYN from backend ignored", []step{bSYN}, StateSynSent},
		{"ACK from backend without SYN", []step{bACK}, StateSynSent},
		{"FIN before handshake ignored", []step{cFIN}, StateSynSent},
		{"SYN-ACK", []step{bSYNACK}, StateEstablished},
		{"handshake and data", []step{bSYNACK, cACK, cData, bACK}, StateEstablished},
		{"SYN-ACK retransmitted", []step{bSYNACK, cACK, bSYNACK}, StateEstablished},
		{"FIN from client", []step{bSYNACK, cACK, cFIN}, StateFinWait},
		{"FIN from backend", []step{bSYNACK, cACK, bFIN}, StateFinWait},
		{"FIN retransmitted by one side", []step{bSYNACK, cFIN, cFIN, bACK}, StateFinWait},
		{"half-close carries data", []step{bSYNACK, cFIN, bACK, cACK}, StateFinWait},
		{"SYN-ACK with FIN", []step{{FromBackend, FlagSYN | FlagACK | FlagFIN}}, StateFinWait},
		{"FINs from both, client first", []step{bSYNACK, cFIN, bFIN}, StateClosing},
		{"FINs from both, backend first", []step{bSYNACK, bFIN, cFIN}, StateClosing},
		{"last ACK after FINs", []step{bSYNACK, cFIN, bFIN, cACK}, StateClosing},
		{"Closing ignores SYN-ACK", []step{bSYNACK, cFIN, bFIN, bSYNACK}, StateClosing},
		{"RST from client in SynSent", []step{cRST}, StateClosed},
		{"RST from backend in SynSent (port closed)", []step{bRST}, StateClosed},
		{"RST in Established", []step{bSYNACK, cACK, cRST}, StateClosed},
		{"RST in FinWait", []step{bSYNACK, cFIN, bRST}, StateClosed},
		{"RST in Closing", []step{bSYNACK, cFIN, bFIN, cRST}, StateClosed},
		{"Closed is final", []step{cRST, bSYNACK, cFIN, bFIN, cACK}, StateClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newTable(t, Config{})
			f := mustCreate(t, tab, key(1), 1, 0)
			for i, s := range tt.steps {
				tab.Observe(f, s.d, s.flags, 60, int64(i+1))
			}
			if got := f.State(); got != tt.want {
				t.Errorf("State() = %v, want %v", got, tt.want)
			}
			wantLive := 1
			if tt.want == StateClosing || tt.want == StateClosed {
				wantLive = 0
			}
			if got := tab.Live(1); got != wantLive {
				t.Errorf("Live(1) = %d, want %d", got, wantLive)
			}
			if got := tab.Live(0); got != 0 {
				t.Errorf("Live(0) = %d, want 0", got)
			}
			checkInvariants(t, tab)
		})
	}
}

func TestTimeouts(t *testing.T) {
	cfg := Config{
		HalfOpenTimeout:    3 * time.Second,
		EstablishedTimeout: 100 * time.Second,
		ClosingTimeout:     7 * time.Second,
	}
	tests := []struct {
		name    string
		steps   []step
		timeout int64
	}{
		{"SynSent", nil, 3 * sec},
		{"SynSent after client retransmits", []step{cSYN}, 3 * sec},
		{"Established", []step{bSYNACK, cACK}, 100 * sec},
		{"FinWait", []step{bSYNACK, cFIN}, 100 * sec},
		{"Closing", []step{bSYNACK, cFIN, bFIN}, 7 * sec},
		{"Closed", []step{bSYNACK, bRST}, 7 * sec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range []struct {
				after   int64 // relative to the deadline
				expired bool
			}{{-1, false}, {0, false}, {1, true}} {
				tab := newTable(t, cfg)
				now := 5 * sec
				f := mustCreate(t, tab, key(7), 0, now)
				for _, s := range tt.steps {
					now += sec
					tab.Observe(f, s.d, s.flags, 60, now)
				}
				if got := f.LastSeen(); got != now {
					t.Fatalf("LastSeen() = %d, want %d", got, now)
				}
				at := now + tt.timeout + c.after
				n := tab.Sweep(at)
				gone := tab.LookupClient(f.Key) == nil
				if gone != c.expired || n != map[bool]int{false: 0, true: 1}[c.expired] {
					t.Errorf("Sweep at deadline%+dns: removed %d, flow gone %v; want expired %v", c.after, n, gone, c.expired)
				}
				if c.expired {
					if s := tab.Stats(); s.Expired != 1 || s.Removed != 0 {
						t.Errorf("Stats = %+v, want Expired 1, Removed 0", s)
					}
					if tab.Live(0) != 0 || tab.Len() != 0 || tab.FreeNATPorts(0) != DefaultNATPortLast-DefaultNATPortFirst+1 {
						t.Errorf("after expiry: Live %d, Len %d, free ports %d", tab.Live(0), tab.Len(), tab.FreeNATPorts(0))
					}
				}
				checkInvariants(t, tab)
			}
		})
	}
}

func TestObserveRefreshesLastSeen(t *testing.T) {
	tab := newTable(t, Config{HalfOpenTimeout: 3 * time.Second})
	f := mustCreate(t, tab, key(1), 0, 0)
	tab.Observe(f, FromClient, FlagSYN, 60, 2*sec)
	if n := tab.Sweep(4 * sec); n != 0 {
		t.Fatalf("Sweep removed a flow seen 2s ago")
	}
	// An older timestamp from a slower worker does not move LastSeen back.
	tab.Observe(f, FromClient, FlagACK, 60, sec)
	if got := f.LastSeen(); got != 2*sec {
		t.Errorf("LastSeen() = %d, want %d", got, 2*sec)
	}
	if n := tab.Sweep(5*sec + 1); n != 1 {
		t.Errorf("Sweep(5s+1) removed %d, want 1", n)
	}
}

func TestCountersAndLookups(t *testing.T) {
	tab := newTable(t, Config{})
	f := mustCreate(t, tab, key(1), 1, 0)
	tab.Observe(f, FromClient, FlagSYN, 60, 1)
	tab.Observe(f, FromBackend, FlagSYN|FlagACK, 60, 2)
	tab.Observe(f, FromClient, FlagACK, 1500, 3)
	tab.Observe(f, FromClient, FlagACK, 52, 4)
	if p, b := f.Counters(FromClient); p != 3 || b != 1612 {
		t.Errorf("Counters(FromClient) = %d, %d; want 3, 1612", p, b)
	}
	if p, b := f.Counters(FromBackend); p != 1 || b != 60 {
		t.Errorf("Counters(FromBackend) = %d, %d; want 1, 60", p, b)
	}
	if f.Key != key(1) || f.Backend != 1 || f.BackendAddr != back[1] || f.ClientMAC != mac {
		t.Errorf("flow fields = %+v", f)
	}
	if f.NATPort != DefaultNATPortFirst {
		t.Errorf("NATPort = %d, want %d (first of the range)", f.NATPort, DefaultNATPortFirst)
	}
	rk := BackendKey{Backend: back[1], NATPort: f.NATPort}
	if f.ReverseKey() != rk {
		t.Errorf("ReverseKey() = %v, want %v", f.ReverseKey(), rk)
	}
	if got := tab.LookupClient(key(1)); got != f {
		t.Errorf("LookupClient = %p, want %p", got, f)
	}
	if got := tab.LookupBackend(rk); got != f {
		t.Errorf("LookupBackend = %p, want %p", got, f)
	}
	for _, k := range []BackendKey{
		{Backend: back[0], NATPort: f.NATPort}, // same port, other backend
		{Backend: back[1], NATPort: f.NATPort + 1},
	} {
		if got := tab.LookupBackend(k); got != nil {
			t.Errorf("LookupBackend(%v) = %v, want nil", k, got)
		}
	}
	if got := tab.LookupClient(key(2)); got != nil {
		t.Errorf("LookupClient(absent) = %v, want nil", got)
	}
}

func TestCreateExisting(t *testing.T) {
	tab := newTable(t, Config{})
	f := mustCreate(t, tab, key(1), 0, 0)
	tab.Observe(f, FromClient, FlagRST, 40, 1)
	// Same key, other backend: the existing flow wins, whatever its state.
	g := mustCreate(t, tab, key(1), 1, 2)
	if g != f {
		t.Fatalf("second Create returned %p, want the existing %p", g, f)
	}
	if s := tab.Stats(); s.Created != 1 {
		t.Errorf("Created = %d, want 1", s.Created)
	}
	if tab.Len() != 1 || tab.FreeNATPorts(1) != DefaultNATPortLast-DefaultNATPortFirst+1 {
		t.Errorf("Len %d, free ports toward backend 1: %d", tab.Len(), tab.FreeNATPorts(1))
	}
	checkInvariants(t, tab)
}

func TestCreateRace(t *testing.T) {
	tab := newTable(t, Config{})
	const workers = 32
	var wg sync.WaitGroup
	got := make([]*Flow, workers)
	for w := range workers {
		wg.Go(func() {
			f, err := tab.Create(key(9), w%2, mac, 0, SYN{})
			if err != nil {
				t.Error(err)
			}
			got[w] = f
		})
	}
	wg.Wait()
	for w, f := range got {
		if f != got[0] {
			t.Errorf("worker %d got %p, worker 0 got %p", w, f, got[0])
		}
	}
	if s := tab.Stats(); s.Created != 1 || tab.Len() != 1 {
		t.Errorf("Created %d, Len %d; want 1, 1", s.Created, tab.Len())
	}
	checkInvariants(t, tab)
}

func TestCreateBadBackend(t *testing.T) {
	tab := newTable(t, Config{})
	for _, b := range []int{-1, 2} {
		if f, err := tab.Create(key(1), b, mac, 0, SYN{}); err == nil || f != nil {
			t.Errorf("Create toward backend %d = %v, %v; want an error", b, f, err)
		}
	}
	if tab.Live(-1) != 0 || tab.Live(2) != 0 || tab.FreeNATPorts(5) != 0 {
		t.Errorf("Live/FreeNATPorts out of range are not 0")
	}
}

func TestLiveCounts(t *testing.T) {
	var clock int64
	tab := newTable(t, Config{Clock: func() int64 { return clock }})
	var fs []*Flow
	for i := range 5 {
		fs = append(fs, mustCreate(t, tab, key(i), i%2, 0)) // 0,2,4 -> b0; 1,3 -> b1
	}
	want := func(step string, b0, b1 int) {
		t.Helper()
		if tab.Live(0) != b0 || tab.Live(1) != b1 {
			t.Errorf("%s: Live = %d, %d; want %d, %d", step, tab.Live(0), tab.Live(1), b0, b1)
		}
		checkInvariants(t, tab)
	}
	want("created", 3, 2)
	for _, f := range fs {
		tab.Observe(f, FromBackend, FlagSYN|FlagACK, 60, 1)
	}
	want("established", 3, 2)
	tab.Observe(fs[0], FromClient, FlagFIN, 60, 2)
	want("half-closed stays live", 3, 2)
	tab.Observe(fs[0], FromBackend, FlagFIN, 60, 3)
	want("both FINs", 2, 2)
	tab.Observe(fs[0], FromBackend, FlagRST, 60, 3)
	want("RST after Closing", 2, 2)
	tab.Remove(fs[0])
	want("Closing flow removed", 2, 2)
	tab.Observe(fs[1], FromClient, FlagRST, 60, 4)
	want("RST", 2, 1)
	tab.Observe(fs[1], FromClient, FlagRST, 60, 4)
	want("RST again", 2, 1)
	tab.Remove(fs[2])
	want("established flow removed", 1, 1)
	tab.Remove(fs[2])
	want("removed twice", 1, 1)
	tab.Observe(fs[2], FromClient, FlagRST, 60, 5)
	want("RST on a removed flow", 1, 1)
	// fs[1] is Closed (closing timeout), fs[3] and fs[4] Established.
	if n := tab.Sweep(4 + int64(DefaultClosingTimeout) + 1); n != 1 {
		t.Errorf("Sweep removed %d, want 1 (the Closed flow)", n)
	}
	want("Closed flow expired", 1, 1)
	if n := tab.Sweep(1 + int64(DefaultEstablishedTimeout) + 1); n != 2 {
		t.Errorf("Sweep removed %d, want 2", n)
	}
	want("established flows expired", 0, 0)
	if s := tab.Stats(); s.Created != 5 || s.Removed != 2 || s.Expired != 3 {
		t.Errorf("Stats = %+v", s)
	}
	if tab.Len() != 0 {
		t.Errorf("Len = %d, want 0", tab.Len())
	}
}

// TestLiveConcurrent races every way a flow can stop counting (FINs from both
// sides on different workers, RST, Remove, Sweep) against each other on the
// same flows; with any double decrement Live would end negative.
func TestLiveConcurrent(t *testing.T) {
	tab := newTable(t, Config{ClosingTimeout: time.Nanosecond})
	const flows = 2000
	fs := make([]*Flow, flows)
	for i := range fs {
		fs[i] = mustCreate(t, tab, key(i), i%2, 0)
		tab.Observe(fs[i], FromBackend, FlagSYN|FlagACK, 60, 0)
	}
	var wg sync.WaitGroup
	for _, s := range []step{cFIN, bFIN, cFIN, bFIN, cRST, bRST} {
		wg.Go(func() {
			for i, f := range fs {
				if i%3 != 0 { // a third of the flows never closes
					tab.Observe(f, s.d, s.flags, 60, 1)
				}
			}
		})
	}
	wg.Go(func() {
		for i := len(fs) - 1; i >= 0; i -= 5 {
			tab.Remove(fs[i])
		}
	})
	for range 2 {
		wg.Go(func() {
			for range 20 {
				tab.Sweep(10) // removes Closing and Closed flows only
			}
		})
	}
	wg.Wait()
	checkInvariants(t, tab)
	tab.Sweep(10)
	// Left: flows with i%3 == 0 not removed, all live.
	want := [2]int{}
	for i := range fs {
		if i%3 == 0 && (len(fs)-1-i)%5 != 0 {
			want[i%2]++
		}
	}
	if tab.Live(0) != want[0] || tab.Live(1) != want[1] || tab.Len() != want[0]+want[1] {
		t.Errorf("Live = %d, %d, Len %d; want %d, %d, %d", tab.Live(0), tab.Live(1), tab.Len(), want[0], want[1], want[0]+want[1])
	}
	checkInvariants(t, tab)
	tab.Sweep(int64(DefaultEstablishedTimeout) + 10)
	if tab.Live(0) != 0 || tab.Live(1) != 0 || tab.Len() != 0 {
		t.Errorf("after expiring everything: Live = %d, %d, Len %d", tab.Live(0), tab.Live(1), tab.Len())
	}
	checkInvariants(t, tab)
}

// TestConcurrentStress mixes every operation from several goroutines; run it
// with -race. The invariants are checked once everything has stopped.
func TestConcurrentStress(t *testing.T) {
	var clock atomic.Int64
	tab := newTable(t, Config{
		Backends:        []Endpoint{back[0], back[1], {IP: [4]byte{10, 1, 0, 3}, Port: 80}},
		NATPortFirst:    2000,
		NATPortLast:     2249, // 3 x 250 ports, a little over MaxFlows: both limits are hit
		HalfOpenTimeout: 5 * time.Nanosecond,
		ClosingTimeout:  2 * time.Nanosecond,
		MaxFlows:        700,
		Shards:          4,
		Clock:           clock.Load,
	})
	const workers, ops = 6, 3000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	sweeper := make(chan struct{})
	go func() {
		defer close(sweeper)
		for {
			select {
			case <-stop:
				return
			default:
				tab.Sweep(clock.Add(1))
			}
		}
	}()
	for w := range workers {
		wg.Go(func() {
			for i := range ops {
				k := key((i*7 + w) % 1200)
				now := clock.Load()
				f := tab.LookupClient(k)
				switch {
				case f == nil:
					f, err := tab.Create(k, []int{0, 0, 1, 2}[(i+w)%4], mac, now, SYN{}) // skewed, so backend 0 runs out of ports
					if err != nil && !errors.Is(err, ErrTableFull) && !errors.Is(err, ErrNATPortsExhausted) {
						t.Error(err)
					}
					if f != nil {
						tab.Observe(f, FromClient, FlagSYN, 60, now)
					}
				case f.State() >= StateClosing && i%2 == 0:
					tab.Remove(f)
				default:
					if g := tab.LookupBackend(f.ReverseKey()); g != nil && g != f {
						t.Errorf("reverse key of %v leads to %v", f, g)
					}
					s := []step{bSYNACK, cACK, cFIN, bFIN, cRST, bRST, cData}[(i+w)%7]
					tab.Observe(f, s.d, s.flags, 100, now)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sweeper
	checkInvariants(t, tab)
	s := tab.Stats()
	if got := s.Created - s.Expired - s.Removed; got != uint64(tab.Len()) {
		t.Errorf("Created-Expired-Removed = %d, Len = %d", got, tab.Len())
	}
	t.Logf("stats %+v, len %d", s, tab.Len())
}

func TestNATPortsPerBackend(t *testing.T) {
	const first, last = 3000, 3099
	tab := newTable(t, Config{NATPortFirst: first, NATPortLast: last})
	for b := range 2 {
		for i := range last - first + 1 {
			f := mustCreate(t, tab, key(b*1000+i), b, 0)
			// A fresh table hands ports out in order, and the same port is
			// in use toward both backends at once.
			if f.NATPort != uint16(first+i) {
				t.Fatalf("backend %d flow %d: NAT port %d, want %d", b, i, f.NATPort, first+i)
			}
		}
	}
	for b := range 2 {
		if got := tab.LookupBackend(BackendKey{Backend: back[b], NATPort: first}); got == nil || got.Backend != b {
			t.Errorf("LookupBackend(backend %d, port %d) = %v", b, first, got)
		}
	}
	checkInvariants(t, tab) // includes uniqueness per backend
}

func TestNATPortsExhausted(t *testing.T) {
	tab := newTable(t, Config{NATPortFirst: 3000, NATPortLast: 3001})
	a := mustCreate(t, tab, key(1), 0, 0)
	mustCreate(t, tab, key(2), 0, 0)
	for i := range 2 {
		f, err := tab.Create(key(3), 0, mac, 0, SYN{})
		if !errors.Is(err, ErrNATPortsExhausted) || f != nil {
			t.Fatalf("Create with no free port = %v, %v; want ErrNATPortsExhausted", f, err)
		}
		if s := tab.Stats(); s.NATExhausted != uint64(i+1) || s.Created != 2 {
			t.Errorf("Stats = %+v, want NATExhausted %d, Created 2", s, i+1)
		}
	}
	if tab.LookupClient(key(3)) != nil || tab.Len() != 2 || tab.Live(0) != 2 {
		t.Errorf("a failed Create left traces: Len %d, Live %d", tab.Len(), tab.Live(0))
	}
	mustCreate(t, tab, key(3), 1, 0) // other backend, own ports
	tab.Remove(a)
	if f := mustCreate(t, tab, key(3+1), 0, 0); f.NATPort != a.NATPort {
		t.Errorf("NAT port %d, want the freed %d", f.NATPort, a.NATPort)
	}
	checkInvariants(t, tab)
}

func TestNATPortQuiet(t *testing.T) {
	var clock int64
	tab := newTable(t, Config{
		NATPortFirst: 1000,
		NATPortLast:  1003,
		PortQuiet:    60 * time.Second,
		Clock:        func() int64 { return clock },
	})
	create := func(i int, now int64, wantPort uint16, wantQuiet uint64) *Flow {
		t.Helper()
		f := mustCreate(t, tab, key(i), 0, now)
		if f.NATPort != wantPort {
			t.Errorf("flow %d: NAT port %d, want %d", i, f.NATPort, wantPort)
		}
		if got := tab.Stats().NATQuietReused; got != wantQuiet {
			t.Errorf("flow %d: NATQuietReused = %d, want %d", i, got, wantQuiet)
		}
		return f
	}
	f0 := create(0, 0, 1000, 0)
	f1 := create(1, 0, 1001, 0)
	clock = 10 * sec
	tab.Remove(f0) // 1000 enters quiet until 70s
	// Never-used ports first, although 1000 is free.
	f2 := create(2, 11*sec, 1002, 0)
	f3 := create(3, 11*sec, 1003, 0)
	// Nothing else is free: 1000 is handed out inside its quiet time.
	f4 := create(4, 12*sec, 1000, 1)
	// Past quiet, ports come back least recently freed first, whether Remove
	// or Sweep freed them (Sweep at its now, 16s here).
	clock = 15 * sec
	tab.Remove(f3)
	tab.Observe(f1, FromClient, FlagRST, 40, 5*sec) // Closed, deadline 5s + 10s
	tab.Sweep(16 * sec)
	clock = 17 * sec
	tab.Remove(f2)
	create(5, 17*sec, 1003, 2) // all three in quiet: the oldest, counted
	create(6, 200*sec, 1001, 2)
	create(7, 200*sec, 1002, 2)
	if _, err := tab.Create(key(8), 0, mac, 200*sec, SYN{}); !errors.Is(err, ErrNATPortsExhausted) {
		t.Errorf("Create with all 4 ports in use: %v, want ErrNATPortsExhausted", err)
	}
	_ = f4
	checkInvariants(t, tab)
}

func TestMaxFlows(t *testing.T) {
	tab := newTable(t, Config{MaxFlows: 3})
	var fs []*Flow
	for i := range 3 {
		fs = append(fs, mustCreate(t, tab, key(i), 0, 0))
	}
	free := tab.FreeNATPorts(0)
	if f, err := tab.Create(key(3), 0, mac, 0, SYN{}); !errors.Is(err, ErrTableFull) || f != nil {
		t.Fatalf("Create beyond MaxFlows = %v, %v; want ErrTableFull", f, err)
	}
	if s := tab.Stats(); s.RefusedFull != 1 || tab.Len() != 3 || tab.FreeNATPorts(0) != free {
		t.Errorf("after refusal: Stats %+v, Len %d, free ports %d (was %d)", s, tab.Len(), tab.FreeNATPorts(0), free)
	}
	// An existing key still finds its flow when the table is full.
	if f, err := tab.Create(key(1), 0, mac, 0, SYN{}); err != nil || f != fs[1] {
		t.Errorf("Create of an existing key in a full table = %v, %v", f, err)
	}
	tab.Remove(fs[0])
	mustCreate(t, tab, key(3), 0, 0)
	checkInvariants(t, tab)
}

func TestMaxFlowsConcurrent(t *testing.T) {
	const maxFlows = 100
	tab := newTable(t, Config{MaxFlows: maxFlows})
	var ok, full atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				_, err := tab.Create(key(w*1000+i), i%2, mac, 0, SYN{})
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrTableFull):
					full.Add(1)
				default:
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if ok.Load() != maxFlows || tab.Len() != maxFlows || tab.Stats().RefusedFull != uint64(full.Load()) {
		t.Errorf("created %d, Len %d, refused %d (stats %d); want exactly %d in", ok.Load(), tab.Len(), full.Load(), tab.Stats().RefusedFull, maxFlows)
	}
	checkInvariants(t, tab)
}

func TestRemove(t *testing.T) {
	tab := newTable(t, Config{})
	f := mustCreate(t, tab, key(1), 0, 0)
	rk := f.ReverseKey()
	tab.Remove(f)
	if tab.LookupClient(key(1)) != nil || tab.LookupBackend(rk) != nil {
		t.Error("removed flow still found")
	}
	g := mustCreate(t, tab, key(1), 0, 0) // same key, new flow
	if g == f || g.NATPort == f.NATPort {
		t.Errorf("re-created flow reuses the old flow or its quiet port")
	}
	tab.Remove(f) // stale pointer: must not remove g
	if tab.LookupClient(key(1)) != g {
		t.Error("Remove of a stale flow removed its successor")
	}
	if s := tab.Stats(); s.Removed != 1 || s.Created != 2 {
		t.Errorf("Stats = %+v, want Removed 1, Created 2", s)
	}
	checkInvariants(t, tab)
}

func TestSweepManyShards(t *testing.T) {
	tab := newTable(t, Config{Shards: 8, HalfOpenTimeout: time.Second})
	const n = 3000 // > sweepBatch per shard
	for i := range n {
		f := mustCreate(t, tab, key(i), i%2, 0)
		if i%3 == 0 {
			tab.Observe(f, FromClient, FlagSYN, 60, 2*sec)
		}
	}
	if got := tab.Sweep(sec + 1); got != n-n/3 {
		t.Errorf("Sweep removed %d, want %d", got, n-n/3)
	}
	checkInvariants(t, tab)
	if got := tab.Sweep(3*sec + 1); got != n/3 {
		t.Errorf("second Sweep removed %d, want %d", got, n/3)
	}
	if tab.Len() != 0 || tab.Stats().Expired != n {
		t.Errorf("Len %d, Expired %d", tab.Len(), tab.Stats().Expired)
	}
	checkInvariants(t, tab)
}

// TestSweepWhileChanging sweeps one big shard, so the scan yields its lock
// many times, while another goroutine inserts and removes flows in it. Every
// expired flow that was not removed meanwhile must still be swept, exactly
// once.
func TestSweepWhileChanging(t *testing.T) {
	tab := newTable(t, Config{Shards: 1, HalfOpenTimeout: time.Second, Backends: manyBackends(4)})
	const old = 20 * sweepYield
	fill(t, tab, 0, old, 0)
	stale := make([]*Flow, 0, old/4)
	for i := 0; i < old; i += 4 {
		stale = append(stale, tab.LookupClient(key(i)))
	}
	var wg sync.WaitGroup
	var swept int
	wg.Go(func() { swept = tab.Sweep(5 * sec) })
	wg.Go(func() {
		for i, f := range stale {
			tab.Remove(f)
			mustCreate(t, tab, key(old+i), i%4, 10*sec)
		}
	})
	wg.Wait()
	if got := swept + int(tab.Stats().Removed); got != old {
		t.Errorf("swept %d + removed %d = %d, want %d", swept, tab.Stats().Removed, got, old)
	}
	if tab.Len() != len(stale) {
		t.Errorf("Len %d, want the %d fresh flows", tab.Len(), len(stale))
	}
	for i := range stale {
		if tab.LookupClient(key(old+i)) == nil {
			t.Fatalf("fresh flow %d swept", i)
		}
	}
	checkInvariants(t, tab)
}

func TestZeroAllocs(t *testing.T) {
	tab := newTable(t, Config{})
	f := mustCreate(t, tab, key(1), 0, 0)
	rk := f.ReverseKey()
	now := int64(0)
	for name, fn := range map[string]func(){
		"LookupClient":        func() { _ = tab.LookupClient(key(1)) },
		"LookupClient/absent": func() { _ = tab.LookupClient(key(2)) },
		"LookupBackend":       func() { _ = tab.LookupBackend(rk) },
		"Observe": func() {
			now++
			tab.Observe(f, FromBackend, FlagSYN|FlagACK, 60, now)
			tab.Observe(f, FromClient, FlagACK, 1500, now)
		},
	} {
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s: %v allocs/op, want 0", name, n)
		}
	}
}

func TestConfig(t *testing.T) {
	one := back[:1]
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means valid
	}{
		{"defaults", Config{Backends: one}, ""},
		{"no backends", Config{}, "Backends is empty"},
		{"zero IP", Config{Backends: []Endpoint{{Port: 80}}}, "non-zero IP and port"},
		{"zero port", Config{Backends: []Endpoint{{IP: [4]byte{10, 0, 0, 1}}}}, "non-zero IP and port"},
		{"duplicate backend", Config{Backends: []Endpoint{back[0], back[1], back[0]}}, "[0] and [2] are both 10.1.0.1:8080"},
		{"only first port", Config{Backends: one, NATPortFirst: 1000}, "set both ends"},
		{"only last port", Config{Backends: one, NATPortLast: 1000}, "set both ends"},
		{"first > last", Config{Backends: one, NATPortFirst: 2000, NATPortLast: 1999}, "must not exceed"},
		{"single port", Config{Backends: one, NATPortFirst: 2000, NATPortLast: 2000}, ""},
		{"negative quiet", Config{Backends: one, PortQuiet: -1}, "PortQuiet"},
		{"negative half-open", Config{Backends: one, HalfOpenTimeout: -1}, "HalfOpenTimeout"},
		{"negative established", Config{Backends: one, EstablishedTimeout: -1}, "EstablishedTimeout"},
		{"negative closing", Config{Backends: one, ClosingTimeout: -1}, "ClosingTimeout"},
		{"negative max flows", Config{Backends: one, MaxFlows: -1}, "MaxFlows"},
		{"negative shards", Config{Backends: one, Shards: -1}, "Shards"},
		{"too many shards", Config{Backends: one, Shards: maxShards + 1}, "Shards"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := New(tt.cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("New = %v, want an error containing %q", err, tt.wantErr)
			case tt.wantErr != "" && tab != nil:
				t.Fatalf("New returned a table with error %v", err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	tab, err := New(Config{Backends: back})
	if err != nil {
		t.Fatal(err)
	}
	if got := []int64{tab.quietNs, tab.halfOpenNs, tab.establishedNs, tab.closingNs, tab.maxFlows}; got[0] != int64(60*time.Second) ||
		got[1] != int64(30*time.Second) || got[2] != int64(time.Hour) || got[3] != int64(10*time.Second) || got[4] != 1_000_000 {
		t.Errorf("defaults = %v", got)
	}
	if len(tab.fwd) != 64 || len(tab.rev) != 64 {
		t.Errorf("%d/%d shards, want 64", len(tab.fwd), len(tab.rev))
	}
	if p := tab.ports[1]; p.port[0] != 40000 || p.port[len(p.port)-1] != 59999 || tab.FreeNATPorts(1) != 20000 {
		t.Errorf("default NAT port range %d-%d, %d free", p.port[0], p.port[len(p.port)-1], tab.FreeNATPorts(1))
	}
	a := tab.Now()
	b := tab.Now()
	if a < 0 || b < a {
		t.Errorf("default clock went %d then %d", a, b)
	}
	for in, want := range map[int]int{1: 1, 2: 2, 3: 4, 64: 64, 65: 128} {
		if tab := newTable(t, Config{Shards: in}); len(tab.fwd) != want || tab.shardMask != uint64(want-1) {
			t.Errorf("Shards %d: got %d shards, want %d", in, len(tab.fwd), want)
		}
	}
}

func TestStrings(t *testing.T) {
	for s, want := range map[State]string{
		StateSynSent: "SynSent", StateEstablished: "Established", StateFinWait: "FinWait",
		StateClosing: "Closing", StateClosed: "Closed", 9: "State(9)",
	} {
		if s.String() != want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(s), s.String(), want)
		}
	}
	if got := back[0].String(); got != "10.1.0.1:8080" {
		t.Errorf("Endpoint.String() = %q", got)
	}
	if FromClient.String() != "client" || FromBackend.String() != "backend" || Direction(7).String() != "Direction(7)" {
		t.Error("Direction.String")
	}
}

func TestTimestampOffsetAcrossFlows(t *testing.T) {
	tab := newTable(t, Config{NATPortFirst: 5000, NATPortLast: 5000}) // one port: every flow reuses it
	// A first flow: no history on the port, no offset.
	f1, err := tab.Create(key(1), 0, mac, 0, SYN{TSval: 1_000_000, HasTS: true})
	if err != nil || f1.TSOffset != 0 {
		t.Fatalf("first flow: offset %d, %v", f1.TSOffset, err)
	}
	f1.NoteTSval(1_000_500)
	tab.Remove(f1)

	// An unrelated client whose clock is behind: its SYN must land one
	// above what the backend last saw on this port.
	f2, err := tab.Create(key(2), 0, mac, 1, SYN{TSval: 400, HasTS: true})
	if err != nil || 400+f2.TSOffset != 1_000_501 {
		t.Fatalf("second flow: offset %d puts the SYN at %d, want 1000501 (%v)", f2.TSOffset, 400+f2.TSOffset, err)
	}
	f2.NoteTSval(400 + f2.TSOffset + 10)
	tab.Remove(f2)

	// A client already ahead keeps its own values.
	f3, _ := tab.Create(key(3), 0, mac, 2, SYN{TSval: 2_000_000, HasTS: true})
	if f3.TSOffset != 0 {
		t.Fatalf("a newer SYN got offset %d", f3.TSOffset)
	}
	f3.NoteTSval(2_000_000)
	tab.Remove(f3)

	// Wrapping: 32-bit timestamps compare modulo 2^32 (RFC 7323), so a
	// value just past zero is newer than one just below 2^32.
	f4, _ := tab.Create(key(4), 0, mac, 3, SYN{TSval: 0xffff_fff0, HasTS: true})
	if f4.TSOffset == 0 {
		t.Fatal("an older (wrapped-behind) SYN got no offset")
	}
	f4.NoteTSval(0xffff_fff0 + f4.TSOffset)
	tab.Remove(f4)
	f5, _ := tab.Create(key(5), 0, mac, 4, SYN{TSval: 0xffff_fff0 + f4.TSOffset + 5, HasTS: true})
	if f5.TSOffset != 0 {
		t.Fatalf("a newer SYN across the wrap got offset %d", f5.TSOffset)
	}
	tab.Remove(f5)

	// A flow without timestamps leaves no timestamp history: the next one is free.
	f6, _ := tab.Create(key(6), 0, mac, 5, SYN{})
	tab.Remove(f6)
	if f7, _ := tab.Create(key(7), 0, mac, 6, SYN{TSval: 1, HasTS: true}); f7.TSOffset != 0 {
		t.Fatalf("offset %d after a flow without timestamps", f7.TSOffset)
	}
}

func TestSeqOffsetAcrossFlows(t *testing.T) {
	tab := newTable(t, Config{NATPortFirst: 5000, NATPortLast: 5000}) // one port: every flow reuses it
	// reuse creates a flow for SYN s on the port, checks where its SYN
	// lands toward the backend, records end as the end of its last
	// segments (in order) and frees the port again.
	n := 0
	reuse := func(s SYN, wantISN uint32, ends ...uint32) *Flow {
		t.Helper()
		n++
		f, err := tab.Create(key(n), 0, mac, int64(n), s)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Seq + f.SeqOffset; got != wantISN {
			t.Fatalf("flow %d: SYN %d lands at %d toward the backend, want %d", n, s.Seq, got, wantISN)
		}
		for _, e := range ends {
			f.NoteSeqEnd(e)
		}
		tab.Remove(f)
		return f
	}
	// No history on the port: no offset.
	reuse(SYN{Seq: 1000}, 1000, 5000)
	// An unrelated client whose ISN is behind the backend's TIME_WAIT:
	// its SYN lands seqGap beyond the end of the old flow.
	f := reuse(SYN{Seq: 3000}, 5000+seqGap, 5000+seqGap+100)
	if f.SeqOffset != 5000+seqGap-3000 {
		t.Fatalf("offset %d", f.SeqOffset)
	}
	// A client already beyond keeps its own numbers. Its last segment is
	// a retransmission, which must not move the recorded end back...
	reuse(SYN{Seq: 0x7000_0000}, 0x7000_0000, 0xd000_0000, 0xffff_fff0, 0xffff_ff00)
	// ...so a SYN between the two is shifted, past 2^32 - 1 (modulo 2^32).
	reuse(SYN{Seq: 0xffff_ff80}, 0xfff0, 0xfffa) // 0xffff_fff0 + seqGap mod 2^32
	// Beyond across the wrap: unchanged.
	reuse(SYN{Seq: 0x0001_0000}, 0x0001_0000, 0x0001_0100)
	// A SYN with timestamps after a flow without: the backend's TIME_WAIT
	// has no timestamp to compare, so the sequence number must do.
	reuse(SYN{Seq: 10, TSval: 7, HasTS: true}, 0x0001_0100+seqGap, 0x0001_0100+seqGap+200)
	// Timestamps on both flows: PAWS decides, the sequence number stays.
	f = reuse(SYN{Seq: 150, TSval: 8, HasTS: true}, 150, 160)
	if f.TSOffset != 0 {
		t.Fatalf("TSOffset %d for a newer timestamp", f.TSOffset)
	}
	// No timestamp on a SYN after a flow with them: the sequence number
	// must do again.
	reuse(SYN{Seq: 150}, 160+seqGap, 170+seqGap)
}
