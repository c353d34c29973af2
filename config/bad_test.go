package config

import (
	"errors"
	"strings"
	"testing"
)

// base is a minimal valid file; the bad cases below are small edits of it,
// written out in full so the expected line numbers can be read off.
const base = `address: 198.18.0.2
services:
  - name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`

// aliasBomb names a 1200-backend list 1200 times: a 15 kB file that would
// expand to millions of values.
var aliasBomb = "address: 198.18.0.2\nx-b: &b {name: s1, address: 198.18.0.11:8080}\nx-l: &l [" +
	strings.Repeat("*b, ", 1199) + "*b]\nx-s: &s {name: web, listen: 80, backends: *l}\nservices: [" +
	strings.Repeat("*s, ", 1199) + "*s]\n"

var badFiles = []struct {
	name string
	file string
	want string // the whole error text
}{
	{"empty file", ``, `rawlb.yaml: the file is empty: it needs at least address: and services: (see the README's example)`},
	{"only comments", "# nothing yet\n\n", `rawlb.yaml: the file is empty: it needs at least address: and services: (see the README's example)`},
	{"null document", "~\n", `rawlb.yaml: the file is empty: it needs at least address: and services: (see the README's example)`},
	{"document is a list", "- address: 198.18.0.2\n", `rawlb.yaml:1: the file must be a mapping of key: value lines (address:, services:, ...), not a list`},
	{"document is a scalar", "address 198.18.0.2\n", `rawlb.yaml:1: the file must be a mapping of key: value lines (address:, services:, ...), not "address 198.18.0.2"`},
	{"syntax error", `address: 198.18.0.2
services:
  - name: web
     listen: 80
`, `rawlb.yaml:4: YAML syntax: mapping values are not allowed in this context`},
	{"unclosed flow", `address: 198.18.0.2
services:
  - name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080
`, `rawlb.yaml:6: YAML syntax: did not find expected ',' or '}'`},
	{"tab indentation", "address: 198.18.0.2\nservices:\n\t- name: web\n", `rawlb.yaml:3: YAML syntax: found character that cannot start any token (a tab indents this line: YAML indents with spaces only)`},
	{"second document", base + "---\naddress: 198.18.0.3\n", `rawlb.yaml:7: a second YAML document starts here (after ---): rawlb reads one document per file; merge them`},
	{"unknown key with suggestion", `adress: 198.18.0.2
services:
  - name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:1: adress: unknown key "adress"; did you mean "address"?`},
	{"unknown key camel case", base + "maxFlows: 10\n", `rawlb.yaml:7: maxFlows: unknown key "maxFlows"; did you mean "max_flows"?`},
	{"unknown key without suggestion", base + "colour: red\n", `rawlb.yaml:7: colour: unknown key "colour"; known keys here: address, interfaces, nat_ports, metrics, pprof, log_level, workers, ring_frames, firewall, fastpath, state_dir, max_flows, max_flows_per_client, syn_cookies, syn_cookie_threshold, rate_limits, timeouts, services`},
	{"unknown backend key", `address: 198.18.0.2
services:
  - name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080, wieght: 2}
`, `rawlb.yaml:6: services[0].backends[0].wieght: unknown key "wieght"; did you mean "weight"?`},
	{"unknown health key", `address: 198.18.0.2
services:
  - name: web
    listen: 80
    health:
      intervall: 5s
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:6: services[0].health.intervall: unknown key "intervall"; did you mean "interval"?`},
	{"duplicate key", `address: 198.18.0.2
services:
  - name: web
    listen: 80
    listen: 81
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:5: services[0].listen: duplicate key "listen" (first at line 4): keep one`},
	{"merge key", `address: 198.18.0.2
services:
  - &web
    name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
  - <<: *web
    name: web2
`, `rawlb.yaml:8: services[1].<<: merge keys (<<) are not supported: write the fields out`},
	{"services is a scalar", "address: 198.18.0.2\nservices: web\n", `rawlb.yaml:2: services: must be a list (- item lines, or [a, b]), not "web"; e.g. - name: web`},
	{"service is a scalar", "address: 198.18.0.2\nservices:\n  - web\n", `rawlb.yaml:3: services[0]: must be a mapping of key: value lines, not "web"`},
	{"health is a list", `address: 198.18.0.2
services:
  - name: web
    listen: 80
    health: [tcp]
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:5: services[0].health: must be a mapping of key: value lines, not a list`},
	{"bool as yes", base + "pprof: yes\n", `rawlb.yaml:7: pprof: must be true or false, not "yes"`},
	{"number as word", base + "workers: two\n", `rawlb.yaml:7: workers: must be a whole number, not "two"`},
	{"number as float", base + "max_flows: 1e6\n", `rawlb.yaml:7: max_flows: must be a whole number, not "1e6"`},
	{"string as number", `address: 198.18.0.2
services:
  - name: 123
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:3: services[0].name: must be a string, not int; quote it: "123"`},
	{"interfaces not a list", base + "interfaces: eth0\n", `rawlb.yaml:7: interfaces: must be a list (- item lines, or [a, b]), not "eth0"; e.g. [eth0]`},
	{"missing address", `services:
  - name: web
    listen: 80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:1: address: required: the balancer's own IPv4 address, e.g. address: 192.168.1.10`},
	{"empty address", "address:\n" + base[len("address: 198.18.0.2\n"):], `rawlb.yaml:1: address: required: the balancer's own IPv4 address, e.g. address: 192.168.1.10`},
	{"missing services", "address: 198.18.0.2\n", `rawlb.yaml:1: services: at least one service is needed, e.g. services: [{name: web, listen: 80, backends: [...]}]`},
	{"empty services", "address: 198.18.0.2\nservices: []\n", `rawlb.yaml:2: services: at least one service is needed, e.g. services: [{name: web, listen: 80, backends: [...]}]`},
	{"bad IPv4 address", strings.Replace(base, "198.18.0.2", "198.18.0.300", 1), `rawlb.yaml:1: address: "198.18.0.300" is not an IPv4 address: write four numbers such as 192.168.1.10`},
	{"IPv6 address", strings.Replace(base, "198.18.0.2", "2001:db8::2", 1), `rawlb.yaml:1: address: "2001:db8::2" is not an IPv4 address: write four numbers such as 192.168.1.10`},
	{"multicast address", strings.Replace(base, "198.18.0.2", "224.0.0.1", 1), `rawlb.yaml:1: address: 224.0.0.1 is not a unicast address: use an address of one host`},
	{"backend without port", strings.Replace(base, "198.18.0.11:8080", "198.18.0.11", 1), `rawlb.yaml:6: services[0].backends[0].address: "198.18.0.11" is not host:port: write e.g. 192.168.1.21:8090`},
	{"backend port out of range", strings.Replace(base, "198.18.0.11:8080", "198.18.0.11:70000", 1), `rawlb.yaml:6: services[0].backends[0].address: port "70000" in "198.18.0.11:70000" is out of range: use 1-65535`},
	{"backend bad IPv4", strings.Replace(base, "198.18.0.11:8080", "198.18.0.256:8080", 1), `rawlb.yaml:6: services[0].backends[0].address: "198.18.0.256" is not a valid IPv4 address: write four numbers 0-255, e.g. 192.168.1.21:8090`},
	{"backend bad DNS name", strings.Replace(base, "198.18.0.11:8080", "web..lan:8080", 1), `rawlb.yaml:6: services[0].backends[0].address: "web..lan" is neither an IPv4 address nor a DNS name: write e.g. 192.168.1.21:8090`},
	{"backend IPv6", strings.Replace(base, "198.18.0.11:8080", `"[2001:db8::11]:8080"`, 1), `rawlb.yaml:6: services[0].backends[0].address: 2001:db8::11 is not an IPv4 address: rawlb balances IPv4 only`},
	{"listen port out of range", strings.Replace(base, "listen: 80", "listen: 70000", 1), `rawlb.yaml:4: services[0].listen: port 70000 is out of range: use 1-65535`},
	{"listen port zero", strings.Replace(base, "listen: 80", "listen: 0", 1), `rawlb.yaml:4: services[0].listen: port 0 is out of range: use 1-65535`},
	{"listen not an address", strings.Replace(base, "listen: 80", "listen: web:80", 1), `rawlb.yaml:4: services[0].listen: "web:80" is not a port or ip:port: write 20000 (a port on address), or 192.168.1.10:20000`},
	{"listen missing", strings.Replace(base, "    listen: 80\n", "", 1), `rawlb.yaml:3: services[0].listen: required: a port on address (listen: 20000) or ip:port`},
	{"bare number duration", `address: 198.18.0.2
services:
  - name: web
    listen: 80
    health:
      interval: 2
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:6: services[0].health.interval: 2 has no unit: write 2s (or ms, m, h)`},
	{"bad duration", base + "timeouts:\n  closing: 10x\n", `rawlb.yaml:8: timeouts.closing: "10x" is not a duration: write a number with a unit, such as 2s, 500ms, 1m or 1h30m`},
	{"negative duration", base + "timeouts:\n  drain: -1s\n", `rawlb.yaml:8: timeouts.drain: -1s is negative: use 0s or more`},
	{"zero established", base + "timeouts:\n  established: 0s\n", `rawlb.yaml:8: timeouts.established: must be more than 0s, not 0s; e.g. 1h`},
	{"nat_ports reversed", base + "nat_ports: 59999-40000\n", `rawlb.yaml:7: nat_ports: 59999-40000 is empty: the first port must not exceed the last, e.g. 40000-59999`},
	{"nat_ports from zero", base + "nat_ports: 0-100\n", `rawlb.yaml:7: nat_ports: 0-100 starts at port 0: the first port must be 1 or more`},
	{"nat_ports one number", base + "nat_ports: 40000\n", `rawlb.yaml:7: nat_ports: must be a port range such as 40000-59999, not "40000"`},
	{"nat_ports not numbers", base + "nat_ports: high-low\n", `rawlb.yaml:7: nat_ports: "high-low" is not a port range: write first-last within 1-65535, e.g. 40000-59999`},
	{"duplicate service names", base + `  - name: web
    listen: 81
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:7: services[1].name: service name "web" is already used by services[0] at line 3: service names must be unique`},
	{"same listen twice", base + `  - name: web2
    listen: 198.18.0.2:80
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:8: services[1].listen: 198.18.0.2:80 is already used by service "web" (services[0] at line 3): each service needs its own ip:port`},
	{"listen inside nat_ports", strings.Replace(base, "listen: 80", "listen: 45000", 1), `rawlb.yaml:4: services[0].listen: port 45000 is inside nat_ports 40000-59999, where backends' replies arrive: pick a port outside it, or move nat_ports`},
	{"backend on a NAT port of the NAT source", base + "      - {name: s2, address: 198.18.0.2:45000}\n", `rawlb.yaml:7: services[0].backends[1].address: port 45000 of 198.18.0.2 is inside nat_ports 40000-59999, where backends' replies arrive: move the backend's port or nat_ports`},
	{"backend at a service's own address", base + "      - {name: s2, address: 198.18.0.2:80}\n", `rawlb.yaml:7: services[0].backends[1].address: 198.18.0.2:80 is service "web"'s own address: rawlb would balance onto itself`},
	{"duplicate backend names", base + "      - {name: s1, address: 198.18.0.12:8080}\n", `rawlb.yaml:7: services[0].backends[1].name: backend name "s1" is already used by services[0].backends[0] at line 6: names must be unique within a service`},
	{"duplicate backend addresses", base + "      - {name: s2, address: 198.18.0.11:8080}\n", `rawlb.yaml:7: services[0].backends[1].address: 198.18.0.11:8080 is already used by backend "s1" (services[0].backends[0] at line 6): list each server once, with a weight`},
	{"no backends", strings.Replace(base, "      - {name: s1, address: 198.18.0.11:8080}\n", "", 1), `rawlb.yaml:5: services[0].backends: a service needs at least one backend, e.g. backends: [{name: s1, address: 192.168.1.21:8090}]`},
	{"empty backend list", strings.Replace(base, "backends:\n      - {name: s1, address: 198.18.0.11:8080}\n", "backends: []\n", 1), `rawlb.yaml:5: services[0].backends: a service needs at least one backend, e.g. backends: [{name: s1, address: 192.168.1.21:8090}]`},
	{"backend without name and address", base + "      - {weight: 2}\n", `rawlb.yaml:7: services[0].backends[1].name: required: a name for logs and metrics, e.g. name: s1
rawlb.yaml:7: services[0].backends[1].address: required: host:port, e.g. 192.168.1.21:8090`},
	{"unknown scheduler", strings.Replace(base, "listen: 80\n", "listen: 80\n    scheduler: wrr\n", 1), `rawlb.yaml:5: services[0].scheduler: unknown scheduler "wrr": use rr (weighted round robin), lc (weighted least connections) or maglev`},
	{"unknown health kind", strings.Replace(base, "listen: 80\n", "listen: 80\n    health: {kind: icmp}\n", 1), `rawlb.yaml:5: services[0].health.kind: unknown kind "icmp": use tcp or http`},
	{"unknown log level", base + "log_level: verbose\n", `rawlb.yaml:7: log_level: unknown log level "verbose": use debug, info, warn or error`},
	{"unknown on_backend_down", strings.Replace(base, "listen: 80\n", "listen: 80\n    on_backend_down: drop\n", 1), `rawlb.yaml:5: services[0].on_backend_down: unknown action "drop": use keep (flows go on) or reset (both ends get a RST)`},
	{"unknown syn_cookies mode", base + "syn_cookies: always\n", `rawlb.yaml:7: syn_cookies: unknown mode "always": use auto, on or off`},
	{"health timeout above interval", strings.Replace(base, "listen: 80\n", "listen: 80\n    health:\n      interval: 1s\n      timeout: 2s\n", 1), `rawlb.yaml:7: services[0].health.timeout: 2s is longer than interval 1s: a check must end before the next one starts; shorten timeout or raise interval`},
	{"rise and fall below one", strings.Replace(base, "listen: 80\n", "listen: 80\n    health:\n      rise: 0\n      fall: -1\n", 1), `rawlb.yaml:6: services[0].health.rise: must be 1 or more, not 0
rawlb.yaml:7: services[0].health.fall: must be 1 or more, not -1`},
	{"weight out of range", strings.Replace(base, "8080}", "8080, weight: 300}", 1), `rawlb.yaml:6: services[0].backends[0].weight: 300 is out of range: use 0-256 (0 takes no new flows)`},
	{"negative weight", strings.Replace(base, "8080}", "8080, weight: -1}", 1), `rawlb.yaml:6: services[0].backends[0].weight: -1 is out of range: use 0-256 (0 takes no new flows)`},
	{"http field on tcp check", strings.Replace(base, "listen: 80\n", "listen: 80\n    health:\n      kind: tcp\n      path: /health\n", 1), `rawlb.yaml:7: services[0].health.path: path is for http checks, and this check is kind tcp: set kind: http, or remove path`},
	{"tcp field on http check", strings.Replace(base, "listen: 80\n", "listen: 80\n    health:\n      kind: http\n      send: PING\n", 1), `rawlb.yaml:7: services[0].health.send: send is for tcp checks, and this check is kind http: set kind: tcp, or remove send`},
	{"http path without slash", strings.Replace(base, "listen: 80\n", "listen: 80\n    health: {kind: http, path: health}\n", 1), `rawlb.yaml:5: services[0].health.path: "health" must start with "/", e.g. /health`},
	{"http status out of range", strings.Replace(base, "listen: 80\n", "listen: 80\n    health: {kind: http, status: 42}\n", 1), `rawlb.yaml:5: services[0].health.status: 42 is not an HTTP status: use 100-599, e.g. 200`},
	{"health port out of range", strings.Replace(base, "listen: 80\n", "listen: 80\n    health: {port: 65536}\n", 1), `rawlb.yaml:5: services[0].health.port: port 65536 is out of range: use 1-65535, or 0 for the backend's own port`},
	{"bad binary send", strings.Replace(base, "listen: 80\n", "listen: 80\n    health: {send: !!binary '%%%'}\n", 1), `rawlb.yaml:5: services[0].health.send: !!binary value is not valid base64: illegal base64 data at input byte 0`},
	{"pprof without metrics", base + "pprof: true\n", `rawlb.yaml:7: pprof: needs metrics: /debug/pprof is served on the metrics address`},
	{"bad metrics address", base + "metrics: 9120\n", `rawlb.yaml:7: metrics: must be host:port such as 127.0.0.1:9120, not "9120"`},
	{"relative state_dir", base + "state_dir: run/rawlb\n", `rawlb.yaml:7: state_dir: "run/rawlb" is not an absolute path: write e.g. /run/rawlb`},
	{"negative workers", base + "workers: -1\n", `rawlb.yaml:7: workers: must be 0 (automatic) or more, not -1`},
	{"zero max_flows", base + "max_flows: 0\n", `rawlb.yaml:7: max_flows: must be 1 or more, not 0`},
	{"syn_acks zero with cookies on", base + "syn_cookies: on\nrate_limits: {syn_acks: 0}\n", `rawlb.yaml:8: rate_limits.syn_acks: 0 lets no SYN cookie out, so syn_cookies: on cannot work: raise it, or set syn_cookies: off`},
	{"bad interface names", base + "interfaces: [eth0, eth0, a/b, averyveryverylongname]\n", `rawlb.yaml:7: interfaces[1]: "eth0" is listed twice (also interfaces[0] at line 7): keep one
rawlb.yaml:7: interfaces[2]: "a/b" is not an interface name: it may not contain '/', ':' or spaces
rawlb.yaml:7: interfaces[3]: "averyveryverylongname" is longer than 15 bytes, the kernel's limit for interface names`},
	{"bad service name", strings.Replace(base, "name: web", "name: my web", 1), `rawlb.yaml:3: services[0].name: "my web" is not a valid name: use at most 64 letters, digits, '-', '_', '.' or ':'`},
	{"backend address a number", strings.Replace(base, "198.18.0.11:8080", "8080", 1), `rawlb.yaml:6: services[0].backends[0].address: must be host:port such as 192.168.1.21:8090, not "8080"`},
	{"bad nat_ports does not judge listen", strings.Replace(base, "listen: 80", "listen: 45000", 1) + "nat_ports: 1-2-3\n", `rawlb.yaml:7: nat_ports: "1-2-3" is not a port range: write first-last within 1-65535, e.g. 40000-59999`},
	{"alias expansion beyond the budget", aliasBomb, `rawlb.yaml:2: the file expands to more than 262144 values (through aliases?): write it out plainly`},
	{"several problems sorted by line", `services:
  - name: web
    listen: 45000
    scheduler: fastest
    backends:
      - {name: s1, address: 198.18.0.11:8080}
      - {name: s1, address: 198.18.0.11:8080}
address: 198.18.0.2
log_level: loud
`, `rawlb.yaml:3: services[0].listen: port 45000 is inside nat_ports 40000-59999, where backends' replies arrive: pick a port outside it, or move nat_ports
rawlb.yaml:4: services[0].scheduler: unknown scheduler "fastest": use rr (weighted round robin), lc (weighted least connections) or maglev
rawlb.yaml:7: services[0].backends[1].name: backend name "s1" is already used by services[0].backends[0] at line 6: names must be unique within a service
rawlb.yaml:7: services[0].backends[1].address: 198.18.0.11:8080 is already used by backend "s1" (services[0].backends[0] at line 6): list each server once, with a weight
rawlb.yaml:9: log_level: unknown log level "loud": use debug, info, warn or error`},
	{"decode error hides its follow-ups", `address: nowhere
nat_ports: lots
services:
  - name: web
    listen: 45000
    backends:
      - {name: s1, address: 198.18.0.11:8080}
`, `rawlb.yaml:1: address: "nowhere" is not an IPv4 address: write four numbers such as 192.168.1.10
rawlb.yaml:2: nat_ports: "lots" is not a port range: write first-last within 1-65535, e.g. 40000-59999`},
}

func TestParseBadFiles(t *testing.T) {
	for _, tc := range badFiles {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.file), "rawlb.yaml")
			if err == nil {
				t.Fatalf("Parse accepted the file: %+v", c)
			}
			if c != nil {
				t.Errorf("Parse returned a Config along with the error")
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", got, tc.want)
			}
			var first *Error
			if !errors.As(err, &first) {
				t.Fatalf("errors.As found no *Error in %T", err)
			}
			if want, _, _ := strings.Cut(tc.want, "\n"); first.Error() != want {
				t.Errorf("first error %q, want %q", first.Error(), want)
			}
			if first.File != "rawlb.yaml" {
				t.Errorf("first error's File = %q", first.File)
			}
		})
	}
}
