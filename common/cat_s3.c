#define _GNU_SOURCE /* asprintf */
#include "cat_s3.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "cat_backoff.h"
#include "cat_log.h"
#include "cat_time.h"

#define ERROR_BODY_MAX (64 * 1024)  /* error and listing bodies kept in memory */
#define SMALL_BODY_MAX (16 * 1024 * 1024) /* one listing page */
#define DEFAULT_REQUEST_TIMEOUT_MS 600000
#define RESUME_PROGRESS_MIN (1024 * 1024) /* a GET attempt moving this much earns its retries back */
#define EMPTY_PAGES_MAX 1000 /* truncated pages in a row without an object */
#define RETRY_DELAY_MAX_MS 30000 /* a retry's delay, at most (CATALYST_S3_RETRY_BACKOFF_MS doubles up to it) */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct cat_s3 {
	char *scheme;	  /* "http" or "https" */
	char *hostport;	  /* host[:port] of the endpoint */
	char *region, *bucket, *access_key, *secret_key, *session_token, *ca_file;
	bool path_style, tls_verify;
	size_t part_size;
	int max_retries, backoff_ms, timeout_s, request_timeout_ms;
	volatile sig_atomic_t *cancel;
	CURL *curl; /* the caller's thread; an upload's thread has its own */
};

/* --- small helpers ---------------------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void hex(const unsigned char *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

void cat_s3_sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[SHA256_DIGEST_LENGTH];

	SHA256(data, len, md);
	hex(md, sizeof(md), out);
}

static void hmac_sha256(const void *key, size_t key_len, const char *msg, unsigned char out[32])
{
	unsigned int out_len = 32;

	HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg, strlen(msg), out, &out_len);
}

char *cat_s3_uri_encode(const char *text, bool keep_slash)
{
	static const char digits[] = "0123456789ABCDEF";
	size_t n = strlen(text);
	char *out = malloc(3 * n + 1), *p = out;

	if (!out)
		return NULL;
	for (const unsigned char *s = (const unsigned char *)text; *s; s++) {
		if (isalnum(*s) || *s == '-' || *s == '.' || *s == '_' || *s == '~' || (keep_slash && *s == '/')) {
			*p++ = (char)*s;
		} else {
			*p++ = '%';
			*p++ = digits[*s >> 4];
			*p++ = digits[*s & 15];
		}
	}
	*p = '\0';
	return out;
}

/* A growable string. */
typedef struct sbuf {
	char *data;
	size_t len, cap;
	bool oom;
} sbuf_t;

static void sb_addn(sbuf_t *sb, const char *s, size_t n)
{
	if (sb->oom)
		return;
	if (sb->len + n + 1 > sb->cap) {
		size_t cap = sb->cap ? sb->cap : 256;
		char *grown;

		while (cap < sb->len + n + 1)
			cap *= 2;
		if (!(grown = realloc(sb->data, cap))) {
			sb->oom = true;
			return;
		}
		sb->data = grown;
		sb->cap = cap;
	}
	memcpy(sb->data + sb->len, s, n);
	sb->len += n;
	sb->data[sb->len] = '\0';
}

static void sb_add(sbuf_t *sb, const char *s)
{
	sb_addn(sb, s, strlen(s));
}

