#include "cat_codec.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

#include "cat_time.h"

#define META_TEXT_MAX_CHARS  256 /* meta.producer, meta.trace_id */
#define WIRE_MAX_DEPTH	     16	 /* nesting of submessages scanned on the wire */
#define QUOTE_MAX_BYTES	     60	 /* of input text repeated in an error message */

/* The timestamps RFC 3339 can write: 0001-01-01T00:00:00Z up to
 * 9999-12-31T23:59:59.999999Z. */
#define TIMESTAMP_MIN_US (-62135596800LL * 1000000)
#define TIMESTAMP_MAX_US (253402300800LL * 1000000 - 1)

/* Keys of a JSON write line that are not columns. */
static const char *const json_meta_keys[] = {
	"table", "op", "command_id", "producer", "trace_id", "issued_at_us",
};

/* --- text checks ----------------------------------------------------------- */

typedef enum utf8_result {
	UTF8_OK,
	UTF8_INVALID,
	UTF8_NUL,
} utf8_result_t;

/*
 * Checks s[0..len) as PostgreSQL accepts UTF-8 text: shortest form only, no
 * surrogates, nothing above U+10FFFF, no NUL. Counts the characters.
 */
static utf8_result_t utf8_check(const char *text, size_t len, size_t *n_chars)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0, n = 0;

	while (i < len) {
		unsigned char c;
		unsigned char lo = 0x80, hi = 0xbf;
		size_t follow;
		uint64_t word;

		/* ASCII without NUL, 8 bytes at a time */
		if (len - i >= 8) {
			memcpy(&word, s + i, sizeof(word));
			if (((word | ((word - 0x0101010101010101ULL) & ~word)) & 0x8080808080808080ULL) == 0) {
				i += 8, n += 8;
				continue;
			}
		}
		c = s[i];
		if (c == 0)
			return UTF8_NUL;
		if (c < 0x80) {
			i++, n++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			follow = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			follow = 2;
			if (c == 0xe0)
				lo = 0xa0; /* overlong */
			else if (c == 0xed)
				hi = 0x9f; /* surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			follow = 3;
			if (c == 0xf0)
				lo = 0x90; /* overlong */
			else if (c == 0xf4)
				hi = 0x8f; /* above U+10FFFF */
		} else {
			return UTF8_INVALID;
		}
		if (len - i - 1 < follow)
			return UTF8_INVALID;
		for (size_t k = 1; k <= follow; k++) {
			unsigned char cc = s[i + k];

			if (cc < (k == 1 ? lo : 0x80) || cc > (k == 1 ? hi : 0xbf))
				return UTF8_INVALID;
		}
		i += follow + 1;
		n++;
	}
	if (n_chars)
		*n_chars = n;
	return UTF8_OK;
}

static char quote_char(unsigned char c)
{
	return c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
}

/*
 * Input text (a JSON key or value) for an error message: at most
 * QUOTE_MAX_BYTES, cut between characters and marked "...", with control
 * characters, quotes and backslashes shown as '?', so the reason stays one
 * readable line.
 */
static const char *quote_text(const char *text, char *buf, size_t buf_size)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t o = 0;

	if (buf_size < QUOTE_MAX_BYTES + 4)
		return "";
	while (*s) {
		size_t n = *s < 0x80 ? 1 : *s < 0xe0 ? 2 : *s < 0xf0 ? 3 : 4;
		size_t k;

		if (o + n > QUOTE_MAX_BYTES) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		for (k = 0; k < n && s[k]; k++)
			buf[o + k] = quote_char(s[k]);
		o += k;
		if (k < n)
			break;
		s += n;
	}
	buf[o] = '\0';
	return buf;
}

/* --- record fields, generic over the record messages ---------------------- */

#define FIELD_PTR(msg, offset, type)  ((type *)(void *)((char *)(msg) + (offset)))
#define FIELD_CPTR(msg, offset, type) ((const type *)(const void *)((const char *)(msg) + (offset)))

static bool field_present(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	if (field->type == PROTOBUF_C_TYPE_STRING || field->type == PROTOBUF_C_TYPE_MESSAGE)
		return *FIELD_CPTR(row, field->offset, void *) != NULL;
	return *FIELD_CPTR(row, field->quantifier_offset, protobuf_c_boolean) != 0;
}

static const char *field_text(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	return *FIELD_CPTR(row, field->offset, char *);
}

static void field_set_has(ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	*FIELD_PTR(row, field->quantifier_offset, protobuf_c_boolean) = 1;
}

static bool is_version(const cat_column_t *column)
{
	return strcmp(column->name, "version") == 0;
}

/* The Record oneof member holding `table`'s rows. */
static const ProtobufCFieldDescriptor *record_field(unsigned record_case)
{
	return protobuf_c_message_descriptor_get_field(&catalyst__v1__record__descriptor, record_case);
}

const cat_table_t *cat_codec_record_table(const Catalyst__V1__Record *record)
{
	if (!record)
		return NULL;
	for (size_t i = 0; i < cat_schema_n_tables; i++)
		if (cat_schema_tables[i].record_case == (unsigned)record->row_case)
			return &cat_schema_tables[i];
	return NULL;
}

const ProtobufCMessage *cat_codec_record_row(const Catalyst__V1__Record *record)
{
	const cat_table_t *table = cat_codec_record_table(record);
	const ProtobufCFieldDescriptor *field;

	if (!table || !(field = record_field(table->record_case)))
		return NULL;
	return *FIELD_CPTR(record, field->offset, ProtobufCMessage *);
}

/* Row and table of a record whose row is the table's message; else NULL. */
static const ProtobufCMessage *record_row_checked(const Catalyst__V1__Record *record,
						  const cat_table_t **table_out)
{
	const cat_table_t *table = cat_codec_record_table(record);
	const ProtobufCMessage *row = cat_codec_record_row(record);

	if (!table || !row || row->descriptor != table->descriptor)
		return NULL;
	*table_out = table;
	return row;
}

/* Text of a present TEXT column, else NULL. */
static const char *column_text(const cat_table_t *table, const ProtobufCMessage *row, const char *name)
{
	const cat_column_t *column = cat_schema_column(table, name);
	const ProtobufCFieldDescriptor *field = cat_schema_field(table, column);

	if (!column || column->type != CAT_COL_TEXT || !field || !field_present(row, field))
		return NULL;
	return field_text(row, field);
}

const char *cat_codec_record_pk(const Catalyst__V1__Record *record)
{
	const cat_table_t *table;
	const ProtobufCMessage *row = record_row_checked(record, &table);
	const char *pk = row ? column_text(table, row, table->primary_key) : NULL;

	return pk ? pk : "";
}

int64_t cat_codec_record_version(const Catalyst__V1__Record *record)
{
	const cat_table_t *table;
	const ProtobufCMessage *row = record_row_checked(record, &table);
	const ProtobufCFieldDescriptor *field;

	if (!row)
		return 0;
	field = cat_schema_field(table, cat_schema_column(table, "version"));
	if (!field || !field_present(row, field))
		return 0;
	return *FIELD_CPTR(row, field->offset, int64_t);
}

