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

	"gopkg.in/yaml.v3"

	"github.com/rawlb/rawlb/internal/testenv"
)

// The original project's layout: chat servers on these ports, the balancer
// on 20000.
var (
	originalChatPorts = []int{8090, 8091, 8092}
	originalLBPort    = 20000
)

// progIdle is the client container's command, deploy/docker/idle: the
// image has no shell and no sleep.
const progIdle = "idle"

// composeFile is the part of the compose specification the demo uses.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		IPAM struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
}

type composeService struct {
	Image       string          `yaml:"image"`
	Build       composeBuild    `yaml:"build"`
	Command     commandLine     `yaml:"command"`
	Entrypoint  commandLine     `yaml:"entrypoint"`
	CapAdd      []string        `yaml:"cap_add"`
	CapDrop     []string        `yaml:"cap_drop"`
	Privileged  bool            `yaml:"privileged"`
	NetworkMode string          `yaml:"network_mode"`
	Ports       []composePort   `yaml:"ports"`
	Sysctls     keyValues       `yaml:"sysctls"`
	DependsOn   nameSet         `yaml:"depends_on"`
	Networks    serviceNetworks `yaml:"networks"`
}

// composeBuild is `build:` as a context path or as a mapping.
type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain composeBuild
	return n.Decode((*plain)(b))
}

// commandLine is `command:` or `entrypoint:`, a list or a string that
// compose splits like a shell would.
type commandLine []string

func (c *commandLine) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		words, err := shellWords(n.Value)
		*c = words
		return err
	}
	var list []string
	err := n.Decode(&list)
	*c = list
	return err
}

// keyValues is `sysctls:` (or `environment:`) as a mapping or a list of
// key=value strings.
type keyValues map[string]string

func (kv *keyValues) UnmarshalYAML(n *yaml.Node) error {
	*kv = keyValues{}
	if n.Kind == yaml.MappingNode {
		var m map[string]string
		if err := n.Decode(&m); err != nil {
			return err
		}
		for k, v := range m {
			(*kv)[k] = v
		}
		return nil
	}
	var list []string
	if err := n.Decode(&list); err != nil {
		return err
	}
	for _, s := range list {
		k, v, _ := strings.Cut(s, "=")
		(*kv)[k] = v
	}
	return nil
}

// nameSet is `depends_on:` as a list or a mapping of service names.
type nameSet []string

func (s *nameSet) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		for i := 0; i < len(n.Content); i += 2 {
			*s = append(*s, n.Content[i].Value)
		}
		return nil
	}
	var list []string
	err := n.Decode(&list)
	*s = list
	return err
}

// serviceNetworks is a service's `networks:`, a list of names or a mapping
// of names to settings.
type serviceNetworks map[string]struct {
	IPv4Address string `yaml:"ipv4_address"`
}

func (sn *serviceNetworks) UnmarshalYAML(n *yaml.Node) error {
	*sn = serviceNetworks{}
	if n.Kind == yaml.SequenceNode {
		var names []string
		if err := n.Decode(&names); err != nil {
			return err
		}
		for _, name := range names {
			(*sn)[name] = struct {
				IPv4Address string `yaml:"ipv4_address"`
			}{}
		}
		return nil
	}
	type plain serviceNetworks
	m := plain{}
	if err := n.Decode(&m); err != nil {
		return err
	}
	*sn = serviceNetworks(m)
	return nil
}

// composePort is one published port, from the short syntax
// ("[ip:]host:container[/proto]") or the long one.
type composePort struct {
	Published, Target int
	Protocol          string
}

func (p *composePort) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		var long struct {
			Target    int    `yaml:"target"`
			Published string `yaml:"published"`
			Protocol  string `yaml:"protocol"`
		}
		if err := n.Decode(&long); err != nil {
			return err
		}
		p.Target, p.Protocol = long.Target, long.Protocol
		if long.Published != "" {
			pub, err := strconv.Atoi(long.Published)
			if err != nil {
				return fmt.Errorf("published port %q: %w", long.Published, err)
			}
			p.Published = pub
		}
		return nil
	}
	spec, proto, _ := strings.Cut(n.Value, "/")
	parts := strings.Split(spec, ":")
	if len(parts) < 2 {
		return fmt.Errorf("port %q publishes no host port", n.Value)
	}
	var err error
	if p.Target, err = strconv.Atoi(parts[len(parts)-1]); err != nil {
		return fmt.Errorf("port %q: %w", n.Value, err)
	}
	if p.Published, err = strconv.Atoi(parts[len(parts)-2]); err != nil {
		return fmt.Errorf("port %q: %w", n.Value, err)
	}
	p.Protocol = proto
	return nil
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy", "docker-compose.yml")), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// argv is the service's full command line: entrypoint, then command.
func (s composeService) argv() []string {
	return append(slices.Clone(s.Entrypoint), s.Command...)
}

