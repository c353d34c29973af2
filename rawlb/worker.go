package rawlb

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/packet"
	"github.com/rawlb/rawlb/ring"
)

// dataplane is the state every packet worker reads: set up once at start,
// then shared. Only the flow table and the next-hop MACs change while
// running, and both are safe for concurrent use.
type dataplane struct {
	srcIP             [4]byte
	port              uint16
	natFirst, natLast uint16
	mac               [6]byte // the interface's own MAC, the source of every frame sent
	table             *conntrack.Table
	sched             *scheduler
	nextHop           []atomic.Pointer[[6]byte] // per backend; nil until the neighbour is resolved
	debug             bool                      // per-flow log lines, decided once at start
	log               *slog.Logger
}

// worker owns one ring socket and everything it touches per packet, so the
// loop below takes no lock of its own and allocates nothing.
type worker struct {
	dp     *dataplane
	sock   *ring.Socket // nil in benchmarks and unit tests
	parser packet.Parser
	frame  packet.Frame
	pkts   []ring.Packet
	out    [][]byte // frames to send, in order; they point into the ring or rstBuf
	rstBuf [][]byte // a buffer per possible RST in one batch
	nrst   int
	stats  *workerStats

	lastSendErr time.Time
}

func newWorker(dp *dataplane, sock *ring.Socket, batch int, stats *workerStats) *worker {
	w := &worker{dp: dp, sock: sock, pkts: make([]ring.Packet, batch), out: make([][]byte, 0, batch), stats: stats}
	w.rstBuf = make([][]byte, batch)
	for i := range w.rstBuf {
		w.rstBuf[i] = make([]byte, ring.VNetHdrLen+packet.MaxResetLen)
	}
	return w
}

// run is the per-packet loop: receive a batch, handle each frame in place,
// send what is to be sent in one go, hand the slots back.
func (w *worker) run() error {
	for {
		n, err := w.sock.Receive(w.pkts)
		if err != nil {
			if errors.Is(err, ring.ErrClosed) {
				return nil
			}
			return err
		}
		w.handleBatch(n, w.dp.table.Now())
		if len(w.out) > 0 {
			if dropped, err := w.sock.Send(w.out); dropped > 0 {
				w.stats.drops[dropSendError].Add(uint64(dropped))
				w.logSendError(err)
			}
		}
		w.sock.Release(n)
	}
}

// handleBatch handles n received packets, leaving what to send in w.out.
func (w *worker) handleBatch(n int, now int64) {
	w.out = w.out[:0]
	w.nrst = 0
	for i := 0; i < n; i++ {
		w.handle(&w.pkts[i], now)
	}
}

func (w *worker) drop(r dropReason) { w.stats.drops[r].Add(1) }

// handle classifies one frame and forwards, answers or drops it.
func (w *worker) handle(p *ring.Packet, now int64) {
	if p.Truncated() {
		w.drop(dropRingTruncated)
		return
	}
	if p.Status&unix.TP_STATUS_VLAN_VALID != 0 {
		w.drop(dropVLANOffload)
		return
	}
	f := &w.frame
	if err := w.parser.Parse(p.Frame, f); err != nil {
		r, _ := err.(packet.Reason)
		w.drop(dropReason(r))
		return
	}
	dp := w.dp
	if f.IP.Destination() != dp.srcIP {
		w.drop(dropNotOurs)
		return
	}
	if f.IsICMP() {
		w.handleICMP(p, f)
		return
	}
	state := packet.CsumComplete
	if p.VNet.Flags()&ring.VNetFlagNeedsCsum != 0 || p.Status&unix.TP_STATUS_CSUMNOTREADY != 0 {
		state = packet.CsumPartial
	}
	switch dport := f.TCP.DestinationPort(); {
	case dport == dp.port:
		w.fromClient(p, f, state, now)
	case dport >= dp.natFirst && dport <= dp.natLast:
		w.fromBackend(p, f, state, now)
	default:
		w.drop(dropNotOurs)
	}
}

