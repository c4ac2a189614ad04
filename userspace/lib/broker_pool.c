// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The broker's pools: one per GPU (or one CPU pool on a host without GPUs),
 * each one allocation made once and imported once by every helper and
 * child; tensors travel as (offset, len) with FERRY_DESC_POOL.
 *
 * Who owns what:
 *   memory     GPU pools are made by the first helper of their GPU (the
 *              broker never touches CUDA) and exported to the broker as a
 *              VMM fd, which the broker keeps: the allocation outlives that
 *              helper, and a restarted helper imports it like the others.
 *              The CPU pool is a sealed memfd the broker makes itself.
 *   offsets    the broker's allocator, without CUDA.  Every block belongs
 *              to one child.  A block a child frees in a GPU pool is held
 *              (quarantine) until every helper of the pool has fenced its
 *              streams past the free: a handler may have replied while
 *              work it queued on a stream still touches the block (a reply
 *              it did not defer), and that work must end before the block
 *              is another child's.  Fences are asked at most every
 *              FENCE_EVERY_NS, at once when an allocation finds no room.
 *              Each helper also gets an arena, one range of its pool that
 *              it sub-allocates itself for outputs only it can size
 *              (ferry_helper_pool_alloc): a block it makes becomes the
 *              child's with the reply (FERRY_OP_POOL_GRANT ahead of it),
 *              and goes back to the helper, through its arena page, when
 *              the child frees it.
 *   checking   a FERRY_DESC_POOL descriptor's range must lie in a block of
 *              the child that sent it; while requests naming a block are at
 *              helpers it cannot be freed (-EBUSY), so it is never handed to
 *              another child under a helper's feet.  A dead child's blocks
 *              are freed when its last request is back.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker_internal.h"
#include "palloc.h"

#define POOL_ALIGN 256		/* what cudaMalloc guarantees */
#define MAX_BLOCKS 65536	/* live blocks one child may hold */
#define CREATE_TIMEOUT_MS 120000	/* a helper's CUDA start-up can be slow */
#define FENCE_EVERY_NS (1000 * 1000)	/* quarantined blocks: ask helpers to fence */
#define FENCE_LOOK_NS (200 * 1000)	/* ... and look again, under pressure */
#define FENCE_GRACE_NS (1000LL * 1000 * 1000)	/* a last try waits this for fences */

unsigned int ferry_bpool_of_child(const struct ferry_broker *b, unsigned int i)
{
	if (!b->ngpus)
		return 0;
	return b->o.gpu >= 0 ? (unsigned int)b->o.gpu : i % (unsigned int)b->ngpus;
}

unsigned int ferry_bpool_of_helper(const struct ferry_broker *b, unsigned int h)
{
	return b->ngpus ? (unsigned int)ferry_helper_gpu_of(b, h) : 0;
}

static int pool_ready(struct ferry_broker *b, struct bpool *p, const struct ferry_pool_ref *ref,
		      int fd)
{
	int err = ferry_palloc_create(ref->size, POOL_ALIGN, NULL, NULL, &p->alloc);

	if (err)
		return err;
	p->ref = *ref;
	p->ref.fd = fd;
	p->made = true;
	(void)b;
	return 0;
}

int ferry_bpool_setup(struct ferry_broker *b)
{
	struct ferry_pool_ref ref;
	int err;

	if (!b->o.pool_size)
		return 0;
	b->npools = b->ngpus ? (unsigned int)b->ngpus : 1;
	b->pool = calloc(b->npools, sizeof(*b->pool));
	if (!b->pool)
		return -ENOMEM;
	for (unsigned int g = 0; g < b->npools; g++)
		b->pool[g].ref.fd = -1;
	if (b->ngpus)
		return 0;	/* made by each GPU's first helper */
	err = ferry_pool_create(FERRY_POOL_CPU, -1, b->o.pool_size, &b->pool[0].cpu);
	if (!err)
		err = ferry_pool_export(b->pool[0].cpu, &ref);
	if (!err) {
		err = pool_ready(b, &b->pool[0], &ref, ref.fd);
		if (err)
			close(ref.fd);
	}
	return err;
}

