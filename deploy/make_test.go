package deploy

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `make install` puts the binaries, the unit and the example settings where
// the unit expects them, and keeps an admin's existing settings.
func TestMakeInstall(t *testing.T) {
	requireRawlb(t)
	slowCheck(t, "runs make build and make install")
	bin := t.TempDir() // `make build` output, kept out of the work tree
	for _, prefix := range []string{"", "/usr"} {
		destdir := t.TempDir()
		args := []string{"install", "DESTDIR=" + destdir, "BIN=" + bin, "VERSION=test-install"}
		wantPrefix := "/usr/local"
		if prefix != "" {
			args = append(args, "PREFIX="+prefix)
			wantPrefix = prefix
		}
		runMake(t, args...)

		for _, prog := range []string{progRawlb, progChatserver, progChatclient} {
			fi, err := os.Stat(filepath.Join(destdir, wantPrefix, "bin", prog))
			if err != nil {
				t.Errorf("PREFIX=%q: %v", prefix, err)
			} else if fi.Mode().Perm() != 0o755 {
				t.Errorf("PREFIX=%q: %s has mode %v, want 0755", prefix, prog, fi.Mode().Perm())
			}
		}

		unitPath := filepath.Join(destdir, "lib", "systemd", "system", "rawlb.service")
		unitText, err := os.ReadFile(unitPath)
		if err != nil {
			t.Fatalf("PREFIX=%q: %v", prefix, err)
		}
		u, err := parseUnit(string(unitText))
		if err != nil {
			t.Fatal(err)
		}
		execStart, _ := shellWords(u.get("Service.ExecStart"))
		if len(execStart) == 0 || execStart[0] != filepath.Join(wantPrefix, "bin", progRawlb) {
			t.Errorf("PREFIX=%q: installed unit runs %q, want %s", prefix, execStart, filepath.Join(wantPrefix, "bin", progRawlb))
		} else if fi, err := os.Stat(filepath.Join(destdir, execStart[0])); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("PREFIX=%q: the unit's ExecStart %s is not an installed executable (%v)", prefix, execStart[0], err)
		}
		// Apart from ExecStart, the installed unit is the one in deploy/.
		src := readRepoFile(t, "deploy", "systemd", "rawlb.service")
		if strip(string(unitText)) != strip(src) {
			t.Errorf("PREFIX=%q: the installed unit differs from deploy/systemd/rawlb.service beyond ExecStart", prefix)
		}

		envPath := filepath.Join(destdir, u.get("Service.EnvironmentFile"))
		envText, err := os.ReadFile(envPath)
		if err != nil {
			t.Fatalf("PREFIX=%q: the unit's EnvironmentFile is not installed: %v", prefix, err)
		}
		if string(envText) != readRepoFile(t, "deploy", "systemd", "rawlb.env") {
			t.Errorf("PREFIX=%q: %s is not deploy/systemd/rawlb.env", prefix, envPath)
		}

		example := filepath.Join(destdir, "etc", "rawlb", "rawlb.yaml.example")
		if got, err := os.ReadFile(example); err != nil || string(got) != readRepoFile(t, "config", "testdata", "example.yaml") {
			t.Errorf("PREFIX=%q: %s is not config/testdata/example.yaml (%v)", prefix, example, err)
		}

		// A second install keeps the admin's edited settings.
		edited := []byte("RAWLB_SRC_IP=192.0.2.99\n")
		if err := os.WriteFile(envPath, edited, 0o644); err != nil {
			t.Fatal(err)
		}
		runMake(t, args...)
		if got, _ := os.ReadFile(envPath); string(got) != string(edited) {
			t.Errorf("PREFIX=%q: a second make install overwrote the edited %s", prefix, envPath)
		}
	}
}

