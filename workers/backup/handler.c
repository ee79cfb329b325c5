/*
 * catalyst-backup's handler: decodes backup.v1 commands and runs them (see
 * backup.h for what each does and how failures are classed).
 */
#define _GNU_SOURCE /* asprintf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "backup.h"
#include "cat_codec.h"
#include "cat_event.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_rowsum.h"
#include "cat_schema.h"
#include "cat_time.h"

#define LAST_SUCCESS_NAME "catalyst_backup_last_success_timestamp_seconds"
#define LAST_SUCCESS_HELP "when the last backup of a tag completed (Unix seconds; read from backup_catalog after a restart)"

#define MANIFEST_MAX (16 * 1024 * 1024)
#define EVENT_TIMEOUT_MS 30000
#define EVENT_WARM_TIMEOUT_MS 2000
#define RESTORE_CONNECT_TIMEOUT_S 10

static const char *const hot_tables[] = {"news_raw", "trading_candidates", "trading_signals", "trade_records"};

static const double duration_buckets[] = {1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600};

/* The producer learns where events.v1 lives now rather than on the first
 * event: librdkafka would hold that event back for its next metadata
 * request (up to a second, seen as 0.4-0.9 s added to the first backup). */
static void warm_events_topic(backup_t *backup)
{
	rd_kafka_t *rk = cat_producer_handle(backup->producer);
	char errstr[512];
	int partitions;

	if (rk && cat_kafka_topic_partitions(rk, backup->events_topic, EVENT_WARM_TIMEOUT_MS, &partitions, errstr,
					     sizeof(errstr)) != CAT_OK)
		CAT_LOG_WARN("KAFKA", "could not look up %s yet: %s (the first event will)", backup->events_topic,
			     errstr);
}

/* On each new connection of the catalog (the session's on_connected): the
 * last completed backup of each tag as the catalog has it, so that after a
 * (re)start an alert on its age does not wait for the next backup. A value
 * already newer (a backup of this process) is kept. */
