/*
 * cat_event: what workers report on events.v1 (an Event each: a check's
 * report, a backup started/completed/failed/verified/pruned, a migration
 * applied).
 *
 * An event is keyed by its subject, so the events of one backup or one
 * table stay in order. Its event_id derives from (worker, kind, subject,
 * command_id) when the command is known, so the event a redelivered command
 * repeats carries the same id and readers can drop the duplicate.
 */
#ifndef CAT_EVENT_H
#define CAT_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cat_err.h"
#include "cat_kafka.h"

typedef struct cat_event_attr {
	const char *key;
	const char *value;
} cat_event_attr_t;

typedef struct cat_event_counter {
	const char *key;
	int64_t value;
} cat_event_counter_t;

typedef struct cat_event {
	const char *kind;	/* e.g. "backup.completed", "sync.check.report" */
	const char *subject;	/* e.g. the backup id or the table */
	const char *command_id; /* the command that caused it; NULL: none */
	bool ok;
	const char *message; /* one line for people; NULL: none */
	const cat_event_attr_t *attrs;
	size_t n_attrs;
	const cat_event_counter_t *counters;
	size_t n_counters;
} cat_event_t;

/* Encodes `event` as an Event from `worker` and sends it to `topic` (the
 * events.v1 name) with `producer`; waits for its delivery report up to
 * timeout_ms. CAT_ERR_RETRIABLE when it was not acknowledged in time. */
cat_err_t cat_event_publish(cat_producer_t *producer, const char *topic, const char *worker,
			    const cat_event_t *event, int timeout_ms, char *errstr,
			    size_t errstr_size) CAT_MUST_CHECK;

/* The event_id cat_event_publish() gives `event` (37 bytes with the NUL). */
void cat_event_id(const char *worker, const cat_event_t *event, char *buf, size_t buf_size);

#endif /* CAT_EVENT_H */
