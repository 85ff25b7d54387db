#!/usr/bin/env bash
# bench-compare.sh: what `make bench-compare` runs. The standard scenarios
# against loopmx and each peer that can run here (smtp-sink, and from
# bench/peers: the go-smtp sink, floor.c, Haraka), in ROUNDS interleaved
# rounds, then the median of each figure per server and the ratio
# loopmx/peer. bench/peers/README.md says what each peer is.
#
# The peers are built here, into a temporary directory: floor.c with gcc,
# the go-smtp sink with `go build` in its own module (go-smtp comes from
# the Go module proxy the first time). A peer whose tools are missing, or
# that does not build, is named as skipped with the reason. Haraka is never
# installed from here (npm takes minutes): run bench/peers/haraka.sh install
# once to include it. Every server is started and stopped by its pid.
#
# Server and client are pinned to the SAME core (CORE, default 0): on a
# small shared machine that cuts run-to-run spread from about 2x to a few
# percent, every server gets the same one core (Go servers see
# GOMAXPROCS=1), and the figures compared, the server's CPU per session and
# per message from /proc, do not depend on how the scheduler spread the two
# programs over the cores.
#
# Environment:
#   ROUNDS      rounds (default 3); the median is over rounds
#   MAX_SPREAD  when the runs of a headline figure (server CPU per session or
#               per kept-session message) of any server spread by more than
#               this fraction of their median (default 0.10), run more rounds
#   MAX_ROUNDS  ... up to this many in all (default twice ROUNDS)
#   CORE        the core both sides run on (default 0)
#   SCALE       multiplies each scenario's default -n (default 0.5, which
#               keeps a round of five servers near two minutes)
#   BENCH_ARGS  extra loopmx-bench flags for every run
#   SERVERS     run only these servers, e.g. "loopmx loopmx-metrics" (the
#               cost of metrics_listen: loopmx-metrics is loopmx with the
#               endpoint on and nothing scraping it during the run)
#   PEERS_DIR   where the peers live (default bench/peers)
#   HARAKA_BASE where haraka.sh installed Haraka (default $TMPDIR/haraka-peer)
#   KEEP        a directory to keep each run's table and JSON in
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MAX_SPREAD=${MAX_SPREAD:-0.10}
MAX_ROUNDS=${MAX_ROUNDS:-$((2 * ROUNDS))}
CORE=${CORE:-0}
SCALE=${SCALE:-0.5}
PEERS_DIR=${PEERS_DIR:-bench/peers}
if ! PEERS_DIR=$(cd "$PEERS_DIR" 2>/dev/null && pwd); then
	echo "bench-compare.sh: PEERS_DIR ${PEERS_DIR:-}: no such directory" >&2
	exit 1
fi
HARAKA_BASE=${HARAKA_BASE:-${TMPDIR:-/tmp}/haraka-peer}

# build_binaries (in lib.sh) builds bin/loopmx as `make build` does, with
# its version, unless make has just done so; stop_tree and note_run live
# there too.
. scripts/lib.sh
build_binaries
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-compare.XXXXXX")
out=${KEEP:-$tmp/results}
mkdir -p "$out"
pid=""
stop_cmd=""

stop_server() {
	if [ -n "$stop_cmd" ]; then
		$stop_cmd >/dev/null 2>&1 || true
	fi
	if [ -n "$pid" ]; then
		stop_tree "$pid"
	fi
	pid="" stop_cmd=""
}

cleanup() {
	stop_server
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pin="taskset -c $CORE"
if ! command -v taskset >/dev/null 2>&1; then
	echo "bench-compare.sh: taskset not found (util-linux); running unpinned" >&2
	pin=""
fi

# Which servers can run here. Each has a start_NAME PORT function that sets
# pid (and stop_cmd when the server has its own way to stop).
servers=(loopmx loopmx-metrics)
skipped=()

# start_loopmx_in DIR PORT [LINE] starts loopmx on the bench config, with
# LINE added to its [main].
start_loopmx_in() {
	mkdir -p "$tmp/$1"
	# The default log level (info): a connection and a transaction line
	# per session, as an operator runs it.
	printf '[main]\nlisten = 127.0.0.1:%s\nmax_connections = 0\nmax_connections_per_ip = 0\n%s\n' "$2" "${3:-}" > "$tmp/$1/smtp.ini"
	echo "queue/discard" > "$tmp/$1/plugins"
	$pin bin/loopmx -c "$tmp/$1" 2>>"$tmp/$1.log" &
	pid=$!
}
start_loopmx() { start_loopmx_in loopmx "$1"; }
start_loopmx-metrics() { start_loopmx_in loopmx-metrics "$1" "metrics_listen = 127.0.0.1:$(bin/loopmx-bench -free-port)"; }

SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
if [ -x "$SMTP_SINK" ]; then
	servers+=(smtp-sink)
else
	skipped+=("smtp-sink: not installed (apt-get install postfix)")
fi
start_smtp-sink() {
	local user=()
	[ "$(id -u)" = 0 ] && user=(-u nobody)
	$pin "$SMTP_SINK" "${user[@]}" -m 8000 "127.0.0.1:$1" 4096 2>>"$tmp/smtp-sink.log" &
	pid=$!
}

# last_line prints the last non-empty line of a build log, for a skip reason.
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -1; }

