#!/usr/bin/env bash
# changes.v1 carries only what the primary holds: stale and current versions
# interleaved while Redis is restarted empty and cached keys go away (as TTL
# expiry or eviction would take them), on the real stack (catalyst-persist
# and catalyst-cache, topics, a scratch database and a Redis database of its
# own). Afterwards, for every key, the cache holds the primary's version or
# nothing; never an older one, never a row the primary does not hold. And
# on changes.v1 itself, no record of a version the primary did not hold.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
check=$CATALYST_SOURCE_DIR/tests/integration/cache_check.py
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.chprimary.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-chprimary-$$" CATALYST_CACHE_GROUP="catalyst-cache-chprimary-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_PORT=0 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_BATCH_SIZE=200 CATALYST_COMMIT_INTERVAL_MS=300
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_REDIS_CONNECT_TIMEOUT_MS=1000 CATALYST_REDIS_TIMEOUT_MS=2000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_REDIS_URL="${CATALYST_REDIS_URL%/*}/6"
rcall() { python3 "$check" redis "$CATALYST_REDIS_URL" "$@"; }
on_exit "'$CATALYST_SOURCE_DIR/scripts/stack' start-service redis >/dev/null 2>&1 || true"
rcall FLUSHDB >/dev/null
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "chprimary_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
pids+=($!)
"$bin/catalyst-cache" 2>"$work/cache.log" &
pids+=($!)
caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" \
		--wait-ms 180000 >/dev/null || fail "catalyst-persist did not catch up"
	"$bin/group-lag" --group "$CATALYST_CACHE_GROUP" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" \
		--wait-ms 180000 >/dev/null || fail "catalyst-cache did not catch up"
}

# the current rows first, all cached
n=$(scaled 8000)
python3 "$records" gen "$n" 21 >"$work/base.jsonl"
python3 "$records" derive older "$work/base.jsonl" >"$work/older.jsonl"
python3 "$records" derive deletes "$work/base.jsonl" >"$work/deletes.jsonl"
python3 "$records" derive stale "$work/base.jsonl" >"$work/stale.jsonl"
python3 "$records" derive revive "$work/base.jsonl" >"$work/revive.jsonl"
"$bin/catalyst-publish" write "$work/base.jsonl" >/dev/null
caught_up
python3 "$check" not-older "$db" "$CATALYST_REDIS_URL" || fail "the cache differs from the primary before the faults"

# then stale versions (1000 older), deletes, upserts older than those
# deletes, revivals and the stale versions again, interleaved, in slices;
# Redis restarted empty after the first slice, cached keys dropped at random
# after the others
python3 - "$work" <<'PY'
import random, sys
w = sys.argv[1]
rng = random.Random(5)
older = open(f"{w}/older.jsonl").readlines()
rest = open(f"{w}/deletes.jsonl").readlines() + open(f"{w}/stale.jsonl").readlines()
rng.shuffle(older)
lines = older[: len(older) // 2] + sorted(rest, key=lambda _: rng.random() < 0.5) \
    + open(f"{w}/revive.jsonl").readlines() + older[len(older) // 2:]
with open(f"{w}/mixed.jsonl", "w") as f:
    f.writelines(lines)
PY
split -l $(($(wc -l <"$work/mixed.jsonl") / 6 + 1)) -d "$work/mixed.jsonl" "$work/mixed."
first=1
for f in "$work"/mixed.[0-9]*; do
	"$bin/catalyst-publish" write "$f" >/dev/null || fail "could not publish $f"
	if [[ $first == 1 ]]; then
		env -u CATALYST_TOPIC_PREFIX "$CATALYST_SOURCE_DIR/scripts/stack" restart-service redis >/dev/null
		first=0
	else
		# what expiry or eviction would take: a few hundred cached keys
		mapfile -t gone < <(rcall SCAN 0 MATCH 'news:*' COUNT 400 | tail -n +2 | head -200)
		((${#gone[@]} == 0)) || rcall DEL "${gone[@]}" >/dev/null
	fi
	sleep 1
done
caught_up
python3 "$check" not-older "$db" "$CATALYST_REDIS_URL" ||
	fail "the cache holds versions the primary does not (changes.v1 carried older records)"

# changes.v1 itself: after the base rows, every record is of a version the
# primary held when it went out, so none is older than a key's base version
# unless the key was deleted and revived
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" --type changes --until-end --timeout-ms 120000 \
	>"$work/changes.dump" || fail "could not read changes.v1"
python3 - "$work/changes.dump" "$work/base.jsonl" <<'PY'
import json, sys
sys.path.insert(0, "")
pks = {"news_raw": "news_id", "trading_candidates": "candidate_id", "trading_signals": "signal_id",
       "trade_records": "trade_id", "source_metrics": "source_name"}
base = {}
for line in open(sys.argv[2]):
    w = json.loads(line)
    base[(w["table"], w[pks[w["table"]]])] = int(w["version"])
bad = 0
n = 0
for line in open(sys.argv[1]):
    c = json.loads(line)
    rec = c["record"]
    key = (rec["table"], rec[pks[rec["table"]]])
    n += 1
    if key in base and int(rec["version"]) < base[key]:
        bad += 1
        if bad <= 5:
            print(f"changes.v1 carried {key} at version {rec['version']} ({c['op']}), older than the "
                  f"primary's {base[key]}", file=sys.stderr)
if bad:
    sys.exit(f"{bad} changes of versions older than what the primary held")
print(f"changes.v1: {n} changes, none older than what the primary held")
PY
echo "ok: the cache never older than the primary, changes.v1 only what the primary held"
