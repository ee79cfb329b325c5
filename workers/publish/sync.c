/*
 * catalyst-publish sync: SyncCommands on sync.v1.
 *
 *   sync check --table T [--chunk-size N] [--repair] [--max-rows-per-second N]
 *   sync resync --table T
 *   sync replicate [FILE|-]     JSON write lines -> one ReplicateRows each
 *                               (read as catalyst-publish write reads them)
 *   common options: --replica NAME (default: every replica), --command-id ID
 *
 * check and resync are keyed by the table; replicate by "table:pk", so a
 * key's commands stay in order. Prints the command id of check and resync.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"
#include "cat_publish.h"
#include "cat_schema.h"
#include "publish.h"

typedef struct options {
	const char *table;
	const char *replica;
	const char *command_id;
	const char *path;
	long chunk_size;
	long max_rps;
	int repair;
} options_t;

/* Delivery report: ref is the command's number (its line for replicate). */
static void report_delivery(void *ref, const char *error, void *opaque)
{
	(void)opaque;
	if (error)
		fprintf(stderr, "catalyst-publish: command %lu not delivered: %s\n", (unsigned long)(uintptr_t)ref,
			error);
}

static int parse_long(const char *text, long min, long max, long *out)
{
	char *end;

	errno = 0;
	*out = strtol(text, &end, 10);
	return errno || end == text || *end || *out < min || *out > max ? -1 : 0;
}

/* 0, or 2 after printing a usage error. */
static int parse(int argc, char **argv, const char *action, options_t *o)
{
	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = strcmp(arg, "--table") == 0 || strcmp(arg, "--replica") == 0 ||
			     strcmp(arg, "--command-id") == 0 || strcmp(arg, "--chunk-size") == 0 ||
			     strcmp(arg, "--max-rows-per-second") == 0;

		if (takes && !value) {
			fprintf(stderr, "catalyst-publish: %s needs a value\n", arg);
			return 2;
		}
		if (strcmp(arg, "--table") == 0 && strcmp(action, "replicate") != 0) {
			o->table = value;
		} else if (strcmp(arg, "--replica") == 0) {
			o->replica = value;
		} else if (strcmp(arg, "--command-id") == 0 && strcmp(action, "replicate") != 0) {
			if (!value[0] || strlen(value) > CAT_CODEC_COMMAND_ID_MAX) {
				fprintf(stderr, "catalyst-publish: --command-id must be 1 to %d bytes\n",
					CAT_CODEC_COMMAND_ID_MAX);
				return 2;
			}
			o->command_id = value;
		} else if (strcmp(arg, "--chunk-size") == 0 && strcmp(action, "check") == 0) {
			if (parse_long(value, 0, 1000000, &o->chunk_size)) {
				fprintf(stderr, "catalyst-publish: --chunk-size must be an integer from 0 to "
						"1000000\n");
				return 2;
			}
		} else if (strcmp(arg, "--max-rows-per-second") == 0 && strcmp(action, "check") == 0) {
			if (parse_long(value, 0, INT32_MAX, &o->max_rps)) {
				fprintf(stderr, "catalyst-publish: --max-rows-per-second must be a "
						"non-negative integer\n");
				return 2;
			}
		} else if (strcmp(arg, "--repair") == 0 && strcmp(action, "check") == 0) {
			o->repair = 1;
			continue;
		} else if (arg[0] != '-' || strcmp(arg, "-") == 0) {
			if (strcmp(action, "replicate") != 0 || o->path) {
				fprintf(stderr, "catalyst-publish: unexpected argument %s (try --help)\n",
					arg);
				return 2;
			}
			o->path = arg;
			continue;
		} else {
			fprintf(stderr, "catalyst-publish: unknown option %s for sync %s (try --help)\n", arg,
				action);
			return 2;
		}
		i++;
	}
	if (strcmp(action, "replicate") != 0) {
		if (!o->table) {
			fprintf(stderr, "catalyst-publish: sync %s needs --table\n", action);
			return 2;
		}
		if (!cat_schema_table(o->table)) {
			fprintf(stderr, "catalyst-publish: unknown table %s\n", o->table);
			return 2;
		}
	}
	return 0;
}

