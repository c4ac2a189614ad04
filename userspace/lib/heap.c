// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * heap.c: the allocator that lives inside a region (layout: heap_layout.h).
 *
 * One process (the region's owner) formats, allocates and frees; any
 * process may check a range.  The owner may be hostile, so:
 *
 * - ferry_heap_check() reads every metadata word once, into a local, with
 *   a relaxed atomic load (the compiler may not read it again), and
 *   validates each value before using it as an offset.  It finds the
 *   metadata from (base, size) alone and reads only inside [base, base +
 *   size); it reads 6 heap-header words, at most 2 * levels <= 14 bitmap
 *   words and 3 block-header words.
 * - ferry_heap_stats() walks, but every step moves forward by at least 64
 *   bytes and every list walk is bounded by the block count, so it ends.
 * - alloc and free validate each block they touch (check value, bounds,
 *   boundary tags, list links) before writing through it: on a corrupted
 *   heap they fail with -EUCLEAN and write only inside [heap_off, size).
 *   A bad offset given to free (garbage, double free, middle of a block) is
 *   caught before anything changes and returns -EINVAL.
 *
 * Alloc and free are TLSF: a class lookup is two bit scans; splitting and
 * coalescing with both physical neighbours use the boundary tags.  Each
 * call also updates O(levels) bitmap words.  Not thread-safe.
 *
 * Stats: capacity = bytes the blocks span (headers included); used and
 * free = sizes of live and free blocks (headers included), so used + free
 * == capacity; largest_free = the largest n one alloc can still satisfy.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "heap_layout.h"
#include "sized.h"

_Static_assert(FERRY_HEAP_ALIGN == FH_GRAN, "heap alignment");

/* An opened heap: what the header says, validated. */
struct fh {
	unsigned char *base;	/* written only by format, alloc and free */
	uint64_t size, heap_off, first, end, key;
	struct fh_layout l;
};

/* One block header, read once. */
struct blk {
	uint64_t p, size, prev;
	bool free;
};

#define HEAD(h, field)	((h)->l.meta + offsetof(struct fh_head, field))

static inline uint64_t rd(const struct fh *h, uint64_t off)
{
	return __atomic_load_n((const uint64_t *)(h->base + off), __ATOMIC_RELAXED);
}

static inline void wr(const struct fh *h, uint64_t off, uint64_t v)
{
	__atomic_store_n((uint64_t *)(h->base + off), v, __ATOMIC_RELAXED);
}

static inline uint64_t list_head_off(const struct fh *h, unsigned int fl, unsigned int sl)
{
	return HEAD(h, free_head) + 8 * ((uint64_t)fl * FH_SL + sl);
}

static inline uint64_t sl_map_off(const struct fh *h, unsigned int fl)
{
	return HEAD(h, sl_map) + 8 * (uint64_t)fl;
}

static int fh_open(const void *base, uint64_t size, struct fh *h)
{
	uint64_t magic, version, hsize, hoff, key, check;

	if (!base || (uintptr_t)base % FH_GRAN || fh_layout(size, &h->l))
		return -EINVAL;
	h->base = (unsigned char *)base;
	magic = rd(h, HEAD(h, magic));
	version = rd(h, HEAD(h, version));
	hsize = rd(h, HEAD(h, size));
	hoff = rd(h, HEAD(h, heap_off));
	key = rd(h, HEAD(h, key));
	check = rd(h, HEAD(h, check));
	if (magic != FH_MAGIC || version != FH_VERSION || hsize != size ||
	    check != fh_head_check(hsize, hoff, key))
		return -EINVAL;
	if (hoff % FH_GRAN || hoff > h->l.meta || h->l.meta - hoff < 2 * FH_MIN_BLOCK)
		return -EINVAL;
	h->size = size;
	h->heap_off = hoff;
	h->first = hoff + FH_GRAN;
	h->end = h->l.meta;
	h->key = key;
	return 0;
}

/* Read and validate the header of block @p; -EUCLEAN if it is not one. */
static int blk_get(const struct fh *h, uint64_t p, struct blk *b)
{
	uint64_t sf, check, size;

	if (p % FH_GRAN || p < h->first || p >= h->end)
		return -EUCLEAN;
	b->prev = rd(h, p - FH_BHDR + offsetof(struct fh_block, prev_size));
	sf = rd(h, p - FH_BHDR + offsetof(struct fh_block, size_flags));
	check = rd(h, p - FH_BHDR + offsetof(struct fh_block, check));
	size = sf & ~FH_FLAGS;
	if ((sf & FH_FLAGS & ~FH_FREE) || size < FH_MIN_BLOCK || size > h->end - p ||
	    check != fh_block_check(h->key, p, sf))
		return -EUCLEAN;
	b->p = p;
	b->size = size;
	b->free = sf & FH_FREE;
	return 0;
}

static void blk_put(const struct fh *h, uint64_t p, uint64_t size, bool free, uint64_t prev)
{
	uint64_t sf = size | (free ? FH_FREE : 0);

	wr(h, p - FH_BHDR + offsetof(struct fh_block, prev_size), prev);
	wr(h, p - FH_BHDR + offsetof(struct fh_block, size_flags), sf);
	wr(h, p - FH_BHDR + offsetof(struct fh_block, check), fh_block_check(h->key, p, sf));
	wr(h, p - FH_BHDR + offsetof(struct fh_block, reserved), 0);
}

static void blk_set_prev(const struct fh *h, uint64_t p, uint64_t prev)
{
	wr(h, p - FH_BHDR + offsetof(struct fh_block, prev_size), prev);
}

/* A header swallowed by a merge must never validate again (double free). */
static void blk_wipe(const struct fh *h, uint64_t p)
{
	wr(h, p - FH_BHDR + offsetof(struct fh_block, size_flags), 0);
	wr(h, p - FH_BHDR + offsetof(struct fh_block, check), 0);
}

/* ---- block-start bitmap ---- */

static bool bit_test(const struct fh *h, uint64_t g)
{
	return (rd(h, h->l.lvl_off[0] + 8 * (g / 64)) >> (g % 64)) & 1;
}

static void bit_set(const struct fh *h, uint64_t g)
{
	for (unsigned int k = 0; k < h->l.levels; k++, g /= 64) {
		uint64_t off = h->l.lvl_off[k] + 8 * (g / 64), w = rd(h, off);

		wr(h, off, w | 1ULL << (g % 64));
		if (w)
			break;	/* the levels above already say "non-empty" */
	}
}

static void bit_clear(const struct fh *h, uint64_t g)
{
	for (unsigned int k = 0; k < h->l.levels; k++, g /= 64) {
		uint64_t off = h->l.lvl_off[k] + 8 * (g / 64);
		uint64_t w = rd(h, off) & ~(1ULL << (g % 64));

		wr(h, off, w);
		if (w)
			break;
	}
}

/*
 * The highest set granule <= @g: up the levels until a word has a set bit
 * at or left of our position, then down taking the highest bit each time.
 * At most 2 * levels reads, each bounds-checked, so lying summary bits
 * cost a false "none", never a stray read.
 */
static bool bit_pred(const struct fh *h, uint64_t g, uint64_t *out)
{
	unsigned int k = 0;
	uint64_t w, i;

	for (;;) {
		i = g / 64;
		if (i >= h->l.lvl_words[k])
			return false;
		w = rd(h, h->l.lvl_off[k] + 8 * i) & (~0ULL >> (63 - g % 64));
		if (w) {
			g = i * 64 + (63 - (unsigned int)__builtin_clzll(w));
			break;
		}
		if (i == 0 || k + 1 >= h->l.levels)
			return false;
		g = i - 1;
		k++;
	}
	while (k-- > 0) {
		if (g >= h->l.lvl_words[k])
			return false;
		w = rd(h, h->l.lvl_off[k] + 8 * g);
		if (!w)
			return false;
		g = g * 64 + (63 - (unsigned int)__builtin_clzll(w));
	}
	*out = g;
	return true;
}

/* ---- free lists ---- */

static void map_update(const struct fh *h, unsigned int fl, unsigned int sl, bool set)
{
	uint64_t slm = rd(h, sl_map_off(h, fl)), flm = rd(h, HEAD(h, fl_map));

	slm = set ? slm | 1ULL << sl : slm & ~(1ULL << sl);
	wr(h, sl_map_off(h, fl), slm);
	flm = slm ? flm | 1ULL << fl : flm & ~(1ULL << fl);
	wr(h, HEAD(h, fl_map), flm);
}

/*
 * List neighbours are checked by bounds and back links only: reading their
 * headers too would cost two more cache misses per call, and a link that
 * passes is 64-aligned inside [first, end), so writes through it stay in
 * the heap whatever it points at.
 */
static bool link_ok(const struct fh *h, uint64_t p)
{
	return p % FH_GRAN == 0 && p >= h->first && p < h->end;
}

static int list_insert(const struct fh *h, uint64_t p, uint64_t size)
{
	unsigned int fl, sl;
	uint64_t next;

	fh_class(size, &fl, &sl);
	next = rd(h, list_head_off(h, fl, sl));
	if (next) {
		if (next == p || !link_ok(h, next) ||
		    rd(h, next + offsetof(struct fh_links, prev)) != 0)
			return -EUCLEAN;
		wr(h, next + offsetof(struct fh_links, prev), p);
	}
	wr(h, p + offsetof(struct fh_links, next), next);
	wr(h, p + offsetof(struct fh_links, prev), 0);
	wr(h, list_head_off(h, fl, sl), p);
	if (!next)
		map_update(h, fl, sl, true);
	return 0;
}

/* Unlink free block @b, after checking that its neighbours agree. */
static int list_remove(const struct fh *h, const struct blk *b)
{
	uint64_t next = rd(h, b->p + offsetof(struct fh_links, next));
	uint64_t prev = rd(h, b->p + offsetof(struct fh_links, prev));
	unsigned int fl, sl;

	fh_class(b->size, &fl, &sl);
	if (prev) {
		if (!link_ok(h, prev) || rd(h, prev + offsetof(struct fh_links, next)) != b->p)
			return -EUCLEAN;
	} else if (rd(h, list_head_off(h, fl, sl)) != b->p) {
		return -EUCLEAN;
	}
	if (next && (!link_ok(h, next) || rd(h, next + offsetof(struct fh_links, prev)) != b->p))
		return -EUCLEAN;

	if (prev) {
		wr(h, prev + offsetof(struct fh_links, next), next);
	} else {
		wr(h, list_head_off(h, fl, sl), next);
		if (!next)
			map_update(h, fl, sl, false);
	}
	if (next)
		wr(h, next + offsetof(struct fh_links, prev), prev);
	return 0;
}

/* A free block of at least @size bytes (good fit, then first fit). */
static int find_free(const struct fh *h, uint64_t size, struct blk *b)
{
	uint64_t want = size, slm = 0, flm, p;
	unsigned int fl, sl;

	/* Round up to the next class boundary: any block there fits. */
	if (size >= FH_LIN)
		want += (1ULL << (63 - __builtin_clzll(size) - FH_SL_LOG2)) - 1;
	fh_class(want, &fl, &sl);
	if (fl < FH_FL) {
		slm = rd(h, sl_map_off(h, fl)) & (~0ULL << sl);
		if (!slm) {
			flm = fl + 1 < FH_FL ? rd(h, HEAD(h, fl_map)) & (~0ULL << (fl + 1)) : 0;
			flm &= (FH_FL < 64 ? (1ULL << FH_FL) - 1 : ~0ULL);
			if (flm) {
				fl = (unsigned int)__builtin_ctzll(flm);
				slm = rd(h, sl_map_off(h, fl));
			}
		}
		slm &= (FH_SL < 64 ? (1ULL << FH_SL) - 1 : ~0ULL);
	}
	if (slm) {
		sl = (unsigned int)__builtin_ctzll(slm);
		p = rd(h, list_head_off(h, fl, sl));
		if (!p || blk_get(h, p, b) || !b->free || b->size < size)
			return -EUCLEAN;
		return 0;
	}
	/*
	 * Nothing in a class that surely fits; a block in the request's own
	 * class may still be large enough (this is what lets one alloc take
	 * the whole of an empty heap).  Look at a bounded few.
	 */
	fh_class(size, &fl, &sl);
	p = rd(h, list_head_off(h, fl, sl));
	for (unsigned int i = 0; p && i < FH_SCAN; i++) {
		if (blk_get(h, p, b) || !b->free)
			return -EUCLEAN;
		if (b->size >= size)
			return 0;
		p = rd(h, p + offsetof(struct fh_links, next));
	}
	return -ENOMEM;
}

/* ---- public ---- */

static uint64_t new_key(const void *base)
{
	static unsigned int counter;
	struct timespec ts;
	uint64_t key;

	if (getrandom(&key, sizeof(key), GRND_NONBLOCK) == (ssize_t)sizeof(key))
		return key;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return fh_mix((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^
	       fh_mix((uintptr_t)base ^ (uint64_t)getpid() << 32 ^ ++counter);
}

int ferry_heap_format(void *base, uint64_t size, uint64_t heap_off)
{
	struct fh h;
	int err;

	if (!base || (uintptr_t)base % FH_GRAN || heap_off % FH_GRAN || heap_off >= size ||
	    size >= FH_MAX_SIZE)
		return -EINVAL;
	if (fh_layout(size, &h.l) || h.l.meta < heap_off || h.l.meta - heap_off < 2 * FH_MIN_BLOCK)
		return -ENOSPC;
	h.base = base;
	h.size = size;
	h.heap_off = heap_off;
	h.first = heap_off + FH_GRAN;
	h.end = h.l.meta;
	/* A new key also invalidates every block header of an earlier format. */
	h.key = new_key(base);
	memset(h.base + h.l.meta, 0, size - h.l.meta);
	blk_put(&h, h.first, h.end - h.first, true, 0);
	err = list_insert(&h, h.first, h.end - h.first);
	if (err)
		return err;
	wr(&h, HEAD(&h, version), FH_VERSION);
	wr(&h, HEAD(&h, size), size);
	wr(&h, HEAD(&h, heap_off), heap_off);
	wr(&h, HEAD(&h, key), h.key);
	wr(&h, HEAD(&h, check), fh_head_check(size, heap_off, h.key));
	__atomic_store_n((uint64_t *)(h.base + HEAD(&h, magic)), FH_MAGIC, __ATOMIC_RELEASE);
	return 0;
}

int64_t ferry_heap_alloc(void *base, uint64_t size, uint64_t n)
{
	uint64_t need, next, rest;
	struct blk b, nb;
	struct fh h;
	int err;

	err = fh_open(base, size, &h);
	if (err)
		return err;
	if (n == 0)
		return -EINVAL;
	if (n > h.end - h.first - FH_BHDR)
		return -ENOMEM;
	need = fh_round64(n + FH_BHDR);
	err = find_free(&h, need, &b);
	if (err)
		return err;
	/* Free blocks are always coalesced: the next one is live. */
	next = b.p + b.size;
	if (next < h.end && (blk_get(&h, next, &nb) || nb.free || nb.prev != b.size))
		return -EUCLEAN;
	err = list_remove(&h, &b);
	if (err)
		return err;
	rest = b.size - need;
	if (rest >= FH_MIN_BLOCK) {
		blk_put(&h, b.p + need, rest, true, need);
		if (next < h.end)
			blk_set_prev(&h, next, rest);
		err = list_insert(&h, b.p + need, rest);
		if (err)
			return err;
		b.size = need;
	}
	blk_put(&h, b.p, b.size, false, b.prev);
	bit_set(&h, b.p / FH_GRAN);
	return (int64_t)b.p;
}

int ferry_heap_free(void *base, uint64_t size, uint64_t off)
{
	struct blk b, nb = { 0 }, pb = { 0 }, nnb;
	uint64_t p, bytes, prev, next, after;
	struct fh h;
	int err;

	err = fh_open(base, size, &h);
	if (err)
		return err;
	/* Only the start of a live block has its bit set. */
	if (off % FH_GRAN || off < h.first || off >= h.end || !bit_test(&h, off / FH_GRAN))
		return -EINVAL;
	if (blk_get(&h, off, &b) || b.free)
		return -EUCLEAN;

	/* Check both neighbours' boundary tags before changing anything. */
	next = off + b.size;
	if (next < h.end) {
		if (blk_get(&h, next, &nb) || nb.prev != b.size)
			return -EUCLEAN;
		after = next + nb.size;
		if (nb.free && after < h.end &&
		    (blk_get(&h, after, &nnb) || nnb.free || nnb.prev != nb.size))
			return -EUCLEAN;
	}
	if (off > h.first) {
		if (b.prev == 0 || b.prev > off - h.first ||
		    blk_get(&h, off - b.prev, &pb) || pb.size != b.prev)
			return -EUCLEAN;
	}

	bit_clear(&h, off / FH_GRAN);
	p = off;
	bytes = b.size;
	prev = b.prev;
	if (nb.free) {
		err = list_remove(&h, &nb);
		if (err)
			return err;
		blk_wipe(&h, nb.p);
		bytes += nb.size;
	}
	if (pb.free) {
		err = list_remove(&h, &pb);
		if (err)
			return err;
		blk_wipe(&h, off);
		p = pb.p;
		bytes += pb.size;
		prev = pb.prev;
	}
	blk_put(&h, p, bytes, true, prev);
	if (p + bytes < h.end)
		blk_set_prev(&h, p + bytes, bytes);
	return list_insert(&h, p, bytes);
}

int ferry_heap_check(const void *base, uint64_t size, uint64_t off, uint64_t len)
{
	struct fh h;
	struct blk b;
	uint64_t g, payload;

	if (len == 0 || fh_open(base, size, &h))
		return -EINVAL;
	if (off < h.first || off >= h.end || len > h.end - off)
		return -EINVAL;
	if (!bit_pred(&h, off / FH_GRAN, &g))
		return -EINVAL;
	/* g <= off / 64, so b.p <= off; blk_get bounds b.p + b.size by end. */
	if (blk_get(&h, g * FH_GRAN, &b) || b.free)
		return -EINVAL;
	payload = b.size - FH_BHDR;
	if (off - b.p >= payload || len > payload - (off - b.p))
		return -EINVAL;
	return 0;
}

/* Each upper bitmap bit must say whether the word below it is non-empty. */
static int stats_bitmap(const struct fh *h, uint64_t live)
{
	uint64_t bits = 0;

	for (uint64_t i = 0; i < h->l.lvl_words[0]; i++)
		bits += (uint64_t)__builtin_popcountll(rd(h, h->l.lvl_off[0] + 8 * i));
	if (bits != live)
		return -EUCLEAN;
	for (unsigned int k = 1; k < h->l.levels; k++) {
		for (uint64_t j = 0; j < h->l.lvl_words[k]; j++) {
			uint64_t want = 0;

			for (unsigned int i = 0; i < 64; i++) {
				uint64_t below = j * 64 + i;

				if (below < h->l.lvl_words[k - 1] &&
				    rd(h, h->l.lvl_off[k - 1] + 8 * below))
					want |= 1ULL << i;
			}
			if (rd(h, h->l.lvl_off[k] + 8 * j) != want)
				return -EUCLEAN;
		}
	}
	return 0;
}

/* Every free block on exactly the list of its class, links both ways. */
static int stats_lists(const struct fh *h, uint64_t free_blocks)
{
	uint64_t flm = rd(h, HEAD(h, fl_map)), seen = 0;

	if (FH_FL < 64 && flm >> FH_FL)
		return -EUCLEAN;
	for (unsigned int fl = 0; fl < FH_FL; fl++) {
		uint64_t slm = rd(h, sl_map_off(h, fl));

		if ((FH_SL < 64 && slm >> FH_SL) || ((flm >> fl) & 1) != (slm != 0))
			return -EUCLEAN;
		for (unsigned int sl = 0; sl < FH_SL; sl++) {
			uint64_t p = rd(h, list_head_off(h, fl, sl)), prev = 0;

			if (((slm >> sl) & 1) != (p != 0))
				return -EUCLEAN;
			while (p) {
				unsigned int bfl, bsl;
				struct blk b;

				if (seen++ == free_blocks || blk_get(h, p, &b) || !b.free ||
				    rd(h, p + offsetof(struct fh_links, prev)) != prev)
					return -EUCLEAN;
				fh_class(b.size, &bfl, &bsl);
				if (bfl != fl || bsl != sl)
					return -EUCLEAN;
				prev = p;
				p = rd(h, p + offsetof(struct fh_links, next));
			}
		}
	}
	return seen == free_blocks ? 0 : -EUCLEAN;
}

int ferry_heap_stats_read(const void *base, uint64_t size, struct ferry_heap_stats *out)
{
	struct ferry_heap_stats st = { 0 };
	uint64_t p, prev_size = 0;
	bool prev_free = false;
	struct fh h;
	int err;

	if (!out)
		return -EINVAL;
	err = fh_open(base, size, &h);
	if (err)
		return err;
	st.capacity = h.end - h.first;
	/* Each step moves p forward by >= 64 bytes and stays <= end. */
	for (p = h.first; p < h.end; p += prev_size) {
		struct blk b;
		bool live;

		if (blk_get(&h, p, &b) || b.prev != prev_size)
			return -EUCLEAN;
		live = bit_test(&h, p / FH_GRAN);
		if (b.free) {
			if (prev_free || live)
				return -EUCLEAN;
			st.free += b.size;
			st.free_blocks++;
			if (b.size - FH_BHDR > st.largest_free)
				st.largest_free = b.size - FH_BHDR;
		} else {
			if (!live)
				return -EUCLEAN;
			st.used += b.size;
			st.live_blocks++;
		}
		prev_size = b.size;
		prev_free = b.free;
	}
	err = stats_bitmap(&h, st.live_blocks);
	if (!err)
		err = stats_lists(&h, st.free_blocks);
	if (err)
		return err;
	*out = st;
	return 0;
}
