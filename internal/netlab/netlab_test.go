package netlab_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

const backendPort = 8090

// TestLab drives the whole package for real: a lab with three backends,
// traffic from the client straight to each backend (there is no balancer in
// this package), and afterwards a check that the lab's cleanup left no
// namespace behind.
func TestLab(t *testing.T) {
	testenv.RequirePrivileged(t)
	hostLinksBefore := hostLinks(t)

	var names []string
	t.Run("lab", func(t *testing.T) {
		lab := netlab.New(t, netlab.Options{Backends: 3})
		names = append(names, lab.Switch)
		for _, h := range lab.Hosts() {
			names = append(names, h.Name)
		}
		if len(lab.Backends) != 3 {
			t.Fatalf("got %d backends, want 3", len(lab.Backends))
		}
		for name := range hostLinks(t) {
			if !hostLinksBefore[name] && (name == "br0" || name == "client" || name == "lb" || strings.HasPrefix(name, "be")) {
				t.Errorf("link %s appeared in the test's own namespace", name)
			}
		}

		t.Run("hosts", func(t *testing.T) { testHosts(t, lab) })

		backends := make([]*netlab.Backend, len(lab.Backends))
		for i, h := range lab.Backends {
			backends[i] = h.StartBackend(t, backendPort, fmt.Sprintf("backend-%d", i+1))
		}
		for i, h := range lab.Backends {
			t.Run(backends[i].Name(), func(t *testing.T) { testBackendDirect(t, lab.Client, h, backends[i]) })
		}
		t.Run("stop-start", func(t *testing.T) { testStopStart(t, lab.Client, lab.Backends[0], backends[0]) })
		t.Run("hold", func(t *testing.T) { testHold(t, lab.Client, lab.Backends[1], backends[1]) })
		t.Run("snmp", func(t *testing.T) {
			m := lab.Client.Snmp(t)
			if _, ok := m["Tcp.OutRsts"]; !ok {
				t.Errorf("no Tcp.OutRsts among %d counters", len(m))
			}
			if m["Tcp.ActiveOpens"] == 0 {
				t.Errorf("Tcp.ActiveOpens = 0 after the client opened connections")
			}
		})
		t.Run("http", func(t *testing.T) { testHTTP(t, lab) })
		t.Run("process", func(t *testing.T) { testProcess(t, lab.Balancer) })
	})

	if len(names) == 0 {
		t.Fatal("the lab subtest recorded no namespaces")
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	listed := make(map[string]bool)
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			listed[f[0]] = true
		}
	}
	for _, n := range names {
		if listed[n] {
			t.Errorf("namespace %s still exists after cleanup", n)
		}
	}
}

// hostLinks lists the interfaces of the test's own namespace.
func hostLinks(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "-j", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link show: %v", err)
	}
	var links []struct{ Ifname string }
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("ip -j link show: %v", err)
	}
	m := make(map[string]bool)
	for _, l := range links {
		m[l.Ifname] = true
	}
	return m
}

func testHosts(t *testing.T, lab *netlab.Lab) {
	seen := make(map[string]bool)
	for _, h := range lab.Hosts() {
		if seen[h.Name] || !strings.HasPrefix(h.Name, "rlb-") || len(h.Name) > 20 {
			t.Errorf("bad or duplicate namespace name %q", h.Name)
		}
		seen[h.Name] = true
		if !netlab.Subnet.Contains(h.IP) {
			t.Errorf("%s: %v outside %v", h.Name, h.IP, netlab.Subnet)
		}
		// /sys is remounted by ip netns exec, so this is the lab host's eth0.
		if mac := strings.TrimSpace(h.Run(t, "cat", "/sys/class/net/"+h.Iface+"/address")); mac != h.MAC.String() {
			t.Errorf("%s: %s has MAC %s, Host.MAC says %s", h.Name, h.Iface, mac, h.MAC)
		}
		if out := h.Run(t, "ip", "-4", "-o", "addr", "show", "dev", h.Iface); !strings.Contains(out, " "+h.IP.String()+"/24 ") {
			t.Errorf("%s: %s lacks %v/24:\n%s", h.Name, h.Iface, h.IP, out)
		}
	}
	want := map[string]string{lab.Client.Name: "198.18.0.10", lab.Balancer.Name: "198.18.0.2"}
	for i, h := range lab.Backends {
		want[h.Name] = fmt.Sprintf("198.18.0.%d", 11+i)
	}
	for _, h := range lab.Hosts() {
		if h.IP.String() != want[h.Name] {
			t.Errorf("%s has %v, want %s", h.Name, h.IP, want[h.Name])
		}
	}
	// No route leaves the segment: the lab cannot reach, or be reached from,
	// anything real.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := lab.Client.Dial(ctx, "tcp", "198.19.0.1:80"); !errors.Is(err, syscall.ENETUNREACH) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial outside the lab: %v, want network unreachable", err)
	}
}

