#!/usr/bin/env bash
# bench-attrib.sh: where the CPU of a plain 1 KiB session goes, in
# microseconds per session, beside the bare C floor (bench/peers/floor.c)
# in the same run (docs/benchmarks.md, "Where a session's CPU goes").
#
# Server and client run on one core (CORE), as in bench-compare. The
# server is loopmx on the bench config at the default log level (info,
# json to a file) with queue/discard, built with symbols into a temporary
# directory. Two views of the same runs:
#
#  - per thread: utime and stime of each of the server's threads from
#    /proc/PID/task over the measured sessions. The event loops name their
#    threads loopmx-loopN; every other thread is the Go runtime's (sysmon,
#    GC workers, idle threads, the workpool's goroutines when they run).
#  - per kind of work: perf's cpu-clock samples of the whole process (when
#    perf can sample here: `perf record -e cpu-clock`, a software event, so
#    it needs no hardware counters), each symbol put in one group: the
#    kernel (system calls, TCP, the scheduler), the SMTP parser, the
#    event loop, plugins, logging, allocation, garbage collection and the
#    runtime's scheduler and sysmon.
#
# Each round runs the floor, then loopmx, then the floor again; a round's
# floor is the mean of its two, so a machine that changes speed between
# runs (common on shared VMs) moves both sides.
#
# Usage: scripts/bench-attrib.sh   (environment: ROUNDS=3 N=20000 C=50
#        CORE=0 FREQ=2000, LOOPMX_ARGS extra [main] lines, KEEP=dir)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
build_binaries
rounds=${ROUNDS:-3} n=${N:-20000} c=${C:-50} core=${CORE:-0} freq=${FREQ:-2000}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-attrib.XXXXXX")
out=${KEEP:-$tmp}
mkdir -p "$out"
pid=""
cleanup() {
	[ -n "$pid" ] && stop_tree "$pid"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$tmp/loopmx" . # with symbols, for perf
gcc -O2 -o "$tmp/floor" bench/peers/floor.c
perf_ok=""
if command -v perf >/dev/null 2>&1 && perf record -e cpu-clock -o "$tmp/probe.data" true >/dev/null 2>&1; then
	perf_ok=1
else
	echo "bench-attrib: perf cannot sample here (apt-get install linux-perf; kernel.perf_event_paranoid); per-thread view only" >&2
fi

mkdir -p "$tmp/cfg"
echo queue/discard >"$tmp/cfg/plugins"

# threads PID: one line per thread: tid name utime stime (clock ticks).
threads() {
	local t rest
	for t in /proc/"$1"/task/*; do
		# After "tid (name) ", utime and stime are the 12th and 13th fields.
		rest=$(sed -E 's/^.*\) //' "$t/stat" 2>/dev/null) || continue
		echo "${t##*/} $(cat "$t/comm" 2>/dev/null | tr ' ' _) $(awk '{ print $12, $13 }' <<<"$rest")"
	done
}

# run NAME ROUND [perf]: one measured run of NAME (floor or loopmx),
# sampled by perf when the third argument says so.
run() {
	local name=$1 r=$2 sample=${3:-} port base=$out/$1.$2
	port=$(bin/loopmx-bench -free-port)
	if [ "$name" = floor ]; then
		taskset -c "$core" "$tmp/floor" "$port" 2>/dev/null &
	else
		printf '[main]\nlisten = 127.0.0.1:%s\nmax_connections = 0\nmax_connections_per_ip = 0\n%s\n' "$port" "${LOOPMX_ARGS:-}" >"$tmp/cfg/smtp.ini"
		taskset -c "$core" "$tmp/loopmx" -c "$tmp/cfg" 2>"$tmp/loopmx.log" &
	fi
	pid=$!
	# Warm-up: the server's first sessions grow its heap and caches.
	bin/loopmx-bench -progress off -wait 10s -scenario session -n 2000 -c "$c" "127.0.0.1:$port" >/dev/null
	threads "$pid" >"$base.before"
	local perfpid=""
	if [ -n "$sample" ]; then
		perf record -e cpu-clock -F "$freq" -p "$pid" -o "$base.perf" >/dev/null 2>&1 &
		perfpid=$!
		sleep 0.3
	fi
	taskset -c "$core" bin/loopmx-bench -progress off -scenario session -n "$n" -c "$c" -pid "$pid" \
		-json "$base.json" "127.0.0.1:$port" >"$base.txt"
	threads "$pid" >"$base.after"
	if [ -n "$perfpid" ]; then
		kill -INT "$perfpid"
		wait "$perfpid" || true
	fi
	stop_tree "$pid"
	pid=""
}

# thread_table BASE: µs per session per thread (loop threads by name, the
# rest summed), user and system.
thread_table() {
	local tick
	tick=$(getconf CLK_TCK)
	join <(sort "$1.before") <(sort "$1.after") | awk -v n="$n" -v tick="$tick" '
		{ name = ($2 ~ /^loopmx-loop/) ? $2 : "other threads"
		  u[name] += ($6 - $3) * 1e6 / tick / n; s[name] += ($7 - $4) * 1e6 / tick / n }
		END { for (k in u) printf "%s\t%.1f\t%.1f\n", k, u[k], s[k] }' | sort
}

