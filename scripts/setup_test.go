// Package scripts holds the tests of the shell scripts beside them.
package scripts

import (
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/rawlb/rawlb/internal/netlab"
	"github.com/rawlb/rawlb/internal/testenv"
)

const reservedPorts = "/proc/sys/net/ipv4/ip_local_reserved_ports"

const usageLine = "usage: setup.sh install|remove <srcIP> [port=20000] [natRange=40000-59999]"

// TestSetupBadArguments needs no privilege: every argument is validated
// before the script touches iptables or the sysctl.
func TestSetupBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"install"},
		{"frobnicate", "198.18.0.2"},
		{"install", "198.18.0"},
		{"install", "198.18.0.256"},
		{"install", "198.18.0.2/24"},
		{"install", "2001:db8::1"},
		{"install", "198.18.0.02"},
		{"install", "198.18.0.2", "0"},
		{"install", "198.18.0.2", "65536"},
		{"install", "198.18.0.2", "http"},
		{"install", "198.18.0.2", "-1"},
		{"install", "198.18.0.2", "20000", "40000"},
		{"install", "198.18.0.2", "20000", "50000-40000"},
		{"install", "198.18.0.2", "20000", "0-100"},
		{"install", "198.18.0.2", "20000", "40000-70000"},
		{"install", "198.18.0.2", "45000", "40000-59999"},
		{"remove", "198.18.0.2", "20000", "40000-59999", "extra"},
	} {
		stateDir := t.TempDir()
		cmd := exec.Command("bash", append([]string{"setup.sh"}, args...)...)
		cmd.Env = append(os.Environ(), "RAWLB_STATE_DIR="+stateDir, "IPTABLES=/nonexistent/iptables")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("setup.sh %q: %v, want exit status 2\n%s", args, err, out)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if lines[0] != usageLine {
			t.Errorf("setup.sh %q: first line %q, want the usage line", args, lines[0])
		}
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "error: ") {
			t.Errorf("setup.sh %q: output %q, want the usage line and one error line", args, out)
		}
		if entries, _ := os.ReadDir(stateDir); len(entries) != 0 {
			t.Errorf("setup.sh %q wrote state despite bad arguments", args)
		}
	}

	out, err := exec.Command("bash", "setup.sh", "--help").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != usageLine {
		t.Errorf("setup.sh --help: %v, %q; want exit 0 and the usage line", err, out)
	}
}

