package deploy

import (
	"fmt"
	"maps"
	"os/exec"
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

// classicInstructions are the Dockerfile instructions that Docker's classic
// builder (Debian 12's docker.io 20.10 without BuildKit) knows.
var classicInstructions = map[string]bool{
	"FROM": true, "COPY": true, "ADD": true, "ENV": true, "ARG": true, "LABEL": true,
	"CMD": true, "ENTRYPOINT": true, "WORKDIR": true, "USER": true, "EXPOSE": true,
	"VOLUME": true, "STOPSIGNAL": true, "HEALTHCHECK": true, "SHELL": true, "RUN": true,
}

// syntaxDirectiveRE matches a "# syntax=" parser directive, which makes
// BuildKit pull a frontend image from a registry before it reads a line.
var syntaxDirectiveRE = regexp.MustCompile(`(?im)^\s*#\s*syntax\s*=`)

// imageFiles returns the files the Dockerfile copies into the image and
// the directory they go to, and checks the rules that let it build
// anywhere: no registry (FROM scratch, no syntax directive, no ADD of a
// URL), the classic builder (no BuildKit-only instruction or flag), and
// no RUN (scratch has no shell, and an exec-form RUN would need a binary
// the image does not have yet).
func imageFiles(text string) (files []string, dest, pathEnv string, problems []string) {
	if syntaxDirectiveRE.MatchString(text) {
		problems = append(problems, "a # syntax= directive: BuildKit would pull its frontend from a registry")
	}
	ins, err := parseDockerfile(text)
	if err != nil {
		return nil, "", "", append(problems, err.Error())
	}
	sts := stages(ins)
	if len(sts) != 1 || sts[0].image != "scratch" {
		var froms []string
		for _, st := range sts {
			froms = append(froms, st.image)
		}
		problems = append(problems, fmt.Sprintf("stages FROM %v, want one FROM scratch: any other base image comes from a registry", froms))
	}
	for _, in := range ins {
		if !classicInstructions[in.cmd] {
			problems = append(problems, fmt.Sprintf("line %d: %s is not an instruction the classic builder knows", in.line, in.cmd))
		}
		switch in.cmd {
		case "RUN":
			problems = append(problems, fmt.Sprintf("line %d: RUN in an image FROM scratch, which has no shell", in.line))
		case "ADD":
			if strings.Contains(in.args, "://") {
				problems = append(problems, fmt.Sprintf("line %d: ADD of a URL fetches from the network during the build", in.line))
			}
		case "ENV":
			// ENV PATH=... or the old ENV PATH ...
			k, v, ok := strings.Cut(in.args, "=")
			if !ok {
				k, v, _ = strings.Cut(in.args, " ")
			}
			if strings.TrimSpace(k) == "PATH" {
				pathEnv = strings.Trim(strings.TrimSpace(v), `"`)
			}
		case "COPY":
			f := strings.Fields(in.args)
			if len(f) < 2 {
				problems = append(problems, fmt.Sprintf("line %d: COPY %s", in.line, in.args))
				continue
			}
			for _, w := range f[:len(f)-1] {
				switch {
				case strings.HasPrefix(w, "--chown="):
				case strings.HasPrefix(w, "--"):
					// --chmod and --link are BuildKit's; --from has no
					// other stage to copy from.
					problems = append(problems, fmt.Sprintf("line %d: COPY %s: the classic builder of docker.io 20.10 does not take it", in.line, w))
				default:
					files = append(files, w)
				}
			}
			if dest != "" && dest != f[len(f)-1] {
				problems = append(problems, fmt.Sprintf("line %d: a second destination %s (the first was %s)", in.line, f[len(f)-1], dest))
			}
			dest = f[len(f)-1]
		}
	}
	return files, dest, pathEnv, problems
}

// The Dockerfile builds without a registry, with the classic builder, and
// puts every program the compose services run on the image's PATH.
func TestDockerfile(t *testing.T) {
	files, dest, pathEnv, problems := imageFiles(readRepoFile(t, "deploy", "docker", "Dockerfile"))
	for _, p := range problems {
		t.Error(p)
	}
	if !strings.HasSuffix(dest, "/") {
		t.Errorf("COPY destination %q does not end in /: with several sources it must be a directory", dest)
	}
	if !slices.Contains(strings.Split(pathEnv, ":"), path.Clean(dest)) {
		t.Errorf("the binaries go to %s, which is not on the image's PATH %q (scratch has no PATH of its own)", dest, pathEnv)
	}
	for name, s := range loadCompose(t).Services {
		if prog := s.argv(); len(prog) == 0 || !slices.Contains(files, prog[0]) {
			t.Errorf("service %s runs %q, which the Dockerfile does not copy (it copies %v)", name, s.argv(), files)
		}
	}
}

// The rules catch the Dockerfile that needed a registry, and the BuildKit
// features Debian's engine does not have without it.
func TestDockerfileRulesCatch(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"scratch", "FROM scratch\nCOPY a b /usr/local/bin/\nENV PATH=/usr/local/bin\n", true},
		{"old ENV form", "FROM scratch\nCOPY a /usr/local/bin/\nENV PATH /usr/local/bin:/bin\n", true},
		{"syntax line", "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY a /usr/local/bin/\n", false},
		{"base image", "FROM golang:1.26 AS build\nRUN make build\nFROM scratch\nCOPY --from=build /out/a /usr/local/bin/\n", false},
		{"alpine", "FROM alpine:3.22\nCOPY a /usr/local/bin/\n", false},
		{"RUN", "FROM scratch\nCOPY a /usr/local/bin/\nRUN [\"/usr/local/bin/a\"]\n", false},
		{"COPY --chmod", "FROM scratch\nCOPY --chmod=755 a /usr/local/bin/\n", false},
		{"COPY --link", "FROM scratch\nCOPY --link a /usr/local/bin/\n", false},
		{"ADD URL", "FROM scratch\nADD https://example.com/a /usr/local/bin/\n", false},
		{"two destinations", "FROM scratch\nCOPY a /usr/local/bin/\nCOPY b /bin/\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, problems := imageFiles(tc.text)
			if (len(problems) == 0) != tc.ok {
				t.Errorf("problems %q, want ok=%v", problems, tc.ok)
			}
		})
	}
}

