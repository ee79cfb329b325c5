#include "migrate.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cat_log.h"
#include "cat_pg.h"
#include "cat_time.h"

#define MAX_FILE_BYTES (16 * 1024 * 1024)
#define MAX_VERSION    99999

/* Session advisory lock of every catalyst-migrate: "catalyst" in ASCII as a
 * bigint. Advisory locks are per database, so each database migrates alone. */
#define LOCK_KEY "7161132844276347764"

#define CREATE_TABLE                                                                                         \
	"CREATE TABLE IF NOT EXISTS schema_migrations ("                                                     \
	" version integer PRIMARY KEY,"                                                                      \
	" name text NOT NULL,"                                                                               \
	" checksum text NOT NULL,"                                                                           \
	" applied_at timestamptz NOT NULL DEFAULT now(),"                                                    \
	" execution_ms bigint NOT NULL)"

/* --- files ---------------------------------------------------------------- */

typedef struct dir_entry {
	int version;
	char *name;
	char *file;
	bool up;
} dir_entry_t;

static void sha256_hex(const char *data, size_t len, char hex[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	hex[0] = '\0';
	if (!EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL))
		return;
	for (unsigned int i = 0; i < md_len && i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static cat_err_t read_file(const char *dir, const char *file, char **out, char *errstr, size_t errstr_size)
{
	char path[4096];
	struct stat st;
	char *text = NULL;
	FILE *in;
	cat_err_t err = CAT_OK;

	*out = NULL;
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	if (!(in = fopen(path, "rb")))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not open %s: %s", path,
				   strerror(errno));
	if (fstat(fileno(in), &st) != 0 || st.st_size > MAX_FILE_BYTES) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not read %s: %s", path,
				  errno ? strerror(errno) : "larger than 16 MiB");
		goto out;
	}
	if (!(text = malloc((size_t)st.st_size + 1))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not read %s: out of memory",
				  path);
		goto out;
	}
	if (fread(text, 1, (size_t)st.st_size, in) != (size_t)st.st_size) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not read %s: short read", path);
		goto out;
	}
	text[st.st_size] = '\0';
	if (strlen(text) != (size_t)st.st_size) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "migration %s: contains a NUL byte",
				  file);
		goto out;
	}
	*out = text;
	text = NULL; /* owned by caller */
out:
	free(text);
	fclose(in);
	return err;
}

/* "0002_add_source_alignment.up.sql" -> 2, "add_source_alignment", up */
static bool parse_file_name(const char *file, int *version, char **name, bool *up)
{
	size_t len = strlen(file), digits = 0, name_len;
	const char *suffix;

	while (isdigit((unsigned char)file[digits]))
		digits++;
	if (digits < 4 || digits > 5 || file[digits] != '_')
		return false;
	if (len > 7 && strcmp(file + len - 7, ".up.sql") == 0)
		suffix = file + len - 7, *up = true;
	else if (len > 9 && strcmp(file + len - 9, ".down.sql") == 0)
		suffix = file + len - 9, *up = false;
	else
		return false;
	name_len = (size_t)(suffix - (file + digits + 1));
	if (name_len == 0 || suffix < file + digits + 1)
		return false;
	for (const char *c = file + digits + 1; c < suffix; c++)
		if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '_'))
			return false;
	*version = atoi(file);
	if (*version < 1 || *version > MAX_VERSION)
		return false;
	*name = strndup(file + digits + 1, name_len);
	return *name != NULL;
}

static int entry_cmp(const void *a, const void *b)
{
	const dir_entry_t *x = a, *y = b;

	if (x->version != y->version)
		return x->version < y->version ? -1 : 1;
	return (int)y->up - (int)x->up;
}

static bool no_transaction(const char *sql)
{
	size_t len = strlen(MIGRATE_NO_TRANSACTION);

	return strncmp(sql, MIGRATE_NO_TRANSACTION, len) == 0 &&
	       (sql[len] == '\0' || isspace((unsigned char)sql[len]));
}

static int line_at(const char *sql, size_t offset)
{
	int line = 1;

	for (size_t i = 0; i < offset && sql[i]; i++)
		if (sql[i] == '\n')
			line++;
	return line;
}

