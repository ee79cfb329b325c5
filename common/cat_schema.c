#include "cat_schema.h"

#include <string.h>

#include "catalyst/v1/records.pb-c.h"

/*
 * One entry per field of the record message, in field-number order, named as
 * the field. tests/unit/test_schema.c checks this against the descriptors and
 * tests/integration/test_schema_matches.sh against migrations/.
 */
/* clang-format off */
#define TEXT(name, len) { name, CAT_COL_TEXT, len, false, false, 1 }
#define TEXT_V2(name, len) { name, CAT_COL_TEXT, len, false, false, 2 }
#define TEXT_PK(name, len) { name, CAT_COL_TEXT, len, true, true, 1 }
#define TEXT_NN(name, len) { name, CAT_COL_TEXT, len, false, true, 1 }
#define COL(name, type) { name, type, 0, false, false, 1 }
#define COL_V2(name, type) { name, type, 0, false, false, 2 }
#define VERSION { "version", CAT_COL_INT64, 0, false, true, 1 }
/* clang-format on */

static const cat_column_t news_raw_columns[] = {
	TEXT_PK("news_id", 128),
	TEXT_NN("symbol", 10),
	TEXT("headline", 1000),
	TEXT("source", 128),
	TEXT("url", 2048),
	COL("published_timestamp", CAT_COL_TIMESTAMP),
	COL("collected_timestamp", CAT_COL_TIMESTAMP),
	TEXT("content_snippet", 4000),
	COL("sentiment_score", CAT_COL_DOUBLE),
	COL("catalyst_score", CAT_COL_DOUBLE),
	COL("is_pre_market", CAT_COL_BOOL),
	COL_V2("source_tier", CAT_COL_INT32),
	TEXT_V2("confirmation_status", 32),
	TEXT_V2("narrative_cluster_id", 128),
	VERSION,
};

static const cat_column_t trading_candidates_columns[] = {
	TEXT_PK("candidate_id", 128),
	TEXT_NN("symbol", 10),
	COL("selection_timestamp", CAT_COL_TIMESTAMP),
	COL("catalyst_score", CAT_COL_DOUBLE),
	COL("technical_score", CAT_COL_DOUBLE),
	COL("combined_score", CAT_COL_DOUBLE),
	TEXT("primary_catalyst", 256),
	COL("news_count", CAT_COL_INT32),
	COL("traded", CAT_COL_BOOL),
	VERSION,
};

static const cat_column_t trading_signals_columns[] = {
	TEXT_PK("signal_id", 128),
	TEXT("candidate_id", 128),
	TEXT_NN("symbol", 10),
	TEXT("signal_type", 16),
	COL("confidence", CAT_COL_DOUBLE),
	COL("entry_price", CAT_COL_DOUBLE),
	COL("stop_loss", CAT_COL_DOUBLE),
	COL("take_profit", CAT_COL_DOUBLE),
	COL("generated_timestamp", CAT_COL_TIMESTAMP),
	COL("expires_timestamp", CAT_COL_TIMESTAMP),
	VERSION,
};

static const cat_column_t trade_records_columns[] = {
	TEXT_PK("trade_id", 128),
	TEXT("signal_id", 128),
	TEXT_NN("symbol", 10),
	TEXT("entry_news_id", 128),
	TEXT("side", 16),
	COL("quantity", CAT_COL_INT64),
	COL("entry_price", CAT_COL_DOUBLE),
	COL("exit_price", CAT_COL_DOUBLE),
	COL("entry_timestamp", CAT_COL_TIMESTAMP),
	COL("exit_timestamp", CAT_COL_TIMESTAMP),
	COL("pnl_amount", CAT_COL_DOUBLE),
	COL("pnl_percentage", CAT_COL_DOUBLE),
	TEXT("exit_reason", 256),
	VERSION,
};

