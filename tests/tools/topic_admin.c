/*
 * topic-admin: creates or deletes the fleet's topics under a prefix, so
 * that each integration test runs on topics of its own.
 *
 *   topic-admin create|delete [PREFIX]     (default: CATALYST_TOPIC_PREFIX)
 *
 * Creating a topic that exists is not an error. The partition counts are the
 * fleet's (cat_kafka_topics); the replication factor is
 * CATALYST_TOPIC_REPLICATION_FACTOR (default 1, the local stack's single
 * broker; docker-compose and the Kubernetes topics Job run this too).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_config.h"
#include "cat_kafka.h"
#include "cat_log.h"

static const char usage[] =
	"usage: topic-admin create|delete [PREFIX]\n"
	"\n"
	"Creates (or deletes) the fleet's topics under PREFIX (default\n"
	"CATALYST_TOPIC_PREFIX) with their partition counts; an existing topic is kept.";

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	{ .name = "CATALYST_TOPIC_REPLICATION_FACTOR", .type = CAT_CFG_INT, .def = "1", .min = 1,
	  .max = 10000, .help = "create: replicas of each partition" },
};

int main(int argc, char **argv)
{
	cat_config_t *cfg = NULL;
	rd_kafka_conf_t *conf = NULL;
	rd_kafka_t *rk = NULL;
	rd_kafka_queue_t *queue = NULL;
	rd_kafka_event_t *event = NULL;
	char errstr[512];
	char names[16][256];
	size_t n = cat_kafka_n_topics;
	int create, rc = 1;

	if (cat_config_wants_help(argc, argv)) {
		cat_config_usage(stdout, usage, config_defs, sizeof(config_defs) / sizeof(config_defs[0]));
		return 0;
	}
	if (argc < 2 || (strcmp(argv[1], "create") != 0 && strcmp(argv[1], "delete") != 0)) {
		fprintf(stderr, "usage: topic-admin create|delete [PREFIX] (try --help)\n");
		return 2;
	}
	create = strcmp(argv[1], "create") == 0;
	if (cat_config_load(&cfg, config_defs, sizeof(config_defs) / sizeof(config_defs[0]), NULL, errstr,
			    sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "topic-admin: %s\n", errstr);
		return 2;
	}
	cat_log_init("topic-admin", CAT_LOG_LEVEL_WARN);
	for (size_t i = 0; i < n; i++)
		snprintf(names[i], sizeof(names[i]), "%s%s",
			 argc > 2 ? argv[2] : cat_config_str(cfg, "CATALYST_TOPIC_PREFIX"), cat_kafka_topics[i].suffix);

	if (cat_kafka_conf_new(&conf, cfg, "topic-admin", errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "topic-admin: %s\n", errstr);
		goto out;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (!rk) {
		fprintf(stderr, "topic-admin: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		goto out;
	}
	conf = NULL; /* owned by rk */
	queue = rd_kafka_queue_new(rk);

	rd_kafka_AdminOptions_t *options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY);
	rd_kafka_AdminOptions_set_request_timeout(options, 30000, errstr, sizeof(errstr));
	rd_kafka_AdminOptions_set_operation_timeout(options, 30000, errstr, sizeof(errstr));
	if (create) {
		rd_kafka_NewTopic_t *topics[16];

		for (size_t i = 0; i < n; i++) {
			topics[i] = rd_kafka_NewTopic_new(names[i], cat_kafka_topics[i].partitions,
							  (int)cat_config_int(cfg, "CATALYST_TOPIC_REPLICATION_FACTOR"),
							  errstr, sizeof(errstr));
			if (!topics[i]) {
				fprintf(stderr, "topic-admin: %s: %s\n", names[i], errstr);
				rd_kafka_NewTopic_destroy_array(topics, i);
				rd_kafka_AdminOptions_destroy(options);
				goto out;
			}
		}
		rd_kafka_CreateTopics(rk, topics, n, options, queue);
		rd_kafka_NewTopic_destroy_array(topics, n);
	} else {
		rd_kafka_DeleteTopic_t *topics[16];

		for (size_t i = 0; i < n; i++)
			topics[i] = rd_kafka_DeleteTopic_new(names[i]);
		rd_kafka_DeleteTopics(rk, topics, n, options, queue);
		rd_kafka_DeleteTopic_destroy_array(topics, n);
	}
	rd_kafka_AdminOptions_destroy(options);

	event = rd_kafka_queue_poll(queue, 60000);
	if (!event || rd_kafka_event_error(event)) {
		fprintf(stderr, "topic-admin: %s\n", event ? rd_kafka_event_error_string(event) : "timed out");
		goto out;
	}
	const rd_kafka_topic_result_t **results;
	size_t n_results;
	if (create)
		results = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &n_results);
	else
		results = rd_kafka_DeleteTopics_result_topics(rd_kafka_event_DeleteTopics_result(event), &n_results);
	rc = 0;
	for (size_t i = 0; i < n_results; i++) {
		rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);

		if (err && !(create && err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) &&
		    !(!create && err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)) {
			fprintf(stderr, "topic-admin: %s: %s\n", rd_kafka_topic_result_name(results[i]),
				rd_kafka_topic_result_error_string(results[i]));
			rc = 1;
		}
	}

out:
	if (event)
		rd_kafka_event_destroy(event);
	if (queue)
		rd_kafka_queue_destroy(queue);
	if (rk)
		rd_kafka_destroy(rk);
	cat_config_destroy(cfg);
	return rc;
}
