#!/usr/bin/env bash
# catalyst-backup against the real stack (PostgreSQL, Kafka, moto with
# signatures checked): the issue's tests 1, 2, 3, 5, 6 and 7 (4 is in
# tests/fault/test_backup_faults.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
on_exit "[ -f '$work/done' ] || tail -n 12 '$work'/*.log >&2 2>/dev/null || true"
export CATALYST_TOPIC_PREFIX="test.backup.$$.$RANDOM."
export CATALYST_BACKUP_GROUP="test-backup-$$" CATALYST_BACKUP_PORT=0 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete '$CATALYST_TOPIC_PREFIX' >/dev/null 2>&1 || true"
"$bin/topic-admin" create
events_topic="${CATALYST_TOPIC_PREFIX}events.v1"

scratch_db "bk_dst_$$"
dst_url=$SCRATCH_PG_URL
scratch_db "bk_tdst_$$"
tdst_url=$SCRATCH_PG_URL
CATALYST_PG_URL=$tdst_url "$bin/catalyst-migrate" up >/dev/null
scratch_db "bk_src_$$"
src_db=$SCRATCH_DB
# sessions on the source are not in UTC (the restores' are): the manifest's
# checksums of COPY text must not depend on it
psql_at "$SCRATCH_PG_URL" "ALTER DATABASE $src_db SET TimeZone = 'Asia/Tokyo'" >/dev/null
export CATALYST_PG_URL=$SCRATCH_PG_URL
"$bin/catalyst-migrate" up >/dev/null
export CATALYST_BACKUP_RESTORE_TARGETS="empty=$dst_url;tables=$tdst_url"

seed() { # FROM TO VERSION: rows FROM..TO in every table
	psql_at "$CATALYST_PG_URL" "
	INSERT INTO news_raw (news_id, symbol, headline, source, published_timestamp, content_snippet, sentiment_score, catalyst_score, is_pre_market, version)
	  SELECT 'n' || i, 'S' || (i % 50), 'headline ''' || i || E'\\\\ tab\t', 'wire', now() - i * interval '1 minute', repeat(md5(i::text), 64), 0.5, 0.25, i % 2 = 0, $3 + i FROM generate_series($1, $2) i;
	INSERT INTO trading_candidates (candidate_id, symbol, catalyst_score, news_count, version)
	  SELECT 'c' || i, 'S' || (i % 50), 0.5, i, $3 + i FROM generate_series($1, $2) i;
	INSERT INTO trading_signals (signal_id, symbol, signal_type, confidence, entry_price, version)
	  SELECT 's' || i, 'S' || (i % 50), 'buy', 0.5, i * 1.5, $3 + i FROM generate_series($1, $2) i;
	INSERT INTO trade_records (trade_id, symbol, side, quantity, entry_price, version)
	  SELECT 't' || i, 'S' || (i % 50), 'long', i, 2.5, $3 + i FROM generate_series($1, $2) i;
	INSERT INTO source_metrics (source_name, total_articles, accuracy_rate, version)
	  SELECT 'src' || i, i, 0.5, $3 + i FROM generate_series($1, $2) i;" >/dev/null
}
table_md5() { # URL TABLE PK
	PGOPTIONS="-c TimeZone=UTC" psql_at "$1" "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY $3)), '') FROM $2 t"
}
pks=(news_raw:news_id trading_candidates:candidate_id trading_signals:signal_id trade_records:trade_id source_metrics:source_name)
# rows per table, and the rows the incremental adds (the issue's 1,000; both
# CATALYST_TEST_SCALE_PCT percent of these)
n_base=$(scaled 3000) n_incr=$(scaled 1000)
seed 1 "$n_base" 1000000

