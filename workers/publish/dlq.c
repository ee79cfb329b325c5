/*
 * catalyst-publish dlq: the dead letters of dlq.v1, for operators.
 *
 *   dlq list   [FILTERS] [--pending] [--json]
 *   dlq show   [FILTERS] [PARTITION:OFFSET...]
 *   dlq replay [FILTERS] [--all] [--dry-run] [--by NAME] [PARTITION:OFFSET...]
 *
 * A dead letter is the original message (bytes and key) with the headers
 * common/cat_consumer adds: x-catalyst-error, -source-topic,
 * -source-partition, -source-offset, -worker, -failed-at. dlq.v1 is read
 * with partitions assigned (no consumer group: nothing is committed) from
 * the beginning, or the lowest offset asked for, to the high watermark seen
 * at the start; then the reader stops.
 *
 * replay re-publishes each selected letter's bytes and key to its source
 * topic and partition (the partition keeps the key's order whatever
 * partitioner the original producer used), waits for the acknowledgements,
 * then records the replayed letters in dlq_replays on the primary (see
 * migrations/0004_dlq_replays.up.sql for why there and in that order). A
 * letter already recorded, or another dead letter of the same source
 * message, is never replayed again. Only topics of this fleet under the
 * current CATALYST_TOPIC_PREFIX are replay targets, whatever a header says.
 * A session advisory lock keeps two replays of one dlq topic apart.
 */
#define _GNU_SOURCE /* strcasestr */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <jansson.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cat_codec.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_time.h"
#include "publish.h"

#define PROG "catalyst-publish dlq"
#define MAX_COORDS 4096
#define METADATA_TIMEOUT_MS 10000

/* The topics a dead letter may be replayed to (suffixes under the prefix):
 * those the workers consume, with the message each carries and the word
 * that names its commands' kind. */
typedef struct replay_target {
	const char *suffix;
	const ProtobufCMessageDescriptor *descriptor;
	const char *kind;
} replay_target_t;

static const replay_target_t replay_targets[] = {
	{CAT_TOPIC_WRITE, &catalyst__v1__write_command__descriptor, "write"},
	{CAT_TOPIC_CHANGES, &catalyst__v1__change_batch__descriptor, "changes"},
	{CAT_TOPIC_CACHE, &catalyst__v1__cache_command__descriptor, "cache"},
	{CAT_TOPIC_SYNC, &catalyst__v1__sync_command__descriptor, "sync"},
	{CAT_TOPIC_BACKUP, &catalyst__v1__backup_command__descriptor, "backup"},
};
#define N_REPLAY_TARGETS (sizeof(replay_targets) / sizeof(replay_targets[0]))

typedef struct coord {
	int32_t partition;
	int64_t offset;
	bool found;
} coord_t;

typedef struct opts {
	const char *action;
	const char *reason;
	const char *table;
	const char *source_topic;
	const char *worker;
	const char *by;
	int64_t since_us; /* 0: no bound */
	bool pending, json, all, dry_run;
	coord_t *coords;
	size_t n_coords;
} opts_t;

typedef struct letter {
	int32_t partition;
	int64_t offset;
	int64_t timestamp_ms; /* Kafka's, -1 if none */
	char *key;	      /* NULL: no key */
	size_t key_len;
	uint8_t *value;
	size_t value_len;
	json_t *headers; /* {name: value} (the last of a name; binary values as hex) */
	const char *reason, *source_topic, *worker, *failed_at; /* in headers, "" if absent */
	bool source_ok;					       /* partition and offset headers parse */
	int32_t source_partition;
	int64_t source_offset;
	int64_t failed_at_us;
	const replay_target_t *target; /* its source topic under our prefix, NULL if not ours */
	char kind[48];	    /* "write.upsert", "cache.set", ... "-" when undecodable */
	char tables[256];   /* "trade_records", "news_raw,trading_signals", "-" */
	/* replay */
	int replayed; /* -1 unknown (no PostgreSQL), 0 no, 1 yes */
	int delivered; /* 0 waiting, 1 acknowledged, -1 failed */
	int32_t replayed_partition;
	int64_t replayed_offset;
} letter_t;

typedef struct letters {
	letter_t *v;
	size_t n, cap;
	size_t scanned; /* dead letters read, selected or not */
} letters_t;

static int usage_error(const char *fmt, ...) CAT_PRINTF(1, 2);

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (try --help)\n");
	return 2;
}

/* --- arguments -------------------------------------------------------------------------- */

/* "P:O" with P >= 0, O >= 0. */
static bool parse_coord(const char *text, coord_t *out)
{
	char *end;
	long long p, o;

	errno = 0;
	p = strtoll(text, &end, 10);
	if (errno || end == text || *end != ':' || p < 0 || p > INT32_MAX || !isdigit((unsigned char)text[0]))
		return false;
	text = end + 1;
	o = strtoll(text, &end, 10);
	if (errno || end == text || *end || o < 0 || !isdigit((unsigned char)text[0]))
		return false;
	out->partition = (int32_t)p;
	out->offset = o;
	out->found = false;
	return true;
}

