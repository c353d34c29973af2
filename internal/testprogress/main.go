// Command testprogress runs `go test -json` and prints its progress as it
// goes, so that a long `make test` never leaves a silent terminal:
//
//	go run ./internal/testprogress [-long 3s] [-quiet 15s] -- [go test flags] [packages]
//
// It prints a line per package as it finishes (ok, FAIL or no test files,
// with its time and test counts), a line per skipped test with the reason
// it gave, and, for a package that has been running longer than -long, a
// line per top-level test as it finishes. A failing test's whole output is
// printed as soon as it fails, and a package that fails outside any test
// (a build error, a panic, a timeout, TestMain) has its own output printed.
// When nothing has been printed for -quiet, a line names what is still
// running. The exit status is go test's.
//
// `go test` with several packages buffers each package's plain output until
// the package ends; with -json it streams every event as it happens
// (cmd/go/internal/test: streamAndCacheOutput), which is what makes the
// per-test lines possible.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testprogress", flag.ContinueOnError)
	fs.SetOutput(stderr)
	long := fs.Duration("long", 3*time.Second, "print a line per test for packages running longer than this")
	quiet := fs.Duration("quiet", 15*time.Second, "after this long without a line, say what is still running")
	goTool := fs.String("go", "go", "the go command to run")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: testprogress [flags] -- [go test flags] [packages]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}

	cmd := exec.Command(*goTool, append([]string{"test", "-json"}, fs.Args()...)...)
	// Early errors of the go command (a bad flag, no such package) are plain
	// text on stderr even with -json: pass them through untouched.
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintf(stderr, "testprogress: %v\n", err)
		return 1
	}
	// Ctrl-C reaches go test too (same process group); let it wind down and
	// report, and report what it said.
	signal.Ignore(os.Interrupt)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "testprogress: %v\n", err)
		return 1
	}

	p := newPrinter(stdout, *long, *quiet, modulePrefix())
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case line, ok := <-lines:
			if !ok {
				done = true
				break
			}
			p.line(line, time.Now())
		case now := <-tick.C:
			p.tick(now)
		}
	}
	err = cmd.Wait()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() < 0 {
			fmt.Fprintf(stderr, "testprogress: go test: %v\n", err)
			code = 1
		} else {
			code = ee.ExitCode()
		}
	}
	p.summary(code, time.Now())
	return code
}

// modulePrefix is the main module's path plus a slash, trimmed from package
// names in every line: `go run` records the module it ran in.
func modulePrefix() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Path != "" {
		return bi.Main.Path + "/"
	}
	return ""
}

// event is one line of `go test -json`: a TestEvent (cmd/test2json) or a
// BuildEvent (go help buildjson), told apart by Action.
type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
	ImportPath  string // build-output, build-fail
}

type testState struct {
	started  time.Time       // when it last ran or continued
	output   strings.Builder // its own output and its subtests'
	paused   bool            // a parallel test waiting for its turn
	finished bool
}

type finishedTest struct {
	name, action string
	elapsed      float64
	reason       string
}

type pkgState struct {
	started   time.Time
	long      bool            // has run longer than -long: its tests get lines
	output    strings.Builder // output outside any test
	tests     map[string]*testState
	order     []string       // tests in the order they started
	unprinted []finishedTest // finished before the package became long
	passed    int
	failed    []string
	skipped   int
}

// printer turns the event stream into lines. It is driven by one goroutine
// and takes the time as an argument, so tests can drive it with any clock.
type printer struct {
	w        io.Writer
	long     time.Duration
	quiet    time.Duration
	trim     string
	started  time.Time
	lastLine time.Time
	pkgs     map[string]*pkgState
	build    map[string]*strings.Builder // build output by ImportPath
	failures []string                    // "pkg: TestA, TestB" or "pkg (build failed)"
	npkgs    int
	ntests   int
	nskipped int
}

func newPrinter(w io.Writer, long, quiet time.Duration, trim string) *printer {
	return &printer{w: w, long: long, quiet: quiet, trim: trim,
		pkgs: map[string]*pkgState{}, build: map[string]*strings.Builder{}}
}

func (p *printer) printf(now time.Time, format string, a ...any) {
	fmt.Fprintf(p.w, format+"\n", a...)
	p.lastLine = now
}

func (p *printer) short(pkg string) string { return strings.TrimPrefix(pkg, p.trim) }

