/*
 * catalyst-cache: warms, reading the primary.
 *
 * market open (the seed's CacheWarmer.warm_market_open_cache):
 *   SELECT * FROM news_raw WHERE published_timestamp > NOW() - INTERVAL '4 hours'
 *     AND is_pre_market = TRUE ORDER BY catalyst_score DESC LIMIT 100
 *       -> news:{id} (version-checked), TTL CATALYST_CACHE_WARM_NEWS_TTL_S
 *   SELECT * FROM trading_candidates WHERE selection_timestamp > NOW() - INTERVAL '1 hour'
 *     AND NOT traded
 *       -> candidates:active, one JSON list, TTL CATALYST_CACHE_ACTIVE_TTL_S
 * rebuild: every row of the tables cached row by row, through a cursor
 * (CATALYST_CACHE_REBUILD_CHUNK rows in memory at a time, each chunk one
 * pipeline), in one read-only snapshot; then candidates:active and
 * candidates:top:{n} for each configured n (the seed's top query).
 * The candidates lists are stored only if no candidate changed since the
 * warm read candidates:generation (else read again, up to 3 times); so they
 * are read after the rows' snapshot ends, each query seeing what committed
 * before it (a snapshot older than the generation read could hold a list a
 * change already invalidated).
 * Rows go through the PUT script with their versions, like changes.v1: a
 * row the snapshot read never replaces a newer version (or a delete's
 * tombstone) that a change stored meanwhile, so a rebuild may run while
 * changes are applied (the self-heal does, heal.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_pg.h"
#include "cat_time.h"
#include "internal.h"

#define SELECT_MAX 2048

/* The select list of a table's columns, in schema order; timestamps as µs. */
static void select_list(const cat_table_t *table, char *out, size_t out_size)
{
	size_t n = 0;

	out[0] = '\0';
	for (size_t c = 0; c < table->n_columns; c++) {
		const cat_column_t *col = &table->columns[c];

		n += (size_t)snprintf(out + n, n < out_size ? out_size - n : 0,
				      col->type == CAT_COL_TIMESTAMP
					      ? "%s(extract(epoch from \"%s\") * 1000000)::bigint"
					      : "%s\"%s\"",
				      c ? ", " : "", col->name);
	}
}

/* SELECT the table's columns (select_list), then `rest` ("FROM ... WHERE
 * ..."), with `params`; its result into *res. */
static cat_err_t select_rows(PGconn *conn, const cat_table_t *table, const char *rest, int n_params,
			     const char *const *params, PGresult **res, char *errstr, size_t errstr_size)
{
	char cols[SELECT_MAX], sql[SELECT_MAX + 512];

	select_list(table, cols, sizeof(cols));
	snprintf(sql, sizeof(sql), "SELECT %s %s", cols, rest);
	return cat_pg_exec(conn, sql, n_params, params, res, errstr, errstr_size);
}

/* Row `r` of `res` (columns as select_list) -> a Record; NULL when out of
 * memory. Free with catalyst__v1__record__free_unpacked(record, NULL). */
static Catalyst__V1__Record *row_to_record(const cat_table_t *table, const PGresult *res, int r)
{
	const ProtobufCFieldDescriptor *oneof =
		protobuf_c_message_descriptor_get_field(&catalyst__v1__record__descriptor, table->record_case);
	Catalyst__V1__Record *record = malloc(sizeof(*record));
	ProtobufCMessage *row = malloc(table->descriptor->sizeof_message);

	if (!record || !row || !oneof) {
		free(record);
		free(row);
		return NULL;
	}
	catalyst__v1__record__init(record);
	protobuf_c_message_init(table->descriptor, row);
	*(ProtobufCMessage **)(void *)((char *)record + oneof->offset) = row;
	*(uint32_t *)(void *)((char *)record + oneof->quantifier_offset) = oneof->id;
	for (size_t c = 0; c < table->n_columns; c++) {
		const cat_column_t *col = &table->columns[c];
		const ProtobufCFieldDescriptor *field = cat_schema_field(table, col);
		const char *text = PQgetvalue(res, r, (int)c);
		void *at = (char *)row + field->offset;

		if (PQgetisnull(res, r, (int)c))
			continue;
		switch (col->type) {
		case CAT_COL_TEXT:
			if (!(*(char **)at = strdup(text))) {
				catalyst__v1__record__free_unpacked(record, NULL);
				return NULL;
			}
			continue;
		case CAT_COL_INT32:
			*(int32_t *)at = (int32_t)strtol(text, NULL, 10);
			break;
		case CAT_COL_INT64:
		case CAT_COL_TIMESTAMP:
			*(int64_t *)at = strtoll(text, NULL, 10);
			break;
		case CAT_COL_DOUBLE:
			*(double *)at = strtod(text, NULL);
			break;
		case CAT_COL_BOOL:
			*(protobuf_c_boolean *)at = text[0] == 't';
			break;
		}
		*(protobuf_c_boolean *)(void *)((char *)row + field->quantifier_offset) = 1;
	}
	return record;
}

