#!/usr/bin/env bash
# catalyst-sync against the real broker, a scratch database on the primary
# server and one on the replica server, on topics of its own, fed by
# catalyst-persist as in production:
#   - bad configuration refused in one line; an unmigrated replica refused
#   1. 50,000 writes (with updates and deletes) through persist -> the
#      replica's tables and tombstones equal the primary's, every column
#   3. divergence injected on the replica (100 rows deleted, 100 altered,
#      50 extra) -> CheckConsistency with repair reports exactly those and
#      fixes them; a second check reports zero
#   4. a throttled check while writes flow: no in-flight row reported, only
#      the 20 injected differences; no row's version ever goes down on the
#      replica (a trigger records any); equal at the end
#   5. ResyncTable seeds an emptied replica table of 200,000 rows, equal
#      afterwards, the worker's peak memory grows far less than the table
#   ReplicateRows from sync.v1 applied; commands for another replica ignored;
#   monitoring metrics present; SIGTERM -> 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
sync_bin=$bin/catalyst-sync
records=$here/records.py
[[ -x $sync_bin ]] || fail "$sync_bin not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.sync.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-synctest-$$"
export CATALYST_REPLICA_NAME="synctest$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_SYNC_PORT=0 CATALYST_SYNC_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_COMMIT_INTERVAL_MS=200 CATALYST_SYNC_MONITOR_INTERVAL_S=1
export CATALYST_SYNC_CHECK_SETTLE_MS=500
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
sync_group=catalyst-sync-$CATALYST_REPLICA_NAME
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
changes_topic=${CATALYST_TOPIC_PREFIX}changes.v1
write_topic=${CATALYST_TOPIC_PREFIX}write.v1
events_topic=${CATALYST_TOPIC_PREFIX}events.v1

scratch_db "sync_$$"
primary=$SCRATCH_PG_URL
scratch_replica_db "sync_$$"
replica=$SCRATCH_REPLICA_URL
export CATALYST_PG_URL=$primary CATALYST_REPLICA_URL=$replica
"$bin/catalyst-migrate" up 2>/dev/null

# --- bad configuration, an unmigrated replica ------------------------------------------------
run env -u CATALYST_REPLICA_URL "$sync_bin"
assert_eq 2 "$rc" "without CATALYST_REPLICA_URL"
assert_eq "catalyst-sync: CATALYST_REPLICA_URL: required but not set" "$err" "its error"
run env -u CATALYST_REPLICA_NAME "$sync_bin"
assert_eq 2 "$rc" "without CATALYST_REPLICA_NAME"
run env CATALYST_REPLICA_NAME="a b" "$sync_bin"
assert_eq 2 "$rc" "a replica name with a space"
assert_eq 1 "$(lines "$err")" "one line"
run env CATALYST_SYNC_CHECK_CHUNK_SIZE=1 "$sync_bin"
assert_eq 2 "$rc" "a chunk size of 1"
assert_contains "$err" "catalyst-sync: CATALYST_SYNC_CHECK_CHUNK_SIZE: "
run "$sync_bin" --help
assert_eq 0 "$rc" "--help"
for name in CATALYST_REPLICA_URL CATALYST_REPLICA_NAME CATALYST_PG_URL CATALYST_SYNC_PORT CATALYST_SYNC_CHECK_SETTLE_MS; do
	assert_contains "$out" "$name" "--help"
done
run "$sync_bin"
assert_eq 1 "$rc" "on a replica database without migrations"
assert_eq 1 "$(lines "$err")" "one line"
assert_contains "$err" "replica: no schema_migrations table: no migration was applied to this database"
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null
run "$bin/catalyst-publish" sync check
assert_eq 2 "$rc" "sync check without --table"
run "$bin/catalyst-publish" sync check --table no_such_table
assert_eq 2 "$rc" "sync check of an unknown table"
run "$bin/catalyst-publish" sync frobnicate
assert_eq 2 "$rc" "an unknown sync action"

