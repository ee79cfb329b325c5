/*
 * cat_codec: protobuf and JSON forms of records and commands.
 *
 * Decoding is the trust boundary: every function here accepts arbitrary
 * bytes and returns CAT_ERR_PERMANENT with a one-line reason (never a crash)
 * for anything a worker must not apply: undecodable protobuf, no record, an
 * unknown table or op, a missing primary key or version, a string longer
 * than its column, invalid UTF-8.
 *
 * JSON form of a record (catalyst-publish input, logs, cache values):
 *   {"table":"news_raw","news_id":"n1","symbol":"AAPL",
 *    "published_timestamp":"2026-11-27T14:05:12.000000Z","catalyst_score":0.8,
 *    "version":1764252312000000}
 * Column names as in SQL; timestamps RFC 3339; null or absent = SQL NULL.
 * The write-line form adds optional "op" ("upsert" | "delete"),
 * "command_id", "producer", "trace_id", "issued_at_us" (integer µs).
 */
#ifndef CAT_CODEC_H
#define CAT_CODEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "catalyst/v1/commands.pb-c.h"
#include "catalyst/v1/records.pb-c.h"
#include "cat_err.h"
#include "cat_schema.h"

/* Longest Kafka message a worker accepts; larger is permanent. */
#define CAT_CODEC_MAX_MESSAGE_BYTES (1024 * 1024)

/* The table a Record holds; NULL if none (unset oneof). */
const cat_table_t *cat_codec_record_table(const Catalyst__V1__Record *record);

/* The record's row message (e.g. a Catalyst__V1__NewsRaw *), NULL if none. */
const ProtobufCMessage *cat_codec_record_row(const Catalyst__V1__Record *record);

/* Checks a decoded record against the schema: one table set, primary key
 * present and non-empty, version present and >= 1, every not_null column
 * present, text lengths within max_len and valid UTF-8, doubles finite,
 * timestamps within what RFC 3339 can write (years 0001 to 9999). For a
 * delete (`is_delete`), only key and version are needed. */
