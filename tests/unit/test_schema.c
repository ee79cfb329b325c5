/*
 * cat_schema: the allow-list against the record descriptors and against the
 * columns the migrations create.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cat_schema.h"
#include "catalyst/v1/records.pb-c.h"

/* Every column, as migrations/ create it (and as schema_dump prints it). */
static const struct expected_column {
	const char *table;
	const char *column;
	cat_col_type_t type;
	int max_len;
} expected_columns[] = {
	{"news_raw", "news_id", CAT_COL_TEXT, 128},
	{"news_raw", "symbol", CAT_COL_TEXT, 10},
	{"news_raw", "headline", CAT_COL_TEXT, 1000},
	{"news_raw", "source", CAT_COL_TEXT, 128},
	{"news_raw", "url", CAT_COL_TEXT, 2048},
	{"news_raw", "published_timestamp", CAT_COL_TIMESTAMP, 0},
	{"news_raw", "collected_timestamp", CAT_COL_TIMESTAMP, 0},
	{"news_raw", "content_snippet", CAT_COL_TEXT, 4000},
	{"news_raw", "sentiment_score", CAT_COL_DOUBLE, 0},
	{"news_raw", "catalyst_score", CAT_COL_DOUBLE, 0},
	{"news_raw", "is_pre_market", CAT_COL_BOOL, 0},
	{"news_raw", "source_tier", CAT_COL_INT32, 0},
	{"news_raw", "confirmation_status", CAT_COL_TEXT, 32},
	{"news_raw", "narrative_cluster_id", CAT_COL_TEXT, 128},
	{"news_raw", "version", CAT_COL_INT64, 0},
	{"trading_candidates", "candidate_id", CAT_COL_TEXT, 128},
	{"trading_candidates", "symbol", CAT_COL_TEXT, 10},
	{"trading_candidates", "selection_timestamp", CAT_COL_TIMESTAMP, 0},
	{"trading_candidates", "catalyst_score", CAT_COL_DOUBLE, 0},
	{"trading_candidates", "technical_score", CAT_COL_DOUBLE, 0},
	{"trading_candidates", "combined_score", CAT_COL_DOUBLE, 0},
	{"trading_candidates", "primary_catalyst", CAT_COL_TEXT, 256},
	{"trading_candidates", "news_count", CAT_COL_INT32, 0},
	{"trading_candidates", "traded", CAT_COL_BOOL, 0},
	{"trading_candidates", "version", CAT_COL_INT64, 0},
	{"trading_signals", "signal_id", CAT_COL_TEXT, 128},
	{"trading_signals", "candidate_id", CAT_COL_TEXT, 128},
	{"trading_signals", "symbol", CAT_COL_TEXT, 10},
	{"trading_signals", "signal_type", CAT_COL_TEXT, 16},
	{"trading_signals", "confidence", CAT_COL_DOUBLE, 0},
	{"trading_signals", "entry_price", CAT_COL_DOUBLE, 0},
	{"trading_signals", "stop_loss", CAT_COL_DOUBLE, 0},
	{"trading_signals", "take_profit", CAT_COL_DOUBLE, 0},
	{"trading_signals", "generated_timestamp", CAT_COL_TIMESTAMP, 0},
	{"trading_signals", "expires_timestamp", CAT_COL_TIMESTAMP, 0},
	{"trading_signals", "version", CAT_COL_INT64, 0},
	{"trade_records", "trade_id", CAT_COL_TEXT, 128},
	{"trade_records", "signal_id", CAT_COL_TEXT, 128},
	{"trade_records", "symbol", CAT_COL_TEXT, 10},
	{"trade_records", "entry_news_id", CAT_COL_TEXT, 128},
	{"trade_records", "side", CAT_COL_TEXT, 16},
	{"trade_records", "quantity", CAT_COL_INT64, 0},
	{"trade_records", "entry_price", CAT_COL_DOUBLE, 0},
	{"trade_records", "exit_price", CAT_COL_DOUBLE, 0},
	{"trade_records", "entry_timestamp", CAT_COL_TIMESTAMP, 0},
	{"trade_records", "exit_timestamp", CAT_COL_TIMESTAMP, 0},
	{"trade_records", "pnl_amount", CAT_COL_DOUBLE, 0},
	{"trade_records", "pnl_percentage", CAT_COL_DOUBLE, 0},
	{"trade_records", "exit_reason", CAT_COL_TEXT, 256},
	{"trade_records", "version", CAT_COL_INT64, 0},
	{"source_metrics", "source_name", CAT_COL_TEXT, 128},
	{"source_metrics", "total_articles", CAT_COL_INT64, 0},
	{"source_metrics", "accurate_predictions", CAT_COL_INT64, 0},
	{"source_metrics", "accuracy_rate", CAT_COL_DOUBLE, 0},
	{"source_metrics", "avg_price_impact", CAT_COL_DOUBLE, 0},
	{"source_metrics", "last_updated", CAT_COL_TIMESTAMP, 0},
	{"source_metrics", "version", CAT_COL_INT64, 0},
};
#define N_EXPECTED (sizeof(expected_columns) / sizeof(expected_columns[0]))

