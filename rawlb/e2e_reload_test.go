package rawlb_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/chat"
	"github.com/rawlb/rawlb/internal/netlab"
)

// webPort is where the reload test's nginx servers listen.
const webPort = 8080

// startNginx runs nginx in h's namespace on h.IP:port, answering every GET
// with "<name>\n", and waits until it answers. Its keep-alive connections
// end after nginx's default 1000 requests (set explicitly here): under a
// keep-alive load, that is how the flows of a removed or drained backend
// finish on their own while the load goes on, on new connections.
func startNginx(t *testing.T, h *netlab.Host, port int, name string) {
	t.Helper()
	dir := t.TempDir()
	// The workers run as nobody; nothing they need is in dir.
	conf := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	keepalive_requests 1000;
	keepalive_timeout 65s;
	server {
		listen %[2]s:%[3]d backlog=1024;
		location / {
			default_type text/plain;
			return 200 "%[4]s\n";
		}
	}
}
`, dir, h.IP, port, name)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	h.StartProcess(t, "nginx", "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-g", "daemon off;")
	url := fmt.Sprintf("http://%s:%d/", h.IP, port)
	netlab.WaitFor(t, 10*time.Second, "nginx "+name+" to answer", func() bool {
		body, err := httpGet(h.HTTPClient(), url)
		return err == nil && body == name
	})
}

// httpGet fetches url and returns the body without its newline.
func httpGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// fetchMany makes n requests to url from the client host, each on a new
// connection, conc at a time, and counts the answers by body.
func fetchMany(t *testing.T, lab *netlab.Lab, url string, n, conc int) map[string]int {
	t.Helper()
	c := lab.Client.HTTPClient() // no keep-alive: a connection per request
	var mu sync.Mutex
	count := map[string]int{}
	var firstErr error
	work := make(chan struct{}, n)
	for range n {
		work <- struct{}{}
	}
	close(work)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				body, err := httpGet(c, url)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					count[body]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("GET %s: %v (answers so far: %v)", url, firstErr, count)
	}
	return count
}

// wrkSummary is what the test reads from wrk's report.
type wrkSummary struct {
	requests     int
	socketErrors string // the "Socket errors:" line, if wrk printed one
	non2xx       int
	report       string
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErr  = regexp.MustCompile(`Socket errors:[^\n]*`)
)

func parseWrk(out string) wrkSummary {
	w := wrkSummary{report: out}
	if m := wrkRequests.FindStringSubmatch(out); m != nil {
		w.requests, _ = strconv.Atoi(m[1])
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		w.non2xx, _ = strconv.Atoi(m[1])
	}
	w.socketErrors = wrkSockErr.FindString(out)
	return w
}

// TestSlowReloadUnderLoad is the proof of reloads: two services
// from one file, HTTP on 20000 over nginx and chat on 20001 over three chat
// servers, and six reloads by editing the file and sending SIGHUP, under a
// running wrk keep-alive load and 100 idle chat connections: add a backend,
// remove one, drain one, change weights, add a third service, remove it.
// Required: wrk sees no socket error and no bad status, every idle chat
// connection still works at the end, the removed and drained backends'
// flows go on and then finish, new flows follow each change at once, 3000
// connections after the weight change spread within 5% of the weights,
// and the balancer's own TCP stack sends no RST throughout.
func TestSlowReloadUnderLoad(t *testing.T) {
	slowTest(t)
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 4})
	for i, h := range lab.Backends {
		startNginx(t, h, webPort, fmt.Sprintf("web%d", i+1))
	}
	servers := make([]*chat.Server, 3)
	for i, h := range lab.Backends[:3] {
		ln, err := h.Listen("tcp", fmt.Sprintf("%s:%d", h.IP, backendPort))
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = &chat.Server{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		go func() { _ = servers[i].Serve(ln) }()
		t.Cleanup(func() { servers[i].Close() })
	}

	// The configuration, as a function of what each step changes.
	type webBackend struct {
		host  int // lab.Backends index
		extra string
	}
	config := func(web []webBackend, extraService bool) string {
		var b strings.Builder
		b.WriteString("services:\n")
		b.WriteString("  - name: web\n    listen: 20000\n    scheduler: rr\n" +
			"    health: {kind: http, path: /, status: 200, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n    backends:\n")
		for _, w := range web {
			fmt.Fprintf(&b, "      - {name: web%d, address: \"%s:%d\"%s}\n", w.host+1, lab.Backends[w.host].IP, webPort, w.extra)
		}
		b.WriteString("  - name: chat\n    listen: 20001\n    scheduler: lc\n" +
			"    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n    backends:\n")
		for i, h := range lab.Backends[:3] {
			fmt.Fprintf(&b, "      - {name: chat%d, address: \"%s:%d\"}\n", i+1, h.IP, backendPort)
		}
		if extraService {
			b.WriteString("  - name: extra\n    listen: 20002\n" +
				"    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n    backends:\n")
			for i, h := range lab.Backends[:3] {
				fmt.Fprintf(&b, "      - {name: extra%d, address: \"%s:%d\"}\n", i+1, h.IP, webPort)
			}
		}
		return b.String()
	}
	web := []webBackend{{host: 0}, {host: 1}, {host: 2}}
	s := launchConfig(t, lab, config(web, false))
	s.waitUp(t, 6)
	vip := lab.Balancer.IP.String()
	webURL := fmt.Sprintf("http://%s:20000/", vip)
	kernelRSTs := lab.Balancer.Snmp(t)["Tcp.OutRsts"]

	// 100 idle chat connections, spread by least connections.
	idle := make([]*chat.Client, 100)
	for i := range idle {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := lab.Client.Dial(ctx, "tcp", vip+":20001")
		cancel()
		if err != nil {
			t.Fatalf("idle chat connection %d: %v", i, err)
		}
		if idle[i], err = chat.NewClient(conn, fmt.Sprintf("idle%d", i)); err != nil {
			t.Fatal(err)
		}
		defer idle[i].Close()
	}
	netlab.WaitFor(t, 10*time.Second, "100 chat clients on the servers", func() bool {
		n := 0
		for _, srv := range servers {
			n += srv.NumClients()
		}
		return n >= 100
	})

	// The keep-alive load, for the whole test; stopped with SIGINT, on
	// which wrk prints its report.
	wrk := lab.Client.StartProcess(t, "wrk", "-t1", "-c16", "-d600s", "--timeout", "5s", webURL)
	netlab.WaitFor(t, 10*time.Second, "wrk's connections through rawlb", func() bool {
		return s.metric(t, "rawlb_service_flows", "service", "web") >= 16
	})
	webFlows := func(be string) float64 { return s.metric(t, "rawlb_backend_flows", "service", "web", "backend", be) }
	onlyFrom := func(step string, got map[string]int, allowed ...string) {
		t.Helper()
		for name := range got {
			ok := false
			for _, a := range allowed {
				ok = ok || name == a
			}
			if !ok {
				t.Errorf("%s: new connections reached %s (all: %v), want only %v", step, name, got, allowed)
			}
		}
		for _, a := range allowed {
			if got[a] == 0 {
				t.Errorf("%s: no new connection reached %s (all: %v)", step, a, got)
			}
		}
	}

	// 1. Add web4: it takes new flows at once.
	web = append(web, webBackend{host: 3})
	s.reload(t, config(web, false))
	s.waitUp(t, 7)
	onlyFrom("add web4", fetchMany(t, lab, webURL, 40, 4), "web1", "web2", "web3", "web4")

	// 2. Remove web1: no new flows; its flows go on (bytes still flow to
	// its clients after the reload), then end as nginx closes them after
	// 1000 requests, and it leaves the metrics.
	if n := webFlows("web1"); n == 0 {
		t.Fatal("no wrk connection on web1 before its removal")
	}
	web = web[1:]
	s.reload(t, config(web, false))
	removedAt := s.metric(t, "rawlb_backend_bytes_total", "backend", "web1", "direction", "to_client")
	if st := s.metric(t, "rawlb_backend_admin_state", "backend", "web1", "state", "removed"); st != 1 {
		t.Errorf("web1 after its removal: admin_state removed = %v, want 1", st)
	}
	onlyFrom("remove web1", fetchMany(t, lab, webURL, 30, 4), "web2", "web3", "web4")
	lastBytes := removedAt
	netlab.WaitFor(t, 30*time.Second, "web1's last flow to end", func() bool {
		samples := s.scrape(t)
		if v, n := sumSamples(samples, "rawlb_backend_bytes_total", "backend", "web1", "direction", "to_client"); n > 0 {
			lastBytes = v
			return false
		}
		return true
	})
	if lastBytes <= removedAt {
		t.Errorf("web1's flows carried no byte after its removal (%v then %v): were they cut?", removedAt, lastBytes)
	}
	if err := s.lb.WaitForOutput(`msg="removed backend's last flow ended" service=web backend=web1`, 5*time.Second); err != nil {
		t.Error(err)
	}

	// 3. Drain web2: no new flows; its flows finish the same way.
	web[0].extra = ", drain: true"
	s.reload(t, config(web, false))
	onlyFrom("drain web2", fetchMany(t, lab, webURL, 30, 4), "web3", "web4")
	netlab.WaitFor(t, 30*time.Second, "web2's flows to finish", func() bool { return webFlows("web2") == 0 })

	// 4. Weights 1:2:3 on web2 (drained no more), web3 and web4: 3000 new
	// connections within 5% of their shares. wrk's own reconnections take
	// their places in the round as well: a few dozen of the ~3000.
	web[0].extra, web[1].extra, web[2].extra = ", weight: 1", ", weight: 2", ", weight: 3"
	s.reload(t, config(web, false))
	netlab.WaitFor(t, 10*time.Second, "web2 usable again", func() bool {
		return s.metric(t, "rawlb_backend_up", "service", "web", "backend", "web2") == 1
	})
	spread := fetchMany(t, lab, webURL, 3000, 16)
	t.Logf("3000 connections with weights 1:2:3: %v", spread)
	for name, w := range map[string]int{"web2": 1, "web3": 2, "web4": 3} {
		want := 3000.0 * float64(w) / 6
		if got := float64(spread[name]); got < want*0.95 || got > want*1.05 {
			t.Errorf("%s (weight %d) took %v of 3000 connections, want %v within 5%%", name, w, got, want)
		}
	}

	// 5. Add a third service: it serves at once; hold a keep-alive
	// connection on it.
	s.reload(t, config(web, true))
	s.waitUp(t, 9)
	extraURL := fmt.Sprintf("http://%s:20002/", vip)
	onlyFrom("add service extra", fetchMany(t, lab, extraURL, 6, 2), "web1", "web2", "web3")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	held, err := lab.Client.Dial(ctx, "tcp", vip+":20002")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldReader := bufio.NewReader(held)
	keepAliveGet := func() (string, error) {
		_ = held.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(held, "GET / HTTP/1.1\r\nHost: extra\r\n\r\n"); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(heldReader, nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSuffix(string(b), "\n"), err
	}
	first, err := keepAliveGet()
	if err != nil {
		t.Fatalf("a request to the added service: %v", err)
	}

	// 6. Remove it: the held connection goes on; new ones are refused by
	// rawlb (the service is draining), not answered by the host.
	s.reload(t, config(web, false))
	if again, err := keepAliveGet(); err != nil || again != first {
		t.Errorf("the held connection after its service's removal: %q, %v; want %q again", again, err, first)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	c, err := lab.Client.Dial(ctx, "tcp", vip+":20002")
	cancel()
	if !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Errorf("a new connection to the removed service: %v, want connection refused", err)
	}
	if n := lab.Balancer.Snmp(t)["Tcp.OutRsts"] - kernelRSTs; n != 0 {
		t.Errorf("the balancer's own TCP stack sent %d RSTs during the reloads, want 0", n)
	}
	held.Close()
	if err := s.lb.WaitForOutput(`msg="removed service's last flow ended" service=extra`, 30*time.Second); err != nil {
		t.Error(err)
	}

	// Every idle chat connection still works: each sends a line and gets
	// it back from its server (which echoes to every client it has).
	for i, c := range idle {
		line := fmt.Sprintf("still here %d", i)
		if err := c.Send(line); err != nil {
			t.Fatalf("idle chat connection %d: send: %v", i, err)
		}
		_ = c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			got, err := c.ReadLine()
			if err != nil {
				t.Fatalf("idle chat connection %d: %v", i, err)
			}
			if got == fmt.Sprintf("[idle%d] %s", i, line) {
				break
			}
		}
	}

	if err := wrk.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code, err := wrk.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("wrk: exit %d, %v\n%s", code, err, wrk.Output())
	}
	w := parseWrk(wrk.Output())
	t.Logf("wrk: %d requests through six reloads\n%s", w.requests, w.report)
	if w.requests == 0 {
		t.Errorf("wrk made no request:\n%s", w.report)
	}
	if w.socketErrors != "" || w.non2xx != 0 {
		t.Errorf("wrk saw errors through the reloads: %q, %d non-2xx responses", w.socketErrors, w.non2xx)
	}
	if strings.Count(s.lb.Output(), `msg="reload applied"`) != 6 {
		t.Errorf("rawlb logged %d applied reloads, want 6", strings.Count(s.lb.Output(), `msg="reload applied"`))
	}
}
