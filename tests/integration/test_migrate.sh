#!/usr/bin/env bash
# catalyst-migrate against the stack's PostgreSQL primary, each case on a
# fresh scratch database: bad configuration and usage, up/down/--to, the
# schema it creates, checksum drift, broken migration sets, four concurrent
# runs, a no-transaction migration, a failing migration rolled back, and the
# HTTP server (/api/migrations, token, probes, metrics, SIGTERM; its faults:
# tests/fault/test_migrate_serve_faults.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

migrate=$CATALYST_BIN_DIR/catalyst-migrate
[[ -x $migrate ]] || fail "$migrate not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations
export CATALYST_MIGRATE_LOCK_TIMEOUT_S=60
pg_password=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).password or "")' \
	"$LIB_ADMIN_PG_URL")

# json_get JSON PYTHON-EXPR: evaluates EXPR on the parsed document `d`.
json_get() {
	python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

current_version() {
	run "$migrate" status --json
	assert_eq 0 "$rc" "status --json: $err"
	json_get "$out" 'd["current_version"]'
}

# --- bad configuration and usage -----------------------------------------------
scratch_db migrate
db=$SCRATCH_PG_URL
export CATALYST_PG_URL=$db

run env -u CATALYST_PG_URL "$migrate" status
assert_eq 2 "$rc" "status without CATALYST_PG_URL"
assert_eq "catalyst-migrate: CATALYST_PG_URL: required but not set" "$err" "its error"

run env CATALYST_PG_URL="not a url" "$migrate" up
assert_eq 2 "$rc" "up with a malformed CATALYST_PG_URL"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "CATALYST_PG_URL: not a valid PostgreSQL connection string"

run env -u CATALYST_MIGRATE_TOKEN "$migrate" serve
assert_eq 2 "$rc" "serve without CATALYST_MIGRATE_TOKEN"
assert_eq "catalyst-migrate: CATALYST_MIGRATE_TOKEN: required for serve but not set" "$err" "its error"

run env CATALYST_MIGRATE_LOCK_TIMEOUT_S=soon "$migrate" up
assert_eq 2 "$rc" "malformed lock timeout"
assert_contains "$err" "CATALYST_MIGRATE_LOCK_TIMEOUT_S: must be an integer"

run env CATALYST_MIGRATIONS_DIR="$work/nowhere" "$migrate" up
assert_eq 2 "$rc" "missing migrations directory"
assert_contains "$err" "CATALYST_MIGRATIONS_DIR"

for args in "" "frobnicate" "down" "down x" "down 0" "up --to" "up --to two" "status --yaml" "validate now"; do
	# shellcheck disable=SC2086
	run "$migrate" $args
	assert_eq 2 "$rc" "usage error for [$args]"
	assert_eq 1 "$(error_lines "$err")" "one line for [$args]: $err"
done
run "$migrate" up --to 5
assert_eq 2 "$rc" "up --to past the latest migration"
assert_contains "$err" "up --to 5: no such migration, the latest is 4"

run "$migrate" --help
assert_eq 0 "$rc" "--help"
for name in CATALYST_PG_URL CATALYST_MIGRATIONS_DIR CATALYST_MIGRATE_LOCK_TIMEOUT_S CATALYST_MIGRATE_PORT \
	CATALYST_MIGRATE_BIND CATALYST_MIGRATE_TOKEN CATALYST_MIGRATE_STATUS_REFRESH_S CATALYST_HTTP_MAX_CONNECTIONS \
	CATALYST_HTTP_MAX_CONNECTIONS_PER_IP CATALYST_HTTP_TIMEOUT_S CATALYST_HTTP_THREADS; do
	assert_contains "$out" "$name" "--help"
done

wrong_url=$(python3 -c '
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u._replace(netloc="%s:%s@%s:%d" % (u.username, "wrong-pw-" + sys.argv[2], u.hostname, u.port)).geturl())' \
	"$db" "$RANDOM")
run env CATALYST_PG_URL="$wrong_url" "$migrate" up
assert_eq 1 "$rc" "up with a wrong password"
assert_eq 1 "$(error_lines "$err")" "one line: $err"
assert_contains "$err" "password authentication failed"
assert_not_contains "$err" "wrong-pw-" "the error"

run env CATALYST_PG_URL="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2" "$migrate" status
assert_eq 1 "$rc" "status with PostgreSQL down"
assert_contains "$err" "could not connect to PostgreSQL"

# --- up on a fresh database --------------------------------------------------------
run "$migrate" up
assert_eq 0 "$rc" "up: $err"
assert_eq 4 "$(grep -c '"applied migration ' "$work/err")" "applied lines"
assert_contains "$err" "applied migration 0001_initial_schema in "
assert_contains "$err" "applied migration 0002_add_source_alignment in "
assert_contains "$err" "applied migration 0003_tombstones_and_checks in "
assert_contains "$err" "applied migration 0004_dlq_replays in "
run "$migrate" status --json
assert_eq 0 "$rc" "status --json"
assert_eq "4 4 0" "$(json_get "$out" '"%d %d %d" % (d["current_version"], d["latest_version"], d["pending"])')" "versions"
assert_eq "True True True True" "$(json_get "$out" '" ".join(str(m["applied"] and m["checksum_ok"]) for m in d["migrations"])')" "applied, checksums ok"
assert_eq "initial_schema" "$(json_get "$out" 'd["migrations"][0]["name"]')" "first name"
assert_eq "$(sha256sum "$CATALYST_MIGRATIONS_DIR/0001_initial_schema.up.sql" | cut -d' ' -f1)" \
	"$(json_get "$out" 'd["migrations"][0]["checksum"]')" "checksum is the up file's sha256"

run "$migrate" status
assert_eq 0 "$rc" "status"
assert_contains "$out" "0002     add_source_alignment"
assert_contains "$out" "0003     tombstones_and_checks"
assert_contains "$out" "0004     dlq_replays"
assert_contains "$out" "schema version 4 of 4, 0 pending"

tables="backup_catalog backup_watermarks dlq_replays news_raw row_tombstones source_metrics trade_records trading_candidates trading_signals"
table_list="SELECT string_agg(table_name, ' ' ORDER BY table_name) FROM information_schema.tables
	WHERE table_schema = 'public' AND table_name <> 'schema_migrations'"
assert_eq "$tables" "$(psql_at "$db" "$table_list")" "tables after up"

columns() {
	psql_at "$db" "SELECT string_agg(column_name || ':' || CASE WHEN data_type = 'character varying'
		THEN 'varchar(' || character_maximum_length || ')' ELSE data_type END
		|| CASE WHEN is_nullable = 'NO' THEN ':not null' ELSE '' END, ' ' ORDER BY ordinal_position)
		FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '$1'"
}
assert_eq "news_id:varchar(128):not null symbol:varchar(10):not null headline:varchar(1000) \
source:varchar(128) url:varchar(2048) published_timestamp:timestamp with time zone \
collected_timestamp:timestamp with time zone content_snippet:varchar(4000) sentiment_score:double precision \
catalyst_score:double precision is_pre_market:boolean version:bigint:not null source_tier:integer \
confirmation_status:varchar(32) narrative_cluster_id:varchar(128)" "$(columns news_raw)" "news_raw columns"
assert_eq "candidate_id:varchar(128):not null symbol:varchar(10):not null \
selection_timestamp:timestamp with time zone catalyst_score:double precision technical_score:double precision \
combined_score:double precision primary_catalyst:varchar(256) news_count:integer traded:boolean \
version:bigint:not null" "$(columns trading_candidates)" "trading_candidates columns"
assert_eq "signal_id:varchar(128):not null candidate_id:varchar(128) symbol:varchar(10):not null \
signal_type:varchar(16) confidence:double precision entry_price:double precision stop_loss:double precision \
take_profit:double precision generated_timestamp:timestamp with time zone \
expires_timestamp:timestamp with time zone version:bigint:not null" "$(columns trading_signals)" \
	"trading_signals columns"
