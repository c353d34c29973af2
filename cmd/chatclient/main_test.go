package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/chat"
)

const hangGuard = 30 * time.Second

// startServer runs a chat server on a fresh 127.0.0.1 port until the test ends.
func startServer(t *testing.T) (*chat.Server, string, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &chat.Server{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, chat.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	return srv, host, port
}

func TestBadArgs(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"localhost", "20000"},
		{"localhost", "20000", "nick", "extra"},
		{"localhost", "port", "nick"},
		{"localhost", "0", "nick"},
		{"localhost", "65536", "nick"},
		{"localhost", "20000", ""},
		{"-x", "localhost", "20000", "nick"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, strings.NewReader(""), &stdout, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
		if !strings.HasPrefix(stderr.String(), usageLine+"\n") {
			t.Errorf("run(%q) printed %q, want the usage line first", args, stderr.String())
		}
	}
}

// The client sends its input in the chat format, prints what comes back and
// exits 0 at q.
func TestQuit(t *testing.T) {
	_, host, port := startServer(t)
	var stdout, stderr bytes.Buffer
	code := run([]string{host, port, "alice"}, strings.NewReader("hi there\nq\nignored\n"), &stdout, &stderr)
	if code != 0 {
		t.Errorf("exit %d, want 0; stderr %q", code, stderr.String())
	}
	if got := stdout.String(); got != "[alice] hi there\n" {
		t.Errorf("printed %q, want the echo [alice] hi there", got)
	}
}

// When the server goes away, the client says so and exits 1.
func TestServerClosesConnection(t *testing.T) {
	srv, host, port := startServer(t)
	in, inWriter := io.Pipe()
	defer inWriter.Close()
	var stdout, stderr bytes.Buffer
	exited := make(chan int, 1)
	go func() { exited <- run([]string{host, port, "alice"}, in, &stdout, &stderr) }()
	deadline := time.Now().Add(hangGuard)
	for srv.NumClients() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the client never joined")
		}
		time.Sleep(time.Millisecond)
	}
	srv.Close()
	if code := <-exited; code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want := "connection to " + net.JoinHostPort(host, port) + " closed by the server\n"
	if stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

func TestConnectFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close() // nothing listens there now
	var stdout, stderr bytes.Buffer
	if code := run([]string{host, port, "alice"}, strings.NewReader(""), &stdout, &stderr); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "cannot connect to "+net.JoinHostPort(host, port)) {
		t.Errorf("stderr %q does not say the connect failed", stderr.String())
	}
}
