#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages rawlb's tests and demo need, and fetches
# the Go modules. Needs root (apt-get). Go itself must already be installed.
set -euo pipefail
# gcc and libc6-dev: -race needs cgo (make test-race). ca-certificates: Go
# modules come over HTTPS. git: make lint lists the files, make stamps the
# version. systemd: deploy's check runs systemd-analyze verify on the unit.
# The real clients and servers of the end-to-end tests: curl, nginx and wrk
# (HTTP, keep-alive load), iperf3 (bulk, parallel streams), chromium (the
# status page, headless). clang and libbpf-dev: make lint checks that the
# committed fast-path object (fastpath/fastpath_bpfel.o) is what its source
# gives.
need=(make iproute2 iptables nftables ethtool procps util-linux gcc libc6-dev ca-certificates git systemd
	curl wrk iperf3 chromium clang libbpf-dev)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
missing=()
for p in "${need[@]}"; do
	installed "$p" || missing+=("$p")
done
nginx=false
for p in nginx-light nginx nginx-core nginx-full; do
	installed "$p" && nginx=true
done
if [ ${#missing[@]} -gt 0 ] || ! $nginx; then
	apt-get update -qq
	if ! $nginx; then
		# nginx-light is gone from newer releases; plain nginx serves as well.
		if apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
			missing+=(nginx-light)
		else
			missing+=(nginx)
		fi
	fi
	# Debian's nginx starts its own service on port 80 when installed; the
	# tests never use it (they run their own in namespaces), so keep the
	# package scripts from starting any service: policy-rc.d exit 101 means
	# "not allowed" to invoke-rc.d. Only if the machine has none of its own.
	guard=false
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		guard=true
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || {
		$guard && rm -f /usr/sbin/policy-rc.d
		exit 1
	}
	$guard && rm -f /usr/sbin/policy-rc.d
fi
cd "$(dirname "$0")/.."
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "deps.sh: Go is not installed (https://go.dev/doc/install); rawlb needs Go 1.26 or later" >&2; exit 1; }
go mod download
