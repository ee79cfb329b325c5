#include "cat_redis.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cat_log.h"
#include "cat_time.h"

#define READ_CHUNK (64 * 1024)
#define DEFAULT_MAX_REPLY_BYTES ((size_t)64 * 1024 * 1024)
#define BURST_BUFFER_BYTES ((size_t)4 * 1024 * 1024)

struct cat_redis {
	cat_redis_url_t url;
	char address[400];
	char *password; /* effective password, NULL: none */
	char *client_name;
	int connect_timeout_ms;
	int timeout_ms;
	size_t max_reply_bytes;
	char server_version[32];
	SSL_CTX *ssl_ctx;
	char *tls_server_name;

	int fd;
	SSL *ssl;
	redisReader *reader;
	uint64_t connects;
	uint64_t script_reloads;

	/* queued commands */
	char *obuf;
	size_t olen, ocap;
	size_t n_pending;
	/* sent commands whose replies are not read yet (kept to send again
	 * after a NOSCRIPT) */
	char *ibuf;
	size_t ilen, icap;
	size_t n_inflight;
};

/* --- URL ------------------------------------------------------------------------------ */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Percent-decodes src[0, len) into dst; -1 when malformed or too long. */
static int pct_decode(char *dst, size_t dst_size, const char *src, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)src[i];

		if (c == '%') {
			int hi, lo;

			if (i + 2 >= len || (hi = hexval(src[i + 1])) < 0 || (lo = hexval(src[i + 2])) < 0)
				return -1;
			c = hi * 16 + lo;
			if (c == 0)
				return -1;
			i += 2;
		}
		if (n + 1 >= dst_size)
			return -1;
		dst[n++] = (char)c;
	}
	dst[n] = '\0';
	return 0;
}

int cat_redis_url_check(const char *url, char *why, size_t why_size)
{
	cat_redis_url_t parsed;
	cat_err_t err = cat_redis_url_parse(url, &parsed, why, why_size);

	explicit_bzero(parsed.password, sizeof(parsed.password));
	return err == CAT_OK ? 0 : -1;
}

cat_err_t cat_redis_url_parse(const char *url, cat_redis_url_t *out, char *errstr, size_t errstr_size)
{
	const char *p, *auth_end, *host_end, *end;

	memset(out, 0, sizeof(*out));
	out->port = 6379;
	if (!url)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "no Redis URL");
	if (strncmp(url, "redis://", 8) == 0) {
		p = url + 8;
	} else if (strncmp(url, "rediss://", 9) == 0) {
		p = url + 9;
		out->tls = true;
	} else {
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "must be a redis:// or rediss:// URL");
	}
	end = p + strcspn(p, "/?#");
	if (strpbrk(p, "?#"))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "URL options are not supported (use the CATALYST_REDIS_* settings)");

	/* userinfo: the last '@' before the path (a password may hold '@' only encoded) */
	auth_end = NULL;
	for (const char *c = p; c < end; c++)
		if (*c == '@')
			auth_end = c;
	if (auth_end) {
		const char *colon = memchr(p, ':', (size_t)(auth_end - p));
		size_t user_len = colon ? (size_t)(colon - p) : (size_t)(auth_end - p);

		if (pct_decode(out->user, sizeof(out->user), p, user_len) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "the URL's user name is malformed or too long");
		if (colon && pct_decode(out->password, sizeof(out->password), colon + 1,
					(size_t)(auth_end - colon - 1)) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "the URL's password is malformed or too long");
		p = auth_end + 1;
	}

	/* host: name, IPv4 or [IPv6] */
	if (*p == '[') {
		const char *close = memchr(p, ']', (size_t)(end - p));

		if (!close || close == p + 1)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the URL's IPv6 host is malformed");
		if ((size_t)(close - p - 1) >= sizeof(out->host))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the URL's host is too long");
		memcpy(out->host, p + 1, (size_t)(close - p - 1));
		host_end = close + 1;
		if (host_end < end && *host_end != ':')
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the URL's IPv6 host is malformed");
	} else {
		host_end = p;
		while (host_end < end && *host_end != ':')
			host_end++;
		if ((size_t)(host_end - p) >= sizeof(out->host))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the URL's host is too long");
		memcpy(out->host, p, (size_t)(host_end - p));
		for (const char *c = out->host; *c; c++)
			if (!isalnum((unsigned char)*c) && *c != '.' && *c != '-' && *c != '_')
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "the URL's host is malformed");
	}
	if (!out->host[0])
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the URL names no host");
	if (host_end < end) { /* ':' port */
		long port = 0;
		const char *c = host_end + 1;

		if (c == end)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "the URL's port is empty");
		for (; c < end; c++) {
			if (!isdigit((unsigned char)*c) || (port = port * 10 + (*c - '0')) > 65535)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "the URL's port must be a number from 1 to 65535");
		}
		if (port < 1)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "the URL's port must be a number from 1 to 65535");
		out->port = (int)port;
	}
	if (*end == '/' && end[1]) {
		long db = 0;

		for (const char *c = end + 1; *c; c++)
			if (!isdigit((unsigned char)*c) || (db = db * 10 + (*c - '0')) > 1000000)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "the URL's database must be a number");
		out->db = (int)db;
	}
	return CAT_OK;
}

