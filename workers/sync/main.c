/*
 * catalyst-sync: changes.v1 + sync.v1 -> one PostgreSQL replica.
 *
 * One process (or pod set) per replica, consumer group
 * catalyst-sync-<CATALYST_REPLICA_NAME>, so replicas progress independently.
 * The handler (handler.c) applies change batches and ReplicateRows in one
 * version-checked transaction per batch and runs CheckConsistency (check.c)
 * and ResyncTable (resync.c); monitor.c keeps the monitoring gauges. Serves
 * /healthz, /readyz, /metrics.
 *
 * Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed (replica credentials,
 * database or schema; Kafka), 2 bad usage or configuration.
 */
#include <ctype.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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
#include "sync.h"

static const char usage[] =
	"usage: catalyst-sync\n"
	"\n"
	"Keeps one PostgreSQL replica (CATALYST_REPLICA_URL) equal to the primary: applies\n"
	"the committed rows of changes.v1 and the ReplicateRows of sync.v1, one\n"
	"version-checked transaction per batch, as consumer group catalyst-sync-<replica>;\n"
	"runs CheckConsistency (report on events.v1) and ResyncTable commands of sync.v1.\n"
	"Messages that can never apply go to dlq.v1 with the reason.\n"
	"HTTP: /healthz, /readyz, /metrics (lag, table sizes and tuples, slow statements).\n"
	"A check or resync runs inside the consume loop: unless CATALYST_KAFKA_MAX_POLL_INTERVAL_MS\n"
	"is set, max.poll.interval.ms is 3600000 so that a long one keeps the group.\n"
	"\n"
	"Exit status: 0 stopped by SIGTERM or SIGINT (a second one stops at once);\n"
	"1 the replica refused the credentials or its schema is not migrated, or Kafka\n"
	"failed; 2 usage or configuration error.";

/* CATALYST_REPLICA_NAME names a consumer group and appears in reports. */
static int plain_name(const char *name, char *why, size_t why_size)
{
	bool plain = strlen(name) <= 100;

	for (const char *c = name; *c; c++)
		if (!(isalnum((unsigned char)*c) || *c == '-' || *c == '_' || *c == '.'))
			plain = false;
	if (plain)
		return 0;
	snprintf(why, why_size, "must be 1 to 100 letters, digits, '-', '_' or '.'");
	return -1;
}

/* Each row of catalyst-sync's own fills a field of sync_settings_t. */
#define FIELD(member) CAT_CONFIG_FIELD(sync_settings_t, member)

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_PG,
	CAT_CONFIG_HTTP,
	CAT_CONFIG_CONSUMER("200", "3600000"),
	/* librdkafka's 500 ms: a fetch of the empty sync.v1 partitions, in flight
	 * at assignment, held back changes.v1's first messages that long */
	{ .name = "CATALYST_KAFKA_FETCH_WAIT_MAX_MS", .type = CAT_CFG_INT, .def = "100", .min = 1,
	  .max = 300000, .kafka = "fetch.wait.max.ms",
	  .help = "librdkafka's fetch.wait.max.ms: longest the broker holds a fetch with nothing to return" },
	CAT_CONFIG_TOMBSTONES,
	CAT_CONFIG_VERSIONS,
	{ .name = "CATALYST_REPLICA_URL", FIELD(replica_url), .type = CAT_CFG_PG_URL, .required = true,
	  .secret = true,
	  .help = "the replica this process keeps, libpq conninfo or URI (sslmode=verify-full in production)" },
	{ .name = "CATALYST_REPLICA_NAME", FIELD(replica_name), .type = CAT_CFG_STRING, .required = true,
	  .check = plain_name,
	  .help = "the replica's name: consumer group catalyst-sync-<name>, SyncCommand.replica, reports" },
	{ .name = "CATALYST_SYNC_GROUP", FIELD(group), .type = CAT_CFG_STRING,
	  .help = "consumer group (default catalyst-sync-<CATALYST_REPLICA_NAME>)" },
	{ .name = "CATALYST_SYNC_PORT", FIELD(port), .type = CAT_CFG_INT, .def = "5022", .max = 65535,
	  .help = "HTTP port of /healthz, /readyz and /metrics (0: any free port)" },
	{ .name = "CATALYST_SYNC_BIND", FIELD(bind), .type = CAT_CFG_STRING, .def = "0.0.0.0",
	  .help = "address the HTTP server listens on" },
	{ .name = "CATALYST_SYNC_CHECK_CHUNK_SIZE", FIELD(check_chunk_size), .type = CAT_CFG_INT,
	  .def = "10000", .min = 10, .max = 1000000,
	  .help = "rows per checksum chunk of a check whose command gives none" },
	{ .name = "CATALYST_SYNC_CHECK_SETTLE_MS", FIELD(check_settle_ms), .type = CAT_CFG_INT,
	  .def = "2000", .max = 600000,
	  .help = "how long after reading a differing row a check waits before catching up and reading it "
	          "again (covers catalyst-persist publishing what it committed)" },
	{ .name = "CATALYST_SYNC_CHECK_MAX_SUSPECTS", FIELD(check_max_suspects), .type = CAT_CFG_INT,
	  .def = "100000", .min = 100, .max = 10000000,
	  .help = "differing rows a check holds before it settles them (memory bound)" },
	{ .name = "CATALYST_SYNC_MONITOR_INTERVAL_S", FIELD(monitor_interval_s), .type = CAT_CFG_INT,
	  .def = "15", .min = 1, .max = 3600,
	  .help = "how often the monitoring gauges (lag, table sizes, slow statements) are refreshed" },
	{ .name = "CATALYST_SYNC_SLOW_STATEMENTS", FIELD(slow_statements), .type = CAT_CFG_INT, .def = "5",
	  .max = 16, .help = "slowest pg_stat_statements entries exposed per side" },
	{ .name = "CATALYST_SYNC_SLOW_MIN_CALLS", FIELD(slow_min_calls), .type = CAT_CFG_INT, .def = "100",
	  .max = 1000000000, .help = "calls a statement needs to rank among the slowest" },
	{ .name = "CATALYST_EVENTS_TIMEOUT_MS", FIELD(events_timeout_ms), .type = CAT_CFG_INT,
	  .def = "30000", .min = 1000, .max = 3600000,
	  .help = "how long a report may wait for its acknowledgement on events.v1 before the command is retried" },
};

