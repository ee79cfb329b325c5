#include "cat_http.h"

#include <ctype.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "cat_log.h"
#include "cat_time.h"

#define MAX_ROUTES	 16
#define DEFAULT_MAX_BODY (1024 * 1024)
#define SWEEP_STEP_MS	 250		    /* how often overdue headers are looked for */
#define LOG_WINDOW_US	 (10 * 1000000LL) /* libmicrohttpd's warnings: at most ... */
#define LOG_PER_WINDOW	 5		    /* ... this many per window, then a count */

typedef struct route {
	char *method;
	char *path;
	cat_http_handler_t fn;
	void *opaque;
} route_t;

struct cat_http {
	char *bind;
	int port;
	struct MHD_Daemon *daemon;
	route_t routes[MAX_ROUTES];
	size_t n_routes;
	size_t max_body;
	cat_metrics_t *metrics;
	cat_metric_t *m_ready; /* catalyst_ready in metrics */
	cat_http_ready_fn ready_fn;
	void *ready_opaque;
	pthread_mutex_t ready_lock; /* guards the flag and its reason */
	bool ready;
	char ready_reason[256];
	cat_http_limits_t limits;

	/* connections waiting for their request headers, closed when overdue */
	pthread_mutex_t conn_lock; /* guards the list, the deadlines, sweep_stop */
	pthread_cond_t sweep_cond;
	pthread_t sweeper;
	bool sweeper_started;
	bool sweep_stop;
	struct conn_track *conns;
	unsigned long overdue; /* closed since the last log line */
	int64_t overdue_logged_us;

	pthread_mutex_t log_lock; /* guards the warning rate limit */
	int64_t log_window_us;
	unsigned int log_lines;
	unsigned long log_suppressed;
};

/* One open connection (its socket context), from accept to close. */
typedef struct conn_track {
	struct conn_track *prev, *next;
	int fd;
	int64_t deadline_us; /* its request headers are due by; 0: not waiting for headers */
} conn_track_t;

/* Per-request state across the access handler's calls. */
typedef struct request_state {
	char *body;
	size_t body_len;
	size_t body_cap;
	bool too_large;
} request_state_t;

/* --- response helpers -------------------------------------------------- */

static void reply_take(cat_http_response_t *resp, int status, const char *content_type, char *body,
		       size_t body_len)
{
	free(resp->body);
	resp->status = status;
	resp->content_type = content_type;
	resp->body = body;
	resp->body_len = body ? body_len : 0;
}

void cat_http_reply(cat_http_response_t *resp, int status, const char *content_type, const char *body)
{
	char *copy = strdup(body ? body : "");

	reply_take(resp, copy ? status : 500, content_type, copy, copy ? strlen(copy) : 0);
}

void cat_http_reply_json(cat_http_response_t *resp, int status, const void *json)
{
	char *text = json_dumps((const json_t *)json, JSON_COMPACT | JSON_PRESERVE_ORDER);
	char *body;
	size_t len;

	if (!text) {
		cat_http_reply(resp, 500, "application/json", "{\"error\":\"could not encode response\"}\n");
		return;
	}
	/* one trailing newline, as curl users expect */
	len = strlen(text);
	if (!(body = realloc(text, len + 2))) {
		free(text);
		cat_http_reply(resp, 500, "application/json", "{\"error\":\"out of memory\"}\n");
		return;
	}
	body[len] = '\n';
	body[len + 1] = '\0';
	reply_take(resp, status, "application/json", body, len + 1);
}

void cat_http_reply_error(cat_http_response_t *resp, int status, const char *fmt, ...)
{
	char msg[1024];
	json_t *json;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json = json_pack("{s:s}", "error", msg);
	if (!json) {
		cat_http_reply(resp, status, "application/json",
			       "{\"error\":\"(message not valid utf-8)\"}\n");
		return;
	}
	cat_http_reply_json(resp, status, json);
	json_decref(json);
}

void cat_http_reply_header(cat_http_response_t *resp, const char *name, const char *value)
{
	if (resp->n_headers == CAT_HTTP_MAX_HEADERS)
		return;
	resp->headers[resp->n_headers].name = name;
	resp->headers[resp->n_headers].value = value;
	resp->n_headers++;
}

