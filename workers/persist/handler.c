#include "handler.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cat_apply.h"
#include "cat_codec.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_time.h"
#include "cat_sql.h"
#include "catalyst/v1/views.pb-c.h"

#define MAX_TABLES	    8
#define CHANGES_MAX_ROWS    500		 /* Changes per ChangeBatch message */
#define CHANGES_MAX_BYTES   (512 * 1024) /* and their encoded size */
#define METADATA_TIMEOUT_MS 10000
#define PRODUCER_NAME	    "catalyst-persist"
#define SCRATCH_KEEP_ROWS   512 /* per-batch memory kept between batches */
#define SCRATCH_KEEP_BYTES  (64 * 1024)

/* How a resolved write goes out on changes.v1. */
typedef enum publish_as {
	PUBLISH_NONE,	   /* not at all: the row stored is another, already published */
	PUBLISH_RECORD,	   /* the command's record and op */
	PUBLISH_TOMBSTONE, /* a delete at the stored tombstone's version */
} publish_as_t;

/* A resolved write that goes out on changes.v1. */
typedef struct change_out {
	const cat_apply_write_t *write; /* ->source: its message in the batch */
	int32_t partition;		/* of changes.v1 */
	uint8_t publish;		/* PUBLISH_RECORD or PUBLISH_TOMBSTONE */
} change_out_t;

typedef struct table_metrics {
	cat_metric_t *applied[2]; /* [is_delete] */
	cat_metric_t *skipped[2];
} table_metrics_t;

struct persist {
	const cat_config_t *cfg;
	cat_pg_session_t *pg; /* the primary */
	cat_producer_t *producer;
	char changes_topic[256];
	int changes_partitions; /* 0 until read from the metadata */
	int changes_timeout_ms;
	int64_t version_max_ahead_s; /* CATALYST_VERSION_MAX_AHEAD_S */
	cat_apply_t *apply; /* the batch's writes, resolved, and their statements */

	/* delivery reports of the current batch */
	uint64_t delivery_failures; /* since the last settle */
	char delivery_error[256];
	uint64_t unsettled_changes; /* rows and messages published since the last settle */
	uint64_t unsettled_messages;

	/* per-batch scratch of the publication, kept at its largest size */
	size_t cap;
	change_out_t *outs;
	Catalyst__V1__ChangeView *changes; /* each record: a slice of its message, else owned */
	Catalyst__V1__ChangeView **change_ptrs;
	bool *change_owned; /* the record bytes were packed for it: free them */
	uint8_t *packed;
	size_t cap_packed;

	table_metrics_t m_tables[MAX_TABLES];
	cat_metric_t *m_committed;
	cat_metric_t *m_rolled_back;
	cat_metric_t *m_tx_seconds;
	cat_metric_t *m_publish_seconds;
	cat_metric_t *m_changes;
	cat_metric_t *m_settle_seconds;
	cat_metric_t *m_decode_seconds;
	cat_metric_t *m_change_messages;
	cat_metric_t *m_reconnects;
	cat_metric_t *m_pruned;

	cat_sql_pruner_t pruner; /* tombstone pruning, between batches */
};

static const double duration_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
					  0.25,	 0.5,	 1,	2.5,  5,     10,   30};

/* --- PostgreSQL ----------------------------------------------------------------------- */

cat_err_t persist_connect(persist_t *persist, char *errstr, size_t errstr_size)
{
	PGconn *conn;

	return cat_pg_session_ensure(persist->pg, &conn, errstr, errstr_size);
}

bool persist_ready(void *opaque, char *reason, size_t reason_size)
{
	persist_t *persist = opaque;

	/* A batch failing on the database already makes the loop unready
	 * ("retrying: ..."); this covers the time between batches. */
	return cat_pg_session_ping(persist->pg, reason, reason_size);
}

/* --- set-up ------------------------------------------------------------------------------ */

/* The partition count of changes.v1, from the cluster's metadata. */
static cat_err_t read_changes_partitions(persist_t *persist, char *errstr, size_t errstr_size)
{
	return cat_kafka_topic_partitions(cat_producer_handle(persist->producer), persist->changes_topic,
					  METADATA_TIMEOUT_MS, &persist->changes_partitions, errstr, errstr_size);
}

