// SPDX-License-Identifier: GPL-2.0
/*
 * The broker's pool on a host without a GPU (the CPU pool, same protocol
 * as a GPU's): children ask the broker for blocks, put their bytes in once,
 * name them in requests by (offset, len); helpers read and write them
 * through their import; every byte checked.  A child cannot name another
 * child's block, free a block a helper is using, or keep blocks after it
 * died; a full pool says -ENOMEM and recovers when blocks come back, and
 * an allocation that may wait is queued until then (or its timeout).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
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

enum { OP_XOR = 1, OP_FILL = 2, OP_SLEEP = 3, OP_ARG_OUT = 4 };
#define POOL (8u << 20)

/*
 * OP_XOR: table entry 1 = entry 0 ^ arg[1], both pool blocks of the
 * sender; OP_FILL: the block = pattern of arg[1]; OP_ARG_OUT: the block
 * (offset, len) copied to the pool offset in arg[0], a handler that
 * trusts arg[]: the helper must not resolve it.
 */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	const struct ferry_tensor *t;
	uint8_t *in, *out;

	(void)rep;
	(void)arg;
	switch (req->op) {
	case OP_XOR:
		if (ferry_helper_tensors(h, req, &t) != 2 || t[0].nbytes != t[1].nbytes)
			return -EINVAL;
		in = (uint8_t *)(uintptr_t)ferry_helper_tensor_addr(h, req, &t[0]);
		out = (uint8_t *)(uintptr_t)ferry_helper_tensor_addr(h, req, &t[1]);
		if (!in || !out)
			return -EFAULT;
		for (uint64_t i = 0; i < t[0].nbytes; i++)
			out[i] = in[i] ^ (uint8_t)req->arg[1];
		return 0;
	case OP_FILL:
		out = (uint8_t *)(uintptr_t)ferry_helper_pool_addr(h, req->offset, req->len);
		if (!out)
			return -EFAULT;
		for (uint64_t i = 0; i < req->len; i++)
			out[i] = (uint8_t)(i * 7 + req->arg[1]);
		return 0;
	case OP_SLEEP:
		usleep(200000);
		return 0;
	case OP_ARG_OUT:
		in = (uint8_t *)(uintptr_t)ferry_helper_pool_addr(h, req->offset, req->len);
		out = (uint8_t *)(uintptr_t)ferry_helper_pool_addr(h, req->arg[0], req->len);
		if (!in || !out)
			return -EFAULT;
		memcpy(out, in, req->len);
		return 0;
	}
	return -EOPNOTSUPP;
}

/* Two pool tensors of @n bytes (@in, @out) in a table at @t, for @op. */
static struct ferry_desc pool_pair(struct ferry_child *c, uint32_t op, struct ferry_tensor *t,
				   uint64_t in, uint64_t out, size_t n)
{
	for (int k = 0; k < 2; k++)
		t[k] = (struct ferry_tensor){ .where = FERRY_IN_POOL, .dtype = FERRY_DT_U8,
					      .ndim = 1, .offset = k ? out : in, .nbytes = n,
					      .shape = { (int64_t)n } };
	return (struct ferry_desc){ .op = op, .flags = FERRY_DESC_TENSORS,
				    .offset = ferry_offset(c, t), .len = 2 * sizeof(*t) };
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		p[i] = (uint8_t)(seed >> 24);
	}
}

static void opts_for(struct ferry_broker_opts *o, unsigned int children,
		     ferry_child_fn fn, void *arg)
{
	ferry_broker_opts_init(o);
	o->children = children;
	o->helpers = 2;
	o->region_size = 2u << 20;
	o->window = 4;
	o->handler = handler;
	o->child_fn = fn;
	o->child_arg = arg;
	o->gpu = FERRY_GPU_NONE;	/* the CPU pool, on any machine */
	o->pool_size = POOL;
}

static int run(struct ferry_broker_opts *o, struct ferry_broker_stats *st)
{
	struct ferry_broker *b;
	int err = ferry_broker_start(o, &b);

	if (err)
		return err;
	err = ferry_broker_wait(b, 120LL * 1000000000);
	if (st)
		ferry_broker_stats(b, st);
	ferry_broker_stop(b);
	return err;
}

