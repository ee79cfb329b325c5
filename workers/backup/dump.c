/*
 * Full and table backups: one exported snapshot, streamed through gzip into
 * the sink. SQL is built only from cat_schema names; the snapshot id and
 * the watermark are values this worker read from the server.
 *
 * Row counts, checksums (CAT_ROWSUM_ALGO) and the largest version of each
 * table come from the stream itself (cat_rowsum): the COPY sections of
 * pg_dump's output, or the COPY data of a table backup. Nothing reads the
 * tables a second time.
 */
#define _GNU_SOURCE /* asprintf */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_rowsum.h"
#include "cat_schema.h"

#define READ_CHUNK (128 * 1024)

char *backup_column_list(const cat_table_t *t)
{
	size_t len = 1;
	char *out;

	for (size_t i = 0; i < t->n_columns; i++)
		len += strlen(t->columns[i].name) + 2;
	if (!(out = calloc(1, len)))
		return NULL;
	for (size_t i = 0; i < t->n_columns; i++) {
		if (i)
			strcat(out, ", ");
		strcat(out, t->columns[i].name);
	}
	return out;
}

static char *stats_sql(const cat_table_t *t, const char *where)
{
	char *cols = backup_column_list(t), *sql = NULL;

	if (cols && asprintf(&sql,
			     "SELECT count(*), coalesce(sum(hashtextextended(ROW(%s)::text, 0)), 0)::text, "
			     "coalesce(max(version), -1) FROM %s%s%s",
			     cols, t->name, where ? " WHERE " : "", where ? where : "") < 0)
		sql = NULL;
	free(cols);
	return sql;
}

