#include "cat_sql.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_pg.h"
#include "cat_time.h"

#define COPY_CHUNK_BYTES (64 * 1024)

#define FIELD_CPTR(msg, offset, type) ((const type *)(const void *)((const char *)(msg) + (offset)))

/* --- text buffers -------------------------------------------------------------- */

static int buf_reserve(cat_sql_buf_t *buf, size_t more)
{
	size_t cap;
	char *grown;

	if (buf->len + more + 1 <= buf->cap)
		return 0;
	cap = buf->cap ? buf->cap : 256;
	while (cap < buf->len + more + 1)
		cap *= 2;
	grown = realloc(buf->data, cap);
	if (!grown)
		return -1;
	buf->data = grown;
	buf->cap = cap;
	return 0;
}

static int buf_printf(cat_sql_buf_t *buf, const char *fmt, ...) CAT_PRINTF(2, 3);

static int buf_printf(cat_sql_buf_t *buf, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || buf_reserve(buf, (size_t)n))
		return -1;
	va_start(ap, fmt);
	vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	buf->len += (size_t)n;
	return 0;
}

/* --- statements ------------------------------------------------------------------ */

static const char *sql_type(cat_col_type_t type)
{
	switch (type) {
	case CAT_COL_TEXT:
		return "text";
	case CAT_COL_INT32:
		return "integer";
	case CAT_COL_INT64:
		return "bigint";
	case CAT_COL_DOUBLE:
		return "double precision";
	case CAT_COL_BOOL:
		return "boolean";
	case CAT_COL_TIMESTAMP:
		return "timestamptz";
	}
	return "text";
}

/* Names go into SQL unquoted: the schema's are plain lower-case identifiers,
 * and anything else is refused here rather than quoted. */
static bool plain_identifier(const char *name)
{
	if (!name || !(islower((unsigned char)*name) || *name == '_'))
		return false;
	for (const char *c = name; *c; c++)
		if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '_'))
			return false;
	return strlen(name) < 64;
}

static int build_upsert(cat_sql_buf_t *sql, const cat_sql_table_t *st, bool repair)
{
	const cat_table_t *t = st->table;
	const char *pk = t->primary_key;
	int rc = 0;

	rc |= buf_printf(sql, "INSERT INTO %s AS t (", t->name);
	for (size_t i = 0; i < t->n_columns; i++)
		rc |= buf_printf(sql, "%s%s", i ? ", " : "", t->columns[i].name);
	rc |= buf_printf(sql, ")\nSELECT ");
	for (size_t i = 0; i < t->n_columns; i++)
		rc |= buf_printf(sql, "%su.%s", i ? ", " : "", t->columns[i].name);
	rc |= buf_printf(sql, "\nFROM unnest(");
	for (size_t i = 0; i < t->n_columns; i++)
		rc |= buf_printf(sql, "%s$%zu::%s[]", i ? ", " : "", i + 1, sql_type(t->columns[i].type));
	rc |= buf_printf(sql, ") AS u (");
	for (size_t i = 0; i < t->n_columns; i++)
		rc |= buf_printf(sql, "%s%s", i ? ", " : "", t->columns[i].name);
	/* a delete at least as new as this version stands */
	rc |= buf_printf(sql,
			 ")\nWHERE NOT EXISTS (SELECT 1 FROM row_tombstones AS d WHERE d.table_name = '%s'"
			 " AND d.pk = u.%s AND d.version >= u.version)\n",
			 t->name, pk);
	if (t->insert_only && !repair) {
		rc |= buf_printf(sql, "ON CONFLICT (%s) DO NOTHING\n", pk);
	} else {
		bool first = true;

		rc |= buf_printf(sql, "ON CONFLICT (%s) DO UPDATE SET ", pk);
		for (size_t i = 0; i < t->n_columns; i++) {
			if (i == st->pk_column)
				continue;
			rc |= buf_printf(sql, "%s%s = EXCLUDED.%s", first ? "" : ", ", t->columns[i].name,
					 t->columns[i].name);
			first = false;
		}
		rc |= buf_printf(sql, "\nWHERE t.version %s EXCLUDED.version\n", repair ? "<=" : "<");
	}
	rc |= buf_printf(sql, "RETURNING t.%s", pk);
	return rc;
}

