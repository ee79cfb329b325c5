/*
 * catalyst-sync's applier: the replica's transactions run on a thread of
 * its own while the loop decodes and stages the next, so that the replica
 * is not idle while the worker decodes (and the worker not while the
 * replica writes).
 *
 * Two jobs alternate: the loop stages changes.v1 batches of any partitions
 * into one (their decoded ChangeBatch messages, which the job then owns)
 * while the applier runs the other. A job goes over, resolved into its
 * cat_apply set, once it holds SYNC_JOB_ROWS changes, and at the settle:
 * so a backlog goes in large transactions, and a steady trickle in one
 * transaction per loop cycle for every partition at hand, not one a
 * partition batch. Handing over waits until the applier is free, so at most
 * two jobs' messages are decoded at once. A batch the loop staged is
 * settling (common/cat_consumer's settle()): sync_settle() hands over what
 * is staged and waits until every transaction committed, and only then are
 * the batches' offsets stored.
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
	job->n_changes = 0;
	job->staged = false;
	for (size_t p = 0; p < SYNC_MAX_PARTITIONS; p++)
		job->next[p] = -1;
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
	err = job->n_changes > 0 ? sync_transaction(sync, job->apply, job->newest_commit, errstr, sizeof(errstr))
				 : CAT_OK;
	if (err == CAT_OK) {
		for (size_t p = 0; p < SYNC_MAX_PARTITIONS; p++)
			if (job->next[p] > atomic_load(&sync->applied_next[p]))
				atomic_store(&sync->applied_next[p], job->next[p]);
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
	for (size_t j = 0; j < 2; j++) {
		if (cat_apply_new(&sync->jobs[j].apply, errstr, errstr_size) != CAT_OK)
			return CAT_ERR_FATAL;
		job_clear(&sync->jobs[j]);
	}
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

/* Fails the settle with `errstr` (the first failure is the one told). */
static void fail_settle(sync_t *sync, const char *errstr)
{
	pthread_mutex_lock(&sync->applier_lock);
	if (!sync->applier_failed) {
		sync->applier_failed = true;
		snprintf(sync->applier_error, sizeof(sync->applier_error), "%s", errstr);
	}
	pthread_mutex_unlock(&sync->applier_lock);
}

/* Resolves the staged job and hands it to the applier, once the job
 * before is done; the loop stages into the other one from now on. */
static void dispatch(sync_t *sync)
{
	sync_job_t *job = &sync->jobs[sync->job_fill];
	char errstr[512];
	bool failed;

	if (!job->staged)
		return;
	if (job->n_changes > 0 && sync_resolve(sync, job->apply, job->batches, job->n, job->n_changes,
					       &job->newest_commit, errstr, sizeof(errstr)) != CAT_OK) {
		fail_settle(sync, errstr);
		job_clear(job);
		return;
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
		job_clear(job); /* the settle fails: the batches are applied again */
	else
		sync->job_fill ^= 1;
}

void sync_applier_drain(sync_t *sync)
{
	if (!sync->applier_started)
		return;
	dispatch(sync);
	pthread_mutex_lock(&sync->applier_lock);
	wait_idle_locked(sync, 0);
	pthread_mutex_unlock(&sync->applier_lock);
}

cat_err_t sync_applier_submit(sync_t *sync, cat_batch_t *batch, size_t from, size_t to, char *errstr,
			      size_t errstr_size)
{
	sync_job_t *job = &sync->jobs[sync->job_fill];

	if (to <= from)
		return CAT_OK;
	if (job->cap < job->n + (to - from)) {
		size_t cap = job->n + (to - from);
		void *grown = realloc(job->batches, cap * sizeof(*job->batches));

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		job->batches = grown;
		job->cap = cap;
	}
	/* the decoded messages are the job's now; resolved when it is handed over */
	for (size_t i = from; i < to; i++) {
		Catalyst__V1__ChangeBatch *cb = batch->msgs[i].decoded;

		if (cb) {
			job->n_changes += cb->n_changes;
			job->batches[job->n++] = cb;
			batch->msgs[i].decoded = NULL;
		}
	}
	job->staged = true;
	if (batch->partition >= 0 && batch->partition < SYNC_MAX_PARTITIONS &&
	    batch->msgs[to - 1].rkm->offset + 1 > job->next[batch->partition])
		job->next[batch->partition] = batch->msgs[to - 1].rkm->offset + 1;
	if (job->n_changes >= SYNC_JOB_ROWS)
		dispatch(sync);
	return CAT_OK;
}

cat_err_t sync_settle(void *opaque, int timeout_ms, char *errstr, size_t errstr_size)
{
	sync_t *sync = opaque;
	cat_err_t err = CAT_OK;

	dispatch(sync); /* what is staged, then every job, committed */
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