static void sb_addf(sbuf_t *sb, const char *fmt, ...) CAT_PRINTF(2, 3);
static void sb_addf(sbuf_t *sb, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n >= 0)
		sb_addn(sb, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* --- SigV4 ------------------------------------------------------------------------------------ */

typedef struct enc_param {
	char *name, *value;
} enc_param_t;

static int enc_param_cmp(const void *a, const void *b)
{
	const enc_param_t *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : strcmp(x->value, y->value);
}

/* name=value&... with both parts encoded, sorted: the canonical query
 * string, which is also what goes on the URL (keep_slash false). NULL when
 * out of memory. */
static char *query_string(const cat_s3_param_t *params, size_t n, bool keep_slash)
{
	enc_param_t *enc = calloc(n ? n : 1, sizeof(*enc));
	sbuf_t sb = {0};
	bool ok = enc != NULL;

	for (size_t i = 0; ok && i < n; i++) {
		enc[i].name = cat_s3_uri_encode(params[i].name, keep_slash);
		enc[i].value = cat_s3_uri_encode(params[i].value ? params[i].value : "", keep_slash);
		ok = enc[i].name && enc[i].value;
	}
	if (ok) {
		qsort(enc, n, sizeof(*enc), enc_param_cmp);
		sb_add(&sb, "");
		for (size_t i = 0; i < n; i++) {
			if (i)
				sb_add(&sb, "&");
			sb_add(&sb, enc[i].name);
			sb_add(&sb, "=");
			sb_add(&sb, enc[i].value);
		}
	}
	for (size_t i = 0; enc && i < n; i++) {
		free(enc[i].name);
		free(enc[i].value);
	}
	free(enc);
	if (!ok || sb.oom) {
		free(sb.data);
		return NULL;
	}
	return sb.data;
}

char *cat_s3_sign(const char *access_key, const char *secret_key, const char *region, const char *amz_date,
		  const char *method, const char *canonical_uri, const cat_s3_param_t *params, size_t n_params,
		  const cat_s3_header_t *headers, size_t n_headers, const char *payload_sha256)
{
	char date[9], scope[128], creq_hash[65], signature[65];
	unsigned char k_date[32], k_region[32], k_service[32], k_signing[32], sig[32];
	char *query = query_string(params, n_params, false), *key0 = NULL;
	sbuf_t creq = {0}, signed_headers = {0}, sts = {0}, auth = {0};

	if (!query)
		return NULL;
	snprintf(date, sizeof(date), "%.8s", amz_date);
	snprintf(scope, sizeof(scope), "%s/%s/s3/aws4_request", date, region);

	for (size_t i = 0; i < n_headers; i++) {
		if (i)
			sb_add(&signed_headers, ";");
		sb_add(&signed_headers, headers[i].name);
	}
	sb_add(&creq, method);
	sb_add(&creq, "\n");
	sb_add(&creq, canonical_uri);
	sb_add(&creq, "\n");
	sb_add(&creq, query);
	sb_add(&creq, "\n");
	for (size_t i = 0; i < n_headers; i++) {
		sb_add(&creq, headers[i].name);
		sb_add(&creq, ":");
		sb_add(&creq, headers[i].value);
		sb_add(&creq, "\n");
	}
	sb_add(&creq, "\n");
	sb_add(&creq, signed_headers.data ? signed_headers.data : "");
	sb_add(&creq, "\n");
	sb_add(&creq, payload_sha256);
	if (creq.oom || signed_headers.oom)
		goto out;
	cat_s3_sha256_hex(creq.data, creq.len, creq_hash);

	sb_add(&sts, "AWS4-HMAC-SHA256\n");
	sb_add(&sts, amz_date);
	sb_add(&sts, "\n");
	sb_add(&sts, scope);
	sb_add(&sts, "\n");
	sb_add(&sts, creq_hash);
	if (sts.oom)
		goto out;

	if (asprintf(&key0, "AWS4%s", secret_key) < 0) {
		key0 = NULL;
		goto out;
	}
	hmac_sha256(key0, strlen(key0), date, k_date);
	hmac_sha256(k_date, 32, region, k_region);
	hmac_sha256(k_region, 32, "s3", k_service);
	hmac_sha256(k_service, 32, "aws4_request", k_signing);
	hmac_sha256(k_signing, 32, sts.data, sig);
	hex(sig, 32, signature);

	sb_add(&auth, "AWS4-HMAC-SHA256 Credential=");
	sb_add(&auth, access_key);
	sb_add(&auth, "/");
	sb_add(&auth, scope);
	sb_add(&auth, ", SignedHeaders=");
	sb_add(&auth, signed_headers.data);
	sb_add(&auth, ", Signature=");
	sb_add(&auth, signature);
	if (auth.oom) {
		free(auth.data);
		auth.data = NULL;
	}
out:
	/* the secret key, the keys derived from it, and the canonical request
	 * (it holds the session token) */
	if (key0) {
		OPENSSL_cleanse(key0, strlen(key0));
		free(key0);
	}
	OPENSSL_cleanse(k_date, sizeof(k_date));
	OPENSSL_cleanse(k_region, sizeof(k_region));
	OPENSSL_cleanse(k_service, sizeof(k_service));
	OPENSSL_cleanse(k_signing, sizeof(k_signing));
	if (creq.data)
		OPENSSL_cleanse(creq.data, creq.cap);
	free(query);
	free(creq.data);
	free(signed_headers.data);
	free(sts.data);
	return auth.data;
}

/* --- options ------------------------------------------------------------------------------------ */

void cat_s3_options_from_config(cat_s3_options_t *opts, const cat_config_t *cfg)
{
	memset(opts, 0, sizeof(*opts));
	opts->endpoint = cat_config_str(cfg, "CATALYST_S3_ENDPOINT");
	opts->region = cat_config_str(cfg, "CATALYST_S3_REGION");
	opts->bucket = cat_config_str(cfg, "CATALYST_S3_BUCKET");
	opts->access_key = cat_config_str(cfg, "CATALYST_S3_ACCESS_KEY");
	opts->secret_key = cat_config_str(cfg, "CATALYST_S3_SECRET_KEY");
	opts->session_token = cat_config_str(cfg, "CATALYST_S3_SESSION_TOKEN");
	opts->path_style = cat_config_bool(cfg, "CATALYST_S3_PATH_STYLE");
	opts->ca_file = cat_config_str(cfg, "CATALYST_S3_CA_FILE");
	opts->tls_verify = cat_config_bool(cfg, "CATALYST_S3_TLS_VERIFY");
	opts->part_size = (size_t)cat_config_int(cfg, "CATALYST_S3_PART_SIZE_MB") * 1024 * 1024;
	opts->max_retries = (int)cat_config_int(cfg, "CATALYST_S3_MAX_RETRIES");
	opts->backoff_ms = (int)cat_config_int(cfg, "CATALYST_S3_RETRY_BACKOFF_MS");
	opts->timeout_s = (int)cat_config_int(cfg, "CATALYST_S3_TIMEOUT_S");
	opts->request_timeout_ms = (int)cat_config_int(cfg, "CATALYST_S3_REQUEST_TIMEOUT_MS");
}

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

cat_err_t cat_s3_new(cat_s3_t **out, const cat_s3_options_t *opts, char *errstr, size_t errstr_size)
{
	cat_s3_t *s3;
	const char *rest;
	size_t host_len;

	*out = NULL;
	pthread_once(&global_once, global_init);
	if (!opts->endpoint || !opts->region || !*opts->region || !opts->bucket || !*opts->bucket ||
	    !opts->access_key || !*opts->access_key || !opts->secret_key || !*opts->secret_key)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "s3: endpoint, region, bucket, access key and secret key are required");
	if (strncmp(opts->endpoint, "https://", 8) == 0)
		rest = opts->endpoint + 8;
	else if (strncmp(opts->endpoint, "http://", 7) == 0)
		rest = opts->endpoint + 7;
	else
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "s3: endpoint must start with http:// or https://");
	host_len = strcspn(rest, "/?#");
	if (host_len == 0 || (rest[host_len] && strcmp(rest + host_len, "/") != 0))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "s3: endpoint must be scheme://host[:port] without a path");
	for (const char *b = opts->bucket; *b; b++)
		if (!(islower((unsigned char)*b) || isdigit((unsigned char)*b) || *b == '-' || *b == '.'))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "s3: bucket name may hold only a-z, 0-9, '-' and '.'");
	if (opts->part_size < CAT_S3_MIN_PART_SIZE)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "s3: part size must be at least 5 MiB");

	if (!(s3 = calloc(1, sizeof(*s3))))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	s3->scheme = strndup(opts->endpoint, (size_t)(rest - opts->endpoint - 3));
	s3->hostport = strndup(rest, host_len);
	s3->region = strdup(opts->region);
	s3->bucket = strdup(opts->bucket);
	s3->access_key = strdup(opts->access_key);
	s3->secret_key = strdup(opts->secret_key);
	s3->session_token = dup_or_null(opts->session_token);
	s3->ca_file = dup_or_null(opts->ca_file);
	s3->path_style = opts->path_style;
	s3->tls_verify = opts->tls_verify;
	s3->part_size = opts->part_size;
	s3->max_retries = opts->max_retries;
	s3->backoff_ms = opts->backoff_ms > 0 ? opts->backoff_ms : 200;
	s3->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : 60;
	s3->request_timeout_ms = opts->request_timeout_ms > 0 ? opts->request_timeout_ms : DEFAULT_REQUEST_TIMEOUT_MS;
	s3->cancel = opts->cancel;
	s3->curl = curl_easy_init();
	if (!s3->scheme || !s3->hostport || !s3->region || !s3->bucket || !s3->access_key || !s3->secret_key ||
	    !s3->curl || (opts->session_token && *opts->session_token && !s3->session_token) ||
	    (opts->ca_file && *opts->ca_file && !s3->ca_file)) {
		cat_s3_destroy(s3);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	*out = s3;
	return CAT_OK;
}

