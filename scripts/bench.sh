#!/usr/bin/env bash
# Side-by-side benchmark of rawlb against one backend reached directly, the
# kernel's own full NAT (nftables) and HAProxy in mode tcp, on a namespace
# network like the end-to-end tests':
#
#   switch ns: bridge br0 (stp off, forward_delay 0)
#   client   198.18.0.10   wrk
#   balancer 198.18.0.2    kernel NAT, HAProxy or rawlb
#   be1..3   198.18.0.11-13 nginx on :8090 (GET / short body, /big 64 MiB)
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
# Loads, each for BENCH_DURATION (default 10s), from the client:
#   conn       wrk -t2 -c32 -H 'Connection: close' /   a connection per request
#   keepalive  wrk -t2 -c32 /                          keep-alive requests
#   bulk       wrk -t1 -c1 /big                        one bulk stream
#
# Needs root, nginx, haproxy, wrk, nft, ip, curl (scripts/bench-deps.sh) and
# bin/rawlb (make build; RAWLB_BIN overrides). BENCH_CONTENDERS runs only
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
readonly BACKEND_IPS=(198.18.0.11 198.18.0.12 198.18.0.13)
readonly METRICS_ADDR=127.0.0.1:9120
readonly BIG_BYTES=$((64 << 20))
readonly LOADS=(conn keepalive bulk)
readonly ALL_CONTENDERS=(direct knat haproxy rawlb)

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

[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "BENCH_DURATION=$DURATION: want a wrk duration such as 10s, 2m"
[[ $ROUNDS =~ ^[1-9]$ ]] || die "BENCH_ROUNDS=$ROUNDS: want a number of rounds from 1 to 9"
readonly ROUNDS
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces); run it as: sudo make bench"
for tool in ip bridge nft nginx haproxy wrk curl top getconf; do
	command -v "$tool" >/dev/null || die "$tool not found: run scripts/bench-deps.sh"
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
# Each start_* sets LB_NS (the balancer namespace or empty), LB_PID (the
# balancer process to account CPU to, or empty) and URL_BASE.

start_direct() {
	LB_NS="" LB_PID="" URL_BASE="http://${BACKEND_IPS[0]}:$BE_PORT"
}

start_knat() {
	LB_NS=${LAB}lb LB_PID="" URL_BASE="http://$LB_IP:$LB_PORT"
	add_host "$LB_NS" lb "$LB_IP"
	ip netns exec "$LB_NS" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
	ip netns exec "$LB_NS" nft -f - <<-EOF
		table ip rawlb_bench_nat {
			chain prerouting {
				type nat hook prerouting priority dstnat;
				ip daddr $LB_IP tcp dport $LB_PORT dnat to numgen inc mod 3 map { 0 : ${BACKEND_IPS[0]}, 1 : ${BACKEND_IPS[1]}, 2 : ${BACKEND_IPS[2]} } : $BE_PORT
			}
			chain postrouting {
				type nat hook postrouting priority srcnat;
				ct status dnat snat to $LB_IP
			}
		}
	EOF
	wait_until 10 "kernel NAT balancing" check_balanced "$URL_BASE/"
}

