#include "handler.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_apply.h"
#include "cat_codec.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_sql.h"
#include "cat_time.h"
#include "changes.h"

#define MAX_TABLES    8
#define PRODUCER_NAME "catalyst-persist"

#define ROUND_KEEP_BYTES    (256 * 1024) /* memory a round keeps for the next: record bytes, */
#define ROUND_KEEP_COMMANDS 512	  /* and commands (a burst's goes back: idle RSS) */

/* The decoded commands of the batches since the last commit, their records'
 * bytes (copied: a revoked partition's messages are freed), and where each
 * batch came from. */
typedef struct round {
	persist_command_t *commands;
	size_t *record_at; /* offset of each command's record in bytes, SIZE_MAX: none */
	size_t n_commands, cap_commands, cap_record_at;
	uint8_t *bytes;
	size_t n_bytes, cap_bytes;
	persist_source_t *sources;
	char (*topics)[256]; /* sources[i].topic's text */
	size_t n_sources, cap_sources, cap_topics;
} round_t;

typedef struct table_metrics {
	cat_metric_t *applied[2]; /* [is_delete] */
	cat_metric_t *skipped[2];
} table_metrics_t;

/*
 * The committer: a thread that commits one round while the loop's thread
 * fetches, decodes and stages the next (PostgreSQL works while the client
 * does). It owns the session, the apply and the changes publication while
 * busy; the loop's thread hands it a round and collects the result, under
 * the lock, so only one thread uses any of them at a time.
 */
typedef struct committer {
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool busy;    /* rounds[1 - staging] is being committed */
	bool quit;    /* destroying: the thread ends */
	cat_err_t err; /* the last round's result, until collected */
	char errstr[512];
} committer_t;

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

	round_t rounds[2];	 /* rounds[staging]: the writes the next transaction applies */
	int staging;		 /* the other round is the committer's */
	committer_t committer;
	size_t round_max;	 /* CATALYST_BATCH_SIZE: a round this large commits at once */
	bool round_failed;	 /* a transaction of this round failed: the settle says so */
	bool round_refused;	 /* ... and the database refused a write */
	char round_error[512];
	bool one_by_one;	 /* each batch its own transaction, until a settle succeeds */
};

static void round_clear(round_t *round);
static void *committer_main(void *opaque);

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
	persist->round_max = (size_t)cat_config_int(cfg, "CATALYST_BATCH_SIZE");

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
	if (pthread_mutex_init(&persist->committer.lock, NULL) != 0 ||
	    pthread_cond_init(&persist->committer.cond, NULL) != 0 ||
	    pthread_create(&persist->committer.thread, NULL, committer_main, persist) != 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "cannot start the committer thread");
		goto error;
	}
	persist->committer.started = true;
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
	if (persist->committer.started) {
		pthread_mutex_lock(&persist->committer.lock);
		persist->committer.quit = true;
		pthread_cond_broadcast(&persist->committer.cond);
		pthread_mutex_unlock(&persist->committer.lock);
		pthread_join(persist->committer.thread, NULL);
		pthread_cond_destroy(&persist->committer.cond);
		pthread_mutex_destroy(&persist->committer.lock);
	}
	for (int r = 0; r < 2; r++) {
		round_t *round = &persist->rounds[r];

		round_clear(round);
		free(round->commands);
		free(round->record_at);
		free(round->bytes);
		free(round->sources);
		free(round->topics);
	}
	persist_changes_destroy(persist->changes);
	cat_pg_session_free(persist->pg);
	cat_apply_destroy(persist->apply);
	free(persist);
}

/* --- decoding and staging ----------------------------------------------------------------- */

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

/* Grows an array of `size`-byte items to hold `need`; 0, or -1 out of memory. */
static int grow(void **items, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 64;
	void *grown;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	if (!(grown = realloc(*items, n * size)))
		return -1;
	*items = grown;
	*cap = n;
	return 0;
}

