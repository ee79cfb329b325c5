/* Check suite for common/cat_http: a server on an ephemeral loopback port,
 * libcurl as the client. */
#include <check.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_http.h"
#include "cat_log.h"
#include "cat_metrics.h"

typedef struct reply {
	long status;
	char body[4096];
	size_t body_len;
	char content_type[128];
	char allow[64];
} reply_t;

typedef struct upload {
	const char *data;
	size_t len;
	size_t sent;
} upload_t;

static cat_http_t *http;
static cat_metrics_t *reg;
static char base[64];

static size_t on_body(char *data, size_t size, size_t n, void *opaque)
{
	reply_t *reply = opaque;
	size_t len = size * n;
	size_t room = sizeof(reply->body) - 1 - reply->body_len;

	memcpy(reply->body + reply->body_len, data, len < room ? len : room);
	reply->body_len += len < room ? len : room;
	reply->body[reply->body_len] = '\0';
	return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *opaque)
{
	reply_t *reply = opaque;
	size_t len = size * n;

	if (len > 7 && strncasecmp(data, "Allow: ", 7) == 0)
		snprintf(reply->allow, sizeof(reply->allow), "%.*s", (int)(len - 9), data + 7);
	return len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *opaque)
{
	upload_t *upload = opaque;
	size_t len = size * n;

	if (len > upload->len - upload->sent)
		len = upload->len - upload->sent;
	memcpy(buf, upload->data + upload->sent, len);
	upload->sent += len;
	return len;
}

/* One request; `chunked` sends the body without Content-Length. */
static void request(const char *method, const char *path, const char *body, size_t body_len, bool chunked,
		    const char *header, reply_t *reply)
{
	CURL *curl = curl_easy_init();
	struct curl_slist *headers = NULL;
	upload_t upload = {body, body_len, 0};
	char url[256];
	char *content_type = NULL;
	CURLcode rc;

	memset(reply, 0, sizeof(*reply));
	ck_assert_ptr_nonnull(curl);
	snprintf(url, sizeof(url), "%s%s", base, path);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, reply);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, reply);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
	if (header)
		headers = curl_slist_append(headers, header);
	if (body && chunked) {
		headers = curl_slist_append(headers, "Transfer-Encoding: chunked");
		curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(curl, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(curl, CURLOPT_READDATA, &upload);
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	} else if (body) {
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body_len);
	}
	headers = curl_slist_append(headers, "Expect:");
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	rc = curl_easy_perform(curl);
	/* a server refusing a body early may close before curl sent it all */
	ck_assert_msg(rc == CURLE_OK || rc == CURLE_SEND_ERROR, "%s %s: %s", method, path,
		      curl_easy_strerror(rc));
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply->status);
	curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &content_type);
	if (content_type)
		snprintf(reply->content_type, sizeof(reply->content_type), "%s", content_type);
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
}

/* POST /echo: the body back, with the X-Test header in front. */
static void echo(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	const char *test = cat_http_header(req, "x-test");
	size_t len = req->body_len + 64;
	char *body = malloc(len);

	snprintf(body, len, "%s %s %s:%s", req->method, req->path, test ? test : "-", req->body);
	cat_http_reply(resp, 201, "text/plain", body);
	free(body);
}

static void silent(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
}

static void json_error(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	cat_http_reply_error(resp, 409, "busy: %s", "try later");
	cat_http_reply_header(resp, "Retry-After", "5");
}

static bool not_ready(void *opaque, char *reason, size_t reason_size)
{
	snprintf(reason, reason_size, "%s", (const char *)opaque);
	return false;
}