/* Queues the rows of `res` as PUT items. */
static void put_rows(cache_store_t *store, const cat_table_t *table, const PGresult *res, const char *op,
		     long long ttl, int profile)
{
	for (int r = 0; r < PQntuples(res); r++) {
		Catalyst__V1__Record *record = row_to_record(table, res, r);
		bool candidates = false;
		char why[256];

		if (!record) {
			store->oom = true;
			return;
		}
		if (cache_put_record(store, record, false, op, ttl, -1, &candidates, why, sizeof(why)) != 0) {
			cat_metrics_inc(store->m_uncacheable);
			CAT_LOG_WARN("REDIS", "could not cache a row: %s", why);
		}
		catalyst__v1__record__free_unpacked(record, NULL);
	}
	cat_metrics_add(store->m_warm_rows[profile], PQntuples(res));
}

/* rows [0, n) of res as one JSON list, malloc'ed; NULL when out of memory. */
static char *json_list(const cat_table_t *table, const PGresult *res, int n, size_t *len)
{
	size_t cap = 256, used = 1;
	char *out = malloc(cap);

	if (!out)
		return NULL;
	out[0] = '[';
	for (int r = 0; r < n; r++) {
		Catalyst__V1__Record *record = row_to_record(table, res, r);
		char *json = record ? cat_codec_record_to_json(record) : NULL;
		size_t jlen = json ? strlen(json) : 0;

		if (record)
			catalyst__v1__record__free_unpacked(record, NULL);
		if (!json) {
			free(out);
			return NULL;
		}
		if (used + jlen + 3 > cap) {
			char *grown;

			while (used + jlen + 3 > cap)
				cap *= 2;
			if (!(grown = realloc(out, cap))) {
				free(json);
				free(out);
				return NULL;
			}
			out = grown;
		}
		if (r > 0)
			out[used++] = ',';
		memcpy(out + used, json, jlen);
		used += jlen;
		free(json);
	}
	out[used++] = ']';
	out[used] = '\0';
	*len = used;
	return out;
}

/* candidates:active (and, for a rebuild, candidates:top:{n}), guarded by
 * candidates:generation. Runs inside the caller's transaction or not. */