size_t cat_codec_record_key(const Catalyst__V1__Record *record, char *key, size_t key_size)
{
	const cat_table_t *table;
	const ProtobufCMessage *row = record_row_checked(record, &table);
	const char *value = NULL;
	size_t len, n;

	if (row && table->partition_column)
		value = column_text(table, row, table->partition_column);
	if (!value || !*value)
		value = cat_codec_record_pk(record);
	len = strlen(value);
	if (key && key_size > 0) {
		n = len < key_size - 1 ? len : key_size - 1;
		memcpy(key, value, n);
		key[n] = '\0';
	}
	return len;
}

/* --- validation ------------------------------------------------------------ */

/* One present column value against its schema entry. */
static cat_err_t column_check(const cat_column_t *column, const ProtobufCMessage *row,
			      const ProtobufCFieldDescriptor *field, char *errstr, size_t errstr_size)
{
	switch (column->type) {
	case CAT_COL_TEXT: {
		const char *text = field_text(row, field);
		size_t n_chars = 0;

		if (utf8_check(text, strlen(text), &n_chars) != UTF8_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": invalid UTF-8", column->name);
		if (column->max_len > 0 && n_chars > (size_t)column->max_len)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": %zu characters, longer than %d", column->name,
					   n_chars, column->max_len);
		if (column->primary_key && n_chars == 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "primary key \"%s\" is empty", column->name);
		return CAT_OK;
	}
	case CAT_COL_DOUBLE:
		if (!isfinite(*FIELD_CPTR(row, field->offset, double)))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": not a finite number", column->name);
		return CAT_OK;
	case CAT_COL_TIMESTAMP: {
		int64_t us = *FIELD_CPTR(row, field->offset, int64_t);

		if (us < TIMESTAMP_MIN_US || us > TIMESTAMP_MAX_US)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": timestamp out of range (years 0001 to 9999)",
					   column->name);
		return CAT_OK;
	}
	case CAT_COL_INT64:
		if (is_version(column) && *FIELD_CPTR(row, field->offset, int64_t) < 1)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"version\": must be at least 1, got %lld",
					   (long long)*FIELD_CPTR(row, field->offset, int64_t));
		return CAT_OK;
	case CAT_COL_INT32:
	case CAT_COL_BOOL:
		return CAT_OK;
	}
	return CAT_OK;
}

cat_err_t cat_codec_record_validate(const Catalyst__V1__Record *record, int is_delete, char *errstr,
				    size_t errstr_size)
{
	const cat_table_t *table = cat_codec_record_table(record);
	const ProtobufCMessage *row = cat_codec_record_row(record);
	cat_err_t err;

	if (!table || !row)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "no record");
	if (row->descriptor != table->descriptor)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "record of table %s holds a %s message", table->name,
				   row->descriptor ? row->descriptor->short_name : "(null)");
	for (size_t i = 0; i < table->n_columns; i++) {
		const cat_column_t *column = &table->columns[i];
		const ProtobufCFieldDescriptor *field = cat_schema_field(table, column);

		if (!field)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "column \"%s\" of table %s has no field in %s", column->name,
					   table->name, table->descriptor->short_name);
		if (!field_present(row, field)) {
			if (column->primary_key)
				return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
						   "missing primary key \"%s\" for table %s", column->name,
						   table->name);
			if (column->not_null && (!is_delete || is_version(column)))
				return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
						   "missing column \"%s\" for table %s", column->name,
						   table->name);
			continue;
		}
		err = column_check(column, row, field, errstr, errstr_size);
		if (err)
			return err;
	}
	return CAT_OK;
}

static cat_err_t meta_text_check(const char *name, const char *text, size_t max_chars, char *errstr,
				 size_t errstr_size)
{
	size_t n_chars = 0;

	if (!text)
		return CAT_OK;
	if (utf8_check(text, strlen(text), &n_chars) != UTF8_OK)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "\"%s\": invalid UTF-8", name);
	if (n_chars > max_chars)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "\"%s\": %zu characters, longer than %zu", name, n_chars, max_chars);
	return CAT_OK;
}

static cat_err_t meta_validate(const Catalyst__V1__CommandMeta *meta, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	if (!meta)
		return CAT_OK;
	if (meta->has_issued_at_us && meta->issued_at_us < 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "\"issued_at_us\": must not be negative, got %lld",
				   (long long)meta->issued_at_us);
	if (meta->command_id && !*meta->command_id)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "\"command_id\" is empty");
	if ((err = meta_text_check("command_id", meta->command_id, CAT_CODEC_COMMAND_ID_MAX, errstr,
				   errstr_size)) ||
	    (err = meta_text_check("producer", meta->producer, META_TEXT_MAX_CHARS, errstr, errstr_size)) ||
	    (err = meta_text_check("trace_id", meta->trace_id, META_TEXT_MAX_CHARS, errstr, errstr_size)))
		return err;
	return CAT_OK;
}

/* Op, record and meta of a WriteCommand, however it was built. */
static cat_err_t write_validate(const Catalyst__V1__WriteCommand *cmd, char *errstr, size_t errstr_size)
{
	int op = cmd->has_op ? (int)cmd->op : CATALYST__V1__WRITE_OP__WRITE_OP_UNSPECIFIED;
	const Catalyst__V1__Record *record = cmd->record;
	cat_err_t err;

	if (op != CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT && op != CATALYST__V1__WRITE_OP__WRITE_OP_DELETE)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "unknown write op %d", op);
	if (record && record->row_case == CATALYST__V1__RECORD__ROW__NOT_SET &&
	    record->base.n_unknown_fields > 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "record holds a table unknown to this build (Record field %u)",
				   (unsigned)record->base.unknown_fields[0].tag);
	err = cat_codec_record_validate(record, op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, errstr,
					errstr_size);
	if (err)
		return err;
	return meta_validate(cmd->meta, errstr, errstr_size);
}

/* --- protobuf -------------------------------------------------------------- */

static int wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *value)
{
	uint64_t v = 0;

	for (unsigned shift = 0; shift < 64; shift += 7) {
		uint8_t b;

		if (*p >= end)
			return -1;
		b = *(*p)++;
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*value = v;
			return 0;
		}
	}
	return -1;
}

bool cat_codec_write_record_bytes(const void *buf, size_t len, const uint8_t **record, size_t *record_len)
{
	const uint8_t *p = buf, *end = p + len;
	int found = 0;

	while (p < end) {
		uint64_t tag, n;

		if (wire_varint(&p, end, &tag))
			return false;
		switch (tag & 7) {
		case PROTOBUF_C_WIRE_TYPE_VARINT:
			if (wire_varint(&p, end, &n))
				return false;
			break;
		case PROTOBUF_C_WIRE_TYPE_64BIT:
			if (end - p < 8)
				return false;
			p += 8;
			break;
		case PROTOBUF_C_WIRE_TYPE_32BIT:
			if (end - p < 4)
				return false;
			p += 4;
			break;
		case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
			if (wire_varint(&p, end, &n) || n > (uint64_t)(end - p))
				return false;
			if (tag >> 3 == 3) { /* WriteCommand.record */
				*record = p;
				*record_len = (size_t)n;
				found++;
			}
			p += n;
			break;
		default:
			return false;
		}
	}
	return found == 1; /* several are merged by a decoder: not one slice */
}

/*
 * protobuf-c neither checks proto2 strings for UTF-8 nor keeps their length:
 * a string with a NUL byte would reach us silently cut short. So the raw
 * bytes of every string field the descriptors know, at any depth, are
 * checked here, before anything trusts the unpacked message.
 */
#define WIRE_MAX_FIELD ((1u << 29) - 1)

