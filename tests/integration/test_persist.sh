#!/usr/bin/env bash
# catalyst-persist against the real broker and a scratch database, on topics
# of its own: bad configuration and an unmigrated schema refused in one line;
# 50,000 mixed records over the five tables applied exactly (every column);
# the same 50,000 again changing no row; older versions leaving the newer
# ones; version-checked deletes that older upserts do not undo and newer ones
# do; several writes of one key in one batch leaving the row as one-by-one
# would; 1% poison (undecodable bytes, values the CHECK constraints refuse, a
# symbol too long) dead-lettered with its reason and source headers while
# everything else applies; every committed row on changes.v1; SIGTERM -> 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
persist=$bin/catalyst-persist
records=$here/records.py
[[ -x $persist ]] || fail "$persist not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.persist.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="catalyst-persist-test-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_LOG_LEVEL=info
export CATALYST_BATCH_SIZE=500 CATALYST_COMMIT_INTERVAL_MS=200
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
write_topic=${CATALYST_TOPIC_PREFIX}write.v1
pg_password=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).password or "")' \
	"$LIB_ADMIN_PG_URL")

scratch_db "persist_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db


# --- bad configuration and usage: one plain line naming the variable, exit 2 --------
run env -u CATALYST_PG_URL "$persist"
assert_eq 2 "$rc" "without CATALYST_PG_URL"
assert_eq "catalyst-persist: CATALYST_PG_URL: required but not set" "$err" "its error"
run env -u CATALYST_BROKERS "$persist"
assert_eq 2 "$rc" "without CATALYST_BROKERS"
assert_eq "catalyst-persist: CATALYST_BROKERS: required but not set" "$err" "its error"
for bad in CATALYST_BATCH_SIZE=lots CATALYST_BATCH_SIZE=0 CATALYST_PERSIST_PORT=70000 \
	CATALYST_CHANGES_TIMEOUT_MS=soon CATALYST_LOG_LEVEL=loud "CATALYST_PG_URL=host='unterminated"; do
	run env "$bad" "$persist"
	assert_eq 2 "$rc" "$bad"
	assert_eq 1 "$(error_lines "$err")" "one line for $bad: $err"
	assert_contains "$err" "catalyst-persist: ${bad%%=*}: " "the error for $bad"
done
run "$persist" --frobnicate
assert_eq 2 "$rc" "an unknown argument"
run "$persist" --help
assert_eq 0 "$rc" "--help"
for name in CATALYST_BROKERS CATALYST_PG_URL CATALYST_BATCH_SIZE CATALYST_PERSIST_PORT CATALYST_PERSIST_BIND \
	CATALYST_PERSIST_GROUP CATALYST_CHANGES_TIMEOUT_MS CATALYST_SHUTDOWN_GRACE_MS; do
	assert_contains "$out" "$name" "--help"
done

# --- PostgreSQL refuses: one line, exit 1 ------------------------------------------------
run "$persist"
assert_eq 1 "$rc" "on a database without migrations"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "no migration was applied to this database, this worker needs schema version 4"
"$bin/catalyst-migrate" up --to 3 2>/dev/null
run "$persist"
assert_eq 1 "$rc" "on schema version 3"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "schema version 3 is applied, this worker needs 4: run catalyst-migrate up"
wrong_url=$(python3 -c '
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u._replace(netloc="%s:%s@%s:%d" % (u.username, "wrong-pw-" + sys.argv[2], u.hostname, u.port)).geturl())' \
	"$db" "$RANDOM")
run env CATALYST_PG_URL="$wrong_url" "$persist"
assert_eq 1 "$rc" "with a wrong password"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "password authentication failed"
assert_not_contains "$err" "wrong-pw-" "the error"
run env CATALYST_PG_URL="$(pg_url_with_db "$LIB_ADMIN_PG_URL" "catalyst_test_no_such_db_$$")" "$persist"
assert_eq 1 "$rc" "with a missing database"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "does not exist"
"$bin/catalyst-migrate" up 2>/dev/null
run env CATALYST_TOPIC_PREFIX="test.persist.none.$$." "$persist"
assert_eq 1 "$rc" "without a changes.v1 topic"
assert_contains "$err" "topic test.persist.none.$$.changes.v1 does not exist"

