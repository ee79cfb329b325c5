/*
 * changes.v1 positions, and the catch-up of a consistency check.
 *
 * A check runs inside the consume loop, so while it runs the replica does
 * not advance: a row the primary changed during the check differs on the
 * replica only because its change is in flight. Before counting such a row
 * as a difference, the check catches up: it reads changes.v1 from where the
 * sync group stands (its committed offset, or further where this process
 * applied more) to the high watermarks of now and applies those changes
 * here, with the same version-checked statements. The loop applies them
 * again later, which changes nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_time.h"
#include "sync.h"

#define REQUEST_TIMEOUT_MS  10000
#define CATCH_UP_TIMEOUT_MS 120000
#define CATCH_UP_BATCH	    256 /* ChangeBatch messages per transaction */

cat_err_t sync_topic_partitions(rd_kafka_t *rk, const char *topic, int *n, char *errstr, size_t errstr_size)
{
	/* the topic may be created after the worker starts: never fatal here */
	if (cat_kafka_topic_partitions(rk, topic, REQUEST_TIMEOUT_MS, n, errstr, errstr_size) != CAT_OK)
		return CAT_ERR_RETRIABLE;
	if (*n > SYNC_MAX_PARTITIONS)
		*n = SYNC_MAX_PARTITIONS;
	return CAT_OK;
}

cat_err_t sync_offsets_client(rd_kafka_t **out, const cat_config_t *cfg, const char *group,
			      const char *client_id, char *errstr, size_t errstr_size)
{
	rd_kafka_conf_t *conf = NULL;
	char kerr[512];
	cat_err_t err;

	*out = NULL;
	if ((err = cat_kafka_conf_new(&conf, cfg, client_id, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_kafka_conf_set(conf, "group.id", group, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, errstr_size)) !=
		    CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, errstr_size)) != CAT_OK) {
		rd_kafka_conf_destroy(conf);
		return err;
	}
	*out = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
	if (!*out) {
		rd_kafka_conf_destroy(conf);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not create a Kafka client: %s",
				   kerr);
	}
	return CAT_OK;
}

cat_err_t sync_positions(sync_t *sync, rd_kafka_t *rk, int64_t *next, int64_t *high, int *n, char *errstr,
			 size_t errstr_size)
{
	rd_kafka_topic_partition_list_t *list = NULL;
	rd_kafka_resp_err_t kerr;
	cat_err_t err;

	if ((err = sync_topic_partitions(rk, sync->changes_topic, n, errstr, errstr_size)) != CAT_OK)
		return err;
	list = rd_kafka_topic_partition_list_new(*n);
	for (int p = 0; p < *n; p++) {
		int64_t lo;

		kerr = rd_kafka_query_watermark_offsets(rk, sync->changes_topic, p, &lo, &high[p],
							REQUEST_TIMEOUT_MS);
		if (kerr) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					  "could not read the offsets of %s [%d]: %s", sync->changes_topic, p,
					  rd_kafka_err2str(kerr));
			goto out;
		}
		next[p] = lo; /* nothing committed: from the first offset */
		rd_kafka_topic_partition_list_add(list, sync->changes_topic, p);
	}
	if ((kerr = rd_kafka_committed(rk, list, REQUEST_TIMEOUT_MS)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "could not read the committed offsets of group %s: %s", sync->group,
				  rd_kafka_err2str(kerr));
		goto out;
	}
	for (int i = 0; i < list->cnt; i++) {
		int p = list->elems[i].partition;
		long long applied = atomic_load(&sync->applied_next[p]);

		if (list->elems[i].offset >= 0 && list->elems[i].offset > next[p])
			next[p] = list->elems[i].offset;
		if (applied > next[p])
			next[p] = applied;
		if (next[p] > high[p])
			next[p] = high[p];
	}
out:
	rd_kafka_topic_partition_list_destroy(list);
	return err;
}

/* Applies msgs[0, n) (one partition's, in order); a message the replica can
 * never take is left for the loop, which dead-letters it. */
static cat_err_t apply_pending(sync_t *sync, int32_t partition, rd_kafka_message_t **rkms, size_t n,
			       char *errstr, size_t errstr_size)
{
	cat_msg_t *msgs = calloc(n, sizeof(*msgs));
	cat_batch_t batch = {sync->changes_topic, partition, msgs, n};
	cat_err_t err;

	if (!msgs)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	for (size_t i = 0; i < n; i++)
		msgs[i].rkm = rkms[i];
	err = sync_apply_changes(sync, &batch, errstr, errstr_size);
	if (err == CAT_ERR_PERMANENT && n > 1) {
		/* one at a time, skipping what the replica refuses */
		for (size_t i = 0; i < n && (err == CAT_OK || err == CAT_ERR_PERMANENT); i++) {
			cat_batch_t one = {sync->changes_topic, partition, &msgs[i], 1};

			msgs[i] = (cat_msg_t){.rkm = rkms[i]};
			err = sync_apply_changes(sync, &one, errstr, errstr_size);
		}
	}
	if (err == CAT_ERR_PERMANENT)
		err = CAT_OK;
	free(msgs);
	return err;
}

