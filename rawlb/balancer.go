// Package rawlb is the engine of the balancer: it wires the AF_PACKET
// rings, the flow tables, the schedulers, health checks, firewall rules,
// metrics and the API together. The per-packet loop lives in worker.go and
// is kept to receive batch -> classify -> look up or create flow -> rewrite
// -> send batch; everything else runs beside it, never inside it.
package rawlb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/firewall"
	"github.com/rawlb/rawlb/handoff"
	"github.com/rawlb/rawlb/healthcheck"
	"github.com/rawlb/rawlb/ring"
	"github.com/rawlb/rawlb/syncookie"
)

// StopMode says how a Balancer stops.
type StopMode int

// Ways to stop.
const (
	// StopHandoff (SIGTERM, systemctl restart): write the flows to the
	// state file for a successor, and leave the firewall's drops in place
	// for its grace, so that the host's stack never answers the clients of
	// the flows being handed over.
	StopHandoff StopMode = iota
	// StopClean (SIGINT, systemctl stop): remove the firewall rules and
	// restore the reserved ports; the host answers the balancer's ports
	// normally again (refusing connections).
	StopClean
	// stopUpgrade: a successor process inherits the sockets and the state.
	stopUpgrade
)

// Options are what a Balancer needs besides its configuration.
type Options struct {
	Logger *slog.Logger
	// Instance names the firewall table and the state file; default: the
	// first service's listen port, as "rawlb_20000".
	Instance string
	// HandoffGrace is how long the firewall's drops outlive the process
	// (a crash, or a hand-off exit with no successor), and how old a state
	// file may be to be taken over. Default 10s.
	HandoffGrace time.Duration
	// Version is reported in the API and logs.
	Version string
	// Upgrade carries what a parent process hands a child in a binary
	// upgrade; nil otherwise.
	Upgrade *handoff.Child
}

// makeWorkers creates a worker per ring socket.
func (b *Balancer) makeWorkers() {
	n := len(b.socks)
	for i := range b.socks {
		b.stats = append(b.stats, &workerStats{})
		b.workers = append(b.workers, newWorker(i, b.dp, b.socks[i], b.tables[i], ring.DefaultBatch, b.stats[i], b.cfg.RateLimits, n))
	}
}

// Balancer is a running rawlb: the data plane and the control plane
// around it.
type Balancer struct {
	log  *slog.Logger
	opts Options

	mu  sync.Mutex // reloads, API changes, stop
	cfg *config.Config

	dp      *dataplane
	workers []*worker
	socks   []*ring.Socket
	tables  []*conntrack.Table
	shared  *conntrack.Shared
	stats   []*workerStats
	health  *healthcheck.Checker
	nb      *neighbors
	fw      *firewall.Guard
	isnJar  *syncookie.Jar
	started time.Time

	ids            idPool
	reloads        atomic.Uint64
	reloadFailures atomic.Uint64
	lastReloadErr  atomic.Pointer[string]
	ringDrops      atomic.Uint64
	hcOK, hcFail   [conntrack.MaxBackends]atomic.Uint64

	stop        chan StopMode
	stopOnce    sync.Once
	done        chan struct{}
	srv         *http.Server
	ln          *net.TCPListener
	prepared    bool
	workersDone *sync.WaitGroup
	errc        chan error
	handoffGap  atomic.Int64 // ns, measured in an upgrade child
	rates       rates
}

// idPool hands out backend ids, reusing one only once nothing refers to it.
type idPool struct {
	next uint32
	free []uint32
}

func (p *idPool) get() (uint32, error) {
	if n := len(p.free); n > 0 {
		id := p.free[n-1]
		p.free = p.free[:n-1]
		return id, nil
	}
	if p.next >= conntrack.MaxBackends {
		return 0, fmt.Errorf("more than %d backends", conntrack.MaxBackends)
	}
	p.next++
	return p.next - 1, nil
}

