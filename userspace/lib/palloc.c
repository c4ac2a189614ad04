// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Stream-safe offset allocator (see palloc.h for the rules).
 *
 * Blocks tile [0, size) in address order (prev_phys/next_phys).  A block
 * is FREE (on the free list of class floor(log2(size))), LIVE (in the
 * offset hash) or DEFERRED (on the deferred list, waiting for events).
 * Allocation looks at the bitmap of classes for the first non-empty class
 * whose every block is big enough (ceil(log2(n)) and up), and only if
 * there is none walks a few blocks of the class below: O(1) either way.
 */
#include "palloc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NCLASS 64
#define SCAN_BELOW 32	/* blocks of the class under ceil(log2(n)) looked at */

enum { B_FREE = 1, B_LIVE, B_DEFERRED };

struct pblock {
	uint64_t off, size;
	struct pblock *prev_phys, *next_phys;
	struct pblock *prev_free, *next_free;	/* free list, or deferred list */
	struct pblock *hnext;			/* offset hash chain (LIVE) */
	void *stream;				/* allocating (or last) stream */
	void **foreign;				/* record_stream()ed streams */
	unsigned int nforeign, cap_foreign;
	void **events;				/* DEFERRED: one per foreign stream */
	unsigned int nevents;
	uint8_t state;
};

struct ferry_palloc {
	uint64_t size, align;
	const struct ferry_palloc_ops *ops;
	void *ctx;
	struct pblock *first;			/* offset 0: never merged away */
	struct pblock *free_head[NCLASS];
	uint64_t bitmap;			/* bit c: free_head[c] non-empty */
	struct pblock **hash;
	unsigned int hbits;
	uint64_t hcount;
	struct pblock *deferred;
	struct ferry_palloc_stats st;
};

static unsigned int floor_log2(uint64_t v)
{
	return 63u - (unsigned int)__builtin_clzll(v);
}

static unsigned int ceil_log2(uint64_t v)
{
	return v <= 1 ? 0 : floor_log2(v - 1) + 1;
}

static void free_insert(struct ferry_palloc *a, struct pblock *b)
{
	unsigned int c = floor_log2(b->size);

	b->state = B_FREE;
	b->prev_free = NULL;
	b->next_free = a->free_head[c];
	if (b->next_free)
		b->next_free->prev_free = b;
	a->free_head[c] = b;
	a->bitmap |= 1ull << c;
}

static void free_remove(struct ferry_palloc *a, struct pblock *b)
{
	unsigned int c = floor_log2(b->size);

	if (b->prev_free)
		b->prev_free->next_free = b->next_free;
	else
		a->free_head[c] = b->next_free;
	if (b->next_free)
		b->next_free->prev_free = b->prev_free;
	if (!a->free_head[c])
		a->bitmap &= ~(1ull << c);
	b->prev_free = b->next_free = NULL;
}

static size_t hslot(const struct ferry_palloc *a, uint64_t off)
{
	return (size_t)(((off / a->align) * 0x9e3779b97f4a7c15ull) >> (64 - a->hbits));
}

static struct pblock *hfind(const struct ferry_palloc *a, uint64_t off)
{
	for (struct pblock *b = a->hash[hslot(a, off)]; b; b = b->hnext)
		if (b->off == off)
			return b;
	return NULL;
}

static void hgrow(struct ferry_palloc *a)
{
	unsigned int bits = a->hbits + 1;
	struct pblock **n = calloc((size_t)1 << bits, sizeof(*n));
	struct pblock **old = a->hash;
	size_t oldn = (size_t)1 << a->hbits;

	if (!n)
		return;		/* longer chains, still correct */
	a->hash = n;
	a->hbits = bits;
	for (size_t i = 0; i < oldn; i++) {
		for (struct pblock *b = old[i], *next; b; b = next) {
			size_t s = hslot(a, b->off);

			next = b->hnext;
			b->hnext = n[s];
			n[s] = b;
		}
	}
	free(old);
}

static void hinsert(struct ferry_palloc *a, struct pblock *b)
{
	size_t s;

	if (a->hcount >= (2ull << a->hbits) && a->hbits < 40)
		hgrow(a);
	s = hslot(a, b->off);
	b->hnext = a->hash[s];
	a->hash[s] = b;
	a->hcount++;
}

static void hremove(struct ferry_palloc *a, struct pblock *b)
{
	struct pblock **p = &a->hash[hslot(a, b->off)];

	while (*p != b)
		p = &(*p)->hnext;
	*p = b->hnext;
	b->hnext = NULL;
	a->hcount--;
}

/* Blocks whose pending work is on different streams stay apart. */
static bool mergeable(const struct pblock *x, const struct pblock *y)
{
	return x && y && x->state == B_FREE && y->state == B_FREE &&
	       (x->stream == y->stream || !x->stream || !y->stream);
}