const char *cat_http_header(const cat_http_request_t *req, const char *name)
{
	return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

/* --- built-in routes ---------------------------------------------------- */

static void healthz(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	cat_http_reply(resp, 200, "text/plain; charset=utf-8", "ok\n");
}

/* The readiness /readyz reports: the callback's, else the flag's. */
static bool ready_now(cat_http_t *http, char *reason, size_t reason_size)
{
	bool ready;

	if (http->ready_fn)
		return http->ready_fn(http->ready_opaque, reason, reason_size);
	pthread_mutex_lock(&http->ready_lock);
	ready = http->ready;
	snprintf(reason, reason_size, "%s", http->ready_reason);
	pthread_mutex_unlock(&http->ready_lock);
	return ready;
}

static void readyz(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	cat_http_t *http = opaque;
	char reason[256] = "";
	char body[300];

	if (ready_now(http, reason, sizeof(reason))) {
		cat_http_reply(resp, 200, "text/plain; charset=utf-8", "ready\n");
		return;
	}
	snprintf(body, sizeof(body), "not ready: %s\n", reason[0] ? reason : "unknown");
	cat_http_reply(resp, 503, "text/plain; charset=utf-8", body);
}

static void metrics(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	cat_http_t *http = opaque;
	char errstr[256];
	char *text;
	size_t len;

	if (!http->metrics) {
		cat_http_reply(resp, 200, "text/plain; version=0.0.4; charset=utf-8", "");
		return;
	}
	if (http->m_ready) {
		char reason[256] = "";

		cat_metrics_set(http->m_ready, ready_now(http, reason, sizeof(reason)) ? 1 : 0);
	}
	if (cat_metrics_render(http->metrics, &text, &len, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("HTTP", "%s", errstr);
		cat_http_reply(resp, 500, "text/plain; charset=utf-8", "could not render metrics\n");
		return;
	}
	reply_take(resp, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* --- server ------------------------------------------------------------ */

static int cond_init_monotonic(pthread_cond_t *cond)
{
	pthread_condattr_t attr;
	int rc;

	if ((rc = pthread_condattr_init(&attr)) != 0)
		return rc;
	if ((rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)) == 0)
		rc = pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
	return rc;
}

cat_http_limits_t cat_http_limits_default(void)
{
	return (cat_http_limits_t){CAT_HTTP_MAX_CONNECTIONS_DEFAULT, CAT_HTTP_MAX_CONNECTIONS_PER_IP_DEFAULT,
				   CAT_HTTP_TIMEOUT_S_DEFAULT, CAT_HTTP_THREADS_DEFAULT};
}

cat_http_limits_t cat_http_limits_from_config(const cat_config_t *cfg)
{
	return (cat_http_limits_t){(unsigned int)cat_config_int(cfg, "CATALYST_HTTP_MAX_CONNECTIONS"),
				   (unsigned int)cat_config_int(cfg, "CATALYST_HTTP_MAX_CONNECTIONS_PER_IP"),
				   (unsigned int)cat_config_int(cfg, "CATALYST_HTTP_TIMEOUT_S"),
				   (unsigned int)cat_config_int(cfg, "CATALYST_HTTP_THREADS")};
}

void cat_http_set_limits(cat_http_t *http, const cat_http_limits_t *limits)
{
	http->limits = *limits;
	if (http->limits.threads == 0)
		http->limits.threads = 1;
	if (http->limits.timeout_s == 0)
		http->limits.timeout_s = CAT_HTTP_TIMEOUT_S_DEFAULT;
	if (http->limits.max_connections < http->limits.threads)
		http->limits.max_connections = http->limits.threads;
}

cat_err_t cat_http_new(cat_http_t **out, const char *bind, int port, char *errstr, size_t errstr_size)
{
	cat_http_t *http;

	*out = NULL;
	if (port < 0 || port > 65535)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not listen: bad port %d", port);
	if (!(http = calloc(1, sizeof(*http))))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if (pthread_mutex_init(&http->ready_lock, NULL) != 0 ||
	    pthread_mutex_init(&http->conn_lock, NULL) != 0 ||
	    pthread_mutex_init(&http->log_lock, NULL) != 0 ||
	    cond_init_monotonic(&http->sweep_cond) != 0) {
		free(http); /* (only fails when out of resources; nothing to undo on Linux) */
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not create a mutex");
	}
	http->port = port;
	http->max_body = DEFAULT_MAX_BODY;
	http->limits = cat_http_limits_default();
	snprintf(http->ready_reason, sizeof(http->ready_reason), "starting");
	if (!(http->bind = strdup(bind ? bind : "0.0.0.0")) ||
	    cat_http_route(http, "GET", "/healthz", healthz, http) != CAT_OK ||
	    cat_http_route(http, "GET", "/readyz", readyz, http) != CAT_OK ||
	    cat_http_route(http, "GET", "/metrics", metrics, http) != CAT_OK) {
		cat_http_destroy(http);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	*out = http;
	return CAT_OK;
}

cat_err_t cat_http_route(cat_http_t *http, const char *method, const char *path, cat_http_handler_t fn,
			 void *opaque)
{
	route_t *route = NULL;

	for (size_t i = 0; i < http->n_routes; i++)
		if (strcmp(http->routes[i].method, method) == 0 && strcmp(http->routes[i].path, path) == 0)
			route = &http->routes[i];
	if (!route) {
		if (http->n_routes == MAX_ROUTES)
			return CAT_ERR_FATAL;
		route = &http->routes[http->n_routes];
		if (!(route->method = strdup(method)) || !(route->path = strdup(path))) {
			free(route->method);
			route->method = NULL;
			return CAT_ERR_FATAL;
		}
		http->n_routes++;
	}
	route->fn = fn;
	route->opaque = opaque;
	return CAT_OK;
}

void cat_http_set_metrics(cat_http_t *http, cat_metrics_t *reg)
{
	http->metrics = reg;
	http->m_ready = reg ? cat_metrics_gauge(reg, "catalyst_ready",
						"1 while /readyz answers ready, else 0 (as of this scrape)", NULL)
			    : NULL;
}

void cat_http_set_ready_fn(cat_http_t *http, cat_http_ready_fn fn, void *opaque)
{
	http->ready_fn = fn;
	http->ready_opaque = opaque;
}

void cat_http_set_max_body(cat_http_t *http, size_t max_body)
{
	http->max_body = max_body;
}

void cat_http_set_ready(cat_http_t *http, bool ready, const char *reason)
{
	pthread_mutex_lock(&http->ready_lock);
	http->ready = ready;
	snprintf(http->ready_reason, sizeof(http->ready_reason), "%s", reason ? reason : "");
	pthread_mutex_unlock(&http->ready_lock);
}

/* The route for (method, path); *path_known tells a 405 from a 404. */
static const route_t *route_find(const cat_http_t *http, const char *method, const char *path,
				 bool *path_known)
{
	*path_known = false;
	for (size_t i = 0; i < http->n_routes; i++) {
		if (strcmp(http->routes[i].path, path) != 0)
			continue;
		*path_known = true;
		if (strcmp(http->routes[i].method, method) == 0)
			return &http->routes[i];
	}
	return NULL;
}

/* "GET, POST": the methods routed for path. */
static void route_allow(const cat_http_t *http, const char *path, char *allow, size_t allow_size)
{
	size_t n = 0;

	allow[0] = '\0';
	for (size_t i = 0; i < http->n_routes && n < allow_size; i++)
		if (strcmp(http->routes[i].path, path) == 0)
			n += (size_t)snprintf(allow + n, allow_size - n, "%s%s", n ? ", " : "",
					      http->routes[i].method);
}

static enum MHD_Result send_response(struct MHD_Connection *connection, const char *method, const char *path,
				     cat_http_response_t *resp)
{
	struct MHD_Response *response;
	enum MHD_Result ret;

	if (resp->status == 0)
		cat_http_reply_error(resp, 500, "handler sent no response");
	response =
		MHD_create_response_from_buffer(resp->body_len, resp->body ? resp->body : (void *)"",
						resp->body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (!response) {
		free(resp->body);
		return MHD_NO;
	}
	resp->body = NULL; /* owned by response */
	if (resp->content_type)
		MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
	MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	for (size_t i = 0; i < resp->n_headers; i++)
		MHD_add_response_header(response, resp->headers[i].name, resp->headers[i].value);
	ret = MHD_queue_response(connection, (unsigned int)resp->status, response);
	MHD_destroy_response(response);
	CAT_LOG_DEBUG("HTTP", "%s %s %d", method, path, resp->status);
	return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *connection, const char *method, const char *path,
				  int status, const char *allow, const char *fmt, ...) CAT_PRINTF(6, 7);

static enum MHD_Result send_error(struct MHD_Connection *connection, const char *method, const char *path,
				  int status, const char *allow, const char *fmt, ...)
{
	cat_http_response_t resp = {0};
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cat_http_reply_error(&resp, status, "%s", msg);
	if (allow)
		cat_http_reply_header(&resp, MHD_HTTP_HEADER_ALLOW, allow);
	return send_response(connection, method, path, &resp);
}

static bool body_append(request_state_t *state, const char *data, size_t len, size_t max_body)
{
	if (state->body_len + len > max_body)
		return false;
	if (state->body_len + len + 1 > state->body_cap) {
		size_t cap = state->body_cap ? state->body_cap : 4096;
		char *body;

		while (cap < state->body_len + len + 1)
			cap *= 2;
		if (!(body = realloc(state->body, cap)))
			return false;
		state->body = body;
		state->body_cap = cap;
	}
	memcpy(state->body + state->body_len, data, len);
	state->body_len += len;
	state->body[state->body_len] = '\0';
	return true;
}

/* --- slow clients ----------------------------------------------------------- */

/* Sets the deadline of connection's request headers (0: none). */
static void conn_deadline(cat_http_t *http, struct MHD_Connection *connection, int64_t deadline_us)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	conn_track_t *track = info ? info->socket_context : NULL;

	if (!track)
		return;
	pthread_mutex_lock(&http->conn_lock);
	track->deadline_us = deadline_us;
	pthread_mutex_unlock(&http->conn_lock);
}

/* libmicrohttpd: a connection accepted or closed (before its socket is). */
static void notify_connection(void *cls, struct MHD_Connection *connection, void **socket_context,
			      enum MHD_ConnectionNotificationCode toe)
{
	cat_http_t *http = cls;
	conn_track_t *track = *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *info =
			MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);

		/* out of memory: the idle timeout still applies */
		if (!info || !(track = calloc(1, sizeof(*track))))
			return;
		track->fd = info->connect_fd;
		track->deadline_us = cat_time_mono_us() + (int64_t)http->limits.timeout_s * 1000000;
		pthread_mutex_lock(&http->conn_lock);
		track->next = http->conns;
		if (http->conns)
			http->conns->prev = track;
		http->conns = track;
		pthread_mutex_unlock(&http->conn_lock);
		*socket_context = track;
		return;
	}
	if (!track)
		return;
	pthread_mutex_lock(&http->conn_lock);
	if (track->prev)
		track->prev->next = track->next;
	else
		http->conns = track->next;
	if (track->next)
		track->next->prev = track->prev;
	pthread_mutex_unlock(&http->conn_lock);
	free(track);
	*socket_context = NULL;
}

/* Closes the connections whose request headers are overdue: a client that
 * trickles them a byte at a time defeats an idle timeout, not this. The
 * socket is shut down, not closed: its event loop sees the end and closes
 * it (and tells notify_connection first, under conn_lock, so the descriptor
 * is still ours here). */
static void *sweeper_main(void *opaque)
{
	cat_http_t *http = opaque;

	pthread_mutex_lock(&http->conn_lock);
	while (!http->sweep_stop) {
		struct timespec until;
		int64_t now = cat_time_mono_us();

		for (conn_track_t *track = http->conns; track; track = track->next) {
			if (track->deadline_us == 0 || track->deadline_us > now)
				continue;
			shutdown(track->fd, SHUT_RDWR);
			track->deadline_us = 0;
			http->overdue++;
		}
		if (http->overdue && now - http->overdue_logged_us >= LOG_WINDOW_US) {
			CAT_LOG_WARN("HTTP",
				     "closed %lu connection%s: request headers not complete within %u s",
				     http->overdue, http->overdue == 1 ? "" : "s", http->limits.timeout_s);
			http->overdue = 0;
			http->overdue_logged_us = now;
		}
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += SWEEP_STEP_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&http->sweep_cond, &http->conn_lock, &until);
	}
	pthread_mutex_unlock(&http->conn_lock);
	return NULL;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *connection, const char *url,
				      const char *http_method, const char *version, const char *upload_data,
				      size_t *upload_data_size, void **con_cls)
{
	cat_http_t *http = cls;
	request_state_t *state = *con_cls;
	const char *method = strcmp(http_method, "HEAD") == 0 ? "GET" : http_method;
	cat_http_response_t resp = {0};
	cat_http_request_t req;
	const route_t *route;
	bool path_known;

	route = route_find(http, method, url, &path_known);
	if (!state) {
		/* first call: headers only; refuse early what cannot succeed */
		const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
								 MHD_HTTP_HEADER_CONTENT_LENGTH);

		/* the headers are in: no deadline while the request is served */
		conn_deadline(http, connection, 0);

		if (!route && !path_known)
			return send_error(connection, method, url, 404, NULL, "no such path");
		if (!route) {
			char allow[64];

			route_allow(http, url, allow, sizeof(allow));
			return send_error(connection, method, url, 405, allow, "method %s not allowed",
					  http_method);
		}
		if (length && strtoull(length, NULL, 10) > http->max_body)
			return send_error(connection, method, url, 413, NULL, "body larger than %zu bytes",
					  http->max_body);
		if (!(state = calloc(1, sizeof(*state))))
			return MHD_NO;
		*con_cls = state;
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		if (!state->too_large && !body_append(state, upload_data, *upload_data_size, http->max_body))
			state->too_large = true;
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (state->too_large)
		return send_error(connection, method, url, 413, NULL, "body larger than %zu bytes",
				  http->max_body);

	req.method = method;
	req.path = url;
	req.body = state->body ? state->body : "";
	req.body_len = state->body_len;
	req.connection = connection;
	route->fn(&req, &resp, route->opaque);
	return send_response(connection, method, url, &resp);
}

static void request_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
			      enum MHD_RequestTerminationCode toe)
{
	cat_http_t *http = cls;
	request_state_t *state = *con_cls;

