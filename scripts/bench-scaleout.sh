#!/usr/bin/env bash
# bench-scaleout.sh: sessions/s through HAProxy to one loopmx host, then to
# three, with the same load; the figures of docs/scale-out.md (Measured:
# one host against three behind HAProxy).
#
# Three loopmx hosts run on this machine, each its own process on its own
# loopback address (127.0.0.2, .3, .4), each with a PROXY listener
# (proxy_listen, proxy_trusted = 127.0.0.1), its own name (me = mxN.test),
# the bench config of scripts/bench.sh (queue/discard, no connection
# limits, log level warn) and nodes = 0. For each shape a fresh HAProxy
# (Debian's haproxy) listens on 127.0.0.1 in TCP mode, balance leastconn,
# send-proxy-v2 to its servers, without health checks (the hosts stay up;
# a check every 2 s costs nothing measurable), first with mx1 alone as its
# server, then with mx1, mx2 and mx3. The same loopmx-bench load (the
# session scenario: connect, banner, EHLO, MAIL, RCPT, DATA of 1 KB, QUIT;
# N sessions, C at a time, from 16 source addresses) runs through it.
#
# Printed per shape: sessions/s (from loopmx-bench), and the CPU seconds
# per 1,000 sessions of HAProxy, of the loopmx hosts together and of the
# client, each the utime + stime of its processes from /proc/PID/stat
# over the run; then the ratio of the two rates. Nothing is pinned: client,
# HAProxy and the hosts share the machine's cores, as they would on one
# box, and on a machine of few cores that, not loopmx, sets the ceiling
# (docs/scale-out.md says how to read it). Everything started here is
# stopped by its pid on exit.
#
# Environment:
#   N            sessions per shape (default 20000)
#   C            sessions at a time (default 50)
#   BENCH_ARGS   extra loopmx-bench flags for both runs
#   KEEP         a directory to keep each run's table and JSON in
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
C=${C:-50}

# stop_tree, note_run and build_binaries live in lib.sh.
. scripts/lib.sh

haproxy=$(command -v haproxy 2>/dev/null || true)
if [ -z "$haproxy" ] && [ -x /usr/sbin/haproxy ]; then
	haproxy=/usr/sbin/haproxy
fi
if [ -z "$haproxy" ]; then
	echo "bench-scaleout.sh: haproxy is not installed (apt-get install haproxy; make deps does it as root)" >&2
	exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "bench-scaleout.sh: python3 is not installed (it reads the JSON reports)" >&2; exit 1; }