static const struct expected_table {
	const char *name;
	const ProtobufCMessageDescriptor *descriptor;
	const char *primary_key;
	const char *partition_column;
	bool insert_only;
} expected_tables[] = {
	{"news_raw", &catalyst__v1__news_raw__descriptor, "news_id", "symbol", true},
	{"trading_candidates", &catalyst__v1__trading_candidate__descriptor, "candidate_id", "symbol", false},
	{"trading_signals", &catalyst__v1__trading_signal__descriptor, "signal_id", "symbol", false},
	{"trade_records", &catalyst__v1__trade_record__descriptor, "trade_id", "symbol", false},
	{"source_metrics", &catalyst__v1__source_metric__descriptor, "source_name", NULL, false},
};
#define N_TABLES (sizeof(expected_tables) / sizeof(expected_tables[0]))

/* The field types each column type is carried in. */
static ProtobufCType field_type_of(cat_col_type_t type)
{
	switch (type) {
	case CAT_COL_TEXT:
		return PROTOBUF_C_TYPE_STRING;
	case CAT_COL_INT32:
		return PROTOBUF_C_TYPE_INT32;
	case CAT_COL_INT64:
	case CAT_COL_TIMESTAMP:
		return PROTOBUF_C_TYPE_INT64;
	case CAT_COL_DOUBLE:
		return PROTOBUF_C_TYPE_DOUBLE;
	case CAT_COL_BOOL:
		return PROTOBUF_C_TYPE_BOOL;
	}
	return PROTOBUF_C_TYPE_BYTES;
}

