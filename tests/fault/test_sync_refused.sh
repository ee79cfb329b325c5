#!/usr/bin/env bash
# catalyst-sync when the replica refuses a change (a CHECK constraint the
# primary does not have), met by a transaction of the applier thread with a
# backlog of batches before and after it: the settle fails, the batches are
# applied again one transaction each in the loop, the refused ChangeBatch is
# dead-lettered exactly once with the replica's reason, every other row
# reaches the replica, and every offset is committed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
[[ -x $bin/catalyst-sync ]] || fail "catalyst-sync not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.syncrefused.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-syncrefused-$$"
export CATALYST_REPLICA_NAME="syncrefused$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_SYNC_PORT=0 CATALYST_SYNC_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_COMMIT_INTERVAL_MS=200 CATALYST_RETRY_BACKOFF_MAX_MS=500
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
sync_group=catalyst-sync-$CATALYST_REPLICA_NAME
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create >/dev/null

scratch_db "syncrefused_$$"
primary=$SCRATCH_PG_URL
scratch_replica_db "syncrefused_$$"
replica=$SCRATCH_REPLICA_URL
export CATALYST_PG_URL=$primary CATALYST_REPLICA_URL=$replica
"$bin/catalyst-migrate" up 2>/dev/null
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null
psql_at "$replica" "ALTER TABLE news_raw ADD CONSTRAINT test_refused CHECK (headline <> 'refused by the replica')"

# news_raw lines FROM TO [HEADLINE]
news() {
	python3 - "$@" <<'PY'
import json, sys
lo, hi = int(sys.argv[1]), int(sys.argv[2])
for i in range(lo, hi):
    print(json.dumps({"table": "news_raw", "news_id": f"refused-{i:06d}", "symbol": "REF",
                      "headline": sys.argv[3] if len(sys.argv) > 3 else f"headline {i}", "source": "reuters",
                      "url": f"https://example.com/{i}", "published_timestamp": "2026-11-27T10:00:00Z",
                      "version": 1700000000000000 + i}))
PY
}

persist_pid= sync_pid=
on_exit '[[ -z $persist_pid ]] || kill -9 "$persist_pid" 2>/dev/null; [[ -z $sync_pid ]] || kill -9 "$sync_pid" 2>/dev/null; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
persist_pid=$!
persisted() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" --wait-ms 120000 \
		>/dev/null || fail "catalyst-persist did not catch up: $(tail -3 "$work/persist.log")"
}
# the refused row in a ChangeBatch of its own, between two backlogs
news 0 3000 | "$bin/catalyst-publish" write - >/dev/null
persisted
news 3000 3001 'refused by the replica' | "$bin/catalyst-publish" write - >/dev/null
persisted
news 3001 6000 | "$bin/catalyst-publish" write - >/dev/null
persisted
kill -TERM "$persist_pid"
wait "$persist_pid" || fail "catalyst-persist did not exit 0"
persist_pid=
assert_eq 6000 "$(psql_at "$primary" "SELECT count(*) FROM news_raw")" "rows on the primary"

# small batches: many transactions in the applier, before and after the refused one
CATALYST_BATCH_SIZE=3 "$bin/catalyst-sync" 2>"$work/sync.log" &
sync_pid=$!
"$bin/group-lag" --group "$sync_group" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" --wait-ms 180000 >/dev/null ||
	fail "catalyst-sync did not commit every offset: $(tail -3 "$work/sync.log")"
kill -0 "$sync_pid" 2>/dev/null || fail "catalyst-sync exited: $(tail -3 "$work/sync.log")"

grep -q 'applying the batches one by one' "$work/sync.log" ||
	fail "the refused transaction did not fail the settle: $(grep -i 'refused\|23514' "$work/sync.log" | tail -3)"
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --until-end --timeout-ms 30000 \
	>"$work/dlq" 2>/dev/null || true
assert_eq 1 "$(lines "$(cat "$work/dlq")")" "dead letters"
grep -q 'test_refused' "$work/dlq" || fail "the dead letter does not give the replica's reason: $(cat "$work/dlq")"
assert_eq 5999 "$(psql_at "$replica" "SELECT count(*) FROM news_raw")" "rows on the replica"
assert_eq 0 "$(psql_at "$replica" "SELECT count(*) FROM news_raw WHERE news_id = 'refused-003000'")" \
	"refused rows on the replica"
echo "refused change dead-lettered once, the other 5999 rows applied, every offset committed"

kill -TERM "$sync_pid"
wait "$sync_pid" || fail "catalyst-sync did not exit 0 on SIGTERM"
sync_pid=
echo ok
