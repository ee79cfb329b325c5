/*
 * cat_time: microsecond timestamps and their RFC 3339 text form.
 */
#ifndef CAT_TIME_H
#define CAT_TIME_H

#include <stddef.h>
#include <stdint.h>

#include "cat_err.h"

/* Wall clock, µs since the Unix epoch. */
int64_t cat_time_now_us(void);

/* Monotonic clock, µs; for durations and deadlines. */
int64_t cat_time_mono_us(void);

/* Parses "2026-11-27T14:05:12Z", "2026-11-27T14:05:12.123456+08:00",
 * "2026-11-27 14:05:12.5z" (date, 'T' or ' ', time, up to 9 fraction
 * digits — kept to the µs, zone 'Z' or ±hh:mm). Returns 0, or -1 when the
 * text is not such a timestamp or out of range. */
int cat_time_parse_rfc3339(const char *text, int64_t *out_us) CAT_MUST_CHECK;

/* Formats as "2026-11-27T14:05:12.123456Z" (UTC, always 6 fraction digits);
 * buf needs at least 32 bytes. Returns buf. */
char *cat_time_format_rfc3339(int64_t us, char *buf, size_t buf_size);

#endif /* CAT_TIME_H */