/*
 * The bytes of @n at block @off as this child can see them: through its
 * own mapping of the pool (@p, FERRY_CHILDREN_MAP_POOL), else copied out
 * by a helper into @buf.
 */
static const uint8_t *block_bytes(struct ferry_child *c, struct ferry_pool *p, uint64_t off,
				  size_t n, uint8_t *buf)
{
	if (p)
		return (const uint8_t *)(uintptr_t)ferry_pool_addr(p, off, n);
	return ferry_child_pool_get(c, off, buf, n) ? NULL : buf;
}

/* Child -> helper (put, helper reads) and helper -> child (helper writes);
 * @arg non-NULL: the pool is mapped by children. */
static int both_ways_steps(struct ferry_child *c, void *arg)
{
	uint8_t *src = malloc(300000), *want = malloc(300000);
	struct ferry_tensor *tab = ferry_malloc(c, 2 * sizeof(*tab));
	struct ferry_pool *p = NULL;
	struct ferry_desc d, rep;

	if (!src || !want || !tab)
		return 1;
	if (arg ? ferry_child_pool(c, &p) != 0 : ferry_child_pool(c, &p) != -EACCES)
		return 1;
	if (!arg)
		p = NULL;
	for (unsigned int round = 0; round < 40; round++) {
		size_t n = 1 + (round * 7919u + ferry_child_index(c) * 131u) % 300000;
		uint64_t in, out;
		const uint8_t *got;

		fill(src, n, round + 1);
		if (ferry_child_pool_put(c, src, n, &in) || ferry_child_pool_alloc(c, n, &out))
			return 2;
		d = pool_pair(c, OP_XOR, tab, in, out, n);
		d.arg[1] = round;
		if (ferry_call(c, &d, &rep) || rep.status)
			return 3;
		got = block_bytes(c, p, out, n, want);
		for (size_t i = 0; got && i < n; i++)
			if (got[i] != (uint8_t)(src[i] ^ round))
				return 4;
		d = (struct ferry_desc){ .op = OP_FILL, .flags = FERRY_DESC_POOL, .offset = out,
					 .len = n, .arg = { 0, round } };
		if (!got || ferry_call(c, &d, &rep) || rep.status)
			return 5;
		got = block_bytes(c, p, out, n, want);
		for (size_t i = 0; got && i < n; i++)
			if (got[i] != (uint8_t)(i * 7 + round))
				return 6;
		if (ferry_child_pool_free(c, in) || ferry_child_pool_free(c, out))
			return 7;
	}
	free(src);
	free(want);
	ferry_free(c, tab);
	return 0;
}

static int both_ways(struct ferry_child *c, void *arg)
{
	int r = both_ways_steps(c, arg);

	if (r)
		printf("# child %u failed at step %d\n", ferry_child_index(c), r);
	return r;
}

/* Children hold no handle to the pool (the default): get by the helper. */
TEST(cpu_pool_offsets_both_directions_checked)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	opts_for(&o, 3, both_ways, NULL);
	ASSERT_EQ(0, run(&o, &st));
	EXPECT_EQ(3 * 40 * 2, st.pool_allocs);
	EXPECT_EQ(3 * 40 * 2, st.pool_frees);
	EXPECT_EQ(0, st.bad_desc);
}

/* FERRY_CHILDREN_MAP_POOL: children that trust each other map the pool. */
TEST(cpu_pool_mapped_by_children_when_asked)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	opts_for(&o, 3, both_ways, &o);
	o.flags |= FERRY_CHILDREN_MAP_POOL;
	ASSERT_EQ(0, run(&o, &st));
	EXPECT_EQ(3 * 40 * 2, st.pool_allocs);
	EXPECT_EQ(0, st.bad_desc);
}

struct shared {
	_Atomic uint64_t off;	/* child 0's block, published */
	_Atomic int stage;
};