/* --- set-up --------------------------------------------------------------------------- */

void cat_redis_opts_from_config(cat_redis_opts_t *opts, const cat_config_t *cfg, const char *client_name)
{
	memset(opts, 0, sizeof(*opts));
	opts->url = cat_config_str(cfg, "CATALYST_REDIS_URL");
	opts->password = cat_config_str(cfg, "CATALYST_REDIS_PASSWORD");
	opts->connect_timeout_ms = (int)cat_config_int(cfg, "CATALYST_REDIS_CONNECT_TIMEOUT_MS");
	opts->timeout_ms = (int)cat_config_int(cfg, "CATALYST_REDIS_TIMEOUT_MS");
	opts->tls_ca_file = cat_config_str(cfg, "CATALYST_REDIS_TLS_CA_FILE");
	opts->tls_cert_file = cat_config_str(cfg, "CATALYST_REDIS_TLS_CERT_FILE");
	opts->tls_key_file = cat_config_str(cfg, "CATALYST_REDIS_TLS_KEY_FILE");
	opts->tls_server_name = cat_config_str(cfg, "CATALYST_REDIS_TLS_SERVER_NAME");
	opts->tls_no_verify = !cat_config_bool(cfg, "CATALYST_REDIS_TLS_VERIFY");
	opts->max_reply_bytes = (size_t)cat_config_int(cfg, "CATALYST_REDIS_MAX_REPLY_BYTES");
	opts->client_name = client_name;
}

/* OpenSSL's first queued error, one line; clears the queue. */
static const char *ssl_error_text(char *buf, size_t buf_size)
{
	unsigned long e = ERR_get_error();

	if (!e) {
		snprintf(buf, buf_size, "%s", errno ? strerror(errno) : "unknown TLS error");
	} else {
		ERR_error_string_n(e, buf, buf_size);
	}
	ERR_clear_error();
	return buf;
}

static cat_err_t tls_init(cat_redis_t *redis, const cat_redis_opts_t *opts, char *errstr, size_t errstr_size)
{
	char msg[256];

	redis->ssl_ctx = SSL_CTX_new(TLS_client_method());
	if (!redis->ssl_ctx)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not create a TLS context: %s",
				   ssl_error_text(msg, sizeof(msg)));
	SSL_CTX_set_min_proto_version(redis->ssl_ctx, TLS1_2_VERSION);
	if (opts->tls_ca_file) {
		if (SSL_CTX_load_verify_locations(redis->ssl_ctx, opts->tls_ca_file, NULL) != 1)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "could not load the Redis CA file %s: %s", opts->tls_ca_file,
					   ssl_error_text(msg, sizeof(msg)));
	} else if (SSL_CTX_set_default_verify_paths(redis->ssl_ctx) != 1) {
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not load the system CA store: %s",
				   ssl_error_text(msg, sizeof(msg)));
	}
	if (!!opts->tls_cert_file != !!opts->tls_key_file)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "a Redis client certificate needs both a certificate and a key file");
	if (opts->tls_cert_file) {
		if (SSL_CTX_use_certificate_chain_file(redis->ssl_ctx, opts->tls_cert_file) != 1)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "could not load the Redis client certificate %s: %s",
					   opts->tls_cert_file, ssl_error_text(msg, sizeof(msg)));
		if (SSL_CTX_use_PrivateKey_file(redis->ssl_ctx, opts->tls_key_file, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(redis->ssl_ctx) != 1)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "could not load the Redis client key %s: %s", opts->tls_key_file,
					   ssl_error_text(msg, sizeof(msg)));
	}
	SSL_CTX_set_verify(redis->ssl_ctx, opts->tls_no_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
	redis->tls_server_name = strdup(opts->tls_server_name ? opts->tls_server_name : redis->url.host);
	if (!redis->tls_server_name)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	return CAT_OK;
}

cat_err_t cat_redis_new(cat_redis_t **out, const cat_redis_opts_t *opts, char *errstr, size_t errstr_size)
{
	cat_redis_t *redis;
	cat_err_t err;
	struct sigaction old;

	*out = NULL;
	redis = calloc(1, sizeof(*redis));
	if (!redis)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	redis->fd = -1;
	if ((err = cat_redis_url_parse(opts->url, &redis->url, errstr, errstr_size)) != CAT_OK)
		goto error;
	redis->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
	redis->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
	redis->max_reply_bytes = opts->max_reply_bytes > 0 ? opts->max_reply_bytes : DEFAULT_MAX_REPLY_BYTES;
	if (opts->password || redis->url.password[0]) {
		redis->password = strdup(opts->password ? opts->password : redis->url.password);
		if (!redis->password) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto error;
		}
	}
	/* the parsed copy of the password is not kept twice */
	explicit_bzero(redis->url.password, sizeof(redis->url.password));
	if (opts->client_name && !(redis->client_name = strdup(opts->client_name))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	snprintf(redis->address, sizeof(redis->address), "%s://%s%s%s%s%s:%d/%d",
		 redis->url.tls ? "rediss" : "redis", redis->url.user, redis->url.user[0] ? "@" : "",
		 strchr(redis->url.host, ':') ? "[" : "", redis->url.host, strchr(redis->url.host, ':') ? "]" : "",
		 redis->url.port, redis->url.db);
	if (redis->url.tls && (err = tls_init(redis, opts, errstr, errstr_size)) != CAT_OK)
		goto error;
	/* a peer closing the socket must fail a write, not kill the process */
	if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
		signal(SIGPIPE, SIG_IGN);
	*out = redis;
	return CAT_OK;

error:
	cat_redis_destroy(redis);
	return err;
}

