package rawlb_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// The end-to-end tests build a bridge-and-veth network of namespaces (a
// client, the balancer, three backends; offloads at their defaults), run
// the real rawlb binary in the balancer's namespace and real TCP clients
// and servers in the others.
//
// Conventions for a new end-to-end test:
//
//   - Parallel. Call t.Parallel() first and build the test's own lab (start,
//     or netlab.New and launch). Labs are separate namespaces, and so is
//     the metrics address 127.0.0.1:9120, so tests never see each other's
//     traffic, rules, sysctls or counters. A test stays serial only with a
//     comment saying what parallel load breaks in it.
//   - Slow tests. A test that does more than a few seconds of work on two
//     cores (thousands of connections, floods, restarts) is named
//     TestSlow... and calls slowTest(t) first, before t.Parallel(). It
//     skips, saying why, unless RAWLB_SLOW_TESTS=1: `make test-slow` (and
//     CI) sets it and runs every TestSlow test with -run '^TestSlow'.
//     slowTest fails a test that is not so named, since -run would never
//     select it. (Not -short: other packages' tests already use -short for
//     their own trimming, and must keep running in full in `make test`.)
//   - Metrics. Read them with s.metric(t, name, label, value, ...): it
//     selects by exact name and required labels, and fails on a sample that
//     is not there rather than reading 0.
//   - Waiting. Poll with netlab.WaitFor, never sleep, and wait for
//     something that becomes true only through what is under test (a
//     counter moving from the value it had before, not a value it may have
//     at once).
//   - make test-race sets RAWLB_SKIP_E2E=1: -race instruments the test
//     process, not the rawlb binary it starts, so start and launch skip and
//     only rawlb's in-process tests run under the race detector. A test that
//     builds its lab with netlab.New calls skipE2E(t) before it.

const (
	lbPort      = 20000
	backendPort = 8090
	metricsAddr = "127.0.0.1:9120"
)

type setup struct {
	lab      *netlab.Lab
	backends []*netlab.Backend
	lb       *netlab.Process
	vip      string
	// stateDir is the balancer's state directory, the lab's own: a
	// restart test starts the next process on it.
	stateDir string
	args     []string // the command line the balancer was started with
	// configPath is the configuration file of a balancer started by
	// launchConfig; reload rewrites it.
	configPath string
}

// start builds the lab, starts a test backend on each backend host and
// rawlb with the given extra flags, and waits until rawlb is ready.
func start(t *testing.T, flags ...string) *setup {
	t.Helper()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	var backends []*netlab.Backend
	for i, h := range lab.Backends {
		backends = append(backends, h.StartBackend(t, backendPort, fmt.Sprintf("backend-%d", i+1)))
	}
	s := launch(t, lab, flags...)
	s.backends = backends
	return s
}

// launch starts rawlb in the lab's balancer namespace in front of whatever
// listens on backendPort on each backend host, and waits until every
// backend is up and its MAC resolved.
func launch(t *testing.T, lab *netlab.Lab, flags ...string) *setup {
	t.Helper()
	var backends []string
	for _, h := range lab.Backends {
		backends = append(backends, fmt.Sprintf("%s:%d", h.IP, backendPort))
	}
	return launchWith(t, lab, backends, flags...)
}

// launchWith is launch with the backend arguments as given, in any form
// the command line takes.
func launchWith(t *testing.T, lab *netlab.Lab, backends []string, flags ...string) *setup {
	t.Helper()
	skipE2E(t)
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	s := &setup{lab: lab, vip: fmt.Sprintf("%s:%d", lab.Balancer.IP, lbPort), stateDir: t.TempDir()}
	args := []string{"-metrics", metricsAddr, "-hc-interval", "500ms", "-hc-timeout", "400ms", "-state-dir", s.stateDir}
	args = append(args, flags...)
	args = append(args, lab.Balancer.IP.String())
	args = append(args, backends...)
	s.args = args
	s.lb = lab.Balancer.StartProcess(t, bin, args...)
	if err := s.lb.WaitForOutput("rawlb started", 20*time.Second); err != nil {
		t.Fatalf("rawlb did not start: %v\n%s", err, s.lb.Output())
	}
	netlab.WaitFor(t, 10*time.Second, "all backends usable", func() bool {
		return int(s.metric(t, "rawlb_backend_up")) == len(lab.Backends) && strings.Count(s.lb.Output(), "next hop resolved") >= len(lab.Backends)
	})
	return s
}