void ferry_bpool_destroy(struct ferry_broker *b)
{
	for (unsigned int g = 0; b->pool && g < b->npools; g++) {
		struct bpool *p = &b->pool[g];

		if (p->ref.fd >= 0)
			close(p->ref.fd);
		if (p->alloc)
			ferry_palloc_destroy(p->alloc);
		if (p->cpu)
			ferry_pool_close(p->cpu);
		free(p->waiters);
		free(p->quar);
		for (unsigned int k = 0; k < p->narenas; k++)
			free(p->arenas[k].backlog);
		free(p->arenas);
	}
	free(b->pool);
	b->pool = NULL;
	for (unsigned int i = 0; b->child && i < b->nslots_total; i++) {
		free(b->child[i].blocks);
		b->child[i].blocks = NULL;
	}
}

/* What SETUP tells helper @h (pool_op, and the pool fd to attach or -1). */
int ferry_bpool_for_helper(const struct ferry_broker *b, unsigned int h, struct ferry_ctl *m)
{
	const struct bpool *p;

	m->pool_op = FERRY_POOL_OP_NONE;
	if (!b->pool)
		return -1;
	p = &b->pool[ferry_bpool_of_helper(b, h)];
	if (p->made) {
		m->pool_op = FERRY_POOL_OP_IMPORT;
		m->pool = p->ref;
		m->pool.fd = p->ref.fd >= 0 ? 1 : -1;
		return p->ref.fd;
	}
	m->pool_op = FERRY_POOL_OP_CREATE;
	memset(&m->pool, 0, sizeof(m->pool));
	m->pool.kind = FERRY_POOL_CUDA;
	m->pool.device = ferry_helper_gpu_of(b, h);
	m->pool.size = b->o.pool_size;
	m->pool.fd = -1;
	return -1;
}

int ferry_bpool_for_child(const struct ferry_broker *b, unsigned int i, struct ferry_ctl *m)
{
	const struct bpool *p;

	m->pool_op = FERRY_POOL_OP_NONE;
	if (!b->pool)
		return -1;
	p = &b->pool[ferry_bpool_of_child(b, i)];
	if (!p->made)
		return -1;	/* its GPU's helpers never came up */
	if (!(b->o.flags & FERRY_CHILDREN_MAP_POOL)) {
		/* No fd, no IPC handle: nothing to map the pool with. */
		m->pool_op = FERRY_POOL_OP_DESCRIBE;
		m->pool = (struct ferry_pool_ref){
			.kind = p->ref.kind, .device = p->ref.device, .size = p->ref.size, .fd = -1,
		};
		return -1;
	}
	m->pool_op = FERRY_POOL_OP_IMPORT;
	m->pool = p->ref;
	m->pool.fd = p->ref.fd >= 0 ? 1 : -1;
	return p->ref.fd;
}

/* After a CREATE setup: the helper's answer, a FERRY_CTL_POOL message. */
int ferry_bpool_take_created(struct ferry_broker *b, unsigned int h, int sock)
{
	struct bpool *p = &b->pool[ferry_bpool_of_helper(b, h)];
	struct pollfd pf = { .fd = sock, .events = POLLIN };
	struct ferry_ctl m;
	int fds[FERRY_CTL_MAX_FDS];
	unsigned int nfds = 0;
	int err, r;

	do {
		r = poll(&pf, 1, CREATE_TIMEOUT_MS);
	} while (r < 0 && errno == EINTR);
	if (r == 0)
		return -ETIMEDOUT;
	err = ferry_ctl_recv(sock, &m, fds, &nfds, 0);
	if (err)
		return err;
	if (m.type != FERRY_CTL_POOL || m.status < 0 || m.pool.kind != FERRY_POOL_CUDA ||
	    m.pool.size < b->o.pool_size || nfds != (m.pool.fd >= 0 ? 1u : 0u))
		/* A helper whose init failed before the pool says READY, -errno. */
		err = (m.type == FERRY_CTL_POOL || m.type == FERRY_CTL_READY) && m.status < 0 ?
		      m.status : -EPROTO;
	else
		err = pool_ready(b, p, &m.pool, nfds ? fds[0] : -1);
	if (err)
		for (unsigned int k = 0; k < nfds; k++)
			close(fds[k]);
	return err;
}

/* The child's block holding all of [off, off + len), len >= 1. */
static struct bblock *find_block(struct bchild *c, uint64_t off, uint64_t len)
{
	for (unsigned int k = 0; k < c->nblocks; k++) {
		struct bblock *bl = &c->blocks[k];

		if (off >= bl->off && off - bl->off < bl->size && len <= bl->size - (off - bl->off))
			return bl;
	}
	return NULL;
}

