package conntrack

import (
	"math/rand/v2"
	"testing"
)

// TestNATPortsModel drives a worker's share of NAT ports with random get,
// take and put against a model (a FIFO of free ports): the same ports come
// out in the same order, take finds exactly the free ones, and the position
// index never points at the wrong slot.
func TestNATPortsModel(t *testing.T) {
	p := newNATPorts(40000, 40999, 1, 3)
	var model []uint16 // free ports, least recently freed first
	model = append(model, p.port...)
	inUse := map[uint16]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := 0; step < 200_000; step++ {
		switch op := rng.IntN(3); {
		case op == 0: // get
			port, _, _, ok := p.get(0, 0)
			if ok != (len(model) > 0) {
				t.Fatalf("step %d: get ok=%v with %d free", step, ok, len(model))
			}
			if ok {
				if port != model[0] {
					t.Fatalf("step %d: get %d, want %d", step, port, model[0])
				}
				model = model[1:]
				inUse[port] = true
			}
		case op == 1: // take a random port of the share, free or not
			port := p.base + uint16(rng.IntN(len(p.mem)))*p.step
			free := -1
			for i, m := range model {
				if m == port {
					free = i
				}
			}
			if got := p.take(port); got != (free >= 0) {
				t.Fatalf("step %d: take(%d) = %v, free %v", step, port, got, free >= 0)
			}
			if free >= 0 {
				// take moves the head into the hole.
				if free != 0 {
					model[free] = model[0]
				}
				model = model[1:]
				inUse[port] = true
			}
		default: // put back a port in use
			for port := range inUse {
				p.put(port, int64(step), portMemory{})
				model = append(model, port)
				delete(inUse, port)
				break
			}
		}
		if p.n != len(model) {
			t.Fatalf("step %d: %d free, model %d", step, p.n, len(model))
		}
	}
	for k := 0; k < p.n; k++ {
		i := (p.head + k) % len(p.port)
		if got := p.slot[p.index(p.port[i])]; int(got) != i {
			t.Fatalf("port %d at slot %d, index says %d", p.port[i], i, got)
		}
	}
}
