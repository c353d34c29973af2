// Package testenv holds the helpers that decide whether a privileged test
// may run here, and makes a skip loud where the caller demands the test run.
package testenv

import (
	"os"
	"testing"
)

// RequireEnv names the environment variable that turns a privileged test's
// skip into a failure. CI sets it: a skipped end-to-end test there would hide
// the whole data path, so it must fail instead.
const RequireEnv = "RAWLB_REQUIRE_PRIVILEGED"

// RequirePrivileged skips t unless the process runs as root (network
// namespaces, veth pairs and AF_PACKET need CAP_SYS_ADMIN, CAP_NET_ADMIN and
// CAP_NET_RAW). With RAWLB_REQUIRE_PRIVILEGED=1 it fails t instead of skipping.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("this test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW) and %s=1 forbids skipping it", RequireEnv)
	}
	t.Skip("needs root for network namespaces and AF_PACKET; run with sudo (set " + RequireEnv + "=1 to make this skip a failure)")
}
