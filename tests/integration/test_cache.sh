#!/usr/bin/env bash
# catalyst-cache against the real broker, Redis and a scratch database, fed
# by catalyst-persist as in production (write.v1 -> primary -> changes.v1 ->
# cache), on topics and a Redis database of its own: bad configuration and
# refused credentials in one line without the password; after 50,000
# committed writes every news:{id} (and signal, trade, source) equals its
# row, every symbol set holds exactly its ids, TTLs set; older versions
# after newer ones leave the newer; deletes remove keys and set members and
# older upserts do not bring them back; cache.v1 set (version-checked or
# not), delete, an oversize value dead-lettered with its reason; invalidate
# candidates:* among 100,000 keys removes exactly the matching keys; a
# candidate change removes candidates:top:*; warm market-open caches exactly
# the rows of the seed's two queries; SIGTERM -> 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
cache=$bin/catalyst-cache
persist=$bin/catalyst-persist
records=$here/records.py
check=$here/cache_check.py
[[ -x $cache && -x $persist ]] || fail "catalyst-cache or catalyst-persist not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.cache.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-cache-test-$$" CATALYST_CACHE_GROUP="catalyst-cache-test-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_CACHE_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_BATCH_SIZE=500 CATALYST_COMMIT_INTERVAL_MS=200
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
# a Redis database of this test's own; cache.v1 may also touch custom:* keys;
# no self-heal (a FLUSHDB below precedes a market-open warm whose keys are
# checked exactly; tests/fault/test_cache_heal.sh tests the self-heal)
export CATALYST_REDIS_URL="${CATALYST_REDIS_URL%/*}/3"
export CATALYST_CACHE_KEY_NAMESPACE=custom: CATALYST_CACHE_HEAL_CHECK_MS=0
redis_password=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.unquote(urllib.parse.urlparse(sys.argv[1]).password or ""))' \
	"$CATALYST_REDIS_URL")
rcall() { python3 "$check" redis "$CATALYST_REDIS_URL" "$@"; }
rcall FLUSHDB >/dev/null
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "cache_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

# --- bad configuration, refused credentials: one line, no password -----------------------
run env -u CATALYST_REDIS_URL "$cache"
assert_eq 2 "$rc" "without CATALYST_REDIS_URL"
assert_eq "catalyst-cache: CATALYST_REDIS_URL: required but not set" "$err" "its error"
for bad in "CATALYST_REDIS_URL=redis://:hunter2@h:99999" CATALYST_REDIS_URL=http://h CATALYST_CACHE_NEWS_TTL_S=-1 \
	CATALYST_CACHE_PORT=70000 CATALYST_REDIS_TLS_VERIFY=maybe CATALYST_CACHE_MAX_VALUE_BYTES=1; do
	run env "$bad" "$cache"
	assert_eq 2 "$rc" "$bad"
	assert_eq 1 "$(error_lines "$err")" "one line for $bad: $err"
	assert_contains "$err" "catalyst-cache: ${bad%%=*}: " "the error for $bad"
	assert_not_contains "$err" "hunter2" "the error for $bad"
done
run env CATALYST_CACHE_TOP_LIMITS=5,x "$cache"
assert_eq 2 "$rc" "bad CATALYST_CACHE_TOP_LIMITS"
assert_eq 1 "$(error_lines "$err")" "one line for a bad CATALYST_CACHE_TOP_LIMITS: $err"
assert_contains "$err" "catalyst-cache: CATALYST_CACHE_TOP_LIMITS: " "its error"
run "$cache" --help
assert_eq 0 "$rc" "--help"
for name in CATALYST_REDIS_URL CATALYST_REDIS_PASSWORD CATALYST_REDIS_TLS_CA_FILE CATALYST_CACHE_NEWS_TTL_S \
	CATALYST_CACHE_ACTIVE_TTL_S CATALYST_CACHE_MAX_VALUE_BYTES CATALYST_CACHE_PORT; do
	assert_contains "$out" "$name" "--help"