func (p *idPool) put(id uint32) { p.free = append(p.free, id) }

// DefaultWorkers is one packet worker per CPU, at least one and at most
// eight. Both directions of a flow go to the worker that owns it, so
// workers share nothing and scale with cores. Measured on 2 cores
// (docs/performance.md, "The rewritten engine"): two workers against one
// gave iperf3 -P 4 +28% forward and +33% reverse, redis GET +22%,
// keep-alive +4% and the same connection rate; the kernel's share of each
// packet (the receive softirq, and on veth the peer's stack inside our
// sendmmsg) runs on whichever core sent it, so a second worker brings
// that work onto the second core instead of competing with it. The cap of
// eight is not a measurement: nothing past two cores has been measured.
func DefaultWorkers(cpus int) int { return max(1, min(cpus, 8)) }

// instanceName returns the default instance name of cfg.
func instanceName(cfg *config.Config) string {
	if len(cfg.Services) == 0 {
		return "rawlb"
	}
	return strconv.Itoa(int(cfg.Services[0].Listen.Port()))
}

// New sets up a balancer for cfg: resolves the backends, installs the
// firewall, opens (or inherits) the rings and builds the flow tables, and
// takes over the state a predecessor left. It does not forward yet: Run
// does.
func New(cfg *config.Config, opts Options) (_ *Balancer, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Instance == "" {
		opts.Instance = instanceName(cfg)
	}
	if opts.HandoffGrace == 0 {
		opts.HandoffGrace = firewall.DefaultGrace
	}
	log := opts.Logger
	if err := checkCapabilities(cfg.Firewall, cfg.Fastpath == config.FastpathOn); err != nil {
		return nil, err
	}
	if err := checkAddress(cfg.Address, cfg.Interfaces); err != nil {
		return nil, err
	}
	b := &Balancer{log: log, opts: opts, cfg: cfg, stop: make(chan StopMode, 1), done: make(chan struct{}), started: time.Now()}
	cleanup := []func(){}
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()

	// What a predecessor left in the state file of a restart. (In an
	// upgrade the parent hands it over later, in TakeOver.)
	var st *handoff.State
	if opts.Upgrade == nil {
		if st, err = handoff.Read(b.statePath(), opts.HandoffGrace, cfg.Fingerprint()); err != nil {
			log.Warn("restart state not taken over: flows of the previous process get a RST", "err", err)
			st = nil
		} else if st != nil {
			log.Info("restart state found", "flows", len(st.Flows), "age", time.Since(st.Written).Round(time.Millisecond))
		}
	}

	workers := cfg.Workers
	if workers == 0 {
		workers = DefaultWorkers(runtime.NumCPU())
	}
	if st != nil && st.Workers != workers {
		// A flow's worker follows from its NAT port and the number of
		// workers: keep the predecessor's count rather than lose its flows.
		log.Warn("keeping the previous process's worker count, so its flows stay with their workers", "workers", st.Workers, "configured", workers)
		workers = st.Workers
	}
	if opts.Upgrade != nil {
		workers = len(opts.Upgrade.RingFDs)
	}

	b.shared, err = conntrack.NewShared(cfg.MaxFlows, maxPerClient(cfg))
	if err != nil {
		return nil, err
	}
	jar := syncookie.New()
	b.isnJar = syncookie.New()
	natSrc := cfg.Address.As4()
	isn := func(port uint16, be conntrack.Endpoint) uint32 {
		return uint32(b.isnJar.Sum(uint64(be32(natSrc))<<16|uint64(port), uint64(be32(be.IP))<<16|uint64(be.Port)))
	}
	for i := 0; i < workers; i++ {
		t, err := conntrack.New(conntrack.Config{
			Worker: i, Workers: workers, NATPortFirst: cfg.NATPorts.First, NATPortLast: cfg.NATPorts.Last,
			PortQuiet: cfg.Timeouts.NATPortQuiet, HalfOpenTimeout: cfg.Timeouts.HalfOpen,
			EstablishedTimeout: cfg.Timeouts.Established, ClosingTimeout: cfg.Timeouts.Closing,
			Shared: b.shared, ISNHash: isn,
		})
		if err != nil {
			return nil, err
		}
		b.tables = append(b.tables, t)
	}
	b.dp = &dataplane{
		natSrc: natSrc, natFirst: cfg.NATPorts.First, natLast: cfg.NATPorts.Last,
		tables: b.tables, shared: b.shared, live: &liveCounter{tables: b.tables}, jar: jar,
		debug: log.Enabled(context.Background(), slog.LevelDebug), log: log,
	}
	b.setCookies(cfg)
	rl := cfg.RateLimits
	b.dp.rates.Store(&rl)

	resolved, err := resolveBackends(cfg)
	if err != nil {
		return nil, err
	}
	reg, _, err := b.build(nil, cfg, resolved)
	if err != nil {
		return nil, err
	}
	b.dp.reg.Store(reg)

	b.nb = &neighbors{log: log, warned: map[*Backend]string{}}
	if len(cfg.Interfaces) > 0 {
		b.nb.allowed = map[int]bool{}
		for _, name := range cfg.Interfaces {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return nil, fmt.Errorf("unknown interface %q: %w", name, err)
			}
			b.nb.allowed[l.Attrs().Index] = true
		}
	}

	b.health = healthcheck.New(healthcheck.Config{
		OnChange: b.healthChanged,
		OnResult: func(id uint32, ok bool, _ time.Duration) {
			if id < conntrack.MaxBackends {
				if ok {
					b.hcOK[id].Add(1)
				} else {
					b.hcFail[id].Add(1)
				}
			}
		},
		// The transitions are logged in healthChanged, with the service;
		// the checker's own lines (failed checks) only at debug level.
		Logger: debugOnly(log),
	})
	if err := b.health.Set(healthTargets(reg)); err != nil {
		return nil, err
	}

	if opts.Upgrade != nil {
		// The rings, the state and the firewall come from the parent,
		// in TakeOver, once this process is ready.
		return b, nil
	}
	// The firewall first, so that the host never answers.
	if cfg.Firewall {
		if b.fw, err = b.startFirewall(cfg); err != nil {
			return nil, err
		}
		cleanup = append(cleanup, func() { _ = b.fw.Remove() })
	}
	o := b.ours(reg)
	filter, err := o.socketFilter()
	if err != nil {
		return nil, err
	}
	prog, err := o.fanoutProgram(workers)
	if err != nil {
		return nil, err
	}
	// The fast path before the rings: they bind for it (ring.Config.IPOnly).
	if err := b.maybeStartFast(workers); err != nil {
		return nil, err
	}
	if b.dp.fast != nil {
		cleanup = append(cleanup, func() { _ = b.dp.fast.path.Close() })
	}
	if b.socks, _, err = ring.OpenGroup(ring.Config{Frames: cfg.RingFrames, Filter: filter, IPOnly: b.dp.fast != nil}, workers, prog); err != nil {
		return nil, err
	}
	cleanup = append(cleanup, func() {
		for _, s := range b.socks {
			s.Free()
		}
	})
	if st != nil {
		b.takeOver(st)
	}
	b.makeWorkers()
	return b, nil
}

