#!/usr/bin/env bash
# Keeps the host's TCP stack out of rawlb's traffic with iptables, for users
# who run rawlb with -firewall=false (rawlb's own -firewall does the same with
# an nftables table). rawlb reads frames from AF_PACKET, but the kernel still
# gets its own copy of each one; nothing listens on the balancer port or the
# NAT ports, so without these rules the host answers clients and backends
# with RSTs and kills the connections rawlb forwards.
#
#   raw PREROUTING   -d SRC -p tcp --dport PORT|FIRST:LAST -j DROP
#                    (before conntrack: the kernel never processes them)
#   filter OUTPUT    -s SRC -p tcp --sport PORT|FIRST:LAST --tcp-flags RST RST -j DROP
#                    (belt and braces for RSTs that still get out)
#   net.ipv4.ip_local_reserved_ports += FIRST-LAST
#                    (no local program binds or auto-picks a NAT port)
#   net.ipv4.conf.lo.accept_local = 1, net.ipv4.conf.lo.route_localnet = 1
#                    (frames rawlb writes into lo, to a client or backend on
#                    this host, are not dropped as martians; see
#                    firewall/loopback.go)
#
# Every rule carries the comment "rawlb SRC:PORT". install is idempotent.
# remove deletes the rules, turns off the lo settings install turned on,
# and takes out of ip_local_reserved_ports only the
# ports install added (recorded in state files under $RAWLB_STATE_DIR,
# default /run/rawlb, which like the sysctl does not survive a reboot), so
# ports reserved by anyone else stay reserved. Everything applies to the
# network namespace the script runs in.
set -euo pipefail

readonly RESERVED=/proc/sys/net/ipv4/ip_local_reserved_ports
IPTABLES=${IPTABLES:-iptables}
STATE_DIR=${RAWLB_STATE_DIR:-/run/rawlb}

