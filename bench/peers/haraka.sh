#!/usr/bin/env bash
# haraka.sh: installs, starts and stops Haraka, the Node.js MX whose
# operating advice loopmx follows, as a peer of `make bench-compare`:
# loopback only, recipients of example.com accepted, every message
# discarded. Haraka comes from the npm registry (a pinned version); nothing
# is installed outside BASE.
#
#   haraka.sh install        npm install into BASE and write its config (minutes)
#   haraka.sh start [NODES]  start it on 127.0.0.1:PORT (NODES 0: one process)
#   haraka.sh stop           stop the started Haraka by its pid
#   haraka.sh status         show its processes
#
# Environment: BASE (default $TMPDIR/haraka-peer), PORT (default 2525),
# HARAKA_VERSION (default 3.3.4).
set -eu
BASE=${BASE:-${TMPDIR:-/tmp}/haraka-peer}
PORT=${PORT:-2525}
HARAKA_VERSION=${HARAKA_VERSION:-3.3.4}
haraka=$BASE/node_modules/.bin/haraka

# listening reports whether something listens on 127.0.0.1:PORT.
listening() { ss -ltn "sport = :$PORT" 2>/dev/null | grep -q "127.0.0.1:$PORT "; }

case "${1:-}" in
install)
	command -v npm >/dev/null || { echo "haraka.sh: npm is not installed (apt-get install npm)" >&2; exit 1; }
	mkdir -p "$BASE"
	cd "$BASE"
	[ -f package.json ] || npm init -y >/dev/null
	npm install --no-audit --no-fund "Haraka@$HARAKA_VERSION" >npm-install.log 2>&1 ||
		{ echo "haraka.sh: npm install failed; see $BASE/npm-install.log" >&2; exit 1; }
	[ -d "$BASE/h" ] || "$haraka" -i "$BASE/h" >/dev/null
	echo example.com > "$BASE/h/config/host_list"
	printf '%s\n' skip_rdns rcpt_to.in_host_list queue/discard > "$BASE/h/config/plugins"
	sed -i 's/^level=.*/level=warn/' "$BASE/h/config/log.ini"
	# Haraka looks up the client's reverse DNS on every connection; a
	# benchmark on loopback must not wait for a resolver, so this plugin
	# answers the lookup_rdns hook at once.
	cat > "$BASE/h/plugins/skip_rdns.js" <<'JS'
exports.register = function () { this.register_hook('lookup_rdns', 'answer') }
exports.answer = function (next) { next(OK, 'localhost') }
JS
	echo "installed Haraka $HARAKA_VERSION in $BASE"
	;;
start)
	[ -x "$haraka" ] || { echo "haraka.sh: not installed in $BASE (run: $0 install)" >&2; exit 1; }
	printf 'listen=127.0.0.1:%s\nnodes=%s\n' "$PORT" "${2:-0}" > "$BASE/h/config/smtp.ini"
	cd "$BASE"
	# queue/discard refuses to run unless told this is meant.
	YES_REALLY_DO_DISCARD=1 nohup "$haraka" -c "$BASE/h" > "$BASE/haraka.log" 2>&1 &
	echo $! > "$BASE/haraka.pid"
	for _ in $(seq 1 60); do
		listening && break
		sleep 0.5
	done
	if ! listening; then
		echo "haraka.sh: Haraka did not listen on 127.0.0.1:$PORT within 30 s" >&2
		tail -20 "$BASE/haraka.log" >&2
		exit 1
	fi
	echo "haraka pid $(cat "$BASE/haraka.pid") on 127.0.0.1:$PORT, nodes=${2:-0}"
	;;
stop)
	pid=$(cat "$BASE/haraka.pid")
	kill -INT "$pid" 2>/dev/null || true
	for _ in $(seq 1 20); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; fi
	;;
status)
	pid=$(cat "$BASE/haraka.pid")
	ps -o pid,ppid,rss,cmd -p "$pid" --ppid "$pid" || true
	;;
*)
	echo "usage: $0 install | start [NODES] | stop | status" >&2
	exit 2
	;;
esac
