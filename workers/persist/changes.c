#include "changes.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cat_codec.h"
#include "cat_log.h"
#include "cat_schema.h"
#include "cat_sql.h"
#include "cat_time.h"
#include "catalyst/v1/views.pb-c.h"

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
	const cat_apply_write_t *write; /* ->source: its command */
	int32_t partition;		/* of changes.v1 */
	uint8_t publish;		/* PUBLISH_RECORD or PUBLISH_TOMBSTONE */
} change_out_t;

struct persist_changes {
	cat_producer_t *producer;
	char topic[256];
	int partitions; /* 0 until read from the metadata */
	int timeout_ms;
	persist_changes_metrics_t m;

	/* delivery reports since the last settle */
	uint64_t delivery_failures;
	char delivery_error[256];
	uint64_t unsettled_changes; /* rows and messages published since the last settle */
	uint64_t unsettled_messages;

	/* per-batch scratch, kept at its largest size up to SCRATCH_KEEP_* */
	size_t cap;
	change_out_t *outs;
	Catalyst__V1__ChangeView *views; /* each record: a slice of its message, else owned */
	Catalyst__V1__ChangeView **view_ptrs;
	bool *view_owned; /* the record bytes were packed for it: free them */
	uint8_t *packed;
	size_t cap_packed;
};

/* The partition count of changes.v1, from the cluster's metadata. */
static cat_err_t read_partitions(persist_changes_t *changes, char *errstr, size_t errstr_size)
{
	return cat_kafka_topic_partitions(cat_producer_handle(changes->producer), changes->topic,
					  METADATA_TIMEOUT_MS, &changes->partitions, errstr, errstr_size);
}

cat_err_t persist_changes_new(persist_changes_t **out, const cat_config_t *cfg, cat_producer_t *producer,
			      int timeout_ms, const persist_changes_metrics_t *metrics, char *errstr,
			      size_t errstr_size)
{
	persist_changes_t *changes;
	cat_err_t err;

	*out = NULL;
	if (!(changes = calloc(1, sizeof(*changes))))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	changes->producer = producer;
	changes->timeout_ms = timeout_ms;
	changes->m = *metrics;
	cat_kafka_topic(cfg, CAT_TOPIC_CHANGES, changes->topic, sizeof(changes->topic));

	/* a missing topic is a configuration error; an unreachable cluster is
	 * not: the first batch asks again */
	err = read_partitions(changes, errstr, errstr_size);
	if (err == CAT_ERR_FATAL) {
		persist_changes_destroy(changes);
		return err;
	}
	if (err != CAT_OK)
		CAT_LOG_WARN("KAFKA", "%s: will ask again before publishing", errstr);
	*out = changes;
	return CAT_OK;
}

/* --- scratch ------------------------------------------------------------------------------- */

/* Room for the changes of n writes. */
static cat_err_t reserve(persist_changes_t *changes, size_t n, char *errstr, size_t errstr_size)
{
	change_out_t *outs;
	Catalyst__V1__ChangeView *views;
	Catalyst__V1__ChangeView **ptrs;
	bool *owned;

	if (n <= changes->cap)
		return CAT_OK;
	outs = realloc(changes->outs, n * sizeof(*outs));
	views = outs ? realloc(changes->views, n * sizeof(*views)) : NULL;
	ptrs = views ? realloc(changes->view_ptrs, n * sizeof(*ptrs)) : NULL;
	owned = ptrs ? realloc(changes->view_owned, n * sizeof(*owned)) : NULL;
	if (outs)
		changes->outs = outs;
	if (views)
		changes->views = views;
	if (ptrs)
		changes->view_ptrs = ptrs;
	if (!owned)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	changes->view_owned = owned;
	changes->cap = n;
	return CAT_OK;
}

/* Frees the per-row scratch, the packing buffer, or both. */
static void scratch_free(persist_changes_t *changes, bool rows, bool packed)
{
	if (rows) {
		free(changes->outs);
		free(changes->views);
		free(changes->view_ptrs);
		free(changes->view_owned);
		changes->outs = NULL;
		changes->views = NULL;
		changes->view_ptrs = NULL;
		changes->view_owned = NULL;
		changes->cap = 0;
	}
	if (packed) {
		free(changes->packed);
		changes->packed = NULL;
		changes->cap_packed = 0;
	}
}

/* After a large batch, the scratch memory goes back (the next large batch
 * allocates afresh: a page fault per 4 KiB, against milliseconds of SQL),
 * so that an idle worker stays small. */
static void release_scratch(persist_changes_t *changes)
{
	scratch_free(changes, changes->cap > SCRATCH_KEEP_ROWS, changes->cap_packed > SCRATCH_KEEP_BYTES);
}

void persist_changes_destroy(persist_changes_t *changes)
{
	if (!changes)
		return;
	scratch_free(changes, true, true);
	free(changes);
}

