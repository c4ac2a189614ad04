// SPDX-License-Identifier: GPL-2.0
/*
 * The broker's control plane to its helpers: child regions announced in
 * batches over a control socket the broker never blocks on.  These runs
 * shrink that socket's send buffer (FERRY_CTL_SNDBUF) so that a few
 * announcements fill it: every flush then meets a full socket and has to
 * wait for POLLOUT in the dispatch loop, and a helper that stops reading
 * is found out.  (Start-up hung at 279 children when these sends blocked.)
 * And the spawner that forks the children.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

enum { OP_XOR = 1, OP_WHO = 2 };

/* OP_XOR: out[i] = in[i] ^ arg[1], in at offset, out at arg[0]. */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	(void)arg;
	if (req->op == OP_WHO) {
		rep->arg[0] = (uint64_t)getpid();
		return 0;
	}
	if (req->op != OP_XOR)
		return -EOPNOTSUPP;
	const uint8_t *in = ferry_helper_data(h, req, req->offset, req->len);
	uint8_t *out = ferry_helper_data(h, req, req->arg[0], req->len);

	if (!in || !out)
		return -EFAULT;
	for (uint64_t i = 0; i < req->len; i++)
		out[i] = in[i] ^ (uint8_t)req->arg[1];
	return 0;
}

#define XOR_CALLS 3
#define XOR_LEN 512

/* Exit status: 0, or the step that failed. */
static int xor_body(struct ferry_child *c, void *arg)
{
	uint8_t *in = ferry_malloc(c, XOR_LEN), *out = ferry_malloc(c, XOR_LEN);

	(void)arg;
	if (!in || !out)
		return 10;
	for (unsigned int k = 0; k < XOR_CALLS; k++) {
		uint8_t key = (uint8_t)(ferry_child_index(c) * 7 + k + 1);
		struct ferry_desc d = {
			.op = OP_XOR, .tag = k, .offset = ferry_offset(c, in), .len = XOR_LEN,
			.arg = { ferry_offset(c, out), key },
		}, rep;

		for (unsigned int i = 0; i < XOR_LEN; i++)
			in[i] = (uint8_t)(i + ferry_child_index(c));
		if (ferry_call(c, &d, &rep) || rep.status || rep.tag != k)
			return 11;
		for (unsigned int i = 0; i < XOR_LEN; i++)
			if (out[i] != (uint8_t)(in[i] ^ key))
				return 12;
	}
	return 0;
}

static void base_opts(struct ferry_broker_opts *o, unsigned int children, unsigned int helpers)
{
	ferry_broker_opts_init(o);
	o->children = children;
	o->helpers = helpers;
	o->region_size = 64u << 10;
	o->window = 2;
	o->handler = handler;
	o->child_fn = xor_body;
}

/* The kernel's floor for SO_SNDBUF: two or three REGIONS messages fit. */
#define TINY_SNDBUF "4096"

FIXTURE(ctl) {};
FIXTURE_SETUP(ctl)
{
	setenv("FERRY_CTL_SNDBUF", TINY_SNDBUF, 1);
}
FIXTURE_TEARDOWN(ctl)
{
	unsetenv("FERRY_CTL_SNDBUF");
}

/*
 * 600 children (each region 1 ADD and 1 DROP per helper: ~40 messages per
 * helper through a socket that holds 2 or 3) x 4 helpers: start returns,
 * every reply is checked, every child exits 0.
 */
TEST_F_TIMEOUT(ctl, full_control_sockets_every_child_served, 300)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	base_opts(&o, 600, 4);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 240LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(600u * XOR_CALLS, st.requests);
	EXPECT_EQ(st.requests, st.replies);
	EXPECT_EQ(0, st.bad_desc);
	EXPECT_EQ(0, st.bad_reply);
	EXPECT_EQ(0, st.helper_deaths);
	ferry_broker_stop(b);
}

/* What the test and the children of the next case share. */
struct stage {
	_Atomic int phase;	/* 1: child 0 served; 2: helper stopped; 3: replaced */
	_Atomic uint64_t first_pid;	/* helper that served child 0 first */
	_Atomic uint64_t second_pid;
};

static struct stage *stage;

/*
 * Sleep on the phase word (a shared futex: 300 children polling it every
 * millisecond starved a 2-vCPU VM) until it reaches @want, 120 s at most.
 */
static bool wait_phase(int want)
{
	for (int i = 0; i < 120; i++) {
		int now = atomic_load(&stage->phase);
		struct timespec ts = { .tv_sec = 1 };

		if (now >= want)
			return true;
		syscall(SYS_futex, &stage->phase, FUTEX_WAIT, now, &ts, NULL, 0);
	}
	return atomic_load(&stage->phase) >= want;
}

