/*
 * catalyst-publish cache: one CacheCommand on cache.v1.
 *
 *   cache set [--ttl SECONDS] [--version N] KEY VALUE|-
 *   cache delete KEY...
 *   cache invalidate PATTERN
 *   cache warm market-open|rebuild
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_publish.h"
#include "publish.h"

#define MAX_VALUE_BYTES CAT_CODEC_MAX_MESSAGE_BYTES

static int usage_error(const char *what)
{
	fprintf(stderr, "catalyst-publish cache: %s (try --help)\n", what);
	return 2;
}

static int parse_int64(const char *text, int64_t min, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(text, &end, 10);
	if (errno || end == text || *end || v < min)
		return -1;
	*out = v;
	return 0;
}

/* Reads all of stdin (at most MAX_VALUE_BYTES). */
static uint8_t *read_stdin(size_t *len)
{
	size_t cap = 4096, n = 0, got;
	uint8_t *buf = malloc(cap);

	while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
		n += got;
		if (n > MAX_VALUE_BYTES) {
			free(buf);
			return NULL;
		}
		if (n == cap) {
			uint8_t *grown = realloc(buf, cap * 2);

			if (!grown) {
				free(buf);
				return NULL;
			}
			buf = grown;
			cap *= 2;
		}
	}
	*len = n;
	return buf;
}

static void report(void *ref, const char *error, void *opaque)
{
	(void)ref;
	(void)opaque;
	if (error)
		fprintf(stderr, "catalyst-publish cache: not delivered: %s\n", error);
}

int publish_cache(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv)
{
	Catalyst__V1__CacheCommand cmd = CATALYST__V1__CACHE_COMMAND__INIT;
	Catalyst__V1__CacheCommand__Set set = CATALYST__V1__CACHE_COMMAND__SET__INIT;
	Catalyst__V1__CacheCommand__Delete del = CATALYST__V1__CACHE_COMMAND__DELETE__INIT;
	Catalyst__V1__CacheCommand__InvalidatePattern inv = CATALYST__V1__CACHE_COMMAND__INVALIDATE_PATTERN__INIT;
	Catalyst__V1__CacheCommand__Warm warm = CATALYST__V1__CACHE_COMMAND__WARM__INIT;
	cat_publish_t *publish = NULL;
	char errstr[512];
	uint8_t *value = NULL;
	cat_err_t err;
	int rc = 1;

	if (argc < 1)
		return usage_error("missing action: set, delete, invalidate or warm");
	if (strcmp(argv[0], "set") == 0) {
		int i = 1;

		while (i < argc && strncmp(argv[i], "--", 2) == 0) {
			int64_t v;

			if (i + 1 >= argc)
				return usage_error("an option without its value");
			if (strcmp(argv[i], "--ttl") == 0 && parse_int64(argv[i + 1], 0, &v) == 0) {
				set.ttl_seconds = v;
				set.has_ttl_seconds = 1;
			} else if (strcmp(argv[i], "--version") == 0 && parse_int64(argv[i + 1], 1, &v) == 0) {
				set.version = v;
				set.has_version = 1;
			} else {
				return usage_error("set: --ttl takes seconds (0 or more), --version an integer of 1 or more");
			}
			i += 2;
		}
		if (argc - i != 2)
			return usage_error("set needs KEY and VALUE (- reads the value from stdin)");
		set.key = argv[i];
		if (strcmp(argv[i + 1], "-") == 0) {
			if (!(value = read_stdin(&set.value.len))) {
				fprintf(stderr, "catalyst-publish cache: the value on stdin is larger than %d bytes\n",
					MAX_VALUE_BYTES);
				return 1;
			}
			set.value.data = value;
		} else {
			set.value.data = (uint8_t *)argv[i + 1];
			set.value.len = strlen(argv[i + 1]);
		}
		set.has_value = 1;
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_SET;
		cmd.set = &set;
	} else if (strcmp(argv[0], "delete") == 0) {
		if (argc < 2)
			return usage_error("delete needs at least one KEY");
		del.n_keys = (size_t)(argc - 1);
		del.keys = argv + 1;
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_DELETE;
		cmd.delete_ = &del;
	} else if (strcmp(argv[0], "invalidate") == 0) {
		if (argc != 2 || !argv[1][0])
			return usage_error("invalidate needs one PATTERN, e.g. 'candidates:*'");
		inv.pattern = argv[1];
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_INVALIDATE;
		cmd.invalidate = &inv;
	} else if (strcmp(argv[0], "warm") == 0) {
		if (argc != 2 || (strcmp(argv[1], "market-open") != 0 && strcmp(argv[1], "rebuild") != 0))
			return usage_error("warm needs a profile: market-open or rebuild");
		warm.has_profile = 1;
		warm.profile = strcmp(argv[1], "rebuild") == 0
				       ? CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD
				       : CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_MARKET_OPEN;
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_WARM;
		cmd.warm = &warm;
	} else {
		return usage_error("unknown action: set, delete, invalidate or warm");
	}

	if (!(publish = publish_open(cfg, settings, report, NULL))) {
		rc = 2;
		goto out;
	}
	if (cat_publish_cache(publish, &cmd, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish cache: %s\n", errstr);
		goto out;
	}
	/* a command not delivered was reported already */
	err = cat_publish_wait(publish, errstr, sizeof(errstr));
	if (err != CAT_OK && err != CAT_ERR_PERMANENT)
		fprintf(stderr, "catalyst-publish cache: %s\n", errstr);
	if (err == CAT_OK) {
		printf("published %s %s\n", argv[0], cat_publish_command_id(publish));
		rc = 0;
	}

out:
	cat_publish_destroy(publish);
	free(value);
	return rc;
}