/* --- what goes out ------------------------------------------------------------------------- */

/* The rules of changes.h, on what the table held after the write's statement. */
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
static Catalyst__V1__Record *key_record_new(const cat_apply_t *apply, const cat_apply_write_t *write,
					    int64_t version)
{
	const cat_sql_table_t *st = cat_apply_sql(apply, write->table);
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

/* Fills views[k] for `out`: the record's bytes are those of its command
 * message, spliced as they are (the message stays alive until the batch
 * settles); 0, or -1 when out of memory. */
static int view_fill(persist_changes_t *changes, const persist_command_t *commands, const cat_apply_t *apply,
		     size_t k, const change_out_t *out)
{
	const cat_apply_write_t *write = out->write;
	const persist_command_t *command = &commands[write->source];
	const Catalyst__V1__WriteCommand *cmd = command->cmd;
	Catalyst__V1__ChangeView *view = &changes->views[k];

	catalyst__v1__change_view__init(view);
	view->has_op = 1;
	view->op = cmd->op;
	view->has_record = 1;
	changes->view_owned[k] = false;
	if (out->publish == PUBLISH_TOMBSTONE) {
		Catalyst__V1__Record *record = key_record_new(apply, write, write->tombstone);
		int rc = record ? record_pack(record, &view->record) : -1;

		free_key_record(record);
		if (rc)
			return -1;
		view->op = CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
		changes->view_owned[k] = true;
	} else if (command->record) {
		view->record.data = (uint8_t *)command->record;
		view->record.len = command->record_len;
	} else {
		if (record_pack(cmd->record, &view->record))
			return -1;
		changes->view_owned[k] = true;
	}
	if (cmd->meta) {
		view->command_id = cmd->meta->command_id;
		view->has_issued_at_us = cmd->meta->has_issued_at_us;
		view->issued_at_us = cmd->meta->issued_at_us;
	}
	changes->view_ptrs[k] = view;
	return 0;
}

/* Frees what view_fill() allocated for views[0, n). */
static void views_release(persist_changes_t *changes, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (changes->view_owned[k])
			free(changes->views[k].record.data);
}

/* Bytes a Change adds to a ChangeBatch (tag, length, body). */
static size_t change_size(const Catalyst__V1__ChangeView *view)
{
	size_t body = catalyst__v1__change_view__get_packed_size(view);

	return body + 1 + (body < 128 ? 1 : body < 16384 ? 2 : body < 2097152 ? 3 : 5);
}

/* --- sending ------------------------------------------------------------------------------- */

/* Sends views[from, to) as one ChangeBatch (packed from its view) to
 * `partition`, keyed by the first change's "table:pk". */
static cat_err_t send_change_batch(persist_changes_t *changes, const persist_source_t *source, int32_t partition,
				   size_t from, size_t to, int64_t committed_at_us, char *errstr, size_t errstr_size)
{
	Catalyst__V1__ChangeBatchView change_batch = CATALYST__V1__CHANGE_BATCH_VIEW__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	char command_id[384], key[256];
	size_t len, key_len;

	/* a redelivered batch split the same way gets the same ids */
	snprintf(command_id, sizeof(command_id), "%s/%d/%lld-%lld/%d/%zu", source->topic, (int)source->partition,
		 (long long)source->first_offset, (long long)source->last_offset, (int)partition, from);
	meta.command_id = command_id;
	meta.has_issued_at_us = 1;
	meta.issued_at_us = cat_time_now_us();
	meta.producer = PRODUCER_NAME;
	change_batch.meta = &meta;
	change_batch.n_changes = to - from;
	change_batch.changes = changes->view_ptrs + from;
	change_batch.has_committed_at_us = 1;
	change_batch.committed_at_us = committed_at_us;
	change_batch.source_topic = (char *)source->topic;
	change_batch.has_source_partition = 1;
	change_batch.source_partition = source->partition;
	change_batch.has_source_first_offset = 1;
	change_batch.source_first_offset = source->first_offset;
	change_batch.has_source_last_offset = 1;
	change_batch.source_last_offset = source->last_offset;

	len = catalyst__v1__change_batch_view__get_packed_size(&change_batch);
	if (len > changes->cap_packed) {
		uint8_t *grown = realloc(changes->packed, len);

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		changes->packed = grown;
		changes->cap_packed = len;
	}
	catalyst__v1__change_batch_view__pack(&change_batch, changes->packed);
	key_len = change_key(changes->outs[from].write, key, sizeof(key));
	return cat_producer_send(changes->producer, changes->topic, partition, key, key_len, changes->packed, len,
				 NULL, changes, errstr, errstr_size);
}

/* The writes of `source`'s commands that go out, with their partitions, in
 * the order they are sent; returns how many. */
static size_t select_outs(persist_changes_t *changes, const persist_source_t *source, const cat_apply_t *apply)
{
	char key[256];
	size_t n = 0;

	for (size_t i = 0; i < cat_apply_n(apply); i++) {
		const cat_apply_write_t *write = cat_apply_write(apply, i);
		publish_as_t publish;

		if (write->source < source->from || write->source >= source->from + source->n ||
		    (publish = publish_as(write)) == PUBLISH_NONE)
			continue;
		changes->outs[n++] = (change_out_t){
			.write = write,
			.partition = (int32_t)(crc32(0L, (const Bytef *)key,
						     (uInt)change_key(write, key, sizeof(key))) %
					       (uint32_t)changes->partitions),
			.publish = (uint8_t)publish};
	}
	qsort(changes->outs, n, sizeof(*changes->outs), publish_cmp);
	return n;
}

cat_err_t persist_changes_publish(persist_changes_t *changes, const persist_command_t *commands,
				  const persist_source_t *source, const cat_apply_t *apply, int64_t committed_at_us,
				  char *errstr, size_t errstr_size)
{
	rd_kafka_t *rk = cat_producer_handle(changes->producer);
	size_t n, n_messages = 0, k = 0;
	char fatal[256];
	cat_err_t err = CAT_OK;

	if (changes->partitions == 0 && (err = read_partitions(changes, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = reserve(changes, cat_apply_n(apply), errstr, errstr_size)) != CAT_OK)
		goto out;
	if ((n = select_outs(changes, source, apply)) == 0)
		goto out;
	for (k = 0; k < n; k++)
		if (view_fill(changes, commands, apply, k, &changes->outs[k])) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
			goto out;
		}

	for (size_t from = 0; from < n;) {
		size_t to = from, bytes = 0;

		while (to < n && changes->outs[to].partition == changes->outs[from].partition &&
		       to - from < CHANGES_MAX_ROWS) {
			size_t size = change_size(&changes->views[to]);

			if (to > from && bytes + size > CHANGES_MAX_BYTES)
				break;
			bytes += size;
			to++;
		}
		err = send_change_batch(changes, source, changes->outs[from].partition, from, to, committed_at_us,
					errstr, errstr_size);
		if (err != CAT_OK)
			goto out;
		n_messages++;
		from = to;
	}

	/* sent at once, not after linger.ms: the next batch overlaps the round trip */
	rd_kafka_poll(rk, 0);
	if (rd_kafka_fatal_error(rk, fatal, sizeof(fatal)) &&
	    (err = cat_producer_recover(changes->producer, errstr, errstr_size)) == CAT_OK)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "changes producer failed: %s", fatal);
	changes->unsettled_changes += n;
	changes->unsettled_messages += n_messages;

out:
	views_release(changes, k);
	release_scratch(changes);
	return err;
}

