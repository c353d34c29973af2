package rawlb

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/rawlb/rawlb/config"
	"github.com/rawlb/rawlb/firewall"
)

// Reload applies cfg as a difference to what runs, without losing a
// connection:
//   - flows to kept backends are untouched (a backend is kept when its
//     service and name are, with the same resolved address);
//   - an added backend takes new flows at once (once its first health
//     check passes);
//   - a removed backend, or one set to drain, takes no new flows, and its
//     flows go on until they end, or until the service's drain_timeout,
//     after which both ends get a RST;
//   - weights, max_flows and the scheduler apply to new flows;
//   - services are added and removed, the firewall's drops for an added
//     one installed before the socket filters let its traffic in, so the
//     host's stack never answers in between;
//   - names are resolved again.
//
// An invalid configuration, or one that changes what needs a restart,
// changes nothing: the error says why, and it is counted.
func (b *Balancer) Reload(cfg *config.Config) (err error) {
	defer func() {
		if err != nil {
			b.ReloadFailed(err)
		} else {
			b.reloads.Add(1)
			b.lastReloadErr.Store(nil)
		}
	}()
	if err := cfg.Validate(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := config.Diff(b.cfg, cfg)
	if err := ch.RestartError(); err != nil {
		return err
	}
	for _, g := range ch.Global {
		switch g.Field {
		case "metrics", "pprof", "firewall":
			return fmt.Errorf("%s changed (%v -> %v): that needs a restart", g.Field, g.Old, g.New)
		}
	}
	// An unchanged file is applied all the same: that undoes what the API
	// changed (drain, enable, disable last until the next reload, as the
	// README says) and resolves the names again.
	if ch.Empty() {
		b.log.Info("reload: the configuration did not change; applying it again (undoes the API's changes, resolves names)")
	}
	resolved, err := resolveBackends(cfg)
	if err != nil {
		return err
	}
	old := b.dp.reg.Load()
	reg, removed, err := b.build(old, cfg, resolved)
	if err != nil {
		return err
	}
	// Services removed with flows left stay reachable for those flows
	// (and refuse new ones) until collectRemoved drops them.
	for _, svc := range old.list {
		if reg.services[svc.VIP] == nil && b.dp.live.serviceFlows(svc) > 0 {
			svc.removed.Store(true)
			reg.services[svc.VIP] = svc
			reg.vips = append(reg.vips, svc.Config.Listen)
		}
	}
	if err := b.applyTraffic(old, reg); err != nil {
		return err
	}
	b.shared.SetLimits(cfg.MaxFlows, maxPerClient(cfg))
	b.setCookies(cfg)
	b.setRates(cfg.RateLimits)
	if err := b.health.Set(healthTargets(reg)); err != nil {
		return err
	}
	b.cfg = cfg
	for _, be := range removed {
		b.log.Info("backend removed: its flows drain", "service", be.Service.Name, "backend", be.Name, "flows", b.dp.live.Live(be.ID))
	}
	b.wakeWorkers() // new rates, backends disabled or drained
	b.log.Info("reload applied", "changes", strings.ReplaceAll(ch.String(), "\n", "; "))
	return nil
}

// ReloadFailed logs and counts a reload that could not even be tried (the
// file did not load): nothing changes.
func (b *Balancer) ReloadFailed(err error) {
	b.reloadFailures.Add(1)
	msg := err.Error()
	b.lastReloadErr.Store(&msg)
	b.log.Error("reload refused: nothing changed", "err", err)
}

// applyTraffic moves the firewall and the socket filters from what old
// lets in to what reg does, and publishes reg: first the drops for the
// union of both (so that no added service is ever answered by the host),
// then the registry and the filters, then the drops for reg alone.
func (b *Balancer) applyTraffic(old, reg *registry) error {
	union := append(append([]netip.AddrPort(nil), old.vips...), reg.vips...)
	if b.fw != nil {
		if err := b.fw.Update(b.fwConfig(union)); err != nil {
			return fmt.Errorf("updating the firewall: %w", err)
		}
	}
	o := b.ours(reg)
	filter, err := o.socketFilter()
	if err != nil {
		return err
	}
	b.dp.reg.Store(reg)
	for _, s := range b.socks {
		if err := s.SetFilter(filter); err != nil {
			return err
		}
	}
	if b.fw != nil {
		if err := b.fw.Update(b.fwConfig(reg.vips)); err != nil {
			return fmt.Errorf("updating the firewall: %w", err)
		}
	}
	return nil
}

func (b *Balancer) fwConfig(listen []netip.AddrPort) firewall.Config {
	return firewall.Config{Instance: b.opts.Instance, NATSource: b.cfg.Address, NATFirst: b.dp.natFirst, NATLast: b.dp.natLast, Listen: listen}
}

// setRates gives the workers new rate limits; each picks them up at its
// next sweep.
func (b *Balancer) setRates(r config.RateLimits) {
	rr := r
	b.dp.rates.Store(&rr)
}
