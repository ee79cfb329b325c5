/*
 * latency-probe: publishes write commands at a steady rate and measures, from
 * outside the workers, how long each takes to become observable on the
 * primary, in Redis and on the replica (scripts/bench latency).
 *
 *   latency-probe --input FILE [--rate N] [--duration-s S] [--warmup-s W]
 *                 [--pg-poll-ms P] [--timeout-s T] [--linger-ms L]
 *                 [--watch NAME=PID]... [--mark FILE]
 *
 * FILE holds JSON write lines (scripts/lib/demo.py day): they are published
 * in order, again and again, (W + S) x N writes in all, at N a second. Each
 * write gets, just before it is handed to the producer, a new version (the
 * wall clock in µs, strictly increasing), issued_at_us of the same instant
 * and a command_id of its own; a news_raw row (insert-only: a news item is
 * never rewritten) gets its news_id suffixed with the round ("-r3"), the
 * other tables' rows are the same keys at new versions. The first W
 * seconds warm the producer and the workers up and are not measured.
 *
 * Observers, one thread each, stamp the moment a write is observable at its
 * version (or a newer one of its key):
 *   primary  (CATALYST_PG_URL) one query reads, from every table, the versions
 *            above the oldest write not seen yet; a version names its write
 *            (each is unique). Every P ms (default 2), or every 1/20 of that
 *            write's age when longer: a stamp late by at most 5 % of a slow
 *            hop, and the observer's own load bounded when the workers fall
 *            behind. Needs an index on each table's version (scripts/bench
 *            makes them in its scratch databases), else each query scans the
 *            tables.
 *   replica  (CATALYST_REPLICA_URL, when set) the same.
 *   redis    (CATALYST_REDIS_URL, when set) CONFIG SET notify-keyspace-events
 *            E$ (use a Redis of your own), SUBSCRIBE __keyevent@DB__:set; a
 *            SET of a pending key is answered by a GET of its value, whose
 *            "version" says which writes it holds; a write still pending
 *            after 2 s is looked up with a GET, once a second (counted:
 *            should stay 0). trading_candidates rows have no key of their
 *            own in the cache (derived lists only): not observed there.
 * A stamp is taken when the reply that shows the version is read: an upper
 * bound, late by at most the observer's cycle (reported).
 *
 * CPU seconds (user + system) over the measured window: of each --watch
 * NAME=PID process, of each observed PostgreSQL server (its postmaster and
 * every child, less the observer's own backend, reported apart), of each
 * observer thread and of the probe. --mark FILE is created when the measured
 * window starts; it ends when every write is observed everywhere (or T
 * seconds, default 60, after the last was published).
 *
 * Prints one JSON object; exits 0 when every measured write was observed
 * everywhere and every write delivered, 1 otherwise, 2 on bad usage or input.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cat_codec.h"
#include "cat_config.h"
#include "cat_log.h"
#include "cat_publish.h"
#include "cat_redis.h"
#include "cat_schema.h"
#include "cat_time.h"

#define NONE		     UINT32_MAX
#define MAX_PROCS	     16
#define REDIS_SWEEP_AFTER_US 2000000 /* a write pending this long is looked up (once a second) */
#define REDIS_WAIT_MS	     5	     /* longest wait for a notification before looking at the clock */
#define PACE_US		     1000    /* the publisher wakes at most once a millisecond */
#define REDIS_TOPIC_FMT	     "__keyevent@%d__:set"

enum { OBS_PRIMARY, OBS_REDIS, OBS_REPLICA, N_OBS };
static const char *const obs_names[N_OBS] = {"primary", "redis", "replica"};

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_PG,
	{.name = "CATALYST_REPLICA_URL",
	 .type = CAT_CFG_PG_URL,
	 .secret = true,
	 .help = "the replica to observe (none: not observed)"},
	{.name = "CATALYST_REDIS_URL",
	 .type = CAT_CFG_STRING,
	 .secret = true,
	 .check = cat_redis_url_check,
	 .help = "the Redis to observe, the bench's own (none: not observed)"},
};

/* One key: a table's row (a news_raw row of one round). */
typedef struct key {
	unsigned table; /* index into cat_schema_tables */
	char *pk;
	char *redis; /* its cache key, NULL when it has none */
} probe_key_t;

/* A template line. */
typedef struct line {
	Catalyst__V1__WriteCommand *cmd; /* decoded once, changed in place at each publish */
	unsigned table;
	uint32_t key; /* key id (news: its index among the news lines) */
	bool news;
	char *pk; /* news: the news_id of the line */
} line_t;

/* One published write; seen_us[] written by its observer only. */
typedef struct write {
	uint32_t key;
	int64_t version;
	int64_t published_us; /* monotonic */
	int64_t seen_us[N_OBS];
} write_t;

typedef struct proc {
	char name[64];
	int pid;
	double cpu0, cpu1;
} proc_t;

typedef struct probe probe_t;

/* An observer's state: its writes pending, key by key, in publish order. */
typedef struct observer {
	probe_t *probe;
	int which;
	bool enabled;
	pthread_t thread;
	size_t ingested; /* writes taken from the log */
	uint32_t *head, *tail, *next;
	uint32_t *plist, *ppos; /* keys with writes pending, and where each is in plist */
	size_t n_pending_keys;
	size_t n_pending;
	/* figures */
	uint64_t cycles, lookups, sweep_observed;
	int64_t cycle_sum_us, cycle_max_us, query_sum_us;
	int64_t *cycle_us; /* every cycle, for its p99 */
	size_t cycle_cap;
	_Atomic int backend_pid;	   /* PostgreSQL observers: their session's backend */
	double backend_cpu0, backend_cpu1; /* its CPU */
	double server_cpu0, server_cpu1;   /* its postmaster's and every child's */
	double thread_cpu0, thread_cpu1;   /* the observer thread's own */
	char error[512];
} observer_t;

