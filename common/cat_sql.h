/*
 * cat_sql: the version-checked statements of the schema's tables (used by
 * catalyst-persist on the primary and catalyst-sync on a replica), built
 * once per table from the compiled-in schema (no table or column name ever
 * comes from a message), and the
 * parameters that carry a batch's values: one PostgreSQL array per column,
 * sent in binary format (the server neither parses text nor unescapes: a
 * value can hold any character), NULL for an absent field; or, for keys the
 * table and its tombstones do not know yet, the rows as binary COPY data.
 *
 *   upsert  INSERT ... SELECT FROM unnest($1::text[], $2::timestamptz[], ...)
 *           skipping keys whose tombstone is at least as new, then
 *           ON CONFLICT DO NOTHING (insert-only tables) or DO UPDATE ... WHERE
 *           the stored version is older; RETURNING the keys it wrote
 *   delete  records the tombstone (highest version wins) and deletes the row
 *           where its version is not newer; RETURNING the keys it deleted
 *   state   for keys an upsert skipped: the stored row's version and the
 *           tombstone's version, either NULL when absent
 *   tombstoned  whether any of the keys $1 has a tombstone
 *   repair  as upsert, for rows read from the primary that a replica must
 *           match: replaces a stored row whose version is not newer (equal
 *           too: the primary's content wins), also in insert-only tables
 *   remove_extra  $1 keys, $2 versions: deletes rows whose version is not
 *           newer, leaving no tombstone (rows a replica holds that the
 *           primary does not); RETURNING the keys it deleted
 *   row_text  the canonical text of a row of alias t: ROW(columns)::text,
 *           the same on every server whose session has TimeZone UTC,
 *           DateStyle ISO and extra_float_digits 1 (cat_sql_canonical_session)
 *   copy    SAVEPOINT, then COPY table (columns) FROM STDIN (FORMAT binary):
 *           when no key has a tombstone, upserts of keys the table does not
 *           hold yet are plain inserts, and COPY does them about twice as
 *           fast as INSERT ... SELECT FROM unnest ... ON CONFLICT; a key the
 *           table holds fails it (unique violation), the savepoint undoes it,
 *           and the upsert runs instead
 */
#ifndef CAT_SQL_H
#define CAT_SQL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <protobuf-c/protobuf-c.h>

#include "cat_config.h"
#include "cat_err.h"
#include "cat_metrics.h"
#include "cat_schema.h"

/* A growable text buffer. */
typedef struct cat_sql_buf {
	char *data;
	size_t len;
	size_t cap;
} cat_sql_buf_t;

typedef struct cat_sql_table {
	const cat_table_t *table;
	const ProtobufCFieldDescriptor **fields; /* the record field of each column */
	cat_col_type_t *types;			 /* and its type */
	size_t pk_column;			 /* index of the primary key in columns */
	size_t version_column;
	char *upsert;	  /* $1..$n_columns, arrays in column order */
	char *remove;	  /* $1 keys, $2 versions */
	char *state;	  /* $1 keys */
	char *tombstoned; /* $1 keys */
	char *copy;
	char *repair;	    /* $1..$n_columns, as upsert */
	char *remove_extra; /* $1 keys, $2 versions */
	char *row_text;	    /* an expression over alias t */
	char *columns;	    /* the column list, comma-separated */
} cat_sql_table_t;

/* Builds the statements of `table`; fatal when the schema and the record
 * message disagree (a programming error). */
cat_err_t cat_sql_table_init(cat_sql_table_t *st, const cat_table_t *table, char *errstr,
			 size_t errstr_size) CAT_MUST_CHECK;
void cat_sql_table_free(cat_sql_table_t *st);

/* One binary array per column, filled row by row. */
typedef struct cat_sql_arrays {
	cat_sql_buf_t *columns;
	cat_col_type_t *types;
	size_t *n_elements;
	bool *has_null;
	const char **values; /* PQexecParams arguments, set by cat_sql_arrays_finish() */
	int *lengths;
	int *formats;
	size_t n_columns;
	size_t cap_columns;
} cat_sql_arrays_t;

/* Starts empty arrays of the given element types (memory is kept between
 * uses). */
cat_err_t cat_sql_arrays_begin(cat_sql_arrays_t *arrays, size_t n_columns,
			   const cat_col_type_t *types) CAT_MUST_CHECK;

/* Appends every column of `row` (a record message of st's table; the arrays
 * begun with its column types). */
cat_err_t cat_sql_arrays_add_row(cat_sql_arrays_t *arrays, const cat_sql_table_t *st,
			     const ProtobufCMessage *row) CAT_MUST_CHECK;

/* Appends one value to a text column (NULL: SQL NULL) or a bigint column. */
cat_err_t cat_sql_arrays_add_text(cat_sql_arrays_t *arrays, size_t column, const char *text) CAT_MUST_CHECK;
cat_err_t cat_sql_arrays_add_int64(cat_sql_arrays_t *arrays, size_t column, int64_t value) CAT_MUST_CHECK;