cat_err_t backup_table_stats(PGconn *conn, const char *table, const char *where, backup_table_stat_t *stat,
			     char *errstr, size_t errstr_size)
{
	const cat_table_t *t = cat_schema_table(table);
	char *sql;
	PGresult *res = NULL;
	cat_err_t err;

	if (!t)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "unknown table %s", table);
	if (!(sql = stats_sql(t, where)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	err = cat_pg_exec(conn, sql, 0, NULL, &res, errstr, errstr_size);
	free(sql);
	if (err != CAT_OK)
		return err;
	snprintf(stat->table, sizeof(stat->table), "%s", table);
	stat->rows = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	snprintf(stat->checksum, sizeof(stat->checksum), "%s", PQgetvalue(res, 0, 1));
	stat->max_version = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	PQclear(res);
	return CAT_OK;
}

/* A REPEATABLE READ READ ONLY transaction on a new connection; with
 * snapshot NULL it exports its snapshot into snap_id. */
static cat_err_t open_snapshot(backup_t *backup, const char *snapshot, char *snap_id, size_t snap_id_size,
			       PGconn **out, char *errstr, size_t errstr_size)
{
	PGconn *conn = NULL;
	PGresult *res = NULL;
	cat_err_t err;

	*out = NULL;
	if ((err = backup_pg_connect_like(cat_pg_session_conn(backup->pg), NULL, "catalyst-backup-snapshot", &conn,
					  errstr, errstr_size)))
		return err;
	if ((err = cat_pg_exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL, errstr,
			       errstr_size)))
		goto error;
	if (snapshot) {
		char *lit = PQescapeLiteral(conn, snapshot, strlen(snapshot)), *sql = NULL;

		if (!lit || asprintf(&sql, "SET TRANSACTION SNAPSHOT %s", lit) < 0) {
			PQfreemem(lit);
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto error;
		}
		PQfreemem(lit);
		err = cat_pg_exec(conn, sql, 0, NULL, NULL, errstr, errstr_size);
		free(sql);
		if (err)
			goto error;
	} else {
		if ((err = cat_pg_exec(conn, "SELECT pg_export_snapshot()", 0, NULL, &res, errstr, errstr_size)))
			goto error;
		snprintf(snap_id, snap_id_size, "%s", PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	*out = conn;
	return CAT_OK;
error:
	cat_pg_close(conn);
	return err;
}

/* --- full ----------------------------------------------------------------------------------------- */

/* The schema (as search_path finds it) of each schema table, in the
 * snapshot: what pg_dump's COPY headers name them by. */
static cat_err_t table_schemas(PGconn *conn, char schemas[][64], char *errstr, size_t errstr_size)
{
	for (size_t i = 0; i < cat_schema_n_tables; i++) {
		const char *params[] = {cat_schema_tables[i].name};
		PGresult *res = NULL;
		cat_err_t err;

		if ((err = cat_pg_exec(conn,
				       "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
				       "WHERE c.oid = to_regclass($1)",
				       1, params, &res, errstr, errstr_size)))
			return err;
		if (PQntuples(res) != 1) {
			PQclear(res);
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "table %s does not exist",
					   cat_schema_tables[i].name);
		}
		snprintf(schemas[i], 64, "%s", PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	return CAT_OK;
}

cat_err_t backup_dump_full(backup_t *backup, const char *prefix, backup_object_t *obj,
			   backup_table_stat_t *stats, size_t *n_stats, char *errstr, size_t errstr_size)
{
	PGconn *snap = NULL;
	char snap_id[128] = "", snap_arg[160], why[512], *buf = malloc(READ_CHUNK);
	char(*schemas)[64] = calloc(cat_schema_n_tables, sizeof(*schemas));
	backup_child_t child = {.pid = -1, .fd = -1, .err_fd = -1};
	cat_dumpscan_t *scan = NULL;
	backup_gz_out_t *gz = NULL;
	cat_err_t err;

	*n_stats = 0;
	if (!buf || !schemas) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	if ((err = open_snapshot(backup, NULL, snap_id, sizeof(snap_id), &snap, errstr, errstr_size)) ||
	    (err = table_schemas(snap, schemas, errstr, errstr_size)) ||
	    (err = cat_dumpscan_new(&scan, errstr, errstr_size)))
		goto out;

	snprintf(snap_arg, sizeof(snap_arg), "--snapshot=%s", snap_id);
	{
		const char *argv[] = {backup->settings.pg_dump, "--format=plain", "--no-owner", "--no-privileges",
				      snap_arg, NULL};
		/* timestamptz in UTC: the session the checksums are defined for */
		const char *env[] = {CAT_ROWSUM_PG_DUMP_ENV, NULL};

		if ((err = backup_child_spawn(&child, argv, cat_pg_session_conn(backup->pg), NULL, env, false,
					      errstr, errstr_size)))
			goto out;
	}
	snprintf(obj->key, sizeof(obj->key), "%sdump.sql.gz", prefix);
	obj->rows = -1;
	obj->since_version = -1;
	if ((err = backup_gz_out_open(backup, obj->key, backup->compress_threads, &gz, errstr, errstr_size)))
		goto out;
	for (;;) {
		ssize_t n = read(child.fd, buf, READ_CHUNK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not read from pg_dump: %s",
					  strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		if (*backup->stop) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "interrupted by shutdown");
			goto out;
		}
		if ((err = cat_dumpscan_feed(scan, buf, (size_t)n, errstr, errstr_size)) ||
		    (err = backup_gz_out_write(gz, buf, (size_t)n, errstr, errstr_size)))
			goto out;
	}
	if ((err = backup_child_wait(&child, "pg_dump", errstr, errstr_size)))
		goto out;
	if ((err = cat_dumpscan_finish(scan, why, sizeof(why))) != CAT_OK) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "pg_dump's output is incomplete: %s", why);
		goto out;
	}
	for (size_t i = 0; i < cat_schema_n_tables; i++) {
		const cat_rowsum_t *sum = cat_dumpscan_table(scan, schemas[i], cat_schema_tables[i].name);
		backup_table_stat_t *s = &stats[i];

		if (!sum) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "pg_dump wrote no data for table %s.%s",
					  schemas[i], cat_schema_tables[i].name);
			goto out;
		}
		snprintf(s->table, sizeof(s->table), "%s", cat_schema_tables[i].name);
		s->rows = sum->rows;
		cat_rowsum_hex(sum, s->checksum);
		s->max_version = sum->max_version;
	}
	*n_stats = cat_schema_n_tables;
	snprintf(obj->encoding, sizeof(obj->encoding), "%s",
		 *cat_dumpscan_encoding(scan) ? cat_dumpscan_encoding(scan)
					      : (PQparameterStatus(snap, "server_encoding") ?: ""));
	err = backup_gz_out_finish(gz, obj, errstr, errstr_size);
