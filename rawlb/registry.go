package rawlb

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/sched"
)

// Admin states of a backend, set by the configuration or the API.
const (
	adminActive   = iota // takes new flows when healthy
	adminDrain           // takes no new flows; its flows go on (until the drain timeout)
	adminDisabled        // takes no new flows; its flows are reset
	adminRemoved         // gone from the configuration; its flows drain as for adminDrain
)

var adminNames = [...]string{"active", "drain", "disabled", "removed"}

// hop is how frames reach a backend: the interface and the MACs of the
// next hop and of the interface itself. Replaced whole by the control plane.
type hop struct {
	ifindex int32
	dst     [6]byte
	src     [6]byte
}

// Backend is one server of a service. Its identity is (service name,
// backend name): a reload that keeps the name keeps the Backend, and with
// it the flows, counters and health. The packet path reaches it through its
// id, an index into the registry's backend table.
type Backend struct {
	ID      uint32
	Service *Service
	Name    string
	Addr    conntrack.Endpoint // resolved
	Config  config.Backend

	weight   atomic.Int32
	admin    atomic.Int32
	backup   atomic.Bool
	maxFlows atomic.Int64
	healthy  atomic.Bool
	// down is set once health checks failed it (not before the first).
	down atomic.Bool
	// checkWhy is why the last health check failed, routeWhy why rawlb
	// cannot send to the backend; nil when there is nothing to say. Two
	// fields for two writers (health checks, next-hop refresh), so neither
	// overwrites or clears the other's reason.
	checkWhy, routeWhy atomic.Pointer[string]
	// hop is nil while rawlb cannot send to the backend.
	hop atomic.Pointer[hop]
	// drainUntil is the table-clock time after which the flows of a
	// draining or removed backend are reset; 0 means never.
	drainUntil atomic.Int64
	// synAckOptions is set once the fast path gave back a flow of this
	// backend for its SYN-ACK's options, a layout the program does not
	// read: its flows then go with the SYN-ACK, not with the SYN.
	synAckOptions atomic.Bool

	stats []backendStats // per worker
}

// backendStats are one worker's counters for one backend.
type backendStats struct {
	packets [2]atomic.Uint64 // by direction
	bytes   [2]atomic.Uint64
	flows   atomic.Uint64 // flows created
	_       [64]byte
}

// Service is one balanced listen address and its backends.
type Service struct {
	Name   string
	VIP    conntrack.Endpoint
	Config config.Service

	backends atomic.Pointer[[]*Backend] // in configuration order
	sched    atomic.Pointer[schedHolder]
	// rebuildMu serialises rebuilds. Health transitions of different
	// backends arrive on their own checking goroutines; without it a
	// rebuild that read the backends before another's transition could
	// publish last and leave a healthy backend out until the next change
	// (TestConcurrentRebuildsKeepTheLatestState: 4 of 8 within 300 rounds).
	rebuildMu sync.Mutex
	// wscale is the window scale the backends announce, learnt from their
	// SYN-ACKs: a SYN cookie SYN-ACK announces the same, so that windows
	// need no translation once the backend answers.
	wscale atomic.Int32

	// removed is set once a reload dropped the service: its flows go on,
	// new connections are refused, until its last flow ends.
	removed atomic.Bool

	stats []serviceStats // per worker
}

// schedHolder lets an interface value be published with an atomic pointer.
type schedHolder struct {
	s sched.Scheduler
	// stable is, for a maglev service, a table over every configured
	// primary backend, usable or not; s is over the usable ones only. A
	// client goes to its stable backend while that one is usable and to
	// s's choice otherwise, so a backend going down, draining or coming
	// back moves only its own clients. One table rebuilt over the usable
	// set would also move about 0.3% of the others' (Maglev's population
	// shifts when a backend stops competing: sched's
	// TestMaglevMinimalDisruption measures it), breaking affinity for
	// clients whose backend never changed.
	stable sched.Scheduler
}

// serviceStats are one worker's counters for one service.
type serviceStats struct {
	refused [numRefusals]atomic.Uint64
	_       [64]byte
}