/* Appends one value in its binary (send/recv) form, e.g. a column of a
 * result fetched in binary format; NULL data: SQL NULL. */
cat_err_t cat_sql_arrays_add_binary(cat_sql_arrays_t *arrays, size_t column, const void *data,
				    size_t len) CAT_MUST_CHECK;

/* Completes the arrays' headers; values/lengths/formats hold the
 * parameters until the next cat_sql_arrays_begin(). */
void cat_sql_arrays_finish(cat_sql_arrays_t *arrays);

/* Frees the columns' buffers larger than keep_bytes. */
void cat_sql_arrays_shrink(cat_sql_arrays_t *arrays, size_t keep_bytes);

void cat_sql_arrays_free(cat_sql_arrays_t *arrays);

/* Runs `sql` with the finished arrays as its parameters $1..$n. Errors are
 * classed as cat_pg_exec's and read "could not execute <what>: <message>
 * (SQLSTATE xxxxx)". */
cat_err_t cat_sql_exec(PGconn *conn, const char *what, const char *sql, const cat_sql_arrays_t *arrays,
		   PGresult **out, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* As cat_sql_exec, with the result in binary format (result_format 1) or
 * text (0). */
cat_err_t cat_sql_exec_result(PGconn *conn, const char *what, const char *sql, const cat_sql_arrays_t *arrays,
			      int result_format, PGresult **out, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Binary COPY data in buf (memory is kept between uses): begin, one call
 * per row of st's table, then cat_sql_copy() sends it and runs the COPY inside a
 * savepoint (in a transaction). A unique violation rolls back to the
 * savepoint and returns CAT_OK with *conflict set: nothing was inserted.
 * Other errors are classed as cat_pg_exec's. */
void cat_sql_copy_begin(cat_sql_buf_t *buf);
cat_err_t cat_sql_copy_add_row(cat_sql_buf_t *buf, const cat_sql_table_t *st, const ProtobufCMessage *row) CAT_MUST_CHECK;
cat_err_t cat_sql_copy(PGconn *conn, const cat_sql_table_t *st, cat_sql_buf_t *buf, bool *conflict, char *errstr,
		   size_t errstr_size) CAT_MUST_CHECK;

/* Tombstone retention, spliced into the config table of a worker that
 * writes with these statements. */
#define CAT_CONFIG_TOMBSTONES                                                                          \
	{ .name = "CATALYST_TOMBSTONE_RETENTION_S", .type = CAT_CFG_INT, .def = "604800",           \
	  .max = 315360000,                                                                         \
	  .help = "how long a delete's tombstone is kept, blocking older upserts that arrive after the " \
	          "delete (0: forever)" },                                                          \
	{ .name = "CATALYST_TOMBSTONE_PRUNE_INTERVAL_S", .type = CAT_CFG_INT, .def = "600", .min = 1, \
	  .max = 86400, .help = "how often tombstones older than the retention are pruned" }

/* Deletes up to `limit` tombstones (row_tombstones) recorded more than
 * older_than_s seconds ago, in one statement (autocommit: call it outside a
 * transaction); *n_pruned says how many. An upsert older than a pruned
 * delete could bring its row back, so the retention must outlast any
 * plausible delay of a write. */
cat_err_t cat_sql_prune_tombstones(PGconn *conn, int64_t older_than_s, int limit, int64_t *n_pruned,
				   char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Tombstone pruning on a schedule, for a worker that writes with these
 * statements (CAT_CONFIG_TOMBSTONES): cat_sql_pruner_run() between batches,
 * outside a transaction, prunes at its first call and then every
 * CATALYST_TOMBSTONE_PRUNE_INTERVAL_S, in statements of CAT_SQL_PRUNE_CHUNK
 * tombstones, at most CAT_SQL_PRUNE_MAX a time (the batches wait meanwhile).
 * A failure is logged and waits for the next interval (the batch that
 * follows finds out whether the connection is broken). */
#define CAT_SQL_PRUNE_CHUNK 5000
#define CAT_SQL_PRUNE_MAX   100000

typedef struct cat_sql_pruner {
	int64_t retention_s; /* 0: never */
	int64_t interval_us;
	int64_t next_us;      /* monotonic; 0: at the next call */
	cat_metric_t *pruned; /* counter of tombstones pruned; may be NULL */
} cat_sql_pruner_t;

void cat_sql_pruner_init(cat_sql_pruner_t *pruner, const cat_config_t *cfg, cat_metric_t *pruned);
void cat_sql_pruner_run(cat_sql_pruner_t *pruner, PGconn *conn);

/* Sets the session settings row_text depends on (TimeZone, DateStyle,
 * extra_float_digits). */
cat_err_t cat_sql_canonical_session(PGconn *conn, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* The text of the primary key of `row` ("" when absent). */
const char *cat_sql_row_pk(const cat_sql_table_t *st, const ProtobufCMessage *row);

#endif /* CAT_SQL_H */
