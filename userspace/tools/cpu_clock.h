/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* CPU time of another process, for the tools' CPU-per-request figures. */
#ifndef FERRY_TOOLS_CPU_CLOCK_H
#define FERRY_TOOLS_CPU_CLOCK_H

#include <stdint.h>
#include <sys/types.h>

/* ns @pid has spent on a CPU (0 if it cannot be read). */
uint64_t tools_pid_cpu_ns(pid_t pid);

#endif /* FERRY_TOOLS_CPU_CLOCK_H */
