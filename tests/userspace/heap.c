// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The in-region heap (ferry_heap_*): argument errors, alignment, filling
 * and coalescing, bad frees, exact range checks, a seeded random workload
 * against a reference model, corrupted and concurrently scribbled
 * metadata, and a speed sanity bound.
 *
 * Every heap lives in a shared mapping with PROT_NONE pages on both sides,
 * so any read or write outside the region kills the case.  The bytes below
 * heap_off hold a canary that must survive everything.
 *
 * FERRY_HEAP_SEED=<n> replays a run (each case prints its seed);
 * FERRY_HEAP_OPS=<n> shortens the random workload (valgrind).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "heap_layout.h"
#include "kselftest_harness.h"

/* ---- helpers ---- */

struct area {
	unsigned char *map, *base;
	size_t maplen, size;
};

/* @size bytes of MAP_SHARED memory between two PROT_NONE guard pages. */
static int area_map(struct area *a, size_t size)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	void *mid;

	if (size % pg)
		return -EINVAL;
	a->size = size;
	a->maplen = size + 2 * pg;
	a->map = mmap(NULL, a->maplen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		      -1, 0);
	if (a->map == MAP_FAILED)
		return -errno;
	mid = mmap(a->map + pg, size, PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (mid == MAP_FAILED) {
		munmap(a->map, a->maplen);
		return -errno;
	}
	a->base = mid;
	return 0;
}

static void area_unmap(struct area *a)
{
	if (a->map && a->map != MAP_FAILED)
		munmap(a->map, a->maplen);
	a->map = NULL;
}

static uint64_t rnd(uint64_t *s)
{
	return fh_mix(*s += 0x9e3779b97f4a7c15ULL);
}

/* Uniform in [0, n), n > 0. */
static uint64_t rnd_below(uint64_t *s, uint64_t n)
{
	return rnd(s) % n;
}

/* 1..max, log-uniform: small sizes as often as large ones. */
static uint64_t rnd_size(uint64_t *s, uint64_t max)
{
	unsigned int bits = 64 - (unsigned int)__builtin_clzll(max);
	uint64_t top = 1ULL << rnd_below(s, bits), n = top + rnd_below(s, top);

	return n > max ? 1 + rnd_below(s, max) : n;
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static uint64_t seed_for(const char *test)
{
	uint64_t seed = env_u64("FERRY_HEAP_SEED", 0);

	if (!seed) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		seed = fh_mix((uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 32 ^ (uint64_t)getpid());
	}
	ksft_print_msg("%s: seed %llu (FERRY_HEAP_SEED=%llu replays)\n", test,
		       (unsigned long long)seed, (unsigned long long)seed);
	fflush(stdout);
	return seed;
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void canary_fill(unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(0xa5 ^ i ^ (i >> 8));
}

static bool canary_ok(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(0xa5 ^ i ^ (i >> 8)))
			return false;
	return true;
}

/* Out of line: inlined next to the harness's setjmp it trips -Wclobbered. */
static __attribute__((noinline)) int layout_of(uint64_t size, struct fh_layout *l)
{
	return fh_layout(size, l);
}

static uint64_t meta_of(uint64_t size)
{
	struct fh_layout l;

	return layout_of(size, &l) ? 0 : l.meta;
}

/* Usable bytes of the block at @off, as its header says. */
static uint64_t usable_of(const unsigned char *base, uint64_t off)
{
	const struct fh_block *b = (const void *)(base + off - FH_BHDR);

	return (b->size_flags & ~FH_FLAGS) - FH_BHDR;
}

static uint64_t key_of(const unsigned char *base, uint64_t size)
{
	const struct fh_head *hd = (const void *)(base + meta_of(size));

	return hd->key;
}

/* Write a block header at @p that passes the check value. */
static void forge_block(unsigned char *base, uint64_t size, uint64_t p, uint64_t sf, uint64_t prev)
{
	struct fh_block *b = (void *)(base + p - FH_BHDR);

	b->prev_size = prev;
	b->size_flags = sf;
	b->check = fh_block_check(key_of(base, size), p, sf);
}

/* Set granule @g's bit and its summary bits, as bit_set() does. */
static void forge_bit(unsigned char *base, uint64_t size, uint64_t g)
{
	struct fh_layout l;

	layout_of(size, &l);
	for (unsigned int k = 0; k < l.levels; k++, g /= 64)
		((uint64_t *)(base + l.lvl_off[k]))[g / 64] |= 1ULL << (g % 64);
}

/* Content stamps: a block is filled at both ends and every 4 KiB. */
static uint64_t stamp_word(uint64_t id, uint64_t pos)
{
	return fh_mix(id * 0x100000001b3ULL ^ pos);
}

static void stamp_fill(unsigned char *p, uint64_t n, uint64_t id)
{
	uint64_t w;

	for (uint64_t i = 4096; i + 8 <= n; i += 4096) {
		w = stamp_word(id, i);
		memcpy(p + i, &w, 8);
	}
	/* The ends last: they are what a stray header write would hit. */
	for (uint64_t i = 0; i < n && i < 256; i++)
		p[i] = (unsigned char)stamp_word(id, i);
	for (uint64_t i = n > 256 ? n - 256 : 0; i < n; i++)
		p[i] = (unsigned char)stamp_word(id, i);
}

static bool stamp_ok(const unsigned char *p, uint64_t n, uint64_t id)
{
	uint64_t w, tail = n > 256 ? n - 256 : 0;

	for (uint64_t i = 0; i < n && i < 256; i++)
		if (p[i] != (unsigned char)stamp_word(id, i))
			return false;
	for (uint64_t i = tail; i < n; i++)
		if (p[i] != (unsigned char)stamp_word(id, i))
			return false;
	for (uint64_t i = 4096; i + 8 <= tail; i += 4096) {
		memcpy(&w, p + i, 8);
		if (w != stamp_word(id, i))
			return false;
	}
	return true;
}

/* ---- the common fixture: one formatted heap ---- */

FIXTURE(heap) {
	struct area a;
	uint64_t size, heap_off, first, meta;
	struct ferry_heap_stats st0;
};

FIXTURE_VARIANT(heap) {
	uint64_t size, heap_off;
};

FIXTURE_VARIANT_ADD(heap, whole_region) { .size = 1 << 20, .heap_off = 0 };
FIXTURE_VARIANT_ADD(heap, after_control_page) { .size = 4 << 20, .heap_off = 4096 };
FIXTURE_VARIANT_ADD(heap, odd_heap_off) { .size = (1 << 20) + (64 << 10), .heap_off = 7 * 64 };

FIXTURE_SETUP(heap)
{
	self->size = variant->size;
	self->heap_off = variant->heap_off;
	ASSERT_EQ(0, area_map(&self->a, self->size));
	canary_fill(self->a.base, self->heap_off);
	ASSERT_EQ(0, ferry_heap_format(self->a.base, self->size, self->heap_off));
	self->first = self->heap_off + 64;
	self->meta = meta_of(self->size);
	ASSERT_EQ(0, ferry_heap_stats(self->a.base, self->size, &self->st0));
	ASSERT_EQ(self->meta - self->first, self->st0.capacity);
	ASSERT_EQ(1, self->st0.free_blocks);
	ASSERT_EQ(0, self->st0.live_blocks);
	ASSERT_EQ(self->st0.capacity - FH_BHDR, self->st0.largest_free);
}

FIXTURE_TEARDOWN(heap)
{
	EXPECT_TRUE(canary_ok(self->a.base, self->heap_off));
	area_unmap(&self->a);
}

/* ---- argument errors ---- */

TEST(format_rejects_bad_arguments)
{
	const uint64_t size = 1 << 20;
	unsigned char *copy = malloc(size);
	struct area a;

	ASSERT_NE(NULL, copy);
	ASSERT_EQ(0, area_map(&a, size));
	memset(a.base, 0x5a, size);
	memcpy(copy, a.base, size);

	EXPECT_EQ(-EINVAL, ferry_heap_format(NULL, size, 0));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base + 8, size - 64, 0));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, size, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, size, 63));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, size, 4096 + 32));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, size, size));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, size, size + 4096));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, size, UINT64_MAX & ~63ULL));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, 0, 0));
	/* Rejected before a single byte is touched, so no fault here. */
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, 1ULL << 48, 0));
	EXPECT_EQ(-EINVAL, ferry_heap_format(a.base, UINT64_MAX, 0));
	/* Too small for the metadata plus one block. */
	EXPECT_EQ(-ENOSPC, ferry_heap_format(a.base, 64, 0));
	EXPECT_EQ(-ENOSPC, ferry_heap_format(a.base, 4096, 0));
	EXPECT_EQ(-ENOSPC, ferry_heap_format(a.base, size, size - 4096));
	EXPECT_EQ(0, memcmp(copy, a.base, size));

	/* The smallest region that formats holds at least one 64-byte block. */
	for (uint64_t s = 4096; s <= size; s += 64) {
		struct ferry_heap_stats st;
		int64_t off;

		if (ferry_heap_format(a.base, s, 0))
			continue;
		ASSERT_EQ(0, ferry_heap_stats(a.base, s, &st));
		ASSERT_GE(st.capacity, 64);
		off = ferry_heap_alloc(a.base, s, st.largest_free);
		ASSERT_EQ(64, off);
		EXPECT_EQ(-ENOMEM, ferry_heap_alloc(a.base, s, 1));
		EXPECT_EQ(0, ferry_heap_free(a.base, s, (uint64_t)off));
		TH_LOG("smallest heap: %llu bytes, capacity %llu", (unsigned long long)s,
		       (unsigned long long)st.capacity);
		break;
	}
	area_unmap(&a);
	free(copy);
}