/* The first word of a statement, past comments, upper-cased. */
static void statement_keyword(const char *stmt, size_t len, char *word, size_t word_size)
{
	size_t i = 0, n = 0;

	while (i < len) {
		if (isspace((unsigned char)stmt[i])) {
			i++;
		} else if (stmt[i] == '-' && i + 1 < len && stmt[i + 1] == '-') {
			while (i < len && stmt[i] != '\n')
				i++;
		} else if (stmt[i] == '/' && i + 1 < len && stmt[i + 1] == '*') {
			const char *end = strstr(stmt + i + 2, "*/");

			i = end ? (size_t)(end - stmt) + 2 : len;
		} else {
			break;
		}
	}
	while (i < len && isalpha((unsigned char)stmt[i]) && n + 1 < word_size)
		word[n++] = (char)toupper((unsigned char)stmt[i++]);
	word[n] = '\0';
}

/* A transactional file must not end or open transactions itself. */
static cat_err_t check_transaction_control(const char *file, const char *sql, char *errstr,
					   size_t errstr_size)
{
	static const char *const control[] = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"};
	size_t pos = 0, start, len;
	char word[16];

	if (no_transaction(sql))
		return CAT_OK;
	while (cat_pg_script_next(sql, &pos, &start, &len)) {
		statement_keyword(sql + start, len, word, sizeof(word));
		for (size_t i = 0; i < sizeof(control) / sizeof(control[0]); i++)
			if (strcmp(word, control[i]) == 0)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "migration %s: %s at line %d: each migration runs in one "
						   "transaction of its own (or mark the file %s)",
						   file, word, line_at(sql, start), MIGRATE_NO_TRANSACTION);
	}
	return CAT_OK;
}

static cat_err_t load_file(migrate_set_t *set, migrate_file_t *mf, char *errstr, size_t errstr_size)
{
	cat_err_t err;

	if ((err = read_file(set->dir, mf->up_file, &mf->up_sql, errstr, errstr_size)) != CAT_OK ||
	    (err = read_file(set->dir, mf->down_file, &mf->down_sql, errstr, errstr_size)) != CAT_OK ||
	    (err = check_transaction_control(mf->up_file, mf->up_sql, errstr, errstr_size)) != CAT_OK ||
	    (err = check_transaction_control(mf->down_file, mf->down_sql, errstr, errstr_size)) != CAT_OK)
		return err;
	sha256_hex(mf->up_sql, strlen(mf->up_sql), mf->checksum);
	return CAT_OK;
}

/* Fills set->files from entries sorted by version, up before down. */
static cat_err_t assemble(migrate_set_t *set, dir_entry_t *entries, size_t n, char *errstr,
			  size_t errstr_size)
{
	size_t i = 0;
	cat_err_t err;

	if (n == 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "no migrations in %s", set->dir);
	if (!(set->files = calloc(n, sizeof(migrate_file_t))))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	while (i < n) {
		int version = entries[i].version;
		migrate_file_t *mf = &set->files[set->n_files];

		if (version != (int)set->n_files + 1) {
			if (version <= (int)set->n_files)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "two migrations numbered %04d: %s and %s", version,
						   entries[i - 1].file, entries[i].file);
			return cat_err_set(
				errstr, errstr_size, CAT_ERR_FATAL,
				"migration %04d is missing: versions run from 1 without gaps (next is %s)",
				(int)set->n_files + 1, entries[i].file);
		}
		mf->version = version;
		set->n_files++;
		for (; i < n && entries[i].version == version; i++) {
			char **slot = entries[i].up ? &mf->up_file : &mf->down_file;

			if (*slot)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "two migrations numbered %04d: %s and %s", version, *slot,
						   entries[i].file);
			if (mf->name && strcmp(mf->name, entries[i].name) != 0)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "migration %04d: %s and %s name different migrations",
						   version, mf->up_file, entries[i].file);
			*slot = entries[i].file;
			entries[i].file = NULL; /* owned by set */
			if (!mf->name) {
				mf->name = entries[i].name;
				entries[i].name = NULL; /* owned by set */
			}
		}
		if (!mf->up_file)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "migration %s has no up file",
					   mf->down_file);
		if (!mf->down_file)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "migration %s has no down file %04d_%s.down.sql", mf->up_file,
					   version, mf->name);
		if ((err = load_file(set, mf, errstr, errstr_size)) != CAT_OK)
			return err;
	}
	return CAT_OK;
}

