#include "cat_backoff.h"

#include <stdlib.h>

int64_t cat_backoff_ceiling(int64_t base, int64_t max, int attempt)
{
	int64_t ceiling = base;

	if (base <= 0 || max <= 0)
		return 0;
	for (int i = 0; i < attempt && ceiling < max; i++)
		ceiling = ceiling > max / 2 ? max : ceiling * 2;
	return ceiling < max ? ceiling : max;
}

int64_t cat_backoff_delay(int64_t base, int64_t max, int attempt)
{
	int64_t half = cat_backoff_ceiling(base, max, attempt) / 2;

	return half + (int64_t)rand() % (half + 1);
}
