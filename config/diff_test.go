package config

import (
	"reflect"
	"strings"
	"testing"
)

// diffBase is the "old" configuration of the golden cases below; each case
// edits it into the "new" one.
const diffBase = `address: 198.18.0.2
services:
  - name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
      - {name: s2, address: 198.18.0.12:8080, weight: 2}
  - name: chat
    listen: 20000
    health: {interval: 2s}
    backends:
      - {name: c1, address: 198.18.0.21:9000}
`

// edit applies old->new replacements to diffBase, failing on a miss so a
// case cannot silently test nothing.
func edit(t *testing.T, pairs ...string) string {
	t.Helper()
	s := diffBase
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("edit: %q not in the base", pairs[i])
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

func TestDiffGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edits []string
		want  string
	}{
		{"identical", nil, ""},
		{"comments, order and spelling", []string{
			"  - name: web\n    listen: 80\n    backends:\n      - {name: s1, address: 198.18.0.11:8080}\n      - {name: s2, address: 198.18.0.12:8080, weight: 2}\n",
			"",
			"      - {name: c1, address: 198.18.0.21:9000}\n",
			"      - {name: c1, address: 198.18.0.21:9000}\n" +
				"  - name: web # moved\n    listen: \"198.18.0.2:80\"\n    scheduler: rr\n    backends:\n" +
				"      - {name: s2, address: 198.18.0.12:8080, weight: 2}\n      - {name: s1, address: 198.18.0.11:8080, weight: 1}\n",
		}, ""},
		{"backend weight, drain, disabled, backup, max_flows, address", []string{
			"{name: s1, address: 198.18.0.11:8080}", "{name: s1, address: 198.18.0.31:8080, drain: true, max_flows: 100}",
			"{name: s2, address: 198.18.0.12:8080, weight: 2}", "{name: s2, address: 198.18.0.12:8080, weight: 0, disabled: true, backup: true}",
		}, `service web: backend s1: address 198.18.0.11:8080 -> 198.18.0.31:8080
service web: backend s1: drain false -> true
service web: backend s1: max_flows 0 -> 100
service web: backend s2: weight 2 -> 0
service web: backend s2: disabled false -> true
service web: backend s2: backup false -> true
`},
		{"backends added and removed", []string{
			"      - {name: s1, address: 198.18.0.11:8080}\n", "      - {name: s3, address: 198.18.0.13:8080}\n",
			"      - {name: c1, address: 198.18.0.21:9000}\n", "      - {name: c1, address: 198.18.0.21:9000}\n      - {name: c2, address: 198.18.0.22:9000}\n",
		}, `service web: backend s1 removed
service web: backend s3 added
service chat: backend c2 added
`},
		{"backend renamed is removed and added", []string{"name: s1,", "name: s1b,"},
			"service web: backend s1 removed\nservice web: backend s1b added\n"},
		{"services added and removed", []string{
			"  - name: chat\n    listen: 20000\n", "  - name: irc\n    listen: 6667\n",
		}, "service chat: removed\nservice irc: added\n"},
		{"service-level fields", []string{
			"  - name: web\n    listen: 80\n",
			"  - name: web\n    listen: 198.18.0.3:8080\n    scheduler: maglev\n    max_flows: 500\n    drain_timeout: 30s\n    on_backend_down: keep\n",
			"health: {interval: 2s}", "health: {kind: http, interval: 5s, timeout: 2s, rise: 1, fall: 5, port: 9001, path: /ok, host: chat}",
		}, `service web: listen 198.18.0.2:80 -> 198.18.0.3:8080
service web: scheduler rr -> maglev
service web: max_flows 0 -> 500
service web: drain_timeout 0s -> 30s
service web: on_backend_down reset -> keep
service chat: health.kind tcp -> http
service chat: health.interval 2s -> 5s
service chat: health.timeout 1s -> 2s
service chat: health.rise 2 -> 1
service chat: health.fall 3 -> 5
service chat: health.port 0 -> 9001
service chat: health.path "" -> "/ok"
service chat: health.status 0 -> 200
service chat: health.host "" -> "chat"
`},
		{"inherited drain timeout follows timeouts.drain", []string{
			"address: 198.18.0.2\n", "address: 198.18.0.2\ntimeouts: {drain: 1m}\n",
			"    listen: 20000\n", "    listen: 20000\n    drain_timeout: 0s\n",
		}, "global: timeouts.drain 0s -> 1m\nservice web: drain_timeout 0s -> 1m\n"},
		{"reloadable globals", []string{"address: 198.18.0.2\n", `address: 198.18.0.2
metrics: 127.0.0.1:9120
pprof: true
log_level: debug
firewall: false
max_flows: 5000
max_flows_per_client: 50
syn_cookies: "off"
syn_cookie_threshold: 100
rate_limits: {resets: 1, challenge_acks: 2, syn_acks: 3}
timeouts: {half_open: 5s, established: 2h, closing: 1s, nat_port_quiet: 0s}
`}, `global: metrics "" -> "127.0.0.1:9120"
global: pprof false -> true
global: log_level info -> debug
global: firewall true -> false
global: max_flows 1000000 -> 5000
global: max_flows_per_client 0 -> 50
global: syn_cookies auto -> off
global: syn_cookie_threshold 0 -> 100
global: rate_limits.resets 1000 -> 1
global: rate_limits.challenge_acks 1000 -> 2
global: rate_limits.syn_acks 200000 -> 3
global: timeouts.half_open 30s -> 5s
global: timeouts.established 1h -> 2h
global: timeouts.closing 10s -> 1s
global: timeouts.nat_port_quiet 1m -> 0s
`},
		{"restart-only globals", []string{"address: 198.18.0.2\n", `address: 198.18.0.5
interfaces: [eth1]
nat_ports: 30000-39999
workers: 2
ring_frames: 4096
state_dir: /var/lib/rawlb
`}, `restart: address 198.18.0.2 -> 198.18.0.5
restart: interfaces [] -> [eth1]
restart: nat_ports 40000-59999 -> 30000-39999
restart: workers 0 -> 2
restart: ring_frames 0 -> 4096
restart: state_dir /run/rawlb -> /var/lib/rawlb
service web: listen 198.18.0.2:80 -> 198.18.0.5:80
service chat: listen 198.18.0.2:20000 -> 198.18.0.5:20000
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := mustParse(t, diffBase)
			new := mustParse(t, edit(t, tc.edits...))
			ch := Diff(old, new)
			if got := ch.String(); got != tc.want {
				t.Errorf("Diff:\n%s\nwant:\n%s", got, tc.want)
			}
			if ch.Empty() != (tc.want == "") {
				t.Errorf("Empty() = %v for %q", ch.Empty(), ch.String())
			}
			if (ch.RestartError() != nil) != strings.Contains(tc.want, "restart: ") {
				t.Errorf("RestartError() = %v", ch.RestartError())
			}
		})
	}
}

// TestDiffStructure checks the Changes value itself, which the engine
// reads, beyond its String form.
func TestDiffStructure(t *testing.T) {
	old := mustParse(t, diffBase)
	new := mustParse(t, edit(t,
		"address: 198.18.0.2\n", "address: 198.18.0.2\nnat_ports: 40000-49999\nlog_level: warn\n",
		"  - name: chat\n", "  - name: chat2\n",
		"{name: s2, address: 198.18.0.12:8080, weight: 2}", "{name: s2, address: 198.18.0.12:8080, weight: 3}\n      - {name: s4, address: 198.18.0.14:8080}",
		"    listen: 80\n", "    listen: 80\n    scheduler: lc\n",
	))
	want := Changes{
		Restart: []FieldChange{{Field: "nat_ports", Old: "40000-59999", New: "40000-49999"}},
		Global:  []FieldChange{{Field: "log_level", Old: "info", New: "warn"}},
		Added:   []string{"chat2"},
		Removed: []string{"chat"},
		Changed: []ServiceChange{{
			Name:    "web",
			Fields:  []FieldChange{{Field: "scheduler", Old: "rr", New: "lc"}},
			Added:   []string{"s4"},
			Changed: []BackendChange{{Name: "s2", Fields: []FieldChange{{Field: "weight", Old: "2", New: "3"}}}},
		}},
	}
	got := Diff(old, new)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Diff =\n%#v\nwant\n%#v", got, want)
	}
	if err := got.RestartError(); err == nil || err.Error() !=
		"a reload cannot change nat_ports 40000-59999 -> 40000-49999: restart rawlb to apply them, or put the old values back" {
		t.Errorf("RestartError() = %v", err)
	}
	if back := Diff(new, old); len(back.Added) != 1 || back.Added[0] != "chat" || back.Changed[0].Removed[0] != "s4" {
		t.Errorf("reverse Diff = %v", back)
	}
}
