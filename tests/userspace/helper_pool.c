// SPDX-License-Identifier: GPL-2.0
/*
 * Outputs sized by the model (ferry_helper_pool_alloc), on the CPU pool: a
 * handler makes a block of a size only it knows for the requesting child,
 * in the same round trip.  The block is that child's (it reads it through
 * a helper, frees it; nobody else may name it); an error reply gives it
 * back; freed blocks return to the helper's arena, so a small arena serves
 * any number of requests; a dead child's blocks and a dead helper's arena
 * come back too.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

#define POOL (8u << 20)
#define ARENA (256u << 10)

enum { OP_MAKE = 1, OP_MAKE_FAIL = 2, OP_MAKE_MANY = 3, OP_DIE = 4, OP_PLAIN = 5 };

static uint8_t pattern(uint64_t i, uint64_t seed)
{
	return (uint8_t)(i * 13 + seed);
}

/*
 * OP_MAKE: a block of arg[0] bytes filled with pattern(arg[1]), named in
 * the reply (FERRY_DESC_POOL).  OP_MAKE_FAIL: the same, then -EIO.
 * OP_MAKE_MANY: as many 4 KiB blocks as allowed; arg[0] of the reply: how
 * many, arg[1]: the error that stopped it.  OP_DIE: the helper dies.
 */
static int handler(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		   void *arg)
{
	uint64_t off, n = req->arg[0];
	uint8_t *p;
	int err, k;

	(void)arg;
	switch (req->op) {
	case OP_MAKE:
	case OP_MAKE_FAIL:
		err = ferry_helper_pool_alloc(h, req, n, NULL, &off);
		if (err)
			return err;
		p = (uint8_t *)(uintptr_t)ferry_helper_pool_addr(h, off, n);
		if (!p)
			return -EFAULT;
		for (uint64_t i = 0; i < n; i++)
			p[i] = pattern(i, req->arg[1]);
		rep->flags = FERRY_DESC_POOL;
		rep->offset = off;
		rep->len = n;
		return req->op == OP_MAKE ? 0 : -EIO;
	case OP_MAKE_MANY:
		for (k = 0; (err = ferry_helper_pool_alloc(h, req, 4096, NULL, &off)) == 0; k++)
			;
		rep->arg[0] = (uint64_t)k;
		rep->arg[1] = (uint64_t)(int64_t)err;
		/* Wrong uses, refused: */
		if (ferry_helper_pool_alloc(h, req, 0, NULL, &off) != -EINVAL ||
		    ferry_helper_pool_alloc(h, rep, 64, NULL, &off) != -EINVAL)
			return -EPROTO;
		return -ECANCELED;	/* so the blocks go back */
	case OP_DIE:
		_exit(3);
	case OP_PLAIN:
		return 0;
	}
	return -EOPNOTSUPP;
}

struct shared {
	_Atomic int stage;
	_Atomic uint64_t off;
};

static int make(struct ferry_child *c, uint64_t n, uint64_t seed, uint64_t *off)
{
	struct ferry_desc d = { .op = OP_MAKE, .arg = { n, seed } }, rep;
	int err = ferry_call(c, &d, &rep);

	if (err)
		return err;
	if (rep.status)
		return rep.status;
	if (rep.flags != FERRY_DESC_POOL || rep.len != n)
		return -EPROTO;
	*off = rep.offset;
	return 0;
}

/* Its bytes through a helper, checked. */
static int check(struct ferry_child *c, uint64_t off, uint64_t n, uint64_t seed)
{
	uint8_t *buf = malloc(n);
	int err = buf ? ferry_child_pool_get(c, off, buf, n) : -ENOMEM;

	for (uint64_t i = 0; !err && i < n; i++)
		if (buf[i] != pattern(i, seed))
			err = -EILSEQ;
	free(buf);
	return err;
}

static void opts_for(struct ferry_broker_opts *o, unsigned int children, ferry_child_fn fn,
		     void *arg)
{
	ferry_broker_opts_init(o);
	o->children = children;
	o->helpers = 1;
	o->region_size = 1u << 20;
	o->window = 4;
	o->handler = handler;
	o->child_fn = fn;
	o->child_arg = arg;
	o->gpu = FERRY_GPU_NONE;
	o->pool_size = POOL;
	o->helper_pool_bytes = ARENA;
}

static int run(struct ferry_broker_opts *o)
{
	struct ferry_broker *b;
	int err = ferry_broker_start(o, &b);

	if (err)
		return err;
	err = ferry_broker_wait(b, 120LL * 1000000000);
	ferry_broker_stop(b);
	return err;
}

/* Many more outputs than the arena holds at once: each read, then freed. */
static int many_outputs(struct ferry_child *c, void *arg)
{
	uint64_t off, n;

	(void)arg;
	for (unsigned int k = 0; k < 500; k++) {
		n = 1000 + (k * 7919) % (60u << 10);	/* sizes the child never chose */
		if (make(c, n, k, &off))
			return 1;
		if (check(c, off, n, k))
			return 2;
		if (ferry_child_pool_free(c, off))
			return 3;
		if (ferry_child_pool_free(c, off) != -ENOENT)
			return 4;	/* once only */
	}
	return 0;
}

TEST(outputs_sized_by_the_helper_come_back_to_its_arena)
{
	struct ferry_broker_opts o;

	opts_for(&o, 2, many_outputs, NULL);
	EXPECT_EQ(0, run(&o));
}

