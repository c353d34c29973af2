#!/usr/bin/env bash
# Installs what scripts/bench.sh needs on Debian/Ubuntu: nginx (the light
# build where the distribution still has it), haproxy, wrk, nftables,
# iproute2, curl and procps. Idempotent: packages already installed are left
# alone and apt-get runs only when something is missing. Needs root.
#
# Debian's nginx and haproxy packages may start their own system service on
# install; the benchmark never uses it, it runs its own instances inside the
# namespaces it creates.
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

command -v apt-get >/dev/null || die "apt-get not found: install nginx, haproxy, wrk, nftables, iproute2 and curl by hand"

missing=()
for p in iproute2 nftables haproxy wrk curl procps; do
	installed "$p" || missing+=("$p")
done
nginx_missing=true
for p in nginx-light nginx nginx-core nginx-full; do
	if installed "$p"; then
		nginx_missing=false
		break
	fi
done

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