start_haproxy() {
	LB_NS=${LAB}lb URL_BASE="http://$LB_IP:$LB_PORT"
	add_host "$LB_NS" lb "$LB_IP"
	cat >"$WORK/haproxy.cfg" <<-EOF
		global
			nbthread 1
			# Two fds a connection; 4096 stays under a 20000 fd hard limit.
			maxconn 4096
		defaults
			mode tcp
			timeout connect 5s
			timeout client 60s
			timeout server 60s
		frontend bench
			bind $LB_IP:$LB_PORT
			default_backend nginx
		backend nginx
			balance roundrobin
			server be1 ${BACKEND_IPS[0]}:$BE_PORT
			server be2 ${BACKEND_IPS[1]}:$BE_PORT
			server be3 ${BACKEND_IPS[2]}:$BE_PORT
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
	local args=(-port "$LB_PORT" -metrics "$METRICS_ADDR" "$LB_IP")
	local ip
	for ip in "${BACKEND_IPS[@]}"; do
		args+=("$ip:$BE_PORT")
	done
	log "rawlb ${args[*]}"
	start "$LB_NS" "$WORK/rawlb.log" "$RAWLB" "${args[@]}"
	LB_PID=$STARTED_PID RAWLB_MAIN_PID=$STARTED_PID
	wait_until 20 "rawlb started" rawlb_started
	wait_until 20 "rawlb: all three backends up" rawlb_backends_up
	wait_until 10 "rawlb balancing" lb_balancing "$WORK/rawlb.log"
}

# lb_balancing LOGFILE: the balancer process still runs and balances.
lb_balancing() {
	alive "$LB_PID" || die "the balancer exited: $(tail -n 20 "$1")"
	check_balanced "$URL_BASE/"
}

rawlb_started() {
	alive "$LB_PID" || die "rawlb exited: $(tail -n 20 "$WORK/rawlb.log")"
	grep -q 'rawlb started' "$WORK/rawlb.log"
}

scrape() {
	ip netns exec "$LB_NS" curl -sf --max-time 3 "http://$METRICS_ADDR/metrics"
}

rawlb_backends_up() {
	[ "$(scrape | awk '/^rawlb_backend_up[{ ]/ { s += $NF } END { print s + 0 }')" = 3 ]
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

declare -A RPS P99 MBS SOCKERR NON2XX LBCPU HOSTCPU RETRANS OTHERCPU

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
	local h0 h1 p0=0 p1=0 sampler=""
	[ "$c" != rawlb ] || scrape >"$WORK/metrics-$load-before.txt" || true
	if [ "$c" = rawlb ] && [ "$load" = keepalive ]; then
		# Per-thread CPU over the load, and one top -H frame from its middle.
		thread_ticks "$LB_PID" >"$WORK/threads-before.txt"
		(
			sleep $((DURATION_S / 2))
			top -b -H -n 2 -d 1 -p "$LB_PID" >"$WORK/top.txt" 2>&1 || true
		) &
		sampler=$!
	fi
	ns_tcp_counters "$CLIENT" >"$WORK/client-$c-$load-before.txt"
	other_ticks >"$WORK/other-before.txt"
	[ -z "$LB_PID" ] || p0=$(proc_ticks "$LB_PID")
	h0=$(host_ticks)
	log "$c/$load: wrk ${WRK_OPTS[*]} $URL_BASE$WRK_PATH"
	local rc=0
	ip netns exec "$CLIENT" wrk "${WRK_OPTS[@]}" "$URL_BASE$WRK_PATH" >"$out" 2>&1 || rc=$?
	h1=$(host_ticks)
	[ -z "$LB_PID" ] || p1=$(proc_ticks "$LB_PID")
	ns_tcp_counters "$CLIENT" >"$WORK/client-$c-$load-after.txt"
	other_ticks >"$WORK/other-after.txt"
	OTHERCPU[$k]=$(awk -v hz="$HZ" 'FNR == NR { b[$1] = $2; next } { s += $2 - b[$1] } END { printf "%.1f", s / hz }' \
		"$WORK/other-before.txt" "$WORK/other-after.txt")
	if [ -n "$sampler" ]; then
		thread_ticks "$LB_PID" >"$WORK/threads-after.txt"
		wait "$sampler" || true
	fi
	[ "$c" != rawlb ] || scrape >"$WORK/metrics-$load-after.txt" || true
	cat "$out" >&2

	if [ -n "$LB_PID" ]; then
		alive "$LB_PID" || log "$c exited during $load"
		LBCPU[$k]=$(awk -v a="$p0" -v b="$p1" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }')
	fi
	RETRANS[$k]=$(counter_delta "$WORK/client-$c-$load-before.txt" "$WORK/client-$c-$load-after.txt" TcpExt.TCPSynRetrans)/$(
		counter_delta "$WORK/client-$c-$load-before.txt" "$WORK/client-$c-$load-after.txt" Tcp.RetransSegs)
	HOSTCPU[$k]=$(awk -v a="$h0" -v b="$h1" -v hz="$HZ" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		printf "%.1f (%.1f)", (y[1] - x[1]) / hz, (y[2] - x[2]) / hz }')
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
# bulk stream (a few whole requests in 10 s say little), req/s otherwise.
primary() {
	if [ "$1" = bulk ]; then echo "${MBS[$2]:-}"; else echo "${RPS[$2]:-}"; fi
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

# summarize: for each contender and load, the median round's figures under
# C/LOAD, and over all rounds the sums of socket errors, non-2xx answers
# and retransmissions (a target of zero holds only if it held in every
# round) and the list of req/s by round.
declare -A BYROUND RATIOS
summarize() {
	local c load r k m v
	for c in "${CONTENDERS[@]}"; do
		for load in "${LOADS[@]}"; do
			k=$c/$load m=$(median_round "$c" "$load")
			RPS[$k]=${RPS[$k/$m]:-} MBS[$k]=${MBS[$k/$m]:-} P99[$k]=${P99[$k/$m]:-}
			LBCPU[$k]=${LBCPU[$k/$m]:-} HOSTCPU[$k]=${HOSTCPU[$k/$m]:-} OTHERCPU[$k]=${OTHERCPU[$k/$m]:-}
			BYROUND[$k]=$(for r in $(seq 1 "$ROUNDS"); do v=$(primary "$load" "$k/$r"); echo "${v:-n/a}"; done | paste -sd/ -)
			SOCKERR[$k]=$(sum_rounds SOCKERR "$k")
			NON2XX[$k]=$(sum_rounds NON2XX "$k")
			RETRANS[$k]=$(sum_rounds RETRANS "$k")
		done
	done
	for load in "${LOADS[@]}"; do
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
	esac
}

# ratio A B: A/B to two places, or n/a.
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "n/a"; exit }
		printf "%.2f", a / b }'
}

