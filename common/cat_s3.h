/*
 * cat_s3: an S3-compatible object store over libcurl (AWS S3, DigitalOcean
 * Spaces, MinIO, moto), signed with AWS Signature Version 4.
 *
 * Every request is signed here, not by libcurl: the canonical request holds
 * host, content-type, x-amz-content-sha256 (the payload's SHA-256, sent as a
 * header on every request) and x-amz-date, and a canonical (sorted,
 * percent-encoded) query string. Addressing is path-style
 * (endpoint/bucket/key) or virtual-host (bucket.endpoint/key).
 *
 * Failures are classed with cat_err_class_http(): no response, 408, 429,
 * 5xx, SlowDown and network errors are retried here with exponential
 * backoff and equal jitter (cat_backoff_delay(), up to max_retries times)
 * and come back CAT_ERR_RETRIABLE when they persist; 401/403 (wrong keys, signature
 * refused) and a missing bucket are CAT_ERR_FATAL; other 4xx
 * CAT_ERR_PERMANENT. Error strings read
 *   could not PUT catalyst-backups/backups/x: HTTP 403 SignatureDoesNotMatch: <message>
 * and never contain a key or a signature.
 *
 * Large objects go up as multipart uploads (cat_s3_upload_*): parts are
 * filled by the caller's writes and sent by a background thread while the
 * next part fills (memory: two parts). The part size is at least 5 MiB and
 * doubles every CAT_S3_PARTS_PER_STEP parts, so an upload of unknown length
 * stays within the 10,000-part limit up to ~62,000 times the first part
 * size. An upload that fails or is abandoned is aborted (no orphaned
 * parts). The object only appears once the upload completes. An upload the
 * store no longer knows (404 NoSuchUpload on a part or the completion, e.g.
 * after the endpoint restarted) fails CAT_ERR_RETRIABLE: the caller starts
 * a new one.
 *
 * The store is not trusted blindly: every attempt of a request ends within
 * CATALYST_S3_REQUEST_TIMEOUT_MS however slowly the bytes arrive (a
 * streamed GET that was still moving resumes with a Range request without
 * using up a retry); a listing page over 16 MiB, a continuation token or
 * upload marker the store repeats, a page that starts at or before a key
 * already listed, or a truncated page without a way on fail the listing
 * CAT_ERR_PERMANENT instead of looping or being taken as complete. Request
 * headers are built to their length (a session token of several KiB is
 * sent whole), and the secret key, session token and signatures are wiped
 * from memory when freed.
 *
 * Threads: several uploads of one cat_s3_t may run at once on different
 * threads (each has its own connection); the other calls on a cat_s3_t are
 * for one thread at a time.
 */
#ifndef CAT_S3_H
#define CAT_S3_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cat_config.h"
#include "cat_err.h"

#define CAT_S3_MIN_PART_SIZE (5u * 1024 * 1024)
#define CAT_S3_MAX_PARTS 10000
#define CAT_S3_PARTS_PER_STEP 2000

/* Settings of an S3 connection, spliced into a worker's config table;
 * CAT_CONFIG_S3_IF("CATALYST_X=s3") requires them only when that setting
 * says so (cat_config_def_t.required_if). */
