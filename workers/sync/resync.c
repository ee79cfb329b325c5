/*
 * ResyncTable: the primary's table copied into the replica, streamed.
 *
 * The primary runs COPY (SELECT columns FROM table) TO STDOUT in binary
 * inside a REPEATABLE READ READ ONLY transaction, then the table's
 * tombstones in the same snapshot; each row it sends goes straight on to the
 * replica's COPY table FROM STDIN (PQgetCopyData -> PQputCopyData, one row
 * at a time: memory does not grow with the table). On the replica, in one
 * transaction: the table's tombstones deleted, the table truncated, both
 * copied in, committed; then ANALYZE. Readers of the replica see the old
 * rows until the commit (TRUNCATE holds the table's lock meanwhile).
 *
 * Changes the primary commits after the snapshot reach the replica through
 * the loop afterwards, version-checked, so the replica converges; changes
 * already in the snapshot change nothing when the loop applies them again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_event.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_time.h"
#include "sync.h"

/* Runs a statement that must leave the connection in COPY mode `want`. */
static cat_err_t start_copy(PGconn *conn, const char *side, const char *sql, ExecStatusType want,
			    char *errstr, size_t errstr_size)
{
	PGresult *res = PQexec(conn, sql);
	cat_err_t err = CAT_OK;

	if (!res || PQresultStatus(res) != want) {
		char action[64];

		snprintf(action, sizeof(action), "start COPY on the %s", side);
		err = cat_pg_result_error(conn, res, action, errstr, errstr_size);
	}
	PQclear(res);
	return err;
}

/* The final result of a COPY; *rows from its command tag. */
static cat_err_t end_copy(PGconn *conn, const char *side, long long *rows, char *errstr, size_t errstr_size)
{
	PGresult *res;
	cat_err_t err = CAT_OK;

	while ((res = PQgetResult(conn))) {
		if (err == CAT_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
			char action[64];

			snprintf(action, sizeof(action), "COPY on the %s", side);
			err = cat_pg_result_error(conn, res, action, errstr, errstr_size);
		} else if (err == CAT_OK && rows) {
			*rows = strtoll(PQcmdTuples(res), NULL, 10);
		}
		PQclear(res);
	}
	if (err == CAT_OK && PQstatus(conn) != CONNECTION_OK)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not COPY on the %s: %s",
				  side, PQerrorMessage(conn));
	return err;
}

/* COPY out of the primary into the replica, row by row. */
static cat_err_t stream(sync_t *sync, const char *out_sql, const char *in_sql, long long *rows,
			long long *bytes, char *errstr, size_t errstr_size)
{
	cat_err_t err, end_err;
	char *buf = NULL;
	int len;

	if ((err = start_copy(sync->primary, "primary", out_sql, PGRES_COPY_OUT, errstr, errstr_size)) !=
	    CAT_OK)
		return err;
	if ((err = start_copy(sync->replica, "replica", in_sql, PGRES_COPY_IN, errstr, errstr_size)) !=
	    CAT_OK)
		return err; /* the primary's COPY is dropped with its connection */
	while ((len = PQgetCopyData(sync->primary, &buf, 0)) > 0) {
		int sent = PQputCopyData(sync->replica, buf, len);

		PQfreemem(buf);
		buf = NULL;
		*bytes += len;
		if (sent != 1) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					  "could not send COPY data to the replica: %s",
					  PQerrorMessage(sync->replica));
			break;
		}
	}
	if (err == CAT_OK && len == -2)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "could not read COPY data from the primary: %s",
				  PQerrorMessage(sync->primary));
	if (err != CAT_OK) {
		PQputCopyEnd(sync->replica, "resync failed");
		end_copy(sync->replica, "replica", NULL, NULL, 0);
		return err;
	}
	if ((err = end_copy(sync->primary, "primary", rows, errstr, errstr_size)) != CAT_OK) {
		PQputCopyEnd(sync->replica, "the primary's COPY failed");
		end_copy(sync->replica, "replica", NULL, NULL, 0);
		return err;
	}
	if (PQputCopyEnd(sync->replica, NULL) != 1)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				   "could not end COPY on the replica: %s", PQerrorMessage(sync->replica));
	end_err = end_copy(sync->replica, "replica", NULL, errstr, errstr_size);
	return end_err;
}