done
run env CATALYST_REDIS_PASSWORD="wrong-pw-$RANDOM" "$cache"
assert_eq 1 "$rc" "with a wrong Redis password"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "could not log in to redis://default@127.0.0.1:"
assert_not_contains "$err" "wrong-pw-" "the error"
assert_not_contains "$err" "$redis_password" "the error"

# --- the pipeline: persist, then cache ---------------------------------------------------------
pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
"$persist" 2>"$work/persist.log" &
pids+=($!)
"$cache" 2>"$work/cache.log" &
cache_pid=$!
pids+=("$cache_pid")
wait_for 30 "catalyst-cache to listen" grep -q '"port":' "$work/cache.log"
base="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$work/cache.log" | head -1 | cut -d: -f2)"
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/readyz") == 200 ]]; }
wait_for 60 "catalyst-cache to be ready" ready
metric() { # metric NAME_WITH_LABELS: its value on /metrics (0 when absent)
	curl -s "$base/metrics" | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
caught_up() { # every offset of write.v1 (persist) and changes.v1, cache.v1 (cache) committed
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" \
		--wait-ms 180000 >/dev/null || fail "catalyst-persist did not catch up: $(tail -3 "$work/persist.log")"
	for t in changes.v1 cache.v1; do
		"$bin/group-lag" --group "$CATALYST_CACHE_GROUP" --topic "$CATALYST_TOPIC_PREFIX$t" --wait-ms 180000 \
			>/dev/null || fail "catalyst-cache did not catch up on $t: $(tail -3 "$work/cache.log")"
	done
}
publish() {
	run "$bin/catalyst-publish" write "$1"
	assert_eq 0 "$rc" "publishing $1: $err"
}
publish_cache() {
	run "$bin/catalyst-publish" cache "$@"
	assert_eq 0 "$rc" "catalyst-publish cache $*: $err"
}
layout_check() {
	python3 "$check" layout "$db" "$CATALYST_REDIS_URL" >"$work/layout.out" 2>&1 ||
		fail "the cache is not the database after $1: $(cat "$work/layout.out")"
}

# --- 1. 50,000 committed writes: every key equals its row, sets exact, TTLs -----------
python3 "$records" gen 50000 42 >"$work/base.jsonl"
publish "$work/base.jsonl"
caught_up
layout_check "50,000 writes"
assert_contains "$(cat "$work/layout.out")" "news_raw: 10000 rows cached"
assert_eq 10000 "$(metric 'catalyst_cache_changes_total{table="news_raw",result="applied"}')" "news applied"
news_ttl=$(rcall TTL news:news-0)
((news_ttl > 3500 && news_ttl <= 3600)) || fail "news:news-0 TTL $news_ttl, not about 3600"
(($(metric catalyst_cache_redis_commands_total) < 50000)) || fail "not pipelined: one command per change"

# --- 2. older versions after newer ones leave the newer; deletes; stale upserts -------------
# (persist skips them and publishes nothing: changes.v1 carries only what the primary holds)
signals_applied=$(metric 'catalyst_cache_changes_total{table="trading_signals",result="applied"}')
python3 "$records" derive older "$work/base.jsonl" >"$work/older.jsonl"
publish "$work/older.jsonl"
caught_up
layout_check "older versions"
assert_eq "$signals_applied" "$(metric 'catalyst_cache_changes_total{table="trading_signals",result="applied"}')" \
	"signals applied to the cache after older versions only"
for kind in deletes stale revive; do
	python3 "$records" derive "$kind" "$work/base.jsonl" >"$work/$kind.jsonl"
	publish "$work/$kind.jsonl"
	caught_up
	layout_check "$kind"
done
deleted=$(python3 -c 'import json,sys; print(next(json.loads(l)["news_id"] for l in open(sys.argv[1]) if "news_id" in l))' \
	"$work/deletes.jsonl")
assert_contains "$(rcall GET "news:$deleted#v")" "d" "the tombstone of news:$deleted"

# --- a row that changes symbol (twice in one batch, then again), with text that looks like the ----
# --- "version" and "symbol" keys of its JSON (escaped, so never taken for them) ---------------------
python3 -c '
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if "signal_id" in l)
r.update(signal_id="sig-moving", candidate_id="x\"version\":99999999999999999,\"symbol\":\"ZZZ",
         command_id="moving-1", symbol="MOVA", version=1780000000000000)
