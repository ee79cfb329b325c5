/*
 * cat_rowsum: row counts and order-independent checksums of PostgreSQL COPY
 * text, computed from a stream that is read anyway (a backup's pg_dump
 * output or COPY TO STDOUT), so nobody scans the table a second time; and
 * again from the restored rows to verify them.
 *
 * CAT_ROWSUM_ALGO: the checksum of a set of rows is the sum modulo 2^64 of
 * h(row) over its rows, where a row is one line of COPY text (without its
 * newline) and h(row) the first 8 bytes of its SHA-256 read as a
 * little-endian integer; printed as 16 hex digits. Independent of the order
 * of the rows, changed by any byte of any row, duplicates count. (SHA-256
 * because OpenSSL has it, with the CPU's SHA instructions where there are:
 * ~1.5 GB/s, a fifth of the rate of the compression beside it.)
 *
 * Equal rows give equal COPY text only under equal session settings: the
 * text is made with CAT_ROWSUM_SESSION_SQL applied (pg_dump applies the same
 * DateStyle, IntervalStyle and extra_float_digits itself, and gets TimeZone
 * from PGTZ=UTC in its environment) and under the same client_encoding.
 *
 * Two readers:
 *   cat_rowscan  the data of one COPY TO STDOUT (lines, no terminator);
 *   cat_dumpscan pg_dump's plain output: every `COPY schema.table (columns)
 *                FROM stdin;` section up to its `\.` line, per table, and
 *                the dump's `SET client_encoding`.
 * Both can also report the largest integer in the column named "version"
 * (the watermark of the next incremental backup).
 */
#ifndef CAT_ROWSUM_H
#define CAT_ROWSUM_H

#include <stddef.h>
#include <stdint.h>

#include "cat_err.h"

#define CAT_ROWSUM_ALGO "sha256-sum64/copy-text-v1"
/* The session settings the checksummed COPY text is made under. */
#define CAT_ROWSUM_SESSION_SQL                                                                               \
	"SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; "                    \
	"SET TimeZone = 'UTC'"
/* What a pg_dump child needs in its environment for the same settings. */
#define CAT_ROWSUM_PG_DUMP_ENV "PGTZ=UTC"

typedef struct cat_rowsum {
	int64_t rows;
	uint64_t sum;
	int64_t max_version; /* largest integer of the version column; -1: none */
} cat_rowsum_t;

/* The checksum as the manifest holds it: 16 lowercase hex digits. */
void cat_rowsum_hex(const cat_rowsum_t *sum, char out[17]);

/* --- one COPY's data ------------------------------------------------------------------------- */

typedef struct cat_rowscan cat_rowscan_t;

/* version_field: the 0-based column of "version" in the COPY, or -1. */
cat_err_t cat_rowscan_new(cat_rowscan_t **out, int version_field, char *errstr,
			  size_t errstr_size) CAT_MUST_CHECK;
/* Any split of the data into pieces gives the same result. */
void cat_rowscan_feed(cat_rowscan_t *scan, const void *data, size_t len);
/* The sums so far; CAT_ERR_PERMANENT when the data stopped inside a row. */
cat_err_t cat_rowscan_result(const cat_rowscan_t *scan, cat_rowsum_t *out, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;
void cat_rowscan_free(cat_rowscan_t *scan);

/* --- pg_dump's plain format ------------------------------------------------------------------ */

typedef struct cat_dumpscan cat_dumpscan_t;

cat_err_t cat_dumpscan_new(cat_dumpscan_t **out, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* CAT_ERR_PERMANENT on a COPY line it cannot read (the dump is not what
 * pg_dump writes); CAT_ERR_FATAL out of memory. */
cat_err_t cat_dumpscan_feed(cat_dumpscan_t *scan, const void *data, size_t len, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;
/* After the last byte: CAT_ERR_PERMANENT when the dump ended inside a COPY
 * section or a line. */
cat_err_t cat_dumpscan_finish(cat_dumpscan_t *scan, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* The sums of table schema.name's section; NULL when the dump had none. */
const cat_rowsum_t *cat_dumpscan_table(const cat_dumpscan_t *scan, const char *schema, const char *name);
/* The dump's client_encoding ("" when it set none). */
const char *cat_dumpscan_encoding(const cat_dumpscan_t *scan);
void cat_dumpscan_free(cat_dumpscan_t *scan);

#endif /* CAT_ROWSUM_H */
