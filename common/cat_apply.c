#include "cat_apply.h"

#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_schema.h"

#define MAX_TABLES	   8
#define COPY_BACKOFF_MIN   8	/* sets of a table upserted before COPY is tried again, */
#define COPY_BACKOFF_MAX   1024 /* doubling at each conflict (each one an ERROR in the server log) */
#define SCRATCH_KEEP_ROWS  512	/* per-set memory kept between sets */
#define SCRATCH_KEEP_BYTES (64 * 1024)

/* A key of the set and its writes (indices into writes). */
typedef struct apply_key {
	const char *pk;
	uint32_t hash;
	uint16_t table;
	int32_t first;
	int32_t last;
} apply_key_t;

struct cat_apply {
	cat_sql_table_t sql[MAX_TABLES];
	size_t n_tables;

	cat_apply_write_t *writes;
	apply_key_t *keys;
	size_t n_writes, n_keys, cap, limit;
	int32_t *slots; /* open addressing: index into keys, -1 free */
	size_t n_slots;
	cat_apply_write_t **sorted; /* the live writes */
	size_t n_sorted;

	cat_sql_arrays_t arrays;
	cat_sql_buf_t copy;
	unsigned copy_backoff[MAX_TABLES];
	unsigned copy_backoff_next[MAX_TABLES];
	bool read_skipped;
};

cat_err_t cat_apply_new(cat_apply_t **out, char *errstr, size_t errstr_size)
{
	cat_apply_t *apply = calloc(1, sizeof(*apply));
	cat_err_t err;

	*out = NULL;
	if (!apply)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if (cat_schema_n_tables > MAX_TABLES) {
		free(apply);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the schema has more than %d tables",
				   MAX_TABLES);
	}
	apply->n_tables = cat_schema_n_tables;
	for (size_t t = 0; t < apply->n_tables; t++) {
		apply->copy_backoff_next[t] = COPY_BACKOFF_MIN;
		if ((err = cat_sql_table_init(&apply->sql[t], &cat_schema_tables[t], errstr, errstr_size)) !=
		    CAT_OK) {
			cat_apply_destroy(apply);
			return err;
		}
	}
	*out = apply;
	return CAT_OK;
}

void cat_apply_destroy(cat_apply_t *apply)
{
	if (!apply)
		return;
	for (size_t t = 0; t < MAX_TABLES; t++)
		cat_sql_table_free(&apply->sql[t]);
	cat_sql_arrays_free(&apply->arrays);
	free(apply->copy.data);
	free(apply->writes);
	free(apply->keys);
	free(apply->slots);
	free(apply->sorted);
	free(apply);
}

const cat_sql_table_t *cat_apply_sql(const cat_apply_t *apply, size_t t)
{
	return t < apply->n_tables ? &apply->sql[t] : NULL;
}

void cat_apply_read_skipped(cat_apply_t *apply, bool on)
{
	apply->read_skipped = on;
}

size_t cat_apply_n(const cat_apply_t *apply)
{
	return apply->n_sorted;
}

const cat_apply_write_t *cat_apply_write(const cat_apply_t *apply, size_t i)
{
	return i < apply->n_sorted ? apply->sorted[i] : NULL;
}

void cat_apply_release(cat_apply_t *apply)
{
	if (apply->cap > SCRATCH_KEEP_ROWS) {
		free(apply->writes);
		free(apply->keys);
		free(apply->sorted);
		free(apply->slots);
		apply->writes = NULL;
		apply->keys = NULL;
		apply->sorted = NULL;
		apply->slots = NULL;
		apply->cap = apply->n_slots = 0;
		apply->n_writes = apply->n_keys = apply->n_sorted = apply->limit = 0;
	}
	if (apply->copy.cap > SCRATCH_KEEP_BYTES) {
		free(apply->copy.data);
		apply->copy = (cat_sql_buf_t){0};
	}
	cat_sql_arrays_shrink(&apply->arrays, SCRATCH_KEEP_BYTES);
}

