// SPDX-License-Identifier: GPL-2.0
/*
 * The extensible structs of ferry.h through their _sized entry points,
 * as callers with an older, the same and a newer header would call them:
 * a newer caller's struct is this one with bytes after it.  What a
 * program built against 0.1's header sees is tests/abi/old_header.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "kselftest_harness.h"
#include "sized.h"

#define EXTRA 24	/* what a newer header appended */

/* A struct of a newer release: today's, then fields we do not know. */
struct newer_opts {
	struct ferry_broker_opts o;
	unsigned char tail[EXTRA];
};
struct newer_stats {
	struct ferry_broker_stats s;
	unsigned char tail[EXTRA];
};

static int echo(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		void *arg)
{
	(void)h, (void)arg;
	rep->arg[0] = req->arg[0] + 1;
	return 0;
}

static int calls(struct ferry_child *c, void *arg)
{
	struct ferry_desc req = { .op = 1 }, rep;
	unsigned int i, n = *(unsigned int *)arg;

	for (i = 0; i < n; i++) {
		req.arg[0] = i;
		if (ferry_call(c, &req, &rep) || rep.status || rep.arg[0] != i + 1)
			return 1;
	}
	return 0;
}

static unsigned int ncalls = 50;

static void small_broker(struct ferry_broker_opts *o)
{
	o->children = 2;
	o->helpers = 1;
	o->region_size = 1u << 20;
	o->handler = echo;
	o->child_fn = calls;
	o->child_arg = &ncalls;
}

TEST(version_is_the_headers)
{
	EXPECT_EQ(FERRY_VERSION, ferry_version());
	EXPECT_EQ(FERRY_VERSION_CODE(0, 2, 0), ferry_version());
}

TEST(opts_init_sets_defaults_and_zeroes_a_newer_tail)
{
	struct newer_opts n;

	memset(&n, 0xa5, sizeof(n));
	ASSERT_EQ(0, ferry_broker_opts_init_sized(&n.o, sizeof(n)));
	EXPECT_EQ(1, n.o.helpers);
	EXPECT_EQ(1, n.o.children);
	EXPECT_EQ(-1, n.o.numa_node);
	EXPECT_EQ(FERRY_GPU_AUTO, n.o.gpu);
	EXPECT_EQ(FERRY_CPU_AUTO, n.o.dispatch_cpu);
	EXPECT_EQ(0, n.o.reserved);
	EXPECT_EQ(0, n.o.flags);
	for (size_t i = 0; i < EXTRA; i++)
		ASSERT_EQ(0, n.tail[i]);
}

TEST(opts_of_no_release_size_are_einval)
{
	struct newer_opts n;
	size_t bad[] = { 0, 1, 8, offsetof(struct ferry_broker_opts, flags),
			 sizeof(struct ferry_broker_opts) - 4, sizeof(struct ferry_broker_opts) - 1 };
	struct ferry_broker *b = NULL;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&n, 0, sizeof(n));
		EXPECT_EQ(-EINVAL, ferry_broker_opts_init_sized(&n.o, bad[i]));
		ferry_broker_opts_init(&n.o);
		small_broker(&n.o);
		EXPECT_EQ(-EINVAL, ferry_broker_start_sized(&n.o, bad[i], &b));
		EXPECT_EQ(NULL, b);
	}
	EXPECT_EQ(-EINVAL, ferry_broker_opts_init_sized(NULL, sizeof(n.o)));
}

TEST(opts_newer_nonzero_tail_is_e2big)
{
	struct newer_opts n;
	struct ferry_broker *b = NULL;

	for (size_t i = 0; i < EXTRA; i++) {
		ASSERT_EQ(0, ferry_broker_opts_init_sized(&n.o, sizeof(n)));
		small_broker(&n.o);
		n.tail[i] = 1;
		ASSERT_EQ(-E2BIG, ferry_broker_start_sized(&n.o, sizeof(n), &b));
		ASSERT_EQ(NULL, b);
	}
}

/* reserved names padding between fields: it must be 0. */
TEST(opts_reserved_nonzero_is_e2big)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b = NULL;

	ferry_broker_opts_init(&o);
	small_broker(&o);
	o.reserved = 1;
	EXPECT_EQ(-E2BIG, ferry_broker_start(&o, &b));
	EXPECT_EQ(NULL, b);
}

/* A newer caller whose new fields are all 0 runs as today's would. */
TEST(opts_newer_zero_tail_starts_and_serves)
{
	struct newer_opts n;
	struct ferry_broker *b;
	struct newer_stats st;

	ASSERT_EQ(0, ferry_broker_opts_init_sized(&n.o, sizeof(n)));
	small_broker(&n.o);
	ASSERT_EQ(0, ferry_broker_start_sized(&n.o, sizeof(n), &b));
	ASSERT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	memset(&st, 0xa5, sizeof(st));
	ASSERT_EQ(0, ferry_broker_stats_sized(b, &st.s, sizeof(st)));
	EXPECT_EQ(2 * ncalls, st.s.requests);
	EXPECT_EQ(2 * ncalls, st.s.replies);
	EXPECT_EQ(0, st.s.bad_desc);
	EXPECT_EQ(2, st.s.child_exits);
	for (size_t i = 0; i < EXTRA; i++)
		ASSERT_EQ(0, st.tail[i]);
	ferry_broker_stop(b);
}

