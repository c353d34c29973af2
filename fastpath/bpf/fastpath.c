// SPDX-License-Identifier: GPL-2.0
//
// rawlb's fast path: a tc (tcx) ingress program that forwards the segments
// of established flows the engine handed it, in the kernel, without the
// copies into and out of the packet ring. It does for those segments exactly
// what the engine's worker does (conntrack's inWindow, then the rewrite of
// addresses, ports, sequence and timestamp offsets, window scale and MACs),
// and follows the flow through its FINs as conntrack's state machine does.
// It may also get a flow before its handshake is over, with the client's
// SYN: then it forwards the backend's SYN-ACK (conntrack's initSender and
// window check, any option layout) and the client's ACK of it, which
// completes the handshake here, and it marks the flow's slot in fp_est for
// the engine, which reads that array through a shared mapping between
// batches.
// The ACK that ends a flow (in LastAck) it forwards too, and then it
// deletes the flow's keys and tells the engine the flow's last state
// through the worker's ring buffer (fp_events), which the engine reads
// between batches without a system call; the engine keeps the TIME_WAIT
// and the NAT port's memory. Should that ring be full, the ACK goes to the
// engine instead.
// It gives everything else back to the engine: SYN and RST, segments whose
// options it does not parse, and segments its window check refuses.
// A flow it gives a segment back for is marked evicted, under the flow's
// lock, so that every later segment of the flow follows the first into the
// ring in order; the engine then takes the flow's state back.
//
// The layout of every map value is mirrored in fastpath.go; change both.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct fp_key {
	__u32 saddr, daddr; // as the segment arrives, network order
	__u16 sport, dport;
};

struct fp_ref {
	__u32 id;  // key into fp_flows
	__u32 dir; // 0: from the client, 1: from the backend
};

// conntrack's peer: one side's sender state.
struct fp_peer {
	__u32 end, maxend, maxwin, maxack;
	__u16 win;
	__u8 scale, flags;
};

#define PEER_WSCALE 1   // conntrack's peerWScale
#define PEER_SACKPERM 2 // conntrack's peerSACKPerm
#define PEER_MAXACK 4 // conntrack's peerMaxAck
#define MAX_WSCALE 14 // RFC 7323 2.3

// How one direction is rewritten; written once by the engine.
struct fp_dir {
	__u32 saddr, daddr; // network order
	__u16 sport, dport; // network order
	__u32 seq_add, ack_add, tsval_add, tsecr_add;
	__u32 ifindex;
	__u8 dmac[6], smac[6];
	__s8 win_shift;
	__u8 pad[3];
};

struct fp_flow {
	struct bpf_spin_lock lock;
	__u32 evicted; // why the flow went back to the engine; 0 while it is ours
	struct fp_peer peers[2];
	struct fp_dir dir[2];
	__u64 last_ns; // bpf_ktime_get_ns of the last segment that moved the state
	__u64 packets[2], bytes[2];
	__u32 ts_last, seq_end; // the last TSval and the furthest end sent to the backend
	__u32 note;             // NOTE_TS: ts_last is set
	__u32 backend;          // the engine's backend id, for its counters
	__u32 state;            // conntrack's State: ST_SYN_SENT to ST_TIME_WAIT
	__u32 early;            // for a flow given in ST_SYN_RECV: 1 + its slot in fp_est; else 0
	__u32 gen;              // the engine's number for this offload, echoed in fp_event
	__u32 pad;
};

// fp_event is what the engine learns of a flow the program closed: its
// state after the last ACK, as the engine takes a flow back.
struct fp_event {
	__u32 id, gen;
	__u32 state, note;
	__u32 ts_last, seq_end;
	struct fp_peer peers[2];
	__u64 last_ns;
	__u64 packets[2], bytes[2];
};