// launchConfig starts rawlb in the lab's balancer namespace with
// -config, on a file holding configHeader's lines and then services (YAML
// from a top-level "services:" on), and waits until it has started. It
// does not wait for backends: the test knows how many should come up
// (s.waitUp).
func launchConfig(t *testing.T, lab *netlab.Lab, services string, flags ...string) *setup {
	t.Helper()
	skipE2E(t)
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	s := &setup{lab: lab, vip: fmt.Sprintf("%s:%d", lab.Balancer.IP, lbPort), stateDir: t.TempDir()}
	s.configPath = filepath.Join(t.TempDir(), "rawlb.yaml")
	s.writeConfig(t, s.configHeader()+services)
	s.args = append(append([]string(nil), flags...), "-config", s.configPath)
	s.lb = lab.Balancer.StartProcess(t, bin, s.args...)
	if err := s.lb.WaitForOutput("rawlb started", 20*time.Second); err != nil {
		t.Fatalf("rawlb did not start: %v\n%s", err, s.lb.Output())
	}
	return s
}

// configHeader is the top of a test's configuration file: the balancer's
// address, the metrics address the helpers scrape and the test's own
// state directory. It is configHeaderLines lines long, which a test of
// error messages adds to the line numbers of its services.
func (s *setup) configHeader() string {
	return fmt.Sprintf("address: %s\nmetrics: %s\nstate_dir: %s\n", s.lab.Balancer.IP, metricsAddr, s.stateDir)
}

const configHeaderLines = 3

// writeConfig replaces the configuration file's contents, atomically (a
// rename), so that rawlb never reads half a file.
func (s *setup) writeConfig(t *testing.T, content string) {
	t.Helper()
	tmp := s.configPath + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.configPath); err != nil {
		t.Fatal(err)
	}
}