void cat_redis_disconnect(cat_redis_t *redis)
{
	if (!redis)
		return;
	if (redis->ssl) {
		SSL_free(redis->ssl);
		redis->ssl = NULL;
	}
	if (redis->fd >= 0) {
		close(redis->fd);
		redis->fd = -1;
	}
	if (redis->reader) {
		redisReaderFree(redis->reader);
		redis->reader = NULL;
	}
	cat_redis_discard(redis);
	redis->n_inflight = 0;
	redis->ilen = 0;
}

void cat_redis_destroy(cat_redis_t *redis)
{
	if (!redis)
		return;
	cat_redis_disconnect(redis);
	SSL_CTX_free(redis->ssl_ctx);
	if (redis->password) {
		explicit_bzero(redis->password, strlen(redis->password));
		free(redis->password);
	}
	free(redis->client_name);
	free(redis->tls_server_name);
	free(redis->obuf);
	free(redis->ibuf);
	free(redis);
}

bool cat_redis_is_connected(const cat_redis_t *redis)
{
	return redis->fd >= 0;
}

const char *cat_redis_address(const cat_redis_t *redis)
{
	return redis->address;
}

const char *cat_redis_server_version(const cat_redis_t *redis)
{
	return redis->server_version;
}

uint64_t cat_redis_connects(const cat_redis_t *redis)
{
	return redis->connects;
}

uint64_t cat_redis_script_reloads(const cat_redis_t *redis)
{
	return redis->script_reloads;
}

/* --- I/O ------------------------------------------------------------------------------- */

/* Waits for `events` on the socket until deadline_us (monotonic): 0 ready,
 * -1 timed out or failed (errno). */
static int wait_fd(int fd, short events, int64_t deadline_us)
{
	for (;;) {
		int64_t left_ms = (deadline_us - cat_time_mono_us() + 999) / 1000;
		struct pollfd pfd = {.fd = fd, .events = events};
		int rc;

		if (left_ms <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		rc = poll(&pfd, 1, left_ms > 1000000 ? 1000000 : (int)left_ms);
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -1;
	}
}

/* One TCP connection to host:port within the deadline, non-blocking. */
static cat_err_t tcp_connect(cat_redis_t *redis, int64_t deadline_us, char *errstr, size_t errstr_size)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
	char port[16];
	int rc, last_errno = 0;

	snprintf(port, sizeof(port), "%d", redis->url.port);
	rc = getaddrinfo(redis->url.host, port, &hints, &res);
	if (rc != 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not resolve %s: %s",
				   redis->url.host, gai_strerror(rc));
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		int one = 1, soerr = 0;
		socklen_t soerr_len = sizeof(soerr);

		if (fd < 0) {
			last_errno = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			if (errno != EINPROGRESS || wait_fd(fd, POLLOUT, deadline_us) != 0 ||
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len) != 0 || soerr != 0) {
				last_errno = soerr ? soerr : errno;
				close(fd);
				continue;
			}
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		redis->fd = fd;
		break;
	}
	freeaddrinfo(res);
	if (redis->fd < 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not connect to %s: %s",
				   redis->address, strerror(last_errno ? last_errno : ECONNREFUSED));
	return CAT_OK;
}

static cat_err_t tls_handshake(cat_redis_t *redis, int64_t deadline_us, char *errstr, size_t errstr_size)
{
	X509_VERIFY_PARAM *param;
	unsigned char ip[16];
	bool is_ip = inet_pton(AF_INET, redis->tls_server_name, ip) == 1 ||
		     inet_pton(AF_INET6, redis->tls_server_name, ip) == 1;
	char msg[256];

	redis->ssl = SSL_new(redis->ssl_ctx);
	if (!redis->ssl || SSL_set_fd(redis->ssl, redis->fd) != 1)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not start TLS: %s",
				   ssl_error_text(msg, sizeof(msg)));
	if (!is_ip)
		SSL_set_tlsext_host_name(redis->ssl, redis->tls_server_name);
	param = SSL_get0_param(redis->ssl);
	X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, redis->tls_server_name) != 1
		  : X509_VERIFY_PARAM_set1_host(param, redis->tls_server_name, 0) != 1)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not set the TLS server name %s",
				   redis->tls_server_name);
	for (;;) {
		int rc = SSL_connect(redis->ssl), e;

		if (rc == 1)
			return CAT_OK;
		e = SSL_get_error(redis->ssl, rc);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			if (wait_fd(redis->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline_us) != 0)
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
						   "could not complete the TLS handshake with %s: %s",
						   redis->address, strerror(errno));
			continue;
		}
		if (SSL_get_verify_result(redis->ssl) != X509_V_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "TLS: the certificate of %s does not verify: %s", redis->address,
					   X509_verify_cert_error_string(SSL_get_verify_result(redis->ssl)));
		if (e == SSL_ERROR_SSL)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "TLS handshake with %s failed: %s", redis->address,
					   ssl_error_text(msg, sizeof(msg)));
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "TLS handshake with %s failed: %s",
				   redis->address, errno ? strerror(errno) : "connection closed");
	}
}

