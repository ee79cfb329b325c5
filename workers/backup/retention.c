/*
 * Retention tiers (the seed's: hourly 24 h, daily 7 d, weekly 90 d). A
 * completed backup is kept when any tier keeps it:
 *   hourly   the newest backup of each clock hour of the last 24 hours
 *            (any kind);
 *   daily    the newest full backup of each UTC day of the last 7 days;
 *   weekly   the newest full backup of each ISO week (Monday to Sunday) of
 *            the last 90 days;
 *   verified the newest backup whose verification passed, whatever its age;
 *   chain    what a kept incremental backup needs to be restored: the
 *            backups before it back to and including the last full or
 *            non-incremental table backup.
 *   newest   the newest `keep_full` full backups (CATALYST_BACKUP_KEEP_FULL),
 *            whatever their age and whatever `now` says.
 * Backups newer than `now` (a clock injected by a test) are kept.
 */
#include <string.h>

#include "backup.h"

#define HOUR_US (3600LL * 1000000)
#define DAY_US (24 * HOUR_US)

static int64_t floor_div(int64_t a, int64_t b)
{
	return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* Keeps the newest item of each bucket among items[i] with finished_us in
 * (since, now] and kind matching (NULL: any). */
static void keep_newest_per_bucket(backup_retention_item_t *items, size_t n, int64_t now_us, int64_t since_us,
				   const char *kind, int64_t bucket_us, int64_t offset_us, const char *why)
{
	int64_t last_bucket = INT64_MIN;

	/* newest first: the first item met in a bucket is its newest */
	for (size_t k = n; k-- > 0;) {
		backup_retention_item_t *it = &items[k];
		int64_t bucket;

		if (it->finished_us > now_us || it->finished_us <= since_us)
			continue;
		if (kind && strcmp(it->kind, kind) != 0)
			continue;
		bucket = floor_div(it->finished_us + offset_us, bucket_us);
		if (bucket == last_bucket)
			continue;
		last_bucket = bucket;
		if (!it->keep) {
			it->keep = true;
			it->why = why;
		}
	}
}

void backup_retention_select(backup_retention_item_t *items, size_t n, int64_t now_us, int keep_full)
{
	int fulls = 0;

	for (size_t i = 0; i < n; i++) {
		items[i].keep = items[i].finished_us > now_us;
		items[i].why = items[i].keep ? "future" : "";
	}
	keep_newest_per_bucket(items, n, now_us, now_us - DAY_US, NULL, HOUR_US, 0, "hourly");
	keep_newest_per_bucket(items, n, now_us, now_us - 7 * DAY_US, "full", DAY_US, 0, "daily");
	/* 1970-01-01 was a Thursday: +3 days puts week starts on Mondays */
	keep_newest_per_bucket(items, n, now_us, now_us - 90 * DAY_US, "full", 7 * DAY_US, 3 * DAY_US, "weekly");
	for (size_t k = n; k-- > 0;)
		if (items[k].verified && items[k].finished_us <= now_us) {
			if (!items[k].keep) {
				items[k].keep = true;
				items[k].why = "verified";
			}
			break;
		}
	for (size_t k = n; k-- > 0 && fulls < keep_full;) {
		if (strcmp(items[k].kind, "full") != 0)
			continue;
		fulls++;
		if (!items[k].keep) {
			items[k].keep = true;
			items[k].why = "newest";
		}
	}
	/* a kept incremental keeps its chain */
	for (size_t k = n; k-- > 0;) {
		if (!items[k].keep || strcmp(items[k].kind, "incremental") != 0)
			continue;
		for (size_t j = k; j-- > 0;) {
			if (!items[j].keep) {
				items[j].keep = true;
				items[j].why = "chain";
			}
			if (strcmp(items[j].kind, "incremental") != 0)
				break;
		}
	}
}
