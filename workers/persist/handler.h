/*
 * catalyst-persist's handler for the consume loop (cat_handler_t):
 * write.v1 batches -> rounds, each one PostgreSQL transaction -> the rows
 * the primary holds after it on changes.v1.
 *
 * apply(), on the loop's thread:
 *  1. decodes every message (cat_codec_write_decode); one that does not
 *     decode or validate is marked permanent with the reason, the rest goes on
 *  2. stages the batch's commands (and a copy of their records' bytes) into
 *     the round; a round of CATALYST_BATCH_SIZE writes goes to the committer
 *     thread, and the next is staged while it commits. settle() hands over
 *     the staged round, waits for it, then for the changes' acknowledgements.
 * The committer, per round:
 *  3. resolves its writes (common/cat_apply) to the writes that leave each
 *     row as applying its messages one at a time would: per key of a
 *     versioned table, the highest version (an upsert and a delete of the
 *     same version: the delete; equal upserts: the first); in an
 *     insert-only table the writes of a key that do not make each other
 *     moot, run in rounds (a delete, then the insert that replaces the row)
 *  4. one transaction, per table: the deletes (only rows not newer than the
 *     delete; each delete leaves a tombstone), then the upserts: set-based,
 *     unnest of one binary array per column, skipping keys whose tombstone
 *     is as new or newer, news_raw ON CONFLICT DO NOTHING, the others
 *     replacing only an older version; or, for 64 rows or more whose keys
 *     have no tombstone, a binary COPY in a savepoint, which a key the table
 *     already holds undoes (the upsert runs then, and COPY rests for the
 *     table's next 8 batches, doubling at each conflict up to 1024: a table
 *     of updates seldom tries). Rows are sorted by key, so that concurrent
 *     workers lock in the same order
 *  5. after COMMIT, what the primary now holds goes out on changes.v1, per
 *     source batch (changes.h: a write the version check skipped is
 *     published too, as what the table holds, so that a redelivered batch
 *     republishes what a crash kept from going out)
 * A failed round fails the next settle: the loop applies every unsettled
 * batch again; after a write the database refused, batches go one by one,
 * each its own transaction, waited for, until a settle succeeds.
 *
 * Results: SQLSTATE classes 22/23 -> CAT_ERR_PERMANENT (the core isolates the
 * message; when the batch holds a single write, that message is marked);
 * connection loss, 08, 40, 53, 57P01 -> CAT_ERR_RETRIABLE (the connection is
 * reopened on the next attempt); other SQL errors (42, 28, ...) ->
 * CAT_ERR_FATAL; a change not acknowledged -> CAT_ERR_RETRIABLE (the batch is
 * applied again, a no-op, and published again).
 */
#ifndef PERSIST_HANDLER_H
#define PERSIST_HANDLER_H

#include <stdbool.h>
#include <stddef.h>

#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_err.h"
#include "cat_kafka.h"
#include "cat_metrics.h"

/* The worker's own settings, filled from its config table (main.c binds
 * each of its rows to a field); strings are borrowed from the cat_config_t.
 * The shared blocks (PostgreSQL, consumer, HTTP, tombstones, versions) are
 * read from the cat_config_t. */
typedef struct persist_settings {
	const char *group, *bind;
	long long port;
	long long changes_timeout_ms;
} persist_settings_t;

typedef struct persist persist_t;

/* The handler state, with its session on CATALYST_PG_URL (not connected
 * yet); `producer` (changes.v1, its delivery reports persist_changes_report)
 * and `metrics` are borrowed and must outlive it. Reads the partition count
 * of changes.v1: fatal when the topic does not exist. */
cat_err_t persist_new(persist_t **out, const cat_config_t *cfg, const persist_settings_t *settings,
		      cat_producer_t *producer, cat_metrics_t *metrics, char *errstr,
		      size_t errstr_size) CAT_MUST_CHECK;

/* Connects to the primary now and checks that the schema is migrated to
 * CAT_SCHEMA_VERSION (the first batch would otherwise). Retriable when the
 * server cannot be reached; fatal for authentication, an unknown database
 * or an older schema. */
cat_err_t persist_connect(persist_t *persist, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Closes the connection and frees; accepts NULL. */
void persist_destroy(persist_t *persist);

/* cat_handler_t.apply, .settle and .ready (opaque: the persist_t). apply()
 * stages a batch (and hands a full round to the committer); settle()
 * commits what is staged and waits for every round and the changes'
 * acknowledgements. ready() runs on the HTTP thread: false
 * (with the reason) while PostgreSQL does not answer a ping. */
cat_err_t persist_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size);
cat_err_t persist_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size);
bool persist_ready(void *opaque, char *reason, size_t reason_size);

#endif /* PERSIST_HANDLER_H */
