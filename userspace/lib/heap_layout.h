/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * heap_layout.h: where the in-region heap keeps its bytes (internal).
 *
 * Every offset below is from the region's base; nothing in the region is a
 * pointer, since each process maps it at its own address.
 *
 *   0          heap_off  first                          meta        size
 *   |  caller  |  ....   | blk | blk | blk |  ...  | blk | hdr | bitmap |
 *
 * - Blocks tile [first - FH_BHDR, meta - FH_BHDR).  A block is named by its
 *   payload offset p (64-aligned); its 32-byte header sits just below p and
 *   its size (a multiple of 64, header included) takes it to the next
 *   block's payload: next = p + size.  first = heap_off + 64.
 * - The heap header and the block-start bitmap live at the *top* of the
 *   region, at an offset computed from the region's size alone: check,
 *   alloc, free and stats are given (base, size) and no heap_off, and the
 *   helper side must find the metadata without trusting anything the owner
 *   wrote.
 * - Free blocks sit on TLSF lists (two-level segregated fit: FH_FL classes
 *   by power of two, FH_SL linear subclasses each), linked through their
 *   payload's first 16 bytes.
 * - The bitmap has one bit per 64-byte granule of the region, set exactly
 *   at the payload offset of every *live* block, with summary levels above
 *   it (bit j of level k+1 says word j of level k is non-zero).  It lets
 *   ferry_heap_check find the block holding any offset in O(levels) word
 *   reads, and lets free reject offsets that are not live blocks.
 */
#ifndef FERRY_HEAP_LAYOUT_H
#define FERRY_HEAP_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define FH_MAGIC	0x3150414548595246ULL	/* "FRYHEAP1" */
#define FH_VERSION	1ULL
#define FH_GRAN		64ULL		/* == FERRY_HEAP_ALIGN */
#define FH_BHDR		32ULL		/* block header below each payload */
#define FH_MIN_BLOCK	64ULL
#define FH_FREE		1ULL		/* size_flags: block is free */
#define FH_FLAGS	(FH_GRAN - 1)

#define FH_SL_LOG2	4
#define FH_SL		(1U << FH_SL_LOG2)
/* Sizes below FH_LIN are binned linearly (64-byte steps) in class 0. */
#define FH_LIN_LOG2	(FH_SL_LOG2 + 6)
#define FH_LIN		(1ULL << FH_LIN_LOG2)
#define FH_MAX_LOG2	48		/* regions are smaller than 256 TiB */
#define FH_MAX_SIZE	(1ULL << FH_MAX_LOG2)
#define FH_FL		(FH_MAX_LOG2 - FH_LIN_LOG2 + 1)
#define FH_LEVELS	8		/* bitmap levels for 2^42 granules */
/* Good fit missed: how many blocks of the request's own class to try. */
#define FH_SCAN		32

/* Just below every payload p, at p - FH_BHDR. */
struct fh_block {
	uint64_t prev_size;	/* size of the physically previous block, 0: none */
	uint64_t size_flags;	/* size | FH_FREE */
	uint64_t check;		/* fh_block_check(key, p, size_flags) */
	uint64_t reserved;	/* 0 */
};
/* In the payload of a free block. */
struct fh_links {
	uint64_t next, prev;	/* payload offsets on the same list, 0: none */
};

/* At the region's top, at fh_layout().meta. */
struct fh_head {
	uint64_t magic;
	uint64_t version;
	uint64_t size;		/* region size the heap was formatted for */
	uint64_t heap_off;
	uint64_t key;		/* random per format: block check values */
	uint64_t check;		/* fh_head_check() of the five above */
	uint64_t fl_map;	/* bit fl: sl_map[fl] != 0 */
	uint64_t reserved;
	uint64_t sl_map[FH_FL];	/* bit sl: free_head[fl][sl] != 0 */
	uint64_t free_head[FH_FL][FH_SL];
};

_Static_assert(sizeof(struct fh_block) == FH_BHDR, "block header is 32 bytes");
_Static_assert(FH_FL <= 64 && FH_SL <= 64, "class maps are 64-bit words");

static inline uint64_t fh_round64(uint64_t x)
{
	return (x + FH_GRAN - 1) & ~(FH_GRAN - 1);
}

static inline uint64_t fh_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* One mix: p and size_flags are < 2^48, so they barely overlap here. */
static inline uint64_t fh_block_check(uint64_t key, uint64_t p, uint64_t size_flags)
{
	return fh_mix(key ^ p ^ (size_flags << 16 | size_flags >> 48));
}

static inline uint64_t fh_head_check(uint64_t size, uint64_t heap_off, uint64_t key)
{
	return fh_mix(fh_mix(fh_mix(FH_MAGIC ^ FH_VERSION ^ key) ^ size) ^ heap_off);
}

/* TLSF class (fl, sl) of a block of @size bytes (a multiple of 64, >= 64). */
static inline void fh_class(uint64_t size, unsigned int *fl, unsigned int *sl)
{
	if (size < FH_LIN) {
		*fl = 0;
		*sl = (unsigned int)(size >> 6);
	} else {
		unsigned int f = 63 - (unsigned int)__builtin_clzll(size);

		*fl = f - FH_LIN_LOG2 + 1;
		*sl = (unsigned int)(size >> (f - FH_SL_LOG2)) & (FH_SL - 1);
	}
}

/* Where the metadata of a heap in a region of @size bytes lies. */
struct fh_layout {
	uint64_t meta;			/* struct fh_head; blocks end here */
	unsigned int levels;		/* bitmap levels, level 0 = granules */
	uint64_t lvl_off[FH_LEVELS];	/* offset of each level's words */
	uint64_t lvl_words[FH_LEVELS];	/* 64-bit words in each level */
};

/* A pure function of @size; -1 when no heap fits (or size is too big). */
static inline int fh_layout(uint64_t size, struct fh_layout *l)
{
	uint64_t n = size / FH_GRAN, bytes = fh_round64(sizeof(struct fh_head));
	unsigned int k = 0;

	if (size >= FH_MAX_SIZE || n == 0)
		return -1;
	for (;;) {
		uint64_t w = (n + 63) / 64;

		l->lvl_off[k] = bytes;
		l->lvl_words[k] = w;
		bytes += w * 8;
		k++;
		if (w == 1)
			break;
		n = w;
	}
	l->levels = k;
	bytes = fh_round64(bytes);
	if (bytes + FH_GRAN > size)
		return -1;
	l->meta = (size - bytes) & ~(FH_GRAN - 1);
	for (k = 0; k < l->levels; k++)
		l->lvl_off[k] += l->meta;
	return 0;
}

#endif /* FERRY_HEAP_LAYOUT_H */
