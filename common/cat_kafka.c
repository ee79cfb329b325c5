#include "cat_kafka.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_log.h"
#include "cat_time.h"

struct cat_producer {
	rd_kafka_t *rk;
	rd_kafka_conf_t *conf; /* a copy, to make the client again after a fatal error */
	cat_producer_report_fn report;
	void *opaque;
	uint64_t sent;
	uint64_t delivered;
	uint64_t failed;
};

const cat_kafka_topic_spec_t cat_kafka_topics[] = {
	{ CAT_TOPIC_WRITE, 12 }, { CAT_TOPIC_CHANGES, 12 }, { CAT_TOPIC_CACHE, 6 }, { CAT_TOPIC_SYNC, 6 },
	{ CAT_TOPIC_BACKUP, 3 }, { CAT_TOPIC_DLQ, 3 },      { CAT_TOPIC_EVENTS, 3 },
};
const size_t cat_kafka_n_topics = sizeof(cat_kafka_topics) / sizeof(cat_kafka_topics[0]);

char *cat_kafka_topic(const cat_config_t *cfg, const char *suffix, char *buf, size_t buf_size)
{
	const char *prefix = cat_config_str(cfg, "CATALYST_TOPIC_PREFIX");

	snprintf(buf, buf_size, "%s%s", prefix ? prefix : "", suffix);
	return buf;
}

cat_err_t cat_kafka_topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms, int *partitions,
				     char *errstr, size_t errstr_size)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *metadata = NULL;
	rd_kafka_resp_err_t kerr;
	cat_err_t err = CAT_OK;

	*partitions = 0;
	if (!rkt)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not look up topic %s: %s", topic,
				   rd_kafka_err2str(rd_kafka_last_error()));
	kerr = rd_kafka_metadata(rk, 0, rkt, &metadata, timeout_ms);
	if (kerr)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not read the metadata of %s: %s",
				  topic, rd_kafka_err2str(kerr));
	else if (metadata->topic_cnt != 1 || metadata->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "topic %s does not exist", topic);
	else if (metadata->topics[0].err || metadata->topics[0].partition_cnt <= 0)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not read the metadata of %s: %s",
				  topic, rd_kafka_err2str(metadata->topics[0].err));
	else
		*partitions = metadata->topics[0].partition_cnt;
	if (metadata)
		rd_kafka_metadata_destroy(metadata);
	rd_kafka_topic_destroy(rkt);
	return err;
}

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	cat_log_level_t lvl = level <= 3 ? CAT_LOG_LEVEL_ERROR
			      : level == 4 ? CAT_LOG_LEVEL_WARN
			      : level <= 6 ? CAT_LOG_LEVEL_INFO
					   : CAT_LOG_LEVEL_DEBUG;

	/* CATALYST_KAFKA_* reaches every client of a process, so a consumer
	 * property set there reaches its producers too, as intended: that
	 * librdkafka ignores it there is no news */
	if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "is a consumer property and will be ignored by this producer"))
		lvl = CAT_LOG_LEVEL_DEBUG;
	cat_log_write(lvl, "KAFKA", "%s: %s", fac, buf);
}

static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	/* Transport errors are retried by librdkafka itself; say so once each. */
	cat_log_write(err == RD_KAFKA_RESP_ERR__FATAL ? CAT_LOG_LEVEL_ERROR : CAT_LOG_LEVEL_WARN, "KAFKA",
		      "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

cat_err_t cat_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
			     char *errstr, size_t errstr_size)
{
	char kerr[256];

	if (rd_kafka_conf_set(conf, name, value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "kafka property %s: %s", name, kerr);
	return CAT_OK;
}

typedef struct passthrough {
	rd_kafka_conf_t *conf;
	char *errstr;
	size_t errstr_size;
} passthrough_t;

static int apply_passthrough(const char *key, const char *value, void *opaque)
{
	passthrough_t *pt = opaque;
	char kerr[256];
	char env_name[256];

	if (rd_kafka_conf_set(pt->conf, key, value, kerr, sizeof(kerr)) == RD_KAFKA_CONF_OK)
		return 0;
	/* name the variable the user set, not only librdkafka's property */
	snprintf(env_name, sizeof(env_name), "CATALYST_KAFKA_%s", key);
	for (char *c = env_name + strlen("CATALYST_KAFKA_"); *c; c++)
		*c = *c == '.' ? '_' : (char)(*c >= 'a' && *c <= 'z' ? *c - 'a' + 'A' : *c);
	cat_err_set(pt->errstr, pt->errstr_size, CAT_ERR_FATAL, "%s: %s", env_name, kerr);
	return -1;
}

cat_err_t cat_kafka_conf_new(rd_kafka_conf_t **out, const cat_config_t *cfg, const char *client_id,
			     char *errstr, size_t errstr_size)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	passthrough_t pt = { conf, errstr, errstr_size };
	cat_err_t err;

	*out = NULL;
	if ((err = cat_kafka_conf_set(conf, "bootstrap.servers", cat_config_str(cfg, "CATALYST_BROKERS"),
				      errstr, errstr_size)) != CAT_OK ||
	    (err = cat_kafka_conf_set(conf, "client.id", client_id, errstr, errstr_size)) != CAT_OK)
		goto error;
	rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
	rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
	if (cat_config_each_kafka(cfg, apply_passthrough, &pt) != 0) {
		err = CAT_ERR_FATAL;
		goto error;
	}
	*out = conf;
	return CAT_OK;

error:
	rd_kafka_conf_destroy(conf);
	return err;
}

