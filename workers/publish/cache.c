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
#include "cat_kafka.h"
#include "cat_time.h"
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

static void report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg, void *opaque)
{
	if (err)
		fprintf(stderr, "catalyst-publish cache: not delivered: %s\n", rd_kafka_err2str(err));
}

int publish_cache(const cat_config_t *cfg, int argc, char **argv)
{
	Catalyst__V1__CacheCommand cmd = CATALYST__V1__CACHE_COMMAND__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__CacheCommand__Set set = CATALYST__V1__CACHE_COMMAND__SET__INIT;
	Catalyst__V1__CacheCommand__Delete del = CATALYST__V1__CACHE_COMMAND__DELETE__INIT;
	Catalyst__V1__CacheCommand__InvalidatePattern inv = CATALYST__V1__CACHE_COMMAND__INVALIDATE_PATTERN__INIT;
	Catalyst__V1__CacheCommand__Warm warm = CATALYST__V1__CACHE_COMMAND__WARM__INIT;
	cat_producer_t *producer = NULL;
	int timeout_ms = (int)cat_config_int(cfg, "CATALYST_PUBLISH_TIMEOUT_MS");
	char command_id[40], topic[256], errstr[512];
	const char *key = NULL;
	uint8_t *value = NULL, *buf = NULL;
	size_t len;
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
		key = set.key = argv[i];
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
		key = argv[1];
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_DELETE;
		cmd.delete_ = &del;
	} else if (strcmp(argv[0], "invalidate") == 0) {
		if (argc != 2 || !argv[1][0])
			return usage_error("invalidate needs one PATTERN, e.g. 'candidates:*'");
		key = inv.pattern = argv[1];
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_INVALIDATE;
		cmd.invalidate = &inv;
	} else if (strcmp(argv[0], "warm") == 0) {
		if (argc != 2 || (strcmp(argv[1], "market-open") != 0 && strcmp(argv[1], "rebuild") != 0))
			return usage_error("warm needs a profile: market-open or rebuild");
		warm.has_profile = 1;
		warm.profile = strcmp(argv[1], "rebuild") == 0
				       ? CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_REBUILD
				       : CATALYST__V1__CACHE_COMMAND__WARM_PROFILE__WARM_PROFILE_MARKET_OPEN;
		key = "warm";
		cmd.action_case = CATALYST__V1__CACHE_COMMAND__ACTION_WARM;
		cmd.warm = &warm;
	} else {
		return usage_error("unknown action: set, delete, invalidate or warm");
	}

	cat_codec_uuid(command_id, sizeof(command_id));
	meta.command_id = command_id;
	meta.has_issued_at_us = 1;
	meta.issued_at_us = cat_time_now_us();
	meta.producer = (char *)cat_config_str(cfg, "CATALYST_PRODUCER");
	cmd.meta = &meta;
	len = catalyst__v1__cache_command__get_packed_size(&cmd);
	if (len > CAT_CODEC_MAX_MESSAGE_BYTES) {
		fprintf(stderr, "catalyst-publish cache: the command is larger than %d bytes\n",
			CAT_CODEC_MAX_MESSAGE_BYTES);
		goto out;
	}
	if (!(buf = malloc(len ? len : 1))) {
		fprintf(stderr, "catalyst-publish cache: out of memory\n");
		goto out;
	}
	catalyst__v1__cache_command__pack(&cmd, buf);
	if (cat_producer_new(&producer, cfg, "catalyst-publish", timeout_ms, report, NULL, errstr, sizeof(errstr)) !=
	    CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		rc = 2;
		goto out;
	}
	cat_kafka_topic(cfg, CAT_TOPIC_CACHE, topic, sizeof(topic));
	if (cat_producer_send(producer, topic, RD_KAFKA_PARTITION_UA, key, strlen(key), buf, len, NULL, NULL, errstr,
			      sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish cache: %s\n", errstr);
		goto out;
	}
	if (cat_producer_flush(producer, timeout_ms + 5000, errstr, sizeof(errstr)) != CAT_OK)
		fprintf(stderr, "catalyst-publish cache: %s\n", errstr);
	if (cat_producer_delivered(producer) == 1) {
		printf("published %s %s\n", argv[0], command_id);
		rc = 0;
	}

out:
	cat_producer_destroy(producer);
	free(buf);
	free(value);
	return rc;
}
