/*
 * CheckConsistency: the replica's table compared with the primary's.
 *
 *  1. Chunks by primary key: the primary gives the next `chunk` rows after
 *     the previous chunk's last key (their last key, count and the md5 of
 *     their canonical row texts, in key order); the replica computes the
 *     same over the same key range (the last chunk's range is open, so rows
 *     beyond the primary's last key count). The replica's chunk and the
 *     primary's next one are computed at once, one on each server. Reads
 *     are bounded (one chunk each, no long transaction on the primary) and
 *     throttled to max_rows_per_second.
 *  2. A chunk whose count or md5 differs is narrowed down: both sides list
 *     (key, version, md5 of the row text) over its range, merged by key;
 *     the rows that differ are suspects.
 *  3. A suspect may only be in flight: changed on the primary during the
 *     check, its change not yet applied here (the loop waits while the check
 *     runs). So, once CATALYST_SYNC_CHECK_SETTLE_MS have passed since it was
 *     read (time for catalyst-persist to publish what it committed), the
 *     check catches up (pending.c: changes.v1 applied up to its end) and
 *     reads the suspects again on both sides: equal now -> in flight, not
 *     a difference; the primary unchanged since the chunk read -> a
 *     difference; the primary changed since -> another round (at most 3,
 *     then it counts as a difference).
 *  4. Differences: missing (the primary has the row, the replica not),
 *     stale (both, different content), extra (only the replica). With
 *     `repair`, missing and stale rows are written from the primary's
 *     current row with cat_sql's repair statement (it replaces only a row
 *     whose version is not newer: a repair never writes an older version
 *     over a newer one, and a tombstone at least as new stands), and extra
 *     rows are deleted where their version is not newer than the one read.
 *  5. The report goes to events.v1 (kind sync.check.report, subject the
 *     table): chunks, rows compared, missing/stale/extra, repaired, in
 *     flight, duration.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cat_event.h"
#include "cat_log.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "cat_sql.h"
#include "cat_time.h"
#include "sync.h"

#define CONFIRM_ROUNDS 3
#define KEYS_PER_QUERY 2000

typedef struct row_state {
	bool present;
	int64_t version;
	char md5[33];
} row_state_t;

typedef enum diff_kind { DIFF_NONE, DIFF_MISSING, DIFF_STALE, DIFF_EXTRA } diff_kind_t;

typedef struct suspect {
	char *pk;
	row_state_t primary; /* as last read */
	row_state_t replica;
	diff_kind_t diff; /* set once confirmed */
	bool settled;	  /* in flight, or confirmed */
} suspect_t;

typedef struct check {
	sync_t *sync;
	size_t t;
	const cat_sql_table_t *st;
	const char *command_id;
	int chunk;
	int max_rps;
	bool repair;
	int64_t started_us;

	char *q_chunk; /* primary: $1 limit, $2 after key (NULL: from the start), $3 rows per
			* bucket: per bucket its first and last key, count, md5 */
	char *q_bsum;  /* replica: $1 after key, $2 up to key (NULL: open), $3 the buckets'
			* first keys but the first: per bucket (width_bucket) count, md5 */
	char *q_sum;   /* replica: count and md5 over $1, $2 as q_bsum */
	char *q_rows;  /* both: (key, version, md5) of keys > $1, >= $2, < $3, <= $4 (NULL: open) */
	char *q_keys;  /* both: (key, version, md5) of the keys $1 */
	char *q_full;  /* primary: the rows of the keys $1, every column */

	suspect_t *suspects;
	size_t n_suspects, cap_suspects;
	int64_t first_suspect_us;

	long long chunks, chunks_differing, rows_compared, rows_replica;
	long long missing, stale, extra, repaired, in_flight, rounds;
	cat_sql_arrays_t arrays;
} check_t;

static char *printf_alloc(const char *fmt, ...) CAT_PRINTF(1, 2);

static char *printf_alloc(const char *fmt, ...)
{
	va_list ap;
	char *out = NULL;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || !(out = malloc((size_t)n + 1)))
		return NULL;
	va_start(ap, fmt);
	vsnprintf(out, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return out;
}

