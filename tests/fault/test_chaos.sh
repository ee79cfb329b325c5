#!/usr/bin/env bash
# Chaos: a generated trading day through the whole write path while
# everything that can fail does, on the real stack (catalyst-persist,
# -cache and -sync; topics, a scratch primary and replica, a Redis database
# of its own):
#   - the day: every table, several versions per key published out of order
#     (older versions after newer ones), deletes and re-inserts, writes older
#     than a delete, and 1% poison (undecodable bytes, values the schema
#     refuses, symbols too long);
#   - CATALYST_CHAOS_ROUNDS (default 20) rounds, each a SIGKILL of persist,
#     cache or sync at a random instant (restarted after a random pause);
#     in the course of them Redis restarted empty, the replica stopped for a
#     while, the broker restarted: all under load.
# Afterwards, with no manual step (the cache heals itself):
#   - primary = what applying the day's writes one at a time leaves (nothing
#     lost, the highest version wins, no resurrected deletes), computed
#     independently by records.py;
#   - replica = primary, table by table, row by row;
#   - cache = primary for every key the layout defines;
#   - the DLQ holds exactly the poison (each poison message, by its source
#     offset, at least once; nothing else).
# The record count is CATALYST_TEST_SCALE_PCT percent of CATALYST_CHAOS_RECORDS
# (default 12000).
# ctest: label sanitize (the fault test the ASan+UBSan build runs: every fault at once)
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
check=$CATALYST_SOURCE_DIR/tests/integration/cache_check.py
# the stack's own commands see the stack's topic prefix, not this test's
# (a restarted broker would otherwise be asked to create this test's topics
# while it loads its metadata)
stack() { env -u CATALYST_TOPIC_PREFIX "$CATALYST_SOURCE_DIR/scripts/stack" "$@"; }
work=$(mktemp -d)
on_exit "rm -rf '$work'"
rounds=${CATALYST_CHAOS_ROUNDS:-20}
seed=${CATALYST_CHAOS_SEED:-$RANDOM}
RANDOM=$seed
echo "chaos: $rounds rounds, seed $seed (CATALYST_CHAOS_SEED=$seed repeats the choices)"
export CATALYST_TOPIC_PREFIX="test.chaos.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-chaos-$$" CATALYST_CACHE_GROUP="catalyst-cache-chaos-$$"
export CATALYST_REPLICA_NAME="chaos$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_PORT=0 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_SYNC_PORT=0 CATALYST_SYNC_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_BATCH_SIZE=300 CATALYST_COMMIT_INTERVAL_MS=300
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=2000 CATALYST_SHUTDOWN_GRACE_MS=5000
# a killed worker's partitions move on once the group notices
export CATALYST_KAFKA_SESSION_TIMEOUT_MS=6000 CATALYST_KAFKA_HEARTBEAT_INTERVAL_MS=1000
export CATALYST_REDIS_CONNECT_TIMEOUT_MS=1000 CATALYST_REDIS_TIMEOUT_MS=2000 CATALYST_PG_CONNECT_TIMEOUT_S=2
export CATALYST_PUBLISH_TIMEOUT_MS=120000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_REDIS_URL="${CATALYST_REDIS_URL%/*}/7"
sync_group=catalyst-sync-$CATALYST_REPLICA_NAME
# whatever happens, the stack is left running
for s in kafka redis pg-replica; do
	on_exit "stack start-service $s >/dev/null 2>&1 || true"
done
python3 "$check" redis "$CATALYST_REDIS_URL" FLUSHDB >/dev/null
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "chaos_$$"
primary=$SCRATCH_PG_URL
scratch_replica_db "chaos_$$"
replica=$SCRATCH_REPLICA_URL
export CATALYST_PG_URL=$primary CATALYST_REPLICA_URL=$replica
"$bin/catalyst-migrate" up 2>/dev/null
CATALYST_PG_URL=$replica "$bin/catalyst-migrate" up 2>/dev/null

# --- the day ------------------------------------------------------------------------------
n=$(scaled "${CATALYST_CHAOS_RECORDS:-12000}")
python3 "$records" poison "$n" "$seed" 0 >"$work/day.tsv"
grep -v $'^-\twrite\t' "$work/day.tsv" | cut -f1 | sort >"$work/poison.keys"
grep $'^-\twrite\t' "$work/day.tsv" | cut -f3 >"$work/base.jsonl"
for kind in older deletes-keyed stale revive sequences; do
	python3 "$records" derive "$kind" "$work/base.jsonl" >"$work/${kind%-keyed}.jsonl"
done
# in the order published: the base day with its poison, newer then older
# versions, deletes, writes older than those deletes, revivals
files=("$work/day.tsv" "$work/older.jsonl" "$work/deletes.jsonl" "$work/stale.jsonl" "$work/revive.jsonl" \
	"$work/sequences.jsonl")
echo "the day: $(wc -l <"$work/base.jsonl") records, $(wc -l <"$work/poison.keys") poison," \
	"$(cat "$work"/{older,deletes,stale,revive,sequences}.jsonl | wc -l) more writes of the same keys"

