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
# Loads, from the client; BENCH_LOADS picks some (default all five, e.g.
# BENCH_LOADS="redis iperf"):
#   conn       wrk -t2 -c32 -H 'Connection: close' /   a connection per request
#   keepalive  wrk -t2 -c32 /                          keep-alive requests
#   bulk       wrk -t1 -c1 /big                        one bulk stream
#   redis      redis-benchmark -c 200 -n 100000 -t set, then -t get, -q --csv
#              against the three redis-servers
#   iperf      iperf3 -P 4, -P 4 -R, -P 1, -P 1 -R (Gbit/s) to be1 alone
# The wrk and iperf3 loads run for BENCH_DURATION (default 10s) each;
# redis-benchmark runs its 100000 requests. Each contender serves one
# service at a time on :20000 (http: nginx x3, redis: redis-server x3,
# iperf: be1's iperf3 alone, since iperf3's control and data connections
# must reach the same server), restarted in a fresh balancer namespace
# between services.
#
# Needs root, haproxy, nft, ip, curl and each load's tools (nginx and wrk;
# redis-server, redis-benchmark and redis-cli; iperf3: scripts/bench-deps.sh)
# and bin/rawlb (make build; RAWLB_BIN overrides). BENCH_CONTENDERS runs only
# some contenders (default "direct knat haproxy rawlb"). BENCH_ROUNDS
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

readonly LB_IP=198.18.0.2 CLIENT_IP=198.18.0.10 LB_PORT=20000 BE_PORT=8090
readonly REDIS_PORT=6379 IPERF_PORT=5201
readonly BACKEND_IPS=(198.18.0.11 198.18.0.12 198.18.0.13)
readonly METRICS_ADDR=127.0.0.1:9120
readonly BIG_BYTES=$((64 << 20))
readonly ALL_LOADS=(conn keepalive bulk redis iperf)
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
readonly CONTENDERS

# BENCH_LOADS picks some loads. LOADS are the wrk loads among them (the
# first table), NEW_ROWS the rows of redis and iperf (the second), ROWS
# both, and SERVICES what the contenders must balance for them, in order.
read -r -a picked <<<"${BENCH_LOADS:-${ALL_LOADS[*]}}"
LOADS=() NEW_ROWS=() SERVICES=()
for l in "${picked[@]}"; do
	[[ " ${ALL_LOADS[*]} " == *" $l "* ]] || die "BENCH_LOADS: unknown load $l (want some of: ${ALL_LOADS[*]})"
done
for l in conn keepalive bulk; do
	[[ " ${picked[*]} " != *" $l "* ]] || LOADS+=("$l")
