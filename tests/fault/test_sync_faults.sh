#!/usr/bin/env bash
# catalyst-sync under a replica outage, on the real stack (topics and scratch
# databases of its own): writes flow through catalyst-persist while the
# replica server is stopped for 10 s; catalyst-sync reports not ready, retries
# with backoff, never exits, skips nothing, and once the replica is back the
# replica equals the primary again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$here/../integration/records.py
[[ -x $bin/catalyst-sync ]] || fail "catalyst-sync not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.syncfault.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-syncfault-$$"
export CATALYST_REPLICA_NAME="syncfault$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_SYNC_PORT=0 CATALYST_SYNC_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_COMMIT_INTERVAL_MS=200 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_PG_CONNECT_TIMEOUT_S=2
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
sync_group=catalyst-sync-$CATALYST_REPLICA_NAME
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create

scratch_db "syncfault_$$"
primary=$SCRATCH_PG_URL
scratch_replica_db "syncfault_$$"
replica=$SCRATCH_REPLICA_URL
export CATALYST_PG_URL=$primary
"$bin/catalyst-migrate" up 2>/dev/null
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null
export CATALYST_REPLICA_URL=$replica
on_exit "'$CATALYST_SOURCE_DIR/scripts/stack' start-service pg-replica >/dev/null 2>&1 || true"

persist_pid= sync_pid=
on_exit '[[ -z $persist_pid ]] || kill -9 "$persist_pid" 2>/dev/null; [[ -z $sync_pid ]] || kill -9 "$sync_pid" 2>/dev/null; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
persist_pid=$!
"$bin/catalyst-sync" 2>"$work/sync.log" &
sync_pid=$!
wait_for 30 "catalyst-sync to listen" grep -q '"port":' "$work/sync.log"
base="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$work/sync.log" | head -1 | cut -d: -f2)"
http_code() { curl -s -o /dev/null -w '%{http_code}' "$base/$1"; }
is_ready() { [[ $(http_code readyz) == 200 ]]; }
not_ready() { [[ $(http_code readyz) == 503 ]]; }
wait_for 60 "catalyst-sync to be ready" is_ready

table_dump() {
	psql_at "$1" "
		COPY (SELECT * FROM news_raw ORDER BY news_id) TO STDOUT;
		COPY (SELECT * FROM trading_candidates ORDER BY candidate_id) TO STDOUT;
		COPY (SELECT * FROM trading_signals ORDER BY signal_id) TO STDOUT;
		COPY (SELECT * FROM trade_records ORDER BY trade_id) TO STDOUT;
		COPY (SELECT * FROM source_metrics ORDER BY source_name) TO STDOUT;
		COPY (SELECT table_name, pk, version FROM row_tombstones ORDER BY 1, 2) TO STDOUT"
}

# writes flowing for ~20 s, paced, while the replica goes away for 10 s
python3 "$records" gen 16000 7 >"$work/base.jsonl"
python3 "$records" derive deletes "$work/base.jsonl" >"$work/deletes.jsonl"
cat "$work/base.jsonl" "$work/deletes.jsonl" >"$work/all.jsonl"
python3 -c '
import sys, time
t0 = time.monotonic()
for i, line in enumerate(sys.stdin):
    d = t0 + i / 900 - time.monotonic()
    if d > 0: time.sleep(d)
    sys.stdout.write(line); sys.stdout.flush()' <"$work/all.jsonl" | "$bin/catalyst-publish" write - >"$work/publish.out" 2>&1 &
publish_pid=$!
on_exit "kill $publish_pid 2>/dev/null; true"
sleep 3
"$CATALYST_SOURCE_DIR/scripts/stack" stop-service pg-replica >/dev/null
down_at=$SECONDS
wait_for 30 "catalyst-sync to report not ready" not_ready
reason=$(curl -s "$base/readyz")
echo "replica down: /readyz says: $reason"
sleep $((10 - (SECONDS - down_at) > 0 ? 10 - (SECONDS - down_at) : 0))
kill -0 "$sync_pid" 2>/dev/null || fail "catalyst-sync exited while the replica was down: $(tail -3 "$work/sync.log")"
"$CATALYST_SOURCE_DIR/scripts/stack" start-service pg-replica >/dev/null
wait "$publish_pid" || fail "publishing: $(cat "$work/publish.out")"
"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" --wait-ms 180000 >/dev/null ||
	fail "catalyst-persist did not catch up"
"$bin/group-lag" --group "$sync_group" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" --wait-ms 180000 >/dev/null ||
	fail "catalyst-sync did not catch up: $(tail -3 "$work/sync.log")"
wait_for 30 "catalyst-sync to be ready again" is_ready
kill -0 "$sync_pid" 2>/dev/null || fail "catalyst-sync exited"
table_dump "$primary" >"$work/primary.dump"
table_dump "$replica" >"$work/replica.dump"
cmp -s "$work/primary.dump" "$work/replica.dump" ||
	fail "the replica differs from the primary: $(diff "$work/primary.dump" "$work/replica.dump" | head -5)"
retries=$(curl -s "$base/metrics" | awk '$1 == "catalyst_retries_total" { print $2 }')
(( retries > 0 )) || fail "no retry counted while the replica was down"
reconnects=$(curl -s "$base/metrics" | awk '$1 == "catalyst_sync_pg_reconnects_total" { print $2 }')
(( reconnects >= 1 )) || fail "the lost replica connection was not counted as a reconnect"
dead=$(curl -s "$base/metrics" | awk '$1 == "catalyst_messages_dead_lettered_total" { print $2 }')
assert_eq 0 "$dead" "messages dead-lettered"
echo "replica back: equal to the primary ($(wc -l <"$work/primary.dump") lines), $retries retries, nothing dead-lettered"
kill -TERM "$sync_pid"
wait "$sync_pid" || fail "catalyst-sync did not exit 0 on SIGTERM"
sync_pid=
echo ok
