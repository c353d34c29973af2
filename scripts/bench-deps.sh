#!/usr/bin/env bash
# Installs what scripts/bench.sh needs on Debian/Ubuntu: haproxy, nftables,
# iproute2, curl and procps always, and for the loads in BENCH_LOADS (as
# bench.sh reads it; default the first five): nginx (the light build where
# the distribution still has it) for conn, keepalive, bulk and restart, wrk
# for the first three; redis-server and redis-tools (redis-benchmark,
# redis-cli) for redis; iperf3 for iperf. The restart load's client
# (internal/tools/connrate) and BENCH_VARIANTS' _REV builds need Go, which
# the repository's build needs anyway: it is not installed here.
# Idempotent: packages already installed are left alone and apt-get runs
# only when something is missing. Needs root.
#
# Debian's nginx, haproxy and redis-server packages may start their own
# system service on install; the benchmark never uses it, it runs its own
# instances inside the namespaces it creates. iperf3 asks whether to start
# a daemon and, installed noninteractively, does not.
set -euo pipefail

die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

# candidate PKG: apt knows a version of PKG it could install.
candidate() {
	local c
	c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')
	[ -n "$c" ] && [ "$c" != "(none)" ]
}

# The same default as bench.sh's; bench.sh rejects names it does not know.
read -r -a loads <<<"${BENCH_LOADS:-conn keepalive bulk redis iperf}"
want=(iproute2 nftables haproxy curl procps)
need_nginx=false need_wrk=false
for l in "${loads[@]}"; do
	case $l in
	conn | keepalive | bulk) need_nginx=true need_wrk=true ;;
	restart) need_nginx=true ;;
	redis) want+=(redis-server redis-tools) ;;
	iperf) want+=(iperf3) ;;
	esac
done
if $need_wrk; then
	want+=(wrk)
fi

command -v apt-get >/dev/null || die "apt-get not found: install ${want[*]}$($need_nginx && echo " nginx") by hand"

missing=()
for p in "${want[@]}"; do
	installed "$p" || [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
done
nginx_missing=false
if $need_nginx; then
	nginx_missing=true
	for p in nginx-light nginx nginx-core nginx-full; do
		if installed "$p"; then
			nginx_missing=false
			break
		fi
	done
fi

if [ ${#missing[@]} -eq 0 ] && ! $nginx_missing; then
	echo "bench-deps: everything is installed"
	exit 0
fi
[ "$(id -u)" -eq 0 ] || die "needs root to install the missing packages (${missing[*]}$($nginx_missing && echo " nginx"))"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if $nginx_missing; then
	# nginx-light is gone from newer releases; plain nginx serves as well.
	if candidate nginx-light; then
		missing+=(nginx-light)
	else
		missing+=(nginx)
	fi
fi
echo "bench-deps: installing ${missing[*]}"
apt-get install -y -qq --no-install-recommends "${missing[@]}"
