#!/usr/bin/env bash
# catalyst-publish dlq list|show|replay against the real broker, catalyst-persist
# and a scratch database, on topics of their own. The trading service starts
# sending "hold" signals before the migration that allows them has run: persist
# dead-letters them (the CHECK constraint refuses them, SQLSTATE 23514) along
# with a trade of side "flat", a symbol longer than its column and undecodable
# bytes, while the good records apply. Then:
#   - bad arguments: one line, exit 2; --help documents every option;
#   - list shows exactly those letters with reason, source, kind and table, and
#     each filter selects what it names; show prints every header and the
#     original message (a write line, or hex when it does not decode);
#   - replay of the "flat" trade before any fix dead-letters it again, as a
#     new letter naming the replayed copy as its source;
#   - the fix (the check widened to allow "hold"), then replay of the signals:
#     each applied once, recorded in dlq_replays; a second replay is a no-op
#     (0 replayed, write.v1's end offsets unmoved); --dry-run publishes nothing;
#   - a letter whose source header names a topic outside the fleet is refused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
publish=$bin/catalyst-publish
[[ -x $publish ]] || fail "$publish not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_TOPIC_PREFIX="test.dlq.$$.$RANDOM."
export CATALYST_PERSIST_GROUP="test-dlq-persist-$$"
export CATALYST_PERSIST_PORT=0 CATALYST_PERSIST_BIND=127.0.0.1 CATALYST_LOG_LEVEL=info
export CATALYST_BATCH_SIZE=200 CATALYST_COMMIT_INTERVAL_MS=200
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete >/dev/null 2>&1 || true"
"$bin/topic-admin" create
write_topic=${CATALYST_TOPIC_PREFIX}write.v1
dlq_topic=${CATALYST_TOPIC_PREFIX}dlq.v1
scratch_db "dlq_$$"
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db
"$bin/catalyst-migrate" up 2>/dev/null

# --- bad arguments: one line, exit 2 ------------------------------------------------------
for args in "dlq" "dlq frobnicate" "dlq list 0:1" "dlq list --since yesterday" "dlq list --table no_such" \
	"dlq list --reason" "dlq list --dry-run" "dlq show" "dlq show 1:x" "dlq show -1:2" "dlq replay" \
	"dlq replay --json --all" "dlq list --frobnicate"; do
	# shellcheck disable=SC2086
	run "$publish" $args
	assert_eq 2 "$rc" "[$args]"
	assert_eq 1 "$(error_lines "$err")" "one line for [$args]: $err"
	assert_contains "$err" "catalyst-publish dlq: " "[$args]"
done
run env -u CATALYST_PG_URL "$publish" dlq replay --all
assert_eq 2 "$rc" "replay without CATALYST_PG_URL"
assert_eq "catalyst-publish dlq: CATALYST_PG_URL: required for replay (replays are recorded on the primary)" "$err"
run "$publish" dlq --help
assert_eq 0 "$rc" "dlq --help"
for word in "dlq list" "dlq show" "dlq replay" --reason --table --source-topic --worker --since --pending --json \
	--all --dry-run --by PARTITION:OFFSET dlq_replays CATALYST_PG_URL CATALYST_TOPIC_PREFIX; do
	assert_contains "$out" "$word" "dlq --help"
done

# --- persist, good records and broken ones ------------------------------------------------
persist_pid=
on_exit '[[ -z $persist_pid ]] || kill -9 "$persist_pid" 2>/dev/null; true'
"$bin/catalyst-persist" 2>"$work/persist.log" &
persist_pid=$!
caught_up() {
	"$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "$write_topic" --wait-ms 60000 >/dev/null ||
		fail "catalyst-persist did not catch up"
}
write_end() { "$bin/group-lag" --group "$CATALYST_PERSIST_GROUP" --topic "$write_topic" | json_end; }
json_end() { python3 -c 'import json, sys; print(json.load(sys.stdin)["end"])'; }

python3 - "$here" >"$work/input.tsv" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
import records
base = 1764252312000000
def line(key, rec):
    print(f"{key}\twrite\t{json.dumps(rec)}")
for i in range(20):  # good ones
    line("-", {"table": "news_raw", "news_id": f"good-{i}", "symbol": "AAPL", "headline": f"h{i}",
               "version": base + i, "command_id": f"good-{i}"})
