package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"gopkg.in/yaml.v3"
)

// The file's shape, for Marshal only: Parse walks nodes itself to keep
// lines, types and unknown keys under its control.
type (
	fileConfig struct {
		Address            string        `yaml:"address"`
		Interfaces         []string      `yaml:"interfaces,omitempty,flow"`
		NATPorts           string        `yaml:"nat_ports"`
		Metrics            string        `yaml:"metrics"`
		Pprof              bool          `yaml:"pprof"`
		LogLevel           string        `yaml:"log_level"`
		Workers            int           `yaml:"workers"`
		RingFrames         int           `yaml:"ring_frames"`
		Firewall           bool          `yaml:"firewall"`
		Fastpath           string        `yaml:"fastpath"`
		StateDir           string        `yaml:"state_dir"`
		MaxFlows           int           `yaml:"max_flows"`
		MaxFlowsPerClient  int           `yaml:"max_flows_per_client"`
		SYNCookies         string        `yaml:"syn_cookies"`
		SYNCookieThreshold int           `yaml:"syn_cookie_threshold"`
		RateLimits         fileRates     `yaml:"rate_limits"`
		Timeouts           fileTimeouts  `yaml:"timeouts"`
		Services           []fileService `yaml:"services"`
	}
	fileRates struct {
		Resets        int `yaml:"resets"`
		ChallengeACKs int `yaml:"challenge_acks"`
		SYNACKs       int `yaml:"syn_acks"`
	}
	fileTimeouts struct {
		HalfOpen     string `yaml:"half_open"`
		Established  string `yaml:"established"`
		Closing      string `yaml:"closing"`
		NATPortQuiet string `yaml:"nat_port_quiet"`
		Drain        string `yaml:"drain"`
	}
	fileService struct {
		Name          string        `yaml:"name"`
		Listen        any           `yaml:"listen"`
		Scheduler     string        `yaml:"scheduler"`
		MaxFlows      int           `yaml:"max_flows"`
		DrainTimeout  string        `yaml:"drain_timeout"`
		OnBackendDown string        `yaml:"on_backend_down"`
		Health        fileHealth    `yaml:"health"`
		Backends      []fileBackend `yaml:"backends"`
	}
	fileHealth struct {
		Kind     string `yaml:"kind"`
		Interval string `yaml:"interval"`
		Timeout  string `yaml:"timeout"`
		Rise     int    `yaml:"rise"`
		Fall     int    `yaml:"fall"`
		Port     uint16 `yaml:"port"`
		Send     string `yaml:"send,omitempty"`
		Expect   string `yaml:"expect,omitempty"`
		Path     string `yaml:"path,omitempty"`
		Status   int    `yaml:"status,omitempty"`
		Host     string `yaml:"host,omitempty"`
	}
	fileBackend struct {
		Name     string `yaml:"name"`
		Address  string `yaml:"address"`
		Weight   int    `yaml:"weight"`
		Drain    bool   `yaml:"drain,omitempty"`
		Disabled bool   `yaml:"disabled,omitempty"`
		Backup   bool   `yaml:"backup,omitempty"`
		MaxFlows int    `yaml:"max_flows,omitempty"`
	}
)

// Marshal writes c as a configuration file with every field explicit, so
// -check-config can show the effective configuration. Parse reads it back
// to an equal Config. A service listening on Address is written with its
// bare port.
func (c *Config) Marshal() ([]byte, error) {
	f := fileConfig{
		Address: c.Address.String(), Interfaces: c.Interfaces, NATPorts: c.NATPorts.String(),
		Metrics: c.Metrics, Pprof: c.Pprof, LogLevel: formatLevel(c), Workers: c.Workers,
		RingFrames: c.RingFrames, Firewall: c.Firewall, Fastpath: string(c.Fastpath), StateDir: c.StateDir, MaxFlows: c.MaxFlows,
		MaxFlowsPerClient: c.MaxFlowsPerClient, SYNCookies: string(c.SYNCookies),
		SYNCookieThreshold: c.SYNCookieThreshold,
		RateLimits:         fileRates{c.RateLimits.Resets, c.RateLimits.ChallengeACKs, c.RateLimits.SYNACKs},
		Timeouts: fileTimeouts{formatDuration(c.Timeouts.HalfOpen), formatDuration(c.Timeouts.Established),
			formatDuration(c.Timeouts.Closing), formatDuration(c.Timeouts.NATPortQuiet), formatDuration(c.Timeouts.Drain)},
		Services: []fileService{},
	}
	if !c.Address.IsValid() {
		f.Address = ""
	}
	for _, s := range c.Services {
		var listen any = s.Listen.String()
		if s.Listen.Addr() == c.Address {
			listen = int(s.Listen.Port())
		}
		h := s.Health
		fs := fileService{
			Name: s.Name, Listen: listen, Scheduler: string(s.Scheduler), MaxFlows: s.MaxFlows,
			DrainTimeout: formatDuration(s.DrainTimeout), OnBackendDown: string(s.OnBackendDown),
			Health: fileHealth{Kind: string(h.Kind), Interval: formatDuration(h.Interval), Timeout: formatDuration(h.Timeout),
				Rise: h.Rise, Fall: h.Fall, Port: h.Port, Send: h.Send, Expect: h.Expect, Path: h.Path, Status: h.Status, Host: h.Host},
			Backends: []fileBackend{},
		}
		for _, b := range s.Backends {
			fs.Backends = append(fs.Backends, fileBackend(b))
		}
		f.Services = append(f.Services, fs)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Fingerprint is a stable hash of what a restart state file depends on:
// the address, the NAT ports and the set of listen addresses. Flows saved
// under one fingerprint are only valid under the same one. The hashed text
// is versioned; change "v1" if its meaning ever changes.
func (c *Config) Fingerprint() string {
	listens := make([]string, len(c.Services))
	for i, s := range c.Services {
		listens[i] = s.Listen.String()
	}
	slices.Sort(listens)
	h := sha256.New()
	fmt.Fprintf(h, "rawlb state v1\naddress %v\nnat_ports %v\n", c.Address, c.NATPorts)
	for _, l := range listens {
		fmt.Fprintf(h, "listen %s\n", l)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