cat_err_t migrate_set_load(migrate_set_t **out, const char *dir, char *errstr, size_t errstr_size)
{
	migrate_set_t *set = NULL;
	dir_entry_t *entries = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	DIR *d = NULL;
	cat_err_t err = CAT_OK;

	*out = NULL;
	if (!(set = calloc(1, sizeof(*set))) || !(set->dir = strdup(dir))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	if (!(d = opendir(dir))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				  "could not open migrations directory %s: %s", dir, strerror(errno));
		goto error;
	}
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		dir_entry_t entry = {0};

		if (de->d_name[0] == '.' || len < 4 || strcmp(de->d_name + len - 4, ".sql") != 0)
			continue; /* README and the like */
		if (!parse_file_name(de->d_name, &entry.version, &entry.name, &entry.up)) {
			err = cat_err_set(
				errstr, errstr_size, CAT_ERR_FATAL,
				"migration file %s: name must be NNNN_name.up.sql or NNNN_name.down.sql "
				"(name: a-z, 0-9, _)",
				de->d_name);
			goto error;
		}
		if (n == cap) {
			dir_entry_t *grown = realloc(entries, (cap = cap ? 2 * cap : 16) * sizeof(*entries));

			if (!grown) {
				free(entry.name);
				err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
				goto error;
			}
			entries = grown;
		}
		if (!(entry.file = strdup(de->d_name))) {
			free(entry.name);
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto error;
		}
		entries[n++] = entry;
	}
	qsort(entries, n, sizeof(*entries), entry_cmp);
	if ((err = assemble(set, entries, n, errstr, errstr_size)) != CAT_OK)
		goto error;
	*out = set;
	set = NULL; /* owned by caller */
error:
	for (size_t i = 0; i < n; i++) {
		free(entries[i].name);
		free(entries[i].file);
	}
	free(entries);
	if (d)
		closedir(d);
	migrate_set_destroy(set);
	return err;
}

void migrate_set_destroy(migrate_set_t *set)
{
	if (!set)
		return;
	for (size_t i = 0; i < set->n_files; i++) {
		free(set->files[i].name);
		free(set->files[i].up_file);
		free(set->files[i].up_sql);
		free(set->files[i].down_file);
		free(set->files[i].down_sql);
	}
	free(set->files);
	free(set->dir);
	free(set);
}

/* --- state in the database ----------------------------------------------- */

void migrate_status_destroy(migrate_status_t *status)
{
	if (!status)
		return;
	for (size_t i = 0; i < status->n_rows; i++)
		free(status->rows[i].recorded_name);
	free(status->rows);
	free(status);
}

cat_err_t migrate_status_query(PGconn *conn, const migrate_set_t *set, migrate_status_t **out, char *errstr,
			      size_t errstr_size)
{
	migrate_status_t *status = NULL;
	PGresult *res = NULL;
	int n_applied = 0;
	cat_err_t err;

	*out = NULL;
	err = cat_pg_exec(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL, &res, errstr,
			  errstr_size);
	if (err != CAT_OK)
		goto error;
	if (strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
		PQclear(res);
		res = NULL;
		err = cat_pg_exec(
			conn,
			"SELECT version, name, checksum,"
			" to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
			" execution_ms FROM schema_migrations ORDER BY version",
			0, NULL, &res, errstr, errstr_size);
		if (err != CAT_OK)
			goto error;
		n_applied = PQntuples(res);
	}
	if (!(status = calloc(1, sizeof(*status))) ||
	    !(status->rows = calloc(set->n_files + (size_t)n_applied + 1, sizeof(migrate_row_t)))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}
	for (size_t i = 0; i < set->n_files; i++) {
		migrate_row_t *row = &status->rows[status->n_rows++];

		row->version = set->files[i].version;
		row->name = set->files[i].name;
		row->file = &set->files[i];
		row->checksum_ok = true;
		memcpy(row->checksum, set->files[i].checksum, sizeof(row->checksum));
	}
	status->latest_version = (int)set->n_files;
	for (int t = 0; t < n_applied; t++) {
		int version = atoi(PQgetvalue(res, t, 0));
		migrate_row_t *row;

		if (version >= 1 && version <= (int)set->n_files) {
			row = &status->rows[version - 1];
		} else {
			row = &status->rows[status->n_rows++];
			row->version = version;
		}
		row->applied = true;
		if (!(row->recorded_name = strdup(PQgetvalue(res, t, 1)))) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto error;
		}
		if (!row->file)
			row->name = row->recorded_name;
		snprintf(row->checksum, sizeof(row->checksum), "%s", PQgetvalue(res, t, 2));
		row->checksum_ok = row->file && strcmp(row->checksum, row->file->checksum) == 0;
		snprintf(row->applied_at, sizeof(row->applied_at), "%s", PQgetvalue(res, t, 3));
		row->execution_ms = atoll(PQgetvalue(res, t, 4));
		if (version > status->current_version)
			status->current_version = version;
	}
	for (size_t i = 0; i < set->n_files; i++)
		if (!status->rows[i].applied)
			status->pending++;
	PQclear(res);
	*out = status;
	return CAT_OK;