	/* a kept-alive connection: the next request's headers are due in time */
	conn_deadline(http, connection, cat_time_mono_us() + (int64_t)http->limits.timeout_s * 1000000);

	if (state) {
		free(state->body);
		free(state);
		*con_cls = NULL;
	}
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) CAT_PRINTF(2, 0);

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
	cat_http_t *http = cls;
	int64_t now = cat_time_mono_us();
	unsigned long suppressed = 0;
	char msg[512];
	size_t len;

	/* libmicrohttpd logs each refused connection: a flood gets a few lines */
	pthread_mutex_lock(&http->log_lock);
	if (now - http->log_window_us >= LOG_WINDOW_US) {
		suppressed = http->log_suppressed;
		http->log_window_us = now;
		http->log_lines = 0;
		http->log_suppressed = 0;
	}
	if (http->log_lines == LOG_PER_WINDOW) {
		http->log_suppressed++;
		pthread_mutex_unlock(&http->log_lock);
		return;
	}
	http->log_lines++;
	pthread_mutex_unlock(&http->log_lock);
	if (suppressed)
		CAT_LOG_WARN("HTTP", "%lu more warnings of the server not logged", suppressed);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	len = strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '.'))
		msg[--len] = '\0';
	msg[0] = (char)tolower((unsigned char)msg[0]); /* our style: lower-case messages */
	CAT_LOG_WARN("HTTP", "%s", msg);
}

