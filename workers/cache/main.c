/*
 * catalyst-cache: changes.v1 + cache.v1 -> Redis.
 *
 * Consumes the rows the primary committed (changes.v1) and the explicit
 * cache commands (cache.v1) as group catalyst-cache and applies them to
 * Redis, version-checked and pipelined (handler.c); warms read the primary
 * (warm.c). Serves /healthz, /readyz, /metrics.
 *
 * Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed (Redis or PostgreSQL
 * credentials, Kafka), 2 bad usage or configuration.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "keys.h"
#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_http.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_metrics.h"
#include "cat_pg.h"
#include "cat_redis.h"

#define WORKER "catalyst-cache"

static const char usage[] =
	"usage: catalyst-cache\n"
	"\n"
	"Keeps Redis hot from the rows the PostgreSQL primary committed (changes.v1) and\n"
	"applies the cache commands of cache.v1 (set, delete, invalidate, warm), consumer\n"
	"group catalyst-cache. Writes are version-checked: an older change never replaces\n"
	"a newer cached value. Values that cannot be cached go to dlq.v1 with the reason.\n"
	"While Redis is unreachable nothing is acknowledged and the worker retries.\n"
	"HTTP: /healthz, /readyz, /metrics.\n"
	"set, delete and invalidate reach only the layout's key families (and\n"
	"CATALYST_CACHE_KEY_NAMESPACE); anything else is dead-lettered with the reason.\n"
	"When Redis loses its data (restart, failover, FLUSHDB) the worker rebuilds it\n"
	"from the primary by itself while changes keep flowing; /readyz is 503 meanwhile.\n"
	"A warm or rebuild runs inside the consume loop: unless\n"
	"CATALYST_KAFKA_MAX_POLL_INTERVAL_MS is set, max.poll.interval.ms is 3600000 so\n"
	"that a long rebuild keeps the group.\n"
	"\n"
	"Exit status: 0 stopped by SIGTERM or SIGINT (a second one stops at once);\n"
	"1 Redis or PostgreSQL refused the credentials, or Kafka failed; 2 usage or\n"
	"configuration error.";

/* Each CATALYST_CACHE_* row fills a field of cache_settings_t. */
#define FIELD(member) CAT_CONFIG_FIELD(cache_settings_t, member)

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_PG,
	CAT_CONFIG_HTTP,
	CAT_CONFIG_REDIS,
	CAT_CONFIG_CONSUMER("2000", "3600000"),
	{ .name = "CATALYST_CACHE_GROUP", FIELD(group), .type = CAT_CFG_STRING, .def = "catalyst-cache",
	  .help = "consumer group of changes.v1 and cache.v1" },
	{ .name = "CATALYST_CACHE_PORT", FIELD(port), .type = CAT_CFG_INT, .def = "5031", .max = 65535,
	  .help = "HTTP port of /healthz, /readyz and /metrics (0: any free port)" },
	{ .name = "CATALYST_CACHE_BIND", FIELD(bind), .type = CAT_CFG_STRING, .def = "0.0.0.0",
	  .help = "address the HTTP server listens on" },
	{ .name = "CATALYST_CACHE_NEWS_TTL_S", FIELD(news_ttl_s), .type = CAT_CFG_INT, .def = "3600",
	  .max = 31536000, .help = "TTL of news:{news_id} (0: none)" },
	{ .name = "CATALYST_CACHE_SYMBOL_TTL_S", FIELD(symbol_ttl_s), .type = CAT_CFG_INT, .def = "3600",
	  .max = 31536000,
	  .help = "TTL of news:symbol:{symbol}, signals:symbol:..., trades:symbol:..., renewed at each add" },
	{ .name = "CATALYST_CACHE_SIGNAL_TTL_S", FIELD(signal_ttl_s), .type = CAT_CFG_INT, .def = "3600",
	  .max = 31536000, .help = "TTL of signals:{signal_id}" },
	{ .name = "CATALYST_CACHE_TRADE_TTL_S", FIELD(trade_ttl_s), .type = CAT_CFG_INT, .def = "86400",
	  .max = 31536000, .help = "TTL of trades:{trade_id}" },
	{ .name = "CATALYST_CACHE_SOURCE_TTL_S", FIELD(source_ttl_s), .type = CAT_CFG_INT, .def = "86400",
	  .max = 31536000, .help = "TTL of sources:{source_name}" },
	{ .name = "CATALYST_CACHE_ACTIVE_TTL_S", FIELD(active_ttl_s), .type = CAT_CFG_INT, .def = "1800",
	  .max = 31536000, .help = "TTL of candidates:active" },
	{ .name = "CATALYST_CACHE_TOP_TTL_S", FIELD(top_ttl_s), .type = CAT_CFG_INT, .def = "300",
	  .max = 31536000, .help = "TTL of candidates:top:{n} made by a rebuild" },
	{ .name = "CATALYST_CACHE_TOP_LIMITS", FIELD(top_limits), .type = CAT_CFG_INT_LIST,
	  .def = "5,10,20,50,100", .min = 1, .max = 1000, .max_items = CACHE_MAX_TOP_LIMITS,
	  .help = "the n of candidates:top:{n}: removed at every candidate change, made by a rebuild" },
	{ .name = "CATALYST_CACHE_WARM_NEWS_TTL_S", FIELD(warm_news_ttl_s), .type = CAT_CFG_INT,
	  .def = "7200", .max = 31536000, .help = "TTL of the news a market-open warm caches" },
	{ .name = "CATALYST_CACHE_MAX_VALUE_BYTES", FIELD(max_value_bytes), .type = CAT_CFG_INT,
	  .def = "262144", .min = 64, .max = 536870912,
	  .help = "largest value cached; a larger one is dead-lettered" },
	{ .name = "CATALYST_CACHE_PIPELINE_BYTES", FIELD(pipeline_bytes), .type = CAT_CFG_INT,
	  .def = "262144", .min = 4096, .max = 268435456,
	  .help = "a batch's commands go out as pipelines of this size, one sent while the next is prepared" },
	{ .name = "CATALYST_CACHE_SCAN_COUNT", FIELD(scan_count), .type = CAT_CFG_INT, .def = "1000",
	  .min = 10, .max = 100000, .help = "keys an invalidation SCANs and UNLINKs per step" },
	{ .name = "CATALYST_CACHE_REBUILD_CHUNK", FIELD(rebuild_chunk), .type = CAT_CFG_INT, .def = "1000",
	  .min = 10, .max = 100000, .help = "rows a rebuild holds in memory at a time" },
	{ .name = "CATALYST_CACHE_HEAL_CHECK_MS", FIELD(heal_check_ms), .type = CAT_CFG_INT, .def = "1000",
	  .max = 3600000,
	  .help = "how often the worker checks that Redis still holds its data, and rebuilds it from the primary "
	          "when not (0: no self-heal)" },
	{ .name = "CATALYST_CACHE_REBUILD_MIN_INTERVAL_S", FIELD(rebuild_min_interval_s), .type = CAT_CFG_INT,
	  .def = "60", .min = 1, .max = 86400,
	  .help = "shortest time between two automatic rebuilds of this worker" },
	{ .name = "CATALYST_CACHE_KEY_NAMESPACE", FIELD(key_namespace), .type = CAT_CFG_STRING,
	  .check = cache_keys_namespace_check,
	  .help = "a key prefix (e.g. app:) that cache.v1 set, delete and invalidate may touch besides the layout's "
	          "families (news: signals: trades: sources: candidates:); other keys are dead-lettered" },
};

