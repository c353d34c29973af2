package rawlb_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// The end-to-end tests build a bridge-and-veth network of namespaces (a
// client, the balancer, three backends; offloads at their defaults), run
// the real rawlb binary in the balancer's namespace and real TCP clients
// and servers in the others.

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
}

// start builds the lab, starts a test backend on each backend host and
// rawlb with the given extra flags, and waits until rawlb is ready.
func start(t *testing.T, flags ...string) *setup {
	t.Helper()
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
	bin := netlab.BuildBinary(t, "github.com/rawlb/rawlb/cmd/rawlb")
	s := &setup{lab: lab, vip: fmt.Sprintf("%s:%d", lab.Balancer.IP, lbPort)}
	args := []string{"-metrics", metricsAddr, "-hc-interval", "500ms", "-hc-timeout", "400ms"}
	args = append(args, flags...)
	args = append(args, lab.Balancer.IP.String())
	for _, h := range lab.Backends {
		args = append(args, fmt.Sprintf("%s:%d", h.IP, backendPort))
	}
	s.lb = lab.Balancer.StartProcess(t, bin, args...)
	if err := s.lb.WaitForOutput("rawlb started", 20*time.Second); err != nil {
		t.Fatalf("rawlb did not start: %v\n%s", err, s.lb.Output())
	}
	netlab.WaitFor(t, 10*time.Second, "all backends usable", func() bool {
		return int(s.metric(t, "rawlb_backend_up")) == len(lab.Backends) && strings.Count(s.lb.Output(), "next hop resolved") >= len(lab.Backends)
	})
	return s
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

// metric returns the sum of every sample of a metric whose line starts
// with prefix (a name, or a name with labels).
func (s *setup) metric(t *testing.T, prefix string) float64 {
	t.Helper()
	resp, err := s.lab.Balancer.HTTPClient().Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	var sum float64
	for _, line := range strings.Split(sb.String(), "\n") {
		if !strings.HasPrefix(line, prefix) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(prefix):]
		if rest[0] != ' ' && rest[0] != '{' && !strings.HasPrefix(prefix, rest[:0]) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

func TestRoundRobin(t *testing.T) {
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
