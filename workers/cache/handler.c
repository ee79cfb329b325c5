#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_time.h"
#include "scripts.h"

#define WORKER "catalyst-cache"

static const double rtt_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
				     0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
static const double depth_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};

/* --- set-up ------------------------------------------------------------------------------ */

cat_err_t cache_pg_connect(cache_t *cache, char *errstr, size_t errstr_size)
{
	PGconn *conn;

	return cat_pg_session_ensure(cache->pg, &conn, errstr, errstr_size);
}

/* CATALYST_CACHE_TOP_LIMITS (validated by the config table) -> top_limits */
static void top_limits_init(cache_t *cache)
{
	const cat_config_int_list_t *limits = &cache->settings.top_limits;

	cache->n_top_limits = limits->n < MAX_TOP_LIMITS ? limits->n : MAX_TOP_LIMITS;
	for (size_t i = 0; i < cache->n_top_limits; i++) {
		snprintf(cache->top_limits[i], sizeof(cache->top_limits[0]), "%lld", limits->v[i]);
		if (limits->v[i] > cache->top_max)
			cache->top_max = limits->v[i];
	}
}

static void layout_init(cache_t *cache, cat_metrics_t *metrics)
{
	const struct {
		const char *table, *prefix, *set_prefix;
		const long long *ttl_s;
	} defs[] = {
		{"news_raw", "news:", "news:symbol:", &cache->settings.news_ttl_s},
		{"trading_signals", "signals:", "signals:symbol:", &cache->settings.signal_ttl_s},
		{"trade_records", "trades:", "trades:symbol:", &cache->settings.trade_ttl_s},
		{"source_metrics", "sources:", NULL, &cache->settings.source_ttl_s},
		{"trading_candidates", NULL, NULL, NULL},
	};

	for (size_t t = 0; t < cat_schema_n_tables && t < MAX_TABLES; t++) {
		layout_t *layout = &cache->layouts[t];

		layout->table = &cat_schema_tables[t];
		layout->f_pk = cat_schema_field(layout->table,
						cat_schema_column(layout->table, layout->table->primary_key));
		layout->f_symbol = cat_schema_field(layout->table, cat_schema_column(layout->table, "symbol"));
		layout->f_version = cat_schema_field(layout->table, cat_schema_column(layout->table, "version"));
		if (layout->f_symbol && layout->f_symbol->type != PROTOBUF_C_TYPE_STRING)
			layout->f_symbol = NULL;
		for (size_t d = 0; d < sizeof(defs) / sizeof(defs[0]); d++) {
			if (strcmp(defs[d].table, layout->table->name) != 0)
				continue;
			layout->prefix = defs[d].prefix;
			layout->set_prefix = defs[d].set_prefix;
			layout->ttl = defs[d].ttl_s ? *defs[d].ttl_s : 0;
			layout->set_ttl = cache->settings.symbol_ttl_s;
			layout->derived_candidates = !defs[d].prefix;
		}
		layout->m_applied = cat_metrics_counter(metrics, "catalyst_cache_changes_total",
							"changes and warm rows by outcome: applied, or stale "
							"(the cache held the same or a newer version)",
							"table", layout->table->name, "result", "applied", NULL);
		layout->m_stale = cat_metrics_counter(metrics, "catalyst_cache_changes_total",
						      "changes and warm rows by outcome: applied, or stale "
						      "(the cache held the same or a newer version)",
						      "table", layout->table->name, "result", "stale", NULL);
	}
}

/* The key families cache.v1 may touch: the layout's, candidates:, and
 * CATALYST_CACHE_KEY_NAMESPACE. */
static cat_err_t families_init(cache_t *cache, char *errstr, size_t errstr_size)
{
	const char *ns = cache->settings.key_namespace; /* checked by the config table */

	for (size_t t = 0; t < MAX_TABLES && cache->layouts[t].table; t++)
		if (cache->layouts[t].prefix && !cache_keys_add(&cache->keys, cache->layouts[t].prefix))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "too many key families");
	if (!cache_keys_add(&cache->keys, "candidates:") || (ns && *ns && !cache_keys_add(&cache->keys, ns)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "too many key families");
	return CAT_OK;
}

