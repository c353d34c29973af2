package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/chat"
	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

// TestSlowDockerCompose is the README's Docker section as a test: `make
// image`, the compose stack of deploy/docker-compose.yml brought up with
// each compose implementation found (Compose v1, Debian's docker-compose;
// Compose v2, `docker compose`), the chat demo in it, one chat server
// stopped and taken out by rawlb's health checks, and everything torn down.
//
// It runs its own Docker engine, never the host's: dockerd and containerd
// in a network namespace of their own (so the iptables rules and bridges
// dockerd makes stay in it, and the host's firewall is never touched) and a
// private mount namespace (see startEngine), with their data, state,
// sockets and pid files under the test's temporary directory.
//
// What it takes, found by trying it on Debian 12 (kernel 6.18, cgroup v1
// with a cgroup2 "unified" mount beside it, ext4 root, iptables-nft, no
// systemd):
//
//   - root, and Debian's docker.io (dockerd 20.10, containerd 1.6, runc,
//     docker-proxy) plus docker-compose (1.29) or Compose v2:
//     scripts/docker-deps.sh installs them.
//   - dockerd put into the network namespace with nsenter --net, not `ip
//     netns exec`: ip remounts /sys for the namespace, which hides
//     /sys/fs/cgroup, and dockerd stops with "Devices cgroup isn't mounted".
//   - nothing written outside the temporary directory. Left to itself,
//     dockerd 20.10 writes /etc/docker/key.json (moved with its
//     "deprecated-key-path" setting) and /run/docker/plugins (a fixed
//     path), and the containerd it starts creates /opt/containerd (its
//     "opt" plugin) and puts its shims' sockets in /run/containerd/s. So
//     containerd is started here, with a config of its own, and both run
//     in a private mount namespace with a tmpfs over /run, which goes away
//     with them.
//   - storage: dockerd picks overlay2 on ext4 by itself (it would fall back
//     to vfs). Its overlay mounts, like the tmpfs, exist only in the
//     private mount namespace: the host's mount table never shows them, so
//     no failure can leave one there.
//   - cgroups: a relative --cgroup-parent, so that the containers' cgroups
//     sit below the test's own in every hierarchy (and under its memory
//     limit) rather than under /docker at the root; removed at the end.
//   - networking: the namespace has only lo until dockerd adds its
//     bridges; its iptables rules (NAT for the published port, isolation
//     between networks) go into the namespace's own tables. The compose
//     network is 198.18.0.0/24 and docker0 is moved to 198.19.0.0/24, so
//     every address is in the 198.18.0.0/15 test range. The published port
//     is reached at 127.0.0.1:20000 in the namespace, i.e. from the Docker
//     host, through docker-proxy.
//   - no registry and no network at all: the namespace reaches nothing, so
//     a passing image build shows it needs neither.
//
// It is slow (a minute or more: an engine, an image, a stack per compose
// implementation), so it follows the convention of rawlb/e2e_test.go for
// slow end-to-end tests: named TestSlow..., run by `make test-slow` (and
// CI), which sets RAWLB_SLOW_TESTS=1; otherwise it skips, saying so.
func TestSlowDockerCompose(t *testing.T) {
	if os.Getenv("RAWLB_SLOW_TESTS") != "1" {
		t.Skip("slow end-to-end test (a Docker engine, an image and the compose stack): make test-slow runs it (RAWLB_SLOW_TESTS=1)")
	}
	tools := findDockerTools(t)

	start := time.Now()
	e := startEngine(t, tools)
	t.Logf("engine: dockerd %s, storage driver %s, up in %v", e.serverVersion, e.storageDriver, time.Since(start).Round(time.Millisecond))

	// The image, built by the Makefile the way a user builds it.
	version := "e2e-" + randomHex(t, 4)
	start = time.Now()
	e.makeImage(t, version)
	t.Logf("make image: %v", time.Since(start).Round(time.Millisecond))
	e.checkImage(t, version)
	// The compose file read with the flags of the rawlb just built.
	layout := loadDemoLayout(t, helpFlags(t, filepath.Join(e.dir, "bin", progRawlb)))

	for _, tool := range tools.composes {
		t.Run(tool.label, func(t *testing.T) {
			runChatDemo(t, e, tool, layout)
		})
	}

	// The images were built for this test only.
	e.docker(t, "image", "rm", "rawlb:latest", "rawlb:demo")
	if left := strings.Fields(e.docker(t, "image", "ls", "-q")); len(left) > 0 {
		t.Errorf("images left after removing the test's own: %v", left)
	}
	e.stop(t)
}

// composeTool is one compose implementation, as the command that runs it.
type composeTool struct {
	label string   // "compose-v1" or "compose-v2", the subtest's name
	argv  []string // "docker-compose" or "docker compose"
}