struct probe {
	const cat_config_t *cfg;
	line_t *lines;
	size_t n_lines, n_news_lines;
	probe_key_t *keys;
	size_t n_keys, n_base_keys;
	uint32_t *hash; /* redis name -> key id, open addressing */
	size_t hash_cap;
	write_t *writes;
	size_t n_writes, n_warmup;
	_Atomic size_t published;
	atomic_bool publishing_done;
	_Atomic int64_t done_publishing_us;
	atomic_bool stop;
	atomic_int finished; /* observers out of their loop */
	atomic_bool release; /* they may close their sessions */
	long rate;
	int pg_poll_ms, timeout_s;
	observer_t obs[N_OBS];
	proc_t procs[MAX_PROCS];
	size_t n_procs;
	double self_cpu0, self_cpu1; /* the probe's */
	uint64_t delivery_failures;
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);

	if (!p) {
		fprintf(stderr, "latency-probe: out of memory\n");
		exit(2);
	}
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p) {
		fprintf(stderr, "latency-probe: out of memory\n");
		exit(2);
	}
	return p;
}

/* --- CPU of processes -------------------------------------------------------- */

/* utime + stime of a process, seconds; -1 when it is gone. Sets *ppid. */
static double proc_cpu(int pid, int *ppid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	int parent = 0;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (!(f = fopen(path, "r")))
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	if (!(p = strrchr(buf, ')')))
		return -1;
	/* after "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
	 * stime */
	if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &parent, &ut, &st) != 3)
		return -1;
	if (ppid)
		*ppid = parent;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU of pid and of its children (a server's processes). */
static double proc_tree_cpu(int pid)
{
	double sum = proc_cpu(pid, NULL);
	DIR *dir;
	struct dirent *d;

	if (sum < 0)
		sum = 0;
	if (!(dir = opendir("/proc")))
		return sum;
	while ((d = readdir(dir))) {
		int child = atoi(d->d_name), ppid = 0;
		double c;

		if (child <= 0)
			continue;
		if ((c = proc_cpu(child, &ppid)) >= 0 && ppid == pid)
			sum += c;
	}
	closedir(dir);
	return sum;
}

static double self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
	       ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static void sample_cpu(probe_t *probe, bool end)
{
	if (end)
		probe->self_cpu1 = self_cpu();
	else
		probe->self_cpu0 = self_cpu();
	for (size_t i = 0; i < probe->n_procs; i++) {
		proc_t *p = &probe->procs[i];
		double c = proc_cpu(p->pid, NULL);

		if (end)
			p->cpu1 = c;
		else
			p->cpu0 = c;
	}
	for (int o = 0; o < N_OBS; o++) {
		observer_t *obs = &probe->obs[o];
		clockid_t clock;
		struct timespec ts;
		double c;

		if (obs->enabled && pthread_getcpuclockid(obs->thread, &clock) == 0 &&
		    clock_gettime(clock, &ts) == 0) {
			c = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
			if (end)
				obs->thread_cpu1 = c;
			else
				obs->thread_cpu0 = c;
		}
		if (!obs->backend_pid)
			continue;
		int postmaster = 0;
		double server;

		c = proc_cpu(obs->backend_pid, &postmaster);
		server = postmaster > 1 ? proc_tree_cpu(postmaster) : 0;
		if (end) {
			obs->backend_cpu1 = c;
			obs->server_cpu1 = server;
		} else {
			obs->backend_cpu0 = c;
			obs->server_cpu0 = server;
		}
	}
}

/* --- keys ---------------------------------------------------------------------- */

static uint32_t hash_text(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

static uint32_t hash_find(const probe_t *probe, const char *redis)
{
	size_t mask = probe->hash_cap - 1;

	for (size_t i = hash_text(redis) & mask;; i = (i + 1) & mask) {
		uint32_t id = probe->hash[i];

		if (id == NONE || strcmp(probe->keys[id].redis, redis) == 0)
			return id;
	}
}

static void hash_add(probe_t *probe, uint32_t id)
{
	size_t mask = probe->hash_cap - 1, i = hash_text(probe->keys[id].redis) & mask;

	while (probe->hash[i] != NONE)
		i = (i + 1) & mask;
	probe->hash[i] = id;
}

/* The cache key of a row (cache.h's layout), NULL for a table without one. */
static char *redis_key(unsigned table, const char *pk)
{
	static const struct {
		const char *table, *prefix;
	} layout[] = {
		{"news_raw", "news:"},
		{"trading_signals", "signals:"},
		{"trade_records", "trades:"},
		{"source_metrics", "sources:"},
	};
	char *out;

	for (size_t i = 0; i < sizeof(layout) / sizeof(layout[0]); i++)
		if (strcmp(cat_schema_tables[table].name, layout[i].table) == 0) {
			if (asprintf(&out, "%s%s", layout[i].prefix, pk) < 0) {
				fprintf(stderr, "latency-probe: out of memory\n");
				exit(2);
			}
			return out;
		}
	return NULL;
}

static unsigned table_index(const cat_table_t *table)
{
	return (unsigned)(table - cat_schema_tables);
}

static bool is_news(unsigned table)
{
	return strcmp(cat_schema_tables[table].name, "news_raw") == 0;
}

/* Reads the template lines and makes every key the run will write: the
 * other tables' distinct keys first, then each round's news keys. */
static int load_lines(probe_t *probe, const char *path, size_t n_writes)
{
	FILE *in = fopen(path, "r");
	char *buf = NULL, errstr[512];
	size_t cap = 0, lines_cap = 1024, keys_cap = 1024, rounds;
	ssize_t n;
	unsigned long line_no = 0;
	/* the distinct non-news keys, table + '\t' + pk, found by linear probing */
	char **seen = NULL;
	uint32_t *seen_id = NULL;
	size_t seen_cap = 1 << 16;
	int rc = 2;

	if (!in) {
		fprintf(stderr, "latency-probe: could not open %s: %s\n", path, strerror(errno));
		return 2;
	}
	probe->lines = xcalloc(lines_cap, sizeof(line_t));
	probe->keys = xcalloc(keys_cap, sizeof(probe_key_t));
	seen = xcalloc(seen_cap, sizeof(char *));
	seen_id = xcalloc(seen_cap, sizeof(uint32_t));
	while ((n = getline(&buf, &cap, in)) != -1) {
		Catalyst__V1__WriteCommand *cmd = NULL;
		const cat_table_t *table;
		line_t *l;

		line_no++;
		while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
			buf[--n] = '\0';
		if (n == 0)
			continue;
		if (cat_codec_write_from_json(buf, (size_t)n, "latency-probe", &cmd, errstr,
					      sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "latency-probe: %s line %lu: %s\n", path, line_no, errstr);
			goto out;
		}
		if (cmd->op != CATALYST__V1__WRITE_OP__WRITE_OP_UPSERT ||
		    !(table = cat_codec_record_table(cmd->record))) {
			fprintf(stderr, "latency-probe: %s line %lu: only upserts are measured\n", path,
				line_no);
			catalyst__v1__write_command__free_unpacked(cmd, NULL);
			goto out;
		}
		if (probe->n_lines == lines_cap)
			if (!(probe->lines = reallocarray(probe->lines, lines_cap *= 2, sizeof(line_t))))
				goto out;
		l = &probe->lines[probe->n_lines++];
		l->cmd = cmd;
		l->table = table_index(table);
		l->news = is_news(l->table);
		if (l->news) {
			l->key = (uint32_t)probe->n_news_lines++;
			l->pk = xstrdup(cat_codec_record_pk(cmd->record));
		} else {
			char *id;
			size_t i;

			if (asprintf(&id, "%u\t%s", l->table, cat_codec_record_pk(cmd->record)) < 0)
				goto out;
			for (i = hash_text(id) & (seen_cap - 1); seen[i] && strcmp(seen[i], id) != 0;
			     i = (i + 1) & (seen_cap - 1))
				;
			if (seen[i]) {
				free(id);
				l->key = seen_id[i];
			} else {
				if (probe->n_base_keys * 2 >= seen_cap) {
					fprintf(stderr,
						"latency-probe: more than %zu distinct keys besides news\n",
						seen_cap / 2);
					goto out;
				}
				if (probe->n_keys == keys_cap)
					if (!(probe->keys = reallocarray(probe->keys, keys_cap *= 2,
									 sizeof(probe_key_t))))
						goto out;
				seen[i] = id;
				seen_id[i] = l->key = (uint32_t)probe->n_base_keys++;
				probe->keys[probe->n_keys].table = l->table;
				probe->keys[probe->n_keys].pk = xstrdup(cat_codec_record_pk(cmd->record));
				probe->keys[probe->n_keys].redis =
					redis_key(l->table, probe->keys[probe->n_keys].pk);
				probe->n_keys++;
			}
		}
	}
	if (probe->n_lines == 0) {
		fprintf(stderr, "latency-probe: %s holds no write line\n", path);
		goto out;
	}

	/* the news keys of every round */
	rounds = (n_writes + probe->n_lines - 1) / probe->n_lines;
	if (probe->n_base_keys + rounds * probe->n_news_lines >= NONE) {
		fprintf(stderr, "latency-probe: too many keys\n");
		goto out;
	}
	probe->keys = reallocarray(probe->keys, probe->n_base_keys + rounds * probe->n_news_lines + 1,
				   sizeof(probe_key_t));
	if (!probe->keys)
		goto out;
	for (size_t r = 0; r < rounds; r++)
		for (size_t i = 0; i < probe->n_lines; i++) {
			const line_t *l = &probe->lines[i];
			probe_key_t *k;

			if (!l->news)
				continue;
			k = &probe->keys[probe->n_base_keys + r * probe->n_news_lines + l->key];
			k->table = l->table;
			if (asprintf(&k->pk, "%s-r%zu", l->pk, r) < 0)
				goto out;
			k->redis = redis_key(l->table, k->pk);
		}
	probe->n_keys = probe->n_base_keys + rounds * probe->n_news_lines;

	for (probe->hash_cap = 1024; probe->hash_cap < probe->n_keys * 2; probe->hash_cap *= 2)
		;
	probe->hash = xcalloc(probe->hash_cap, sizeof(uint32_t));
	memset(probe->hash, 0xff, probe->hash_cap * sizeof(uint32_t));
	for (size_t i = 0; i < probe->n_keys; i++)
		if (probe->keys[i].redis)
			hash_add(probe, (uint32_t)i);
	rc = 0;
out:
	free(buf);
	fclose(in);
	for (size_t i = 0; i < seen_cap; i++)
		free(seen[i]);
	free(seen);
	free(seen_id);
	return rc;
}

/* --- observers: pending writes ------------------------------------------------- */

static void obs_init(observer_t *obs, probe_t *probe, int which)
{
	obs->probe = probe;
	obs->which = which;
	obs->head = xcalloc(probe->n_keys, sizeof(uint32_t));
	obs->tail = xcalloc(probe->n_keys, sizeof(uint32_t));
	obs->ppos = xcalloc(probe->n_keys, sizeof(uint32_t));
	obs->plist = xcalloc(probe->n_keys, sizeof(uint32_t));
	obs->next = xcalloc(probe->n_writes, sizeof(uint32_t));
	memset(obs->head, 0xff, probe->n_keys * sizeof(uint32_t));
	obs->cycle_cap = 1024;
	obs->cycle_us = xcalloc(obs->cycle_cap, sizeof(int64_t));
}

static void obs_destroy(observer_t *obs)
{
	free(obs->head);
	free(obs->tail);
	free(obs->ppos);
	free(obs->plist);
	free(obs->next);
	free(obs->cycle_us);
}

/* Takes the writes published since the last call into the pending lists. */
static void obs_ingest(observer_t *obs)
{
	probe_t *probe = obs->probe;
	size_t published = atomic_load_explicit(&probe->published, memory_order_acquire);

	for (; obs->ingested < published; obs->ingested++) {
		uint32_t w = (uint32_t)obs->ingested, k = probe->writes[w].key;

		if (obs->which == OBS_REDIS && !probe->keys[k].redis)
			continue;
		obs->next[w] = NONE;
		if (obs->head[k] == NONE) {
			obs->head[k] = w;
			obs->ppos[k] = (uint32_t)obs->n_pending_keys;
			obs->plist[obs->n_pending_keys++] = k;
		} else {
			obs->next[obs->tail[k]] = w;
		}
		obs->tail[k] = w;
		obs->n_pending++;
	}
}

/* Key k holds `version` at `now_us`: every pending write of k not newer is seen. */
static void obs_mark(observer_t *obs, uint32_t k, int64_t version, int64_t now_us)
{
	write_t *writes = obs->probe->writes;

	while (obs->head[k] != NONE && writes[obs->head[k]].version <= version) {
		writes[obs->head[k]].seen_us[obs->which] = now_us;
		obs->head[k] = obs->next[obs->head[k]];
		obs->n_pending--;
	}
	if (obs->head[k] == NONE) {
		uint32_t last = obs->plist[--obs->n_pending_keys];

		obs->plist[obs->ppos[k]] = last;
		obs->ppos[last] = obs->ppos[k];
	}
}

static void obs_cycle(observer_t *obs, int64_t cycle_us, int64_t query_us)
{
	if (obs->cycles == obs->cycle_cap) {
		int64_t *p = reallocarray(obs->cycle_us, obs->cycle_cap * 2, sizeof(int64_t));

		if (p) {
			obs->cycle_us = p;
			obs->cycle_cap *= 2;
		}
	}
	if (obs->cycles < obs->cycle_cap)
		obs->cycle_us[obs->cycles] = cycle_us;
	obs->cycles++;
	obs->cycle_sum_us += cycle_us;
	obs->query_sum_us += query_us;
	if (cycle_us > obs->cycle_max_us)
		obs->cycle_max_us = cycle_us;
}

/* Whether the observer is finished: everything published is seen, or the
 * time after the last publish is over. */
static bool obs_finished(observer_t *obs)
{
	probe_t *probe = obs->probe;

	if (atomic_load(&probe->stop))
		return true;
	if (!atomic_load(&probe->publishing_done))
		return false;
	return (obs->ingested == atomic_load(&probe->published) && obs->n_pending == 0) ||
	       cat_time_mono_us() >
		       atomic_load(&probe->done_publishing_us) + (int64_t)probe->timeout_s * 1000000;
}

/* An observer done: counted, then it waits (its session open, so that its
 * backend's CPU can be read) until main releases it. */
static void obs_hold(observer_t *obs)
{
	if (obs->error[0])
		atomic_store(&obs->probe->stop, true); /* the run cannot be measured: ended now */
	atomic_fetch_add(&obs->probe->finished, 1);
	while (!atomic_load(&obs->probe->release))
		usleep(1000);
}

/* --- the PostgreSQL observers ---------------------------------------------------- */

static PGconn *pg_connect(const char *url, char *errstr, size_t errstr_size)
{
	PGconn *conn = PQconnectdb(url);

	if (PQstatus(conn) != CONNECTION_OK) {
		snprintf(errstr, errstr_size, "could not connect: %s", PQerrorMessage(conn));
		errstr[strcspn(errstr, "\n")] = '\0';
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* The write of `version` among the first n (versions rise with the index),
 * NONE when none. */
static uint32_t write_of_version(const write_t *writes, size_t n, int64_t version)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (writes[mid].version < version)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && writes[lo].version == version ? (uint32_t)lo : NONE;
}

/* Each cycle reads the versions above the oldest write still pending, from
 * every table (an index on version makes it a short range scan: each row
 * is read about once, a row committed ahead of an older one again until
 * that one is seen); a version names its write. */
static void *pg_observer(void *arg)
{
	observer_t *obs = arg;
	probe_t *probe = obs->probe;
	const char *url = cat_config_str(probe->cfg, obs->which == OBS_PRIMARY ? "CATALYST_PG_URL"
									       : "CATALYST_REPLICA_URL");
	PGconn *conn = NULL;
	PGresult *res = NULL;
	size_t oldest = 0; /* no write before it is pending */
	int64_t last_send = 0;
	char sql[4096] = "", part[512], after[32];
	const char *params[1] = {after};

	if (!(conn = pg_connect(url, obs->error, sizeof(obs->error))))
		goto out;
	obs->backend_pid = PQbackendPID(conn);
	/* one plan, through the version indexes: a plan for $1 guesses a third
	 * of each table above it and would scan the tables whole */
	res = PQexec(conn, "SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		snprintf(obs->error, sizeof(obs->error), "could not set the session up: %s",
			 PQresultErrorMessage(res));
		goto out;
	}
	PQclear(res);
	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		snprintf(part, sizeof(part), "%sSELECT version FROM %s WHERE version > $1",
			 t ? " UNION ALL " : "", cat_schema_tables[t].name);
		strncat(sql, part, sizeof(sql) - strlen(sql) - 1);
	}
	res = PQprepare(conn, "observe", sql, 1, NULL);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		snprintf(obs->error, sizeof(obs->error), "could not prepare the observing query: %s",
			 PQresultErrorMessage(res));
		goto out;
	}
	PQclear(res);
	res = NULL;

	while (!obs_finished(obs)) {
		int64_t t_send, t_reply, wait_us;

		obs_ingest(obs);
		while (oldest < obs->ingested && probe->writes[oldest].seen_us[obs->which])
			oldest++;
		t_send = cat_time_mono_us();
		if (obs->n_pending > 0) {
			snprintf(after, sizeof(after), "%" PRId64, probe->writes[oldest].version - 1);
			res = PQexecPrepared(conn, "observe", 1, params, NULL, NULL, 0);
			t_reply = cat_time_mono_us();
			if (PQresultStatus(res) != PGRES_TUPLES_OK) {
				snprintf(obs->error, sizeof(obs->error), "could not observe: %s",
					 PQresultErrorMessage(res));
				obs->error[strcspn(obs->error, "\n")] = '\0';
				goto out;
			}
			obs->lookups += (uint64_t)PQntuples(res);
			for (int r = 0; r < PQntuples(res); r++) {
				uint32_t w = write_of_version(probe->writes, obs->ingested,
							      strtoll(PQgetvalue(res, r, 0), NULL, 10));

				if (w != NONE && !probe->writes[w].seen_us[obs->which])
					obs_mark(obs, probe->writes[w].key, probe->writes[w].version,
						 t_reply);
			}
			PQclear(res);
			res = NULL;
			if (last_send)
				obs_cycle(obs, t_reply - last_send, t_reply - t_send);
			last_send = t_send;
		} else {
			last_send = 0; /* nothing to look for: the next cycle starts afresh */
		}
		/* every P ms, or every 1/20 of the oldest pending write's age when
		 * longer: a stamp late by at most 5 % when the hop is slow, and the
		 * observer's reads bounded when it falls behind */
		wait_us = (int64_t)probe->pg_poll_ms * 1000;
		if (obs->n_pending > 0 && (t_send - probe->writes[oldest].published_us) / 20 > wait_us)
			wait_us = (t_send - probe->writes[oldest].published_us) / 20;
		wait_us += t_send - cat_time_mono_us();
		if (wait_us > 0)
			usleep((useconds_t)wait_us);
	}

out:
	PQclear(res);
	obs_hold(obs);
	PQfinish(conn);
	return NULL;
}