void cat_s3_destroy(cat_s3_t *s3)
{
	if (!s3)
		return;
	if (s3->curl)
		curl_easy_cleanup(s3->curl);
	free(s3->scheme);
	free(s3->hostport);
	free(s3->region);
	free(s3->bucket);
	free(s3->access_key);
	if (s3->secret_key) {
		OPENSSL_cleanse(s3->secret_key, strlen(s3->secret_key));
		free(s3->secret_key);
	}
	if (s3->session_token) {
		OPENSSL_cleanse(s3->session_token, strlen(s3->session_token));
		free(s3->session_token);
	}
	free(s3->ca_file);
	free(s3);
}

/* --- one request ------------------------------------------------------------------------------- */

typedef struct s3_req {
	const char *method;
	const char *key; /* NULL: the bucket */
	const cat_s3_param_t *params;
	size_t n_params;
	const void *body;
	size_t body_len;
	const char *content_type; /* NULL: application/octet-stream */
	const char *payload_hash; /* NULL: computed from body */
	cat_s3_write_fn fn;	  /* streams a 2xx body; NULL: kept in resp.body */
	void *opaque;
	size_t body_max; /* what resp.body may hold (0: ERROR_BODY_MAX) */
} s3_req_t;

typedef struct s3_resp {
	CURL *curl;
	long status;
	sbuf_t body;
	bool body_truncated;
	char etag[256];
	const s3_req_t *req;
	uint64_t delivered; /* bytes given to req->fn, over every attempt */
	bool reader_stopped;
} s3_resp_t;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *opaque)
{
	s3_resp_t *resp = opaque;
	size_t n = size * nmemb;
	long status = 0;

	curl_easy_getinfo(resp->curl, CURLINFO_RESPONSE_CODE, &status);
	if (resp->req->fn && status >= 200 && status < 300) {
		if (resp->req->fn(ptr, n, resp->req->opaque) != 0) {
			resp->reader_stopped = true;
			return 0;
		}
		resp->delivered += n;
		return n;
	}
	size_t max = resp->req->body_max ? resp->req->body_max : ERROR_BODY_MAX;
	if (resp->body.len + n > max && resp->req->body_max && status >= 200 && status < 300) {
		/* a listing page larger than any store sends: stop reading now */
		resp->body_truncated = true;
		return 0;
	}
	if (resp->body.len + n > max) {
		resp->body_truncated = true;
		n = max > resp->body.len ? max - resp->body.len : 0;
		if (n)
			sb_addn(&resp->body, ptr, n);
		return size * nmemb;
	}
	sb_addn(&resp->body, ptr, n);
	return resp->body.oom ? 0 : n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *opaque)
{
	s3_resp_t *resp = opaque;
	size_t n = size * nitems;

	if (n > 5 && strncasecmp(buf, "etag:", 5) == 0) {
		const char *v = buf + 5;
		size_t len = n - 5;

		while (len && (*v == ' ' || *v == '\t'))
			v++, len--;
		while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
			len--;
		if (len < sizeof(resp->etag)) {
			memcpy(resp->etag, v, len);
			resp->etag[len] = '\0';
		}
	}
	return n;
}

/* The text of the first <tag>...</tag> in xml with the five XML entities
 * decoded, or NULL. malloc'd. */
static char *xml_value(const char *xml, const char *tag, const char **after)
{
	char open[64], close[64];
	const char *s, *e;
	char *out, *o;

	if (!xml)
		return NULL;
	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	if (!(s = strstr(xml, open)))
		return NULL;
	s += strlen(open);
	if (!(e = strstr(s, close)))
		return NULL;
	if (after)
		*after = e + strlen(close);
	if (!(out = malloc((size_t)(e - s) + 1)))
		return NULL;
	for (o = out; s < e;) {
		static const struct {
			const char *ent;
			char c;
		} ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
		bool done = false;

		if (*s == '&')
			for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++)
				if (strncmp(s, ents[i].ent, strlen(ents[i].ent)) == 0) {
					*o++ = ents[i].c;
					s += strlen(ents[i].ent);
					done = true;
					break;
				}
		if (!done)
			*o++ = *s++;
	}
	*o = '\0';
	return out;
}

static bool curl_error_fatal(CURLcode rc)
{
	switch (rc) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_OUT_OF_MEMORY:
		return true;
	default:
		return false;
	}
}

static const char *what_of(const s3_req_t *req)
{
	return req->key ? req->key : "";
}

/* Appends "name: value" to *list, built to its length (a session token
 * from STS or IRSA runs to several KiB); the copy that libcurl does not own
 * is wiped. False when out of memory (*list is kept for freeing). */
static bool header_add(struct curl_slist **list, const char *name, const char *value)
{
	char *line = NULL;
	struct curl_slist *grown;
	int len = asprintf(&line, "%s: %s", name, value);

	if (len < 0)
		return false;
	grown = curl_slist_append(*list, line);
	OPENSSL_cleanse(line, (size_t)len);
	free(line);
	if (!grown)
		return false;
	*list = grown;
	return true;
}

/* Frees a header list, wiping it first (it holds the signature and the
 * session token). */
