#include "cat_metrics.h"

#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cat_log.h"
#include "cat_time.h"

#define MAX_RENDER_HOOKS 16

const double CAT_METRICS_DEFAULT_BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const size_t CAT_METRICS_N_DEFAULT_BUCKETS =
	sizeof(CAT_METRICS_DEFAULT_BUCKETS) / sizeof(CAT_METRICS_DEFAULT_BUCKETS[0]);

typedef enum metric_kind {
	KIND_COUNTER,
	KIND_GAUGE,
	KIND_HISTOGRAM,
} metric_kind_t;

static const char *const kind_names[] = {"counter", "gauge", "histogram"};

typedef struct family {
	char *name;
	char *help;
	metric_kind_t kind;
	double *bounds; /* histograms: upper bounds, +Inf implied */
	size_t n_bounds;
	cat_metric_t *series; /* creation order */
	cat_metric_t *last_series;
	struct family *next;
} family_t;

struct cat_metric {
	family_t *family;
	char *labels; /* `a="x",b="y"`, escaped; "" without labels */
	bool is_double;
	_Atomic int64_t ivalue;
	_Atomic uint64_t dbits;	   /* double value (histograms: sum), as bits */
	_Atomic uint64_t *buckets; /* histograms: n_bounds + 1 counts, not cumulative */
	cat_metric_t *next;
};

typedef struct render_hook {
	void (*fn)(void *opaque);
	void *opaque;
} render_hook_t;

typedef struct process_metrics {
	cat_metric_t *start_time;
	cat_metric_t *cpu_seconds;
	cat_metric_t *resident_bytes;
	cat_metric_t *open_fds;
	cat_metric_t *up;
} process_metrics_t;

struct cat_metrics {
	pthread_mutex_t lock; /* guards the lists, never the values */
	family_t *families;
	family_t *last_family;
	render_hook_t hooks[MAX_RENDER_HOOKS];
	size_t n_hooks;
	process_metrics_t *process;
};

static uint64_t double_bits(double value)
{
	uint64_t bits;

	memcpy(&bits, &value, sizeof(bits));
	return bits;
}

static double bits_double(uint64_t bits)
{
	double value;

	memcpy(&value, &bits, sizeof(value));
	return value;
}

static void atomic_add_double(_Atomic uint64_t *bits, double delta)
{
	uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);

	while (!atomic_compare_exchange_weak_explicit(bits, &old, double_bits(bits_double(old) + delta),
						      memory_order_relaxed, memory_order_relaxed))
		;
}

cat_metrics_t *cat_metrics_new(void)
{
	cat_metrics_t *reg = calloc(1, sizeof(*reg));

	if (!reg)
		return NULL;
	if (pthread_mutex_init(&reg->lock, NULL) != 0) {
		free(reg);
		return NULL;
	}
	return reg;
}

static void metric_free(cat_metric_t *metric)
{
	free(metric->labels);
	free((void *)metric->buckets);
	free(metric);
}

static void family_free(family_t *family)
{
	cat_metric_t *next;

	for (cat_metric_t *m = family->series; m; m = next) {
		next = m->next;
		metric_free(m);
	}
	free(family->name);
	free(family->help);
	free(family->bounds);
	free(family);
}

void cat_metrics_destroy(cat_metrics_t *reg)
{
	family_t *next;

	if (!reg)
		return;
	for (family_t *f = reg->families; f; f = next) {
		next = f->next;
		family_free(f);
	}
	free(reg->process);
	pthread_mutex_destroy(&reg->lock);
	free(reg);
}

static bool valid_name(const char *name, bool label)
{
	if (!name || !*name || isdigit((unsigned char)*name))
		return false;
	if (label && strncmp(name, "__", 2) == 0)
		return false;
	for (const char *c = name; *c; c++)
		if (!(isalnum((unsigned char)*c) || *c == '_' || (!label && *c == ':')))
			return false;
	return true;
}

/* Appends text to a growing string with escapes for help (\\, \n) or,
 * with `quote`, label values (\\, \n, \"). */
static void put_escaped(FILE *out, const char *text, bool quote)
{
	for (const char *c = text; *c; c++) {
		if (*c == '\\')
			fputs("\\\\", out);
		else if (*c == '\n')
			fputs("\\n", out);
		else if (quote && *c == '"')
			fputs("\\\"", out);
		else
			fputc(*c, out);
	}
}

