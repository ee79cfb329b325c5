/*
 * cat_rowsum: streamed row counts and checksums of COPY text (cat_rowsum.h).
 */
#include "cat_rowsum.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

void cat_rowsum_hex(const cat_rowsum_t *sum, char out[17])
{
	snprintf(out, 17, "%016llx", (unsigned long long)sum->sum);
}

/* --- one line at a time ------------------------------------------------------------------------ */

/* The row being read: its SHA-256 so far, its first bytes, and the version
 * field's digits. */
typedef struct line_hasher {
	EVP_MD_CTX *ctx;
	const EVP_MD *md;
	size_t len;	       /* bytes of the line so far */
	unsigned char head[2]; /* its first two bytes (the "\." terminator) */
	int version_field;     /* -1: none */
	int field;	       /* the field being read */
	bool v_neg, v_bad;     /* the version field so far: '-'? not an integer? */
	int v_digits;
	uint64_t v_abs;
	bool v_any; /* sum.max_version holds a version */
	cat_rowsum_t sum;
} line_hasher_t;

static bool lh_init(line_hasher_t *lh, int version_field)
{
	memset(lh, 0, sizeof(*lh));
	lh->version_field = version_field;
	lh->sum.max_version = -1;
	/* fetched once: an implicit fetch on every row would cost more than the hash */
	if (!(lh->md = EVP_MD_fetch(NULL, "SHA256", NULL)) || !(lh->ctx = EVP_MD_CTX_new()) ||
	    EVP_DigestInit_ex(lh->ctx, lh->md, NULL) != 1)
		return false;
	return true;
}

static void lh_free(line_hasher_t *lh)
{
	EVP_MD_CTX_free(lh->ctx);
	EVP_MD_free((EVP_MD *)(uintptr_t)lh->md);
	lh->ctx = NULL;
	lh->md = NULL;
}

/* The characters of the version field, as they come. */
static void lh_version_chars(line_hasher_t *lh, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n && !lh->v_bad; i++) {
		unsigned char c = p[i];

		if (c == '-' && lh->v_digits == 0 && !lh->v_neg) {
			lh->v_neg = true;
		} else if (c >= '0' && c <= '9' && lh->v_abs <= (UINT64_MAX - 9) / 10) {
			lh->v_abs = lh->v_abs * 10 + (uint64_t)(c - '0');
			lh->v_digits++;
		} else {
			lh->v_bad = true; /* \N (NULL), or not an integer */
		}
	}
}

/* Bytes of the current line (no newline among them). */
static void lh_bytes(line_hasher_t *lh, const unsigned char *p, size_t n)
{
	const unsigned char *q = p, *end = p + n;

	EVP_DigestUpdate(lh->ctx, p, n);
	for (size_t i = 0; i < n && lh->len + i < 2; i++)
		lh->head[lh->len + i] = p[i];
	lh->len += n;
	while (lh->version_field >= 0 && lh->field <= lh->version_field && q < end) {
		const unsigned char *tab = memchr(q, '\t', (size_t)(end - q));

		if (lh->field == lh->version_field)
			lh_version_chars(lh, q, tab ? (size_t)(tab - q) : (size_t)(end - q));
		if (!tab)
			break;
		lh->field++;
		q = tab + 1;
	}
}

/* The end of the line: counted as a row when `row`; ready for the next. */
static void lh_end(line_hasher_t *lh, bool row)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	EVP_DigestFinal_ex(lh->ctx, md, &md_len);
	if (row) {
		uint64_t h = 0;

		for (int i = 7; i >= 0; i--)
			h = (h << 8) | md[i];
		lh->sum.sum += h;
		lh->sum.rows++;
		if (lh->version_field >= 0 && lh->field >= lh->version_field && !lh->v_bad &&
		    lh->v_digits > 0 && lh->v_abs <= (uint64_t)INT64_MAX) {
			int64_t v = lh->v_neg ? -(int64_t)lh->v_abs : (int64_t)lh->v_abs;

			if (!lh->v_any || v > lh->sum.max_version)
				lh->sum.max_version = v;
			lh->v_any = true;
		}
	}
	EVP_DigestInit_ex(lh->ctx, lh->md, NULL);
	lh->len = 0;
	lh->field = 0;
	lh->v_neg = lh->v_bad = false;
	lh->v_digits = 0;
	lh->v_abs = 0;
}

/* Feeds data of rows: whole lines are rows, a partial one waits. */
static void lh_feed_rows(line_hasher_t *lh, const unsigned char *p, size_t len)
{
	const unsigned char *end = p + len;

	while (p < end) {
		const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));

		lh_bytes(lh, p, nl ? (size_t)(nl - p) : (size_t)(end - p));
		if (!nl)
			break;
		lh_end(lh, true);
		p = nl + 1;
	}
}

/* --- cat_rowscan ---------------------------------------------------------------------------------- */

struct cat_rowscan {
	line_hasher_t lh;
};