#define CAT_CONFIG_S3 CAT_CONFIG_S3_IF(NULL)
#define CAT_CONFIG_S3_IF(required_when)                                                             \
	{ .name = "CATALYST_S3_ENDPOINT", .type = CAT_CFG_HTTP_URL, .required = true,               \
	  .required_if = required_when,                                                             \
	  .help = "object store endpoint, e.g. https://sgp1.digitaloceanspaces.com (https in production)" }, \
	{ .name = "CATALYST_S3_REGION", .type = CAT_CFG_STRING, .def = "us-east-1",                 \
	  .help = "region the requests are signed for (Spaces: the datacenter, e.g. sgp1)" },       \
	{ .name = "CATALYST_S3_BUCKET", .type = CAT_CFG_STRING, .required = true,                   \
	  .required_if = required_when, .help = "bucket" },                                         \
	{ .name = "CATALYST_S3_ACCESS_KEY", .type = CAT_CFG_STRING, .required = true,               \
	  .required_if = required_when, .help = "access key id" },                                  \
	{ .name = "CATALYST_S3_SECRET_KEY", .type = CAT_CFG_STRING, .required = true, .secret = true, \
	  .required_if = required_when, .help = "secret access key" },                              \
	{ .name = "CATALYST_S3_SESSION_TOKEN", .type = CAT_CFG_STRING, .secret = true,              \
	  .help = "temporary credentials' session token (x-amz-security-token)" },                  \
	{ .name = "CATALYST_S3_PATH_STYLE", .type = CAT_CFG_BOOL, .def = "false",                   \
	  .help = "address objects as endpoint/bucket/key instead of bucket.endpoint/key" },        \
	{ .name = "CATALYST_S3_CA_FILE", .type = CAT_CFG_STRING,                                    \
	  .help = "PEM bundle of the certificate authorities to trust (default: the system's)" },   \
	{ .name = "CATALYST_S3_TLS_VERIFY", .type = CAT_CFG_BOOL, .def = "true",                    \
	  .help = "verify the endpoint's certificate and host name (never false in production)" },  \
	{ .name = "CATALYST_S3_PART_SIZE_MB", .type = CAT_CFG_INT, .def = "8", .min = 5, .max = 1024, \
	  .help = "first part size of multipart uploads, MiB (memory: two parts per upload)" },     \
	{ .name = "CATALYST_S3_MAX_RETRIES", .type = CAT_CFG_INT, .def = "6", .max = 100,           \
	  .help = "retries of a request failing transiently (5xx, throttling, network)" },          \
	{ .name = "CATALYST_S3_RETRY_BACKOFF_MS", .type = CAT_CFG_INT, .def = "200", .min = 1,      \
	  .max = 600000, .help = "first retry delay of a request (doubles, equal jitter, at most 30 s)" }, \
	{ .name = "CATALYST_S3_TIMEOUT_S", .type = CAT_CFG_INT, .def = "60", .min = 1, .max = 3600, \
	  .help = "a request fails when it moves no byte for this long (and on connect after 10 s)" }, \
	{ .name = "CATALYST_S3_REQUEST_TIMEOUT_MS", .type = CAT_CFG_INT, .def = "600000", .min = 1000, \
	  .max = 86400000,                                                                          \
	  .help = "an attempt of a request fails when it has not ended within this long, however the bytes " \
	          "trickle (a multipart part must fit in it; a streamed GET resumes where it stopped)" }

typedef struct cat_s3_options {
	const char *endpoint;	   /* http(s)://host[:port] */
	const char *region;
	const char *bucket;
	const char *access_key;
	const char *secret_key;
	const char *session_token; /* NULL: none */
	bool path_style;
	const char *ca_file;	   /* NULL: the system's */
	bool tls_verify;
	size_t part_size;	   /* bytes, >= CAT_S3_MIN_PART_SIZE */
	int max_retries;
	int backoff_ms;
	int timeout_s;
	int request_timeout_ms;	   /* one attempt, in total; 0: 600000 */
	volatile sig_atomic_t *cancel; /* non-zero: stop retrying (a signal); NULL: none */
} cat_s3_options_t;

typedef struct cat_s3 cat_s3_t;

/* The options from the CAT_CONFIG_S3 settings of `cfg` (strings borrowed
 * from cfg). */
void cat_s3_options_from_config(cat_s3_options_t *opts, const cat_config_t *cfg);

/* Checks and copies the options. No request is made. */
cat_err_t cat_s3_new(cat_s3_t **out, const cat_s3_options_t *opts, char *errstr,
		     size_t errstr_size) CAT_MUST_CHECK;
void cat_s3_destroy(cat_s3_t *s3);

/* HEAD of the bucket: credentials, signature and bucket are right.
 * FATAL with a clear message when the keys are refused or there is no
 * such bucket. */
