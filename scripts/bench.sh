#!/usr/bin/env bash
# Side-by-side benchmark of rawlb against one backend reached directly, the
# kernel's own full NAT (nftables) and HAProxy in mode tcp, on a namespace
# network like the end-to-end tests':
#
#   switch ns: bridge br0 (stp off, forward_delay 0)
#   client   198.18.0.10   wrk, redis-benchmark, iperf3 -c
#   balancer 198.18.0.2    kernel NAT, HAProxy or rawlb on :20000
#   be1..3   198.18.0.11-13 nginx on :8090 (GET / short body, /big 64 MiB),
#                           redis-server on :6379 (no persistence),
#                           iperf3 -s on :5201 (be1 only)
#
# Every veth is created inside the lab's namespaces (offloads at their
# defaults); the host's own namespace, firewall and sysctls are never
# touched. Each contender gets a lab of its own, built anew and torn down
# after it, so no nft table, conntrack entry, sysctl or process of one is
# left for the next, and no TIME_WAIT either: a backend still holding one
# for 198.18.0.2:P from the previous contender answers a new SYN from the
# same address and port with an ACK, the client resets and retransmits its
# SYN, and the next contender's connection rate collapses.
#
# Loads, from the client; BENCH_LOADS picks some (default the first five,
# e.g. BENCH_LOADS="redis iperf"; restart only when named):
#   conn       wrk -t2 -c32 -H 'Connection: close' /   a connection per request
#   keepalive  wrk -t2 -c32 /                          keep-alive requests
#   bulk       wrk -t1 -c1 /big                        one bulk stream
#   redis      redis-benchmark -c 200 -n 100000 -t set, then -t get, -q --csv
#              against the three redis-servers
#   iperf      iperf3 -P 4, -P 4 -R, -P 1, -P 1 -R (Gbit/s) to be1 alone
#   restart    rawlb contenders only: connrate (internal/tools/connrate, built
#              here) runs 32 clients doing GET / with Connection: close for
#              BENCH_RESTART_DURATION (default 30s) and counts connections
#              and errors in 10 ms buckets; at a third of it rawlb gets
#              SIGTERM and the same command line starts again on the same
#              -state-dir, at two thirds the running process gets SIGUSR2
#              (an upgrade to the same binary; skipped for a binary whose
#              -h does not mention USR2). The report gets connections and
#              errors second by second, and an SVG chart goes to
#              BENCH_RESTART_SVG (default bench-restart.svg beside
#              BENCH_OUT).
# The wrk and iperf3 loads run for BENCH_DURATION (default 10s) each;
# redis-benchmark runs its 100000 requests. Each contender serves one
# service at a time on :20000 (http: nginx x3, redis: redis-server x3,
# iperf: be1's iperf3 alone, since iperf3's control and data connections
# must reach the same server), restarted in a fresh balancer namespace
# between services.
#
# BENCH_IPERF_CC picks the TCP congestion control of every iperf3 test
# (iperf3 -C, which its server takes up too); by default a test runs with
# the lab's, which a new namespace inherits from the host: bbr on a kernel
# built with CONFIG_DEFAULT_TCP_CONG="bbr", cubic on Debian's and Ubuntu's.
# It matters: with bbr on 2 cores the client sends a flow's segments from
# both CPUs, out of order, and the more so the faster the forwarder
# (docs/performance.md, "What the -P 4 gap is"); the report names the one
# used.
#
# Needs root, haproxy, nft, ip, curl and each load's tools (nginx and wrk;
# redis-server, redis-benchmark and redis-cli; iperf3: scripts/bench-deps.sh)
# and bin/rawlb (make build; RAWLB_BIN overrides); go for the restart load
# and for BENCH_VARIANTS' _REV builds (GO overrides). BENCH_CONTENDERS runs
# only some contenders (default "direct knat haproxy rawlb").
#
# BENCH_VARIANTS adds further rawlb contenders, run in the same rounds and
# reported like rawlb, with their ratios to the kernel NAT and to plain
# rawlb: BENCH_VARIANTS="base cookies" adds rawlb-base and rawlb-cookies.
# For a variant NAME ([A-Za-z0-9_], up to 16):
#   RAWLB_VARIANT_NAME_BIN=PATH  its binary (default: RAWLB_BIN's)
#   RAWLB_VARIANT_NAME_REV=REV   or a binary built here from that commit of
#                                this repository (git archive into the work
#                                directory, go build; nothing is checked out)
#   RAWLB_VARIANT_NAME_ARGS=...  extra flags, split on whitespace (no quoting)
# e.g. RAWLB_VARIANT_base_REV=3dc9834 (the engine before its rewrite),
# RAWLB_VARIANT_cookies_ARGS="-syn-cookies on". Every rawlb contender gets
# only flags every rawlb version knows (-port, -metrics, -hc-interval for
# iperf3), then its extra flags; -state-dir (in the work directory, fresh
# for each start) only if its -h lists it. BENCH_ROUNDS
# (default 3) repeats the whole set, each round starting with the next
# contender, so a slow minute on a shared machine hits every contender
# alike; the table shows each contender's median round and every round's
# ratio. The results table goes to stdout and, as markdown, to BENCH_OUT
# (default docs/bench-latest.md).
set -euo pipefail