TEST(calls_on_unformatted_or_resized_region_fail)
{
	const uint64_t size = 1 << 20;
	struct ferry_heap_stats st;
	struct area a;
	int64_t off;

	ASSERT_EQ(0, area_map(&a, size));
	EXPECT_EQ(-EINVAL, ferry_heap_alloc(a.base, size, 64));
	EXPECT_EQ(-EINVAL, ferry_heap_free(a.base, size, 4096));
	EXPECT_EQ(-EINVAL, ferry_heap_check(a.base, size, 4096, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_stats(a.base, size, &st));

	ASSERT_EQ(0, ferry_heap_format(a.base, size, 4096));
	off = ferry_heap_alloc(a.base, size, 100);
	ASSERT_GE(off, 0);
	EXPECT_EQ(0, ferry_heap_check(a.base, size, (uint64_t)off, 100));
	/* Everyone must pass the size the heap was formatted with. */
	EXPECT_EQ(-EINVAL, ferry_heap_alloc(a.base, size - 4096, 64));
	EXPECT_EQ(-EINVAL, ferry_heap_free(a.base, size - 4096, (uint64_t)off));
	EXPECT_EQ(-EINVAL, ferry_heap_check(a.base, size - 4096, (uint64_t)off, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_stats(a.base, size - 4096, &st));
	EXPECT_EQ(-EINVAL, ferry_heap_stats(a.base, size, NULL));
	EXPECT_EQ(-EINVAL, ferry_heap_alloc(NULL, size, 64));
	EXPECT_EQ(-EINVAL, ferry_heap_free(NULL, size, (uint64_t)off));
	EXPECT_EQ(-EINVAL, ferry_heap_check(NULL, size, (uint64_t)off, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_stats(NULL, size, &st));
	EXPECT_EQ(0, ferry_heap_free(a.base, size, (uint64_t)off));
	area_unmap(&a);
}

TEST_F(heap, alloc_rejects_zero_and_too_large)
{
	const uint64_t cap = self->st0.capacity;
	struct ferry_heap_stats st;
	unsigned char *b = self->a.base;

	EXPECT_EQ(-EINVAL, ferry_heap_alloc(b, self->size, 0));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, UINT64_MAX));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, UINT64_MAX - 31));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, (uint64_t)INT64_MAX + 1));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, self->size));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, cap));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, cap - FH_BHDR + 1));
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, memcmp(&st, &self->st0, sizeof(st)));
	/* The whole heap in one block. */
	EXPECT_EQ((int64_t)self->first, ferry_heap_alloc(b, self->size, cap - FH_BHDR));
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, 1));
	EXPECT_EQ(0, ferry_heap_free(b, self->size, self->first));
}

/* ---- alignment, filling, coalescing ---- */