// fromClient forwards a client's segment to its flow's backend, creating
// the flow on a SYN.
func (w *worker) fromClient(p *ring.Packet, f *packet.Frame, state packet.CsumState, now int64) {
	dp := w.dp
	key := conntrack.ClientKey{
		Client: conntrack.Endpoint{IP: f.IP.Source(), Port: f.TCP.SourcePort()},
		VIP:    conntrack.Endpoint{IP: dp.srcIP, Port: dp.port},
	}
	flags := f.TCP.Flags()
	syn := flags&(packet.FlagSYN|packet.FlagACK|packet.FlagRST) == packet.FlagSYN
	ts := f.TCP.TimestampOption()
	fl := dp.table.LookupClient(key)
	if fl != nil && syn && fl.State() >= conntrack.StateClosing {
		// The client reuses its port for a new connection while the
		// old flow waits out its closing timeout: start afresh.
		dp.table.Remove(fl)
		fl = nil
	}
	if fl == nil {
		if !syn {
			w.drop(dropNoFlow)
			return
		}
		if fl = w.newFlow(key, f, ts, now); fl == nil {
			return
		}
	}
	dp.table.Observe(fl, conntrack.FromClient, flags, len(f.IP), now)
	mac := dp.nextHop[fl.Backend].Load()
	if mac == nil {
		w.drop(dropNoNeighbor)
		return
	}
	f.RewriteTCP(dp.srcIP, fl.NATPort, fl.BackendAddr.IP, fl.BackendAddr.Port, state)
	if ts >= 0 {
		f.TCP.AddTimestamps(ts, fl.TSOffset, 0, state)
		fl.NoteTSval(f.TCP.TSval(ts))
	}
	f.TCP.AddSeqAck(fl.SeqOffset, 0, state)
	fl.NoteSeqEnd(f.TCP.SeqEnd())
	w.emit(p, f, *mac, dirToBackend)
}

// newFlow schedules a SYN to a backend. When none can take it, the client
// gets a RST so its connect fails at once instead of timing out.
func (w *worker) newFlow(key conntrack.ClientKey, f *packet.Frame, ts int, now int64) *conntrack.Flow {
	dp := w.dp
	b := dp.sched.pick()
	if b < 0 {
		w.drop(dropNoBackend)
		w.reset(f)
		return nil
	}
	syn := conntrack.SYN{Seq: f.TCP.Seq()}
	if ts >= 0 {
		syn.TSval, syn.HasTS = f.TCP.TSval(ts), true
	}
	fl, err := dp.table.Create(key, b, f.Eth.Source(), now, syn)
	if err != nil {
		if errors.Is(err, conntrack.ErrTableFull) {
			w.drop(dropTableFull)
		} else {
			w.drop(dropNATExhausted)
		}
		w.reset(f)
		return nil
	}
	if dp.debug {
		dp.log.Debug("new flow", "client", fl.Key.Client.String(), "backend", fl.BackendAddr.String(), "nat_port", fl.NATPort)
	}
	return fl
}

// fromBackend forwards a backend's segment to the client of its flow.
func (w *worker) fromBackend(p *ring.Packet, f *packet.Frame, state packet.CsumState, now int64) {
	dp := w.dp
	fl := dp.table.LookupBackend(conntrack.BackendKey{
		Backend: conntrack.Endpoint{IP: f.IP.Source(), Port: f.TCP.SourcePort()},
		NATPort: f.TCP.DestinationPort(),
	})
	if fl == nil {
		w.drop(dropNoFlow)
		return
	}
	dp.table.Observe(fl, conntrack.FromBackend, f.TCP.Flags(), len(f.IP), now)
	f.RewriteTCP(fl.Key.VIP.IP, fl.Key.VIP.Port, fl.Key.Client.IP, fl.Key.Client.Port, state)
	if fl.TSOffset != 0 {
		// The backend echoes timestamps shifted by TSOffset; the client
		// must get back its own.
		if ts := f.TCP.TimestampOption(); ts >= 0 {
			f.TCP.AddTimestamps(ts, 0, -fl.TSOffset, state)
		}
	}
	if fl.SeqOffset != 0 {
		// The backend acknowledges (and selectively acknowledges) the
		// client's bytes in the shifted numbering.
		f.TCP.AddSeqAck(0, -fl.SeqOffset, state)
		f.TCP.AddSACK(-fl.SeqOffset, state)
	}
	w.emit(p, f, fl.ClientMAC, dirToClient)
}

