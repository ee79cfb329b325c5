/*
 * catalyst-sync's state, shared by its parts, each calling only those
 * below it:
 *   handler.c   the consume-loop handler: the state's set-up, sync.v1
 *               commands decoded, ReplicateRows runs applied,
 *               CheckConsistency and ResyncTable dispatched, changes.v1
 *               batches handed to apply.c
 *   check.c     CheckConsistency: chunked checksums, narrowing, confirmation
 *               of suspects after catching up, repair, report
 *   resync.c    ResyncTable: COPY out of the primary streamed into the replica
 *   monitor.c   the monitoring thread: lag, table sizes and tuples on both
 *               sides, slowest statements
 *   pending.c   changes.v1 positions (the group's committed offsets, the high
 *               watermarks) and the catch-up a check runs
 *   applier.c   the applier thread: a changes.v1 batch's transaction runs
 *               on the replica while the loop decodes the next; settle()
 *   apply.c     ChangeBatch (changes.v1) and ReplicateRows (sync.v1) changes
 *               applied to the replica, one version-checked transaction per
 *               range of messages (common/cat_apply)
 *   sessions.c  the loop's PostgreSQL sessions (replica, primary): working
 *               connections, and what follows a failed statement
 *
 * The consume loop runs on one thread, and a check or a resync runs inside
 * it (the loop is not polled meanwhile: max.poll.interval.ms covers the
 * longest command, see main.c). Beside it run the applier (the replica's
 * connection is its own while a job runs: the loop drains it first), the
 * HTTP thread (readiness, metric renders) and the monitor thread; what
 * they read is atomic.
 */
#ifndef SYNC_SYNC_H
#define SYNC_SYNC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "catalyst/v1/commands.pb-c.h"
#include "cat_apply.h"
#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_err.h"
#include "cat_kafka.h"
#include "cat_metrics.h"
#include "cat_pg.h"

#define SYNC_WORKER	    "catalyst-sync"
#define SYNC_MAX_TABLES	    8
#define SYNC_MAX_PARTITIONS 1024
#define SYNC_DONE_IDS	    64 /* commands remembered as done, so a retried batch skips them */
#define SYNC_JOB_KEEP	    256 /* message slots a job keeps between batches */
#define SYNC_JOB_ROWS	    10000 /* changes of one applier transaction (batches of several partitions, \
				   * or a part of one) */

/* The worker's own settings, filled from its config table (main.c binds
 * each row that is catalyst-sync's alone to a field); strings are borrowed
 * from the cat_config_t. The shared blocks (Kafka, the primary's
 * PostgreSQL, HTTP, consumer, tombstones, versions) are read by their
 * modules. */
typedef struct sync_settings {
	const char *replica_url, *replica_name;
	const char *group; /* NULL: catalyst-sync-<replica_name> */
	const char *bind;
	long long port;
	long long check_chunk_size, check_settle_ms, check_max_suspects;
	long long monitor_interval_s, slow_statements, slow_min_calls;
	long long events_timeout_ms;
} sync_settings_t;

typedef struct sync_table_metrics {
	cat_metric_t *applied[2]; /* [is_delete] */
	cat_metric_t *skipped[2];
	cat_metric_t *size_bytes[2]; /* [replica] */
	cat_metric_t *live[2];
	cat_metric_t *dead[2];
	cat_metric_t *rows_diff; /* gauge: differences the last check found */
} sync_table_metrics_t;

/* One replica transaction for the applier: the decoded messages (owned) of
 * the changes.v1 batches staged since the last one, of any partitions,
 * resolved into `apply` when it is handed over. */
typedef struct sync_job {
	Catalyst__V1__ChangeBatch **batches;
	size_t n, cap;
	size_t n_changes;
	cat_apply_t *apply;
	int64_t newest_commit; /* committed_at_us of its newest change */
	bool staged;	       /* holds a batch (with changes or not) */
	int64_t next[SYNC_MAX_PARTITIONS]; /* per partition, the offset after its last message (-1: none) */
} sync_job_t;