static void seed_last_success(PGconn *conn, void *opaque)
{
	backup_t *backup = opaque;
	PGresult *res = NULL;
	char errstr[512];

	if (cat_pg_exec(conn,
			"SELECT coalesce(tag, ''), extract(epoch FROM max(finished_at))::float8 FROM backup_catalog "
			"WHERE state = 'completed' AND finished_at IS NOT NULL GROUP BY 1",
			0, NULL, &res, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_WARN("PG", "could not read the last backups of the catalog: %s", errstr);
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		cat_metric_t *last = cat_metrics_gauge_double(backup->metrics, LAST_SUCCESS_NAME, LAST_SUCCESS_HELP,
							      "tag", PQgetvalue(res, i, 0), NULL);
		double finished = strtod(PQgetvalue(res, i, 1), NULL);

		if (cat_metrics_value(last) < finished)
			cat_metrics_set_double(last, finished);
	}
	PQclear(res);
}

cat_err_t backup_new(backup_t **out, const cat_config_t *cfg, const backup_settings_t *settings,
		     cat_sink_t *sink, cat_producer_t *producer, cat_metrics_t *metrics, volatile sig_atomic_t *stop,
		     char *errstr, size_t errstr_size)
{
	backup_t *backup = calloc(1, sizeof(*backup));
	cat_pg_session_opts_t pg_opts;
	cat_err_t err;

	*out = NULL;
	if (!backup)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	backup->cfg = cfg;
	backup->settings = *settings;
	backup->sink = sink;
	backup->producer = producer;
	backup->metrics = metrics;
	backup->stop = stop;
	/* the catalog: on each new connection the schema is checked and the
	 * last-success gauges are seeded */
	cat_pg_session_opts_from_config(&pg_opts, cfg, BACKUP_WORKER);
	pg_opts.schema_version = CAT_SCHEMA_VERSION;
	pg_opts.on_connected = seed_last_success;
	pg_opts.opaque = backup;
	if ((err = cat_pg_session_new(&backup->pg, &pg_opts, errstr, errstr_size)) != CAT_OK) {
		backup_destroy(backup);
		return err;
	}
	backup->compress_threads = (int)settings->compress_threads;
	for (size_t i = 0; i < BACKUP_ATTEMPT_SLOTS; i++)
		backup->attempts[i].partition = -1;
	if (backup->compress_threads == 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		/* beyond 4 the memory (2 MiB a thread) grows faster than the rate */
		backup->compress_threads = cpus < 1 ? 1 : cpus > 4 ? 4 : (int)cpus;
	}
	cat_kafka_topic(cfg, CAT_TOPIC_EVENTS, backup->events_topic, sizeof(backup->events_topic));
	warm_events_topic(backup);
	backup->m_bytes = cat_metrics_counter(metrics, "catalyst_backup_bytes_total",
					      "uncompressed bytes backed up", NULL);
	backup->m_rate = cat_metrics_gauge_double(metrics, "catalyst_backup_bytes_per_second",
						  "uncompressed bytes per second of the last backup", NULL);
	backup->m_duration = cat_metrics_histogram(metrics, "catalyst_backup_duration_seconds",
						   "time a backup took", duration_buckets,
						   sizeof(duration_buckets) / sizeof(duration_buckets[0]), NULL);
	backup->m_failures = cat_metrics_counter(metrics, "catalyst_backup_failures_total",
						 "backup.v1 commands that failed (each attempt)", NULL);
	backup->m_completed = cat_metrics_counter(metrics, "catalyst_backups_completed_total",
						  "backups completed", NULL);
	/* one series per tag, as backups of it complete (or from the catalog) */
	if (cat_metrics_declare_gauge(metrics, LAST_SUCCESS_NAME, LAST_SUCCESS_HELP) != CAT_OK) {
		backup_destroy(backup);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not declare " LAST_SUCCESS_NAME);
	}
	*out = backup;
	return CAT_OK;
}

void backup_destroy(backup_t *backup)
{
	if (!backup)
		return;
	cat_pg_session_free(backup->pg);
	free(backup);
}

void backup_set_consumer(backup_t *backup, cat_consumer_t *consumer)
{
	backup->consumer = consumer;
}

bool backup_ready(void *opaque, char *reason, size_t reason_size)
{
	backup_t *backup = opaque;

	(void)backup;
	(void)reason;
	(void)reason_size;
	return true;
}

bool backup_http_ready(void *opaque, char *reason, size_t reason_size)
{
	backup_t *backup = opaque;

	/* a backup can run for minutes without the loop polling: while it
	 * runs, the worker is busy, not stuck (librdkafka's own thread keeps
	 * the group session; max.poll.interval.ms is sized for it) */
	if (backup->busy && !backup->failing)
		return true;
	/* a retry of a failing command is not "busy": the loop's answer
	 * (not ready, with the failure) stays until an attempt succeeds */
	return cat_consumer_ready(backup->consumer, reason, reason_size);
}

/* --- helpers ------------------------------------------------------------------------------------ */

/* The catalog's connection, made again when lost. Nothing here is fatal:
 * refused credentials or an unmigrated schema wait for an operator as a
 * missing bucket does (the command retried with backoff, /readyz saying
 * why). */
static cat_err_t catalog(backup_t *backup, PGconn **conn, char *errstr, size_t errstr_size)
{
	cat_err_t err = cat_pg_session_ensure(backup->pg, conn, errstr, errstr_size);

	return err == CAT_ERR_FATAL ? CAT_ERR_RETRIABLE : err;
}

static void publish_event(backup_t *backup, const char *kind, const char *subject, const char *command_id, bool ok,
			  const char *message, const cat_event_attr_t *attrs, size_t n_attrs,
			  const cat_event_counter_t *counters, size_t n_counters)
{
	cat_event_t ev = {kind, subject, command_id, ok, message, attrs, n_attrs, counters, n_counters};
	char errstr[512];

	if (cat_event_publish(backup->producer, backup->events_topic, BACKUP_WORKER, &ev, EVENT_TIMEOUT_MS, errstr,
			      sizeof(errstr)) != CAT_OK)
		CAT_LOG_WARN("KAFKA", "could not publish %s for %s: %s", kind, subject, errstr);
}

static void iso_time(int64_t us, char *buf, size_t size)
{
	time_t s = (time_t)(us / 1000000);
	struct tm tm;

	gmtime_r(&s, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* <kind>-<sha256(command_id), 16 hex>: the command_id is the idempotency
 * key, so the same command published again is the same backup */
static void make_backup_id(const Catalyst__V1__BackupCommand *cmd, const char *kind, char *out, size_t size)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	const char *id = cmd->meta->command_id;

	SHA256((const unsigned char *)id, strlen(id), md);
	snprintf(out, size, "%s-%02x%02x%02x%02x%02x%02x%02x%02x", kind, md[0], md[1], md[2], md[3], md[4], md[5],
		 md[6], md[7]);
}

typedef struct keys {
	char **v;
	size_t n, cap;
} keys_t;

static int collect_key(const char *key, uint64_t size, void *opaque)
{
	keys_t *k = opaque;

	(void)size;
	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 16;
		char **grown = realloc(k->v, cap * sizeof(*grown));

		if (!grown)
			return 1;
		k->v = grown;
		k->cap = cap;
	}
	if ((k->v[k->n] = strdup(key)))
		k->n++;
	return 0;
}

/* Removes everything under prefix: the manifest first (the backup stops
 * existing), then the objects, then interrupted uploads. */
static cat_err_t remove_prefix(backup_t *backup, const char *prefix, char *errstr, size_t errstr_size)
{
	keys_t keys = {0};
	char manifest[600];
	int removed = 0;
	cat_err_t err;

	snprintf(manifest, sizeof(manifest), "%smanifest.json", prefix);
	if ((err = cat_sink_delete(backup->sink, manifest, errstr, errstr_size)))
		return err;
	err = cat_sink_list(backup->sink, prefix, collect_key, &keys, errstr, errstr_size);
	for (size_t i = 0; i < keys.n; i++) {
		if (err == CAT_OK)
			err = cat_sink_delete(backup->sink, keys.v[i], errstr, errstr_size);
		free(keys.v[i]);
	}
	free(keys.v);
	if (err == CAT_OK)
		err = cat_sink_cleanup(backup->sink, prefix, &removed, errstr, errstr_size);
	if (err == CAT_OK && (removed || keys.n))
		CAT_LOG_INFO("BACKUP", "removed %zu objects and %d interrupted uploads under %s", keys.n, removed,
			     prefix);
	return err;
}

/* The command's database: the one it names, else the catalog's ("" while
 * there is no connection). */
static const char *database_of(backup_t *backup, const Catalyst__V1__BackupCommand *cmd)
{
	PGconn *conn = cat_pg_session_conn(backup->pg);

	if (cmd->database && *cmd->database)
		return cmd->database;
	return conn ? PQdb(conn) : "";
}

/* --- backups ---------------------------------------------------------------------------------- */

static json_t *manifest_json(PGconn *conn, const char *backup_id, const char *kind, const char *tag,
			     const char *database, const char *command_id, const backup_object_t *objs,
			     size_t n_objs, const backup_table_stat_t *stats, size_t n_stats,
			     int64_t started_us, int64_t finished_us)
{
	json_t *m = json_object(), *tables = json_array(), *counts = json_object(), *sums = json_object(),
	       *objects = json_array();
	uint64_t raw = 0, comp = 0;
	char t0[32], t1[32];

	iso_time(started_us, t0, sizeof(t0));
	iso_time(finished_us, t1, sizeof(t1));
	for (size_t i = 0; i < n_objs; i++) {
		const backup_object_t *o = &objs[i];

		raw += o->bytes_raw;
		comp += o->bytes_compressed;
		json_array_append_new(objects, json_pack("{s:s, s:s?, s:I, s:I, s:I, s:s, s:s?, s:I, s:I}", "key",
							 o->key, "table", o->table[0] ? o->table : NULL, "rows",
							 (json_int_t)o->rows, "bytes_raw", (json_int_t)o->bytes_raw,
							 "bytes_compressed", (json_int_t)o->bytes_compressed, "sha256",
							 o->sha256, "checksum", o->checksum[0] ? o->checksum : NULL,
							 "since_version", (json_int_t)o->since_version, "max_version",
							 (json_int_t)o->max_version));
		if (o->table[0]) {
			json_array_append_new(tables, json_string(o->table));
			json_object_set_new(counts, o->table, json_integer(o->rows));
			json_object_set_new(sums, o->table, json_string(o->checksum));
		}
	}
	for (size_t i = 0; i < n_stats; i++) {
		json_array_append_new(tables, json_string(stats[i].table));
		json_object_set_new(counts, stats[i].table, json_integer(stats[i].rows));
		json_object_set_new(sums, stats[i].table, json_string(stats[i].checksum));
	}
	/* 2: checksums as checksum_algo says (1: the server's sum of
	 * hashtextextended(ROW(...)::text, 0), no checksum_algo) */
	json_object_set_new(m, "format", json_integer(2));
	json_object_set_new(m, "backup_id", json_string(backup_id));
	json_object_set_new(m, "kind", json_string(kind));
	json_object_set_new(m, "tag", tag ? json_string(tag) : json_null());
	json_object_set_new(m, "database", json_string(database));
	json_object_set_new(m, "command_id", json_string(command_id));
	json_object_set_new(m, "tables", tables);
	json_object_set_new(m, "row_counts", counts);
	json_object_set_new(m, "checksums", sums);
	json_object_set_new(m, "checksum_algo", json_string(CAT_ROWSUM_ALGO));
	json_object_set_new(m, "checksum_encoding", json_string(n_objs ? objs[0].encoding : ""));
	json_object_set_new(m, "bytes_raw", json_integer((json_int_t)raw));
	json_object_set_new(m, "bytes_compressed", json_integer((json_int_t)comp));
	json_object_set_new(m, "sha256", n_objs == 1 ? json_string(objs[0].sha256) : json_null());
	json_object_set_new(m, "objects", objects);
	json_object_set_new(m, "pg_version", json_string(PQparameterStatus(conn, "server_version") ?: ""));
	json_object_set_new(m, "schema_version", json_integer(CAT_SCHEMA_VERSION));
	json_object_set_new(m, "started_at", json_string(t0));
	json_object_set_new(m, "finished_at", json_string(t1));
	return m;
}

static cat_err_t run_backup(backup_t *backup, const Catalyst__V1__BackupCommand *cmd, const char *kind,
			    const char *tag, const char *const *tables, size_t n_tables, char *errstr,
			    size_t errstr_size)
{
	const char *command_id = cmd->meta->command_id;
	PGconn *conn = cat_pg_session_conn(backup->pg);
	char database[128], backup_id[128], prefix[400], manifest_key[512], tables_lit[1024] = "{";
	backup_object_t objs[BACKUP_MAX_TABLES];
	backup_table_stat_t stats[32];
	size_t n_objs = 0, n_stats = 0;
	int64_t started_us = cat_time_now_us(), mono0 = cat_time_mono_us(), finished_us;
	json_t *manifest = NULL;
	char *manifest_text = NULL, *row_counts = NULL;
	PGresult *res = NULL;
	cat_err_t err;

	memset(objs, 0, sizeof(objs));
	/* a copy: the catalog's connection may be made again meanwhile */
	snprintf(database, sizeof(database), "%s", database_of(backup, cmd));
	make_backup_id(cmd, kind, backup_id, sizeof(backup_id));
	snprintf(prefix, sizeof(prefix), "backups/%s/%s/", database, backup_id);
	snprintf(manifest_key, sizeof(manifest_key), "%smanifest.json", prefix);
	if (!cat_sink_key_valid(manifest_key))
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "database name %s cannot name an object",
				   database);
	for (size_t i = 0; i < n_tables; i++)
		snprintf(tables_lit + strlen(tables_lit), sizeof(tables_lit) - strlen(tables_lit), "%s%s",
			 i ? "," : "", tables[i]);
	strcat(tables_lit, "}");

	/* done already? */
	{
		const char *p[] = {backup_id};

		if ((err = cat_pg_exec(conn, "SELECT state FROM backup_catalog WHERE backup_id = $1", 1, p,
				       &res, errstr, errstr_size)))
			return err;
		if (PQntuples(res) == 1 &&
		    (strcmp(PQgetvalue(res, 0, 0), "completed") == 0 || strcmp(PQgetvalue(res, 0, 0), "pruned") == 0)) {
			CAT_LOG_INFO("BACKUP", "backup %s is %s already: nothing to do", backup_id, PQgetvalue(res, 0, 0));
			PQclear(res);
			return CAT_OK;
		}
		PQclear(res);
		res = NULL;
	}
	/* an interrupted attempt starts over cleanly */
	if ((err = remove_prefix(backup, prefix, errstr, errstr_size)))
		goto failed;
	{
		const char *p[] = {backup_id, command_id, kind, tag, database, n_tables ? tables_lit : NULL};

		if ((err = cat_pg_exec(conn,
				       "INSERT INTO backup_catalog (backup_id, command_id, kind, tag, database_name, tables, "
				       "state, started_at) VALUES ($1, $2, $3, $4, $5, $6::text[], 'running', now()) "
				       "ON CONFLICT (backup_id) DO UPDATE SET state = 'running', started_at = now(), "
				       "finished_at = NULL, error = NULL, command_id = EXCLUDED.command_id",
				       6, p, NULL, errstr, errstr_size)))
			goto failed;
	}
	/* once: a retry is the same backup going on */
	if (!backup->attempt->started) {
		cat_event_attr_t a[] = {{"kind", kind}, {"tag", tag ? tag : ""}, {"database", database}};

		publish_event(backup, "backup.started", backup_id, command_id, true, "backup started", a, 3, NULL, 0);
		backup->attempt->started = true;
	}
	CAT_LOG_INFO("BACKUP", "backup %s (%s) started (attempt %d of %d)", backup_id, kind,
		     backup->attempt->failed + 1, (int)backup->settings.max_attempts);

	if (strcmp(kind, "full") == 0) {
		err = backup_dump_full(backup, prefix, &objs[0], stats, &n_stats, errstr, errstr_size);
		n_objs = 1;
	} else {
		err = backup_dump_tables(backup, prefix, tables, n_tables, strcmp(kind, "incremental") == 0,
					 objs, errstr, errstr_size);
		n_objs = n_tables;
	}
	if (err)
		goto failed;
	/* the dump took a while: the catalog's connection may have gone */
	if ((err = catalog(backup, &conn, errstr, errstr_size)))
		goto failed;

	/* the commit marker */
	finished_us = cat_time_now_us();
	manifest = manifest_json(conn, backup_id, kind, tag, database, command_id, objs, n_objs, stats, n_stats,
				 started_us, finished_us);
	manifest_text = manifest ? json_dumps(manifest, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
	row_counts = manifest ? json_dumps(json_object_get(manifest, "row_counts"), JSON_COMPACT | JSON_SORT_KEYS)
			      : NULL;
	if (!manifest_text || !row_counts) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto failed;
	}
	if ((err = cat_sink_put(backup->sink, manifest_key, manifest_text, strlen(manifest_text), "application/json",
				errstr, errstr_size)))
		goto failed;

	if ((err = cat_pg_begin(conn, errstr, errstr_size)))
		goto failed;
	{
		char raw[32], comp[32], sv[16];

		snprintf(raw, sizeof(raw), "%lld", (long long)json_integer_value(json_object_get(manifest, "bytes_raw")));
		snprintf(comp, sizeof(comp), "%lld",
			 (long long)json_integer_value(json_object_get(manifest, "bytes_compressed")));
		snprintf(sv, sizeof(sv), "%d", CAT_SCHEMA_VERSION);
		const char *p[] = {backup_id, n_objs == 1 ? objs[0].key : prefix, manifest_key, raw, comp, row_counts,
				   n_objs == 1 ? objs[0].sha256 : NULL, sv,
				   PQparameterStatus(conn, "server_version")};

		err = cat_pg_exec(conn,
				  "UPDATE backup_catalog SET state = 'completed', object_key = $2, manifest_key = $3, "
				  "bytes_raw = $4, bytes_compressed = $5, row_counts = $6::jsonb, sha256 = $7, "
				  "schema_version = $8, pg_version = $9, finished_at = now(), error = NULL "
				  "WHERE backup_id = $1",
				  9, p, NULL, errstr, errstr_size);
	}
	/* watermarks: what the next incremental starts after */
	for (size_t i = 0; err == CAT_OK && i < (n_stats ? n_stats : n_objs); i++) {
		const char *table = n_stats ? stats[i].table : objs[i].table;
		int64_t maxv = n_stats ? stats[i].max_version : objs[i].max_version;
		char v[32];
		const char *p[] = {table, v, backup_id};

		if (maxv < 0)
			continue;
		snprintf(v, sizeof(v), "%lld", (long long)maxv);
		err = cat_pg_exec(conn,
				  "INSERT INTO backup_watermarks (table_name, last_version, backup_id, updated_at) "
				  "VALUES ($1, $2, $3, now()) ON CONFLICT (table_name) DO UPDATE SET "
				  "last_version = GREATEST(backup_watermarks.last_version, EXCLUDED.last_version), "
				  "backup_id = EXCLUDED.backup_id, updated_at = now()",
				  3, p, NULL, errstr, errstr_size);
	}
	if (err == CAT_OK)
		err = cat_pg_commit(conn, errstr, errstr_size);
	if (err)
		goto failed; /* rolled back there */

	{
		double secs = (double)(cat_time_mono_us() - mono0) / 1e6;
		int64_t raw = json_integer_value(json_object_get(manifest, "bytes_raw"));
		int64_t comp = json_integer_value(json_object_get(manifest, "bytes_compressed"));
		int64_t rows = 0;
		const char *key;
		json_t *v;
		cat_metric_t *last;

		json_object_foreach(json_object_get(manifest, "row_counts"), key, v) rows += json_integer_value(v);
		cat_event_attr_t a[] = {{"kind", kind},
					{"tag", tag ? tag : ""},
					{"database", database},
					{"manifest", manifest_key},
					{"sha256", n_objs == 1 ? objs[0].sha256 : ""}};
		cat_event_counter_t c[] = {{"bytes_raw", raw},
					   {"bytes_compressed", comp},
					   {"rows", rows},
					   {"objects", (int64_t)n_objs},
					   {"duration_ms", (int64_t)(secs * 1000)}};

		publish_event(backup, "backup.completed", backup_id, command_id, true, "backup completed", a, 5, c, 5);
		cat_metrics_add(backup->m_bytes, raw);
		cat_metrics_set_double(backup->m_rate, secs > 0 ? (double)raw / secs : 0);
		cat_metrics_observe(backup->m_duration, secs);
		cat_metrics_inc(backup->m_completed);
		last = cat_metrics_gauge_double(backup->metrics, LAST_SUCCESS_NAME, LAST_SUCCESS_HELP, "tag",
						tag ? tag : "", NULL);
		cat_metrics_set_double(last, (double)finished_us / 1e6);
		CAT_LOG_INFO("BACKUP", "backup %s completed: %lld bytes, %lld compressed, %lld rows, %.1f s (%.1f MB/s)",
			     backup_id, (long long)raw, (long long)comp, (long long)rows, secs,
			     secs > 0 ? (double)raw / secs / 1e6 : 0.0);
	}
	err = CAT_OK;
	goto out;

failed:
	/* the catalog says failed; the event goes out when the command fails
	 * for good (apply_one), not on each attempt */
	cat_pg_session_failed(backup->pg); /* an open transaction rolled back, a broken connection dropped */
	cat_metrics_inc(backup->m_failures);
	CAT_LOG_ERROR("BACKUP", "backup %s failed (attempt %d of %d): %s", backup_id, backup->attempt->failed + 1,
		      (int)backup->settings.max_attempts, errstr);
	{
		char why[512];
		char cleanup_err[512];

		snprintf(why, sizeof(why), "%s", errstr);
		/* no partial objects stay visible (best effort: the retry cleans up too) */
		if (remove_prefix(backup, prefix, cleanup_err, sizeof(cleanup_err)) != CAT_OK)
			CAT_LOG_WARN("BACKUP", "could not clean up %s: %s", prefix, cleanup_err);
		if (catalog(backup, &conn, cleanup_err, sizeof(cleanup_err)) == CAT_OK) {
			const char *p[] = {backup_id, why};

			if (cat_pg_exec(conn,
					"UPDATE backup_catalog SET state = 'failed', error = $2, finished_at = now() "
					"WHERE backup_id = $1 AND state = 'running'",
					2, p, NULL, cleanup_err, sizeof(cleanup_err)) != CAT_OK)
				CAT_LOG_WARN("PG", "could not mark %s failed: %s", backup_id, cleanup_err);
		}
		snprintf(errstr, errstr_size, "%s", why);
	}
out:
	json_decref(manifest);
	free(manifest_text);
	free(row_counts);
	return err;
}

