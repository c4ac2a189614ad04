/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* ferry-bench's subcommands. */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

int ferry_bench_msg(int argc, char **argv);
int ferry_bench_gpu(int argc, char **argv);

#endif
