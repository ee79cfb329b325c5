/*
 * cat_sql: the statements built from the compiled-in schema (parameters
 * only, names only from the allow-list), the binary array parameters and
 * the binary COPY rows, without a database.
 */
#include <check.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_schema.h"
#include "cat_sql.h"
#include "catalyst/v1/records.pb-c.h"

#define PG_EPOCH_US INT64_C(946684800000000) /* 2000-01-01 in Unix µs */

static char errstr[512];

static const char *pg_type(cat_col_type_t type)
{
	switch (type) {
	case CAT_COL_TEXT:
		return "text";
	case CAT_COL_INT32:
		return "integer";
	case CAT_COL_INT64:
		return "bigint";
	case CAT_COL_DOUBLE:
		return "double precision";
	case CAT_COL_BOOL:
		return "boolean";
	case CAT_COL_TIMESTAMP:
		return "timestamptz";
	}
	return "?";
}

/* The highest $n of `sql`; fails unless $1..$n all occur. */
static int params_of(const char *sql)
{
	bool seen[64] = {false};
	int highest = 0;

	for (const char *c = strchr(sql, '$'); c; c = strchr(c + 1, '$')) {
		int n = atoi(c + 1);

		ck_assert_msg(n >= 1 && n < 64, "bad parameter in %s", sql);
		seen[n] = true;
		highest = n > highest ? n : highest;
	}
	for (int n = 1; n <= highest; n++)
		ck_assert_msg(seen[n], "$%d missing in %s", n, sql);
	return highest;
}

/* Names the statements may use besides the table's and its columns'. */
static const char *const vocabulary[] = {
	"t",	   "u",		 "d",	      "r",	 "row_tombstones", "table_name",   "pk",
	"version", "deleted_at", "tombstone", "now",	 "unnest",	   "text",	   "bigint",
	"integer", "double",	 "precision", "boolean", "timestamptz",	   "cat_sql_copy", "binary",
};

static bool allowed_name(const cat_table_t *table, const char *name, size_t len)
{
	if (strlen(table->name) == len && memcmp(table->name, name, len) == 0)
		return true;
	for (size_t i = 0; i < table->n_columns; i++)
		if (strlen(table->columns[i].name) == len && memcmp(table->columns[i].name, name, len) == 0)
			return true;
	for (size_t i = 0; i < sizeof(vocabulary) / sizeof(vocabulary[0]); i++)
		if (strlen(vocabulary[i]) == len && memcmp(vocabulary[i], name, len) == 0)
			return true;
	return false;
}

/* Every lower-case name of `sql` (keywords are upper case) is the table's,
 * a column's or of the fixed vocabulary; every quoted literal is the
 * table's name; no value is spliced in. */
static void check_names(const cat_table_t *table, const char *what, const char *sql)
{
	for (const char *c = sql; *c;) {
		if (*c == '\'') {
			const char *end = strchr(c + 1, '\'');

			ck_assert_msg(end, "%s.%s: unterminated literal", table->name, what);
			ck_assert_msg((size_t)(end - c - 1) == strlen(table->name) &&
					      memcmp(c + 1, table->name, strlen(table->name)) == 0,
				      "%s.%s: literal %.*s", table->name, what, (int)(end - c + 1), c);
			c = end + 1;
		} else if (islower((unsigned char)*c) || *c == '_') {
			const char *start = c;

			while (islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '_')
				c++;
			ck_assert_msg(allowed_name(table, start, (size_t)(c - start)), "%s.%s: name %.*s",
				      table->name, what, (int)(c - start), start);
		} else if (isupper((unsigned char)*c) || isdigit((unsigned char)*c)) {
			while (isalnum((unsigned char)*c) || *c == '_')
				c++;
		} else {
			c++;
		}
	}
}

/* "$<i>::<type>[]" for each column, in column order. */
static void check_column_params(const cat_sql_table_t *st, const char *what, const char *sql)
{
	char expected[64];

	for (size_t i = 0; i < st->table->n_columns; i++) {
		snprintf(expected, sizeof(expected), "$%zu::%s[]", i + 1,
			 pg_type(st->table->columns[i].type));
		ck_assert_msg(strstr(sql, expected), "%s.%s: no %s", st->table->name, what, expected);
	}
}