cat_err_t cat_apply_begin(cat_apply_t *apply, size_t n, char *errstr, size_t errstr_size)
{
	size_t n_slots = 16;

	while (n_slots < 2 * n)
		n_slots *= 2;
	if (n > apply->cap) {
		cat_apply_write_t *writes = realloc(apply->writes, n * sizeof(*writes));
		apply_key_t *keys = writes ? realloc(apply->keys, n * sizeof(*keys)) : NULL;
		cat_apply_write_t **sorted = keys ? realloc(apply->sorted, n * sizeof(*sorted)) : NULL;

		if (writes)
			apply->writes = writes;
		if (keys)
			apply->keys = keys;
		if (!sorted)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		apply->sorted = sorted;
		apply->cap = n;
	}
	if (n_slots > apply->n_slots) {
		int32_t *slots = realloc(apply->slots, n_slots * sizeof(*slots));

		if (!slots)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		apply->slots = slots;
		apply->n_slots = n_slots;
	}
	memset(apply->slots, 0xff, apply->n_slots * sizeof(*apply->slots));
	apply->n_writes = apply->n_keys = apply->n_sorted = 0;
	apply->limit = n;
	return CAT_OK;
}

/* --- resolving --------------------------------------------------------------------------- */

static uint32_t key_hash(size_t table, const char *pk)
{
	uint32_t h = 2166136261u ^ (uint32_t)table; /* FNV-1a */

	for (const unsigned char *c = (const unsigned char *)pk; *c; c++)
		h = (h ^ *c) * 16777619u;
	return h;
}

/* The key (table, pk) of the set; NULL, with its free slot, when new. */
static apply_key_t *key_find(cat_apply_t *apply, size_t table, const char *pk, uint32_t hash,
			     size_t *slot_out)
{
	size_t mask = apply->n_slots - 1;
	size_t slot = hash & mask;

	for (; apply->slots[slot] >= 0; slot = (slot + 1) & mask) {
		apply_key_t *key = &apply->keys[apply->slots[slot]];

		if (key->hash == hash && key->table == table && strcmp(key->pk, pk) == 0)
			return key;
	}
	if (slot_out)
		*slot_out = slot;
	return NULL;
}

static void key_append(cat_apply_t *apply, apply_key_t *key, size_t source, const ProtobufCMessage *row,
		       int64_t version, bool is_delete)
{
	int32_t index = (int32_t)apply->n_writes++;

	apply->writes[index] = (cat_apply_write_t){.source = source,
						   .pk = key->pk,
						   .row = row,
						   .version = version,
						   .prev = key->last,
						   .next = -1,
						   .table = key->table,
						   .is_delete = is_delete,
						   .live = true};
	if (key->last >= 0) {
		apply->writes[index].round = (uint16_t)(apply->writes[key->last].round + 1);
		apply->writes[key->last].next = index;
	} else {
		key->first = index;
	}
	key->last = index;
}

/* Folds a write into its key's writes (see the top of cat_apply.h). */
static void key_fold(cat_apply_t *apply, apply_key_t *key, size_t source, const ProtobufCMessage *row,
		     int64_t version, bool is_delete)
{
	if (!cat_schema_tables[key->table].insert_only) {
		cat_apply_write_t *current = key->first >= 0 ? &apply->writes[key->first] : NULL;

		if (!current) {
			key_append(apply, key, source, row, version, is_delete);
		} else if (version > current->version ||
			   (version == current->version && is_delete && !current->is_delete)) {
			current->source = source;
			current->row = row;
			current->version = version;
			current->is_delete = is_delete;
		}
		return;
	}
	key_append(apply, key, source, row, version, is_delete);
	while (apply->writes[key->last].prev >= 0) {
		cat_apply_write_t *b = &apply->writes[key->last], *a = &apply->writes[b->prev];

		if (a->is_delete == b->is_delete
			    ? (a->is_delete ? false : b->version > a->version)
			    : (a->is_delete ? b->version > a->version : b->version < a->version))
			break;
		/* b is moot, or supersedes a (a newer delete) */
		if (b->is_delete && (!a->is_delete || b->version > a->version)) {
			a->source = b->source;
			a->row = b->row;
			a->version = b->version;
			a->is_delete = true;
		}
		b->live = false;
		a->next = -1;
		key->last = b->prev;
	}
}

