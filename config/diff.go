package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Changes is what a reload from one configuration to the next must do, as
// data: the engine applies it, or refuses it when Restart is not empty.
// Order of services and backends in the file carries no meaning and is not
// reported; a renamed service or backend is one removed and one added.
type Changes struct {
	Restart []FieldChange   // global fields only a restart can change
	Global  []FieldChange   // global fields a running balancer can take on
	Added   []string        // services only in the new configuration, in its order
	Removed []string        // services only in the old one, in its order
	Changed []ServiceChange // services in both that differ, in the new order
}

// FieldChange is one field's old and new value, formatted as in the file.
type FieldChange struct {
	Field    string // e.g. nat_ports, health.interval, weight
	Old, New string
}

// ServiceChange is what changed in a service kept across a reload.
type ServiceChange struct {
	Name    string
	Fields  []FieldChange   // service-level fields: listen, scheduler, health.*, ...
	Added   []string        // backends only in the new service, in its order
	Removed []string        // backends only in the old one, in its order
	Changed []BackendChange // backends in both that differ, in the new order
}

// BackendChange is what changed in a backend kept across a reload; its
// identity is (service name, backend name), so an address change is a
// change of the same backend.
type BackendChange struct {
	Name   string
	Fields []FieldChange
}

// globalFields are compared in this order. The restart ones cannot change
// in a running process: the ring sockets, workers and NAT port pool are
// built for them at start, and the restart state in state_dir is only valid
// for the address and NAT ports it was written with.
var globalFields = []struct {
	name    string
	restart bool
	get     func(*Config) string
}{
	{"address", true, func(c *Config) string { return c.Address.String() }},
	{"interfaces", true, func(c *Config) string { return formatList(c.Interfaces) }},
	{"nat_ports", true, func(c *Config) string { return c.NATPorts.String() }},
	{"workers", true, func(c *Config) string { return strconv.Itoa(c.Workers) }},
	{"ring_frames", true, func(c *Config) string { return strconv.Itoa(c.RingFrames) }},
	{"fastpath", true, func(c *Config) string { return string(c.Fastpath) }},
	{"state_dir", true, func(c *Config) string { return c.StateDir }},
	{"metrics", false, func(c *Config) string { return strconv.Quote(c.Metrics) }},
	{"pprof", false, func(c *Config) string { return strconv.FormatBool(c.Pprof) }},
	{"log_level", false, func(c *Config) string { return formatLevel(c) }},
	{"firewall", false, func(c *Config) string { return strconv.FormatBool(c.Firewall) }},
	{"max_flows", false, func(c *Config) string { return strconv.Itoa(c.MaxFlows) }},
	{"max_flows_per_client", false, func(c *Config) string { return strconv.Itoa(c.MaxFlowsPerClient) }},
	{"syn_cookies", false, func(c *Config) string { return string(c.SYNCookies) }},
	{"syn_cookie_threshold", false, func(c *Config) string { return strconv.Itoa(c.SYNCookieThreshold) }},
	{"rate_limits.resets", false, func(c *Config) string { return strconv.Itoa(c.RateLimits.Resets) }},
	{"rate_limits.challenge_acks", false, func(c *Config) string { return strconv.Itoa(c.RateLimits.ChallengeACKs) }},
	{"rate_limits.syn_acks", false, func(c *Config) string { return strconv.Itoa(c.RateLimits.SYNACKs) }},
	{"timeouts.half_open", false, func(c *Config) string { return formatDuration(c.Timeouts.HalfOpen) }},
	{"timeouts.established", false, func(c *Config) string { return formatDuration(c.Timeouts.Established) }},
	{"timeouts.closing", false, func(c *Config) string { return formatDuration(c.Timeouts.Closing) }},
	{"timeouts.nat_port_quiet", false, func(c *Config) string { return formatDuration(c.Timeouts.NATPortQuiet) }},
	{"timeouts.drain", false, func(c *Config) string { return formatDuration(c.Timeouts.Drain) }},
}

var serviceFields = []struct {
	name string
	get  func(*Service) string
}{
	{"listen", func(s *Service) string { return s.Listen.String() }},
	{"scheduler", func(s *Service) string { return string(s.Scheduler) }},
	{"max_flows", func(s *Service) string { return strconv.Itoa(s.MaxFlows) }},
	{"drain_timeout", func(s *Service) string { return formatDuration(s.DrainTimeout) }},
	{"on_backend_down", func(s *Service) string { return string(s.OnBackendDown) }},
	{"health.kind", func(s *Service) string { return string(s.Health.Kind) }},
	{"health.interval", func(s *Service) string { return formatDuration(s.Health.Interval) }},
	{"health.timeout", func(s *Service) string { return formatDuration(s.Health.Timeout) }},
	{"health.rise", func(s *Service) string { return strconv.Itoa(s.Health.Rise) }},
	{"health.fall", func(s *Service) string { return strconv.Itoa(s.Health.Fall) }},
	{"health.port", func(s *Service) string { return strconv.Itoa(int(s.Health.Port)) }},
	{"health.send", func(s *Service) string { return strconv.Quote(s.Health.Send) }},
	{"health.expect", func(s *Service) string { return strconv.Quote(s.Health.Expect) }},
	{"health.path", func(s *Service) string { return strconv.Quote(s.Health.Path) }},
	{"health.status", func(s *Service) string { return strconv.Itoa(s.Health.Status) }},
	{"health.host", func(s *Service) string { return strconv.Quote(s.Health.Host) }},
}

