/*
 * catalyst-migrate: applies migrations/ to the PostgreSQL primary.
 *
 * Exit codes: 0 done, 1 failed, 2 bad usage or configuration.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cat_config.h"
#include "cat_log.h"
#include "migrate.h"

static const char usage[] =
	"usage: catalyst-migrate up [--to N] | down N | status [--json] | validate | serve\n"
	"       catalyst-migrate reset-version TABLE KEY VERSION\n"
	"\n"
	"  up [--to N]      apply pending migrations (up to version N)\n"
	"  down N           revert the last N applied migrations, newest first\n"
	"  status [--json]  every migration, applied or pending\n"
	"  validate         check the files, and that applied files did not change\n"
	"  serve            HTTP: GET /api/migrations, POST /api/migrations/up (both with the\n"
	"                   bearer token), /healthz, /readyz, /metrics\n"
	"  reset-version TABLE KEY VERSION\n"
	"                   set the row's version (and its tombstone's, if above) to VERSION:\n"
	"                   for a row frozen by a version far in the future; run it on the\n"
	"                   primary and on every replica (CATALYST_PG_URL), then delete the\n"
	"                   cached key";

/* CATALYST_MIGRATIONS_DIR names a directory (its files are read later). */
static int migrations_dir_check(const char *text, char *why, size_t why_size)
{
	struct stat st;

	if (stat(text, &st) == 0 && S_ISDIR(st.st_mode))
		return 0;
	snprintf(why, why_size, "must be a directory");
	return -1;
}

/* Each of the worker's own rows fills a field of migrate_settings_t. */
#define FIELD(member) CAT_CONFIG_FIELD(migrate_settings_t, member)

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_PG,
	{ .name = "CATALYST_MIGRATIONS_DIR", FIELD(migrations_dir), .type = CAT_CFG_STRING, .def = "migrations",
	  .check = migrations_dir_check,
	  .help = "directory of NNNN_name.up.sql / .down.sql files (the image: /usr/share/catalyst/migrations)" },
	{ .name = "CATALYST_MIGRATE_LOCK_TIMEOUT_S", FIELD(lock_timeout_s), .type = CAT_CFG_INT, .def = "60",
	  .min = 1, .max = 86400, .help = "seconds to wait for the migration lock another catalyst-migrate holds" },
	{ .name = "CATALYST_MIGRATE_PORT", FIELD(port), .type = CAT_CFG_INT, .def = "5020", .max = 65535,
	  .help = "serve: HTTP port (0: any free port)" },
	{ .name = "CATALYST_MIGRATE_BIND", FIELD(bind), .type = CAT_CFG_STRING, .def = "0.0.0.0",
	  .help = "serve: address to listen on" },
	{ .name = "CATALYST_MIGRATE_TOKEN", FIELD(token), .type = CAT_CFG_STRING, .secret = true,
	  .help = "serve: bearer token for GET /api/migrations and POST /api/migrations/up; required for serve" },
	{ .name = "CATALYST_MIGRATE_STATUS_REFRESH_S", FIELD(status_refresh_s), .type = CAT_CFG_INT, .def = "10",
	  .min = 1, .max = 3600,
	  .help = "serve: seconds between two reads of the status (on one kept connection) that requests answer from" },
	CAT_CONFIG_HTTP,
};

typedef struct args {
	const char *command;
	const char *table, *key; /* reset-version */
	int64_t version;
	int number; /* up --to N, down N */
	bool json;  /* status --json */
} args_t;

static volatile sig_atomic_t stop;

static void on_signal(int signo)
{
	stop = signo;
}

static int parse_number(const char *text)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(text ? text : "", &end, 10);
	return errno || end == text || *end || n < 1 || n > 99999 ? -1 : (int)n;
}