/* --- restore, verify ------------------------------------------------------------------------------- */

static cat_err_t read_manifest(backup_t *backup, const Catalyst__V1__BackupCommand *cmd, const char *backup_id,
			       json_t **out, char *errstr, size_t errstr_size)
{
	char key[600], *text = NULL;
	bool not_found = false;
	json_error_t jerr;
	cat_err_t err;

	*out = NULL;
	if (!backup_id || !*backup_id)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "backup_id is required");
	snprintf(key, sizeof(key), "backups/%s/%s/manifest.json", database_of(backup, cmd), backup_id);
	if (!cat_sink_key_valid(key))
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "invalid backup_id %s", backup_id);
	err = cat_sink_get_small(backup->sink, key, MANIFEST_MAX, &text, NULL, &not_found, errstr, errstr_size);
	if (err != CAT_OK && not_found)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "backup %s does not exist (no manifest %s)", backup_id, key);
	if (err != CAT_OK)
		return err == CAT_ERR_FATAL ? CAT_ERR_RETRIABLE : err;
	*out = json_loads(text, 0, &jerr);
	free(text);
	if (!*out)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "manifest %s is not JSON: %s", key, jerr.text);
	return CAT_OK;
}

int backup_restore_targets_check(const char *list, char *why, size_t why_size)
{
	size_t entry = 0;

	for (const char *p = list; *p;) {
		const char *end = strchr(p, ';');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		PQconninfoOption *opts = NULL;
		char *url, *pqerr = NULL;

		entry++;
		if (eq && eq > p && (size_t)(eq + 1 - p) < len && (url = strndup(eq + 1, len - (size_t)(eq + 1 - p)))) {
			opts = PQconninfoParse(url, &pqerr);
			explicit_bzero(url, strlen(url));
			free(url);
			if (pqerr) {
				explicit_bzero(pqerr, strlen(pqerr)); /* it may quote the URL */
				PQfreemem(pqerr);
			}
		}
		if (!opts) {
			snprintf(why, why_size,
				 "must be name=<libpq URL or conninfo>;name2=...; entry %zu is not", entry);
			return -1;
		}
		for (PQconninfoOption *o = opts; o->keyword; o++)
			if (o->val)
				explicit_bzero(o->val, strlen(o->val));
		PQconninfoFree(opts);
		p += len + (end ? 1 : 0);
	}
	return 0;
}

