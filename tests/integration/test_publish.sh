#!/usr/bin/env bash
# catalyst-publish against the real broker: 10,000 records read back equal,
# keys as designed; bad lines reported by number and not published; an
# unreachable broker fails within the configured timeout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
prefix="test.publish.$$.$RANDOM"
export CATALYST_TOPIC_PREFIX="$prefix.a."
on_exit "rm -rf '$work'"
on_exit "'$bin/topic-admin' delete '$prefix.a.' >/dev/null 2>&1 || true"
on_exit "'$bin/topic-admin' delete '$prefix.b.' >/dev/null 2>&1 || true"
"$bin/topic-admin" create
topic="${CATALYST_TOPIC_PREFIX}write.v1"

# --- failure paths first -----------------------------------------------------
# bad configuration: one line naming the variable, exit 2
set +e
out=$(env -u CATALYST_BROKERS "$bin/catalyst-publish" write /dev/null 2>&1); rc=$?
set -e
assert_eq 2 "$rc" "publish without CATALYST_BROKERS"
assert_eq "catalyst-publish: CATALYST_BROKERS: required but not set" "$out" "its error"

set +e
out=$(CATALYST_PUBLISH_TIMEOUT_MS=soon "$bin/catalyst-publish" write /dev/null 2>&1); rc=$?
set -e
assert_eq 2 "$rc" "publish with a malformed timeout"
assert_contains "$out" "CATALYST_PUBLISH_TIMEOUT_MS: must be an integer"

set +e
out=$(CATALYST_KAFKA_NO_SUCH_PROPERTY=1 "$bin/catalyst-publish" write /dev/null 2>&1); rc=$?
set -e
assert_eq 2 "$rc" "publish with an unknown librdkafka property"
assert_contains "$out" "CATALYST_KAFKA_NO_SUCH_PROPERTY"

# unreachable broker: every record reported not delivered, within the timeout
python3 "$here/records.py" gen 5 7 >"$work/five.jsonl"
start=$(date +%s)
set +e
CATALYST_BROKERS=127.0.0.1:1 CATALYST_PUBLISH_TIMEOUT_MS=2000 CATALYST_LOG_LEVEL=error \
	"$bin/catalyst-publish" write "$work/five.jsonl" >"$work/unreach.out" 2>"$work/unreach.err"; rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
assert_eq 1 "$rc" "publish to an unreachable broker"
assert_eq "published 0, rejected 0, not delivered 5" "$(cat "$work/unreach.out")" "summary"
assert_eq 5 "$(grep -c 'not delivered' "$work/unreach.err")" "one report per line"
# the bound, not a benchmark: 2 s timeout + margin; hanging would be minutes
[ "$elapsed" -lt 30 ] || fail "unreachable broker took ${elapsed}s to give up"

# a file with bad lines: only the good ones published, each bad one by number
cat >"$work/mixed.jsonl" <<'LINES'
{"table":"news_raw","command_id":"good-1","news_id":"g1","symbol":"AAPL","version":5}
{"table":"news_raw","news_id":"b1","symbol":"AAPL"
{"table":"no_such_table","id":"x"}
{"table":"news_raw","news_id":"b3","symbol":"AAPL","no_such_column":1}
{"table":"news_raw","symbol":"AAPL"}
{"table":"trading_candidates","candidate_id":"b5","symbol":"MSFT","news_count":"three"}
{"table":"news_raw","news_id":"b6","symbol":"ABCDEFGHIJK"}

{"table":"source_metrics","command_id":"good-2","source_name":"reuters","accuracy_rate":0.5,"version":7}
[1,2,3]
{"table":"news_raw","news_id":"b9","symbol":"AAPL","published_timestamp":"yesterday"}
LINES
set +e
"$bin/catalyst-publish" write "$work/mixed.jsonl" >"$work/mixed.out" 2>"$work/mixed.err"; rc=$?
set -e
assert_eq 1 "$rc" "publish of a file with bad lines"
assert_eq "published 2, rejected 8" "$(cat "$work/mixed.out")" "summary"
for n in 2 3 4 5 6 7 10 11; do
	grep -q "^line $n: " "$work/mixed.err" || fail "line $n not reported: $(cat "$work/mixed.err")"
done
assert_eq 8 "$(grep -c '^line ' "$work/mixed.err")" "exactly the bad lines reported"
assert_contains "$(grep '^line 3: ' "$work/mixed.err")" "no_such_table"
assert_contains "$(grep '^line 4: ' "$work/mixed.err")" "no_such_column"
assert_contains "$(grep '^line 6: ' "$work/mixed.err")" "news_count"
assert_contains "$(grep '^line 7: ' "$work/mixed.err")" "symbol"
"$bin/topic-dump" --topic "$topic" --count 2 --idle-ms 3000 --timeout-ms 60000 >"$work/mixed.dump"
assert_eq "good-1 good-2" "$(python3 -c '
import json,sys
print(" ".join(sorted(json.loads(l)["value"]["command_id"] for l in open(sys.argv[1]))))' "$work/mixed.dump")" \
	"only the good lines are on the topic"

# --- 10,000 records, read back by a test consumer --------------------------------
export CATALYST_TOPIC_PREFIX="$prefix.b."
topic="${CATALYST_TOPIC_PREFIX}write.v1"
"$bin/topic-admin" create
python3 "$here/records.py" gen 10000 42 >"$work/records.jsonl"
"$bin/catalyst-publish" write "$work/records.jsonl" >"$work/records.out"
assert_eq "published 10000, rejected 0" "$(cat "$work/records.out")" "summary"
"$bin/topic-dump" --topic "$topic" --count 10000 --idle-ms 5000 --timeout-ms 120000 >"$work/records.dump"
python3 "$here/records.py" check "$work/records.jsonl" "$work/records.dump"
# per-symbol order: one symbol's records all on one partition
python3 - "$work/records.dump" <<'PY'
import json, sys
parts = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    parts.setdefault(m["key"], set()).add(m["partition"])
spread = {k: v for k, v in parts.items() if len(v) > 1}
if spread:
    sys.exit(f"keys on several partitions: {list(spread)[:5]}")
if len({p for v in parts.values() for p in v}) < 2:
    sys.exit("all records on one partition: keys are not spreading the load")
PY
echo "ok: catalyst-publish"
