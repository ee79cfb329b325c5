/* Check suite for common/cat_pg: what needs no server (script splitting,
 * connection error classes, failed connects, session options). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cat_pg.h"

#define MAX_STATEMENTS 8

/* Splits sql and joins the statements with '|'. */
static void split(const char *sql, char *out, size_t out_size)
{
	size_t pos = 0, start, len, n = 0;

	out[0] = '\0';
	while (cat_pg_script_next(sql, &pos, &start, &len)) {
		ck_assert_uint_lt(n++, MAX_STATEMENTS);
		if (out[0])
			strncat(out, "|", out_size - strlen(out) - 1);
		strncat(out, sql + start,
			len < out_size - strlen(out) - 1 ? len : out_size - strlen(out) - 1);
	}
}

START_TEST(test_script_split)
{
	static const struct {
		const char *sql;
		const char *expect;
	} cases[] = {
		{"", ""},
		{"  \n\t ", ""},
		{"SELECT 1", "SELECT 1"},
		{"SELECT 1;", "SELECT 1"},
		{"SELECT 1; SELECT 2;\n", "SELECT 1|SELECT 2"},
		{";;SELECT 1;;", "SELECT 1"},
		{"-- only a comment\n", ""},
		{"/* block */ ; -- trailing\n", ""},
		{"SELECT 1; -- done;\n", "SELECT 1"},
		{"SELECT ';';SELECT 2", "SELECT ';'|SELECT 2"},
		{"SELECT 'it''s;';", "SELECT 'it''s;'"},
		{"SELECT E'a\\';b';SELECT 2", "SELECT E'a\\';b'|SELECT 2"},
		{"SELECT 'a\\';SELECT 2", "SELECT 'a\\'|SELECT 2"}, /* standard strings: \ is a character */
		{"SELECT \"a;b\" FROM t;", "SELECT \"a;b\" FROM t"},
		{"SELECT 1 /* a; /* nested; */ b; */ + 1; SELECT 2",
		 "SELECT 1 /* a; /* nested; */ b; */ + 1|SELECT 2"},
		{"DO $$ BEGIN PERFORM 1; END $$; SELECT 2", "DO $$ BEGIN PERFORM 1; END $$|SELECT 2"},
		{"DO $body$ SELECT '$$;'; $body$;x", "DO $body$ SELECT '$$;'; $body$|x"},
		{"SELECT $1; SELECT a$b;", "SELECT $1|SELECT a$b"},
		{"-- catalyst:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\nCREATE INDEX "
		 "CONCURRENTLY j ON t (b);\n",
		 "-- catalyst:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a)|CREATE INDEX CONCURRENTLY "
		 "j ON t (b)"},
		{"SELECT 'unterminated;", "SELECT 'unterminated;"},
	};
	char out[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		split(cases[i].sql, out, sizeof(out));
		ck_assert_msg(strcmp(out, cases[i].expect) == 0, "case %zu: got [%s], want [%s]", i, out,
			      cases[i].expect);
	}
}
END_TEST