/* The URL of a restore target named in CATALYST_BACKUP_RESTORE_TARGETS
 * ("name=url;name=url"), malloc'd; NULL when not listed. */
static char *target_url(backup_t *backup, const char *name)
{
	const char *list = backup->settings.restore_targets;
	size_t nlen = strlen(name);

	if (!list || !*name)
		return NULL;
	for (const char *p = list; *p;) {
		const char *end = strchr(p, ';');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=')
			return strndup(p + nlen + 1, len - nlen - 1);
		p += len + (end ? 1 : 0);
	}
	return NULL;
}

static cat_err_t run_restore(backup_t *backup, const Catalyst__V1__BackupCommand *cmd, char *errstr,
			     size_t errstr_size)
{
	const Catalyst__V1__BackupCommand__Restore *r = cmd->restore;
	char *url = target_url(backup, r->target ? r->target : "");
	json_t *manifest = NULL;
	PGconn *target = NULL;
	int64_t rows = 0;
	cat_err_t err;

	if (!url)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "restore target \"%s\" is not in CATALYST_BACKUP_RESTORE_TARGETS",
				   r->target ? r->target : "");
	for (size_t i = 0; i < r->n_tables; i++)
		if (!cat_schema_table(r->tables[i])) {
			free(url);
			return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "unknown table %s", r->tables[i]);
		}
	if ((err = read_manifest(backup, cmd, r->backup_id, &manifest, errstr, errstr_size)))
		goto out;
	if ((err = cat_pg_connect(&target, url, "catalyst-backup-restore", RESTORE_CONNECT_TIMEOUT_S, errstr,
				  errstr_size))) {
		if (err == CAT_ERR_FATAL)
			err = CAT_ERR_RETRIABLE;
		goto out;
	}
	err = backup_restore(backup, manifest, target, url, r->target, (const char *const *)r->tables,
			     r->n_tables, &rows, errstr, errstr_size);
	/* psql failing on the script (exit 3) will fail again: permanent */
	if (err == CAT_ERR_RETRIABLE && strstr(errstr, "psql failed (exit 3)"))
		err = CAT_ERR_PERMANENT;
	if (err == CAT_OK) {
		cat_event_attr_t a[] = {{"target", r->target}};
		cat_event_counter_t c[] = {{"rows", rows}};

		/* (a failure's event: apply_one) */
		publish_event(backup, "backup.restored", r->backup_id, cmd->meta->command_id, true, "restored", a, 1,
			      c, 1);
		CAT_LOG_INFO("BACKUP", "backup %s restored into target %s (%lld table rows)", r->backup_id, r->target,
			     (long long)rows);
	}
