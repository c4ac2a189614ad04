/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A stream-safe allocator of offsets in [0, size): the bookkeeping behind
 * a pool whose bytes live elsewhere (GPU memory, a shared memfd).  Nothing
 * is stored in the pool itself; callers exchange offsets.
 *
 * Streams are opaque (a CUstream, or NULL for "no asynchronous work").  A
 * block belongs to the stream it was allocated on.  Other streams that
 * used it are named with ferry_palloc_record_stream(); freeing such a
 * block records an event on each of them and the block stays out of reach
 * until they have all completed (a deferred free).  A block freed with no
 * foreign streams is free at once.  Reusing a free block from a different
 * stream than its last one first makes the new stream wait for the old
 * one (ops->wait), so stream order is never broken; blocks of different
 * streams are not merged.
 *
 * Allocation: segregated free lists by power-of-two class with a bitmap
 * (O(1)), splitting and merging neighbours.  An allocation that does not
 * fit reclaims completed deferred frees, then retries; then orders its
 * stream after the streams that left free blocks apart (so they can be
 * merged) and retries; then fails with -ENOMEM.  Not thread-safe: callers hold their own (short) lock; no
 * operation sleeps (event queries never block).
 */
#ifndef FERRY_PALLOC_H
#define FERRY_PALLOC_H

#include <stddef.h>
#include <stdint.h>

struct ferry_palloc_ops {
	/* Record an event on @stream now; 0 and *@ev, or -errno. */
	int (*record)(void *ctx, void *stream, void **ev);
	/* 1 when @ev completed, 0 if not yet, -errno on error (taken as done). */
	int (*query)(void *ctx, void *ev);
	void (*destroy)(void *ctx, void *ev);
	/* Make @waiter wait for the work queued on @stream so far; 0 or -errno. */
	int (*wait)(void *ctx, void *waiter, void *stream);
};

struct ferry_palloc_stats {
	uint64_t size;		/* bytes managed */
	uint64_t live;		/* bytes in live blocks */
	uint64_t deferred;	/* bytes waiting for foreign streams */
	uint64_t nlive, ndeferred;
	uint64_t allocs, frees, deferred_frees, reclaimed, retries, oom;
	uint64_t cross_stream_waits;
	uint64_t laundered;	/* OOM: free blocks of other streams handed over */
};

struct ferry_palloc;

/*
 * Manage [0, @size) in units of @align bytes (a power of two >= 64).
 * @ops may be NULL when every stream passed will be NULL.
 */
int ferry_palloc_create(uint64_t size, uint64_t align, const struct ferry_palloc_ops *ops,
			void *ctx, struct ferry_palloc **out);
/* Frees everything; events still pending are destroyed without waiting. */
void ferry_palloc_destroy(struct ferry_palloc *a);
/* @n bytes for @stream: 0 and *@off, -EINVAL for n == 0 or too big, -ENOMEM. */
int ferry_palloc_alloc(struct ferry_palloc *a, uint64_t n, void *stream, uint64_t *off);
/* Another stream used the block at @off: -ENOENT if no live block starts there. */
int ferry_palloc_record_stream(struct ferry_palloc *a, uint64_t off, void *stream);
/* Free the live block at @off (deferred if foreign streams used it); -ENOENT. */
int ferry_palloc_free(struct ferry_palloc *a, uint64_t off);
/* Size of the live block at @off, or 0. */
uint64_t ferry_palloc_block_size(const struct ferry_palloc *a, uint64_t off);
/* Return completed deferred frees to the free lists; how many. */
unsigned int ferry_palloc_reclaim(struct ferry_palloc *a);
void ferry_palloc_stats(const struct ferry_palloc *a, struct ferry_palloc_stats *out);

/*
 * pool.c: an allocator of [0, @size) that keeps @p's alignment and knows
 * its streams (CUDA events for a GPU pool, none for a CPU pool): what a
 * helper sub-allocates its arena of the broker's pool with.
 */
struct ferry_pool;
int ferry_pool_sub_allocator(struct ferry_pool *p, uint64_t size, struct ferry_palloc **out);

#endif /* FERRY_PALLOC_H */
