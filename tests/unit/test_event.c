/* Check suite for common/cat_event (the ids; publishing is exercised by the
 * workers' integration tests against the real broker). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cat_event.h"

START_TEST(test_id_derives_from_the_command)
{
	cat_event_t a = { .kind = "backup.completed", .subject = "b-1", .command_id = "cmd-1" };
	cat_event_t b = a;
	char id_a[40], id_b[40], id_c[40];

	cat_event_id("catalyst-backup", &a, id_a, sizeof(id_a));
	cat_event_id("catalyst-backup", &b, id_b, sizeof(id_b));
	ck_assert_str_eq(id_a, id_b); /* a redelivered command repeats its event id */
	ck_assert_uint_eq(strlen(id_a), 36);
	ck_assert_int_eq(id_a[14], '8'); /* version 8 */
	ck_assert(strchr("89ab", id_a[19]) != NULL);

	b.kind = "backup.failed";
	cat_event_id("catalyst-backup", &b, id_c, sizeof(id_c));
	ck_assert_str_ne(id_a, id_c);
	b = a;
	b.subject = "b-2";
	cat_event_id("catalyst-backup", &b, id_c, sizeof(id_c));
	ck_assert_str_ne(id_a, id_c);
	cat_event_id("catalyst-sync", &a, id_c, sizeof(id_c));
	ck_assert_str_ne(id_a, id_c);
	/* the parts are separated: ("ab", "c") is not ("a", "bc") */
	a.subject = "ab";
	a.command_id = "c";
	b.subject = "a";
	b.command_id = "bc";
	cat_event_id("w", &a, id_b, sizeof(id_b));
	cat_event_id("w", &b, id_c, sizeof(id_c));
	ck_assert_str_ne(id_b, id_c);
}
END_TEST

START_TEST(test_id_without_command_is_random)
{
	cat_event_t a = { .kind = "migration.applied", .subject = "0003" };
	char id_a[40], id_b[40];

	cat_event_id("catalyst-migrate", &a, id_a, sizeof(id_a));
	cat_event_id("catalyst-migrate", &a, id_b, sizeof(id_b));
	ck_assert_uint_eq(strlen(id_a), 36);
	ck_assert_str_ne(id_a, id_b);
	ck_assert_int_eq(id_a[14], '4');
}
END_TEST

int main(void)
{
	Suite *suite = suite_create("cat_event");
	TCase *tc = tcase_create("id");
	SRunner *runner;
	int failed;

	tcase_add_test(tc, test_id_derives_from_the_command);
	tcase_add_test(tc, test_id_without_command_is_random);
	suite_add_tcase(suite, tc);
	runner = srunner_create(suite);
	srunner_run_all(runner, CK_NORMAL);
	failed = srunner_ntests_failed(runner);
	srunner_free(runner);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