static cat_err_t wire_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
				    int depth, char *errstr, size_t errstr_size)
{
	const uint8_t *end = p + len;
	uint64_t tag, n;

	while (p < end) {
		/* field numbers run from 1 to 2^29 - 1; protobuf-c keeps a field 0 as
		 * unknown, and packs it again into bytes no decoder accepts */
		if (wire_varint(&p, end, &tag) || tag >> 3 == 0 || tag >> 3 > WIRE_MAX_FIELD)
			goto malformed;
		switch (tag & 7) {
		case PROTOBUF_C_WIRE_TYPE_VARINT:
			if (wire_varint(&p, end, &n))
				goto malformed;
			break;
		case PROTOBUF_C_WIRE_TYPE_64BIT:
			if (end - p < 8)
				goto malformed;
			p += 8;
			break;
		case PROTOBUF_C_WIRE_TYPE_32BIT:
			if (end - p < 4)
				goto malformed;
			p += 4;
			break;
		case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED: {
			const ProtobufCFieldDescriptor *field = NULL;
			cat_err_t err;

			if (wire_varint(&p, end, &n) || n > (uint64_t)(end - p))
				goto malformed;
			if ((tag >> 3) <= UINT32_MAX)
				field = protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
			if (field && field->type == PROTOBUF_C_TYPE_STRING) {
				switch (utf8_check((const char *)p, (size_t)n, NULL)) {
				case UTF8_OK:
					break;
				case UTF8_NUL:
					return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
							   "field %s.%s: contains a NUL byte",
							   desc->short_name, field->name);
				case UTF8_INVALID:
					return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
							   "field %s.%s: invalid UTF-8", desc->short_name,
							   field->name);
				}
			} else if (field && field->type == PROTOBUF_C_TYPE_MESSAGE) {
				if (depth >= WIRE_MAX_DEPTH)
					goto malformed;
				err = wire_check_strings(field->descriptor, p, (size_t)n, depth + 1, errstr,
							 errstr_size);
				if (err)
					return err;
			}
			p += n;
			break;
		}
		default:
			goto malformed;
		}
	}
	return CAT_OK;

malformed:
	return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "could not decode %s: malformed wire data",
			   desc->short_name);
}

cat_err_t cat_codec_write_decode(const void *buf, size_t len, Catalyst__V1__WriteCommand **out, char *errstr,
				 size_t errstr_size)
{
	static const uint8_t no_bytes[1];
	Catalyst__V1__WriteCommand *cmd;
	cat_err_t err;

	*out = NULL;
	if (len > CAT_CODEC_MAX_MESSAGE_BYTES)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "message of %zu bytes, larger than the limit of %d", len,
				   CAT_CODEC_MAX_MESSAGE_BYTES);
	if (!buf) {
		if (len > 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "no message bytes");
		buf = no_bytes;
	}
	cmd = catalyst__v1__write_command__unpack(NULL, len, buf);
	if (!cmd)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "could not decode WriteCommand: invalid protobuf");
	err = wire_check_strings(&catalyst__v1__write_command__descriptor, buf, len, 0, errstr, errstr_size);
	if (!err)
		err = write_validate(cmd, errstr, errstr_size);
	if (err) {
		catalyst__v1__write_command__free_unpacked(cmd, NULL);
		return err;
	}
	*out = cmd;
	return CAT_OK;
}

/* --- building messages (each part malloc'd, as free_unpacked expects) ------ */

static ProtobufCMessage *message_new(const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *msg = calloc(1, desc->sizeof_message);

	if (msg)
		protobuf_c_message_init(desc, msg);
	return msg;
}

/* A WriteCommand with meta and an empty row of `table`; NULL when out of memory. */
static Catalyst__V1__WriteCommand *write_command_new(const cat_table_t *table)
{
	const ProtobufCFieldDescriptor *field = record_field(table->record_case);
	Catalyst__V1__WriteCommand *cmd;
	ProtobufCMessage *row;

	cmd = (Catalyst__V1__WriteCommand *)message_new(&catalyst__v1__write_command__descriptor);
	if (!cmd)
		return NULL;
	cmd->meta = (Catalyst__V1__CommandMeta *)message_new(&catalyst__v1__command_meta__descriptor);
	cmd->record = (Catalyst__V1__Record *)message_new(&catalyst__v1__record__descriptor);
	row = message_new(table->descriptor);
	if (!cmd->meta || !cmd->record || !row || !field) {
		free(row);
		catalyst__v1__write_command__free_unpacked(cmd, NULL);
		return NULL;
	}
	*FIELD_PTR(cmd->record, field->offset, ProtobufCMessage *) = row;
	*FIELD_PTR(cmd->record, field->quantifier_offset, uint32_t) = field->id;
	return cmd;
}

static int replace_string(char **slot, const char *text)
{
	char *copy = strdup(text);

	if (!copy)
		return -1;
	free(*slot);
	*slot = copy;
	return 0;
}

/* --- JSON in --------------------------------------------------------------- */

static bool is_meta_key(const char *key)
{
	for (size_t i = 0; i < sizeof(json_meta_keys) / sizeof(json_meta_keys[0]); i++)
		if (strcmp(key, json_meta_keys[i]) == 0)
			return true;
	return false;
}

static cat_err_t out_of_memory(char *errstr, size_t errstr_size)
{
	return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
}

/* One JSON value (not null) into the row field of `column`. */
static cat_err_t column_from_json(const cat_column_t *column, const json_t *value, ProtobufCMessage *row,
				  const ProtobufCFieldDescriptor *field, char *errstr, size_t errstr_size)
{
	char quoted[QUOTE_MAX_BYTES + 4];

	switch (column->type) {
	case CAT_COL_TEXT:
		if (!json_is_string(value))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": expected a string", column->name);
		if (replace_string(FIELD_PTR(row, field->offset, char *), json_string_value(value)))
			return out_of_memory(errstr, errstr_size);
		return CAT_OK;
	case CAT_COL_INT32: {
		json_int_t v;

		if (!json_is_integer(value))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": expected an integer", column->name);
		v = json_integer_value(value);
		if (v < INT32_MIN || v > INT32_MAX)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": %lld out of range for a 32-bit integer",
					   column->name, (long long)v);
		*FIELD_PTR(row, field->offset, int32_t) = (int32_t)v;
		break;
	}
	case CAT_COL_INT64:
		if (!json_is_integer(value))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": expected an integer", column->name);
		*FIELD_PTR(row, field->offset, int64_t) = (int64_t)json_integer_value(value);
		break;
	case CAT_COL_DOUBLE:
		if (!json_is_number(value))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": expected a number", column->name);
		*FIELD_PTR(row, field->offset, double) = json_number_value(value);
		break;
	case CAT_COL_BOOL:
		if (!json_is_boolean(value))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": expected true or false", column->name);
		*FIELD_PTR(row, field->offset, protobuf_c_boolean) = json_is_true(value);
		break;
	case CAT_COL_TIMESTAMP: {
		int64_t us;

		if (!json_is_string(value))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": expected an RFC 3339 timestamp string",
					   column->name);
		if (cat_time_parse_rfc3339(json_string_value(value), &us))
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "column \"%s\": invalid RFC 3339 timestamp \"%s\"", column->name,
					   quote_text(json_string_value(value), quoted, sizeof(quoted)));
		*FIELD_PTR(row, field->offset, int64_t) = us;
		break;
	}
	}
	field_set_has(row, field);
	return CAT_OK;
}

