/*
 * cat_apply: the per-key resolution of a set of writes (cat_apply_add,
 * cat_apply_resolve) and the set's contract, without a database.
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_apply.h"
#include "cat_codec.h"
#include "cat_schema.h"
#include "catalyst/v1/records.pb-c.h"

#define MAX_WRITES 8
#define END                                                                                                  \
	{                                                                                                    \
		0, NULL, 0, false                                                                            \
	}

/* Tables by letter: N news_raw (insert-only), C trading_candidates and
 * S source_metrics (versioned). */
typedef struct write_spec {
	char table;
	const char *pk;
	int64_t version;
	bool is_delete;
} write_spec_t;

/* A resolved write: the write of the case that stays (its source) and the
 * round it runs in. Listed in the order cat_apply_write() returns them. */
typedef struct resolved_spec {
	int source;
	unsigned round;
} resolved_spec_t;

static const struct resolve_case {
	const char *name;
	write_spec_t writes[MAX_WRITES];
	int n_resolved;
	resolved_spec_t resolved[MAX_WRITES];
} resolve_cases[] = {
	/* versioned tables: one write per key, the highest version */
	{"one upsert", {{'S', "a", 5, false}, END}, 1, {{0, 0}}},
	{"one delete", {{'S', "a", 5, true}, END}, 1, {{0, 0}}},
	{"higher version later wins", {{'S', "a", 5, false}, {'S', "a", 7, false}, END}, 1, {{1, 0}}},
	{"higher version earlier wins", {{'S', "a", 7, false}, {'S', "a", 5, false}, END}, 1, {{0, 0}}},
	{"equal upserts: the first", {{'S', "a", 5, false}, {'S', "a", 5, false}, END}, 1, {{0, 0}}},
	{"equal deletes: the first", {{'S', "a", 5, true}, {'S', "a", 5, true}, END}, 1, {{0, 0}}},
	{"newer delete wins over upsert", {{'S', "a", 5, false}, {'S', "a", 6, true}, END}, 1, {{1, 0}}},
	{"tombstone wins over an older upsert after it",
	 {{'S', "a", 6, true}, {'S', "a", 5, false}, END},
	 1,
	 {{0, 0}}},
	{"newer upsert wins over an older delete",
	 {{'S', "a", 5, true}, {'S', "a", 6, false}, END},
	 1,
	 {{1, 0}}},
	{"older delete after a newer upsert is moot",
	 {{'S', "a", 6, false}, {'S', "a", 5, true}, END},
	 1,
	 {{0, 0}}},
	{"tie: delete after upsert wins", {{'S', "a", 5, false}, {'S', "a", 5, true}, END}, 1, {{1, 0}}},
	{"tie: delete before upsert wins", {{'S', "a", 5, true}, {'S', "a", 5, false}, END}, 1, {{0, 0}}},
	{"several writes of one key: highest, delete on tie",
	 {{'S', "a", 3, false},
	  {'S', "a", 9, false},
	  {'S', "a", 4, true},
	  {'S', "a", 9, true},
	  {'S', "a", 8, false},
	  {'S', "a", 9, false},
	  END},
	 1,
	 {{3, 0}}},
	{"keys resolved apart, deletes first",
	 {{'S', "b", 2, false}, {'S', "a", 1, false}, {'S', "b", 1, false}, {'S', "a", 3, true}, END},
	 2,
	 {{3, 0}, {0, 0}}},
	{"one key text in two tables is two keys",
	 {{'C', "x", 1, false}, {'S', "x", 2, false}, {'C', "x", 3, false}, END},
	 2,
	 {{2, 0}, {1, 0}}},
	{"sorted by key",
	 {{'S', "c", 1, false}, {'S', "a", 1, false}, {'S', "b", 1, false}, END},
	 3,
	 {{1, 0}, {2, 0}, {0, 0}}},
	{"sorted by table before deletes first",
	 {{'S', "a", 1, true}, {'C', "b", 1, false}, END},
	 2,
	 {{1, 0}, {0, 0}}},

	/* news_raw (insert-only): the writes in order, merged where moot */
	{"news_raw: an equal upsert after the first is moot",
	 {{'N', "a", 5, false}, {'N', "a", 5, false}, END},
	 1,
	 {{0, 0}}},
	{"news_raw: an older upsert after the first is moot",
	 {{'N', "a", 5, false}, {'N', "a", 3, false}, END},
	 1,
	 {{0, 0}}},
	{"news_raw: a newer upsert runs in the next round",
	 {{'N', "a", 5, false}, {'N', "a", 6, false}, END},
	 2,
	 {{0, 0}, {1, 1}}},
	{"news_raw: a delete covering the upsert replaces it",
	 {{'N', "a", 5, false}, {'N', "a", 5, true}, END},
	 1,
	 {{1, 0}}},
	{"news_raw: a delete older than the upsert runs after it",
	 {{'N', "a", 5, false}, {'N', "a", 4, true}, END},
	 2,
	 {{0, 0}, {1, 1}}},
	{"news_raw: an upsert the delete covers is moot",
	 {{'N', "a", 5, true}, {'N', "a", 5, false}, END},
	 1,
	 {{0, 0}}},
	{"news_raw: an upsert newer than the delete runs after it",
	 {{'N', "a", 5, true}, {'N', "a", 6, false}, END},
	 2,
	 {{0, 0}, {1, 1}}},
	{"news_raw: two deletes, the newer (later)",
	 {{'N', "a", 3, true}, {'N', "a", 5, true}, END},
	 1,
	 {{1, 0}}},
	{"news_raw: two deletes, the newer (earlier)",
	 {{'N', "a", 5, true}, {'N', "a", 3, true}, END},
	 1,
	 {{0, 0}}},
	{"news_raw: a delete folds back over every upsert it covers",
	 {{'N', "a", 1, false}, {'N', "a", 3, false}, {'N', "a", 3, true}, END},
	 1,
	 {{2, 0}}},
	{"news_raw: alternating writes run in rounds",
	 {{'N', "a", 1, false}, {'N', "a", 2, true}, {'N', "a", 3, false}, {'N', "a", 2, true}, END},
	 3,
	 {{1, 0}, {2, 1}, {3, 2}}},
	{"news_raw: rounds across keys, deletes first in a round",
	 {{'N', "a", 1, false}, {'N', "b", 1, false}, {'N', "a", 2, false}, {'N', "b", 0, true}, END},
	 4,
	 {{0, 0}, {1, 0}, {3, 1}, {2, 1}}},
	{"news_raw before a versioned table, rounds within the table",
	 {{'S', "a", 1, false}, {'N', "z", 1, false}, {'N', "z", 2, false}, END},
	 3,
	 {{1, 0}, {2, 1}, {0, 0}}},
};