static int build_remove(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	const cat_table_t *t = st->table;

	return buf_printf(sql,
			  "WITH d AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS d (pk, version)),\n"
			  "tombstone AS (INSERT INTO row_tombstones AS r (table_name, pk, version)\n"
			  "  SELECT '%s', d.pk, d.version FROM d\n"
			  "  ON CONFLICT (table_name, pk) DO UPDATE SET version = EXCLUDED.version, "
			  "deleted_at = now()\n"
			  "  WHERE r.version < EXCLUDED.version)\n"
			  "DELETE FROM %s AS t USING d WHERE t.%s = d.pk AND t.version <= d.version\n"
			  "RETURNING t.%s",
			  t->name, t->name, t->primary_key, t->primary_key);
}

static int build_remove_extra(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	const cat_table_t *t = st->table;

	return buf_printf(sql,
			  "DELETE FROM %s AS t USING unnest($1::text[], $2::bigint[]) AS d (pk, version)\n"
			  "WHERE t.%s = d.pk AND t.version <= d.version\n"
			  "RETURNING t.%s",
			  t->name, t->primary_key, t->primary_key);
}

static int build_row_text(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	const cat_table_t *t = st->table;
	int rc = buf_printf(sql, "ROW(");

	for (size_t i = 0; i < t->n_columns; i++)
		rc |= buf_printf(sql, "%st.%s", i ? ", " : "", t->columns[i].name);
	return rc | buf_printf(sql, ")::text");
}

static int build_columns(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	int rc = buf_printf(sql, "%s", "");

	for (size_t i = 0; i < st->table->n_columns; i++)
		rc |= buf_printf(sql, "%s%s", i ? ", " : "", st->table->columns[i].name);
	return rc;
}

static int build_state(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	const cat_table_t *t = st->table;

	return buf_printf(sql,
			  "SELECT u.pk, t.version, r.version FROM unnest($1::text[]) AS u (pk)\n"
			  "LEFT JOIN %s AS t ON t.%s = u.pk\n"
			  "LEFT JOIN row_tombstones AS r ON r.table_name = '%s' AND r.pk = u.pk",
			  t->name, t->primary_key, t->name);
}

static int build_tombstoned(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	return buf_printf(sql,
			  "SELECT EXISTS (SELECT 1 FROM row_tombstones WHERE table_name = '%s' AND pk = ANY "
			  "($1::text[]))",
			  st->table->name);
}

static int build_copy(cat_sql_buf_t *sql, const cat_sql_table_t *st)
{
	const cat_table_t *t = st->table;
	int rc = buf_printf(sql, "SAVEPOINT cat_sql_copy; COPY %s (", t->name);

	for (size_t i = 0; i < t->n_columns; i++)
		rc |= buf_printf(sql, "%s%s", i ? ", " : "", t->columns[i].name);
	return rc | buf_printf(sql, ") FROM STDIN (FORMAT binary)");
}

cat_err_t cat_sql_table_init(cat_sql_table_t *st, const cat_table_t *table, char *errstr, size_t errstr_size)
{
	cat_sql_buf_t upsert = {0}, remove = {0}, state = {0}, tombstoned = {0}, copy = {0}, repair = {0},
		      remove_extra = {0}, row_text = {0}, columns = {0};
	bool have_pk = false, have_version = false;

	memset(st, 0, sizeof(*st));
	st->table = table;
	if (!plain_identifier(table->name))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "table name %s is not a plain identifier", table->name);
	st->fields = calloc(table->n_columns, sizeof(*st->fields));
	st->types = calloc(table->n_columns, sizeof(*st->types));
	if (!st->fields || !st->types)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	for (size_t i = 0; i < table->n_columns; i++) {
		const cat_column_t *column = &table->columns[i];

		st->fields[i] = cat_schema_field(table, column);
		st->types[i] = column->type;
		if (!st->fields[i] || !plain_identifier(column->name))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "column %s.%s has no record field or is not a plain identifier",
					   table->name, column->name);
		if (strcmp(column->name, table->primary_key) == 0) {
			st->pk_column = i;
			have_pk = column->type == CAT_COL_TEXT;
		}
		if (strcmp(column->name, "version") == 0) {
			st->version_column = i;
			have_version = column->type == CAT_COL_INT64;
		}
	}
	if (!have_pk || !have_version)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "table %s needs a text primary key and a bigint version", table->name);
	if (build_upsert(&upsert, st, false) || build_remove(&remove, st) || build_state(&state, st) ||
	    build_tombstoned(&tombstoned, st) || build_copy(&copy, st) || build_upsert(&repair, st, true) ||
	    build_remove_extra(&remove_extra, st) || build_row_text(&row_text, st) || build_columns(&columns, st)) {
		free(repair.data);
		free(remove_extra.data);
		free(row_text.data);
		free(columns.data);
		free(upsert.data);
		free(remove.data);
		free(state.data);
		free(tombstoned.data);
		free(copy.data);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	st->upsert = upsert.data;
	st->remove = remove.data;
	st->state = state.data;
	st->tombstoned = tombstoned.data;
	st->copy = copy.data;
	st->repair = repair.data;
	st->remove_extra = remove_extra.data;
	st->row_text = row_text.data;
	st->columns = columns.data;
	return CAT_OK;
}

