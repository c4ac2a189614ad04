/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * ferry-demo's two paths for the same job: ferry (demo_ferry.c) and the
 * classic design it replaces, pipes and poll() (demo_classic.c); and what
 * the main program (ferry-demo.c) gives both.
 */
#ifndef FERRY_DEMO_PATHS_H
#define FERRY_DEMO_PATHS_H

#include <sys/types.h>

#include "demo_run.h"

struct demo_path_info {
	char backend[16];	/* ferry: the region backend it used */
	double seconds;		/* go -> every child drained */
	int failed;		/* children that exited non-zero */
	uint64_t bad_desc;	/* ferry: malformed descriptors or replies */
};

/* Run the job once over each path: 0 or -errno (then said on stderr). */
int demo_ferry_run(const struct demo_cfg *c, struct demo_run *r, struct demo_path_info *info);
int demo_classic_run(const struct demo_cfg *c, struct demo_run *r, struct demo_path_info *info);

/* ferry-demo.c: the header line of one path's run. */
void demo_say_start(const char *path, const char *how);
/*
 * ferry-demo.c: start the clock (r->go), show progress, stop it after
 * --seconds and wait until every child has drained its window.  Seconds
 * from go to drained, or -1 when the children did not drain in time (or
 * @broker, a process to watch, ended first).
 */
double demo_timed_part(const struct demo_cfg *c, struct demo_run *r, const char *path,
		       pid_t broker);

#endif
