#include "cat_consumer.h"

#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cat_backoff.h"
#include "cat_log.h"
#include "cat_time.h"

/* Messages polled for one partition and not yet stored, in offset order:
 * the first `applied` are applied and settling (their offsets are stored
 * when they settle), the rest wait for their batch. */
typedef struct part_buf {
	char *topic;
	int32_t partition;
	rd_kafka_message_t **msgs;
	int64_t *issued; /* of each applied message: issued_at_us, 0 unknown, -1 dead-lettered */
	size_t n, cap;
	size_t applied;
	int64_t first_at_us; /* when the oldest message waiting for its batch arrived (monotonic) */
	unsigned revokes;    /* bumped at each revocation: a batch begun before it is void */
	cat_metric_t *lag;   /* catalyst_consumer_lag{topic,partition} */
	int64_t stats_lag;   /* the lag the statistics last gave (-1: none yet) */
	int64_t next_offset; /* after the last message polled (-1: none yet) */
} part_buf_t;

/* How a batch ended. */
typedef enum batch_result {
	BATCH_DONE,      /* applied or dead-lettered, offsets stored */
	BATCH_ABANDONED, /* revoked or out of grace: nothing more stored */
	BATCH_FATAL,
} batch_result_t;

struct cat_consumer {
	rd_kafka_t *rk;
	bool rk_assigned; /* rk's group assigned it partitions at least once */
	const cat_config_t *cfg; /* borrowed: the client is made again from it */
	int recreations;	 /* consecutive recreations of the client */
	cat_producer_t *dlq;
	char dlq_topic[256];
	char *worker;
	char *group;
	char **topics; /* full names, NULL-terminated */
	cat_handler_t handler;

	int batch_size;
	int linger_ms;
	int backoff_ms;
	int backoff_max_ms;
	int grace_ms;
	int dlq_timeout_ms;

	part_buf_t **parts;
	size_t n_parts;

	volatile sig_atomic_t *stop;
	int64_t stop_deadline_us; /* 0 until stop is seen */
	cat_msg_t *msg_scratch;   /* batch_size entries, allocated by the first batch (NULL while idle) */
	size_t n_settling;	  /* applied messages whose offsets wait for settle() */
	int settle_attempts;	  /* consecutive settle() failures */
	bool paused;		  /* pause_all(true) holds: partitions assigned now are paused too */

	/* read by the HTTP thread */
	atomic_bool retrying;
	atomic_llong last_poll_us;
	int64_t last_msg_us; /* when the last message arrived (monotonic µs) */
	bool trimmed;	     /* the heap was trimmed since that message */
	int64_t dry_since_us;	  /* polls have returned nothing since (0: a message came) */
	bool fetch_wait;	  /* settling batches wait for the fetcher: a backlog is on the broker */
	int64_t next_wake_us;	  /* no fetcher wake-up before */
	int64_t wake_interval_us; /* between wake-ups; doubles while they bring nothing */
	bool uncommitted;	  /* offsets stored since the last commit when idle */
	pthread_mutex_t reason_lock;
	char retry_reason[256];

	cat_metrics_t *metrics;
	cat_metric_t *m_consumed;
	cat_metric_t *m_applied;
	cat_metric_t *m_dead_lettered;
	cat_metric_t *m_retries;
	cat_metric_t *m_rebalances;
	cat_metric_t *m_batch_size;
	cat_metric_t *m_latency;
	cat_metric_t *m_assigned;
	cat_metric_t *m_abandoned;
	cat_metric_t *m_fetch_wakes;
	cat_metric_t *m_recreated;
	cat_metric_t *m_latency_future; /* issued_at_us samples left out of the histogram */
	cat_metric_t *m_latency_absurd;

	/* the dead letters of the batch being dead-lettered: their delivery
	 * reports carry (generation << 32 | index) and land here while the
	 * generation is current */
	uint32_t dlq_generation;
	uint8_t *dlq_states;
	size_t dlq_n_states;
};

#define LAG_HELP "messages behind the partition's end (from librdkafka statistics)"
#define SETTLE_MAX_BATCHES 4 /* settle once this many batches' worth of messages are settling */
#define IDLE_TRIM_US	   (2 * 1000000) /* idle this long after traffic: the free heap goes back to the OS */
#define SETTLE_BACKLOG_WAIT_US (20 * 1000) /* a dry poll with a backlog on the broker waits this long for \
					    * the fetcher before the settling batches settle */
#define WAKE_DRY_US	   (50 * 1000)	 /* nothing polled this long while partitions lag: wake the fetcher */
/* A partial batch is handed over after this long even while more keeps
 * coming for other partitions (the queue never running dry). */
#define PARTIAL_MAX_WAIT_MS 100
#define WAKE_INTERVAL_MIN_US (250 * 1000)
#define WAKE_INTERVAL_MAX_US (8 * 1000000)
/* The DLQ producer takes any message the consumer can fetch; a letter the
 * broker still refuses as too large goes out truncated to this much of its
 * value (and DLQ_TRUNCATED_KEY of its key), with the original size and
 * sha256 in headers. */
#define DLQ_MESSAGE_MAX_BYTES "67108864"
#define DLQ_TRUNCATED_VALUE   (64 * 1024)
#define DLQ_TRUNCATED_KEY     1024
/* A producer's issued_at_us feeds the latency histogram unless it is past
 * the worker's clock by more than the skew allowed, or older than a year:
 * those are counted apart (catalyst_latency_samples_ignored_total). */
#define LATENCY_FUTURE_US (5LL * 1000000)
#define LATENCY_ABSURD_US (365LL * 86400 * 1000000)
#define RECREATE_BACKOFF_MIN_MS 500   /* before a failed client is made again; doubles */
#define RECREATE_BACKOFF_MAX_MS 30000

static const double batch_size_buckets[] = { 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000 };
static const double latency_buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
					  0.5,   1,      2.5,   5,    10,    30,   60,  300 };

/* --- partition buffers ------------------------------------------------------ */

static part_buf_t *part_find(cat_consumer_t *consumer, const char *topic, int32_t partition)
{
	for (size_t i = 0; i < consumer->n_parts; i++)
		if (consumer->parts[i]->partition == partition && strcmp(consumer->parts[i]->topic, topic) == 0)
			return consumer->parts[i];
	return NULL;
}

static part_buf_t *part_get(cat_consumer_t *consumer, const char *topic, int32_t partition)
{
	part_buf_t *part = part_find(consumer, topic, partition), **grown;
	char pstr[16];

	if (part)
		return part;
	part = calloc(1, sizeof(*part));
	grown = realloc(consumer->parts, (consumer->n_parts + 1) * sizeof(*grown));
	if (!part || !grown || !(part->topic = strdup(topic))) {
		free(part);
		if (grown)
			consumer->parts = grown;
		return NULL;
	}
	consumer->parts = grown;
	part->partition = partition;
	part->stats_lag = -1;
	part->next_offset = -1;
	snprintf(pstr, sizeof(pstr), "%d", (int)partition);
	part->lag = cat_metrics_gauge(consumer->metrics, "catalyst_consumer_lag", LAG_HELP, "group",
				      consumer->group, "topic", topic, "partition", pstr, NULL);
	consumer->parts[consumer->n_parts++] = part;
	return part;
}

/* Drops the first n buffered messages. */
static void part_drop(cat_consumer_t *consumer, part_buf_t *part, size_t n)
{
	size_t unsettled = n < part->applied ? n : part->applied;
	bool pending_dropped = n > part->applied;

	if (n == 0)
		return; /* (an idle partition's buffer may be freed: msgs NULL) */
	for (size_t i = 0; i < n; i++)
		rd_kafka_message_destroy(part->msgs[i]);
	memmove(part->msgs, part->msgs + n, (part->n - n) * sizeof(*part->msgs));
	memmove(part->issued, part->issued + n, (part->n - n) * sizeof(*part->issued));
	part->n -= n;
	part->applied -= unsettled;
	consumer->n_settling -= unsettled;
	if (part->n == part->applied)
		part->first_at_us = 0;
	else if (pending_dropped)
		part->first_at_us = cat_time_mono_us();
}

