// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The stream-safe offset allocator behind pools (palloc.h), with fake
 * streams whose work completes only when a test says so: argument errors,
 * alignment and bounds, filling and coalescing, a seeded random workload
 * against a reference model, deferred frees that must not be handed out
 * before the foreign stream's work completed, the reclaim-then-retry path
 * before -ENOMEM, cross-stream reuse that orders the new stream after the
 * old one, and a failing event record that loses nothing.
 *
 * FERRY_PALLOC_SEED=<n> replays the random workload (it prints its seed).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "palloc.h"
#include "kselftest_harness.h"

/* A fake stream: work is "queued" and "completed" by counters. */
struct fstream {
	int id;
	uint64_t queued, completed;
	bool fail_record;
};

struct fevent {
	struct fstream *s;
	uint64_t at;	/* done when s->completed >= at */
};

struct fctx {
	unsigned int records, queries, destroys, live_events;
	unsigned int waits;
	struct fstream *last_waiter, *last_waited;
};

static int f_record(void *ctx, void *stream, void **ev)
{
	struct fctx *c = ctx;
	struct fstream *s = stream;
	struct fevent *e;

	if (s->fail_record)
		return -EIO;
	e = malloc(sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->s = s;
	e->at = s->queued;
	c->records++;
	c->live_events++;
	*ev = e;
	return 0;
}

static int f_query(void *ctx, void *ev)
{
	struct fctx *c = ctx;
	struct fevent *e = ev;

	c->queries++;
	return e->s->completed >= e->at;
}

static void f_destroy(void *ctx, void *ev)
{
	struct fctx *c = ctx;

	c->destroys++;
	c->live_events--;
	free(ev);
}

static int f_wait(void *ctx, void *waiter, void *stream)
{
	struct fctx *c = ctx;

	c->waits++;
	c->last_waiter = waiter;
	c->last_waited = stream;
	return 0;
}

static const struct ferry_palloc_ops fops = {
	.record = f_record, .query = f_query, .destroy = f_destroy, .wait = f_wait,
};

#define KIB 1024ull
#define MIB (1024ull * 1024)

FIXTURE(pa) {
	struct ferry_palloc *a;
	struct fctx ctx;
	struct fstream s1, s2, s3;
};

FIXTURE_SETUP(pa)
{
	memset(&self->ctx, 0, sizeof(self->ctx));
	self->s1 = (struct fstream){ .id = 1 };
	self->s2 = (struct fstream){ .id = 2 };
	self->s3 = (struct fstream){ .id = 3 };
	ASSERT_EQ(0, ferry_palloc_create(1 * MIB, 256, &fops, &self->ctx, &self->a));
}

FIXTURE_TEARDOWN(pa)
{
	ferry_palloc_destroy(self->a);
	/* Every event recorded was destroyed, pending or not. */
	EXPECT_EQ(0, self->ctx.live_events);
}

TEST(bad_arguments)
{
	struct ferry_palloc *a;
	uint64_t off;

	EXPECT_EQ(-EINVAL, ferry_palloc_create(1 * MIB, 32, NULL, NULL, &a));
	EXPECT_EQ(-EINVAL, ferry_palloc_create(1 * MIB, 96, NULL, NULL, &a));
	EXPECT_EQ(-EINVAL, ferry_palloc_create(32, 64, NULL, NULL, &a));
	EXPECT_EQ(-EINVAL, ferry_palloc_create(1 * MIB, 64, NULL, NULL, NULL));
	ASSERT_EQ(0, ferry_palloc_create(1 * MIB + 50, 64, NULL, NULL, &a));
	EXPECT_EQ(-EINVAL, ferry_palloc_alloc(a, 0, NULL, &off));
	EXPECT_EQ(-EINVAL, ferry_palloc_alloc(a, 2 * MIB, NULL, &off));
	EXPECT_EQ(-EINVAL, ferry_palloc_alloc(a, UINT64_MAX, NULL, &off));
	/* Streams need ops. */
	EXPECT_EQ(-EINVAL, ferry_palloc_alloc(a, 64, (void *)1, &off));
	/* The odd tail beyond the last whole unit is not handed out. */
	ASSERT_EQ(0, ferry_palloc_alloc(a, 1 * MIB, NULL, &off));
	EXPECT_EQ(0, off);
	EXPECT_EQ(-ENOMEM, ferry_palloc_alloc(a, 64, NULL, &off));
	EXPECT_EQ(-ENOENT, ferry_palloc_free(a, 64));
	EXPECT_EQ(0, ferry_palloc_free(a, 0));
	EXPECT_EQ(-ENOENT, ferry_palloc_free(a, 0));	/* double free */
	EXPECT_EQ(-ENOENT, ferry_palloc_record_stream(a, 0, (void *)1));
	ferry_palloc_destroy(a);
	ferry_palloc_destroy(NULL);
}

TEST_F(pa, alignment_bounds_and_sizes)
{
	uint64_t off[64];

	for (int i = 0; i < 64; i++) {
		uint64_t n = 1 + (uint64_t)i * 250;

		ASSERT_EQ(0, ferry_palloc_alloc(self->a, n, NULL, &off[i]));
		EXPECT_EQ(0, off[i] % 256);
		EXPECT_GE(ferry_palloc_block_size(self->a, off[i]), n);
		EXPECT_LE(off[i] + ferry_palloc_block_size(self->a, off[i]), 1 * MIB);
		for (int j = 0; j < i; j++) {
			uint64_t a0 = off[j], a1 = a0 + ferry_palloc_block_size(self->a, off[j]);

			EXPECT_TRUE(off[i] >= a1 || off[i] + n <= a0);
		}
	}
	for (int i = 0; i < 64; i++)
		EXPECT_EQ(0, ferry_palloc_free(self->a, off[i]));
}

TEST_F(pa, fill_enomem_and_coalesce_back_to_one_block)
{
	uint64_t offs[256], off;
	struct ferry_palloc_stats st;
	int n = 0;

	while (n < 256 && ferry_palloc_alloc(self->a, 4 * KIB, NULL, &offs[n]) == 0)
		n++;
	EXPECT_EQ(256, n);
	EXPECT_EQ(-ENOMEM, ferry_palloc_alloc(self->a, 256, NULL, &off));
	ferry_palloc_stats(self->a, &st);
	EXPECT_EQ(1 * MIB, st.live);
	EXPECT_EQ(1, st.oom);
	/* Free every other one, then the rest: all must merge again. */
	for (int i = 0; i < n; i += 2)
		ASSERT_EQ(0, ferry_palloc_free(self->a, offs[i]));
	EXPECT_EQ(-ENOMEM, ferry_palloc_alloc(self->a, 8 * KIB, NULL, &off));
	for (int i = 1; i < n; i += 2)
		ASSERT_EQ(0, ferry_palloc_free(self->a, offs[i]));
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 1 * MIB, NULL, &off));
	EXPECT_EQ(0, off);
	EXPECT_EQ(0, ferry_palloc_free(self->a, off));
}

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

