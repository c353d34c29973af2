package deploy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// unitFile maps "Section.Key" to the values of its lines, in order (systemd
// keys may repeat).
type unitFile map[string][]string

// parseUnit reads a systemd unit: [Section] headers, Key=Value lines,
// comments, and lines continued with a backslash.
func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	var pending string
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is neither a section nor Key=Value", i+1, raw)
		}
		key := section + "." + strings.TrimSpace(k)
		u[key] = append(u[key], strings.TrimSpace(v))
	}
	return u, nil
}

// get returns the last value of a key, which is the one systemd uses for
// single-valued settings.
func (u unitFile) get(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// words returns the space-separated words of every line of a list key.
func (u unitFile) words(key string) []string {
	var w []string
	for _, v := range u[key] {
		if v == "" {
			w = nil // an empty assignment resets a list
			continue
		}
		w = append(w, strings.Fields(v)...)
	}
	return w
}

// unitBool parses systemd's booleans.
func unitBool(v string) bool {
	switch strings.ToLower(v) {
	case "1", "yes", "y", "true", "t", "on":
		return true
	}
	return false
}

// parseEnvFile reads an EnvironmentFile: KEY=value lines, comments, and
// values in single or double quotes.
func parseEnvFile(text string) (map[string]string, error) {
	env := map[string]string{}
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not KEY=value", i+1, raw)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') {
			if v[len(v)-1] != v[0] {
				return nil, fmt.Errorf("line %d: unterminated quote", i+1)
			}
			v = v[1 : len(v)-1]
		}
		env[strings.TrimSpace(k)] = v
	}
	return env, nil
}

func loadUnit(t *testing.T) unitFile {
	t.Helper()
	u, err := parseUnit(readRepoFile(t, "deploy", "systemd", "rawlb.service"))
	if err != nil {
		t.Fatalf("rawlb.service: %v", err)
	}
	return u
}

func loadEnvFile(t *testing.T) map[string]string {
	t.Helper()
	env, err := parseEnvFile(readRepoFile(t, "deploy", "systemd", "rawlb.env"))
	if err != nil {
		t.Fatalf("rawlb.env: %v", err)
	}
	return env
}

// commandLineEnv is the example environment file with its commented-out
// command-line settings ("#RAWLB_...=" lines) taken in, as the file tells
// an admin to do for the command-line way. They come after the
// configuration-file settings, so they replace them.
func commandLineEnv(t *testing.T) map[string]string {
	t.Helper()
	var b strings.Builder
	n := 0
	for _, line := range strings.Split(readRepoFile(t, "deploy", "systemd", "rawlb.env"), "\n") {
		if rest, ok := strings.CutPrefix(line, "#RAWLB_"); ok {
			line = "RAWLB_" + rest
			n++
		}
		b.WriteString(line + "\n")
	}
	if n == 0 {
		t.Fatal("rawlb.env shows no commented-out command-line settings (#RAWLB_...=)")
	}
	env, err := parseEnvFile(b.String())
	if err != nil {
		t.Fatalf("rawlb.env with its command-line settings: %v", err)
	}
	return env
}

// execArgs expands ExecStart's arguments with env the way systemd does: an
// unbraced $VAR is split at whitespace (an empty one is no argument at all)
// and ${VAR} is passed whole.
func execArgs(t *testing.T, u unitFile, env map[string]string) []string {
	t.Helper()
	words, err := shellWords(u.get("Service.ExecStart"))
	if err != nil || len(words) == 0 {
		t.Fatalf("ExecStart %q: %v", u.get("Service.ExecStart"), err)
	}
	args := []string{}
	for _, w := range words[1:] {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			args = append(args, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			args = append(args, strings.Fields(env[w[1:]])...)
		default:
			args = append(args, w)
		}
	}
	return args
}

// configPath is where the unit, with the example environment file, has
// rawlb read its configuration: the path README.md and cmd/rawlb document.
const configPath = "/etc/rawlb/rawlb.yaml"