assert_eq "trade_id:varchar(128):not null signal_id:varchar(128) symbol:varchar(10):not null \
entry_news_id:varchar(128) side:varchar(16) quantity:bigint entry_price:double precision \
exit_price:double precision entry_timestamp:timestamp with time zone exit_timestamp:timestamp with time zone \
pnl_amount:double precision pnl_percentage:double precision exit_reason:varchar(256) version:bigint:not null" \
	"$(columns trade_records)" "trade_records columns"
assert_eq "source_name:varchar(128):not null total_articles:bigint accurate_predictions:bigint \
accuracy_rate:double precision avg_price_impact:double precision last_updated:timestamp with time zone \
version:bigint:not null" "$(columns source_metrics)" "source_metrics columns"
assert_contains "$(columns backup_catalog)" "tables:ARRAY" "backup_catalog"
assert_contains "$(columns backup_catalog)" "row_counts:jsonb" "backup_catalog"
assert_contains "$(columns backup_catalog)" "started_at:timestamp with time zone:not null" "backup_catalog"
assert_eq "table_name:text:not null last_version:bigint:not null backup_id:text \
updated_at:timestamp with time zone" "$(columns backup_watermarks)" "backup_watermarks columns"
assert_eq "table_name:text:not null pk:text:not null version:bigint:not null \
deleted_at:timestamp with time zone:not null" "$(columns row_tombstones)" "row_tombstones columns"
assert_eq "table_name pk" "$(psql_at "$db" "SELECT string_agg(a.attname, ' ' ORDER BY a.attnum) FROM pg_index i
	JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
	WHERE i.indrelid = 'row_tombstones'::regclass AND i.indisprimary")" "row_tombstones primary key"