/* An RFC 3339 time, or a duration back from now: 90s, 30m, 2h, 7d. */
static bool parse_since(const char *text, int64_t *out_us)
{
	char *end;
	long long n;
	int64_t unit;

	if (cat_time_parse_rfc3339(text, out_us) == 0)
		return true;
	errno = 0;
	n = strtoll(text, &end, 10);
	if (errno || end == text || n < 0 || !isdigit((unsigned char)text[0]) || strlen(end) != 1)
		return false;
	switch (*end) {
	case 's': unit = 1000000LL; break;
	case 'm': unit = 60 * 1000000LL; break;
	case 'h': unit = 3600 * 1000000LL; break;
	case 'd': unit = 86400 * 1000000LL; break;
	default: return false;
	}
	if (n > INT64_MAX / unit)
		return false;
	*out_us = cat_time_now_us() - n * unit;
	return true;
}

static int parse_args(int argc, char **argv, opts_t *o)
{
	if (argc < 1)
		return usage_error("missing action: list, show or replay");
	o->action = argv[0];
	if (strcmp(o->action, "list") != 0 && strcmp(o->action, "show") != 0 && strcmp(o->action, "replay") != 0)
		return usage_error("unknown action %s: list, show or replay", o->action);
	if (!(o->coords = calloc(MAX_COORDS, sizeof(*o->coords)))) {
		fprintf(stderr, PROG ": out of memory\n");
		return 1;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool takes_value = strcmp(a, "--reason") == 0 || strcmp(a, "--table") == 0 ||
				   strcmp(a, "--source-topic") == 0 || strcmp(a, "--since") == 0 ||
				   strcmp(a, "--worker") == 0 || strcmp(a, "--by") == 0;

		if (takes_value && (i + 1 >= argc || !argv[i + 1][0]))
			return usage_error("%s needs a value", a);
		if (strcmp(a, "--reason") == 0) {
			o->reason = argv[++i];
		} else if (strcmp(a, "--table") == 0) {
			o->table = argv[++i];
			if (!cat_schema_table(o->table))
				return usage_error("--table %s: not a table of the schema", o->table);
		} else if (strcmp(a, "--source-topic") == 0) {
			o->source_topic = argv[++i];
		} else if (strcmp(a, "--worker") == 0) {
			o->worker = argv[++i];
		} else if (strcmp(a, "--since") == 0) {
			if (!parse_since(argv[++i], &o->since_us))
				return usage_error("--since %s: an RFC 3339 time or a duration such as 30m, 2h, 7d",
						   argv[i]);
		} else if (strcmp(a, "--by") == 0 && strcmp(o->action, "replay") == 0) {
			o->by = argv[++i];
		} else if (strcmp(a, "--pending") == 0) {
			o->pending = true;
		} else if (strcmp(a, "--json") == 0 && strcmp(o->action, "list") == 0) {
			o->json = true;
		} else if (strcmp(a, "--all") == 0 && strcmp(o->action, "replay") == 0) {
			o->all = true;
		} else if (strcmp(a, "--dry-run") == 0 && strcmp(o->action, "replay") == 0) {
			o->dry_run = true;
		} else if (a[0] == '-') {
			return usage_error("unknown option %s for this action", a);
		} else if (strcmp(o->action, "list") == 0) {
			return usage_error("list takes no PARTITION:OFFSET (%s): use show", a);
		} else if (o->n_coords == MAX_COORDS) {
			return usage_error("more than %d PARTITION:OFFSET arguments", MAX_COORDS);
		} else if (!parse_coord(a, &o->coords[o->n_coords++])) {
			return usage_error("%s: not PARTITION:OFFSET (two non-negative integers)", a);
		}
	}
	if (strcmp(o->action, "show") == 0 && o->n_coords == 0 && !o->reason && !o->table && !o->source_topic &&
	    !o->worker && !o->since_us && !o->pending)
		return usage_error("show needs PARTITION:OFFSET or a filter");
	if (strcmp(o->action, "replay") == 0 && o->n_coords == 0 && !o->reason && !o->table && !o->source_topic &&
	    !o->worker && !o->since_us && !o->all)
		return usage_error("replay needs PARTITION:OFFSET, a filter, or --all");
	return 0;
}

/* --- decoding ------------------------------------------------------------------------------- */

/* The name of the set field of a message's oneof, or NULL. */
static const char *oneof_case_name(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;

	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
		    *(const uint32_t *)((const char *)msg + f->quantifier_offset) == f->id)
			return f->name;
	}
	return NULL;
}