/* The records of a case, each with its own row message. */
typedef struct record_slot {
	Catalyst__V1__Record record;
	Catalyst__V1__NewsRaw news;
	Catalyst__V1__TradingCandidate candidate;
	Catalyst__V1__SourceMetric metric;
	char pk[32];
} record_slot_t;

static cat_apply_t *apply;
static char errstr[512];

static void setup(void)
{
	ck_assert_msg(cat_apply_new(&apply, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
}

static void teardown(void)
{
	cat_apply_destroy(apply);
	apply = NULL;
}

static void record_fill(record_slot_t *slot, char table, const char *pk, int64_t version)
{
	catalyst__v1__record__init(&slot->record);
	snprintf(slot->pk, sizeof(slot->pk), "%s", pk);
	switch (table) {
	case 'N':
		catalyst__v1__news_raw__init(&slot->news);
		slot->news.news_id = slot->pk;
		slot->news.has_version = true;
		slot->news.version = version;
		slot->record.row_case = CATALYST__V1__RECORD__ROW_NEWS_RAW;
		slot->record.news_raw = &slot->news;
		break;
	case 'C':
		catalyst__v1__trading_candidate__init(&slot->candidate);
		slot->candidate.candidate_id = slot->pk;
		slot->candidate.has_version = true;
		slot->candidate.version = version;
		slot->record.row_case = CATALYST__V1__RECORD__ROW_TRADING_CANDIDATES;
		slot->record.trading_candidates = &slot->candidate;
		break;
	case 'S':
		catalyst__v1__source_metric__init(&slot->metric);
		slot->metric.source_name = slot->pk;
		slot->metric.has_version = true;
		slot->metric.version = version;
		slot->record.row_case = CATALYST__V1__RECORD__ROW_SOURCE_METRICS;
		slot->record.source_metrics = &slot->metric;
		break;
	default:
		ck_abort_msg("no table %c", table);
	}
}

static size_t table_index(const Catalyst__V1__Record *record)
{
	const cat_table_t *table = cat_codec_record_table(record);

	ck_assert_ptr_nonnull(table);
	return (size_t)(table - cat_schema_tables);
}

/* A caller's index that is not the position in the set. */
static size_t source_of(int i)
{
	return 1000 + 7 * (size_t)i;
}

START_TEST(test_resolve)
{
	const struct resolve_case *c = &resolve_cases[_i];
	record_slot_t slots[MAX_WRITES];
	int n = 0;

	while (n < MAX_WRITES && c->writes[n].pk)
		n++;
	ck_assert_msg(cat_apply_begin(apply, (size_t)n, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
	for (int i = 0; i < n; i++) {
		record_fill(&slots[i], c->writes[i].table, c->writes[i].pk, c->writes[i].version);
		ck_assert_msg(cat_apply_add(apply, source_of(i), &slots[i].record, c->writes[i].is_delete) ==
				      CAT_OK,
			      "%s: add %d", c->name, i);
	}
	cat_apply_resolve(apply);

	ck_assert_msg(cat_apply_n(apply) == (size_t)c->n_resolved, "%s: %zu resolved writes, expected %d",
		      c->name, cat_apply_n(apply), c->n_resolved);
	for (int r = 0; r < c->n_resolved; r++) {
		const cat_apply_write_t *write = cat_apply_write(apply, (size_t)r);
		int s = c->resolved[r].source;
		const Catalyst__V1__Record *record = &slots[s].record;

		ck_assert_ptr_nonnull(write);
		ck_assert_msg(write->source == source_of(s), "%s: write %d has source %zu, expected %zu",
			      c->name, r, write->source, source_of(s));
		ck_assert_msg(write->round == c->resolved[r].round, "%s: write %d in round %u, expected %u",
			      c->name, r, (unsigned)write->round, c->resolved[r].round);
		ck_assert_msg(write->version == c->writes[s].version, "%s: write %d version %lld", c->name, r,
			      (long long)write->version);
		ck_assert_msg(write->is_delete == c->writes[s].is_delete, "%s: write %d is_delete", c->name,
			      r);
		ck_assert_msg(write->row == cat_codec_record_row(record), "%s: write %d row", c->name, r);
		ck_assert_msg(write->table == table_index(record), "%s: write %d table", c->name, r);
		ck_assert_str_eq(write->pk, c->writes[s].pk);
		ck_assert_msg(write->live, "%s: write %d not live", c->name, r);
	}
	ck_assert_ptr_null(cat_apply_write(apply, (size_t)c->n_resolved));
}
END_TEST

/* The key and the row are the record's own (borrowed, not copied). */
START_TEST(test_borrowed)
{
	record_slot_t slot;
	const cat_apply_write_t *write;

	record_fill(&slot, 'C', "cand-1", 4);
	ck_assert(cat_apply_begin(apply, 1, errstr, sizeof(errstr)) == CAT_OK);
	ck_assert(cat_apply_add(apply, 3, &slot.record, false) == CAT_OK);
	cat_apply_resolve(apply);
	ck_assert_uint_eq(cat_apply_n(apply), 1);
	write = cat_apply_write(apply, 0);
	ck_assert_ptr_eq(write->pk, slot.candidate.candidate_id);
	ck_assert_ptr_eq(write->row, &slot.candidate.base);
	ck_assert_uint_eq(write->source, 3);
}
END_TEST

START_TEST(test_add_past_limit)
{
	record_slot_t slots[3];

	ck_assert(cat_apply_begin(apply, 2, errstr, sizeof(errstr)) == CAT_OK);
	record_fill(&slots[0], 'S', "a", 1);
	record_fill(&slots[1], 'S', "b", 1);
	record_fill(&slots[2], 'S', "c", 1);
	ck_assert(cat_apply_add(apply, 0, &slots[0].record, false) == CAT_OK);
	ck_assert(cat_apply_add(apply, 1, &slots[1].record, false) == CAT_OK);
	ck_assert(cat_apply_add(apply, 2, &slots[2].record, false) == CAT_ERR_FATAL);
	/* a write of a key already in the set counts too */
	ck_assert(cat_apply_add(apply, 2, &slots[0].record, true) == CAT_ERR_FATAL);
	cat_apply_resolve(apply);
	ck_assert_uint_eq(cat_apply_n(apply), 2);
	ck_assert_str_eq(cat_apply_write(apply, 0)->pk, "a");
	ck_assert(!cat_apply_write(apply, 0)->is_delete);
	ck_assert_str_eq(cat_apply_write(apply, 1)->pk, "b");
}
END_TEST

START_TEST(test_add_without_table)
{
	Catalyst__V1__Record record;
	record_slot_t slot;

	ck_assert(cat_apply_begin(apply, 4, errstr, sizeof(errstr)) == CAT_OK);
	catalyst__v1__record__init(&record); /* no row */
	ck_assert(cat_apply_add(apply, 0, &record, false) == CAT_ERR_FATAL);
	record.row_case = CATALYST__V1__RECORD__ROW_NEWS_RAW; /* a case without its message */
	ck_assert(cat_apply_add(apply, 1, &record, false) == CAT_ERR_FATAL);
	ck_assert(cat_apply_add(apply, 2, NULL, true) == CAT_ERR_FATAL);
	record_fill(&slot, 'N', "n1", 1);
	ck_assert(cat_apply_add(apply, 3, &slot.record, false) == CAT_OK);
	cat_apply_resolve(apply);
	ck_assert_uint_eq(cat_apply_n(apply), 1);
	ck_assert_uint_eq(cat_apply_write(apply, 0)->source, 3);
}
END_TEST

/* begin starts an empty set: nothing of the previous one stays. */
START_TEST(test_begin_resets)
{
	record_slot_t slots[3];

	record_fill(&slots[0], 'S', "a", 9);
	record_fill(&slots[1], 'S', "b", 1);
	record_fill(&slots[2], 'S', "a", 2);
	ck_assert(cat_apply_begin(apply, 2, errstr, sizeof(errstr)) == CAT_OK);
	ck_assert(cat_apply_add(apply, 0, &slots[0].record, false) == CAT_OK);
	ck_assert(cat_apply_add(apply, 1, &slots[1].record, false) == CAT_OK);
	cat_apply_resolve(apply);
	ck_assert_uint_eq(cat_apply_n(apply), 2);

	ck_assert(cat_apply_begin(apply, 1, errstr, sizeof(errstr)) == CAT_OK);
	ck_assert_uint_eq(cat_apply_n(apply), 0);
	ck_assert_ptr_null(cat_apply_write(apply, 0));
	/* key a of the previous set (version 9) no longer counts */
	ck_assert(cat_apply_add(apply, 2, &slots[2].record, false) == CAT_OK);
	cat_apply_resolve(apply);
	ck_assert_uint_eq(cat_apply_n(apply), 1);
	ck_assert_uint_eq(cat_apply_write(apply, 0)->source, 2);
	ck_assert_int_eq(cat_apply_write(apply, 0)->version, 2);
}
END_TEST

/* A set larger than the memory kept: every key stays, sorted; after
 * release the next set works the same. */
START_TEST(test_large_set_and_release)
{
	enum { N = 1500 };
	record_slot_t *slots = calloc(N, sizeof(*slots));

	ck_assert_ptr_nonnull(slots);
	for (int round = 0; round < 2; round++) {
		ck_assert(cat_apply_begin(apply, N, errstr, sizeof(errstr)) == CAT_OK);
		for (int i = 0; i < N; i++) {
			char pk[16];

			snprintf(pk, sizeof(pk), "k%05d", (i * 7919) % N); /* a permutation of 0..N-1 */
			record_fill(&slots[i], 'C', pk, i);
			ck_assert(cat_apply_add(apply, (size_t)i, &slots[i].record, i % 3 == 0) == CAT_OK);
		}
		cat_apply_resolve(apply);
		ck_assert_uint_eq(cat_apply_n(apply), N);
		for (size_t w = 0; w < N; w++) {
			const cat_apply_write_t *write = cat_apply_write(apply, w);

			/* deletes first, then by key */
			if (w > 0) {
				const cat_apply_write_t *prev = cat_apply_write(apply, w - 1);

				ck_assert(prev->is_delete >= write->is_delete);
				if (prev->is_delete == write->is_delete)
					ck_assert_int_lt(strcmp(prev->pk, write->pk), 0);
			}
			ck_assert_int_eq(write->version, (int64_t)write->source);
		}
		cat_apply_release(apply);
	}
	free(slots);
}
END_TEST

START_TEST(test_statements_per_table)
{
	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		const cat_sql_table_t *st = cat_apply_sql(apply, t);

		ck_assert_ptr_nonnull(st);
		ck_assert_ptr_eq(st->table, &cat_schema_tables[t]);
		ck_assert_ptr_nonnull(st->upsert);
		ck_assert_ptr_nonnull(st->remove);
	}
	ck_assert_ptr_null(cat_apply_sql(apply, cat_schema_n_tables));
}
END_TEST

START_TEST(test_destroy_null)
{
	cat_apply_destroy(NULL);
}
END_TEST

static Suite *apply_suite(void)
{
	Suite *s = suite_create("cat_apply");
	TCase *tc = tcase_create("resolve");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_add_past_limit);
	tcase_add_test(tc, test_add_without_table);
	tcase_add_loop_test(tc, test_resolve, 0, (int)(sizeof(resolve_cases) / sizeof(resolve_cases[0])));
	tcase_add_test(tc, test_borrowed);
	tcase_add_test(tc, test_begin_resets);
	tcase_add_test(tc, test_large_set_and_release);
	tcase_add_test(tc, test_statements_per_table);
	tcase_add_test(tc, test_destroy_null);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(apply_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