assert_eq "dlq_topic:text:not null dlq_partition:integer:not null dlq_offset:bigint:not null \
source_topic:text:not null source_partition:integer:not null source_offset:bigint:not null reason:text \
replayed_partition:integer:not null replayed_offset:bigint:not null \
replayed_at:timestamp with time zone:not null replayed_by:text:not null" "$(columns dlq_replays)" \
	"dlq_replays columns"
assert_eq "version:integer:not null name:text:not null checksum:text:not null \
applied_at:timestamp with time zone:not null execution_ms:bigint:not null" "$(columns schema_migrations)" \
	"schema_migrations columns"

assert_eq "5 unconfirmed false false" "$(psql_at "$db" "INSERT INTO news_raw (news_id, symbol, version) VALUES ('n1', 'AAPL', 1)
	RETURNING source_tier || ' ' || confirmation_status || ' ' || is_pre_market || ' ' || (headline IS NOT NULL)")" \
	"news_raw defaults"
run psql_at "$db" "INSERT INTO backup_catalog (backup_id, kind, state) VALUES ('b1', 'weekly', 'running')"
[[ $rc != 0 ]] || fail "backup_catalog accepted kind 'weekly'"
assert_eq "idx_backup_catalog_state idx_backup_catalog_tag_finished idx_candidates_catalyst_score \
idx_candidates_selection idx_dlq_replays_source idx_news_pre_market_published idx_news_source_tier idx_news_symbol_published \
idx_trade_records_entry_news" "$(psql_at "$db" "SELECT string_agg(indexname, ' ' ORDER BY indexname)
	FROM pg_indexes WHERE schemaname = 'public' AND indexname LIKE 'idx_%'")" "indexes"
assert_eq "0" "$(psql_at "$db" "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")" "no foreign keys"

# 0003's domain checks: what they refuse (SQLSTATE 23514), and that in-range values and NULL pass
record_checks="SELECT string_agg(conname, ' ' ORDER BY conname) FROM pg_constraint WHERE contype = 'c'
	AND conrelid::regclass::text IN ('news_raw', 'trading_candidates', 'trading_signals', 'trade_records',
	'source_metrics')"
assert_eq "news_raw_catalyst_score_check news_raw_sentiment_score_check source_metrics_accuracy_rate_check \
trade_records_quantity_check trade_records_side_check trading_candidates_catalyst_score_check \
trading_signals_confidence_check trading_signals_signal_type_check" "$(psql_at "$db" "$record_checks")" "check constraints"
for bad in "trading_signals (signal_id, symbol, signal_type, version) VALUES ('s1', 'AAPL', 'hold', 1)" \
	"trading_signals (signal_id, symbol, confidence, version) VALUES ('s1', 'AAPL', 1.5, 1)" \
	"trade_records (trade_id, symbol, side, version) VALUES ('t1', 'AAPL', 'flat', 1)" \
	"trade_records (trade_id, symbol, quantity, version) VALUES ('t1', 'AAPL', 0, 1)" \
	"news_raw (news_id, symbol, sentiment_score, version) VALUES ('n2', 'AAPL', -1.5, 1)" \
	"news_raw (news_id, symbol, catalyst_score, version) VALUES ('n2', 'AAPL', 1.01, 1)" \
	"trading_candidates (candidate_id, symbol, catalyst_score, version) VALUES ('c1', 'AAPL', -0.1, 1)" \
	"source_metrics (source_name, accuracy_rate, version) VALUES ('s', 2, 1)"; do
	run psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "INSERT INTO $bad"
	[[ $rc != 0 ]] || fail "accepted: INSERT INTO $bad"
	assert_contains "$err" "violates check constraint" "refusing $bad"
