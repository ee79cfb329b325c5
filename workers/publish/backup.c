/*
 * catalyst-publish backup ...: BackupCommands on backup.v1 (what the
 * CronJobs and operators send).
 *
 *   backup full [--tag T]
 *   backup tables [--incremental] [--tag T] [TABLE...]
 *   backup restore BACKUP_ID TARGET [TABLE...]
 *   backup verify BACKUP_ID
 *   backup prune [--dry-run] [--now-us US]
 *     (--now-us: tests only; a worker honours it only with
 *     CATALYST_BACKUP_ALLOW_PRUNE_NOW=1, else its own clock decides)
 * Common options (before the action's arguments): --database D,
 * --command-id ID (default: a new UUID; the same id is the same backup),
 * --issued-at-us US (default: now).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_kafka.h"
#include "cat_log.h"
#include "cat_schema.h"
#include "cat_time.h"
#include "catalyst/v1/commands.pb-c.h"
#include "publish.h"

static int delivered_err = -1;

static void on_report(void *msg_opaque, rd_kafka_resp_err_t err, const rd_kafka_message_t *msg, void *opaque)
{
	delivered_err = (int)err;
}

static int bad_usage(const char *what)
{
	fprintf(stderr, "catalyst-publish backup: %s (try --help)\n", what);
	return 2;
}

int publish_backup(const cat_config_t *cfg, int argc, char **argv)
{
	Catalyst__V1__BackupCommand cmd = CATALYST__V1__BACKUP_COMMAND__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__BackupCommand__Full full = CATALYST__V1__BACKUP_COMMAND__FULL__INIT;
	Catalyst__V1__BackupCommand__Tables tables = CATALYST__V1__BACKUP_COMMAND__TABLES__INIT;
	Catalyst__V1__BackupCommand__Restore restore = CATALYST__V1__BACKUP_COMMAND__RESTORE__INIT;
	Catalyst__V1__BackupCommand__Verify verify = CATALYST__V1__BACKUP_COMMAND__VERIFY__INIT;
	Catalyst__V1__BackupCommand__Prune prune = CATALYST__V1__BACKUP_COMMAND__PRUNE__INIT;
	char command_id[CAT_CODEC_COMMAND_ID_MAX + 1] = "", topic[256], errstr[512], *tag = NULL;
	const char *action;
	cat_producer_t *producer = NULL;
	uint8_t *buf = NULL;
	size_t len;
	int i = 0, rc = 1;
	int timeout_ms = (int)cat_config_int(cfg, "CATALYST_PUBLISH_TIMEOUT_MS");

	meta.issued_at_us = cat_time_now_us();
	meta.has_issued_at_us = 1;
	meta.producer = (char *)(uintptr_t)cat_config_str(cfg, "CATALYST_PRODUCER");
	/* common options */
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--database") == 0 && i + 1 < argc)
			cmd.database = argv[++i];
		else if (strcmp(argv[i], "--command-id") == 0 && i + 1 < argc) {
			if (!argv[++i][0] || strlen(argv[i]) > CAT_CODEC_COMMAND_ID_MAX) {
				fprintf(stderr, "catalyst-publish: --command-id must be 1 to %d bytes\n",
					CAT_CODEC_COMMAND_ID_MAX);
				return 2;
			}
			snprintf(command_id, sizeof(command_id), "%s", argv[i]);
		} else if (strcmp(argv[i], "--issued-at-us") == 0 && i + 1 < argc) {
			char *end;
			errno = 0;
			meta.issued_at_us = strtoll(argv[++i], &end, 10);
			if (errno || end == argv[i] || *end || meta.issued_at_us <= 0) {
				fprintf(stderr, "catalyst-publish: --issued-at-us must be a positive integer (µs)\n");
				return 2;
			}
		} else
			return bad_usage(argv[i]);
	}
	if (i >= argc)
		return bad_usage("missing action: full, tables, restore, verify or prune");
	action = argv[i++];
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--tag") == 0 && i + 1 < argc)
			tag = argv[++i];
		else if (strcmp(argv[i], "--incremental") == 0)
			tables.incremental = tables.has_incremental = 1;
		else if (strcmp(argv[i], "--dry-run") == 0)
			prune.dry_run = prune.has_dry_run = 1;
		else if (strcmp(argv[i], "--now-us") == 0 && i + 1 < argc)
			prune.now_us = strtoll(argv[++i], NULL, 10), prune.has_now_us = 1;
		else
			return bad_usage(argv[i]);
	}
	if (strcmp(action, "full") == 0 && i == argc) {
		full.tag = tag;
		cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_FULL;
		cmd.full = &full;
	} else if (strcmp(action, "tables") == 0) {
		for (int j = i; j < argc; j++)
			if (!cat_schema_table(argv[j]))
				return bad_usage("unknown table");
		tables.tag = tag;
		tables.n_tables = (size_t)(argc - i);
		tables.tables = argv + i;
		cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES;
		cmd.tables = &tables;
	} else if (strcmp(action, "restore") == 0 && argc - i >= 2) {
		restore.backup_id = argv[i];
		restore.target = argv[i + 1];
		restore.n_tables = (size_t)(argc - i - 2);
		restore.tables = argv + i + 2;
		cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_RESTORE;
		cmd.restore = &restore;
	} else if (strcmp(action, "verify") == 0 && argc - i == 1) {
		verify.backup_id = argv[i];
		cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_VERIFY;
		cmd.verify = &verify;
	} else if (strcmp(action, "prune") == 0 && i == argc) {
		cmd.action_case = CATALYST__V1__BACKUP_COMMAND__ACTION_PRUNE;
		cmd.prune = &prune;
	} else {
		return bad_usage("unknown action or wrong arguments");
	}
	if (!command_id[0])
		cat_codec_uuid(command_id, sizeof(command_id));
	meta.command_id = command_id;
	cmd.meta = &meta;

	len = catalyst__v1__backup_command__get_packed_size(&cmd);
	if (!(buf = malloc(len ? len : 1))) {
		fprintf(stderr, "catalyst-publish: out of memory\n");
		return 1;
	}
	catalyst__v1__backup_command__pack(&cmd, buf);
	cat_kafka_topic(cfg, CAT_TOPIC_BACKUP, topic, sizeof(topic));
	if (cat_producer_new(&producer, cfg, "catalyst-publish", timeout_ms, on_report, NULL, errstr,
			     sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		goto out;
	}
	{
		/* one backup per database at a time: keyed by the database */
		const char *key = cmd.database && *cmd.database ? cmd.database : "primary";

		if (cat_producer_send(producer, topic, RD_KAFKA_PARTITION_UA, key, strlen(key), buf, len, NULL, NULL,
				      errstr, sizeof(errstr)) != CAT_OK ||
		    cat_producer_flush(producer, timeout_ms + 5000, errstr, sizeof(errstr)) != CAT_OK) {
			fprintf(stderr, "catalyst-publish: %s\n", errstr);
			goto out;
		}
	}
	if (delivered_err != 0) {
		fprintf(stderr, "catalyst-publish: not delivered: %s\n",
			rd_kafka_err2str((rd_kafka_resp_err_t)delivered_err));
		goto out;
	}
	printf("%s\n", command_id);
	rc = 0;
out:
	cat_producer_destroy(producer);
	free(buf);
	return rc;
}
