// SPDX-License-Identifier: GPL-2.0
/*
 * Batch handlers (opts.batch_handler): the requests waiting in a helper's
 * ring are handed over in one call, up to opts.helper_batch.  Batches form
 * when requests pile up (counted, not assumed: the first call waits until
 * the ring holds the rest); each request of a batch keeps its own status,
 * reply, pool blocks and checked ranges (one request's table entry does
 * not resolve under another's); copy requests mixed in are still served;
 * the options are checked.
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

enum { OP_TRIPLE = 1, OP_FAIL = 2, OP_MAKE = 3, OP_CROSS = 4, OP_AXPB = 5, OP_FILL = 6 };
#define CHILDREN 8
#define WINDOW 4
#define ROUNDS 50
#define POOL (4u << 20)

#define FIRST 0xf1257u	/* arg[2] of the first round's requests */

struct seen {
	_Atomic unsigned int calls, requests, most, first_waited;
	_Atomic unsigned int ready;	/* children past their warm-up call */
	_Atomic unsigned int rounds_done;	/* children past their rounds */
	_Atomic int armed;		/* a call has waited for the first round */
	_Atomic int cross_refused;	/* OP_CROSS: another request's entry gave 0 */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * The first call that holds a request of the first round waits (up to
 * 60 s) until every other one of that round waits behind it, so that the
 * next call must get them together.  The round starts once every child
 * has had a reply: the helper has read every announcement (FERRY_OP_CTRL
 * markers) by then, and none ends a take early.
 */
static void first_call_waits(struct ferry_helper *h, struct seen *s,
			     const struct ferry_desc *req, unsigned int n)
{
	uint64_t end = now_ns() + 60ull * 1000000000u;
	bool first = false;

	atomic_fetch_add(&s->calls, 1);
	for (unsigned int k = 0; k < n; k++)
		first |= req[k].arg[2] == FIRST;
	if (!first || atomic_exchange(&s->armed, 1))
		return;
	while (n + ferry_helper_waiting(h) < CHILDREN * WINDOW && now_ns() < end)
		sched_yield();
	atomic_store(&s->first_waited, n + ferry_helper_waiting(h));
}

/* A call and its reply, then every child's: 0, or -1 after 60 s. */
static int barrier(struct ferry_child *c, struct seen *s)
{
	struct ferry_desc d = { .op = OP_TRIPLE }, rep;
	uint64_t end = now_ns() + 60ull * 1000000000u;

	if (ferry_call(c, &d, &rep) || rep.status)
		return -1;
	atomic_fetch_add(&s->ready, 1);
	while (atomic_load(&s->ready) < CHILDREN)
		if (now_ns() > end || usleep(1000))
			return -1;
	return 0;
}

/*
 * OP_AXPB, as a batched model would: entry 0 of every such request
 * gathered into one buffer, y = 2x + arg[0] over all of it at once (the
 * first request's arg[0]), scattered into entry 1 of each; what the
 * gather or scatter says is every one's status.
 */
#define AXPB_FLOATS (64 * 1024)
static float axpb_buf[AXPB_FLOATS];

static void axpb(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		 unsigned int n)
{
	const struct ferry_desc *mine[CHILDREN * WINDOW];
	unsigned int m = 0;
	int64_t got;

	for (unsigned int k = 0; k < n; k++)
		if (req[k].op == OP_AXPB)
			mine[m++] = &req[k];
	if (!m)
		return;
	got = ferry_helper_gather(h, mine, m, 0, (uint64_t)(uintptr_t)axpb_buf,
				  sizeof(axpb_buf), NULL);
	for (int64_t i = 0; got > 0 && i < got / 4; i++)
		axpb_buf[i] = 2 * axpb_buf[i] + (float)mine[0]->arg[0];
	if (got > 0)
		got = ferry_helper_scatter(h, mine, m, 1, (uint64_t)(uintptr_t)axpb_buf,
					   (size_t)got, NULL);
	for (unsigned int k = 0; k < n; k++)
		if (req[k].op == OP_AXPB)
			rep[k].status = got < 0 ? (int32_t)got : 0;
}

static void batch(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		  unsigned int n, void *arg)
{
	struct seen *s = arg;
	unsigned int most = atomic_load(&s->most);

	first_call_waits(h, s, req, n);
	atomic_fetch_add(&s->requests, n);
	while (n > most && !atomic_compare_exchange_weak(&s->most, &most, n))
		;
	for (unsigned int k = 0; k < n; k++) {
		const struct ferry_tensor *t;
		uint64_t off;
		uint8_t *p;

		switch (req[k].op) {
		case OP_TRIPLE:
			rep[k].arg[0] = req[k].arg[0] * 3;
			rep[k].arg[1] = n;
			rep[k].status = 0;
			break;
		case OP_FAIL:
			rep[k].status = -(int32_t)req[k].arg[0];
			break;
		case OP_MAKE:	/* a block of arg[0] bytes of pattern arg[1], for this request */
			rep[k].status = ferry_helper_pool_alloc(h, &req[k], req[k].arg[0], NULL, &off);
			p = rep[k].status ? NULL :
				(uint8_t *)(uintptr_t)ferry_helper_req_pool_addr(h, &req[k], off,
										 req[k].arg[0]);
			if (!rep[k].status && !p)
				rep[k].status = -EFAULT;
			if (rep[k].status)
				break;
			memset(p, (int)req[k].arg[1], req[k].arg[0]);
			rep[k].flags = FERRY_DESC_POOL;
			rep[k].offset = off;
			rep[k].len = req[k].arg[0];
			break;
		case OP_CROSS:
			/* Its own table's block resolves; under any other
			 * request of the batch (another child's) it does not. */
			if (ferry_helper_tensors(h, &req[k], &t) != 1 ||
			    !ferry_helper_tensor_addr(h, &req[k], &t[0])) {
				rep[k].status = -EFAULT;
				break;
			}
			for (unsigned int j = 0; j < n; j++)
				if (j != k && (ferry_helper_tensor_addr(h, &req[j], &t[0]) ||
					       ferry_helper_req_pool_addr(h, &req[j], t[0].offset,
									  t[0].nbytes)))
					rep[k].status = -EEXIST;
			/* Whose range it is: said per request in a batch. */
			if (!ferry_helper_req_pool_addr(h, &req[k], t[0].offset, t[0].nbytes) ||
			    (n > 1 && ferry_helper_pool_addr(h, t[0].offset, t[0].nbytes)))
				rep[k].status = -EFAULT;
			if (n > 1 && !rep[k].status)
				atomic_store(&s->cross_refused, 1);
			break;
		case OP_AXPB:
			break;	/* below, all of them together */
		case OP_FILL:	/* its block = arg[1] */
			p = (uint8_t *)(uintptr_t)ferry_helper_req_pool_addr(h, &req[k],
									     req[k].offset,
									     req[k].len);
			if (p)
				memset(p, (int)req[k].arg[1], req[k].len);
			rep[k].status = p ? 0 : -EFAULT;
			break;
		default:
			rep[k].status = -EOPNOTSUPP;
		}
	}
	axpb(h, req, rep, n);
}

/* Rounds of WINDOW requests in flight at once, every reply checked. */
static int triples(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_TRIPLE }, rep;
	unsigned int idx = ferry_child_index(c), got = 0;