/* Child 1 names child 0's block, and ranges past its own: refused. */
static int trespass(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	struct ferry_desc d = { .op = OP_FILL, .flags = FERRY_DESC_POOL, .len = 64 }, rep;
	uint64_t mine;

	if (ferry_child_pool_alloc(c, 4096, &mine))
		return 1;
	if (ferry_child_index(c) == 0) {
		atomic_store(&s->off, mine);
		atomic_store(&s->stage, 1);
		while (atomic_load(&s->stage) != 2)
			usleep(1000);
		return 0;
	}
	while (atomic_load(&s->stage) != 1)
		usleep(1000);
	d.offset = atomic_load(&s->off);
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 2;	/* another child's block */
	d.offset = mine + 4000;
	d.len = 200;
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 3;	/* runs past its own block */
	d.offset = mine;
	d.len = 0;
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 4;	/* empty */
	d.flags = 2;
	d.len = 64;
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 5;	/* unknown flag */
	if (ferry_child_pool_free(c, mine + 64) != -ENOENT)
		return 6;	/* not the start of a block */
	atomic_store(&s->stage, 2);
	return 0;
}

TEST(another_childs_block_refused)
{
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	ASSERT_NE(MAP_FAILED, s);
	opts_for(&o, 2, trespass, s);
	EXPECT_EQ(0, run(&o, &st));
	EXPECT_EQ(4, st.bad_desc);
	munmap(s, sizeof(*s));
}

/* A block named by a request at a helper cannot be freed until the reply;
 * replies that arrive during a pool call are not lost. */
static int busy_block(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_SLEEP, .flags = FERRY_DESC_POOL, .len = 16 }, rep;
	uint64_t blk, other;
	int seen = 0;

	(void)arg;
	if (ferry_child_pool_alloc(c, 4096, &blk))
		return 1;
	d.offset = blk;
	for (int k = 0; k < 3; k++) {
		d.tag = 100 + k;
		if (ferry_submit(c, &d))
			return 2;
	}
	if (ferry_child_pool_free(c, blk) != -EBUSY)
		return 3;
	/* The window has one place left: this call runs among the others. */
	if (ferry_child_pool_alloc(c, 100, &other))
		return 4;
	for (int k = 0; k < 3; k++) {
		if (ferry_complete(c, &rep, -1) || rep.status || rep.tag < 100 || rep.tag > 102)
			return 5;
		seen |= 1 << (rep.tag - 100);
	}
	if (seen != 7 || ferry_outstanding(c))
		return 6;
	if (ferry_child_pool_free(c, blk) || ferry_child_pool_free(c, other))
		return 7;
	return 0;
}

TEST(block_in_use_not_freed_and_replies_kept)
{
	struct ferry_broker_opts o;

	opts_for(&o, 1, busy_block, NULL);
	o.helpers = 1;
	EXPECT_EQ(0, run(&o, NULL));
}

/* Fill the pool, see -ENOMEM, give everything back, fill it again. */
static int fill_up(struct ferry_child *c, void *arg)
{
	uint64_t offs[64];
	int n = 0, again = 0;
	int err;

	(void)arg;
	while ((err = ferry_child_pool_alloc(c, 256 << 10, &offs[n])) == 0 && n < 63)
		n++;
	if (err != -ENOMEM || n < 16)
		return 1;
	for (int k = 0; k < n; k++)
		if (ferry_child_pool_free(c, offs[k]))
			return 2;
	while (ferry_child_pool_alloc(c, 256 << 10, &offs[again]) == 0 && again < 63)
		again++;
	return again == n ? 0 : 3;
}

TEST(full_pool_enomem_then_reused)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	opts_for(&o, 1, fill_up, NULL);
	EXPECT_EQ(0, run(&o, &st));
	EXPECT_LE(1, st.pool_oom);
}

/* Child 0 takes most of the pool and is killed; child 1 then gets it. */
static int hog_then_heir(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	uint64_t off;

	if (ferry_child_index(c) == 0) {
		if (ferry_child_pool_alloc(c, POOL / 2 + POOL / 4, &off))
			return 1;
		atomic_store(&s->stage, 1);
		pause();	/* killed here */
		return 2;
	}
	while (atomic_load(&s->stage) != 1)
		usleep(1000);
	if (ferry_child_pool_alloc(c, POOL / 2, &off) != -ENOMEM)
		return 3;
	atomic_store(&s->stage, 2);
	/* Waits for the kill: the dead child's blocks serve this waiter. */
	return ferry_child_pool_alloc_timeout(c, POOL / 2, 60LL * 1000000000, &off) ? 4 : 0;
}

