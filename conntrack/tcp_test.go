package conntrack

import (
	"testing"
	"time"
)

// conn drives a flow through TCP segments as a client and a backend would
// send them, keeping both sides' next sequence numbers. Numbers are what
// each side puts on the wire; the flow's offsets translate between them as
// the engine would (the client's numbers plus SeqOff reach the backend,
// the backend's plus BSeqOff reach the client).
type conn struct {
	t        *testing.T
	tab      *Table
	f        *Flow
	cseq     uint32 // the client's next sequence number
	bseq     uint32 // the backend's next sequence number
	now      int64
	cwin     uint16
	bwin     uint16
	cscale   int8
	bscale   int8
	lastVerd Verdict
}

const sec = int64(time.Second)

var (
	vip   = Endpoint{IP: [4]byte{198, 18, 0, 2}, Port: 20000}
	mac   = [6]byte{0x02, 0, 0, 0, 0, 1}
	back0 = Endpoint{IP: [4]byte{198, 18, 0, 11}, Port: 8090}
	back1 = Endpoint{IP: [4]byte{198, 18, 0, 12}, Port: 8090}
)

// key returns a distinct client key for each i (up to 2^32).
func key(i int) ClientKey {
	return ClientKey{
		Client: Endpoint{IP: [4]byte{100, byte(i >> 24), byte(i >> 16), byte(i >> 8)}, Port: 1024 + uint16(i&0xff)},
		VIP:    vip,
	}
}

// newTable returns a one-worker table with the given overrides and a
// generous Shared; the clocks are frozen unless cfg sets them.
func newTable(t testing.TB, cfg Config) *Table {
	t.Helper()
	if cfg.Shared == nil {
		cfg.Shared, _ = NewShared(1_000_000, 0)
	}
	if cfg.Clock == nil {
		cfg.Clock = func() int64 { return 0 }
	}
	if cfg.WallClock == nil {
		cfg.WallClock = func() int64 { return 1_700_000_000 * sec }
	}
	tab, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tab
}

// open creates a flow for key k toward back0 with a client SYN of the
// given sequence number and window scale 7, both sides with SACK.
func open(t *testing.T, tab *Table, k ClientKey, isn uint32) *conn {
	t.Helper()
	syn := SYN{Seq: isn, TSval: 5000, HasTS: true, MSS: 1460, WScale: 7, SACKPerm: true, Window: 64240}
	f, err := tab.Create(k, 0, back0, mac, 2, 0, syn, false)
	if err != nil {
		t.Fatal(err)
	}
	return &conn{t: t, tab: tab, f: f, cseq: isn + 1, bseq: 900_000, cwin: 64240, bwin: 65160, cscale: 7, bscale: 7}
}

// client sends a segment from the client: ack is the backend's next
// sequence number as the client knows it.
func (c *conn) client(flags uint8, n uint32) Verdict {
	s := Segment{Flags: flags, Seq: c.cseq, Ack: c.bseq + c.f.BSeqOff, Win: c.cwin >> uint(max(c.cscale, 0)), Len: n, WScale: -1}
	v := c.tab.Track(c.f, FromClient, &s, c.now)
	if v.Action == Forward && int32(s.End()-c.cseq) > 0 {
		c.cseq = s.End()
	}
	c.lastVerd = v
	return v
}

// backend sends a segment from the backend.
func (c *conn) backend(flags uint8, n uint32) Verdict {
	s := Segment{Flags: flags, Seq: c.bseq, Ack: c.cseq + c.f.SeqOff, Win: c.bwin >> uint(max(c.bscale, 0)), Len: n, WScale: -1}
	if flags&FlagSYN != 0 {
		s.Win, s.WScale, s.SACKPerm = c.bwin, c.bscale, true
	}
	v := c.tab.Track(c.f, FromBackend, &s, c.now)
	if v.Action == Forward && int32(s.End()-c.bseq) > 0 {
		c.bseq = s.End()
	}
	c.lastVerd = v
	return v
}

// establish runs the handshake.
func (c *conn) establish() {
	c.t.Helper()
	if v := c.backend(FlagSYN|FlagACK, 0); v.Action != Forward || c.f.State() != StateSynRecv {
		c.t.Fatalf("SYN-ACK: %+v, state %v", v, c.f.State())
	}
	if v := c.client(FlagACK, 0); v.Action != Forward || c.f.State() != StateEstablished {
		c.t.Fatalf("handshake ACK: %+v, state %v", v, c.f.State())
	}
}

