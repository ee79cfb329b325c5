/*
 * catalyst-cache: a record -> its PUT item (internal.h). The key of the
 * table's layout, the row's version, its JSON (cat_codec_record_json) and
 * its symbol's set; what cannot be cached says why.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* A text field of the row, NULL when unset (or no such field). */
static const char *row_text(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	if (!field || field->type != PROTOBUF_C_TYPE_STRING)
		return NULL;
	return *(const char *const *)(const void *)((const char *)row + field->offset);
}

/* The row's version, 0 when unset. */
static int64_t row_version(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	if (!field || field->type != PROTOBUF_C_TYPE_INT64 ||
	    !*(const protobuf_c_boolean *)(const void *)((const char *)row + field->quantifier_offset))
		return 0;
	return *(const int64_t *)(const void *)((const char *)row + field->offset);
}

int cache_put_record(cache_store_t *store, const Catalyst__V1__Record *record, bool is_delete, const char *op,
		     long long ttl_override, int32_t msg, bool *candidates, char *why, size_t why_size)
{
	const cat_table_t *table = cat_codec_record_table(record);
	const ProtobufCMessage *row = cat_codec_record_row(record);
	const layout_t *layout = NULL;
	const char *pk, *symbol = NULL;
	char key[MAX_KEY_BYTES];
	const char *json = NULL;
	size_t pk_len, json_len = 0;
	char op_char;
	uint16_t t;
	int key_len;

	for (t = 0; t < MAX_TABLES && store->layouts[t].table; t++)
		if (store->layouts[t].table == table)
			break;
	if (!table || t == MAX_TABLES || !store->layouts[t].table) {
		snprintf(why, why_size, "a change without a known table");
		return -1;
	}
	layout = &store->layouts[t];
	if (layout->derived_candidates) {
		*candidates = true;
		return 0;
	}
	if (!layout->prefix)
		return 0;
	if (!row || row->descriptor != table->descriptor) {
		snprintf(why, why_size, "a change whose row is not of its table %s", table->name);
		return -1;
	}
	pk = row_text(row, layout->f_pk);
	if (!pk)
		pk = "";
	pk_len = strlen(pk);
	if (layout->set_prefix && strncmp(pk, "symbol:", 7) == 0) {
		snprintf(why, why_size, "%s %.200s: an id starting with \"symbol:\" would be cached over the "
			 "key of a symbol's set", layout->table->name, pk);
		return -1;
	}
	if (pk_len >= 2 && strcmp(pk + pk_len - 2, "#v") == 0) {
		snprintf(why, why_size, "%s %.200s: an id ending with \"#v\" would be cached over the key of "
			 "another value's version", layout->table->name, pk);
		return -1;
	}
	key_len = snprintf(key, sizeof(key), "%s%s", layout->prefix, pk);
	if (key_len < 0 || (size_t)key_len >= sizeof(key)) {
		snprintf(why, why_size, "%s %.200s: key longer than %d bytes", layout->table->name, pk,
			 MAX_KEY_BYTES);
		return -1;
	}
	if (!is_delete) {
		ssize_t len = cat_codec_record_json(record, &store->json, &store->json_cap);

		if (len < 0) {
			snprintf(why, why_size, "%s %.200s: the row has no JSON form", layout->table->name, pk);
			return -1;
		}
		json = store->json;
		json_len = (size_t)len;
		if ((long long)json_len > store->max_value) {
			snprintf(why, why_size,
				 "%s %.200s: value of %zu bytes is larger than CATALYST_CACHE_MAX_VALUE_BYTES (%lld)",
				 layout->table->name, pk, json_len, store->max_value);
			return -1;
		}
		if (layout->set_prefix)
			symbol = row_text(row, layout->f_symbol);
	}
	op_char = is_delete ? 'd' : op[0];
	if (layout->set_prefix)
		op_char = (char)(op_char - 'a' + 'A'); /* a member of its symbol's set too */
	cache_put(store, op_char, key, (size_t)key_len, row_version(row, layout->f_version),
		  ttl_override > 0 ? ttl_override : layout->ttl, json, json_len, symbol, pk, msg, t);
	return 0;
}
