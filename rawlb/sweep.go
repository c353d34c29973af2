package rawlb

import (
	"time"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
)

// housekeep sweeps a slice of the worker's flow table: a twentieth of it,
// at least 4096 slots, every sweepEvery, so that every flow is looked at
// about once a second however big the table, and a small table is swept
// whole each time (its flows then outlive their timeouts by at most
// sweepEvery, which matters when a small NAT range turns over fast). An
// idle worker waits longer between sweeps (see sweepEvery) and sweeps as
// much more each time, so flows are still looked at about once a second.
func (w *worker) housekeep() {
	if w.busy {
		w.wait = sweepEvery
	} else {
		w.wait = min(2*w.wait, idleWaitMax)
	}
	w.busy = false
	w.nextSweep = w.now + int64(w.wait)
	if r := w.dp.rates.Load(); r != nil && r != w.rates {
		w.setRates(r)
	}
	if w.dp.fast != nil {
		w.fastHousekeep()
	}
	budget := min(max(4096, w.table.Slots()/20)*int(w.wait/sweepEvery), w.table.Slots())
	w.table.Sweep(w.now, budget, w)
	w.flush()
	_ = w.link.SetReadDeadline(time.Now().Add(w.wait))
}

// Keep implements conntrack.Judge: whether a live flow that has not
// expired stays. It goes when its backend was disabled, when a draining or
// removed backend's drain timeout passed, or when its backend is down and
// the service resets a dead backend's flows. Both ends then get a RST, so
// neither hangs until its own timeout.
func (w *worker) Keep(f *conntrack.Flow) bool {
	be := w.reg.backends[f.Backend]
	if be == nil {
		return false
	}
	if !f.State().Live() {
		return true
	}
	switch be.admin.Load() {
	case adminDisabled:
		return !w.resetFlow(f)
	case adminDrain, adminRemoved:
		if u := be.drainUntil.Load(); u != 0 && w.now > u {
			return !w.resetFlow(f)
		}
	}
	if be.Service.Config.OnBackendDown == config.ResetFlows && be.down.Load() {
		return !w.resetFlow(f)
	}
	return true
}

// Expired implements conntrack.Judge. A handshake that expired after the
// backend answered it (a spoofed client never sends the last ACK) leaves
// the backend a half-open connection; a RST frees it at once.
func (w *worker) Expired(f *conntrack.Flow) {
	if f.State() == conntrack.StateSynRecv && w.bucket[genReset].allow(w.now) {
		w.stats.sent[genReset].Add(1)
		w.resetBackendUnlimited(f)
	}
}

// resetFlow sends both ends of f a RST and reports true, or false when the
// reset rate limit has no two tokens left (the flow then waits for a later
// sweep). With resets turned off altogether the flow just goes.
func (w *worker) resetFlow(f *conntrack.Flow) bool {
	b := &w.bucket[genReset]
	if b.rate == 0 {
		return true
	}
	if !b.allowN(w.now, 2) {
		w.stats.limited[genReset].Add(1)
		return false
	}
	w.stats.sent[genReset].Add(2)
	w.stats.resetFlows.Add(1)
	w.resetClientUnlimited(f)
	w.resetBackendUnlimited(f)
	return true
}
