/*
 * cat_err: error codes and their classes.
 *
 * A common/ function that can fail returns a cat_err_t and fills a caller's
 * `char *errstr, size_t errstr_size` once, where the failure happens. The
 * code says what the caller does next:
 *   CAT_ERR_RETRIABLE  the operation may succeed later (network, timeout,
 *                      serialization failure, 5xx): back off and retry, never skip
 *   CAT_ERR_PERMANENT  this input can never succeed (undecodable, invalid,
 *                      SQLSTATE 22/23): dead-letter it, carry on with the rest
 *   CAT_ERR_FATAL      the process is misconfigured (config, auth, schema):
 *                      report and stop
 */
#ifndef CAT_ERR_H
#define CAT_ERR_H

#include <stdarg.h>
#include <stddef.h>

#define CAT_MUST_CHECK __attribute__((warn_unused_result))
#define CAT_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))

typedef enum cat_err {
	CAT_OK = 0,
	CAT_ERR_RETRIABLE = 1,
	CAT_ERR_PERMANENT = 2,
	CAT_ERR_FATAL = 3,
} cat_err_t;

/* "ok", "retriable", "permanent", "fatal" */
const char *cat_err_name(cat_err_t err);

/* Formats into errstr (always NUL-terminated when errstr_size > 0) and
 * returns err, so that a failure reads `return cat_err_set(...)`. */
cat_err_t cat_err_set(char *errstr, size_t errstr_size, cat_err_t err, const char *fmt, ...)
	CAT_PRINTF(4, 5);

/* Class of a PostgreSQL SQLSTATE (five characters; NULL or "" when the
 * server sent none, e.g. the connection broke: retriable).
 * 08 connection, 40 rollback (serialization, deadlock), 53 resources,
 * 57P01..57P03 shutdown/cannot connect now, 55P03 lock not available,
 * 57014 query canceled (statement timeout): retriable.
 * 22 data exception, 23 integrity constraint violation: permanent.
 * Everything else (28 auth, 3D no database, 42 syntax/undefined object, ...): fatal. */
cat_err_t cat_err_class_sqlstate(const char *sqlstate);

/* Class of an HTTP status code from an object store: 0 (no response), 408,
 * 429, 5xx: retriable; 401/403: fatal (credentials); other 4xx: permanent. */
cat_err_t cat_err_class_http(long status);

#endif /* CAT_ERR_H */
