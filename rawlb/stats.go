package rawlb

import (
	"sync/atomic"

	"github.com/rawlb/rawlb/packet"
)

// dropReason says why the engine dropped a frame. The first values are the
// parser's reasons, so one array of counters covers both.
type dropReason uint8

// Engine drop reasons, after packet.NumReasons.
const (
	dropNoFlow        = dropReason(packet.NumReasons) + iota // not a SYN and no flow: a stray or a flow long expired
	dropNoBackend                                            // SYN while no backend is healthy (answered with a RST)
	dropTableFull                                            // flow table at -max-flows (answered with a RST)
	dropNATExhausted                                         // no NAT port free toward the chosen backend (answered with a RST)
	dropNoNeighbor                                           // the next hop toward the backend has no MAC yet
	dropRingTruncated                                        // the packet was larger than a ring slot
	dropVLANOffload                                          // the NIC stripped a VLAN tag; rawlb does not re-insert it
	dropNotOurs                                              // passed the filter but is not addressed to the balancer
	dropSendError                                            // the kernel refused to send it
	numDropReasons
)

var engineDropNames = [...]string{
	"no_flow", "no_backend", "table_full", "nat_exhausted", "no_neighbor",
	"ring_truncated", "vlan_offloaded", "not_ours", "send_error",
}

// String returns the reason's metric label.
func (r dropReason) String() string {
	if r < dropReason(packet.NumReasons) {
		return packet.Reason(r).String()
	}
	if i := int(r) - int(packet.NumReasons); i < len(engineDropNames) {
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
	packets   [2]atomic.Uint64
	bytes     [2]atomic.Uint64
	drops     [numDropReasons]atomic.Uint64
	resets    atomic.Uint64 // RSTs sent to clients for refused SYNs
	icmp      [2]atomic.Uint64
	gsoFrames atomic.Uint64 // frames forwarded as one GSO super-segment
	_         [64]byte      // keep the next worker's counters off this cache line
}