static const cat_column_t source_metrics_columns[] = {
	TEXT_PK("source_name", 128),
	COL("total_articles", CAT_COL_INT64),
	COL("accurate_predictions", CAT_COL_INT64),
	COL("accuracy_rate", CAT_COL_DOUBLE),
	COL("avg_price_impact", CAT_COL_DOUBLE),
	COL("last_updated", CAT_COL_TIMESTAMP),
	VERSION,
};

#undef TEXT
#undef TEXT_V2
#undef TEXT_PK
#undef TEXT_NN
#undef COL
#undef COL_V2
#undef VERSION

#define N_COLUMNS(columns) (sizeof(columns) / sizeof((columns)[0]))

const cat_table_t cat_schema_tables[] = {
	{
		.name = "news_raw",
		.descriptor = &catalyst__v1__news_raw__descriptor,
		.record_case = CATALYST__V1__RECORD__ROW_NEWS_RAW,
		.columns = news_raw_columns,
		.n_columns = N_COLUMNS(news_raw_columns),
		.primary_key = "news_id",
		.insert_only = true,
		.partition_column = "symbol",
	},
	{
		.name = "trading_candidates",
		.descriptor = &catalyst__v1__trading_candidate__descriptor,
		.record_case = CATALYST__V1__RECORD__ROW_TRADING_CANDIDATES,
		.columns = trading_candidates_columns,
		.n_columns = N_COLUMNS(trading_candidates_columns),
		.primary_key = "candidate_id",
		.insert_only = false,
		.partition_column = "symbol",
	},
	{
		.name = "trading_signals",
		.descriptor = &catalyst__v1__trading_signal__descriptor,
		.record_case = CATALYST__V1__RECORD__ROW_TRADING_SIGNALS,
		.columns = trading_signals_columns,
		.n_columns = N_COLUMNS(trading_signals_columns),
		.primary_key = "signal_id",
		.insert_only = false,
		.partition_column = "symbol",
	},
	{
		.name = "trade_records",
		.descriptor = &catalyst__v1__trade_record__descriptor,
		.record_case = CATALYST__V1__RECORD__ROW_TRADE_RECORDS,
		.columns = trade_records_columns,
		.n_columns = N_COLUMNS(trade_records_columns),
		.primary_key = "trade_id",
		.insert_only = false,
		.partition_column = "symbol",
	},
	{
		.name = "source_metrics",
		.descriptor = &catalyst__v1__source_metric__descriptor,
		.record_case = CATALYST__V1__RECORD__ROW_SOURCE_METRICS,
		.columns = source_metrics_columns,
		.n_columns = N_COLUMNS(source_metrics_columns),
		.primary_key = "source_name",
		.insert_only = false,
		.partition_column = NULL,
	},
};

const size_t cat_schema_n_tables = N_COLUMNS(cat_schema_tables);

const cat_table_t *cat_schema_table(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < cat_schema_n_tables; i++)
		if (strcmp(cat_schema_tables[i].name, name) == 0)
			return &cat_schema_tables[i];
	return NULL;
}

const cat_column_t *cat_schema_column(const cat_table_t *table, const char *name)
{
	if (!table || !name)
		return NULL;
	for (size_t i = 0; i < table->n_columns; i++)
		if (strcmp(table->columns[i].name, name) == 0)
			return &table->columns[i];
	return NULL;
}

const ProtobufCFieldDescriptor *cat_schema_field(const cat_table_t *table, const cat_column_t *column)
{
	if (!table || !column)
		return NULL;
	/* Columns follow the message's fields one to one, in the same order. */
	if (column >= table->columns && column < table->columns + table->n_columns) {
		size_t index = (size_t)(column - table->columns);

		if (index < table->descriptor->n_fields &&
		    strcmp(table->descriptor->fields[index].name, column->name) == 0)
			return &table->descriptor->fields[index];
	}
	return protobuf_c_message_descriptor_get_field_by_name(table->descriptor, column->name);
}