START_TEST(test_connect_error_class)
{
	static const struct {
		const char *message;
		cat_err_t expect;
	} cases[] = {
		{NULL, CAT_ERR_RETRIABLE},
		{"connection to server at \"127.0.0.1\", port 5432 failed: Connection refused",
		 CAT_ERR_RETRIABLE},
		{"connection to server at \"db\", port 5432 failed: timeout expired", CAT_ERR_RETRIABLE},
		{"could not translate host name \"db\" to address: Name or service not known",
		 CAT_ERR_RETRIABLE},
		{"connection to server at \"db\", port 5432 failed: FATAL:  the database system is starting "
		 "up",
		 CAT_ERR_RETRIABLE},
		{"connection to server at \"db\", port 5432 failed: FATAL:  sorry, too many clients already",
		 CAT_ERR_RETRIABLE},
		{"connection to server at \"db\", port 5432 failed: FATAL:  password authentication failed "
		 "for "
		 "user \"catalyst\"",
		 CAT_ERR_FATAL},
		{"connection to server at \"db\", port 5432 failed: fe_sendauth: no password supplied",
		 CAT_ERR_FATAL},
		{"FATAL:  database \"catalyst\" does not exist", CAT_ERR_FATAL},
		{"FATAL:  no pg_hba.conf entry for host \"10.0.0.1\"", CAT_ERR_FATAL},
		{"server does not support SSL, but SSL was required", CAT_ERR_FATAL},
		{"SSL error: certificate verify failed", CAT_ERR_FATAL},
		{"invalid sslmode value: \"sometimes\"", CAT_ERR_FATAL},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(cat_pg_connect_error_class(cases[i].message) == cases[i].expect, "case %zu", i);
}
END_TEST

START_TEST(test_connect_refused_is_retriable_and_hides_password)
{
	PGconn *conn = (PGconn *)1;
	char errstr[512];
	cat_err_t err;

	/* port 1 on loopback: nothing listens, refused at once */
	err = cat_pg_connect(&conn, "postgresql://catalyst:s3cretpw@127.0.0.1:1/catalyst", "test_pg", 2,
			     errstr, sizeof(errstr));
	ck_assert_int_eq(err, CAT_ERR_RETRIABLE);
	ck_assert_ptr_null(conn);
	ck_assert_msg(strncmp(errstr, "could not connect to PostgreSQL: ", 33) == 0, "%s", errstr);
	ck_assert_msg(!strstr(errstr, "s3cretpw"), "password in: %s", errstr);
	ck_assert_msg(!strchr(errstr, '\n'), "not one line: %s", errstr);
}
END_TEST

START_TEST(test_connect_bad_option_is_fatal)
{
	PGconn *conn = (PGconn *)1;
	char errstr[512];

	ck_assert_int_eq(cat_pg_connect(&conn, "host=127.0.0.1 port=1 sslmode=sometimes", "test_pg", 2,
					errstr, sizeof(errstr)),
			 CAT_ERR_FATAL);
	ck_assert_ptr_null(conn);
	ck_assert_msg(strstr(errstr, "sslmode"), "%s", errstr);
}
END_TEST

START_TEST(test_session_opts_from_config)
{
	static const cat_config_def_t defs[] = {CAT_CONFIG_PG};
	char *env[] = {"CATALYST_PG_URL=postgresql://catalyst:s3cretpw@127.0.0.1:1/catalyst",
		       "CATALYST_PG_CONNECT_TIMEOUT_S=7", NULL};
	cat_pg_session_opts_t opts;
	cat_config_t *cfg = NULL;
	char errstr[256];

	ck_assert_int_eq(cat_config_load(&cfg, defs, sizeof(defs) / sizeof(defs[0]), env, errstr, sizeof(errstr)),
			 CAT_OK);
	memset(&opts, 0xff, sizeof(opts));
	cat_pg_session_opts_from_config(&opts, cfg, "test_pg");
	ck_assert_str_eq(opts.url, "postgresql://catalyst:s3cretpw@127.0.0.1:1/catalyst");
	ck_assert_str_eq(opts.app_name, "test_pg");
	ck_assert_str_eq(opts.what, "primary");
	ck_assert_int_eq(opts.connect_timeout_s, 7);
	ck_assert_int_eq(opts.schema_version, 0);
	ck_assert_ptr_null(opts.on_connect);
	ck_assert_ptr_null(opts.on_connected);
	ck_assert_ptr_null(opts.opaque);
	ck_assert_ptr_null(opts.reconnects);
	cat_config_destroy(cfg);
}
END_TEST

START_TEST(test_close_accepts_null)
{
	cat_pg_close(NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pg");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_script_split);
	tcase_add_test(tc, test_connect_error_class);
	tcase_add_test(tc, test_connect_refused_is_retriable_and_hides_password);
	tcase_add_test(tc, test_connect_bad_option_is_fatal);
	tcase_add_test(tc, test_session_opts_from_config);
	tcase_add_test(tc, test_close_accepts_null);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
