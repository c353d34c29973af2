package deploy

import (
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	line int    // where it starts, 1-based
	cmd  string // upper-cased: FROM, RUN, COPY...
	args string
}

// parseDockerfile splits a Dockerfile into instructions: comments and blank
// lines dropped, lines ending in a backslash joined to the next.
func parseDockerfile(text string) ([]instruction, error) {
	var out []instruction
	var cur *instruction
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		// Docker skips comments and blank lines, inside a continued
		// instruction too.
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		cont := strings.HasSuffix(line, `\`)
		line = strings.TrimSuffix(line, `\`)
		if cur == nil {
			cmd, args, _ := strings.Cut(line, " ")
			out = append(out, instruction{line: i + 1, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
			cur = &out[len(out)-1]
		} else {
			cur.args += " " + strings.TrimSpace(line)
		}
		if !cont {
			cur = nil
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("line %d: continuation at the end of the file", cur.line)
	}
	return out, nil
}

// stage is one FROM ... [AS name] and its instructions.
type stage struct {
	image, name string
	args        map[string]string // ARG name -> default
	body        []instruction
}

func stages(ins []instruction) []stage {
	var out []stage
	for _, in := range ins {
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{args: map[string]string{}}
			for i := 0; i < len(f); i++ {
				if strings.HasPrefix(f[i], "--") {
					continue
				}
				if s.image == "" {
					s.image = f[i]
				} else if strings.EqualFold(f[i], "AS") && i+1 < len(f) {
					s.name = f[i+1]
					break
				}
			}
			out = append(out, s)
			continue
		}
		if len(out) == 0 {
			continue // ARG before the first FROM
		}
		cur := &out[len(out)-1]
		if in.cmd == "ARG" {
			k, v, _ := strings.Cut(in.args, "=")
			cur.args[k] = strings.Trim(v, `"`)
		}
		cur.body = append(cur.body, in)
	}
	return out
}

// buildSpec is what a Dockerfile's build of the binaries amounts to.
type buildSpec struct {
	env   map[string]string // CGO_ENABLED and the like
	flags map[string]string // -trimpath, -ldflags, ...
	bin   string            // where the binaries land
}

var argRefRE = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

// builderSpec finds the RUN that builds the binaries and works out the flags
// it builds with. `make build` is resolved by make's dry run with the same
// variables, so a Dockerfile that runs it is checked for what it really
// does; a plain `go build` is read as written. ARG references are replaced
// by the ARG defaults.
func builderSpec(t *testing.T, st stage) (buildSpec, error) {
	for _, in := range st.body {
		if in.cmd != "RUN" {
			continue
		}
		cmd := argRefRE.ReplaceAllStringFunc(in.args, func(ref string) string {
			name := argRefRE.FindStringSubmatch(ref)[1]
			if v, ok := st.args[name]; ok {
				return v
			}
			return ref
		})
		words, err := shellWords(cmd)
		if err != nil {
			return buildSpec{}, fmt.Errorf("line %d: %v", in.line, err)
		}
		if i := slices.Index(words, "make"); i >= 0 && slices.Contains(words[i+1:], "build") {
			vars := map[string]string{}
			for _, w := range words[i+1:] {
				if k, v, ok := strings.Cut(w, "="); ok {
					vars[k] = v
				}
			}
			if _, ok := vars["VERSION"]; !ok {
				return buildSpec{}, fmt.Errorf("line %d: make build without VERSION=: the image has no .git for the Makefile to ask", in.line)
			}
			var overrides []string
			for _, k := range slices.Sorted(maps.Keys(vars)) {
				overrides = append(overrides, k+"="+vars[k])
			}
			dry := runMake(t, append([]string{"-n", "build"}, overrides...)...)
			env, flags, ok, err := goBuildFlags(dry)
			if err != nil || !ok {
				return buildSpec{}, fmt.Errorf("make -n build %v printed no go build (%v):\n%s", overrides, err, dry)
			}
			bin := vars["BIN"]
			if bin == "" {
				bin = makeVar(t, "BIN")
			}
			if !path.IsAbs(bin) {
				bin = path.Join(st.workdir(), bin)
			}
			return buildSpec{env: env, flags: flags, bin: bin}, nil
		}
		env, flags, ok, err := goBuildFlags(cmd)
		if err != nil {
			return buildSpec{}, fmt.Errorf("line %d: %v", in.line, err)
		}
		if ok {
			return buildSpec{env: env, flags: flags, bin: goBuildOutput(words, st.workdir())}, nil
		}
	}
	return buildSpec{}, fmt.Errorf("stage %s runs neither make build nor go build", st.name)
}

// workdir is the stage's last WORKDIR, or /.
func (st stage) workdir() string {
	dir := "/"
	for _, in := range st.body {
		if in.cmd == "WORKDIR" {
			dir = path.Join(dir, in.args)
		}
	}
	return dir
}

// goBuildOutput returns the directory a `go build -o DIR/` writes to.
func goBuildOutput(words []string, workdir string) string {
	for i, w := range words {
		out, ok := strings.CutPrefix(w, "-o=")
		if (w == "-o" || w == "--o") && i+1 < len(words) {
			out, ok = words[i+1], true
		}
		if !ok {
			continue
		}
		if path.IsAbs(out) {
			return path.Clean(out)
		}
		return path.Join(workdir, out)
	}
	return workdir
}

