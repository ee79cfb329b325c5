/*
 * core-probe: exercises the consumer core (common/cat_consumer) with a
 * handler whose behaviour each message's text chooses, so that tests can
 * check the at-least-once contract without any database.
 *
 *   core-probe produce SUFFIX < lines     one message per line to PREFIX+SUFFIX,
 *                                          key = the text before the first ':'
 *   core-probe consume SUFFIX OUT_FILE    runs the loop (group "core-probe" or
 *                                          CATALYST_GROUP), appending each applied
 *                                          message as "partition offset text" to OUT_FILE
 *                                          (fsync'ed before the handler returns)
 *
 * Message texts (after "key:"):
 *   poison...        marked permanent by the handler itself
 *   hidden...        makes the whole batch fail permanently, the handler
 *                    not saying which message: the core must isolate it
 *   flaky...         the first attempt of each batch holding it fails
 *                    transiently (the core must retry, never skip)
 *   down-while FILE  fails transiently while FILE exists
 *   slow...          applied, after 0.2 ms (a downstream slower than the fetcher)
 *   anything else    applied
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_http.h"
#include "cat_kafka.h"
#include "cat_log.h"

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_CONSUMER("100", NULL),
	{ .name = "CATALYST_GROUP", .type = CAT_CFG_STRING, .def = "core-probe", .help = "consumer group" },
	{ .name = "CATALYST_PROBE_PORT", .type = CAT_CFG_INT, .def = "0", .max = 65535,
	  .help = "HTTP port (0: none)" },
	{ .name = "CATALYST_PROBE_FSYNC", .type = CAT_CFG_BOOL, .def = "true",
	  .help = "fsync OUT_FILE before each batch's offsets are stored (off: a run that kills nothing, "
		  "timed by the consumer alone rather than by the disk)" },
};
#define N_DEFS (sizeof(config_defs) / sizeof(config_defs[0]))

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	if (stop)
		_exit(1); /* a second signal: at once */
	stop = sig;
}

typedef struct probe {
	FILE *out;
	bool fsync;	   /* CATALYST_PROBE_FSYNC */
	unsigned attempts; /* apply calls, to make "flaky" fail every other time */
} probe_t;

static int text_is(const rd_kafka_message_t *rkm, const char *word, const char **rest)
{
	const char *text = rkm->payload, *colon = memchr(text, ':', rkm->len);
	size_t off = colon ? (size_t)(colon - text) + 1 : 0, wlen = strlen(word);

	if (rkm->len - off < wlen || memcmp(text + off, word, wlen) != 0)
		return 0;
	if (rest)
		*rest = text + off + wlen;
	return 1;
}

static cat_err_t probe_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	probe_t *probe = opaque;
	bool flaky = false;

	probe->attempts++;
	for (size_t i = 0; i < batch->n; i++) {
		const rd_kafka_message_t *rkm = batch->msgs[i].rkm;
		const char *rest;

		if (text_is(rkm, "hidden", NULL))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "hidden poison in the batch");
		if (text_is(rkm, "flaky", NULL))
			flaky = true;
		if (text_is(rkm, "slow", NULL))
			usleep(200);
		if (text_is(rkm, "down-while ", &rest)) {
			char path[512];
			size_t len = rkm->len - (size_t)(rest - (const char *)rkm->payload);

			snprintf(path, sizeof(path), "%.*s", (int)len, rest);
			if (access(path, F_OK) == 0)
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "downstream %s is down", path);
		}
	}
	if (flaky && probe->attempts % 2 == 1)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "flaky downstream");
	for (size_t i = 0; i < batch->n; i++) {
		const rd_kafka_message_t *rkm = batch->msgs[i].rkm;

		if (text_is(rkm, "poison", NULL)) {
			batch->msgs[i].result = CAT_ERR_PERMANENT;
			snprintf(batch->msgs[i].reason, sizeof(batch->msgs[i].reason), "poison message");
			continue;
		}
		fprintf(probe->out, "%d %lld %.*s\n", (int)rkm->partition, (long long)rkm->offset, (int)rkm->len,
			(const char *)rkm->payload);
	}
	/* durable before the core stores the offsets */
	if (fflush(probe->out) != 0 || (probe->fsync && fsync(fileno(probe->out)) != 0))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not write: %s", strerror(errno));
	return CAT_OK;
}