	if (barrier(c, arg))
		return 4;
	for (unsigned int r = 0; r < ROUNDS; r++) {
		for (unsigned int w = 0; w < WINDOW; w++) {
			d.tag = r * WINDOW + w;
			d.arg[0] = (uint64_t)idx << 32 | d.tag;
			d.arg[2] = r ? 0 : FIRST;
			if (ferry_submit(c, &d))
				return 1;
		}
		for (unsigned int w = 0; w < WINDOW; w++) {
			if (ferry_complete(c, &rep, -1) || rep.status ||
			    rep.arg[0] != ((uint64_t)idx << 32 | rep.tag) * 3 ||
			    rep.arg[1] == 0 || rep.arg[1] > CHILDREN * WINDOW)
				return 2;
			got++;
		}
	}
	return got == ROUNDS * WINDOW ? 0 : 3;
}

static void opts_for(struct ferry_broker_opts *o, unsigned int children, ferry_child_fn fn,
		     void *arg)
{
	ferry_broker_opts_init(o);
	o->children = children;
	o->helpers = 1;
	o->window = WINDOW;
	o->helper_depth = CHILDREN * WINDOW;
	o->region_size = 1u << 20;
	o->batch_handler = batch;
	o->helper_arg = arg;
	o->child_arg = arg;
	o->child_fn = fn;
	o->gpu = FERRY_GPU_NONE;
}

