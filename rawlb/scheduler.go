package rawlb

import "sync/atomic"

// scheduler picks the backend for a new flow among those that are usable:
// healthy and with a known next-hop MAC. It runs only for SYNs that start a
// flow, never for the packets of an existing one.
type scheduler struct {
	algo   Algorithm
	n      int
	usable func(i int) bool
	live   func(i int) int
	next   atomic.Uint64
}

// pick returns a backend index, or -1 if none is usable.
func (s *scheduler) pick() int {
	if s.algo == LeastConnections {
		return s.leastConnections()
	}
	// Every backend looked at, usable or not, takes one counter step: n
	// consecutive flows over n usable backends land on each once, and
	// with one down the next flow goes on from the one after the
	// backend chosen, so the rest share its load evenly instead of its
	// successor taking all of it.
	for k := 0; k < s.n; k++ {
		i := int((s.next.Add(1) - 1) % uint64(s.n))
		if s.usable(i) {
			return i
		}
	}
	return -1
}

// leastConnections returns the usable backend with the fewest live flows;
// ties go round robin, so equal backends share new flows evenly.
func (s *scheduler) leastConnections() int {
	best, bestLive := -1, 0
	start := int((s.next.Add(1) - 1) % uint64(s.n))
	for k := 0; k < s.n; k++ {
		i := (start + k) % s.n
		if !s.usable(i) {
			continue
		}
		if l := s.live(i); best < 0 || l < bestLive {
			best, bestLive = i, l
		}
	}
	return best
}
