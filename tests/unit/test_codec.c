/*
 * cat_codec: protobuf and JSON forms of write commands, and the validation
 * at the trust boundary. Failure paths first, then the round trips.
 */
#include <check.h>
#include <jansson.h>
#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_time.h"
#include "catalyst/v1/views.pb-c.h"

#define ERRSTR_SIZE 512
#define ISSUED_AT   1795788312000000LL /* 2026-11-27T14:05:12Z */

/* --- helpers ---------------------------------------------------------------- */

static uint8_t *pack_command(const Catalyst__V1__WriteCommand *cmd, size_t *len)
{
	uint8_t *buf;

	*len = catalyst__v1__write_command__get_packed_size(cmd);
	buf = malloc(*len ? *len : 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(catalyst__v1__write_command__pack(cmd, buf), *len);
	return buf;
}

/* Both commands pack to the same bytes: same fields, same values. */
static void assert_same_command(const Catalyst__V1__WriteCommand *a, const Catalyst__V1__WriteCommand *b)
{
	size_t a_len, b_len;
	uint8_t *a_buf = pack_command(a, &a_len);
	uint8_t *b_buf = pack_command(b, &b_len);

	ck_assert_uint_eq(a_len, b_len);
	ck_assert_msg(memcmp(a_buf, b_buf, a_len) == 0, "commands differ");
	free(a_buf);
	free(b_buf);
}

static char *repeat(const char *unit, int n)
{
	size_t len = strlen(unit);
	char *s = malloc(len * (size_t)n + 1);

	ck_assert_ptr_nonnull(s);
	for (int i = 0; i < n; i++)
		memcpy(s + len * (size_t)i, unit, len);
	s[len * (size_t)n] = '\0';
	return s;
}

/* --- records built field by field ---------------------------------------- */

typedef struct fixture {
	Catalyst__V1__WriteCommand cmd;
	Catalyst__V1__CommandMeta meta;
	Catalyst__V1__Record record;
	Catalyst__V1__NewsRaw news;
	Catalyst__V1__TradingCandidate candidate;
	Catalyst__V1__TradingSignal signal;
	Catalyst__V1__TradeRecord trade;
	Catalyst__V1__SourceMetric metric;
} fixture_t;

/* A command for table `table` (index into cat_schema_tables) with every
 * column set (`full`) or only the required ones. */
static void fixture_init(fixture_t *f, int table, bool full, Catalyst__V1__WriteOp op)
{
	catalyst__v1__write_command__init(&f->cmd);
	catalyst__v1__command_meta__init(&f->meta);
	catalyst__v1__record__init(&f->record);
	catalyst__v1__news_raw__init(&f->news);
	catalyst__v1__trading_candidate__init(&f->candidate);
	catalyst__v1__trading_signal__init(&f->signal);
	catalyst__v1__trade_record__init(&f->trade);
	catalyst__v1__source_metric__init(&f->metric);

	f->meta.command_id = "0b7e1f0e-6a4c-4f0e-9d43-2f7f1f0c9a11";
	f->meta.has_issued_at_us = 1;
	f->meta.issued_at_us = ISSUED_AT;
	f->meta.producer = "test/1.0";
	f->meta.trace_id = "trace-1";
	f->cmd.meta = &f->meta;
	f->cmd.has_op = 1;
	f->cmd.op = op;
	f->cmd.record = &f->record;

	switch (table) {
	case 0: {
		Catalyst__V1__NewsRaw *n = &f->news;

		n->news_id = "news-1";
		n->symbol = "AAPL";
		n->has_version = 1, n->version = ISSUED_AT;
		if (full) {
			n->headline = "Apple beats — “estimates”";
			n->source = "reuters";
			n->url = "https://example.com/a?b=1&c=%20";
			n->has_published_timestamp = 1, n->published_timestamp = 1795759512123456;
			n->has_collected_timestamp = 1, n->collected_timestamp = 1795788313000000;
			n->content_snippet = "line 1\nline 2 \"quoted\" \\ tab\t";
			n->has_sentiment_score = 1, n->sentiment_score = 0.8;
			n->has_catalyst_score = 1, n->catalyst_score = -0.25;
			n->has_is_pre_market = 1, n->is_pre_market = 1;
			n->has_source_tier = 1, n->source_tier = 2;
			n->confirmation_status = "confirmed";
			n->narrative_cluster_id = "cluster-9";
		}
		f->record.row_case = CATALYST__V1__RECORD__ROW_NEWS_RAW;
		f->record.news_raw = n;
		break;
	}
	case 1: {
		Catalyst__V1__TradingCandidate *c = &f->candidate;

		c->candidate_id = "cand-1";
		c->symbol = "TSLA";
		c->has_version = 1, c->version = 2;
		if (full) {
			c->has_selection_timestamp = 1, c->selection_timestamp = 0;
			c->has_catalyst_score = 1, c->catalyst_score = 0.1 + 0.2;
			c->has_technical_score = 1, c->technical_score = 1e300;
			c->has_combined_score = 1, c->combined_score = -0.0;
			c->primary_catalyst = "earnings";
			c->has_news_count = 1, c->news_count = INT32_MIN;
			c->has_traded = 1, c->traded = 0;
		}
		f->record.row_case = CATALYST__V1__RECORD__ROW_TRADING_CANDIDATES;
		f->record.trading_candidates = c;
		break;
	}
	case 2: {
		Catalyst__V1__TradingSignal *s = &f->signal;

		s->signal_id = "sig-1";
		s->symbol = "NVDA";
		s->has_version = 1, s->version = INT64_MAX;
		if (full) {
			s->candidate_id = "cand-1";
			s->signal_type = "buy";
			s->has_confidence = 1, s->confidence = 0.95;
			s->has_entry_price = 1, s->entry_price = 123.45;
			s->has_stop_loss = 1, s->stop_loss = 5e-324;
			s->has_take_profit = 1, s->take_profit = 130;
			s->has_generated_timestamp = 1, s->generated_timestamp = -62135596800000000;
			s->has_expires_timestamp = 1, s->expires_timestamp = 253402300799999999;
		}
		f->record.row_case = CATALYST__V1__RECORD__ROW_TRADING_SIGNALS;
		f->record.trading_signals = s;
		break;
	}
	case 3: {
		Catalyst__V1__TradeRecord *t = &f->trade;

		t->trade_id = "trade-1";
		t->symbol = "ÄÖÜ.DE";
		t->has_version = 1, t->version = 1;
		if (full) {
			t->signal_id = "sig-1";
			t->entry_news_id = "news-1";
			t->side = "long";
			t->has_quantity = 1, t->quantity = INT64_MIN;
			t->has_entry_price = 1, t->entry_price = 100;
			t->has_exit_price = 1, t->exit_price = 101.5;
			t->has_entry_timestamp = 1, t->entry_timestamp = -1;
			t->has_exit_timestamp = 1, t->exit_timestamp = 1;
			t->has_pnl_amount = 1, t->pnl_amount = -1.5e-7;
			t->has_pnl_percentage = 1, t->pnl_percentage = 1.5;
			t->exit_reason = "";
		}
		f->record.row_case = CATALYST__V1__RECORD__ROW_TRADE_RECORDS;
		f->record.trade_records = t;
		break;
	}
	case 4: {
		Catalyst__V1__SourceMetric *m = &f->metric;

		m->source_name = "reuters";
		m->has_version = 1, m->version = 99;
		if (full) {
			m->has_total_articles = 1, m->total_articles = 0;
			m->has_accurate_predictions = 1, m->accurate_predictions = INT64_MAX;
			m->has_accuracy_rate = 1, m->accuracy_rate = 0.5;
			m->has_avg_price_impact = 1, m->avg_price_impact = 1.0 / 3;
			m->has_last_updated = 1, m->last_updated = ISSUED_AT;
		}
		f->record.row_case = CATALYST__V1__RECORD__ROW_SOURCE_METRICS;
		f->record.source_metrics = m;
		break;
	}
	}
}

/* The fixture's row sets every field of its message. */
static void assert_every_field_set(const ProtobufCMessage *row)
{
	const ProtobufCMessageDescriptor *desc = row->descriptor;

	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *field = &desc->fields[i];
		bool set;

		if (field->type == PROTOBUF_C_TYPE_STRING)
			set = *(char *const *)((const char *)row + field->offset) != NULL;
		else
			set = *(const protobuf_c_boolean *)((const char *)row + field->quantifier_offset);
		ck_assert_msg(set, "fixture leaves %s.%s unset", desc->short_name, field->name);
	}
}

/* --- a tiny protobuf writer, for bytes no encoder would produce ----------- */

typedef struct wire {
	uint8_t buf[8192];
	size_t len;
} wire_t;

static void w_raw(wire_t *w, const void *data, size_t n)
{
	ck_assert_uint_le(w->len + n, sizeof(w->buf));
	memcpy(w->buf + w->len, data, n);
	w->len += n;
}

static void w_varint(wire_t *w, uint64_t v)
{
	do {
		uint8_t b = (uint8_t)(v & 0x7f);

		v >>= 7;
		if (v)
			b |= 0x80;
		w_raw(w, &b, 1);
	} while (v);
}

static void w_key(wire_t *w, unsigned field, unsigned wire_type)
{
	w_varint(w, (uint64_t)field << 3 | wire_type);
}

static void w_uint(wire_t *w, unsigned field, uint64_t v)
{
	w_key(w, field, 0);
	w_varint(w, v);
}

static void w_bytes(wire_t *w, unsigned field, const void *data, size_t n)
{
	w_key(w, field, 2);
	w_varint(w, n);
	w_raw(w, data, n);
}

static void w_str(wire_t *w, unsigned field, const char *s)
{
	w_bytes(w, field, s, strlen(s));
}

static void w_sub(wire_t *w, unsigned field, const wire_t *sub)
{
	w_bytes(w, field, sub->buf, sub->len);
}

static void w_double(wire_t *w, unsigned field, double d)
{
	w_key(w, field, 1);
	w_raw(w, &d, 8);
}

/* meta {command_id, issued_at_us} */
static void w_meta(wire_t *w)
{
	wire_t meta = {.len = 0};

	w_str(&meta, 1, "cmd-1");
	w_uint(&meta, 2, ISSUED_AT);
	w_sub(w, 1, &meta);
}

/* NewsRaw {news_id, symbol, version} */
static void w_news_row(wire_t *row)
{
	w_str(row, 1, "n1");
	w_str(row, 2, "AAPL");
	w_uint(row, 15, 7);
}

/* WriteCommand {meta, op, record {field: row}} */
static void w_command(wire_t *w, uint64_t op, unsigned record_field, const wire_t *row)
{
	wire_t record = {.len = 0};

	w_meta(w);
	w_uint(w, 2, op);
	w_sub(&record, record_field, row);
	w_sub(w, 3, &record);
}

static void w_news_command(wire_t *w, const wire_t *row)
{
	w_command(w, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT, 1, row);
}

/* --- bad protobuf ------------------------------------------------------------ */

static void pb_garbage(wire_t *w)
{
	w_raw(w, "\xff\xff\xff\xff", 4);
}

static void pb_op_as_bytes(wire_t *w)
{
	wire_t row = {.len = 0}, record = {.len = 0};

	w_meta(w);
	w_str(w, 2, "\x01");
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
}

static void pb_record_as_varint(wire_t *w)
{
	w_meta(w);
	w_uint(w, 2, 1);
	w_uint(w, 3, 1);
}

static void pb_meta_as_fixed64(wire_t *w)
{
	w_double(w, 1, 1.0);
}

static void pb_pk_as_varint(wire_t *w)
{
	wire_t row = {.len = 0};

	w_uint(&row, 1, 12345);
	w_str(&row, 2, "AAPL");
	w_uint(&row, 15, 7);
	w_news_command(w, &row);
}

static void pb_version_as_bytes(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_str(&row, 2, "AAPL");
	w_str(&row, 15, "7");
	w_news_command(w, &row);
}

static void pb_double_as_varint(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_uint(&row, 9, 1);
	w_news_command(w, &row);
}

static void pb_group(wire_t *w)
{
	w_meta(w);
	w_key(w, 7, 3); /* start group */
	w_key(w, 7, 4); /* end group */
}

static void pb_wire_type_7(wire_t *w)
{
	w_meta(w);
	w_key(w, 5, 7);
}

static void pb_length_past_end(wire_t *w)
{
	w_meta(w);
	w_key(w, 3, 2);
	w_varint(w, 100);
	w_raw(w, "\x0a\x02", 2);
}

static void pb_unterminated_varint(wire_t *w)
{
	w_meta(w);
	w_key(w, 2, 0);
	w_raw(w, "\xff\xff", 2);
}

static void pb_varint_11_bytes(wire_t *w)
{
	w_meta(w);
	w_key(w, 2, 0);
	w_raw(w, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11);
}

