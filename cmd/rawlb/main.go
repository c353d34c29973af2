// Command rawlb is an L4 TCP load balancer working at the packet level:
//
//	sudo rawlb [flags] <srcIP> <backend> [<backend>...]
//	sudo rawlb -config /etc/rawlb/rawlb.yaml
//	rawlb -check-config /etc/rawlb/rawlb.yaml
//
// Clients connect to srcIP:port (or each service's listen address); each
// connection goes to a healthy backend (host:port, or the original
// balancer's "ip port" pairs), which sees it come from srcIP. See README.md.
//
// Signals: SIGHUP reloads the configuration file; SIGUSR2 upgrades to the
// binary now at the same path without dropping a connection; SIGTERM
// stops for a restart (the flows go to a state file for the next start,
// and the firewall's drops outlive the process for a few seconds); SIGINT
// stops for good (the firewall rules and reserved ports are removed).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/handoff"
	"github.com/rawlb/rawlb/rawlb"
)

// version is stamped in by the Makefile (-X main.version=...).
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a bad command line or configuration: one line (or one per
// problem) on stderr and exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// invocation is what the command line asks for.
type invocation struct {
	cfg         *config.Config
	configPath  string // with -config: reloads re-read it
	checkOnly   bool
	showVersion bool
	instance    string
	grace       time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	inv, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		var ce config.Errors
		var cerr *config.Error
		if errors.As(err, &ce) || errors.As(err, &cerr) {
			fmt.Fprintf(stderr, "%v\n", err) // already file:line: field: message, one per line
		} else {
			// One line: what is wrong, and where to look.
			fmt.Fprintf(stderr, "rawlb: %v (see rawlb -h)\n", err)
		}
		return 2
	}
	if inv.showVersion {
		fmt.Fprintln(stdout, "rawlb", version)
		return 0
	}
	if inv.checkOnly {
		fmt.Fprintf(stdout, "%s: ok (%d services, %d backends)\n", inv.configPath, len(inv.cfg.Services), countBackends(inv.cfg))
		return 0
	}
	level := new(slog.LevelVar)
	level.Set(inv.cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serve(inv, log, level); err != nil {
		fmt.Fprintf(stderr, "rawlb: %v\n", err)
		return 1
	}
	return 0
}

// fileField names the configuration file's field for a flag whose name
// differs from it (the others are the flag with _ for -).
var fileField = map[string]string{
	"port": "services[].listen", "iface": "interfaces", "algo": "services[].scheduler",
	"nat-port-quiet": "timeouts.nat_port_quiet", "idle-timeout": "timeouts.established",
	"half-open-timeout": "timeouts.half_open", "closing-timeout": "timeouts.closing",
	"reset-rate": "rate_limits.resets", "challenge-ack-rate": "rate_limits.challenge_acks",
	"syn-ack-rate": "rate_limits.syn_acks", "hc-interval": "services[].health.interval",
	"hc-timeout": "services[].health.timeout", "hc-fall": "services[].health.fall",
	"hc-rise": "services[].health.rise", "on-backend-down": "services[].on_backend_down",
}

func countBackends(c *config.Config) int {
	n := 0
	for _, s := range c.Services {
		n += len(s.Backends)
	}
	return n
}

// serve runs the balancer and turns signals into reloads, upgrades and
// stops.
func serve(inv *invocation, log *slog.Logger, level *slog.LevelVar) error {
	child, err := handoff.Inherited()
	if err != nil {
		return err
	}
	opts := rawlb.Options{Logger: log, Instance: inv.instance, HandoffGrace: inv.grace, Version: version, Upgrade: child}
	b, err := rawlb.New(inv.cfg, opts)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if child != nil {
		// Everything that may fail or take long is done before the
		// parent stops forwarding.
		b.Prepare(ctx)
		if err := child.Ready(); err != nil {
			return err
		}
		if err := child.Receive(30 * time.Second); err != nil {
			return err
		}
		if err := b.TakeOver(child); err != nil {
			return err
		}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			switch sig {
			case syscall.SIGHUP:
				if inv.configPath == "" {
					log.Warn("SIGHUP: nothing to reload: rawlb was configured from the command line (use -config FILE)")
					continue
				}
				cfg, err := config.Load(inv.configPath)
				if err != nil {
					b.ReloadFailed(err)
					continue
				}
				if err := b.Reload(cfg); err == nil {
					level.Set(cfg.LogLevel)
				}
			case syscall.SIGUSR2:
				go func() {
					if err := b.Upgrade(os.Args[1:]); err != nil {
						log.Error("upgrade failed", "err", err)
					}
				}()
			case syscall.SIGTERM:
				b.Stop(rawlb.StopHandoff)
			case syscall.SIGINT:
				b.Stop(rawlb.StopClean)
			}
		}
	}()
	return b.Run(ctx)
}