cat_err_t sync_catch_up(sync_t *sync, char *errstr, size_t errstr_size)
{
	int64_t *next = calloc(SYNC_MAX_PARTITIONS, sizeof(*next));
	int64_t *high = calloc(SYNC_MAX_PARTITIONS, sizeof(*high));
	rd_kafka_message_t **held = calloc(CATCH_UP_BATCH, sizeof(*held));
	rd_kafka_topic_partition_list_t *assignment = NULL;
	int64_t deadline = cat_time_mono_us() + (int64_t)CATCH_UP_TIMEOUT_MS * 1000;
	size_t n_held = 0;
	int32_t held_partition = -1;
	int n = 0, open = 0;
	long long n_applied = 0;
	cat_err_t err;

	if (!next || !high || !held) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		goto out;
	}
	if (!sync->pending_rk &&
	    (err = sync_offsets_client(&sync->pending_rk, sync->cfg, sync->group, SYNC_WORKER "-catch-up",
				       errstr, errstr_size)) != CAT_OK)
		goto out;
	if ((err = sync_positions(sync, sync->pending_rk, next, high, &n, errstr, errstr_size)) != CAT_OK)
		goto out;
	assignment = rd_kafka_topic_partition_list_new(n);
	for (int p = 0; p < n; p++)
		if (next[p] < high[p]) {
			rd_kafka_topic_partition_list_add(assignment, sync->changes_topic, p)->offset =
				next[p];
			open++;
		}
	if (open == 0)
		goto out;
	if (rd_kafka_assign(sync->pending_rk, assignment) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "could not assign %s for the catch-up", sync->changes_topic);
		goto out;
	}
	while (open > 0) {
		rd_kafka_message_t *rkm;
		bool flush = false, reached = false;

		if (cat_time_mono_us() > deadline) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					  "could not read %s up to its end within %d ms", sync->changes_topic,
					  CATCH_UP_TIMEOUT_MS);
			goto out;
		}
		rkm = rd_kafka_consumer_poll(sync->pending_rk, 100);
		if (!rkm) {
			flush = n_held > 0;
		} else if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (rkm->partition >= 0 && rkm->partition < n && high[rkm->partition] >= 0) {
				high[rkm->partition] = -1;
				open--;
			}
			rd_kafka_message_destroy(rkm);
			flush = n_held > 0;
		} else if (rkm->err) {
			CAT_LOG_WARN("KAFKA", "catch-up: %s", rd_kafka_message_errstr(rkm));
			rd_kafka_message_destroy(rkm);
		} else if (rkm->partition < 0 || rkm->partition >= n || high[rkm->partition] < 0 ||
			   rkm->offset >= high[rkm->partition]) {
			rd_kafka_message_destroy(rkm); /* past the end of when the catch-up began */
		} else {
			/* a batch holds one partition's messages, in order */
			if (n_held > 0 && held_partition != rkm->partition) {
				if ((err = apply_pending(sync, held_partition, held, n_held, errstr,
							 errstr_size)) != CAT_OK) {
					rd_kafka_message_destroy(rkm);
					goto out;
				}
				n_applied += (long long)n_held;
				for (size_t i = 0; i < n_held; i++)
					rd_kafka_message_destroy(held[i]);
				n_held = 0;
			}
			held_partition = rkm->partition;
			reached = rkm->offset + 1 >= high[rkm->partition];
			held[n_held++] = rkm;
			if (reached) {
				high[held_partition] = -1;
				open--;
			}
			flush = reached || n_held == CATCH_UP_BATCH;
		}
		if (flush && n_held > 0) {
			if ((err = apply_pending(sync, held_partition, held, n_held, errstr, errstr_size)) !=
			    CAT_OK)
				goto out;
			n_applied += (long long)n_held;
			for (size_t i = 0; i < n_held; i++)
				rd_kafka_message_destroy(held[i]);
			n_held = 0;
		}
	}
	if (n_held > 0) {
		if ((err = apply_pending(sync, held_partition, held, n_held, errstr, errstr_size)) != CAT_OK)
			goto out;
		n_applied += (long long)n_held;
	}
	CAT_LOG_INFO("SYNC", "check caught up: %lld change batches applied ahead of the loop", n_applied);
	err = CAT_OK;

out:
	for (size_t i = 0; i < n_held; i++)
		rd_kafka_message_destroy(held[i]);
	if (sync->pending_rk && assignment)
		rd_kafka_assign(sync->pending_rk, NULL);
	if (assignment)
		rd_kafka_topic_partition_list_destroy(assignment);
	free(held);
	free(next);
	free(high);
	return err;
}