/* --- the Redis observer -------------------------------------------------------------- */

static redisContext *redis_connect(const cat_redis_url_t *url, char *errstr, size_t errstr_size)
{
	redisContext *c = redisConnect(url->host, url->port);
	redisReply *r = NULL;

	if (!c || c->err) {
		snprintf(errstr, errstr_size, "could not connect to Redis %s:%d: %s", url->host, url->port,
			 c ? c->errstr : "out of memory");
		goto error;
	}
	if (url->password[0]) {
		r = url->user[0] ? redisCommand(c, "AUTH %s %s", url->user, url->password)
				 : redisCommand(c, "AUTH %s", url->password);
		if (!r || r->type == REDIS_REPLY_ERROR) {
			snprintf(errstr, errstr_size, "could not authenticate to Redis %s:%d", url->host,
				 url->port);
			goto error;
		}
		freeReplyObject(r);
	}
	r = redisCommand(c, "SELECT %d", url->db);
	if (!r || r->type == REDIS_REPLY_ERROR) {
		snprintf(errstr, errstr_size, "could not select Redis database %d", url->db);
		goto error;
	}
	freeReplyObject(r);
	return c;
error:
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return NULL;
}

/* The "version" of a cached row's JSON; -1 when it has none. */
static int64_t json_version(const char *value, size_t len)
{
	static const char needle[] = "\"version\":";
	const char *p = memmem(value, len, needle, sizeof(needle) - 1);

	return p ? strtoll(p + sizeof(needle) - 1, NULL, 10) : -1;
}