/* `a="x",b="y"` from the label pairs of ap; NULL on error (logged). */
static char *labels_text(const char *metric_name, metric_kind_t kind, va_list ap)
{
	const char *names[CAT_METRICS_MAX_LABELS];
	char *text = NULL;
	size_t text_len = 0;
	size_t n = 0;
	const char *label;
	const char *problem = NULL;
	FILE *out;

	if (!(out = open_memstream(&text, &text_len)))
		return NULL;
	while (!problem && (label = va_arg(ap, const char *)) != NULL) {
		const char *value = va_arg(ap, const char *);

		if (n == CAT_METRICS_MAX_LABELS)
			problem = "too many labels";
		else if (!value || !valid_name(label, true) ||
			 (kind == KIND_HISTOGRAM && strcmp(label, "le") == 0))
			problem = "bad label";
		for (size_t i = 0; !problem && i < n; i++)
			if (strcmp(names[i], label) == 0)
				problem = "label given twice";
		if (problem) {
			CAT_LOG_ERROR("METRICS", "could not create metric %s: %s %s", metric_name, problem,
				      label);
			break;
		}
		names[n++] = label;
		fprintf(out, "%s%s=\"", n > 1 ? "," : "", label);
		put_escaped(out, value, true);
		fputc('"', out);
	}
	if (fclose(out) != 0 || problem) {
		free(text);
		return NULL;
	}
	return text;
}

static family_t *family_get(cat_metrics_t *reg, const char *name, const char *help, metric_kind_t kind,
			    const double *bounds, size_t n_bounds)
{
	family_t *family;

	for (family = reg->families; family; family = family->next) {
		if (strcmp(family->name, name) != 0)
			continue;
		if (family->kind != kind || family->n_bounds != n_bounds ||
		    (n_bounds && memcmp(family->bounds, bounds, n_bounds * sizeof(double)) != 0)) {
			CAT_LOG_ERROR("METRICS", "could not create metric %s: it exists as a %s%s", name,
				      kind_names[family->kind],
				      family->kind == kind ? " with other buckets" : "");
			return NULL;
		}
		return family;
	}
	family = calloc(1, sizeof(*family));
	if (!family)
		return NULL;
	family->name = strdup(name);
	family->help = strdup(help ? help : "");
	family->kind = kind;
	family->n_bounds = n_bounds;
	if (n_bounds && (family->bounds = malloc(n_bounds * sizeof(double))))
		memcpy(family->bounds, bounds, n_bounds * sizeof(double));
	if (!family->name || !family->help || (n_bounds && !family->bounds)) {
		family_free(family);
		return NULL;
	}
	if (reg->last_family)
		reg->last_family->next = family;
	else
		reg->families = family;
	reg->last_family = family;
	return family;
}

static cat_metric_t *metric_create(cat_metrics_t *reg, metric_kind_t kind, bool is_double, const char *name,
				   const char *help, const double *bounds, size_t n_bounds, va_list ap)
{
	cat_metric_t *metric = NULL;
	family_t *family;
	char *labels;

	if (!reg)
		return NULL;
	if (!valid_name(name, false)) {
		CAT_LOG_ERROR("METRICS", "could not create metric %s: invalid name", name ? name : "(null)");
		return NULL;
	}
	for (size_t i = 1; i < n_bounds; i++)
		if (!(bounds[i] > bounds[i - 1])) {
			CAT_LOG_ERROR("METRICS", "could not create metric %s: buckets not increasing", name);
			return NULL;
		}
	if (!(labels = labels_text(name, kind, ap)))
		return NULL;

	pthread_mutex_lock(&reg->lock);
	if (!(family = family_get(reg, name, help, kind, bounds, n_bounds)))
		goto out;
	for (metric = family->series; metric; metric = metric->next)
		if (strcmp(metric->labels, labels) == 0)
			goto out;
	if (!(metric = calloc(1, sizeof(*metric))))
		goto out;
	metric->family = family;
	metric->labels = labels;
	labels = NULL; /* owned by metric */
	metric->is_double = is_double;
	atomic_init(&metric->ivalue, 0);
	atomic_init(&metric->dbits, double_bits(0.0));
	if (kind == KIND_HISTOGRAM) {
		metric->buckets = calloc(n_bounds + 1, sizeof(*metric->buckets));
		if (!metric->buckets) {
			metric_free(metric);
			metric = NULL;
			goto out;
		}
		for (size_t i = 0; i <= n_bounds; i++)
			atomic_init(&metric->buckets[i], 0);
	}
	if (family->last_series)
		family->last_series->next = metric;
	else
		family->series = metric;
	family->last_series = metric;
out:
	pthread_mutex_unlock(&reg->lock);
	free(labels);
	return metric;
}