func TestHandshakeDataAndClose(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	if tab.HalfOpen() != 1 || tab.Live(0) != 1 {
		t.Fatalf("after the SYN: half-open %d, live %d", tab.HalfOpen(), tab.Live(0))
	}
	c.establish()
	if tab.HalfOpen() != 0 {
		t.Fatalf("established but half-open count %d", tab.HalfOpen())
	}
	for i := 0; i < 10; i++ {
		if v := c.client(FlagACK|FlagPSH, 1000); v.Action != Forward {
			t.Fatalf("client data %d: %+v", i, v)
		}
		if v := c.backend(FlagACK|FlagPSH, 30000); v.Action != Forward {
			t.Fatalf("backend data %d: %+v", i, v)
		}
	}
	steps := []struct {
		from  Direction
		flags uint8
		want  State
	}{
		{FromBackend, FlagFIN | FlagACK, StateFinWait},
		{FromClient, FlagACK, StateCloseWait},
		{FromClient, FlagFIN | FlagACK, StateLastAck},
		{FromBackend, FlagACK, StateTimeWait},
	}
	for _, s := range steps {
		var v Verdict
		if s.from == FromClient {
			v = c.client(s.flags, 0)
		} else {
			v = c.backend(s.flags, 0)
		}
		if v.Action != Forward || c.f.State() != s.want {
			t.Fatalf("%v %#x: %+v, state %v, want %v", s.from, s.flags, v, c.f.State(), s.want)
		}
	}
	if tab.Live(0) != 0 {
		t.Fatalf("a closed flow still counts as live: %d", tab.Live(0))
	}
}

func TestEstablishedOnlyOnExactACK(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.backend(FlagSYN|FlagACK, 0)
	// A spoofed client that never saw the SYN-ACK guesses an ACK number
	// within the kernel's 66,000-wide bound: it must not establish.
	s := Segment{Flags: FlagACK, Seq: c.cseq, Ack: c.bseq - 1000, Win: 500}
	if v := tab.Track(c.f, FromClient, &s, 0); v.Action != Drop || c.f.State() != StateSynRecv {
		t.Fatalf("guessed ACK: %+v, state %v; want dropped, still SynRecv", v, c.f.State())
	}
	if tab.HalfOpen() != 1 {
		t.Fatalf("half-open %d, want 1", tab.HalfOpen())
	}
	c.client(FlagACK, 0)
	if c.f.State() != StateEstablished {
		t.Fatalf("exact ACK: state %v", c.f.State())
	}
}

func TestSYNACKMustAnswerTheSYN(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	s := Segment{Flags: FlagSYN | FlagACK, Seq: 5, Ack: c.cseq + c.f.SeqOff + 99, Win: 1000, WScale: 7}
	if v := tab.Track(c.f, FromBackend, &s, 0); v.Action != Drop || c.f.State() != StateSynSent {
		t.Fatalf("SYN-ACK for another SYN: %+v, %v", v, c.f.State())
	}
}

func TestRSTRFC5961(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	c.backend(FlagACK|FlagPSH, 500)
	c.client(FlagACK, 0)
	// The backend expects the client's next byte, cseq; its window is
	// bwin (65160) from there.
	cases := []struct {
		name string
		seq  uint32
		want Action
	}{
		{"far outside", c.cseq + 1<<30, Drop},
		{"behind", c.cseq - 100_000, Drop},
		{"in window, not exact", c.cseq + 10_000, Challenge},
		{"just past the window", c.cseq + 70_000, Drop},
	}
	for _, tc := range cases {
		s := Segment{Flags: FlagRST, Seq: tc.seq}
		v := tab.Track(c.f, FromClient, &s, 0)
		if v.Action != tc.want || c.f.State() != StateEstablished {
			t.Errorf("%s: %+v, state %v; want %v and still established", tc.name, v, c.f.State(), tc.want)
		}
	}
	s := Segment{Flags: FlagRST, Seq: c.cseq}
	if v := tab.Track(c.f, FromClient, &s, 0); v.Action != Forward || c.f.State() != StateClose {
		t.Fatalf("exact RST: %+v, state %v", v, c.f.State())
	}
}