// reload writes configHeader and services to the file, sends SIGHUP and
// waits until rawlb has applied it; a reload that fails fails t, with
// rawlb's reason.
func (s *setup) reload(t *testing.T, services string) {
	t.Helper()
	if err := s.tryReload(t, s.configHeader()+services); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// tryReload writes content (the whole file) and sends SIGHUP, waits until
// rawlb has counted the reload as applied or as failed, and returns nil or
// the error rawlb logged.
func (s *setup) tryReload(t *testing.T, content string) error {
	t.Helper()
	ok, failed := s.metric(t, "rawlb_config_reloads_total"), s.metric(t, "rawlb_config_reload_failures_total")
	logged := strings.Count(s.lb.Output(), "reload refused")
	s.writeConfig(t, content)
	if err := s.lb.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var err error
	netlab.WaitFor(t, 10*time.Second, "rawlb to apply or refuse the reload", func() bool {
		if s.metric(t, "rawlb_config_reloads_total") > ok {
			return true
		}
		if s.metric(t, "rawlb_config_reload_failures_total") > failed {
			// The log line follows the counter by a moment.
			lines := strings.Split(s.lb.Output(), "\n")
			n := 0
			for _, l := range lines {
				if strings.Contains(l, "reload refused") {
					if n++; n > logged {
						err = fmt.Errorf("%s", l)
						return true
					}
				}
			}
		}
		return false
	})
	return err
}

// waitUp waits until n backends (over every service) take new flows.
func (s *setup) waitUp(t *testing.T, n int) {
	t.Helper()
	netlab.WaitFor(t, 15*time.Second, fmt.Sprintf("%d backends up", n), func() bool {
		return int(s.metric(t, "rawlb_backend_up")) == n
	})
}

// skipE2E skips a test that runs the balancer binary when
// RAWLB_SKIP_E2E=1 (make test-race: the race detector would watch only
// the test process, not the binary).
func skipE2E(t *testing.T) {
	t.Helper()
	if os.Getenv("RAWLB_SKIP_E2E") == "1" {
		t.Skip("RAWLB_SKIP_E2E=1: end-to-end tests run the rawlb binary, which -race does not instrument; make test runs them")
	}
}

// slowTest marks a test too slow for `make test`: it runs only with
// RAWLB_SLOW_TESTS=1, as `make test-slow` sets (see the conventions above).
func slowTest(t *testing.T) {
	t.Helper()
	if !strings.HasPrefix(t.Name(), "TestSlow") {
		t.Fatalf("%s calls slowTest but is not named TestSlow...: make test-slow (-run '^TestSlow') would never run it", t.Name())
	}
	if os.Getenv("RAWLB_SLOW_TESTS") != "1" {
		t.Skip("slow end-to-end test: make test-slow runs it (RAWLB_SLOW_TESTS=1)")
	}
}

// dial connects from the client host to the balancer and reads the
// backend's greeting.
func (s *setup) dial(t *testing.T) (net.Conn, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.lab.Client.Dial(ctx, "tcp", s.vip)
	if err != nil {
		t.Fatalf("connect to %s: %v\nrawlb output:\n%s", s.vip, err, s.lb.Output())
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	name, err := netlab.Hello(c)
	if err != nil {
		c.Close()
		t.Fatalf("greeting: %v", err)
	}
	return c, name
}

// webLab is a lab of three backends running the lab server on
// backendPort, named web1 to web3.
func webLab(t *testing.T) *netlab.Lab {
	t.Helper()
	lab := netlab.New(t, netlab.Options{Backends: 3})
	for i, h := range lab.Backends {
		h.StartBackend(t, backendPort, fmt.Sprintf("web%d", i+1))
	}
	return lab
}

// loopUntil starts n goroutines on wg, each calling once over and over
// until stop is closed: the clients of a load.
func loopUntil(wg *sync.WaitGroup, stop <-chan struct{}, n int, once func()) {
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				once()
			}
		})
	}
}

// echoByte sends b on c, in the lab protocol's ECHO mode, and checks that
// the same byte comes back within timeout.
func echoByte(c net.Conn, b byte, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{b}); err != nil {
		return err
	}
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if got[0] != b {
		return fmt.Errorf("echo %d, want %d", got[0], b)
	}
	return nil
}

// metric scrapes rawlb's /metrics and returns the sum of the samples of
// the metric called name that carry every label=value pair of labels
// (name, value, name, value, ...). Other labels a sample has do not
// matter, so a test keeps working when a metric gains one, and a sum over
// them is what a test means: every backend up, every drop of a reason.
//
//	s.metric(t, "rawlb_backend_up", "backend", "198.18.0.12:8090") // one backend: 0 or 1
//	s.metric(t, "rawlb_backend_up")                                // how many are up
//	s.metric(t, "rawlb_drops_total", "reason", "no_flow")
//
// The name matches whole: rawlb_backend_up never counts
// rawlb_backend_up_foo. metric fails t when the scrape fails and when no
// sample matches: rawlb exports every sample from the start, counters at 0
// included, so no match is a renamed metric or a mistyped label, and
// reading it as 0 would let a wait for "down" or "drained" pass at once.
func (s *setup) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	if strings.ContainsAny(name, "{} ") || len(labels)%2 != 0 {
		t.Fatalf("metric(%q, %q): give the bare metric name, then label, value pairs", name, labels)
	}
	samples := s.scrape(t)
	sum, n := sumSamples(samples, name, labels...)
	if n == 0 {
		var same []string
		for _, x := range samples {
			if x.name == name {
				same = append(same, fmt.Sprint(x.labels))
			}
		}
		t.Fatalf("no sample of %s with labels %q among rawlb's metrics (samples of that name: %v)", name, labels, same)
	}
	return sum
}