/* What a delete carries: the primary key, the version, and the partition
 * column (symbol), which keys it to the partition of the row's upserts so
 * that they stay in order. */
static bool delete_column(const cat_table_t *table, const cat_column_t *column)
{
	return column->primary_key || is_version(column) ||
	       (table->partition_column && strcmp(column->name, table->partition_column) == 0);
}

/* The columns of a JSON write line into `row`. */
static cat_err_t columns_from_json(const json_t *root, const cat_table_t *table, bool is_delete,
				   ProtobufCMessage *row, char *errstr, size_t errstr_size)
{
	char quoted[QUOTE_MAX_BYTES + 4];
	cat_err_t err;

	/* in the line's order, so the first bad key is the one reported */
	for (void *iter = json_object_iter((json_t *)root); iter;
	     iter = json_object_iter_next((json_t *)root, iter)) {
		const char *key = json_object_iter_key(iter);
		const json_t *value = json_object_iter_value(iter);
		const cat_column_t *column;
		const ProtobufCFieldDescriptor *field;

		if (is_meta_key(key))
			continue;
		column = cat_schema_column(table, key);
		if (!column)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "unknown column \"%s\" for table %s",
					   quote_text(key, quoted, sizeof(quoted)), table->name);
		if (json_is_null(value))
			continue;
		if (is_delete && !delete_column(table, column))
			return table->partition_column
				       ? cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
						     "delete carries only the primary key, version and %s, not \"%s\"",
						     table->partition_column, column->name)
				       : cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
						     "delete carries only the primary key and version, not \"%s\"",
						     column->name);
		field = cat_schema_field(table, column);
		if (!field)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "column \"%s\" of table %s has no field", column->name,
					   table->name);
		err = column_from_json(column, value, row, field, errstr, errstr_size);
		if (err)
			return err;
	}
	return CAT_OK;
}

/* A meta text key: absent or null leaves *slot; a string replaces it. */
static cat_err_t meta_text_from_json(const json_t *root, const char *key, char **slot, char *errstr,
				     size_t errstr_size)
{
	const json_t *value = json_object_get(root, key);

	if (!value || json_is_null(value))
		return CAT_OK;
	if (!json_is_string(value))
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "\"%s\": expected a string", key);
	if (replace_string(slot, json_string_value(value)))
		return out_of_memory(errstr, errstr_size);
	return CAT_OK;
}

static cat_err_t meta_from_json(const json_t *root, const char *producer, Catalyst__V1__CommandMeta *meta,
				char *errstr, size_t errstr_size)
{
	const json_t *issued = json_object_get(root, "issued_at_us");
	char uuid[37];
	cat_err_t err;

	if (producer && replace_string(&meta->producer, producer))
		return out_of_memory(errstr, errstr_size);
	if ((err = meta_text_from_json(root, "command_id", &meta->command_id, errstr, errstr_size)) ||
	    (err = meta_text_from_json(root, "producer", &meta->producer, errstr, errstr_size)) ||
	    (err = meta_text_from_json(root, "trace_id", &meta->trace_id, errstr, errstr_size)))
		return err;
	if (!meta->command_id) {
		cat_codec_uuid(uuid, sizeof(uuid));
		if (replace_string(&meta->command_id, uuid))
			return out_of_memory(errstr, errstr_size);
	}
	meta->has_issued_at_us = 1;
	if (!issued || json_is_null(issued)) {
		meta->issued_at_us = cat_time_now_us();
	} else if (!json_is_integer(issued) || json_integer_value(issued) < 0) {
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "\"issued_at_us\": expected a non-negative integer");
	} else {
		meta->issued_at_us = (int64_t)json_integer_value(issued);
	}
	return CAT_OK;
}

/* Column (1-based) of the first non-blank character, for "not an object". */
static int first_column(const char *line, size_t len)
{
	size_t i = 0;

	while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n'))
		i++;
	return (int)i + 1; /* len is at most CAT_CODEC_MAX_MESSAGE_BYTES */
}

cat_err_t cat_codec_write_from_json(const char *line, size_t len, const char *producer,
				    Catalyst__V1__WriteCommand **out, char *errstr, size_t errstr_size)
{
	char quoted[QUOTE_MAX_BYTES + 4];
	Catalyst__V1__WriteCommand *cmd = NULL;
	const cat_table_t *table;
	const json_t *value;
	json_error_t jerror;
	json_t *root;
	ProtobufCMessage *row;
	const ProtobufCFieldDescriptor *version_field;
	bool is_delete = false;
	cat_err_t err;

	*out = NULL;
	if (!line)
		line = "", len = 0;
	if (len > CAT_CODEC_MAX_MESSAGE_BYTES)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "line of %zu bytes, larger than the limit of %d", len,
				   CAT_CODEC_MAX_MESSAGE_BYTES);
	root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerror);
	if (!root)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "malformed JSON: %s at column %d",
				   jerror.text, jerror.column);
	if (!json_is_object(root)) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				  "malformed JSON: expected an object at column %d", first_column(line, len));
		goto out;
	}

	value = json_object_get(root, "table");
	if (!value || json_is_null(value)) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "missing \"table\"");
		goto out;
	}
	if (!json_is_string(value)) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "\"table\": expected a string");
		goto out;
	}
	table = cat_schema_table(json_string_value(value));
	if (!table) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "unknown table \"%s\"",
				  quote_text(json_string_value(value), quoted, sizeof(quoted)));
		goto out;
	}

	value = json_object_get(root, "op");
	if (value && !json_is_null(value)) {
		if (!json_is_string(value)) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					  "\"op\": expected \"upsert\" or \"delete\"");
			goto out;
		}
		if (strcmp(json_string_value(value), "delete") == 0) {
			is_delete = true;
		} else if (strcmp(json_string_value(value), "upsert") != 0) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					  "unknown op \"%s\": expected \"upsert\" or \"delete\"",
					  quote_text(json_string_value(value), quoted, sizeof(quoted)));
			goto out;
		}
	}

	cmd = write_command_new(table);
	if (!cmd) {
		err = out_of_memory(errstr, errstr_size);
		goto out;
	}
	cmd->has_op = 1;
	cmd->op =
		is_delete ? CATALYST__V1__WRITE_OP__WRITE_OP_DELETE : CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT;
	row = (ProtobufCMessage *)cat_codec_record_row(cmd->record);

	err = meta_from_json(root, producer, cmd->meta, errstr, errstr_size);
	if (err)
		goto out;
	err = columns_from_json(root, table, is_delete, row, errstr, errstr_size);
	if (err)
		goto out;

	/* version defaults to the command's issue time */
	version_field = cat_schema_field(table, cat_schema_column(table, "version"));
	if (version_field && !field_present(row, version_field)) {
		*FIELD_PTR(row, version_field->offset, int64_t) = cmd->meta->issued_at_us;
		field_set_has(row, version_field);
	}

	err = write_validate(cmd, errstr, errstr_size);
	if (err)
		goto out;
	if (catalyst__v1__write_command__get_packed_size(cmd) > CAT_CODEC_MAX_MESSAGE_BYTES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				  "command larger than the message limit of %d bytes",
				  CAT_CODEC_MAX_MESSAGE_BYTES);
		goto out;
	}
	*out = cmd;
	cmd = NULL; /* owned by the caller */
	err = CAT_OK;