static void register_metrics(cache_t *cache, cat_metrics_t *metrics)
{
	static const char *const profiles[2] = {"market_open", "rebuild"};

	cache->m_commands = cat_metrics_counter(metrics, "catalyst_cache_redis_commands_total",
						"commands sent to Redis (a PUT script call counts once)", NULL);
	cache->m_depth = cat_metrics_histogram(metrics, "catalyst_cache_pipeline_depth",
					       "commands per pipeline", depth_buckets,
					       sizeof(depth_buckets) / sizeof(depth_buckets[0]), NULL);
	cache->m_rtt = cat_metrics_histogram(metrics, "catalyst_cache_redis_roundtrip_seconds",
					     "time from sending a pipeline to its last reply", rtt_buckets,
					     sizeof(rtt_buckets) / sizeof(rtt_buckets[0]), NULL);
	cache->m_reloads = cat_metrics_counter(metrics, "catalyst_cache_script_reloads_total",
					       "scripts loaded again after NOSCRIPT", NULL);
	cache->m_reconnects = cat_metrics_counter(metrics, "catalyst_cache_redis_reconnects_total",
						  "Redis connections reopened after a loss", NULL);
	cache->m_invalidated = cat_metrics_counter(metrics, "catalyst_cache_keys_invalidated_total",
						   "keys removed by invalidations (patterns and candidate "
						   "changes)",
						   NULL);
	cache->m_uncacheable = cat_metrics_counter(metrics, "catalyst_cache_uncacheable_total",
						   "values that could not be cached (too large, an id that "
						   "would land on another key); their messages are dead-lettered",
						   NULL);
	for (int p = 0; p < 2; p++) {
		cache->m_warm_rows[p] = cat_metrics_counter(metrics, "catalyst_cache_warm_rows_total",
							    "rows read from the primary by warms", "profile",
							    profiles[p], NULL);
		cache->m_warm_seconds[p] =
			cat_metrics_histogram(metrics, "catalyst_cache_warm_duration_seconds", "time of a warm",
					      NULL, 0, "profile", profiles[p], NULL);
	}
	cache->m_warm_conflicts = cat_metrics_counter(
		metrics, "catalyst_cache_warm_conflicts_total",
		"candidates lists a warm did not store because a candidate changed meanwhile", NULL);
}

