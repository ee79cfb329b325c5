/*
 * catalyst-backup: backup.v1 -> backups in S3-compatible storage (or a
 * directory), the backup_catalog table, events on events.v1.
 *
 * Consumes backup.v1 as group catalyst-backup, one command per batch
 * (handler.c, backup.h). A backup can run for many minutes inside one
 * handler call, while the loop does not poll: librdkafka's background
 * thread keeps the group session alive (heartbeats), and
 * max.poll.interval.ms defaults here to CATALYST_BACKUP_MAX_COMMAND_S so the
 * group does not evict the worker mid-backup; /readyz stays true while a
 * command runs. Serves /healthz, /readyz, /metrics (port 5021).
 *
 * Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed (Kafka), 2 bad usage or
 * configuration. PostgreSQL is connected at the first command, and nothing
 * it answers stops the worker (handler.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_http.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_metrics.h"
#include "cat_s3.h"
#include "cat_sink.h"

static const char usage[] =
	"usage: catalyst-backup\n"
	"\n"
	"Runs the backup commands of backup.v1 (consumer group catalyst-backup): full\n"
	"backups (pg_dump), table and incremental backups (COPY), restore, verify and\n"
	"prune, streamed through gzip into S3-compatible storage (or a directory).\n"
	"HTTP: /healthz, /readyz, /metrics.\n"
	"\n"
	"Exit status: 0 stopped by SIGTERM or SIGINT (a second one stops at once);\n"
	"1 Kafka failed; 2 usage or configuration error.";

/* Each CATALYST_BACKUP_* row fills a field of backup_settings_t. */
#define FIELD(member) CAT_CONFIG_FIELD(backup_settings_t, member)

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_PG,
	CAT_CONFIG_HTTP,
	CAT_CONFIG_CONSUMER("1", NULL),
	CAT_CONFIG_S3_IF("CATALYST_BACKUP_STORE=s3"),
	{ .name = "CATALYST_BACKUP_GROUP", FIELD(group), .type = CAT_CFG_STRING, .def = "catalyst-backup",
	  .help = "consumer group of backup.v1" },
	{ .name = "CATALYST_BACKUP_PORT", FIELD(port), .type = CAT_CFG_INT, .def = "5021", .max = 65535,
	  .help = "HTTP port of /healthz, /readyz and /metrics (0: any free port)" },
	{ .name = "CATALYST_BACKUP_BIND", FIELD(bind), .type = CAT_CFG_STRING, .def = "0.0.0.0",
	  .help = "address the HTTP server listens on" },
	{ .name = "CATALYST_BACKUP_STORE", FIELD(store), .type = CAT_CFG_ENUM, .def = "s3",
	  .choices = "s3|dir",
	  .help = "where backups go: the S3 bucket, or CATALYST_BACKUP_DIR" },
	{ .name = "CATALYST_BACKUP_DIR", FIELD(dir), .type = CAT_CFG_STRING, .required = true,
	  .required_if = "CATALYST_BACKUP_STORE=dir",
	  .help = "directory of backups (the dir store)" },
	{ .name = "CATALYST_BACKUP_RESTORE_TARGETS", FIELD(restore_targets), .type = CAT_CFG_STRING,
	  .secret = true, .check = backup_restore_targets_check,
	  .help = "databases a Restore may write to: name=postgresql://...;name2=... (a command names one)" },
	{ .name = "CATALYST_BACKUP_PARALLEL", FIELD(parallel), .type = CAT_CFG_INT, .def = "2", .min = 1,
	  .max = BACKUP_MAX_TABLES,
	  .help = "tables of a table backup compressed at once (memory: two upload parts each)" },
	{ .name = "CATALYST_BACKUP_GZIP_LEVEL", FIELD(gzip_level), .type = CAT_CFG_INT, .def = "6", .min = 1,
	  .max = 9, .help = "gzip compression level" },
	{ .name = "CATALYST_BACKUP_COMPRESS_THREADS", FIELD(compress_threads), .type = CAT_CFG_INT, .def = "0",
	  .max = 16, .help = "threads compressing a backup (shared by the tables backed up at once; 2 MiB each); 0: one per CPU, "
	          "at most 4" },
	{ .name = "CATALYST_BACKUP_PG_DUMP", FIELD(pg_dump), .type = CAT_CFG_STRING, .def = "pg_dump",
	  .help = "pg_dump to run (its major version at least the server's)" },
	{ .name = "CATALYST_BACKUP_PSQL", FIELD(psql), .type = CAT_CFG_STRING, .def = "psql",
	  .help = "psql to run for restores" },
	{ .name = "CATALYST_BACKUP_MAX_COMMAND_S", FIELD(max_command_s), .type = CAT_CFG_INT, .def = "21600",
	  .min = 60, .max = 86400, .kafka = "max.poll.interval.ms", .kafka_scale = 1000,
	  .help = "longest a command may run without the group evicting the worker "
	          "(CATALYST_KAFKA_MAX_POLL_INTERVAL_MS wins)" },
	{ .name = "CATALYST_BACKUP_MAX_ATTEMPTS", FIELD(max_attempts), .type = CAT_CFG_INT, .def = "5", .min = 1,
	  .max = 1000000,
	  .help = "attempts at a command that keeps failing (store, disk, target) before it fails for good: one event "
	          "with ok=false, a dead letter, the partition moves on" },
	{ .name = "CATALYST_BACKUP_KEEP_FULL", FIELD(keep_full), .type = CAT_CFG_INT, .def = "2", .max = 10000,
	  .help = "newest full backups a prune never removes, whatever the retention tiers say" },
	{ .name = "CATALYST_BACKUP_ALLOW_PRUNE_NOW", FIELD(allow_prune_now), .type = CAT_CFG_BOOL,
	  .def = "false",
	  .help = "tests only: a prune's now_us replaces the worker's clock (otherwise it is ignored)" },
};

