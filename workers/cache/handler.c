#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "keys.h"

/* The handler's state: the store it applies changes and commands to, and
 * what only the handler uses. */
struct cache {
	cache_store_t *store; /* the consume loop's */
	cat_redis_t *probe;   /* readiness, on the HTTP thread */
	pthread_mutex_t probe_lock;
	char changes_topic[256];
	char cache_topic[256];
	cache_keys_t keys;  /* what cache.v1 may touch */
	cache_heal_t *heal; /* the self-heal thread (heal.c), NULL: off */
};

/* --- set-up ------------------------------------------------------------------------------ */

cat_err_t cache_pg_connect(cache_t *cache, char *errstr, size_t errstr_size)
{
	PGconn *conn;

	return cat_pg_session_ensure(cache->store->pg, &conn, errstr, errstr_size);
}

/* The key families cache.v1 may touch: the layout's, candidates:, and
 * CATALYST_CACHE_KEY_NAMESPACE. */
static cat_err_t families_init(cache_t *cache, char *errstr, size_t errstr_size)
{
	const cache_store_t *store = cache->store;
	const char *ns = store->settings.key_namespace; /* checked by the config table */

	for (size_t t = 0; t < MAX_TABLES && store->layouts[t].table; t++)
		if (store->layouts[t].prefix && !cache_keys_add(&cache->keys, store->layouts[t].prefix))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "too many key families");
	if (!cache_keys_add(&cache->keys, "candidates:") || (ns && *ns && !cache_keys_add(&cache->keys, ns)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "too many key families");
	return CAT_OK;
}

void cache_destroy(cache_t *cache)
{
	if (!cache)
		return;
	cache_heal_destroy(cache->heal); /* first: its thread stops */
	cat_redis_destroy(cache->probe);
	cache_store_destroy(cache->store);
	pthread_mutex_destroy(&cache->probe_lock);
	free(cache);
}