// program is the name of the binary the service runs.
func (s composeService) program() string {
	if a := s.argv(); len(a) > 0 {
		return filepath.Base(a[0])
	}
	return ""
}

// servicesRunning returns the names of the services that run prog, sorted.
func (c composeFile) servicesRunning(prog string) []string {
	var names []string
	for name, s := range c.Services {
		if s.program() == prog {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// chatPort returns the port the chat service listens on, from its real
// command line.
func chatPort(t *testing.T, flags flagSet, name string, s composeService) int {
	t.Helper()
	p, err := parseArgs(flags, s.argv()[1:])
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	if len(p.positional) != 1 {
		t.Fatalf("service %s: chatserver takes one port, got %q", name, p.positional)
	}
	port, err := strconv.Atoi(p.positional[0])
	if err != nil || port < 1 || port > 65535 {
		t.Fatalf("service %s: port %q is not a port", name, p.positional[0])
	}
	return port
}

// The demo keeps the original's layout: three chat servers on 8090-8092, the
// balancer published on 20000 with two capabilities and not privileged, and
// a client container to chat from.
func TestComposeLayout(t *testing.T) {
	c := loadCompose(t)
	chatFlags := helpFlags(t, buildProgram(t, progChatserver))

	chats := c.servicesRunning(progChatserver)
	var ports []int
	for _, name := range chats {
		ports = append(ports, chatPort(t, chatFlags, name, c.Services[name]))
	}
	slices.Sort(ports)
	if !slices.Equal(ports, originalChatPorts) {
		t.Errorf("chat servers %v listen on %v, want one each on %v", chats, ports, originalChatPorts)
	}

	lbs := c.servicesRunning(progRawlb)
	if len(lbs) != 1 {
		t.Fatalf("services running rawlb: %v, want exactly one", lbs)
	}
	lb := c.Services[lbs[0]]
	if lb.Privileged {
		t.Errorf("service %s is privileged; it needs only NET_RAW and NET_ADMIN", lbs[0])
	}
	if lb.NetworkMode != "" {
		t.Errorf("service %s has network_mode %q: rawlb must run in the container's own network namespace", lbs[0], lb.NetworkMode)
	}
	caps := map[string]bool{}
	for _, c := range lb.CapAdd {
		caps[strings.TrimPrefix(strings.ToUpper(c), "CAP_")] = true
	}
	for _, want := range []string{"NET_RAW", "NET_ADMIN"} {
		if !caps[want] && !caps["ALL"] {
			t.Errorf("service %s: cap_add %v lacks %s", lbs[0], lb.CapAdd, want)
		}
	}
	if caps["ALL"] || caps["SYS_ADMIN"] {
		t.Errorf("service %s: cap_add %v grants far more than NET_RAW and NET_ADMIN", lbs[0], lb.CapAdd)
	}
	published := false
	for _, p := range lb.Ports {
		if p.Published == originalLBPort && p.Target == originalLBPort && (p.Protocol == "" || p.Protocol == "tcp") {
			published = true
		}
	}
	if !published {
		t.Errorf("service %s does not publish %d:%d/tcp: ports %+v", lbs[0], originalLBPort, originalLBPort, lb.Ports)
	}
	for _, chat := range chats {
		if !slices.Contains(lb.DependsOn, chat) {
			t.Errorf("service %s does not depend on %s, whose name it resolves at start", lbs[0], chat)
		}
	}

	var clients []string
	for name, s := range c.Services {
		if slices.Equal(s.argv(), []string{progIdle}) {
			clients = append(clients, name)
		}
	}
	if len(clients) != 1 {
		t.Errorf("services that idle for `docker compose exec client chatclient ...`: %v, want one", clients)
	}

	// Every service runs the image `make image` tags, and none has a build
	// section: compose cannot make the binaries the build copies.
	r, err := parseImageRecipe(runMake(t, "-n", "image"))
	if err != nil || r.docker == nil {
		t.Fatalf("make -n image: %v (docker build: %v)", err, r.docker)
	}
	for name, s := range c.Services {
		if !slices.Contains(r.docker.tags, s.Image) {
			t.Errorf("service %s runs image %q; make image tags %v", name, s.Image, r.docker.tags)
		}
		if s.Build != (composeBuild{}) {
			t.Errorf("service %s has a build section %+v: compose would build without the binaries make image builds", name, s.Build)
		}
	}
}

// The file is in the format both Compose v1 (docker-compose 1.x, which
// Debian 12 ships) and Compose v2 read, and each one installed here
// accepts it.
func TestComposeFileFormat(t *testing.T) {
	var top map[string]yaml.Node
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy", "docker-compose.yml")), &top); err != nil {
		t.Fatal(err)
	}
	// A string: Compose v1 rejects the number 2.4.
	if v := top["version"]; v.Value != "2.4" || v.ShortTag() != "!!str" {
		t.Errorf("version %s %q, want the string \"2.4\"", v.ShortTag(), v.Value)
	}
	for k := range top {
		switch {
		case k == "version" || k == "services" || k == "networks" || k == "volumes":
		case strings.HasPrefix(k, "x-"): // extension fields, 2.1 and later
		default:
			t.Errorf("top-level key %q: not in compose format 2.4", k)
		}
	}

	// `config -q` validates the file (v1 against its 2.4 schema) without
	// an engine.
	slowCheck(t, "runs docker-compose config")
	var ran []string
	for _, argv := range [][]string{{"docker-compose"}, {"docker", "compose"}} {
		if exec.Command(argv[0], append(argv[1:], "version")...).Run() != nil {
			continue
		}
		args := append(slices.Clone(argv[1:]), "-f", repoPath("deploy", "docker-compose.yml"), "config", "-q")
		out, err := exec.Command(argv[0], args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(slices.Concat(argv[:1], args), " "), err, out)
		}
		ran = append(ran, strings.Join(argv, " "))
	}
	if len(ran) == 0 {
		msg := "neither docker-compose nor docker compose is installed (bash scripts/docker-deps.sh installs Debian's docker-compose)"
		if os.Getenv(testenv.RequireEnv) == "1" {
			t.Fatalf("%s, and %s=1 forbids skipping", msg, testenv.RequireEnv)
		}
		t.Skip(msg)
	}
	t.Logf("validated by %v", ran)
}

// rawlb's command line holds up: real flags, its own address as the source
// address, and the chat services and their ports as backends.
func TestComposeRawlbCommand(t *testing.T) {
	c := loadCompose(t)
	flags := rawlbFlags(t)
	chatFlags := helpFlags(t, buildProgram(t, progChatserver))
	lbs := c.servicesRunning(progRawlb)
	if len(lbs) != 1 {
		t.Fatalf("services running rawlb: %v, want exactly one", lbs)
	}
	name, lb := lbs[0], c.Services[lbs[0]]
	p, err := parseArgs(flags, lb.argv()[1:])
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	if len(p.positional) < 2 {
		t.Fatalf("service %s: want <srcIP> <backend>..., got %q", name, p.positional)
	}

	// The source address is the container's own, fixed in the compose file.
	src, err := netip.ParseAddr(p.positional[0])
	if err != nil || !src.Is4() {
		t.Fatalf("service %s: srcIP %q is not an IPv4 address", name, p.positional[0])
	}
	if len(lb.Networks) != 1 {
		t.Fatalf("service %s: want exactly one network, got %v", name, lb.Networks)
	}
	for netName, n := range lb.Networks {
		if n.IPv4Address != src.String() {
			t.Errorf("service %s: srcIP %s is not its ipv4_address %q on %s", name, src, n.IPv4Address, netName)
		}
		var inSubnet bool
		for _, cfg := range c.Networks[netName].IPAM.Config {
			if pfx, err := netip.ParsePrefix(cfg.Subnet); err == nil && pfx.Contains(src) {
				inSubnet = true
			}
		}
		if !inSubnet {
			t.Errorf("service %s: srcIP %s is outside network %s's subnets", name, src, netName)
		}
	}

	// Each backend is a chat service on the port it really listens on, and
	// every chat service is a backend.
	chatPorts := map[string]int{}
	for _, chat := range c.servicesRunning(progChatserver) {
		chatPorts[chat] = chatPort(t, chatFlags, chat, c.Services[chat])
	}
	seen := map[string]bool{}
	for _, b := range p.positional[1:] {
		host, portStr, err := net.SplitHostPort(b)
		if err != nil {
			t.Errorf("service %s: backend %q is not host:port: %v", name, b, err)
			continue
		}
		want, ok := chatPorts[host]
		if !ok {
			t.Errorf("service %s: backend %q names no chat service (have %v)", name, b, chatPorts)
			continue
		}
		if portStr != strconv.Itoa(want) {
			t.Errorf("service %s: backend %q, but %s listens on %d", name, b, host, want)
		}
		seen[host] = true
	}
	for chat := range chatPorts {
		if !seen[chat] {
			t.Errorf("service %s: chat service %s is not a backend", name, chat)
		}
	}

	// The published port is the one rawlb balances.
	port := p.value(flags, "port")
	var published bool
	for _, pp := range lb.Ports {
		if strconv.Itoa(pp.Target) == port {
			published = true
		}
	}
	if !published {
		t.Errorf("service %s: rawlb balances port %s, which is not published (ports %+v)", name, port, lb.Ports)
	}

	// Docker sets the reserved ports (its /proc/sys is read-only); they must
	// cover rawlb's NAT ports.
	natPorts := p.value(flags, "nat-ports")
	reserved := lb.Sysctls["net.ipv4.ip_local_reserved_ports"]
	if err := rangeCovered(natPorts, reserved); err != nil {
		t.Errorf("service %s: -nat-ports %q vs sysctl net.ipv4.ip_local_reserved_ports %q: %v", name, natPorts, reserved, err)
	}
}

// rangeCovered checks that the port range lo-hi is inside the union of the
// kernel's ip_local_reserved_ports list ("a-b,c,d-e").
func rangeCovered(portRange, reserved string) error {
	lo, hi, err := parsePortRange(portRange)
	if err != nil {
		return err
	}
	covered := make([]bool, hi-lo+1)
	for _, part := range strings.Split(reserved, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		a, b, err := parsePortRange(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("reserved ports: %w", err)
		}
		for p := max(a, lo); p <= min(b, hi); p++ {
			covered[p-lo] = true
		}
	}
	if i := slices.Index(covered, false); i >= 0 {
		return fmt.Errorf("port %d is not reserved", lo+i)
	}
	return nil
}

func parsePortRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("%q is not a port range", s)
	}
	return lo, hi, nil
}