// debugOnly returns log if it logs at debug level, else nil (no logs).
func debugOnly(log *slog.Logger) *slog.Logger {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return log
	}
	return nil
}

// statePath is where a hand-off exit leaves the flows for the next start.
// The name carries the network namespace's inode: the flows, like the
// firewall table, belong to one namespace, and several namespaces on one
// host (containers without their own /run, test labs) share the state
// directory.
func (b *Balancer) statePath() string {
	ns := "0"
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err == nil {
		ns = strconv.FormatUint(st.Ino, 10)
	}
	return filepath.Join(b.cfg.StateDir, b.opts.Instance+"."+ns+".state")
}

// maxPerClient is the per-client flow limit: as configured, or by default an
// eighth of max_flows, at least 1024, so that one host cannot lock out
// everyone else while a home lab's few clients never meet it.
func maxPerClient(cfg *config.Config) int {
	if cfg.MaxFlowsPerClient > 0 {
		return cfg.MaxFlowsPerClient
	}
	return max(1024, cfg.MaxFlows/8)
}

// cookieThreshold is the half-open flow count beyond which SYN cookies
// switch on in auto mode: as configured, or by default 1024 (scaled down
// for small tables), which an ordinary burst of connects passes only
// briefly (see docs/performance.md for why auto mode and this value).
func cookieThreshold(cfg *config.Config) int64 {
	if cfg.SYNCookieThreshold > 0 {
		return int64(cfg.SYNCookieThreshold)
	}
	return int64(min(1024, max(cfg.MaxFlows/4, 1)))
}

