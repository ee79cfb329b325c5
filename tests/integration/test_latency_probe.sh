#!/usr/bin/env bash
# latency-probe and scripts/bench latency, small: bad usage refused with exit
# 2, an observer that cannot start ends the run at once with exit 1; then the bench itself (persist, cache, sync, a private Redis) at a low
# rate for a short while: every write published is observed on the primary,
# in Redis (those the cache keys one by one) and on the replica, and the last
# line is the JSON object with the figures. No timing is asserted.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"

# --- failure paths first -------------------------------------------------------
run "$bin/latency-probe"
assert_eq 2 "$rc" "latency-probe without --input"
assert_contains "$err" "usage: latency-probe --input FILE"
run "$bin/latency-probe" --input /dev/null --watch persist
assert_eq 2 "$rc" "--watch without a pid"
assert_contains "$err" "expected NAME=PID, got persist"
run "$bin/latency-probe" --input "$work/none.jsonl"
assert_eq 2 "$rc" "a missing input"
assert_contains "$err" "could not open $work/none.jsonl"
echo '{"table":"news_raw","op":"delete","news_id":"n1","version":5}' >"$work/delete.jsonl"
run "$bin/latency-probe" --input "$work/delete.jsonl"
assert_eq 2 "$rc" "a delete line"
assert_contains "$err" "line 1: only upserts are measured"
: >"$work/empty.jsonl"
run "$bin/latency-probe" --input "$work/empty.jsonl"
assert_eq 2 "$rc" "an empty input"
assert_contains "$err" "holds no write line"

# an observer that cannot start ends the run at once, with one line saying why
export CATALYST_TOPIC_PREFIX="test.latency.$$.$RANDOM."
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create >/dev/null
scratch_db "latency_probe_$$"
CATALYST_PG_URL=$SCRATCH_PG_URL CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations \
	"$bin/catalyst-migrate" up 2>/dev/null
echo '{"table":"news_raw","news_id":"n1","symbol":"AAPL","version":5}' >"$work/one.jsonl"
start=$SECONDS
run env -u CATALYST_REDIS_URL CATALYST_PG_URL="$SCRATCH_PG_URL" \
	CATALYST_REPLICA_URL="$(pg_url_with_db "$CATALYST_REPLICA_URL" "no_such_db_$$")" "$bin/latency-probe" --input "$work/one.jsonl" --rate 100 --duration-s 60 --warmup-s 0
assert_eq 1 "$rc" "a replica that cannot be reached"
assert_contains "$err" "latency-probe: replica observer: could not connect"
# a bound, not a benchmark: the run would take 60 s and more
((SECONDS - start < 30)) || fail "the probe went on for $((SECONDS - start)) s without its replica observer"
unset CATALYST_TOPIC_PREFIX

# --- the bench, small ------------------------------------------------------------
CATALYST_BENCH_LATENCY_NEWS=300 CATALYST_BENCH_LATENCY_WARMUP_S=1 \
	"$CATALYST_SOURCE_DIR/scripts/bench" latency 3 200 >"$work/bench.out" 2>"$work/bench.err" ||
	fail "scripts/bench latency failed: $(tail -5 "$work/bench.err") $(tail -5 "$work/bench.out")"
python3 - "$work/bench.out" <<'PY'
import json, sys
last = open(sys.argv[1]).read().splitlines()[-1]
d = json.loads(last)
def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}: {last}")
check(d["bench"] == "latency" and d["writes"] == 600, "600 writes measured (3 s at 200/s)")
check(d["delivery_failures"] == 0, "every write delivered")
for hop in ("primary", "redis", "replica"):
    check(d[f"{hop}_never_observed"] == 0, f"every write observed: {hop}")
    check(d[f"{hop}_observed"] == d[f"{hop}_writes"], f"observed = written: {hop}")
check(d["primary_writes"] == d["replica_writes"] == 600, "the primary and the replica see every write")
# the cache keys every row but trading_candidates' (derived lists)
check(0 < d["redis_writes"] < 600, "Redis observes the rows it caches one by one")
for w in ("persist", "cache", "sync"):
    check(d[f"{w}_peak_rss_mib"] > 0, f"peak RSS of {w}")
    check(f"cpu_s_per_100k_{w}" in d, f"CPU of {w}")
check("cpu_s_per_100k_postgres_primary" in d and "cpu_s_per_100k_postgres_replica" in d
      and "cpu_s_per_100k_redis" in d, "CPU of the servers")
PY
grep -q '^publish -> committed on the primary: p50 ' "$work/bench.out" || fail "no primary figure: $(cat "$work/bench.out")"
echo "ok"