static void producer_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	cat_producer_t *producer = opaque;

	if (msg->err)
		producer->failed++;
	else
		producer->delivered++;
	if (producer->report)
		producer->report(msg->_private, msg->err, msg, producer->opaque);
}

cat_err_t cat_producer_new(cat_producer_t **out, const cat_config_t *cfg, const char *client_id,
			   int delivery_timeout_ms, cat_producer_report_fn report, void *opaque,
			   char *errstr, size_t errstr_size)
{
	return cat_producer_new_with(out, cfg, client_id, delivery_timeout_ms, report, opaque, NULL, NULL, errstr,
				     errstr_size);
}

cat_err_t cat_producer_new_with(cat_producer_t **out, const cat_config_t *cfg, const char *client_id,
				int delivery_timeout_ms, cat_producer_report_fn report, void *opaque,
				const char *property, const char *value, char *errstr, size_t errstr_size)
{
	cat_producer_t *producer;
	rd_kafka_conf_t *conf = NULL;
	char timeout[32];
	char kerr[512];
	cat_err_t err;

	*out = NULL;
	producer = calloc(1, sizeof(*producer));
	if (!producer)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	producer->report = report;
	producer->opaque = opaque;

	snprintf(timeout, sizeof(timeout), "%d", delivery_timeout_ms);
	if ((err = cat_kafka_conf_new(&conf, cfg, client_id, errstr, errstr_size)) != CAT_OK)
		goto error;
	/* Our guarantees come first; pass-through may tune, not weaken, them:
	 * these are set after it and win. */
	if ((err = cat_kafka_conf_set(conf, "enable.idempotence", "true", errstr, errstr_size)) ||
	    (err = cat_kafka_conf_set(conf, "acks", "all", errstr, errstr_size)) ||
	    (err = cat_kafka_conf_set(conf, "message.timeout.ms", timeout, errstr, errstr_size)) ||
	    (property && (err = cat_kafka_conf_set(conf, property, value, errstr, errstr_size))))
		goto error;
	rd_kafka_conf_set_opaque(conf, producer);
	rd_kafka_conf_set_dr_msg_cb(conf, producer_dr_cb);
	if (!(producer->conf = rd_kafka_conf_dup(conf))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
		goto error;
	}

	producer->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
	if (!producer->rk) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not create kafka producer: %s",
				  kerr);
		goto error;
	}
	conf = NULL; /* owned by producer->rk */
	*out = producer;
	return CAT_OK;

error:
	if (conf)
		rd_kafka_conf_destroy(conf);
	if (producer->conf)
		rd_kafka_conf_destroy(producer->conf);
	free(producer);
	return err;
}

void cat_producer_destroy(cat_producer_t *producer)
{
	if (!producer)
		return;
	if (producer->rk)
		rd_kafka_destroy(producer->rk);
	if (producer->conf)
		rd_kafka_conf_destroy(producer->conf);
	free(producer);
}

cat_err_t cat_producer_recover(cat_producer_t *producer, char *errstr, size_t errstr_size)
{
	rd_kafka_conf_t *conf;
	char fatal[512], kerr[512];

	if (!rd_kafka_fatal_error(producer->rk, fatal, sizeof(fatal)))
		return CAT_OK;
	cat_log_write(CAT_LOG_LEVEL_ERROR, "KAFKA",
		      "kafka producer failed: %s; making it again (%llu messages outstanding are sent again)",
		      fatal, (unsigned long long)cat_producer_outstanding(producer));
	/* every outstanding message gets its (failed) report now */
	rd_kafka_purge(producer->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_poll(producer->rk, 0);
	rd_kafka_destroy(producer->rk);
	producer->rk = NULL;
	producer->failed = producer->sent - producer->delivered; /* reports that never came */
	if (!(conf = rd_kafka_conf_dup(producer->conf)))
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if (!(producer->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr)))) {
		rd_kafka_conf_destroy(conf);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not make the kafka producer again: %s",
				   kerr);
	}
	return CAT_OK;
}

