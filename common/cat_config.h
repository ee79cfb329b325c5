/*
 * cat_config: one declarative table of settings per binary.
 *
 * Each binary lists its settings as rows with designated initializers
 * (name, type, default, required, secret, range or check, help);
 * cat_config_load() reads them from the environment and validates every
 * one before any connection opens, and cat_config_usage() writes the
 * --help text from the same table. Secrets are never printed: not in
 * errors, not in --help, not in logs.
 *
 * A row may also say
 *   - when it is required: .required_if = "CATALYST_BACKUP_STORE=s3";
 *   - how its value is checked beyond its type: .check (a cat_config_check_fn,
 *     e.g. cat_redis_url_check), or CAT_CFG_INT_LIST with .min/.max/.max_items;
 *   - the default of a librdkafka property it gives: .kafka, .kafka_scale
 *     (an operator's CATALYST_KAFKA_<PROPERTY> wins), so a worker's Kafka
 *     defaults are data, never setenv;
 *   - the field of the binary's settings struct it fills:
 *     CAT_CONFIG_FIELD(type, member), written by cat_config_fill().
 *
 * Groups every worker shares are macros (CAT_CONFIG_KAFKA, CAT_CONFIG_PG,
 * CAT_CONFIG_CONSUMER(batch, max_poll_ms), ...) to splice into a table:
 *
 *   static const cat_config_def_t defs[] = {
 *       CAT_CONFIG_COMMON, CAT_CONFIG_KAFKA, CAT_CONFIG_PG,
 *       { .name = "CATALYST_MIGRATE_PORT", .type = CAT_CFG_INT, .def = "5020", ... },
 *   };
 *
 * librdkafka's own options pass through unvalidated by us but checked by
 * rd_kafka_conf_set(): CATALYST_KAFKA_SECURITY_PROTOCOL=ssl sets
 * "security.protocol" (lower-cased, '_' -> '.'); see cat_kafka.
 */
#ifndef CAT_CONFIG_H
#define CAT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "cat_err.h"

typedef enum cat_config_type {
	CAT_CFG_STRING,   /* any non-empty text */
	CAT_CFG_INT,      /* decimal integer within [min, max] */
	CAT_CFG_BOOL,     /* true/false, 1/0, yes/no, on/off */
	CAT_CFG_ENUM,     /* one of the '|'-separated words in `choices` */
	CAT_CFG_PG_URL,   /* libpq connection string or URI */
	CAT_CFG_HTTP_URL, /* http:// or https:// */
	CAT_CFG_INT_LIST, /* comma-separated integers within [min, max], at most max_items */
} cat_config_type_t;

/* The numbers of a CAT_CFG_INT_LIST row bound to a settings field. */
#define CAT_CONFIG_INT_LIST_MAX 32
typedef struct cat_config_int_list {
	long long v[CAT_CONFIG_INT_LIST_MAX];
	size_t n;
} cat_config_int_list_t;

/* Binds a row to a field of the binary's settings struct, which
 * cat_config_fill() writes: CAT_CFG_INT -> long long, CAT_CFG_BOOL -> bool,
 * CAT_CFG_INT_LIST -> cat_config_int_list_t (max_items at most
 * CAT_CONFIG_INT_LIST_MAX), any other type -> const char * (NULL when
 * unset; borrowed from the cat_config_t, valid until it is destroyed). */
#define CAT_CONFIG_FIELD(settings_type, member) .bound = true, .offset = offsetof(settings_type, member)

/* A row's own check, after its type's: returns 0 if `text` is acceptable,
 * else non-zero with `why` saying what is accepted ("must be ..."), without
 * quoting the value (the caller names the variable and, unless the row is
 * secret, the value). */
typedef int (*cat_config_check_fn)(const char *text, char *why, size_t why_size);

typedef struct cat_config_def {
	const char *name;      /* CATALYST_... */
	cat_config_type_t type;
	const char *def;       /* default; NULL: none */
	bool required;         /* must be set (and non-empty) when there is no default */
	const char *required_if; /* "CATALYST_X=value": `required` holds only when that
				  * setting of the table has that value (NULL: always) */
	bool secret;           /* never printed */
	long long min, max;    /* CAT_CFG_INT and CAT_CFG_INT_LIST bounds (both 0: no bounds) */
	size_t max_items;      /* CAT_CFG_INT_LIST: most numbers (0: no limit) */
	const char *choices;   /* CAT_CFG_ENUM: "a|b|c" */
	cat_config_check_fn check; /* NULL: the type's rules only */
	const char *kafka;     /* a librdkafka property ("max.poll.interval.ms") whose default
				* is this row's value (times kafka_scale when not 0), unless
				* the operator set CATALYST_KAFKA_<PROPERTY> */
	long long kafka_scale;
	bool bound;            /* CAT_CONFIG_FIELD(): offset is a settings field's */
	size_t offset;
	const char *help;
} cat_config_def_t;

typedef struct cat_config cat_config_t;