caller_pwd=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-3}
OUT=${BENCH_OUT:-$ROOT/docs/bench-latest.md}
case $OUT in /*) ;; *) OUT=$caller_pwd/$OUT ;; esac
RAWLB=${RAWLB_BIN:-$ROOT/bin/rawlb}
case $RAWLB in /*) ;; *) RAWLB=$caller_pwd/$RAWLB ;; esac
RESTART_DURATION=${BENCH_RESTART_DURATION:-30s}
RESTART_SVG=${BENCH_RESTART_SVG:-$(dirname "$OUT")/bench-restart.svg}
case $RESTART_SVG in /*) ;; *) RESTART_SVG=$caller_pwd/$RESTART_SVG ;; esac
IPERF_CC=${BENCH_IPERF_CC:-}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

readonly LB_IP=198.18.0.2 CLIENT_IP=198.18.0.10 LB_PORT=20000 BE_PORT=8090
readonly REDIS_PORT=6379 IPERF_PORT=5201
readonly BACKEND_IPS=(198.18.0.11 198.18.0.12 198.18.0.13)
readonly METRICS_ADDR=127.0.0.1:9120
readonly BIG_BYTES=$((64 << 20))
readonly ALL_LOADS=(conn keepalive bulk redis iperf restart)
readonly DEFAULT_LOADS=(conn keepalive bulk redis iperf)
readonly ALL_CONTENDERS=(direct knat haproxy rawlb)
# The rows each load reports: redis one per redis-benchmark test, iperf
# one per iperf3 run.
readonly REDIS_ROWS=(redis-set redis-get) IPERF_ROWS=(iperf-p4 iperf-p4r iperf-p1 iperf-p1r)

die() {
	echo "bench: $*" >&2
	exit 1
}

log() {
	echo "bench: $*" >&2
}

# BENCH_CONTENDERS picks some of them for a quick look, e.g. "haproxy rawlb".
read -r -a CONTENDERS <<<"${BENCH_CONTENDERS:-${ALL_CONTENDERS[*]}}"
for c in "${CONTENDERS[@]}"; do
	[[ " ${ALL_CONTENDERS[*]} " == *" $c "* ]] || die "BENCH_CONTENDERS: unknown contender $c (want some of: ${ALL_CONTENDERS[*]})"
done

# BENCH_VARIANTS: more rawlb contenders, named rawlb-NAME, each with its
# binary (VBIN, or VREV to build), its extra flags (VARGS) and its letter
# in the tables (after rawlb's d).
read -r -a VARIANTS <<<"${BENCH_VARIANTS:-}"
declare -A VBIN=() VREV=() VARGS=() VLETTER=()
letters=(e f g h i j k l m n o p) any_rev=false
for v in "${VARIANTS[@]}"; do
	[[ $v =~ ^[A-Za-z0-9_]{1,16}$ ]] || die "BENCH_VARIANTS: bad name $v (want [A-Za-z0-9_], up to 16)"
	[ -z "${VLETTER[$v]:-}" ] || die "BENCH_VARIANTS: $v given twice"
	[ ${#VLETTER[@]} -lt ${#letters[@]} ] || die "BENCH_VARIANTS: at most ${#letters[@]} variants"
	VLETTER[$v]=${letters[${#VLETTER[@]}]}
	bin_var=RAWLB_VARIANT_${v}_BIN rev_var=RAWLB_VARIANT_${v}_REV args_var=RAWLB_VARIANT_${v}_ARGS
	VBIN[$v]=${!bin_var:-} VREV[$v]=${!rev_var:-} VARGS[$v]=${!args_var:-}
	[ -z "${VBIN[$v]}" ] || [ -z "${VREV[$v]}" ] || die "variant $v: give $bin_var or $rev_var, not both"
	case ${VBIN[$v]} in "" | /*) ;; *) VBIN[$v]=$caller_pwd/${VBIN[$v]} ;; esac
	[ -z "${VREV[$v]}" ] || any_rev=true
	[ -n "${VBIN[$v]}${VREV[$v]}" ] || VBIN[$v]=$RAWLB
	[ -z "${VBIN[$v]}" ] || [ -x "${VBIN[$v]}" ] || die "variant $v: ${VBIN[$v]} is not an executable"
	CONTENDERS+=("rawlb-$v")
done
readonly CONTENDERS VARIANTS

# is_rawlb C: C is rawlb or one of its variants.
is_rawlb() {
	[[ $1 == rawlb || $1 == rawlb-* ]]
}

# BENCH_LOADS picks some loads. LOADS are the wrk loads among them (the
# first table), NEW_ROWS the rows of redis and iperf (the second), ROWS
# both, RESTART whether the restart load runs (on http, rawlb contenders
# only; a table of its own), and SERVICES what the contenders must balance
# for them, in order.
read -r -a picked <<<"${BENCH_LOADS:-${DEFAULT_LOADS[*]}}"
LOADS=() NEW_ROWS=() SERVICES=()
for l in "${picked[@]}"; do
	[[ " ${ALL_LOADS[*]} " == *" $l "* ]] || die "BENCH_LOADS: unknown load $l (want some of: ${ALL_LOADS[*]})"
done
for l in conn keepalive bulk; do
	[[ " ${picked[*]} " != *" $l "* ]] || LOADS+=("$l")
done
RESTART=false
[[ " ${picked[*]} " != *" restart "* ]] || RESTART=true
[ ${#LOADS[@]} -eq 0 ] && ! $RESTART || SERVICES+=(http)
if [[ " ${picked[*]} " == *" redis "* ]]; then
	NEW_ROWS+=("${REDIS_ROWS[@]}") SERVICES+=(redis)
fi
if [[ " ${picked[*]} " == *" iperf "* ]]; then
	NEW_ROWS+=("${IPERF_ROWS[@]}") SERVICES+=(iperf)
fi
[ ${#SERVICES[@]} -gt 0 ] || die "BENCH_LOADS is empty (want some of: ${ALL_LOADS[*]})"
ROWS=("${LOADS[@]}" "${NEW_ROWS[@]}")
readonly LOADS NEW_ROWS SERVICES ROWS RESTART

# wants SERVICE: SERVICE is among those this run measures.
wants() {
	[[ " ${SERVICES[*]} " == *" $1 "* ]]
}

[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "BENCH_DURATION=$DURATION: want a wrk duration such as 10s, 2m"
[[ $ROUNDS =~ ^[1-9]$ ]] || die "BENCH_ROUNDS=$ROUNDS: want a number of rounds from 1 to 9"
readonly ROUNDS
[[ $RESTART_DURATION =~ ^([1-9][0-9]*)s?$ ]] && [ "${BASH_REMATCH[1]}" -ge 9 ] ||
	die "BENCH_RESTART_DURATION=$RESTART_DURATION: want whole seconds, at least 9 (e.g. 30s)"
RESTART_S=${RESTART_DURATION%s}
readonly RESTART_S
# LAB_CC: the congestion control a lab's namespaces start with (a new
# namespace takes the initial namespace's, which a container's /proc/sys
# may not show), read in the first lab built.
LAB_CC=""
if [ -n "$IPERF_CC" ]; then
	available=$(cat /proc/sys/net/ipv4/tcp_available_congestion_control)
	[[ " $available " == *" $IPERF_CC "* ]] || die "BENCH_IPERF_CC=$IPERF_CC: not one this kernel has ($available)"
fi
readonly IPERF_CC
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces); run it as: sudo make bench"
tools=(ip bridge nft haproxy curl top getconf)
! wants http || tools+=(nginx)
[ ${#LOADS[@]} -eq 0 ] || tools+=(wrk)
! wants redis || tools+=(redis-server redis-benchmark redis-cli)
! wants iperf || tools+=(iperf3)
for tool in "${tools[@]}"; do
	command -v "$tool" >/dev/null || die "$tool not found: run scripts/bench-deps.sh (BENCH_LOADS=\"${picked[*]}\")"
done
[ -x "$RAWLB" ] || die "$RAWLB not found: run make build first"
if $RESTART || $any_rev; then
	[ -x "$GO" ] || die "go not found (GO=$GO): the restart load and RAWLB_VARIANT_*_REV build with it"
fi

duration_seconds() {
	local n=${DURATION%[smh]}
	case $DURATION in
	*m) echo $((n * 60)) ;;
	*h) echo $((n * 3600)) ;;
	*) echo "$n" ;;
	esac
}
DURATION_S=$(duration_seconds)
readonly DURATION_S
HZ=$(getconf CLK_TCK)
readonly HZ

# A random tag keeps this run's namespaces apart from any other lab's and
# lets a human spot leftovers of a killed run: ip netns list | grep rlbbench-
TAG=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
readonly P="rlbbench-$TAG-"
# A run holds a lock named after its tag for as long as it lives, so that
# the next run can tell a killed run's namespaces (SIGKILL skips the EXIT
# trap) from a running one's, and delete them: see remove_stale_labs.
readonly LOCKDIR=/run/lock
exec {TAG_LOCK}>"$LOCKDIR/rawlb-bench-$TAG.lock"
flock -n "$TAG_LOCK"
# The lab of the contender being measured: LAB is its namespaces' prefix.
LAB="" SW="" CLIENT=""
WORK=$(mktemp -d /tmp/rawlb-bench.XXXXXX)
# nginx's workers run as nobody and must read the document root.
chmod 755 "$WORK"

NAMESPACES=() # created, deleted in reverse on exit
# The rawlb process being measured: its command line, its log and those
# of the processes before it in the same service (a restart's).
RAWLB_CMD=() RAWLB_LOG="" RAWLB_LOGS=() RAWLB_MAIN_PID=""

cleanup() {
	local rc=$? pid
	set +e
	trap - EXIT INT TERM
	delete_all_ns
	# Background jobs of this script still running (a sampler, say).
	for pid in $(jobs -p); do
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	# BENCH_LOGS_DIR keeps the balancers' and servers' logs of the run, and
	# rawlb's metrics before and after each load.
	if [ -n "${BENCH_LOGS_DIR:-}" ]; then
		mkdir -p "$BENCH_LOGS_DIR" && find "$WORK" \( -name '*.log' -o -name 'metrics-*' \) -exec cp --parents -t "$BENCH_LOGS_DIR" {} + 2>/dev/null
	fi
	rm -rf "$WORK"
	rm -f "$LOCKDIR/rawlb-bench-$TAG.lock"
	[ "$rc" -eq 0 ] || log "failed (exit $rc); namespaces and processes cleaned up"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# delete_ns NS stops whatever runs in NS (SIGTERM, so rawlb removes its
# firewall, then SIGKILL after 5 s), deletes its veth (which takes the
# switch-side end with it at once) and the namespace.
delete_ns() {
	local ns=$1 pids i
	pids=$(ip netns pids "$ns" 2>/dev/null || true)
	if [ -n "$pids" ]; then
		# shellcheck disable=SC2086 # one pid per word
		kill -TERM $pids 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			[ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
			sleep 0.1
		done
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		# shellcheck disable=SC2086
		[ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
	fi
	ip -n "$ns" link del eth0 2>/dev/null || true
	ip netns delete "$ns" 2>/dev/null || true
	for i in "${!NAMESPACES[@]}"; do
		[ "${NAMESPACES[i]}" = "$ns" ] && NAMESPACES[i]=""
	done
	return 0
}

# remove_stale_labs deletes the namespaces of earlier runs that no longer
# hold their tag's lock: they were killed before their cleanup ran.
remove_stale_labs() {
	local ns tag
	for ns in $(ip netns list | awk '{print $1}' | grep '^rlbbench-' || true); do
		tag=${ns#rlbbench-}
		tag=${tag%%-*}
		[ "$tag" != "$TAG" ] || continue
		if flock -n "$LOCKDIR/rawlb-bench-$tag.lock" true; then
			log "deleting $ns, left by a killed run"
			delete_ns "$ns"
			rm -f "$LOCKDIR/rawlb-bench-$tag.lock"
		fi
	done
}

delete_all_ns() {
	local i
	for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
		[ -z "${NAMESPACES[i]}" ] || delete_ns "${NAMESPACES[i]}"
	done
	NAMESPACES=()
}
remove_stale_labs

add_ns() {
	ip netns add "$1"
	NAMESPACES+=("$1")
}

# add_host NS PORT IP: a host namespace whose eth0 is a veth with its peer,
# named PORT, enslaved on the switch. The MAC derives from the address
# (02:52:4c:00:00:<last octet>, as in internal/netlab), which keeps packet
# captures readable.
add_host() {
	local ns=$1 port=$2 ip=$3 mac
	mac=$(printf '02:52:4c:00:00:%02x' "${ip##*.}")
	add_ns "$ns"
	ip -n "$ns" link add eth0 address "$mac" type veth peer name "$port" netns "$SW"
	ip -n "$SW" link set "$port" addrgenmode none master br0 up
	ip -n "$ns" -batch - <<-EOF
		link set lo up
		link set eth0 addrgenmode none
		addr add $ip/24 dev eth0
		link set eth0 up
	EOF
	wait_until 10 "$ns eth0 up and bridge port $port forwarding" port_ready "$ns" "$port"
}

port_ready() {
	ip -n "$1" -o link show dev eth0 | grep -q 'state UP' &&
		bridge -n "$SW" link show dev "$2" | grep -q 'state forwarding'
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.1 s.
wait_until() {
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	die "timed out after ${secs}s waiting for $what"
}

# start NS LOGFILE CMD...: run CMD in NS in the background. ip netns exec
# execs CMD in place, so $! is CMD's own pid.
start() {
	local ns=$1 logf=$2
	shift 2
	ip netns exec "$ns" "$@" >"$logf" 2>&1 &
	STARTED_PID=$!
}

alive() {
	kill -0 "$1" 2>/dev/null
}

# --- binaries ---

# build_rev NAME REV: rawlb as of commit REV of this repository, for
# variant NAME, into the work directory. git archive reads the commit from
# the object store: nothing is checked out, no worktree or index is
# touched, and the sources go with the work directory on exit.
# safe.directory: under sudo the repository may belong to someone else.
build_rev() {
	local name=$1 rev=$2 commit src=$WORK/src-$1
	commit=$(git -c safe.directory="$ROOT" -C "$ROOT" rev-parse --verify --quiet "$rev^{commit}") ||
		die "variant $name: $rev is not a commit of $ROOT"
	mkdir -p "$src"
	git -c safe.directory="$ROOT" -C "$ROOT" archive --format=tar "$commit" | tar -x -C "$src"
	log "variant $name: building ${commit:0:12} in $src"
	(cd "$src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.version=${commit:0:12}" -o "$WORK/rawlb-$name" ./cmd/rawlb) ||
		die "variant $name: go build of $rev failed"
	VBIN[$name]=$WORK/rawlb-$name
}

# rawlb_bin C: the binary of rawlb contender C.
rawlb_bin() {
	case $1 in
	rawlb) echo "$RAWLB" ;;
	*) echo "${VBIN[${1#rawlb-}]}" ;;
	esac
}

# rawlb_extra_args C: contender C's own flags, one per line.
rawlb_extra_args() {
	case $1 in
	rawlb) ;;
	*)
		local a
		read -r -a a <<<"${VARGS[${1#rawlb-}]}"
		[ ${#a[@]} -eq 0 ] || printf '%s\n' "${a[@]}"
		;;
	esac
}

# What each rawlb contender's binary understands, from its -h: a binary
# from before the engine rewrite has no -state-dir and takes SIGUSR2 for
# the default action (it dies), so it gets neither.
declare -A HAS_STATE_DIR=() HAS_UPGRADE=()
probe_rawlb() {
	local c help
	for c in "${CONTENDERS[@]}"; do
		is_rawlb "$c" || continue
		help=$("$(rawlb_bin "$c")" -h 2>&1 || true)
		HAS_STATE_DIR[$c]=false HAS_UPGRADE[$c]=false
		[[ $help != *-state-dir* ]] || HAS_STATE_DIR[$c]=true
		[[ $help != *USR2* ]] || HAS_UPGRADE[$c]=true
	done
}

# build_tools: connrate, the restart load's client (it counts per 10 ms;
# wrk only gives totals).
build_tools() {
	(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -o "$WORK/connrate" ./internal/tools/connrate) ||
		die "go build ./internal/tools/connrate failed"
}

# --- the lab ---

# build_lab NAME: the switch, the client and the backends of a fresh lab.
build_lab() {
	local i
	LAB=$P$1- SW=${P}$1-sw CLIENT=${P}$1-client
	add_ns "$SW"
	ip -n "$SW" -batch - <<-EOF
		link set lo up
		link add br0 type bridge forward_delay 0 stp_state 0
		link set br0 addrgenmode none
		link set br0 up
	EOF
	# As in the end-to-end lab (internal/netlab): with br_netfilter loaded
	# on the host, every bridged frame would also pass through netfilter,
	# which no real switch does. It took about 3% of all CPU samples here,
	# the same tax on every contender. The sysctls are this namespace's own.
	local f
	for f in bridge-nf-call-iptables bridge-nf-call-ip6tables bridge-nf-call-arptables; do
		ip netns exec "$SW" sh -c "[ ! -e /proc/sys/net/bridge/$f ] || echo 0 >/proc/sys/net/bridge/$f"
	done
	add_host "$CLIENT" client "$CLIENT_IP"
	# wrk closes a Connection: close socket itself once the response is in,
	# often before the proxy's FIN arrives, so the client keeps a TIME_WAIT
	# per request. Without reuse its ports fill up within seconds and wrk
	# burns both cores in connect() looking for a free one (seen with
	# HAProxy: 3k req/s, wrk at 155% CPU). This is the client namespace's
	# own sysctl; the host's is untouched.
	ip netns exec "$CLIENT" sh -c 'echo 1 >/proc/sys/net/ipv4/tcp_tw_reuse'
	[ -n "$LAB_CC" ] || LAB_CC=$(ip netns exec "$CLIENT" cat /proc/sys/net/ipv4/tcp_congestion_control)
	for i in "${!BACKEND_IPS[@]}"; do
		add_host "${LAB}be$((i + 1))" "be$((i + 1))" "${BACKEND_IPS[i]}"
	done
}

start_backends() {
	! wants http || start_nginx
	! wants redis || start_redis
	! wants iperf || start_iperf
}

start_nginx() {
	local i n dir
	if [ ! -e "$WORK/www/big" ]; then
		mkdir -p "$WORK/www"
		chmod 755 "$WORK/www"
		truncate -s "$BIG_BYTES" "$WORK/www/big"
		chmod 644 "$WORK/www/big"
	fi
	for i in "${!BACKEND_IPS[@]}"; do
		n=$((i + 1))
		dir=$WORK/${LAB#"$P"}be$n
		mkdir -p "$dir"
		# keepalive_requests is raised so the keep-alive load measures
		# requests, not nginx closing every 1000th connection.
		cat >"$dir/nginx.conf" <<-EOF
			worker_processes 1;
			pid $dir/nginx.pid;
			error_log $dir/error.log warn;
			events { worker_connections 4096; }
			http {
				access_log off;
				sendfile on;
				tcp_nopush on;
				keepalive_requests 1000000;
				keepalive_timeout 65s;
				default_type application/octet-stream;
				server {
					listen ${BACKEND_IPS[i]}:$BE_PORT backlog=4096;
					root $WORK/www;
					location = / {
						default_type text/plain;
						return 200 "be$n\n";
					}
					location = /big { }
				}
			}
		EOF
		start "${LAB}be$n" "$dir/stdout.log" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
		wait_until 10 "nginx on be$n" client_get "http://${BACKEND_IPS[i]}:$BE_PORT/" >/dev/null
	done
	local size
	size=$(ip netns exec "$CLIENT" curl -s -o /dev/null -w '%{size_download}' --max-time 30 "http://${BACKEND_IPS[0]}:$BE_PORT/big")
	[ "$size" -eq "$BIG_BYTES" ] || die "/big is $size bytes, want $BIG_BYTES"
}

# start_redis: a redis-server on each backend, persistence off (no RDB
# snapshots, no AOF: a SET load must not measure the disk). Each holds a
# key naming its backend, which check_redis_balanced reads through the
# balancer; redis-benchmark's own keys are key:__rand_int__ and friends.
start_redis() {
	local i n dir
	for i in "${!BACKEND_IPS[@]}"; do
		n=$((i + 1))
		dir=$WORK/${LAB#"$P"}be$n-redis
		mkdir -p "$dir"
		start "${LAB}be$n" "$dir/redis.log" redis-server --bind "${BACKEND_IPS[i]}" --port "$REDIS_PORT" \
			--save '' --appendonly no --protected-mode no --daemonize no --dir "$dir" --logfile ''
		wait_until 10 "redis-server on be$n" redis_cmd "${BACKEND_IPS[i]}" "$REDIS_PORT" SET whoami "be$n" >/dev/null
	done
}

# redis_cmd HOST PORT ARGS...: one redis-cli command from the client; it
# fails unless redis answers (redis-cli exits 0 even on an error reply).
redis_cmd() {
	local out
	out=$(ip netns exec "$CLIENT" timeout 3 redis-cli -h "$1" -p "$2" "${@:3}" 2>&1) || return 1
	[[ $out != ERR* && $out != *"Could not connect"* ]] || return 1
	printf '%s\n' "$out"
}

# start_iperf: iperf3's server on be1 only; see use_service.
start_iperf() {
	local dir=$WORK/${LAB#"$P"}be1-iperf
	mkdir -p "$dir"
	start "${LAB}be1" "$dir/iperf3.log" iperf3 -s -B "${BACKEND_IPS[0]}" -p "$IPERF_PORT"
	wait_until 10 "iperf3 server on be1" iperf_probe "${BACKEND_IPS[0]}" "$IPERF_PORT"
}

# iperf_probe HOST PORT: a 1 MB iperf3 run goes through. iperf3's server
# runs one test at a time; the 1 s pause lets it reset before the next.
iperf_probe() {
	ip netns exec "$CLIENT" timeout 10 iperf3 -c "$1" -p "$2" -n 1M >/dev/null 2>&1 || return 1
	sleep 1
}

client_get() {
	ip netns exec "$CLIENT" curl -sf --max-time 2 "$1"
}

# check_balanced URL: six requests through a balancer reach every backend.
check_balanced() {
	local got
	got=$(for _ in 1 2 3 4 5 6; do client_get "$1" || echo fail; done | sort -u | tr '\n' ' ')
	log "six requests to $1 answered by: $got"
	[ "$got" = "be1 be2 be3 " ]
}

# --- contenders ---
# Each start_* balances the service use_service chose. It sets LB_NS (the
# balancer namespace or empty), LB_PID (the balancer process to account
# CPU to, or empty), TARGET_IP and TARGET_PORT (where the client connects)
# and, for http, URL_BASE.

# use_service NAME: what the contender balances next, and on which
# backends. iperf3 is served by be1 alone: its control connection and its
# data connections must reach the same server, which a balancer spreading
# connections over three backends would not do.
use_service() {
	SVC=$1
	case $SVC in
	http) SVC_PORT=$BE_PORT SVC_IPS=("${BACKEND_IPS[@]}") ;;
	redis) SVC_PORT=$REDIS_PORT SVC_IPS=("${BACKEND_IPS[@]}") ;;
	iperf) SVC_PORT=$IPERF_PORT SVC_IPS=("${BACKEND_IPS[0]}") ;;
	esac
}

# check_service: the balancer (or the backend, for direct) answers for the
# current service, on every backend where there are several.
check_service() {
	case $SVC in
	http) check_balanced "$URL_BASE/" ;;
	redis) check_redis_balanced ;;
	iperf) iperf_probe "$TARGET_IP" "$TARGET_PORT" ;;
	esac
}

# check_redis_balanced: six connections through the balancer read the
# whoami key of every backend.
check_redis_balanced() {
	local got
	got=$(for _ in 1 2 3 4 5 6; do redis_cmd "$TARGET_IP" "$TARGET_PORT" GET whoami || echo fail; done | sort -u | tr '\n' ' ')
	log "six redis connections to $TARGET_IP:$TARGET_PORT answered by: $got"
	[ "$got" = "be1 be2 be3 " ]
}

start_direct() {
	LB_NS="" LB_PID="" TARGET_IP=${SVC_IPS[0]} TARGET_PORT=$SVC_PORT
	URL_BASE="http://$TARGET_IP:$TARGET_PORT"
	[ "$SVC" != iperf ] || wait_until 10 "iperf3 direct" check_service
}

start_knat() {
	LB_NS=${LAB}lb LB_PID="" TARGET_IP=$LB_IP TARGET_PORT=$LB_PORT URL_BASE="http://$LB_IP:$LB_PORT"
	add_host "$LB_NS" lb "$LB_IP"
	ip netns exec "$LB_NS" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
	local map="" i
	for i in "${!SVC_IPS[@]}"; do
		map+="${map:+, }$i : ${SVC_IPS[i]}"
	done
	ip netns exec "$LB_NS" nft -f - <<-EOF
		table ip rawlb_bench_nat {
			chain prerouting {
				type nat hook prerouting priority dstnat;
				ip daddr $LB_IP tcp dport $LB_PORT dnat to numgen inc mod ${#SVC_IPS[@]} map { $map } : $SVC_PORT
			}
			chain postrouting {
				type nat hook postrouting priority srcnat;
				ct status dnat snat to $LB_IP
			}
		}
	EOF
	wait_until 10 "kernel NAT balancing" check_service
}

start_haproxy() {
	LB_NS=${LAB}lb TARGET_IP=$LB_IP TARGET_PORT=$LB_PORT URL_BASE="http://$LB_IP:$LB_PORT"
	add_host "$LB_NS" lb "$LB_IP"
	# iperf3's control connection idles while its test runs: the idle
	# timeouts must outlast BENCH_DURATION.
	local idle=60 servers="" i
	[ "$SVC" != iperf ] || idle=$((DURATION_S + 60))
	for i in "${!SVC_IPS[@]}"; do
		servers+="		server be$((i + 1)) ${SVC_IPS[i]}:$SVC_PORT"$'\n'
	done
	cat >"$WORK/haproxy.cfg" <<-EOF
		global
			nbthread 1
			# Two fds a connection; 4096 stays under a 20000 fd hard limit.
			maxconn 4096
		defaults
			mode tcp
			timeout connect 5s
			timeout client ${idle}s
			timeout server ${idle}s
		frontend bench
			bind $LB_IP:$LB_PORT
			default_backend $SVC
		backend $SVC
			balance roundrobin
		$servers
	EOF
	haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejected $WORK/haproxy.cfg"
	start "$LB_NS" "$WORK/haproxy.log" haproxy -db -f "$WORK/haproxy.cfg"
	LB_PID=$STARTED_PID
	wait_until 10 "haproxy balancing" lb_balancing "$WORK/haproxy.log"
}

# start_rawlb C: rawlb contender C (rawlb or a variant).
start_rawlb() {
	local c=$1
	LB_NS=${LAB}lb URL_BASE="http://$LB_IP:$LB_PORT"
	add_host "$LB_NS" lb "$LB_IP"
	# A fresh namespace: no nft NAT table, no haproxy, no conntrack state.
	[ -z "$(ip netns exec "$LB_NS" nft list tables)" ] || die "$LB_NS has nft tables before rawlb starts"
	[ -z "$(ip netns pids "$LB_NS")" ] || die "$LB_NS runs processes before rawlb starts"
	TARGET_IP=$LB_IP TARGET_PORT=$LB_PORT
	local args=(-port "$LB_PORT" -metrics "$METRICS_ADDR")
	# A health check is a connect and a close. iperf3's server reads a
	# new connection during a test's setup as one of the test's own
	# streams and aborts the test when it carries no cookie, so for
	# iperf3 only the first check runs (the first result sets a
	# backend's state outright).
	[ "$SVC" != iperf ] || args+=(-hc-interval 1h)
	# A state directory of this start's own: the restart a SIGTERM
	# prepares (delete_ns stops rawlb that way too) must not be taken over
	# by the next start in another lab, and nothing goes to /run/rawlb.
	if ${HAS_STATE_DIR[$c]}; then
		local state=$WORK/state/${LAB#"$P"}$SVC
		rm -rf "$state"
		mkdir -p "$state"
		args+=(-state-dir "$state")
	fi
	local extra
	mapfile -t extra < <(rawlb_extra_args "$c")
	args+=("${extra[@]}" "$LB_IP")
	local ip
	for ip in "${SVC_IPS[@]}"; do
		args+=("$ip:$SVC_PORT")
	done
	RAWLB_CMD=("$(rawlb_bin "$c")" "${args[@]}")
	RAWLB_LOG=$WORK/$c-$SVC.log RAWLB_LOGS=("$WORK/$c-$SVC.log")
	log "$c: ${RAWLB_CMD[*]}"
	start "$LB_NS" "$RAWLB_LOG" "${RAWLB_CMD[@]}"
	LB_PID=$STARTED_PID
	[ "$c" != rawlb ] || RAWLB_MAIN_PID=$STARTED_PID
	wait_until 20 "rawlb started" rawlb_started
	wait_until 20 "rawlb: all ${#SVC_IPS[@]} backend(s) up" rawlb_backends_up
	wait_until 10 "rawlb balancing" lb_balancing "$RAWLB_LOG"
}

# lb_balancing LOGFILE: the balancer process still runs and balances.
lb_balancing() {
	alive "$LB_PID" || die "the balancer exited: $(tail -n 20 "$1")"
	check_service
}

rawlb_started() {
	alive "$LB_PID" || die "rawlb exited: $(tail -n 20 "$RAWLB_LOG")"
	grep -q 'rawlb started' "$RAWLB_LOG"
}

scrape() {
	ip netns exec "$LB_NS" curl -sf --max-time 3 "http://$METRICS_ADDR/metrics"
}

rawlb_backends_up() {
	[ "$(scrape | awk '/^rawlb_backend_up[{ ]/ { s += $NF } END { print s + 0 }')" = "${#SVC_IPS[@]}" ]
}

# stop_service C: keeps a rawlb contender's start line and warnings (from
# every process of it, after a restart), then removes the balancer's
# namespace (and whatever runs in it) so that the next service starts on a
# fresh one; the lab's other hosts stay.
stop_service() {
	if is_rawlb "$1"; then
		alive "$LB_PID" || log "$1 is not running at the end of $SVC: $(tail -n 20 "$RAWLB_LOG")"
		local f
		for f in "${RAWLB_LOGS[@]}"; do
			grep -m 1 'rawlb started' "$f" | sed "s/^/$SVC: /" >>"$WORK/$1-started.txt" || true
			grep -Ei 'level=(warn|error)|panic' "$f" | head -n 20 | sed "s/^/$SVC: /" >>"$WORK/$1-warnings.txt" || true
		done
	fi
	[ -z "$LB_NS" ] || delete_ns "$LB_NS"
	LB_NS="" LB_PID=""
}

stop_contender() {
	delete_all_ns
	LB_NS="" LB_PID=""
	wait_quiet
}

# wait_quiet waits, up to 30 s, until the machine has been idle (under 10%
# busy) for a quarter of a second, and logs how long that took. Deleting a
# namespace returns at once, and the kernel tears it down afterwards in a
# workqueue (cleanup_net), with the lab's TIME_WAIT sockets to purge; this
# keeps that, or anything else still running, out of the next contender's
# load. (On the 2-core test machine it has found the machine idle at the
# first look, 0.26 s, after every lab so far: the teardown is quick.)
wait_quiet() {
	local start=$EPOCHREALTIME b0 b1 _ i
	# 10% of every CPU's ticks over the quarter second.
	local limit=$(($(nproc) * HZ / 40))
	for ((i = 0; i < 120; i++)); do
		read -r b0 _ < <(host_ticks)
		sleep 0.25
		read -r b1 _ < <(host_ticks)
		[ $((b1 - b0)) -ge "$limit" ] || break
	done
	log "machine quiet after $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s"
}

# --- measuring ---

# proc_ticks PID: utime+stime of PID in clock ticks.
proc_ticks() {
	sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# thread_ticks PID: "tid ticks" for every thread of PID.
thread_ticks() {
	local f
	for f in /proc/"$1"/task/*/stat; do
		sed 's/^\([0-9]*\) (.*) /\1 /' "$f" 2>/dev/null | awk '{ print $1, $13 + $14 }'
	done
}

