#!/usr/bin/env bash
# scripts/demo --ci runs to completion on the stack, and its summary shows the
# fleet did its job: every table equal on the primary and the replica (and
# as many rows as the day leaves), the cache's key families complete, the
# table backup verified, and exactly the broken records in dlq.v1, each with
# its reason. The demo checks these itself; this test reads its summary.json
# and checks them again, field by field.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

work=$(mktemp -d)
on_exit "rm -rf '$work'"
name="test_demo_$$"
for url in "$LIB_ADMIN_PG_URL" "$CATALYST_REPLICA_URL"; do
	on_exit "psql_at '$url' 'DROP DATABASE IF EXISTS catalyst_$name WITH (FORCE)' >/dev/null"
done

run env CATALYST_DEMO_DIR="$work/demo" "$CATALYST_SOURCE_DIR/scripts/demo" --ci --name "$name" --redis-db 7 \
	--news "$(scaled 8000)"
[[ $rc == 0 ]] || { printf '%s\n%s\n' "$out" "$err" | tail -n 40 >&2; tail -n 5 "$work"/demo/*.log >&2 || true; }
assert_eq 0 "$rc" "scripts/demo --ci"
assert_contains "$out" "all checks passed"

summary=$work/demo/summary.json
[[ -s $summary ]] || fail "no summary.json"
# one line per finding, "-" when the summary holds what it must
check=$(python3 - "$summary" "$work/demo/expect.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
e = json.load(open(sys.argv[2]))
for t, r in sorted(s["tables"].items()):
    if not (r["primary"] == r["replica"] == e["rows"][t] and r["equal"]):
        print(f"table {t}: {r}")
    if not s["consistency"].get(t, {}).get("ok"):
        print(f"consistency {t}: {s['consistency'].get(t)}")
want = {"news:*": e["rows"]["news_raw"], "news:symbol:*": e["news_symbols"],
        "signals:*": e["rows"]["trading_signals"], "signals:symbol:*": e["signal_symbols"],
        "trades:*": e["rows"]["trade_records"], "trades:symbol:*": e["trade_symbols"],
        "sources:*": e["rows"]["source_metrics"]}
for pattern, n in want.items():
    if s["cache"].get(pattern, {}).get("keys") != n:
        print(f"cache {pattern}: {s['cache'].get(pattern)} want {n}")
b = s["backup"]
if not (b.get("verified") and b.get("state") == "completed" and b.get("bytes_compressed", 0) > 0):
    print(f"backup: {b}")
dead = {d["key"]: d["reason"] for d in s["dead_letters"]}
if sorted(dead) != sorted(e["broken"]) or len(s["dead_letters"]) != len(e["broken"]):
    print(f"dead letters {sorted(dead)} want {sorted(e['broken'])}")
for key, reason in e["broken"].items():
    if reason not in dead.get(key, ""):
        print(f"dead letter {key}: reason {dead.get(key)!r} lacks {reason!r}")
if not (e["rows"]["news_raw"] >= 100 and e["symbols"] == 500 and all(e["rows"].values())):
    print(f"the day is too thin: {e['rows']}")
if s["problems"] or not s["ok"]:
    print(f"problems: {s['problems']}")
print("-")
EOF
)
assert_eq "-" "$check" "the demo's summary"

# the workers it started are gone
for url in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["metrics_urls"].values()))' "$summary"); do
	if curl -fs -o /dev/null --max-time 2 "$url"; then fail "a worker still answers at $url"; fi
done
touch "$work/done"
echo "test_demo: ok"
