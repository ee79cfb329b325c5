/*
 * catalyst-cache: the self-heal. Redis can lose what we stored (a restart
 * without persistence, a failover to an empty or lagging replica, a FLUSHDB
 * by someone); the cache then heals itself from the primary, with no
 * command from anyone.
 *
 * A thread of its own checks every CATALYST_CACHE_HEAL_CHECK_MS, on a Redis
 * connection of its own, the sentinel catalyst-cache:sentinel: it holds the
 * run_id (INFO server) of the server it was written on. Missing (FLUSHDB,
 * an empty server) or another server's run_id (a restart from a snapshot, a
 * failover) means data may be lost: the thread claims the rebuild (a lease,
 * catalyst-cache:rebuilder, so that one worker of the group rebuilds at a
 * time; catalyst-cache:unfinished marks a rebuild that has not completed, so
 * that a worker dying in the middle is followed by another rebuild) and runs
 * the `warm rebuild` of warm.c on its own Redis and PostgreSQL connections
 * (scripts.h: HEAL_CHECK, HEAL_DONE). Changes keep being applied by the
 * consume loop meanwhile: the rebuild writes with the rows' versions through
 * the same version-checked script, so it never replaces a newer version or
 * a delete applied meanwhile.
 *
 * Rebuilds start at most once every CATALYST_CACHE_REBUILD_MIN_INTERVAL_S
 * per worker (a failed one included); until then /readyz says a rebuild is
 * pending. While one is needed, pending or running, /readyz answers 503 with
 * what it does: the cache is incomplete. Each automatic rebuild is a log
 * line and catalyst_cache_rebuilds_total{reason}.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cat_log.h"
#include "cat_time.h"
#include "internal.h"
#include "keys.h"

#define KEY_SENTINEL  CACHE_KEYS_INTERNAL "sentinel"
#define KEY_UNFINISHED CACHE_KEYS_INTERNAL "unfinished"
#define KEY_REBUILDER CACHE_KEYS_INTERNAL "rebuilder"
#define LEASE_MS      60000 /* renewed at every chunk of a rebuild */

enum { REASON_DATA_LOST, REASON_RESTART, REASON_UNFINISHED, N_REASONS };

static const char *const reason_names[N_REASONS] = {"data_lost", "restart", "unfinished"};
static const char *const reason_texts[N_REASONS] = {
	"no sentinel: Redis is empty or was flushed (a first start, a restart without persistence, a "
	"failover to an empty replica, a FLUSHDB)",
	"the sentinel names another Redis server: a restart from a snapshot or a failover, which may miss "
	"the latest writes",
	"a rebuild did not complete",
};

typedef enum heal_state {
	HEAL_OK,
	HEAL_PENDING,	 /* needed, waiting for the rate limit */
	HEAL_REBUILDING, /* this worker rebuilds */
	HEAL_BUSY,	 /* another worker rebuilds */
} heal_state_t;

struct cache_heal {
	cache_store_t *rebuilder; /* a store of its own: Redis and PostgreSQL connections */
	pthread_t thread;
	bool started;
	atomic_bool stop;
	atomic_int state;  /* heal_state_t */
	atomic_int reason; /* of the rebuild needed */
	int64_t check_us, min_interval_us;
	int64_t last_start_us; /* monotonic; 0: none yet */
	char owner[128];
	char run_id[64];
	heal_state_t logged; /* the last state logged, so that each is logged once */
	bool check_failing;  /* the last check failed (logged once) */
	cat_metric_t *m_rebuilds[N_REASONS];
	cat_metric_t *m_failures;
	cat_metric_t *m_rebuilding;
};

static int reason_parse(const char *text)
{
	for (int r = 0; r < N_REASONS; r++)
		if (strcmp(text, reason_names[r]) == 0)
			return r;
	return REASON_DATA_LOST;
}

