#!/usr/bin/env bash
# A crash writes no secret to disk: a binary (catalyst-migrate serve, which
# holds the PostgreSQL password and the API token) runs with a core size
# limit of 0 even when its shell allows cores, and a SIGSEGV leaves no core
# file; CATALYST_CORE_DUMPS=true leaves the limit as the shell set it. (The
# mechanism, in common/cat_config, is shared by every binary; its unit test
# checks the non-dumpable flag too.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_MIGRATE_TOKEN="test-token-$RANDOM$RANDOM" CATALYST_MIGRATE_PORT=0 CATALYST_MIGRATE_BIND=127.0.0.1

# start_serve NAME [VAR=VALUE...]: catalyst-migrate serve in $work/NAME (its
# working directory, where a core would go), with cores allowed by the shell;
# sets pid once it listens
start_serve() {
	local name=$1
	shift
	mkdir -p "$work/$name"
	(cd "$work/$name" && ulimit -c unlimited && exec env "$@" "$bin/catalyst-migrate" serve) \
		>"$work/$name.out" 2>"$work/$name.err" &
	pid=$!
	on_exit "kill $pid 2>/dev/null"
	wait_for 20 "catalyst-migrate serve ($name) to listen" grep -q '"port":' "$work/$name.err"
}

# core_limit PID: "soft hard" of the process's core file size limit
core_limit() {
	awk '/^Max core file size/ { print $5, $6 }' "/proc/$1/limits"
}

# --- by default: no core, whatever the shell allows --------------------------------------
start_serve off CATALYST_LOG_LEVEL=info
assert_eq "0 0" "$(core_limit "$pid")" "core size limit of a binary started with cores allowed"
kill -SEGV "$pid"
set +e
wait "$pid"
rc=$?
set -e
[[ $rc -ne 0 ]] || fail "SIGSEGV ended the binary with 0"
assert_eq "" "$(ls "$work/off")" "files left by the crash (a core would be here: core_pattern $(cat /proc/sys/kernel/core_pattern))"

# --- CATALYST_CORE_DUMPS=true: the shell's limit stands ----------------------------------
# (ASan turns cores off by itself unless told not to)
start_serve allowed CATALYST_CORE_DUMPS=true ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}disable_coredump=0"
assert_eq "unlimited unlimited" "$(core_limit "$pid")" "core size limit with CATALYST_CORE_DUMPS=true"
kill -TERM "$pid"
wait "$pid" || true

echo "test_core_dumps: ok"