// imageRecipe is what `make image` runs, read from make's dry run: the go
// builds (its prerequisite `build` and idle's) and the docker build.
type imageRecipe struct {
	builds []goBuild
	docker *dockerBuild
}

type goBuild struct {
	line       string
	env, flags map[string]string
	out        string
	pkgs       []string
}

type dockerBuild struct {
	dockerfile, context, network string
	tags                         []string
	labels                       map[string]string
}

// goValueFlags are the go build flags that take a value as the next word.
var goValueFlags = map[string]bool{
	"o": true, "ldflags": true, "tags": true, "buildmode": true, "gcflags": true, "asmflags": true,
	"p": true, "mod": true, "modfile": true, "pkgdir": true, "overlay": true, "pgo": true, "toolexec": true,
}

func parseImageRecipe(dry string) (imageRecipe, error) {
	var r imageRecipe
	for _, line := range strings.Split(dry, "\n") {
		words, err := shellWords(line)
		if err != nil {
			return r, err
		}
		env, flags, isGo, err := goBuildFlags(line)
		if err != nil {
			return r, err
		}
		if isGo {
			b := goBuild{line: line, env: env, flags: flags}
			i := slices.Index(words, "build")
			for j := i + 1; j < len(words); j++ {
				w := words[j]
				if !strings.HasPrefix(w, "-") {
					b.pkgs = append(b.pkgs, w)
					continue
				}
				name, value, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
				if goValueFlags[name] && !hasValue && j+1 < len(words) {
					j++
					value = words[j]
				}
				if name == "o" {
					b.out = value
				}
			}
			r.builds = append(r.builds, b)
			continue
		}
		for i := 0; i+1 < len(words); i++ {
			if path.Base(words[i]) != "docker" || words[i+1] != "build" {
				continue
			}
			if r.docker != nil {
				return r, fmt.Errorf("two docker builds: %q", line)
			}
			d := &dockerBuild{labels: map[string]string{}}
			var positional []string
			for j := i + 2; j < len(words); j++ {
				w := words[j]
				if !strings.HasPrefix(w, "-") {
					positional = append(positional, w)
					continue
				}
				name, value, hasValue := strings.Cut(w, "=")
				switch name {
				case "-f", "--file", "-t", "--tag", "--network", "--label":
				case "--pull", "--no-cache", "-q", "--quiet":
					continue
				default:
					return r, fmt.Errorf("docker build flag %s: unknown to this test, which must learn what it does", w)
				}
				if !hasValue {
					if j+1 >= len(words) {
						return r, fmt.Errorf("docker build %s without a value", name)
					}
					j++
					value = words[j]
				}
				switch name {
				case "-f", "--file":
					d.dockerfile = value
				case "-t", "--tag":
					d.tags = append(d.tags, value)
				case "--network":
					d.network = value
				case "--label":
					k, v, _ := strings.Cut(value, "=")
					d.labels[k] = v
				}
			}
			if len(positional) != 1 {
				return r, fmt.Errorf("docker build with contexts %q, want one", positional)
			}
			d.context = positional[0]
			r.docker = d
			break
		}
	}
	return r, nil
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

// recipeWant is what `make image` must do for a given BIN and VERSION.
type recipeWant struct {
	env, flags   map[string]string // those of `make build`
	bin, version string
	tags         []string
}

// recipeProblems checks a recipe: every go build is `make build`'s, into
// the context directory; one docker build of deploy/docker/Dockerfile with
// that context, no network, the tags and the version label.
func recipeProblems(r imageRecipe, want recipeWant) []string {
	var problems []string
	if len(r.builds) == 0 {
		problems = append(problems, "no go build")
	}
	for _, b := range r.builds {
		if !maps.Equal(b.flags, want.flags) {
			problems = append(problems, fmt.Sprintf("%q builds with %v, make build with %v", b.line, b.flags, want.flags))
		}
		if b.env["CGO_ENABLED"] != "0" || b.env["CGO_ENABLED"] != want.env["CGO_ENABLED"] {
			problems = append(problems, fmt.Sprintf("%q builds with CGO_ENABLED=%q: the image has no libc, so the binaries must be static", b.line, b.env["CGO_ENABLED"]))
		}
		if path.Clean(b.out) != path.Clean(want.bin) {
			problems = append(problems, fmt.Sprintf("%q writes to %q, not to the build context %s", b.line, b.out, want.bin))
		}
	}
	d := r.docker
	if d == nil {
		return append(problems, "no docker build")
	}
	if d.dockerfile != "deploy/docker/Dockerfile" {
		problems = append(problems, fmt.Sprintf("docker build -f %q, want deploy/docker/Dockerfile", d.dockerfile))
	}
	if path.Clean(d.context) != path.Clean(want.bin) {
		problems = append(problems, fmt.Sprintf("docker build context %q, want the binaries' directory %s", d.context, want.bin))
	}
	if d.network != "none" {
		problems = append(problems, fmt.Sprintf("docker build --network %q, want none: nothing in the build may reach a network", d.network))
	}
	for _, tag := range want.tags {
		if !slices.Contains(d.tags, tag) {
			problems = append(problems, fmt.Sprintf("docker build tags %v, not %s", d.tags, tag))
		}
	}
	if v := d.labels["org.opencontainers.image.version"]; v != want.version {
		problems = append(problems, fmt.Sprintf("image version label %q, want %q", v, want.version))
	}
	return problems
}

// `make image` builds the binaries as `make build` does (static, same
// flags, version stamped) into the build context, and builds
// deploy/docker/Dockerfile from exactly that: every file the Dockerfile
// copies is a program it built, and the compose file's image is one of
// the tags.
func TestMakeImageRecipe(t *testing.T) {
	const version = "v9.9.9-image"
	bin := "/nonexistent/rawlb-image-context" // a dry run creates nothing
	r, err := parseImageRecipe(runMake(t, "-n", "image", "BIN="+bin, "VERSION="+version))
	if err != nil {
		t.Fatal(err)
	}
	env, flags := wantBuild(t, version)
	c := loadCompose(t)
	var composeImages []string
	for _, s := range c.Services {
		if !slices.Contains(composeImages, s.Image) {
			composeImages = append(composeImages, s.Image)
		}
	}
	for _, p := range recipeProblems(r, recipeWant{env: env, flags: flags, bin: bin, version: version, tags: append([]string{"rawlb:latest"}, composeImages...)}) {
		t.Error(p)
	}

	// The programs the builds put into the context, by the name of their
	// main package's directory (go build -o dir/ names them so).
	var pkgs []string
	for _, b := range r.builds {
		pkgs = append(pkgs, b.pkgs...)
	}
	list := exec.Command("go", append([]string{"list", "-f", `{{if eq .Name "main"}}{{.ImportPath}}{{end}}`}, pkgs...)...)
	list.Dir = repoRoot
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", pkgs, err)
	}
	var built []string
	for _, p := range strings.Fields(string(out)) {
		built = append(built, path.Base(p))
	}
	files, _, _, _ := imageFiles(readRepoFile(t, "deploy", "docker", "Dockerfile"))
	for _, f := range files {
		if !slices.Contains(built, f) {
			t.Errorf("the Dockerfile copies %s, which make image does not build into the context (it builds %v)", f, built)
		}
	}
	for _, prog := range []string{progRawlb, progChatserver, progChatclient, progIdle} {
		if !slices.Contains(files, prog) {
			t.Errorf("the image lacks %s (the Dockerfile copies %v)", prog, files)
		}
	}
}

