// Package config loads, defaults, validates and diffs rawlb's YAML
// configuration file (rawlb -config /etc/rawlb/rawlb.yaml).
//
// A Config is the effective configuration: Parse fills in every default, so
// the engine never has to know which fields the file left out. In particular
// a service's Listen always carries an address (the file's bare port means
// "on address") and its DrainTimeout is already the inherited timeouts.drain
// when the file gave none.
//
// The package is deliberately free of engine imports: the command line builds
// a one-service Config from flags and checks it with the same Validate.
package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is one rawlb process: the balancer's address, global limits and
// timeouts, and the services it balances.
type Config struct {
	// Address is the balancer's own IPv4 address: the NAT source toward
	// backends and the listen address of services that give only a port.
	Address netip.Addr
	// Interfaces restricts rawlb to these interfaces; empty means every
	// interface that routes to a backend or receives a service's traffic.
	Interfaces []string
	// NATPorts are the source ports on Address used toward backends.
	NATPorts PortRange
	// Metrics is the host:port of the metrics, JSON API and status page;
	// "" turns them off.
	Metrics string
	// Pprof also serves /debug/pprof on Metrics.
	Pprof bool
	// LogLevel is one of slog's four named levels.
	LogLevel slog.Level
	// Workers is the number of packet workers; 0 lets rawlb choose.
	Workers int
	// RingFrames is the number of receive ring slots per worker; 0 lets
	// rawlb choose.
	RingFrames int
	// Firewall installs the nftables rules and reserves NATPorts.
	Firewall bool
	// Fastpath says whether established flows are forwarded in the
	// kernel (package fastpath): a tc program on every interface rawlb
	// listens on.
	Fastpath FastpathMode
	// StateDir holds the state that survives a restart.
	StateDir string
	// MaxFlows caps the flows tracked at once, over all services.
	MaxFlows int
	// MaxFlowsPerClient caps the flows of one client address; 0 lets rawlb
	// choose.
	MaxFlowsPerClient int
	// SYNCookies says when SYN cookies answer new connections.
	SYNCookies SYNCookieMode
	// SYNCookieThreshold is the number of half-open flows beyond which
	// cookies switch on in auto mode; 0 lets rawlb choose.
	SYNCookieThreshold int
	// RateLimits bound the packets rawlb originates itself.
	RateLimits RateLimits
	// Timeouts are the flow table's timers.
	Timeouts Timeouts
	// Services are balanced independently; names and listen addresses are
	// unique.
	Services []Service
}

// RateLimits are token-bucket rates, in packets per second, for the packets
// rawlb sends on its own rather than forwards. 0 means it sends none of them.
type RateLimits struct {
	Resets        int // RSTs: refused connections, packets of unknown flows
	ChallengeACKs int // RFC 5961 section 3.2 and 4.2 challenge ACKs
	SYNACKs       int // SYN-ACKs carrying a SYN cookie
}

// Timeouts are the flow table's timers.
type Timeouts struct {
	HalfOpen     time.Duration // a handshake that does not complete
	Established  time.Duration // an established flow without traffic
	Closing      time.Duration // a closed flow, kept for stray packets
	NATPortQuiet time.Duration // a freed NAT port rests this long before reuse toward the same backend
	Drain        time.Duration // default Service.DrainTimeout; 0 = flows end on their own
}

// Service is one balanced ip:port and its backends.
type Service struct {
	Name          string
	Listen        netip.AddrPort // always with an address once parsed
	Scheduler     Scheduler
	MaxFlows      int           // 0 = no per-service cap
	DrainTimeout  time.Duration // how long a draining backend's flows may live; 0 = until they end
	OnBackendDown OnBackendDown
	Health        Health
	Backends      []Backend
}

// Health is a service's health check, run against every backend.
type Health struct {
	Kind     HealthKind
	Interval time.Duration
	Timeout  time.Duration // at most Interval
	Rise     int           // passed checks in a row that bring a backend up
	Fall     int           // failed checks in a row that take it down
	Port     uint16        // 0 = the backend's own port

	// TCP checks only.
	Send   string // bytes written after connecting (UTF-8 text, or !!binary in the file)
	Expect string // a substring the reply must contain; "" = connecting is enough

	// HTTP checks only.
	Path   string // request path, starting with "/"
	Status int    // expected status code
	Host   string // Host header; "" = the backend's address
}

// Backend is one server of a service. Its identity across reloads is
// (service name, backend name).
type Backend struct {
	Name     string
	Address  string // host:port; host is an IPv4 literal or a DNS name the engine resolves
	Weight   int    // 0..MaxWeight; 0 takes no new flows
	Drain    bool   // takes no new flows; its flows go on
	Disabled bool   // takes no new flows and its flows are reset
	Backup   bool   // used only while no non-backup backend is usable
	MaxFlows int    // 0 = unlimited
}

// Scheduler picks the backend of a new flow.
type Scheduler string

// Schedulers.
const (
	RoundRobin       Scheduler = "rr"     // weighted round robin
	LeastConnections Scheduler = "lc"     // weighted least connections
	Maglev           Scheduler = "maglev" // consistent hashing (Maglev, NSDI 2016)
)

// HealthKind is the protocol of a health check.
type HealthKind string

// Health check kinds.
const (
	HealthTCP  HealthKind = "tcp"  // connect, optionally send and expect
	HealthHTTP HealthKind = "http" // GET a path, expect a status
)

