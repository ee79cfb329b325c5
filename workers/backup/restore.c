/*
 * Restore and Verify. A full backup is replayed by psql (spawned with argv,
 * --single-transaction, ON_ERROR_STOP) fed from the decompressed stream; a
 * table backup goes through COPY into a temporary table, then a
 * version-checked upsert (the newer version wins, in every table) of the
 * rows the target's row_tombstones do not hold deleted at their version or
 * later (a delete stands, as it does for catalyst-persist). Every object's sha256 is
 * checked while it streams; on a mismatch nothing is committed (psql is
 * killed before its input ends; the COPY is failed and rolled back).
 */
#define _GNU_SOURCE /* asprintf */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "backup.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_rowsum.h"
#include "cat_schema.h"

static int to_fd(const void *data, size_t len, void *opaque)
{
	int fd = *(int *)opaque;
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return 1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int to_copy(const void *data, size_t len, void *opaque)
{
	return PQputCopyData(opaque, data, (int)len) == 1 ? 0 : 1;
}

static bool wanted(const char *table, const char *const *tables, size_t n)
{
	if (n == 0)
		return true;
	for (size_t i = 0; i < n; i++)
		if (strcmp(tables[i], table) == 0)
			return true;
	return false;
}

static cat_err_t restore_full(backup_t *backup, json_t *obj, PGconn *target, char *errstr, size_t errstr_size)
{
	const char *argv[] = {backup->settings.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
			      "-f", "-", NULL};
	const char *key = json_string_value(json_object_get(obj, "key"));
	const char *sha = json_string_value(json_object_get(obj, "sha256"));
	backup_child_t child;
	cat_err_t err;

	if ((err = backup_child_spawn(&child, argv, target, NULL, NULL, true, errstr, errstr_size)))
		return err;
	err = backup_gz_in_read(backup, key, sha, to_fd, &child.fd, NULL, errstr, errstr_size);
	if (err != CAT_OK && strstr(errstr, "the reader failed")) {
		/* psql stopped reading: its own error says why */
		return backup_child_wait(&child, "psql", errstr, errstr_size) == CAT_OK ? err
											: CAT_ERR_RETRIABLE;
	}
	if (err != CAT_OK) {
		/* psql has not seen the end of its input: nothing was committed */
		backup_child_kill(&child);
		return err;
	}
	return backup_child_wait(&child, "psql", errstr, errstr_size);
}

static cat_err_t restore_table(backup_t *backup, json_t *obj, PGconn *target, int64_t *rows, char *errstr,
			       size_t errstr_size)
{
	const char *key = json_string_value(json_object_get(obj, "key"));
	const char *sha = json_string_value(json_object_get(obj, "sha256"));
	const cat_table_t *t = cat_schema_table(json_string_value(json_object_get(obj, "table")));
	char *sql = NULL, *cols = NULL, *sets = NULL, what[96];
	PGresult *res = NULL;
	size_t slen = 1;
	cat_err_t err;

	if (!t || !key || !sha)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "manifest object %s is invalid",
				   key ? key : "?");
	snprintf(what, sizeof(what), "restore %s", t->name);
	for (size_t i = 0; i < t->n_columns; i++)
		slen += 2 * strlen(t->columns[i].name) + 16;
	cols = backup_column_list(t);
	sets = calloc(1, slen);
	if (!cols || !sets) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < t->n_columns; i++) {
		const char *c = t->columns[i].name;

		if (t->columns[i].primary_key)
			continue;
		if (*sets)
			strcat(sets, ", ");
		sprintf(sets + strlen(sets), "%s = EXCLUDED.%s", c, c);
	}
	if ((err = cat_pg_exec(target, "BEGIN", 0, NULL, NULL, errstr, errstr_size)))
		goto out;
	if (asprintf(&sql,
		     "CREATE TEMP TABLE catalyst_restore_stage (LIKE %s INCLUDING DEFAULTS) ON COMMIT DROP",
		     t->name) < 0 ||
	    (err = cat_pg_exec(target, sql, 0, NULL, NULL, errstr, errstr_size)))
		goto rollback;
	free(sql);
	if (asprintf(&sql, "COPY catalyst_restore_stage (%s) FROM STDIN", cols) < 0) {
		sql = NULL;
		goto rollback;
	}
	if ((err = backup_copy_start(target, sql, PGRES_COPY_IN, what, errstr, errstr_size)))
		goto rollback;
	err = backup_gz_in_read(backup, key, sha, to_copy, target, NULL, errstr, errstr_size);
	if (err != CAT_OK) {
		PQputCopyEnd(target, "the backup object failed its check");
		PQclear(PQgetResult(target));
		goto rollback;
	}
	if ((err = backup_copy_end(target, PQputCopyEnd(target, NULL) == 1, what, errstr, errstr_size)))
		goto rollback;
	free(sql);
	/* a delete stands, as it does for catalyst-persist: a backed-up row no
	 * newer than the target's tombstone of its key stays deleted */
	if (asprintf(&sql,
		     "DELETE FROM catalyst_restore_stage AS s USING row_tombstones AS d "
		     "WHERE d.table_name = $1 AND d.pk = s.%s::text AND d.version >= s.version",
		     t->primary_key) < 0) {
		sql = NULL;
		goto rollback;
	}
	{
		const char *p[] = {t->name};

		if ((err = cat_pg_exec(target, sql, 1, p, &res, errstr, errstr_size)))
			goto rollback;
	}
	if (strtoll(PQcmdTuples(res), NULL, 10) > 0)
		CAT_LOG_INFO("BACKUP", "restore of %s: %s rows not restored, deleted since (row_tombstones)", t->name,
			     PQcmdTuples(res));
	PQclear(res);
	res = NULL;
	free(sql);
	/* a restore reproduces the backed-up rows: the newer version wins,
	 * news_raw included (an incremental holds rows updated out of band) */
	if (!*sets)
		err = asprintf(&sql, "INSERT INTO %s (%s) SELECT %s FROM catalyst_restore_stage ON CONFLICT (%s) DO NOTHING",
			       t->name, cols, cols, t->primary_key) < 0;
	else
		err = asprintf(&sql,
			       "INSERT INTO %s AS t (%s) SELECT %s FROM catalyst_restore_stage ON CONFLICT (%s) DO UPDATE "
			       "SET %s WHERE t.version < EXCLUDED.version",
			       t->name, cols, cols, t->primary_key, sets) < 0;
	if (err) {
		sql = NULL;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto rollback;
	}
	if ((err = cat_pg_exec(target, sql, 0, NULL, &res, errstr, errstr_size)))
		goto rollback;
	*rows += strtoll(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	res = NULL;
	err = cat_pg_commit(target, errstr, errstr_size);
	goto out;
rollback:
	if (err == CAT_OK)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	cat_pg_rollback(target, NULL, 0);
out:
	PQclear(res);
	free(sql);
	free(cols);
	free(sets);
	return err;
}

