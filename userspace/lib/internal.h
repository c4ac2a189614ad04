/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What libferry's files share with each other and not with users. */
#ifndef FERRY_INTERNAL_H
#define FERRY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include "ferry.h"

/* @n rounded up to the page size: regions and mappings come in pages. */
static inline size_t ferry_page_round(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	return (n + pg - 1) & ~(pg - 1);
}

/* region.c */
int ferry_rctx_devfd(const struct ferry_rctx *rc);
int ferry_region_memfd(const struct ferry_region *r);
uint32_t ferry_region_id(const struct ferry_region *r);

/* child.c: set a child's end up from its control socket / tear it down */
struct ferry_child;
int ferry_child_init(struct ferry_child *c, int ctl, bool attached);
void ferry_child_fini(struct ferry_child *c);

#endif /* FERRY_INTERNAL_H */
