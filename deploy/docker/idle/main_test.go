package main

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildIdle builds this package into a temporary directory.
func buildIdle(t *testing.T) string {
	t.Helper()
	bin := t.TempDir() + "/idle"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// idle stays up until SIGTERM or SIGINT and then exits 0, which is what
// docker stop needs from a container's PID 1.
func TestIdleWaitsForSignal(t *testing.T) {
	bin := buildIdle(t)
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Interrupt} {
		cmd := exec.Command(bin)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// idle says when its handler is in place; a signal before that
		// would kill it by the default action, which is not what is tested.
		lines := bufio.NewScanner(stderr)
		if !lines.Scan() || lines.Text() != "idle: waiting for SIGTERM" {
			cmd.Process.Kill()
			t.Fatalf("idle's first line: %q, want %q", lines.Text(), "idle: waiting for SIGTERM")
		}
		done := make(chan error, 1)
		go func() {
			io.Copy(io.Discard, stderr)
			done <- cmd.Wait()
		}()
		select {
		case err := <-done:
			t.Fatalf("idle exited before any signal: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("after %v idle exited with %v, want status 0", sig, err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("idle did not exit within 30s of %v", sig)
		}
	}
}

func TestIdleUsage(t *testing.T) {
	bin := buildIdle(t)
	out, err := exec.Command(bin, "-version").Output()
	if err != nil || !strings.HasPrefix(string(out), "idle ") {
		t.Errorf("idle -version: %q, %v", out, err)
	}
	var ee *exec.ExitError
	if err := exec.Command(bin, "extra").Run(); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("idle with an argument: %v, want exit status 2", err)
	}
}
