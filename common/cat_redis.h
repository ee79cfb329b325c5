/*
 * cat_redis: Redis connections, pipelines and server-side scripts.
 *
 * hiredis parses and formats the protocol (redisReader,
 * redisFormatCommandArgv); this module owns the socket, so that plain TCP
 * and TLS (OpenSSL, rediss://) behave the same, every read and write has a
 * deadline, and failures are classed for the caller:
 *   refused, reset, timed out, LOADING, BUSY, READONLY (a failover),
 *   MASTERDOWN, TRYAGAIN, OOM                          -> CAT_ERR_RETRIABLE
 *   WRONGPASS / NOAUTH / NOPERM, a TLS certificate
 *   that does not verify, a bad URL                    -> CAT_ERR_FATAL
 *   another error reply (WRONGTYPE, a script error)    -> CAT_ERR_PERMANENT
 * An I/O failure closes the connection; cat_redis_ensure() opens it again.
 * Error strings and cat_redis_address() never contain the password.
 *
 * The server is not trusted blindly: each reply must arrive whole within
 * CATALYST_REDIS_TIMEOUT_MS of the moment it is awaited (a server trickling
 * a byte at a time does not extend it), and a reply larger than
 * CATALYST_REDIS_MAX_REPLY_BYTES (to within one 64 KiB read) fails as a
 * lost connection instead of growing the buffer. At connect the server's
 * version is read (INFO server, or HELLO when an ACL refuses INFO): the
 * scripts use EXPIRE ... GT, so a server older than CAT_REDIS_MIN_VERSION
 * is refused, CAT_ERR_FATAL.
 *
 *   cat_redis_t *redis;
 *   cat_redis_script_t set_if_newer;
 *   cat_redis_script_init(&set_if_newer, "return redis.call('SET', KEYS[1], ARGV[1])");
 *   if (cat_redis_new(&redis, &opts, errstr, sizeof(errstr)) != CAT_OK) ...
 *   if (cat_redis_ensure(redis, errstr, sizeof(errstr)) != CAT_OK) ... retry later
 *   cat_redis_append_evalsha(redis, &set_if_newer, 1, 2, argv, lens);
 *   cat_redis_append(redis, 3, (const char *[]){"EXPIRE", "k", "60"}, NULL);
 *   err = cat_redis_pipeline(redis, &set_if_newer, 1, &replies, &n, errstr, sizeof(errstr));
 *   ... replies[0..n) in command order ...
 *   cat_redis_replies_free(replies, n);
 */
#ifndef CAT_REDIS_H
#define CAT_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "cat_config.h"
#include "cat_err.h"

/* The settings every Redis client shares, spliced into a config table. */
#define CAT_CONFIG_REDIS                                                                           \
	{ .name = "CATALYST_REDIS_URL", .type = CAT_CFG_STRING, .required = true, .secret = true,    \
	  .check = cat_redis_url_check,                                                             \
	  .help = "Redis, redis://[user[:password]@]host[:port][/db] or rediss:// for TLS" },       \
	{ .name = "CATALYST_REDIS_PASSWORD", .type = CAT_CFG_STRING, .secret = true,                \
	  .help = "Redis password; overrides the URL's (keeps it out of the URL)" },                \
	{ .name = "CATALYST_REDIS_CONNECT_TIMEOUT_MS", .type = CAT_CFG_INT, .def = "5000", .min = 1, \
	  .max = 600000, .help = "how long connecting (TCP, TLS handshake, AUTH) may take" },       \
	{ .name = "CATALYST_REDIS_TIMEOUT_MS", .type = CAT_CFG_INT, .def = "10000", .min = 1,       \
	  .max = 600000, .help = "how long one reply may take in total before the connection counts as lost" }, \
	{ .name = "CATALYST_REDIS_MAX_REPLY_BYTES", .type = CAT_CFG_INT, .def = "67108864", .min = 1024, \
	  .max = 536870912,                                                                         \
	  .help = "largest reply accepted from Redis, bytes (a larger one fails the connection)" }, \
	{ .name = "CATALYST_REDIS_TLS_CA_FILE", .type = CAT_CFG_STRING,                             \
	  .help = "rediss://: CA certificates (PEM) the server's certificate must chain to (default: the " \
	          "system's)" },                                                                    \
	{ .name = "CATALYST_REDIS_TLS_CERT_FILE", .type = CAT_CFG_STRING,                           \
	  .help = "rediss://: client certificate (PEM), for servers that require one" },            \
	{ .name = "CATALYST_REDIS_TLS_KEY_FILE", .type = CAT_CFG_STRING,                            \
	  .help = "rediss://: the client certificate's private key (PEM)" },                        \
	{ .name = "CATALYST_REDIS_TLS_SERVER_NAME", .type = CAT_CFG_STRING,                         \
	  .help = "rediss://: name the certificate must carry and SNI (default: the URL's host)" }, \
	{ .name = "CATALYST_REDIS_TLS_VERIFY", .type = CAT_CFG_BOOL, .def = "true",                 \
	  .help = "rediss://: verify the server's certificate (false only for tests)" }