cat_err_t cache_new(cache_t **out, const cat_config_t *cfg, const cache_settings_t *settings,
		    cat_redis_t *redis, cat_metrics_t *metrics, char *errstr, size_t errstr_size)
{
	cache_t *cache = calloc(1, sizeof(*cache));
	cat_redis_opts_t opts;
	cat_err_t err;

	*out = NULL;
	if (!cache) {
		cat_redis_destroy(redis);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	pthread_mutex_init(&cache->probe_lock, NULL);
	cat_kafka_topic(cfg, CAT_TOPIC_CHANGES, cache->changes_topic, sizeof(cache->changes_topic));
	cat_kafka_topic(cfg, CAT_TOPIC_CACHE, cache->cache_topic, sizeof(cache->cache_topic));
	if ((err = cache_store_new(&cache->store, cfg, settings, redis, metrics, errstr, errstr_size)) != CAT_OK ||
	    (err = families_init(cache, errstr, errstr_size)) != CAT_OK)
		goto error;

	/* readiness probes get a connection of their own, with short timeouts */
	cat_redis_opts_from_config(&opts, cfg, CACHE_WORKER "-probe");
	opts.connect_timeout_ms = opts.connect_timeout_ms < 2000 ? opts.connect_timeout_ms : 2000;
	opts.timeout_ms = opts.timeout_ms < 2000 ? opts.timeout_ms : 2000;
	if ((err = cat_redis_new(&cache->probe, &opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	*out = cache;
	return CAT_OK;

error:
	cache_destroy(cache);
	return err;
}

cat_err_t cache_heal_start(cache_t *cache, char *errstr, size_t errstr_size)
{
	return cache_heal_new(&cache->heal, cache->store, errstr, errstr_size);
}

bool cache_ready(void *opaque, char *reason, size_t reason_size)
{
	cache_t *cache = opaque;
	char errstr[256];
	cat_err_t err;

	pthread_mutex_lock(&cache->probe_lock);
	err = cat_redis_command(cache->probe, NULL, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr));
	pthread_mutex_unlock(&cache->probe_lock);
	if (err != CAT_OK) {
		snprintf(reason, reason_size, "Redis does not answer: %s", errstr);
		return false;
	}
	if (atomic_load(&cache->store->redis_down)) {
		snprintf(reason, reason_size, "Redis: the last pipeline failed");
		return false;
	}
	return !cache->heal || cache_heal_ready(cache->heal, reason, reason_size);
}

/* Message m after its decoding (`err`, `why`): marked permanent when it did
 * not decode (false), else its command's issue time (`meta`) kept for the
 * loop's latency (true). */
static bool decoded(cat_batch_t *batch, size_t m, cat_err_t err, const char *why,
		    const Catalyst__V1__CommandMeta *meta)
{
	if (err != CAT_OK) {
		cache_mark(batch, (int32_t)m, why);
		return false;
	}
	if (meta && meta->has_issued_at_us)
		batch->msgs[m].issued_at_us = meta->issued_at_us;
	return true;
}

/* --- changes.v1 ------------------------------------------------------------------------------------ */

static cat_err_t apply_changes(cache_store_t *store, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	bool candidates = false;
	cat_err_t err;

	for (size_t m = 0; m < batch->n; m++) {
		const rd_kafka_message_t *rkm = batch->msgs[m].rkm;
		Catalyst__V1__ChangeBatch *changes;
		char why[256];

		err = cat_codec_change_batch_decode(rkm->payload, rkm->len, &changes, why, sizeof(why));
		if (!decoded(batch, m, err, why, changes ? changes->meta : NULL))
			continue;
		for (size_t c = 0; c < changes->n_changes; c++) {
			const Catalyst__V1__Change *change = changes->changes[c];
			bool is_delete;

			if (!change->has_op || (change->op != CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT &&
						change->op != CATALYST__V1__WRITE_OP__WRITE_OP_DELETE)) {
				cache_mark(batch, (int32_t)m, "a change without a known op");
				continue;
			}
			is_delete = change->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
			if (cat_codec_record_validate(change->record, is_delete, why, sizeof(why)) != CAT_OK) {
				cache_mark(batch, (int32_t)m, why);
				continue;
			}
			if (cache_put_record(store, change->record, is_delete, "u", 0, (int32_t)m, &candidates, why,
					     sizeof(why)) != 0) {
				cat_metrics_inc(store->m_uncacheable);
				cache_mark(batch, (int32_t)m, why);
			}
		}
		catalyst__v1__change_batch__free_unpacked(changes, NULL);
		if ((err = cache_flush_if_full(store, batch, errstr, errstr_size)) != CAT_OK)
			return err;
	}
	if (candidates)
		cache_invalidate_candidates(store);
	return cache_flush(store, batch, errstr, errstr_size);
}

/* --- cache.v1 ---------------------------------------------------------------------------------------- */

/* SCAN MATCH pattern + UNLINK, scan_count keys a step, until the cursor
 * comes back to 0. */
static cat_err_t invalidate_pattern(cache_store_t *store, const char *pattern, char *errstr, size_t errstr_size)
{
	char cursor[32] = "0", count[24];
	long long removed = 0;
	cat_err_t err;

	snprintf(count, sizeof(count), "%lld", store->scan_count);
	do {
		redisReply *reply = NULL, *keys;

		if ((err = cache_redis_ensure(store, errstr, errstr_size)) != CAT_OK)
			return err;
		err = cat_redis_command(store->redis, &reply, 6,
					(const char *[]){"SCAN", cursor, "MATCH", pattern, "COUNT", count}, NULL,
					errstr, errstr_size);
		if (err != CAT_OK)
			return err;
		cat_metrics_inc(store->m_commands);
		if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
		    reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY) {
			freeReplyObject(reply);
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "unexpected reply to SCAN");
		}
		snprintf(cursor, sizeof(cursor), "%s", reply->element[0]->str);
		keys = reply->element[1];
		if (keys->elements > 0) {
			const char **argv = malloc((keys->elements + 1) * sizeof(*argv));
			size_t *lens = malloc((keys->elements + 1) * sizeof(*lens));
			redisReply *unlinked = NULL;

			if (!argv || !lens) {
				free(argv);
				free(lens);
				freeReplyObject(reply);
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
			}
			argv[0] = "UNLINK";
			lens[0] = 6;
			for (size_t k = 0; k < keys->elements; k++) {
				argv[k + 1] = keys->element[k]->str;
				lens[k + 1] = keys->element[k]->len;
			}
			err = cat_redis_command(store->redis, &unlinked, (int)keys->elements + 1, argv, lens, errstr,
						errstr_size);
			free(argv);
			free(lens);
			if (err == CAT_OK) {
				removed += unlinked->integer;
				cat_metrics_inc(store->m_commands);
				freeReplyObject(unlinked);
			}
		}
		freeReplyObject(reply);
		if (err != CAT_OK)
			return err;
	} while (strcmp(cursor, "0") != 0);
	cat_metrics_add(store->m_invalidated, removed);
	CAT_LOG_INFO("REDIS", "invalidated %lld keys matching %s", removed, pattern);
	return CAT_OK;
}

/* Marks message m permanent when `key` is not one cache.v1 may touch
 * (keys.h); true when it may. */
static bool key_allowed(cache_t *cache, cat_batch_t *batch, int32_t m, const char *action, const char *key,
			bool pattern)
{
	char why[256], line[256];

	if (!cache_keys_refusal(&cache->keys, key, key ? strlen(key) : 0, pattern, why, sizeof(why)))
		return true;
	snprintf(line, sizeof(line), "%s: %s", action, why);
	cache_mark(batch, m, line);
	return false;
}

/* Queues set or delete; runs invalidate and warm at once (after what is
 * queued). */
static cat_err_t apply_command(cache_t *cache, cat_batch_t *batch, int32_t m, const Catalyst__V1__CacheCommand *cmd,
			       char *errstr, size_t errstr_size)
{
	cache_store_t *store = cache->store;

	switch (cmd->action_case) {
	case CATALYST__V1__CACHE_COMMAND__ACTION_SET: {
		const Catalyst__V1__CacheCommand__Set *set = cmd->set;
		size_t key_len = set->key ? strlen(set->key) : 0;
		const char *value = set->value.data ? (const char *)set->value.data : "";
		char ttl[24], why[256];

		if (!key_allowed(cache, batch, m, "set", set->key, false))
			return CAT_OK;
		if (key_len >= 2 && strcmp(set->key + key_len - 2, "#v") == 0) {
			cache_mark(batch, m, "set: the key must not end with \"#v\"");
			return CAT_OK;
		}
		if (!set->has_value || (long long)set->value.len > store->max_value) {
			snprintf(why, sizeof(why),
				 "set %.200s: value of %zu bytes is larger than CATALYST_CACHE_MAX_VALUE_BYTES (%lld)",
				 set->key, set->has_value ? set->value.len : 0, store->max_value);
			if (!set->has_value)
				snprintf(why, sizeof(why), "set %.200s: no value", set->key);
			else
				cat_metrics_inc(store->m_uncacheable);
			cache_mark(batch, m, why);
			return CAT_OK;
		}
		if (set->ttl_seconds < 0 || (set->has_version && set->version < 1)) {
			cache_mark(batch, m, "set: ttl_seconds must not be negative and version must be at least 1");
			return CAT_OK;
		}
		if (set->has_version) {
			cache_put(store, 's', set->key, key_len, set->version, set->ttl_seconds, value,
				  set->value.len, NULL, NULL, m, UINT16_MAX);
		} else {
			char vkey[MAX_KEY_BYTES + 3];

			snprintf(ttl, sizeof(ttl), "%lld", (long long)set->ttl_seconds);
			snprintf(vkey, sizeof(vkey), "%s#v", set->key);
			if (set->ttl_seconds > 0)
				cache_plain(store, 5, (const char *[]){"SET", set->key, value, "EX", ttl},
					    (size_t[]){3, key_len, set->value.len, 2, strlen(ttl)}, m);
			else
				cache_plain(store, 3, (const char *[]){"SET", set->key, value},
					    (size_t[]){3, key_len, set->value.len}, m);
			/* an unversioned set overrides: any version replaces it (its
			 * value is not parsed for one) */
			if (set->ttl_seconds > 0)
				cache_plain(store, 5, (const char *[]){"SET", vkey, "0", "EX", ttl},
					    (size_t[]){3, strlen(vkey), 1, 2, strlen(ttl)}, m);
			else
				cache_plain(store, 3, (const char *[]){"SET", vkey, "0"}, NULL, m);
		}
		if (strncmp(set->key, "candidates:top:", 15) == 0 && strcmp(set->key, "candidates:top:keys") != 0)
			cache_plain(store, 3, (const char *[]){"SADD", "candidates:top:keys", set->key}, NULL, m);
		return CAT_OK;
	}
	case CATALYST__V1__CACHE_COMMAND__ACTION_DELETE: {
		const Catalyst__V1__CacheCommand__Delete *del = cmd->delete_;

		for (size_t k = 0; k < del->n_keys; k++)
			if (!key_allowed(cache, batch, m, "delete", del->keys[k], false))
				return CAT_OK; /* nothing of it is applied */
		for (size_t k = 0; k < del->n_keys; k++) {
			char vkey[MAX_KEY_BYTES + 3];

			snprintf(vkey, sizeof(vkey), "%s#v", del->keys[k]);
			cache_plain(store, 3, (const char *[]){"UNLINK", del->keys[k], vkey}, NULL, m);
		}
		if (del->n_keys == 0)
			cache_mark(batch, m, "delete: no keys");
		return CAT_OK;
	}
	case CATALYST__V1__CACHE_COMMAND__ACTION_INVALIDATE: {
		const char *pattern = cmd->invalidate->pattern;
		cat_err_t err;

		if (!key_allowed(cache, batch, m, "invalidate", pattern, true))
			return CAT_OK;
		if ((err = cache_flush(store, batch, errstr, errstr_size)) != CAT_OK)
			return err;
		return invalidate_pattern(store, pattern, errstr, errstr_size);
	}
	case CATALYST__V1__CACHE_COMMAND__ACTION_WARM: {
		cat_err_t err;
		int profile = cmd->warm->has_profile ? (int)cmd->warm->profile : 0;

		if (profile != CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_MARKET_OPEN &&
		    profile != CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD) {
			cache_mark(batch, m, "warm: unknown profile");
			return CAT_OK;
		}
		if ((err = cache_flush(store, batch, errstr, errstr_size)) != CAT_OK)
			return err;
		return cache_warm(store, profile, errstr, errstr_size);
	}
	default:
		cache_mark(batch, m, "a cache command without a known action");
		return CAT_OK;
	}
}

static cat_err_t apply_commands(cache_t *cache, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	for (size_t m = 0; m < batch->n; m++) {
		const rd_kafka_message_t *rkm = batch->msgs[m].rkm;
		Catalyst__V1__CacheCommand *cmd;
		char why[256];

		err = cat_codec_cache_command_decode(rkm->payload, rkm->len, &cmd, why, sizeof(why));
		if (!decoded(batch, m, err, why, cmd ? cmd->meta : NULL))
			continue;
		err = apply_command(cache, batch, (int32_t)m, cmd, errstr, errstr_size);
		catalyst__v1__cache_command__free_unpacked(cmd, NULL);
		if (err != CAT_OK || (err = cache_flush_if_full(cache->store, batch, errstr, errstr_size)) != CAT_OK)
			return err;
	}
	return cache_flush(cache->store, batch, errstr, errstr_size);
}

/* --- the handler ------------------------------------------------------------------------------------------ */

cat_err_t cache_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cache_t *cache = opaque;
	cat_err_t err;

	cache_queue_reset(cache->store);
	if ((err = cache_redis_ensure(cache->store, errstr, errstr_size)) != CAT_OK)
		return err;
	if (strcmp(batch->topic, cache->changes_topic) == 0)
		err = apply_changes(cache->store, batch, errstr, errstr_size);
	else if (strcmp(batch->topic, cache->cache_topic) == 0)
		err = apply_commands(cache, batch, errstr, errstr_size);
	else
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "a batch of unexpected topic %s", batch->topic);
	if (err != CAT_OK)
		cache_queue_reset(cache->store);
	return err;
}