static cat_err_t family_declare(cat_metrics_t *reg, const char *name, const char *help, metric_kind_t kind)
{
	family_t *family;

	if (!reg)
		return CAT_ERR_FATAL;
	if (!valid_name(name, false)) {
		CAT_LOG_ERROR("METRICS", "could not declare metric %s: invalid name", name ? name : "(null)");
		return CAT_ERR_FATAL;
	}
	pthread_mutex_lock(&reg->lock);
	family = family_get(reg, name, help, kind, NULL, 0);
	pthread_mutex_unlock(&reg->lock);
	return family ? CAT_OK : CAT_ERR_FATAL;
}

cat_err_t cat_metrics_declare_counter(cat_metrics_t *reg, const char *name, const char *help)
{
	return family_declare(reg, name, help, KIND_COUNTER);
}

cat_err_t cat_metrics_declare_gauge(cat_metrics_t *reg, const char *name, const char *help)
{
	return family_declare(reg, name, help, KIND_GAUGE);
}

/* The four variadic constructors differ only in kind and value type. */
#define METRIC_CONSTRUCTOR(fn, kind, is_double)                                                      \
	cat_metric_t *fn(cat_metrics_t *reg, const char *name, const char *help, ...)              \
	{                                                                                            \
		cat_metric_t *metric;                                                                \
		va_list ap;                                                                          \
                                                                                                     \
		va_start(ap, help);                                                                  \
		metric = metric_create(reg, kind, is_double, name, help, NULL, 0, ap);               \
		va_end(ap);                                                                          \
		return metric;                                                                       \
	}

METRIC_CONSTRUCTOR(cat_metrics_counter, KIND_COUNTER, false)
METRIC_CONSTRUCTOR(cat_metrics_gauge, KIND_GAUGE, false)
METRIC_CONSTRUCTOR(cat_metrics_counter_double, KIND_COUNTER, true)
METRIC_CONSTRUCTOR(cat_metrics_gauge_double, KIND_GAUGE, true)
#undef METRIC_CONSTRUCTOR

cat_metric_t *cat_metrics_histogram(cat_metrics_t *reg, const char *name, const char *help,
				    const double *bounds, size_t n_bounds, ...)
{
	cat_metric_t *metric;
	va_list ap;

	if (!bounds) {
		bounds = CAT_METRICS_DEFAULT_BUCKETS;
		n_bounds = CAT_METRICS_N_DEFAULT_BUCKETS;
	}
	va_start(ap, n_bounds);
	metric = metric_create(reg, KIND_HISTOGRAM, true, name, help, bounds, n_bounds, ap);
	va_end(ap);
	return metric;
}

void cat_metrics_inc(cat_metric_t *metric)
{
	cat_metrics_add(metric, 1);
}

void cat_metrics_add(cat_metric_t *metric, int64_t delta)
{
	if (!metric || metric->family->kind == KIND_HISTOGRAM ||
	    (delta < 0 && metric->family->kind == KIND_COUNTER))
		return;
	if (metric->is_double)
		atomic_add_double(&metric->dbits, (double)delta);
	else
		atomic_fetch_add_explicit(&metric->ivalue, delta, memory_order_relaxed);
}

void cat_metrics_add_double(cat_metric_t *metric, double delta)
{
	if (!metric || metric->family->kind == KIND_HISTOGRAM ||
	    (!(delta >= 0) && metric->family->kind == KIND_COUNTER))
		return;
	if (metric->is_double)
		atomic_add_double(&metric->dbits, delta);
	else
		atomic_fetch_add_explicit(&metric->ivalue, (int64_t)delta, memory_order_relaxed);
}

void cat_metrics_set(cat_metric_t *metric, int64_t value)
{
	if (!metric || metric->family->kind == KIND_HISTOGRAM)
		return;
	if (metric->is_double)
		atomic_store_explicit(&metric->dbits, double_bits((double)value), memory_order_relaxed);
	else
		atomic_store_explicit(&metric->ivalue, value, memory_order_relaxed);
}

