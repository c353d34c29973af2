// Package netlab builds a throwaway network of hosts out of network
// namespaces and veth pairs, so that end-to-end tests can run real TCP
// servers, clients and binaries on both sides of the load balancer.
//
// A lab is one L2 segment: a switch namespace holding a Linux bridge, and one
// namespace per host with a single veth eth0 plugged into that bridge. A
// two-arm lab (Options.TwoArms) puts the backends on a second segment and
// subnet of their own, which the balancer joins with a second interface, as
// a router box with clients on one side and servers on the other. Loopback
// makes a machine with nothing but lo, for one-host tests. The
// host's own network namespace, firewall and sysctls are never touched: every
// link is created directly inside the lab's namespaces, and everything is
// deleted in t.Cleanup, including when the test fails.
//
// Every privileged entry point calls testenv.RequirePrivileged, so a test
// that uses netlab skips without root (or fails under RAWLB_REQUIRE_PRIVILEGED=1).
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/testenv"
)

// Subnet is the lab's only L3 network. It lies in 198.18.0.0/15, the range
// RFC 2544 reserves for benchmarking, so a lab can never collide with, or
// leak traffic towards, an address that is routed anywhere real.
var Subnet = netip.MustParsePrefix("198.18.0.0/24")

// BackendSubnet is the backends' segment of a two-arm lab (Options.TwoArms),
// next to Subnet inside 198.18.0.0/15. Nothing routes between the two but
// what a test adds.
var BackendSubnet = netip.MustParsePrefix("198.18.1.0/24")

// Fixed host addresses inside Subnet. Backends are numbered from
// firstBackendIP upwards, so backend i (0-based) is 198.18.0.(11+i).
var (
	balancerIP = netip.MustParseAddr("198.18.0.2")
	clientIP   = netip.MustParseAddr("198.18.0.10")
	// armIP is the balancer's address on BackendSubnet in a two-arm lab.
	armIP = netip.MustParseAddr("198.18.1.2")
)

const (
	firstBackendOctet = 11
	// maxBackends keeps backend addresses below .255 and the switch-side port
	// names ("be" + number) well inside IFNAMSIZ.
	maxBackends = 200
	// readyTimeout bounds how long New waits for links and bridge ports; on
	// an idle machine it takes a few milliseconds.
	readyTimeout = 10 * time.Second
)

// Options shapes a lab.
type Options struct {
	// Backends is the number of backend hosts, addressed 198.18.0.11 upwards
	// (198.18.1.11 upwards with TwoArms).
	Backends int
	// TwoArms puts the backends on a segment of their own: a second switch
	// (BackendSwitch) and BackendSubnet, which the balancer joins with a
	// second interface, eth1 at 198.18.1.2 (BackendArm). The client stays
	// on the first segment with the balancer's eth0. No host gets a route
	// to the other segment: a backend reaches only 198.18.1.0/24.
	TwoArms bool
}

// Lab is one running network: a switch and the hosts plugged into it.
type Lab struct {
	// Switch is the name of the namespace holding the bridge br0 that every
	// host's eth0 is plugged into (in a two-arm lab, the client's and the
	// balancer's only). Capture there to see every frame.
	Switch string
	// Client is the host tests send traffic from, at 198.18.0.10.
	Client *Host
	// Balancer is the host the load balancer runs in, at 198.18.0.2.
	Balancer *Host
	// Backends are the real servers, at 198.18.0.11, .12, ... in order
	// (198.18.1.11, ... in a two-arm lab).
	Backends []*Host
	// BackendSwitch is the namespace of the backends' bridge br0 in a
	// two-arm lab, and "" in a lab of one segment.
	BackendSwitch string
	// BackendArm is the balancer's interface on the backends' segment in a
	// two-arm lab: the Balancer's namespace, Iface "eth1", at 198.18.1.2.
	// It is nil in a lab of one segment.
	BackendArm *Host

	// links are the interfaces waitReady waits for, and ports how many
	// bridge ports each switch namespace has.
	links []*Host
	ports map[string]int
}

// Host is one machine of the lab: a network namespace with a single
// interface on the lab's segment (the balancer of a two-arm lab has two,
// and a second Host value, BackendArm, for the other).
type Host struct {
	// Name is the network namespace's name, as `ip netns` knows it.
	Name string
	// IP is the host's address on Iface, inside Subnet (or BackendSubnet).
	IP netip.Addr
	// Iface is the host's interface on its segment: "eth0", "eth1" for a
	// BackendArm, "lo" for a Loopback host.
	Iface string
	// MAC is Iface's hardware address. It is derived from IP
	// (02:52:4c:00:<third octet>:<last octet>) so packet captures are easy
	// to read; a Loopback host's is all zeros, as lo's is.
	MAC net.HardwareAddr
}

