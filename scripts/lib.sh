# lib.sh: shell functions shared by the bench scripts.

# stop_tree stops a process and the processes it started, by pid: TERM
# first, KILL after 5 seconds for whatever is still there.
stop_tree() {
	local root=$1 kids p
	kids=$(pgrep -P "$root" 2>/dev/null || true)
	kill -TERM "$root" 2>/dev/null || true
	for _ in $(seq 1 50); do
		kill -0 "$root" 2>/dev/null || break
		sleep 0.1
	done
	for p in $root $kids; do
		kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
	done
	wait "$root" 2>/dev/null || true
}

# note_run WHAT STATUS BASE SECONDS says how one measured run ended. After
# a failure it shows the last lines of BASE.txt and removes BASE.json, so
# that -compare leaves the run out.
note_run() {
	local what=$1 status=$2 base=$3 took=$4
	if [ "$status" -ne 0 ]; then
		echo "  $what: loopmx-bench exited $status:" >&2
		tail -5 "$base.txt" >&2
		rm -f "$base.json"
	else
		echo "  $what done in ${took}s" >&2
	fi
}

# build_binaries builds bin/loopmx and bin/loopmx-bench through `make
# build`, so bin/loopmx keeps the version stamp (git describe) that
# `--version` and every log line show. Under make (MAKELEVEL set) the
# bench targets have already built them.
build_binaries() {
	if [ -n "${MAKELEVEL:-}" ]; then
		return
	fi
	if ! command -v "${MAKE:-make}" >/dev/null 2>&1; then
		echo "$(basename "$0"): make is not installed; it builds bin/loopmx with its version" >&2
		exit 1
	fi
	"${MAKE:-make}" --no-print-directory build
}

# temp_dir NAME makes $tmp, a temporary directory, and $pids, the servers
# the script starts; when the script exits, each of them is stopped
# (stop_tree) and the directory removed.
temp_dir() {
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmx-$1.XXXXXX")
	pids=()
	trap 'for p in "${pids[@]}"; do stop_tree "$p"; done; rm -rf "$tmp"' EXIT
	trap 'exit 130' INT TERM
}