static void headers_free(struct curl_slist *list)
{
	for (struct curl_slist *h = list; h; h = h->next)
		if (h->data)
			OPENSSL_cleanse(h->data, strlen(h->data));
	curl_slist_free_all(list);
}

/* One attempt. Returns the class of the outcome. */
static cat_err_t perform_once(cat_s3_t *s3, CURL *curl, const s3_req_t *req, s3_resp_t *resp, char *errstr,
			      size_t errstr_size)
{
	char amz_date[17], hash[65], curl_err[CURL_ERROR_SIZE] = "", range[64];
	char *query = NULL, *enc_key = NULL, *auth = NULL, *url = NULL, *canonical_uri = NULL;
	char host[512];
	struct curl_slist *headers = NULL;
	cat_s3_header_t sh[5];
	size_t n_sh = 0;
	struct tm tm;
	time_t now = time(NULL);
	const char *content_type = req->content_type ? req->content_type : "application/octet-stream";
	cat_err_t err;
	CURLcode rc;
	bool ok = true;

	free(resp->body.data);
	resp->body = (sbuf_t){0};
	resp->body_truncated = false;
	resp->etag[0] = '\0';
	resp->status = 0;
	resp->curl = curl;
	resp->req = req;

	gmtime_r(&now, &tm);
	strftime(amz_date, sizeof(amz_date), "%Y%m%dT%H%M%SZ", &tm);
	if (req->payload_hash)
		snprintf(hash, sizeof(hash), "%s", req->payload_hash);
	else if (req->body_len == 0)
		snprintf(hash, sizeof(hash), "%s", EMPTY_SHA256);
	else
		cat_s3_sha256_hex(req->body, req->body_len, hash);

	query = query_string(req->params, req->n_params, false);
	enc_key = cat_s3_uri_encode(req->key ? req->key : "", true);
	if (!query || !enc_key) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	if (s3->path_style) {
		snprintf(host, sizeof(host), "%s", s3->hostport);
		if (req->key)
			err = asprintf(&canonical_uri, "/%s/%s", s3->bucket, enc_key) < 0 ? CAT_ERR_FATAL : CAT_OK;
		else
			err = asprintf(&canonical_uri, "/%s", s3->bucket) < 0 ? CAT_ERR_FATAL : CAT_OK;
	} else {
		snprintf(host, sizeof(host), "%s.%s", s3->bucket, s3->hostport);
		err = asprintf(&canonical_uri, "/%s", enc_key) < 0 ? CAT_ERR_FATAL : CAT_OK;
	}
	if (err != CAT_OK) {
		canonical_uri = NULL;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	if (asprintf(&url, "%s://%s%s%s%s", s3->scheme, host, canonical_uri, *query ? "?" : "", query) < 0) {
		url = NULL;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}

	/* sorted by name */
	sh[n_sh++] = (cat_s3_header_t){"content-type", content_type};
	sh[n_sh++] = (cat_s3_header_t){"host", host};
	sh[n_sh++] = (cat_s3_header_t){"x-amz-content-sha256", hash};
	sh[n_sh++] = (cat_s3_header_t){"x-amz-date", amz_date};
	if (s3->session_token)
		sh[n_sh++] = (cat_s3_header_t){"x-amz-security-token", s3->session_token};
	auth = cat_s3_sign(s3->access_key, s3->secret_key, s3->region, amz_date, req->method, canonical_uri,
			   req->params, req->n_params, sh, n_sh, hash);
	if (!auth) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}
	for (size_t i = 0; ok && i < n_sh; i++)
		ok = header_add(&headers, sh[i].name, sh[i].value);
	ok = ok && header_add(&headers, "Authorization", auth);
	if (ok) { /* no "Expect: 100-continue" */
		struct curl_slist *grown = curl_slist_append(headers, "Expect:");

		ok = grown != NULL;
		headers = grown ? grown : headers;
	}
	if (ok && req->fn && resp->delivered > 0) {
		/* resume a broken download where it stopped */
		snprintf(range, sizeof(range), "bytes=%llu-", (unsigned long long)resp->delivered);
		ok = header_add(&headers, "Range", range);
	}
	if (!ok) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto out;
	}

	curl_easy_reset(curl);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)s3->timeout_s);
	/* the whole attempt, however the bytes trickle */
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)s3->request_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, s3->tls_verify ? 1L : 0L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, s3->tls_verify ? 2L : 0L);
	if (s3->ca_file)
		curl_easy_setopt(curl, CURLOPT_CAINFO, s3->ca_file);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, resp);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, resp);
	if (strcmp(req->method, "HEAD") == 0) {
		curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
	} else if (strcmp(req->method, "GET") != 0) {
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req->method);
		if (strcmp(req->method, "DELETE") != 0) {
			curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->body_len ? req->body : "");
		}
	}

	rc = curl_easy_perform(curl);
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
	if (resp->reader_stopped) {
		if (!errstr[0])
			cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "could not %s %s/%s: stopped by the reader",
				    req->method, s3->bucket, what_of(req));
		err = CAT_ERR_PERMANENT;
		goto out;
	}
	if (rc == CURLE_WRITE_ERROR && resp->body_truncated) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				  "could not %s %s/%s: a response larger than %zu bytes", req->method, s3->bucket,
				  what_of(req), req->body_max);
		goto out;
	}
	if (rc != CURLE_OK) {
		err = cat_err_set(errstr, errstr_size, curl_error_fatal(rc) ? CAT_ERR_FATAL : CAT_ERR_RETRIABLE,
				  "could not %s %s/%s: %s", req->method, s3->bucket, what_of(req),
				  curl_err[0] ? curl_err : curl_easy_strerror(rc));
		goto out;
	}
	if (resp->body.oom) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory reading a response");
		goto out;
	}
	if (resp->status >= 200 && resp->status < 300) {
		/* CompleteMultipartUpload and CopyObject can fail inside a 200 */
		char *code = strstr(resp->body.data ? resp->body.data : "", "<Error>")
				     ? xml_value(resp->body.data, "Code", NULL)
				     : NULL;

		if (code) {
			char *msg = xml_value(resp->body.data, "Message", NULL);

			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not %s %s/%s: %s: %s",
					  req->method, s3->bucket, what_of(req), code, msg ? msg : "");
			free(code);
			free(msg);
			goto out;
		}
		err = CAT_OK;
		goto out;
	}
	{
		char *code = xml_value(resp->body.data, "Code", NULL);
		char *msg = xml_value(resp->body.data, "Message", NULL);

		err = cat_err_class_http(resp->status);
		if (code && strcmp(code, "NoSuchBucket") == 0)
			err = CAT_ERR_FATAL;
		else if (code && (strcmp(code, "RequestTimeout") == 0 || strcmp(code, "SlowDown") == 0 ||
				  strcmp(code, "InternalError") == 0 || strcmp(code, "RequestTimeTooSkewed") == 0))
			err = CAT_ERR_RETRIABLE;
		cat_err_set(errstr, errstr_size, err, "could not %s %s/%s: HTTP %ld%s%s%s%s%s", req->method,
			    s3->bucket, what_of(req), resp->status, code ? " " : "", code ? code : "",
			    msg ? ": " : "", msg ? msg : "",
			    err == CAT_ERR_FATAL && resp->status == 403 ? " (check the access key and secret key)"
									 : "");
		free(code);
		free(msg);
	}
