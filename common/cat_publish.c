#include "cat_publish.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_kafka.h"
#include "cat_time.h"

/* cat_publish_wait() waits this much past the delivery timeout, by which
 * librdkafka has reported every message (the margin covers the last poll). */
#define WAIT_MARGIN_MS 5000
#define TOPIC_MAX      256
#define KEY_MAX	       400

typedef enum publish_topic {
	PUBLISH_WRITE,
	PUBLISH_CACHE,
	PUBLISH_SYNC,
	PUBLISH_BACKUP,
	PUBLISH_N_TOPICS,
} publish_topic_t;

struct cat_publish {
	cat_producer_t *producer;
	char *producer_name;
	int delivery_timeout_ms;
	cat_publish_report_fn report;
	void *opaque;
	uint64_t failed_seen; /* failed reports already returned by cat_publish_wait() */
	char topics[PUBLISH_N_TOPICS][TOPIC_MAX];
	char command_id[CAT_CODEC_COMMAND_ID_MAX + 1];
};

static void publish_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg,
			   void *opaque)
{
	cat_publish_t *publish = opaque;

	(void)msg;
	if (publish->report)
		publish->report(msg_opaque, err ? rd_kafka_err2str(err) : NULL, publish->opaque);
}

cat_err_t cat_publish_new(cat_publish_t **out, const cat_config_t *cfg, const cat_publish_options_t *options,
			  char *errstr, size_t errstr_size)
{
	static const char *const suffixes[PUBLISH_N_TOPICS] = {
		[PUBLISH_WRITE] = CAT_TOPIC_WRITE,
		[PUBLISH_CACHE] = CAT_TOPIC_CACHE,
		[PUBLISH_SYNC] = CAT_TOPIC_SYNC,
		[PUBLISH_BACKUP] = CAT_TOPIC_BACKUP,
	};
	cat_publish_t *publish;
	cat_err_t err;

	*out = NULL;
	if (!(publish = calloc(1, sizeof(*publish))) ||
	    !(publish->producer_name = strdup(options->producer ? options->producer : ""))) {
		free(publish);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	publish->delivery_timeout_ms = options->delivery_timeout_ms;
	publish->report = options->report;
	publish->opaque = options->opaque;
	for (int t = 0; t < PUBLISH_N_TOPICS; t++)
		cat_kafka_topic(cfg, suffixes[t], publish->topics[t], sizeof(publish->topics[t]));
	if ((err = cat_producer_new(&publish->producer, cfg, options->client_id, options->delivery_timeout_ms,
				    publish_report, publish, errstr, errstr_size)) != CAT_OK) {
		cat_publish_destroy(publish);
		return err;
	}
	*out = publish;
	return CAT_OK;
}

void cat_publish_destroy(cat_publish_t *publish)
{
	if (!publish)
		return;
	cat_producer_destroy(publish->producer);
	free(publish->producer_name);
	free(publish);
}

/* Completes the meta in *meta_slot (only while packing: the caller's
 * structures are put back), packs `msg` and enqueues it with `key`. */
static cat_err_t publish_send(cat_publish_t *publish, publish_topic_t topic, ProtobufCMessage *msg,
			      Catalyst__V1__CommandMeta **meta_slot, const char *key, void *ref, char *errstr,
			      size_t errstr_size)
{
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__CommandMeta *given = *meta_slot;
	uint8_t *buf;
	size_t len;
	cat_err_t err;

	if (given)
		meta = *given; /* shares its strings; only the copy is completed */
	if (meta.command_id && *meta.command_id) {
		if (strlen(meta.command_id) > CAT_CODEC_COMMAND_ID_MAX)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "command_id longer than %d characters", CAT_CODEC_COMMAND_ID_MAX);
		snprintf(publish->command_id, sizeof(publish->command_id), "%s", meta.command_id);
	} else {
		cat_codec_uuid(publish->command_id, sizeof(publish->command_id));
	}
	meta.command_id = publish->command_id;
	if (!meta.has_issued_at_us) {
		meta.has_issued_at_us = 1;
		meta.issued_at_us = cat_time_now_us();
	}
	if (!meta.producer)
		meta.producer = publish->producer_name;

	*meta_slot = &meta;
	len = protobuf_c_message_get_packed_size(msg);
	if (len > CAT_CODEC_MAX_MESSAGE_BYTES) {
		*meta_slot = given;
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "the command is larger than %d bytes",
				   CAT_CODEC_MAX_MESSAGE_BYTES);
	}
	if (!(buf = malloc(len ? len : 1))) {
		*meta_slot = given;
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	protobuf_c_message_pack(msg, buf);
	*meta_slot = given;

	err = cat_producer_send(publish->producer, publish->topics[topic], RD_KAFKA_PARTITION_UA, key, strlen(key),
				buf, len, NULL, ref, errstr, errstr_size);
	free(buf);
	if (err == CAT_OK)
		cat_producer_poll(publish->producer, 0); /* serve the reports that came meanwhile */
	return err;
}

