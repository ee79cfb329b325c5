/*
 * catalyst-migrate serve: the migrations over HTTP (seed port 5020).
 *
 *   GET  /api/migrations     the status JSON; Authorization: Bearer
 *                            <CATALYST_MIGRATE_TOKEN>, 401 without it; 503
 *                            {"error":"database unreachable"} while the
 *                            status cannot be read
 *   POST /api/migrations/up  applies what is pending; the same token; 409
 *                            when the lock stays taken or files and database
 *                            disagree, 500 on other failures
 *   /healthz, /readyz (ready when PostgreSQL answers and nothing is pending;
 *   else one of "database unreachable", "N migrations pending: ...",
 *   "applied migrations differ from the files"), /metrics
 *
 * Requests never open a database session: the serving loop keeps one
 * connection (reconnected when lost) and reads the status on it every
 * CATALYST_MIGRATE_STATUS_REFRESH_S seconds into a cache the handlers answer
 * from. Only POST up opens its own session (it holds the migration lock).
 * What went wrong goes to the log, never into a response: an
 * unauthenticated client learns no host, user, file name or checksum.
 */
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cat_http.h"
#include "cat_log.h"
#include "cat_metrics.h"
#include "cat_pg.h"
#include "cat_time.h"
#include "migrate.h"

#define LOOP_STEP_NS (200 * 1000000L)

/* What the last refresh found. */
typedef enum serve_state {
	SERVE_STATE_UNKNOWN,	 /* not read yet */
	SERVE_STATE_OK,		 /* status holds what the database says */
	SERVE_STATE_UNREACHABLE, /* no connection */
	SERVE_STATE_FAILED,	 /* connected, but the status could not be read */
} serve_state_t;

typedef struct serve_ctx {
	const migrate_opts_t *opts;
	const migrate_set_t *set;
	const char *token;
	cat_metric_t *schema_version;
	cat_metric_t *pending;
	cat_metric_t *runs_success;
	cat_metric_t *runs_failure;
	cat_metric_t *last_run_seconds;

	PGconn *conn; /* the serving loop's only; NULL while disconnected */

	int64_t stale_us; /* a status older than this is not trusted (the loop hangs) */

	pthread_mutex_t lock; /* guards what follows */
	serve_state_t state;
	migrate_status_t *status; /* the last read, owned; NULL unless state OK */
	int64_t read_at_us;	  /* when it was read (monotonic) */
	unsigned long generation; /* bumped by each store: a slower read does not overwrite a newer one */
} serve_ctx_t;

/* Installs a status read when the cache was at `generation` (owned from
 * here; NULL with a failed state) and mirrors it in the gauges; dropped if
 * another store came in meanwhile (POST up's, newer). */
static void cache_store(serve_ctx_t *ctx, unsigned long generation, serve_state_t state,
			migrate_status_t *status)
{
	migrate_status_t *old = status;

	pthread_mutex_lock(&ctx->lock);
	if (ctx->generation == generation) {
		old = ctx->status;
		ctx->status = status;
		ctx->state = state;
		ctx->read_at_us = cat_time_mono_us();
		ctx->generation++;
		if (status) {
			cat_metrics_set(ctx->schema_version, status->current_version);
			cat_metrics_set(ctx->pending, status->pending);
		}
	}
	pthread_mutex_unlock(&ctx->lock);
	migrate_status_destroy(old);
}

/* The state as requests see it (under lock): a status the loop has not
 * renewed for long (a query hanging on a dead network) is not trusted. */
static serve_state_t cache_state(const serve_ctx_t *ctx)
{
	if (ctx->state == SERVE_STATE_OK && cat_time_mono_us() - ctx->read_at_us > ctx->stale_us)
		return SERVE_STATE_UNREACHABLE;
	return ctx->state;
}

/* The serving loop's refresh: (re)connects when needed and reads the
 * status; a failure is logged when the state changes, not at every try. */
static void cache_refresh(serve_ctx_t *ctx)
{
	migrate_status_t *status = NULL;
	serve_state_t before, state;
	unsigned long generation;
	char errstr[1024];
	cat_err_t err = CAT_OK;

	pthread_mutex_lock(&ctx->lock);
	before = ctx->state;
	generation = ctx->generation;
	pthread_mutex_unlock(&ctx->lock);

	if (ctx->conn && PQstatus(ctx->conn) != CONNECTION_OK) {
		cat_pg_close(ctx->conn);
		ctx->conn = NULL;
	}
	if (!ctx->conn)
		err = cat_pg_connect(&ctx->conn, ctx->opts->pg_url, ctx->opts->app_name,
				     ctx->opts->connect_timeout_s, errstr, sizeof(errstr));
	if (err == CAT_OK)
		err = migrate_status_query(ctx->conn, ctx->set, &status, errstr, sizeof(errstr));
	if (err == CAT_OK) {
		state = SERVE_STATE_OK;
	} else if (!ctx->conn || PQstatus(ctx->conn) != CONNECTION_OK) {
		state = SERVE_STATE_UNREACHABLE;
		cat_pg_close(ctx->conn); /* reconnect at the next refresh */
		ctx->conn = NULL;
	} else {
		state = SERVE_STATE_FAILED;
	}
	if (state != SERVE_STATE_OK && state != before)
		CAT_LOG_WARN("MIGRATE", "could not read the migration status: %s", errstr);
	else if (state == SERVE_STATE_OK && before != SERVE_STATE_OK && before != SERVE_STATE_UNKNOWN)
		CAT_LOG_INFO("MIGRATE", "migration status readable again");
	cache_store(ctx, generation, state, status);
}