for i in range(3):  # the service's new "hold" signals: refused until the schema allows them
    line("-", {"table": "trading_signals", "signal_id": f"hold-{i}", "symbol": "MSFT", "signal_type": "hold",
               "confidence": 0.5 + i / 10, "version": base + 100 + i, "command_id": f"hold-{i}"})
line("-", {"table": "trade_records", "trade_id": "flat-1", "symbol": "TSLA", "side": "flat", "quantity": 10,
           "version": base + 200, "command_id": "flat-1"})
print(f"long-1\thex\t{records.long_symbol_command(1).hex()}")
print("junk-1\thex\tffffffff0fdeadbeef")
PY
run "$bin/raw-produce" --topic "$write_topic" <"$work/input.tsv"
assert_eq 0 "$rc" "raw-produce: $err"
caught_up
assert_eq 20 "$(psql_at "$db" "SELECT count(*) FROM news_raw")" "good records applied"
assert_eq 0 "$(psql_at "$db" "SELECT count(*) FROM trading_signals")" "hold signals refused"
wait_for 30 "six dead letters" bash -c "[ \"\$('$publish' dlq list --json 2>/dev/null | wc -l)\" = 6 ]"

# --- list -------------------------------------------------------------------------------------
run "$publish" dlq list --json
assert_eq 0 "$rc" "list --json: $err"
assert_eq "$dlq_topic: 6 of 6 dead letters" "$err" "list's count line"
printf '%s\n' "$out" >"$work/list.json"
python3 - "$work/list.json" "$write_topic" "$dlq_topic" <<'PY' || fail "list --json is not the dead letters"
import json, sys
letters = [json.loads(l) for l in open(sys.argv[1])]
write_topic, dlq_topic = sys.argv[2], sys.argv[3]
by_key = {l["key"]: l for l in letters}
want = {"MSFT": None, "TSLA": ("write.upsert", "trade_records", "trade_records_side_check"),
        "long-1": ("write.upsert", "news_raw", "symbol"), "junk-1": ("-", "-", "")}
assert sorted(by_key) == sorted(want), sorted(by_key)
msft = [l for l in letters if l["key"] == "MSFT"]
assert len(msft) == 3, msft
for l in letters:
    assert l["dlq_topic"] == dlq_topic and l["worker"] == "catalyst-persist", l
    assert l["source"]["topic"] == write_topic and l["source"]["offset"] >= 0, l
    assert l["replayed"] is False, l
    assert l["failed_at"].endswith("Z"), l
    if l["key"] == "MSFT":
        assert (l["kind"], l["table"]) == ("write.upsert", "trading_signals"), l
        assert "trading_signals_signal_type_check" in l["reason"] and "23514" in l["reason"], l["reason"]
    else:
        kind, table, reason = want[l["key"]]
        assert (l["kind"], l["table"]) == (kind, table), l
        assert reason in l["reason"] and l["reason"], l["reason"]
print("list --json: the six dead letters with their reasons, sources, kinds and tables")
PY
run "$publish" dlq list
assert_eq 0 "$rc" "list"
assert_eq 7 "$(lines "$out")" "a header and six lines"
assert_contains "$(head -1 <<<"$out")" "DLQ" "the header"
assert_contains "$(head -1 <<<"$out")" "REPLAYED" "the header (CATALYST_PG_URL set)"
assert_eq 3 "$(grep -c 'write.upsert  trading_signals' <<<"$out")" "the hold signals' lines"
assert_contains "$out" "$write_topic:" "source column"
run env -u CATALYST_PG_URL "$publish" dlq list
assert_eq 0 "$rc" "list without CATALYST_PG_URL"
assert_not_contains "$(head -1 <<<"$out")" "REPLAYED" "the header without CATALYST_PG_URL"

count() { "$publish" dlq list --json "$@" 2>/dev/null | wc -l; }
assert_eq 3 "$(count --table trading_signals)" "--table trading_signals"
assert_eq 1 "$(count --table trade_records)" "--table trade_records"
assert_eq 3 "$(count --reason signal_type_check)" "--reason"
assert_eq 3 "$(count --reason SIGNAL_TYPE_CHECK)" "--reason, any case"
assert_eq 1 "$(count --reason side_check --table trade_records)" "two filters"
assert_eq 6 "$(count --source-topic write.v1)" "--source-topic by suffix"
assert_eq 6 "$(count --source-topic "$write_topic")" "--source-topic by name"
assert_eq 0 "$(count --source-topic cache.v1)" "--source-topic cache.v1"
assert_eq 6 "$(count --worker catalyst-persist)" "--worker"
assert_eq 6 "$(count --since 1h)" "--since 1h"
assert_eq 0 "$(count --since 2999-01-01T00:00:00Z)" "--since in the future"
assert_eq 6 "$(count --pending)" "--pending before any replay"