func (b *Balancer) setCookies(cfg *config.Config) {
	mode := cfg.SYNCookies
	b.dp.cookieMode.Store(&mode)
	b.dp.cookieThreshold.Store(cookieThreshold(cfg))
}

// ours describes the balancer's traffic for the filters and the firewall.
func (b *Balancer) ours(reg *registry) *ours {
	return &ours{natSrc: b.dp.natSrc, natFirst: b.dp.natFirst, natLast: b.dp.natLast, listen: reg.vips}
}

func (b *Balancer) startFirewall(cfg *config.Config) (*firewall.Guard, error) {
	var listen []netip.AddrPort
	for _, s := range cfg.Services {
		listen = append(listen, s.Listen)
	}
	return firewall.Start(firewall.Config{
		Instance: b.opts.Instance, NATSource: cfg.Address, NATFirst: cfg.NATPorts.First, NATLast: cfg.NATPorts.Last, Listen: listen,
	}, firewall.Options{Grace: b.opts.HandoffGrace, Logger: b.log})
}

// checkAddress checks that addr is an address of this host (of one of the
// interfaces, if any are named).
func checkAddress(addr netip.Addr, ifaces []string) error {
	for _, name := range ifaces {
		if _, err := netlink.LinkByName(name); err != nil {
			return fmt.Errorf("unknown interface %q: %w", name, err)
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return fmt.Errorf("interface %d: %w", a.LinkIndex, err)
			}
			at := l.Attrs()
			if len(ifaces) > 0 && !containsString(ifaces, at.Name) {
				return fmt.Errorf("%v is not an address of interface %s but of %s (add it, or name the interface that holds it)", addr, strings.Join(ifaces, ", "), at.Name)
			}
			if at.Flags&net.FlagUp == 0 || at.OperState == netlink.OperDown || at.OperState == netlink.OperLowerLayerDown {
				return fmt.Errorf("interface %s is down (ip link set %s up)", at.Name, at.Name)
			}
			return nil
		}
	}
	return fmt.Errorf("%v is not an address of any interface: give the balancer's own IPv4 address", addr)
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// resolveBackends resolves every backend address of cfg, names included.
func resolveBackends(cfg *config.Config) (map[string]conntrack.Endpoint, error) {
	out := map[string]conntrack.Endpoint{}
	for _, s := range cfg.Services {
		for _, be := range s.Backends {
			if _, ok := out[be.Address]; ok {
				continue
			}
			e, err := resolve(be.Address)
			if err != nil {
				return nil, fmt.Errorf("service %s, backend %s: %w", s.Name, be.Name, err)
			}
			out[be.Address] = e
		}
	}
	return out, nil
}