void cat_sql_table_free(cat_sql_table_t *st)
{
	if (!st)
		return;
	free(st->fields);
	free(st->types);
	free(st->upsert);
	free(st->remove);
	free(st->state);
	free(st->tombstoned);
	free(st->copy);
	free(st->repair);
	free(st->remove_extra);
	free(st->row_text);
	free(st->columns);
	memset(st, 0, sizeof(*st));
}

/* --- binary arrays ------------------------------------------------------------------- */

/* PostgreSQL's binary array: int32 ndim, int32 has-null flag, element type
 * OID, then per dimension int32 length and lower bound; then per element an
 * int32 byte length (-1: NULL) and the element's binary form. Big-endian. */
#define ARRAY_HEADER_BYTES 20
#define PG_EPOCH_OFFSET_US 946684800000000LL /* 2000-01-01 in Unix µs */

static uint32_t element_oid(cat_col_type_t type)
{
	switch (type) {
	case CAT_COL_TEXT:
		return 25; /* text */
	case CAT_COL_INT32:
		return 23; /* int4 */
	case CAT_COL_INT64:
		return 20; /* int8 */
	case CAT_COL_DOUBLE:
		return 701; /* float8 */
	case CAT_COL_BOOL:
		return 16; /* bool */
	case CAT_COL_TIMESTAMP:
		return 1184; /* timestamptz */
	}
	return 25;
}

static void put_be32(char *out, uint32_t v)
{
	out[0] = (char)(v >> 24);
	out[1] = (char)(v >> 16);
	out[2] = (char)(v >> 8);
	out[3] = (char)v;
}

static void put_be64(char *out, uint64_t v)
{
	put_be32(out, (uint32_t)(v >> 32));
	put_be32(out + 4, (uint32_t)v);
}

/* Grows *ptr to n elements of `size` bytes; -1 when out of memory. */
static int grow(void *ptr, size_t n, size_t size)
{
	void *grown = realloc(*(void **)ptr, n * size);

	if (!grown)
		return -1;
	*(void **)ptr = grown;
	return 0;
}

cat_err_t cat_sql_arrays_begin(cat_sql_arrays_t *arrays, size_t n_columns, const cat_col_type_t *types)
{
	if (n_columns > arrays->cap_columns) {
		if (grow(&arrays->columns, n_columns, sizeof(*arrays->columns)))
			return CAT_ERR_RETRIABLE;
		memset(arrays->columns + arrays->cap_columns, 0,
		       (n_columns - arrays->cap_columns) * sizeof(*arrays->columns));
		if (grow(&arrays->types, n_columns, sizeof(*arrays->types)) ||
		    grow(&arrays->has_null, n_columns, sizeof(*arrays->has_null)) ||
		    grow(&arrays->n_elements, n_columns, sizeof(*arrays->n_elements)) ||
		    grow(&arrays->values, n_columns, sizeof(*arrays->values)) ||
		    grow(&arrays->lengths, n_columns, sizeof(*arrays->lengths)) ||
		    grow(&arrays->formats, n_columns, sizeof(*arrays->formats)))
			return CAT_ERR_RETRIABLE;
		arrays->cap_columns = n_columns;
	}
	arrays->n_columns = n_columns;
	for (size_t i = 0; i < n_columns; i++) {
		arrays->columns[i].len = 0;
		if (buf_reserve(&arrays->columns[i], ARRAY_HEADER_BYTES))
			return CAT_ERR_RETRIABLE;
		arrays->columns[i].len = ARRAY_HEADER_BYTES; /* written by finish */
		arrays->types[i] = types[i];
		arrays->has_null[i] = false;
		arrays->n_elements[i] = 0;
		arrays->formats[i] = 1; /* binary */
	}
	return CAT_OK;
}

