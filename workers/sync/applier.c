/*
 * catalyst-sync's applier: the transaction of a changes.v1 batch runs on a
 * thread of its own while the loop decodes and resolves the next batch, so
 * that the replica is not idle while the worker decodes (and the worker not
 * while the replica writes).
 *
 * Two jobs alternate: the loop fills one (ChangeBatch messages of a batch,
 * up to SYNC_JOB_ROWS changes, which the job then owns, resolved into its
 * cat_apply set) while the applier runs the other; submitting waits until
 * the applier is free. So at most two jobs' messages are decoded at once,
 * however large the batch. A
 * batch the loop handed over is settling (common/cat_consumer's settle()):
 * sync_settle() waits until every submitted transaction committed, and only
 * then are the batches' offsets stored.
 *
 * A transaction that fails fails the settle (retriable): the loop applies
 * every unsettled batch again, and until a settle succeeds each batch is
 * applied directly, in the loop's thread (sync_apply_changes), so that a
 * change the replica refuses is isolated and dead-lettered as before, and
 * a fatal error stops the loop. Batches applied after the failure and
 * before the settle are left for that second application.
 *
 * The replica's connection is the applier's while a job runs: the loop
 * touches it (commands, checks, the tombstone pruner) only after
 * sync_applier_drain().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cat_log.h"
#include "cat_time.h"
#include "sync.h"

static void job_clear(sync_job_t *job)
{
	for (size_t i = 0; i < job->n; i++)
		catalyst__v1__change_batch__free_unpacked(job->batches[i], NULL);
	job->n = 0;
	cat_apply_release(job->apply);
	if (job->cap > SYNC_JOB_KEEP) {
		free(job->batches);
		job->batches = NULL;
		job->cap = 0;
	}
}

/* Runs one job, in the applier's thread. */
static void job_run(sync_t *sync, sync_job_t *job)
{
	char errstr[512];
	cat_err_t err;

	cat_sql_pruner_run(&sync->pruner, sync->replica);
	err = sync_transaction(sync, job->apply, job->newest_commit, errstr, sizeof(errstr));
	if (err == CAT_OK) {
		if (job->partition >= 0 && job->partition < SYNC_MAX_PARTITIONS &&
		    job->next_offset > atomic_load(&sync->applied_next[job->partition]))
			atomic_store(&sync->applied_next[job->partition], job->next_offset);
	} else {
		pthread_mutex_lock(&sync->applier_lock);
		if (!sync->applier_failed) {
			sync->applier_failed = true;
			snprintf(sync->applier_error, sizeof(sync->applier_error), "%s", errstr);
		}
		pthread_mutex_unlock(&sync->applier_lock);
	}
	job_clear(job);
}

static void *applier_main(void *opaque)
{
	sync_t *sync = opaque;

	pthread_mutex_lock(&sync->applier_lock);
	for (;;) {
		sync_job_t *job;

		while (!sync->applier_job && !sync->applier_stop)
			pthread_cond_wait(&sync->applier_wake, &sync->applier_lock);
		if (!sync->applier_job)
			break;
		job = sync->applier_job;
		pthread_mutex_unlock(&sync->applier_lock);
		job_run(sync, job);
		pthread_mutex_lock(&sync->applier_lock);
		sync->applier_job = NULL;
		pthread_cond_broadcast(&sync->applier_done);
	}
	pthread_mutex_unlock(&sync->applier_lock);
	return NULL;
}

