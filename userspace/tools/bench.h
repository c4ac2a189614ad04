/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* ferry-bench's subcommands. */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

#include <stddef.h>
#include <stdint.h>

int ferry_bench_msg(int argc, char **argv);
int ferry_bench_gpu(int argc, char **argv);

/* CLOCK_MONOTONIC in ns; the median of @n samples (sorts them in place). */
uint64_t bench_now_ns(void);
double bench_median_ns(uint64_t *v, size_t n);

#endif
