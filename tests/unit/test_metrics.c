/* Check suite for common/cat_metrics. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_metrics.h"

#define THREADS	   8
#define PER_THREAD 100000

static char *render(cat_metrics_t *reg)
{
	char errstr[256];
	char *text;
	size_t len;

	ck_assert_int_eq(cat_metrics_render(reg, &text, &len, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(len, strlen(text));
	return text;
}

START_TEST(test_render_exact)
{
	static const double bounds[] = {0.125, 0.5, 2.5};
	cat_metrics_t *reg = cat_metrics_new();
	cat_metric_t *consumed, *consumed_cache, *version, *ratio, *latency;
	char *text;

	consumed = cat_metrics_counter(reg, "catalyst_messages_consumed_total", "Messages consumed.", "topic",
				       "write.v1", NULL);
	consumed_cache = cat_metrics_counter(reg, "catalyst_messages_consumed_total", "Messages consumed.",
					     "topic", "cache.v1", NULL);
	version = cat_metrics_gauge(reg, "catalyst_migrate_schema_version", "Applied schema version.", NULL);
	ratio = cat_metrics_gauge_double(reg, "catalyst_ratio", "A \"ratio\"\nwith \\ escapes.", "path",
					 "a\"b\\c\nd", "kind", "x", NULL);
	latency = cat_metrics_histogram(reg, "catalyst_batch_seconds", "Batch latency.", bounds, 3, "worker",
					"persist", NULL);
	ck_assert_ptr_nonnull(consumed);
	ck_assert_ptr_nonnull(consumed_cache);
	ck_assert_ptr_nonnull(version);
	ck_assert_ptr_nonnull(ratio);
	ck_assert_ptr_nonnull(latency);

	cat_metrics_add(consumed, 41);
	cat_metrics_inc(consumed);
	cat_metrics_add(consumed, -5); /* counters never go down */
	cat_metrics_set(version, 2);
	cat_metrics_set_double(ratio, 0.1);
	cat_metrics_observe(latency, 0.0625);
	cat_metrics_observe(latency, 0.125); /* le is inclusive */
	cat_metrics_observe(latency, 1);
	cat_metrics_observe(latency, 7.25);

	text = render(reg);
	ck_assert_str_eq(text, "# HELP catalyst_messages_consumed_total Messages consumed.\n"
			       "# TYPE catalyst_messages_consumed_total counter\n"
			       "catalyst_messages_consumed_total{topic=\"write.v1\"} 42\n"
			       "catalyst_messages_consumed_total{topic=\"cache.v1\"} 0\n"
			       "# HELP catalyst_migrate_schema_version Applied schema version.\n"
			       "# TYPE catalyst_migrate_schema_version gauge\n"
			       "catalyst_migrate_schema_version 2\n"
			       "# HELP catalyst_ratio A \"ratio\"\\nwith \\\\ escapes.\n"
			       "# TYPE catalyst_ratio gauge\n"
			       "catalyst_ratio{path=\"a\\\"b\\\\c\\nd\",kind=\"x\"} 0.1\n"
			       "# HELP catalyst_batch_seconds Batch latency.\n"
			       "# TYPE catalyst_batch_seconds histogram\n"
			       "catalyst_batch_seconds_bucket{worker=\"persist\",le=\"0.125\"} 2\n"
			       "catalyst_batch_seconds_bucket{worker=\"persist\",le=\"0.5\"} 2\n"
			       "catalyst_batch_seconds_bucket{worker=\"persist\",le=\"2.5\"} 3\n"
			       "catalyst_batch_seconds_bucket{worker=\"persist\",le=\"+Inf\"} 4\n"
			       "catalyst_batch_seconds_sum{worker=\"persist\"} 8.4375\n"
			       "catalyst_batch_seconds_count{worker=\"persist\"} 4\n");
	free(text);
	ck_assert(cat_metrics_value(consumed) == 42);
	ck_assert(cat_metrics_value(latency) == 4);
	cat_metrics_destroy(reg);
}
END_TEST

/* A declared family is on /metrics before its first series: HELP and TYPE
 * alone, then with the series once they exist; a clash of types is refused. */
