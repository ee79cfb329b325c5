#!/usr/bin/env bash
# Versions are event time in µs: a version far ahead of the clock would
# freeze its row for good (nothing newer replaces it, repair never lowers a
# version). On the real stack (catalyst-persist, catalyst-sync, topics, a
# scratch primary and replica):
#   1. persist dead-letters a write whose version is more than
#      CATALYST_VERSION_MAX_AHEAD_S ahead of its clock, with the reason, and
#      applies one within it;
#   2. sync dead-letters a ReplicateRows change that far ahead (the same
#      rule), and applies one within it;
#   3. with CATALYST_VERSION_MAX_AHEAD_S=0 (versions that are counters) a
#      version of 9223372036854775807 applies and freezes its row; the
#      operator's path, `catalyst-migrate reset-version`, unfreezes it on the
#      primary and the replica, and the next write applies on both.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.versions.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-versions-$$" CATALYST_REPLICA_NAME="versions$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_SYNC_PORT=0 CATALYST_SYNC_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_COMMIT_INTERVAL_MS=200
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "versions_$$"
primary=$SCRATCH_PG_URL
scratch_replica_db "versions_$$"
replica=$SCRATCH_REPLICA_URL
export CATALYST_PG_URL=$primary CATALYST_REPLICA_URL=$replica
"$bin/catalyst-migrate" up 2>/dev/null
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
start() { # start NAME [ENV=VALUE...]: the worker, pid in $started
	local name=$1
	shift
	env "$@" "$bin/catalyst-$name" 2>>"$work/$name.log" &
	started=$!
	pids+=("$started")
}
now_us=$(($(date +%s) * 1000000))
line() { # line ID VERSION [HEADLINE]
	printf '{"table":"news_raw","news_id":"%s","symbol":"VER","headline":"%s","version":%s}\n' "$1" "${3:-h}" "$2"
}
version_of() { psql_at "$1" "SELECT coalesce((SELECT version FROM news_raw WHERE news_id = '$2'), 0)"; }
has_version() { [[ $(version_of "$1" "$2") == "$3" ]]; }
dlq_reasons() { # dlq_reasons N: the reasons of the first N dead letters
	"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count "$1" \
		--timeout-ms 30000 | python3 -c 'import json,sys; [print(json.loads(l)["headers"]["x-catalyst-error"]) for l in sys.stdin]'
}

# --- 1. persist -----------------------------------------------------------------------
start persist
persist_pid=$started
{
	line far-max 9223372036854775807
	line far-2d $((now_us + 2 * 86400 * 1000000))
	line near $((now_us + 3600 * 1000000))
} | "$bin/catalyst-publish" write - >/dev/null
wait_for 60 "the write an hour ahead applied" has_version "$primary" near $((now_us + 3600 * 1000000))
reasons=$(dlq_reasons 2)
assert_eq 2 "$(grep -c 'ahead of this worker.s clock, more than CATALYST_VERSION_MAX_AHEAD_S=86400' <<<"$reasons")" \
	"dead letters for versions too far ahead"
assert_eq 0 "$(version_of "$primary" far-max)" "far-max applied"
assert_eq 0 "$(version_of "$primary" far-2d)" "far-2d applied"

# a producer's issued_at_us a day ahead, or from 1970, stays out of the
# latency histogram, counted apart
printf '{"table":"news_raw","news_id":"lat-future","symbol":"VER","version":1,"issued_at_us":%s}\n' \
	$((now_us + 86400 * 1000000)) | "$bin/catalyst-publish" write - >/dev/null
printf '{"table":"news_raw","news_id":"lat-absurd","symbol":"VER","version":1,"issued_at_us":5}\n' |
	"$bin/catalyst-publish" write - >/dev/null
wait_for 60 "lat-absurd applied" has_version "$primary" lat-absurd 1
port=$(grep -o '"port":[0-9]*' "$work/persist.log" | head -1 | cut -d: -f2)
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
settled() { [[ $(metric 'catalyst_latency_samples_ignored_total{reason="absurd"}') == 1 ]]; }
wait_for 30 "the absurd issued_at_us counted" settled
assert_eq 1 "$(metric 'catalyst_latency_samples_ignored_total{reason="future"}')" "future samples ignored"
assert_eq 1 "$(metric catalyst_end_to_end_latency_seconds_count)" "latency samples (only the write within bounds)"

# --- 2. sync: ReplicateRows obeys the same rule ---------------------------------------------
start sync
sync_pid=$started
{
	line rep-far 9223372036854775807
	line rep-ok 5
} | "$bin/catalyst-publish" sync replicate - >/dev/null
wait_for 60 "the ReplicateRows change within the limit applied" has_version "$replica" rep-ok 5
wait_for 30 "the far ReplicateRows change dead-lettered" \
	grep -q 'ahead of this worker.s clock' "$work/sync.log"
assert_eq 0 "$(version_of "$replica" rep-far)" "rep-far applied on the replica"

# --- 3. counters allowed: a frozen row, and the operator's reset ---------------------------------
kill -TERM "$persist_pid"
wait "$persist_pid" || fail "catalyst-persist did not exit 0 on SIGTERM"
start persist CATALYST_VERSION_MAX_AHEAD_S=0
line frozen 9223372036854775807 first | "$bin/catalyst-publish" write - >/dev/null
wait_for 60 "the frozen row on the primary" has_version "$primary" frozen 9223372036854775807
wait_for 60 "the frozen row on the replica" has_version "$replica" frozen 9223372036854775807
line frozen "$now_us" second | "$bin/catalyst-publish" write - >/dev/null
line marker 1 | "$bin/catalyst-publish" write - >/dev/null
wait_for 60 "a later write" has_version "$primary" marker 1
assert_eq 9223372036854775807 "$(version_of "$primary" frozen)" "the frozen row took a newer write"

out=$("$bin/catalyst-migrate" reset-version news_raw frozen 1) || fail "reset-version failed on the primary"
assert_contains "$out" "news_raw frozen: row version 9223372036854775807 -> 1"
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" reset-version news_raw frozen 1 >/dev/null ||
	fail "reset-version failed on the replica"
assert_contains "$(CATALYST_PG_URL=$replica "$bin/catalyst-migrate" reset-version news_raw nosuch 1)" \
	"nothing to reset"
out=$("$bin/catalyst-migrate" reset-version no_such_table k 1 2>&1) && fail "an unknown table was accepted"
assert_contains "$out" "unknown table no_such_table"
# news_raw keeps its first insert: the row's next life comes by delete and insert
{
	printf '{"table":"news_raw","op":"delete","news_id":"frozen","symbol":"VER","version":%s}\n' $((now_us + 1))
	line frozen $((now_us + 2)) third
} | "$bin/catalyst-publish" write - >/dev/null
wait_for 60 "the write after the reset on the primary" has_version "$primary" frozen $((now_us + 2))
wait_for 60 "the write after the reset on the replica" has_version "$replica" frozen $((now_us + 2))
assert_eq third "$(psql_at "$replica" "SELECT headline FROM news_raw WHERE news_id = 'frozen'")" "replica headline"
echo "ok: versions too far ahead dead-lettered by persist and sync; a frozen row reset and written again"
