#include "cat_pg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_metrics.h"

/* Copies a libpq message into dst on one line: line breaks become "; ",
 * runs of blanks one space, trailing whitespace goes. */
static void flatten(char *dst, size_t dst_size, const char *src)
{
	size_t n = 0;

	if (dst_size == 0)
		return;
	for (const char *c = src ? src : ""; *c && n + 1 < dst_size; c++) {
		if (*c == '\n' || *c == '\r') {
			while (n > 0 && dst[n - 1] == ' ')
				n--;
			if (n > 0 && n + 3 < dst_size && dst[n - 1] != ';') {
				dst[n++] = ';';
				dst[n++] = ' ';
			}
			continue;
		}
		if (isspace((unsigned char)*c)) {
			if (n > 0 && dst[n - 1] != ' ')
				dst[n++] = ' ';
			continue;
		}
		dst[n++] = *c;
	}
	while (n > 0 && (isspace((unsigned char)dst[n - 1]) || dst[n - 1] == ';'))
		n--;
	dst[n] = '\0';
}

/* "INSERT" from "insert into ...": what the statement does, for messages. */
static void first_word(char *dst, size_t dst_size, const char *sql)
{
	size_t n = 0;

	while (*sql && isspace((unsigned char)*sql))
		sql++;
	while (isalpha((unsigned char)*sql) && n + 1 < dst_size)
		dst[n++] = (char)toupper((unsigned char)*sql++);
	if (n == 0 && dst_size > 10)
		n = (size_t)snprintf(dst, dst_size, "statement");
	dst[n] = '\0';
}

static void notice_receiver(void *arg, const PGresult *res)
{
	const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	char msg[1024];

	(void)arg;
	flatten(msg, sizeof(msg), primary ? primary : PQresultErrorMessage(res));
	if (severity && strcmp(severity, "WARNING") == 0)
		CAT_LOG_WARN("PG", "server warning: %s", msg);
	else
		CAT_LOG_DEBUG("PG", "server %s: %s", severity ? severity : "notice", msg);
}

cat_err_t cat_pg_connect_error_class(const char *message)
{
	/* libpq reports connection failures as text only; these are the ones
	 * that retrying cannot fix (server messages assume lc_messages=C/en) */
	static const char *const fatal_parts[] = {
		"authentication failed", /* 28P01 password, peer, cert */
		"no password supplied",	 /* fe_sendauth */
		"no pg_hba.conf entry",	 /* 28000 */
		"does not exist",	 /* 3D000 database, 28000 role */
		"permission denied",	 /* 42501 CONNECT privilege */
		"SSL was required",	 /* sslmode=require, server without TLS */
		"server does not support SSL",
		"certificate", /* verify-ca / verify-full failures */
		"invalid connection option",
		"invalid sslmode value",
		"invalid integer value",
		"invalid port number",
	};

	if (!message)
		return CAT_ERR_RETRIABLE;
	for (size_t i = 0; i < sizeof(fatal_parts) / sizeof(fatal_parts[0]); i++)
		if (strstr(message, fatal_parts[i]))
			return CAT_ERR_FATAL;
	return CAT_ERR_RETRIABLE;
}

cat_err_t cat_pg_connect(PGconn **out, const char *url, const char *app_name, int timeout_s, char *errstr,
			 size_t errstr_size)
{
	/* the URL is expanded first; what follows overrides it, except that
	 * fallback_application_name yields to an application_name in the URL */
	char timeout[16];
	const char *const keywords[] = {"dbname", "fallback_application_name", "connect_timeout", NULL};
	const char *values[] = {url, app_name, timeout, NULL};
	char msg[1024];
	PGconn *conn;
	cat_err_t err;

	*out = NULL;
	snprintf(timeout, sizeof(timeout), "%d", timeout_s > 0 ? timeout_s : 10);
	conn = PQconnectdbParams(keywords, values, 1);
	if (!conn)
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				   "could not connect to PostgreSQL: out of memory");
	if (PQstatus(conn) != CONNECTION_OK) {
		flatten(msg, sizeof(msg), PQerrorMessage(conn));
		err = cat_pg_connect_error_class(msg);
		PQfinish(conn);
		return cat_err_set(errstr, errstr_size, err, "could not connect to PostgreSQL: %s", msg);
	}
	PQsetNoticeReceiver(conn, notice_receiver, NULL);
	*out = conn;
	return CAT_OK;
}

void cat_pg_close(PGconn *conn)
{
	if (conn)
		PQfinish(conn);
}