out:
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	json_decref(root);
	return err;
}

/* --- JSON out -------------------------------------------------------------- */

/* Fewest significant digits that read back as exactly `d`. */
static int real_precision(double d)
{
	char text[40];

	for (int precision = 1; precision < 17; precision++) {
		snprintf(text, sizeof(text), "%.*g", precision, d);
		if (strtod(text, NULL) == d)
			return precision;
	}
	return 17;
}

/* JSON value of a present column; NULL when it has no JSON form (invalid
 * UTF-8, not finite, timestamp out of range: what validation rejects). */
static json_t *column_to_json(const cat_column_t *column, const ProtobufCMessage *row,
			      const ProtobufCFieldDescriptor *field, int *precision)
{
	switch (column->type) {
	case CAT_COL_TEXT:
		return json_string(field_text(row, field));
	case CAT_COL_INT32:
		return json_integer(*FIELD_CPTR(row, field->offset, int32_t));
	case CAT_COL_INT64:
		return json_integer(*FIELD_CPTR(row, field->offset, int64_t));
	case CAT_COL_DOUBLE: {
		double d = *FIELD_CPTR(row, field->offset, double);
		int p;

		if (!isfinite(d))
			return NULL;
		p = real_precision(d);
		if (p > *precision)
			*precision = p;
		return json_real(d);
	}
	case CAT_COL_BOOL:
		return json_boolean(*FIELD_CPTR(row, field->offset, protobuf_c_boolean));
	case CAT_COL_TIMESTAMP: {
		int64_t us = *FIELD_CPTR(row, field->offset, int64_t);
		char text[40];

		if (us < TIMESTAMP_MIN_US || us > TIMESTAMP_MAX_US)
			return NULL;
		return json_string(cat_time_format_rfc3339(us, text, sizeof(text)));
	}
	}
	return NULL;
}

/* {"table":...,columns...}, raising *precision to what its doubles need;
 * only the key and version columns when `key_only` (a delete). */
static json_t *record_to_object(const Catalyst__V1__Record *record, bool key_only, int *precision)
{
	const cat_table_t *table;
	const ProtobufCMessage *row = record_row_checked(record, &table);
	json_t *object;

	if (!row)
		return NULL;
	object = json_object();
	if (!object || json_object_set_new(object, "table", json_string(table->name)))
		goto error;
	for (size_t i = 0; i < table->n_columns; i++) {
		const cat_column_t *column = &table->columns[i];
		const ProtobufCFieldDescriptor *field = cat_schema_field(table, column);

		if (!field)
			goto error;
		if (!field_present(row, field) || (key_only && !delete_column(table, column)))
			continue;
		if (json_object_set_new(object, column->name, column_to_json(column, row, field, precision)))
			goto error;
	}
	return object;

error:
	json_decref(object);
	return NULL;
}

static char *object_dump(json_t *object, int precision)
{
	char *text = json_dumps(object, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(precision));

	json_decref(object);
	return text;
}

char *cat_codec_record_to_json(const Catalyst__V1__Record *record)
{
	int precision = 1;
	json_t *object = record_to_object(record, false, &precision);

	return object ? object_dump(object, precision) : NULL;
}

/* Sets key to a string when text is set; -1 when it cannot. */
static int object_set_text(json_t *object, const char *key, const char *text)
{
	return text ? json_object_set_new(object, key, json_string(text)) : 0;
}

char *cat_codec_write_to_json(const Catalyst__V1__WriteCommand *cmd)
{
	const Catalyst__V1__CommandMeta *meta;
	int precision = 1;
	const char *op;
	json_t *object;

	if (!cmd || !cmd->has_op)
		return NULL;
	if (cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT)
		op = "upsert";
	else if (cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE)
		op = "delete";
	else
		return NULL;
	object =
		record_to_object(cmd->record, cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, &precision);
	if (!object)
		return NULL;
	meta = cmd->meta;
	if (json_object_set_new(object, "op", json_string(op)) ||
	    (meta && (object_set_text(object, "command_id", meta->command_id) ||
		      object_set_text(object, "producer", meta->producer) ||
		      object_set_text(object, "trace_id", meta->trace_id) ||
		      (meta->has_issued_at_us &&
		       json_object_set_new(object, "issued_at_us", json_integer(meta->issued_at_us)))))) {
		json_decref(object);
		return NULL;
	}
	return object_dump(object, precision);
}

/* --- ids ------------------------------------------------------------------- */

void cat_codec_uuid(char *buf, size_t buf_size)
{
	unsigned char b[16];

	if (!buf || buf_size == 0)
		return;
	if (RAND_bytes(b, sizeof(b)) != 1 && getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
		abort(); /* no randomness at all: a duplicate idempotency key would be worse */
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	snprintf(buf, buf_size, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
		 b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
		 b[15]);
}

/* --- JSON out, hand-written ------------------------------------------------ */

/* A growable output buffer of cat_codec_record_json. */
typedef struct jbuf {
	char *data;
	size_t len, cap;
	bool oom;
} jbuf_t;

/* Room for `more` bytes at data + len. */
static bool jbuf_reserve(jbuf_t *b, size_t more)
{
	size_t cap;
	char *grown;

	if (b->oom)
		return false;
	if (b->len + more <= b->cap)
		return true;
	cap = b->cap ? b->cap : 1024;
	while (cap < b->len + more)
		cap *= 2;
	if (!(grown = realloc(b->data, cap))) {
		b->oom = true;
		return false;
	}
	b->data = grown;
	b->cap = cap;
	return true;
}

static void jbuf_put(jbuf_t *b, const char *s, size_t n)
{
	if (!jbuf_reserve(b, n))
		return;
	memcpy(b->data + b->len, s, n);
	b->len += n;
}

/* `text` as a JSON string: '"', '\\' and control characters escaped
 * (\b \f \n \r \t, else \u00XX), everything else as it is (UTF-8). False
 * when the text is not valid UTF-8 (or holds a NUL). */
static bool jbuf_string(jbuf_t *b, const char *text)
{
	static const char hex[] = "0123456789abcdef";
	size_t len = strlen(text), start = 0;
	const unsigned char *s = (const unsigned char *)text;
	bool ascii = true;

	/* worst case: every byte becomes \u00XX */
	if (!jbuf_reserve(b, 6 * len + 2))
		return false;
	b->data[b->len++] = '"';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		char *o;

		if (c >= 0x20 && c != '"' && c != '\\') {
			if (c >= 0x80)
				ascii = false;
			continue;
		}
		memcpy(b->data + b->len, text + start, i - start);
		b->len += i - start;
		start = i + 1;
		o = b->data + b->len;
		o[0] = '\\';
		switch (c) {
		case '"':
		case '\\':
			o[1] = (char)c;
			b->len += 2;
			break;
		case '\b':
			o[1] = 'b';
			b->len += 2;
			break;
		case '\f':
			o[1] = 'f';
			b->len += 2;
			break;
		case '\n':
			o[1] = 'n';
			b->len += 2;
			break;
		case '\r':
			o[1] = 'r';
			b->len += 2;
			break;
		case '\t':
			o[1] = 't';
			b->len += 2;
			break;
		default:
			memcpy(o + 1, "u00", 3);
			o[4] = hex[c >> 4];
			o[5] = hex[c & 15];
			b->len += 6;
		}
	}
	memcpy(b->data + b->len, text + start, len - start);
	b->len += len - start;
	b->data[b->len++] = '"';
	return ascii || utf8_check(text, len, NULL) == UTF8_OK;
}

