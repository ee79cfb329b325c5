#!/usr/bin/env bash
# catalyst-cache heals itself after Redis loses its data, on the real stack
# (topics, a scratch database and a Redis database of its own), fed by
# catalyst-persist; nobody publishes a cache command (no `warm rebuild`):
#   1. the first start on an empty Redis rebuilds (reason data_lost);
#   2. Redis restarted empty (the stack's Redis keeps nothing on disk) while
#      newer versions of half the rows and deletes of others flow: within a
#      bounded time every key the layout defines is back, equal to the
#      primary's row and version (rows the load did not touch included), no
#      stray key: the rebuild, running while changes are applied, wrote no
#      older version over a newer one or a delete;
#   3. FLUSHDB: the same, reason data_lost;
#   4. a sentinel naming another server (a restart from a snapshot, a
#      failover) -> reason restart; an unfinished rebuild -> reason unfinished;
#   5. another worker's lease: this one waits, /readyz says so, no rebuild;
#      the lease gone -> it rebuilds;
#   6. rate limit: with CATALYST_CACHE_REBUILD_MIN_INTERVAL_S=3600 a second
#      loss after a rebuild waits (503 "pending", one rebuild counted, the
#      log says when); SIGTERM while pending -> 0.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
check=$CATALYST_SOURCE_DIR/tests/integration/cache_check.py
stack=$CATALYST_SOURCE_DIR/scripts/stack
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.cheal.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-cheal-$$" CATALYST_CACHE_GROUP="catalyst-cache-cheal-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_BATCH_SIZE=500 CATALYST_COMMIT_INTERVAL_MS=300
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_REDIS_CONNECT_TIMEOUT_MS=1000 CATALYST_REDIS_TIMEOUT_MS=2000
export CATALYST_CACHE_HEAL_CHECK_MS=200 CATALYST_CACHE_REBUILD_MIN_INTERVAL_S=1 CATALYST_CACHE_REBUILD_CHUNK=500
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_REDIS_URL="${CATALYST_REDIS_URL%/*}/6"
rcall() { python3 "$check" redis "$CATALYST_REDIS_URL" "$@"; }
# whatever happens, the stack's Redis is left running
on_exit "'$stack' start-service redis >/dev/null 2>&1 || true"
rcall FLUSHDB >/dev/null
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "cheal_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
pids+=($!)
port=$(free_port)
start_cache() {
	CATALYST_CACHE_PORT=$port "$bin/catalyst-cache" 2>"$work/cache.log" &
	cache_pid=$!
	pids+=("$cache_pid")
}
readyz() { curl -s "http://127.0.0.1:$port/readyz"; }
is_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]]; }
metric() {
	curl -s "http://127.0.0.1:$port/metrics" | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
rebuilds() { metric "catalyst_cache_rebuilds_total{reason=\"$1\"}"; }
rebuilds_reach() { (($(rebuilds "$1") >= $2)); }
rebuild_complete() { [[ $(rcall EXISTS catalyst-cache:unfinished) == 0 ]]; }
persist_caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" \
		--wait-ms 180000 >/dev/null || fail "catalyst-persist did not catch up"
}
cache_caught_up() {
	"$bin/group-lag" --group "$CATALYST_CACHE_GROUP" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" --wait-ms 180000 \
		>/dev/null || fail "catalyst-cache did not catch up: $(tail -3 "$work/cache.log")"
}
publish() {
	run "$bin/catalyst-publish" write "$1"
	assert_eq 0 "$rc" "publishing $1: $err"
}
# the cache equals the primary: every row of the cached tables under its key,
# same version and columns, with a TTL; symbol sets exact; no stray key
layout_ok() { python3 "$check" layout "$db" "$CATALYST_REDIS_URL" >"$work/check.out" 2>&1; }
healed() {
	local deadline=$((SECONDS + $1))
	until layout_ok; do
		((SECONDS < deadline)) ||
			fail "$2: the cache did not equal the primary within $1 s: $(grep -m3 MISMATCH "$work/check.out")"
		sleep 0.5
	done
	kill -0 "$cache_pid" 2>/dev/null || fail "catalyst-cache exited"
}

# --- 1. the first start on an empty Redis ------------------------------------------------------
start_cache
wait_for 60 "catalyst-cache to be ready" is_ready
wait_for 30 "the first rebuild" rebuilds_reach data_lost 1
assert_eq 1 "$(rcall EXISTS catalyst-cache:sentinel)" "the sentinel"
python3 "$records" gen 10000 11 >"$work/before.jsonl"
publish "$work/before.jsonl"
persist_caught_up
cache_caught_up
layout_ok || fail "before the faults: $(cat "$work/check.out")"

# the load: newer versions of the even rows (not news_raw: insert-only), six
# times; deletes of every 14th odd row. The other odd rows are never written
# again: after the restart only a rebuild brings them back.
python3 - "$work" "$CATALYST_SOURCE_DIR/tests/integration" <<'EOF'
import json, sys
work = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import records
base = [json.loads(l) for l in open(f"{work}/before.jsonl") if l.strip()]
for k in range(1, 7):
    with open(f"{work}/bump.{k}.jsonl", "w") as f:
        for n, r in enumerate(base):
            if n % 2 == 0 and r["table"] != "news_raw":
                f.write(json.dumps(dict(r, version=r["version"] + k * 1000,
                                        command_id=f"{r['command_id']}-bump{k}")) + "\n")
with open(f"{work}/deletes.jsonl", "w") as f:
    for n, r in enumerate(base):
        if n % 14 == 1:
            f.write(json.dumps({"table": r["table"], "op": "delete", records.TABLES[r["table"]]: records.pk_of(r),
                                "version": r["version"] + 10, "command_id": f"{r['command_id']}-delete"}) + "\n")
