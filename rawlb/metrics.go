package rawlb

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rawlb/rawlb/conntrack"
)

// collector exports the data plane's counters at scrape time. The workers
// keep plain atomic counters of their own; nothing Prometheus-shaped is
// touched per packet. Per-service and per-backend metrics carry `service`
// and `backend` labels, named after HAProxy's own exporter where one
// exists (a backend here is HAProxy's server).
type collector struct {
	b *Balancer

	packets, bytes, drops, sent, limited, icmp, gso, large      *prometheus.Desc
	flowsActive, halfOpen, flowsCreated, flowsExpired, resetF   *prometheus.Desc
	quietReused, refused, cookiesSent, cookiesOK, cookiesActive *prometheus.Desc
	twAssists, ringDrops, reloads, reloadFailures, upgradeGap   *prometheus.Desc
	beUp, beWeight, beFlows, beFlowsTotal, beBytes, bePackets   *prometheus.Desc
	beChecks, beAdmin, svcFlows, svcUp                          *prometheus.Desc
	resetsSent, guardActive, flowsByState                       *prometheus.Desc
	fast                                                        fastDescs

	// With the fast path on, the packet and byte counters add what the
	// kernel forwarded for flows it still has. A flow coming back moves
	// its share from the kernel's map to the workers' counters, and a
	// scrape in between would see it in neither: mono keeps each such
	// counter at the highest value reported, so it never goes back.
	mu   sync.Mutex
	mono map[monoKey]uint64
}

// monoKey names one packet or byte counter: metric, backend id (or
// noBackend), direction.
type monoKey struct {
	bytes bool
	id    uint32
	dir   int
}

const noBackend = ^uint32(0)