done
for good in "trading_signals (signal_id, symbol, signal_type, confidence, version) VALUES ('s1', 'A', 'sell', 0, 1)" \
	"trade_records (trade_id, symbol, side, quantity, version) VALUES ('t1', 'A', 'short', 1, 1)" \
	"news_raw (news_id, symbol, sentiment_score, catalyst_score, version) VALUES ('n2', 'A', -1, 1, 1)" \
	"trading_candidates (candidate_id, symbol, catalyst_score, version) VALUES ('c1', 'A', NULL, 1)" \
	"source_metrics (source_name, accuracy_rate, version) VALUES ('s', 1, 1)"; do
	run psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "INSERT INTO $good"
	assert_eq 0 "$rc" "INSERT INTO $good: $err"
done

# a worker needing schema 4 may start; the applied rows are there
run "$migrate" up
assert_eq 0 "$rc" "up again"
assert_contains "$err" "nothing to apply: schema version 4"
run "$migrate" validate
assert_eq 0 "$rc" "validate: $err"

# --- down, up --to --------------------------------------------------------------------
run "$migrate" down 5
assert_eq 1 "$rc" "down 5 with 4 applied"
assert_contains "$err" "cannot revert 5 migrations: 4 are applied"

run "$migrate" down 4
assert_eq 0 "$rc" "down 4: $err"
assert_contains "$err" "reverted migration 0004_dlq_replays in "
assert_contains "$err" "reverted migration 0003_tombstones_and_checks in "
assert_contains "$err" "reverted migration 0002_add_source_alignment in "
assert_eq "" "$(psql_at "$db" "$table_list")" "tables after down 4"
assert_eq "0" "$(psql_at "$db" "SELECT count(*) FROM schema_migrations")" "schema_migrations rows after down 4"
assert_eq 0 "$(current_version)" "version after down 4"

run "$migrate" up
assert_eq 0 "$rc" "up after down 4: $err"
assert_eq 4 "$(current_version)" "version after up"

run "$migrate" down 1
assert_eq 0 "$rc" "down 1 from 4: $err"
assert_eq 3 "$(current_version)" "version after down 1 from 4"
assert_eq "" "$(psql_at "$db" "SELECT to_regclass('dlq_replays')")" "dlq_replays gone"
assert_eq "row_tombstones" "$(psql_at "$db" "SELECT to_regclass('row_tombstones')")" "row_tombstones kept"

run "$migrate" down 1
assert_eq 0 "$rc" "down 1 from 3: $err"
assert_eq 2 "$(current_version)" "version after down 1 from 3"
assert_eq "" "$(psql_at "$db" "SELECT to_regclass('row_tombstones')")" "row_tombstones gone"
assert_eq "" "$(psql_at "$db" "$record_checks")" "0003 checks gone"

run "$migrate" down 1
assert_eq 0 "$rc" "down 1: $err"
assert_eq 1 "$(current_version)" "version after down 1"
assert_eq "0" "$(psql_at "$db" "SELECT count(*) FROM information_schema.columns WHERE table_name = 'news_raw'
	AND column_name IN ('source_tier', 'confirmation_status', 'narrative_cluster_id')")" "0002 columns gone"
assert_eq "" "$(psql_at "$db" "SELECT indexname FROM pg_indexes WHERE indexname = 'idx_news_source_tier'")" \
	"0002 index gone"
run "$migrate" up --to 1
assert_eq 0 "$rc" "up --to 1 at version 1"
assert_eq 1 "$(current_version)" "still version 1"
run "$migrate" down 1
assert_eq 0 "$rc" "down 1 to 0"
run "$migrate" up --to 1
assert_eq 0 "$rc" "up --to 1: $err"
assert_eq 1 "$(grep -c '"applied migration ' "$work/err")" "one applied"
assert_eq 1 "$(current_version)" "version after up --to 1"
run "$migrate" status --json
assert_eq "3 False" "$(json_get "$out" '"%d %s" % (d["pending"], d["migrations"][1]["applied"])')" "0002 pending"
run "$migrate" up --to=2
assert_eq 0 "$rc" "up --to=2: $err"
assert_eq 2 "$(current_version)" "version after up --to=2"
run "$migrate" up
assert_eq 0 "$rc" "up from 2: $err"
assert_eq 4 "$(current_version)" "version after up from 2"