bool cache_heal_ready(cache_heal_t *heal, char *reason, size_t reason_size)
{
	int why = atomic_load(&heal->reason);

	switch ((heal_state_t)atomic_load(&heal->state)) {
	case HEAL_OK:
		return true;
	case HEAL_PENDING:
		snprintf(reason, reason_size,
			 "Redis lost data (%s): rebuild from the primary pending "
			 "(CATALYST_CACHE_REBUILD_MIN_INTERVAL_S)",
			 reason_names[why]);
		return false;
	case HEAL_REBUILDING:
		snprintf(reason, reason_size, "rebuilding from the primary after Redis lost data (%s)",
			 reason_names[why]);
		return false;
	case HEAL_BUSY:
		snprintf(reason, reason_size, "another catalyst-cache is rebuilding Redis from the primary");
		return false;
	}
	return true;
}

/* The rebuild's hook between chunks: stop when the worker stops, keep the
 * lease. */
static cat_err_t on_chunk(void *arg, char *errstr, size_t errstr_size)
{
	cache_heal_t *heal = arg;
	char lease[24];

	if (atomic_load(&heal->stop))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "the worker is stopping");
	snprintf(lease, sizeof(lease), "%d", LEASE_MS);
	return cat_redis_command(heal->rebuilder->redis, NULL, 3, (const char *[]){"PEXPIRE", KEY_REBUILDER, lease},
				 NULL, errstr, errstr_size);
}

/* The server's run_id, read at every check: a proxy may keep our connection
 * across a failover. */
static cat_err_t read_run_id(cache_heal_t *heal, char *errstr, size_t errstr_size)
{
	cat_redis_t *redis = heal->rebuilder->redis;
	redisReply *reply = NULL;
	const char *at;
	size_t len;
	cat_err_t err;

	if ((err = cat_redis_command(redis, &reply, 2, (const char *[]){"INFO", "server"}, NULL, errstr,
				     errstr_size)) != CAT_OK)
		return err;
	at = reply->type == REDIS_REPLY_STRING ? strstr(reply->str, "run_id:")
										    : NULL;
	if (!at) {
		freeReplyObject(reply);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "INFO server has no run_id");
	}
	at += 7;
	len = strcspn(at, "\r\n");
	if (len == 0 || len >= sizeof(heal->run_id)) {
		freeReplyObject(reply);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "INFO server: a malformed run_id");
	}
	memcpy(heal->run_id, at, len);
	heal->run_id[len] = '\0';
	freeReplyObject(reply);
	return CAT_OK;
}

/* One script call of KEYS sentinel, unfinished, rebuilder; its reply (a
 * status or bulk string, or an integer) into `out`. */
static cat_err_t heal_script(cache_heal_t *heal, int script, int argc, const char *const *args, char *out,
			     size_t out_size, char *errstr, size_t errstr_size)
{
	cache_store_t *rb = heal->rebuilder;
	const char *argv[8] = {KEY_SENTINEL, KEY_UNFINISHED, KEY_REBUILDER};
	redisReply **replies = NULL;
	size_t n = 0;
	cat_err_t err;

	for (int i = 0; i < argc; i++)
		argv[3 + i] = args[i];
	if (cat_redis_append_evalsha(rb->redis, &rb->scripts[script], 3, 3 + argc, argv, NULL) != CAT_OK)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	if ((err = cat_redis_pipeline(rb->redis, rb->scripts, N_SCRIPTS, &replies, &n, errstr, errstr_size)) !=
	    CAT_OK)
		return err;
	err = n == 1 ? cat_redis_reply_class(replies[0], errstr, errstr_size)
		     : cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "no reply to a heal script");
	if (err == CAT_OK) {
		if (replies[0]->type == REDIS_REPLY_STRING || replies[0]->type == REDIS_REPLY_STATUS)
			snprintf(out, out_size, "%s", replies[0]->str);
		else if (replies[0]->type == REDIS_REPLY_INTEGER)
			snprintf(out, out_size, "%lld", replies[0]->integer);
		else
			snprintf(out, out_size, "?");
	}
	cat_redis_replies_free(replies, n);
	return err;
}