/* One field as an array element or a binary COPY field: an int32 length
 * (-1: NULL, `data` NULL), then the bytes. */
static int put_field(cat_sql_buf_t *buf, const void *data, size_t len)
{
	if (len > INT32_MAX || buf_reserve(buf, 4 + (data ? len : 0)))
		return -1;
	put_be32(buf->data + buf->len, data ? (uint32_t)len : UINT32_MAX);
	buf->len += 4;
	if (data) {
		memcpy(buf->data + buf->len, data, len);
		buf->len += len;
	}
	return 0;
}

static bool field_present(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	if (field->type == PROTOBUF_C_TYPE_STRING || field->type == PROTOBUF_C_TYPE_MESSAGE)
		return *FIELD_CPTR(row, field->offset, void *) != NULL;
	return *FIELD_CPTR(row, field->quantifier_offset, protobuf_c_boolean) != 0;
}

/* The binary form of a column of `row` (type's send format). */
static int put_value(cat_sql_buf_t *buf, cat_col_type_t type, const ProtobufCMessage *row,
		     const ProtobufCFieldDescriptor *field, bool *is_null)
{
	char bin[8];
	uint64_t bits;

	*is_null = !field_present(row, field);
	if (*is_null)
		return put_field(buf, NULL, 0);
	switch (type) {
	case CAT_COL_TEXT: {
		const char *text = *FIELD_CPTR(row, field->offset, char *);

		return put_field(buf, text, strlen(text));
	}
	case CAT_COL_INT32:
		put_be32(bin, (uint32_t)*FIELD_CPTR(row, field->offset, int32_t));
		return put_field(buf, bin, 4);
	case CAT_COL_INT64:
		put_be64(bin, (uint64_t)*FIELD_CPTR(row, field->offset, int64_t));
		return put_field(buf, bin, 8);
	case CAT_COL_DOUBLE:
		memcpy(&bits, FIELD_CPTR(row, field->offset, double), sizeof(bits));
		put_be64(bin, bits);
		return put_field(buf, bin, 8);
	case CAT_COL_BOOL:
		bin[0] = *FIELD_CPTR(row, field->offset, protobuf_c_boolean) ? 1 : 0;
		return put_field(buf, bin, 1);
	case CAT_COL_TIMESTAMP:
		/* validation keeps it within years 1..9999: no overflow */
		put_be64(bin, (uint64_t)(*FIELD_CPTR(row, field->offset, int64_t) - PG_EPOCH_OFFSET_US));
		return put_field(buf, bin, 8);
	}
	return -1;
}

cat_err_t cat_sql_arrays_add_row(cat_sql_arrays_t *arrays, const cat_sql_table_t *st, const ProtobufCMessage *row)
{
	for (size_t i = 0; i < st->table->n_columns && i < arrays->n_columns; i++) {
		bool is_null;

		if (put_value(&arrays->columns[i], st->types[i], row, st->fields[i], &is_null))
			return CAT_ERR_RETRIABLE;
		arrays->has_null[i] |= is_null;
		arrays->n_elements[i]++;
	}
	return CAT_OK;
}

cat_err_t cat_sql_arrays_add_text(cat_sql_arrays_t *arrays, size_t column, const char *text)
{
	if (column >= arrays->n_columns || arrays->types[column] != CAT_COL_TEXT)
		return CAT_ERR_FATAL;
	arrays->has_null[column] |= !text;
	arrays->n_elements[column]++;
	return put_field(&arrays->columns[column], text, text ? strlen(text) : 0) ? CAT_ERR_RETRIABLE
										  : CAT_OK;
}

cat_err_t cat_sql_arrays_add_int64(cat_sql_arrays_t *arrays, size_t column, int64_t value)
{
	char bin[8];

	if (column >= arrays->n_columns || arrays->types[column] != CAT_COL_INT64)
		return CAT_ERR_FATAL;
	put_be64(bin, (uint64_t)value);
	arrays->n_elements[column]++;
	return put_field(&arrays->columns[column], bin, 8) ? CAT_ERR_RETRIABLE : CAT_OK;
}

cat_err_t cat_sql_arrays_add_binary(cat_sql_arrays_t *arrays, size_t column, const void *data, size_t len)
{
	if (column >= arrays->n_columns)
		return CAT_ERR_FATAL;
	arrays->has_null[column] |= !data;
	arrays->n_elements[column]++;
	return put_field(&arrays->columns[column], data, data ? len : 0) ? CAT_ERR_RETRIABLE : CAT_OK;
}

