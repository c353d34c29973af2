package rawlb

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the data plane's counters at scrape time. The workers
// keep plain atomic counters of their own; nothing Prometheus-shaped is
// touched per packet.
type collector struct {
	b *Balancer

	packets, bytes, drops, resets, icmp, gso *prometheus.Desc
	flowsActive, flowsCreated, flowsExpired  *prometheus.Desc
	natExhausted, refusedFull, quietReused   *prometheus.Desc
	backendUp, backendFlows, hcChecks        *prometheus.Desc
	ringDrops                                *prometheus.Desc
}

func newCollector(b *Balancer) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("rawlb_"+name, help, labels, nil)
	}
	return &collector{
		b:            b,
		packets:      d("packets_total", "Packets forwarded, by direction.", "direction"),
		bytes:        d("bytes_total", "IP bytes forwarded, by direction.", "direction"),
		drops:        d("drops_total", "Frames dropped, by reason.", "reason"),
		resets:       d("resets_sent_total", "RSTs sent to clients whose SYN could not be balanced."),
		icmp:         d("icmp_translated_total", "ICMP errors translated for a tracked flow, by the direction forwarded.", "direction"),
		gso:          d("gso_frames_total", "Frames forwarded as one GSO segment for the kernel to split."),
		flowsActive:  d("flows_active", "Flows in the table."),
		flowsCreated: d("flows_created_total", "Flows created."),
		flowsExpired: d("flows_expired_total", "Flows removed by the sweeper after their timeout."),
		natExhausted: d("nat_port_exhausted_total", "New flows refused because no NAT port toward the backend was free."),
		refusedFull:  d("flows_refused_total", "New flows refused because the table was at -max-flows."),
		quietReused:  d("nat_port_quiet_reused_total", "NAT ports handed out within -nat-port-quiet because no rested port was free (connections come faster than the range over the quiet time)."),
		backendUp:    d("backend_up", "1 if the backend passes health checks.", "backend"),
		backendFlows: d("backend_flows", "Live flows toward the backend.", "backend"),
		hcChecks:     d("healthcheck_total", "Health checks, by backend and result.", "backend", "result"),
		ringDrops:    d("ring_drops_total", "Frames the kernel dropped because a receive ring was full."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.bytes, c.drops, c.resets, c.icmp, c.gso, c.flowsActive, c.flowsCreated,
		c.flowsExpired, c.natExhausted, c.refusedFull, c.quietReused, c.backendUp, c.backendFlows, c.hcChecks, c.ringDrops} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	b := c.b
	var s workerStats
	sum := func(dst, src *atomic.Uint64) { dst.Add(src.Load()) }
	for _, w := range b.stats {
		for i := range s.packets {
			sum(&s.packets[i], &w.packets[i])
			sum(&s.bytes[i], &w.bytes[i])
			sum(&s.icmp[i], &w.icmp[i])
		}
		for i := range s.drops {
			sum(&s.drops[i], &w.drops[i])
		}
		sum(&s.resets, &w.resets)
		sum(&s.gsoFrames, &w.gsoFrames)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	dirs := [2]string{dirToBackend: "to_backend", dirToClient: "to_client"}
	for i, name := range dirs {
		counter(c.packets, s.packets[i].Load(), name)
		counter(c.bytes, s.bytes[i].Load(), name)
		counter(c.icmp, s.icmp[i].Load(), name)
	}
	for r := range s.drops {
		counter(c.drops, s.drops[r].Load(), dropReason(r).String())
	}
	counter(c.resets, s.resets.Load())
	counter(c.gso, s.gsoFrames.Load())
	ts := b.table.Stats()
	gauge(c.flowsActive, float64(b.table.Len()))
	counter(c.flowsCreated, ts.Created)
	counter(c.flowsExpired, ts.Expired)
	counter(c.natExhausted, ts.NATExhausted)
	counter(c.refusedFull, ts.RefusedFull)
	counter(c.quietReused, ts.NATQuietReused)
	counter(c.ringDrops, b.ringDrops.Load())
	for i, be := range b.cfg.Backends {
		up := 0.0
		if b.health.Healthy(i) {
			up = 1
		}
		gauge(c.backendUp, up, be.Name)
		gauge(c.backendFlows, float64(b.table.Live(i)), be.Name)
		counter(c.hcChecks, b.hcOK[i].Load(), be.Name, "ok")
		counter(c.hcChecks, b.hcFail[i].Load(), be.Name, "fail")
	}
}
