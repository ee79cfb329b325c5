/*
 * catalyst-cache: which keys cache.v1 may touch.
 *
 * A set, a delete or an invalidation of cache.v1 reaches only the key
 * families of the layout (cache.h: news:, signals:, trades:, sources:,
 * candidates:) and, when CATALYST_CACHE_KEY_NAMESPACE is set, keys starting
 * with that prefix. Anything else (another application's keys, the whole
 * database with '*', the worker's own catalyst-cache: keys) is refused with a
 * one-line reason and its message is dead-lettered.
 *
 * A pattern is inside a family when its literal head (the text before its
 * first glob character * ? [ or \) starts with the family's prefix: then
 * every key it can match does too. "news:*" and "news:1?" are inside;
 * "*", "news*" and "new[s]:*" are not.
 */
#ifndef CACHE_KEYS_H
#define CACHE_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#define CACHE_KEYS_MAX		 8
#define CACHE_KEYS_MAX_BYTES	 1024		  /* longest key or pattern */
#define CACHE_KEYS_INTERNAL	 "catalyst-cache:" /* the worker's own keys (self-heal): never a family */
#define CACHE_KEYS_NAMESPACE_MAX 64

typedef struct cache_keys {
	const char *prefixes[CACHE_KEYS_MAX]; /* borrowed */
	size_t n;
} cache_keys_t;

/* Adds a family prefix (borrowed: it must outlive `keys`); false when full. */
bool cache_keys_add(cache_keys_t *keys, const char *prefix);

/* Checks a CATALYST_CACHE_KEY_NAMESPACE value: NULL when usable, else why
 * not (a static string). */
const char *cache_keys_namespace_refusal(const char *ns);

/* The same as the config table's check of CATALYST_CACHE_KEY_NAMESPACE
 * (cat_config_check_fn): 0 when usable, else -1 and why. */
int cache_keys_namespace_check(const char *ns, char *why, size_t why_size);

/* NULL when `key` (a pattern when `pattern`) of `len` bytes stays inside the
 * families, else why not, written into `why`. */
const char *cache_keys_refusal(const cache_keys_t *keys, const char *key, size_t len, bool pattern, char *why,
			       size_t why_size);

#endif /* CACHE_KEYS_H */