// dial connects from h to addr with generous bounds, so a broken lab fails
// the test instead of hanging it.
func dial(t *testing.T, h *netlab.Host, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, h.Name, err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func hello(t *testing.T, c net.Conn, want string) {
	t.Helper()
	name, err := netlab.Hello(c)
	if err != nil {
		t.Fatalf("Hello: %v", err)
	}
	if name != want {
		t.Fatalf("Hello = %q, want %q", name, want)
	}
}

func testBackendDirect(t *testing.T, client, h *netlab.Host, b *netlab.Backend) {
	addr := net.JoinHostPort(h.IP.String(), fmt.Sprint(backendPort))

	c := dial(t, client, addr)
	hello(t, c, b.Name())
	data := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := netlab.EchoRoundTrip(c, data); err != nil {
		t.Errorf("ECHO 1 MiB: %v", err)
	}

	c = dial(t, client, addr)
	hello(t, c, b.Name())
	const getN = 64 << 20
	sum, got, err := netlab.Get(c, getN)
	if err != nil {
		t.Errorf("GET: %v", err)
	} else if got != getN || sum != netlab.ExpectedGET(getN) {
		t.Errorf("GET %d: got %d bytes, sum %x, want %x", int64(getN), got, sum, netlab.ExpectedGET(getN))
	}

	c = dial(t, client, addr)
	hello(t, c, b.Name())
	const putN = 8 << 20
	payload := make([]byte, putN)
	rand.NewChaCha8([32]byte{2}).Read(payload)
	want := sha256.Sum256(payload)
	if hexsum, err := netlab.Put(c, bytes.NewReader(payload), putN); err != nil {
		t.Errorf("PUT: %v", err)
	} else if hexsum != hex.EncodeToString(want[:]) {
		t.Errorf("PUT 8 MiB: backend hashed %s, want %x", hexsum, want)
	}

	if b.Accepted() != 3 {
		t.Errorf("Accepted = %d, want 3", b.Accepted())
	}
}

func testStopStart(t *testing.T, client, h *netlab.Host, b *netlab.Backend) {
	addr := net.JoinHostPort(h.IP.String(), fmt.Sprint(backendPort))
	rstsBefore := h.Snmp(t)["Tcp.OutRsts"]

	b.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatal("dial to a stopped backend succeeded")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a stopped backend: %v, want connection refused", err)
	}
	if rsts := h.Snmp(t)["Tcp.OutRsts"]; rsts <= rstsBefore {
		t.Errorf("backend's Tcp.OutRsts went from %d to %d, want it to count the refusal", rstsBefore, rsts)
	}

	b.Start()
	hello(t, dial(t, client, addr), b.Name())
}

func testHold(t *testing.T, client, h *netlab.Host, b *netlab.Backend) {
	addr := net.JoinHostPort(h.IP.String(), fmt.Sprint(backendPort))
	netlab.WaitFor(t, 5*time.Second, "earlier connections to close", func() bool { return b.Active() == 0 })

	c := dial(t, client, addr)
	hello(t, c, b.Name())
	if _, err := io.WriteString(c, "HOLD\n"); err != nil {
		t.Fatal(err)
	}
	netlab.WaitFor(t, 5*time.Second, "one active connection", func() bool { return b.Active() == 1 })
	c.Close()
	netlab.WaitFor(t, 5*time.Second, "the held connection to close", func() bool { return b.Active() == 0 })

	// Stop must end held connections too, not wait for the client.
	c = dial(t, client, addr)
	hello(t, c, b.Name())
	if _, err := io.WriteString(c, "HOLD\n"); err != nil {
		t.Fatal(err)
	}
	netlab.WaitFor(t, 5*time.Second, "one active connection", func() bool { return b.Active() == 1 })
	b.Stop()
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("held connection still readable after Stop (%d bytes)", n)
	}
	b.Start()
}

func testHTTP(t *testing.T, lab *netlab.Lab) {
	ln, err := lab.Balancer.Listen("tcp", net.JoinHostPort(lab.Balancer.IP.String(), "9100"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	resp, err := lab.Client.HTTPClient().Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if want := "hello " + lab.Client.IP.String() + ":"; !strings.HasPrefix(string(body), want) {
		t.Errorf("body %q, want prefix %q", body, want)
	}
}

func testProcess(t *testing.T, h *netlab.Host) {
	bin := netlab.BuildBinary(t, "./testdata/sigwait")
	if again := netlab.BuildBinary(t, "./testdata/sigwait"); again != bin {
		t.Errorf("second BuildBinary returned %s, first %s", again, bin)
	}
	p := h.StartProcess(t, bin)
	if err := p.WaitForOutput("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if out := p.Output(); !strings.Contains(out, "iface eth0 ["+h.IP.String()+"/24") {
		t.Errorf("process does not see the host's eth0:\n%s", out)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(10 * time.Second)
	if err != nil || code != 3 {
		t.Errorf("Wait = %d, %v; want exit code 3", code, err)
	}
	if err := p.WaitForOutput("terminated", time.Second); err != nil {
		t.Error(err)
	}

	// A process that never prints what is awaited must not cost the full
	// timeout once it has exited.
	q := h.StartProcess(t, "true")
	start := time.Now()
	if err := q.WaitForOutput("never", 10*time.Second); err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("WaitForOutput on an exited process: %v after %v", err, time.Since(start))
	}
}
