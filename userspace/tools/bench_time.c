// SPDX-License-Identifier: LGPL-2.1-or-later
/* ferry-bench: the clock and the percentiles every measurement uses. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

double bench_pct_ns(uint64_t *v, size_t n, double pct)
{
	size_t k;

	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	k = (size_t)(pct / 100.0 * (double)n);
	return (double)v[k < n ? k : n - 1];
}

double bench_median_ns(uint64_t *v, size_t n)
{
	return bench_pct_ns(v, n, 50);
}

int bench_lat_collect(struct bench_lat *out, const uint64_t *t, const unsigned int *cnt,
		      unsigned int children, size_t stride)
{
	uint64_t busy_max = 0;
	size_t total = 0;

	for (unsigned int i = 0; i < children; i++)
		total += cnt[i];
	if (!total)
		return -EIO;
	out->t = malloc(total * sizeof(*out->t));
	if (!out->t)
		return -ENOMEM;
	out->n = 0;
	for (unsigned int i = 0; i < children; i++) {
		const uint64_t *ti = t + i * stride;
		uint64_t busy = 0;

		for (unsigned int k = 0; k < cnt[i]; k++)
			busy += ti[k];
		if (busy > busy_max)
			busy_max = busy;
		memcpy(out->t + out->n, ti, cnt[i] * sizeof(*ti));
		out->n += cnt[i];
	}
	out->p50_us = bench_pct_ns(out->t, out->n, 50) / 1000.0;
	out->p99_us = bench_pct_ns(out->t, out->n, 99) / 1000.0;
	out->rps = busy_max ? out->n / (busy_max / 1e9) : 0;
	return 0;
}
