package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const mod = "github.com/rawlb/rawlb/"

// feed drives a printer with events at the given offsets from t0 and ticks
// every 500 ms in between, as run does.
type feed struct {
	t   *testing.T
	p   *printer
	out *bytes.Buffer
	t0  time.Time
	now time.Time
}

func newFeed(t *testing.T) *feed {
	out := &bytes.Buffer{}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &feed{t: t, p: newPrinter(out, 3*time.Second, 15*time.Second, mod), out: out, t0: t0, now: t0}
}

func (f *feed) at(d time.Duration) *feed {
	for next := f.now.Add(500 * time.Millisecond); !next.After(f.t0.Add(d)); next = next.Add(500 * time.Millisecond) {
		f.now = next
		f.p.tick(f.now)
	}
	f.now = f.t0.Add(d)
	return f
}

func (f *feed) ev(e event) *feed {
	b, err := json.Marshal(e)
	if err != nil {
		f.t.Fatal(err)
	}
	f.p.line(string(b), f.now)
	return f
}

func (f *feed) lines() []string {
	return strings.Split(strings.TrimRight(f.out.String(), "\n"), "\n")
}

// test emits a top-level test's run, output and end.
func (f *feed) test(pkg, name, action string, elapsed float64, output ...string) *feed {
	f.ev(event{Action: "run", Package: pkg, Test: name})
	for _, o := range output {
		f.ev(event{Action: "output", Package: pkg, Test: name, Output: o})
	}
	return f.ev(event{Action: action, Package: pkg, Test: name, Elapsed: elapsed})
}

var spaces = regexp.MustCompile(`\s+`)

// squeeze makes lines comparable without caring about column widths.
func squeeze(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = spaces.ReplaceAllString(strings.TrimSpace(l), " ")
	}
	return out
}

func wantLines(t *testing.T, got []string, want ...string) {
	t.Helper()
	g := squeeze(got)
	if strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(want, "\n"))
	}
}

func TestQuickPackageIsOneLine(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "packet"
	f.ev(event{Action: "start", Package: pkg})
	f.test(pkg, "TestA", "pass", 0.01, "=== RUN   TestA\n", "--- PASS: TestA (0.01s)\n")
	f.test(pkg, "TestB", "pass", 0.2)
	f.ev(event{Action: "run", Package: pkg, Test: "TestB/sub"}).ev(event{Action: "pass", Package: pkg, Test: "TestB/sub"})
	f.at(time.Second).ev(event{Action: "output", Package: pkg, Output: "PASS\n"}).ev(event{Action: "pass", Package: pkg, Elapsed: 1.04})
	f.p.summary(0, f.now)
	wantLines(t, f.lines(), "ok packet 1.0s 2 passed", "PASS 1 packages, 2 tests (0 skipped) in 1.0s")
}

func TestLongPackageGetsALinePerTest(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "rawlb"
	f.ev(event{Action: "start", Package: pkg})
	f.at(time.Second).test(pkg, "TestEarly", "pass", 0.9)
	if f.out.Len() != 0 {
		t.Fatalf("printed before the package was long: %q", f.out.String())
	}
	f.at(3500 * time.Millisecond) // the tick at 3 s flushes TestEarly
	f.test(pkg, "TestLate", "pass", 2.4)
	if n := len(f.lines()); n != 2 {
		t.Fatalf("a long package's test got no line as it finished: %q", f.out.String())
	}
	f.at(5 * time.Second).ev(event{Action: "pass", Package: pkg, Elapsed: 5})
	wantLines(t, f.lines(), "rawlb 0.9s pass TestEarly", "rawlb 2.4s pass TestLate", "ok rawlb 5.0s 2 passed")
}

