/*
 * catalyst-backup's handler for the consume loop (cat_handler_t):
 * backup.v1 commands -> backups in an object store (cat_sink: S3 or a
 * directory), the backup_catalog table, events on events.v1.
 *
 * One command per batch (CATALYST_BATCH_SIZE defaults to 1). A command:
 *   Full     pg_dump (spawned with argv, the password only in its
 *            environment) of a snapshot this worker exports and holds, its
 *            output gzip-compressed in memory-bounded chunks on
 *            CATALYST_BACKUP_COMPRESS_THREADS threads into one multipart
 *            upload; row counts, checksums and largest versions of the
 *            schema's tables read from the dump's COPY sections as they
 *            stream by (cat_rowsum)
 *   Tables   COPY (SELECT <columns> FROM <table> [WHERE version > watermark])
 *            TO STDOUT per table, in one exported snapshot, tables in
 *            parallel threads (CATALYST_BACKUP_PARALLEL), each into its own
 *            object, its rows counted and checksummed as they stream by
 *   Restore  only into a target named in CATALYST_BACKUP_RESTORE_TARGETS;
 *            sha256 checked while streaming; nothing committed on a mismatch
 *   Verify   restore into a scratch database on the primary's server,
 *            compare rows and checksums with the manifest (computed as its
 *            checksum_algo says: COPY text of the restored tables; the
 *            server's hashtextextended for manifests without one), event,
 *            drop it
 *   Prune    retention tiers (retention.c), dry-run possible
 *
 * The manifest (backups/<db>/<backup_id>/manifest.json) is written last:
 * a backup without it does not exist. backup_id derives from the command
 * (kind and sha256 of command_id), so a redelivered command whose
 * backup completed does nothing, and one that was interrupted starts over
 * (what the attempt left under its prefix is removed first).
 *
 * Results: a bad command (unknown table, target or backup) is marked
 * CAT_ERR_PERMANENT (dead-lettered); everything else that fails is
 * CAT_ERR_RETRIABLE, including refused credentials, a missing bucket or a
 * full disk, and /readyz says why while the loop backs off, for at most
 * CATALYST_BACKUP_MAX_ATTEMPTS attempts of a command (attempts interrupted by
 * a shutdown do not count; the count is this process's). Then the failure is
 * permanent too. A command that fails for good gets exactly one event with
 * ok=false (backup.failed, backup.restored, backup.verified or
 * backup.pruned) besides its dead letter, and the partition moves on: a
 * prune never waits behind a backup that cannot succeed. backup.started goes
 * out on a backup's first attempt only.
 */
#ifndef BACKUP_BACKUP_H
#define BACKUP_BACKUP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_err.h"
#include "cat_kafka.h"
#include "cat_metrics.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_sink.h"
#include "catalyst/v1/commands.pb-c.h"

#define BACKUP_WORKER "catalyst-backup"
#define BACKUP_MAX_TABLES 16
#define BACKUP_ATTEMPT_SLOTS 64 /* commands being retried at once (one per partition) */

typedef struct backup backup_t;

/* One object of a backup, as the manifest lists it. */
typedef struct backup_object {
	char key[512];
	char table[64];	 /* "" for the full dump */
	int64_t rows;	 /* -1: unknown (the full dump) */
	uint64_t bytes_raw, bytes_compressed;
	char sha256[65];
	char checksum[64]; /* of the rows (CAT_ROWSUM_ALGO, hex) */
	char encoding[64]; /* the client_encoding of the COPY text the checksums are of */
	int64_t since_version, max_version; /* incremental range (since: -1 for all) */
} backup_object_t;

/* Row count and checksum of each schema table (in one snapshot). */
typedef struct backup_table_stat {
	char table[64];
	int64_t rows;
	char checksum[64];
	int64_t max_version;
} backup_table_stat_t;

/* The worker's own settings, filled from its config table (main.c binds
 * each CATALYST_BACKUP_* row to a field); strings are borrowed from the
 * cat_config_t. The shared blocks (PostgreSQL, S3, consumer, HTTP) are read
 * by their modules. */