type dockerTools struct {
	dockerd, containerd, docker string
	composes                    []composeTool
}

// findDockerTools finds the engine and the compose implementations. Where
// something is missing the test cannot run: it skips, and fails instead
// under RAWLB_REQUIRE_PRIVILEGED=1 (CI, which installs them), so that it
// never passes by skipping where an engine could run.
//
// RAWLB_COMPOSE names the compose commands to use instead of the ones
// found, separated by commas ("docker compose,/opt/v1/docker-compose").
func findDockerTools(t *testing.T) dockerTools {
	t.Helper()
	testenv.RequirePrivileged(t)
	var missing []string
	look := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
		}
		return p
	}
	tools := dockerTools{
		dockerd:    look("dockerd"),
		containerd: look("containerd"),
		docker:     look("docker"),
	}
	for _, name := range []string{"runc", "docker-proxy", "nsenter", "unshare", "iptables", "ip"} {
		look(name)
	}

	var candidates [][]string
	if env := os.Getenv("RAWLB_COMPOSE"); env != "" {
		for _, c := range strings.Split(env, ",") {
			candidates = append(candidates, strings.Fields(c))
		}
	} else {
		candidates = [][]string{{"docker-compose"}, {"docker", "compose"}}
	}
	for _, argv := range candidates {
		if len(argv) == 0 {
			continue
		}
		// v1: "docker-compose version 1.29.2, build unknown";
		// v2: "Docker Compose version v2.40.3".
		out, err := exec.Command(argv[0], append(argv[1:], "version")...).Output()
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(string(out), "\n")
		var label string
		switch {
		case strings.HasPrefix(first, "docker-compose version 1."):
			label = "compose-v1"
		case strings.HasPrefix(first, "Docker Compose version "):
			label = "compose-v2"
		default:
			t.Logf("%s: unknown compose version %q; not used", strings.Join(argv, " "), first)
			continue
		}
		if slices.ContainsFunc(tools.composes, func(c composeTool) bool { return c.label == label }) {
			continue // docker-compose can be Compose v2's standalone binary
		}
		tools.composes = append(tools.composes, composeTool{label: label, argv: argv})
		t.Logf("%s: %s (%s)", label, strings.Join(argv, " "), first)
	}
	if len(tools.composes) == 0 {
		missing = append(missing, "docker-compose or docker compose")
	}

	if len(missing) > 0 {
		msg := fmt.Sprintf("the Docker test cannot run here: %s not found; install them with `bash scripts/docker-deps.sh` (Debian's docker.io and docker-compose)", strings.Join(missing, ", "))
		if os.Getenv(testenv.RequireEnv) == "1" {
			t.Fatalf("%s, and %s=1 forbids skipping", msg, testenv.RequireEnv)
		}
		t.Skip(msg)
	}
	return tools
}

// demoLayout is what the test needs to know of the compose file, read from
// it rather than repeated here.
type demoLayout struct {
	file          string
	lbService     string
	lbPort        int    // published and balanced
	metricsAddr   string // rawlb's -metrics, at its container address
	clientService string // the one running idle
	chats         []demoChat
}

type demoChat struct {
	service string
	backend string // rawlb's name for it: "chat2:8091", the metrics label
}

func loadDemoLayout(t *testing.T, flags flagSet) demoLayout {
	t.Helper()
	c := loadCompose(t)
	l := demoLayout{file: repoPath("deploy", "docker-compose.yml")}
	lbs := c.servicesRunning(progRawlb)
	idles := c.servicesRunning(progIdle)
	if len(lbs) != 1 || len(idles) != 1 {
		t.Fatalf("want one rawlb service and one idle (client) service, have %v and %v", lbs, idles)
	}
	l.lbService, l.clientService = lbs[0], idles[0]
	p, err := parseArgs(flags, c.Services[l.lbService].argv()[1:])
	if err != nil || len(p.positional) < 2 {
		t.Fatalf("service %s: %q: %v", l.lbService, c.Services[l.lbService].argv(), err)
	}
	if l.lbPort, err = strconv.Atoi(p.value(flags, "port")); err != nil {
		t.Fatalf("service %s: -port: %v", l.lbService, err)
	}
	_, metricsPort, err := net.SplitHostPort(p.value(flags, "metrics"))
	if err != nil {
		t.Fatalf("service %s: -metrics %q: %v", l.lbService, p.value(flags, "metrics"), err)
	}
	l.metricsAddr = net.JoinHostPort(p.positional[0], metricsPort)
	for _, b := range p.positional[1:] {
		host, _, err := net.SplitHostPort(b)
		if err != nil {
			t.Fatalf("service %s: backend %q: %v", l.lbService, b, err)
		}
		l.chats = append(l.chats, demoChat{service: host, backend: b})
	}
	if len(l.chats) != 3 {
		t.Fatalf("service %s has backends %v, want the three chat servers", l.lbService, l.chats)
	}
	return l
}