/* The oldest Redis the cache scripts run on (EXPIRE ... GT). */
#define CAT_REDIS_MIN_MAJOR 7
#define CAT_REDIS_MIN_VERSION "7.0"

/* A parsed redis:// or rediss:// URL. */
typedef struct cat_redis_url {
	bool tls;
	char host[256];	   /* without IPv6 brackets */
	int port;	   /* default 6379 */
	char user[128];	   /* "" : none (AUTH password) */
	char password[256]; /* "" : none */
	int db;		   /* default 0 */
} cat_redis_url_t;

/* Parses redis[s]://[user[:password]@]host[:port][/db]; user and password
 * may be percent-encoded, host may be [IPv6]. Fatal, naming the part that
 * is wrong and never echoing the password. */
/* The config table's check of a Redis URL (cat_config_check_fn): 0 when
 * cat_redis_url_parse() takes it, else -1 and why (never the password). */
int cat_redis_url_check(const char *url, char *why, size_t why_size);

cat_err_t cat_redis_url_parse(const char *url, cat_redis_url_t *out, char *errstr,
			      size_t errstr_size) CAT_MUST_CHECK;

typedef struct cat_redis_opts {
	const char *url;	     /* required */
	const char *password;	     /* overrides the URL's; NULL: the URL's */
	int connect_timeout_ms;	     /* 0: 5000 */
	int timeout_ms;		     /* 0: 10000; total per reply */
	const char *tls_ca_file;     /* NULL: the system's trust store */
	const char *tls_cert_file;   /* client certificate, NULL: none */
	const char *tls_key_file;
	const char *tls_server_name; /* NULL: the URL's host */
	bool tls_no_verify;	     /* tests only */
	const char *client_name;     /* CLIENT SETNAME, NULL: none */
	size_t max_reply_bytes;	     /* 0: 64 MiB */
} cat_redis_opts_t;

/* Options from the CAT_CONFIG_REDIS settings of `cfg` (strings borrowed). */
void cat_redis_opts_from_config(cat_redis_opts_t *opts, const cat_config_t *cfg, const char *client_name);

typedef struct cat_redis cat_redis_t;

/* A client for `opts` (copied; the URL parsed now, fatal when malformed).
 * Does not connect: see cat_redis_ensure(). */
cat_err_t cat_redis_new(cat_redis_t **out, const cat_redis_opts_t *opts, char *errstr,
			size_t errstr_size) CAT_MUST_CHECK;

/* Closes and frees; accepts NULL. */
void cat_redis_destroy(cat_redis_t *redis);

/* Connects (TCP or TLS, AUTH, SELECT, CLIENT SETNAME, the version check)
 * unless connected. A server older than CAT_REDIS_MIN_VERSION is
 * CAT_ERR_FATAL: "Redis at <address> is version 6.2.14; catalyst needs
 * Redis 7.0 or newer (...)". */