TEST(random_workload_against_reference)
{
	enum { UNITS = 4096, OPS = 200000, MAXLIVE = 512 };
	struct ferry_palloc *a;
	unsigned char *owner = calloc(UNITS, 1);	/* 1: unit in a live block */
	uint64_t live_off[MAXLIVE], live_len[MAXLIVE], seed, off, sum = 0;
	struct ferry_palloc_stats st;
	unsigned int nlive = 0, fails = 0;
	const char *env = getenv("FERRY_PALLOC_SEED");

	seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) * 2654435761u;
	if (!seed)
		seed = 1;
	ksft_print_msg("FERRY_PALLOC_SEED=%llu\n", (unsigned long long)seed);
	fflush(stdout);	/* the case runs in a child that leaves by _exit() */
	ASSERT_NE(NULL, owner);
	ASSERT_EQ(0, ferry_palloc_create(UNITS * 64ull, 64, NULL, NULL, &a));
	for (int op = 0; op < OPS; op++) {
		bool do_alloc = nlive == 0 || (nlive < MAXLIVE && xs(&seed) % 100 < 55);

		if (do_alloc) {
			/* Mostly small, sometimes big. */
			uint64_t n = xs(&seed) % 8 ? 1 + xs(&seed) % 2048 : 1 + xs(&seed) % (64 * 1024);
			uint64_t u0, u1;

			if (ferry_palloc_alloc(a, n, NULL, &off)) {
				fails++;
				continue;
			}
			ASSERT_EQ(0, off % 64);
			u0 = off / 64;
			u1 = u0 + (n + 63) / 64;
			ASSERT_LE(u1, UNITS);
			for (uint64_t u = u0; u < u1; u++) {
				ASSERT_EQ(0, owner[u]) TH_LOG("overlap at unit %llu (seed %llu)",
							      (unsigned long long)u,
							      (unsigned long long)seed);
				owner[u] = 1;
			}
			live_off[nlive] = off;
			live_len[nlive++] = n;
			sum += ferry_palloc_block_size(a, off);
		} else {
			unsigned int k = (unsigned int)(xs(&seed) % nlive);
			uint64_t u0 = live_off[k] / 64, u1 = u0 + (live_len[k] + 63) / 64;

			sum -= ferry_palloc_block_size(a, live_off[k]);
			ASSERT_EQ(0, ferry_palloc_free(a, live_off[k]));
			for (uint64_t u = u0; u < u1; u++)
				owner[u] = 0;
			live_off[k] = live_off[--nlive];
			live_len[k] = live_len[nlive];
		}
		ferry_palloc_stats(a, &st);
		ASSERT_EQ(sum, st.live);
		ASSERT_EQ(nlive, st.nlive);
	}
	while (nlive) {
		nlive--;
		ASSERT_EQ(0, ferry_palloc_free(a, live_off[nlive]));
	}
	/* Everything merged back into one block. */
	ASSERT_EQ(0, ferry_palloc_alloc(a, UNITS * 64ull, NULL, &off));
	ksft_print_msg("%d ops, %u allocations refused for room\n", OPS, fails);
	fflush(stdout);
	ferry_palloc_destroy(a);
	free(owner);
}

