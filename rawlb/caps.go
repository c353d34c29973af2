package rawlb

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Linux capability numbers (include/uapi/linux/capability.h).
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// checkCapabilities says which capability is missing, before anything
// fails with a bare EPERM halfway through start-up.
func checkCapabilities(needAdmin bool) error {
	eff, err := effectiveCaps()
	if err != nil {
		return nil // cannot tell: let the real calls report
	}
	var missing []string
	if eff&(1<<capNetRaw) == 0 {
		missing = append(missing, "CAP_NET_RAW (for the AF_PACKET socket)")
	}
	if needAdmin && eff&(1<<capNetAdmin) == 0 {
		missing = append(missing, "CAP_NET_ADMIN (for the nftables rules and reserved ports; or run with -firewall=false after scripts/setup.sh install)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: run as root, or `sudo setcap cap_net_raw,cap_net_admin+ep %s`", strings.Join(missing, " and "), os.Args[0])
	}
	return nil
}

// effectiveCaps reads CapEff from /proc/self/status.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff in /proc/self/status")
}