// resolve turns host:port into an IPv4 endpoint, resolving a name.
func resolve(hostport string) (conntrack.Endpoint, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return conntrack.Endpoint{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return conntrack.Endpoint{}, fmt.Errorf("bad port in %q", hostport)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return conntrack.Endpoint{}, fmt.Errorf("%v is not IPv4 (rawlb balances IPv4)", ip)
		}
		return conntrack.Endpoint{IP: ip.As4(), Port: uint16(port)}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(ips) == 0 {
		return conntrack.Endpoint{}, fmt.Errorf("cannot resolve %q to an IPv4 address", host)
	}
	return conntrack.Endpoint{IP: ips[0].Unmap().As4(), Port: uint16(port)}, nil
}

// build makes the registry for cfg, keeping the services and backends of
// old (nil at start) that cfg keeps: same service name and listen address,
// same backend name and resolved address. It returns the backends cfg
// drops, now in adminRemoved.
func (b *Balancer) build(old *registry, cfg *config.Config, resolved map[string]conntrack.Endpoint) (*registry, []*Backend, error) {
	now := b.tables[0].Now()
	reg := &registry{services: map[conntrack.Endpoint]*Service{}}
	kept := map[*Backend]bool{}
	oldSvc := map[string]*Service{}
	if old != nil {
		for _, s := range old.list {
			oldSvc[s.Name] = s
		}
	}
	workers := len(b.tables)
	for _, sc := range cfg.Services {
		vip := conntrack.Endpoint{IP: sc.Listen.Addr().As4(), Port: sc.Listen.Port()}
		svc := oldSvc[sc.Name]
		if svc == nil || svc.VIP != vip {
			svc = &Service{Name: sc.Name, VIP: vip}
			svc.wscale.Store(defaultWScale)
			svc.allocStats(workers)
		}
		svc.Config = sc
		var list []*Backend
		var prev []*Backend
		if p := svc.backends.Load(); p != nil {
			prev = *p
		}
		for _, bc := range sc.Backends {
			addr := resolved[bc.Address]
			var be *Backend
			for _, p := range prev {
				if p.Name == bc.Name && p.Addr == addr && !kept[p] {
					be = p
				}
			}
			if be == nil {
				id, err := b.ids.get()
				if err != nil {
					return nil, nil, err
				}
				be = &Backend{ID: id, Service: svc, Name: bc.Name, Addr: addr}
				be.allocStats(workers)
			}
			kept[be] = true
			be.Config = bc
			be.weight.Store(int32(bc.Weight))
			be.backup.Store(bc.Backup)
			be.maxFlows.Store(int64(bc.MaxFlows))
			admin := int32(adminActive)
			switch {
			case bc.Disabled:
				admin = adminDisabled
			case bc.Drain:
				admin = adminDrain
			}
			if be.admin.Swap(admin) != admin {
				be.drainUntil.Store(0)
				if admin == adminDrain && sc.DrainTimeout > 0 {
					be.drainUntil.Store(now + int64(sc.DrainTimeout))
				}
			}
			list = append(list, be)
			reg.backends[be.ID] = be
		}
		// Backends the configuration dropped stay in the list, after the
		// configured ones and in adminRemoved (below), until their last
		// flow ends: their flows go on, so metrics, the API, the service's
		// flow count and the restart state must still see them.
		for _, p := range prev {
			if !kept[p] {
				list = append(list, p)
			}
		}
		svc.backends.Store(&list)
		reg.services[vip] = svc
		reg.list = append(reg.list, svc)
		reg.vips = append(reg.vips, sc.Listen)
	}
	var removed []*Backend
	if old != nil {
		for _, be := range old.backends {
			if be == nil || kept[be] {
				continue
			}
			if be.admin.Swap(adminRemoved) != adminRemoved {
				removed = append(removed, be)
				be.drainUntil.Store(0)
				if d := be.Service.Config.DrainTimeout; d > 0 {
					be.drainUntil.Store(now + int64(d))
				}
			}
			// Removed backends stay reachable by id while flows refer
			// to them; collectRemoved frees them.
			reg.backends[be.ID] = be
		}
	}
	for _, svc := range reg.list {
		if err := svc.rebuild(); err != nil {
			return nil, nil, err
		}
	}
	return reg, removed, nil
}

