package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/config"
)

const src = "198.18.0.2"

func be(name string) config.Backend {
	return config.Backend{Name: name, Address: name, Weight: config.DefaultWeight}
}

// mustParse parses a command line that must be good.
func mustParse(t *testing.T, args ...string) *invocation {
	t.Helper()
	inv, err := parse(args, io.Discard)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return inv
}

// The defaults are the README's flag table: a one-service configuration.
func TestParseDefaults(t *testing.T) {
	inv := mustParse(t, src, "198.18.0.11:8090")
	want := config.Defaults()
	want.Address = netip.MustParseAddr(src)
	h := config.DefaultHealth()
	want.Services = []config.Service{{
		Name: "default", Listen: netip.MustParseAddrPort(src + ":20000"), Scheduler: config.RoundRobin,
		OnBackendDown: config.ResetFlows, Health: h, Backends: []config.Backend{be("198.18.0.11:8090")},
	}}
	if !reflect.DeepEqual(*inv.cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *inv.cfg, want)
	}
	if inv.configPath != "" || inv.checkOnly || inv.showVersion || inv.instance != "" || inv.grace != 10*time.Second {
		t.Errorf("invocation %+v", inv)
	}
}

// Every flag reaches its configuration field.
func TestParseEveryFlag(t *testing.T) {
	inv := mustParse(t,
		"-port", "8080", "-iface", "eth1", "-algo", "lc", "-nat-ports", "30000-30999", "-nat-port-quiet", "0s",
		"-idle-timeout", "90s", "-half-open-timeout", "5s", "-closing-timeout", "3s", "-max-flows", "500",
		"-max-flows-per-client", "50", "-syn-cookies", "on", "-syn-cookie-threshold", "7", "-reset-rate", "11",
		"-challenge-ack-rate", "12", "-syn-ack-rate", "13", "-on-backend-down", "keep",
		"-hc-interval", "3s", "-hc-timeout", "3s", "-hc-fall", "4", "-hc-rise", "5", "-metrics", "127.0.0.1:9120",
		"-pprof", "-firewall=false", "-workers", "3", "-ring-frames", "4096", "-state-dir", "/var/lib/rawlb",
		"-instance", "web", "-handoff-grace", "20s", "-log-level", "debug",
		src, "198.18.0.11:80",
	)
	want := config.Defaults()
	want.Address = netip.MustParseAddr(src)
	want.Interfaces = []string{"eth1"}
	want.NATPorts = config.PortRange{First: 30000, Last: 30999}
	want.Metrics, want.Pprof, want.LogLevel, want.Workers, want.RingFrames = "127.0.0.1:9120", true, slog.LevelDebug, 3, 4096
	want.Firewall, want.StateDir, want.MaxFlows, want.MaxFlowsPerClient = false, "/var/lib/rawlb", 500, 50
	want.SYNCookies, want.SYNCookieThreshold = config.SYNCookiesOn, 7
	want.RateLimits = config.RateLimits{Resets: 11, ChallengeACKs: 12, SYNACKs: 13}
	want.Timeouts = config.Timeouts{HalfOpen: 5 * time.Second, Established: 90 * time.Second, Closing: 3 * time.Second, NATPortQuiet: 0}
	h := config.DefaultHealth()
	h.Interval, h.Timeout, h.Rise, h.Fall = 3*time.Second, 3*time.Second, 5, 4
	want.Services = []config.Service{{
		Name: "default", Listen: netip.MustParseAddrPort(src + ":8080"), Scheduler: config.LeastConnections,
		OnBackendDown: config.KeepFlows, Health: h, Backends: []config.Backend{be("198.18.0.11:80")},
	}}
	if !reflect.DeepEqual(*inv.cfg, want) {
		t.Errorf("flags:\n got %+v\nwant %+v", *inv.cfg, want)
	}
	if inv.instance != "web" || inv.grace != 20*time.Second {
		t.Errorf("-instance/-handoff-grace: %q %v", inv.instance, inv.grace)
	}
}

// Backends are host:port, or the original balancer's "ip port" pairs, in
// any mix; a pair is named host:port, as metrics and logs show it.
func TestParseBackends(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []config.Backend
	}{
		{[]string{"198.18.0.11:8090"}, []config.Backend{be("198.18.0.11:8090")}},
		// The original's command line: rawlb 198.18.0.2 198.18.0.11 8090 198.18.0.12 8090.
		{[]string{"198.18.0.11", "8090", "198.18.0.12", "8090"}, []config.Backend{be("198.18.0.11:8090"), be("198.18.0.12:8090")}},
		{[]string{"198.18.0.11", "8090", "198.18.0.12:8091", "198.18.0.13", "8092"},
			[]config.Backend{be("198.18.0.11:8090"), be("198.18.0.12:8091"), be("198.18.0.13:8092")}},
		{[]string{"198.18.0.11:8090", "198.18.0.12", "8090"}, []config.Backend{be("198.18.0.11:8090"), be("198.18.0.12:8090")}},
		// The same address on two ports is two backends.
		{[]string{"198.18.0.11", "8090", "198.18.0.11", "8091"}, []config.Backend{be("198.18.0.11:8090"), be("198.18.0.11:8091")}},
		// A name is checked now (a typo fails at once) and kept; the
		// engine resolves it at start and on each reload.
		{[]string{"localhost:8090"}, []config.Backend{be("localhost:8090")}},
		{[]string{"localhost", "8090"}, []config.Backend{be("localhost:8090")}},
	} {
		inv, err := parse(append([]string{src}, c.args...), io.Discard)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if got := inv.cfg.Services[0].Backends; !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: backends %v, want %v", c.args, got, c.want)
		}
	}
}