func numCPU() int { return runtime.NumCPU() }

// parse turns the command line into an invocation: a configuration file, or
// a one-service configuration from srcIP, the backends and the flags.
func parse(args []string, stderr io.Writer) (*invocation, error) {
	fs := flag.NewFlagSet("rawlb", flag.ContinueOnError)
	// The flag package prints the whole usage on any error; a bad command
	// line gets one line instead, and -h the full text.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: rawlb [flags] <srcIP> <backend> [<backend>...]\n"+
			"       rawlb [flags] -config FILE\n"+
			"       rawlb -check-config FILE\n\n"+
			"Balances TCP connections to srcIP:port over the backends (host:port, or \"ip port\" pairs),\n"+
			"or the services of a configuration file (see README.md).\n"+
			"Needs CAP_NET_RAW and CAP_NET_ADMIN (root, or setcap).\n"+
			"Signals: HUP reloads the file, USR2 upgrades to the binary now on disk, TERM stops for a restart\n"+
			"(flows kept for the next start), INT stops for good.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	d := config.Defaults()
	dh := config.DefaultHealth()
	var (
		cfgPath    = fs.String("config", "", "read the configuration from this YAML `file` (the command-line backends and service flags are then not allowed)")
		checkPath  = fs.String("check-config", "", "check this configuration `file` and exit (status 2 and file:line: field: message for each problem)")
		port       = fs.Int("port", 20000, "TCP `port` clients connect to on srcIP")
		iface      = fs.String("iface", "", "only use this `interface` (default: every interface that routes)")
		algo       = fs.String("algo", "rr", "scheduling `algorithm`: rr (weighted round robin), lc (least connections) or maglev (consistent hash of the client address)")
		natPorts   = fs.String("nat-ports", d.NATPorts.String(), "`range` of source ports used toward the backends")
		portQuiet  = fs.Duration("nat-port-quiet", d.Timeouts.NATPortQuiet, "how long a freed NAT port rests before reuse toward the same backend (its TIME_WAIT)")
		idle       = fs.Duration("idle-timeout", d.Timeouts.Established, "expire an established connection after this long without traffic")
		halfOpen   = fs.Duration("half-open-timeout", d.Timeouts.HalfOpen, "expire a connection whose handshake did not complete this long after it started")
		closing    = fs.Duration("closing-timeout", d.Timeouts.Closing, "keep a closed (FIN both ways, or RST) connection this long for stray packets")
		maxFlows   = fs.Int("max-flows", d.MaxFlows, "most connections tracked at once; new ones beyond are refused with a RST")
		perClient  = fs.Int("max-flows-per-client", 0, "most connections of one client address (0: max-flows/8, at least 1024)")
		cookies    = fs.String("syn-cookies", string(d.SYNCookies), "SYN cookies: auto (beyond -syn-cookie-threshold half-open flows), on or off")
		cookieThr  = fs.Int("syn-cookie-threshold", 0, "half-open flows beyond which SYN cookies switch on in auto mode (0: 1024, less for small -max-flows)")
		rstRate    = fs.Int("reset-rate", d.RateLimits.Resets, "RSTs rawlb sends itself, per second at most")
		chRate     = fs.Int("challenge-ack-rate", d.RateLimits.ChallengeACKs, "RFC 5961 challenge ACKs, per second at most")
		synackRate = fs.Int("syn-ack-rate", d.RateLimits.SYNACKs, "SYN cookie SYN-ACKs, per second at most")
		hcInterval = fs.Duration("hc-interval", dh.Interval, "health-check `interval`")
		hcTimeout  = fs.Duration("hc-timeout", dh.Timeout, "health-check connect `timeout`")
		hcFall     = fs.Int("hc-fall", dh.Fall, "failed checks in a row that take a backend down")
		hcRise     = fs.Int("hc-rise", dh.Rise, "passed checks in a row that bring a backend up")
		onDown     = fs.String("on-backend-down", string(config.ResetFlows), "what happens to a dead backend's connections: reset (both ends get a RST) or keep")
		metrics    = fs.String("metrics", "", "serve Prometheus metrics, the JSON API and the status page on this `address` (e.g. 127.0.0.1:9120)")
		pprofOn    = fs.Bool("pprof", false, "also serve /debug/pprof on the -metrics address (profiling; keep that address private)")
		fw         = fs.Bool("firewall", true, "install nftables rules and reserve the NAT ports so the host's TCP stack stays quiet; false leaves it to scripts/setup.sh")
		fastpath   = fs.String("fastpath", string(d.Fastpath), "forward established flows in the kernel with a tc program: auto (if the kernel allows: Linux 6.6, CAP_BPF), on (or fail) or off")
		workers    = fs.Int("workers", 0, fmt.Sprintf("packet workers (0: one per CPU, 1 to 8, here %d)", rawlb.DefaultWorkers(numCPU())))
		ringFrames = fs.Int("ring-frames", 0, "receive ring slots per worker (0: 8192, which holds a burst of thousands of SYNs)")
		stateDir   = fs.String("state-dir", d.StateDir, "`directory` of the state a restart hands over")
		instance   = fs.String("instance", "", "instance name (nftables table rawlb_NAME and state file); default: the first service's port; two balancers on one host need two")
		grace      = fs.Duration("handoff-grace", 10*time.Second, "how long the firewall's drops outlive the process, and how old a state file may be to be taken over")
		logLevel   = fs.String("log-level", "info", "log `level`: debug, info, warn or error")
		showVer    = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.Usage()
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	inv := &invocation{showVersion: *showVer, instance: *instance, grace: *grace}
	if *showVer {
		return inv, nil
	}
	if *instance != "" && strings.Trim(*instance, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return nil, usagef("bad -instance %q: use a-z, 0-9 and _", *instance)
	}
	if *grace < time.Second {
		return nil, usagef("bad -handoff-grace %v: at least 1s", *grace)
	}
	if *checkPath != "" || *cfgPath != "" {
		path := *cfgPath
		if *checkPath != "" {
			path, inv.checkOnly = *checkPath, true
		}
		// Every other flag is a setting of the file; taking one silently
		// would leave the user believing it applied.
		var stray []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "config", "check-config", "instance", "handoff-grace":
			default:
				stray = append(stray, f.Name)
			}
		})
		if len(stray) > 0 {
			field := fileField[stray[0]]
			if field == "" {
				field = strings.ReplaceAll(stray[0], "-", "_")
			}
			return nil, usagef("-%s is a setting of the configuration file (%s): with -config, set it there; only -instance and -handoff-grace go with -config", stray[0], field)
		}
		if fs.NArg() > 0 {
			return nil, usagef("with -config, give no srcIP or backends on the command line (found %q)", fs.Arg(0))
		}
		cfg, err := config.Load(path)
		if err != nil {
			return nil, err
		}
		inv.cfg, inv.configPath = cfg, path
		return inv, nil
	}

	// A one-service configuration from the command line.
	cfg := d
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, usagef("bad -log-level %q: use debug, info, warn or error", *logLevel)
	}
	if *port < 1 || *port > 65535 {
		return nil, usagef("bad -port %d: must be 1-65535", *port)
	}
	nat, err := config.ParsePortRange(*natPorts)
	if err != nil {
		return nil, usagef("bad -nat-ports %q: need first-last within 1-65535, e.g. 40000-59999", *natPorts)
	}
	switch *algo {
	case "rr", "lc", "maglev":
	default:
		return nil, usagef("bad -algo %q: use rr, lc or maglev", *algo)
	}
	switch config.SYNCookieMode(*cookies) {
	case config.SYNCookiesAuto, config.SYNCookiesOn, config.SYNCookiesOff:
	default:
		return nil, usagef("bad -syn-cookies %q: use auto, on or off", *cookies)
	}
	switch config.OnBackendDown(*onDown) {
	case config.ResetFlows, config.KeepFlows:
	default:
		return nil, usagef("bad -on-backend-down %q: use reset or keep", *onDown)
	}
	for name, v := range map[string]time.Duration{"idle-timeout": *idle, "half-open-timeout": *halfOpen,
		"closing-timeout": *closing, "hc-interval": *hcInterval, "hc-timeout": *hcTimeout} {
		if v <= 0 {
			return nil, usagef("bad -%s %v: must be positive", name, v)
		}
	}
	if *portQuiet < 0 {
		return nil, usagef("bad -nat-port-quiet %v: must not be negative", *portQuiet)
	}
	if *hcTimeout > *hcInterval {
		return nil, usagef("-hc-timeout %v is longer than -hc-interval %v", *hcTimeout, *hcInterval)
	}
	if *maxFlows < 1 || *hcFall < 1 || *hcRise < 1 || *workers < 0 || *perClient < 0 || *cookieThr < 0 || *ringFrames < 0 ||
		*rstRate < 0 || *chRate < 0 || *synackRate < 0 {
		return nil, usagef("-max-flows, -hc-fall and -hc-rise must be at least 1; -workers, -ring-frames, -max-flows-per-client, -syn-cookie-threshold and the rates at least 0")
	}
	if *pprofOn && *metrics == "" {
		return nil, usagef("-pprof needs -metrics (it is served on the same address)")
	}
	if fs.NArg() < 2 {
		return nil, usagef("need the balancer's source IP and at least one backend (or -config FILE)")
	}
	src, err := netip.ParseAddr(fs.Arg(0))
	if err != nil || !src.Is4() {
		return nil, usagef("bad source IP %q: need the balancer's own IPv4 address", fs.Arg(0))
	}
	backends, err := parseBackends(fs.Args()[1:])
	if err != nil {
		return nil, err
	}
	cfg.Address = src
	if *iface != "" {
		cfg.Interfaces = []string{*iface}
	}
	cfg.NATPorts = nat
	cfg.Metrics, cfg.Pprof, cfg.LogLevel, cfg.Workers, cfg.RingFrames = *metrics, *pprofOn, level, *workers, *ringFrames
	cfg.Firewall, cfg.StateDir, cfg.MaxFlows, cfg.MaxFlowsPerClient = *fw, *stateDir, *maxFlows, *perClient
	cfg.Fastpath = config.FastpathMode(*fastpath)
	cfg.SYNCookies, cfg.SYNCookieThreshold = config.SYNCookieMode(*cookies), *cookieThr
	cfg.RateLimits = config.RateLimits{Resets: *rstRate, ChallengeACKs: *chRate, SYNACKs: *synackRate}
	cfg.Timeouts = config.Timeouts{HalfOpen: *halfOpen, Established: *idle, Closing: *closing, NATPortQuiet: *portQuiet}
	h := dh
	h.Interval, h.Timeout, h.Rise, h.Fall = *hcInterval, *hcTimeout, *hcRise, *hcFall
	cfg.Services = []config.Service{{
		Name: "default", Listen: netip.AddrPortFrom(src, uint16(*port)), Scheduler: config.Scheduler(*algo),
		OnBackendDown: config.OnBackendDown(*onDown), Health: h, Backends: backends,
	}}
	if err := cfg.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	inv.cfg = &cfg
	return inv, nil
}