# --- drift: an applied file changed or missing -------------------------------------------
cp -r "$CATALYST_MIGRATIONS_DIR" "$work/changed"
echo "-- an edit after the fact" >>"$work/changed/0001_initial_schema.up.sql"
for cmd in validate up "down 1"; do
	# shellcheck disable=SC2086
	run env CATALYST_MIGRATIONS_DIR="$work/changed" "$migrate" $cmd
	assert_eq 1 "$rc" "$cmd with a changed applied file"
	assert_contains "$err" "migration 0001_initial_schema.up.sql: checksum changed since it was applied (recorded "
done
assert_eq 4 "$(current_version)" "nothing reverted"
run env CATALYST_MIGRATIONS_DIR="$work/changed" "$migrate" status --json
assert_eq 0 "$rc" "status shows drift"
assert_eq "False True True True" "$(json_get "$out" '" ".join(str(m["checksum_ok"]) for m in d["migrations"])')" "checksum_ok"

mkdir "$work/older"
cp "$CATALYST_MIGRATIONS_DIR"/0001_* "$work/older/"
run env CATALYST_MIGRATIONS_DIR="$work/older" "$migrate" validate
assert_eq 1 "$rc" "validate with an applied migration's file missing"
assert_contains "$err" "migration 0002_add_source_alignment was applied but its file 0002_add_source_alignment.up.sql is missing"

# --- broken migration sets --------------------------------------------------------
mkdir "$work/gap"
cp "$CATALYST_MIGRATIONS_DIR"/0001_* "$work/gap/"
printf 'SELECT 1;\n' >"$work/gap/0003_later.up.sql"
printf 'SELECT 1;\n' >"$work/gap/0003_later.down.sql"
run env CATALYST_MIGRATIONS_DIR="$work/gap" "$migrate" validate
assert_eq 1 "$rc" "validate with a gap"
assert_contains "$err" "migration 0002 is missing"