/* The child's block starting at @off. */
static struct bblock *block_at(struct bchild *c, uint64_t off)
{
	for (unsigned int k = 0; k < c->nblocks; k++)
		if (c->blocks[k].off == off)
			return &c->blocks[k];
	return NULL;
}

/* Room for one more block in @c's list: 0 or -ENOSPC. */
static int grow_blocks(struct bchild *c)
{
	if (c->nblocks == c->cap_blocks) {
		unsigned int cap = c->cap_blocks ? 2 * c->cap_blocks : 16;
		struct bblock *t;

		if (cap > MAX_BLOCKS || !(t = realloc(c->blocks, cap * sizeof(*t))))
			return -ENOSPC;
		c->blocks = t;
		c->cap_blocks = cap;
	}
	return 0;
}

/* A block of @len for child @i: 0 and *off, or -errno. */
static int alloc_for(struct ferry_broker *b, unsigned int i, struct bpool *p, uint64_t len,
		     uint64_t *off)
{
	struct bchild *c = &b->child[i];
	int err = grow_blocks(c);

	if (err)
		return err;
	err = ferry_palloc_alloc(p->alloc, len, NULL, off);
	if (err)
		return err;
	c->blocks[c->nblocks++] = (struct bblock){
		.off = *off, .size = ferry_palloc_block_size(p->alloc, *off), .arena = -1,
	};
	b->st.pool_allocs++;
	return 0;
}

/* ---- helpers' arenas ---- */

static void serve_waiters(struct ferry_broker *b, struct bpool *p);

static struct ferry_arena_shm *arena_shm(const struct ferry_broker *b, unsigned int h)
{
	return b->helper[h].alive ? b->helper[h].arena_shm : NULL;
}

/*
 * Hand @off back to arena @k's helper through its page (in order: the
 * backlog first).  False when the page is full: the caller keeps it.
 */
static bool arena_push(struct ferry_arena_shm *shm, uint64_t off)
{
	uint64_t head = atomic_load_explicit((_Atomic uint64_t *)&shm->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit((_Atomic uint64_t *)&shm->tail, memory_order_acquire);

	/* A tail the helper wrote past head is its bug: take it as full. */
	if (head - tail >= FERRY_ARENA_RETURNS)
		return false;
	shm->ret[head % FERRY_ARENA_RETURNS] = off;
	atomic_store_explicit((_Atomic uint64_t *)&shm->head, head + 1, memory_order_release);
	return true;
}

static void arena_flush(struct barena *a, struct ferry_arena_shm *shm)
{
	unsigned int n = 0;

	while (n < a->nbacklog && arena_push(shm, a->backlog[n]))
		n++;
	memmove(a->backlog, a->backlog + n, (a->nbacklog - n) * sizeof(*a->backlog));
	a->nbacklog -= n;
}

void ferry_bpool_arena_flush(struct ferry_broker *b, unsigned int h)
{
	struct bhelper *hp = &b->helper[h];
	struct barena *a;

	if (!b->pool || hp->arena < 0)
		return;
	a = &b->pool[ferry_bpool_of_helper(b, h)].arenas[hp->arena];
	if (a->nbacklog && arena_shm(b, h))
		arena_flush(a, hp->arena_shm);
}

/* Block @off of arena @k is free again: to its helper, or (orphaned, and
 * the last) the whole arena back to the pool. */
static void arena_return(struct ferry_broker *b, struct bpool *p, unsigned int k, uint64_t off)
{
	struct barena *a = &p->arenas[k];
	struct ferry_arena_shm *shm = a->helper >= 0 ? arena_shm(b, (unsigned int)a->helper) : NULL;

	if (!shm) {
		if (a->helper < 0 && a->live == 0) {
			ferry_palloc_free(p->alloc, a->off);
			free(a->backlog);
			*a = (struct barena){ .helper = -1 };
		}
		return;
	}
	if (a->nbacklog)
		arena_flush(a, shm);
	if (!a->nbacklog && arena_push(shm, off))
		return;
	if (a->nbacklog == a->capbacklog) {
		unsigned int cap = a->capbacklog ? 2 * a->capbacklog : 64;
		uint64_t *t = realloc(a->backlog, cap * sizeof(*t));

		if (!t)
			return;	/* lost to this incarnation only: its arena ends with it */
		a->backlog = t;
		a->capbacklog = cap;
	}
	a->backlog[a->nbacklog++] = off;
}

/* Block @off (of arena @arena, or -1) is free for reuse now. */
static void block_reuse(struct ferry_broker *b, struct bpool *p, uint64_t off, int32_t arena)
{
	if (arena < 0) {
		ferry_palloc_free(p->alloc, off);
		return;
	}
	p->arenas[arena].live--;
	arena_return(b, p, (unsigned int)arena, off);
}

/* ---- stream fences (GPU pools) ---- */

static unsigned int pool_index(const struct ferry_broker *b, const struct bpool *p)
{
	return (unsigned int)(p - b->pool);
}

/*
 * The epoch every helper of @p has fenced: a live helper's word (or its
 * incarnation's start, before which it queued nothing); a dead one's
 * streams went with it.  UINT64_MAX when no helper is there.
 */
static uint64_t fenced_epoch(const struct ferry_broker *b, const struct bpool *p)
{
	unsigned int pi = pool_index(b, p);
	uint64_t low = UINT64_MAX;

	for (unsigned int h = 0; h < b->o.helpers; h++) {
		const struct bhelper *hp = &b->helper[h];
		uint64_t done;

		if (!hp->alive || !hp->arena_shm || ferry_bpool_of_helper(b, h) != pi)
			continue;
		done = atomic_load_explicit((_Atomic uint64_t *)&hp->arena_shm->fence_done,
					    memory_order_acquire);
		if (done < hp->fence_base)
			done = hp->fence_base;
		if (done < low)
			low = done;
	}
	return low;
}

/* Ask every helper of @p to fence up to the last free, and wake it. */
static void fence_ask(struct ferry_broker *b, struct bpool *p, uint64_t now)
{
	unsigned int pi = pool_index(b, p);

	p->asked_ns = now;
	if (p->asked == p->epoch)
		return;
	p->asked = p->epoch;
	for (unsigned int h = 0; h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];

		if (!hp->alive || !hp->arena_shm || ferry_bpool_of_helper(b, h) != pi)
			continue;
		atomic_store_explicit((_Atomic uint64_t *)&hp->arena_shm->fence_want, p->epoch,
				      memory_order_release);
		ferry_chan_kick(&hp->chan.ch, FERRY_TO_PEER);
	}
}

