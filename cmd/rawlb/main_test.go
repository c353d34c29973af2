package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/rawlb"
)

const src = "198.18.0.2"

func be(name, addr string) rawlb.Backend {
	return rawlb.Backend{Name: name, Addr: netip.MustParseAddrPort(addr)}
}

// The defaults are the README's flag table.
func TestParseDefaults(t *testing.T) {
	cfg, level, version, err := parse([]string{src, "198.18.0.11:8090"}, io.Discard)
	if err != nil || version || level != slog.LevelInfo {
		t.Fatalf("parse: level %v, version %v, %v", level, version, err)
	}
	want := rawlb.Config{
		SrcIP: netip.MustParseAddr(src), Port: 20000, Backends: []rawlb.Backend{be("198.18.0.11:8090", "198.18.0.11:8090")},
		Iface: "", Algo: rawlb.RoundRobin, NATFirst: 40000, NATLast: 59999, PortQuiet: 60 * time.Second,
		IdleTimeout: time.Hour, HalfOpenTimeout: 30 * time.Second, ClosingTimeout: 10 * time.Second, MaxFlows: 1_000_000,
		HCInterval: 2 * time.Second, HCTimeout: time.Second, HCRise: 2, HCFall: 3,
		MetricsAddr: "", Pprof: false, Firewall: true, Workers: 0,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", cfg, want)
	}
}