func TestFailingTestPrintsItsOutput(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "conntrack"
	f.ev(event{Action: "start", Package: pkg})
	f.test(pkg, "TestGood", "pass", 0, "=== RUN   TestGood\n", "    good_test.go:1: noise that must not show\n")
	f.ev(event{Action: "run", Package: pkg, Test: "TestBad"})
	f.ev(event{Action: "run", Package: pkg, Test: "TestBad/case"})
	f.ev(event{Action: "output", Package: pkg, Test: "TestBad/case", Output: "    bad_test.go:9: got 2, want 3\n"})
	f.ev(event{Action: "fail", Package: pkg, Test: "TestBad/case"})
	f.ev(event{Action: "output", Package: pkg, Test: "TestBad", Output: "--- FAIL: TestBad (0.00s)\n"})
	f.ev(event{Action: "fail", Package: pkg, Test: "TestBad", Elapsed: 0.3})
	f.ev(event{Action: "output", Package: pkg, Output: "FAIL\n"}).ev(event{Action: "fail", Package: pkg, Elapsed: 0.5})
	f.p.summary(1, f.now)
	wantLines(t, f.lines(),
		"conntrack 0.3s fail TestBad",
		"--- output of conntrack TestBad:",
		"bad_test.go:9: got 2, want 3",
		"--- FAIL: TestBad (0.00s)",
		"FAIL conntrack 0.5s 1 passed, 1 failed",
		"FAIL conntrack: TestBad (in 0.0s)")
}

func TestSkipsSayWhy(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "deploy"
	f.ev(event{Action: "start", Package: pkg})
	f.test(pkg, "TestMakeCross", "skip", 0, "=== RUN   TestMakeCross\n", "    make_test.go:95: cross builds: make check-deploy runs them\n", "--- SKIP: TestMakeCross (0.00s)\n")
	f.ev(event{Action: "pass", Package: pkg, Elapsed: 0.1})
	wantLines(t, f.lines(), "deploy 0.0s skip TestMakeCross: cross builds: make check-deploy runs them", "ok deploy 0.1s 0 passed, 1 skipped")
}