// parseBackends accepts host:port arguments and the original balancer's
// "ip port" pairs. Each backend is named as given (host:port), which is
// what the metrics and the API show.
func parseBackends(args []string) ([]config.Backend, error) {
	var out []config.Backend
	for i := 0; i < len(args); i++ {
		arg := args[i]
		host, portStr, err := net.SplitHostPort(arg)
		if err != nil {
			// "ip port": a bare host followed by a number.
			if i+1 < len(args) && !strings.Contains(arg, ":") {
				if _, perr := strconv.Atoi(args[i+1]); perr == nil {
					host, portStr = arg, args[i+1]
					arg = net.JoinHostPort(host, portStr)
					i++
					err = nil
				}
			}
			if err != nil {
				return nil, usagef("bad backend %q: need host:port", args[i])
			}
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 {
			return nil, usagef("bad backend %q: port must be 1-65535", arg)
		}
		if ip, err := netip.ParseAddr(host); err == nil && !ip.Is4() {
			return nil, usagef("backend %q: %v is not IPv4 (rawlb balances IPv4)", arg, ip)
		}
		if _, err := netip.ParseAddr(host); err != nil {
			// Resolved now, so that a typo fails at once, with status 2.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
			cancel()
			if err != nil || len(ips) == 0 {
				return nil, usagef("backend %q: cannot resolve %q to an IPv4 address", arg, host)
			}
		}
		out = append(out, config.Backend{Name: arg, Address: arg, Weight: config.DefaultWeight})
	}
	return out, nil
}