# kind_table BASE TOTAL: µs per session per kind of work: each group's
# share of the perf samples of run BASE, times TOTAL (the server's CPU per
# session measured without perf, which costs CPU of its own).
kind_table() {
	perf report -i "$1.perf" --no-children --sort dso,sym --stdio -g none -F sample,dso,sym 2>/dev/null |
		awk -v total="$2" '
		/^#/ || NF < 4 { next }
		{ s = $1; dso = $2; k = $3; sym = $0; sub(/^ *[0-9]+ +[^ ]+ +\[.\] +/, "", sym)
		  if (k == "[k]") g = "kernel: system calls, TCP, scheduler"
		  else if (dso ~ /^libc/ || sym ~ /^(syscall\.|internal\/runtime\/syscall|golang.org\/x\/sys|internal\/poll|os\.)/) g = "system call wrappers (user side)"
		  else if (sym ~ /zerolog|logBatch/) g = "logging (zerolog, the batch)"
		  else if (sym ~ /smtpproto/) g = "SMTP parser (smtpproto)"
		  else if (sym ~ /^loopmx\/loop/) g = "event loop and session driver (loop)"
		  else if (sym ~ /^loopmx\/plugins|^loopmx\/internal/) g = "plugins and hook chain"
		  else if (sym ~ /^(runtime\.(gc|scan|mark|greyobject|findObject|wbBuf|bulkBarrier|tryDefer|.*[Ss]weep)|runtime\.\(\*gcWork|runtime\.\(\*mspan\)\.(sweep|mark)|internal\/runtime\/gc)/) g = "garbage collection"
		  else if (sym ~ /^runtime\.(malloc|newobject|growslice|makeslice|memclr|nextFreeFast|\(\*mcache\)|\(\*mcentral\)|\(\*mheap\)|heapBits|\(\*mspan\)|typePointers|concatstring|slicebytetostring|rawstring|publicationBarrier)/ || sym ~ /MakeNoZero/) g = "allocation"
		  else if (sym ~ /^runtime\./ || sym ~ /^gosave|^gogo/) g = "runtime: scheduler, sysmon, signals, other"
		  else if (sym ~ /__vdso/) g = "clock (vDSO)"
		  else if (dso ~ /floor/) g = "floor.c itself"
		  else g = "copying, scanning, formatting (std)"
		  t[g] += s; all += s }
		END { for (g in t) printf "%s\t%.1f\n", g, t[g] / all * total }' | sort -t$'\t' -k2 -nr
}

for ((r = 1; r <= rounds; r++)); do
	run floor "$r.a"
	run loopmx "$r"
	run floor "$r.b"
	echo "  round $r done" >&2
done
if [ -n "$perf_ok" ]; then
	run loopmx perf perf
	run floor perf perf
	echo "  the sampled runs done" >&2
fi

# cpu BASE: server CPU per session (µs) from the run's report.
cpu() { bin/loopmx-bench -compare -base x "$1.json" 2>/dev/null | awk -F'  +' '/session .*server CPU\/session/ { print $3; exit }'; }
us() { tr -dc '0-9.' <<<"$1"; }

echo
echo "server CPU per 1 KiB session, server and client on core $core, $n sessions of $c at a time, log level info:"
printf '%-6s %12s %12s %8s\n' round floor loopmx ratio
: >"$tmp/ratios"
for ((r = 1; r <= rounds; r++)); do
	fa=$(us "$(cpu "$out/floor.$r.a")") fb=$(us "$(cpu "$out/floor.$r.b")") l=$(us "$(cpu "$out/loopmx.$r")")
	awk -v r="$r" -v fa="$fa" -v fb="$fb" -v l="$l" 'BEGIN { f = (fa + fb) / 2; printf "%-6s %10.1fµs %10.1fµs %7.2fx\n", r, f, l, l / f }' | tee -a "$tmp/ratios"
done
# The medians of the rounds scale the sampled split.
med() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmed=$(awk '{ print $2 }' "$tmp/ratios" | tr -dc '0-9.\n' | med)
lmed=$(awk '{ print $3 }' "$tmp/ratios" | tr -dc '0-9.\n' | med)
awk '{ print $4 }' "$tmp/ratios" | tr -dc '0-9.\n' | sort -n | awk '{ v[NR] = $1 } END { printf "median %.2fx, spread %.2f-%.2fx over %d rounds\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR], NR }'

echo
echo "per thread (µs per session, user / system; the kernel splits a thread's time between the two by sampling at its tick):"
for ((r = 1; r <= rounds; r++)); do
	thread_table "$out/loopmx.$r" | awk -F'\t' -v r="$r" '{ printf "  round %s  %-16s %6.1f / %6.1f\n", r, $1, $2, $3 }'
	thread_table "$out/floor.$r.a" | awk -F'\t' -v r="$r" '{ printf "  round %s  floor            %6.1f / %6.1f\n", r, $2, $3 }'
done

if [ -n "$perf_ok" ]; then
	echo
	echo "per kind of work (µs per session: each group's share of perf's cpu-clock samples at ${freq} Hz in a sampled run, times the median CPU above):"
	echo "  loopmx (${lmed}µs):"
	kind_table "$out/loopmx.perf" "$lmed" | awk -F'\t' '{ printf "    %-42s %6.1f\n", $1, $2 }'
	echo "  floor (${fmed}µs):"
	kind_table "$out/floor.perf" "$fmed" | awk -F'\t' '{ printf "    %-42s %6.1f\n", $1, $2 }'
fi