cat_err_t cat_http_start(cat_http_t *http, char *errstr, size_t errstr_size)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *addr = NULL;
	struct sockaddr_storage sa;
	const union MHD_DaemonInfo *info;
	/* event loops on epoll (Linux); poll elsewhere */
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
			     (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL
										   : MHD_USE_POLL);
	const cat_http_limits_t *limits = &http->limits;
	json_t *fields;
	int rc;

	if ((rc = getaddrinfo(http->bind, NULL, &hints, &addr)) != 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not listen on %s: %s",
				   http->bind, gai_strerror(rc));
	memset(&sa, 0, sizeof(sa));
	memcpy(&sa, addr->ai_addr, addr->ai_addrlen);
	if (addr->ai_family == AF_INET6) {
		((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)http->port);
		flags |= MHD_USE_IPv6;
	} else {
		((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)http->port);
	}
	freeaddrinfo(addr);

	http->daemon = MHD_start_daemon(
		flags, (uint16_t)http->port, NULL, NULL, access_handler, http, MHD_OPTION_EXTERNAL_LOGGER,
		mhd_logger, http, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
		request_completed, http, MHD_OPTION_NOTIFY_CONNECTION, notify_connection, http,
		MHD_OPTION_THREAD_POOL_SIZE, limits->threads, MHD_OPTION_CONNECTION_LIMIT,
		limits->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, limits->max_connections_per_ip,
		MHD_OPTION_CONNECTION_TIMEOUT, limits->timeout_s, MHD_OPTION_END);
	if (!http->daemon)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "could not listen on %s port %d: address in use or not available",
				   http->bind, http->port);
	if (pthread_create(&http->sweeper, NULL, sweeper_main, http) != 0) {
		MHD_stop_daemon(http->daemon);
		http->daemon = NULL;
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not start a thread");
	}
	http->sweeper_started = true;
	info = MHD_get_daemon_info(http->daemon, MHD_DAEMON_INFO_BIND_PORT);
	if (info)
		http->port = info->port;
	fields = json_pack("{s:s,s:i,s:i,s:i,s:i,s:i}", "bind", http->bind, "port", http->port,
			   "max_connections", (int)limits->max_connections, "max_connections_per_ip",
			   (int)limits->max_connections_per_ip, "timeout_s", (int)limits->timeout_s,
			   "threads", (int)limits->threads);
	cat_log_kv(CAT_LOG_LEVEL_INFO, "HTTP", fields, "listening on %s port %d", http->bind, http->port);
	json_decref(fields);
	return CAT_OK;
}

