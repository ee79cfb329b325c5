/*
 * catalyst-cache internals: the layers under the consume handler, and what
 * each offers the ones above it. A file calls only the files below it:
 *
 *   handler.c  the consume handler of cache.h: changes.v1 and cache.v1 onto
 *              its store, readiness, the self-heal's start and stop
 *   heal.c     the self-heal thread: a store of its own, rebuilt by warm.c
 *   warm.c     market open and rebuild: rows of the primary as records
 *   records.c  a record -> its PUT item: key, version, JSON, symbol set
 *   queue.c    the pipelined commands of a store: PUT script calls, plain
 *              commands, the candidates' invalidation; sent as pipelines,
 *              their replies read and classed
 *   store.c    the store: a Redis connection with the scripts, a session on
 *              the primary for warms, the tables' key layout, the counters
 *
 * A store is used by one thread at a time (the consume loop's, or the
 * self-heal's own store); only redis_down is read from another (readiness,
 * on the HTTP thread).
 */
#ifndef CACHE_INTERNAL_H
#define CACHE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include "cache.h"
#include "cat_codec.h"
#include "cat_pg.h"
#include "cat_schema.h"

#define CACHE_WORKER "catalyst-cache"

#define MAX_TABLES	8
#define MAX_TOP_LIMITS	CACHE_MAX_TOP_LIMITS
#define PUT_ITEMS	256	   /* items of one PUT script call */
#define PUT_CALL_BYTES	(1 << 20) /* a PUT call ends past this many argument bytes */
#define PUT_ARGS	4 /* key, version, value, set */
#define PUT_OP_BYTES	3 /* op, TTL slot, prefix length: in the call's ops argument */
#define PUT_TTL_SLOTS	9 /* distinct TTLs of one PUT call */
#define MAX_KEY_BYTES	1024

enum {
	SCRIPT_PUT,
	SCRIPT_INVALIDATE_CANDIDATES,
	SCRIPT_SET_IF_GENERATION,
	SCRIPT_HEAL_CHECK,
	SCRIPT_HEAL_DONE,
	N_SCRIPTS
};

/* Where a table's rows live in Redis; prefix NULL: not cached row by row. */
typedef struct layout {
	const cat_table_t *table;
	const char *prefix;	/* "news:" */
	const char *set_prefix; /* "news:symbol:", NULL: no set */
	long long ttl;
	long long set_ttl;
	bool derived_candidates; /* a change invalidates the candidates lists */
	/* record fields read for every change (NULL: the table has none) */
	const ProtobufCFieldDescriptor *f_pk, *f_symbol, *f_version;
	cat_metric_t *m_applied;
	cat_metric_t *m_stale;
} layout_t;

/* What a queued command is, to read its reply. */
typedef enum cmd_kind {
	CMD_PUT,	/* items [first, first + n) */
	CMD_PLAIN,	/* any reply but an error; msg: whose */
	CMD_INVALIDATE, /* INVALIDATE_CANDIDATES */
} cmd_kind_t;

typedef struct cmd {
	cmd_kind_t kind;
	int32_t msg; /* batch message, -1: none */
	size_t first, n;
} cmd_t;

typedef struct item {
	int32_t msg;	/* batch message, -1: none (warm) */
	uint16_t table; /* layout index, for the counters */
} item_t;

typedef struct queue {
	cmd_t *cmds;
	size_t n_cmds, cap_cmds;
	item_t *items;
	size_t n_items, cap_items;
} queue_t;

/* The store (store.c), with the state of its queue (queue.c) and of the
 * record encoding (records.c). */
typedef struct cache_store {
	const cat_config_t *cfg;
	cache_settings_t settings;
	cat_metrics_t *metrics; /* borrowed */
	cat_redis_t *redis;
	cat_pg_session_t *pg; /* the primary, for warms */
	cat_redis_script_t scripts[N_SCRIPTS];

	layout_t layouts[MAX_TABLES]; /* by index in cat_schema_tables */
	char top_limits[MAX_TOP_LIMITS][16];
	size_t n_top_limits;
	long long top_max;
	long long symbol_ttl, active_ttl, top_ttl, warm_news_ttl, max_value, pipeline_bytes, scan_count, rebuild_chunk;

	/* the PUT call being filled: its arguments as protocol bulk strings */
	char *arena;
	size_t arena_len, arena_cap;
	size_t n_call_items;
	char call_ops[PUT_ITEMS * PUT_OP_BYTES];
	/* the call's keys (a key twice ends the call: the script reads every
	 * key once, at its start): open addressing, offset + 1 into the arena */
	struct {
		uint32_t off, len;
	} call_keys[2 * PUT_ITEMS];
	long long call_ttls[PUT_TTL_SLOTS];
	int n_call_ttls;
	/* a record's JSON (reused) */
	char *json;
	size_t json_cap;
	/* the commands and items of two pipelines: q[fill] being filled, the
	 * other sent and waiting for its replies (while cat_redis_in_flight) */
	queue_t q[2];
	int fill;
	int64_t sent_at_us;
	bool oom; /* an allocation failed while queuing */

	uint64_t reloads_seen;
	cat_metric_t *m_commands;
	cat_metric_t *m_depth;
	cat_metric_t *m_rtt;
	cat_metric_t *m_reloads;
	cat_metric_t *m_reconnects;
	cat_metric_t *m_invalidated;
	cat_metric_t *m_uncacheable;
	cat_metric_t *m_warm_rows[2];
	cat_metric_t *m_warm_seconds[2];
	cat_metric_t *m_warm_conflicts;
	atomic_bool redis_down;

	/* called between the chunks of a rebuild (NULL: none): a failure ends
	 * the rebuild with it */
	cat_err_t (*on_chunk)(void *arg, char *errstr, size_t errstr_size);
	void *on_chunk_arg;
} cache_store_t;