cat_err_t sync_applier_start(sync_t *sync, char *errstr, size_t errstr_size)
{
	for (size_t j = 0; j < 2; j++)
		if (cat_apply_new(&sync->jobs[j].apply, errstr, errstr_size) != CAT_OK)
			return CAT_ERR_FATAL;
	pthread_mutex_init(&sync->applier_lock, NULL);
	pthread_cond_init(&sync->applier_wake, NULL);
	pthread_cond_init(&sync->applier_done, NULL);
	sync->applier_inited = true;
	if (pthread_create(&sync->applier, NULL, applier_main, sync) != 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not start the applier thread");
	sync->applier_started = true;
	return CAT_OK;
}

void sync_applier_stop(sync_t *sync)
{
	if (sync->applier_started) {
		pthread_mutex_lock(&sync->applier_lock);
		sync->applier_stop = true;
		pthread_cond_broadcast(&sync->applier_wake);
		pthread_mutex_unlock(&sync->applier_lock);
		pthread_join(sync->applier, NULL); /* after the job in flight, if any */
		sync->applier_started = false;
	}
	for (size_t j = 0; j < 2; j++) {
		if (sync->jobs[j].apply)
			job_clear(&sync->jobs[j]);
		free(sync->jobs[j].batches);
		sync->jobs[j].batches = NULL;
		cat_apply_destroy(sync->jobs[j].apply);
		sync->jobs[j].apply = NULL;
	}
	if (sync->applier_inited) {
		pthread_cond_destroy(&sync->applier_done);
		pthread_cond_destroy(&sync->applier_wake);
		pthread_mutex_destroy(&sync->applier_lock);
		sync->applier_inited = false;
	}
}

/* Waits (the lock held) until no job runs, at most until `deadline_us`
 * (monotonic; 0: no limit); false on timeout. */
static bool wait_idle_locked(sync_t *sync, int64_t deadline_us)
{
	while (sync->applier_job) {
		struct timespec ts;
		int64_t left_us;

		if (!deadline_us) {
			pthread_cond_wait(&sync->applier_done, &sync->applier_lock);
			continue;
		}
		if ((left_us = deadline_us - cat_time_mono_us()) <= 0)
			return false;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)(left_us / 1000000);
		ts.tv_nsec += (long)(left_us % 1000000) * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&sync->applier_done, &sync->applier_lock, &ts);
	}
	return true;
}

void sync_applier_drain(sync_t *sync)
{
	if (!sync->applier_started)
		return;
	pthread_mutex_lock(&sync->applier_lock);
	wait_idle_locked(sync, 0);
	pthread_mutex_unlock(&sync->applier_lock);
}

cat_err_t sync_applier_submit(sync_t *sync, cat_batch_t *batch, size_t from, size_t to, char *errstr,
			      size_t errstr_size)
{
	sync_job_t *job = &sync->jobs[sync->job_fill];
	size_t n_changes = 0;
	bool failed;
	cat_err_t err;

	for (size_t i = from; i < to; i++) {
		const Catalyst__V1__ChangeBatch *cb = batch->msgs[i].decoded;

		if (cb)
			n_changes += cb->n_changes;
	}
	job->partition = batch->partition;
	job->next_offset = to > from ? batch->msgs[to - 1].rkm->offset + 1 : -1;
	if (n_changes == 0) {
		/* nothing to write: it stands applied once what came before is */
		pthread_mutex_lock(&sync->applier_lock);
		wait_idle_locked(sync, 0);
		failed = sync->applier_failed;
		pthread_mutex_unlock(&sync->applier_lock);
		if (!failed && job->partition >= 0 && job->partition < SYNC_MAX_PARTITIONS &&
		    job->next_offset > atomic_load(&sync->applied_next[job->partition]))
			atomic_store(&sync->applied_next[job->partition], job->next_offset);
		return CAT_OK;
	}
	if (job->cap < to - from) {
		void *grown = realloc(job->batches, (to - from) * sizeof(*job->batches));

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		job->batches = grown;
		job->cap = to - from;
	}
	/* the decoded messages are the job's now; resolved while the other job runs */
	for (size_t i = from; i < to; i++)
		if (batch->msgs[i].decoded) {
			job->batches[job->n++] = batch->msgs[i].decoded;
			batch->msgs[i].decoded = NULL;
		}
	if ((err = sync_resolve(sync, job->apply, job->batches, job->n, n_changes, &job->newest_commit, errstr,
				errstr_size)) != CAT_OK) {
		job_clear(job);
		return err;
	}

	pthread_mutex_lock(&sync->applier_lock);
	wait_idle_locked(sync, 0);
	failed = sync->applier_failed;
	if (!failed) {
		sync->applier_job = job;
		pthread_cond_signal(&sync->applier_wake);
	}
	pthread_mutex_unlock(&sync->applier_lock);
	if (failed)
		job_clear(job); /* the settle fails: the batch is applied again */
	else
		sync->job_fill ^= 1;
	return CAT_OK;
}

cat_err_t sync_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size)
{
	sync_t *sync = opaque;
	cat_err_t err = CAT_OK;

	pthread_mutex_lock(&sync->applier_lock);
	if (!wait_idle_locked(sync, cat_time_mono_us() + (int64_t)(timeout_ms > 0 ? timeout_ms : 1) * 1000)) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "a replica transaction still runs after %d ms", timeout_ms);
	} else if (sync->applier_failed) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "%s: applying the batches one by one",
				  sync->applier_error);
		sync->applier_failed = false;
		sync->direct = true;
	} else {
		sync->direct = false;
	}
	pthread_mutex_unlock(&sync->applier_lock);
	return err;
}