/* Quarantined blocks whose fences are done are free again: true if any. */
static bool fence_reclaim(struct ferry_broker *b, struct bpool *p)
{
	uint64_t done;
	unsigned int k = 0;

	if (!p->nquar)
		return false;
	done = fenced_epoch(b, p);
	while (k < p->nquar && p->quar[k].epoch <= done) {
		block_reuse(b, p, p->quar[k].off, p->quar[k].arena);
		k++;
	}
	if (!k)
		return false;
	memmove(p->quar, p->quar + k, (p->nquar - k) * sizeof(*p->quar));
	p->nquar -= k;
	return true;
}

/* A child's block @bl is freed (by it, or with it). */
static void block_free(struct ferry_broker *b, struct bpool *p, struct bblock *bl)
{
	/*
	 * At once: a CPU pool or no helper left (no streams), or a block of a
	 * helper's arena, whose own allocator orders its reuse after the
	 * stream it was made on (helper_pool.c); another helper's work on
	 * such a block is covered by that helper's deferred reply only.
	 */
	if (p->cpu || bl->arena >= 0 || fenced_epoch(b, p) == UINT64_MAX) {
		block_reuse(b, p, bl->off, bl->arena);
		return;
	}
	if (p->nquar == p->capquar) {
		unsigned int cap = p->capquar ? 2 * p->capquar : 64;
		struct bquar *t = realloc(p->quar, cap * sizeof(*t));

		if (!t) {
			/* No room to remember it: the block stays lost to the
			 * pool rather than be reused under a stream. */
			fprintf(stderr, "ferry: pool block quarantine: out of memory\n");
			return;
		}
		p->quar = t;
		p->capquar = cap;
	}
	p->quar[p->nquar++] = (struct bquar){
		.off = bl->off, .size = bl->size, .epoch = ++p->epoch, .arena = bl->arena,
	};
}