// monotonic returns v, or the highest value reported for k if that is
// higher.
func (c *collector) monotonic(k monoKey, v uint64) uint64 {
	if c.b.dp.fast == nil {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if last := c.mono[k]; last > v {
		return last
	}
	c.mono[k] = v
	return v
}

func newCollector(b *Balancer) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("rawlb_"+name, help, labels, nil)
	}
	return &collector{
		b:              b,
		mono:           map[monoKey]uint64{},
		fast:           newFastDescs(d),
		packets:        d("packets_total", "Packets forwarded, by direction.", "direction"),
		bytes:          d("bytes_total", "IP bytes forwarded, by direction.", "direction"),
		drops:          d("drops_total", "Frames not forwarded, by reason.", "reason"),
		sent:           d("originated_total", "Packets rawlb sent itself, by kind (reset, challenge_ack, syn_ack).", "kind"),
		limited:        d("rate_limited_total", "Packets rawlb would have sent itself but the rate limit held back, by kind.", "kind"),
		resetsSent:     d("resets_sent_total", "RSTs rawlb sent itself (refusals, unknown flows, flows it reset)."),
		icmp:           d("icmp_translated_total", "ICMP errors translated for a tracked flow, by the direction forwarded.", "direction"),
		gso:            d("gso_frames_total", "Frames forwarded as one GSO segment for the kernel to split."),
		large:          d("large_frames_total", "Frames larger than a ring slot, read whole from the socket queue."),
		flowsActive:    d("flows_active", "Flows in the table."),
		halfOpen:       d("flows_half_open", "Flows whose handshake with the backend is unfinished."),
		flowsByState:   d("flows", "Flows by TCP state.", "state"),
		flowsCreated:   d("flows_created_total", "Flows created."),
		flowsExpired:   d("flows_expired_total", "Flows removed after their timeout."),
		resetF:         d("flows_reset_total", "Flows rawlb reset both ways (drain timeout, disabled or dead backend)."),
		quietReused:    d("nat_port_quiet_reused_total", "NAT ports handed out within the quiet time because no rested port was free."),
		refused:        d("refused_total", "New connections refused with a RST, by service and reason.", "service", "reason"),
		cookiesSent:    d("syn_cookies_sent_total", "SYN-ACKs sent with a SYN cookie."),
		cookiesOK:      d("syn_cookies_validated_total", "ACKs whose SYN cookie validated (flows created through the SYN proxy)."),
		cookiesActive:  d("syn_cookies_active", "1 while new SYNs get SYN cookies."),
		guardActive:    d("syn_guard_active", "Workers whose SYN guard is on: SYNs come faster than the SYN-ACK limit, and only retransmitted SYNs are answered."),
		twAssists:      d("timewait_assists_total", "SYNs sent again after a backend's TIME_WAIT refused the first (offsets moved past what it remembers)."),
		ringDrops:      d("ring_drops_total", "Frames the kernel dropped because a receive ring was full."),
		reloads:        d("config_reloads_total", "Configuration reloads applied."),
		reloadFailures: d("config_reload_failures_total", "Configuration reloads refused (invalid file, or a change that needs a restart)."),
		upgradeGap:     d("upgrade_gap_seconds", "Forwarding gap of the binary upgrade that started this process."),
		beUp:           d("backend_up", "1 if the backend takes new flows: healthy, reachable, not drained or disabled.", "service", "backend"),
		beWeight:       d("backend_weight", "The backend's weight.", "service", "backend"),
		beAdmin:        d("backend_admin_state", "The backend's admin state (1 for the current one).", "service", "backend", "state"),
		beFlows:        d("backend_flows", "Live flows toward the backend (HAProxy's current_sessions).", "service", "backend"),
		beFlowsTotal:   d("backend_flows_total", "Flows created toward the backend (HAProxy's sessions_total).", "service", "backend"),
		beBytes:        d("backend_bytes_total", "IP bytes forwarded, by direction (to_backend is HAProxy's bytes_in).", "service", "backend", "direction"),
		bePackets:      d("backend_packets_total", "Packets forwarded, by direction.", "service", "backend", "direction"),
		beChecks:       d("healthcheck_total", "Health checks, by result.", "service", "backend", "result"),
		svcFlows:       d("service_flows", "Live flows of the service.", "service"),
		svcUp:          d("service_backends_up", "Backends of the service that take new flows.", "service"),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.bytes, c.drops, c.sent, c.limited, c.resetsSent, c.icmp, c.gso, c.large,
		c.flowsActive, c.halfOpen, c.flowsByState, c.flowsCreated, c.flowsExpired, c.resetF, c.quietReused, c.refused, c.cookiesSent,
		c.cookiesOK, c.cookiesActive, c.guardActive, c.twAssists, c.ringDrops, c.reloads, c.reloadFailures, c.upgradeGap, c.beUp,
		c.beWeight, c.beAdmin, c.beFlows, c.beFlowsTotal, c.beBytes, c.bePackets, c.beChecks, c.svcFlows, c.svcUp} {
		ch <- d
	}
	c.fast.describe(ch)
}