# host_ticks: "busy softirq" ticks of the whole machine from /proc/stat.
host_ticks() {
	awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $8 }' /proc/stat
}

# ns_tcp_counters NS: the TCP counters of NS's stack as "Tcp.Name value"
# and "TcpExt.Name value" lines (/proc/net/snmp and netstat pair a header
# line with a value line).
ns_tcp_counters() {
	ip netns exec "$1" cat /proc/net/snmp /proc/net/netstat | awk '
		$1 == prev { for (i = 2; i <= NF; i++) print substr($1, 1, length($1) - 1) "." h[i], $i; next }
		{ prev = $1; for (i = 2; i <= NF; i++) h[i] = $i }'
}

# counter_delta BEFORE AFTER NAME: how much NAME grew between two
# ns_tcp_counters outputs.
counter_delta() {
	awk -v n="$3" 'FNR == NR { if ($1 == n) b = $2; next } $1 == n { print $2 - b }' "$1" "$2"
}

# other_ticks: "pid ticks" (utime+stime and reaped children's) of every
# process that is not part of the benchmark: not in this run's namespaces,
# not this script, not a kernel thread (ksoftirqd works for our traffic).
# Something else busy on the machine shows here and skews the run.
other_ticks() {
	local ns mine=" $$ "
	for ns in "${NAMESPACES[@]}"; do
		[ -z "$ns" ] || mine+="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
	done
	# f[2] is the parent: kthreadd (2) for kernel threads, $$ for this
	# script's own helpers.
	# Processes come and go while cat reads: a vanished one is no error.
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v mine="$mine" -v self=$$ '{
		pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
		if (pid == 2 || f[2] == 2 || f[2] == self || index(mine, " " pid " ")) next
		print pid, f[12] + f[13] + f[14] + f[15] }'
}

