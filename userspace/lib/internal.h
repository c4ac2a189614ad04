/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What libferry's files share with each other and not with users. */
#ifndef FERRY_INTERNAL_H
#define FERRY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"

/* @n rounded up to the page size: regions and mappings come in pages. */
static inline size_t ferry_page_round(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	return (n + pg - 1) & ~(pg - 1);
}

/* CLOCK_MONOTONIC in ns: deadlines, timers, backoff. */
static inline uint64_t ferry_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* tensors.c: 0, or -EINVAL when @t is not as ferry.h says. */
int ferry_tensor_check(const struct ferry_tensor *t);

/* region.c */
int ferry_rctx_devfd(const struct ferry_rctx *rc);
int ferry_region_memfd(const struct ferry_region *r);
uint32_t ferry_region_id(const struct ferry_region *r);
/*
 * The head of a region (kmod): a second region of the same memfd over its
 * first @bytes (page-aligned), with rights of its own.  Owner:
 * ferry_region_add_head() makes it (0 and no head where none is needed:
 * memfd backend, a module without FERRY_FEAT_PIN), _grant_head() grants it
 * (0 without a head), _head_id() names it (0: none); it is destroyed with
 * the region.  Importer: ferry_region_map_head() maps head @head_id over
 * the first @bytes of its mapping (0: nothing to do); on failure the
 * caller closes the region.
 */
int ferry_region_add_head(struct ferry_region *r, size_t bytes);
int ferry_region_grant_head(struct ferry_region *r, int pidfd, unsigned int rights);
uint32_t ferry_region_head_id(const struct ferry_region *r);
int ferry_region_map_head(struct ferry_region *r, uint32_t head_id, size_t bytes);

/* child.c: set a child's end up from its control socket / tear it down */
struct ferry_child;
int ferry_child_init(struct ferry_child *c, int ctl, bool attached);
void ferry_child_fini(struct ferry_child *c);

#endif /* FERRY_INTERNAL_H */
