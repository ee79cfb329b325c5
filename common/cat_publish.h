/*
 * cat_publish: publishing commands to the fleet, the producer API a C
 * service links (and what catalyst-publish uses).
 *
 * A typed call takes a command the caller built, completes its
 * CommandMeta, keys it, packs it and enqueues it on its topic; it does not
 * wait. cat_publish_wait() then waits for the delivery report of every
 * command enqueued since the previous wait:
 *
 *   CAT_OK from cat_publish_wait()  every one of those commands was
 *                                   acknowledged by the broker: the producer
 *                                   is idempotent (enable.idempotence=true,
 *                                   acks=all), so each is written once, in
 *                                   order per key, to every in-sync replica
 *   CAT_ERR_PERMANENT               every report came, and some commands were
 *                                   not delivered (each was passed to the
 *                                   report function with its reason); waiting
 *                                   longer changes nothing, publishing them
 *                                   again with the same command_id is safe
 *   CAT_ERR_RETRIABLE               the wait itself failed: reports still
 *                                   missing after the delivery timeout, or the
 *                                   producer failed and was made again
 *   CAT_ERR_FATAL                   the producer failed and could not be made
 *                                   again
 *
 * CAT_OK from a typed call only means "enqueued". A typed call fails with
 * CAT_ERR_PERMANENT for a command no worker would take (no action, no
 * record, a command_id over CAT_CODEC_COMMAND_ID_MAX characters, larger
 * than CAT_CODEC_MAX_MESSAGE_BYTES packed), with the producer's error
 * otherwise (see cat_producer_send()).
 *
 * Keys (a key's commands stay in order on one partition):
 *
 *   call                 topic      key
 *   cat_publish_write()  write.v1   the record's symbol when set and non-empty,
 *                                   else its primary key (cat_codec_record_key)
 *   cat_publish_cache()  cache.v1   set: the key; delete: the first key;
 *                                   invalidate: the pattern; warm: "warm"
 *   cat_publish_sync()   sync.v1    check, resync: the table; replicate:
 *                                   "table:primary key" of its first change
 *   cat_publish_backup() backup.v1  the database, "primary" when it has none
 *                                   (one backup per database at a time)
 *
 * Meta: what the command's meta lacks is filled in the packed message (the
 * caller's structures are left as they were): command_id (absent or empty)
 * a random UUID, issued_at_us now (µs since the epoch), producer the
 * publisher's name. trace_id is never filled. A command without meta gets
 * one. cat_publish_command_id() gives the id the last command was sent with.
 *
 * Not thread-safe: one thread per publisher.
 */
#ifndef CAT_PUBLISH_H
#define CAT_PUBLISH_H

#include <stdint.h>

#include "cat_codec.h"
#include "cat_config.h"
#include "cat_err.h"
#include "catalyst/v1/commands.pb-c.h"

typedef struct cat_publish cat_publish_t;

/* One delivery report, from inside cat_publish_wait() or a typed call:
 * `ref` as given to the typed call, `error` NULL when the broker
 * acknowledged the command, else librdkafka's reason. */
typedef void (*cat_publish_report_fn)(void *ref, const char *error, void *opaque);

typedef struct cat_publish_options {
	const char *client_id;	      /* Kafka client.id */
	const char *producer;	      /* meta.producer of commands that name none */
	int delivery_timeout_ms;      /* message.timeout.ms: a command not acknowledged
					 by then is reported failed */
	cat_publish_report_fn report; /* may be NULL */
	void *opaque;		      /* passed to report */
} cat_publish_options_t;

/* A publisher on cfg's brokers (CATALYST_BROKERS, CATALYST_TOPIC_PREFIX,
 * CATALYST_KAFKA_* pass-through). Connects lazily: a broker down is seen by
 * cat_publish_wait(), not here. Free it with cat_publish_destroy(). */
cat_err_t cat_publish_new(cat_publish_t **out, const cat_config_t *cfg, const cat_publish_options_t *options,
			  char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Frees the publisher; commands still waiting for their report are dropped
 * (call cat_publish_wait() first). NULL is fine. */
void cat_publish_destroy(cat_publish_t *publish);

cat_err_t cat_publish_write(cat_publish_t *publish, Catalyst__V1__WriteCommand *cmd, void *ref, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_publish_cache(cat_publish_t *publish, Catalyst__V1__CacheCommand *cmd, void *ref, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_publish_sync(cat_publish_t *publish, Catalyst__V1__SyncCommand *cmd, void *ref, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_publish_backup(cat_publish_t *publish, Catalyst__V1__BackupCommand *cmd, void *ref, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;

/* Waits for the report of every command enqueued since the previous wait,
 * up to the delivery timeout and 5 s more; see the table above. */
cat_err_t cat_publish_wait(cat_publish_t *publish, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* The command_id the last typed call sent ("" before the first); valid
 * until the next typed call. */
const char *cat_publish_command_id(const cat_publish_t *publish);

/* Commands acknowledged / not delivered / waiting for their report, since
 * the publisher was made. */
uint64_t cat_publish_delivered(const cat_publish_t *publish);
uint64_t cat_publish_failed(const cat_publish_t *publish);
uint64_t cat_publish_outstanding(const cat_publish_t *publish);

#endif /* CAT_PUBLISH_H */