static void setup(void)
{
	char errstr[256];
	cat_metric_t *requests;

	cat_log_init("test_http", CAT_LOG_LEVEL_WARN);
	reg = cat_metrics_new();
	requests = cat_metrics_counter(reg, "catalyst_test_requests_total", "Requests.", NULL);
	cat_metrics_add(requests, 3);
	ck_assert_int_eq(cat_http_new(&http, "127.0.0.1", 0, errstr, sizeof(errstr)), CAT_OK);
	cat_http_set_metrics(http, reg);
	cat_http_set_max_body(http, 1024);
	ck_assert_int_eq(cat_http_route(http, "POST", "/echo", echo, NULL), CAT_OK);
	ck_assert_int_eq(cat_http_route(http, "PUT", "/echo", echo, NULL), CAT_OK);
	ck_assert_int_eq(cat_http_route(http, "GET", "/silent", silent, NULL), CAT_OK);
	ck_assert_int_eq(cat_http_route(http, "GET", "/busy", json_error, NULL), CAT_OK);
	ck_assert_int_eq(cat_http_start(http, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_gt(cat_http_port(http), 0);
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", cat_http_port(http));
}

static void teardown(void)
{
	cat_http_destroy(http);
	http = NULL;
	cat_metrics_destroy(reg);
	reg = NULL;
}

START_TEST(test_healthz)
{
	reply_t reply;

	request("GET", "/healthz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 200);
	ck_assert_str_eq(reply.body, "ok\n");
	request("HEAD", "/healthz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 200);
	ck_assert_str_eq(reply.body, "");
}
END_TEST

START_TEST(test_readyz_flag)
{
	reply_t reply;

	request("GET", "/readyz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 503);
	ck_assert_str_eq(reply.body, "not ready: starting\n");
	cat_http_set_ready(http, true, NULL);
	request("GET", "/readyz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 200);
	cat_http_set_ready(http, false, "kafka unreachable");
	request("GET", "/readyz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 503);
	ck_assert_str_eq(reply.body, "not ready: kafka unreachable\n");
}
END_TEST

START_TEST(test_readyz_callback)
{
	reply_t reply;

	cat_http_set_ready(http, true, NULL);
	cat_http_set_ready_fn(http, not_ready, "2 migrations pending");
	request("GET", "/readyz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 503);
	ck_assert_str_eq(reply.body, "not ready: 2 migrations pending\n");
}
END_TEST

START_TEST(test_metrics)
{
	reply_t reply;

	request("GET", "/metrics", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 200);
	ck_assert_str_eq(reply.content_type, "text/plain; version=0.0.4; charset=utf-8");
	ck_assert_msg(strstr(reply.body, "\ncatalyst_test_requests_total 3\n"), "%s", reply.body);
	/* catalyst_ready follows what /readyz answers, at each scrape */
	ck_assert_msg(strstr(reply.body, "# TYPE catalyst_ready gauge\ncatalyst_ready 0\n"), "%s", reply.body);
	cat_http_set_ready(http, true, NULL);
	request("GET", "/metrics", NULL, 0, false, NULL, &reply);
	ck_assert_msg(strstr(reply.body, "\ncatalyst_ready 1\n"), "%s", reply.body);
	cat_http_set_ready_fn(http, not_ready, "replica down");
	request("GET", "/metrics", NULL, 0, false, NULL, &reply);
	ck_assert_msg(strstr(reply.body, "\ncatalyst_ready 0\n"), "%s", reply.body);
}
END_TEST

START_TEST(test_not_found_and_method)
{
	reply_t reply;

	request("GET", "/nope", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 404);
	ck_assert_str_eq(reply.content_type, "application/json");
	ck_assert_str_eq(reply.body, "{\"error\":\"no such path\"}\n");
	request("POST", "/healthz", "x", 1, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 405);
	ck_assert_str_eq(reply.allow, "GET");
	request("DELETE", "/echo", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 405);
	ck_assert_str_eq(reply.allow, "POST, PUT");
}
END_TEST

START_TEST(test_handler_gets_method_path_headers_body)
{
	reply_t reply;

	request("POST", "/echo?ignored=1", "hello", 5, false, "X-Test: yes", &reply);
	ck_assert_int_eq(reply.status, 201);
	ck_assert_str_eq(reply.content_type, "text/plain");
	ck_assert_str_eq(reply.body, "POST /echo yes:hello");
	request("PUT", "/echo", "chunked body", 12, true, NULL, &reply);
	ck_assert_int_eq(reply.status, 201);
	ck_assert_str_eq(reply.body, "PUT /echo -:chunked body");
	request("POST", "/echo", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 201);
	ck_assert_str_eq(reply.body, "POST /echo -:");
}
END_TEST

START_TEST(test_body_limit)
{
	static char big[4096];
	reply_t reply;

	memset(big, 'a', sizeof(big));
	request("POST", "/echo", big, 1024, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 201);
	request("POST", "/echo", big, 1025, false, NULL, &reply); /* refused from Content-Length */
	ck_assert_int_eq(reply.status, 413);
	request("POST", "/echo", big, sizeof(big), true, NULL, &reply); /* refused while reading */
	ck_assert_int_eq(reply.status, 413);
	ck_assert_str_eq(reply.body, "{\"error\":\"body larger than 1024 bytes\"}\n");
}
END_TEST

START_TEST(test_handler_errors)
{
	reply_t reply;

	request("GET", "/silent", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 500);
	request("GET", "/busy", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 409);
	ck_assert_str_eq(reply.body, "{\"error\":\"busy: try later\"}\n");
}
END_TEST

/* serve: new + metrics + readiness + start in one; a failure leaves nothing */
START_TEST(test_serve)
{
	cat_http_t *other = (cat_http_t *)&other;
	reply_t reply;
	char errstr[256], saved[256];

	ck_assert_int_eq(cat_http_serve(&other, "127.0.0.1", cat_http_port(http), reg, not_ready, "busy",
					errstr, sizeof(errstr)),
			 CAT_ERR_FATAL); /* port in use */
	ck_assert_ptr_null(other);
	ck_assert_int_eq(cat_http_serve(&other, "127.0.0.1", 0, reg, not_ready, "replica down", errstr,
					sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_gt(cat_http_port(other), 0);
	/* the request helper talks to `base`: point it at the new server */
	snprintf(saved, sizeof(saved), "%s", base);
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", cat_http_port(other));
	request("GET", "/readyz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 503);
	ck_assert_str_eq(reply.body, "not ready: replica down\n");
	request("GET", "/metrics", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 200);
	ck_assert_ptr_nonnull(strstr(reply.body, "catalyst_test_requests_total 3"));
	ck_assert_ptr_nonnull(strstr(reply.body, "\ncatalyst_ready 0\n"));
	snprintf(base, sizeof(base), "%s", saved);
	cat_http_destroy(other);
}
END_TEST

START_TEST(test_bad_bind)
{
	cat_http_t *other;
	char errstr[256];

	ck_assert_int_eq(cat_http_new(&other, "127.0.0.1", 70000, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_int_eq(cat_http_new(&other, "127.0.0.1", cat_http_port(http), errstr, sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(cat_http_start(other, errstr, sizeof(errstr)), CAT_ERR_FATAL); /* port in use */
	ck_assert_msg(strstr(errstr, "could not listen on 127.0.0.1"), "%s", errstr);
	cat_http_destroy(other);
	ck_assert_int_eq(cat_http_new(&other, "not an address!", 0, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_http_start(other, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	cat_http_destroy(other);
	cat_http_destroy(NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("http");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_healthz);
	tcase_add_test(tc, test_readyz_flag);
	tcase_add_test(tc, test_readyz_callback);
	tcase_add_test(tc, test_metrics);
	tcase_add_test(tc, test_not_found_and_method);
	tcase_add_test(tc, test_handler_gets_method_path_headers_body);
	tcase_add_test(tc, test_body_limit);
	tcase_add_test(tc, test_handler_errors);
	tcase_add_test(tc, test_bad_bind);
	tcase_add_test(tc, test_serve);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	curl_global_cleanup();
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
