/*
 * catalyst-sync's handler for the consume loop: changes.v1 and sync.v1
 * batches applied to the replica.
 *
 * changes.v1 (apply.c): every ChangeBatch of the batch decoded and
 * validated (a message that does not is dead-lettered with the reason),
 * every Change of them resolved per key and applied in one transaction with
 * the statements catalyst-persist uses on the primary (common/cat_apply:
 * upserts replace only an older version, deletes apply to rows not newer
 * and leave a tombstone), so redelivery and reordering converge.
 *
 * sync.v1: SyncCommands for another replica are skipped. Consecutive
 * ReplicateRows are applied like change batches, one transaction per run of
 * them; CheckConsistency and ResyncTable run in order between them. A command
 * that completed is remembered by its command_id, so a batch retried after a
 * later failure does not run it again.
 *
 * Failures: connection loss, SQLSTATE 08/40/53/57P01 -> CAT_ERR_RETRIABLE
 * (the core retries with backoff, nothing is skipped, the connection is
 * reopened); 22/23 -> CAT_ERR_PERMANENT (the core isolates the message);
 * anything else SQL -> CAT_ERR_FATAL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_sql.h"
#include "cat_time.h"
#include "sync.h"

static const double duration_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
					  0.25,	 0.5,	 1,	2.5,  5,     10,   30};
static const double check_buckets[] = {0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600};

bool sync_ready(void *opaque, char *reason, size_t reason_size)
{
	sync_t *sync = opaque;

	/* a failing batch already makes the loop unready ("retrying: ..."); this
	 * covers the time between batches */
	return cat_pg_session_ping(sync->replica_pg, reason, reason_size);
}

/* --- set-up ---------------------------------------------------------------------------------- */

static void register_metrics(sync_t *sync, cat_metrics_t *metrics)
{
	static const char *const ops[2] = {"upsert", "delete"};
	static const char *const sides[2] = {"primary", "replica"};

	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		const char *name = cat_schema_tables[t].name;
		sync_table_metrics_t *m = &sync->m_tables[t];

		for (int d = 0; d < 2; d++) {
			m->applied[d] = cat_metrics_counter(metrics, "catalyst_sync_rows_applied_total",
							    "rows the replica inserted, updated or deleted",
							    "table", name, "op", ops[d], NULL);
			m->skipped[d] = cat_metrics_counter(
				metrics, "catalyst_sync_rows_skipped_total",
				"changes the version check left out (the replica holds as new or newer)",
				"table", name, "op", ops[d], NULL);
			m->size_bytes[d] = cat_metrics_gauge(metrics, "catalyst_sync_table_size_bytes",
							     "pg_total_relation_size of the table", "table",
							     name, "side", sides[d], NULL);
			m->live[d] = cat_metrics_gauge(metrics, "catalyst_sync_table_live_tuples",
						       "n_live_tup of pg_stat_user_tables", "table", name,
						       "side", sides[d], NULL);
			m->dead[d] = cat_metrics_gauge(metrics, "catalyst_sync_table_dead_tuples",
						       "n_dead_tup of pg_stat_user_tables", "table", name,
						       "side", sides[d], NULL);
		}
		m->rows_diff =
			cat_metrics_gauge(metrics, "catalyst_sync_check_differences",
					  "rows the last check of the table found differing (before repair)",
					  "table", name, NULL);
	}
	sync->m_committed = cat_metrics_counter(metrics, "catalyst_sync_transactions_total",
						"replica transactions", "result", "committed", NULL);
	sync->m_rolled_back = cat_metrics_counter(metrics, "catalyst_sync_transactions_total",
						  "replica transactions", "result", "rolled_back", NULL);
	sync->m_tx_seconds = cat_metrics_histogram(
		metrics, "catalyst_sync_apply_duration_seconds", "time to apply a batch to the replica",
		duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]), NULL);
	sync->m_reconnects = cat_metrics_counter(metrics, "catalyst_sync_pg_reconnects_total",
						 "PostgreSQL connections reopened after a loss", NULL);
	sync->m_lag_messages = cat_metrics_gauge(
		metrics, "catalyst_sync_replication_lag_messages",
		"changes.v1 messages not yet applied to the replica, over every partition", NULL);
	sync->m_lag_seconds = cat_metrics_gauge_double(
		metrics, "catalyst_sync_replication_lag_seconds",
		"from the primary's commit of the newest applied change to its commit on the replica", NULL);
	sync->m_last_commit_ts = cat_metrics_gauge_double(
		metrics, "catalyst_sync_last_applied_commit_timestamp_seconds",
		"primary commit time of the newest change applied (Unix seconds)", NULL);
	sync->m_since_commit = cat_metrics_gauge_double(
		metrics, "catalyst_sync_seconds_since_last_applied_commit",
		"seconds since the primary committed the newest change applied to the replica", NULL);
	sync->m_checks[0] = cat_metrics_counter(metrics, "catalyst_sync_checks_total",
						"consistency checks run", "result", "differences", NULL);
	sync->m_checks[1] = cat_metrics_counter(metrics, "catalyst_sync_checks_total",
						"consistency checks run", "result", "consistent", NULL);
	sync->m_check_rows = cat_metrics_counter(metrics, "catalyst_sync_check_rows_total",
						 "primary rows the consistency checks compared", NULL);
	sync->m_check_repaired = cat_metrics_counter(metrics, "catalyst_sync_check_rows_repaired_total",
						     "replica rows repaired by consistency checks", NULL);
	sync->m_check_seconds = cat_metrics_histogram(metrics, "catalyst_sync_check_duration_seconds",
						      "duration of a consistency check", check_buckets,
						      sizeof(check_buckets) / sizeof(check_buckets[0]), NULL);
	sync->m_resyncs =
		cat_metrics_counter(metrics, "catalyst_sync_resyncs_total", "tables resynced", NULL);
	sync->m_resync_rows = cat_metrics_counter(metrics, "catalyst_sync_resync_rows_total",
						  "rows copied by resyncs", NULL);
	sync->m_monitor_errors = cat_metrics_counter(metrics, "catalyst_sync_monitor_errors_total",
						     "monitoring rounds that could not read a source", NULL);
	sync->m_pruned =
		cat_metrics_counter(metrics, "catalyst_sync_tombstones_pruned_total",
				    "replica tombstones deleted after CATALYST_TOMBSTONE_RETENTION_S", NULL);
}