static void pb_no_op(wire_t *w)
{
	wire_t row = {.len = 0}, record = {.len = 0};

	w_meta(w);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
}

static void pb_op_0(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_command(w, 0, 1, &row);
}

static void pb_op_99(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_command(w, 99, 1, &row);
}

static void pb_op_negative(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_command(w, UINT64_MAX, 1, &row); /* int32 -1, as ten bytes */
}

static void pb_no_record(wire_t *w)
{
	w_meta(w);
	w_uint(w, 2, 1);
}

static void pb_empty_record(wire_t *w)
{
	w_meta(w);
	w_uint(w, 2, 1);
	w_bytes(w, 3, "", 0);
}

static void pb_unknown_table(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_command(w, 1, 6, &row);
}

static void pb_missing_pk(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 2, "AAPL");
	w_uint(&row, 15, 7);
	w_news_command(w, &row);
}

static void pb_empty_pk(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "");
	w_str(&row, 2, "AAPL");
	w_uint(&row, 15, 7);
	w_news_command(w, &row);
}

static void pb_missing_version(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_str(&row, 2, "AAPL");
	w_news_command(w, &row);
}

static void pb_version_0(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_str(&row, 2, "AAPL");
	w_uint(&row, 15, 0);
	w_news_command(w, &row);
}

static void pb_version_negative(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_str(&row, 2, "AAPL");
	w_uint(&row, 15, (uint64_t)-5);
	w_news_command(w, &row);
}

static void pb_missing_symbol(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_uint(&row, 15, 7);
	w_news_command(w, &row);
}

static void pb_delete_missing_version(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_command(w, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, 1, &row);
}

static void news_with_headline(wire_t *w, const char *headline, size_t len)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_bytes(&row, 3, headline, len);
	w_news_command(w, &row);
}

static void pb_utf8_bad_continuation(wire_t *w)
{
	news_with_headline(w, "caf\xc3\x28", 5);
}

static void pb_utf8_overlong(wire_t *w)
{
	news_with_headline(w, "\xc0\xaf", 2);
}

static void pb_utf8_overlong_3(wire_t *w)
{
	news_with_headline(w, "\xe0\x80\xaf", 3);
}

static void pb_utf8_surrogate(wire_t *w)
{
	news_with_headline(w, "\xed\xa0\x80", 3);
}

static void pb_utf8_above_max(wire_t *w)
{
	news_with_headline(w, "\xf4\x90\x80\x80", 4);
}

static void pb_utf8_truncated(wire_t *w)
{
	news_with_headline(w, "euro \xe2\x82", 7);
}

static void pb_utf8_lone_continuation(wire_t *w)
{
	news_with_headline(w, "\x80", 1);
}

static void pb_utf8_ff(wire_t *w)
{
	news_with_headline(w, "\xff", 1);
}

/* the 8-bytes-at-a-time ASCII path, then the byte that stops it */
static void pb_nul_after_ascii(wire_t *w)
{
	news_with_headline(w, "0123456789abc\0def0123456789", 28);
}

static void pb_invalid_after_ascii(wire_t *w)
{
	news_with_headline(w, "0123456789abcdef0\xc3\x28xyz0123456", 28);
}

static void pb_mixed_too_long(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_str(&row, 13, "abcdefghijklmnopqrstuvwxyz01234\xc3\xa9x"); /* 31 + 1 + 1 characters */
	w_news_command(w, &row);
}

static void pb_nul_in_text(wire_t *w)
{
	news_with_headline(w, "before\0after", 12);
}

static void pb_nul_in_pk(wire_t *w)
{
	wire_t row = {.len = 0};

	w_bytes(&row, 1, "n1\0n2", 5);
	w_str(&row, 2, "AAPL");
	w_uint(&row, 15, 7);
	w_news_command(w, &row);
}

static void pb_nul_in_command_id(wire_t *w)
{
	wire_t meta = {.len = 0}, row = {.len = 0}, record = {.len = 0};

	w_bytes(&meta, 1, "c\0d", 3);
	w_sub(w, 1, &meta);
	w_uint(w, 2, 1);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
}

static void pb_bad_utf8_producer(wire_t *w)
{
	wire_t meta = {.len = 0}, row = {.len = 0}, record = {.len = 0};

	w_str(&meta, 1, "c1");
	w_bytes(&meta, 3, "svc\xfe", 4);
	w_sub(w, 1, &meta);
	w_uint(w, 2, 1);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
}

static void pb_symbol_too_long(wire_t *w)
{
	wire_t row = {.len = 0};

	w_str(&row, 1, "n1");
	w_str(&row, 2, "ABCDEFGHIJK");
	w_uint(&row, 15, 7);
	w_news_command(w, &row);
}

static void pb_multibyte_too_long(wire_t *w)
{
	wire_t row = {.len = 0};
	char *status = repeat("é", 33);

	w_news_row(&row);
	w_str(&row, 13, status);
	w_news_command(w, &row);
	free(status);
}

static void pb_nan(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_double(&row, 9, NAN);
	w_news_command(w, &row);
}

static void pb_infinity(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_double(&row, 10, -INFINITY);
	w_news_command(w, &row);
}

static void pb_timestamp_out_of_range(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_uint(&row, 6, 253402300800000000); /* 10000-01-01 */
	w_news_command(w, &row);
}

static void pb_timestamp_before_year_1(wire_t *w)
{
	wire_t row = {.len = 0};

	w_news_row(&row);
	w_uint(&row, 7, (uint64_t)(-62135596800000000 - 1));
	w_news_command(w, &row);
}

static void pb_empty_command_id(wire_t *w)
{
	wire_t meta = {.len = 0}, row = {.len = 0}, record = {.len = 0};

	w_str(&meta, 1, "");
	w_sub(w, 1, &meta);
	w_uint(w, 2, 1);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
}

static void pb_long_command_id(wire_t *w)
{
	wire_t meta = {.len = 0}, row = {.len = 0}, record = {.len = 0};
	char *id = repeat("x", 129);

	w_str(&meta, 1, id);
	w_sub(w, 1, &meta);
	w_uint(w, 2, 1);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
	free(id);
}

static void pb_negative_issued_at(wire_t *w)
{
	wire_t meta = {.len = 0}, row = {.len = 0}, record = {.len = 0};

	w_str(&meta, 1, "c1");
	w_uint(&meta, 2, (uint64_t)-1);
	w_sub(w, 1, &meta);
	w_uint(w, 2, 1);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(w, 3, &record);
}

static void pb_metric_missing_pk(wire_t *w)
{
	wire_t row = {.len = 0};

	w_uint(&row, 2, 10);
	w_uint(&row, 7, 1);
	w_command(w, 1, 5, &row);
}

static const struct bad_pb {
	const char *name;
	void (*build)(wire_t *w);
	const char *error;
} bad_pbs[] = {
	{"garbage", pb_garbage, "could not decode WriteCommand"},
	{"op as bytes", pb_op_as_bytes, "could not decode"},
	{"record as varint", pb_record_as_varint, "could not decode"},
	{"meta as fixed64", pb_meta_as_fixed64, "could not decode"},
	{"primary key as varint", pb_pk_as_varint, "could not decode"},
	{"version as bytes", pb_version_as_bytes, "could not decode"},
	{"double as varint", pb_double_as_varint, "could not decode"},
	{"group", pb_group, "could not decode"},
	{"wire type 7", pb_wire_type_7, "could not decode"},
	{"length past end", pb_length_past_end, "could not decode"},
	{"unterminated varint", pb_unterminated_varint, "could not decode"},
	{"11-byte varint", pb_varint_11_bytes, "could not decode"},
	{"no op", pb_no_op, "unknown write op 0"},
	{"op 0", pb_op_0, "unknown write op 0"},
	{"op 99", pb_op_99, "unknown write op 99"},
	{"op -1", pb_op_negative, "unknown write op -1"},
	{"no record", pb_no_record, "no record"},
	{"empty record", pb_empty_record, "no record"},
	{"unknown table", pb_unknown_table, "record holds a table unknown to this build (Record field 6)"},
	{"missing primary key", pb_missing_pk, "missing primary key \"news_id\" for table news_raw"},
	{"source_metrics missing primary key", pb_metric_missing_pk,
	 "missing primary key \"source_name\" for table source_metrics"},
	{"empty primary key", pb_empty_pk, "primary key \"news_id\" is empty"},
	{"missing version", pb_missing_version, "missing column \"version\" for table news_raw"},
	{"version 0", pb_version_0, "column \"version\": must be at least 1, got 0"},
	{"version -5", pb_version_negative, "column \"version\": must be at least 1, got -5"},
	{"missing symbol", pb_missing_symbol, "missing column \"symbol\" for table news_raw"},
	{"delete without version", pb_delete_missing_version, "missing column \"version\""},
	{"utf-8 bad continuation", pb_utf8_bad_continuation, "field NewsRaw.headline: invalid UTF-8"},
	{"utf-8 overlong", pb_utf8_overlong, "invalid UTF-8"},
	{"utf-8 overlong 3 bytes", pb_utf8_overlong_3, "invalid UTF-8"},
	{"utf-8 surrogate", pb_utf8_surrogate, "invalid UTF-8"},
	{"utf-8 above U+10FFFF", pb_utf8_above_max, "invalid UTF-8"},
	{"utf-8 truncated", pb_utf8_truncated, "invalid UTF-8"},
	{"utf-8 lone continuation", pb_utf8_lone_continuation, "invalid UTF-8"},
	{"utf-8 0xff", pb_utf8_ff, "invalid UTF-8"},
	{"NUL in text", pb_nul_in_text, "field NewsRaw.headline: contains a NUL byte"},
	{"NUL after 13 ASCII", pb_nul_after_ascii, "field NewsRaw.headline: contains a NUL byte"},
	{"invalid after 17 ASCII", pb_invalid_after_ascii, "field NewsRaw.headline: invalid UTF-8"},
	{"ASCII then multibyte too long", pb_mixed_too_long,
	 "column \"confirmation_status\": 33 characters, longer than 32"},
	{"NUL in primary key", pb_nul_in_pk, "field NewsRaw.news_id: contains a NUL byte"},
	{"NUL in command_id", pb_nul_in_command_id, "field CommandMeta.command_id: contains a NUL byte"},
	{"bad utf-8 in producer", pb_bad_utf8_producer, "field CommandMeta.producer: invalid UTF-8"},
	{"symbol too long", pb_symbol_too_long, "column \"symbol\": 11 characters, longer than 10"},
	{"multibyte too long", pb_multibyte_too_long,
	 "column \"confirmation_status\": 33 characters, longer than 32"},
	{"NaN", pb_nan, "column \"sentiment_score\": not a finite number"},
	{"-Infinity", pb_infinity, "column \"catalyst_score\": not a finite number"},
	{"timestamp after 9999", pb_timestamp_out_of_range,
	 "column \"published_timestamp\": timestamp out of range"},
	{"timestamp before 0001", pb_timestamp_before_year_1,
	 "column \"collected_timestamp\": timestamp out of range"},
	{"empty command_id", pb_empty_command_id, "\"command_id\" is empty"},
	{"long command_id", pb_long_command_id, "\"command_id\": 129 characters, longer than 128"},
	{"negative issued_at_us", pb_negative_issued_at, "\"issued_at_us\": must not be negative, got -1"},
};
#define N_BAD_PBS (sizeof(bad_pbs) / sizeof(bad_pbs[0]))

START_TEST(test_decode_rejects)
{
	const struct bad_pb *c = &bad_pbs[_i];
	Catalyst__V1__WriteCommand *cmd = (Catalyst__V1__WriteCommand *)&cmd; /* not NULL */
	char errstr[ERRSTR_SIZE] = "";
	wire_t w = {.len = 0};
	cat_err_t err;

	c->build(&w);
	err = cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr));
	ck_assert_msg(err == CAT_ERR_PERMANENT, "%s: %s (%s)", c->name, cat_err_name(err), errstr);
	ck_assert_ptr_null(cmd);
	ck_assert_msg(strstr(errstr, c->error) != NULL, "%s: \"%s\" lacks \"%s\"", c->name, errstr, c->error);
	ck_assert_ptr_null(strchr(errstr, '\n'));
}
END_TEST