TEST_F(pa, free_without_foreign_streams_is_reused_at_once)
{
	uint64_t x, y;

	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 64 * KIB, &self->s1, &x));
	/* Using it on its own stream is no foreign use. */
	EXPECT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s1));
	self->s1.queued++;	/* work pending on s1 does not matter to s1 */
	ASSERT_EQ(0, ferry_palloc_free(self->a, x));
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 64 * KIB, &self->s1, &y));
	EXPECT_EQ(x, y);
	EXPECT_EQ(0, self->ctx.records);
	EXPECT_EQ(0, self->ctx.waits);
	EXPECT_EQ(0, ferry_palloc_free(self->a, y));
}

TEST_F(pa, deferred_free_not_handed_out_before_foreign_work_completes)
{
	struct ferry_palloc_stats st;
	uint64_t x, y, z;

	/* x fills half the pool; stream 2 still has work queued on it. */
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 512 * KIB, &self->s1, &x));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s2));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s2));	/* once */
	self->s2.queued = 5;
	ASSERT_EQ(0, ferry_palloc_free(self->a, x));
	EXPECT_EQ(1, self->ctx.records);
	EXPECT_EQ(-ENOENT, ferry_palloc_free(self->a, x));
	ferry_palloc_stats(self->a, &st);
	EXPECT_EQ(512 * KIB, st.deferred);
	EXPECT_EQ(1, st.deferred_frees);

	/* The same request gets the other half, never x. */
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 512 * KIB, &self->s1, &y));
	EXPECT_NE(x, y);
	/* No room: reclaim finds nothing completed, so -ENOMEM. */
	EXPECT_EQ(-ENOMEM, ferry_palloc_alloc(self->a, 256 * KIB, &self->s1, &z));
	ferry_palloc_stats(self->a, &st);
	EXPECT_EQ(0, st.retries);
	EXPECT_EQ(1, st.oom);
	EXPECT_EQ(0, ferry_palloc_reclaim(self->a));

	/* Part of stream 2's work completes: still not enough. */
	self->s2.completed = 4;
	EXPECT_EQ(-ENOMEM, ferry_palloc_alloc(self->a, 256 * KIB, &self->s1, &z));
	/* All of it: the next allocation reclaims, retries and gets x back. */
	self->s2.completed = 5;
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 256 * KIB, &self->s1, &z));
	EXPECT_EQ(x, z);
	ferry_palloc_stats(self->a, &st);
	EXPECT_EQ(1, st.retries);
	EXPECT_EQ(1, st.reclaimed);
	EXPECT_EQ(0, st.deferred);
	EXPECT_EQ(1, self->ctx.destroys);
	EXPECT_EQ(0, ferry_palloc_free(self->a, y));
	EXPECT_EQ(0, ferry_palloc_free(self->a, z));
}

