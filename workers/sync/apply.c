/*
 * Change application on the replica: the Change lists of ChangeBatch
 * (changes.v1) and ReplicateRows (sync.v1) messages resolved per key and
 * applied in one version-checked transaction (common/cat_apply, the
 * statements catalyst-persist uses on the primary), the rows counted, the
 * lag gauges and the applied positions kept.
 *
 * Used by the handler (handler.c: batches of the loop) and by the catch-up
 * of a check (pending.c); the replica's connection is sessions.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_pg.h"
#include "cat_time.h"
#include "sync.h"

bool sync_is_changes(const sync_t *sync, const cat_batch_t *batch)
{
	return strcmp(batch->topic, sync->changes_topic) == 0;
}

cat_err_t sync_validate_changes(Catalyst__V1__Change *const *changes, size_t n, char *reason,
				size_t reason_size)
{
	for (size_t i = 0; i < n; i++) {
		const Catalyst__V1__Change *change = changes[i];
		char inner[200];

		if (!change->has_op || (change->op != CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT &&
					change->op != CATALYST__V1__WRITE_OP__WRITE_OP_DELETE))
			return cat_err_set(reason, reason_size, CAT_ERR_PERMANENT,
					   "change %zu: unknown op %d", i,
					   change->has_op ? (int)change->op : 0);
		if (cat_codec_record_validate(change->record,
					      change->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE, inner,
					      sizeof(inner)) != CAT_OK)
			return cat_err_set(reason, reason_size, CAT_ERR_PERMANENT, "change %zu: %s", i,
					   inner);
	}
	return CAT_OK;
}

static void decode_changes(cat_msg_t *msg)
{
	Catalyst__V1__ChangeBatch *cb;

	if (cat_codec_change_batch_decode(msg->rkm->payload, msg->rkm->len, &cb, msg->reason, sizeof(msg->reason)) !=
	    CAT_OK) {
		msg->result = CAT_ERR_PERMANENT;
		return;
	}
	if (cb->meta && cb->meta->has_issued_at_us)
		msg->issued_at_us = cb->meta->issued_at_us;
	msg->decoded = cb;
}

void sync_free_decoded(const sync_t *sync, cat_batch_t *batch)
{
	bool changes = sync_is_changes(sync, batch);

	for (size_t i = 0; i < batch->n; i++) {
		if (changes)
			catalyst__v1__change_batch__free_unpacked(batch->msgs[i].decoded, NULL);
		else
			catalyst__v1__sync_command__free_unpacked(batch->msgs[i].decoded, NULL);
		batch->msgs[i].decoded = NULL;
	}
}

/* The changes of a decoded message (ChangeBatch or ReplicateRows). */
static Catalyst__V1__Change **changes_of(const sync_t *sync, const cat_batch_t *batch, size_t i, size_t *n)
{
	*n = 0;
	if (!batch->msgs[i].decoded)
		return NULL;
	if (sync_is_changes(sync, batch)) {
		Catalyst__V1__ChangeBatch *cb = batch->msgs[i].decoded;

		*n = cb->n_changes;
		return cb->changes;
	} else {
		Catalyst__V1__SyncCommand *cmd = batch->msgs[i].decoded;

		if (cmd->action_case != CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE)
			return NULL;
		*n = cmd->replicate->n_changes;
		return cmd->replicate->changes;
	}
}

static void count_rows(sync_t *sync, const cat_apply_t *apply)
{
	for (size_t i = 0; i < cat_apply_n(apply); i++) {
		const cat_apply_write_t *w = cat_apply_write(apply, i);
		const sync_table_metrics_t *m = &sync->m_tables[w->table];

		cat_metrics_inc(w->applied ? m->applied[w->is_delete] : m->skipped[w->is_delete]);
	}
}