cat_err_t cat_producer_send(cat_producer_t *producer, const char *topic, int32_t partition,
			    const void *key, size_t key_len, const void *value, size_t value_len,
			    rd_kafka_headers_t *headers, void *msg_opaque, char *errstr,
			    size_t errstr_size)
{
	for (;;) {
		rd_kafka_resp_err_t kerr;

		if (headers)
			kerr = rd_kafka_producev(producer->rk, RD_KAFKA_V_TOPIC(topic),
						 RD_KAFKA_V_PARTITION(partition),
						 RD_KAFKA_V_KEY((void *)key, key_len),
						 RD_KAFKA_V_VALUE((void *)value, value_len),
						 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
						 RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(msg_opaque),
						 RD_KAFKA_V_END);
		else
			kerr = rd_kafka_producev(producer->rk, RD_KAFKA_V_TOPIC(topic),
						 RD_KAFKA_V_PARTITION(partition),
						 RD_KAFKA_V_KEY((void *)key, key_len),
						 RD_KAFKA_V_VALUE((void *)value, value_len),
						 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
						 RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_END);
		if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR) {
			producer->sent++;
			return CAT_OK;
		}
		if (kerr == RD_KAFKA_RESP_ERR__FATAL) {
			cat_err_t err = cat_producer_recover(producer, errstr, errstr_size);

			if (err != CAT_OK)
				return err;
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "could not produce to %s: the producer failed and was made again", topic);
		}
		if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			return cat_err_set(errstr, errstr_size,
					   kerr == RD_KAFKA_RESP_ERR__FATAL ? CAT_ERR_FATAL
					   : kerr == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? CAT_ERR_PERMANENT
											  : CAT_ERR_RETRIABLE,
					   "could not produce to %s: %s", topic, rd_kafka_err2str(kerr));
		rd_kafka_poll(producer->rk, 100); /* queue full: let reports drain it */
	}
}

#define DRAIN_FINE_US (20 * 1000) /* a drain waits in 1 ms steps this long, then 10 ms */

void cat_producer_poll(cat_producer_t *producer, int timeout_ms)
{
	rd_kafka_poll(producer->rk, timeout_ms);
}

void cat_producer_drain(cat_producer_t *producer, int timeout_ms)
{
	int64_t started = cat_time_mono_us(), deadline = started + (int64_t)timeout_ms * 1000;

	for (;;) {
		int64_t now = cat_time_mono_us(), left_ms = (deadline - now + 999) / 1000;
		int step = now - started < DRAIN_FINE_US ? 1 : 10;

		/* a report does not wake librdkafka's poll (it waits out its
		 * timeout: a 100 ms wait took 100 ms however soon the report
		 * came), so the wait goes in short steps, finer at first; and a
		 * flush, not a poll, so that what lingers goes out at once */
		rd_kafka_flush(producer->rk, left_ms <= 0 ? 0 : left_ms < step ? (int)left_ms : step);
		if (cat_producer_outstanding(producer) == 0 || cat_time_mono_us() >= deadline)
			return;
	}
}

cat_err_t cat_producer_flush(cat_producer_t *producer, int timeout_ms, char *errstr, size_t errstr_size)
{
	int64_t deadline = cat_time_mono_us() + (int64_t)timeout_ms * 1000;
	char fatal[512];

	while (cat_producer_outstanding(producer) > 0) {
		int64_t left_ms = (deadline - cat_time_mono_us()) / 1000;

		if (rd_kafka_fatal_error(producer->rk, fatal, sizeof(fatal))) {
			cat_err_t err = cat_producer_recover(producer, errstr, errstr_size);

			if (err != CAT_OK)
				return err;
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "kafka producer failed and was made again: %s", fatal);
		}
		if (left_ms <= 0)
			return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
					   "%llu messages still unacknowledged after %d ms",
					   (unsigned long long)cat_producer_outstanding(producer), timeout_ms);
		cat_producer_drain(producer, left_ms < 100 ? (int)left_ms : 100);
	}
	return CAT_OK;
}

uint64_t cat_producer_delivered(const cat_producer_t *producer)
{
	return producer->delivered;
}

uint64_t cat_producer_failed(const cat_producer_t *producer)
{
	return producer->failed;
}

uint64_t cat_producer_outstanding(const cat_producer_t *producer)
{
	return producer->sent - producer->delivered - producer->failed;
}

rd_kafka_t *cat_producer_handle(cat_producer_t *producer)
{
	return producer->rk;
}