static cat_err_t part_push(part_buf_t *part, rd_kafka_message_t *rkm)
{
	if (part->n == part->cap) {
		size_t cap = part->cap ? part->cap * 2 : 64;
		rd_kafka_message_t **grown = realloc(part->msgs, cap * sizeof(*grown));
		int64_t *issued;

		if (!grown)
			return CAT_ERR_FATAL;
		part->msgs = grown;
		if (!(issued = realloc(part->issued, cap * sizeof(*issued))))
			return CAT_ERR_FATAL;
		part->issued = issued;
		part->cap = cap;
	}
	if (part->n == part->applied)
		part->first_at_us = cat_time_mono_us();
	part->issued[part->n] = 0;
	part->msgs[part->n++] = rkm;
	part->next_offset = rkm->offset + 1;
	return CAT_OK;
}

static void part_free(cat_consumer_t *consumer, part_buf_t *part)
{
	if (!part)
		return;
	part_drop(consumer, part, part->n);
	free(part->msgs);
	free(part->issued);
	free(part->topic);
	free(part);
}

/* --- readiness ----------------------------------------------------------------- */

static void set_retrying(cat_consumer_t *consumer, const char *reason)
{
	pthread_mutex_lock(&consumer->reason_lock);
	snprintf(consumer->retry_reason, sizeof(consumer->retry_reason), "%s", reason ? reason : "");
	pthread_mutex_unlock(&consumer->reason_lock);
	atomic_store(&consumer->retrying, reason != NULL);
}

bool cat_consumer_ready(void *opaque, char *reason, size_t reason_size)
{
	cat_consumer_t *consumer = opaque;
	int64_t since_poll_ms = (cat_time_mono_us() - atomic_load(&consumer->last_poll_us)) / 1000;

	if (atomic_load(&consumer->retrying)) {
		pthread_mutex_lock(&consumer->reason_lock);
		snprintf(reason, reason_size, "retrying: %s", consumer->retry_reason);
		pthread_mutex_unlock(&consumer->reason_lock);
		return false;
	}
	if (atomic_load(&consumer->last_poll_us) == 0 || since_poll_ms > 30000) {
		snprintf(reason, reason_size, "consume loop not polling");
		return false;
	}
	if (consumer->handler.ready)
		return consumer->handler.ready(consumer->handler.opaque, reason, reason_size);
	return true;
}

/* --- librdkafka callbacks ------------------------------------------------------ */

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *list,
			 void *opaque)
{
	cat_consumer_t *consumer = opaque;
	bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
	rd_kafka_error_t *error = NULL;

	cat_metrics_inc(consumer->m_rebalances);
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		cat_log_write(CAT_LOG_LEVEL_INFO, "KAFKA", "assigned %d partitions", list->cnt);
		consumer->rk_assigned = true;
		consumer->recreations = 0;
		if (cooperative)
			error = rd_kafka_incremental_assign(rk, list);
		else
			rd_kafka_assign(rk, list);
		/* librdkafka keeps a partition's pause across an unassign: what
		 * comes in follows the loop's state, not a pause of long ago */
		if (consumer->paused)
			rd_kafka_pause_partitions(rk, list);
		else
			rd_kafka_resume_partitions(rk, list);
		cat_metrics_add(consumer->m_assigned, list->cnt);
	} else {
		bool lost = rd_kafka_assignment_lost(rk);

		cat_log_write(CAT_LOG_LEVEL_INFO, "KAFKA", "%s %d partitions", lost ? "lost" : "revoked",
			      list->cnt);
		/* what is stored is durable: hand it to the next owner now */
		if (!lost) {
			rd_kafka_resp_err_t cerr = rd_kafka_commit(rk, list, 0);

			if (cerr && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
				cat_log_write(CAT_LOG_LEVEL_WARN, "KAFKA", "could not commit on revoke: %s",
					      rd_kafka_err2str(cerr));
		}
		for (int i = 0; i < list->cnt; i++) {
			part_buf_t *part = part_find(consumer, list->elems[i].topic, list->elems[i].partition);

			if (part) {
				part->revokes++;
				part_drop(consumer, part, part->n);
				part->next_offset = -1;
				part->stats_lag = -1;
				cat_metrics_set(part->lag, 0);
			}
		}
		if (cooperative)
			error = rd_kafka_incremental_unassign(rk, list);
		else
			rd_kafka_assign(rk, NULL);
		cat_metrics_add(consumer->m_assigned, -list->cnt);
	}
	if (error) {
		cat_log_write(CAT_LOG_LEVEL_ERROR, "KAFKA", "could not apply rebalance: %s",
			      rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
}

/* statistics.interval.ms: per-partition consumer lag into the gauges. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
	cat_consumer_t *consumer = opaque;
	json_t *root = json_loadb(json, json_len, 0, NULL), *topics, *topic, *partitions, *partition;
	const char *topic_name, *pkey;

	if (!root)
		return 0;
	topics = json_object_get(root, "topics");
	json_object_foreach(topics, topic_name, topic)
	{
		partitions = json_object_get(topic, "partitions");
		json_object_foreach(partitions, pkey, partition)
		{
			int32_t p = (int32_t)atoi(pkey);
			part_buf_t *part;
			json_t *lag = json_object_get(partition, "consumer_lag");

			if (p < 0 || !json_is_integer(lag) || json_integer_value(lag) < 0)
				continue;
			/* (only assigned partitions have a lag: those nothing was
			 * polled from yet get their buffer and gauge here) */
			part = part_get(consumer, topic_name, p);
			if (part) {
				part->stats_lag = json_integer_value(lag);
				cat_metrics_set(part->lag, part->stats_lag);
			}
		}
	}
	json_decref(root);
	return 0; /* librdkafka frees json */
}

/* --- set-up ---------------------------------------------------------------------- */

/* Sets a property unless the operator set it through CATALYST_KAFKA_*. */
static cat_err_t conf_default(rd_kafka_conf_t *conf, const cat_config_t *cfg, const char *name,
			      const char *value, char *errstr, size_t errstr_size)
{
	if (cat_config_kafka(cfg, name))
		return CAT_OK;
	return cat_kafka_conf_set(conf, name, value, errstr, errstr_size);
}

/* Makes the Kafka consumer of `consumer` and subscribes it (at start, and
 * again after a fatal error). */
static void dead_letter_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *rkm,
			       void *opaque);

