/*
 * cat_pg: PostgreSQL connections and statements over libpq.
 *
 * Values always travel as parameters (PQexecParams), never inside SQL text.
 * Every failure is classed for the caller: a broken connection, a timeout or
 * a serialization failure is retriable; SQLSTATE 22/23 is permanent (that
 * row); auth, missing objects, syntax are fatal (see cat_err_class_sqlstate).
 * Error strings read `could not execute INSERT: duplicate key value violates
 * unique constraint "news_raw_pkey" (SQLSTATE 23505)` and never contain the
 * connection URL or its password.
 *
 * Server notices and warnings go to cat_log (fac "PG"), not to stderr.
 */
#ifndef CAT_PG_H
#define CAT_PG_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "cat_err.h"

/* Connects to `url` (libpq conninfo or URI; TLS settings such as sslmode,
 * sslrootcert pass through as written). `app_name` becomes application_name
 * unless the URL sets one; `timeout_s` is connect_timeout (it overrides the
 * URL's). On failure *out is NULL: auth, TLS, unknown database or role are
 * fatal, everything else (refused, timeout, server starting up) retriable. */
cat_err_t cat_pg_connect(PGconn **out, const char *url, const char *app_name, int timeout_s, char *errstr,
			 size_t errstr_size) CAT_MUST_CHECK;

/* PQfinish; accepts NULL. */
void cat_pg_close(PGconn *conn);

/* Runs one statement with text parameters ($1..$n; a NULL entry is SQL
 * NULL). On success, *out (when out is not NULL) holds the result, which the
 * caller frees with PQclear; on failure *out is NULL and errstr reads
 * "could not execute <FIRST WORD>: <primary message> (SQLSTATE xxxxx)". */
cat_err_t cat_pg_exec(PGconn *conn, const char *sql, int nparams, const char *const *params, PGresult **out,
		      char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Runs a script of one or more statements with the simple query protocol
 * (PQexec), without parameters: for trusted files such as migrations. Outside
 * an explicit transaction, PostgreSQL runs a multi-statement script as one
 * implicit transaction. On failure errstr names the script's line where the
 * server located the error, when it did. */
cat_err_t cat_pg_exec_script(PGconn *conn, const char *sql, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

cat_err_t cat_pg_begin(PGconn *conn, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_pg_commit(PGconn *conn, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* For error paths: the result may be ignored (errstr may be NULL). */
cat_err_t cat_pg_rollback(PGconn *conn, char *errstr, size_t errstr_size);

/* Class of a failed statement: retriable when the connection is broken or
 * there is no result, else by the result's SQLSTATE. */
cat_err_t cat_pg_error_class(const PGconn *conn, const PGresult *res);

/* Class of a failed connection attempt from libpq's message (libpq gives no
 * SQLSTATE for these): fatal for authentication, pg_hba, unknown database
 * or role, TLS and option errors; retriable otherwise. */
cat_err_t cat_pg_connect_error_class(const char *message);

/* Refuses to run against a schema older than `version`: fatal, with
 * "schema version 1 is applied, this worker needs 2: run catalyst-migrate up"
 * (or that no migration was ever applied). */
cat_err_t cat_pg_require_schema(PGconn *conn, int version, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Splits a SQL script into statements, for statements that may not run in a
 * multi-statement string (CREATE INDEX CONCURRENTLY, VACUUM). Statements end
 * at ';' outside quotes ('...', E'...', "..."), dollar quotes ($tag$...$tag$)
 * and comments (--, nested block comments). Iterate from *pos = 0: each call
 * sets [*start, *start + *len) to the next statement without its ';' and
 * with surrounding whitespace trimmed, and returns false at the end.
 * Pieces holding only whitespace and comments are skipped. */
bool cat_pg_script_next(const char *sql, size_t *pos, size_t *start, size_t *len);

#endif /* CAT_PG_H */