cat_err_t cat_pg_error_class(const PGconn *conn, const PGresult *res)
{
	if (!conn || PQstatus(conn) == CONNECTION_BAD || !res)
		return CAT_ERR_RETRIABLE;
	return cat_err_class_sqlstate(PQresultErrorField(res, PG_DIAG_SQLSTATE));
}

static bool result_ok(const PGresult *res)
{
	switch (PQresultStatus(res)) {
	case PGRES_COMMAND_OK:
	case PGRES_TUPLES_OK:
	case PGRES_EMPTY_QUERY:
		return true;
	default:
		return false;
	}
}

/* The 1-based line of a 1-based character position in sql (PostgreSQL
 * counts characters, the script is UTF-8). */
static int line_of_position(const char *sql, long position)
{
	int line = 1;
	long chars = 0;

	for (const unsigned char *c = (const unsigned char *)sql; *c; c++) {
		if ((*c & 0xC0) != 0x80 && ++chars >= position)
			break;
		if (*c == '\n')
			line++;
	}
	return line;
}

/* "could not <what>: <message><where> (SQLSTATE x)", classed. */
static cat_err_t result_error(const PGconn *conn, const PGresult *res, const char *what, const char *where,
			      char *errstr, size_t errstr_size)
{
	const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char msg[1024];
	char state[32] = "";

	flatten(msg, sizeof(msg), primary ? primary : conn ? PQerrorMessage(conn) : NULL);
	if (sqlstate)
		snprintf(state, sizeof(state), " (SQLSTATE %s)", sqlstate);
	return cat_err_set(errstr, errstr_size, cat_pg_error_class(conn, res), "could not %s: %s%s%s", what,
			   msg[0] ? msg : "no result from server", where, state);
}

cat_err_t cat_pg_result_error(const PGconn *conn, const PGresult *res, const char *what, char *errstr,
			      size_t errstr_size)
{
	return result_error(conn, res, what, "", errstr, errstr_size);
}

/* Fills errstr for a failed statement and returns its class. */
static cat_err_t statement_error(PGconn *conn, const PGresult *res, const char *sql, bool script,
				 char *errstr, size_t errstr_size)
{
	const char *position = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
	char verb[32];
	char what[48];
	char where[32] = "";

	if (script)
		snprintf(verb, sizeof(verb), "script");
	else
		first_word(verb, sizeof(verb), sql);
	snprintf(what, sizeof(what), "execute %s", verb);
	if (script && position)
		snprintf(where, sizeof(where), " at line %d", line_of_position(sql, atol(position)));
	return result_error(conn, res, what, where, errstr, errstr_size);
}

cat_err_t cat_pg_exec(PGconn *conn, const char *sql, int nparams, const char *const *params, PGresult **out,
		      char *errstr, size_t errstr_size)
{
	PGresult *res;
	cat_err_t err;

	if (out)
		*out = NULL;
	res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (!res || !result_ok(res)) {
		err = statement_error(conn, res, sql, false, errstr, errstr_size);
		PQclear(res);
		return err;
	}
	if (out)
		*out = res;
	else
		PQclear(res);
	return CAT_OK;
}

cat_err_t cat_pg_exec_script(PGconn *conn, const char *sql, char *errstr, size_t errstr_size)
{
	PGresult *res = PQexec(conn, sql);
	cat_err_t err = CAT_OK;

	if (!res || !result_ok(res))
		err = statement_error(conn, res, sql, true, errstr, errstr_size);
	PQclear(res);
	return err;
}

cat_err_t cat_pg_begin(PGconn *conn, char *errstr, size_t errstr_size)
{
	return cat_pg_exec(conn, "BEGIN", 0, NULL, NULL, errstr, errstr_size);
}

cat_err_t cat_pg_commit(PGconn *conn, char *errstr, size_t errstr_size)
{
	return cat_pg_exec(conn, "COMMIT", 0, NULL, NULL, errstr, errstr_size);
}

cat_err_t cat_pg_rollback(PGconn *conn, char *errstr, size_t errstr_size)
{
	return cat_pg_exec(conn, "ROLLBACK", 0, NULL, NULL, errstr, errstr_size);
}

