// SPDX-License-Identifier: GPL-2.0
/*
 * A service as release 0.1 built it: compiled against 0.1's ferry.h
 * (ferry-0.h here, the header the ABI baseline was taken from) and linked
 * to libferry.so.0 dynamically, so it calls the FERRY_0 symbols and
 * passes 0.1's struct layouts.  It must still run a broker end to end
 * against today's library, and today's library must not write past the
 * structs 0.1 knew.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ferry-0.h"
#include "kselftest_harness.h"

#define CANARY 0x5c
#define CALLS 200u
#define CHILDREN 3u

/* out = in + arg[1] byte by byte, in place in the child's region. */
static int add(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
	       void *arg)
{
	uint8_t *p = ferry_helper_data(h, req, req->offset, req->len);

	(void)arg;
	if (!p)
		return -EFAULT;
	for (uint64_t i = 0; i < req->len; i++)
		p[i] = (uint8_t)(p[i] + req->arg[1]);
	rep->arg[0] = ferry_helper_index(h);
	return 0;
}

static int child(struct ferry_child *c, void *arg)
{
	uint8_t *buf = ferry_malloc(c, 4096);
	struct ferry_desc req = { .op = 1 }, rep;

	(void)arg;
	if (!buf)
		return 10;
	for (unsigned int i = 0; i < CALLS; i++) {
		size_t n = 1 + (i * 37) % 4096;

		for (size_t j = 0; j < n; j++)
			buf[j] = (uint8_t)(j + i);
		req.offset = ferry_offset(c, buf);
		req.len = n;
		req.arg[1] = ferry_child_index(c) + 1;
		if (ferry_call(c, &req, &rep) || rep.status)
			return 11;
		for (size_t j = 0; j < n; j++)
			if (buf[j] != (uint8_t)(j + i + ferry_child_index(c) + 1))
				return 12;
	}
	ferry_free(c, buf);
	return 0;
}

/* The struct as 0.1 laid it out, then bytes it never owned. */
struct opts_and_after {
	struct ferry_broker_opts o;
	unsigned char after[32];
};
struct stats_and_after {
	struct ferry_broker_stats s;
	unsigned char after[32];
};

static void fill_opts(struct ferry_broker_opts *o)
{
	o->children = CHILDREN;
	o->helpers = 2;
	o->region_size = 1u << 20;
	o->handler = add;
	o->child_fn = child;
}

TEST(links_to_the_ferry_0_symbols)
{
	/* What this program's references resolved to: the 0.1 functions. */
	EXPECT_NE(NULL, dlvsym(RTLD_DEFAULT, "ferry_broker_start", "FERRY_0"));
	EXPECT_NE(NULL, dlvsym(RTLD_DEFAULT, "ferry_broker_stats", "FERRY_0"));
	EXPECT_NE(NULL, dlvsym(RTLD_DEFAULT, "ferry_broker_opts_init", "FERRY_0"));
	/* ... in a library that has the 0.2 ones beside them. */
	EXPECT_NE(NULL, dlvsym(RTLD_DEFAULT, "ferry_broker_start_sized", "FERRY_0.2"));
	EXPECT_NE(NULL, dlvsym(RTLD_DEFAULT, "ferry_version", "FERRY_0.2"));
}

TEST(opts_init_writes_only_the_old_struct)
{
	struct opts_and_after a;

	memset(&a, CANARY, sizeof(a));
	ferry_broker_opts_init(&a.o);
	EXPECT_EQ(1, a.o.helpers);
	EXPECT_EQ(-1, a.o.numa_node);
	EXPECT_EQ(FERRY_GPU_AUTO, a.o.gpu);
	EXPECT_EQ(0, a.o.flags);
	for (size_t i = 0; i < sizeof(a.after); i++)
		ASSERT_EQ(CANARY, a.after[i]);
}

/* 0.1 never read the bytes after opts.flags: garbage there still works. */
TEST(broker_round_trip_with_old_layouts)
{
	struct opts_and_after a;
	struct stats_and_after st;
	struct ferry_broker *b;
	size_t end = offsetof(struct ferry_broker_opts, flags) + sizeof(a.o.flags);

	memset(&a, CANARY, sizeof(a));
	ferry_broker_opts_init(&a.o);
	fill_opts(&a.o);
	memset((unsigned char *)&a.o + end, 0xff, sizeof(a.o) - end);
	ASSERT_EQ(0, ferry_broker_start(&a.o, &b));
	ASSERT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	memset(&st, CANARY, sizeof(st));
	ASSERT_EQ(0, ferry_broker_stats(b, &st.s));
	EXPECT_EQ(CHILDREN * CALLS, st.s.requests);
	EXPECT_EQ(CHILDREN * CALLS, st.s.replies);
	EXPECT_EQ(0, st.s.failed_back);
	EXPECT_EQ(0, st.s.bad_desc);
	EXPECT_EQ(0, st.s.bad_reply);
	EXPECT_EQ(0, st.s.dropped);
	EXPECT_EQ(CHILDREN, st.s.child_exits);
	EXPECT_EQ(0, st.s.child_deaths);
	EXPECT_EQ(0, st.s.helper_deaths);
	EXPECT_EQ(0, st.s.queued);
	EXPECT_EQ(0, st.s.in_flight);
	EXPECT_LT(0, st.s.wakeups);
	EXPECT_EQ(CHILDREN * CALLS,
		  ferry_broker_helper_served(b, 0) + ferry_broker_helper_served(b, 1));
	for (size_t i = 0; i < sizeof(st.after); i++)
		ASSERT_EQ(CANARY, st.after[i]);
	ferry_broker_stop(b);
}

TEST(heap_stats_writes_only_the_old_struct)
{
	size_t size = 1u << 20;
	void *base = aligned_alloc(4096, size);
	struct {
		struct ferry_heap_stats s;
		unsigned char after[32];
	} a;

	ASSERT_NE(NULL, base);
	ASSERT_EQ(0, ferry_heap_format(base, size, 0));
	ASSERT_LE(0, ferry_heap_alloc(base, size, 100));
	ASSERT_LE(0, ferry_heap_alloc(base, size, 5000));
	memset(&a, CANARY, sizeof(a));
	ASSERT_EQ(0, ferry_heap_stats(base, size, &a.s));
	EXPECT_EQ(2, a.s.live_blocks);
	EXPECT_EQ(a.s.capacity, a.s.used + a.s.free);
	for (size_t i = 0; i < sizeof(a.after); i++)
		ASSERT_EQ(CANARY, a.after[i]);
	free(base);
}

TEST_HARNESS_MAIN
