package rawlb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/handoff"
	"github.com/rawlb/rawlb/ring"
	"github.com/rawlb/rawlb/syncookie"
)

// Prepare runs the checks that must come before traffic is taken: the
// next hops and a first round of health checks, so that the first SYN
// already sees each backend's real state (it also makes the kernel resolve
// the backends' MACs). Run calls it if the caller did not; an upgrade's
// child calls it before telling the parent it is ready, so that the
// forwarding gap holds none of it.
func (b *Balancer) Prepare(ctx context.Context) {
	if b.prepared {
		return
	}
	b.prepared = true
	b.refreshRoutes()
	b.health.CheckOnce(ctx)
	b.refreshRoutes()
}

// snapshot returns the state to hand a successor, with the workers
// stopped.
func (b *Balancer) snapshot() *handoff.State {
	st := &handoff.State{
		Fingerprint: b.cfg.Fingerprint(), Workers: len(b.tables),
		NATFirst: b.dp.natFirst, NATLast: b.dp.natLast,
		CookieKeys: b.dp.jar.Keys(), ISNKeys: b.isnJar.Keys(),
	}
	for _, t := range b.tables {
		now := t.Now()
		t.Range(func(f *conntrack.Flow) { st.Flows = append(st.Flows, f.Export(now)) })
		st.Ports = append(st.Ports, t.ExportPorts(now)...)
	}
	st.Written = time.Now()
	return st
}

// takeOver imports a predecessor's flows and NAT port memory. A flow of a
// backend that is no longer configured is imported toward a removed
// backend whose drain is over, so that the first sweep resets it: its
// client learns at once instead of hanging.
func (b *Balancer) takeOver(st *handoff.State) {
	if j, err := syncookie.FromKeys(st.CookieKeys); err == nil {
		b.dp.jar = j
	}
	if j, err := syncookie.FromKeys(st.ISNKeys); err == nil {
		b.isnJar = j
	}
	reg := b.dp.reg.Load()
	byAddr := map[conntrack.ClientKey]*Backend{} // (VIP, backend address) -> backend
	for _, svc := range reg.list {
		for _, be := range *svc.backends.Load() {
			byAddr[conntrack.ClientKey{Client: be.Addr, VIP: svc.VIP}] = be
		}
	}
	ghosts := map[conntrack.ClientKey]*Backend{}
	imported, failed, reset := 0, 0, 0
	next := *reg
	for _, fs := range st.Flows {
		k := conntrack.ClientKey{Client: fs.Backend, VIP: fs.VIP}
		be := byAddr[k]
		if be == nil {
			be = ghosts[k]
			if be == nil {
				svc := reg.services[fs.VIP]
				if svc == nil {
					failed++
					continue
				}
				id, err := b.ids.get()
				if err != nil {
					failed++
					continue
				}
				be = &Backend{ID: id, Service: svc, Name: "(removed) " + fs.Backend.String(), Addr: fs.Backend}
				be.allocStats(len(b.tables))
				be.admin.Store(adminRemoved)
				be.drainUntil.Store(1) // long past: reset at the first sweep
				ghosts[k] = be
				next.backends[id] = be
			}
			reset++
		}
		t := b.tables[conntrack.Owner(fs.NATPort, len(b.tables))]
		if _, err := t.Import(fs, be.ID, t.Now()); err != nil {
			failed++
			continue
		}
		imported++
	}
	for _, ps := range st.Ports {
		t := b.tables[conntrack.Owner(ps.Port, len(b.tables))]
		_ = t.ImportPort(ps, t.Now())
	}
	// Ghost backends need a next hop for their RSTs: reach them as the
	// routes say, like any backend.
	var ghostList []*Backend
	for _, g := range ghosts {
		ghostList = append(ghostList, g)
	}
	if len(ghostList) > 0 {
		b.nb.refresh(ghostList)
	}
	b.dp.reg.Store(&next)
	b.log.Info("restart state taken over", "flows", imported, "of_removed_backends", reset, "not_taken", failed, "ports", len(st.Ports))
}