void cat_metrics_set_double(cat_metric_t *metric, double value)
{
	if (!metric || metric->family->kind == KIND_HISTOGRAM)
		return;
	if (metric->is_double)
		atomic_store_explicit(&metric->dbits, double_bits(value), memory_order_relaxed);
	else
		atomic_store_explicit(&metric->ivalue, (int64_t)value, memory_order_relaxed);
}

void cat_metrics_observe(cat_metric_t *metric, double value)
{
	size_t i = 0;

	if (!metric || metric->family->kind != KIND_HISTOGRAM)
		return;
	while (i < metric->family->n_bounds && !(value <= metric->family->bounds[i]))
		i++;
	atomic_fetch_add_explicit(&metric->buckets[i], 1, memory_order_relaxed);
	atomic_add_double(&metric->dbits, value);
}

static uint64_t histogram_count(const cat_metric_t *metric)
{
	uint64_t count = 0;

	for (size_t i = 0; i <= metric->family->n_bounds; i++)
		count += atomic_load_explicit(&metric->buckets[i], memory_order_relaxed);
	return count;
}

double cat_metrics_value(const cat_metric_t *metric)
{
	if (!metric)
		return 0;
	if (metric->family->kind == KIND_HISTOGRAM)
		return (double)histogram_count(metric);
	if (metric->is_double)
		return bits_double(atomic_load_explicit(&metric->dbits, memory_order_relaxed));
	return (double)atomic_load_explicit(&metric->ivalue, memory_order_relaxed);
}

cat_err_t cat_metrics_on_render(cat_metrics_t *reg, void (*fn)(void *opaque), void *opaque)
{
	cat_err_t err = CAT_OK;

	pthread_mutex_lock(&reg->lock);
	if (reg->n_hooks == MAX_RENDER_HOOKS)
		err = CAT_ERR_FATAL;
	else
		reg->hooks[reg->n_hooks++] = (render_hook_t){fn, opaque};
	pthread_mutex_unlock(&reg->lock);
	return err;
}

/* --- process metrics --------------------------------------------------- */

