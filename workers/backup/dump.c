/*
 * Full and table backups: one exported snapshot, streamed through gzip into
 * the sink. SQL is built only from cat_schema names; the snapshot id and
 * the watermark are values this worker read from the server.
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
#include "cat_schema.h"

#define READ_CHUNK (128 * 1024)

/* "c1, c2, ..." of a schema table. */
static char *column_list(const cat_table_t *t)
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
	char *cols = column_list(t), *sql = NULL;

	if (cols && asprintf(&sql,
			     "SELECT count(*), coalesce(sum(hashtextextended(ROW(%s)::text, 0)), 0)::text, "
			     "coalesce(max(version), -1) FROM %s%s%s",
			     cols, t->name, where ? " WHERE " : "", where ? where : "") < 0)
		sql = NULL;
	free(cols);
	return sql;
}

cat_err_t table_stats(PGconn *conn, const char *table, const char *where, table_stat_t *stat, char *errstr,
		      size_t errstr_size)
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

/* Closes a connection, first cancelling a query still running on it (a
 * count on an error path), so the server does not scan on for nobody. */
static void close_cancelling(PGconn *conn)
{
	if (conn && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_ACTIVE) {
		PGcancel *cancel = PQgetCancel(conn);
		char buf[256];

		if (cancel) {
			(void)PQcancel(cancel, buf, sizeof(buf));
			PQfreeCancel(cancel);
		}
	}
	cat_pg_close(conn);
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
	if ((err = pg_connect_like(backup->conn, NULL, "catalyst-backup-snapshot", &conn, errstr, errstr_size)))
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

cat_err_t dump_full(backup_t *backup, const char *prefix, backup_object_t *obj, table_stat_t *stats,
		    size_t *n_stats, char *errstr, size_t errstr_size)
{
	PGconn *snap = NULL, *stat_conn = NULL;
	char snap_id[128] = "", snap_arg[160], *buf = malloc(READ_CHUNK);
	child_t child = {.pid = -1, .fd = -1, .err_fd = -1};
	gz_out_t *gz = NULL;
	PGresult *res;
	cat_err_t err;
	char *sql = NULL;

	*n_stats = 0;
	if (!buf)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if ((err = open_snapshot(backup, NULL, snap_id, sizeof(snap_id), &snap, errstr, errstr_size)))
		goto out;
	/* the manifest's counts and checksums: computed by the server in the
	 * same snapshot while pg_dump runs */
	if ((err = open_snapshot(backup, snap_id, NULL, 0, &stat_conn, errstr, errstr_size)))
		goto out;
	for (size_t i = 0; i < cat_schema_n_tables; i++) {
		char *one = stats_sql(&cat_schema_tables[i], NULL), *joined = NULL;

		if (!one || asprintf(&joined, "%s%s%s", sql ? sql : "", sql ? " UNION ALL " : "", one) < 0) {
			free(one);
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto out;
		}
		free(one);
		free(sql);
		sql = joined;
	}
	if (!PQsendQuery(stat_conn, sql)) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not count rows: %s",
				  PQerrorMessage(stat_conn));
		goto out;
	}

	snprintf(snap_arg, sizeof(snap_arg), "--snapshot=%s", snap_id);
	{
		const char *argv[] = {backup->pg_dump, "--format=plain", "--no-owner", "--no-privileges",
				      snap_arg, NULL};

		if ((err = child_spawn(&child, argv, backup->conn, NULL, false, errstr, errstr_size)))
			goto out;
	}
	snprintf(obj->key, sizeof(obj->key), "%sdump.sql.gz", prefix);
	obj->rows = -1;
	obj->since_version = -1;
	if ((err = gz_out_open(backup, obj->key, backup->compress_threads, &gz, errstr, errstr_size)))
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
		if ((err = gz_out_write(gz, buf, (size_t)n, errstr, errstr_size)))
			goto out;
	}
	if ((err = child_wait(&child, "pg_dump", errstr, errstr_size)))
		goto out;
	while ((res = PQgetResult(stat_conn))) {
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			err = cat_err_set(errstr, errstr_size, cat_pg_error_class(stat_conn, res),
					  "could not count rows: %s", PQresultErrorMessage(res));
		} else {
			for (int r = 0; r < PQntuples(res) && (size_t)r < cat_schema_n_tables; r++) {
				table_stat_t *s = &stats[r];

				snprintf(s->table, sizeof(s->table), "%s", cat_schema_tables[r].name);
				s->rows = strtoll(PQgetvalue(res, r, 0), NULL, 10);
				snprintf(s->checksum, sizeof(s->checksum), "%s", PQgetvalue(res, r, 1));
				s->max_version = strtoll(PQgetvalue(res, r, 2), NULL, 10);
				*n_stats = (size_t)r + 1;
			}
		}
		PQclear(res);
	}
	if (err)
		goto out;
	err = gz_out_finish(gz, obj, errstr, errstr_size);
out:
	child_kill(&child);
	gz_out_free(gz);
	close_cancelling(stat_conn);
	cat_pg_close(snap); /* ends the read-only transaction */
	free(sql);
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

/* Sends the stats query of a table on conn (answer read by stats_receive). */
static cat_err_t stats_send(PGconn *conn, const cat_table_t *t, const char *where, char *errstr,
			    size_t errstr_size)
{
	char *sql = stats_sql(t, where);
	int sent;

	if (!sql)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	sent = PQsendQuery(conn, sql);
	free(sql);
	if (!sent)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not count the rows of %s: %s",
				   t->name, PQerrorMessage(conn));
	return CAT_OK;
}