error:
	PQclear(res);
	migrate_status_destroy(status);
	return err;
}

cat_err_t migrate_status_read(const migrate_opts_t *opts, const migrate_set_t *set, migrate_status_t **out,
			      char *errstr, size_t errstr_size)
{
	PGconn *conn = NULL;
	cat_err_t err;

	*out = NULL;
	err = cat_pg_connect(&conn, opts->pg_url, opts->app_name, opts->connect_timeout_s, errstr,
			     errstr_size);
	if (err == CAT_OK)
		err = migrate_status_query(conn, set, out, errstr, errstr_size);
	cat_pg_close(conn);
	return err;
}

cat_err_t migrate_status_check(const migrate_status_t *status, char *errstr, size_t errstr_size)
{
	for (size_t i = 0; i < status->n_rows; i++) {
		const migrate_row_t *row = &status->rows[i];

		if (!row->applied)
			continue;
		if (!row->file)
			return cat_err_set(
				errstr, errstr_size, CAT_ERR_FATAL,
				"migration %04d_%s was applied but its file %04d_%s.up.sql is missing",
				row->version, row->recorded_name, row->version, row->recorded_name);
		if (strcmp(row->recorded_name, row->file->name) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "migration %04d was applied as %s, but its file is %s",
					   row->version, row->recorded_name, row->file->up_file);
		if (!row->checksum_ok)
			return cat_err_set(
				errstr, errstr_size, CAT_ERR_FATAL,
				"migration %s: checksum changed since it was applied (recorded %.12s, "
				"file %.12s)",
				row->file->up_file, row->checksum, row->file->checksum);
	}
	return CAT_OK;
}

void *migrate_status_json(const migrate_status_t *status)
{
	json_t *root = json_object();
	json_t *list = json_array();

	if (!root || !list) {
		json_decref(root);
		json_decref(list);
		return NULL;
	}
	json_object_set_new(root, "current_version", json_integer(status->current_version));
	json_object_set_new(root, "latest_version", json_integer(status->latest_version));
	json_object_set_new(root, "pending", json_integer(status->pending));
	for (size_t i = 0; i < status->n_rows; i++) {
		const migrate_row_t *row = &status->rows[i];
		json_t *item = json_object();

		if (!item)
			continue;
		json_object_set_new(item, "version", json_integer(row->version));
		json_object_set_new(item, "name", json_string(row->name));
		json_object_set_new(item, "applied", json_boolean(row->applied));
		json_object_set_new(item, "applied_at",
				    row->applied ? json_string(row->applied_at) : json_null());
		json_object_set_new(item, "execution_ms",
				    row->applied ? json_integer(row->execution_ms) : json_null());
		json_object_set_new(item, "checksum", json_string(row->checksum));
		json_object_set_new(item, "checksum_ok", json_boolean(row->checksum_ok));
		json_object_set_new(item, "file", row->file ? json_string(row->file->up_file) : json_null());
		json_array_append_new(list, item);
	}
	json_object_set_new(root, "migrations", list);
	return root;
}

static const char *row_state(const migrate_row_t *row)
{
	if (!row->applied)
		return "pending";
	if (!row->file)
		return "missing";
	return row->checksum_ok && strcmp(row->recorded_name, row->file->name) == 0 ? "applied" : "changed";
}

