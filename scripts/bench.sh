#!/usr/bin/env bash
# bench.sh: what `make bench` runs. Builds bin/loopmx and bin/loopmx-bench,
# starts loopmx on a free 127.0.0.1 port with a bench config (queue/discard,
# no connection limit), runs the standard scenarios against it with -pid,
# prints one summary table, and stops the server. Nothing is left running:
# the server and any process it started are stopped by pid on exit.
#
# Environment:
#   BENCH_ARGS  extra loopmx-bench flags, e.g. "-scale 0.5" or "-scenario session"
#   BENCH_JSON  also write the report as JSON to this file
set -euo pipefail
cd "$(dirname "$0")/.."

go build -o bin/loopmx .
go build -o bin/loopmx-bench ./bench

# The idle scenario holds thousands of connections; both ends need a
# descriptor for each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-bench.XXXXXX")
pid=""

# stop_tree (by pid) lives in lib.sh.
. scripts/lib.sh

cleanup() {
	if [ -n "$pid" ]; then
		stop_tree "$pid"
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(bin/loopmx-bench -free-port)
mkdir "$tmp/config"
cat > "$tmp/config/smtp.ini" <<EOF
[main]
listen = 127.0.0.1:$port
max_connections = 0
[log]
level = warn
EOF
echo "queue/discard" > "$tmp/config/plugins"

bin/loopmx -c "$tmp/config" 2>"$tmp/loopmx.log" &
pid=$!

status=0
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
bin/loopmx-bench -wait 15s -scenario standard -pid "$pid" -label loopmx \
	${BENCH_JSON:+-json "$BENCH_JSON"} ${BENCH_ARGS:-} "127.0.0.1:$port" || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
	echo "bench.sh: loopmx exited during the run" >&2
	status=1
fi
if [ "$status" -ne 0 ]; then
	echo "bench.sh: failed (status $status); last lines of the loopmx log:" >&2
	tail -20 "$tmp/loopmx.log" >&2
fi
exit "$status"
