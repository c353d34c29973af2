package rawlb

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/firewall"
	"github.com/rawlb/rawlb/healthcheck"
	"github.com/rawlb/rawlb/ring"
)

// Balancer is a running rawlb: the data plane and the control plane
// around it.
type Balancer struct {
	cfg    Config
	log    *slog.Logger
	table  *conntrack.Table
	health *healthcheck.Checker
	dp     *dataplane
	stats  []*workerStats

	hcOK, hcFail []atomic.Uint64
	ringDrops    atomic.Uint64
}

// Expired flows are removed by a sweep over the whole table, whose cost
// grows with it (about 0.3 s for 1,000,000 flows on two small cores). A
// finished flow's NAT port comes back only when a sweep removes it, so a
// long interval ties ports up at high connection rates: with a sweep every
// second, 3,000 connections a second over 1,000 ports per backend ran the
// ports out (every port held by a flow already past its 100 ms closing
// timeout). So the interval adapts: ten times the last sweep's duration,
// clamped to [minSweepEvery, maxSweepEvery]. That keeps sweeping under a
// tenth of a core until the table is big enough for the one-second cap to
// apply, and a flow outlives its timeout by at most maxSweepEvery.
const (
	minSweepEvery = 100 * time.Millisecond
	maxSweepEvery = time.Second
)

// nextSweep returns how long to wait after a sweep that took took.
func nextSweep(took time.Duration) time.Duration {
	return min(max(10*took, minSweepEvery), maxSweepEvery)
}

// Run starts the balancer and blocks until ctx is done or the data plane
// fails. It installs the firewall rules (if configured) and removes them
// again before it returns, whatever the reason.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := checkCapabilities(cfg.Firewall); err != nil {
		return err
	}
	link, err := findLink(cfg.Iface, cfg.SrcIP)
	if err != nil {
		return err
	}
	attrs := link.Attrs()
	if len(attrs.HardwareAddr) != 6 {
		return fmt.Errorf("interface %s has no Ethernet address; rawlb needs an Ethernet interface", attrs.Name)
	}

	b := &Balancer{cfg: cfg, log: log}
	endpoints := make([]conntrack.Endpoint, len(cfg.Backends))
	addrs := make([]string, len(cfg.Backends))
	for i, be := range cfg.Backends {
		endpoints[i] = conntrack.Endpoint{IP: be.Addr.Addr().As4(), Port: be.Addr.Port()}
		addrs[i] = be.Addr.String()
	}
	b.table, err = conntrack.New(conntrack.Config{
		Backends:           endpoints,
		NATPortFirst:       cfg.NATFirst,
		NATPortLast:        cfg.NATLast,
		PortQuiet:          cfg.PortQuiet,
		HalfOpenTimeout:    cfg.HalfOpenTimeout,
		EstablishedTimeout: cfg.IdleTimeout,
		ClosingTimeout:     cfg.ClosingTimeout,
		MaxFlows:           cfg.MaxFlows,
	})
	if err != nil {
		return err
	}
	b.health, err = healthcheck.New(addrs, healthcheck.Config{Interval: cfg.HCInterval, Timeout: cfg.HCTimeout, Rise: cfg.HCRise, Fall: cfg.HCFall})
	if err != nil {
		return err
	}
	b.hcOK = make([]atomic.Uint64, len(addrs))
	b.hcFail = make([]atomic.Uint64, len(addrs))
	b.health.OnResult(func(i int, ok bool, _ time.Duration) {
		if ok {
			b.hcOK[i].Add(1)
		} else {
			b.hcFail[i].Add(1)
		}
	})
	b.health.OnChange(func(e healthcheck.Event) {
		name := cfg.Backends[e.Backend].Name
		if e.Up {
			log.Info("backend up", "backend", name, "addr", e.Addr)
		} else {
			log.Warn("backend down", "backend", name, "addr", e.Addr, "err", e.Err)
		}
	})

	b.dp = &dataplane{
		srcIP:    cfg.SrcIP.As4(),
		port:     cfg.Port,
		natFirst: cfg.NATFirst,
		natLast:  cfg.NATLast,
		mac:      [6]byte(attrs.HardwareAddr),
		table:    b.table,
		nextHop:  make([]atomic.Pointer[[6]byte], len(cfg.Backends)),
		debug:    log.Enabled(ctx, slog.LevelDebug),
		log:      log,
	}
	b.dp.sched = &scheduler{
		algo: cfg.Algo,
		n:    len(cfg.Backends),
		usable: func(i int) bool {
			return b.health.Healthy(i) && b.dp.nextHop[i].Load() != nil
		},
		live: b.table.Live,
	}
	return b.run(ctx, attrs)
}

// findLink returns the interface named iface, or, if iface is empty, the
// one that holds srcIP. Either way srcIP must be on it and it must be up.
func findLink(iface string, srcIP netip.Addr) (netlink.Link, error) {
	var link netlink.Link
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	var holder int
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == srcIP {
			holder = a.LinkIndex
		}
	}
	if iface != "" {
		link, err = netlink.LinkByName(iface)
		if err != nil {
			return nil, fmt.Errorf("unknown interface %q: %w", iface, err)
		}
		if holder != link.Attrs().Index {
			return nil, fmt.Errorf("%v is not an address of interface %s (add it, or name the interface that holds it)", srcIP, iface)
		}
	} else {
		if holder == 0 {
			return nil, fmt.Errorf("%v is not an address of any interface: give the balancer's own IPv4 address", srcIP)
		}
		link, err = netlink.LinkByIndex(holder)
		if err != nil {
			return nil, fmt.Errorf("interface %d: %w", holder, err)
		}
	}
	a := link.Attrs()
	if a.Flags&net.FlagUp == 0 || a.OperState == netlink.OperDown || a.OperState == netlink.OperLowerLayerDown {
		return nil, fmt.Errorf("interface %s is down (ip link set %s up)", a.Name, a.Name)
	}
	return link, nil
}

