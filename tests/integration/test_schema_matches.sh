#!/usr/bin/env bash
# The compiled-in schema (common/cat_schema.c, printed by schema-dump) and
# the schema migrations/ create are the same: every column of the five record
# tables, with its type as format_type() prints it, and the NOT NULL columns;
# after migration 1 alone, and after all of them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

migrate=$CATALYST_BIN_DIR/catalyst-migrate
dump=$CATALYST_BIN_DIR/schema-dump
[[ -x $migrate ]] || fail "$migrate not built"
[[ -x $dump ]] || fail "$dump not built"
work=$(mktemp -d)
on_exit "rm -rf '$work'"
export CATALYST_MIGRATIONS_DIR=$CATALYST_SOURCE_DIR/migrations

tables="'news_raw','trading_candidates','trading_signals','trade_records','source_metrics'"

# db_columns: "table column type" of the record tables, as the database has them
db_columns() {
	psql_at "$SCRATCH_PG_URL" "
		SELECT c.relname || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname IN ($tables)
		  AND a.attnum > 0 AND NOT a.attisdropped"
}

# db_not_null: "table column" of the NOT NULL columns (primary keys included)
db_not_null() {
	psql_at "$SCRATCH_PG_URL" "
		SELECT c.relname || ' ' || a.attname
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname IN ($tables)
		  AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull"
}

# same WHAT EXPECTED-FILE ACTUAL-FILE: both sorted, no difference
same() {
	sort "$2" >"$2.sorted"
	sort "$3" >"$3.sorted"
	if ! diff -u "$2.sorted" "$3.sorted" >"$work/diff"; then
		cat "$work/diff" >&2
		fail "$1: schema-dump (-) and the database (+) differ"
	fi
}

scratch_db schema_matches
export CATALYST_PG_URL=$SCRATCH_PG_URL

# --- migration 1 alone: the columns with since_version 1 ----------------------------
"$migrate" up --to 1 >/dev/null
"$dump" --version 1 >"$work/want1"
db_columns >"$work/have1"
[[ -s $work/want1 ]] || fail "schema-dump --version 1 printed nothing"
same "after migration 1" "$work/want1" "$work/have1"

# --- every migration ------------------------------------------------------------------
"$migrate" up >/dev/null
"$dump" >"$work/want"
db_columns >"$work/have"
assert_eq 57 "$(wc -l <"$work/want")" "columns in schema-dump"
same "after every migration" "$work/want" "$work/have"

"$dump" --not-null >"$work/want_nn"
db_not_null >"$work/have_nn"
same "NOT NULL columns" "$work/want_nn" "$work/have_nn"

echo "schema-dump and the migrated database agree: $(wc -l <"$work/want") columns, 5 tables"