cat_err_t cache_new(cache_t **out, const cat_config_t *cfg, const cache_settings_t *settings,
		    cat_redis_t *redis, cat_metrics_t *metrics, char *errstr, size_t errstr_size)
{
	cache_t *cache = calloc(1, sizeof(*cache));
	cat_pg_session_opts_t pg_opts = {
		.url = cat_config_str(cfg, "CATALYST_PG_URL"),
		.app_name = WORKER,
		.what = "primary",
		.connect_timeout_s = (int)cat_config_int(cfg, "CATALYST_PG_CONNECT_TIMEOUT_S"),
	};
	cat_redis_opts_t opts;
	cat_err_t err;

	*out = NULL;
	if (!cache) {
		cat_redis_destroy(redis);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	cache->cfg = cfg;
	cache->settings = *settings;
	cache->metrics = metrics;
	cache->redis = redis;
	pthread_mutex_init(&cache->probe_lock, NULL);
	if ((err = cat_pg_session_new(&cache->pg, &pg_opts, errstr, errstr_size)) != CAT_OK) {
		cache_destroy(cache);
		return err;
	}
	cat_redis_script_init(&cache->scripts[SCRIPT_PUT], CACHE_SCRIPT_PUT);
	cat_redis_script_init(&cache->scripts[SCRIPT_INVALIDATE_CANDIDATES], CACHE_SCRIPT_INVALIDATE_CANDIDATES);
	cat_redis_script_init(&cache->scripts[SCRIPT_SET_IF_GENERATION], CACHE_SCRIPT_SET_IF_GENERATION);
	cat_redis_script_init(&cache->scripts[SCRIPT_HEAL_CHECK], CACHE_SCRIPT_HEAL_CHECK);
	cat_redis_script_init(&cache->scripts[SCRIPT_HEAL_DONE], CACHE_SCRIPT_HEAL_DONE);
	cat_kafka_topic(cfg, CAT_TOPIC_CHANGES, cache->changes_topic, sizeof(cache->changes_topic));
	cat_kafka_topic(cfg, CAT_TOPIC_CACHE, cache->cache_topic, sizeof(cache->cache_topic));
	cache->symbol_ttl = settings->symbol_ttl_s;
	cache->active_ttl = settings->active_ttl_s;
	cache->top_ttl = settings->top_ttl_s;
	cache->warm_news_ttl = settings->warm_news_ttl_s;
	cache->max_value = settings->max_value_bytes;
	cache->pipeline_bytes = settings->pipeline_bytes;
	cache->scan_count = settings->scan_count;
	cache->rebuild_chunk = settings->rebuild_chunk;
	top_limits_init(cache);
	if (cat_schema_n_tables > MAX_TABLES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the schema has more than %d tables",
				  MAX_TABLES);
		goto error;
	}
	layout_init(cache, metrics);
	register_metrics(cache, metrics);
	if ((err = families_init(cache, errstr, errstr_size)) != CAT_OK)
		goto error;

	/* readiness probes get a connection of their own, with short timeouts */
	cat_redis_opts_from_config(&opts, cfg, WORKER "-probe");
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

void cache_destroy(cache_t *cache)
{
	if (!cache)
		return;
	cache_heal_destroy(cache->heal); /* first: its thread reads the settings */
	cat_redis_destroy(cache->probe);
	cat_redis_destroy(cache->redis);
	cat_pg_session_free(cache->pg);
	pthread_mutex_destroy(&cache->probe_lock);
	free(cache->arena);
	free(cache->json);
	for (int i = 0; i < 2; i++) {
		free(cache->q[i].cmds);
		free(cache->q[i].items);
	}
	free(cache);
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
	if (atomic_load(&cache->redis_down)) {
		snprintf(reason, reason_size, "Redis: the last pipeline failed");
		return false;
	}
	return !cache->heal || cache_heal_ready(cache->heal, reason, reason_size);
}

cat_err_t cache_redis_ensure(cache_t *cache, char *errstr, size_t errstr_size)
{
	bool was = cat_redis_connects(cache->redis) > 0;
	cat_err_t err;

	if (cat_redis_is_connected(cache->redis))
		return CAT_OK;
	err = cat_redis_ensure(cache->redis, errstr, errstr_size);
	if (err == CAT_OK) {
		if (was)
			cat_metrics_inc(cache->m_reconnects);
		CAT_LOG_INFO("REDIS", "connected to %s", cat_redis_address(cache->redis));
	} else {
		atomic_store(&cache->redis_down, true);
	}
	return err;
}

/* --- queuing ---------------------------------------------------------------------------------- */

static void *grow(void *ptr, size_t *cap, size_t need, size_t size, bool *oom)
{
	size_t n = *cap ? *cap : 64;
	void *grown;

	if (need <= *cap)
		return ptr;
	while (n < need)
		n *= 2;
	if (!(grown = realloc(ptr, n * size))) {
		*oom = true;
		return NULL;
	}
	*cap = n;
	return grown;
}

static cmd_t *cmd_add(cache_t *cache, cmd_kind_t kind, int32_t msg)
{
	queue_t *q = &cache->q[cache->fill];
	cmd_t *cmds = grow(q->cmds, &q->cap_cmds, q->n_cmds + 1, sizeof(*cmds), &cache->oom);

	if (!cmds)
		return NULL;
	q->cmds = cmds;
	cmds[q->n_cmds] = (cmd_t){kind, msg, q->n_items, 0};
	return &cmds[q->n_cmds++];
}

/* Appends `text` as a bulk string "$<len>\r\n<text>\r\n" to the PUT call. */
static void arena_add(cache_t *cache, const char *text, size_t len)
{
	char head[32];
	int head_len = snprintf(head, sizeof(head), "$%zu\r\n", len);
	char *arena = grow(cache->arena, &cache->arena_cap, cache->arena_len + (size_t)head_len + len + 2, 1,
			   &cache->oom);

	if (!arena)
		return;
	cache->arena = arena;
	memcpy(arena + cache->arena_len, head, (size_t)head_len);
	cache->arena_len += (size_t)head_len;
	memcpy(arena + cache->arena_len, text, len);
	cache->arena_len += len;
	memcpy(arena + cache->arena_len, "\r\n", 2);
	cache->arena_len += 2;
}

static void arena_add_int(cache_t *cache, long long v)
{
	char text[24];
	int len = snprintf(text, sizeof(text), "%lld", v);

	arena_add(cache, text, (size_t)len);
}

/* Queues the PUT call being filled: its header (the symbol sets' TTL and
 * the TTL slots) then its items. */
static void put_call_end(cache_t *cache)
{
	queue_t *q = &cache->q[cache->fill];
	char head[1 + PUT_TTL_SLOTS][32], heads[(1 + PUT_TTL_SLOTS) * 32];
	size_t heads_len = 0;
	cmd_t *cmd;

	if (cache->n_call_items == 0)
		return;
	for (int h = 0; h <= PUT_TTL_SLOTS; h++) {
		long long v = h == 0 ? cache->symbol_ttl : h <= cache->n_call_ttls ? cache->call_ttls[h - 1] : 0;
		int n = snprintf(head[h], sizeof(head[h]), "%lld", v);

		heads_len += (size_t)snprintf(heads + heads_len, sizeof(heads) - heads_len, "$%d\r\n%s\r\n", n,
					      head[h]);
	}
	if (!cache->oom && (cmd = cmd_add(cache, CMD_PUT, -1))) {
		cmd->first = q->n_items - cache->n_call_items;
		cmd->n = cache->n_call_items;
		if (cat_redis_append_evalsha_bulk(cache->redis, &cache->scripts[SCRIPT_PUT], 0,
						  (int)(1 + PUT_TTL_SLOTS + cache->n_call_items * PUT_ARGS),
						  (const char *[]){heads, cache->arena},
						  (size_t[]){heads_len, cache->arena_len}, 2) != CAT_OK) {
			cache->oom = true;
			q->n_cmds--;
		}
	}
	cache->n_call_items = 0;
	cache->n_call_ttls = 0;
	cache->arena_len = 0;
}

void cache_put(cache_t *cache, char op, const char *key, size_t key_len, int64_t version, long long ttl,
	       const char *value, size_t value_len, const char *symbol, const char *member, int32_t msg,
	       uint16_t table)
{
	queue_t *q;
	item_t *items;
	char op_text[2];
	int slot;

	for (slot = 0; slot < cache->n_call_ttls; slot++)
		if (cache->call_ttls[slot] == ttl)
			break;
	if (slot == PUT_TTL_SLOTS) {
		put_call_end(cache); /* a tenth TTL: a new call */
		slot = 0;
	}
	if (slot == cache->n_call_ttls)
		cache->call_ttls[cache->n_call_ttls++] = ttl;
	q = &cache->q[cache->fill];
	if (!(items = grow(q->items, &q->cap_items, q->n_items + 1, sizeof(*items), &cache->oom)))
		return;
	q->items = items;
	items[q->n_items++] = (item_t){msg, table};
	op_text[0] = op;
	op_text[1] = (char)('0' + slot);
	arena_add(cache, op_text, 2);
	arena_add(cache, key, key_len);
	arena_add_int(cache, (long long)version);
	arena_add(cache, value ? value : "", value ? value_len : 0);
	arena_add(cache, symbol ? symbol : "", symbol ? strlen(symbol) : 0);
	arena_add(cache, member ? member : "", member ? strlen(member) : 0);
	if (++cache->n_call_items == PUT_ITEMS || cache->arena_len >= PUT_CALL_BYTES)
		put_call_end(cache);
}

void cache_plain(cache_t *cache, int argc, const char *const *argv, const size_t *lens, int32_t msg)
{
	put_call_end(cache); /* keeps the queue in message order */
	if (!cmd_add(cache, CMD_PLAIN, msg))
		return;
	if (cat_redis_append(cache->redis, argc, argv, lens) != CAT_OK) {
		cache->oom = true;
		cache->q[cache->fill].n_cmds--;
	}
}

void cache_invalidate_candidates(cache_t *cache)
{
	const char *argv[MAX_TOP_LIMITS];

	put_call_end(cache);
	for (size_t i = 0; i < cache->n_top_limits; i++)
		argv[i] = cache->top_limits[i];
	if (!cmd_add(cache, CMD_INVALIDATE, -1))
		return;
	if (cat_redis_append_evalsha(cache->redis, &cache->scripts[SCRIPT_INVALIDATE_CANDIDATES], 0,
				     (int)cache->n_top_limits, argv, NULL) != CAT_OK) {
		cache->oom = true;
		cache->q[cache->fill].n_cmds--;
	}
}

/* Drops what is queued and what is in flight (whose replies would come
 * unread: the connection goes). */
static void queue_reset(cache_t *cache)
{
	if (cat_redis_in_flight(cache->redis) > 0)
		cat_redis_disconnect(cache->redis);
	cat_redis_discard(cache->redis);
	for (int i = 0; i < 2; i++)
		cache->q[i].n_cmds = cache->q[i].n_items = 0;
	cache->n_call_items = cache->arena_len = 0;
	cache->oom = false;
	/* a burst's scratch does not stay */
	if (cache->arena_cap > 8 * 1024 * 1024) {
		free(cache->arena);
		cache->arena = NULL;
		cache->arena_cap = 0;
	}
	if (cache->json_cap > 8 * 1024 * 1024) {
		free(cache->json);
		cache->json = NULL;
		cache->json_cap = 0;
	}
}

/* Marks batch message `msg` permanent with `why` (the first reason stays). */
static void mark(cat_batch_t *batch, int32_t msg, const char *why)
{
	if (!batch || msg < 0 || (size_t)msg >= batch->n) {
		CAT_LOG_WARN("REDIS", "could not cache a value: %s", why);
		return;
	}
	if (batch->msgs[msg].result == CAT_ERR_PERMANENT)
		return;
	batch->msgs[msg].result = CAT_ERR_PERMANENT;
	snprintf(batch->msgs[msg].reason, sizeof(batch->msgs[msg].reason), "%s", why);
}

/* One reply that should not be an error: permanent ones mark the message,
 * others end the pipeline. */
static cat_err_t check_reply(cat_batch_t *batch, int32_t msg, const redisReply *reply, char *errstr,
			     size_t errstr_size)
{
	char why[400];
	cat_err_t err = cat_redis_reply_class(reply, why, sizeof(why));

	if (err == CAT_ERR_PERMANENT && msg >= 0) {
		mark(batch, msg, why);
		return CAT_OK;
	}
	if (err != CAT_OK)
		return cat_err_set(errstr, errstr_size, err, "%s", why);
	return CAT_OK;
}

/* The replies of queue q, in command order. */
static cat_err_t read_replies(cache_t *cache, const queue_t *q, cat_batch_t *batch, redisReply **replies, size_t n,
			      char *errstr, size_t errstr_size)
{
	cat_err_t err = CAT_OK;

	for (size_t c = 0; err == CAT_OK && c < n && c < q->n_cmds; c++) {
		const cmd_t *cmd = &q->cmds[c];
		const redisReply *reply = replies[c];

		switch (cmd->kind) {
		case CMD_PLAIN:
			err = check_reply(batch, cmd->msg, reply, errstr, errstr_size);
			break;
		case CMD_INVALIDATE:
			if ((err = check_reply(batch, -1, reply, errstr, errstr_size)) == CAT_OK &&
			    reply->type == REDIS_REPLY_INTEGER)
				cat_metrics_add(cache->m_invalidated, reply->integer);
			break;
		case CMD_PUT:
			if (reply->type != REDIS_REPLY_ARRAY) {
				/* the whole call failed: a script error is permanent for
				 * messages we cannot tell apart; the loop isolates them */
				cat_err_t class = cat_redis_reply_class(reply, errstr, errstr_size);

				err = class == CAT_OK ? cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
								    "unexpected reply to the PUT script")
						      : class;
				break;
			}
			for (size_t i = 0; i < reply->elements && i < cmd->n; i++) {
				const redisReply *r = reply->element[i];
				const item_t *item = &q->items[cmd->first + i];

				if (r->type == REDIS_REPLY_INTEGER) {
					if (item->table >= MAX_TABLES)
						continue;
					cat_metrics_inc(r->integer == 1 ? cache->layouts[item->table].m_applied
									: cache->layouts[item->table].m_stale);
					continue;
				}
				if ((err = check_reply(batch, item->msg, r, errstr, errstr_size)) != CAT_OK)
					break;
			}
			break;
		}
	}
	return err;
}

