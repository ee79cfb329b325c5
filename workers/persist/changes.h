/*
 * catalyst-persist's change publishing: after a batch's COMMIT, what the
 * primary holds goes to changes.v1, and the batch settles once it is
 * acknowledged.
 *
 * What a resolved write (cat_apply_write_t) goes out as: changes.v1 carries
 * only what the primary holds after the commit, never a version it does not
 * (a consumer that lost a key, e.g. a Redis restarted empty, would take an
 * older one):
 *   - an upsert or a delete its statement applied: its record and op;
 *   - one the version check skipped, after what the table held right after
 *     its statement: the same version stored (a redelivered batch republishes
 *     what a crash between commit and publish kept from going out): its
 *     record; no row but a tombstone at least as new: that delete, at the
 *     tombstone's version (what the primary holds, so that a cache drops what
 *     it may still hold); a row of another version: nothing (that row went
 *     out when it was written);
 *   - one whose state was not read: nothing.
 *
 * How: each change goes to the changes.v1 partition of crc32("table:pk")
 * modulo the partition count (a key's changes stay in order on one
 * partition), in source-offset order; a partition's changes are packed into
 * ChangeBatch messages of at most 500 rows or 512 KiB, keyed by their first
 * change's "table:pk", with an id that a redelivered batch split the same way
 * gets again. A record's bytes are spliced as its command carried them
 * (persist_command_t.record; they must stay alive until the send returns).
 *
 * Results: the publication and the settle return CAT_ERR_RETRIABLE when a
 * change cannot go out or is not acknowledged within the timeout (the
 * consumer applies every unsettled batch again, a no-op on the primary, and
 * publishes it again), CAT_ERR_FATAL when changes.v1 does not exist.
 */
#ifndef PERSIST_CHANGES_H
#define PERSIST_CHANGES_H

#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "cat_apply.h"
#include "cat_codec.h"
#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_err.h"
#include "cat_kafka.h"
#include "cat_metrics.h"

typedef struct persist_changes persist_changes_t;

/* What a settle that finds every change acknowledged counts. */
typedef struct persist_changes_metrics {
	cat_metric_t *rows;	      /* changes acknowledged */
	cat_metric_t *messages;	      /* ChangeBatch messages acknowledged */
	cat_metric_t *settle_seconds; /* the settle's wait */
} persist_changes_metrics_t;

/* Delivery reports of `producer` (give it to cat_producer_new with a NULL
 * opaque): each ChangeBatch carries its persist_changes_t as msg_opaque. */
void persist_changes_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg,
			    void *opaque);

/* The publisher of changes.v1 (under cfg's topic prefix) on `producer`,
 * which must outlive it; acknowledgements are waited for `timeout_ms` at
 * most. Reads the partition count of changes.v1: fatal when the topic does
 * not exist; when the cluster does not answer, a warning, and the first
 * publication asks again. */
cat_err_t persist_changes_new(persist_changes_t **out, const cat_config_t *cfg, cat_producer_t *producer,
			      int timeout_ms, const persist_changes_metrics_t *metrics, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;

/* Frees; accepts NULL. */
void persist_changes_destroy(persist_changes_t *changes);

/* A command whose writes `apply` resolved: decoded, and the bytes of its
 * record as the command carried them (spliced into the change as they are;
 * NULL: the record is packed again). The apply's write->source indexes the
 * caller's array of these. */
typedef struct persist_command {
	const Catalyst__V1__WriteCommand *cmd;
	const uint8_t *record;
	size_t record_len;
} persist_command_t;

/* Consecutive messages of one write.v1 partition, commands[from, from + n)
 * of the caller's array: what a ChangeBatch names as its source (and derives
 * its id from, so that a redelivered batch gets the same ids). */
typedef struct persist_source {
	const char *topic;
	int32_t partition;
	int64_t first_offset, last_offset;
	size_t from, n;
} persist_source_t;

/* Sends what the committed writes of `apply` whose commands belong to
 * `source` go out as; committed_at_us is the ChangeBatch's commit time.
 * Returns once every change is handed to the producer;
 * persist_changes_settle() waits for the acknowledgements. */
cat_err_t persist_changes_publish(persist_changes_t *changes, const persist_command_t *commands,
				  const persist_source_t *source, const cat_apply_t *apply, int64_t committed_at_us,
				  char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Waits (at most timeout_ms, and the timeout given to persist_changes_new)
 * for the acknowledgement of every change sent since the last settle;
 * CAT_OK when all came, else CAT_ERR_RETRIABLE with the first failure. */
cat_err_t persist_changes_settle(persist_changes_t *changes, int timeout_ms, char *errstr,
				 size_t errstr_size) CAT_MUST_CHECK;

#endif /* PERSIST_CHANGES_H */
