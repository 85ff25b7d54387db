#!/usr/bin/env bash
# bench-hostile.sh: the hostile-client figures of docs/benchmarks.md
# (Hostile clients). Builds bin/loopmx and bin/loopmx-hostile, starts
# loopmx on a free 127.0.0.1 port with its default limits (log level warn,
# rcpt_to.in_host_list and queue/discard), runs one loopmx-hostile
# scenario against it with -pid, and stops the server by its pid. Nothing
# is left running.
#
# Usage: scripts/bench-hostile.sh trickle|noread|bigdata [loopmx-hostile flags]
#
# bigdata stores into a Maildir of its own (queue/maildir) and passes it
# to loopmx-hostile with -spool, which checks every message on disk.
#
# Environment:
#   HOSTILE_INI  extra [main] lines for smtp.ini, e.g. "max_connections_per_ip = 0"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
build_binaries
go build -trimpath -o bin/loopmx-hostile ./bench/hostile

scenario=${1:?usage: scripts/bench-hostile.sh trickle|noread|bigdata [flags]}
shift

# Both ends need a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-hostile.XXXXXX")
pid=""
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
{
	printf '[main]\nlisten = 127.0.0.1:%s\n' "$port"
	printf '%s\n' "${HOSTILE_INI:-}"
	printf '[log]\nlevel = warn\n'
} > "$tmp/config/smtp.ini"
queue=queue/discard
extra=()
if [ "$scenario" = bigdata ]; then
	queue=queue/maildir
	printf 'path = %s\n' "$tmp/maildir" > "$tmp/config/maildir.ini"
	extra=(-spool "$tmp/maildir")
fi
printf 'rcpt_to.in_host_list\n%s\n' "$queue" > "$tmp/config/plugins"
echo "localhost" > "$tmp/config/host_list"

bin/loopmx -c "$tmp/config" 2> "$tmp/server.log" &
pid=$!
for _ in $(seq 1 100); do
	if bin/loopmx-hostile -h >/dev/null 2>&1 && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		break
	fi
	sleep 0.1
done
echo "loopmx pid $pid on 127.0.0.1:$port; ulimit -n $(ulimit -n); extra smtp.ini: ${HOSTILE_INI:-none}" >&2
status=0
bin/loopmx-hostile -scenario "$scenario" -pid "$pid" "${extra[@]}" "$@" "127.0.0.1:$port" || status=$?
if ! kill -0 "$pid" 2>/dev/null; then
	echo "bench-hostile.sh: loopmx died during the run:" >&2
	tail -20 "$tmp/server.log" >&2
	exit 3
fi
echo "server log (warnings), last lines:" >&2
grep -v '"level":"info"' "$tmp/server.log" | tail -5 >&2 || true
exit "$status"
