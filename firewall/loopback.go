package firewall

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// The two settings of lo without which the kernel drops every frame rawlb
// sends into lo: to a backend on this host, or back to a client on it.
//
// A segment a local socket sends over lo keeps the route it was sent with
// (loopback_xmit, drivers/net/loopback.c, forces the dst to stay), so
// ip_rcv_finish_core (net/ipv4/ip_input.c) never routes it again as input.
// A frame written to lo through an AF_PACKET socket has no route, and is
// routed as if it had come off a wire (ip_route_input_slow,
// net/ipv4/route.c), where
//
//   - a destination or source in 127.0.0.0/8 is martian unless
//     route_localnet is on for the interface (SKB_DROP_REASON_IP_LOCALNET);
//   - a source that is one of the host's own addresses is martian unless
//     accept_local is on (fib_validate_source, net/ipv4/fib_frontend.c;
//     SKB_DROP_REASON_IP_LOCAL_SOURCE).
//
// Every frame rawlb sends into lo has such a source: the NAT source toward
// a backend on the host, the service address toward a client on it. The
// drops move no SNMP counter (only in_martian_* of /proc/net/stat/rt_cache,
// and a log line with log_martians), so without these a connection from
// the host itself, or to a backend on it, just hangs in SYN_SENT.
//
// Set on lo, both concern only frames arriving on lo, which nothing but
// this host's own programs with CAP_NET_RAW can inject; turning them on
// opens nothing to the network, unlike route_localnet on a real interface.
var loopbackSysctls = []string{"accept_local", "route_localnet"}

// loopbackConf is the directory of lo's IPv4 settings; like every
// /proc/sys/net file it resolves against the opening thread's namespace.
const loopbackConf = "/proc/sys/net/ipv4/conf/lo/"

// loSetting is one of lo's settings, opened read-write where /proc/sys
// allows it and read-only where it is mounted so (a container, whose
// settings are fixed when it starts: docker run --sysctl).
type loSetting struct {
	name     string
	f        *os.File // nil if it could not be opened at all
	readOnly bool
}

// openLoopback opens lo's settings, one per entry of loopbackSysctls.
func openLoopback() []loSetting {
	out := make([]loSetting, len(loopbackSysctls))
	for i, name := range loopbackSysctls {
		out[i].name = name
		f, err := os.OpenFile(loopbackConf+name, os.O_RDWR, 0)
		if err != nil {
			f, err = os.Open(loopbackConf + name)
			out[i].readOnly = true
		}
		if err == nil {
			out[i].f = f
		}
	}
	return out
}

// enableLoopback turns on each of lo's settings that is off, and returns
// the names of those it turned on, for restoreLoopback. A setting that is
// off and cannot be turned on is reported in err and left alone: rawlb
// still balances everything that does not pass through lo.
func (ns *namespace) enableLoopback() (turnedOn []string, err error) {
	var errs []error
	for _, s := range ns.lo {
		if s.f == nil {
			errs = append(errs, fmt.Errorf("%s%s cannot be opened", loopbackConf, s.name))
			continue
		}
		buf := make([]byte, 16)
		n, rerr := s.f.ReadAt(buf, 0)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			errs = append(errs, fmt.Errorf("reading %s%s: %w", loopbackConf, s.name, rerr))
			continue
		}
		if strings.TrimSpace(string(buf[:n])) != "0" {
			continue
		}
		if s.readOnly {
			errs = append(errs, fmt.Errorf("%s%s is 0 and /proc/sys is read-only here (a container? docker run --sysctl net.ipv4.conf.lo.%s=1)", loopbackConf, s.name, s.name))
			continue
		}
		if _, werr := s.f.WriteAt([]byte("1\n"), 0); werr != nil {
			errs = append(errs, fmt.Errorf("writing %s%s: %w", loopbackConf, s.name, werr))
			continue
		}
		turnedOn = append(turnedOn, s.name)
	}
	return turnedOn, errors.Join(errs...)
}

// restoreLoopback turns the named settings off again.
func (ns *namespace) restoreLoopback(names []string) error {
	var errs []error
	for _, s := range ns.lo {
		if s.f == nil || !slices.Contains(names, s.name) {
			continue
		}
		if _, err := s.f.WriteAt([]byte("0\n"), 0); err != nil {
			errs = append(errs, fmt.Errorf("firewall: writing %s%s: %w", loopbackConf, s.name, err))
		}
	}
	return errors.Join(errs...)
}

// closeLoopback closes lo's settings.
func (ns *namespace) closeLoopback() {
	for _, s := range ns.lo {
		if s.f != nil {
			s.f.Close()
		}
	}
}