/* An error reply leaves the child nothing to free: the block goes back. */
static int failed_outputs(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_MAKE_FAIL, .arg = { 64u << 10, 1 } }, rep;
	uint64_t off;

	(void)arg;
	for (unsigned int k = 0; k < 100; k++)	/* 6 MiB through a 256 KiB arena */
		if (ferry_call(c, &d, &rep) || rep.status != -EIO)
			return 1;
	/* Nor is it the child's: it cannot read or free it. */
	if (ferry_child_pool_free(c, rep.offset) != -ENOENT)
		return 2;
	if (make(c, 64u << 10, 5, &off) || check(c, off, 64u << 10, 5))
		return 3;
	return 0;
}

TEST(error_reply_gives_the_block_back)
{
	struct ferry_broker_opts o;

	opts_for(&o, 1, failed_outputs, NULL);
	EXPECT_EQ(0, run(&o));
}

/* Limits: FERRY_HELPER_ALLOCS_MAX per request; a full arena is -ENOMEM. */
static int limits(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_MAKE_MANY }, rep;
	uint64_t off, more;

	(void)arg;
	if (ferry_call(c, &d, &rep) || rep.status != -ECANCELED ||
	    rep.arg[0] != FERRY_HELPER_ALLOCS_MAX || (int64_t)rep.arg[1] != -ENOSPC)
		return 1;
	if (make(c, ARENA + 1, 0, &off) != -ENOMEM)
		return 2;	/* more than the arena */
	if (make(c, ARENA / 2 + 4096, 0, &off) || make(c, ARENA / 2 + 4096, 0, &more) != -ENOMEM)
		return 3;	/* the second cannot fit beside the first */
	if (ferry_child_pool_free(c, off) || make(c, ARENA / 2 + 4096, 0, &more))
		return 4;	/* until the first is freed */
	return 0;
}

TEST(per_request_limit_and_full_arena)
{
	struct ferry_broker_opts o;

	opts_for(&o, 1, limits, NULL);
	EXPECT_EQ(0, run(&o));
}

/* Child 0 gets a block; child 1 may not read it, free it or name it. */
static int trespass(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	struct ferry_desc d, rep;
	uint64_t off;
	uint8_t buf[64];

	if (ferry_child_index(c) == 0) {
		if (make(c, 4096, 9, &off))
			return 1;
		atomic_store(&s->off, off);
		atomic_store(&s->stage, 1);
		while (atomic_load(&s->stage) != 2)
			usleep(1000);
		return check(c, off, 4096, 9) || ferry_child_pool_free(c, off) ? 2 : 0;
	}
	while (atomic_load(&s->stage) != 1)
		usleep(1000);
	off = atomic_load(&s->off);
	if (ferry_child_pool_get(c, off, buf, sizeof(buf)) != -EINVAL)
		return 3;
	if (ferry_child_pool_free(c, off) != -ENOENT)
		return 4;
	d = (struct ferry_desc){ .op = OP_PLAIN, .flags = FERRY_DESC_POOL, .offset = off,
				 .len = 64 };
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		return 5;
	atomic_store(&s->stage, 2);
	return 0;
}

TEST(another_childs_output_refused)
{
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;

	ASSERT_NE(MAP_FAILED, s);
	opts_for(&o, 2, trespass, s);
	EXPECT_EQ(0, run(&o));
	munmap(s, sizeof(*s));
}

/*
 * Child 0 fills the arena and is killed holding it; child 1 then finds
 * room again once the broker took the dead child's blocks back.
 */
static int hog_then_heir(struct ferry_child *c, void *arg)
{
	struct shared *s = arg;
	uint64_t off;

	if (ferry_child_index(c) == 0) {
		if (make(c, ARENA - 4096, 1, &off))
			return 1;
		atomic_store(&s->stage, 1);
		pause();	/* killed here */
		return 2;
	}
	while (atomic_load(&s->stage) != 1)
		usleep(1000);
	if (make(c, ARENA / 2, 2, &off) != -ENOMEM)
		return 3;
	atomic_store(&s->stage, 2);
	/* After the kill (the test's), the arena is whole again. */
	for (;;) {
		int err = make(c, ARENA / 2, 2, &off);

		if (!err)
			return check(c, off, ARENA / 2, 2) ? 4 : 0;
		if (err != -ENOMEM)
			return 5;
		usleep(1000);
	}
}

TEST(dead_childs_outputs_come_back)
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

/*
 * A block outlives the helper that made it: the restarted helper (with a
 * new arena) reads it for the child, and the child's free ends the old
 * arena.  More restarts than the pool has arenas' worth: were an orphaned
 * arena never given back, a later helper would get none (-ENOMEM).
 */
static int outlives_helper(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_DIE }, rep;
	uint64_t off;

	(void)arg;
	for (unsigned int k = 0; k < 2 * POOL / ARENA; k++) {
		if (make(c, 8192, k, &off))
			return 1;
		if (ferry_call(c, &d, &rep) || rep.status != -EPIPE)
			return 2;
		/* Read by the next incarnation, then freed. */
		if (check(c, off, 8192, k))
			return 3;
		if (ferry_child_pool_free(c, off))
			return 4;
	}
	return 0;
}

TEST(output_outlives_the_helper_that_made_it)
{
	struct ferry_broker_opts o;

	opts_for(&o, 1, outlives_helper, NULL);
	EXPECT_EQ(0, run(&o));
}

TEST(arena_larger_than_pool_refused)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	opts_for(&o, 1, many_outputs, NULL);
	o.helper_pool_bytes = POOL + 1;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
}

TEST_HARNESS_MAIN