# wrk_opts LOAD sets WRK_OPTS and WRK_PATH for a load.
wrk_opts() {
	case $1 in
	conn) WRK_OPTS=(-t2 -c32 "-d$DURATION" --latency -H 'Connection: close') WRK_PATH=/ ;;
	keepalive) WRK_OPTS=(-t2 -c32 "-d$DURATION" --latency) WRK_PATH=/ ;;
	bulk) WRK_OPTS=(-t1 -c1 "-d$DURATION" --latency) WRK_PATH=/big ;;
	esac
	WRK_OPTS+=(-s "$WORK/totals.lua")
}

# wrk_command LOAD: the command line as a person would type it.
wrk_command() {
	case $1 in
	conn) echo "wrk -t2 -c32 -d$DURATION --latency -H 'Connection: close' -s totals.lua URL/" ;;
	keepalive) echo "wrk -t2 -c32 -d$DURATION --latency -s totals.lua URL/" ;;
	bulk) echo "wrk -t1 -c1 -d$DURATION --latency -s totals.lua URL/big" ;;
	esac
}

declare -A RPS P99 MBS SOCKERR NON2XX LBCPU HOSTCPU RETRANS OTHERCPU GBPS RINGDROPS IPERFRETR

# meter_start C NAME: the counters a load is judged beside, before load
# NAME: rawlb's metrics, the client's TCP counters, the CPU time of the
# balancer, of the whole machine and of processes outside the benchmark.
meter_start() {
	! is_rawlb "$1" || scrape >"$WORK/metrics-$1-$2-before.txt" || true
	ns_tcp_counters "$CLIENT" >"$WORK/client-$1-$2-before.txt"
	other_ticks >"$WORK/other-before.txt"
	METER_P0=0
	[ -z "$LB_PID" ] || METER_P0=$(proc_ticks "$LB_PID")
	METER_H0=$(host_ticks)
}

# meter_stop C NAME KEY: the same counters after load NAME, into
# LBCPU, HOSTCPU, OTHERCPU, RETRANS and, for a rawlb contender, RINGDROPS
# of KEY.
meter_stop() {
	local c=$1 name=$2 k=$3 h1 p1=0
	h1=$(host_ticks)
	[ -z "$LB_PID" ] || p1=$(proc_ticks "$LB_PID")
	ns_tcp_counters "$CLIENT" >"$WORK/client-$c-$name-after.txt"
	other_ticks >"$WORK/other-after.txt"
	OTHERCPU[$k]=$(awk -v hz="$HZ" 'FNR == NR { b[$1] = $2; next } { s += $2 - b[$1] } END { printf "%.1f", s / hz }' \
		"$WORK/other-before.txt" "$WORK/other-after.txt")
	if is_rawlb "$c"; then
		scrape >"$WORK/metrics-$c-$name-after.txt" || true
		RINGDROPS[$k]=$(ring_drops "$c" "$name")
	fi
	if [ -n "$LB_PID" ]; then
		alive "$LB_PID" || log "$c exited during $name"
		LBCPU[$k]=$(awk -v a="$METER_P0" -v b="$p1" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }')
	fi
	RETRANS[$k]=$(counter_delta "$WORK/client-$c-$name-before.txt" "$WORK/client-$c-$name-after.txt" TcpExt.TCPSynRetrans)/$(
		counter_delta "$WORK/client-$c-$name-before.txt" "$WORK/client-$c-$name-after.txt" Tcp.RetransSegs)
	HOSTCPU[$k]=$(awk -v a="$METER_H0" -v b="$h1" -v hz="$HZ" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		printf "%.1f (%.1f)", (y[1] - x[1]) / hz, (y[2] - x[2]) / hz }')
}