START_TEST(test_statements)
{
	const cat_table_t *table = &cat_schema_tables[_i];
	cat_sql_table_t st;
	char expected[512];
	const char *statements[9];
	const char *names[] = {"upsert", "remove",	 "state",    "tombstoned", "copy",
			       "repair", "remove_extra", "row_text", "columns"};
	size_t n_statements = sizeof(names) / sizeof(names[0]);

	ck_assert_msg(cat_sql_table_init(&st, table, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
	statements[0] = st.upsert;
	statements[1] = st.remove;
	statements[2] = st.state;
	statements[3] = st.tombstoned;
	statements[4] = st.copy;
	statements[5] = st.repair;
	statements[6] = st.remove_extra;
	statements[7] = st.row_text;
	statements[8] = st.columns;
	ck_assert_ptr_eq(st.table, table);
	ck_assert_str_eq(table->columns[st.pk_column].name, table->primary_key);
	ck_assert_str_eq(table->columns[st.version_column].name, "version");
	for (size_t i = 0; i < table->n_columns; i++) {
		ck_assert_ptr_nonnull(st.fields[i]);
		ck_assert_str_eq(st.fields[i]->name, table->columns[i].name);
		ck_assert_int_eq(st.types[i], table->columns[i].type);
	}
	for (size_t s = 0; s < n_statements; s++) {
		ck_assert_msg(statements[s] && statements[s][0], "%s.%s empty", table->name, names[s]);
		check_names(table, names[s], statements[s]);
	}

	/* the column list, in schema order */
	expected[0] = '\0';
	for (size_t i = 0; i < table->n_columns; i++) {
		if (i > 0)
			strcat(expected, ", ");
		strcat(expected, table->columns[i].name);
	}
	ck_assert_str_eq(st.columns, expected);

	/* parameters: one array per column; keys (and versions) */
	ck_assert_int_eq(params_of(st.upsert), (int)table->n_columns);
	ck_assert_int_eq(params_of(st.repair), (int)table->n_columns);
	check_column_params(&st, "upsert", st.upsert);
	check_column_params(&st, "repair", st.repair);
	ck_assert_int_eq(params_of(st.remove), 2);
	ck_assert_int_eq(params_of(st.remove_extra), 2);
	ck_assert_int_eq(params_of(st.state), 1);
	ck_assert_int_eq(params_of(st.tombstoned), 1);
	ck_assert_int_eq(params_of(st.copy), 0);
	ck_assert_int_eq(params_of(st.row_text), 0);
	ck_assert_ptr_nonnull(strstr(st.remove, "$1::text[], $2::bigint[]"));
	ck_assert_ptr_nonnull(strstr(st.remove_extra, "$1::text[], $2::bigint[]"));

	/* the version rules */
	snprintf(expected, sizeof(expected), "INSERT INTO %s AS t (%s)", table->name, st.columns);
	ck_assert_msg(strncmp(st.upsert, expected, strlen(expected)) == 0, "%s", st.upsert);
	ck_assert_msg(strncmp(st.repair, expected, strlen(expected)) == 0, "%s", st.repair);
	ck_assert_ptr_nonnull(strstr(st.upsert, "d.version >= u.version")); /* a tombstone as new skips */
	ck_assert_ptr_nonnull(strstr(st.repair, "d.version >= u.version"));
	snprintf(expected, sizeof(expected), "ON CONFLICT (%s) DO NOTHING", table->primary_key);
	if (table->insert_only) {
		ck_assert_ptr_nonnull(strstr(st.upsert, expected));
		ck_assert_ptr_null(strstr(st.upsert, "DO UPDATE"));
	} else {
		ck_assert_ptr_null(strstr(st.upsert, expected));
		ck_assert_ptr_nonnull(strstr(st.upsert, "WHERE t.version < EXCLUDED.version"));
	}
	/* repair: an equal version too, also in insert-only tables */
	ck_assert_ptr_nonnull(strstr(st.repair, "DO UPDATE SET"));
	ck_assert_ptr_nonnull(strstr(st.repair, "WHERE t.version <= EXCLUDED.version"));
	/* a delete: the highest tombstone stays, a row not newer goes */
	ck_assert_ptr_nonnull(strstr(st.remove, "WHERE r.version < EXCLUDED.version"));
	ck_assert_ptr_nonnull(strstr(st.remove, "t.version <= d.version"));
	ck_assert_ptr_nonnull(strstr(st.remove_extra, "t.version <= d.version"));
	ck_assert_ptr_null(strstr(st.remove_extra, "row_tombstones"));
	snprintf(expected, sizeof(expected), "RETURNING t.%s", table->primary_key);
	ck_assert_ptr_nonnull(strstr(st.upsert, expected));
	ck_assert_ptr_nonnull(strstr(st.repair, expected));
	ck_assert_ptr_nonnull(strstr(st.remove, expected));
	ck_assert_ptr_nonnull(strstr(st.remove_extra, expected));
	snprintf(expected, sizeof(expected),
		 "SAVEPOINT cat_sql_copy; COPY %s (%s) FROM STDIN (FORMAT binary)", table->name, st.columns);
	ck_assert_str_eq(st.copy, expected);
	ck_assert_msg(strncmp(st.row_text, "ROW(t.", 6) == 0, "%s", st.row_text);
	ck_assert_msg(strlen(st.row_text) > 7 &&
			      strcmp(st.row_text + strlen(st.row_text) - 7, ")::text") == 0,
		      "%s", st.row_text);

	cat_sql_table_free(&st);
	ck_assert_ptr_null(st.upsert);
	cat_sql_table_free(&st); /* twice: nothing left */
	cat_sql_table_free(NULL);
}
END_TEST

/* A table the record message or the identifier rules disagree with is
 * refused (a programming error): no name outside the allow-list's rules
 * reaches SQL. */
enum { BAD_TABLE_NAME, BAD_COLUMN_NAME, NO_FIELD, PK_NOT_TEXT, NO_PK, NO_VERSION, N_BAD };

START_TEST(test_refused)
{
	const cat_table_t *base = cat_schema_table("source_metrics");
	cat_column_t columns[32];
	cat_table_t table;
	cat_sql_table_t st;

	ck_assert_ptr_nonnull(base);
	ck_assert_uint_le(base->n_columns, 32);
	memcpy(columns, base->columns, base->n_columns * sizeof(*columns));
	table = *base;
	table.columns = columns;
	switch (_i) {
	case BAD_TABLE_NAME:
		table.name = "source_metrics; DROP TABLE x";
		break;
	case BAD_COLUMN_NAME:
		columns[1].name = "Total_articles";
		break;
	case NO_FIELD:
		columns[1].name = "no_such_field";
		break;
	case PK_NOT_TEXT:
		table.primary_key = "total_articles";
		break;
	case NO_PK:
		table.primary_key = "missing";
		break;
	case NO_VERSION:
		ck_assert_str_eq(columns[table.n_columns - 1].name, "version");
		table.n_columns--;
		break;
	}
	ck_assert_int_eq(cat_sql_table_init(&st, &table, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_msg(errstr[0] != '\0', "no error text");
	ck_assert_ptr_null(st.upsert);
	cat_sql_table_free(&st);
}
END_TEST

static uint32_t be32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;

	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static uint64_t be64(const char *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* PostgreSQL's binary array header: 1 dimension, the null flag, the
 * element type, the length, lower bound 1. */
static void check_array_header(const char *a, bool has_null, uint32_t oid, uint32_t n)
{
	ck_assert_uint_eq(be32(a), 1);
	ck_assert_uint_eq(be32(a + 4), has_null ? 1 : 0);
	ck_assert_uint_eq(be32(a + 8), oid);
	ck_assert_uint_eq(be32(a + 12), n);
	ck_assert_uint_eq(be32(a + 16), 1);
}

START_TEST(test_arrays_keys_versions)
{
	static const cat_col_type_t types[] = {CAT_COL_TEXT, CAT_COL_INT64};
	cat_sql_arrays_t arrays = {0};
	const char *a;

	for (int use = 0; use < 2; use++) { /* memory kept: the second use starts empty too */
		ck_assert(cat_sql_arrays_begin(&arrays, 2, types) == CAT_OK);
		ck_assert(cat_sql_arrays_add_text(&arrays, 0, "ab") == CAT_OK);
		ck_assert(cat_sql_arrays_add_text(&arrays, 0, NULL) == CAT_OK);
		ck_assert(cat_sql_arrays_add_int64(&arrays, 1, -2) == CAT_OK);
		ck_assert(cat_sql_arrays_add_int64(&arrays, 1, INT64_C(1) << 40) == CAT_OK);
		/* a value of the wrong type or column */
		ck_assert(cat_sql_arrays_add_text(&arrays, 1, "x") == CAT_ERR_FATAL);
		ck_assert(cat_sql_arrays_add_int64(&arrays, 0, 1) == CAT_ERR_FATAL);
		ck_assert(cat_sql_arrays_add_text(&arrays, 2, "x") == CAT_ERR_FATAL);
		ck_assert(cat_sql_arrays_add_binary(&arrays, 2, "x", 1) == CAT_ERR_FATAL);
		cat_sql_arrays_finish(&arrays);

		ck_assert_uint_eq(arrays.n_columns, 2);
		ck_assert_int_eq(arrays.formats[0], 1);
		ck_assert_int_eq(arrays.formats[1], 1);
		a = arrays.values[0];
		ck_assert_int_eq(arrays.lengths[0], 20 + 4 + 2 + 4);
		check_array_header(a, true, 25, 2);
		ck_assert_uint_eq(be32(a + 20), 2);
		ck_assert(memcmp(a + 24, "ab", 2) == 0);
		ck_assert_uint_eq(be32(a + 26), UINT32_MAX); /* NULL */
		a = arrays.values[1];
		ck_assert_int_eq(arrays.lengths[1], 20 + 2 * (4 + 8));
		check_array_header(a, false, 20, 2);
		ck_assert_uint_eq(be32(a + 20), 8);
		ck_assert_uint_eq(be64(a + 24), (uint64_t)INT64_C(-2));
		ck_assert_uint_eq(be32(a + 32), 8);
		ck_assert_uint_eq(be64(a + 36), UINT64_C(1) << 40);
	}

	/* no element: an empty array */
	ck_assert(cat_sql_arrays_begin(&arrays, 1, types) == CAT_OK);
	cat_sql_arrays_finish(&arrays);
	ck_assert_int_eq(arrays.lengths[0], 20);
	check_array_header(arrays.values[0], false, 25, 0);

	cat_sql_arrays_shrink(&arrays, 0);
	cat_sql_arrays_free(&arrays);
	cat_sql_arrays_free(&arrays);
	cat_sql_arrays_free(NULL);
}
END_TEST

/* A source_metrics row with an absent column (NULL) and a timestamp. */
static void metric_fill(Catalyst__V1__SourceMetric *m, const char *name)
{
	catalyst__v1__source_metric__init(m);
	m->source_name = (char *)name;
	m->has_total_articles = true;
	m->total_articles = 7;
	m->has_accuracy_rate = true;
	m->accuracy_rate = 0.5;
	m->has_last_updated = true;
	m->last_updated = PG_EPOCH_US + 1;
	m->has_version = true;
	m->version = 3;
	/* accurate_predictions and avg_price_impact absent */
}

START_TEST(test_arrays_row)
{
	const cat_table_t *table = cat_schema_table("source_metrics");
	Catalyst__V1__SourceMetric m;
	cat_sql_arrays_t arrays = {0};
	cat_sql_table_t st;
	double half = 0.5;
	uint64_t half_bits;

	ck_assert(cat_sql_table_init(&st, table, errstr, sizeof(errstr)) == CAT_OK);
	metric_fill(&m, "src");
	ck_assert(cat_sql_arrays_begin(&arrays, table->n_columns, st.types) == CAT_OK);
	ck_assert(cat_sql_arrays_add_row(&arrays, &st, &m.base) == CAT_OK);
	ck_assert(cat_sql_arrays_add_row(&arrays, &st, &m.base) == CAT_OK);
	cat_sql_arrays_finish(&arrays);
	memcpy(&half_bits, &half, sizeof(half_bits));

	for (size_t i = 0; i < table->n_columns; i++) {
		const char *a = arrays.values[i];
		const char *name = table->columns[i].name;
		bool absent =
			strcmp(name, "accurate_predictions") == 0 || strcmp(name, "avg_price_impact") == 0;

		check_array_header(a, absent, be32(a + 8), 2);
		if (absent) {
			ck_assert_uint_eq(be32(a + 20), UINT32_MAX);
			ck_assert_uint_eq(be32(a + 24), UINT32_MAX);
			ck_assert_int_eq(arrays.lengths[i], 28);
		} else if (strcmp(name, "source_name") == 0) {
			ck_assert_uint_eq(be32(a + 8), 25);
			ck_assert_uint_eq(be32(a + 20), 3);
			ck_assert(memcmp(a + 24, "src", 3) == 0);
		} else if (strcmp(name, "total_articles") == 0) {
			ck_assert_uint_eq(be32(a + 8), 20);
			ck_assert_uint_eq(be64(a + 24), 7);
		} else if (strcmp(name, "accuracy_rate") == 0) {
			ck_assert_uint_eq(be32(a + 8), 701);
			ck_assert_uint_eq(be64(a + 24), half_bits);
		} else if (strcmp(name, "last_updated") == 0) {
			ck_assert_uint_eq(be32(a + 8), 1184);
			ck_assert_uint_eq(be64(a + 24), 1); /* µs since 2000-01-01 */
		} else if (strcmp(name, "version") == 0) {
			ck_assert_uint_eq(be64(a + 24), 3);
		}
	}
	ck_assert_str_eq(cat_sql_row_pk(&st, &m.base), "src");
	m.source_name = NULL;
	ck_assert_str_eq(cat_sql_row_pk(&st, &m.base), "");
	cat_sql_arrays_free(&arrays);
	cat_sql_table_free(&st);
}
END_TEST

START_TEST(test_copy_rows)
{
	static const char signature[] = "PGCOPY\n\377\r\n";
	const cat_table_t *table = cat_schema_table("source_metrics");
	Catalyst__V1__SourceMetric m;
	cat_sql_buf_t buf = {0};
	cat_sql_table_t st;
	const char *p;

	ck_assert(cat_sql_table_init(&st, table, errstr, sizeof(errstr)) == CAT_OK);
	metric_fill(&m, "src");
	/* rows only after the header */
	ck_assert(cat_sql_copy_add_row(&buf, &st, &m.base) == CAT_ERR_RETRIABLE);
	for (int use = 0; use < 2; use++) {
		cat_sql_copy_begin(&buf);
		ck_assert_uint_eq(buf.len, 19);
		ck_assert(memcmp(buf.data, signature, 11) == 0);
		ck_assert_uint_eq(be32(buf.data + 11), 0); /* flags */
		ck_assert_uint_eq(be32(buf.data + 15), 0); /* extension */
		ck_assert(cat_sql_copy_add_row(&buf, &st, &m.base) == CAT_OK);
		p = buf.data + 19;
		ck_assert_uint_eq(((unsigned char)p[0] << 8) | (unsigned char)p[1], table->n_columns);
		p += 2;
		for (size_t i = 0; i < table->n_columns; i++) {
			uint32_t len = be32(p);

			p += 4;
			if (len == UINT32_MAX)
				continue;
			if (i == st.pk_column) {
				ck_assert_uint_eq(len, 3);
				ck_assert(memcmp(p, "src", 3) == 0);
			}
			if (i == st.version_column)
				ck_assert_uint_eq(be64(p), 3);
			p += len;
		}
		ck_assert_uint_eq((size_t)(p - buf.data), buf.len);
	}
	free(buf.data);
	cat_sql_table_free(&st);
}
END_TEST

static Suite *sql_suite(void)
{
	Suite *s = suite_create("cat_sql");
	TCase *tc = tcase_create("sql");

	tcase_add_loop_test(tc, test_refused, 0, N_BAD);
	tcase_add_loop_test(tc, test_statements, 0, (int)cat_schema_n_tables);
	tcase_add_test(tc, test_arrays_keys_versions);
	tcase_add_test(tc, test_arrays_row);
	tcase_add_test(tc, test_copy_rows);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(sql_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