if [ ! -f "$PEERS_DIR/gosmtp-sink/go.mod" ]; then
	skipped+=("gosmtp-sink: no $PEERS_DIR/gosmtp-sink/go.mod")
elif (cd "$PEERS_DIR/gosmtp-sink" && go build -o "$tmp/gosmtp-sink" .) >"$tmp/gosmtp-build.log" 2>&1; then
	servers+=(gosmtp-sink)
else
	skipped+=("gosmtp-sink: go build in $PEERS_DIR/gosmtp-sink failed (go-smtp comes from the Go module proxy): $(last_line "$tmp/gosmtp-build.log")")
fi
start_gosmtp-sink() {
	$pin "$tmp/gosmtp-sink" -addr "127.0.0.1:$1" 2>>"$tmp/gosmtp-sink.log" &
	pid=$!
}

if ! command -v gcc >/dev/null 2>&1; then
	skipped+=("floor: gcc not installed (apt-get install gcc)")
elif [ ! -f "$PEERS_DIR/floor.c" ]; then
	skipped+=("floor: no $PEERS_DIR/floor.c")
elif gcc -O2 -o "$tmp/floor" "$PEERS_DIR/floor.c" >"$tmp/floor-build.log" 2>&1; then
	servers+=(floor)
else
	skipped+=("floor: gcc could not build $PEERS_DIR/floor.c: $(last_line "$tmp/floor-build.log")")
fi
start_floor() {
	$pin "$tmp/floor" "$1" 2>>"$tmp/floor.log" &
	pid=$!
}

if [ -x "$HARAKA_BASE/node_modules/.bin/haraka" ] && [ -d "$HARAKA_BASE/h" ]; then
	if command -v node >/dev/null 2>&1; then
		servers+=(haraka)
	else
		skipped+=("haraka: node not installed (apt-get install nodejs)")
	fi
elif ! command -v npm >/dev/null 2>&1; then
	skipped+=("haraka: node and npm not installed (apt-get install nodejs npm), then run $PEERS_DIR/haraka.sh install")
else
	skipped+=("haraka: not installed in $HARAKA_BASE (run $PEERS_DIR/haraka.sh install once; npm takes minutes)")
fi
start_haraka() {
	PORT=$1 BASE=$HARAKA_BASE $pin "$PEERS_DIR/haraka.sh" start 0 >>"$tmp/haraka.log" 2>&1 || return 1
	pid=$(cat "$HARAKA_BASE/haraka.pid")
	stop_cmd="env BASE=$HARAKA_BASE $PEERS_DIR/haraka.sh stop"
}

if [ -n "${SERVERS:-}" ]; then
	wanted=()
	for s in "${servers[@]}"; do
		case " $SERVERS " in *" $s "*) wanted+=("$s") ;; esac
	done
	servers=("${wanted[@]}")
fi
n=${#servers[@]}
echo "bench-compare: ${servers[*]}; $ROUNDS rounds, server and client on core $CORE, -scale $SCALE" >&2
for s in "${skipped[@]}"; do
	echo "  skipped $s" >&2
done
# round R: every server once, each round starting one server later, so no
# server is always first.
round() {
	local r=$1 i name port t0 status
	for ((i = 0; i < n; i++)); do
		name=${servers[$(((i + r - 1) % n))]}
		port=$(bin/loopmx-bench -free-port)
		if ! "start_$name" "$port"; then
			echo "  round $r: $name did not start; see its log" >&2
			continue
		fi
		t0=$SECONDS
		status=0
		# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
		$pin bin/loopmx-bench -progress off -wait 30s -scenario standard -scale "$SCALE" -pid "$pid" \
			-label "$name" -round "$r" -json "$out/$name.$r.json" ${BENCH_ARGS:-} "127.0.0.1:$port" \
			>"$out/$name.$r.txt" 2>&1 || status=$?
		stop_server
		note_run "round $r: $name" "$status" "$out/$name.$r" $((SECONDS - t0))
	done
}
r=0
while ((r < ROUNDS)); do
	r=$((r + 1))
	round "$r"
done
# A wide spread means the machine changed under the runs: more rounds, so
# the median rests on more of them.
shopt -s nullglob
while ((r < MAX_ROUNDS)); do
	status=0
	bin/loopmx-bench -compare -base loopmx -max-spread "$MAX_SPREAD" "$out"/*.json >"$tmp/check.txt" 2>&1 || status=$?
	[ "$status" -eq 3 ] || break
	r=$((r + 1))
	echo "  $(grep -m1 '^spread wider' "$tmp/check.txt"); round $r of at most $MAX_ROUNDS" >&2
	round "$r"
done

echo
results=("$out"/*.json)
if [ ${#results[@]} -eq 0 ]; then
	echo "bench-compare.sh: no run finished" >&2
	exit 1
fi
bin/loopmx-bench -compare -base loopmx -max-spread "$MAX_SPREAD" "${results[@]}" || true
for s in "${skipped[@]}"; do
	echo "skipped $s"
done