// Each bad command line is a usage error naming what is wrong.
func TestParseErrors(t *testing.T) {
	ok := []string{src, "198.18.0.11:8090"}
	with := func(flags ...string) []string { return append(flags, ok...) }
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "need the balancer's source IP and at least one backend"},
		{[]string{src}, "need the balancer's source IP and at least one backend"},
		{with("-no-such-flag"), "flag provided but not defined: -no-such-flag"},
		{with("-port", "0"), "bad -port 0: must be 1-65535"},
		{with("-port", "65536"), "bad -port 65536: must be 1-65535"},
		{with("-port", "x"), `invalid value "x" for flag -port`},
		{with("-port", "45000"), "port 45000 is inside nat_ports 40000-59999"},
		{with("-nat-ports", "50000-40000"), `bad -nat-ports "50000-40000"`},
		{with("-nat-ports", "0-100"), `bad -nat-ports "0-100"`},
		{with("-nat-ports", "40000"), `bad -nat-ports "40000"`},
		{with("-nat-ports", "40000-70000"), `bad -nat-ports "40000-70000"`},
		{with("-nat-ports", "banana"), `bad -nat-ports "banana"`},
		{with("-algo", "random"), `bad -algo "random": use rr, lc or maglev`},
		{with("-syn-cookies", "maybe"), `bad -syn-cookies "maybe": use auto, on or off`},
		{with("-on-backend-down", "panic"), `bad -on-backend-down "panic": use reset or keep`},
		{with("-instance", "Web-1"), `bad -instance "Web-1"`},
		{with("-handoff-grace", "10ms"), "bad -handoff-grace 10ms: at least 1s"},
		{with("-nat-port-quiet", "-1s"), "bad -nat-port-quiet -1s: must not be negative"},
		{with("-idle-timeout", "0s"), "bad -idle-timeout 0s: must be positive"},
		{with("-half-open-timeout", "0s"), "bad -half-open-timeout 0s: must be positive"},
		{with("-closing-timeout", "-5s"), "bad -closing-timeout -5s: must be positive"},
		{with("-hc-interval", "0s"), "bad -hc-interval 0s: must be positive"},
		{with("-hc-timeout", "0s"), "bad -hc-timeout 0s: must be positive"},
		{with("-hc-interval", "1s", "-hc-timeout", "2s"), "-hc-timeout 2s is longer than -hc-interval 1s"},
		{with("-idle-timeout", "soon"), `invalid value "soon" for flag -idle-timeout`},
		{with("-max-flows", "0"), "-max-flows, -hc-fall and -hc-rise must be at least 1"},
		{with("-hc-fall", "0"), "-max-flows, -hc-fall and -hc-rise must be at least 1"},
		{with("-hc-rise", "0"), "-max-flows, -hc-fall and -hc-rise must be at least 1"},
		{with("-workers", "-1"), "-workers, -ring-frames, -max-flows-per-client, -syn-cookie-threshold and the rates at least 0"},
		{with("-ring-frames", "-1"), "-workers, -ring-frames"},
		{with("-reset-rate", "-1"), "-workers, -ring-frames"},
		{with("-pprof"), "-pprof needs -metrics"},
		{with("-log-level", "loud"), `bad -log-level "loud": use debug, info, warn or error`},
		{with("-firewall=maybe"), `invalid boolean value "maybe" for -firewall`},
		{[]string{"not-an-ip", "198.18.0.11:8090"}, `bad source IP "not-an-ip"`},
		{[]string{"2001:db8::1", "198.18.0.11:8090"}, `bad source IP "2001:db8::1": need the balancer's own IPv4 address`},
		{[]string{src, "198.18.0.11"}, `bad backend "198.18.0.11": need host:port`},
		{[]string{src, "198.18.0.11", "http"}, `bad backend "198.18.0.11": need host:port`},
		{[]string{src, "198.18.0.11:8090", "8090"}, `bad backend "8090": need host:port`},
		{[]string{src, "198.18.0.11:0"}, `bad backend "198.18.0.11:0": port must be 1-65535`},
		{[]string{src, "198.18.0.11", "0"}, `bad backend "198.18.0.11:0": port must be 1-65535`},
		{[]string{src, "198.18.0.11", "70000"}, `bad backend "198.18.0.11:70000": port must be 1-65535`},
		{[]string{src, "198.18.0.11:http"}, `bad backend "198.18.0.11:http": port must be 1-65535`},
		{[]string{src, "[2001:db8::1]:80"}, "2001:db8::1 is not IPv4 (rawlb balances IPv4)"},
		{[]string{src, "no-such-host.invalid:80"}, `cannot resolve "no-such-host.invalid" to an IPv4 address`},
		{[]string{src, "198.18.0.11:8090", "198.18.0.11", "8090"}, "services[0].backends[1]"},
		{[]string{"-config", "x.yaml", src, "198.18.0.11:8090"}, "with -config, give no srcIP or backends"},
		{[]string{"-config", "x.yaml", "-port", "80"}, "-port is a setting of the configuration file (services[].listen)"},
		{[]string{"-config", "x.yaml", "-metrics", "127.0.0.1:9120"}, "-metrics is a setting of the configuration file (metrics)"},
		{[]string{"-workers", "2", "-config", "x.yaml"}, "-workers is a setting of the configuration file (workers)"},
		{[]string{"-check-config", "x.yaml", "-idle-timeout", "1m"}, "(timeouts.established)"},
	} {
		_, err := parse(c.args, io.Discard)
		if _, usage := err.(usageError); !usage || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v (a usage error: %v), want one containing %q", c.args, err, usage, c.want)
		}
	}
}

