package chat

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/testenv"
)

// hangGuard bounds every wait in these tests. It only turns a hang into a
// failure; no test asserts anything about how long something took.
const hangGuard = 30 * time.Second

// syncBuffer collects the server's log while the test reads it.
type syncBuffer struct{ testenv.Buffer }

// linesWith returns the log lines that contain every one of parts.
func (b *syncBuffer) linesWith(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(b.String(), "\n") {
		ok := line != ""
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// waitFor polls cond until it holds, failing the test after hangGuard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// startServer serves srv on a fresh 127.0.0.1 port and closes it at the end
// of the test, checking that Serve then returns ErrServerClosed.
func startServer(t *testing.T, srv *Server) (addr string, logs *syncBuffer) {
	t.Helper()
	logs = &syncBuffer{}
	srv.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String(), logs
}

func dial(t *testing.T, addr, nick string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	c, err := Dial(ctx, addr, nick)
	if err != nil {
		t.Fatal(err)
	}
	c.Conn().SetDeadline(time.Now().Add(hangGuard))
	t.Cleanup(func() { c.Close() })
	return c
}

func mustReadLine(t *testing.T, c *Client) string {
	t.Helper()
	line, err := c.ReadLine()
	if err != nil {
		t.Fatalf("%s: ReadLine: %v", c.nick, err)
	}
	return line
}

func TestFormatMessage(t *testing.T) {
	for _, tc := range []struct{ nick, text, want string }{
		{"alice", "hello", "[alice] hello\n"},
		{"bob", "two words", "[bob] two words\n"},
		{"kim", "", "[kim] \n"},
		{"a b", "[x] y", "[a b] [x] y\n"},
	} {
		if got := FormatMessage(tc.nick, tc.text); got != tc.want {
			t.Errorf("FormatMessage(%q, %q) = %q, want %q", tc.nick, tc.text, got, tc.want)
		}
	}
}

func TestBadNickname(t *testing.T) {
	for _, nick := range []string{"", "a\nb", "a\r"} {
		if _, err := Dial(context.Background(), "127.0.0.1:1", nick); err == nil {
			t.Errorf("Dial with nickname %q: no error", nick)
		}
	}
}

// A line from one client reaches every client, the sender included, exactly
// once: the line after it is the next message, not a duplicate.
func TestBroadcastReachesEveryClientOnce(t *testing.T) {
	srv := &Server{}
	addr, _ := startServer(t, srv)
	var clients []*Client
	for _, nick := range []string{"alice", "bob", "carol"} {
		clients = append(clients, dial(t, addr, nick))
	}
	waitFor(t, "3 clients to join", func() bool { return srv.NumClients() == 3 })

	if err := clients[0].Send("hello"); err != nil {
		t.Fatal(err)
	}
	if err := clients[1].Send("marker"); err != nil {
		t.Fatal(err)
	}
	// bob's marker may overtake alice's hello at the server: both lines are
	// broadcast by different goroutines. Each client must see both, once.
	for _, c := range clients {
		got := []string{mustReadLine(t, c), mustReadLine(t, c)}
		if !(got[0] == "[alice] hello" && got[1] == "[bob] marker") &&
			!(got[0] == "[bob] marker" && got[1] == "[alice] hello") {
			t.Errorf("%s got %q, want [alice] hello and [bob] marker once each", c.nick, got)
		}
	}
	// Nothing else is on the way: a last message is the very next line.
	if err := clients[2].Send("end"); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if got := mustReadLine(t, c); got != "[carol] end" {
			t.Errorf("%s: after the two messages got %q, want [carol] end", c.nick, got)
		}
	}
}

// 300 clients connected at once all receive one broadcast.
func TestBroadcastToManyClients(t *testing.T) {
	const n = 300
	srv := &Server{}
	addr, _ := startServer(t, srv)
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(hangGuard))
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	waitFor(t, fmt.Sprintf("%d clients to join", n), func() bool { return srv.NumClients() == n })

	want := FormatMessage("client-17", "to everyone")
	if _, err := io.WriteString(conns[17], want); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("client %d got %q, %v; want %q", i, got, err, want)
		}
	}
}

