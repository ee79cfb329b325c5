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
#   monitoring metrics present; the replica's expired tombstones pruned at the
#   first batch after a start, not again within the interval; SIGTERM -> 0.
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
# (the settle covers persist's commit -> publish -> acknowledgement of a
# flowing write: 500 ms was once too short beside other tests)
export CATALYST_SYNC_CHECK_SETTLE_MS=1500 CATALYST_SYNC_SLOW_MIN_CALLS=1
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
assert_eq 1 "$(error_lines "$err")" "one line: $err"
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
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "replica: no schema_migrations table: no migration was applied to this database"
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null
psql_at "$replica" "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
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

# (record counts: CATALYST_TEST_SCALE_PCT percent of those named in 1. and 4.;
# not the 200,000 rows of 5.: the resync's bounded memory shows only on a table
# far larger than its buffers, and ASan's own overhead)
n_base=$(scaled 45000) n_deletes=$(scaled 3000) n_older=$(scaled 2000)
n_writes=$((n_base + n_deletes + n_older)) n_seed=200000

# --- 1. 50,000 writes through persist: the replica equals the primary --------------------------
python3 "$records" gen "$n_base" 42 >"$work/base.jsonl"
python3 "$records" derive deletes "$work/base.jsonl" >"$work/deletes.all"
python3 "$records" derive older "$work/base.jsonl" >"$work/older.all"
head -"$n_deletes" "$work/deletes.all" >"$work/deletes.jsonl"
head -"$n_older" "$work/older.all" >"$work/older.jsonl"
cat "$work/base.jsonl" "$work/deletes.jsonl" "$work/older.jsonl" >"$work/all.jsonl"
assert_eq "$n_writes" "$(wc -l <"$work/all.jsonl")" "writes"
publish "$work/all.jsonl"
caught_up
assert_equal_dbs "after $n_writes writes"
rows=$(psql_at "$replica" "SELECT (SELECT count(*) FROM news_raw) + (SELECT count(*) FROM trading_candidates)
	+ (SELECT count(*) FROM trading_signals) + (SELECT count(*) FROM trade_records) + (SELECT count(*) FROM source_metrics)")
(( rows >= n_base - n_deletes )) || fail "only $rows rows on the replica"
assert_eq 0 "$(curl -s "$base/metrics" | awk '/^catalyst_messages_dead_lettered_total/ { print $2 }')" "dead letters"
echo "1. $n_writes writes: replica equal to the primary ($rows rows)"

# ReplicateRows from a service; a command for another replica changes nothing
printf '%s\n' '{"table":"source_metrics","source_name":"replicated-src","total_articles":5,"version":7}' >"$work/rep.jsonl"
printf '%s\n' '{"table":"source_metrics","source_name":"other-replica-src","total_articles":5,"version":7}' >"$work/other.jsonl"
run "$bin/catalyst-publish" sync replicate "$work/rep.jsonl"
assert_eq 0 "$rc" "sync replicate: $err"
run "$bin/catalyst-publish" sync replicate --replica someone-else "$work/other.jsonl"
assert_eq 0 "$rc" "sync replicate --replica: $err"
replicated() { [[ $(psql_at "$replica" "SELECT version FROM source_metrics WHERE source_name = 'replicated-src'") == 7 ]]; }
wait_for 60 "the replicated row" replicated
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

# --- monitoring ----------------------------------------------------------------------------------
metric_positive() { (( $(metric "$1" | cut -d. -f1) > 0 )); }
wait_for 30 "replica live tuples on /metrics" metric_positive 'catalyst_sync_table_live_tuples{table="news_raw",side="replica"}'
wait_for 30 "primary table size on /metrics" metric_positive 'catalyst_sync_table_size_bytes{table="trade_records",side="primary"}'
no_lag() { [[ $(metric catalyst_sync_replication_lag_messages) == 0 ]]; }
wait_for 30 "the lag to read 0" no_lag
assert_eq 1 "$(metric 'catalyst_sync_pg_stat_statements_present{side="replica"}')" "pg_stat_statements on the replica"
assert_eq 0 "$(metric 'catalyst_sync_pg_stat_statements_present{side="primary"}')" "pg_stat_statements on the primary"
wait_for 30 "the slowest replica statement" metric_positive 'catalyst_sync_slow_statement_calls{side="replica",rank="1"}'
metric_positive catalyst_sync_last_applied_commit_timestamp_seconds || fail "no last applied commit time"
metrics_text=$(curl -s "$base/metrics")
[[ $metrics_text == *$'\n'"catalyst_sync_replication_lag_seconds "* ]] || fail "no lag in seconds on /metrics"
echo "monitoring: lag, table sizes and tuples of both sides, slowest statements"

# --- 4. a check while writes flow: nothing in flight reported, nothing reverted -----------------
psql_at "$replica" "
	CREATE TABLE version_regressions (table_name text, pk text, old_version bigint, new_version bigint);
	CREATE FUNCTION note_regression() RETURNS trigger LANGUAGE plpgsql AS \$\$
	BEGIN
		IF NEW.version < OLD.version THEN
			INSERT INTO version_regressions VALUES (TG_TABLE_NAME, OLD::text, OLD.version, NEW.version);
		END IF;
		RETURN NEW;
	END \$\$;
	CREATE TRIGGER note_regression BEFORE UPDATE ON trade_records FOR EACH ROW EXECUTE FUNCTION note_regression();
	UPDATE trade_records SET exit_reason = 'tampered' WHERE trade_id IN
		(SELECT trade_id FROM trade_records ORDER BY md5(trade_id) LIMIT 20)"
# updates (newer versions) of 3,000 other trade_records, 1,500 new ones, 300 deletes, at 800
# a second, while a check reads at most 2,500 rows a second (scaled alike: the same durations)
n_updates=$(scaled 3000) n_new=$(scaled 1500) n_flow_deletes=$(scaled 300)
flow_rate=$(scaled 800) check_rate=$(scaled 2500)
python3 - "$work/base.jsonl" "$(psql_at "$replica" "SELECT string_agg(trade_id, ',') FROM trade_records WHERE exit_reason = 'tampered'")" \
	"$n_updates" "$n_new" "$n_flow_deletes" >"$work/flow.jsonl" <<'PY'
import json, sys
tampered = set(sys.argv[2].split(","))
n_updates, n_new, n_deletes = map(int, sys.argv[3:6])
trades = [r for r in map(json.loads, open(sys.argv[1])) if r["table"] == "trade_records" and r["trade_id"] not in tampered]
assert len(trades) >= n_updates + n_deletes, f"only {len(trades)} trade_records"
out = []
for i, r in enumerate(trades[:n_updates]):
    r = dict(r, version=r["version"] + 500, pnl_amount=float(i), command_id=f"flow-{i}")
    out.append(r)
for i in range(n_new):
    out.append({"table": "trade_records", "trade_id": f"flow-new-{i}", "symbol": "FLOW", "side": "long",
                "quantity": 10, "version": 1_780_000_000_000_000 + i, "command_id": f"flow-new-{i}"})
for i, r in enumerate(trades[n_updates:n_updates + n_deletes]):
    out.append({"table": "trade_records", "op": "delete", "trade_id": r["trade_id"], "version": r["version"] + 600,
                "command_id": f"flow-del-{i}"})
out.sort(key=lambda r: r["command_id"][::-1])  # interleaved
for r in out:
    print(json.dumps(r))
PY
python3 -c '
import sys, time
t0 = time.monotonic()
for i, line in enumerate(sys.stdin):
    d = t0 + i / int(sys.argv[1]) - time.monotonic()
    if d > 0: time.sleep(d)
    sys.stdout.write(line); sys.stdout.flush()' "$flow_rate" <"$work/flow.jsonl" | "$bin/catalyst-publish" write - >"$work/flow.out" 2>&1 &
flow_pid=$!
on_exit "kill $flow_pid 2>/dev/null; true"
flowing() { (( $(psql_at "$primary" "SELECT count(*) FROM trade_records WHERE symbol = 'FLOW'") > 0 )); }
wait_for 30 "the first flowing writes on the primary" flowing
publish_sync check --table trade_records --chunk-size 500 --repair --max-rows-per-second "$check_rate"
wait_event "$command_id"
wait "$flow_pid" || fail "publishing the flowing writes: $(cat "$work/flow.out")"
echo "4. check during writes: $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["message"])' "$event")"
assert_eq 20 "$(counter rows_stale)" "rows stale while writes flow"
assert_eq 0 "$(counter rows_missing)" "rows missing while writes flow"
assert_eq 0 "$(counter rows_extra)" "rows extra while writes flow"
assert_eq 20 "$(counter rows_repaired)" "rows repaired while writes flow"
(( $(counter rows_in_flight) > 0 )) || fail "no row was in flight: the check did not overlap the writes"
caught_up
assert_eq 0 "$(psql_at "$replica" "SELECT count(*) FROM version_regressions")" "rows whose version went down"
assert_equal_dbs "after the check during writes"

# --- 5. ResyncTable seeds an empty table of 200,000 rows, in bounded memory ------------------------
kill -TERM "$sync_pid"
wait "$sync_pid" || fail "catalyst-sync did not exit 0 on SIGTERM"
sync_pid=
psql_at "$primary" "
	INSERT INTO news_raw (news_id, symbol, headline, source, url, published_timestamp, content_snippet,
		sentiment_score, catalyst_score, is_pre_market, source_tier, version)
	SELECT 'seed-' || i, 'SEED', 'Seed headline ' || i, 'reuters', 'https://example.com/seed/' || i,
		timestamptz '2026-11-27 00:00:00+00' + i * interval '1 second', repeat(md5(i::text), 10),
		(i % 200) / 100.0 - 1, (i % 100) / 100.0, i % 3 = 0, 1 + i % 5, 1700000000000000 + i
	FROM generate_series(1, $n_seed - (SELECT count(*) FROM news_raw)) AS i"
assert_eq "$n_seed" "$(psql_at "$primary" "SELECT count(*) FROM news_raw")" "news_raw rows on the primary"
psql_at "$replica" "TRUNCATE news_raw; DELETE FROM row_tombstones WHERE table_name = 'news_raw'"
# (under ASan, freed memory waits in a quarantine of 256 MiB: kept small here, so
# that the peak shows what the resync holds, not what ASan holds back)
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4 "$sync_bin" 2>"$work/sync2.log" &
sync_pid=$!
wait_for 30 "catalyst-sync to listen again" grep -q '"port":' "$work/sync2.log"
base="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$work/sync2.log" | head -1 | cut -d: -f2)"
wait_for 60 "catalyst-sync to be ready again" ready
sleep 2
peak_before=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$sync_pid/status")
publish_sync resync --table news_raw
wait_event "$command_id"
peak_after=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$sync_pid/status")
table_kib=$(( $(psql_at "$replica" "SELECT pg_relation_size('news_raw')") / 1024 ))
assert_eq "$n_seed" "$(counter rows)" "rows the resync copied"
assert_equal_dbs "after the resync"
growth=$((peak_after - peak_before))
echo "5. resync of $n_seed rows ($((table_kib / 1024)) MiB of table): peak memory grew $((growth / 1024)) MiB" \
	"(from $((peak_before / 1024)) MiB)"
