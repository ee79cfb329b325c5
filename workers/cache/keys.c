#include "keys.h"

#include <stdio.h>
#include <string.h>

bool cache_keys_add(cache_keys_t *keys, const char *prefix)
{
	if (keys->n == CACHE_KEYS_MAX)
		return false;
	keys->prefixes[keys->n++] = prefix;
	return true;
}

/* Length of the literal head of a glob pattern. */
static size_t literal_head(const char *pattern, size_t len)
{
	size_t i = 0;

	while (i < len && !strchr("*?[\\", pattern[i]))
		i++;
	return i;
}

const char *cache_keys_namespace_refusal(const char *ns)
{
	size_t len = ns ? strlen(ns) : 0;

	if (len == 0)
		return NULL;
	if (len > CACHE_KEYS_NAMESPACE_MAX)
		return "longer than 64 bytes";
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)ns[i] <= ' ' || (unsigned char)ns[i] >= 0x7f || strchr("*?[]\\", ns[i]))
			return "must be printable ASCII without spaces or glob characters (* ? [ ] \\)";
	if (strncmp(ns, CACHE_KEYS_INTERNAL, len < strlen(CACHE_KEYS_INTERNAL) ? len : strlen(CACHE_KEYS_INTERNAL)) ==
	    0)
		return "must not cover the worker's own keys (" CACHE_KEYS_INTERNAL "*)";
	return NULL;
}

int cache_keys_namespace_check(const char *ns, char *why, size_t why_size)
{
	const char *refusal = cache_keys_namespace_refusal(ns);

	if (!refusal)
		return 0;
	snprintf(why, why_size, "%s", refusal);
	return -1;
}

const char *cache_keys_refusal(const cache_keys_t *keys, const char *key, size_t len, bool pattern, char *why,
			       size_t why_size)
{
	const char *what = pattern ? "pattern" : "key";
	size_t head, used;

	if (!key || len == 0 || len > CACHE_KEYS_MAX_BYTES) {
		snprintf(why, why_size, "the %s must be 1 to %d bytes", what, CACHE_KEYS_MAX_BYTES);
		return why;
	}
	head = pattern ? literal_head(key, len) : len;
	for (size_t i = 0; i < keys->n; i++) {
		size_t plen = strlen(keys->prefixes[i]);

		if (head >= plen && memcmp(key, keys->prefixes[i], plen) == 0)
			return NULL;
	}
	snprintf(why, why_size, "%s %.80s is outside the cache's key families (", what, key);
	for (size_t i = 0; i < keys->n; i++) {
		used = strlen(why);
		snprintf(why + used, why_size > used ? why_size - used : 0, "%s%s*", i ? " " : "", keys->prefixes[i]);
	}
	used = strlen(why);
	snprintf(why + used, why_size > used ? why_size - used : 0, ")");
	return why;
}