report() {
	local load c k
	echo "## rawlb benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "Machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)."
	echo "Everything (wrk, three nginx, the balancer) shares these cores. Each load runs $DURATION;"
	echo "each contender gets a freshly built lab (switch, client, backends, balancer) in each of"
	echo "$ROUNDS round(s); each round starts with the next contender in turn."
	echo "The client namespace has net.ipv4.tcp_tw_reuse=1 (wrk's own TIME_WAITs would"
	echo "otherwise make connect() the bottleneck); nginx has keepalive_requests 1000000,"
	echo "HAProxy nbthread 1, maxconn 4096; rawlb runs with its defaults (-workers 0)."
	echo "$("$RAWLB" -version 2>&1 | head -n 1), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | awk 'NR == 1 { print $1, $3 }'), $(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')."
	echo
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
	for load in "${LOADS[@]}"; do
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

log "labs $P*, work dir $WORK, $DURATION per load, $ROUNDS round(s)"
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
		"start_$c"
		for load in "${LOADS[@]}"; do
			run_load "$c" "$load" "$round"
			# Let FINs, TIME_WAITs and the backends settle between loads.
			sleep 2
		done
		if [ "$c" = rawlb ]; then
			alive "$LB_PID" || log "rawlb is not running at the end: $(tail -n 20 "$WORK/rawlb.log")"
			grep -m 1 'rawlb started' "$WORK/rawlb.log" >"$WORK/rawlb-started.txt" || true
			grep -Ei 'level=(warn|error)|panic' "$WORK/rawlb.log" | head -n 20 >>"$WORK/rawlb-warnings.txt" || true
		fi
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