print(json.dumps(r))
r.update(command_id="moving-2", symbol="MOVB", version=1780000000000001)
print(json.dumps(r))' "$work/base.jsonl" >"$work/moving.jsonl"
publish "$work/moving.jsonl"
caught_up
sed -e 's/moving-2/moving-3/' -e 's/MOVB/MOVC/' -e 's/1780000000000001/1780000000000002/' "$work/moving.jsonl" |
	tail -1 >"$work/moving2.jsonl"
publish "$work/moving2.jsonl"
caught_up
layout_check "symbol changes"
assert_eq "MOVC" "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["symbol"])' "$(rcall GET signals:sig-moving)")" \
	"the moved signal's symbol"
assert_eq "0" "$(rcall SISMEMBER signals:symbol:MOVB sig-moving)" "the moved signal in its old set"
assert_eq "1" "$(rcall SISMEMBER signals:symbol:MOVC sig-moving)" "the moved signal in its new set"

# --- cache.v1 set / delete, version-checked -------------------------------------------------------
publish_cache set --version 5 --ttl 600 "custom:k" "five"
publish_cache set --version 3 --ttl 600 "custom:k" "three"
publish_cache set --ttl 600 "custom:plain" "plain"
publish_cache set "custom:gone" "x"
publish_cache delete "custom:gone"
caught_up
assert_eq "five" "$(rcall GET custom:k)" "a versioned set after a newer one"
assert_eq "plain" "$(rcall GET custom:plain)" "an unversioned set"
assert_eq "" "$(rcall GET custom:gone)" "a deleted key"
((600 >= $(rcall TTL custom:k))) || fail "custom:k has no TTL"

# --- a value too large to cache: dead-lettered with the reason ------------------------------
head -c 300000 /dev/zero | tr '\0' 'x' >"$work/big"
run "$bin/catalyst-publish" cache set "custom:big" - <"$work/big"
assert_eq 0 "$rc" "publishing a big value: $err"
caught_up
assert_eq "" "$(rcall GET custom:big)" "the oversize value"
run "$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count 1 --timeout-ms 20000
assert_contains "$out" "larger than CATALYST_CACHE_MAX_VALUE_BYTES (262144)" "the dead letter's reason"
assert_contains "$out" "cache.v1" "the dead letter's source topic"
assert_eq 1 "$(metric catalyst_cache_uncacheable_total)" "uncacheable values"

# --- a candidate change removes candidates:top:* and candidates:active --------------------------
publish_cache set --ttl 300 "candidates:top:7" "[]"
publish_cache set --ttl 300 "candidates:top:5" "[]"
caught_up
assert_eq "[]" "$(rcall GET candidates:top:7)" "candidates:top:7 before"
python3 -c '
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][1]
r.update(version=r["version"] + 100000, command_id="candidate-change", catalyst_score=0.5)
print(json.dumps(r))' "$work/base.jsonl" >"$work/candidate.jsonl"
publish "$work/candidate.jsonl"
caught_up
assert_eq "" "$(rcall GET candidates:top:7)" "candidates:top:7 after a candidate change"
assert_eq "" "$(rcall GET candidates:top:5)" "candidates:top:5 after a candidate change"

# --- 3. invalidate candidates:* among 100,000 keys: exactly the matching ones go ----------------
rcall EVAL "for i = 1, 50000 do redis.call('SET', 'candidates:bulk:' .. i, i) end
	for i = 1, 25000 do redis.call('SET', 'candidatesx:' .. i, i) redis.call('SET', 'bulk:candidates:' .. i, i) end" 0 \
	>/dev/null