/* Names come from the compiled-in schema only (cat_sql checked them). */
static int build_queries(check_t *c)
{
	const char *name = c->st->table->name, *pk = c->st->table->primary_key, *rt = c->st->row_text;

	c->q_chunk = printf_alloc(
		"SELECT min(b.k), max(b.k), count(*), md5(string_agg(b.r, E'\\n' ORDER BY b.k))\n"
		"FROM (SELECT s.k, s.r, (row_number() OVER (ORDER BY s.k) - 1) / $3::int AS g\n"
		"      FROM (SELECT t.%s AS k, %s AS r FROM %s AS t\n"
		"            WHERE ($2::text IS NULL OR t.%s > $2) ORDER BY t.%s LIMIT $1::bigint) AS s) AS "
		"b\n"
		"GROUP BY b.g ORDER BY b.g",
		pk, rt, name, pk, pk);
	c->q_bsum = printf_alloc(
		"SELECT width_bucket(t.%s, $3::text[]), count(*), md5(string_agg(%s, E'\\n' ORDER BY t.%s))\n"
		"FROM %s AS t WHERE ($1::text IS NULL OR t.%s > $1) AND ($2::text IS NULL OR t.%s <= $2)\n"
		"GROUP BY 1 ORDER BY 1",
		pk, rt, pk, name, pk, pk);
	c->q_sum = printf_alloc("SELECT count(*), md5(string_agg(%s, E'\\n' ORDER BY t.%s)) FROM %s AS t\n"
				"WHERE ($1::text IS NULL OR t.%s > $1) AND ($2::text IS NULL OR t.%s <= $2)",
				rt, pk, name, pk, pk);
	c->q_rows =
		printf_alloc("SELECT t.%s, t.version, md5(%s) FROM %s AS t\n"
			     "WHERE ($1::text IS NULL OR t.%s > $1) AND ($2::text IS NULL OR t.%s >= $2)\n"
			     "  AND ($3::text IS NULL OR t.%s < $3) AND ($4::text IS NULL OR t.%s <= $4)\n"
			     "ORDER BY t.%s COLLATE \"C\"",
			     pk, rt, name, pk, pk, pk, pk, pk);
	c->q_keys = printf_alloc("SELECT t.%s, t.version, md5(%s) FROM %s AS t WHERE t.%s = ANY ($1::text[])",
				 pk, rt, name, pk);
	c->q_full = printf_alloc("SELECT %s FROM %s AS t WHERE t.%s = ANY ($1::text[])", c->st->columns, name,
				 pk);
	return c->q_chunk && c->q_bsum && c->q_sum && c->q_rows && c->q_keys && c->q_full ? 0 : -1;
}

static void check_free(check_t *c)
{
	for (size_t i = 0; i < c->n_suspects; i++)
		free(c->suspects[i].pk);
	free(c->suspects);
	free(c->q_chunk);
	free(c->q_sum);
	free(c->q_bsum);
	free(c->q_rows);
	free(c->q_keys);
	free(c->q_full);
	cat_sql_arrays_free(&c->arrays);
}

/* --- asynchronous statements, one per server at a time -------------------------------------- */

static cat_err_t send_query(PGconn *conn, const char *what, const char *sql, int nparams,
			    const char *const *params, char *errstr, size_t errstr_size)
{
	if (PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) == 1)
		return CAT_OK;
	return cat_err_set(errstr, errstr_size, cat_pg_error_class(conn, NULL),
			   "could not send the %s query: %s", what, PQerrorMessage(conn));
}

/* The result of the statement sent on conn (the caller PQclears *out). */
static cat_err_t get_result(PGconn *conn, const char *what, PGresult **out, char *errstr, size_t errstr_size)
{
	PGresult *res, *first = NULL;
	cat_err_t err = CAT_OK;

	*out = NULL;
	while ((res = PQgetResult(conn))) {
		if (!first)
			first = res;
		else
			PQclear(res);
	}
	if (!first || PQresultStatus(first) != PGRES_TUPLES_OK) {
		char action[96];

		snprintf(action, sizeof(action), "execute the %s query", what);
		err = cat_pg_result_error(conn, first, action, errstr, errstr_size);
		PQclear(first);
		return err;
	}
	*out = first;
	return CAT_OK;
}