func TestRSTEndingDataTrain(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	c.backend(FlagACK|FlagPSH, 500) // not yet acknowledged by the client
	s := Segment{Flags: FlagRST | FlagACK, Seq: c.bseq, Ack: c.cseq + c.f.SeqOff}
	if v := tab.Track(c.f, FromBackend, &s, 0); v.Action != Forward || c.f.State() != StateClose {
		t.Fatalf("RST at the sender's next sequence number: %+v, %v", v, c.f.State())
	}
}

func TestRSTRefusingSYN(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	bad := Segment{Flags: FlagRST | FlagACK, Seq: 0, Ack: c.cseq + c.f.SeqOff + 5}
	if v := tab.Track(c.f, FromBackend, &bad, 0); v.Action == Forward || c.f.State() != StateSynSent {
		t.Fatalf("RST not acknowledging the SYN: %+v, %v", v, c.f.State())
	}
	good := Segment{Flags: FlagRST | FlagACK, Seq: 0, Ack: c.cseq + c.f.SeqOff}
	if v := tab.Track(c.f, FromBackend, &good, 0); v.Action != Forward || c.f.State() != StateClose {
		t.Fatalf("the backend refusing the SYN: %+v, %v", v, c.f.State())
	}
	if tab.HalfOpen() != 0 || tab.Live(0) != 0 {
		t.Fatalf("half-open %d live %d after the refusal", tab.HalfOpen(), tab.Live(0))
	}
}

func TestSYNOnEstablishedIsChallenged(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	s := Segment{Flags: FlagSYN, Seq: 77, Win: 1000, WScale: 7}
	v := tab.Track(c.f, FromClient, &s, 0)
	if v.Action != Challenge || v.Reason != ReasonSYNSynced || c.f.State() != StateEstablished {
		t.Fatalf("SYN on an established flow: %+v, %v", v, c.f.State())
	}
	// The challenge ACK tells the client what the backend expects: an
	// endpoint that lost its state answers with a RST of exactly that
	// number, which closes the flow.
	seq, ack, _ := c.f.ChallengeACK(FromClient)
	if seq != c.bseq+c.f.BSeqOff || ack != c.cseq {
		t.Fatalf("challenge ACK seq %d ack %d, want %d %d", seq, ack, c.bseq, c.cseq)
	}
	rst := Segment{Flags: FlagRST, Seq: ack}
	if v := tab.Track(c.f, FromClient, &rst, 0); v.Action != Forward || c.f.State() != StateClose {
		t.Fatalf("RST answering the challenge: %+v %v", v, c.f.State())
	}
	again := Segment{Flags: FlagSYN, Seq: 77, Win: 1000, WScale: 7}
	if v := tab.Track(c.f, FromClient, &again, 0); v.Action != Reopen {
		t.Fatalf("SYN on a closed flow: %+v, want Reopen", v)
	}
}

func TestWindowChecks(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	// Beyond what the backend's window allows: the backend advertised
	// 65160 scaled by 7... as raw 509<<7.
	beyond := Segment{Flags: FlagACK, Seq: c.cseq + 10_000_000, Ack: c.bseq + c.f.BSeqOff, Win: 500, Len: 100}
	if v := tab.Track(c.f, FromClient, &beyond, 0); v.Action != Drop || v.Reason != ReasonWindow {
		t.Fatalf("data beyond the window: %+v", v)
	}
	// Acknowledging backend data that was never sent.
	ahead := Segment{Flags: FlagACK, Seq: c.cseq, Ack: c.bseq + c.f.BSeqOff + 5000, Win: 500}
	if v := tab.Track(c.f, FromClient, &ahead, 0); v.Action != Drop {
		t.Fatalf("ACK of unsent data: %+v", v)
	}
	// A retransmission of old, acknowledged data passes without moving
	// the state.
	c.client(FlagACK|FlagPSH, 1000)
	c.backend(FlagACK, 0)
	old := Segment{Flags: FlagACK | FlagPSH, Seq: c.cseq - 1000, Ack: c.bseq + c.f.BSeqOff, Win: 500, Len: 1000}
	if v := tab.Track(c.f, FromClient, &old, 0); v.Action != Forward {
		t.Fatalf("retransmission: %+v", v)
	}
	// Within the scaled window: the backend's raw window 509 << 7 is
	// about 65 KB, so 60 KB ahead is fine, and 200 KB not.
	ok := Segment{Flags: FlagACK | FlagPSH, Seq: c.cseq + 59_000, Ack: c.bseq + c.f.BSeqOff, Win: 500, Len: 1000}
	if v := tab.Track(c.f, FromClient, &ok, 0); v.Action != Forward {
		t.Fatalf("data inside the scaled window: %+v", v)
	}
	far := Segment{Flags: FlagACK | FlagPSH, Seq: c.cseq + 200_000, Ack: c.bseq + c.f.BSeqOff, Win: 500, Len: 1000}
	if v := tab.Track(c.f, FromClient, &far, 0); v.Action != Drop {
		t.Fatalf("data far outside the scaled window: %+v", v)
	}
}

