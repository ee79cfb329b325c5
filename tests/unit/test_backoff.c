/*
 * cat_backoff: the retry delay policy (ceiling growth and cap, jitter
 * bounds).
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "cat_backoff.h"

#define DRAWS 2000

static const struct ceiling_case {
	int64_t base, max;
	int attempt;
	int64_t ceiling;
} ceiling_cases[] = {
	/* not positive: no delay */
	{0, 1000, 0, 0},
	{-5, 1000, 3, 0},
	{100, 0, 0, 0},
	{100, -1, 2, 0},
	/* doubling from base */
	{100, 10000, 0, 100},
	{100, 10000, 1, 200},
	{100, 10000, 2, 400},
	{100, 10000, 6, 6400},
	/* capped at max, from the attempt that passes it on */
	{100, 10000, 7, 10000},
	{100, 10000, 8, 10000},
	{100, 10000, 1000000, 10000},
	{100, 101, 1, 101},
	{200, 30000, 7, 25600},
	{200, 30000, 8, 30000},
	/* base above max: max */
	{600000, 30000, 0, 30000},
	{600000, 30000, 5, 30000},
	/* equal base and max */
	{1, 1, 0, 1},
	{1, 1, 40, 1},
	/* a negative attempt counts as the first */
	{100, 10000, -3, 100},
	/* no overflow */
	{INT64_MAX / 2 + 1, INT64_MAX, 1, INT64_MAX},
	{INT64_MAX, INT64_MAX, 100, INT64_MAX},
	{1, INT64_MAX, 62, INT64_C(1) << 62},
	{1, INT64_MAX, 63, INT64_MAX},
	{1, INT64_MAX, 100000, INT64_MAX},
};

START_TEST(test_ceiling)
{
	const struct ceiling_case *c = &ceiling_cases[_i];
	int64_t ceiling = cat_backoff_ceiling(c->base, c->max, c->attempt);

	ck_assert_msg(ceiling == c->ceiling, "ceiling(%lld, %lld, %d) = %lld, expected %lld",
		      (long long)c->base, (long long)c->max, c->attempt, (long long)ceiling,
		      (long long)c->ceiling);
}
END_TEST

static const struct delay_case {
	int64_t base, max;
	int attempt;
} delay_cases[] = {
	{100, 10000, 0}, {100, 10000, 3}, {100, 10000, 50}, {200, 30000, 4},
	{1, 1, 0},	 {1, 10, 0},	  {3, 1000, 0},	    {100, 3600000, 20},
};

/* Every delay within [ceiling / 2, ceiling]; the draws spread over the
 * range (both halves of it are reached). */
START_TEST(test_delay_bounds)
{
	const struct delay_case *c = &delay_cases[_i];
	int64_t ceiling = cat_backoff_ceiling(c->base, c->max, c->attempt);
	int64_t lo = ceiling / 2, mid = lo + lo / 2; /* the draws reach 2 * lo (ceiling less one when odd) */
	bool low = false, high = false;

	srand(1);
	for (int i = 0; i < DRAWS; i++) {
		int64_t delay = cat_backoff_delay(c->base, c->max, c->attempt);

		ck_assert_msg(delay >= lo && delay <= ceiling,
			      "delay(%lld, %lld, %d) = %lld, not in [%lld, %lld]", (long long)c->base,
			      (long long)c->max, c->attempt, (long long)delay, (long long)lo,
			      (long long)ceiling);
		low = low || delay <= mid;
		high = high || delay > mid;
	}
	ck_assert(low);
	if (lo >= 2)
		ck_assert_msg(high, "no delay above %lld of [%lld, %lld]", (long long)mid, (long long)lo,
			      (long long)ceiling);
}
END_TEST

/* Retries slow down: the least delay of an attempt is at least the most of
 * the attempt two before it, until the cap. */
START_TEST(test_delay_grows)
{
	srand(2);
	for (int attempt = 2; attempt < 12; attempt++) {
		int64_t least = INT64_MAX, most = 0;

		for (int i = 0; i < DRAWS; i++) {
			int64_t now = cat_backoff_delay(100, 1000000, attempt);
			int64_t before = cat_backoff_delay(100, 1000000, attempt - 2);

			least = now < least ? now : least;
			most = before > most ? before : most;
		}
		ck_assert_msg(least >= most, "attempt %d: least %lld below %lld of attempt %d", attempt,
			      (long long)least, (long long)most, attempt - 2);
	}
}
END_TEST

START_TEST(test_delay_not_positive)
{
	ck_assert_int_eq(cat_backoff_delay(0, 1000, 0), 0);
	ck_assert_int_eq(cat_backoff_delay(100, 0, 4), 0);
}
END_TEST

static Suite *backoff_suite(void)
{
	Suite *s = suite_create("cat_backoff");
	TCase *tc = tcase_create("backoff");

	tcase_add_loop_test(tc, test_ceiling, 0, (int)(sizeof(ceiling_cases) / sizeof(ceiling_cases[0])));
	tcase_add_loop_test(tc, test_delay_bounds, 0, (int)(sizeof(delay_cases) / sizeof(delay_cases[0])));
	tcase_add_test(tc, test_delay_grows);
	tcase_add_test(tc, test_delay_not_positive);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(backoff_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