// strip drops the ExecStart line, the one line install rewrites.
func strip(unit string) string {
	var keep []string
	for _, l := range strings.Split(unit, "\n") {
		if !strings.HasPrefix(l, "ExecStart=") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// `make cross` builds static binaries of every command for amd64, arm64 and
// ARMv7, with the version stamped in by the build target's LDFLAGS.
func TestMakeCross(t *testing.T) {
	slowCheck(t, "cross-compiles every command for three platforms")
	const version = "test-cross-1.2.3"
	ldflags := strings.Fields(makeVar(t, "LDFLAGS", "VERSION="+version))
	dist := t.TempDir()
	runMake(t, "cross", "DIST="+dist, "VERSION="+version)

	list := exec.Command("go", "list", "-f", `{{if eq .Name "main"}}{{.ImportPath}}{{end}}`, "./cmd/...")
	list.Dir = repoRoot
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list ./cmd/...: %v", err)
	}
	var progs []string
	for _, p := range strings.Fields(string(out)) {
		progs = append(progs, filepath.Base(p))
	}
	if len(progs) < 2 {
		t.Fatalf("found commands %v, want at least chatserver and chatclient", progs)
	}

	for _, target := range []struct {
		dir     string
		goarch  string
		machine elf.Machine
		class   elf.Class
		goarm   string
	}{
		{"linux-amd64", "amd64", elf.EM_X86_64, elf.ELFCLASS64, ""},
		{"linux-arm64", "arm64", elf.EM_AARCH64, elf.ELFCLASS64, ""},
		{"linux-arm", "arm", elf.EM_ARM, elf.ELFCLASS32, "7"},
	} {
		for _, prog := range progs {
			path := filepath.Join(dist, target.dir, prog)
			f, err := elf.Open(path)
			if err != nil {
				t.Errorf("%s/%s: %v", target.dir, prog, err)
				continue
			}
			if f.Machine != target.machine || f.Class != target.class {
				t.Errorf("%s/%s: %v %v, want %v %v", target.dir, prog, f.Machine, f.Class, target.machine, target.class)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s/%s asks for a dynamic loader; want a static binary", target.dir, prog)
				}
			}
			checkLdflags(t, target.dir+"/"+prog, path, f, ldflags)
			f.Close()

			// go records the build settings in the binary, all but -ldflags,
			// which it leaves out under -trimpath (checkLdflags reads their
			// effects instead).
			info, err := buildinfo.ReadFile(path)
			if err != nil {
				t.Errorf("%s/%s: %v", target.dir, prog, err)
				continue
			}
			settings := map[string]string{}
			for _, s := range info.Settings {
				settings[s.Key] = s.Value
			}
			want := map[string]string{
				"-trimpath":   "true",
				"CGO_ENABLED": "0",
				"GOOS":        "linux",
				"GOARCH":      target.goarch,
			}
			if target.goarm != "" {
				want["GOARM"] = target.goarm
			}
			for k, v := range want {
				if settings[k] != v {
					t.Errorf("%s/%s was built with %s=%q, want %q", target.dir, prog, k, settings[k], v)
				}
			}
		}
	}
}

// checkLdflags checks that the binary shows the effect of each linker flag
// of the Makefile's LDFLAGS: -s (no symbol table), -w (no DWARF) and
// -X main.var=value (the value is in the binary).
func checkLdflags(t *testing.T, name, path string, f *elf.File, ldflags []string) {
	t.Helper()
	for i := 0; i < len(ldflags); i++ {
		switch ldflags[i] {
		case "-s":
			if f.Section(".symtab") != nil {
				t.Errorf("%s has a symbol table; LDFLAGS has -s", name)
			}
		case "-w":
			for _, s := range f.Sections {
				if strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
					t.Errorf("%s has DWARF section %s; LDFLAGS has -w", name, s.Name)
					break
				}
			}
		case "-X":
			if i+1 == len(ldflags) {
				t.Fatalf("LDFLAGS %q ends in -X", ldflags)
			}
			i++
			sym, value, _ := strings.Cut(ldflags[i], "=")
			if !strings.HasPrefix(sym, "main.") {
				continue // another package's variable: not every command links it
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(value)) {
				t.Errorf("%s does not contain %q: -X %s=%s did not take", name, value, sym, value)
			}
		default:
			t.Errorf("LDFLAGS has %q, which this test does not know how to check in a binary", ldflags[i])
		}
	}
}

// Once cmd/rawlb exists, it has every flag the deployment files are written
// against, each taking a value or not as expected.
func TestRawlbHasExpectedFlags(t *testing.T) {
	requireRawlb(t)
	got := helpFlags(t, buildProgram(t, progRawlb))
	for name, want := range expectedRawlbFlags {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("rawlb has no -%s flag", name)
		case g.takesValue != want.takesValue:
			t.Errorf("rawlb -%s takes a value: %v, want %v", name, g.takesValue, want.takesValue)
		}
	}
}
