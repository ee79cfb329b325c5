#!/usr/bin/env bash
# catalyst-persist under faults, on the real stack (topics of its own, a
# scratch database):
#   3. kill -9 three times at random moments while 100,000 records flow,
#      restarted each time: every record present exactly once, every
#      committed row on changes.v1 at least once;
#   4. PostgreSQL stopped for 10 s mid-stream: the worker stays up, drops out
#      of readiness, resumes, nothing lost;
#   6. two workers in one group share the partitions; kill -9 of one hands
#      its partitions to the other, nothing lost;
#   7. SIGTERM under load: exit 0 within the grace period; after a restart
#      no message beyond the in-flight batch is applied twice.
# (The record counts are CATALYST_TEST_SCALE_PCT percent of these.)
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
persist=$bin/catalyst-persist
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.pfault.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-fault-$$"
export CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_LOG_LEVEL=info
export CATALYST_BATCH_SIZE=500 CATALYST_COMMIT_INTERVAL_MS=500 CATALYST_SHUTDOWN_GRACE_MS=10000
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=2000
# a killed worker's partitions move once the group notices it is gone: the
# broker's shortest session instead of the 45 s default
export CATALYST_KAFKA_SESSION_TIMEOUT_MS=6000 CATALYST_KAFKA_HEARTBEAT_INTERVAL_MS=1000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
write_topic=${CATALYST_TOPIC_PREFIX}write.v1
changes_topic=${CATALYST_TOPIC_PREFIX}changes.v1

scratch_db "pfault_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
# and whatever happens, the shared PostgreSQL is left running
on_exit "'$CATALYST_SOURCE_DIR/scripts/stack' start-service pg-primary >/dev/null 2>&1 || true"

start_persist() { # start_persist NAME PORT: pid in $persist_pid
	CATALYST_PERSIST_PORT=$2 "$persist" 2>>"$work/$1.log" &
	persist_pid=$!
	pids+=("$persist_pid")
}
http_code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/$2"; }
is_ready() { [[ $(http_code "$1" readyz) == 200 ]]; }
not_ready() { [[ $(http_code "$1" readyz) == 503 ]]; }
caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "$write_topic" --wait-ms 240000 >/dev/null ||
		fail "catalyst-persist did not catch up"
}
committed() { # rows in the database, all tables
	psql_at "$db" "SELECT (SELECT count(*) FROM news_raw) + (SELECT count(*) FROM trading_candidates)
		+ (SELECT count(*) FROM trading_signals) + (SELECT count(*) FROM trade_records)
		+ (SELECT count(*) FROM source_metrics)"
}
rows_at_least() { [[ $(committed) -ge $1 ]]; }

n_flow=$(scaled 100000) n_outage=$(scaled 20000) n_shared=$(scaled 20000) n_term=$(scaled 30000)

# --- 3. kill -9 three times while 100,000 records flow ------------------------------------
python3 "$records" gen "$n_flow" 3 >"$work/flow.jsonl"
p=$(free_port)
start_persist run1 "$p"
"$bin/catalyst-publish" write "$work/flow.jsonl" >"$work/publish.out" &
publisher=$!
pids+=("$publisher")
seen=0
for round in 1 2 3; do
	# a random moment: past a random point of the round's quarter of the flow
	# (at once when the worker is already further), at a random extra delay
	target=$((round * n_flow / 4 + RANDOM % (n_flow / 8)))
	((target > seen)) || target=$((seen + 1))
	((target < n_flow)) || target=$n_flow
	wait_for 240 "progress to $target rows before kill $round ($seen before)" rows_at_least "$target"
	sleep "0.$((RANDOM % 10))"
	kill -9 "$persist_pid"
	wait "$persist_pid" 2>/dev/null || true
	seen=$(committed)
	echo "killed catalyst-persist ($round) with $seen rows committed"
	start_persist "run$((round + 1))" "$p"
done
wait "$publisher" || fail "publishing the $n_flow records failed: $(cat "$work/publish.out")"
caught_up
python3 "$records" db-check "$db" "$work/flow.jsonl" || fail "records lost or wrong after kill -9"
assert_eq "$n_flow" "$(committed)" "rows after three kill -9"
"$bin/topic-dump" --topic "$changes_topic" --type changes --until-end --timeout-ms 240000 >"$work/changes1.dump"
python3 "$records" changes-check "$work/changes1.dump" "$work/flow.jsonl" ||
	fail "committed rows missing from changes.v1 after kill -9"