cat_err_t cat_codec_record_validate(const Catalyst__V1__Record *record, int is_delete,
				    char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Kafka key of a record: its partition column (symbol) when set and
 * non-empty, else its primary key, as "<value>" ("" without a record).
 * Writes at most key_size bytes including NUL; returns the full key length,
 * as snprintf does (>= key_size: truncated). */
size_t cat_codec_record_key(const Catalyst__V1__Record *record, char *key, size_t key_size);

/* Primary-key value text of a record ("" if unset); borrowed. */
const char *cat_codec_record_pk(const Catalyst__V1__Record *record);

/* version field of a record (0 if unset). */
int64_t cat_codec_record_version(const Catalyst__V1__Record *record);

/* the longest meta.command_id accepted, in characters */
#define CAT_CODEC_COMMAND_ID_MAX 128

/* protobuf bytes -> validated WriteCommand (op UPSERT or DELETE, the record
 * as cat_codec_record_validate, meta strings valid UTF-8, command_id
 * non-empty and at most 128 characters, producer and trace_id at most 256,
 * issued_at_us not negative).
 * Unknown fields are kept (forward compatibility). String fields are checked
 * on the wire, so a NUL byte inside one is rejected rather than cut short.
 * *out is freed with catalyst__v1__write_command__free_unpacked(*out, NULL). */
cat_err_t cat_codec_write_decode(const void *buf, size_t len, Catalyst__V1__WriteCommand **out,
				 char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* One JSON write line (text) -> WriteCommand, validated as above. Fills
 * meta.command_id (a random UUID when absent), meta.issued_at_us (now, unless
 * the line has "issued_at_us"), meta.producer (`producer` when the line has
 * none), version (issued_at_us when absent). Unknown keys, duplicate keys,
 * wrong JSON types, unparseable timestamps, integers out of range, and a
 * delete carrying columns other than key, version and symbol are rejected naming the
 * column. *out is freed with catalyst__v1__write_command__free_unpacked(*out, NULL). */
cat_err_t cat_codec_write_from_json(const char *line, size_t len, const char *producer,
				    Catalyst__V1__WriteCommand **out, char *errstr,
				    size_t errstr_size) CAT_MUST_CHECK;

/* The bytes of the Record inside an encoded WriteCommand (buf, len: a
 * message cat_codec_write_decode() accepted), for splicing into a
 * ChangeBatchView without re-encoding. False when the record is not one
 * contiguous field (absent, or given several times: a decoder merges those). */
bool cat_codec_write_record_bytes(const void *buf, size_t len, const uint8_t **record, size_t *record_len);

/* Record -> JSON object text {"table":...,columns...} (only present fields;
 * doubles with the fewest significant digits, one count for the whole
 * record, that read back exactly), malloc'd,
 * NUL-terminated; NULL on out of memory or when a value has no JSON form
 * (what cat_codec_record_validate rejects: invalid UTF-8, NaN, ...). */
char *cat_codec_record_to_json(const Catalyst__V1__Record *record);

/* The same object, written without building a tree, into *buf (of *cap
 * bytes; grown with realloc, both updated; may start NULL/0), NUL-terminated;
 * returns its length, or -1 as cat_codec_record_to_json returns NULL. Same
 * keys in the same order; each double with the fewest digits that read back
 * exactly as it (the same value as cat_codec_record_to_json's, not always
 * the same text). Strings escape '"', '\\' and control characters only. */
ssize_t cat_codec_record_json(const Catalyst__V1__Record *record, char **buf, size_t *cap);

/* WriteCommand -> JSON write-line text (record columns plus "op",
 * "command_id", "producer", "trace_id", "issued_at_us"; a delete shows only
 * the key and version it carries), malloc'd. The text of a command that
 * cat_codec_write_decode accepted reads back through
 * cat_codec_write_from_json as the same command (unknown fields aside; meta
 * defaults fill what the command lacked). NULL as cat_codec_record_to_json,
 * or without a record or a known op. */
char *cat_codec_write_to_json(const Catalyst__V1__WriteCommand *cmd);

/*
 * The other messages workers consume, through the same boundary: at most
 * their size limit, protobuf that unpacks, every string at any depth valid
 * UTF-8 without NUL bytes (checked on the wire, so "news:1\0evil" is
 * refused, not cut to "news:1"), every enum value one the .proto defines,
 * the meta as a WriteCommand's; then what each type needs:
 *  - ChangeBatch (at most CAT_CODEC_MAX_CHANGES_BYTES): each change a known
 *    op and a record as cat_codec_record_validate;
 *  - CacheCommand: an action; keys and patterns 1 to CAT_CODEC_CACHE_KEY_MAX
 *    bytes; a delete with keys; ttl and version not negative (which key
 *    families a worker serves is the worker's business);
 *  - SyncCommand: table and replica names at most CAT_CODEC_NAME_MAX bytes,
 *    ReplicateRows changes as a ChangeBatch's;
 *  - BackupCommand: tags [a-z0-9_-]{1,32}, table, target and database names
 *    at most CAT_CODEC_NAME_MAX bytes, backup ids present.
 * CAT_ERR_PERMANENT with a one-line reason otherwise. Free *out with the
 * type's free_unpacked.
 */
#define CAT_CODEC_MAX_CHANGES_BYTES (2 * CAT_CODEC_MAX_MESSAGE_BYTES)
#define CAT_CODEC_CACHE_KEY_MAX	    1024
#define CAT_CODEC_NAME_MAX	    63 /* PostgreSQL identifiers, replica and target names */
#define CAT_CODEC_TAG_MAX	    32

cat_err_t cat_codec_change_batch_decode(const void *buf, size_t len, Catalyst__V1__ChangeBatch **out,
					char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_codec_cache_command_decode(const void *buf, size_t len, Catalyst__V1__CacheCommand **out,
					 char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_codec_sync_command_decode(const void *buf, size_t len, Catalyst__V1__SyncCommand **out,
					char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_codec_backup_command_decode(const void *buf, size_t len, Catalyst__V1__BackupCommand **out,
					  char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* A backup tag as the decode boundary takes it: [a-z0-9_-]{1,32}. */
bool cat_codec_backup_tag_valid(const char *tag);

/* Versions are event time in µs since the epoch; one far ahead of the
 * clock would freeze its row (nothing newer could replace it). */
#define CAT_CONFIG_VERSIONS                                                                            \
	{ .name = "CATALYST_VERSION_MAX_AHEAD_S", .type = CAT_CFG_INT, .def = "86400",              \
	  .max = 3153600000LL,                                                                      \
	  .help = "dead-letter writes whose version (event time in µs) is more than this many seconds ahead " \
	          "of the worker's clock (0: no limit, for producers whose versions are counters)" }

/* CAT_ERR_PERMANENT (with the reason) when `version` is more than
 * max_ahead_s seconds past now_us; max_ahead_s 0 accepts any. */
cat_err_t cat_codec_version_check(int64_t version, int64_t max_ahead_s, int64_t now_us, char *errstr,
				  size_t errstr_size) CAT_MUST_CHECK;

/* Any decoded protobuf message as a JSON object, for people reading what a
 * message holds (catalyst-publish dlq show), not for reading back: the
 * fields present by their .proto names (proto2 presence: an optional field
 * unset or a string or message at its default, and a oneof member not
 * chosen, are left out; repeated fields are arrays, empty ones included;
 * a required string or message not set is null); integers as
 * numbers (a uint64 above INT64_MAX as its decimal text); enums by name (a
 * value the .proto does not define as its number); bytes and strings as
 * text when valid UTF-8, else cat_codec_hex_json; a Record as
 * cat_codec_record_to_json's object (or field by field when it has no JSON
 * form); other messages recursively. A float or double NaN or infinity is
 * left out. Unknown fields are not shown. The caller owns the result
 * (json_decref); NULL on out of memory. */
json_t *cat_codec_message_to_json(const ProtobufCMessage *msg);

/* bytes as a JSON string of lower-case hex digits, two per byte; NULL on
 * out of memory. */
json_t *cat_codec_hex_json(const void *bytes, size_t len);

/* A new random (v4) UUID in canonical text form; buf needs 37 bytes. */
void cat_codec_uuid(char *buf, size_t buf_size);

#endif /* CAT_CODEC_H */