# --- the worker -------------------------------------------------------------------------
pid=
on_exit '[[ -z $pid ]] || kill -9 "$pid" 2>/dev/null; true'
"$persist" 2>"$work/persist.log" &
pid=$!
wait_for 30 "catalyst-persist to listen" grep -q '"port":' "$work/persist.log"
base="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$work/persist.log" | head -1 | cut -d: -f2)"
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/readyz") == 200 ]]; }
wait_for 60 "catalyst-persist to be ready" ready
assert_eq "ok" "$(curl -s "$base/healthz")" "/healthz"

# caught_up: the group has committed every offset of write.v1
caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "$write_topic" --wait-ms 180000 >/dev/null ||
		fail "catalyst-persist did not catch up: $(tail -5 "$work/persist.log")"
}
publish() {
	run "$bin/catalyst-publish" write "$1"
	assert_eq 0 "$rc" "publishing $1: $err"
}
db_check() {
	python3 "$records" db-check "$db" "$@" || fail "the database is not as expected after $*"
}
# versions_and_xmin: every row's key, version and xmin (changes when a row is written)
versions_and_xmin() {
	psql_at "$db" "
		SELECT 'news_raw', news_id, version, xmin FROM news_raw
		UNION ALL SELECT 'trading_candidates', candidate_id, version, xmin FROM trading_candidates
		UNION ALL SELECT 'trading_signals', signal_id, version, xmin FROM trading_signals
		UNION ALL SELECT 'trade_records', trade_id, version, xmin FROM trade_records
		UNION ALL SELECT 'source_metrics', source_name, version, xmin FROM source_metrics ORDER BY 1, 2"
}
stop_persist() { # SIGTERM: exit 0; its log kept in all.log
	kill -TERM "$pid"
	set +e
	wait "$pid"
	rc=$?
	set -e
	pid=
	assert_eq 0 "$rc" "exit code after SIGTERM: $(tail -3 "$work/persist.log")"
	cat "$work/persist.log" >>"$work/all.log"
}
metric() { # metric NAME_WITH_LABELS: its value on /metrics (0 when absent)
	curl -s "$base/metrics" | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}

# (record counts: CATALYST_TEST_SCALE_PCT percent of those named)
n=$(scaled 50000) n_mixed=$(scaled 10000)

# --- 1. 50,000 mixed records over the five tables --------------------------------------
python3 "$records" gen "$n" 42 >"$work/base.jsonl"
publish "$work/base.jsonl"
caught_up
db_check "$work/base.jsonl"
versions_and_xmin >"$work/rows.1"
assert_eq "$n" "$(wc -l <"$work/rows.1")" "rows after the first $n"
assert_eq $((n / 5)) "$(metric 'catalyst_persist_rows_applied_total{table="news_raw",op="upsert"}')" "news_raw applied"

# --- 2. the same 50,000 again: no row changes ------------------------------------------
skipped_before=$(curl -s "$base/metrics" | awk '/^catalyst_persist_rows_skipped_total/ { s += $2 } END { print s + 0 }')
publish "$work/base.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/base.jsonl"
versions_and_xmin >"$work/rows.2"
cmp -s "$work/rows.1" "$work/rows.2" || fail "republishing the same records wrote rows"
skipped_after=$(curl -s "$base/metrics" | awk '/^catalyst_persist_rows_skipped_total/ { s += $2 } END { print s + 0 }')
assert_eq "$n" "$((skipped_after - skipped_before))" "rows skipped on the replay"

# --- 3. older versions after newer ones: the newer stay --------------------------------
python3 "$records" derive older "$work/base.jsonl" >"$work/older.jsonl"
publish "$work/older.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/older.jsonl"
versions_and_xmin >"$work/rows.3"
cmp -s "$work/rows.1" "$work/rows.3" || fail "older versions wrote rows"

# --- 4. deletes, version-checked; older upserts do not resurrect, newer ones do ----------
for kind in deletes stale revive; do
	python3 "$records" derive "$kind" "$work/base.jsonl" >"$work/$kind.jsonl"