/* Reads the replies of the pipeline in flight, if any. */
static cat_err_t wait_in_flight(cache_t *cache, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	queue_t *q = &cache->q[!cache->fill];
	redisReply **replies = NULL;
	size_t n = 0;
	cat_err_t err;

	if (cat_redis_in_flight(cache->redis) == 0)
		return CAT_OK;
	err = cat_redis_wait(cache->redis, cache->scripts, N_SCRIPTS, &replies, &n, errstr, errstr_size);
	if (err != CAT_OK) {
		if (err == CAT_ERR_RETRIABLE)
			atomic_store(&cache->redis_down, true);
		queue_reset(cache);
		return err;
	}
	atomic_store(&cache->redis_down, false);
	cat_metrics_observe(cache->m_rtt, (double)(cat_time_mono_us() - cache->sent_at_us) / 1e6);
	if (cat_redis_script_reloads(cache->redis) != cache->reloads_seen) {
		cat_metrics_add(cache->m_reloads,
				(int64_t)(cat_redis_script_reloads(cache->redis) - cache->reloads_seen));
		cache->reloads_seen = cat_redis_script_reloads(cache->redis);
	}
	err = read_replies(cache, q, batch, replies, n, errstr, errstr_size);
	cat_redis_replies_free(replies, n);
	q->n_cmds = q->n_items = 0;
	if (err != CAT_OK)
		queue_reset(cache);
	return err;
}

