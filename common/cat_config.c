#include "cat_config.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

extern char **environ;

#define KAFKA_PREFIX "CATALYST_KAFKA_"

typedef struct config_value {
	const cat_config_def_t *def;
	char *text;       /* NULL: not set and no default */
	long long num;    /* CAT_CFG_INT and CAT_CFG_BOOL */
} config_value_t;

struct cat_config {
	config_value_t *values;
	size_t n_values;
	char **kafka_keys;  /* librdkafka property names */
	char **kafka_vals;
	size_t n_kafka;
};

static const char *env_get(char *const *envp, const char *name)
{
	size_t len = strlen(name);

	for (char *const *e = envp; *e; e++)
		if (strncmp(*e, name, len) == 0 && (*e)[len] == '=')
			return *e + len + 1;
	return NULL;
}

static bool is_wildcard(const cat_config_def_t *def)
{
	size_t len = strlen(def->name);

	return len > 0 && def->name[len - 1] == '*';
}

static int parse_bool(const char *text, long long *out)
{
	static const char *const yes[] = { "1", "true", "yes", "on" };
	static const char *const no[] = { "0", "false", "no", "off" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(text, yes[i]) == 0)
			return *out = 1, 0;
		if (strcasecmp(text, no[i]) == 0)
			return *out = 0, 0;
	}
	return -1;
}

static bool enum_has(const char *choices, const char *word)
{
	size_t len = strlen(word);
	const char *p = choices;

	while (p && *p) {
		const char *bar = strchr(p, '|');
		size_t n = bar ? (size_t)(bar - p) : strlen(p);

		if (n == len && strncmp(p, word, n) == 0)
			return true;
		p = bar ? bar + 1 : NULL;
	}
	return false;
}

/* "5,10,20": each number within the row's bounds, at most max_items of
 * them; stores up to `max` in `out` (NULL: none) and their count in *n. */
static int parse_int_list(const cat_config_def_t *def, const char *text, long long *out, size_t max,
			  size_t *n)
{
	const char *p = text;

	*n = 0;
	while (*p) {
		char *end;
		long long v;

		errno = 0;
		v = strtoll(p, &end, 10);
		if (errno || end == p || (*end && *end != ',') ||
		    ((def->min || def->max) && (v < def->min || v > def->max)) ||
		    (def->max_items && *n == def->max_items))
			return -1;
		if (out && *n < max)
			out[*n] = v;
		(*n)++;
		p = *end ? end + 1 : end;
	}
	return *n ? 0 : -1;
}

/* Validates one value; `shown` is how the value may appear in the error. */
static cat_err_t validate(const cat_config_def_t *def, const char *text, long long *num,
			  char *errstr, size_t errstr_size)
{
	char shown[96];

	if (def->secret)
		snprintf(shown, sizeof(shown), "(value hidden)");
	else
		snprintf(shown, sizeof(shown), "(got \"%.64s\")", text);

	switch (def->type) {
	case CAT_CFG_STRING:
		return CAT_OK;
	case CAT_CFG_INT: {
		char *end;
		long long v;

		errno = 0;
		v = strtoll(text, &end, 10);
		if (errno || end == text || *end != '\0' ||
		    ((def->min || def->max) && (v < def->min || v > def->max))) {
			if (def->min || def->max)
				return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
						   "%s: must be an integer from %lld to %lld %s", def->name,
						   def->min, def->max, shown);
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "%s: must be an integer %s", def->name, shown);
		}
		*num = v;
		return CAT_OK;
	}
	case CAT_CFG_BOOL:
		if (parse_bool(text, num) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "%s: must be true or false %s", def->name, shown);
		return CAT_OK;
	case CAT_CFG_ENUM:
		if (!enum_has(def->choices, text))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s: must be one of %s %s",
					   def->name, def->choices, shown);
		return CAT_OK;
	case CAT_CFG_PG_URL: {
		char *pqerr = NULL;
		PQconninfoOption *opts = PQconninfoParse(text, &pqerr);

		if (!opts) {
			/* libpq's message names the bad part, never the password */
			char *nl, *echo;

			if (pqerr && (nl = strchr(pqerr, '\n')))
				*nl = '\0';
			/* some libpq messages quote the whole string, password included */
			if (pqerr && (echo = strstr(pqerr, text)))
				snprintf(echo, strlen(echo) + 1, "(value hidden)\"");
			cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				    "%s: not a valid PostgreSQL connection string: %s", def->name,
				    pqerr ? pqerr : "out of memory");
			PQfreemem(pqerr);
			return CAT_ERR_FATAL;
		}
		/* libpq's copies hold the password: wiped before they go back to the heap */
		for (PQconninfoOption *o = opts; o->keyword; o++)
			if (o->val)
				explicit_bzero(o->val, strlen(o->val));
		PQconninfoFree(opts);
		return CAT_OK;
	}
	case CAT_CFG_HTTP_URL:
		if (strncmp(text, "http://", 7) != 0 && strncmp(text, "https://", 8) != 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "%s: must be an http:// or https:// URL %s", def->name, shown);
		return CAT_OK;
	case CAT_CFG_INT_LIST: {
		size_t n;
		char most[48] = "";

		if (parse_int_list(def, text, NULL, 0, &n) == 0)
			return CAT_OK;
		if (def->max_items)
			snprintf(most, sizeof(most), "up to %zu ", def->max_items);
		if (def->min || def->max)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "%s: must be %sintegers from %lld to %lld separated by commas %s",
					   def->name, most, def->min, def->max, shown);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
				   "%s: must be %sintegers separated by commas %s", def->name, most, shown);
	}
	}
	return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s: unknown setting type", def->name);
}