/* GETs (or one MGET) of keys, marks what their values hold. */
static int redis_lookup(observer_t *obs, redisContext *c, const uint32_t *keys, size_t n, bool sweep)
{
	probe_t *probe = obs->probe;
	int64_t t_send = cat_time_mono_us(), t_reply;

	for (size_t i = 0; i < n; i++)
		if (redisAppendCommand(c, "GET %s", probe->keys[keys[i]].redis) != REDIS_OK)
			goto error;
	for (size_t i = 0; i < n; i++) {
		redisReply *r = NULL;
		int64_t v;
		size_t before = obs->n_pending;

		if (redisGetReply(c, (void **)&r) != REDIS_OK || !r)
			goto error;
		t_reply = cat_time_mono_us();
		if (r->type == REDIS_REPLY_STRING && (v = json_version(r->str, r->len)) > 0 &&
		    obs->head[keys[i]] != NONE)
			obs_mark(obs, keys[i], v, t_reply);
		if (sweep)
			obs->sweep_observed += before - obs->n_pending;
		freeReplyObject(r);
	}
	obs->lookups += n;
	if (n && !sweep) {
		t_reply = cat_time_mono_us();
		obs->query_sum_us += t_reply - t_send;
	}
	return 0;
error:
	snprintf(obs->error, sizeof(obs->error), "could not read from Redis: %s", c->errstr);
	return -1;
}