TEST_F(heap, offsets_are_aligned_and_inside_the_heap)
{
	static int64_t offs[4096];
	static uint64_t lens[4096];
	unsigned char *b = self->a.base;
	unsigned int n = 0;

	for (uint64_t len = 1; n < 4096; len = len % 3000 + 1 + (len & 7)) {
		int64_t off = ferry_heap_alloc(b, self->size, len);

		if (off == -ENOMEM)
			break;
		ASSERT_GE(off, 0);
		ASSERT_EQ(0, off % FERRY_HEAP_ALIGN);
		ASSERT_GE((uint64_t)off, self->first);
		ASSERT_LE((uint64_t)off + len, self->meta);
		ASSERT_GE(usable_of(b, off), len);
		memset(b + off, (int)n, len);
		offs[n] = off;
		lens[n++] = len;
	}
	ASSERT_GT(n, 100);
	/* Touching every byte of every block left every other one intact. */
	for (unsigned int i = 0; i < n; i++)
		for (uint64_t j = 0; j < lens[i]; j++)
			ASSERT_EQ((unsigned char)i, b[offs[i] + j]);
	for (unsigned int i = 0; i < n; i++)
		ASSERT_EQ(0, ferry_heap_free(b, self->size, (uint64_t)offs[i]));
}

static int cmp_i64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;

	return (a > b) - (a < b);
}

TEST_F(heap, fill_until_enomem_then_coalesce_to_one_block)
{
	static const uint64_t sizes[] = { 1, 64, 100, 1000, 4000, 33, 20000, 65, 2048 };
	static int64_t offs[65536];
	unsigned char *b = self->a.base;
	struct ferry_heap_stats st;
	unsigned int n = 0, i, even = 0;
	int64_t off;

	for (i = 0; n < 65536; i++) {
		off = ferry_heap_alloc(b, self->size, sizes[i % 9]);
		if (off == -ENOMEM)
			break;
		ASSERT_GE(off, 0);
		offs[n++] = off;
	}
	/* Squeeze the tail: every block left is at least 64 bytes. */
	while (n < 65536 && (off = ferry_heap_alloc(b, self->size, 1)) >= 0)
		offs[n++] = off;
	ASSERT_EQ(-ENOMEM, off);
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, st.free_blocks);
	EXPECT_EQ(0, st.free);
	EXPECT_EQ(st.capacity, st.used);
	EXPECT_EQ(n, st.live_blocks);

	/* Free every other block by address: no two are neighbours. */
	qsort(offs, n, sizeof(offs[0]), cmp_i64);
	for (i = 0; i < n; i += 2, even++)
		ASSERT_EQ(0, ferry_heap_free(b, self->size, (uint64_t)offs[i]));
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(even, st.free_blocks);
	EXPECT_EQ(n - even, st.live_blocks);
	/* Now each free joins the blocks on both sides. */
	for (i = 1; i < n; i += 2)
		ASSERT_EQ(0, ferry_heap_free(b, self->size, (uint64_t)offs[i]));
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, memcmp(&st, &self->st0, sizeof(st)));

	/* One block of the whole capacity again, and not a byte more. */
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, st.largest_free + 1));
	off = ferry_heap_alloc(b, self->size, st.largest_free);
	ASSERT_EQ((int64_t)self->first, off);
	EXPECT_EQ(-ENOMEM, ferry_heap_alloc(b, self->size, 1));
	EXPECT_EQ(0, ferry_heap_free(b, self->size, (uint64_t)off));
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, memcmp(&st, &self->st0, sizeof(st)));
}

/* ---- bad frees ---- */

TEST_F(heap, free_rejects_garbage_double_and_inner_offsets)
{
	unsigned char *b = self->a.base, *snap = malloc(self->size);
	int64_t x = ferry_heap_alloc(b, self->size, 100);
	int64_t y = ferry_heap_alloc(b, self->size, 5000);
	int64_t z = ferry_heap_alloc(b, self->size, 64);
	int64_t w = ferry_heap_alloc(b, self->size, 300);
	struct ferry_heap_stats st;
	uint64_t bad[32], nbad = 0, q;

	ASSERT_NE(NULL, snap);
	ASSERT_GE(x, 0);
	ASSERT_GE(y, 0);
	ASSERT_GE(z, 0);
	ASSERT_GE(w, 0);
	ASSERT_EQ((uint64_t)y, x + usable_of(b, x) + FH_BHDR);

	bad[nbad++] = 0;
	bad[nbad++] = 1;
	bad[nbad++] = 63;
	bad[nbad++] = self->heap_off;
	bad[nbad++] = self->first - 32;
	bad[nbad++] = x + 1;
	bad[nbad++] = x + 8;
	bad[nbad++] = x + 32;
	bad[nbad++] = x + 64;
	bad[nbad++] = x - 32;
	bad[nbad++] = y + 4096;
	bad[nbad++] = y - 64;
	bad[nbad++] = w + usable_of(b, w) + FH_BHDR;	/* the free rest */
	bad[nbad++] = self->meta - 64;
	bad[nbad++] = self->meta;
	bad[nbad++] = self->meta + 64;
	bad[nbad++] = self->size;
	bad[nbad++] = self->size + 4096;
	bad[nbad++] = (uint64_t)INT64_MAX + 1;
	bad[nbad++] = UINT64_MAX & ~63ULL;
	bad[nbad++] = UINT64_MAX;

	memcpy(snap, b, self->size);
	for (uint64_t i = 0; i < nbad; i++) {
		EXPECT_EQ(-EINVAL, ferry_heap_free(b, self->size, bad[i])) {
			TH_LOG("free(%#llx)", (unsigned long long)bad[i]);
		}
	}
	/* Rejected frees change nothing at all. */
	EXPECT_EQ(0, memcmp(snap, b, self->size));

	/* A header forged inside a live block, check value and all. */
	q = w + 128;
	forge_block(b, self->size, q, 128, 0);
	memcpy(snap, b, self->size);
	EXPECT_EQ(-EINVAL, ferry_heap_free(b, self->size, q));
	EXPECT_EQ(0, memcmp(snap, b, self->size));

	/* Double free. */
	ASSERT_EQ(0, ferry_heap_free(b, self->size, y));
	memcpy(snap, b, self->size);
	EXPECT_EQ(-EINVAL, ferry_heap_free(b, self->size, y));
	EXPECT_EQ(0, memcmp(snap, b, self->size));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, self->size, y, 1));

	/* y's header was swallowed by x's free: it must stay dead. */
	ASSERT_EQ(0, ferry_heap_free(b, self->size, x));
	memcpy(snap, b, self->size);
	EXPECT_EQ(-EINVAL, ferry_heap_free(b, self->size, y));
	EXPECT_EQ(-EINVAL, ferry_heap_free(b, self->size, x));
	EXPECT_EQ(0, memcmp(snap, b, self->size));

	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(2, st.live_blocks);
	EXPECT_EQ(2, st.free_blocks);
	EXPECT_EQ(0, ferry_heap_free(b, self->size, z));
	EXPECT_EQ(0, ferry_heap_free(b, self->size, w));
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, memcmp(&st, &self->st0, sizeof(st)));
	free(snap);
}