static void set_state(cache_heal_t *heal, heal_state_t state, int reason)
{
	atomic_store(&heal->reason, reason);
	atomic_store(&heal->state, (int)state);
	cat_metrics_set(heal->m_rebuilding, state == HEAL_REBUILDING);
}

/* Claimed: rebuild, then mark it complete. */
static void rebuild(cache_heal_t *heal, int reason)
{
	char errstr[512], done[16];
	int64_t t0 = cat_time_mono_us();
	cat_err_t err;

	heal->last_start_us = t0;
	set_state(heal, HEAL_REBUILDING, reason);
	cat_metrics_inc(heal->m_rebuilds[reason]);
	CAT_LOG_WARN("REDIS", "redis lost data (%s: %s): rebuilding from the primary", reason_names[reason],
		     reason_texts[reason]);
	err = cache_warm(heal->rebuilder, CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD, errstr,
			 sizeof(errstr));
	if (err == CAT_OK)
		err = heal_script(heal, SCRIPT_HEAL_DONE, 1, (const char *[]){heal->owner}, done, sizeof(done),
				  errstr, sizeof(errstr));
	if (err != CAT_OK && atomic_load(&heal->stop)) {
		CAT_LOG_INFO("REDIS", "rebuild from the primary abandoned: the worker is stopping");
		return;
	}
	if (err != CAT_OK) {
		cat_metrics_inc(heal->m_failures);
		set_state(heal, HEAL_PENDING, reason);
		heal->logged = HEAL_PENDING;
		CAT_LOG_WARN("REDIS", "could not rebuild from the primary: %s: trying again in %lld s", errstr,
			     (long long)(heal->min_interval_us / 1000000));
		return;
	}
	set_state(heal, HEAL_OK, reason);
	heal->logged = HEAL_OK;
	CAT_LOG_INFO("REDIS", "automatic rebuild (%s) done in %lld ms%s", reason_names[reason],
		     (long long)((cat_time_mono_us() - t0) / 1000),
		     strcmp(done, "1") == 0 ? "" : ": Redis lost data again meanwhile");
}

