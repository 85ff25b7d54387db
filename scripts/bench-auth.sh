#!/usr/bin/env bash
# bench-auth.sh: server CPU per session with the sender-authentication
# plugins (fcrdns, spf, dmarc) against a warm DNS cache, beside the same
# server without them, in one run (docs/benchmarks.md, Sender
# authentication). A local DNS server (bench/dnsserve) answers for the
# bench client: its PTR, its HELO name, the SPF and DMARC records of its
# sender domain. Each round starts each server afresh, warms it (and its
# cache) with WARM sessions, then counts the server's CPU (utime + stime
# from /proc) over N sessions of loopmx-bench's session scenario.
#
# Usage: scripts/bench-auth.sh        (environment: ROUNDS=3 N=5000 C=8 WARM=500)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
build_binaries
go build -trimpath -o bin/loopmx-dnsserve ./bench/dnsserve
rounds=${ROUNDS:-3} n=${N:-5000} c=${C:-8} warm=${WARM:-500}

temp_dir auth

dport=$(bin/loopmx-bench -free-port)
cat > "$tmp/records" <<'RR'
1.0.0.127.in-addr.arpa. 3600 IN PTR loopmx-bench.test.
loopmx-bench.test. 3600 IN A 127.0.0.1
loopmx-bench.test. 3600 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
loopmx.test. 3600 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
loopmx.test. 3600 IN MX 10 loopmx-bench.test.
_dmarc.loopmx.test. 3600 IN TXT "v=DMARC1; p=none"
RR
bin/loopmx-dnsserve -listen "127.0.0.1:$dport" "$tmp/records" &
pids+=($!)

# config NAME PLUGINS...: a config directory of its own.
config() {
	local name=$1
	shift
	mkdir -p "$tmp/$name"
	printf '%s\n' "$@" > "$tmp/$name/plugins"
	echo localhost > "$tmp/$name/host_list"
	printf 'servers = 127.0.0.1:%s\n' "$dport" > "$tmp/$name/dns.ini"
}
config plain rcpt_to.in_host_list queue/discard
config auth fcrdns spf rcpt_to.in_host_list dmarc queue/discard

# run NAME: one round of one server; prints its CPU per session in µs.
run() {
	local name=$1 port pid t0 t1
	port=$(bin/loopmx-bench -free-port)
	printf '[main]\nlisten = 127.0.0.1:%s\nloops = 1\nmax_connections_per_ip = 0\n[log]\nlevel = warn\n' "$port" > "$tmp/$name/smtp.ini"
	bin/loopmx -c "$tmp/$name" 2> "$tmp/$name.log" &
	pid=$!
	pids+=($pid)
	for _ in $(seq 1 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	bin/loopmx-bench -scenario session -to bench@localhost -n "$warm" -c "$c" "127.0.0.1:$port" > /dev/null
	t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
	bin/loopmx-bench -scenario session -to bench@localhost -n "$n" -c "$c" "127.0.0.1:$port" > "$tmp/$name.out"
	t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
	stop_tree "$pid"
	echo "$t0 $t1 $(getconf CLK_TCK)" | awk -v n="$n" '{printf "%.1f\n", ($2-$1)/$3*1e6/n}'
}

plain=() auth=()
for r in $(seq 1 "$rounds"); do
	plain+=("$(run plain)")
	auth+=("$(run auth)")
	echo "round $r: without ${plain[-1]} µs/session, with fcrdns+spf+dmarc ${auth[-1]} µs/session" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mp=$(median "${plain[@]}") ma=$(median "${auth[@]}")
echo "server CPU per session (median of $rounds rounds, $n sessions each, warm cache): without $mp µs, with fcrdns+spf+dmarc $ma µs: $(awk -v a="$ma" -v p="$mp" 'BEGIN {printf "%+.0f%%", (a/p-1)*100}')"
grep -h '"level":"\(warn\|error\)"' "$tmp"/*.log | grep -v DISCARDED | tail -3 >&2 || true