static const char *state_reason(serve_state_t state)
{
	switch (state) {
	case SERVE_STATE_OK:
		return "ok";
	case SERVE_STATE_UNKNOWN:
		return "starting";
	case SERVE_STATE_UNREACHABLE:
		return "database unreachable";
	case SERVE_STATE_FAILED:
		break;
	}
	return "could not read the migration status";
}

/* The cached status as JSON, or 503 with the state's one word reason. */
static void reply_status(serve_ctx_t *ctx, cat_http_response_t *resp)
{
	json_t *doc = NULL;
	serve_state_t state;

	pthread_mutex_lock(&ctx->lock);
	state = cache_state(ctx);
	if (state == SERVE_STATE_OK)
		doc = migrate_status_json(ctx->status);
	pthread_mutex_unlock(&ctx->lock);
	if (state != SERVE_STATE_OK)
		cat_http_reply_error(resp, 503, "%s", state_reason(state));
	else if (doc)
		cat_http_reply_json(resp, 200, doc);
	else
		cat_http_reply_error(resp, 500, "out of memory");
	json_decref(doc);
}

/* "Bearer <token>", compared in constant time (digests of equal length). */
static bool token_ok(const char *authorization, const char *token)
{
	unsigned char given_md[EVP_MAX_MD_SIZE], want_md[EVP_MAX_MD_SIZE];
	unsigned int given_len = 0, want_len = 0;
	const char *given;

	if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
		return false;
	for (given = authorization + 7; *given == ' '; given++)
		;
	if (!EVP_Digest(given, strlen(given), given_md, &given_len, EVP_sha256(), NULL) ||
	    !EVP_Digest(token, strlen(token), want_md, &want_len, EVP_sha256(), NULL) ||
	    given_len != want_len)
		return false;
	return CRYPTO_memcmp(given_md, want_md, want_len) == 0;
}

/* 401 unless the request carries the token. */
static bool authorized(const serve_ctx_t *ctx, const cat_http_request_t *req, cat_http_response_t *resp)
{
	if (token_ok(cat_http_header(req, "Authorization"), ctx->token))
		return true;
	CAT_LOG_WARN("HTTP", "refused %s %s: missing or wrong bearer token", req->method, req->path);
	cat_http_reply_error(resp, 401, "missing or wrong bearer token");
	cat_http_reply_header(resp, "WWW-Authenticate", "Bearer");
	return false;
}

static void handle_status(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	serve_ctx_t *ctx = opaque;

	if (authorized(ctx, req, resp))
		reply_status(ctx, resp);
}

static void handle_up(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	serve_ctx_t *ctx = opaque;
	migrate_status_t *status = NULL;
	migrate_result_t result;
	unsigned long generation;
	char errstr[2048];
	int64_t started;
	cat_err_t err;

	if (!authorized(ctx, req, resp))
		return;
	started = cat_time_mono_us();
	err = migrate_up(ctx->opts, ctx->set, 0, &result, errstr, sizeof(errstr));
	cat_metrics_set_double(ctx->last_run_seconds, (double)(cat_time_mono_us() - started) / 1e6);
	if (err != CAT_OK) {
		cat_metrics_inc(ctx->runs_failure);
		CAT_LOG_ERROR("MIGRATE", "%s", errstr);
		cat_http_reply_error(resp, result.conflict ? 409 : 500, "%s", errstr);
		return;
	}
	cat_metrics_inc(ctx->runs_success);
	CAT_LOG_INFO("MIGRATE", "schema version %d: applied %d migration%s on request", result.version,
		     result.changed, result.changed == 1 ? "" : "s");
	/* the answer shows what up did: read now, not at the next refresh */
	pthread_mutex_lock(&ctx->lock);
	generation = ctx->generation;
	pthread_mutex_unlock(&ctx->lock);
	if (migrate_status_read(ctx->opts, ctx->set, &status, errstr, sizeof(errstr)) == CAT_OK)
		cache_store(ctx, generation, SERVE_STATE_OK, status);
	else
		CAT_LOG_WARN("MIGRATE", "could not read the migration status: %s", errstr);
	reply_status(ctx, resp);
}