out:
	headers_free(headers);
	if (auth) {
		OPENSSL_cleanse(auth, strlen(auth));
		free(auth);
	}
	free(url);
	free(canonical_uri);
	free(enc_key);
	free(query);
	return err;
}

/* Sleeps the n-th retry's delay (cat_backoff_delay, at most 30 s); false
 * when cancelled meanwhile. */
static bool backoff_sleep(cat_s3_t *s3, int attempt)
{
	int64_t until = cat_time_mono_us() + cat_backoff_delay(s3->backoff_ms, RETRY_DELAY_MAX_MS, attempt) * 1000;

	while (cat_time_mono_us() < until) {
		if (s3->cancel && *s3->cancel)
			return false;
		usleep(20000);
	}
	return true;
}

/* One request with retries of transient failures. Every attempt ends
 * within request_timeout_ms; a streamed GET that delivered bytes before its
 * attempt ended resumes where it stopped without using up a retry when it
 * moved at least RESUME_PROGRESS_MIN bytes (an object larger than one
 * deadline's worth still arrives; a trickle does not). */
static cat_err_t perform(cat_s3_t *s3, CURL *curl, const s3_req_t *req, s3_resp_t *resp, char *errstr,
			 size_t errstr_size)
{
	cat_err_t err;

	for (int attempt = 0;; attempt++) {
		uint64_t delivered = resp->delivered;

		if (errstr_size)
			errstr[0] = '\0';
		err = perform_once(s3, curl, req, resp, errstr, errstr_size);
		if (err == CAT_ERR_RETRIABLE && req->fn && resp->delivered >= delivered + RESUME_PROGRESS_MIN)
			attempt = 0; /* progress: the retries start over */
		if (err != CAT_ERR_RETRIABLE || attempt >= s3->max_retries)
			return err;
		cat_log_write(CAT_LOG_LEVEL_WARN, "S3", "%s: retry %d of %d", errstr, attempt + 1, s3->max_retries);
		if (!backoff_sleep(s3, attempt))
			return err;
	}
}

static void resp_free(s3_resp_t *resp)
{
	free(resp->body.data);
	resp->body = (sbuf_t){0};
}

/* --- simple operations ----------------------------------------------------------------------- */

cat_err_t cat_s3_check(cat_s3_t *s3, char *errstr, size_t errstr_size)
{
	/* HEAD has no body to tell why: a one-key listing does */
	cat_s3_param_t params[] = {{"list-type", "2"}, {"max-keys", "1"}};
	s3_req_t req = {.method = "GET", .params = params, .n_params = 2};
	s3_resp_t resp = {0};
	cat_err_t err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);

	if (err == CAT_ERR_PERMANENT && resp.status == 404)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "bucket %s: not found", s3->bucket);
	resp_free(&resp);
	return err;
}

cat_err_t cat_s3_put(cat_s3_t *s3, const char *key, const void *data, size_t len, const char *content_type,
		     char *errstr, size_t errstr_size)
{
	s3_req_t req = {.method = "PUT", .key = key, .body = data, .body_len = len, .content_type = content_type};
	s3_resp_t resp = {0};
	cat_err_t err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);

	resp_free(&resp);
	return err;
}

cat_err_t cat_s3_get(cat_s3_t *s3, const char *key, cat_s3_write_fn fn, void *opaque, bool *not_found,
		     char *errstr, size_t errstr_size)
{
	s3_req_t req = {.method = "GET", .key = key, .fn = fn, .opaque = opaque};
	s3_resp_t resp = {0};
	cat_err_t err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);

	if (not_found)
		*not_found = err != CAT_OK && resp.status == 404;
	resp_free(&resp);
	return err;
}

cat_err_t cat_s3_head(cat_s3_t *s3, const char *key, bool *exists, uint64_t *size, char *errstr,
		      size_t errstr_size)
{
	s3_req_t req = {.method = "HEAD", .key = key};
	s3_resp_t resp = {0};
	cat_err_t err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);
	curl_off_t cl = 0;

	*exists = false;
	if (size)
		*size = 0;
	if (err == CAT_OK) {
		*exists = true;
		if (size && curl_easy_getinfo(s3->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK && cl > 0)
			*size = (uint64_t)cl;
	} else if (resp.status == 404) {
		err = CAT_OK;
	}
	resp_free(&resp);
	return err;
}

cat_err_t cat_s3_delete(cat_s3_t *s3, const char *key, char *errstr, size_t errstr_size)
{
	s3_req_t req = {.method = "DELETE", .key = key};
	s3_resp_t resp = {0};
	cat_err_t err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);

	if (err != CAT_OK && resp.status == 404)
		err = CAT_OK;
	resp_free(&resp);
	return err;
}

/* A listing the store answered in a way that cannot be taken as complete
 * (a page over SMALL_BODY_MAX, a continuation token repeated, keys going
 * backwards, a truncated page without a way on): never retried, never
 * taken as the whole listing. */
