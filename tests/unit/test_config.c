/* Check suite for common/cat_config. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "cat_config.h"
#include "cat_redis.h" /* its URL check, a row's validator */

static int starts_with_ok(const char *text, char *why, size_t why_size)
{
	if (strncmp(text, "ok", 2) == 0)
		return 0;
	snprintf(why, why_size, "must start with ok");
	return -1;
}

static const cat_config_def_t defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	CAT_CONFIG_PG,
	{ .name = "CATALYST_BATCH_SIZE", .type = CAT_CFG_INT, .def = "500", .min = 1, .max = 100000,
	  .help = "batch size" },
	{ .name = "CATALYST_FLAG", .type = CAT_CFG_BOOL, .def = "false", .help = "a flag" },
	{ .name = "CATALYST_REDIS_URL", .type = CAT_CFG_STRING, .required = true, .secret = true,
	  .check = cat_redis_url_check, .help = "redis" },
	{ .name = "CATALYST_S3_ENDPOINT", .type = CAT_CFG_HTTP_URL, .def = "https://s3.amazonaws.com",
	  .help = "s3" },
	{ .name = "CATALYST_OPTIONAL", .type = CAT_CFG_STRING, .help = "optional, no default" },
	{ .name = "CATALYST_LIMITS", .type = CAT_CFG_INT_LIST, .def = "5,10", .min = 1, .max = 1000,
	  .max_items = 3, .help = "a list" },
	/* required only when the store (declared after it) is s3 */
	{ .name = "CATALYST_BUCKET", .type = CAT_CFG_STRING, .required = true,
	  .required_if = "CATALYST_STORE=s3", .help = "bucket" },
	{ .name = "CATALYST_STORE", .type = CAT_CFG_ENUM, .def = "dir", .choices = "s3|dir", .help = "store" },
	{ .name = "CATALYST_MAX_COMMAND_S", .type = CAT_CFG_INT, .def = "60", .min = 1, .max = 86400,
	  .kafka = "max.poll.interval.ms", .kafka_scale = 1000, .help = "a command's longest run" },
	{ .name = "CATALYST_KAFKA_FETCH_WAIT_MAX_MS", .type = CAT_CFG_INT, .def = "250", .min = 1, .max = 10000,
	  .kafka = "fetch.wait.max.ms", .help = "a librdkafka property with this binary's default" },
	{ .name = "CATALYST_CHECKED", .type = CAT_CFG_STRING, .check = starts_with_ok, .help = "checked" },
	{ .name = "CATALYST_CHECKED_SECRET", .type = CAT_CFG_STRING, .secret = true, .check = starts_with_ok,
	  .help = "checked, secret" },
};
#define N_DEFS (sizeof(defs) / sizeof(defs[0]))

/* A complete, valid environment; each case below changes one variable. */
static const char *const good_env[] = {
	"CATALYST_BROKERS=127.0.0.1:9092",
	"CATALYST_PG_URL=postgresql://u:hunter2@127.0.0.1:5432/db?sslmode=require",
	"CATALYST_REDIS_URL=redis://:s3cret@127.0.0.1:6379/0",
	NULL,
};

/* env = good_env with `name` replaced by `assignment` (NULL: removed). */
static char **env_with(const char *name, const char *assignment)
{
	static char *env[32];
	size_t n = 0;

	for (size_t i = 0; good_env[i]; i++)
		if (!name || strncmp(good_env[i], name, strlen(name)) != 0 || good_env[i][strlen(name)] != '=')
			env[n++] = (char *)good_env[i];
	if (assignment)
		env[n++] = (char *)assignment;
	env[n] = NULL;
	return env;
}

START_TEST(test_good_env_and_defaults)
{
	cat_config_t *cfg = NULL;
	char errstr[256];

	ck_assert_int_eq(cat_config_load(&cfg, defs, N_DEFS, env_with(NULL, NULL), errstr, sizeof(errstr)), CAT_OK);
	ck_assert_str_eq(cat_config_str(cfg, "CATALYST_BROKERS"), "127.0.0.1:9092");
	ck_assert_str_eq(cat_config_str(cfg, "CATALYST_TOPIC_PREFIX"), "catalyst.");
	ck_assert_int_eq(cat_config_int(cfg, "CATALYST_BATCH_SIZE"), 500);
	ck_assert_int_eq(cat_config_int(cfg, "CATALYST_PG_CONNECT_TIMEOUT_S"), 10);
	ck_assert(!cat_config_bool(cfg, "CATALYST_FLAG"));
	ck_assert(!cat_config_is_set(cfg, "CATALYST_OPTIONAL"));
	ck_assert_ptr_null(cat_config_str(cfg, "CATALYST_OPTIONAL"));
	ck_assert(cat_config_is_set(cfg, "CATALYST_LOG_LEVEL"));
	cat_config_destroy(cfg);
}
END_TEST