usage() {
	echo "usage: ${0##*/} install|remove <srcIP> [port=20000] [natRange=40000-59999]" >&2
	[ $# -eq 0 ] || echo "error: $*" >&2
	exit 2
}

die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

# is_uint N: N is a decimal number without sign or leading zeros.
is_uint() {
	[[ $1 =~ ^(0|[1-9][0-9]{0,4})$ ]]
}

is_port() {
	is_uint "$1" && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

is_ipv4() {
	local IFS=. octets o
	[[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
	read -r -a octets <<<"$1"
	for o in "${octets[@]}"; do
		[[ $o =~ ^(0|[1-9][0-9]{0,2})$ ]] && [ "$o" -le 255 ] || return 1
	done
}

# Port lists are handled as lines "first last", sorted and merged, which is
# how the kernel prints ip_local_reserved_ports ("a,b-c") back after a write.

# list_to_lines "5,1000-2000" prints "5 5" and "1000 2000".
list_to_lines() {
	local item
	local -a items
	IFS=, read -r -a items <<<"$1"
	for item in "${items[@]}"; do
		case $item in
		*-*) echo "${item%-*} ${item#*-}" ;;
		*) echo "$item $item" ;;
		esac
	done
}

# lines_to_list sorts and merges "first last" lines from stdin and prints
# the comma-separated list the kernel would print.
lines_to_list() {
	sort -n -k1,1 -k2,2 | awk '
		function flush() { if (have) out = out (out == "" ? "" : ",") (lo == hi ? lo : lo "-" hi) }
		{ if (have && $1 <= hi + 1) { if ($2 > hi) hi = $2; next }
		  flush(); lo = $1; hi = $2; have = 1 }
		END { flush(); print out }'
}

# subtract_lines A B: the ports of list A that are not in list B, as lines.
subtract_lines() {
	{
		list_to_lines "$1" | sed 's/^/A /'
		list_to_lines "$2" | sed 's/^/B /'
	} | awk '
		$1 == "A" { n++; lo[n] = $2; hi[n] = $3; next }
		{ b_lo[++m] = $2; b_hi[m] = $3 }
		END {
			for (i = 1; i <= n; i++) {
				# Cut every B range out of A range i, keeping the pieces.
				k = 1; plo[1] = lo[i]; phi[1] = hi[i]
				for (j = 1; j <= m; j++) {
					nk = 0
					for (p = 1; p <= k; p++) {
						if (phi[p] < b_lo[j] || plo[p] > b_hi[j]) { nlo[++nk] = plo[p]; nhi[nk] = phi[p]; continue }
						if (plo[p] < b_lo[j]) { nlo[++nk] = plo[p]; nhi[nk] = b_lo[j] - 1 }
						if (phi[p] > b_hi[j]) { nlo[++nk] = b_hi[j] + 1; nhi[nk] = phi[p] }
					}
					k = nk
					for (p = 1; p <= k; p++) { plo[p] = nlo[p]; phi[p] = nhi[p] }
				}
				for (p = 1; p <= k; p++) print plo[p], phi[p]
			}
		}'
}

# union LIST... prints the canonical list of all ports in the lists.
union() {
	local l
	for l in "$@"; do
		[ -z "$l" ] || list_to_lines "$l"
	done | lines_to_list
}

# subtract A B prints the canonical list of A's ports not in B.
subtract() {
	if [ -z "$1" ]; then
		echo ""
	elif [ -z "$2" ]; then
		union "$1"
	else
		subtract_lines "$1" "$2" | lines_to_list
	fi
}

read_reserved() {
	local v
	v=$(<"$RESERVED") || die "cannot read $RESERVED"
	echo "$v"
}

write_reserved() {
	# The trailing newline matters: the kernel ignores an empty write, and
	# "\n" is how the list is cleared.
	printf '%s\n' "$1" >"$RESERVED" ||
		die "cannot write $RESERVED: run as root (needs CAP_NET_ADMIN and a writable /proc/sys)"
}

# rules prints one iptables rule spec per line: table, chain, then match.
rules() {
	local p
	for p in "$PORT" "$NAT_FIRST:$NAT_LAST"; do
		echo "raw PREROUTING -d $SRC -p tcp --dport $p"
	done
	for p in "$PORT" "$NAT_FIRST:$NAT_LAST"; do
		echo "filter OUTPUT -s $SRC -p tcp --sport $p --tcp-flags RST RST"
	done
}

ipt() {
	"$IPTABLES" -w "$@"
}

install_rules() {
	local table chain spec
	local -a match
	while read -r table chain spec; do
		read -r -a match <<<"$spec"
		if ! ipt -t "$table" -C "$chain" "${match[@]}" -m comment --comment "$COMMENT" -j DROP 2>/dev/null; then
			ipt -t "$table" -A "$chain" "${match[@]}" -m comment --comment "$COMMENT" -j DROP ||
				die "adding the $table $chain rule failed: run as root (needs CAP_NET_ADMIN)"
		fi
	done < <(rules)
}

remove_rules() {
	local table chain spec
	local -a match
	while read -r table chain spec; do
		read -r -a match <<<"$spec"
		# -D removes one copy; loop in case an older script added duplicates.
		while ipt -t "$table" -C "$chain" "${match[@]}" -m comment --comment "$COMMENT" -j DROP 2>/dev/null; do
			ipt -t "$table" -D "$chain" "${match[@]}" -m comment --comment "$COMMENT" -j DROP ||
				die "deleting the $table $chain rule failed: run as root (needs CAP_NET_ADMIN)"
		done
	done < <(rules)
}

reserve_ports() {
	local cur added
	cur=$(read_reserved)
	if [ -e "$STATE" ]; then
		# Installed before: what we added then is what remove must take
		# back. Recomputing now would record nothing, as the range is
		# already reserved.
		added=$(<"$STATE")
	else
		added=$(subtract "$NAT_FIRST-$NAT_LAST" "$cur")
		mkdir -p "$STATE_DIR"
		printf '%s\n' "$added" >"$STATE.tmp"
		mv "$STATE.tmp" "$STATE"
	fi
	[ -n "$added" ] || return 0
	local want
	want=$(union "$cur" "$NAT_FIRST-$NAT_LAST")
	[ "$want" = "$cur" ] || write_reserved "$want"
}

release_ports() {
	[ -e "$STATE" ] || return 0
	local cur added
	added=$(<"$STATE")
	cur=$(read_reserved)
	# Only if the range is still all reserved: otherwise someone edited the
	# list since install, and their edit wins.
	if [ -n "$added" ] && [ -z "$(subtract "$NAT_FIRST-$NAT_LAST" "$cur")" ]; then
		local want
		want=$(subtract "$cur" "$added")
		[ "$want" = "$cur" ] || write_reserved "$want"
	fi
	rm -f "$STATE"
}

# lo's settings that install turned on are recorded in $LO_STATE (one name
# a line); remove turns off exactly those.
readonly LO_CONF=/proc/sys/net/ipv4/conf/lo
enable_loopback() {
	[ ! -e "$LO_STATE" ] || return 0
	local name on=()
	for name in accept_local route_localnet; do
		if [ "$(<"$LO_CONF/$name")" = 0 ]; then
			echo 1 >"$LO_CONF/$name" || die "writing $LO_CONF/$name failed: run as root"
			on+=("$name")
		fi
	done
	mkdir -p "$STATE_DIR"
	printf '%s\n' "${on[@]}" >"$LO_STATE.tmp"
	mv "$LO_STATE.tmp" "$LO_STATE"
}

restore_loopback() {
	[ -e "$LO_STATE" ] || return 0
	local name
	while read -r name; do
		[ -z "$name" ] || echo 0 >"$LO_CONF/$name"
	done <"$LO_STATE"
	rm -f "$LO_STATE"
}

case ${1:-} in
-h | --help)
	echo "usage: ${0##*/} install|remove <srcIP> [port=20000] [natRange=40000-59999]"
	exit 0
	;;
esac
if [ $# -lt 2 ] || [ $# -gt 4 ]; then
	usage "expected 2 to 4 arguments, got $#"
fi
ACTION=$1
SRC=$2
PORT=${3:-20000}
NAT=${4:-40000-59999}
case $ACTION in
install | remove) ;;
*) usage "unknown action \"$ACTION\": use install or remove" ;;
esac
is_ipv4 "$SRC" || usage "\"$SRC\" is not an IPv4 address"
is_port "$PORT" || usage "port \"$PORT\" is not a number from 1 to 65535"
[[ $NAT == *-* ]] || usage "NAT range \"$NAT\" is not first-last"
NAT_FIRST=${NAT%%-*}
NAT_LAST=${NAT#*-}
if ! is_port "$NAT_FIRST" || ! is_port "$NAT_LAST"; then
	usage "NAT range \"$NAT\" needs two ports from 1 to 65535"
fi
[ "$NAT_FIRST" -le "$NAT_LAST" ] || usage "NAT range \"$NAT\" is backwards: first must be <= last"
if [ "$NAT_FIRST" -le "$PORT" ] && [ "$PORT" -le "$NAT_LAST" ]; then
	usage "port $PORT lies inside the NAT range $NAT: move one of them"
fi
readonly ACTION SRC PORT NAT_FIRST NAT_LAST
readonly COMMENT="rawlb $SRC:$PORT"

command -v "$IPTABLES" >/dev/null || die "$IPTABLES not found: install the iptables package"
# Fail early and clearly: without privilege every -C below would just look
# like "rule absent", and remove would claim success.
ipt -t raw -S PREROUTING >/dev/null 2>&1 ||
	die "cannot read the iptables raw table: run as root (needs CAP_NET_ADMIN)"
# The state is per network namespace, like the sysctl and the rules.
NETNS=$(stat -L -c %i /proc/self/ns/net) || die "cannot identify the network namespace"
readonly STATE="$STATE_DIR/reserved-ports-$NETNS-$SRC-$PORT"
readonly LO_STATE="$STATE_DIR/loopback-$NETNS-$SRC-$PORT"

case $ACTION in
install)
	install_rules
	reserve_ports
	enable_loopback
	;;
remove)
	remove_rules
	release_ports
	restore_loopback
	;;
esac
