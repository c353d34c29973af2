package conntrack

// Offloading: the engine may hand an established flow to a fast path that
// forwards and tracks its segments elsewhere (package fastpath, in the
// kernel). The table keeps the flow and its NAT port as before; it only
// needs to know which flows are away, to take them back before it removes
// them and to ask for their last-seen time before it expires them.

// Offloader is the engine's fast path, as the table sees it.
type Offloader interface {
	// Release takes f back for good, with its final state: the table is
	// about to remove it (expired, reset, or replaced by a new SYN).
	Release(f *Flow)
	// Refresh brings f.LastSeen up to date: the sweep found f idle by its
	// own clock, which does not move while the fast path has the flow.
	Refresh(f *Flow)
}

// SetOffloader tells the table about the engine's fast path.
func (t *Table) SetOffloader(o Offloader) { t.off = o }

// FlowID returns an id for f that no other flow of any worker's table has
// while f lives: the worker's number in the top 8 bits, f's slab slot in the
// other 24. It reports false for a slot beyond 2^24 (such a flow is not
// offloaded).
func (t *Table) FlowID(f *Flow) (uint32, bool) {
	if f.idx >= 1<<24 || t.worker >= 1<<8 {
		return 0, false
	}
	return uint32(t.worker)<<24 | f.idx, true
}

// FlowByID returns the live flow FlowID gave id to, or nil: an id of
// another worker's, or of a slot that holds no flow now.
func (t *Table) FlowByID(id uint32) *Flow {
	i := id & (1<<24 - 1)
	if id>>24 != uint32(t.worker) || i >= t.used {
		return nil
	}
	if f := t.flow(i); f.state != StateNone {
		return f
	}
	return nil
}

// Offloaded reports whether the fast path has f.
func (f *Flow) Offloaded() bool { return f.flags&flagOffload != 0 }

// SetOffloaded records that the fast path has f (or no longer has it).
func (f *Flow) SetOffloaded(on bool) {
	if on {
		f.flags |= flagOffload
	} else {
		f.flags &^= flagOffload
	}
}

// Window returns side d's window state, for the fast path to go on from.
func (f *Flow) Window(d Direction) PeerState { return f.peers[d&1].state() }

// SetWindow restores side d's window state from the fast path's copy.
func (f *Flow) SetWindow(d Direction, s PeerState) { f.peers[d&1] = s.peer() }

// BackendNote returns what NoteToBackend recorded: the last TSval (if ts)
// and the furthest sequence end sent toward the backend.
func (f *Flow) BackendNote() (tsval uint32, ts bool, seqEnd uint32) {
	return f.tsLast, f.flags&flagTS != 0, f.seqEnd
}
