#!/usr/bin/env bash
# catalyst-backup: nothing blocks backup.v1 (issue 13, section 4), on the
# real stack (topics, group and scratch database of its own):
#   a. a full backup that keeps failing (pg_dump: disk full) is attempted
#      CATALYST_BACKUP_MAX_ATTEMPTS times, then fails for good: one
#      backup.started, one backup.failed, a dead letter with the reason, the
#      catalog says failed; the prune published after it (same partition)
#      runs; a restore into a target not in CATALYST_BACKUP_RESTORE_TARGETS
#      gets a backup.restored with ok=false as well as its dead letter;
#   b. the bucket gone: the same, without backup.started (nothing began);
#   c. a backup longer than the group's session timeout: the worker's
#      max.poll.interval.ms default (CATALYST_BACKUP_MAX_COMMAND_S) reaches
#      librdkafka (an explicit CATALYST_KAFKA_MAX_POLL_INTERVAL_MS wins), and
#      the worker stays in its group: one assignment, one started, one
#      completed. CATALYST_TEST_BACKUP_SLOW_S (20) is how long the backup
#      takes; over 300 it shows what librdkafka's own default (5 min) did.
# ctest: beside others (it restarts none of the stack's services)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
on_exit "[ -f '$work/done' ] || tail -n 15 '$work'/*.log >&2 2>/dev/null || true"
export CATALYST_TOPIC_PREFIX="test.bkattempts.$$.$RANDOM."
export CATALYST_BACKUP_GROUP="test-backup-attempts-$$" CATALYST_BACKUP_PORT=0 CATALYST_LOG_LEVEL=info
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=500
export CATALYST_KAFKA_SESSION_TIMEOUT_MS=6000 CATALYST_KAFKA_HEARTBEAT_INTERVAL_MS=1000
export CATALYST_S3_MAX_RETRIES=1 CATALYST_S3_RETRY_BACKOFF_MS=100
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete '$CATALYST_TOPIC_PREFIX' >/dev/null 2>&1 || true"
"$bin/topic-admin" create
events_topic="${CATALYST_TOPIC_PREFIX}events.v1"

scratch_db "bkattempts_$$"
export CATALYST_PG_URL=$SCRATCH_PG_URL
"$bin/catalyst-migrate" up >/dev/null
psql_at "$CATALYST_PG_URL" "
INSERT INTO trading_signals (signal_id, symbol, signal_type, confidence, entry_price, version)
  SELECT 's' || i, 'S' || (i % 50), 'buy', 0.5, i * 1.5, 1000 + i FROM generate_series(1, 100) i;" >/dev/null
export CATALYST_BACKUP_RESTORE_TARGETS="self=$CATALYST_PG_URL"

# pg_dump that fails as on a full disk, and one that takes its time
cat >"$work/full-disk-pg_dump" <<'EOF'
#!/bin/sh
echo "pg_dump: error: could not write to output file: No space left on device" >&2
exit 1
EOF
slow_s=${CATALYST_TEST_BACKUP_SLOW_S:-20}
cat >"$work/slow-pg_dump" <<EOF
#!/bin/sh
sleep $slow_s
exec pg_dump "\$@"
EOF
chmod +x "$work/full-disk-pg_dump" "$work/slow-pg_dump"

pid=
on_exit '[[ -z $pid ]] || kill -9 "$pid" 2>/dev/null; true'
start_worker() { # LOG [env...]
	local log=$1
	shift
	env "$@" "$bin/catalyst-backup" 2>>"$log" &
	pid=$!
}
stop_worker() {
	kill -TERM "$pid"
	wait "$pid" || fail "catalyst-backup did not stop cleanly"
	pid=
}
events() { "$bin/topic-dump" --topic "$events_topic" --type events --until-end --timeout-ms 20000 2>/dev/null || true; }
# events of KIND for COMMAND-ID
events_of() { events | grep "\"kind\":\"$1\"" | grep "\"command_id\":\"$2\"" || true; }
caught_up() {
	"$bin/group-lag" --group "$CATALYST_BACKUP_GROUP" --topic "${CATALYST_TOPIC_PREFIX}backup.v1" \
		--wait-ms 120000 >/dev/null
}
letters() { "$bin/catalyst-publish" dlq list --json 2>/dev/null || true; }
state_of() { psql_at "$CATALYST_PG_URL" "SELECT state FROM backup_catalog WHERE command_id = '$1'"; }

