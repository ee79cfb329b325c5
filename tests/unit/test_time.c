/*
 * cat_time: RFC 3339 parsing and formatting.
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_time.h"

#define NO_VALUE INT64_MIN

/* Rejected first, then accepted with their value (expected values from
 * Python's datetime). */
static const struct parse_case {
	const char *text;
	int64_t us; /* NO_VALUE: rejected */
} parse_cases[] = {
	/* not a timestamp */
	{"", NO_VALUE},
	{"garbage", NO_VALUE},
	{"2026", NO_VALUE},
	{"2026-11-27", NO_VALUE},
	{"2026-11-27T", NO_VALUE},
	{"2026-11-27T14:05", NO_VALUE},
	{"2026-11-27T14:05:12", NO_VALUE}, /* no zone */
	{"2026-11-27X14:05:12Z", NO_VALUE},
	{"2026/11/27T14:05:12Z", NO_VALUE},
	{"26-11-27T14:05:12Z", NO_VALUE},
	{"2026-1-27T14:05:12Z", NO_VALUE},
	{"2026-11-27T4:05:12Z", NO_VALUE},
	{" 2026-11-27T14:05:12Z", NO_VALUE},
	{"2026-11-27T14:05:12Z ", NO_VALUE},
	{"2026-11-27T14:05:12Zjunk", NO_VALUE},
	{"2026-11-27T14:05:12.Z", NO_VALUE},
	{"2026-11-27T14:05:12.1234567890Z", NO_VALUE}, /* more than 9 fraction digits */
	{"2026-11-27T14:05:12+0800", NO_VALUE},
	{"2026-11-27T14:05:12+08", NO_VALUE},
	{"2026-11-27T14:05:12+8:00", NO_VALUE},
	{"2026-11-27T14:05:12+24:00", NO_VALUE},
	{"2026-11-27T14:05:12+08:60", NO_VALUE},
	{"2026-11-27T14:05:12 UTC", NO_VALUE},
	{"+2026-11-27T14:05:12Z", NO_VALUE},
	{"-2026-11-27T14:05:12Z", NO_VALUE},
	{"2026-11-27T14:05:1aZ", NO_VALUE},
	{"2026-11-27T-4:05:12Z", NO_VALUE},
	/* invalid dates and times */
	{"2026-02-30T00:00:00Z", NO_VALUE},
	{"2026-02-29T00:00:00Z", NO_VALUE}, /* not a leap year */
	{"2100-02-29T00:00:00Z", NO_VALUE}, /* century, not a leap year */
	{"2026-04-31T00:00:00Z", NO_VALUE},
	{"2026-00-10T00:00:00Z", NO_VALUE},
	{"2026-13-01T00:00:00Z", NO_VALUE},
	{"2026-01-00T00:00:00Z", NO_VALUE},
	{"2026-01-32T00:00:00Z", NO_VALUE},
	{"0000-01-01T00:00:00Z", NO_VALUE},
	{"2026-11-27T24:00:00Z", NO_VALUE},
	{"2026-11-27T14:60:00Z", NO_VALUE},
	{"2026-11-27T14:05:61Z", NO_VALUE},
	/* accepted */
	{"2026-11-27T14:05:12Z", 1795788312000000},
	{"2026-11-27t14:05:12z", 1795788312000000},
	{"2026-11-27 14:05:12Z", 1795788312000000},
	{"2026-11-27T14:05:12+00:00", 1795788312000000},
	{"2026-11-27T14:05:12-00:00", 1795788312000000},
	{"2026-11-27T14:05:12.123456+08:00", 1795759512123456},
	{"2026-11-27 14:05:12.5z", 1795788312500000},
	{"2026-11-27T14:05:12.123Z", 1795788312123000},
	{"2026-11-27T14:05:12.000001Z", 1795788312000001},
	{"2026-11-27T14:05:12.123456789Z", 1795788312123456}, /* nanoseconds cut to µs */
	{"2026-11-27T14:05:12.000000999Z", 1795788312000000},
	{"2026-11-27T14:05:12-05:30", 1795808112000000},
	{"2026-01-01T00:00:00+23:59", 1767139260000000},
	{"2024-02-29T00:00:00Z", 1709164800000000},  /* leap day */
	{"2000-02-29T12:00:00Z", 951825600000000},   /* 400-year leap day */
	{"1900-03-01T00:00:00Z", -2203891200000000}, /* after a non-leap century */
	{"1970-01-01T00:00:00Z", 0},
	{"1969-12-31T23:59:59.999999Z", -1},
	{"0001-01-01T00:00:00Z", -62135596800000000},
	{"9999-12-31T23:59:59.999999Z", 253402300799999999},
	{"2026-06-30T23:59:60Z", 1782863999999999}, /* leap second: the last µs before the next */
};