/* A buffer grown by a burst (over 4 MiB) does not stay: freed, it grows
 * again from nothing at the next use. */
static void buf_release_burst(char **buf, size_t *cap)
{
	if (*cap > BURST_BUFFER_BYTES) {
		free(*buf);
		*buf = NULL;
		*cap = 0;
	}
}

/* Writes buf[0, len) before the deadline. */
static cat_err_t write_all(cat_redis_t *redis, const char *buf, size_t len, int64_t deadline_us, char *errstr,
			   size_t errstr_size)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n;
		short want = POLLOUT;

		if (redis->ssl) {
			int chunk = len - done > (1u << 30) ? (1 << 30) : (int)(len - done);
			int rc = SSL_write(redis->ssl, buf + done, chunk);

			if (rc > 0) {
				done += (size_t)rc;
				continue;
			}
			switch (SSL_get_error(redis->ssl, rc)) {
			case SSL_ERROR_WANT_READ:
				want = POLLIN;
				break;
			case SSL_ERROR_WANT_WRITE:
				break;
			default:
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
						   "could not write to %s: %s", redis->address,
						   errno ? strerror(errno) : "connection closed");
			}
		} else {
			n = send(redis->fd, buf + done, len - done, MSG_NOSIGNAL);
			if (n > 0) {
				done += (size_t)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
						   "could not write to %s: %s", redis->address, strerror(errno));
		}
		if (wait_fd(redis->fd, want, deadline_us) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not write to %s: %s",
					   redis->address, strerror(errno));
	}
	return CAT_OK;
}

/* Reads what arrives (at least one byte) into the reader; *fed += bytes. */
static cat_err_t read_some(cat_redis_t *redis, int64_t deadline_us, size_t *fed, char *errstr,
			   size_t errstr_size)
{
	char buf[READ_CHUNK];

	for (;;) {
		ssize_t n;
		short want = POLLIN;

		if (redis->ssl) {
			int rc = SSL_read(redis->ssl, buf, sizeof(buf));

			if (rc > 0) {
				n = rc;
			} else {
				int e = SSL_get_error(redis->ssl, rc);

				if (e == SSL_ERROR_WANT_WRITE)
					want = POLLOUT;
				else if (e != SSL_ERROR_WANT_READ)
					return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
							   "could not read from %s: %s", redis->address,
							   e == SSL_ERROR_ZERO_RETURN || !errno ? "connection closed"
												: strerror(errno));
				n = -1;
				errno = EAGAIN;
			}
		} else {
			n = recv(redis->fd, buf, sizeof(buf), 0);
			if (n == 0)
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
						   "could not read from %s: connection closed", redis->address);
		}
		if (n > 0) {
			if (redisReaderFeed(redis->reader, buf, (size_t)n) != REDIS_OK)
				return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
						   "could not read from %s: out of memory", redis->address);
			*fed += (size_t)n;
			return CAT_OK;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not read from %s: %s",
					   redis->address, strerror(errno));
		if (wait_fd(redis->fd, want, deadline_us) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "could not read from %s: %s", redis->address,
					   errno == ETIMEDOUT ? "no reply in time" : strerror(errno));
	}
}

/* The next reply, whole before deadline_us (0: timeout_ms from now): a
 * server sending a byte at a time does not hold the client past it. A reply
 * over max_reply_bytes (what was read while it was awaited, which may hold
 * up to one read of the next replies) fails. */
static cat_err_t read_reply_by(cat_redis_t *redis, redisReply **out, int64_t deadline_us, char *errstr,
			       size_t errstr_size)
{
	size_t fed = 0;

	*out = NULL;
	if (deadline_us == 0)
		deadline_us = cat_time_mono_us() + (int64_t)redis->timeout_ms * 1000;
	for (;;) {
		void *reply = NULL;
		cat_err_t err;

		if (redisReaderGetReply(redis->reader, &reply) != REDIS_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "could not read from %s: protocol error: %s", redis->address,
					   redis->reader->errstr);
		if (reply) {
			*out = reply;
			return CAT_OK;
		}
		if (fed > redis->max_reply_bytes + READ_CHUNK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "could not read from %s: a reply larger than %zu bytes "
					   "(CATALYST_REDIS_MAX_REPLY_BYTES)",
					   redis->address, redis->max_reply_bytes);
		err = read_some(redis, deadline_us, &fed, errstr, errstr_size);
		if (err != CAT_OK)
			return err;
	}
}