/* The type's rules, then the row's own check. */
static cat_err_t validate_row(const cat_config_def_t *def, const char *text, long long *num, char *errstr,
			      size_t errstr_size)
{
	char why[256] = "";
	cat_err_t err;

	if ((err = validate(def, text, num, errstr, errstr_size)) != CAT_OK)
		return err;
	if (!def->check || def->check(text, why, sizeof(why)) == 0)
		return CAT_OK;
	if (def->secret)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s: %s (value hidden)", def->name, why);
	return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s: %s (got \"%.64s\")", def->name, why, text);
}

/* Whether a row's requirement holds: always, or when the setting its
 * required_if names has the value given there. */
static bool required_now(const cat_config_t *cfg, const cat_config_def_t *def)
{
	const char *eq;
	size_t len;

	if (!def->required)
		return false;
	if (!def->required_if)
		return true;
	eq = strchr(def->required_if, '=');
	len = eq ? (size_t)(eq - def->required_if) : strlen(def->required_if);
	for (size_t i = 0; i < cfg->n_values; i++) {
		const config_value_t *value = &cfg->values[i];

		if (value->def && strlen(value->def->name) == len &&
		    strncmp(value->def->name, def->required_if, len) == 0)
			return value->text && eq && strcmp(value->text, eq + 1) == 0;
	}
	return false;
}

/* "CATALYST_KAFKA_SSL_CA_LOCATION" -> "ssl.ca.location" */
static char *kafka_key(const char *env_name, size_t len)
{
	char *key = strndup(env_name + strlen(KAFKA_PREFIX), len - strlen(KAFKA_PREFIX));

	for (char *c = key; c && *c; c++)
		*c = *c == '_' ? '.' : (char)tolower((unsigned char)*c);
	return key;
}