TEST_F(heap, stats_and_free_report_broken_structure)
{
	unsigned char *b = self->a.base;
	int64_t x = ferry_heap_alloc(b, self->size, 1000);
	int64_t y = ferry_heap_alloc(b, self->size, 1000);
	int64_t z = ferry_heap_alloc(b, self->size, 1000);
	struct fh_block *yh = (void *)(b + y - FH_BHDR);
	struct ferry_heap_stats st;
	struct fh_layout l;
	uint64_t saved;

	ASSERT_GE(z, 0);
	ASSERT_EQ(0, layout_of(self->size, &l));
	ASSERT_EQ(0, ferry_heap_free(b, self->size, x));

	/* A live block's bitmap bit lost. */
	((uint64_t *)(b + l.lvl_off[0]))[y / 64 / 64] ^= 1ULL << (y / 64 % 64);
	EXPECT_EQ(-EUCLEAN, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, self->size, y, 1));
	((uint64_t *)(b + l.lvl_off[0]))[y / 64 / 64] ^= 1ULL << (y / 64 % 64);
	EXPECT_EQ(0, ferry_heap_stats(b, self->size, &st));

	/* A boundary tag that disagrees: free refuses and changes nothing. */
	saved = yh->prev_size;
	yh->prev_size += 64;
	EXPECT_EQ(-EUCLEAN, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(-EUCLEAN, ferry_heap_free(b, self->size, y));
	yh->prev_size = saved;
	EXPECT_EQ(0, ferry_heap_stats(b, self->size, &st));

	/* A size rewritten without the check value. */
	yh->size_flags += 64;
	EXPECT_EQ(-EUCLEAN, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(-EUCLEAN, ferry_heap_free(b, self->size, y));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, self->size, y, 1));
	yh->size_flags -= 64;

	/* A free block's list link pointing at a live block. */
	saved = ((struct fh_links *)(b + x))->prev;
	((struct fh_links *)(b + x))->prev = (uint64_t)z;
	EXPECT_EQ(-EUCLEAN, ferry_heap_stats(b, self->size, &st));
	((struct fh_links *)(b + x))->prev = saved;

	EXPECT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, ferry_heap_free(b, self->size, y));
	EXPECT_EQ(0, ferry_heap_free(b, self->size, z));
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, memcmp(&st, &self->st0, sizeof(st)));
}

TEST_F(heap, reformat_invalidates_old_offsets)
{
	unsigned char *b = self->a.base;
	int64_t x = ferry_heap_alloc(b, self->size, 4096);
	int64_t y = ferry_heap_alloc(b, self->size, 4096);

	ASSERT_GE(y, 0);
	ASSERT_EQ(0, ferry_heap_free(b, self->size, x));
	ASSERT_EQ(0, ferry_heap_format(b, self->size, self->heap_off));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, self->size, y, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_free(b, self->size, y));
}

/* ---- range checks ---- */

TEST_F(heap, check_accepts_exactly_live_ranges)
{
	static const uint64_t ns[] = { 1, 31, 32, 33, 100, 960, 4096, 70000 };
	unsigned char *b = self->a.base;
	uint64_t size = self->size, dead;
	int64_t offs[8];

	for (unsigned int i = 0; i < 8; i++) {
		offs[i] = ferry_heap_alloc(b, size, ns[i]);
		ASSERT_GE(offs[i], 0);
	}
	dead = offs[3];
	ASSERT_EQ(0, ferry_heap_free(b, size, dead));
	for (unsigned int i = 0; i < 8; i++) {
		uint64_t o = offs[i], u = usable_of(b, o);

		if (o == dead)
			continue;
		EXPECT_EQ(0, ferry_heap_check(b, size, o, 1));
		EXPECT_EQ(0, ferry_heap_check(b, size, o, ns[i]));
		EXPECT_EQ(0, ferry_heap_check(b, size, o, u));
		EXPECT_EQ(0, ferry_heap_check(b, size, o + u - 1, 1));
		EXPECT_EQ(0, ferry_heap_check(b, size, o + u / 2, u - u / 2));
		EXPECT_EQ(0, ferry_heap_check(b, size, o + 1, u - 1));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o, 0));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o, u + 1));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o + u, 1));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o + u - 1, 2));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o - 1, 1));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o - 1, 2));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o - FH_BHDR, FH_BHDR + 1));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o, UINT64_MAX));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o + 1, UINT64_MAX));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o + u - 1, UINT64_MAX - u + 2));
		EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, o, (uint64_t)0 - o));
	}
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, dead, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, dead + 64, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, 0, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, self->heap_off, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, self->first - 1, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, self->meta, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, self->meta - 1, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, size - 1, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, size, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, UINT64_MAX, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, UINT64_MAX - 10, 100));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, offs[7] + 64, UINT64_MAX - 32));
}

struct mblk {
	uint64_t off, n, usable, id;
};

static int cmp_mblk(const void *x, const void *y)
{
	const struct mblk *a = x, *b = y;

	return (a->off > b->off) - (a->off < b->off);
}