cat_err_t sync_transaction(sync_t *sync, cat_apply_t *apply, int64_t newest_commit, char *errstr,
			  size_t errstr_size)
{
	int64_t started_us = cat_time_mono_us();
	cat_err_t err;

	if ((err = sync_ensure_replica(sync, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_pg_begin(sync->replica, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_apply_run(apply, sync->replica, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_commit(sync->replica, errstr, errstr_size)) != CAT_OK) {
		cat_metrics_inc(sync->m_rolled_back);
		sync_after_failure(sync, &sync->replica);
		return err;
	}
	cat_metrics_inc(sync->m_committed);
	count_rows(sync, apply);
	cat_metrics_observe(sync->m_tx_seconds, (double)(cat_time_mono_us() - started_us) / 1e6);
	if (newest_commit > 0) {
		long long last = atomic_load(&sync->last_commit_us);

		while (newest_commit > last && !atomic_compare_exchange_weak(&sync->last_commit_us, &last, newest_commit))
			;
		cat_metrics_set_double(sync->m_lag_seconds, (double)(cat_time_now_us() - newest_commit) / 1e6);
		cat_metrics_set_double(sync->m_last_commit_ts, (double)atomic_load(&sync->last_commit_us) / 1e6);
	}
	return CAT_OK;
}

/* Adds a list of changes of message `source` to the set. */
static cat_err_t add_changes(cat_apply_t *apply, size_t source, Catalyst__V1__Change *const *changes, size_t n,
			     char *errstr, size_t errstr_size)
{
	for (size_t c = 0; c < n; c++)
		if (cat_apply_add(apply, source, changes[c]->record,
				  changes[c]->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE) != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not add a change");
	return CAT_OK;
}

cat_err_t sync_resolve(sync_t *sync, cat_apply_t *apply, Catalyst__V1__ChangeBatch *const *batches, size_t n,
		       size_t n_changes, int64_t *newest_commit, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	(void)sync;
	*newest_commit = 0;
	if ((err = cat_apply_begin(apply, n_changes, errstr, errstr_size)) != CAT_OK)
		return err;
	for (size_t i = 0; i < n; i++) {
		if ((err = add_changes(apply, i, batches[i]->changes, batches[i]->n_changes, errstr, errstr_size)) !=
		    CAT_OK)
			return err;
		if (batches[i]->has_committed_at_us && batches[i]->committed_at_us > *newest_commit)
			*newest_commit = batches[i]->committed_at_us;
	}
	cat_apply_resolve(apply);
	return CAT_OK;
}

cat_err_t sync_apply_range(sync_t *sync, cat_batch_t *batch, size_t from, size_t to, char *errstr,
			   size_t errstr_size)
{
	int64_t newest_commit = 0;
	size_t n_total = 0, n_msgs = 0, last = from;
	cat_err_t err;

	for (size_t i = from; i < to; i++) {
		size_t n;

		if (changes_of(sync, batch, i, &n) && n > 0) {
			n_total += n;
			n_msgs++;
			last = i;
		}
	}
	if (n_total == 0)
		return CAT_OK;
	if ((err = cat_apply_begin(sync->apply, n_total, errstr, errstr_size)) != CAT_OK)
		return err;
	for (size_t i = from; i < to; i++) {
		size_t n;
		Catalyst__V1__Change **changes = changes_of(sync, batch, i, &n);

		if ((err = add_changes(sync->apply, i, changes, n, errstr, errstr_size)) != CAT_OK)
			goto out;
		if (n > 0 && sync_is_changes(sync, batch)) {
			const Catalyst__V1__ChangeBatch *cb = batch->msgs[i].decoded;

			if (cb->has_committed_at_us && cb->committed_at_us > newest_commit)
				newest_commit = cb->committed_at_us;
		}
	}
	cat_apply_resolve(sync->apply);

	err = sync_transaction(sync, sync->apply, newest_commit, errstr, errstr_size);
	if (err == CAT_ERR_PERMANENT && n_msgs == 1) {
		/* the one message holding changes is the one the replica refuses */
		batch->msgs[last].result = CAT_ERR_PERMANENT;
		snprintf(batch->msgs[last].reason, sizeof(batch->msgs[last].reason), "%s", errstr);
		err = CAT_OK;
	}
out:
	cat_apply_release(sync->apply);
	return err;
}

void sync_decode_changes(cat_batch_t *batch, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		if (batch->msgs[i].result == CAT_OK && !batch->msgs[i].decoded)
			decode_changes(&batch->msgs[i]);
}

cat_err_t sync_apply_changes(sync_t *sync, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	sync_decode_changes(batch, 0, batch->n);
	err = sync_apply_range(sync, batch, 0, batch->n, errstr, errstr_size);
	if (err == CAT_OK && batch->n > 0 && batch->partition >= 0 &&
	    batch->partition < SYNC_MAX_PARTITIONS) {
		long long next = batch->msgs[batch->n - 1].rkm->offset + 1;

		if (next > atomic_load(&sync->applied_next[batch->partition]))
			atomic_store(&sync->applied_next[batch->partition], next);
	}
	sync_free_decoded(sync, batch);
	return err;
}