static cat_err_t warm_candidates(cache_store_t *store, PGconn *conn, bool tops, int profile, char *errstr,
				 size_t errstr_size)
{
	const cat_table_t *table = cat_schema_table("trading_candidates");
	char generation[32], limit[24];
	cat_err_t err = CAT_OK;

	for (int attempt = 0; attempt < 3; attempt++) {
		PGresult *active = NULL, *top = NULL;
		redisReply *reply = NULL, **replies = NULL;
		const char *argv[3 + 3 * MAX_TOP_LIMITS];
		size_t lens[3 + 3 * MAX_TOP_LIMITS], n_args = 0, n = 0;
		char *lists[1 + MAX_TOP_LIMITS] = {NULL};
		size_t n_lists = 0;
		char ttl_active[24], ttl_top[24], keys[MAX_TOP_LIMITS][48];
		bool stored = false;

		if ((err = cache_redis_ensure(store, errstr, errstr_size)) != CAT_OK ||
		    (err = cat_redis_command(store->redis, &reply, 2, (const char *[]){"GET", "candidates:generation"},
					     NULL, errstr, errstr_size)) != CAT_OK)
			return err;
		snprintf(generation, sizeof(generation), "%s",
			 reply->type == REDIS_REPLY_STRING ? reply->str : "0");
		freeReplyObject(reply);

		if ((err = select_rows(conn, table,
				       "FROM trading_candidates WHERE selection_timestamp > NOW() - INTERVAL '1 hour' "
				       "AND NOT traded ORDER BY selection_timestamp DESC, candidate_id",
				       0, NULL, &active, errstr, errstr_size)) != CAT_OK)
			return err;
		if (tops && store->n_top_limits > 0) {
			snprintf(limit, sizeof(limit), "%lld", store->top_max);
			if ((err = select_rows(conn, table,
					       "FROM trading_candidates WHERE selection_timestamp > NOW() - INTERVAL "
					       "'1 hour' ORDER BY catalyst_score DESC, candidate_id LIMIT $1",
					       1, (const char *[]){limit}, &top, errstr, errstr_size)) != CAT_OK) {
				PQclear(active);
				return err;
			}
		}
		cat_metrics_add(store->m_warm_rows[profile], PQntuples(active) + (top ? PQntuples(top) : 0));

		argv[n_args] = generation;
		lens[n_args++] = strlen(generation);
		snprintf(ttl_active, sizeof(ttl_active), "%lld", store->active_ttl);
		snprintf(ttl_top, sizeof(ttl_top), "%lld", store->top_ttl);
		if (!(lists[n_lists] = json_list(table, active, PQntuples(active), &lens[n_args + 1])))
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		argv[n_args] = "candidates:active";
		lens[n_args] = strlen(argv[n_args]);
		argv[n_args + 1] = lists[n_lists++];
		argv[n_args + 2] = ttl_active;
		lens[n_args + 2] = strlen(ttl_active);
		n_args += 3;
		for (size_t i = 0; err == CAT_OK && top && i < store->n_top_limits; i++) {
			int rows = atoi(store->top_limits[i]);

			if (rows > PQntuples(top))
				rows = PQntuples(top);
			snprintf(keys[i], sizeof(keys[i]), "candidates:top:%s", store->top_limits[i]);
			if (!(lists[n_lists] = json_list(table, top, rows, &lens[n_args + 1]))) {
				err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
				break;
			}
			argv[n_args] = keys[i];
			lens[n_args] = strlen(keys[i]);
			argv[n_args + 1] = lists[n_lists++];
			argv[n_args + 2] = ttl_top;
			lens[n_args + 2] = strlen(ttl_top);
			n_args += 3;
		}
		PQclear(active);
		PQclear(top);
		if (err == CAT_OK && cat_redis_append_evalsha(store->redis, &store->scripts[SCRIPT_SET_IF_GENERATION], 0,
							      (int)n_args, argv, lens) != CAT_OK)
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		for (size_t i = 0; i < n_lists; i++)
			free(lists[i]);
		if (err == CAT_OK)
			err = cat_redis_pipeline(store->redis, store->scripts, N_SCRIPTS, &replies, &n, errstr,
						 errstr_size);
		if (err != CAT_OK) {
			cat_redis_discard(store->redis);
			return err;
		}
		cat_metrics_inc(store->m_commands);
		err = cat_redis_reply_class(replies[0], errstr, errstr_size);
		stored = err == CAT_OK && replies[0]->type == REDIS_REPLY_INTEGER && replies[0]->integer == 1;
		cat_redis_replies_free(replies, n);
		if (err != CAT_OK || stored)
			return err;
		cat_metrics_inc(store->m_warm_conflicts);
		CAT_LOG_INFO("REDIS", "a candidate changed while the candidates lists were read: reading again");
	}
	CAT_LOG_WARN("REDIS", "candidates kept changing: candidates lists not stored by this warm");
	return CAT_OK;
}

