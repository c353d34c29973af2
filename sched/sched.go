// Package sched picks the backend of a new flow: smooth weighted round robin
// ("rr"), weighted least connections ("lc") and Maglev consistent hashing
// ("maglev", Eisenbud et al., NSDI 2016).
//
// The engine builds a Scheduler off the packet path whenever the usable
// backends of a service or their weights change (health, drain, reload) and
// publishes it through an atomic pointer; workers call Pick concurrently, and
// only for the client's SYN, never per packet of an existing flow. So a
// Scheduler is immutable after New except for its atomic counter: Pick takes
// no lock and allocates nothing.
package sched

import (
	"fmt"
	"math"
)

// Entry is one usable backend as a scheduler sees it.
type Entry struct {
	// ID is the engine's stable backend id; Pick returns it.
	ID uint32
	// Key is the backend's stable identity, e.g. "service/backend-name".
	// Maglev hashes it, so it must not depend on anything that changes
	// across restarts or reloads (a slice index, a pointer).
	Key string
	// Weight is the backend's relative share of new flows; it must be > 0.
	// A backend that should take no new flows (drained, unhealthy) is left
	// out of the set instead.
	Weight uint32
}

// Kind names a scheduling algorithm as configuration spells it.
type Kind string

// Scheduling algorithms.
const (
	// RoundRobin is nginx's smooth weighted round robin: weights 5,1,1 give
	// a,a,b,a,c,a,a, spreading a heavy backend's turns out instead of
	// sending it five flows in a row.
	RoundRobin Kind = "rr"
	// LeastConnections sends a new flow to the backend with the fewest live
	// flows per unit of weight.
	LeastConnections Kind = "lc"
	// Maglev maps a hash of the client address through a 65537-entry
	// lookup table, so a client keeps its backend while the set is
	// unchanged and only a small share of clients move when it changes.
	Maglev Kind = "maglev"
)

// LiveCounter reports a backend's live flows; weighted least connections
// reads it, the other kinds ignore it.
//
// It is an interface rather than a func so that an engine can pass a
// pointer to its own state without allocating a closure per Pick: convert
// a pointer-shaped value once (a pointer, a func value) and reuse it. A
// slice or struct value converted per call would allocate.
type LiveCounter interface {
	Live(id uint32) int64
}

// LiveFunc adapts a function to LiveCounter. Build the func value once, not
// per Pick, or the closure may be allocated on every call.
type LiveFunc func(id uint32) int64

// Live calls f.
func (f LiveFunc) Live(id uint32) int64 { return f(id) }

// Scheduler picks backends for new flows. Pick is safe for concurrent use,
// allocates nothing and takes no lock.
type Scheduler interface {
	// Pick returns the ID of the backend for a new flow, or ok == false if
	// the set is empty. h is the client's hash (HashAddr), used by maglev;
	// live reports live flows, used by lc (nil counts every backend as
	// idle, so lc rotates).
	Pick(h uint64, live LiveCounter) (id uint32, ok bool)
	// Len is the number of entries the scheduler was built from.
	Len() int
	// Kind is the algorithm.
	Kind() Kind
}

// New builds a scheduler of the given kind over entries. An empty set is
// valid: its Pick reports ok == false, which is what an engine needs while
// every backend of a service is down.
//
// rr and lc keep the order of entries (it decides who goes first); maglev
// orders them by Key, so its table depends only on the set, never on the
// order the engine lists it in.
func New(kind Kind, entries []Entry) (Scheduler, error) {
	switch kind {
	case RoundRobin, LeastConnections, Maglev:
	default:
		return nil, fmt.Errorf("sched: unknown scheduler %q: use %q, %q or %q", kind, RoundRobin, LeastConnections, Maglev)
	}
	if err := validate(kind, entries); err != nil {
		return nil, err
	}
	switch kind {
	case RoundRobin:
		return newRoundRobin(entries), nil
	case LeastConnections:
		return newLeastConn(entries), nil
	default:
		return newMaglev(entries), nil
	}
}

func validate(kind Kind, entries []Entry) error {
	if kind == Maglev && len(entries) > MaglevTableSize {
		return fmt.Errorf("sched: %d backends do not fit a Maglev table of %d entries: split the service", len(entries), MaglevTableSize)
	}
	if len(entries) > math.MaxInt32 {
		return fmt.Errorf("sched: %d backends is more than a scheduler can index", len(entries))
	}
	ids := make(map[uint32]string, len(entries))
	keys := make(map[string]struct{}, len(entries))
	for _, e := range entries {
		if e.Weight == 0 {
			return fmt.Errorf("sched: backend %q (id %d) has weight 0: leave a backend that should take no new flows out of the set", e.Key, e.ID)
		}
		if other, dup := ids[e.ID]; dup {
			return fmt.Errorf("sched: backends %q and %q share id %d: ids must be unique", other, e.Key, e.ID)
		}
		ids[e.ID] = e.Key
		if _, dup := keys[e.Key]; dup {
			return fmt.Errorf("sched: two backends share key %q: keys must be unique, maglev hashes them", e.Key)
		}
		keys[e.Key] = struct{}{}
	}
	return nil
}

// gcd is Euclid's; gcd(0, b) == b so it folds over a slice from 0.
func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