(( growth < 32 * 1024 && growth * 4 < table_kib )) || fail "memory grew by $growth KiB copying $table_kib KiB"

kill -TERM "$sync_pid"
wait "$sync_pid" || fail "catalyst-sync did not exit 0 on SIGTERM"
sync_pid=

# --- the replica's tombstones past their retention are pruned (at the first batch after a start,
# then every CATALYST_TOMBSTONE_PRUNE_INTERVAL_S) ---------------------------------------------------
backdate() { # backdate N: N more of the replica's tombstones 8 days old
	psql_at "$replica" "UPDATE row_tombstones SET deleted_at = now() - interval '8 days'
		WHERE (table_name, pk) IN (SELECT table_name, pk FROM row_tombstones
			WHERE deleted_at > now() - interval '1 day' ORDER BY pk LIMIT $1)" >/dev/null
}
n_tombstones=$(psql_at "$replica" "SELECT count(*) FROM row_tombstones")
(( n_tombstones > 110 )) || fail "only $n_tombstones tombstones on the replica"
backdate 100
CATALYST_TOMBSTONE_RETENTION_S=604800 "$sync_bin" 2>"$work/sync3.log" &
sync_pid=$!
python3 "$records" gen 10 43 950000 >"$work/after_restart.jsonl"
publish "$work/after_restart.jsonl"
caught_up
assert_eq "$((n_tombstones - 100))" "$(psql_at "$replica" "SELECT count(*) FROM row_tombstones")" \
	"replica tombstones after pruning those 8 days old"
assert_eq 0 "$(psql_at "$replica" "SELECT count(*) FROM row_tombstones WHERE deleted_at < now() - interval '7 days'")" \
	"expired tombstones left on the replica"
assert_contains "$(cat "$work/sync3.log")" "pruned 100 tombstones older than 604800 s"
# within the interval (600 s by default), later batches leave expired tombstones alone
backdate 10
python3 "$records" gen 10 44 960000 >"$work/after_prune.jsonl"
publish "$work/after_prune.jsonl"
caught_up
assert_eq 10 "$(psql_at "$replica" "SELECT count(*) FROM row_tombstones WHERE deleted_at < now() - interval '7 days'")" \
	"expired tombstones pruned again within the interval"
echo "tombstones: 100 expired ones pruned on the replica after a start, none again within the interval"
kill -TERM "$sync_pid"
wait "$sync_pid" || fail "catalyst-sync did not exit 0 on SIGTERM"
sync_pid=
grep -q "$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).password or "no-password-here")' "$replica")" \
	"$work/sync.log" "$work/sync2.log" "$work/sync3.log" && fail "a password in the log"
echo "ok"