done
n_deleted=$(wc -l <"$work/deletes.jsonl")
publish "$work/deletes.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/deletes.jsonl"
assert_eq "$((n - n_deleted))" "$(versions_and_xmin | wc -l)" "rows after the deletes"
assert_eq "$n_deleted" "$(psql_at "$db" "SELECT count(*) FROM row_tombstones")" "tombstones"
publish "$work/stale.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/deletes.jsonl" "$work/stale.jsonl"
assert_eq "$((n - n_deleted))" "$(versions_and_xmin | wc -l)" "rows after the stale upserts"
publish "$work/revive.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/deletes.jsonl" "$work/stale.jsonl" "$work/revive.jsonl"
assert_eq "$((n - n_deleted + $(wc -l <"$work/revive.jsonl")))" "$(versions_and_xmin | wc -l)" \
	"rows after the revivals"
# an older delete leaves a newer row alone
python3 -c '
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][1]  # a trading candidate, not deleted
print(json.dumps({"table": r["table"], "op": "delete", "candidate_id": r["candidate_id"],
                  "version": r["version"] - 1, "command_id": "older-delete"}))' "$work/base.jsonl" \
	>"$work/older_delete.jsonl"
publish "$work/older_delete.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/deletes.jsonl" "$work/stale.jsonl" "$work/revive.jsonl" \
	"$work/older_delete.jsonl"

# --- 5. several writes of one key back to back (mostly one batch): rows as if applied one by one
python3 "$records" derive sequences "$work/base.jsonl" >"$work/sequences.jsonl"
publish "$work/sequences.jsonl"
caught_up
db_check "$work/base.jsonl" "$work/deletes.jsonl" "$work/stale.jsonl" "$work/revive.jsonl" \
	"$work/older_delete.jsonl" "$work/sequences.jsonl"

# --- 6. 1% poison mixed in: exactly those dead-lettered, the rest applied ------------------
python3 "$records" poison "$n_mixed" 7 100000 >"$work/poison.tsv"
grep -o '^poison-[^	]*' "$work/poison.tsv" | sort >"$work/poison.keys"
n_poison=$(wc -l <"$work/poison.keys")
assert_eq $((n_mixed / 100)) "$n_poison" "poison messages"
run "$bin/raw-produce" --topic "$write_topic" <"$work/poison.tsv"
assert_eq 0 "$rc" "raw-produce: $err"
caught_up
db_check "$work/base.jsonl" "$work/deletes.jsonl" "$work/stale.jsonl" "$work/revive.jsonl" \
	"$work/older_delete.jsonl" "$work/sequences.jsonl" "$work/poison.tsv"
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}dlq.v1" --type raw --headers --count "$n_poison" \
	--idle-ms 5000 --timeout-ms 60000 >"$work/dlq.dump" 2>/dev/null || fail "fewer than $n_poison dead letters"
"$bin/topic-dump" --topic "$write_topic" --type raw --until-end --timeout-ms 120000 >"$work/write.dump" 2>/dev/null
python3 - "$work/dlq.dump" "$work/write.dump" "$work/poison.keys" "$write_topic" <<'PY'
import datetime, json, sys
dlq = [json.loads(l) for l in open(sys.argv[1])]
where = {}
for line in open(sys.argv[2]):
    m = json.loads(line)
    if (m["key"] or "").startswith("poison-"):
        where[m["key"]] = m
want = [k.strip() for k in open(sys.argv[3])]
got = sorted(m["key"] for m in dlq)
if got != want:
    sys.exit(f"dead letters {got[:5]}... are not the poison messages {want[:5]}... ({len(got)} vs {len(want)})")
reasons = {"undecodable": "could not decode WriteCommand", "long": 'column "symbol": 11 characters, longer than 10',
           "check": "violates check constraint"}
for m in dlq:
    h, src = m["headers"], where[m["key"]]
    kind = m["key"].split("-")[1]
    if reasons[kind] not in h.get("x-catalyst-error", ""):
        sys.exit(f"{m['key']}: reason {h.get('x-catalyst-error')!r}, expected {reasons[kind]!r}")
    if kind == "check" and "SQLSTATE 23514" not in h["x-catalyst-error"]:
        sys.exit(f"{m['key']}: no SQLSTATE in {h['x-catalyst-error']!r}")
    expect = {"x-catalyst-source-topic": sys.argv[4], "x-catalyst-source-partition": str(src["partition"]),
              "x-catalyst-source-offset": str(src["offset"]), "x-catalyst-worker": "catalyst-persist"}
    for name, value in expect.items():
        if h.get(name) != value:
            sys.exit(f"{m['key']}: header {name} is {h.get(name)!r}, expected {value!r}")
    datetime.datetime.fromisoformat(h["x-catalyst-failed-at"].replace("Z", "+00:00"))
    if m["raw_bytes"] != src["raw_bytes"]:
        sys.exit(f"{m['key']}: {m['raw_bytes']} bytes in the dead letter, {src['raw_bytes']} sent")