static struct seen *shared_seen(void)
{
	struct seen *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (s != MAP_FAILED)
		memset(s, 0, sizeof(*s));
	return s == MAP_FAILED ? NULL : s;
}

TEST(requests_that_wait_are_one_batch)
{
	struct seen *s = shared_seen();
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	ASSERT_NE(NULL, s);
	opts_for(&o, CHILDREN, triples, s);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	ferry_broker_stop(b);
	EXPECT_EQ(CHILDREN * WINDOW, s->first_waited);
	/* The first round's others, together in the next call. */
	EXPECT_GE(s->most, CHILDREN * WINDOW / 2);
	EXPECT_EQ(CHILDREN * (ROUNDS * WINDOW + 1), s->requests);
	EXPECT_LT(s->calls, s->requests);
	TH_LOG("%u requests in %u calls, at most %u in one", s->requests, s->calls, s->most);
	munmap(s, sizeof(*s));
}

/* opts.helper_batch bounds a call. */
TEST(helper_batch_bounds_a_call)
{
	struct seen *s = shared_seen();
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	ASSERT_NE(NULL, s);
	opts_for(&o, CHILDREN, triples, s);
	o.helper_batch = 5;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stop(b);
	EXPECT_EQ(5u, s->most);	/* 31 or more waited behind the first call */
	EXPECT_EQ(CHILDREN * (ROUNDS * WINDOW + 1), s->requests);
	munmap(s, sizeof(*s));
}

/*
 * Per request in a batch: its own status, a block made for it (read back
 * by a helper copy, which the library serves beside the batch), and a
 * table entry that resolves under its own request only.
 */
static int mixed_steps(struct ferry_child *c, struct seen *s)
{
	unsigned int idx = ferry_child_index(c);
	struct ferry_tensor *t = ferry_malloc(c, sizeof(*t));
	struct ferry_desc d[WINDOW], rep;
	uint8_t back[256];
	unsigned int seen = 0;
	uint64_t blk;

	if (!t || ferry_child_pool_alloc(c, 256, &blk) || barrier(c, s))
		return 1;
	/* A pool entry: pool offsets mean the same block under any request. */
	*t = (struct ferry_tensor){ .where = FERRY_IN_POOL, .dtype = FERRY_DT_U8, .ndim = 1,
				    .offset = blk, .nbytes = 256, .shape = { 256 } };
	for (unsigned int r = 0; r < ROUNDS; r++) {
		d[0] = (struct ferry_desc){ .op = OP_TRIPLE, .arg = { idx } };
		d[1] = (struct ferry_desc){ .op = OP_FAIL, .arg = { EIO + idx % 3 } };
		d[2] = (struct ferry_desc){ .op = OP_MAKE, .arg = { 100 + idx * 7 + r, idx + r } };
		d[3] = (struct ferry_desc){ .op = OP_CROSS, .flags = FERRY_DESC_TENSORS,
					    .offset = ferry_offset(c, t), .len = sizeof(*t) };
		for (unsigned int w = 0; w < WINDOW; w++) {
			d[w].tag = w;
			d[w].arg[2] = r ? 0 : FIRST;
			if (ferry_submit(c, &d[w]))
				return 2;
		}
		seen = 0;
		for (unsigned int w = 0; w < WINDOW; w++) {
			if (ferry_complete(c, &rep, -1) || rep.tag >= WINDOW)
				return 3;
			seen |= 1u << rep.tag;
			switch (rep.tag) {
			case 0:
				if (rep.status || rep.arg[0] != idx * 3)
					return 4;
				break;
			case 1:
				if (rep.status != -(int32_t)(EIO + idx % 3))
					return 5;
				break;
			case 2:
				if (rep.status || !(rep.flags & FERRY_DESC_POOL) ||
				    rep.len != d[2].arg[0] ||
				    ferry_child_pool_get(c, rep.offset, back, rep.len))
					return 6;
				for (uint64_t i = 0; i < rep.len; i++)
					if (back[i] != (uint8_t)(idx + r))
						return 7;
				if (ferry_child_pool_free(c, rep.offset))
					return 8;
				break;
			case 3:
				if (rep.status)
					return 9;
				break;
			}
		}
		if (seen != (1u << WINDOW) - 1)
			return 10;
	}
	return ferry_child_pool_free(c, blk) ? 11 : 0;
}

