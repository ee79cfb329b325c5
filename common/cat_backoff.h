/*
 * cat_backoff: the one retry delay policy of the fleet.
 *
 * Exponential backoff with equal jitter: the n-th retry (n from 0) waits
 * uniformly in [ceiling / 2, ceiling], where ceiling = base doubled n times,
 * at most max. Half the delay is fixed, so retries always slow down as
 * failures repeat; half is random, so workers failing together (a broker or
 * database restart) do not come back all at once.
 *
 *   attempt   0      1       2       ...   k with base * 2^k >= max
 *   ceiling   base   2*base  4*base  ...   max
 *
 * Used by the consumer loop (a batch's transient failures, settling) and by
 * cat_s3 (a request's transient failures).
 */
#ifndef CAT_BACKOFF_H
#define CAT_BACKOFF_H

#include <stdint.h>

/* base * 2^attempt, at most max (without overflow, for any attempt); 0
 * when base or max is not positive. */
int64_t cat_backoff_ceiling(int64_t base, int64_t max, int attempt);

/* The delay of retry `attempt` (0: the first retry), in the unit of base
 * and max: uniform in [ceiling / 2, ceiling] (an odd ceiling: its integer
 * half, twice; rand(), seeded by the caller). */
int64_t cat_backoff_delay(int64_t base, int64_t max, int attempt);

#endif /* CAT_BACKOFF_H */
