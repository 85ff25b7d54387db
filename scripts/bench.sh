#!/usr/bin/env bash
# bench.sh: what `make bench` runs. Starts bin/loopmx on a free 127.0.0.1
# port, runs the standard scenarios against it with -pid, prints one summary
# table, and stops the server. Nothing is left running: the server and any
# process it started are stopped by pid on exit. bin/loopmx is the binary
# `make build` made, with its version; this script never rebuilds it
# another way.
#
# Without BENCH_CONFIG the server runs on a bench config: queue/discard,
# no connection limit (total or per address), log level warn. That
# measures loopmx itself.
#
# With BENCH_CONFIG=DIR (`make bench CONFIG=/etc/loopmx`) it runs on a copy
# of that config directory instead, so the figure is the operator's: their
# plugins in their order, their limits, nodes and log level, their Redis,
# and their queue's disk with its fsync. The copy differs in four ways
# only: it listens on 127.0.0.1:PORT alone (listen, smtps_listen and
# proxy_listen are replaced, so a running production server is not
# disturbed); queue/maildir writes to a fresh directory beside the
# configured spool (same file system, so the same disk), removed
# afterwards; per-client limits (smtp.ini's max_connections_per_ip,
# limit.ini's max_concurrency, [rate] conn and rcpt_sender) are raised so
# that they refuse nothing, since the load comes from 16 loopback
# addresses where real mail comes from thousands; and the client sends to
# a domain of the config's host_list. A config that forwards
# (queue/smtp_forward, queue/lmtp) is refused unless BENCH_FORWARD=yes,
# since every message would reach the next hop.
#
# Environment:
#   BENCH_ARGS    extra loopmx-bench flags, e.g. "-scale 0.5" or "-scenario session"
#   BENCH_JSON    also write the report as JSON to this file
#   BENCH_CONFIG  run on a copy of this config directory (see above)
#   BENCH_SPOOL   with BENCH_CONFIG: the directory to make the bench spool in
#                 (default: the parent of maildir.ini's path)
#   BENCH_FORWARD with BENCH_CONFIG: "yes" allows a forwarding queue plugin
#   BENCH_METRICS "yes": turn on the server's metrics endpoint (metrics_listen
#                 on a free port) and give it to loopmx-bench -metrics, which
#                 prints the server's banner percentiles beside the client's
#   BENCH_BACKLOG the listen(2) backlog of the server (default: the config's)
set -euo pipefail
cd "$(dirname "$0")/.."

# stop_tree (by pid) and build_binaries live in lib.sh.
. scripts/lib.sh
build_binaries

# The idle scenario holds thousands of connections; both ends need a
# descriptor for each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-bench.XXXXXX")
pid=""
spool=""