cat_err_t cat_apply_add(cat_apply_t *apply, size_t source, const Catalyst__V1__Record *record, bool is_delete)
{
	const cat_table_t *table = cat_codec_record_table(record);
	const ProtobufCMessage *row = cat_codec_record_row(record);
	size_t t, slot = 0;
	const char *pk;
	uint32_t hash;
	apply_key_t *key;

	if (!table || !row || apply->n_writes >= apply->limit)
		return CAT_ERR_FATAL;
	t = (size_t)(table - cat_schema_tables);
	pk = cat_sql_row_pk(&apply->sql[t], row);
	hash = key_hash(t, pk);
	key = key_find(apply, t, pk, hash, &slot);
	if (!key) {
		key = &apply->keys[apply->n_keys];
		apply->slots[slot] = (int32_t)apply->n_keys++;
		*key = (apply_key_t){.pk = pk, .hash = hash, .table = (uint16_t)t, .first = -1, .last = -1};
	}
	key_fold(apply, key, source, row, cat_codec_record_version(record), is_delete);
	return CAT_OK;
}

static int write_cmp(const void *a, const void *b)
{
	const cat_apply_write_t *x = *(cat_apply_write_t *const *)a, *y = *(cat_apply_write_t *const *)b;

	if (x->table != y->table)
		return x->table < y->table ? -1 : 1;
	if (x->round != y->round)
		return x->round < y->round ? -1 : 1;
	if (x->is_delete != y->is_delete)
		return x->is_delete ? -1 : 1; /* deletes first */
	return strcmp(x->pk, y->pk);
}

void cat_apply_resolve(cat_apply_t *apply)
{
	apply->n_sorted = 0;
	for (size_t w = 0; w < apply->n_writes; w++)
		if (apply->writes[w].live)
			apply->sorted[apply->n_sorted++] = &apply->writes[w];
	qsort(apply->sorted, apply->n_sorted, sizeof(*apply->sorted), write_cmp);
}

/* --- the statements ---------------------------------------------------------------------- */

static cat_apply_write_t *write_find(cat_apply_t *apply, size_t table, const char *pk, unsigned round,
				     bool is_delete)
{
	apply_key_t *key = key_find(apply, table, pk, key_hash(table, pk), NULL);

	for (int32_t i = key ? key->first : -1; i >= 0; i = apply->writes[i].next)
		if (apply->writes[i].round == round && apply->writes[i].is_delete == is_delete)
			return &apply->writes[i];
	return NULL;
}

/* Marks the writes whose keys `res` returns (column 0) as applied. */
static void mark_applied(cat_apply_t *apply, size_t table, unsigned round, bool is_delete,
			 const PGresult *res)
{
	for (int r = 0; r < PQntuples(res); r++) {
		cat_apply_write_t *write = write_find(apply, table, PQgetvalue(res, r, 0), round, is_delete);

		if (write)
			write->applied = true;
	}
}

static cat_err_t read_skipped(cat_apply_t *apply, PGconn *conn, size_t t, size_t from, size_t to,
			      char *errstr, size_t errstr_size);

