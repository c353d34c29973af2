package rawlb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// apiBackend and apiService are a backend and a service as GET
// /api/services shows them. The JSON names are the API, so the test
// decodes them itself, as a client would, rather than through
// rawlb.StatusService: a renamed tag must fail here.
type apiBackend struct {
	Name       string `json:"name"`
	Address    string `json:"address"`
	State      string `json:"state"`
	Health     string `json:"health"`
	Usable     bool   `json:"usable"`
	Why        string `json:"why"`
	Weight     int    `json:"weight"`
	Flows      int64  `json:"flows"`
	FlowsTotal uint64 `json:"flows_total"`
}

type apiService struct {
	Name      string       `json:"name"`
	Listen    string       `json:"listen"`
	Scheduler string       `json:"scheduler"`
	Flows     int64        `json:"flows"`
	Backends  []apiBackend `json:"backends"`
}

// apiReply is what curl saw of one request.
type apiReply struct {
	code        int
	contentType string
	allow       string // the Allow header, which a 405 must carry
	body        string
}

// curlAPI runs curl in the balancer's namespace, where the API listens on
// metricsAddr, and returns the reply. Running the real curl, rather than
// Go's client, checks what an operator's shell command sees. A transport
// failure (curl exits non-zero) fails t.
func (s *setup) curlAPI(t *testing.T, method, path string) apiReply {
	t.Helper()
	const sep = "\n--rawlb-test--\n"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := s.lab.Balancer.Command(ctx, "curl", "-sS", "--noproxy", "*", "--max-time", "10", "-X", method,
		"-w", sep+"%{http_code}\n%{content_type}\n%header{allow}", "http://"+metricsAddr+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl -X %s %s: %v\n%s", method, path, err, stderr.String())
	}
	body, meta, ok := strings.Cut(string(out), sep)
	fields := strings.Split(meta, "\n")
	if !ok || len(fields) != 3 {
		t.Fatalf("curl -X %s %s: cannot split its output %q", method, path, out)
	}
	code, err := strconv.Atoi(fields[0])
	if err != nil {
		t.Fatalf("curl -X %s %s: status %q", method, path, fields[0])
	}
	return apiReply{code: code, contentType: fields[1], allow: fields[2], body: body}
}

// apiServices returns GET /api/services, decoded.
func (s *setup) apiServices(t *testing.T) []apiService {
	t.Helper()
	r := s.curlAPI(t, "GET", "/api/services")
	if r.code != 200 || r.contentType != "application/json" {
		t.Fatalf("GET /api/services: %d %q, want 200 application/json\n%s", r.code, r.contentType, r.body)
	}
	var out []apiService
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatalf("GET /api/services: %v\n%s", err, r.body)
	}
	return out
}

// apiBackendState returns backend be of service svc from GET /api/services.
func (s *setup) apiBackendState(t *testing.T, svc, be string) apiBackend {
	t.Helper()
	for _, sv := range s.apiServices(t) {
		if sv.Name != svc {
			continue
		}
		for _, b := range sv.Backends {
			if b.Name == be {
				return b
			}
		}
	}
	t.Fatalf("GET /api/services has no backend %s of service %s", be, svc)
	return apiBackend{}
}

// apiAction POSTs action for backend be of service svc, wants 200 and the
// backend's new state as JSON, and returns that state.
func (s *setup) apiAction(t *testing.T, svc, be, action string) apiBackend {
	t.Helper()
	path := fmt.Sprintf("/api/services/%s/backends/%s/%s", svc, be, action)
	r := s.curlAPI(t, "POST", path)
	if r.code != 200 || r.contentType != "application/json" {
		t.Fatalf("POST %s: %d %q, want 200 application/json\n%s", path, r.code, r.contentType, r.body)
	}
	var b apiBackend
	if err := json.Unmarshal([]byte(r.body), &b); err != nil {
		t.Fatalf("POST %s: %v\n%s", path, err, r.body)
	}
	if b.Name != be {
		t.Fatalf("POST %s answered with backend %q", path, b.Name)
	}
	return b
}

// apiSpread makes n connections to the service at addr, closing each after
// its greeting, and counts them by the backend that greeted.
func apiSpread(t *testing.T, s *setup, addr string, n int) map[string]int {
	t.Helper()
	count := map[string]int{}
	for i := 0; i < n; i++ {
		c, name := dialName(t, s, addr)
		c.Close()
		count[name]++
	}
	return count
}

