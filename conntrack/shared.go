package conntrack

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"
)

// clientSlots is the size of each per-client count array. Two arrays with
// independent hashes make a count-min sketch: a client's count is the
// smaller of its two slots, which two clients share in both only rarely,
// so one heavy client cannot push an unrelated one over the limit through
// a single collision.
const clientSlots = 1 << 16

// Shared holds what every worker's table shares: the flow limit and the
// per-client counts. Its methods are safe for concurrent use and take no
// lock.
type Shared struct {
	maxFlows  int64
	maxClient int32
	seed      uint64
	count     atomic.Int64
	clients   [2][clientSlots]atomic.Int32
}

// NewShared returns the shared state for tables holding at most maxFlows
// flows in all, and at most maxPerClient from one client address (0: no
// per-client limit).
func NewShared(maxFlows int, maxPerClient int) (*Shared, error) {
	if maxFlows < 1 {
		return nil, errors.New("conntrack: max flows must be at least 1")
	}
	if maxPerClient < 0 {
		return nil, errors.New("conntrack: max flows per client must not be negative")
	}
	return &Shared{maxFlows: int64(maxFlows), maxClient: int32(min(maxPerClient, 1<<31-1)), seed: rand.Uint64()}, nil
}

// SetLimits changes the limits for flows created from now on (a reload).
func (s *Shared) SetLimits(maxFlows, maxPerClient int) {
	atomic.StoreInt64(&s.maxFlows, int64(maxFlows))
	atomic.StoreInt32(&s.maxClient, int32(min(maxPerClient, 1<<31-1)))
}

// Len returns the flows in every table.
func (s *Shared) Len() int { return int(s.count.Load()) }

// Full reports whether the flow limit is reached: a SYN then gets a RST at
// once rather than a SYN cookie that no flow could follow.
func (s *Shared) Full() bool { return s.count.Load() >= atomic.LoadInt64(&s.maxFlows) }

// reserve counts a new flow against the limit. Reserve first and check
// after: workers create in parallel, and a load-then-add would let them
// overshoot.
func (s *Shared) reserve() bool {
	if s.count.Add(1) > atomic.LoadInt64(&s.maxFlows) {
		s.count.Add(-1)
		return false
	}
	return true
}

func (s *Shared) release() { s.count.Add(-1) }

func (s *Shared) slots(ip [4]byte) (*atomic.Int32, *atomic.Int32) {
	h := mix(uint64(ip[0])<<24 | uint64(ip[1])<<16 | uint64(ip[2])<<8 | uint64(ip[3]) ^ s.seed)
	return &s.clients[0][h&(clientSlots-1)], &s.clients[1][(h>>32)&(clientSlots-1)]
}

// clientAdd counts a flow of the client at ip, unless that would take it
// over the per-client limit.
func (s *Shared) clientAdd(ip [4]byte) bool {
	a, b := s.slots(ip)
	na, nb := a.Add(1), b.Add(1)
	if limit := atomic.LoadInt32(&s.maxClient); limit > 0 && min(na, nb) > limit {
		a.Add(-1)
		b.Add(-1)
		return false
	}
	return true
}

func (s *Shared) clientDone(ip [4]byte) {
	a, b := s.slots(ip)
	a.Add(-1)
	b.Add(-1)
}

// ClientFlows returns the flows counted for the client at ip (an upper
// bound: the count-min estimate).
func (s *Shared) ClientFlows(ip [4]byte) int {
	a, b := s.slots(ip)
	return int(min(a.Load(), b.Load()))
}

// mix is the splitmix64 finalizer.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// clientAddForce counts a flow of the client at ip whatever the limit: a
// flow handed over by another process exists already.
func (s *Shared) clientAddForce(ip [4]byte) {
	a, b := s.slots(ip)
	a.Add(1)
	b.Add(1)
}