static cat_err_t read_reply(cat_redis_t *redis, redisReply **out, char *errstr, size_t errstr_size)
{
	return read_reply_by(redis, out, 0, errstr, errstr_size);
}

/* --- classification -------------------------------------------------------------------- */

cat_err_t cat_redis_reply_class(const redisReply *reply, char *errstr, size_t errstr_size)
{
	static const char *const retriable[] = {"LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN",
						"OOM", "CLUSTERDOWN", "NOREPLICAS", NULL};
	static const char *const fatal[] = {"WRONGPASS", "NOAUTH", "NOPERM", NULL};
	const char *text;
	size_t code_len;

	if (!reply)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "no reply");
	if (reply->type != REDIS_REPLY_ERROR)
		return CAT_OK;
	text = reply->str ? reply->str : "";
	code_len = strcspn(text, " ");
	for (int i = 0; retriable[i]; i++)
		if (code_len == strlen(retriable[i]) && strncmp(text, retriable[i], code_len) == 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "Redis: %.300s", text);
	for (int i = 0; fatal[i]; i++)
		if (code_len == strlen(fatal[i]) && strncmp(text, fatal[i], code_len) == 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "Redis: %.300s", text);
	if (strstr(text, "invalid password") || strstr(text, "invalid username-password"))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "Redis: %.300s", text);
	return cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "Redis: %.300s", text);
}

/* --- commands ---------------------------------------------------------------------------- */

cat_err_t cat_redis_append(cat_redis_t *redis, int argc, const char *const *argv, const size_t *lens)
{
	char *cmd = NULL;
	int len = redisFormatCommandArgv(&cmd, argc, (const char **)argv, lens);

	if (len < 0 || !cmd)
		return CAT_ERR_RETRIABLE;
	if (redis->olen + (size_t)len > redis->ocap) {
		size_t cap = redis->ocap ? redis->ocap : 4096;
		char *grown;

		while (cap < redis->olen + (size_t)len)
			cap *= 2;
		if (!(grown = realloc(redis->obuf, cap))) {
			redisFreeCommand(cmd);
			return CAT_ERR_RETRIABLE;
		}
		redis->obuf = grown;
		redis->ocap = cap;
	}
	memcpy(redis->obuf + redis->olen, cmd, (size_t)len);
	redis->olen += (size_t)len;
	redis->n_pending++;
	redisFreeCommand(cmd);
	return CAT_OK;
}

void cat_redis_script_init(cat_redis_script_t *script, const char *source)
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int digest_len = 0;

	script->source = source;
	EVP_Digest(source, strlen(source), digest, &digest_len, EVP_sha1(), NULL);
	for (unsigned i = 0; i < digest_len && i < 20; i++)
		snprintf(script->sha + 2 * i, 3, "%02x", digest[i]);
	script->sha[40] = '\0';
}

cat_err_t cat_redis_append_evalsha(cat_redis_t *redis, const cat_redis_script_t *script, int nkeys, int argc,
				   const char *const *argv, const size_t *lens)
{
	const char **args = malloc((size_t)(argc + 3) * sizeof(*args));
	size_t *arg_lens = malloc((size_t)(argc + 3) * sizeof(*arg_lens));
	char nkeys_text[16];
	cat_err_t err = CAT_ERR_RETRIABLE;

	if (args && arg_lens) {
		snprintf(nkeys_text, sizeof(nkeys_text), "%d", nkeys);
		args[0] = "EVALSHA";
		args[1] = script->sha;
		args[2] = nkeys_text;
		for (int i = 0; i < 3; i++)
			arg_lens[i] = strlen(args[i]);
		for (int i = 0; i < argc; i++) {
			args[3 + i] = argv[i];
			arg_lens[3 + i] = lens ? lens[i] : strlen(argv[i]);
		}
		err = cat_redis_append(redis, argc + 3, args, arg_lens);
	}
	free(args);
	free(arg_lens);
	return err;
}

cat_err_t cat_redis_append_evalsha_bulk(cat_redis_t *redis, const cat_redis_script_t *script, int nkeys, int argc,
					const char *const *parts, const size_t *part_lens, int n_parts)
{
	char head[128];
	int head_len = snprintf(head, sizeof(head), "*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%d\r\n",
				argc + 3, script->sha, snprintf(NULL, 0, "%d", nkeys), nkeys);
	size_t len = 0;

	if (head_len < 0 || (size_t)head_len >= sizeof(head) || argc < 0 || n_parts < 0)
		return CAT_ERR_RETRIABLE;
	len = (size_t)head_len;
	for (int p = 0; p < n_parts; p++)
		len += part_lens[p];
	if (redis->olen + len > redis->ocap) {
		size_t cap = redis->ocap ? redis->ocap : 4096;
		char *grown;

		while (cap < redis->olen + len)
			cap *= 2;
		if (!(grown = realloc(redis->obuf, cap)))
			return CAT_ERR_RETRIABLE;
		redis->obuf = grown;
		redis->ocap = cap;
	}
	memcpy(redis->obuf + redis->olen, head, (size_t)head_len);
	redis->olen += (size_t)head_len;
	for (int p = 0; p < n_parts; p++) {
		memcpy(redis->obuf + redis->olen, parts[p], part_lens[p]);
		redis->olen += part_lens[p];
	}
	redis->n_pending++;
	return CAT_OK;
}