static uint64_t arena_bytes(const struct ferry_broker *b, unsigned int h)
{
	unsigned int g = ferry_bpool_of_helper(b, h), n = 0;

	if (b->o.helper_pool_bytes)
		return b->o.helper_pool_bytes;
	for (unsigned int k = 0; k < b->o.helpers; k++)
		n += ferry_bpool_of_helper(b, k) == g;
	return (b->o.pool_size / 4 / (n ? n : 1)) & ~(uint64_t)(POOL_ALIGN - 1);
}

void ferry_bpool_helper_arena(struct ferry_broker *b, unsigned int h)
{
	struct bhelper *hp = &b->helper[h];
	struct ferry_arena_shm *shm = hp->arena_shm;
	struct bpool *p = b->pool ? &b->pool[ferry_bpool_of_helper(b, h)] : NULL;
	uint64_t bytes = arena_bytes(b, h), off;
	unsigned int k;

	/* A new incarnation: nothing it queues can touch blocks freed before. */
	hp->fence_base = p ? p->epoch : 0;
	hp->arena = -1;
	if (!p || !p->made || bytes < POOL_ALIGN)
		return;
	for (k = 0; k < p->narenas && p->arenas[k].used; k++)
		;
	if (k == p->narenas) {
		struct barena *t = realloc(p->arenas, (k + 1) * sizeof(*t));

		if (!t)
			return;
		p->arenas = t;
		p->narenas++;
	}
	/* No room (children hold the pool): this helper allocates nothing. */
	if (ferry_palloc_alloc(p->alloc, bytes, NULL, &off)) {
		p->arenas[k] = (struct barena){ .helper = -1 };
		return;
	}
	p->arenas[k] = (struct barena){ .used = true, .off = off, .size = bytes,
					.helper = (int32_t)h };
	hp->arena = (int32_t)k;
	shm->off = off;
	shm->size = bytes;
	atomic_store_explicit((_Atomic uint32_t *)&shm->ready, 1, memory_order_release);
}

void ferry_bpool_helper_gone(struct ferry_broker *b, unsigned int h)
{
	struct bhelper *hp = &b->helper[h];
	struct bpool *p;
	struct barena *a;

	if (!b->pool || hp->arena < 0)
		return;
	p = &b->pool[ferry_bpool_of_helper(b, h)];
	a = &p->arenas[hp->arena];
	hp->arena = -1;
	/* What it had not taken back dies with its allocator. */
	free(a->backlog);
	a->backlog = NULL;
	a->nbacklog = a->capbacklog = 0;
	a->helper = -1;
	if (a->live == 0) {
		ferry_palloc_free(p->alloc, a->off);
		*a = (struct barena){ .helper = -1 };
		if (p->nwait)
			serve_waiters(b, p);
	}
}

bool ferry_bpool_grant_ok(const struct ferry_broker *b, unsigned int h, uint64_t off,
			  uint64_t len)
{
	const struct bhelper *hp = &b->helper[h];
	const struct barena *a;

	if (!b->pool || hp->arena < 0 || !len)
		return false;
	a = &b->pool[ferry_bpool_of_helper(b, h)].arenas[hp->arena];
	return off >= a->off && len <= a->size && off - a->off <= a->size - len;
}

void ferry_bpool_grants_settle(struct ferry_broker *b, unsigned int h, unsigned int i,
			       struct bslot *sl, bool keep)
{
	struct bchild *c = &b->child[i];
	struct bhelper *hp = &b->helper[h];
	struct bpool *p = b->pool ? &b->pool[ferry_bpool_of_helper(b, h)] : NULL;

	for (unsigned int k = 0; p && k < sl->ngrant; k++) {
		uint64_t off = sl->grant[k].off;

		if (hp->arena < 0)
			break;	/* dead: its arena's allocator is gone */
		if (keep && c->used && c->alive && grow_blocks(c) == 0) {
			c->blocks[c->nblocks++] = (struct bblock){
				.off = off, .size = sl->grant[k].size, .arena = hp->arena,
			};
			p->arenas[hp->arena].live++;
			b->st.pool_allocs++;
			continue;
		}
		arena_return(b, p, (unsigned int)hp->arena, off);
	}
	sl->ngrant = 0;
}

/* Take waiter @k out of @p's queue, keeping the others' order. */
static void drop_waiter(struct bpool *p, unsigned int k)
{
	memmove(&p->waiters[k], &p->waiters[k + 1], (p->nwait - k - 1) * sizeof(*p->waiters));
	p->nwait--;
}