# --- 4. PostgreSQL stopped for 10 s mid-stream -------------------------------------------------
python3 "$records" gen "$n_outage" 4 "$n_flow" >"$work/outage.jsonl"
wait_for 60 "catalyst-persist to be ready" is_ready "$p"
# a steady stream across the outage: 20 slices, one a second
split -l $((n_outage / 20)) "$work/outage.jsonl" "$work/outage.part."
(for f in "$work"/outage.part.*; do "$bin/catalyst-publish" write "$f" >/dev/null || exit 1; sleep 1; done) &
publisher=$!
pids+=("$publisher")
wait_for 120 "progress before the outage" rows_at_least $((n_flow + n_outage / 10))
"$CATALYST_SOURCE_DIR/scripts/stack" stop-service pg-primary >/dev/null
wait_for 30 "readiness to drop while PostgreSQL is down" not_ready "$p"
sleep 10
kill -0 "$persist_pid" || fail "catalyst-persist exited while PostgreSQL was down: $(tail -3 "$work/run4.log")"
"$CATALYST_SOURCE_DIR/scripts/stack" start-service pg-primary >/dev/null
wait_for 120 "readiness after PostgreSQL returned" is_ready "$p"
wait "$publisher" || fail "publishing during the outage failed"
caught_up
kill -0 "$persist_pid" || fail "catalyst-persist exited after the outage"
reconnects=$(curl -s "http://127.0.0.1:$p/metrics" | awk '$1 == "catalyst_persist_pg_reconnects_total" { print $2 }')
(( reconnects >= 1 )) || fail "the lost primary connection was not counted as a reconnect"
python3 "$records" db-check "$db" "$work/flow.jsonl" "$work/outage.jsonl" || fail "records lost around the outage"

# --- 6. two workers share the partitions; kill -9 of one ------------------------------------------
first=$persist_pid
q=$(free_port)
start_persist second "$q"
second=$persist_pid
# the group rebalances: each ends up with a share
wait_for 60 "both workers to hold partitions" bash -c "
	for port in $p $q; do
		curl -s http://127.0.0.1:\$port/metrics | grep -q '^catalyst_assigned_partitions [1-9]' || exit 1
	done"
python3 "$records" gen "$n_shared" 6 $((n_flow + n_outage)) >"$work/shared.jsonl"
"$bin/catalyst-publish" write "$work/shared.jsonl" >/dev/null
wait_for 120 "progress with two workers" rows_at_least $((n_flow + n_outage + n_shared / 4))
kill -9 "$second"
wait "$second" 2>/dev/null || true
caught_up
python3 "$records" db-check "$db" "$work/flow.jsonl" "$work/outage.jsonl" "$work/shared.jsonl" ||
	fail "records lost after one of two workers was killed"

# --- 7. SIGTERM under load -------------------------------------------------------------------------
python3 "$records" gen "$n_term" 7 $((n_flow + n_outage + n_shared)) >"$work/term.jsonl"
"$bin/catalyst-publish" write "$work/term.jsonl" >/dev/null
wait_for 120 "load before SIGTERM" rows_at_least $((n_flow + n_outage + n_shared + n_term / 6))
start=$(date +%s%N)
kill -TERM "$first"
wait "$first" || fail "catalyst-persist did not exit 0 on SIGTERM"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
# a bound, not a benchmark: the grace period plus leaving the group
((elapsed_ms < CATALYST_SHUTDOWN_GRACE_MS + 15000)) || fail "SIGTERM exit took ${elapsed_ms} ms"
"$bin/topic-dump" --topic "$changes_topic" --type changes --until-end --timeout-ms 240000 >"$work/before.dump"
start_persist after-term "$p"
caught_up
"$bin/topic-dump" --topic "$changes_topic" --type changes --until-end --timeout-ms 240000 >"$work/after.dump"
python3 "$records" db-check "$db" "$work/flow.jsonl" "$work/outage.jsonl" "$work/shared.jsonl" "$work/term.jsonl" ||
	fail "records lost across SIGTERM"
# changes published after the restart for commands already published before it:
# at most one batch was in flight
again=$(python3 - "$work/before.dump" "$work/after.dump" <<'PY'
import collections, json, sys
def ids(path):
    return collections.Counter(json.loads(l)["command_id"] for l in open(path))
before, after = ids(sys.argv[1]), ids(sys.argv[2])
print(sum(after[c] - n for c, n in before.items() if after[c] > n))
PY
)
echo "commands applied again after the SIGTERM restart: $again"
((again <= CATALYST_BATCH_SIZE)) || fail "$again commands applied twice after a clean SIGTERM (batch size $CATALYST_BATCH_SIZE)"
kill -TERM "$persist_pid"
wait "$persist_pid" || fail "catalyst-persist did not exit 0"
echo "ok: catalyst-persist faults"