total_before=$(rcall DBSIZE)
matching_before=$(python3 -c "
import sys; sys.path.insert(0, '$here'); import cache_check
print(len(cache_check.Redis('$CATALYST_REDIS_URL').scan('candidates:*')))")
((matching_before >= 50000 && total_before - matching_before >= 50000)) ||
	fail "set-up: $matching_before matching keys of $total_before"
publish_cache invalidate 'candidates:*'
caught_up
matching_after=$(python3 -c "
import sys; sys.path.insert(0, '$here'); import cache_check
print(len(cache_check.Redis('$CATALYST_REDIS_URL').scan('candidates:*')))")
assert_eq 0 "$matching_after" "keys matching candidates:* after the invalidation"
assert_eq "$((total_before - matching_before))" "$(rcall DBSIZE)" "keys left"
assert_eq 1 "$(rcall EXISTS candidatesx:1)" "a key not matching"
layout_check "the invalidation"

# --- 6. warm market-open: exactly the rows of the seed's two queries -----------------------------
python3 - "$work/now.jsonl" <<'PY'
import datetime, json, random, sys
rng = random.Random(6)
now = datetime.datetime.now(datetime.timezone.utc)
def at(hours):  # now - hours, away from the 1 h and 4 h boundaries
    while True:
        h = rng.uniform(0, hours)
        if min(abs(h - 1), abs(h - 4)) > 0.05:
            return (now - datetime.timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
with open(sys.argv[1], "w") as out:
    for i in range(300):
        out.write(json.dumps({"table": "news_raw", "news_id": f"warm-news-{i}", "symbol": "W" + str(i % 7),
            "headline": f"pre-market {i}", "source": "reuters", "url": f"https://example.com/w/{i}",
            "published_timestamp": at(6), "collected_timestamp": at(6), "content_snippet": "s",
            "sentiment_score": rng.uniform(-1, 1), "catalyst_score": rng.random(),
            "is_pre_market": rng.random() < 0.6, "source_tier": 2, "confirmation_status": "confirmed",
            "narrative_cluster_id": "w", "version": 1}) + "\n")
    for i in range(120):
        out.write(json.dumps({"table": "trading_candidates", "candidate_id": f"warm-cand-{i}", "symbol": "W",
            "selection_timestamp": at(2), "catalyst_score": rng.random(), "technical_score": rng.random(),
            "combined_score": rng.random(), "primary_catalyst": "earnings", "news_count": i,
            "traded": rng.random() < 0.4, "version": 1}) + "\n")
PY
publish "$work/now.jsonl"
caught_up
rcall FLUSHDB >/dev/null
python3 "$check" warm-expect "$db" >"$work/before.json"
publish_cache warm market-open
caught_up
python3 "$check" warm "$db" "$CATALYST_REDIS_URL" "$work/before.json" >"$work/warm.out" 2>&1 ||
	fail "warm market-open: $(cat "$work/warm.out")"
assert_contains "$(cat "$work/warm.out")" "warm: 100 news"
(($(metric 'catalyst_cache_warm_rows_total{profile="market_open"}') >= 100)) || fail "warm rows not counted"

# --- metrics and shutdown --------------------------------------------------------------------------
for name in catalyst_cache_redis_commands_total catalyst_cache_pipeline_depth_count \
	catalyst_cache_redis_roundtrip_seconds_count catalyst_cache_script_reloads_total; do
	assert_contains "$(curl -s "$base/metrics")" "$name" "/metrics"
done
kill -TERM "$cache_pid"
wait "$cache_pid" || fail "catalyst-cache did not exit 0 on SIGTERM"
assert_not_contains "$(cat "$work/cache.log")" "$redis_password" "the log"
echo "ok: catalyst-cache"