// scrape reads rawlb's /metrics once; a failure fails t.
func (s *setup) scrape(t *testing.T) []sample {
	t.Helper()
	resp, err := s.lab.Balancer.HTTPClient().Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape rawlb's metrics: %v\nrawlb output:\n%s", err, s.lb.Output())
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape rawlb's metrics: %s, %v\n%.2000s", resp.Status, err, body)
	}
	samples, err := parseExposition(string(body))
	if err != nil {
		t.Fatalf("rawlb's metrics: %v", err)
	}
	return samples
}

// sample is one sample of the Prometheus text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// sumSamples returns the sum of the values of the samples named name that
// carry every label=value pair of labels, and how many there were.
func sumSamples(samples []sample, name string, labels ...string) (float64, int) {
	var sum float64
	n := 0
next:
	for _, x := range samples {
		if x.name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if v, ok := x.labels[labels[i]]; !ok || v != labels[i+1] {
				continue next
			}
		}
		sum += x.value
		n++
	}
	return sum, n
}

// parseExposition parses the Prometheus text exposition format (version
// 0.0.4, what promhttp serves without an Accept header): one sample a line,
// `name{label="value",...} value [timestamp]`, label values escaped with
// \\, \" and \n; '#' lines are comments (HELP, TYPE) and are skipped.
func parseExposition(text string) ([]sample, error) {
	var out []sample
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		x, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", i+1, line, err)
		}
		out = append(out, x)
	}
	return out, nil
}

func parseSample(line string) (sample, error) {
	x := sample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ \t")
	if end <= 0 {
		return x, fmt.Errorf("no metric name")
	}
	x.name, line = line[:end], line[end:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " \t,")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.IndexByte(line, '=')
			if eq <= 0 || len(line) < eq+2 || line[eq+1] != '"' {
				return x, fmt.Errorf("bad label")
			}
			key := strings.TrimSpace(line[:eq])
			var val strings.Builder
			j := eq + 2
			for ; j < len(line) && line[j] != '"'; j++ {
				if line[j] == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						val.WriteByte('\n')
					default: // \\ and \"
						val.WriteByte(line[j])
					}
					continue
				}
				val.WriteByte(line[j])
			}
			if j == len(line) {
				return x, fmt.Errorf("unterminated value of label %s", key)
			}
			if _, dup := x.labels[key]; dup {
				return x, fmt.Errorf("label %s twice", key)
			}
			x.labels[key] = val.String()
			line = line[j+1:]
		}
	}
	fields := strings.Fields(line)
	if len(fields) < 1 || len(fields) > 2 {
		return x, fmt.Errorf("want a value and an optional timestamp after the name and labels")
	}
	v, err := strconv.ParseFloat(fields[0], 64) // also +Inf, -Inf, NaN
	if err != nil {
		return x, fmt.Errorf("bad value: %w", err)
	}
	x.value = v
	return x, nil
}