var backendFields = []struct {
	name string
	get  func(*Backend) string
}{
	{"address", func(b *Backend) string { return b.Address }},
	{"weight", func(b *Backend) string { return strconv.Itoa(b.Weight) }},
	{"drain", func(b *Backend) string { return strconv.FormatBool(b.Drain) }},
	{"disabled", func(b *Backend) string { return strconv.FormatBool(b.Disabled) }},
	{"backup", func(b *Backend) string { return strconv.FormatBool(b.Backup) }},
	{"max_flows", func(b *Backend) string { return strconv.Itoa(b.MaxFlows) }},
}

// Diff returns what changes from old to new. Both should have passed
// Validate; names are assumed unique, as Validate ensures.
func Diff(old, new *Config) Changes {
	var ch Changes
	for _, f := range globalFields {
		if o, n := f.get(old), f.get(new); o != n {
			fc := FieldChange{Field: f.name, Old: o, New: n}
			if f.restart {
				ch.Restart = append(ch.Restart, fc)
			} else {
				ch.Global = append(ch.Global, fc)
			}
		}
	}
	for i := range new.Services {
		ns := &new.Services[i]
		was := old.Service(ns.Name)
		if was == nil {
			ch.Added = append(ch.Added, ns.Name)
			continue
		}
		if sc := diffService(was, ns); sc.Fields != nil || sc.Added != nil || sc.Removed != nil || sc.Changed != nil {
			ch.Changed = append(ch.Changed, sc)
		}
	}
	for _, was := range old.Services {
		if new.Service(was.Name) == nil {
			ch.Removed = append(ch.Removed, was.Name)
		}
	}
	return ch
}

func diffService(was, ns *Service) ServiceChange {
	sc := ServiceChange{Name: ns.Name}
	for _, f := range serviceFields {
		if o, n := f.get(was), f.get(ns); o != n {
			sc.Fields = append(sc.Fields, FieldChange{Field: f.name, Old: o, New: n})
		}
	}
	for i := range ns.Backends {
		nb := &ns.Backends[i]
		ob := was.Backend(nb.Name)
		if ob == nil {
			sc.Added = append(sc.Added, nb.Name)
			continue
		}
		bc := BackendChange{Name: nb.Name}
		for _, f := range backendFields {
			if o, n := f.get(ob), f.get(nb); o != n {
				bc.Fields = append(bc.Fields, FieldChange{Field: f.name, Old: o, New: n})
			}
		}
		if bc.Fields != nil {
			sc.Changed = append(sc.Changed, bc)
		}
	}
	for _, ob := range was.Backends {
		if ns.Backend(ob.Name) == nil {
			sc.Removed = append(sc.Removed, ob.Name)
		}
	}
	return sc
}

// Empty reports whether the reload changes nothing.
func (c Changes) Empty() bool {
	return c.Restart == nil && c.Global == nil && c.Added == nil && c.Removed == nil && c.Changed == nil
}

// RestartError explains which fields a reload cannot apply, or returns nil.
func (c Changes) RestartError() error {
	if len(c.Restart) == 0 {
		return nil
	}
	parts := make([]string, len(c.Restart))
	for i, f := range c.Restart {
		parts[i] = f.String()
	}
	return errors.New("a reload cannot change " + strings.Join(parts, ", ") +
		": restart rawlb to apply them, or put the old values back")
}

// String is "field old -> new".
func (f FieldChange) String() string { return fmt.Sprintf("%s %s -> %s", f.Field, f.Old, f.New) }

// String lists the changes one per line, in the order the engine would
// apply them; it is what a reload logs and what the golden tests compare.
func (c Changes) String() string {
	var b strings.Builder
	for _, f := range c.Restart {
		fmt.Fprintf(&b, "restart: %v\n", f)
	}
	for _, f := range c.Global {
		fmt.Fprintf(&b, "global: %v\n", f)
	}
	for _, n := range c.Removed {
		fmt.Fprintf(&b, "service %s: removed\n", n)
	}
	for _, n := range c.Added {
		fmt.Fprintf(&b, "service %s: added\n", n)
	}
	for _, s := range c.Changed {
		for _, f := range s.Fields {
			fmt.Fprintf(&b, "service %s: %v\n", s.Name, f)
		}
		for _, n := range s.Removed {
			fmt.Fprintf(&b, "service %s: backend %s removed\n", s.Name, n)
		}
		for _, n := range s.Added {
			fmt.Fprintf(&b, "service %s: backend %s added\n", s.Name, n)
		}
		for _, bc := range s.Changed {
			for _, f := range bc.Fields {
				fmt.Fprintf(&b, "service %s: backend %s: %v\n", s.Name, bc.Name, f)
			}
		}
	}
	return b.String()
}

// formatDuration prints 1h rather than Go's 1h0m0s; both parse the same.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func formatLevel(c *Config) string { return strings.ToLower(c.LogLevel.String()) }

// formatList prints a set of names sorted, so that reordering is no change.
func formatList(l []string) string {
	s := slices.Clone(l)
	slices.Sort(s)
	return "[" + strings.Join(s, ", ") + "]"
}