static cat_err_t list_broken(const cat_s3_t *s3, const char *what, const char *prefix, const char *why,
			     char *errstr, size_t errstr_size)
{
	return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "could not list %s of %s/%s: %s", what,
			   s3->bucket, prefix ? prefix : "", why);
}

cat_err_t cat_s3_list(cat_s3_t *s3, const char *prefix, cat_s3_list_fn fn, void *opaque, char *errstr,
		      size_t errstr_size)
{
	char *token = NULL, *last_key = NULL;
	int empty_pages = 0;
	cat_err_t err = CAT_OK;

	for (;;) {
		cat_s3_param_t params[3] = {{"list-type", "2"}, {"prefix", prefix ? prefix : ""}, {NULL, NULL}};
		size_t n = 2;
		s3_req_t req = {.method = "GET", .params = params, .body_max = SMALL_BODY_MAX};
		s3_resp_t resp = {0};
		const char *p;
		char *contents, *truncated, *next = NULL;
		bool stop = false, first = true, any = false;

		if (token)
			params[n++] = (cat_s3_param_t){"continuation-token", token};
		req.n_params = n;
		err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);
		if (resp.body_truncated)
			err = list_broken(s3, "objects", prefix, "a page larger than 16 MiB", errstr, errstr_size);
		p = resp.body.data ? resp.body.data : "";
		while (err == CAT_OK && !stop && (contents = xml_value(p, "Contents", &p))) {
			char *k = xml_value(contents, "Key", NULL), *sz = xml_value(contents, "Size", NULL);

			if (k && first && last_key && strcmp(k, last_key) <= 0)
				err = list_broken(s3, "objects", prefix,
						  "a page starts at or before a key listed already (a listing that "
						  "would not end)",
						  errstr, errstr_size);
			else if (k)
				stop = fn(k, sz ? strtoull(sz, NULL, 10) : 0, opaque) != 0;
			if (k) {
				first = false;
				any = true;
				free(last_key);
				last_key = k;
				k = NULL;
			}
			free(k);
			free(sz);
			free(contents);
		}
		truncated = err == CAT_OK ? xml_value(resp.body.data, "IsTruncated", NULL) : NULL;
		if (!stop && truncated && strcmp(truncated, "true") == 0) {
			next = xml_value(resp.body.data, "NextContinuationToken", NULL);
			empty_pages = any ? 0 : empty_pages + 1;
			if (!next || !*next)
				err = list_broken(s3, "objects", prefix, "a truncated page without a continuation token",
						  errstr, errstr_size);
			else if (token && strcmp(next, token) == 0)
				err = list_broken(s3, "objects", prefix,
						  "the store repeated its continuation token (a listing that would not "
						  "end)",
						  errstr, errstr_size);
			else if (empty_pages > EMPTY_PAGES_MAX)
				err = list_broken(s3, "objects", prefix,
						  "too many truncated pages without an object in a row", errstr,
						  errstr_size);
		}
		free(truncated);
		resp_free(&resp);
		free(token);
		token = next;
		if (err != CAT_OK || !token)
			break;
	}
	free(token);
	free(last_key);
	return err;
}

cat_err_t cat_s3_list_uploads(cat_s3_t *s3, const char *prefix, cat_s3_uploads_fn fn, void *opaque,
			      char *errstr, size_t errstr_size)
{
	char *key_marker = NULL, *id_marker = NULL;
	cat_err_t err = CAT_OK;

	for (;;) {
		cat_s3_param_t params[4] = {{"uploads", ""}, {"prefix", prefix ? prefix : ""}};
		size_t n = 2;
		s3_req_t req = {.method = "GET", .params = params, .body_max = SMALL_BODY_MAX};
		s3_resp_t resp = {0};
		const char *p;
		char *upload, *truncated, *next_key = NULL, *next_id = NULL;
		bool stop = false;

		if (key_marker)
			params[n++] = (cat_s3_param_t){"key-marker", key_marker};
		if (id_marker)
			params[n++] = (cat_s3_param_t){"upload-id-marker", id_marker};
		req.n_params = n;
		err = perform(s3, s3->curl, &req, &resp, errstr, errstr_size);
		if (resp.body_truncated)
			err = list_broken(s3, "uploads", prefix, "a page larger than 16 MiB", errstr, errstr_size);
		p = resp.body.data ? resp.body.data : "";
		while (err == CAT_OK && !stop && (upload = xml_value(p, "Upload", &p))) {
			char *k = xml_value(upload, "Key", NULL), *id = xml_value(upload, "UploadId", NULL);

			if (k && id)
				stop = fn(k, id, opaque) != 0;
			free(k);
			free(id);
			free(upload);
		}
		truncated = err == CAT_OK ? xml_value(resp.body.data, "IsTruncated", NULL) : NULL;
		if (!stop && truncated && strcmp(truncated, "true") == 0) {
			next_key = xml_value(resp.body.data, "NextKeyMarker", NULL);
			next_id = xml_value(resp.body.data, "NextUploadIdMarker", NULL);
			if (!next_key || !*next_key)
				err = list_broken(s3, "uploads", prefix, "a truncated page without a key marker", errstr,
						  errstr_size);
			else if (key_marker && strcmp(next_key, key_marker) == 0 &&
				 strcmp(next_id ? next_id : "", id_marker ? id_marker : "") == 0)
				err = list_broken(s3, "uploads", prefix,
						  "the store repeated its markers (a listing that would not end)", errstr,
						  errstr_size);
		}
		free(truncated);
		resp_free(&resp);
		free(key_marker);
		free(id_marker);
		key_marker = id_marker = NULL;
		if (err != CAT_OK || !next_key) {
			free(next_key);
			free(next_id);
			break;
		}
		key_marker = next_key;
		id_marker = next_id;
	}
	return err;
}

static cat_err_t abort_with(cat_s3_t *s3, CURL *curl, const char *key, const char *upload_id, char *errstr,
			    size_t errstr_size)
{
	cat_s3_param_t params[] = {{"uploadId", upload_id}};
	s3_req_t req = {.method = "DELETE", .key = key, .params = params, .n_params = 1};
	s3_resp_t resp = {0};
	cat_err_t err = perform(s3, curl, &req, &resp, errstr, errstr_size);

	if (err != CAT_OK && resp.status == 404)
		err = CAT_OK;
	resp_free(&resp);
	return err;
}

