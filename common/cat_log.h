/*
 * cat_log: one JSON object per line on stderr.
 *
 *   {"ts":"2026-11-27T14:05:12.123456Z","level":"error","program":"catalyst-persist",
 *    "fac":"PG","msg":"could not commit batch: server closed the connection"}
 *
 * Messages are lower-case, without a trailing period, and never contain
 * secrets. Extra fields (topic, partition, offset, ...) go through
 * cat_log_kv().
 */
#ifndef CAT_LOG_H
#define CAT_LOG_H

#include <stdio.h>

#include "cat_err.h"

typedef enum cat_log_level {
	CAT_LOG_LEVEL_DEBUG = 0,
	CAT_LOG_LEVEL_INFO = 1,
	CAT_LOG_LEVEL_WARN = 2,
	CAT_LOG_LEVEL_ERROR = 3,
} cat_log_level_t;

/* Program name for every line, and the lowest level written. */
void cat_log_init(const char *program, cat_log_level_t min_level);

/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int cat_log_level_parse(const char *name);

/* Where lines go (default stderr); for tests. */
void cat_log_set_stream(FILE *stream);

void cat_log_write(cat_log_level_t level, const char *fac, const char *fmt, ...) CAT_PRINTF(3, 4);

/* As cat_log_write, with extra fields: `fields` is a jansson json_t object
 * (declared void here so the header stands alone), borrowed, may be NULL. */
void cat_log_kv(cat_log_level_t level, const char *fac, const void *fields, const char *fmt, ...)
	CAT_PRINTF(4, 5);

#define CAT_LOG_DEBUG(fac, ...) cat_log_write(CAT_LOG_LEVEL_DEBUG, fac, __VA_ARGS__)
#define CAT_LOG_INFO(fac, ...) cat_log_write(CAT_LOG_LEVEL_INFO, fac, __VA_ARGS__)
#define CAT_LOG_WARN(fac, ...) cat_log_write(CAT_LOG_LEVEL_WARN, fac, __VA_ARGS__)
#define CAT_LOG_ERROR(fac, ...) cat_log_write(CAT_LOG_LEVEL_ERROR, fac, __VA_ARGS__)

#endif /* CAT_LOG_H */
