// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The FERRY_0 functions (release 0.1) whose structs became extensible in
 * 0.2, for programs built against the old ferry.h: they call no _sized
 * function, so each entry point here names the 0.1 layout itself and goes
 * through the same rules (sized.c) as today's callers.  ferry.h now makes
 * these names macros; the functions keep the names for the dynamic
 * linker (ferry.symbols, node FERRY_0) and for old static links.
 */
#include <errno.h>

#include "sized.h"

#undef ferry_broker_opts_init
#undef ferry_broker_start
#undef ferry_broker_stats
#undef ferry_heap_stats

/* Declared here only: ferry.h has no prototypes for the old names. */
void ferry_broker_opts_init(struct ferry_broker_opts *o);
int ferry_broker_start(const struct ferry_broker_opts *o, struct ferry_broker **out);
int ferry_broker_stats(struct ferry_broker *b, struct ferry_broker_stats *out);
int ferry_heap_stats(const void *base, uint64_t size, struct ferry_heap_stats *out);

/* 0.1's init wrote the whole struct, its padding included. */
void ferry_broker_opts_init(struct ferry_broker_opts *o)
{
	struct ferry_broker_opts d;

	ferry_broker_opts_defaults(&d);
	ferry_copy_out(o, FERRY_OPTS_SIZE_V0, FERRY_OPTS_END_V0, &d, FERRY_OPTS_END);
}

/* 0.1's start read the fields and never the padding after them, which
 * old callers may have left as garbage: nothing past END is checked. */
int ferry_broker_start(const struct ferry_broker_opts *o, struct ferry_broker **out)
{
	struct ferry_broker_opts k;
	int err;

	if (!o || !out)
		return -EINVAL;
	ferry_broker_opts_defaults(&k);
	err = ferry_copy_in(&k, FERRY_OPTS_END, o, FERRY_OPTS_END_V0, FERRY_OPTS_END_V0);
	if (err)
		return err;
	return ferry_broker_start_opts(&k, out);
}

/* The stats of 0.1: 0.1's counters, no more (an old caller's struct
 * ends there); sizes that are not a _sized caller's, so no table lookup. */
int ferry_broker_stats(struct ferry_broker *b, struct ferry_broker_stats *out)
{
	struct ferry_broker_stats k;

	if (!b || !out)
		return -EINVAL;
	ferry_broker_stats_read(b, &k);
	ferry_copy_out(out, FERRY_BROKER_STATS_SIZE_V0, FERRY_BROKER_STATS_SIZE_V0, &k,
		       FERRY_BROKER_STATS_END);
	return 0;
}

int ferry_heap_stats(const void *base, uint64_t size, struct ferry_heap_stats *out)
{
	struct ferry_heap_stats k;
	int err;

	if (!out)
		return -EINVAL;
	err = ferry_heap_stats_read(base, size, &k);
	if (err)
		return err;
	ferry_copy_out(out, FERRY_HEAP_STATS_SIZE_V0, FERRY_HEAP_STATS_SIZE_V0, &k,
		       FERRY_HEAP_STATS_END);
	return 0;
}