static void add_table(char *tables, size_t size, const char *name)
{
	size_t len = strlen(name);

	if (!name[0])
		return;
	for (const char *p = tables; (p = strstr(p, name)); p += len)
		if ((p == tables || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
			return; /* already listed */
	if (tables[0])
		strncat(tables, ",", size - strlen(tables) - 1);
	strncat(tables, name, size - strlen(tables) - 1);
}

static void add_record_table(char *tables, size_t size, const Catalyst__V1__Record *record)
{
	const cat_table_t *table = record ? cat_codec_record_table(record) : NULL;

	if (table)
		add_table(tables, size, table->name);
}

static void add_changes_tables(char *tables, size_t size, Catalyst__V1__Change **changes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		add_record_table(tables, size, changes[i]->record);
}

/* The letter's message, by its source topic, unpacked leniently (protobuf
 * only, no validation: a letter is often here because it failed
 * validation); NULL when it does not decode. */
static ProtobufCMessage *letter_unpack(const letter_t *l)
{
	const void *buf = l->value_len ? (const void *)l->value : (const void *)"";

	return l->target ? protobuf_c_message_unpack(l->target->descriptor, NULL, l->value_len, buf) : NULL;
}

/* The tables a command of sync.v1 or backup.v1 names. */
static void add_command_tables(char *tables, size_t size, const ProtobufCMessage *msg)
{
	if (msg->descriptor == &catalyst__v1__sync_command__descriptor) {
		const Catalyst__V1__SyncCommand *cmd = (const Catalyst__V1__SyncCommand *)msg;

		if (cmd->action_case == CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE)
			add_changes_tables(tables, size, cmd->replicate->changes, cmd->replicate->n_changes);
		else if (cmd->action_case == CATALYST__V1__SYNC_COMMAND__ACTION_CHECK && cmd->check->table)
			add_table(tables, size, cmd->check->table);
		else if (cmd->action_case == CATALYST__V1__SYNC_COMMAND__ACTION_RESYNC && cmd->resync->table)
			add_table(tables, size, cmd->resync->table);
	} else if (msg->descriptor == &catalyst__v1__backup_command__descriptor) {
		const Catalyst__V1__BackupCommand *cmd = (const Catalyst__V1__BackupCommand *)msg;

		if (cmd->action_case == CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES)
			for (size_t i = 0; i < cmd->tables->n_tables; i++)
				add_table(tables, size, cmd->tables->tables[i]);
	}
}

/* The message's command kind and tables, by its source topic; "-" for what
 * does not decode. */
static void describe(letter_t *l)
{
	ProtobufCMessage *msg = letter_unpack(l);
	char *kind = l->kind, *tables = l->tables;
	size_t ks = sizeof(l->kind), ts = sizeof(l->tables);

	snprintf(kind, ks, "-");
	tables[0] = '\0';
	if (!msg) {
	} else if (msg->descriptor == &catalyst__v1__write_command__descriptor) {
		const Catalyst__V1__WriteCommand *cmd = (const Catalyst__V1__WriteCommand *)msg;

		snprintf(kind, ks, "write.%s",
			 !cmd->has_op				       ? "none"
			 : cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT ? "upsert"
			 : cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE ? "delete"
									      : "unknown");
		add_record_table(tables, ts, cmd->record);
	} else if (msg->descriptor == &catalyst__v1__change_batch__descriptor) {
		const Catalyst__V1__ChangeBatch *batch = (const Catalyst__V1__ChangeBatch *)msg;

		snprintf(kind, ks, "changes");
		add_changes_tables(tables, ts, batch->changes, batch->n_changes);
	} else {
		/* a command of cache.v1, sync.v1 or backup.v1: its action */
		const char *action = oneof_case_name(msg);

		snprintf(kind, ks, "%s.%s", l->target->kind, action ? action : "none");
		add_command_tables(tables, ts, msg);
	}
	if (msg)
		protobuf_c_message_free_unpacked(msg, NULL);
	if (!tables[0])
		snprintf(tables, ts, "-");
}

/* The original message as JSON for show: a write line for write.v1 (what
 * `catalyst-publish write` reads back), else the command's fields; NULL when
 * it does not decode (then it is shown in hex). */
static json_t *message_json(const letter_t *l)
{
	ProtobufCMessage *msg = letter_unpack(l);
	json_t *out = NULL;

	if (!msg)
		return NULL;
	if (msg->descriptor == &catalyst__v1__write_command__descriptor) {
		char *text = cat_codec_write_to_json((const Catalyst__V1__WriteCommand *)msg);

		out = text ? json_loads(text, 0, NULL) : NULL;
		free(text);
	}
	if (!out)
		out = cat_codec_message_to_json(msg);
	protobuf_c_message_free_unpacked(msg, NULL);
	return out;
}

/* --- reading dlq.v1 ----------------------------------------------------------------------- */

static const char *header_text(const letter_t *l, const char *name)
{
	const char *v = json_string_value(json_object_get(l->headers, name));

	return v ? v : "";
}

static bool parse_int(const char *text, long long min, long long max, long long *out)
{
	char *end;

	errno = 0;
	*out = strtoll(text, &end, 10);
	return !errno && end != text && !*end && *out >= min && *out <= max;
}

/* Fills a letter from a message (copies what it keeps). */
static cat_err_t letter_from(letter_t *l, const rd_kafka_message_t *m, const cat_config_t *cfg)
{
	rd_kafka_headers_t *headers = NULL;
	const char *name;
	const void *value;
	size_t size;
	long long v;
	char prefix_topic[256];

	memset(l, 0, sizeof(*l));
	l->partition = m->partition;
	l->offset = m->offset;
	l->timestamp_ms = rd_kafka_message_timestamp(m, NULL);
	l->replayed = -1;
	if (m->key && !(l->key = malloc(m->key_len ? m->key_len : 1)))
		return CAT_ERR_FATAL;
	if (m->key) {
		memcpy(l->key, m->key, m->key_len);
		l->key_len = m->key_len;
	}
	if (!(l->value = malloc(m->len ? m->len : 1)) || !(l->headers = json_object()))
		return CAT_ERR_FATAL;
	if (m->len)
		memcpy(l->value, m->payload, m->len);
	l->value_len = m->len;
	if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR)
		for (size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) == 0; i++) {
			json_t *text = value ? json_stringn(value, size) : json_null();

			json_object_set_new(l->headers, name, text ? text : cat_codec_hex_json(value, size));
		}
	l->reason = header_text(l, "x-catalyst-error");
	l->source_topic = header_text(l, "x-catalyst-source-topic");
	l->worker = header_text(l, "x-catalyst-worker");
	l->failed_at = header_text(l, "x-catalyst-failed-at");
	if (parse_int(header_text(l, "x-catalyst-source-partition"), 0, INT32_MAX, &v)) {
		l->source_partition = (int32_t)v;
		l->source_ok = parse_int(header_text(l, "x-catalyst-source-offset"), 0, INT64_MAX, &v);
		l->source_offset = v;
	}
	if (cat_time_parse_rfc3339(l->failed_at, &l->failed_at_us) != 0)
		l->failed_at_us = l->timestamp_ms >= 0 ? l->timestamp_ms * 1000 : 0;
	for (size_t i = 0; i < N_REPLAY_TARGETS; i++)
		if (strcmp(l->source_topic, cat_kafka_topic(cfg, replay_targets[i].suffix, prefix_topic,
							    sizeof(prefix_topic))) == 0)
			l->target = &replay_targets[i];
	describe(l);
	return CAT_OK;
}