static cat_err_t market_open(cache_store_t *store, PGconn *conn, char *errstr, size_t errstr_size)
{
	const cat_table_t *news = cat_schema_table("news_raw");
	PGresult *res = NULL;
	cat_err_t err;

	if ((err = select_rows(conn, news,
			       "FROM news_raw WHERE published_timestamp > NOW() - INTERVAL '4 hours' "
			       "AND is_pre_market = TRUE ORDER BY catalyst_score DESC, news_id LIMIT 100",
			       0, NULL, &res, errstr, errstr_size)) != CAT_OK)
		return err;
	put_rows(store, news, res, "w", store->warm_news_ttl, 0);
	PQclear(res);
	if ((err = cache_flush(store, NULL, errstr, errstr_size)) != CAT_OK)
		return err;
	return warm_candidates(store, conn, false, 0, errstr, errstr_size);
}

static cat_err_t rebuild(cache_store_t *store, PGconn *conn, char *errstr, size_t errstr_size)
{
	char cols[SELECT_MAX], sql[SELECT_MAX + 512], chunk[24];
	cat_err_t err;

	if ((err = cat_pg_exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL, errstr,
			       errstr_size)) != CAT_OK)
		return err;
	snprintf(chunk, sizeof(chunk), "%lld", store->rebuild_chunk);
	for (size_t t = 0; t < MAX_TABLES && store->layouts[t].table; t++) {
		const layout_t *layout = &store->layouts[t];
		long long rows = 0;

		if (!layout->prefix)
			continue;
		select_list(layout->table, cols, sizeof(cols));
		snprintf(sql, sizeof(sql), "DECLARE rebuild NO SCROLL CURSOR FOR SELECT %s FROM %s", cols,
			 layout->table->name);
		if ((err = cat_pg_exec(conn, sql, 0, NULL, NULL, errstr, errstr_size)) != CAT_OK)
			return err;
		snprintf(sql, sizeof(sql), "FETCH %s FROM rebuild", chunk);
		for (;;) {
			PGresult *res = NULL;
			int n;

			if ((err = cat_pg_exec(conn, sql, 0, NULL, &res, errstr, errstr_size)) != CAT_OK)
				return err;
			n = PQntuples(res);
			put_rows(store, layout->table, res, "u", 0, 1);
			PQclear(res);
			rows += n;
			if ((err = cache_flush(store, NULL, errstr, errstr_size)) != CAT_OK)
				return err;
			if (store->on_chunk && (err = store->on_chunk(store->on_chunk_arg, errstr, errstr_size)) != CAT_OK)
				return err;
			if (n < store->rebuild_chunk)
				break;
		}
		if ((err = cat_pg_exec(conn, "CLOSE rebuild", 0, NULL, NULL, errstr, errstr_size)) != CAT_OK)
			return err;
		CAT_LOG_INFO("REDIS", "rebuild: %lld rows of %s", rows, layout->table->name);
	}
	if ((err = cat_pg_exec(conn, "COMMIT", 0, NULL, NULL, errstr, errstr_size)) != CAT_OK)
		return err;
	return warm_candidates(store, conn, true, 1, errstr, errstr_size);
}

cat_err_t cache_warm(cache_store_t *store, int profile, char *errstr, size_t errstr_size)
{
	bool is_rebuild = profile == CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD;
	int64_t t0 = cat_time_mono_us();
	PGconn *conn;
	cat_err_t err;

	if ((err = cat_pg_session_ensure(store->pg, &conn, errstr, errstr_size)) != CAT_OK)
		return err;
	err = is_rebuild ? rebuild(store, conn, errstr, errstr_size) : market_open(store, conn, errstr, errstr_size);
	if (err != CAT_OK) {
		cat_pg_session_failed(store->pg);
		return err;
	}
	cat_metrics_observe(store->m_warm_seconds[is_rebuild], (double)(cat_time_mono_us() - t0) / 1e6);
	CAT_LOG_INFO("REDIS", "warm %s done in %lld ms", is_rebuild ? "rebuild" : "market open",
		     (long long)((cat_time_mono_us() - t0) / 1000));
	return CAT_OK;
}
