/*
 * catalyst-devbroker: librdkafka's built-in mock cluster (rdkafka_mock.h) as
 * a process, for `scripts/stack up --broker=mock` where Java or Maven
 * Central is out of reach.
 *
 * It speaks the real Kafka protocol over TCP on 127.0.0.1, keeps everything
 * in memory, and drops a partition's oldest messages beyond librdkafka's
 * mock segment limit (about 5 MiB): fine for unit tests, never for
 * benchmarks or fault tests.
 *
 *   catalyst-devbroker [--bootstrap-file PATH] [--topic-prefix PREFIX]
 *
 * Starts a one-broker cluster, creates the catalyst topics, prints the
 * bootstrap servers on stdout as one line (and writes them to PATH, replaced
 * atomically), then runs until SIGTERM or SIGINT; a second signal kills it at
 * once. librdkafka 2.0.2 picks the listening port itself: read it from the
 * output. Logs are JSON lines on stderr, as the workers write them.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define PROGRAM "catalyst-devbroker"

/* topic (without prefix) and partition count, docs/ARCHITECTURE.md, "Topics and their contracts" */
static const struct {
	const char *name;
	int partitions;
} topics[] = {
	{"write.v1", 12}, {"changes.v1", 12}, {"cache.v1", 6}, {"sync.v1", 6},
	{"backup.v1", 3}, {"dlq.v1", 3},      {"events.v1", 3},
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* One JSON object per line on stderr, the fields cat_log writes. */
__attribute__((format(printf, 3, 4))) static void log_line(const char *level, const char *fac,
							  const char *fmt, ...)
{
	char msg[1024], ts[32];
	struct timespec now;
	struct tm tm;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);

	flockfile(stderr);
	fprintf(stderr, "{\"ts\":\"%s.%06ldZ\",\"level\":\"%s\",\"program\":\"" PROGRAM "\",\"fac\":\"%s\",\"msg\":\"",
		ts, now.tv_nsec / 1000, level, fac);
	for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(stderr, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(stderr, "\\u%04x", *p);
		else
			fputc(*p, stderr);
	}
	fputs("\"}\n", stderr);
	funlockfile(stderr);
}

/* librdkafka's own logs, through the same lines (syslog levels) */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void)rk;
	/* the host handle has no bootstrap.servers on purpose */
	if (!strcmp(fac, "CONFWARN") && strstr(buf, "bootstrap.servers"))
		return;
	log_line(level <= 3 ? "error" : level <= 5 ? "warn" : level == 6 ? "info" : "debug", "KAFKA",
		 "%s: %s", fac, buf);
}

static void usage(FILE *out)
{
	fputs("usage: " PROGRAM " [--bootstrap-file PATH] [--topic-prefix PREFIX]\n"
	      "\n"
	      "librdkafka's mock Kafka cluster on 127.0.0.1 (in memory, one broker) with the\n"
	      "catalyst topics. Prints the bootstrap servers on stdout; runs until SIGTERM.\n"
	      "\n"
	      "  --bootstrap-file PATH  also write the bootstrap servers to PATH\n"
	      "  --topic-prefix PREFIX  topic name prefix (default: $CATALYST_TOPIC_PREFIX,\n"
	      "                         else \"catalyst.\")\n",
	      out);
}

/* Write "servers\n" to path through path.tmp and rename(2): readers never
 * see a partial file. */
static int write_bootstrap_file(const char *path, const char *servers, char *errstr, size_t errstr_size)
{
	char tmp[4096];
	FILE *f;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
		snprintf(errstr, errstr_size, "path too long: %s", path);
		return -1;
	}
	f = fopen(tmp, "w");
	if (!f) {
		snprintf(errstr, errstr_size, "%s: %s", tmp, strerror(errno));
		return -1;
	}
	if (fprintf(f, "%s\n", servers) < 0 || fclose(f) != 0) {
		snprintf(errstr, errstr_size, "%s: %s", tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) != 0) {
		snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *bootstrap_file = NULL;
	const char *prefix = getenv("CATALYST_TOPIC_PREFIX");
	char errstr[512], name[256];
	rd_kafka_conf_t *conf = NULL;
	rd_kafka_t *rk = NULL;
	rd_kafka_mock_cluster_t *mcluster = NULL;
	struct sigaction sa;
	const char *servers;
	int exit_code = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--bootstrap-file") && i + 1 < argc) {
			bootstrap_file = argv[++i];
		} else if (!strcmp(argv[i], "--topic-prefix") && i + 1 < argc) {
			prefix = argv[++i];
		} else {
			fprintf(stderr, PROGRAM ": unknown or incomplete option: %s\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (!prefix)
		prefix = "catalyst.";

	/* a producer handle that never produces: it only hosts the cluster */
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
	if (rd_kafka_conf_set(conf, "client.id", PROGRAM, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
		log_line("error", "KAFKA", "could not configure the host handle: %s", errstr);
		goto out;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (!rk) {
		log_line("error", "KAFKA", "could not create the host handle: %s", errstr);
		goto out;
	}
	conf = NULL; /* owned by rk */

	mcluster = rd_kafka_mock_cluster_new(rk, 1);
	if (!mcluster) {
		log_line("error", "KAFKA", "could not create the mock cluster");
		goto out;
	}

	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
		rd_kafka_resp_err_t err;

		if ((size_t)snprintf(name, sizeof(name), "%s%s", prefix, topics[i].name) >= sizeof(name)) {
			log_line("error", "KAFKA", "could not create topic: prefix too long: %s", prefix);
			exit_code = 2;
			goto out;
		}
		err = rd_kafka_mock_topic_create(mcluster, name, topics[i].partitions, 1);
		if (err) {
			log_line("error", "KAFKA", "could not create topic %s: %s", name, rd_kafka_err2str(err));
			goto out;
		}
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESETHAND; /* a second signal takes the default action */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	servers = rd_kafka_mock_cluster_bootstraps(mcluster);
	if (bootstrap_file && write_bootstrap_file(bootstrap_file, servers, errstr, sizeof(errstr)) != 0) {
		log_line("error", "DEVBROKER", "could not write bootstrap file: %s", errstr);
		goto out;
	}
	printf("%s\n", servers);
	fflush(stdout);
	log_line("info", "DEVBROKER", "mock cluster listening on %s with %zu topics prefixed \"%s\"", servers,
		 sizeof(topics) / sizeof(topics[0]), prefix);

	while (!stop) {
		struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};

		nanosleep(&tick, NULL);
	}
	log_line("info", "DEVBROKER", "stopping on signal");
	exit_code = 0;

out:
	if (bootstrap_file && exit_code == 0 && unlink(bootstrap_file) != 0 && errno != ENOENT)
		log_line("warn", "DEVBROKER", "could not remove bootstrap file %s: %s", bootstrap_file,
			 strerror(errno));
	if (mcluster)
		rd_kafka_mock_cluster_destroy(mcluster);
	if (rk)
		rd_kafka_destroy(rk);
	if (conf)
		rd_kafka_conf_destroy(conf);
	return exit_code;
}
