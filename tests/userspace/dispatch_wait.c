// SPDX-License-Identifier: GPL-2.0
/*
 * How the dispatch thread waits (dispatch.c).  By default it polls while
 * replies are near (or not yet predicted) and through short gaps between
 * requests, and sleeps otherwise:
 *   - an idle broker holds no more CPU than with FERRY_DISPATCH_SLEEP;
 *   - requests that take 20 ms are slept for, not polled for, and so is
 *     a reply much later than its op's history;
 *   - a closed loop of round trips whose children and helpers sleep at
 *     once (spin_ns 0) costs the dispatch thread at most one wake-up per
 *     round trip (none where the child sends again soon), where
 *     FERRY_DISPATCH_SLEEP wakes it for the request and for the reply.
 * Every reply is checked.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

enum { OP_ECHO = 1, OP_NAP = 2 };

/* OP_ECHO: arg[1] = arg[0] + 1.  OP_NAP: sleeps arg[0] us, then the same. */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	(void)h;
	(void)arg;
	if (req->op == OP_NAP) {
		struct timespec ts = { .tv_sec = (time_t)(req->arg[0] / 1000000),
				       .tv_nsec = (long)(req->arg[0] % 1000000) * 1000 };

		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
	} else if (req->op != OP_ECHO) {
		return -EINVAL;
	}
	rep->arg[1] = req->arg[0] + 1;
	return 0;
}

struct plan {
	_Atomic int go, done;
	uint32_t op;
	uint64_t us;		/* OP_NAP: the helper's nap */
	uint64_t last_us;	/* OP_NAP: the last call's, if not 0 */
	unsigned int calls;
	_Atomic unsigned int wrong;
};
static struct plan *plan;

static void wait_flag(_Atomic int *f)
{
	/* The test process sets it within its own steps: no deadline needed
	 * beyond the harness's. */
	while (!atomic_load(f))
		usleep(1000);
}

static int caller(struct ferry_child *c, void *arg)
{
	(void)arg;
	wait_flag(&plan->go);
	for (unsigned int i = 0; i < plan->calls; i++) {
		uint64_t us = i + 1 == plan->calls && plan->last_us ? plan->last_us : plan->us;
		struct ferry_desc d = { .op = plan->op, .tag = i,
					.arg = { plan->op == OP_NAP ? us : i } }, rep;
		int err = ferry_call(c, &d, &rep);

		if (err)
			return 1;
		if (rep.status || rep.tag != i || rep.arg[1] != d.arg[0] + 1)
			atomic_fetch_add(&plan->wrong, 1);
	}
	atomic_store(&plan->done, 1);
	return 0;
}

