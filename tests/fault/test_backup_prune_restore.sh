#!/usr/bin/env bash
# catalyst-backup against hostile prunes and deleted rows (issue 13, sections
# 5 and 7), on the real stack (topics, groups and scratch database of its own):
#   a. a prune dated 2100 (now_us) is run by the worker's clock, and the
#      newest CATALYST_BACKUP_KEEP_FULL (2) full backups stay whatever the
#      tiers say; with the test-only CATALYST_BACKUP_ALLOW_PRUNE_NOW the date
#      is taken, and the newest two fulls still stay;
#   b. a table restore honours row_tombstones: rows catalyst-persist deleted
#      after the backup stay deleted, rows lost without a delete (or deleted
#      before they were written again) come back.
# ctest: beside others (it restarts none of the stack's services)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
on_exit "[ -f '$work/done' ] || tail -n 15 '$work'/*.log >&2 2>/dev/null || true"
export CATALYST_TOPIC_PREFIX="test.bkprune.$$.$RANDOM."
export CATALYST_BACKUP_GROUP="test-backup-prune-$$" CATALYST_BACKUP_PORT=0 CATALYST_LOG_LEVEL=info
export CATALYST_PERSIST_GROUP="test-backup-prune-persist-$$" CATALYST_PERSIST_PORT=0
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete '$CATALYST_TOPIC_PREFIX' >/dev/null 2>&1 || true"
"$bin/topic-admin" create
events_topic="${CATALYST_TOPIC_PREFIX}events.v1"

scratch_db "bkprune_$$"
db=$SCRATCH_DB
export CATALYST_PG_URL=$SCRATCH_PG_URL
"$bin/catalyst-migrate" up >/dev/null
export CATALYST_BACKUP_RESTORE_TARGETS="self=$CATALYST_PG_URL"

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
start() { # LOG PROGRAM [env...]
	local log=$1 program=$2
	shift 2
	env "$@" "$bin/$program" 2>>"$log" &
	pids+=($!)
}
stop_all() {
	for p in "${pids[@]}"; do
		kill -TERM "$p"
		wait "$p" || fail "pid $p did not stop cleanly"
	done
	pids=()
}
event_of() { # KIND COMMAND-ID
	"$bin/topic-dump" --topic "$events_topic" --type events --until-end --timeout-ms 10000 2>/dev/null |
		grep "\"kind\":\"$1\"" | grep "\"command_id\":\"$2\""
}
wait_event() { wait_for 120 "event $1 of $2" event_of "$1" "$2"; }
attr() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])["attributes"][sys.argv[2]])' "$1" "$2"; }
sorted() { tr , '\n' | sed '/^$/d' | sort | paste -sd,; }

# --- a. prunes dated 2100 ---------------------------------------------------------------------
# daily fulls and hourly incrementals of early 2025: no tier keeps any today
PGOPTIONS="-c TimeZone=UTC" psql_at "$CATALYST_PG_URL" "
INSERT INTO backup_catalog (backup_id, kind, tag, database_name, state, started_at, finished_at)
  SELECT 'f-' || to_char(ts, 'YYYYMMDD'), 'full', 'daily', '$db', 'completed', ts, ts
  FROM generate_series(timestamptz '2025-01-01 00:00+00', '2025-01-05 00:00+00', interval '1 day') ts;
INSERT INTO backup_catalog (backup_id, kind, tag, database_name, state, started_at, finished_at)
  SELECT 'i-' || to_char(ts, 'YYYYMMDDHH24'), 'incremental', 'hourly', '$db', 'completed', ts, ts
  FROM generate_series(timestamptz '2025-01-05 01:05+00', '2025-01-05 04:05+00', interval '1 hour') ts;" >/dev/null
