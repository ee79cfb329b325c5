/*
 * catalyst-migrate serve: the migrations over HTTP (seed port 5020).
 *
 *   GET  /api/migrations     the status JSON
 *   POST /api/migrations/up  applies what is pending; Authorization: Bearer
 *                            <CATALYST_MIGRATE_TOKEN>; 401 without it, 409 when
 *                            the lock stays taken or files and database
 *                            disagree, 500 on other failures
 *   /healthz, /readyz (ready when PostgreSQL answers and nothing is pending),
 *   /metrics
 */
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cat_http.h"
#include "cat_log.h"
#include "cat_metrics.h"
#include "cat_time.h"
#include "migrate.h"

#define REFRESH_INTERVAL_US (30 * 1000000LL)
#define LOOP_STEP_NS	    (200 * 1000000L)

typedef struct serve_ctx {
	const migrate_opts_t *opts;
	const migrate_set_t *set;
	const char *token;
	cat_metric_t *schema_version;
	cat_metric_t *pending;
	cat_metric_t *runs_success;
	cat_metric_t *runs_failure;
	cat_metric_t *last_run_seconds;
} serve_ctx_t;

/* Reads the status and mirrors it in the gauges. */
static cat_err_t status_refresh(serve_ctx_t *ctx, migrate_status_t **out, char *errstr, size_t errstr_size)
{
	cat_err_t err = migrate_status_read(ctx->opts, ctx->set, out, errstr, errstr_size);

	if (err != CAT_OK)
		return err;
	cat_metrics_set(ctx->schema_version, (*out)->current_version);
	cat_metrics_set(ctx->pending, (*out)->pending);
	return CAT_OK;
}

static void reply_status(serve_ctx_t *ctx, cat_http_response_t *resp)
{
	migrate_status_t *status = NULL;
	char errstr[1024];
	cat_err_t err;
	json_t *doc;

	if ((err = status_refresh(ctx, &status, errstr, sizeof(errstr))) != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "%s", errstr);
		cat_http_reply_error(resp, err == CAT_ERR_RETRIABLE ? 503 : 500, "%s", errstr);
		return;
	}
	doc = migrate_status_json(status);
	if (doc)
		cat_http_reply_json(resp, 200, doc);
	else
		cat_http_reply_error(resp, 500, "out of memory");
	json_decref(doc);
	migrate_status_destroy(status);
}

static void handle_status(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	reply_status(opaque, resp);
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

static void handle_up(const cat_http_request_t *req, cat_http_response_t *resp, void *opaque)
{
	serve_ctx_t *ctx = opaque;
	migrate_result_t result;
	char errstr[2048];
	int64_t started;
	cat_err_t err;

	if (!token_ok(cat_http_header(req, "Authorization"), ctx->token)) {
		CAT_LOG_WARN("HTTP", "refused POST %s: missing or wrong bearer token", req->path);
		cat_http_reply_error(resp, 401, "missing or wrong bearer token");
		cat_http_reply_header(resp, "WWW-Authenticate", "Bearer");
		return;
	}
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
	reply_status(ctx, resp);
}

static bool ready(void *opaque, char *reason, size_t reason_size)
{
	serve_ctx_t *ctx = opaque;
	migrate_status_t *status = NULL;
	char errstr[1024];
	bool ok = false;

	if (status_refresh(ctx, &status, errstr, sizeof(errstr)) != CAT_OK)
		snprintf(reason, reason_size, "%s", errstr);
	else if (migrate_status_check(status, errstr, sizeof(errstr)) != CAT_OK)
		snprintf(reason, reason_size, "%s", errstr);
	else if (status->pending > 0)
		snprintf(reason, reason_size, "%d migration%s pending: schema version %d of %d",
			 status->pending, status->pending == 1 ? "" : "s", status->current_version,
			 status->latest_version);
	else
		ok = true;
	migrate_status_destroy(status);
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

int migrate_serve(const migrate_opts_t *opts, const migrate_set_t *set, const migrate_serve_opts_t *serve,
		  const volatile sig_atomic_t *stop)
{
	serve_ctx_t ctx = {.opts = opts, .set = set, .token = serve->token};
	cat_metrics_t *reg = NULL;
	cat_http_t *http = NULL;
	migrate_status_t *status = NULL;
	int64_t next_refresh = 0;
	bool refresh_failed = false;
	char errstr[1024];
	int rc = 1;

	if (!(reg = cat_metrics_new()) || metrics_create(reg, &ctx) != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "could not create metrics: out of memory");
		goto out;
	}
	if (cat_http_new(&http, serve->bind, serve->port, errstr, sizeof(errstr)) != CAT_OK)
		goto error;
	cat_http_set_metrics(http, reg);
	cat_http_set_ready_fn(http, ready, &ctx);
	if (cat_http_route(http, "GET", "/api/migrations", handle_status, &ctx) != CAT_OK ||
	    cat_http_route(http, "POST", "/api/migrations/up", handle_up, &ctx) != CAT_OK) {
		snprintf(errstr, sizeof(errstr), "could not add routes");
		goto error;
	}
	if (cat_http_start(http, errstr, sizeof(errstr)) != CAT_OK)
		goto error;

	while (!*stop) {
		if (cat_time_mono_us() >= next_refresh) {
			/* keeps the gauges current between requests */
			if (status_refresh(&ctx, &status, errstr, sizeof(errstr)) != CAT_OK) {
				if (!refresh_failed)
					CAT_LOG_WARN("MIGRATE", "%s", errstr);
				refresh_failed = true;
			} else {
				refresh_failed = false;
			}
			migrate_status_destroy(status);
			status = NULL;
			next_refresh = cat_time_mono_us() + REFRESH_INTERVAL_US;
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
	return rc;
}