cat_err_t sync_resync(sync_t *sync, const Catalyst__V1__SyncCommand__ResyncTable *cmd, const char *command_id,
		      char *errstr, size_t errstr_size)
{
	const cat_table_t *table = cat_schema_table(cmd->table);
	const cat_sql_table_t *st = cat_apply_sql(sync->apply, (size_t)(table - cat_schema_tables));
	int64_t started_us = cat_time_mono_us();
	long long rows = 0, tombstones = 0, bytes = 0, duration_ms;
	char out_rows[2048], in_rows[2048], out_tomb[512], prep[512], analyze[128], message[256];
	cat_err_t err;

	/* names from the compiled-in schema only */
	snprintf(out_rows, sizeof(out_rows), "COPY (SELECT %s FROM %s) TO STDOUT (FORMAT binary)",
		 st->columns, table->name);
	snprintf(in_rows, sizeof(in_rows), "COPY %s (%s) FROM STDIN (FORMAT binary)", table->name,
		 st->columns);
	snprintf(out_tomb, sizeof(out_tomb),
		 "COPY (SELECT table_name, pk, version, deleted_at FROM row_tombstones WHERE table_name = "
		 "'%s') "
		 "TO STDOUT (FORMAT binary)",
		 table->name);
	snprintf(prep, sizeof(prep), "DELETE FROM row_tombstones WHERE table_name = '%s'; TRUNCATE %s",
		 table->name, table->name);
	snprintf(analyze, sizeof(analyze), "ANALYZE %s", table->name);
	CAT_LOG_INFO("RESYNC", "resyncing %s on %s from the primary", table->name,
		     sync->settings.replica_name);

	if ((err = sync_ensure_primary(sync, errstr, errstr_size)) != CAT_OK ||
	    (err = sync_ensure_replica(sync, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_pg_exec_script(sync->primary, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
				      errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_begin(sync->replica, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_exec_script(sync->replica, prep, errstr, errstr_size)) != CAT_OK ||
	    (err = stream(sync, out_rows, in_rows, &rows, &bytes, errstr, errstr_size)) != CAT_OK ||
	    (err = stream(
		     sync, out_tomb,
		     "COPY row_tombstones (table_name, pk, version, deleted_at) FROM STDIN (FORMAT binary)",
		     &tombstones, &bytes, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_commit(sync->replica, errstr, errstr_size)) != CAT_OK) {
		sync_after_failure(sync, &sync->primary);
		sync_after_failure(sync, &sync->replica);
		return err;
	}
	sync_after_failure(sync, &sync->primary); /* ends the read-only transaction */
	if (cat_pg_exec_script(sync->replica, analyze, message, sizeof(message)) != CAT_OK)
		CAT_LOG_WARN("RESYNC", "%s", message);

	duration_ms = (cat_time_mono_us() - started_us) / 1000;
	cat_metrics_inc(sync->m_resyncs);
	cat_metrics_add(sync->m_resync_rows, rows);
	snprintf(message, sizeof(message), "%s on %s: %lld rows and %lld tombstones copied from the primary",
		 table->name, sync->settings.replica_name, rows, tombstones);
	CAT_LOG_INFO("RESYNC", "%s (%lld ms)", message, duration_ms);
	{
		const cat_event_attr_t attrs[] = {{"replica", sync->settings.replica_name},
						  {"table", table->name}};
		const cat_event_counter_t counters[] = {{"rows", rows},
							{"tombstones", tombstones},
							{"bytes", bytes},
							{"duration_ms", duration_ms}};
		cat_event_t event = {.kind = "sync.resync.completed",
				     .subject = table->name,
				     .command_id = command_id,
				     .ok = true,
				     .message = message,
				     .attrs = attrs,
				     .n_attrs = 2,
				     .counters = counters,
				     .n_counters = 4};

		return cat_event_publish(sync->events, sync->events_topic, SYNC_WORKER, &event,
					 (int)sync->settings.events_timeout_ms, errstr, errstr_size);
	}
}