static void *redis_observer(void *arg)
{
	observer_t *obs = arg;
	probe_t *probe = obs->probe;
	cat_redis_url_t url;
	redisContext *sub = NULL, *get = NULL;
	redisReply *r = NULL;
	uint32_t *check = xcalloc(probe->n_keys, sizeof(uint32_t));
	uint8_t *queued = xcalloc(probe->n_keys, 1);
	size_t n_check;
	int64_t next_sweep = cat_time_mono_us() + REDIS_SWEEP_AFTER_US;
	char topic[64];

	if (cat_redis_url_parse(cat_config_str(probe->cfg, "CATALYST_REDIS_URL"), &url, obs->error,
				sizeof(obs->error)) != CAT_OK)
		goto out;
	if (url.tls) {
		snprintf(obs->error, sizeof(obs->error),
			 "rediss:// is not observed: use the bench's own Redis");
		goto out;
	}
	if (!(get = redis_connect(&url, obs->error, sizeof(obs->error))) ||
	    !(sub = redis_connect(&url, obs->error, sizeof(obs->error))))
		goto out;
	r = redisCommand(get, "CONFIG SET notify-keyspace-events E$");
	if (!r || r->type == REDIS_REPLY_ERROR) {
		snprintf(obs->error, sizeof(obs->error), "could not turn keyspace notifications on: %s",
			 r ? r->str : get->errstr);
		goto out;
	}
	freeReplyObject(r);
	snprintf(topic, sizeof(topic), REDIS_TOPIC_FMT, url.db);
	r = redisCommand(sub, "SUBSCRIBE %s", topic);
	if (!r || r->type != REDIS_REPLY_ARRAY) {
		snprintf(obs->error, sizeof(obs->error), "could not subscribe to %s", topic);
		goto out;
	}
	freeReplyObject(r);
	r = NULL;

	while (!obs_finished(obs)) {
		struct pollfd pfd = {.fd = sub->fd, .events = POLLIN};
		int64_t t0 = cat_time_mono_us();
		void *reply;

		obs_ingest(obs);
		n_check = 0;
		if (poll(&pfd, 1, REDIS_WAIT_MS) > 0) {
			if (redisBufferRead(sub) != REDIS_OK) {
				snprintf(obs->error, sizeof(obs->error), "could not read notifications: %s",
					 sub->errstr);
				goto out;
			}
		}
		/* every notification read so far */
		while (redisGetReplyFromReader(sub, &reply) == REDIS_OK && reply) {
			redisReply *m = reply;

			if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
			    m->element[2]->type == REDIS_REPLY_STRING) {
				uint32_t k = hash_find(probe, m->element[2]->str);

				if (k != NONE && !queued[k]) {
					obs_ingest(obs);
					if (obs->head[k] != NONE) {
						queued[k] = 1;
						check[n_check++] = k;
					}
				}
			}
			freeReplyObject(m);
		}
		if (n_check) {
			if (redis_lookup(obs, get, check, n_check, false) != 0)
				goto out;
			for (size_t i = 0; i < n_check; i++)
				queued[check[i]] = 0;
			obs_cycle(obs, cat_time_mono_us() - t0, 0);
		}
		/* a write the notifications did not show after 1 s: looked up */
		if (cat_time_mono_us() >= next_sweep) {
			int64_t now = cat_time_mono_us();

			n_check = 0;
			for (size_t i = 0; i < obs->n_pending_keys; i++) {
				uint32_t k = obs->plist[i];

				if (now - probe->writes[obs->head[k]].published_us > REDIS_SWEEP_AFTER_US)
					check[n_check++] = k;
			}
			if (n_check && redis_lookup(obs, get, check, n_check, true) != 0)
				goto out;
			next_sweep = now + 1000000;
		}
	}