/* Renders: seconds since the newest applied change was committed. */
static void on_render(void *opaque)
{
	sync_t *sync = opaque;
	long long last = atomic_load(&sync->last_commit_us);

	if (last > 0)
		cat_metrics_set_double(sync->m_since_commit, (double)(cat_time_now_us() - last) / 1e6);
}

cat_err_t sync_new(sync_t **out, const cat_config_t *cfg, const sync_settings_t *settings, const char *group,
		   cat_producer_t *events, cat_metrics_t *metrics, char *errstr, size_t errstr_size)
{
	cat_pg_session_opts_t pg_opts;
	sync_t *sync;
	cat_err_t err;

	*out = NULL;
	sync = calloc(1, sizeof(*sync));
	if (!sync)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	sync->cfg = cfg;
	sync->settings = *settings;
	sync->events = events;
	sync->metrics = metrics;
	sync->version_max_ahead_s = cat_config_int(cfg, "CATALYST_VERSION_MAX_AHEAD_S");
	snprintf(sync->group, sizeof(sync->group), "%s", group);
	pthread_mutex_init(&sync->monitor_lock, NULL);
	pthread_cond_init(&sync->monitor_wake, NULL);
	for (size_t p = 0; p < SYNC_MAX_PARTITIONS; p++)
		atomic_init(&sync->applied_next[p], -1);
	cat_kafka_topic(cfg, CAT_TOPIC_CHANGES, sync->changes_topic, sizeof(sync->changes_topic));
	cat_kafka_topic(cfg, CAT_TOPIC_SYNC, sync->sync_topic, sizeof(sync->sync_topic));
	cat_kafka_topic(cfg, CAT_TOPIC_EVENTS, sync->events_topic, sizeof(sync->events_topic));
	if (cat_schema_n_tables > SYNC_MAX_TABLES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the schema has more than %d tables",
				  SYNC_MAX_TABLES);
		goto error;
	}
	if ((err = cat_apply_new(&sync->apply, errstr, errstr_size)) != CAT_OK)
		goto error;
	if ((err = sync_applier_start(sync, errstr, errstr_size)) != CAT_OK)
		goto error;
	register_metrics(sync, metrics);
	/* both sides checked for the schema and set to the canonical session
	 * settings the checksums depend on */
	cat_pg_session_opts_from_config(&pg_opts, cfg, SYNC_WORKER);
	pg_opts.schema_version = CAT_SCHEMA_VERSION;
	pg_opts.on_connect = cat_sql_canonical_session;
	pg_opts.reconnects = sync->m_reconnects;
	if ((err = cat_pg_session_new(&sync->primary_pg, &pg_opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	pg_opts.url = settings->replica_url;
	pg_opts.what = "replica";
	if ((err = cat_pg_session_new(&sync->replica_pg, &pg_opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	cat_sql_pruner_init(&sync->pruner, cfg, sync->m_pruned);
	if ((err = cat_metrics_on_render(metrics, on_render, sync)) != CAT_OK) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	*out = sync;
	return CAT_OK;

error:
	sync_destroy(sync);
	return err;
}

void sync_destroy(sync_t *sync)
{
	if (!sync)
		return;
	sync_monitor_stop(sync);
	sync_applier_stop(sync);
	pthread_cond_destroy(&sync->monitor_wake);
	pthread_mutex_destroy(&sync->monitor_lock);
	if (sync->pending_rk) {
		rd_kafka_consumer_close(sync->pending_rk);
		rd_kafka_destroy(sync->pending_rk);
	}
	cat_pg_session_free(sync->replica_pg);
	cat_pg_session_free(sync->primary_pg);
	cat_apply_destroy(sync->apply);
	free(sync);
}

/* --- decoding ----------------------------------------------------------------------------- */

/* A SyncCommand; NULL decoded (and OK) when it is for another replica. */
static void decode_command(const sync_t *sync, cat_msg_t *msg)
{
	Catalyst__V1__SyncCommand *cmd;
	const char *table = NULL;

	if (cat_codec_sync_command_decode(msg->rkm->payload, msg->rkm->len, &cmd, msg->reason, sizeof(msg->reason)) !=
	    CAT_OK) {
		msg->result = CAT_ERR_PERMANENT;
		return;
	}
	if (cmd->replica && *cmd->replica && strcmp(cmd->replica, sync->settings.replica_name) != 0) {
		catalyst__v1__sync_command__free_unpacked(cmd, NULL);
		return; /* another replica's */
	}
	switch (cmd->action_case) {
	case CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE:
		if (sync_validate_changes(cmd->replicate->changes, cmd->replicate->n_changes, msg->reason,
					  sizeof(msg->reason)) != CAT_OK)
			goto bad;
		/* rows from an operator's command, not from the primary: the
		 * version rule of write.v1 applies */
		for (size_t i = 0; i < cmd->replicate->n_changes; i++)
			if (cat_codec_version_check(cat_codec_record_version(cmd->replicate->changes[i]->record),
						    sync->version_max_ahead_s, cat_time_now_us(), msg->reason,
						    sizeof(msg->reason)) != CAT_OK)
				goto bad;
		break;
	case CATALYST__V1__SYNC_COMMAND__ACTION_CHECK:
		table = cmd->check->table;
		if (cmd->check->has_chunk_size &&
		    (cmd->check->chunk_size < 0 || cmd->check->chunk_size > 1000000)) {
			snprintf(msg->reason, sizeof(msg->reason), "chunk_size %d is not within 0..1000000",
				 (int)cmd->check->chunk_size);
			goto bad;
		}
		if (cmd->check->has_max_rows_per_second && cmd->check->max_rows_per_second < 0) {
			snprintf(msg->reason, sizeof(msg->reason), "max_rows_per_second is negative");
			goto bad;
		}
		break;
	case CATALYST__V1__SYNC_COMMAND__ACTION_RESYNC:
		table = cmd->resync->table;
		break;
	default:
		snprintf(msg->reason, sizeof(msg->reason), "SyncCommand without a known action");
		goto bad;
	}
	if (cmd->action_case != CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE &&
	    !cat_schema_table(table ? table : "")) {
		snprintf(msg->reason, sizeof(msg->reason), "unknown table %.100s", table ? table : "(none)");
		goto bad;
	}
	if (cmd->meta && cmd->meta->has_issued_at_us)
		msg->issued_at_us = cmd->meta->issued_at_us;
	msg->decoded = cmd;
	return;

bad:
	msg->result = CAT_ERR_PERMANENT;
	catalyst__v1__sync_command__free_unpacked(cmd, NULL);
}

/* --- commands -------------------------------------------------------------------------------- */

static bool command_done(const sync_t *sync, const char *id)
{
	for (size_t i = 0; i < sync->n_done && i < SYNC_DONE_IDS; i++)
		if (strcmp(sync->done_ids[i], id) == 0)
			return true;
	return false;
}

static void command_mark_done(sync_t *sync, const char *id)
{
	snprintf(sync->done_ids[sync->n_done % SYNC_DONE_IDS], sizeof(sync->done_ids[0]), "%s", id);
	sync->n_done++;
}

static cat_err_t run_command(sync_t *sync, cat_batch_t *batch, size_t i, char *errstr, size_t errstr_size)
{
	cat_msg_t *msg = &batch->msgs[i];
	const Catalyst__V1__SyncCommand *cmd = msg->decoded;
	char id[129];
	cat_err_t err;

	if (cmd->meta && cmd->meta->command_id && *cmd->meta->command_id)
		snprintf(id, sizeof(id), "%s", cmd->meta->command_id);
	else
		snprintf(id, sizeof(id), "%s/%d/%lld", batch->topic, (int)batch->partition,
			 (long long)msg->rkm->offset);
	if (command_done(sync, id))
		return CAT_OK;
	if (cmd->action_case == CATALYST__V1__SYNC_COMMAND__ACTION_CHECK)
		err = sync_check(sync, cmd->check, id, errstr, errstr_size);
	else
		err = sync_resync(sync, cmd->resync, id, errstr, errstr_size);
	if (err == CAT_ERR_PERMANENT) {
		msg->result = CAT_ERR_PERMANENT;
		snprintf(msg->reason, sizeof(msg->reason), "%s", errstr);
		err = CAT_OK;
	}
	if (err == CAT_OK)
		command_mark_done(sync, id);
	return err;
}

/* sync.v1: runs of ReplicateRows in one transaction each, commands between. */
static cat_err_t apply_commands(sync_t *sync, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	size_t from = 0;
	cat_err_t err;

	for (size_t i = 0; i < batch->n; i++)
		if (batch->msgs[i].result == CAT_OK)
			decode_command(sync, &batch->msgs[i]);
	for (size_t i = 0; i <= batch->n; i++) {
		const Catalyst__V1__SyncCommand *cmd = i < batch->n ? batch->msgs[i].decoded : NULL;

		if (i < batch->n &&
		    (!cmd || cmd->action_case == CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE))
			continue;
		if ((err = sync_apply_range(sync, batch, from, i, errstr, errstr_size)) != CAT_OK)
			return err;
		if (i < batch->n && (err = run_command(sync, batch, i, errstr, errstr_size)) != CAT_OK)
			return err;
		from = i + 1;
	}
	return CAT_OK;
}

/*
 * A changes.v1 batch is decoded here, SYNC_JOB_ROWS changes at a time, and
 * staged for the applier (applier.c), which runs a job's transaction while
 * the next is decoded and staged (batches of every partition at hand go
 * together); the batch's offsets are stored once sync_settle() saw it
 * committed. After a failed
 * transaction, until a settle succeeds, batches are applied here, one
 * transaction each. sync.v1 batches run here once the applier is idle.
 */
cat_err_t sync_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	sync_t *sync = opaque;
	cat_err_t err;

	if (sync_is_changes(sync, batch) && !sync->direct) {
		err = CAT_OK;
		for (size_t from = 0, to; from < batch->n && err == CAT_OK; from = to) {
			size_t rows = 0;

			for (to = from; to < batch->n && (to == from || rows < SYNC_JOB_ROWS); to++) {
				const Catalyst__V1__ChangeBatch *cb;

				sync_decode_changes(batch, to, to + 1);
				if ((cb = batch->msgs[to].decoded))
					rows += cb->n_changes;
			}
			err = sync_applier_submit(sync, batch, from, to, errstr, errstr_size);
		}
		sync_free_decoded(sync, batch);
		return err;
	}
	sync_applier_drain(sync);
	cat_sql_pruner_run(&sync->pruner, sync->replica);
	if (sync_is_changes(sync, batch))
		return sync_apply_changes(sync, batch, errstr, errstr_size);
	err = apply_commands(sync, batch, errstr, errstr_size);
	sync_free_decoded(sync, batch);
	return err;
}
