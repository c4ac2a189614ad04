// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Any number of helpers for any number of GPUs, on CI: the broker runs on
 * the fake CUDA driver (build/tests/fixtures/libfakecuda.so, as many GPUs
 * as $FERRY_FAKE_GPUS) with 1, 2 and 8 GPUs and 1, 2 and 16 helpers.
 * Child i lives on GPU i % GPUs; every one of its requests must be served
 * by a helper of that GPU.  With fewer helpers than GPUs the children of a
 * GPU without a helper used to wait for ever: now the broker starts one
 * helper per GPU at least.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

#define CALLS 20

struct shape { unsigned int gpus, helpers; };

static int who(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
	       void *arg)
{
	(void)req;
	(void)arg;
	rep->arg[0] = ferry_helper_index(h);
	rep->arg[1] = (uint64_t)(int64_t)ferry_helper_gpu(h);
	return 0;
}

/* Exit status: 0, or what went wrong. */
static int child(struct ferry_child *c, void *arg)
{
	const struct shape *s = arg;
	int64_t want = ferry_child_index(c) % s->gpus;

	for (uint64_t k = 0; k < CALLS; k++) {
		struct ferry_desc d = { .op = 1, .tag = k }, rep;

		if (ferry_call(c, &d, &rep))
			return 10;
		if (rep.status || rep.tag != k)
			return 11;
		if ((int64_t)rep.arg[1] != want)
			return 12;	/* served on another GPU */
	}
	return 0;
}

/* The fake driver beside this test's binary: ../fixtures/libfakecuda.so. */
static int use_fake_driver(unsigned int gpus)
{
	char path[512], n[16];
	ssize_t len = readlink("/proc/self/exe", path, sizeof(path) - 40);
	char *slash;

	if (len <= 0)
		return -errno;
	path[len] = 0;
	slash = strrchr(path, '/');
	if (!slash)
		return -ENOENT;
	strcpy(slash + 1, "../fixtures/libfakecuda.so");
	if (access(path, R_OK))
		return -ENOENT;
	snprintf(n, sizeof(n), "%u", gpus);
	setenv("FERRY_CUDA_LIB", path, 1);
	setenv("FERRY_FAKE_GPUS", n, 1);
	return 0;
}

FIXTURE(fake) {};
FIXTURE_VARIANT(fake) { unsigned int gpus, helpers; };
FIXTURE_VARIANT_ADD(fake, g1_h1) { .gpus = 1, .helpers = 1 };
FIXTURE_VARIANT_ADD(fake, g1_h16) { .gpus = 1, .helpers = 16 };
FIXTURE_VARIANT_ADD(fake, g2_h1) { .gpus = 2, .helpers = 1 };
FIXTURE_VARIANT_ADD(fake, g2_h2) { .gpus = 2, .helpers = 2 };
FIXTURE_VARIANT_ADD(fake, g2_h16) { .gpus = 2, .helpers = 16 };
FIXTURE_VARIANT_ADD(fake, g8_h1) { .gpus = 8, .helpers = 1 };
FIXTURE_VARIANT_ADD(fake, g8_h2) { .gpus = 8, .helpers = 2 };
FIXTURE_VARIANT_ADD(fake, g8_h16) { .gpus = 8, .helpers = 16 };
FIXTURE_SETUP(fake) {}
FIXTURE_TEARDOWN(fake) {}

TEST_F_TIMEOUT(fake, every_child_served_on_its_gpu, 120)
{
	struct shape s = { variant->gpus, variant->helpers };
	unsigned int children = 2 * s.gpus + 1, started;
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	if (use_fake_driver(s.gpus))
		SKIP(return, "no ../fixtures/libfakecuda.so beside this test (make build-tests)");
	ferry_broker_opts_init(&o);
	o.children = children;
	o.helpers = s.helpers;
	o.region_size = 1u << 20;
	o.handler = who;
	o.child_fn = child;
	o.child_arg = &s;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	for (started = 0; ferry_broker_helper_pid(b, started) > 0; started++)
		;
	EXPECT_EQ(s.helpers > s.gpus ? s.helpers : s.gpus, started);
	EXPECT_EQ(0, ferry_broker_wait(b, 100LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ((uint64_t)children * CALLS, st.replies);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

/* Pinned to fewer helpers than GPUs: refused, nothing left running. */
TEST_F(fake, exact_helpers_too_few_refused)
{
	struct shape s = { variant->gpus, variant->helpers };
	struct ferry_broker_opts o;
	struct ferry_broker *b = NULL;
	unsigned int started;
	int err;

	if (use_fake_driver(s.gpus))
		SKIP(return, "no ../fixtures/libfakecuda.so beside this test (make build-tests)");
	ferry_broker_opts_init(&o);
	o.children = 2 * s.gpus;
	o.helpers = s.helpers;
	o.region_size = 1u << 20;
	o.handler = who;
	o.child_fn = child;
	o.child_arg = &s;
	o.flags = FERRY_HELPERS_EXACT;
	err = ferry_broker_start(&o, &b);
	if (s.helpers < s.gpus) {
		EXPECT_EQ(-EINVAL, err);
		EXPECT_EQ(-1, waitpid(-1, NULL, WNOHANG));	/* nothing was forked */
		EXPECT_EQ(ECHILD, errno);
		return;
	}
	ASSERT_EQ(0, err);
	EXPECT_EQ(0, ferry_broker_wait(b, 100LL * 1000000000));
	for (started = 0; ferry_broker_helper_pid(b, started) > 0; started++)
		;
	EXPECT_EQ(s.helpers, started);	/* as asked, not raised */
	ferry_broker_stop(b);
}

TEST_F(fake, unknown_flags_refused)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b = NULL;

	ferry_broker_opts_init(&o);
	o.handler = who;
	o.child_fn = child;
	o.flags = 1u << 31;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
}

TEST_HARNESS_MAIN
