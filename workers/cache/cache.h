/*
 * catalyst-cache's handler for the consume loop (cat_handler_t):
 * changes.v1 + cache.v1 -> Redis.
 *
 * Key layout (the seed's, plus signals, trades and sources):
 *   news:{news_id}              the row as JSON        CATALYST_CACHE_NEWS_TTL_S (3600)
 *   news:symbol:{symbol}        set of news ids        CATALYST_CACHE_SYMBOL_TTL_S (3600)
 *   signals:{signal_id}         JSON                   CATALYST_CACHE_SIGNAL_TTL_S (3600)
 *   signals:symbol:{symbol}     set of signal ids      CATALYST_CACHE_SYMBOL_TTL_S
 *   trades:{trade_id}           JSON                   CATALYST_CACHE_TRADE_TTL_S (86400)
 *   trades:symbol:{symbol}      set of trade ids       CATALYST_CACHE_SYMBOL_TTL_S
 *   sources:{source_name}       JSON                   CATALYST_CACHE_SOURCE_TTL_S (86400)
 *   candidates:active           JSON list: selected in the last hour, not traded
 *                                                      CATALYST_CACHE_ACTIVE_TTL_S (1800)
 *   candidates:top:{n}          JSON list: the last hour's best n by catalyst score
 *                               (n of CATALYST_CACHE_TOP_LIMITS)  CATALYST_CACHE_TOP_TTL_S (300)
 *   candidates:top:keys         other candidates:top:* keys set through cache.v1
 *   candidates:generation       moves on at every candidate change
 *   KEY#v                       only beside some values: a delete's tombstone, or the
 *                               version of a value set through cache.v1 (scripts.h);
 *                               a row's value carries its own version (its JSON's
 *                               "version"), so one key holds both
 * A candidate change removes candidates:top:* and candidates:active (derived
 * lists; warm and rebuild make them again). A row whose id would land on
 * another key of the layout (an id starting "symbol:" or ending "#v") or
 * whose JSON is longer than CATALYST_CACHE_MAX_VALUE_BYTES cannot be cached:
 * its message is dead-lettered with the reason, after the rest is applied.
 *
 * changes.v1: every change of a batch becomes one item of a PUT script call
 * (up to 256 items a call, each key at most once: one MGET of their values,
 * one SADD and one EXPIRE per symbol set), the calls go out as pipelines of
 * CATALYST_CACHE_PIPELINE_BYTES, one sent while the next is encoded (its
 * replies read before the next is sent; batches of 2000 messages by default,
 * so that a backlog keeps both Redis and the worker busy), and apply()
 * returns only once every reply is read. A row's JSON is written
 * by cat_codec_record_json (no tree).
 *
 * cache.v1: set (version-checked when it carries a version), delete,
 * invalidate (SCAN MATCH + UNLINK, CATALYST_CACHE_SCAN_COUNT keys a step),
 * warm market-open (news pre-market of the last 4 h, top 100 by catalyst
 * score, TTL CATALYST_CACHE_WARM_NEWS_TTL_S (7200); candidates:active) and
 * warm rebuild (every row of the cached tables, through a cursor,
 * CATALYST_CACHE_REBUILD_CHUNK rows at a time, and the candidates lists).
 *
 * set, delete and invalidate reach only the layout's key families (news:,
 * signals:, trades:, sources:, candidates:) and CATALYST_CACHE_KEY_NAMESPACE;
 * any other key or pattern is dead-lettered with the reason (keys.h).
 *
 * Self-heal (heal.c): when Redis loses its data (its sentinel is gone or
 * names another server), a thread of its own rebuilds it from the primary,
 * rate-limited, while changes keep being applied; /readyz is 503 meanwhile.
 *
 * Results: Redis unreachable, timeouts, LOADING/BUSY/OOM/READONLY and
 * PostgreSQL connection loss -> CAT_ERR_RETRIABLE (nothing is stored, the
 * loop retries with backoff); Redis or PostgreSQL refusing our credentials
 * -> CAT_ERR_FATAL; a message that cannot apply -> marked permanent.
 */
#ifndef CACHE_CACHE_H
#define CACHE_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "cat_config.h"
#include "cat_consumer.h"
#include "cat_err.h"
#include "cat_metrics.h"
#include "cat_redis.h"

/* Most n of candidates:top:{n} (CATALYST_CACHE_TOP_LIMITS). */
#define CACHE_MAX_TOP_LIMITS 16

/* The worker's own settings, filled from its config table (main.c binds
 * each CATALYST_CACHE_* row to a field); strings are borrowed from the
 * cat_config_t. The shared blocks (PostgreSQL, Redis, consumer, HTTP) are
 * read by their modules. */
typedef struct cache_settings {
	const char *group, *bind, *key_namespace;
	long long port;
	long long news_ttl_s, symbol_ttl_s, signal_ttl_s, trade_ttl_s, source_ttl_s, active_ttl_s, top_ttl_s,
		warm_news_ttl_s;
	cat_config_int_list_t top_limits;
	long long max_value_bytes, pipeline_bytes, scan_count, rebuild_chunk;
	long long heal_check_ms, rebuild_min_interval_s;
} cache_settings_t;

typedef struct cache cache_t;

/* The handler state, with a session on CATALYST_PG_URL for warms (not
 * connected yet): `redis` is owned from this call on, also when it fails;
 * `metrics` is borrowed; `settings` is copied (`cfg` must outlive the
 * cache: its strings). */
cat_err_t cache_new(cache_t **out, const cat_config_t *cfg, const cache_settings_t *settings,
		    cat_redis_t *redis, cat_metrics_t *metrics, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

void cache_destroy(cache_t *cache);

/* Connects to CATALYST_PG_URL now (a warm would otherwise): retriable when
 * unreachable, fatal for credentials or a database that does not exist. */
cat_err_t cache_pg_connect(cache_t *cache, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* cat_handler_t.apply and .ready (opaque: the cache_t). ready() runs on the
 * HTTP thread: false while Redis does not answer a PING. */
cat_err_t cache_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size);
bool cache_ready(void *opaque, char *reason, size_t reason_size);

/* Starts the self-heal thread (heal.c) when CATALYST_CACHE_HEAL_CHECK_MS is
 * not 0 (it opens its own Redis and PostgreSQL connections when it needs
 * them); cache_destroy() stops it. */
cat_err_t cache_heal_start(cache_t *cache, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

#endif /* CACHE_CACHE_H */