// The helper above replaced one that matched lines by prefix, whose
// boundary check could never fire: rawlb_backend_up also summed
// rawlb_backend_up_foo. This pins the whole-name and label semantics.
func TestMetricSelection(t *testing.T) {
	t.Parallel()
	const text = `# HELP rawlb_backend_up 1 if the backend passes health checks.
# TYPE rawlb_backend_up gauge
rawlb_backend_up{backend="198.18.0.11:8090"} 1
rawlb_backend_up{backend="198.18.0.12:8090",service="web"} 0
rawlb_backend_up{service="web", backend="198.18.0.13:8090"} 1 1700000000000
rawlb_backend_up_seconds{backend="198.18.0.11:8090"} 100
rawlb_backend_upx 7
rawlb_flows_active 3
rawlb_drops_total{reason="no_flow"} 2.5e+01
rawlb_drops_total{reason="fragment"} 4
rawlb_odd{path="C:\\dir\"quoted\"\nline"} 1
rawlb_inf +Inf
`
	samples, err := parseExposition(text)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		sum    float64
		n      int
	}{
		{"rawlb_backend_up", nil, 2, 3},
		{"rawlb_backend_up", []string{"backend", "198.18.0.12:8090"}, 0, 1},
		{"rawlb_backend_up", []string{"backend", "198.18.0.13:8090"}, 1, 1},
		{"rawlb_backend_up", []string{"service", "web"}, 1, 2},
		{"rawlb_backend_up", []string{"service", "web", "backend", "198.18.0.11:8090"}, 0, 0},
		{"rawlb_backend_up", []string{"backend", "198.18.0.1"}, 0, 0}, // no prefix match on values either
		{"rawlb_backend_up_seconds", nil, 100, 1},
		{"rawlb_backend", nil, 0, 0},
		{"rawlb_flows_active", nil, 3, 1},
		{"rawlb_drops_total", nil, 29, 2},
		{"rawlb_drops_total", []string{"reason", "no_flow"}, 25, 1},
		{"rawlb_odd", []string{"path", "C:\\dir\"quoted\"\nline"}, 1, 1},
	} {
		if sum, n := sumSamples(samples, c.name, c.labels...); sum != c.sum || n != c.n {
			t.Errorf("%s %q: sum %v over %d samples, want %v over %d", c.name, c.labels, sum, n, c.sum, c.n)
		}
	}
	if sum, _ := sumSamples(samples, "rawlb_inf"); sum <= 1e308 {
		t.Errorf("+Inf parsed as %v", sum)
	}
	for _, bad := range []string{"{a=\"b\"} 1", "m{a=b} 1", "m{a=\"b} 1", "m 1 2 3", "m one", "m{a=\"1\",a=\"2\"} 1", "m"} {
		if _, err := parseExposition(bad); err == nil {
			t.Errorf("parseExposition(%q) accepted it", bad)
		}
	}
}

func TestRoundRobin(t *testing.T) {
	t.Parallel()
	s := start(t)
	count := map[string]int{}
	for i := 0; i < 30; i++ {
		c, name := s.dial(t)
		count[name]++
		if err := netlab.EchoRoundTrip(c, []byte(fmt.Sprintf("hello %d", i))); err != nil {
			t.Fatalf("echo through the balancer: %v", err)
		}
		c.Close()
	}
	for i := 1; i <= 3; i++ {
		if n := count[fmt.Sprintf("backend-%d", i)]; n != 10 {
			t.Errorf("backend-%d got %d of 30 connections, want 10 (all: %v)", i, n, count)
		}
	}
}

// TestIPPortPairs starts rawlb with the original balancer's command line,
// `rawlb 198.18.0.2 198.18.0.11 8090 198.18.0.12 8090 198.18.0.13 8090`,
// and connects through it to every backend.
func TestIPPortPairs(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	var pairs []string
	for i, h := range lab.Backends {
		h.StartBackend(t, backendPort, fmt.Sprintf("backend-%d", i+1))
		pairs = append(pairs, h.IP.String(), strconv.Itoa(backendPort))
	}
	s := launchWith(t, lab, pairs)
	// Each pair became one backend, named host:port as if given so.
	for _, h := range lab.Backends {
		if up := s.metric(t, "rawlb_backend_up", "backend", fmt.Sprintf("%s:%d", h.IP, backendPort)); up != 1 {
			t.Errorf("rawlb_backend_up for %s:%d = %v, want 1", h.IP, backendPort, up)
		}
	}
	count := map[string]int{}
	for i := 0; i < 6; i++ {
		c, name := s.dial(t)
		count[name]++
		if err := netlab.EchoRoundTrip(c, []byte(fmt.Sprintf("pair %d", i))); err != nil {
			t.Fatalf("echo through the balancer: %v", err)
		}
		c.Close()
	}
	for i := 1; i <= 3; i++ {
		if n := count[fmt.Sprintf("backend-%d", i)]; n != 2 {
			t.Errorf("backend-%d got %d of 6 connections, want 2 (all: %v)", i, n, count)
		}
	}
}