static cat_err_t client_new(cat_consumer_t *consumer, char *errstr, size_t errstr_size)
{
	const cat_config_t *cfg = consumer->cfg;
	rd_kafka_conf_t *conf = NULL;
	rd_kafka_topic_partition_list_t *subscription = NULL;
	char buf[64], kerr[512];
	size_t n_topics = 0;
	cat_err_t err;

	consumer->rk_assigned = false;
	if ((err = cat_kafka_conf_new(&conf, cfg, consumer->worker, errstr, errstr_size)) != CAT_OK)
		goto error;
	snprintf(buf, sizeof(buf), "%lld", cat_config_int(cfg, "CATALYST_COMMIT_INTERVAL_MS"));
	/* the contract: offsets stored by us only, committed by librdkafka's timer */
	if ((err = cat_kafka_conf_set(conf, "group.id", consumer->group, errstr, errstr_size)) ||
	    (err = cat_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, errstr_size)) ||
	    (err = cat_kafka_conf_set(conf, "enable.auto.commit", "true", errstr, errstr_size)) ||
	    (err = cat_kafka_conf_set(conf, "auto.commit.interval.ms", buf, errstr, errstr_size)) ||
	    (err = conf_default(conf, cfg, "partition.assignment.strategy", "cooperative-sticky", errstr,
				errstr_size)) ||
	    (err = conf_default(conf, cfg, "auto.offset.reset", "earliest", errstr, errstr_size)) ||
	    (err = conf_default(conf, cfg, "statistics.interval.ms", "5000", errstr, errstr_size)) ||
	    /* bounded memory: what librdkafka prefetches (the consumer queue) */
	    (err = conf_default(conf, cfg, "queued.max.messages.kbytes", "8192", errstr, errstr_size)) ||
	    (err = conf_default(conf, cfg, "fetch.max.bytes", "4194304", errstr, errstr_size)) ||
	    (err = conf_default(conf, cfg, "max.partition.fetch.bytes", "1048576", errstr, errstr_size)))
		goto error;
	if (cat_config_is_set(cfg, "CATALYST_GROUP_INSTANCE_ID") &&
	    (err = cat_kafka_conf_set(conf, "group.instance.id",
				      cat_config_str(cfg, "CATALYST_GROUP_INSTANCE_ID"), errstr, errstr_size)))
		goto error;
	rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
	rd_kafka_conf_set_stats_cb(conf, stats_cb);
	rd_kafka_conf_set_opaque(conf, consumer);

	consumer->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
	if (!consumer->rk) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not create kafka consumer: %s", kerr);
		goto error;
	}
	conf = NULL; /* owned by consumer->rk */
	rd_kafka_poll_set_consumer(consumer->rk);

	while (consumer->topics[n_topics])
		n_topics++;
	subscription = rd_kafka_topic_partition_list_new((int)n_topics);
	for (size_t i = 0; i < n_topics; i++)
		rd_kafka_topic_partition_list_add(subscription, consumer->topics[i], RD_KAFKA_PARTITION_UA);
	rd_kafka_resp_err_t kr = rd_kafka_subscribe(consumer->rk, subscription);
	rd_kafka_topic_partition_list_destroy(subscription);
	if (kr) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not subscribe: %s",
				  rd_kafka_err2str(kr));
		goto error;
	}
	return CAT_OK;

error:
	if (conf)
		rd_kafka_conf_destroy(conf);
	return err;
}

cat_err_t cat_consumer_new(cat_consumer_t **out, const cat_config_t *cfg, const char *worker,
			   const char *group, const char *const *topics, const cat_handler_t *handler,
			   cat_metrics_t *metrics, char *errstr, size_t errstr_size)
{
	cat_consumer_t *consumer;
	char buf[256];
	size_t n_topics = 0;
	cat_err_t err;

	*out = NULL;
	consumer = calloc(1, sizeof(*consumer));
	if (!consumer)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	pthread_mutex_init(&consumer->reason_lock, NULL);
	consumer->handler = *handler;
	consumer->metrics = metrics;
	consumer->cfg = cfg;
	consumer->batch_size = (int)cat_config_int(cfg, "CATALYST_BATCH_SIZE");
	consumer->linger_ms = (int)cat_config_int(cfg, "CATALYST_BATCH_LINGER_MS");
	consumer->backoff_ms = (int)cat_config_int(cfg, "CATALYST_RETRY_BACKOFF_MS");
	consumer->backoff_max_ms = (int)cat_config_int(cfg, "CATALYST_RETRY_BACKOFF_MAX_MS");
	consumer->grace_ms = (int)cat_config_int(cfg, "CATALYST_SHUTDOWN_GRACE_MS");
	consumer->wake_interval_us = WAKE_INTERVAL_MIN_US;
	consumer->dlq_timeout_ms = (int)cat_config_int(cfg, "CATALYST_DLQ_TIMEOUT_MS");
	cat_kafka_topic(cfg, CAT_TOPIC_DLQ, consumer->dlq_topic, sizeof(consumer->dlq_topic));
	while (topics[n_topics])
		n_topics++;
	consumer->worker = strdup(worker);
	consumer->group = strdup(group);
	consumer->topics = calloc(n_topics + 1, sizeof(char *));
	if (!consumer->worker || !consumer->group || !consumer->topics) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	for (size_t i = 0; i < n_topics; i++)
		if (!(consumer->topics[i] = strdup(cat_kafka_topic(cfg, topics[i], buf, sizeof(buf))))) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto error;
		}

	/* one lag series per assigned partition, created on assignment: the
	 * name is on /metrics from the start */
	if (metrics && cat_metrics_declare_gauge(metrics, "catalyst_consumer_lag", LAG_HELP) != CAT_OK) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not declare catalyst_consumer_lag");
		goto error;
	}
	consumer->m_consumed = cat_metrics_counter(metrics, "catalyst_messages_consumed_total",
						   "messages polled from Kafka", NULL);
	consumer->m_applied = cat_metrics_counter(metrics, "catalyst_messages_applied_total",
						  "messages whose effect is durable", NULL);
	consumer->m_dead_lettered = cat_metrics_counter(metrics, "catalyst_messages_dead_lettered_total",
							"messages sent to the dead-letter topic", NULL);
	consumer->m_retries = cat_metrics_counter(metrics, "catalyst_retries_total",
						  "batch attempts that failed transiently and were retried", NULL);
	consumer->m_rebalances = cat_metrics_counter(metrics, "catalyst_rebalances_total",
						     "partition assignments and revocations", NULL);
	consumer->m_abandoned = cat_metrics_counter(metrics, "catalyst_batches_abandoned_total",
						    "batches given up unstored (revoked, or shutdown grace over)",
						    NULL);
	consumer->m_fetch_wakes = cat_metrics_counter(
		metrics, "catalyst_fetch_wakeups_total",
		"fetchers woken after the local queue ran dry while the broker held more", NULL);
	consumer->m_assigned = cat_metrics_gauge(metrics, "catalyst_assigned_partitions",
						 "partitions this worker owns", NULL);
	consumer->m_batch_size = cat_metrics_histogram(metrics, "catalyst_batch_size", "messages per batch",
						       batch_size_buckets,
						       sizeof(batch_size_buckets) / sizeof(batch_size_buckets[0]),
						       NULL);
	consumer->m_latency = cat_metrics_histogram(
		metrics, "catalyst_end_to_end_latency_seconds",
		"from the command's issued_at_us to its effect being durable", latency_buckets,
		sizeof(latency_buckets) / sizeof(latency_buckets[0]), NULL);

	consumer->m_latency_future = cat_metrics_counter(
		metrics, "catalyst_latency_samples_ignored_total",
		"commands whose issued_at_us was left out of the latency histogram", "reason", "future", NULL);
	consumer->m_latency_absurd = cat_metrics_counter(
		metrics, "catalyst_latency_samples_ignored_total",
		"commands whose issued_at_us was left out of the latency histogram", "reason", "absurd", NULL);
	consumer->m_recreated = cat_metrics_counter(
		metrics, "catalyst_kafka_consumer_recreated_total",
		"Kafka consumers closed and made again after a fatal error (e.g. fenced by the broker)", NULL);

	snprintf(buf, sizeof(buf), "%s-dlq", worker);
	if ((err = cat_producer_new_with(&consumer->dlq, cfg, buf, consumer->dlq_timeout_ms, dead_letter_report,
					 consumer, "message.max.bytes", DLQ_MESSAGE_MAX_BYTES, errstr, errstr_size)) !=
	    CAT_OK)
		goto error;
	if ((err = client_new(consumer, errstr, errstr_size)) != CAT_OK)
		goto error;
	*out = consumer;
	return CAT_OK;

