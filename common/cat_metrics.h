/*
 * cat_metrics: a Prometheus registry of counters, gauges and histograms.
 *
 * Metrics are created up front, each with its fixed label pairs, and the
 * returned handle is updated from any thread without locks (C11 atomics):
 *
 *   cat_metrics_t *reg = cat_metrics_new();
 *   cat_metric_t *consumed = cat_metrics_counter(reg, "catalyst_messages_consumed_total",
 *           "messages consumed", "topic", "write.v1", NULL);
 *   ...
 *   cat_metrics_inc(consumed);
 *
 * cat_metrics_render() writes the text exposition format (version 0.0.4):
 * HELP and TYPE once per family, families and series in creation order,
 * histograms as cumulative _bucket{le=...}, _sum and _count. A family
 * declared (cat_metrics_declare_*) before any of its series exists still has
 * its HELP and TYPE lines, so dashboards and scrapers see every name from the
 * start. Handles stay valid until cat_metrics_destroy().
 */
#ifndef CAT_METRICS_H
#define CAT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "cat_err.h"

#define CAT_METRICS_MAX_LABELS 4
#define CAT_METRICS_SENTINEL   __attribute__((sentinel))

typedef struct cat_metrics cat_metrics_t;
typedef struct cat_metric cat_metric_t;

/* NULL when out of memory. */
cat_metrics_t *cat_metrics_new(void);

/* Frees the registry and every handle; accepts NULL. */
void cat_metrics_destroy(cat_metrics_t *reg);

/*
 * Creating a series: name and help, then up to CAT_METRICS_MAX_LABELS
 * label name/value pairs, then NULL. Creating the same name and labels again
 * returns the same handle. NULL (and a line in the log) on a programming
 * error: invalid name, the name used with another type or other buckets,
 * too many labels; or when out of memory. Updating a NULL handle does nothing.
 */
cat_metric_t *cat_metrics_counter(cat_metrics_t *reg, const char *name, const char *help,
				  ...) CAT_METRICS_SENTINEL;
cat_metric_t *cat_metrics_gauge(cat_metrics_t *reg, const char *name, const char *help,
				...) CAT_METRICS_SENTINEL;
/* Series with a double value (seconds, ratios). */
cat_metric_t *cat_metrics_counter_double(cat_metrics_t *reg, const char *name, const char *help,
					 ...) CAT_METRICS_SENTINEL;
cat_metric_t *cat_metrics_gauge_double(cat_metrics_t *reg, const char *name, const char *help,
				       ...) CAT_METRICS_SENTINEL;
/* `bounds`: n_bounds increasing upper bounds (the +Inf bucket is implied),
 * copied; NULL takes CAT_METRICS_DEFAULT_BUCKETS. */
cat_metric_t *cat_metrics_histogram(cat_metrics_t *reg, const char *name, const char *help,
				    const double *bounds, size_t n_bounds, ...) CAT_METRICS_SENTINEL;

/* Declares a family whose labelled series come later (one per partition,
 * per backup tag...): rendered as its HELP and TYPE lines alone until the
 * first series is created with the same name (and help). CAT_ERR_FATAL (and
 * a line in the log) on an invalid name, the name taken by another type, or
 * out of memory. */
cat_err_t cat_metrics_declare_counter(cat_metrics_t *reg, const char *name, const char *help) CAT_MUST_CHECK;
cat_err_t cat_metrics_declare_gauge(cat_metrics_t *reg, const char *name, const char *help) CAT_MUST_CHECK;

/* Prometheus' default latency buckets, in seconds. */
extern const double CAT_METRICS_DEFAULT_BUCKETS[];
extern const size_t CAT_METRICS_N_DEFAULT_BUCKETS;

/* Updates; lock-free. On a series of the other value type the value is
 * converted. Counters only ever grow: a negative add is ignored. */
void cat_metrics_inc(cat_metric_t *metric);
void cat_metrics_add(cat_metric_t *metric, int64_t delta);
void cat_metrics_add_double(cat_metric_t *metric, double delta);
/* Gauges; on a counter, for mirroring a total kept elsewhere (CPU time). */
void cat_metrics_set(cat_metric_t *metric, int64_t value);
void cat_metrics_set_double(cat_metric_t *metric, double value);
/* Histograms. */
void cat_metrics_observe(cat_metric_t *metric, double value);

/* Current value (counters and gauges; a histogram's count). */
double cat_metrics_value(const cat_metric_t *metric);

/* Calls fn(opaque) at the start of every render, to refresh gauges that
 * mirror something measured on demand. Several may be added. */
cat_err_t cat_metrics_on_render(cat_metrics_t *reg, void (*fn)(void *opaque), void *opaque) CAT_MUST_CHECK;

/* Adds the process_* family (start time, CPU seconds, resident memory, open
 * file descriptors) and `<prefix>_up 1`, refreshed at each render. */
cat_err_t cat_metrics_add_process(cat_metrics_t *reg, const char *prefix) CAT_MUST_CHECK;

/* Writes the exposition text into a malloc'ed, NUL-terminated *out
 * (caller frees) of *out_len bytes. */
cat_err_t cat_metrics_render(cat_metrics_t *reg, char **out, size_t *out_len, char *errstr,
			     size_t errstr_size) CAT_MUST_CHECK;

#endif /* CAT_METRICS_H */
