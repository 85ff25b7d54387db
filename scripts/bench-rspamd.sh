#!/usr/bin/env bash
# bench-rspamd.sh: messages per second through the rspamd plugin against
# the same config without it, in one run, and where the CPU goes (loopmx,
# rspamd). It starts its own rspamd (Debian's, with its stock rules and a
# LOCAL_CONFDIR of its own: the normal worker alone on a free port, no
# module that asks the network or Redis), then loopmx twice on a free
# port (queue/discard, with and without rspamd), and runs loopmx-bench's
# keepalive scenario (many messages per session) against each. Everything
# it starts is stopped by pid (rspamd by its process group) when it ends.
#
#   scripts/bench-rspamd.sh              # 2000 messages, 8 sessions at once
#   N=5000 C=16 scripts/bench-rspamd.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
build_binaries

N=${N:-2000}
C=${C:-8}
if ! command -v rspamd >/dev/null 2>&1 || [ ! -f /etc/rspamd/rspamd.conf ]; then
	echo "bench-rspamd.sh: rspamd is not installed (apt-get install rspamd, or make deps)" >&2
	exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-bench-rspamd.XXXXXX")
chmod 755 "$tmp"
pid=""
rspamd_pgid=""
cleanup() {
	if [ -n "$pid" ]; then
		stop_tree "$pid"
	fi
	if [ -n "$rspamd_pgid" ]; then
		kill -TERM -- "-$rspamd_pgid" 2>/dev/null || true
		for _ in $(seq 1 50); do
			kill -0 -- "-$rspamd_pgid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$rspamd_pgid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# group_cpu PGID prints the CPU seconds (user + system) used so far by the
# processes of a process group.
group_cpu() {
	local tck
	tck=$(getconf CLK_TCK)
	for f in /proc/[0-9]*/stat; do
		cat "$f" 2>/dev/null || true
	done | awk -v g="$1" -v tck="$tck" '{
		sub(/^[0-9]+ \(.*\) /, "")   # pid and (comm), which may hold spaces
		if ($3 == g) t += $12 + $13  # pgrp, utime, stime
	} END { printf "%.2f\n", t / tck }'
}

# The rspamd config: the stock one, amended by a LOCAL_CONFDIR of our own.
rport=$(bin/loopmx-bench -free-port)
rs=$tmp/rspamd
mkdir -p "$rs/override.d" "$rs/local.d" "$rs/db" "$rs/run" "$rs/log"
printf 'bind_socket = "127.0.0.1:%s";\ncount = 1;\n' "$rport" > "$rs/override.d/worker-normal.inc"
echo 'enabled = false;' > "$rs/override.d/worker-controller.inc"
echo 'enabled = false;' > "$rs/override.d/worker-proxy.inc"
printf 'type = "file";\nlevel = "error";\n' > "$rs/local.d/logging.inc"
printf 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }\nfilters = "chartable,regexp";\n' > "$rs/local.d/options.inc"
printf 'extended_spam_headers = true;\nskip_local = false;\n' > "$rs/local.d/milter_headers.conf"
for m in rbl spf asn hfilter dmarc phishing fuzzy_check emails url_reputation once_received dkim_signing arc mx_check greylist ratelimit neural replies; do
	echo 'enabled = false;' > "$rs/local.d/$m.conf"
done
args=(-f -i -c /etc/rspamd/rspamd.conf --var="LOCAL_CONFDIR=$rs" --var="DBDIR=$rs/db" --var="RUNDIR=$rs/run" --var="LOGDIR=$rs/log")
if [ "$(id -u)" = 0 ]; then
	args+=(-u root -g root)
fi
setsid rspamd "${args[@]}" >"$rs/log/stdout.log" 2>&1 &
rspamd_pgid=$!
echo "bench-rspamd.sh: starting rspamd on 127.0.0.1:$rport (it compiles its rules; this can take a minute)" >&2
for _ in $(seq 1 1800); do
	if [ "$(curl -s --max-time 1 "http://127.0.0.1:$rport/ping" 2>/dev/null)" = pong ]; then
		break
	fi
	kill -0 "$rspamd_pgid" 2>/dev/null || { echo "rspamd exited:" >&2; tail -20 "$rs/log/"* >&2; exit 1; }
	sleep 0.1
done

port=$(bin/loopmx-bench -free-port)
run() { # run LABEL PLUGINS
	local label=$1 plugins=$2 cfg=$tmp/$1 before after
	mkdir -p "$cfg"
	printf '[main]\nlisten = 127.0.0.1:%s\nmax_connections = 0\nmax_connections_per_ip = 0\n[log]\nlevel = warn\n' "$port" > "$cfg/smtp.ini"
	printf '%s\n' $plugins > "$cfg/plugins"
	printf 'url = http://127.0.0.1:%s\nfail = tempfail\n' "$rport" > "$cfg/rspamd.ini"
	bin/loopmx -c "$cfg" 2>"$cfg/loopmx.log" &
	pid=$!
	for _ in $(seq 1 100); do
		grep -q 'loopmx ready' "$cfg/loopmx.log" 2>/dev/null && break
		sleep 0.1
	done
	before=$(group_cpu "$rspamd_pgid")
	bin/loopmx-bench -scenario keepalive -n "$N" -c "$C" -pid "$pid" -json "$tmp/$label.json" "127.0.0.1:$port" >"$tmp/$label.txt" 2>&1 || { cat "$tmp/$label.txt"; exit 1; }
	after=$(group_cpu "$rspamd_pgid")
	stop_tree "$pid"
	pid=""
	echo "== $label: plugins $(echo $plugins)"
	sed -n '/^scenario/,/^$/p' "$tmp/$label.txt"
	awk -v b="$before" -v a="$after" -v n="$N" 'BEGIN { printf "rspamd CPU: %.2f s, %.2f ms per message\n\n", a - b, (a - b) * 1000 / n }'
}
run without "queue/discard"
run with "rspamd queue/discard"
echo "(loopmx's own CPU is the srv/msg column; rspamd's is the line under each table; rspamd log: errors only)"