# --- a. a disk that stays full; the prune and the bad restore behind it -------------------------
start_worker "$work/full.log" CATALYST_BACKUP_PG_DUMP="$work/full-disk-pg_dump" CATALYST_BACKUP_MAX_ATTEMPTS=3
"$bin/catalyst-publish" backup --command-id "full-a-$$" full --tag daily >/dev/null
"$bin/catalyst-publish" backup --command-id "prune-a-$$" prune >/dev/null
"$bin/catalyst-publish" backup --command-id "restore-a-$$" restore some-backup nowhere >/dev/null
wait_for 120 "the prune behind the failing backup" bash -c "'$bin/topic-dump' --topic '$events_topic' --type events --until-end --timeout-ms 10000 2>/dev/null | grep '\"kind\":\"backup.pruned\"' | grep -q 'prune-a-$$'"
caught_up
assert_eq 3 "$(grep -c 'backup full-[0-9a-f]* failed (attempt' "$work/full.log")" "failed attempts"
assert_contains "$(cat "$work/full.log")" "failed (attempt 3 of 3): pg_dump failed"
assert_eq 1 "$(lines "$(events_of backup.started "full-a-$$")")" "backup.started events"
line=$(events_of backup.failed "full-a-$$")
assert_eq 1 "$(lines "$line")" "backup.failed events"
assert_contains "$line" '"ok":false'
assert_contains "$line" "gave up after 3 attempts"
assert_contains "$line" "No space left on device"
assert_eq failed "$(state_of "full-a-$$")" "catalog state"
assert_contains "$(events_of backup.pruned "prune-a-$$")" '"ok":true'
line=$(events_of backup.restored "restore-a-$$")
assert_eq 1 "$(lines "$line")" "backup.restored events of the bad target"
assert_contains "$line" '"ok":false'
assert_contains "$line" 'restore target \"nowhere\" is not in CATALYST_BACKUP_RESTORE_TARGETS'
wait_for 30 "two dead letters" bash -c "[ \"\$('$bin/catalyst-publish' dlq list --json 2>/dev/null | wc -l)\" -ge 2 ]"
assert_contains "$(letters)" "gave up after 3 attempts: pg_dump failed"
assert_contains "$(letters)" 'restore target \"nowhere\" is not in CATALYST_BACKUP_RESTORE_TARGETS'
stop_worker

# --- b. the bucket gone -------------------------------------------------------------------------
start_worker "$work/gone.log" CATALYST_S3_BUCKET="gone-$$" CATALYST_BACKUP_MAX_ATTEMPTS=2
"$bin/catalyst-publish" backup --command-id "full-b-$$" full >/dev/null
"$bin/catalyst-publish" backup --command-id "prune-b-$$" prune --dry-run >/dev/null
wait_for 120 "the prune behind the failing backup" bash -c "'$bin/topic-dump' --topic '$events_topic' --type events --until-end --timeout-ms 10000 2>/dev/null | grep '\"kind\":\"backup.pruned\"' | grep -q 'prune-b-$$'"
line=$(events_of backup.failed "full-b-$$")
assert_eq 1 "$(lines "$line")" "backup.failed events (bucket gone)"
assert_contains "$line" "gave up after 2 attempts"
assert_eq 0 "$(lines "$(events_of backup.started "full-b-$$")")" "backup.started events (bucket gone)"
wait_for 30 "the dead letter of the backup" bash -c "'$bin/catalyst-publish' dlq list --json 2>/dev/null | grep -q 'gave up after 2 attempts'"
stop_worker

# --- c. a backup longer than the session timeout --------------------------------------------------
# the default reaches librdkafka (its configuration dump lists what was set)
start_worker "$work/slow.log" CATALYST_BACKUP_PG_DUMP="$work/slow-pg_dump" CATALYST_BACKUP_MAX_COMMAND_S=$((slow_s + 60)) \
	CATALYST_LOG_LEVEL=debug CATALYST_KAFKA_DEBUG=conf,cgrp
"$bin/catalyst-publish" backup --command-id "full-c-$$" full >/dev/null
is_completed() { [[ $(state_of "$1") == completed ]]; }
wait_for $((slow_s + 160)) "the slow backup" is_completed "full-c-$$"
caught_up
assert_contains "$(cat "$work/slow.log")" "max.poll.interval.ms = $(((slow_s + 60) * 1000))"
assert_eq 1 "$(lines "$(events_of backup.started "full-c-$$")")" "backup.started events (slow)"
assert_eq 1 "$(lines "$(events_of backup.completed "full-c-$$")")" "backup.completed events (slow)"
assert_not_contains "$(cat "$work/slow.log")" "maximum poll interval"
assert_not_contains "$(cat "$work/slow.log")" "\"msg\":\"lost "
assert_eq 1 "$(grep -c '"msg":"assigned ' "$work/slow.log")" "assignments (no eviction, no rebalance)"
stop_worker
# an explicit CATALYST_KAFKA_MAX_POLL_INTERVAL_MS wins
start_worker "$work/explicit.log" CATALYST_KAFKA_MAX_POLL_INTERVAL_MS=70000 CATALYST_LOG_LEVEL=debug \
	CATALYST_KAFKA_DEBUG=conf
wait_for 30 "the configuration dump" grep -q "max.poll.interval.ms = " "$work/explicit.log"
assert_contains "$(cat "$work/explicit.log")" "max.poll.interval.ms = 70000"
assert_not_contains "$(cat "$work/explicit.log")" "max.poll.interval.ms = 21600000"
stop_worker

touch "$work/done"
echo "test_backup_attempts: ok"