/* Decimal digits of v into the end of buf (returns where they start). */
static char *u64_digits(uint64_t v, char *end)
{
	do {
		*--end = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return end;
}

static void jbuf_int(jbuf_t *b, int64_t v)
{
	char text[24], *end = text + sizeof(text), *p;
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

	p = u64_digits(u, end);
	if (v < 0)
		*--p = '-';
	jbuf_put(b, p, (size_t)(end - p));
}

/*
 * A finite double as a JSON number that reads back as exactly `d`: the
 * fewest fraction digits k (0..22) such that m = round(d * 10^k) is below
 * 2^53 and m / 10^k == d (both exact doubles, so the division rounds the
 * decimal m * 10^-k exactly as strtod does); else %.15g, %.16g or %.17g,
 * the first that reads back (fewer digits are not needed: the integer path
 * takes every double of up to 15 significant digits within its range;
 * outside it a few more digits than the fewest may show). Always shows a '.'
 * or an exponent, so it reads back as a real.
 */
static void jbuf_double(jbuf_t *b, double d)
{
	static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
				       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
				       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
	double a = fabs(d);
	char text[48];

	if (d == 0) {
		jbuf_put(b, signbit(d) ? "-0.0" : "0.0", signbit(d) ? 4 : 3);
		return;
	}
	if (a < 9007199254740992.0 && a >= 1e-7) {
		for (int k = 0; k <= 22; k++) {
			double scaled = a * pow10[k], m;

			if (scaled >= 9007199254740992.0)
				break;
			m = nearbyint(scaled);
			if (m / pow10[k] == a) {
				char *end = text + sizeof(text), *p = end;
				uint64_t u = (uint64_t)m;

				if (k == 0) {
					*--p = '0';
					*--p = '.';
				}
				for (int i = 0; i < k; i++) {
					*--p = (char)('0' + u % 10);
					u /= 10;
					if (i == k - 1)
						*--p = '.';
				}
				p = u64_digits(u, p);
				if (d < 0)
					*--p = '-';
				jbuf_put(b, p, (size_t)(end - p));
				return;
			}
		}
	}
	{
		/* most doubles that get here need 16 or 17 digits (17 always read
		 * back): try 15 and 16 only, rather than every count from 1 */
		int n = 0;

		for (int precision = 15; precision <= 17; precision++) {
			n = snprintf(text, sizeof(text), "%.*g", precision, d);
			if (precision == 17 || strtod(text, NULL) == d)
				break;
		}
		if (n <= 0 || (size_t)n >= sizeof(text) - 3) {
			b->oom = true;
			return;
		}
		if (!strpbrk(text, ".e"))
			memcpy(text + n, ".0", 3), n += 2;
		jbuf_put(b, text, (size_t)n);
	}
}

ssize_t cat_codec_record_json(const Catalyst__V1__Record *record, char **buf, size_t *cap)
{
	const cat_table_t *table;
	const ProtobufCMessage *row = record_row_checked(record, &table);
	jbuf_t b = {*buf, 0, *cap, false};
	bool ok = row != NULL;

	if (ok) {
		jbuf_put(&b, "{\"table\":", 9);
		ok = jbuf_string(&b, table->name);
	}
	for (size_t i = 0; ok && i < table->n_columns; i++) {
		const cat_column_t *column = &table->columns[i];
		const ProtobufCFieldDescriptor *field = cat_schema_field(table, column);
		size_t name_len = strlen(column->name);

		if (!field) {
			ok = false;
			break;
		}
		if (!field_present(row, field))
			continue;
		if (jbuf_reserve(&b, name_len + 4)) {
			b.data[b.len++] = ',';
			b.data[b.len++] = '"';
			memcpy(b.data + b.len, column->name, name_len);
			b.len += name_len;
			b.data[b.len++] = '"';
			b.data[b.len++] = ':';
		}
		switch (column->type) {
		case CAT_COL_TEXT:
			ok = jbuf_string(&b, field_text(row, field));
			break;
		case CAT_COL_INT32:
			jbuf_int(&b, *FIELD_CPTR(row, field->offset, int32_t));
			break;
		case CAT_COL_INT64:
			jbuf_int(&b, *FIELD_CPTR(row, field->offset, int64_t));
			break;
		case CAT_COL_DOUBLE: {
			double d = *FIELD_CPTR(row, field->offset, double);

			if (!isfinite(d))
				ok = false;
			else
				jbuf_double(&b, d);
			break;
		}
		case CAT_COL_BOOL:
			if (*FIELD_CPTR(row, field->offset, protobuf_c_boolean))
				jbuf_put(&b, "true", 4);
			else
				jbuf_put(&b, "false", 5);
			break;
		case CAT_COL_TIMESTAMP: {
			int64_t us = *FIELD_CPTR(row, field->offset, int64_t);
			char text[40];

			if (us < TIMESTAMP_MIN_US || us > TIMESTAMP_MAX_US) {
				ok = false;
				break;
			}
			cat_time_format_rfc3339(us, text, sizeof(text));
			if (jbuf_reserve(&b, strlen(text) + 2)) {
				b.data[b.len++] = '"';
				jbuf_put(&b, text, strlen(text));
				b.data[b.len++] = '"';
			}
			break;
		}
		}
	}
	if (ok)
		jbuf_put(&b, "}", 2); /* with the NUL */
	*buf = b.data;
	*cap = b.cap;
	if (!ok || b.oom)
		return -1;
	return (ssize_t)b.len - 1;
}

/* --- the other commands: one decode boundary ---------------------------------------- */

/* Whether field f of m holds a value (not for repeated fields). */
static bool message_field_set(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	const char *base = (const char *)m;

	if (f->label == PROTOBUF_C_LABEL_REQUIRED)
		return true;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
		return *(const uint32_t *)(const void *)(base + f->quantifier_offset) == f->id;
	if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING)
		return *(void *const *)(const void *)(base + f->offset) != NULL;
	return *(const protobuf_c_boolean *)(const void *)(base + f->quantifier_offset);
}

/* Every enum value of m, at any depth, is one its enum defines. */
static cat_err_t enums_check(const ProtobufCMessage *m, int depth, char *errstr, size_t errstr_size)
{
	const ProtobufCMessageDescriptor *desc = m->descriptor;

	if (depth > WIRE_MAX_DEPTH)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "%s: nested too deeply",
				   desc->short_name);
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		const char *slot = (const char *)m + f->offset;
		size_t n = 1;
		cat_err_t err;

		if (f->type != PROTOBUF_C_TYPE_ENUM && f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			n = *(const size_t *)(const void *)((const char *)m + f->quantifier_offset);
			slot = *(const char *const *)(const void *)slot;
		} else if (!message_field_set(m, f)) {
			continue;
		}
		for (size_t k = 0; k < n; k++) {
			if (f->type == PROTOBUF_C_TYPE_ENUM) {
				int value = ((const int *)(const void *)slot)[k];

				if (!protobuf_c_enum_descriptor_get_value(f->descriptor, value))
					return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
							   "field %s.%s: unknown value %d", desc->short_name, f->name,
							   value);
			} else {
				const ProtobufCMessage *sub = ((const ProtobufCMessage *const *)(const void *)slot)[k];

				if (sub && (err = enums_check(sub, depth + 1, errstr, errstr_size)) != CAT_OK)
					return err;
			}
		}
	}
	return CAT_OK;
}

