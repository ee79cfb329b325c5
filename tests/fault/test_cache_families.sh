#!/usr/bin/env bash
# catalyst-cache touches only what is ours, on the real stack (topics, a
# scratch database and a Redis database of its own), fed by catalyst-persist:
#   1. the worker runs as the Redis ACL user of deploy/redis/users.acl (plus
#      ~app:* for CATALYST_CACHE_KEY_NAMESPACE=app:): changes, the self-heal's
#      rebuild after a FLUSHDB and cache commands all work within it; that
#      user cannot FLUSHDB nor write another application's key;
#   2. cache.v1 with another application's keys present: invalidate '*',
#      invalidate 'news*', set other:1, delete other:1, a delete naming
#      news:{id} and other:1, a set of the worker's own catalyst-cache: key
#      -> each dead-lettered with its reason, nothing of them applied (the
#      other keys and the news key survive); set app:1 (the namespace) and
#      invalidate 'news:*' apply, newsletter:1 stays;
#   3. a namespace that is a pattern or covers the worker's keys: one line, exit 2.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
records=$CATALYST_SOURCE_DIR/tests/integration/records.py
check=$CATALYST_SOURCE_DIR/tests/integration/cache_check.py
acl_file=$CATALYST_SOURCE_DIR/deploy/redis/users.acl
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.cfam.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-cfam-$$" CATALYST_CACHE_GROUP="catalyst-cache-cfam-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_CACHE_BIND=127.0.0.1
export CATALYST_LOG_LEVEL=info CATALYST_BATCH_SIZE=500 CATALYST_COMMIT_INTERVAL_MS=300
export CATALYST_CACHE_HEAL_CHECK_MS=200 CATALYST_CACHE_REBUILD_MIN_INTERVAL_S=1
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
admin_url="${CATALYST_REDIS_URL%/*}/7"
rcall() { python3 "$check" redis "$admin_url" "$@"; }
rcall FLUSHDB >/dev/null
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
scratch_db "cfam_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

