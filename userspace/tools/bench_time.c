// SPDX-License-Identifier: LGPL-2.1-or-later
/* ferry-bench: the clock and the percentiles every measurement uses. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

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

/* The @pct percentile of @n samples already sorted. */
static double pct_sorted(const uint64_t *v, size_t n, double pct)
{
	size_t k = (size_t)(pct / 100.0 * (double)n);

	return n ? (double)v[k < n ? k : n - 1] : 0;
}

double bench_pct_ns(uint64_t *v, size_t n, double pct)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	return pct_sorted(v, n, pct);
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
	out->p50_us = bench_pct_ns(out->t, out->n, 50) / 1000.0;	/* sorts them */
	out->p99_us = pct_sorted(out->t, out->n, 99) / 1000.0;
	out->rps = busy_max ? out->n / (busy_max / 1e9) : 0;
	return 0;
}

static size_t samples_bytes(unsigned int children, unsigned int n)
{
	return sizeof(struct bench_samples) + (size_t)children * n * sizeof(uint64_t);
}

struct bench_samples *bench_samples_map(unsigned int children, unsigned int n,
					uint64_t deadline_ns)
{
	struct bench_samples *s;

	if (children > BENCH_CHILDREN_MAX)
		return NULL;
	s = mmap(NULL, samples_bytes(children, n), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s == MAP_FAILED)
		return NULL;
	s->children = children;
	s->n = n;
	s->deadline_ns = deadline_ns;
	return s;
}

void bench_samples_unmap(struct bench_samples *s)
{
	munmap(s, samples_bytes(s->children, s->n));
}

int bench_samples_collect(const struct bench_samples *s, struct bench_lat *out)
{
	return bench_lat_collect(out, s->t, s->cnt, s->children, s->n);
}

void bench_serve(const struct bench_service *sv)
{
	uint64_t end;

	if (!sv || !sv->ns)
		return;
	if (sv->sleep) {
		struct timespec ts = { .tv_sec = (time_t)(sv->ns / 1000000000),
				       .tv_nsec = (long)(sv->ns % 1000000000) };

		while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
			;
		return;
	}
	end = bench_now_ns() + sv->ns;
	while (bench_now_ns() < end)
		;
}

uint64_t bench_self_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