/* --- store.c ------------------------------------------------------------------------------------ */

/* A store on `redis` (owned from this call on, also when it fails), with a
 * session on CATALYST_PG_URL (not connected yet) and the counters of
 * `metrics` (borrowed); `settings` is copied (`cfg` must outlive the store:
 * its strings). */
cat_err_t cache_store_new(cache_store_t **out, const cat_config_t *cfg, const cache_settings_t *settings,
			  cat_redis_t *redis, cat_metrics_t *metrics, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Closes and frees; accepts NULL. */
void cache_store_destroy(cache_store_t *store);

/* A Redis connection that works (counts reconnects; redis_down when not). */
cat_err_t cache_redis_ensure(cache_store_t *store, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* --- queue.c ------------------------------------------------------------------------------------ */

/* Queues one PUT item (see scripts.h: op, key, version, ttl, value, symbol,
 * member; NULL strings as ""); `msg` is the batch message it comes from
 * (-1: none). Strings are copied. */
void cache_put(cache_store_t *store, char op, const char *key, size_t key_len, int64_t version, long long ttl,
	       const char *value, size_t value_len, const char *symbol, const char *member, int32_t msg,
	       uint16_t table);

/* Queues a plain command (argv copied). */
void cache_plain(cache_store_t *store, int argc, const char *const *argv, const size_t *lens, int32_t msg);

/* Queues the candidates invalidation. */
void cache_invalidate_candidates(cache_store_t *store);

/* Drops what is queued and what is in flight (whose replies would come
 * unread: the connection goes). */
void cache_queue_reset(cache_store_t *store);

/* Marks batch message `msg` permanent with `why` (the first reason stays);
 * without such a message (batch NULL, msg -1: a warm) logs it instead. */
void cache_mark(cat_batch_t *batch, int32_t msg, const char *why);

/* Sends what is queued as one pipeline and reads every reply (of the
 * pipeline in flight too): marks
 * `batch` messages whose items failed permanently (batch may be NULL: then
 * such failures are counted and logged). Retriable/fatal for the pipeline. */
cat_err_t cache_flush(cache_store_t *store, cat_batch_t *batch, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* When the queue is past CATALYST_CACHE_PIPELINE_BYTES: reads the replies of
 * the pipeline in flight, then sends the queue without waiting for its
 * replies (the next cache_flush or cache_flush_if_full reads them), so that
 * Redis runs one pipeline while the next one is prepared. */
cat_err_t cache_flush_if_full(cache_store_t *store, cat_batch_t *batch, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;

/* --- records.c ---------------------------------------------------------------------------------- */

/* Queues the PUT of one record (an upsert, or a delete when is_delete):
 * 0 queued or nothing to cache (a candidate: sets *candidates), else -1 with
 * the reason it cannot be cached in `why`. */
int cache_put_record(cache_store_t *store, const Catalyst__V1__Record *record, bool is_delete, const char *op,
		     long long ttl_override, int32_t msg, bool *candidates, char *why, size_t why_size);

/* --- warm.c ------------------------------------------------------------------------------------- */

/* market-open and rebuild (cache.v1 warm; the self-heal's rebuild), read
 * from the primary through the store's session. */
cat_err_t cache_warm(cache_store_t *store, int profile, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* --- heal.c ------------------------------------------------------------------------------------- */

typedef struct cache_heal cache_heal_t;

/* The self-heal thread when CATALYST_CACHE_HEAL_CHECK_MS is not 0 (*out
 * NULL when it is): a store of its own, made from `store`'s configuration,
 * settings and metrics (its connections open when it needs them). */
cat_err_t cache_heal_new(cache_heal_t **out, const cache_store_t *store, char *errstr,
			 size_t errstr_size) CAT_MUST_CHECK;

/* Readiness of the self-heal: false while a rebuild is needed or running,
 * with what it does in `reason`. */
bool cache_heal_ready(cache_heal_t *heal, char *reason, size_t reason_size);

/* Stops the thread and frees; accepts NULL. */
void cache_heal_destroy(cache_heal_t *heal);

#endif /* CACHE_INTERNAL_H */