START_TEST(test_decode_too_large)
{
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];
	size_t len = CAT_CODEC_MAX_MESSAGE_BYTES + 1;
	uint8_t *buf = calloc(1, len);
	wire_t head = {.len = 0}, row = {.len = 0};
	size_t pad;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(cat_codec_write_decode(buf, len, &cmd, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_ptr_null(cmd);
	ck_assert_ptr_nonnull(strstr(errstr, "larger than the limit of 1048576"));

	/* a valid command padded with an unknown field: one byte too many, then exactly the limit */
	w_news_row(&row);
	w_news_command(&head, &row);
	memcpy(buf, head.buf, head.len);
	pad = CAT_CODEC_MAX_MESSAGE_BYTES - head.len - 5; /* key: 2 bytes, length: 3 bytes */
	{
		wire_t key = {.len = 0};

		w_key(&key, 100, 2);
		w_varint(&key, pad + 1);
		ck_assert_uint_eq(key.len, 5);
		memcpy(buf + head.len, key.buf, key.len);
		ck_assert_int_eq(cat_codec_write_decode(buf, len, &cmd, errstr, sizeof(errstr)),
				 CAT_ERR_PERMANENT);
		key.len = 0;
		w_key(&key, 100, 2);
		w_varint(&key, pad);
		memcpy(buf + head.len, key.buf, key.len);
		ck_assert_int_eq(cat_codec_write_decode(buf, len - 1, &cmd, errstr, sizeof(errstr)), CAT_OK);
		ck_assert_uint_eq(cmd->base.n_unknown_fields, 1);
		catalyst__v1__write_command__free_unpacked(cmd, NULL);
	}
	free(buf);
}
END_TEST

START_TEST(test_decode_null_and_empty)
{
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];

	ck_assert_int_eq(cat_codec_write_decode(NULL, 0, &cmd, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_ptr_null(cmd);
	ck_assert_int_eq(cat_codec_write_decode(NULL, 5, &cmd, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_int_eq(cat_codec_write_decode("", 0, &cmd, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "unknown write op 0");
	/* no room for the reason: still an answer */
	ck_assert_int_eq(cat_codec_write_decode("", 0, &cmd, NULL, 0), CAT_ERR_PERMANENT);
}
END_TEST

/* Every strict prefix of a valid message is rejected, never a crash. */
START_TEST(test_decode_truncations)
{
	fixture_t f;
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];
	size_t len;
	uint8_t *buf;

	fixture_init(&f, _i, true, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	buf = pack_command(&f.cmd, &len);
	for (size_t n = 0; n < len; n++) {
		uint8_t *prefix = malloc(n ? n : 1); /* exact size, so ASan sees any over-read */

		memcpy(prefix, buf, n);
		ck_assert_msg(cat_codec_write_decode(prefix, n, &cmd, errstr, sizeof(errstr)) ==
				      CAT_ERR_PERMANENT,
			      "prefix of %zu of %zu bytes accepted", n, len);
		ck_assert_ptr_null(cmd);
		free(prefix);
	}
	ck_assert_int_eq(cat_codec_write_decode(buf, len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	free(buf);
}
END_TEST

static uint64_t xorshift(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

/* Random bytes and random mutations of valid messages: an answer every time,
 * and what is accepted is valid and has a JSON form. */
START_TEST(test_decode_random)
{
	uint64_t state = 0x2545f4914f6cdd1du;
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];
	uint8_t *valid[5];
	size_t valid_len[5];
	int accepted = 0;

	for (int t = 0; t < 5; t++) {
		fixture_t f;

		fixture_init(&f, t, true, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
		valid[t] = pack_command(&f.cmd, &valid_len[t]);
	}
	for (int i = 0; i < 20000; i++) {
		size_t len;
		uint8_t *buf;
		cat_err_t err;

		if (i % 2) {
			len = xorshift(&state) % 300;
			buf = malloc(len ? len : 1);
			for (size_t k = 0; k < len; k++)
				buf[k] = (uint8_t)xorshift(&state);
		} else {
			int t = (int)(xorshift(&state) % 5);
			int flips = 1 + (int)(xorshift(&state) % 4);

			len = valid_len[t];
			buf = malloc(len);
			memcpy(buf, valid[t], len);
			for (int k = 0; k < flips; k++)
				buf[xorshift(&state) % len] ^= (uint8_t)(1u << (xorshift(&state) % 8));
		}
		errstr[0] = '\0';
		err = cat_codec_write_decode(buf, len, &cmd, errstr, sizeof(errstr));
		if (err == CAT_OK) {
			char *json = cat_codec_write_to_json(cmd);

			ck_assert_ptr_nonnull(json);
			ck_assert_int_eq(
				cat_codec_record_validate(cmd->record,
							  cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE,
							  errstr, sizeof(errstr)),
				CAT_OK);
			free(json);
			catalyst__v1__write_command__free_unpacked(cmd, NULL);
			accepted++;
		} else {
			ck_assert_int_eq(err, CAT_ERR_PERMANENT);
			ck_assert_ptr_null(cmd);
			ck_assert_uint_gt(strlen(errstr), 0);
		}
		free(buf);
	}
	ck_assert_int_gt(accepted, 0); /* some mutations only change a value */
	for (int t = 0; t < 5; t++)
		free(valid[t]);
}
END_TEST

/* --- accepted protobuf -------------------------------------------------------- */

/* Forward compatibility: fields this build does not know are kept. */
START_TEST(test_decode_keeps_unknown_fields)
{
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];
	wire_t w = {.len = 0}, row = {.len = 0};

	w_news_row(&row);
	w_uint(&row, 99, 5);		  /* a future column */
	w_bytes(&row, 98, "\xff\x00", 2); /* a future bytes column: not text, not checked */
	w_news_command(&w, &row);
	w_str(&w, 100, "future");
	ck_assert_int_eq(cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(cmd->base.n_unknown_fields, 1);
	ck_assert_uint_eq(cmd->record->news_raw->base.n_unknown_fields, 2);
	ck_assert_str_eq(cat_codec_record_pk(cmd->record), "n1");
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
}
END_TEST

/* Fields in any order, a repeated scalar: the last one counts. */
START_TEST(test_decode_wire_order)
{
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];
	wire_t w = {.len = 0}, row = {.len = 0}, record = {.len = 0};

	w_uint(&row, 15, 7);
	w_str(&row, 2, "AAPL");
	w_str(&row, 1, "n1");
	w_uint(&row, 15, 8);
	w_sub(&record, 1, &row);
	w_sub(&w, 3, &record);
	w_uint(&w, 2, 99);
	w_uint(&w, 2, 1);
	w_meta(&w);
	ck_assert_int_eq(cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cmd->op, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	ck_assert_int_eq(cat_codec_record_version(cmd->record), 8);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
}
END_TEST

/* A delete needs only the key and the version; other columns may ride along. */
START_TEST(test_decode_delete)
{
	Catalyst__V1__WriteCommand *cmd, *again;
	char errstr[ERRSTR_SIZE];
	char *json;
	wire_t w = {.len = 0}, row = {.len = 0};

	w_str(&row, 1, "n1");
	w_uint(&row, 15, 9);
	w_command(&w, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, 1, &row);
	ck_assert_int_eq(cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cmd->op, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE);
	ck_assert_int_eq(cat_codec_record_version(cmd->record), 9);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* with other columns: accepted, and its JSON shows only what a delete carries */
	w.len = 0;
	w_str(&row, 2, "AAPL");
	w_str(&row, 3, "headline");
	w_command(&w, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, 1, &row);
	ck_assert_int_eq(cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(cmd->record->news_raw->headline, "headline");
	json = cat_codec_write_to_json(cmd);
	ck_assert_str_eq(json, "{\"table\":\"news_raw\",\"news_id\":\"n1\",\"symbol\":\"AAPL\",\"version\":9,"
			       "\"op\":\"delete\",\"command_id\":\"cmd-1\",\"issued_at_us\":1795788312000000}");
	ck_assert_int_eq(cat_codec_write_from_json(json, strlen(json), NULL, &again, errstr, sizeof(errstr)),
			 CAT_OK);
	ck_assert_str_eq(cat_codec_record_pk(again->record), "n1");
	ck_assert_int_eq(cat_codec_record_version(again->record), 9);
	free(json);
	catalyst__v1__write_command__free_unpacked(again, NULL);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
}
END_TEST

/* A command without meta is still a write. */
START_TEST(test_decode_without_meta)
{
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];
	wire_t w = {.len = 0}, row = {.len = 0}, record = {.len = 0};

	w_uint(&w, 2, 1);
	w_news_row(&row);
	w_sub(&record, 1, &row);
	w_sub(&w, 3, &record);
	ck_assert_int_eq(cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_ptr_null(cmd->meta);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
}
END_TEST

/* build -> pack -> decode -> the same command, every table, every column or
 * only the required ones. */
START_TEST(test_protobuf_round_trip)
{
	int table = _i / 2;
	bool full = _i % 2 == 0;
	fixture_t f;
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE] = "";
	size_t len;
	uint8_t *buf;

	fixture_init(&f, table, full, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	if (full)
		assert_every_field_set(cat_codec_record_row(&f.record));
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_OK);
	buf = pack_command(&f.cmd, &len);
	ck_assert_msg(cat_codec_write_decode(buf, len, &cmd, errstr, sizeof(errstr)) == CAT_OK, "%s: %s",
		      cat_schema_tables[table].name, errstr);
	assert_same_command(&f.cmd, cmd);
	ck_assert_ptr_eq(cat_codec_record_table(cmd->record), &cat_schema_tables[table]);
	ck_assert_str_eq(cat_codec_record_pk(cmd->record), cat_codec_record_pk(&f.record));
	ck_assert_int_eq(cat_codec_record_version(cmd->record), cat_codec_record_version(&f.record));
	ck_assert_str_eq(cmd->meta->command_id, f.meta.command_id);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	free(buf);
}
END_TEST

/* --- validation of hand-built records ----------------------------------------- */

START_TEST(test_validate_lengths_in_characters)
{
	fixture_t f;
	char errstr[ERRSTR_SIZE];
	char *ten = repeat("Ä", 10), *eleven = repeat("Ä", 11);
	char *snippet = repeat("€", 4000), *long_snippet = repeat("€", 4001);

	fixture_init(&f, 0, true, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.news.symbol = ten; /* 20 bytes, 10 characters */
	f.news.content_snippet = snippet;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_OK);
	f.news.symbol = eleven;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "column \"symbol\": 11 characters, longer than 10");
	f.news.symbol = "AAPL";
	f.news.content_snippet = long_snippet;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "column \"content_snippet\": 4001 characters, longer than 4000");
	free(ten);
	free(eleven);
	free(snippet);
	free(long_snippet);
}
END_TEST

START_TEST(test_validate_records)
{
	fixture_t f;
	Catalyst__V1__Record empty = CATALYST__V1__RECORD__INIT;
	char errstr[ERRSTR_SIZE];

	ck_assert_int_eq(cat_codec_record_validate(NULL, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "no record");
	ck_assert_int_eq(cat_codec_record_validate(&empty, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "no record");

	/* a delete: key and version only */
	fixture_init(&f, 2, false, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE);
	f.signal.symbol = NULL;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 1, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "missing column \"symbol\" for table trading_signals");
	f.signal.has_version = 0;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 1, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "missing column \"version\" for table trading_signals");
	f.signal.has_version = 1;
	f.signal.signal_id = NULL;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 1, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "missing primary key \"signal_id\" for table trading_signals");

	/* the row must be the table's message */
	fixture_init(&f, 0, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.record.row_case = CATALYST__V1__RECORD__ROW_SOURCE_METRICS;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "record of table source_metrics holds a NewsRaw message");
	ck_assert_ptr_null(cat_codec_record_to_json(&f.record));
	ck_assert_str_eq(cat_codec_record_pk(&f.record), "");

	/* an unknown oneof case */
	fixture_init(&f, 0, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.record.row_case = (Catalyst__V1__Record__RowCase)77;
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_ptr_null(cat_codec_record_table(&f.record));
	ck_assert_ptr_null(cat_codec_record_row(&f.record));

	/* hand-built text is checked too */
	fixture_init(&f, 0, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.news.headline = "\xc3";
	ck_assert_int_eq(cat_codec_record_validate(&f.record, 0, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "column \"headline\": invalid UTF-8");
	ck_assert_ptr_null(cat_codec_record_to_json(&f.record));
}
END_TEST

/* --- accessors ------------------------------------------------------------------ */

START_TEST(test_record_key)
{
	fixture_t f;
	char key[64];

	fixture_init(&f, 0, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	ck_assert_uint_eq(cat_codec_record_key(&f.record, key, sizeof(key)), 4);
	ck_assert_str_eq(key, "AAPL");
	/* truncated as snprintf: the full length comes back */
	ck_assert_uint_eq(cat_codec_record_key(&f.record, key, 3), 4);
	ck_assert_str_eq(key, "AA");
	ck_assert_uint_eq(cat_codec_record_key(&f.record, NULL, 0), 4);
	/* without a symbol (a delete), or an empty one: the primary key */
	f.news.symbol = NULL;
	ck_assert_uint_eq(cat_codec_record_key(&f.record, key, sizeof(key)), 6);
	ck_assert_str_eq(key, "news-1");
	f.news.symbol = "";
	cat_codec_record_key(&f.record, key, sizeof(key));
	ck_assert_str_eq(key, "news-1");

	fixture_init(&f, 3, true, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	cat_codec_record_key(&f.record, key, sizeof(key));
	ck_assert_str_eq(key, "ÄÖÜ.DE");

	/* source_metrics has no partition column: its key */
	fixture_init(&f, 4, true, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	ck_assert_uint_eq(cat_codec_record_key(&f.record, key, sizeof(key)), 7);
	ck_assert_str_eq(key, "reuters");

	/* no record */
	ck_assert_uint_eq(cat_codec_record_key(NULL, key, sizeof(key)), 0);
	ck_assert_str_eq(key, "");
}
END_TEST

START_TEST(test_record_accessors)
{
	fixture_t f;
	Catalyst__V1__Record empty = CATALYST__V1__RECORD__INIT;

	ck_assert_ptr_null(cat_codec_record_table(NULL));
	ck_assert_ptr_null(cat_codec_record_row(NULL));
	ck_assert_ptr_null(cat_codec_record_table(&empty));
	ck_assert_ptr_null(cat_codec_record_row(&empty));
	ck_assert_str_eq(cat_codec_record_pk(NULL), "");
	ck_assert_str_eq(cat_codec_record_pk(&empty), "");
	ck_assert_int_eq(cat_codec_record_version(NULL), 0);
	ck_assert_int_eq(cat_codec_record_version(&empty), 0);
	ck_assert_ptr_null(cat_codec_record_to_json(NULL));
	ck_assert_ptr_null(cat_codec_record_to_json(&empty));

	for (int t = 0; t < 5; t++) {
		fixture_init(&f, t, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
		ck_assert_ptr_eq(cat_codec_record_table(&f.record), &cat_schema_tables[t]);
		ck_assert_ptr_nonnull(cat_codec_record_row(&f.record));
		ck_assert_ptr_eq(cat_codec_record_row(&f.record)->descriptor,
				 cat_schema_tables[t].descriptor);
	}
	fixture_init(&f, 1, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	ck_assert_str_eq(cat_codec_record_pk(&f.record), "cand-1");
	ck_assert_int_eq(cat_codec_record_version(&f.record), 2);
	f.candidate.has_version = 0;
	ck_assert_int_eq(cat_codec_record_version(&f.record), 0);
	f.candidate.candidate_id = NULL;
	ck_assert_str_eq(cat_codec_record_pk(&f.record), "");
}
END_TEST

static bool is_uuid_v4(const char *s)
{
	if (strlen(s) != 36)
		return false;
	for (int i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i])) {
			return false;
		}
	}
	return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

START_TEST(test_uuid)
{
	char a[37], b[37], small[9];

	for (int i = 0; i < 1000; i++) {
		cat_codec_uuid(a, sizeof(a));
		ck_assert_msg(is_uuid_v4(a), "not a v4 UUID: %s", a);
	}
	cat_codec_uuid(b, sizeof(b));
	ck_assert_str_ne(a, b);
	cat_codec_uuid(small, sizeof(small));
	ck_assert_uint_eq(strlen(small), 8);
	cat_codec_uuid(NULL, 0);
}
END_TEST

/* --- bad JSON --------------------------------------------------------------- */

#define NEWS_OK "\"table\":\"news_raw\",\"news_id\":\"n1\",\"symbol\":\"AAPL\""

static const struct bad_json {
	const char *line;
	const char *error;
} bad_jsons[] = {
	/* not JSON, not an object */
	{"", "malformed JSON: '[' or '{' expected near end of file at column"},
	{"   ", "malformed JSON"},
	{"{", "malformed JSON"},
	{"{\"table\":\"news_raw\"", "malformed JSON"},
	{"{" NEWS_OK ",}", "malformed JSON"},
	{"{" NEWS_OK "} x", "malformed JSON: end of file expected near 'x' at column"},
	{"{" NEWS_OK "}{}", "malformed JSON: end of file expected"},
	{"{'table':'news_raw'}", "malformed JSON"},
	{"{\"table\":\"news_raw\",\"sentiment_score\":NaN}", "malformed JSON"},
	{"{" NEWS_OK ",\"catalyst_score\":Infinity}", "malformed JSON"},
	{"[1,2]", "malformed JSON: expected an object at column 1"},
	{"  [{\"table\":\"news_raw\"}]", "malformed JSON: expected an object at column 3"},
	{"\"news_raw\"", "malformed JSON"},
	{"42", "malformed JSON"},
	{"null", "malformed JSON"},
	{"{" NEWS_OK ",\"headline\":\"\xff\"}", "malformed JSON: unable to decode byte 0xff"},
	{"{" NEWS_OK ",\"headline\":\"\xc0\xaf\"}", "malformed JSON"},
	{"{" NEWS_OK ",\"headline\":\"\xed\xa0\x80\"}", "malformed JSON"},
	{"{" NEWS_OK ",\"headline\":\"\\ud800\"}", "malformed JSON: invalid Unicode"},
	{"{" NEWS_OK ",\"headline\":\"a\\u0000b\"}", "malformed JSON: \\u0000 is not allowed"},
	{"{" NEWS_OK ",\"headline\":\"tab\there\"}", "malformed JSON: control character"},
	{"{" NEWS_OK ",\"quantity\":99999999999999999999}", "malformed JSON: too big integer"},
	{"{" NEWS_OK ",\"news_id\":\"n2\"}", "malformed JSON: duplicate object key"},
	{"{\"table\":\"news_raw\",\"table\":\"news_raw\"}", "duplicate object key"},
	/* table */
	{"{}", "missing \"table\""},
	{"{\"news_id\":\"n1\"}", "missing \"table\""},
	{"{\"table\":null,\"news_id\":\"n1\"}", "missing \"table\""},
	{"{\"table\":5}", "\"table\": expected a string"},
	{"{\"table\":[\"news_raw\"]}", "\"table\": expected a string"},
	{"{\"table\":\"news\"}", "unknown table \"news\""},
	{"{\"table\":\"NEWS_RAW\"}", "unknown table \"NEWS_RAW\""},
	{"{\"table\":\"\"}", "unknown table \"\""},
	{"{\"table\":\"news_raw; drop table news_raw\"}", "unknown table \"news_raw; drop table news_raw\""},
	{"{\"table\":\"a\\nb\\\"c\"}", "unknown table \"a?b?c\""},
	{"{\"table\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
	 "unknown table \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\""},
	/* op */
	{"{" NEWS_OK ",\"op\":\"insert\"}", "unknown op \"insert\": expected \"upsert\" or \"delete\""},
	{"{" NEWS_OK ",\"op\":\"UPSERT\"}", "unknown op \"UPSERT\""},
	{"{" NEWS_OK ",\"op\":1}", "\"op\": expected \"upsert\" or \"delete\""},
	/* columns */
	{"{" NEWS_OK ",\"foo\":1}", "unknown column \"foo\" for table news_raw"},
	{"{" NEWS_OK ",\"foo\":null}", "unknown column \"foo\" for table news_raw"},
	{"{" NEWS_OK ",\"Symbol\":\"X\"}", "unknown column \"Symbol\" for table news_raw"},
	{"{\"table\":\"source_metrics\",\"source_name\":\"s\",\"symbol\":\"AAPL\"}",
	 "unknown column \"symbol\" for table source_metrics"},
	{"{" NEWS_OK ",\"a\\u0001b\\\\\":1}", "unknown column \"a?b?\" for table news_raw"},
	{"{\"table\":\"news_raw\",\"symbol\":\"AAPL\"}",
	 "missing primary key \"news_id\" for table news_raw"},
	{"{\"table\":\"news_raw\",\"news_id\":null,\"symbol\":\"AAPL\"}", "missing primary key \"news_id\""},
	{"{\"table\":\"news_raw\",\"news_id\":\"\",\"symbol\":\"AAPL\"}", "primary key \"news_id\" is empty"},
	{"{\"table\":\"source_metrics\",\"total_articles\":1}",
	 "missing primary key \"source_name\" for table source_metrics"},
	{"{\"table\":\"news_raw\",\"news_id\":\"n1\"}", "missing column \"symbol\" for table news_raw"},
	{"{\"table\":\"trade_records\",\"trade_id\":\"t1\",\"symbol\":null}",
	 "missing column \"symbol\" for table trade_records"},
	/* wrong JSON types, one per column type */
	{"{\"table\":\"news_raw\",\"news_id\":1,\"symbol\":\"AAPL\"}",
	 "column \"news_id\": expected a string"},
	{"{" NEWS_OK ",\"headline\":true}", "column \"headline\": expected a string"},
	{"{" NEWS_OK ",\"headline\":{}}", "column \"headline\": expected a string"},
	{"{" NEWS_OK ",\"url\":[]}", "column \"url\": expected a string"},
	{"{" NEWS_OK ",\"source_tier\":\"2\"}", "column \"source_tier\": expected an integer"},
	{"{" NEWS_OK ",\"source_tier\":2.0}", "column \"source_tier\": expected an integer"},
	{"{" NEWS_OK ",\"source_tier\":2147483648}",
	 "column \"source_tier\": 2147483648 out of range for a 32-bit integer"},
	{"{" NEWS_OK ",\"source_tier\":-2147483649}", "column \"source_tier\": -2147483649 out of range"},
	{"{\"table\":\"trading_candidates\",\"candidate_id\":\"c\",\"symbol\":\"A\",\"news_count\":1.5}",
	 "column \"news_count\": expected an integer"},
	{"{\"table\":\"trade_records\",\"trade_id\":\"t\",\"symbol\":\"A\",\"quantity\":1.5}",
	 "column \"quantity\": expected an integer"},
	{"{\"table\":\"trade_records\",\"trade_id\":\"t\",\"symbol\":\"A\",\"quantity\":\"10\"}",
	 "column \"quantity\": expected an integer"},
	{"{" NEWS_OK ",\"sentiment_score\":\"0.8\"}", "column \"sentiment_score\": expected a number"},
	{"{" NEWS_OK ",\"sentiment_score\":false}", "column \"sentiment_score\": expected a number"},
	{"{" NEWS_OK ",\"is_pre_market\":1}", "column \"is_pre_market\": expected true or false"},
	{"{" NEWS_OK ",\"is_pre_market\":\"true\"}", "column \"is_pre_market\": expected true or false"},
	{"{" NEWS_OK ",\"published_timestamp\":1795788312000000}",
	 "column \"published_timestamp\": expected an RFC 3339 timestamp string"},
	{"{" NEWS_OK ",\"published_timestamp\":\"2026-02-30T00:00:00Z\"}",
	 "column \"published_timestamp\": invalid RFC 3339 timestamp \"2026-02-30T00:00:00Z\""},
	{"{" NEWS_OK ",\"published_timestamp\":\"yesterday\"}", "invalid RFC 3339 timestamp \"yesterday\""},
	{"{" NEWS_OK ",\"published_timestamp\":\"2026-11-27T14:05:12\"}", "invalid RFC 3339 timestamp"},
	{"{" NEWS_OK ",\"collected_timestamp\":\"0001-01-01T00:00:00+01:00\"}",
	 "column \"collected_timestamp\": timestamp out of range"},
	/* lengths, in characters */
	{"{\"table\":\"news_raw\",\"news_id\":\"n1\",\"symbol\":\"ABCDEFGHIJK\"}",
	 "column \"symbol\": 11 characters, longer than 10"},
	{"{" NEWS_OK ",\"confirmation_status\":\"ééééééééééééééééééééééééééééééééé\"}",
	 "column \"confirmation_status\": 33 characters, longer than 32"},
	{"{" NEWS_OK ",\"signal_type\":\"buy\"}", "unknown column \"signal_type\" for table news_raw"},
	{"{\"table\":\"trading_signals\",\"signal_id\":\"s\",\"symbol\":\"A\",\"signal_type\":\"buy-buy-buy-"
	 "buy-buy\"}",
	 "column \"signal_type\": 19 characters, longer than 16"},
	/* version */
	{"{" NEWS_OK ",\"version\":0}", "column \"version\": must be at least 1, got 0"},
	{"{" NEWS_OK ",\"version\":-5}", "column \"version\": must be at least 1, got -5"},
	{"{" NEWS_OK ",\"version\":\"1\"}", "column \"version\": expected an integer"},
	{"{" NEWS_OK ",\"version\":1.0}", "column \"version\": expected an integer"},
	{"{" NEWS_OK ",\"issued_at_us\":0}", "column \"version\": must be at least 1, got 0"},
	/* delete */
	{"{" NEWS_OK ",\"op\":\"delete\",\"headline\":\"h\"}",
	 "delete carries only the primary key, version and symbol, not \"headline\""},
	{"{\"table\":\"trade_records\",\"op\":\"delete\",\"trade_id\":\"t\",\"quantity\":1}",
	 "delete carries only the primary key, version and symbol, not \"quantity\""},
	{"{\"table\":\"source_metrics\",\"op\":\"delete\",\"source_name\":\"s\",\"accuracy_rate\":1}",
	 "delete carries only the primary key and version, not \"accuracy_rate\""},
	{"{\"table\":\"trade_records\",\"op\":\"delete\",\"symbol\":\"A\",\"version\":3}",
	 "missing primary key \"trade_id\""},
	{"{\"table\":\"news_raw\",\"news_id\":\"n1\",\"op\":\"delete\",\"symbol\":\"ABCDEFGHIJK\",\"version\":3}",
	 "column \"symbol\": 11 characters, longer than 10"},
	{"{\"table\":\"trade_records\",\"op\":\"delete\",\"version\":3}", "missing primary key \"trade_id\""},
	/* meta */
	{"{" NEWS_OK ",\"command_id\":5}", "\"command_id\": expected a string"},
	{"{" NEWS_OK ",\"command_id\":\"\"}", "\"command_id\" is empty"},
	{"{" NEWS_OK ",\"command_id\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
	 "\"command_id\": 129 characters, longer than 128"},
	{"{" NEWS_OK ",\"producer\":[]}", "\"producer\": expected a string"},
	{"{" NEWS_OK ",\"trace_id\":1}", "\"trace_id\": expected a string"},
	{"{" NEWS_OK ",\"issued_at_us\":\"now\"}", "\"issued_at_us\": expected a non-negative integer"},
	{"{" NEWS_OK ",\"issued_at_us\":-1}", "\"issued_at_us\": expected a non-negative integer"},
	{"{" NEWS_OK ",\"issued_at_us\":1.5}", "\"issued_at_us\": expected a non-negative integer"},
};
#define N_BAD_JSONS (sizeof(bad_jsons) / sizeof(bad_jsons[0]))

START_TEST(test_json_rejects)
{
	const struct bad_json *c = &bad_jsons[_i];
	Catalyst__V1__WriteCommand *cmd = (Catalyst__V1__WriteCommand *)&cmd;
	char errstr[ERRSTR_SIZE] = "";
	cat_err_t err;

	err = cat_codec_write_from_json(c->line, strlen(c->line), "test", &cmd, errstr, sizeof(errstr));
	ck_assert_msg(err == CAT_ERR_PERMANENT, "%s: %s", c->line, cat_err_name(err));
	ck_assert_ptr_null(cmd);
	ck_assert_msg(strstr(errstr, c->error) != NULL, "%s: \"%s\" lacks \"%s\"", c->line, errstr, c->error);
	ck_assert_ptr_null(strchr(errstr, '\n'));
}
END_TEST

/* The length is the line's: bytes after an embedded NUL are still read. */
START_TEST(test_json_embedded_nul)
{
	static const char line[] = "{" NEWS_OK "}\0garbage";
	Catalyst__V1__WriteCommand *cmd;
	char errstr[ERRSTR_SIZE];

	ck_assert_int_eq(
		cat_codec_write_from_json(line, sizeof(line) - 1, NULL, &cmd, errstr, sizeof(errstr)),
		CAT_ERR_PERMANENT);
	ck_assert_ptr_nonnull(strstr(errstr, "malformed JSON"));
	ck_assert_int_eq(cat_codec_write_from_json(line, strlen(line), NULL, &cmd, errstr, sizeof(errstr)),
			 CAT_OK);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	ck_assert_int_eq(cat_codec_write_from_json(NULL, 0, NULL, &cmd, errstr, sizeof(errstr)),
			 CAT_ERR_PERMANENT);
}
END_TEST

/* --- accepted JSON ---------------------------------------------------------- */

START_TEST(test_json_defaults)
{
	static const char line[] = "{" NEWS_OK "}\n";
	Catalyst__V1__WriteCommand *cmd, *cmd2;
	char errstr[ERRSTR_SIZE];
	int64_t before = cat_time_now_us();

	ck_assert_int_eq(cat_codec_write_from_json(line, strlen(line), "news-service/1.4.2", &cmd, errstr,
						   sizeof(errstr)),
			 CAT_OK);
	ck_assert(cmd->has_op);
	ck_assert_int_eq(cmd->op, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	ck_assert(is_uuid_v4(cmd->meta->command_id));
	ck_assert_str_eq(cmd->meta->producer, "news-service/1.4.2");
	ck_assert_ptr_null(cmd->meta->trace_id);
	ck_assert(cmd->meta->has_issued_at_us);
	ck_assert_int_ge(cmd->meta->issued_at_us, before);
	ck_assert_int_le(cmd->meta->issued_at_us, cat_time_now_us());
	ck_assert(cmd->record->news_raw->has_version);
	ck_assert_int_eq(cmd->record->news_raw->version, cmd->meta->issued_at_us);
	ck_assert(!cmd->record->news_raw->has_sentiment_score);
	ck_assert_ptr_null(cmd->record->news_raw->headline);

	/* a second line gets another command id */
	ck_assert_int_eq(cat_codec_write_from_json(line, strlen(line), NULL, &cmd2, errstr, sizeof(errstr)),
			 CAT_OK);
	ck_assert_str_ne(cmd->meta->command_id, cmd2->meta->command_id);
	ck_assert_ptr_null(cmd2->meta->producer);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	catalyst__v1__write_command__free_unpacked(cmd2, NULL);
}
END_TEST

static Catalyst__V1__WriteCommand *json_ok(const char *line)
{
	Catalyst__V1__WriteCommand *cmd = NULL;
	char errstr[ERRSTR_SIZE] = "";

	ck_assert_msg(cat_codec_write_from_json(line, strlen(line), "default", &cmd, errstr,
						sizeof(errstr)) == CAT_OK,
		      "%s: %s", line, errstr);
	return cmd;
}

START_TEST(test_json_accepts)
{
	Catalyst__V1__WriteCommand *cmd;
	Catalyst__V1__NewsRaw *n;
	char *status = repeat("é", 32);
	char line[1024], key[64];

	/* the line's producer wins; nulls are absent; doubles take integers */
	cmd = json_ok("{" NEWS_OK ",\"producer\":\"cli\",\"headline\":null,\"sentiment_score\":1,"
		      "\"catalyst_score\":-2.5e-3,\"source_tier\":-2147483648,\"version\":5,\"op\":null}");
	n = cmd->record->news_raw;
	ck_assert_str_eq(cmd->meta->producer, "cli");
	ck_assert_ptr_null(n->headline);
	ck_assert(n->has_sentiment_score);
	ck_assert(n->sentiment_score == 1.0);
	ck_assert(n->catalyst_score == -2.5e-3);
	ck_assert_int_eq(n->source_tier, INT32_MIN);
	ck_assert_int_eq(n->version, 5);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* limits are inclusive, in characters */
	snprintf(line, sizeof(line),
		 "{\"table\":\"news_raw\",\"news_id\":\"n1\",\"symbol\":\"ABCDEFGHIJ\",\"confirmation_"
		 "status\":\"%s\","
		 "\"source_tier\":2147483647}",
		 status);
	cmd = json_ok(line);
	ck_assert_str_eq(cmd->record->news_raw->confirmation_status, status);
	ck_assert_int_eq(cmd->record->news_raw->source_tier, INT32_MAX);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* a delete: key, and version from the issue time */
	cmd = json_ok(
		"{\"table\":\"trade_records\",\"op\":\"delete\",\"trade_id\":\"t1\",\"issued_at_us\":77,"
		"\"symbol\":null}");
	ck_assert_int_eq(cmd->op, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE);
	ck_assert_str_eq(cmd->record->trade_records->trade_id, "t1");
	ck_assert_ptr_null(cmd->record->trade_records->symbol);
	ck_assert_int_eq(cmd->record->trade_records->version, 77);
	ck_assert_int_eq(cmd->meta->issued_at_us, 77);
	ck_assert_uint_eq(cat_codec_record_key(cmd->record, key, sizeof(key)), 2);
	ck_assert_str_eq(key, "t1"); /* no symbol: keyed by the primary key */
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* a delete with its symbol: keyed like the row's upserts */
	cmd = json_ok("{\"table\":\"news_raw\",\"op\":\"delete\",\"news_id\":\"n9\",\"symbol\":\"MSFT\","
		      "\"version\":5}");
	ck_assert_int_eq(cmd->op, CATALYST__V1__WRITE_OP__WRITE_OP_DELETE);
	ck_assert_str_eq(cmd->record->news_raw->symbol, "MSFT");
	ck_assert_uint_eq(cat_codec_record_key(cmd->record, key, sizeof(key)), 4);
	ck_assert_str_eq(key, "MSFT");
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* escapes and text are carried as they are */
	cmd = json_ok("{" NEWS_OK
		      ",\"headline\":\"\\u00e9\\ud83d\\ude00 \\\"q\\\" \\/ \\n\",\"op\":\"upsert\"}");
	ck_assert_str_eq(cmd->record->news_raw->headline, "é😀 \"q\" / \n");
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* timestamps in any zone, kept as UTC µs */
	cmd = json_ok("{" NEWS_OK ",\"published_timestamp\":\"2026-11-27T14:05:12.123456+08:00\","
		      "\"collected_timestamp\":\"0001-01-01T00:00:00Z\"}");
	ck_assert_int_eq(cmd->record->news_raw->published_timestamp, 1795759512123456);
	ck_assert_int_eq(cmd->record->news_raw->collected_timestamp, -62135596800000000);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	free(status);
}
END_TEST

/* --- JSON -> protobuf -> JSON --------------------------------------------------- */

static const struct json_trip {
	const char *in;
	const char *out; /* cat_codec_write_to_json of the command */
} json_trips[] = {
	{"{\"table\":\"news_raw\",\"news_id\":\"news-1\",\"symbol\":\"AAPL\",\"headline\":\"Apple beats — "
	 "“estimates”\","
	 "\"source\":\"reuters\",\"url\":\"https://example.com/a?b=1\","
	 "\"published_timestamp\":\"2026-11-27T14:05:12.123456+08:00\",\"collected_timestamp\":\"2026-11-27 "
	 "06:05:13z\","
	 "\"content_snippet\":\"line 1\\nline 2 \\\"quoted\\\" \\\\ tab\\t\",\"sentiment_score\":0.8,"
	 "\"catalyst_score\":-0.25,\"is_pre_market\":true,\"source_tier\":2,\"confirmation_status\":"
	 "\"confirmed\","
	 "\"narrative_cluster_id\":\"cluster-9\",\"version\":1795788312000000,\"command_id\":\"cmd-n1\","
	 "\"producer\":\"news-service/1.4.2\",\"trace_id\":\"t-1\",\"issued_at_us\":1795788312000001}",
	 "{\"table\":\"news_raw\",\"news_id\":\"news-1\",\"symbol\":\"AAPL\",\"headline\":\"Apple beats — "
	 "“estimates”\","
	 "\"source\":\"reuters\",\"url\":\"https://example.com/a?b=1\","
	 "\"published_timestamp\":\"2026-11-27T06:05:12.123456Z\",\"collected_timestamp\":\"2026-11-27T06:05:"
	 "13.000000Z\","
	 "\"content_snippet\":\"line 1\\nline 2 \\\"quoted\\\" \\\\ tab\\t\",\"sentiment_score\":0.8,"
	 "\"catalyst_score\":-0.25,\"is_pre_market\":true,\"source_tier\":2,\"confirmation_status\":"
	 "\"confirmed\","
	 "\"narrative_cluster_id\":\"cluster-9\",\"version\":1795788312000000,\"op\":\"upsert\",\"command_"
	 "id\":\"cmd-n1\","
	 "\"producer\":\"news-service/1.4.2\",\"trace_id\":\"t-1\",\"issued_at_us\":1795788312000001}"},
	{"{\"table\":\"trading_candidates\",\"candidate_id\":\"cand-1\",\"symbol\":\"TSLA\","
	 "\"selection_timestamp\":\"1970-01-01T00:00:00Z\",\"catalyst_score\":0.30000000000000004,"
	 "\"technical_score\":1e300,\"combined_score\":-0.0,\"primary_catalyst\":\"earnings\",\"news_count\":"
	 "-2147483648,"
	 "\"traded\":false,\"version\":2,\"command_id\":\"cmd-c1\",\"issued_at_us\":5}",
	 "{\"table\":\"trading_candidates\",\"candidate_id\":\"cand-1\",\"symbol\":\"TSLA\","
	 "\"selection_timestamp\":\"1970-01-01T00:00:00.000000Z\",\"catalyst_score\":0.30000000000000004,"
	 "\"technical_score\":1.0000000000000001e300,\"combined_score\":-0.0,\"primary_catalyst\":"
	 "\"earnings\","
	 "\"news_count\":-2147483648,\"traded\":false,\"version\":2,\"op\":\"upsert\",\"command_id\":\"cmd-"
	 "c1\","
	 "\"producer\":\"default\",\"issued_at_us\":5}"},
	{"{\"table\":\"trading_signals\",\"signal_id\":\"sig-1\",\"candidate_id\":\"cand-1\",\"symbol\":"
	 "\"NVDA\","
	 "\"signal_type\":\"buy\",\"confidence\":0.95,\"entry_price\":123.45,\"stop_loss\":120,\"take_"
	 "profit\":130.5,"
	 "\"generated_timestamp\":\"0001-01-01T00:00:00Z\",\"expires_timestamp\":\"9999-12-31T23:59:59."
	 "999999999Z\","
	 "\"version\":9223372036854775807,\"command_id\":\"cmd-s1\",\"trace_id\":\"\",\"issued_at_us\":7}",
	 "{\"table\":\"trading_signals\",\"signal_id\":\"sig-1\",\"candidate_id\":\"cand-1\",\"symbol\":"
	 "\"NVDA\","
	 "\"signal_type\":\"buy\",\"confidence\":0.95,\"entry_price\":123.45,\"stop_loss\":120.0,\"take_"
	 "profit\":130.5,"
	 "\"generated_timestamp\":\"0001-01-01T00:00:00.000000Z\",\"expires_timestamp\":\"9999-12-31T23:59:"
	 "59.999999Z\","
	 "\"version\":9223372036854775807,\"op\":\"upsert\",\"command_id\":\"cmd-s1\",\"producer\":"
	 "\"default\","
	 "\"trace_id\":\"\",\"issued_at_us\":7}"},
	{"{\"table\":\"trade_records\",\"trade_id\":\"trade-1\",\"signal_id\":\"sig-1\",\"symbol\":\"ÄÖÜ."
	 "DE\","
	 "\"entry_news_id\":\"news-1\",\"side\":\"long\",\"quantity\":-9223372036854775808,\"entry_price\":"
	 "100,"
	 "\"exit_price\":101.5,\"entry_timestamp\":\"1969-12-31T23:59:59.999999Z\","
	 "\"exit_timestamp\":\"1970-01-01T00:00:00.000001Z\",\"pnl_amount\":-1.5e-7,\"pnl_percentage\":1.5,"
	 "\"exit_reason\":\"\",\"version\":1,\"command_id\":\"cmd-t1\",\"issued_at_us\":8}",
	 "{\"table\":\"trade_records\",\"trade_id\":\"trade-1\",\"signal_id\":\"sig-1\",\"symbol\":\"ÄÖÜ."
	 "DE\","
	 "\"entry_news_id\":\"news-1\",\"side\":\"long\",\"quantity\":-9223372036854775808,\"entry_price\":"
	 "100.0,"
	 "\"exit_price\":101.5,\"entry_timestamp\":\"1969-12-31T23:59:59.999999Z\","
	 "\"exit_timestamp\":\"1970-01-01T00:00:00.000001Z\",\"pnl_amount\":-1.5e-7,\"pnl_percentage\":1.5,"
	 "\"exit_reason\":\"\",\"version\":1,\"op\":\"upsert\",\"command_id\":\"cmd-t1\",\"producer\":"
	 "\"default\","
	 "\"issued_at_us\":8}"},
	{"{\"table\":\"source_metrics\",\"source_name\":\"reuters\",\"total_articles\":0,"
	 "\"accurate_predictions\":9223372036854775807,\"accuracy_rate\":0.5,\"avg_price_impact\":0."
	 "3333333333333333,"
	 "\"last_updated\":\"2026-11-27T14:05:12Z\",\"version\":99,\"command_id\":\"cmd-m1\",\"issued_at_"
	 "us\":9}",
	 "{\"table\":\"source_metrics\",\"source_name\":\"reuters\",\"total_articles\":0,"
	 "\"accurate_predictions\":9223372036854775807,\"accuracy_rate\":0.5,\"avg_price_impact\":0."
	 "3333333333333333,"
	 "\"last_updated\":\"2026-11-27T14:05:12.000000Z\",\"version\":99,\"op\":\"upsert\",\"command_id\":"
	 "\"cmd-m1\","
	 "\"producer\":\"default\",\"issued_at_us\":9}"},
	{"{\"op\":\"delete\",\"table\":\"source_metrics\",\"source_name\":\"reuters\",\"command_id\":\"cmd-"
	 "d1\","
	 "\"issued_at_us\":10}",
	 "{\"table\":\"source_metrics\",\"source_name\":\"reuters\",\"version\":10,\"op\":\"delete\","
	 "\"command_id\":\"cmd-d1\",\"producer\":\"default\",\"issued_at_us\":10}"},
};
#define N_JSON_TRIPS (sizeof(json_trips) / sizeof(json_trips[0]))

START_TEST(test_json_round_trip)
{
	const struct json_trip *c = &json_trips[_i];
	Catalyst__V1__WriteCommand *cmd, *decoded, *again;
	char errstr[ERRSTR_SIZE];
	char *out, *out2;
	uint8_t *buf;
	size_t len;

	cmd = json_ok(c->in);
	out = cat_codec_write_to_json(cmd);
	ck_assert_ptr_nonnull(out);
	ck_assert_str_eq(out, c->out);

	/* through the wire and back */
	buf = pack_command(cmd, &len);
	ck_assert_int_eq(cat_codec_write_decode(buf, len, &decoded, errstr, sizeof(errstr)), CAT_OK);
	assert_same_command(cmd, decoded);
	out2 = cat_codec_write_to_json(decoded);
	ck_assert_str_eq(out2, c->out);

	/* the output reads back as the same command */
	again = json_ok(out);
	assert_same_command(cmd, again);

	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	catalyst__v1__write_command__free_unpacked(decoded, NULL);
	catalyst__v1__write_command__free_unpacked(again, NULL);
	free(buf);
	free(out);
	free(out2);
}
END_TEST

/* Record JSON of the protobuf fixtures reads back as the same record. */
START_TEST(test_record_json_round_trip)
{
	int table = _i / 2;
	bool full = _i % 2 == 0;
	fixture_t f;
	Catalyst__V1__WriteCommand *cmd;
	char *json;

	fixture_init(&f, table, full, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	json = cat_codec_record_to_json(&f.record);
	ck_assert_ptr_nonnull(json);
	ck_assert_msg(strncmp(json, "{\"table\":\"", 10) == 0, "%s", json);
	cmd = json_ok(json);
	/* the meta differs; the records are the same */
	{
		size_t a_len = catalyst__v1__record__get_packed_size(&f.record);
		size_t b_len = catalyst__v1__record__get_packed_size(cmd->record);
		uint8_t *a = malloc(a_len), *b = malloc(b_len);

		catalyst__v1__record__pack(&f.record, a);
		catalyst__v1__record__pack(cmd->record, b);
		ck_assert_uint_eq(a_len, b_len);
		ck_assert_msg(memcmp(a, b, a_len) == 0, "record differs after %s", json);
		free(a);
		free(b);
	}
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	free(json);
}
END_TEST

START_TEST(test_record_json_numbers)
{
	fixture_t f;
	char *json;

	fixture_init(&f, 4, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.metric.has_accuracy_rate = 1;
	f.metric.accuracy_rate = 0.8;
	json = cat_codec_record_to_json(&f.record);
	ck_assert_str_eq(json,
			 "{\"table\":\"source_metrics\",\"source_name\":\"reuters\",\"accuracy_rate\":0.8,"
			 "\"version\":99}");
	free(json);
	f.metric.accuracy_rate = 5e-324;
	json = cat_codec_record_to_json(&f.record);
	ck_assert_ptr_nonnull(strstr(json, "\"accuracy_rate\":5e-324"));
	free(json);
	f.metric.accuracy_rate = NAN;
	ck_assert_ptr_null(cat_codec_record_to_json(&f.record));
	f.metric.accuracy_rate = INFINITY;
	ck_assert_ptr_null(cat_codec_record_to_json(&f.record));
	f.metric.accuracy_rate = 1;
	f.metric.has_last_updated = 1;
	f.metric.last_updated = INT64_MIN;
	ck_assert_ptr_null(cat_codec_record_to_json(&f.record));
}
END_TEST

/* --- the hand-written encoder (cat_codec_record_json) ------------------------------ */

/* The hand-written text parses as JSON and equals the tree's (jansson
 * compares reals exactly), every table, every column or only the required. */
START_TEST(test_record_json_same_as_tree)
{
	fixture_t f;
	char *tree_text, *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	json_t *tree, *mine;
	json_error_t jerr;

	fixture_init(&f, _i / 2, _i % 2 == 0, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	tree_text = cat_codec_record_to_json(&f.record);
	ck_assert_ptr_nonnull(tree_text);
	len = cat_codec_record_json(&f.record, &buf, &cap);
	ck_assert_int_gt(len, 0);
	ck_assert_uint_eq(strlen(buf), (size_t)len);
	ck_assert_uint_ge(cap, (size_t)len + 1);
	tree = json_loads(tree_text, JSON_REJECT_DUPLICATES, &jerr);
	mine = json_loadb(buf, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
	ck_assert_msg(mine != NULL, "not JSON: %s (%s)", buf, jerr.text);
	ck_assert_msg(json_equal(tree, mine), "%s\n!=\n%s", buf, tree_text);
	/* the same keys in the same order */
	{
		const char *key;
		json_t *value;
		const char *p = buf;

		json_object_foreach(tree, key, value) {
			char quoted[80];

			(void)value;
			snprintf(quoted, sizeof(quoted), "\"%s\":", key);
			ck_assert_ptr_nonnull(p = strstr(p, quoted));
		}
	}
	/* a second record reuses the buffer */
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), len);
	json_decref(tree);
	json_decref(mine);
	free(tree_text);
	free(buf);
}
END_TEST

START_TEST(test_record_json_escapes)
{
	fixture_t f;
	char text[64], *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	json_t *parsed;
	json_error_t jerr;

	fixture_init(&f, 4, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.metric.source_name = "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f é€😀";
	len = cat_codec_record_json(&f.record, &buf, &cap);
	ck_assert_int_gt(len, 0);
	ck_assert_str_eq(buf, "{\"table\":\"source_metrics\",\"source_name\":"
			      "\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f é€😀\",\"version\":99}");
	parsed = json_loads(buf, 0, &jerr);
	ck_assert_ptr_nonnull(parsed);
	ck_assert_str_eq(json_string_value(json_object_get(parsed, "source_name")), f.metric.source_name);
	json_decref(parsed);

	/* every control character, each escaped */
	for (int c = 1; c < 0x20; c++)
		text[c - 1] = (char)c;
	text[0x1f] = '\0';
	f.metric.source_name = text;
	len = cat_codec_record_json(&f.record, &buf, &cap);
	ck_assert_int_gt(len, 0);
	parsed = json_loads(buf, 0, &jerr);
	ck_assert_msg(parsed != NULL, "%s", jerr.text);
	ck_assert_str_eq(json_string_value(json_object_get(parsed, "source_name")), text);
	json_decref(parsed);
	for (ssize_t i = 0; i < len; i++)
		ck_assert_int_ge((unsigned char)buf[i], 0x20);

	/* invalid UTF-8 has no JSON form, as with the tree */
	f.metric.source_name = "bad \xc3(";
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), -1);
	f.metric.source_name = "\xed\xa0\x80"; /* a surrogate */
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), -1);
	/* nor NaN, infinity, a timestamp out of range, a row of another table */
	f.metric.source_name = "reuters";
	f.metric.has_accuracy_rate = 1;
	f.metric.accuracy_rate = NAN;
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), -1);
	f.metric.accuracy_rate = -INFINITY;
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), -1);
	f.metric.accuracy_rate = 1;
	f.metric.has_last_updated = 1;
	f.metric.last_updated = INT64_MIN;
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), -1);
	f.record.row_case = CATALYST__V1__RECORD__ROW_NEWS_RAW;
	ck_assert_int_eq(cat_codec_record_json(&f.record, &buf, &cap), -1);
	free(buf);

	/* a long text grows a small buffer */
	{
		char *big = repeat("\"\\\n", 3000);

		fixture_init(&f, 4, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
		f.metric.source_name = big;
		cap = 8;
		buf = malloc(cap);
		len = cat_codec_record_json(&f.record, &buf, &cap);
		ck_assert_int_gt(len, 18000);
		parsed = json_loads(buf, 0, &jerr);
		ck_assert_ptr_nonnull(parsed);
		ck_assert_str_eq(json_string_value(json_object_get(parsed, "source_name")), big);
		json_decref(parsed);
		free(big);
		free(buf);
	}
}
END_TEST

/* One double through the encoder: valid JSON, a real, read back exactly. */
static void check_double(double d, const char *want)
{
	fixture_t f;
	char *buf = NULL, *p, *end;
	size_t cap = 0;
	json_t *parsed, *value;
	json_error_t jerr;

	fixture_init(&f, 4, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.metric.has_accuracy_rate = 1;
	f.metric.accuracy_rate = d;
	ck_assert_int_gt(cat_codec_record_json(&f.record, &buf, &cap), 0);
	parsed = json_loads(buf, 0, &jerr);
	ck_assert_msg(parsed != NULL, "%.17g: %s: %s", d, buf, jerr.text);
	value = json_object_get(parsed, "accuracy_rate");
	ck_assert_msg(json_is_real(value), "%.17g: %s", d, buf);
	ck_assert_msg(json_real_value(value) == d || (d == 0 && json_real_value(value) == 0), "%.17g: %s", d,
		      buf);
	p = strstr(buf, "\"accuracy_rate\":") + 16;
	ck_assert_msg(strtod(p, &end) == d && *end == ',', "%.17g: %s", d, buf);
	ck_assert_msg(signbit(strtod(p, NULL)) == signbit(d), "%.17g: %s", d, buf);
	if (want) {
		ck_assert_int_eq(strncmp(p, want, strlen(want)), 0);
		ck_assert_int_eq(p[strlen(want)], ',');
	}
	json_decref(parsed);
	free(buf);
}

START_TEST(test_record_json_doubles)
{
	static const struct {
		double d;
		const char *text;
	} known[] = {
		{0.8, "0.8"},	 {-0.25, "-0.25"},	  {123.45, "123.45"},	{130, "130.0"},
		{0, "0.0"},	 {-0.0, "-0.0"},	  {1.5e-7, "0.00000015"}, {100.001, "100.001"},
		{1e15, "1000000000000000.0"}, {0.1 + 0.2, NULL}, {1.0 / 3, NULL}, {5e-324, NULL},
		{1e300, NULL},	 {-1.7976931348623157e308, NULL}, {9007199254740993.0, NULL},
		{2.2250738585072014e-308, NULL}, {1e-7, "0.0000001"}, {9.99e-8, NULL},
	};
	uint64_t state = 0x9e3779b97f4a7c15ULL;

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		check_double(known[i].d, known[i].text);
	/* random bit patterns, and prices with few decimals */
	for (int i = 0; i < 20000; i++) {
		double d;

		state ^= state << 13, state ^= state >> 7, state ^= state << 17;
		memcpy(&d, &state, sizeof(d));
		if (isfinite(d))
			check_double(d, NULL);
		check_double((double)(int64_t)(state % 100000000) / 100.0, NULL);
		check_double((double)(int64_t)(state % 1000000) / 1e6 - 0.5, NULL);
	}
}
END_TEST

START_TEST(test_write_to_json_needs_op_and_record)
{
	fixture_t f;
	char *json;

	ck_assert_ptr_null(cat_codec_write_to_json(NULL));
	fixture_init(&f, 0, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	f.cmd.op = CATALYST__V1__WRITE_OP__WRITE_OP_UNSPECIFIED;
	ck_assert_ptr_null(cat_codec_write_to_json(&f.cmd));
	f.cmd.op = (Catalyst__V1__WriteOp)99;
	ck_assert_ptr_null(cat_codec_write_to_json(&f.cmd));
	f.cmd.has_op = 0;
	ck_assert_ptr_null(cat_codec_write_to_json(&f.cmd));
	f.cmd.has_op = 1;
	f.cmd.op = CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
	f.cmd.record = NULL;
	ck_assert_ptr_null(cat_codec_write_to_json(&f.cmd));
	f.cmd.record = &f.record;
	f.cmd.meta = NULL;
	json = cat_codec_write_to_json(&f.cmd);
	/* a delete shows what it carries: key, symbol and version (not the headline) */
	ck_assert_str_eq(json, "{\"table\":\"news_raw\",\"news_id\":\"news-1\",\"symbol\":\"AAPL\","
			       "\"version\":1795788312000000,\"op\":\"delete\"}");
	free(json);
}
END_TEST

/* The record's bytes spliced into a ChangeBatchView read back, as a
 * ChangeBatch, as the same record; a record given twice or not at all has no
 * one slice. */
START_TEST(test_record_bytes_in_change_view)
{
	wire_t w = {.len = 0}, row = {.len = 0}, twice = {.len = 0}, none = {.len = 0};
	Catalyst__V1__WriteCommand *cmd = NULL;
	Catalyst__V1__ChangeView change = CATALYST__V1__CHANGE_VIEW__INIT, *changes[1] = {&change};
	Catalyst__V1__ChangeBatchView view = CATALYST__V1__CHANGE_BATCH_VIEW__INIT;
	Catalyst__V1__ChangeBatch *batch;
	uint8_t packed[1024], want[1024], got[1024];
	const uint8_t *bytes = NULL;
	size_t len = 0, n;
	char errstr[256];

	w_news_row(&row);
	w_str(&row, 3, "headline \xc3\xa9");
	w_news_command(&w, &row);
	ck_assert_int_eq(cat_codec_write_decode(w.buf, w.len, &cmd, errstr, sizeof(errstr)), CAT_OK);
	ck_assert(cat_codec_write_record_bytes(w.buf, w.len, &bytes, &len));
	ck_assert(bytes > w.buf && bytes + len <= w.buf + w.len);

	change.has_op = 1;
	change.op = CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT;
	change.has_record = 1;
	change.record.data = (uint8_t *)bytes;
	change.record.len = len;
	change.command_id = "cmd-1";
	view.n_changes = 1;
	view.changes = changes;
	view.has_committed_at_us = 1;
	view.committed_at_us = 42;
	n = catalyst__v1__change_batch_view__get_packed_size(&view);
	ck_assert_uint_le(n, sizeof(packed));
	catalyst__v1__change_batch_view__pack(&view, packed);
	batch = catalyst__v1__change_batch__unpack(NULL, n, packed);
	ck_assert_ptr_nonnull(batch);
	ck_assert_uint_eq(batch->n_changes, 1);
	ck_assert_str_eq(batch->changes[0]->command_id, "cmd-1");
	ck_assert_int_eq(batch->committed_at_us, 42);
	ck_assert_str_eq(batch->changes[0]->record->news_raw->headline, "headline \xc3\xa9");
	ck_assert_uint_eq(catalyst__v1__record__get_packed_size(batch->changes[0]->record),
			  catalyst__v1__record__get_packed_size(cmd->record));
	catalyst__v1__record__pack(cmd->record, want);
	catalyst__v1__record__pack(batch->changes[0]->record, got);
	ck_assert_mem_eq(want, got, catalyst__v1__record__get_packed_size(cmd->record));
	catalyst__v1__change_batch__free_unpacked(batch, NULL);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);

	/* field 3 twice: a decoder merges them, no single slice */
	w_raw(&twice, w.buf, w.len);
	w_raw(&twice, bytes - 2, len + 2);
	ck_assert(!cat_codec_write_record_bytes(twice.buf, twice.len, &bytes, &len));
	/* none, and malformed */
	w_meta(&none);
	ck_assert(!cat_codec_write_record_bytes(none.buf, none.len, &bytes, &len));
	ck_assert(!cat_codec_write_record_bytes(w.buf, w.len - 1, &bytes, &len));
	ck_assert(!cat_codec_write_record_bytes("\xff", 1, &bytes, &len));
}
END_TEST

/* --- the other commands' decode boundary --------------------------------------------- */

/* Packs `m` into buf (malloc'd); *len its size. */
static uint8_t *pack_message(const ProtobufCMessage *m, size_t *len)
{
	uint8_t *buf;

	*len = protobuf_c_message_get_packed_size(m);
	buf = malloc(*len ? *len : 1);
	ck_assert_ptr_nonnull(buf);
	protobuf_c_message_pack(m, buf);
	return buf;
}

/* Replaces the first `from` byte of buf with `to` (a NUL or a bad byte
 * smuggled into a string, as a hostile producer would). */
static void poke(uint8_t *buf, size_t len, uint8_t from, uint8_t to)
{
	uint8_t *p = memchr(buf, from, len);

	ck_assert_ptr_nonnull(p);
	*p = to;
}

START_TEST(test_cache_command_decode)
{
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__CacheCommand cmd = CATALYST__V1__CACHE_COMMAND__INIT, *out = NULL;
	Catalyst__V1__CacheCommand__Set set = CATALYST__V1__CACHE_COMMAND__SET__INIT;
	Catalyst__V1__CacheCommand__Warm warm = CATALYST__V1__CACHE_COMMAND__WARM__INIT;
	char errstr[256], long_key[CAT_CODEC_CACHE_KEY_MAX + 2];
	uint8_t *buf;
	size_t len;

	meta.command_id = "c-1";
	cmd.meta = &meta;
	cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_SET;
	cmd.set = &set;
	set.key = "news:1~evil";
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(out->set->key, "news:1~evil");
	catalyst__v1__cache_command__free_unpacked(out, NULL);
	/* "news:1\0evil" is refused, not cut to news:1 */
	poke(buf, len, '~', 0);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_ptr_null(out);
	ck_assert_str_eq(errstr, "field Set.key: contains a NUL byte");
	poke(buf, len, 0, 0xff);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "field Set.key: invalid UTF-8");
	free(buf);

	/* an empty key, a key too long, a negative ttl */
	set.key = "";
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "set: key is empty");
	free(buf);
	memset(long_key, 'k', sizeof(long_key) - 1);
	long_key[sizeof(long_key) - 1] = '\0';
	set.key = long_key;
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "set: key: 1025 bytes, longer than 1024");
	free(buf);
	set.key = "news:1";
	set.has_ttl_seconds = 1;
	set.ttl_seconds = -5;
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "set: negative ttl_seconds -5");
	free(buf);

	/* an enum value the .proto does not define */
	cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_WARM;
	cmd.warm = &warm;
	warm.has_profile = 1;
	warm.profile = (Catalyst__V1__CacheCommand__WarmProfile)77;
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "field Warm.profile: unknown value 77");
	free(buf);

	/* no action; a bad meta; not protobuf; too large */
	cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION__NOT_SET;
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "CacheCommand without an action");
	free(buf);
	meta.command_id = "";
	cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_WARM;
	warm.profile = CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD;
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_cache_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "\"command_id\" is empty");
	free(buf);
	ck_assert_int_eq(cat_codec_cache_command_decode("\xff\xff\xff", 3, &out, errstr, sizeof(errstr)),
			 CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "could not decode CacheCommand: invalid protobuf");
	ck_assert_int_eq(cat_codec_cache_command_decode("", CAT_CODEC_MAX_MESSAGE_BYTES + 1, &out, errstr,
							 sizeof(errstr)),
			 CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "CacheCommand of 1048577 bytes, larger than the limit of 1048576");
}
END_TEST