print(f"all {len(dlq)} dead letters are the poison messages, with their reasons and sources")
PY
assert_eq "$n_poison" "$(metric catalyst_messages_dead_lettered_total)" "dead letters counted"

# --- 7. every committed row on changes.v1 ------------------------------------------------
"$bin/topic-dump" --topic "${CATALYST_TOPIC_PREFIX}changes.v1" --type changes --until-end --timeout-ms 180000 \
	>"$work/changes.dump" 2>/dev/null
python3 "$records" changes-check "$work/changes.dump" "$work/base.jsonl" "$work/base.jsonl" "$work/older.jsonl" \
	"$work/deletes.jsonl" "$work/stale.jsonl" "$work/revive.jsonl" "$work/older_delete.jsonl" \
	"$work/sequences.jsonl" "$work/poison.tsv" || fail "changes.v1 is not as expected"
python3 - "$work/changes.dump" <<'PY'
import json, sys, zlib
parts, sizes = {}, {}
for line in open(sys.argv[1]):
    c = json.loads(line)
    key = f"{c['record']['table']}:{c['record'][{'news_raw': 'news_id', 'trading_candidates': 'candidate_id', 'trading_signals': 'signal_id', 'trade_records': 'trade_id', 'source_metrics': 'source_name'}[c['record']['table']]]}"
    parts.setdefault(key, set()).add(c["partition"])
    if zlib.crc32(key.encode()) % 12 != c["partition"]:
        sys.exit(f"{key} on partition {c['partition']}, expected crc32 % 12 = {zlib.crc32(key.encode()) % 12}")
    sizes[(c["partition"], c["offset"])] = sizes.get((c["partition"], c["offset"]), 0) + 1
if max(sizes.values()) > 500:
    sys.exit(f"a change batch of {max(sizes.values())} changes")
print(f"{len(parts)} keys, each on its crc32 partition; {len(sizes)} change batches of at most {max(sizes.values())}")
PY
for name in 'catalyst_persist_transactions_total{result="committed"}' catalyst_persist_changes_published_total \
	'catalyst_persist_apply_duration_seconds_count{stage="transaction"}' catalyst_end_to_end_latency_seconds_count; do
	(($(metric "$name" | cut -d. -f1) > 0)) || fail "metric $name is not counting"
done
run curl -s "$base/readyz"
assert_eq "ready" "$out" "/readyz"

# --- SIGTERM: exit 0 ---------------------------------------------------------------------
stop_persist

# --- tombstones past their retention are pruned (at the first batch after a start) -----
n_tombstones=$(psql_at "$db" "SELECT count(*) FROM row_tombstones")
psql_at "$db" "UPDATE row_tombstones SET deleted_at = now() - interval '8 days'
	WHERE pk IN (SELECT pk FROM row_tombstones ORDER BY pk LIMIT 100)" >/dev/null
CATALYST_TOMBSTONE_RETENTION_S=604800 "$persist" 2>"$work/persist.log" &
pid=$!
python3 "$records" gen 10 43 950000 >"$work/after_restart.jsonl"
publish "$work/after_restart.jsonl"
caught_up
assert_eq "$((n_tombstones - 100))" "$(psql_at "$db" "SELECT count(*) FROM row_tombstones")" \
	"tombstones after pruning those 8 days old"
assert_eq 0 "$(psql_at "$db" "SELECT count(*) FROM row_tombstones WHERE deleted_at < now() - interval '7 days'")" \
	"expired tombstones left"
assert_contains "$(cat "$work/persist.log")" "pruned 100 tombstones older than 604800 s"
stop_persist
grep '^{' "$work/all.log" | python3 -c 'import json, sys; [json.loads(l) for l in sys.stdin]' ||
	fail "a log line is not JSON"
[[ -z $pg_password ]] || assert_not_contains "$(cat "$work/all.log")" "$pg_password" "the output"
echo "ok: catalyst-persist"
