/*
 * catalyst-persist: write.v1 -> PostgreSQL primary -> changes.v1.
 *
 * Consumes write.v1 as group catalyst-persist, applies each batch in one
 * transaction (handler.c) and publishes the committed rows on changes.v1
 * before the batch's offsets are stored. Serves /healthz, /readyz, /metrics.
 *
 * Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed (PostgreSQL credentials,
 * database or schema; Kafka), 2 bad usage or configuration.
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_http.h"
#include "cat_kafka.h"
#include "cat_codec.h"
#include "cat_log.h"
#include "cat_metrics.h"
#include "cat_pg.h"
#include "cat_sql.h"
#include "changes.h"
#include "handler.h"

#define WORKER "catalyst-persist"

#define CHANGES_LINGER_MS "100" /* the changes producer's linger.ms, unless set */

static const char usage[] =
	"usage: catalyst-persist\n"
	"\n"
	"Applies the write commands of write.v1 (consumer group catalyst-persist) to the\n"
	"PostgreSQL primary, one transaction per batch, and publishes the committed rows\n"
	"on changes.v1. Messages that can never apply go to dlq.v1 with the reason.\n"
	"HTTP: /healthz, /readyz, /metrics.\n"
	"\n"
	"Exit status: 0 stopped by SIGTERM or SIGINT (a second one stops at once);\n"
	"1 PostgreSQL refused the credentials or the schema is not migrated, or Kafka\n"
	"failed; 2 usage or configuration error.";

/* Each of the worker's own rows fills a field of persist_settings_t. */
#define FIELD(member) CAT_CONFIG_FIELD(persist_settings_t, member)

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_PG,
	CAT_CONFIG_HTTP,
	CAT_CONFIG_CONSUMER("4000", NULL),
	CAT_CONFIG_TOMBSTONES,
	CAT_CONFIG_VERSIONS,
	{ .name = "CATALYST_PERSIST_GROUP", FIELD(group), .type = CAT_CFG_STRING, .def = "catalyst-persist",
	  .help = "consumer group of write.v1 (one per environment sharing a Kafka cluster)" },
	{ .name = "CATALYST_PERSIST_PORT", FIELD(port), .type = CAT_CFG_INT, .def = "5030", .max = 65535,
	  .help = "HTTP port of /healthz, /readyz and /metrics (0: any free port)" },
	{ .name = "CATALYST_PERSIST_BIND", FIELD(bind), .type = CAT_CFG_STRING, .def = "0.0.0.0",
	  .help = "address the HTTP server listens on" },
	{ .name = "CATALYST_CHANGES_TIMEOUT_MS", FIELD(changes_timeout_ms), .type = CAT_CFG_INT,
	  .def = "30000", .min = 1000, .max = 3600000,
	  .help = "how long a batch's changes may wait for their acknowledgement on changes.v1 before the "
	          "batch is retried" },
};

#define N_CONFIG_DEFS (sizeof(config_defs) / sizeof(config_defs[0]))

static volatile sig_atomic_t stop;

static void on_signal(int signo)
{
	stop = signo;
}

int main(int argc, char **argv)
{
	static const char *const topics[] = {CAT_TOPIC_WRITE, NULL};
	struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
	cat_config_t *cfg = NULL;
	cat_metrics_t *metrics = NULL;
	cat_producer_t *producer = NULL;
	persist_settings_t settings = { 0 };
	persist_t *persist = NULL;
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
	/* memory of a burst goes back to the system: blocks of 256 KiB and more
	 * (batch buffers, fetched message sets) are mapped and unmapped on their
	 * own, and the heap is trimmed past 1 MiB free at its top */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
	/* one heap for every thread (librdkafka's many, ours few): what a burst
	 * leaves behind stays in one place, where the idle trim reaches it
	 * (about 1 MiB less idle RSS, no throughput lost in scripts/bench) */
	mallopt(M_ARENA_MAX, 1);
	metrics = cat_metrics_new();
	if (!metrics || cat_metrics_add_process(metrics, "catalyst_persist") != CAT_OK) {
		CAT_LOG_ERROR("METRICS", "could not create the metrics registry: out of memory");
		goto out;
	}

	/* changes.v1, then the handler */
	/* A settle flushes what lingers (librdkafka sends at once while
	 * flushing), so the linger costs no latency: it only makes a backlog's
	 * changes fewer, larger produce requests, each of which costs the
	 * broker more CPU than its bytes (about 3x the broker's CPU per change
	 * at librdkafka's 5 ms). CATALYST_KAFKA_LINGER_MS overrides it. */
	if (cat_producer_new_with(&producer, cfg, WORKER, (int)settings.changes_timeout_ms, persist_changes_report,
				  NULL, cat_config_kafka(cfg, "linger.ms") ? NULL : "linger.ms", CHANGES_LINGER_MS,
				  errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	if (persist_new(&persist, cfg, &settings, producer, metrics, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	/* PostgreSQL: wrong credentials, no such database or an unmigrated
	 * schema stop us here; an unreachable server does not (the loop
	 * reconnects with backoff, /readyz says why) */
	err = persist_connect(persist, errstr, sizeof(errstr));
	if (err == CAT_ERR_FATAL) {
		CAT_LOG_ERROR("PG", "%s", errstr);
		goto out;
	}
	if (err != CAT_OK)
		CAT_LOG_WARN("PG", "%s: will retry", errstr);

	/* write.v1, then the probes that report on it */
	handler = (cat_handler_t){ persist_apply, persist_ready, persist, persist_settle };
	if (cat_consumer_new(&consumer, cfg, WORKER, settings.group, topics, &handler, metrics, errstr,
			     sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	if (cat_http_serve(&http, cfg, settings.bind, (int)settings.port, metrics, cat_consumer_ready, consumer,
			   errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("HTTP", "%s", errstr);
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
	persist_destroy(persist);
	cat_producer_destroy(producer);
	cat_metrics_destroy(metrics);
	cat_config_destroy(cfg);
	return rc;
}
