/*
 * cat_config: one declarative table of settings per binary.
 *
 * Each binary lists its settings (name, type, default, required, secret,
 * help); cat_config_load() reads them from the environment and validates
 * every one before any connection opens, and cat_config_usage() writes the
 * --help text from the same table. Secrets are never printed: not in
 * errors, not in --help, not in logs.
 *
 * Groups every worker shares are macros (CAT_CONFIG_KAFKA, CAT_CONFIG_PG,
 * ...) to splice into a table:
 *
 *   static const cat_config_def_t defs[] = {
 *       CAT_CONFIG_COMMON, CAT_CONFIG_KAFKA, CAT_CONFIG_PG,
 *       { "CATALYST_MIGRATE_PORT", CAT_CFG_INT, "5020", ... },
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
	CAT_CFG_REDIS_URL, /* redis://[:password@]host[:port][/db] or rediss:// */
	CAT_CFG_HTTP_URL, /* http:// or https:// */
} cat_config_type_t;

typedef struct cat_config_def {
	const char *name;      /* CATALYST_... */
	cat_config_type_t type;
	const char *def;       /* default; NULL: none */
	bool required;         /* must be set (and non-empty) when there is no default */
	bool secret;           /* never printed */
	long long min, max;    /* CAT_CFG_INT bounds (both 0: no bounds) */
	const char *choices;   /* CAT_CFG_ENUM: "a|b|c" */
	const char *help;
} cat_config_def_t;

typedef struct cat_config cat_config_t;

/* Shared groups. */
#define CAT_CONFIG_COMMON                                                                          \
	{ "CATALYST_LOG_LEVEL", CAT_CFG_ENUM, "info", false, false, 0, 0, "debug|info|warn|error",  \
	  "lowest level logged" },                                                                   \
	{ "CATALYST_CORE_DUMPS", CAT_CFG_BOOL, "false", false, false, 0, 0, NULL,                   \
	  "allow core dumps and debuggers to attach (a core holds passwords and keys: debugging only)" }

#define CAT_CONFIG_KAFKA                                                                           \
	{ "CATALYST_BROKERS", CAT_CFG_STRING, NULL, true, false, 0, 0, NULL,                        \
	  "Kafka bootstrap servers, host:port[,host:port...]" },                                     \
	{ "CATALYST_TOPIC_PREFIX", CAT_CFG_STRING, "catalyst.", false, false, 0, 0, NULL,           \
	  "prefix of every topic name" },                                                            \
	{ "CATALYST_KAFKA_*", CAT_CFG_STRING, NULL, false, false, 0, 0, NULL,                       \
	  "any librdkafka property: CATALYST_KAFKA_SECURITY_PROTOCOL=ssl sets security.protocol "     \
	  "(TLS: ..._SSL_CA_LOCATION, SASL: ..._SASL_MECHANISMS, ..._SASL_USERNAME, "                \
	  "..._SASL_PASSWORD)" }

#define CAT_CONFIG_PG                                                                              \
	{ "CATALYST_PG_URL", CAT_CFG_PG_URL, NULL, true, true, 0, 0, NULL,                          \
	  "PostgreSQL primary, libpq conninfo or URI (use sslmode=verify-full in production)" },     \
	{ "CATALYST_PG_CONNECT_TIMEOUT_S", CAT_CFG_INT, "10", false, false, 1, 600, NULL,          \
	  "seconds to wait for a PostgreSQL connection" }

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

/* Values of settings declared in the table; asking for an undeclared name
 * is a programming error and aborts. A setting without a value (optional,
 * no default, unset) reads as NULL / 0 / false; cat_config_is_set() tells. */
const char *cat_config_str(const cat_config_t *cfg, const char *name);
long long cat_config_int(const cat_config_t *cfg, const char *name);
bool cat_config_bool(const cat_config_t *cfg, const char *name);
bool cat_config_is_set(const cat_config_t *cfg, const char *name);

/* Calls fn(key, value, opaque) for each environment variable
 * CATALYST_KAFKA_<NAME>=value, with key the librdkafka property name
 * ("security.protocol"). Stops at and returns fn's first non-zero result. */
int cat_config_each_kafka(const cat_config_t *cfg,
			  int (*fn)(const char *key, const char *value, void *opaque), void *opaque);

/* The value given through CATALYST_KAFKA_<NAME> for librdkafka property
 * `key` ("queued.max.messages.kbytes"), or NULL. */
const char *cat_config_kafka(const cat_config_t *cfg, const char *key);

/* Writes `usage` then the settings table (name, default, required, help). */
void cat_config_usage(FILE *out, const char *usage, const cat_config_def_t *defs, size_t n_defs);

/* True if argv holds -h or --help. */
bool cat_config_wants_help(int argc, char **argv);

#endif /* CAT_CONFIG_H */