static void register_metrics(persist_t *persist, cat_metrics_t *metrics)
{
	static const char *const ops[2] = {"upsert", "delete"};

	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		for (int d = 0; d < 2; d++) {
			persist->m_tables[t].applied[d] =
				cat_metrics_counter(metrics, "catalyst_persist_rows_applied_total",
						    "rows the primary inserted, updated or deleted", "table",
						    cat_schema_tables[t].name, "op", ops[d], NULL);
			persist->m_tables[t].skipped[d] =
				cat_metrics_counter(metrics, "catalyst_persist_rows_skipped_total",
						    "writes that changed nothing: the stored row or "
						    "tombstone was as new or newer "
						    "(or a delete found no row)",
						    "table", cat_schema_tables[t].name, "op", ops[d], NULL);
		}
	}
	persist->m_committed = cat_metrics_counter(metrics, "catalyst_persist_transactions_total",
						   "batch transactions", "result", "committed", NULL);
	persist->m_rolled_back = cat_metrics_counter(metrics, "catalyst_persist_transactions_total",
						     "batch transactions", "result", "rolled_back", NULL);
	persist->m_tx_seconds = cat_metrics_histogram(
		metrics, "catalyst_persist_apply_duration_seconds",
		"time to apply a batch (decode and resolve its commands, run its transaction, send its "
		"changes) and to settle (the changes acknowledged, several batches at once)",
		duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]), "stage",
		"transaction", NULL);
	persist->m_publish_seconds = cat_metrics_histogram(
		metrics, "catalyst_persist_apply_duration_seconds",
		"time to apply a batch (decode and resolve its commands, run its transaction, send its "
		"changes) and to settle (the changes acknowledged, several batches at once)",
		duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]), "stage", "publish",
		NULL);
	persist->m_decode_seconds = cat_metrics_histogram(
		metrics, "catalyst_persist_apply_duration_seconds",
		"time to apply a batch (decode and resolve its commands, run its transaction, send its "
		"changes) and to settle (the changes acknowledged, several batches at once)",
		duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]), "stage", "decode",
		NULL);
	persist->m_settle_seconds = cat_metrics_histogram(
		metrics, "catalyst_persist_apply_duration_seconds",
		"time to apply a batch (decode and resolve its commands, run its transaction, send its "
		"changes) and to settle (the changes acknowledged, several batches at once)",
		duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]), "stage", "settle",
		NULL);
	persist->m_changes =
		cat_metrics_counter(metrics, "catalyst_persist_changes_published_total",
				    "committed rows published on changes.v1 (acknowledged)", NULL);
	persist->m_change_messages =
		cat_metrics_counter(metrics, "catalyst_persist_change_batches_total",
				    "ChangeBatch messages acknowledged on changes.v1", NULL);
	persist->m_reconnects = cat_metrics_counter(metrics, "catalyst_persist_pg_reconnects_total",
						    "PostgreSQL connections reopened after a loss", NULL);
	persist->m_pruned =
		cat_metrics_counter(metrics, "catalyst_persist_tombstones_pruned_total",
				    "tombstones deleted after CATALYST_TOMBSTONE_RETENTION_S", NULL);
}