out:
	if (r)
		freeReplyObject(r);
	obs_hold(obs);
	redisFree(sub);
	redisFree(get);
	free(check);
	free(queued);
	return NULL;
}

/* --- the publisher ------------------------------------------------------------------ */

static void delivery_report(void *ref, const char *error, void *opaque)
{
	probe_t *probe = opaque;

	(void)ref;
	if (error) {
		if (probe->delivery_failures++ == 0)
			fprintf(stderr, "latency-probe: a write was not delivered: %s\n", error);
	}
}

/* Sets an int64 field of a row message (version), present. */
static void set_int64(ProtobufCMessage *row, const char *field, int64_t value)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(row->descriptor, field);

	*(int64_t *)((char *)row + f->offset) = value;
	if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset)
		*(protobuf_c_boolean *)((char *)row + f->quantifier_offset) = 1;
}

/* Replaces a string field of a row message (the news_id of a round). */
static void set_string(ProtobufCMessage *row, const char *field, const char *value)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(row->descriptor, field);
	char **slot = (char **)((char *)row + f->offset);

	free(*slot);
	*slot = xstrdup(value);
}

static int publish(probe_t *probe, cat_publish_t *publisher, const char *mark)
{
	int64_t t0 = cat_time_mono_us(), last_version = 0;
	double step_us = 1e6 / (double)probe->rate;
	char errstr[512], command_id[64];

	for (size_t i = 0; i < probe->n_writes && !atomic_load(&probe->stop); i++) {
		const line_t *l = &probe->lines[i % probe->n_lines];
		size_t round = i / probe->n_lines;
		Catalyst__V1__WriteCommand *cmd = l->cmd;
		ProtobufCMessage *row;
		write_t *w = &probe->writes[i];
		int64_t due = t0 + (int64_t)((double)i * step_us), now, version;
		cat_err_t err;

		if (i == probe->n_warmup) {
			sample_cpu(probe, false);
			if (mark) {
				FILE *f = fopen(mark, "w");

				if (f)
					fclose(f);
			}
		}
		row = (ProtobufCMessage *)cat_codec_record_row(cmd->record);
		w->key = l->news ? (uint32_t)(probe->n_base_keys + round * probe->n_news_lines + l->key)
				 : l->key;
		if (l->news)
			set_string(row, cat_schema_tables[l->table].primary_key, probe->keys[w->key].pk);
		snprintf(command_id, sizeof(command_id), "latency-%d-%zu", (int)getpid(), i);
		free(cmd->meta->command_id);
		cmd->meta->command_id = xstrdup(command_id);

		/* ahead of time: asleep until about a millisecond's writes are due
		 * (one wake-up each, not one a write), each then stamped as it goes */
		if ((now = cat_time_mono_us()) < due) {
			int64_t until = due + (step_us < PACE_US ? PACE_US - (int64_t)step_us : 0);
			struct timespec ts = {.tv_sec = (until - now) / 1000000,
					      .tv_nsec = (until - now) % 1000000 * 1000};

			nanosleep(&ts, NULL);
		}
		/* the publish time: a version of this instant, just before the producer has it */
		version = cat_time_now_us();
		if (version <= last_version)
			version = last_version + 1;
		last_version = version;
		w->version = version;
		w->published_us = cat_time_mono_us();
		set_int64(row, "version", version);
		cmd->meta->issued_at_us = version;
		cmd->meta->has_issued_at_us = 1;
		atomic_store_explicit(&probe->published, i + 1, memory_order_release);
		err = cat_publish_write(publisher, cmd, NULL, errstr, sizeof(errstr));
		if (err != CAT_OK) {
			fprintf(stderr, "latency-probe: could not publish: %s\n", errstr);
			return 1;
		}
	}
	return 0;
}

/* --- figures -------------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

static double quantile_ms(const int64_t *sorted, size_t n, double q)
{
	size_t i;

	if (n == 0)
		return 0;
	i = (size_t)(q * (double)n);
	return (double)sorted[i < n ? i : n - 1] / 1000.0;
}

static double round2(double v)
{
	return (double)(int64_t)(v * 100 + (v >= 0 ? 0.5 : -0.5)) / 100;
}

/* The figures of one observer over the measured writes; *never gets the
 * count of writes it did not see. */
