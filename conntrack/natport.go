package conntrack

import (
	"math"
	"sync"
)

// neverFreed marks a port that has not been used since New, so it is never
// in quiet time.
const neverFreed = math.MinInt64

// natPorts is the free list of NAT ports toward one backend: a FIFO ring, so
// allocation always takes the least recently freed port. That is the whole
// quiet-time policy: a port freed a moment ago sits behind every port freed
// earlier, and comes out of the head only once all of those are in use again.
// The backend may still hold the old connection in TIME_WAIT (60 s on Linux),
// and a SYN reusing the same 4-tuple could be answered with a stale ACK or
// dropped, so reuse is put off as long as something else is free.
//
// Two parallel slices instead of a slice of structs: 10 bytes per port instead
// of 16, about 200 KB per backend for the default 20,000-port range.
type natPorts struct {
	mu    sync.Mutex
	port  []uint16 // ring of free ports, len = size of the range
	freed []int64  // freed[i] is when port[i] was freed, or neverFreed
	head  int      // index of the least recently freed port
	n     int      // free ports in the ring

	// lastTS[port-first] is the last TCP timestamp sent to the backend from
	// this port (tsValid | TSval), or 0: what the backend's TIME_WAIT for
	// the port remembers (see Table.CreateWithTimestamp).
	lastTS []uint64
	first  uint16
}

func newNATPorts(first, last uint16) *natPorts {
	size := int(last) - int(first) + 1
	p := &natPorts{
		port:   make([]uint16, size),
		freed:  make([]int64, size),
		n:      size,
		lastTS: make([]uint64, size),
		first:  first,
	}
	for i := range size {
		p.port[i] = first + uint16(i)
		p.freed[i] = neverFreed
	}
	return p
}

// get pops the least recently freed port. quiet reports that the port was
// freed less than quietNs before now (every free port is then in quiet time).
// lastTS is what put recorded for the port. ok is false when no port is
// free.
func (p *natPorts) get(now, quietNs int64) (port uint16, lastTS uint64, quiet, ok bool) {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return 0, 0, false, false
	}
	port, freed := p.port[p.head], p.freed[p.head]
	lastTS = p.lastTS[port-p.first]
	p.head++
	if p.head == len(p.port) {
		p.head = 0
	}
	p.n--
	p.mu.Unlock()
	return port, lastTS, freed != neverFreed && now-freed < quietNs, true
}

// put appends port to the tail, freed at now, remembering the flow's last
// timestamp (0: none). Callers free a port only after
// removing its flow from the reverse index, and only once per allocation, so
// the ring cannot overflow; the check makes a bug elsewhere lose a port rather
// than corrupt the ring.
func (p *natPorts) put(port uint16, now int64, lastTS uint64) {
	p.mu.Lock()
	if i := int(port) - int(p.first); i >= 0 && i < len(p.lastTS) {
		p.lastTS[i] = lastTS
	}
	if p.n < len(p.port) {
		i := p.head + p.n
		if i >= len(p.port) {
			i -= len(p.port)
		}
		p.port[i], p.freed[i] = port, now
		p.n++
	}
	p.mu.Unlock()
}

// free returns how many ports are free.
func (p *natPorts) free() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}