// engine is a dockerd (with its containerd) of the test's own.
type engine struct {
	dir, ns, sock string
	cli           string   // the docker CLI
	env           []string // for every docker, compose and make command
	cgroupParent  string   // relative: below the test's own cgroups
	cmd           *exec.Cmd
	exited        chan struct{} // closed when dockerd has exited
	mntNS         string        // its mount namespace, "mnt:[inode]"
	containerdPID int

	serverVersion, storageDriver string
	stopOnce                     sync.Once
}

// startEngine starts containerd and dockerd in a fresh network namespace
// and a private mount namespace, and waits until dockerd answers. Every
// path they write to is under one temporary directory, except what lands
// in the private tmpfs over /run (see TestSlowDockerCompose).
func startEngine(t *testing.T, tools dockerTools) *engine {
	t.Helper()
	// Short paths: containerd's and dockerd's sockets live here, and a unix
	// socket's path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "rawlb-dock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing the engine's directory: %v", err)
		}
	})
	e := &engine{
		dir:          dir,
		ns:           netlab.NewNetNS(t, "rawlb-dock"),
		sock:         filepath.Join(dir, "docker.sock"),
		cli:          tools.docker,
		cgroupParent: "rawlb-dock-" + randomHex(t, 4),
		exited:       make(chan struct{}),
	}
	e.env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		for _, k := range []string{"DOCKER_HOST=", "DOCKER_CONTEXT=", "DOCKER_TLS_VERIFY=", "DOCKER_CERT_PATH=", "COMPOSE_FILE=", "COMPOSE_PROJECT_NAME="} {
			if strings.HasPrefix(kv, k) {
				return true
			}
		}
		return false
	}), "DOCKER_HOST=unix://"+e.sock)
	if out, err := exec.Command("ip", "-n", e.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", e.ns, err, out)
	}

	ctrDir := filepath.Join(dir, "containerd")
	ctrSock := filepath.Join(ctrDir, "containerd.sock")
	// cri is Kubernetes' plugin: not needed, and it would look for CNI
	// plugins and configuration in /opt/cni and /etc/cni.
	writeFile(t, filepath.Join(dir, "containerd.toml"), fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(ctrDir, "root"), filepath.Join(ctrDir, "state"), ctrSock, filepath.Join(ctrDir, "opt")))
	daemonJSON, err := json.Marshal(map[string]any{
		"deprecated-key-path": filepath.Join(dir, "key.json"),
		"bip":                 "198.19.0.1/24",
		"default-address-pools": []map[string]any{
			{"base": "198.19.128.0/17", "size": 24},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "daemon.json"), string(daemonJSON))

	// nsenter joins only the network namespace (ip netns exec would also
	// remount /sys and hide the cgroups); unshare makes the private mount
	// namespace, where a tmpfs covers /run (mount -n: no utab in the host's
	// /run/mount). Neither forks, and sh execs dockerd, so e.cmd's pid is
	// dockerd's and containerd is its child.
	script := `set -e
mount -n -t tmpfs -o mode=0755 rawlb-dock-run /run
"$1" --config "$2" >"$3" 2>&1 &
echo $! >"$4"
i=0
while [ ! -S "$5" ]; do
	i=$((i+1)); [ $i -lt 600 ] || { echo "containerd did not start" >&2; exit 1; }
	sleep 0.1
done
shift 5
exec "$@"`
	args := []string{"--net=" + filepath.Join("/run/netns", e.ns), "--", "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", script, "sh",
		tools.containerd, filepath.Join(dir, "containerd.toml"), filepath.Join(dir, "containerd.log"), filepath.Join(dir, "containerd.pid"), ctrSock,
		tools.dockerd,
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--containerd", ctrSock,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--host", "unix://" + e.sock,
		"--cgroup-parent", e.cgroupParent,
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command("nsenter", args...)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("starting dockerd: %v", err)
	}
	go func() {
		e.cmd.Wait()
		logf.Close()
		close(e.exited)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs(t)
		}
		e.stop(t)
	})

	err = poll(120*time.Second, func() error {
		select {
		case <-e.exited:
			return stopPolling{fmt.Errorf("dockerd exited: %v", e.cmd.ProcessState)}
		default:
		}
		out, err := e.dockerCmd("info", "--format", "{{.ServerVersion}} {{.Driver}}").Output()
		if err != nil {
			return err
		}
		f := strings.Fields(string(out))
		if len(f) != 2 {
			return fmt.Errorf("docker info: %q", out)
		}
		e.serverVersion, e.storageDriver = f[0], f[1]
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for dockerd: %v", err)
	}
	e.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", e.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if own, _ := os.Readlink("/proc/self/ns/mnt"); own == e.mntNS {
		t.Fatalf("dockerd is in the test's own mount namespace %s; stop cannot tell its processes from the host's", own)
	}
	pidText, err := os.ReadFile(filepath.Join(dir, "containerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if e.containerdPID, err = strconv.Atoi(strings.TrimSpace(string(pidText))); err != nil {
		t.Fatalf("containerd.pid: %v", err)
	}
	return e
}

