#include "handler.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cat_apply.h"
#include "cat_codec.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_sql.h"
#include "cat_time.h"
#include "changes.h"

#define MAX_TABLES    8
#define PRODUCER_NAME "catalyst-persist"

typedef struct table_metrics {
	cat_metric_t *applied[2]; /* [is_delete] */
	cat_metric_t *skipped[2];
} table_metrics_t;

struct persist {
	cat_pg_session_t *pg; /* the primary */
	int64_t version_max_ahead_s; /* CATALYST_VERSION_MAX_AHEAD_S */
	cat_apply_t *apply; /* the batch's writes, resolved, and their statements */
	persist_changes_t *changes; /* what the primary holds after a commit, on changes.v1 */

	table_metrics_t m_tables[MAX_TABLES];
	cat_metric_t *m_committed;
	cat_metric_t *m_rolled_back;
	cat_metric_t *m_tx_seconds;
	cat_metric_t *m_publish_seconds;
	cat_metric_t *m_decode_seconds;
	persist_changes_metrics_t m_changes;
	cat_metric_t *m_reconnects;
	cat_metric_t *m_pruned;

	cat_sql_pruner_t pruner; /* tombstone pruning, between batches */
};

static const double duration_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
					  0.25,	 0.5,	 1,	2.5,  5,     10,   30};

/* --- PostgreSQL ----------------------------------------------------------------------- */

cat_err_t persist_connect(persist_t *persist, char *errstr, size_t errstr_size)
{
	PGconn *conn;

	return cat_pg_session_ensure(persist->pg, &conn, errstr, errstr_size);
}

bool persist_ready(void *opaque, char *reason, size_t reason_size)
{
	persist_t *persist = opaque;

	/* A batch failing on the database already makes the loop unready
	 * ("retrying: ..."); this covers the time between batches. */
	return cat_pg_session_ping(persist->pg, reason, reason_size);
}

/* --- set-up ------------------------------------------------------------------------------ */

/* A series of catalyst_persist_apply_duration_seconds. */
static cat_metric_t *stage_histogram(cat_metrics_t *metrics, const char *stage)
{
	return cat_metrics_histogram(metrics, "catalyst_persist_apply_duration_seconds",
				     "time to apply a batch (decode and resolve its commands, run its transaction, "
				     "send its changes) and to settle (the changes acknowledged, several batches at "
				     "once)",
				     duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]), "stage",
				     stage, NULL);
}

static void register_metrics(persist_t *persist, cat_metrics_t *metrics)
{
	static const char *const ops[2] = {"upsert", "delete"};

	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		for (int d = 0; d < 2; d++) {
			persist->m_tables[t].applied[d] =
				cat_metrics_counter(metrics, "catalyst_persist_rows_applied_total",
						    "rows the primary inserted, updated or deleted", "table",
						    cat_schema_tables[t].name, "op", ops[d], NULL);
			persist->m_tables[t].skipped[d] =
				cat_metrics_counter(metrics, "catalyst_persist_rows_skipped_total",
						    "writes that changed nothing: the stored row or "
						    "tombstone was as new or newer "
						    "(or a delete found no row)",
						    "table", cat_schema_tables[t].name, "op", ops[d], NULL);
		}
	}
	persist->m_committed = cat_metrics_counter(metrics, "catalyst_persist_transactions_total",
						   "batch transactions", "result", "committed", NULL);
	persist->m_rolled_back = cat_metrics_counter(metrics, "catalyst_persist_transactions_total",
						     "batch transactions", "result", "rolled_back", NULL);
	persist->m_tx_seconds = stage_histogram(metrics, "transaction");
	persist->m_publish_seconds = stage_histogram(metrics, "publish");
	persist->m_decode_seconds = stage_histogram(metrics, "decode");
	persist->m_changes.settle_seconds = stage_histogram(metrics, "settle");
	persist->m_changes.rows =
		cat_metrics_counter(metrics, "catalyst_persist_changes_published_total",
				    "committed rows published on changes.v1 (acknowledged)", NULL);
	persist->m_changes.messages =
		cat_metrics_counter(metrics, "catalyst_persist_change_batches_total",
				    "ChangeBatch messages acknowledged on changes.v1", NULL);
	persist->m_reconnects = cat_metrics_counter(metrics, "catalyst_persist_pg_reconnects_total",
						    "PostgreSQL connections reopened after a loss", NULL);
	persist->m_pruned =
		cat_metrics_counter(metrics, "catalyst_persist_tombstones_pruned_total",
				    "tombstones deleted after CATALYST_TOMBSTONE_RETENTION_S", NULL);
}