out:
	cat_pg_close(target);
	json_decref(manifest);
	free(url);
	return err;
}

static cat_err_t run_verify(backup_t *backup, const Catalyst__V1__BackupCommand *cmd, char *errstr,
			    size_t errstr_size)
{
	const char *backup_id = cmd->verify->backup_id;
	json_t *manifest = NULL;
	char report[2048];
	bool ok = false;
	cat_err_t err;

	if ((err = read_manifest(backup, cmd, backup_id, &manifest, errstr, errstr_size)))
		return err;
	err = backup_verify(backup, backup_id, manifest, &ok, report, sizeof(report), errstr, errstr_size);
	json_decref(manifest);
	if (err != CAT_OK)
		return err == CAT_ERR_FATAL ? CAT_ERR_RETRIABLE : err;
	{
		const char *p[] = {backup_id, ok ? "true" : "false"};

		if ((err = cat_pg_exec(cat_pg_session_conn(backup->pg),
				       "UPDATE backup_catalog SET verified_at = now(), verify_ok = $2::boolean "
				       "WHERE backup_id = $1",
				       2, p, NULL, errstr, errstr_size)))
			return err;
	}
	publish_event(backup, "backup.verified", backup_id, cmd->meta->command_id, ok, report, NULL, 0, NULL, 0);
	if (ok)
		CAT_LOG_INFO("BACKUP", "backup %s verified: %s", backup_id, report);
	else
		CAT_LOG_ERROR("BACKUP", "backup %s failed verification: %s", backup_id, report);
	return CAT_OK;
}

