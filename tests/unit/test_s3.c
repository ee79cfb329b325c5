/* Check suite for common/cat_s3: the SigV4 signature against AWS's published
 * examples, percent-encoding, and option checks (no service needed; the
 * requests themselves are tested against moto in tests/integration). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cat_s3.h"

#define AK "AKIAIOSFODNN7EXAMPLE"
#define SK "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* AWS S3 documentation, "Signature Calculations for the Authorization
 * Header: Transferring Payload in a Single Chunk", its four examples. */
START_TEST(test_sign_get_object)
{
	cat_s3_header_t h[] = {{"host", "examplebucket.s3.amazonaws.com"},
			       {"range", "bytes=0-9"},
			       {"x-amz-content-sha256", EMPTY},
			       {"x-amz-date", "20130524T000000Z"}};
	char *auth = cat_s3_sign(AK, SK, "us-east-1", "20130524T000000Z", "GET", "/test.txt", NULL, 0, h, 4, EMPTY);

	ck_assert_ptr_nonnull(auth);
	ck_assert_str_eq(auth, "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
			       "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
			       "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
	free(auth);
}
END_TEST

START_TEST(test_sign_put_object)
{
	char body_hash[65];
	const char *body = "Welcome to Amazon S3.";
	char *auth;

	cat_s3_sha256_hex(body, strlen(body), body_hash);
	ck_assert_str_eq(body_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
	cat_s3_header_t h[] = {{"date", "Fri, 24 May 2013 00:00:00 GMT"},
			       {"host", "examplebucket.s3.amazonaws.com"},
			       {"x-amz-content-sha256", body_hash},
			       {"x-amz-date", "20130524T000000Z"},
			       {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
	/* the key is "test$file.text": '$' is encoded */
	char *uri = cat_s3_uri_encode("/test$file.text", true);

	ck_assert_str_eq(uri, "/test%24file.text");
	auth = cat_s3_sign(AK, SK, "us-east-1", "20130524T000000Z", "PUT", uri, NULL, 0, h, 5, body_hash);
	ck_assert_ptr_nonnull(strstr(auth, "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"));
	free(uri);
	free(auth);
}
END_TEST

START_TEST(test_sign_get_lifecycle)
{
	cat_s3_param_t q[] = {{"lifecycle", NULL}};
	cat_s3_header_t h[] = {{"host", "examplebucket.s3.amazonaws.com"},
			       {"x-amz-content-sha256", EMPTY},
			       {"x-amz-date", "20130524T000000Z"}};
	char *auth = cat_s3_sign(AK, SK, "us-east-1", "20130524T000000Z", "GET", "/", q, 1, h, 3, EMPTY);

	ck_assert_ptr_nonnull(strstr(auth, "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"));
	free(auth);
}
END_TEST

START_TEST(test_sign_list_objects_sorts_query)
{
	/* given out of order: the canonical query string is sorted */
	cat_s3_param_t q[] = {{"prefix", "J"}, {"max-keys", "2"}};
	cat_s3_header_t h[] = {{"host", "examplebucket.s3.amazonaws.com"},
			       {"x-amz-content-sha256", EMPTY},
			       {"x-amz-date", "20130524T000000Z"}};
	char *auth = cat_s3_sign(AK, SK, "us-east-1", "20130524T000000Z", "GET", "/", q, 2, h, 3, EMPTY);

	ck_assert_ptr_nonnull(strstr(auth, "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"));
	free(auth);
}
END_TEST

START_TEST(test_sign_changes_with_every_input)
{
	cat_s3_header_t h[] = {{"host", "b.example"}, {"x-amz-content-sha256", EMPTY}, {"x-amz-date", "20240101T000000Z"}};
	char *a = cat_s3_sign(AK, SK, "us-east-1", "20240101T000000Z", "GET", "/k", NULL, 0, h, 3, EMPTY);
	char *b = cat_s3_sign(AK, "other", "us-east-1", "20240101T000000Z", "GET", "/k", NULL, 0, h, 3, EMPTY);
	char *c = cat_s3_sign(AK, SK, "eu-west-1", "20240101T000000Z", "GET", "/k", NULL, 0, h, 3, EMPTY);
	char *d = cat_s3_sign(AK, SK, "us-east-1", "20240101T000000Z", "GET", "/k2", NULL, 0, h, 3, EMPTY);

	ck_assert_str_ne(a, b);
	ck_assert_str_ne(a, c);
	ck_assert_str_ne(a, d);
	/* the secret never appears in what is sent */
	ck_assert_ptr_null(strstr(a, SK));
	free(a);
	free(b);
	free(c);
	free(d);
}
END_TEST

START_TEST(test_uri_encode)
{
	static const struct {
		const char *in;
		bool keep_slash;
		const char *out;
	} cases[] = {
		{"abcXYZ019-._~", false, "abcXYZ019-._~"},
		{"a b", false, "a%20b"},
		{"a/b", false, "a%2Fb"},
		{"a/b", true, "a/b"},
		{"a+b=c&d", false, "a%2Bb%3Dc%26d"},
		{"\xc3\xa9", false, "%C3%A9"},
		{"", false, ""},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *out = cat_s3_uri_encode(cases[i].in, cases[i].keep_slash);

		ck_assert_str_eq(out, cases[i].out);
		free(out);
	}
}
END_TEST

START_TEST(test_new_checks_options)
{
	static const struct {
		const char *endpoint, *bucket;
		size_t part_size;
		const char *error;
	} cases[] = {
		{"ftp://x", "b", 8u << 20, "endpoint must start with http:// or https://"},
		{"http://host/path", "b", 8u << 20, "without a path"},
		{"http://", "b", 8u << 20, "without a path"},
		{"https://host:9000", "Upper", 8u << 20, "bucket name"},
		{"https://host:9000", "b", 1u << 20, "at least 5 MiB"},
		{"https://host:9000", "", 8u << 20, "required"},
	};
	char errstr[256];
	cat_s3_t *s3;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cat_s3_options_t o = {.endpoint = cases[i].endpoint, .region = "us-east-1", .bucket = cases[i].bucket,
				      .access_key = "k", .secret_key = "s", .part_size = cases[i].part_size};

		ck_assert_int_eq(cat_s3_new(&s3, &o, errstr, sizeof(errstr)), CAT_ERR_FATAL);
		ck_assert_ptr_null(s3);
		ck_assert_msg(strstr(errstr, cases[i].error), "case %zu: %s", i, errstr);
	}
	{
		cat_s3_options_t o = {.endpoint = "https://sgp1.digitaloceanspaces.com/", .region = "sgp1",
				      .bucket = "catalyst-trading-backups", .access_key = "k", .secret_key = "s",
				      .part_size = CAT_S3_MIN_PART_SIZE, .tls_verify = true};

		ck_assert_int_eq(cat_s3_new(&s3, &o, errstr, sizeof(errstr)), CAT_OK);
		cat_s3_destroy(s3);
	}
	cat_s3_destroy(NULL);
}
END_TEST

START_TEST(test_unreachable_is_retriable_and_bounded)
{
	/* nothing listens on port 1: retried max_retries times, then retriable */
	cat_s3_options_t o = {.endpoint = "http://127.0.0.1:1", .region = "us-east-1", .bucket = "b",
			      .access_key = "k", .secret_key = "s", .part_size = CAT_S3_MIN_PART_SIZE,
			      .max_retries = 2, .backoff_ms = 1, .timeout_s = 5, .path_style = true};
	char errstr[512];
	cat_s3_t *s3;

	ck_assert_int_eq(cat_s3_new(&s3, &o, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_s3_put(s3, "k", "x", 1, "text/plain", errstr, sizeof(errstr)), CAT_ERR_RETRIABLE);
	ck_assert_msg(strstr(errstr, "could not PUT b/k"), "%s", errstr);
	ck_assert_ptr_null(strstr(errstr, "s@"));
	cat_s3_destroy(s3);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("s3");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_sign_get_object);
	tcase_add_test(tc, test_sign_put_object);
	tcase_add_test(tc, test_sign_get_lifecycle);
	tcase_add_test(tc, test_sign_list_objects_sorts_query);
	tcase_add_test(tc, test_sign_changes_with_every_input);
	tcase_add_test(tc, test_uri_encode);
	tcase_add_test(tc, test_new_checks_options);
	tcase_add_test(tc, test_unreachable_is_retriable_and_bounded);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
