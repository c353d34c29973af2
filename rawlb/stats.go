package rawlb

import (
	"sync/atomic"

	"github.com/rawlb/rawlb/conntrack"
	"github.com/rawlb/rawlb/packet"
)

// dropReason says why the engine dropped a frame. The first values are the
// parser's reasons, then connection tracking's, so one array of counters
// covers all three.
type dropReason uint8

const ctBase = dropReason(packet.NumReasons)

// Engine drop reasons, after the parser's and connection tracking's.
const (
	dropNoFlow        = ctBase + dropReason(conntrack.NumReasons) + iota // not a SYN and no flow: answered with a RST
	dropNoService                                                        // to a listen address no service has (a stale filter)
	dropNoNeighbor                                                       // the next hop toward the backend has no MAC yet
	dropRingTruncated                                                    // the packet was larger than a ring slot and its copy was lost
	dropVLANOffload                                                      // the NIC stripped a VLAN tag; rawlb does not re-insert it
	dropNotOurs                                                          // passed the filter but is not addressed to the balancer
	dropNotHost                                                          // not addressed to this host's MAC (a bridge port's copy)
	dropSendError                                                        // the kernel refused to send it
	dropRefused                                                          // a SYN refused (no backend, limits): answered with a RST
	dropCookieSent                                                       // a SYN answered with a SYN cookie
	dropCookieInvalid                                                    // an ACK without a flow whose cookie does not check
	dropProxyPending                                                     // client data before the backend answered rawlb's SYN
	dropHandshake                                                        // a segment rawlb answered itself in a handshake it holds
	dropSYNFirst                                                         // the first copy of a SYN while the SYN guard is on (a flood): only retransmissions are answered
	numDropReasons
)

var engineDropNames = [...]string{
	"no_flow", "no_service", "no_neighbor", "ring_truncated", "vlan_offloaded", "not_ours", "not_host", "send_error",
	"refused", "syn_cookie", "cookie_invalid", "proxy_pending", "handshake", "syn_first_dropped",
}

// String returns the reason's metric label.
func (r dropReason) String() string {
	switch {
	case r < ctBase:
		return packet.Reason(r).String()
	case r < ctBase+dropReason(conntrack.NumReasons):
		return conntrack.Reason(r - ctBase).String()
	}
	if i := int(r - ctBase - dropReason(conntrack.NumReasons)); i < len(engineDropNames) {
		return engineDropNames[i]
	}
	return "unknown"
}

// Direction indexes for packet and byte counters.
const (
	dirToBackend = 0
	dirToClient  = 1
)

// workerStats are one worker's counters. Only that worker writes them; the
// metrics collector reads them with atomic loads at scrape time, so the
// per-packet path never touches a shared cache line or a Prometheus type.
type workerStats struct {
	packets    [2]atomic.Uint64
	bytes      [2]atomic.Uint64
	drops      [numDropReasons]atomic.Uint64
	sent       [numGenKinds]atomic.Uint64 // originated packets sent
	limited    [numGenKinds]atomic.Uint64 // originated packets held back by the rate limit
	cookiesOK  atomic.Uint64              // cookie ACKs validated (flows created)
	twAssists  atomic.Uint64              // SYNs sent again after a backend's TIME_WAIT refused the first
	icmp       [2]atomic.Uint64
	gsoFrames  atomic.Uint64 // frames forwarded as one GSO super-segment
	bigFrames  atomic.Uint64 // frames larger than a ring slot (read from the socket queue)
	resetFlows atomic.Uint64 // flows reset by rawlb (drain timeout, dead or disabled backend)
	fast       fastStats
	_          [64]byte // keep the next worker's counters off this cache line
}