/* --- suspects ------------------------------------------------------------------------------- */

static void state_from(row_state_t *state, const PGresult *res, int row)
{
	state->present = true;
	state->version = strtoll(PQgetvalue(res, row, 1), NULL, 10);
	snprintf(state->md5, sizeof(state->md5), "%s", PQgetvalue(res, row, 2));
}

static bool same_state(const row_state_t *a, const row_state_t *b)
{
	return a->present == b->present && (!a->present || strcmp(a->md5, b->md5) == 0);
}

static cat_err_t add_suspect(check_t *c, const char *pk, const row_state_t *p, const row_state_t *r,
			     char *errstr, size_t errstr_size)
{
	if (c->n_suspects == c->cap_suspects) {
		size_t cap = c->cap_suspects ? c->cap_suspects * 2 : 256;
		suspect_t *grown = realloc(c->suspects, cap * sizeof(*grown));

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		c->suspects = grown;
		c->cap_suspects = cap;
	}
	if (c->n_suspects == 0)
		c->first_suspect_us = cat_time_mono_us();
	c->suspects[c->n_suspects] = (suspect_t){.pk = strdup(pk), .primary = *p, .replica = *r};
	if (!c->suspects[c->n_suspects].pk)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	c->n_suspects++;
	return CAT_OK;
}

/* Merges both sides' (key, version, md5) lists of one range. */
static cat_err_t narrow(check_t *c, const char *gt, const char *ge, const char *lt, const char *le,
			char *errstr, size_t errstr_size)
{
	sync_t *sync = c->sync;
	const char *params[4] = {gt, ge, lt, le};
	PGresult *pres = NULL, *rres = NULL;
	int i = 0, j = 0, np, nr;
	cat_err_t err;

	if ((err = send_query(sync->primary, "rows", c->q_rows, 4, params, errstr, errstr_size)) != CAT_OK ||
	    (err = send_query(sync->replica, "rows", c->q_rows, 4, params, errstr, errstr_size)) != CAT_OK)
		return err;
	/* on failure the other statement may still run: the caller drops both connections */
	if ((err = get_result(sync->primary, "primary rows", &pres, errstr, errstr_size)) != CAT_OK ||
	    (err = get_result(sync->replica, "replica rows", &rres, errstr, errstr_size)) != CAT_OK)
		goto out;
	np = PQntuples(pres);
	nr = PQntuples(rres);
	while ((i < np || j < nr) && err == CAT_OK) {
		int cmp = i >= np ? 1 : j >= nr ? -1 : strcmp(PQgetvalue(pres, i, 0), PQgetvalue(rres, j, 0));
		row_state_t p = {0}, r = {0};
		const char *pk;

		if (cmp <= 0)
			state_from(&p, pres, i);
		if (cmp >= 0)
			state_from(&r, rres, j);
		pk = cmp <= 0 ? PQgetvalue(pres, i, 0) : PQgetvalue(rres, j, 0);
		if (!same_state(&p, &r))
			err = add_suspect(c, pk, &p, &r, errstr, errstr_size);
		if (cmp <= 0)
			i++;
		if (cmp >= 0)
			j++;
	}
out:
	PQclear(pres);
	PQclear(rres);
	return err;
}

static int suspect_cmp(const void *a, const void *b)
{
	return strcmp(((const suspect_t *)a)->pk, ((const suspect_t *)b)->pk);
}

static suspect_t *suspect_find(check_t *c, const char *pk)
{
	suspect_t key = {.pk = (char *)pk};

	return bsearch(&key, c->suspects, c->n_suspects, sizeof(*c->suspects), suspect_cmp);
}

/* Reads the current state of the unsettled suspects on `conn` into *side
 * (primary or replica member). */
