package rawlb

import (
	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
	"github.com/rawlb/rawlb/syncookie"
)

// The handshakes rawlb holds itself.
//
// SYN cookies (a SYN-flood defence after nftables' synproxy,
// net/netfilter/nf_synproxy_core.c): with the defence on, a client's SYN
// creates no state. rawlb answers it with a SYN-ACK whose sequence number
// is a cookie (package syncookie) and whose window is 0, so the client
// sends no data yet. The client's ACK proves it receives at its address;
// only then rawlb creates the flow, in StateSynProxy, and sends the
// backend a SYN with the client's numbers and options (the MSS from the
// cookie; window scale and SACK from the timestamp the client echoed).
// The backend's SYN-ACK is answered by rawlb (an ACK), and the client gets
// the window it waited for (an ACK with the backend's window). From then on
// the flow's BSeqOff and BTSOff translate the backend's sequence numbers
// and timestamps into the ones the client knows from the cookie.
//
// TIME_WAIT assistance: a backend still holding an older connection on the
// flow's NAT port in TIME_WAIT refuses a SYN whose timestamp (or, without
// timestamps, sequence number) is not beyond the old one's, and answers it
// with an ACK (tcp_timewait_state_process in net/ipv4/tcp_minisocks.c).
// That ACK tells what the old connection saw: its TSecr is the TIME_WAIT's
// ts_recent, its acknowledgment number the old rcv_nxt. rawlb moves the
// flow's offsets beyond both and sends the SYN again at once, instead of
// letting the client see the stale ACK, reset, and retry after a second.
// This holds whoever used the port before (a crashed rawlb, the kernel's
// own NAT), and with net.ipv4.tcp_rfc1337=1, where the client's RST would
// not even clear the TIME_WAIT.

// defaultWScale is the window scale a SYN cookie SYN-ACK announces before
// any backend of the service was seen answering: Linux's for the default
// buffer sizes.
const defaultWScale = 7

// cookiesOn reports whether a new SYN gets a cookie: always in mode on,
// never in mode off, and in auto mode while the half-open flows over every
// worker exceed the threshold.
func (w *worker) cookiesOn() bool {
	switch *w.dp.cookieMode.Load() {
	case config.SYNCookiesOn:
		return true
	case config.SYNCookiesOff:
		return false
	}
	return w.dp.halfOpen() > w.dp.cookieThreshold.Load()
}

func tuple(f *packet.Frame) syncookie.Tuple {
	return syncookie.Tuple{Src: f.IP.Source(), Dst: f.IP.Destination(), SrcPort: f.TCP.SourcePort(), DstPort: f.TCP.DestinationPort()}
}

// tsNow is the millisecond clock of the timestamps rawlb sends itself.
func (w *worker) tsNow() uint32 { return uint32(w.wall.UnixMilli()) }

// sendCookie answers a SYN with a SYN cookie SYN-ACK.
func (w *worker) sendCookie(p *ring.Packet, f *packet.Frame, svc *Service) {
	o := f.TCP.SYNOptions()
	cookie, mss := w.dp.jar.Make(tuple(f), f.TCP.Seq(), o.MSS, w.wall)
	s := packet.Segment{
		SrcMAC: f.Eth.Destination(), DstMAC: f.Eth.Source(), Src: f.IP.Destination(), Dst: f.IP.Source(),
		SrcPort: f.TCP.DestinationPort(), DstPort: f.TCP.SourcePort(),
		Seq: cookie, Ack: f.TCP.Seq() + 1, Flags: packet.FlagSYN | packet.FlagACK,
		// Window 0: the client must not send data before the backend's
		// side exists; the ACK that completes the backend's handshake
		// opens it (as synproxy does).
		Window:  0,
		Options: packet.TCPOptions{MSS: mss, WScale: -1},
	}
	// Options the cookie cannot carry ride in the timestamp; a client
	// without timestamps goes without window scaling and SACK.
	if o.Timestamp {
		ws := -1
		if o.WScale >= 0 {
			ws = int(o.WScale)
			s.Options.WScale = int8(svc.wscale.Load())
		}
		s.Options.Timestamp = true
		s.Options.TSval = syncookie.EncodeTS(w.tsNow(), ws, o.SACKPermitted, false)
		s.Options.TSecr = o.TSval
		s.Options.SACKPermitted = o.SACKPermitted
	}
	if w.sendSegment(&s, p.Ifindex, genSYNACK) {
		w.drop(dropCookieSent)
		// The ACK of this cookie comes to this worker (same client
		// address and port); look for cookies in ACKs without a flow
		// while one can still be valid.
		w.cookieUntil = w.now + int64(2*syncookie.Period)
	}
}

