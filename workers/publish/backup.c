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
#include "cat_publish.h"
#include "cat_schema.h"
#include "catalyst/v1/commands.pb-c.h"
#include "publish.h"

/* The reason the command was not delivered, printed once the wait is over. */
static void on_report(void *ref, const char *error, void *opaque)
{
	const char **not_delivered = opaque;

	(void)ref;
	if (error)
		*not_delivered = error;
}

static int bad_usage(const char *what)
{
	fprintf(stderr, "catalyst-publish backup: %s (try --help)\n", what);
	return 2;
}

int publish_backup(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv)
{
	Catalyst__V1__BackupCommand cmd = CATALYST__V1__BACKUP_COMMAND__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__BackupCommand__Full full = CATALYST__V1__BACKUP_COMMAND__FULL__INIT;
	Catalyst__V1__BackupCommand__Tables tables = CATALYST__V1__BACKUP_COMMAND__TABLES__INIT;
	Catalyst__V1__BackupCommand__Restore restore = CATALYST__V1__BACKUP_COMMAND__RESTORE__INIT;
	Catalyst__V1__BackupCommand__Verify verify = CATALYST__V1__BACKUP_COMMAND__VERIFY__INIT;
	Catalyst__V1__BackupCommand__Prune prune = CATALYST__V1__BACKUP_COMMAND__PRUNE__INIT;
	char errstr[512], *tag = NULL;
	const char *action, *not_delivered = NULL;
	cat_publish_t *publish = NULL;
	cat_err_t err;
	int i = 0, rc = 1;

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
			meta.command_id = argv[i];
		} else if (strcmp(argv[i], "--issued-at-us") == 0 && i + 1 < argc) {
			char *end;
			errno = 0;
			meta.issued_at_us = strtoll(argv[++i], &end, 10);
			meta.has_issued_at_us = 1;
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
	cmd.meta = &meta;

	if (!(publish = publish_open(cfg, settings, on_report, &not_delivered)))
		goto out;
	if (cat_publish_backup(publish, &cmd, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		goto out;
	}
	err = cat_publish_wait(publish, errstr, sizeof(errstr));
	if (err == CAT_ERR_PERMANENT)
		fprintf(stderr, "catalyst-publish: not delivered: %s\n", not_delivered);
	else if (err != CAT_OK)
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
	if (err != CAT_OK)
		goto out;
	printf("%s\n", cat_publish_command_id(publish));
	rc = 0;
out:
	cat_publish_destroy(publish);
	return rc;
}