coord() { # coord KEY [N]: the PARTITION:OFFSET of the Nth (1-based) dead letter of KEY
	python3 -c '
import json, sys
ls = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["key"] == sys.argv[2]]
l = ls[int(sys.argv[3]) - 1]
print("%d:%d" % (l["partition"], l["offset"]))' "$work/list.json" "$1" "${2:-1}"
}

# --- show -------------------------------------------------------------------------------------
run "$publish" dlq show "$(coord MSFT 1)" "$(coord junk-1)"
assert_eq 0 "$rc" "show: $err"
printf '%s\n' "$out" >"$work/show.json"
python3 - "$work/show.json" "$write_topic" <<'PY' || fail "show is not the letters"
import json, sys
dec = json.JSONDecoder()
text, shown, pos = open(sys.argv[1]).read(), [], 0
while pos < len(text.rstrip()):
    obj, end = dec.raw_decode(text, pos)
    shown.append(obj)
    pos = end + 1
assert len(shown) == 2, len(shown)
hold, junk = sorted(shown, key=lambda s: s["key"] != "MSFT")
for s in shown:
    assert set(s["headers"]) >= {"x-catalyst-error", "x-catalyst-source-topic", "x-catalyst-source-partition",
                                 "x-catalyst-source-offset", "x-catalyst-worker", "x-catalyst-failed-at"}, s
    assert s["headers"]["x-catalyst-source-topic"] == sys.argv[2]
m = hold["message"]
assert m["table"] == "trading_signals" and m["signal_type"] == "hold" and m["signal_id"].startswith("hold-"), m
assert m["command_id"].startswith("hold-") and m["op"] == "upsert", m
assert "message" not in junk and junk["value_hex"] == "ffffffff0fdeadbeef" and junk["value_bytes"] == 9, junk
print("show: every header, the write line of a signal, the hex of the junk")
PY
run "$publish" dlq show 0:999999
assert_eq 1 "$rc" "show of a letter that is not there"
assert_contains "$err" "no dead letter at 0:999999 of $dlq_topic"

# --- replay before the fix: the letter comes back as a new one -------------------------------
end0=$(write_end)
run "$publish" dlq replay --dry-run --table trade_records
assert_eq 0 "$rc" "replay --dry-run: $err"
assert_contains "$out" "would replay $(coord TSLA) -> $write_topic ["
assert_contains "$out" "1 would be replayed, 0 already replayed, 0 refused"
assert_eq "$end0" "$(write_end)" "write.v1's end after --dry-run"
run "$publish" dlq replay --by test-operator "$(coord TSLA)"
assert_eq 0 "$rc" "replay of the flat trade: $out $err"
assert_contains "$out" "1 replayed, 0 already replayed, 0 refused, 0 not delivered"
assert_eq "$((end0 + 1))" "$(write_end)" "write.v1's end after one replay"
replayed_at=$(sed -n 's/^replayed .* @ \([0-9]*\) .*/\1/p' <<<"$out")
caught_up
wait_for 30 "the flat trade's second dead letter" bash -c "[ \"\$('$publish' dlq list --json --table trade_records 2>/dev/null | wc -l)\" = 2 ]"
run "$publish" dlq list --json --table trade_records --pending
assert_eq 1 "$(lines "$out")" "one pending flat trade letter"
assert_contains "$out" "\"offset\":$replayed_at}" "the new letter's source is the replayed copy"
assert_eq 0 "$(psql_at "$db" "SELECT count(*) FROM trade_records")" "the unfixed trade still refused"

# --- the fix, then the replay of the signals ------------------------------------------------
psql_at "$db" "ALTER TABLE trading_signals DROP CONSTRAINT trading_signals_signal_type_check,
	ADD CONSTRAINT trading_signals_signal_type_check CHECK (signal_type IN ('buy', 'sell', 'hold'))"