// conntrack's states (conntrack.State) the program moves a flow between.
// Both directions move them alike, as in conntrack's transitions table
// (itself after the kernel's tcp_conntracks): a FIN takes Established to
// FinWait and FinWait or CloseWait to LastAck; an ACK takes FinWait to
// CloseWait. The ACK in LastAck would take the flow to TimeWait: that one
// goes to the engine. In SynRecv only the client's ACK of the backend's
// SYN-ACK, exactly (RFC 9293 3.10.7.4, as conntrack checks it), moves the
// flow on, to Established; anything else there goes to the engine. In
// SynSent only the backend's SYN-ACK of the client's SYN moves it on, to
// SynRecv.
#define ST_SYN_SENT 1
#define ST_SYN_RECV 2
#define ST_ESTABLISHED 3
#define ST_FIN_WAIT 4
#define ST_CLOSE_WAIT 5
#define ST_LAST_ACK 6
#define ST_TIME_WAIT 7

#define NOTE_TS 1

// Counters, per CPU.
enum {
	STAT_PACKETS,
	STAT_BYTES,
	STAT_EVICT_FLAGS,   // SYN, RST or no ACK
	STAT_EVICT_OPTIONS, // options it does not parse (SACK blocks, IP options, ...)
	STAT_EVICT_WINDOW,  // outside the window, or an ACK of unseen data
	STAT_PASSED,        // segments of an evicted flow passed to the engine
	STAT_IGNORED,       // forwarded without a state change (retransmissions, old ACKs)
	STAT_EVICT_CLOSE,   // the ACK that takes a flow to TIME_WAIT
	STAT_ESTABLISHED,   // handshakes completed here (flows given in SynRecv)
	STAT_CLOSED,        // flows closed here (the last ACK forwarded, the engine told)
	STAT_EVENTS_LOST,   // closes the engine could not be told of (ring full): given back instead
	NUM_STATS,
};

// Eviction reasons, as written to fp_flow.evicted.
enum {
	EVICT_FLAGS = 1,
	EVICT_OPTIONS,
	EVICT_WINDOW,
	EVICT_CLOSE,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2);
	__type(key, struct fp_key);
	__type(value, struct fp_ref);
} fp_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_flow);
} fp_flows SEC(".maps");

// fp_est[slot] is set to 1 when the handshake of the flow given with that
// slot (fp_flow.early) completes here. The engine maps it (BPF_F_MMAPABLE)
// and reads it between batches without a system call, so that its count of
// half-open flows, on which the SYN cookie defence turns, stays right.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} fp_est SEC(".maps");

// fp_events[worker] is the ring buffer through which the program tells
// that worker (the top 8 bits of a flow id) of the flows it closed.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_RINGBUF);
		__uint(max_entries, 1 << 18); // fastpath.DefaultEventRing
	});
} fp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NUM_STATS);
	__type(key, __u32);
	__type(value, __u64);
} fp_stats SEC(".maps");

static __always_inline void count(__u32 what, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&fp_stats, &what);
	if (v)
		*v += n;
}

static __always_inline int before(__u32 a, __u32 b) { return (__s32)(a - b) < 0; }
static __always_inline int after(__u32 a, __u32 b) { return (__s32)(b - a) < 0; }

#define MAX_ACK_WIN_CONST 66000

enum { WIN_OK, WIN_IGNORE, WIN_INVALID };

// next_state is conntrack's transition for a FIN or an ACK that passed the
// window check, in the states the program holds.
static __always_inline __u32 next_state(__u32 st, __u32 fin)
{
	switch (st) {
	case ST_ESTABLISHED:
		return fin ? ST_FIN_WAIT : ST_ESTABLISHED;
	case ST_FIN_WAIT:
	case ST_CLOSE_WAIT:
		return fin ? ST_LAST_ACK : ST_CLOSE_WAIT;
	}
	return st;
}

