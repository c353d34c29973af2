package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/testenv"
)

// Command returns a command that runs name inside h's network namespace via
// `ip netns exec`. ip execs name in place, so the process's pid is the
// command's own and signals reach it directly. Besides the network
// namespace, ip gives it a private mount namespace with /sys remounted, so
// /sys/class/net shows the lab host's interfaces.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
}

// Run runs name to completion inside h's namespace and returns its combined
// output; on failure it fails t with that output.
func (h *Host) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	testenv.RequirePrivileged(t)
	out, err := h.Command(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("netlab: %s: %s %s: %v\n%s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Snmp returns the kernel's protocol counters as seen inside h's namespace,
// keyed "Proto.Field": "Tcp.OutRsts", "Tcp.ActiveOpens", "Ip.InReceives".
// Besides /proc/net/snmp it reads /proc/net/netstat, which has the same
// layout and the finer TCP counters ("TcpExt.TCPAbortOnData", "TcpExt.ListenDrops").
// The counters are per namespace, so they count only this host's traffic.
func (h *Host) Snmp(t testing.TB) map[string]int64 {
	t.Helper()
	out := h.Run(t, "cat", "/proc/net/snmp", "/proc/net/netstat")
	m, err := parseSnmp(out)
	if err != nil {
		t.Fatalf("netlab: %s: %v", h.Name, err)
	}
	return m
}

// parseSnmp parses the /proc/net/snmp layout: lines come in pairs, a header
// "Tcp: RtoAlgorithm RtoMin ..." followed by "Tcp: 1 200 ...".
func parseSnmp(s string) (map[string]int64, error) {
	m := make(map[string]int64)
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		header := strings.Fields(sc.Text())
		if len(header) == 0 {
			continue
		}
		if !sc.Scan() {
			return nil, fmt.Errorf("snmp: header %q has no value line", header[0])
		}
		values := strings.Fields(sc.Text())
		if len(values) != len(header) || values[0] != header[0] {
			return nil, fmt.Errorf("snmp: value line %q does not match header %q", sc.Text(), strings.Join(header, " "))
		}
		proto := strings.TrimSuffix(header[0], ":")
		for i := 1; i < len(header); i++ {
			// Tcp.MaxConn is -1 ("no limit"), hence a signed parse.
			v, err := strconv.ParseInt(values[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("snmp: %s.%s: %w", proto, header[i], err)
			}
			m[proto+"."+header[i]] = v
		}
	}
	return m, sc.Err()
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct{ testenv.Buffer }

// Process is a long-running command inside a lab host, started by
// StartProcess.
type Process struct {
	name    string
	cmd     *exec.Cmd
	out     lockedBuffer
	done    chan struct{} // closed once the process has exited
	waitErr error         // cmd.Wait's result, valid once done is closed
}

// Pid returns the process's id (ip netns exec execs the program, so it is
// the program's own).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// stopGrace is how long cleanup lets a process exit on SIGTERM (flushing
// its logs and counters) before it is killed.
const stopGrace = 3 * time.Second

// StartProcess starts name inside h's namespace and returns at once. Its
// stdout and stderr go, interleaved as written, into one buffer (see Output);
// if the test fails, the buffer is logged. Cleanup sends SIGTERM to the
// process's group, then SIGKILL after a grace period, so children it spawned
// die with it.
func (h *Host) StartProcess(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	testenv.RequirePrivileged(t)
	p := &Process{name: name, done: make(chan struct{})}
	p.cmd = h.Command(context.Background(), name, args...)
	// One writer for both streams makes exec share a single pipe, which keeps
	// stderr and stdout lines in the order they were written.
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A grandchild holding the pipe open must not block Wait forever.
	p.cmd.WaitDelay = stopGrace
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("netlab: %s: start %s: %v", h.Name, name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("netlab: output of %s %s in %s (pid %d, %s):\n%s",
				name, strings.Join(args, " "), h.Name, p.cmd.Process.Pid, p.state(), p.Output())
		}
	})
	return p
}

// stop ends the process group: politely first, so a balancer can report
// what it saw, then for good.
func (p *Process) stop() {
	pgid := p.cmd.Process.Pid
	select {
	case <-p.done:
		// The leader is gone; members it left behind are not.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// state describes how the process ended, for logs.
func (p *Process) state() string {
	select {
	case <-p.done:
		return p.cmd.ProcessState.String()
	default:
		return "still running"
	}
}

// Signal sends sig to the process (not its children). After the process has
// exited it returns os.ErrProcessDone.
func (p *Process) Signal(sig os.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the process to exit and returns its exit
// code. A non-zero exit is not an error; err is non-nil when the process is
// still running at the timeout, or when it was ended by a signal (exitCode
// is then -1 and err says which signal).
func (p *Process) Wait(timeout time.Duration) (exitCode int, err error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return -1, fmt.Errorf("netlab: %s still running after %v", p.name, timeout)
	}
	code := p.cmd.ProcessState.ExitCode()
	var ee *exec.ExitError
	if p.waitErr != nil && (!errors.As(p.waitErr, &ee) || code < 0) {
		return code, p.waitErr
	}
	return code, nil
}

// Output returns everything the process has written to stdout and stderr so
// far.
func (p *Process) Output() string {
	return p.out.String()
}

// WaitForOutput polls the process's output until it contains substr. It
// gives up at timeout, or as soon as the process exits without having
// printed substr, since it never will.
func (p *Process) WaitForOutput(substr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(p.Output(), substr) {
			return nil
		}
		select {
		case <-p.done:
			// Output may have arrived between the check and the exit.
			if strings.Contains(p.Output(), substr) {
				return nil
			}
			return fmt.Errorf("netlab: %s exited (%s) without printing %q; output:\n%s", p.name, p.state(), substr, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netlab: %s did not print %q within %v; output:\n%s", p.name, substr, timeout, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitFor polls cond every few milliseconds until it holds, and fails t
// naming what it waited for if it still does not hold after timeout. Tests
// use it instead of sleeping, so they are as fast as the machine allows and
// no flakier than the timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("netlab: timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// binDir holds the binaries built by BuildBinary in this test process. It is
// per process (named by pid) so that `go test ./...`, which runs packages'
// test binaries in parallel, never overwrites a binary another package is
// running; leftovers of earlier, finished processes are removed when the
// next one creates its directory.
var binDir = sync.OnceValues(func() (string, error) {
	root := filepath.Join(os.TempDir(), "rawlb-netlab-bin")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	if entries, err := os.ReadDir(root); err == nil {
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if syscall.Kill(pid, 0) == syscall.ESRCH {
				os.RemoveAll(filepath.Join(root, e.Name()))
			}
		}
	}
	dir := filepath.Join(root, strconv.Itoa(os.Getpid()))
	return dir, os.MkdirAll(dir, 0o755)
})

// built remembers one build per package for the whole test process.
type built struct {
	once sync.Once
	path string
	err  error
}

var builds sync.Map // package path -> *built

// BuildBinary builds the main package pkg (an import path such as
// "github.com/rawlb/rawlb/cmd/rawlb", or a path relative to the calling
// test's package directory) once per test process and returns the binary's
// path. It builds with CGO_ENABLED=0, as the release build does. A build
// failure fails t, and every later caller for the same pkg, with the
// compiler's output.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(pkg, new(built))
	b := v.(*built)
	b.once.Do(func() {
		dir, err := binDir()
		if err != nil {
			b.err = fmt.Errorf("netlab: binary directory: %w", err)
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("netlab: go tool not in PATH (sudo resets PATH; try sudo env PATH=$PATH ...): %w", err)
			return
		}
		// One directory per package, named by its flattened path, keeps two
		// packages that both end in /rawlb apart, while the binary keeps its
		// own name for ps listings and usage messages.
		sub := filepath.Join(dir, strings.NewReplacer("/", "_", ".", "_").Replace(strings.TrimLeft(pkg, "./")))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.err = fmt.Errorf("netlab: binary directory: %w", err)
			return
		}
		path := filepath.Join(sub, filepath.Base(pkg))
		cmd := exec.Command(goTool, "build", "-o", path, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("netlab: go build %s: %v\n%s", pkg, err, out)
			return
		}
		b.path = path
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}