cat_err_t cat_pg_require_schema(PGconn *conn, int version, char *errstr, size_t errstr_size)
{
	PGresult *res = NULL;
	cat_err_t err;
	int applied;

	err = cat_pg_exec(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL, &res, errstr,
			  errstr_size);
	if (err != CAT_OK)
		goto out;
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				  "no schema_migrations table: no migration was applied to this database, "
				  "this worker needs schema version %d: run catalyst-migrate up",
				  version);
		goto out;
	}
	PQclear(res);
	res = NULL;
	err = cat_pg_exec(conn, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL, &res,
			  errstr, errstr_size);
	if (err != CAT_OK)
		goto out;
	applied = atoi(PQgetvalue(res, 0, 0));
	if (applied < version)
		err = cat_err_set(
			errstr, errstr_size, CAT_ERR_FATAL,
			"schema version %d is applied, this worker needs %d: run catalyst-migrate up",
			applied, version);
out:
	PQclear(res);
	return err;
}

/* --- sessions ------------------------------------------------------------ */

struct cat_pg_session {
	char *url; /* a secret: wiped when freed */
	char *app_name;
	char *what;
	int connect_timeout_s;
	int schema_version;
	cat_err_t (*on_connect)(PGconn *conn, char *errstr, size_t errstr_size);
	void (*on_connected)(PGconn *conn, void *opaque);
	void *opaque;
	cat_metric_t *reconnects;
	PGconn *conn;
	bool lost; /* the last connection was dropped: the next one is a reconnect */
};

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

void cat_pg_session_opts_from_config(cat_pg_session_opts_t *opts, const cat_config_t *cfg, const char *app_name)
{
	memset(opts, 0, sizeof(*opts));
	opts->url = cat_config_str(cfg, "CATALYST_PG_URL");
	opts->app_name = app_name;
	opts->what = "primary";
	opts->connect_timeout_s = (int)cat_config_int(cfg, "CATALYST_PG_CONNECT_TIMEOUT_S");
}

cat_err_t cat_pg_session_new(cat_pg_session_t **out, const cat_pg_session_opts_t *opts, char *errstr,
			     size_t errstr_size)
{
	cat_pg_session_t *session = calloc(1, sizeof(*session));

	*out = NULL;
	if (!session)
		goto oom;
	session->url = dup_or_empty(opts->url);
	session->app_name = dup_or_empty(opts->app_name);
	session->what = dup_or_empty(opts->what ? opts->what : "database");
	if (!session->url || !session->app_name || !session->what)
		goto oom;
	session->connect_timeout_s = opts->connect_timeout_s > 0 ? opts->connect_timeout_s : 10;
	session->schema_version = opts->schema_version;
	session->on_connect = opts->on_connect;
	session->on_connected = opts->on_connected;
	session->opaque = opts->opaque;
	session->reconnects = opts->reconnects;
	*out = session;
	return CAT_OK;
oom:
	cat_pg_session_free(session);
	return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
}

void cat_pg_session_free(cat_pg_session_t *session)
{
	if (!session)
		return;
	cat_pg_close(session->conn);
	if (session->url) {
		explicit_bzero(session->url, strlen(session->url));
		free(session->url);
	}
	free(session->app_name);
	free(session->what);
	free(session);
}

cat_err_t cat_pg_session_ensure(cat_pg_session_t *session, PGconn **conn, char *errstr, size_t errstr_size)
{
	char inner[900];
	PGconn *c = NULL;
	cat_err_t err;

	*conn = NULL;
	if (session->conn && PQstatus(session->conn) == CONNECTION_OK) {
		*conn = session->conn;
		return CAT_OK;
	}
	if (session->conn) {
		cat_pg_close(session->conn);
		session->conn = NULL;
		session->lost = true;
	}
	err = cat_pg_connect(&c, session->url, session->app_name, session->connect_timeout_s, inner,
			     sizeof(inner));
	if (err == CAT_OK && session->schema_version > 0)
		err = cat_pg_require_schema(c, session->schema_version, inner, sizeof(inner));
	if (err == CAT_OK && session->on_connect)
		err = session->on_connect(c, inner, sizeof(inner));
	if (err != CAT_OK) {
		cat_pg_close(c);
		return cat_err_set(errstr, errstr_size, err, "%s: %s", session->what, inner);
	}
	if (session->lost && session->reconnects)
		cat_metrics_inc(session->reconnects);
	session->lost = false;
	session->conn = c;
	CAT_LOG_INFO("PG", "connected to the %s", session->what);
	if (session->on_connected)
		session->on_connected(c, session->opaque);
	*conn = c;
	return CAT_OK;
}

PGconn *cat_pg_session_conn(const cat_pg_session_t *session)
{
	return session->conn;
}