static cat_err_t run_deletes(cat_apply_t *apply, PGconn *conn, size_t t, size_t from, size_t to, char *errstr,
			     size_t errstr_size)
{
	static const cat_col_type_t types[] = {CAT_COL_TEXT, CAT_COL_INT64};
	PGresult *res = NULL;
	size_t n_applied;
	cat_err_t err;

	if ((err = cat_sql_arrays_begin(&apply->arrays, 2, types)) != CAT_OK)
		return cat_err_set(errstr, errstr_size, err, "out of memory");
	for (size_t i = from; i < to; i++)
		if ((err = cat_sql_arrays_add_text(&apply->arrays, 0, apply->sorted[i]->pk)) != CAT_OK ||
		    (err = cat_sql_arrays_add_int64(&apply->arrays, 1, apply->sorted[i]->version)) != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "out of memory");
	cat_sql_arrays_finish(&apply->arrays);
	err = cat_sql_exec(conn, "DELETE", apply->sql[t].remove, &apply->arrays, &res, errstr, errstr_size);
	if (err != CAT_OK)
		return err;
	mark_applied(apply, t, apply->sorted[from]->round, true, res);
	n_applied = (size_t)PQntuples(res);
	PQclear(res);
	if (apply->read_skipped && n_applied < to - from)
		return read_skipped(apply, conn, t, from, to, errstr, errstr_size);
	return CAT_OK;
}

/* The keys of sorted[from, to) (only_skipped: of the writes not applied) as
 * the one parameter $1. */
static cat_err_t keys_param(cat_apply_t *apply, size_t from, size_t to, bool only_skipped, char *errstr,
			    size_t errstr_size)
{
	static const cat_col_type_t types[] = {CAT_COL_TEXT};
	cat_err_t err;

	if ((err = cat_sql_arrays_begin(&apply->arrays, 1, types)) != CAT_OK)
		return cat_err_set(errstr, errstr_size, err, "out of memory");
	for (size_t i = from; i < to; i++)
		if (!(only_skipped && apply->sorted[i]->applied) &&
		    (err = cat_sql_arrays_add_text(&apply->arrays, 0, apply->sorted[i]->pk)) != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "out of memory");
	cat_sql_arrays_finish(&apply->arrays);
	return CAT_OK;
}

/* For the writes of sorted[from, to) the statement skipped (all upserts or
 * all deletes): what the table holds instead. */
