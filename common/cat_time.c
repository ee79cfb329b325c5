#include "cat_time.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t cat_time_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t cat_time_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/* Reads exactly n digits. */
static int read_digits(const char **p, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)(*p)[i]))
			return -1;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

static int is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int cat_time_parse_rfc3339(const char *text, int64_t *out_us)
{
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	const char *p = text;
	int year, mon, day, hour, min, sec, frac_us = 0, off_min = 0;

	if (!text)
		return -1;
	if (read_digits(&p, 4, &year) || *p++ != '-' || read_digits(&p, 2, &mon) || *p++ != '-' ||
	    read_digits(&p, 2, &day))
		return -1;
	if (*p != 'T' && *p != 't' && *p != ' ')
		return -1;
	p++;
	if (read_digits(&p, 2, &hour) || *p++ != ':' || read_digits(&p, 2, &min) || *p++ != ':' ||
	    read_digits(&p, 2, &sec))
		return -1;
	if (*p == '.') {
		int ndig = 0;

		p++;
		if (!isdigit((unsigned char)*p))
			return -1;
		while (isdigit((unsigned char)*p)) {
			if (ndig < 6)
				frac_us = frac_us * 10 + (*p - '0');
			ndig++;
			p++;
		}
		if (ndig > 9)
			return -1;
		for (; ndig < 6; ndig++)
			frac_us *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p == '-' ? -1 : 1, oh, om;

		p++;
		if (read_digits(&p, 2, &oh) || *p++ != ':' || read_digits(&p, 2, &om) || oh > 23 || om > 59)
			return -1;
		off_min = sign * (oh * 60 + om);
	} else {
		return -1;
	}
	if (*p != '\0')
		return -1;
	if (year < 1 || mon < 1 || mon > 12 || day < 1 || hour > 23 || min > 59 || sec > 60)
		return -1;
	if (day > mdays[mon - 1] + (mon == 2 && is_leap(year)))
		return -1;
	if (sec == 60) /* a leap second reads as the next second's start */
		sec = 59, frac_us = 999999;

	int64_t secs = days_from_civil(year, mon, day) * 86400 + hour * 3600 + min * 60 + sec -
		       (int64_t)off_min * 60;
	*out_us = secs * 1000000 + frac_us;
	return 0;
}

char *cat_time_format_rfc3339(int64_t us, char *buf, size_t buf_size)
{
	int64_t secs = us / 1000000, frac = us % 1000000, days, y;
	int m, d;

	if (frac < 0)
		frac += 1000000, secs -= 1;
	days = secs / 86400;
	int64_t rem = secs % 86400;
	if (rem < 0)
		rem += 86400, days -= 1;
	civil_from_days(days, &y, &m, &d);
	if (y >= 0 && y <= 9999 && buf_size >= 28) {
		/* the common case without snprintf (a hot path of catalyst-cache) */
		static const int widths[7] = {4, 2, 2, 2, 2, 2, 6};
		static const char seps[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
		int64_t values[7] = {y, m, d, rem / 3600, rem / 60 % 60, rem % 60, frac};
		char *o = buf;

		for (int i = 0; i < 7; i++) {
			for (int k = widths[i] - 1; k >= 0; k--) {
				o[k] = (char)('0' + values[i] % 10);
				values[i] /= 10;
			}
			o += widths[i];
			*o++ = seps[i];
		}
		*o = '\0';
		return buf;
	}
	snprintf(buf, buf_size, "%04lld-%02d-%02dT%02d:%02d:%02d.%06lldZ", (long long)y, m, d,
		 (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60), (long long)frac);
	return buf;
}