# --- the workers -------------------------------------------------------------------------------
persist_pid= sync_pid=
on_exit '[[ -z $persist_pid ]] || kill -9 "$persist_pid" 2>/dev/null; [[ -z $sync_pid ]] || kill -9 "$sync_pid" 2>/dev/null; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
persist_pid=$!
"$sync_bin" 2>"$work/sync.log" &
sync_pid=$!
wait_for 30 "catalyst-sync to listen" grep -q '"port":' "$work/sync.log"
base="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$work/sync.log" | head -1 | cut -d: -f2)"
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/readyz") == 200 ]]; }
wait_for 60 "catalyst-sync to be ready" ready
metric() { # metric NAME_WITH_LABELS: its value on /metrics (0 when absent)
	curl -s "$base/metrics" | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}

caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "$write_topic" --wait-ms 180000 >/dev/null ||
		fail "catalyst-persist did not catch up: $(tail -3 "$work/persist.log")"
	"$bin/group-lag" --group "$sync_group" --topic "$changes_topic" --wait-ms 180000 >/dev/null ||
		fail "catalyst-sync did not catch up: $(tail -3 "$work/sync.log")"
}
publish() {
	run "$bin/catalyst-publish" write "$1"
	assert_eq 0 "$rc" "publishing $1: $err"
}
# table_dump URL: every row of every table and every tombstone, in key order
table_dump() {
	psql_at "$1" "
		COPY (SELECT * FROM news_raw ORDER BY news_id) TO STDOUT;
		COPY (SELECT * FROM trading_candidates ORDER BY candidate_id) TO STDOUT;
		COPY (SELECT * FROM trading_signals ORDER BY signal_id) TO STDOUT;
		COPY (SELECT * FROM trade_records ORDER BY trade_id) TO STDOUT;
		COPY (SELECT * FROM source_metrics ORDER BY source_name) TO STDOUT;
		COPY (SELECT table_name, pk, version FROM row_tombstones ORDER BY 1, 2) TO STDOUT"
}
assert_equal_dbs() { # assert_equal_dbs WHAT
	table_dump "$primary" >"$work/primary.dump"
	table_dump "$replica" >"$work/replica.dump"
	cmp -s "$work/primary.dump" "$work/replica.dump" ||
		fail "$1: the replica differs from the primary: $(diff "$work/primary.dump" "$work/replica.dump" | head -5)"
}
# check_report COMMAND_ID: waits for the check's report on events.v1, prints it
event_of() {
	"$bin/topic-dump" --topic "$events_topic" --type events --idle-ms 600000 --timeout-ms 240000 --count 1000 \
		2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("command_id") == sys.argv[1]:
        print(json.dumps(e)); sys.exit(0)
sys.exit(1)' "$1"
}
wait_event() { # wait_event COMMAND_ID -> the event's JSON in $event
	local deadline=$((SECONDS + 240))
	until event=$("$bin/topic-dump" --topic "$events_topic" --type events --idle-ms 2000 --timeout-ms 20000 \
		2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("command_id") == sys.argv[1]:
        print(json.dumps(e)); sys.exit(0)
sys.exit(1)' "$1"); do
		((SECONDS < deadline)) || fail "no event for command $1: $(tail -3 "$work/sync.log")"
		sleep 1
	done
}
counter() { # counter NAME: a counter of $event
	python3 -c 'import json, sys; print(json.loads(sys.argv[1])["counters"].get(sys.argv[2], 0))' "$event" "$1"
}
publish_sync() { # publish_sync ARGS...: sets command_id
	run "$bin/catalyst-publish" sync "$@"
	assert_eq 0 "$rc" "catalyst-publish sync $*: $err"
	command_id=${out##*command_id }
}

# --- 1. 50,000 writes through persist: the replica equals the primary --------------------------
python3 "$records" gen 45000 42 >"$work/base.jsonl"
python3 "$records" derive deletes "$work/base.jsonl" >"$work/deletes.all"
python3 "$records" derive older "$work/base.jsonl" >"$work/older.all"
head -3000 "$work/deletes.all" >"$work/deletes.jsonl"
head -2000 "$work/older.all" >"$work/older.jsonl"
cat "$work/base.jsonl" "$work/deletes.jsonl" "$work/older.jsonl" >"$work/all.jsonl"
assert_eq 50000 "$(wc -l <"$work/all.jsonl")" "writes"
publish "$work/all.jsonl"
caught_up
assert_equal_dbs "after 50,000 writes"
rows=$(psql_at "$replica" "SELECT (SELECT count(*) FROM news_raw) + (SELECT count(*) FROM trading_candidates)
	+ (SELECT count(*) FROM trading_signals) + (SELECT count(*) FROM trade_records) + (SELECT count(*) FROM source_metrics)")
(( rows > 40000 )) || fail "only $rows rows on the replica"
assert_eq 0 "$(curl -s "$base/metrics" | awk '/^catalyst_messages_dead_lettered_total/ { print $2 }')" "dead letters"
echo "1. 50,000 writes: replica equal to the primary ($rows rows)"

# ReplicateRows from a service; a command for another replica changes nothing
printf '%s\n' '{"table":"source_metrics","source_name":"replicated-src","total_articles":5,"version":7}' >"$work/rep.jsonl"
printf '%s\n' '{"table":"source_metrics","source_name":"other-replica-src","total_articles":5,"version":7}' >"$work/other.jsonl"
run "$bin/catalyst-publish" sync replicate "$work/rep.jsonl"
assert_eq 0 "$rc" "sync replicate: $err"
run "$bin/catalyst-publish" sync replicate --replica someone-else "$work/other.jsonl"
assert_eq 0 "$rc" "sync replicate --replica: $err"
wait_for 60 "the replicated row" test "$(psql_at "$replica" "SELECT version FROM source_metrics WHERE source_name = 'replicated-src'")" = 7
"$bin/group-lag" --group "$sync_group" --topic "${CATALYST_TOPIC_PREFIX}sync.v1" --wait-ms 60000 >/dev/null
assert_eq 0 "$(psql_at "$replica" "SELECT count(*) FROM source_metrics WHERE source_name = 'other-replica-src'")" \
	"rows of a command for another replica"
psql_at "$replica" "DELETE FROM source_metrics WHERE source_name = 'replicated-src'"

# --- 3. divergence on the replica, repaired exactly ----------------------------------------------
psql_at "$replica" "
	DELETE FROM trading_candidates WHERE candidate_id IN
		(SELECT candidate_id FROM trading_candidates ORDER BY md5(candidate_id) LIMIT 100);
	UPDATE trading_candidates SET primary_catalyst = 'tampered' WHERE candidate_id IN
		(SELECT candidate_id FROM trading_candidates ORDER BY md5(candidate_id) DESC LIMIT 50);
	UPDATE trading_candidates SET combined_score = 0.5, version = version - 1 WHERE candidate_id IN
		(SELECT candidate_id FROM trading_candidates WHERE primary_catalyst <> 'tampered'
		 ORDER BY md5(candidate_id) DESC LIMIT 50);
	INSERT INTO trading_candidates (candidate_id, symbol, version)
		SELECT 'extra-' || i, 'XTRA', 1 FROM generate_series(1, 50) AS i"
publish_sync check --table trading_candidates --chunk-size 500 --repair
wait_event "$command_id"
assert_eq 100 "$(counter rows_missing)" "rows missing"
assert_eq 100 "$(counter rows_stale)" "rows stale"
assert_eq 50 "$(counter rows_extra)" "rows extra"
assert_eq 250 "$(counter rows_repaired)" "rows repaired"
assert_eq 0 "$(counter rows_in_flight)" "rows in flight"
assert_eq "$(psql_at "$primary" "SELECT count(*) FROM trading_candidates")" "$(counter rows_compared)" "rows compared"
assert_equal_dbs "after the repair"
publish_sync check --table trading_candidates
wait_event "$command_id"
for c in rows_missing rows_stale rows_extra rows_repaired; do
	assert_eq 0 "$(counter "$c")" "$c of the second check"
done
echo "3. 250 differences found and repaired; the second check finds none"