// Every flag reaches its Config field.
func TestParseEveryFlag(t *testing.T) {
	cfg, level, _, err := parse([]string{
		"-port", "8080", "-iface", "eth1", "-algo", "lc", "-nat-ports", "30000-30999", "-nat-port-quiet", "0s",
		"-idle-timeout", "90s", "-half-open-timeout", "5s", "-closing-timeout", "3s", "-max-flows", "500",
		"-hc-interval", "3s", "-hc-timeout", "3s", "-hc-fall", "4", "-hc-rise", "5", "-metrics", "127.0.0.1:9120",
		"-pprof", "-firewall=false", "-workers", "3", "-log-level", "debug",
		src, "198.18.0.11:80",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := rawlb.Config{
		SrcIP: netip.MustParseAddr(src), Port: 8080, Backends: []rawlb.Backend{be("198.18.0.11:80", "198.18.0.11:80")},
		Iface: "eth1", Algo: rawlb.LeastConnections, NATFirst: 30000, NATLast: 30999, PortQuiet: 0,
		IdleTimeout: 90 * time.Second, HalfOpenTimeout: 5 * time.Second, ClosingTimeout: 3 * time.Second, MaxFlows: 500,
		HCInterval: 3 * time.Second, HCTimeout: 3 * time.Second, HCRise: 5, HCFall: 4,
		MetricsAddr: "127.0.0.1:9120", Pprof: true, Firewall: false, Workers: 3,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("flags:\n got %+v\nwant %+v", cfg, want)
	}
	if level != slog.LevelDebug {
		t.Errorf("-log-level debug gave %v", level)
	}
}

// Backends are host:port, or the original balancer's "ip port" pairs, in
// any mix; a pair is named host:port, as metrics and logs show it.
func TestParseBackends(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []rawlb.Backend
	}{
		{[]string{"198.18.0.11:8090"}, []rawlb.Backend{be("198.18.0.11:8090", "198.18.0.11:8090")}},
		// The original's command line: rawlb 198.18.0.2 198.18.0.11 8090 198.18.0.12 8090.
		{[]string{"198.18.0.11", "8090", "198.18.0.12", "8090"},
			[]rawlb.Backend{be("198.18.0.11:8090", "198.18.0.11:8090"), be("198.18.0.12:8090", "198.18.0.12:8090")}},
		{[]string{"198.18.0.11", "8090", "198.18.0.12:8091", "198.18.0.13", "8092"},
			[]rawlb.Backend{be("198.18.0.11:8090", "198.18.0.11:8090"), be("198.18.0.12:8091", "198.18.0.12:8091"), be("198.18.0.13:8092", "198.18.0.13:8092")}},
		{[]string{"198.18.0.11:8090", "198.18.0.12", "8090"},
			[]rawlb.Backend{be("198.18.0.11:8090", "198.18.0.11:8090"), be("198.18.0.12:8090", "198.18.0.12:8090")}},
		// The same address on two ports is two backends.
		{[]string{"198.18.0.11", "8090", "198.18.0.11", "8091"},
			[]rawlb.Backend{be("198.18.0.11:8090", "198.18.0.11:8090"), be("198.18.0.11:8091", "198.18.0.11:8091")}},
		// Names are resolved once, now, and keep their name.
		{[]string{"localhost:8090"}, []rawlb.Backend{be("localhost:8090", "127.0.0.1:8090")}},
		{[]string{"localhost", "8090"}, []rawlb.Backend{be("localhost:8090", "127.0.0.1:8090")}},
	} {
		cfg, _, _, err := parse(append([]string{src}, c.args...), io.Discard)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if !reflect.DeepEqual(cfg.Backends, c.want) {
			t.Errorf("%q: backends %v, want %v", c.args, cfg.Backends, c.want)
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
		{with("-port", "45000"), "port 45000 lies inside the NAT port range 40000-59999"},
		{with("-nat-ports", "50000-40000"), `bad -nat-ports "50000-40000"`},
		{with("-nat-ports", "0-100"), `bad -nat-ports "0-100"`},
		{with("-nat-ports", "40000"), `bad -nat-ports "40000"`},
		{with("-nat-ports", "40000-70000"), `bad -nat-ports "40000-70000"`},
		{with("-nat-ports", "banana"), `bad -nat-ports "banana"`},
		{with("-algo", "random"), `bad -algo "random": use rr or lc`},
		{with("-nat-port-quiet", "-1s"), "bad -nat-port-quiet -1s: must be positive"},
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
		{with("-workers", "-1"), "-workers at least 0"},
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
		{[]string{src, "198.18.0.11:8090", "198.18.0.11", "8090"}, "backend 198.18.0.11:8090 is the same as 198.18.0.11:8090"},
	} {
		_, _, _, err := parse(c.args, io.Discard)
		if _, usage := err.(usageError); !usage || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v (a usage error: %v), want one containing %q", c.args, err, usage, c.want)
		}
	}
}

// -version needs nothing else, and wins over a missing source and backend.
func TestParseVersion(t *testing.T) {
	if _, _, version, err := parse([]string{"-version"}, io.Discard); err != nil || !version {
		t.Errorf("-version: version %v, %v", version, err)
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
		if code := run(args, &stderr); code != 2 {
			t.Errorf("%q: exit status %d, want 2", args, code)
		}
		out := stderr.String()
		if !strings.HasPrefix(out, "rawlb: ") || !strings.HasSuffix(out, " (see rawlb -h)\n") || strings.Count(out, "\n") != 1 {
			t.Errorf("%q: stderr %q, want one line \"rawlb: ... (see rawlb -h)\"", args, out)
		}
	}

	var stderr bytes.Buffer
	if code := run([]string{"-h"}, &stderr); code != 0 {
		t.Errorf("-h: exit status %d, want 0", code)
	}
	if out := stderr.String(); !strings.HasPrefix(out, "usage: rawlb [flags] <srcIP> <backend> [<backend>...]\n") ||
		!strings.Contains(out, "-nat-ports range") || !strings.Contains(out, `"ip port" pairs`) {
		t.Errorf("-h printed %q, want the usage with every flag", out)
	}

	stdout := captureStdout(t, func() {
		stderr.Reset()
		if code := run([]string{"-version"}, &stderr); code != 0 {
			t.Errorf("-version: exit status %d, want 0", code)
		}
	})
	if stdout != "rawlb "+version+"\n" || stderr.Len() != 0 {
		t.Errorf("-version: stdout %q, stderr %q, want \"rawlb %s\\n\" and nothing", stdout, stderr.String(), version)
	}
}

// captureStdout returns what fn writes to os.Stdout.
func captureStdout(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	defer func() { os.Stdout = saved }()
	fn()
	w.Close()
	return <-done
}
