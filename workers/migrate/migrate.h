/*
 * catalyst-migrate: the migration files, their state in PostgreSQL, and the
 * up/down/status/validate operations.
 *
 * Files are `NNNN_name.up.sql` / `NNNN_name.down.sql`, numbered from 1
 * without gaps, each version with both files. A file whose first line is
 * `-- catalyst:no-transaction` runs statement by statement outside a
 * transaction (for CREATE INDEX CONCURRENTLY); every other file runs, with
 * its schema_migrations row, in one transaction.
 *
 * schema_migrations (version, name, checksum = sha256 hex of the up file,
 * applied_at, execution_ms) is created on first use. up and down hold a
 * session advisory lock, so any number of pods may start at once: the first
 * applies, the others wait, re-read what is applied and find nothing to do.
 * An applied migration whose file changed or vanished stops up, down and
 * validate.
 */
#ifndef MIGRATE_MIGRATE_H
#define MIGRATE_MIGRATE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <libpq-fe.h>

#include "cat_err.h"
#include "cat_http.h"

#define MIGRATE_NO_TRANSACTION "-- catalyst:no-transaction"

typedef struct migrate_file {
	int version;
	char *name;    /* "initial_schema" */
	char *up_file; /* "0001_initial_schema.up.sql" */
	char *up_sql;
	char *down_file; /* "0001_initial_schema.down.sql" */
	char *down_sql;
	char checksum[65]; /* sha256 hex of up_sql */
} migrate_file_t;

/* The migrations directory, read and checked once. */
typedef struct migrate_set {
	char *dir;
	migrate_file_t *files; /* by version: files[i].version == i + 1 */
	size_t n_files;
} migrate_set_t;

/* catalyst-migrate's own settings, filled from its config table (main.c
 * binds each of its rows to a field); strings are borrowed from the
 * cat_config_t. The PostgreSQL and HTTP rows are read from the cat_config_t. */
typedef struct migrate_settings {
	const char *migrations_dir;
	long long lock_timeout_s;
	/* serve */
	const char *bind, *token; /* token: NULL when unset */
	long long port, status_refresh_s;
} migrate_settings_t;

/* Where and how to connect. */
typedef struct migrate_opts {
	const char *pg_url;
	int connect_timeout_s;
	int lock_timeout_s;
	const char *app_name;
} migrate_opts_t;

/* One version as the files and the database see it. */
typedef struct migrate_row {
	int version;
	const char *name;
	const migrate_file_t *file; /* NULL: applied, but no such file */
	bool applied;
	char *recorded_name; /* as applied; NULL when pending */
	char applied_at[40]; /* RFC 3339, UTC */
	long long execution_ms;
	char checksum[65]; /* recorded when applied, else the file's */
	bool checksum_ok;  /* recorded == file */
} migrate_row_t;

typedef struct migrate_status {
	migrate_row_t *rows; /* by version */
	size_t n_rows;
	int current_version; /* highest applied, 0 for none */
	int latest_version;  /* highest file */
	int pending;	     /* files not applied */
} migrate_status_t;

/* What an up or down run did, also when it failed. */
typedef struct migrate_result {
	int changed;   /* migrations applied or reverted */
	int version;   /* schema version when the run ended */
	bool conflict; /* refused: lock held too long, or files and database disagree */
} migrate_result_t;

/* Reads and checks every file of `dir`: names, numbering, both files per
 * version, no transaction control inside a transactional file. */
cat_err_t migrate_set_load(migrate_set_t **out, const char *dir, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;
void migrate_set_destroy(migrate_set_t *set);

/* Applies pending migrations up to `target` (0: all). */
cat_err_t migrate_up(const migrate_opts_t *opts, const migrate_set_t *set, int target,
		     migrate_result_t *result, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Reverts the last `count` applied migrations, newest first. */
cat_err_t migrate_down(const migrate_opts_t *opts, const migrate_set_t *set, int count,
		       migrate_result_t *result, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* The state of every version; takes no lock. */
cat_err_t migrate_status_read(const migrate_opts_t *opts, const migrate_set_t *set, migrate_status_t **out,
			      char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* The same on an open connection (schema_migrations absent: nothing applied). */
cat_err_t migrate_status_query(PGconn *conn, const migrate_set_t *set, migrate_status_t **out, char *errstr,
			       size_t errstr_size) CAT_MUST_CHECK;
void migrate_status_destroy(migrate_status_t *status);

/* CAT_ERR_FATAL and the first disagreement between files and database:
 * a changed checksum, a missing file, another name. */
cat_err_t migrate_status_check(const migrate_status_t *status, char *errstr,
			       size_t errstr_size) CAT_MUST_CHECK;

/* {"current_version":..,"latest_version":..,"pending":..,"migrations":[..]}
 * as a new jansson json_t (returned as void *; NULL when out of memory). */
void *migrate_status_json(const migrate_status_t *status);

/* The human table of `status`. */
void migrate_status_print(FILE *out, const migrate_status_t *status);

/* The CLI commands and `serve` (serve.c): exit codes (0, 1). `up` true:
 * migrate_up() to version n (0: all); false: migrate_down() of n. */
int migrate_cmd_run(const migrate_opts_t *opts, const migrate_set_t *set, bool up, int n);
int migrate_cmd_status(const migrate_opts_t *opts, const migrate_set_t *set, bool json);
int migrate_cmd_validate(const migrate_opts_t *opts, const migrate_set_t *set);

/* reset-version (reset.c): sets a row's version, and its tombstone's when
 * above it, to `version`, on the database opts names. Exit codes (0, 1, 2). */
int migrate_cmd_reset_version(const migrate_opts_t *opts, const char *table, const char *key, int64_t version);
/* A version argument: an integer from 1. */
bool migrate_parse_version(const char *text, int64_t *version);

/* Serves on settings' bind, port and token (set), reading the cached
 * status again every status_refresh_s, until *stop. */
int migrate_serve(const migrate_opts_t *opts, const migrate_set_t *set, const migrate_settings_t *settings,
		  const cat_http_limits_t *http_limits, const volatile sig_atomic_t *stop);

#endif /* MIGRATE_MIGRATE_H */