int cat_http_port(const cat_http_t *http)
{
	return http && http->daemon ? http->port : 0;
}

void cat_http_destroy(cat_http_t *http)
{
	if (!http)
		return;
	if (http->sweeper_started) {
		pthread_mutex_lock(&http->conn_lock);
		http->sweep_stop = true;
		pthread_cond_signal(&http->sweep_cond);
		pthread_mutex_unlock(&http->conn_lock);
		pthread_join(http->sweeper, NULL);
	}
	if (http->daemon)
		MHD_stop_daemon(http->daemon); /* closes every connection: conns empty */
	for (size_t i = 0; i < http->n_routes; i++) {
		free(http->routes[i].method);
		free(http->routes[i].path);
	}
	free(http->bind);
	pthread_mutex_destroy(&http->ready_lock);
	pthread_mutex_destroy(&http->conn_lock);
	pthread_cond_destroy(&http->sweep_cond);
	pthread_mutex_destroy(&http->log_lock);
	free(http);
}

cat_err_t cat_http_serve(cat_http_t **out, const cat_config_t *cfg, const char *bind, int port,
			 cat_metrics_t *reg, cat_http_ready_fn ready, void *ready_opaque, char *errstr,
			 size_t errstr_size)
{
	cat_http_t *http = NULL;
	cat_err_t err;

	*out = NULL;
	if ((err = cat_http_new(&http, bind, port, errstr, errstr_size)) != CAT_OK)
		return err;
	if (cfg) {
		cat_http_limits_t limits = cat_http_limits_from_config(cfg);

		cat_http_set_limits(http, &limits);
	}
	cat_http_set_metrics(http, reg);
	cat_http_set_ready_fn(http, ready, ready_opaque);
	if ((err = cat_http_start(http, errstr, errstr_size)) != CAT_OK) {
		cat_http_destroy(http);
		return err;
	}
	*out = http;
	return CAT_OK;
}