# ring_drops C NAME: how much rawlb_ring_drops_total (every series of it)
# grew in contender C during load NAME, or empty if the metrics were not
# scraped.
ring_drops() {
	local b=$WORK/metrics-$1-$2-before.txt a=$WORK/metrics-$1-$2-after.txt
	[ -s "$b" ] && [ -s "$a" ] || return 0
	awk 'FNR == NR { if ($1 ~ /^rawlb_ring_drops_total([{]|$)/) s -= $2; next }
		$1 ~ /^rawlb_ring_drops_total([{]|$)/ { s += $2 } END { printf "%.0f\n", s }' "$b" "$a"
}

# run_redis C ROUND: redis-benchmark from the client, SET then GET, each
# as its own run so that CPU and ring drops are per test. -q --csv prints
# one line per test: "SET","rps","avg","min","p50","p95","p99","max" (ms).
run_redis() {
	local c=$1 round=$2 t row k out rc
	for t in set get; do
		row=redis-$t k=$c/redis-$t/$round out=$WORK/redis-$c-$t-$round.txt
		meter_start "$c" "$row"
		log "$c/$row: redis-benchmark -h $TARGET_IP -p $TARGET_PORT -c 200 -n 100000 -t $t -q --csv"
		rc=0
		ip netns exec "$CLIENT" redis-benchmark -h "$TARGET_IP" -p "$TARGET_PORT" -c 200 -n 100000 -t "$t" -q --csv >"$out" 2>&1 || rc=$?
		meter_stop "$c" "$row" "$k"
		cat "$out" >&2
		local f
		IFS=, read -r -a f <<<"$(tr -d '"' <"$out" | awk -F, -v t="${t^^}" '$1 == t')"
		if [ "$rc" -ne 0 ] || [ ${#f[@]} -ne 8 ]; then
			RPS[$k]="failed (redis-benchmark exit $rc)"
		else
			RPS[$k]=$(awk -v r="${f[1]}" 'BEGIN { printf "%.0f", r }')
			P99[$k]=${f[6]}
		fi
		sleep 2
	done
}

# iperf_opts ROW: the iperf3 options of a row.
iperf_opts() {
	local opts
	case $1 in
	iperf-p4) opts="-P 4" ;;
	iperf-p4r) opts="-P 4 -R" ;;
	iperf-p1) opts="-P 1" ;;
	iperf-p1r) opts="-P 1 -R" ;;
	esac
	echo "$opts${IPERF_CC:+ -C $IPERF_CC}"
}