static cat_err_t read_skipped(cat_apply_t *apply, PGconn *conn, size_t t, size_t from, size_t to,
			      char *errstr, size_t errstr_size)
{
	bool is_delete = apply->sorted[from]->is_delete;

	PGresult *res = NULL;
	cat_err_t err;

	if ((err = keys_param(apply, from, to, true, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_sql_exec(conn, "SELECT", apply->sql[t].state, &apply->arrays, &res, errstr,
				errstr_size)) != CAT_OK)
		return err;
	for (int r = 0; r < PQntuples(res); r++) {
		cat_apply_write_t *write =
			write_find(apply, t, PQgetvalue(res, r, 0), apply->sorted[from]->round, is_delete);

		if (!write)
			continue;
		write->has_state = true;
		write->stored = PQgetisnull(res, r, 1) ? -1 : strtoll(PQgetvalue(res, r, 1), NULL, 10);
		write->tombstone = PQgetisnull(res, r, 2) ? -1 : strtoll(PQgetvalue(res, r, 2), NULL, 10);
	}
	PQclear(res);
	return CAT_OK;
}

static cat_err_t any_tombstoned(cat_apply_t *apply, PGconn *conn, size_t t, size_t from, size_t to,
				bool *tombstoned, char *errstr, size_t errstr_size)
{
	PGresult *res = NULL;
	cat_err_t err;

	if ((err = keys_param(apply, from, to, false, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_sql_exec(conn, "SELECT", apply->sql[t].tombstoned, &apply->arrays, &res, errstr,
				errstr_size)) != CAT_OK)
		return err;
	*tombstoned = PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "f") != 0;
	PQclear(res);
	return CAT_OK;
}

static cat_err_t run_copy(cat_apply_t *apply, PGconn *conn, size_t t, size_t from, size_t to, bool *conflict,
			  char *errstr, size_t errstr_size)
{
	const cat_sql_table_t *st = &apply->sql[t];
	cat_err_t err;

	cat_sql_copy_begin(&apply->copy);
	for (size_t i = from; i < to; i++)
		if ((err = cat_sql_copy_add_row(&apply->copy, st, apply->sorted[i]->row)) != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "out of memory");
	err = cat_sql_copy(conn, st, &apply->copy, conflict, errstr, errstr_size);
	if (err != CAT_OK || *conflict)
		return err;
	for (size_t i = from; i < to; i++)
		apply->sorted[i]->applied = true;
	return CAT_OK;
}

static cat_err_t run_upserts(cat_apply_t *apply, PGconn *conn, size_t t, size_t from, size_t to, char *errstr,
			     size_t errstr_size)
{
	const cat_sql_table_t *st = &apply->sql[t];
	PGresult *res = NULL;
	size_t n_applied;
	bool tombstoned = true, conflict = false;
	cat_err_t err;

	if (to - from < CAT_APPLY_COPY_MIN_ROWS) {
		/* small: the upsert below */
	} else if (apply->copy_backoff[t] > 0) {
		apply->copy_backoff[t]--;
	} else {
		if ((err = any_tombstoned(apply, conn, t, from, to, &tombstoned, errstr, errstr_size)) !=
		    CAT_OK)
			return err;
		if (!tombstoned) {
			err = run_copy(apply, conn, t, from, to, &conflict, errstr, errstr_size);
			if (err == CAT_OK && !conflict)
				apply->copy_backoff_next[t] = COPY_BACKOFF_MIN;
			if (err != CAT_OK || !conflict)
				return err;
			/* a table that gets updates rather than new keys: COPY ever rarer */
			apply->copy_backoff[t] = apply->copy_backoff_next[t];
			if (apply->copy_backoff_next[t] < COPY_BACKOFF_MAX)
				apply->copy_backoff_next[t] *= 2;
		}
	}

	if ((err = cat_sql_arrays_begin(&apply->arrays, st->table->n_columns, st->types)) != CAT_OK)
		return cat_err_set(errstr, errstr_size, err, "out of memory");
	for (size_t i = from; i < to; i++)
		if ((err = cat_sql_arrays_add_row(&apply->arrays, st, apply->sorted[i]->row)) != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "out of memory");
	cat_sql_arrays_finish(&apply->arrays);
	err = cat_sql_exec(conn, "INSERT", st->upsert, &apply->arrays, &res, errstr, errstr_size);
	if (err != CAT_OK)
		return err;
	mark_applied(apply, t, apply->sorted[from]->round, false, res);
	n_applied = (size_t)PQntuples(res);
	PQclear(res);
	if (apply->read_skipped && n_applied < to - from)
		return read_skipped(apply, conn, t, from, to, errstr, errstr_size);
	return CAT_OK;
}

cat_err_t cat_apply_run(cat_apply_t *apply, PGconn *conn, char *errstr, size_t errstr_size)
{
	size_t i = 0;

	for (size_t w = 0; w < apply->n_sorted; w++) {
		apply->sorted[w]->applied = false;
		apply->sorted[w]->has_state = false;
		apply->sorted[w]->stored = apply->sorted[w]->tombstone = -1;
	}
	while (i < apply->n_sorted) {
		const cat_apply_write_t *first = apply->sorted[i];
		size_t end = i;
		cat_err_t err;

		while (end < apply->n_sorted && apply->sorted[end]->table == first->table &&
		       apply->sorted[end]->round == first->round &&
		       apply->sorted[end]->is_delete == first->is_delete)
			end++;
		err = first->is_delete ? run_deletes(apply, conn, first->table, i, end, errstr, errstr_size)
				       : run_upserts(apply, conn, first->table, i, end, errstr, errstr_size);
		if (err != CAT_OK)
			return err;
		i = end;
	}
	return CAT_OK;
}