/* From the cache: no database round trip per probe. */
static bool ready(void *opaque, char *reason, size_t reason_size)
{
	serve_ctx_t *ctx = opaque;
	char errstr[1024];
	bool ok = false;

	pthread_mutex_lock(&ctx->lock);
	if (cache_state(ctx) != SERVE_STATE_OK)
		snprintf(reason, reason_size, "%s", state_reason(cache_state(ctx)));
	else if (migrate_status_check(ctx->status, errstr, sizeof(errstr)) != CAT_OK)
		snprintf(reason, reason_size, "applied migrations differ from the files");
	else if (ctx->status->pending > 0)
		snprintf(reason, reason_size, "%d migration%s pending: schema version %d of %d",
			 ctx->status->pending, ctx->status->pending == 1 ? "" : "s",
			 ctx->status->current_version, ctx->status->latest_version);
	else
		ok = true;
	pthread_mutex_unlock(&ctx->lock);
	return ok;
}

static cat_err_t metrics_create(cat_metrics_t *reg, serve_ctx_t *ctx)
{
	ctx->schema_version = cat_metrics_gauge(reg, "catalyst_migrate_schema_version",
						"Highest applied migration version.", NULL);
	ctx->pending =
		cat_metrics_gauge(reg, "catalyst_migrate_pending", "Migrations not applied yet.", NULL);
	ctx->runs_success = cat_metrics_counter(reg, "catalyst_migrate_runs_total", "Runs of up over HTTP.",
						"result", "success", NULL);
	ctx->runs_failure = cat_metrics_counter(reg, "catalyst_migrate_runs_total", "Runs of up over HTTP.",
						"result", "failure", NULL);
	ctx->last_run_seconds = cat_metrics_gauge_double(reg, "catalyst_migrate_last_run_duration_seconds",
							 "Duration of the last run of up over HTTP.", NULL);
	if (!ctx->schema_version || !ctx->pending || !ctx->runs_success || !ctx->runs_failure ||
	    !ctx->last_run_seconds)
		return CAT_ERR_FATAL;
	return cat_metrics_add_process(reg, "catalyst_migrate");
}

int migrate_serve(const migrate_opts_t *opts, const migrate_set_t *set, const migrate_settings_t *settings,
		  const cat_http_limits_t *http_limits, const volatile sig_atomic_t *stop)
{
	serve_ctx_t ctx = {.opts = opts, .set = set, .token = settings->token};
	/* three refreshes missed, and a connection attempt's time */
	ctx.stale_us = ((int64_t)settings->status_refresh_s * 3 + opts->connect_timeout_s) * 1000000;
	const int64_t refresh_us = (int64_t)settings->status_refresh_s * 1000000;
	cat_metrics_t *reg = NULL;
	cat_http_t *http = NULL;
	int64_t next_refresh;
	char errstr[1024];
	int rc = 1;

	if (pthread_mutex_init(&ctx.lock, NULL) != 0) {
		CAT_LOG_ERROR("MIGRATE", "could not create a mutex");
		return 1;
	}
	if (!(reg = cat_metrics_new()) || metrics_create(reg, &ctx) != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "could not create metrics: out of memory");
		goto out;
	}
	if (cat_http_new(&http, settings->bind, (int)settings->port, errstr, sizeof(errstr)) != CAT_OK)
		goto error;
	cat_http_set_limits(http, http_limits);
	cat_http_set_metrics(http, reg);
	cat_http_set_ready_fn(http, ready, &ctx);
	if (cat_http_route(http, "GET", "/api/migrations", handle_status, &ctx) != CAT_OK ||
	    cat_http_route(http, "POST", "/api/migrations/up", handle_up, &ctx) != CAT_OK) {
		snprintf(errstr, sizeof(errstr), "could not add routes");
		goto error;
	}
	if (cat_http_start(http, errstr, sizeof(errstr)) != CAT_OK)
		goto error;
	next_refresh = 0; /* until the first read: 503 "starting" */

	while (!*stop) {
		if (cat_time_mono_us() >= next_refresh) {
			cache_refresh(&ctx);
			next_refresh = cat_time_mono_us() + refresh_us;
		}
		nanosleep(&(struct timespec){0, LOOP_STEP_NS}, NULL);
	}
	CAT_LOG_INFO("MIGRATE", "stopping on signal %d", (int)*stop);
	rc = 0;
	goto out;

error:
	CAT_LOG_ERROR("HTTP", "%s", errstr);
out:
	cat_http_destroy(http); /* waits for running handlers */
	cat_metrics_destroy(reg);
	cat_pg_close(ctx.conn);
	migrate_status_destroy(ctx.status);
	pthread_mutex_destroy(&ctx.lock);
	return rc;
}
