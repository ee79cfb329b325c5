/* Check suite for common/cat_sink: key rules and the directory backend
 * (the S3 backend is tested against moto in tests/integration/test_s3.sh). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cat_sink.h"

START_TEST(test_key_rules)
{
	static const struct {
		const char *key;
		bool ok;
	} cases[] = {
		{"backups/db/full-1.sql.gz", true}, {"a", true}, {"a.b_c-D/e", true},
		{"", false}, {"/abs", false}, {"a//b", false}, {"a/", false}, {"../x", false},
		{"a/../b", false}, {"a/./b", false}, {"a b", false}, {"a?b", false}, {"a\\b", false},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(cat_sink_key_valid(cases[i].key) == cases[i].ok, "key \"%s\"", cases[i].key);
	ck_assert(!cat_sink_key_valid(NULL));
}
END_TEST

static char root[64];

static void setup(void)
{
	snprintf(root, sizeof(root), "/tmp/test_sink.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(root));
}

static void teardown(void)
{
	char *argv[] = {"rm", "-rf", root, NULL};
	pid_t pid = fork();

	if (pid == 0) {
		execvp(argv[0], argv);
		_exit(127);
	}
	int status;

	(void)waitpid(pid, &status, 0);
}

typedef struct listing {
	char keys[16][128];
	uint64_t sizes[16];
	int n;
} listing_t;

static int collect(const char *key, uint64_t size, void *opaque)
{
	listing_t *l = opaque;

	if (l->n < 16) {
		snprintf(l->keys[l->n], sizeof(l->keys[0]), "%s", key);
		l->sizes[l->n++] = size;
	}
	return 0;
}

START_TEST(test_dir_write_finish_get_list_delete)
{
	char errstr[512], last[512], *data = NULL;
	size_t len = 0;
	bool not_found;
	cat_sink_t *sink;
	cat_sink_writer_t *w;
	listing_t l = {0};

	ck_assert_int_eq(cat_sink_new_dir(&sink, root, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(cat_sink_name(sink), "dir");
	ck_assert_int_eq(cat_sink_check(sink, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_open(sink, "b/db/x.gz", "application/gzip", &w, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_write(w, "hello ", 6, errstr, sizeof(errstr)), CAT_OK);
	/* not visible before finish */
	ck_assert_int_eq(cat_sink_list(sink, "b/", collect, &l, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(l.n, 0);
	ck_assert_int_eq(cat_sink_write(w, "world", 5, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_finish(w, errstr, sizeof(errstr)), CAT_OK);
	cat_sink_writer_free(w);

	ck_assert_int_eq(cat_sink_put(sink, "b/db/a.json", "{}", 2, "application/json", errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_put(sink, "c/other", "z", 1, NULL, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_list(sink, "b/", collect, &l, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(l.n, 2);
	ck_assert_str_eq(l.keys[0], "b/db/a.json"); /* key order */
	ck_assert_str_eq(l.keys[1], "b/db/x.gz");
	ck_assert_int_eq(l.sizes[1], 11);

	ck_assert_int_eq(cat_sink_get_small(sink, "b/db/x.gz", 100, &data, &len, &not_found, errstr, sizeof(errstr)),
			 CAT_OK);
	ck_assert_str_eq(data, "hello world");
	ck_assert_int_eq(len, 11);
	free(data);
	ck_assert_int_eq(cat_sink_get_small(sink, "b/db/x.gz", 5, &data, &len, &not_found, errstr, sizeof(errstr)),
			 CAT_ERR_PERMANENT);
	ck_assert_ptr_null(data);
	ck_assert_int_eq(cat_sink_get_small(sink, "b/none", 5, &data, &len, &not_found, errstr, sizeof(errstr)),
			 CAT_ERR_PERMANENT);
	ck_assert(not_found);
	ck_assert_ptr_nonnull(strstr(cat_sink_last_error(sink, last, sizeof(last)), "b/none"));

	ck_assert_int_eq(cat_sink_delete(sink, "b/db/x.gz", errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_delete(sink, "b/db/x.gz", errstr, sizeof(errstr)), CAT_OK); /* idempotent */
	l.n = 0;
	ck_assert_int_eq(cat_sink_list(sink, "b/", collect, &l, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(l.n, 1);
	ck_assert_int_eq(cat_sink_put(sink, "../escape", "x", 1, NULL, errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	cat_sink_free(sink);
}
END_TEST

START_TEST(test_dir_abort_and_cleanup_leave_nothing)
{
	char errstr[512];
	cat_sink_t *sink;
	cat_sink_writer_t *w, *w2;
	listing_t l = {0};
	int removed = -1;

	ck_assert_int_eq(cat_sink_new_dir(&sink, root, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_open(sink, "p/x", NULL, &w, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_write(w, "abc", 3, errstr, sizeof(errstr)), CAT_OK);
	cat_sink_abort(w);
	cat_sink_writer_free(w);
	/* a writer freed unfinished is aborted */
	ck_assert_int_eq(cat_sink_open(sink, "p/y", NULL, &w, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_write(w, "abc", 3, errstr, sizeof(errstr)), CAT_OK);
	cat_sink_writer_free(w);
	ck_assert_int_eq(cat_sink_list(sink, "", collect, &l, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(l.n, 0);

	/* what a crash would leave: an open temp file; cleanup removes it */
	ck_assert_int_eq(cat_sink_open(sink, "p/z", NULL, &w, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_open(sink, "q/z", NULL, &w2, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_sink_cleanup(sink, "p/", &removed, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(removed, 1);
	ck_assert_int_eq(cat_sink_cleanup(sink, "q/", &removed, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(removed, 1);
	cat_sink_writer_free(w);
	cat_sink_writer_free(w2);
	cat_sink_free(sink);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("sink");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_key_rules);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_dir_write_finish_get_list_delete);
	tcase_add_test(tc, test_dir_abort_and_cleanup_leave_nothing);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