static cat_err_t read_states(check_t *c, PGconn *conn, bool primary, char *errstr, size_t errstr_size)
{
	static const cat_col_type_t types[] = {CAT_COL_TEXT};
	size_t i = 0;
	cat_err_t err;

	for (size_t k = 0; k < c->n_suspects; k++)
		if (!c->suspects[k].settled)
			(primary ? &c->suspects[k].primary : &c->suspects[k].replica)->present = false;
	while (i < c->n_suspects) {
		PGresult *res = NULL;
		size_t n = 0;

		if ((err = cat_sql_arrays_begin(&c->arrays, 1, types)) != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "out of memory");
		for (; i < c->n_suspects && n < KEYS_PER_QUERY; i++)
			if (!c->suspects[i].settled) {
				if ((err = cat_sql_arrays_add_text(&c->arrays, 0, c->suspects[i].pk)) !=
				    CAT_OK)
					return cat_err_set(errstr, errstr_size, err, "out of memory");
				n++;
			}
		if (n == 0)
			break;
		cat_sql_arrays_finish(&c->arrays);
		if ((err = cat_sql_exec(conn, "SELECT", c->q_keys, &c->arrays, &res, errstr, errstr_size)) !=
		    CAT_OK)
			return err;
		for (int r = 0; r < PQntuples(res); r++) {
			suspect_t *s = suspect_find(c, PQgetvalue(res, r, 0));

			if (s && !s->settled)
				state_from(primary ? &s->primary : &s->replica, res, r);
		}
		PQclear(res);
	}
	return CAT_OK;
}

static diff_kind_t classify(const suspect_t *s)
{
	if (s->primary.present && !s->replica.present)
		return DIFF_MISSING;
	if (!s->primary.present && s->replica.present)
		return DIFF_EXTRA;
	return DIFF_STALE;
}

static void sleep_until_mono(int64_t until_us)
{
	int64_t left = until_us - cat_time_mono_us();

	if (left > 0) {
		struct timespec ts = {(time_t)(left / 1000000), (long)(left % 1000000) * 1000};

		nanosleep(&ts, NULL);
	}
}

/* Writes the primary's current rows of the missing and stale suspects and
 * deletes the extra ones, in one replica transaction. */
static cat_err_t repair(check_t *c, char *errstr, size_t errstr_size)
{
	static const cat_col_type_t key_types[] = {CAT_COL_TEXT}, del_types[] = {CAT_COL_TEXT, CAT_COL_INT64};
	sync_t *sync = c->sync;
	const cat_sql_table_t *st = c->st;
	size_t n_cols = st->table->n_columns;
	PGresult *rows = NULL, *res = NULL;
	size_t n_upserts = 0, n_deletes = 0;
	cat_err_t err;

	for (size_t i = 0; i < c->n_suspects; i++) {
		n_upserts += c->suspects[i].diff == DIFF_MISSING || c->suspects[i].diff == DIFF_STALE;
		n_deletes += c->suspects[i].diff == DIFF_EXTRA;
	}
	if (n_upserts + n_deletes == 0)
		return CAT_OK;
	if ((err = cat_pg_begin(sync->replica, errstr, errstr_size)) != CAT_OK)
		return err;
	if (n_upserts > 0) {
		if ((err = cat_sql_arrays_begin(&c->arrays, 1, key_types)) != CAT_OK)
			goto nomem;
		for (size_t i = 0; i < c->n_suspects; i++)
			if ((c->suspects[i].diff == DIFF_MISSING || c->suspects[i].diff == DIFF_STALE) &&
			    (err = cat_sql_arrays_add_text(&c->arrays, 0, c->suspects[i].pk)) != CAT_OK)
				goto nomem;
		cat_sql_arrays_finish(&c->arrays);
		/* the primary's rows as they are now, in binary: the arrays' element form */
		if ((err = cat_sql_exec_result(sync->primary, "SELECT", c->q_full, &c->arrays, 1, &rows,
					       errstr, errstr_size)) != CAT_OK)
			goto error;
		if ((err = cat_sql_arrays_begin(&c->arrays, n_cols, st->types)) != CAT_OK)
			goto nomem;
		for (int r = 0; r < PQntuples(rows); r++)
			for (size_t col = 0; col < n_cols; col++)
				if ((err = cat_sql_arrays_add_binary(
					     &c->arrays, col,
					     PQgetisnull(rows, r, (int)col) ? NULL
									    : PQgetvalue(rows, r, (int)col),
					     (size_t)PQgetlength(rows, r, (int)col))) != CAT_OK)
					goto nomem;
		cat_sql_arrays_finish(&c->arrays);
		if ((err = cat_sql_exec(sync->replica, "INSERT", st->repair, &c->arrays, &res, errstr,
					errstr_size)) != CAT_OK)
			goto error;
		c->repaired += PQntuples(res);
		PQclear(res);
		res = NULL;
	}
	if (n_deletes > 0) {
		if ((err = cat_sql_arrays_begin(&c->arrays, 2, del_types)) != CAT_OK)
			goto nomem;
		for (size_t i = 0; i < c->n_suspects; i++)
			if (c->suspects[i].diff == DIFF_EXTRA &&
			    ((err = cat_sql_arrays_add_text(&c->arrays, 0, c->suspects[i].pk)) != CAT_OK ||
			     (err = cat_sql_arrays_add_int64(&c->arrays, 1,
							     c->suspects[i].replica.version)) != CAT_OK))
				goto nomem;
		cat_sql_arrays_finish(&c->arrays);
		if ((err = cat_sql_exec(sync->replica, "DELETE", st->remove_extra, &c->arrays, &res, errstr,
					errstr_size)) != CAT_OK)
			goto error;
		c->repaired += PQntuples(res);
		PQclear(res);
		res = NULL;
	}
	PQclear(rows);
	return cat_pg_commit(sync->replica, errstr, errstr_size);

nomem:
	err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
error:
	PQclear(rows);
	sync_after_failure(sync, &sync->replica);
	return err;
}

