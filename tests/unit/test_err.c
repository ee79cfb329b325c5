/* Check suite for common/cat_err. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cat_err.h"

START_TEST(test_sqlstate_classes)
{
	static const struct {
		const char *sqlstate;
		cat_err_t expect;
	} cases[] = {
		{ NULL, CAT_ERR_RETRIABLE },    /* connection broke before a result */
		{ "", CAT_ERR_RETRIABLE },
		{ "08006", CAT_ERR_RETRIABLE }, /* connection_failure */
		{ "08001", CAT_ERR_RETRIABLE },
		{ "40001", CAT_ERR_RETRIABLE }, /* serialization_failure */
		{ "40P01", CAT_ERR_RETRIABLE }, /* deadlock_detected */
		{ "53300", CAT_ERR_RETRIABLE }, /* too_many_connections */
		{ "57P01", CAT_ERR_RETRIABLE }, /* admin_shutdown */
		{ "57P03", CAT_ERR_RETRIABLE },
		{ "55P03", CAT_ERR_RETRIABLE },
		{ "57014", CAT_ERR_RETRIABLE },
		{ "22001", CAT_ERR_PERMANENT }, /* string_data_right_truncation */
		{ "22P02", CAT_ERR_PERMANENT }, /* invalid_text_representation */
		{ "23505", CAT_ERR_PERMANENT }, /* unique_violation */
		{ "23502", CAT_ERR_PERMANENT }, /* not_null_violation */
		{ "23514", CAT_ERR_PERMANENT }, /* check_violation */
		{ "28P01", CAT_ERR_FATAL },     /* invalid_password */
		{ "3D000", CAT_ERR_FATAL },     /* invalid_catalog_name */
		{ "42P01", CAT_ERR_FATAL },     /* undefined_table */
		{ "42501", CAT_ERR_FATAL },     /* insufficient_privilege */
		{ "57P02X", CAT_ERR_RETRIABLE }, /* malformed: treated as no state */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(cat_err_class_sqlstate(cases[i].sqlstate) == cases[i].expect, "sqlstate %s",
			      cases[i].sqlstate ? cases[i].sqlstate : "(null)");
}
END_TEST

START_TEST(test_http_classes)
{
	static const struct {
		long status;
		cat_err_t expect;
	} cases[] = {
		{ 0, CAT_ERR_RETRIABLE },   { 200, CAT_OK },           { 204, CAT_OK },
		{ 400, CAT_ERR_PERMANENT }, { 401, CAT_ERR_FATAL },     { 403, CAT_ERR_FATAL },
		{ 404, CAT_ERR_PERMANENT }, { 408, CAT_ERR_RETRIABLE }, { 429, CAT_ERR_RETRIABLE },
		{ 500, CAT_ERR_RETRIABLE }, { 503, CAT_ERR_RETRIABLE }, { 599, CAT_ERR_RETRIABLE },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(cat_err_class_http(cases[i].status) == cases[i].expect, "status %ld", cases[i].status);
}
END_TEST

START_TEST(test_set_formats_once)
{
	char errstr[16];

	ck_assert_int_eq(cat_err_set(errstr, sizeof(errstr), CAT_ERR_PERMANENT, "bad %s %d", "value", 42),
			 CAT_ERR_PERMANENT);
	ck_assert_str_eq(errstr, "bad value 42");
	/* truncated, still terminated */
	cat_err_set(errstr, sizeof(errstr), CAT_ERR_FATAL, "%s", "a very long message indeed");
	ck_assert_int_eq(strlen(errstr), sizeof(errstr) - 1);
	ck_assert_int_eq(cat_err_set(NULL, 0, CAT_ERR_RETRIABLE, "ignored"), CAT_ERR_RETRIABLE);
	ck_assert_str_eq(cat_err_name(CAT_ERR_RETRIABLE), "retriable");
	ck_assert_str_eq(cat_err_name(CAT_ERR_FATAL), "fatal");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("err");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_sqlstate_classes);
	tcase_add_test(tc, test_http_classes);
	tcase_add_test(tc, test_set_formats_once);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