now_2100=$(($(date -u -d '2100-01-01 00:00:00' +%s) * 1000000))
# the test-only override, as a dry run first: the date is taken, the newest two fulls stay
start "$work/allow.log" catalyst-backup CATALYST_BACKUP_ALLOW_PRUNE_NOW=1
"$bin/catalyst-publish" backup --command-id "prune-allowed-$$" prune --dry-run --now-us "$now_2100" >/dev/null
wait_event backup.pruned "prune-allowed-$$"
line=$(event_of backup.pruned "prune-allowed-$$")
assert_eq "2100-01-01T00:00:00Z" "$(attr "$line" now)" "the prune's clock (allowed)"
assert_eq "f-20250104,f-20250105" "$(attr "$line" kept | sorted)" "kept (allowed, dry run)"
stop_all
# in production the worker's clock decides
start "$work/prune.log" catalyst-backup
"$bin/catalyst-publish" backup --command-id "prune-2100-$$" prune --now-us "$now_2100" >/dev/null
wait_event backup.pruned "prune-2100-$$"
line=$(event_of backup.pruned "prune-2100-$$")
assert_eq "$(date -u +%Y)" "$(attr "$line" now | cut -c1-4)" "the prune's clock (the worker's)"
assert_eq "f-20250104,f-20250105" "$(attr "$line" kept | sorted)" "kept"
assert_contains "$(cat "$work/prune.log")" "now_us ignored, the worker's clock decides"
assert_eq "f-20250104,f-20250105" \
	"$(psql_at "$CATALYST_PG_URL" "SELECT string_agg(backup_id, ',' ORDER BY backup_id) FROM backup_catalog WHERE state = 'completed'")" \
	"completed after the prune"
assert_eq 7 "$(psql_at "$CATALYST_PG_URL" "SELECT count(*) FROM backup_catalog WHERE state = 'pruned'")" "pruned"

# --- b. a table restore and row_tombstones ---------------------------------------------------
psql_at "$CATALYST_PG_URL" "
INSERT INTO trading_signals (signal_id, symbol, signal_type, confidence, entry_price, version)
  SELECT 's' || i, 'S' || i, 'buy', 0.5, i * 1.5, 1000 + i FROM generate_series(1, 10) i;
-- s10 was deleted once (version 900) and written again since (1010)
INSERT INTO row_tombstones (table_name, pk, version) VALUES ('trading_signals', 's10', 900);" >/dev/null
"$bin/catalyst-publish" backup --command-id "tables-$$" tables trading_signals >/dev/null
wait_event backup.completed "tables-$$"
backup_id=$(psql_at "$CATALYST_PG_URL" "SELECT backup_id FROM backup_catalog WHERE command_id = 'tables-$$'")
# catalyst-persist deletes s1..s3 after the backup
start "$work/persist.log" catalyst-persist
for i in 1 2 3; do
	printf '{"table":"trading_signals","op":"delete","signal_id":"s%d","symbol":"S%d","version":5000}\n' "$i" "$i"
done | "$bin/catalyst-publish" write - >/dev/null
deleted() { [[ $(psql_at "$CATALYST_PG_URL" "SELECT count(*) FROM trading_signals WHERE signal_id IN ('s1', 's2', 's3')") == 0 ]]; }
wait_for 60 "persist to delete s1..s3" deleted
assert_eq 3 "$(psql_at "$CATALYST_PG_URL" "SELECT count(*) FROM row_tombstones WHERE table_name = 'trading_signals' AND version = 5000")" "tombstones"
# s6 and s10 lost without a delete (what a restore is for)
psql_at "$CATALYST_PG_URL" "DELETE FROM trading_signals WHERE signal_id IN ('s6', 's10')" >/dev/null
"$bin/catalyst-publish" backup --command-id "restore-$$" restore "$backup_id" self >/dev/null
wait_event backup.restored "restore-$$"
assert_contains "$(event_of backup.restored "restore-$$")" '"ok":true'
assert_eq "s10,s4,s5,s6,s7,s8,s9" \
	"$(psql_at "$CATALYST_PG_URL" "SELECT string_agg(signal_id, ',' ORDER BY signal_id) FROM trading_signals")" \
	"rows after the restore"
assert_contains "$(cat "$work/prune.log")" "restore of trading_signals: 3 rows not restored, deleted since"
stop_all

touch "$work/done"
echo "test_backup_prune_restore: ok"