// in_window is conntrack's inWindow for an ACK segment without SYN on a
// synchronized flow (len counts a FIN as one): the four bounds, then the
// updates. ack and sack are in the receiver's numbering; sack is the
// highest SACK edge if above ack.
// Called with the flow's lock held.
static __always_inline int in_window(struct fp_flow *fl, __u32 d, __u32 seq, __u32 len, __u32 ack, __u32 sack, __u16 rawwin, int syn)
{
	struct fp_peer *snd = &fl->peers[d & 1], *rcv = &fl->peers[(d ^ 1) & 1];
	__u32 end = seq + len;
	__u32 win = rawwin;
	__u32 maxack = snd->maxwin > MAX_ACK_WIN_CONST ? snd->maxwin : MAX_ACK_WIN_CONST;

	if (snd->maxwin == 0)
		return WIN_INVALID;
	if (!before(seq, snd->maxend + 1))
		return WIN_INVALID; // I (the engine decides about an overshoot)
	if (!before(sack, rcv->end + 1))
		return WIN_INVALID; // III
	if (rcv->maxwin != 0 && !after(end, snd->end - rcv->maxwin - 1))
		return WIN_IGNORE; // II: a retransmission of acknowledged data
	if (!after(sack, rcv->end - maxack - 1))
		return WIN_IGNORE; // IV: an overly delayed ACK

	if (!syn)
		win <<= (snd->scale & 15); // a SYN's window is never scaled
	__u32 swin = win + (sack - ack);
	if (snd->maxwin < swin)
		snd->maxwin = swin;
	if (after(end, snd->end))
		snd->end = end;
	if (!(snd->flags & PEER_MAXACK) || after(ack, snd->maxack)) {
		snd->maxack = ack;
		snd->flags |= PEER_MAXACK;
	}
	if (rcv->maxwin != 0 && after(end, snd->maxend))
		rcv->maxwin += end - snd->maxend;
	if (after(sack + win, rcv->maxend - 1)) {
		rcv->maxend = sack + win;
		if (win == 0)
			rcv->maxend++;
	}
	snd->win = rawwin;
	return WIN_OK;
}

// parse_syn_options reads the options of a SYN-ACK in the layouts Linux
// writes them (tcp_options_write): MSS; then SACK-permitted and
// timestamps together, timestamps after two NOPs, SACK-permitted after two
// NOPs, or neither; then, optionally, a NOP and the window scale. It
// returns the window scale (ws, -1 if none), whether SACK is permitted and
// where the timestamps are, or -1 for any other layout, which goes to the
// engine. (A loop over any layout, as conntrack's SYNOptions reads them,
// took the verifier past its million instructions.)
static __always_inline int parse_syn_options(struct tcphdr *tcp, void *data_end, int *ws, int *sackperm, __u32 **ts)
{
	__u8 *opt = (void *)(tcp + 1);
	__u32 olen = tcp->doff * 4 - 20;
	if (olen < 4 || (void *)(opt + 4) > data_end || opt[0] != 2 || opt[1] != 4)
		return -1;
	__u32 next = 4;
	if (olen >= 16 && (void *)(opt + 16) <= data_end) {
		__u32 w = *(__u32 *)(opt + 4);
		if (w == bpf_htonl(0x0402080a)) {
			*sackperm = 1;
			*ts = (__u32 *)(opt + 8);
			next = 16;
		} else if (w == bpf_htonl(0x0101080a)) {
			*ts = (__u32 *)(opt + 8);
			next = 16;
		}
	}
	if (next == 4 && olen >= 8 && (void *)(opt + 8) <= data_end && *(__u32 *)(opt + 4) == bpf_htonl(0x01010402)) {
		*sackperm = 1;
		next = 8;
	}
	if (olen == next)
		return 0;
	if (olen != next + 4 || next > 16)
		return -1;
	__u8 *w = opt + next;
	if ((void *)(w + 4) > data_end || w[0] != 1 || w[1] != 3 || w[2] != 3)
		return -1;
	*ws = w[3] < MAX_WSCALE ? w[3] : MAX_WSCALE;
	return 0;
}

// init_sender is conntrack's initSender for the backend's SYN-ACK: its
// side's state from it, and RFC 7323 2.2's rule that scaling needs both
// sides' options. Called with the flow's lock held.
static __always_inline void init_sender(struct fp_flow *fl, __u32 seq, __u16 rawwin, int ws, int sackperm)
{
	struct fp_peer *snd = &fl->peers[1], *rcv = &fl->peers[0];
	snd->end = snd->maxend = seq + 1;
	snd->maxwin = rawwin ? rawwin : 1;
	snd->win = rawwin;
	snd->flags &= ~(PEER_WSCALE | PEER_SACKPERM | PEER_MAXACK);
	snd->scale = 0;
	if (ws >= 0) {
		snd->flags |= PEER_WSCALE;
		snd->scale = ws;
	}
	if (sackperm)
		snd->flags |= PEER_SACKPERM;
	if (!(snd->flags & PEER_WSCALE) || !(rcv->flags & PEER_WSCALE))
		snd->scale = rcv->scale = 0;
}

