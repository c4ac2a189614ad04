// SPDX-License-Identifier: GPL-2.0
/*
 * Production shape, scale: thousands of children x 8 helpers start, each
 * child serves checked requests, all stop.  Prints how long start and
 * serving took and on which backend (memfd on a host, kmod in the VM with
 * the module loaded).
 *
 * How many children: FERRY_SCALE_CHILDREN exactly when it is set; else
 * 4096, halved while a process per child (~2 MiB each) would take more
 * than half the machine's memory, but never below 256 (so a 1 GiB test
 * VM runs 256).  `make check` runs 4096 in a 3 GiB VM on kmod:
 * FERRY_VM_MEM=3072 FERRY_SCALE_CHILDREN=4096 scripts/vm-test.sh 6.12
 * build/tests/userspace/scale.
 *
 * History: start announced every child to every helper with blocking
 * sends and hung at 279 children; eventfd mode ran out of descriptors at
 * ~250; on kmod the module's max_regions default (4096) refused the
 * 4096-child broker its 8200 regions; forked by the broker itself, each
 * child paid for every earlier child's fds and mappings (13-18 s to start
 * 4096 on 2 cores, now 0.9 s through the spawner).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

enum { OP_XFORM = 1 };

#define SCALE_HELPERS		8
#define SCALE_REQUESTS		4	/* per child */
#define SCALE_MAX_LEN		256
#define SCALE_DEFAULT		4096
#define SCALE_FLOOR		256
#define SCALE_CHILD_BYTES	(2ULL << 20)	/* what a child process costs */

/* out[i] = in[i] ^ key, and a checksum of the input in arg[2]. */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	const uint8_t *in;
	uint8_t *out;
	uint64_t sum = 0;
	uint8_t key;

	(void)arg;
	if (req->op != OP_XFORM)
		return -EOPNOTSUPP;
	in = ferry_helper_data(h, req, req->offset, req->len);
	out = ferry_helper_data(h, req, req->arg[0], req->len);
	key = (uint8_t)req->arg[1];
	if (!in || !out)
		return -EFAULT;
	for (uint64_t i = 0; i < req->len; i++) {
		sum = sum * 31 + in[i];
		out[i] = in[i] ^ key;
	}
	rep->arg[2] = sum;
	return 0;
}

struct work {
	unsigned int requests;	/* per child */
	unsigned int max_len;
};

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct buf {
	uint8_t *in, *out;
	uint64_t len, sum;
	uint8_t key;
};

static void fill(struct buf *b, uint64_t *seed, unsigned int max_len)
{
	b->len = 1 + rng(seed) % max_len;
	b->key = (uint8_t)(1 + rng(seed) % 255);
	b->sum = 0;
	for (uint64_t i = 0; i < b->len; i++) {
		b->in[i] = (uint8_t)rng(seed);
		b->sum = b->sum * 31 + b->in[i];
	}
}

static bool verify(struct ferry_child *c, const struct buf *b, uint64_t tag,
		   const struct ferry_desc *rep)
{
	if (rep->status != 0 || rep->arg[2] != b->sum || rep->op != OP_XFORM ||
	    rep->tag != tag || rep->region != ferry_child_index(c))
		return false;
	for (uint64_t i = 0; i < b->len; i++)
		if (b->out[i] != (uint8_t)(b->in[i] ^ b->key))
			return false;
	return true;
}

/*
 * One request at a time, every reply checked byte for byte.  Exit codes
 * tell the parent what went wrong: the broker counts a child that exited
 * non-zero in what ferry_broker_wait() returns.
 */