/* Settles every suspect (in flight or a difference), repairs, forgets them. */
static cat_err_t confirm(check_t *c, char *errstr, size_t errstr_size)
{
	sync_t *sync = c->sync;
	size_t unsettled = c->n_suspects;
	cat_err_t err;

	if (c->n_suspects == 0)
		return CAT_OK;
	qsort(c->suspects, c->n_suspects, sizeof(*c->suspects), suspect_cmp);
	for (int round = 1; unsettled > 0; round++) {
		sleep_until_mono(c->first_suspect_us + sync->settings.check_settle_ms * 1000);
		c->rounds++;
		if ((err = sync_catch_up(sync, errstr, errstr_size)) != CAT_OK)
			return err;
		if ((err = sync_ensure_replica(sync, errstr, errstr_size)) != CAT_OK)
			return err;
		for (size_t i = 0; i < c->n_suspects; i++)
			if (!c->suspects[i].settled)
				c->suspects[i].replica.present = false;
		{
			/* the primary's state is compared with what the chunk read */
			row_state_t *before = malloc(c->n_suspects * sizeof(*before));

			if (!before)
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
			for (size_t i = 0; i < c->n_suspects; i++)
				before[i] = c->suspects[i].primary;
			err = read_states(c, sync->primary, true, errstr, errstr_size);
			if (err == CAT_OK)
				err = read_states(c, sync->replica, false, errstr, errstr_size);
			if (err != CAT_OK) {
				free(before);
				return err;
			}
			c->first_suspect_us = cat_time_mono_us();
			for (size_t i = 0; i < c->n_suspects; i++) {
				suspect_t *s = &c->suspects[i];

				if (s->settled)
					continue;
				if (same_state(&s->primary, &s->replica)) {
					s->settled = true; /* its change was in flight */
					c->in_flight++;
				} else if (same_state(&s->primary, &before[i]) || round == CONFIRM_ROUNDS) {
					s->settled = true;
					s->diff = classify(s);
				} else {
					continue; /* changed on the primary meanwhile: again */
				}
				unsettled--;
			}
			free(before);
		}
	}
	for (size_t i = 0; i < c->n_suspects; i++) {
		c->missing += c->suspects[i].diff == DIFF_MISSING;
		c->stale += c->suspects[i].diff == DIFF_STALE;
		c->extra += c->suspects[i].diff == DIFF_EXTRA;
	}
	if (c->repair && (err = repair(c, errstr, errstr_size)) != CAT_OK)
		return err;
	for (size_t i = 0; i < c->n_suspects; i++)
		free(c->suspects[i].pk);
	c->n_suspects = 0;
	return CAT_OK;
}

