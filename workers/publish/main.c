/*
 * catalyst-publish: the producer CLI for services and operators.
 *
 *   catalyst-publish write [FILE|-]   JSON lines -> WriteCommand -> write.v1
 *   catalyst-publish sync check|resync|replicate ...   SyncCommands -> sync.v1
 *   catalyst-publish backup ACTION    a BackupCommand -> backup.v1
 *   catalyst-publish cache ...        one CacheCommand -> cache.v1
 *   catalyst-publish dlq list|show|replay ...   dead letters of dlq.v1
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cat_config.h"
#include "cat_log.h"
#include "publish.h"

static const char usage[] =
	"usage: catalyst-publish write [FILE|-]\n"
	"       catalyst-publish sync check --table T [--chunk-size N] [--repair]\n"
	"                                   [--max-rows-per-second N] [--replica NAME] [--command-id ID]\n"
	"       catalyst-publish sync resync --table T [--replica NAME] [--command-id ID]\n"
	"       catalyst-publish sync replicate [FILE|-] [--replica NAME]\n"
	"       catalyst-publish backup [--database D] [--command-id ID] [--issued-at-us US] ACTION\n"
	"       catalyst-publish cache set [--ttl SECONDS] [--version N] KEY VALUE|-\n"
	"       catalyst-publish cache delete KEY...\n"
	"       catalyst-publish cache invalidate PATTERN\n"
	"       catalyst-publish cache warm market-open|rebuild\n"
	"       catalyst-publish dlq list [FILTER...] [--pending] [--json]\n"
	"       catalyst-publish dlq show [FILTER...] [PARTITION:OFFSET...]\n"
	"       catalyst-publish dlq replay [FILTER...] [--all] [--dry-run] [--by NAME]\n"
	"                                   [PARTITION:OFFSET...]\n"
	"\n"
	"  write   read JSON lines, one record each, e.g.\n"
	"          {\"table\":\"news_raw\",\"news_id\":\"n1\",\"symbol\":\"AAPL\",\n"
	"           \"published_timestamp\":\"2026-11-27T14:05:12Z\",\"version\":1}\n"
	"          (column names as in SQL, timestamps RFC 3339; optional \"command_id\",\n"
	"          \"producer\", \"trace_id\"; \"op\":\"delete\" with the primary key,\n"
	"          version and symbol only) and publish each as a\n"
	"          WriteCommand to write.v1, keyed by symbol (else the primary key).\n"
	"          A bad line is reported as `line N: reason` and nothing of it is\n"
	"          published. Returns after every accepted record's delivery report.\n"
	"  sync    a SyncCommand on sync.v1 for catalyst-sync (every replica, or --replica):\n"
	"          check     CheckConsistency of a table (chunk size 0: the worker's default;\n"
	"                    --repair fixes the replica; the report comes on events.v1)\n"
	"          resync    ResyncTable: the replica's table copied afresh from the primary\n"
	"          replicate JSON write lines (as write), each as ReplicateRows\n"
	"          check and resync print the command id the report carries.\n"
	"  backup  publish one BackupCommand to backup.v1 and print its command_id:\n"
	"            full [--tag hourly|daily|weekly|manual]\n"
	"            tables [--incremental] [--tag T] [TABLE...]   (none: the hot tables)\n"
	"            restore BACKUP_ID TARGET [TABLE...]           (TARGET: a configured name)\n"
	"            verify BACKUP_ID\n"
	"            prune [--dry-run] [--now-us US]\n"
	"          the same --command-id is the same backup (idempotent).\n"
	"\n"
	"  cache   publish one CacheCommand to cache.v1 for catalyst-cache: set a key\n"
	"          (version-checked with --version; VALUE - reads stdin), delete keys,\n"
	"          invalidate the keys matching a Redis glob (SCAN + UNLINK), or warm:\n"
	"          market-open (pre-market news, active candidates) or rebuild (every key\n"
	"          of the layout, from the primary). Returns after the delivery report.\n"
	"\n"
	"  dlq     the dead letters of dlq.v1 (messages a worker could never apply, with\n"
	"          the reason and source headers), read from the beginning to the current\n"
	"          end without a consumer group:\n"
	"            list    one line each: DLQ partition:offset, when it failed, worker,\n"
	"                    source topic:partition:offset, command kind, table, whether\n"
	"                    it was replayed (when CATALYST_PG_URL is set), reason;\n"
	"                    --json: one JSON object a line\n"
	"            show    each selected letter as JSON: every header, and the original\n"
	"                    message (a write line for write.v1, the command's fields for\n"
	"                    the other topics, value_hex when it does not decode)\n"
	"            replay  re-publish the selected letters' original bytes and key to\n"
	"                    their source topic and partition, once the cause is fixed;\n"
	"                    waits for the acknowledgements, then records them in\n"
	"                    dlq_replays on the primary (CATALYST_PG_URL required), so a\n"
	"                    second replay skips them. Needs PARTITION:OFFSET, a filter\n"
	"                    or --all; --dry-run only prints what it would replay; --by\n"
	"                    names the operator (default user@host). Only topics of this\n"
	"                    fleet under CATALYST_TOPIC_PREFIX are replayed to.\n"
	"          FILTER: --reason TEXT (substring, any case), --table T (the record's\n"
	"          or command's table), --source-topic T (full name or write.v1),\n"
	"          --worker W, --since TIME (RFC 3339, or 30m, 2h, 7d back from now);\n"
	"          --pending: only letters not replayed yet.\n"
	"\n"
	"Exit status: 0 all published (dlq: done); 1 a line was rejected or not\n"
	"delivered (dlq: a letter not found, refused or not delivered; Kafka or\n"
	"PostgreSQL failed); 2 usage or configuration error.";

/* Each of the binary's own rows fills a field of publish_settings_t. */
#define FIELD(member) CAT_CONFIG_FIELD(publish_settings_t, member)