/* Sends the queue (nothing may be in flight); it is in flight then. */
static cat_err_t send_queue(cache_t *cache, char *errstr, size_t errstr_size)
{
	queue_t *q = &cache->q[cache->fill];
	cat_err_t err;

	put_call_end(cache);
	if (cache->oom) {
		queue_reset(cache);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	}
	if (q->n_cmds == 0)
		return CAT_OK;
	if ((err = cache_redis_ensure(cache, errstr, errstr_size)) != CAT_OK) {
		queue_reset(cache);
		return err;
	}
	cat_metrics_observe(cache->m_depth, (double)q->n_cmds);
	cat_metrics_add(cache->m_commands, (int64_t)q->n_cmds);
	cache->sent_at_us = cat_time_mono_us();
	if ((err = cat_redis_send(cache->redis, errstr, errstr_size)) != CAT_OK) {
		if (err == CAT_ERR_RETRIABLE)
			atomic_store(&cache->redis_down, true);
		queue_reset(cache);
		return err;
	}
	cache->fill = !cache->fill;
	return CAT_OK;
}

cat_err_t cache_flush(cache_t *cache, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	put_call_end(cache);
	if ((err = wait_in_flight(cache, batch, errstr, errstr_size)) != CAT_OK ||
	    (err = send_queue(cache, errstr, errstr_size)) != CAT_OK)
		return err;
	return wait_in_flight(cache, batch, errstr, errstr_size);
}