// line handles one line of go test's standard output.
func (p *printer) line(line string, now time.Time) {
	if p.started.IsZero() {
		p.started, p.lastLine = now, now
	}
	var ev event
	if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &ev) != nil {
		// Not an event (a test binary writing to the real stdout before
		// test2json framing, say): show it rather than lose it.
		p.printf(now, "%s", line)
		return
	}
	p.handle(ev, now)
}

func (p *printer) handle(ev event, now time.Time) {
	switch ev.Action {
	case "build-output":
		b := p.build[ev.ImportPath]
		if b == nil {
			b = &strings.Builder{}
			p.build[ev.ImportPath] = b
		}
		b.WriteString(ev.Output)
		return
	case "build-fail":
		p.printf(now, "FAIL  build of %s:\n%s", p.short(ev.ImportPath), indent(p.buildOutput(ev.ImportPath)))
		return
	}
	ps := p.pkgs[ev.Package]
	if ps == nil {
		ps = &pkgState{started: now, tests: map[string]*testState{}}
		p.pkgs[ev.Package] = ps
	}
	if ev.Test == "" {
		p.packageEvent(ev, ps, now)
		return
	}
	top, _, sub := strings.Cut(ev.Test, "/")
	ts := ps.tests[top]
	if ts == nil {
		ts = &testState{started: now}
		ps.tests[top] = ts
		ps.order = append(ps.order, top)
	}
	switch ev.Action {
	case "output":
		ts.output.WriteString(ev.Output)
	case "pause":
		ts.paused = !sub
	case "cont":
		if !sub {
			ts.paused, ts.started = false, now
		}
	case "pass", "fail", "skip":
		if sub {
			return // counted and reported with its top-level test
		}
		ts.finished = true
		p.testDone(ev.Package, ps, top, ts, ev, now)
	}
}

func (p *printer) buildOutput(importPath string) string {
	if b := p.build[importPath]; b != nil {
		return b.String()
	}
	return ""
}

func (p *printer) testDone(pkg string, ps *pkgState, name string, ts *testState, ev event, now time.Time) {
	p.ntests++
	ft := finishedTest{name: name, action: ev.Action, elapsed: ev.Elapsed}
	switch ev.Action {
	case "pass":
		ps.passed++
	case "skip":
		ps.skipped++
		p.nskipped++
		ft.reason = skipReason(ts.output.String())
	case "fail":
		ps.failed = append(ps.failed, name)
	}
	switch {
	case ev.Action == "fail":
		p.printTest(now, pkg, ft)
		p.printf(now, "--- output of %s %s:\n%s", p.short(pkg), name, indent(ts.output.String()))
	case ev.Action == "skip" || ps.long:
		p.printTest(now, pkg, ft)
	default:
		ps.unprinted = append(ps.unprinted, ft)
	}
	if ev.Action != "fail" {
		ts.output.Reset() // only a failure's output is ever printed
	}
}

func (p *printer) printTest(now time.Time, pkg string, ft finishedTest) {
	line := fmt.Sprintf("      %-24s %7s  %-4s  %s", p.short(pkg), seconds(ft.elapsed), ft.action, ft.name)
	if ft.reason != "" {
		line += ": " + ft.reason
	}
	p.printf(now, "%s", line)
}

func (p *printer) packageEvent(ev event, ps *pkgState, now time.Time) {
	switch ev.Action {
	case "start":
		ps.started = now
	case "output":
		ps.output.WriteString(ev.Output)
	case "pass", "fail", "skip":
		p.npkgs++
		p.packageDone(ev, ps, now)
		delete(p.pkgs, ev.Package)
	}
}