// TakeOver completes an upgrade in the child: the parent's rings, state and
// firewall. Call it after the child told the parent it is ready and
// received the state; Run then forwards at once.
func (b *Balancer) TakeOver(child *handoff.Child) error {
	st := child.State
	if st == nil {
		return errors.New("upgrade: no state received")
	}
	if st.NATFirst != b.dp.natFirst || st.NATLast != b.dp.natLast || st.Fingerprint != b.cfg.Fingerprint() {
		return fmt.Errorf("upgrade: the parent's configuration differs (address, NAT ports or listen addresses): restart instead")
	}
	reg := b.dp.reg.Load()
	o := b.ours(reg)
	filter, err := o.socketFilter()
	if err != nil {
		return err
	}
	for i, r := range st.Rings {
		s, err := ring.Inherit(r.FD, ring.Config{Frames: r.Frames, FrameSize: r.FrameSize}, r.Head)
		if err != nil {
			return fmt.Errorf("upgrade: inheriting ring %d: %w", i, err)
		}
		if err := s.SetFilter(filter); err != nil {
			return err
		}
		b.socks = append(b.socks, s)
	}
	if prog, err := o.fanoutProgram(len(b.socks)); err == nil && len(b.socks) > 1 {
		if err := b.socks[0].SetFanoutProgram(prog); err != nil {
			return err
		}
	}
	if b.cfg.Fastpath != config.FastpathOff {
		// The parent's sockets must be bound as the fast path needs
		// them (ring.Config.IPOnly); a bind cannot change in a fanout
		// group.
		if ipOnly, err := b.socks[0].IPOnly(); err != nil || !ipOnly {
			if b.cfg.Fastpath == config.FastpathOn {
				return errors.New("upgrade: the inherited ring sockets see frames before tc (the parent ran without the fast path): restart instead to turn it on")
			}
			b.log.Warn("fastpath: off: the inherited ring sockets see frames before tc (the parent ran without it); a restart turns it on")
		} else if err := b.maybeStartFast(len(b.socks)); err != nil {
			return fmt.Errorf("upgrade: %w", err)
		}
	}
	b.takeOver(st)
	if b.cfg.Firewall {
		if b.fw, err = b.startFirewall(b.cfg); err != nil {
			return fmt.Errorf("upgrade: adopting the firewall: %w", err)
		}
	}
	b.makeWorkers()
	return nil
}

// Upgrade replaces this process with the binary now at its path, keeping
// every connection: the new process starts with the ring sockets (and the
// metrics listener) inherited, gets ready, and this one stops forwarding at
// a batch boundary, hands over its state and exits once the new one
// forwards. If the new process fails before the hand-over, this one goes
// on and Upgrade returns the error.
func (b *Balancer) Upgrade(args []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var files []*os.File
	for _, s := range b.socks {
		files = append(files, os.NewFile(uintptr(s.FD()), "ring"))
	}
	var extra []*os.File
	if b.ln != nil {
		if f, err := b.ln.File(); err == nil {
			extra = append(extra, f)
		}
	}
	p, err := handoff.StartChild("", args, files, extra)
	for _, f := range extra {
		f.Close()
	}
	if err != nil {
		return err
	}
	b.log.Info("upgrade: new process started, waiting for it to be ready")
	if err := p.WaitReady(60 * time.Second); err != nil {
		b.log.Error("upgrade failed: this process goes on", "err", err)
		return err
	}
	// From here on the child takes over: stop forwarding and hand over.
	stopped := time.Now()
	b.stopWorkers(b.workersDone)
	b.stopFast()
	st := b.snapshot()
	st.Written = stopped
	for _, s := range b.socks {
		st.Rings = append(st.Rings, handoff.Ring{Frames: s.Frames(), FrameSize: s.FrameSize(), Head: s.Head()})
	}
	if b.fw != nil {
		if err := b.fw.Detach(); err != nil {
			b.log.Warn("upgrade: detaching the firewall", "err", err)
		}
	}
	if err := p.Send(st); err != nil {
		p.Abort()
		b.resume()
		return fmt.Errorf("upgrade: handing the state over failed, this process goes on: %w", err)
	}
	if err := p.WaitForwarding(30 * time.Second); err != nil {
		// The child has the state but does not forward: it cannot be
		// told apart from a slow one, so stop it and go on here, where
		// the flows are intact.
		p.Abort()
		b.resume()
		return fmt.Errorf("upgrade: the new process did not confirm forwarding, this process goes on: %w", err)
	}
	b.log.Info("upgrade: the new process forwards; exiting", "stopped_for", time.Since(stopped).Round(time.Microsecond))
	b.Stop(stopUpgrade)
	return nil
}

// resume restarts forwarding after an upgrade that failed past the point
// of no return for the parent's own workers.
func (b *Balancer) resume() {
	if b.fw != nil {
		if fw, err := b.startFirewall(b.cfg); err != nil {
			b.log.Error("taking the firewall back failed", "err", err)
		} else {
			b.fw = fw
		}
	}
	b.resumeFast()
	b.startWorkers(b.errc)
}