void cat_sql_arrays_finish(cat_sql_arrays_t *arrays)
{
	for (size_t i = 0; i < arrays->n_columns; i++) {
		char *header = arrays->columns[i].data;

		put_be32(header, 1);
		put_be32(header + 4, arrays->has_null[i] ? 1 : 0);
		put_be32(header + 8, element_oid(arrays->types[i]));
		put_be32(header + 12, (uint32_t)arrays->n_elements[i]);
		put_be32(header + 16, 1);
		arrays->values[i] = header;
		arrays->lengths[i] = (int)arrays->columns[i].len;
	}
}

void cat_sql_arrays_shrink(cat_sql_arrays_t *arrays, size_t keep_bytes)
{
	for (size_t i = 0; i < arrays->cap_columns; i++)
		if (arrays->columns[i].cap > keep_bytes) {
			free(arrays->columns[i].data);
			arrays->columns[i] = (cat_sql_buf_t){0};
		}
}

void cat_sql_arrays_free(cat_sql_arrays_t *arrays)
{
	if (!arrays)
		return;
	for (size_t i = 0; i < arrays->cap_columns; i++)
		free(arrays->columns[i].data);
	free(arrays->columns);
	free(arrays->types);
	free(arrays->has_null);
	free(arrays->n_elements);
	free((void *)arrays->values);
	free(arrays->lengths);
	free(arrays->formats);
	memset(arrays, 0, sizeof(*arrays));
}

/* Fills errstr for a failed statement (res may be NULL) and returns its class. */
static cat_err_t statement_error(PGconn *conn, const PGresult *res, const char *what, char *errstr,
				 size_t errstr_size)
{
	char action[64];

	snprintf(action, sizeof(action), "execute %s", what);
	return cat_pg_result_error(conn, res, action, errstr, errstr_size);
}

cat_err_t cat_sql_exec(PGconn *conn, const char *what, const char *sql, const cat_sql_arrays_t *arrays,
		   PGresult **out, char *errstr, size_t errstr_size)
{
	return cat_sql_exec_result(conn, what, sql, arrays, 0, out, errstr, errstr_size);
}

cat_err_t cat_sql_exec_result(PGconn *conn, const char *what, const char *sql, const cat_sql_arrays_t *arrays,
			      int result_format, PGresult **out, char *errstr, size_t errstr_size)
{
	PGresult *res = PQexecParams(conn, sql, (int)arrays->n_columns, NULL, arrays->values, arrays->lengths,
				     arrays->formats, result_format);
	cat_err_t err;

	*out = NULL;
	if (res && (PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK)) {
		*out = res;
		return CAT_OK;
	}
	err = statement_error(conn, res, what, errstr, errstr_size);
	PQclear(res);
	return err;
}

/* --- binary COPY ----------------------------------------------------------------------- */

