#!/usr/bin/env bash
# Installs what the Docker checks need, from Debian's own packages (no other
# registry): docker.io (dockerd 20.10, containerd, runc, docker-proxy) and
# docker-compose (Compose v1, 1.29). Needs root (apt-get). .ci/run calls it
# after deps.sh, which installs iproute2, iptables and util-linux (nsenter,
# unshare), which the Docker test needs too.
#
# The test (deploy/docker_e2e_test.go, run by `make test-slow`) starts a
# dockerd of its own in a network namespace and never uses the system's
# docker service. On a machine that runs systemd, installing docker.io
# starts that service as well (Debian's default); nothing here needs it.
set -euo pipefail
need=(docker.io docker-compose)
missing=()
for p in "${need[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	# --no-install-recommends: docker.io recommends apparmor, cgroupfs-mount,
	# git, needrestart and xz-utils (ca-certificates too, which deps.sh
	# installs), none of which the test uses.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