cat_err_t persist_new(persist_t **out, const cat_config_t *cfg, const persist_settings_t *settings,
		      cat_producer_t *producer, cat_metrics_t *metrics, char *errstr, size_t errstr_size)
{
	persist_t *persist;
	cat_pg_session_opts_t pg_opts;
	cat_err_t err;

	*out = NULL;
	persist = calloc(1, sizeof(*persist));
	if (!persist)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	persist->version_max_ahead_s = cat_config_int(cfg, "CATALYST_VERSION_MAX_AHEAD_S");

	if (cat_schema_n_tables > MAX_TABLES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the schema has more than %d tables",
				  MAX_TABLES);
		goto error;
	}
	if ((err = cat_apply_new(&persist->apply, errstr, errstr_size)) != CAT_OK)
		goto error;
	/* what an upsert the version check skipped is published as depends on
	 * what the table holds instead */
	cat_apply_read_skipped(persist->apply, true);
	register_metrics(persist, metrics);
	cat_pg_session_opts_from_config(&pg_opts, cfg, PRODUCER_NAME);
	pg_opts.schema_version = CAT_SCHEMA_VERSION;
	pg_opts.reconnects = persist->m_reconnects;
	if ((err = cat_pg_session_new(&persist->pg, &pg_opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	cat_sql_pruner_init(&persist->pruner, cfg, persist->m_pruned);
	if ((err = persist_changes_new(&persist->changes, cfg, producer, (int)settings->changes_timeout_ms,
				       &persist->m_changes, errstr, errstr_size)) != CAT_OK)
		goto error;
	*out = persist;
	return CAT_OK;

error:
	persist_destroy(persist);
	return err;
}

void persist_destroy(persist_t *persist)
{
	if (!persist)
		return;
	persist_changes_destroy(persist->changes);
	cat_pg_session_free(persist->pg);
	cat_apply_destroy(persist->apply);
	free(persist);
}

/* --- decoding and resolving ---------------------------------------------------------------- */

/* Decodes every message; marks the ones that do not decode or validate. */
static cat_err_t decode_batch(const persist_t *persist, cat_batch_t *batch, size_t *n_valid,
			      size_t *last_valid, char *errstr, size_t errstr_size)
{
	int64_t now_us = cat_time_now_us();

	*n_valid = 0;
	for (size_t i = 0; i < batch->n; i++) {
		cat_msg_t *msg = &batch->msgs[i];
		Catalyst__V1__WriteCommand *cmd = NULL;
		cat_err_t err;

		err = cat_codec_write_decode(msg->rkm->payload, msg->rkm->len, &cmd, msg->reason,
					     sizeof(msg->reason));
		if (err == CAT_ERR_PERMANENT) {
			msg->result = CAT_ERR_PERMANENT;
			continue;
		}
		if (err != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "%s", msg->reason);
		if (cat_codec_version_check(cat_codec_record_version(cmd->record), persist->version_max_ahead_s,
					    now_us, msg->reason, sizeof(msg->reason)) != CAT_OK) {
			catalyst__v1__write_command__free_unpacked(cmd, NULL);
			msg->result = CAT_ERR_PERMANENT;
			continue;
		}
		msg->decoded = cmd;
		if (cmd->meta && cmd->meta->has_issued_at_us)
			msg->issued_at_us = cmd->meta->issued_at_us;
		(*n_valid)++;
		*last_valid = i;
	}
	return CAT_OK;
}

static void free_decoded(cat_batch_t *batch)
{
	for (size_t i = 0; i < batch->n; i++) {
		catalyst__v1__write_command__free_unpacked(batch->msgs[i].decoded, NULL);
		batch->msgs[i].decoded = NULL;
	}
}

/* The batch's writes, resolved per key (common/cat_apply). */
static cat_err_t resolve(persist_t *persist, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err = cat_apply_begin(persist->apply, batch->n, errstr, errstr_size);

	if (err != CAT_OK)
		return err;
	for (size_t i = 0; i < batch->n; i++) {
		const Catalyst__V1__WriteCommand *cmd = batch->msgs[i].decoded;

		if (cmd && cat_apply_add(persist->apply, i, cmd->record,
					 cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE) != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "message %zu: a validated record without a table", i);
	}
	cat_apply_resolve(persist->apply);
	return CAT_OK;
}

/* --- the transaction ------------------------------------------------------------------------- */

static void count_rows(persist_t *persist)
{
	for (size_t i = 0; i < cat_apply_n(persist->apply); i++) {
		const cat_apply_write_t *write = cat_apply_write(persist->apply, i);
		const table_metrics_t *m = &persist->m_tables[write->table];

		cat_metrics_inc(write->applied ? m->applied[write->is_delete] : m->skipped[write->is_delete]);
	}
}

/* BEGIN, each table's deletes then upserts (round by round), COMMIT. */
static cat_err_t transaction(persist_t *persist, char *errstr, size_t errstr_size)
{
	PGconn *conn;
	cat_err_t err;

	if ((err = cat_pg_session_ensure(persist->pg, &conn, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_pg_begin(conn, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_apply_run(persist->apply, conn, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_commit(conn, errstr, errstr_size)) != CAT_OK)
		goto error;
	cat_metrics_inc(persist->m_committed);
	count_rows(persist);
	return CAT_OK;

error:
	cat_metrics_inc(persist->m_rolled_back);
	cat_pg_session_failed(persist->pg);
	return err;
}

/* --- the handler ------------------------------------------------------------------------------ */

cat_err_t persist_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	persist_t *persist = opaque;
	int64_t started_us = cat_time_mono_us(), decoded_us, committed_us;
	size_t n_valid = 0, last_valid = 0;
	cat_err_t err;

	cat_sql_pruner_run(&persist->pruner, cat_pg_session_conn(persist->pg));
	err = decode_batch(persist, batch, &n_valid, &last_valid, errstr, errstr_size);
	if (err != CAT_OK || n_valid == 0)
		goto out;
	if ((err = resolve(persist, batch, errstr, errstr_size)) != CAT_OK)
		goto out;
	decoded_us = cat_time_mono_us();
	cat_metrics_observe(persist->m_decode_seconds, (double)(decoded_us - started_us) / 1e6);
	err = transaction(persist, errstr, errstr_size);
	if (err == CAT_ERR_PERMANENT && n_valid == 1) {
		/* the batch's only write is the one the database refuses */
		batch->msgs[last_valid].result = CAT_ERR_PERMANENT;
		snprintf(batch->msgs[last_valid].reason, sizeof(batch->msgs[last_valid].reason), "%s",
			 errstr);
		err = CAT_OK;
		goto out;
	}
	if (err != CAT_OK)
		goto out;
	committed_us = cat_time_mono_us();
	cat_metrics_observe(persist->m_tx_seconds, (double)(committed_us - decoded_us) / 1e6);

	err = persist_changes_publish(persist->changes, batch, persist->apply, cat_time_now_us(), errstr,
				      errstr_size);
	if (err == CAT_OK)
		cat_metrics_observe(persist->m_publish_seconds,
				    (double)(cat_time_mono_us() - committed_us) / 1e6);

out:
	free_decoded(batch);
	cat_apply_release(persist->apply);
	return err;
}

cat_err_t persist_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size)
{
	persist_t *persist = opaque;

	return persist_changes_settle(persist->changes, timeout_ms, errstr, errstr_size);
}