/* --- acknowledgements ---------------------------------------------------------------------- */

void persist_changes_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg,
			    void *opaque)
{
	persist_changes_t *changes = msg_opaque;

	(void)opaque;
	if (!changes || err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	changes->delivery_failures++;
	snprintf(changes->delivery_error, sizeof(changes->delivery_error), "%s [%d]: %s",
		 rd_kafka_topic_name(msg->rkt), (int)msg->partition, rd_kafka_err2str(err));
}

cat_err_t persist_changes_settle(persist_changes_t *changes, int timeout_ms, char *errstr, size_t errstr_size)
{
	rd_kafka_t *rk = cat_producer_handle(changes->producer);
	int64_t started_us = cat_time_mono_us();
	char fatal[256];
	cat_err_t err = CAT_OK;

	if (timeout_ms > changes->timeout_ms)
		timeout_ms = changes->timeout_ms;
	/* sends what lingers, serves the delivery reports */
	cat_producer_drain(changes->producer, timeout_ms);
	if (rd_kafka_fatal_error(rk, fatal, sizeof(fatal))) {
		if ((err = cat_producer_recover(changes->producer, errstr, errstr_size)) == CAT_OK)
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "changes producer failed: %s",
					  fatal);
	} else if (cat_producer_outstanding(changes->producer) > 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "%llu change batches not acknowledged by %s within %d ms",
				  (unsigned long long)cat_producer_outstanding(changes->producer), changes->topic,
				  timeout_ms);
	} else if (changes->delivery_failures > 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not publish changes: %s",
				  changes->delivery_error);
	} else {
		cat_metrics_add(changes->m.rows, (int64_t)changes->unsettled_changes);
		cat_metrics_add(changes->m.messages, (int64_t)changes->unsettled_messages);
		cat_metrics_observe(changes->m.settle_seconds, (double)(cat_time_mono_us() - started_us) / 1e6);
	}
	/* a failure: the consumer applies every unsettled batch again, which
	 * publishes their changes again */
	changes->delivery_failures = 0;
	changes->unsettled_changes = 0;
	changes->unsettled_messages = 0;
	return err;
}