cat_err_t cache_flush_if_full(cache_t *cache, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	if (cat_redis_pending_bytes(cache->redis) + cache->arena_len < (size_t)cache->pipeline_bytes)
		return CAT_OK;
	put_call_end(cache);
	if ((err = wait_in_flight(cache, batch, errstr, errstr_size)) != CAT_OK)
		return err;
	return send_queue(cache, errstr, errstr_size);
}

/* --- records ------------------------------------------------------------------------------------ */

/* A text field of the row, NULL when unset (or no such field). */
static const char *row_text(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	if (!field || field->type != PROTOBUF_C_TYPE_STRING)
		return NULL;
	return *(const char *const *)(const void *)((const char *)row + field->offset);
}

/* The row's version, 0 when unset. */
static int64_t row_version(const ProtobufCMessage *row, const ProtobufCFieldDescriptor *field)
{
	if (!field || field->type != PROTOBUF_C_TYPE_INT64 ||
	    !*(const protobuf_c_boolean *)(const void *)((const char *)row + field->quantifier_offset))
		return 0;
	return *(const int64_t *)(const void *)((const char *)row + field->offset);
}

int cache_put_record(cache_t *cache, const Catalyst__V1__Record *record, bool is_delete, const char *op,
		     long long ttl_override, int32_t msg, bool *candidates, char *why, size_t why_size)
{
	const cat_table_t *table = cat_codec_record_table(record);
	const ProtobufCMessage *row = cat_codec_record_row(record);
	const layout_t *layout = NULL;
	const char *pk, *symbol = NULL;
	char key[MAX_KEY_BYTES];
	const char *json = NULL;
	size_t pk_len, json_len = 0;
	char op_char;
	uint16_t t;
	int key_len;

	for (t = 0; t < MAX_TABLES && cache->layouts[t].table; t++)
		if (cache->layouts[t].table == table)
			break;
	if (!table || t == MAX_TABLES || !cache->layouts[t].table) {
		snprintf(why, why_size, "a change without a known table");
		return -1;
	}
	layout = &cache->layouts[t];
	if (layout->derived_candidates) {
		*candidates = true;
		return 0;
	}
	if (!layout->prefix)
		return 0;
	if (!row || row->descriptor != table->descriptor) {
		snprintf(why, why_size, "a change whose row is not of its table %s", table->name);
		return -1;
	}
	pk = row_text(row, layout->f_pk);
	if (!pk)
		pk = "";
	pk_len = strlen(pk);
	if (layout->set_prefix && strncmp(pk, "symbol:", 7) == 0) {
		snprintf(why, why_size, "%s %.200s: an id starting with \"symbol:\" would be cached over the "
			 "key of a symbol's set", layout->table->name, pk);
		return -1;
	}
	if (pk_len >= 2 && strcmp(pk + pk_len - 2, "#v") == 0) {
		snprintf(why, why_size, "%s %.200s: an id ending with \"#v\" would be cached over the key of "
			 "another value's version", layout->table->name, pk);
		return -1;
	}
	key_len = snprintf(key, sizeof(key), "%s%s", layout->prefix, pk);
	if (key_len < 0 || (size_t)key_len >= sizeof(key)) {
		snprintf(why, why_size, "%s %.200s: key longer than %d bytes", layout->table->name, pk,
			 MAX_KEY_BYTES);
		return -1;
	}
	if (!is_delete) {
		ssize_t len = cat_codec_record_json(record, &cache->json, &cache->json_cap);

		if (len < 0) {
			snprintf(why, why_size, "%s %.200s: the row has no JSON form", layout->table->name, pk);
			return -1;
		}
		json = cache->json;
		json_len = (size_t)len;
		if ((long long)json_len > cache->max_value) {
			snprintf(why, why_size,
				 "%s %.200s: value of %zu bytes is larger than CATALYST_CACHE_MAX_VALUE_BYTES (%lld)",
				 layout->table->name, pk, json_len, cache->max_value);
			return -1;
		}
		if (layout->set_prefix)
			symbol = row_text(row, layout->f_symbol);
	}
	op_char = is_delete ? 'd' : op[0];
	if (layout->set_prefix)
		op_char = (char)(op_char - 'a' + 'A'); /* a member of its symbol's set too */
	cache_put(cache, op_char, key, (size_t)key_len, row_version(row, layout->f_version),
		  ttl_override > 0 ? ttl_override : layout->ttl, json, json_len, symbol, pk, msg, t);
	return 0;
}

/* --- changes.v1 ------------------------------------------------------------------------------------ */