EOF

# --- 2. Redis restarted empty under load ------------------------------------------------------------
(
	for k in 1 2 3; do
		"$bin/catalyst-publish" write "$work/bump.$k.jsonl" || exit 1
		sleep 0.5
	done
	"$bin/catalyst-publish" write "$work/deletes.jsonl" || exit 1
	for k in 4 5 6; do
		"$bin/catalyst-publish" write "$work/bump.$k.jsonl" || exit 1
		sleep 0.5
	done
) 2>"$work/load.err" &
loader=$!
sleep 1
"$stack" stop-service redis >/dev/null
sleep 2
"$stack" start-service redis >/dev/null
wait "$loader" || fail "the load: $(cat "$work/load.err")"
persist_caught_up
cache_caught_up
healed 120 "after the restart"
rebuilds_reach data_lost 2 || fail "the rebuild after the restart was not counted: $(rebuilds data_lost)"
assert_contains "$(cat "$work/cache.log")" "rebuilding from the primary" "the log"
assert_contains "$(cat "$work/check.out")" "trading_signals: " "the check"
wait_for 30 "catalyst-cache to be ready after the rebuild" is_ready

# --- 3. FLUSHDB ----------------------------------------------------------------------------------------
before=$(rebuilds data_lost)
rcall FLUSHDB >/dev/null
healed 120 "after FLUSHDB"
rebuilds_reach data_lost $((before + 1)) || fail "the rebuild after FLUSHDB was not counted"

# --- 4. a sentinel of another server; an unfinished rebuild ---------------------------------------------
rcall SET catalyst-cache:sentinel 0000000000000000000000000000000000000000 >/dev/null
wait_for 60 "a rebuild for a restart" rebuilds_reach restart 1
wait_for 60 "the rebuild to complete" rebuild_complete
rcall SET catalyst-cache:unfinished data_lost >/dev/null
wait_for 60 "a rebuild for an unfinished one" rebuilds_reach unfinished 1
wait_for 60 "the unfinished mark to go" rebuild_complete
healed 60 "after the unfinished rebuild"
# a rebuild writes with the rows' versions: a newer value (a change applied
# after the rebuild's snapshot) and a delete's tombstone stay as they are
read -r newer_key gone_key < <(python3 - "$work/before.jsonl" <<'EOF'
import json, sys
base = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
trades = [r for n, r in enumerate(base) if r["table"] == "trade_records" and n % 14 != 1]
print(f"trades:{trades[0]['trade_id']} trades:{trades[1]['trade_id']}")
EOF
)
version_of() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])["version"])' "$(rcall GET "$1")"; }
newer=$(python3 -c 'import json, sys
r = json.loads(sys.argv[1])
r["version"] += 1
r["exit_reason"] = "newer than the primary"
print(json.dumps(r, separators=(",", ":")))' "$(rcall GET "$newer_key")")
gone_version=$(version_of "$gone_key")
wait_for 60 "the rebuild to complete" rebuild_complete
rcall SET "$newer_key" "$newer" EX 3600 >/dev/null
rcall UNLINK "$gone_key" >/dev/null
rcall SET "$gone_key#v" "d$((gone_version + 1))" EX 3600 >/dev/null
rcall SET catalyst-cache:sentinel 0000000000000000000000000000000000000000 >/dev/null
wait_for 60 "a second rebuild for a restart" rebuilds_reach restart 2
wait_for 60 "the rebuild to complete" rebuild_complete
assert_eq "$newer" "$(rcall GET "$newer_key")" "a value newer than the rebuild's row"
assert_eq "" "$(rcall GET "$gone_key")" "a key deleted after the rebuild's snapshot"

# --- 5. another worker holds the lease -------------------------------------------------------------------
before=$(rebuilds data_lost)
rcall SET catalyst-cache:rebuilder other-worker PX 600000 >/dev/null
rcall UNLINK catalyst-cache:sentinel >/dev/null
wait_for 30 "/readyz to name the other rebuilder" eval '[[ $(readyz) == *"another catalyst-cache is rebuilding"* ]]'
assert_eq "$before" "$(rebuilds data_lost)" "rebuilds while another worker holds the lease"
rcall UNLINK catalyst-cache:rebuilder >/dev/null
wait_for 60 "the rebuild once the lease is gone" rebuilds_reach data_lost $((before + 1))
wait_for 30 "catalyst-cache to be ready" is_ready

# --- 6. the rate limit -------------------------------------------------------------------------------------
kill -TERM "$cache_pid"
wait "$cache_pid" || fail "catalyst-cache did not exit 0 on SIGTERM"
export CATALYST_CACHE_REBUILD_MIN_INTERVAL_S=3600
start_cache
wait_for 60 "catalyst-cache to be ready" is_ready
assert_eq 0 "$(rebuilds data_lost)" "rebuilds at a start on a Redis that holds the data"
rcall FLUSHDB >/dev/null
healed 120 "after FLUSHDB, rate-limited"
assert_eq 1 "$(rebuilds data_lost)" "the first rebuild"
rcall FLUSHDB >/dev/null
wait_for 30 "/readyz to say a rebuild is pending" eval '[[ $(readyz) == *"rebuild from the primary pending"* ]]'
assert_eq 1 "$(rebuilds data_lost)" "rebuilds within CATALYST_CACHE_REBUILD_MIN_INTERVAL_S"
assert_contains "$(cat "$work/cache.log")" "the next rebuild may start in" "the log"
kill -TERM "$cache_pid"
wait "$cache_pid" || fail "catalyst-cache did not exit 0 on SIGTERM while a rebuild was pending"
echo "ok: catalyst-cache heals itself"
