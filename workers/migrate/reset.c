/*
 * catalyst-migrate reset-version TABLE KEY VERSION: the operator's way out of
 * a row frozen by a version far in the future (a producer that sent
 * 9223372036854775807, say). Version checks never lower a version, repair
 * included, so nothing the fleet does on its own can; this sets the row's
 * version (and its tombstone's, when it has one above it) to VERSION on the
 * database CATALYST_PG_URL names, in one transaction. Run it on the primary
 * and on every replica, then drop the cached key (catalyst-publish cache
 * delete ...): the next write newer than VERSION applies everywhere.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cat_log.h"
#include "cat_pg.h"
#include "cat_schema.h"
#include "migrate.h"

bool migrate_parse_version(const char *text, int64_t *version)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(text ? text : "", &end, 10);
	if (errno || !text || end == text || *end || v < 1)
		return false;
	*version = (int64_t)v;
	return true;
}

int migrate_cmd_reset_version(const migrate_opts_t *opts, const char *table_name, const char *key, int64_t version)
{
	const cat_table_t *table = cat_schema_table(table_name);
	char sql_row[256], sql_tomb[256], version_text[32], errstr[512];
	const char *params[3];
	PGresult *row = NULL, *tomb = NULL;
	PGconn *conn = NULL;
	int rc = 1;

	if (!table) {
		fprintf(stderr, "catalyst-migrate: reset-version: unknown table %s\n", table_name);
		return 2;
	}
	/* names from the compiled-in schema only; values as parameters */
	snprintf(sql_row, sizeof(sql_row),
		 "WITH old AS (SELECT version FROM %s WHERE %s = $1 FOR UPDATE) "
		 "UPDATE %s AS t SET version = $2 FROM old WHERE t.%s = $1 RETURNING old.version",
		 table->name, table->primary_key, table->name, table->primary_key);
	snprintf(sql_tomb, sizeof(sql_tomb),
		 "WITH old AS (SELECT version FROM row_tombstones WHERE table_name = $1 AND pk = $2 FOR UPDATE) "
		 "UPDATE row_tombstones AS r SET version = $3 FROM old WHERE r.table_name = $1 AND r.pk = $2 "
		 "AND r.version > $3 RETURNING old.version");
	snprintf(version_text, sizeof(version_text), "%" PRId64, version);

	if (cat_pg_connect(&conn, opts->pg_url, opts->app_name, opts->connect_timeout_s, errstr, sizeof(errstr)) !=
		    CAT_OK ||
	    cat_pg_begin(conn, errstr, sizeof(errstr)) != CAT_OK)
		goto error;
	params[0] = key;
	params[1] = version_text;
	if (cat_pg_exec(conn, sql_row, 2, params, &row, errstr, sizeof(errstr)) != CAT_OK)
		goto error;
	params[0] = table->name;
	params[1] = key;
	params[2] = version_text;
	if (cat_pg_exec(conn, sql_tomb, 3, params, &tomb, errstr, sizeof(errstr)) != CAT_OK ||
	    cat_pg_commit(conn, errstr, sizeof(errstr)) != CAT_OK)
		goto error;
	if (PQntuples(row) == 0 && PQntuples(tomb) == 0) {
		printf("%s %s: no row and no tombstone above version %s: nothing to reset\n", table->name, key,
		       version_text);
	} else {
		if (PQntuples(row) > 0)
			printf("%s %s: row version %s -> %s\n", table->name, key, PQgetvalue(row, 0, 0),
			       version_text);
		if (PQntuples(tomb) > 0)
			printf("%s %s: tombstone version %s -> %s\n", table->name, key, PQgetvalue(tomb, 0, 0),
			       version_text);
	}
	rc = 0;
	goto out;

error:
	CAT_LOG_ERROR("MIGRATE", "reset-version %s %s: %s", table_name, key, errstr);
	if (conn)
		cat_pg_rollback(conn, errstr, sizeof(errstr));
out:
	PQclear(row);
	PQclear(tomb);
	cat_pg_close(conn);
	return rc;
}
