/*
 * catalyst-cache: the pipelined Redis command queue (internal.h). PUT items
 * are gathered into calls of the PUT script, plain commands and the
 * candidates' invalidation are queued between them in message order; the
 * queue goes out as one pipeline while the next one is filled, and every
 * reply is read back and classed against the batch message it came from.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_time.h"
#include "internal.h"

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

static cmd_t *cmd_add(cache_store_t *store, cmd_kind_t kind, int32_t msg)
{
	queue_t *q = &store->q[store->fill];
	cmd_t *cmds = grow(q->cmds, &q->cap_cmds, q->n_cmds + 1, sizeof(*cmds), &store->oom);

	if (!cmds)
		return NULL;
	q->cmds = cmds;
	cmds[q->n_cmds] = (cmd_t){kind, msg, q->n_items, 0};
	return &cmds[q->n_cmds++];
}

/* Appends the concatenation of parts[0, n) as one bulk string
 * "$<len>\r\n<bytes>\r\n" to the PUT call. */
static void arena_add_parts(cache_store_t *store, const char *const *parts, const size_t *lens, int n)
{
	char head[32];
	size_t len = 0;
	int head_len;
	char *arena;

	for (int i = 0; i < n; i++)
		len += lens[i];
	head_len = snprintf(head, sizeof(head), "$%zu\r\n", len);
	if (!(arena = grow(store->arena, &store->arena_cap, store->arena_len + (size_t)head_len + len + 2, 1,
			   &store->oom)))
		return;
	store->arena = arena;
	memcpy(arena + store->arena_len, head, (size_t)head_len);
	store->arena_len += (size_t)head_len;
	for (int i = 0; i < n; i++) {
		memcpy(arena + store->arena_len, parts[i], lens[i]);
		store->arena_len += lens[i];
	}
	memcpy(arena + store->arena_len, "\r\n", 2);
	store->arena_len += 2;
}

static void arena_add(cache_store_t *store, const char *text, size_t len)
{
	arena_add_parts(store, &text, &len, 1);
}

static void arena_add_int(cache_store_t *store, long long v)
{
	char text[24];
	int len = snprintf(text, sizeof(text), "%lld", v);

	arena_add(store, text, (size_t)len);
}

/* Queues the PUT call being filled: its header (the symbol sets' TTL, the
 * TTL slots and the items' ops) then its items. */
static void put_call_end(cache_store_t *store)
{
	queue_t *q = &store->q[store->fill];
	char heads[(1 + PUT_TTL_SLOTS) * 32 + 16];
	size_t heads_len = 0, ops_len = store->n_call_items * PUT_OP_BYTES;
	cmd_t *cmd;

	if (store->n_call_items == 0)
		return;
	for (int h = 0; h <= PUT_TTL_SLOTS; h++) {
		long long v = h == 0 ? store->symbol_ttl : h <= store->n_call_ttls ? store->call_ttls[h - 1] : 0;
		char text[24];
		int n = snprintf(text, sizeof(text), "%lld", v);

		heads_len += (size_t)snprintf(heads + heads_len, sizeof(heads) - heads_len, "$%d\r\n%s\r\n", n, text);
	}
	heads_len += (size_t)snprintf(heads + heads_len, sizeof(heads) - heads_len, "$%zu\r\n", ops_len);
	if (!store->oom && (cmd = cmd_add(store, CMD_PUT, -1))) {
		cmd->first = q->n_items - store->n_call_items;
		cmd->n = store->n_call_items;
		if (cat_redis_append_evalsha_bulk(store->redis, &store->scripts[SCRIPT_PUT], 0,
						  (int)(1 + PUT_TTL_SLOTS + 1 + store->n_call_items * PUT_ARGS),
						  (const char *[]){heads, store->call_ops, "\r\n", store->arena},
						  (size_t[]){heads_len, ops_len, 2, store->arena_len}, 4) != CAT_OK) {
			store->oom = true;
			q->n_cmds--;
		}
	}
	store->n_call_items = 0;
	store->n_call_ttls = 0;
	store->arena_len = 0;
	memset(store->call_keys, 0, sizeof(store->call_keys));
}

/* The slot of `key` in the call's keys: where it is, or the empty one
 * where it goes. */
