#!/usr/bin/env bash
# bench-ab.sh: server CPU per plain 1 KiB session of two servers, A and
# B, measured AT THE SAME TIME: both servers and both clients run on one
# core (CORE), so whatever speed the machine has at that moment, both
# have it. On a shared VM whose speed moves by 1.5x in phases of seconds,
# two servers measured one after the other (bench-compare) differ by the
# phase as much as by the code; measured together, the same build against
# itself reads 1.00x within a percent, round after round.
#
# What it costs: the two pairs share the core's caches, so a server with
# a larger memory footprint pays more here than when it runs alone. Read
# B/A of two builds of loopmx (did a change help?) with confidence; read
# loopmx against the floor as an upper bound of what bench-compare shows.
#
# A and B are each one of:
#   floor       bench/peers/floor.c, built with gcc
#   .           this working tree
#   a git rev   (HEAD~1, a branch, a commit) built from `git archive`
#
# Usage: A=HEAD~1 B=. scripts/bench-ab.sh     (or make bench-ab)
# Environment: ROUNDS=5 N=20000 C=50 CORE=0; EXTRA_A / EXTRA_B: lines for
# that side's smtp.ini (e.g. EXTRA_B=$'[log]\nlevel = warn'); ENV_A /
# ENV_B: environment for that side (e.g. ENV_B=GOGC=200); LOG_A / LOG_B:
# where that side's log goes (a file in a temporary directory unless set,
# e.g. LOG_B=/dev/null).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
build_binaries
a=${A:-floor} b=${B:-.} rounds=${ROUNDS:-5} n=${N:-20000} c=${C:-50} core=${CORE:-0}
bench=bin/loopmx-bench

temp_dir ab

# build SPEC SIDE: the server of SPEC as $tmp/SIDE; its kind in $tmp/SIDE.kind.
build() {
	local spec=$1 side=$2 src
	if [ "$spec" = floor ]; then
		gcc -O2 -o "$tmp/$side" bench/peers/floor.c
		echo floor >"$tmp/$side.kind"
		return
	fi
	src=.
	if [ "$spec" != . ]; then
		src=$tmp/src-$side
		mkdir -p "$src"
		git archive "$spec" | tar -x -C "$src"
	fi
	(cd "$src" && go build -o "$tmp/$side" .)
	echo loopmx >"$tmp/$side.kind"
}
build "$a" A
build "$b" B

# start SIDE: starts that side's server; sets port_SIDE and pid_SIDE.
start() {
	local side=$1 port extra env log
	port=$($bench -free-port)
	if [ "$(cat "$tmp/$side.kind")" = floor ]; then
		taskset -c "$core" "$tmp/$side" "$port" 2>/dev/null &
	else
		mkdir -p "$tmp/cfg-$side"
		echo queue/discard >"$tmp/cfg-$side/plugins"
		extra=EXTRA_$side env=ENV_$side
		printf '[main]\nlisten = 127.0.0.1:%s\nmax_connections = 0\nmax_connections_per_ip = 0\n%s\n' "$port" "${!extra:-}" >"$tmp/cfg-$side/smtp.ini"
		# shellcheck disable=SC2086 # ENV_ holds NAME=value words
		log=LOG_$side
		env ${!env:-} taskset -c "$core" "$tmp/$side" -c "$tmp/cfg-$side" 2>"${!log:-$tmp/$side.log}" &
	fi
	pids+=($!)
	printf -v "pid_$side" %s "$!"
	printf -v "port_$side" %s "$port"
}

# cpu JSON: server CPU per session (µs) from a run's report: the first
# cpu_per_session_us is the server's (the client's comes after), with the
# decimals the table would round away.
cpu() { grep -o -m1 '"cpu_per_session_us": *[0-9.]*' "$1" | head -1 | tr -dc '0-9.'; }

echo "bench-ab: A=$a B=$b; $rounds rounds of $n sessions ($c at a time) each, both at once on core $core"
: >"$tmp/rounds"
for ((r = 1; r <= rounds; r++)); do
	pids=()
	start A
	start B
	# Warm-up: the first sessions grow each server's heap and caches.
	$bench -progress off -wait 10s -scenario session -n 2000 -c "$c" "127.0.0.1:$port_A" >/dev/null
	$bench -progress off -wait 10s -scenario session -n 2000 -c "$c" "127.0.0.1:$port_B" >/dev/null
	taskset -c "$core" $bench -progress off -scenario session -n "$n" -c "$c" -pid "$pid_A" -json "$tmp/A.$r.json" "127.0.0.1:$port_A" >/dev/null &
	ca=$!
	taskset -c "$core" $bench -progress off -scenario session -n "$n" -c "$c" -pid "$pid_B" -json "$tmp/B.$r.json" "127.0.0.1:$port_B" >/dev/null
	wait "$ca"
	for p in "${pids[@]}"; do stop_tree "$p"; done
	pids=()
	echo "$r $(cpu "$tmp/A.$r.json") $(cpu "$tmp/B.$r.json")" |
		awk '{ printf "  round %s  A %6.1fµs  B %6.1fµs  B/A %.3f\n", $1, $2, $3, $3 / $2 }' | tee -a "$tmp/rounds"
done
awk '{ print $NF }' "$tmp/rounds" | sort -n | awk '{ v[NR] = $1 }
	END { printf "B/A, server CPU per session: median %.3f, spread %.3f-%.3f over %d rounds\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR], NR }'
