/*
 * cat_rowsum: row counts and order-independent checksums of COPY text, from
 * one COPY's data and from pg_dump's plain output.
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_rowsum.h"

/* sum of rows, fed in pieces of `piece` bytes (0: at once) */
static cat_rowsum_t rows_sum(const char *data, int version_field, size_t piece)
{
	cat_rowscan_t *scan;
	cat_rowsum_t sum;
	char errstr[256];
	size_t len = strlen(data);

	ck_assert_int_eq(cat_rowscan_new(&scan, version_field, errstr, sizeof(errstr)), CAT_OK);
	if (piece == 0)
		piece = len ? len : 1;
	for (size_t off = 0; off < len; off += piece)
		cat_rowscan_feed(scan, data + off, len - off < piece ? len - off : piece);
	ck_assert_int_eq(cat_rowscan_result(scan, &sum, errstr, sizeof(errstr)), CAT_OK);
	cat_rowscan_free(scan);
	return sum;
}

static void hex_of(const cat_rowsum_t *sum, char out[17])
{
	cat_rowsum_hex(sum, out);
}

/* Values from Python: sum(int.from_bytes(sha256(row).digest()[:8], "little")) % 2**64 */
START_TEST(test_known_answer)
{
	cat_rowsum_t sum = rows_sum("a\t1\nb\t2\n", 1, 0);
	char hex[17];

	hex_of(&sum, hex);
	ck_assert_int_eq(sum.rows, 2);
	ck_assert_str_eq(hex, "edd4fa509a638bec");
	ck_assert_int_eq(sum.max_version, 2);

	sum = rows_sum("", 0, 0);
	hex_of(&sum, hex);
	ck_assert_int_eq(sum.rows, 0);
	ck_assert_str_eq(hex, "0000000000000000");
	ck_assert_int_eq(sum.max_version, -1);

	ck_assert_str_eq(CAT_ROWSUM_ALGO, "sha256-sum64/copy-text-v1");
}
END_TEST

START_TEST(test_order_and_pieces)
{
	const char *rows = "n1\tS1\theadline \\\\ tab\\t\t2026-01-01 00:00:00+00\t\\N\t17\n"
			   "n2\tS2\t\\N\t2026-01-02 00:00:00+00\t0.1\t-3\n"
			   "n3\tS3\tx\t2026-01-03 00:00:00+00\t1e+30\t42\n";
	const char *shuffled = "n3\tS3\tx\t2026-01-03 00:00:00+00\t1e+30\t42\n"
			       "n1\tS1\theadline \\\\ tab\\t\t2026-01-01 00:00:00+00\t\\N\t17\n"
			       "n2\tS2\t\\N\t2026-01-02 00:00:00+00\t0.1\t-3\n";
	cat_rowsum_t whole = rows_sum(rows, 5, 0), other = rows_sum(shuffled, 5, 0);

	ck_assert_int_eq(whole.rows, 3);
	ck_assert_int_eq(whole.max_version, 42);
	ck_assert(whole.sum == other.sum);
	for (size_t piece = 1; piece < strlen(rows); piece++) {
		cat_rowsum_t part = rows_sum(rows, 5, piece);

		ck_assert(part.sum == whole.sum);
		ck_assert_int_eq(part.rows, 3);
		ck_assert_int_eq(part.max_version, 42);
	}
}
END_TEST

START_TEST(test_any_change_shows)
{
	char rows[] = "n1\tfirst\t1\nn2\tsecond\t2\n";
	cat_rowsum_t base = rows_sum(rows, 2, 0);

	for (size_t i = 0; i < sizeof(rows) - 1; i++) {
		char copy[sizeof(rows)];
		cat_rowsum_t sum;

		if (rows[i] == '\n')
			continue;
		memcpy(copy, rows, sizeof(rows));
		copy[i] ^= 0x01;
		sum = rows_sum(copy, 2, 0);
		ck_assert_msg(sum.sum != base.sum, "a flipped byte at %zu is not seen", i);
	}
	/* a duplicated row counts */
	ck_assert(rows_sum("n1\tfirst\t1\nn1\tfirst\t1\n", 2, 0).sum != rows_sum("n1\tfirst\t1\n", 2, 0).sum);
	/* moving a value between rows shows */
	ck_assert(rows_sum("a\tb\nc\td\n", -1, 0).sum != rows_sum("a\td\nc\tb\n", -1, 0).sum);
}
END_TEST