TEST(dead_childs_blocks_come_back)
{
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	ASSERT_NE(MAP_FAILED, s);
	opts_for(&o, 2, hog_then_heir, s);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	while (atomic_load(&s->stage) != 2)
		usleep(1000);
	kill(ferry_broker_child_pid(b, 0), SIGKILL);
	EXPECT_EQ(1, ferry_broker_wait(b, 120LL * 1000000000));	/* only the killed one */
	ferry_broker_stop(b);
	munmap(s, sizeof(*s));
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define CONTEND_CHILDREN 6
#define CONTEND_ROUNDS 10
#define CONTEND_BLOCK (3u << 20)	/* two fit in the pool at once */

/* Take a block (waiting for it), fill it through a helper, check, free. */
static int contend(struct ferry_child *c, void *arg)
{
	uint8_t *buf = malloc(CONTEND_BLOCK);

	(void)arg;
	if (!buf)
		return 1;
	for (unsigned int r = 0; r < CONTEND_ROUNDS; r++) {
		uint8_t key = (uint8_t)(ferry_child_index(c) * 31 + r);
		struct ferry_desc d, rep;
		const uint8_t *got;
		uint64_t off;

		if (ferry_child_pool_alloc_timeout(c, CONTEND_BLOCK, 60LL * 1000000000, &off))
			return 2;
		d = (struct ferry_desc){ .op = OP_FILL, .flags = FERRY_DESC_POOL, .tag = r,
					 .offset = off, .len = CONTEND_BLOCK, .arg = { 0, key } };
		if (ferry_call(c, &d, &rep) || rep.status)
			return 3;
		got = block_bytes(c, NULL, off, CONTEND_BLOCK, buf);
		for (uint64_t i = 0; got && i < CONTEND_BLOCK; i += 4093)
			if (got[i] != (uint8_t)(i * 7 + key))
				return 4;
		if (!got || ferry_child_pool_free(c, off))
			return 5;
	}
	free(buf);
	return 0;
}

/*
 * Six children want 3 MiB blocks of an 8 MiB pool, ten times each: at
 * most two hold one at a time, the others wait in the broker's queue and
 * are served as blocks come back.  Nobody sees -ENOMEM.
 */
TEST(contended_pool_waiters_all_served)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	opts_for(&o, CONTEND_CHILDREN, contend, NULL);
	EXPECT_EQ(0, run(&o, &st));
	EXPECT_EQ(0, st.pool_oom);
	EXPECT_LT(0, st.pool_waits);	/* some did wait */
	EXPECT_EQ(CONTEND_CHILDREN * CONTEND_ROUNDS, st.pool_allocs);
	EXPECT_EQ(st.pool_allocs, st.pool_frees);
}

/*
 * Child 0 fills the pool and holds it; child 1's wait of 200 ms ends in
 * -ENOMEM no sooner, one that does not wait at once; then child 0 frees
 * and child 1's endless wait is served.
 */
static int hold_and_wait(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	uint64_t offs[64], off;
	int n = 0;
	int64_t t0;

	if (ferry_child_index(c) == 0) {
		while (n < 64 && ferry_child_pool_alloc(c, 1u << 20, &offs[n]) == 0)
			n++;
		atomic_store(&s->stage, 1);
		while (atomic_load(&s->stage) != 2)
			usleep(1000);
		for (int k = 0; k < n; k++)
			if (ferry_child_pool_free(c, offs[k]))
				return 1;
		return 0;
	}
	while (atomic_load(&s->stage) != 1)
		usleep(1000);
	t0 = mono_ms();
	if (ferry_child_pool_alloc_timeout(c, 1u << 20, 200 * 1000000LL, &off) != -ENOMEM)
		return 10;
	if (mono_ms() - t0 < 199)
		return 11;
	t0 = mono_ms();
	if (ferry_child_pool_alloc_timeout(c, 1u << 20, 0, &off) != -ENOMEM ||
	    mono_ms() - t0 > 5000)
		return 12;
	atomic_store(&s->stage, 2);
	return ferry_child_pool_alloc_timeout(c, 1u << 20, -1, &off) ? 13 : 0;
}

