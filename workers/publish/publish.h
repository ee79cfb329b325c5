/*
 * catalyst-publish subcommands. Each returns the process exit code:
 * 0 all published, 1 something rejected or not delivered, 2 usage/config.
 */
#ifndef PUBLISH_PUBLISH_H
#define PUBLISH_PUBLISH_H

#include <stdio.h>

#include "cat_config.h"
#include "cat_publish.h"

/* The publisher of every subcommand: client.id catalyst-publish,
 * CATALYST_PRODUCER, CATALYST_PUBLISH_TIMEOUT_MS; `report` sees each
 * delivery report. NULL after printing why it could not be made. */
cat_publish_t *publish_open(const cat_config_t *cfg, cat_publish_report_fn report, void *opaque);

int publish_write(const cat_config_t *cfg, const char *path);

/* sync check|resync|replicate ...: argv[0] is the action. */
int publish_sync(const cat_config_t *cfg, int argc, char **argv);

/* catalyst-publish backup ACTION ...: argv after "backup" (see backup.c). */
int publish_backup(const cat_config_t *cfg, int argc, char **argv);

/* argv: the words after "cache" */
int publish_cache(const cat_config_t *cfg, int argc, char **argv);

/* dlq list|show|replay ...: argv after "dlq" (see dlq.c). */
int publish_dlq(const cat_config_t *cfg, int argc, char **argv);

#endif /* PUBLISH_PUBLISH_H */
