/*
 * cat_sink: where backups go, behind a small ops table (open, write,
 * finish, abort, free, and the store's get/put/delete/list), with two
 * backends:
 *   - S3 (cat_s3): objects written as multipart uploads, appearing only
 *     when finished; an aborted one leaves no parts behind;
 *   - a local directory: objects are files under a root, written to a
 *     temporary name and renamed into place when finished (fsynced).
 * Workers use only this interface, never libcurl or cat_s3 directly.
 *
 * Keys are relative paths of [A-Za-z0-9._/-] without "..", leading '/' or
 * empty segments. The sink keeps its last error (cat_sink_last_error).
 */
#ifndef CAT_SINK_H
#define CAT_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cat_err.h"
#include "cat_s3.h"

typedef struct cat_sink cat_sink_t;
typedef struct cat_sink_writer cat_sink_writer_t;

typedef int (*cat_sink_read_fn)(const void *data, size_t len, void *opaque);
typedef int (*cat_sink_list_fn)(const char *key, uint64_t size, void *opaque);

typedef struct cat_sink_ops {
	const char *name; /* "s3", "dir" */
	cat_err_t (*open)(cat_sink_t *sink, const char *key, const char *content_type, void **handle,
			  char *errstr, size_t errstr_size);
	cat_err_t (*write)(void *handle, const void *data, size_t len, char *errstr, size_t errstr_size);
	cat_err_t (*finish)(void *handle, char *errstr, size_t errstr_size);
	void (*abort)(void *handle);
	void (*close)(void *handle); /* frees the handle (aborting it if still open) */
	cat_err_t (*put)(cat_sink_t *sink, const char *key, const void *data, size_t len, const char *content_type,
			 char *errstr, size_t errstr_size);
	cat_err_t (*get)(cat_sink_t *sink, const char *key, cat_sink_read_fn fn, void *opaque, bool *not_found,
			 char *errstr, size_t errstr_size);
	cat_err_t (*remove)(cat_sink_t *sink, const char *key, char *errstr, size_t errstr_size);
	cat_err_t (*list)(cat_sink_t *sink, const char *prefix, cat_sink_list_fn fn, void *opaque, char *errstr,
			  size_t errstr_size);
	/* removes what interrupted writes under prefix left (uploads, temp files) */
	cat_err_t (*cleanup)(cat_sink_t *sink, const char *prefix, int *removed, char *errstr, size_t errstr_size);
	cat_err_t (*check)(cat_sink_t *sink, char *errstr, size_t errstr_size);
	void (*free)(cat_sink_t *sink);
} cat_sink_ops_t;

/* An S3 sink; takes ownership of s3 (also on failure). */
cat_err_t cat_sink_new_s3(cat_sink_t **out, cat_s3_t *s3, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* A directory sink rooted at `dir` (created if missing). */
cat_err_t cat_sink_new_dir(cat_sink_t **out, const char *dir, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
void cat_sink_free(cat_sink_t *sink);

const char *cat_sink_name(const cat_sink_t *sink);
/* The last error of any operation ("" when none yet). */
/* Copies the last error into buf (thread-safe); returns buf. */
const char *cat_sink_last_error(cat_sink_t *sink, char *buf, size_t buf_size);
/* True for a key this module accepts. */
bool cat_sink_key_valid(const char *key);

/* Reachable, credentials accepted, bucket/directory present. */
cat_err_t cat_sink_check(cat_sink_t *sink, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Streamed write of one object: open, write..., then finish (the object
 * exists) or abort (nothing visible, nothing left). */
cat_err_t cat_sink_open(cat_sink_t *sink, const char *key, const char *content_type, cat_sink_writer_t **out,
			char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_sink_write(cat_sink_writer_t *writer, const void *data, size_t len, char *errstr,
			 size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_sink_finish(cat_sink_writer_t *writer, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
void cat_sink_abort(cat_sink_writer_t *writer);
/* Frees; a writer neither finished nor aborted is aborted. Accepts NULL. */
void cat_sink_writer_free(cat_sink_writer_t *writer);

cat_err_t cat_sink_put(cat_sink_t *sink, const char *key, const void *data, size_t len, const char *content_type,
		       char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Streams an object to fn; a missing key is CAT_ERR_PERMANENT with *not_found. */
cat_err_t cat_sink_get(cat_sink_t *sink, const char *key, cat_sink_read_fn fn, void *opaque, bool *not_found,
		       char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Reads a small object (at most max bytes) into a malloc'd, NUL-terminated buffer. */
cat_err_t cat_sink_get_small(cat_sink_t *sink, const char *key, size_t max, char **out, size_t *out_len,
			     bool *not_found, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Deletes an object; a missing one is not an error. */
cat_err_t cat_sink_delete(cat_sink_t *sink, const char *key, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Objects under prefix, in key order. */
cat_err_t cat_sink_list(cat_sink_t *sink, const char *prefix, cat_sink_list_fn fn, void *opaque, char *errstr,
			size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_sink_cleanup(cat_sink_t *sink, const char *prefix, int *removed, char *errstr,
			   size_t errstr_size) CAT_MUST_CHECK;

#endif /* CAT_SINK_H */
