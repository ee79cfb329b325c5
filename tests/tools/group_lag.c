/*
 * group-lag: how far a consumer group's committed offsets are behind the end
 * of a topic, summed over its partitions, as one JSON line:
 *
 *   {"group":"catalyst-persist","topic":"catalyst.write.v1","end":100000,
 *    "committed":99500,"lag":500,"at_us":1764252312000000}
 *
 *   group-lag --group G --topic T [--wait-ms N]
 *
 * With --wait-ms, polls (the committed offsets every 20 ms, the ends every
 * second and whenever the group may have caught up) until the lag is 0 and
 * prints the line of that moment (at_us: wall clock, µs), exiting 1 when N ms pass first.
 * A partition without a committed offset counts from its first offset.
 * Joins no group: it only reads the group's committed offsets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cat_config.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_time.h"

#define REQUEST_TIMEOUT_MS 10000

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
};

/* Sums the end offsets of the topic's partitions (two requests each), and
 * notes their first offsets in low[]; 0 or -1 (said on stderr unless
 * quiet). */
static int measure_ends(rd_kafka_t *rk, const char *topic, int n_partitions, long long *low, long long *end,
			bool quiet)
{
	*end = 0;
	for (int p = 0; p < n_partitions; p++) {
		int64_t lo, hi;
		rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, REQUEST_TIMEOUT_MS);

		if (err) {
			if (!quiet)
				fprintf(stderr, "group-lag: could not read the offsets of %s [%d]: %s\n", topic, p,
					rd_kafka_err2str(err));
			return -1;
		}
		low[p] = lo;
		*end += hi;
	}
	return 0;
}

/* Sums the group's committed offsets (one request; a partition without one
 * counts from low[]); 0 or -1 (said on stderr unless quiet). */
static int measure_committed(rd_kafka_t *rk, const char *topic, int n_partitions, const long long *low,
			     long long *committed, bool quiet)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(n_partitions);
	rd_kafka_resp_err_t err;
	int rc = -1;

	*committed = 0;
	for (int p = 0; p < n_partitions; p++)
		rd_kafka_topic_partition_list_add(list, topic, p);
	err = rd_kafka_committed(rk, list, REQUEST_TIMEOUT_MS);
	if (err) {
		if (!quiet)
			fprintf(stderr, "group-lag: could not read the committed offsets: %s\n",
				rd_kafka_err2str(err));
		goto out;
	}
	for (int i = 0; i < list->cnt; i++)
		*committed +=
			list->elems[i].offset >= 0 ? list->elems[i].offset : low[list->elems[i].partition];
	rc = 0;
out:
	rd_kafka_topic_partition_list_destroy(list);
	return rc;
}

static int partition_count(rd_kafka_t *rk, const char *topic)
{
	char errstr[512];
	int n;

	return cat_kafka_topic_partitions(rk, topic, REQUEST_TIMEOUT_MS, &n, errstr, sizeof(errstr)) == CAT_OK ? n
														: -1;
}

int main(int argc, char **argv)
{
	const char *group = NULL, *topic = NULL;
	long wait_ms = -1;
	cat_config_t *cfg = NULL;
	rd_kafka_conf_t *conf = NULL;
	rd_kafka_t *rk = NULL;
	char errstr[512];
	long long end = 0, committed = 0, *low = NULL;
	int64_t deadline, ends_at_us = -1;
	int n_partitions, rc = 2;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--group") == 0)
			group = argv[i + 1];
		else if (strcmp(argv[i], "--topic") == 0)
			topic = argv[i + 1];
		else if (strcmp(argv[i], "--wait-ms") == 0)
			wait_ms = atol(argv[i + 1]);
	}
	if (!group || !topic || argc % 2 == 0) {
		fprintf(stderr, "usage: group-lag --group G --topic T [--wait-ms N]\n");
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, sizeof(config_defs) / sizeof(config_defs[0]), NULL, errstr,
			    sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "group-lag: %s\n", errstr);
		return 2;
	}
	cat_log_init("group-lag", CAT_LOG_LEVEL_ERROR);
	if (cat_kafka_conf_new(&conf, cfg, "group-lag", errstr, sizeof(errstr)) != CAT_OK ||
	    cat_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)) != CAT_OK ||
	    cat_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "group-lag: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		goto out;
	}
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (!rk) {
		fprintf(stderr, "group-lag: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		goto out;
	}
	rc = 1;
	deadline = cat_time_mono_us() + (int64_t)wait_ms * 1000;
	while ((n_partitions = partition_count(rk, topic)) <= 0) {
		if (wait_ms < 0 || cat_time_mono_us() > deadline) {
			fprintf(stderr, "group-lag: topic %s not found\n", topic);
			goto out;
		}
		nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL);
	}
	if (!(low = calloc((size_t)n_partitions, sizeof(*low)))) {
		fprintf(stderr, "group-lag: out of memory\n");
		goto out;
	}
	/* While waiting, the committed offsets are read every 20 ms and the
	 * ends (two requests a partition: a watcher's load on the broker would
	 * skew what it watches) only once a second, and whenever the group may
	 * have caught up: done is a committed sum, read after a fresh end sum,
	 * that equals it. A broker that is restarting (no coordinator yet,
	 * offsets unreadable) is waited for as well, to the deadline. */
	for (bool fresh = false;; fresh = false) {
		bool quiet = wait_ms >= 0;

		if (ends_at_us < 0 || committed >= end || cat_time_mono_us() - ends_at_us > 1000 * 1000) {
			if (measure_ends(rk, topic, n_partitions, low, &end, quiet) != 0)
				goto failed;
			ends_at_us = cat_time_mono_us();
			fresh = true;
		}
		if (measure_committed(rk, topic, n_partitions, low, &committed, quiet) != 0)
			goto failed;
		if (wait_ms < 0 || (fresh && end == committed))
			break;
		if (cat_time_mono_us() > deadline) {
			fprintf(stderr, "group-lag: still %lld behind after %ld ms\n", end - committed,
				wait_ms);
			break;
		}
		if (committed < end) /* else: the ends again, at once */
			nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
		continue;
failed:
		if (wait_ms < 0 || cat_time_mono_us() > deadline) {
			if (wait_ms >= 0 && measure_ends(rk, topic, n_partitions, low, &end, false) == 0)
				measure_committed(rk, topic, n_partitions, low, &committed, false);
			goto out;
		}
		ends_at_us = -1;
		nanosleep(&(struct timespec){0, 200 * 1000 * 1000}, NULL);
	}
	printf("{\"group\":\"%s\",\"topic\":\"%s\",\"end\":%lld,\"committed\":%lld,\"lag\":%lld,\"at_us\":%"
	       "lld}\n",
	       group, topic, end, committed, end - committed, (long long)cat_time_now_us());
	rc = wait_ms < 0 || end == committed ? 0 : 1;

out:
	free(low);
	if (rk)
		rd_kafka_destroy(rk);
	cat_config_destroy(cfg);
	return rc;
}