func (s *Service) allocStats(workers int) {
	if len(s.stats) < workers {
		s.stats = make([]serviceStats, workers)
	}
}

func (be *Backend) allocStats(workers int) {
	if len(be.stats) < workers {
		be.stats = make([]backendStats, workers)
	}
}

// flows returns the live flows of every backend of s.
func (s *Service) flows(l *liveCounter) int64 {
	var n int64
	for _, be := range *s.backends.Load() {
		n += l.Live(be.ID)
	}
	return n
}

// healthTargets returns the health checks of every current backend.
func healthTargets(reg *registry) []healthcheck.Target {
	var out []healthcheck.Target
	for _, svc := range reg.list {
		h := svc.Config.Health
		for _, be := range *svc.backends.Load() {
			port := be.Addr.Port
			if h.Port != 0 {
				port = h.Port
			}
			out = append(out, healthcheck.Target{
				ID: be.ID, Name: svc.Name + "/" + be.Name,
				Addr: netip.AddrPortFrom(netip.AddrFrom4(be.Addr.IP), port).String(),
				Check: healthcheck.Check{
					Kind: healthcheck.Kind(h.Kind), Interval: h.Interval, Timeout: h.Timeout, Rise: h.Rise, Fall: h.Fall,
					Send: h.Send, Expect: h.Expect, Path: h.Path, Status: h.Status, Host: h.Host,
				},
			})
		}
	}
	return out
}

// healthChanged applies a health transition: the backend's state, a log
// line, and a new scheduler for its service.
func (b *Balancer) healthChanged(e healthcheck.Event) {
	reg := b.dp.reg.Load()
	if e.ID >= conntrack.MaxBackends {
		return
	}
	be := reg.backends[e.ID]
	if be == nil {
		return
	}
	be.healthy.Store(e.Up)
	be.down.Store(!e.Up)
	if e.Up {
		be.checkWhy.Store(nil)
		b.log.Info("backend up", "service", be.Service.Name, "backend", be.Name, "addr", e.Addr)
	} else {
		why := "health check: " + fmt.Sprint(e.Err)
		be.checkWhy.Store(&why)
		b.log.Warn("backend down", "service", be.Service.Name, "backend", be.Name, "addr", e.Addr, "err", e.Err)
	}
	if err := be.Service.rebuild(); err != nil {
		b.log.Error("rebuilding the scheduler failed", "service", be.Service.Name, "err", err)
	}
	if !e.Up {
		b.wakeWorkers() // its flows may be reset (on_backend_down)
	}
}

// Run forwards until Stop (or ctx), then stops as asked.
func (b *Balancer) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := b.cfg
	reg := b.dp.reg.Load()

	b.Prepare(ctx)

	errc := make(chan error, len(b.workers)+1)
	b.errc = errc
	b.workersDone = &sync.WaitGroup{}
	b.startWorkers(errc)
	wg := b.workersDone
	if b.opts.Upgrade != nil {
		b.handoffGap.Store(int64(time.Since(b.opts.Upgrade.ParentStopped)))
		b.opts.Upgrade.Forwarding()
		b.log.Info("upgrade: forwarding", "gap", time.Duration(b.handoffGap.Load()).Round(time.Microsecond), "flows", b.shared.Len())
	}
	var cwg sync.WaitGroup
	cwg.Add(2)
	go func() { defer cwg.Done(); b.health.Run(ctx) }()
	go func() { defer cwg.Done(); b.housekeeping(ctx) }()

	if err := b.serveHTTP(); err != nil {
		b.stopWorkers(wg)
		cancel()
		cwg.Wait()
		return err
	}
	b.log.Info("rawlb started",
		"address", cfg.Address.String(), "services", len(reg.list), "backends", b.backendCount(),
		"nat_ports", cfg.NATPorts.String(), "workers", len(b.workers), "firewall", cfg.Firewall,
		"metrics", cfg.Metrics, "syn_cookies", string(cfg.SYNCookies), "instance", b.opts.Instance)

	mode := StopHandoff
	var runErr error
	select {
	case <-ctx.Done():
	case mode = <-b.stop:
	case runErr = <-errc:
		b.log.Error("packet worker failed", "err", runErr)
		mode = StopClean
	}
	b.stopWorkers(wg)
	cancel()
	cwg.Wait()
	if b.srv != nil {
		shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
		_ = b.srv.Shutdown(shutCtx)
		done()
	}
	err := b.finish(mode)
	close(b.done)
	return errors.Join(runErr, err)
}