START_TEST(test_backup_command_decode)
{
	static const struct {
		const char *tag;
		bool ok;
	} tags[] = {
		{"daily", true},  {"a", true},	  {"hourly_2-x", true}, {"012345678901234567890123456789ab", true},
		{"", false},	  {"Daily", false}, {"a b", false},	    {"012345678901234567890123456789abc", false},
		{"é", false},	  {"x{y}", false},  {"a/b", false},
	};
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__BackupCommand cmd = CATALYST__V1__BACKUP_COMMAND__INIT, *out = NULL;
	Catalyst__V1__BackupCommand__Full full = CATALYST__V1__BACKUP_COMMAND__FULL__INIT;
	Catalyst__V1__BackupCommand__Verify verify = CATALYST__V1__BACKUP_COMMAND__VERIFY__INIT;
	char errstr[256];
	uint8_t *buf;
	size_t len;

	meta.command_id = "b-1";
	cmd.meta = &meta;
	cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_FULL;
	cmd.full = &full;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		full.tag = (char *)tags[i].tag;
		ck_assert_int_eq(cat_codec_backup_tag_valid(tags[i].tag), tags[i].ok);
		buf = pack_message(&cmd.base, &len);
		ck_assert_int_eq(cat_codec_backup_command_decode(buf, len, &out, errstr, sizeof(errstr)),
				 tags[i].ok ? CAT_OK : CAT_ERR_PERMANENT);
		if (out)
			catalyst__v1__backup_command__free_unpacked(out, NULL);
		else
			ck_assert_msg(strstr(errstr, "must match [a-z0-9_-]{1,32}"), "%s", errstr);
		out = NULL;
		free(buf);
	}
	/* a verify needs its backup */
	cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_VERIFY;
	cmd.verify = &verify;
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_backup_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "verify: backup_id is missing");
	free(buf);
}
END_TEST