// A client that stops reading is disconnected once its queue is full, and
// the clients that keep reading get every line, in order, meanwhile.
func TestSlowClientIsDisconnected(t *testing.T) {
	srv := &Server{QueueLen: 4}
	addr, logs := startServer(t, srv)
	sender := dial(t, addr, "sender")
	reader := dial(t, addr, "reader")
	slow := dial(t, addr, "slow") // never reads until it has been dropped
	waitFor(t, "3 clients to join", func() bool { return srv.NumClients() == 3 })

	// Lines of 32 KiB fill the slow client's socket buffers (a few MiB on
	// loopback) and then its queue after a few hundred lines. Sending in
	// lockstep, the next line only once the sender and the reader have both
	// received the last one, keeps their queues at one line at most, however
	// the goroutines are scheduled, so only the client that does not read can
	// be dropped.
	text := strings.Repeat("x", 32<<10)
	const maxLines = 5000
	sent := 0
	for srv.NumClients() == 3 {
		if sent == maxLines {
			t.Fatalf("slow client still connected after %d lines of %d bytes", sent, len(text))
		}
		msg := fmt.Sprintf("%d %s", sent, text)
		if err := sender.Send(msg); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*Client{sender, reader} {
			if got := mustReadLine(t, c); got != "[sender] "+msg {
				t.Fatalf("%s got line %.20q..., want line %d", c.nick, got, sent)
			}
		}
		sent++
	}
	if n := srv.NumClients(); n != 2 {
		t.Fatalf("%d clients left after the drop, want 2; log:\n%s", n, logs)
	}
	waitFor(t, "the slow client's leave to be logged", func() bool {
		return len(logs.linesWith(`msg="client left"`, "remote="+slow.Conn().LocalAddr().String())) == 1
	})
	if l := logs.linesWith(`msg="client left"`, "remote="+slow.Conn().LocalAddr().String()); !strings.Contains(l[0], "send queue full") {
		t.Errorf("slow client left for another reason: %s", l[0])
	}
	// The slow client reads what its socket still held, then the end.
	if _, err := io.Copy(io.Discard, slow.Conn()); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Errorf("slow client: reading after the drop: %v", err)
	}
	// The others are still served.
	if err := sender.Send("after"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Client{sender, reader} {
		if got := mustReadLine(t, c); got != "[sender] after" {
			t.Errorf("%s got %.40q after the drop, want [sender] after", c.nick, got)
		}
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// Joins and leaves are logged, one line each, with the client's address and
// the reason it left.
func TestJoinAndLeaveAreLogged(t *testing.T) {
	srv := &Server{}
	addr, logs := startServer(t, srv)
	c := dial(t, addr, "alice")
	remote := "remote=" + c.Conn().LocalAddr().String()
	waitFor(t, "the join to be logged", func() bool {
		return len(logs.linesWith(`msg="client joined"`, remote)) > 0
	})
	c.Close()
	waitFor(t, "the leave to be logged", func() bool {
		return len(logs.linesWith(`msg="client left"`, remote)) > 0
	})
	if j := logs.linesWith(`msg="client joined"`, remote); len(j) != 1 || !strings.Contains(j[0], "clients=1") {
		t.Errorf("join lines %q, want one with clients=1", j)
	}
	l := logs.linesWith(`msg="client left"`, remote)
	if len(l) != 1 || !strings.Contains(l[0], `reason="closed by client"`) || !strings.Contains(l[0], "clients=0") {
		t.Errorf("leave lines %q, want one with reason=\"closed by client\" and clients=0", l)
	}
}

// A client that sends a line without a newline and closes its side still
// gets its line to everyone, newline added, and its own echo before the FIN.
func TestLastLineWithoutNewline(t *testing.T) {
	srv := &Server{}
	addr, _ := startServer(t, srv)
	other := dial(t, addr, "other")
	quitter := dial(t, addr, "quitter")
	waitFor(t, "2 clients to join", func() bool { return srv.NumClients() == 2 })
	if _, err := io.WriteString(quitter.Conn(), "[quitter] bye"); err != nil {
		t.Fatal(err)
	}
	quitter.Conn().(*net.TCPConn).CloseWrite()
	if got := mustReadLine(t, other); got != "[quitter] bye" {
		t.Errorf("other got %q, want [quitter] bye", got)
	}
	rest, err := io.ReadAll(quitter.Conn())
	if err != nil || string(rest) != "[quitter] bye\n" {
		t.Errorf("quitter got %q, %v before the server's FIN; want its own echo", rest, err)
	}
}

// A line longer than MaxLineBytes disconnects its sender and reaches no one.
func TestLineTooLong(t *testing.T) {
	srv := &Server{MaxLineBytes: 64}
	addr, logs := startServer(t, srv)
	other := dial(t, addr, "other")
	big := dial(t, addr, "big")
	waitFor(t, "2 clients to join", func() bool { return srv.NumClients() == 2 })
	if err := big.Send(strings.Repeat("y", 100)); err != nil {
		t.Fatal(err)
	}
	remote := "remote=" + big.Conn().LocalAddr().String()
	waitFor(t, "the long line's sender to be dropped", func() bool {
		return len(logs.linesWith(`msg="client left"`, remote, "line longer than 64 bytes")) == 1
	})
	if err := other.Send("short"); err != nil {
		t.Fatal(err)
	}
	if got := mustReadLine(t, other); got != "[other] short" {
		t.Errorf("other got %q, want only its own [other] short", got)
	}
}

// Close disconnects every client, logs why, and makes Serve return.
func TestCloseDisconnectsClients(t *testing.T) {
	srv := &Server{}
	logs := &syncBuffer{}
	srv.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	a := dial(t, ln.Addr().String(), "a")
	b := dial(t, ln.Addr().String(), "b")
	waitFor(t, "2 clients to join", func() bool { return srv.NumClients() == 2 })

	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	for _, c := range []*Client{a, b} {
		if _, err := c.ReadLine(); !errors.Is(err, ErrClosedByServer) {
			t.Errorf("%s: ReadLine after Close: %v, want ErrClosedByServer", c.nick, err)
		}
	}
	if n := len(logs.linesWith(`msg="client left"`, `reason="server shutting down"`)); n != 2 {
		t.Errorf("%d leave lines with reason server shutting down, want 2:\n%s", n, logs)
	}
	if err := srv.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close: %v, want ErrServerClosed", err)
	}
}

// Run sends lines in the chat format, prints what comes back, and stops at
// a q or Q line or at the end of its input without sending anything after.
func TestRunQuits(t *testing.T) {
	for _, tc := range []struct{ name, input string }{
		{"q", "hello\n\nq\nnot sent\n"},
		{"Q", "hello\r\nQ\r\nnot sent\n"},
		{"eof", "hello\n"},
		{"eof without newline", "hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &Server{}
			addr, logs := startServer(t, srv)
			watcher := dial(t, addr, "watcher")
			alice := dial(t, addr, "alice")
			waitFor(t, "2 clients to join", func() bool { return srv.NumClients() == 2 })

			var out syncBuffer
			if err := alice.Run(strings.NewReader(tc.input), &out); err != nil {
				t.Fatalf("Run: %v", err)
			}
			// The server flushes alice's echo before its FIN, and Run waits
			// for that FIN, so the echo is always there.
			if got := out.String(); got != "[alice] hello\n" {
				t.Errorf("alice printed %q, want her echo [alice] hello", got)
			}
			if got := mustReadLine(t, watcher); got != "[alice] hello" {
				t.Errorf("watcher got %q, want [alice] hello", got)
			}
			// alice sent nothing after quitting: the watcher's own line is
			// the very next one it sees.
			if err := watcher.Send("next"); err != nil {
				t.Fatal(err)
			}
			if got := mustReadLine(t, watcher); got != "[watcher] next" {
				t.Errorf("watcher got %q after alice quit, want [watcher] next", got)
			}
			remote := "remote=" + alice.Conn().LocalAddr().String()
			waitFor(t, "alice's leave to be logged", func() bool {
				return len(logs.linesWith(`msg="client left"`, remote)) == 1
			})
			if l := logs.linesWith(`msg="client left"`, remote); !strings.Contains(l[0], `reason="closed by client"`) {
				t.Errorf("alice did not leave cleanly: %s", l[0])
			}
		})
	}
}