void cat_sql_copy_begin(cat_sql_buf_t *buf)
{
	static const char header[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0"; /* signature, flags, extension */

	buf->len = 0;
	if (buf_reserve(buf, 19) == 0) {
		memcpy(buf->data, header, 19);
		buf->len = 19;
	}
}

cat_err_t cat_sql_copy_add_row(cat_sql_buf_t *buf, const cat_sql_table_t *st, const ProtobufCMessage *row)
{
	bool is_null;

	if (buf->len < 19 || buf_reserve(buf, 2))
		return CAT_ERR_RETRIABLE;
	buf->data[buf->len++] = (char)(st->table->n_columns >> 8);
	buf->data[buf->len++] = (char)(st->table->n_columns & 0xff);
	for (size_t i = 0; i < st->table->n_columns; i++)
		if (put_value(buf, st->types[i], row, st->fields[i], &is_null))
			return CAT_ERR_RETRIABLE;
	return CAT_OK;
}

cat_err_t cat_sql_copy(PGconn *conn, const cat_sql_table_t *st, cat_sql_buf_t *buf, bool *conflict, char *errstr,
		   size_t errstr_size)
{
	PGresult *res;
	cat_err_t err = CAT_OK;

	*conflict = false;
	if (buf->len < 19 || buf_reserve(buf, 2))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	buf->data[buf->len++] = (char)0xff; /* the trailer: a field count of -1 */
	buf->data[buf->len++] = (char)0xff;

	res = PQexec(conn, st->copy);
	if (!res || PQresultStatus(res) != PGRES_COPY_IN) {
		err = statement_error(conn, res, "COPY", errstr, errstr_size);
		PQclear(res);
		return err;
	}
	PQclear(res);
	/* in pieces, so the server parses while the rest is on its way; a failed
	 * send leaves its reason in the result below */
	for (size_t sent = 0; sent < buf->len;) {
		size_t n = buf->len - sent < COPY_CHUNK_BYTES ? buf->len - sent : COPY_CHUNK_BYTES;

		if (PQputCopyData(conn, buf->data + sent, (int)n) != 1)
			break;
		sent += n;
	}
	PQputCopyEnd(conn, NULL);
	while ((res = PQgetResult(conn))) {
		if (err == CAT_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
			const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			*conflict = sqlstate && strcmp(sqlstate, "23505") == 0;
			err = statement_error(conn, res, "COPY", errstr, errstr_size);
		}
		PQclear(res);
	}
	if (err == CAT_OK && PQstatus(conn) != CONNECTION_OK)
		err = statement_error(conn, NULL, "COPY", errstr, errstr_size);
	if (*conflict) {
		/* a key exists: undo the COPY alone, the caller upserts instead */
		res = PQexec(conn, "ROLLBACK TO SAVEPOINT cat_sql_copy");
		if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
			err = CAT_OK;
		else
			*conflict = false;
		PQclear(res);
	}
	return err;
}

const char *cat_sql_row_pk(const cat_sql_table_t *st, const ProtobufCMessage *row)
{
	const ProtobufCFieldDescriptor *field = st->fields[st->pk_column];
	const char *pk = *FIELD_CPTR(row, field->offset, char *);

	return pk ? pk : "";
}

cat_err_t cat_sql_prune_tombstones(PGconn *conn, int64_t older_than_s, int limit, int64_t *n_pruned,
				   char *errstr, size_t errstr_size)
{
	static const char sql[] =
		"DELETE FROM row_tombstones WHERE ctid = ANY (ARRAY (SELECT ctid FROM row_tombstones "
		"WHERE deleted_at < now() - make_interval(secs => $1::bigint) LIMIT $2::int))";
	char older[32], lim[16];
	const char *params[2] = { older, lim };
	PGresult *res = NULL;
	cat_err_t err;

	*n_pruned = 0;
	snprintf(older, sizeof(older), "%lld", (long long)older_than_s);
	snprintf(lim, sizeof(lim), "%d", limit);
	err = cat_pg_exec(conn, sql, 2, params, &res, errstr, errstr_size);
	if (err != CAT_OK)
		return err;
	*n_pruned = strtoll(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	return CAT_OK;
}

void cat_sql_pruner_init(cat_sql_pruner_t *pruner, const cat_config_t *cfg, cat_metric_t *pruned)
{
	*pruner = (cat_sql_pruner_t){
		.retention_s = cat_config_int(cfg, "CATALYST_TOMBSTONE_RETENTION_S"),
		.interval_us = cat_config_int(cfg, "CATALYST_TOMBSTONE_PRUNE_INTERVAL_S") * 1000000,
		.next_us = 0, /* at the first batch */
		.pruned = pruned,
	};
}

void cat_sql_pruner_run(cat_sql_pruner_t *pruner, PGconn *conn)
{
	int64_t total = 0, n = 0;
	char errstr[512];

	if (pruner->retention_s == 0 || cat_time_mono_us() < pruner->next_us || !conn ||
	    PQstatus(conn) != CONNECTION_OK)
		return;
	pruner->next_us = cat_time_mono_us() + pruner->interval_us;
	do {
		if (cat_sql_prune_tombstones(conn, pruner->retention_s, CAT_SQL_PRUNE_CHUNK, &n, errstr,
					     sizeof(errstr)) != CAT_OK) {
			CAT_LOG_WARN("PG", "could not prune tombstones: %s", errstr);
			break;
		}
		total += n;
		if (pruner->pruned)
			cat_metrics_add(pruner->pruned, n);
	} while (n == CAT_SQL_PRUNE_CHUNK && total < CAT_SQL_PRUNE_MAX);
	if (total > 0)
		CAT_LOG_INFO("PG", "pruned %lld tombstones older than %lld s", (long long)total,
			     (long long)pruner->retention_s);
}

cat_err_t cat_sql_canonical_session(PGconn *conn, char *errstr, size_t errstr_size)
{
	return cat_pg_exec_script(conn, "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1",
				  errstr, errstr_size);
}
