package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The programs the deployment files run, by the name of their cmd/ directory.
const (
	progRawlb      = "rawlb"
	progChatserver = "chatserver"
	progChatclient = "chatclient"
)

// repoRoot is the repository root; go test runs in deploy/.
var repoRoot = func() string {
	abs, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return abs
}()

func repoPath(elem ...string) string {
	return filepath.Join(append([]string{repoRoot}, elem...)...)
}

func readRepoFile(t *testing.T, elem ...string) string {
	t.Helper()
	b, err := os.ReadFile(repoPath(elem...))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rawlbMissing reports whether cmd/rawlb has no main.go yet. The balancer is
// written in parallel with these files; until it exists, the checks that
// need its real flags skip, and nothing else does.
func rawlbMissing() bool {
	_, err := os.Stat(repoPath("cmd", "rawlb", "main.go"))
	return errors.Is(err, os.ErrNotExist)
}

func requireRawlb(t *testing.T) {
	t.Helper()
	if rawlbMissing() {
		t.Skip("cmd/rawlb not built yet")
	}
}

// builtDir holds the binaries built once for all tests of the package.
var builtDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rawlb-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	builtDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// slowCheck skips t unless RAWLB_DEPLOY_CHECKS=1, which `make
// check-deploy` (and so CI) sets: the checks that build programs or run make
// for real take minutes on a cold build cache (three platforms, three
// commands each), too long for `make test`. A test may call it after its
// quick checks: those still run in `make test`.
func slowCheck(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("RAWLB_DEPLOY_CHECKS") != "1" {
		t.Skipf("%s: slow, so only make check-deploy runs it (RAWLB_DEPLOY_CHECKS=1)", what)
	}
}

// buildProgram builds ./cmd/<name> once and returns the binary's path.
func buildProgram(t *testing.T, name string) string {
	t.Helper()
	slowCheck(t, "builds ./cmd/"+name)
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[name]; ok {
		return bin
	}
	bin := filepath.Join(builtDir, name)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	built[name] = bin
	return bin
}

// flagInfo is one flag as the flag package's -h output describes it.
type flagInfo struct {
	takesValue bool   // "-name type": needs a value; "-name" alone is a bool
	def        string // the "(default ...)" text, unquoted; "" if none shown
}

// flagSet maps flag names (without the dash) to what -h says of them.
type flagSet map[string]flagInfo

// helpFlags runs bin -h and parses the flags it lists. Programs that use
// flag.ExitOnError exit 0 for -h, and ones with their own handling may exit
// 2; both are fine, as long as a usage is printed.
func helpFlags(t *testing.T, bin string) flagSet {
	t.Helper()
	out, err := exec.Command(bin, "-h").CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 2) {
		t.Fatalf("%s -h: %v\n%s", bin, err, out)
	}
	flags, perr := parseHelp(string(out))
	if perr != nil {
		t.Fatalf("%s -h: %v\n%s", bin, perr, out)
	}
	return flags
}

var (
	// "  -name", "  -name type", and for one-letter bools "  -x\tusage".
	helpFlagRE = regexp.MustCompile(`^  -([^\s=]+)(?: ([^\s]+))?(?:\t.*)?$`)
	helpDefRE  = regexp.MustCompile(`\(default (.*)\)$`)
)

// parseHelp parses flag.PrintDefaults output.
func parseHelp(out string) (flagSet, error) {
	flags := flagSet{}
	var last string
	for _, line := range strings.Split(out, "\n") {
		if m := helpFlagRE.FindStringSubmatch(line); m != nil {
			last = m[1]
			flags[last] = flagInfo{takesValue: m[2] != ""}
			line = strings.TrimPrefix(line, "  -"+m[1]+" "+m[2])
		} else if !strings.HasPrefix(line, "    \t") {
			continue
		}
		if m := helpDefRE.FindStringSubmatch(line); m != nil && last != "" {
			def := m[1]
			if u, err := strconv.Unquote(def); err == nil {
				def = u
			}
			fi := flags[last]
			fi.def = def
			flags[last] = fi
		}
	}
	if len(flags) == 0 {
		return nil, errors.New("no flags found in the -h output")
	}
	return flags, nil
}

// parsedArgs is a command line split the way the flag package splits it.
type parsedArgs struct {
	flags      map[string]string // bool flags set without a value map to "true"
	positional []string
}