error:
	cat_consumer_destroy(consumer);
	return err;
}

/* --- dead letters ------------------------------------------------------------------ */

/* How a dead letter fared (cat_msg_t.dlq_state). */
enum {
	DLQ_PENDING,
	DLQ_DELIVERED,
	DLQ_TOO_LARGE, /* refused for its size: goes again truncated */
	DLQ_FAILED,
};

/* The DLQ producer's delivery reports (a late one, of a batch given up, is
 * dropped). */
static void dead_letter_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *rkm,
			       void *opaque)
{
	cat_consumer_t *consumer = opaque;
	uint64_t tag = (uint64_t)(uintptr_t)msg_opaque;
	size_t i = (size_t)(tag & 0xffffffffu);

	(void)rkm;
	if (!consumer || !consumer->dlq_states || (uint32_t)(tag >> 32) != consumer->dlq_generation ||
	    i >= consumer->dlq_n_states)
		return;
	consumer->dlq_states[i] = err == RD_KAFKA_RESP_ERR_NO_ERROR		  ? DLQ_DELIVERED
			 : err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
				   err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE
			     ? DLQ_TOO_LARGE
			     : DLQ_FAILED;
}

/* Hex sha256 of `data` into hex (65 bytes). */
static void sha256_hex(const void *data, size_t len, char *hex)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	hex[0] = '\0';
	if (EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL) != 1)
		return;
	for (unsigned int i = 0; i < md_len && i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* Sends the dead letter of `msg`: the original key and value with the
 * reason and source in headers; `truncated`: only the start of each, with
 * the original sizes and sha256. */
static cat_err_t dead_letter_send(cat_consumer_t *consumer, const cat_msg_t *msg, size_t i, bool truncated,
				  char *errstr, size_t errstr_size)
{
	const rd_kafka_message_t *rkm = msg->rkm;
	rd_kafka_headers_t *headers = rd_kafka_headers_new(10);
	char partition[16], offset[32], failed_at[40], size[32], key_size[32], sha[65];
	size_t key_len = rkm->key_len, len = rkm->len;
	cat_err_t err;

	snprintf(partition, sizeof(partition), "%d", (int)rkm->partition);
	snprintf(offset, sizeof(offset), "%lld", (long long)rkm->offset);
	cat_time_format_rfc3339(cat_time_now_us(), failed_at, sizeof(failed_at));
	rd_kafka_header_add(headers, "x-catalyst-error", -1, msg->reason, -1);
	rd_kafka_header_add(headers, "x-catalyst-source-topic", -1, rd_kafka_topic_name(rkm->rkt), -1);
	rd_kafka_header_add(headers, "x-catalyst-source-partition", -1, partition, -1);
	rd_kafka_header_add(headers, "x-catalyst-source-offset", -1, offset, -1);
	rd_kafka_header_add(headers, "x-catalyst-worker", -1, consumer->worker, -1);
	rd_kafka_header_add(headers, "x-catalyst-failed-at", -1, failed_at, -1);
	if (truncated) {
		snprintf(size, sizeof(size), "%zu", rkm->len);
		snprintf(key_size, sizeof(key_size), "%zu", rkm->key_len);
		sha256_hex(rkm->payload, rkm->len, sha);
		rd_kafka_header_add(headers, "x-catalyst-truncated", -1, "true", -1);
		rd_kafka_header_add(headers, "x-catalyst-original-size", -1, size, -1);
		rd_kafka_header_add(headers, "x-catalyst-original-sha256", -1, sha, -1);
		rd_kafka_header_add(headers, "x-catalyst-original-key-size", -1, key_size, -1);
		if (key_len > DLQ_TRUNCATED_KEY)
			key_len = DLQ_TRUNCATED_KEY;
		if (len > DLQ_TRUNCATED_VALUE)
			len = DLQ_TRUNCATED_VALUE;
	}
	consumer->dlq_states[i] = DLQ_PENDING;
	err = cat_producer_send(consumer->dlq, consumer->dlq_topic, RD_KAFKA_PARTITION_UA, rkm->key, key_len,
				rkm->payload, len, headers,
				(void *)(uintptr_t)((uint64_t)consumer->dlq_generation << 32 | (uint64_t)i), errstr,
				errstr_size);
	if (err != CAT_OK)
		rd_kafka_headers_destroy(headers); /* still ours on failure */
	return err;
}

/* Sends every message marked permanent to dlq.v1 and waits for all the
 * acknowledgements; a letter refused for its size goes again truncated.
 * Anything short of every letter delivered is retriable. */
static cat_err_t dead_letter_marked(cat_consumer_t *consumer, cat_batch_t *batch, size_t *n_dead,
				    char *errstr, size_t errstr_size)
{
	size_t n_again = 0;
	cat_err_t err = CAT_OK;

	*n_dead = 0;
	for (size_t i = 0; i < batch->n; i++)
		if (batch->msgs[i].result != CAT_OK)
			(*n_dead)++;
	if (*n_dead == 0)
		return CAT_OK;
	if (!(consumer->dlq_states = calloc(batch->n, 1)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	consumer->dlq_n_states = batch->n;
	consumer->dlq_generation++;
	for (size_t i = 0; i < batch->n; i++) {
		cat_msg_t *msg = &batch->msgs[i];

		if (msg->result == CAT_OK)
			continue;
		if (msg->dead_lettered) {
			consumer->dlq_states[i] = DLQ_DELIVERED;
			continue;
		}
		if (!msg->reason[0])
			snprintf(msg->reason, sizeof(msg->reason), "rejected by %s", consumer->worker);
		err = dead_letter_send(consumer, msg, i, false, errstr, errstr_size);
		if (err == CAT_ERR_PERMANENT) /* larger than the producer takes */
			err = dead_letter_send(consumer, msg, i, true, errstr, errstr_size);
		if (err != CAT_OK)
			goto out;
	}
	if ((err = cat_producer_flush(consumer->dlq, consumer->dlq_timeout_ms + 5000, errstr, errstr_size)) !=
	    CAT_OK)
		goto out;
	for (size_t i = 0; i < batch->n; i++) {
		const cat_msg_t *msg = &batch->msgs[i];

		if (msg->result == CAT_OK || consumer->dlq_states[i] != DLQ_TOO_LARGE)
			continue;
		cat_log_write(CAT_LOG_LEVEL_WARN, "DLQ",
			      "%s [%d] offset %lld: dead letter of %zu bytes refused for its size: sending it "
			      "truncated",
			      batch->topic, (int)batch->partition, (long long)msg->rkm->offset, msg->rkm->len);
		if ((err = dead_letter_send(consumer, msg, i, true, errstr, errstr_size)) != CAT_OK)
			goto out;
		n_again++;
	}
	if (n_again > 0 &&
	    (err = cat_producer_flush(consumer->dlq, consumer->dlq_timeout_ms + 5000, errstr, errstr_size)) !=
		    CAT_OK)
		goto out;
	for (size_t i = 0; i < batch->n; i++)
		if (batch->msgs[i].result != CAT_OK && consumer->dlq_states[i] != DLQ_DELIVERED) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					  "could not deliver a dead letter to %s", consumer->dlq_topic);
			goto out;
		}
	for (size_t i = 0; i < batch->n; i++) {
		json_t *where;

		if (batch->msgs[i].result == CAT_OK || batch->msgs[i].dead_lettered)
			continue;
		batch->msgs[i].dead_lettered = true;
		where = json_pack("{s:s, s:i, s:I}", "topic", batch->topic, "partition", (int)batch->partition,
				  "offset", (json_int_t)batch->msgs[i].rkm->offset);
		cat_log_kv(CAT_LOG_LEVEL_WARN, "DLQ", where, "dead-lettered message: %s", batch->msgs[i].reason);
		json_decref(where);
	}

out:
	free(consumer->dlq_states);
	consumer->dlq_states = NULL;
	consumer->dlq_n_states = 0;
	if (err != CAT_OK && err != CAT_ERR_FATAL)
		err = CAT_ERR_RETRIABLE;
	return err;
}

/* --- the batch ------------------------------------------------------------------------ */

/* Pauses or resumes every partition this consumer owns. */
static void pause_all(cat_consumer_t *consumer, bool pause)
{
	rd_kafka_topic_partition_list_t *assignment = NULL;

	consumer->paused = pause;
	if (rd_kafka_assignment(consumer->rk, &assignment) != RD_KAFKA_RESP_ERR_NO_ERROR || !assignment)
		return;
	if (pause)
		rd_kafka_pause_partitions(consumer->rk, assignment);
	else
		rd_kafka_resume_partitions(consumer->rk, assignment);
	rd_kafka_topic_partition_list_destroy(assignment);
}

/*
 * Wakes a fetcher that sleeps while the broker holds messages for us.
 *
 * librdkafka (2.0, Debian's) stops fetching a partition once the local queue
 * reaches queued.max.messages.kbytes and looks again only when its broker
 * thread wakes, up to a second later: a worker faster than that drains the
 * queue and waits out the rest of the second (later releases made this
 * fetch.queue.backoff.ms). A seek wakes the thread of the partition's
 * broker, which then decides again which of its partitions to fetch: each
 * partition something was polled from is sought to where the worker stands
 * (the position after the last message polled). The queue being empty, that
 * drops nothing; what a fetch in flight brings meanwhile is fetched again
 * from the same position. Done when some partition may be behind: the
 * broker's end, as of the last fetch, is past the position, or, for a
 * partition nothing was polled from yet, the statistics have not said its
 * lag is 0. Wake-ups that bring nothing (e.g. a compacted tail) come ever
 * rarer. (A request to the broker would wake it too, but waits behind a
 * fetch in flight, and its timeout is only checked once a second.)
 */
static void wake_fetcher(cat_consumer_t *consumer, int64_t now)
{
	rd_kafka_topic_partition_list_t *assignment = NULL, *known = NULL;
	bool behind = false;

	consumer->next_wake_us = now + consumer->wake_interval_us;
	if (rd_kafka_assignment(consumer->rk, &assignment) != RD_KAFKA_RESP_ERR_NO_ERROR || !assignment)
		return;
	if (assignment->cnt > 0 && rd_kafka_position(consumer->rk, assignment) == RD_KAFKA_RESP_ERR_NO_ERROR &&
	    (known = rd_kafka_topic_partition_list_new(assignment->cnt))) {
		for (int i = 0; i < assignment->cnt; i++) {
			const rd_kafka_topic_partition_t *tp = &assignment->elems[i];
			const part_buf_t *part;
			int64_t low, high;

			if (tp->offset >= 0) {
				rd_kafka_topic_partition_list_add(known, tp->topic, tp->partition)->offset = tp->offset;
				behind = behind || (rd_kafka_get_watermark_offsets(consumer->rk, tp->topic, tp->partition,
										   &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR &&
						    high > tp->offset);
			} else {
				part = part_find(consumer, tp->topic, tp->partition);
				behind = behind || !part || part->stats_lag != 0;
			}
		}
	}
	if (behind && known->cnt > 0) {
		rd_kafka_error_t *error = rd_kafka_seek_partitions(consumer->rk, known, 0);

		if (error) {
			cat_log_write(CAT_LOG_LEVEL_DEBUG, "KAFKA", "could not wake the fetcher: %s",
				      rd_kafka_error_string(error));
			rd_kafka_error_destroy(error);
		} else {
			cat_log_write(CAT_LOG_LEVEL_DEBUG, "KAFKA",
				      "nothing to poll for %lld ms while partitions may lag: fetcher woken",
				      (long long)(now - consumer->dry_since_us) / 1000);
			cat_metrics_inc(consumer->m_fetch_wakes);
		}
		consumer->wake_interval_us = consumer->wake_interval_us * 2 > WAKE_INTERVAL_MAX_US
						     ? WAKE_INTERVAL_MAX_US
						     : consumer->wake_interval_us * 2;
	}
	if (known)
		rd_kafka_topic_partition_list_destroy(known);
	rd_kafka_topic_partition_list_destroy(assignment);
}

/* Polls (serving rebalances, keeping the membership) while waiting; returns
 * false when the wait should end early: the batch's partition was revoked,
 * or the shutdown grace period is over. */
static bool poll_once(cat_consumer_t *consumer, int timeout_ms);

static bool wait_polling(cat_consumer_t *consumer, part_buf_t *part, unsigned revokes, int64_t wait_us)
{
	int64_t until = cat_time_mono_us() + wait_us;

	while (cat_time_mono_us() < until) {
		if (part && part->revokes != revokes)
			return false;
		if (*consumer->stop && !consumer->stop_deadline_us)
			consumer->stop_deadline_us = cat_time_mono_us() + (int64_t)consumer->grace_ms * 1000;
		if (consumer->stop_deadline_us && cat_time_mono_us() >= consumer->stop_deadline_us)
			return false;
		poll_once(consumer, 50);
	}
	return !part || part->revokes == revokes;
}

/* Stores the offset after the applied messages of `part` and drops them:
 * their effects are durable. */
static void part_settle(cat_consumer_t *consumer, part_buf_t *part)
{
	rd_kafka_topic_partition_list_t *offsets;
	int64_t now_us = cat_time_now_us(), n_dead = 0;
	size_t n = part->applied;

	if (n == 0)
		return;
	offsets = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(offsets, part->topic, part->partition)->offset =
		part->msgs[n - 1]->offset + 1;
	rd_kafka_offsets_store(consumer->rk, offsets);
	rd_kafka_topic_partition_list_destroy(offsets);
	consumer->uncommitted = true;
	for (size_t i = 0; i < n; i++) {
		int64_t issued = part->issued[i];

		if (issued < 0)
			n_dead++;
		else if (issued == 0)
			continue;
		else if (issued > now_us + LATENCY_FUTURE_US)
			cat_metrics_inc(consumer->m_latency_future);
		else if (now_us - issued > LATENCY_ABSURD_US)
			cat_metrics_inc(consumer->m_latency_absurd);
		else
			cat_metrics_observe(consumer->m_latency, issued > now_us ? 0 : (double)(now_us - issued) / 1e6);
	}
	cat_metrics_add(consumer->m_applied, (int64_t)n - n_dead);
	cat_metrics_add(consumer->m_dead_lettered, n_dead);
	part_drop(consumer, part, n);
}

/* Settles every applied batch: the handler's settle() (when it has one),
 * then their offsets are stored. On failure nothing is stored and the
 * batches are applied again from the start. */
static cat_err_t settle_all(cat_consumer_t *consumer, int timeout_ms, char *errstr, size_t errstr_size)
{
	cat_err_t err = CAT_OK;

	if (consumer->n_settling == 0)
		return CAT_OK;
	if (consumer->handler.settle)
		err = consumer->handler.settle(consumer->handler.opaque, timeout_ms, errstr, errstr_size);
	for (size_t i = 0; i < consumer->n_parts; i++) {
		part_buf_t *part = consumer->parts[i];

		if (err == CAT_OK) {
			part_settle(consumer, part);
		} else {
			consumer->n_settling -= part->applied;
			part->applied = 0;
			part->first_at_us = 0; /* due at once */
		}
	}
	return err;
}

/* Applies msgs[0..n) of `part`, retrying transient failures and splitting
 * on permanent ones. On BATCH_DONE every message in range is applied or
 * dead-lettered and the offset after the range is stored. */
static batch_result_t apply_range(cat_consumer_t *consumer, part_buf_t *part, cat_msg_t *msgs, size_t n)
{
	cat_batch_t batch = { part->topic, part->partition, msgs, n };
	unsigned revokes = part->revokes;
	int attempts = 0;
	char errstr[512];

	for (;;) {
		cat_err_t err;
		size_t n_dead = 0;

		for (size_t i = 0; i < n; i++) {
			msgs[i].result = CAT_OK;
			msgs[i].reason[0] = '\0';
		}
		errstr[0] = '\0';
		err = consumer->handler.apply(consumer->handler.opaque, &batch, errstr, sizeof(errstr));
		if (err == CAT_ERR_PERMANENT && n == 1) {
			/* the bad message, isolated */
			if (msgs[0].result == CAT_OK) {
				msgs[0].result = CAT_ERR_PERMANENT;
				snprintf(msgs[0].reason, sizeof(msgs[0].reason), "%s", errstr);
			}
			err = CAT_OK;
		}
		if (err == CAT_OK)
			err = dead_letter_marked(consumer, &batch, &n_dead, errstr, sizeof(errstr));

		switch (err) {
		case CAT_OK:
			if (attempts > 0) {
				pause_all(consumer, false);
				set_retrying(consumer, NULL);
				cat_log_write(CAT_LOG_LEVEL_INFO, "CONSUMER",
					      "%s [%d]: recovered after %d retries", part->topic, (int)part->partition,
					      attempts);
			}
			/* msgs are the part's buffered messages from `applied` on */
			for (size_t i = 0; i < n; i++)
				part->issued[part->applied + i] = msgs[i].result != CAT_OK ? -1 : msgs[i].issued_at_us;
			part->applied += n;
			consumer->n_settling += n;
			part->first_at_us = part->n > part->applied ? cat_time_mono_us() : 0;
			if (!consumer->handler.settle)
				part_settle(consumer, part); /* durable already */
			return BATCH_DONE;
		case CAT_ERR_PERMANENT: {
			/* some message can never apply, and the handler cannot say
			 * which: halves, until the bad ones stand alone */
			size_t half = n / 2;
			batch_result_t r;

			cat_log_write(CAT_LOG_LEVEL_INFO, "CONSUMER",
				      "%s [%d] offsets %lld..%lld: isolating a bad message: %s", part->topic,
				      (int)part->partition, (long long)msgs[0].rkm->offset,
				      (long long)msgs[n - 1].rkm->offset, errstr);
			r = apply_range(consumer, part, msgs, half);
			if (r != BATCH_DONE)
				return r;
			return apply_range(consumer, part, msgs + half, n - half);
		}
		case CAT_ERR_RETRIABLE: {
			int64_t wait_ms = cat_backoff_delay(consumer->backoff_ms, consumer->backoff_max_ms, attempts);

			attempts++;
			cat_metrics_inc(consumer->m_retries);
			set_retrying(consumer, errstr);
			cat_log_write(attempts == 1 || attempts % 10 == 0 ? CAT_LOG_LEVEL_WARN : CAT_LOG_LEVEL_DEBUG,
				      "CONSUMER", "%s [%d]: transient failure (attempt %d), retrying in %lld ms: %s",
				      part->topic, (int)part->partition, attempts, (long long)wait_ms, errstr);
			if (attempts == 1)
				pause_all(consumer, true);
			if (!wait_polling(consumer, part, revokes, wait_ms * 1000)) {
				pause_all(consumer, false);
				set_retrying(consumer, NULL);
				return BATCH_ABANDONED;
			}
			continue;
		}
		case CAT_ERR_FATAL:
		default:
			cat_log_write(CAT_LOG_LEVEL_ERROR, "CONSUMER", "%s [%d]: %s", part->topic,
				      (int)part->partition, errstr);
			return BATCH_FATAL;
		}
	}
}

/* Messages of `part` waiting for their batch. */
static size_t part_pending(const part_buf_t *part)
{
	return part->n - part->applied;
}

/* Handles up to batch_size buffered messages of `part`. */
static batch_result_t process_part(cat_consumer_t *consumer, part_buf_t *part)
{
	size_t pending = part_pending(part);
	size_t n = pending < (size_t)consumer->batch_size ? pending : (size_t)consumer->batch_size;
	unsigned revokes = part->revokes;
	batch_result_t r;

	if (!consumer->msg_scratch &&
	    !(consumer->msg_scratch = malloc((size_t)consumer->batch_size * sizeof(cat_msg_t)))) {
		cat_log_write(CAT_LOG_LEVEL_ERROR, "CONSUMER", "%s [%d]: out of memory for a batch of %zu",
			      part->topic, (int)part->partition, n);
		return BATCH_FATAL;
	}
	memset(consumer->msg_scratch, 0, n * sizeof(cat_msg_t));
	for (size_t i = 0; i < n; i++) {
		consumer->msg_scratch[i].rkm = part->msgs[part->applied + i];
		/* -1: dead-lettered when applied before (its batch did not settle) */
		consumer->msg_scratch[i].dead_lettered = part->issued[part->applied + i] == -1;
	}
	cat_metrics_observe(consumer->m_batch_size, (double)n);

	r = apply_range(consumer, part, consumer->msg_scratch, n);
	if (r == BATCH_ABANDONED) {
		cat_metrics_inc(consumer->m_abandoned);
		if (part->revokes == revokes) {
			cat_log_write(CAT_LOG_LEVEL_WARN, "CONSUMER",
				      "%s [%d]: shutdown grace over, batch of %zu abandoned unstored", part->topic,
				      (int)part->partition, n);
			/* what is applied may still settle; the rest is redelivered */
			for (size_t i = part->n; i > part->applied; i--)
				rd_kafka_message_destroy(part->msgs[i - 1]);
			part->n = part->applied;
		}
	}
	return r;
}

/* Settles in the loop: on a transient failure the batches are applied again
 * after the backoff, the partitions paused meanwhile. CAT_OK: go on;
 * CAT_ERR_FATAL (with errstr): stop, failed; CAT_ERR_RETRIABLE: stop, the
 * shutdown grace is over. */
static cat_err_t settle_in_loop(cat_consumer_t *consumer, char *errstr, size_t errstr_size)
{
	char reason[512];
	cat_err_t err = settle_all(consumer, consumer->dlq_timeout_ms, reason, sizeof(reason));
	int64_t wait_ms;

	if (err == CAT_OK) {
		if (consumer->settle_attempts > 0) {
			pause_all(consumer, false);
			set_retrying(consumer, NULL);
			cat_log_write(CAT_LOG_LEVEL_INFO, "CONSUMER", "settled after %d retries",
				      consumer->settle_attempts);
			consumer->settle_attempts = 0;
		}
		return CAT_OK;
	}
	if (err != CAT_ERR_RETRIABLE)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s", reason);
	consumer->settle_attempts++;
	wait_ms = cat_backoff_delay(consumer->backoff_ms, consumer->backoff_max_ms, consumer->settle_attempts - 1);
	cat_metrics_inc(consumer->m_retries);
	set_retrying(consumer, reason);
	cat_log_write(consumer->settle_attempts == 1 || consumer->settle_attempts % 10 == 0 ? CAT_LOG_LEVEL_WARN
											  : CAT_LOG_LEVEL_DEBUG,
		      "CONSUMER", "could not settle the applied batches (attempt %d), applying them again in %lld ms: %s",
		      consumer->settle_attempts, (long long)wait_ms, reason);
	if (consumer->settle_attempts == 1)
		pause_all(consumer, true);
	return wait_polling(consumer, NULL, 0, wait_ms * 1000) ? CAT_OK : CAT_ERR_RETRIABLE;
}

/* --- the loop ---------------------------------------------------------------------------- */

static void destroy_client(rd_kafka_t *rk, bool assigned, int flags);

/*
 * After a fatal error of the Kafka consumer (a static member fenced when the
 * broker restarted, say): what is buffered or applied but not stored is
 * dropped, the client destroyed without a leave (it cannot commit any
 * more) and made again after a backoff. The new client's group hands the
 * partitions back from the committed offsets, so what was not committed is
 * delivered again (the handlers' effects are idempotent). CAT_OK: recreated;
 * CAT_ERR_RETRIABLE: stopped meanwhile; CAT_ERR_FATAL: it could not be made.
 */
static cat_err_t recreate_client(cat_consumer_t *consumer, const char *why, char *errstr, size_t errstr_size)
{
	int64_t backoff_ms = cat_backoff_ceiling(RECREATE_BACKOFF_MIN_MS, RECREATE_BACKOFF_MAX_MS, consumer->recreations);
	int64_t until;
	char reason[384];

	consumer->recreations++;
	cat_metrics_inc(consumer->m_recreated);
	cat_log_write(CAT_LOG_LEVEL_ERROR, "KAFKA",
		      "kafka consumer failed: %s; making it again in %lld ms (what was not committed is "
		      "delivered again)",
		      why, (long long)backoff_ms);
	snprintf(reason, sizeof(reason), "kafka consumer failed, being made again: %s", why);
	set_retrying(consumer, reason);
	for (size_t i = 0; i < consumer->n_parts; i++) {
		part_buf_t *part = consumer->parts[i];

		part->revokes++;
		part_drop(consumer, part, part->n);
		part->stats_lag = -1;
		part->next_offset = -1;
		cat_metrics_set(part->lag, 0);
	}
	consumer->n_settling = 0;
	consumer->settle_attempts = 0;
	consumer->paused = false;
	consumer->uncommitted = false;
	consumer->dry_since_us = 0;
	cat_metrics_set(consumer->m_assigned, 0);
	destroy_client(consumer->rk, consumer->rk_assigned, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	consumer->rk = NULL;

	until = cat_time_mono_us() + backoff_ms * 1000;
	while (!*consumer->stop && cat_time_mono_us() < until) {
		atomic_store(&consumer->last_poll_us, cat_time_mono_us());
		usleep(50 * 1000);
	}
	if (*consumer->stop)
		return CAT_ERR_RETRIABLE;
	if (client_new(consumer, errstr, errstr_size) != CAT_OK)
		return CAT_ERR_FATAL;
	set_retrying(consumer, NULL);
	cat_log_write(CAT_LOG_LEVEL_INFO, "KAFKA", "kafka consumer made again; rejoining group %s",
		      consumer->group);
	return CAT_OK;
}

/* Polls once; true when a message arrived. */
/* Whether the pending messages of `part` go to the handler now: by
 * backlog, not by clock. A full batch goes; a partial one goes once nothing
 * more is queued (`got`: the last poll brought a message) and it has waited
 * its linger, or after PARTIAL_MAX_WAIT_MS (or the linger, if longer) in any
 * case. */
static bool batch_due(const cat_consumer_t *consumer, const part_buf_t *part, bool got, int64_t now)
{
	int64_t waited_ms = (now - part->first_at_us) / 1000;

	return part_pending(part) >= (size_t)consumer->batch_size || (!got && waited_ms >= consumer->linger_ms) ||
	       waited_ms >= (consumer->linger_ms > PARTIAL_MAX_WAIT_MS ? consumer->linger_ms : PARTIAL_MAX_WAIT_MS);
}

static bool poll_once(cat_consumer_t *consumer, int timeout_ms)
{
	rd_kafka_message_t *rkm = rd_kafka_consumer_poll(consumer->rk, timeout_ms);
	part_buf_t *part;

	atomic_store(&consumer->last_poll_us, cat_time_mono_us());
	if (!rkm)
		return false;
	if (rkm->err) {
		if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			cat_log_write(CAT_LOG_LEVEL_WARN, "KAFKA", "consumer: %s", rd_kafka_message_errstr(rkm));
		rd_kafka_message_destroy(rkm);
		return false;
	}
	cat_metrics_inc(consumer->m_consumed);
	part = part_get(consumer, rd_kafka_topic_name(rkm->rkt), rkm->partition);
	if (!part || part_push(part, rkm) != CAT_OK) {
		/* out of memory: let it be redelivered rather than skip it */
		cat_log_write(CAT_LOG_LEVEL_ERROR, "CONSUMER", "out of memory buffering a message");
		rd_kafka_message_destroy(rkm);
		consumer->stop_deadline_us = cat_time_mono_us();
		return false;
	}
	return true;
}

/* Whether the broker holds messages of a partition beyond what was polled
 * (the high watermarks the last fetch responses gave: no request). A dry
 * poll then means the fetcher is behind, not that the backlog is done. */
static bool fetch_behind(const cat_consumer_t *consumer)
{
	for (size_t i = 0; i < consumer->n_parts; i++) {
		const part_buf_t *part = consumer->parts[i];
		int64_t low, high;

		if (part->next_offset >= 0 &&
		    rd_kafka_get_watermark_offsets(consumer->rk, part->topic, part->partition, &low, &high) ==
			    RD_KAFKA_RESP_ERR_NO_ERROR &&
		    high > part->next_offset)
			return true;
	}
	return false;
}

cat_err_t cat_consumer_run(cat_consumer_t *consumer, volatile sig_atomic_t *stop, char *errstr,
			   size_t errstr_size)
{
	cat_err_t result = CAT_OK;
	char fatal[512];

	consumer->stop = stop;
	srand((unsigned)cat_time_now_us());
	cat_log_write(CAT_LOG_LEVEL_INFO, "CONSUMER", "consuming as group %s", consumer->group);
	while (!*stop && !consumer->stop_deadline_us) {
		int64_t now = cat_time_mono_us();
		int timeout_ms = 100;

		bool got;

		/* a partial batch waits at most its linger (once nothing more is queued) */
		for (size_t i = 0; i < consumer->n_parts; i++) {
			part_buf_t *part = consumer->parts[i];

			if (part_pending(part) > 0) {
				int64_t left = consumer->linger_ms - (now - part->first_at_us) / 1000;

				if (left < timeout_ms)
					timeout_ms = left < 0 ? 0 : (int)left;
			}
		}
		/* settling batches failed, then their partitions went (revoked or
		 * lost): nothing is left to settle again, so the retry is over */
		if (consumer->settle_attempts > 0 && consumer->n_settling == 0) {
			cat_log_write(CAT_LOG_LEVEL_INFO, "CONSUMER",
				      "the batches that could not settle were revoked: resuming");
			consumer->settle_attempts = 0;
			pause_all(consumer, false);
			set_retrying(consumer, NULL);
		}
		/* a dry spell is looked into as soon as it is long enough */
		if (consumer->dry_since_us && timeout_ms > WAKE_DRY_US / 1000)
			timeout_ms = WAKE_DRY_US / 1000;
		/* settling batches do not wait for more messages, unless the
		 * fetcher is behind a backlog: then for a moment, so that the
		 * settle (which drains the handler's pipeline) comes at the end of
		 * the backlog, not at every gap between fetches */
		got = poll_once(consumer, consumer->n_settling > 0 ? (consumer->fetch_wait ? 1 : 0) : timeout_ms);
		if (got) {
			consumer->dry_since_us = 0;
			consumer->wake_interval_us = WAKE_INTERVAL_MIN_US;
		} else if (!consumer->dry_since_us) {
			consumer->dry_since_us = now;
		} else if ((now = cat_time_mono_us()) - consumer->dry_since_us >= WAKE_DRY_US) {
			/* caught up (or starved): what is stored is committed now
			 * rather than at the next interval, so a restart replays less */
			if (consumer->uncommitted && consumer->n_settling == 0) {
				rd_kafka_commit(consumer->rk, NULL, 1);
				consumer->uncommitted = false;
			}
			if (now >= consumer->next_wake_us && !atomic_load(&consumer->retrying) &&
			    consumer->settle_attempts == 0)
				wake_fetcher(consumer, now);
		}
		if (rd_kafka_fatal_error(consumer->rk, fatal, sizeof(fatal))) {
			cat_err_t err = recreate_client(consumer, fatal, errstr, errstr_size);

			if (err == CAT_ERR_FATAL) {
				result = err;
				break;
			}
			if (err != CAT_OK)
				break; /* stopped meanwhile */
			continue;
		}

		now = cat_time_mono_us();
		for (size_t i = 0; i < consumer->n_parts && !*stop; i++) {
			part_buf_t *part = consumer->parts[i];

			while (part_pending(part) > 0 && batch_due(consumer, part, got, now)) {
				batch_result_t r = process_part(consumer, part);

				if (r == BATCH_FATAL) {
					result = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
							     "%s [%d]: the handler failed fatally (see the log)",
							     part->topic, (int)part->partition);
					goto out;
				}
				if (r == BATCH_ABANDONED)
					break;
				now = cat_time_mono_us();
			}
		}
		if (got) {
			consumer->last_msg_us = now;
			consumer->trimmed = false;
		} else if (!consumer->trimmed && consumer->n_settling == 0 &&
			   now - consumer->last_msg_us >= IDLE_TRIM_US) {
			/* a burst's buffers are free now, but glibc keeps them mapped:
			 * hand them back, so an idle worker holds only what it uses */
			for (size_t i = 0; i < consumer->n_parts; i++) {
				part_buf_t *part = consumer->parts[i];

				if (part->n == 0 && part->cap > 0) {
					free(part->msgs);
					free(part->issued);
					part->msgs = NULL;
					part->issued = NULL;
					part->cap = 0;
				}
			}
			/* the batch scratch too (288 bytes a message: 1.1 MiB at 4000) */
			free(consumer->msg_scratch);
			consumer->msg_scratch = NULL;
			malloc_trim(0);
			consumer->trimmed = true;
		}
		/* applied batches settle once nothing more is at hand, or enough wait */
		consumer->fetch_wait = !got && consumer->n_settling > 0 && consumer->dry_since_us &&
				       cat_time_mono_us() - consumer->dry_since_us < SETTLE_BACKLOG_WAIT_US &&
				       fetch_behind(consumer);
		if (consumer->n_settling > 0 && ((!got && !consumer->fetch_wait) ||
						 consumer->n_settling >= (size_t)consumer->batch_size * SETTLE_MAX_BATCHES)) {
			cat_err_t err = settle_in_loop(consumer, errstr, errstr_size);

			if (err == CAT_ERR_FATAL) {
				result = err;
				break;
			}
			if (err != CAT_OK)
				break;
		}
	}

out:
	/* what is applied settles within the grace period; what is buffered
	 * but not begun is left for redelivery */
	if (result == CAT_OK && consumer->n_settling > 0) {
		int64_t left_ms = consumer->stop_deadline_us
					  ? (consumer->stop_deadline_us - cat_time_mono_us()) / 1000
					  : (int64_t)consumer->grace_ms;
		char reason[512];

		if (left_ms < 1000)
			left_ms = 1000;
		if (settle_all(consumer, (int)left_ms, reason, sizeof(reason)) != CAT_OK)
			cat_log_write(CAT_LOG_LEVEL_WARN, "CONSUMER",
				      "applied batches left unstored at shutdown (they will be redelivered): %s",
				      reason);
	}
	for (size_t i = 0; i < consumer->n_parts; i++)
		part_drop(consumer, consumer->parts[i], consumer->parts[i]->n);
	if (!consumer->rk) /* stopped while it was being made again */
		return result;
	if (!rd_kafka_fatal_error(consumer->rk, NULL, 0)) {
		rd_kafka_resp_err_t kr = rd_kafka_commit(consumer->rk, NULL, 0);

		if (kr && kr != RD_KAFKA_RESP_ERR__NO_OFFSET)
			cat_log_write(CAT_LOG_LEVEL_WARN, "KAFKA", "could not commit at shutdown: %s",
				      rd_kafka_err2str(kr));
	}
	rd_kafka_consumer_close(consumer->rk);
	cat_log_write(CAT_LOG_LEVEL_INFO, "CONSUMER", "left group %s", consumer->group);
	return result;
}

/*
 * librdkafka's teardown can hang for good (2.0: a consumer whose topic was
 * deleted under it waits forever for its incremental unassign). By then the
 * work is durable and the offsets committed or given up, so a process that
 * is only ending does not wait past DESTROY_TIMEOUT_S for it.
 */
#define DESTROY_TIMEOUT_S 10

typedef struct destroy_watch {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
} destroy_watch_t;

static void *destroy_watchdog(void *opaque)
{
	destroy_watch_t *watch = opaque;
	struct timespec until;
	bool done;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += DESTROY_TIMEOUT_S;
	pthread_mutex_lock(&watch->lock);
	while (!watch->done && pthread_cond_timedwait(&watch->cond, &watch->lock, &until) == 0)
		;
	done = watch->done;
	pthread_mutex_unlock(&watch->lock);
	if (!done) {
		cat_log_write(CAT_LOG_LEVEL_ERROR, "KAFKA",
			      "the Kafka client did not shut down within %d s (was its topic deleted?): exiting "
			      "without it; what was applied is durable and its offsets were committed or will be "
			      "redelivered",
			      DESTROY_TIMEOUT_S);
		_exit(0);
	}
	return NULL;
}

/*
 * Destroys the client, within DESTROY_TIMEOUT_S. librdkafka 2.0 (fixed in
 * 2.3) aborts the process when it destroys a cooperative-sticky consumer
 * that joined its group but was never assigned (the assignor's state is
 * still NULL): such a client, which holds nothing of ours, is left to the
 * process's end instead.
 */
static void destroy_client(rd_kafka_t *rk, bool assigned, int flags)
{
	destroy_watch_t watch = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	pthread_t thread;
	bool watched;

	if (!assigned) {
		cat_log_write(CAT_LOG_LEVEL_DEBUG, "KAFKA",
			      "kafka consumer never assigned: left to the process's end (librdkafka 2.0 aborts "
			      "destroying it)");
		return;
	}
	watched = pthread_create(&thread, NULL, destroy_watchdog, &watch) == 0;
	rd_kafka_destroy_flags(rk, flags);
	if (!watched)
		return;
	pthread_mutex_lock(&watch.lock);
	watch.done = true;
	pthread_cond_signal(&watch.cond);
	pthread_mutex_unlock(&watch.lock);
	pthread_join(thread, NULL);
}

void cat_consumer_destroy(cat_consumer_t *consumer)
{
	if (!consumer)
		return;
	for (size_t i = 0; i < consumer->n_parts; i++)
		part_free(consumer, consumer->parts[i]);
	free(consumer->parts);
	if (consumer->rk)
		destroy_client(consumer->rk, consumer->rk_assigned, 0);
	cat_producer_destroy(consumer->dlq);
	if (consumer->topics)
		for (size_t i = 0; consumer->topics[i]; i++)
			free(consumer->topics[i]);
	free(consumer->topics);
	free(consumer->msg_scratch);
	free(consumer->worker);
	free(consumer->group);
	pthread_mutex_destroy(&consumer->reason_lock);
	free(consumer);
}