mkdir "$work/nodown"
cp "$CATALYST_MIGRATIONS_DIR"/* "$work/nodown/"
rm "$work/nodown/0002_add_source_alignment.down.sql"
run env CATALYST_MIGRATIONS_DIR="$work/nodown" "$migrate" validate
assert_eq 1 "$rc" "validate without a down file"
assert_contains "$err" "migration 0002_add_source_alignment.up.sql has no down file"

mkdir "$work/badname"
cp "$CATALYST_MIGRATIONS_DIR"/* "$work/badname/"
printf 'SELECT 1;\n' >"$work/badname/3_Bad.up.sql"
run env CATALYST_MIGRATIONS_DIR="$work/badname" "$migrate" validate
assert_eq 1 "$rc" "validate with a misnamed file"
assert_contains "$err" "migration file 3_Bad.up.sql: name must be NNNN_name.up.sql"

mkdir "$work/commit"
cp "$CATALYST_MIGRATIONS_DIR"/* "$work/commit/"
printf 'CREATE TABLE t3 (a int);\nCOMMIT;\n' >"$work/commit/0005_commits.up.sql"
printf 'DROP TABLE t3;\n' >"$work/commit/0005_commits.down.sql"
run env CATALYST_MIGRATIONS_DIR="$work/commit" "$migrate" validate
assert_eq 1 "$rc" "validate with transaction control"
assert_contains "$err" "migration 0005_commits.up.sql: COMMIT at line 2"

# --- a failing migration is rolled back whole ------------------------------------------
mkdir "$work/failing"
cp "$CATALYST_MIGRATIONS_DIR"/* "$work/failing/"
printf 'CREATE TABLE half_done (a int);\n\nSELECT no_such_column FROM half_done;\n' \
	>"$work/failing/0005_fails.up.sql"
printf 'DROP TABLE half_done;\n' >"$work/failing/0005_fails.down.sql"
run env CATALYST_MIGRATIONS_DIR="$work/failing" "$migrate" up
assert_eq 1 "$rc" "up with a failing migration"
assert_contains "$err" "migration 0005_fails.up.sql: could not execute script: column \\\"no_such_column\\\" does not exist at line 3 (SQLSTATE 42703)"
assert_eq "" "$(psql_at "$db" "SELECT to_regclass('half_done')")" "half_done rolled back"
assert_eq 4 "$(current_version)" "version after the failed migration"

# --- no-transaction migrations: CREATE INDEX CONCURRENTLY ----------------------------
mkdir "$work/concurrent"
cp "$CATALYST_MIGRATIONS_DIR"/* "$work/concurrent/"
cat >"$work/concurrent/0005_concurrent_index.up.sql" <<'EOF'
-- catalyst:no-transaction
-- built without blocking writers; each statement runs on its own
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_test_news_url ON news_raw (url);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_test_trades_exit ON trade_records (exit_timestamp);
EOF
cat >"$work/concurrent/0005_concurrent_index.down.sql" <<'EOF'
-- catalyst:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS idx_test_trades_exit;
DROP INDEX CONCURRENTLY IF EXISTS idx_test_news_url;
EOF
cp -r "$work/concurrent" "$work/concurrent_tx"
sed -i 1d "$work/concurrent_tx/0005_concurrent_index.up.sql"
run env CATALYST_MIGRATIONS_DIR="$work/concurrent_tx" "$migrate" up
assert_eq 1 "$rc" "CREATE INDEX CONCURRENTLY in a transaction"
assert_contains "$err" "cannot run inside a transaction block"

run env CATALYST_MIGRATIONS_DIR="$work/concurrent" "$migrate" up
assert_eq 0 "$rc" "up with a no-transaction migration: $err"
assert_contains "$err" "applied migration 0005_concurrent_index in "
assert_eq "idx_test_news_url:true idx_test_trades_exit:true" "$(psql_at "$db" "SELECT string_agg(c.relname || ':' ||
	i.indisvalid, ' ' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	WHERE c.relname LIKE 'idx_test_%'")" "concurrent indexes valid"
run env CATALYST_MIGRATIONS_DIR="$work/concurrent" "$migrate" status --json
assert_eq 5 "$(json_get "$out" 'd["current_version"]')" "version 5"
run env CATALYST_MIGRATIONS_DIR="$work/concurrent" "$migrate" down 1
assert_eq 0 "$rc" "down a no-transaction migration: $err"
assert_eq "0" "$(psql_at "$db" "SELECT count(*) FROM pg_class WHERE relname LIKE 'idx_test_%'")" "indexes dropped"
assert_eq 4 "$(current_version)" "version after down"

# --- four concurrent runs on a fresh database ----------------------------------------
scratch_db migrate_race
race_db=$SCRATCH_PG_URL
pids=()
for i in 1 2 3 4; do
	CATALYST_PG_URL=$race_db "$migrate" up >"$work/race$i.out" 2>"$work/race$i.err" &
	pids+=($!)
done
for i in 1 2 3 4; do
	set +e
	wait "${pids[$((i - 1))]}"
	race_rc=$?
	set -e
	assert_eq 0 "$race_rc" "concurrent up #$i: $(cat "$work/race$i.err")"
done
cat "$work"/race*.err >>"$work/all.log"
assert_eq 4 "$(cat "$work"/race*.err | grep -c '"applied migration ')" "applied lines across four runs"
assert_eq 1 "$(cat "$work"/race*.err | grep -c '"applied migration 0001_initial_schema in ')" "0001 once"
assert_eq "1 2 3 4" "$(psql_at "$race_db" "SELECT string_agg(version::text, ' ' ORDER BY version) FROM schema_migrations")" \
	"schema_migrations rows"

# a run that cannot get the lock in time gives up with a clear message
psql -X -q -d "$race_db" -c "SELECT pg_advisory_lock(7161132844276347764)" -c "SELECT pg_sleep(60)" \
	>/dev/null 2>&1 &
holder=$!
on_exit "kill $holder 2>/dev/null"
lock_held() {
	[[ $(psql_at "$race_db" "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == 1 ]]
}
wait_for 10 "the lock holder" lock_held
started=$SECONDS
run env CATALYST_PG_URL="$race_db" CATALYST_MIGRATE_LOCK_TIMEOUT_S=2 "$migrate" up
assert_eq 1 "$rc" "up while another holds the lock"
assert_contains "$err" "could not take the migration lock within 2 s"
((SECONDS - started < 15)) || fail "lock timeout took $((SECONDS - started)) s"
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true

# --- serve ------------------------------------------------------------------------------
scratch_db migrate_serve
serve_db=$SCRATCH_PG_URL
token="test-token-$RANDOM$RANDOM"
CATALYST_PG_URL=$serve_db CATALYST_MIGRATE_TOKEN=$token CATALYST_MIGRATE_PORT=0 CATALYST_MIGRATE_BIND=127.0.0.1 \
	"$migrate" serve >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
on_exit "kill $serve_pid 2>/dev/null"
wait_for 20 "catalyst-migrate serve to listen" grep -q '"port":' "$work/serve.err"
port=$(grep -o '"port":[0-9]*' "$work/serve.err" | head -1 | cut -d: -f2)
base="http://127.0.0.1:$port"

# http METHOD PATH [curl args...]: sets code and body
http() {
	local method=$1 path=$2
	shift 2
	code=$(curl -s -o "$work/body" -w '%{http_code}' -X "$method" "$@" "$base$path")
	body=$(cat "$work/body")
}

http GET /healthz
assert_eq "200 ok" "$code $body" "/healthz"
http GET /readyz
assert_eq 503 "$code" "/readyz with migrations pending"
assert_contains "$body" "4 migrations pending"
http GET /api/migrations
assert_eq 401 "$code" "GET /api/migrations without a token"
assert_not_contains "$body" "checksum" "the 401 body"
http GET /api/migrations -H "Authorization: Bearer wrong-$token"
assert_eq 401 "$code" "GET /api/migrations with a wrong token"
http GET /api/migrations -H "Authorization: Bearer $token"
assert_eq 200 "$code" "GET /api/migrations with the token"
assert_eq "0 4 4" "$(json_get "$body" '"%d %d %d" % (d["current_version"], d["latest_version"], d["pending"])')" \
	"status before up"
http POST /api/migrations/up
assert_eq 401 "$code" "POST up without a token"
assert_eq "missing or wrong bearer token" "$(json_get "$body" 'd["error"]')" "401 body"
http POST /api/migrations/up -H "Authorization: Bearer wrong-$token"
assert_eq 401 "$code" "POST up with a wrong token"
http POST /api/migrations/up -H "Authorization: Basic $token"
assert_eq 401 "$code" "POST up with another scheme"
assert_eq 0 "$(psql_at "$serve_db" "SELECT count(*) FROM pg_tables WHERE tablename = 'news_raw'")" "nothing applied"
http POST /api/migrations/up -H "Authorization: Bearer $token"
assert_eq 200 "$code" "POST up with the token: $body"
assert_eq "4 0" "$(json_get "$body" '"%d %d" % (d["current_version"], d["pending"])')" "status after up"
http POST /api/migrations/up -H "Authorization: Bearer $token"
assert_eq 200 "$code" "POST up again"
http GET /readyz
assert_eq "200 ready" "$code $body" "/readyz when current"
http GET /api/migrations/up
assert_eq 405 "$code" "GET on the POST route"
http GET /nope
assert_eq 404 "$code" "unknown path"
http GET /metrics
assert_eq 200 "$code" "/metrics"
assert_contains "$body" $'\ncatalyst_migrate_schema_version 4\n'
assert_contains "$body" $'\ncatalyst_migrate_pending 0\n'
assert_contains "$body" 'catalyst_migrate_runs_total{result="success"} 2'
assert_contains "$body" 'catalyst_migrate_runs_total{result="failure"} 0'
assert_contains "$body" "catalyst_migrate_last_run_duration_seconds "
assert_contains "$body" $'\ncatalyst_migrate_up 1'
assert_contains "$body" "process_resident_memory_bytes"

kill -TERM "$serve_pid"
set +e
wait "$serve_pid"
serve_rc=$?
set -e
assert_eq 0 "$serve_rc" "serve exit code after SIGTERM: $(tail -3 "$work/serve.err")"
cat "$work/serve.out" "$work/serve.err" >>"$work/all.log"
assert_contains "$(cat "$work/serve.err")" "refused POST /api/migrations/up: missing or wrong bearer token"

# --- every log line is JSON; no secret was ever printed ------------------------------------
grep '^{' "$work/all.log" | python3 -c 'import json, sys; [json.loads(l) for l in sys.stdin]' ||
	fail "a log line is not JSON"
[[ -z $pg_password ]] || assert_not_contains "$(cat "$work/all.log")" "$pg_password" "the output"
assert_not_contains "$(cat "$work/all.log")" "$token" "the output"
echo "ok: catalyst-migrate"