// Refusal reasons: why a SYN got a RST instead of a backend.
const (
	refuseNoBackend    = iota // no usable backend
	refuseTableFull           // max_flows reached
	refuseServiceFull         // the service's max_flows reached
	refuseClientLimit         // the client address holds its share
	refuseNATExhausted        // no free NAT port toward the backend
	numRefusals
)

var refusalNames = [numRefusals]string{"no_backend", "table_full", "service_full", "client_limit", "nat_exhausted"}

// registry is what the workers read through one atomic pointer: the
// services by listen address and the backends by id. A reload publishes a
// new one; Backends and Services that survive it are the same values.
type registry struct {
	services map[conntrack.Endpoint]*Service
	list     []*Service                      // in configuration order
	backends [conntrack.MaxBackends]*Backend // by id; removed ones stay while they have flows
	vips     []netip.AddrPort                // every listen address, for the filters
}

// service returns the service listening on vip, or nil.
func (r *registry) service(vip conntrack.Endpoint) *Service { return r.services[vip] }

// usable reports whether b may take a new flow, and why not.
func (b *Backend) usable() (bool, string) {
	switch b.admin.Load() {
	case adminDrain:
		return false, "draining"
	case adminDisabled:
		return false, "disabled"
	case adminRemoved:
		return false, "removed"
	}
	if b.weight.Load() == 0 {
		return false, "weight 0"
	}
	if !b.healthy.Load() {
		if w := b.checkWhy.Load(); w != nil {
			return false, *w
		}
		return false, "health check failing"
	}
	if b.hop.Load() == nil {
		if w := b.routeWhy.Load(); w != nil {
			return false, *w
		}
		return false, "no route or next hop"
	}
	return true, ""
}

// rebuild makes a new scheduler for s from the backends usable now:
// the primaries if any is usable, else the backups; for maglev also the
// stable table over every configured primary. It runs off the packet
// path, whenever health, admin state, weight or the backend set changes.
func (s *Service) rebuild() error {
	s.rebuildMu.Lock()
	defer s.rebuildMu.Unlock()
	var primary, backup, members []sched.Entry
	for _, b := range *s.backends.Load() {
		if s.Config.Scheduler == config.Maglev && b.admin.Load() != adminRemoved && !b.backup.Load() && b.weight.Load() > 0 {
			members = append(members, sched.Entry{ID: b.ID, Key: s.Name + "/" + b.Name, Weight: uint32(b.weight.Load())})
		}
		if ok, _ := b.usable(); !ok {
			continue
		}
		e := sched.Entry{ID: b.ID, Key: s.Name + "/" + b.Name, Weight: uint32(b.weight.Load())}
		if b.backup.Load() {
			backup = append(backup, e)
		} else {
			primary = append(primary, e)
		}
	}
	entries := primary
	if len(entries) == 0 {
		entries = backup
	}
	sc, err := sched.New(sched.Kind(s.Config.Scheduler), entries)
	if err != nil {
		return fmt.Errorf("service %s: %w", s.Name, err)
	}
	h := &schedHolder{s: sc}
	if len(members) > 0 {
		if h.stable, err = sched.New(sched.Maglev, members); err != nil {
			return fmt.Errorf("service %s: %w", s.Name, err)
		}
	}
	s.sched.Store(h)
	return nil
}

// live counts a backend's live flows over every worker's table.
type liveCounter struct{ tables []*conntrack.Table }

// Live implements sched.LiveCounter.
func (l *liveCounter) Live(id uint32) int64 {
	var n int64
	for _, t := range l.tables {
		n += t.Live(id)
	}
	return n
}

// serviceFlows counts the flows of svc's backends in any state.
func (l *liveCounter) serviceFlows(svc *Service) int64 {
	var n int64
	for _, be := range *svc.backends.Load() {
		n += l.flows(be.ID)
	}
	return n
}

// flows counts a backend's flows in any state over every worker's table.
func (l *liveCounter) flows(id uint32) int64 {
	var n int64
	for _, t := range l.tables {
		n += t.Flows(id)
	}
	return n
}