// parseArgs splits args (without the program name) by the flag package's
// rules and fails on a flag the program does not have or a missing value.
func parseArgs(flags flagSet, args []string) (parsedArgs, error) {
	p := parsedArgs{flags: map[string]string{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			p.positional = append(p.positional, args[i+1:]...)
			return p, nil
		}
		if len(a) < 2 || a[0] != '-' {
			p.positional = append(p.positional, args[i:]...)
			return p, nil
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		value, hasValue := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, value, hasValue = k, v, true
		}
		fi, ok := flags[name]
		if !ok {
			return p, fmt.Errorf("flag -%s is not a flag of the program", name)
		}
		switch {
		case hasValue:
		case !fi.takesValue:
			value = "true"
		case i+1 < len(args):
			i++
			value = args[i]
		default:
			return p, fmt.Errorf("flag -%s needs a value", name)
		}
		p.flags[name] = value
	}
	return p, nil
}

// value returns the flag's value on the command line or else its default.
func (p parsedArgs) value(flags flagSet, name string) string {
	if v, ok := p.flags[name]; ok {
		return v
	}
	return flags[name].def
}

// expectedRawlbFlags are the flags the lead is giving rawlb (value or bool).
// Until cmd/rawlb exists the files are checked against this list, and once it
// exists TestRawlbHasExpectedFlags holds the binary to it.
var expectedRawlbFlags = flagSet{
	"port":         {takesValue: true, def: "20000"},
	"iface":        {takesValue: true},
	"algo":         {takesValue: true},
	"nat-ports":    {takesValue: true, def: "40000-59999"},
	"idle-timeout": {takesValue: true},
	"max-flows":    {takesValue: true},
	"hc-interval":  {takesValue: true},
	"hc-timeout":   {takesValue: true},
	"hc-fall":      {takesValue: true},
	"hc-rise":      {takesValue: true},
	"metrics":      {takesValue: true},
	"firewall":     {takesValue: false, def: "true"},
	"log-level":    {takesValue: true},
	"version":      {takesValue: false},
}

// rawlbFlags returns rawlb's real flags if cmd/rawlb exists, else the
// expected ones.
func rawlbFlags(t *testing.T) flagSet {
	t.Helper()
	if rawlbMissing() {
		t.Log("cmd/rawlb not built yet: checking against the expected rawlb flags")
		return expectedRawlbFlags
	}
	return helpFlags(t, buildProgram(t, progRawlb))
}

// makeEnv is the environment for running make from a test: without the
// variables a parent make (`make test`) exports, which would pass its own
// command-line overrides and flags down to ours.
func makeEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		for _, k := range []string{"MAKEFLAGS=", "MFLAGS=", "MAKELEVEL=", "MAKEOVERRIDES=", "GNUMAKEFLAGS="} {
			if strings.HasPrefix(kv, k) {
				return true
			}
		}
		return false
	})
}

// runMake runs make in the repository root and returns its stdout.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory"}, args...)...)
	cmd.Dir = repoRoot
	cmd.Env = makeEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("make %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// makeVar asks make itself for the expanded value of a Makefile variable,
// with the given command-line overrides, so that the tests read the
// Makefile's flags instead of repeating them.
func makeVar(t *testing.T, name string, overrides ...string) string {
	t.Helper()
	args := append([]string{"-s", "--eval", "print-make-var: ; @: $(info $(" + name + "))", "print-make-var"}, overrides...)
	return strings.TrimSuffix(runMake(t, args...), "\n")
}

// shellWords splits a simple shell command line: words separated by blanks,
// with single and double quotes, and no expansion. It is enough for the
// commands in the Dockerfile, the Makefile's dry runs and the compose file.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// goBuildFlags extracts from a shell command the environment assignments in
// front of `go build` and the build flags that matter for the binaries:
// -trimpath, -ldflags, -tags and -buildmode. It returns ok=false if the
// command runs no go build.
func goBuildFlags(command string) (env map[string]string, flags map[string]string, ok bool, err error) {
	words, err := shellWords(command)
	if err != nil {
		return nil, nil, false, err
	}
	env, flags = map[string]string{}, map[string]string{}
	for i := 0; i+1 < len(words); i++ {
		if !(filepath.Base(words[i]) == "go" && words[i+1] == "build") {
			continue
		}
		for j := i - 1; j >= 0; j-- {
			k, v, isAssign := strings.Cut(words[j], "=")
			if !isAssign || strings.HasPrefix(k, "-") {
				break
			}
			env[k] = v
		}
		rest := words[i+2:]
		for j := 0; j < len(rest); j++ {
			w := rest[j]
			if !strings.HasPrefix(w, "-") {
				continue
			}
			name, value, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
			switch name {
			case "trimpath":
				flags[name] = "true"
				if hasValue {
					flags[name] = value
				}
			case "ldflags", "tags", "buildmode", "o":
				if !hasValue && j+1 < len(rest) {
					j++
					value = rest[j]
				}
				if name != "o" {
					flags[name] = value
				}
			}
		}
		return env, flags, true, nil
	}
	return nil, nil, false, nil
}