cat_err_t persist_new(persist_t **out, const cat_config_t *cfg, cat_producer_t *producer, cat_metrics_t *metrics,
		      char *errstr, size_t errstr_size)
{
	persist_t *persist;
	cat_pg_session_opts_t pg_opts;
	cat_err_t err;

	*out = NULL;
	persist = calloc(1, sizeof(*persist));
	if (!persist)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	persist->cfg = cfg;
	persist->producer = producer;
	persist->changes_timeout_ms = (int)cat_config_int(cfg, "CATALYST_CHANGES_TIMEOUT_MS");
	persist->version_max_ahead_s = cat_config_int(cfg, "CATALYST_VERSION_MAX_AHEAD_S");
	cat_kafka_topic(cfg, CAT_TOPIC_CHANGES, persist->changes_topic, sizeof(persist->changes_topic));

	if (cat_schema_n_tables > MAX_TABLES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the schema has more than %d tables",
				  MAX_TABLES);
		goto error;
	}
	if ((err = cat_apply_new(&persist->apply, errstr, errstr_size)) != CAT_OK)
		goto error;
	/* what an upsert the version check skipped is published as depends on
	 * what the table holds instead */
	cat_apply_read_skipped(persist->apply, true);
	register_metrics(persist, metrics);
	pg_opts = (cat_pg_session_opts_t){
		.url = cat_config_str(cfg, "CATALYST_PG_URL"),
		.app_name = PRODUCER_NAME,
		.what = "primary",
		.connect_timeout_s = (int)cat_config_int(cfg, "CATALYST_PG_CONNECT_TIMEOUT_S"),
		.schema_version = CAT_SCHEMA_VERSION,
		.reconnects = persist->m_reconnects,
	};
	if ((err = cat_pg_session_new(&persist->pg, &pg_opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	cat_sql_pruner_init(&persist->pruner, cfg, persist->m_pruned);

	/* a missing topic is a configuration error; an unreachable cluster is
	 * not: the first batch asks again */
	err = read_changes_partitions(persist, errstr, errstr_size);
	if (err == CAT_ERR_FATAL)
		goto error;
	if (err != CAT_OK)
		CAT_LOG_WARN("KAFKA", "%s: will ask again before publishing", errstr);
	*out = persist;
	return CAT_OK;

error:
	persist_destroy(persist);
	return err;
}

void persist_destroy(persist_t *persist)
{
	if (!persist)
		return;
	cat_pg_session_free(persist->pg);
	cat_apply_destroy(persist->apply);
	free(persist->outs);
	free(persist->changes);
	free(persist->change_ptrs);
	free(persist->change_owned);
	free(persist->packed);
	free(persist);
}

/* --- decoding and resolving ---------------------------------------------------------------- */

static Catalyst__V1__WriteCommand *command_of(const cat_batch_t *batch, const cat_apply_write_t *write)
{
	return batch->msgs[write->source].decoded;
}

/* Decodes every message; marks the ones that do not decode or validate. */
static cat_err_t decode_batch(const persist_t *persist, cat_batch_t *batch, size_t *n_valid,
			      size_t *last_valid, char *errstr, size_t errstr_size)
{
	int64_t now_us = cat_time_now_us();

	*n_valid = 0;
	for (size_t i = 0; i < batch->n; i++) {
		cat_msg_t *msg = &batch->msgs[i];
		Catalyst__V1__WriteCommand *cmd = NULL;
		cat_err_t err;

		err = cat_codec_write_decode(msg->rkm->payload, msg->rkm->len, &cmd, msg->reason,
					     sizeof(msg->reason));
		if (err == CAT_ERR_PERMANENT) {
			msg->result = CAT_ERR_PERMANENT;
			continue;
		}
		if (err != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "%s", msg->reason);
		if (cat_codec_version_check(cat_codec_record_version(cmd->record), persist->version_max_ahead_s,
					    now_us, msg->reason, sizeof(msg->reason)) != CAT_OK) {
			catalyst__v1__write_command__free_unpacked(cmd, NULL);
			msg->result = CAT_ERR_PERMANENT;
			continue;
		}
		msg->decoded = cmd;
		if (cmd->meta && cmd->meta->has_issued_at_us)
			msg->issued_at_us = cmd->meta->issued_at_us;
		(*n_valid)++;
		*last_valid = i;
	}
	return CAT_OK;
}

static void free_decoded(cat_batch_t *batch)
{
	for (size_t i = 0; i < batch->n; i++) {
		catalyst__v1__write_command__free_unpacked(batch->msgs[i].decoded, NULL);
		batch->msgs[i].decoded = NULL;
	}
}

/* After a large batch, the scratch memory goes back (the next large batch
 * allocates afresh: a page fault per 4 KiB, against milliseconds of SQL),
 * so that an idle worker stays small. */
static void release_scratch(persist_t *persist)
{
	cat_apply_release(persist->apply);
	if (persist->cap > SCRATCH_KEEP_ROWS) {
		free(persist->outs);
		free(persist->changes);
		free(persist->change_ptrs);
		free(persist->change_owned);
		persist->outs = NULL;
		persist->changes = NULL;
		persist->change_ptrs = NULL;
		persist->change_owned = NULL;
		persist->cap = 0;
	}
	if (persist->cap_packed > SCRATCH_KEEP_BYTES) {
		free(persist->packed);
		persist->packed = NULL;
		persist->cap_packed = 0;
	}
}

/* Room for the changes of n writes. */
static cat_err_t reserve_changes(persist_t *persist, size_t n, char *errstr, size_t errstr_size)
{
	change_out_t *outs;
	Catalyst__V1__ChangeView *changes;
	Catalyst__V1__ChangeView **ptrs;
	bool *owned;

	if (n <= persist->cap)
		return CAT_OK;
	outs = realloc(persist->outs, n * sizeof(*outs));
	changes = outs ? realloc(persist->changes, n * sizeof(*changes)) : NULL;
	ptrs = changes ? realloc(persist->change_ptrs, n * sizeof(*ptrs)) : NULL;
	owned = ptrs ? realloc(persist->change_owned, n * sizeof(*owned)) : NULL;
	if (outs)
		persist->outs = outs;
	if (changes)
		persist->changes = changes;
	if (ptrs)
		persist->change_ptrs = ptrs;
	if (!owned)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	persist->change_owned = owned;
	persist->cap = n;
	return CAT_OK;
}

/* The batch's writes, resolved per key (common/cat_apply). */
static cat_err_t resolve(persist_t *persist, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err = cat_apply_begin(persist->apply, batch->n, errstr, errstr_size);

	if (err != CAT_OK)
		return err;
	for (size_t i = 0; i < batch->n; i++) {
		const Catalyst__V1__WriteCommand *cmd = batch->msgs[i].decoded;

		if (cmd && cat_apply_add(persist->apply, i, cmd->record,
					 cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE) != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "message %zu: a validated record without a table", i);
	}
	cat_apply_resolve(persist->apply);
	return CAT_OK;
}

/* --- the transaction ------------------------------------------------------------------------- */

static void count_rows(persist_t *persist)
{
	for (size_t i = 0; i < cat_apply_n(persist->apply); i++) {
		const cat_apply_write_t *write = cat_apply_write(persist->apply, i);
		const table_metrics_t *m = &persist->m_tables[write->table];

		cat_metrics_inc(write->applied ? m->applied[write->is_delete] : m->skipped[write->is_delete]);
	}
}

/* BEGIN, each table's deletes then upserts (round by round), COMMIT. */
static cat_err_t transaction(persist_t *persist, char *errstr, size_t errstr_size)
{
	PGconn *conn;
	cat_err_t err;

	if ((err = cat_pg_session_ensure(persist->pg, &conn, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_pg_begin(conn, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_apply_run(persist->apply, conn, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_commit(conn, errstr, errstr_size)) != CAT_OK)
		goto error;
	cat_metrics_inc(persist->m_committed);
	count_rows(persist);
	return CAT_OK;

error:
	cat_metrics_inc(persist->m_rolled_back);
	cat_pg_session_failed(persist->pg);
	return err;
}

/*
 * What a committed write goes out as: changes.v1 carries only what the
 * primary holds after the commit, never a version it does not (a consumer
 * that lost a key, e.g. a Redis restarted empty, would take an older one).
 *  - an upsert or a delete its statement applied: its record;
 *  - one the version check skipped, after what the table held right after
 *    its statement: the same version stored (a redelivered batch republishes
 *    what a crash between commit and publish kept from going out): its
 *    record; no row but a tombstone at least as new: that delete (what the
 *    primary holds, so that a cache drops what it may still hold); a row of
 *    another version: nothing (that row went out when it was written);
 *  - one whose state was not read: nothing.
 */
static publish_as_t publish_as(const cat_apply_write_t *write)
{
	if (write->applied)
		return PUBLISH_RECORD;
	if (!write->has_state)
		return PUBLISH_NONE;
	if (write->stored >= 0)
		return !write->is_delete && write->stored == write->version ? PUBLISH_RECORD : PUBLISH_NONE;
	if (write->tombstone < 0 || write->tombstone < write->version)
		return PUBLISH_NONE;
	return write->is_delete && write->tombstone == write->version ? PUBLISH_RECORD : PUBLISH_TOMBSTONE;
}

/* --- publishing the changes ----------------------------------------------------------------- */

void persist_change_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg,
			   void *opaque)
{
	persist_t *persist = msg_opaque;

	(void)opaque;
	if (!persist || err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	persist->delivery_failures++;
	snprintf(persist->delivery_error, sizeof(persist->delivery_error), "%s [%d]: %s",
		 rd_kafka_topic_name(msg->rkt), (int)msg->partition, rd_kafka_err2str(err));
}

/* Partition, then offset; a key's delete before the insert that follows it. */
static int publish_cmp(const void *a, const void *b)
{
	const change_out_t *x = a, *y = b;

	if (x->partition != y->partition)
		return x->partition < y->partition ? -1 : 1;
	if (x->write->source != y->write->source)
		return x->write->source < y->write->source ? -1 : 1;
	return 0;
}

/* "table:pk" into key; returns its length (truncated to the buffer). */
static size_t change_key(const cat_apply_write_t *write, char *key, size_t key_size)
{
	int n = snprintf(key, key_size, "%s:%s", cat_schema_tables[write->table].name, write->pk);

	return n < 0 ? 0 : (size_t)n < key_size ? (size_t)n : key_size - 1;
}

/* A record holding only the key of `write` and `version`: the delete a
 * tombstone stands for. The key text stays borrowed: free it with
 * free_key_record(). */
static Catalyst__V1__Record *key_record_new(const persist_t *persist, const cat_apply_write_t *write,
					    int64_t version)
{
	const cat_sql_table_t *st = cat_apply_sql(persist->apply, write->table);
	const ProtobufCFieldDescriptor *oneof = protobuf_c_message_descriptor_get_field(
		&catalyst__v1__record__descriptor, st->table->record_case);
	const ProtobufCFieldDescriptor *pk_field = st->fields[st->pk_column];
	const ProtobufCFieldDescriptor *version_field = st->fields[st->version_column];
	Catalyst__V1__Record *record = calloc(1, sizeof(*record));
	ProtobufCMessage *row = calloc(1, st->table->descriptor->sizeof_message);

	if (!record || !row || !oneof) {
		free(record);
		free(row);
		return NULL;
	}
	catalyst__v1__record__init(record);
	protobuf_c_message_init(st->table->descriptor, row);
	*(const char **)(void *)((char *)row + pk_field->offset) = write->pk;
	*(int64_t *)(void *)((char *)row + version_field->offset) = version;
	*(protobuf_c_boolean *)(void *)((char *)row + version_field->quantifier_offset) = 1;
	*(ProtobufCMessage **)(void *)((char *)record + oneof->offset) = row;
	*(uint32_t *)(void *)((char *)record + oneof->quantifier_offset) = oneof->id;
	return record;
}

static void free_key_record(Catalyst__V1__Record *record)
{
	if (!record)
		return;
	free((void *)cat_codec_record_row(record));
	free(record);
}

/* `record` packed into a new buffer, as a view's record bytes. */
static int record_pack(const Catalyst__V1__Record *record, ProtobufCBinaryData *out)
{
	out->len = catalyst__v1__record__get_packed_size(record);
	if (!(out->data = malloc(out->len ? out->len : 1)))
		return -1;
	catalyst__v1__record__pack(record, out->data);
	return 0;
}

/* Fills changes[k] for `write`: the record's bytes are those of its command
 * message, spliced as they are (the message stays alive until the batch
 * settles); 0, or -1 when out of memory. */
static int change_fill(persist_t *persist, cat_batch_t *batch, size_t k, const change_out_t *out)
{
	const cat_apply_write_t *write = out->write;
	const Catalyst__V1__WriteCommand *cmd = command_of(batch, write);
	const rd_kafka_message_t *rkm = batch->msgs[write->source].rkm;
	Catalyst__V1__ChangeView *change = &persist->changes[k];
	const uint8_t *bytes;
	size_t len;

	catalyst__v1__change_view__init(change);
	change->has_op = 1;
	change->op = cmd->op;
	change->has_record = 1;
	persist->change_owned[k] = false;
	if (out->publish == PUBLISH_TOMBSTONE) {
		Catalyst__V1__Record *record = key_record_new(persist, write, write->tombstone);
		int rc = record ? record_pack(record, &change->record) : -1;

		free_key_record(record);
		if (rc)
			return -1;
		change->op = CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
		persist->change_owned[k] = true;
	} else if (cat_codec_write_record_bytes(rkm->payload, rkm->len, &bytes, &len)) {
		change->record.data = (uint8_t *)bytes;
		change->record.len = len;
	} else {
		if (record_pack(cmd->record, &change->record))
			return -1;
		persist->change_owned[k] = true;
	}
	if (cmd->meta) {
		change->command_id = cmd->meta->command_id;
		change->has_issued_at_us = cmd->meta->has_issued_at_us;
		change->issued_at_us = cmd->meta->issued_at_us;
	}
	persist->change_ptrs[k] = change;
	return 0;
}

/* Frees what change_fill() allocated for changes[0, n). */
static void changes_release(persist_t *persist, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (persist->change_owned[k])
			free(persist->changes[k].record.data);
}

/* Sends changes[from, to) as one ChangeBatch (packed from its view) to
 * `partition`, keyed by the first change's "table:pk". */
static cat_err_t send_change_batch(persist_t *persist, cat_batch_t *batch, int32_t partition, size_t from,
				   size_t to, int64_t committed_at_us, char *errstr, size_t errstr_size)
{
	Catalyst__V1__ChangeBatchView change_batch = CATALYST__V1__CHANGE_BATCH_VIEW__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	char command_id[384], key[256];
	size_t len, key_len;

	/* a redelivered batch split the same way gets the same ids */
	snprintf(command_id, sizeof(command_id), "%s/%d/%lld-%lld/%d/%zu", batch->topic,
		 (int)batch->partition, (long long)batch->msgs[0].rkm->offset,
		 (long long)batch->msgs[batch->n - 1].rkm->offset, (int)partition, from);
	meta.command_id = command_id;
	meta.has_issued_at_us = 1;
	meta.issued_at_us = cat_time_now_us();
	meta.producer = PRODUCER_NAME;
	change_batch.meta = &meta;
	change_batch.n_changes = to - from;
	change_batch.changes = persist->change_ptrs + from;
	change_batch.has_committed_at_us = 1;
	change_batch.committed_at_us = committed_at_us;
	change_batch.source_topic = (char *)batch->topic;
	change_batch.has_source_partition = 1;
	change_batch.source_partition = batch->partition;
	change_batch.has_source_first_offset = 1;
	change_batch.source_first_offset = batch->msgs[0].rkm->offset;
	change_batch.has_source_last_offset = 1;
	change_batch.source_last_offset = batch->msgs[batch->n - 1].rkm->offset;

	len = catalyst__v1__change_batch_view__get_packed_size(&change_batch);
	if (len > persist->cap_packed) {
		uint8_t *grown = realloc(persist->packed, len);

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		persist->packed = grown;
		persist->cap_packed = len;
	}
	catalyst__v1__change_batch_view__pack(&change_batch, persist->packed);
	key_len = change_key(persist->outs[from].write, key, sizeof(key));
	return cat_producer_send(persist->producer, persist->changes_topic, partition, key, key_len,
				 persist->packed, len, NULL, persist, errstr, errstr_size);
}

/* Bytes a Change adds to a ChangeBatch (tag, length, body). */
static size_t change_size(const Catalyst__V1__ChangeView *change)
{
	size_t body = catalyst__v1__change_view__get_packed_size(change);

	return body + 1 + (body < 128 ? 1 : body < 16384 ? 2 : body < 2097152 ? 3 : 5);
}

/* Publishes the committed writes; persist_settle() waits for their
 * acknowledgements. */
static cat_err_t publish_changes(persist_t *persist, cat_batch_t *batch, int64_t committed_at_us,
				 char *errstr, size_t errstr_size)
{
	rd_kafka_t *rk = cat_producer_handle(persist->producer);
	size_t n = 0, n_messages = 0, k = 0;
	char key[256], fatal[256];
	cat_err_t err = CAT_OK;

	if (persist->changes_partitions == 0 &&
	    (err = read_changes_partitions(persist, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = reserve_changes(persist, cat_apply_n(persist->apply), errstr, errstr_size)) != CAT_OK)
		return err;
	for (size_t i = 0; i < cat_apply_n(persist->apply); i++) {
		const cat_apply_write_t *write = cat_apply_write(persist->apply, i);
		publish_as_t publish = publish_as(write);

		if (publish == PUBLISH_NONE)
			continue;
		persist->outs[n++] = (change_out_t){
			.write = write,
			.partition = (int32_t)(crc32(0L, (const Bytef *)key,
						     (uInt)change_key(write, key, sizeof(key))) %
					       (uint32_t)persist->changes_partitions),
			.publish = (uint8_t)publish};
	}
	if (n == 0)
		return CAT_OK;
	qsort(persist->outs, n, sizeof(*persist->outs), publish_cmp);
	for (k = 0; k < n; k++)
		if (change_fill(persist, batch, k, &persist->outs[k])) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
			goto out;
		}

	for (size_t from = 0; from < n;) {
		size_t to = from, bytes = 0;

		while (to < n && persist->outs[to].partition == persist->outs[from].partition &&
		       to - from < CHANGES_MAX_ROWS) {
			size_t size = change_size(&persist->changes[to]);

			if (to > from && bytes + size > CHANGES_MAX_BYTES)
				break;
			bytes += size;
			to++;
		}
		err = send_change_batch(persist, batch, persist->outs[from].partition, from, to,
					committed_at_us, errstr, errstr_size);
		if (err != CAT_OK)
			goto out;
		n_messages++;
		from = to;
	}

	/* sent at once, not after linger.ms: the next batch overlaps the round trip */
	rd_kafka_poll(rk, 0);
	if (rd_kafka_fatal_error(rk, fatal, sizeof(fatal)) &&
	    (err = cat_producer_recover(persist->producer, errstr, errstr_size)) == CAT_OK)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "changes producer failed: %s", fatal);
	persist->unsettled_changes += n;
	persist->unsettled_messages += n_messages;

out:
	changes_release(persist, k);
	return err;
}

cat_err_t persist_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size)
{
	persist_t *persist = opaque;
	rd_kafka_t *rk = cat_producer_handle(persist->producer);
	int64_t started_us = cat_time_mono_us();
	char fatal[256];
	cat_err_t err = CAT_OK;

	if (timeout_ms > persist->changes_timeout_ms)
		timeout_ms = persist->changes_timeout_ms;
	/* flush serves the delivery reports */
	rd_kafka_flush(rk, timeout_ms);
	if (rd_kafka_fatal_error(rk, fatal, sizeof(fatal))) {
		if ((err = cat_producer_recover(persist->producer, errstr, errstr_size)) == CAT_OK)
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "changes producer failed: %s",
					  fatal);
	} else if (cat_producer_outstanding(persist->producer) > 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "%llu change batches not acknowledged by %s within %d ms",
				  (unsigned long long)cat_producer_outstanding(persist->producer),
				  persist->changes_topic, timeout_ms);
	} else if (persist->delivery_failures > 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not publish changes: %s",
				  persist->delivery_error);
	} else {
		cat_metrics_add(persist->m_changes, (int64_t)persist->unsettled_changes);
		cat_metrics_add(persist->m_change_messages, (int64_t)persist->unsettled_messages);
		cat_metrics_observe(persist->m_settle_seconds,
				    (double)(cat_time_mono_us() - started_us) / 1e6);
	}
	/* a failure: the consumer applies every unsettled batch again, which
	 * publishes their changes again */
	persist->delivery_failures = 0;
	persist->unsettled_changes = 0;
	persist->unsettled_messages = 0;
	return err;
}