START_TEST(test_declared_family_without_series)
{
	cat_metrics_t *reg = cat_metrics_new();
	cat_metric_t *lag;
	char *text;

	ck_assert_int_eq(cat_metrics_declare_gauge(reg, "catalyst_consumer_lag", "Messages behind."), CAT_OK);
	ck_assert_int_eq(cat_metrics_declare_counter(reg, "catalyst_done_total", "Done."), CAT_OK);
	ck_assert_int_eq(cat_metrics_declare_gauge(reg, "catalyst_consumer_lag", "Messages behind."), CAT_OK);
	ck_assert_int_eq(cat_metrics_declare_counter(reg, "catalyst_consumer_lag", "Clash."), CAT_ERR_FATAL);
	ck_assert_int_eq(cat_metrics_declare_gauge(reg, "9bad", "Bad."), CAT_ERR_FATAL);
	ck_assert_int_eq(cat_metrics_declare_gauge(NULL, "ok", "No registry."), CAT_ERR_FATAL);
	text = render(reg);
	ck_assert_str_eq(text, "# HELP catalyst_consumer_lag Messages behind.\n"
			       "# TYPE catalyst_consumer_lag gauge\n"
			       "# HELP catalyst_done_total Done.\n"
			       "# TYPE catalyst_done_total counter\n");
	free(text);

	lag = cat_metrics_gauge(reg, "catalyst_consumer_lag", "Messages behind.", "partition", "3", NULL);
	ck_assert_ptr_nonnull(lag);
	cat_metrics_set(lag, 7);
	ck_assert_ptr_null(cat_metrics_counter(reg, "catalyst_consumer_lag", "Clash.", NULL));
	text = render(reg);
	ck_assert_str_eq(text, "# HELP catalyst_consumer_lag Messages behind.\n"
			       "# TYPE catalyst_consumer_lag gauge\n"
			       "catalyst_consumer_lag{partition=\"3\"} 7\n"
			       "# HELP catalyst_done_total Done.\n"
			       "# TYPE catalyst_done_total counter\n");
	free(text);
	cat_metrics_destroy(reg);
}
END_TEST

START_TEST(test_same_series_same_handle)
{
	cat_metrics_t *reg = cat_metrics_new();
	cat_metric_t *a = cat_metrics_counter(reg, "x_total", "X.", "k", "v", NULL);
	cat_metric_t *b = cat_metrics_counter(reg, "x_total", "X.", "k", "v", NULL);
	cat_metric_t *c = cat_metrics_counter(reg, "x_total", "X.", "k", "w", NULL);

	ck_assert_ptr_eq(a, b);
	ck_assert_ptr_ne(a, c);
	cat_metrics_destroy(reg);
}
END_TEST

START_TEST(test_programming_errors)
{
	static const double bounds[] = {1, 2};
	static const double unordered[] = {2, 1};
	cat_metrics_t *reg = cat_metrics_new();

	ck_assert_ptr_nonnull(cat_metrics_counter(reg, "x_total", "X.", NULL));
	ck_assert_ptr_null(cat_metrics_gauge(reg, "x_total", "X.", NULL)); /* other type */
	ck_assert_ptr_null(cat_metrics_counter(reg, "9bad", "X.", NULL));
	ck_assert_ptr_null(cat_metrics_counter(reg, "bad-name", "X.", NULL));
	ck_assert_ptr_null(cat_metrics_counter(reg, "y_total", "Y.", "bad-label", "v", NULL));
	ck_assert_ptr_null(cat_metrics_counter(reg, "y_total", "Y.", "__reserved", "v", NULL));
	ck_assert_ptr_null(cat_metrics_counter(reg, "y_total", "Y.", "a", "1", "a", "2", NULL));
	ck_assert_ptr_null(cat_metrics_counter(reg, "y_total", "Y.", "a", "1", "b", "2", "c", "3", "d", "4",
					       "e", "5", NULL));
	ck_assert_ptr_null(cat_metrics_histogram(reg, "h", "H.", bounds, 2, "le", "1", NULL));
	ck_assert_ptr_null(cat_metrics_histogram(reg, "h2", "H.", unordered, 2, NULL));
	ck_assert_ptr_nonnull(cat_metrics_histogram(reg, "h3", "H.", bounds, 2, NULL));
	ck_assert_ptr_null(cat_metrics_histogram(reg, "h3", "H.", bounds, 1, NULL)); /* other buckets */
	/* a NULL handle is a no-op */
	cat_metrics_inc(NULL);
	cat_metrics_observe(NULL, 1);
	cat_metrics_destroy(reg);
	cat_metrics_destroy(NULL);
}
END_TEST

START_TEST(test_double_counter_and_gauge)
{
	cat_metrics_t *reg = cat_metrics_new();
	cat_metric_t *seconds = cat_metrics_counter_double(reg, "busy_seconds_total", "Busy.", NULL);
	cat_metric_t *depth = cat_metrics_gauge(reg, "depth", "Depth.", NULL);
	char *text;

	cat_metrics_add_double(seconds, 0.25);
	cat_metrics_add_double(seconds, 1.0 / 3.0);
	cat_metrics_add_double(seconds, -1); /* ignored */
	cat_metrics_add(depth, 5);
	cat_metrics_add(depth, -7);
	text = render(reg);
	ck_assert_msg(strstr(text, "\nbusy_seconds_total 0.58333333333333326\n") ||
			      strstr(text, "\nbusy_seconds_total 0.583333333333333\n"),
		      "%s", text);
	ck_assert_msg(strstr(text, "\ndepth -2\n"), "%s", text);
	free(text);
	cat_metrics_destroy(reg);
}
END_TEST

