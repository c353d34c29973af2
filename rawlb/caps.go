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
	capSysAdmin = 21
	capBPF      = 39
)

// checkCapabilities says which capability is missing, before anything
// fails with a bare EPERM halfway through start-up.
func checkCapabilities(needAdmin, needBPF bool) error {
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
	if needBPF && eff&(1<<capBPF) == 0 && eff&(1<<capSysAdmin) == 0 {
		missing = append(missing, "CAP_BPF (for -fastpath's tc program; CAP_SYS_ADMIN also does)")
	}
	if needBPF && !needAdmin && eff&(1<<capNetAdmin) == 0 {
		missing = append(missing, "CAP_NET_ADMIN (to attach -fastpath's tc program)")
	}
	if len(missing) > 0 {
		caps := "cap_net_raw,cap_net_admin"
		if needBPF {
			caps += ",cap_bpf"
		}
		return fmt.Errorf("missing %s: run as root, or `sudo setcap %s+ep %s`", strings.Join(missing, " and "), caps, os.Args[0])
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