// wantBuild is the build the Makefile's build target does, read from the
// Makefile through make, for a given version.
func wantBuild(t *testing.T, version string) (env, flags map[string]string) {
	t.Helper()
	ldflags := makeVar(t, "LDFLAGS", "VERSION="+version)
	if !strings.Contains(ldflags, "main.version="+version) {
		t.Fatalf("the Makefile's LDFLAGS %q does not stamp the version", ldflags)
	}
	dry := runMake(t, "-n", "build", "VERSION="+version)
	env, flags, ok, err := goBuildFlags(dry)
	if err != nil || !ok {
		t.Fatalf("make -n build printed no go build (%v):\n%s", err, dry)
	}
	if flags["ldflags"] != ldflags {
		t.Fatalf("make build passes -ldflags %q, but LDFLAGS is %q", flags["ldflags"], ldflags)
	}
	return env, flags
}

// The image builds the binaries as `make build` does (static, same flags,
// version stamped), and ships all three of them on the PATH.
func TestDockerfile(t *testing.T) {
	ins, err := parseDockerfile(readRepoFile(t, "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	sts := stages(ins)
	if len(sts) < 2 {
		t.Fatalf("%d stages, want a builder and a runtime stage", len(sts))
	}
	builder, runtime := sts[0], sts[len(sts)-1]
	if builder.name == "" {
		t.Fatalf("the builder stage (FROM %s) has no name for COPY --from", builder.image)
	}

	// The builder's Go is the one go.mod asks for.
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(readRepoFile(t, "go.mod"))
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}
	if img := builder.image; img != "golang:"+goLine[1] && !strings.HasPrefix(img, "golang:"+goLine[1]+".") && !strings.HasPrefix(img, "golang:"+goLine[1]+"-") {
		t.Errorf("builder image %s, want golang:%s (go.mod says go %s)", img, goLine[1], goLine[1])
	}
	if strings.HasPrefix(runtime.image, "golang:") {
		t.Errorf("runtime image %s carries the whole toolchain", runtime.image)
	}

	got, err := builderSpec(t, builder)
	if err != nil {
		t.Fatal(err)
	}
	version, ok := builder.args["VERSION"]
	if !ok {
		t.Fatal("the builder stage has no ARG VERSION for the version stamp")
	}
	wantEnv, wantFlags := wantBuild(t, version)
	if !maps.Equal(got.flags, wantFlags) {
		t.Errorf("the image builds with %v, make build with %v", got.flags, wantFlags)
	}
	if got.env["CGO_ENABLED"] != "0" || got.env["CGO_ENABLED"] != wantEnv["CGO_ENABLED"] {
		t.Errorf("the image builds with CGO_ENABLED=%q, make build with %q (want static binaries)", got.env["CGO_ENABLED"], wantEnv["CGO_ENABLED"])
	}

	// Every program the compose file runs is copied from the builder's
	// output into a directory on the PATH.
	copied := map[string]bool{}
	for _, in := range runtime.body {
		if in.cmd != "COPY" || !strings.Contains(in.args, "--from="+builder.name) {
			continue
		}
		f := strings.Fields(in.args)
		var srcs []string
		for _, w := range f[:len(f)-1] {
			if !strings.HasPrefix(w, "--") {
				srcs = append(srcs, w)
			}
		}
		dst := f[len(f)-1]
		if dst != "/usr/local/bin/" && dst != "/usr/bin/" && dst != "/bin/" {
			t.Errorf("line %d copies to %s, which is not on the PATH", in.line, dst)
		}
		for _, s := range srcs {
			if path.Dir(s) == path.Clean(got.bin) {
				copied[path.Base(s)] = true
			}
		}
	}
	for _, prog := range []string{progRawlb, progChatserver, progChatclient} {
		if !copied[prog] {
			t.Errorf("the runtime stage does not copy %s from %s", prog, got.bin)
		}
	}
}

// The Dockerfile check catches a build that drifted from the Makefile.
func TestDockerfileDriftIsCaught(t *testing.T) {
	const version = "v9.9.9"
	wantEnv, wantFlags := wantBuild(t, version)
	for _, tc := range []struct {
		name, run string
		same      bool
	}{
		{"make build", `make build VERSION="${VERSION}" BIN=/out`, true},
		{"same go build", `CGO_ENABLED=0 go build -trimpath -ldflags '` + wantFlags["ldflags"] + `' -o /out/ ./cmd/...`, true},
		{"no trimpath", `CGO_ENABLED=0 go build -ldflags '` + wantFlags["ldflags"] + `' -o /out/ ./cmd/...`, false},
		{"other ldflags", `CGO_ENABLED=0 go build -trimpath -ldflags '-s -X main.version=${VERSION}' -o /out/ ./cmd/...`, false},
		{"cgo", `go build -trimpath -ldflags '` + wantFlags["ldflags"] + `' -o /out/ ./cmd/...`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			df := "FROM golang:1 AS build\nWORKDIR /src\nARG VERSION=" + version + "\nRUN " + tc.run + "\n"
			ins, err := parseDockerfile(df)
			if err != nil {
				t.Fatal(err)
			}
			got, err := builderSpec(t, stages(ins)[0])
			if err != nil {
				t.Fatal(err)
			}
			same := maps.Equal(got.flags, wantFlags) && got.env["CGO_ENABLED"] == wantEnv["CGO_ENABLED"]
			if same != tc.same {
				t.Errorf("RUN %s: flags %v env %v; judged same=%v, want %v", tc.run, got.flags, got.env, same, tc.same)
			}
			if got.bin != "/out" {
				t.Errorf("output directory %q, want /out", got.bin)
			}
		})
	}
}

func TestParseDockerfile(t *testing.T) {
	ins, err := parseDockerfile("# c\nFROM a AS b\nRUN x \\\n  y \\\n\n  z\n  # not a comment inside? it is dropped\nCOPY --from=b /o/p /usr/local/bin/\n")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range ins {
		got = append(got, in.cmd+" "+in.args)
	}
	want := []string{"FROM a AS b", "RUN x y z", "COPY --from=b /o/p /usr/local/bin/"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