// Hosts returns every host of the lab: the client, the balancer, then the
// backends in order.
func (l *Lab) Hosts() []*Host {
	return append([]*Host{l.Client, l.Balancer}, l.Backends...)
}

// nsAddMu serialises `ip netns add`: the first call in a boot mounts
// /run/netns onto itself, and concurrent first calls (parallel tests) can
// stack mounts on top of each other.
var nsAddMu sync.Mutex

// New builds a lab and registers its teardown with t.Cleanup. It returns only
// once every interface is up and every bridge port is forwarding, so the
// first packet a test sends is not lost to a port still learning.
func New(t testing.TB, o Options) *Lab {
	t.Helper()
	testenv.RequirePrivileged(t)
	if o.Backends < 0 || o.Backends > maxBackends {
		t.Fatalf("netlab: Options.Backends = %d, want 0..%d", o.Backends, maxBackends)
	}
	for _, tool := range []string{"ip", "bridge"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("netlab: %s not found (install iproute2): %v", tool, err)
		}
	}

	prefix := labPrefix(t)
	lab := &Lab{Switch: prefix + "sw", ports: map[string]int{}}
	var made []string // namespaces created so far, deleted in reverse on cleanup
	t.Cleanup(func() { destroy(t, made) })

	addNS := func(name string) {
		t.Helper()
		addNetNS(t, name)
		made = append(made, name)
	}

	addSwitch := func(sw string) {
		t.Helper()
		addNS(sw)
		setUpSwitch(t, sw)
	}
	addSwitch(lab.Switch)

	// plug connects a new veth from switch sw, named port there, to h's
	// namespace as h.Iface with h's address.
	plug := func(sw, port string, h *Host) {
		t.Helper()
		// The veth pair is created from the switch namespace with its peer
		// placed straight into the host's namespace: neither end ever exists
		// in the namespace the test runs in. The switch-side end is named for
		// the role so `bridge -n SW link` reads like a patch panel.
		ipBatch(t, sw,
			fmt.Sprintf("link add %s type veth peer name %s address %s netns %s", port, h.Iface, h.MAC, h.Name),
			fmt.Sprintf("link set %s addrgenmode none master br0 up", port),
		)
		ipBatch(t, h.Name,
			"link set lo up",
			fmt.Sprintf("link set %s addrgenmode none", h.Iface),
			fmt.Sprintf("addr add %s dev %s", netip.PrefixFrom(h.IP, Subnet.Bits()), h.Iface),
			fmt.Sprintf("link set %s up", h.Iface),
		)
		lab.links = append(lab.links, h)
		lab.ports[sw]++
	}

	newHost := func(sw, role string, ip netip.Addr) *Host {
		t.Helper()
		h := &Host{Name: prefix + role, IP: ip, Iface: "eth0", MAC: macFor(ip)}
		addNS(h.Name)
		plug(sw, role, h)
		return h
	}

	lab.Client = newHost(lab.Switch, "client", clientIP)
	lab.Balancer = newHost(lab.Switch, "lb", balancerIP)
	backendSwitch, backendNet := lab.Switch, Subnet.Addr().As4()
	if o.TwoArms {
		lab.BackendSwitch = prefix + "sw2"
		addSwitch(lab.BackendSwitch)
		lab.BackendArm = &Host{Name: lab.Balancer.Name, IP: armIP, Iface: "eth1", MAC: macFor(armIP)}
		plug(lab.BackendSwitch, "lb", lab.BackendArm)
		backendSwitch, backendNet = lab.BackendSwitch, BackendSubnet.Addr().As4()
	}
	for i := range o.Backends {
		ip := netip.AddrFrom4([4]byte{backendNet[0], backendNet[1], backendNet[2], byte(firstBackendOctet + i)})
		lab.Backends = append(lab.Backends, newHost(backendSwitch, "be"+strconv.Itoa(i+1), ip))
	}

	lab.waitReady(t)
	return lab
}

// labPrefix returns a fresh "rlb-<6 hex>-" for a lab's namespace names. A
// random tag keeps concurrent labs (parallel tests, parallel packages) apart
// and lets a human spot leftovers of a crashed run: `ip netns list | grep
// rlb-`. Names stay short because they show up in every command.
func labPrefix(t testing.TB) string {
	t.Helper()
	var tag [3]byte
	if _, err := rand.Read(tag[:]); err != nil {
		t.Fatalf("netlab: random tag: %v", err)
	}
	return "rlb-" + hex.EncodeToString(tag[:]) + "-"
}

// addNetNS creates the named network namespace.
func addNetNS(t testing.TB, name string) {
	t.Helper()
	nsAddMu.Lock()
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	nsAddMu.Unlock()
	if err != nil {
		t.Fatalf("netlab: ip netns add %s: %v\n%s", name, err, out)
	}
}