static cat_err_t load_kafka(cat_config_t *cfg, char *const *envp, char *errstr, size_t errstr_size)
{
	size_t n = 0;

	for (char *const *e = envp; *e; e++)
		if (strncmp(*e, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0)
			n++;
	if (n == 0)
		return CAT_OK;
	cfg->kafka_keys = calloc(n, sizeof(char *));
	cfg->kafka_vals = calloc(n, sizeof(char *));
	if (!cfg->kafka_keys || !cfg->kafka_vals)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	for (char *const *e = envp; *e; e++) {
		const char *eq;

		if (strncmp(*e, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) != 0 || !(eq = strchr(*e, '=')))
			continue;
		if ((size_t)(eq - *e) == strlen(KAFKA_PREFIX))
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL,
					   "%s: names no librdkafka property", KAFKA_PREFIX);
		cfg->kafka_keys[cfg->n_kafka] = kafka_key(*e, (size_t)(eq - *e));
		cfg->kafka_vals[cfg->n_kafka] = strdup(eq + 1);
		cfg->n_kafka++;
		if (!cfg->kafka_keys[cfg->n_kafka - 1] || !cfg->kafka_vals[cfg->n_kafka - 1])
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	return CAT_OK;
}

/* The defaults rows give librdkafka properties the environment leaves
 * unset: the first row with a value wins. */
static cat_err_t load_kafka_defaults(cat_config_t *cfg, char *errstr, size_t errstr_size)
{
	for (size_t i = 0; i < cfg->n_values; i++) {
		const config_value_t *value = &cfg->values[i];
		char scaled[32], **keys, **vals;
		const char *text = value->text;

		if (!value->def || !value->def->kafka || !text || cat_config_kafka(cfg, value->def->kafka))
			continue;
		if (value->def->kafka_scale) {
			snprintf(scaled, sizeof(scaled), "%lld", value->num * value->def->kafka_scale);
			text = scaled;
		}
		keys = realloc(cfg->kafka_keys, (cfg->n_kafka + 1) * sizeof(char *));
		if (keys)
			cfg->kafka_keys = keys;
		vals = realloc(cfg->kafka_vals, (cfg->n_kafka + 1) * sizeof(char *));
		if (vals)
			cfg->kafka_vals = vals;
		if (!keys || !vals)
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		cfg->kafka_keys[cfg->n_kafka] = strdup(value->def->kafka);
		cfg->kafka_vals[cfg->n_kafka] = strdup(text);
		cfg->n_kafka++;
		if (!cfg->kafka_keys[cfg->n_kafka - 1] || !cfg->kafka_vals[cfg->n_kafka - 1])
			return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	return CAT_OK;
}

/* No core dump, no ptrace attach, unless CATALYST_CORE_DUMPS allows them. */
static cat_err_t protect_process(const cat_config_t *cfg, char *errstr, size_t errstr_size)
{
	struct rlimit none = {0, 0};

	for (size_t i = 0; i < cfg->n_values; i++)
		if (strcmp(cfg->values[i].def->name, "CATALYST_CORE_DUMPS") == 0 && cfg->values[i].num)
			return CAT_OK;
	if (setrlimit(RLIMIT_CORE, &none) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not turn core dumps off: %s",
				   strerror(errno));
	return CAT_OK;
}

cat_err_t cat_config_load(cat_config_t **out, const cat_config_def_t *defs, size_t n_defs,
			  char *const *envp, char *errstr, size_t errstr_size)
{
	cat_config_t *cfg;
	cat_err_t err = CAT_OK;

	*out = NULL;
	if (!envp)
		envp = environ;
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg || !(cfg->values = calloc(n_defs ? n_defs : 1, sizeof(config_value_t)))) {
		free(cfg);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	cfg->n_values = n_defs;

	for (size_t i = 0; i < n_defs; i++) {
		const cat_config_def_t *def = &defs[i];
		config_value_t *value = &cfg->values[i];
		const char *text;

		value->def = def;
		if (is_wildcard(def)) {
			if (strcmp(def->name, KAFKA_PREFIX "*") == 0 &&
			    (err = load_kafka(cfg, envp, errstr, errstr_size)) != CAT_OK)
				goto error;
			continue;
		}
		text = env_get(envp, def->name);
		if (text && *text == '\0')
			text = NULL; /* set but empty reads as unset */
		if (!text)
			text = def->def;
		if (!text && def->required && !def->required_if) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s: required but not set",
					  def->name);
			goto error;
		}
		if (!text)
			continue; /* a required_if row: known once all are read */
		if ((err = validate_row(def, text, &value->num, errstr, errstr_size)) != CAT_OK)
			goto error;
		if (!(value->text = strdup(text))) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
			goto error;
		}
	}
	for (size_t i = 0; i < n_defs; i++) {
		const cat_config_def_t *def = &defs[i];

		if (is_wildcard(def) || cfg->values[i].text || !required_now(cfg, def))
			continue;
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "%s: required when %s", def->name,
				  def->required_if);
		goto error;
	}
	if ((err = load_kafka_defaults(cfg, errstr, errstr_size)) != CAT_OK ||
	    (err = protect_process(cfg, errstr, errstr_size)) != CAT_OK)
		goto error;
	*out = cfg;
	return CAT_OK;

error:
	cat_config_destroy(cfg);
	return err;
}

static void free_wiped(char *text)
{
	if (text) {
		explicit_bzero(text, strlen(text));
		free(text);
	}
}

void cat_config_destroy(cat_config_t *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->n_values; i++) {
		if (cfg->values[i].def && cfg->values[i].def->secret)
			free_wiped(cfg->values[i].text);
		else
			free(cfg->values[i].text);
	}
	free(cfg->values);
	for (size_t i = 0; i < cfg->n_kafka; i++) {
		free(cfg->kafka_keys[i]);
		free_wiped(cfg->kafka_vals[i]); /* SASL and TLS key passwords */
	}
	free(cfg->kafka_keys);
	free(cfg->kafka_vals);
	free(cfg);
}