/* Answer waiter @k of @p with @err (0: *off is its block) and drop it. */
static void answer_waiter(struct ferry_broker *b, struct bpool *p, unsigned int k, int err,
			  uint64_t off)
{
	struct bpool_waiter w = p->waiters[k];
	struct ferry_desc d = {
		.op = FERRY_OP_POOL_ALLOC, .tag = w.tag, .region = w.child, .status = err,
		.offset = err ? 0 : off, .len = w.len,
	};

	drop_waiter(p, k);
	if (err == -ENOMEM)
		b->st.pool_oom++;
	ferry_dispatch_reply(b, w.child, &d);
}

/*
 * Room came back: serve, oldest first, every waiter that fits now (one
 * that does not fit keeps its place and does not hold back smaller ones).
 */
static void serve_waiters(struct ferry_broker *b, struct bpool *p)
{
	for (unsigned int k = 0; k < p->nwait;) {
		uint64_t off;
		int err = alloc_for(b, p->waiters[k].child, p, p->waiters[k].len, &off);

		if (err == -ENOMEM) {
			k++;
			continue;
		}
		answer_waiter(b, p, k, err, off);
	}
}

/*
 * Park an ALLOC that found no room; false (answer now) if it cannot wait.
 * @timeout: ns (< 0: for ever).  @fenced: its last try (an ALLOC that does
 * not wait, parked only until the quarantine's fences are done).
 */
static bool park(struct ferry_broker *b, struct bpool *p, unsigned int i,
		 const struct ferry_desc *d, int64_t timeout, bool fenced)
{
	if (p->nwait == p->capwait) {
		unsigned int cap = p->capwait ? 2 * p->capwait : 16;
		struct bpool_waiter *t = realloc(p->waiters, cap * sizeof(*t));

		if (!t)
			return false;
		p->waiters = t;
		p->capwait = cap;
	}
	b->st.pool_waits++;
	p->waiters[p->nwait++] = (struct bpool_waiter){
		.child = i, .tag = d->tag, .len = d->len,
		.deadline = timeout < 0 ? UINT64_MAX : ferry_now_ns() + (uint64_t)timeout,
		.fenced = fenced,
	};
	return true;
}

/*
 * FERRY_OP_POOL_ALLOC / _FREE from child @i, answered in @d.  An ALLOC
 * with arg[0] = 1 waits up to arg[1] ns (< 0: for ever) for room instead
 * of failing with -ENOMEM at once: false, answered later.
 */
bool ferry_bpool_request(struct ferry_broker *b, unsigned int i, struct ferry_desc *d)
{
	struct bchild *c = &b->child[i];
	struct bpool *p = b->pool ? &b->pool[ferry_bpool_of_child(b, i)] : NULL;
	uint64_t off;
	int err;

	if (!p || !p->made) {
		d->status = -ENOENT;
		return true;
	}
	if (d->op == FERRY_OP_POOL_FREE) {
		struct bblock *bl = block_at(c, d->offset);

		if (!bl) {
			d->status = -ENOENT;
		} else if (bl->inflight) {
			d->status = -EBUSY;	/* a helper may still be using it */
		} else {
			block_free(b, p, bl);
			*bl = c->blocks[--c->nblocks];
			d->status = 0;
			b->st.pool_frees++;
			if (p->nwait) {
				fence_ask(b, p, ferry_now_ns());
				serve_waiters(b, p);
			}
		}
		return true;
	}
	if (d->len == 0 || d->arg[0] > 1) {
		d->status = -EINVAL;
		return true;
	}
	/*
	 * One that may wait joins the queue when there is one (the oldest
	 * waiter that fits goes first), or when there is no room.
	 */
	if (d->arg[0] && d->arg[1] != 0 && p->nwait && park(b, p, i, d, (int64_t)d->arg[1], false)) {
		serve_waiters(b, p);
		return false;
	}
	err = alloc_for(b, i, p, d->len, &off);
	if (err == -ENOMEM && fence_reclaim(b, p))
		err = alloc_for(b, i, p, d->len, &off);
	if (err == -ENOMEM && p->nquar) {
		/* Room may be behind the helpers' streams: ask them now. */
		fence_ask(b, p, ferry_now_ns());
		if (d->arg[0] && d->arg[1] != 0 && park(b, p, i, d, (int64_t)d->arg[1], false))
			return false;
		/* One that does not wait still waits for the fences, once. */
		if (park(b, p, i, d, FENCE_GRACE_NS, true))
			return false;
	}
	if (err == -ENOMEM && d->arg[0] && d->arg[1] != 0 && park(b, p, i, d, (int64_t)d->arg[1], false))
		return false;
	d->status = err;
	d->offset = err ? 0 : off;
	if (err == -ENOMEM)
		b->st.pool_oom++;
	return true;
}