// tell_closed deletes the keys of a flow the program just took to
// TIME_WAIT, so that no later segment finds it, and tells the flow's
// worker. If the worker's ring is full it marks the flow evicted instead
// and returns 0: the ACK and what follows go to the engine, which takes
// the flow back from the map (Take) as for any eviction. The engine
// deletes the flow's entry when it reads the event.
static __always_inline int tell_closed(struct fp_flow *fl, struct fp_key *key, struct fp_dir *dr, struct fp_event *ev)
{
	// The other direction's key is the reverse of this one's rewrite.
	struct fp_key other = {.saddr = dr->daddr, .daddr = dr->saddr, .sport = dr->dport, .dport = dr->sport};
	bpf_map_delete_elem(&fp_keys, key);
	bpf_map_delete_elem(&fp_keys, &other);
	__u32 w = ev->id >> 24;
	void *rb = bpf_map_lookup_elem(&fp_events, &w);
	if (rb && bpf_ringbuf_output(rb, ev, sizeof(*ev), BPF_RB_NO_WAKEUP) == 0) {
		count(STAT_CLOSED, 1);
		return 1;
	}
	bpf_spin_lock(&fl->lock);
	if (!fl->evicted)
		fl->evicted = EVICT_CLOSE;
	bpf_spin_unlock(&fl->lock);
	count(STAT_EVENTS_LOST, 1);
	count(STAT_EVICT_CLOSE, 1);
	return 0;
}

// evict hands the flow back to the engine: this segment and every later one
// go up the stack to the packet ring, in order.
static __always_inline int evict(struct fp_flow *fl, __u32 why, __u32 stat)
{
	bpf_spin_lock(&fl->lock);
	if (!fl->evicted)
		fl->evicted = why;
	bpf_spin_unlock(&fl->lock);
	count(stat, 1);
	return TC_ACT_OK;
}