out:
	backup_child_kill(&child);
	backup_gz_out_free(gz);
	cat_dumpscan_free(scan);
	cat_pg_close(snap); /* ends the read-only transaction */
	free(schemas);
	free(buf);
	return err;
}

/* --- tables ---------------------------------------------------------------------------------------- */

typedef struct table_job {
	backup_t *backup;
	const char *snap_id;
	const char *prefix;
	const char *const *tables;
	size_t n;
	bool incremental;
	int64_t *watermarks; /* -1: none */
	int compress_threads; /* of each table: the backup's, shared by the tables running at once */
	backup_object_t *objs;
	pthread_mutex_t lock;
	size_t next;
	cat_err_t err;
	char errstr[512];
} table_job_t;

int backup_table_version_field(const cat_table_t *t)
{
	for (size_t i = 0; i < t->n_columns; i++)
		if (strcmp(t->columns[i].name, "version") == 0)
			return (int)i;
	return -1;
}

/* Where a table's COPY rows go: counted and checksummed, then compressed. */
typedef struct table_out {
	backup_t *backup;
	cat_rowscan_t *scan;
	backup_gz_out_t *gz;
} table_out_t;

static cat_err_t table_row(const char *row, size_t len, void *opaque, char *errstr, size_t errstr_size)
{
	table_out_t *out = opaque;

	if (*out->backup->stop)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "interrupted by shutdown");
	cat_rowscan_feed(out->scan, row, len);
	return backup_gz_out_write(out->gz, row, len, errstr, errstr_size);
}

/* One table: COPY in the snapshot, its rows counted and checksummed as they
 * stream by, under the session settings the checksum is defined for. */
static cat_err_t dump_one_table(table_job_t *job, size_t i, char *errstr, size_t errstr_size)
{
	backup_t *backup = job->backup;
	const cat_table_t *t = cat_schema_table(job->tables[i]);
	backup_object_t *obj = &job->objs[i];
	PGconn *conn = NULL;
	table_out_t out = {.backup = backup};
	cat_rowsum_t sum;
	char where[64], what[96], why[512], *cols = backup_column_list(t), *sql = NULL;
	bool since = job->incremental && job->watermarks[i] >= 0;
	cat_err_t err;

	if (!cols)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	snprintf(where, sizeof(where), "version > %lld", (long long)job->watermarks[i]);
	snprintf(what, sizeof(what), "copy %s", t->name);
	if ((err = open_snapshot(backup, job->snap_id, NULL, 0, &conn, errstr, errstr_size)) ||
	    (err = cat_pg_exec_script(conn, CAT_ROWSUM_SESSION_SQL, errstr, errstr_size)) ||
	    (err = cat_rowscan_new(&out.scan, backup_table_version_field(t), errstr, errstr_size)))
		goto out;
	snprintf(obj->key, sizeof(obj->key), "%s%s.copy.gz", job->prefix, t->name);
	snprintf(obj->table, sizeof(obj->table), "%s", t->name);
	snprintf(obj->encoding, sizeof(obj->encoding), "%s", PQparameterStatus(conn, "client_encoding") ?: "");
	obj->since_version = since ? job->watermarks[i] : -1;
	if (asprintf(&sql, "COPY (SELECT %s FROM %s%s%s) TO STDOUT", cols, t->name, since ? " WHERE " : "",
		     since ? where : "") < 0) {
		sql = NULL;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	if ((err = backup_copy_start(conn, sql, PGRES_COPY_OUT, what, errstr, errstr_size)) ||
	    (err = backup_gz_out_open(backup, obj->key, job->compress_threads, &out.gz, errstr, errstr_size)) ||
	    (err = backup_copy_rows(conn, what, table_row, &out, errstr, errstr_size)))
		goto out;
	if ((err = cat_rowscan_result(out.scan, &sum, why, sizeof(why))) != CAT_OK) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "COPY of %s: %s", t->name, why);
		goto out;
	}
	obj->rows = sum.rows;
	cat_rowsum_hex(&sum, obj->checksum);
	obj->max_version = sum.max_version >= 0 ? sum.max_version : (since ? job->watermarks[i] : -1);
	err = backup_gz_out_finish(out.gz, obj, errstr, errstr_size);