TEST(pool_wait_times_out_then_is_served)
{
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	ASSERT_NE(MAP_FAILED, s);
	memset(s, 0, sizeof(*s));
	opts_for(&o, 2, hold_and_wait, s);
	EXPECT_EQ(0, run(&o, &st));
	EXPECT_LE(2, st.pool_oom);	/* the timed-out wait and the one that did not */
	munmap(s, sizeof(*s));
}

struct heap_hold { struct ferry_child *c; void *p; };

static void *free_later(void *arg)
{
	struct heap_hold *h = arg;

	ferry_free(h->c, h->p);
	return NULL;
}

/* ferry_malloc_timeout: a full heap times out, then another thread's free serves it. */
static int heap_wait(struct ferry_child *c, void *arg)
{
	void *blocks[4096], *p;
	unsigned int n = 0;
	struct heap_hold h = { .c = c };
	pthread_t t;
	int64_t t0;

	(void)arg;
	while (n < 4096 && (blocks[n] = ferry_malloc(c, 64u << 10)))
		n++;
	if (n == 0 || n == 4096)
		return 1;
	t0 = mono_ms();
	if (ferry_malloc_timeout(c, 64u << 10, 100 * 1000000LL) || errno != ENOMEM)
		return 2;
	if (mono_ms() - t0 < 99)
		return 3;
	if (ferry_malloc_timeout(c, 1u << 30, -1))	/* can never fit: at once */
		return 4;
	h.p = blocks[--n];
	if (pthread_create(&t, NULL, free_later, &h))
		return 5;
	p = ferry_malloc_timeout(c, 64u << 10, 30LL * 1000000000);
	pthread_join(t, NULL);
	return p ? 0 : 6;
}

TEST(heap_wait_times_out_then_is_served)
{
	struct ferry_broker_opts o;

	opts_for(&o, 1, heap_wait, NULL);
	o.pool_size = 0;
	EXPECT_EQ(0, run(&o, NULL));
}

/*
 * Copies by the helper: a buffer outside the region (5 MiB, staged through
 * a 2 MiB region in pieces) put and got back; one in the region direct;
 * one submitted asynchronously; every byte checked.
 */
static int copies(struct ferry_child *c, void *arg)
{
	const size_t big = 5u << 20, small = 64u << 10;
	uint8_t *src = malloc(big), *back = malloc(big), *in = ferry_malloc(c, small);
	struct ferry_desc d, rep;
	uint64_t off, off2;

	(void)arg;
	if (!src || !back || !in)
		return 1;
	fill(src, big, 7 + ferry_child_index(c));
	if (ferry_child_pool_put(c, src, big, &off))
		return 2;
	memset(back, 0, big);
	if (ferry_child_pool_get(c, off, back, big) || memcmp(src, back, big))
		return 3;
	/* In the region: no staging.  Asynchronous: submit, complete. */
	fill(in, small, 99);
	if (ferry_child_pool_alloc(c, small, &off2) ||
	    ferry_child_pool_copy_desc(c, FERRY_POOL_PUT, in, small, off2, &d))
		return 4;
	d.tag = 42;
	if (ferry_submit(c, &d) || ferry_complete(c, &rep, 30LL * 1000000000) ||
	    rep.tag != 42 || rep.status)
		return 5;
	memcpy(back, in, small);
	memset(in, 0, small);
	if (ferry_child_pool_get(c, off2, in, small) || memcmp(in, back, small))
		return 6;
	/* A part of a block, at an offset inside it. */
	if (ferry_child_pool_get(c, off + 4096, back, 1000) || memcmp(back, src + 4096, 1000))
		return 7;
	/* Ranges that are not the child's: refused by the broker. */
	if (ferry_child_pool_copy_desc(c, FERRY_POOL_GET, in, small, off2 + small, &d) ||
	    ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 8;	/* past its block */
	d = (struct ferry_desc){ .op = 0xff000005u, .offset = 0, .len = small, .arg = { off2 } };
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 9;	/* its channel, not its heap */
	if (ferry_child_pool_free(c, off) || ferry_child_pool_free(c, off2))
		return 10;
	free(src);
	free(back);
	return 0;
}

TEST(helper_copies_put_get_checked)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	opts_for(&o, 1, copies, NULL);	/* its 5 MiB block takes most of the pool */
	EXPECT_EQ(0, run(&o, &st));
	EXPECT_EQ(2, st.bad_desc);
}