# --- the ACL user of deploy/ ------------------------------------------------------------------------
user="catalyst-cache-test-$$"
password="acl-$RANDOM$RANDOM$RANDOM"
rules=$(sed -n 's/^user catalyst-cache off //p' "$acl_file")
[[ -n $rules ]] || fail "no 'user catalyst-cache off ...' line in $acl_file"
# shellcheck disable=SC2086 # the rules are words
rcall ACL SETUSER "$user" $rules '~app:*' on ">$password" >/dev/null
on_exit "python3 '$check' redis '$admin_url' ACL DELUSER '$user' >/dev/null 2>&1 || true"
user_url=$(python3 -c 'import sys, urllib.parse as p
u = p.urlparse(sys.argv[1])
print(u._replace(netloc=f"{sys.argv[2]}@{u.hostname}:{u.port}").geturl())' "$admin_url" "$user")
export CATALYST_REDIS_URL=$user_url CATALYST_REDIS_PASSWORD=$password
as_user() { python3 "$check" redis "$(python3 -c 'import sys, urllib.parse as p
u = p.urlparse(sys.argv[1])
print(u._replace(netloc=f"{u.username}:{p.quote(sys.argv[2])}@{u.hostname}:{u.port}").geturl())' "$user_url" \
	"$password")" "$@"; }
assert_eq PONG "$(as_user PING)" "the ACL user logs in"
run as_user FLUSHDB
assert_contains "$err" "NOPERM" "FLUSHDB as the ACL user"
run as_user SET other:1 mine
assert_contains "$err" "NOPERM" "another application's key as the ACL user"

# --- 3. a namespace that would reach too far ------------------------------------------------------------
for ns in 'app*' 'catalyst' 'catalyst-cache:x'; do
	run env CATALYST_CACHE_KEY_NAMESPACE="$ns" CATALYST_CACHE_PORT=0 "$bin/catalyst-cache"
	assert_eq 2 "$rc" "CATALYST_CACHE_KEY_NAMESPACE=$ns"
	assert_eq 1 "$(error_lines "$err")" "one line for $ns: $err"
	assert_contains "$err" "CATALYST_CACHE_KEY_NAMESPACE: " "the error for $ns"
done

# --- 1. the worker as that user ------------------------------------------------------------------------------
export CATALYST_CACHE_KEY_NAMESPACE=app:
pids=()
on_exit 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
pids+=($!)
port=$(free_port)
CATALYST_CACHE_PORT=$port "$bin/catalyst-cache" 2>"$work/cache.log" &
cache_pid=$!
pids+=("$cache_pid")
is_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]]; }
metric() {
	curl -s "http://127.0.0.1:$port/metrics" | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
wait_for 60 "catalyst-cache to be ready" is_ready
caught_up() {
	local t
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "${CATALYST_TOPIC_PREFIX}write.v1" --wait-ms 180000 \
		>/dev/null || fail "catalyst-persist did not catch up"
	for t in changes.v1 cache.v1; do
		"$bin/group-lag" --group "$CATALYST_CACHE_GROUP" --topic "$CATALYST_TOPIC_PREFIX$t" --wait-ms 180000 \
			>/dev/null || fail "catalyst-cache did not catch up on $t: $(tail -3 "$work/cache.log")"
	done
}
layout_ok() { python3 "$check" layout "$db" "$admin_url" >"$work/check.out" 2>&1; }
python3 "$records" gen 2000 7 >"$work/rows.jsonl"
run "$bin/catalyst-publish" write "$work/rows.jsonl"
assert_eq 0 "$rc" "publishing rows: $err"
caught_up
layout_ok || fail "changes as the ACL user: $(cat "$work/check.out")"
rebuilds() { metric 'catalyst_cache_rebuilds_total{reason="data_lost"}'; }
before=$(rebuilds)
rcall FLUSHDB >/dev/null
wait_for 60 "the self-heal as the ACL user" layout_ok
(($(rebuilds) > before)) || fail "no rebuild counted"
grep -q NOPERM "$work/cache.log" && fail "NOPERM in the worker's log: $(grep -m1 NOPERM "$work/cache.log")"

# --- 2. cache.v1 reaches only the families -------------------------------------------------------------------
news_key=$(python3 -c 'import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["table"] == "news_raw":
        print("news:" + r["news_id"]); break' "$work/rows.jsonl")
news_value=$(rcall GET "$news_key")
[[ -n $news_value ]] || fail "$news_key is not cached"
rcall SET other:1 theirs >/dev/null
rcall SET newsletter:1 theirs >/dev/null
publish_cache() {
	run "$bin/catalyst-publish" cache "$@"
	assert_eq 0 "$rc" "publishing cache $*: $err"
}
publish_cache invalidate '*'
publish_cache invalidate 'news*'
publish_cache set other:1 ours
publish_cache delete other:1
publish_cache delete "$news_key" other:1
publish_cache set catalyst-cache:sentinel ours
caught_up
assert_eq theirs "$(rcall GET other:1)" "other:1"
assert_eq theirs "$(rcall GET newsletter:1)" "newsletter:1"
assert_eq "$news_value" "$(rcall GET "$news_key")" "$news_key after refused commands"
assert_eq 1 "$(rcall EXISTS catalyst-cache:sentinel)" "the sentinel"
[[ $(rcall GET catalyst-cache:sentinel) != ours ]] || fail "a cache command set the sentinel"
layout_ok || fail "the cache after the refused commands: $(cat "$work/check.out")"
run "$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count 6 --timeout-ms 20000
for reason in "invalidate: pattern * is outside the cache's key families (news:* signals:* trades:* sources:* candidates:* app:*)" \
	"invalidate: pattern news* is outside" "set: key other:1 is outside" "delete: key other:1 is outside" \
	"set: key catalyst-cache:sentinel is outside"; do
	assert_contains "$out" "$reason" "the dead letters"
done
assert_eq 2 "$(grep -c 'delete: key other:1 is outside' <<<"$out")" "the two refused deletes"

publish_cache set app:1 ours
publish_cache invalidate 'news:*'
caught_up
assert_eq ours "$(rcall GET app:1)" "a key of the namespace"
assert_eq "" "$(rcall GET "$news_key")" "$news_key after invalidate news:*"
assert_eq theirs "$(rcall GET newsletter:1)" "newsletter:1 after invalidate news:*"
assert_eq theirs "$(rcall GET other:1)" "other:1 at the end"
run "$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count 7 --timeout-ms 3000
(($(grep -c 'is outside' <<<"$out") == 6)) || fail "dead letters beyond the six refused commands"

kill -TERM "$cache_pid"
wait "$cache_pid" || fail "catalyst-cache did not exit 0 on SIGTERM"
echo "ok: catalyst-cache touches only its key families"
