/*
 * catalyst-cache's key families (workers/cache/keys.c, built into this test
 * as it is into the worker): which keys and patterns cache.v1 may touch.
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../workers/cache/keys.c"

static const char *const families[] = {"news:", "signals:", "trades:", "sources:", "candidates:", "app:"};

/* Refused first, then allowed. */
static const struct key_case {
	const char *key;
	bool pattern;
	bool allowed;
} key_cases[] = {
	/* another application's keys, the whole database, the worker's own keys */
	{"", false, false},
	{"other:1", false, false},
	{"news", false, false},
	{"newsletter:1", false, false},
	{"News:1", false, false},
	{"catalyst-cache:sentinel", false, false},
	{"appx:1", false, false},
	{"*", true, false},
	{"*news:*", true, false},
	{"news*", true, false},
	{"new?:*", true, false},
	{"new[s]:*", true, false},
	{"n\\ews:*", true, false},
	{"news\\:*", true, false},
	{"[n]ews:1", true, false},
	{"catalyst-cache:*", true, false},
	{"?", true, false},
	/* inside a family */
	{"news:1", false, true},
	{"news:symbol:AAPL", false, true},
	{"news:*", false, true}, /* a key may hold '*': it is a key */
	{"candidates:top:7", false, true},
	{"app:anything", false, true},
	{"news:*", true, true},
	{"news:1?", true, true},
	{"news:[ab]*", true, true},
	{"candidates:*", true, true},
	{"signals:symbol:*", true, true},
	{"app:*", true, true},
};

START_TEST(test_key)
{
	const struct key_case *c = &key_cases[_i];
	cache_keys_t keys = {0};
	char why[256];
	const char *refusal;

	for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++)
		ck_assert(cache_keys_add(&keys, families[f]));
	refusal = cache_keys_refusal(&keys, c->key, strlen(c->key), c->pattern, why, sizeof(why));
	ck_assert_msg((refusal == NULL) == c->allowed, "%s (%s): %s", c->key, c->pattern ? "pattern" : "key",
		      refusal ? refusal : "allowed");
	if (refusal && *c->key)
		ck_assert_msg(strstr(refusal, "outside the cache's key families (news:* signals:*") != NULL, "%s",
			      refusal);
}
END_TEST

START_TEST(test_long_key)
{
	cache_keys_t keys = {0};
	char key[CACHE_KEYS_MAX_BYTES + 2], why[256];

	ck_assert(cache_keys_add(&keys, "news:"));
	memset(key, 'x', sizeof(key) - 1);
	memcpy(key, "news:", 5);
	key[CACHE_KEYS_MAX_BYTES] = '\0';
	ck_assert_ptr_null(cache_keys_refusal(&keys, key, strlen(key), false, why, sizeof(why)));
	key[CACHE_KEYS_MAX_BYTES] = 'x';
	key[CACHE_KEYS_MAX_BYTES + 1] = '\0';
	ck_assert_ptr_nonnull(cache_keys_refusal(&keys, key, strlen(key), false, why, sizeof(why)));
	ck_assert_ptr_nonnull(cache_keys_refusal(&keys, NULL, 0, false, why, sizeof(why)));
	ck_assert_str_eq(why, "the key must be 1 to 1024 bytes");
}
END_TEST

START_TEST(test_full)
{
	cache_keys_t keys = {0};

	for (int i = 0; i < CACHE_KEYS_MAX; i++)
		ck_assert(cache_keys_add(&keys, "news:"));
	ck_assert(!cache_keys_add(&keys, "news:"));
}
END_TEST

static const struct ns_case {
	const char *ns;
	bool usable;
} ns_cases[] = {
	{"app*", false},
	{"app:?", false},
	{"a[b]", false},
	{"a\\b", false},
	{"a b", false},
	{"\x7f", false},
	{"caché:", false},
	{"catalyst-cache:", false},
	{"catalyst-cache:x", false},
	{"catalyst", false}, /* would cover catalyst-cache:* */
	{"c", false},
	{"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", false}, /* 65 bytes */
	{NULL, true},
	{"", true},
	{"app:", true},
	{"myapp/", true},
	{"catalyst-cachex:", true},
	{"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", true}, /* 64 bytes */
};

START_TEST(test_namespace)
{
	const struct ns_case *c = &ns_cases[_i];
	const char *why = cache_keys_namespace_refusal(c->ns);

	ck_assert_msg((why == NULL) == c->usable, "%s: %s", c->ns ? c->ns : "(null)", why ? why : "usable");
}
END_TEST

static Suite *keys_suite(void)
{
	Suite *s = suite_create("cache_keys");
	TCase *tc = tcase_create("families");

	tcase_add_loop_test(tc, test_key, 0, (int)(sizeof(key_cases) / sizeof(key_cases[0])));
	tcase_add_test(tc, test_long_key);
	tcase_add_test(tc, test_full);
	tcase_add_loop_test(tc, test_namespace, 0, (int)(sizeof(ns_cases) / sizeof(ns_cases[0])));
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(keys_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
