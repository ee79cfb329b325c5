/*
 * cat_kafka: librdkafka configuration shared by every client, and the
 * producer.
 *
 * The producer is idempotent (enable.idempotence=true, acks=all): a message
 * counts as published only when its delivery report says so. Topic names
 * are CATALYST_TOPIC_PREFIX + a suffix ("write.v1").
 */
#ifndef CAT_KAFKA_H
#define CAT_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "cat_config.h"
#include "cat_err.h"

/* Topic suffixes (docs/ARCHITECTURE.md, "Topics and their contracts"). */
#define CAT_TOPIC_WRITE "write.v1"
#define CAT_TOPIC_CHANGES "changes.v1"
#define CAT_TOPIC_CACHE "cache.v1"
#define CAT_TOPIC_SYNC "sync.v1"
#define CAT_TOPIC_BACKUP "backup.v1"
#define CAT_TOPIC_DLQ "dlq.v1"
#define CAT_TOPIC_EVENTS "events.v1"

/* Every topic of the fleet and its partition count (write.v1 and
 * changes.v1 carry the volume; backup.v1 is keyed by database). */
typedef struct cat_kafka_topic_spec {
	const char *suffix;
	int partitions;
} cat_kafka_topic_spec_t;

extern const cat_kafka_topic_spec_t cat_kafka_topics[];
extern const size_t cat_kafka_n_topics;

/* prefix + suffix into buf; returns buf. */
char *cat_kafka_topic(const cat_config_t *cfg, const char *suffix, char *buf, size_t buf_size);

/* The partition count of `topic`, from the cluster's metadata (one request
 * on rk, any client type, waiting up to timeout_ms). *partitions is 0 on
 * failure: CAT_ERR_FATAL "topic T does not exist" when the cluster says so
 * (or librdkafka refuses the name), CAT_ERR_RETRIABLE "could not read the
 * metadata of T: reason" when the request failed or the topic has no
 * partitions yet (a leader election, a topic being created). */
cat_err_t cat_kafka_topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms, int *partitions,
				     char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* A configuration with bootstrap.servers, client.id, librdkafka's logs routed
 * to cat_log (facility "KAFKA"), and every CATALYST_KAFKA_* pass-through
 * applied (a property librdkafka refuses is a fatal one-line error naming the
 * variable). The caller owns *out (rd_kafka_conf_destroy, or hand it to
 * rd_kafka_new). */
cat_err_t cat_kafka_conf_new(rd_kafka_conf_t **out, const cat_config_t *cfg, const char *client_id,
			     char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Sets one property, turning librdkafka's refusal into a fatal error. */
cat_err_t cat_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
			     char *errstr, size_t errstr_size) CAT_MUST_CHECK;

typedef struct cat_producer cat_producer_t;

/* Called from cat_producer_poll()/flush() for each delivery report: err is
 * RD_KAFKA_RESP_ERR_NO_ERROR when the broker acknowledged the message. */
typedef void (*cat_producer_report_fn)(void *msg_opaque, rd_kafka_resp_err_t err,
				       const rd_kafka_message_t *msg, void *opaque);

/* delivery_timeout_ms bounds how long a message may wait for its
 * acknowledgement (message.timeout.ms) before it is reported failed. */
cat_err_t cat_producer_new(cat_producer_t **out, const cat_config_t *cfg, const char *client_id,
			   int delivery_timeout_ms, cat_producer_report_fn report, void *opaque,
			   char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* The same, with one more librdkafka property set after the others (e.g.
 * a larger message.max.bytes for a producer that forwards what it fetched). */
cat_err_t cat_producer_new_with(cat_producer_t **out, const cat_config_t *cfg, const char *client_id,
				int delivery_timeout_ms, cat_producer_report_fn report, void *opaque,
				const char *property, const char *value, char *errstr,
				size_t errstr_size) CAT_MUST_CHECK;

void cat_producer_destroy(cat_producer_t *producer);

/* After a fatal error of the client (an idempotent producer fenced or out of
 * sequence, e.g. across broker restarts): every message still outstanding is
 * reported failed, and the client is made again from its configuration.
 * CAT_OK when there was nothing to recover or it was made again; the caller
 * retries what failed. cat_producer_send() and cat_producer_flush() do it
 * themselves and return CAT_ERR_RETRIABLE. */
cat_err_t cat_producer_recover(cat_producer_t *producer, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Enqueues one message (key and value copied). `headers`, when not NULL, is
 * owned by the producer on success and stays the caller's on failure. Waits
 * (serving delivery reports) while the local queue is full. */
cat_err_t cat_producer_send(cat_producer_t *producer, const char *topic, int32_t partition,
			    const void *key, size_t key_len, const void *value, size_t value_len,
			    rd_kafka_headers_t *headers, void *msg_opaque, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;

/* Serves delivery reports for up to timeout_ms. */
void cat_producer_poll(cat_producer_t *producer, int timeout_ms);

/* Sends what lingers and serves delivery reports until none is
 * outstanding or timeout_ms pass (at least once); a report is served within
 * about 1 ms of its arrival during the first 20 ms, then 10 ms. No error
 * handling: see cat_producer_flush(). */
void cat_producer_drain(cat_producer_t *producer, int timeout_ms);

/* Waits until every message sent so far has its delivery report, up to
 * timeout_ms. CAT_ERR_RETRIABLE when some are still outstanding at the
 * deadline, or the producer hit a fatal error and was made again
 * (cat_producer_recover); CAT_ERR_FATAL when it could not be. Failed
 * deliveries are counted, not returned: see cat_producer_failed(). */
cat_err_t cat_producer_flush(cat_producer_t *producer, int timeout_ms, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;

/* Messages acknowledged / failed / still waiting for their report. */
uint64_t cat_producer_delivered(const cat_producer_t *producer);
uint64_t cat_producer_failed(const cat_producer_t *producer);
uint64_t cat_producer_outstanding(const cat_producer_t *producer);

/* The underlying handle, for metadata queries. */
rd_kafka_t *cat_producer_handle(cat_producer_t *producer);

#endif /* CAT_KAFKA_H */