# --- the fleet ----------------------------------------------------------------------------
declare -A pid
start() { # start persist|cache|sync
	"$bin/catalyst-$1" 2>>"$work/$1.log" &
	pid[$1]=$!
}
on_exit 'for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
start persist
start cache
start sync

# publishing, in slices, for the whole of the chaos: writes through
# catalyst-publish, the poison file through raw-produce (in file order)
(
	publish() { # publish FILE: again until the broker took all of it (a repeat changes nothing)
		local tool=("$bin/catalyst-publish" write "$1")
		[[ $1 == *.tsv* ]] && tool=("$bin/raw-produce" --topic "${CATALYST_TOPIC_PREFIX}write.v1")
		until "${tool[@]}" <"$1" >>"$work/publish.log" 2>&1; do sleep 1; done
	}
	split -l $(($(wc -l <"$work/day.tsv") / 10 + 1)) -d "$work/day.tsv" "$work/day.tsv."
	for f in "$work"/day.tsv.[0-9]*; do
		publish "$f"
		sleep 0.5
	done
	for f in "${files[@]:1}"; do
		publish "$f"
		sleep 1
	done
) &
publisher=$!
on_exit "kill $publisher 2>/dev/null; true"

# --- the chaos ----------------------------------------------------------------------------
victims=(persist cache sync)
for ((r = 1; r <= rounds; r++)); do
	sleep "$((RANDOM % 3)).$((RANDOM % 10))"
	v=${victims[$((RANDOM % 3))]}
	kill -9 "${pid[$v]}" 2>/dev/null || true
	wait "${pid[$v]}" 2>/dev/null || true
	what="killed $v"
	case $((r % 7)) in
	2)
		stack restart-service redis >/dev/null
		what+=", Redis restarted empty"
		;;
	4)
		stack stop-service pg-replica >/dev/null
		sleep "$((2 + RANDOM % 4))"
		stack start-service pg-replica >/dev/null
		what+=", the replica stopped for a while"
		;;
	6)
		stack restart-service kafka >/dev/null
		what+=", the broker restarted"
		;;
	esac
	sleep "0.$((RANDOM % 10))"
	start "$v"
	echo "round $r: $what"
	for w in persist cache sync; do
		kill -0 "${pid[$w]}" 2>/dev/null || fail "catalyst-$w exited by itself: $(tail -3 "$work/$w.log")"
	done
done
wait "$publisher" || fail "publishing failed: $(tail -3 "$work/publish.log")"

# --- the end state ------------------------------------------------------------------------
lag() { "$bin/group-lag" --group "$1" --topic "${CATALYST_TOPIC_PREFIX}$2" --wait-ms 300000 >/dev/null; }
lag "$CATALYST_PERSIST_GROUP" write.v1 || fail "catalyst-persist did not catch up"
lag "$sync_group" changes.v1 || fail "catalyst-sync did not catch up"
lag "$CATALYST_CACHE_GROUP" changes.v1 || fail "catalyst-cache did not catch up"

python3 "$records" db-check "$primary" "${files[@]}" || fail "the primary differs from the expected rows"
table_dump "$primary" >"$work/primary.dump"
table_dump "$replica" >"$work/replica.dump"
cmp -s "$work/primary.dump" "$work/replica.dump" ||
	fail "the replica differs from the primary: $(diff "$work/primary.dump" "$work/replica.dump" | head -5)"
echo "primary = expected, replica = primary ($(wc -l <"$work/primary.dump") rows)"

# the cache heals itself after the last Redis restart: wait for it, then
# every key of the layout holds the primary's row
cache_ok() { python3 "$check" layout "$primary" "$CATALYST_REDIS_URL" >"$work/layout.out" 2>&1; }
wait_for 180 "the cache to hold every row of the primary: $(tail -3 "$work/layout.out" 2>/dev/null)" cache_ok
echo "cache = primary"

# the DLQ: exactly the poison, each at least once (a kill between a dead
# letter's acknowledgement and its offset's commit sends it twice, and a
# slice published again after a broker restart carries its poison again)
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --until-end --timeout-ms 60000 \
	>"$work/dlq" || fail "could not read dlq.v1"
python3 - "$work/dlq" "$work/poison.keys" <<'PY'
import json, sys
letters = [json.loads(l) for l in open(sys.argv[1])]
poison = set(l.strip() for l in open(sys.argv[2]) if l.strip())
keys = {}
for m in letters:
    h = m["headers"]
    src = (h.get("x-catalyst-source-topic"), h.get("x-catalyst-source-partition"), h.get("x-catalyst-source-offset"))
    keys.setdefault(m.get("key"), set()).add(src)
    if not h.get("x-catalyst-error"):
        sys.exit(f"a dead letter without a reason: {m.get('key')}")
stray = set(keys) - poison
if stray:
    sys.exit(f"{len(stray)} dead letters that are not poison, e.g. {sorted(map(str, stray))[:3]}")
missing = poison - set(keys)
if missing:
    sys.exit(f"{len(missing)} poison messages not dead-lettered, e.g. {sorted(missing)[:3]}")
print(f"dlq: {len(letters)} letters, exactly the {len(poison)} poison messages")
PY
echo "ok: $rounds rounds of chaos, nothing lost, nothing stale, the DLQ exactly the poison"