end1=$(write_end)
run "$publish" dlq replay --by test-operator --table trading_signals --reason signal_type_check
assert_eq 0 "$rc" "replay of the signals: $out $err"
assert_eq 3 "$(grep -c "^replayed .* -> $write_topic \[" <<<"$out")" "three replayed lines"
assert_contains "$out" "dlq replay: 3 replayed, 0 already replayed, 0 refused, 0 not delivered"
assert_eq "$((end1 + 3))" "$(write_end)" "write.v1's end after the replay"
caught_up
assert_eq "hold-0:hold:0.5:1764252312000100 hold-1:hold:0.6:1764252312000101 hold-2:hold:0.7:1764252312000102" \
	"$(psql_at "$db" "SELECT string_agg(signal_id || ':' || signal_type || ':' || confidence || ':' || version, ' '
		ORDER BY signal_id) FROM trading_signals")" "the replayed signals applied"
assert_eq "3" "$(psql_at "$db" "SELECT count(*) FROM trading_signals")" "signals"
assert_eq "4 4 test-operator" "$(psql_at "$db" "SELECT count(*) || ' ' || count(DISTINCT (source_partition, source_offset)) || ' ' ||
	min(replayed_by) FROM dlq_replays WHERE dlq_topic = '$dlq_topic'")" "dlq_replays rows"
assert_eq 0 "$(count --table trading_signals --pending)" "no signal pending"

# --- a second replay is a no-op -----------------------------------------------------------
end2=$(write_end)
run "$publish" dlq replay --table trading_signals
assert_eq 0 "$rc" "second replay: $out $err"
assert_contains "$out" "dlq replay: 0 replayed, 3 already replayed, 0 refused, 0 not delivered"
run "$publish" dlq replay "$(coord TSLA)"
assert_eq 0 "$rc" "second replay of the flat trade"
assert_contains "$out" "dlq replay: 0 replayed, 1 already replayed"
run "$publish" dlq replay --all --dry-run
assert_eq 0 "$rc" "replay --all --dry-run"
assert_contains "$out" "3 would be replayed, 4 already replayed, 0 refused"
sleep 1
assert_eq "$end2" "$(write_end)" "write.v1's end after the second replay"
assert_eq 4 "$(psql_at "$db" "SELECT count(*) FROM dlq_replays")" "dlq_replays rows after the second replay"
run "$publish" dlq list
assert_eq 4 "$(grep -c '  yes  ' <<<"$out")" "replayed letters marked in list"

# --- never to a topic outside the fleet ---------------------------------------------------
printf 'evil\thex\t0a00\n' | "$bin/raw-produce" --topic "$dlq_topic" \
	--header "x-catalyst-error=forged" --header "x-catalyst-source-topic=${CATALYST_TOPIC_PREFIX}events.v1" \
	--header "x-catalyst-source-partition=0" --header "x-catalyst-source-offset=1" 2>/dev/null
printf 'evil2\thex\t0a00\n' | "$bin/raw-produce" --topic "$dlq_topic" \
	--header "x-catalyst-error=forged" --header "x-catalyst-source-topic=someone.elses.topic" \
	--header "x-catalyst-source-partition=0" --header "x-catalyst-source-offset=1" 2>/dev/null
run "$publish" dlq replay --reason forged
assert_eq 1 "$rc" "replay of forged letters"
assert_eq 2 "$(grep -c "^refused .*is not a topic the workers consume under prefix $CATALYST_TOPIC_PREFIX" <<<"$out")" \
	"refusals: $out"
assert_contains "$out" "0 replayed, 0 already replayed, 2 refused"
assert_eq 4 "$(psql_at "$db" "SELECT count(*) FROM dlq_replays")" "nothing recorded for refused letters"

# --- PostgreSQL down: list still works, replay says why ------------------------------------
run env CATALYST_PG_URL="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2" "$publish" dlq list
assert_eq 0 "$rc" "list with PostgreSQL down"
assert_contains "$err" "not showing what was replayed"
run env CATALYST_PG_URL="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2" "$publish" dlq replay --all
assert_eq 1 "$rc" "replay with PostgreSQL down"
assert_contains "$err" "could not connect"

kill -TERM "$persist_pid"
wait "$persist_pid" || fail "catalyst-persist did not stop cleanly"
persist_pid=
echo "dlq list/show/replay: 6 dead letters listed and shown, 3 replayed once after the fix, a second replay a no-op"
