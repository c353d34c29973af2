package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/chat"
	"github.com/rawlb/rawlb/internal/testenv"
)

const hangGuard = 30 * time.Second

// syncBuffer collects the server's log while the test reads it.
type syncBuffer struct{ testenv.Buffer }

var listeningRE = regexp.MustCompile(`msg="chat server listening" addr=(\S+)`)

// waitListening polls the log for the listening line and returns its address.
func waitListening(t *testing.T, logs interface{ String() string }) string {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		if m := listeningRE.FindStringSubmatch(logs.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("server never logged that it listens; log:\n%s", logs)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBadArgs(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"x"},
		{"8090", "8091"},
		{"70000"},
		{"-nope", "8090"},
		{"-queue", "0", "8090"},
		{"-log-level", "loud", "8090"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
		if lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "chatserver: ") {
			t.Errorf("run(%q) printed %q, want one line starting chatserver:", args, stderr.String())
		}
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 {
		t.Errorf("-h exited %d, want 0", code)
	}
	for _, want := range []string{usageLine, "  -listen address", "  -queue int"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, stdout.String())
		}
	}
}

// The server serves chat until its context ends, then disconnects its
// clients and returns 0.
func TestServeUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"-listen", "127.0.0.1", "0"}, &bytes.Buffer{}, logs) }()
	addr := waitListening(t, logs)

	dctx, dcancel := context.WithTimeout(context.Background(), hangGuard)
	defer dcancel()
	c, err := chat.Dial(dctx, addr, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Conn().SetDeadline(time.Now().Add(hangGuard))
	if err := c.Send("hello"); err != nil {
		t.Fatal(err)
	}
	if line, err := c.ReadLine(); err != nil || line != "[alice] hello" {
		t.Fatalf("ReadLine = %q, %v; want the echo [alice] hello", line, err)
	}

	cancel()
	if code := <-exited; code != 0 {
		t.Errorf("run returned %d after cancel, want 0", code)
	}
	if _, err := c.ReadLine(); !errors.Is(err, chat.ErrClosedByServer) {
		t.Errorf("client after shutdown: %v, want ErrClosedByServer", err)
	}
	for _, want := range []string{`msg="client joined"`, `msg="client left"`, `reason="server shutting down"`, `msg="shutting down"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

// The real binary stops cleanly, with status 0, on SIGTERM and SIGINT.
func TestSignalsStopTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "chatserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Interrupt} {
		logs := &syncBuffer{}
		cmd := exec.Command(bin, "-listen", "127.0.0.1", "0")
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitListening(t, logs)
		cmd.Process.Signal(sig)
		if err := cmd.Wait(); err != nil {
			t.Errorf("after %v: %v; log:\n%s", sig, err, logs)
		}
		if !strings.Contains(logs.String(), `msg="shutting down"`) {
			t.Errorf("after %v the log lacks the shutdown line:\n%s", sig, logs)
		}
	}
}