# --- failure paths first ----------------------------------------------------------------
run env CATALYST_S3_PART_SIZE_MB=1 "$bin/catalyst-backup"
assert_eq 2 "$rc" "a part size below 5 MiB"
assert_contains "$err" "CATALYST_S3_PART_SIZE_MB"
run env -u CATALYST_S3_BUCKET "$bin/catalyst-backup"
assert_eq 2 "$rc" "without a bucket"
assert_eq "catalyst-backup: CATALYST_S3_BUCKET: required when CATALYST_BACKUP_STORE=s3" "$err"
# command ids: whole or refused, never cut short
run "$bin/catalyst-publish" backup --command-id "$(printf 'x%.0s' {1..129})" verify some-id
assert_eq 2 "$rc" "a 129-byte command id"
assert_eq "catalyst-publish: --command-id must be 1 to 128 bytes" "$err"
run "$bin/catalyst-publish" backup --issued-at-us 12a verify some-id
assert_eq 2 "$rc" "a bad --issued-at-us"

pid=
on_exit '[[ -z $pid ]] || kill -9 "$pid" 2>/dev/null; true'
start_worker() { # LOG [env...]
	local log=$1
	shift
	env "$@" "$bin/catalyst-backup" 2>>"$log" &
	pid=$!
	wait_for 30 "catalyst-backup to listen" grep -q '"port":' "$log"
	base="http://127.0.0.1:$(grep -o '"port":[0-9]*' "$log" | tail -1 | cut -d: -f2)"
}
stop_worker() {
	kill -TERM "$pid"
	wait "$pid" || fail "catalyst-backup did not stop cleanly"
	pid=
}
# every event so far (read to the end of each partition, no idle wait)
events() { "$bin/topic-dump" --topic "$events_topic" --type events --until-end --timeout-ms 20000 2>/dev/null || true; }
wait_event() { # KIND SUBJECT-SUBSTRING
	wait_for 120 "event $1 $2" bash -c "'$bin/topic-dump' --topic '$events_topic' --type events --until-end --timeout-ms 10000 2>/dev/null | grep '\"kind\":\"$1\"' | grep -q '$2'"
}
state_of() { psql_at "$CATALYST_PG_URL" "SELECT state FROM backup_catalog WHERE command_id = '$1'"; }
id_of() { psql_at "$CATALYST_PG_URL" "SELECT backup_id FROM backup_catalog WHERE command_id = '$1'"; }

# 5. wrong secret key: refused by the endpoint, a clear error, readiness
# false, nothing marked complete; the command is not lost
# (a SIGTERM while the command is being retried waits the consumer's grace
# period for it: short here, the command stays in Kafka for the next worker;
# attempts unbounded here, see tests/fault/test_backup_attempts.sh)
start_worker "$work/wrong.log" CATALYST_S3_SECRET_KEY=wrong-secret-$$ CATALYST_SHUTDOWN_GRACE_MS=1000 \
	CATALYST_BACKUP_MAX_ATTEMPTS=1000000
"$bin/catalyst-publish" backup --command-id "full-$$" full --tag daily >/dev/null
wait_for 60 "the refusal to be logged" grep -q "SignatureDoesNotMatch" "$work/wrong.log"
assert_contains "$(grep -m1 SignatureDoesNotMatch "$work/wrong.log")" "check the access key and secret key"
assert_not_contains "$(cat "$work/wrong.log")" "wrong-secret-$$"
# (the first refusal logged may be the start-up check, before the worker
# is assigned: readiness says why only once the command's upload failed)
wait_for 30 "readiness false with the refusal" bash -c "curl -s $base/readyz | grep -q SignatureDoesNotMatch"
assert_eq 503 "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz")" "readiness status"
assert_not_contains "$(state_of "full-$$")" "completed"
assert_eq "" "$("$bin/s3-tool" ls "backups/$src_db/")" "objects after refused uploads"
stop_worker

# 1. full backup -> object and manifest, sha256 matches; the same command
# (still in Kafka) completes now (the prunes of 6. bring their own clock)
start_worker "$work/backup.log" CATALYST_BACKUP_ALLOW_PRUNE_NOW=1
is_completed() { [[ $(state_of "$1") == completed ]]; }
wait_for 120 "the full backup" is_completed "full-$$"
full_id=$(id_of "full-$$")
prefix="backups/$src_db/$full_id"
"$bin/s3-tool" get "$prefix/manifest.json" >"$work/manifest.json"
"$bin/s3-tool" get "$prefix/dump.sql.gz" >"$work/dump.sql.gz"
assert_eq "$(sha256sum <"$work/dump.sql.gz" | cut -d' ' -f1)" \
	"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$work/manifest.json")" "sha256 of the dump"
