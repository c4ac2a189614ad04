/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* ferry-bench's subcommands and what they share. */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

int ferry_bench_msg(int argc, char **argv);
int ferry_bench_gpu(int argc, char **argv);
int ferry_bench_e2e(int argc, char **argv);
/* bench_pool_copy.c: put/get of 256 MiB through a broker's helper (GB/s). */
int bench_pool_copies(double *put_gbps, double *get_gbps);

/* CLOCK_MONOTONIC in ns. */
uint64_t bench_now_ns(void);
/* The @pct percentile (0..100) of @n samples; sorts them in place. */
double bench_pct_ns(uint64_t *v, size_t n, double pct);
double bench_median_ns(uint64_t *v, size_t n);

/* CPU time each party spent per request (µs), counted, not estimated. */
struct bench_cpu {
	double child_us, dispatch_us, helper_us;
};

/* A latency measurement: every round trip's time, and its summary. */
struct bench_lat {
	uint64_t *t;	/* n samples (ns), malloc'd; sorted once summarised */
	size_t n;
	double p50_us, p99_us, rps;
	struct bench_cpu cpu;	/* where the run counted it (else 0) */
};

/*
 * What a helper's handler does for each request in the runs with a
 * service time (ferry-bench msg --service-us): nothing (0), spin on the
 * clock (busy) or sleep (clock_nanosleep) for @ns.
 */
struct bench_service {
	uint64_t ns;
	bool sleep;
};
void bench_serve(const struct bench_service *sv);
/* This process's CPU time so far (ns), and another's from /proc (ns, or 0). */
uint64_t bench_self_cpu_ns(void);

/* The most children whose round trips one run times. */
#define BENCH_CHILDREN_MAX 1024u

/*
 * Round-trip times written by forked children into memory mapped shared
 * before the fork: child i keeps up to @n samples at t[i * n], counts them
 * in cnt[i], and stops at @deadline_ns (bench_now_ns() clock).
 */
struct bench_samples {
	unsigned int children, n;	/* n == 0: no samples kept */
	uint64_t deadline_ns;
	_Atomic int stop;		/* free-running children stop when set */
	unsigned int cnt[BENCH_CHILDREN_MAX];
	uint64_t cpu_ns[BENCH_CHILDREN_MAX];	/* each child's own, at its end */
	uint64_t t[];
};

/* Zeroed shared memory for @children (<= BENCH_CHILDREN_MAX); NULL if none. */
struct bench_samples *bench_samples_map(unsigned int children, unsigned int n,
					uint64_t deadline_ns);
void bench_samples_unmap(struct bench_samples *s);

/*
 * Packs @children slices of @t (child i's @cnt[i] samples start at
 * i * @stride) into @out and summarises them.  rps: all round trips over
 * the busiest child's summed round-trip time, so forking and start-up do
 * not count.  0, -EIO (no samples) or -ENOMEM.
 */
int bench_lat_collect(struct bench_lat *out, const uint64_t *t, const unsigned int *cnt,
		      unsigned int children, size_t stride);
/* bench_lat_collect() over the children's samples in @s. */
int bench_samples_collect(const struct bench_samples *s, struct bench_lat *out);

/*
 * The pipe+poll baselines (bench_pipe.c).  Each stops after @n round trips
 * per child or at @deadline_ns (bench_now_ns() clock), whichever is first.
 * 0 or -errno; @out->t is the caller's to free.
 */
int bench_pipe_pair(unsigned int n, uint64_t deadline_ns, struct bench_lat *out);
int bench_pipe_broker(unsigned int children, unsigned int helpers, unsigned int n,
		      uint64_t deadline_ns, const struct bench_service *sv, struct bench_lat *out);

#endif