cleanup() {
	if [ -n "$pid" ]; then
		stop_tree "$pid"
	fi
	if [ -n "$spool" ]; then
		rm -rf "$spool"
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ini_main_get FILE KEY prints KEY's value in FILE's main section (the keys
# above the first header and those under [main]), or nothing.
ini_main_get() {
	awk -v key="$2" '
		/^[[:space:]]*\[/ { sec = tolower($0); gsub(/[][[:space:]]/, "", sec); next }
		(sec == "" || sec == "main") && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
			sub(/^[^=]*=[[:space:]]*/, ""); sub(/[[:space:]]+[#;].*$/, ""); sub(/[[:space:]]+$/, ""); print; exit
		}' "$1" 2>/dev/null || true
}

# ini_main_set FILE KEY VALUE rewrites FILE with KEY = VALUE as the main
# section's only KEY; each extra KEY named after it is removed.
ini_main_set() {
	local file=$1 key=$2 value=$3
	shift 3
	local drop="$key" k
	for k in "$@"; do drop="$drop|$k"; done
	printf '%s = %s\n' "$key" "$value" > "$file.new"
	if [ -f "$file" ]; then
		awk -v drop="^[[:space:]]*($drop)[[:space:]]*=" '
			/^[[:space:]]*\[/ { sec = tolower($0); gsub(/[][[:space:]]/, "", sec) }
			(sec == "" || sec == "main") && $0 ~ drop { next }
			{ print }' "$file" >> "$file.new"
	fi
	mv "$file.new" "$file"
}

# ini_replace FILE SECTION KEY VALUE sets KEY to VALUE where FILE already
# sets it in SECTION ("main" also covers the keys above the first header);
# a key the file does not set is left unset.
ini_replace() {
	[ -f "$1" ] || return 0
	awk -v want="$2" -v key="$3" -v value="$4" '
		BEGIN { sec = "main" }
		/^[[:space:]]*\[/ { sec = tolower($0); gsub(/[][[:space:]]/, "", sec) }
		sec == want && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" { print key " = " value; next }
		{ print }' "$1" > "$1.new"
	mv "$1.new" "$1"
}

# listed NAME reports whether the plugins file of the config lists NAME.
listed() { grep -Eq "^[[:space:]]*$1[[:space:]]*(#.*)?$" "$tmp/config/plugins" 2>/dev/null; }

port=$(bin/loopmx-bench -free-port)
to_args=()
metrics_args=()
if [ -z "${BENCH_CONFIG:-}" ]; then
	mkdir "$tmp/config"
	cat > "$tmp/config/smtp.ini" <<-EOF
		[main]
		listen = 127.0.0.1:$port
		max_connections = 0
		max_connections_per_ip = 0
		[log]
		level = warn
	EOF
	echo "queue/discard" > "$tmp/config/plugins"
	what="the bench config (queue/discard)"
else
	if [ ! -f "$BENCH_CONFIG/smtp.ini" ] || [ ! -f "$BENCH_CONFIG/plugins" ]; then
		echo "bench.sh: BENCH_CONFIG=$BENCH_CONFIG: not a loopmx config directory (no smtp.ini or plugins)" >&2
		exit 1
	fi
	src=$(cd "$BENCH_CONFIG" && pwd)
	cp -a "$src" "$tmp/config"
	chmod 711 "$tmp" # workers running as the config's user must reach the copy
	if { listed 'queue/smtp_forward' || listed 'queue/lmtp'; } && [ "${BENCH_FORWARD:-}" != yes ]; then
		echo "bench.sh: $src/plugins forwards mail (queue/smtp_forward or queue/lmtp): every bench message would reach the next hop; set BENCH_FORWARD=yes if that is meant" >&2
		exit 1
	fi
	ini_main_set "$tmp/config/smtp.ini" listen "127.0.0.1:$port" smtps_listen proxy_listen
	# The load comes from 16 loopback addresses where real mail comes from
	# thousands: per-client limits are lifted so they refuse nothing, while
	# the limit plugin still counts (in Redis, if the config uses it).
	lots=1000000000
	ini_replace "$tmp/config/smtp.ini" main max_connections_per_ip 0
	ini_replace "$tmp/config/limit.ini" main max_concurrency "$lots"
	ini_replace "$tmp/config/limit.ini" rate conn "$lots/1m"
	ini_replace "$tmp/config/limit.ini" rate rcpt_sender "$lots/1m"
	if listed 'queue/maildir'; then
		path=$(ini_main_get "$src/maildir.ini" path)
		path=${path:-./var/spool}
		case $path in /*) ;; *) path=$src/$path ;; esac
		parent=${BENCH_SPOOL:-$(dirname "$path")}
		if ! spool=$(mktemp -d "$parent/loopmx-bench-spool.XXXXXX" 2>/dev/null); then
			spool=""
			echo "bench.sh: cannot make a bench spool in $parent (beside the maildir $path); set BENCH_SPOOL to a writable directory on the same disk" >&2
			exit 1
		fi
		user=$(ini_main_get "$src/smtp.ini" user)
		if [ -n "$user" ] && [ "$(id -u)" = 0 ]; then
			group=$(ini_main_get "$src/smtp.ini" group)
			chown "$user${group:+:$group}" "$spool"
		fi
		ini_main_set "$tmp/config/maildir.ini" path "$spool"
	fi
	domain=$(grep -Ev '^[[:space:]]*(#|$)' "$src/host_list" 2>/dev/null | head -1 | tr -d '[:space:]' || true)
	if [ -n "$domain" ]; then
		to_args=(-to "bench@$domain")
	fi
	what="a copy of $src${spool:+ (maildir in $spool)}${domain:+, mail to bench@$domain}"
fi

if [ "${BENCH_METRICS:-}" = yes ]; then
	mport=$(bin/loopmx-bench -free-port)
	ini_main_set "$tmp/config/smtp.ini" metrics_listen "127.0.0.1:$mport"
	metrics_args=(-metrics "http://127.0.0.1:$mport/metrics")
	what="$what, metrics on 127.0.0.1:$mport"
fi
if [ -n "${BENCH_BACKLOG:-}" ]; then
	ini_main_set "$tmp/config/smtp.ini" backlog "$BENCH_BACKLOG"
	what="$what, backlog $BENCH_BACKLOG"
fi
echo "bench.sh: $(bin/loopmx --version | head -1) on 127.0.0.1:$port with $what" >&2
bin/loopmx -c "$tmp/config" 2>"$tmp/loopmx.log" &
pid=$!

status=0
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
bin/loopmx-bench -wait 15s -scenario standard -pid "$pid" -label loopmx "${to_args[@]}" "${metrics_args[@]}" \
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