/*
 * The quarantine's fences: reclaim what they freed (serving waiters), ask
 * again every FENCE_EVERY_NS while blocks wait (every FENCE_LOOK_NS with
 * allocations waiting).  Returns when to look next (UINT64_MAX: no need).
 */
static uint64_t fence_due(struct ferry_broker *b, struct bpool *p, uint64_t now)
{
	uint64_t every = p->nwait ? FENCE_LOOK_NS : FENCE_EVERY_NS;

	/* Asked: look for the answers that often too (helpers do not ring). */
	if (!p->nquar)
		return UINT64_MAX;
	if (fence_reclaim(b, p) && p->nwait)
		serve_waiters(b, p);
	if (!p->nquar)
		return UINT64_MAX;
	if (p->asked < p->epoch && now - p->asked_ns >= every)
		fence_ask(b, p, now);
	return p->asked < p->epoch ? p->asked_ns + every : now + every;
}

int64_t ferry_bpool_due(struct ferry_broker *b)
{
	uint64_t now = 0, next = UINT64_MAX, t;

	for (unsigned int k = 0; b->pool && k < b->npools; k++) {
		struct bpool *p = &b->pool[k];

		if (p->nquar || p->nwait)
			now = now ? now : ferry_now_ns();
		if ((t = fence_due(b, p, now)) < next)
			next = t;
		for (unsigned int w = 0; w < p->nwait;) {
			struct bpool_waiter *wt = &p->waiters[w];
			uint64_t off;
			int err;

			/* A last try parked for the fences: they are done. */
			if (wt->fenced && !p->nquar)
				wt->deadline = now;
			if (wt->deadline == UINT64_MAX) {
				w++;
				continue;
			}
			if (wt->deadline > now) {
				if (wt->deadline < next)
					next = wt->deadline;
				w++;
				continue;
			}
			if (!wt->fenced && p->nquar) {
				/*
				 * Its time is up with blocks behind the streams:
				 * fence every helper's streams now and try once
				 * more when they are done (or FENCE_GRACE_NS).
				 */
				fence_ask(b, p, now);
				wt->fenced = true;
				wt->deadline = now + FENCE_GRACE_NS;
				if (wt->deadline < next)
					next = wt->deadline;
				if (now + FENCE_LOOK_NS < next)
					next = now + FENCE_LOOK_NS;
				w++;
				continue;
			}
			/* Its time is up: one last try, then the error. */
			fence_reclaim(b, p);
			err = alloc_for(b, wt->child, p, wt->len, &off);
			answer_waiter(b, p, w, err, off);
		}
	}
	return next == UINT64_MAX ? -1 : (int64_t)(next > now ? next - now : 0);
}

int ferry_bpool_hold(struct ferry_broker *b, unsigned int i, uint64_t off, uint64_t len,
		     uint64_t *block)
{
	struct bblock *bl = b->pool && len ? find_block(&b->child[i], off, len) : NULL;

	if (!bl)
		return -EINVAL;
	bl->inflight++;
	*block = bl->off;
	return 0;
}

void ferry_bpool_release(struct ferry_broker *b, unsigned int i, uint64_t block)
{
	struct bblock *bl = block_at(&b->child[i], block);

	if (bl && bl->inflight)
		bl->inflight--;
}

void ferry_bpool_child_gone(struct ferry_broker *b, unsigned int i)
{
	struct bchild *c = &b->child[i];
	struct bpool *p = b->pool ? &b->pool[ferry_bpool_of_child(b, i)] : NULL;

	for (unsigned int k = 0; p && p->alloc && k < c->nblocks; k++)
		block_free(b, p, &c->blocks[k]);
	free(c->blocks);
	c->blocks = NULL;
	c->nblocks = c->cap_blocks = 0;
	if (!p)
		return;
	/* Its waits go (nobody hears the answer); its blocks may serve others. */
	for (unsigned int w = 0; w < p->nwait;) {
		if (p->waiters[w].child == i)
			drop_waiter(p, w);
		else
			w++;
	}
	if (p->nwait)
		serve_waiters(b, p);
}