# run_iperf C ROUND: the four iperf3 runs. -f m fixes the unit; the last
# "receiver" line is the total over the streams ([SUM] with -P 4), and
# the last "sender" line's Retr column the sender's retransmissions (the
# server's with -R, which iperf3 reports back to the client).
run_iperf() {
	local c=$1 round=$2 row k out rc opts
	for row in "${IPERF_ROWS[@]}"; do
		k=$c/$row/$round out=$WORK/iperf-$c-$row-$round.txt
		read -r -a opts <<<"$(iperf_opts "$row")"
		meter_start "$c" "$row"
		log "$c/$row: iperf3 -c $TARGET_IP -p $TARGET_PORT -t $DURATION_S -f m ${opts[*]}"
		rc=0
		ip netns exec "$CLIENT" timeout $((DURATION_S + 60)) iperf3 -c "$TARGET_IP" -p "$TARGET_PORT" -t "$DURATION_S" -f m "${opts[@]}" >"$out" 2>&1 || rc=$?
		meter_stop "$c" "$row" "$k"
		cat "$out" >&2
		GBPS[$k]=$(awk '/ receiver$/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") v = $i }
			END { if (v != "") printf "%.2f", v / 1000 }' "$out")
		IPERFRETR[$k]=$(awk '/ sender$/ { for (i = 1; i < NF; i++) if ($i == "Mbits/sec") r = $(i + 1) }
			END { print r }' "$out")
		if [ "$rc" -ne 0 ] || [ -z "${GBPS[$k]}" ]; then
			GBPS[$k]="failed (iperf3 exit $rc)"
		fi
		# iperf3's server takes a moment to reset for the next test.
		sleep 2
	done
}

# wrk's text rounds (1.00GB read); this done() hook prints the exact totals
# on one line that run_load parses. It runs after the load, so it does not
# change what is measured.
write_wrk_script() {
	cat >"$WORK/totals.lua" <<-'EOF'
		done = function(summary, latency, requests)
			local e = summary.errors
			io.write(string.format("BENCH-TOTALS %d %d %d %.0f %d %d %d %d %d\n",
				summary.requests, summary.bytes, summary.duration, latency:percentile(99),
				e.connect, e.read, e.write, e.timeout, e.status))
		end
	EOF
}

# run_load CONTENDER LOAD ROUND: one wrk run from the client, with the
# balancer's and the machine's CPU time around it, and for rawlb its
# counters (the last round's are the ones reported).
run_load() {
	local c=$1 load=$2 k=$1/$2/$3 out=$WORK/wrk-$1-$2-$3.txt
	wrk_opts "$load"
	local sampler=""
	if [ "$c" = rawlb ] && [ "$load" = keepalive ]; then
		# Per-thread CPU over the load, and one top -H frame from its middle.
		thread_ticks "$LB_PID" >"$WORK/threads-before.txt"
		(
			sleep $((DURATION_S / 2))
			top -b -H -n 2 -d 1 -p "$LB_PID" >"$WORK/top.txt" 2>&1 || true
		) &
		sampler=$!
	fi
	meter_start "$c" "$load"
	log "$c/$load: wrk ${WRK_OPTS[*]} $URL_BASE$WRK_PATH"
	local rc=0
	ip netns exec "$CLIENT" wrk "${WRK_OPTS[@]}" "$URL_BASE$WRK_PATH" >"$out" 2>&1 || rc=$?
	meter_stop "$c" "$load" "$k"
	if [ -n "$sampler" ]; then
		thread_ticks "$LB_PID" >"$WORK/threads-after.txt"
		wait "$sampler" || true
	fi
	cat "$out" >&2

	if [ "$rc" -ne 0 ] || ! grep -q '^Requests/sec:' "$out"; then
		RPS[$k]="failed (wrk exit $rc)"
		return 0
	fi
	# requests bytes duration_us p99_us connect read write timeout status
	local t
	read -r -a t <<<"$(awk '$1 == "BENCH-TOTALS" { $1 = ""; print }' "$out")"
	if [ ${#t[@]} -ne 9 ]; then
		RPS[$k]="no totals from wrk"
		return 0
	fi
	RPS[$k]=$(awk -v n="${t[0]}" -v us="${t[2]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
	MBS[$k]=$(awk -v b="${t[1]}" -v us="${t[2]}" 'BEGIN { printf "%.1f", b / 1048576 / (us / 1e6) }')
	P99[$k]=$(awk -v us="${t[3]}" 'BEGIN { printf "%.2f", us / 1000 }')
	SOCKERR[$k]=${t[4]}/${t[5]}/${t[6]}/${t[7]}
	NON2XX[$k]=${t[8]}
}

# --- the restart load ---

now_ms() {
	date +%s%3N
}

# sleep_until MS: until the wall clock reads MS (unix milliseconds).
sleep_until() {
	local now
	now=$(now_ms)
	[ "$1" -le "$now" ] || sleep "$(awk -v d=$(($1 - now)) 'BEGIN { printf "%.3f", d / 1000 }')"
}

# reap PID SECONDS: wait for our child PID to exit, SIGKILL after SECONDS;
# its exit status goes to REAP_RC (not printed: wait only works on the
# shell's own children, not from a $(...) subshell). A watchdog rather
# than polling: polling every few ms would take CPU from the load being
# measured.
reap() {
	local pid=$1 secs=$2 wd
	(
		sleep "$secs"
		kill -KILL "$pid" 2>/dev/null
	) &
	wd=$!
	REAP_RC=0
	wait "$pid" || REAP_RC=$?
	kill "$wd" 2>/dev/null || true
	wait "$wd" 2>/dev/null || true
}

# log_ms LOGFILE PATTERN: the time= of the first line of LOGFILE matching
# PATTERN, as unix milliseconds (slog's text handler writes RFC 3339 with
# milliseconds), or nothing.
log_ms() {
	local ts
	ts=$(grep -m 1 -- "$2" "$1" | sed -n 's/^time=\([^ ]*\).*/\1/p')
	[ -z "$ts" ] || date -d "$ts" +%s%3N 2>/dev/null || true
}

declare -A DOWNMS=() UPGAP=() TAKEN=() RNOTE=()

# restart_rawlb C K MARKS: SIGTERM (a restart's stop: flows to the state
# file), then the same command line again; into DOWNMS[K] how long no
# rawlb ran (from the old one's exit to the new one's "rawlb started"),
# into TAKEN[K] what the new one took over.
restart_rawlb() {
	local c=$1 k=$2 marks=$3 old=$LB_PID t_term t_exit t_up
	t_term=$(now_ms)
	echo "mark restart $t_term" >>"$marks"
	kill -TERM "$old" 2>/dev/null || true
	reap "$old" 20
	t_exit=$(now_ms)
	[ "$REAP_RC" -eq 0 ] || RNOTE[$k]+="old process exited $REAP_RC after SIGTERM; "
	RAWLB_LOG=$WORK/$c-$SVC-restarted.log
	RAWLB_LOGS+=("$RAWLB_LOG")
	start "$LB_NS" "$RAWLB_LOG" "${RAWLB_CMD[@]}"
	LB_PID=$STARTED_PID
	wait_until 20 "the restarted $c started" rawlb_started
	t_up=$(log_ms "$RAWLB_LOG" 'msg="rawlb started"')
	[ -n "$t_up" ] || t_up=$(now_ms)
	DOWNMS[$k]=$((t_up - t_exit))
	TAKEN[$k]=$(sed -n 's/.*msg="restart state taken over" flows=\([0-9]*\).*/\1 flows/p' "$RAWLB_LOG" | head -n 1)
	[ -n "${TAKEN[$k]}" ] || TAKEN[$k]=none
	log "$c: SIGTERM at +0 ms, exit at +$((t_exit - t_term)) ms, new process started at +$((t_up - t_term)) ms (${DOWNMS[$k]} ms without rawlb); took over: ${TAKEN[$k]}"
}

# upgrade_rawlb C K MARKS: SIGUSR2 (the running process starts the binary
# at its path, hands its rings and flows over and exits); into UPGAP[K]
# the gap the new process reports, and LB_PID becomes the new process.
upgrade_rawlb() {
	local c=$1 k=$2 marks=$3 old=$LB_PID bin p
	if ! ${HAS_UPGRADE[$c]}; then
		UPGAP[$k]="not supported"
		return 0
	fi
	echo "mark upgrade $(now_ms)" >>"$marks"
	kill -USR2 "$old" 2>/dev/null || true
	reap "$old" 60
	[ "$REAP_RC" -eq 0 ] || RNOTE[$k]+="old process exited $REAP_RC after SIGUSR2; "
	UPGAP[$k]=$(sed -n 's/.*msg="upgrade: forwarding" gap=\([^ ]*\).*/\1/p' "$RAWLB_LOG" | tail -n 1)
	[ -n "${UPGAP[$k]}" ] || UPGAP[$k]="no report"
	# The successor runs in the namespace, no child of this script.
	bin=$(readlink -f "${RAWLB_CMD[0]}")
	LB_PID=""
	for p in $(ip netns pids "$LB_NS" 2>/dev/null); do
		[ "$p" != "$old" ] && [ "$(readlink -f "/proc/$p/exe" 2>/dev/null)" = "$bin" ] && LB_PID=$p && break
	done
	[ -n "$LB_PID" ] || RNOTE[$k]+="no rawlb running after SIGUSR2; "
	log "$c: upgrade gap ${UPGAP[$k]}, new process ${LB_PID:-none}"
}

# run_restart C ROUND: connrate's close load across a restart at a third
# of RESTART_S and an upgrade at two thirds, with the client's TCP
# counters and the machine's CPU around it (not the balancer's: it is
# three processes one after the other). The rate over the run goes to
# RPS, the summary to restart-C-ROUND.sum.
run_restart() {
	local c=$1 round=$2 k=$1/restart/$2
	local raw=$WORK/restart-$c-$round.txt marks=$WORK/restart-$c-$round.marks
	: >"$marks"
	ns_tcp_counters "$CLIENT" >"$WORK/client-$c-restart-before.txt"
	other_ticks >"$WORK/other-before.txt"
	local h0 h1 t0 load_pid rc=0
	h0=$(host_ticks)
	log "$c/restart: connrate run -c 32 -d ${RESTART_S}s -addr $TARGET_IP:$TARGET_PORT; SIGTERM and a new start at $((RESTART_S / 3)) s, SIGUSR2 at $((2 * RESTART_S / 3)) s"
	t0=$(now_ms)
	ip netns exec "$CLIENT" "$WORK/connrate" run -q -c 32 -d "${RESTART_S}s" -addr "$TARGET_IP:$TARGET_PORT" -o "$raw" \
		>"$WORK/connrate-$c-$round.log" 2>&1 &
	load_pid=$!
	sleep_until $((t0 + RESTART_S * 1000 / 3))
	restart_rawlb "$c" "$k" "$marks"
	sleep_until $((t0 + RESTART_S * 2000 / 3))
	upgrade_rawlb "$c" "$k" "$marks"
	wait "$load_pid" || rc=$?
	h1=$(host_ticks)
	ns_tcp_counters "$CLIENT" >"$WORK/client-$c-restart-after.txt"
	other_ticks >"$WORK/other-after.txt"
	OTHERCPU[$k]=$(awk -v hz="$HZ" 'FNR == NR { b[$1] = $2; next } { s += $2 - b[$1] } END { printf "%.1f", s / hz }' \
		"$WORK/other-before.txt" "$WORK/other-after.txt")
	HOSTCPU[$k]=$(awk -v a="$h0" -v b="$h1" -v hz="$HZ" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		printf "%.1f (%.1f)", (y[1] - x[1]) / hz, (y[2] - x[2]) / hz }')
	RETRANS[$k]=$(counter_delta "$WORK/client-$c-restart-before.txt" "$WORK/client-$c-restart-after.txt" TcpExt.TCPSynRetrans)/$(
		counter_delta "$WORK/client-$c-restart-before.txt" "$WORK/client-$c-restart-after.txt" Tcp.RetransSegs)
	cat "$WORK/connrate-$c-$round.log" >&2
	# connrate writes its record when the load is over; the marks go after.
	if [ "$rc" -ne 0 ] || [ ! -s "$raw" ]; then
		RPS[$k]="failed (connrate exit $rc)"
		return 0
	fi
	cat "$marks" >>"$raw"
	"$WORK/connrate" summary "$raw" >"$WORK/restart-$c-$round.sum"
	RPS[$k]=$(awk '$1 == "rate" { printf "%.0f", $2 }' "$WORK/restart-$c-$round.sum")
	SOCKERR[$k]=$(awk '$1 == "errors" { print $2 }' "$WORK/restart-$c-$round.sum")
}

# counter_deltas C LOAD: rawlb contender C's counters that moved during
# LOAD.
counter_deltas() {
	local b=$WORK/metrics-$1-$2-before.txt a=$WORK/metrics-$1-$2-after.txt
	if [ ! -s "$b" ] || [ ! -s "$a" ]; then
		echo "(metrics not scraped)"
		return 0
	fi
	awk '
		FNR == NR { if ($1 !~ /^#/) before[$1] = $2; next }
		$1 ~ /^rawlb_(packets|drops|ring_drops|gso_frames|resets_sent|nat_port_exhausted|flows_created|flows_refused|flows_expired|icmp_translated|fastpath_offloads|fastpath_offload_failures|fastpath_returns|fastpath_late|fastpath_passed|fastpath_packets)_total/ {
			d = $2 - before[$1]
			if (d != 0) printf "%s +%.0f\n", $1, d
		}' "$b" "$a"
}

# --- the summary over rounds ---

# primary LOAD C/LOAD/ROUND: the figure a load is judged by: MB/s for the
# bulk stream (a few whole requests in 10 s say little), Gbit/s for
# iperf3, req/s otherwise.
primary() {
	case $1 in
	bulk) echo "${MBS[$2]:-}" ;;
	iperf-*) echo "${GBPS[$2]:-}" ;;
	*) echo "${RPS[$2]:-}" ;;
	esac
}

# median_round C LOAD: the round whose primary figure is the median of C's
# rounds of LOAD (the lower middle one for an even count), or 1 if none
# has a number.
median_round() {
	local r
	for r in $(seq 1 "$ROUNDS"); do
		echo "$r $(primary "$2" "$1/$2/$r")"
	done | awk '$2 ~ /^[0-9.]+$/' | sort -k2,2n | awk '{ r[NR] = $1 } END { print (NR ? r[int((NR + 1) / 2)] : 1) }'
}

# sum_rounds NAME KEY: NAME[KEY/r] over every round r, each a count or
# counts joined by "/", summed field by field; n/a if a round has none.
sum_rounds() {
	local -n counts=$1
	local r
	for r in $(seq 1 "$ROUNDS"); do
		echo "${counts[$2/$r]:-x}"
	done | awk -F/ '
		{ n = NF; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) s[i] += $i; else bad = 1 }
		END {
			if (bad) { print "n/a"; exit }
			for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? "/" : ""), s[i]
			print ""
		}'
}

# summarize: for each contender and load (each row of redis and iperf,
# and restart for the rawlb contenders), the median round's figures under
# C/LOAD, and over all rounds the sums of socket errors, non-2xx answers,
# retransmissions and ring drops (a target of zero holds only if it held
# in every round) and the list of req/s by round. RATIOS are rawlb's to
# the kernel NAT and HAProxy; VRATIOS[V/D/LOAD] variant V's to D (rawlb
# or knat), both as the list of each round's ratio.
declare -A BYROUND=() RATIOS=() VRATIOS=() RESTART_ROUND=()
summarize() {
	local c load r k m v d
	local rows=("${ROWS[@]}")
	! $RESTART || rows+=(restart)
	for c in "${CONTENDERS[@]}"; do
		if $RESTART && is_rawlb "$c"; then
			RESTART_ROUND[$c]=$(median_round "$c" restart)
			k=$c/restart m=${RESTART_ROUND[$c]}
			DOWNMS[$k]=${DOWNMS[$k/$m]:-} UPGAP[$k]=${UPGAP[$k/$m]:-} TAKEN[$k]=${TAKEN[$k/$m]:-}
			RNOTE[$k]=$(for r in $(seq 1 "$ROUNDS"); do
				[ -z "${RNOTE[$k/$r]:-}" ] || echo "round $r: ${RNOTE[$k/$r]}"
			done | paste -sd' ' -)
		fi
		for load in "${rows[@]}"; do
			k=$c/$load m=$(median_round "$c" "$load")
			RPS[$k]=${RPS[$k/$m]:-} MBS[$k]=${MBS[$k/$m]:-} P99[$k]=${P99[$k/$m]:-} GBPS[$k]=${GBPS[$k/$m]:-}
			LBCPU[$k]=${LBCPU[$k/$m]:-} HOSTCPU[$k]=${HOSTCPU[$k/$m]:-} OTHERCPU[$k]=${OTHERCPU[$k/$m]:-}
			BYROUND[$k]=$(for r in $(seq 1 "$ROUNDS"); do v=$(primary "$load" "$k/$r"); echo "${v:-n/a}"; done | paste -sd/ -)
			SOCKERR[$k]=$(sum_rounds SOCKERR "$k")
			NON2XX[$k]=$(sum_rounds NON2XX "$k")
			RETRANS[$k]=$(sum_rounds RETRANS "$k")
			IPERFRETR[$k]=$(sum_rounds IPERFRETR "$k")
			RINGDROPS[$k]=$(sum_rounds RINGDROPS "$k")
		done
	done
	for load in "${ROWS[@]}"; do
		for c in knat haproxy; do
			RATIOS[$c/$load]=$(for r in $(seq 1 "$ROUNDS"); do
				echo "$(ratio "$(primary "$load" "rawlb/$load/$r")" "$(primary "$load" "$c/$load/$r")")"
			done | paste -sd' ' -)
		done
	done
	for v in "${CONTENDERS[@]}"; do
		[[ $v == rawlb-* ]] || continue
		for load in "${rows[@]}"; do
			for d in rawlb knat; do
				VRATIOS[$v/$d/$load]=$(for r in $(seq 1 "$ROUNDS"); do
					echo "$(ratio "$(primary "$load" "$v/$load/$r")" "$(primary "$load" "$d/$load/$r")")"
				done | paste -sd' ' -)
			done
		done
	done
}

# --- the report ---

label() {
	case $1 in
	direct) echo "(a) direct to one backend" ;;
	knat) echo "(b) kernel NAT (nftables)" ;;
	haproxy) echo "(c) HAProxy mode tcp, 1 thread" ;;
	rawlb) echo "(d) rawlb" ;;
	rawlb-*) echo "(${VLETTER[${1#rawlb-}]}) rawlb variant ${1#rawlb-}" ;;
	esac
}

load_label() {
	case $1 in
	conn) echo "new connection per request" ;;
	keepalive) echo "keep-alive requests" ;;
	bulk) echo "bulk stream of /big" ;;
	redis-set) echo "redis SET, 200 clients" ;;
	redis-get) echo "redis GET, 200 clients" ;;
	iperf-p4) echo "iperf3, 4 streams, client to server" ;;
	iperf-p4r) echo "iperf3, 4 streams, server to client (-R)" ;;
	iperf-p1) echo "iperf3, 1 stream, client to server" ;;
	iperf-p1r) echo "iperf3, 1 stream, server to client (-R)" ;;
	restart) echo "close load across a restart and an upgrade" ;;
	esac
}

# row_command ROW: the command line of a redis or iperf row.
row_command() {
	case $1 in
	redis-*) echo "redis-benchmark -h HOST -p PORT -c 200 -n 100000 -t ${1#redis-} -q --csv" ;;
	iperf-*) echo "iperf3 -c HOST -p PORT -t $DURATION_S -f m $(iperf_opts "$1")" ;;
	esac
}

# ratio A B: A/B to two places, or n/a.
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "n/a"; exit }
		printf "%.2f", a / b }'
}

