#!/usr/bin/env bash
# Nothing blocks a partition: every permanent failure ends in a dead letter,
# whatever its size (real stack, catalyst-persist, a scratch database):
#   1. a 1,010,000-byte message on write.v1 (over the producer's default
#      message.max.bytes, within what the consumer fetches) is dead-lettered
#      whole, with its reason, and the partition moves on;
#   2. a message the DLQ topic itself cannot take once the letter's headers
#      are added (the broker's default max.message.bytes, 1048588) goes out
#      truncated, with the original size and sha256 in headers, and the
#      partition moves on.
# ctest: beside others (it restarts none of the stack's services)
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.dlqlimits.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-dlqlimits-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_LOG_LEVEL=info
export CATALYST_RETRY_BACKOFF_MS=100 CATALYST_RETRY_BACKOFF_MAX_MS=1000 CATALYST_DLQ_TIMEOUT_MS=10000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "dlqlimits_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
pids+=($!)

good() { # good ID: a news write line keyed like the big ones (one partition)
	printf 'BIG\twrite\t{"table":"news_raw","news_id":"%s","symbol":"BIG","headline":"h","version":1}\n' "$1"
}
# the test producer takes up to 2 MB (the broker's limit is what is tested)
produce() { CATALYST_KAFKA_MESSAGE_MAX_BYTES=2000000 "$bin/raw-produce" --topic "${CATALYST_TOPIC_PREFIX}write.v1"; }
{
	good before-1
	printf 'BIG\ttext\t%s\n' "$(head -c 1010000 /dev/zero | tr '\0' 'x')"
	good after-1
} | produce || fail "could not produce the 1,010,000-byte message"

has_news() { [[ $(psql_at "$db" "SELECT count(*) FROM news_raw WHERE news_id = '$1'") == 1 ]]; }
wait_for 60 "the write after the 1,010,000-byte message" has_news after-1
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count 1 --timeout-ms 30000 \
	>"$work/dlq1" || fail "no dead letter for the 1,010,000-byte message"
python3 - "$work/dlq1" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).readline())
h = m["headers"]
if m["raw_bytes"] != 1010000:
    sys.exit(f"dead letter of {m['raw_bytes']} bytes, expected the whole 1010000")
if not h.get("x-catalyst-error"):
    sys.exit("a dead letter without its reason")
if "x-catalyst-truncated" in h:
    sys.exit("a letter that fits was truncated")
PY

# 2. 1,048,400 bytes: fits write.v1, not once the dead letter's headers are on it
big=$(head -c 1048400 /dev/zero | tr '\0' 'y')
want_sha=$(printf '%s' "$big" | sha256sum | cut -d' ' -f1)
{
	printf 'BIG\ttext\t%s\n' "$big"
	good after-2
} | produce || fail "could not produce the 1,048,400-byte message"
wait_for 90 "the write after the 1,048,400-byte message" has_news after-2
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count 2 --timeout-ms 30000 \
	>"$work/dlq2" || fail "no dead letter for the 1,048,400-byte message"
python3 - "$work/dlq2" "$want_sha" <<'PY'
import json, sys
letters = [json.loads(l) for l in open(sys.argv[1])]
m = [l for l in letters if l["headers"].get("x-catalyst-truncated") == "true"]
if len(m) != 1:
    sys.exit(f"expected one truncated letter, got {len(m)} of {len(letters)}")
h = m[0]["headers"]
if h.get("x-catalyst-original-size") != "1048400":
    sys.exit(f"original size header {h.get('x-catalyst-original-size')!r}")
if h.get("x-catalyst-original-sha256") != sys.argv[2]:
    sys.exit(f"original sha256 header {h.get('x-catalyst-original-sha256')!r}, expected {sys.argv[2]}")
if not h.get("x-catalyst-error"):
    sys.exit("a truncated letter without its reason")
if m[0]["raw_bytes"] >= 1048400 or m[0]["raw_bytes"] == 0:
    sys.exit(f"truncated letter of {m[0]['raw_bytes']} bytes")
PY
grep -q 'refused for its size: sending it truncated' "$work/persist.log" || fail "no log line for the truncated letter"
assert_eq 1 "$(grep -c '"dead-lettered message' "$work/persist.log" | awk '{print ($1 >= 2)}')" "dead letters logged"
echo "ok: a 1,010,000-byte message dead-lettered whole, a 1,048,400-byte one truncated with its size and sha256"

# a truncated letter is never replayed (it is not what the producer sent);
# the whole one is, and is dead-lettered again
out=$("$bin/catalyst-publish" dlq replay --all 2>&1 || true)
assert_contains "$out" "refused"
assert_contains "$out" "a truncated letter (the original was 1048400 bytes, sha256 $want_sha)"
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count 3 --timeout-ms 60000 \
	>"$work/dlq3" || fail "the replayed 1,010,000-byte letter was not dead-lettered again: $out"
echo "ok: the truncated letter refused for replay, the whole one replayed and dead-lettered again"
