package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/rawlb/rawlb/internal/testenv"
)

// inNetns runs fn on a fresh OS thread that has joined h's network namespace.
//
// A socket belongs to the namespace its creating thread was in when socket(2)
// ran, and keeps it for life; after that it can be read, written, accepted
// on and closed from any thread. So only the creation needs the namespace.
// setns(2) however moves a thread, not a goroutine, and the Go scheduler
// moves goroutines between threads freely. Hence:
//
//   - the goroutine locks itself to its thread before setns, so nothing else
//     runs there while it is in the lab's namespace;
//   - it never unlocks: a goroutine that exits while locked takes its thread
//     down with it (runtime.LockOSThread), so the thread, still in the lab's
//     namespace, is never handed to another goroutine. Switching back
//     instead would leave a thread in the wrong namespace whenever that
//     switch failed.
//
// fn must create its sockets on the calling goroutine: anything it starts on
// another goroutine runs on some other thread, in the test's own namespace.
func (h *Host) inNetns(fn func()) error {
	return InNetNS(h.Name, func() error { fn(); return nil })
}

// InNetNS runs fn on a thread inside the named network namespace, as
// described above, and returns fn's error or the error of entering.
func InNetNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread; see above.
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("netlab: open namespace %s: %w", name, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("netlab: enter namespace %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// NewNetNS creates an empty network namespace named prefix-<random hex>
// for a test that needs one outside a Lab, and deletes it in t.Cleanup,
// pass or fail.
func NewNetNS(t testing.TB, prefix string) string {
	t.Helper()
	testenv.RequirePrivileged(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := prefix + "-" + hex.EncodeToString(b[:])
	nsAddMu.Lock()
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	nsAddMu.Unlock()
	if err != nil {
		t.Fatalf("netlab: ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("netlab: ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// checkLiteral rejects addresses whose host part is a name. Resolving a name
// (and dialling several candidate addresses in parallel) happens on other
// goroutines, hence other threads, hence the test's own namespace: the
// socket would silently be created there.
func checkLiteral(network, addr string) error {
	if !strings.HasPrefix(network, "tcp") && !strings.HasPrefix(network, "udp") && !strings.HasPrefix(network, "ip") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("netlab: %q: %w", addr, err)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("netlab: %q: use an IP address, not a name: resolution would run outside the lab's namespace", addr)
	}
	return nil
}

// Dial connects to addr from inside h's network namespace, as net.Dialer's
// DialContext does. addr must hold an IP address, not a name. The returned
// connection may be used from any goroutine.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, err
	}
	var c net.Conn
	var err error
	if nsErr := h.inNetns(func() {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
	}); nsErr != nil {
		return nil, nsErr
	}
	return c, err
}

// Listen listens on addr inside h's network namespace, as net.Listen does.
// The host part of addr must be empty or an IP address. The listener, and the
// connections it accepts, may be used from any goroutine.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, err
	}
	var ln net.Listener
	var err error
	if nsErr := h.inNetns(func() {
		var lc net.ListenConfig
		ln, err = lc.Listen(context.Background(), network, addr)
	}); nsErr != nil {
		return nil, nsErr
	}
	return ln, err
}

// HTTPClient returns a client whose connections are dialled from h's
// namespace, for scraping a metrics endpoint that only exists there. URLs
// must use IP addresses. It ignores HTTP_PROXY and friends: a proxy outside
// the lab could never reach it.
func (h *Host) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DialContext:       h.Dial,
			DisableKeepAlives: true, // a scrape per call; no idle sockets pinning a deleted namespace
		},
	}
}

// RunIn runs a command in the named namespace (`ip netns exec`), with env
// added to the test's environment, and returns its standard output. It
// fails t with the command's standard error if the command fails.
func RunIn(t testing.TB, ns string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v\n%s", ns, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}
