/*
 * catalyst-cache: the store (internal.h), the bottom of the worker. One
 * Redis connection with the scripts (scripts.h), a session on the primary
 * for warms, the key layout of the tables and the counters; the pipeline
 * queue (queue.c) and the record encoding (records.c) work on its buffers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_pg.h"
#include "internal.h"
#include "scripts.h"

static const double rtt_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
				     0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
static const double depth_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};

#define N_RTT_BUCKETS	(sizeof(rtt_buckets) / sizeof(rtt_buckets[0]))
#define N_DEPTH_BUCKETS (sizeof(depth_buckets) / sizeof(depth_buckets[0]))

/* CATALYST_CACHE_TOP_LIMITS (validated by the config table) -> top_limits */
static void top_limits_init(cache_store_t *store)
{
	const cat_config_int_list_t *limits = &store->settings.top_limits;

	store->n_top_limits = limits->n < MAX_TOP_LIMITS ? limits->n : MAX_TOP_LIMITS;
	for (size_t i = 0; i < store->n_top_limits; i++) {
		snprintf(store->top_limits[i], sizeof(store->top_limits[0]), "%lld", limits->v[i]);
		if (limits->v[i] > store->top_max)
			store->top_max = limits->v[i];
	}
}

static void layout_init(cache_store_t *store, cat_metrics_t *metrics)
{
	const struct {
		const char *table, *prefix, *set_prefix;
		const long long *ttl_s;
	} defs[] = {
		{"news_raw", "news:", "news:symbol:", &store->settings.news_ttl_s},
		{"trading_signals", "signals:", "signals:symbol:", &store->settings.signal_ttl_s},
		{"trade_records", "trades:", "trades:symbol:", &store->settings.trade_ttl_s},
		{"source_metrics", "sources:", NULL, &store->settings.source_ttl_s},
		{"trading_candidates", NULL, NULL, NULL},
	};

	for (size_t t = 0; t < cat_schema_n_tables && t < MAX_TABLES; t++) {
		layout_t *layout = &store->layouts[t];

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
			layout->set_ttl = store->settings.symbol_ttl_s;
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

static void register_metrics(cache_store_t *store, cat_metrics_t *metrics)
{
	static const char *const profiles[2] = {"market_open", "rebuild"};

	store->m_commands = cat_metrics_counter(metrics, "catalyst_cache_redis_commands_total",
						"commands sent to Redis (a PUT script call counts once)", NULL);
	store->m_depth = cat_metrics_histogram(metrics, "catalyst_cache_pipeline_depth",
					       "commands per pipeline", depth_buckets, N_DEPTH_BUCKETS, NULL);
	store->m_rtt = cat_metrics_histogram(metrics, "catalyst_cache_redis_roundtrip_seconds",
					     "time from sending a pipeline to its last reply", rtt_buckets,
					     N_RTT_BUCKETS, NULL);
	store->m_reloads = cat_metrics_counter(metrics, "catalyst_cache_script_reloads_total",
					       "scripts loaded again after NOSCRIPT", NULL);
	store->m_reconnects = cat_metrics_counter(metrics, "catalyst_cache_redis_reconnects_total",
						  "Redis connections reopened after a loss", NULL);
	store->m_invalidated = cat_metrics_counter(metrics, "catalyst_cache_keys_invalidated_total",
						   "keys removed by invalidations (patterns and candidate "
						   "changes)",
						   NULL);
	store->m_uncacheable = cat_metrics_counter(metrics, "catalyst_cache_uncacheable_total",
						   "values that could not be cached (too large, an id that "
						   "would land on another key); their messages are dead-lettered",
						   NULL);
	for (int p = 0; p < 2; p++) {
		store->m_warm_rows[p] = cat_metrics_counter(metrics, "catalyst_cache_warm_rows_total",
							    "rows read from the primary by warms", "profile",
							    profiles[p], NULL);
		store->m_warm_seconds[p] =
			cat_metrics_histogram(metrics, "catalyst_cache_warm_duration_seconds", "time of a warm",
					      NULL, 0, "profile", profiles[p], NULL);
	}
	store->m_warm_conflicts = cat_metrics_counter(
		metrics, "catalyst_cache_warm_conflicts_total",
		"candidates lists a warm did not store because a candidate changed meanwhile", NULL);
}

void cache_store_destroy(cache_store_t *store)
{
	if (!store)
		return;
	for (int i = 0; i < 2; i++) {
		free(store->q[i].cmds);
		free(store->q[i].items);
	}
	free(store->arena);
	free(store->json);
	cat_pg_session_free(store->pg);
	cat_redis_destroy(store->redis);
	free(store);
}

cat_err_t cache_store_new(cache_store_t **out, const cat_config_t *cfg, const cache_settings_t *settings,
			  cat_redis_t *redis, cat_metrics_t *metrics, char *errstr, size_t errstr_size)
{
	cache_store_t *store = calloc(1, sizeof(*store));
	cat_pg_session_opts_t pg_opts;
	cat_err_t err;

	*out = NULL;
	cat_pg_session_opts_from_config(&pg_opts, cfg, CACHE_WORKER);
	if (!store) {
		cat_redis_destroy(redis);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	store->cfg = cfg;
	store->settings = *settings;
	store->metrics = metrics;
	store->redis = redis;
	if ((err = cat_pg_session_new(&store->pg, &pg_opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	cat_redis_script_init(&store->scripts[SCRIPT_PUT], CACHE_SCRIPT_PUT);
	cat_redis_script_init(&store->scripts[SCRIPT_INVALIDATE_CANDIDATES], CACHE_SCRIPT_INVALIDATE_CANDIDATES);
	cat_redis_script_init(&store->scripts[SCRIPT_SET_IF_GENERATION], CACHE_SCRIPT_SET_IF_GENERATION);
	cat_redis_script_init(&store->scripts[SCRIPT_HEAL_CHECK], CACHE_SCRIPT_HEAL_CHECK);
	cat_redis_script_init(&store->scripts[SCRIPT_HEAL_DONE], CACHE_SCRIPT_HEAL_DONE);
	store->symbol_ttl = settings->symbol_ttl_s;
	store->active_ttl = settings->active_ttl_s;
	store->top_ttl = settings->top_ttl_s;
	store->warm_news_ttl = settings->warm_news_ttl_s;
	store->max_value = settings->max_value_bytes;
	store->pipeline_bytes = settings->pipeline_bytes;
	store->scan_count = settings->scan_count;
	store->rebuild_chunk = settings->rebuild_chunk;
	top_limits_init(store);
	if (cat_schema_n_tables > MAX_TABLES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the schema has more than %d tables",
				  MAX_TABLES);
		goto error;
	}
	layout_init(store, metrics);
	register_metrics(store, metrics);
	*out = store;
	return CAT_OK;

error:
	cache_store_destroy(store);
	return err;
}
cat_err_t cache_redis_ensure(cache_store_t *store, char *errstr, size_t errstr_size)
{
	bool was = cat_redis_connects(store->redis) > 0;
	cat_err_t err;

	if (cat_redis_is_connected(store->redis))
		return CAT_OK;
	err = cat_redis_ensure(store->redis, errstr, errstr_size);
	if (err == CAT_OK) {
		if (was)
			cat_metrics_inc(store->m_reconnects);
		CAT_LOG_INFO("REDIS", "connected to %s", cat_redis_address(store->redis));
	} else {
		atomic_store(&store->redis_down, true);
	}
	return err;
}