// Run reports a connection closed by the server as ErrClosedByServer, even
// while it is blocked reading its input.
func TestRunServerGoesAway(t *testing.T) {
	srv := &Server{}
	addr, _ := startServer(t, srv)
	c := dial(t, addr, "alice")
	waitFor(t, "the client to join", func() bool { return srv.NumClients() == 1 })

	in, inWriter := io.Pipe()
	defer inWriter.Close() // releases Run's abandoned input goroutine
	done := make(chan error, 1)
	go func() { done <- c.Run(in, io.Discard) }()
	srv.Close()
	if err := <-done; !errors.Is(err, ErrClosedByServer) {
		t.Errorf("Run returned %v, want ErrClosedByServer", err)
	}
}

// A broken output is reported as such, not as the server going away.
func TestRunOutputFails(t *testing.T) {
	srv := &Server{}
	addr, _ := startServer(t, srv)
	c := dial(t, addr, "alice")
	waitFor(t, "the client to join", func() bool { return srv.NumClients() == 1 })
	in, inWriter := io.Pipe()
	defer inWriter.Close()
	done := make(chan error, 1)
	go func() { done <- c.Run(in, failingWriter{}) }()
	if _, err := io.WriteString(inWriter, "hello\n"); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil || errors.Is(err, ErrClosedByServer) || !strings.Contains(err.Error(), "writing output") {
		t.Errorf("Run returned %v, want a writing-output error", err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("stdout closed") }