#define N_CONFIG_DEFS (sizeof(config_defs) / sizeof(config_defs[0]))

static volatile sig_atomic_t stop;

static void on_signal(int signo)
{
	stop = signo;
}

static cat_err_t open_sink(const cat_config_t *cfg, const backup_settings_t *settings, cat_sink_t **sink,
			   char *errstr, size_t errstr_size)
{
	cat_s3_options_t opts;
	cat_s3_t *s3 = NULL;
	cat_err_t err;

	if (strcmp(settings->store, "dir") == 0)
		return cat_sink_new_dir(sink, settings->dir, errstr, errstr_size);
	cat_s3_options_from_config(&opts, cfg);
	opts.cancel = &stop;
	if ((err = cat_s3_new(&s3, &opts, errstr, errstr_size)))
		return err;
	return cat_sink_new_s3(sink, s3, errstr, errstr_size);
}

int main(int argc, char **argv)
{
	static const char *const topics[] = {CAT_TOPIC_BACKUP, NULL};
	struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
	cat_config_t *cfg = NULL;
	backup_settings_t settings = { 0 };
	cat_metrics_t *metrics = NULL;
	cat_sink_t *sink = NULL;
	cat_producer_t *producer = NULL;
	backup_t *backup = NULL;
	cat_consumer_t *consumer = NULL;
	cat_http_t *http = NULL;
	cat_handler_t handler;
	char errstr[1024];
	int rc = 1;

	/* signals first of all, so that one during start-up stops cleanly too
	 * (exit 0): the first SIGTERM/SIGINT stops the running command (its
	 * upload is aborted, the command redelivered later), a second one ends
	 * at once */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	if (cat_config_wants_help(argc, argv)) {
		cat_config_usage(stdout, usage, config_defs, N_CONFIG_DEFS);
		return 0;
	}
	if (argc > 1) {
		fprintf(stderr, BACKUP_WORKER ": unexpected argument %s (try --help)\n", argv[1]);
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, N_CONFIG_DEFS, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, BACKUP_WORKER ": %s\n", errstr);
		return 2;
	}
	cat_config_fill(cfg, &settings);
	cat_log_init(BACKUP_WORKER, (cat_log_level_t)cat_log_level_parse(cat_config_str(cfg, "CATALYST_LOG_LEVEL")));
	signal(SIGPIPE, SIG_IGN); /* a child that dies early is an error return, not a signal */
	if (open_sink(cfg, &settings, &sink, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, BACKUP_WORKER ": %s\n", errstr);
		cat_config_destroy(cfg);
		return 2;
	}
	metrics = cat_metrics_new();
	if (!metrics || cat_metrics_add_process(metrics, "catalyst_backup") != CAT_OK) {
		CAT_LOG_ERROR("METRICS", "could not create the metrics registry: out of memory");
		goto out;
	}

	/* the store: refused keys or a missing bucket do not stop us (the
	 * commands wait in Kafka, each attempt says why, /readyz too) */
	if (cat_sink_check(sink, errstr, sizeof(errstr)) != CAT_OK)
		CAT_LOG_ERROR("S3", "%s: backups will fail until this is fixed", errstr);

	if (cat_producer_new(&producer, cfg, BACKUP_WORKER, 30000, NULL, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	if (backup_new(&backup, cfg, &settings, sink, producer, metrics, &stop, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("MAIN", "%s", errstr);
		goto out;
	}
	handler = (cat_handler_t){ backup_apply, backup_ready, backup, NULL };
	if (cat_consumer_new(&consumer, cfg, BACKUP_WORKER, settings.group, topics, &handler, metrics, errstr,
			     sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("KAFKA", "%s", errstr);
		goto out;
	}
	backup_set_consumer(backup, consumer);
	if (cat_http_serve(&http, cfg, settings.bind, (int)settings.port, metrics, backup_http_ready, backup,
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
	backup_destroy(backup);
	cat_producer_destroy(producer);
	cat_sink_free(sink);
	cat_metrics_destroy(metrics);
	cat_config_destroy(cfg);
	return rc;
}
