// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A child's side of the broker's pool (see broker_pool.c): the import,
 * made on first use (a child that never touches the pool never loads
 * CUDA), and blocks asked of the broker, which owns the offsets.
 *
 * A pool call is a request like any other on the child's ring, so it takes
 * a place in the window while it runs; replies to the child's own requests
 * that arrive meanwhile are kept, in order, for ferry_complete().
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "peer.h"

int ferry_child_pool(struct ferry_child *c, struct ferry_pool **out)
{
	struct ferry_pool_ref ref;
	int err;

	if (!c || !out)
		return -EINVAL;
	if (!c->pool) {
		if (!c->pool_ref.kind)
			return -ENOENT;
		if (!c->pool_mappable)
			return -EACCES;	/* reached through helpers only */
		ref = c->pool_ref;
		ref.fd = c->pool_fd;
		err = ferry_pool_import(&ref, &c->pool);
		if (err)
			return err;
		if (c->pool_fd >= 0)
			close(c->pool_fd);	/* the mapping is all we keep */
		c->pool_fd = -1;
	}
	*out = c->pool;
	return 0;
}

/* Send @d (an internal op) and wait for its answer. */
static int pool_call(struct ferry_child *c, struct ferry_desc *d)
{
	int err;

	if (!c->pool_ref.kind)
		return -ENOENT;
	err = ferry_child_call_internal(c, d, -1);
	return err ? err : d->status;
}

int ferry_child_pool_alloc(struct ferry_child *c, size_t n, uint64_t *off)
{
	return ferry_child_pool_alloc_timeout(c, n, 0, off);
}

/* The broker answers a waiting ALLOC by its deadline; this is only in
 * case it does not (a late block would stay held until the child ends). */
#define ALLOC_GRACE_NS (10LL * 1000000000)

int ferry_child_pool_alloc_timeout(struct ferry_child *c, size_t n, int64_t timeout_ns,
				   uint64_t *off)
{
	struct ferry_desc d = {
		.op = FERRY_OP_POOL_ALLOC, .len = n,
		.arg = { timeout_ns != 0, (uint64_t)timeout_ns },
	};
	int err;

	if (!c || !off || n == 0)
		return -EINVAL;
	if (!c->pool_ref.kind)
		return -ENOENT;
	err = ferry_child_call_internal(c, &d, timeout_ns < 0 ? -1 :
					timeout_ns > INT64_MAX - ALLOC_GRACE_NS ? -1 :
					timeout_ns + ALLOC_GRACE_NS);
	if (!err)
		err = d.status;
	if (!err)
		*off = d.offset;
	return err;
}

int ferry_child_pool_free(struct ferry_child *c, uint64_t off)
{
	struct ferry_desc d = { .op = FERRY_OP_POOL_FREE, .offset = off };

	if (!c)
		return -EINVAL;
	return pool_call(c, &d);
}

int ferry_child_pool_copy_desc(const struct ferry_child *c, enum ferry_pool_copy dir,
			       const void *region_ptr, size_t n, uint64_t block_off,
			       struct ferry_desc *d)
{
	uint64_t at = c && region_ptr ? ferry_offset(c, region_ptr) : UINT64_MAX;

	if (!d || at == UINT64_MAX || n == 0 || (dir != FERRY_POOL_PUT && dir != FERRY_POOL_GET))
		return -EINVAL;
	*d = (struct ferry_desc){
		.op = dir == FERRY_POOL_PUT ? FERRY_OP_POOL_PUT : FERRY_OP_POOL_GET,
		.offset = at, .len = n, .arg = { block_off },
	};
	return 0;
}

/* The most staging the copies of a buffer outside the region take at once. */
#define STAGE_MAX (4u << 20)

/*
 * Copy @n bytes between @buf and block bytes at @off, through the helper.
 * A buffer in the child's region goes as it is; any other is staged
 * through the region's heap in pieces.
 */
static int copy(struct ferry_child *c, enum ferry_pool_copy dir, void *buf, size_t n,
		uint64_t off)
{
	size_t piece = n < STAGE_MAX ? n : STAGE_MAX;
	uint8_t *stage = NULL;
	struct ferry_desc d;
	int err;

	if (ferry_offset(c, buf) != UINT64_MAX && ferry_offset(c, (uint8_t *)buf + n - 1) !=
	    UINT64_MAX) {
		err = ferry_child_pool_copy_desc(c, dir, buf, n, off, &d);
		if (!err)
			err = ferry_child_call_internal(c, &d, -1);
		return err ? err : d.status;
	}
	while (piece && !(stage = ferry_malloc(c, piece)))
		piece /= 2;
	if (!stage)
		return -ENOMEM;
	err = 0;
	for (size_t k = 0; k < n && !err; k += piece) {
		size_t len = n - k < piece ? n - k : piece;

		if (dir == FERRY_POOL_PUT)
			memcpy(stage, (const uint8_t *)buf + k, len);
		err = ferry_child_pool_copy_desc(c, dir, stage, len, off + k, &d);
		if (!err)
			err = ferry_child_call_internal(c, &d, -1);
		if (!err)
			err = d.status;
		if (!err && dir == FERRY_POOL_GET)
			memcpy((uint8_t *)buf + k, stage, len);
	}
	ferry_free(c, stage);
	return err;
}

int ferry_child_pool_put(struct ferry_child *c, const void *src, size_t n, uint64_t *off)
{
	int err;

	if (!c || !src || !off || n == 0)
		return -EINVAL;
	err = ferry_child_pool_alloc(c, n, off);
	if (err)
		return err;
	err = copy(c, FERRY_POOL_PUT, (void *)src, n, *off);
	if (err)
		ferry_child_pool_free(c, *off);
	return err;
}

int ferry_child_pool_get(struct ferry_child *c, uint64_t off, void *dst, size_t n)
{
	if (!c || !dst || n == 0)
		return -EINVAL;
	if (!c->pool_ref.kind)
		return -ENOENT;
	return copy(c, FERRY_POOL_GET, dst, n, off);
}