func (b *Balancer) run(ctx context.Context, attrs *netlink.LinkAttrs) error {
	cfg, log := b.cfg, b.log
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if cfg.Firewall {
		fw, err := firewall.Install(firewall.Rules{SrcIP: cfg.SrcIP, Port: cfg.Port, NATFirst: cfg.NATFirst, NATLast: cfg.NATLast})
		if err != nil {
			return err
		}
		defer func() {
			if err := fw.Remove(); err != nil {
				log.Error("removing firewall rules failed", "err", err)
			}
		}()
	}

	filter, err := buildFilter(cfg.SrcIP.As4(), cfg.Port, cfg.NATFirst, cfg.NATLast)
	if err != nil {
		return err
	}
	workers := cfg.Workers
	if workers <= 0 {
		workers = defaultWorkers(runtime.NumCPU())
	}
	var fanout uint16
	if workers > 1 {
		// Fanout groups are per network namespace; a group id from the
		// pid keeps two balancers on one host apart.
		fanout = uint16(os.Getpid()&0xffff) | 1
	}
	socks := make([]*ring.Socket, 0, workers)
	defer func() {
		for _, s := range socks {
			s.Free()
		}
	}()
	for i := 0; i < workers; i++ {
		s, err := ring.Open(ring.Config{Ifindex: attrs.Index, Frames: cfg.RingFrames, Filter: filter, FanoutGroup: fanout})
		if err != nil {
			return err
		}
		socks = append(socks, s)
	}

	// The first health-check round runs before traffic is taken, so the
	// first SYN already sees each backend's real state; it also makes
	// the kernel resolve the backends' MACs.
	nb := &neighbors{ifindex: attrs.Index, dp: b.dp, log: log, warned: map[int]bool{}}
	for _, be := range cfg.Backends {
		nb.backends = append(nb.backends, be.Addr.Addr())
	}
	nb.refresh()
	b.health.CheckOnce(ctx)
	nb.refresh()

	var wg sync.WaitGroup
	errc := make(chan error, workers+1)
	for _, s := range socks {
		st := &workerStats{}
		b.stats = append(b.stats, st)
		w := newWorker(b.dp, s, 64, st)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(); err != nil {
				errc <- err
			}
		}()
	}
	wg.Add(2)
	go func() { defer wg.Done(); b.health.Run(ctx) }()
	go func() { defer wg.Done(); b.housekeeping(ctx, nb, socks) }()

	var srv *http.Server
	if cfg.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newCollector(b))
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			cancel()
			for _, s := range socks {
				s.Close()
			}
			wg.Wait()
			return fmt.Errorf("metrics listener: %w", err)
		}
		srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
	}

	log.Info("rawlb started",
		"listen", netip.AddrPortFrom(cfg.SrcIP, cfg.Port).String(), "iface", attrs.Name,
		"backends", len(cfg.Backends), "healthy", b.health.HealthyCount(), "algo", string(cfg.Algo),
		"nat_ports", fmt.Sprintf("%d-%d", cfg.NATFirst, cfg.NATLast), "workers", workers,
		"firewall", cfg.Firewall, "metrics", cfg.MetricsAddr)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error("packet worker failed", "err", runErr)
	}
	cancel()
	for _, s := range socks {
		s.Close()
	}
	wg.Wait()
	if srv != nil {
		shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(shutCtx)
		done()
	}
	log.Info("rawlb stopped", "flows", b.table.Len())
	return runErr
}

// defaultWorkers is one packet worker per four CPUs, at least one and at
// most four. Most of the CPU a forwarded packet costs is the kernel's
// (receive softirq, and on veth the peer's whole stack inside our
// sendmmsg), so workers compete with it for cores. On two cores, one worker
// against two (make bench, same run of the day): 13,103 against 7,000
// connections a second, 43,048 against 28,618 keep-alive requests; a second
// worker also splits each flow's two directions across CPUs (the fanout
// hashes them apart), bouncing the flow's cache lines between them.
func defaultWorkers(cpus int) int {
	return max(1, min(cpus/4, 4))
}

// housekeeping expires flows, refreshes next-hop MACs and collects the
// rings' drop counts, off the per-packet path. Only the sweep follows the
// adaptive interval; the neighbour lookups and ring counters need no more
// than one pass a second.
func (b *Balancer) housekeeping(ctx context.Context, nb *neighbors, socks []*ring.Socket) {
	sweep := time.NewTimer(minSweepEvery)
	defer sweep.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			start := time.Now()
			if n := b.table.Sweep(b.table.Now()); n > 0 && b.dp.debug {
				b.log.Debug("flows expired", "count", n)
			}
			sweep.Reset(nextSweep(time.Since(start)))
		case <-tick.C:
			nb.refresh()
			for _, s := range socks {
				if _, drops, err := s.Stats(); err == nil && drops > 0 {
					b.ringDrops.Add(uint64(drops))
				}
			}
		}
	}
}
