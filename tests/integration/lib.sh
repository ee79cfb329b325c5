# shellcheck shell=bash
# Shared helpers for the bash tests in tests/integration and tests/fault.
# Source it first:
#
#   here=$(cd "$(dirname "$0")" && pwd)
#   . "$here/lib.sh"
#
# It turns on `set -euo pipefail`, loads the local stack's settings (from
# $CATALYST_STACK_DIR/env, else `scripts/stack env`), and sets
# CATALYST_SOURCE_DIR and CATALYST_BIN_DIR (ctest sets both; defaults: this
# repository and its build/bin).
#
# Cleanup: register commands with `on_exit 'command'`; they run in reverse
# order when the script exits, whatever the reason. Do not set an EXIT trap
# of your own after using on_exit or scratch_db (it would replace this one).

set -euo pipefail

CATALYST_SOURCE_DIR=${CATALYST_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
CATALYST_BIN_DIR=${CATALYST_BIN_DIR:-$CATALYST_SOURCE_DIR/build/bin}
export CATALYST_SOURCE_DIR CATALYST_BIN_DIR

# fail MESSAGE: report where the test failed, exit 1.
fail() {
	local i caller=""
	for ((i = 1; i < ${#BASH_SOURCE[@]}; i++)); do
		if [[ ${BASH_SOURCE[$i]} != "${BASH_SOURCE[0]}" ]]; then
			caller="$(basename "${BASH_SOURCE[$i]}"):${BASH_LINENO[$((i - 1))]}: "
			break
		fi
	done
	printf 'FAIL: %s%s\n' "$caller" "$*" >&2
	exit 1
}

# assert_eq EXPECTED ACTUAL [WHAT]
assert_eq() {
	[[ $1 == "$2" ]] || fail "${3:-value}: expected [$1], got [$2]"
}

# assert_contains HAYSTACK NEEDLE [WHAT]
assert_contains() {
	[[ $1 == *"$2"* ]] || fail "${3:-output} does not contain [$2]: [$1]"
}

# assert_not_contains HAYSTACK NEEDLE [WHAT]
assert_not_contains() {
	[[ $1 != *"$2"* ]] || fail "${3:-output} contains [$2]"
}

# --- cleanup ------------------------------------------------------------------

LIB_ON_EXIT=()

# on_exit COMMAND: run COMMAND (a string, eval'ed) when the script exits.
on_exit() {
	LIB_ON_EXIT+=("$1")
}

lib_run_on_exit() {
	local rc=$? i
	set +e
	for ((i = ${#LIB_ON_EXIT[@]} - 1; i >= 0; i--)); do
		eval "${LIB_ON_EXIT[$i]}"
	done
	exit "$rc"
}
trap lib_run_on_exit EXIT

# --- the local stack -------------------------------------------------------------

lib_load_stack_env() {
	local env_text
	if [[ -n ${CATALYST_STACK_DIR:-} && -r $CATALYST_STACK_DIR/env ]]; then
		# shellcheck disable=SC1091
		. "$CATALYST_STACK_DIR/env"
	elif env_text=$("$CATALYST_SOURCE_DIR/scripts/stack" env 2>/dev/null); then
		eval "$env_text"
	else
		fail "no local stack: start it with scripts/stack up"
	fi
}
lib_load_stack_env

# The primary's URL as the stack gave it: scratch databases are made there.
LIB_ADMIN_PG_URL=${CATALYST_PG_URL:?the stack env sets no CATALYST_PG_URL}

# pg_url_with_db URL DBNAME: URL pointing at another database (URI or
# key=value form).
pg_url_with_db() {
	local url=$1 db=$2
	if [[ $url =~ ^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
		printf '%s/%s%s\n' "${BASH_REMATCH[1]}" "$db" "${BASH_REMATCH[4]}"
	else
		printf '%s dbname=%s\n' "$url" "$db"
	fi
}

# psql_at URL SQL: runs SQL, prints unaligned tuples-only output.
psql_at() {
	PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" psql -X -A -t -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"
}

# scratch_db NAME: a fresh, empty database catalyst_test_NAME on the primary,
# dropped when the script exits. Sets SCRATCH_DB and SCRATCH_PG_URL (and
# exports SCRATCH_PG_URL); the caller decides what CATALYST_PG_URL is.
scratch_db() {
	local name=catalyst_test_$1
	[[ $name =~ ^[a-z0-9_]+$ ]] || fail "scratch_db: bad name [$1]"
	psql_at "$LIB_ADMIN_PG_URL" "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null
	psql_at "$LIB_ADMIN_PG_URL" "CREATE DATABASE $name" >/dev/null
	on_exit "psql_at \"\$LIB_ADMIN_PG_URL\" 'DROP DATABASE IF EXISTS $name WITH (FORCE)' >/dev/null"
	SCRATCH_DB=$name
	SCRATCH_PG_URL=$(pg_url_with_db "$LIB_ADMIN_PG_URL" "$name")
	export SCRATCH_PG_URL
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_for() {
	local seconds=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
		sleep 0.1
	done
}

# run COMMAND...: runs it without stopping the script on failure; sets rc,
# out (stdout) and err (stderr); both also go to $work/all.log (the caller
# sets $work), so a test can check the whole output for secrets at the end.
run() {
	set +e
	"$@" >"$work/out" 2>"$work/err"
	rc=$?
	set -e
	out=$(cat "$work/out")
	err=$(cat "$work/err")
	cat "$work/out" "$work/err" >>"$work/all.log"
}

# free_port: a TCP port on 127.0.0.1 nobody listens on now, below the
# kernel's ephemeral range (32768 and up: a port there may be any client
# connection's, and a worker told to listen on it fails to start).
free_port() {
	local p i
	for ((i = 0; i < 100; i++)); do
		p=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	fail "no free port from 20000 to 31999"
}

# error_lines TEXT: how many lines of a program's stderr are errors: a line
# that is not a JSON log line (usage errors are plain text), or a JSON log
# line at level error. A warning beside the error (a Kafka client's, of a
# broker just restarted) is not counted.
error_lines() {
	if [[ -z $1 ]]; then echo 0; else printf '%s\n' "$1" | grep -c -v -e '^{.*"level":"\(debug\|info\|warn\)"' || true; fi
}

# lines TEXT: how many lines TEXT has (0 when empty).
lines() {
	if [[ -z $1 ]]; then echo 0; else printf '%s\n' "$1" | wc -l; fi
}

# scaled N: N x CATALYST_TEST_SCALE_PCT / 100 (default 100), at least 1. The
# sanitizer build (scripts/test) runs the data-heavy tests at a fraction of
# their size: the same properties, shown on fewer records.
scaled() {
	local v=$(($1 * ${CATALYST_TEST_SCALE_PCT:-100} / 100))
	echo $((v > 0 ? v : 1))
}

# table_dump URL: every row of the five tables, in key order (COPY text),
# to compare two databases row by row.
table_dump() {
	psql_at "$1" "
		COPY (SELECT * FROM news_raw ORDER BY news_id) TO STDOUT;
		COPY (SELECT * FROM trading_candidates ORDER BY candidate_id) TO STDOUT;
		COPY (SELECT * FROM trading_signals ORDER BY signal_id) TO STDOUT;
		COPY (SELECT * FROM trade_records ORDER BY trade_id) TO STDOUT;
		COPY (SELECT * FROM source_metrics ORDER BY source_name) TO STDOUT"
}

# scratch_replica_db NAME: as scratch_db, on the stack's replica server
# (CATALYST_REPLICA_URL): a fresh database catalyst_test_NAME there, dropped
# when the script exits. Sets SCRATCH_REPLICA_URL (exported).
scratch_replica_db() {
	local name=catalyst_test_$1 admin=${CATALYST_REPLICA_URL:?the stack env sets no CATALYST_REPLICA_URL}
	[[ $name =~ ^[a-z0-9_]+$ ]] || fail "scratch_replica_db: bad name [$1]"
	LIB_ADMIN_REPLICA_URL=$admin
	psql_at "$admin" "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null
	psql_at "$admin" "CREATE DATABASE $name" >/dev/null
	on_exit "psql_at \"\$LIB_ADMIN_REPLICA_URL\" 'DROP DATABASE IF EXISTS $name WITH (FORCE)' >/dev/null"
	SCRATCH_REPLICA_URL=$(pg_url_with_db "$admin" "$name")
	export SCRATCH_REPLICA_URL
}