cat_err_t cat_redis_ensure(cat_redis_t *redis, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Drops the connection (and anything pending); the next ensure reconnects. */
void cat_redis_disconnect(cat_redis_t *redis);

bool cat_redis_is_connected(const cat_redis_t *redis);

/* "redis://user@host:port/db" (or rediss://), without the password. */
const char *cat_redis_address(const cat_redis_t *redis);

/* The server's version as it reported it at the last connect ("7.0.15";
 * "" before the first). */
const char *cat_redis_server_version(const cat_redis_t *redis);

/* Connections opened so far (the first one included). */
uint64_t cat_redis_connects(const cat_redis_t *redis);

/* --- commands -------------------------------------------------------------------- */

/* Queues one command (argv[i] of lens[i] bytes; lens NULL: strlen). Nothing
 * is sent before cat_redis_pipeline() or cat_redis_command(). Retriable only
 * when out of memory. */
cat_err_t cat_redis_append(cat_redis_t *redis, int argc, const char *const *argv,
			   const size_t *lens) CAT_MUST_CHECK;

/* A Lua script known by its SHA1 (computed locally, no round trip). */
typedef struct cat_redis_script {
	const char *source; /* borrowed: a string literal */
	char sha[41];
} cat_redis_script_t;

void cat_redis_script_init(cat_redis_script_t *script, const char *source);

/* Queues EVALSHA sha nkeys argv... (the first nkeys of argv are keys). */
cat_err_t cat_redis_append_evalsha(cat_redis_t *redis, const cat_redis_script_t *script, int nkeys, int argc,
				   const char *const *argv, const size_t *lens) CAT_MUST_CHECK;

/* Queues EVALSHA sha nkeys followed by `argc` arguments given already in
 * the protocol's form: the concatenation of parts[0, n_parts) (part_lens
 * bytes each) is argc bulk strings "$<len>\r\n<bytes>\r\n" (the caller
 * formats them; a hot path). */
cat_err_t cat_redis_append_evalsha_bulk(cat_redis_t *redis, const cat_redis_script_t *script, int nkeys, int argc,
					const char *const *parts, const size_t *part_lens,
					int n_parts) CAT_MUST_CHECK;

/* Commands queued and not yet sent. */
size_t cat_redis_pending(const cat_redis_t *redis);

/* Bytes queued. */
size_t cat_redis_pending_bytes(const cat_redis_t *redis);

/* Drops the queued commands (nothing was sent). */
void cat_redis_discard(cat_redis_t *redis);

/* Sends every queued command in one write and reads every reply, in order,
 * into a malloc'ed *replies of *n entries (free with cat_redis_replies_free).
 * If a reply says NOSCRIPT, the `scripts` are loaded (SCRIPT LOAD) and the
 * whole pipeline is sent again once: its commands must be idempotent (as
 * version-checked writes are). Error replies are returned as replies, for
 * the caller to class with cat_redis_reply_class(); the result says only
 * whether every reply arrived. On failure nothing is returned, the queue is
 * dropped, and an I/O failure closes the connection. */
cat_err_t cat_redis_pipeline(cat_redis_t *redis, const cat_redis_script_t *scripts, size_t n_scripts,
			     redisReply ***replies, size_t *n, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* The two halves of cat_redis_pipeline, so that the caller can prepare the
 * next commands while Redis runs these: cat_redis_send writes every queued
 * command (keeping them, for a NOSCRIPT) and returns without reading; at
 * most one sent pipeline may wait for its replies (fatal otherwise). Commands
 * queued meanwhile are not sent before cat_redis_send is called again.
 * cat_redis_wait reads the sent pipeline's replies as cat_redis_pipeline
 * does (NOSCRIPT: load `scripts`, send it again once). A failure of either
 * closes the connection and drops what was queued and in flight. */
cat_err_t cat_redis_send(cat_redis_t *redis, char *errstr, size_t errstr_size) CAT_MUST_CHECK;
cat_err_t cat_redis_wait(cat_redis_t *redis, const cat_redis_script_t *scripts, size_t n_scripts,
			 redisReply ***replies, size_t *n, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* Commands sent whose replies were not read yet. */
size_t cat_redis_in_flight(const cat_redis_t *redis);

void cat_redis_replies_free(redisReply **replies, size_t n);

/* One command, one round trip (connecting first if needed); an error reply
 * is a failure, classed by cat_redis_reply_class. *out (may be NULL: reply
 * dropped) is freed with freeReplyObject. */
cat_err_t cat_redis_command(cat_redis_t *redis, redisReply **out, int argc, const char *const *argv,
			    const size_t *lens, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

/* SCRIPT LOAD of `script`; fatal if the server's SHA differs. */
cat_err_t cat_redis_script_load(cat_redis_t *redis, const cat_redis_script_t *script, char *errstr,
				size_t errstr_size) CAT_MUST_CHECK;

/* Scripts loaded after a NOSCRIPT so far. */
uint64_t cat_redis_script_reloads(const cat_redis_t *redis);

/* CAT_OK for a reply that is not an error; else the class of its error code
 * (see the top of this file), with the message in errstr. */
cat_err_t cat_redis_reply_class(const redisReply *reply, char *errstr, size_t errstr_size);

#endif /* CAT_REDIS_H */