static void start(struct ferry_broker **b, uint64_t spin_ns, unsigned int flags)
{
	struct ferry_broker_opts o;

	ferry_broker_opts_init(&o);
	o.children = 1;
	o.helpers = 1;
	o.region_size = 1u << 20;
	o.handler = handler;
	o.child_fn = caller;
	o.gpu = FERRY_GPU_NONE;
	o.spin_ns = spin_ns;
	o.flags = flags;
	if (ferry_broker_start(&o, b))
		*b = NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

FIXTURE(dw) {
	struct ferry_broker *b;
};

FIXTURE_SETUP(dw)
{
	unsetenv("FERRY_DISPATCH_POLL");
	unsetenv("FERRY_DISPATCH_CPU");	/* a number would make it poll */
	plan = mmap(NULL, sizeof(*plan), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		    -1, 0);
	ASSERT_NE(MAP_FAILED, plan);
	self->b = NULL;
}

FIXTURE_TEARDOWN(dw)
{
	if (self->b) {
		atomic_store(&plan->go, 1);
		ferry_broker_stop(self->b);
	}
	munmap(plan, sizeof(*plan));
}

/* Run the plan; the dispatch thread's CPU and wake-ups over it. */
static void run(struct ferry_broker *b, uint64_t *cpu_ns, uint64_t *wakeups, uint64_t *wall_ns)
{
	struct ferry_broker_stats s0, s1;
	uint64_t t0;

	ferry_broker_stats(b, &s0);
	t0 = now_ns();
	atomic_store(&plan->go, 1);
	while (!atomic_load(&plan->done))
		usleep(1000);
	*wall_ns = now_ns() - t0;
	ferry_broker_stats(b, &s1);
	*cpu_ns = s1.dispatch_cpu_ns - s0.dispatch_cpu_ns;
	*wakeups = s1.wakeups - s0.wakeups;
}

/* Reset the plan for another broker. */
static void replan(uint32_t op, uint64_t us, unsigned int calls)
{
	atomic_store(&plan->go, 0);
	atomic_store(&plan->done, 0);
	plan->op = op;
	plan->us = us;
	plan->last_us = 0;
	plan->calls = calls;
}

/* The dispatch thread's CPU over 300 ms of nothing, after some traffic
 * (so that the gaps it learned are short). */
static uint64_t idle_cpu(struct ferry_broker *b)
{
	struct ferry_broker_stats s0, s1;
	struct timespec window = { .tv_nsec = 300 * 1000000 };

	atomic_store(&plan->go, 1);
	while (!atomic_load(&plan->done))
		usleep(1000);
	/* A measuring window, not a wait for something: nothing is sent. */
	ferry_broker_stats(b, &s0);
	nanosleep(&window, NULL);
	ferry_broker_stats(b, &s1);
	return s1.dispatch_cpu_ns - s0.dispatch_cpu_ns;
}

/*
 * The CPU bounds below are relative to FERRY_DISPATCH_SLEEP on the same
 * machine, which never polls: polling through the window would cost all
 * of it, and a guest under TCG (a debug kernel most of all) pays for
 * every sleep and wake-up many times what a host does.
 */
TEST_F(dw, idle_broker_holds_no_cpu)
{
	uint64_t asleep, awaiting;

	replan(OP_ECHO, 0, 10);
	start(&self->b, 20000, FERRY_DISPATCH_SLEEP);
	ASSERT_NE(NULL, self->b);
	asleep = idle_cpu(self->b);
	ferry_broker_stop(self->b);
	replan(OP_ECHO, 0, 10);
	start(&self->b, 20000, 0);
	ASSERT_NE(NULL, self->b);
	awaiting = idle_cpu(self->b);
	TH_LOG("idle 300 ms: dispatch CPU %.2f ms (FERRY_DISPATCH_SLEEP: %.2f ms)",
	       awaiting / 1e6, asleep / 1e6);
	EXPECT_GE(2 * asleep + 15 * 1000000ull, awaiting);
}

/*
 * Naps of @us (the last one @last_us when not 0), @calls of them, under
 * FERRY_DISPATCH_SLEEP ([0]) and by default ([1]): the dispatch thread's
 * CPU and the wall time of each run; every reply checked.
 */
static void naps_both_ways(struct __test_metadata *_metadata, struct ferry_broker **b,
			   uint64_t us, unsigned int calls, uint64_t last_us,
			   uint64_t cpu[2], uint64_t wall[2])
{
	uint64_t wakeups;

	for (int k = 0; k < 2; k++) {
		replan(OP_NAP, us, calls);
		plan->last_us = last_us;
		start(b, 20000, k ? 0 : FERRY_DISPATCH_SLEEP);
		ASSERT_NE(NULL, *b);
		run(*b, &cpu[k], &wakeups, &wall[k]);
		EXPECT_EQ(0, atomic_load(&plan->wrong));
		ferry_broker_stop(*b);
		*b = NULL;
	}
}

TEST_F(dw, long_requests_are_slept_for)
{
	uint64_t cpu[2], wall[2];

	naps_both_ways(_metadata, &self->b, 20000, 15, 0, cpu, wall);
	TH_LOG("15 requests of 20 ms: dispatch CPU %.2f ms of %.0f ms (FERRY_DISPATCH_SLEEP: "
	       "%.2f ms)", cpu[1] / 1e6, wall[1] / 1e6, cpu[0] / 1e6);
	EXPECT_GE(2 * cpu[0] + wall[1] / 20, cpu[1]);
}

/*
 * A reply much later than its op's history: 40 requests of 1 ms teach
 * the dispatch thread to wake for replies after about 1 ms, then one
 * takes 60 ms.  Past its predicted time and spin, it is the bell's to
 * bring; polling for it would cost most of the 60 ms.
 */
TEST_F(dw, late_reply_is_slept_for)
{
	uint64_t cpu[2], wall[2];

	naps_both_ways(_metadata, &self->b, 1000, 41, 60000, cpu, wall);
	TH_LOG("40 requests of 1 ms, then one of 60 ms: dispatch CPU %.2f ms of %.0f ms "
	       "(FERRY_DISPATCH_SLEEP: %.2f ms)", cpu[1] / 1e6, wall[1] / 1e6, cpu[0] / 1e6);
	EXPECT_GE(2 * cpu[0] + wall[1] / 10, cpu[1]);
}

static void closed_loop(struct __test_metadata *_metadata, struct ferry_broker **b,
			unsigned int flags, double *per_reply, double *rtt_us)
{
	uint64_t cpu, wakeups, wall;

	replan(OP_ECHO, 0, 3000);
	start(b, 0, flags);
	ASSERT_NE(NULL, *b);
	run(*b, &cpu, &wakeups, &wall);
	*per_reply = (double)wakeups / plan->calls;
	*rtt_us = wall / 1e3 / plan->calls;
	TH_LOG("%s: 3000 round trips in %.0f ms, dispatch %.2f wake-ups and %.1f us CPU each",
	       flags ? "FERRY_DISPATCH_SLEEP" : "default", wall / 1e6, *per_reply,
	       cpu / 3e3 / 1e3);
	EXPECT_EQ(0, atomic_load(&plan->wrong));
	ferry_broker_stop(*b);
	*b = NULL;
}

TEST_F(dw, sleeping_round_trips_spare_the_dispatch_wake_ups)
{
	double asleep, awaiting, rtt_asleep, rtt_awaiting;

	closed_loop(_metadata, &self->b, FERRY_DISPATCH_SLEEP, &asleep, &rtt_asleep);
	closed_loop(_metadata, &self->b, 0, &awaiting, &rtt_awaiting);
	/*
	 * Sleeping: woken by the request and by the reply, nearly each time.
	 * Awaiting: the reply is polled for, and the next request where the
	 * child sends again within FERRY_AWAIT_GAP_MAX_NS: at least half a
	 * wake-up less per round trip where a sleeping one takes less than
	 * 100 us.  A guest under TCG takes 300-1000 us: there the replies are
	 * predicted and slept for, the gaps are too long to spin through, and
	 * the dispatch thread often finds the next descriptor before it
	 * sleeps; only the replies are checked there.
	 */
	if (rtt_asleep < 100) {
		EXPECT_LE(1.2, asleep);
		EXPECT_GE(asleep - 0.5, awaiting);
	}
	TH_LOG("round trips: %.1f us sleeping, %.1f us awaiting", rtt_asleep, rtt_awaiting);
}

TEST_HARNESS_MAIN
