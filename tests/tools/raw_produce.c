/*
 * raw-produce: a test producer that publishes exactly the bytes it is given,
 * so that tests can mix undecodable or invalid messages into a topic,
 * in order with good ones.
 *
 *   raw-produce --topic T [--header NAME=VALUE]... < lines
 *
 * One message per input line, KEY<TAB>FORMAT<TAB>PAYLOAD:
 *   hex    PAYLOAD is the value in hexadecimal ("" for an empty value)
 *   text   PAYLOAD is the value as written
 *   write  PAYLOAD is a JSON write line, published as its WriteCommand
 *          (cat_codec_write_from_json; a line it refuses is an error)
 * An empty KEY publishes without a key; KEY "-" keys a write line as
 * catalyst-publish would (its symbol, else its primary key). Messages go out
 * in input order (partitioned by key), each with the --header headers (to
 * make dead letters by hand, say); exits 0 once every one is
 * acknowledged, 1 otherwise, 2 on bad usage or input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_config.h"
#include "cat_kafka.h"
#include "cat_log.h"

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
};

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes hex text in place; returns the byte count or -1. */
static long unhex(char *text)
{
	size_t len = strlen(text);

	if (len % 2)
		return -1;
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_value(text[i]), lo = hex_value(text[i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		text[i / 2] = (char)(hi * 16 + lo);
	}
	return (long)(len / 2);
}

/* One input line; 0, or 2 when it is malformed. Sets *value (malloc'd when
 * *owned) and *len, and the key. */
static int parse_line(char *line, unsigned long line_no, char key[512], size_t *key_len, void **value,
		      size_t *len, int *owned)
{
	char *format = strchr(line, '\t'), *payload, errstr[512];

	*owned = 0;
	payload = format ? strchr(format + 1, '\t') : NULL;
	if (!format || !payload) {
		fprintf(stderr, "raw-produce: line %lu: expected KEY<TAB>FORMAT<TAB>PAYLOAD\n", line_no);
		return 2;
	}
	*format++ = '\0';
	*payload++ = '\0';
	snprintf(key, 512, "%s", line);
	*key_len = strlen(key);
	if (strcmp(format, "hex") == 0) {
		long n = unhex(payload);

		if (n < 0) {
			fprintf(stderr, "raw-produce: line %lu: bad hex\n", line_no);
			return 2;
		}
		*value = payload;
		*len = (size_t)n;
	} else if (strcmp(format, "text") == 0) {
		*value = payload;
		*len = strlen(payload);
	} else if (strcmp(format, "write") == 0) {
		Catalyst__V1__WriteCommand *cmd = NULL;

		if (cat_codec_write_from_json(payload, strlen(payload), "raw-produce", &cmd, errstr,
					      sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "raw-produce: line %lu: %s\n", line_no, errstr);
			return 2;
		}
		if (strcmp(key, "-") == 0)
			*key_len = cat_codec_record_key(cmd->record, key, 512);
		*len = catalyst__v1__write_command__get_packed_size(cmd);
		*value = malloc(*len ? *len : 1);
		if (*value)
			catalyst__v1__write_command__pack(cmd, *value);
		catalyst__v1__write_command__free_unpacked(cmd, NULL);
		if (!*value) {
			fprintf(stderr, "raw-produce: out of memory\n");
			return 2;
		}
		*owned = 1;
	} else {
		fprintf(stderr, "raw-produce: line %lu: unknown format %s\n", line_no, format);
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	cat_config_t *cfg = NULL;
	cat_producer_t *producer = NULL;
	char errstr[512], key[512], *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned long line_no = 0, sent = 0;
	int rc = 1;

	if (argc < 3 || argc % 2 == 0 || strcmp(argv[1], "--topic") != 0) {
		fprintf(stderr, "usage: raw-produce --topic T [--header NAME=VALUE]... < KEY<TAB>hex|text|write<TAB>PAYLOAD lines\n");
		return 2;
	}
	for (int i = 3; i < argc; i += 2)
		if (strcmp(argv[i], "--header") != 0 || !strchr(argv[i + 1], '=')) {
			fprintf(stderr, "raw-produce: expected --header NAME=VALUE, got %s\n", argv[i]);
			return 2;
		}
	if (cat_config_load(&cfg, config_defs, sizeof(config_defs) / sizeof(config_defs[0]), NULL, errstr,
			    sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "raw-produce: %s\n", errstr);
		return 2;
	}
	cat_log_init("raw-produce", CAT_LOG_LEVEL_WARN);
	if (cat_producer_new(&producer, cfg, "raw-produce", 60000, NULL, NULL, errstr, sizeof(errstr)) !=
	    CAT_OK) {
		fprintf(stderr, "raw-produce: %s\n", errstr);
		rc = 2;
		goto out;
	}
	while ((n = getline(&line, &cap, stdin)) > 0) {
		void *value = NULL;
		rd_kafka_headers_t *headers;
		size_t len = 0, key_len = 0;
		int owned = 0;
		cat_err_t err;

		line_no++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0)
			continue;
		if ((rc = parse_line(line, line_no, key, &key_len, &value, &len, &owned)) != 0)
			goto out;
		headers = argc > 3 ? rd_kafka_headers_new((size_t)(argc - 3) / 2) : NULL;
		for (int i = 3; i < argc; i += 2) {
			const char *eq = strchr(argv[i + 1], '=');

			rd_kafka_header_add(headers, argv[i + 1], eq - argv[i + 1], eq + 1, -1);
		}
		err = cat_producer_send(producer, argv[2], RD_KAFKA_PARTITION_UA, key_len ? key : NULL,
					key_len, value, len, headers, NULL, errstr, sizeof(errstr));
		if (err != CAT_OK && headers)
			rd_kafka_headers_destroy(headers); /* still ours on failure */
		if (owned)
			free(value);
		if (err != CAT_OK) {
			fprintf(stderr, "raw-produce: line %lu: %s\n", line_no, errstr);
			rc = 1;
			goto out;
		}
		sent++;
		cat_producer_poll(producer, 0);
	}
	rc = 1;
	if (cat_producer_flush(producer, 70000, errstr, sizeof(errstr)) != CAT_OK)
		fprintf(stderr, "raw-produce: %s\n", errstr);
	else if (cat_producer_failed(producer) > 0)
		fprintf(stderr, "raw-produce: %llu messages not delivered\n",
			(unsigned long long)cat_producer_failed(producer));
	else
		rc = 0;
	fprintf(stderr, "raw-produce: %lu messages published\n", rc == 0 ? sent : 0);

out:
	free(line);
	cat_producer_destroy(producer);
	cat_config_destroy(cfg);
	return rc;
}