// OnBackendDown says what happens to the flows of a backend whose health
// check fails.
type OnBackendDown string

// What to do with a dead backend's flows.
const (
	KeepFlows  OnBackendDown = "keep"  // let them go on (they may still work, or time out)
	ResetFlows OnBackendDown = "reset" // send both ends a RST so clients reconnect at once
)

// FastpathMode says whether rawlb forwards established flows in the
// kernel.
type FastpathMode string

// Fast path modes.
const (
	FastpathAuto FastpathMode = "auto" // if the kernel allows it (Linux 6.6, CAP_BPF); else one warning
	FastpathOn   FastpathMode = "on"   // or rawlb does not start
	FastpathOff  FastpathMode = "off"
)

// SYNCookieMode says when rawlb answers SYNs with cookies instead of
// tracking them.
type SYNCookieMode string

// SYN cookie modes.
const (
	SYNCookiesAuto SYNCookieMode = "auto" // beyond SYNCookieThreshold half-open flows
	SYNCookiesOn   SYNCookieMode = "on"
	SYNCookiesOff  SYNCookieMode = "off"
)

// MaxWeight is the largest backend weight. It keeps a weighted round-robin
// cycle and a Maglev ring's share computation small and exact.
const MaxWeight = 256

// Defaults of the fields a file may leave out.
const (
	DefaultNATPorts       = "40000-59999"
	DefaultStateDir       = "/run/rawlb"
	DefaultMaxFlows       = 1_000_000
	DefaultResetRate      = 1000
	DefaultChallengeACKs  = 1000
	DefaultSYNACKRate     = 200_000
	DefaultHalfOpen       = 30 * time.Second
	DefaultEstablished    = time.Hour
	DefaultClosing        = 10 * time.Second
	DefaultNATPortQuiet   = 60 * time.Second
	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
	DefaultHTTPPath       = "/"
	DefaultHTTPStatus     = 200
	DefaultWeight         = 1
	DefaultFirewall       = true
	DefaultSYNCookieMode  = SYNCookiesAuto
	DefaultFastpathMode   = FastpathAuto
	// Reset, because a backend the health checks call dead (fall checks
	// in a row, seconds) almost never serves its flows again before the
	// clients' own timeouts, which for idle or keep-alive connections are
	// minutes to hours: the users saw clients hang. A RST makes
	// them reconnect at once, to a live backend. keep is for backends
	// whose checks can fail while established connections still work (a
	// check on another port, an overloaded accept queue).
	DefaultOnBackendDown = ResetFlows
	DefaultScheduler     = RoundRobin
)

// Defaults returns a Config with every global default set and no address
// and no services. Parse starts from it; so should a Config built in Go.
func Defaults() Config {
	return Config{
		NATPorts:   PortRange{First: 40000, Last: 59999},
		LogLevel:   slog.LevelInfo,
		Firewall:   DefaultFirewall,
		StateDir:   DefaultStateDir,
		MaxFlows:   DefaultMaxFlows,
		SYNCookies: DefaultSYNCookieMode,
		Fastpath:   DefaultFastpathMode,
		RateLimits: RateLimits{Resets: DefaultResetRate, ChallengeACKs: DefaultChallengeACKs, SYNACKs: DefaultSYNACKRate},
		Timeouts: Timeouts{HalfOpen: DefaultHalfOpen, Established: DefaultEstablished,
			Closing: DefaultClosing, NATPortQuiet: DefaultNATPortQuiet},
	}
}

// DefaultHealth returns the health check of a service that gives none: a
// TCP connect every 2s.
func DefaultHealth() Health {
	return Health{Kind: HealthTCP, Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout,
		Rise: DefaultHealthRise, Fall: DefaultHealthFall}
}

// Service returns the service named name, or nil.
func (c *Config) Service(name string) *Service {
	for i := range c.Services {
		if c.Services[i].Name == name {
			return &c.Services[i]
		}
	}
	return nil
}

// Backend returns the backend named name, or nil.
func (s *Service) Backend(name string) *Backend {
	for i := range s.Backends {
		if s.Backends[i].Name == name {
			return &s.Backends[i]
		}
	}
	return nil
}

// PortRange is an inclusive range of TCP ports.
type PortRange struct {
	First, Last uint16
}

// ParsePortRange parses "first-last", both within 1-65535 and first <= last.
func ParsePortRange(s string) (PortRange, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("%q is not a port range: write first-last within 1-65535, e.g. %s", s, DefaultNATPorts)
	}
	r := PortRange{First: uint16(first), Last: uint16(last)}
	return r, r.check()
}

func (r PortRange) check() error {
	switch {
	case r.First == 0 && r.Last == 0:
		return fmt.Errorf("no ports: write first-last, e.g. %s", DefaultNATPorts)
	case r.First == 0:
		return fmt.Errorf("%v starts at port 0: the first port must be 1 or more", r)
	case r.Last < r.First:
		return fmt.Errorf("%v is empty: the first port must not exceed the last, e.g. %d-%d", r, r.Last, r.First)
	}
	return nil
}

// String formats r as "first-last", the form ParsePortRange reads.
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Contains reports whether port p lies in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// Len is the number of ports in r.
func (r PortRange) Len() int {
	if r.Last < r.First {
		return 0
	}
	return int(r.Last) - int(r.First) + 1
}