// The unit runs rawlb as an unprivileged user with exactly the two
// capabilities it needs, sandboxed in ways that leave AF_PACKET, netlink and
// the reserved-ports sysctl working.
func TestSystemdUnit(t *testing.T) {
	u := loadUnit(t)
	if !unitBool(u.get("Service.DynamicUser")) {
		if user := u.get("Service.User"); user == "" || user == "root" || user == "0" {
			t.Errorf("the service runs as %q; want DynamicUser=yes or an unprivileged User=", user)
		}
	}
	wantCaps := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW"}
	for _, key := range []string{"Service.AmbientCapabilities", "Service.CapabilityBoundingSet"} {
		caps := u.words(key)
		slices.Sort(caps)
		if !slices.Equal(caps, wantCaps) {
			t.Errorf("%s = %v, want exactly %v", key, caps, wantCaps)
		}
	}
	for key, want := range map[string]string{
		"Service.NoNewPrivileges": "yes",
		"Service.Restart":         "on-failure",
		"Service.EnvironmentFile": "/etc/default/rawlb",
	} {
		if got := u.get(key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	// Reload and stop map onto rawlb's signals (cmd/rawlb): HUP re-reads
	// the file, INT stops for good (rules and reserved ports removed), TERM
	// hands the flows to the next process, which only a restart starts.
	for key, want := range map[string]string{
		"Service.ExecReload":        "/bin/kill -HUP $MAINPID",
		"Service.KillSignal":        "SIGINT",
		"Service.RestartKillSignal": "SIGTERM",
		// The hand-off's state file lives in rawlb's default state_dir,
		// /run/rawlb, which ProtectSystem=strict would leave read-only,
		// and must outlive the old process for the new one to read it.
		"Service.RuntimeDirectoryPreserve": "restart",
	} {
		if got := u.get(key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if len(u["Service.ExecReload"]) != 1 {
		t.Errorf("ExecReload has %d lines %q, want the one kill -HUP", len(u["Service.ExecReload"]), u["Service.ExecReload"])
	}
	if !slices.Contains(u.words("Service.RuntimeDirectory"), "rawlb") {
		t.Errorf("RuntimeDirectory %v lacks rawlb: /run/rawlb, the default state_dir, is then read-only", u.words("Service.RuntimeDirectory"))
	}
	// With the example environment file the unit runs rawlb on the
	// configuration file, and nothing else; the file's commented-out lines
	// make the command-line way.
	if args := execArgs(t, u, loadEnvFile(t)); !slices.Equal(args, []string{"-config", configPath}) {
		t.Errorf("with rawlb.env, the unit runs rawlb %q, want -config %s", args, configPath)
	}
	if args := execArgs(t, u, commandLineEnv(t)); slices.Contains(args, "-config") || len(args) < 3 {
		t.Errorf("with rawlb.env's command-line settings, the unit runs rawlb %q, want flags, srcIP and backends", args)
	}
	if unitBool(u.get("Service.PrivateNetwork")) {
		t.Error("PrivateNetwork=yes would leave rawlb only a loopback device")
	}
	if unitBool(u.get("Service.PrivateUsers")) {
		t.Error("PrivateUsers=yes would confine CAP_NET_ADMIN and CAP_NET_RAW to a user namespace that does not own the host's network")
	}
	if u.get("Service.ProcSubset") == "pid" {
		t.Error("ProcSubset=pid hides /proc/sys, where rawlb reserves its NAT ports")
	}
	families := u.words("Service.RestrictAddressFamilies")
	if len(families) > 0 && strings.HasPrefix(families[0], "~") {
		t.Errorf("RestrictAddressFamilies is a deny list %v; want an allow list", families)
	}
	for _, fam := range []string{"AF_PACKET", "AF_NETLINK", "AF_INET", "AF_UNIX"} {
		if !slices.Contains(families, fam) {
			t.Errorf("RestrictAddressFamilies %v lacks %s", families, fam)
		}
	}
	if unitBool(u.get("Service.ProtectKernelTunables")) &&
		!slices.Contains(u.words("Service.ReadWritePaths"), "/proc/sys/net/ipv4/ip_local_reserved_ports") {
		t.Error("ProtectKernelTunables=yes makes /proc/sys read-only; rawlb then needs ReadWritePaths=/proc/sys/net/ipv4/ip_local_reserved_ports")
	}

	// ExecStart runs rawlb by absolute path, with arguments that all come
	// from the environment file.
	exec, err := shellWords(u.get("Service.ExecStart"))
	if err != nil || len(exec) < 2 {
		t.Fatalf("ExecStart %q: want the binary and its arguments (%v)", u.get("Service.ExecStart"), err)
	}
	if !filepath.IsAbs(exec[0]) || filepath.Base(exec[0]) != progRawlb {
		t.Errorf("ExecStart runs %q, want an absolute path to rawlb", exec[0])
	}
	env := loadEnvFile(t)
	for _, arg := range exec[1:] {
		name, ok := strings.CutPrefix(arg, "$")
		if !ok {
			continue
		}
		name = strings.Trim(name, "{}")
		if _, ok := env[name]; !ok {
			t.Errorf("ExecStart uses $%s, which rawlb.env does not set", name)
		}
	}
}

// ExecStart with the example environment file makes a command line the
// real rawlb accepts with a configuration file, and with the file's
// command-line settings a valid one-service command line: real flags, an
// IPv4 source address, host:port backends.
func TestSystemdCommandLine(t *testing.T) {
	u := loadUnit(t)
	flags := rawlbFlags(t)

	args := execArgs(t, u, loadEnvFile(t))
	p, err := parseArgs(flags, args)
	if err != nil {
		t.Fatalf("rawlb %q: %v", args, err)
	}
	if p.flags["config"] != configPath || len(p.positional) != 0 {
		t.Errorf("rawlb %q: want -config %s and no srcIP or backends", args, configPath)
	}
	if !rawlbMissing() {
		// -check-config reads its file through the same checks as -config
		// (flags the file owns refused, no positional arguments) and takes
		// its place, so the unit's path need not exist here.
		cmd := exec.Command(buildProgram(t, progRawlb), append([]string{"-check-config", repoPath("config", "testdata", "example.yaml")}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), ": ok (") {
			t.Errorf("rawlb -check-config example.yaml %q: %v\n%s", args, err, out)
		}
	}

	args = execArgs(t, u, commandLineEnv(t))
	p, err = parseArgs(flags, args)
	if err != nil {
		t.Fatalf("rawlb %q: %v", args, err)
	}
	if len(p.positional) < 2 {
		t.Fatalf("rawlb %q: want <srcIP> <backend>..., got %q", args, p.positional)
	}
	if a, err := netip.ParseAddr(p.positional[0]); err != nil || !a.Is4() {
		t.Errorf("srcIP %q is not an IPv4 address", p.positional[0])
	}
	for _, b := range p.positional[1:] {
		host, port, err := net.SplitHostPort(b)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			t.Errorf("backend %q is not host:port", b)
		}
	}
	if np := p.value(flags, "nat-ports"); np != "" {
		if _, _, err := parsePortRange(np); err != nil {
			t.Errorf("-nat-ports: %v", err)
		}
	}
}

// systemd itself accepts the unit: no unknown key, no value it would ignore.
func TestSystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	// verify wants ExecStart's binary and the environment file to exist:
	// point them at a built program and at the example file.
	dir := t.TempDir()
	unit := readRepoFile(t, "deploy", "systemd", "rawlb.service")
	unit = strings.Replace(unit, "ExecStart=/usr/local/bin/rawlb ", "ExecStart="+buildProgram(t, progChatserver)+" ", 1)
	unit = strings.Replace(unit, "EnvironmentFile=/etc/default/rawlb", "EnvironmentFile="+repoPath("deploy", "systemd", "rawlb.env"), 1)
	path := filepath.Join(dir, "rawlb.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	complaints := strings.TrimSpace(string(out))
	if v := systemdVersion(t, analyze); v < 244 {
		// RestartKillSignal= came in systemd 244; an older one warns and
		// ignores it (a restart is then a clean stop), which the unit's
		// comment says. Nothing else may be unknown to it.
		t.Logf("systemd %d predates RestartKillSignal=: its warning about it is expected", v)
		var rest []string
		for _, l := range strings.Split(complaints, "\n") {
			if !strings.Contains(l, "RestartKillSignal") {
				rest = append(rest, l)
			}
		}
		complaints = strings.TrimSpace(strings.Join(rest, "\n"))
	}
	if err != nil || complaints != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// systemdVersion is the version systemd-analyze reports ("systemd 252
// (252.38-1~deb12u1)" is 252).
func systemdVersion(t *testing.T, analyze string) int {
	t.Helper()
	out, err := exec.Command(analyze, "--version").Output()
	if err != nil {
		t.Fatalf("systemd-analyze --version: %v", err)
	}
	var v int
	if _, err := fmt.Sscanf(string(out), "systemd %d", &v); err != nil {
		t.Fatalf("systemd-analyze --version: %q: %v", out, err)
	}
	return v
}

func TestParseUnit(t *testing.T) {
	u, err := parseUnit("# c\n[Service]\nA=1\nA=2\nB=x \\\n  y\n; c\n[Install]\nC=\n")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(u["Service.A"], []string{"1", "2"}) || u.get("Service.B") != "x  y" || u.get("Install.C") != "" {
		t.Errorf("parsed %v", u)
	}
	if _, err := parseUnit("A=1\n"); err == nil {
		t.Error("a key outside a section parsed")
	}
	env, err := parseEnvFile("# c\nA=1\nB=\"x y\"\nC='z'\n")
	if err != nil || env["A"] != "1" || env["B"] != "x y" || env["C"] != "z" {
		t.Errorf("parseEnvFile = %v, %v", env, err)
	}
}