typedef struct sync {
	int64_t version_max_ahead_s; /* CATALYST_VERSION_MAX_AHEAD_S: for ReplicateRows */
	const cat_config_t *cfg;
	sync_settings_t settings; /* copied (its strings are cfg's) */
	char group[256];
	char changes_topic[256];
	char sync_topic[256];
	char events_topic[256];
	cat_producer_t *events; /* borrowed */

	cat_pg_session_t *replica_pg; /* the loop's */
	cat_pg_session_t *primary_pg; /* for checks and resyncs, connected when needed */
	PGconn *replica;	      /* their current connections (sessions.c) */
	PGconn *primary;
	cat_apply_t *apply;
	cat_sql_pruner_t pruner; /* the replica's tombstones, between batches */

	/* changes.v1: the offset after the last one this process applied, per
	 * partition (-1: none yet); written by the loop, read by the monitor */
	atomic_llong applied_next[SYNC_MAX_PARTITIONS];
	atomic_llong last_commit_us; /* committed_at_us of the newest change applied */

	/* the applier (applier.c): jobs[job_fill] is the loop's to fill, the
	 * other may run; the rest is guarded by applier_lock */
	sync_job_t jobs[2];
	int job_fill;
	pthread_t applier;
	bool applier_started, applier_inited;
	pthread_mutex_t applier_lock;
	pthread_cond_t applier_wake; /* a job, or stop */
	pthread_cond_t applier_done; /* the job ran */
	sync_job_t *applier_job;     /* running (NULL: idle) */
	bool applier_stop;
	bool applier_failed;	     /* a job failed since the last settle */
	char applier_error[512];
	bool direct; /* batches applied in the loop's thread until a settle succeeds */

	/* the check's catch-up consumer (no group membership), opened when needed */
	rd_kafka_t *pending_rk;

	char done_ids[SYNC_DONE_IDS][129];
	size_t n_done;

	/* the monitor thread */
	pthread_t monitor;
	bool monitor_started;
	pthread_mutex_t monitor_lock;
	pthread_cond_t monitor_wake;
	bool monitor_stop;

	cat_metrics_t *metrics;
	sync_table_metrics_t m_tables[SYNC_MAX_TABLES];
	cat_metric_t *m_committed;
	cat_metric_t *m_rolled_back;
	cat_metric_t *m_tx_seconds;
	cat_metric_t *m_reconnects;
	cat_metric_t *m_lag_messages;
	cat_metric_t *m_lag_seconds;
	cat_metric_t *m_last_commit_ts;
	cat_metric_t *m_since_commit;
	cat_metric_t *m_checks[2]; /* [ok] */
	cat_metric_t *m_check_rows;
	cat_metric_t *m_check_repaired;
	cat_metric_t *m_check_seconds;
	cat_metric_t *m_resyncs;
	cat_metric_t *m_resync_rows;
	cat_metric_t *m_stmt_present[2];
	cat_metric_t *m_stmt_mean[2][16];
	cat_metric_t *m_stmt_calls[2][16];
	cat_metric_t *m_stmt_queryid[2][16];
	cat_metric_t *m_monitor_errors;
	cat_metric_t *m_pruned;
} sync_t;

/* handler.c */
/* The handler state, with its sessions on the replica and the primary (not
 * connected yet): `settings` is copied (`cfg` must outlive the state: its
 * strings); `events` and `metrics` are borrowed. */
cat_err_t sync_new(sync_t **out, const cat_config_t *cfg, const sync_settings_t *settings, const char *group,
		   cat_producer_t *events, cat_metrics_t *metrics, char *errstr,
		   size_t errstr_size) CAT_MUST_CHECK;
void sync_destroy(sync_t *sync);
cat_err_t sync_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size);
/* applier.c: the handler's settle(): every submitted transaction committed
 * (else retriable, and the next batches are applied directly). */
cat_err_t sync_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size);
bool sync_ready(void *opaque, char *reason, size_t reason_size);