func TestBadFlags(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	for _, fl := range []uint8{0, FlagSYN | FlagFIN, FlagSYN | FlagRST, FlagFIN, FlagFIN | FlagSYN | FlagPSH | FlagURG} {
		s := Segment{Flags: fl, Seq: c.cseq}
		if v := tab.Track(c.f, FromClient, &s, 0); v.Action != Drop || v.Reason != ReasonBadFlags {
			t.Errorf("flags %#x: %+v, want dropped as bad_flags", fl, v)
		}
	}
	if !ValidFlags(FlagACK|FlagPSH|FlagECE|FlagCWR) || !ValidFlags(FlagSYN|FlagECE|FlagCWR) {
		t.Error("ECN and PSH bits must not make a segment invalid")
	}
}

func TestHandshakeStateRules(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	// Data or a FIN from the client before the SYN-ACK: invalid.
	if v := c.client(FlagACK, 10); v.Action != Drop || v.Reason != ReasonState {
		t.Fatalf("data in SynSent: %+v", v)
	}
	if v := c.client(FlagFIN|FlagACK, 0); v.Action != Drop {
		t.Fatalf("FIN in SynSent: %+v", v)
	}
	// The client's retransmitted SYN passes.
	s := Segment{Flags: FlagSYN, Seq: 1000, Win: 64240, WScale: 7, SACKPerm: true}
	if v := tab.Track(c.f, FromClient, &s, 0); v.Action != Forward || c.f.State() != StateSynSent {
		t.Fatalf("retransmitted SYN: %+v %v", v, c.f.State())
	}
	// An ACK from an older connection on the NAT port (a TIME_WAIT) is
	// let through; the client's RST answering it closes the handshake.
	stale := Segment{Flags: FlagACK, Seq: 123456, Ack: 777 + c.f.SeqOff, Win: 300}
	if v := tab.Track(c.f, FromBackend, &stale, 0); v.Action != Forward || c.f.State() != StateSynSent {
		t.Fatalf("stale ACK: %+v %v", v, c.f.State())
	}
	rst := Segment{Flags: FlagRST, Seq: 777}
	if v := tab.Track(c.f, FromClient, &rst, 0); v.Action != Forward || c.f.State() != StateClose {
		t.Fatalf("RST answering the stale ACK: %+v %v", v, c.f.State())
	}
}

func TestTrackAllocatesNothing(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	s := Segment{Flags: FlagACK, Seq: c.cseq, Ack: c.bseq + c.f.BSeqOff, Win: 500}
	if n := testing.AllocsPerRun(1000, func() { tab.Track(c.f, FromClient, &s, 0) }); n != 0 {
		t.Fatalf("Track allocates %v times per call", n)
	}
}

// TestTrackRefreshesLastSeen: a forwarded segment, from either side, is
// what keeps a flow from its idle timeout; a dropped one is not.
func TestTrackRefreshesLastSeen(t *testing.T) {
	tab := newTable(t, Config{})
	c := open(t, tab, key(1), 1000)
	c.establish()
	for i, from := range []Direction{FromClient, FromBackend} {
		c.now = int64(i+1) * 1e9
		var v Verdict
		if from == FromClient {
			v = c.client(FlagACK|FlagPSH, 100)
		} else {
			v = c.backend(FlagACK|FlagPSH, 100)
		}
		if v.Action != Forward || c.f.LastSeen != c.now {
			t.Fatalf("data from %v at %d: %+v, LastSeen %d", from, c.now, v, c.f.LastSeen)
		}
	}
	before := c.f.LastSeen
	c.now += 1e9
	s := Segment{Flags: FlagACK, Seq: c.cseq + 1<<30, Ack: c.bseq + c.f.BSeqOff, Win: 100, Len: 10, WScale: -1}
	if v := tab.Track(c.f, FromClient, &s, c.now); v.Action == Forward || c.f.LastSeen != before {
		t.Fatalf("a segment far outside the window: %+v, LastSeen %d, want %d", v, c.f.LastSeen, before)
	}
}