func TestRangeCovered(t *testing.T) {
	for _, tc := range []struct {
		rng, reserved string
		ok            bool
	}{
		{"40000-59999", "40000-59999", true},
		{"40000-59999", "30000-39999,40000-60000", true},
		{"40000-59999", "40000-49999,50000-59999", true},
		{"40000-59999", "40000-59998", false},
		{"40000-59999", "", false},
		{"40000-59999", "nonsense", false},
		{"8080", "8080", true},
	} {
		if err := rangeCovered(tc.rng, tc.reserved); (err == nil) != tc.ok {
			t.Errorf("rangeCovered(%q, %q) = %v, want ok=%v", tc.rng, tc.reserved, err, tc.ok)
		}
	}
}

// The chatclient command the compose file's comments tell users to run
// reaches the balancer service on the balanced port.
func TestComposeClientInstructions(t *testing.T) {
	c := loadCompose(t)
	lbs := c.servicesRunning(progRawlb)
	if len(lbs) != 1 {
		t.Fatalf("services running rawlb: %v, want exactly one", lbs)
	}
	text := readRepoFile(t, "deploy", "docker-compose.yml")
	var found int
	for _, line := range strings.Split(text, "\n") {
		_, cmd, ok := strings.Cut(line, " exec client ")
		if !ok || !strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		found++
		words := strings.Fields(cmd)
		if len(words) != 4 || words[0] != progChatclient || words[1] != lbs[0] || words[2] != strconv.Itoa(originalLBPort) {
			t.Errorf("comment runs %q, want chatclient %s %d <nickname>", cmd, lbs[0], originalLBPort)
		}
	}
	if found == 0 {
		t.Error("the compose file does not say how to start a client")
	}
}

// Every flag and positional argument of the chat services' commands exists.
func TestComposeChatCommands(t *testing.T) {
	c := loadCompose(t)
	flags := helpFlags(t, buildProgram(t, progChatserver))
	for _, name := range c.servicesRunning(progChatserver) {
		chatPort(t, flags, name, c.Services[name])
	}
	for name, s := range c.Services {
		switch s.program() {
		case progChatserver, progRawlb, progIdle:
		default:
			t.Errorf("service %s runs %q, which this test does not know how to check", name, s.program())
		}
	}
}