START_TEST(test_values_parsed)
{
	static const struct {
		const char *name, *assignment, *expect_str;
		long long expect_num;
	} cases[] = {
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=1", "1", 1 },
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=100000", "100000", 100000 },
		{ "CATALYST_FLAG", "CATALYST_FLAG=yes", "yes", 1 },
		{ "CATALYST_FLAG", "CATALYST_FLAG=TRUE", "TRUE", 1 },
		{ "CATALYST_FLAG", "CATALYST_FLAG=off", "off", 0 },
		{ "CATALYST_LOG_LEVEL", "CATALYST_LOG_LEVEL=debug", "debug", 0 },
		{ "CATALYST_PG_URL", "CATALYST_PG_URL=host=db port=5432 sslmode=verify-full", NULL, 0 },
		{ "CATALYST_REDIS_URL", "CATALYST_REDIS_URL=rediss://h:6380", "rediss://h:6380", 0 },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=1,1000,7", "1,1000,7", 0 },
		{ "CATALYST_STORE", "CATALYST_STORE=dir", "dir", 0 },
		{ "CATALYST_CHECKED", "CATALYST_CHECKED=okay", "okay", 0 },
		/* set but empty reads as unset: the default applies */
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=", "500", 500 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cat_config_t *cfg = NULL;
		char errstr[256] = "";

		ck_assert_msg(cat_config_load(&cfg, defs, N_DEFS, env_with(cases[i].name, cases[i].assignment),
					      errstr, sizeof(errstr)) == CAT_OK,
			      "case %zu: %s", i, errstr);
		if (cases[i].expect_str)
			ck_assert_str_eq(cat_config_str(cfg, cases[i].name), cases[i].expect_str);
		if (strcmp(cases[i].name, "CATALYST_BATCH_SIZE") == 0 || strcmp(cases[i].name, "CATALYST_FLAG") == 0)
			ck_assert_int_eq(cat_config_int(cfg, cases[i].name), cases[i].expect_num);
		cat_config_destroy(cfg);
	}
}
END_TEST