/* --- prune ---------------------------------------------------------------------------------------------- */

static cat_err_t run_prune(backup_t *backup, const Catalyst__V1__BackupCommand *cmd, char *errstr,
			   size_t errstr_size)
{
	const Catalyst__V1__BackupCommand__Prune *pr = cmd->prune;
	int64_t now_us = cat_time_now_us();
	bool dry_run = pr->has_dry_run && pr->dry_run;
	PGconn *conn = cat_pg_session_conn(backup->pg);
	const char *database = database_of(backup, cmd);
	const char *p[] = {database};
	backup_retention_item_t *items = NULL;
	PGresult *res = NULL;
	char *kept = NULL, *pruned = NULL;
	size_t n, kept_len = 0, pruned_len = 0, n_kept = 0, n_pruned = 0;
	cat_err_t err;

	/* the worker's clock decides: a command's "now" in 2100 would prune
	 * all but the newest full backups (tests may allow it) */
	if (pr->has_now_us && pr->now_us > 0) {
		if (backup->settings.allow_prune_now)
			now_us = pr->now_us;
		else
			CAT_LOG_WARN("BACKUP",
				     "prune %s: now_us ignored, the worker's clock decides "
				     "(CATALYST_BACKUP_ALLOW_PRUNE_NOW is for tests)",
				     cmd->meta->command_id);
	}
	if ((err = cat_pg_exec(conn,
			       "SELECT backup_id, kind, (extract(epoch FROM finished_at) * 1000000)::bigint, "
			       "coalesce(verify_ok, false) FROM backup_catalog "
			       "WHERE state = 'completed' AND database_name = $1 AND finished_at IS NOT NULL "
			       "ORDER BY finished_at, backup_id",
			       1, p, &res, errstr, errstr_size)))
		return err;
	n = (size_t)PQntuples(res);
	items = calloc(n ? n : 1, sizeof(*items));
	kept = calloc(1, n * 80 + 1);
	pruned = calloc(1, n * 80 + 1);
	if (!items || !kept || !pruned) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		items[i].backup_id = PQgetvalue(res, (int)i, 0);
		items[i].kind = PQgetvalue(res, (int)i, 1);
		items[i].finished_us = strtoll(PQgetvalue(res, (int)i, 2), NULL, 10);
		items[i].verified = PQgetvalue(res, (int)i, 3)[0] == 't';
	}
	backup_retention_select(items, n, now_us, (int)backup->settings.keep_full);
	for (size_t i = 0; i < n; i++) {
		char prefix[400];

		if (items[i].keep) {
			kept_len += (size_t)sprintf(kept + kept_len, "%s%s", n_kept++ ? "," : "", items[i].backup_id);
			continue;
		}
		pruned_len += (size_t)sprintf(pruned + pruned_len, "%s%s", n_pruned++ ? "," : "", items[i].backup_id);
		if (dry_run)
			continue;
		snprintf(prefix, sizeof(prefix), "backups/%s/%s/", database, items[i].backup_id);
		if ((err = remove_prefix(backup, prefix, errstr, errstr_size)))
			goto out;
		{
			const char *q[] = {items[i].backup_id};

			if ((err = cat_pg_exec(conn,
					       "UPDATE backup_catalog SET state = 'pruned' WHERE backup_id = $1", 1, q,
					       NULL, errstr, errstr_size)))
				goto out;
		}
	}
	{
		char now_text[32], msg[128];
		cat_event_attr_t a[] = {{"kept", kept}, {"pruned", pruned}, {"dry_run", dry_run ? "true" : "false"},
					{"now", now_text}};
		cat_event_counter_t c[] = {{"kept", (int64_t)n_kept}, {"pruned", (int64_t)n_pruned}};

		iso_time(now_us, now_text, sizeof(now_text));
		snprintf(msg, sizeof(msg), "%s%zu backups pruned, %zu kept", dry_run ? "dry run: " : "", n_pruned, n_kept);
		publish_event(backup, "backup.pruned", database, cmd->meta->command_id, true, msg, a, 4, c, 2);
		CAT_LOG_INFO("BACKUP", "%s", msg);
	}
