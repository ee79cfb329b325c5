/*
 * s3-tool: object store operations for tests and operators, through
 * common/cat_s3 (settings: the CATALYST_S3_* variables).
 *
 *   s3-tool check                      credentials and bucket
 *   s3-tool put KEY < data             one PUT
 *   s3-tool upload KEY < data          multipart upload (streamed)
 *   s3-tool upload-abort KEY MIB       starts a multipart upload, sends MIB MiB of parts, aborts
 *   s3-tool get KEY > data             streamed GET
 *   s3-tool ls PREFIX                  "size key" per object
 *   s3-tool rm KEY
 *   s3-tool uploads PREFIX             "key upload-id" per multipart upload in progress
 *   s3-tool abort-uploads PREFIX       aborts every upload in progress under PREFIX
 *   s3-tool flip KEY OFFSET            flips one byte of an object (rewrites it; small objects)
 *
 * Exit status: 0 done, 1 failed (the error on stderr), 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_config.h"
#include "cat_log.h"
#include "cat_s3.h"

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_S3,
};

static int to_stdout(const void *data, size_t len, void *opaque)
{
	return fwrite(data, 1, len, stdout) == len ? 0 : 1;
}

static int print_object(const char *key, uint64_t size, void *opaque)
{
	printf("%llu %s\n", (unsigned long long)size, key);
	return 0;
}

static int print_upload(const char *key, const char *id, void *opaque)
{
	printf("%s %s\n", key, id);
	return 0;
}

typedef struct membuf {
	char *data;
	size_t len;
} membuf_t;

static int to_mem(const void *data, size_t len, void *opaque)
{
	membuf_t *m = opaque;
	char *grown = realloc(m->data, m->len + len);

	if (!grown)
		return 1;
	memcpy(grown + m->len, data, len);
	m->data = grown;
	m->len += len;
	return 0;
}

typedef struct abort_ctx {
	cat_s3_t *s3;
	cat_err_t err;
	char *errstr;
	size_t errstr_size;
} abort_ctx_t;

static int abort_one(const char *key, const char *id, void *opaque)
{
	abort_ctx_t *ctx = opaque;

	ctx->err = cat_s3_abort_upload(ctx->s3, key, id, ctx->errstr, ctx->errstr_size);
	return ctx->err != CAT_OK;
}

static char *read_stdin(size_t *len)
{
	membuf_t m = {0};
	char buf[65536];
	size_t n;

	while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0)
		if (to_mem(buf, n, &m) != 0)
			break;
	*len = m.len;
	return m.data ? m.data : calloc(1, 1);
}

int main(int argc, char **argv)
{
	cat_config_t *cfg = NULL;
	cat_s3_options_t opts;
	cat_s3_t *s3 = NULL;
	cat_s3_upload_t *up = NULL;
	char errstr[1024] = "", buf[65536];
	const char *cmd = argc > 1 ? argv[1] : "";
	cat_err_t err = CAT_OK;
	int rc = 1;

	if (argc < 2) {
		fprintf(stderr, "usage: s3-tool check|put|upload|upload-abort|get|ls|rm|uploads|flip ...\n");
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, sizeof(config_defs) / sizeof(config_defs[0]), NULL, errstr,
			    sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "s3-tool: %s\n", errstr);
		return 2;
	}
	cat_log_init("s3-tool", CAT_LOG_LEVEL_WARN);
	cat_s3_options_from_config(&opts, cfg);
	if (cat_s3_new(&s3, &opts, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "s3-tool: %s\n", errstr);
		cat_config_destroy(cfg);
		return 2;
	}
	if (strcmp(cmd, "check") == 0 && argc == 2) {
		err = cat_s3_check(s3, errstr, sizeof(errstr));
	} else if (strcmp(cmd, "put") == 0 && argc == 3) {
		size_t len;
		char *data = read_stdin(&len);

		err = cat_s3_put(s3, argv[2], data, len, "application/octet-stream", errstr, sizeof(errstr));
		free(data);
	} else if (strcmp(cmd, "upload") == 0 && argc == 3) {
		size_t n;

		err = cat_s3_upload_begin(s3, argv[2], "application/octet-stream", &up, errstr, sizeof(errstr));
		while (err == CAT_OK && (n = fread(buf, 1, sizeof(buf), stdin)) > 0)
			err = cat_s3_upload_write(up, buf, n, errstr, sizeof(errstr));
		if (err == CAT_OK)
			err = cat_s3_upload_finish(up, errstr, sizeof(errstr));
		if (err == CAT_OK)
			fprintf(stderr, "s3-tool: %d parts\n", cat_s3_upload_parts(up));
	} else if (strcmp(cmd, "upload-abort") == 0 && argc == 4) {
		long mib = atol(argv[3]);

		memset(buf, 'x', sizeof(buf));
		err = cat_s3_upload_begin(s3, argv[2], "application/octet-stream", &up, errstr, sizeof(errstr));
		for (long i = 0; err == CAT_OK && i < mib * 16; i++)
			err = cat_s3_upload_write(up, buf, sizeof(buf), errstr, sizeof(errstr));
		if (up) {
			/* wait for the parts in flight, then abort */
			fprintf(stderr, "s3-tool: aborting %s after %d parts\n", cat_s3_upload_id(up),
				cat_s3_upload_parts(up));
			cat_s3_upload_abort(up);
		}
	} else if (strcmp(cmd, "get") == 0 && argc == 3) {
		err = cat_s3_get(s3, argv[2], to_stdout, NULL, NULL, errstr, sizeof(errstr));
	} else if (strcmp(cmd, "ls") == 0 && argc == 3) {
		err = cat_s3_list(s3, argv[2], print_object, NULL, errstr, sizeof(errstr));
	} else if (strcmp(cmd, "rm") == 0 && argc == 3) {
		err = cat_s3_delete(s3, argv[2], errstr, sizeof(errstr));
	} else if (strcmp(cmd, "uploads") == 0 && argc == 3) {
		err = cat_s3_list_uploads(s3, argv[2], print_upload, NULL, errstr, sizeof(errstr));
	} else if (strcmp(cmd, "abort-uploads") == 0 && argc == 3) {
		abort_ctx_t ctx = {s3, CAT_OK, errstr, sizeof(errstr)};

		/* aborting while listing: the listing restarts from the top each page */
		err = cat_s3_list_uploads(s3, argv[2], abort_one, &ctx, errstr, sizeof(errstr));
		if (err == CAT_OK)
			err = ctx.err;
	} else if (strcmp(cmd, "flip") == 0 && argc == 4) {
		membuf_t m = {0};
		size_t off = strtoul(argv[3], NULL, 10);

		err = cat_s3_get(s3, argv[2], to_mem, &m, NULL, errstr, sizeof(errstr));
		if (err == CAT_OK && off >= m.len)
			err = cat_err_set(errstr, sizeof(errstr), CAT_ERR_PERMANENT, "offset %zu beyond %zu bytes", off,
					  m.len);
		if (err == CAT_OK) {
			m.data[off] ^= 0x01;
			err = cat_s3_put(s3, argv[2], m.data, m.len, "application/octet-stream", errstr, sizeof(errstr));
		}
		free(m.data);
	} else {
		fprintf(stderr, "s3-tool: bad command or arguments (see the top of tests/tools/s3_tool.c)\n");
		rc = 2;
		goto out;
	}
	if (err != CAT_OK) {
		fprintf(stderr, "s3-tool: %s (%s)\n", errstr, cat_err_name(err));
		goto out;
	}
	rc = 0;
out:
	cat_s3_upload_free(up);
	cat_s3_destroy(s3);
	cat_config_destroy(cfg);
	return rc;
}