/* Today's header through the macros: the same broker, the same counters. */
TEST(macros_pass_this_headers_sizes)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	ferry_broker_opts_init(&o);
	small_broker(&o);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	ASSERT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ASSERT_EQ(0, ferry_broker_stats(b, &st));
	EXPECT_EQ(2 * ncalls, st.replies);
	EXPECT_EQ(-EINVAL, ferry_broker_stats_sized(b, &st, sizeof(st) - 4));
	EXPECT_EQ(-EINVAL, ferry_broker_stats_sized(b, &st, 0));
	EXPECT_EQ(-EINVAL, ferry_broker_stats_sized(b, NULL, sizeof(st)));
	ferry_broker_stop(b);
}

TEST(heap_stats_sized_fills_up_to_the_callers_size)
{
	size_t size = 1u << 20;
	void *base = aligned_alloc(4096, size);
	struct {
		struct ferry_heap_stats s;
		unsigned char tail[EXTRA];
	} n;
	struct ferry_heap_stats s;

	ASSERT_NE(NULL, base);
	ASSERT_EQ(0, ferry_heap_format(base, size, 0));
	ASSERT_LE(0, ferry_heap_alloc(base, size, 1000));
	memset(&n, 0xa5, sizeof(n));
	ASSERT_EQ(0, ferry_heap_stats_sized(base, size, &n.s, sizeof(n)));
	ASSERT_EQ(0, ferry_heap_stats(base, size, &s));
	EXPECT_EQ(0, memcmp(&s, &n.s, sizeof(s)));
	EXPECT_EQ(1, s.live_blocks);
	EXPECT_EQ(s.capacity, s.used + s.free);
	for (size_t i = 0; i < EXTRA; i++)
		ASSERT_EQ(0, n.tail[i]);
	EXPECT_EQ(-EINVAL, ferry_heap_stats_sized(base, size, &s, sizeof(s) - 4));
	free(base);
}

/*
 * The rules themselves on a struct that three releases grew (today's
 * tables have one row each): 12 bytes of fields + 4 reserved, then 20 +
 * 4, then 32.  An older caller's missing fields keep their defaults.
 */
TEST(layout_rules_over_three_releases)
{
	static const struct ferry_layout rows[] = { { 16, 12 }, { 24, 20 }, { 32, 32 } };
	unsigned char defaults[32], k[32], u[40];

	EXPECT_EQ(12, ferry_layout_end(rows, 3, 16));
	EXPECT_EQ(20, ferry_layout_end(rows, 3, 24));
	EXPECT_EQ(32, ferry_layout_end(rows, 3, 32));
	EXPECT_EQ(40, ferry_layout_end(rows, 3, 40));	/* newer: all of it */
	EXPECT_EQ(0, ferry_layout_end(rows, 3, 20));	/* no release had 20 */
	EXPECT_EQ(0, ferry_layout_end(rows, 3, 8));

	memset(defaults, 0x77, sizeof(defaults));
	memset(u, 0x11, sizeof(u));
	/* The oldest caller: 12 bytes taken, 12..32 stay defaults. */
	memset(u + 12, 0, 4);
	memcpy(k, defaults, sizeof(k));
	ASSERT_EQ(0, ferry_copy_in(k, 32, u, 16, 12));
	EXPECT_EQ(0, memcmp(k, u, 12));
	EXPECT_EQ(0, memcmp(k + 12, defaults + 12, 20));
	/* ... and its reserved bytes must be 0. */
	u[13] = 1;
	memcpy(k, defaults, sizeof(k));
	EXPECT_EQ(-E2BIG, ferry_copy_in(k, 32, u, 16, 12));
	EXPECT_EQ(0, memcmp(k, defaults, sizeof(k)));	/* untouched */
	/* A newer caller: 32 taken, 32..40 must be 0. */
	memset(u, 0x22, 32);
	memset(u + 32, 0, 8);
	ASSERT_EQ(0, ferry_copy_in(k, 32, u, 40, 40));
	EXPECT_EQ(0, memcmp(k, u, 32));
	u[39] = 1;
	EXPECT_EQ(-E2BIG, ferry_copy_in(k, 32, u, 40, 40));
	/* Out: the oldest caller gets its 12 bytes and zeroed reserved. */
	memset(u, 0xee, sizeof(u));
	ferry_copy_out(u, 16, 12, defaults, 32);
	EXPECT_EQ(0, memcmp(u, defaults, 12));
	EXPECT_EQ(0, u[12] | u[13] | u[14] | u[15]);
	EXPECT_EQ(0xee, u[16]);				/* not the caller's */
	/* A newer caller: ours, then zeros to its size. */
	memset(u, 0xee, sizeof(u));
	ferry_copy_out(u, 40, 40, defaults, 32);
	EXPECT_EQ(0, memcmp(u, defaults, 32));
	for (size_t i = 32; i < 40; i++)
		ASSERT_EQ(0, u[i]);
}

TEST_HARNESS_MAIN
