package conntrack

import "math"

// neverFreed marks a port that has not been used since New, so it is never
// in quiet time.
const neverFreed = math.MinInt64

// natPorts is one worker's share of the NAT ports toward one backend: the
// ports p of the range with p % workers == worker, on a FIFO free list, so
// allocation always takes the least recently freed port. That is the whole
// quiet-time policy: a port freed a moment ago sits behind every port freed
// earlier, and comes out of the head only once all of those are in use
// again. The backend may still hold the old connection in TIME_WAIT (60 s on
// Linux), so reuse is put off as long as something else is free.
//
// Parallel slices instead of a slice of structs: 30 bytes per port instead
// of 40. Only the owning worker touches it.
type natPorts struct {
	port  []uint16 // ring of free ports
	freed []int64  // freed[i] is when port[i] was freed, or neverFreed
	head  int      // index of the least recently freed port
	n     int      // free ports in the ring
	// slot[(p-base)/step] is where port p sits in the ring, or -1 while it
	// is in use: take finds a given port at once. A scan of the ring made
	// the hand-off's import quadratic: 14,000 flows took over a second.
	slot []int32

	// mem[(p-base)/step] is what the backend's TIME_WAIT for port p
	// remembers of the previous flow on it (see Table.Create).
	mem  []portMemory
	base uint16 // the share's first port
	step uint16 // the number of workers
}

// portMemory is what a flow leaves behind on its NAT port for the next one.
type portMemory struct {
	ts     uint32 // the last TSval sent to the backend, if memTS
	seqEnd uint32 // the end of the last segment sent to the backend, if memSeq
	flags  uint8
}

const (
	memTS = 1 << iota
	memSeq
)

func newNATPorts(first, last uint16, worker, workers int) *natPorts {
	base := int(first) + ((worker-int(first))%workers+workers)%workers
	p := &natPorts{base: uint16(base), step: uint16(workers)}
	for q := base; q <= int(last); q += workers {
		p.port = append(p.port, uint16(q))
		p.freed = append(p.freed, neverFreed)
	}
	p.n = len(p.port)
	p.mem = make([]portMemory, len(p.port))
	p.slot = make([]int32, len(p.port))
	for i := range p.slot {
		p.slot[i] = int32(i)
	}
	return p
}

// index returns port's index in mem, or -1 if it is not in the share.
func (p *natPorts) index(port uint16) int {
	if port < p.base || (port-p.base)%p.step != 0 {
		return -1
	}
	if i := int(port-p.base) / int(p.step); i < len(p.mem) {
		return i
	}
	return -1
}

// get pops the least recently freed port. quiet reports that the port was
// freed less than quietNs before now (every free port is then in quiet time).
// ok is false when no port is free.
func (p *natPorts) get(now, quietNs int64) (port uint16, mem portMemory, quiet, ok bool) {
	if p.n == 0 {
		return 0, portMemory{}, false, false
	}
	port, freed := p.port[p.head], p.freed[p.head]
	if i := p.index(port); i >= 0 {
		mem = p.mem[i]
		p.slot[i] = -1
	}
	p.head++
	if p.head == len(p.port) {
		p.head = 0
	}
	p.n--
	return port, mem, freed != neverFreed && now-freed < quietNs, true
}

// take removes a given port from the free list (a flow restored from a
// hand-off keeps the port it had), reporting whether it was free.
func (p *natPorts) take(port uint16) bool {
	x := p.index(port)
	if x < 0 || p.slot[x] < 0 {
		return false
	}
	i := int(p.slot[x])
	// Move the head's entry into the hole, keeping the rest in order
	// well enough: the taken port was free, the head one rested longest.
	h := p.port[p.head]
	p.port[i], p.freed[i] = h, p.freed[p.head]
	if hx := p.index(h); hx >= 0 {
		p.slot[hx] = int32(i)
	}
	p.slot[x] = -1
	p.head++
	if p.head == len(p.port) {
		p.head = 0
	}
	p.n--
	return true
}

// put appends port to the tail, freed at now, remembering what the flow
// left. A port is freed only once per allocation, so the ring cannot
// overflow; the check makes a bug elsewhere lose a port rather than corrupt
// the ring.
func (p *natPorts) put(port uint16, now int64, mem portMemory) {
	x := p.index(port)
	if x >= 0 {
		p.mem[x] = mem
	}
	if p.n < len(p.port) {
		i := p.head + p.n
		if i >= len(p.port) {
			i -= len(p.port)
		}
		p.port[i], p.freed[i] = port, now
		if x >= 0 {
			p.slot[x] = int32(i)
		}
		p.n++
	}
}