size_t cat_redis_pending(const cat_redis_t *redis)
{
	return redis->n_pending;
}

size_t cat_redis_pending_bytes(const cat_redis_t *redis)
{
	return redis->olen;
}

void cat_redis_discard(cat_redis_t *redis)
{
	redis->olen = 0;
	redis->n_pending = 0;
	buf_release_burst(&redis->obuf, &redis->ocap);
}

void cat_redis_replies_free(redisReply **replies, size_t n)
{
	if (!replies)
		return;
	for (size_t i = 0; i < n; i++)
		if (replies[i])
			freeReplyObject(replies[i]);
	free(replies);
}

/* The major and minor of a "7.0.15"-style version; false when it is not one. */
static bool parse_version(const char *text, int *major, int *minor)
{
	char *end;
	long a, b = 0;

	if (!isdigit((unsigned char)text[0]))
		return false;
	a = strtol(text, &end, 10);
	if (*end == '.') {
		if (!isdigit((unsigned char)end[1]))
			return false;
		b = strtol(end + 1, &end, 10);
	}
	if (a > 1000 || b > 1000)
		return false;
	*major = (int)a;
	*minor = (int)b;
	return true;
}

/* The version in an INFO server reply ("redis_version:7.0.15\r\n") or in a
 * HELLO 2 reply (a flat array "server" "redis" "version" "7.0.15" ...), into
 * redis->server_version; false when the reply holds none. */
static bool take_version(cat_redis_t *redis, const redisReply *reply)
{
	const char *v = NULL;
	size_t len = 0;

	if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS) {
		const char *at = reply->str ? strstr(reply->str, "redis_version:") : NULL;

		if (at) {
			v = at + strlen("redis_version:");
			len = strcspn(v, "\r\n");
		}
	} else if (reply->type == REDIS_REPLY_ARRAY) {
		for (size_t i = 0; i + 1 < reply->elements; i += 2) {
			const redisReply *k = reply->element[i], *val = reply->element[i + 1];

			if (k->type == REDIS_REPLY_STRING && k->str && strcmp(k->str, "version") == 0 &&
			    val->type == REDIS_REPLY_STRING && val->str) {
				v = val->str;
				len = strlen(v);
				break;
			}
		}
	}
	if (!v || len == 0 || len >= sizeof(redis->server_version))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isprint((unsigned char)v[i]))
			return false;
	memcpy(redis->server_version, v, len);
	redis->server_version[len] = '\0';
	return true;
}

/* Refuses a server older than CAT_REDIS_MIN_VERSION. `info` is the reply to
 * INFO server; when an ACL refused it, HELLO 2 is asked instead. */
static cat_err_t check_version(cat_redis_t *redis, const redisReply *info, int64_t deadline_us, char *errstr,
			       size_t errstr_size)
{
	int major = 0, minor = 0;
	cat_err_t err;
	bool found = take_version(redis, info);

	if (!found) {
		redisReply *hello = NULL;
		char why[300];

		if (info->type == REDIS_REPLY_ERROR)
			snprintf(why, sizeof(why), "INFO: %.200s", info->str ? info->str : "");
		else
			snprintf(why, sizeof(why), "INFO names no redis_version");
		if (cat_redis_append(redis, 2, (const char *[]){"HELLO", "2"}, NULL) != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		err = write_all(redis, redis->obuf, redis->olen, deadline_us, errstr, errstr_size);
		redis->olen = 0;
		redis->n_pending = 0;
		if (err == CAT_OK)
			err = read_reply_by(redis, &hello, deadline_us, errstr, errstr_size);
		if (err != CAT_OK)
			return err;
		found = take_version(redis, hello);
		if (!found && hello->type == REDIS_REPLY_ERROR)
			snprintf(why + strlen(why), sizeof(why) - strlen(why), ", HELLO: %.60s",
				 hello->str ? hello->str : "");
		freeReplyObject(hello);
		if (!found)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "could not learn the version of Redis at %s (%s); catalyst needs Redis "
					   "%s or newer: allow INFO or HELLO to its user",
					   redis->address, why, CAT_REDIS_MIN_VERSION);
	}
	if (!parse_version(redis->server_version, &major, &minor) || major < CAT_REDIS_MIN_MAJOR)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "Redis at %s is version %s; catalyst needs Redis %s or newer (its scripts use "
				   "EXPIRE ... GT)",
				   redis->address, redis->server_version, CAT_REDIS_MIN_VERSION);
	return CAT_OK;
}

/* AUTH, SELECT, CLIENT SETNAME and INFO server on a fresh connection (one
 * round trip), then the version check. */