cat_err_t backup_restore(backup_t *backup, const void *manifest_v, PGconn *target, const char *target_url,
			 const char *target_db, const char *const *tables, size_t n_tables, int64_t *rows,
			 char *errstr, size_t errstr_size)
{
	json_t *manifest = (json_t *)(uintptr_t)manifest_v;
	const char *kind = json_string_value(json_object_get(manifest, "kind"));
	json_t *objects = json_object_get(manifest, "objects"), *obj;
	size_t i;
	cat_err_t err;

	*rows = 0;
	if (!kind || !json_is_array(objects))
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "the manifest has no kind or objects");
	if (strcmp(kind, "full") == 0) {
		if (n_tables)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
					   "a full backup is restored whole: give no tables");
		return restore_full(backup, json_array_get(objects, 0), target, errstr, errstr_size);
	}
	for (size_t t = 0; t < n_tables; t++) {
		bool found = false;

		json_array_foreach(objects, i, obj)
		{
			const char *table = json_string_value(json_object_get(obj, "table"));

			if (table && strcmp(table, tables[t]) == 0)
				found = true;
		}
		if (!found)
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "table %s is not in this backup",
					   tables[t]);
	}
	json_array_foreach(objects, i, obj)
	{
		const char *table = json_string_value(json_object_get(obj, "table"));

		if (!table || !wanted(table, tables, n_tables))
			continue;
		if (*backup->stop)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "interrupted by shutdown");
		if ((err = restore_table(backup, obj, target, rows, errstr, errstr_size)))
			return err;
	}
	(void)target_url;
	(void)target_db;
	return CAT_OK;
}

/* --- verify ------------------------------------------------------------------------------------------ */