/* --- the walk ------------------------------------------------------------------------------- */

static cat_err_t same_collation(sync_t *sync, char *errstr, size_t errstr_size)
{
	static const char sql[] = "SELECT datcollate FROM pg_database WHERE datname = current_database()";
	PGresult *p = NULL, *r = NULL;
	cat_err_t err;

	if ((err = cat_pg_exec(sync->primary, sql, 0, NULL, &p, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = cat_pg_exec(sync->replica, sql, 0, NULL, &r, errstr, errstr_size)) != CAT_OK) {
		PQclear(p);
		return err;
	}
	if (PQntuples(p) != 1 || PQntuples(r) != 1 || strcmp(PQgetvalue(p, 0, 0), PQgetvalue(r, 0, 0)) != 0)
		err = cat_err_set(
			errstr, errstr_size, CAT_ERR_PERMANENT,
			"the primary's collation (%s) and the replica's (%s) differ: keys would not "
			"order alike",
			PQntuples(p) == 1 ? PQgetvalue(p, 0, 0) : "?",
			PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "?");
	PQclear(p);
	PQclear(r);
	return err;
}

static void throttle(const check_t *c)
{
	if (c->max_rps > 0)
		sleep_until_mono(c->started_us + c->rows_compared * 1000000LL / c->max_rps);
}

/* A text[] literal of the first keys of buckets 1.. of the chunk `res`. */
static char *thresholds(const PGresult *res)
{
	size_t len = 3;
	char *out, *o;

	for (int b = 1; b < PQntuples(res); b++)
		len += 2 * strlen(PQgetvalue(res, b, 0)) + 3;
	if (!(o = out = malloc(len)))
		return NULL;
	*o++ = '{';
	for (int b = 1; b < PQntuples(res); b++) {
		if (b > 1)
			*o++ = ',';
		*o++ = '"';
		for (const char *k = PQgetvalue(res, b, 0); *k; k++) {
			if (*k == '"' || *k == '\\')
				*o++ = '\\';
			*o++ = *k;
		}
		*o++ = '"';
	}
	*o++ = '}';
	*o = '\0';
	return out;
}

/* Compares the primary's buckets `p` with the replica's `r` over (lo, hi]
 * and narrows each differing bucket down to its rows. */
static cat_err_t compare_buckets(check_t *c, const PGresult *p, const PGresult *r, const char *lo,
				 const char *hi, bool *differs, char *errstr, size_t errstr_size)
{
	int n_buckets = PQntuples(p), j = 0;
	cat_err_t err = CAT_OK;

	*differs = false;
	if (n_buckets == 0) { /* past the primary's last key: whatever the replica holds is extra */
		c->rows_replica += strtoll(PQgetvalue(r, 0, 0), NULL, 10);
		if (strtoll(PQgetvalue(r, 0, 0), NULL, 10) > 0) {
			*differs = true;
			return narrow(c, lo, NULL, NULL, hi, errstr, errstr_size);
		}
		return CAT_OK;
	}
	for (int b = 0; b < n_buckets && err == CAT_OK; b++) {
		const char *r_count = "0", *r_md5 = "";

		while (j < PQntuples(r) && atoi(PQgetvalue(r, j, 0)) < b)
			j++;
		if (j < PQntuples(r) && atoi(PQgetvalue(r, j, 0)) == b) {
			r_count = PQgetvalue(r, j, 1);
			r_md5 = PQgetvalue(r, j, 2);
			c->rows_replica += strtoll(r_count, NULL, 10);
		}
		if (strcmp(PQgetvalue(p, b, 2), r_count) == 0 && strcmp(PQgetvalue(p, b, 3), r_md5) == 0)
			continue;
		*differs = true;
		err = narrow(c, b == 0 ? lo : NULL, b == 0 ? NULL : PQgetvalue(p, b, 0),
			     b + 1 < n_buckets ? PQgetvalue(p, b + 1, 0) : NULL,
			     b + 1 < n_buckets ? NULL : hi, errstr, errstr_size);
	}
	return err;
}

static cat_err_t walk(check_t *c, char *errstr, size_t errstr_size)
{
	sync_t *sync = c->sync;
	char limit[32], bucket[32], *lo = NULL, *hi = NULL, *th = NULL;
	PGresult *cur = NULL, *next = NULL, *rres = NULL;
	cat_err_t err;

	snprintf(limit, sizeof(limit), "%d", c->chunk);
	snprintf(bucket, sizeof(bucket), "%d", c->chunk / 100 > 0 ? c->chunk / 100 : 1);
	{
		const char *params[3] = {limit, NULL, bucket};

		if ((err = send_query(sync->primary, "chunk", c->q_chunk, 3, params, errstr, errstr_size)) !=
		    CAT_OK)
			return err;
	}
	for (;;) {
		long long p_count = 0;
		int n_buckets;
		bool last, differs;

		if (!cur &&
		    (err = get_result(sync->primary, "primary chunk", &cur, errstr, errstr_size)) != CAT_OK)
			goto out;
		n_buckets = PQntuples(cur);
		for (int b = 0; b < n_buckets; b++)
			p_count += strtoll(PQgetvalue(cur, b, 2), NULL, 10);
		last = p_count < c->chunk;
		free(hi);
		hi = last ? NULL : strdup(PQgetvalue(cur, n_buckets - 1, 1));
		free(th);
		th = thresholds(cur);
		if ((!last && !hi) || !th) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
			goto out;
		}
		{
			const char *rparams[3] = {lo, hi, th}, *pparams[3] = {limit, hi, bucket};

			if ((err = n_buckets > 0 ? send_query(sync->replica, "sum", c->q_bsum, 3, rparams,
							      errstr, errstr_size)
						 : send_query(sync->replica, "sum", c->q_sum, 2, rparams,
							      errstr, errstr_size)) != CAT_OK)
				goto out;
			/* the primary computes its next chunk meanwhile */
			if (!last && (err = send_query(sync->primary, "chunk", c->q_chunk, 3, pparams, errstr,
						       errstr_size)) != CAT_OK)
				goto out;
		}
		if ((err = get_result(sync->replica, "replica sum", &rres, errstr, errstr_size)) != CAT_OK)
			goto out;
		/* the next chunk's result first, if narrowing needs the primary's connection */
		differs = n_buckets == 0 ? strtoll(PQgetvalue(rres, 0, 0), NULL, 10) > 0
					 : PQntuples(rres) != n_buckets;
		for (int b = 0; !differs && b < n_buckets; b++)
			differs = strcmp(PQgetvalue(cur, b, 2), PQgetvalue(rres, b, 1)) != 0 ||
				  strcmp(PQgetvalue(cur, b, 3), PQgetvalue(rres, b, 2)) != 0;
		if (differs && !last &&
		    (err = get_result(sync->primary, "primary chunk", &next, errstr, errstr_size)) != CAT_OK)
			goto out;
		c->chunks++;
		c->rows_compared += p_count;
		if (differs) {
			c->chunks_differing++;
			if ((err = compare_buckets(c, cur, rres, lo, hi, &differs, errstr, errstr_size)) !=
			    CAT_OK)
				goto out;
			if (c->n_suspects >= (size_t)sync->settings.check_max_suspects &&
			    (err = confirm(c, errstr, errstr_size)) != CAT_OK)
				goto out;
		} else {
			for (int b = 0; b < PQntuples(rres); b++)
				c->rows_replica +=
					strtoll(PQgetvalue(rres, b, n_buckets == 0 ? 0 : 1), NULL, 10);
		}
		PQclear(rres);
		rres = NULL;
		PQclear(cur);
		cur = next;
		next = NULL;
		if (last)
			break;
		free(lo);
		lo = hi;
		hi = NULL;
		throttle(c);
	}
	err = confirm(c, errstr, errstr_size);
out:
	PQclear(cur);
	PQclear(next);
	PQclear(rres);
	free(lo);
	free(hi);
	free(th);
	return err;
}

