package config

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Validate checks c with the rules Parse applies to a file, and returns an
// Errors listing every problem (with Line 0, printed as "field: message"),
// or nil. Start a Config built in Go from Defaults and DefaultHealth: Validate
// does not fill in defaults, it only judges.
func (c *Config) Validate() error {
	v := &validator{line: func(string) int { return 0 }}
	v.config(c)
	return v.errs.sorted()
}

// validator collects the problems of a Config; line, when Parse supplies it,
// lets messages point at the line of another field ("first used at line 5").
type validator struct {
	errs Errors
	line func(field string) int
}

func (v *validator) add(field, format string, args ...any) {
	v.errs = append(v.errs, &Error{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// ref names another field, with its line when the Config came from a file.
func (v *validator) ref(field string) string {
	if l := v.line(field); l > 0 {
		return fmt.Sprintf("%s at line %d", field, l)
	}
	return field
}

func (v *validator) config(c *Config) {
	if a := c.Address; !a.IsValid() {
		v.add("address", "required: the balancer's own IPv4 address, e.g. address: 192.168.1.10")
	} else if msg := checkIPv4(a); msg != "" {
		v.add("address", "%s", msg)
	}
	ifaces := map[string]int{}
	for i, name := range c.Interfaces {
		f := fmt.Sprintf("interfaces[%d]", i)
		if msg := checkIfaceName(name); msg != "" {
			v.add(f, "%s", msg)
		} else if j, dup := ifaces[name]; dup {
			v.add(f, "%q is listed twice (also %s): keep one", name, v.ref(fmt.Sprintf("interfaces[%d]", j)))
		} else {
			ifaces[name] = i
		}
	}
	if err := c.NATPorts.check(); err != nil {
		v.add("nat_ports", "%v", err)
	}
	if c.Metrics != "" {
		if msg := checkHostPort(c.Metrics, "127.0.0.1:9120", true); msg != "" {
			v.add("metrics", "%s, or \"\" to turn metrics off", msg)
		}
	} else if c.Pprof {
		v.add("pprof", "needs metrics: /debug/pprof is served on the metrics address")
	}
	switch c.LogLevel {
	case slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError:
	default:
		v.add("log_level", "%v is not a log level: use debug, info, warn or error", c.LogLevel)
	}
	v.atLeast("workers", c.Workers, 0, "0 (automatic)")
	v.atLeast("ring_frames", c.RingFrames, 0, "0 (automatic)")
	switch {
	case c.StateDir == "":
		v.add("state_dir", "required: the directory for restart state, e.g. %s", DefaultStateDir)
	case !filepath.IsAbs(c.StateDir):
		v.add("state_dir", "%q is not an absolute path: write e.g. %s", c.StateDir, DefaultStateDir)
	}
	v.atLeast("max_flows", c.MaxFlows, 1, "1")
	v.atLeast("max_flows_per_client", c.MaxFlowsPerClient, 0, "0 (automatic)")
	switch c.SYNCookies {
	case SYNCookiesAuto, SYNCookiesOn, SYNCookiesOff:
	default:
		v.add("syn_cookies", "unknown mode %q: use auto, on or off", c.SYNCookies)
	}
	switch c.Fastpath {
	case FastpathAuto, FastpathOn, FastpathOff:
	default:
		v.add("fastpath", "unknown mode %q: use auto, on or off", c.Fastpath)
	}
	v.atLeast("syn_cookie_threshold", c.SYNCookieThreshold, 0, "0 (automatic)")
	v.atLeast("rate_limits.resets", c.RateLimits.Resets, 0, "0 (send none)")
	v.atLeast("rate_limits.challenge_acks", c.RateLimits.ChallengeACKs, 0, "0 (send none)")
	v.atLeast("rate_limits.syn_acks", c.RateLimits.SYNACKs, 0, "0 (send none)")
	if c.RateLimits.SYNACKs == 0 && (c.SYNCookies == SYNCookiesOn || c.SYNCookies == SYNCookiesAuto) {
		v.add("rate_limits.syn_acks", "0 lets no SYN cookie out, so syn_cookies: %s cannot work: raise it, or set syn_cookies: off", c.SYNCookies)
	}
	v.positive("timeouts.half_open", c.Timeouts.HalfOpen, "30s")
	v.positive("timeouts.established", c.Timeouts.Established, "1h")
	v.positive("timeouts.closing", c.Timeouts.Closing, "10s")
	v.nonNegative("timeouts.nat_port_quiet", c.Timeouts.NATPortQuiet)
	v.nonNegative("timeouts.drain", c.Timeouts.Drain)

	if len(c.Services) == 0 {
		v.add("services", "at least one service is needed, e.g. services: [{name: web, listen: 80, backends: [...]}]")
	}
	names := map[string]int{}
	listens := map[netip.AddrPort]int{}
	for i := range c.Services {
		v.service(c, i, names, listens)
	}
}

func (v *validator) service(c *Config, i int, names map[string]int, listens map[netip.AddrPort]int) {
	s := &c.Services[i]
	sp := fmt.Sprintf("services[%d]", i)
	if msg := checkName(s.Name, "web"); msg != "" {
		v.add(sp+".name", "%s", msg)
	} else if j, dup := names[s.Name]; dup {
		v.add(sp+".name", "service name %q is already used by %s: service names must be unique", s.Name, v.ref(fmt.Sprintf("services[%d]", j)))
	} else {
		names[s.Name] = i
	}

	l, lf := s.Listen, sp+".listen"
	switch {
	case !l.Addr().IsValid() && l.Port() == 0:
		v.add(lf, "required: a port on address (listen: 20000) or ip:port")
	case !l.Addr().IsValid():
		// Parse resolves a bare port to address:port; a missing address is
		// already reported on its own.
		if checkIPv4(c.Address) == "" {
			v.add(lf, "port %d has no address: set it to %v", l.Port(), netip.AddrPortFrom(c.Address, l.Port()))
		}
	case checkIPv4(l.Addr()) != "":
		// On address itself, the address: error already says it.
		if l.Addr() != c.Address {
			v.add(lf, "%s", checkIPv4(l.Addr()))
		}
	case l.Port() == 0:
		v.add(lf, "port 0 is out of range: use 1-65535")
	default:
		if j, dup := listens[l]; dup {
			v.add(lf, "%v is already used by service %q (%s): each service needs its own ip:port", l,
				c.Services[j].Name, v.ref(fmt.Sprintf("services[%d]", j)))
		} else {
			listens[l] = i
		}
		// Replies from backends arrive on address:nat_port; a service
		// there could not tell its clients from those replies.
		if l.Addr() == c.Address && c.NATPorts.check() == nil && c.NATPorts.Contains(l.Port()) {
			v.add(lf, "port %d is inside nat_ports %v, where backends' replies arrive: pick a port outside it, or move nat_ports", l.Port(), c.NATPorts)
		}
	}
	switch s.Scheduler {
	case RoundRobin, LeastConnections, Maglev:
	default:
		v.add(sp+".scheduler", "unknown scheduler %q: use rr (weighted round robin), lc (weighted least connections) or maglev", s.Scheduler)
	}
	v.atLeast(sp+".max_flows", s.MaxFlows, 0, "0 (no cap)")
	if s.DrainTimeout != c.Timeouts.Drain { // an inherited timeouts.drain is reported there
		v.nonNegative(sp+".drain_timeout", s.DrainTimeout)
	}
	switch s.OnBackendDown {
	case KeepFlows, ResetFlows:
	default:
		v.add(sp+".on_backend_down", "unknown action %q: use keep (flows go on) or reset (both ends get a RST)", s.OnBackendDown)
	}
	v.health(sp+".health", &s.Health)

	if len(s.Backends) == 0 {
		v.add(sp+".backends", "a service needs at least one backend, e.g. backends: [{name: s1, address: 192.168.1.21:8090}]")
	}
	bnames := map[string]int{}
	addrs := map[string]int{}
	for j, b := range s.Backends {
		bp := fmt.Sprintf("%s.backends[%d]", sp, j)
		if msg := checkName(b.Name, "s1"); msg != "" {
			v.add(bp+".name", "%s", msg)
		} else if k, dup := bnames[b.Name]; dup {
			v.add(bp+".name", "backend name %q is already used by %s: names must be unique within a service", b.Name, v.ref(fmt.Sprintf("%s.backends[%d]", sp, k)))
		} else {
			bnames[b.Name] = j
		}
		if b.Address == "" {
			v.add(bp+".address", "required: host:port, e.g. 192.168.1.21:8090")
		} else if msg := checkHostPort(b.Address, "192.168.1.21:8090", false); msg != "" {
			v.add(bp+".address", "%s", msg)
		} else if msg := loops(c, b.Address); msg != "" {
			v.add(bp+".address", "%s", msg)
		} else if k, dup := addrs[strings.ToLower(b.Address)]; dup {
			v.add(bp+".address", "%s is already used by backend %q (%s): list each server once, with a weight", b.Address, s.Backends[k].Name, v.ref(fmt.Sprintf("%s.backends[%d]", sp, k)))
		} else {
			addrs[strings.ToLower(b.Address)] = j
		}
		if b.Weight < 0 || b.Weight > MaxWeight {
			v.add(bp+".weight", "%d is out of range: use 0-%d (0 takes no new flows)", b.Weight, MaxWeight)
		}
		v.atLeast(bp+".max_flows", b.MaxFlows, 0, "0 (unlimited)")
	}
}

// loops says why a backend at addr (an IP literal; names are resolved
// later) would receive rawlb's own traffic instead of serving it: a service
// address, or the NAT source on a NAT port (where backends' replies
// arrive). "" if neither.
func loops(c *Config, addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return ""
	}
	for _, s := range c.Services {
		if s.Listen == ap {
			return fmt.Sprintf("%v is service %q's own address: rawlb would balance onto itself", ap, s.Name)
		}
	}
	if ap.Addr() == c.Address && c.NATPorts.check() == nil && c.NATPorts.Contains(ap.Port()) {
		return fmt.Sprintf("port %d of %v is inside nat_ports %v, where backends' replies arrive: move the backend's port or nat_ports", ap.Port(), ap.Addr(), c.NATPorts)
	}
	return ""
}

func (v *validator) health(hp string, h *Health) {
	v.positive(hp+".interval", h.Interval, "2s")
	v.positive(hp+".timeout", h.Timeout, "1s")
	if h.Interval > 0 && h.Timeout > h.Interval {
		v.add(hp+".timeout", "%v is longer than interval %v: a check must end before the next one starts; shorten timeout or raise interval", h.Timeout, h.Interval)
	}
	v.atLeast(hp+".rise", h.Rise, 1, "1")
	v.atLeast(hp+".fall", h.Fall, 1, "1")
	only := func(field, kind, other string) {
		v.add(hp+"."+field, "%s is for %s checks, and this check is kind %s: set kind: %s, or remove %s", field, kind, other, kind, field)
	}
	switch h.Kind {
	case HealthTCP:
		if h.Path != "" {
			only("path", "http", "tcp")
		}
		if h.Status != 0 {
			only("status", "http", "tcp")
		}
		if h.Host != "" {
			only("host", "http", "tcp")
		}
	case HealthHTTP:
		if h.Send != "" {
			only("send", "tcp", "http")
		}
		if h.Expect != "" {
			only("expect", "tcp", "http")
		}
		if !strings.HasPrefix(h.Path, "/") {
			v.add(hp+".path", "%q must start with \"/\", e.g. /health", h.Path)
		} else if strings.ContainsFunc(h.Path, notHeaderSafe) {
			v.add(hp+".path", "%q contains a space or control character: percent-encode it (%%20)", h.Path)
		}
		if h.Status < 100 || h.Status > 599 {
			v.add(hp+".status", "%d is not an HTTP status: use 100-599, e.g. 200", h.Status)
		}
		if strings.ContainsFunc(h.Host, notHeaderSafe) {
			v.add(hp+".host", "%q contains a space or control character: write a host name such as www.example.com", h.Host)
		}
	default:
		v.add(hp+".kind", "unknown kind %q: use tcp or http", h.Kind)
	}
}

// notHeaderSafe is true for the bytes that would break an HTTP/1.1 request
// line or header (RFC 9112 section 3).
func notHeaderSafe(r rune) bool { return r <= ' ' || r == 0x7f }

func (v *validator) atLeast(field string, n, least int, what string) {
	if n < least {
		v.add(field, "must be %s or more, not %d", what, n)
	}
}

func (v *validator) positive(field string, d time.Duration, example string) {
	if d <= 0 {
		v.add(field, "must be more than 0s, not %v; e.g. %s", d, example)
	}
}

func (v *validator) nonNegative(field string, d time.Duration) {
	if d < 0 {
		v.add(field, "%v is negative: use 0s or more", d)
	}
}

// checkIPv4 explains why a is not a usable IPv4 unicast address, or returns "".
func checkIPv4(a netip.Addr) string {
	switch {
	case !a.Is4():
		return fmt.Sprintf("%v is not an IPv4 address: rawlb balances IPv4 only", a)
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("%v is not a unicast address: use an address of one host", a)
	}
	return ""
}

// checkName allows what a metric label, a log field and an nftables
// comment carry without quoting; ':' because the command line names a
// backend by its host:port.
func checkName(name, example string) string {
	if name == "" {
		return fmt.Sprintf("required: a name for logs and metrics, e.g. name: %s", example)
	}
	ok := len(name) <= 64
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			ok = false
		}
	}
	if !ok {
		return fmt.Sprintf("%q is not a valid name: use at most 64 letters, digits, '-', '_', '.' or ':'", name)
	}
	return ""
}