// stop stops dockerd, then containerd, then whatever of theirs is left
// (shims, container processes), removes the containers' cgroups, and
// checks that nothing of the engine runs any more. The namespace and the
// directory go in their own cleanups, after this one. Safe to call twice.
func (e *engine) stop(t *testing.T) {
	t.Helper()
	e.stopOnce.Do(func() {
		// dockerd stops its containers (SIGTERM, then SIGKILL after their
		// stop timeout of 10 s) before it exits.
		if !signalAndWait(e.cmd.Process.Pid, e.exited, 60*time.Second) {
			t.Errorf("dockerd (pid %d) did not exit on SIGTERM within 60s; killed", e.cmd.Process.Pid)
		}
		if e.containerdPID == 0 {
			// dockerd did not come up; containerd may have.
			if b, err := os.ReadFile(filepath.Join(e.dir, "containerd.pid")); err == nil {
				e.containerdPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
		}
		if e.containerdPID > 0 && e.ours(e.containerdPID) {
			if !signalAndWait(e.containerdPID, nil, 30*time.Second) {
				t.Errorf("containerd (pid %d) did not exit on SIGTERM within 30s; killed", e.containerdPID)
			}
		}
		// Left over after a failure: shims and docker-proxy (in the mount
		// namespace) and container processes (in the engine's cgroups).
		left := e.procs()
		cgDirs := findCgroupDirs(e.cgroupParent)
		left = append(left, cgroupProcs(cgDirs)...)
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if len(left) > 0 {
			t.Errorf("engine processes still running after dockerd and containerd stopped (killed): %v", left)
		}
		err := poll(30*time.Second, func() error {
			if p := append(e.procs(), cgroupProcs(cgDirs)...); len(p) > 0 {
				return fmt.Errorf("still running: %v", p)
			}
			return nil
		})
		if err != nil {
			t.Errorf("engine processes: %v", err)
		}
		if err := removeCgroupDirs(cgDirs); err != nil {
			t.Errorf("removing the engine's cgroups: %v", err)
		}
		if left := findCgroupDirs(e.cgroupParent); len(left) > 0 {
			t.Errorf("cgroups left: %v", left)
		}
	})
}

// signalAndWait sends SIGTERM to pid and waits for it to go (for exited to
// close, if given); after timeout it sends SIGKILL and reports false.
func signalAndWait(pid int, exited <-chan struct{}, timeout time.Duration) bool {
	gone := func() bool {
		if exited != nil {
			select {
			case <-exited:
				return true
			default:
				return false
			}
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	if gone() {
		return true
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if poll(timeout, func() error {
		if !gone() {
			return errors.New("running")
		}
		return nil
	}) == nil {
		return true
	}
	syscall.Kill(pid, syscall.SIGKILL)
	poll(10*time.Second, func() error {
		if !gone() {
			return errors.New("running")
		}
		return nil
	})
	return false
}

// ours reports whether pid is one of the engine's processes: in its mount
// namespace (made for it, so everything in it was started by this test),
// or, for a containerd left by a dockerd that never came up, with the
// engine's directory on its command line.
func (e *engine) ours(pid int) bool {
	if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && e.mntNS != "" && ns == e.mntNS {
		return true
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(e.dir+"/"))
}

// procs lists the engine's processes that still run.
func (e *engine) procs() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err == nil && pid != os.Getpid() && e.ours(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// findCgroupDirs returns the directories named name in every mounted
// cgroup hierarchy (with a relative --cgroup-parent, runc puts them below
// the test's own cgroup, which differs between hierarchies).
func findCgroupDirs(name string) []string {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var dirs []string
	for _, line := range strings.Split(string(mounts), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, fstype := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(fstype) < 1 || (fstype[0] != "cgroup" && fstype[0] != "cgroup2") {
			continue
		}
		filepath.WalkDir(f[4], func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if d.Name() == name {
				dirs = append(dirs, path)
				return filepath.SkipDir
			}
			return nil
		})
	}
	return dirs
}

// cgroupProcs lists the processes in the cgroups below dirs.
func cgroupProcs(dirs []string) []int {
	var pids []int
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, s := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(s); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupDirs removes the cgroups below dirs, children first (a cgroup
// is removed with rmdir, and only once it has no children).
func removeCgroupDirs(dirs []string) error {
	var errs []error
	for _, dir := range dirs {
		var all []string
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, path)
			}
			return nil
		})
		for i := len(all) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(all[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", all[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

func (e *engine) dumpLogs(t *testing.T) {
	t.Helper()
	for _, name := range []string{"dockerd.log", "containerd.log"} {
		b, _ := os.ReadFile(filepath.Join(e.dir, name))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		t.Logf("last lines of %s:\n%s", name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// dockerCmd is the docker CLI talking to this engine.
func (e *engine) dockerCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(e.cli, args...)
	cmd.Env = e.env
	return cmd
}

// docker runs the docker CLI and returns its output; a failure fails t.
func (e *engine) docker(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := e.dockerCmd(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// makeImage runs `make image` against the engine, with the binaries built
// into the engine's directory (not the work tree's bin/).
func (e *engine) makeImage(t *testing.T, version string) {
	t.Helper()
	cmd := exec.Command("make", "--no-print-directory", "image", "BIN="+filepath.Join(e.dir, "bin"), "VERSION="+version, "DOCKER="+e.cli)
	cmd.Dir = repoRoot
	cmd.Env = append(slices.DeleteFunc(makeEnv(), func(kv string) bool { return strings.HasPrefix(kv, "DOCKER_HOST=") }), "DOCKER_HOST=unix://"+e.sock)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	// Which builder ran (classic: "Successfully tagged"; BuildKit: "naming
	// to"), for the log.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("make image, last lines:\n%s", strings.Join(lines[max(0, len(lines)-3):], "\n"))
}

// checkImage checks what `make image` built: both tags on one image of a
// single layer (FROM scratch plus the one COPY), stamped with the version,
// whose binaries run in it with nothing else there (static, as scratch
// needs).
func (e *engine) checkImage(t *testing.T, version string) {
	t.Helper()
	var imgs []struct {
		ID     string
		Size   int64
		RootFS struct{ Layers []string }
		Config struct {
			Labels map[string]string
			Env    []string
		}
	}
	if err := json.Unmarshal([]byte(e.docker(t, "image", "inspect", "rawlb:latest", "rawlb:demo")), &imgs); err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 2 || imgs[0].ID != imgs[1].ID {
		t.Fatalf("rawlb:latest and rawlb:demo are not one image: %+v", imgs)
	}
	img := imgs[0]
	if n := len(img.RootFS.Layers); n != 1 {
		t.Errorf("the image has %d layers, want 1 (FROM scratch, one COPY)", n)
	}
	if got := img.Config.Labels["org.opencontainers.image.version"]; got != version {
		t.Errorf("image version label %q, want %q", got, version)
	}
	t.Logf("image rawlb:demo: %s, %.1f MB, %d layer(s)", img.ID[:19], float64(img.Size)/1e6, len(img.RootFS.Layers))
	for _, prog := range []string{progRawlb, progChatserver, progChatclient, progIdle} {
		out := e.docker(t, "run", "--rm", "--network", "none", "rawlb:demo", prog, "-version")
		if !strings.Contains(out, version) {
			t.Errorf("%s -version in the image printed %q, want version %s", prog, out, version)
		}
	}
}

// runChatDemo brings the stack up with tool, runs the chat demo in it,
// stops one chat server and sees rawlb take it out, and brings it down.
func runChatDemo(t *testing.T, e *engine, tool composeTool, l demoLayout) {
	s := &stack{e: e, tool: tool, l: l, project: "rawlbe2e" + randomHex(t, 3)}
	// Registered first, so it runs last: after the clients have gone, and
	// also after an up that failed half-way.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("compose logs:\n%s", s.composeOutput("logs", "--no-color", "--tail", "30"))
		}
		s.composeOutput("down", "--remove-orphans", "--timeout", "5")
	})
	start := time.Now()
	s.compose(t, "up", "-d")
	upTook := time.Since(start)
	// rawlb is up when its health checks have found every chat server.
	s.waitMetrics(t, 120*time.Second, "rawlb up with every chat server healthy", func(m metrics) bool {
		for _, c := range l.chats {
			if m.get("rawlb_backend_up", c.backend) != 1 {
				return false
			}
		}
		return true
	})
	t.Logf("%s up -d: %v; all %d chat servers healthy after %v", strings.Join(tool.argv, " "), upTook.Round(time.Millisecond), len(l.chats), time.Since(start).Round(time.Millisecond))
	s.clientID = strings.TrimSpace(s.compose(t, "ps", "-q", l.clientService))
	s.lbID = strings.TrimSpace(s.compose(t, "ps", "-q", l.lbService))
	if s.clientID == "" || s.lbID == "" {
		t.Fatalf("no container for %s or %s", l.clientService, l.lbService)
	}

	// Three clients, as in the README: two in the client container, one
	// from the Docker host through the published port. Round robin over
	// three healthy servers puts each on its own.
	var clients []*chatter
	for i, name := range []string{"alice", "bob", "carol"} {
		clients = append(clients, s.join(t, name, i == 2))
	}
	if servers := distinct(clients); len(servers) != 3 {
		t.Errorf("round robin over three healthy servers put alice, bob and carol on %v", servers)
	}
	s.exchange(t, clients, "1")

	// Stop the second chat server; its client is cut off, and the health
	// checks take it out.
	stopped := l.chats[1]
	start = time.Now()
	s.compose(t, "stop", stopped.service)
	t.Logf("%s stopped (%v)", stopped.service, time.Since(start).Round(time.Millisecond))
	var alive []*chatter
	for _, c := range clients {
		if c.backend != stopped.backend {
			alive = append(alive, c)
			continue
		}
		select {
		case <-c.done:
			t.Logf("%s, on %s, was disconnected: %s", c.name, stopped.service, c.endReason())
		case <-time.After(60 * time.Second):
			t.Errorf("%s, on the stopped %s, is still connected after 60s", c.name, stopped.service)
		}
	}
	s.waitMetrics(t, 120*time.Second, stopped.backend+" down", func(m metrics) bool {
		return m.get("rawlb_backend_up", stopped.backend) == 0
	})
	t.Logf("rawlb marked %s down %v after the stop", stopped.backend, time.Since(start).Round(time.Millisecond))
	// rawlb logs on stderr, which docker logs passes on as its own stderr.
	logs, err := s.e.dockerCmd("logs", s.lbID).CombinedOutput()
	if err != nil {
		t.Fatalf("docker logs %s: %v\n%s", s.lbID, err, logs)
	}
	if want := `msg="backend down" service=default backend=` + stopped.backend; !strings.Contains(string(logs), want) {
		t.Errorf("rawlb's log has no %s:\n%s", want, logs)
	} else {
		for _, line := range strings.Split(string(logs), "\n") {
			if strings.Contains(line, want) {
				t.Logf("rawlb: %s", line)
			}
		}
	}

	// New clients go to the servers that are left, and the groups now
	// have several members each.
	var newcomers []*chatter
	for i, name := range []string{"dave", "erin", "frank"} {
		c := s.join(t, name, i == 1)
		if c.backend == stopped.backend {
			t.Errorf("%s was sent to %s, which is down", name, stopped.backend)
		}
		newcomers = append(newcomers, c)
	}
	if servers := distinct(newcomers); len(servers) != 2 {
		t.Errorf("round robin over the two servers left put dave, erin and frank on %v", servers)
	}
	s.exchange(t, append(alive, newcomers...), "2")

	for _, c := range append(alive, newcomers...) {
		c.quit(t)
	}
	// idle is PID 1 of the client container and must end on SIGTERM by
	// itself: exit status 0, where a kill after the stop timeout would be
	// 137. The same for the chat server stopped above.
	s.compose(t, "stop", "--timeout", "30", l.clientService)
	for _, svc := range []string{l.clientService, stopped.service} {
		// -a: Compose v2 lists only running containers without it.
		id := strings.TrimSpace(s.compose(t, "ps", "-a", "-q", svc))
		if code := strings.TrimSpace(s.e.docker(t, "inspect", "--format", "{{.State.ExitCode}}", id)); code != "0" {
			t.Errorf("%s exited with status %s after docker stop, want 0 (its SIGTERM handler)", svc, code)
		}
	}
	start = time.Now()
	s.compose(t, "down", "--remove-orphans")
	t.Logf("down: %v", time.Since(start).Round(time.Millisecond))
	label := "label=com.docker.compose.project=" + s.project
	if left := strings.Fields(s.e.docker(t, "ps", "-aq", "--filter", label)); len(left) > 0 {
		t.Errorf("containers left after down: %v", left)
	}
	if left := strings.Fields(s.e.docker(t, "network", "ls", "-q", "--filter", label)); len(left) > 0 {
		t.Errorf("networks left after down: %v", left)
	}
}

// stack is one compose project on the engine.
type stack struct {
	e              *engine
	tool           composeTool
	l              demoLayout
	project        string
	clientID, lbID string
}

func (s *stack) composeCmd(args ...string) *exec.Cmd {
	argv := append(slices.Clone(s.tool.argv[1:]), "-p", s.project, "-f", s.l.file)
	cmd := exec.Command(s.tool.argv[0], append(argv, args...)...)
	cmd.Env = s.e.env
	return cmd
}

// compose runs a compose subcommand and returns its stdout; a failure
// fails t.
func (s *stack) compose(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := s.composeCmd(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", strings.Join(s.tool.argv, " "), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// composeOutput runs a compose subcommand for a cleanup: errors are in
// the output it returns.
func (s *stack) composeOutput(args ...string) string {
	out, err := s.composeCmd(args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s(%v)", out, err)
	}
	return string(out)
}

// metrics is one scrape of rawlb's metrics: series ("name{labels}") to value.
type metrics map[string]float64

func (m metrics) get(name, backend string) float64 {
	// The command line's backends form the service "default".
	return m[fmt.Sprintf("%s{backend=%q,service=\"default\"}", name, backend)]
}

// scrape reads rawlb's metrics from the Docker host, the engine's network
// namespace, which has a route to the compose network's bridge.
func (s *stack) scrape() (metrics, error) {
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(ctx, s.e.ns, network, addr)
			},
		},
	}
	resp, err := client.Get("http://" + s.l.metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

func (s *stack) waitMetrics(t *testing.T, timeout time.Duration, what string, cond func(metrics) bool) metrics {
	t.Helper()
	var last metrics
	err := poll(timeout, func() error {
		m, err := s.scrape()
		if err != nil {
			return err
		}
		last = m
		if !cond(m) {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting %v for %s: %v (last scrape: %v)", timeout, what, err, last)
	}
	return last
}

// dialIn connects from inside the named network namespace (literal
// addresses only: a name would be resolved on another thread, outside it).
func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netlab.InNetNS(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// chatter is one chat client: chatclient in the client container (lines
// through docker exec's stdin and stdout), or a connection from the Docker
// host to the published port.
type chatter struct {
	name    string
	backend string // the chat server rawlb sent it to, from the metrics
	send    func(text string) error
	close   func() error
	lines   chan string   // every line received
	done    chan struct{} // closed when the connection has ended
	cmd     *exec.Cmd
	stderr  bytes.Buffer
	readErr error
}

// join starts a client and finds the chat server it was sent to: the one
// whose count of live flows in rawlb's metrics went up.
func (s *stack) join(t *testing.T, name string, fromHost bool) *chatter {
	t.Helper()
	before, err := s.scrape()
	if err != nil {
		t.Fatal(err)
	}
	c := &chatter{name: name, lines: make(chan string, 100), done: make(chan struct{})}
	if fromHost {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		conn, err := dialIn(ctx, s.e.ns, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.l.lbPort)))
		cancel()
		if err != nil {
			t.Fatalf("%s: connecting to the published port: %v", name, err)
		}
		cl, err := chat.NewClient(conn, name)
		if err != nil {
			t.Fatal(err)
		}
		c.send, c.close = cl.Send, cl.Close
		go c.read(cl.ReadLine)
	} else {
		c.cmd = s.e.dockerCmd("exec", "-i", s.clientID, progChatclient, s.l.lbService, strconv.Itoa(s.l.lbPort), name)
		stdin, err := c.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := c.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		c.cmd.Stderr = &c.stderr
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.send = func(text string) error { _, err := io.WriteString(stdin, text+"\n"); return err }
		c.close = stdin.Close
		r := bufio.NewReader(stdout)
		go c.read(func() (string, error) {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			return strings.TrimSuffix(line, "\n"), nil
		})
	}
	t.Cleanup(func() {
		c.close()
		if c.cmd != nil {
			select {
			case <-c.done:
			case <-time.After(10 * time.Second):
				c.cmd.Process.Kill()
			}
		}
	})

	after := s.waitMetrics(t, 60*time.Second, name+"'s flow in rawlb", func(m metrics) bool {
		select {
		case <-c.done:
			return true // fails below
		default:
		}
		for _, ch := range s.l.chats {
			if m.get("rawlb_backend_flows", ch.backend) > before.get("rawlb_backend_flows", ch.backend) {
				return true
			}
		}
		return false
	})
	select {
	case <-c.done:
		t.Fatalf("%s's connection ended at once: %s", name, c.endReason())
	default:
	}
	for _, ch := range s.l.chats {
		if after.get("rawlb_backend_flows", ch.backend) > before.get("rawlb_backend_flows", ch.backend) {
			if c.backend != "" {
				t.Fatalf("while %s joined, flows went up on both %s and %s", name, c.backend, ch.backend)
			}
			c.backend = ch.backend
		}
	}
	how := "docker exec in " + s.l.clientService
	if fromHost {
		how = "from the Docker host to the published port"
	}
	t.Logf("%s joined (%s) and was sent to %s", name, how, c.backend)
	return c
}

func (c *chatter) read(readLine func() (string, error)) {
	defer close(c.done)
	for {
		line, err := readLine()
		if err != nil {
			c.readErr = err
			if c.cmd != nil {
				c.cmd.Wait()
			}
			return
		}
		c.lines <- line
	}
}

// endReason says how the connection ended; call it after done is closed.
func (c *chatter) endReason() string {
	if c.cmd != nil {
		return fmt.Sprintf("docker exec ... chatclient: %v: %s", c.cmd.ProcessState, strings.TrimSpace(c.stderr.String()))
	}
	return fmt.Sprint(c.readErr)
}

// quit leaves the chat as a user does: "q" for chatclient (which then
// exits 0), closing the connection for the host's client.
func (c *chatter) quit(t *testing.T) {
	t.Helper()
	if c.cmd == nil {
		c.close()
		return
	}
	if err := c.send("q"); err != nil {
		t.Errorf("%s: %v", c.name, err)
	}
	select {
	case <-c.done:
		if !c.cmd.ProcessState.Success() {
			t.Errorf("%s: after q, %s", c.name, c.endReason())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s: chatclient still running 30s after q", c.name)
	}
}

// exchange has every client say hello and checks that each hears exactly
// the clients rawlb sent to the same chat server, itself included, and no
// one else, each once.
//
// Completeness: after the hellos have all arrived where they should, each
// client in turn sends "sync" and waits for its own echo. A chat server
// sends lines to each of its clients in the order it got them, so a hello
// that a client should not have got, and did, would be in front of its
// own sync: reading up to the sync sees everything it was sent.
func (s *stack) exchange(t *testing.T, clients []*chatter, round string) {
	t.Helper()
	groups := map[string][]string{}
	for _, c := range clients {
		groups[c.backend] = append(groups[c.backend], c.name)
	}
	var desc []string
	for _, ch := range s.l.chats {
		if g := groups[ch.backend]; len(g) > 0 {
			desc = append(desc, fmt.Sprintf("%s: %s", ch.service, strings.Join(g, ", ")))
		}
	}
	t.Logf("round %s, chat groups by server: %s", round, strings.Join(desc, "; "))

	got := map[string][]string{}
	receive := func(c *chatter, want string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case line := <-c.lines:
				got[c.name] = append(got[c.name], line)
				if line == want {
					return
				}
			case <-c.done:
				t.Fatalf("%s was disconnected waiting for %q: %s", c.name, want, c.endReason())
			case <-deadline:
				t.Fatalf("%s did not get %q within 60s; got %q", c.name, want, got[c.name])
			}
		}
	}
	for _, c := range clients {
		if err := c.send("hello " + round); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	for _, c := range clients {
		for _, other := range groups[c.backend] {
			if !slices.Contains(got[c.name], fmt.Sprintf("[%s] hello %s", other, round)) {
				receive(c, fmt.Sprintf("[%s] hello %s", other, round))
			}
		}
	}
	for _, c := range clients {
		if err := c.send("sync " + round); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		// Its group gets it too; wait for all of them, so that the next
		// sync is not mixed with this one.
		for _, other := range clients {
			if other.backend == c.backend {
				receive(other, fmt.Sprintf("[%s] sync %s", c.name, round))
			}
		}
	}
	for _, c := range clients {
		var want []string
		for _, other := range groups[c.backend] {
			want = append(want, fmt.Sprintf("[%s] hello %s", other, round), fmt.Sprintf("[%s] sync %s", other, round))
		}
		have := slices.Clone(got[c.name])
		slices.Sort(want)
		slices.Sort(have)
		if !slices.Equal(have, want) {
			t.Errorf("round %s: %s (on %s) got %q, want exactly %q", round, c.name, c.backend, have, want)
		}
	}
}

// distinct returns the chat servers the clients were sent to.
func distinct(clients []*chatter) []string {
	var servers []string
	for _, c := range clients {
		if !slices.Contains(servers, c.backend) {
			servers = append(servers, c.backend)
		}
	}
	slices.Sort(servers)
	return servers
}

// stopPolling wraps an error after which poll gives up at once.
type stopPolling struct{ err error }

func (s stopPolling) Error() string { return s.err.Error() }

// poll calls f every 200 ms until it returns nil, returns a stopPolling, or
// timeout has passed; it returns f's last error. The docker and compose
// commands it drives take tens of milliseconds each, so a tighter loop
// would only load the machine.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop stopPolling
		if errors.As(err, &stop) {
			return stop.err
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
