package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, file string) *Config {
	t.Helper()
	c, err := Parse([]byte(file), "rawlb.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

// exampleConfig is testdata/example.yaml, field by field.
func exampleConfig() *Config {
	return &Config{
		Address:    netip.MustParseAddr("192.168.1.10"),
		Interfaces: []string{"eth0"},
		NATPorts:   PortRange{40000, 59999},
		Metrics:    "127.0.0.1:9120",
		LogLevel:   slog.LevelInfo,
		Firewall:   true,
		Fastpath:   FastpathAuto,
		StateDir:   "/run/rawlb",
		MaxFlows:   1_000_000,
		SYNCookies: SYNCookiesAuto,
		RateLimits: RateLimits{Resets: 1000, ChallengeACKs: 1000, SYNACKs: 200_000},
		Timeouts: Timeouts{HalfOpen: 30 * time.Second, Established: time.Hour, Closing: 10 * time.Second,
			NATPortQuiet: 60 * time.Second},
		Services: []Service{{
			Name:          "chat",
			Listen:        netip.MustParseAddrPort("192.168.1.10:20000"),
			Scheduler:     RoundRobin,
			DrainTimeout:  30 * time.Second,
			OnBackendDown: ResetFlows,
			Health:        Health{Kind: HealthTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
			Backends: []Backend{
				{Name: "s1", Address: "192.168.1.21:8090", Weight: 1},
				{Name: "s2", Address: "192.168.1.22:8090", Weight: 1, Drain: true},
				{Name: "s3", Address: "web3.lan:8090", Weight: 1, Backup: true, MaxFlows: 5000},
			},
		}},
	}
}

func TestLoadExample(t *testing.T) {
	c, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if want := exampleConfig(); !reflect.DeepEqual(c, want) {
		t.Errorf("Load(example.yaml) =\n%+v\nwant\n%+v", c, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/no-such-file.yaml")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, base)
	want := Defaults()
	want.Address = netip.MustParseAddr("198.18.0.2")
	want.Services = []Service{{
		Name: "web", Listen: netip.MustParseAddrPort("198.18.0.2:80"), Scheduler: RoundRobin,
		OnBackendDown: ResetFlows, Health: DefaultHealth(),
		Backends: []Backend{{Name: "s1", Address: "198.18.0.11:8080", Weight: 1}},
	}}
	if !reflect.DeepEqual(c, &want) {
		t.Errorf("defaults =\n%+v\nwant\n%+v", c, &want)
	}
	// The documented defaults, spelled out once more so a change to
	// Defaults() is a deliberate one.
	if c.NATPorts != (PortRange{40000, 59999}) || c.MaxFlows != 1_000_000 || c.StateDir != "/run/rawlb" ||
		!c.Firewall || c.Pprof || c.Metrics != "" || c.LogLevel != slog.LevelInfo || c.SYNCookies != SYNCookiesAuto ||
		c.RateLimits != (RateLimits{1000, 1000, 200_000}) ||
		c.Timeouts != (Timeouts{30 * time.Second, time.Hour, 10 * time.Second, time.Minute, 0}) {
		t.Errorf("global defaults differ from the documented ones: %+v", c)
	}
	if h := c.Services[0].Health; h != (Health{Kind: HealthTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}) {
		t.Errorf("health defaults = %+v", h)
	}
}

func TestHTTPHealthDefaults(t *testing.T) {
	c := mustParse(t, strings.Replace(base, "listen: 80\n", "listen: 80\n    health: {kind: http}\n", 1))
	h := c.Services[0].Health
	if h.Path != "/" || h.Status != 200 || h.Host != "" || h.Interval != 2*time.Second {
		t.Errorf("http defaults = %+v, want path / and status 200", h)
	}
}

// formsFile uses the spellings the file accepts beyond the plain ones.
const formsFile = `# shared blocks live under x- keys
x-health: &check
  kind: http
  path: /healthz
  status: 204
  host: www.example.com
services:
  - name: web
    listen: "198.18.0.3:443"
    health: *check
    backends:
      - {name: a, address: 198.18.0.11:8443, weight: 0}
      - {name: b, address: app-b.internal.:8443, disabled: true}
  - name: echo
    listen: "7000"
    drain_timeout: 0
    health:
      send: "PING\r\n"
      expect: "+PONG"
      port: 7001
    backends:
      - {name: a, address: 198.18.0.11:7000}
  - name: bin
    listen: 7002
    scheduler: maglev
    on_backend_down: reset
    health:
      send: !!binary AP/+gA==
    backends:
      - {name: a, address: 198.18.0.11:7002}
address: 198.18.0.2
syn_cookies: on
interfaces: []
timeouts:
  drain: 5m
  nat_port_quiet: 0
metrics: ":9120"
pprof: true
`

// TestParseForms covers the spellings the file accepts beyond the plain ones.
func TestParseForms(t *testing.T) {
	c := mustParse(t, formsFile)
	if c.Interfaces != nil {
		t.Errorf("interfaces: [] = %q, want nil (all)", c.Interfaces)
	}
	if c.SYNCookies != SYNCookiesOn {
		t.Errorf("syn_cookies: on = %q", c.SYNCookies)
	}
	if c.Timeouts.NATPortQuiet != 0 || c.Timeouts.Drain != 5*time.Minute {
		t.Errorf("timeouts = %+v", c.Timeouts)
	}
	web, echo, bin := c.Services[0], c.Services[1], c.Services[2]
	if web.Listen != netip.MustParseAddrPort("198.18.0.3:443") {
		t.Errorf("listen ip:port = %v", web.Listen)
	}
	if want := (Health{Kind: HealthHTTP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
		Path: "/healthz", Status: 204, Host: "www.example.com"}); web.Health != want {
		t.Errorf("aliased health = %+v, want %+v", web.Health, want)
	}
	if web.DrainTimeout != 5*time.Minute {
		t.Errorf("inherited drain_timeout = %v, want timeouts.drain 5m", web.DrainTimeout)
	}
	if b := web.Backends[0]; b.Weight != 0 {
		t.Errorf("weight: 0 = %d", b.Weight)
	}
	if b := web.Backends[1]; !b.Disabled || b.Weight != 1 || b.Address != "app-b.internal.:8443" {
		t.Errorf("backend b = %+v", b)
	}
	if echo.Listen != netip.MustParseAddrPort("198.18.0.2:7000") {
		t.Errorf("quoted bare port = %v, want it on address", echo.Listen)
	}
	if echo.DrainTimeout != 0 {
		t.Errorf("drain_timeout: 0 = %v, want 0 overriding timeouts.drain", echo.DrainTimeout)
	}
	if echo.Health.Send != "PING\r\n" || echo.Health.Expect != "+PONG" || echo.Health.Port != 7001 {
		t.Errorf("tcp health = %+v", echo.Health)
	}
	if bin.Health.Send != "\x00\xff\xfe\x80" {
		t.Errorf("!!binary send = %q, want the decoded bytes", bin.Health.Send)
	}
	if bin.Scheduler != Maglev || bin.OnBackendDown != ResetFlows {
		t.Errorf("bin = %+v", bin)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "rawlb.yaml", Line: 12, Field: "services[0].backends[1].address", Msg: "bad"}, "rawlb.yaml:12: services[0].backends[1].address: bad"},
		{Error{File: "rawlb.yaml", Line: 3, Msg: "YAML syntax: x"}, "rawlb.yaml:3: YAML syntax: x"},
		{Error{File: "rawlb.yaml", Msg: "the file is empty"}, "rawlb.yaml: the file is empty"},
		{Error{Field: "address", Msg: "required"}, "address: required"},
		{Error{Line: 4, Field: "workers", Msg: "no"}, "line 4: workers: no"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestErrorsAs(t *testing.T) {
	_, err := Parse([]byte(`address: 198.18.0.2
services:
  - name: web
    listen: 80
    scheduler: fastest
    backends:
      - {name: s1, address: 198.18.0.11:8080, weight: 999}
`), "/etc/rawlb/rawlb.yaml")
	var first *Error
	if !errors.As(err, &first) {
		t.Fatalf("errors.As(%v) found no *Error", err)
	}
	want := Error{File: "/etc/rawlb/rawlb.yaml", Line: 5, Field: "services[0].scheduler",
		Msg: `unknown scheduler "fastest": use rr (weighted round robin), lc (weighted least connections) or maglev`}
	if *first != want {
		t.Errorf("first error = %+v, want %+v", *first, want)
	}
	var all Errors
	if !errors.As(err, &all) || len(all) != 2 || all[1].Line != 7 || all[1].Field != "services[0].backends[0].weight" {
		t.Errorf("all errors = %v", err)
	}
}

// goConfig is what the command line builds from flags: one service.
func goConfig() *Config {
	c := Defaults()
	c.Address = netip.MustParseAddr("198.18.0.2")
	c.Services = []Service{{
		Name: "default", Listen: netip.MustParseAddrPort("198.18.0.2:20000"), Scheduler: LeastConnections,
		OnBackendDown: ResetFlows, Health: DefaultHealth(),
		Backends: []Backend{
			{Name: "198.18.0.11:8090", Address: "198.18.0.11:8090", Weight: 1},
			{Name: "198.18.0.12:8090", Address: "198.18.0.12:8090", Weight: 1},
		},
	}}
	return &c
}

func TestValidateGoConfig(t *testing.T) {
	if err := goConfig().Validate(); err != nil {
		t.Fatalf("valid one-service Config: %v", err)
	}
	c := goConfig()
	c.Address = netip.MustParseAddr("2001:db8::2")
	c.NATPorts = PortRange{}
	c.Services[0].Listen = netip.AddrPortFrom(netip.Addr{}, 20000)
	c.Services[0].Scheduler = ""
	c.Services[0].Health.Timeout = 3 * time.Second
	c.Services[0].Health.Kind = HealthHTTP
	c.Services[0].Backends[1].Address = c.Services[0].Backends[0].Address
	c.Services[0].Backends[1].Weight = 257
	c.LogLevel = slog.Level(2)
	err := c.Validate()
	want := `address: 2001:db8::2 is not an IPv4 address: rawlb balances IPv4 only
nat_ports: no ports: write first-last, e.g. 40000-59999
log_level: INFO+2 is not a log level: use debug, info, warn or error
services[0].scheduler: unknown scheduler "": use rr (weighted round robin), lc (weighted least connections) or maglev
services[0].health.timeout: 3s is longer than interval 2s: a check must end before the next one starts; shorten timeout or raise interval
services[0].health.path: "" must start with "/", e.g. /health
services[0].health.status: 0 is not an HTTP status: use 100-599, e.g. 200
services[0].backends[1].address: 198.18.0.11:8090 is already used by backend "198.18.0.11:8090" (services[0].backends[0]): list each server once, with a weight
services[0].backends[1].weight: 257 is out of range: use 0-256 (0 takes no new flows)`
	if err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
	var first *Error
	if !errors.As(err, &first) || first.Line != 0 || first.File != "" || first.Field != "address" {
		t.Errorf("first error = %+v, want Line 0 and no file", first)
	}

	// Parse resolves a bare port; a Config built in Go must do it itself.
	c = goConfig()
	c.Services[0].Listen = netip.AddrPortFrom(netip.Addr{}, 20000)
	if err := c.Validate(); err == nil || err.Error() != "services[0].listen: port 20000 has no address: set it to 198.18.0.2:20000" {
		t.Errorf("listen without address: %v", err)
	}
}

func TestPortRange(t *testing.T) {
	r, err := ParsePortRange("40000-40009")
	if err != nil || r != (PortRange{40000, 40009}) || r.Len() != 10 || !r.Contains(40000) || !r.Contains(40009) ||
		r.Contains(39999) || r.Contains(40010) || r.String() != "40000-40009" {
		t.Errorf("ParsePortRange = %v, %v (len %d)", r, err, r.Len())
	}
	if r, err := ParsePortRange("7-7"); err != nil || r.Len() != 1 {
		t.Errorf("one-port range: %v, %v", r, err)
	}
	for _, bad := range []string{"", "40000", "1-65536", "-1-5", "9-8", "0-0", "a-b"} {
		if r, err := ParsePortRange(bad); err == nil {
			t.Errorf("ParsePortRange(%q) = %v, want an error", bad, r)
		}
	}
}

// TestRoundTrip checks that Marshal writes what Parse reads back as the
// same Config, for the example and for the unusual spellings.
func TestRoundTrip(t *testing.T) {
	forms := mustParse(t, `address: 198.18.0.2
interfaces: [eth1, eth0]
metrics: "[::1]:9120"
log_level: debug
syn_cookies: "off"
rate_limits: {syn_acks: 0}
timeouts: {drain: 1m30s, established: 90m}
services:
  - name: web
    listen: 198.18.0.3:443
    max_flows: 10
    health: {kind: http, host: h, path: /a%20b, status: 503, interval: 1500ms, timeout: 1500ms}
    backends:
      - {name: a, address: 198.18.0.11:8443, weight: 256, drain: true, disabled: true, backup: true, max_flows: 9}
  - name: bin
    listen: 81
    health: {send: !!binary AP/+gA==, expect: "\t\u00e9"}
    backends:
      - {name: a, address: a.b:1}
`)
	for name, c := range map[string]*Config{"example": exampleConfig(), "forms": forms} {
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("%s: Marshal: %v", name, err)
		}
		back, err := Parse(out, "marshalled.yaml")
		if err != nil {
			t.Fatalf("%s: Parse(Marshal()):\n%v\n%s", name, err, out)
		}
		if !reflect.DeepEqual(back, c) {
			t.Errorf("%s: round trip changed the Config:\n%+v\nwant\n%+v\nfile:\n%s", name, back, c, out)
		}
		if d := Diff(c, back); !d.Empty() {
			t.Errorf("%s: Diff after a round trip:\n%v", name, d)
		}
	}
}

func TestFingerprint(t *testing.T) {
	c := exampleConfig()
	fp := c.Fingerprint()
	// Pinned: the state file written by one rawlb must be accepted by the
	// next build with the same configuration.
	if want := "5f7e357d0a3de89363f2a328a1bc1c61"; fp != want {
		t.Errorf("Fingerprint = %s, want %s", fp, want)
	}
	if len(fp) != 32 {
		t.Errorf("Fingerprint %q is not 32 hex digits", fp)
	}
	same := exampleConfig()
	same.Services[0].Backends = same.Services[0].Backends[:1]
	same.Services[0].Scheduler = Maglev
	same.Timeouts.Established = time.Minute
	if same.Fingerprint() != fp {
		t.Errorf("backends, scheduler or timeouts changed the fingerprint")
	}
	two := exampleConfig()
	two.Services = append(two.Services, Service{Name: "b", Listen: netip.MustParseAddrPort("192.168.1.10:20001")})
	swapped := exampleConfig()
	swapped.Services = []Service{two.Services[1], two.Services[0]}
	if two.Fingerprint() == fp || two.Fingerprint() != swapped.Fingerprint() {
		t.Errorf("adding a service must change the fingerprint, reordering must not")
	}
	for name, mutate := range map[string]func(*Config){
		"address":   func(c *Config) { c.Address = netip.MustParseAddr("192.168.1.11") },
		"nat_ports": func(c *Config) { c.NATPorts.Last-- },
		"listen":    func(c *Config) { c.Services[0].Listen = netip.MustParseAddrPort("192.168.1.10:20001") },
	} {
		m := exampleConfig()
		mutate(m)
		if m.Fingerprint() == fp {
			t.Errorf("changing %s kept the fingerprint", name)
		}
	}
}

func TestSuggest(t *testing.T) {
	names := []string{"name", "listen", "scheduler", "max_flows", "drain_timeout", "health", "backends"}
	for key, want := range map[string]string{
		"schedular": "scheduler", "max-flows": "max_flows", "maxFlows": "max_flows", "Listen": "listen",
		"listn": "listen", "nmae": "", "backend": "backends", "drainTimeout": "drain_timeout", "colour": "",
	} {
		if got := suggest(key, names); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}

// BenchmarkParseExample measures what a SIGHUP reload pays to read and
// check a typical file.
func BenchmarkParseExample(b *testing.B) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data, "example.yaml"); err != nil {
			b.Fatal(err)
		}
	}
}