static size_t call_key_slot(const cache_store_t *store, const char *key, size_t key_len)
{
	const size_t n_slots = sizeof(store->call_keys) / sizeof(store->call_keys[0]);
	uint32_t h = 2166136261u; /* FNV-1a */
	size_t slot;

	for (size_t i = 0; i < key_len; i++)
		h = (h ^ (unsigned char)key[i]) * 16777619u;
	for (slot = h % n_slots;; slot = (slot + 1) % n_slots) {
		uint32_t off = store->call_keys[slot].off;

		if (off == 0 || (store->call_keys[slot].len == key_len &&
				 memcmp(store->arena + off - 1, key, key_len) == 0))
			return slot;
	}
}

void cache_put(cache_store_t *store, char op, const char *key, size_t key_len, int64_t version, long long ttl,
	       const char *value, size_t value_len, const char *symbol, const char *member, int32_t msg,
	       uint16_t table)
{
	queue_t *q;
	item_t *items;
	char *ops;
	size_t member_len = member ? strlen(member) : 0, prefix_len = 0, key_slot, arena_len;
	int slot;

	if (member_len <= key_len && key_len - member_len <= UINT8_MAX)
		prefix_len = key_len - member_len; /* key = prefix..member */
	if (store->n_call_items > 0 && store->call_keys[call_key_slot(store, key, key_len)].off != 0)
		put_call_end(store); /* the key is in the call already: the next call sees its result */
	for (slot = 0; slot < store->n_call_ttls; slot++)
		if (store->call_ttls[slot] == ttl)
			break;
	if (slot == PUT_TTL_SLOTS) {
		put_call_end(store); /* a tenth TTL: a new call */
		slot = 0;
	}
	if (slot == store->n_call_ttls)
		store->call_ttls[store->n_call_ttls++] = ttl;
	q = &store->q[store->fill];
	if (!(items = grow(q->items, &q->cap_items, q->n_items + 1, sizeof(*items), &store->oom)))
		return;
	q->items = items;
	items[q->n_items++] = (item_t){msg, table};
	ops = &store->call_ops[store->n_call_items * PUT_OP_BYTES];
	ops[0] = op;
	ops[1] = (char)('0' + slot);
	ops[2] = (char)(unsigned char)prefix_len;
	key_slot = call_key_slot(store, key, key_len);
	arena_len = store->arena_len;
	arena_add(store, key, key_len);
	if (store->arena_len > arena_len && store->arena_len <= UINT32_MAX) { /* at arena_len + "$<len>\r\n" */
		store->call_keys[key_slot].off = (uint32_t)(store->arena_len - 2 - key_len + 1);
		store->call_keys[key_slot].len = (uint32_t)key_len;
	}
	arena_add_int(store, (long long)version);
	arena_add(store, value ? value : "", value ? value_len : 0);
	if (symbol && *symbol && op >= 'A' && op <= 'Z') /* the set's key: prefix..'symbol:'..symbol */
		arena_add_parts(store, (const char *[]){key, "symbol:", symbol},
				(size_t[]){prefix_len, 7, strlen(symbol)}, 3);
	else
		arena_add(store, "", 0);
	if (++store->n_call_items == PUT_ITEMS || store->arena_len >= PUT_CALL_BYTES)
		put_call_end(store);
}

void cache_plain(cache_store_t *store, int argc, const char *const *argv, const size_t *lens, int32_t msg)
{
	put_call_end(store); /* keeps the queue in message order */
	if (!cmd_add(store, CMD_PLAIN, msg))
		return;
	if (cat_redis_append(store->redis, argc, argv, lens) != CAT_OK) {
		store->oom = true;
		store->q[store->fill].n_cmds--;
	}
}

void cache_invalidate_candidates(cache_store_t *store)
{
	const char *argv[MAX_TOP_LIMITS];

	put_call_end(store);
	for (size_t i = 0; i < store->n_top_limits; i++)
		argv[i] = store->top_limits[i];
	if (!cmd_add(store, CMD_INVALIDATE, -1))
		return;
	if (cat_redis_append_evalsha(store->redis, &store->scripts[SCRIPT_INVALIDATE_CANDIDATES], 0,
				     (int)store->n_top_limits, argv, NULL) != CAT_OK) {
		store->oom = true;
		store->q[store->fill].n_cmds--;
	}
}