/* Is [off, off + len) inside a live block?  @m sorted by offset. */
static bool model_accepts(const struct mblk *m, unsigned int n, uint64_t off, uint64_t len)
{
	unsigned int lo = 0, hi = n;

	while (lo < hi) {	/* first block starting after off */
		unsigned int mid = (lo + hi) / 2;

		if (m[mid].off <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return false;
	m += lo - 1;
	return off - m->off < m->usable && len <= m->usable - (off - m->off);
}

TEST_F(heap, check_matches_model_at_every_offset)
{
	static const uint64_t lens[] = { 1, 7, 64, 100, 1000, 5000 };
	static struct mblk m[2048];
	unsigned char *b = self->a.base;
	uint64_t seed = seed_for("check_matches_model_at_every_offset"), end;
	unsigned int n = 0, mism = 0;

	/* Half the heap in blocks of 1..3000 bytes, then free a third. */
	while (n < 2048) {
		uint64_t len = rnd_size(&seed, 3000);
		int64_t off = ferry_heap_alloc(b, self->size, len);
		struct ferry_heap_stats st;

		ASSERT_GE(off, 0);
		m[n++] = (struct mblk){ off, len, usable_of(b, off), 0 };
		ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
		if (st.used > st.capacity / 2)
			break;
	}
	for (unsigned int i = 0; i < n;) {
		if (rnd_below(&seed, 3) == 0) {
			ASSERT_EQ(0, ferry_heap_free(b, self->size, m[i].off));
			m[i] = m[--n];
		} else {
			i++;
		}
	}
	/* Every 8th byte of the region; beyond the blocks once is enough. */
	qsort(m, n, sizeof(m[0]), cmp_mblk);
	end = m[0].off;
	for (unsigned int i = 0; i < n; i++)
		if (m[i].off + m[i].usable > end)
			end = m[i].off + m[i].usable;
	end = end + 4096 < self->size ? end + 4096 : self->size;
	for (uint64_t off = 0; off < end; off += 8)
		for (unsigned int k = 0; k < 6; k++) {
			bool want = model_accepts(m, n, off, lens[k]);
			bool got = ferry_heap_check(b, self->size, off, lens[k]) == 0;

			if (want != got && mism++ < 10)
				TH_LOG("check(%#llx, %llu) = %d, model %d", (unsigned long long)off,
				       (unsigned long long)lens[k], got, want);
		}
	EXPECT_EQ(0, mism);
}

/* ---- random workload against a model ---- */

FIXTURE(big) {
	struct area a;
	uint64_t size, heap_off, first, meta;
};

FIXTURE_SETUP(big)
{
	self->size = 64 << 20;
	self->heap_off = 4096;
	ASSERT_EQ(0, area_map(&self->a, self->size));
	canary_fill(self->a.base, self->heap_off);
	ASSERT_EQ(0, ferry_heap_format(self->a.base, self->size, self->heap_off));
	self->first = self->heap_off + 64;
	self->meta = meta_of(self->size);
}

FIXTURE_TEARDOWN(big)
{
	EXPECT_TRUE(canary_ok(self->a.base, self->heap_off));
	area_unmap(&self->a);
}

TEST_F_TIMEOUT(big, random_ops_match_model, 300)
{
	const uint64_t ops = env_u64("FERRY_HEAP_OPS", 200000);
	uint64_t seed = seed_for("random_ops_match_model"), used = 0, next_id = 1;
	uint64_t nallocs = 0, nomem = 0, misses = 0, peak = 0;
	struct mblk *m = calloc(1 << 20, sizeof(*m));
	unsigned char *b = self->a.base;
	struct ferry_heap_stats st;
	unsigned int n = 0;

	ASSERT_NE(NULL, m);
	for (uint64_t op = 0; op < ops; op++) {
		bool do_alloc = n == 0 || rnd_below(&seed, 100) < 52;

		if (do_alloc) {
			uint64_t len = rnd_below(&seed, 8) ? rnd_size(&seed, 1 << 20)
							   : 1 + rnd_below(&seed, 1 << 20);
			int64_t off = ferry_heap_alloc(b, self->size, len);
			struct mblk *k;

			if (off == -ENOMEM) {
				unsigned int fl1, sl1, fl2, sl2;

				nomem++;
				ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
				if (st.largest_free < len)
					continue;
				/*
				 * Good fit only misses when the one block big
				 * enough shares the request's class.
				 */
				misses++;
				fh_class(fh_round64(len + FH_BHDR), &fl1, &sl1);
				fh_class(st.largest_free + FH_BHDR, &fl2, &sl2);
				ASSERT_EQ(fl1, fl2);
				ASSERT_EQ(sl1, sl2);
				continue;
			}
			ASSERT_GE(off, 0) {
				TH_LOG("op %llu: alloc(%llu) = %lld", (unsigned long long)op,
				       (unsigned long long)len, (long long)off);
			}
			nallocs++;
			k = &m[n];
			*k = (struct mblk){ off, len, usable_of(b, off), next_id++ };
			ASSERT_EQ(0, k->off % FERRY_HEAP_ALIGN);
			/* Blocks are split to exactly what was asked, rounded to 64. */
			ASSERT_EQ(fh_round64(len + FH_BHDR) - FH_BHDR, k->usable);
			ASSERT_GE(k->off, self->first);
			ASSERT_LE(k->off + k->usable, self->meta);
			for (unsigned int i = 0; i < n; i++) {
				ASSERT_TRUE(k->off + k->usable <= m[i].off ||
					    m[i].off + m[i].usable <= k->off) {
					TH_LOG("op %llu: [%#llx,+%llu) overlaps [%#llx,+%llu)",
					       (unsigned long long)op, (unsigned long long)k->off,
					       (unsigned long long)k->usable,
					       (unsigned long long)m[i].off,
					       (unsigned long long)m[i].usable);
				}
			}
			ASSERT_EQ(0, ferry_heap_check(b, self->size, k->off, len));
			ASSERT_EQ(0, ferry_heap_check(b, self->size, k->off, k->usable));
			ASSERT_EQ(-EINVAL, ferry_heap_check(b, self->size, k->off, k->usable + 1));
			ASSERT_EQ(-EINVAL, ferry_heap_check(b, self->size, k->off - 1, 1));
			stamp_fill(b + k->off, len, k->id);
			used += k->usable + FH_BHDR;
			n++;
			if (n > peak)
				peak = n;
		} else {
			unsigned int i = (unsigned int)rnd_below(&seed, n);

			ASSERT_TRUE(stamp_ok(b + m[i].off, m[i].n, m[i].id)) {
				TH_LOG("op %llu: block %#llx (%llu bytes) was overwritten",
				       (unsigned long long)op, (unsigned long long)m[i].off,
				       (unsigned long long)m[i].n);
			}
			ASSERT_EQ(0, ferry_heap_free(b, self->size, m[i].off));
			ASSERT_EQ(-EINVAL, ferry_heap_check(b, self->size, m[i].off, 1));
			used -= m[i].usable + FH_BHDR;
			m[i] = m[--n];
		}
		if (op % 1024 == 0 || op + 1 == ops) {
			ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
			ASSERT_EQ(used, st.used);
			ASSERT_EQ(n, st.live_blocks);
			ASSERT_EQ(st.capacity, st.used + st.free);
		}
		if (op % 16384 == 0)
			for (unsigned int i = 0; i < n; i++)
				ASSERT_TRUE(stamp_ok(b + m[i].off, m[i].n, m[i].id));
	}
	ksft_print_msg("random_ops: %llu ops, %llu allocs, %llu ENOMEM (%llu good-fit misses), peak %llu live\n",
		       (unsigned long long)ops, (unsigned long long)nallocs,
		       (unsigned long long)nomem, (unsigned long long)misses,
		       (unsigned long long)peak);
	fflush(stdout);
	while (n) {
		n--;
		ASSERT_TRUE(stamp_ok(b + m[n].off, m[n].n, m[n].id));
		ASSERT_EQ(0, ferry_heap_free(b, self->size, m[n].off));
	}
	ASSERT_EQ(0, ferry_heap_stats(b, self->size, &st));
	EXPECT_EQ(0, st.used);
	EXPECT_EQ(1, st.free_blocks);
	EXPECT_EQ(st.capacity - FH_BHDR, st.largest_free);
	free(m);
}

TEST_F(big, speed_one_million_alloc_free_pairs)
{
	enum { RING = 1024, PAIRS = 1000000, CHECKS = 1000000 };
	static uint64_t sizes[RING];
	static int64_t ring[RING];
	uint64_t seed = 42, sink = 0;
	unsigned char *b = self->a.base;
	double t0, pair_ns, check_ns;

	for (unsigned int i = 0; i < RING; i++) {
		sizes[i] = rnd_size(&seed, 64 << 10);
		ring[i] = ferry_heap_alloc(b, self->size, sizes[i]);
		ASSERT_GE(ring[i], 0);
	}
	t0 = now_ns();
	for (unsigned int i = 0; i < PAIRS; i++) {
		unsigned int k = (i * 7919) % RING;

		if (ferry_heap_free(b, self->size, ring[k]))
			break;
		ring[k] = ferry_heap_alloc(b, self->size, sizes[(i + k) % RING]);
		if (ring[k] < 0)
			break;
	}
	pair_ns = (now_ns() - t0) / PAIRS;
	for (unsigned int i = 0; i < RING; i++)
		ASSERT_GE(ring[i], 0);
	t0 = now_ns();
	for (unsigned int i = 0; i < CHECKS; i++) {
		unsigned int k = i % RING;

		sink += ferry_heap_check(b, self->size, ring[k] + (i & 15), 1 + (i & 15)) == 0;
	}
	check_ns = (now_ns() - t0) / CHECKS;
	ksft_print_msg("speed: %.0f ns per alloc+free pair (%.0f ns/op), %.0f ns per check\n",
		       pair_ns, pair_ns / 2, check_ns);
	fflush(stdout);
	EXPECT_EQ(CHECKS, sink);
	EXPECT_LT(pair_ns / 2, 5000.0);
	EXPECT_LT(check_ns, 5000.0);
	for (unsigned int i = 0; i < RING; i++)
		ASSERT_EQ(0, ferry_heap_free(b, self->size, ring[i]));
}

/* ---- corruption ---- */

FIXTURE(corrupt) {
	struct area a;
	uint64_t size, heap_off, first, meta, key;
	int64_t blocks[64];
	unsigned int nblocks;
	unsigned char *pristine;
};

FIXTURE_SETUP(corrupt)
{
	uint64_t seed = 7;

	self->size = 512 << 10;
	self->heap_off = 4096;
	ASSERT_EQ(0, area_map(&self->a, self->size));
	canary_fill(self->a.base, self->heap_off);
	ASSERT_EQ(0, ferry_heap_format(self->a.base, self->size, self->heap_off));
	self->first = self->heap_off + 64;
	self->meta = meta_of(self->size);
	self->key = key_of(self->a.base, self->size);
	/* Live and free blocks of many classes, so every list is in play. */
	for (unsigned int i = 0; i < 64; i++) {
		self->blocks[i] = ferry_heap_alloc(self->a.base, self->size, rnd_size(&seed, 8192));
		ASSERT_GE(self->blocks[i], 0);
	}
	for (unsigned int i = 0; i < 64; i += 3)
		ASSERT_EQ(0, ferry_heap_free(self->a.base, self->size, self->blocks[i]));
	self->nblocks = 64;
	self->pristine = malloc(self->size);
	ASSERT_NE(NULL, self->pristine);
	memcpy(self->pristine, self->a.base, self->size);
}

FIXTURE_TEARDOWN(corrupt)
{
	free(self->pristine);
	area_unmap(&self->a);
}

/* One random way of breaking the heap (never a forged heap header). */
static void corrupt_once(FIXTURE_DATA(corrupt) *self, uint64_t *seed)
{
	unsigned char *b = self->a.base;
	uint64_t size = self->size, meta = self->meta, p, v;
	struct fh_layout l;
	unsigned int k;

	layout_of(size, &l);
	switch (rnd_below(seed, 8)) {
	case 0:	/* bytes anywhere in the heap's metadata except the header's id */
		for (k = 1 + (unsigned int)rnd_below(seed, 64); k; k--)
			b[meta + 48 + rnd_below(seed, size - meta - 48)] = (unsigned char)rnd(seed);
		break;
	case 1:	/* whole bitmap words, upper levels included */
		for (k = 1 + (unsigned int)rnd_below(seed, 16); k; k--) {
			unsigned int lv = (unsigned int)rnd_below(seed, l.levels);

			v = rnd(seed);
			memcpy(b + l.lvl_off[lv] + 8 * rnd_below(seed, l.lvl_words[lv]), &v, 8);
		}
		break;
	case 2:	/* bytes of block headers and free links */
		for (k = 1 + (unsigned int)rnd_below(seed, 8); k; k--) {
			p = (uint64_t)self->blocks[rnd_below(seed, self->nblocks)];
			b[p - FH_BHDR + rnd_below(seed, FH_BHDR + 16)] = (unsigned char)rnd(seed);
		}
		break;
	case 3:	/* headers with valid check values and lying sizes */
		for (k = 1 + (unsigned int)rnd_below(seed, 4); k; k--) {
			static const uint64_t sfs[] = { 0, 64, 1, 65, 4096, 1ULL << 40, UINT64_MAX & ~63ULL };
			uint64_t sf;

			p = rnd_below(seed, 2) ? (uint64_t)self->blocks[rnd_below(seed, self->nblocks)]
					       : self->first + 64 * rnd_below(seed, (meta - self->first) / 64);
			switch (rnd_below(seed, 3)) {
			case 0:
				sf = sfs[rnd_below(seed, 7)];
				break;
			case 1:
				sf = meta - p + 64 * rnd_below(seed, 3);
				break;
			default:
				sf = rnd(seed) & ~63ULL;
			}
			sf |= rnd_below(seed, 2);
			forge_block(b, size, p, sf, rnd_below(seed, 2) ? rnd(seed) : 64 * rnd_below(seed, 64));
			if (rnd_below(seed, 2))
				forge_bit(b, size, p / 64);
		}
		break;
	case 4:	/* list heads and class maps pointing anywhere */
		for (k = 1 + (unsigned int)rnd_below(seed, 8); k; k--) {
			static const uint64_t vs[] = { 0, 32, 64, 4096, 4160 };
			uint64_t at = meta + 48 + 8 * rnd_below(seed, (sizeof(struct fh_head) - 48) / 8);

			switch (rnd_below(seed, 4)) {
			case 0:
				v = vs[rnd_below(seed, 5)];
				break;
			case 1:
				v = meta + 64 * rnd_below(seed, 8);
				break;
			case 2:
				v = (uint64_t)self->blocks[rnd_below(seed, self->nblocks)];
				break;
			default:
				v = rnd(seed);
			}
			memcpy(b + at, &v, 8);
		}
		break;
	case 5:	/* free links of free blocks pointing anywhere */
		for (k = 1 + (unsigned int)rnd_below(seed, 4); k; k--) {
			p = (uint64_t)self->blocks[3 * rnd_below(seed, 22)];
			v = rnd_below(seed, 2) ? (uint64_t)self->blocks[rnd_below(seed, self->nblocks)]
					       : rnd(seed) & ~63ULL;
			memcpy(b + p + 8 * rnd_below(seed, 2), &v, 8);
		}
		break;
	case 6:	/* everything from heap_off up: random bytes here and there */
		for (k = 1 + (unsigned int)rnd_below(seed, 256); k; k--)
			b[self->heap_off + rnd_below(seed, size - self->heap_off)] = (unsigned char)rnd(seed);
		break;
	default: /* all metadata random, header included */
		for (p = meta; p < size; p += 8) {
			v = rnd(seed);
			memcpy(b + p, &v, 8);
		}
	}
}

/* Whatever the heap says, an accepted range is inside the block area. */
static bool check_is_sane(FIXTURE_DATA(corrupt) *self, uint64_t *seed, uint64_t *accepted)
{
	unsigned char *b = self->a.base;
	uint64_t size = self->size, off, len;

	switch (rnd_below(seed, 4)) {
	case 0:
		off = rnd_below(seed, size + 8192);
		break;
	case 1:
		off = (uint64_t)self->blocks[rnd_below(seed, self->nblocks)] + rnd_below(seed, 256) - 64;
		break;
	case 2:
		off = self->meta - 256 + rnd_below(seed, 512);
		break;
	default:
		off = rnd(seed);
	}
	switch (rnd_below(seed, 5)) {
	case 0:
		len = 1 + rnd_below(seed, 128);
		break;
	case 1:
		len = 1 + rnd_below(seed, size);
		break;
	case 2:
		len = UINT64_MAX;
		break;
	case 3:
		len = 0 - off;
		break;
	default:
		len = rnd(seed);
	}
	if (ferry_heap_check(b, size, off, len))
		return true;
	(*accepted)++;
	/* first >= 64 always; meta is computed from the size, never read. */
	return len != 0 && off >= 64 && off < self->meta && len <= self->meta - off;
}

TEST_F_TIMEOUT(corrupt, check_stats_alloc_free_survive_random_metadata, 120)
{
	uint64_t seed = seed_for("check_stats_alloc_free_survive_random_metadata");
	const unsigned int iters = (unsigned int)env_u64("FERRY_HEAP_CORRUPT_ITERS", 4000);
	uint64_t accepted = 0, stats_ok = 0, allocs_ok = 0, frees_ok = 0;
	unsigned char *b = self->a.base;

	for (unsigned int it = 0; it < iters; it++) {
		struct ferry_heap_stats st;

		/* Mostly fresh damage; sometimes pile it onto the last round's. */
		if (it % 4 != 3)
			memcpy(b + self->heap_off, self->pristine + self->heap_off,
			       self->size - self->heap_off);
		corrupt_once(self, &seed);
		for (unsigned int i = 0; i < 200; i++)
			ASSERT_TRUE(check_is_sane(self, &seed, &accepted));
		if (ferry_heap_stats(b, self->size, &st) == 0) {
			stats_ok++;
			ASSERT_EQ(st.capacity, st.used + st.free);
			ASSERT_LE(st.capacity, self->meta);
		}
		for (unsigned int i = 0; i < 16; i++) {
			uint64_t off = rnd_below(&seed, 2) ? (uint64_t)self->blocks[rnd_below(&seed, 64)]
							   : rnd_below(&seed, self->size + 4096) & ~63ULL;
			int64_t got;

			frees_ok += ferry_heap_free(b, self->size, off) == 0;
			got = ferry_heap_alloc(b, self->size, rnd_size(&seed, 16384));
			if (got >= 0) {
				allocs_ok++;
				ASSERT_EQ(0, got % 64);
				ASSERT_GE((uint64_t)got, 64);
				ASSERT_LT((uint64_t)got, self->meta);
			} else {
				ASSERT_TRUE(got == -ENOMEM || got == -EINVAL || got == -EUCLEAN) {
					TH_LOG("alloc: %lld", (long long)got);
				}
			}
		}
		for (unsigned int i = 0; i < 50; i++)
			ASSERT_TRUE(check_is_sane(self, &seed, &accepted));
		ferry_heap_stats(b, self->size, &st);
		/* Random bytes cannot forge the header: nothing below heap_off moved. */
		ASSERT_TRUE(canary_ok(b, self->heap_off)) {
			TH_LOG("iteration %u wrote below heap_off", it);
		}
	}
	ksft_print_msg("corruption: %u rounds, %llu checks accepted, stats ok %llu, allocs ok %llu, frees ok %llu\n",
		       iters, (unsigned long long)accepted, (unsigned long long)stats_ok,
		       (unsigned long long)allocs_ok, (unsigned long long)frees_ok);
	fflush(stdout);
}

TEST_F(corrupt, forged_headers_cannot_stretch_past_the_heap)
{
	unsigned char *b = self->a.base;
	uint64_t size = self->size, meta = self->meta;
	uint64_t last = self->blocks[62], p;	/* live, and last of them */

	/* A live block claiming to run into (and past) the metadata. */
	forge_block(b, size, last, meta - last, 0);
	EXPECT_EQ(0, ferry_heap_check(b, size, last, meta - last - FH_BHDR));
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, last, meta - last - FH_BHDR + 1));
	forge_block(b, size, last, meta - last + 64, 0);
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, last, 1));
	forge_block(b, size, last, UINT64_MAX & ~63ULL, 0);
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, last, 1));
	EXPECT_EQ(-EUCLEAN, ferry_heap_free(b, size, last));

	/* A bit for a granule in the metadata, and a header there. */
	p = meta + 128;
	forge_bit(b, size, p / 64);
	EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, p, 1));
	EXPECT_EQ(-EINVAL, ferry_heap_free(b, size, p));

	/* Every summary bit set, nothing below: a clean "no". */
	memcpy(b + self->heap_off, self->pristine + self->heap_off, size - self->heap_off);
	{
		struct fh_layout l;

		layout_of(size, &l);
		for (unsigned int k = 1; k < l.levels; k++)
			memset(b + l.lvl_off[k], 0xff, 8 * l.lvl_words[k]);
		memset(b + l.lvl_off[0], 0, 8 * l.lvl_words[0]);
		for (p = 0; p < size; p += 64)
			EXPECT_EQ(-EINVAL, ferry_heap_check(b, size, p, 1));
	}

	/* Restored, everything works again. */
	memcpy(b + self->heap_off, self->pristine + self->heap_off, size - self->heap_off);
	for (unsigned int i = 1; i < 64; i += 3)
		EXPECT_EQ(0, ferry_heap_check(b, size, self->blocks[i], 1));
	EXPECT_TRUE(canary_ok(b, self->heap_off));
}

