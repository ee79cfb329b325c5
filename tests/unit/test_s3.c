/* Check suite for common/cat_s3: the SigV4 signature against AWS's published
 * examples, percent-encoding, and option checks (no service needed; the
 * requests themselves are tested against moto in tests/integration); then
 * a hostile HTTP server the suite forks: a continuation token repeated, a
 * listing that cycles, a page over 16 MiB, bytes trickled past the
 * deadline, and the headers of a session token of several KiB. */
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* --- a hostile server (forked) --------------------------------------------------------------- */

enum hostile_mode { REPEAT_TOKEN, CYCLE, HUGE_PAGE, TRICKLE, ECHO_TOKEN };

static void send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n <= 0)
			_exit(0);
		p += n;
		len -= (size_t)n;
	}
}

static void respond(int fd, const char *body, size_t len)
{
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 len);

	send_all(fd, head, (size_t)n);
	send_all(fd, body, len);
}

/* A ListObjectsV2 page: one key, truncated, with the given next token. */
static void list_page(int fd, const char *key, const char *next)
{
	char body[512];
	int n = snprintf(body, sizeof(body),
			 "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>"
			 "<Contents><Key>%s</Key><Size>1</Size></Contents><IsTruncated>true</IsTruncated>"
			 "<NextContinuationToken>%s</NextContinuationToken></ListBucketResult>",
			 key, next);

	respond(fd, body, (size_t)n);
}

static void hostile_serve(int fd, enum hostile_mode mode, int request)
{
	static char req[65536];
	size_t len = 0;
	char *token, *sec;

	while (len + 1 < sizeof(req) && !(len >= 4 && memcmp(req + len - 4, "\r\n\r\n", 4) == 0)) {
		if (recv(fd, req + len, 1, 0) != 1)
			return;
		len++;
	}
	req[len] = '\0';
	token = strstr(req, "continuation-token=");
	token = token ? token + strlen("continuation-token=") : NULL;
	switch (mode) {
	case REPEAT_TOKEN: { /* a new key on every page, always the same token */
		char key[32];

		snprintf(key, sizeof(key), "k%06d", request);
		list_page(fd, key, "same-token");
		break;
	}
	case CYCLE: /* A -> B -> A -> ... */
		if (token && strncmp(token, "B", 1) == 0)
			list_page(fd, "a", "A");
		else if (token)
			list_page(fd, "b", "B");
		else
			list_page(fd, "a", "A");
		break;
	case HUGE_PAGE: { /* 17 MiB of objects; IsTruncated would have come last */
		size_t n = 17u * 1024 * 1024, off = 0;
		char *body = malloc(n);
		const char *item = "<Contents><Key>k</Key><Size>1</Size></Contents>";

		while (off + strlen(item) < n) {
			memcpy(body + off, item, strlen(item));
			off += strlen(item);
		}
		memset(body + off, ' ', n - off);
		respond(fd, body, n);
		free(body);
		break;
	}
	case TRICKLE: { /* headers promptly, then a byte every 100 ms */
		const char *head = "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 100000\r\n\r\n";

		send_all(fd, head, strlen(head));
		for (;;) {
			send_all(fd, "<", 1);
			usleep(100000);
		}
	}
	case ECHO_TOKEN: { /* the body: the length of the x-amz-security-token header's value */
		char body[32];
		size_t n = 0;

		sec = strstr(req, "\r\nx-amz-security-token: ");
		if (sec) {
			sec += strlen("\r\nx-amz-security-token: ");
			n = strcspn(sec, "\r\n");
		}
		snprintf(body, sizeof(body), "%zu", n);
		respond(fd, body, strlen(body));
		break;
	}
	}
}

static int hostile_start(enum hostile_mode mode, pid_t *pid)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	ck_assert_int_ge(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 16), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*pid = fork();
	ck_assert_int_ge(*pid, 0);
	if (*pid == 0) {
		for (int request = 0;; request++) {
			int c = accept(fd, NULL, NULL);

			if (c < 0)
				_exit(0);
			if (fork() == 0) {
				close(fd);
				hostile_serve(c, mode, request);
				_exit(0);
			}
			close(c);
		}
	}
	close(fd);
	return ntohs(sa.sin_port);
}