START_TEST(test_sync_and_changes_decode)
{
	Catalyst__V1__SyncCommand cmd = CATALYST__V1__SYNC_COMMAND__INIT, *out = NULL;
	Catalyst__V1__SyncCommand__ResyncTable resync = CATALYST__V1__SYNC_COMMAND__RESYNC_TABLE__INIT;
	Catalyst__V1__ChangeBatch batch = CATALYST__V1__CHANGE_BATCH__INIT, *cb = NULL;
	Catalyst__V1__Change change = CATALYST__V1__CHANGE__INIT, *changes[1] = {&change};
	Catalyst__V1__Record record = CATALYST__V1__RECORD__INIT;
	Catalyst__V1__NewsRaw news = CATALYST__V1__NEWS_RAW__INIT;
	char errstr[256];
	uint8_t *buf;
	size_t len;

	cmd.action_case = CATALYST__V1__SYNC_COMMAND__ACTION_RESYNC;
	cmd.resync = &resync;
	resync.table = "news_raw~";
	buf = pack_message(&cmd.base, &len);
	ck_assert_int_eq(cat_codec_sync_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_OK);
	catalyst__v1__sync_command__free_unpacked(out, NULL);
	poke(buf, len, '~', 0);
	ck_assert_int_eq(cat_codec_sync_command_decode(buf, len, &out, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "field ResyncTable.table: contains a NUL byte");
	free(buf);

	/* a ChangeBatch: a known op, a valid record */
	news.news_id = "n1";
	news.has_version = 1;
	news.version = 5;
	record.row_case = CATALYST__V1__RECORD__ROW_NEWS_RAW;
	record.news_raw = &news;
	change.record = &record;
	change.has_op = 1;
	change.op = CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
	batch.n_changes = 1;
	batch.changes = changes;
	buf = pack_message(&batch.base, &len);
	ck_assert_int_eq(cat_codec_change_batch_decode(buf, len, &cb, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(cb->changes[0]->record->news_raw->news_id, "n1");
	catalyst__v1__change_batch__free_unpacked(cb, NULL);
	free(buf);
	change.op = (Catalyst__V1__WriteOp)9;
	buf = pack_message(&batch.base, &len);
	ck_assert_int_eq(cat_codec_change_batch_decode(buf, len, &cb, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "field Change.op: unknown value 9");
	free(buf);
	change.op = CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
	news.version = 0;
	buf = pack_message(&batch.base, &len);
	ck_assert_int_eq(cat_codec_change_batch_decode(buf, len, &cb, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_msg(strncmp(errstr, "change 0: ", 10) == 0, "%s", errstr);
	free(buf);
}
END_TEST

START_TEST(test_version_check)
{
	const int64_t now = 1764252312000000LL;
	char errstr[256];

	ck_assert_int_eq(cat_codec_version_check(1, 86400, now, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_codec_version_check(now + 86400LL * 1000000, 86400, now, errstr, sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(cat_codec_version_check(now + 86401LL * 1000000, 86400, now, errstr, sizeof(errstr)),
			 CAT_ERR_PERMANENT);
	ck_assert_int_eq(cat_codec_version_check(INT64_MAX, 86400, now, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_msg(strstr(errstr, "ahead of this worker's clock, more than CATALYST_VERSION_MAX_AHEAD_S=86400"),
		      "%s", errstr);
	/* 0: counters welcome */
	ck_assert_int_eq(cat_codec_version_check(INT64_MAX, 0, now, errstr, sizeof(errstr)), CAT_OK);
}
END_TEST

/* --- any message as JSON (cat_codec_message_to_json) ------------------------------------------ */

/* The parts a case builds its message from. */
typedef struct reflect_parts {
	Catalyst__V1__CommandMeta meta;
	Catalyst__V1__CacheCommand cache;
	Catalyst__V1__CacheCommand__Set set;
	Catalyst__V1__CacheCommand__Delete del;
	Catalyst__V1__CacheCommand__Warm warm;
	Catalyst__V1__BackupCommand backup;
	Catalyst__V1__BackupCommand__Tables tables;
	Catalyst__V1__SyncCommand sync;
	Catalyst__V1__SyncCommand__ReplicateRows rows;
	Catalyst__V1__Change change, *changes[1];
	fixture_t fixture;
	char *keys[2];
} reflect_parts_t;

static void reflect_parts_init(reflect_parts_t *p)
{
	memset(p, 0, sizeof(*p));
	catalyst__v1__command_meta__init(&p->meta);
	catalyst__v1__cache_command__init(&p->cache);
	catalyst__v1__cache_command__set__init(&p->set);
	catalyst__v1__cache_command__delete__init(&p->del);
	catalyst__v1__cache_command__warm__init(&p->warm);
	catalyst__v1__backup_command__init(&p->backup);
	catalyst__v1__backup_command__tables__init(&p->tables);
	catalyst__v1__sync_command__init(&p->sync);
	catalyst__v1__sync_command__replicate_rows__init(&p->rows);
	catalyst__v1__change__init(&p->change);
}

static ProtobufCMessage *reflect_cache_set_text(reflect_parts_t *p)
{
	p->meta.command_id = "c-1";
	p->meta.has_issued_at_us = 1;
	p->meta.issued_at_us = ISSUED_AT;
	p->cache.meta = &p->meta;
	p->set.key = "news:1";
	p->set.has_value = 1;
	p->set.value.data = (uint8_t *)"héllo";
	p->set.value.len = strlen("héllo");
	p->set.has_ttl_seconds = 1; /* version unset: left out */
	p->set.ttl_seconds = 0;
	p->cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_SET;
	p->cache.set = &p->set;
	return &p->cache.base;
}

static ProtobufCMessage *reflect_cache_set_binary(reflect_parts_t *p)
{
	static uint8_t value[] = {0xff, 0x00, 0x41};

	p->set.key = "news:2";
	p->set.has_value = 1;
	p->set.value.data = value;
	p->set.value.len = sizeof(value);
	p->cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_SET;
	p->cache.set = &p->set;
	return &p->cache.base;
}

static ProtobufCMessage *reflect_cache_delete(reflect_parts_t *p)
{
	p->keys[0] = "news:1";
	p->keys[1] = "news:symbol:AAPL";
	p->del.n_keys = 2;
	p->del.keys = p->keys;
	p->cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_DELETE;
	p->cache.delete_ = &p->del;
	return &p->cache.base;
}

static ProtobufCMessage *reflect_cache_warm(reflect_parts_t *p)
{
	p->warm.has_profile = 1;
	p->warm.profile = CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD;
	p->cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_WARM;
	p->cache.warm = &p->warm;
	return &p->cache.base;
}

static ProtobufCMessage *reflect_cache_warm_unknown_enum(reflect_parts_t *p)
{
	reflect_cache_warm(p);
	p->warm.profile = (Catalyst__V1__CacheCommand__WarmProfile)99;
	return &p->cache.base;
}

static ProtobufCMessage *reflect_backup_tables(reflect_parts_t *p)
{
	p->tables.has_incremental = 1;
	p->tables.incremental = 1;
	p->backup.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES;
	p->backup.tables = &p->tables;
	p->backup.database = "catalyst";
	return &p->backup.base;
}

static ProtobufCMessage *reflect_sync_replicate(reflect_parts_t *p)
{
	fixture_init(&p->fixture, 0, false, CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT);
	p->change.has_op = 1;
	p->change.op = CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT;
	p->change.record = &p->fixture.record;
	p->changes[0] = &p->change;
	p->rows.n_changes = 1;
	p->rows.changes = p->changes;
	p->sync.action_case = CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE;
	p->sync.replicate = &p->rows;
	return &p->sync.base;
}

/* "RECORD" in `expected` stands for the case's record as cat_codec_record_to_json writes it. */
static const struct reflect_case {
	const char *name;
	ProtobufCMessage *(*build)(reflect_parts_t *p);
	const char *expected;
} reflect_cases[] = {
	{ "set: meta, text bytes, an int64 0 that is present", reflect_cache_set_text,
	  "{\"meta\":{\"command_id\":\"c-1\",\"issued_at_us\":1795788312000000},"
	  "\"set\":{\"key\":\"news:1\",\"value\":\"héllo\",\"ttl_seconds\":0}}" },
	{ "set: bytes that are not UTF-8 as hex", reflect_cache_set_binary,
	  "{\"set\":{\"key\":\"news:2\",\"value\":\"ff0041\"}}" },
	{ "delete: a repeated string", reflect_cache_delete,
	  "{\"delete\":{\"keys\":[\"news:1\",\"news:symbol:AAPL\"]}}" },
	{ "warm: an enum by name", reflect_cache_warm, "{\"warm\":{\"profile\":\"WARM_PROFILE_REBUILD\"}}" },
	{ "warm: an enum value the .proto lacks as its number", reflect_cache_warm_unknown_enum,
	  "{\"warm\":{\"profile\":99}}" },
	{ "tables: an empty repeated field, a bool, a string outside the oneof", reflect_backup_tables,
	  "{\"tables\":{\"tables\":[],\"incremental\":true},\"database\":\"catalyst\"}" },
	{ "replicate: a record as its column JSON", reflect_sync_replicate,
	  "{\"replicate\":{\"changes\":[{\"op\":\"WRITE_OP_UPSERT\",\"record\":RECORD}]}}" },
};

#define N_REFLECT_CASES (sizeof(reflect_cases) / sizeof(reflect_cases[0]))

START_TEST(test_message_to_json)
{
	const struct reflect_case *c = &reflect_cases[_i];
	reflect_parts_t *parts = malloc(sizeof(*parts));
	ProtobufCMessage *msg;
	json_t *got, *want;
	json_error_t jerr;
	char *expected, *got_text;
	const char *slot;

	ck_assert_ptr_nonnull(parts);
	reflect_parts_init(parts);
	msg = c->build(parts);
	if ((slot = strstr(c->expected, "RECORD"))) {
		char *record = cat_codec_record_to_json(&parts->fixture.record);

		size_t size;

		ck_assert_ptr_nonnull(record);
		size = strlen(c->expected) + strlen(record) + 1;
		expected = malloc(size);
		ck_assert_ptr_nonnull(expected);
		snprintf(expected, size, "%.*s%s%s", (int)(slot - c->expected), c->expected, record,
			 slot + strlen("RECORD"));
		free(record);
	} else {
		expected = strdup(c->expected);
	}
	want = json_loads(expected, 0, &jerr);
	ck_assert_msg(want, "%s: bad expectation: %s", c->name, jerr.text);
	got = cat_codec_message_to_json(msg);
	ck_assert_ptr_nonnull(got);
	got_text = json_dumps(got, JSON_COMPACT);
	ck_assert_msg(json_equal(got, want), "%s: got %s, want %s", c->name, got_text, expected);
	free(got_text);
	json_decref(got);
	json_decref(want);
	free(expected);
	free(parts);
}
END_TEST

START_TEST(test_hex_json)
{
	static const uint8_t bytes[] = {0x00, 0x0f, 0xa5, 0xff};
	json_t *hex = cat_codec_hex_json(bytes, sizeof(bytes));

	ck_assert_str_eq(json_string_value(hex), "000fa5ff");
	json_decref(hex);
	hex = cat_codec_hex_json("", 0);
	ck_assert_str_eq(json_string_value(hex), "");
	json_decref(hex);
}
END_TEST

static Suite *codec_suite(void)
{
	Suite *s = suite_create("cat_codec");
	TCase *bad = tcase_create("rejects");
	TCase *good = tcase_create("round trips");

	tcase_add_loop_test(bad, test_decode_rejects, 0, (int)N_BAD_PBS);
	tcase_add_test(bad, test_decode_too_large);
	tcase_add_test(bad, test_decode_null_and_empty);
	tcase_add_loop_test(bad, test_decode_truncations, 0, 5);
	tcase_add_test(bad, test_decode_random);
	tcase_add_loop_test(bad, test_json_rejects, 0, (int)N_BAD_JSONS);
	tcase_add_test(bad, test_json_embedded_nul);
	tcase_add_test(bad, test_validate_lengths_in_characters);
	tcase_add_test(bad, test_validate_records);
	tcase_add_test(bad, test_write_to_json_needs_op_and_record);
	tcase_add_test(bad, test_cache_command_decode);
	tcase_add_test(bad, test_backup_command_decode);
	tcase_add_test(bad, test_sync_and_changes_decode);
	tcase_add_test(bad, test_version_check);
	suite_add_tcase(s, bad);

	tcase_add_test(good, test_decode_keeps_unknown_fields);
	tcase_add_test(good, test_decode_wire_order);
	tcase_add_test(good, test_decode_delete);
	tcase_add_test(good, test_decode_without_meta);
	tcase_add_loop_test(good, test_protobuf_round_trip, 0, 10);
	tcase_add_test(good, test_record_key);
	tcase_add_test(good, test_record_accessors);
	tcase_add_test(good, test_record_bytes_in_change_view);
	tcase_add_test(good, test_uuid);
	tcase_add_test(good, test_json_defaults);
	tcase_add_test(good, test_json_accepts);
	tcase_add_loop_test(good, test_json_round_trip, 0, (int)N_JSON_TRIPS);
	tcase_add_loop_test(good, test_record_json_round_trip, 0, 10);
	tcase_add_test(good, test_record_json_numbers);
	tcase_add_loop_test(good, test_record_json_same_as_tree, 0, 10);
	tcase_add_test(good, test_record_json_escapes);
	tcase_add_test(good, test_record_json_doubles);
	tcase_add_loop_test(good, test_message_to_json, 0, (int)N_REFLECT_CASES);
	tcase_add_test(good, test_hex_json);
	suite_add_tcase(s, good);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(codec_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