void migrate_status_print(FILE *out, const migrate_status_t *status)
{
	fprintf(out, "%-8s %-32s %-8s %-28s %s\n", "VERSION", "NAME", "STATE", "APPLIED AT", "EXECUTION MS");
	for (size_t i = 0; i < status->n_rows; i++) {
		const migrate_row_t *row = &status->rows[i];

		if (row->applied)
			fprintf(out, "%04d     %-32s %-8s %-28s %lld\n", row->version, row->name,
				row_state(row), row->applied_at, row->execution_ms);
		else
			fprintf(out, "%04d     %-32s %s\n", row->version, row->name, row_state(row));
	}
	fprintf(out, "schema version %d of %d, %d pending\n", status->current_version, status->latest_version,
		status->pending);
}

/* --- applying ------------------------------------------------------------ */

/* Takes the advisory lock, polling with backoff until timeout_s. */
static cat_err_t lock_take(PGconn *conn, int timeout_s, migrate_result_t *result, char *errstr,
			   size_t errstr_size)
{
	const char *const params[] = {LOCK_KEY};
	int64_t deadline = cat_time_mono_us() + (int64_t)timeout_s * 1000000;
	long wait_ms = 50;
	bool logged = false;

	for (;;) {
		PGresult *res = NULL;
		bool got;
		cat_err_t err = cat_pg_exec(conn, "SELECT pg_try_advisory_lock($1::bigint)", 1, params, &res,
					    errstr, errstr_size);

		if (err != CAT_OK)
			return err;
		got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
		PQclear(res);
		if (got)
			return CAT_OK;
		if (cat_time_mono_us() >= deadline) {
			result->conflict = true;
			return cat_err_set(
				errstr, errstr_size, CAT_ERR_RETRIABLE,
				"could not take the migration lock within %d s: another catalyst-migrate "
				"is still running",
				timeout_s);
		}
		if (!logged) {
			CAT_LOG_INFO("MIGRATE",
				     "waiting up to %d s for the migration lock, held by another "
				     "catalyst-migrate",
				     timeout_s);
			logged = true;
		}
		nanosleep(&(struct timespec){wait_ms / 1000, (wait_ms % 1000) * 1000000L}, NULL);
		if (wait_ms < 1000)
			wait_ms *= 2;
	}
}

static void lock_release(PGconn *conn)
{
	const char *const params[] = {LOCK_KEY};
	char errstr[256];

	if (cat_pg_exec(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, params, NULL, errstr,
			sizeof(errstr)) != CAT_OK)
		CAT_LOG_WARN("MIGRATE", "could not release the migration lock: %s", errstr);
}

/* Runs a file's SQL: whole, or statement by statement when marked
 * no-transaction. */
static cat_err_t run_file(PGconn *conn, const char *file, const char *sql, char *errstr, size_t errstr_size)
{
	char msg[1024];
	size_t pos = 0, start, len;
	cat_err_t err;

	if (!no_transaction(sql)) {
		if ((err = cat_pg_exec_script(conn, sql, msg, sizeof(msg))) != CAT_OK)
			return cat_err_set(errstr, errstr_size, err, "migration %s: %s", file, msg);
		return CAT_OK;
	}
	while (cat_pg_script_next(sql, &pos, &start, &len)) {
		char *stmt = strndup(sql + start, len);

		if (!stmt)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		err = cat_pg_exec_script(conn, stmt, msg, sizeof(msg));
		free(stmt);
		if (err != CAT_OK)
			return cat_err_set(errstr, errstr_size, err,
					   "migration %s: statement at line %d: %s (the file runs without a "
					   "transaction: the statements before it stay applied)",
					   file, line_at(sql, start), msg);
	}
	return CAT_OK;
}

/* "applied migration 0001_initial_schema in 12 ms", with those fields. */
static void log_migration(const migrate_file_t *mf, const char *done, long long elapsed_ms)
{
	json_t *fields = json_pack("{s:i,s:s,s:I}", "version", mf->version, "name", mf->name, "execution_ms",
				   (json_int_t)elapsed_ms);

	cat_log_kv(CAT_LOG_LEVEL_INFO, "MIGRATE", fields, "%s migration %04d_%s in %lld ms", done, mf->version,
		   mf->name, elapsed_ms);
	json_decref(fields);
}