/* --- the command --------------------------------------------------------------------------- */

static cat_err_t publish_report(check_t *c, char *errstr, size_t errstr_size)
{
	sync_t *sync = c->sync;
	long long differences = c->missing + c->stale + c->extra;
	long long duration_ms = (cat_time_mono_us() - c->started_us) / 1000;
	bool ok = differences == 0 || (c->repair && c->repaired == differences);
	char message[256];
	const cat_event_attr_t attrs[] = {
		{"replica", sync->settings.replica_name},
		{"table", c->st->table->name},
		{"repair", c->repair ? "true" : "false"},
	};
	const cat_event_counter_t counters[] = {
		{"chunks", c->chunks},
		{"chunks_differing", c->chunks_differing},
		{"chunk_size", c->chunk},
		{"rows_compared", c->rows_compared},
		{"rows_replica", c->rows_replica},
		{"rows_missing", c->missing},
		{"rows_stale", c->stale},
		{"rows_extra", c->extra},
		{"rows_repaired", c->repaired},
		{"rows_in_flight", c->in_flight},
		{"confirm_rounds", c->rounds},
		{"duration_ms", duration_ms},
	};
	cat_event_t event = {
		.kind = "sync.check.report",
		.subject = c->st->table->name,
		.command_id = c->command_id,
		.ok = ok,
		.message = message,
		.attrs = attrs,
		.n_attrs = sizeof(attrs) / sizeof(attrs[0]),
		.counters = counters,
		.n_counters = sizeof(counters) / sizeof(counters[0]),
	};

	snprintf(message, sizeof(message),
		 "%s on %s: %lld rows compared, %lld missing, %lld stale, %lld extra, %lld repaired, %lld in "
		 "flight",
		 c->st->table->name, sync->settings.replica_name, c->rows_compared, c->missing, c->stale,
		 c->extra, c->repaired, c->in_flight);
	CAT_LOG_INFO("CHECK", "%s (%lld ms)", message, duration_ms);
	cat_metrics_inc(sync->m_checks[differences == 0]);
	cat_metrics_add(sync->m_check_rows, c->rows_compared);
	cat_metrics_add(sync->m_check_repaired, c->repaired);
	cat_metrics_observe(sync->m_check_seconds, (double)duration_ms / 1000);
	cat_metrics_set(sync->m_tables[c->t].rows_diff, differences);
	return cat_event_publish(sync->events, sync->events_topic, SYNC_WORKER, &event,
				 (int)sync->settings.events_timeout_ms, errstr, errstr_size);
}