# report_wrk: the tables of the wrk loads.
report_wrk() {
	local load c k
	echo "Loads (URL is the contender's address):"
	echo
	for load in "${LOADS[@]}"; do
		echo "- $(load_label "$load"): \`$(wrk_command "$load")\`"
	done
	echo
	echo "totals.lua only prints wrk's exact totals when the load is over (wrk's own text"
	echo "rounds them). req/s and MB/s (MiB/s, as wrk counts) are totals over wrk's run"
	echo "time; p99 is wrk's request latency (connection setup is not in it). Socket errors are"
	echo "connect/read/write/timeout. LB CPU s is the balancer process's utime+stime during"
	echo "the load; host CPU s is the whole machine's busy time (of which softirq), out of"
	echo "$(nproc) x duration. Client retrans is what the client's TCP stack retransmitted"
	echo "during the load: SYNs / all segments (TCPSynRetrans / RetransSegs)."
	echo
	echo "Other CPU s is what processes outside the benchmark used meanwhile (something"
	echo "else running on the machine; well above 0 means the row is skewed)."
	echo
	echo "Each row is the contender's median round by req/s (by MB/s for bulk), except socket"
	echo "errors, non-2xx and retransmissions, which are summed over all rounds; the last"
	echo "column lists req/s (MB/s for bulk) in every round."
	echo
	echo "| load | contender | req/s | p99 ms | MB/s | socket errors c/r/w/t | non-2xx | client retrans SYN/all | LB CPU s | host CPU s (softirq) | other CPU s | req/s (bulk: MB/s) by round |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for load in "${LOADS[@]}"; do
		for c in "${CONTENDERS[@]}"; do
			k=$c/$load
			printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$load" "$(label "$c")" \
				"${RPS[$k]:-n/a}" "${P99[$k]:-n/a}" "${MBS[$k]:-n/a}" "${SOCKERR[$k]:-n/a}" \
				"${NON2XX[$k]:-n/a}" "${RETRANS[$k]:-n/a}" "${LBCPU[$k]:--}" "${HOSTCPU[$k]:-n/a}" "${OTHERCPU[$k]:-n/a}" \
				"${BYROUND[$k]:-n/a}"
		done
	done
	echo
	echo "rawlb's ratio to the kernel NAT (b) and to HAProxy (c), median round to median"
	echo "round; above 1 is better for req/s and MB/s, below 1 is better for p99 and CPU."
	echo "The last two columns give the ratio within each round, of req/s (of MB/s for bulk)."
	echo
	echo "| load | req/s vs (b) | req/s vs (c) | MB/s vs (b) | MB/s vs (c) | p99 vs (b) | p99 vs (c) | CPU s vs HAProxy | vs (b) by round | vs (c) by round |"
	echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for load in "${LOADS[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$load" \
			"$(ratio "${RPS[rawlb/$load]:-}" "${RPS[knat/$load]:-}")" \
			"$(ratio "${RPS[rawlb/$load]:-}" "${RPS[haproxy/$load]:-}")" \
			"$(ratio "${MBS[rawlb/$load]:-}" "${MBS[knat/$load]:-}")" \
			"$(ratio "${MBS[rawlb/$load]:-}" "${MBS[haproxy/$load]:-}")" \
			"$(ratio "${P99[rawlb/$load]:-}" "${P99[knat/$load]:-}")" \
			"$(ratio "${P99[rawlb/$load]:-}" "${P99[haproxy/$load]:-}")" \
			"$(ratio "${LBCPU[rawlb/$load]:-}" "${LBCPU[haproxy/$load]:-}")" \
			"${RATIOS[knat/$load]:-n/a}" "${RATIOS[haproxy/$load]:-n/a}"
	done
	echo
	report_variants "${LOADS[@]}"
}

# report_variants ROW...: each variant's ratios to plain rawlb and to the
# kernel NAT for these rows.
report_variants() {
	local load v c
	[ ${#VARIANTS[@]} -gt 0 ] || return 0
	echo "Each rawlb variant's ratio to plain rawlb (d) and to the kernel NAT (b), median round"
	echo "to median round, of req/s (MB/s for bulk, Gbit/s for iperf3, connections/s for restart);"
	echo "above 1 is better. p99 and LB CPU s are to rawlb's: below 1 is better. The last two"
	echo "columns give the ratio within each round."
	echo
	echo "| load | variant | vs (d) | vs (b) | p99 vs (d) | LB CPU s vs (d) | vs (d) by round | vs (b) by round |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|"
	for load in "$@"; do
		for v in "${VARIANTS[@]}"; do
			c=rawlb-$v
			printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$load" "$(label "$c")" \
				"$(ratio "$(primary "$load" "$c/$load")" "$(primary "$load" "rawlb/$load")")" \
				"$(ratio "$(primary "$load" "$c/$load")" "$(primary "$load" "knat/$load")")" \
				"$(ratio "${P99[$c/$load]:-}" "${P99[rawlb/$load]:-}")" \
				"$(ratio "${LBCPU[$c/$load]:-}" "${LBCPU[rawlb/$load]:-}")" \
				"${VRATIOS[$c/rawlb/$load]:-n/a}" "${VRATIOS[$c/knat/$load]:-n/a}"
		done
	done
	echo
}

# report_new: the tables of the redis and iperf3 rows.
report_new() {
	local load c k
	echo "redis and iperf3 loads (HOST:PORT is the contender's address; iperf3 reaches be1 alone):"
	echo
	for load in "${NEW_ROWS[@]}"; do
		echo "- $(load_label "$load"): \`$(row_command "$load")\`"
	done
	echo
	echo "redis req/s and p99 ms are redis-benchmark's own (-q --csv); the SET and GET tests"
	echo "are separate runs, so CPU and drops are per test. iperf3's Gbit/s is what the receiver"
	echo "got (the [SUM] receiver line with -P 4) and retransmits the sender's (Retr). rawlb"
	echo "ring drops is how much rawlb_ring_drops_total grew during the load (frames the kernel"
	echo "dropped because a receive ring was full), summed over rounds like the retransmissions;"
	echo "the other columns are as in the first table."
	echo
	echo "| load | contender | req/s or Gbit/s | p99 ms | iperf3 retransmits | rawlb ring drops | client retrans SYN/all | LB CPU s | host CPU s (softirq) | other CPU s | req/s or Gbit/s by round |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for load in "${NEW_ROWS[@]}"; do
		for c in "${CONTENDERS[@]}"; do
			k=$c/$load
			local v=${RPS[$k]:-n/a} p99=${P99[$k]:-n/a} retr=-
			case $load in iperf-*) v=${GBPS[$k]:-n/a} p99=- retr=${IPERFRETR[$k]:-n/a} ;; esac
			printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$load" "$(label "$c")" \
				"$v" "$p99" "$retr" "$(is_rawlb "$c" && echo "${RINGDROPS[$k]:-n/a}" || echo -)" \
				"${RETRANS[$k]:-n/a}" "${LBCPU[$k]:--}" "${HOSTCPU[$k]:-n/a}" "${OTHERCPU[$k]:-n/a}" "${BYROUND[$k]:-n/a}"
		done
	done
	echo
	echo "rawlb's ratio to the kernel NAT (b) and to HAProxy (c), median round to median round,"
	echo "of req/s (redis) or Gbit/s (iperf3); above 1 is better. CPU below 1 is better."
	echo
	echo "| load | vs (b) | vs (c) | p99 vs (b) | p99 vs (c) | CPU s vs HAProxy | vs (b) by round | vs (c) by round |"
	echo "|---|--:|--:|--:|--:|--:|--:|--:|"
	for load in "${NEW_ROWS[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$load" \
			"$(ratio "$(primary "$load" "rawlb/$load")" "$(primary "$load" "knat/$load")")" \
			"$(ratio "$(primary "$load" "rawlb/$load")" "$(primary "$load" "haproxy/$load")")" \
			"$(ratio "${P99[rawlb/$load]:-}" "${P99[knat/$load]:-}")" \
			"$(ratio "${P99[rawlb/$load]:-}" "${P99[haproxy/$load]:-}")" \
			"$(ratio "${LBCPU[rawlb/$load]:-}" "${LBCPU[haproxy/$load]:-}")" \
			"${RATIOS[knat/$load]:-n/a}" "${RATIOS[haproxy/$load]:-n/a}"
	done
	echo
	report_variants "${NEW_ROWS[@]}"
}

# restart_sum C KEY [NAME]: a figure of the summary of rawlb contender C's
# median restart round: KEY's value, or for segment and stall that of
# NAME (empty if that round has none, e.g. no upgrade).
restart_sum() {
	local f=$WORK/restart-$1-${RESTART_ROUND[$1]:-1}.sum
	[ -s "$f" ] || return 0
	case $2 in
	segment) awk -v n="$3" '$1 == "segment" && $2 == n { printf "%.0f", $5 }' "$f" ;;
	stall) awk -v n="$3" '$1 == "stall" && $2 == n { print $3 }' "$f" ;;
	lowest) awk '$1 == "lowest" { print $2 " (" $3 " s)" }' "$f" ;;
	*) awk -v k="$2" '$1 == k { print $2 }' "$f" ;;
	esac
}