/* Moves the batch's decoded commands into the round: the command, and a
 * copy of its record's bytes (the message itself may be gone, revoked, by
 * the time the round commits). */
static cat_err_t stage(persist_t *persist, cat_batch_t *batch, size_t n_valid, char *errstr, size_t errstr_size)
{
	round_t *round = &persist->rounds[persist->staging];
	persist_source_t *source;
	size_t bytes = 0;

	/* a record's bytes are a slice of its message: room for the messages */
	for (size_t i = 0; i < batch->n; i++)
		if (batch->msgs[i].decoded)
			bytes += batch->msgs[i].rkm->len;
	if (grow((void **)&round->commands, &round->cap_commands, round->n_commands + n_valid,
		 sizeof(*round->commands)) ||
	    grow((void **)&round->record_at, &round->cap_record_at, round->n_commands + n_valid,
		 sizeof(*round->record_at)) ||
	    grow((void **)&round->sources, &round->cap_sources, round->n_sources + 1, sizeof(*round->sources)) ||
	    grow((void **)&round->bytes, &round->cap_bytes, round->n_bytes + bytes, 1) ||
	    strlen(batch->topic) >= sizeof(round->topics[0]) ||
	    grow((void **)&round->topics, &round->cap_topics, round->n_sources + 1, sizeof(*round->topics)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory staging a batch");

	source = &round->sources[round->n_sources];
	snprintf(round->topics[round->n_sources], sizeof(round->topics[0]), "%s", batch->topic);
	*source = (persist_source_t){ .partition = batch->partition,
				      .first_offset = batch->msgs[0].rkm->offset,
				      .last_offset = batch->msgs[batch->n - 1].rkm->offset,
				      .from = round->n_commands };
	round->n_sources++;
	for (size_t i = 0; i < batch->n; i++) {
		cat_msg_t *msg = &batch->msgs[i];
		persist_command_t *command;
		const uint8_t *record;
		size_t len;

		if (!msg->decoded)
			continue;
		command = &round->commands[round->n_commands];
		*command = (persist_command_t){ .cmd = msg->decoded };
		round->record_at[round->n_commands] = SIZE_MAX;
		if (cat_codec_write_record_bytes(msg->rkm->payload, msg->rkm->len, &record, &len)) {
			memcpy(round->bytes + round->n_bytes, record, len);
			round->record_at[round->n_commands] = round->n_bytes;
			command->record_len = len;
			round->n_bytes += len;
		}
		msg->decoded = NULL; /* the round's now */
		round->n_commands++;
		source->n++;
	}
	return CAT_OK;
}

/* Frees the round's commands; keeps its memory for the next, up to a size. */
static void round_clear(round_t *round)
{
	for (size_t i = 0; i < round->n_commands; i++)
		catalyst__v1__write_command__free_unpacked((Catalyst__V1__WriteCommand *)round->commands[i].cmd, NULL);
	round->n_commands = round->n_sources = round->n_bytes = 0;
	if (round->cap_bytes > ROUND_KEEP_BYTES) {
		free(round->bytes);
		round->bytes = NULL;
		round->cap_bytes = 0;
	}
	if (round->cap_commands > ROUND_KEEP_COMMANDS) {
		free(round->commands);
		free(round->record_at);
		round->commands = NULL;
		round->record_at = NULL;
		round->cap_commands = round->cap_record_at = 0;
	}
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

/* Applies the round's writes, resolved per key (common/cat_apply), in one
 * transaction, and sends what the primary holds after it on changes.v1,
 * source by source; the round is empty after. */
static cat_err_t flush(persist_t *persist, round_t *round, char *errstr, size_t errstr_size)
{
	int64_t started_us = cat_time_mono_us(), committed_us;
	cat_err_t err = CAT_OK;

	if (round->n_commands == 0) {
		round_clear(round);
		return CAT_OK;
	}
	for (size_t i = 0; i < round->n_commands; i++)
		if (round->record_at[i] != SIZE_MAX)
			round->commands[i].record = round->bytes + round->record_at[i];
	for (size_t s = 0; s < round->n_sources; s++)
		round->sources[s].topic = round->topics[s];
	if ((err = cat_apply_begin(persist->apply, round->n_commands, errstr, errstr_size)) != CAT_OK)
		goto out;
	for (size_t i = 0; i < round->n_commands; i++) {
		const Catalyst__V1__WriteCommand *cmd = round->commands[i].cmd;

		if (cat_apply_add(persist->apply, i, cmd->record, cmd->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE) !=
		    CAT_OK) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					  "command %zu: a validated record without a table", i);
			goto out;
		}
	}
	cat_apply_resolve(persist->apply);
	if ((err = transaction(persist, errstr, errstr_size)) != CAT_OK)
		goto out;
	committed_us = cat_time_mono_us();
	cat_metrics_observe(persist->m_tx_seconds, (double)(committed_us - started_us) / 1e6);
	for (size_t s = 0; s < round->n_sources && err == CAT_OK; s++)
		err = persist_changes_publish(persist->changes, round->commands, &round->sources[s], persist->apply,
					      cat_time_now_us(), errstr, errstr_size);
	if (err == CAT_OK)
		cat_metrics_observe(persist->m_publish_seconds,
				    (double)(cat_time_mono_us() - committed_us) / 1e6);
out:
	cat_apply_release(persist->apply);
	round_clear(round);
	return err;
}

/* --- the committer ------------------------------------------------------------------------ */

static void *committer_main(void *opaque)
{
	persist_t *persist = opaque;
	committer_t *c = &persist->committer;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		round_t *round;
		char errstr[sizeof(c->errstr)];
		cat_err_t err;

		while (!c->busy && !c->quit)
			pthread_cond_wait(&c->cond, &c->lock);
		if (!c->busy)
			break;
		round = &persist->rounds[1 - persist->staging];
		pthread_mutex_unlock(&c->lock);

		cat_sql_pruner_run(&persist->pruner, cat_pg_session_conn(persist->pg));
		err = flush(persist, round, errstr, sizeof(errstr));

		pthread_mutex_lock(&c->lock);
		c->err = err;
		if (err != CAT_OK)
			snprintf(c->errstr, sizeof(c->errstr), "%s", errstr);
		c->busy = false;
		pthread_cond_broadcast(&c->cond);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* Waits until the committer is idle; the result of the round it committed
 * last (CAT_OK when none since the last call). */
static cat_err_t commit_wait(persist_t *persist, char *errstr, size_t errstr_size)
{
	committer_t *c = &persist->committer;
	cat_err_t err;

	pthread_mutex_lock(&c->lock);
	while (c->busy)
		pthread_cond_wait(&c->cond, &c->lock);
	err = c->err;
	if (err != CAT_OK)
		cat_err_set(errstr, errstr_size, err, "%s", c->errstr);
	c->err = CAT_OK;
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* Hands the staged round to the idle committer; the loop's thread stages
 * into the other from now on. */
static void commit_start(persist_t *persist)
{
	committer_t *c = &persist->committer;

	pthread_mutex_lock(&c->lock);
	persist->staging = 1 - persist->staging;
	c->busy = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

/* Waits for the round in flight, then hands over the staged one (when it
 * holds any write). */
static cat_err_t commit_next(persist_t *persist, char *errstr, size_t errstr_size)
{
	cat_err_t err = commit_wait(persist, errstr, errstr_size);

	if (err == CAT_OK && persist->rounds[persist->staging].n_commands > 0)
		commit_start(persist);
	return err;
}

/* --- the handler ------------------------------------------------------------------------------ */

/*
 * A batch's writes join the staged round. A round commits as one
 * transaction, on the committer's thread, once it holds CATALYST_BATCH_SIZE
 * writes (while the next is staged) or when the loop settles (nothing more
 * at hand: the batches of every partition that came meanwhile go together;
 * the settle waits for it). A round that fails is reported by the settle
 * (retriable), and the loop applies every unsettled batch again; when the
 * database refused a write (a permanent error), those batches go one by
 * one, each its own transaction, waited for, so that the loop can isolate
 * the write and dead-letter it.
 */
cat_err_t persist_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	persist_t *persist = opaque;
	const round_t *staged = &persist->rounds[persist->staging];
	int64_t started_us = cat_time_mono_us();
	size_t n_valid = 0, last_valid = 0;
	cat_err_t err;

	if (persist->round_failed) /* the settle applies these again */
		return CAT_OK;
	err = decode_batch(persist, batch, &n_valid, &last_valid, errstr, errstr_size);
	if (err != CAT_OK || n_valid == 0)
		goto out;
	cat_metrics_observe(persist->m_decode_seconds, (double)(cat_time_mono_us() - started_us) / 1e6);
	if (persist->one_by_one) {
		if ((err = commit_wait(persist, errstr, errstr_size)) == CAT_OK &&
		    (err = stage(persist, batch, n_valid, errstr, errstr_size)) == CAT_OK) {
			commit_start(persist);
			err = commit_wait(persist, errstr, errstr_size);
		}
		if (err == CAT_ERR_PERMANENT && n_valid == 1) {
			/* the batch's only write is the one the database refuses */
			batch->msgs[last_valid].result = CAT_ERR_PERMANENT;
			snprintf(batch->msgs[last_valid].reason, sizeof(batch->msgs[last_valid].reason), "%s",
				 errstr);
			err = CAT_OK;
		}
		goto out;
	}
	if (staged->n_commands > 0 && staged->n_commands + n_valid > persist->round_max &&
	    (err = commit_next(persist, errstr, errstr_size)) != CAT_OK)
		goto failed;
	staged = &persist->rounds[persist->staging];
	if ((err = stage(persist, batch, n_valid, errstr, errstr_size)) != CAT_OK)
		goto out;
	if (staged->n_commands >= persist->round_max && (err = commit_next(persist, errstr, errstr_size)) != CAT_OK)
		goto failed;
	goto out;

failed:
	/* earlier batches were in the round: the settle fails, and every
	 * unsettled batch is applied again */
	persist->round_failed = true;
	persist->round_refused = err == CAT_ERR_PERMANENT;
	snprintf(persist->round_error, sizeof(persist->round_error), "%s", errstr);
	err = CAT_OK;
out:
	free_decoded(batch);
	return err;
}

cat_err_t persist_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size)
{
	persist_t *persist = opaque;
	char reason[512];
	cat_err_t err;

	/* the round in flight, then the staged one (unless a round failed:
	 * every unsettled batch is applied again), committed */
	err = commit_wait(persist, reason, sizeof(reason));
	if (err == CAT_OK && !persist->round_failed && persist->rounds[persist->staging].n_commands > 0) {
		commit_start(persist);
		err = commit_wait(persist, reason, sizeof(reason));
	}
	if (err != CAT_OK && !persist->round_failed) {
		persist->round_failed = true;
		persist->round_refused = err == CAT_ERR_PERMANENT;
		snprintf(persist->round_error, sizeof(persist->round_error), "%s", reason);
	}
	round_clear(&persist->rounds[persist->staging]);
	if (persist->round_failed) {
		/* what the round's earlier transactions sent settles as it may:
		 * those batches are applied, and published, again */
		cat_err_t ignored = persist_changes_settle(persist->changes, timeout_ms, reason, sizeof(reason));

		(void)ignored;
		persist->round_failed = false;
		if (persist->round_refused && !persist->one_by_one) {
			persist->one_by_one = true;
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "the database refused a write (%s): applying the batches one by one",
					   persist->round_error);
		}
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "%s", persist->round_error);
	}
	err = persist_changes_settle(persist->changes, timeout_ms, errstr, errstr_size);
	if (err == CAT_OK)
		persist->one_by_one = false;
	return err;
}
