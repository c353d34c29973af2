// Command rawlb is an L4 TCP load balancer working at the packet level:
//
//	sudo rawlb [flags] <srcIP> <backend> [<backend>...]
//
// Clients connect to srcIP:port; each connection goes to a healthy backend
// (host:port, or the original balancer's "ip port" pairs), which sees it
// come from srcIP. See README.md.
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rawlb/rawlb/rawlb"
)

// version is stamped in by the Makefile (-X main.version=...).
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// usageError is a bad command line: one line on stderr and exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

func run(args []string, stderr io.Writer) int {
	cfg, logLevel, showVersion, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		// One line: what is wrong, and where to look.
		fmt.Fprintf(stderr, "rawlb: %v (see rawlb -h)\n", err)
		return 2
	}
	if showVersion {
		fmt.Println("rawlb", version)
		return 0
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rawlb.Run(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "rawlb: %v\n", err)
		return 1
	}
	return 0
}

// parse turns the command line into a Config, resolving backend names once.
func parse(args []string, stderr io.Writer) (rawlb.Config, slog.Level, bool, error) {
	fs := flag.NewFlagSet("rawlb", flag.ContinueOnError)
	// The flag package prints the whole usage on any error; a bad command
	// line gets one line instead, and -h the full text.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: rawlb [flags] <srcIP> <backend> [<backend>...]\n\n"+
			"Balances TCP connections to srcIP:port over the backends (host:port, or \"ip port\" pairs).\n"+
			"Needs CAP_NET_RAW and CAP_NET_ADMIN (root, or setcap).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		port       = fs.Int("port", 20000, "TCP `port` clients connect to on srcIP")
		iface      = fs.String("iface", "", "`interface` to balance on (default: the one holding srcIP)")
		algo       = fs.String("algo", "rr", "scheduling `algorithm`: rr (round robin) or lc (least connections)")
		natPorts   = fs.String("nat-ports", "40000-59999", "`range` of source ports used toward the backends")
		portQuiet  = fs.Duration("nat-port-quiet", 60*time.Second, "how long a freed NAT port rests before reuse toward the same backend (its TIME_WAIT)")
		idle       = fs.Duration("idle-timeout", time.Hour, "expire an established connection after this long without traffic")
		halfOpen   = fs.Duration("half-open-timeout", 30*time.Second, "expire a connection whose handshake did not complete after this long")
		closing    = fs.Duration("closing-timeout", 10*time.Second, "keep a closed (FIN both ways, or RST) connection this long for stray packets")
		maxFlows   = fs.Int("max-flows", 1_000_000, "most connections tracked at once; new ones beyond are refused with a RST")
		hcInterval = fs.Duration("hc-interval", 2*time.Second, "health-check `interval`")
		hcTimeout  = fs.Duration("hc-timeout", time.Second, "health-check connect `timeout`")
		hcFall     = fs.Int("hc-fall", 3, "failed checks in a row that take a backend down")
		hcRise     = fs.Int("hc-rise", 2, "passed checks in a row that bring a backend up")
		metrics    = fs.String("metrics", "", "serve Prometheus metrics on this `address` (e.g. 127.0.0.1:9120)")
		pprofOn    = fs.Bool("pprof", false, "also serve /debug/pprof on the -metrics address (profiling; keep that address private)")
		fw         = fs.Bool("firewall", true, "install nftables rules and reserve the NAT ports so the host's TCP stack stays quiet; false leaves it to scripts/setup.sh")
		workers    = fs.Int("workers", 0, "packet workers sharing the interface by flow hash (0: one per four CPUs, 1 to 4)")
		logLevel   = fs.String("log-level", "info", "log `level`: debug, info, warn or error")
		showVer    = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.Usage()
			return rawlb.Config{}, 0, false, err
		}
		return rawlb.Config{}, 0, false, usageError{err.Error()}
	}
	var cfg rawlb.Config
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return cfg, 0, false, usagef("bad -log-level %q: use debug, info, warn or error", *logLevel)
	}
	if *showVer {
		return cfg, level, true, nil
	}
	if *port < 1 || *port > 65535 {
		return cfg, 0, false, usagef("bad -port %d: must be 1-65535", *port)
	}
	first, last, err := parseRange(*natPorts)
	if err != nil {
		return cfg, 0, false, err
	}
	if *algo != "rr" && *algo != "lc" {
		return cfg, 0, false, usagef("bad -algo %q: use rr or lc", *algo)
	}
	for name, d := range map[string]time.Duration{"nat-port-quiet": *portQuiet, "idle-timeout": *idle, "half-open-timeout": *halfOpen,
		"closing-timeout": *closing, "hc-interval": *hcInterval, "hc-timeout": *hcTimeout} {
		if d <= 0 && !(name == "nat-port-quiet" && d == 0) {
			return cfg, 0, false, usagef("bad -%s %v: must be positive", name, d)
		}
	}
	if *hcTimeout > *hcInterval {
		return cfg, 0, false, usagef("-hc-timeout %v is longer than -hc-interval %v", *hcTimeout, *hcInterval)
	}
	if *maxFlows < 1 || *hcFall < 1 || *hcRise < 1 || *workers < 0 {
		return cfg, 0, false, usagef("-max-flows, -hc-fall and -hc-rise must be at least 1, -workers at least 0")
	}
	if *pprofOn && *metrics == "" {
		return cfg, 0, false, usagef("-pprof needs -metrics (it is served on the same address)")
	}
	if fs.NArg() < 2 {
		return cfg, 0, false, usagef("need the balancer's source IP and at least one backend")
	}
	src, err := netip.ParseAddr(fs.Arg(0))
	if err != nil || !src.Is4() {
		return cfg, 0, false, usagef("bad source IP %q: need the balancer's own IPv4 address", fs.Arg(0))
	}
	backends, err := parseBackends(fs.Args()[1:])
	if err != nil {
		return cfg, 0, false, err
	}
	cfg = rawlb.Config{
		SrcIP: src, Port: uint16(*port), Backends: backends, Iface: *iface, Algo: rawlb.Algorithm(*algo),
		NATFirst: first, NATLast: last, PortQuiet: *portQuiet, IdleTimeout: *idle, HalfOpenTimeout: *halfOpen,
		ClosingTimeout: *closing, MaxFlows: *maxFlows, HCInterval: *hcInterval, HCTimeout: *hcTimeout,
		HCRise: *hcRise, HCFall: *hcFall, MetricsAddr: *metrics, Pprof: *pprofOn, Firewall: *fw, Workers: *workers,
	}
	if err := cfg.Validate(); err != nil {
		return cfg, 0, false, usageError{err.Error()}
	}
	return cfg, level, false, nil
}

// parseRange parses "first-last".
func parseRange(s string) (uint16, uint16, error) {
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(a, 10, 16)
	last, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil || first == 0 || last < first {
		return 0, 0, usagef("bad -nat-ports %q: need first-last within 1-65535, e.g. 40000-59999", s)
	}
	return uint16(first), uint16(last), nil
}

// parseBackends accepts host:port arguments and the original balancer's
// "ip port" pairs, and resolves names once, now.
func parseBackends(args []string) ([]rawlb.Backend, error) {
	var out []rawlb.Backend
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
		ip, err := resolve4(host)
		if err != nil {
			return nil, usagef("backend %q: %v", arg, err)
		}
		out = append(out, rawlb.Backend{Name: arg, Addr: netip.AddrPortFrom(ip, uint16(port))})
	}
	return out, nil
}

// resolve4 returns host's first IPv4 address.
func resolve4(host string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return netip.Addr{}, fmt.Errorf("%v is not IPv4 (rawlb balances IPv4)", ip)
		}
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("cannot resolve %q to an IPv4 address", host)
	}
	return ips[0].Unmap(), nil
}