static int mixed(struct ferry_child *c, void *arg)
{
	int r = mixed_steps(c, arg);

	if (r)
		printf("# child %u failed at step %d\n", ferry_child_index(c), r);
	return r;
}

TEST(each_request_of_a_batch_is_its_own)
{
	struct seen *s = shared_seen();
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	ASSERT_NE(NULL, s);
	opts_for(&o, CHILDREN, mixed, s);
	o.pool_size = POOL;
	o.helper_pool_bytes = 2u << 20;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	ferry_broker_stop(b);
	EXPECT_EQ(CHILDREN * WINDOW, s->first_waited);
	EXPECT_EQ(1, s->cross_refused);	/* looked at across a batch of several */
	EXPECT_EQ(CHILDREN * (ROUNDS * WINDOW + 1), s->requests);
	EXPECT_EQ(st.pool_allocs, st.pool_frees);
	munmap(s, sizeof(*s));
}

/*
 * Batches gathered and scattered: rounds of WINDOW requests of mixed sizes
 * (all with arg[0] = 5), every element checked; then ones that must fail
 * whole: a strided entry, an entry that is not there, too many bytes.
 */
static int gathered_steps(struct ferry_child *c, struct seen *s)
{
	struct ferry_tensor *t[WINDOW];
	float *x[WINDOW], *y[WINDOW];
	struct ferry_desc d, rep;

	if (barrier(c, s))
		return 1;
	for (unsigned int w = 0; w < WINDOW; w++) {
		t[w] = ferry_malloc(c, 2 * sizeof(**t));
		x[w] = ferry_malloc(c, 1024 * sizeof(float));
		y[w] = ferry_malloc(c, 1024 * sizeof(float));
		if (!t[w] || !x[w] || !y[w])
			return 2;
	}
	for (unsigned int r = 0; r < ROUNDS; r++) {
		for (unsigned int w = 0; w < WINDOW; w++) {
			unsigned int len = 1 + (r * 131 + w * 257 + ferry_child_index(c) * 7) % 1024;

			for (unsigned int i = 0; i < len; i++) {
				x[w][i] = (float)(i + w + r);
				y[w][i] = -1;
			}
			for (int e = 0; e < 2; e++)
				t[w][e] = (struct ferry_tensor){ .where = FERRY_IN_REGION,
					.dtype = FERRY_DT_F32, .ndim = 1,
					.offset = ferry_offset(c, e ? y[w] : x[w]),
					.nbytes = len * 4, .shape = { len } };
			d = (struct ferry_desc){ .op = OP_AXPB, .flags = FERRY_DESC_TENSORS,
						 .tag = w, .offset = ferry_offset(c, t[w]),
						 .len = 2 * sizeof(**t),
						 .arg = { 5, 0, r ? 0 : FIRST } };
			if (ferry_submit(c, &d))
				return 3;
		}
		for (unsigned int w = 0; w < WINDOW; w++) {
			if (ferry_complete(c, &rep, -1) || rep.status || rep.tag >= WINDOW)
				return 4;
			for (int64_t i = 0; i < t[rep.tag][1].shape[0]; i++)
				if (y[rep.tag][i] != 2 * (float)(i + rep.tag + r) + 5)
					return 5;
		}
	}
	/* One at a time now, by child 0 once every child is past its rounds
	 * (a bad request fails the whole gather it is in): nothing copied. */
	atomic_fetch_add(&s->rounds_done, 1);
	if (ferry_child_index(c) != 0)
		return 0;
	for (uint64_t end = now_ns() + 60ull * 1000000000u; s->rounds_done < CHILDREN;)
		if (now_ns() > end || usleep(1000))
			return 10;
	y[0][0] = -1;
	t[0][1].strides[0] = 2;
	t[0][1].nbytes = 4 * (2 * (uint64_t)t[0][1].shape[0] - 1);
	d = (struct ferry_desc){ .op = OP_AXPB, .flags = FERRY_DESC_TENSORS,
				 .offset = ferry_offset(c, t[0]), .len = 2 * sizeof(**t) };
	if (t[0][1].nbytes > 4096 || ferry_call(c, &d, &rep) || rep.status != -EINVAL ||
	    y[0][0] != -1)
		return 6;	/* strided (checked by the broker, refused by the gather) */
	d.len = sizeof(**t);
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 7;	/* no entry 1 */
	t[0][0].nbytes = t[0][1].nbytes = sizeof(axpb_buf) + 4;
	t[0][0].shape[0] = t[0][1].shape[0] = (int64_t)(sizeof(axpb_buf) / 4 + 1);
	t[0][1].strides[0] = 0;
	x[0] = ferry_malloc(c, sizeof(axpb_buf) + 4);
	y[0] = ferry_malloc(c, sizeof(axpb_buf) + 4);
	if (!x[0] || !y[0])
		return 8;
	t[0][0].offset = ferry_offset(c, x[0]);
	t[0][1].offset = ferry_offset(c, y[0]);
	d.len = 2 * sizeof(**t);
	if (ferry_call(c, &d, &rep) || rep.status != -ENOSPC)
		return 9;	/* more than the buffer */
	return 0;
}