cat_err_t sync_check(sync_t *sync, const Catalyst__V1__SyncCommand__CheckConsistency *cmd,
		     const char *command_id, char *errstr, size_t errstr_size)
{
	const cat_table_t *table = cat_schema_table(cmd->table);
	check_t c = {0};
	cat_err_t err;

	c.sync = sync;
	c.t = (size_t)(table - cat_schema_tables);
	c.st = cat_apply_sql(sync->apply, c.t);
	c.command_id = command_id;
	c.chunk = cmd->has_chunk_size && cmd->chunk_size > 0 ? cmd->chunk_size
							     : (int)sync->settings.check_chunk_size;
	c.max_rps = cmd->has_max_rows_per_second ? cmd->max_rows_per_second : 0;
	c.repair = cmd->has_repair && cmd->repair;
	c.started_us = cat_time_mono_us();
	if (build_queries(&c)) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		goto out;
	}
	CAT_LOG_INFO("CHECK", "checking %s on %s: chunks of %d rows%s%s", table->name,
		     sync->settings.replica_name, c.chunk, c.repair ? ", repairing" : "",
		     c.max_rps > 0 ? ", throttled" : "");
	if ((err = sync_ensure_primary(sync, errstr, errstr_size)) != CAT_OK ||
	    (err = sync_ensure_replica(sync, errstr, errstr_size)) != CAT_OK ||
	    (err = same_collation(sync, errstr, errstr_size)) != CAT_OK)
		goto out;
	if ((err = walk(&c, errstr, errstr_size)) != CAT_OK)
		goto out;
	err = publish_report(&c, errstr, errstr_size);

out:
	if (err != CAT_OK && err != CAT_ERR_PERMANENT) {
		/* a statement may still be running on either connection */
		sync_after_failure(sync, &sync->primary);
		sync_after_failure(sync, &sync->replica);
	}
	check_free(&c);
	return err;
}
