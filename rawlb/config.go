// Package rawlb is the engine of the balancer: it wires the AF_PACKET ring,
// the flow table, the scheduler, health checks, firewall rules and metrics
// together. The per-packet loop lives in worker.go and is kept to
// receive batch -> classify -> look up or create flow -> rewrite -> send
// batch; everything else runs beside it, never inside it.
package rawlb

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Backend is one server behind the balancer.
type Backend struct {
	Name string         // as given on the command line, for logs and metric labels
	Addr netip.AddrPort // resolved once at start
}

// Algorithm chooses the backend of a new flow.
type Algorithm string

// Scheduling algorithms.
const (
	RoundRobin       Algorithm = "rr"
	LeastConnections Algorithm = "lc"
)

// Config is everything the balancer needs; cmd/rawlb fills it from flags.
type Config struct {
	SrcIP    netip.Addr // the balancer's own IPv4 address: clients connect to it, backends see connections from it
	Port     uint16     // the balanced port on SrcIP
	Backends []Backend
	Iface    string // interface to receive and send on; "" = the one holding SrcIP
	Algo     Algorithm

	NATFirst, NATLast uint16        // NAT source ports toward backends
	PortQuiet         time.Duration // a freed NAT port rests this long before reuse toward the same backend
	IdleTimeout       time.Duration // established flows without traffic expire after this
	HalfOpenTimeout   time.Duration
	ClosingTimeout    time.Duration
	MaxFlows          int

	HCInterval, HCTimeout time.Duration
	HCRise, HCFall        int

	MetricsAddr string // Prometheus listen address, "" = off
	Pprof       bool   // also serve net/http/pprof on MetricsAddr, to profile the running daemon
	Firewall    bool   // install and remove the nftables rules and reserved ports ourselves
	Workers     int    // packet workers (AF_PACKET fanout); 0 = one per four CPUs, 1 to 4
	RingFrames  int    // receive ring slots per worker; 0 = the ring package's default

	Logger *slog.Logger
}

// Validate reports the first thing wrong with c as a one-line error.
func (c *Config) Validate() error {
	switch {
	case !c.SrcIP.Is4():
		return fmt.Errorf("source address %v is not an IPv4 address", c.SrcIP)
	case c.Port == 0:
		return errors.New("port must be between 1 and 65535")
	case len(c.Backends) == 0:
		return errors.New("at least one backend is needed")
	case c.Algo != RoundRobin && c.Algo != LeastConnections:
		return fmt.Errorf("unknown algorithm %q: use rr or lc", c.Algo)
	case c.NATFirst == 0 || c.NATLast < c.NATFirst:
		return fmt.Errorf("NAT port range %d-%d is empty or starts at 0", c.NATFirst, c.NATLast)
	case c.Port >= c.NATFirst && c.Port <= c.NATLast:
		return fmt.Errorf("port %d lies inside the NAT port range %d-%d", c.Port, c.NATFirst, c.NATLast)
	case c.MaxFlows <= 0:
		return errors.New("max flows must be positive")
	case c.IdleTimeout <= 0 || c.HalfOpenTimeout <= 0 || c.ClosingTimeout <= 0:
		return errors.New("timeouts must be positive")
	case c.HCInterval <= 0 || c.HCTimeout <= 0 || c.HCRise <= 0 || c.HCFall <= 0:
		return errors.New("health-check interval, timeout, rise and fall must be positive")
	}
	seen := map[netip.AddrPort]string{}
	for _, b := range c.Backends {
		if !b.Addr.Addr().Is4() || b.Addr.Port() == 0 {
			return fmt.Errorf("backend %s: need an IPv4 address and a port", b.Name)
		}
		if prev, dup := seen[b.Addr]; dup {
			return fmt.Errorf("backend %s is the same as %s (%v)", b.Name, prev, b.Addr)
		}
		seen[b.Addr] = b.Name
	}
	return nil
}
