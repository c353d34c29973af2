package fastpath

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Events is one worker's BPF ring buffer, through which the program tells
// it of the flows it closed. The engine reads it from its own mapping of
// the ring, between batches: no system call, no allocation. (cilium/ebpf's
// ringbuf.Reader waits on epoll before each read, two system calls per
// drain, for a ring that is polled anyway.)
//
// The layout is the kernel's (kernel/bpf/ringbuf.c): a page with the
// consumer position, which the reader writes; a page with the producer
// position; then the data, mapped twice in a row so that a record that
// wraps around the end reads as one piece. Each record starts with an
// 8-byte header: its length, with a busy bit while the producer writes it
// and a discard bit, and is padded to 8 bytes.
type Events struct {
	m        *ebpf.Map
	consPage []byte
	rest     []byte
	cons     *uint64
	prod     *uint64
	data     []byte
	mask     uint64
}

const (
	ringBusy    = 1 << 31
	ringDiscard = 1 << 30
	ringHdr     = 8
)

// newEvents makes worker w's ring from spec and puts it in outer.
func newEvents(spec *ebpf.MapSpec, outer *ebpf.Map, w int) (*Events, error) {
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("fastpath: making the event ring of worker %d: %w", w, err)
	}
	if err := outer.Put(uint32(w), m); err != nil {
		m.Close()
		return nil, fmt.Errorf("fastpath: installing the event ring of worker %d: %w", w, err)
	}
	page := unix.Getpagesize()
	size := int(spec.MaxEntries)
	e := &Events{m: m, mask: uint64(size - 1)}
	if e.consPage, err = unix.Mmap(m.FD(), 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		m.Close()
		return nil, fmt.Errorf("fastpath: mapping the event ring of worker %d: %w", w, err)
	}
	if e.rest, err = unix.Mmap(m.FD(), int64(page), page+2*size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		e.close()
		return nil, fmt.Errorf("fastpath: mapping the event ring of worker %d: %w", w, err)
	}
	e.cons = (*uint64)(unsafe.Pointer(&e.consPage[0]))
	e.prod = (*uint64)(unsafe.Pointer(&e.rest[0]))
	e.data = e.rest[page:]
	return e, nil
}

// Pending reports whether the ring holds an event not read yet.
func (e *Events) Pending() bool { return atomic.LoadUint64(e.prod) != atomic.LoadUint64(e.cons) }

// Next reads the next event into ev, or reports false when there is none
// (or the next one is still being written).
func (e *Events) Next(ev *Event) bool {
	cons := atomic.LoadUint64(e.cons)
	for cons < atomic.LoadUint64(e.prod) {
		off := cons & e.mask
		n := atomic.LoadUint32((*uint32)(unsafe.Pointer(&e.data[off])))
		if n&ringBusy != 0 {
			return false
		}
		ln := uint64(n &^ (ringBusy | ringDiscard))
		next := cons + (ln+ringHdr+7)&^7
		ok := n&ringDiscard == 0 && ln == uint64(unsafe.Sizeof(*ev))
		if ok {
			*ev = *(*Event)(unsafe.Pointer(&e.data[off+ringHdr]))
		}
		atomic.StoreUint64(e.cons, next)
		if ok {
			return true
		}
		cons = next
	}
	return false
}

func (e *Events) close() {
	if e.rest != nil {
		_ = unix.Munmap(e.rest)
		e.rest = nil
	}
	if e.consPage != nil {
		_ = unix.Munmap(e.consPage)
		e.consPage = nil
	}
	e.m.Close()
}