build_binaries
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-scaleout.XXXXXX")
out=${KEEP:-$tmp/results}
mkdir -p "$out"
hosts=() # the loopmx hosts' pids
hp=""    # the running HAProxy's pid
cleanup() {
	local p
	for p in $hp "${hosts[@]}"; do
		stop_tree "$p"
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cpu_ticks PID... prints the sum of utime and stime of the processes, in
# clock ticks (fields 14 and 15 of /proc/PID/stat; the name in parentheses
# before them may hold spaces, so fields are counted after it).
cpu_ticks() {
	local sum=0 p rest
	for p in "$@"; do
		rest=$(cat "/proc/$p/stat")
		rest=${rest##*) }
		# shellcheck disable=SC2086 # split into fields on purpose
		set -- $rest
		sum=$((sum + ${12} + ${13}))
	done
	echo "$sum"
}
hz=$(getconf CLK_TCK)

# wait_port PID HOST PORT LOG waits up to 10 s for HOST:PORT to accept,
# and exits with LOG's last lines if PID dies or it never does.
wait_port() {
	local _
	for _ in $(seq 1 100); do
		(exec 3<>"/dev/tcp/$2/$3") 2>/dev/null && return 0
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	echo "bench-scaleout.sh: nothing accepts on $2:$3 (pid $1):" >&2
	tail -5 "$4" >&2
	exit 1
}

# The three hosts, started once; a port free on 127.0.0.1 is nearly
# always free on 127.0.0.x.
backends=()
for i in 1 2 3; do
	ip=127.0.0.$((i + 1))
	lport=$(bin/loopmx-bench -free-port)
	pport=$(bin/loopmx-bench -free-port)
	mkdir "$tmp/mx$i"
	cat > "$tmp/mx$i/smtp.ini" <<-EOF
		[main]
		listen = $ip:$lport
		proxy_listen = $ip:$pport
		proxy_trusted = 127.0.0.1/32
		me = mx$i.test
		max_connections = 0
		max_connections_per_ip = 0
		[log]
		level = warn
	EOF
	echo "queue/discard" > "$tmp/mx$i/plugins"
	bin/loopmx -c "$tmp/mx$i" 2>"$tmp/mx$i.log" &
	hosts+=($!)
	backends+=("    server mx$i $ip:$pport send-proxy-v2")
	wait_port "${hosts[-1]}" "$ip" "$lport" "$tmp/mx$i.log"
done

# run K: HAProxy in front of the first K hosts, the load through it.
run() {
	local k=$1 front cfg status t0 h0 l0 h1 l1
	front=$(bin/loopmx-bench -free-port)
	cfg=$tmp/haproxy-$k.cfg
	{
		printf 'global\n    maxconn 4000\n'
		printf 'defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n'
		printf 'frontend mx\n    bind 127.0.0.1:%s\n    default_backend loopmx\n' "$front"
		printf 'backend loopmx\n    balance leastconn\n'
		printf '%s\n' "${backends[@]:0:$k}"
	} > "$cfg"
	"$haproxy" -db -f "$cfg" 2>"$tmp/haproxy-$k.log" &
	hp=$!
	wait_port "$hp" 127.0.0.1 "$front" "$tmp/haproxy-$k.log"
	h0=$(cpu_ticks "$hp")
	l0=$(cpu_ticks "${hosts[@]:0:$k}")
	status=0
	t0=$SECONDS
	# -warmup 0: the CPU read around the command then covers exactly the
	# sessions the report counts. -pid: loopmx-bench's own srv/sess
	# column is HAProxy's, to check the figure below by.
	# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
	bin/loopmx-bench -progress off -wait 15s -warmup 0 -scenario session -n "$N" -c "$C" -d 50s \
		-pid "$hp" -label "$k-host" -json "$out/$k.json" ${BENCH_ARGS:-} "127.0.0.1:$front" \
		>"$out/$k.txt" 2>&1 || status=$?
	h1=$(cpu_ticks "$hp")
	l1=$(cpu_ticks "${hosts[@]:0:$k}")
	stop_tree "$hp"
	hp=""
	note_run "$k host(s)" "$status" "$out/$k" $((SECONDS - t0))
	[ "$status" -eq 0 ] || exit 1
	echo "$k $((h1 - h0)) $((l1 - l0))" > "$out/$k.cpu"
}

echo "bench-scaleout: $(bin/loopmx --version | head -1), $("$haproxy" -v | head -1 | cut -d' ' -f1-3); $N sessions, $C at a time; $(nproc) of $(nproc --all) CPUs usable here, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
run 1
run 3

python3 - "$out" "$hz" <<'EOF'
import json, sys
out, hz = sys.argv[1], float(sys.argv[2])
rows = {}
for k in (1, 3):
    r = json.load(open(f"{out}/{k}.json"))
    res = r["results"][0]
    _, hp, lm = open(f"{out}/{k}.cpu").read().split()
    n = res["sessions"]
    errs = sum(res["errors"].values())
    rows[k] = dict(rate=res["sessions_per_sec"], n=n, errs=errs,
                   hp=float(hp) / hz / n * 1000, lm=float(lm) / hz / n * 1000,
                   cli=res["client"]["cpu_sec"] / n * 1000,
                   busy=r["machine"].get("other_busy_cpus", 0))
print("hosts  sessions  errors  sessions/s   CPU s per 1,000 sessions: haproxy  loopmx hosts  client   other busy CPUs before")
for k, x in rows.items():
    print(f"{k:5d}  {x['n']:8d}  {x['errs']:6d}  {x['rate']:10.0f}   {x['hp']:33.3f}  {x['lm']:12.3f}  {x['cli']:6.3f}   {x['busy']:.2f}")
print(f"3 hosts / 1 host: {rows[3]['rate'] / rows[1]['rate']:.2f}x sessions/s")
EOF