static __always_inline void csum_add(__u32 *sum, __u32 from, __u32 to)
{
	// One's complement difference of a 32-bit field, RFC 1624.
	*sum += (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline void csum_add16(__u32 *sum, __u16 from, __u16 to)
{
	*sum += (__u16)~from + to;
}

static __always_inline __u32 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

// TCP flags, byte 13 of the header.
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10

#define OPT_TS_CANON 0x0101080a // NOP NOP TIMESTAMP(10), the layout Linux and most stacks send


// handle is the program. ip_len is 0 for a frame as it arrives; for a
// frame the engine runs through rawlb_late it is the frame's real IP
// length, the frame being only its headers.
static __always_inline int handle(struct __sk_buff *skb, __u32 ip_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || skb->vlan_present)
		return TC_ACT_OK;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->protocol != IPPROTO_TCP)
		return TC_ACT_OK;
	__u32 ihl = ip->ihl * 4;
	if (ihl < 20 || ip->frag_off & bpf_htons(0x3fff))
		return TC_ACT_OK;
	struct tcphdr *tcp = (void *)ip + ihl;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_OK;

	struct fp_key key = {.saddr = ip->saddr, .daddr = ip->daddr, .sport = tcp->source, .dport = tcp->dest};
	struct fp_ref *ref = bpf_map_lookup_elem(&fp_keys, &key);
	if (!ref)
		return TC_ACT_OK;
	__u32 id = ref->id, d = ref->dir & 1;
	struct fp_flow *fl = bpf_map_lookup_elem(&fp_flows, &id);
	if (!fl)
		return TC_ACT_OK;
	if (fl->evicted) {
		count(STAT_PASSED, 1);
		return TC_ACT_OK;
	}
	struct fp_dir *dr = &fl->dir[d];

	__u8 flags = ((__u8 *)tcp)[13];
	// In SynSent (read again under the lock) only the backend's SYN-ACK.
	int synack = fl->state == ST_SYN_SENT;
	if (synack) {
		if (d != 1 || (flags & (F_SYN | F_RST | F_ACK | F_FIN)) != (F_SYN | F_ACK))
			return evict(fl, EVICT_FLAGS, STAT_EVICT_FLAGS);
	} else if ((flags & (F_SYN | F_RST | F_ACK)) != F_ACK)
		return evict(fl, EVICT_FLAGS, STAT_EVICT_FLAGS);
	__u32 fin = flags & F_FIN;
	if (ihl != 20)
		return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
	int ws = -1, sackperm_opt = 0;
	__u32 *synts = 0;
	if (synack && parse_syn_options(tcp, data_end, &ws, &sackperm_opt, &synts) < 0)
		return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);

	// Options: none; NOP NOP TIMESTAMP; and either followed by NOP NOP
	// SACK with one to four blocks, the layouts Linux sends. Anything else
	// goes to the engine, which reads any layout.
	__u32 doff = tcp->doff * 4;
	__u8 *opt = (void *)(tcp + 1);
	__u32 *ts = synts;
	__u32 o = 0;
	__u32 nsack = 0;
	__u8 *sackp = opt;
	if (!synack) { // a SYN-ACK's options were parsed above; it has no SACK blocks
		if (doff >= 32) {
			if ((void *)(opt + 12) > data_end)
				return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
			if (*(__u32 *)opt == bpf_htonl(OPT_TS_CANON)) {
				ts = (__u32 *)opt + 1;
				o = 12;
			}
		}
		sackp = opt + o;
		if (doff != 20 + o) {
			if ((void *)(sackp + 4) > data_end || sackp[0] != 1 || sackp[1] != 1 || sackp[2] != 5)
				return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
			__u32 slen = sackp[3];
			nsack = (slen - 2) / 8;
			if (slen < 10 || slen != 2 + 8 * nsack || nsack > 4 || doff != 20 + o + 4 + 8 * nsack)
				return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
			if ((void *)(sackp + 4 + 8 * nsack) > data_end)
				return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
		}
	}

	// The IP length, not the frame's: a NIC's frame may carry Ethernet
	// padding. A GSO frame above 64 KB (BIG TCP) says 0: the engine
	// counts and drops those, so they go to it.
	__u32 iplen = ip_len;
	if (!iplen) {
		iplen = bpf_ntohs(ip->tot_len);
		if (iplen > skb->len - sizeof(*eth))
			return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
	}
	if (iplen < ihl + doff)
		return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
	__u32 len = iplen - ihl - doff;
	__u32 seq = bpf_ntohl(tcp->seq), ack = bpf_ntohl(tcp->ack_seq);
	__u16 rawwin = bpf_ntohs(tcp->window);
	__u32 seq2 = seq + dr->seq_add, ack2 = ack + dr->ack_add;

	// SACK edges acknowledge the other side's bytes, like the ACK: the
	// same translation, and the highest right edge counts as the ACK in
	// the window check if the receiver allowed SACK.
	__u32 tsum = 0;
	__u32 sack = ack2;
	int sackperm = fl->peers[(d ^ 1) & 1].flags & PEER_SACKPERM;
	for (int i = 0; i < 4; i++) {
		if (i >= nsack)
			break;
		__u32 *edge = (__u32 *)(sackp + 4 + 8 * i);
		if ((void *)(edge + 2) > data_end)
			return evict(fl, EVICT_OPTIONS, STAT_EVICT_OPTIONS);
		__u32 l = bpf_ntohl(edge[0]) + dr->ack_add, r = bpf_ntohl(edge[1]) + dr->ack_add;
		if (sackperm && after(r, sack))
			sack = r;
		if (dr->ack_add) {
			__u32 nl = bpf_htonl(l), nr = bpf_htonl(r);
			csum_add(&tsum, edge[0], nl);
			csum_add(&tsum, edge[1], nr);
			edge[0] = nl;
			edge[1] = nr;
		}
	}

	__u64 now = bpf_ktime_get_ns(); // no helper calls under the lock
	struct fp_dir dc; // this direction's rewrite, as the flow had it under the lock
	bpf_spin_lock(&fl->lock);
	// The entry must still be this segment's flow. The maps are
	// preallocated, so the kernel reuses a deleted entry's memory at once:
	// since the lookup above the engine may have deleted this flow (it
	// read the event of its close) and given the memory to another. The
	// other direction's rewrite is the reverse of this segment's key.
	struct fp_dir *od = &fl->dir[(d ^ 1) & 1];
	if (fl->evicted || od->daddr != key.saddr || od->saddr != key.daddr || od->dport != key.sport || od->sport != key.dport) {
		bpf_spin_unlock(&fl->lock);
		count(STAT_PASSED, 1);
		return TC_ACT_OK;
	}
	dc = *dr;
	int v;
	__u32 est = 0, closed = 0;
	struct fp_event ev;
	if (fl->state == ST_TIME_WAIT) {
		// Closed a moment ago on another CPU, whose keys are going: the
		// engine has the flow, or will have it with the event.
		bpf_spin_unlock(&fl->lock);
		count(STAT_PASSED, 1);
		return TC_ACT_OK;
	}
	if (synack) {
		v = WIN_INVALID; // not the answer to the client's SYN: the engine decides
		if (fl->state == ST_SYN_SENT && ack2 == fl->peers[0].end) {
			struct fp_peer was[2] = {fl->peers[0], fl->peers[1]};
			init_sender(fl, seq, rawwin, ws, sackperm_opt);
			v = in_window(fl, 1, seq, len + 1, ack2, ack2, rawwin, 1);
			if (v != WIN_OK) {
				fl->peers[0] = was[0];
				fl->peers[1] = was[1];
				v = WIN_INVALID;
			}
		}
	} else if (fl->state == ST_SYN_RECV && (d != 0 || fin || ack2 != fl->peers[1].end))
		v = WIN_INVALID; // not the handshake's ACK: the engine decides
	else
		v = in_window(fl, d, seq, len + fin, ack2, sack, rawwin, 0);
	if (v == WIN_INVALID) {
		fl->evicted = EVICT_WINDOW;
		bpf_spin_unlock(&fl->lock);
		count(STAT_EVICT_WINDOW, 1);
		// The SACK edges may have been rewritten already: put them back
		// for the engine, which translates them itself. (Reading them in
		// one loop and rewriting them in another, after the check, would
		// need no undo; but clang turns the separate read loop's bounds
		// into arithmetic on data_end, which the verifier refuses.)
		if (dr->ack_add) {
			for (int i = 0; i < 4; i++) {
				if (i >= nsack)
					break;
				__u32 *edge = (__u32 *)(sackp + 4 + 8 * i);
				if ((void *)(edge + 2) > data_end)
					break;
				edge[0] = bpf_htonl(bpf_ntohl(edge[0]) - dr->ack_add);
				edge[1] = bpf_htonl(bpf_ntohl(edge[1]) - dr->ack_add);
			}
		}
		return TC_ACT_OK;
	}
	if (v == WIN_OK) {
		fl->last_ns = now;
		if (synack)
			fl->state = ST_SYN_RECV;
		else if (fl->state == ST_SYN_RECV) {
			fl->state = ST_ESTABLISHED;
			est = fl->early;
		} else if (fl->state == ST_LAST_ACK && !fin) {
			fl->state = ST_TIME_WAIT; // conntrack: an ACK in LastAck, either way
			closed = 1;
		} else
			fl->state = next_state(fl->state, fin);
	}
	fl->packets[d]++;
	fl->bytes[d] += iplen;
	if (d == 0) {
		if (ts) {
			fl->ts_last = bpf_ntohl(ts[0]) + dr->tsval_add;
			fl->note |= NOTE_TS;
		}
		if ((__s32)(seq2 + len + fin - fl->seq_end) > 0)
			fl->seq_end = seq2 + len + fin; // a FIN counts, as in packet.TCP.SeqEnd
	}
	if (closed) {
		ev.id = id;
		ev.gen = fl->gen;
		ev.state = ST_TIME_WAIT;
		ev.note = fl->note;
		ev.ts_last = fl->ts_last;
		ev.seq_end = fl->seq_end;
		ev.peers[0] = fl->peers[0];
		ev.peers[1] = fl->peers[1];
		ev.last_ns = now;
		ev.packets[0] = fl->packets[0];
		ev.packets[1] = fl->packets[1];
		ev.bytes[0] = fl->bytes[0];
		ev.bytes[1] = fl->bytes[1];
	}
	bpf_spin_unlock(&fl->lock);
	// From here on only the copies: once the engine reads the event it
	// deletes the entry, and the memory may hold another flow.
	dr = &dc;
	if (closed && !tell_closed(fl, &key, dr, &ev))
		return TC_ACT_OK; // given back: the engine forwards the ACK
	if (v == WIN_IGNORE)
		count(STAT_IGNORED, 1);
	if (est) {
		__u32 slot = est - 1;
		__u64 *e = bpf_map_lookup_elem(&fp_est, &slot);
		if (e)
			*e = 1;
		count(STAT_ESTABLISHED, 1);
	}

	// The rewrite. Sums of the changes: pseudo-header (addresses) and the
	// rest of the TCP header, applied by the helpers, which know whether
	// the checksum is partial (then only the pseudo-header part counts).
	__u32 psum = 0;
	csum_add(&psum, ip->saddr, dr->saddr);
	csum_add(&psum, ip->daddr, dr->daddr);
	__u32 oports = ((__u32)tcp->source << 16) | tcp->dest;
	__u32 nports = ((__u32)dr->sport << 16) | dr->dport;
	csum_add(&tsum, oports, nports);
	__u32 nseq = bpf_htonl(seq2), nack = bpf_htonl(ack2);
	csum_add(&tsum, tcp->seq, nseq);
	csum_add(&tsum, tcp->ack_seq, nack);
	ip->saddr = dr->saddr;
	ip->daddr = dr->daddr;
	tcp->source = dr->sport;
	tcp->dest = dr->dport;
	tcp->seq = nseq;
	tcp->ack_seq = nack;
	if (ts && (dr->tsval_add | dr->tsecr_add)) {
		__u32 tv = bpf_htonl(bpf_ntohl(ts[0]) + dr->tsval_add);
		__u32 te = bpf_htonl(bpf_ntohl(ts[1]) + dr->tsecr_add);
		csum_add(&tsum, ts[0], tv);
		csum_add(&tsum, ts[1], te);
		ts[0] = tv;
		ts[1] = te;
	}
	if (dr->win_shift) {
		__u32 w = rawwin;
		if (dr->win_shift < 0)
			w >>= (-dr->win_shift) & 15;
		else {
			w <<= dr->win_shift & 15;
			if (w > 0xffff)
				w = 0xffff;
		}
		__u16 nw = bpf_htons((__u16)w);
		csum_add16(&tsum, tcp->window, nw);
		tcp->window = nw;
	}
	__builtin_memcpy(eth->h_dest, dr->dmac, 6);
	__builtin_memcpy(eth->h_source, dr->smac, 6);

	__u32 ipoff = sizeof(*eth);
	__u32 tcpoff = ipoff + ihl;
	__u32 ifindex = dr->ifindex;
	psum = csum_fold32(psum);
	tsum = csum_fold32(tsum);
	if (bpf_l3_csum_replace(skb, ipoff + offsetof(struct iphdr, check), 0, psum, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_l4_csum_replace(skb, tcpoff + offsetof(struct tcphdr, check), 0, psum, BPF_F_PSEUDO_HDR) < 0)
		return TC_ACT_SHOT;
	if (bpf_l4_csum_replace(skb, tcpoff + offsetof(struct tcphdr, check), 0, tsum, 0) < 0)
		return TC_ACT_SHOT;
	count(STAT_PACKETS, 1);
	count(STAT_BYTES, iplen);
	return bpf_redirect(ifindex, 0);
}

SEC("tc")
int rawlb_fastpath(struct __sk_buff *skb)
{
	return handle(skb, 0);
}

// rawlb_late is never attached: the engine runs it (BPF_PROG_TEST_RUN) on
// the headers of a segment that was already in the ring when its flow went
// to the kernel, with the segment's real IP length in mark, so that the
// segment is tracked and rewritten in the same maps as the ones around it.
SEC("tc")
int rawlb_late(struct __sk_buff *skb)
{
	__u32 len = skb->mark;
	if (len == 0)
		return TC_ACT_OK;
	return handle(skb, len);
}

char LICENSE[] SEC("license") = "GPL";
