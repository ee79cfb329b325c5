/*
 * Check suite for common/cat_publish, without a broker: what a typed call
 * refuses, and the meta it completes. (Keys and delivery are checked
 * against the stack by tests/integration/test_publish.sh.)
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cat_publish.h"

static const cat_config_def_t defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
};
#define N_DEFS (sizeof(defs) / sizeof(defs[0]))

/* Nothing listens there: commands are enqueued and never delivered. */
static char *env[] = { "CATALYST_BROKERS=127.0.0.1:1", NULL };

typedef struct publisher {
	cat_config_t *cfg;
	cat_publish_t *publish;
} publisher_t;

/* What the report function saw. */
typedef struct reports {
	int failed;
	int acknowledged;
	uintptr_t last_ref;
} reports_t;

static void count_report(void *ref, const char *error, void *opaque)
{
	reports_t *reports = opaque;

	if (error)
		reports->failed++;
	else
		reports->acknowledged++;
	reports->last_ref = (uintptr_t)ref;
}

static void publisher_open_with(publisher_t *p, reports_t *reports)
{
	const cat_publish_options_t options = {
		.client_id = "test-publish",
		.producer = "test/1.0",
		.delivery_timeout_ms = 1000,
		.report = reports ? count_report : NULL,
		.opaque = reports,
	};
	char errstr[512];

	ck_assert_int_eq(cat_config_load(&p->cfg, defs, N_DEFS, env, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_msg(cat_publish_new(&p->publish, p->cfg, &options, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
}

static void publisher_open(publisher_t *p)
{
	publisher_open_with(p, NULL);
}

static void publisher_close(publisher_t *p)
{
	cat_publish_destroy(p->publish);
	cat_config_destroy(p->cfg);
}

START_TEST(test_refuses_what_no_worker_takes)
{
	publisher_t p;
	Catalyst__V1__WriteCommand write = CATALYST__V1__WRITE_COMMAND__INIT;
	Catalyst__V1__CacheCommand cache = CATALYST__V1__CACHE_COMMAND__INIT;
	Catalyst__V1__CacheCommand__Delete del = CATALYST__V1__CACHE_COMMAND__DELETE__INIT;
	Catalyst__V1__SyncCommand sync = CATALYST__V1__SYNC_COMMAND__INIT;
	Catalyst__V1__SyncCommand__ReplicateRows rows = CATALYST__V1__SYNC_COMMAND__REPLICATE_ROWS__INIT;
	Catalyst__V1__BackupCommand backup = CATALYST__V1__BACKUP_COMMAND__INIT;
	Catalyst__V1__BackupCommand__Verify verify = CATALYST__V1__BACKUP_COMMAND__VERIFY__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	char errstr[512], long_id[CAT_CODEC_COMMAND_ID_MAX + 2];

	publisher_open(&p);
	ck_assert_int_eq(cat_publish_write(p.publish, &write, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_int_eq(cat_publish_cache(p.publish, &cache, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_DELETE; /* without keys */
	cache.delete_ = &del;
	ck_assert_int_eq(cat_publish_cache(p.publish, &cache, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_int_eq(cat_publish_sync(p.publish, &sync, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	sync.action_case = CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE; /* without changes */
	sync.replicate = &rows;
	ck_assert_int_eq(cat_publish_sync(p.publish, &sync, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_int_eq(cat_publish_backup(p.publish, &backup, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);

	/* a command_id longer than the decode boundary takes */
	memset(long_id, 'x', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	meta.command_id = long_id;
	backup.meta = &meta;
	backup.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_VERIFY;
	backup.verify = &verify;
	verify.backup_id = "b-1";
	ck_assert_int_eq(cat_publish_backup(p.publish, &backup, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_ptr_nonnull(strstr(errstr, "command_id"));
	ck_assert_uint_eq(cat_publish_outstanding(p.publish), 0);
	publisher_close(&p);
}
END_TEST

START_TEST(test_refuses_a_command_too_large)
{
	publisher_t p;
	Catalyst__V1__CacheCommand cache = CATALYST__V1__CACHE_COMMAND__INIT;
	Catalyst__V1__CacheCommand__Set set = CATALYST__V1__CACHE_COMMAND__SET__INIT;
	char errstr[512];
	uint8_t *value = calloc(1, CAT_CODEC_MAX_MESSAGE_BYTES);

	ck_assert_ptr_nonnull(value);
	publisher_open(&p);
	set.key = "news:1";
	set.has_value = 1;
	set.value.data = value;
	set.value.len = CAT_CODEC_MAX_MESSAGE_BYTES; /* with the key and meta: larger */
	cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_SET;
	cache.set = &set;
	ck_assert_int_eq(cat_publish_cache(p.publish, &cache, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_ptr_nonnull(strstr(errstr, "larger than"));
	ck_assert_uint_eq(cat_publish_outstanding(p.publish), 0);
	publisher_close(&p);
	free(value);
}
END_TEST

START_TEST(test_completes_meta_and_leaves_the_callers_alone)
{
	publisher_t p;
	Catalyst__V1__CacheCommand cache = CATALYST__V1__CACHE_COMMAND__INIT;
	Catalyst__V1__CacheCommand__Warm warm = CATALYST__V1__CACHE_COMMAND__WARM__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	char errstr[512], first[CAT_CODEC_COMMAND_ID_MAX + 1];

	publisher_open(&p);
	cache.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_WARM;
	cache.warm = &warm;

	/* no meta: one made up, with a new UUID each time */
	ck_assert_int_eq(cat_publish_cache(p.publish, &cache, NULL, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_ptr_null(cache.meta);
	ck_assert_uint_eq(strlen(cat_publish_command_id(p.publish)), 36);
	snprintf(first, sizeof(first), "%s", cat_publish_command_id(p.publish));
	ck_assert_int_eq(cat_publish_cache(p.publish, &cache, NULL, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_ne(cat_publish_command_id(p.publish), first);

	/* the caller's command_id is kept; its meta is not written to */
	meta.command_id = "retry-of-42";
	cache.meta = &meta;
	ck_assert_int_eq(cat_publish_cache(p.publish, &cache, NULL, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(cat_publish_command_id(p.publish), "retry-of-42");
	ck_assert_ptr_eq(cache.meta, &meta);
	ck_assert_ptr_null(meta.producer);
	ck_assert(!meta.has_issued_at_us);

	/* enqueued, not delivered: nothing listens */
	ck_assert_uint_eq(cat_publish_outstanding(p.publish), 3);
	ck_assert_uint_eq(cat_publish_delivered(p.publish), 0);
	publisher_close(&p);
}
END_TEST

START_TEST(test_wait_reports_each_command_not_delivered)
{
	publisher_t p;
	reports_t reports = { 0 };
	Catalyst__V1__BackupCommand backup = CATALYST__V1__BACKUP_COMMAND__INIT;
	Catalyst__V1__BackupCommand__Prune prune = CATALYST__V1__BACKUP_COMMAND__PRUNE__INIT;
	char errstr[512];

	publisher_open_with(&p, &reports);
	backup.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_PRUNE;
	backup.prune = &prune;
	ck_assert_int_eq(cat_publish_backup(p.publish, &backup, (void *)(uintptr_t)7, errstr, sizeof(errstr)),
			 CAT_OK);
	/* every report came (after the 1 s delivery timeout): waiting longer changes nothing */
	ck_assert_int_eq(cat_publish_wait(p.publish, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "commands not delivered: 1");
	ck_assert_int_eq(reports.failed, 1);
	ck_assert_int_eq(reports.acknowledged, 0);
	ck_assert_uint_eq(reports.last_ref, 7);
	ck_assert_uint_eq(cat_publish_failed(p.publish), 1);
	ck_assert_uint_eq(cat_publish_outstanding(p.publish), 0);
	/* a failure is returned by one wait, not by the next ones */
	ck_assert_int_eq(cat_publish_wait(p.publish, errstr, sizeof(errstr)), CAT_OK);
	publisher_close(&p);
}
END_TEST

static Suite *publish_suite(void)
{
	Suite *s = suite_create("cat_publish");
	TCase *tc = tcase_create("without a broker");

	tcase_add_test(tc, test_refuses_what_no_worker_takes);
	tcase_add_test(tc, test_refuses_a_command_too_large);
	tcase_add_test(tc, test_completes_meta_and_leaves_the_callers_alone);
	tcase_add_test(tc, test_wait_reports_each_command_not_delivered);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(publish_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