// handleICMP translates an ICMP error about a segment the balancer sent,
// for the other side of the flow, so path MTU discovery and unreachable
// errors work through the balancer.
func (w *worker) handleICMP(p *ring.Packet, f *packet.Frame) {
	dp := w.dp
	in := f.Inner
	if in.Source() != dp.srcIP {
		w.drop(dropNotOurs)
		return
	}
	sport, dport := f.InnerSourcePort(), f.InnerDestinationPort()
	switch {
	case sport >= dp.natFirst && sport <= dp.natLast:
		// About a segment sent toward a backend: tell the client, as if
		// about its own segment to srcIP:port.
		fl := dp.table.LookupBackend(conntrack.BackendKey{Backend: conntrack.Endpoint{IP: in.Destination(), Port: dport}, NATPort: sport})
		if fl == nil {
			w.drop(dropNoFlow)
			return
		}
		c, v := fl.Key.Client, fl.Key.VIP
		f.AddInnerSeq(-fl.SeqOffset) // the quote carries the shifted number
		f.TranslateICMP(dp.srcIP, c.IP, c.IP, c.Port, v.IP, v.Port)
		w.stats.icmp[dirToClient].Add(1)
		w.emit(p, f, fl.ClientMAC, dirToClient)
	case sport == dp.port:
		// About a segment sent toward a client: tell the backend.
		fl := dp.table.LookupClient(conntrack.ClientKey{Client: conntrack.Endpoint{IP: in.Destination(), Port: dport}, VIP: conntrack.Endpoint{IP: dp.srcIP, Port: dp.port}})
		if fl == nil {
			w.drop(dropNoFlow)
			return
		}
		mac := dp.nextHop[fl.Backend].Load()
		if mac == nil {
			w.drop(dropNoNeighbor)
			return
		}
		b := fl.BackendAddr
		f.TranslateICMP(dp.srcIP, b.IP, b.IP, b.Port, dp.srcIP, fl.NATPort)
		w.stats.icmp[dirToBackend].Add(1)
		w.emit(p, f, *mac, dirToBackend)
	default:
		w.drop(dropNotOurs)
	}
}

// emit readdresses the frame's Ethernet header and queues it for sending,
// without the Ethernet padding, with the virtio-net header it came with.
func (w *worker) emit(p *ring.Packet, f *packet.Frame, dst [6]byte, dir int) {
	vnet := p.VNet
	if f.IsICMP() {
		vnet.SetFlags(0) // the ICMP checksum was summed afresh
	} else {
		vnet.SetFlags(vnet.Flags() &^ ring.VNetFlagDataValid) // a receive-side flag, meaningless on send
		if vnet.GSOType() != ring.VNetGSONone {
			w.stats.gsoFrames.Add(1)
			if vnet.Flags()&ring.VNetFlagNeedsCsum == 0 {
				// A GRO-merged segment from a NIC: its checksum field
				// belongs to the first packet merged. Hand it to the
				// kernel as partial, so each segment it cuts gets a
				// checksum computed afresh.
				f.SetPseudoChecksum()
				vnet.SetCsum(uint16(len(f.Eth)+f.IP.HeaderLen()), 16)
			}
		}
	}
	f.Eth.SetDestination(dst)
	f.Eth.SetSource(w.dp.mac)
	w.stats.packets[dir].Add(1)
	w.stats.bytes[dir].Add(uint64(len(f.IP)))
	w.out = append(w.out, p.Buf[:ring.VNetHdrLen+f.Len()])
}

// reset queues a RST answering the segment in f.
func (w *worker) reset(f *packet.Frame) {
	if w.nrst == len(w.rstBuf) {
		return
	}
	buf := w.rstBuf[w.nrst]
	clear(buf[:ring.VNetHdrLen])
	n := packet.BuildReset(buf[ring.VNetHdrLen:], f)
	if n == 0 {
		return
	}
	w.nrst++
	w.stats.resets.Add(1)
	w.out = append(w.out, buf[:ring.VNetHdrLen+n])
}

// logSendError logs a failed send at most every ten seconds: a full
// transmit queue fails many frames at once and one line says enough.
func (w *worker) logSendError(err error) {
	if now := time.Now(); now.Sub(w.lastSendErr) > 10*time.Second {
		w.lastSendErr = now
		w.dp.log.Warn("sending frames failed; counted in rawlb_drops_total{reason=\"send_error\"}", "err", err)
	}
}
