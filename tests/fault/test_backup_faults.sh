#!/usr/bin/env bash
# catalyst-backup under faults, on the real stack (moto with signatures
# checked; topics, group and scratch database of its own). The issue's test 4:
#   a. the S3 endpoint stopped while a full backup's multipart upload is in
#      progress, started again a few seconds later: the backup completes
#      after retry (object + manifest, sha256 right, catalog completed), no
#      multipart upload left behind, nothing else under the prefix;
#   b. the worker killed (-9) mid-upload, which leaves an orphaned multipart
#      upload in the store: the redelivered command removes it, starts over
#      and completes; nothing left behind.
# Whatever happens, the stack's S3 is left running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"

bin=$CATALYST_BIN_DIR
work=$(mktemp -d)
on_exit "rm -rf '$work'"
on_exit "[ -f '$work/done' ] || tail -n 15 '$work'/*.log >&2 2>/dev/null || true"
export CATALYST_TOPIC_PREFIX="test.bkfault.$$.$RANDOM."
export CATALYST_BACKUP_GROUP="test-backup-fault-$$" CATALYST_BACKUP_PORT=0 CATALYST_LOG_LEVEL=info
export CATALYST_RETRY_BACKOFF_MS=200 CATALYST_RETRY_BACKOFF_MAX_MS=1000
export CATALYST_KAFKA_SESSION_TIMEOUT_MS=6000 CATALYST_KAFKA_HEARTBEAT_INTERVAL_MS=1000
# the smallest parts, so that the dump spans several of them; retries of one
# request span ~3-6 s, shorter than the outage below
export CATALYST_S3_PART_SIZE_MB=5 CATALYST_S3_MAX_RETRIES=4 CATALYST_S3_RETRY_BACKOFF_MS=200
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
on_exit "'$bin/topic-admin' delete '$CATALYST_TOPIC_PREFIX' >/dev/null 2>&1 || true"
"$bin/topic-admin" create

scratch_db "bkfault_$$"
db=$SCRATCH_DB
export CATALYST_PG_URL=$SCRATCH_PG_URL
"$bin/catalyst-migrate" up >/dev/null
# ~45 MB of poorly compressible rows (distinct hex digests): ~17 MB of gzip,
# four parts; not scaled down, the upload must last long enough to be hit
psql_at "$CATALYST_PG_URL" "
INSERT INTO news_raw (news_id, symbol, headline, source, published_timestamp, sentiment_score, catalyst_score, is_pre_market, version)
  SELECT 'n' || i, 'S' || (i % 50), md5(i || 'a') || md5(i || 'b') || md5(i || 'c') || md5(i || 'd'),
         'wire', now() - i * interval '1 second', 0.5, 0.25, i % 2 = 0, i FROM generate_series(1, 200000) i;" >/dev/null

pid=
on_exit '[[ -z $pid ]] || kill -9 "$pid" 2>/dev/null; true'
# and whatever happens, the stack's S3 is left running
on_exit "'$CATALYST_SOURCE_DIR/scripts/stack' start-service s3 >/dev/null 2>&1 || true"

start_worker() { # LOG
	"$bin/catalyst-backup" 2>>"$1" &
	pid=$!
}
uploads() { "$bin/s3-tool" uploads "backups/$db/" 2>/dev/null || true; }
upload_exists() { [[ -n $(uploads) ]]; }
state_of() { psql_at "$CATALYST_PG_URL" "SELECT state FROM backup_catalog WHERE command_id = '$1'"; }
is_completed() { [[ $(state_of "$1") == completed ]]; }
check_backup() { # COMMAND-ID: object and manifest agree, nothing else, no upload left
	local id prefix
	id=$(psql_at "$CATALYST_PG_URL" "SELECT backup_id FROM backup_catalog WHERE command_id = '$1'")
	prefix="backups/$db/$id"
	"$bin/s3-tool" get "$prefix/dump.sql.gz" >"$work/dump.sql.gz"
	gzip -t "$work/dump.sql.gz"
	assert_eq "$(sha256sum <"$work/dump.sql.gz" | cut -d' ' -f1)" \
		"$("$bin/s3-tool" get "$prefix/manifest.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])')" \
		"sha256 of the dump ($1)"
	assert_eq 200000 "$(zcat "$work/dump.sql.gz" | grep -c $'^n[0-9]*\tS')" "rows in the dump ($1)"
	assert_eq "$(printf '%s\n' "$prefix/dump.sql.gz" "$prefix/manifest.json")" \
		"$("$bin/s3-tool" ls "$prefix/" | cut -d' ' -f2)" "objects under $prefix"
	assert_eq "" "$(uploads)" "multipart uploads left ($1)"
}

# --- a. the endpoint stopped mid-upload, started again ------------------------------------------
start_worker "$work/stop.log"
"$bin/catalyst-publish" backup --command-id "full-a-$$" full --tag daily >/dev/null
wait_for 60 "the multipart upload to start" upload_exists
"$CATALYST_SOURCE_DIR/scripts/stack" stop-service s3 >/dev/null
sleep 3 # the part uploads in flight fail and retry meanwhile
"$CATALYST_SOURCE_DIR/scripts/stack" start-service s3 >/dev/null
wait_for 60 "the backup to complete after the outage" is_completed "full-a-$$"
# the outage was seen while uploading (not before, not after)
assert_contains "$(cat "$work/stop.log")" 'retry 1 of 4'
check_backup "full-a-$$"
kill -TERM "$pid"
wait "$pid" || fail "catalyst-backup did not stop cleanly"
pid=

# --- b. the worker killed mid-upload: the orphan is removed, the backup redone ------------------
start_worker "$work/kill.log"
"$bin/catalyst-publish" backup --command-id "full-b-$$" full --tag daily >/dev/null
wait_for 60 "the multipart upload to start" upload_exists
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
pid=
orphan=$(uploads)
[[ -n $orphan ]] || fail "no multipart upload in progress after kill -9"
assert_not_contains "$(state_of "full-b-$$")" "completed"
start_worker "$work/kill2.log"
wait_for 60 "the redelivered backup to complete" is_completed "full-b-$$"
assert_contains "$(cat "$work/kill2.log")" "1 interrupted uploads under"
check_backup "full-b-$$"
kill -TERM "$pid"
wait "$pid" || fail "catalyst-backup did not stop cleanly"
pid=

touch "$work/done"
echo "test_backup_faults: ok"