/* "<before> <quoted identifier><after>" */
static cat_err_t exec_ident(PGconn *conn, const char *before, const char *name, const char *after, char *errstr,
			    size_t errstr_size)
{
	char *ident = PQescapeIdentifier(conn, name, strlen(name)), *sql = NULL;
	cat_err_t err;

	if (!ident || asprintf(&sql, "%s %s%s", before, ident, after) < 0) {
		PQfreemem(ident);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	PQfreemem(ident);
	err = cat_pg_exec(conn, sql, 0, NULL, NULL, errstr, errstr_size);
	free(sql);
	return err;
}

/* The source's schema into the scratch database: pg_dump -s | psql. */
static cat_err_t copy_schema(backup_t *backup, PGconn *scratch, char *errstr, size_t errstr_size)
{
	const char *dump_argv[] = {backup->settings.pg_dump, "--schema-only", "--no-owner", "--no-privileges",
				   NULL};
	const char *psql_argv[] = {backup->settings.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
				   "--single-transaction", "-f", "-", NULL};
	backup_child_t dump, psql;
	char buf[65536];
	cat_err_t err;

	if ((err = backup_child_spawn(&dump, dump_argv, cat_pg_session_conn(backup->pg), NULL, NULL, false,
				      errstr, errstr_size)))
		return err;
	if ((err = backup_child_spawn(&psql, psql_argv, scratch, NULL, NULL, true, errstr, errstr_size))) {
		backup_child_kill(&dump);
		return err;
	}
	for (;;) {
		ssize_t n = read(dump.fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (to_fd(buf, (size_t)n, &psql.fd) != 0)
			break;
	}
	err = backup_child_wait(&dump, "pg_dump --schema-only", errstr, errstr_size);
	if (err == CAT_OK)
		err = backup_child_wait(&psql, "psql (schema)", errstr, errstr_size);
	backup_child_kill(&dump);
	backup_child_kill(&psql);
	return err;
}

static cat_err_t scan_row(const char *row, size_t len, void *opaque, char *errstr, size_t errstr_size)
{
	(void)errstr;
	(void)errstr_size;
	cat_rowscan_feed(opaque, row, len);
	return CAT_OK;
}

/* Row count and checksum of a restored table. algo NULL: as the server
 * computes them for manifests of format 1 (backup_table_stats); CAT_ROWSUM_ALGO:
 * over COPY text (the session settings applied by the caller), of the whole
 * table as pg_dump copies it (whole) or of the schema's columns as a table
 * backup copies them. */
static cat_err_t restored_stats(PGconn *conn, const char *algo, const char *table, bool whole,
				backup_table_stat_t *st, char *errstr, size_t errstr_size)
{
	const cat_table_t *t = cat_schema_table(table);
	cat_rowscan_t *scan = NULL;
	cat_rowsum_t sum;
	char *sql = NULL, *cols = NULL, what[96];
	cat_err_t err;

	if (!algo)
		return backup_table_stats(conn, table, NULL, st, errstr, errstr_size);
	if (!t)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "unknown table %s", table);
	if (!(cols = backup_column_list(t)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	snprintf(what, sizeof(what), "read %s back", table);
	if ((whole ? asprintf(&sql, "COPY %s TO STDOUT", t->name)
		   : asprintf(&sql, "COPY (SELECT %s FROM %s) TO STDOUT", cols, t->name)) < 0) {
		sql = NULL;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	if ((err = cat_rowscan_new(&scan, -1, errstr, errstr_size)) ||
	    (err = backup_copy_start(conn, sql, PGRES_COPY_OUT, what, errstr, errstr_size)) ||
	    (err = backup_copy_rows(conn, what, scan_row, scan, errstr, errstr_size)) ||
	    (err = cat_rowscan_result(scan, &sum, errstr, errstr_size)))
		goto out;
	snprintf(st->table, sizeof(st->table), "%s", table);
	st->rows = sum.rows;
	cat_rowsum_hex(&sum, st->checksum);
	st->max_version = -1;
out:
	cat_rowscan_free(scan);
	free(sql);
	free(cols);
	return err;
}

/* Whether a restored table has the figures the manifest holds; if not, the
 * report says so (appended at *used). */
static bool as_backed_up(const backup_table_stat_t *st, int64_t want_rows, const char *want_checksum, char *report,
			 size_t report_size, size_t *used)
{
	bool same_checksum = strcmp(st->checksum, want_checksum) == 0;

	if (st->rows == want_rows && same_checksum)
		return true;
	*used += (size_t)snprintf(report + *used, *used < report_size ? report_size - *used : 0,
				  "%s: %lld rows restored, %lld backed up (checksums %s); ", st->table,
				  (long long)st->rows, (long long)want_rows, same_checksum ? "equal" : "differ");
	return false;
}

cat_err_t backup_verify(backup_t *backup, const char *backup_id, const void *manifest_v, bool *ok,
			char *report, size_t report_size, char *errstr, size_t errstr_size)
{
	json_t *manifest = (json_t *)(uintptr_t)manifest_v;
	const char *kind = json_string_value(json_object_get(manifest, "kind"));
	const char *algo = json_string_value(json_object_get(manifest, "checksum_algo"));
	const char *encoding = json_string_value(json_object_get(manifest, "checksum_encoding"));
	unsigned char md[SHA256_DIGEST_LENGTH];
	char scratch_db[64], restore_err[512] = "";
	PGconn *catalog = cat_pg_session_conn(backup->pg), *scratch = NULL;
	int64_t rows = 0;
	size_t used = 0;
	cat_err_t err;

	*ok = false;
	report[0] = '\0';
	SHA256((const unsigned char *)backup_id, strlen(backup_id), md);
	snprintf(scratch_db, sizeof(scratch_db), "catalyst_verify_%02x%02x%02x%02x%02x%02x", md[0], md[1], md[2], md[3],
		 md[4], md[5]);
	/* a scratch database an interrupted verify left behind goes first */
	if ((err = exec_ident(catalog, "DROP DATABASE IF EXISTS", scratch_db, " WITH (FORCE)", errstr,
			      errstr_size)) ||
	    (err = exec_ident(catalog, "CREATE DATABASE", scratch_db, "", errstr, errstr_size)))
		return err;
	if ((err = backup_pg_connect_like(catalog, scratch_db, "catalyst-backup-verify", &scratch, errstr,
					  errstr_size)))
		goto out;
	if (kind && strcmp(kind, "full") != 0 && (err = copy_schema(backup, scratch, errstr, errstr_size)))
		goto out;

	err = backup_restore(backup, manifest, scratch, NULL, scratch_db, NULL, 0, &rows, restore_err,
			     sizeof(restore_err));
	if (err == CAT_ERR_PERMANENT || (err == CAT_ERR_RETRIABLE && strstr(restore_err, "psql"))) {
		/* the backup is bad (corrupt object, or the dump does not replay) */
		snprintf(report, report_size, "restore failed: %s", restore_err);
		err = CAT_OK;
		goto out;
	}
	if (err != CAT_OK) {
		cat_err_set(errstr, errstr_size, err, "%s", restore_err);
		goto out;
	}

	/* compare with the manifest, which holds the source's figures, computed
	 * the way it says (manifests without checksum_algo: by the server) */
	if (algo && strcmp(algo, CAT_ROWSUM_ALGO) != 0) {
		snprintf(report, report_size, "unknown checksum algorithm %s", algo);
		err = CAT_OK;
		goto out;
	}
	if (algo && (err = cat_pg_exec_script(scratch, CAT_ROWSUM_SESSION_SQL, errstr, errstr_size)))
		goto out;
	if (algo && encoding && *encoding && PQsetClientEncoding(scratch, encoding) != 0) {
		char what[96];

		snprintf(what, sizeof(what), "set client_encoding %s", encoding);
		err = cat_pg_result_error(scratch, NULL, what, errstr, errstr_size); /* retriable */
		goto out;
	}
	*ok = true;
	{
		json_t *objects = json_object_get(manifest, "objects"), *obj;
		size_t i;

		json_array_foreach(objects, i, obj)
		{
			const char *table = json_string_value(json_object_get(obj, "table"));
			json_t *counts = json_object_get(manifest, "row_counts");
			json_t *sums = json_object_get(manifest, "checksums");
			const char *key;
			json_t *v;

			if (table && *table) { /* table backups: one object per table */
				const char *want = json_string_value(json_object_get(obj, "checksum")) ?: "";
				int64_t want_rows = json_integer_value(json_object_get(obj, "rows"));
				backup_table_stat_t st;

				if ((err = restored_stats(scratch, algo, table, false, &st, errstr, errstr_size)))
					goto out;
				*ok = as_backed_up(&st, want_rows, want, report, report_size, &used) && *ok;
				continue;
			}
			json_object_foreach(counts, key, v)
			{
				const char *want = json_string_value(json_object_get(sums, key)) ?: "";
				backup_table_stat_t st;

				if ((err = restored_stats(scratch, algo, key, true, &st, errstr, errstr_size)))
					goto out;
				*ok = as_backed_up(&st, json_integer_value(v), want, report, report_size, &used) && *ok;
			}
		}
	}
	if (*ok)
		snprintf(report, report_size, "restored into a scratch database: every row count and checksum "
					      "equals the source's");
	err = CAT_OK;
out:
	cat_pg_close(scratch);
	{
		char derr[512];

		if (exec_ident(catalog, "DROP DATABASE IF EXISTS", scratch_db, " WITH (FORCE)", derr, sizeof(derr)))
			CAT_LOG_WARN("PG", "could not drop the scratch database %s: %s", scratch_db, derr);
	}
	return err;
}