static void letter_clear(letter_t *l)
{
	free(l->key);
	free(l->value);
	json_decref(l->headers);
}

static void letters_clear(letters_t *ls)
{
	for (size_t i = 0; i < ls->n; i++)
		letter_clear(&ls->v[i]);
	free(ls->v);
	memset(ls, 0, sizeof(*ls));
}

static bool has_table(const char *tables, const char *table)
{
	size_t len = strlen(table);

	for (const char *p = tables; (p = strstr(p, table)); p += len)
		if ((p == tables || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
			return true;
	return false;
}

/* Whether the filters (not --pending, known later) select the letter. */
static bool selected(const opts_t *o, letter_t *l, const cat_config_t *cfg)
{
	char full[256];

	if (o->n_coords) {
		bool asked = false;

		for (size_t i = 0; i < o->n_coords; i++)
			if (o->coords[i].partition == l->partition && o->coords[i].offset == l->offset)
				asked = o->coords[i].found = true;
		if (!asked)
			return false;
	}
	if (o->reason && !strcasestr(l->reason, o->reason))
		return false;
	if (o->table && !has_table(l->tables, o->table))
		return false;
	if (o->worker && strcmp(l->worker, o->worker) != 0)
		return false;
	if (o->since_us && l->failed_at_us < o->since_us)
		return false;
	if (o->source_topic && strcmp(l->source_topic, o->source_topic) != 0 &&
	    strcmp(l->source_topic, cat_kafka_topic(cfg, o->source_topic, full, sizeof(full))) != 0)
		return false;
	return true;
}

/* Reads dlq_topic to its high watermarks (from the lowest offset asked
 * for, with coordinates) within timeout_ms and keeps the letters the
 * filters select. */
static cat_err_t scan(const cat_config_t *cfg, int timeout_ms, const char *dlq_topic, const opts_t *o,
		      letters_t *out, char *errstr, size_t errstr_size)
{
	rd_kafka_conf_t *conf = NULL;
	rd_kafka_t *rk = NULL;
	rd_kafka_topic_partition_list_t *assignment = NULL;
	int64_t *ends = NULL;
	int n_parts = 0, remaining = 0;
	char reason[512];
	int64_t deadline;
	rd_kafka_resp_err_t kerr;
	cat_err_t err;

	if ((err = cat_kafka_conf_new(&conf, cfg, "catalyst-publish-dlq", errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "group.id", "catalyst-publish-dlq", errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, errstr_size)) != CAT_OK)
		goto out;
	if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, errstr_size))) {
		err = CAT_ERR_FATAL;
		goto out;
	}
	conf = NULL; /* owned by rk */
	if (cat_kafka_topic_partitions(rk, dlq_topic, METADATA_TIMEOUT_MS, &n_parts, reason, sizeof(reason)) !=
	    CAT_OK) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not read the partitions of %s: %s",
				  dlq_topic, reason);
		goto out;
	}
	ends = calloc((size_t)n_parts, sizeof(*ends));
	assignment = rd_kafka_topic_partition_list_new(n_parts);
	if (!ends || !assignment) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	for (int p = 0; p < n_parts; p++) {
		int64_t low, high, start = -1;

		kerr = rd_kafka_query_watermark_offsets(rk, dlq_topic, p, &low, &high, METADATA_TIMEOUT_MS);
		if (kerr) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					  "could not read the offsets of %s [%d]: %s", dlq_topic, p,
					  rd_kafka_err2str(kerr));
			goto out;
		}
		ends[p] = high;
		if (!o->n_coords)
			start = low;
		for (size_t i = 0; i < o->n_coords; i++)
			if (o->coords[i].partition == p && (start < 0 || o->coords[i].offset < start))
				start = o->coords[i].offset;
		if (start < 0 || start >= high)
			continue;
		rd_kafka_topic_partition_list_add(assignment, dlq_topic, p)->offset = start < low ? low : start;
		remaining++;
	}
	if (remaining && (kerr = rd_kafka_assign(rk, assignment))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not assign %s: %s", dlq_topic,
				  rd_kafka_err2str(kerr));
		goto out;
	}
	deadline = cat_time_mono_us() + (int64_t)timeout_ms * 1000;
	while (remaining > 0) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		bool reached = false;

		if (cat_time_mono_us() > deadline) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					  "could not read %s to its end within CATALYST_PUBLISH_TIMEOUT_MS", dlq_topic);
			goto out;
		}
		if (!m)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			reached = m->partition >= 0 && m->partition < n_parts && ends[m->partition] >= 0 &&
				  m->offset >= ends[m->partition];
		} else if (m->err) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not read %s: %s", dlq_topic,
					  rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			if (rd_kafka_fatal_error(rk, NULL, 0))
				goto out;
			CAT_LOG_WARN("KAFKA", "%s", errstr);
			continue;
		} else if (m->partition >= 0 && m->partition < n_parts && ends[m->partition] >= 0) {
			if (m->offset < ends[m->partition]) {
				letter_t l;

				out->scanned++;
				if (letter_from(&l, m, cfg) != CAT_OK) {
					letter_clear(&l);
					rd_kafka_message_destroy(m);
					err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
					goto out;
				}
				if (!selected(o, &l, cfg)) {
					letter_clear(&l);
				} else {
					if (out->n == out->cap) {
						size_t cap = out->cap ? out->cap * 2 : 64;
						letter_t *grown = realloc(out->v, cap * sizeof(*grown));

						if (!grown) {
							letter_clear(&l);
							rd_kafka_message_destroy(m);
							err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
									  "out of memory");
							goto out;
						}
						out->v = grown;
						out->cap = cap;
					}
					out->v[out->n++] = l;
				}
			}
			reached = m->offset + 1 >= ends[m->partition];
		}
		if (reached) {
			ends[m->partition] = -1; /* done */
			remaining--;
		}
		rd_kafka_message_destroy(m);
	}
	err = CAT_OK;
