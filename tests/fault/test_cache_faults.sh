#!/usr/bin/env bash
# catalyst-cache under faults, on the real stack (topics, a scratch database
# and a Redis database of its own), fed by catalyst-persist:
#   4. Redis stopped for 10 s while changes keep flowing, then started again
#      (empty: the stack's Redis keeps nothing on disk): the worker never
#      exits, drops out of readiness, keeps its group, the primary path does
#      not wait; after catch-up every change published during the outage is
#      in the cache (the scripts the restart lost are loaded again);
#   5. a `rebuild` warm into that empty Redis: every key the layout would
#      hold is back, equal to the database, and the candidates lists exist.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
check=$CATALYST_SOURCE_DIR/tests/integration/cache_check.py
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.cfault.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-cfault-$$" CATALYST_CACHE_GROUP="catalyst-cache-cfault-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_BATCH_SIZE=500 CATALYST_COMMIT_INTERVAL_MS=300
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_REDIS_CONNECT_TIMEOUT_MS=1000 CATALYST_REDIS_TIMEOUT_MS=2000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_REDIS_URL="${CATALYST_REDIS_URL%/*}/4"
# no self-heal: this test shows what the restart lost and the rebuild a
# command runs (tests/fault/test_cache_heal.sh: the self-heal)
export CATALYST_CACHE_HEAL_CHECK_MS=0
rcall() { python3 "$check" redis "$CATALYST_REDIS_URL" "$@"; }
# whatever happens, the stack's Redis is left running
on_exit "'$CATALYST_SOURCE_DIR/scripts/stack' start-service redis >/dev/null 2>&1 || true"
rcall FLUSHDB >/dev/null
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "cfault_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
pids+=($!)
port=$(free_port)
CATALYST_CACHE_PORT=$port "$bin/catalyst-cache" 2>"$work/cache.log" &
cache_pid=$!
pids+=("$cache_pid")
http_code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$1"; }
is_ready() { [[ $(http_code readyz) == 200 ]]; }
not_ready() { [[ $(http_code readyz) == 503 ]]; }
metric() {
	curl -s "http://127.0.0.1:$port/metrics" | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
wait_for 60 "catalyst-cache to be ready" is_ready
persist_caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" \
		--wait-ms "${1:-180000}" >/dev/null
}
cache_caught_up() {
	local t
	for t in changes.v1 cache.v1; do
		"$bin/group-lag" --group "$CATALYST_CACHE_GROUP" --topic "$CATALYST_TOPIC_PREFIX$t" --wait-ms 180000 \
			>/dev/null || fail "catalyst-cache did not catch up on $t: $(tail -3 "$work/cache.log")"
	done
}
publish() {
	run "$bin/catalyst-publish" write "$1"
	assert_eq 0 "$rc" "publishing $1: $err"
}

python3 "$records" gen 10000 11 >"$work/before.jsonl"
publish "$work/before.jsonl"
persist_caught_up || fail "catalyst-persist did not catch up"
cache_caught_up
python3 "$check" layout "$db" "$CATALYST_REDIS_URL" >"$work/check.out" 2>&1 ||
	fail "before the outage: $(cat "$work/check.out")"

# --- 4. Redis down for 10 s while changes flow ---------------------------------------------------
for i in 0 1 2 3 4; do
	python3 "$records" gen 2000 "$((20 + i))" "$((100000 + i * 2000))" >"$work/outage.$i.jsonl"
done
"$CATALYST_SOURCE_DIR/scripts/stack" stop-service redis >/dev/null
down_at=$SECONDS
for i in 0 1 2 3 4; do
	publish "$work/outage.$i.jsonl"
	sleep 1
done
wait_for 20 "catalyst-cache to report not ready" not_ready
# the primary path does not wait on Redis: persist is caught up, the cache is not
persist_caught_up 20000 || fail "catalyst-persist waited on Redis"
lag=$("$bin/group-lag" --group "$CATALYST_CACHE_GROUP" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["lag"])')
((lag > 0)) || fail "the cache group stored offsets while Redis was down (lag $lag)"
while ((SECONDS - down_at < 10)); do sleep 0.5; done
kill -0 "$cache_pid" 2>/dev/null || fail "catalyst-cache exited while Redis was down"
"$CATALYST_SOURCE_DIR/scripts/stack" start-service redis >/dev/null
cache_caught_up
# the restart kept nothing: a key from before the outage is gone
assert_eq 0 "$(rcall EXISTS news:news-0)" "news:news-0 after the Redis restart"
wait_for 30 "catalyst-cache to be ready again" is_ready
kill -0 "$cache_pid" 2>/dev/null || fail "catalyst-cache exited"
python3 "$check" present "$db" "$CATALYST_REDIS_URL" "$work"/outage.*.jsonl >"$work/check.out" 2>&1 ||
	fail "after the outage: $(cat "$work/check.out")"
assert_contains "$(cat "$work/check.out")" "present: 8000 rows checked"
(($(metric catalyst_cache_script_reloads_total) >= 1)) || fail "the scripts were not loaded again"
(($(metric catalyst_cache_redis_reconnects_total) >= 1)) || fail "no reconnect counted"
assert_contains "$(cat "$work/cache.log")" "retrying" "the log during the outage"
grep -q '"msg":"[^"]*revoked' "$work/cache.log" && fail "the worker lost its partitions during the outage"

# --- 5. Redis empty (the outage's keys aside): rebuild from the primary ------------------------------
rcall FLUSHDB >/dev/null
run "$bin/catalyst-publish" cache warm rebuild
assert_eq 0 "$rc" "publishing rebuild: $err"
cache_caught_up
python3 "$check" layout "$db" "$CATALYST_REDIS_URL" >"$work/check.out" 2>&1 ||
	fail "after the rebuild: $(cat "$work/check.out")"
assert_contains "$(cat "$work/check.out")" "news_raw: 4000 rows cached"
for n in 5 10 20 50 100; do
	rcall GET "candidates:top:$n" |
		python3 -c 'import json,sys; v = json.load(sys.stdin); assert isinstance(v, list) and len(v) <= int(sys.argv[1])' \
			"$n" || fail "candidates:top:$n after the rebuild"
done
rcall GET candidates:active | python3 -c 'import json,sys; assert isinstance(json.load(sys.stdin), list)' ||
	fail "candidates:active after the rebuild"
(($(metric 'catalyst_cache_warm_rows_total{profile="rebuild"}') >= 12000)) || fail "rebuild rows not counted"

kill -TERM "$cache_pid"
wait "$cache_pid" || fail "catalyst-cache did not exit 0 on SIGTERM"
echo "ok: catalyst-cache faults"
