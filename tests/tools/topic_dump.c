/*
 * topic-dump: a test consumer. Reads a topic from its beginning with a
 * fresh consumer group and prints each message as one JSON line:
 *
 *   {"partition":3,"offset":17,"key":"AAPL","value":{...write line...}}
 *
 * (value is the decoded WriteCommand for --type write, with the command's
 * "issued_at_us"; for --type raw, "raw_bytes":N and "value_text" when the
 * bytes are valid UTF-8). Both also carry "received_at_us" (when this
 * consumer polled it) and "timestamp_ms" (the message's Kafka timestamp),
 * to time the hops from publish to consumer. --headers
 * adds "headers":{name:value,...}. --type changes decodes a ChangeBatch and
 * prints one line per Change instead:
 *
 *   {"partition":3,"offset":17,"key":"news_raw:n1","index":0,"op":"upsert",
 *    "command_id":"...","issued_at_us":...,"committed_at_us":...,
 *    "batch_id":"...","source_topic":"...","source_partition":2,
 *    "source_first_offset":100,"source_last_offset":149,"record":{...}}
 * --type events decodes an Event:
 *
 *   {"partition":0,"offset":4,"key":"news_raw","event_id":"...","worker":"...",
 *    "kind":"sync.check.report","subject":"news_raw","command_id":"...",
 *    "ok":true,"message":"...","occurred_at_us":...,"attributes":{...},
 *    "counters":{"rows_missing":100,...}}
 * Stops after --count messages, or when nothing new arrived for --idle-ms,
 * or (--until-end) once every partition was read to its end, or at
 * --timeout-ms; exits 1 if fewer than --count were read, or (--until-end)
 * when the end was not reached.
 *
 *   topic-dump --topic catalyst.write.v1 --count 10000 [--type write|raw|changes|events]
 */
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_config.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_time.h"

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
};

static void add_headers(json_t *line, const rd_kafka_message_t *msg)
{
	rd_kafka_headers_t *headers = NULL;
	json_t *obj = json_object();
	const char *name;
	const void *value;
	size_t size;

	if (rd_kafka_message_headers(msg, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR)
		for (size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) == 0; i++)
			json_object_set_new(obj, name, value ? json_stringn(value, size) : json_null());
	json_object_set_new(line, "headers", obj);
}

static void print_message(const rd_kafka_message_t *msg, int decode_write, int with_headers)
{
	json_t *line = json_object();
	char *text;

	json_object_set_new(line, "partition", json_integer(msg->partition));
	json_object_set_new(line, "offset", json_integer(msg->offset));
	json_object_set_new(line, "received_at_us", json_integer(cat_time_now_us()));
	json_object_set_new(line, "timestamp_ms", json_integer(rd_kafka_message_timestamp(msg, NULL)));
	json_object_set_new(line, "key", msg->key ? json_stringn(msg->key, msg->key_len) : json_null());
	if (decode_write) {
		Catalyst__V1__WriteCommand *cmd = NULL;
		char errstr[256];

		if (cat_codec_write_decode(msg->payload, msg->len, &cmd, errstr, sizeof(errstr)) == CAT_OK) {
			char *value = cat_codec_write_to_json(cmd);

			json_object_set_new(line, "value", value ? json_loads(value, 0, NULL) : json_null());
			if (cmd->meta && cmd->meta->has_issued_at_us)
				json_object_set_new(line, "issued_at_us", json_integer(cmd->meta->issued_at_us));
			free(value);
			catalyst__v1__write_command__free_unpacked(cmd, NULL);
		} else {
			json_object_set_new(line, "error", json_string(errstr));
		}
	} else {
		json_t *value_text = json_stringn(msg->payload, msg->len); /* NULL unless UTF-8 */

		json_object_set_new(line, "raw_bytes", json_integer((json_int_t)msg->len));
		if (value_text)
			json_object_set_new(line, "value_text", value_text);
	}
	if (with_headers)
		add_headers(line, msg);
	text = json_dumps(line, JSON_COMPACT);
	if (text)
		printf("%s\n", text);
	free(text);
	json_decref(line);
}