// apiDialTo connects to addr until the connection reaches backend want, and
// returns that one. Round robin gets there within one cycle.
func apiDialTo(t *testing.T, s *setup, addr, want string, tries int) net.Conn {
	t.Helper()
	var seen []string
	for i := 0; i < tries; i++ {
		c, name := dialName(t, s, addr)
		if name == want {
			return c
		}
		c.Close()
		seen = append(seen, name)
	}
	t.Fatalf("%d connections to %s never reached %s (reached %v)", tries, addr, want, seen)
	return nil
}

// equalCounts reports whether got has exactly the counts of want (a
// missing key is 0).
func equalCounts(got, want map[string]int) bool {
	for k, v := range got {
		if want[k] != v {
			return false
		}
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// TestAPIDrainEnable drives a service's backends through the JSON API with
// curl: GET shows the configured backends and their live flows; drain
// keeps a backend's connections and gives it no new ones; enable brings
// it back; disable resets its connections; bad requests change nothing;
// and a reload of the unchanged file puts the file's state back.
//
// Weights 2, 3 and 1 make every count exact: rawlb's weighted round
// robin repeats a cycle of sum(weights) turns (sched's smoothSequence)
// that gives each backend exactly its weight, so n whole cycles of new
// connections land exactly n*weight on each usable backend, wherever in
// the cycle they start.
func TestAPIDrainEnable(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	servers := map[string]*netlab.Backend{}
	weights := map[string]int{"web1": 2, "web2": 3, "web3": 1}
	var yaml strings.Builder
	fmt.Fprintf(&yaml, "services:\n  - name: web\n    listen: %d\n    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n    backends:\n", lbPort)
	for i, h := range lab.Backends {
		name := fmt.Sprintf("web%d", i+1)
		servers[name] = h.StartBackend(t, backendPort, name)
		fmt.Fprintf(&yaml, "      - {name: %s, address: \"%s:%d\", weight: %d}\n", name, h.IP, backendPort, weights[name])
	}
	s := launchConfig(t, lab, yaml.String())
	s.waitUp(t, 3)
	const x = "web2" // the backend the test drains, enables and disables

	// GET /api/services: the file's backends, and two live flows.
	var open []net.Conn
	held := map[string]int64{}
	for i := 0; i < 2; i++ {
		c, name := dialName(t, s, s.vip)
		open = append(open, c)
		held[name]++
	}
	var svcs []apiService
	netlab.WaitFor(t, 10*time.Second, "GET /api/services to count the two open connections", func() bool {
		svcs = s.apiServices(t)
		return len(svcs) == 1 && svcs[0].Flows == 2
	})
	sv := svcs[0]
	if sv.Name != "web" || sv.Listen != s.vip || sv.Scheduler != "rr" || len(sv.Backends) != 3 {
		t.Fatalf("GET /api/services: service %q on %s, scheduler %q, %d backends; want web on %s, rr, 3", sv.Name, sv.Listen, sv.Scheduler, len(sv.Backends), s.vip)
	}
	var sum int64
	for i, b := range sv.Backends {
		name := fmt.Sprintf("web%d", i+1)
		addr := fmt.Sprintf("%s:%d", lab.Backends[i].IP, backendPort)
		if b.Name != name || b.Address != addr || b.State != "active" || b.Health != "up" || !b.Usable || b.Why != "" || b.Weight != weights[name] {
			t.Errorf("GET /api/services: backend %d is %+v; want %s at %s, active, up, usable, weight %d", i, b, name, addr, weights[name])
		}
		if b.Flows != held[name] {
			t.Errorf("GET /api/services: %s has %d live flows, want %d (connections open: %v)", name, b.Flows, held[name], held)
		}
		sum += b.Flows
	}
	if sum != 2 {
		t.Errorf("live flows over the backends sum to %d, want 2", sum)
	}
	for _, c := range open {
		c.Close()
	}

	// drain: x keeps its connection and takes no new one.
	conn := apiDialTo(t, s, s.vip, x, 6)
	defer conn.Close()
	if b := s.apiAction(t, "web", x, "drain"); b.State != "drain" || b.Usable || b.Why != "draining" || b.Health != "up" {
		t.Fatalf("POST drain answered %+v; want state drain, not usable, why draining, health up", b)
	}
	if got, want := apiSpread(t, s, s.vip, 9), map[string]int{"web1": 6, "web3": 3}; !equalCounts(got, want) {
		t.Errorf("with %s draining, 9 new connections went %v; want %v (three cycles of weights 2:1)", x, got, want)
	}
	// The earlier connections' flows stay live until both ends' FINs have
	// passed, so the count may need a moment to settle.
	var drained apiBackend
	netlab.WaitFor(t, 10*time.Second, "GET /api/services to show the one held flow of draining "+x, func() bool {
		drained = s.apiBackendState(t, "web", x)
		return drained.Flows == 1
	})
	if drained.State != "drain" || drained.Usable {
		t.Errorf("GET /api/services: draining %s is %+v; want state drain, not usable", x, drained)
	}
	if v := s.metric(t, "rawlb_backend_admin_state", "service", "web", "backend", x, "state", "drain"); v != 1 {
		t.Errorf(`rawlb_backend_admin_state{state="drain"} of %s = %v, want 1`, x, v)
	}
	if v := s.metric(t, "rawlb_backend_admin_state", "service", "web", "backend", x, "state", "active"); v != 0 {
		t.Errorf(`rawlb_backend_admin_state{state="active"} of %s = %v, want 0`, x, v)
	}
	if v := s.metric(t, "rawlb_backend_up", "service", "web", "backend", x); v != 0 {
		t.Errorf("rawlb_backend_up of draining %s = %v, want 0 (it takes no new flows)", x, v)
	}
	if err := netlab.EchoRoundTrip(conn, []byte("still served while draining")); err != nil {
		t.Fatalf("the connection to %s after drain: %v", x, err)
	}

	// enable: x takes new flows again, its full share.
	if b := s.apiAction(t, "web", x, "enable"); b.State != "active" || !b.Usable || b.Why != "" {
		t.Fatalf("POST enable answered %+v; want state active, usable", b)
	}
	if got, want := apiSpread(t, s, s.vip, 12), map[string]int{"web1": 4, "web2": 6, "web3": 2}; !equalCounts(got, want) {
		t.Errorf("with %s enabled again, 12 new connections went %v; want %v (two cycles of weights 2:3:1)", x, got, want)
	}

	// disable: x's connection is reset, at both ends, and it takes no new one.
	conn = apiDialTo(t, s, s.vip, x, 6)
	defer conn.Close()
	if _, err := io.WriteString(conn, "HOLD\n"); err != nil {
		t.Fatal(err)
	}
	if b := s.apiAction(t, "web", x, "disable"); b.State != "disabled" || b.Usable || b.Why != "disabled" {
		t.Fatalf("POST disable answered %+v; want state disabled, not usable, why disabled", b)
	}
	// The sweep that resets the flow runs every 50 ms; 10 s is only the
	// bound past which the read gives up.
	disabledAt := time.Now()
	_ = conn.SetReadDeadline(disabledAt.Add(10 * time.Second))
	n, err := conn.Read(make([]byte, 64))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on the connection to disabled %s: %d bytes, %v; want connection reset", x, n, err)
	}
	t.Logf("the client's connection to disabled %s was reset %v after the API answered", x, time.Since(disabledAt).Round(time.Millisecond))
	// The backend's end got its RST too: its server no longer holds it.
	// (Health checks connect and close at once, so Active touches 0.)
	netlab.WaitFor(t, 10*time.Second, x+"'s server to see its connection reset", func() bool { return servers[x].Active() == 0 })
	if got, want := apiSpread(t, s, s.vip, 9), map[string]int{"web1": 6, "web3": 3}; !equalCounts(got, want) {
		t.Errorf("with %s disabled, 9 new connections went %v; want %v", x, got, want)
	}
	if b := s.apiBackendState(t, "web", x); b.State != "disabled" || b.Flows != 0 {
		t.Errorf("GET /api/services: disabled %s is %+v; want state disabled, no live flow", x, b)
	}
	if v := s.metric(t, "rawlb_backend_admin_state", "service", "web", "backend", x, "state", "disabled"); v != 1 {
		t.Errorf(`rawlb_backend_admin_state{state="disabled"} of %s = %v, want 1`, x, v)
	}

	// Requests for what does not exist are refused with a reason, and
	// change nothing.
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"POST", "/api/services/nosuch/backends/web1/drain", 404, `no service "nosuch"`},
		{"POST", "/api/services/web/backends/nosuch/drain", 404, `service web has no backend "nosuch"`},
		{"POST", "/api/services/web/backends/web1/pause", 404, `unknown action "pause": use drain, enable or disable`},
		{"POST", "/api/services/web/backends/web1", 404, "404 page not found"},
		{"GET", "/api/services/web/backends/web1/drain", 405, "Method Not Allowed"},
		{"PUT", "/api/services/web/backends/web1/drain", 405, "Method Not Allowed"},
		{"POST", "/api/services", 405, "Method Not Allowed"},
	} {
		r := s.curlAPI(t, c.method, c.path)
		if r.code != c.code || !strings.Contains(r.body, c.body) {
			t.Errorf("%s %s: %d %q; want %d and a body saying %q", c.method, c.path, r.code, r.body, c.code, c.body)
		}
		if r.code == 405 && !strings.Contains(r.allow, "POST") && !strings.Contains(r.allow, "GET") {
			t.Errorf("%s %s: 405 with Allow %q, want the allowed methods", c.method, c.path, r.allow)
		}
	}
	for name, state := range map[string]string{"web1": "active", "web2": "disabled", "web3": "active"} {
		if b := s.apiBackendState(t, "web", name); b.State != state {
			t.Errorf("after the refused requests %s is %s, want %s", name, b.State, state)
		}
	}

	// A reload applies the file as it is: x, disabled only through the
	// API, is active again, though the file did not change.
	if err := s.tryReload(t, s.configHeader()+yaml.String()); err != nil {
		t.Fatalf("reload of the unchanged file: %v", err)
	}
	if b := s.apiBackendState(t, "web", x); b.State != "active" || !b.Usable {
		t.Errorf("after a reload of the unchanged file, %s is %+v; want the file's state: active, usable (the API's disable is lost, as documented)", x, b)
	}
	if v := s.metric(t, "rawlb_backend_admin_state", "service", "web", "backend", x, "state", "active"); v != 1 {
		t.Errorf(`after the reload, rawlb_backend_admin_state{state="active"} of %s = %v, want 1`, x, v)
	}
	if got, want := apiSpread(t, s, s.vip, 6), map[string]int{"web1": 2, "web2": 3, "web3": 1}; !equalCounts(got, want) {
		t.Errorf("after the reload, 6 new connections went %v; want %v", got, want)
	}
}

