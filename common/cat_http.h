/*
 * cat_http: the small HTTP server every long-running worker embeds.
 *
 * libmicrohttpd, event-driven: a few threads (CATALYST_HTTP_THREADS), each
 * an epoll loop serving many connections, so idle or slow clients cost a
 * socket, not a thread. Routes map (method, path) to a handler; /healthz,
 * /readyz and /metrics are built in:
 *   GET /healthz  200 "ok" while the process serves
 *   GET /readyz   200 "ready", or 503 "not ready: <reason>", from the
 *                 readiness callback if one is set, else from the flag
 *                 (initially not ready, "starting")
 *   GET /metrics  the cat_metrics registry, text format 0.0.4, with the gauge
 *                 catalyst_ready (1 or 0: what /readyz would answer now)
 * An unknown path is 404, a known path with another method 405, a body
 * past the limit (default 1 MiB) 413. HEAD is served as GET without body.
 *
 * Limits (cat_http_limits_t, settings CAT_CONFIG_HTTP): connections in all
 * and per client address (past them a connection is closed at once), and a
 * timeout: a request's headers must be complete within it of the
 * connection's start (or of the previous response on a kept-alive
 * connection), and a connection idle for it is closed. So slow clients
 * (slowloris) neither hold threads nor keep others out for long: a probe
 * from another address is always served.
 *
 *   cat_http_t *http;
 *   if (cat_http_new(&http, "0.0.0.0", 5020, errstr, sizeof(errstr)) != CAT_OK) ...
 *   cat_http_set_metrics(http, reg);
 *   if (cat_http_route(http, "GET", "/api/migrations", status_handler, ctx) != CAT_OK ||
 *       cat_http_start(http, errstr, sizeof(errstr)) != CAT_OK) ...
 *   ...
 *   cat_http_destroy(http);
 *
 * Handlers run on one of the server's threads, which serves no other
 * connection meanwhile: they must be quick (a slow one holds up at most
 * that thread's share of connections), and whatever they share must be
 * thread-safe.
 */
#ifndef CAT_HTTP_H
#define CAT_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "cat_config.h"
#include "cat_err.h"
#include "cat_metrics.h"

#define CAT_HTTP_MAX_HEADERS 4

typedef struct cat_http cat_http_t;

/* Defaults of the limits (README "HTTP limits"). */
#define CAT_HTTP_MAX_CONNECTIONS_DEFAULT	512
#define CAT_HTTP_MAX_CONNECTIONS_PER_IP_DEFAULT 16
#define CAT_HTTP_TIMEOUT_S_DEFAULT		5
#define CAT_HTTP_THREADS_DEFAULT		4

typedef struct cat_http_limits {
	unsigned int max_connections;	     /* open connections in all */
	unsigned int max_connections_per_ip; /* from one client address; 0: no limit */
	unsigned int timeout_s;		     /* headers complete within, idle at most */
	unsigned int threads;		     /* event loops */
} cat_http_limits_t;

#define CAT_HTTP_STR_(x) #x
#define CAT_HTTP_STR(x)	 CAT_HTTP_STR_(x)

/* The limits as settings: add to a binary's table, read with
 * cat_http_limits_from_config(). */
#define CAT_CONFIG_HTTP                                                                               \
	{ .name = "CATALYST_HTTP_MAX_CONNECTIONS", .type = CAT_CFG_INT,                             \
	  .def = CAT_HTTP_STR(CAT_HTTP_MAX_CONNECTIONS_DEFAULT), .min = 4, .max = 65536,            \
	  .help = "HTTP: open connections at most, all clients together" },                         \
	{ .name = "CATALYST_HTTP_MAX_CONNECTIONS_PER_IP", .type = CAT_CFG_INT,                      \
	  .def = CAT_HTTP_STR(CAT_HTTP_MAX_CONNECTIONS_PER_IP_DEFAULT), .max = 65536,               \
	  .help = "HTTP: open connections at most from one client address (0: no limit)" },         \
	{ .name = "CATALYST_HTTP_TIMEOUT_S", .type = CAT_CFG_INT,                                   \
	  .def = CAT_HTTP_STR(CAT_HTTP_TIMEOUT_S_DEFAULT), .min = 1, .max = 600,                    \
	  .help = "HTTP: seconds a client has to send a request's headers; an idle connection is closed after" }, \
	{ .name = "CATALYST_HTTP_THREADS", .type = CAT_CFG_INT,                                     \
	  .def = CAT_HTTP_STR(CAT_HTTP_THREADS_DEFAULT), .min = 1, .max = 64,                       \
	  .help = "HTTP: event-loop threads serving the connections (a slow handler holds up one)" }