// acceptCookie checks an ACK without a flow for a cookie of ours, and if it
// holds, creates the flow and opens the backend's side. It reports whether
// the ACK was a cookie's (valid or not: either way it is handled).
func (w *worker) acceptCookie(p *ring.Packet, f *packet.Frame, svc *Service, key conntrack.ClientKey) bool {
	tcp := f.TCP
	isn, cookie := tcp.Seq()-1, tcp.Ack()-1
	mss, ok := w.dp.jar.Check(tuple(f), isn, cookie, w.wall)
	if !ok {
		return false // not ours: a stray, answered with a RST
	}
	syn := conntrack.SYN{Seq: isn, MSS: mss, WScale: -1, Window: tcp.Window()}
	var cookieTS uint32
	if ts := tcp.TimestampOption(); ts >= 0 {
		syn.TSval, syn.HasTS = tcp.TSval(ts), true
		cookieTS = tcp.TSecr(ts)
		ws, sack, _ := syncookie.DecodeTS(cookieTS)
		syn.WScale, syn.SACKPerm = int8(ws), sack
	}
	be, why := w.pick(svc, key)
	if be == nil {
		w.refuse(p, f, svc, why)
		return true
	}
	fl, created := w.create(p, f, svc, be, key, syn, true)
	if !created {
		return true
	}
	fl.Cookie, fl.CookieTS = cookie, cookieTS
	if syn.WScale >= 0 {
		// What the SYN-ACK announced; the backend's own may differ.
		fl.WinShift = int8(svc.wscale.Load())
	}
	w.stats.cookiesOK.Add(1)
	w.drop(dropHandshake)
	w.sendBackendSYN(fl)
	return true
}

// sendBackendSYN sends fl's backend the client's SYN, as rawlb knows it,
// with the flow's offsets: for a SYN cookie flow, and again after a
// TIME_WAIT refused it.
func (w *worker) sendBackendSYN(fl *conntrack.Flow) {
	be, h := w.hopOf(fl)
	if h == nil {
		w.drop(dropNoNeighbor)
		return
	}
	syn := fl.Syn
	s := packet.Segment{
		SrcMAC: h.src, DstMAC: h.dst, Src: w.dp.natSrc, Dst: fl.BackendAddr.IP,
		SrcPort: fl.NATPort, DstPort: fl.BackendAddr.Port,
		Seq: syn.Seq + fl.SeqOff, Flags: packet.FlagSYN, Window: syn.Window,
		Options: packet.TCPOptions{MSS: syn.MSS, WScale: syn.WScale, SACKPermitted: syn.SACKPerm},
	}
	if syn.HasTS {
		s.Options.Timestamp = true
		s.Options.TSval = syn.TSval + fl.TSOff
	}
	fl.SentSYN(s.Options.TSval, syn.HasTS, s.Seq+1)
	// Not rate-limited: one per validated handshake, and the SYN is what
	// the client asked for, not an answer to a stranger.
	if buf := w.genBuf(); buf != nil {
		if n := packet.BuildSegment(buf[ring.VNetHdrLen:], &s); n > 0 {
			b := w.gen[w.ngen]
			w.ngen++
			w.out = append(w.out, ring.Out{Buf: b[:ring.VNetHdrLen+n], Ifindex: h.ifindex})
			be.stats[w.id].packets[dirToBackend].Add(1)
		}
	}
}

// proxyFromClient handles a client segment of a SYN cookie flow whose
// backend has not answered yet.
func (w *worker) proxyFromClient(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, seg *conntrack.Segment) {
	switch {
	case seg.Flags&packet.FlagRST != 0:
		if v := w.table.Track(fl, conntrack.FromClient, seg, w.now); v.Action == conntrack.Forward {
			// The client gave up; tell the backend, which may hold the
			// SYN rawlb sent.
			w.resetBackend(fl)
		}
		w.drop(dropHandshake)
	case seg.Flags&(packet.FlagSYN|packet.FlagFIN) == 0 && seg.Len == 0 && seg.Seq == fl.Syn.Seq+1:
		// The client's ACK again (a retransmission or keep-alive): the
		// SYN or the SYN-ACK was lost, so send the SYN again.
		w.drop(dropHandshake)
		w.sendBackendSYN(fl)
	default:
		w.drop(dropProxyPending)
	}
}

