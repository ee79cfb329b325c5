/*
 * catalyst-sync's PostgreSQL sessions as the loop uses them: the replica's
 * and the primary's (cat_pg_session_t, made by sync_new), their current
 * connections kept in sync->replica and sync->primary for the statements
 * of apply.c, check.c and resync.c.
 *
 * Only the loop's thread calls these; the monitor has sessions of its own.
 */
#include "cat_pg.h"
#include "sync.h"

cat_err_t sync_ensure_replica(sync_t *sync, char *errstr, size_t errstr_size)
{
	return cat_pg_session_ensure(sync->replica_pg, &sync->replica, errstr, errstr_size);
}

cat_err_t sync_ensure_primary(sync_t *sync, char *errstr, size_t errstr_size)
{
	return cat_pg_session_ensure(sync->primary_pg, &sync->primary, errstr, errstr_size);
}

void sync_after_failure(sync_t *sync, PGconn **side)
{
	cat_pg_session_t *session = side == &sync->primary ? sync->primary_pg : sync->replica_pg;

	cat_pg_session_failed(session);
	*side = cat_pg_session_conn(session);
}