// startWorkers starts every worker; a worker's failure goes to errc.
func (b *Balancer) startWorkers(errc chan<- error) {
	for _, w := range b.workers {
		w.stop.Store(false)
		b.workersDone.Add(1)
		go func() {
			defer b.workersDone.Done()
			if err := w.run(); err != nil {
				errc <- err
			}
		}()
	}
}

// wakeWorkers makes every worker sweep now, for a change the sweep acts on
// (a backend down or disabled, new rates, a next hop that moved): an idle
// worker may otherwise sleep for up to idleWaitMax. The read deadline is
// the goroutine-safe way in; the sweep sets the next one.
func (b *Balancer) wakeWorkers() {
	for _, s := range b.socks {
		_ = s.SetReadDeadline(time.Now())
	}
}

// stopWorkers ends every worker at a batch boundary and waits for them:
// every frame a worker took from its ring was handled and sent, and the
// ring's head tells a successor where to go on.
func (b *Balancer) stopWorkers(wg *sync.WaitGroup) {
	for _, w := range b.workers {
		w.stop.Store(true)
	}
	b.wakeWorkers()
	wg.Wait()
}

// finish stops as mode says, after the workers stopped.
func (b *Balancer) finish(mode StopMode) error {
	var errs []error
	b.stopFast() // the flows' state back from the kernel, before it is written
	if b.dp.fast != nil {
		errs = append(errs, b.dp.fast.path.Close())
	}
	switch mode {
	case StopHandoff:
		st := b.snapshot()
		if err := handoff.Write(b.statePath(), st); err != nil {
			errs = append(errs, fmt.Errorf("writing the restart state: %w", err))
		} else {
			b.log.Info("restart state written", "path", b.statePath(), "flows", len(st.Flows))
		}
		if b.fw != nil {
			errs = append(errs, b.fw.Detach())
		}
	case StopClean:
		if b.fw != nil {
			errs = append(errs, b.fw.Remove())
		}
	case stopUpgrade:
		if b.fw != nil {
			errs = append(errs, b.fw.Detach())
		}
	}
	if mode != stopUpgrade {
		for _, s := range b.socks {
			s.Free()
		}
	}
	b.log.Info("rawlb stopped", "flows", b.shared.Len(), "mode", [...]string{"handoff", "clean", "upgrade"}[mode])
	return errors.Join(errs...)
}

// Stop asks Run to stop as mode says and return.
func (b *Balancer) Stop(mode StopMode) {
	b.stopOnce.Do(func() { b.stop <- mode })
}

func (b *Balancer) backendCount() int {
	n := 0
	for _, s := range b.dp.reg.Load().list {
		n += len(*s.backends.Load())
	}
	return n
}

// refreshRoutes updates every backend's next hop and rebuilds the
// schedulers of services whose backends' reachability changed.
func (b *Balancer) refreshRoutes() {
	reg := b.dp.reg.Load()
	for _, svc := range reg.list {
		if b.nb.refresh(*svc.backends.Load()) {
			if err := svc.rebuild(); err != nil {
				b.log.Error("rebuilding the scheduler failed", "service", svc.Name, "err", err)
			}
		}
	}
}