/* One line per Change of a ChangeBatch (an undecodable one: a line with "error"). */
static void print_changes(const rd_kafka_message_t *msg)
{
	Catalyst__V1__ChangeBatch *batch =
		catalyst__v1__change_batch__unpack(NULL, msg->len, msg->payload ? msg->payload : (const void *)"");

	for (size_t i = 0; !batch || i < batch->n_changes; i++) {
		json_t *line = json_object();
		char *text;

		json_object_set_new(line, "partition", json_integer(msg->partition));
		json_object_set_new(line, "offset", json_integer(msg->offset));
		json_object_set_new(line, "key", msg->key ? json_stringn(msg->key, msg->key_len) : json_null());
		if (!batch) {
			json_object_set_new(line, "error", json_string("could not decode ChangeBatch"));
		} else {
			const Catalyst__V1__Change *change = batch->changes[i];
			char *record = cat_codec_record_to_json(change->record);

			json_object_set_new(line, "index", json_integer((json_int_t)i));
			json_object_set_new(line, "op",
					    json_string(!change->has_op ? "none"
							: change->op == CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT ? "upsert"
							: change->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE ? "delete"
														 : "unknown"));
			json_object_set_new(line, "command_id",
					    change->command_id ? json_string(change->command_id) : json_null());
			json_object_set_new(line, "issued_at_us", json_integer(change->issued_at_us));
			json_object_set_new(line, "committed_at_us", json_integer(batch->committed_at_us));
			json_object_set_new(line, "batch_id", batch->meta && batch->meta->command_id
								      ? json_string(batch->meta->command_id)
								      : json_null());
			json_object_set_new(line, "source_topic",
					    batch->source_topic ? json_string(batch->source_topic) : json_null());
			json_object_set_new(line, "source_partition", json_integer(batch->source_partition));
			json_object_set_new(line, "source_first_offset", json_integer(batch->source_first_offset));
			json_object_set_new(line, "source_last_offset", json_integer(batch->source_last_offset));
			json_object_set_new(line, "record", record ? json_loads(record, 0, NULL) : json_null());
			free(record);
		}
		text = json_dumps(line, JSON_COMPACT);
		if (text)
			printf("%s\n", text);
		free(text);
		json_decref(line);
		if (!batch)
			return;
	}
	catalyst__v1__change_batch__free_unpacked(batch, NULL);
}

/* One line per Event (an undecodable one: a line with "error"). */
static void print_event(const rd_kafka_message_t *msg)
{
	Catalyst__V1__Event *event =
		catalyst__v1__event__unpack(NULL, msg->len, msg->payload ? msg->payload : (const void *)"");
	json_t *line = json_object();
	char *text;

	json_object_set_new(line, "partition", json_integer(msg->partition));
	json_object_set_new(line, "offset", json_integer(msg->offset));
	json_object_set_new(line, "key", msg->key ? json_stringn(msg->key, msg->key_len) : json_null());
	if (!event) {
		json_object_set_new(line, "error", json_string("could not decode Event"));
	} else {
		json_t *attrs = json_object(), *counters = json_object();

		json_object_set_new(line, "event_id", event->event_id ? json_string(event->event_id) : json_null());
		json_object_set_new(line, "worker", event->worker ? json_string(event->worker) : json_null());
		json_object_set_new(line, "kind", event->kind ? json_string(event->kind) : json_null());
		json_object_set_new(line, "subject", event->subject ? json_string(event->subject) : json_null());
		json_object_set_new(line, "command_id",
				    event->command_id ? json_string(event->command_id) : json_null());
		json_object_set_new(line, "ok", json_boolean(event->ok));
		json_object_set_new(line, "message", event->message ? json_string(event->message) : json_null());
		json_object_set_new(line, "occurred_at_us", json_integer(event->occurred_at_us));
		for (size_t i = 0; i < event->n_attributes; i++)
			if (event->attributes[i]->key)
				json_object_set_new(attrs, event->attributes[i]->key,
						    json_string(event->attributes[i]->value ? event->attributes[i]->value : ""));
		for (size_t i = 0; i < event->n_counters; i++)
			if (event->counters[i]->key)
				json_object_set_new(counters, event->counters[i]->key,
						    json_integer(event->counters[i]->value));
		json_object_set_new(line, "attributes", attrs);
		json_object_set_new(line, "counters", counters);
		catalyst__v1__event__free_unpacked(event, NULL);
	}
	text = json_dumps(line, JSON_COMPACT);
	if (text)
		printf("%s\n", text);
	free(text);
	json_decref(line);
}