cat_err_t cat_publish_write(cat_publish_t *publish, Catalyst__V1__WriteCommand *cmd, void *ref, char *errstr,
			    size_t errstr_size)
{
	char key[KEY_MAX];

	if (!cmd->record || !cat_codec_record_table(cmd->record))
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "a write without a record");
	cat_codec_record_key(cmd->record, key, sizeof(key));
	return publish_send(publish, PUBLISH_WRITE, &cmd->base, &cmd->meta, key, ref, errstr, errstr_size);
}

cat_err_t cat_publish_cache(cat_publish_t *publish, Catalyst__V1__CacheCommand *cmd, void *ref, char *errstr,
			    size_t errstr_size)
{
	const char *key = NULL;

	switch (cmd->action_case) {
	case CATALYST__V1__CACHE_COMMAND__ACTION_SET:
		key = cmd->set->key;
		break;
	case CATALYST__V1__CACHE_COMMAND__ACTION_DELETE:
		key = cmd->delete_->n_keys > 0 ? cmd->delete_->keys[0] : NULL;
		break;
	case CATALYST__V1__CACHE_COMMAND__ACTION_INVALIDATE:
		key = cmd->invalidate->pattern;
		break;
	case CATALYST__V1__CACHE_COMMAND__ACTION_WARM:
		key = "warm";
		break;
	default:
		break;
	}
	if (!key)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "a cache command without an action, key or pattern");
	return publish_send(publish, PUBLISH_CACHE, &cmd->base, &cmd->meta, key, ref, errstr, errstr_size);
}

cat_err_t cat_publish_sync(cat_publish_t *publish, Catalyst__V1__SyncCommand *cmd, void *ref, char *errstr,
			   size_t errstr_size)
{
	char key[KEY_MAX] = "";

	switch (cmd->action_case) {
	case CATALYST__V1__SYNC_COMMAND__ACTION_CHECK:
		if (cmd->check->table)
			snprintf(key, sizeof(key), "%s", cmd->check->table);
		break;
	case CATALYST__V1__SYNC_COMMAND__ACTION_RESYNC:
		if (cmd->resync->table)
			snprintf(key, sizeof(key), "%s", cmd->resync->table);
		break;
	case CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE: {
		const Catalyst__V1__Record *record =
			cmd->replicate->n_changes > 0 ? cmd->replicate->changes[0]->record : NULL;
		const cat_table_t *table = record ? cat_codec_record_table(record) : NULL;

		if (table)
			snprintf(key, sizeof(key), "%s:%s", table->name, cat_codec_record_pk(record));
		break;
	}
	default:
		break;
	}
	if (!key[0])
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "a sync command without an action, table or record");
	return publish_send(publish, PUBLISH_SYNC, &cmd->base, &cmd->meta, key, ref, errstr, errstr_size);
}

cat_err_t cat_publish_backup(cat_publish_t *publish, Catalyst__V1__BackupCommand *cmd, void *ref, char *errstr,
			     size_t errstr_size)
{
	if (cmd->action_case == CATALYST__V1__BACKUP_COMMAND__ACTION__NOT_SET)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "a backup command without an action");
	return publish_send(publish, PUBLISH_BACKUP, &cmd->base, &cmd->meta,
			    cmd->database && *cmd->database ? cmd->database : "primary", ref, errstr,
			    errstr_size);
}

cat_err_t cat_publish_wait(cat_publish_t *publish, char *errstr, size_t errstr_size)
{
	cat_err_t err = cat_producer_flush(publish->producer, publish->delivery_timeout_ms + WAIT_MARGIN_MS, errstr,
					   errstr_size);
	uint64_t failed = cat_producer_failed(publish->producer) - publish->failed_seen;

	publish->failed_seen = cat_producer_failed(publish->producer);
	if (err != CAT_OK)
		return err;
	if (failed > 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "commands not delivered: %llu",
				   (unsigned long long)failed);
	return CAT_OK;
}

const char *cat_publish_command_id(const cat_publish_t *publish)
{
	return publish->command_id;
}

uint64_t cat_publish_delivered(const cat_publish_t *publish)
{
	return cat_producer_delivered(publish->producer);
}

uint64_t cat_publish_failed(const cat_publish_t *publish)
{
	return cat_producer_failed(publish->producer);
}

uint64_t cat_publish_outstanding(const cat_publish_t *publish)
{
	return cat_producer_outstanding(publish->producer);
}