#define N_CONFIG_DEFS (sizeof(config_defs) / sizeof(config_defs[0]))

static volatile sig_atomic_t stop;

static void on_signal(int signo)
{
	stop = signo;
}

int main(int argc, char **argv)
{
	static const char *const topics[] = {CAT_TOPIC_CHANGES, CAT_TOPIC_SYNC, NULL};
	struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
	cat_config_t *cfg = NULL;
	cat_metrics_t *metrics = NULL;
	cat_producer_t *events = NULL;
	sync_settings_t settings = { 0 };
	sync_t *sync = NULL;
	cat_consumer_t *consumer = NULL;
	cat_http_t *http = NULL;
	cat_handler_t handler;
	char errstr[1024], group[256];
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
		fprintf(stderr, SYNC_WORKER ": unexpected argument %s (try --help)\n", argv[1]);
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, N_CONFIG_DEFS, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, SYNC_WORKER ": %s\n", errstr);
		return 2;
	}
	cat_config_fill(cfg, &settings);
	if (settings.group)
		snprintf(group, sizeof(group), "%s", settings.group);
	else
		snprintf(group, sizeof(group), "catalyst-sync-%s", settings.replica_name);
	cat_log_init(SYNC_WORKER,
		     (cat_log_level_t)cat_log_level_parse(cat_config_str(cfg, "CATALYST_LOG_LEVEL")));
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
	metrics = cat_metrics_new();
	if (!metrics || cat_metrics_add_process(metrics, "catalyst_sync") != CAT_OK) {
		CAT_LOG_ERROR("METRICS", "could not create the metrics registry: out of memory");
		goto out;
	}

	/* events.v1 for reports, then the handler */
	if (cat_producer_new(&events, cfg, SYNC_WORKER, (int)settings.events_timeout_ms, NULL, NULL, errstr,
			     sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	if (sync_new(&sync, cfg, &settings, group, events, metrics, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("SYNC", "%s", errstr);
		goto out;
	}
	/* the replica: wrong credentials, no such database or an unmigrated
	 * schema stop us here; an unreachable server does not (the loop
	 * reconnects with backoff, /readyz says why) */
	err = sync_ensure_replica(sync, errstr, sizeof(errstr));
	if (err == CAT_ERR_FATAL) {
		CAT_LOG_ERROR("PG", "%s", errstr);
		goto out;
	}
	if (err != CAT_OK)
		CAT_LOG_WARN("PG", "%s: will retry", errstr);

	/* changes.v1 + sync.v1, the monitor, then the probes */
	handler = (cat_handler_t){sync_apply, sync_ready, sync, sync_settle};
	if (cat_consumer_new(&consumer, cfg, SYNC_WORKER, group, topics, &handler, metrics, errstr,
			     sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	if (sync_monitor_start(sync, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("MONITOR", "%s", errstr);
		goto out;
	}
	if (cat_http_serve(&http, cfg, settings.bind, (int)settings.port, metrics, cat_consumer_ready,
			   consumer, errstr, sizeof(errstr)) != CAT_OK) {
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
	sync_destroy(sync);
	cat_producer_destroy(events);
	cat_metrics_destroy(metrics);
	cat_config_destroy(cfg);
	return rc;
}
