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
// Parallel slices instead of a slice of structs: 26 bytes per port instead
// of 32, about 520 KB per backend for the default 20,000-port range.
type natPorts struct {
	mu    sync.Mutex
	port  []uint16 // ring of free ports, len = size of the range
	freed []int64  // freed[i] is when port[i] was freed, or neverFreed
	head  int      // index of the least recently freed port
	n     int      // free ports in the ring

	// last[port-first] is what the backend's TIME_WAIT for the port
	// remembers of the previous flow on it (see Table.Create).
	last  []portMemory
	first uint16
}

func newNATPorts(first, last uint16) *natPorts {
	size := int(last) - int(first) + 1
	p := &natPorts{
		port:  make([]uint16, size),
		freed: make([]int64, size),
		n:     size,
		last:  make([]portMemory, size),
		first: first,
	}
	for i := range size {
		p.port[i] = first + uint16(i)
		p.freed[i] = neverFreed
	}
	return p
}

// portMemory is what a flow leaves behind on its NAT port for the next one.
type portMemory struct {
	ts     uint64 // recorded | the last TSval sent to the backend, or 0
	seqEnd uint64 // recorded | the end of the last segment sent to the backend, or 0
}

// get pops the least recently freed port. quiet reports that the port was
// freed less than quietNs before now (every free port is then in quiet time).
// last is what put recorded for the port. ok is false when no port is free.
func (p *natPorts) get(now, quietNs int64) (port uint16, last portMemory, quiet, ok bool) {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return 0, portMemory{}, false, false
	}
	port, freed := p.port[p.head], p.freed[p.head]
	last = p.last[port-p.first]
	p.head++
	if p.head == len(p.port) {
		p.head = 0
	}
	p.n--
	p.mu.Unlock()
	return port, last, freed != neverFreed && now-freed < quietNs, true
}

// put appends port to the tail, freed at now, remembering what the flow
// left (see portMemory). Callers free a port only after
// removing its flow from the reverse index, and only once per allocation, so
// the ring cannot overflow; the check makes a bug elsewhere lose a port rather
// than corrupt the ring.
func (p *natPorts) put(port uint16, now int64, last portMemory) {
	p.mu.Lock()
	if i := int(port) - int(p.first); i >= 0 && i < len(p.last) {
		p.last[i] = last
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