static cat_err_t handshake(cat_redis_t *redis, int64_t deadline_us, char *errstr, size_t errstr_size)
{
	const char *argv[3];
	size_t n = 0;
	char db[16];
	cat_err_t err;

	redis->server_version[0] = '\0';
	if (redis->password) {
		argv[0] = "AUTH";
		if (redis->url.user[0]) {
			argv[1] = redis->url.user;
			argv[2] = redis->password;
			err = cat_redis_append(redis, 3, argv, NULL);
		} else {
			argv[1] = redis->password;
			err = cat_redis_append(redis, 2, argv, NULL);
		}
		if (err != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		n++;
	}
	if (redis->url.db != 0) {
		snprintf(db, sizeof(db), "%d", redis->url.db);
		if (cat_redis_append(redis, 2, (const char *[]){"SELECT", db}, NULL) != CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		n++;
	}
	if (redis->client_name) {
		if (cat_redis_append(redis, 3, (const char *[]){"CLIENT", "SETNAME", redis->client_name}, NULL) !=
		    CAT_OK)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		n++;
	}
	if (cat_redis_append(redis, 2, (const char *[]){"INFO", "server"}, NULL) != CAT_OK)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	n++;
	err = write_all(redis, redis->obuf, redis->olen, deadline_us, errstr, errstr_size);
	/* the AUTH command held the password */
	explicit_bzero(redis->obuf, redis->olen);
	redis->olen = 0;
	redis->n_pending = 0;
	for (size_t i = 0; err == CAT_OK && i < n; i++) {
		redisReply *reply = NULL;
		char msg[400];

		if ((err = read_reply_by(redis, &reply, deadline_us, errstr, errstr_size)) != CAT_OK)
			break;
		if (i == n - 1) { /* INFO server */
			err = check_version(redis, reply, deadline_us, errstr, errstr_size);
			freeReplyObject(reply);
			break;
		}
		err = cat_redis_reply_class(reply, msg, sizeof(msg));
		freeReplyObject(reply);
		if (err == CAT_ERR_PERMANENT && i == 0 && redis->password)
			err = CAT_ERR_FATAL; /* AUTH refused: wrong settings, not a bad message */
		if (err != CAT_OK)
			cat_err_set(errstr, errstr_size, err, "could not log in to %s: %s", redis->address, msg);
	}
	return err;
}

cat_err_t cat_redis_ensure(cat_redis_t *redis, char *errstr, size_t errstr_size)
{
	int64_t deadline_us;
	cat_err_t err;

	if (redis->fd >= 0)
		return CAT_OK;
	deadline_us = cat_time_mono_us() + (int64_t)redis->connect_timeout_ms * 1000;
	cat_redis_discard(redis);
	if (!(redis->reader = redisReaderCreate()))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	if ((err = tcp_connect(redis, deadline_us, errstr, errstr_size)) != CAT_OK)
		goto error;
	if (redis->ssl_ctx && (err = tls_handshake(redis, deadline_us, errstr, errstr_size)) != CAT_OK)
		goto error;
	if ((err = handshake(redis, deadline_us, errstr, errstr_size)) != CAT_OK)
		goto error;
	redis->connects++;
	return CAT_OK;

error:
	cat_redis_disconnect(redis);
	return err;
}

cat_err_t cat_redis_send(cat_redis_t *redis, char *errstr, size_t errstr_size)
{
	cat_err_t err;
	char *buf;
	size_t cap;

	if (redis->n_inflight > 0) {
		cat_redis_discard(redis);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "cat_redis_send with %zu replies not read", redis->n_inflight);
	}
	if (redis->n_pending == 0)
		return CAT_OK;
	if (redis->fd < 0) {
		cat_redis_discard(redis);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "not connected to %s", redis->address);
	}
	err = write_all(redis, redis->obuf, redis->olen, cat_time_mono_us() + (int64_t)redis->timeout_ms * 1000,
			errstr, errstr_size);
	if (err != CAT_OK) {
		cat_redis_disconnect(redis);
		return err;
	}
	/* the sent bytes stay (for a NOSCRIPT), the queue takes the other buffer */
	buf = redis->ibuf, cap = redis->icap;
	redis->ibuf = redis->obuf, redis->icap = redis->ocap, redis->ilen = redis->olen;
	redis->obuf = buf, redis->ocap = cap, redis->olen = 0;
	redis->n_inflight = redis->n_pending;
	redis->n_pending = 0;
	buf_release_burst(&redis->obuf, &redis->ocap);
	return CAT_OK;
}

size_t cat_redis_in_flight(const cat_redis_t *redis)
{
	return redis->n_inflight;
}

