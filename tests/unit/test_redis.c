/* Check suite for common/cat_redis: URL parsing and error classes without a
 * server; then against redis-server processes the suite starts itself (a
 * plain one with a password, and one serving TLS with a CA the suite makes
 * with the openssl tool): AUTH, pipelines, NOSCRIPT reload, timeouts,
 * reconnects, certificate checks. Never the stack's Redis. Last, a fake
 * server the suite forks (hostile or old): a reply trickled a byte at a
 * time, an oversized reply, a version older than 7.0, an ACL that refuses
 * INFO. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cat_redis.h"
#include "cat_time.h"

#define PASSWORD "pw-9f2c-secret"

/* --- no server ------------------------------------------------------------------------ */

START_TEST(test_url_parse)
{
	static const struct {
		const char *url;
		cat_err_t err;
		bool tls;
		const char *host, *user, *password;
		int port, db;
		const char *message; /* part of errstr when err */
	} cases[] = {
		{"redis://h", CAT_OK, false, "h", "", "", 6379, 0, NULL},
		{"redis://127.0.0.1:6380/2", CAT_OK, false, "127.0.0.1", "", "", 6380, 2, NULL},
		{"rediss://cache.example.com:25061", CAT_OK, true, "cache.example.com", "", "", 25061, 0, NULL},
		{"redis://:s3cret@h/0", CAT_OK, false, "h", "", "s3cret", 6379, 0, NULL},
		{"redis://default:p%40ss%3Aword@h:1/", CAT_OK, false, "h", "default", "p@ss:word", 1, 0, NULL},
		{"redis://user@h", CAT_OK, false, "h", "user", "", 6379, 0, NULL},
		{"redis://[::1]:7000/3", CAT_OK, false, "::1", "", "", 7000, 3, NULL},
		{"redis://a:b@c@h", CAT_OK, false, "h", "a", "b@c", 6379, 0, NULL},
		{"http://h", CAT_ERR_FATAL, false, "", "", "", 0, 0, "redis://"},
		{"redis://", CAT_ERR_FATAL, false, "", "", "", 0, 0, "no host"},
		{"redis://h:0", CAT_ERR_FATAL, false, "", "", "", 0, 0, "port"},
		{"redis://h:70000", CAT_ERR_FATAL, false, "", "", "", 0, 0, "port"},
		{"redis://h:", CAT_ERR_FATAL, false, "", "", "", 0, 0, "port"},
		{"redis://h:12a", CAT_ERR_FATAL, false, "", "", "", 0, 0, "port"},
		{"redis://h/x", CAT_ERR_FATAL, false, "", "", "", 0, 0, "database"},
		{"redis://h/0?ssl=true", CAT_ERR_FATAL, false, "", "", "", 0, 0, "options"},
		{"redis://:bad%zzsecret@h", CAT_ERR_FATAL, false, "", "", "", 0, 0, "password"},
		{"redis://:trunc%4@h", CAT_ERR_FATAL, false, "", "", "", 0, 0, "password"},
		{"redis://[::1", CAT_ERR_FATAL, false, "", "", "", 0, 0, "IPv6"},
		{"redis://h o/0", CAT_ERR_FATAL, false, "", "", "", 0, 0, "host"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cat_redis_url_t url;
		char errstr[256] = "";
		cat_err_t err = cat_redis_url_parse(cases[i].url, &url, errstr, sizeof(errstr));

		ck_assert_msg(err == cases[i].err, "%s: %s (%s)", cases[i].url, cat_err_name(err), errstr);
		if (err != CAT_OK) {
			ck_assert_msg(strstr(errstr, cases[i].message), "%s: %s", cases[i].url, errstr);
			ck_assert_msg(!strstr(errstr, "secret"), "%s: the error shows the password", cases[i].url);
			continue;
		}
		ck_assert_int_eq(url.tls, cases[i].tls);
		ck_assert_str_eq(url.host, cases[i].host);
		ck_assert_str_eq(url.user, cases[i].user);
		ck_assert_str_eq(url.password, cases[i].password);
		ck_assert_int_eq(url.port, cases[i].port);
		ck_assert_int_eq(url.db, cases[i].db);
	}
}
END_TEST

START_TEST(test_reply_class)
{
	static const struct {
		int type;
		const char *str;
		cat_err_t err;
	} cases[] = {
		{REDIS_REPLY_STATUS, "OK", CAT_OK},
		{REDIS_REPLY_STRING, "ERR x", CAT_OK},
		{REDIS_REPLY_ERROR, "LOADING Redis is loading the dataset in memory", CAT_ERR_RETRIABLE},
		{REDIS_REPLY_ERROR, "BUSY Redis is busy running a script", CAT_ERR_RETRIABLE},
		{REDIS_REPLY_ERROR, "READONLY You can't write against a read only replica.", CAT_ERR_RETRIABLE},
		{REDIS_REPLY_ERROR, "OOM command not allowed", CAT_ERR_RETRIABLE},
		{REDIS_REPLY_ERROR, "MASTERDOWN Link with MASTER is down", CAT_ERR_RETRIABLE},
		{REDIS_REPLY_ERROR, "WRONGPASS invalid username-password pair", CAT_ERR_FATAL},
		{REDIS_REPLY_ERROR, "NOAUTH Authentication required.", CAT_ERR_FATAL},
		{REDIS_REPLY_ERROR, "NOPERM this user has no permissions", CAT_ERR_FATAL},
		{REDIS_REPLY_ERROR, "ERR invalid password", CAT_ERR_FATAL},
		{REDIS_REPLY_ERROR, "WRONGTYPE Operation against a key holding the wrong kind of value",
		 CAT_ERR_PERMANENT},
		{REDIS_REPLY_ERROR, "ERR Error running script", CAT_ERR_PERMANENT},
		{REDIS_REPLY_ERROR, "BUSYKEY Target key name already exists.", CAT_ERR_PERMANENT},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		redisReply reply = {.type = cases[i].type, .str = (char *)cases[i].str,
				    .len = strlen(cases[i].str)};
		char errstr[256] = "";

		ck_assert_msg(cat_redis_reply_class(&reply, errstr, sizeof(errstr)) == cases[i].err, "%s",
			      cases[i].str);
		if (cases[i].err != CAT_OK)
			ck_assert_msg(strstr(errstr, cases[i].str), "%s", errstr);
	}
	ck_assert_int_eq(cat_redis_reply_class(NULL, NULL, 0), CAT_ERR_RETRIABLE);
}
END_TEST

START_TEST(test_script_sha)
{
	cat_redis_script_t script;

	cat_redis_script_init(&script, "return 1");
	ck_assert_str_eq(script.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}
END_TEST

START_TEST(test_bad_tls_files_are_fatal)
{
	cat_redis_opts_t opts = {.url = "rediss://h", .tls_ca_file = "/nonexistent/ca.pem"};
	cat_redis_t *redis = NULL;
	char errstr[256];

	ck_assert_int_eq(cat_redis_new(&redis, &opts, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_ptr_null(redis);
	ck_assert_msg(strstr(errstr, "CA file /nonexistent/ca.pem"), "%s", errstr);
	opts.tls_ca_file = NULL;
	opts.tls_cert_file = "/nonexistent/cert.pem";
	ck_assert_int_eq(cat_redis_new(&redis, &opts, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_msg(strstr(errstr, "both"), "%s", errstr);
	cat_redis_destroy(NULL);
}
END_TEST

START_TEST(test_refused_is_retriable_and_hides_password)
{
	cat_redis_opts_t opts = {.url = "redis://u:hunter2-secret@127.0.0.1:1/0", .connect_timeout_ms = 2000};
	cat_redis_t *redis = NULL;
	char errstr[256];

	ck_assert_int_eq(cat_redis_new(&redis, &opts, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(cat_redis_address(redis), "redis://u@127.0.0.1:1/0");
	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_ERR_RETRIABLE);
	ck_assert_msg(strstr(errstr, "could not connect to redis://u@127.0.0.1:1/0"), "%s", errstr);
	ck_assert_msg(!strstr(errstr, "hunter2"), "%s", errstr);
	ck_assert(!cat_redis_is_connected(redis));
	cat_redis_destroy(redis);
}
END_TEST

/* --- servers the suite runs ------------------------------------------------------------ */

static char dir[64];
static pid_t plain_pid, tls_pid;
static int plain_port, tls_port;

static int free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static pid_t spawn(char *const argv[], bool quiet)
{
	pid_t pid = fork();

	if (pid == 0) {
		if (quiet) {
			freopen("/dev/null", "w", stdout);
			freopen("/dev/null", "w", stderr);
		}
		execvp(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static int run_tool(char *const argv[])
{
	int status = 0;
	pid_t pid = spawn(argv, true);

	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char *path_in(const char *name)
{
	static char paths[8][128];
	static int next;
	char *p = paths[next++ % 8];

	snprintf(p, 128, "%s/%s", dir, name);
	return p;
}

/* A CA, and a server certificate for 127.0.0.1 and "localhost" it signed. */
static void make_certificates(void)
{
	char ext[128], ca_key[128], ca_crt[128], key[128], csr[128], crt[128];
	FILE *f;

	snprintf(ca_key, sizeof(ca_key), "%s", path_in("ca.key"));
	snprintf(ca_crt, sizeof(ca_crt), "%s", path_in("ca.crt"));
	snprintf(key, sizeof(key), "%s", path_in("server.key"));
	snprintf(csr, sizeof(csr), "%s", path_in("server.csr"));
	snprintf(crt, sizeof(crt), "%s", path_in("server.crt"));
	snprintf(ext, sizeof(ext), "%s", path_in("ext.cnf"));
	f = fopen(ext, "w");
	ck_assert_ptr_nonnull(f);
	fputs("subjectAltName=IP:127.0.0.1,DNS:localhost\n", f);
	fclose(f);
	ck_assert_int_eq(run_tool((char *const[]){"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
						  "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj",
						  "/CN=catalyst test CA", NULL}),
			 0);
	ck_assert_int_eq(run_tool((char *const[]){"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout",
						  key, "-out", csr, "-subj", "/CN=localhost", NULL}),
			 0);
	ck_assert_int_eq(run_tool((char *const[]){"openssl", "x509", "-req", "-in", csr, "-CA", ca_crt,
						  "-CAkey", ca_key, "-CAcreateserial", "-out", crt, "-days",
						  "2", "-extfile", ext, NULL}),
			 0);
}

static bool answers(int port, bool tls)
{
	char url[64], errstr[256];
	cat_redis_opts_t opts = {.url = url, .password = PASSWORD, .connect_timeout_ms = 500,
				 .tls_ca_file = tls ? path_in("ca.crt") : NULL};
	cat_redis_t *redis = NULL;
	bool ok;

	snprintf(url, sizeof(url), "%s://127.0.0.1:%d", tls ? "rediss" : "redis", port);
	if (cat_redis_new(&redis, &opts, errstr, sizeof(errstr)) != CAT_OK)
		return false;
	ok = cat_redis_command(redis, NULL, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)) == CAT_OK;
	cat_redis_destroy(redis);
	return ok;
}

static pid_t start_server(int port, bool tls)
{
	char port_text[16];
	pid_t pid;

	snprintf(port_text, sizeof(port_text), "%d", port);
	if (tls)
		pid = spawn((char *const[]){"redis-server", "--port", "0", "--tls-port", port_text, "--bind",
					    "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass",
					    PASSWORD, "--dir", dir, "--tls-cert-file", path_in("server.crt"),
					    "--tls-key-file", path_in("server.key"), "--tls-ca-cert-file",
					    path_in("ca.crt"), "--tls-auth-clients", "no", NULL},
			    true);
	else
		pid = spawn((char *const[]){"redis-server", "--port", port_text, "--bind", "127.0.0.1", "--save", "",
					    "--appendonly", "no", "--requirepass", PASSWORD, "--dir", dir,
					    "--enable-debug-command", "local", NULL},
			    true);
	for (int i = 0; i < 100 && !answers(port, tls); i++)
		usleep(50000);
	return pid;
}

static void stop_server(pid_t *pid)
{
	if (*pid > 0) {
		kill(*pid, SIGTERM);
		waitpid(*pid, NULL, 0);
		*pid = 0;
	}
}

static void servers_up(void)
{
	snprintf(dir, sizeof(dir), "/tmp/test_redis.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	make_certificates();
	plain_port = free_port();
	plain_pid = start_server(plain_port, false);
	tls_port = free_port();
	tls_pid = start_server(tls_port, true);
}

static void servers_down(void)
{
	stop_server(&plain_pid);
	stop_server(&tls_pid);
	run_tool((char *const[]){"rm", "-rf", dir, NULL});
}

static cat_redis_t *client(const char *password, int timeout_ms)
{
	char url[64], errstr[256];
	cat_redis_opts_t opts = {.url = url, .password = password, .timeout_ms = timeout_ms,
				 .client_name = "test-redis"};
	cat_redis_t *redis = NULL;

	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/1", plain_port);
	ck_assert_int_eq(cat_redis_new(&redis, &opts, errstr, sizeof(errstr)), CAT_OK);
	return redis;
}

START_TEST(test_wrong_password_is_fatal_and_hidden)
{
	cat_redis_t *redis = client("wrong-secret-x1", 0);
	char errstr[256];

	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_msg(strstr(errstr, "could not log in to redis://127.0.0.1:"), "%s", errstr);
	ck_assert_msg(!strstr(errstr, "wrong-secret") && !strstr(errstr, PASSWORD), "%s", errstr);
	cat_redis_destroy(redis);
}
END_TEST

START_TEST(test_pipeline_in_order)
{
	cat_redis_t *redis = client(PASSWORD, 0);
	redisReply **replies = NULL, *reply = NULL;
	size_t n = 0;
	char errstr[256], key[32], value[32];

	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_OK);
	/* the version read at connect (the suite's redis-server is 7.x) */
	ck_assert_msg(strncmp(cat_redis_server_version(redis), "7.", 2) == 0, "%s", cat_redis_server_version(redis));
	/* db 1 of the URL, and the client's name */
	ck_assert_int_eq(cat_redis_command(redis, &reply, 2, (const char *[]){"CLIENT", "GETNAME"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	ck_assert_str_eq(reply->str, "test-redis");
	freeReplyObject(reply);
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		snprintf(value, sizeof(value), "v%d", i);
		ck_assert_int_eq(cat_redis_append(redis, 3, (const char *[]){"SET", key, value}, NULL), CAT_OK);
		ck_assert_int_eq(cat_redis_append(redis, 2, (const char *[]){"GET", key}, NULL), CAT_OK);
	}
	ck_assert_uint_eq(cat_redis_pending(redis), 10000);
	ck_assert_int_eq(cat_redis_pipeline(redis, NULL, 0, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(n, 10000);
	ck_assert_uint_eq(cat_redis_pending(redis), 0);
	for (int i = 0; i < 5000; i++) {
		snprintf(value, sizeof(value), "v%d", i);
		ck_assert_int_eq(replies[2 * i]->type, REDIS_REPLY_STATUS);
		ck_assert_str_eq(replies[2 * i + 1]->str, value);
	}
	cat_redis_replies_free(replies, n);
	/* binary-safe arguments, and an error reply among others */
	ck_assert_int_eq(cat_redis_append(redis, 3, (const char *[]){"SET", "bin", "a\0b"}, (size_t[]){3, 3, 3}),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append(redis, 3, (const char *[]){"SADD", "bin", "x"}, NULL), CAT_OK);
	ck_assert_int_eq(cat_redis_append(redis, 2, (const char *[]){"STRLEN", "bin"}, NULL), CAT_OK);
	ck_assert_int_eq(cat_redis_pipeline(redis, NULL, 0, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(cat_redis_reply_class(replies[1], errstr, sizeof(errstr)), CAT_ERR_PERMANENT);
	ck_assert_int_eq(replies[2]->integer, 3);
	cat_redis_replies_free(replies, n);
	ck_assert_int_eq(cat_redis_command(redis, &reply, 2, (const char *[]){"EXISTS", "k1"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(reply->integer, 1);
	freeReplyObject(reply);
	cat_redis_destroy(redis);
}
END_TEST

START_TEST(test_noscript_reloads_once)
{
	static const char source[] = "if redis.call('EXISTS', KEYS[1]) == 0 then "
				     "return redis.call('SET', KEYS[1], ARGV[1]) end return 'kept'";
	cat_redis_t *redis = client(PASSWORD, 0);
	cat_redis_script_t script;
	redisReply **replies = NULL;
	size_t n = 0;
	char errstr[256];

	cat_redis_script_init(&script, source);
	ck_assert_int_eq(cat_redis_command(redis, NULL, 2, (const char *[]){"SCRIPT", "FLUSH"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_command(redis, NULL, 3, (const char *[]){"DEL", "s1", "s2"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append_evalsha(redis, &script, 1, 2, (const char *[]){"s1", "one"}, NULL),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append_evalsha(redis, &script, 1, 2, (const char *[]){"s1", "two"}, NULL),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append_evalsha(redis, &script, 1, 2, (const char *[]){"s2", "three"}, NULL),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_pipeline(redis, &script, 1, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(cat_redis_script_reloads(redis), 1);
	ck_assert_str_eq(replies[0]->str, "OK");
	ck_assert_str_eq(replies[1]->str, "kept");
	ck_assert_str_eq(replies[2]->str, "OK");
	cat_redis_replies_free(replies, n);
	/* loaded now: no reload */
	ck_assert_int_eq(cat_redis_append_evalsha(redis, &script, 1, 2, (const char *[]){"s1", "x"}, NULL), CAT_OK);
	ck_assert_int_eq(cat_redis_pipeline(redis, &script, 1, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(replies[0]->str, "kept");
	cat_redis_replies_free(replies, n);
	ck_assert_uint_eq(cat_redis_script_reloads(redis), 1);
	/* without the script to load, NOSCRIPT comes back as the reply */
	ck_assert_int_eq(cat_redis_command(redis, NULL, 2, (const char *[]){"SCRIPT", "FLUSH"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append_evalsha(redis, &script, 1, 2, (const char *[]){"s1", "x"}, NULL), CAT_OK);
	ck_assert_int_eq(cat_redis_pipeline(redis, NULL, 0, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(replies[0]->type, REDIS_REPLY_ERROR);
	ck_assert_int_eq(strncmp(replies[0]->str, "NOSCRIPT", 8), 0);
	cat_redis_replies_free(replies, n);
	cat_redis_destroy(redis);
}
END_TEST

/* send/wait: the next pipeline is queued while one is in flight; a
 * NOSCRIPT of the one in flight reloads and sends it again, leaving the
 * queued one queued (and unsent) until its own send. EVALSHA arguments in
 * protocol form (cat_redis_append_evalsha_bulk). */
START_TEST(test_send_wait_overlap)
{
	static const char source[] = "if redis.call('EXISTS', KEYS[1]) == 0 then "
				     "return redis.call('SET', KEYS[1], ARGV[1]) end return 'kept'";
	static const char bulk1[] = "$2\r\nb1\r\n$3\r\none\r\n";
	static const char bulk2[] = "$2\r\nb1\r\n$3\r\ntwo\r\n";
	cat_redis_t *redis = client(PASSWORD, 0);
	cat_redis_script_t script;
	redisReply **replies = NULL, *reply = NULL;
	size_t n = 0;
	char errstr[256];

	cat_redis_script_init(&script, source);
	ck_assert_int_eq(cat_redis_command(redis, NULL, 2, (const char *[]){"SCRIPT", "FLUSH"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_command(redis, NULL, 3, (const char *[]){"DEL", "b1", "b2"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	/* nothing queued: sending and waiting do nothing */
	ck_assert_int_eq(cat_redis_send(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_redis_wait(redis, &script, 1, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(cat_redis_append_evalsha_bulk(redis, &script, 1, 2, (const char *[]){"$2\r\nb1", "\r\n$3\r\none\r\n"},
						       (size_t[]){6, 11}, 2),
			 CAT_OK);
	ck_assert_uint_eq(cat_redis_pending_bytes(redis) > sizeof(bulk1), 1);
	ck_assert_int_eq(cat_redis_send(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(cat_redis_in_flight(redis), 1);
	ck_assert_uint_eq(cat_redis_pending(redis), 0);
	/* the next pipeline, queued meanwhile */
	ck_assert_int_eq(cat_redis_append_evalsha_bulk(redis, &script, 1, 2, (const char *[]){bulk2},
						       (size_t[]){sizeof(bulk2) - 1}, 1),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append(redis, 2, (const char *[]){"GET", "b1"}, NULL), CAT_OK);
	/* a second send before the wait is refused */
	ck_assert_int_eq(cat_redis_send(redis, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_int_eq(cat_redis_append_evalsha_bulk(redis, &script, 1, 2, (const char *[]){bulk2},
						       (size_t[]){sizeof(bulk2) - 1}, 1),
			 CAT_OK);
	ck_assert_int_eq(cat_redis_append(redis, 2, (const char *[]){"GET", "b1"}, NULL), CAT_OK);
	ck_assert_uint_eq(cat_redis_pending(redis), 2);
	ck_assert_int_eq(cat_redis_wait(redis, &script, 1, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(replies[0]->str, "OK");
	ck_assert_uint_eq(cat_redis_script_reloads(redis), 1);
	cat_redis_replies_free(replies, n);
	ck_assert_uint_eq(cat_redis_in_flight(redis), 0);
	ck_assert_uint_eq(cat_redis_pending(redis), 2);
	ck_assert_int_eq(cat_redis_send(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_redis_wait(redis, &script, 1, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(replies[0]->str, "kept");
	ck_assert_str_eq(replies[1]->str, "one");
	cat_redis_replies_free(replies, n);
	/* a command in the middle of a pipeline in flight is refused */
	ck_assert_int_eq(cat_redis_append(redis, 2, (const char *[]){"GET", "b1"}, NULL), CAT_OK);
	ck_assert_int_eq(cat_redis_send(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_redis_command(redis, &reply, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)),
			 CAT_ERR_FATAL);
	ck_assert_int_eq(cat_redis_wait(redis, NULL, 0, &replies, &n, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(replies[0]->str, "one");
	cat_redis_replies_free(replies, n);
	cat_redis_destroy(redis);
}
END_TEST

START_TEST(test_timeout_then_reconnect)
{
	cat_redis_t *redis = client(PASSWORD, 300);
	redisReply **replies = NULL;
	size_t n = 0;
	char errstr[256];
	int64_t t0;

	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_redis_append(redis, 3, (const char *[]){"DEBUG", "SLEEP", "1.5"}, NULL), CAT_OK);
	t0 = cat_time_mono_us();
	ck_assert_int_eq(cat_redis_pipeline(redis, NULL, 0, &replies, &n, errstr, sizeof(errstr)),
			 CAT_ERR_RETRIABLE);
	ck_assert_msg(cat_time_mono_us() - t0 < 1400000, "the timeout did not end the wait");
	ck_assert_msg(strstr(errstr, "no reply in time"), "%s", errstr);
	ck_assert_ptr_null(replies);
	ck_assert(!cat_redis_is_connected(redis));
	ck_assert_uint_eq(cat_redis_pending(redis), 0);
	/* a queue without a connection fails at once */
	ck_assert_int_eq(cat_redis_append(redis, 1, (const char *[]){"PING"}, NULL), CAT_OK);
	ck_assert_int_eq(cat_redis_pipeline(redis, NULL, 0, &replies, &n, errstr, sizeof(errstr)),
			 CAT_ERR_RETRIABLE);
	usleep(1500000);
	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(cat_redis_connects(redis), 2);
	ck_assert_int_eq(cat_redis_command(redis, NULL, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)),
			 CAT_OK);
	cat_redis_destroy(redis);
}
END_TEST

START_TEST(test_server_gone_is_retriable)
{
	cat_redis_t *redis = client(PASSWORD, 0);
	char errstr[256];

	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_redis_command(redis, NULL, 3, (const char *[]){"CLIENT", "KILL", "SKIPME"}, NULL,
					   errstr, sizeof(errstr)),
			 CAT_ERR_PERMANENT); /* syntax: an error reply keeps the connection */
	ck_assert(cat_redis_is_connected(redis));
	ck_assert_int_eq(cat_redis_command(redis, NULL, 4,
					   (const char *[]){"CLIENT", "KILL", "SKIPME", "no"}, NULL, errstr,
					   sizeof(errstr)),
			 CAT_OK);
	/* our own connection was killed too: the next command notices */
	ck_assert_int_eq(cat_redis_command(redis, NULL, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)),
			 CAT_ERR_RETRIABLE);
	ck_assert(!cat_redis_is_connected(redis));
	ck_assert_int_eq(cat_redis_command(redis, NULL, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)),
			 CAT_OK);
	cat_redis_destroy(redis);
}
END_TEST

static cat_err_t tls_connect(const char *host, const char *ca, const char *server_name, bool no_verify,
			     char *errstr, size_t errstr_size)
{
	char url[96];
	cat_redis_opts_t opts = {.url = url, .password = PASSWORD, .tls_ca_file = ca,
				 .tls_server_name = server_name, .tls_no_verify = no_verify};
	cat_redis_t *redis = NULL;
	redisReply *reply = NULL;
	cat_err_t err;

	snprintf(url, sizeof(url), "rediss://%s:%d/0", host, tls_port);
	if ((err = cat_redis_new(&redis, &opts, errstr, errstr_size)) != CAT_OK)
		return err;
	err = cat_redis_command(redis, &reply, 3, (const char *[]){"SET", "tls", "yes"}, NULL, errstr, errstr_size);
	if (err == CAT_OK) {
		freeReplyObject(reply);
		err = cat_redis_command(redis, &reply, 2, (const char *[]){"GET", "tls"}, NULL, errstr, errstr_size);
		ck_assert_int_eq(err, CAT_OK);
		ck_assert_str_eq(reply->str, "yes");
		freeReplyObject(reply);
	}
	cat_redis_destroy(redis);
	return err;
}

START_TEST(test_tls)
{
	char errstr[512];

	ck_assert_msg(tls_connect("127.0.0.1", path_in("ca.crt"), NULL, false, errstr, sizeof(errstr)) == CAT_OK,
		      "%s", errstr);
	ck_assert_msg(tls_connect("localhost", path_in("ca.crt"), NULL, false, errstr, sizeof(errstr)) == CAT_OK,
		      "%s", errstr);
	/* the system's trust store does not know the test CA */
	ck_assert_int_eq(tls_connect("127.0.0.1", NULL, NULL, false, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_msg(strstr(errstr, "does not verify"), "%s", errstr);
	/* the certificate is not for that name */
	ck_assert_int_eq(tls_connect("127.0.0.1", path_in("ca.crt"), "cache.example.com", false, errstr,
				     sizeof(errstr)),
			 CAT_ERR_FATAL);
	ck_assert_msg(strstr(errstr, "does not verify"), "%s", errstr);
	ck_assert_int_eq(tls_connect("127.0.0.1", NULL, NULL, true, errstr, sizeof(errstr)), CAT_OK);
	/* a CA file that did not issue the certificate */
	ck_assert_int_ne(tls_connect("127.0.0.1", path_in("server.crt"), NULL, false, errstr, sizeof(errstr)),
			 CAT_OK);
}
END_TEST

/* --- a fake server (forked): hostile or old ------------------------------------------------- */

enum fake_mode { FAKE_OLD, FAKE_NO_INFO, FAKE_TRICKLE, FAKE_HUGE };

static void send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n <= 0)
			_exit(0);
		buf += n;
		len -= (size_t)n;
	}
}

/* Reads one command (RESP array of bulk strings) from fd; its first word
 * upper-cased into cmd. False when the client went away. */
static bool read_command(int fd, char *cmd, size_t cmd_size)
{
	char line[128];
	long argc = 0;

	for (int arg = -1;; arg++) {
		size_t n = 0;
		long len;

		/* a line */
		while (n + 1 < sizeof(line)) {
			if (recv(fd, line + n, 1, 0) != 1)
				return false;
			if (line[n++] == '\n')
				break;
		}
		line[n] = '\0';
		if (arg == -1) {
			argc = strtol(line + 1, NULL, 10);
			if (argc <= 0)
				return false;
			continue;
		}
		len = strtol(line + 1, NULL, 10);
		for (long i = 0; i < len + 2; i++) {
			char c;

			if (recv(fd, &c, 1, 0) != 1)
				return false;
			if (arg == 0 && i < len && (size_t)i + 1 < cmd_size) {
				cmd[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
				cmd[i + 1] = '\0';
			}
		}
		if (arg + 1 == argc)
			return true;
	}
}

static void fake_serve(int fd, enum fake_mode mode)
{
	char cmd[32];

	while (read_command(fd, cmd, sizeof(cmd))) {
		if (strcmp(cmd, "INFO") == 0) {
			const char *version = mode == FAKE_OLD ? "6.2.14" : "7.0.15";
			char body[256], out[300];
			int len;

			if (mode == FAKE_NO_INFO) {
				const char *e = "-NOPERM this user has no permissions to run the 'info' command\r\n";
				send_all(fd, e, strlen(e));
				continue;
			}
			len = snprintf(body, sizeof(body), "# Server\r\nredis_version:%s\r\nredis_mode:standalone\r\n",
				       version);
			len = snprintf(out, sizeof(out), "$%d\r\n%s\r\n", len, body);
			send_all(fd, out, (size_t)len);
		} else if (strcmp(cmd, "HELLO") == 0) {
			const char *r = "*6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n"
					"$5\r\nproto\r\n:2\r\n";
			send_all(fd, r, strlen(r));
		} else if (strcmp(cmd, "PING") == 0 && mode == FAKE_TRICKLE) {
			/* a byte every 100 ms, never a whole reply */
			send_all(fd, "+", 1);
			for (;;) {
				usleep(100000);
				send_all(fd, "P", 1);
			}
		} else if (strcmp(cmd, "PING") == 0 && mode == FAKE_HUGE) {
			/* a well-formed 32 MiB bulk string */
			static char chunk[65536];
			const char *head = "$33554432\r\n";

			memset(chunk, 'x', sizeof(chunk));
			send_all(fd, head, strlen(head));
			for (int i = 0; i < 512; i++)
				send_all(fd, chunk, sizeof(chunk));
			send_all(fd, "\r\n", 2);
		} else {
			send_all(fd, "+OK\r\n", 5);
		}
	}
}

/* Forks a fake server on a free port; *pid to stop it. */
static int fake_start(enum fake_mode mode, pid_t *pid)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	ck_assert_int_ge(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 8), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*pid = fork();
	ck_assert_int_ge(*pid, 0);
	if (*pid == 0) {
		for (;;) {
			int c = accept(fd, NULL, NULL);

			if (c < 0)
				_exit(0);
			if (fork() == 0) {
				close(fd);
				fake_serve(c, mode);
				_exit(0);
			}
			close(c);
		}
	}
	close(fd);
	return ntohs(sa.sin_port);
}

static void fake_stop(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

static cat_redis_t *fake_client(int port, int timeout_ms, size_t max_reply_bytes)
{
	char url[64], errstr[256];
	cat_redis_opts_t opts = {.url = url, .password = PASSWORD, .connect_timeout_ms = 2000,
				 .timeout_ms = timeout_ms, .client_name = "test-redis",
				 .max_reply_bytes = max_reply_bytes};
	cat_redis_t *redis = NULL;

	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/2", port);
	ck_assert_int_eq(cat_redis_new(&redis, &opts, errstr, sizeof(errstr)), CAT_OK);
	return redis;
}

START_TEST(test_old_server_is_refused)
{
	pid_t pid;
	int port = fake_start(FAKE_OLD, &pid);
	cat_redis_t *redis = fake_client(port, 2000, 0);
	char errstr[512];

	ck_assert_int_eq(cat_redis_ensure(redis, errstr, sizeof(errstr)), CAT_ERR_FATAL);
	ck_assert_msg(strstr(errstr, "is version 6.2.14; catalyst needs Redis 7.0 or newer"), "%s", errstr);
	ck_assert_msg(!strchr(errstr, '\n') && !strstr(errstr, PASSWORD), "%s", errstr);
	ck_assert(!cat_redis_is_connected(redis));
	cat_redis_destroy(redis);
	fake_stop(pid);
}
END_TEST

START_TEST(test_version_from_hello_when_info_refused)
{
	pid_t pid;
	int port = fake_start(FAKE_NO_INFO, &pid);
	cat_redis_t *redis = fake_client(port, 2000, 0);
	char errstr[512];

	ck_assert_msg(cat_redis_ensure(redis, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
	ck_assert_str_eq(cat_redis_server_version(redis), "7.2.4");
	cat_redis_destroy(redis);
	fake_stop(pid);
}
END_TEST

START_TEST(test_trickled_reply_meets_the_deadline)
{
	pid_t pid;
	int port = fake_start(FAKE_TRICKLE, &pid);
	cat_redis_t *redis = fake_client(port, 700, 0);
	char errstr[512];

	/* bytes keep arriving, the reply never completes: the total deadline
	 * ends it (before the fix every byte restarted the timeout: a hang) */
	ck_assert_int_eq(cat_redis_command(redis, NULL, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)),
			 CAT_ERR_RETRIABLE);
	ck_assert_msg(strstr(errstr, "no reply in time") && !strchr(errstr, '\n'), "%s", errstr);
	ck_assert(!cat_redis_is_connected(redis));
	cat_redis_destroy(redis);
	fake_stop(pid);
}
END_TEST

START_TEST(test_oversized_reply_is_refused)
{
	pid_t pid;
	int port = fake_start(FAKE_HUGE, &pid);
	cat_redis_t *redis = fake_client(port, 20000, 1024 * 1024);
	redisReply *reply = NULL;
	char errstr[512];

	ck_assert_int_eq(cat_redis_command(redis, &reply, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)),
			 CAT_ERR_RETRIABLE);
	ck_assert_ptr_null(reply);
	ck_assert_msg(strstr(errstr, "a reply larger than 1048576 bytes") && !strchr(errstr, '\n'), "%s", errstr);
	ck_assert(!cat_redis_is_connected(redis));
	cat_redis_destroy(redis);
	/* the default limit (64 MiB) takes the same reply */
	redis = fake_client(port, 20000, 0);
	ck_assert_msg(cat_redis_command(redis, &reply, 1, (const char *[]){"PING"}, NULL, errstr, sizeof(errstr)) ==
			      CAT_OK,
		      "%s", errstr);
	ck_assert_uint_eq(reply->len, 32u * 1024 * 1024);
	freeReplyObject(reply);
	cat_redis_destroy(redis);
	fake_stop(pid);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("redis");
	TCase *offline = tcase_create("offline");
	TCase *live = tcase_create("live");
	TCase *fake = tcase_create("fake");
	SRunner *sr;
	int failed;

	tcase_add_test(offline, test_url_parse);
	tcase_add_test(offline, test_reply_class);
	tcase_add_test(offline, test_script_sha);
	tcase_add_test(offline, test_bad_tls_files_are_fatal);
	tcase_add_test(offline, test_refused_is_retriable_and_hides_password);
	suite_add_tcase(s, offline);

	tcase_add_unchecked_fixture(live, servers_up, servers_down);
	tcase_set_timeout(live, 30);
	tcase_add_test(live, test_wrong_password_is_fatal_and_hidden);
	tcase_add_test(live, test_pipeline_in_order);
	tcase_add_test(live, test_noscript_reloads_once);
	tcase_add_test(live, test_send_wait_overlap);
	tcase_add_test(live, test_timeout_then_reconnect);
	tcase_add_test(live, test_server_gone_is_retriable);
	tcase_add_test(live, test_tls);
	suite_add_tcase(s, live);

	tcase_set_timeout(fake, 30);
	tcase_add_test(fake, test_old_server_is_refused);
	tcase_add_test(fake, test_version_from_hello_when_info_refused);
	tcase_add_test(fake, test_trickled_reply_meets_the_deadline);
	tcase_add_test(fake, test_oversized_reply_is_refused);
	suite_add_tcase(s, fake);

	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
