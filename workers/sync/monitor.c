/*
 * The monitoring thread: every CATALYST_SYNC_MONITOR_INTERVAL_S, with
 * connections of its own, the original design's database metrics as gauges:
 *   - replication lag in messages: changes.v1 high watermarks minus where the
 *     sync group stands (its committed offsets, or further where this
 *     process applied more), over every partition
 *   - per table of the schema, on the primary and the replica:
 *     pg_total_relation_size, n_live_tup, n_dead_tup
 *   - the slowest statements by mean time from pg_stat_statements (when the
 *     extension is installed in the database), calls over
 *     CATALYST_SYNC_SLOW_MIN_CALLS, as rank-labelled gauges (queryid, calls,
 *     mean seconds): the series stay few whatever the statements
 * A source that cannot be read counts in catalyst_sync_monitor_errors_total
 * and leaves its gauges as they were.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cat_log.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_time.h"
#include "sync.h"

static const char *const sides[2] = {"primary", "replica"};

typedef struct monitor {
	sync_t *sync;
	cat_pg_session_t *pg[2]; /* primary, replica: sessions of its own */
	PGconn *conn[2];	 /* their connections, for this round */
	rd_kafka_t *rk;
	char tables_literal[512]; /* {news_raw,...}: plain identifiers of the schema */
	int interval_s;
	int min_calls;
} monitor_t;

static void register_metrics(sync_t *sync)
{
	for (int side = 0; side < 2; side++) {
		sync->m_stmt_present[side] = cat_metrics_gauge(
			sync->metrics, "catalyst_sync_pg_stat_statements_present",
			"1 when pg_stat_statements is installed in the database", "side", sides[side], NULL);
		for (int rank = 0; rank < sync->settings.slow_statements && rank < 16; rank++) {
			char r[8];

			snprintf(r, sizeof(r), "%d", rank + 1);
			sync->m_stmt_mean[side][rank] = cat_metrics_gauge_double(
				sync->metrics, "catalyst_sync_slow_statement_mean_seconds",
				"mean execution time of the rank-th slowest statement (pg_stat_statements)",
				"side", sides[side], "rank", r, NULL);
			sync->m_stmt_calls[side][rank] =
				cat_metrics_gauge(sync->metrics, "catalyst_sync_slow_statement_calls",
						  "calls of the rank-th slowest statement", "side",
						  sides[side], "rank", r, NULL);
			sync->m_stmt_queryid[side][rank] = cat_metrics_gauge(
				sync->metrics, "catalyst_sync_slow_statement_queryid",
				"queryid of the rank-th slowest statement (look it up in pg_stat_statements)",
				"side", sides[side], "rank", r, NULL);
		}
	}
}