/*
 * Decodes `buf` as a `desc` message: at most max_len bytes, protobuf that
 * unpacks, every string at any depth valid UTF-8 without NUL bytes (checked
 * on the wire), every enum value known, the meta (field 1, CommandMeta,
 * when the message has one) as a WriteCommand's.
 */
static cat_err_t message_decode(const ProtobufCMessageDescriptor *desc, size_t max_len, const void *buf,
				size_t len, ProtobufCMessage **out, char *errstr, size_t errstr_size)
{
	static const uint8_t no_bytes[1];
	const ProtobufCFieldDescriptor *meta_field;
	ProtobufCMessage *m;
	cat_err_t err;

	*out = NULL;
	if (len > max_len)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "%s of %zu bytes, larger than the limit of %zu", desc->short_name, len, max_len);
	if (!buf) {
		if (len > 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "no message bytes");
		buf = no_bytes;
	}
	if (!(m = protobuf_c_message_unpack(desc, NULL, len, buf)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "could not decode %s: invalid protobuf",
				   desc->short_name);
	err = wire_check_strings(desc, buf, len, 0, errstr, errstr_size);
	if (!err)
		err = enums_check(m, 0, errstr, errstr_size);
	meta_field = protobuf_c_message_descriptor_get_field_by_name(desc, "meta");
	if (!err && meta_field && meta_field->descriptor == &catalyst__v1__command_meta__descriptor)
		err = meta_validate(*(Catalyst__V1__CommandMeta **)(void *)((char *)m + meta_field->offset), errstr,
				    errstr_size);
	if (err) {
		protobuf_c_message_free_unpacked(m, NULL);
		return err;
	}
	*out = m;
	return CAT_OK;
}

/* A text field's length in bytes within [min, max]. */
static cat_err_t text_check(const char *what, const char *text, size_t min, size_t max, char *errstr,
			    size_t errstr_size)
{
	size_t n = text ? strlen(text) : 0;

	if (n < min)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "%s is %s", what,
				   text ? "empty" : "missing");
	if (n > max)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "%s: %zu bytes, longer than %zu", what,
				   n, max);
	return CAT_OK;
}

/* The changes of a ChangeBatch or ReplicateRows: a known op and a record
 * as a WriteCommand's. */
static cat_err_t changes_check(Catalyst__V1__Change *const *changes, size_t n, char *errstr, size_t errstr_size)
{
	for (size_t i = 0; i < n; i++) {
		const Catalyst__V1__Change *change = changes[i];
		int op = change->has_op ? (int)change->op : 0;
		char why[256];

		if (op != CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT && op != CATALYST__V1__WRITE_OP__WRITE_OP_DELETE)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "change %zu: unknown write op %d",
					   i, op);
		if (cat_codec_record_validate(change->record, op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, why,
					      sizeof(why)) != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "change %zu: %s", i, why);
		if (change->command_id && strlen(change->command_id) > CAT_CODEC_COMMAND_ID_MAX * 4)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "change %zu: command_id too long",
					   i);
	}
	return CAT_OK;
}

cat_err_t cat_codec_change_batch_decode(const void *buf, size_t len, Catalyst__V1__ChangeBatch **out, char *errstr,
					size_t errstr_size)
{
	ProtobufCMessage *m;
	cat_err_t err = message_decode(&catalyst__v1__change_batch__descriptor, CAT_CODEC_MAX_CHANGES_BYTES, buf, len,
				       &m, errstr, errstr_size);
	Catalyst__V1__ChangeBatch *batch = (Catalyst__V1__ChangeBatch *)m;

	*out = NULL;
	if (err)
		return err;
	if ((err = changes_check(batch->changes, batch->n_changes, errstr, errstr_size)) != CAT_OK) {
		catalyst__v1__change_batch__free_unpacked(batch, NULL);
		return err;
	}
	*out = batch;
	return CAT_OK;
}

cat_err_t cat_codec_cache_command_decode(const void *buf, size_t len, Catalyst__V1__CacheCommand **out,
					 char *errstr, size_t errstr_size)
{
	ProtobufCMessage *m;
	cat_err_t err = message_decode(&catalyst__v1__cache_command__descriptor, CAT_CODEC_MAX_MESSAGE_BYTES, buf,
				       len, &m, errstr, errstr_size);
	Catalyst__V1__CacheCommand *cmd = (Catalyst__V1__CacheCommand *)m;
	char what[64];

	*out = NULL;
	if (err)
		return err;
	switch (cmd->action_case) {
	case CATALYST__V1__CACHE_COMMAND__ACTION_SET:
		err = text_check("set: key", cmd->set->key, 1, CAT_CODEC_CACHE_KEY_MAX, errstr, errstr_size);
		if (!err && cmd->set->has_ttl_seconds && cmd->set->ttl_seconds < 0)
			err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "set: negative ttl_seconds %lld",
					  (long long)cmd->set->ttl_seconds);
		if (!err && cmd->set->has_version && cmd->set->version < 0)
			err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "set: negative version %lld",
					  (long long)cmd->set->version);
		break;
	case CATALYST__V1__CACHE_COMMAND__ACTION_DELETE:
		if (cmd->delete_->n_keys == 0)
			err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "delete: no keys");
		for (size_t i = 0; !err && i < cmd->delete_->n_keys; i++) {
			snprintf(what, sizeof(what), "delete: key %zu", i);
			err = text_check(what, cmd->delete_->keys[i], 1, CAT_CODEC_CACHE_KEY_MAX, errstr, errstr_size);
		}
		break;
	case CATALYST__V1__CACHE_COMMAND__ACTION_INVALIDATE:
		err = text_check("invalidate: pattern", cmd->invalidate->pattern, 1, CAT_CODEC_CACHE_KEY_MAX, errstr,
				 errstr_size);
		break;
	case CATALYST__V1__CACHE_COMMAND__ACTION_WARM:
		break;
	default:
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "CacheCommand without an action");
	}
	if (err) {
		catalyst__v1__cache_command__free_unpacked(cmd, NULL);
		return err;
	}
	*out = cmd;
	return CAT_OK;
}

cat_err_t cat_codec_sync_command_decode(const void *buf, size_t len, Catalyst__V1__SyncCommand **out, char *errstr,
					size_t errstr_size)
{
	ProtobufCMessage *m;
	cat_err_t err = message_decode(&catalyst__v1__sync_command__descriptor, CAT_CODEC_MAX_MESSAGE_BYTES, buf,
				       len, &m, errstr, errstr_size);
	Catalyst__V1__SyncCommand *cmd = (Catalyst__V1__SyncCommand *)m;

	*out = NULL;
	if (err)
		return err;
	err = text_check("replica", cmd->replica ? cmd->replica : "", 0, CAT_CODEC_NAME_MAX, errstr, errstr_size);
	switch (cmd->action_case) {
	case CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE:
		if (!err)
			err = changes_check(cmd->replicate->changes, cmd->replicate->n_changes, errstr, errstr_size);
		break;
	case CATALYST__V1__SYNC_COMMAND__ACTION_CHECK:
		if (!err)
			err = text_check("check: table", cmd->check->table, 1, CAT_CODEC_NAME_MAX, errstr, errstr_size);
		break;
	case CATALYST__V1__SYNC_COMMAND__ACTION_RESYNC:
		if (!err)
			err = text_check("resync: table", cmd->resync->table, 1, CAT_CODEC_NAME_MAX, errstr,
					 errstr_size);
		break;
	default:
		break; /* the worker says what it makes of no action */
	}
	if (err) {
		catalyst__v1__sync_command__free_unpacked(cmd, NULL);
		return err;
	}
	*out = cmd;
	return CAT_OK;
}