/* Every setting missing or malformed: one line naming the variable, no secret. */
START_TEST(test_bad_settings)
{
	static const struct {
		const char *name, *assignment, *expect;
	} cases[] = {
		{ "CATALYST_BROKERS", NULL, "CATALYST_BROKERS: required but not set" },
		{ "CATALYST_BROKERS", "CATALYST_BROKERS=", "CATALYST_BROKERS: required but not set" },
		{ "CATALYST_PG_URL", NULL, "CATALYST_PG_URL: required but not set" },
		{ "CATALYST_PG_URL", "CATALYST_PG_URL=postgresql://u:hunter2@h:notaport/db?bogus_option=1",
		  "CATALYST_PG_URL: not a valid PostgreSQL connection string" },
		{ "CATALYST_PG_URL", "CATALYST_PG_URL=postgresql://u:hunter2@[::1/db",
		  "CATALYST_PG_URL: not a valid PostgreSQL connection string" },
		{ "CATALYST_PG_URL", "CATALYST_PG_URL=host=h password=hunter2 nosuchkey=1",
		  "CATALYST_PG_URL: not a valid PostgreSQL connection string" },
		{ "CATALYST_REDIS_URL", NULL, "CATALYST_REDIS_URL: required but not set" },
		{ "CATALYST_REDIS_URL", "CATALYST_REDIS_URL=http://:hunter2@h", "CATALYST_REDIS_URL: must be a redis://" },
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=abc", "CATALYST_BATCH_SIZE: must be an integer from 1 to 100000" },
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=0", "CATALYST_BATCH_SIZE: must be an integer from 1 to 100000" },
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=100001", "CATALYST_BATCH_SIZE: must be an integer" },
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=12x", "CATALYST_BATCH_SIZE: must be an integer" },
		{ "CATALYST_BATCH_SIZE", "CATALYST_BATCH_SIZE=99999999999999999999", "CATALYST_BATCH_SIZE: must be an integer" },
		{ "CATALYST_PG_CONNECT_TIMEOUT_S", "CATALYST_PG_CONNECT_TIMEOUT_S=-1", "CATALYST_PG_CONNECT_TIMEOUT_S: must be an integer" },
		{ "CATALYST_FLAG", "CATALYST_FLAG=maybe", "CATALYST_FLAG: must be true or false" },
		{ "CATALYST_LOG_LEVEL", "CATALYST_LOG_LEVEL=loud", "CATALYST_LOG_LEVEL: must be one of debug|info|warn|error" },
		{ "CATALYST_S3_ENDPOINT", "CATALYST_S3_ENDPOINT=ftp://x", "CATALYST_S3_ENDPOINT: must be an http:// or https:// URL" },
		{ "CATALYST_KAFKA_", "CATALYST_KAFKA_=x", "CATALYST_KAFKA_: names no librdkafka property" },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=abc",
		  "CATALYST_LIMITS: must be up to 3 integers from 1 to 1000 separated by commas (got \"abc\")" },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=5,x", "CATALYST_LIMITS: must be up to 3 integers" },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=5,,6", "CATALYST_LIMITS: must be up to 3 integers" },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=0", "CATALYST_LIMITS: must be up to 3 integers" },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=1001", "CATALYST_LIMITS: must be up to 3 integers" },
		{ "CATALYST_LIMITS", "CATALYST_LIMITS=1,2,3,4", "CATALYST_LIMITS: must be up to 3 integers" },
		{ "CATALYST_STORE", "CATALYST_STORE=s3", "CATALYST_BUCKET: required when CATALYST_STORE=s3" },
		{ "CATALYST_CHECKED", "CATALYST_CHECKED=bad", "CATALYST_CHECKED: must start with ok (got \"bad\")" },
		{ "CATALYST_CHECKED_SECRET", "CATALYST_CHECKED_SECRET=hunter2",
		  "CATALYST_CHECKED_SECRET: must start with ok (value hidden)" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cat_config_t *cfg = (cat_config_t *)1;
		char errstr[256] = "";

		ck_assert_msg(cat_config_load(&cfg, defs, N_DEFS, env_with(cases[i].name, cases[i].assignment),
					      errstr, sizeof(errstr)) == CAT_ERR_FATAL,
			      "case %zu accepted", i);
		ck_assert_ptr_null(cfg);
		ck_assert_msg(strstr(errstr, cases[i].expect) == errstr, "case %zu: got \"%s\"", i, errstr);
		ck_assert_msg(!strchr(errstr, '\n'), "case %zu: more than one line", i);
		ck_assert_msg(!strstr(errstr, "hunter2"), "case %zu: secret in error: %s", i, errstr);
	}
}
END_TEST

