/*
 * cat_consumer: the at-least-once consume loop every worker runs
 * (docs/ARCHITECTURE.md, "The at-least-once contract").
 *
 * A worker is a handler plugged into this loop. The loop polls Kafka,
 * gathers per-partition batches by backlog, not by clock: a batch is handed
 * over when it holds CATALYST_BATCH_SIZE messages, or when nothing more is
 * queued locally (after CATALYST_BATCH_LINGER_MS, default 0: at once), or
 * after PARTIAL_MAX_WAIT_MS however busy the queue; so a short queue is
 * applied at once (a batch of one is fine) and a long one in large batches.
 * It hands each batch to the handler in partition order, and stores a
 * message's offset only once its effect is durable:
 *
 *   handler returns CAT_OK         every message not marked otherwise is
 *                                  durable; messages the handler marked
 *                                  CAT_ERR_PERMANENT go to dlq.v1 with their
 *                                  reason; offsets are stored after the DLQ
 *                                  delivery reports
 *   handler returns RETRIABLE      nothing stored; the partitions are paused
 *                                  and the batch is retried with exponential
 *                                  backoff and jitter while the loop keeps
 *                                  polling (the group keeps the worker)
 *   handler returns PERMANENT      some message of the batch can never apply
 *                                  but the handler cannot tell which: the
 *                                  batch is split in halves, recursively,
 *                                  until the bad messages stand alone; each
 *                                  of those is dead-lettered
 *   handler returns FATAL          the loop stops; what is durable is committed
 *
 * Stored offsets are committed every CATALYST_COMMIT_INTERVAL_MS, as soon as
 * the worker has caught up (nothing polled for 50 ms, nothing settling),
 * synchronously when partitions are revoked (cooperative-sticky assignment),
 * and at close. Batches of revoked partitions are abandoned unstored: the new
 * owner gets them again.
 *
 * Prefetch is bounded by queued.max.messages.kbytes (8 MiB by default,
 * CATALYST_KAFKA_QUEUED_MAX_MESSAGES_KBYTES). librdkafka 2.0 stops fetching
 * when that fills and looks again only up to a second later; when the queue
 * runs dry while the broker holds more, the loop wakes the fetcher at once
 * (catalyst_fetch_wakeups_total).
 *
 * Idle memory: 2 s after the last message, with nothing settling, the loop
 * frees its batch buffers and hands the free heap back to the system
 * (malloc_trim), once per quiet spell; a handler keeps no trimmer of its own.
 */
#ifndef CAT_CONSUMER_H
#define CAT_CONSUMER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "cat_config.h"
#include "cat_err.h"
#include "cat_kafka.h"
#include "cat_metrics.h"

/* Settings of the loop, spliced into a worker's config table, with the
 * worker's defaults: its batch size, and its max.poll.interval.ms (NULL:
 * librdkafka's) for a worker whose handler may run for long without the
 * loop polling (a warm, a check); CATALYST_KAFKA_MAX_POLL_INTERVAL_MS
 * overrides it like any librdkafka property. */
#define CAT_CONFIG_CONSUMER(default_batch, default_max_poll_ms)                                     \
	{ .name = "CATALYST_BATCH_SIZE", .type = CAT_CFG_INT, .def = default_batch, .min = 1,       \
	  .max = 100000, .help = "most messages of one partition handled as one batch" },           \
	{ .name = "CATALYST_BATCH_LINGER_MS", .type = CAT_CFG_INT, .def = "0", .max = 60000,        \
	  .help = "how long a partial batch waits for more once nothing more is queued (0: handled at " \
	          "once; a full batch never waits)" },                                              \
	{ .name = "CATALYST_COMMIT_INTERVAL_MS", .type = CAT_CFG_INT, .def = "1000", .min = 100,    \
	  .max = 600000, .help = "how often stored offsets are committed" },                        \
	{ .name = "CATALYST_RETRY_BACKOFF_MS", .type = CAT_CFG_INT, .def = "100", .min = 1,         \
	  .max = 600000, .help = "first retry delay of a transient failure (doubles, with jitter)" }, \
	{ .name = "CATALYST_RETRY_BACKOFF_MAX_MS", .type = CAT_CFG_INT, .def = "10000", .min = 1,   \
	  .max = 3600000, .help = "longest retry delay" },                                          \
	{ .name = "CATALYST_SHUTDOWN_GRACE_MS", .type = CAT_CFG_INT, .def = "25000", .max = 3600000, \
	  .help = "on SIGTERM, how long the in-flight batch may take before it is abandoned unstored" }, \
	{ .name = "CATALYST_GROUP_INSTANCE_ID", .type = CAT_CFG_STRING,                             \
	  .help = "static group membership (set it to the pod name) so a restart does not rebalance" }, \
	{ .name = "CATALYST_DLQ_TIMEOUT_MS", .type = CAT_CFG_INT, .def = "30000", .min = 1000,      \
	  .max = 3600000,                                                                           \
	  .help = "how long a dead letter may wait for its acknowledgement before the batch is retried" }, \
	{ .name = "CATALYST_KAFKA_MAX_POLL_INTERVAL_MS", .type = CAT_CFG_INT, .def = default_max_poll_ms, \
	  .min = 1, .max = 86400000, .kafka = "max.poll.interval.ms",                               \
	  .help = "librdkafka's max.poll.interval.ms: longest a batch may be handled without the loop " \
	          "polling before the group evicts the worker" }