/* --- the handler ------------------------------------------------------------------------------ */

cat_err_t persist_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	persist_t *persist = opaque;
	int64_t started_us = cat_time_mono_us(), decoded_us, committed_us;
	size_t n_valid = 0, last_valid = 0;
	cat_err_t err;

	cat_sql_pruner_run(&persist->pruner, cat_pg_session_conn(persist->pg));
	err = decode_batch(persist, batch, &n_valid, &last_valid, errstr, errstr_size);
	if (err != CAT_OK || n_valid == 0)
		goto out;
	if ((err = resolve(persist, batch, errstr, errstr_size)) != CAT_OK)
		goto out;
	decoded_us = cat_time_mono_us();
	cat_metrics_observe(persist->m_decode_seconds, (double)(decoded_us - started_us) / 1e6);
	err = transaction(persist, errstr, errstr_size);
	if (err == CAT_ERR_PERMANENT && n_valid == 1) {
		/* the batch's only write is the one the database refuses */
		batch->msgs[last_valid].result = CAT_ERR_PERMANENT;
		snprintf(batch->msgs[last_valid].reason, sizeof(batch->msgs[last_valid].reason), "%s",
			 errstr);
		err = CAT_OK;
		goto out;
	}
	if (err != CAT_OK)
		goto out;
	committed_us = cat_time_mono_us();
	cat_metrics_observe(persist->m_tx_seconds, (double)(committed_us - decoded_us) / 1e6);

	err = publish_changes(persist, batch, cat_time_now_us(), errstr, errstr_size);
	if (err == CAT_OK)
		cat_metrics_observe(persist->m_publish_seconds,
				    (double)(cat_time_mono_us() - committed_us) / 1e6);

out:
	free_decoded(batch);
	release_scratch(persist);
	return err;
}