cat_err_t cat_rowscan_new(cat_rowscan_t **out, int version_field, char *errstr, size_t errstr_size)
{
	cat_rowscan_t *scan = calloc(1, sizeof(*scan));

	*out = NULL;
	if (!scan || !lh_init(&scan->lh, version_field)) {
		cat_rowscan_free(scan);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	*out = scan;
	return CAT_OK;
}

void cat_rowscan_feed(cat_rowscan_t *scan, const void *data, size_t len)
{
	lh_feed_rows(&scan->lh, data, len);
}

cat_err_t cat_rowscan_result(const cat_rowscan_t *scan, cat_rowsum_t *out, char *errstr, size_t errstr_size)
{
	if (scan->lh.len > 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "the COPY data ended inside a row");
	*out = scan->lh.sum;
	return CAT_OK;
}

void cat_rowscan_free(cat_rowscan_t *scan)
{
	if (!scan)
		return;
	lh_free(&scan->lh);
	free(scan);
}

/* --- cat_dumpscan ---------------------------------------------------------------------------------- */

#define NAME_MAX_LEN 128
#define LINE_HEAD    64		  /* what is kept of a line that is not a COPY header */
#define HEADER_MAX   (256 * 1024) /* a COPY header longer than this is not read */

typedef struct dump_table {
	char schema[NAME_MAX_LEN], name[NAME_MAX_LEN];
	cat_rowsum_t sum;
} dump_table_t;

struct cat_dumpscan {
	bool in_data; /* inside a COPY section */
	line_hasher_t lh;
	/* outside: the line so far (whole when it is a COPY header) */
	char *line;
	size_t line_len, line_cap;
	bool line_cut;
	dump_table_t *tables;
	size_t n_tables, cap_tables;
	char encoding[64];
};

cat_err_t cat_dumpscan_new(cat_dumpscan_t **out, char *errstr, size_t errstr_size)
{
	cat_dumpscan_t *scan = calloc(1, sizeof(*scan));

	*out = NULL;
	if (!scan || !lh_init(&scan->lh, -1) || !(scan->line = malloc(LINE_HEAD))) {
		cat_dumpscan_free(scan);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	scan->line_cap = LINE_HEAD;
	*out = scan;
	return CAT_OK;
}

/* An identifier as pg_dump writes it (quoted when it must be); the byte
 * after it, or NULL. */
static const char *parse_ident(const char *p, const char *end, char out[NAME_MAX_LEN])
{
	size_t n = 0;

	if (p < end && *p == '"') {
		for (p++;; p++) {
			if (p >= end)
				return NULL;
			if (*p == '"') {
				if (p + 1 < end && p[1] == '"') {
					p++;
				} else {
					p++;
					break;
				}
			}
			if (n + 1 >= NAME_MAX_LEN)
				return NULL;
			out[n++] = *p;
		}
	} else {
		while (p < end &&
		       (*p == '_' || *p == '$' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			(*p >= '0' && *p <= '9') || (unsigned char)*p >= 0x80)) {
			if (n + 1 >= NAME_MAX_LEN)
				return NULL;
			out[n++] = *p++;
		}
	}
	if (n == 0)
		return NULL;
	out[n] = '\0';
	return p;
}

static bool starts(const char *p, const char *end, const char *s)
{
	size_t n = strlen(s);

	return (size_t)(end - p) >= n && memcmp(p, s, n) == 0;
}

/* `COPY schema.table (c1, c2) FROM stdin;` (no list for a table without
 * columns): the table, and the position of a column named version. */
static bool parse_copy_header(const char *p, const char *end, char schema[NAME_MAX_LEN],
			      char name[NAME_MAX_LEN], int *version_field)
{
	char col[NAME_MAX_LEN];

	*version_field = -1;
	if (!starts(p, end, "COPY ") || !(p = parse_ident(p + 5, end, schema)) || !starts(p, end, ".") ||
	    !(p = parse_ident(p + 1, end, name)))
		return false;
	if (starts(p, end, " (")) {
		p += 2;
		for (int i = 0;; i++) {
			if (!(p = parse_ident(p, end, col)))
				return false;
			if (strcmp(col, "version") == 0)
				*version_field = i;
			if (starts(p, end, ")"))
				break;
			if (!starts(p, end, ", "))
				return false;
			p += 2;
		}
		p++;
	}
	return (size_t)(end - p) == strlen(" FROM stdin;") && starts(p, end, " FROM stdin;");
}

/* A whole line outside the data (without its newline). */
static cat_err_t outside_line(cat_dumpscan_t *scan, char *errstr, size_t errstr_size)
{
	const char *p = scan->line, *end = scan->line + scan->line_len;
	static const char enc[] = "SET client_encoding = '";
	char schema[NAME_MAX_LEN], name[NAME_MAX_LEN];
	int version_field;

	if (starts(p, end, enc) && !scan->line_cut) {
		const char *q = memchr(p + strlen(enc), '\'', (size_t)(end - p - (ptrdiff_t)strlen(enc)));
		size_t n = q ? (size_t)(q - p) - strlen(enc) : 0;

		if (q && n < sizeof(scan->encoding)) {
			memcpy(scan->encoding, p + strlen(enc), n);
			scan->encoding[n] = '\0';
		}
		return CAT_OK;
	}
	if (scan->line_cut || !parse_copy_header(p, end, schema, name, &version_field))
		return CAT_OK; /* any other line; a COPY of a function's body is not a section */
	if (scan->n_tables == scan->cap_tables) {
		size_t cap = scan->cap_tables ? 2 * scan->cap_tables : 16;
		dump_table_t *grown = realloc(scan->tables, cap * sizeof(*grown));

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		scan->tables = grown;
		scan->cap_tables = cap;
	}
	memcpy(scan->tables[scan->n_tables].schema, schema, sizeof(schema));
	memcpy(scan->tables[scan->n_tables].name, name, sizeof(name));
	scan->lh.version_field = version_field;
	scan->lh.sum = (cat_rowsum_t){.rows = 0, .sum = 0, .max_version = -1};
	scan->lh.v_any = false;
	scan->in_data = true;
	return CAT_OK;
}

/* Whether the line so far and then p..n start with "COPY ". */
static bool copy_line(const cat_dumpscan_t *scan, const char *p, size_t n)
{
	char head[5];
	size_t have = scan->line_len < 5 ? scan->line_len : 5, more = 5 - have < n ? 5 - have : n;

	memcpy(head, scan->line, have);
	memcpy(head + have, p, more);
	return have + more == 5 && memcmp(head, "COPY ", 5) == 0;
}

/* Keeps bytes of a line outside the data: a COPY header whole (up to
 * HEADER_MAX), any other line its first LINE_HEAD bytes. */
static cat_err_t keep_line_bytes(cat_dumpscan_t *scan, const char *p, size_t n, char *errstr,
				 size_t errstr_size)
{
	size_t want = scan->line_len + n;

	if (scan->line_cut)
		return CAT_OK;
	if (want > scan->line_cap) {
		size_t cap = scan->line_cap;
		char *grown;

		if (!copy_line(scan, p, n) || want > HEADER_MAX) {
			memcpy(scan->line + scan->line_len, p, scan->line_cap - scan->line_len);
			scan->line_len = scan->line_cap;
			scan->line_cut = true;
			return CAT_OK;
		}
		while (cap < want)
			cap *= 2;
		if (!(grown = realloc(scan->line, cap)))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		scan->line = grown;
		scan->line_cap = cap;
	}
	memcpy(scan->line + scan->line_len, p, n);
	scan->line_len += n;
	return CAT_OK;
}

cat_err_t cat_dumpscan_feed(cat_dumpscan_t *scan, const void *data, size_t len, char *errstr,
			    size_t errstr_size)
{
	const char *p = data, *end = p + len;
	cat_err_t err;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

		if (scan->in_data) {
			lh_bytes(&scan->lh, (const unsigned char *)p, n);
			if (nl) {
				/* "\." alone ends the section; data never has it unescaped */
				bool terminator = scan->lh.len == 2 && scan->lh.head[0] == '\\' &&
						  scan->lh.head[1] == '.';

				lh_end(&scan->lh, !terminator);
				if (terminator) {
					scan->tables[scan->n_tables++].sum = scan->lh.sum;
					scan->in_data = false;
				}
			}
		} else {
			if ((err = keep_line_bytes(scan, p, n, errstr, errstr_size)) != CAT_OK)
				return err;
			if (nl) {
				err = outside_line(scan, errstr, errstr_size);
				scan->line_len = 0;
				scan->line_cut = false;
				if (err != CAT_OK)
					return err;
			}
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	return CAT_OK;
}

cat_err_t cat_dumpscan_finish(cat_dumpscan_t *scan, char *errstr, size_t errstr_size)
{
	if (scan->in_data)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "the dump ended inside the data of %s.%s",
				   scan->tables[scan->n_tables].schema, scan->tables[scan->n_tables].name);
	if (scan->line_len > 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "the dump ended inside a line");
	return CAT_OK;
}

const cat_rowsum_t *cat_dumpscan_table(const cat_dumpscan_t *scan, const char *schema, const char *name)
{
	for (size_t i = 0; i < scan->n_tables; i++)
		if (strcmp(scan->tables[i].schema, schema) == 0 && strcmp(scan->tables[i].name, name) == 0)
			return &scan->tables[i].sum;
	return NULL;
}

const char *cat_dumpscan_encoding(const cat_dumpscan_t *scan)
{
	return scan->encoding;
}

void cat_dumpscan_free(cat_dumpscan_t *scan)
{
	if (!scan)
		return;
	lh_free(&scan->lh);
	free(scan->line);
	free(scan->tables);
	free(scan);
}