var dirNames = [2]string{dirToBackend: "to_backend", dirToClient: "to_client"}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	b := c.b
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	var packets, bytes, icmp [2]uint64
	var drops [numDropReasons]uint64
	var sent, limited [numGenKinds]uint64
	var gso, large, cookiesOK, tw, resetFlows uint64
	for _, w := range b.stats {
		for i := range packets {
			packets[i] += w.packets[i].Load()
			bytes[i] += w.bytes[i].Load()
			icmp[i] += w.icmp[i].Load()
		}
		for i := range drops {
			drops[i] += w.drops[i].Load()
		}
		for i := range sent {
			sent[i] += w.sent[i].Load()
			limited[i] += w.limited[i].Load()
		}
		gso += w.gsoFrames.Load()
		large += w.bigFrames.Load()
		cookiesOK += w.cookiesOK.Load()
		tw += w.twAssists.Load()
		resetFlows += w.resetFlows.Load()
	}
	inKernel := c.fast.live(b)
	for _, l := range inKernel {
		for d := range packets {
			packets[d] += l.packets[d]
			bytes[d] += l.bytes[d]
		}
	}
	for i, name := range dirNames {
		counter(c.packets, c.monotonic(monoKey{false, noBackend, i}, packets[i]), name)
		counter(c.bytes, c.monotonic(monoKey{true, noBackend, i}, bytes[i]), name)
		counter(c.icmp, icmp[i], name)
	}
	for r, v := range drops {
		if r == 0 || dropReason(r) == ctBase {
			continue // the parser's and the tracker's "none"
		}
		counter(c.drops, v, dropReason(r).String())
	}
	for k, name := range genNames {
		counter(c.sent, sent[k], name)
		counter(c.limited, limited[k], name)
	}
	counter(c.resetsSent, sent[genReset])
	counter(c.gso, gso)
	counter(c.large, large)
	counter(c.cookiesSent, drops[dropCookieSent])
	counter(c.cookiesOK, cookiesOK)
	counter(c.twAssists, tw)
	counter(c.resetF, resetFlows)
	on := 0.0
	if len(b.workers) > 0 && b.workers[0].cookiesOn() {
		on = 1
	}
	gauge(c.cookiesActive, on)
	guards := 0.0
	for _, w := range b.workers {
		if w.guardOn.Load() {
			guards++
		}
	}
	gauge(c.guardActive, guards)

	var ts conntrack.Stats
	for _, t := range b.tables {
		ts = ts.Add(t.Stats())
	}
	gauge(c.flowsActive, float64(b.shared.Len()))
	gauge(c.halfOpen, float64(b.dp.halfOpen()))
	for _, st := range conntrack.States() {
		var n int64
		for _, t := range b.tables {
			n += t.InState(st)
		}
		gauge(c.flowsByState, float64(n), st.String())
	}
	c.fast.collect(b, counter, gauge)
	counter(c.flowsCreated, ts.Created)
	counter(c.flowsExpired, ts.Expired)
	counter(c.quietReused, ts.NATQuietReused)
	counter(c.ringDrops, b.ringDrops.Load())
	counter(c.reloads, b.reloads.Load())
	counter(c.reloadFailures, b.reloadFailures.Load())
	gauge(c.upgradeGap, float64(b.handoffGap.Load())/1e9)

	reg := b.dp.reg.Load()
	for _, svc := range reg.list {
		var refused [numRefusals]uint64
		for i := range svc.stats {
			for r := range refused {
				refused[r] += svc.stats[i].refused[r].Load()
			}
		}
		for r, name := range refusalNames {
			counter(c.refused, refused[r], svc.Name, name)
		}
		up := 0
		var svcFlows int64
		for _, be := range *svc.backends.Load() {
			ok, _ := be.usable()
			v := 0.0
			if ok {
				v, up = 1, up+1
			}
			gauge(c.beUp, v, svc.Name, be.Name)
			gauge(c.beWeight, float64(be.weight.Load()), svc.Name, be.Name)
			admin := be.admin.Load()
			for st, name := range adminNames {
				x := 0.0
				if int32(st) == admin {
					x = 1
				}
				gauge(c.beAdmin, x, svc.Name, be.Name, name)
			}
			live := b.dp.live.Live(be.ID)
			svcFlows += live
			gauge(c.beFlows, float64(live), svc.Name, be.Name)
			var created uint64
			var pk, by [2]uint64
			for i := range be.stats {
				st := &be.stats[i]
				created += st.flows.Load()
				for d := range pk {
					pk[d] += st.packets[d].Load()
					by[d] += st.bytes[d].Load()
				}
			}
			counter(c.beFlowsTotal, created, svc.Name, be.Name)
			for d, name := range dirNames {
				l := inKernel[be.ID] // zero when the kernel has none of its flows
				pk[d] += l.packets[d]
				by[d] += l.bytes[d]
				counter(c.beBytes, c.monotonic(monoKey{true, be.ID, d}, by[d]), svc.Name, be.Name, name)
				counter(c.bePackets, c.monotonic(monoKey{false, be.ID, d}, pk[d]), svc.Name, be.Name, name)
			}
			counter(c.beChecks, b.hcOK[be.ID].Load(), svc.Name, be.Name, "ok")
			counter(c.beChecks, b.hcFail[be.ID].Load(), svc.Name, be.Name, "fail")
		}
		gauge(c.svcFlows, float64(svcFlows), svc.Name)
		gauge(c.svcUp, float64(up), svc.Name)
	}
}
