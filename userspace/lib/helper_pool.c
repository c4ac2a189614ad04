// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A helper's arena of the pool: outputs whose size only the model knows
 * (ferry_helper_pool_alloc), made by the helper for the requesting child
 * with no round trip to anyone.
 *
 * The broker owns the pool's offsets; it gives each helper incarnation one
 * range (the arena, described on the arena page at the end of the helper's
 * channel region), which the helper sub-allocates with a stream-aware
 * allocator of its own.  Each block it makes is announced to the broker
 * (FERRY_OP_POOL_GRANT) ahead of the reply on the same ring, so the broker
 * knows it before the child can name it; with a successful reply the block
 * becomes the child's, like one it allocated.  Blocks children free come
 * back on the arena page, and are taken back here before each allocation.
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>

#include "palloc.h"
#include "peer.h"

/* The arena, once the broker has said where it is: 0, or -ENOMEM/-ENOENT. */
static int arena_open(struct ferry_helper *h)
{
	const struct ferry_arena_shm *shm = h->arena_shm;

	if (h->arena)
		return 0;
	if (!h->pool)
		return -ENOENT;
	/* No arena: the pool had no room left for one when this helper started. */
	if (!atomic_load_explicit((_Atomic uint32_t *)&shm->ready, memory_order_acquire))
		return -ENOMEM;
	if (shm->size > ferry_pool_size(h->pool) || shm->off > ferry_pool_size(h->pool) - shm->size)
		return -EPROTO;
	h->arena_off = shm->off;
	h->arena_size = shm->size;
	return ferry_pool_sub_allocator(h->pool, h->arena_size, &h->arena);
}

/* Take back the blocks children freed since the last look. */
static void take_back(struct ferry_helper *h)
{
	struct ferry_arena_shm *shm = h->arena_shm;
	uint64_t tail = shm->tail;
	uint64_t head = atomic_load_explicit((_Atomic uint64_t *)&shm->head, memory_order_acquire);

	for (; tail != head; tail++) {
		uint64_t off = shm->ret[tail % FERRY_ARENA_RETURNS];

		if (off >= h->arena_off && off - h->arena_off < h->arena_size)
			ferry_palloc_free(h->arena, off - h->arena_off);
	}
	atomic_store_explicit((_Atomic uint64_t *)&shm->tail, tail, memory_order_release);
}

int ferry_helper_pool_alloc(struct ferry_helper *h, const struct ferry_desc *req, size_t n,
			    void *stream, uint64_t *off)
{
	int k = h && req ? ferry_hcur_index(h, req) : -1;
	struct hreq *st;
	struct ferry_desc g;
	uint64_t local;
	int err;

	if (k < 0 || !off || !n)
		return -EINVAL;	/* outside a handler, or not a request in hand */
	st = &h->cur_st[k];
	if (st->ngrant == FERRY_HELPER_ALLOCS_MAX)
		return -ENOSPC;
	if (stream && h->gpu < 0)
		return -EINVAL;
	err = arena_open(h);
	if (err)
		return err;
	take_back(h);
	err = ferry_palloc_alloc(h->arena, n, stream, &local);
	if (err == -EINVAL)
		err = -ENOMEM;	/* larger than the whole arena */
	if (err)
		return err;
	*off = h->arena_off + local;
	/* The broker hears of it before the reply can name it (same ring). */
	g = (struct ferry_desc){
		.op = FERRY_OP_POOL_GRANT, .tag = req->tag, .region = req->region,
		.offset = *off, .len = ferry_palloc_block_size(h->arena, local),
	};
	while (ferry_chan_send(&h->ch, &g) == -EAGAIN)
		sched_yield();
	st->grant_off[st->ngrant] = *off;
	st->grant_len[st->ngrant] = n;
	st->ngrant++;
	return 0;
}
