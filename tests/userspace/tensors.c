// SPDX-License-Identifier: GPL-2.0
/*
 * Several tensors per request (FERRY_DESC_TENSORS): a table of struct
 * ferry_tensor in the child's heap, copied and checked by the broker, read
 * by the helper from its checked copy.  Region and pool tensors mixed,
 * contiguous and strided, every value checked; every malformed entry, and
 * one naming another child's block or the child's channel, refused.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry.h"
#include "internal.h"
#include "kselftest_harness.h"

enum { OP_ADD = 1, OP_SUM = 2 };
#define N 1000
#define POOL (4u << 20)

/* Element @k of tensor @t (F32) at @base, following its strides. */
static float elem(const struct ferry_tensor *t, const float *base, uint64_t k)
{
	uint64_t at = 0;
	bool strided = false;

	for (int d = 0; d < t->ndim; d++)
		strided |= t->strides[d] != 0;
	if (!strided)
		return base[k];
	for (int d = t->ndim - 1; d >= 0; d--) {
		at += (k % (uint64_t)t->shape[d]) * (uint64_t)t->strides[d];
		k /= (uint64_t)t->shape[d];
	}
	return base[at];
}

static uint64_t count(const struct ferry_tensor *t)
{
	uint64_t n = 1;

	for (int d = 0; d < t->ndim; d++)
		n *= (uint64_t)t->shape[d];
	return n;
}

/* OP_ADD: t[2] = t[0] + t[1]; OP_SUM: arg[0] = sum of t[0] (as an integer). */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	const struct ferry_tensor *t;
	int n = ferry_helper_tensors(h, req, &t);
	float *p[3];

	(void)arg;
	if (n < 0)
		return n;
	for (int k = 0; k < n && k < 3; k++) {
		p[k] = (float *)(uintptr_t)ferry_helper_tensor_addr(h, req, &t[k]);
		if (!p[k] || t[k].dtype != FERRY_DT_F32)
			return -EFAULT;
	}
	if (req->op == OP_SUM) {
		double sum = 0;

		for (uint64_t k = 0; k < count(&t[0]); k++)
			sum += elem(&t[0], p[0], k);
		rep->arg[0] = (uint64_t)sum;
		rep->arg[1] = t[0].ndim;
		return 0;
	}
	if (req->op != OP_ADD || n != 3 || count(&t[0]) != count(&t[2]) ||
	    count(&t[1]) != count(&t[2]))
		return -EINVAL;
	for (uint64_t k = 0; k < count(&t[2]); k++)
		p[2][k] = elem(&t[0], p[0], k) + elem(&t[1], p[1], k);
	return 0;
}

static struct ferry_tensor vec(uint8_t where, uint64_t off, uint64_t n)
{
	return (struct ferry_tensor){ .where = where, .dtype = FERRY_DT_F32, .ndim = 1,
				      .offset = off, .nbytes = n * 4, .shape = { (int64_t)n } };
}

static int call_table(struct ferry_child *c, uint32_t op, struct ferry_tensor *t,
		      unsigned int n, struct ferry_desc *rep)
{
	struct ferry_desc d = { .op = op, .flags = FERRY_DESC_TENSORS, .tag = op,
				.offset = ferry_offset(c, t), .len = n * sizeof(*t) };

	if (ferry_call(c, &d, rep))
		return -1;
	return rep->status;
}

struct shared {
	_Atomic uint64_t off;	/* child 0's pool block */
	_Atomic int stage;
};