# restart_chart: the SVG of each rawlb contender's median restart round.
CHARTED=false
restart_chart() {
	local c f args=()
	for c in "${CONTENDERS[@]}"; do
		is_rawlb "$c" || continue
		f=$WORK/restart-$c-${RESTART_ROUND[$c]:-1}.txt
		[ ! -s "$WORK/restart-$c-${RESTART_ROUND[$c]:-1}.sum" ] || args+=("$c=$f")
	done
	if [ ${#args[@]} -eq 0 ]; then
		log "no restart run to chart"
		return 0
	fi
	mkdir -p "$(dirname "$RESTART_SVG")"
	if "$WORK/connrate" chart -o "$RESTART_SVG" -title "connrate, 32 clients: a restart (SIGTERM, new start) and an upgrade (SIGUSR2)" "${args[@]}"; then
		CHARTED=true
		log "restart chart written to $RESTART_SVG"
	else
		log "the restart chart failed"
	fi
}

# report_restart: the restart load's tables and chart.
report_restart() {
	local c k files=() f
	echo "Restart load, rawlb contenders only (direct, the kernel NAT and HAProxy have nothing"
	echo "to restart): \`connrate run -c 32 -d ${RESTART_S}s -addr HOST:PORT\` (internal/tools/connrate),"
	echo "32 clients that each connect, send GET / with Connection: close, read the answer to its"
	echo "end and close, over and over; connections and errors are counted in 10 ms buckets."
	echo "At $((RESTART_S / 3)) s rawlb gets SIGTERM (a restart's stop: its flows go to the state file in"
	echo "-state-dir) and the same command line starts again; at $((2 * RESTART_S / 3)) s the running process"
	echo "gets SIGUSR2 (an in-place upgrade to the same binary), unless the binary's -h does not"
	echo "mention USR2 (it would die of it)."
	echo
	echo "conns/s is over the whole run, then over whole seconds from 1 s to the restart's second,"
	echo "from it to the upgrade's, and from that to the end. The lowest second leaves out the"
	echo "first (the clients are starting). A stall is the longest time without a completed"
	echo "connection, in 10 ms steps: before the restart (the normal noise), and for each signal"
	echo "the longest gap that overlaps the 5 s after it, counted whole (it may last longer)."
	echo "connrate gives up a connect after 5 s and an answer after 10 s. No rawlb ran is from"
	echo "the old process's exit to the new one's \"rawlb started\" log line; the upgrade gap is"
	echo "what the new process logs (\"upgrade: forwarding\")."
	echo "Each row is the median round by conns/s; errors and retransmissions are summed over"
	echo "all rounds."
	echo
	echo "| contender | conns/s | before restart | restart to upgrade | after upgrade | lowest second (at) | errors | stall ms before / restart / upgrade | no rawlb ran ms | upgrade gap | state taken over | client retrans SYN/all | host CPU s (softirq) | other CPU s | conns/s by round |"
	echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for c in "${CONTENDERS[@]}"; do
		is_rawlb "$c" || continue
		k=$c/restart
		local seg=() st=() n v
		for n in start restart upgrade; do
			v=$(restart_sum "$c" segment "$n") && seg+=("${v:--}")
		done
		for n in before restart upgrade; do
			v=$(restart_sum "$c" stall "$n") && st+=("${v:--}")
		done
		v=$(restart_sum "$c" lowest)
		printf '| %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$c")" \
			"${RPS[$k]:-n/a}" "${seg[@]}" "${v:--}" "${SOCKERR[$k]:-n/a}" "${st[@]}" \
			"${DOWNMS[$k]:-n/a}" "${UPGAP[$k]:-n/a}" "${TAKEN[$k]:-n/a}" \
			"${RETRANS[$k]:-n/a}" "${HOSTCPU[$k]:-n/a}" "${OTHERCPU[$k]:-n/a}" "${BYROUND[$k]:-n/a}"
		[ -z "${RNOTE[$k]:-}" ] || echo "$c: ${RNOTE[$k]}" >>"$WORK/restart-notes.txt"
		f=$WORK/restart-$c-${RESTART_ROUND[$c]:-1}.txt
		[ ! -s "$WORK/restart-$c-${RESTART_ROUND[$c]:-1}.sum" ] || files+=("$c=$f")
	done
	echo
	if [ -s "$WORK/restart-notes.txt" ]; then
		echo "Notes:"
		echo
		sed 's/^/- /' "$WORK/restart-notes.txt"
		echo
	fi
	report_variants restart
	[ ${#files[@]} -gt 0 ] || return 0
	echo "Second by second, the median round of each (slowest: the longest connection that"
	echo "completed in that second, connect to close):"
	echo
	"$WORK/connrate" table "${files[@]}" || echo "(connrate table failed)"
	echo
	if $CHARTED; then
		local link=$RESTART_SVG
		[ "$(dirname "$RESTART_SVG")" != "$(dirname "$OUT")" ] || link=$(basename "$RESTART_SVG")
		echo "![connections per second across a restart and an upgrade]($link)"
		echo
	fi
}

# report_contenders: what each rawlb contender ran, when there are
# variants (plain rawlb alone is described in the paragraph above).
report_contenders() {
	local c extra from v
	[ ${#VARIANTS[@]} -gt 0 ] || return 0
	echo "rawlb contenders (each also gets -port, -metrics, the address and the backends):"
	echo
	for c in "${CONTENDERS[@]}"; do
		is_rawlb "$c" || continue
		extra=$(rawlb_extra_args "$c" | paste -sd' ' -)
		v=${c#rawlb-} from="\`$(rawlb_bin "$c")\`"
		[ "$c" = rawlb ] || [ -z "${VREV[$v]}" ] || from="built from ${VREV[$v]} (git archive, go build)"
		printf -- '- %s: %s (%s), extra flags: %s; -state-dir: %s; SIGUSR2 upgrade: %s\n' "$(label "$c")" \
			"$from" "$("$(rawlb_bin "$c")" -version 2>&1 | head -n 1 || true)" "${extra:-none}" \
			"$(${HAS_STATE_DIR[$c]} && echo yes || echo "no (the binary has no such flag)")" \
			"$(${HAS_UPGRADE[$c]} && echo yes || echo "no (its -h does not mention USR2)")"
	done
	echo
}

report() {
	local load c k
	echo "## rawlb benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "Machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)."
	echo "Everything (load generators, backends, the balancer) shares these cores. Each wrk and"
	echo "iperf3 load runs $DURATION; each contender gets a freshly built lab (switch, client,"
	echo "backends, balancer) in each of $ROUNDS round(s); each round starts with the next contender"
	echo "in turn. A contender serves one service at a time (http, redis, iperf) and is started"
	echo "afresh, in a new balancer namespace, for each."
	echo "The client namespace has net.ipv4.tcp_tw_reuse=1 (wrk's own TIME_WAITs would"
	echo "otherwise make connect() the bottleneck); nginx has keepalive_requests 1000000,"
	echo "HAProxy nbthread 1, maxconn 4096; rawlb runs with its defaults (-workers 0), but"
	echo "for iperf3 with -hc-interval 1h, and with a -state-dir of its own for each start"
	echo "(see scripts/bench.sh)."
	! wants iperf || echo "TCP congestion control: ${IPERF_CC:-$LAB_CC} for iperf3 (${IPERF_CC:+BENCH_IPERF_CC; }the lab's is $LAB_CC)."
	# wrk -v exits 1, and pipefail is on: hence the || true.
	local versions=("$("$RAWLB" -version 2>&1 | head -n 1 || true)" "$(haproxy -v | awk 'NR == 1 { print $1, $3 }' || true)")
	! wants http || versions+=("$(nginx -v 2>&1 | sed 's/.*: //' || true)")
	[ ${#LOADS[@]} -eq 0 ] || versions+=("$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }' || true)")
	! wants redis || versions+=("$(redis-server --version | awk '{ print $1, $2, $3 }' || true)")
	! wants iperf || versions+=("$(iperf3 --version | awk 'NR == 1 { print $1, $2 }' || true)")
	local line="" v
	for v in "${versions[@]}"; do
		line+="${line:+, }$v"
	done
	echo "$line."
	echo
	report_contenders
	[ ${#LOADS[@]} -eq 0 ] || report_wrk
	[ ${#NEW_ROWS[@]} -eq 0 ] || report_new
	! $RESTART || report_restart
	for c in "${CONTENDERS[@]}"; do
		is_rawlb "$c" || continue
		echo "### $c"
		echo
		echo "Its start lines (last round; after a restart, every process's), and its warnings"
		echo "and errors over the whole run:"
		echo
		echo '```'
		cat "$WORK/$c-started.txt" 2>/dev/null || echo "($c did not run)"
		if [ -s "$WORK/$c-warnings.txt" ]; then
			cat "$WORK/$c-warnings.txt"
		else
			echo "(no warnings or errors)"
		fi
		echo '```'
		echo
		[ ${#ROWS[@]} -gt 0 ] || continue
		echo "### $c counters that moved during each load (last round)"
		echo
		for load in "${ROWS[@]}"; do
			echo "$load:"
			echo
			echo '```'
			counter_deltas "$c" "$load"
			echo '```'
			echo
		done
	done
	echo "### rawlb per-thread CPU during the keep-alive load (last round)"
	echo
	echo '```'
	if [ -s "$WORK/threads-after.txt" ]; then
		awk -v hz="$HZ" '
			FNR == NR { before[$1] = $2; next }
			{ d = ($2 - before[$1]) / hz; if (d > 0) printf "tid %-8s %6.2f s\n", $1, d }' \
			"$WORK/threads-before.txt" "$WORK/threads-after.txt" | sort -k3 -rn
	else
		echo "(not measured)"
	fi
	echo '```'
	echo
	echo "top -b -H, one 1 s frame from the middle of the load:"
	echo
	echo '```'
	if [ -s "$WORK/top.txt" ]; then
		# The second frame: the first one's %CPU counts since each thread
		# started. The row of the process's own PID shows the whole
		# process in this mode, not its main thread, so it is left out.
		awk '/^top - / { n++ } n == 2' "$WORK/top.txt" |
			awk -v pid="${RAWLB_MAIN_PID:-}" 'NF && (/PID/ || f) && $1 != pid { f = 1; print }' | head -n 12
	else
		echo "(not measured)"
	fi
	echo '```'
}

# --- main ---

# serves C SVC: contender C has a load to run on service SVC (direct,
# the kernel NAT and HAProxy have nothing to restart).
serves() {
	case $2 in
	http) [ ${#LOADS[@]} -gt 0 ] || { $RESTART && is_rawlb "$1"; } ;;
	*) return 0 ;;
	esac
}

# start_contender C: C balances the current service.
start_contender() {
	if is_rawlb "$1"; then
		start_rawlb "$1"
	else
		"start_$1"
	fi
}

log "labs $P*, work dir $WORK, loads ${picked[*]}, $DURATION per load, $ROUNDS round(s)"
for v in "${VARIANTS[@]}"; do
	[ -z "${VREV[$v]}" ] || build_rev "$v" "${VREV[$v]}"
done
probe_rawlb
! $RESTART || build_tools
write_wrk_script
for round in $(seq 1 "$ROUNDS"); do
	# Round r starts with contender r-1 (mod their number), so that no
	# contender always runs first on a fresh machine or last on a tired one;
	# even rounds go through the list backwards, so that no contender
	# always follows the same one either (in one run of 5 rounds, rawlb
	# -workers 1 was 0.80x of 3dc9834 on conn when it always followed
	# the default rawlb, and 0.99x in the next run).
	n=${#CONTENDERS[@]}
	for i in $(seq 0 $((n - 1))); do
		if ((round % 2 == 0)); then
			c=${CONTENDERS[(n + round - 1 - i) % n]}
		else
			c=${CONTENDERS[(i + round - 1) % n]}
		fi
		todo=()
		for svc in "${SERVICES[@]}"; do
			! serves "$c" "$svc" || todo+=("$svc")
		done
		if [ ${#todo[@]} -eq 0 ]; then
			log "=== round $round/$ROUNDS: $(label "$c"): no load for it"
			continue
		fi
		log "=== round $round/$ROUNDS: $(label "$c")"
		build_lab "$c"
		start_backends
		# The report shows the last round's start lines.
		! is_rawlb "$c" || : >"$WORK/$c-started.txt"
		for svc in "${todo[@]}"; do
			use_service "$svc"
			start_contender "$c"
			case $svc in
			http)
				for load in "${LOADS[@]}"; do
					run_load "$c" "$load" "$round"
					# Let FINs, TIME_WAITs and the backends settle between loads.
					sleep 2
				done
				# Last: it replaces the balancer's process twice.
				if $RESTART && is_rawlb "$c"; then
					run_restart "$c" "$round"
					sleep 2
				fi
				;;
			redis) run_redis "$c" "$round" ;;
			iperf) run_iperf "$c" "$round" ;;
			esac
			stop_service "$c"
		done
		stop_contender
	done
done

summarize
! $RESTART || restart_chart
report >"$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
echo
cat "$WORK/report.md"
log "written to $OUT"