/* One check: is our data there, and should we rebuild it now? */
static void check(cache_heal_t *heal)
{
	char errstr[512], reply[64], lease[24];
	bool may_start =
		heal->last_start_us == 0 || cat_time_mono_us() - heal->last_start_us >= heal->min_interval_us;
	heal_state_t state;
	int reason = REASON_DATA_LOST;

	if (cache_redis_ensure(heal->rebuilder, errstr, sizeof(errstr)) != CAT_OK ||
	    read_run_id(heal, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_DEBUG("REDIS", "self-heal check: %s", errstr);
		return; /* the consume loop reports Redis down */
	}
	snprintf(lease, sizeof(lease), "%d", LEASE_MS);
	if (heal_script(heal, SCRIPT_HEAL_CHECK, 4,
			(const char *[]){heal->run_id, heal->owner, lease, may_start ? "1" : "0"}, reply, sizeof(reply),
			errstr, sizeof(errstr)) != CAT_OK) {
		if (!heal->check_failing)
			CAT_LOG_WARN("REDIS", "could not check the sentinel: %s: will retry", errstr);
		heal->check_failing = true;
		return;
	}
	heal->check_failing = false;
	if (strncmp(reply, "claim:", 6) == 0) {
		rebuild(heal, reason_parse(reply + 6));
		return;
	}
	if (strcmp(reply, "ok") == 0) {
		state = HEAL_OK;
	} else if (strcmp(reply, "busy") == 0) {
		state = HEAL_BUSY;
	} else if (strncmp(reply, "wait:", 5) == 0) {
		state = HEAL_PENDING;
		reason = reason_parse(reply + 5);
	} else {
		CAT_LOG_WARN("REDIS", "unexpected reply of the sentinel check: %s", reply);
		return;
	}
	set_state(heal, state, reason);
	if (state == heal->logged)
		return;
	heal->logged = state;
	if (state == HEAL_BUSY)
		CAT_LOG_INFO("REDIS", "another catalyst-cache is rebuilding Redis from the primary");
	else if (state == HEAL_PENDING)
		CAT_LOG_WARN("REDIS",
			     "redis lost data (%s: %s): the next rebuild may start in %lld s "
			     "(CATALYST_CACHE_REBUILD_MIN_INTERVAL_S)",
			     reason_names[reason], reason_texts[reason],
			     (long long)((heal->min_interval_us - (cat_time_mono_us() - heal->last_start_us)) / 1000000));
}

static void *heal_main(void *arg)
{
	cache_heal_t *heal = arg;

	while (!atomic_load(&heal->stop)) {
		int64_t until = cat_time_mono_us() + heal->check_us;

		check(heal);
		while (!atomic_load(&heal->stop) && cat_time_mono_us() < until) {
			struct timespec nap = {0, 50 * 1000 * 1000};

			nanosleep(&nap, NULL);
		}
	}
	return NULL;
}

cat_err_t cache_heal_new(cache_heal_t **out, const cache_store_t *store, char *errstr, size_t errstr_size)
{
	long long check_ms = store->settings.heal_check_ms;
	cache_heal_t *heal;
	cat_redis_opts_t opts;
	cat_redis_t *redis = NULL;
	char host[64] = "";
	cat_err_t err;

	*out = NULL;
	if (check_ms == 0) {
		CAT_LOG_INFO("REDIS", "self-heal off (CATALYST_CACHE_HEAL_CHECK_MS=0)");
		return CAT_OK;
	}
	if (!(heal = calloc(1, sizeof(*heal))))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	heal->check_us = check_ms * 1000;
	heal->min_interval_us = store->settings.rebuild_min_interval_s * 1000000;
	gethostname(host, sizeof(host) - 1);
	snprintf(heal->owner, sizeof(heal->owner), "%s:%ld:%lld", host, (long)getpid(),
		 (long long)(cat_time_now_us() % 1000000000));
	for (int r = 0; r < N_REASONS; r++)
		heal->m_rebuilds[r] = cat_metrics_counter(store->metrics, "catalyst_cache_rebuilds_total",
							  "automatic rebuilds from the primary after Redis lost data, "
							  "by reason (data_lost, restart, unfinished)",
							  "reason", reason_names[r], NULL);
	heal->m_failures = cat_metrics_counter(store->metrics, "catalyst_cache_rebuild_failures_total",
					       "automatic rebuilds that failed (tried again after "
					       "CATALYST_CACHE_REBUILD_MIN_INTERVAL_S)",
					       NULL);
	heal->m_rebuilding = cat_metrics_gauge(store->metrics, "catalyst_cache_rebuilding",
					       "1 while this worker rebuilds Redis from the primary", NULL);

	cat_redis_opts_from_config(&opts, store->cfg, "catalyst-cache-heal");
	if ((err = cat_redis_new(&redis, &opts, errstr, errstr_size)) != CAT_OK ||
	    (err = cache_store_new(&heal->rebuilder, store->cfg, &store->settings, redis, store->metrics, errstr,
				   errstr_size)) != CAT_OK) {
		free(heal);
		return err; /* redis owned by cache_store_new, also when it fails */
	}
	heal->rebuilder->on_chunk = on_chunk;
	heal->rebuilder->on_chunk_arg = heal;
	if (pthread_create(&heal->thread, NULL, heal_main, heal) != 0) {
		cache_store_destroy(heal->rebuilder);
		free(heal);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not start the self-heal thread");
	}
	heal->started = true;
	*out = heal;
	return CAT_OK;
}

void cache_heal_destroy(cache_heal_t *heal)
{
	if (!heal)
		return;
	atomic_store(&heal->stop, true);
	if (heal->started)
		pthread_join(heal->thread, NULL);
	cache_store_destroy(heal->rebuilder);
	free(heal);
}