// proxyFromBackend handles a backend's segment for a SYN cookie flow whose
// SYN-ACK is awaited.
func (w *worker) proxyFromBackend(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, seg *conntrack.Segment) {
	wantAck := fl.Syn.Seq + 1 + fl.SeqOff
	switch {
	case seg.Flags&(packet.FlagSYN|packet.FlagACK) == packet.FlagSYN|packet.FlagACK && seg.Ack == wantAck:
		w.completeProxy(p, f, fl, seg)
	case seg.Flags&packet.FlagRST != 0 && seg.Flags&packet.FlagACK != 0 && seg.Ack == wantAck:
		// The backend refuses: the client, which believes it is
		// connected, gets a RST in the numbers it knows.
		w.table.Track(fl, conntrack.FromBackend, seg, w.now)
		w.drop(dropHandshake)
		s := packet.Segment{
			SrcMAC: fl.LocalMAC, DstMAC: fl.ClientMAC, Src: fl.Key.VIP.IP, Dst: fl.Key.Client.IP,
			SrcPort: fl.Key.VIP.Port, DstPort: fl.Key.Client.Port, Seq: fl.Cookie + 1, Ack: fl.Syn.Seq + 1,
			Flags: packet.FlagRST | packet.FlagACK,
		}
		w.sendSegment(&s, fl.ClientIf, genReset)
	case seg.Flags&(packet.FlagSYN|packet.FlagRST|packet.FlagACK) == packet.FlagACK && w.timeWaitAssist(p, f, fl, seg):
	default:
		w.drop(dropHandshake)
	}
}

// completeProxy takes the backend's SYN-ACK for a SYN cookie flow: the
// translation from the backend's numbers to the cookie's, an ACK to the
// backend, and to the client the window it waits for.
func (w *worker) completeProxy(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, seg *conntrack.Segment) {
	tcp := f.TCP
	o := tcp.SYNOptions()
	bISN := tcp.Seq()
	fl.BSeqOff = fl.Cookie - bISN
	var bTS uint32
	if o.Timestamp && fl.Syn.HasTS {
		bTS = o.TSval
		fl.BTSOff = fl.CookieTS - bTS
	}
	// The window scale rawlb announced for the backend (kept in WinShift
	// since the cookie was accepted) against the backend's own.
	announced := fl.WinShift
	fl.WinShift = 0
	if fl.Syn.WScale >= 0 && o.WScale >= 0 {
		fl.WinShift = o.WScale - announced
	}
	client := conntrack.Segment{Flags: packet.FlagSYN, Seq: fl.Syn.Seq, Win: fl.Syn.Window, WScale: fl.Syn.WScale, SACKPerm: fl.Syn.SACKPerm}
	w.table.CompleteProxy(fl, &client, seg, w.now)
	w.learnWScale(fl, f)
	w.drop(dropHandshake)

	_, h := w.hopOf(fl)
	if h != nil {
		ack := packet.Segment{
			SrcMAC: h.src, DstMAC: h.dst, Src: w.dp.natSrc, Dst: fl.BackendAddr.IP, SrcPort: fl.NATPort, DstPort: fl.BackendAddr.Port,
			Seq: fl.Syn.Seq + 1 + fl.SeqOff, Ack: bISN + 1, Flags: packet.FlagACK, Window: fl.Syn.Window,
		}
		if fl.Syn.HasTS && o.Timestamp {
			ack.Options = packet.TCPOptions{Timestamp: true, TSval: fl.Syn.TSval + fl.TSOff, TSecr: bTS}
		}
		w.sendControl(&ack, h.ifindex)
	}
	// The client's window update: the backend's window, in the scale the
	// SYN-ACK to the client announced.
	win := tcp.Window()
	if fl.Syn.WScale >= 0 && announced > 0 {
		win >>= uint(announced)
	}
	upd := packet.Segment{
		SrcMAC: fl.LocalMAC, DstMAC: fl.ClientMAC, Src: fl.Key.VIP.IP, Dst: fl.Key.Client.IP,
		SrcPort: fl.Key.VIP.Port, DstPort: fl.Key.Client.Port, Seq: fl.Cookie + 1, Ack: fl.Syn.Seq + 1,
		Flags: packet.FlagACK, Window: win,
	}
	if fl.Syn.HasTS && o.Timestamp {
		upd.Options = packet.TCPOptions{Timestamp: true, TSval: bTS + fl.BTSOff, TSecr: fl.Syn.TSval}
	}
	w.sendControl(&upd, fl.ClientIf)
}