out:
	free(items);
	free(kept);
	free(pruned);
	PQclear(res);
	return err;
}

/* --- apply ---------------------------------------------------------------------------------------- */

/* The one event of a command that failed for good (it is dead-lettered
 * too), so that whoever waits on events.v1 for its answer gets one. */
static void publish_failure(backup_t *backup, const Catalyst__V1__BackupCommand *cmd, cat_err_t cause,
			    const char *why)
{
	const char *command_id = cmd->meta->command_id;
	const char *database = database_of(backup, cmd);
	cat_event_counter_t c[] = {{"attempts", backup->attempt->failed}};
	char backup_id[128];

	switch (cmd->action_case) {
	case CATALYST__V1__BACKUP_COMMAND__ACTION_FULL:
	case CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES: {
		const char *kind = cmd->action_case == CATALYST__V1__BACKUP_COMMAND__ACTION_FULL ? "full"
				   : cmd->tables->has_incremental && cmd->tables->incremental ? "incremental"
											       : "tables";
		cat_event_attr_t a[] = {{"kind", kind}, {"database", database}, {"class", cat_err_name(cause)}};

		make_backup_id(cmd, kind, backup_id, sizeof(backup_id));
		publish_event(backup, "backup.failed", backup_id, command_id, false, why, a, 3, c, 1);
		break;
	}
	case CATALYST__V1__BACKUP_COMMAND__ACTION_RESTORE: {
		cat_event_attr_t a[] = {{"target", cmd->restore->target ? cmd->restore->target : ""}};

		publish_event(backup, "backup.restored", cmd->restore->backup_id ? cmd->restore->backup_id : "",
			      command_id, false, why, a, 1, c, 1);
		break;
	}
	case CATALYST__V1__BACKUP_COMMAND__ACTION_VERIFY:
		publish_event(backup, "backup.verified", cmd->verify->backup_id ? cmd->verify->backup_id : "",
			      command_id, false, why, NULL, 0, c, 1);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_PRUNE:
		publish_event(backup, "backup.pruned", database, command_id, false, why, NULL, 0, c, 1);
		break;
	default:
		break;
	}
}