int main(int argc, char **argv)
{
	const char *topic = NULL, *type = "write";
	int with_headers = 0, until_end = 0, n_partitions = 0, n_at_end = 0;
	bool at_end[1024] = { false };
	long count = -1, idle_ms = 10000, timeout_ms = 120000, got = 0;
	cat_config_t *cfg = NULL;
	rd_kafka_conf_t *conf = NULL;
	rd_kafka_t *rk = NULL;
	rd_kafka_topic_partition_list_t *topics;
	char errstr[512], group[64];
	int64_t start, last;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--headers") == 0) {
			with_headers = 1;
			continue;
		}
		if (strcmp(argv[i], "--until-end") == 0) {
			until_end = 1;
			continue;
		}
		if (i + 1 >= argc)
			break;
		if (strcmp(argv[i], "--topic") == 0)
			topic = argv[i + 1];
		else if (strcmp(argv[i], "--count") == 0)
			count = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--idle-ms") == 0)
			idle_ms = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--timeout-ms") == 0)
			timeout_ms = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--type") == 0)
			type = argv[i + 1];
		i++;
	}
	if (!topic) {
		fprintf(stderr, "usage: topic-dump --topic T [--count N] [--idle-ms MS] [--timeout-ms MS] [--type write|raw|changes|events] [--headers] [--until-end]\n");
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, sizeof(config_defs) / sizeof(config_defs[0]), NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "topic-dump: %s\n", errstr);
		return 2;
	}
	cat_log_init("topic-dump", CAT_LOG_LEVEL_WARN);
	snprintf(group, sizeof(group), "topic-dump-%lld", (long long)cat_time_now_us());
	if (cat_kafka_conf_new(&conf, cfg, "topic-dump", errstr, sizeof(errstr)) != CAT_OK ||
	    cat_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)) != CAT_OK ||
	    cat_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, sizeof(errstr)) != CAT_OK ||
	    cat_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) != CAT_OK ||
	    cat_kafka_conf_set(conf, "enable.partition.eof", until_end ? "true" : "false", errstr,
			       sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "topic-dump: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		cat_config_destroy(cfg);
		return 2;
	}
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (!rk) {
		fprintf(stderr, "topic-dump: %s\n", errstr);
		cat_config_destroy(cfg);
		return 2;
	}
	rd_kafka_poll_set_consumer(rk);
	if (until_end) {
		char kerr[512];

		if (cat_kafka_topic_partitions(rk, topic, 10000, &n_partitions, kerr, sizeof(kerr)) != CAT_OK ||
		    n_partitions <= 0 || n_partitions > 1024) {
			fprintf(stderr, "topic-dump: could not read the partitions of %s\n", topic);
			rd_kafka_destroy(rk);
			cat_config_destroy(cfg);
			return 2;
		}
	}
	topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
	rd_kafka_subscribe(rk, topics);
	rd_kafka_topic_partition_list_destroy(topics);

	start = last = cat_time_mono_us();
	while (count < 0 || got < count) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 200);
		int64_t now = cat_time_mono_us();

		if (!msg) {
			/* idle only counts once something arrived (assignment takes a while) */
			if ((got > 0 && (now - last) / 1000 > idle_ms) || (now - start) / 1000 > timeout_ms)
				break;
			continue;
		}
		if (msg->err) {
			if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				fprintf(stderr, "topic-dump: %s\n", rd_kafka_message_errstr(msg));
			else if (until_end && msg->partition >= 0 && msg->partition < n_partitions &&
				 !at_end[msg->partition]) {
				at_end[msg->partition] = true;
				n_at_end++;
			}
			rd_kafka_message_destroy(msg);
			if (until_end && n_at_end == n_partitions)
				break;
			continue;
		}
		if (until_end && msg->partition >= 0 && msg->partition < n_partitions && at_end[msg->partition]) {
			at_end[msg->partition] = false; /* more came: not at its end any more */
			n_at_end--;
		}
		if (strcmp(type, "changes") == 0)
			print_changes(msg);
		else if (strcmp(type, "events") == 0)
			print_event(msg);
		else
			print_message(msg, strcmp(type, "write") == 0, with_headers);
		got++;
		last = now;
		rd_kafka_message_destroy(msg);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	cat_config_destroy(cfg);
	fprintf(stderr, "topic-dump: read %ld messages\n", got);
	if (until_end && n_at_end < n_partitions) {
		fprintf(stderr, "topic-dump: %d of %d partitions read to their end\n", n_at_end, n_partitions);
		return 1;
	}
	return count >= 0 && got < count ? 1 : 0;
}