// checkIfaceName follows the kernel's dev_valid_name (net/core/dev.c).
func checkIfaceName(name string) string {
	switch {
	case name == "":
		return "empty interface name: write e.g. eth0"
	case len(name) > 15:
		return fmt.Sprintf("%q is longer than 15 bytes, the kernel's limit for interface names", name)
	case name == "." || name == ".." || strings.ContainsAny(name, "/:") || strings.ContainsFunc(name, notHeaderSafe):
		return fmt.Sprintf("%q is not an interface name: it may not contain '/', ':' or spaces", name)
	}
	return ""
}

// checkHostPort explains what is wrong with a host:port, or returns "".
// The host is an IPv4 literal or a DNS name (which the engine resolves). A
// local address (the metrics server's) may also be empty (":9120", every
// address) or any IP, as the Go HTTP server listens on IPv6 too.
func checkHostPort(s, example string, local bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("%q is not host:port: write e.g. %s", s, example)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Sprintf("port %q in %q is out of range: use 1-65535", port, s)
	}
	if host == "" {
		if local {
			return ""
		}
		return fmt.Sprintf("%q has no host: write e.g. %s", s, example)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if local {
			return ""
		}
		return checkIPv4(a)
	}
	if strings.Trim(host, "0123456789.") == "" {
		return fmt.Sprintf("%q is not a valid IPv4 address: write four numbers 0-255, e.g. %s", host, example)
	}
	if !validDNSName(host) {
		return fmt.Sprintf("%q is neither an IPv4 address nor a DNS name: write e.g. %s", host, example)
	}
	return ""
}

// validDNSName checks RFC 1123 host name syntax, tolerating '_' which real
// internal zones contain.
func validDNSName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// parseLevel reads the four level names slog itself prints, in lower case;
// slog's own parser also takes "info+2", which nothing documents.
func parseLevel(s string) (slog.Level, bool) {
	switch s {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return slog.LevelInfo, false
}