void cat_config_fill(const cat_config_t *cfg, void *settings)
{
	for (size_t i = 0; i < cfg->n_values; i++) {
		const config_value_t *value = &cfg->values[i];
		char *field = (char *)settings + value->def->offset;

		if (!value->def->bound)
			continue;
		switch (value->def->type) {
		case CAT_CFG_INT:
			memcpy(field, &value->num, sizeof(value->num));
			break;
		case CAT_CFG_BOOL: {
			bool b = value->num != 0;

			memcpy(field, &b, sizeof(b));
			break;
		}
		case CAT_CFG_INT_LIST: {
			cat_config_int_list_t list = { .n = 0 };

			if (value->text &&
			    parse_int_list(value->def, value->text, list.v, CAT_CONFIG_INT_LIST_MAX, &list.n) != 0)
				list.n = 0;
			if (list.n > CAT_CONFIG_INT_LIST_MAX)
				list.n = CAT_CONFIG_INT_LIST_MAX;
			memcpy(field, &list, sizeof(list));
			break;
		}
		default: {
			const char *text = value->text;

			memcpy(field, &text, sizeof(text));
			break;
		}
		}
	}
}

static const config_value_t *find(const cat_config_t *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_values; i++)
		if (strcmp(cfg->values[i].def->name, name) == 0)
			return &cfg->values[i];
	fprintf(stderr, "catalyst: setting %s is not declared in this binary's table\n", name);
	abort();
}

const char *cat_config_str(const cat_config_t *cfg, const char *name)
{
	return find(cfg, name)->text;
}

long long cat_config_int(const cat_config_t *cfg, const char *name)
{
	return find(cfg, name)->num;
}

bool cat_config_bool(const cat_config_t *cfg, const char *name)
{
	return find(cfg, name)->num != 0;
}

bool cat_config_is_set(const cat_config_t *cfg, const char *name)
{
	return find(cfg, name)->text != NULL;
}

size_t cat_config_int_list(const cat_config_t *cfg, const char *name, long long *out, size_t max)
{
	const config_value_t *value = find(cfg, name);
	size_t n = 0;

	if (value->def->type != CAT_CFG_INT_LIST || !value->text ||
	    parse_int_list(value->def, value->text, out, max, &n) != 0)
		return 0;
	return n;
}

int cat_config_each_kafka(const cat_config_t *cfg,
			  int (*fn)(const char *key, const char *value, void *opaque), void *opaque)
{
	for (size_t i = 0; i < cfg->n_kafka; i++) {
		int rc = fn(cfg->kafka_keys[i], cfg->kafka_vals[i], opaque);

		if (rc)
			return rc;
	}
	return 0;
}

const char *cat_config_kafka(const cat_config_t *cfg, const char *key)
{
	for (size_t i = 0; i < cfg->n_kafka; i++)
		if (strcmp(cfg->kafka_keys[i], key) == 0)
			return cfg->kafka_vals[i];
	return NULL;
}

void cat_config_usage(FILE *out, const char *usage, const cat_config_def_t *defs, size_t n_defs)
{
	fprintf(out, "%s\n\nEnvironment:\n", usage);
	for (size_t i = 0; i < n_defs; i++) {
		const cat_config_def_t *def = &defs[i];

		fprintf(out, "  %s\n      %s", def->name, def->help);
		if (def->type == CAT_CFG_ENUM)
			fprintf(out, " (%s)", def->choices);
		if ((def->type == CAT_CFG_INT || def->type == CAT_CFG_INT_LIST) && (def->min || def->max))
			fprintf(out, " [%lld..%lld]", def->min, def->max);
		if (def->type == CAT_CFG_INT_LIST && def->max_items)
			fprintf(out, " (at most %zu)", def->max_items);
		if (def->def)
			fprintf(out, "; default %s", def->def);
		else if (def->required && def->required_if)
			fprintf(out, "; required when %s", def->required_if);
		else if (def->required)
			fprintf(out, "; required");
		if (def->secret)
			fprintf(out, "; secret");
		if (def->kafka && strncmp(def->name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) != 0)
			fprintf(out, "; times %lld, the default of librdkafka's %s", def->kafka_scale ? def->kafka_scale : 1,
				def->kafka);
		fputc('\n', out);
	}
}

bool cat_config_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			return true;
	return false;
}