static cat_err_t stats_receive(PGconn *conn, const cat_table_t *t, table_stat_t *stat, char *errstr,
			       size_t errstr_size)
{
	PGresult *res;
	bool got = false;
	cat_err_t err = CAT_OK;

	while ((res = PQgetResult(conn))) {
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
			if (err == CAT_OK)
				err = cat_err_set(errstr, errstr_size, cat_pg_error_class(conn, res),
						  "could not count the rows of %s: %s", t->name,
						  PQresultErrorMessage(res));
		} else if (!got) {
			snprintf(stat->table, sizeof(stat->table), "%s", t->name);
			stat->rows = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
			snprintf(stat->checksum, sizeof(stat->checksum), "%s", PQgetvalue(res, 0, 1));
			stat->max_version = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
			got = true;
		}
		PQclear(res);
	}
	if (err == CAT_OK && !got)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not count the rows of %s: %s",
				  t->name, PQerrorMessage(conn));
	return err;
}

/* One table: COPY on one connection while a second one, in the same
 * snapshot, has the server count and checksum the rows (as the full backup
 * does): the table is read twice at once, not one read after the other. */
static cat_err_t dump_one_table(table_job_t *job, size_t i, char *errstr, size_t errstr_size)
{
	backup_t *backup = job->backup;
	const cat_table_t *t = cat_schema_table(job->tables[i]);
	backup_object_t *obj = &job->objs[i];
	PGconn *conn = NULL, *stat_conn = NULL;
	gz_out_t *gz = NULL;
	PGresult *res = NULL;
	table_stat_t stat;
	char where[64], *cols = column_list(t), *sql = NULL, *data = NULL;
	bool since = job->incremental && job->watermarks[i] >= 0;
	cat_err_t err;
	int n;

	if (!cols)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	snprintf(where, sizeof(where), "version > %lld", (long long)job->watermarks[i]);
	if ((err = open_snapshot(backup, job->snap_id, NULL, 0, &conn, errstr, errstr_size)))
		goto out;
	if ((err = open_snapshot(backup, job->snap_id, NULL, 0, &stat_conn, errstr, errstr_size)))
		goto out;
	if ((err = stats_send(stat_conn, t, since ? where : NULL, errstr, errstr_size)))
		goto out;
	snprintf(obj->key, sizeof(obj->key), "%s%s.copy.gz", job->prefix, t->name);
	snprintf(obj->table, sizeof(obj->table), "%s", t->name);
	obj->since_version = since ? job->watermarks[i] : -1;
	if (asprintf(&sql, "COPY (SELECT %s FROM %s%s%s) TO STDOUT", cols, t->name, since ? " WHERE " : "",
		     since ? where : "") < 0) {
		sql = NULL;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_COPY_OUT) {
		err = cat_err_set(errstr, errstr_size, cat_pg_error_class(conn, res), "could not execute COPY of %s: %s",
				  t->name, PQresultErrorMessage(res));
		goto out;
	}
	PQclear(res);
	res = NULL;
	if ((err = gz_out_open(backup, obj->key, job->compress_threads, &gz, errstr, errstr_size)))
		goto out;
	while ((n = PQgetCopyData(conn, &data, 0)) > 0) {
		err = *backup->stop ? cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "interrupted by shutdown")
				    : gz_out_write(gz, data, (size_t)n, errstr, errstr_size);
		PQfreemem(data);
		data = NULL;
		if (err)
			goto out;
	}
	res = PQgetResult(conn);
	if (n != -1 || PQresultStatus(res) != PGRES_COMMAND_OK) {
		err = cat_err_set(errstr, errstr_size, cat_pg_error_class(conn, res), "could not copy %s: %s", t->name,
				  res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
		goto out;
	}
	if ((err = stats_receive(stat_conn, t, &stat, errstr, errstr_size)))
		goto out;
	obj->rows = stat.rows;
	snprintf(obj->checksum, sizeof(obj->checksum), "%s", stat.checksum);
	obj->max_version = stat.max_version >= 0 ? stat.max_version : (since ? job->watermarks[i] : -1);
	err = gz_out_finish(gz, obj, errstr, errstr_size);
out:
	PQclear(res);
	gz_out_free(gz);
	close_cancelling(stat_conn);
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

cat_err_t dump_tables(backup_t *backup, const char *prefix, const char *const *tables, size_t n_tables,
		      bool incremental, backup_object_t *objs, char *errstr, size_t errstr_size)
{
	PGconn *snap = NULL;
	char snap_id[128];
	int64_t watermarks[BACKUP_MAX_TABLES];
	pthread_t threads[BACKUP_MAX_TABLES];
	size_t n_threads = (size_t)backup->parallel < n_tables ? (size_t)backup->parallel : n_tables, started = 0;
	table_job_t job = {.backup = backup, .snap_id = snap_id, .prefix = prefix, .tables = tables,
			   .n = n_tables, .incremental = incremental, .watermarks = watermarks, .objs = objs,
			   .compress_threads = backup->compress_threads / (int)(n_threads ? n_threads : 1)};
	cat_err_t err;

	for (size_t i = 0; i < n_tables; i++) {
		watermarks[i] = -1;
		if (incremental) {
			const char *params[] = {tables[i]};
			PGresult *res = NULL;

			if ((err = cat_pg_exec(backup->conn,
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