// -version needs nothing else, and wins over a missing source and backend.
func TestParseVersion(t *testing.T) {
	if inv, err := parse([]string{"-version"}, io.Discard); err != nil || !inv.showVersion {
		t.Errorf("-version: %+v, %v", inv, err)
	}
}

// run's exit status: 2 and one line on stderr for a bad command line, 0
// for -h (the usage, on stderr) and for -version (on stdout).
func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"-port", "0", src, "198.18.0.11:8090"},
		{"-bogus"},
		{src, "198.18.0.11", "http"},
		{"-hc-interval", "1s", "-hc-timeout", "2s", src, "198.18.0.11:8090"},
	} {
		var stderr bytes.Buffer
		if code := run(args, io.Discard, &stderr); code != 2 {
			t.Errorf("%q: exit status %d, want 2", args, code)
		}
		out := stderr.String()
		if !strings.HasPrefix(out, "rawlb: ") || !strings.HasSuffix(out, " (see rawlb -h)\n") || strings.Count(out, "\n") != 1 {
			t.Errorf("%q: stderr %q, want one line \"rawlb: ... (see rawlb -h)\"", args, out)
		}
	}

	var stderr bytes.Buffer
	if code := run([]string{"-h"}, io.Discard, &stderr); code != 0 {
		t.Errorf("-h: exit status %d, want 0", code)
	}
	if out := stderr.String(); !strings.HasPrefix(out, "usage: rawlb [flags] <srcIP> <backend> [<backend>...]\n") ||
		!strings.Contains(out, "-nat-ports range") || !strings.Contains(out, `"ip port" pairs`) {
		t.Errorf("-h printed %q, want the usage with every flag", out)
	}

	var stdout bytes.Buffer
	stderr.Reset()
	if code := run([]string{"-version"}, &stdout, &stderr); code != 0 {
		t.Errorf("-version: exit status %d, want 0", code)
	}
	if stdout.String() != "rawlb "+version+"\n" || stderr.Len() != 0 {
		t.Errorf("-version: stdout %q, stderr %q, want \"rawlb %s\\n\" and nothing", stdout.String(), stderr.String(), version)
	}
}

// -check-config: a good file says ok; a bad one exits 2 with a line per
// problem, file:line: field: message.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("address: 198.18.0.2\nservices:\n  - name: web\n    listen: 20000\n    backends:\n      - {name: a, address: 198.18.0.11:8090}\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"-check-config", good}, &out, &errb); code != 0 || !strings.Contains(out.String(), "ok (1 services, 1 backends)") {
		t.Fatalf("good file: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("address: 198.18.0.2\nservices:\n  - name: web\n    listen: 45000\n    backends:\n      - {name: a, adress: 198.18.0.11:8090}\n"), 0o644)
	out.Reset()
	errb.Reset()
	code := run([]string{"-check-config", bad}, &out, &errb)
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if code != 2 || len(lines) < 2 || !strings.HasPrefix(lines[0], bad+":4: services[0].listen:") || !strings.Contains(errb.String(), bad+":6: services[0].backends[0].adress:") {
		t.Fatalf("bad file: exit %d, stderr %q", code, errb.String())
	}
	// -config parses the file the same way.
	inv := mustParse(t, "-config", good)
	if inv.configPath != good || inv.cfg.Services[0].Name != "web" || inv.checkOnly {
		t.Fatalf("-config: %+v", inv)
	}
}