typedef struct cat_http_request {
	const char *method; /* "GET", "POST", ... ("GET" for HEAD) */
	const char *path;   /* without the query string */
	const char *body;   /* body_len bytes, NUL-terminated; "" without a body */
	size_t body_len;
	void *connection; /* internal: for cat_http_header() */
} cat_http_request_t;

typedef struct cat_http_response {
	int status;		  /* 0 when the handler set nothing: 500 */
	const char *content_type; /* static string */
	char *body;		  /* malloc'ed, freed by cat_http */
	size_t body_len;
	struct {
		const char *name; /* static strings */
		const char *value;
	} headers[CAT_HTTP_MAX_HEADERS];
	size_t n_headers;
} cat_http_response_t;

typedef void (*cat_http_handler_t)(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque);

/* Readiness: true when ready; otherwise fills reason (one line). */
typedef bool (*cat_http_ready_fn)(void *opaque, char *reason, size_t reason_size);

/* A request header (case-insensitive name), NULL if absent. */
const char *cat_http_header(const cat_http_request_t *req, const char *name);

/* Response helpers for handlers: body copied. */
void cat_http_reply(cat_http_response_t *resp, int status, const char *content_type, const char *body);
/* `json` is a jansson json_t (void here so the header stands alone), borrowed. */
void cat_http_reply_json(cat_http_response_t *resp, int status, const void *json);
/* {"error":"<message>"} */
void cat_http_reply_error(cat_http_response_t *resp, int status, const char *fmt, ...) CAT_PRINTF(3, 4);
/* An extra response header; name and value must be static strings. */
void cat_http_reply_header(cat_http_response_t *resp, const char *name, const char *value);

/* A server for `bind` (an IPv4 or IPv6 address or a host name; "0.0.0.0":
 * every IPv4 interface) and `port` (0: any free port, see cat_http_port).
 * Nothing listens before cat_http_start(). */
cat_err_t cat_http_new(cat_http_t **out, const char *bind, int port, char *errstr,
		       size_t errstr_size) CAT_MUST_CHECK;

/* Before start: at most 16 routes; a route may replace a built-in. */
cat_err_t cat_http_route(cat_http_t *http, const char *method, const char *path, cat_http_handler_t fn,
			 void *opaque) CAT_MUST_CHECK;
void cat_http_set_metrics(cat_http_t *http, cat_metrics_t *reg); /* borrowed */
void cat_http_set_ready_fn(cat_http_t *http, cat_http_ready_fn fn, void *opaque);
void cat_http_set_max_body(cat_http_t *http, size_t max_body);

/* The defaults above. */
cat_http_limits_t cat_http_limits_default(void);
/* The CAT_CONFIG_HTTP settings of cfg (which must declare them). */
cat_http_limits_t cat_http_limits_from_config(const cat_config_t *cfg);
/* Before start. Threads 0 counts as 1, a timeout of 0 as the default, a
 * total below the thread count is raised to it. */
void cat_http_set_limits(cat_http_t *http, const cat_http_limits_t *limits);

/* Any time, from any thread: the readiness flag (when no callback is set). */
void cat_http_set_ready(cat_http_t *http, bool ready, const char *reason);

/* Binds and starts serving; logs the address (fac "HTTP", field "port"). */
cat_err_t cat_http_start(cat_http_t *http, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* A worker's probes in one call: new, limits (the CAT_CONFIG_HTTP settings
 * of cfg; NULL: the defaults), metrics, readiness callback, start.
 * On failure *out is NULL and nothing listens. */
cat_err_t cat_http_serve(cat_http_t **out, const cat_config_t *cfg, const char *bind, int port,
			 cat_metrics_t *reg, cat_http_ready_fn ready, void *ready_opaque, char *errstr,
			 size_t errstr_size) CAT_MUST_CHECK;

/* The bound port once started (useful with port 0), else 0. */
int cat_http_port(const cat_http_t *http);

/* Stops serving (waits for running handlers) and frees; accepts NULL. */
void cat_http_destroy(cat_http_t *http);

#endif /* CAT_HTTP_H */