cat_err_t cat_s3_check(cat_s3_t *s3, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Stores a small object in one PUT. */
cat_err_t cat_s3_put(cat_s3_t *s3, const char *key, const void *data, size_t len, const char *content_type,
		     char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Streams an object: fn receives its bytes in order (return non-zero to
 * stop: the call fails with CAT_ERR_PERMANENT and errstr "stopped by the
 * reader" unless fn set it). A transfer broken part-way resumes with a
 * Range request where it stopped. A missing key is CAT_ERR_PERMANENT and
 * sets *not_found (when not NULL). */
typedef int (*cat_s3_write_fn)(const void *data, size_t len, void *opaque);
cat_err_t cat_s3_get(cat_s3_t *s3, const char *key, cat_s3_write_fn fn, void *opaque, bool *not_found,
		     char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Size of an object; a missing one sets *exists = false and returns CAT_OK. */
cat_err_t cat_s3_head(cat_s3_t *s3, const char *key, bool *exists, uint64_t *size, char *errstr,
		      size_t errstr_size) CAT_MUST_CHECK;

/* Deletes an object (a missing one is not an error). */
cat_err_t cat_s3_delete(cat_s3_t *s3, const char *key, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Lists the objects under `prefix` (every page): fn(key, size, opaque) per
 * object, in key order; a non-zero result stops the listing (CAT_OK). */
typedef int (*cat_s3_list_fn)(const char *key, uint64_t size, void *opaque);
cat_err_t cat_s3_list(cat_s3_t *s3, const char *prefix, cat_s3_list_fn fn, void *opaque, char *errstr,
		      size_t errstr_size) CAT_MUST_CHECK;

/* Lists the multipart uploads in progress under `prefix`: fn(key, upload_id). */
typedef int (*cat_s3_uploads_fn)(const char *key, const char *upload_id, void *opaque);
cat_err_t cat_s3_list_uploads(cat_s3_t *s3, const char *prefix, cat_s3_uploads_fn fn, void *opaque,
			      char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Aborts one multipart upload (a missing one is not an error). */
cat_err_t cat_s3_abort_upload(cat_s3_t *s3, const char *key, const char *upload_id, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;

/* --- multipart upload ---------------------------------------------------------------- */

typedef struct cat_s3_upload cat_s3_upload_t;

/* Starts a multipart upload of `key`. */
cat_err_t cat_s3_upload_begin(cat_s3_t *s3, const char *key, const char *content_type, cat_s3_upload_t **out,
			      char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Appends bytes; full parts are sent in the background. A failure here or
 * in an earlier part's upload is reported (the upload is then only good
 * for cat_s3_upload_abort). */
cat_err_t cat_s3_upload_write(cat_s3_upload_t *up, const void *data, size_t len, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;
/* Sends the last part and completes the upload: the object exists. */
cat_err_t cat_s3_upload_finish(cat_s3_upload_t *up, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
/* Aborts the upload (its parts are deleted); for error paths. */
void cat_s3_upload_abort(cat_s3_upload_t *up);
/* Frees the handle; an upload neither finished nor aborted is aborted. */
void cat_s3_upload_free(cat_s3_upload_t *up);
/* Parts sent so far, and the upload id (for logs and tests). */
int cat_s3_upload_parts(const cat_s3_upload_t *up);
const char *cat_s3_upload_id(const cat_s3_upload_t *up);

/* --- the pieces of a signature, exposed for tests ------------------------------------------ */

/* Percent-encodes per SigV4 (unreserved A-Z a-z 0-9 - . _ ~ kept; '/' kept
 * when keep_slash). Returns a malloc'd string or NULL. */
char *cat_s3_uri_encode(const char *text, bool keep_slash);

/* SHA-256 of data as 64 lower-case hex characters and a NUL. */
void cat_s3_sha256_hex(const void *data, size_t len, char out[65]);

typedef struct cat_s3_param {
	const char *name;
	const char *value; /* NULL or "": name= */
} cat_s3_param_t;

/* The Authorization header value of a request (headers: lower-case names,
 * sorted by name, values trimmed; they must include host, x-amz-date and
 * x-amz-content-sha256). amz_date is "YYYYMMDDTHHMMSSZ". */
typedef struct cat_s3_header {
	const char *name;
	const char *value;
} cat_s3_header_t;
char *cat_s3_sign(const char *access_key, const char *secret_key, const char *region, const char *amz_date,
		  const char *method, const char *canonical_uri, const cat_s3_param_t *params, size_t n_params,
		  const cat_s3_header_t *headers, size_t n_headers, const char *payload_sha256);

#endif /* CAT_S3_H */