func TestPanicShowsTheUnfinishedTest(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "ring"
	f.ev(event{Action: "start", Package: pkg})
	f.test(pkg, "TestFine", "pass", 0)
	f.ev(event{Action: "run", Package: pkg, Test: "TestCrash"})
	f.ev(event{Action: "output", Package: pkg, Test: "TestCrash", Output: "panic: boom\n"})
	f.ev(event{Action: "output", Package: pkg, Output: "FAIL\tgithub.com/rawlb/rawlb/ring\t0.2s\n"})
	f.ev(event{Action: "fail", Package: pkg, Elapsed: 0.2})
	got := squeeze(f.lines())
	want := []string{"--- output of ring TestCrash (did not finish):", "panic: boom", "--- output of ring outside its tests:",
		"FAIL github.com/rawlb/rawlb/ring 0.2s", "FAIL ring 0.2s 1 passed"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	f.p.summary(1, f.now)
	if last := squeeze(f.lines())[len(f.lines())-1]; last != "FAIL ring: TestCrash (in 0.0s)" {
		t.Errorf("summary %q", last)
	}
}

func TestBuildFailure(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "rawlb"
	id := pkg + " [" + pkg + ".test]"
	f.ev(event{Action: "build-output", ImportPath: id, Output: "# " + id + "\n"})
	f.ev(event{Action: "build-output", ImportPath: id, Output: "rawlb/x.go:1:1: undefined: y\n"})
	f.ev(event{Action: "build-fail", ImportPath: id})
	f.ev(event{Action: "start", Package: pkg})
	f.ev(event{Action: "output", Package: pkg, Output: "FAIL\t" + pkg + " [build failed]\n"})
	f.ev(event{Action: "fail", Package: pkg, FailedBuild: id})
	f.p.summary(1, f.now)
	wantLines(t, f.lines(),
		"FAIL build of rawlb [github.com/rawlb/rawlb/rawlb.test]:",
		"# github.com/rawlb/rawlb/rawlb [github.com/rawlb/rawlb/rawlb.test]",
		"rawlb/x.go:1:1: undefined: y",
		"FAIL rawlb 0.0s build failed",
		"FAIL rawlb (build failed) (in 0.0s)")
}

func TestQuietSaysWhatRuns(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "rawlb"
	f.ev(event{Action: "start", Package: pkg})
	f.ev(event{Action: "run", Package: pkg, Test: "TestSlowThing"})
	f.ev(event{Action: "run", Package: pkg, Test: "TestWaiting"}).ev(event{Action: "pause", Package: pkg, Test: "TestWaiting"})
	f.at(14 * time.Second)
	if f.out.Len() != 0 {
		t.Fatalf("spoke before 15 s of quiet: %q", f.out.String())
	}
	f.at(15 * time.Second)
	wantLines(t, f.lines(), "... 15.0s running: rawlb TestSlowThing (15s)")
	f.at(29 * time.Second)
	if n := len(f.lines()); n != 1 {
		t.Errorf("spoke again within 15 s: %q", f.out.String())
	}
}

func TestNoTestFiles(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "internal/testenv"
	f.ev(event{Action: "start", Package: pkg})
	f.ev(event{Action: "output", Package: pkg, Output: "?   \t" + pkg + "\t[no test files]\n"})
	f.ev(event{Action: "skip", Package: pkg})
	wantLines(t, f.lines(), "- internal/testenv no test files")
}

func TestNoTestsToRun(t *testing.T) {
	f := newFeed(t)
	pkg := mod + "ring"
	f.ev(event{Action: "start", Package: pkg})
	f.ev(event{Action: "output", Package: pkg, Output: "testing: warning: no tests to run\n"})
	f.ev(event{Action: "pass", Package: pkg, Elapsed: 0.01})
	wantLines(t, f.lines(), "ok ring 0.0s no tests to run")
}

func TestSkipReason(t *testing.T) {
	for in, want := range map[string]string{
		"=== RUN   TestX\n    x_test.go:12: needs root\n--- SKIP: TestX (0.00s)\n": "needs root",
		"    x_test.go:3: a: b c\n":              "a: b c",
		"plain words\n--- SKIP: TestX (0.00s)\n": "plain words",
		"":                                       "",
	} {
		if got := skipReason(in); got != want {
			t.Errorf("skipReason(%q) = %q, want %q", in, got, want)
		}
	}
}

// run hands back go test's exit status, whatever it is, and reads its
// events as they come.
func TestRunExitStatus(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "go")
	script := `#!/bin/sh
[ "$1 $2" = "test -json" ] || { echo "bad args: $*" >&2; exit 9; }
echo '{"Action":"start","Package":"example.com/p"}'
echo '{"Action":"run","Package":"example.com/p","Test":"TestX"}'
echo '{"Action":"output","Package":"example.com/p","Test":"TestX","Output":"    x_test.go:1: broke\n"}'
echo '{"Action":"fail","Package":"example.com/p","Test":"TestX","Elapsed":0.1}'
echo '{"Action":"fail","Package":"example.com/p","Elapsed":0.2}'
echo 'something odd on stderr' >&2
exit 3
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-go", fake, "--", "-count=1", "./..."}, &stdout, &stderr); code != 3 {
		t.Errorf("exit status %d, want go test's 3\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "x_test.go:1: broke") || !strings.Contains(stdout.String(), "FAIL  example.com/p: TestX") {
		t.Errorf("stdout lacks the failure:\n%s", stdout.String())
	}
	if stderr.String() != "something odd on stderr\n" {
		t.Errorf("stderr %q, want go test's stderr passed through", stderr.String())
	}

	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho '{\"Action\":\"skip\",\"Package\":\"example.com/q\"}'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if code := run([]string{"-go", fake}, &stdout, &stderr); code != 0 {
		t.Errorf("exit status %d for a passing run", code)
	}
	if !strings.HasPrefix(strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n")[1], "PASS  1 packages") {
		t.Errorf("summary of a passing run:\n%s", stdout.String())
	}
}