// setUpSwitch makes the bridge br0 of switch namespace sw.
func setUpSwitch(t testing.TB, sw string) {
	t.Helper()
	// forward_delay 0 with STP off makes a port forward as soon as it has
	// carrier, instead of spending 2×15 s in listening and learning.
	// addrgenmode none keeps IPv6 from giving the bridge and its ports
	// link-local addresses, so no DAD, router or MLD chatter reaches a packet
	// capture or the balancer's ring.
	ipBatch(t, sw,
		"link set lo up",
		"link add br0 type bridge forward_delay 0 stp_state 0",
		"link set br0 addrgenmode none",
		"link set br0 up",
	)
	// A host with br_netfilter loaded (Docker does it) passes bridged IPv4
	// through netfilter in every namespace: it validates headers and
	// reassembles fragments, which no real switch does, and the malformed
	// frames the tests send would never reach the balancer. The sysctls are
	// per namespace (Linux 5.3+), so this touches only the switch's; on a
	// host without br_netfilter they do not exist and nothing is needed.
	for _, f := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
		path := "/proc/sys/net/bridge/" + f
		if out, err := exec.Command("ip", "netns", "exec", sw, "sh", "-c", "[ ! -e "+path+" ] || echo 0 > "+path).CombinedOutput(); err != nil {
			t.Fatalf("netlab: turning off %s in %s: %v\n%s", f, sw, err, out)
		}
	}
}

// macFor derives a locally administered unicast MAC from a lab address.
func macFor(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x02, 0x52, 0x4c, 0x00, a[2], a[3]} // 0x52 0x4c: "RL"
}

// ipBatch runs ip commands inside namespace ns in one process: `ip -n NS`
// switches namespace before running anything, so none of these can touch the
// test's own namespace even if a line were wrong.
func ipBatch(t testing.TB, ns string, cmds ...string) {
	t.Helper()
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("netlab: ip -n %s -batch failed: %v\n%s\ncommands:\n%s", ns, err, out, strings.Join(cmds, "\n"))
	}
}

// waitReady polls until every host's interface is operationally up (a veth
// is up only once both ends are) and every bridge port is forwarding. IPv4
// addresses need no wait: IPv4 has no duplicate address detection, so an
// address is usable as soon as `ip addr add` returns.
func (l *Lab) waitReady(t testing.TB) {
	t.Helper()
	var why string
	ready := func() bool {
		for _, h := range l.links {
			out, err := exec.Command("ip", "-n", h.Name, "-j", "link", "show", "dev", h.Iface).Output()
			if err != nil {
				why = fmt.Sprintf("ip link show in %s: %v", h.Name, err)
				return false
			}
			var links []struct{ Operstate string }
			if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || links[0].Operstate != "UP" {
				why = fmt.Sprintf("%s %s not up: %s", h.Name, h.Iface, out)
				return false
			}
		}
		for sw, want := range l.ports {
			out, err := exec.Command("bridge", "-n", sw, "-j", "link", "show").Output()
			if err != nil {
				why = fmt.Sprintf("bridge link show in %s: %v", sw, err)
				return false
			}
			var ports []struct{ Ifname, State string }
			if err := json.Unmarshal(out, &ports); err != nil {
				why = fmt.Sprintf("bridge link show in %s: %v: %s", sw, err, out)
				return false
			}
			forwarding := 0
			for _, p := range ports {
				if p.State != "forwarding" {
					why = fmt.Sprintf("bridge port %s of %s is %s", p.Ifname, sw, p.State)
					return false
				}
				forwarding++
			}
			if forwarding != want {
				why = fmt.Sprintf("%d of %d bridge ports of %s present", forwarding, want, sw)
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(readyTimeout)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatalf("netlab: lab not ready after %v: %s", readyTimeout, why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// destroy kills whatever still runs inside the lab's namespaces, then deletes
// them, hosts before the switch. Killing first matters: a process keeps its
// namespace (and the veth in it) alive after the name is gone, and a stray
// balancer would keep spinning on a dead ring.
func destroy(t testing.TB, names []string) {
	t.Helper()
	for i := len(names) - 1; i >= 0; i-- {
		name := names[i]
		out, err := exec.Command("ip", "netns", "pids", name).Output()
		if err != nil {
			t.Errorf("netlab: ip netns pids %s: %v", name, err)
		}
		for _, f := range strings.Fields(string(out)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid == os.Getpid() {
				continue
			}
			// ESRCH only means it exited on its own meanwhile.
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
				t.Errorf("netlab: kill %d in %s: %v", pid, name, err)
			}
		}
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("netlab: ip netns delete %s: %v\n%s", name, err, out)
		}
	}
}
