package rawlb_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/chat"
	"github.com/rawlb/rawlb/internal/netlab"
)

// TestChatBehindRawlb is the original project's demo as a test: three chat
// servers behind the balancer, nine clients. Chat servers do not talk to
// each other, so each message must reach exactly the clients that rawlb
// sent to the same server, each once, and no one else.
func TestChatBehindRawlb(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	servers := make([]*chat.Server, len(lab.Backends))
	for i, h := range lab.Backends {
		ln, err := h.Listen("tcp", fmt.Sprintf("%s:%d", h.IP, backendPort))
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = &chat.Server{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		go func() { _ = servers[i].Serve(ln) }()
		t.Cleanup(func() { servers[i].Close() })
	}
	s := launch(t, lab)

	const n = 9
	clients := make([]*chat.Client, n)
	for i := range clients {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := lab.Client.Dial(ctx, "tcp", s.vip)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if clients[i], err = chat.NewClient(conn, fmt.Sprintf("user%d", i)); err != nil {
			t.Fatal(err)
		}
		defer clients[i].Close()
	}
	// Round robin puts client i on server i%3; the exchange below checks
	// exactly that. (A health check is a chat client too, for a moment, so
	// the counts only say the clients have arrived.)
	for i, srv := range servers {
		netlab.WaitFor(t, 5*time.Second, fmt.Sprintf("three chat clients on server %d", i+1), func() bool { return srv.NumClients() >= 3 })
	}

	for i, c := range clients {
		if err := c.Send(fmt.Sprintf("hello from %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clients {
		want := map[string]bool{}
		for j := i % 3; j < n; j += 3 {
			want[fmt.Sprintf("[user%d] hello from %d", j, j)] = true
		}
		_ = c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
		for len(want) > 0 {
			line, err := c.ReadLine()
			if err != nil {
				t.Fatalf("client %d still waiting for %v: %v", i, want, err)
			}
			if !want[line] {
				t.Fatalf("client %d (server %d) got %q: not from its server's clients, or twice", i, i%3+1, line)
			}
			delete(want, line)
		}
	}
	// Nothing else arrives: a line from another server's clients would
	// have been sent with the ones above, so a short quiet spell after
	// them is enough to show there was none.
	for i, c := range clients {
		_ = c.Conn().SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if line, err := c.ReadLine(); err == nil {
			t.Errorf("client %d got an extra line %q", i, line)
		} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			if !strings.Contains(err.Error(), "timeout") {
				t.Errorf("client %d: %v", i, err)
			}
		}
	}
}