typedef struct backup_settings {
	const char *group, *bind;
	long long port;
	const char *store, *dir;     /* "s3" | "dir"; the dir store's directory */
	const char *restore_targets; /* "name=url;..." (secret), or NULL */
	long long parallel, gzip_level, compress_threads; /* compress_threads 0: one per CPU, at most 4 */
	const char *pg_dump, *psql;
	long long max_command_s; /* the group's max.poll.interval.ms (the table's .kafka) */
	long long max_attempts, keep_full;
	bool allow_prune_now;
} backup_settings_t;

/* The config table's check of CATALYST_BACKUP_RESTORE_TARGETS
 * (cat_config_check_fn): "name=url;name2=url2", each url one libpq takes. */
int backup_restore_targets_check(const char *list, char *why, size_t why_size);

/* The handler state: `settings` is copied (`cfg` must outlive the backup:
 * its strings); sink, producer and metrics are borrowed. */
cat_err_t backup_new(backup_t **out, const cat_config_t *cfg, const backup_settings_t *settings,
		     cat_sink_t *sink, cat_producer_t *producer, cat_metrics_t *metrics, volatile sig_atomic_t *stop,
		     char *errstr, size_t errstr_size) CAT_MUST_CHECK;
void backup_destroy(backup_t *backup);
cat_err_t backup_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size);
bool backup_ready(void *opaque, char *reason, size_t reason_size);
/* /readyz: ready while a long command is running; else the loop's answer. */
bool backup_http_ready(void *opaque, char *reason, size_t reason_size);
void backup_set_consumer(backup_t *backup, cat_consumer_t *consumer);

/* --- shared by the handler's files ------------------------------------------------------------ */

/* The attempts at one command (a partition's offset). */
typedef struct backup_attempt {
	int32_t partition; /* -1: free */
	int64_t offset;
	int failed;   /* attempts that failed */
	bool started; /* backup.started went out */
} backup_attempt_t;

struct backup {
	const cat_config_t *cfg;
	backup_settings_t settings;
	cat_sink_t *sink;
	cat_producer_t *producer;
	cat_consumer_t *consumer;
	volatile sig_atomic_t *stop;
	cat_pg_session_t *pg; /* the catalog, on the primary: connected (cat_pg_session_conn) while a
			       * command runs */
	char events_topic[256];
	int compress_threads; /* per backup (settings' 0 resolved): a full dump's, shared by the tables
			       * running at once */
	volatile sig_atomic_t busy; /* a command is running (for /readyz) */
	volatile sig_atomic_t failing; /* the last attempt failed: busy is a retry */
	char last_error[512];	    /* the last failure, for /readyz */
	backup_attempt_t *attempt; /* the running command's */
	backup_attempt_t attempts[BACKUP_ATTEMPT_SLOTS];

	cat_metrics_t *metrics;
	cat_metric_t *m_bytes, *m_rate, *m_duration, *m_failures, *m_completed;
};

/* stream.c: gzip + sha256 into a sink object, and the way back. The
 * object is a series of gzip members of 1 MiB of input each, compressed by
 * `threads` threads while the caller writes on. */