/* @y (right after @x) joins @x. */
static void absorb(struct pblock *x, struct pblock *y)
{
	x->size += y->size;
	if (!x->stream)
		x->stream = y->stream;	/* the merged block waits for either */
	x->next_phys = y->next_phys;
	if (y->next_phys)
		y->next_phys->prev_phys = x;
	free(y->foreign);
	free(y);
}

/* A block whose pending work is accounted for goes back to the free lists. */
static void release(struct ferry_palloc *a, struct pblock *b)
{
	struct pblock *p = b->prev_phys, *n = b->next_phys;

	b->nforeign = 0;
	b->state = B_FREE;
	if (mergeable(b, n)) {
		free_remove(a, n);
		absorb(b, n);
	}
	if (mergeable(p, b)) {
		free_remove(a, p);
		absorb(p, b);
		b = p;
	}
	free_insert(a, b);
}

int ferry_palloc_create(uint64_t size, uint64_t align, const struct ferry_palloc_ops *ops,
			void *ctx, struct ferry_palloc **out)
{
	struct ferry_palloc *a;
	struct pblock *b;

	if (!out || align < 64 || (align & (align - 1)) || size < align)
		return -EINVAL;
	size &= ~(align - 1);
	a = calloc(1, sizeof(*a));
	b = calloc(1, sizeof(*b));
	if (!a || !b)
		goto nomem;
	a->hbits = 10;
	a->hash = calloc((size_t)1 << a->hbits, sizeof(*a->hash));
	if (!a->hash)
		goto nomem;
	a->size = size;
	a->align = align;
	a->ops = ops;
	a->ctx = ctx;
	a->st.size = size;
	b->size = size;
	a->first = b;
	free_insert(a, b);
	*out = a;
	return 0;
nomem:
	if (a)
		free(a->hash);
	free(a);
	free(b);
	return -ENOMEM;
}

static void drop_events(struct ferry_palloc *a, struct pblock *b)
{
	for (unsigned int i = 0; i < b->nevents; i++)
		if (a->ops && a->ops->destroy)
			a->ops->destroy(a->ctx, b->events[i]);
	free(b->events);
	b->events = NULL;
	b->nevents = 0;
}

void ferry_palloc_destroy(struct ferry_palloc *a)
{
	if (!a)
		return;
	for (struct pblock *b = a->first, *next; b; b = next) {
		next = b->next_phys;
		drop_events(a, b);
		free(b->foreign);
		free(b);
	}
	free(a->hash);
	free(a);
}

/* A free block of at least @n bytes, or NULL. */
static struct pblock *find(struct ferry_palloc *a, uint64_t n)
{
	unsigned int c = ceil_log2(n);
	uint64_t mask = c < NCLASS ? a->bitmap & (~0ull << c) : 0;
	unsigned int k = 0;

	if (mask)
		return a->free_head[__builtin_ctzll(mask)];
	/* Every class above is empty: a block of the class below may fit. */
	if (c == 0)
		return NULL;
	for (struct pblock *b = a->free_head[c - 1]; b && k < SCAN_BELOW; b = b->next_free, k++)
		if (b->size >= n)
			return b;
	return NULL;
}

/*
 * Out of room and nothing to reclaim: free memory may still be split
 * between streams.  Order @stream after every stream that left free
 * blocks behind, hand those blocks to @stream and merge neighbours.  The
 * OOM path only: O(blocks).  0 if anything changed.
 */
static int launder(struct ferry_palloc *a, void *stream)
{
	void *seen[16];
	unsigned int nseen = 0;
	bool changed = false;

	for (struct pblock *b = a->first; b; b = b->next_phys) {
		unsigned int i;

		if (b->state != B_FREE || !b->stream || b->stream == stream)
			continue;
		for (i = 0; i < nseen && seen[i] != b->stream; i++)
			;
		if (i == nseen) {
			if (a->ops->wait(a->ctx, stream, b->stream))
				return -EIO;
			a->st.cross_stream_waits++;
			if (nseen < 16)
				seen[nseen++] = b->stream;
		}
		b->stream = stream;
		changed = true;
	}
	if (!changed)
		return -ENOMEM;
	for (struct pblock *b = a->first; b; b = b->next_phys) {
		while (mergeable(b, b->next_phys)) {
			free_remove(a, b);
			free_remove(a, b->next_phys);
			absorb(b, b->next_phys);
			free_insert(a, b);
		}
	}
	return 0;
}