cat_err_t cat_s3_abort_upload(cat_s3_t *s3, const char *key, const char *upload_id, char *errstr,
			      size_t errstr_size)
{
	return abort_with(s3, s3->curl, key, upload_id, errstr, errstr_size);
}

/* --- multipart upload ---------------------------------------------------------------------- */

enum { UP_OPEN, UP_FAILED, UP_DONE, UP_ABORTED };

struct cat_s3_upload {
	cat_s3_t *s3;
	char *key, *upload_id, *content_type;
	int state;

	/* the writer fills `fill`; the thread sends `send` */
	unsigned char *fill, *send;
	size_t fill_len, fill_cap, send_len, send_cap;
	int parts_submitted; /* part numbers handed to the thread */

	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool send_pending, quit;
	int send_part;
	CURL *curl; /* the thread's */
	cat_err_t bg_err;
	char bg_errstr[512];

	char **etags;
	size_t etags_cap;
};

static size_t part_size_of(const cat_s3_upload_t *up, int part)
{
	int step = (part - 1) / CAT_S3_PARTS_PER_STEP;

	return up->s3->part_size << (step < 8 ? step : 8);
}

/* A part or the completion answered 404 NoSuchUpload: the store lost the
 * upload (a restarted or failed-over endpoint, or the upload was aborted
 * meanwhile). Not a fault of the request: the caller starts over. */
static cat_err_t upload_vanished(const cat_s3_upload_t *up, char *errstr, size_t errstr_size)
{
	char was[512];

	snprintf(was, sizeof(was), "%s", errstr);
	return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
			   "the multipart upload of %s/%s is gone (%s): it must start over", up->s3->bucket, up->key,
			   was);
}

static void *upload_thread(void *opaque)
{
	cat_s3_upload_t *up = opaque;

	pthread_mutex_lock(&up->lock);
	for (;;) {
		while (!up->send_pending && !up->quit)
			pthread_cond_wait(&up->cond, &up->lock);
		if (!up->send_pending && up->quit)
			break;
		int part = up->send_part;
		pthread_mutex_unlock(&up->lock);

		char num[16], errstr[512] = "";
		snprintf(num, sizeof(num), "%d", part);
		cat_s3_param_t params[] = {{"partNumber", num}, {"uploadId", up->upload_id}};
		s3_req_t req = {.method = "PUT", .key = up->key, .params = params, .n_params = 2,
				.body = up->send, .body_len = up->send_len};
		s3_resp_t resp = {0};
		cat_err_t err = perform(up->s3, up->curl, &req, &resp, errstr, sizeof(errstr));
		char *etag = NULL;

		if (err == CAT_ERR_PERMANENT && resp.status == 404)
			err = upload_vanished(up, errstr, sizeof(errstr));
		if (err == CAT_OK && !resp.etag[0])
			err = cat_err_set(errstr, sizeof(errstr), CAT_ERR_RETRIABLE,
					  "could not PUT %s/%s part %d: no ETag in the reply", up->s3->bucket, up->key,
					  part);
		if (err == CAT_OK && !(etag = strdup(resp.etag)))
			err = cat_err_set(errstr, sizeof(errstr), CAT_ERR_FATAL, "out of memory");
		resp_free(&resp);

		pthread_mutex_lock(&up->lock);
		if (err == CAT_OK) {
			up->etags[part - 1] = etag;
		} else if (up->bg_err == CAT_OK) {
			up->bg_err = err;
			snprintf(up->bg_errstr, sizeof(up->bg_errstr), "%s", errstr);
		}
		up->send_pending = false;
		pthread_cond_broadcast(&up->cond);
	}
	pthread_mutex_unlock(&up->lock);
	return NULL;
}

/* Waits until the thread is idle; its error, if any. */
static cat_err_t wait_idle(cat_s3_upload_t *up, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	pthread_mutex_lock(&up->lock);
	while (up->send_pending)
		pthread_cond_wait(&up->cond, &up->lock);
	err = up->bg_err;
	if (err != CAT_OK)
		cat_err_set(errstr, errstr_size, err, "%s", up->bg_errstr);
	pthread_mutex_unlock(&up->lock);
	return err;
}

/* Hands the filled buffer to the thread as the next part. */
static cat_err_t submit(cat_s3_upload_t *up, char *errstr, size_t errstr_size)
{
	unsigned char *tmp;
	size_t tmp_cap;
	cat_err_t err;

	if (up->parts_submitted >= CAT_S3_MAX_PARTS)
		return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT,
				   "could not upload %s: more than %d parts", up->key, CAT_S3_MAX_PARTS);
	if ((size_t)up->parts_submitted >= up->etags_cap) {
		size_t cap = up->etags_cap ? up->etags_cap * 2 : 64;
		char **grown = realloc(up->etags, cap * sizeof(*grown));

		if (!grown)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		memset(grown + up->etags_cap, 0, (cap - up->etags_cap) * sizeof(*grown));
		up->etags = grown;
		up->etags_cap = cap;
	}
	if ((err = wait_idle(up, errstr, errstr_size)) != CAT_OK)
		return err;
	pthread_mutex_lock(&up->lock);
	tmp = up->send;
	tmp_cap = up->send_cap;
	up->send = up->fill;
	up->send_cap = up->fill_cap;
	up->send_len = up->fill_len;
	up->fill = tmp;
	up->fill_cap = tmp_cap;
	up->fill_len = 0;
	up->send_part = ++up->parts_submitted;
	up->send_pending = true;
	pthread_cond_broadcast(&up->cond);
	pthread_mutex_unlock(&up->lock);
	return CAT_OK;
}