/* Shared groups. */
#define CAT_CONFIG_COMMON                                                                           \
	{ .name = "CATALYST_LOG_LEVEL", .type = CAT_CFG_ENUM, .def = "info",                        \
	  .choices = "debug|info|warn|error", .help = "lowest level logged" },                      \
	{ .name = "CATALYST_CORE_DUMPS", .type = CAT_CFG_BOOL, .def = "false",                      \
	  .help = "allow core dumps and debuggers to attach (a core holds passwords and keys: "      \
	          "debugging only)" }

#define CAT_CONFIG_KAFKA                                                                            \
	{ .name = "CATALYST_BROKERS", .type = CAT_CFG_STRING, .required = true,                     \
	  .help = "Kafka bootstrap servers, host:port[,host:port...]" },                            \
	{ .name = "CATALYST_TOPIC_PREFIX", .type = CAT_CFG_STRING, .def = "catalyst.",              \
	  .help = "prefix of every topic name" },                                                   \
	{ .name = "CATALYST_KAFKA_*", .type = CAT_CFG_STRING,                                       \
	  .help = "any librdkafka property: CATALYST_KAFKA_SECURITY_PROTOCOL=ssl sets "              \
	          "security.protocol (TLS: ..._SSL_CA_LOCATION, SASL: ..._SASL_MECHANISMS, "         \
	          "..._SASL_USERNAME, ..._SASL_PASSWORD)" }

#define CAT_CONFIG_PG                                                                               \
	{ .name = "CATALYST_PG_URL", .type = CAT_CFG_PG_URL, .required = true, .secret = true,      \
	  .help = "PostgreSQL primary, libpq conninfo or URI (use sslmode=verify-full in "           \
	          "production)" },                                                                   \
	{ .name = "CATALYST_PG_CONNECT_TIMEOUT_S", .type = CAT_CFG_INT, .def = "10", .min = 1,      \
	  .max = 600, .help = "seconds to wait for a PostgreSQL connection" }

/* Reads and validates every setting of `defs` from `envp` (NULL: the
 * process environment). On failure, errstr holds one line naming the
 * variable, e.g. `CATALYST_BATCH_SIZE: must be an integer from 1 to 100000`,
 * and CAT_ERR_FATAL is returned.
 *
 * Every binary passes here first, so this is also where the process stops
 * a crash from writing its secrets to disk: unless CATALYST_CORE_DUMPS is
 * declared and true, RLIMIT_CORE is set to 0 and the process is made
 * non-dumpable (prctl PR_SET_DUMPABLE 0: no core, no ptrace attach by
 * another process of the same user, /proc/<pid>/environ and mem closed to
 * it). cat_config_destroy() wipes the values of secret settings and of the
 * CATALYST_KAFKA_* pass-through (SASL passwords) before freeing them. */
cat_err_t cat_config_load(cat_config_t **out, const cat_config_def_t *defs, size_t n_defs,
			  char *const *envp, char *errstr, size_t errstr_size) CAT_MUST_CHECK;

void cat_config_destroy(cat_config_t *cfg);

/* Writes the value of every bound row (CAT_CONFIG_FIELD) into `settings`,
 * the struct the table's offsets are of. */
void cat_config_fill(const cat_config_t *cfg, void *settings);

/* Values of settings declared in the table; asking for an undeclared name
 * is a programming error and aborts. A setting without a value (optional,
 * no default, unset) reads as NULL / 0 / false; cat_config_is_set() tells. */
const char *cat_config_str(const cat_config_t *cfg, const char *name);
long long cat_config_int(const cat_config_t *cfg, const char *name);
bool cat_config_bool(const cat_config_t *cfg, const char *name);
bool cat_config_is_set(const cat_config_t *cfg, const char *name);

/* The numbers of a CAT_CFG_INT_LIST setting, already validated: stores up
 * to `max` of them in `out` and returns how many the setting holds. */
size_t cat_config_int_list(const cat_config_t *cfg, const char *name, long long *out, size_t max);

/* Calls fn(key, value, opaque) for each environment variable
 * CATALYST_KAFKA_<NAME>=value, with key the librdkafka property name
 * ("security.protocol"), then for each default the table gives a property
 * the environment does not set (rows with `kafka`). Stops at and returns
 * fn's first non-zero result. */
int cat_config_each_kafka(const cat_config_t *cfg,
			  int (*fn)(const char *key, const char *value, void *opaque), void *opaque);

/* The value given through CATALYST_KAFKA_<NAME> (or the table's default)
 * for librdkafka property `key` ("queued.max.messages.kbytes"), or NULL. */
const char *cat_config_kafka(const cat_config_t *cfg, const char *key);

/* Writes `usage` then the settings table (name, default, required, help). */
void cat_config_usage(FILE *out, const char *usage, const cat_config_def_t *defs, size_t n_defs);

/* True if argv holds -h or --help. */
bool cat_config_wants_help(int argc, char **argv);

#endif /* CAT_CONFIG_H */
