#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages rawlb's tests and demo need, and fetches
# the Go modules. Needs root (apt-get). Go itself must already be installed.
set -euo pipefail
# gcc and libc6-dev: -race needs cgo (make test-race). ca-certificates: Go
# modules come over HTTPS. git: make lint lists the files, make stamps the
# version. systemd: deploy's check runs systemd-analyze verify on the unit.
need=(make iproute2 iptables nftables ethtool procps util-linux gcc libc6-dev ca-certificates git systemd)
missing=()
for p in "${need[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cd "$(dirname "$0")/.."
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "deps.sh: Go is not installed (https://go.dev/doc/install); rawlb needs Go 1.26 or later" >&2; exit 1; }
go mod download