/* One message of a batch. */
typedef struct cat_msg {
	const rd_kafka_message_t *rkm; /* borrowed from the loop */
	/* Set by the handler: */
	cat_err_t result;              /* CAT_OK, or CAT_ERR_PERMANENT: dead-letter it */
	char reason[256];              /* why, for the DLQ header (one line) */
	int64_t issued_at_us;          /* the command's issued_at_us, for latency (0: unknown) */
	void *decoded;                 /* the handler's, freed by the handler */
	/* Set by the loop: */
	bool dead_lettered;            /* in dlq.v1 already, from an earlier application of
	                                * this batch that did not settle: not sent again */
} cat_msg_t;

/* Consecutive messages of one partition, in offset order. */
typedef struct cat_batch {
	const char *topic;
	int32_t partition;
	cat_msg_t *msgs;
	size_t n;
} cat_batch_t;

typedef struct cat_handler {
	/* Applies `batch`; see the top of this file for what each result means.
	 * It may mark single messages CAT_ERR_PERMANENT (with a reason) and
	 * still return CAT_OK for the rest. */
	cat_err_t (*apply)(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size);
	/* Optional: false (with a reason) while a required downstream is
	 * unreachable; drives /readyz. */
	bool (*ready)(void *opaque, char *reason, size_t reason_size);
	void *opaque;
	/* Optional: for a handler whose apply() leaves part of the effect in
	 * flight (e.g. messages sent and not yet acknowledged), so that the next
	 * batch can be applied while they complete. With it, a batch apply()
	 * returned CAT_OK for is "settling": its offsets are stored only after a
	 * settle() that returns CAT_OK, which must wait (up to timeout_ms) until
	 * everything every earlier apply() left in flight is durable. The loop
	 * settles when it has nothing more to apply at once, when 4 x
	 * CATALYST_BATCH_SIZE messages are settling, and before it stops. When
	 * settle() fails, every settling batch is applied again (after the retry
	 * backoff, RETRIABLE; the loop stops on FATAL), so apply() must tolerate
	 * re-applying a batch whose effect is already in place. */
	cat_err_t (*settle)(void *opaque, int timeout_ms, char *errstr, size_t errstr_size);
} cat_handler_t;

typedef struct cat_consumer cat_consumer_t;

/* Creates the consumer of `group` on the topics (suffixes, NULL-terminated,
 * e.g. { CAT_TOPIC_WRITE, NULL }) and its DLQ producer; registers its
 * metrics in `metrics` (borrowed, may be NULL). Nothing is fetched until
 * cat_consumer_run(). */
cat_err_t cat_consumer_new(cat_consumer_t **out, const cat_config_t *cfg, const char *worker,
			   const char *group, const char *const *topics, const cat_handler_t *handler,
			   cat_metrics_t *metrics, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Runs the loop until *stop becomes non-zero (a signal handler sets it),
 * then finishes or abandons the in-flight batch within the grace period,
 * commits and leaves the group. CAT_OK on a clean stop; CAT_ERR_FATAL (with
 * errstr) when the handler or Kafka failed fatally. */
cat_err_t cat_consumer_run(cat_consumer_t *consumer, volatile sig_atomic_t *stop, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;

/* Readiness for /readyz: assigned and polling, and the handler ready. */
bool cat_consumer_ready(void *consumer, char *reason, size_t reason_size);

void cat_consumer_destroy(cat_consumer_t *consumer);

#endif /* CAT_CONSUMER_H */