func (p *printer) packageDone(ev event, ps *pkgState, now time.Time) {
	name := p.short(ev.Package)
	if ev.Action == "skip" || (ev.Action == "pass" && len(ps.tests) == 0 && strings.Contains(ps.output.String(), "[no test files]")) {
		p.printf(now, "%-4s  %-24s %7s  %s", "-", name, "", "no test files")
		return
	}
	if ps.long {
		p.flush(ev.Package, ps, now)
	}
	counts := fmt.Sprintf("%d passed", ps.passed)
	if len(ps.failed) > 0 {
		counts += fmt.Sprintf(", %d failed", len(ps.failed))
	}
	if ps.skipped > 0 {
		counts += fmt.Sprintf(", %d skipped", ps.skipped)
	}
	if len(ps.tests) == 0 {
		counts = "no tests to run" // -run matched none here
	}
	if ev.Action == "pass" {
		p.printf(now, "%-4s  %-24s %7s  %s", "ok", name, seconds(ev.Elapsed), counts)
		return
	}
	// A failure outside the tests that reported one: a build error, a
	// panic or timeout that cut a test short, TestMain, a leak check.
	var unfinished []string
	for _, t := range ps.order {
		if ts := ps.tests[t]; !ts.finished {
			unfinished = append(unfinished, t)
			p.printf(now, "--- output of %s %s (did not finish):\n%s", name, t, indent(ts.output.String()))
		}
	}
	if ev.FailedBuild != "" {
		counts = "build failed"
		if _, shown := p.build[ev.FailedBuild]; !shown {
			p.printf(now, "--- output of %s:\n%s", name, indent(ps.output.String()))
		}
	} else if len(ps.failed) == 0 || len(unfinished) > 0 {
		p.printf(now, "--- output of %s outside its tests:\n%s", name, indent(ps.output.String()))
	}
	p.printf(now, "%-4s  %-24s %7s  %s", "FAIL", name, seconds(ev.Elapsed), counts)
	what := name
	switch {
	case ev.FailedBuild != "":
		what += " (build failed)"
	case len(ps.failed)+len(unfinished) > 0:
		what += ": " + strings.Join(append(append([]string(nil), ps.failed...), unfinished...), ", ")
	}
	p.failures = append(p.failures, what)
}

// flush prints the tests a package finished before it became long.
func (p *printer) flush(pkg string, ps *pkgState, now time.Time) {
	for _, ft := range ps.unprinted {
		p.printTest(now, pkg, ft)
	}
	ps.unprinted = nil
}

// tick promotes packages that have run longer than -long, and says what is
// running after -quiet without a line.
func (p *printer) tick(now time.Time) {
	if p.started.IsZero() {
		p.started, p.lastLine = now, now
	}
	names := make([]string, 0, len(p.pkgs))
	for name := range p.pkgs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ps := p.pkgs[name]
		if !ps.long && now.Sub(ps.started) >= p.long {
			ps.long = true
			p.flush(name, ps, now)
		}
	}
	if now.Sub(p.lastLine) < p.quiet {
		return
	}
	var running []string
	for _, name := range names {
		ps := p.pkgs[name]
		for _, t := range ps.order {
			if ts := ps.tests[t]; !ts.finished && !ts.paused {
				running = append(running, fmt.Sprintf("%s %s (%s)", p.short(name), t, now.Sub(ts.started).Round(time.Second)))
			}
		}
	}
	if len(running) > maxRunning {
		running = append(running[:maxRunning], fmt.Sprintf("and %d more", len(running)-maxRunning))
	}
	if len(running) == 0 {
		// Between events go test is compiling, or a package's binary is
		// starting up or in TestMain.
		running = append(running, "compiling or starting test binaries")
	}
	p.printf(now, "      %-24s %7s  %s", "...", seconds(now.Sub(p.started).Seconds()), "running: "+strings.Join(running, ", "))
}

// summary is the last line: what ran, and what failed.
func (p *printer) summary(code int, now time.Time) {
	took := seconds(now.Sub(p.started).Seconds())
	if p.started.IsZero() {
		took = "0.0s"
	}
	if code == 0 && len(p.failures) == 0 {
		p.printf(now, "PASS  %d packages, %d tests (%d skipped) in %s", p.npkgs, p.ntests, p.nskipped, took)
		return
	}
	what := strings.Join(p.failures, "; ")
	if what == "" {
		what = fmt.Sprintf("go test exited with status %d", code)
	}
	p.printf(now, "FAIL  %s (in %s)", what, took)
}

// skipReason is the message a skipped test gave: the last line of its
// output, without the "file.go:12: " that t.Skip puts in front.
func skipReason(out string) string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "--- SKIP") || strings.HasPrefix(l, "=== ") {
			continue
		}
		if file, msg, ok := strings.Cut(l, ": "); ok && strings.Contains(file, ".go:") && !strings.Contains(file, " ") {
			return msg
		}
		return l
	}
	return ""
}

// maxRunning keeps a "running:" line to one terminal line or so.
const maxRunning = 4

func seconds(s float64) string { return fmt.Sprintf("%.1fs", s) }

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
