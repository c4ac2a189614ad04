// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A batch's tensors in one buffer: ferry_helper_gather() copies one entry
 * of each request's checked table, back to back, into a buffer of the
 * helper's (device memory on a GPU helper, host memory on a CPU one), and
 * ferry_helper_scatter() copies such a buffer back out into each
 * request's entry.  One call for the batch, so that a handler in Python
 * pays for one call, not for a tensor object and a copy per request; on a
 * GPU every copy is queued on the stream (from pinned regions) and the
 * caller defers its replies there.
 *
 * Everything is checked before the first copy is queued: each request in
 * hand, its entry contiguous, the whole inside the buffer.  A half-done
 * batch copy is never left behind by a bad argument.
 */
#include <errno.h>
#include <string.h>

#include "cuda_api.h"
#include "peer.h"

/* opts.helper_depth's bound (broker.c): no batch holds more. */
#define FERRY_BATCH_MAX 1024

/* Bytes of a C-contiguous entry, or 0 for a strided one. */
static uint64_t contiguous_bytes(const struct ferry_tensor *t)
{
	uint64_t count = 1;
	bool strided = false;

	for (unsigned int d = 0; d < t->ndim; d++)
		strided |= t->strides[d] != 0;
	for (int d = (int)t->ndim - 1; d >= 0; d--) {
		if (strided && (uint64_t)t->strides[d] != count)
			return 0;
		count *= (uint64_t)t->shape[d];	/* the broker checked: no overflow */
	}
	return count * ferry_dtype_size(t->dtype);
}

/* Entry @e of each request: where it is here, how many bytes, and the sum. */
static int64_t plan(struct ferry_helper *h, const struct ferry_desc *const *req, unsigned int n,
		    unsigned int e, uint64_t *addr, uint64_t *bytes, bool *in_pool)
{
	uint64_t total = 0;

	for (unsigned int k = 0; k < n; k++) {
		const struct ferry_tensor *t;
		int m;

		if (!req[k] || ferry_hcur_index(h, req[k]) < 0)
			return -EINVAL;	/* not a request in hand */
		m = ferry_helper_tensors(h, req[k], &t);
		if (m < 0 || e >= (unsigned int)m)
			return -EINVAL;
		bytes[k] = contiguous_bytes(&t[e]);
		if (!bytes[k])
			return -EINVAL;
		in_pool[k] = t[e].where == FERRY_IN_POOL;
		addr[k] = ferry_helper_tensor_addr(h, req[k], &t[e]);
		if (!addr[k])
			return -EFAULT;
		total += bytes[k];
	}
	return (int64_t)total;
}

static int64_t batch_copy(struct ferry_helper *h, const struct ferry_desc *const *req,
			  unsigned int n, unsigned int e, uint64_t buf, size_t cap, void *stream,
			  bool gather)
{
	uint64_t addr[FERRY_BATCH_MAX], bytes[FERRY_BATCH_MAX], at = 0;
	bool in_pool[FERRY_BATCH_MAX];
	int64_t total;

	if (!h || !req || !n || n > h->ncur || n > FERRY_BATCH_MAX || !buf ||
	    (stream && h->gpu < 0))
		return -EINVAL;
	total = plan(h, req, n, e, addr, bytes, in_pool);
	if (total < 0)
		return total;
	if ((uint64_t)total > cap)
		return -ENOSPC;
	for (unsigned int k = 0; k < n; at += bytes[k], k++) {
		CUresult r;

		if (h->gpu < 0) {
			void *mine = (void *)(uintptr_t)(buf + at), *its = (void *)(uintptr_t)addr[k];

			memcpy(gather ? mine : its, gather ? its : mine, bytes[k]);
			continue;
		}
		if (in_pool[k])
			r = h->cu->cuMemcpyDtoDAsync(gather ? buf + at : addr[k],
						     gather ? addr[k] : buf + at, bytes[k],
						     (CUstream)stream);
		else if (gather)
			r = h->cu->cuMemcpyHtoDAsync(buf + at, (const void *)(uintptr_t)addr[k],
						     bytes[k], (CUstream)stream);
		else
			r = h->cu->cuMemcpyDtoHAsync((void *)(uintptr_t)addr[k], buf + at, bytes[k],
						     (CUstream)stream);
		if (r) {
			/* The driver's: let the copies queued before it end, so
			 * that a reply sent at once frees nothing still in use. */
			h->cu->cuStreamSynchronize((CUstream)stream);
			return ferry_cuda_errno(r);
		}
	}
	return total;
}

int64_t ferry_helper_gather(struct ferry_helper *h, const struct ferry_desc *const *req,
			    unsigned int n, unsigned int entry, uint64_t dst, size_t cap,
			    void *stream)
{
	return batch_copy(h, req, n, entry, dst, cap, stream, true);
}

int64_t ferry_helper_scatter(struct ferry_helper *h, const struct ferry_desc *const *req,
			     unsigned int n, unsigned int entry, uint64_t src, size_t cap,
			     void *stream)
{
	return batch_copy(h, req, n, entry, src, cap, stream, false);
}
