/*
 * catalyst-publish subcommands. Each returns the process exit code:
 * 0 all published, 1 something rejected or not delivered, 2 usage/config.
 */
#ifndef PUBLISH_PUBLISH_H
#define PUBLISH_PUBLISH_H

#include <stdio.h>

#include "cat_config.h"
#include "cat_publish.h"

/* The binary's own settings, filled from its config table (main.c binds
 * each of its rows to a field); strings are borrowed from the cat_config_t.
 * The Kafka rows are read from the cat_config_t. */
typedef struct publish_settings {
	const char *producer;	       /* CATALYST_PRODUCER */
	long long timeout_ms;	       /* CATALYST_PUBLISH_TIMEOUT_MS */
	const char *pg_url;	       /* CATALYST_PG_URL, for dlq: NULL when unset */
	long long pg_connect_timeout_s; /* CATALYST_PG_CONNECT_TIMEOUT_S */
} publish_settings_t;

/* The publisher of every subcommand: client.id catalyst-publish,
 * CATALYST_PRODUCER, CATALYST_PUBLISH_TIMEOUT_MS; `report` sees each
 * delivery report. NULL after printing why it could not be made. */
cat_publish_t *publish_open(const cat_config_t *cfg, const publish_settings_t *settings,
			    cat_publish_report_fn report, void *opaque);

/* Publishes one line's command (ref: its line number), as a typed call of
 * cat_publish does. */
typedef cat_err_t (*publish_line_fn)(void *opaque, cat_publish_t *publish, Catalyst__V1__WriteCommand *cmd,
				     void *ref, char *errstr, size_t errstr_size);

/* The JSON write lines of `path` ("-": stdin), each one's WriteCommand
 * (meta.producer CATALYST_PRODUCER when the line names none) handed to
 * send(opaque, ...) on a publisher whose delivery reports go to `report`;
 * then waits for the reports and prints "published N, rejected M" (and
 * ", not delivered K"). A blank line is skipped; a line longer than
 * CAT_CODEC_MAX_MESSAGE_BYTES, one that does not decode and one send()
 * refuses are reported as `line N: reason`, and a fatal refusal ends the
 * reading. Exit code: 0 every line delivered, 1 not, 2 the file or the
 * publisher could not be opened. */
int publish_lines(const cat_config_t *cfg, const publish_settings_t *settings, const char *path,
		  cat_publish_report_fn report, publish_line_fn send, void *opaque);

/* write [FILE|-] */
int publish_write(const cat_config_t *cfg, const publish_settings_t *settings, const char *path);

/* sync check|resync|replicate ...: argv[0] is the action. */
int publish_sync(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv);

/* catalyst-publish backup ACTION ...: argv after "backup" (see backup.c). */
int publish_backup(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv);

/* argv: the words after "cache" */
int publish_cache(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv);

/* dlq list|show|replay ...: argv after "dlq" (see dlq.c). */
int publish_dlq(const cat_config_t *cfg, const publish_settings_t *settings, int argc, char **argv);

#endif /* PUBLISH_PUBLISH_H */
