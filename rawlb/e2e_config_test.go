package rawlb_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// svcSpec describes a test service: its name (and its backends' name
// prefix), listen port, backend port, extra YAML lines for the service
// (indented four spaces) and extra fields for every backend (", weight: 2").
type svcSpec struct {
	name              string
	listen, bePort    int
	extra, backendOpt string
}

// servicesYAML is a services: section with one service per (name, port,
// backend port), each over every backend host of the lab.
func servicesYAML(lab *netlab.Lab, svcs ...svcSpec) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, s := range svcs {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %d\n    health: {kind: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n%s    backends:\n", s.name, s.listen, s.extra)
		for i, h := range lab.Backends {
			fmt.Fprintf(&b, "      - {name: %s%d, address: \"%s:%d\"%s}\n", s.name, i+1, h.IP, s.bePort, s.backendOpt)
		}
	}
	return b.String()
}

// dialName connects from the client host to addr and returns the
// connection and the name of the backend that greeted it.
func dialName(t *testing.T, s *setup, addr string) (net.Conn, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.lab.Client.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("connect to %s: %v\nrawlb output:\n%s", addr, err, s.lb.Output())
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	name, err := netlab.Hello(c)
	if err != nil {
		c.Close()
		t.Fatalf("greeting from %s: %v", addr, err)
	}
	return c, name
}

// TestConfigFileServices runs two services from one file and removes one
// by a reload: its open connection goes on, new ones are refused, and the
// other service is untouched.
func TestConfigFileServices(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	for i, h := range lab.Backends {
		h.StartBackend(t, 8090, fmt.Sprintf("web%d", i+1))
		h.StartBackend(t, 8091, fmt.Sprintf("alt%d", i+1))
	}
	web := svcSpec{name: "web", listen: lbPort, bePort: 8090}
	alt := svcSpec{name: "alt", listen: lbPort + 1, bePort: 8091}
	s := launchConfig(t, lab, servicesYAML(lab, web, alt))
	s.waitUp(t, 6)
	altAddr := fmt.Sprintf("%s:%d", lab.Balancer.IP, lbPort+1)
	for _, c := range []struct{ addr, prefix string }{{s.vip, "web"}, {altAddr, "alt"}} {
		seen := map[string]bool{}
		for i := 0; i < 3; i++ {
			conn, name := dialName(t, s, c.addr)
			conn.Close()
			if !strings.HasPrefix(name, c.prefix) {
				t.Fatalf("%s reached %s, want a %s backend", c.addr, name, c.prefix)
			}
			seen[name] = true
		}
		if len(seen) != 3 {
			t.Errorf("three connections to %s reached %v, want each of three backends once", c.addr, seen)
		}
	}

	held, _ := dialName(t, s, altAddr)
	defer held.Close()
	s.reload(t, servicesYAML(lab, web))
	s.waitUp(t, 3)
	if err := netlab.EchoRoundTrip(held, []byte("still here")); err != nil {
		t.Fatalf("a connection of the removed service, after the reload: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := s.lab.Client.Dial(ctx, "tcp", altAddr); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("connect to the removed service: %v, want connection refused", err)
	}
	conn, name := dialName(t, s, s.vip)
	defer conn.Close()
	if err := netlab.EchoRoundTrip(conn, []byte("web")); err != nil || !strings.HasPrefix(name, "web") {
		t.Fatalf("the kept service after the reload: %s, %v", name, err)
	}
}