/* ---- concurrency: readers while someone writes ---- */

struct race {
	FIXTURE_DATA(corrupt) *self;
	int stop;
	uint64_t seed, rounds, bad;
	int64_t pinned[16];
};

/* A hostile owner rewriting metadata words as fast as it can. */
static void *scribbler(void *arg)
{
	struct race *r = arg;
	unsigned char *b = r->self->a.base;
	uint64_t seed = r->seed;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		uint64_t v, at;

		if (rnd_below(&seed, 2)) {
			at = r->self->meta + 8 * rnd_below(&seed, (r->self->size - r->self->meta) / 8);
		} else {
			at = (uint64_t)r->self->blocks[rnd_below(&seed, r->self->nblocks)] - FH_BHDR;
			at += 8 * rnd_below(&seed, 6);
		}
		switch (rnd_below(&seed, 3)) {
		case 0:
			v = rnd(&seed);
			break;
		case 1:
			v = (uint64_t)r->self->blocks[rnd_below(&seed, r->self->nblocks)];
			break;
		default:
			v = ((uint64_t *)(r->self->pristine))[at / 8];
		}
		__atomic_store_n((uint64_t *)(b + at), v, __ATOMIC_RELAXED);
		r->rounds++;
	}
	return NULL;
}

TEST_F(corrupt, check_races_a_hostile_writer)
{
	struct race r = { .self = self, .seed = seed_for("check_races_a_hostile_writer") };
	uint64_t seed = r.seed ^ 1, accepted = 0, checks = 0;
	struct ferry_heap_stats st;
	pthread_t t;
	double until = now_ns() + 300e6;

	ASSERT_EQ(0, pthread_create(&t, NULL, scribbler, &r));
	while (now_ns() < until) {
		for (unsigned int i = 0; i < 256; i++, checks++)
			if (!check_is_sane(self, &seed, &accepted))
				r.bad++;
		ferry_heap_stats(self->a.base, self->size, &st);
	}
	__atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	ksft_print_msg("race: %llu checks (%llu accepted) against %llu hostile writes\n",
		       (unsigned long long)checks, (unsigned long long)accepted,
		       (unsigned long long)r.rounds);
	fflush(stdout);
	EXPECT_EQ(0, r.bad);
}