// TestSetupInstallRemove runs install twice and remove twice in a throwaway
// namespace that already has unrelated rules and reserved ports, and
// compares the whole iptables and sysctl state at each step.
func TestSetupInstallRemove(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	stateDir := t.TempDir()

	// Someone else's rules in both tables the script edits, and reserved
	// ports inside and outside the NAT range: all must survive.
	nsRun(t, ns, "", "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-s", "198.18.1.1", "-j", "ACCEPT")
	nsRun(t, ns, "", "iptables", "-w", "-A", "OUTPUT", "-d", "198.18.1.1", "-p", "tcp", "--dport", "40005", "-j", "ACCEPT")
	nsRun(t, ns, "", "sh", "-c", "echo 1000,40000-40010,60000 > "+reservedPorts)
	before := snapshot(t, ns)

	setup := func(args ...string) {
		t.Helper()
		nsRun(t, ns, stateDir, append([]string{"bash", "setup.sh"}, args...)...)
	}

	setup("install", "198.18.0.2")
	installed := snapshot(t, ns)
	t.Logf("after install:\n%s", installed)
	comment := `-m comment --comment "rawlb 198.18.0.2:20000" -j DROP`
	for _, rule := range []string{
		"-A PREROUTING -d 198.18.0.2/32 -p tcp -m tcp --dport 20000 " + comment,
		"-A PREROUTING -d 198.18.0.2/32 -p tcp -m tcp --dport 40000:59999 " + comment,
		"-A OUTPUT -s 198.18.0.2/32 -p tcp -m tcp --sport 20000 --tcp-flags RST RST " + comment,
		"-A OUTPUT -s 198.18.0.2/32 -p tcp -m tcp --sport 40000:59999 --tcp-flags RST RST " + comment,
	} {
		if n := strings.Count(installed, rule+"\n"); n != 1 {
			t.Errorf("rule %q appears %d times after install, want once", rule, n)
		}
	}
	if n := strings.Count(installed, "rawlb 198.18.0.2:20000"); n != 4 {
		t.Errorf("%d rules tagged rawlb 198.18.0.2:20000, want 4", n)
	}
	if !strings.Contains(installed, "reserved: 1000,40000-60000\n") {
		t.Errorf("reserved ports after install not 1000,40000-60000:\n%s", installed)
	}
	if !strings.Contains(installed, "lo accept_local: 1\nlo route_localnet: 1\n") {
		t.Errorf("lo's accept_local and route_localnet not both on after install:\n%s", installed)
	}

	setup("install", "198.18.0.2")
	if again := snapshot(t, ns); again != installed {
		t.Errorf("second install changed the state:\nfirst:\n%s\nsecond:\n%s", installed, again)
	}

	setup("remove", "198.18.0.2")
	if after := snapshot(t, ns); after != before {
		t.Errorf("remove did not restore the state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	setup("remove", "198.18.0.2")
	if after := snapshot(t, ns); after != before {
		t.Errorf("second remove changed the state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if entries, _ := os.ReadDir(stateDir); len(entries) != 0 {
		t.Errorf("remove left state files behind: %v", entries)
	}
}

// TestSetupCustomPortAndRange checks that the optional arguments reach the
// rules and the sysctl, and that two instances on different ports can be
// installed and removed independently.
func TestSetupCustomPortAndRange(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := newNetNS(t)
	stateDir := t.TempDir()
	nsRun(t, ns, "", "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-s", "198.18.1.1", "-j", "ACCEPT")
	nsRun(t, ns, "", "iptables", "-w", "-A", "OUTPUT", "-d", "198.18.1.1", "-j", "ACCEPT")
	before := snapshot(t, ns)

	nsRun(t, ns, stateDir, "bash", "setup.sh", "install", "198.18.0.2", "8080", "30000-30999")
	nsRun(t, ns, stateDir, "bash", "setup.sh", "install", "198.18.0.2", "8081", "31000-31999")
	both := snapshot(t, ns)
	for _, want := range []string{"--dport 8080 ", "--dport 30000:30999 ", "--sport 8081 ", "--sport 31000:31999 ", "reserved: 30000-31999\n"} {
		if !strings.Contains(both, want) {
			t.Errorf("state with both installed lacks %q:\n%s", want, both)
		}
	}
	nsRun(t, ns, stateDir, "bash", "setup.sh", "remove", "198.18.0.2", "8080", "30000-30999")
	one := snapshot(t, ns)
	if strings.Contains(one, "rawlb 198.18.0.2:8080") || !strings.Contains(one, "reserved: 31000-31999\n") || strings.Count(one, "rawlb 198.18.0.2:8081") != 4 {
		t.Errorf("removing 8080 did not leave exactly 8081's rules and ports:\n%s", one)
	}
	nsRun(t, ns, stateDir, "bash", "setup.sh", "remove", "198.18.0.2", "8081", "31000-31999")
	if after := snapshot(t, ns); after != before {
		t.Errorf("remove did not restore the state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// snapshot returns the namespace's iptables-save output without its
// timestamped comment lines and packet counters, plus the reserved ports.
func snapshot(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(nsRun(t, ns, "", "iptables-save"), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b.WriteString(counters.ReplaceAllString(line, "[]") + "\n")
	}
	b.WriteString("reserved: " + nsRun(t, ns, "", "cat", reservedPorts))
	for _, name := range []string{"accept_local", "route_localnet"} {
		b.WriteString("lo " + name + ": " + nsRun(t, ns, "", "cat", "/proc/sys/net/ipv4/conf/lo/"+name))
	}
	return b.String()
}

// newNetNS creates a throwaway network namespace, deleted when the test
// ends, pass or fail.
func newNetNS(t *testing.T) string { return netlab.NewNetNS(t, "rlbsh") }

// nsRun runs a command in namespace ns, with RAWLB_STATE_DIR set to
// stateDir when it is not empty, and returns its standard output.
func nsRun(t *testing.T, ns, stateDir string, args ...string) string {
	t.Helper()
	var env []string
	if stateDir != "" {
		env = []string{"RAWLB_STATE_DIR=" + stateDir}
	}
	return netlab.RunIn(t, ns, env, args...)
}
