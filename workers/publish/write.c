/*
 * catalyst-publish write: JSON lines -> WriteCommand -> write.v1; and the
 * reading of JSON write lines that sync replicate shares.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_publish.h"
#include "publish.h"

int publish_lines(const cat_config_t *cfg, const publish_settings_t *settings, const char *path,
		  cat_publish_report_fn report, publish_line_fn send, void *opaque)
{
	FILE *in = stdin;
	cat_publish_t *publish = NULL;
	char *line = NULL;
	size_t line_cap = 0;
	ssize_t line_len;
	unsigned long line_no = 0, rejected = 0;
	char errstr[512];
	cat_err_t err;
	int rc = 1;

	if (strcmp(path, "-") != 0 && !(in = fopen(path, "r"))) {
		fprintf(stderr, "catalyst-publish: could not open %s: %s\n", path, strerror(errno));
		return 2;
	}
	if (!(publish = publish_open(cfg, settings, report, NULL))) {
		rc = 2;
		goto out;
	}

	while ((line_len = getline(&line, &line_cap, in)) != -1) {
		Catalyst__V1__WriteCommand *cmd = NULL;
		size_t len = (size_t)line_len;

		line_no++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			len--;
		if (len == 0 || strspn(line, " \t") == len)
			continue; /* blank lines separate nothing and publish nothing */
		if (len > CAT_CODEC_MAX_MESSAGE_BYTES) {
			fprintf(stderr, "line %lu: longer than %d bytes\n", line_no, CAT_CODEC_MAX_MESSAGE_BYTES);
			rejected++;
			continue;
		}
		if (cat_codec_write_from_json(line, len, settings->producer, &cmd, errstr, sizeof(errstr)) !=
		    CAT_OK) {
			fprintf(stderr, "line %lu: %s\n", line_no, errstr);
			rejected++;
			continue;
		}
		err = send(opaque, publish, cmd, (void *)(uintptr_t)line_no, errstr, sizeof(errstr));
		catalyst__v1__write_command__free_unpacked(cmd, NULL);
		if (err != CAT_OK) {
			fprintf(stderr, "line %lu: %s\n", line_no, errstr);
			rejected++;
			if (err == CAT_ERR_FATAL)
				break;
		}
	}
	if (ferror(in))
		fprintf(stderr, "catalyst-publish: could not read %s: %s\n", path, strerror(errno));

	/* a command not delivered was reported on its line already */
	err = cat_publish_wait(publish, errstr, sizeof(errstr));
	if (err != CAT_OK && err != CAT_ERR_PERMANENT)
		fprintf(stderr, "catalyst-publish: %s\n", errstr);

	printf("published %llu, rejected %lu", (unsigned long long)cat_publish_delivered(publish), rejected);
	if (cat_publish_failed(publish) || cat_publish_outstanding(publish))
		printf(", not delivered %llu",
		       (unsigned long long)(cat_publish_failed(publish) + cat_publish_outstanding(publish)));
	printf("\n");
	rc = rejected == 0 && cat_publish_failed(publish) == 0 && cat_publish_outstanding(publish) == 0 &&
			     !ferror(in)
		     ? 0
		     : 1;

out:
	cat_publish_destroy(publish);
	free(line);
	if (in != stdin)
		fclose(in);
	return rc;
}

/* Delivery report: ref is the line number. */
static void report_delivery(void *ref, const char *error, void *opaque)
{
	(void)opaque;
	if (error)
		fprintf(stderr, "line %lu: not delivered: %s\n", (unsigned long)(uintptr_t)ref, error);
}

static cat_err_t send_write(void *opaque, cat_publish_t *publish, Catalyst__V1__WriteCommand *cmd, void *ref,
			    char *errstr, size_t errstr_size)
{
	(void)opaque;
	return cat_publish_write(publish, cmd, ref, errstr, errstr_size);
}

int publish_write(const cat_config_t *cfg, const publish_settings_t *settings, const char *path)
{
	return publish_lines(cfg, settings, path, report_delivery, send_write, NULL);
}
