/*
 * catalyst-publish write: JSON lines -> WriteCommand -> write.v1.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "publish.h"

/* Delivery report: msg_opaque is the line number. */
static void report_delivery(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg,
			    void *opaque)
{
	if (err)
		fprintf(stderr, "line %lu: not delivered: %s\n", (unsigned long)(uintptr_t)msg_opaque,
			rd_kafka_err2str(err));
}

/* Publishes one accepted command; CAT_OK or an error with errstr set. */
static cat_err_t publish_one(cat_producer_t *producer, const char *topic,
			     const Catalyst__V1__WriteCommand *cmd, unsigned long line_no, char *errstr,
			     size_t errstr_size)
{
	char key[256];
	size_t key_len = cat_codec_record_key(cmd->record, key, sizeof(key));
	size_t len = catalyst__v1__write_command__get_packed_size(cmd);
	uint8_t *buf = malloc(len ? len : 1);
	cat_err_t err;

	if (!buf)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	catalyst__v1__write_command__pack(cmd, buf);
	err = cat_producer_send(producer, topic, RD_KAFKA_PARTITION_UA, key, key_len, buf, len, NULL,
				(void *)(uintptr_t)line_no, errstr, errstr_size);
	free(buf);
	return err;
}

int publish_write(const cat_config_t *cfg, const char *path)
{
	FILE *in = stdin;
	cat_producer_t *producer = NULL;
	char *line = NULL;
	size_t line_cap = 0;
	ssize_t line_len;
	unsigned long line_no = 0, rejected = 0;
	char topic[256];
	char errstr[512];
	int timeout_ms = (int)cat_config_int(cfg, "CATALYST_PUBLISH_TIMEOUT_MS");
	const char *producer_name = cat_config_str(cfg, "CATALYST_PRODUCER");
	int rc = 1;

	if (strcmp(path, "-") != 0 && !(in = fopen(path, "r"))) {
		fprintf(stderr, "catalyst-publish: could not open %s: %s\n", path, strerror(errno));
		return 2;
	}
	if (cat_producer_new(&producer, cfg, "catalyst-publish", timeout_ms, report_delivery, NULL, errstr,
			     sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		rc = 2;
		goto out;
	}
	cat_kafka_topic(cfg, CAT_TOPIC_WRITE, topic, sizeof(topic));

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
		if (cat_codec_write_from_json(line, len, producer_name, &cmd, errstr, sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "line %lu: %s\n", line_no, errstr);
			rejected++;
			continue;
		}
		cat_err_t err = publish_one(producer, topic, cmd, line_no, errstr, sizeof(errstr));
		catalyst__v1__write_command__free_unpacked(cmd, NULL);
		if (err != CAT_OK) {
			fprintf(stderr, "line %lu: %s\n", line_no, errstr);
			rejected++;
			if (err == CAT_ERR_FATAL)
				break;
			continue;
		}
		cat_producer_poll(producer, 0);
	}
	if (ferror(in))
		fprintf(stderr, "catalyst-publish: could not read %s: %s\n", path, strerror(errno));

	/* message.timeout.ms fails every report by then; the margin covers the last poll */
	if (cat_producer_flush(producer, timeout_ms + 5000, errstr, sizeof(errstr)) != CAT_OK)
		fprintf(stderr, "catalyst-publish: %s\n", errstr);

	printf("published %llu, rejected %lu", (unsigned long long)cat_producer_delivered(producer), rejected);
	if (cat_producer_failed(producer) || cat_producer_outstanding(producer))
		printf(", not delivered %llu",
		       (unsigned long long)(cat_producer_failed(producer) + cat_producer_outstanding(producer)));
	printf("\n");
	rc = rejected == 0 && cat_producer_failed(producer) == 0 && cat_producer_outstanding(producer) == 0 &&
			     !ferror(in)
		     ? 0
		     : 1;

out:
	cat_producer_destroy(producer);
	free(line);
	if (in && in != stdin)
		fclose(in);
	return rc;
}