static bool connected(monitor_t *m, int side)
{
	char errstr[512];

	if (cat_pg_session_ensure(m->pg[side], &m->conn[side], errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_DEBUG("MONITOR", "%s", errstr);
		return false;
	}
	return true;
}

static int table_stats(monitor_t *m, int side)
{
	static const char sql[] =
		"SELECT relname, pg_total_relation_size(relid), n_live_tup, n_dead_tup\n"
		"FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = ANY ($1::text[])";
	const char *params[1] = {m->tables_literal};
	PGresult *res = NULL;
	char errstr[512];

	if (cat_pg_exec(m->conn[side], sql, 1, params, &res, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_DEBUG("MONITOR", "could not read the table statistics of the %s: %s", sides[side],
			      errstr);
		return -1;
	}
	for (int r = 0; r < PQntuples(res); r++) {
		const cat_table_t *table = cat_schema_table(PQgetvalue(res, r, 0));
		const sync_table_metrics_t *tm;

		if (!table)
			continue;
		tm = &m->sync->m_tables[table - cat_schema_tables];
		cat_metrics_set(tm->size_bytes[side], strtoll(PQgetvalue(res, r, 1), NULL, 10));
		cat_metrics_set(tm->live[side], strtoll(PQgetvalue(res, r, 2), NULL, 10));
		cat_metrics_set(tm->dead[side], strtoll(PQgetvalue(res, r, 3), NULL, 10));
	}
	PQclear(res);
	return 0;
}

static int slow_statements(monitor_t *m, int side)
{
	static const char present_sql[] = "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'";
	static const char sql[] = "SELECT queryid, calls, mean_exec_time / 1000 FROM pg_stat_statements\n"
				  "WHERE calls > $1::bigint AND dbid = (SELECT oid FROM pg_database WHERE "
				  "datname = current_database())\n"
				  "ORDER BY mean_exec_time DESC LIMIT $2::int";
	sync_t *sync = m->sync;
	PGresult *res = NULL;
	char errstr[512], calls[24], limit[24];
	const char *params[2] = {calls, limit};
	int n;

	if (cat_pg_exec(m->conn[side], present_sql, 0, NULL, &res, errstr, sizeof(errstr)) != CAT_OK)
		return -1;
	n = PQntuples(res);
	PQclear(res);
	cat_metrics_set(sync->m_stmt_present[side], n > 0);
	if (n == 0 || sync->settings.slow_statements == 0)
		return 0;
	snprintf(calls, sizeof(calls), "%d", m->min_calls);
	snprintf(limit, sizeof(limit), "%lld", sync->settings.slow_statements);
	if (cat_pg_exec(m->conn[side], sql, 2, params, &res, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_DEBUG("MONITOR", "could not read pg_stat_statements on the %s: %s", sides[side],
			      errstr);
		return -1;
	}
	for (int rank = 0; rank < sync->settings.slow_statements && rank < 16; rank++) {
		bool have = rank < PQntuples(res);

		cat_metrics_set(sync->m_stmt_queryid[side][rank],
				have ? strtoll(PQgetvalue(res, rank, 0), NULL, 10) : 0);
		cat_metrics_set(sync->m_stmt_calls[side][rank],
				have ? strtoll(PQgetvalue(res, rank, 1), NULL, 10) : 0);
		cat_metrics_set_double(sync->m_stmt_mean[side][rank],
				       have ? strtod(PQgetvalue(res, rank, 2), NULL) : 0);
	}
	PQclear(res);
	return 0;
}

static int lag(monitor_t *m)
{
	sync_t *sync = m->sync;
	int64_t next[SYNC_MAX_PARTITIONS], high[SYNC_MAX_PARTITIONS];
	long long behind = 0;
	char errstr[512];
	int n = 0;

	if (!m->rk && sync_offsets_client(&m->rk, sync->cfg, sync->group, SYNC_WORKER "-monitor", errstr,
					  sizeof(errstr)) != CAT_OK) {
		CAT_LOG_WARN("MONITOR", "%s", errstr);
		return -1;
	}
	if (sync_positions(sync, m->rk, next, high, &n, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_DEBUG("MONITOR", "%s", errstr);
		return -1;
	}
	for (int p = 0; p < n; p++)
		behind += high[p] - next[p];
	cat_metrics_set(sync->m_lag_messages, behind);
	return 0;
}

static void round_once(monitor_t *m)
{
	int failures = 0;

	failures += lag(m) != 0;
	for (int side = 0; side < 2; side++) {
		if (!connected(m, side)) {
			failures++;
			continue;
		}
		failures += table_stats(m, side) != 0;
		failures += slow_statements(m, side) != 0;
	}
	cat_metrics_add(m->sync->m_monitor_errors, failures);
}

static void monitor_free(monitor_t *m)
{
	for (int side = 0; side < 2; side++)
		cat_pg_session_free(m->pg[side]);
	if (m->rk)
		rd_kafka_destroy(m->rk);
	free(m);
}

static void *monitor_main(void *opaque)
{
	monitor_t *m = opaque;
	sync_t *sync = m->sync;

	pthread_mutex_lock(&sync->monitor_lock);
	while (!sync->monitor_stop) {
		struct timespec until;

		pthread_mutex_unlock(&sync->monitor_lock);
		round_once(m);
		pthread_mutex_lock(&sync->monitor_lock);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += m->interval_s;
		while (!sync->monitor_stop &&
		       pthread_cond_timedwait(&sync->monitor_wake, &sync->monitor_lock, &until) == 0)
			;
	}
	pthread_mutex_unlock(&sync->monitor_lock);
	monitor_free(m);
	return NULL;
}

cat_err_t sync_monitor_start(sync_t *sync, char *errstr, size_t errstr_size)
{
	monitor_t *m = calloc(1, sizeof(*m));
	size_t len = 0;

	if (!m)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	m->sync = sync;
	for (int side = 0; side < 2; side++) {
		cat_pg_session_opts_t opts;

		cat_pg_session_opts_from_config(&opts, sync->cfg, SYNC_WORKER "-monitor");
		if (side) {
			opts.url = sync->settings.replica_url;
			opts.what = sides[side];
		}
		if (cat_pg_session_new(&m->pg[side], &opts, errstr, errstr_size) != CAT_OK) {
			monitor_free(m);
			return CAT_ERR_FATAL;
		}
	}
	m->interval_s = (int)sync->settings.monitor_interval_s;
	m->min_calls = (int)sync->settings.slow_min_calls;
	len += (size_t)snprintf(m->tables_literal, sizeof(m->tables_literal), "{");
	for (size_t t = 0; t < cat_schema_n_tables && len < sizeof(m->tables_literal); t++)
		len += (size_t)snprintf(m->tables_literal + len, sizeof(m->tables_literal) - len, "%s%s",
					t ? "," : "", cat_schema_tables[t].name);
	if (len < sizeof(m->tables_literal))
		snprintf(m->tables_literal + len, sizeof(m->tables_literal) - len, "}");
	register_metrics(sync);
	if (pthread_create(&sync->monitor, NULL, monitor_main, m) != 0) {
		monitor_free(m);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "could not start the monitoring thread");
	}
	sync->monitor_started = true;
	return CAT_OK;
}

void sync_monitor_stop(sync_t *sync)
{
	if (!sync->monitor_started)
		return;
	pthread_mutex_lock(&sync->monitor_lock);
	sync->monitor_stop = true;
	pthread_cond_signal(&sync->monitor_wake);
	pthread_mutex_unlock(&sync->monitor_lock);
	pthread_join(sync->monitor, NULL);
	sync->monitor_started = false;
}