static cat_err_t apply_changes(cache_t *cache, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	bool candidates = false;
	cat_err_t err;

	for (size_t m = 0; m < batch->n; m++) {
		cat_msg_t *msg = &batch->msgs[m];
		Catalyst__V1__ChangeBatch *changes;
		char why[256];

		if (cat_codec_change_batch_decode(msg->rkm->payload, msg->rkm->len, &changes, why, sizeof(why)) !=
		    CAT_OK) {
			mark(batch, (int32_t)m, why);
			continue;
		}
		if (changes->meta && changes->meta->has_issued_at_us)
			msg->issued_at_us = changes->meta->issued_at_us;
		for (size_t c = 0; c < changes->n_changes; c++) {
			const Catalyst__V1__Change *change = changes->changes[c];
			bool is_delete;

			if (!change->has_op || (change->op != CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT &&
						change->op != CATALYST__V1__WRITE_OP__WRITE_OP_DELETE)) {
				mark(batch, (int32_t)m, "a change without a known op");
				continue;
			}
			is_delete = change->op == CATALYST__V1__WRITE_OP__WRITE_OP_DELETE;
			if (cat_codec_record_validate(change->record, is_delete, why, sizeof(why)) != CAT_OK) {
				mark(batch, (int32_t)m, why);
				continue;
			}
			if (cache_put_record(cache, change->record, is_delete, "u", 0, (int32_t)m, &candidates, why,
					     sizeof(why)) != 0) {
				cat_metrics_inc(cache->m_uncacheable);
				mark(batch, (int32_t)m, why);
			}
		}
		catalyst__v1__change_batch__free_unpacked(changes, NULL);
		if ((err = cache_flush_if_full(cache, batch, errstr, errstr_size)) != CAT_OK)
			return err;
	}
	if (candidates)
		cache_invalidate_candidates(cache);
	return cache_flush(cache, batch, errstr, errstr_size);
}

/* --- cache.v1 ---------------------------------------------------------------------------------------- */

/* SCAN MATCH pattern + UNLINK, scan_count keys a step, until the cursor
 * comes back to 0. */
static cat_err_t invalidate_pattern(cache_t *cache, const char *pattern, char *errstr, size_t errstr_size)
{
	char cursor[32] = "0", count[24];
	long long removed = 0;
	cat_err_t err;

	snprintf(count, sizeof(count), "%lld", cache->scan_count);
	do {
		redisReply *reply = NULL, *keys;

		if ((err = cache_redis_ensure(cache, errstr, errstr_size)) != CAT_OK)
			return err;
		err = cat_redis_command(cache->redis, &reply, 6,
					(const char *[]){"SCAN", cursor, "MATCH", pattern, "COUNT", count}, NULL,
					errstr, errstr_size);
		if (err != CAT_OK)
			return err;
		cat_metrics_inc(cache->m_commands);
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
			err = cat_redis_command(cache->redis, &unlinked, (int)keys->elements + 1, argv, lens, errstr,
						errstr_size);
			free(argv);
			free(lens);
			if (err == CAT_OK) {
				removed += unlinked->integer;
				cat_metrics_inc(cache->m_commands);
				freeReplyObject(unlinked);
			}
		}
		freeReplyObject(reply);
		if (err != CAT_OK)
			return err;
	} while (strcmp(cursor, "0") != 0);
	cat_metrics_add(cache->m_invalidated, removed);
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
	mark(batch, m, line);
	return false;
}

/* Queues set or delete; runs invalidate and warm at once (after what is
 * queued). */