static cat_err_t apply_one(PGconn *conn, const migrate_file_t *mf, char *errstr, size_t errstr_size)
{
	bool tx = !no_transaction(mf->up_sql);
	int64_t started = cat_time_mono_us();
	char version[16], ms[32];
	const char *params[] = {version, mf->name, mf->checksum, ms};
	long long elapsed_ms;
	cat_err_t err;

	if (tx && (err = cat_pg_begin(conn, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = run_file(conn, mf->up_file, mf->up_sql, errstr, errstr_size)) != CAT_OK)
		goto error;
	elapsed_ms = (long long)((cat_time_mono_us() - started) / 1000);
	snprintf(version, sizeof(version), "%d", mf->version);
	snprintf(ms, sizeof(ms), "%lld", elapsed_ms);
	if ((err = cat_pg_exec(conn,
			       "INSERT INTO schema_migrations (version, name, checksum, execution_ms)"
			       " VALUES ($1, $2, $3, $4)",
			       4, params, NULL, errstr, errstr_size)) != CAT_OK)
		goto error;
	if (tx && (err = cat_pg_commit(conn, errstr, errstr_size)) != CAT_OK)
		goto error;
	log_migration(mf, "applied", elapsed_ms);
	return CAT_OK;

error:
	if (tx)
		cat_pg_rollback(conn, NULL, 0);
	return err;
}

static cat_err_t revert_one(PGconn *conn, const migrate_file_t *mf, char *errstr, size_t errstr_size)
{
	bool tx = !no_transaction(mf->down_sql);
	int64_t started = cat_time_mono_us();
	char version[16];
	const char *params[] = {version};
	cat_err_t err;

	snprintf(version, sizeof(version), "%d", mf->version);
	if (tx && (err = cat_pg_begin(conn, errstr, errstr_size)) != CAT_OK)
		return err;
	if ((err = run_file(conn, mf->down_file, mf->down_sql, errstr, errstr_size)) != CAT_OK ||
	    (err = cat_pg_exec(conn, "DELETE FROM schema_migrations WHERE version = $1", 1, params, NULL,
			       errstr, errstr_size)) != CAT_OK ||
	    (tx && (err = cat_pg_commit(conn, errstr, errstr_size)) != CAT_OK))
		goto error;
	log_migration(mf, "reverted", (long long)((cat_time_mono_us() - started) / 1000));
	return CAT_OK;

error:
	if (tx)
		cat_pg_rollback(conn, NULL, 0);
	return err;
}

/* Connects, locks, makes sure schema_migrations exists, reads the state
 * and refuses drift: what up and down share. */
static cat_err_t begin_run(const migrate_opts_t *opts, const migrate_set_t *set, PGconn **conn, bool *locked,
			   migrate_status_t **status, migrate_result_t *result, char *errstr,
			   size_t errstr_size)
{
	cat_err_t err;

	if ((err = cat_pg_connect(conn, opts->pg_url, opts->app_name, opts->connect_timeout_s, errstr,
				  errstr_size)) != CAT_OK ||
	    (err = lock_take(*conn, opts->lock_timeout_s, result, errstr, errstr_size)) != CAT_OK)
		return err;
	*locked = true;
	/* under the lock: another pod may have applied everything meanwhile */
	if ((err = cat_pg_exec(*conn, CREATE_TABLE, 0, NULL, NULL, errstr, errstr_size)) != CAT_OK ||
	    (err = migrate_status_query(*conn, set, status, errstr, errstr_size)) != CAT_OK)
		return err;
	result->version = (*status)->current_version;
	if ((err = migrate_status_check(*status, errstr, errstr_size)) != CAT_OK)
		result->conflict = true;
	return err;
}

static void end_run(PGconn *conn, bool locked, migrate_status_t *status)
{
	if (locked && PQstatus(conn) == CONNECTION_OK)
		lock_release(conn);
	migrate_status_destroy(status);
	cat_pg_close(conn);
}

cat_err_t migrate_up(const migrate_opts_t *opts, const migrate_set_t *set, int target,
		     migrate_result_t *result, char *errstr, size_t errstr_size)
{
	migrate_status_t *status = NULL;
	PGconn *conn = NULL;
	bool locked = false;
	cat_err_t err;

	*result = (migrate_result_t){0};
	if (target <= 0 || target > (int)set->n_files)
		target = (int)set->n_files;
	if ((err = begin_run(opts, set, &conn, &locked, &status, result, errstr, errstr_size)) != CAT_OK)
		goto out;
	for (int v = 1; v <= target; v++) {
		if (status->rows[v - 1].applied)
			continue;
		if ((err = apply_one(conn, &set->files[v - 1], errstr, errstr_size)) != CAT_OK)
			goto out;
		result->changed++;
		if (v > result->version)
			result->version = v;
	}
out:
	end_run(conn, locked, status);
	return err;
}

cat_err_t migrate_down(const migrate_opts_t *opts, const migrate_set_t *set, int count,
		       migrate_result_t *result, char *errstr, size_t errstr_size)
{
	migrate_status_t *status = NULL;
	PGconn *conn = NULL;
	bool locked = false;
	int n_applied = 0;
	cat_err_t err;

	*result = (migrate_result_t){0};
	if ((err = begin_run(opts, set, &conn, &locked, &status, result, errstr, errstr_size)) != CAT_OK)
		goto out;
	for (size_t i = 0; i < status->n_rows; i++)
		n_applied += status->rows[i].applied;
	if (count > n_applied) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				  "cannot revert %d migration%s: %d %s applied", count, count == 1 ? "" : "s",
				  n_applied, n_applied == 1 ? "is" : "are");
		goto out;
	}
	for (size_t i = status->n_rows; i-- > 0 && result->changed < count;) {
		migrate_row_t *row = &status->rows[i];

		if (!row->applied)
			continue;
		if ((err = revert_one(conn, row->file, errstr, errstr_size)) != CAT_OK)
			goto out;
		row->applied = false;
		result->changed++;
	}
	result->version = 0;
	for (size_t i = 0; i < status->n_rows; i++)
		if (status->rows[i].applied)
			result->version = status->rows[i].version;
