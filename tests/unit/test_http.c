/* Check suite for common/cat_http: a server on an ephemeral loopback port,
 * libcurl as the client. */
#include <arpa/inet.h>
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

	ck_assert_int_eq(cat_http_serve(&other, NULL, "127.0.0.1", cat_http_port(http), reg, not_ready,
					"busy", errstr, sizeof(errstr)),
			 CAT_ERR_FATAL); /* port in use */
	ck_assert_ptr_null(other);
	ck_assert_int_eq(cat_http_serve(&other, NULL, "127.0.0.1", 0, reg, not_ready, "replica down", errstr,
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

/* --- limits: slow and many clients ------------------------------------------------ */

static const cat_config_def_t http_defs[] = {CAT_CONFIG_HTTP};

START_TEST(test_limits_from_config)
{
	char *defaults_env[] = {NULL};
	char *set_env[] = {"CATALYST_HTTP_MAX_CONNECTIONS=100", "CATALYST_HTTP_MAX_CONNECTIONS_PER_IP=0",
			   "CATALYST_HTTP_TIMEOUT_S=3", "CATALYST_HTTP_THREADS=1", NULL};
	char *bad_env[] = {"CATALYST_HTTP_THREADS=0", NULL};
	cat_http_limits_t limits, defaults = cat_http_limits_default();
	cat_config_t *cfg;
	char errstr[256];

	ck_assert_int_eq(cat_config_load(&cfg, http_defs, 4, defaults_env, errstr, sizeof(errstr)), CAT_OK);
	limits = cat_http_limits_from_config(cfg);
	ck_assert_int_eq(limits.max_connections, defaults.max_connections);
	ck_assert_int_eq(limits.max_connections_per_ip, defaults.max_connections_per_ip);
	ck_assert_int_eq(limits.timeout_s, defaults.timeout_s);
	ck_assert_int_eq(limits.threads, defaults.threads);
	ck_assert_int_eq(defaults.max_connections, 512);
	ck_assert_int_eq(defaults.max_connections_per_ip, 16);
	cat_config_destroy(cfg);

	ck_assert_int_eq(cat_config_load(&cfg, http_defs, 4, set_env, errstr, sizeof(errstr)), CAT_OK);
	limits = cat_http_limits_from_config(cfg);
	ck_assert_int_eq(limits.max_connections, 100);
	ck_assert_int_eq(limits.max_connections_per_ip, 0);
	ck_assert_int_eq(limits.timeout_s, 3);
	ck_assert_int_eq(limits.threads, 1);
	cat_config_destroy(cfg);

	ck_assert_int_eq(cat_config_load(&cfg, http_defs, 4, bad_env, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_msg(strstr(errstr, "CATALYST_HTTP_THREADS"), "%s", errstr);
}
END_TEST

/* A raw connection from `source` that sends the start of a request. */
static int slow_open(const char *source, int port)
{
	struct sockaddr_in from = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
	static const char start[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(fd, 0);
	inet_pton(AF_INET, source, &from.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
	to.sin_port = htons((uint16_t)port);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&from, sizeof(from)), 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
	ck_assert_int_eq(send(fd, start, sizeof(start) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(start) - 1));
	return fd;
}

/* Whether the server closed fd within wait_ms (EOF or reset). */
static bool slow_closed(int fd, int wait_ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	char buf[256];

	if (poll(&pfd, 1, wait_ms) <= 0)
		return false;
	return recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0;
}

static cat_http_t *limited_start(unsigned int per_ip, unsigned int timeout_s, unsigned int threads)
{
	cat_http_limits_t limits = {64, per_ip, timeout_s, threads};
	cat_http_t *server;
	char errstr[256];

	ck_assert_int_eq(cat_http_new(&server, "127.0.0.1", 0, errstr, sizeof(errstr)), CAT_OK);
	cat_http_set_limits(server, &limits);
	ck_assert_int_eq(cat_http_start(server, errstr, sizeof(errstr)), CAT_OK);
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", cat_http_port(server));
	return server;
}

/* past the per-IP limit a connection is closed at once; another address
 * is still served */
START_TEST(test_per_ip_limit)
{
	cat_http_t *server = limited_start(2, 60, 2);
	int port = cat_http_port(server);
	int held[2], extra;
	reply_t reply;

	held[0] = slow_open("127.0.0.2", port);
	held[1] = slow_open("127.0.0.2", port);
	extra = slow_open("127.0.0.2", port);
	ck_assert(slow_closed(extra, 5000));
	ck_assert(!slow_closed(held[0], 0));
	ck_assert(!slow_closed(held[1], 0));
	request("GET", "/healthz", NULL, 0, false, NULL, &reply);
	ck_assert_int_eq(reply.status, 200);
	/* once one is gone (when the server has seen it go), the address gets a
	 * connection again */
	close(held[0]);
	for (int i = 0; i < 100; i++) { /* 10 s at least: a hang guard */
		char buf[512];
		ssize_t n;
		int fd = slow_open("127.0.0.2", port);

		if (slow_closed(fd, 100)) { /* refused at once: not seen yet */
			close(fd);
			poll(NULL, 0, 100);
			continue;
		}
		ck_assert_int_eq(send(fd, "\r\n", 2, MSG_NOSIGNAL), 2);
		n = recv(fd, buf, sizeof(buf) - 1, 0);
		ck_assert_int_gt(n, 0);
		buf[n] = '\0';
		ck_assert_ptr_nonnull(strstr(buf, "200 OK"));
		close(fd);
		held[0] = -1;
		break;
	}
	ck_assert_int_eq(held[0], -1);
	close(held[1]);
	close(extra);
	cat_http_destroy(server);
}
END_TEST

/* headers trickling in a byte at a time are closed when overdue, although
 * the connection is never idle for the timeout */
START_TEST(test_header_deadline)
{
	cat_http_t *server = limited_start(0, 1, 1);
	int fd = slow_open("127.0.0.1", cat_http_port(server));
	bool closed = false;
	int sent = 0;

	for (int i = 0; i < 100 && !closed; i++) { /* 10 s: a hang guard */
		if (send(fd, "X", 1, MSG_NOSIGNAL) == 1)
			sent++;
		closed = slow_closed(fd, 100);
	}
	ck_assert_msg(closed, "a connection trickling its headers stayed open");
	ck_assert_int_ge(sent, 2);
	close(fd);
	cat_http_destroy(server);
}
END_TEST

/* on a kept-alive connection, each request's headers have their own deadline */
START_TEST(test_header_deadline_keep_alive)
{
	static const char done[] = "\r\n";
	cat_http_t *server = limited_start(0, 1, 1);
	int fd = slow_open("127.0.0.1", cat_http_port(server));
	char buf[1024];
	bool closed = false;
	ssize_t n;

	ck_assert_int_eq(send(fd, done, 2, MSG_NOSIGNAL), 2);
	n = recv(fd, buf, sizeof(buf) - 1, 0); /* the answer; the connection stays open */
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
	ck_assert_ptr_nonnull(strstr(buf, "200 OK"));
	ck_assert_int_eq(send(fd, "GET /healthz HTTP/1.1\r\n", 23, MSG_NOSIGNAL), 23);
	for (int i = 0; i < 100 && !closed; i++) {
		(void)send(fd, "X", 1, MSG_NOSIGNAL);
		closed = slow_closed(fd, 100);
	}
	ck_assert(closed);
	close(fd);
	cat_http_destroy(server);
}
END_TEST

/* a handler that takes long holds up one thread; the others serve probes */
static pthread_mutex_t slow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cond = PTHREAD_COND_INITIALIZER;
static bool slow_entered, slow_release;

static void slow_handler(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10; /* a hang guard */
	pthread_mutex_lock(&slow_lock);
	slow_entered = true;
	pthread_cond_broadcast(&slow_cond);
	while (!slow_release && pthread_cond_timedwait(&slow_cond, &slow_lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&slow_lock);
	cat_http_reply(resp, 200, "text/plain", "slow\n");
}

static void *slow_request(void *opaque)
{
	reply_t *reply = opaque;

	request("GET", "/slow", NULL, 0, false, NULL, reply);
	return NULL;
}

START_TEST(test_slow_handler)
{
	cat_http_limits_t limits = cat_http_limits_default();
	cat_http_t *server;
	reply_t slow_reply, reply;
	pthread_t thread;
	bool still_running;
	char errstr[256];

	ck_assert_int_gt(limits.threads, 1);
	ck_assert_int_eq(cat_http_new(&server, "127.0.0.1", 0, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_http_route(server, "GET", "/slow", slow_handler, NULL), CAT_OK);
	ck_assert_int_eq(cat_http_start(server, errstr, sizeof(errstr)), CAT_OK);
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", cat_http_port(server));
	slow_entered = slow_release = false;
	ck_assert_int_eq(pthread_create(&thread, NULL, slow_request, &slow_reply), 0);
	pthread_mutex_lock(&slow_lock);
	while (!slow_entered)
		pthread_cond_wait(&slow_cond, &slow_lock);
	pthread_mutex_unlock(&slow_lock);
	request("GET", "/healthz", NULL, 0, false, NULL, &reply);
	pthread_mutex_lock(&slow_lock);
	still_running = !slow_release;
	slow_release = true;
	pthread_cond_broadcast(&slow_cond);
	pthread_mutex_unlock(&slow_lock);
	pthread_join(thread, NULL);
	ck_assert_int_eq(reply.status, 200);
	ck_assert_msg(still_running, "/healthz waited for the slow handler");
	ck_assert_int_eq(slow_reply.status, 200);
	cat_http_destroy(server);
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
	tc = tcase_create("limits");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_limits_from_config);
	tcase_add_test(tc, test_per_ip_limit);
	tcase_add_test(tc, test_header_deadline);
	tcase_add_test(tc, test_header_deadline_keep_alive);
	tcase_add_test(tc, test_slow_handler);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	curl_global_cleanup();
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