typedef struct backup_gz_out backup_gz_out_t;
cat_err_t backup_gz_out_open(backup_t *backup, const char *key, int threads, backup_gz_out_t **out,
			     char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t backup_gz_out_write(backup_gz_out_t *gz, const void *data, size_t len, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;
/* Completes the object; fills obj's sizes and sha256. */
cat_err_t backup_gz_out_finish(backup_gz_out_t *gz, backup_object_t *obj, char *errstr,
			       size_t errstr_size) CAT_MUST_CHECK;
void backup_gz_out_free(backup_gz_out_t *gz); /* aborts an unfinished object */

/* Streams an object, checking its sha256, decompressing into fn. A sha256
 * mismatch is reported after fn saw every byte: the caller must not commit
 * what it did with them before this returns CAT_OK. */
typedef int (*backup_gz_in_fn)(const void *data, size_t len, void *opaque);
cat_err_t backup_gz_in_read(backup_t *backup, const char *key, const char *sha256, backup_gz_in_fn fn,
			    void *opaque, uint64_t *bytes_raw, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;

/* A child process with its stdin or stdout on a pipe, spawned with argv and
 * the libpq connection settings of `conn` (dbname replaced when dbname is
 * not NULL) in its environment, plus extra_env ("NAME=value", NULL-ended;
 * NULL: none): nothing secret on its command line. */
typedef struct backup_child {
	pid_t pid;
	int fd;		 /* our end of its stdin (to_child) or stdout */
	int err_fd;	 /* its stderr */
	char err[512];	 /* the first line it wrote to stderr */
	size_t err_len;
} backup_child_t;
cat_err_t backup_child_spawn(backup_child_t *child, const char *const *argv, PGconn *conn, const char *dbname,
			     const char *const *extra_env, bool to_child, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;
/* Collects stderr, waits; CAT_OK when it exited 0. */
cat_err_t backup_child_wait(backup_child_t *child, const char *what, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;
void backup_child_kill(backup_child_t *child);

/* A new connection (cat_pg_connect) with the settings of `conn`, dbname
 * replaced when not NULL, `app` its application_name: a snapshot's, the
 * scratch database's. Errors read "database <name>: could not connect to
 * PostgreSQL: ...". */
cat_err_t backup_pg_connect_like(PGconn *conn, const char *dbname, const char *app, PGconn **out,
				 char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* COPY on a connection of its own; failures read "could not <what>:
 * <message> (SQLSTATE x)" (cat_pg_result_error). backup_copy_start runs
 * `sql` and checks that the server is in `mode` (PGRES_COPY_OUT, _IN);
 * backup_copy_end checks the result of a COPY whose data part ended (ok) or
 * failed (not ok); backup_copy_rows hands each row of a COPY ... TO STDOUT
 * to fn, then ends it, and stops at fn's first error (the connection, still
 * in the COPY, is the caller's to close). */
typedef cat_err_t (*backup_copy_row_fn)(const char *row, size_t len, void *opaque, char *errstr,
					size_t errstr_size);
cat_err_t backup_copy_start(PGconn *conn, const char *sql, ExecStatusType mode, const char *what, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;
cat_err_t backup_copy_end(PGconn *conn, bool ok, const char *what, char *errstr,
			  size_t errstr_size) CAT_MUST_CHECK;
cat_err_t backup_copy_rows(PGconn *conn, const char *what, backup_copy_row_fn fn, void *opaque, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;

/* dump.c */
cat_err_t backup_dump_full(backup_t *backup, const char *prefix, backup_object_t *obj,
			   backup_table_stat_t *stats, size_t *n_stats, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;
cat_err_t backup_dump_tables(backup_t *backup, const char *prefix, const char *const *tables, size_t n_tables,
			     bool incremental, backup_object_t *objs, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;
/* "c1, c2, ..." of a schema table (malloc'd; NULL: out of memory). */
char *backup_column_list(const cat_table_t *t);
/* The position of the version column in a COPY of all of t's columns; -1: none. */
int backup_table_version_field(const cat_table_t *t);
/* Row count and checksum of a table as manifests without checksum_algo
 * record them (computed by the server: sum(hashtextextended(ROW(...)::text, 0))). */
cat_err_t backup_table_stats(PGconn *conn, const char *table, const char *where, backup_table_stat_t *stat,
			     char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* restore.c: the manifest is parsed JSON (jansson json_t *, void here) */
cat_err_t backup_restore(backup_t *backup, const void *manifest, PGconn *target, const char *target_url,
			 const char *target_db, const char *const *tables, size_t n_tables, int64_t *rows,
			 char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t backup_verify(backup_t *backup, const char *backup_id, const void *manifest, bool *ok, char *report,
			size_t report_size, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* retention.c: which completed backups the tiers keep. */
typedef struct backup_retention_item {
	const char *backup_id;
	const char *kind; /* full | tables | incremental */
	int64_t finished_us;
	bool verified; /* verify_ok */
	bool keep;     /* out */
	const char *why; /* out: the tier that keeps it, or "" */
} backup_retention_item_t;
/* items sorted oldest first; the newest keep_full full backups are kept
 * whatever the tiers say. */
void backup_retention_select(backup_retention_item_t *items, size_t n, int64_t now_us, int keep_full);

#endif /* BACKUP_BACKUP_H */