TEST_F(pa, deferred_free_waits_for_every_foreign_stream)
{
	uint64_t x, y;

	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 1 * MIB, &self->s1, &x));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s2));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s3));
	self->s2.queued = 1;
	self->s3.queued = 1;
	ASSERT_EQ(0, ferry_palloc_free(self->a, x));
	self->s2.completed = 1;
	EXPECT_EQ(0, ferry_palloc_reclaim(self->a));
	EXPECT_EQ(-ENOMEM, ferry_palloc_alloc(self->a, 64, &self->s1, &y));
	self->s3.completed = 1;
	EXPECT_EQ(1, ferry_palloc_reclaim(self->a));
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 1 * MIB, &self->s1, &y));
	EXPECT_EQ(0, ferry_palloc_free(self->a, y));
}

TEST_F(pa, reuse_from_another_stream_waits_for_the_old_one)
{
	struct ferry_palloc_stats st;
	uint64_t x, y;

	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 1 * MIB, &self->s1, &x));
	ASSERT_EQ(0, ferry_palloc_free(self->a, x));
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 4 * KIB, &self->s2, &y));
	EXPECT_EQ(x, y);
	EXPECT_EQ(1, self->ctx.waits);
	EXPECT_EQ(&self->s2, self->ctx.last_waiter);
	EXPECT_EQ(&self->s1, self->ctx.last_waited);
	ferry_palloc_stats(self->a, &st);
	EXPECT_EQ(1, st.cross_stream_waits);
	EXPECT_EQ(0, ferry_palloc_free(self->a, y));
}

TEST_F(pa, memory_split_between_streams_is_merged_on_demand)
{
	struct ferry_palloc_stats st;
	uint64_t x, y, z;

	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 512 * KIB, &self->s1, &x));
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 512 * KIB, &self->s2, &y));
	ASSERT_EQ(0, ferry_palloc_free(self->a, x));
	ASSERT_EQ(0, ferry_palloc_free(self->a, y));
	/* Two free halves of different streams: whole-pool request on s3. */
	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 1 * MIB, &self->s3, &z));
	EXPECT_EQ(0, z);
	ferry_palloc_stats(self->a, &st);
	EXPECT_EQ(1, st.laundered);
	EXPECT_EQ(2, self->ctx.waits);	/* s3 after s1, s3 after s2 */
	EXPECT_EQ(&self->s3, self->ctx.last_waiter);
	EXPECT_EQ(0, ferry_palloc_free(self->a, z));
}

TEST_F(pa, failed_event_record_loses_nothing)
{
	uint64_t x;

	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 4 * KIB, &self->s1, &x));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s2));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s3));
	self->s3.fail_record = true;
	EXPECT_EQ(-EIO, ferry_palloc_free(self->a, x));
	EXPECT_EQ(4 * KIB, ferry_palloc_block_size(self->a, x));	/* still live */
	EXPECT_EQ(0, self->ctx.live_events);
	self->s3.fail_record = false;
	EXPECT_EQ(0, ferry_palloc_free(self->a, x));
	EXPECT_EQ(-ENOENT, ferry_palloc_record_stream(self->a, x, &self->s2));
}

TEST_F(pa, pending_events_destroyed_with_the_allocator)
{
	uint64_t x;

	ASSERT_EQ(0, ferry_palloc_alloc(self->a, 4 * KIB, &self->s1, &x));
	ASSERT_EQ(0, ferry_palloc_record_stream(self->a, x, &self->s2));
	self->s2.queued = 1;
	ASSERT_EQ(0, ferry_palloc_free(self->a, x));
	EXPECT_EQ(1, self->ctx.live_events);
	/* teardown destroys the allocator and checks live_events == 0 */
}

TEST_HARNESS_MAIN