done
[ ${#LOADS[@]} -eq 0 ] || SERVICES+=(http)
if [[ " ${picked[*]} " == *" redis "* ]]; then
	NEW_ROWS+=("${REDIS_ROWS[@]}") SERVICES+=(redis)
fi
if [[ " ${picked[*]} " == *" iperf "* ]]; then
	NEW_ROWS+=("${IPERF_ROWS[@]}") SERVICES+=(iperf)
fi
[ ${#SERVICES[@]} -gt 0 ] || die "BENCH_LOADS is empty (want some of: ${ALL_LOADS[*]})"
ROWS=("${LOADS[@]}" "${NEW_ROWS[@]}")
readonly LOADS NEW_ROWS SERVICES ROWS

# wants SERVICE: SERVICE is among those this run measures.
wants() {
	[[ " ${SERVICES[*]} " == *" $1 "* ]]
}

[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "BENCH_DURATION=$DURATION: want a wrk duration such as 10s, 2m"
[[ $ROUNDS =~ ^[1-9]$ ]] || die "BENCH_ROUNDS=$ROUNDS: want a number of rounds from 1 to 9"
readonly ROUNDS
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces); run it as: sudo make bench"
tools=(ip bridge nft haproxy curl top getconf)
! wants http || tools+=(nginx wrk)
! wants redis || tools+=(redis-server redis-benchmark redis-cli)
! wants iperf || tools+=(iperf3)
for tool in "${tools[@]}"; do
	command -v "$tool" >/dev/null || die "$tool not found: run scripts/bench-deps.sh (BENCH_LOADS=\"${picked[*]}\")"
done
[ -x "$RAWLB" ] || die "$RAWLB not found: run make build first"

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
# The lab of the contender being measured: LAB is its namespaces' prefix.
LAB="" SW="" CLIENT=""
WORK=$(mktemp -d /tmp/rawlb-bench.XXXXXX)
# nginx's workers run as nobody and must read the document root.
chmod 755 "$WORK"

NAMESPACES=() # created, deleted in reverse on exit

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
	rm -rf "$WORK"
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

delete_all_ns() {
	local i
	for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
		[ -z "${NAMESPACES[i]}" ] || delete_ns "${NAMESPACES[i]}"
	done
	NAMESPACES=()
}

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

start_rawlb() {
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
	args+=("$LB_IP")
	local ip
	for ip in "${SVC_IPS[@]}"; do
		args+=("$ip:$SVC_PORT")
	done
	RAWLB_LOG=$WORK/rawlb-$SVC.log
	log "rawlb ${args[*]}"
	start "$LB_NS" "$RAWLB_LOG" "$RAWLB" "${args[@]}"
	LB_PID=$STARTED_PID RAWLB_MAIN_PID=$STARTED_PID
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

# stop_service C: keeps rawlb's start line and warnings, then removes the
# balancer's namespace (and whatever runs in it) so that the next service
# starts on a fresh one; the lab's other hosts stay.
stop_service() {
	if [ "$1" = rawlb ]; then
		alive "$LB_PID" || log "rawlb is not running at the end of $SVC: $(tail -n 20 "$RAWLB_LOG")"
		grep -m 1 'rawlb started' "$RAWLB_LOG" | sed "s/^/$SVC: /" >>"$WORK/rawlb-started.txt" || true
		grep -Ei 'level=(warn|error)|panic' "$RAWLB_LOG" | head -n 20 | sed "s/^/$SVC: /" >>"$WORK/rawlb-warnings.txt" || true
	fi
	[ -z "$LB_NS" ] || delete_ns "$LB_NS"
	LB_NS="" LB_PID=""
}

stop_contender() {
	delete_all_ns
	LB_NS="" LB_PID=""
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
	[ "$1" != rawlb ] || scrape >"$WORK/metrics-$2-before.txt" || true
	ns_tcp_counters "$CLIENT" >"$WORK/client-$1-$2-before.txt"
	other_ticks >"$WORK/other-before.txt"
	METER_P0=0
	[ -z "$LB_PID" ] || METER_P0=$(proc_ticks "$LB_PID")
	METER_H0=$(host_ticks)
}

# meter_stop C NAME KEY: the same counters after load NAME, into
# LBCPU, HOSTCPU, OTHERCPU, RETRANS and, for rawlb, RINGDROPS of KEY.
meter_stop() {
	local c=$1 name=$2 k=$3 h1 p1=0
	h1=$(host_ticks)
	[ -z "$LB_PID" ] || p1=$(proc_ticks "$LB_PID")
	ns_tcp_counters "$CLIENT" >"$WORK/client-$c-$name-after.txt"
	other_ticks >"$WORK/other-after.txt"
	OTHERCPU[$k]=$(awk -v hz="$HZ" 'FNR == NR { b[$1] = $2; next } { s += $2 - b[$1] } END { printf "%.1f", s / hz }' \
		"$WORK/other-before.txt" "$WORK/other-after.txt")
	if [ "$c" = rawlb ]; then
		scrape >"$WORK/metrics-$name-after.txt" || true
		RINGDROPS[$k]=$(ring_drops "$name")
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

# ring_drops NAME: how much rawlb_ring_drops_total (every series of it)
# grew during load NAME, or empty if the metrics were not scraped.
ring_drops() {
	local b=$WORK/metrics-$1-before.txt a=$WORK/metrics-$1-after.txt
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
	case $1 in
	iperf-p4) echo "-P 4" ;;
	iperf-p4r) echo "-P 4 -R" ;;
	iperf-p1) echo "-P 1" ;;
	iperf-p1r) echo "-P 1 -R" ;;
	esac
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

# counter_deltas LOAD: rawlb's counters that moved during LOAD.
counter_deltas() {
	local b=$WORK/metrics-$1-before.txt a=$WORK/metrics-$1-after.txt
	if [ ! -s "$b" ] || [ ! -s "$a" ]; then
		echo "(metrics not scraped)"
		return 0
	fi
	awk '
		FNR == NR { if ($1 !~ /^#/) before[$1] = $2; next }
		$1 ~ /^rawlb_(packets|drops|ring_drops|gso_frames|resets_sent|nat_port_exhausted|flows_created|flows_refused|flows_expired|icmp_translated)_total/ {
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

# summarize: for each contender and load (each row of redis and iperf),
# the median round's figures under C/LOAD, and over all rounds the sums of
# socket errors, non-2xx answers, retransmissions and ring drops (a target
# of zero holds only if it held in every round) and the list of req/s by
# round.
declare -A BYROUND RATIOS
summarize() {
	local c load r k m v
	for c in "${CONTENDERS[@]}"; do
		for load in "${ROWS[@]}"; do
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
}

# --- the report ---

label() {
	case $1 in
	direct) echo "(a) direct to one backend" ;;
	knat) echo "(b) kernel NAT (nftables)" ;;
	haproxy) echo "(c) HAProxy mode tcp, 1 thread" ;;
	rawlb) echo "(d) rawlb" ;;
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
				"$v" "$p99" "$retr" "$([ "$c" = rawlb ] && echo "${RINGDROPS[$k]:-n/a}" || echo -)" \
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
	echo "for iperf3 with -hc-interval 1h (see scripts/bench.sh)."
	# wrk -v exits 1, and pipefail is on: hence the || true.
	local versions=("$("$RAWLB" -version 2>&1 | head -n 1 || true)" "$(haproxy -v | awk 'NR == 1 { print $1, $3 }' || true)")
	! wants http || versions+=("$(nginx -v 2>&1 | sed 's/.*: //' || true)" "$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }' || true)")
	! wants redis || versions+=("$(redis-server --version | awk '{ print $1, $2, $3 }' || true)")
	! wants iperf || versions+=("$(iperf3 --version | awk 'NR == 1 { print $1, $2 }' || true)")
	local line="" v
	for v in "${versions[@]}"; do
		line+="${line:+, }$v"
	done
	echo "$line."
	echo
	[ ${#LOADS[@]} -eq 0 ] || report_wrk
	[ ${#NEW_ROWS[@]} -eq 0 ] || report_new
	echo "### rawlb"
	echo
	echo "Its start line, and its warnings and errors over the whole run:"
	echo
	echo '```'
	cat "$WORK/rawlb-started.txt" 2>/dev/null || echo "(rawlb did not run)"
	if [ -s "$WORK/rawlb-warnings.txt" ]; then
		cat "$WORK/rawlb-warnings.txt"
	else
		echo "(no warnings or errors)"
	fi
	echo '```'
	echo
	echo "### rawlb counters that moved during each load (last round)"
	echo
	for load in "${ROWS[@]}"; do
		echo "$load:"
		echo
		echo '```'
		counter_deltas "$load"
		echo '```'
		echo
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

log "labs $P*, work dir $WORK, loads ${picked[*]}, $DURATION per load, $ROUNDS round(s)"
write_wrk_script
for round in $(seq 1 "$ROUNDS"); do
	# Round r starts with contender r-1 (mod their number), so that no
	# contender always runs first on a fresh machine or last on a tired one.
	n=${#CONTENDERS[@]}
	for i in $(seq 0 $((n - 1))); do
		c=${CONTENDERS[(i + round - 1) % n]}
		log "=== round $round/$ROUNDS: $(label "$c")"
		build_lab "$c"
		start_backends
		# The report shows the last round's start lines.
		[ "$c" != rawlb ] || : >"$WORK/rawlb-started.txt"
		for svc in "${SERVICES[@]}"; do
			use_service "$svc"
			"start_$c"
			case $svc in
			http)
				for load in "${LOADS[@]}"; do
					run_load "$c" "$load" "$round"
					# Let FINs, TIME_WAITs and the backends settle between loads.
					sleep 2
				done
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
report >"$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
echo
cat "$WORK/report.md"
log "written to $OUT"