out:
	end_run(conn, locked, status);
	return err;
}

/* --- commands ------------------------------------------------------------- */

int migrate_cmd_run(const migrate_opts_t *opts, const migrate_set_t *set, bool up, int n)
{
	migrate_result_t result;
	char errstr[2048];
	cat_err_t err = up ? migrate_up(opts, set, n, &result, errstr, sizeof(errstr))
			   : migrate_down(opts, set, n, &result, errstr, sizeof(errstr));

	if (err != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "%s", errstr);
		return 1;
	}
	if (up && result.changed == 0)
		CAT_LOG_INFO("MIGRATE", "nothing to apply: schema version %d", result.version);
	else
		CAT_LOG_INFO("MIGRATE", "schema version %d: %s %d migration%s", result.version,
			     up ? "applied" : "reverted", result.changed, result.changed == 1 ? "" : "s");
	return 0;
}

int migrate_cmd_status(const migrate_opts_t *opts, const migrate_set_t *set, bool json)
{
	migrate_status_t *status = NULL;
	char errstr[2048];
	json_t *doc;
	char *text;

	if (migrate_status_read(opts, set, &status, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "%s", errstr);
		return 1;
	}
	if (!json) {
		migrate_status_print(stdout, status);
		migrate_status_destroy(status);
		return 0;
	}
	doc = migrate_status_json(status);
	text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	if (text)
		printf("%s\n", text);
	free(text);
	json_decref(doc);
	migrate_status_destroy(status);
	return text ? 0 : 1;
}

int migrate_cmd_validate(const migrate_opts_t *opts, const migrate_set_t *set)
{
	migrate_status_t *status = NULL;
	char errstr[2048];
	int rc = 0;

	if (migrate_status_read(opts, set, &status, errstr, sizeof(errstr)) != CAT_OK ||
	    migrate_status_check(status, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "%s", errstr);
		rc = 1;
	} else {
		CAT_LOG_INFO("MIGRATE", "%zu migrations valid; schema version %d of %d, %d pending",
			     set->n_files, status->current_version, status->latest_version, status->pending);
	}
	migrate_status_destroy(status);
	return rc;
}