START_TEST(test_int_list_and_required_if)
{
	cat_config_t *cfg = NULL;
	long long limits[3] = {0};
	char errstr[256] = "";
	char **env = env_with("CATALYST_LIMITS", "CATALYST_LIMITS=20,5,1000");

	ck_assert_int_eq(cat_config_load(&cfg, defs, N_DEFS, env, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_uint_eq(cat_config_int_list(cfg, "CATALYST_LIMITS", limits, 3), 3);
	ck_assert(limits[0] == 20 && limits[1] == 5 && limits[2] == 1000);
	ck_assert_uint_eq(cat_config_int_list(cfg, "CATALYST_LIMITS", limits, 1), 3); /* how many it holds */
	ck_assert(!cat_config_is_set(cfg, "CATALYST_BUCKET")); /* not required with the dir store */
	cat_config_destroy(cfg);

	/* the store s3 with its bucket */
	env = env_with("CATALYST_STORE", "CATALYST_STORE=s3");
	for (size_t n = 0;; n++)
		if (!env[n]) {
			env[n] = "CATALYST_BUCKET=b";
			env[n + 1] = NULL;
			break;
		}
	ck_assert_msg(cat_config_load(&cfg, defs, N_DEFS, env, errstr, sizeof(errstr)) == CAT_OK, "%s", errstr);
	ck_assert_str_eq(cat_config_str(cfg, "CATALYST_BUCKET"), "b");
	cat_config_destroy(cfg);
}
END_TEST

/* Rows bound to a settings struct (offsetof) fill it with typed values. */
typedef struct settings {
	long long batch_size;
	bool flag;
	const char *optional, *log_level;
	cat_config_int_list_t limits;
} settings_t;

static const cat_config_def_t bound_defs[] = {
	{ .name = "CATALYST_BATCH_SIZE", CAT_CONFIG_FIELD(settings_t, batch_size), .type = CAT_CFG_INT, .def = "500",
	  .min = 1, .max = 100000, .help = "batch size" },
	{ .name = "CATALYST_FLAG", CAT_CONFIG_FIELD(settings_t, flag), .type = CAT_CFG_BOOL, .def = "false",
	  .help = "a flag" },
	{ .name = "CATALYST_OPTIONAL", CAT_CONFIG_FIELD(settings_t, optional), .type = CAT_CFG_STRING,
	  .help = "optional" },
	{ .name = "CATALYST_LOG_LEVEL", CAT_CONFIG_FIELD(settings_t, log_level), .type = CAT_CFG_ENUM, .def = "info",
	  .choices = "debug|info", .help = "level" },
	{ .name = "CATALYST_LIMITS", CAT_CONFIG_FIELD(settings_t, limits), .type = CAT_CFG_INT_LIST, .def = "5,10",
	  .min = 1, .max = 1000, .max_items = 3, .help = "a list" },
	{ .name = "CATALYST_UNBOUND", .type = CAT_CFG_STRING, .def = "x", .help = "read by name" },
};

START_TEST(test_fill_settings)
{
	char *env[] = { "CATALYST_FLAG=on", "CATALYST_LIMITS=7,8,9", "CATALYST_BATCH_SIZE=42", NULL };
	settings_t settings = { .optional = "untouched?" };
	cat_config_t *cfg = NULL;
	char errstr[256] = "";

	ck_assert_int_eq(cat_config_load(&cfg, bound_defs, sizeof(bound_defs) / sizeof(bound_defs[0]), env, errstr,
					 sizeof(errstr)),
			 CAT_OK);
	cat_config_fill(cfg, &settings);
	ck_assert_int_eq(settings.batch_size, 42);
	ck_assert(settings.flag);
	ck_assert_ptr_null(settings.optional); /* unset, no default */
	ck_assert_str_eq(settings.log_level, "info");
	ck_assert_uint_eq(settings.limits.n, 3);
	ck_assert(settings.limits.v[0] == 7 && settings.limits.v[2] == 9);
	ck_assert_str_eq(cat_config_str(cfg, "CATALYST_UNBOUND"), "x");
	cat_config_destroy(cfg);
}
END_TEST

static int collect(const char *key, const char *value, void *opaque)
{
	char *buf = opaque;

	strcat(buf, key);
	strcat(buf, "=");
	strcat(buf, value);
	strcat(buf, ";");
	return 0;
}

/* Defaults of librdkafka properties are data in the table; the operator's
 * CATALYST_KAFKA_<PROPERTY> wins. */
START_TEST(test_kafka_defaults)
{
	static const struct {
		const char *name, *assignment, *max_poll, *fetch_wait;
	} cases[] = {
		{ NULL, NULL, "60000", "250" },
		{ "CATALYST_MAX_COMMAND_S", "CATALYST_MAX_COMMAND_S=100", "100000", "250" },
		{ "CATALYST_KAFKA_MAX_POLL_INTERVAL_MS", "CATALYST_KAFKA_MAX_POLL_INTERVAL_MS=70000", "70000", "250" },
		{ "CATALYST_KAFKA_FETCH_WAIT_MAX_MS", "CATALYST_KAFKA_FETCH_WAIT_MAX_MS=5", "60000", "5" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cat_config_t *cfg = NULL;
		char errstr[256] = "", seen[512] = "";

		ck_assert_msg(cat_config_load(&cfg, defs, N_DEFS, env_with(cases[i].name, cases[i].assignment), errstr,
					      sizeof(errstr)) == CAT_OK,
			      "case %zu: %s", i, errstr);
		ck_assert_str_eq(cat_config_kafka(cfg, "max.poll.interval.ms"), cases[i].max_poll);
		ck_assert_str_eq(cat_config_kafka(cfg, "fetch.wait.max.ms"), cases[i].fetch_wait);
		ck_assert_int_eq(cat_config_each_kafka(cfg, collect, seen), 0);
		ck_assert_msg(!strstr(strstr(seen, "max.poll.interval.ms=") + 1, "max.poll.interval.ms="),
			      "case %zu: set twice: %s", i, seen);
		cat_config_destroy(cfg);
	}
	/* the operator's value of a declared property is validated like any row */
	{
		cat_config_t *cfg = NULL;
		char errstr[256] = "";

		ck_assert_int_eq(cat_config_load(&cfg, defs, N_DEFS,
						 env_with("CATALYST_KAFKA_FETCH_WAIT_MAX_MS", "CATALYST_KAFKA_FETCH_WAIT_MAX_MS=x"),
						 errstr, sizeof(errstr)),
				 CAT_ERR_FATAL);
		ck_assert_ptr_nonnull(strstr(errstr, "CATALYST_KAFKA_FETCH_WAIT_MAX_MS: must be an integer"));
	}
}
END_TEST

START_TEST(test_kafka_passthrough)
{
	char *env[] = { "CATALYST_BROKERS=b:9092", "CATALYST_PG_URL=dbname=x", "CATALYST_REDIS_URL=redis://h",
			"CATALYST_KAFKA_SECURITY_PROTOCOL=sasl_ssl", "CATALYST_KAFKA_SSL_CA_LOCATION=/etc/ca.pem",
			NULL };
	cat_config_t *cfg = NULL;
	char errstr[256], seen[256] = "";

	ck_assert_int_eq(cat_config_load(&cfg, defs, N_DEFS, env, errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(cat_config_each_kafka(cfg, collect, seen), 0);
	/* the operator's, then the table's defaults of the properties they leave unset */
	ck_assert_str_eq(seen, "security.protocol=sasl_ssl;ssl.ca.location=/etc/ca.pem;"
			       "max.poll.interval.ms=60000;fetch.wait.max.ms=250;");
	cat_config_destroy(cfg);
}
END_TEST

START_TEST(test_usage_hides_nothing_secret)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	setenv("CATALYST_PG_URL", "postgresql://u:hunter2@h/db", 1);
	cat_config_usage(out, "usage: x", defs, N_DEFS);
	fclose(out);
	unsetenv("CATALYST_PG_URL");
	ck_assert_ptr_nonnull(strstr(text, "CATALYST_BATCH_SIZE"));
	ck_assert_ptr_nonnull(strstr(text, "default 500"));
	ck_assert_ptr_nonnull(strstr(text, "CATALYST_PG_URL"));
	ck_assert_ptr_nonnull(strstr(text, "[1..1000] (at most 3); default 5,10"));
	ck_assert_ptr_nonnull(strstr(text, "required when CATALYST_STORE=s3"));
	ck_assert_ptr_null(strstr(text, "hunter2"));
	free(text);
}
END_TEST

/* Each test runs in its own forked process (Check's default), so the
 * process state one sets does not reach the other. */
START_TEST(test_core_dumps_allowed_when_asked)
{
	cat_config_t *cfg = NULL;
	struct rlimit before, after;
	char errstr[256];

	ck_assert_int_eq(getrlimit(RLIMIT_CORE, &before), 0);
	before.rlim_cur = before.rlim_max; /* whatever the runner had, raised to its hard limit */
	ck_assert_int_eq(setrlimit(RLIMIT_CORE, &before), 0);
	ck_assert_int_eq(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
	ck_assert_int_eq(cat_config_load(&cfg, defs, N_DEFS, env_with("CATALYST_CORE_DUMPS", "CATALYST_CORE_DUMPS=true"),
					 errstr, sizeof(errstr)),
			 CAT_OK);
	ck_assert_int_eq(getrlimit(RLIMIT_CORE, &after), 0);
	ck_assert(after.rlim_cur == before.rlim_cur && after.rlim_max == before.rlim_max);
	ck_assert_int_eq(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
	cat_config_destroy(cfg);
}
END_TEST

START_TEST(test_core_dumps_off_by_default)
{
	cat_config_t *cfg = NULL;
	struct rlimit limit;
	char errstr[256];

	ck_assert_int_eq(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
	ck_assert_int_eq(cat_config_load(&cfg, defs, N_DEFS, env_with(NULL, NULL), errstr, sizeof(errstr)), CAT_OK);
	ck_assert_int_eq(getrlimit(RLIMIT_CORE, &limit), 0);
	ck_assert_uint_eq(limit.rlim_cur, 0);
	ck_assert_uint_eq(limit.rlim_max, 0);
	ck_assert_int_eq(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
	cat_config_destroy(cfg);
}
END_TEST

START_TEST(test_wants_help)
{
	char *a[] = { "prog", "write", "--help", NULL };
	char *b[] = { "prog", "write", "-", NULL };

	ck_assert(cat_config_wants_help(3, a));
	ck_assert(!cat_config_wants_help(3, b));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	/* failure paths first */
	tcase_add_test(tc, test_bad_settings);
	tcase_add_test(tc, test_good_env_and_defaults);
	tcase_add_test(tc, test_values_parsed);
	tcase_add_test(tc, test_int_list_and_required_if);
	tcase_add_test(tc, test_fill_settings);
	tcase_add_test(tc, test_kafka_passthrough);
	tcase_add_test(tc, test_kafka_defaults);
	tcase_add_test(tc, test_usage_hides_nothing_secret);
	tcase_add_test(tc, test_wants_help);
	tcase_add_test(tc, test_core_dumps_allowed_when_asked);
	tcase_add_test(tc, test_core_dumps_off_by_default);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