static json_t *obs_figures(probe_t *probe, observer_t *obs, size_t *never)
{
	size_t n = 0, unseen = 0, expected = 0;
	int64_t *lat = xcalloc(probe->n_writes, sizeof(int64_t));
	json_t *o = json_object();
	size_t pub = atomic_load(&probe->published);

	for (size_t i = probe->n_warmup; i < pub; i++) {
		const write_t *w = &probe->writes[i];

		if (obs->which == OBS_REDIS && !probe->keys[w->key].redis)
			continue;
		expected++;
		if (w->seen_us[obs->which])
			lat[n++] = w->seen_us[obs->which] - w->published_us;
		else
			unseen++;
	}
	qsort(lat, n, sizeof(int64_t), cmp_i64);
	json_object_set_new(o, "writes", json_integer((json_int_t)expected));
	json_object_set_new(o, "observed", json_integer((json_int_t)n));
	json_object_set_new(o, "never_observed", json_integer((json_int_t)unseen));
	json_object_set_new(o, "p50_ms", json_real(round2(quantile_ms(lat, n, 0.5))));
	json_object_set_new(o, "p90_ms", json_real(round2(quantile_ms(lat, n, 0.9))));
	json_object_set_new(o, "p99_ms", json_real(round2(quantile_ms(lat, n, 0.99))));
	json_object_set_new(o, "p999_ms", json_real(round2(quantile_ms(lat, n, 0.999))));
	json_object_set_new(o, "max_ms", json_real(round2(n ? (double)lat[n - 1] / 1000.0 : 0)));
	free(lat);

	/* the observer's own resolution */
	{
		size_t nc = obs->cycles < obs->cycle_cap ? obs->cycles : obs->cycle_cap;

		qsort(obs->cycle_us, nc, sizeof(int64_t), cmp_i64);
		json_object_set_new(o, "cycles", json_integer((json_int_t)obs->cycles));
		json_object_set_new(
			o, "cycle_mean_ms",
			json_real(round2(obs->cycles ? (double)obs->cycle_sum_us / (double)obs->cycles / 1000
						     : 0)));
		json_object_set_new(o, "cycle_p99_ms",
				    json_real(round2(quantile_ms(obs->cycle_us, nc, 0.99))));
		json_object_set_new(o, "cycle_max_ms", json_real(round2((double)obs->cycle_max_us / 1000)));
		json_object_set_new(
			o, "query_mean_ms",
			json_real(round2(obs->cycles ? (double)obs->query_sum_us / (double)obs->cycles / 1000
						     : 0)));
		json_object_set_new(o, "lookups", json_integer((json_int_t)obs->lookups));
	}
	json_object_set_new(o, "thread_cpu_s", json_real(round2(obs->thread_cpu1 - obs->thread_cpu0)));
	if (obs->which == OBS_REDIS)
		json_object_set_new(o, "observed_by_sweep", json_integer((json_int_t)obs->sweep_observed));
	else
		json_object_set_new(o, "backend_cpu_s",
				    json_real(round2(obs->backend_cpu1 - obs->backend_cpu0)));
	if (obs->error[0])
		json_object_set_new(o, "error", json_string(obs->error));
	*never = unseen;
	return o;
}