START_TEST(test_parse)
{
	const struct parse_case *c = &parse_cases[_i];
	int64_t us = 42;
	int rc = cat_time_parse_rfc3339(c->text, &us);

	if (c->us == NO_VALUE) {
		ck_assert_msg(rc == -1, "\"%s\" accepted as %lld", c->text, (long long)us);
		ck_assert_int_eq(us, 42); /* untouched */
	} else {
		ck_assert_msg(rc == 0, "\"%s\" rejected", c->text);
		ck_assert_msg(us == c->us, "\"%s\": %lld, expected %lld", c->text, (long long)us,
			      (long long)c->us);
	}
}
END_TEST

START_TEST(test_parse_null)
{
	int64_t us;

	ck_assert_int_eq(cat_time_parse_rfc3339(NULL, &us), -1);
}
END_TEST

static const struct format_case {
	int64_t us;
	const char *text;
} format_cases[] = {
	{0, "1970-01-01T00:00:00.000000Z"},
	{-1, "1969-12-31T23:59:59.999999Z"},
	{-1000000, "1969-12-31T23:59:59.000000Z"},
	{-999999, "1969-12-31T23:59:59.000001Z"},
	{1795788312000000, "2026-11-27T14:05:12.000000Z"},
	{1795759512123456, "2026-11-27T06:05:12.123456Z"},
	{1709164800000000, "2024-02-29T00:00:00.000000Z"},
	{951825600000000, "2000-02-29T12:00:00.000000Z"},
	{-2203891200000000, "1900-03-01T00:00:00.000000Z"},
	{-62135596800000000, "0001-01-01T00:00:00.000000Z"},
	{253402300799999999, "9999-12-31T23:59:59.999999Z"},
};

START_TEST(test_format)
{
	const struct format_case *c = &format_cases[_i];
	char buf[40];

	ck_assert_ptr_eq(cat_time_format_rfc3339(c->us, buf, sizeof(buf)), buf);
	ck_assert_str_eq(buf, c->text);
}
END_TEST

/* The text the formatter writes reads back as the same µs, over the range
 * RFC 3339 can write. */
START_TEST(test_round_trip)
{
	const int64_t min = -62135596800000000, max = 253402300799999999;
	uint64_t state = 0x9e3779b97f4a7c15u;
	char buf[40];

	for (int i = 0; i < 200000; i++) {
		int64_t us, back = 0;

		state ^= state << 13, state ^= state >> 7, state ^= state << 17;
		us = min + (int64_t)(state % (uint64_t)(max - min + 1));
		if (i < 4)
			us = (int64_t[]){min, max, 0, -1}[i];
		cat_time_format_rfc3339(us, buf, sizeof(buf));
		ck_assert_uint_eq(strlen(buf), 27);
		ck_assert_msg(cat_time_parse_rfc3339(buf, &back) == 0, "%lld -> \"%s\" rejected",
			      (long long)us, buf);
		ck_assert_msg(back == us, "%lld -> \"%s\" -> %lld", (long long)us, buf, (long long)back);
	}
}
END_TEST

/* Every day of a 400-year cycle, as midnight and as the last µs. */
START_TEST(test_every_day)
{
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int64_t expected = 946684800000000; /* 2000-01-01 */
	char text[40], buf[40];
	int64_t rejected;

	for (int y = 2000; y < 2400; y++) {
		bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

		for (int m = 1; m <= 12; m++) {
			for (int d = 1; d <= mdays[m - 1] + (m == 2 && leap); d++) {
				int64_t us = 0;

				snprintf(text, sizeof(text), "%04d-%02d-%02dT00:00:00.000000Z", y, m, d);
				ck_assert_msg(cat_time_parse_rfc3339(text, &us) == 0, "%s rejected", text);
				ck_assert_msg(us == expected, "%s: %lld", text, (long long)us);
				ck_assert_str_eq(cat_time_format_rfc3339(us, buf, sizeof(buf)), text);
				expected += 86400000000LL;
			}
			snprintf(text, sizeof(text), "%04d-%02d-%02dT00:00:00Z", y, m,
				 mdays[m - 1] + (m == 2 && leap) + 1);
			ck_assert_msg(cat_time_parse_rfc3339(text, &rejected) == -1, "%s accepted", text);
		}
	}
}
END_TEST

START_TEST(test_clocks)
{
	int64_t now = cat_time_now_us(), mono = cat_time_mono_us();

	ck_assert_int_gt(now, 1700000000000000); /* after 2023 */
	ck_assert_int_ge(cat_time_mono_us(), mono);
}
END_TEST

static Suite *time_suite(void)
{
	Suite *s = suite_create("cat_time");
	TCase *tc = tcase_create("rfc3339");

	tcase_add_loop_test(tc, test_parse, 0, (int)(sizeof(parse_cases) / sizeof(parse_cases[0])));
	tcase_add_test(tc, test_parse_null);
	tcase_add_loop_test(tc, test_format, 0, (int)(sizeof(format_cases) / sizeof(format_cases[0])));
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_every_day);
	tcase_add_test(tc, test_clocks);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(time_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
