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

#include "cat_config.h"
#include "cat_err.h"
#include "cat_metrics.h"

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

/* The one formatter of a failed result (res may be NULL: no result, the
 * connection lost): fills errstr with "could not <what>: <primary message>
 * (SQLSTATE xxxxx)", the message on one line (libpq's connection message
 * when the result has none), and returns cat_pg_error_class(). */
cat_err_t cat_pg_result_error(const PGconn *conn, const PGresult *res, const char *what, char *errstr,
			      size_t errstr_size);

/* Class of a failed connection attempt from libpq's message (libpq gives no
 * SQLSTATE for these): fatal for authentication, pg_hba, unknown database
 * or role, TLS and option errors; retriable otherwise. */
cat_err_t cat_pg_connect_error_class(const char *message);

/* Refuses to run against a schema older than `version`: fatal, with
 * "schema version 1 is applied, this worker needs 2: run catalyst-migrate up"
 * (or that no migration was ever applied). */
cat_err_t cat_pg_require_schema(PGconn *conn, int version, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/*
 * A session: one connection to one database that a worker keeps, made again
 * when it is lost. Every worker's PostgreSQL connection goes through here:
 *
 *   cat_pg_session_opts_t opts = { .url = url, .app_name = "catalyst-persist",
 *           .what = "primary", .connect_timeout_s = 10, .schema_version = CAT_SCHEMA_VERSION,
 *           .reconnects = metric };
 *   cat_pg_session_new(&session, &opts, errstr, sizeof(errstr));
 *   ...
 *   if ((err = cat_pg_session_ensure(session, &conn, errstr, sizeof(errstr))) != CAT_OK)
 *           return err;                        // retriable: unreachable; fatal: credentials, schema
 *   if (... a statement on conn fails ...)
 *           cat_pg_session_failed(session);     // rolled back, or dropped when broken
 *
 * A connection is checked once when made: the schema holds at least
 * `schema_version` migrations (0: not checked), then `on_connect` runs (a
 * session setting, say; its error refuses the connection). Once the
 * connection is the session's, `on_connected` (when set) is told of it, with
 * `opaque`: for what a worker reads from the database on each new connection
 * (gauges seeded from a table, say); it cannot refuse the connection.
 * Errors read "<what>: could not connect to PostgreSQL: ..." and never hold
 * the URL. A session is used by one thread at a time; cat_pg_session_ping()
 * may be called from any thread.
 */
typedef struct cat_pg_session cat_pg_session_t;

typedef struct cat_pg_session_opts {
	const char *url;	     /* conninfo or URI; copied, wiped when freed */
	const char *app_name;	     /* application_name unless the URL sets one */
	const char *what;	     /* "primary", "replica": names the side in errors and logs */
	int connect_timeout_s;	     /* connect_timeout (default 10) */
	int schema_version;	     /* the least migration applied, 0: no check */
	cat_err_t (*on_connect)(PGconn *conn, char *errstr, size_t errstr_size); /* or NULL */
	void (*on_connected)(PGconn *conn, void *opaque); /* or NULL */
	void *opaque;		     /* passed to on_connected */
	cat_metric_t *reconnects;    /* counted each time a lost connection is made again, or NULL */
} cat_pg_session_opts_t;

/* The options of a session on the primary from the CAT_CONFIG_PG settings of
 * cfg: url CATALYST_PG_URL (borrowed), connect_timeout_s
 * CATALYST_PG_CONNECT_TIMEOUT_S, what "primary", app_name; the other fields
 * zero, for the caller to set. */
void cat_pg_session_opts_from_config(cat_pg_session_opts_t *opts, const cat_config_t *cfg, const char *app_name);

cat_err_t cat_pg_session_new(cat_pg_session_t **out, const cat_pg_session_opts_t *opts, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;

/* Closes the connection and wipes the URL; accepts NULL. */
void cat_pg_session_free(cat_pg_session_t *session);

/* A working connection in *conn: the current one, or a new one (logged
 * "connected to the <what>"). On failure *conn is NULL: retriable when the
 * server is unreachable, fatal for credentials, a missing database or an
 * older schema. */
cat_err_t cat_pg_session_ensure(cat_pg_session_t *session, PGconn **conn, char *errstr,
				size_t errstr_size) CAT_MUST_CHECK;

/* The current connection, or NULL (none made yet, or dropped). */
PGconn *cat_pg_session_conn(const cat_pg_session_t *session);

/* After a failed statement: an open transaction is rolled back; a broken
 * connection (or one whose rollback fails) is closed, for the next
 * cat_pg_session_ensure() to make again. */
void cat_pg_session_failed(cat_pg_session_t *session);

/* Closes the connection (the next ensure makes a new one, not counted as a
 * reconnect). */
void cat_pg_session_close(cat_pg_session_t *session);

/* Readiness, from any thread: whether the server accepts connections (a
 * connection attempt of its own, 2 s at most, no credentials needed). When
 * not, reason reads "PostgreSQL <what> does not answer" or "... is not
 * accepting connections". */
bool cat_pg_session_ping(const cat_pg_session_t *session, char *reason, size_t reason_size);

/* Splits a SQL script into statements, for statements that may not run in a
 * multi-statement string (CREATE INDEX CONCURRENTLY, VACUUM). Statements end
 * at ';' outside quotes ('...', E'...', "..."), dollar quotes ($tag$...$tag$)
 * and comments (--, nested block comments). Iterate from *pos = 0: each call
 * sets [*start, *start + *len) to the next statement without its ';' and
 * with surrounding whitespace trimmed, and returns false at the end.
 * Pieces holding only whitespace and comments are skipped. */
bool cat_pg_script_next(const char *sql, size_t *pos, size_t *start, size_t *len);

#endif /* CAT_PG_H */