#define N_CONFIG_DEFS (sizeof(config_defs) / sizeof(config_defs[0]))

static volatile sig_atomic_t stop;

static void on_signal(int signo)
{
	stop = signo;
}

int main(int argc, char **argv)
{
	static const char *const topics[] = {CAT_TOPIC_CHANGES, CAT_TOPIC_CACHE, NULL};
	struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
	cat_config_t *cfg = NULL;
	cat_metrics_t *metrics = NULL;
	cat_redis_opts_t redis_opts;
	cat_redis_t *redis = NULL;
	cache_settings_t settings = { 0 };
	cache_t *cache = NULL;
	cat_consumer_t *consumer = NULL;
	cat_http_t *http = NULL;
	cat_handler_t handler;
	char errstr[1024];
	cat_err_t err;
	int rc = 1;

	/* signals first of all, so that one during start-up stops cleanly too
	 * (exit 0): the first SIGTERM/SIGINT drains and stops, a second one
	 * ends at once */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	if (cat_config_wants_help(argc, argv)) {
		cat_config_usage(stdout, usage, config_defs, N_CONFIG_DEFS);
		return 0;
	}
	if (argc > 1) {
		fprintf(stderr, WORKER ": unexpected argument %s (try --help)\n", argv[1]);
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, N_CONFIG_DEFS, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, WORKER ": %s\n", errstr);
		return 2;
	}
	cat_config_fill(cfg, &settings);
	cat_log_init(WORKER, (cat_log_level_t)cat_log_level_parse(cat_config_str(cfg, "CATALYST_LOG_LEVEL")));
	metrics = cat_metrics_new();
	if (!metrics || cat_metrics_add_process(metrics, "catalyst_cache") != CAT_OK) {
		CAT_LOG_ERROR("METRICS", "could not create the metrics registry: out of memory");
		goto out;
	}

	/* Redis, then PostgreSQL (warms only): refused credentials stop us
	 * here; an unreachable server does not (batches retry, /readyz says
	 * why) */
	cat_redis_opts_from_config(&redis_opts, cfg, WORKER);
	if (cat_redis_new(&redis, &redis_opts, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("REDIS", "%s", errstr);
		goto out;
	}
	err = cat_redis_ensure(redis, errstr, sizeof(errstr));
	if (err == CAT_ERR_FATAL) {
		CAT_LOG_ERROR("REDIS", "%s", errstr);
		goto out;
	}
	if (err != CAT_OK)
		CAT_LOG_WARN("REDIS", "%s: will retry", errstr);
	err = cache_new(&cache, cfg, &settings, redis, metrics, errstr, sizeof(errstr));
	redis = NULL; /* owned by cache */
	if (err != CAT_OK) {
		CAT_LOG_ERROR("MAIN", "%s", errstr);
		goto out;
	}
	err = cache_pg_connect(cache, errstr, sizeof(errstr));
	if (err == CAT_ERR_FATAL) {
		CAT_LOG_ERROR("PG", "%s", errstr);
		goto out;
	}
	if (err != CAT_OK)
		CAT_LOG_WARN("PG", "%s: will retry at the next warm", errstr);

	/* changes.v1 + cache.v1, then the probes that report on them */
	handler = (cat_handler_t){ cache_apply, cache_ready, cache, NULL };
	if (cat_consumer_new(&consumer, cfg, WORKER, settings.group, topics, &handler,
			     metrics, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	if (cat_http_serve(&http, cfg, settings.bind,
			   (int)settings.port, metrics, cat_consumer_ready, consumer, errstr,
			   sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("HTTP", "%s", errstr);
		goto out;
	}

	/* the self-heal runs beside the loop, on connections of its own */
	if (cache_heal_start(cache, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("MAIN", "%s", errstr);
		goto out;
	}

	if (cat_consumer_run(consumer, &stop, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("CONSUMER", "%s", errstr);
		goto out;
	}
	CAT_LOG_INFO("MAIN", "stopped on signal %d", (int)stop);
	rc = 0;

out:
	cat_http_destroy(http);
	cat_consumer_destroy(consumer);
	cache_destroy(cache);
	cat_redis_destroy(redis);
	cat_metrics_destroy(metrics);
	cat_config_destroy(cfg);
	return rc;
}