/* An honest owner churning blocks while a helper checks others. */
static void *checker(void *arg)
{
	struct race *r = arg;
	unsigned char *b = r->self->a.base;
	uint64_t seed = r->seed;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		int64_t p = r->pinned[rnd_below(&seed, 16)];
		uint64_t u = usable_of(b, p), at = rnd_below(&seed, u);

		if (ferry_heap_check(b, r->self->size, p + at, 1 + rnd_below(&seed, u - at)))
			r->bad++;
		r->rounds++;
	}
	return NULL;
}

TEST_F(corrupt, check_is_exact_while_the_owner_churns)
{
	struct race r = { .self = self, .seed = seed_for("check_is_exact_while_the_owner_churns") };
	unsigned char *b = self->a.base;
	uint64_t seed = r.seed ^ 1, churn = 0;
	int64_t mine[64] = { 0 };
	double until;
	pthread_t t;

	for (unsigned int i = 0; i < 16; i++) {
		r.pinned[i] = ferry_heap_alloc(b, self->size, rnd_size(&seed, 2000));
		ASSERT_GE(r.pinned[i], 0);
	}
	ASSERT_EQ(0, pthread_create(&t, NULL, checker, &r));
	until = now_ns() + 300e6;
	while (now_ns() < until) {
		unsigned int k = (unsigned int)rnd_below(&seed, 64);

		if (mine[k] > 0) {
			ASSERT_EQ(0, ferry_heap_free(b, self->size, mine[k]));
			mine[k] = 0;
		} else {
			mine[k] = ferry_heap_alloc(b, self->size, rnd_size(&seed, 4096));
		}
		churn++;
	}
	__atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	ksft_print_msg("churn: %llu owner ops, %llu concurrent checks\n",
		       (unsigned long long)churn, (unsigned long long)r.rounds);
	fflush(stdout);
	EXPECT_EQ(0, r.bad);
}

TEST_HARNESS_MAIN