// exitCode runs cmd and returns its exit status, standard output and
// standard error; a command that could not run at all fails t.
func exitCode(t *testing.T, cmd *exec.Cmd) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// reloadErrText returns the error rawlb logged for a refused reload (the
// err= value of tryReload's log line), unquoted: the text an operator
// reads, the same as -check-config prints.
func reloadErrText(t *testing.T, err error) string {
	t.Helper()
	line := err.Error()
	_, v, ok := strings.Cut(line, " err=")
	if !ok {
		t.Fatalf("no err= in the log line %q", line)
	}
	if !strings.HasPrefix(v, `"`) {
		return v
	}
	u, uerr := strconv.Unquote(strings.TrimSpace(v))
	if uerr != nil {
		t.Fatalf("err= in %q: %v", line, uerr)
	}
	return u
}

// TestBadConfigReloads sends SIGHUP over one bad file after another, each
// a real mistake an operator makes, and checks that rawlb names the file,
// the line and the field, says what is wrong, counts the failure, and
// changes nothing. Each bad line carries a "# bad" comment: the line rawlb
// must name is the one so marked, so no line number is counted by hand.
// Two of the files are also given to rawlb -check-config, which must
// print the same message and exit 2; and two valid files that change
// what only a restart can are refused with a message saying so.
func TestBadConfigReloads(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := webLab(t)
	good := servicesYAML(lab, svcSpec{name: "web", listen: lbPort, bePort: backendPort})
	s := launchConfig(t, lab, good)
	s.waitUp(t, 3)
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	be := func(i int) string { return fmt.Sprintf("%s:%d", lab.Backends[i].IP, backendPort) }
	// edit replaces old, which must occur in the good file, by new.
	edit := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("the good file has no %q to edit", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	listen := fmt.Sprintf("    listen: %d\n", lbPort)
	health := "health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}"
	web3 := fmt.Sprintf("      - {name: web3, address: \"%s\"}\n", be(2))
	// Messages that point at another field name its line: services[0]
	// starts on the line after the header and "services:", its listen
	// follows, and its first backend is four lines down.
	svc0Line := configHeaderLines + 2

	cases := []struct {
		name        string
		services    string // the file after the header
		field       string // "" for a YAML syntax error
		msg         string // a substring of the message
		checkConfig bool   // also run rawlb -check-config on it
	}{
		{"unknown key", edit(listen, listen+"    schedular: lc # bad\n"),
			"services[0].schedular", `unknown key "schedular"; did you mean "scheduler"?`, false},
		{"duplicate service name", good + fmt.Sprintf("  - name: web # bad\n    listen: %d\n    backends:\n      - {name: web1, address: \"%s\"}\n", lbPort+1, be(0)),
			"services[1].name", fmt.Sprintf(`service name "web" is already used by services[0] at line %d`, svc0Line), false},
		{"duplicate backend name", good + fmt.Sprintf("      - {name: web1, address: \"%s:%d\"} # bad\n", lab.Backends[2].IP, backendPort+1),
			"services[0].backends[3].name", fmt.Sprintf(`backend name "web1" is already used by services[0].backends[0] at line %d`, svc0Line+4), true},
		{"two services on one port", good + fmt.Sprintf("  - name: alt\n    listen: %d # bad\n    backends:\n      - {name: alt1, address: \"%s:%d\"}\n", lbPort, lab.Backends[0].IP, backendPort+1),
			"services[1].listen", fmt.Sprintf(`%s is already used by service "web" (services[0] at line %d)`, s.vip, svc0Line), false},
		{"listen port inside nat_ports", edit(listen, "    listen: 45000 # bad\n"),
			"services[0].listen", "port 45000 is inside nat_ports 40000-59999, where backends' replies arrive", false},
		{"duration without a unit", edit("    "+health+"\n", "    health: {kind: tcp, interval: 500, timeout: 400ms, rise: 1, fall: 2} # bad\n"),
			"services[0].health.interval", "500 has no unit", false},
		{"health timeout above interval", edit("    "+health+"\n", "    health: {kind: tcp, interval: 500ms, timeout: 2s, rise: 1, fall: 2} # bad\n"),
			"services[0].health.timeout", "2s is longer than interval 500ms", false},
		{"bad backend address", edit(fmt.Sprintf("\"%s\"}", be(0)), fmt.Sprintf("\"198.18.0.256:%d\"} # bad", backendPort)),
			"services[0].backends[0].address", `"198.18.0.256" is not a valid IPv4 address`, false},
		{"backend without a port", edit(fmt.Sprintf("\"%s\"}", be(1)), fmt.Sprintf("\"%s\"} # bad", lab.Backends[1].IP)),
			"services[0].backends[1].address", fmt.Sprintf(`"%s" is not host:port`, lab.Backends[1].IP), false},
		{"weight out of range", edit(fmt.Sprintf("\"%s\"}", be(1)), fmt.Sprintf("\"%s\", weight: 300} # bad", be(1))),
			"services[0].backends[1].weight", "300 is out of range: use 0-256", false},
		{"YAML syntax error", edit(listen, " "+strings.TrimSuffix(listen, "\n")+" # bad\n"),
			"", "YAML syntax: mapping values are not allowed in this context", true},
		{"tab indentation", edit("  - name: web\n", "\t- name: web # bad\n"),
			"", "a tab indents this line: YAML indents with spaces only", false},
		{"unknown scheduler", edit(listen, listen+"    scheduler: wrr # bad\n"),
			"services[0].scheduler", `unknown scheduler "wrr": use rr (weighted round robin), lc (weighted least connections) or maglev`, false},
		{"http-only field on a tcp check", edit("    "+health+"\n", "    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2, path: /healthz} # bad\n"),
			"services[0].health.path", "path is for http checks, and this check is kind tcp: set kind: http, or remove path", false},
		{"empty backends list", edit("    backends:\n"+good[strings.Index(good, "      - {name: web1"):], "    backends: [] # bad\n"),
			"services[0].backends", "a service needs at least one backend", false},
		{"duplicate key", edit(web3, web3+"    listen: 20005 # bad\n"),
			"services[0].listen", fmt.Sprintf(`duplicate key "listen" (first at line %d): keep one`, svc0Line+1), false},
	}
	for _, c := range cases {
		content := s.configHeader() + c.services
		line := 0
		for i, l := range strings.Split(content, "\n") {
			if strings.Contains(l, "# bad") {
				if line != 0 {
					t.Fatalf("%s: two lines marked # bad", c.name)
				}
				line = i + 1
			}
		}
		if line == 0 {
			t.Fatalf("%s: no line marked # bad", c.name)
		}
		failures, reloads := s.metric(t, "rawlb_config_reload_failures_total"), s.metric(t, "rawlb_config_reloads_total")
		err := s.tryReload(t, content)
		if err == nil {
			t.Errorf("%s: rawlb applied the bad file:\n%s", c.name, content)
			continue
		}
		text := reloadErrText(t, err)
		t.Logf("%s: %s", c.name, strings.TrimPrefix(text, s.configPath))
		want := fmt.Sprintf("%s:%d: ", s.configPath, line)
		if c.field != "" {
			want += c.field + ": "
		}
		if !strings.HasPrefix(text, want) || !strings.Contains(text, c.msg) || strings.Contains(text, "\n") {
			t.Errorf("%s: rawlb said\n%s\nwant one problem, starting %q and saying %q", c.name, text, want, c.msg)
		}
		if v := s.metric(t, "rawlb_config_reload_failures_total"); v != failures+1 {
			t.Errorf("%s: rawlb_config_reload_failures_total went from %v to %v, want one more", c.name, failures, v)
		}
		if v := s.metric(t, "rawlb_config_reloads_total"); v != reloads {
			t.Errorf("%s: rawlb_config_reloads_total went from %v to %v, want no change", c.name, reloads, v)
		}
		if up, w := s.metric(t, "rawlb_backend_up", "service", "web"), s.metric(t, "rawlb_backend_weight", "service", "web"); up != 3 || w != 3 {
			t.Errorf("%s: after the refused reload %v backends are up, weights sum to %v; want 3 and 3", c.name, up, w)
		}
		conn, name := dialName(t, s, s.vip)
		if err := netlab.EchoRoundTrip(conn, []byte(c.name)); err != nil || !strings.HasPrefix(name, "web") {
			t.Errorf("%s: a connection after the refused reload reached %q: %v", c.name, name, err)
		}
		conn.Close()
		if c.checkConfig {
			// The file on disk is still the bad one.
			code, stdout, stderr := exitCode(t, exec.Command(bin, "-check-config", s.configPath))
			if code != 2 || stdout != "" || stderr != text+"\n" {
				t.Errorf("%s: rawlb -check-config exited %d, stdout %q, stderr %q; want 2 and the reload's message %q", c.name, code, stdout, stderr, text)
			}
		}
	}

	// Valid files that change what only a restart can change: refused,
	// saying so, and -check-config accepts them (the file is fine).
	for _, c := range []struct{ name, content, msg string }{
		{"metrics address", strings.Replace(s.configHeader(), "metrics: "+metricsAddr, "metrics: 127.0.0.1:9121", 1) + good,
			`metrics changed ("127.0.0.1:9120" -> "127.0.0.1:9121"): that needs a restart`},
		{"nat_ports", s.configHeader() + "nat_ports: 40000-49999\n" + good,
			"a reload cannot change nat_ports 40000-59999 -> 40000-49999: restart rawlb to apply them, or put the old values back"},
	} {
		failures := s.metric(t, "rawlb_config_reload_failures_total")
		err := s.tryReload(t, c.content)
		if err == nil {
			t.Errorf("a reload changing %s was applied", c.name)
			continue
		}
		if text := reloadErrText(t, err); text != c.msg {
			t.Errorf("a reload changing %s: rawlb said %q, want %q", c.name, text, c.msg)
		}
		// s.metric still scrapes 127.0.0.1:9120: the server did not move.
		if v := s.metric(t, "rawlb_config_reload_failures_total"); v != failures+1 {
			t.Errorf("a reload changing %s: failures went from %v to %v, want one more", c.name, failures, v)
		}
		code, stdout, stderr := exitCode(t, exec.Command(bin, "-check-config", s.configPath))
		if code != 0 || !strings.Contains(stdout, ": ok (1 services, 3 backends)") {
			t.Errorf("rawlb -check-config on the file changing %s: exit %d, %q %q; want 0 and ok", c.name, code, stdout, stderr)
		}
	}

	// The good file again: applied, and counted as such.
	reloads := s.metric(t, "rawlb_config_reloads_total")
	s.reload(t, good)
	if v := s.metric(t, "rawlb_config_reloads_total"); v != reloads+1 {
		t.Errorf("the good file: rawlb_config_reloads_total went from %v to %v, want one more", reloads, v)
	}
	s.waitUp(t, 3)
}