out:
	if (assignment)
		rd_kafka_topic_partition_list_destroy(assignment);
	free(ends);
	if (rk) {
		rd_kafka_consumer_close(rk);
		rd_kafka_destroy(rk);
	}
	if (conf)
		rd_kafka_conf_destroy(conf);
	return err;
}

/* --- what was replayed (dlq_replays on the primary) ---------------------------------------- */

/* A connection to CATALYST_PG_URL whose schema has dlq_replays. */
static cat_err_t pg_open(const publish_settings_t *settings, PGconn **conn, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	if ((err = cat_pg_connect(conn, settings->pg_url, "catalyst-publish", (int)settings->pg_connect_timeout_s,
				  errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_pg_require_schema(*conn, CAT_SCHEMA_VERSION, errstr, errstr_size)) != CAT_OK) {
		cat_pg_close(*conn);
		*conn = NULL;
	}
	return err;
}

/* Marks each letter replayed or not: by its own coordinates, or by its
 * source message's. */
static cat_err_t mark_replayed(PGconn *conn, const char *dlq_topic, letters_t *ls, char *errstr,
			       size_t errstr_size)
{
	const char *params[] = {dlq_topic};
	PGresult *res = NULL;
	cat_err_t err;

	if ((err = cat_pg_exec(conn,
			       "SELECT dlq_partition, dlq_offset, source_topic, source_partition, source_offset "
			       "FROM dlq_replays WHERE dlq_topic = $1",
			       1, params, &res, errstr, errstr_size)) != CAT_OK)
		return err;
	for (size_t i = 0; i < ls->n; i++) {
		letter_t *l = &ls->v[i];

		l->replayed = 0;
		for (int r = 0; r < PQntuples(res) && !l->replayed; r++) {
			bool same_letter = atoi(PQgetvalue(res, r, 0)) == l->partition &&
					   strtoll(PQgetvalue(res, r, 1), NULL, 10) == l->offset;
			bool same_source = l->source_ok && strcmp(PQgetvalue(res, r, 2), l->source_topic) == 0 &&
					   atoi(PQgetvalue(res, r, 3)) == l->source_partition &&
					   strtoll(PQgetvalue(res, r, 4), NULL, 10) == l->source_offset;

			l->replayed = same_letter || same_source;
		}
	}
	PQclear(res);
	return CAT_OK;
}

/* Records the acknowledged replays, in one transaction; a letter recorded
 * meanwhile (ON CONFLICT) stays as it was. */
static cat_err_t record_replays(PGconn *conn, const char *dlq_topic, const letters_t *ls, const char *by,
				char *errstr, size_t errstr_size)
{
	cat_err_t err;

	if ((err = cat_pg_begin(conn, errstr, errstr_size)) != CAT_OK)
		return err;
	for (size_t i = 0; i < ls->n; i++) {
		const letter_t *l = &ls->v[i];
		char p[16], o[24], sp[16], so[24], rp[16], ro[24];
		const char *params[10] = {dlq_topic, p, o, l->source_topic, sp, so, l->reason, rp, ro, by};

		if (l->delivered != 1)
			continue;
		snprintf(p, sizeof(p), "%d", (int)l->partition);
		snprintf(o, sizeof(o), "%" PRId64, l->offset);
		snprintf(sp, sizeof(sp), "%d", (int)l->source_partition);
		snprintf(so, sizeof(so), "%" PRId64, l->source_offset);
		snprintf(rp, sizeof(rp), "%d", (int)l->replayed_partition);
		snprintf(ro, sizeof(ro), "%" PRId64, l->replayed_offset);
		if ((err = cat_pg_exec(conn,
				       "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, source_topic, "
				       "source_partition, source_offset, reason, replayed_partition, replayed_offset, "
				       "replayed_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
				       "ON CONFLICT DO NOTHING",
				       10, params, NULL, errstr, errstr_size)) != CAT_OK) {
			cat_pg_rollback(conn, NULL, 0);
			return err;
		}
	}
	if ((err = cat_pg_commit(conn, errstr, errstr_size)) != CAT_OK)
		cat_pg_rollback(conn, NULL, 0);
	return err;
}

/* --- list, show ------------------------------------------------------------------------------ */

static json_t *letter_summary_json(const letter_t *l, const char *dlq_topic)
{
	json_t *j = json_pack("{s:s, s:i, s:I, s:s, s:s, s:s, s:s, s:s}", "dlq_topic", dlq_topic, "partition",
			      (int)l->partition, "offset", (json_int_t)l->offset, "failed_at", l->failed_at,
			      "worker", l->worker, "reason", l->reason, "kind", l->kind, "table", l->tables);
	json_t *source = json_object();

	if (!j)
		j = json_object(); /* only out of memory: what fits is printed */
	json_object_set_new(source, "topic", json_string(l->source_topic));
	json_object_set_new(source, "partition", l->source_ok ? json_integer(l->source_partition) : json_null());
	json_object_set_new(source, "offset", l->source_ok ? json_integer(l->source_offset) : json_null());
	json_object_set_new(j, "source", source);
	json_object_set_new(j, "key", l->key ? json_stringn(l->key, l->key_len) : json_null());
	if (!json_object_get(j, "key") && l->key)
		json_object_set_new(j, "key", cat_codec_hex_json((const uint8_t *)l->key, l->key_len));
	json_object_set_new(j, "replayed", l->replayed < 0 ? json_null() : json_boolean(l->replayed));
	return j;
}

static void print_json_line(json_t *j, size_t flags)
{
	char *text = json_dumps(j, flags);

	if (text)
		printf("%s\n", text);
	free(text);
	json_decref(j);
}

static void source_text(const letter_t *l, char *buf, size_t size)
{
	if (l->source_ok)
		snprintf(buf, size, "%s:%d:%" PRId64, l->source_topic[0] ? l->source_topic : "-", (int)l->source_partition,
			 l->source_offset);
	else
		snprintf(buf, size, "%s", l->source_topic[0] ? l->source_topic : "-");
}

static void list_text(const letters_t *ls, bool with_state)
{
	int w_dlq = 3, w_at = 9, w_worker = 6, w_source = 6, w_kind = 4, w_table = 5;
	char dlq[48], source[320];

	for (size_t i = 0; i < ls->n; i++) {
		const letter_t *l = &ls->v[i];

		snprintf(dlq, sizeof(dlq), "%d:%" PRId64, (int)l->partition, l->offset);
		source_text(l, source, sizeof(source));
#define WIDEN(w, s) ((w) = (int)strlen(s) > (w) ? (int)strlen(s) : (w))
		WIDEN(w_dlq, dlq);
		WIDEN(w_at, l->failed_at[0] ? l->failed_at : "-");
		WIDEN(w_worker, l->worker[0] ? l->worker : "-");
		WIDEN(w_source, source);
		WIDEN(w_kind, l->kind);
		WIDEN(w_table, l->tables);
#undef WIDEN
	}
	printf("%-*s  %-*s  %-*s  %-*s  %-*s  %-*s  %sREASON\n", w_dlq, "DLQ", w_at, "FAILED AT", w_worker, "WORKER",
	       w_source, "SOURCE", w_kind, "KIND", w_table, "TABLE", with_state ? "REPLAYED  " : "");
	for (size_t i = 0; i < ls->n; i++) {
		const letter_t *l = &ls->v[i];

		snprintf(dlq, sizeof(dlq), "%d:%" PRId64, (int)l->partition, l->offset);
		source_text(l, source, sizeof(source));
		printf("%-*s  %-*s  %-*s  %-*s  %-*s  %-*s  %s%s\n", w_dlq, dlq, w_at, l->failed_at[0] ? l->failed_at : "-",
		       w_worker, l->worker[0] ? l->worker : "-", w_source, source, w_kind, l->kind, w_table, l->tables,
		       !with_state ? "" : l->replayed ? "yes       " : "no        ", l->reason[0] ? l->reason : "-");
	}
}

static void show(const letters_t *ls, const char *dlq_topic)
{
	for (size_t i = 0; i < ls->n; i++) {
		const letter_t *l = &ls->v[i];
		json_t *j = letter_summary_json(l, dlq_topic);
		json_t *message = message_json(l);

		json_object_set_new(j, "kafka_timestamp_ms", json_integer(l->timestamp_ms));
		json_object_set(j, "headers", l->headers);
		json_object_set_new(j, "value_bytes", json_integer((json_int_t)l->value_len));
		if (message)
			json_object_set_new(j, "message", message);
		else
			json_object_set_new(j, "value_hex", cat_codec_hex_json(l->value, l->value_len));
		print_json_line(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	}
}

/* --- replay ------------------------------------------------------------------------------------ */

static void replay_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg,
			  void *opaque)
{
	letter_t *l = msg_opaque;

	if (err) {
		l->delivered = -1;
		fprintf(stderr, PROG ": %d:%" PRId64 " not delivered to %s: %s\n", (int)l->partition, l->offset,
			l->source_topic, rd_kafka_err2str(err));
		return;
	}
	l->delivered = 1;
	l->replayed_partition = msg->partition;
	l->replayed_offset = msg->offset;
}

/* Partitions of a topic, or -1 (the topic does not exist). */
static int partition_count(rd_kafka_t *rk, const char *topic)
{
	char errstr[512];
	int n;

	return cat_kafka_topic_partitions(rk, topic, METADATA_TIMEOUT_MS, &n, errstr, sizeof(errstr)) == CAT_OK
		       ? n
		       : -1;
}

static void default_operator(char *buf, size_t size)
{
	struct passwd *pw = getpwuid(geteuid());
	char host[128] = "";

	gethostname(host, sizeof(host) - 1);
	snprintf(buf, size, "%s@%s", pw && pw->pw_name ? pw->pw_name : "unknown", host[0] ? host : "unknown");
}

static int replay(const cat_config_t *cfg, int timeout_ms, const opts_t *o, PGconn *conn, const char *dlq_topic,
		  letters_t *ls)
{
	cat_producer_t *producer = NULL;
	size_t n_replayed = 0, n_already = 0, n_refused = 0, n_failed = 0, n_sent = 0;
	int n_parts_of[N_REPLAY_TARGETS];
	char errstr[512], by[256];
	int rc = 1;

	for (size_t t = 0; t < N_REPLAY_TARGETS; t++)
		n_parts_of[t] = -2; /* not asked yet */
	if (o->by)
		snprintf(by, sizeof(by), "%s", o->by);
	else
		default_operator(by, sizeof(by));
	/* a letter may be as large as anything the workers fetched */
	if (!o->dry_run &&
	    cat_producer_new_with(&producer, cfg, "catalyst-publish-dlq", timeout_ms, replay_report, NULL,
				  "message.max.bytes", "67108864", errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, PROG ": %s\n", errstr);
		return 1;
	}
	for (size_t i = 0; i < ls->n; i++) {
		letter_t *l = &ls->v[i];
		rd_kafka_headers_t *headers;
		char from[320];
		int n_parts;
		size_t t;

		l->delivered = 0;
		if (l->replayed == 1) {
			n_already++;
			continue;
		}
		/* another letter of the same source message in this run */
		for (size_t k = 0; k < i && l->replayed != 1; k++)
			if (ls->v[k].replayed == 0 && ls->v[k].delivered >= 0 && ls->v[k].target && l->source_ok &&
			    ls->v[k].source_ok && strcmp(ls->v[k].source_topic, l->source_topic) == 0 &&
			    ls->v[k].source_partition == l->source_partition &&
			    ls->v[k].source_offset == l->source_offset)
				l->replayed = 1;
		if (l->replayed == 1) {
			printf("skipped %d:%" PRId64 ": the same source message as an earlier letter\n",
			       (int)l->partition, l->offset);
			n_already++;
			continue;
		}
		if (strcmp(header_text(l, "x-catalyst-truncated"), "true") == 0) {
			/* only the start of the message is here: replaying it would
			 * publish something the producer never sent */
			l->delivered = -2;
			printf("refused %d:%" PRId64 ": a truncated letter (the original was %s bytes, sha256 %s); "
			       "re-publish the original from its producer\n",
			       (int)l->partition, l->offset, header_text(l, "x-catalyst-original-size"),
			       header_text(l, "x-catalyst-original-sha256"));
			n_refused++;
			continue;
		}
		if (!l->target || !l->source_ok) {
			l->delivered = -2;
			printf("refused %d:%" PRId64 ": source %s is not a topic the workers consume under prefix %s%s\n",
			       (int)l->partition, l->offset, l->source_topic[0] ? l->source_topic : "(none)",
			       cat_config_str(cfg, "CATALYST_TOPIC_PREFIX"),
			       l->source_ok || !l->target ? "" : " (or its partition/offset headers are missing)");
			n_refused++;
			continue;
		}
		if (o->dry_run) {
			printf("would replay %d:%" PRId64 " -> %s [%d] (%s %s: %s)\n", (int)l->partition, l->offset,
			       l->source_topic, (int)l->source_partition, l->kind, l->tables, l->reason);
			n_replayed++;
			continue;
		}
		t = (size_t)(l->target - replay_targets);
		if (n_parts_of[t] == -2) /* one metadata request per topic */
			n_parts_of[t] = partition_count(cat_producer_handle(producer), l->source_topic);
		n_parts = n_parts_of[t];
		if (n_parts <= l->source_partition) {
			l->delivered = -2;
			printf("refused %d:%" PRId64 ": %s has no partition %d\n", (int)l->partition, l->offset,
			       l->source_topic, (int)l->source_partition);
			n_refused++;
			continue;
		}
		snprintf(from, sizeof(from), "%s:%d:%" PRId64, dlq_topic, (int)l->partition, l->offset);
		headers = rd_kafka_headers_new(1);
		rd_kafka_header_add(headers, "x-catalyst-replay-of", -1, from, -1);
		if (cat_producer_send(producer, l->source_topic, l->source_partition, l->key, l->key_len, l->value,
				      l->value_len, headers, l, errstr, sizeof(errstr)) != CAT_OK) {
			rd_kafka_headers_destroy(headers); /* still ours on failure */
			l->delivered = -1;
			fprintf(stderr, PROG ": %d:%" PRId64 ": %s\n", (int)l->partition, l->offset, errstr);
			continue;
		}
		n_sent++;
	}
	if (o->dry_run) {
		printf("dlq replay --dry-run: %zu would be replayed, %zu already replayed, %zu refused\n", n_replayed,
		       n_already, n_refused);
		return n_refused ? 1 : 0;
	}
	if (n_sent && cat_producer_flush(producer, timeout_ms + 5000, errstr, sizeof(errstr)) != CAT_OK)
		fprintf(stderr, PROG ": %s\n", errstr);
	for (size_t i = 0; i < ls->n; i++) {
		letter_t *l = &ls->v[i];

		if (l->delivered == 1) {
			printf("replayed %d:%" PRId64 " -> %s [%d] @ %" PRId64 " (%s %s: %s)\n", (int)l->partition,
			       l->offset, l->source_topic, (int)l->replayed_partition, l->replayed_offset, l->kind,
			       l->tables, l->reason);
			n_replayed++;
		} else if (l->delivered == -1 || (l->delivered == 0 && l->replayed == 0)) {
			n_failed++;
		}
	}
	/* only now, after the acknowledgements: a crash before this line
	 * replays these again next time, never loses one */
	if (n_replayed && record_replays(conn, dlq_topic, ls, by, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, PROG ": %zu replayed but not recorded (a later replay publishes them again): %s\n",
			n_replayed, errstr);
		goto out;
	}
	printf("dlq replay: %zu replayed, %zu already replayed, %zu refused, %zu not delivered\n", n_replayed, n_already,
	       n_refused, n_failed);
	rc = n_refused || n_failed ? 1 : 0;
out:
	cat_producer_destroy(producer);
	return rc;
}

/* --- entry --------------------------------------------------------------------------------------- */

int publish_dlq(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv)
{
	opts_t o = {0};
	letters_t ls = {0};
	PGconn *conn = NULL;
	char dlq_topic[256], errstr[512];
	bool with_pg;
	int rc;

	if ((rc = parse_args(argc, argv, &o)) != 0)
		goto out;
	rc = 1;
	with_pg = settings->pg_url != NULL;
	if (!with_pg && (strcmp(o.action, "replay") == 0 || o.pending)) {
		fprintf(stderr, PROG ": CATALYST_PG_URL: required for %s (replays are recorded on the primary)\n",
			o.pending ? "--pending" : "replay");
		rc = 2;
		goto out;
	}
	cat_kafka_topic(cfg, CAT_TOPIC_DLQ, dlq_topic, sizeof(dlq_topic));
	if (with_pg) {
		const char *params[1];
		PGresult *res = NULL;
		char lock_key[300];

		if (pg_open(settings, &conn, errstr, sizeof(errstr)) != CAT_OK) {
			if (strcmp(o.action, "replay") == 0 || o.pending) {
				fprintf(stderr, PROG ": %s\n", errstr);
				goto out;
			}
			/* list and show work without: what was replayed is unknown */
			fprintf(stderr, PROG ": %s: not showing what was replayed\n", errstr);
		}
		/* one replay of this dlq topic at a time (held until we disconnect) */
		snprintf(lock_key, sizeof(lock_key), "catalyst-dlq-replay:%s", dlq_topic);
		params[0] = lock_key;
		if (conn && strcmp(o.action, "replay") == 0 && !o.dry_run) {
			if (cat_pg_exec(conn, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", 1, params, &res,
					errstr, sizeof(errstr)) != CAT_OK) {
				fprintf(stderr, PROG ": %s\n", errstr);
				goto out;
			}
			if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
				PQclear(res);
				fprintf(stderr, PROG ": another dlq replay of %s is running\n", dlq_topic);
				goto out;
			}
			PQclear(res);
		}
	}
	if (scan(cfg, (int)settings->timeout_ms, dlq_topic, &o, &ls, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, PROG ": %s\n", errstr);
		goto out;
	}
	for (size_t i = 0; i < o.n_coords; i++)
		if (!o.coords[i].found) {
			fprintf(stderr, PROG ": no dead letter at %d:%" PRId64 " of %s\n", (int)o.coords[i].partition,
				o.coords[i].offset, dlq_topic);
			goto out;
		}
	if (conn && mark_replayed(conn, dlq_topic, &ls, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, PROG ": %s\n", errstr);
		goto out;
	}
	if (o.pending) {
		size_t kept = 0;

		for (size_t i = 0; i < ls.n; i++) {
			if (ls.v[i].replayed == 1)
				letter_clear(&ls.v[i]);
			else
				ls.v[kept++] = ls.v[i];
		}
		ls.n = kept;
	}
	if (strcmp(o.action, "list") == 0) {
		if (o.json)
			for (size_t i = 0; i < ls.n; i++)
				print_json_line(letter_summary_json(&ls.v[i], dlq_topic), JSON_COMPACT | JSON_PRESERVE_ORDER);
		else
			list_text(&ls, conn != NULL);
		fprintf(stderr, "%s: %zu of %zu dead letters\n", dlq_topic, ls.n, ls.scanned);
		rc = 0;
	} else if (strcmp(o.action, "show") == 0) {
		show(&ls, dlq_topic);
		rc = 0;
	} else {
		rc = replay(cfg, (int)settings->timeout_ms, &o, conn, dlq_topic, &ls);
	}
out:
	letters_clear(&ls);
	cat_pg_close(conn);
	free(o.coords);
	return rc;
}
