/*
 * cat_apply: a set of record writes (upserts and version-checked deletes)
 * resolved per key and applied with the cat_sql statements inside the
 * caller's transaction, so that the set leaves every row as applying its
 * writes one at a time, in order, would:
 *
 *  - per key of a versioned table one write stays: the highest version (an
 *    upsert and a delete of the same version: the delete; equal upserts:
 *    the first)
 *  - per key of an insert-only table (news_raw: the first insert stays) the
 *    writes stay in order, merged where one makes the other moot (two
 *    deletes: the newer; an upsert after an upsert not newer than it; a
 *    delete after an upsert it covers; an upsert after a delete that covers
 *    it); what remains alternates and runs in rounds (delete, insert, ...)
 *  - per table and round: the deletes (a row not newer than the delete goes,
 *    the tombstone keeps the highest delete version), then the upserts:
 *    set-based (unnest of binary arrays, skipping keys whose tombstone is as
 *    new or newer, news_raw DO NOTHING, the others replacing only an older
 *    version) or, for COPY_MIN_ROWS upserts or more whose keys have no
 *    tombstone, a binary COPY in a savepoint, which a key the table already
 *    holds undoes (the upsert runs then, and COPY rests for that table's
 *    next 8 sets, doubling at each conflict up to 1024)
 *  - rows are sorted by key, so that concurrent writers lock in one order
 *
 * Used by catalyst-persist on the primary and catalyst-sync on a replica.
 *
 *   cat_apply_begin(apply, n);                     at most n writes follow
 *   cat_apply_add(apply, source, record, is_delete) ...
 *   cat_apply_resolve(apply);
 *   BEGIN; cat_apply_run(apply, conn, ...); COMMIT;
 *   for each cat_apply_write(apply, i): ->source, ->applied (and ->stored,
 *   ->tombstone with cat_apply_read_skipped())
 *
 * Records are borrowed: they must outlive the set (until the next begin).
 */
#ifndef CAT_APPLY_H
#define CAT_APPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "catalyst/v1/records.pb-c.h"
#include "cat_err.h"
#include "cat_sql.h"

/* Upserts of one table and round that try COPY first. */
#define CAT_APPLY_COPY_MIN_ROWS 64

/* One write of the resolved set. */
typedef struct cat_apply_write {
	size_t source;		     /* the caller's index (e.g. the message of a batch) */
	const char *pk;		     /* borrowed from the record */
	const ProtobufCMessage *row; /* the record's row message, borrowed */
	int64_t version;
	int32_t prev; /* the key's writes, in order (-1: none) */
	int32_t next;
	uint16_t table; /* index in cat_schema_tables */
	uint16_t round; /* its place among the key's writes */
	bool is_delete;
	bool live;    /* part of the resolved set */
	bool applied; /* the statement changed the database */
	/* cat_apply_read_skipped(): for a write its statement skipped (an upsert
	 * not applied, or a delete that removed no row), what the table held
	 * right after that statement (has_state false: not read) */
	bool has_state;
	int64_t stored;	   /* the stored row's version (-1: no row) */
	int64_t tombstone; /* the key's tombstone's version (-1: none) */
} cat_apply_write_t;

typedef struct cat_apply cat_apply_t;

/* Builds the statements of every table of the schema. */
cat_err_t cat_apply_new(cat_apply_t **out, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
void cat_apply_destroy(cat_apply_t *apply);

/* With `on`, cat_apply_run() reads, right after each upsert or delete
 * statement that skipped some of its writes, what the table holds for their keys (the
 * `state` statement: ->has_state, ->stored, ->tombstone), e.g. to decide
 * what to publish for them. Off by default. */
void cat_apply_read_skipped(cat_apply_t *apply, bool on);

/* Starts an empty set of at most n writes (memory kept between sets). */
cat_err_t cat_apply_begin(cat_apply_t *apply, size_t n, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Adds a write of a validated record (cat_codec_record_validate); CAT_ERR_FATAL
 * past the n of begin or for a record without a table. */
cat_err_t cat_apply_add(cat_apply_t *apply, size_t source, const Catalyst__V1__Record *record,
			bool is_delete) CAT_MUST_CHECK;

/* Folds the writes per key and sorts what stays by table, round, deletes
 * first, key. */
void cat_apply_resolve(cat_apply_t *apply);

/* Runs the resolved set's statements on `conn`, inside a transaction the
 * caller opened (COPY uses a savepoint), marking each write applied or not.
 * Errors are classed as cat_pg_exec's; the caller rolls back. */
cat_err_t cat_apply_run(cat_apply_t *apply, PGconn *conn, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* The resolved writes, in statement order. */
size_t cat_apply_n(const cat_apply_t *apply);
const cat_apply_write_t *cat_apply_write(const cat_apply_t *apply, size_t i);

/* The statements of table index t (for callers running their own). */
const cat_sql_table_t *cat_apply_sql(const cat_apply_t *apply, size_t t);

/* Frees scratch memory of a large set, so that an idle worker stays small. */
void cat_apply_release(cat_apply_t *apply);

#endif /* CAT_APPLY_H */