static int child_body(struct ferry_child *c, void *arg)
{
	const struct work *w = arg;
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ (ferry_child_index(c) + 1) * 7919;
	struct buf b;

	b.in = ferry_malloc(c, w->max_len);
	b.out = ferry_malloc(c, w->max_len);
	if (!b.in || !b.out)
		return 11;
	for (unsigned int i = 0; i < w->requests; i++) {
		struct ferry_desc d, rep;

		fill(&b, &seed, w->max_len);
		d = (struct ferry_desc){
			.op = OP_XFORM, .tag = i, .offset = ferry_offset(c, b.in),
			.len = b.len, .arg = { ferry_offset(c, b.out), b.key },
		};
		if (ferry_call(c, &d, &rep))
			return 14;
		if (!verify(c, &b, i, &rep))
			return 16;
	}
	return 0;
}

static double secs(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/*
 * FERRY_SCALE_CHILDREN when set (@why says so), else the memory rule of
 * the file's header comment.
 */
static unsigned int scale_children(const char **why)
{
	const char *env = getenv("FERRY_SCALE_CHILDREN");
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	uint64_t half;
	unsigned int n = SCALE_DEFAULT;

	if (env && *env) {
		*why = "FERRY_SCALE_CHILDREN";
		return (unsigned int)strtoul(env, NULL, 0);
	}
	*why = "default, memory rule";
	if (pages <= 0 || psz <= 0)
		return n;
	half = (uint64_t)pages * (uint64_t)psz / 2;
	while (n > SCALE_FLOOR && (uint64_t)n * SCALE_CHILD_BYTES > half)
		n /= 2;
	return n < SCALE_FLOOR ? SCALE_FLOOR : n;
}

/* The 6.1 harness has timeouts only for fixture tests: an empty fixture. */
FIXTURE(load) {};
FIXTURE_SETUP(load) {}
FIXTURE_TEARDOWN(load) {}

TEST_F_TIMEOUT(load, thousands_of_children_start_serve_stop, 900)
{
	struct work w = { .requests = SCALE_REQUESTS, .max_len = SCALE_MAX_LEN };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	struct timespec t0, t1, t2;
	uint64_t served = 0;
	const char *why;
	unsigned int n = scale_children(&why);
	int ret;

	ASSERT_LT(0u, n);
	TH_LOG("%u children (%s) x %d helpers, %d checked requests each",
	       n, why, SCALE_HELPERS, SCALE_REQUESTS);
	ferry_broker_opts_init(&o);
	o.children = n;
	o.helpers = SCALE_HELPERS;
	o.region_size = 64u << 10;
	o.window = 2;
	o.handler = handler;
	o.child_fn = child_body;
	o.child_arg = &w;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = ferry_broker_start(&o, &b);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ASSERT_EQ(0, ret) {
		TH_LOG("start of %u children failed after %.2f s: %d", n,
		       secs(&t0, &t1), ret);
	}
	TH_LOG("backend %s: %u children x %d helpers started in %.2f s",
	       ferry_backend_name(ferry_broker_backend(b)), n, SCALE_HELPERS,
	       secs(&t0, &t1));
	/* Children that failed a check exited non-zero: counted here. */
	EXPECT_EQ(0, ferry_broker_wait(b, 800LL * 1000000000));
	clock_gettime(CLOCK_MONOTONIC, &t2);
	ferry_broker_stats(b, &st);
	EXPECT_EQ((uint64_t)n * SCALE_REQUESTS, st.requests);
	EXPECT_EQ(st.requests, st.replies);
	EXPECT_EQ(0, st.bad_desc);
	EXPECT_EQ(0, st.bad_reply);
	for (unsigned int h = 0; h < SCALE_HELPERS; h++)
		served += ferry_broker_helper_served(b, h);
	EXPECT_EQ(st.requests, served);
	TH_LOG("backend %s: %u children x %d helpers: started in %.2f s, all %llu requests served in %.2f s more",
	       ferry_backend_name(ferry_broker_backend(b)), n, SCALE_HELPERS,
	       secs(&t0, &t1), (unsigned long long)st.requests, secs(&t1, &t2));
	ferry_broker_stop(b);
}

TEST_HARNESS_MAIN