cat_err_t cat_redis_wait(cat_redis_t *redis, const cat_redis_script_t *scripts, size_t n_scripts,
			 redisReply ***replies, size_t *n, char *errstr, size_t errstr_size)
{
	size_t count = redis->n_inflight;
	redisReply **got = NULL;
	cat_err_t err = CAT_OK;

	*replies = NULL;
	*n = 0;
	if (count == 0)
		return CAT_OK;
	if (!(got = calloc(count, sizeof(*got)))) {
		cat_redis_disconnect(redis);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	}
	for (int attempt = 0;; attempt++) {
		bool noscript = false;

		for (size_t i = 0; err == CAT_OK && i < count; i++) {
			if ((err = read_reply(redis, &got[i], errstr, errstr_size)) != CAT_OK)
				break;
			if (got[i]->type == REDIS_REPLY_ERROR && got[i]->str &&
			    strncmp(got[i]->str, "NOSCRIPT", 8) == 0)
				noscript = true;
		}
		if (err != CAT_OK || !noscript || attempt > 0 || n_scripts == 0)
			break;
		/* the server lost its script cache (restart, failover, SCRIPT FLUSH):
		 * load and send everything again (every reply is read: nothing else
		 * is in flight) */
		for (size_t i = 0; i < count; i++) {
			freeReplyObject(got[i]);
			got[i] = NULL;
		}
		redis->n_inflight = 0;
		for (size_t s = 0; err == CAT_OK && s < n_scripts; s++)
			err = cat_redis_script_load(redis, &scripts[s], errstr, errstr_size);
		if (err != CAT_OK)
			break;
		redis->script_reloads++;
		CAT_LOG_INFO("REDIS", "reloaded %zu scripts after NOSCRIPT from %s", n_scripts, redis->address);
		redis->n_inflight = count;
		err = write_all(redis, redis->ibuf, redis->ilen,
				cat_time_mono_us() + (int64_t)redis->timeout_ms * 1000, errstr, errstr_size);
	}
	redis->n_inflight = 0;
	redis->ilen = 0;
	buf_release_burst(&redis->ibuf, &redis->icap);
	if (err != CAT_OK) {
		cat_redis_replies_free(got, count);
		/* replies may be left unread: the connection is out of step */
		cat_redis_disconnect(redis);
		return err;
	}
	*replies = got;
	*n = count;
	return CAT_OK;
}

cat_err_t cat_redis_pipeline(cat_redis_t *redis, const cat_redis_script_t *scripts, size_t n_scripts,
			     redisReply ***replies, size_t *n, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	*replies = NULL;
	*n = 0;
	if (redis->n_pending == 0)
		return CAT_OK;
	if ((err = cat_redis_send(redis, errstr, errstr_size)) != CAT_OK)
		return err;
	return cat_redis_wait(redis, scripts, n_scripts, replies, n, errstr, errstr_size);
}

cat_err_t cat_redis_command(cat_redis_t *redis, redisReply **out, int argc, const char *const *argv,
			    const size_t *lens, char *errstr, size_t errstr_size)
{
	redisReply *reply = NULL;
	int64_t deadline_us;
	cat_err_t err;

	if (out)
		*out = NULL;
	if ((err = cat_redis_ensure(redis, errstr, errstr_size)) != CAT_OK)
		return err;
	if (redis->n_pending > 0 || redis->n_inflight > 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "cat_redis_command with %zu commands queued and %zu in flight", redis->n_pending,
				   redis->n_inflight);
	if (cat_redis_append(redis, argc, argv, lens) != CAT_OK)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
	deadline_us = cat_time_mono_us() + (int64_t)redis->timeout_ms * 1000;
	err = write_all(redis, redis->obuf, redis->olen, deadline_us, errstr, errstr_size);
	cat_redis_discard(redis);
	if (err == CAT_OK)
		err = read_reply(redis, &reply, errstr, errstr_size);
	if (err != CAT_OK) {
		cat_redis_disconnect(redis);
		return err;
	}
	if ((err = cat_redis_reply_class(reply, errstr, errstr_size)) != CAT_OK) {
		freeReplyObject(reply);
		return err;
	}
	if (out)
		*out = reply;
	else
		freeReplyObject(reply);
	return CAT_OK;
}

cat_err_t cat_redis_script_load(cat_redis_t *redis, const cat_redis_script_t *script, char *errstr,
				size_t errstr_size)
{
	redisReply *reply = NULL;
	cat_err_t err;
	size_t pending_len = redis->olen, pending_n = redis->n_pending;
	char *saved = NULL;

	/* keeps a queued pipeline aside: cat_redis_pipeline reloads mid-way */
	if (pending_n > 0) {
		saved = redis->obuf;
		redis->obuf = NULL;
		redis->ocap = redis->olen = 0;
		redis->n_pending = 0;
	}
	err = cat_redis_command(redis, &reply, 3, (const char *[]){"SCRIPT", "LOAD", script->source}, NULL,
				errstr, errstr_size);
	if (err == CAT_OK && (reply->type != REDIS_REPLY_STRING || strcmp(reply->str, script->sha) != 0))
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				  "SCRIPT LOAD returned another SHA1 than %s", script->sha);
	if (reply)
		freeReplyObject(reply);
	if (saved) {
		free(redis->obuf);
		redis->obuf = saved;
		redis->ocap = redis->olen = pending_len;
		redis->n_pending = pending_n;
	}
	return err;
}
