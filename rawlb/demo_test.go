package rawlb_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/netlab"
)

// TestDemo is `sudo make demo`: a throwaway namespace network with a
// client, the balancer and three backends, where rawlb spreads
// connections round robin, takes a stopped backend out and puts it back.
// It narrates on stdout (shown with -v) and checks what it narrates, so it
// also runs as an ordinary end-to-end test.
func TestDemo(t *testing.T) {
	t.Parallel()
	say := func(format string, a ...any) {
		if testing.Verbose() {
			fmt.Fprintf(os.Stdout, "demo: "+format+"\n", a...)
		}
	}
	s := start(t, "-hc-interval", "500ms", "-hc-timeout", "400ms", "-hc-fall", "2", "-hc-rise", "2")
	say("network: client %s -> rawlb %s -> backends %s, %s, %s (port %d), each in its own namespace",
		s.lab.Client.IP, s.vip, s.lab.Backends[0].IP, s.lab.Backends[1].IP, s.lab.Backends[2].IP, backendPort)
	say("rawlb's log so far:\n%s", indent(s.lb.Output()))

	round := func(n int) map[string]int {
		var order []string
		count := map[string]int{}
		for i := 0; i < n; i++ {
			c, name := s.dial(t)
			c.Close()
			order = append(order, name)
			count[name]++
		}
		say("%d connections went to: %s", n, strings.Join(order, " "))
		return count
	}

	say("nine connections, round robin:")
	if c := round(9); c["backend-1"] != 3 || c["backend-2"] != 3 || c["backend-3"] != 3 {
		t.Fatalf("round robin over three healthy backends: %v", c)
	}

	say("stopping backend-2 ...")
	s.backends[1].Stop()
	be2 := fmt.Sprintf("%s:%d", s.lab.Backends[1].IP, backendPort)
	netlab.WaitFor(t, 5*time.Second, "backend-2 down", func() bool { return s.metric(t, "rawlb_backend_up", "backend", be2) == 0 })
	say("rawlb noticed: %s", lastLine(s.lb.Output(), "backend down"))
	if c := round(6); c["backend-2"] != 0 {
		t.Fatalf("connections went to the stopped backend: %v", c)
	}

	say("starting backend-2 again ...")
	s.backends[1].Start()
	netlab.WaitFor(t, 5*time.Second, "backend-2 up", func() bool { return s.metric(t, "rawlb_backend_up", "backend", be2) == 1 })
	say("rawlb noticed: %s", lastLine(s.lb.Output(), "backend up"))
	if c := round(6); c["backend-2"] == 0 {
		t.Fatalf("backend-2 is back but took no connection: %v", c)
	}
	say("metrics: %v packets to backends, %v to clients, %v flows created",
		s.metric(t, "rawlb_packets_total", "direction", "to_backend"), s.metric(t, "rawlb_packets_total", "direction", "to_client"),
		s.metric(t, "rawlb_flows_created_total"))
	say("done; the namespaces are removed as the test ends")
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func lastLine(out, substr string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return "(no line with " + substr + ")"
}