out:
	backup_gz_out_free(out.gz);
	cat_rowscan_free(out.scan);
	cat_pg_close(conn);
	free(sql);
	free(cols);
	return err;
}

static void *table_thread(void *opaque)
{
	table_job_t *job = opaque;

	for (;;) {
		char errstr[512];
		size_t i;
		cat_err_t err;

		pthread_mutex_lock(&job->lock);
		i = job->err == CAT_OK ? job->next++ : job->n;
		pthread_mutex_unlock(&job->lock);
		if (i >= job->n)
			return NULL;
		err = dump_one_table(job, i, errstr, sizeof(errstr));
		if (err != CAT_OK) {
			pthread_mutex_lock(&job->lock);
			if (job->err == CAT_OK) {
				job->err = err;
				snprintf(job->errstr, sizeof(job->errstr), "%s", errstr);
			}
			pthread_mutex_unlock(&job->lock);
		}
	}
}

cat_err_t backup_dump_tables(backup_t *backup, const char *prefix, const char *const *tables, size_t n_tables,
			     bool incremental, backup_object_t *objs, char *errstr, size_t errstr_size)
{
	PGconn *snap = NULL;
	char snap_id[128];
	int64_t watermarks[BACKUP_MAX_TABLES];
	pthread_t threads[BACKUP_MAX_TABLES];
	size_t parallel = (size_t)backup->settings.parallel;
	size_t n_threads = parallel < n_tables ? parallel : n_tables, started = 0;
	table_job_t job = {.backup = backup, .snap_id = snap_id, .prefix = prefix, .tables = tables,
			   .n = n_tables, .incremental = incremental, .watermarks = watermarks, .objs = objs,
			   .compress_threads = backup->compress_threads / (int)(n_threads ? n_threads : 1)};
	cat_err_t err;

	for (size_t i = 0; i < n_tables; i++) {
		watermarks[i] = -1;
		if (incremental) {
			const char *params[] = {tables[i]};
			PGresult *res = NULL;

			if ((err = cat_pg_exec(cat_pg_session_conn(backup->pg),
					       "SELECT last_version FROM backup_watermarks WHERE table_name = $1", 1, params,
					       &res, errstr, errstr_size)))
				return err;
			if (PQntuples(res) == 1)
				watermarks[i] = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
			PQclear(res);
		}
	}
	if ((err = open_snapshot(backup, NULL, snap_id, sizeof(snap_id), &snap, errstr, errstr_size)))
		return err;
	pthread_mutex_init(&job.lock, NULL);
	for (; started < n_threads; started++)
		if (pthread_create(&threads[started], NULL, table_thread, &job) != 0)
			break;
	if (started == 0)
		table_thread(&job);
	for (size_t i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	pthread_mutex_destroy(&job.lock);
	cat_pg_close(snap);
	if (job.err != CAT_OK)
		return cat_err_set(errstr, errstr_size, job.err, "%s", job.errstr);
	return CAT_OK;
}