/* Child 1 gets from, puts into, or names in arg[] or a table child 0's
 * block: refused. */
static int copy_trespass(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	uint8_t *buf = ferry_malloc(c, 4096);
	struct ferry_tensor *tab;
	struct ferry_desc d, rep;
	uint64_t off, mine;

	if (!buf)
		return 1;
	if (ferry_child_index(c) == 0) {
		memset(buf, 0x5a, 4096);
		if (ferry_child_pool_put(c, buf, 4096, &off))
			return 2;
		atomic_store(&s->off, off);
		atomic_store(&s->stage, 1);
		while (atomic_load(&s->stage) != 2)
			usleep(1000);
		memset(buf, 0, 4096);
		if (ferry_child_pool_get(c, off, buf, 4096))
			return 3;
		for (int i = 0; i < 4096; i++)
			if (buf[i] != 0x5a)
				return 4;	/* overwritten by the other */
		return 0;
	}
	while (atomic_load(&s->stage) != 1)
		usleep(1000);
	off = atomic_load(&s->off);
	memset(buf, 0xee, 4096);
	if (ferry_child_pool_get(c, off, buf, 4096) != -EINVAL)
		return 10;
	for (int i = 0; i < 4096; i++)
		if (buf[i] != 0xee)
			return 11;	/* read the other's bytes */
	if (ferry_child_pool_copy_desc(c, FERRY_POOL_PUT, buf, 4096, off, &d) ||
	    ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 12;
	/* Its own block, and the other's offset in arg[] for a handler that
	 * would write there: the helper does not resolve it. */
	if (ferry_child_pool_put(c, buf, 4096, &mine))
		return 13;
	d = (struct ferry_desc){ .op = OP_ARG_OUT, .flags = FERRY_DESC_POOL, .offset = mine,
				 .len = 4096, .arg = { off } };
	if (ferry_call(c, &d, &rep) || rep.status != -EFAULT)
		return 14;
	/* ... nor in a table entry: the broker refuses that. */
	tab = ferry_malloc(c, 2 * sizeof(*tab));
	d = tab ? pool_pair(c, OP_XOR, tab, mine, off, 4096) : d;
	if (!tab || ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 15;
	d = pool_pair(c, OP_XOR, tab, off, mine, 4096);
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 16;
	if (ferry_child_pool_free(c, mine))
		return 17;
	atomic_store(&s->stage, 2);
	return 0;
}

TEST(helper_copies_of_another_childs_block_refused)
{
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;

	ASSERT_NE(MAP_FAILED, s);
	memset(s, 0, sizeof(*s));
	opts_for(&o, 2, copy_trespass, s);
	EXPECT_EQ(0, run(&o, &st));
	EXPECT_EQ(4, st.bad_desc);
	munmap(s, sizeof(*s));
}

static int no_pool(struct ferry_child *c, void *arg)
{
	struct ferry_pool *p;
	uint64_t off;

	(void)arg;
	return ferry_child_pool(c, &p) == -ENOENT &&
	       ferry_child_pool_alloc(c, 64, &off) == -ENOENT ? 0 : 1;
}

TEST(without_a_pool_enoent)
{
	struct ferry_broker_opts o;

	opts_for(&o, 1, no_pool, NULL);
	o.pool_size = 0;
	EXPECT_EQ(0, run(&o, NULL));
}

TEST_HARNESS_MAIN
