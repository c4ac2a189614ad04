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

#include "cuda_api.h"
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

int ferry_child_pool_put(struct ferry_child *c, const void *src, size_t n, uint64_t *off)
{
	struct ferry_pool *p;
	struct ferry_cuda *cu;
	uint64_t addr;
	int err;

	if (!c || !src || !off || n == 0)
		return -EINVAL;
	err = ferry_child_pool(c, &p);
	if (!err)
		err = ferry_child_pool_alloc(c, n, off);
	if (err)
		return err;
	addr = ferry_pool_addr(p, *off, n);
	if (!addr) {
		err = -EPROTO;	/* the broker gave a block outside the pool */
	} else if (ferry_pool_kind(p) == FERRY_POOL_CPU) {
		memcpy((void *)(uintptr_t)addr, src, n);
	} else {
		err = ferry_cuda_get(&cu);
		if (!err)
			err = ferry_cuda_use_device(cu, c->pool_ref.device);
		if (!err)
			err = ferry_cuda_errno(cu->cuMemcpyHtoD((CUdeviceptr)addr, src, n));
		/*
		 * From pageable memory the copy returns once the bytes are
		 * staged, before they reach the device; a helper in another
		 * context that reads the block next would see old bytes.
		 */
		if (!err)
			err = ferry_cuda_errno(cu->cuCtxSynchronize());
	}
	if (err)
		ferry_child_pool_free(c, *off);
	return err;
}
