// SPDX-License-Identifier: LGPL-2.1-or-later
#include <stdio.h>
#include <unistd.h>

#include "cpu_clock.h"

/* /proc/<pid>/schedstat's first field: ns on a CPU; else stat's ticks. */
uint64_t tools_pid_cpu_ns(pid_t pid)
{
	char path[64];
	unsigned long long ns = 0, ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	f = fopen(path, "r");
	if (f) {
		int n = fscanf(f, "%llu", &ns);

		fclose(f);
		if (n == 1)
			return ns;
	}
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	/* After "(comm)", which may hold spaces: fields 14 and 15. */
	if (fscanf(f, "%*d (%*[^)]) %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   &ut, &st) != 2)
		ut = st = 0;
	fclose(f);
	return (ut + st) * (1000000000ull / (unsigned long long)sysconf(_SC_CLK_TCK));
}