static const cat_config_def_t config_defs[] = {
	CAT_CONFIG_COMMON,
	CAT_CONFIG_KAFKA,
	{ .name = "CATALYST_PUBLISH_TIMEOUT_MS", FIELD(timeout_ms), .type = CAT_CFG_INT, .def = "30000",
	  .min = 1000, .max = 3600000,
	  .help = "how long a record may wait for the broker's acknowledgement before it counts as "
	          "not delivered" },
	{ .name = "CATALYST_PRODUCER", FIELD(producer), .type = CAT_CFG_STRING, .def = "catalyst-publish",
	  .help = "producer name put in each command's meta when the line has none" },
	{ .name = "CATALYST_PG_URL", FIELD(pg_url), .type = CAT_CFG_PG_URL, .secret = true,
	  .help = "PostgreSQL primary, for dlq only: replay records what it replayed there (required), "
	          "list and show mark the replayed letters (optional)" },
	{ .name = "CATALYST_PG_CONNECT_TIMEOUT_S", FIELD(pg_connect_timeout_s), .type = CAT_CFG_INT,
	  .def = "10", .min = 1, .max = 600, .help = "seconds to wait for a PostgreSQL connection" },
};

#define N_CONFIG_DEFS (sizeof(config_defs) / sizeof(config_defs[0]))

int main(int argc, char **argv)
{
	publish_settings_t settings = {0};
	cat_config_t *cfg = NULL;
	char errstr[512];
	int rc;

	if (cat_config_wants_help(argc, argv)) {
		cat_config_usage(stdout, usage, config_defs, N_CONFIG_DEFS);
		return 0;
	}
	bool known = argc >= 2 && (strcmp(argv[1], "sync") == 0 || strcmp(argv[1], "backup") == 0 ||
				   strcmp(argv[1], "cache") == 0 || strcmp(argv[1], "dlq") == 0 ||
				   (strcmp(argv[1], "write") == 0 && argc <= 3));

	if (!known) {
		fprintf(stderr, "%s\n", argc < 2 ? "catalyst-publish: missing subcommand (try --help)"
						 : "catalyst-publish: unknown subcommand or extra arguments (try --help)");
		return 2;
	}
	if (cat_config_load(&cfg, config_defs, N_CONFIG_DEFS, NULL, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		return 2;
	}
	cat_config_fill(cfg, &settings);
	cat_log_init("catalyst-publish", (cat_log_level_t)cat_log_level_parse(
						 cat_config_str(cfg, "CATALYST_LOG_LEVEL")));

	if (strcmp(argv[1], "sync") == 0)
		rc = publish_sync(cfg, &settings, argc - 2, argv + 2);
	else if (strcmp(argv[1], "backup") == 0)
		rc = publish_backup(cfg, &settings, argc - 2, argv + 2);
	else if (strcmp(argv[1], "cache") == 0)
		rc = publish_cache(cfg, &settings, argc - 2, argv + 2);
	else if (strcmp(argv[1], "dlq") == 0)
		rc = publish_dlq(cfg, &settings, argc - 2, argv + 2);
	else
		rc = publish_write(cfg, &settings, argc == 3 ? argv[2] : "-");

	cat_config_destroy(cfg);
	return rc;
}