static cat_err_t apply_command(cache_t *cache, cat_batch_t *batch, int32_t m, const Catalyst__V1__CacheCommand *cmd,
			       char *errstr, size_t errstr_size)
{
	switch (cmd->action_case) {
	case CATALYST__V1__CACHE_COMMAND__ACTION_SET: {
		const Catalyst__V1__CacheCommand__Set *set = cmd->set;
		size_t key_len = set->key ? strlen(set->key) : 0;
		const char *value = set->value.data ? (const char *)set->value.data : "";
		char ttl[24], why[256];

		if (!key_allowed(cache, batch, m, "set", set->key, false))
			return CAT_OK;
		if (key_len >= 2 && strcmp(set->key + key_len - 2, "#v") == 0) {
			mark(batch, m, "set: the key must not end with \"#v\"");
			return CAT_OK;
		}
		if (!set->has_value || (long long)set->value.len > cache->max_value) {
			snprintf(why, sizeof(why),
				 "set %.200s: value of %zu bytes is larger than CATALYST_CACHE_MAX_VALUE_BYTES (%lld)",
				 set->key, set->has_value ? set->value.len : 0, cache->max_value);
			if (!set->has_value)
				snprintf(why, sizeof(why), "set %.200s: no value", set->key);
			else
				cat_metrics_inc(cache->m_uncacheable);
			mark(batch, m, why);
			return CAT_OK;
		}
		if (set->ttl_seconds < 0 || (set->has_version && set->version < 1)) {
			mark(batch, m, "set: ttl_seconds must not be negative and version must be at least 1");
			return CAT_OK;
		}
		if (set->has_version) {
			cache_put(cache, 's', set->key, key_len, set->version, set->ttl_seconds, value,
				  set->value.len, NULL, NULL, m, UINT16_MAX);
		} else {
			char vkey[MAX_KEY_BYTES + 3];

			snprintf(ttl, sizeof(ttl), "%lld", (long long)set->ttl_seconds);
			snprintf(vkey, sizeof(vkey), "%s#v", set->key);
			if (set->ttl_seconds > 0)
				cache_plain(cache, 5, (const char *[]){"SET", set->key, value, "EX", ttl},
					    (size_t[]){3, key_len, set->value.len, 2, strlen(ttl)}, m);
			else
				cache_plain(cache, 3, (const char *[]){"SET", set->key, value},
					    (size_t[]){3, key_len, set->value.len}, m);
			/* an unversioned set overrides: any version replaces it (its
			 * value is not parsed for one) */
			if (set->ttl_seconds > 0)
				cache_plain(cache, 5, (const char *[]){"SET", vkey, "0", "EX", ttl},
					    (size_t[]){3, strlen(vkey), 1, 2, strlen(ttl)}, m);
			else
				cache_plain(cache, 3, (const char *[]){"SET", vkey, "0"}, NULL, m);
		}
		if (strncmp(set->key, "candidates:top:", 15) == 0 && strcmp(set->key, "candidates:top:keys") != 0)
			cache_plain(cache, 3, (const char *[]){"SADD", "candidates:top:keys", set->key}, NULL, m);
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
			cache_plain(cache, 3, (const char *[]){"UNLINK", del->keys[k], vkey}, NULL, m);
		}
		if (del->n_keys == 0)
			mark(batch, m, "delete: no keys");
		return CAT_OK;
	}
	case CATALYST__V1__CACHE_COMMAND__ACTION_INVALIDATE: {
		const char *pattern = cmd->invalidate->pattern;
		cat_err_t err;

		if (!key_allowed(cache, batch, m, "invalidate", pattern, true))
			return CAT_OK;
		if ((err = cache_flush(cache, batch, errstr, errstr_size)) != CAT_OK)
			return err;
		return invalidate_pattern(cache, pattern, errstr, errstr_size);
	}
	case CATALYST__V1__CACHE_COMMAND__ACTION_WARM: {
		cat_err_t err;
		int profile = cmd->warm->has_profile ? (int)cmd->warm->profile : 0;

		if (profile != CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_MARKET_OPEN &&
		    profile != CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD) {
			mark(batch, m, "warm: unknown profile");
			return CAT_OK;
		}
		if ((err = cache_flush(cache, batch, errstr, errstr_size)) != CAT_OK)
			return err;
		return cache_warm(cache, profile, errstr, errstr_size);
	}
	default:
		mark(batch, m, "a cache command without a known action");
		return CAT_OK;
	}
}

static cat_err_t apply_commands(cache_t *cache, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err = CAT_OK;

	for (size_t m = 0; m < batch->n && err == CAT_OK; m++) {
		cat_msg_t *msg = &batch->msgs[m];
		Catalyst__V1__CacheCommand *cmd = NULL;
		char why[256];

		if (cat_codec_cache_command_decode(msg->rkm->payload, msg->rkm->len, &cmd, why, sizeof(why)) !=
		    CAT_OK) {
			mark(batch, (int32_t)m, why);
			continue;
		}
		if (cmd->meta && cmd->meta->has_issued_at_us)
			msg->issued_at_us = cmd->meta->issued_at_us;
		err = apply_command(cache, batch, (int32_t)m, cmd, errstr, errstr_size);
		catalyst__v1__cache_command__free_unpacked(cmd, NULL);
		if (err == CAT_OK)
			err = cache_flush_if_full(cache, batch, errstr, errstr_size);
	}
	if (err == CAT_OK)
		err = cache_flush(cache, batch, errstr, errstr_size);
	else
		queue_reset(cache);
	return err;
}

/* --- the handler ------------------------------------------------------------------------------------------ */

cat_err_t cache_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cache_t *cache = opaque;
	cat_err_t err;

	queue_reset(cache);
	if ((err = cache_redis_ensure(cache, errstr, errstr_size)) != CAT_OK)
		return err;
	if (strcmp(batch->topic, cache->changes_topic) == 0)
		err = apply_changes(cache, batch, errstr, errstr_size);
	else if (strcmp(batch->topic, cache->cache_topic) == 0)
		err = apply_commands(cache, batch, errstr, errstr_size);
	else
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "a batch of unexpected topic %s", batch->topic);
	if (err != CAT_OK)
		queue_reset(cache);
	return err;
}
