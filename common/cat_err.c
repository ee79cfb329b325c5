#include "cat_err.h"

#include <stdio.h>
#include <string.h>

const char *cat_err_name(cat_err_t err)
{
	switch (err) {
	case CAT_OK:
		return "ok";
	case CAT_ERR_RETRIABLE:
		return "retriable";
	case CAT_ERR_PERMANENT:
		return "permanent";
	case CAT_ERR_FATAL:
		return "fatal";
	}
	return "unknown";
}

cat_err_t cat_err_set(char *errstr, size_t errstr_size, cat_err_t err, const char *fmt, ...)
{
	va_list ap;

	if (errstr && errstr_size > 0) {
		va_start(ap, fmt);
		vsnprintf(errstr, errstr_size, fmt, ap);
		va_end(ap);
	}
	return err;
}

cat_err_t cat_err_class_sqlstate(const char *sqlstate)
{
	static const char *const retriable_exact[] = {
		"57P01", /* admin_shutdown */
		"57P02", /* crash_shutdown */
		"57P03", /* cannot_connect_now */
		"55P03", /* lock_not_available */
		"57014", /* query_canceled (statement_timeout) */
	};

	if (!sqlstate || strlen(sqlstate) != 5)
		return CAT_ERR_RETRIABLE;
	for (size_t i = 0; i < sizeof(retriable_exact) / sizeof(retriable_exact[0]); i++)
		if (strcmp(sqlstate, retriable_exact[i]) == 0)
			return CAT_ERR_RETRIABLE;
	if (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "40", 2) == 0 ||
	    strncmp(sqlstate, "53", 2) == 0)
		return CAT_ERR_RETRIABLE;
	if (strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0)
		return CAT_ERR_PERMANENT;
	return CAT_ERR_FATAL;
}

cat_err_t cat_err_class_http(long status)
{
	if (status == 0 || status == 408 || status == 429 || (status >= 500 && status <= 599))
		return CAT_ERR_RETRIABLE;
	if (status == 401 || status == 403)
		return CAT_ERR_FATAL;
	if (status >= 400 && status <= 499)
		return CAT_ERR_PERMANENT;
	return CAT_OK;
}