static int produce(const cat_config_t *cfg, const char *suffix)
{
	cat_producer_t *producer = NULL;
	char topic[256], errstr[512], *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int rc = 1;

	cat_kafka_topic(cfg, suffix, topic, sizeof(topic));
	if (cat_producer_new(&producer, cfg, "core-probe", 30000, NULL, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "core-probe: %s\n", errstr);
		return 2;
	}
	while ((len = getline(&line, &cap, stdin)) > 0) {
		char *colon;

		if (line[len - 1] == '\n')
			line[--len] = '\0';
		colon = strchr(line, ':');
		if (cat_producer_send(producer, topic, RD_KAFKA_PARTITION_UA, line,
				      colon ? (size_t)(colon - line) : (size_t)len, line, (size_t)len, NULL, NULL,
				      errstr, sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "core-probe: %s\n", errstr);
			goto out;
		}
	}
	if (cat_producer_flush(producer, 60000, errstr, sizeof(errstr)) != CAT_OK ||
	    cat_producer_failed(producer) > 0) {
		fprintf(stderr, "core-probe: not every message was delivered\n");
		goto out;
	}
	rc = 0;
out:
	free(line);
	cat_producer_destroy(producer);
	return rc;
}

static int consume(const cat_config_t *cfg, const char *suffix, const char *out_path)
{
	const char *topics[] = { suffix, NULL };
	cat_metrics_t *metrics = cat_metrics_new();
	cat_consumer_t *consumer = NULL;
	cat_http_t *http = NULL;
	probe_t probe = { .fsync = cat_config_bool(cfg, "CATALYST_PROBE_FSYNC") };
	cat_handler_t handler = { probe_apply, NULL, &probe, NULL };
	char errstr[512];
	int rc = 1;

	if (!(probe.out = fopen(out_path, "a"))) {
		fprintf(stderr, "core-probe: could not open %s: %s\n", out_path, strerror(errno));
		goto out;
	}
	if (cat_consumer_new(&consumer, cfg, "core-probe", cat_config_str(cfg, "CATALYST_GROUP"), topics, &handler,
			     metrics, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "core-probe: %s\n", errstr);
		goto out;
	}
	if (cat_config_int(cfg, "CATALYST_PROBE_PORT") > 0) {
		if (cat_http_new(&http, "127.0.0.1", (int)cat_config_int(cfg, "CATALYST_PROBE_PORT"), errstr,
				 sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "core-probe: %s\n", errstr);
			goto out;
		}
		cat_http_set_metrics(http, metrics);
		cat_http_set_ready_fn(http, cat_consumer_ready, consumer);
		if (cat_http_start(http, errstr, sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "core-probe: %s\n", errstr);
			goto out;
		}
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	if (cat_consumer_run(consumer, &stop, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "core-probe: %s\n", errstr);
		goto out;
	}
	rc = 0;
out:
	cat_http_destroy(http);
	cat_consumer_destroy(consumer);
	cat_metrics_destroy(metrics);
	if (probe.out)
		fclose(probe.out);
	return rc;
}

int main(int argc, char **argv)
{
	cat_config_t *cfg = NULL;
	char errstr[512];
	int rc;

	if (argc < 3 || (strcmp(argv[1], "produce") != 0 && strcmp(argv[1], "consume") != 0) ||
	    (strcmp(argv[1], "consume") == 0 && argc != 4)) {
		fprintf(stderr, "usage: core-probe produce SUFFIX < lines | core-probe consume SUFFIX OUT_FILE\n");
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, N_DEFS, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "core-probe: %s\n", errstr);
		return 2;
	}
	cat_log_init("core-probe", (cat_log_level_t)cat_log_level_parse(cat_config_str(cfg, "CATALYST_LOG_LEVEL")));
	rc = strcmp(argv[1], "produce") == 0 ? produce(cfg, argv[2]) : consume(cfg, argv[2], argv[3]);
	cat_config_destroy(cfg);
	return rc;
}