static int gathered(struct ferry_child *c, void *arg)
{
	int r = gathered_steps(c, arg);

	if (r)
		printf("# child %u failed at step %d\n", ferry_child_index(c), r);
	return r;
}

TEST(batches_gathered_into_one_buffer_and_scattered_back)
{
	struct seen *s = shared_seen();
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	ASSERT_NE(NULL, s);
	opts_for(&o, CHILDREN, gathered, s);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stop(b);
	EXPECT_EQ(CHILDREN * WINDOW, s->first_waited);
	EXPECT_GE(s->most, CHILDREN * WINDOW / 2);
	munmap(s, sizeof(*s));
}

/*
 * A fill of a block and a copy out of it queued right behind (the
 * library's own request, served beside the batch): the copy sees the
 * fill, every round, as one request at a time would.
 */
static int fill_then_get(struct ferry_child *c, void *arg)
{
	uint8_t *back = ferry_malloc(c, 4096);
	struct ferry_desc d[2], rep;
	uint64_t blk;

	(void)arg;
	if (!back || ferry_child_pool_alloc(c, 4096, &blk))
		return 1;
	for (unsigned int r = 0; r < 200; r++) {
		d[0] = (struct ferry_desc){ .op = OP_FILL, .flags = FERRY_DESC_POOL, .tag = 0,
					    .offset = blk, .len = 4096, .arg = { 0, r & 0xff } };
		if (ferry_child_pool_copy_desc(c, FERRY_POOL_GET, back, 4096, blk, &d[1]))
			return 2;
		d[1].tag = 1;
		if (ferry_submit(c, &d[0]) || ferry_submit(c, &d[1]))
			return 3;
		for (int k = 0; k < 2; k++)
			if (ferry_complete(c, &rep, -1) || rep.status)
				return 4;
		for (int i = 0; i < 4096; i++)
			if (back[i] != (uint8_t)r)
				return 5;
	}
	return ferry_child_pool_free(c, blk) ? 6 : 0;
}

TEST(copies_keep_their_place_in_ring_order)
{
	struct seen *s = shared_seen();
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	ASSERT_NE(NULL, s);
	opts_for(&o, CHILDREN, fill_then_get, s);
	o.pool_size = POOL;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stop(b);
	munmap(s, sizeof(*s));
}

/* Outside a handler nothing is in hand. */
TEST(gather_outside_a_handler_refused)
{
	const struct ferry_desc d = { 0 }, *p = &d;
	float buf[4];

	EXPECT_EQ(-EINVAL, ferry_helper_gather(NULL, &p, 1, 0, (uint64_t)(uintptr_t)buf,
					       sizeof(buf), NULL));
	EXPECT_EQ(-EINVAL, ferry_helper_scatter(NULL, &p, 1, 0, (uint64_t)(uintptr_t)buf,
						sizeof(buf), NULL));
}

static int handler(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		   void *arg)
{
	(void)h, (void)req, (void)rep, (void)arg;
	return 0;
}

TEST(options_checked)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	opts_for(&o, 0, NULL, NULL);
	o.handler = handler;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));	/* both */
	o.handler = NULL;
	o.batch_handler = NULL;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));	/* neither */
	opts_for(&o, 0, NULL, NULL);
	o.helper_batch = o.helper_depth + 1;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));	/* more than a helper holds */
	opts_for(&o, 0, NULL, NULL);
	o.reserved2 = 1;
	EXPECT_EQ(-E2BIG, ferry_broker_start(&o, &b));
	opts_for(&o, 0, NULL, NULL);
	o.helper_batch = o.helper_depth;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	ferry_broker_stop(b);
}

TEST_HARNESS_MAIN