static cat_err_t apply_one(backup_t *backup, cat_msg_t *msg, char *errstr, size_t errstr_size)
{
	const rd_kafka_message_t *rkm = msg->rkm;
	Catalyst__V1__BackupCommand *cmd = NULL;
	const char *tables[BACKUP_MAX_TABLES];
	size_t n_tables = 0;
	PGconn *conn;
	cat_err_t err = CAT_OK, cause = CAT_ERR_PERMANENT;

	if ((err = cat_codec_backup_command_decode(rkm->payload, rkm->len, &cmd, errstr, errstr_size)) != CAT_OK)
		return err;
	if (!cmd->meta || !cmd->meta->command_id || !*cmd->meta->command_id) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "meta.command_id is required");
		goto out;
	}
	if (cmd->meta->has_issued_at_us)
		msg->issued_at_us = cmd->meta->issued_at_us;
	/* without the catalog no command can run or even be marked failed:
	 * the command waits for the primary, as every worker does, and the
	 * attempt does not count */
	if ((err = catalog(backup, &conn, errstr, errstr_size))) {
		catalyst__v1__backup_command__free_unpacked(cmd, NULL);
		return err;
	}
	if (cmd->database && *cmd->database && strcmp(cmd->database, PQdb(conn)) != 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				  "database %s is not the one this worker backs up (%s)", cmd->database, PQdb(conn));
		goto out;
	}
	switch (cmd->action_case) {
	case CATALYST__V1__BACKUP_COMMAND__ACTION_FULL:
		err = run_backup(backup, cmd, "full", cmd->full->tag, NULL, 0, errstr, errstr_size);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES: {
		const Catalyst__V1__BackupCommand__Tables *t = cmd->tables;

		if (t->n_tables == 0) {
			for (size_t i = 0; i < sizeof(hot_tables) / sizeof(hot_tables[0]); i++)
				tables[n_tables++] = hot_tables[i];
		}
		for (size_t i = 0; i < t->n_tables; i++) {
			bool dup = false;

			if (!cat_schema_table(t->tables[i])) {
				err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "unknown table %s", t->tables[i]);
				goto out;
			}
			for (size_t j = 0; j < n_tables; j++)
				dup = dup || strcmp(tables[j], t->tables[i]) == 0;
			if (!dup && n_tables < BACKUP_MAX_TABLES)
				tables[n_tables++] = cat_schema_table(t->tables[i])->name;
		}
		err = run_backup(backup, cmd, t->has_incremental && t->incremental ? "incremental" : "tables", t->tag,
				 tables, n_tables, errstr, errstr_size);
		break;
	}
	case CATALYST__V1__BACKUP_COMMAND__ACTION_RESTORE:
		err = run_restore(backup, cmd, errstr, errstr_size);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_VERIFY:
		err = run_verify(backup, cmd, errstr, errstr_size);
		break;
	case CATALYST__V1__BACKUP_COMMAND__ACTION_PRUNE:
		err = run_prune(backup, cmd, errstr, errstr_size);
		break;
	default:
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "BackupCommand without a known action");
		break;
	}
out:
	if (err != CAT_OK && err != CAT_ERR_PERMANENT && !*backup->stop &&
	    ++backup->attempt->failed >= backup->settings.max_attempts) {
		char why[512];

		snprintf(why, sizeof(why), "%s", errstr);
		cause = err;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "gave up after %d attempts: %s",
				  backup->attempt->failed, why);
	}
	if (err == CAT_ERR_PERMANENT && cmd->meta && cmd->meta->command_id && *cmd->meta->command_id)
		publish_failure(backup, cmd, cause, errstr);
	/* the next command finds the catalog's connection idle, or makes a new one */
	if (err != CAT_OK)
		cat_pg_session_failed(backup->pg);
	catalyst__v1__backup_command__free_unpacked(cmd, NULL);
	return err;
}

/* The attempts at the command at partition:offset so far (a new count for
 * a command not seen yet). */
static backup_attempt_t *attempt_of(backup_t *backup, int32_t partition, int64_t offset)
{
	backup_attempt_t *slot = NULL;

	for (size_t i = 0; i < BACKUP_ATTEMPT_SLOTS; i++) {
		backup_attempt_t *a = &backup->attempts[i];

		if (a->partition == partition && a->offset == offset)
			return a;
		/* an earlier offset of the partition: done, or abandoned on a
		 * revoke (a partition's commands run in order) */
		if (a->partition == partition && a->offset < offset)
			a->partition = -1;
		if (a->partition < 0 && !slot)
			slot = a;
	}
	if (!slot) /* more commands retried at once than slots: one count starts over */
		slot = &backup->attempts[(uint32_t)partition % BACKUP_ATTEMPT_SLOTS];
	*slot = (backup_attempt_t){.partition = partition, .offset = offset};
	return slot;
}

cat_err_t backup_apply(void *opaque, cat_batch_t *batch, char *errstr, size_t errstr_size)
{
	backup_t *backup = opaque;

	for (size_t i = 0; i < batch->n; i++) {
		cat_msg_t *msg = &batch->msgs[i];
		cat_err_t err;

		backup->attempt = attempt_of(backup, batch->partition, msg->rkm->offset);
		backup->busy = 1;
		err = apply_one(backup, msg, errstr, errstr_size);
		backup->busy = 0;
		if (err == CAT_OK || err == CAT_ERR_PERMANENT)
			backup->attempt->partition = -1; /* done with it */
		if (err == CAT_ERR_PERMANENT) {
			msg->result = CAT_ERR_PERMANENT;
			snprintf(msg->reason, sizeof(msg->reason), "%s", errstr);
			CAT_LOG_ERROR("BACKUP", "%s [%d] offset %lld: %s", batch->topic, (int)batch->partition,
				      (long long)msg->rkm->offset, errstr);
			backup->failing = 0;
			continue;
		}
		if (err != CAT_OK) {
			/* never FATAL: refused credentials, a missing bucket or an
			 * unreachable database keep the command and retry with
			 * backoff while /readyz reports the reason */
			snprintf(backup->last_error, sizeof(backup->last_error), "%s", errstr);
			backup->failing = 1;
			return CAT_ERR_RETRIABLE;
		}
		backup->failing = 0;
	}
	return CAT_OK;
}