bool cat_codec_backup_tag_valid(const char *tag)
{
	size_t n = strlen(tag);

	if (n < 1 || n > CAT_CODEC_TAG_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((tag[i] >= 'a' && tag[i] <= 'z') || (tag[i] >= '0' && tag[i] <= '9') || tag[i] == '_' ||
		      tag[i] == '-'))
			return false;
	return true;
}

/* A backup tag, when given: [a-z0-9_-]{1,32} (it becomes a metric label). */
static cat_err_t tag_check(const char *tag, char *errstr, size_t errstr_size)
{
	char quoted[QUOTE_MAX_BYTES + 4];

	if (!tag || cat_codec_backup_tag_valid(tag))
		return CAT_OK;
	return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "tag %s: must match [a-z0-9_-]{1,%d}",
			   quote_text(tag, quoted, sizeof(quoted)), CAT_CODEC_TAG_MAX);
}

static cat_err_t names_check(const char *what, char *const *names, size_t n, char *errstr, size_t errstr_size)
{
	cat_err_t err = CAT_OK;

	for (size_t i = 0; !err && i < n; i++)
		err = text_check(what, names[i], 1, CAT_CODEC_NAME_MAX, errstr, errstr_size);
	return err;
}

cat_err_t cat_codec_backup_command_decode(const void *buf, size_t len, Catalyst__V1__BackupCommand **out,
					  char *errstr, size_t errstr_size)
{
	ProtobufCMessage *m;
	cat_err_t err = message_decode(&catalyst__v1__backup_command__descriptor, CAT_CODEC_MAX_MESSAGE_BYTES, buf,
				       len, &m, errstr, errstr_size);
	Catalyst__V1__BackupCommand *cmd = (Catalyst__V1__BackupCommand *)m;

	*out = NULL;
	if (err)
		return err;
	err = text_check("database", cmd->database ? cmd->database : "", 0, CAT_CODEC_NAME_MAX, errstr,
			 errstr_size);
	switch (cmd->action_case) {
	case CATALYST__V1__BACKUP_COMMAND__ACTION_FULL:
		if (!err)
			err = tag_check(cmd->full->tag, errstr, errstr_size);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES:
		if (!err)
			err = tag_check(cmd->tables->tag, errstr, errstr_size);
		if (!err)
			err = names_check("tables: table", cmd->tables->tables, cmd->tables->n_tables, errstr,
					  errstr_size);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_RESTORE:
		if (!err)
			err = text_check("restore: backup_id", cmd->restore->backup_id, 1, CAT_CODEC_COMMAND_ID_MAX * 2,
					 errstr, errstr_size);
		if (!err)
			err = text_check("restore: target", cmd->restore->target ? cmd->restore->target : "", 0,
					 CAT_CODEC_NAME_MAX, errstr, errstr_size);
		if (!err)
			err = names_check("restore: table", cmd->restore->tables, cmd->restore->n_tables, errstr,
					  errstr_size);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_VERIFY:
		if (!err)
			err = text_check("verify: backup_id", cmd->verify->backup_id, 1, CAT_CODEC_COMMAND_ID_MAX * 2,
					 errstr, errstr_size);
		break;
	default:
		break;
	}
	if (err) {
		catalyst__v1__backup_command__free_unpacked(cmd, NULL);
		return err;
	}
	*out = cmd;
	return CAT_OK;
}

cat_err_t cat_codec_version_check(int64_t version, int64_t max_ahead_s, int64_t now_us, char *errstr,
				  size_t errstr_size)
{
	if (max_ahead_s <= 0 || version <= now_us || (version - now_us) / 1000000 <= max_ahead_s)
		return CAT_OK;
	return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
			   "version %lld is %lld s ahead of this worker's clock, more than "
			   "CATALYST_VERSION_MAX_AHEAD_S=%lld (versions are event time in microseconds)",
			   (long long)version, (long long)((version - now_us) / 1000000), (long long)max_ahead_s);
}

/* --- any message as JSON ------------------------------------------------------------ */

json_t *cat_codec_hex_json(const void *bytes, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	const uint8_t *data = bytes;
	char *text = malloc(len * 2 + 1);
	json_t *out;

	if (!text)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		text[2 * i] = digits[data[i] >> 4];
		text[2 * i + 1] = digits[data[i] & 15];
	}
	text[len * 2] = '\0';
	out = json_string(text);
	free(text);
	return out;
}

/* One value of a field (element i of a repeated one: `member` points at it). */
static json_t *field_value_json(const ProtobufCFieldDescriptor *f, const void *member)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return json_integer(*(const int32_t *)member);
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return json_integer(*(const uint32_t *)member);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return json_integer(*(const int64_t *)member);
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t v = *(const uint64_t *)member;
		char text[24];

		if (v <= INT64_MAX)
			return json_integer((json_int_t)v);
		snprintf(text, sizeof(text), "%" PRIu64, v);
		return json_string(text);
	}
	case PROTOBUF_C_TYPE_FLOAT:
		return json_real(*(const float *)member); /* NaN/inf: NULL, shown as null */
	case PROTOBUF_C_TYPE_DOUBLE:
		return json_real(*(const double *)member);
	case PROTOBUF_C_TYPE_BOOL:
		return json_boolean(*(const protobuf_c_boolean *)member);
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)member);

		return ev ? json_string(ev->name) : json_integer(*(const int *)member);
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)member;
		json_t *v = s ? json_string(s) : json_null();

		return v ? v : cat_codec_hex_json(s, strlen(s)); /* invalid UTF-8 */
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = member;
		json_t *v = json_stringn((const char *)b->data, b->len);

		return v ? v : cat_codec_hex_json(b->data, b->len);
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub = *(ProtobufCMessage *const *)member;

		if (!sub)
			return json_null();
		if (sub->descriptor == &catalyst__v1__record__descriptor) {
			char *text = cat_codec_record_to_json((const Catalyst__V1__Record *)sub);
			json_t *v = text ? json_loads(text, 0, NULL) : NULL;

			free(text);
			if (v)
				return v;
		}
		return cat_codec_message_to_json(sub);
	}
	}
	return json_null();
}

static size_t field_size(const ProtobufCFieldDescriptor *f)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return 8;
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	default:
		return 4;
	}
}

json_t *cat_codec_message_to_json(const ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	json_t *obj = json_object();

	for (unsigned i = 0; obj && i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *base = (const char *)msg;
		const void *member = base + f->offset;

		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base + f->quantifier_offset);
			const char *array = *(char *const *)member;
			json_t *list = json_array();

			for (size_t k = 0; list && k < n; k++)
				json_array_append_new(list, field_value_json(f, array + k * field_size(f)));
			json_object_set_new(obj, f->name, list);
			continue;
		}
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
				continue;
		} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
			if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) {
				const void *p = *(void *const *)member;

				if (!p || p == f->default_value)
					continue;
			} else if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset)) {
				continue;
			}
		}
		json_object_set_new(obj, f->name, field_value_json(f, member));
	}
	return obj;
}