static void process_refresh(void *opaque)
{
	process_metrics_t *process = opaque;
	struct rusage usage;
	FILE *statm;
	DIR *dir;

	if (getrusage(RUSAGE_SELF, &usage) == 0)
		cat_metrics_set_double(process->cpu_seconds,
				       (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
					       (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) /
						       1e6);
	if ((statm = fopen("/proc/self/statm", "r"))) {
		long size, resident;

		if (fscanf(statm, "%ld %ld", &size, &resident) == 2)
			cat_metrics_set(process->resident_bytes, (int64_t)resident * sysconf(_SC_PAGESIZE));
		fclose(statm);
	}
	if ((dir = opendir("/proc/self/fd"))) {
		int64_t n = 0;
		struct dirent *entry;

		while ((entry = readdir(dir)))
			if (entry->d_name[0] != '.')
				n++;
		closedir(dir);
		cat_metrics_set(process->open_fds, n - 1); /* less the one reading the list */
	}
}

cat_err_t cat_metrics_add_process(cat_metrics_t *reg, const char *prefix)
{
	process_metrics_t *process;
	char up_name[128];

	if (reg->process)
		return CAT_OK;
	if (!(process = calloc(1, sizeof(*process))))
		return CAT_ERR_FATAL;
	snprintf(up_name, sizeof(up_name), "%s_up", prefix);
	process->start_time =
		cat_metrics_gauge_double(reg, "process_start_time_seconds",
					 "Start time of the process since unix epoch in seconds.", NULL);
	process->cpu_seconds = cat_metrics_counter_double(
		reg, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", NULL);
	process->resident_bytes = cat_metrics_gauge(reg, "process_resident_memory_bytes",
						    "Resident memory size in bytes.", NULL);
	process->open_fds =
		cat_metrics_gauge(reg, "process_open_fds", "Number of open file descriptors.", NULL);
	process->up = cat_metrics_gauge(reg, up_name, "1 while the process serves.", NULL);
	if (!process->start_time || !process->cpu_seconds || !process->resident_bytes || !process->open_fds ||
	    !process->up || cat_metrics_on_render(reg, process_refresh, process) != CAT_OK) {
		free(process);
		return CAT_ERR_FATAL;
	}
	cat_metrics_set_double(process->start_time, (double)cat_time_now_us() / 1e6);
	cat_metrics_set(process->up, 1);
	reg->process = process; /* owned by reg */
	return CAT_OK;
}

/* --- rendering ------------------------------------------------------- */

/* Shortest text that reads back as the same double; Prometheus spellings
 * for the non-finite values. */
static void put_double(FILE *out, double value)
{
	char text[32];

	if (isnan(value)) {
		fputs("NaN", out);
		return;
	}
	if (isinf(value)) {
		fputs(value > 0 ? "+Inf" : "-Inf", out);
		return;
	}
	snprintf(text, sizeof(text), "%.15g", value);
	if (strtod(text, NULL) != value)
		snprintf(text, sizeof(text), "%.17g", value);
	fputs(text, out);
}

static void put_series(FILE *out, const char *name, const char *suffix, const char *labels,
		       const char *le_text)
{
	fprintf(out, "%s%s", name, suffix);
	if (*labels || le_text) {
		fprintf(out, "{%s", labels);
		if (le_text)
			fprintf(out, "%sle=\"%s\"", *labels ? "," : "", le_text);
		fputc('}', out);
	}
	fputc(' ', out);
}

static void render_histogram(FILE *out, const family_t *family, const cat_metric_t *metric)
{
	uint64_t cumulative = 0;
	char le[32];
	FILE *le_out;

	for (size_t i = 0; i <= family->n_bounds; i++) {
		cumulative += atomic_load_explicit(&metric->buckets[i], memory_order_relaxed);
		if (i == family->n_bounds) {
			snprintf(le, sizeof(le), "+Inf");
		} else if ((le_out = fmemopen(le, sizeof(le), "w"))) {
			put_double(le_out, family->bounds[i]);
			fclose(le_out);
		}
		put_series(out, family->name, "_bucket", metric->labels, le);
		fprintf(out, "%llu\n", (unsigned long long)cumulative);
	}
	put_series(out, family->name, "_sum", metric->labels, NULL);
	put_double(out, bits_double(atomic_load_explicit(&metric->dbits, memory_order_relaxed)));
	fputc('\n', out);
	put_series(out, family->name, "_count", metric->labels, NULL);
	fprintf(out, "%llu\n", (unsigned long long)cumulative);
}

cat_err_t cat_metrics_render(cat_metrics_t *reg, char **out, size_t *out_len, char *errstr,
			     size_t errstr_size)
{
	render_hook_t hooks[MAX_RENDER_HOOKS];
	size_t n_hooks;
	char *text = NULL;
	size_t text_len = 0;
	FILE *stream;

	*out = NULL;
	*out_len = 0;
	pthread_mutex_lock(&reg->lock);
	n_hooks = reg->n_hooks;
	memcpy(hooks, reg->hooks, n_hooks * sizeof(hooks[0]));
	pthread_mutex_unlock(&reg->lock);
	for (size_t i = 0; i < n_hooks; i++)
		hooks[i].fn(hooks[i].opaque);

	if (!(stream = open_memstream(&text, &text_len)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				   "could not render metrics: out of memory");
	pthread_mutex_lock(&reg->lock);
	for (const family_t *family = reg->families; family; family = family->next) {
		fprintf(stream, "# HELP %s ", family->name);
		put_escaped(stream, family->help, false);
		fprintf(stream, "\n# TYPE %s %s\n", family->name, kind_names[family->kind]);
		for (const cat_metric_t *metric = family->series; metric; metric = metric->next) {
			if (family->kind == KIND_HISTOGRAM) {
				render_histogram(stream, family, metric);
				continue;
			}
			put_series(stream, family->name, "", metric->labels, NULL);
			if (metric->is_double)
				put_double(stream, bits_double(atomic_load_explicit(&metric->dbits,
										    memory_order_relaxed)));
			else
				fprintf(stream, "%lld",
					(long long)atomic_load_explicit(&metric->ivalue,
									memory_order_relaxed));
			fputc('\n', stream);
		}
	}
	pthread_mutex_unlock(&reg->lock);
	if (fclose(stream) != 0 || !text) {
		free(text);
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				   "could not render metrics: out of memory");
	}
	*out = text;
	*out_len = text_len;
	return CAT_OK;
}