static bool is_timestamp_name(const char *name)
{
	static const char *const names[] = {
		"published_timestamp", "collected_timestamp", "selection_timestamp", "generated_timestamp",
		"expires_timestamp",   "entry_timestamp",     "exit_timestamp",	     "last_updated",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

START_TEST(test_tables_in_order)
{
	ck_assert_uint_eq(cat_schema_n_tables, N_TABLES);
	for (size_t i = 0; i < N_TABLES; i++) {
		const cat_table_t *table = &cat_schema_tables[i];

		ck_assert_str_eq(table->name, expected_tables[i].name);
		ck_assert_ptr_eq(table->descriptor, expected_tables[i].descriptor);
		ck_assert_str_eq(table->primary_key, expected_tables[i].primary_key);
		ck_assert_int_eq(table->insert_only, expected_tables[i].insert_only);
		if (expected_tables[i].partition_column)
			ck_assert_str_eq(table->partition_column, expected_tables[i].partition_column);
		else
			ck_assert_ptr_null(table->partition_column);
	}
}
END_TEST

/* Each table is the Record oneof member of the same name, holding its message. */
START_TEST(test_table_is_record_member)
{
	const cat_table_t *table = &cat_schema_tables[_i];
	const ProtobufCFieldDescriptor *field = protobuf_c_message_descriptor_get_field(
		&catalyst__v1__record__descriptor, table->record_case);

	ck_assert_ptr_nonnull(field);
	ck_assert_str_eq(field->name, table->name);
	ck_assert_int_eq(field->type, PROTOBUF_C_TYPE_MESSAGE);
	ck_assert_ptr_eq(field->descriptor, table->descriptor);
	ck_assert(field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
}
END_TEST

/* Columns and fields match one to one, in field-number order. */
START_TEST(test_columns_match_descriptor)
{
	const cat_table_t *table = &cat_schema_tables[_i];
	const ProtobufCMessageDescriptor *desc = table->descriptor;

	ck_assert_uint_eq(table->n_columns, desc->n_fields);
	for (size_t i = 0; i < table->n_columns; i++) {
		const cat_column_t *column = &table->columns[i];
		const ProtobufCFieldDescriptor *field = &desc->fields[i];

		ck_assert_msg(strcmp(column->name, field->name) == 0, "%s: column %zu is %s, field is %s",
			      table->name, i, column->name, field->name);
		if (i > 0)
			ck_assert_uint_gt(field->id, desc->fields[i - 1].id);
		ck_assert_int_eq(field->label, PROTOBUF_C_LABEL_OPTIONAL);
		ck_assert_msg(field_type_of(column->type) == field->type, "%s.%s: type %d for field type %d",
			      table->name, column->name, column->type, field->type);
		ck_assert_msg((column->type == CAT_COL_TIMESTAMP) == is_timestamp_name(column->name),
			      "%s.%s: timestamp columns are exactly the *_timestamp and last_updated fields",
			      table->name, column->name);
		ck_assert_ptr_eq(cat_schema_field(table, column), field);
		ck_assert_ptr_eq(cat_schema_column(table, field->name), column);
		/* text is bounded, nothing else has a length */
		if (column->type == CAT_COL_TEXT)
			ck_assert_int_gt(column->max_len, 0);
		else
			ck_assert_int_eq(column->max_len, 0);
	}
}
END_TEST

START_TEST(test_columns_as_migrations)
{
	size_t seen = 0;

	for (size_t i = 0; i < N_EXPECTED; i++) {
		const struct expected_column *e = &expected_columns[i];
		const cat_table_t *table = cat_schema_table(e->table);
		const cat_column_t *column = cat_schema_column(table, e->column);

		ck_assert_msg(column != NULL, "%s.%s missing", e->table, e->column);
		ck_assert_msg(column->type == e->type, "%s.%s type", e->table, e->column);
		ck_assert_msg(column->max_len == e->max_len, "%s.%s max_len %d, expected %d", e->table,
			      e->column, column->max_len, e->max_len);
	}
	for (size_t t = 0; t < cat_schema_n_tables; t++)
		seen += cat_schema_tables[t].n_columns;
	ck_assert_uint_eq(seen, N_EXPECTED);
}
END_TEST

START_TEST(test_keys_and_not_null)
{
	const cat_table_t *table = &cat_schema_tables[_i];
	const cat_column_t *pk = cat_schema_column(table, table->primary_key);
	const cat_column_t *version = cat_schema_column(table, "version");
	const cat_column_t *symbol = cat_schema_column(table, "symbol");
	int n_pk = 0;

	ck_assert_ptr_nonnull(pk);
	ck_assert(pk->primary_key);
	ck_assert(pk->not_null);
	ck_assert_int_eq(pk->type, CAT_COL_TEXT);
	ck_assert_ptr_nonnull(version);
	ck_assert(version->not_null);
	ck_assert_int_eq(version->type, CAT_COL_INT64);
	if (symbol)
		ck_assert(symbol->not_null);
	if (table->partition_column) {
		const cat_column_t *partition = cat_schema_column(table, table->partition_column);

		ck_assert_ptr_nonnull(partition);
		ck_assert_int_eq(partition->type, CAT_COL_TEXT);
	}
	for (size_t i = 0; i < table->n_columns; i++) {
		const cat_column_t *column = &table->columns[i];

		n_pk += column->primary_key;
		/* not null: exactly the key, version and symbol */
		ck_assert_int_eq(column->not_null, column == pk || column == version || column == symbol);
	}
	ck_assert_int_eq(n_pk, 1);
}
END_TEST

START_TEST(test_since_version)
{
	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		const cat_table_t *table = &cat_schema_tables[t];

		for (size_t i = 0; i < table->n_columns; i++) {
			const cat_column_t *column = &table->columns[i];
			bool v2 = strcmp(table->name, "news_raw") == 0 &&
				  (strcmp(column->name, "source_tier") == 0 ||
				   strcmp(column->name, "confirmation_status") == 0 ||
				   strcmp(column->name, "narrative_cluster_id") == 0);

			ck_assert_msg(column->since_version == (v2 ? 2 : 1), "%s.%s since %d", table->name,
				      column->name, column->since_version);
			ck_assert_int_le(column->since_version, CAT_SCHEMA_VERSION);
		}
	}
}
END_TEST

START_TEST(test_lookups)
{
	const cat_table_t *news = cat_schema_table("news_raw");
	const cat_table_t *metrics = cat_schema_table("source_metrics");

	ck_assert_ptr_eq(news, &cat_schema_tables[0]);
	ck_assert_ptr_eq(metrics, &cat_schema_tables[4]);
	ck_assert_ptr_eq(cat_schema_table("trade_records"), &cat_schema_tables[3]);

	ck_assert_ptr_null(cat_schema_table(NULL));
	ck_assert_ptr_null(cat_schema_table(""));
	ck_assert_ptr_null(cat_schema_table("NEWS_RAW"));
	ck_assert_ptr_null(cat_schema_table("news_raw "));
	ck_assert_ptr_null(cat_schema_table("news"));
	ck_assert_ptr_null(cat_schema_table("news_raw;drop table news_raw"));
	ck_assert_ptr_null(cat_schema_table("schema_migrations"));
	ck_assert_ptr_null(cat_schema_table("public.news_raw"));

	ck_assert_str_eq(cat_schema_column(news, "headline")->name, "headline");
	ck_assert_ptr_null(cat_schema_column(news, NULL));
	ck_assert_ptr_null(cat_schema_column(NULL, "headline"));
	ck_assert_ptr_null(cat_schema_column(news, ""));
	ck_assert_ptr_null(cat_schema_column(news, "Headline"));
	ck_assert_ptr_null(cat_schema_column(news, "table"));
	ck_assert_ptr_null(cat_schema_column(news, "source_name"));
	ck_assert_ptr_null(cat_schema_column(metrics, "headline"));

	/* a column of another table has no field here */
	ck_assert_ptr_null(cat_schema_field(metrics, cat_schema_column(news, "headline")));
	ck_assert_ptr_null(cat_schema_field(news, NULL));
	ck_assert_ptr_null(cat_schema_field(NULL, cat_schema_column(news, "headline")));
	/* a column of another table with the same name maps by name */
	ck_assert_ptr_eq(cat_schema_field(metrics, cat_schema_column(news, "version")),
			 protobuf_c_message_descriptor_get_field_by_name(metrics->descriptor, "version"));
}
END_TEST

static Suite *schema_suite(void)
{
	Suite *s = suite_create("cat_schema");
	TCase *tc = tcase_create("schema");

	tcase_add_test(tc, test_tables_in_order);
	tcase_add_loop_test(tc, test_table_is_record_member, 0, (int)N_TABLES);
	tcase_add_loop_test(tc, test_columns_match_descriptor, 0, (int)N_TABLES);
	tcase_add_test(tc, test_columns_as_migrations);
	tcase_add_loop_test(tc, test_keys_and_not_null, 0, (int)N_TABLES);
	tcase_add_test(tc, test_since_version);
	tcase_add_test(tc, test_lookups);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(schema_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