START_TEST(test_version_field)
{
	/* NULL, not an integer, missing field, overflow: not versions */
	ck_assert_int_eq(rows_sum("a\t\\N\nb\t1x\nc\nd\t99999999999999999999\ne\t-\n", 1, 0).max_version, -1);
	ck_assert_int_eq(rows_sum("a\t-5\nb\t-7\n", 1, 0).max_version, -5);
	ck_assert_int_eq(rows_sum("a\t9223372036854775807\nb\t3\n", 1, 1).max_version, INT64_MAX);
	ck_assert_int_eq(rows_sum("5\tx\n12\ty\n", 0, 1).max_version, 12);
	ck_assert_int_eq(rows_sum("5\tx\n12\ty\n", -1, 0).max_version, -1);
}
END_TEST

START_TEST(test_partial_row)
{
	cat_rowscan_t *scan;
	cat_rowsum_t sum;
	char errstr[256];

	ck_assert_int_eq(cat_rowscan_new(&scan, -1, errstr, sizeof(errstr)), CAT_OK);
	cat_rowscan_feed(scan, "a\nb", 3);
	ck_assert_int_eq(cat_rowscan_result(scan, &sum, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "the COPY data ended inside a row");
	cat_rowscan_feed(scan, "\n", 1);
	ck_assert_int_eq(cat_rowscan_result(scan, &sum, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(sum.rows, 2);
	cat_rowscan_free(scan);
}
END_TEST

/* --- pg_dump's output ---------------------------------------------------------------------------- */

#define NEWS_ROWS  "n1\tS1\theadline \\\\ tab\\t\t17\nn2\tS2\t\\\\.\t18\n\\\\.\t\\N\t\\N\t5\n"
#define TRADE_ROWS "t1\t100\nt2\t-200\n"

static const char dump_text[] =
	"--\n-- PostgreSQL database dump\n--\n\n"
	"SET statement_timeout = 0;\n"
	"SET client_encoding = 'UTF8';\n"
	"SET standard_conforming_strings = on;\n"
	"CREATE FUNCTION public.f() RETURNS void LANGUAGE sql AS $$\n"
	"COPY public.x (a) TO STDOUT;\n" /* a body, not a section */
	"$$;\n"
	"-- a comment long enough to be cut at the kept head of a line, which is sixty-four bytes long\n"
	"COPY public.news_raw (news_id, symbol, headline, version) FROM stdin;\n" NEWS_ROWS "\\.\n\n\n"
	"COPY public.empty_one (a, b) FROM stdin;\n\\.\n\n"
	"COPY \"Odd Schema\".\"trade \"\"records\"\"\" (trade_id, \"version\") FROM stdin;\n" TRADE_ROWS
	"\\.\n"
	"COPY public.no_columns FROM stdin;\n\\.\n"
	"COPY public.very_long_table_name_for_the_header_to_grow (a_column_with_a_long_name, "
	"another_column_with_a_long_name, yet_another_one, version) FROM stdin;\nx\ty\tz\t7\n\\.\n"
	"ALTER TABLE ONLY public.news_raw ADD CONSTRAINT news_raw_pkey PRIMARY KEY (news_id);\n";

static cat_dumpscan_t *scan_dump(const char *text, size_t len, size_t piece)
{
	cat_dumpscan_t *scan;
	char errstr[256];

	ck_assert_int_eq(cat_dumpscan_new(&scan, errstr, sizeof(errstr)), CAT_OK);
	for (size_t off = 0; off < len; off += piece)
		ck_assert_int_eq(cat_dumpscan_feed(scan, text + off, len - off < piece ? len - off : piece,
						   errstr, sizeof(errstr)),
				 CAT_OK);
	return scan;
}

START_TEST(test_dump_sections)
{
	cat_rowsum_t news = rows_sum(NEWS_ROWS, 3, 0), trades = rows_sum(TRADE_ROWS, 1, 0);

	for (size_t piece = 1; piece <= sizeof(dump_text); piece += (piece < 80 ? 1 : 97)) {
		cat_dumpscan_t *scan = scan_dump(dump_text, sizeof(dump_text) - 1, piece);
		const cat_rowsum_t *s;
		char errstr[256];

		ck_assert_int_eq(cat_dumpscan_finish(scan, errstr, sizeof(errstr)), CAT_OK);
		ck_assert_str_eq(cat_dumpscan_encoding(scan), "UTF8");
		ck_assert_ptr_nonnull(s = cat_dumpscan_table(scan, "public", "news_raw"));
		ck_assert_int_eq(s->rows, 3); /* "\\." rows are data */
		ck_assert(s->sum == news.sum);
		ck_assert_int_eq(s->max_version, 18);
		ck_assert_ptr_nonnull(s = cat_dumpscan_table(scan, "Odd Schema", "trade \"records\""));
		ck_assert_int_eq(s->rows, 2);
		ck_assert(s->sum == trades.sum);
		ck_assert_int_eq(s->max_version, 100);
		ck_assert_ptr_nonnull(s = cat_dumpscan_table(scan, "public", "empty_one"));
		ck_assert_int_eq(s->rows, 0);
		ck_assert(s->sum == 0);
		ck_assert_int_eq(s->max_version, -1);
		ck_assert_ptr_nonnull(s = cat_dumpscan_table(scan, "public", "no_columns"));
		ck_assert_int_eq(s->rows, 0);
		ck_assert_ptr_nonnull(s = cat_dumpscan_table(scan, "public",
							     "very_long_table_name_for_the_header_to_grow"));
		ck_assert_int_eq(s->rows, 1);
		ck_assert_int_eq(s->max_version, 7);
		ck_assert_ptr_null(cat_dumpscan_table(scan, "public", "x"));
		ck_assert_ptr_null(cat_dumpscan_table(scan, "other", "news_raw"));
		cat_dumpscan_free(scan);
	}
}
END_TEST

START_TEST(test_dump_truncated)
{
	const char *cut = strstr(dump_text, "n2\t");
	cat_dumpscan_t *scan = scan_dump(dump_text, (size_t)(cut - dump_text), 7);
	char errstr[256];

	ck_assert_int_eq(cat_dumpscan_finish(scan, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "the dump ended inside the data of public.news_raw");
	ck_assert_ptr_null(cat_dumpscan_table(scan, "public", "news_raw"));
	cat_dumpscan_free(scan);

	scan = scan_dump("SET x = 1;\nCOPY public.t (a", strlen("SET x = 1;\nCOPY public.t (a"), 5);
	ck_assert_int_eq(cat_dumpscan_finish(scan, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "the dump ended inside a line");
	cat_dumpscan_free(scan);
}
END_TEST

START_TEST(test_dump_not_headers)
{
	/* lines like a header but not one are no sections */
	static const char text[] = "COPY public.t (a) FROM stdin\n"
				   "COPY public.t (a) FROM stdin; -- x\n"
				   "COPY t (a) FROM stdin;\n"
				   "COPY public.t (a,b) FROM stdin;\n"
				   "COPY public.\"t (a) FROM stdin;\n"
				   "copy public.t (a) FROM stdin;\n";
	cat_dumpscan_t *scan = scan_dump(text, sizeof(text) - 1, 3);
	char errstr[256];

	ck_assert_int_eq(cat_dumpscan_finish(scan, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_ptr_null(cat_dumpscan_table(scan, "public", "t"));
	ck_assert_str_eq(cat_dumpscan_encoding(scan), "");
	cat_dumpscan_free(scan);
}
END_TEST

static Suite *rowsum_suite(void)
{
	Suite *s = suite_create("cat_rowsum");
	TCase *tc = tcase_create("rowsum");

	tcase_add_test(tc, test_known_answer);
	tcase_add_test(tc, test_order_and_pieces);
	tcase_add_test(tc, test_any_change_shows);
	tcase_add_test(tc, test_version_field);
	tcase_add_test(tc, test_partial_row);
	tcase_add_test(tc, test_dump_sections);
	tcase_add_test(tc, test_dump_truncated);
	tcase_add_test(tc, test_dump_not_headers);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(rowsum_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