void cat_pg_session_failed(cat_pg_session_t *session)
{
	PGconn *c = session->conn;

	if (!c)
		return;
	if (PQstatus(c) == CONNECTION_OK) {
		switch (PQtransactionStatus(c)) {
		case PQTRANS_IDLE:
			return;
		case PQTRANS_INTRANS:
		case PQTRANS_INERROR:
			if (cat_pg_rollback(c, NULL, 0) == CAT_OK)
				return;
			break;
		default: /* a command still active, or unknown: the connection cannot be trusted */
			break;
		}
	}
	cat_pg_close(c);
	session->conn = NULL;
	session->lost = true;
}

void cat_pg_session_close(cat_pg_session_t *session)
{
	cat_pg_close(session->conn);
	session->conn = NULL;
}

bool cat_pg_session_ping(const cat_pg_session_t *session, char *reason, size_t reason_size)
{
	const char *const keywords[] = {"dbname", "connect_timeout", NULL};
	const char *const values[] = {session->url, "2", NULL};

	/* PQpingParams is thread-safe and needs no valid credentials */
	switch (PQpingParams(keywords, values, 1)) {
	case PQPING_OK:
		return true;
	case PQPING_REJECT:
		snprintf(reason, reason_size, "PostgreSQL %s is not accepting connections", session->what);
		return false;
	default:
		snprintf(reason, reason_size, "PostgreSQL %s does not answer", session->what);
		return false;
	}
}

/* --- script splitting ---------------------------------------------------- */

static bool ident_char(char c)
{
	return isalnum((unsigned char)c) || c == '_' || c == '$' || (unsigned char)c >= 0x80;
}

/* Past a quoted text starting at sql[i] (the opening quote); `escapes`:
 * backslash escapes (E'...'). A doubled quote stands for itself. */
static size_t skip_quoted(const char *sql, size_t i, char quote, bool escapes)
{
	for (i++; sql[i]; i++) {
		if (escapes && sql[i] == '\\' && sql[i + 1]) {
			i++;
		} else if (sql[i] == quote) {
			if (sql[i + 1] != quote)
				return i + 1;
			i++;
		}
	}
	return i;
}

/* Length of a dollar-quote tag ("$$", "$body$") at sql[i], 0 if none. */
static size_t dollar_tag(const char *sql, size_t i)
{
	size_t j = i + 1;

	if (sql[j] == '$')
		return 2;
	if (!(isalpha((unsigned char)sql[j]) || sql[j] == '_' || (unsigned char)sql[j] >= 0x80))
		return 0;
	while (sql[j] && sql[j] != '$' && ident_char(sql[j]))
		j++;
	return sql[j] == '$' ? j - i + 1 : 0;
}

bool cat_pg_script_next(const char *sql, size_t *pos, size_t *start, size_t *len)
{
	size_t i = *pos;

	while (sql[i]) {
		size_t begin = i;
		size_t end;
		bool code = false;

		while (sql[i] && sql[i] != ';') {
			char c = sql[i];

			if (c == '-' && sql[i + 1] == '-') {
				while (sql[i] && sql[i] != '\n')
					i++;
			} else if (c == '/' && sql[i + 1] == '*') {
				int depth = 1;

				for (i += 2; sql[i] && depth > 0; i++) {
					if (sql[i] == '/' && sql[i + 1] == '*')
						depth++, i++;
					else if (sql[i] == '*' && sql[i + 1] == '/')
						depth--, i++;
				}
			} else if (c == '\'') {
				bool escapes = i > begin && (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
					       (i - 1 == begin || !ident_char(sql[i - 2]));

				i = skip_quoted(sql, i, '\'', escapes);
				code = true;
			} else if (c == '"') {
				i = skip_quoted(sql, i, '"', false);
				code = true;
			} else if (c == '$' && (i == begin || !ident_char(sql[i - 1])) &&
				   dollar_tag(sql, i)) {
				size_t tag_len = dollar_tag(sql, i);
				const char *close;

				i += tag_len;
				for (close = strchr(sql + i, '$'); close; close = strchr(close + 1, '$'))
					if (strncmp(close, sql + i - tag_len, tag_len) == 0)
						break;
				i = close ? (size_t)(close - sql) + tag_len : i + strlen(sql + i);
				code = true;
			} else {
				if (!isspace((unsigned char)c))
					code = true;
				i++;
			}
		}
		*pos = sql[i] == ';' ? i + 1 : i;
		if (!code) {
			i = *pos;
			continue;
		}
		end = i;
		while (isspace((unsigned char)sql[begin]))
			begin++;
		while (end > begin && isspace((unsigned char)sql[end - 1]))
			end--;
		*start = begin;
		*len = end - begin;
		return true;
	}
	*pos = i;
	return false;
}