/* check / resync: one command. */
static int publish_one(cat_publish_t *publish, const char *action, const options_t *o)
{
	Catalyst__V1__SyncCommand cmd = CATALYST__V1__SYNC_COMMAND__INIT;
	Catalyst__V1__CommandMeta meta = CATALYST__V1__COMMAND_META__INIT;
	Catalyst__V1__SyncCommand__CheckConsistency check =
		CATALYST__V1__SYNC_COMMAND__CHECK_CONSISTENCY__INIT;
	Catalyst__V1__SyncCommand__ResyncTable resync = CATALYST__V1__SYNC_COMMAND__RESYNC_TABLE__INIT;
	char errstr[512];

	meta.command_id = (char *)o->command_id; /* NULL: a new one */
	cmd.meta = &meta;
	cmd.replica = (char *)o->replica;
	if (strcmp(action, "check") == 0) {
		check.table = (char *)o->table;
		check.has_chunk_size = 1;
		check.chunk_size = (int32_t)o->chunk_size;
		check.has_repair = 1;
		check.repair = o->repair;
		check.has_max_rows_per_second = 1;
		check.max_rows_per_second = (int32_t)o->max_rps;
		cmd.action_case = CATALYST__V1__SYNC_COMMAND__ACTION_CHECK;
		cmd.check = &check;
	} else {
		resync.table = (char *)o->table;
		cmd.action_case = CATALYST__V1__SYNC_COMMAND__ACTION_RESYNC;
		cmd.resync = &resync;
	}
	if (cat_publish_sync(publish, &cmd, (void *)(uintptr_t)1, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		return 1;
	}
	if (cat_publish_wait(publish, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: the %s command was not delivered\n", action);
		return 1;
	}
	printf("published %s of %s: command_id %s\n", action, o->table, cat_publish_command_id(publish));
	return 0;
}

/* replicate: a write line's command as one ReplicateRows (opaque: the
 * options). */
static cat_err_t send_replicate(void *opaque, cat_publish_t *publish, Catalyst__V1__WriteCommand *wc, void *ref,
				char *errstr, size_t errstr_size)
{
	const options_t *o = opaque;
	Catalyst__V1__SyncCommand cmd = CATALYST__V1__SYNC_COMMAND__INIT;
	Catalyst__V1__SyncCommand__ReplicateRows rows = CATALYST__V1__SYNC_COMMAND__REPLICATE_ROWS__INIT;
	Catalyst__V1__Change change = CATALYST__V1__CHANGE__INIT, *changes[1] = {&change};

	change.has_op = 1;
	change.op = wc->op;
	change.record = wc->record;
	change.command_id = wc->meta->command_id;
	change.has_issued_at_us = wc->meta->has_issued_at_us;
	change.issued_at_us = wc->meta->issued_at_us;
	rows.n_changes = 1;
	rows.changes = changes;
	cmd.meta = wc->meta;
	cmd.replica = (char *)o->replica;
	cmd.action_case = CATALYST__V1__SYNC_COMMAND__ACTION_REPLICATE;
	cmd.replicate = &rows;
	return cat_publish_sync(publish, &cmd, ref, errstr, errstr_size);
}

int publish_sync(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv)
{
	options_t o = {0};
	cat_publish_t *publish = NULL;
	const char *action;
	int rc;

	if (argc < 1 || (strcmp(argv[0], "check") != 0 && strcmp(argv[0], "resync") != 0 &&
			 strcmp(argv[0], "replicate") != 0)) {
		fprintf(stderr, "catalyst-publish: sync needs check, resync or replicate (try --help)\n");
		return 2;
	}
	action = argv[0];
	if ((rc = parse(argc - 1, argv + 1, action, &o)) != 0)
		return rc;
	if (strcmp(action, "replicate") == 0)
		return publish_lines(cfg, settings, o.path ? o.path : "-", report_delivery, send_replicate, &o);
	if (!(publish = publish_open(cfg, settings, report_delivery, NULL)))
		return 2;
	rc = publish_one(publish, action, &o);
	cat_publish_destroy(publish);
	return rc;
}