typedef struct worker_arg {
	cat_metric_t *counter;
	cat_metric_t *seconds;
	cat_metric_t *latency;
} worker_arg_t;

static void *worker(void *opaque)
{
	worker_arg_t *arg = opaque;

	for (int i = 0; i < PER_THREAD; i++) {
		cat_metrics_inc(arg->counter);
		cat_metrics_add_double(arg->seconds, 0.5);
		cat_metrics_observe(arg->latency, (i % 2) ? 0.01 : 3);
	}
	return NULL;
}

static void *renderer(void *opaque)
{
	cat_metrics_t *reg = opaque;

	for (int i = 0; i < 50; i++)
		free(render(reg));
	return NULL;
}

START_TEST(test_concurrent_updates_sum)
{
	cat_metrics_t *reg = cat_metrics_new();
	worker_arg_t arg;
	pthread_t threads[THREADS + 1];
	char *text;
	char want[128];

	arg.counter = cat_metrics_counter(reg, "events_total", "Events.", NULL);
	arg.seconds = cat_metrics_counter_double(reg, "work_seconds_total", "Work.", NULL);
	arg.latency = cat_metrics_histogram(reg, "latency_seconds", "Latency.", NULL, 0, NULL);
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&threads[i], NULL, worker, &arg), 0);
	ck_assert_int_eq(pthread_create(&threads[THREADS], NULL, renderer, reg), 0);
	for (int i = 0; i <= THREADS; i++)
		pthread_join(threads[i], NULL);

	ck_assert(cat_metrics_value(arg.counter) == THREADS * PER_THREAD);
	ck_assert(cat_metrics_value(arg.seconds) == THREADS * PER_THREAD * 0.5);
	ck_assert(cat_metrics_value(arg.latency) == THREADS * PER_THREAD);
	text = render(reg);
	snprintf(want, sizeof(want), "\nevents_total %d\n", THREADS * PER_THREAD);
	ck_assert_msg(strstr(text, want), "%s", text);
	snprintf(want, sizeof(want), "\nlatency_seconds_bucket{le=\"0.01\"} %d\n", THREADS * PER_THREAD / 2);
	ck_assert_msg(strstr(text, want), "%s", text);
	snprintf(want, sizeof(want), "\nlatency_seconds_count %d\n", THREADS * PER_THREAD);
	ck_assert_msg(strstr(text, want), "%s", text);
	free(text);
	cat_metrics_destroy(reg);
}
END_TEST

static int hook_calls;

static void hook(void *opaque)
{
	hook_calls++;
	cat_metrics_set(opaque, hook_calls);
}

START_TEST(test_render_hooks_and_process)
{
	cat_metrics_t *reg = cat_metrics_new();
	cat_metric_t *refreshed = cat_metrics_gauge(reg, "refreshed", "Refreshed at render.", NULL);
	char *text;

	ck_assert_int_eq(cat_metrics_on_render(reg, hook, refreshed), CAT_OK);
	ck_assert_int_eq(cat_metrics_add_process(reg, "catalyst_test"), CAT_OK);
	free(render(reg));
	text = render(reg);
	ck_assert_msg(strstr(text, "\nrefreshed 2\n"), "%s", text);
	ck_assert_msg(strstr(text, "\ncatalyst_test_up 1\n"), "%s", text);
	ck_assert_msg(strstr(text, "# TYPE process_cpu_seconds_total counter\n"), "%s", text);
	ck_assert_msg(strstr(text, "\nprocess_resident_memory_bytes "), "%s", text);
	ck_assert_msg(strstr(text, "\nprocess_open_fds "), "%s", text);
	ck_assert_msg(strstr(text, "\nprocess_start_time_seconds 1"), "%s", text);
	free(text);
	cat_metrics_destroy(reg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_render_exact);
	tcase_add_test(tc, test_declared_family_without_series);
	tcase_add_test(tc, test_same_series_same_handle);
	tcase_add_test(tc, test_programming_errors);
	tcase_add_test(tc, test_double_counter_and_gauge);
	tcase_add_test(tc, test_concurrent_updates_sum);
	tcase_add_test(tc, test_render_hooks_and_process);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