void cache_queue_reset(cache_store_t *store)
{
	if (cat_redis_in_flight(store->redis) > 0)
		cat_redis_disconnect(store->redis);
	cat_redis_discard(store->redis);
	for (int i = 0; i < 2; i++)
		store->q[i].n_cmds = store->q[i].n_items = 0;
	store->n_call_items = store->arena_len = 0;
	store->n_call_ttls = 0;
	memset(store->call_keys, 0, sizeof(store->call_keys));
	store->oom = false;
	/* a burst's scratch does not stay */
	if (store->arena_cap > 8 * 1024 * 1024) {
		free(store->arena);
		store->arena = NULL;
		store->arena_cap = 0;
	}
	if (store->json_cap > 8 * 1024 * 1024) {
		free(store->json);
		store->json = NULL;
		store->json_cap = 0;
	}
}

void cache_mark(cat_batch_t *batch, int32_t msg, const char *why)
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
		cache_mark(batch, msg, why);
		return CAT_OK;
	}
	if (err != CAT_OK)
		return cat_err_set(errstr, errstr_size, err, "%s", why);
	return CAT_OK;
}

/* The replies of queue q, in command order. */
static cat_err_t read_replies(cache_store_t *store, const queue_t *q, cat_batch_t *batch, redisReply **replies, size_t n,
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
				cat_metrics_add(store->m_invalidated, reply->integer);
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
					cat_metrics_inc(r->integer == 1 ? store->layouts[item->table].m_applied
									: store->layouts[item->table].m_stale);
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
static cat_err_t wait_in_flight(cache_store_t *store, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	queue_t *q = &store->q[!store->fill];
	redisReply **replies = NULL;
	size_t n = 0;
	cat_err_t err;

	if (cat_redis_in_flight(store->redis) == 0)
		return CAT_OK;
	err = cat_redis_wait(store->redis, store->scripts, N_SCRIPTS, &replies, &n, errstr, errstr_size);
	if (err != CAT_OK) {
		if (err == CAT_ERR_RETRIABLE)
			atomic_store(&store->redis_down, true);
		cache_queue_reset(store);
		return err;
	}
	atomic_store(&store->redis_down, false);
	cat_metrics_observe(store->m_rtt, (double)(cat_time_mono_us() - store->sent_at_us) / 1e6);
	if (cat_redis_script_reloads(store->redis) != store->reloads_seen) {
		cat_metrics_add(store->m_reloads,
				(int64_t)(cat_redis_script_reloads(store->redis) - store->reloads_seen));
		store->reloads_seen = cat_redis_script_reloads(store->redis);
	}
	err = read_replies(store, q, batch, replies, n, errstr, errstr_size);
	cat_redis_replies_free(replies, n);
	q->n_cmds = q->n_items = 0;
	if (err != CAT_OK)
		cache_queue_reset(store);
	return err;
}

/* Sends the queue (nothing may be in flight); it is in flight then. */
static cat_err_t send_queue(cache_store_t *store, char *errstr, size_t errstr_size)
{
	queue_t *q = &store->q[store->fill];
	cat_err_t err;

	put_call_end(store);
	if (store->oom) {
		cache_queue_reset(store);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	}
	if (q->n_cmds == 0)
		return CAT_OK;
	if ((err = cache_redis_ensure(store, errstr, errstr_size)) != CAT_OK) {
		cache_queue_reset(store);
		return err;
	}
	cat_metrics_observe(store->m_depth, (double)q->n_cmds);
	cat_metrics_add(store->m_commands, (int64_t)q->n_cmds);
	store->sent_at_us = cat_time_mono_us();
	if ((err = cat_redis_send(store->redis, errstr, errstr_size)) != CAT_OK) {
		if (err == CAT_ERR_RETRIABLE)
			atomic_store(&store->redis_down, true);
		cache_queue_reset(store);
		return err;
	}
	store->fill = !store->fill;
	return CAT_OK;
}

cat_err_t cache_flush(cache_store_t *store, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	put_call_end(store);
	if ((err = wait_in_flight(store, batch, errstr, errstr_size)) != CAT_OK ||
	    (err = send_queue(store, errstr, errstr_size)) != CAT_OK)
		return err;
	return wait_in_flight(store, batch, errstr, errstr_size);
}

cat_err_t cache_flush_if_full(cache_store_t *store, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	if (cat_redis_pending_bytes(store->redis) + store->arena_len < (size_t)store->pipeline_bytes)
		return CAT_OK;
	put_call_end(store);
	if ((err = wait_in_flight(store, batch, errstr, errstr_size)) != CAT_OK)
		return err;
	return send_queue(store, errstr, errstr_size);
}