static void set_phase(int v)
{
	atomic_store(&stage->phase, v);
	syscall(SYS_futex, &stage->phase, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/*
 * Which helper answers.  On a loaded machine the watchdog (1 s here) may
 * take a helper that was slow to answer, or slow to read its socket, for
 * a hung one: the request fails back (-ETIMEDOUT, -EPIPE) and is asked
 * again.
 */
static int who(struct ferry_child *c, uint64_t tag, uint64_t *pid)
{
	struct ferry_desc d = { .op = OP_WHO, .tag = tag }, rep;

	for (int tries = 0; tries < 20; tries++) {
		if (ferry_call(c, &d, &rep) || rep.tag != tag)
			return -1;
		if (rep.status == 0) {
			*pid = rep.arg[0];
			return 0;
		}
		if (rep.status != -ETIMEDOUT && rep.status != -EPIPE)
			return -1;
	}
	return -1;
}

static int stage_body(struct ferry_child *c, void *arg)
{
	uint64_t pid;

	(void)arg;
	if (ferry_child_index(c) != 0)
		return wait_phase(2) ? 0 : 20;	/* their deaths queue DROPs */
	if (who(c, 1, &pid))
		return 21;
	atomic_store(&stage->first_pid, pid);
	set_phase(1);
	if (!wait_phase(3))
		return 22;
	if (who(c, 2, &pid))
		return 23;
	atomic_store(&stage->second_pid, pid);
	return 0;
}

/*
 * A helper that stops reading its control socket (here: SIGSTOP) while
 * announcements for it pile up (300 children exit: 300 DROPs) is killed
 * as hung after opts.helper_timeout_ns, without holding any request, and
 * its restart serves.  The broker went on meanwhile: every death was
 * taken, nothing waited on the stopped helper.  (Up to 300 s: under qemu
 * TCG on a loaded host a helper restarted by the watchdog gets the 30 s a
 * helper not yet past its init has, and that may happen more than once.)
 */
TEST_F_TIMEOUT(ctl, helper_that_stops_reading_is_replaced, 300)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st, before;
	pid_t helper;

	stage = mmap(NULL, sizeof(*stage), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		     -1, 0);
	ASSERT_NE(MAP_FAILED, stage);
	memset(stage, 0, sizeof(*stage));
	base_opts(&o, 300, 1);
	o.child_fn = stage_body;
	o.helper_timeout_ns = 1000 * 1000000ULL;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	ASSERT_TRUE(wait_phase(1));
	/*
	 * It holds no request now: only its full socket can get it killed.
	 * A watchdog kill of a slow helper may still be on its way (every
	 * death here is one): wait until each was followed by its restart.
	 */
	for (int i = 0; i < 60000; i++) {
		ferry_broker_stats(b, &before);
		if (before.helper_timeouts == before.helper_deaths &&
		    before.helper_deaths == before.helper_restarts)
			break;
		usleep(1000);
	}
	helper = ferry_broker_helper_pid(b, 0);
	ASSERT_LT(0, helper);
	ASSERT_EQ(0, kill(helper, SIGSTOP));
	set_phase(2);
	for (int i = 0; i < 60000; i++) {
		ferry_broker_stats(b, &st);
		if (st.helper_restarts > before.helper_restarts)
			break;
		usleep(1000);
	}
	EXPECT_LT(before.helper_timeouts, st.helper_timeouts);
	EXPECT_LT(before.helper_restarts, st.helper_restarts);
	EXPECT_NE(helper, ferry_broker_helper_pid(b, 0));
	set_phase(3);
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_NE(0, atomic_load(&stage->second_pid));
	EXPECT_NE((uint64_t)helper, atomic_load(&stage->second_pid));
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
	munmap(stage, sizeof(*stage));
}

/* Child 0 returns 0, child 1 returns 7, child 2 kills itself. */
static int exits_body(struct ferry_child *c, void *arg)
{
	(void)arg;
	if (ferry_child_index(c) == 2)
		raise(SIGKILL);
	return ferry_child_index(c) == 1 ? 7 : 0;
}

/*
 * Children are forked by the spawner (a process the broker forks before
 * any child exists, so that a fork does not grow with the children before
 * it); their wait statuses come back from it: a non-zero exit and a
 * signal both count as failed, the signal as a death.
 */
TEST(exit_statuses_through_the_spawner)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	base_opts(&o, 3, 1);
	o.child_fn = exits_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(2, ferry_broker_wait(b, 30LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(3, st.child_exits);
	EXPECT_EQ(1, st.child_deaths);
	ferry_broker_stop(b);
}

TEST_HARNESS_MAIN
