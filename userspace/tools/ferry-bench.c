// SPDX-License-Identifier: LGPL-2.1-or-later
/* ferry-bench: benchmarks, each printing its same-run baseline. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

static const struct {
	const char *name, *what;
	int (*run)(int argc, char **argv);
} cmds[] = {
	{ "msg", "message round trips: pipe+poll vs ferry channel/broker", ferry_bench_msg },
	{ "gpu", "tensors: per-tensor CUDA IPC vs pool offsets; pinned region copies",
	  ferry_bench_gpu },
	{ "e2e", "child -> GPU helper (H2D + D2H) -> child against cuMemAllocHost copies",
	  ferry_bench_e2e },
};

int main(int argc, char **argv)
{
	if (argc >= 2) {
		for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
			if (strcmp(argv[1], cmds[i].name) == 0)
				return cmds[i].run(argc - 1, argv + 1);
	}
	bool help = argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
	FILE *f = help ? stdout : stderr;

	fprintf(f, "usage: ferry-bench COMMAND [options]   (ferry-bench COMMAND --help)\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  %-6s %s\n", cmds[i].name, cmds[i].what);
	return help ? 0 : 2;
}