/* check.c: runs one CheckConsistency and publishes its report. */
cat_err_t sync_check(sync_t *sync, const Catalyst__V1__SyncCommand__CheckConsistency *check,
		     const char *command_id, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* resync.c: runs one ResyncTable and publishes its event. */
cat_err_t sync_resync(sync_t *sync, const Catalyst__V1__SyncCommand__ResyncTable *resync,
		      const char *command_id, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* pending.c */
/* The partition count of `topic` from the cluster's metadata. */
cat_err_t sync_topic_partitions(rd_kafka_t *rk, const char *topic, int *n, char *errstr,
				size_t errstr_size) CAT_MUST_CHECK;
/* A client for offsets queries and assigned reads: group.id is the sync
 * group (to read its committed offsets), it never joins or commits. */
cat_err_t sync_offsets_client(rd_kafka_t **out, const cat_config_t *cfg, const char *group,
			      const char *client_id, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* For each partition of changes.v1: where applying stands (the later of the
 * group's committed offset and what this process applied) and the high
 * watermark. `next` and `high` hold *n entries (at most SYNC_MAX_PARTITIONS). */
cat_err_t sync_positions(sync_t *sync, rd_kafka_t *rk, int64_t *next, int64_t *high, int *n, char *errstr,
			 size_t errstr_size) CAT_MUST_CHECK;
/* Applies everything on changes.v1 up to the high watermarks of now: the
 * changes the primary committed and published so far, so that a row that
 * differs only because its change is in flight is equal afterwards. */
cat_err_t sync_catch_up(sync_t *sync, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* monitor.c */
cat_err_t sync_monitor_start(sync_t *sync, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
void sync_monitor_stop(sync_t *sync);

/* applier.c */
cat_err_t sync_applier_start(sync_t *sync, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Waits for the job in flight, stops the thread, frees the jobs. */
void sync_applier_stop(sync_t *sync);
/* Hands over the staged job, then waits until no job runs: the replica's
 * connection is the loop's then. */
void sync_applier_drain(sync_t *sync);
/* Stages the decoded messages [from, to) of a changes.v1 batch (they are
 * the job's after: msgs[].decoded NULL); the staged job goes to the applier
 * once it holds SYNC_JOB_ROWS changes (after the job before is done), or at
 * the settle or a drain. A job that cannot be resolved fails the settle. */
cat_err_t sync_applier_submit(sync_t *sync, cat_batch_t *batch, size_t from, size_t to, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;

/* apply.c */
/* True if `batch` is of changes.v1 (its messages ChangeBatch), else of sync.v1. */
bool sync_is_changes(const sync_t *sync, const cat_batch_t *batch);
/* Checks every Change of a list: a known op and a valid record (else
 * CAT_ERR_PERMANENT, `reason` saying which change and why). */
cat_err_t sync_validate_changes(Catalyst__V1__Change *const *changes, size_t n, char *reason,
				size_t reason_size) CAT_MUST_CHECK;
/* The changes of decoded messages [from, to) of `batch` (ChangeBatch, or
 * the ReplicateRows among sync.v1 commands) in one replica transaction; if
 * the replica refuses it permanently and one message held changes, that
 * message is marked permanent and CAT_OK returned. */
cat_err_t sync_apply_range(sync_t *sync, cat_batch_t *batch, size_t from, size_t to, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;
/* Decodes the ChangeBatch messages [from, to) of `batch`; those that do
 * not decode are marked permanent. */
void sync_decode_changes(cat_batch_t *batch, size_t from, size_t to);
/* Fills `apply` with the changes of n ChangeBatch messages (n_changes in
 * all; source: the index in `batches`) and resolves it. */
cat_err_t sync_resolve(sync_t *sync, cat_apply_t *apply, Catalyst__V1__ChangeBatch *const *batches, size_t n,
		       size_t n_changes, int64_t *newest_commit, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* A resolved set in one replica transaction, counted in the metrics;
 * after a failure the connection is rolled back or dropped. */
cat_err_t sync_transaction(sync_t *sync, cat_apply_t *apply, int64_t newest_commit, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;
/* Applies the ChangeBatch messages of `batch` (a changes.v1 range) in one
 * transaction, in the calling thread; messages that do not decode are
 * marked permanent. */
cat_err_t sync_apply_changes(sync_t *sync, cat_batch_t *batch, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;
/* Frees the decoded messages of `batch` (ChangeBatch or SyncCommand). */
void sync_free_decoded(const sync_t *sync, cat_batch_t *batch);

/* sessions.c */
/* Working connections in sync->replica and sync->primary (opened when
 * needed, the schema checked): retriable when unreachable, fatal for
 * credentials or schema. */
cat_err_t sync_ensure_replica(sync_t *sync, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t sync_ensure_primary(sync_t *sync, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* After a failed statement on one side (&sync->replica or &sync->primary):
 * rolled back, or a broken connection dropped (the side then NULL). */
void sync_after_failure(sync_t *sync, PGconn **side);

#endif /* SYNC_SYNC_H */