/* Exit status: 0, or the step that failed. */
static int body_steps(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	struct ferry_tensor *t = ferry_malloc(c, 17 * sizeof(*t));
	float *a = ferry_malloc(c, N * 4), *b = malloc(N * 4), *out = ferry_malloc(c, N * 4);
	float *m = ferry_malloc(c, 12 * 4);
	struct ferry_desc rep;
	uint64_t boff;

	if (!t || !a || !b || !out || !m)
		return 1;
	for (int k = 0; k < N; k++) {
		a[k] = (float)k;
		b[k] = (float)(1000 * ferry_child_index(c) + 2 * k);
	}
	if (ferry_child_pool_put(c, b, N * 4, &boff))
		return 2;
	/* a (region) + b (pool) -> out (region). */
	t[0] = vec(FERRY_IN_REGION, ferry_offset(c, a), N);
	t[1] = vec(FERRY_IN_POOL, boff, N);
	t[2] = vec(FERRY_IN_REGION, ferry_offset(c, out), N);
	if (call_table(c, OP_ADD, t, 3, &rep))
		return 3;
	for (int k = 0; k < N; k++)
		if (out[k] != a[k] + b[k])
			return 4;
	/* A 3x4 matrix stored column-major: shape [3,4], strides [1,3]. */
	for (int k = 0; k < 12; k++)
		m[k] = (float)(k + 1);
	t[0] = (struct ferry_tensor){ .where = FERRY_IN_REGION, .dtype = FERRY_DT_F32, .ndim = 2,
				      .offset = ferry_offset(c, m), .nbytes = 48,
				      .shape = { 3, 4 }, .strides = { 1, 3 } };
	if (call_table(c, OP_SUM, t, 1, &rep) || rep.arg[0] != 78 || rep.arg[1] != 2)
		return 5;
	/* Refused: each of these fails the request with -EINVAL. */
	struct ferry_tensor bad[] = {
		{ .where = FERRY_IN_REGION, .dtype = 99, .ndim = 1, .offset = ferry_offset(c, a),
		  .nbytes = 4, .shape = { 1 } },				/* dtype */
		{ .where = FERRY_IN_REGION, .dtype = FERRY_DT_F32, .ndim = 1,
		  .offset = ferry_offset(c, a), .nbytes = 8, .shape = { 3 } },	/* shape > bytes */
		{ .where = FERRY_IN_REGION, .dtype = FERRY_DT_F32, .ndim = 2,
		  .offset = ferry_offset(c, m), .nbytes = 48, .shape = { 3, 4 },
		  .strides = { 1, 4 } },					/* strides past */
		{ .where = FERRY_IN_REGION, .dtype = FERRY_DT_F32, .ndim = 1, .offset = 0,
		  .nbytes = 64, .shape = { 16 } },				/* its channel */
		{ .where = FERRY_IN_POOL, .dtype = FERRY_DT_F32, .ndim = 1, .offset = boff + 4,
		  .nbytes = (N + 1024) * 4, .shape = { N + 1024 } },		/* past its block */
		{ .where = 2, .dtype = FERRY_DT_F32, .ndim = 1, .offset = ferry_offset(c, a),
		  .nbytes = 4, .shape = { 1 } },				/* where */
	};
	for (unsigned int k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		t[0] = bad[k];
		if (call_table(c, OP_SUM, t, 1, &rep) != -EINVAL)
			return 10 + (int)k;
	}
	for (int k = 0; k < 17; k++)
		t[k] = vec(FERRY_IN_REGION, ferry_offset(c, a), N);
	if (call_table(c, OP_SUM, t, 17, &rep) != -EINVAL)
		return 20;	/* more than FERRY_TENSORS_MAX */
	/* Another child's block: child 1 names child 0's. */
	if (ferry_child_index(c) == 0) {
		atomic_store(&s->off, boff);
		atomic_store(&s->stage, 1);
		while (atomic_load(&s->stage) != 2)
			usleep(1000);
	} else {
		while (atomic_load(&s->stage) != 1)
			usleep(1000);
		t[0] = vec(FERRY_IN_POOL, atomic_load(&s->off), N);
		if (call_table(c, OP_SUM, t, 1, &rep) != -EINVAL)
			return 21;
		atomic_store(&s->stage, 2);
	}
	return ferry_child_pool_free(c, boff) ? 22 : 0;
}

static int body(struct ferry_child *c, void *arg)
{
	int r = body_steps(c, arg);

	if (r)
		fprintf(stderr, "# child %u failed at step %d\n", ferry_child_index(c), r);
	return r;
}

TEST(tables_checked_and_served)
{
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	ASSERT_NE(MAP_FAILED, s);
	memset(s, 0, sizeof(*s));
	ferry_broker_opts_init(&o);
	o.children = 2;
	o.helpers = 2;
	o.region_size = 1u << 20;
	o.handler = handler;
	o.child_fn = body;
	o.child_arg = s;
	o.gpu = FERRY_GPU_NONE;
	o.pool_size = POOL;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(2 * 7 + 1, st.bad_desc);	/* 7 refusals each, and the trespass */
	EXPECT_EQ(st.pool_allocs, st.pool_frees);
	ferry_broker_stop(b);
	munmap(s, sizeof(*s));
}

/* The entry check on its own: what the header promises. */
TEST(entry_rules)
{
	struct ferry_tensor t = { .where = FERRY_IN_REGION, .dtype = FERRY_DT_F16, .ndim = 3,
				  .nbytes = 2 * 3 * 4 * 2, .shape = { 2, 3, 4 } };

	EXPECT_EQ(0, ferry_tensor_check(&t));
	t.ndim = 0;
	t.shape[0] = t.shape[1] = t.shape[2] = 0;
	t.nbytes = 2;
	EXPECT_EQ(0, ferry_tensor_check(&t));		/* a scalar */
	t.shape[3] = 1;
	EXPECT_EQ(-EINVAL, ferry_tensor_check(&t));	/* a dimension past ndim */
	t = (struct ferry_tensor){ .dtype = FERRY_DT_U8, .ndim = 1, .nbytes = 1,
				   .shape = { INT64_MAX }, .strides = { INT64_MAX } };
	EXPECT_EQ(-EINVAL, ferry_tensor_check(&t));	/* overflow */
	t = (struct ferry_tensor){ .dtype = FERRY_DT_U8, .ndim = 1, .nbytes = 4,
				   .shape = { 4 }, .reserved = 1 };
	EXPECT_EQ(-EINVAL, ferry_tensor_check(&t));
	t.reserved = 0;
	t.strides[0] = -1;
	EXPECT_EQ(-EINVAL, ferry_tensor_check(&t));
	EXPECT_EQ(2u, ferry_dtype_size(FERRY_DT_BF16));
	EXPECT_EQ(0u, ferry_dtype_size(0));
}

TEST_HARNESS_MAIN