static void hostile_stop(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

static cat_s3_t *hostile_client(int port, const char *session_token, int request_timeout_ms)
{
	char endpoint[64], errstr[256];
	cat_s3_options_t o = {.endpoint = endpoint, .region = "us-east-1", .bucket = "b", .access_key = "k",
			      .secret_key = "s", .session_token = session_token, .path_style = true,
			      .part_size = CAT_S3_MIN_PART_SIZE, .max_retries = 0, .backoff_ms = 1,
			      .timeout_s = 600, .request_timeout_ms = request_timeout_ms};
	cat_s3_t *s3 = NULL;

	snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", port);
	ck_assert_int_eq(cat_s3_new(&s3, &o, errstr, sizeof(errstr)), CAT_OK);
	return s3;
}

static int count_object(const char *key, uint64_t size, void *opaque)
{
	(*(int *)opaque)++;
	return 0;
}

START_TEST(test_listing_that_would_not_end)
{
	static const struct {
		enum hostile_mode mode;
		const char *error;
	} cases[] = {
		{REPEAT_TOKEN, "the store repeated its continuation token"},
		{CYCLE, "a page starts at or before a key listed already"},
		{HUGE_PAGE, "a page larger than 16 MiB"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pid_t pid;
		int port = hostile_start(cases[i].mode, &pid), objects = 0;
		cat_s3_t *s3 = hostile_client(port, NULL, 20000);
		char errstr[512] = "";

		ck_assert_int_eq(cat_s3_list(s3, "p/", count_object, &objects, errstr, sizeof(errstr)),
				 CAT_ERR_PERMANENT);
		ck_assert_msg(strstr(errstr, "could not list objects of b/p/: ") && strstr(errstr, cases[i].error),
			      "case %zu: %s", i, errstr);
		ck_assert_msg(!strchr(errstr, '\n'), "%s", errstr);
		cat_s3_destroy(s3);
		hostile_stop(pid);
	}
}
END_TEST

static int sink(const void *data, size_t len, void *opaque)
{
	return 0;
}

START_TEST(test_trickle_meets_the_deadline)
{
	pid_t pid;
	int port = hostile_start(TRICKLE, &pid), objects = 0;
	cat_s3_t *s3 = hostile_client(port, NULL, 1000);
	char errstr[512] = "";

	/* a byte every 100 ms keeps the low-speed limit (600 s here) quiet: only
	 * the request deadline ends these (before: a 10,000 s wait) */
	ck_assert_int_eq(cat_s3_get(s3, "obj", sink, NULL, NULL, errstr, sizeof(errstr)), CAT_ERR_RETRIABLE);
	ck_assert_msg(strstr(errstr, "could not GET b/obj: ") && strstr(errstr, "timed out"), "%s", errstr);
	ck_assert_int_eq(cat_s3_list(s3, "p/", count_object, &objects, errstr, sizeof(errstr)), CAT_ERR_RETRIABLE);
	ck_assert_msg(strstr(errstr, "timed out"), "%s", errstr);
	cat_s3_destroy(s3);
	hostile_stop(pid);
}
END_TEST

typedef struct membuf {
	char data[64];
	size_t len;
} membuf_t;

static int to_mem(const void *data, size_t len, void *opaque)
{
	membuf_t *m = opaque;

	if (m->len + len >= sizeof(m->data))
		return 1;
	memcpy(m->data + m->len, data, len);
	m->len += len;
	m->data[m->len] = '\0';
	return 0;
}

START_TEST(test_long_session_token_sent_whole)
{
	/* STS and IRSA tokens run to several KiB */
	static char token[6001];
	pid_t pid;
	int port = hostile_start(ECHO_TOKEN, &pid);
	cat_s3_t *s3;
	membuf_t got = {.len = 0};
	char errstr[512] = "";

	for (size_t i = 0; i < sizeof(token) - 1; i++)
		token[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="[i % 65];
	s3 = hostile_client(port, token, 20000);
	ck_assert_msg(cat_s3_get(s3, "obj", to_mem, &got, NULL, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
	ck_assert_str_eq(got.data, "6000");
	cat_s3_destroy(s3);
	hostile_stop(pid);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("s3");
	TCase *tc = tcase_create("core");
	TCase *hostile = tcase_create("hostile");
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
	tcase_set_timeout(hostile, 60);
	tcase_add_test(hostile, test_listing_that_would_not_end);
	tcase_add_test(hostile, test_trickle_meets_the_deadline);
	tcase_add_test(hostile, test_long_session_token_sent_whole);
	suite_add_tcase(s, hostile);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