// sendControl queues a segment that continues a handshake rawlb holds: not
// rate-limited, one per handshake.
func (w *worker) sendControl(s *packet.Segment, ifindex int32) {
	buf := w.genBuf()
	if buf == nil {
		return
	}
	if n := packet.BuildSegment(buf[ring.VNetHdrLen:], s); n > 0 {
		b := w.gen[w.ngen]
		w.ngen++
		w.out = append(w.out, ring.Out{Buf: b[:ring.VNetHdrLen+n], Ifindex: ifindex})
	}
}

// timeWaitAssist handles an ACK from the backend to a flow whose SYN is
// unanswered: if it is a TIME_WAIT's (it acknowledges something else than
// the SYN), move the offsets beyond what it remembers and send the SYN
// again. It reports whether it did; once per flow, so a backend that keeps
// refusing is left to the client's own retries.
func (w *worker) timeWaitAssist(p *ring.Packet, f *packet.Frame, fl *conntrack.Flow, seg *conntrack.Segment) bool {
	if fl.Assisted() || seg.Ack == fl.Syn.Seq+1+fl.SeqOff {
		return false
	}
	tcp := f.TCP
	// Beyond the old connection's receive point, with room for the data
	// it may still see (as Linux's own choice of an ISN it accepts in
	// TIME_WAIT does).
	fl.SeqOff = seg.Ack + 1<<16 - fl.Syn.Seq
	if ts := tcp.TimestampOption(); ts >= 0 && fl.Syn.HasTS {
		// TSecr is the TIME_WAIT's ts_recent: the new SYN's TSval must be
		// newer (RFC 7323 section 5, PAWS).
		recent := tcp.TSecr(ts)
		if int32(fl.Syn.TSval+fl.TSOff-recent) <= 0 {
			fl.TSOff = recent + 1 - fl.Syn.TSval
		}
	}
	fl.MarkAssisted()
	w.stats.twAssists.Add(1)
	w.drop(dropHandshake)
	w.sendBackendSYN(fl)
	return true
}

// flowRST builds the RST that ends fl for side d, in the numbers d knows,
// and the interface to send it on.
func (w *worker) flowRST(fl *conntrack.Flow, d conntrack.Direction) (packet.Segment, int32, bool) {
	if fl.Offloaded() {
		w.takeBack(fl) // the kernel has the sequence numbers the RST must carry
	}
	if d == conntrack.FromClient {
		return packet.Segment{
			SrcMAC: fl.LocalMAC, DstMAC: fl.ClientMAC, Src: fl.Key.VIP.IP, Dst: fl.Key.Client.IP,
			SrcPort: fl.Key.VIP.Port, DstPort: fl.Key.Client.Port, Seq: fl.ResetSeq(conntrack.FromClient), Flags: packet.FlagRST,
		}, fl.ClientIf, true
	}
	_, h := w.hopOf(fl)
	if h == nil {
		return packet.Segment{}, 0, false
	}
	return packet.Segment{
		SrcMAC: h.src, DstMAC: h.dst, Src: w.dp.natSrc, Dst: fl.BackendAddr.IP, SrcPort: fl.NATPort, DstPort: fl.BackendAddr.Port,
		Seq: fl.ResetSeq(conntrack.FromBackend), Flags: packet.FlagRST,
	}, h.ifindex, true
}

// resetBackend sends fl's backend a RST, rate-limited.
func (w *worker) resetBackend(fl *conntrack.Flow) {
	if s, ifi, ok := w.flowRST(fl, conntrack.FromBackend); ok {
		w.sendSegment(&s, ifi, genReset)
	}
}

// resetBackendUnlimited and resetClientUnlimited send the RST without
// asking the rate limit: the caller took the tokens.
func (w *worker) resetBackendUnlimited(fl *conntrack.Flow) {
	if s, ifi, ok := w.flowRST(fl, conntrack.FromBackend); ok {
		w.sendControl(&s, ifi)
	}
}

func (w *worker) resetClientUnlimited(fl *conntrack.Flow) {
	if s, ifi, ok := w.flowRST(fl, conntrack.FromClient); ok {
		w.sendControl(&s, ifi)
	}
}