assert_eq "$n_base" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["row_counts"]["news_raw"])' "$work/manifest.json")" "manifest row count"
gzip -t "$work/dump.sql.gz"
# compressed in 1 MiB chunks, a gzip member each: the restore below reads them all
members=$(python3 -c '
import sys, zlib
data, n = open(sys.argv[1], "rb").read(), 0
while data:
    d = zlib.decompressobj(31)
    d.decompress(data)
    data, n = d.unused_data, n + 1
print(n)' "$work/dump.sql.gz")
[[ $members -gt 1 ]] || fail "the dump is $members gzip member(s): the data should span several chunks"
assert_eq "$(sha256sum <"$work/dump.sql.gz" | cut -d' ' -f1)" \
	"$(psql_at "$CATALYST_PG_URL" "SELECT sha256 FROM backup_catalog WHERE backup_id = '$full_id'")" "catalog sha256"
wait_event backup.completed "$full_id"

# restore into an empty database: every table equals the source
"$bin/catalyst-publish" backup --command-id "restore-$$" restore "$full_id" empty >/dev/null
wait_event backup.restored "$full_id"
for tp in "${pks[@]}"; do
	assert_eq "$(table_md5 "$CATALYST_PG_URL" "${tp%%:*}" "${tp#*:}")" "$(table_md5 "$dst_url" "${tp%%:*}" "${tp#*:}")" "restored ${tp%%:*}"
done

# a target not in the configuration: dead-lettered, never a URL from a message
"$bin/catalyst-publish" backup restore "$full_id" "postgresql://evil/db" >/dev/null

# 3. the same command delivered twice -> one backup
"$bin/catalyst-publish" backup --command-id "full-$$" full --tag daily >/dev/null
"$bin/group-lag" --group "$CATALYST_BACKUP_GROUP" --topic "${CATALYST_TOPIC_PREFIX}backup.v1" --wait-ms 60000 >/dev/null
assert_eq 1 "$(psql_at "$CATALYST_PG_URL" "SELECT count(*) FROM backup_catalog WHERE command_id = 'full-$$'")" "catalog rows"
assert_eq 1 "$(events | grep '"kind":"backup.completed"' | grep -c "$full_id")" "completed events"
assert_contains "$(cat "$work/backup.log")" "is completed already: nothing to do"
assert_contains "$(cat "$work/backup.log")" "is not in CATALYST_BACKUP_RESTORE_TARGETS"

# 2. table backup, 1,000 new rows, incremental: exactly those rows; restoring
# both reproduces the table
"$bin/catalyst-publish" backup --command-id "tables-$$" tables --tag hourly news_raw trade_records >/dev/null
wait_event backup.completed "tables-"
seed $((n_base + 1)) $((n_base + n_incr)) 2000000
psql_at "$CATALYST_PG_URL" "UPDATE news_raw SET headline = 'updated', version = version + 5000000 WHERE news_id IN ('n1', 'n2')" >/dev/null
"$bin/catalyst-publish" backup --command-id "incr-$$" tables --incremental --tag hourly news_raw trade_records >/dev/null
wait_event backup.completed "incremental-"
tables_id=$(id_of "tables-$$")
incr_id=$(id_of "incr-$$")
"$bin/s3-tool" get "backups/$src_db/$incr_id/manifest.json" >"$work/incr.json"
assert_eq "$((n_incr + 2)) $n_incr" "$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["row_counts"]["news_raw"], m["row_counts"]["trade_records"])' "$work/incr.json")" "incremental rows"
"$bin/s3-tool" get "backups/$src_db/$incr_id/trade_records.copy.gz" | gunzip >"$work/incr.copy"
assert_eq "$n_incr" "$(lines "$(cat "$work/incr.copy")")" "rows in the incremental object"
assert_eq "t$((n_base + 1))" "$(sort -t$'\t' -k1,1V "$work/incr.copy" | head -1 | cut -f1)" "first incremental row"
"$bin/catalyst-publish" backup restore "$tables_id" tables >/dev/null
wait_event backup.restored "$tables_id"
"$bin/catalyst-publish" backup restore "$incr_id" tables >/dev/null
wait_event backup.restored "$incr_id"
for t in news_raw:news_id trade_records:trade_id; do
	assert_eq "$(table_md5 "$CATALYST_PG_URL" "${t%%:*}" "${t#*:}")" "$(table_md5 "$tdst_url" "${t%%:*}" "${t#*:}")" "${t%%:*} from base + incremental"
done

# 7. verify passes, then detects one flipped byte
"$bin/catalyst-publish" backup verify "$full_id" >/dev/null
wait_event backup.verified "$full_id"
assert_contains "$(events | grep '"kind":"backup.verified"' | grep "$full_id")" '"ok":true'
"$bin/catalyst-publish" backup verify "$incr_id" >/dev/null
wait_event backup.verified "$incr_id"
assert_contains "$(events | grep '"kind":"backup.verified"' | grep "$incr_id")" '"ok":true'
# the checksums are compared: one changed in a copy of the manifest fails verify;
# a manifest of format 1 (no checksum_algo: the server's checksums, here of
# the full backup's restore) still verifies
old_sums=$(for t in $("$bin/schema-dump" | cut -d' ' -f1 | uniq); do
	cols=$("$bin/schema-dump" | awk -v t="$t" '$1 == t { print $2 }' | paste -sd,)
	printf '%s=%s\n' "$t" "$(psql_at "$dst_url" "SELECT coalesce(sum(hashtextextended(ROW($cols)::text, 0)), 0)::text FROM $t")"
done)
python3 - "$work/manifest.json" "$work/bad-sum.json" "$work/format1.json" "$old_sums" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["format"] == 2 and m["checksum_algo"] == "sha256-sum64/copy-text-v1", m
bad = json.loads(json.dumps(m))
s = bad["checksums"]["news_raw"]
bad["checksums"]["news_raw"] = s[:-1] + ("0" if s[-1] != "0" else "1")
json.dump(bad, open(sys.argv[2], "w"))
old = json.loads(json.dumps(m))
old["format"] = 1
del old["checksum_algo"], old["checksum_encoding"]
old["checksums"] = dict(line.split("=", 1) for line in sys.argv[4].split("\n"))
json.dump(old, open(sys.argv[3], "w"))
PY
"$bin/s3-tool" put "backups/$src_db/bad-sum-$$/manifest.json" <"$work/bad-sum.json"
"$bin/s3-tool" put "backups/$src_db/format1-$$/manifest.json" <"$work/format1.json"
"$bin/catalyst-publish" backup verify "bad-sum-$$" >/dev/null
"$bin/catalyst-publish" backup verify "format1-$$" >/dev/null
wait_event backup.verified "bad-sum-$$"
wait_event backup.verified "format1-$$"
line=$(events | grep '"kind":"backup.verified"' | grep "bad-sum-$$")
assert_contains "$line" '"ok":false'
assert_contains "$line" "news_raw: $n_base rows restored, $n_base backed up (checksums differ)"
assert_contains "$(events | grep '"kind":"backup.verified"' | grep "format1-$$")" '"ok":true'
"$bin/s3-tool" flip "$prefix/dump.sql.gz" 4000
"$bin/catalyst-publish" backup --command-id "verify2-$$" verify "$full_id" >/dev/null
wait_for 120 "the second verification" bash -c "'$bin/topic-dump' --topic '$events_topic' --type events --until-end --timeout-ms 10000 2>/dev/null | grep '\"kind\":\"backup.verified\"' | grep -q '\"command_id\":\"verify2-$$\"'"
line=$(events | grep '"kind":"backup.verified"' | grep "\"command_id\":\"verify2-$$\"")
assert_contains "$line" '"ok":false'
assert_contains "$line" "corrupt"
assert_eq "f" "$(psql_at "$CATALYST_PG_URL" "SELECT verify_ok FROM backup_catalog WHERE backup_id = '$full_id'")" "verify_ok"
for id in "$full_id" "$incr_id"; do
	scratch=catalyst_verify_$(printf '%s' "$id" | sha256sum | cut -c1-12)
	assert_eq 0 "$(psql_at "$CATALYST_PG_URL" "SELECT count(*) FROM pg_database WHERE datname = '$scratch'")" "scratch database $scratch left"
done

# 6. retention with an injected clock: 30 days of hourly incrementals (HH:05)
# and daily fulls (00:00) from Thursday 2026-01-01; now = 2026-01-31 00:30
PGOPTIONS="-c TimeZone=UTC" psql_at "$CATALYST_PG_URL" "DELETE FROM backup_catalog;
INSERT INTO backup_catalog (backup_id, kind, tag, database_name, state, started_at, finished_at, verify_ok)
  SELECT 'i-' || to_char(ts, 'YYYYMMDDHH24'), 'incremental', 'hourly', '$src_db', 'completed', ts, ts, NULL
  FROM generate_series(timestamptz '2026-01-01 00:05+00', '2026-01-31 00:05+00', interval '1 hour') ts;
INSERT INTO backup_catalog (backup_id, kind, tag, database_name, state, started_at, finished_at, verify_ok)
  SELECT 'f-' || to_char(ts, 'YYYYMMDD'), 'full', 'daily', '$src_db', 'completed', ts, ts, ts = '2026-01-10 00:00+00'
  FROM generate_series(timestamptz '2026-01-01 00:00+00', '2026-01-31 00:00+00', interval '1 day') ts;" >/dev/null
now_us=$(( $(date -u -d '2026-01-31 00:30:00' +%s) * 1000000 ))
expected=$( {
	for h in $(seq 1 23); do printf 'i-20260130%02d\n' "$h"; done
	echo i-2026013100; echo i-2026013000  # hourly; the chain of 01-30
	for d in 04 10 11 18 25 26 27 28 29 30 31; do echo "f-202601$d"; done  # weekly, verified, daily
} | sort | paste -sd,)
"$bin/catalyst-publish" backup --command-id "prune-dry-$$" prune --dry-run --now-us "$now_us" >/dev/null
wait_event backup.pruned "prune-dry-$$"
line=$(events | grep '"kind":"backup.pruned"' | grep "prune-dry-$$")
assert_eq "$expected" "$(python3 -c 'import json,sys; print(",".join(sorted(json.loads(sys.argv[1])["attributes"]["kept"].split(","))))' "$line")" "kept by the tiers"
assert_contains "$line" '"pruned":716'
assert_eq 0 "$(psql_at "$CATALYST_PG_URL" "SELECT count(*) FROM backup_catalog WHERE state = 'pruned'")" "pruned by a dry run"
"$bin/catalyst-publish" backup --command-id "prune-$$" prune --now-us "$now_us" >/dev/null
wait_event backup.pruned "prune-$$"
assert_eq "716 36" "$(psql_at "$CATALYST_PG_URL" "SELECT count(*) FILTER (WHERE state = 'pruned') || ' ' || count(*) FILTER (WHERE state = 'completed') FROM backup_catalog")" "states after the prune"

# after a restart, the last-success gauges come from the catalog as soon as
# a command connects (the newest completed daily: 2026-01-31 00:00 UTC)
stop_worker
start_worker "$work/restarted.log"
"$bin/catalyst-publish" backup --command-id "prune-restarted-$$" prune --dry-run >/dev/null
wait_event backup.pruned "prune-restarted-$$"
assert_contains "$(curl -s "$base/metrics")" 'catalyst_backup_last_success_timestamp_seconds{tag="daily"} 1769817600'
stop_worker
touch "$work/done"
echo "test_backup: ok"