static int parse_proc(probe_t *probe, const char *arg)
{
	const char *eq = strchr(arg, '=');
	proc_t *p;

	if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof(p->name) || atoi(eq + 1) <= 0 ||
	    probe->n_procs == MAX_PROCS) {
		fprintf(stderr, "latency-probe: expected NAME=PID, got %s\n", arg);
		return -1;
	}
	p = &probe->procs[probe->n_procs++];
	snprintf(p->name, sizeof(p->name), "%.*s", (int)(eq - arg), arg);
	p->pid = atoi(eq + 1);
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: latency-probe --input FILE [--rate N] [--duration-s S] [--warmup-s W] "
		"[--pg-poll-ms P] [--timeout-s T] [--linger-ms L] [--watch NAME=PID]... [--mark FILE]\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"input", required_argument, NULL, 'i'},      {"rate", required_argument, NULL, 'r'},
		{"duration-s", required_argument, NULL, 'd'}, {"warmup-s", required_argument, NULL, 'w'},
		{"pg-poll-ms", required_argument, NULL, 'p'}, {"timeout-s", required_argument, NULL, 't'},
		{"linger-ms", required_argument, NULL, 'l'},  {"watch", required_argument, NULL, 'W'},
		{"mark", required_argument, NULL, 'm'},	      {NULL, 0, NULL, 0},
	};
	probe_t *probe = xcalloc(1, sizeof(*probe));
	const char *input = NULL, *mark = NULL, *linger = NULL;
	long duration_s = 60, warmup_s = 2;
	cat_config_t *cfg = NULL;
	cat_publish_t *pub = NULL;
	char errstr[512], **envp = NULL;
	int64_t measured_t0 = 0, measured_t1 = 0, window_us;
	size_t never_total = 0, envc = 0;
	json_t *out;
	int opt, rc = 2;
	extern char **environ;

	probe->rate = 5000;
	probe->pg_poll_ms = 2;
	probe->timeout_s = 60;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'i':
			input = optarg;
			break;
		case 'r':
			probe->rate = strtol(optarg, NULL, 10);
			break;
		case 'd':
			duration_s = strtol(optarg, NULL, 10);
			break;
		case 'w':
			warmup_s = strtol(optarg, NULL, 10);
			break;
		case 'p':
			probe->pg_poll_ms = atoi(optarg);
			break;
		case 't':
			probe->timeout_s = atoi(optarg);
			break;
		case 'l':
			linger = optarg;
			break;
		case 'W':
			if (parse_proc(probe, optarg) != 0)
				goto out;
			break;
		case 'm':
			mark = optarg;
			break;
		default:
			usage();
			goto out;
		}
	}
	if (!input || optind != argc || probe->rate < 1 || probe->rate > 1000000 || duration_s < 1 ||
	    duration_s > 86400 || warmup_s < 0 || warmup_s > 3600 || probe->pg_poll_ms < 0 ||
	    probe->pg_poll_ms > 10000 || probe->timeout_s < 1 ||
	    (linger && strspn(linger, "0123456789") != strlen(linger))) {
		usage();
		goto out;
	}
	/* the publisher's linger.ms, when given, for this process only */
	for (char **e = environ; *e; e++)
		envc++;
	envp = xcalloc(envc + 2, sizeof(char *));
	memcpy(envp, environ, envc * sizeof(char *));
	if (linger && asprintf(&envp[envc], "CATALYST_KAFKA_LINGER_MS=%s", linger) < 0)
		goto out;
	if (cat_config_load(&cfg, config_defs, sizeof(config_defs) / sizeof(config_defs[0]), envp, errstr,
			    sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "latency-probe: %s\n", errstr);
		goto out;
	}
	cat_log_init("latency-probe", CAT_LOG_LEVEL_WARN);
	probe->cfg = cfg;
	probe->n_warmup = (size_t)(warmup_s * probe->rate);
	probe->n_writes = probe->n_warmup + (size_t)(duration_s * probe->rate);
	if ((rc = load_lines(probe, input, probe->n_writes)) != 0)
		goto out;
	probe->writes = xcalloc(probe->n_writes, sizeof(write_t));

	{
		cat_publish_options_t po = {.client_id = "latency-probe",
					    .producer = "latency-probe",
					    .delivery_timeout_ms = 30000,
					    .report = delivery_report,
					    .opaque = probe};

		if (cat_publish_new(&pub, cfg, &po, errstr, sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "latency-probe: %s\n", errstr);
			rc = 2;
			goto out;
		}
	}

	probe->obs[OBS_PRIMARY].enabled = true;
	probe->obs[OBS_REPLICA].enabled = cat_config_is_set(cfg, "CATALYST_REPLICA_URL");
	probe->obs[OBS_REDIS].enabled = cat_config_is_set(cfg, "CATALYST_REDIS_URL");
	for (int o = 0; o < N_OBS; o++) {
		observer_t *obs = &probe->obs[o];

		obs_init(obs, probe, o);
		if (obs->enabled && pthread_create(&obs->thread, NULL,
						   o == OBS_REDIS ? redis_observer : pg_observer, obs) != 0) {
			fprintf(stderr, "latency-probe: could not start an observer\n");
			atomic_store(&probe->stop, true);
			obs->enabled = false;
		}
	}
	usleep(200000); /* the observers connected, Redis subscribed */

	rc = publish(probe, pub, mark);
	atomic_store(&probe->done_publishing_us, cat_time_mono_us());
	atomic_store(&probe->publishing_done, true);
	if (atomic_load(&probe->published) > probe->n_warmup) {
		measured_t0 = probe->writes[probe->n_warmup].published_us;
		measured_t1 = probe->writes[atomic_load(&probe->published) - 1].published_us;
	}
	if (cat_publish_wait(pub, errstr, sizeof(errstr)) != CAT_OK)
		fprintf(stderr, "latency-probe: %s\n", errstr);
	{
		int enabled = 0;

		for (int o = 0; o < N_OBS; o++)
			enabled += probe->obs[o].enabled;
		while (atomic_load(&probe->finished) < enabled)
			usleep(1000);
	}
	sample_cpu(probe, true);
	atomic_store(&probe->release, true);
	for (int o = 0; o < N_OBS; o++)
		if (probe->obs[o].enabled)
			pthread_join(probe->obs[o].thread, NULL);
	window_us = measured_t0 ? cat_time_mono_us() - measured_t0 : 0;

	out = json_object();
	{
		size_t measured = atomic_load(&probe->published) > probe->n_warmup
					  ? atomic_load(&probe->published) - probe->n_warmup
					  : 0;
		double span_s = (double)(measured_t1 - measured_t0) / 1e6;
		json_t *cpu = json_object();

		json_object_set_new(out, "rate_target", json_integer(probe->rate));
		json_object_set_new(out, "duration_s", json_integer(duration_s));
		json_object_set_new(out, "warmup_s", json_integer(warmup_s));
		json_object_set_new(out, "template_lines", json_integer((json_int_t)probe->n_lines));
		json_object_set_new(out, "keys", json_integer((json_int_t)probe->n_keys));
		json_object_set_new(out, "writes", json_integer((json_int_t)measured));
		json_object_set_new(out, "publish_rate",
				    json_real(round2(span_s > 0 ? (double)(measured - 1) / span_s : 0)));
		json_object_set_new(out, "delivery_failures",
				    json_integer((json_int_t)probe->delivery_failures));
		json_object_set_new(out, "pg_poll_ms", json_integer(probe->pg_poll_ms));
		json_object_set_new(out, "linger_ms",
				    linger ? json_integer(atoi(linger)) : json_string("librdkafka default"));
		for (int o = 0; o < N_OBS; o++) {
			size_t never = 0;

			if (!probe->obs[o].enabled)
				continue;
			json_object_set_new(out, obs_names[o], obs_figures(probe, &probe->obs[o], &never));
			never_total += never;
		}
		json_object_set_new(out, "window_s", json_real(round2((double)window_us / 1e6)));
		for (size_t i = 0; i < probe->n_procs; i++) {
			json_object_set_new(cpu, probe->procs[i].name,
					    json_real(round2(probe->procs[i].cpu1 - probe->procs[i].cpu0)));
		}
		/* each PostgreSQL server's processes, less the observer's own backend */
		for (int o = 0; o < N_OBS; o++) {
			const observer_t *obs = &probe->obs[o];
			char name[64];

			if (!obs->backend_pid)
				continue;
			snprintf(name, sizeof(name), "postgres_%s", obs_names[o]);
			json_object_set_new(cpu, name,
					    json_real(round2(obs->server_cpu1 - obs->server_cpu0 -
							     (obs->backend_cpu1 - obs->backend_cpu0))));
		}
		json_object_set_new(cpu, "probe", json_real(round2(probe->self_cpu1 - probe->self_cpu0)));
		json_object_set_new(out, "cpu_s", cpu);
	}
	json_dumpf(out, stdout, JSON_COMPACT);
	printf("\n");
	json_decref(out);
	for (int o = 0; o < N_OBS; o++)
		if (probe->obs[o].error[0]) {
			fprintf(stderr, "latency-probe: %s observer: %s\n", obs_names[o],
				probe->obs[o].error);
			rc = 1;
		}
	if (rc == 0 && (never_total > 0 || probe->delivery_failures > 0 || cat_publish_failed(pub) > 0))
		rc = 1;

out:
	cat_publish_destroy(pub);
	for (int o = 0; o < N_OBS; o++)
		if (probe->obs[o].head)
			obs_destroy(&probe->obs[o]);
	for (size_t i = 0; i < probe->n_lines; i++) {
		catalyst__v1__write_command__free_unpacked(probe->lines[i].cmd, NULL);
		free(probe->lines[i].pk);
	}
	for (size_t i = 0; i < probe->n_keys; i++) {
		free(probe->keys[i].pk);
		free(probe->keys[i].redis);
	}
	free(probe->lines);
	free(probe->keys);
	free(probe->hash);
	free(probe->writes);
	if (envp)
		free(envp[envc]);
	free(envp);
	cat_config_destroy(cfg);
	free(probe);
	return rc;
}