cat_err_t cat_s3_upload_begin(cat_s3_t *s3, const char *key, const char *content_type, cat_s3_upload_t **out,
			      char *errstr, size_t errstr_size)
{
	cat_s3_param_t params[] = {{"uploads", ""}};
	s3_req_t req = {.method = "POST", .key = key, .params = params, .n_params = 1, .content_type = content_type};
	s3_resp_t resp = {0};
	cat_s3_upload_t *up;
	cat_err_t err;

	*out = NULL;
	if (!(up = calloc(1, sizeof(*up))))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	up->s3 = s3;
	pthread_mutex_init(&up->lock, NULL);
	pthread_cond_init(&up->cond, NULL);
	up->key = strdup(key);
	up->content_type = strdup(content_type ? content_type : "application/octet-stream");
	up->curl = curl_easy_init();
	up->fill_cap = up->send_cap = s3->part_size;
	up->fill = malloc(up->fill_cap);
	up->send = malloc(up->send_cap);
	if (!up->key || !up->content_type || !up->curl || !up->fill || !up->send) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	/* the upload's own handle: uploads run on several threads at once, and
	 * s3->curl belongs to the thread that created s3 */
	if ((err = perform(s3, up->curl, &req, &resp, errstr, errstr_size)) != CAT_OK)
		goto error;
	if (!(up->upload_id = xml_value(resp.body.data, "UploadId", NULL))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "could not start the upload of %s/%s: no UploadId in the reply", s3->bucket, key);
		goto error;
	}
	resp_free(&resp);
	if (pthread_create(&up->thread, NULL, upload_thread, up) != 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not start the upload thread");
		goto error;
	}
	up->thread_started = true;
	*out = up;
	return CAT_OK;
error:
	resp_free(&resp);
	cat_s3_upload_free(up); /* aborts it when it was created */
	return err;
}

cat_err_t cat_s3_upload_write(cat_s3_upload_t *up, const void *data, size_t len, char *errstr,
			      size_t errstr_size)
{
	const unsigned char *p = data;
	cat_err_t err;

	if (up->state != UP_OPEN)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "upload of %s is not open", up->key);
	while (len > 0) {
		size_t want = part_size_of(up, up->parts_submitted + 1), n;

		if (up->fill_cap < want) {
			unsigned char *grown = realloc(up->fill, want);

			if (!grown) {
				up->state = UP_FAILED;
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			}
			up->fill = grown;
			up->fill_cap = want;
		}
		n = want - up->fill_len < len ? want - up->fill_len : len;
		memcpy(up->fill + up->fill_len, p, n);
		up->fill_len += n;
		p += n;
		len -= n;
		if (up->fill_len == want && (err = submit(up, errstr, errstr_size)) != CAT_OK) {
			up->state = UP_FAILED;
			return err;
		}
	}
	return CAT_OK;
}

static void stop_thread(cat_s3_upload_t *up)
{
	if (!up->thread_started)
		return;
	pthread_mutex_lock(&up->lock);
	up->quit = true;
	pthread_cond_broadcast(&up->cond);
	pthread_mutex_unlock(&up->lock);
	pthread_join(up->thread, NULL);
	up->thread_started = false;
}

cat_err_t cat_s3_upload_finish(cat_s3_upload_t *up, char *errstr, size_t errstr_size)
{
	sbuf_t xml = {0};
	cat_err_t err;

	if (up->state != UP_OPEN)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "upload of %s is not open", up->key);
	/* the last part may be short (or empty when it is the only one) */
	if ((up->fill_len > 0 || up->parts_submitted == 0) && (err = submit(up, errstr, errstr_size)) != CAT_OK)
		goto error;
	if ((err = wait_idle(up, errstr, errstr_size)) != CAT_OK)
		goto error;
	stop_thread(up);

	sb_add(&xml, "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
	for (int i = 0; i < up->parts_submitted; i++) {
		sb_addf(&xml, "<Part><PartNumber>%d</PartNumber><ETag>", i + 1);
		for (const char *e = up->etags[i]; *e; e++)
			sb_add(&xml, *e == '"' ? "&quot;" : *e == '&' ? "&amp;" : (char[]){*e, 0});
		sb_add(&xml, "</ETag></Part>");
	}
	sb_add(&xml, "</CompleteMultipartUpload>");
	if (xml.oom) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	{
		cat_s3_param_t params[] = {{"uploadId", up->upload_id}};
		s3_req_t req = {.method = "POST", .key = up->key, .params = params, .n_params = 1,
				.body = xml.data, .body_len = xml.len, .content_type = "application/xml"};
		s3_resp_t resp = {0};

		err = perform(up->s3, up->curl, &req, &resp, errstr, errstr_size); /* its thread is stopped */
		resp_free(&resp);
		if (err == CAT_ERR_PERMANENT && resp.status == 404)
			err = upload_vanished(up, errstr, errstr_size);
		if (err != CAT_OK)
			goto error;
	}
	free(xml.data);
	up->state = UP_DONE;
	return CAT_OK;
error:
	free(xml.data);
	up->state = UP_FAILED;
	return err;
}

void cat_s3_upload_abort(cat_s3_upload_t *up)
{
	char errstr[512];

	if (!up || up->state == UP_DONE || up->state == UP_ABORTED)
		return;
	stop_thread(up);
	if (up->upload_id) {
		if (abort_with(up->s3, up->curl, up->key, up->upload_id, errstr, sizeof(errstr)) != CAT_OK)
			cat_log_write(CAT_LOG_LEVEL_WARN, "S3", "could not abort the upload of %s: %s", up->key,
				      errstr);
		else
			cat_log_write(CAT_LOG_LEVEL_INFO, "S3", "aborted the upload of %s", up->key);
	}
	up->state = UP_ABORTED;
}

void cat_s3_upload_free(cat_s3_upload_t *up)
{
	if (!up)
		return;
	cat_s3_upload_abort(up);
	stop_thread(up);
	for (size_t i = 0; i < up->etags_cap; i++)
		free(up->etags[i]);
	free(up->etags);
	if (up->curl)
		curl_easy_cleanup(up->curl);
	pthread_mutex_destroy(&up->lock);
	pthread_cond_destroy(&up->cond);
	free(up->fill);
	free(up->send);
	free(up->key);
	free(up->upload_id);
	free(up->content_type);
	free(up);
}

int cat_s3_upload_parts(const cat_s3_upload_t *up)
{
	return up->parts_submitted;
}

const char *cat_s3_upload_id(const cat_s3_upload_t *up)
{
	return up->upload_id;
}