/* Fills args; a one-line reason and false on bad usage. */
static bool parse_args(int argc, char **argv, args_t *args, char *why, size_t why_size)
{
	*args = (args_t){.command = argc > 1 ? argv[1] : NULL};
	if (!args->command)
		return snprintf(why, why_size, "no command given"), false;
	if (strcmp(args->command, "reset-version") == 0) {
		if (argc != 5)
			return snprintf(why, why_size, "reset-version: expects TABLE KEY VERSION"), false;
		args->table = argv[2];
		args->key = argv[3];
		if (!migrate_parse_version(argv[4], &args->version))
			return snprintf(why, why_size, "reset-version: VERSION must be an integer from 1"), false;
		return true;
	}
	if (strcmp(args->command, "up") == 0 && argc == 4 && strcmp(argv[2], "--to") == 0)
		args->number = parse_number(argv[3]);
	else if (strcmp(args->command, "up") == 0 && argc == 3 && strncmp(argv[2], "--to=", 5) == 0)
		args->number = parse_number(argv[2] + 5);
	else if (strcmp(args->command, "down") == 0 && argc == 3)
		args->number = parse_number(argv[2]);
	else if (strcmp(args->command, "status") == 0 && argc == 3 && strcmp(argv[2], "--json") == 0)
		args->json = true;
	else if (argc == 2 && (strcmp(args->command, "up") == 0 || strcmp(args->command, "status") == 0 ||
			       strcmp(args->command, "validate") == 0 || strcmp(args->command, "serve") == 0))
		return true;
	else
		return snprintf(why, why_size, "bad command line: %s%s", args->command,
				argc > 2 ? " ..." : ""),
		       false;
	if (args->number < 0)
		return snprintf(why, why_size, "%s: expects a version number from 1", args->command), false;
	return true;
}

int main(int argc, char **argv)
{
	const size_t n_defs = sizeof(config_defs) / sizeof(config_defs[0]);
	migrate_settings_t settings = {0};
	cat_config_t *cfg = NULL;
	migrate_set_t *set = NULL;
	migrate_opts_t opts;
	char errstr[1024];
	args_t args;
	int rc = 2;

	if (cat_config_wants_help(argc, argv)) {
		cat_config_usage(stdout, usage, config_defs, n_defs);
		return 0;
	}
	/* usage and configuration errors: one plain line, before any log */
	if (!parse_args(argc, argv, &args, errstr, sizeof(errstr))) {
		fprintf(stderr, "catalyst-migrate: %s (try --help)\n", errstr);
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, n_defs, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-migrate: %s\n", errstr);
		return 2;
	}
	cat_config_fill(cfg, &settings);
	if (strcmp(args.command, "serve") == 0 && !settings.token) {
		fprintf(stderr, "catalyst-migrate: CATALYST_MIGRATE_TOKEN: required for serve but not set\n");
		goto out;
	}
	cat_log_init("catalyst-migrate",
		     (cat_log_level_t)cat_log_level_parse(cat_config_str(cfg, "CATALYST_LOG_LEVEL")));
	rc = 1;
	if (migrate_set_load(&set, settings.migrations_dir, errstr, sizeof(errstr)) != CAT_OK) {
		CAT_LOG_ERROR("MIGRATE", "%s", errstr);
		goto out;
	}
	if (strcmp(args.command, "up") == 0 && args.number > (int)set->n_files) {
		fprintf(stderr, "catalyst-migrate: up --to %d: no such migration, the latest is %zu\n",
			args.number, set->n_files);
		rc = 2;
		goto out;
	}
	opts = (migrate_opts_t){cat_config_str(cfg, "CATALYST_PG_URL"),
				(int)cat_config_int(cfg, "CATALYST_PG_CONNECT_TIMEOUT_S"), (int)settings.lock_timeout_s,
				"catalyst-migrate"};

	if (strcmp(args.command, "up") == 0 || strcmp(args.command, "down") == 0) {
		rc = migrate_cmd_run(&opts, set, strcmp(args.command, "up") == 0, args.number);
	} else if (strcmp(args.command, "status") == 0) {
		rc = migrate_cmd_status(&opts, set, args.json);
	} else if (strcmp(args.command, "validate") == 0) {
		rc = migrate_cmd_validate(&opts, set);
	} else if (strcmp(args.command, "reset-version") == 0) {
		rc = migrate_cmd_reset_version(&opts, args.table, args.key, args.version);
	} else {
		/* the first SIGTERM/SIGINT asks to stop, a second one ends at once */
		struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
		cat_http_limits_t http_limits = cat_http_limits_from_config(cfg);

		sigemptyset(&sa.sa_mask);
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
		rc = migrate_serve(&opts, set, &settings, &http_limits, &stop);
	}
out:
	migrate_set_destroy(set);
	cat_config_destroy(cfg);
	return rc;
}