// The recipe check catches an image build that drifted from `make build`
// or could reach a registry.
func TestImageRecipeDriftIsCaught(t *testing.T) {
	const version = "v9.9.9"
	env, flags := wantBuild(t, version)
	ld := flags["ldflags"]
	want := recipeWant{env: env, flags: flags, bin: "/ctx", version: version, tags: []string{"rawlb:latest", "rawlb:demo"}}
	build := "CGO_ENABLED=0 go build -trimpath -ldflags '" + ld + "' -o /ctx/ ./cmd/...\n"
	idle := "CGO_ENABLED=0 go build -trimpath -ldflags '" + ld + "' -o /ctx/ ./deploy/docker/idle\n"
	docker := "docker build --network none -f deploy/docker/Dockerfile --label org.opencontainers.image.version=" + version + " -t rawlb:latest -t rawlb:demo /ctx\n"
	for _, tc := range []struct {
		name, dry string
		ok        bool
	}{
		{"as make image", build + idle + docker, true},
		{"idle without trimpath", build + "CGO_ENABLED=0 go build -ldflags '" + ld + "' -o /ctx/ ./deploy/docker/idle\n" + docker, false},
		{"idle with cgo", build + "go build -trimpath -ldflags '" + ld + "' -o /ctx/ ./deploy/docker/idle\n" + docker, false},
		{"other ldflags", "CGO_ENABLED=0 go build -trimpath -ldflags '-X main.version=" + version + "' -o /ctx/ ./cmd/...\n" + idle + docker, false},
		{"binaries elsewhere", "CGO_ENABLED=0 go build -trimpath -ldflags '" + ld + "' -o bin/ ./cmd/...\n" + idle + docker, false},
		{"repository as context", build + idle + strings.Replace(docker, " /ctx\n", " .\n", 1), false},
		{"network allowed", build + idle + strings.Replace(docker, "--network none ", "", 1), false},
		{"no demo tag", build + idle + strings.Replace(docker, " -t rawlb:demo", "", 1), false},
		{"no version", build + idle + strings.Replace(docker, "version="+version, "version=dev", 1), false},
		{"no docker build", build + idle, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseImageRecipe(tc.dry)
			if err != nil {
				t.Fatal(err)
			}
			if problems := recipeProblems(r, want); (len(problems) == 0) != tc.ok {
				t.Errorf("problems %q, want ok=%v", problems, tc.ok)
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