int ferry_palloc_alloc(struct ferry_palloc *a, uint64_t n, void *stream, uint64_t *off)
{
	struct pblock *b;

	if (!a || !off || n == 0 || n > a->size)
		return -EINVAL;
	if (stream && (!a->ops || !a->ops->wait || !a->ops->record))
		return -EINVAL;
	n = (n + a->align - 1) & ~(a->align - 1);
	b = find(a, n);
	if (!b && ferry_palloc_reclaim(a)) {
		a->st.retries++;
		b = find(a, n);
	}
	if (!b && a->ops && a->ops->wait && launder(a, stream) == 0) {
		a->st.laundered++;
		b = find(a, n);
	}
	if (!b) {
		a->st.oom++;
		return -ENOMEM;
	}
	/* Work of another stream may still touch it: order the new stream after. */
	if (b->stream && b->stream != stream) {
		int err = a->ops->wait(a->ctx, stream, b->stream);

		if (err)
			return err;
		a->st.cross_stream_waits++;
	}
	free_remove(a, b);
	if (b->size - n >= a->align) {
		struct pblock *r = calloc(1, sizeof(*r));

		if (r) {
			r->off = b->off + n;
			r->size = b->size - n;
			r->stream = b->stream;
			r->prev_phys = b;
			r->next_phys = b->next_phys;
			if (r->next_phys)
				r->next_phys->prev_phys = r;
			b->next_phys = r;
			b->size = n;
			free_insert(a, r);
		}
		/* no memory for a node: hand out the whole block */
	}
	b->stream = stream;
	b->state = B_LIVE;
	b->nforeign = 0;
	hinsert(a, b);
	a->st.live += b->size;
	a->st.nlive++;
	a->st.allocs++;
	*off = b->off;
	return 0;
}

int ferry_palloc_record_stream(struct ferry_palloc *a, uint64_t off, void *stream)
{
	struct pblock *b = a ? hfind(a, off) : NULL;

	if (!b)
		return -ENOENT;
	if (!stream || stream == b->stream)
		return 0;	/* ordered by the block's own stream already */
	if (!a->ops || !a->ops->record)
		return -EINVAL;
	for (unsigned int i = 0; i < b->nforeign; i++)
		if (b->foreign[i] == stream)
			return 0;
	if (b->nforeign == b->cap_foreign) {
		unsigned int cap = b->cap_foreign ? 2 * b->cap_foreign : 4;
		void **f = realloc(b->foreign, cap * sizeof(*f));

		if (!f)
			return -ENOMEM;
		b->foreign = f;
		b->cap_foreign = cap;
	}
	b->foreign[b->nforeign++] = stream;
	return 0;
}

int ferry_palloc_free(struct ferry_palloc *a, uint64_t off)
{
	struct pblock *b = a ? hfind(a, off) : NULL;

	if (!b)
		return -ENOENT;
	if (b->nforeign) {
		void **ev = calloc(b->nforeign, sizeof(*ev));
		unsigned int got = 0;
		int err = ev ? 0 : -ENOMEM;

		for (; !err && got < b->nforeign; got++) {
			err = a->ops->record(a->ctx, b->foreign[got], &ev[got]);
			if (err)
				break;
		}
		if (err) {
			/* Still live, nothing lost: the caller may free again. */
			for (unsigned int i = 0; i < got; i++)
				a->ops->destroy(a->ctx, ev[i]);
			free(ev);
			return err;
		}
		hremove(a, b);
		b->events = ev;
		b->nevents = b->nforeign;
		b->nforeign = 0;
		b->state = B_DEFERRED;
		b->next_free = a->deferred;
		a->deferred = b;
		a->st.live -= b->size;
		a->st.nlive--;
		a->st.deferred += b->size;
		a->st.ndeferred++;
		a->st.deferred_frees++;
		a->st.frees++;
		return 0;
	}
	hremove(a, b);
	a->st.live -= b->size;
	a->st.nlive--;
	a->st.frees++;
	release(a, b);
	return 0;
}

uint64_t ferry_palloc_block_size(const struct ferry_palloc *a, uint64_t off)
{
	const struct pblock *b = a ? hfind(a, off) : NULL;

	return b ? b->size : 0;
}

unsigned int ferry_palloc_reclaim(struct ferry_palloc *a)
{
	struct pblock **p = &a->deferred;
	unsigned int n = 0;

	while (*p) {
		struct pblock *b = *p;
		bool done = true;

		for (unsigned int i = 0; i < b->nevents && done; i++)
			done = a->ops->query(a->ctx, b->events[i]) != 0;
		if (!done) {
			p = &b->next_free;
			continue;
		}
		*p = b->next_free;
		b->next_free = NULL;
		drop_events(a, b);
		a->st.deferred -= b->size;
		a->st.ndeferred--;
		a->st.reclaimed++;
		release(a, b);
		n++;
	}
	return n;
}

void ferry_palloc_stats(const struct ferry_palloc *a, struct ferry_palloc_stats *out)
{
	*out = a->st;
}