// housekeeping runs the control plane's timers: next hops and ring counters
// once a second, and the release of removed backends without flows.
func (b *Balancer) housekeeping(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var dropsLogged time.Time
	cookiesWere, guardWas := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		b.refreshRoutes()
		var drops uint64
		for _, s := range b.socks {
			if _, d, err := s.Stats(); err == nil {
				drops += uint64(d)
			}
		}
		if drops > 0 {
			total := b.ringDrops.Add(drops)
			// One line when drops start, and at most one a minute while
			// they go on.
			if time.Since(dropsLogged) > time.Minute {
				dropsLogged = time.Now()
				b.log.Warn("receive rings overflowed: frames dropped by the kernel", "dropped", drops, "total", total,
					"hint", "raise ring_frames (-ring-frames) or workers")
			}
		}
		now := b.dp.halfOpen() > b.dp.cookieThreshold.Load() && *b.dp.cookieMode.Load() == config.SYNCookiesAuto
		if now != cookiesWere {
			cookiesWere = now
			if now {
				b.log.Warn("SYN cookies on: half-open flows beyond the threshold", "half_open", b.dp.halfOpen(), "threshold", b.dp.cookieThreshold.Load())
			} else {
				b.log.Info("SYN cookies off: half-open flows back below the threshold", "half_open", b.dp.halfOpen())
			}
		}
		guard := false
		for _, w := range b.workers {
			guard = guard || w.guardOn.Load()
		}
		if guard != guardWas {
			guardWas = guard
			if guard {
				b.log.Warn("SYN flood: SYNs come faster than the SYN-ACK limit; answering only retransmitted SYNs (new clients connect one retransmission late)",
					"syn_ack_rate", b.cfg.RateLimits.SYNACKs)
			} else {
				b.log.Info("SYN flood over: answering every SYN again")
			}
		}
		b.collectRemoved()
		b.rates.update(b.dp.reg.Load())
	}
}

// collectRemoved drops removed backends without flows from the registry
// and frees their ids.
func (b *Balancer) collectRemoved() {
	b.mu.Lock()
	defer b.mu.Unlock()
	reg := b.dp.reg.Load()
	var gone []*Backend
	for _, be := range reg.backends {
		if be != nil && be.admin.Load() == adminRemoved && b.dp.live.flows(be.ID) == 0 {
			gone = append(gone, be)
		}
	}
	var goneSvc []*Service
	for _, svc := range reg.services {
		if svc.removed.Load() && b.dp.live.serviceFlows(svc) == 0 {
			goneSvc = append(goneSvc, svc)
		}
	}
	if len(gone) == 0 && len(goneSvc) == 0 {
		return
	}
	next := *reg
	next.services = map[conntrack.Endpoint]*Service{}
	for k, v := range reg.services {
		next.services[k] = v
	}
	for _, be := range gone {
		next.backends[be.ID] = nil
		b.ids.put(be.ID)
		var list []*Backend
		for _, o := range *be.Service.backends.Load() {
			if o != be {
				list = append(list, o)
			}
		}
		be.Service.backends.Store(&list)
		b.nb.forget(be) // the same goroutine as refreshRoutes: housekeeping
		b.log.Info("removed backend's last flow ended", "service", be.Service.Name, "backend", be.Name)
	}
	if len(goneSvc) == 0 {
		b.dp.reg.Store(&next)
		return
	}
	next.vips = nil
	for _, svc := range goneSvc {
		delete(next.services, svc.VIP)
		b.log.Info("removed service's last flow ended", "service", svc.Name)
	}
	for _, svc := range next.services {
		next.vips = append(next.vips, svc.Config.Listen)
	}
	if err := b.applyTraffic(reg, &next); err != nil {
		b.log.Error("dropping a removed service's traffic rules failed", "err", err)
	}
}
