#!/usr/bin/env bash
# bench-tls.sh: what `make bench-tls` runs; it reproduces the figures of
# docs/tls.md, "Cost of a TLS session". loopmx and the go-smtp sink of
# bench/peers, both offering STARTTLS with the same self-signed ECDSA P-256
# certificate, each measured in ROUNDS interleaved rounds, twice a round:
# once with -starttls (every session does EHLO, STARTTLS, a full TLS
# handshake, EHLO again), once with -starttls -resume (the same, but the
# client keeps a session cache, so every handshake after the first resumes
# with a session ticket) and once in plaintext, each time on a fresh server
# process so the idle scenario finds a fresh heap. Then the medians and
# ratios, TLS first.
#
# loopmx runs with loops = 1, me = mx.test, rcpt_to.in_host_list and
# queue/discard, log level warn. The server runs on SERVER_CORE and the
# client on CLIENT_CORE (different cores: a TLS handshake is heavy on both
# sides); on a one-core machine both go on core 0.
#
# Environment:
#   ROUNDS       rounds (default 3)
#   SCALE        multiplies the scenarios' default -n (default 0.2: 1,000
#                idle connections and 4,000 sessions, 10 at a time)
#   SERVER_CORE  default 0
#   NODES        loopmx's nodes (default 0: one process). With NODES=2 a
#                supervisor runs two workers that share the listener, so a
#                client's next connection lands on either; -resume then
#                shows the shared ticket keys at work (docs/tls.md)
#   CLIENT_CORE  default 1
#   BENCH_ARGS   extra loopmx-bench flags for every run
#   KEEP         a directory to keep each run's table and JSON in
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-0.2}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
[ "$(nproc)" -ge 2 ] || CLIENT_CORE=$SERVER_CORE

# stop_tree, note_run and build_binaries live in lib.sh.
. scripts/lib.sh
build_binaries
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for tool in openssl taskset; do
	command -v "$tool" >/dev/null 2>&1 || { echo "bench-tls.sh: $tool is not installed" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-bench-tls.XXXXXX")
out=${KEEP:-$tmp/results}
mkdir -p "$out"
pid=""
cleanup() {
	if [ -n "$pid" ]; then stop_tree "$pid"; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-subj /CN=mx.test -addext subjectAltName=DNS:mx.test -days 2 \
	-keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

if ! (cd bench/peers/gosmtp-sink && go build -o "$tmp/gosmtp-sink" .) >"$tmp/gosmtp-build.log" 2>&1; then
	echo "bench-tls.sh: the go-smtp sink does not build:" >&2
	cat "$tmp/gosmtp-build.log" >&2
	exit 1
fi

mkdir "$tmp/loopmx"
cp "$tmp/cert.pem" "$tmp/key.pem" "$tmp/loopmx/"
printf 'cert = cert.pem\nkey = key.pem\n' > "$tmp/loopmx/tls.ini"
printf 'rcpt_to.in_host_list\nqueue/discard\n' > "$tmp/loopmx/plugins"
echo example.com > "$tmp/loopmx/host_list"

start_loopmx() {
	printf '[main]\nlisten = 127.0.0.1:%s\nloops = 1\nnodes = %s\nme = mx.test\nmax_connections = 0\nmax_connections_per_ip = 0\n[log]\nlevel = warn\n' "$1" "${NODES:-0}" > "$tmp/loopmx/smtp.ini"
	taskset -c "$SERVER_CORE" bin/loopmx -c "$tmp/loopmx" 2>>"$tmp/loopmx.log" &
	pid=$!
}
start_gosmtp-sink() {
	taskset -c "$SERVER_CORE" "$tmp/gosmtp-sink" -addr "127.0.0.1:$1" -cert "$tmp/cert.pem" -key "$tmp/key.pem" 2>>"$tmp/gosmtp-sink.log" &
	pid=$!
}

servers=(loopmx gosmtp-sink)
echo "bench-tls: ${servers[*]}; $ROUNDS rounds, server on core $SERVER_CORE, client on core $CLIENT_CORE, -scale $SCALE" >&2
for ((r = 1; r <= ROUNDS; r++)); do
	for mode in tls resume plain; do
		for ((i = 0; i < ${#servers[@]}; i++)); do
			name=${servers[$(((i + r - 1) % ${#servers[@]}))]}
			port=$(bin/loopmx-bench -free-port)
			"start_$name" "$port"
			flags=()
			[ "$mode" = tls ] && flags=(-starttls)
			[ "$mode" = resume ] && flags=(-starttls -resume)
			status=0
			t0=$SECONDS
			# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
			taskset -c "$CLIENT_CORE" bin/loopmx-bench -progress off -wait 30s -scenario idle,session -scale "$SCALE" -c 10 \
				"${flags[@]}" -pid "$pid" -label "$name" -json "$out/$mode.$name.$r.json" ${BENCH_ARGS:-} "127.0.0.1:$port" \
				>"$out/$mode.$name.$r.txt" 2>&1 || status=$?
			stop_tree "$pid"
			pid=""
			note_run "round $r: $name ($mode)" "$status" "$out/$mode.$name.$r" $((SECONDS - t0))
		done
	done
done

shopt -s nullglob
for mode in tls resume plain; do
	results=("$out/$mode".*.json)
	if [ ${#results[@]} -eq 0 ]; then
		echo "bench-tls.sh: no $mode run finished" >&2
		exit 1
	fi
	echo
	if [ "$mode" = tls ]; then
		echo "== STARTTLS: idle = RSS per held TLS session (after EHLO, STARTTLS, EHLO); session = the whole dialog with STARTTLS"
	elif [ "$mode" = resume ]; then
		echo "== STARTTLS with resumption (session tickets): the same, every handshake after the first abbreviated"
		for f in "${results[@]}"; do
			python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  %s: %s" % (sys.argv[1].rsplit("/",1)[-1], ", ".join("%s %d/%d resumed" % (x["params"]["scenario"], x.get("resumed",0), x["sessions"]) for x in r["results"])))' "$f" 2>/dev/null || true
		done
	else
		echo "== plaintext: idle = RSS per connection after the greeting; session = the same dialog without STARTTLS"
	fi
	bin/loopmx-bench -compare -base loopmx "${results[@]}"
done
