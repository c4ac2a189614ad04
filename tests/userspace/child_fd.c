// SPDX-License-Identifier: GPL-2.0
/*
 * A child's pollable fd (ferry_child_fd, ferry_child_fd_arm): it polls
 * readable when a reply waits, under poll() and epoll, with full windows,
 * while other threads of the child make calls on the same ring, stays
 * quiet when nothing is outstanding, and tells an attached service that
 * its broker went.  On both doorbells: futex and eventfd.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

enum { OP_INC = 1, OP_SLEEP = 2 };
#define WAIT_MS 20000	/* a reply that takes this long is a failure */

static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	(void)h;
	(void)arg;
	if (req->op == OP_SLEEP) {
		usleep((useconds_t)req->arg[0] * 1000);
		return 0;
	}
	if (req->op != OP_INC)
		return -EOPNOTSUPP;
	rep->arg[0] = req->arg[0] + 1;
	return 0;
}

/* Wait on @fd (poll or @ep) for one reply of a submitted request: 0 or a code. */
static int fd_next(struct ferry_child *c, int fd, int ep, struct ferry_desc *rep)
{
	for (;;) {
		int r = ferry_complete(c, rep, 0);

		if (r == 0)
			return 0;
		if (r != -ETIMEDOUT)
			return 10;
		r = ferry_child_fd_arm(c);
		if (r < 0)
			return 11;
		if (r == 1)
			continue;
		if (ep >= 0) {
			struct epoll_event ev;

			/* The completion's task work interrupts the wait (EINTR). */
			do
				r = epoll_wait(ep, &ev, 1, WAIT_MS);
			while (r < 0 && errno == EINTR);
			if (r != 1)
				return 12;
		} else {
			struct pollfd p = { .fd = fd, .events = POLLIN };

			if (poll(&p, 1, WAIT_MS) != 1 || !(p.revents & POLLIN))
				return 13;
		}
	}
}

struct run {
	unsigned int rounds, batch;
	bool epoll;
	bool caller_thread;	/* another thread makes ferry_call()s meanwhile */
};

static void *caller(void *arg)
{
	struct ferry_child *c = arg;

	for (uint64_t i = 0; i < 2000; i++) {
		struct ferry_desc d = { .op = OP_INC, .arg = { i } }, rep;

		if (ferry_call(c, &d, &rep) || rep.status || rep.arg[0] != i + 1)
			return (void *)1;
	}
	return NULL;
}

static int body(struct ferry_child *c, void *arg)
{
	const struct run *w = arg;
	int fd = ferry_child_fd(c), ep = -1, ret = 0;
	pthread_t t;
	void *tr = NULL;

	if (fd < 0 || ferry_child_fd(c) != fd)
		return 2;
	if (w->epoll) {
		struct epoll_event ev = { .events = EPOLLIN };

		ep = epoll_create1(EPOLL_CLOEXEC);
		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
			return 3;
	}
	if (w->caller_thread && pthread_create(&t, NULL, caller, c))
		return 4;
	for (uint64_t r = 0; r < w->rounds && !ret; r++) {
		bool seen[64] = { false };

		for (uint64_t k = 0; k < w->batch; k++) {
			struct ferry_desc d = { .op = OP_INC, .tag = k, .arg = { r * 1000 + k } };

			if (ferry_submit(c, &d))
				return 5;
		}
		for (uint64_t k = 0; k < w->batch && !ret; k++) {
			struct ferry_desc rep;

			ret = fd_next(c, fd, ep, &rep);
			if (!ret && (rep.status || rep.tag >= w->batch || seen[rep.tag] ||
				     rep.arg[0] != r * 1000 + rep.tag + 1))
				ret = 6;
			if (!ret)
				seen[rep.tag] = true;
		}
	}
	if (w->caller_thread) {
		pthread_join(t, &tr);
		if (tr)
			ret = ret ? ret : 7;
	}
	if (ep >= 0)
		close(ep);
	if (ret)
		fprintf(stderr, "# child %u failed with code %d\n", ferry_child_index(c), ret);
	return ret;
}

FIXTURE(fd) {
	struct ferry_broker_opts o;
	struct run w;
};

FIXTURE_VARIANT(fd) {
	bool eventfd;
};
FIXTURE_VARIANT_ADD(fd, futex) { .eventfd = false };
FIXTURE_VARIANT_ADD(fd, eventfd) { .eventfd = true };

FIXTURE_SETUP(fd)
{
	/* The broker's and the children's waitsets both read it. */
	if (variant->eventfd)
		setenv("FERRY_WAITSET_FORCE_EVENTFD", "1", 1);
	else
		unsetenv("FERRY_WAITSET_FORCE_EVENTFD");
	ASSERT_EQ(0, ferry_broker_opts_init(&self->o));
	self->o.children = 2;
	self->o.helpers = 2;
	self->o.window = 16;
	self->o.handler = handler;
	self->o.child_fn = body;
	self->o.child_arg = &self->w;
	self->o.gpu = FERRY_GPU_NONE;
}

FIXTURE_TEARDOWN(fd)
{
}

static void run_broker(struct __test_metadata *_metadata, struct ferry_broker_opts *o)
{
	struct ferry_broker *b;

	ASSERT_EQ(0, ferry_broker_start(o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stop(b);
}

TEST_F(fd, poll_sees_each_reply_one_at_a_time)
{
	self->w = (struct run){ .rounds = 300, .batch = 1 };
	run_broker(_metadata, &self->o);
}

TEST_F(fd, epoll_collects_full_windows)
{
	self->w = (struct run){ .rounds = 200, .batch = 16, .epoll = true };
	run_broker(_metadata, &self->o);
}

TEST_F(fd, calls_of_another_thread_neither_steal_nor_hide_replies)
{
	self->w = (struct run){ .rounds = 400, .batch = 4, .caller_thread = true };
	run_broker(_metadata, &self->o);
}

static int quiet_body(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_INC, .arg = { 41 } }, rep;
	struct pollfd p;

	(void)arg;
	p.fd = ferry_child_fd(c);
	p.events = POLLIN;
	if (p.fd < 0)
		return 2;
	if (ferry_child_fd_arm(c) != 0 || poll(&p, 1, 0) != 0)
		return 3;	/* nothing outstanding: quiet */
	if (ferry_call(c, &d, &rep) || rep.arg[0] != 42)
		return 4;	/* a call's reply is its own, not the fd's */
	if (ferry_complete(c, &rep, 0) != -ENOENT)
		return 5;
	d.tag = 7;
	if (ferry_submit(c, &d))
		return 6;
	for (;;) {
		int r = ferry_child_fd_arm(c);

		if (r < 0)
			return 7;
		if (r == 0 && poll(&p, 1, WAIT_MS) != 1)
			return 8;
		r = ferry_complete(c, &rep, 0);
		if (r == 0)
			return rep.tag == 7 && rep.arg[0] == 42 ? 0 : 9;
		if (r != -ETIMEDOUT)
			return 10;
	}
}

TEST_F(fd, quiet_without_submitted_requests)
{
	self->o.child_fn = quiet_body;
	run_broker(_metadata, &self->o);
}

TEST(bad_handles)
{
	EXPECT_EQ(-EINVAL, ferry_child_fd(NULL));
	EXPECT_EQ(-EINVAL, ferry_child_fd_arm(NULL));
}

/*
 * A service waits on its fd for a reply that never comes; the broker goes.
 * The service is forked before the broker starts, like a real one: a
 * process forked after holds the broker's io_uring, and with it the
 * broker's end of every connection that ring polls.
 */
TEST(attached_service_fd_fires_when_the_broker_goes)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	char path[64];
	int go[2], ready[2], status;
	pid_t svc;

	snprintf(path, sizeof(path), "/tmp/ferry-test-fd-%d.sock", getpid());
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(ready));
	svc = fork();
	ASSERT_LE(0, svc);
	if (svc == 0) {
		struct ferry_desc d = { .op = OP_SLEEP, .arg = { 600000 } }, rep;
		struct ferry_child *c;
		struct pollfd p = { .events = POLLIN };
		int r;

		close(go[1]);
		close(ready[0]);
		if (read(go[0], &(char){ 0 }, 1) != 1 || ferry_attach(path, &c))
			_exit(20);
		p.fd = ferry_child_fd(c);
		if (p.fd < 0 || ferry_submit(c, &d) || ferry_child_fd_arm(c) != 0)
			_exit(21);
		if (write(ready[1], "x", 1) != 1)
			_exit(22);
		for (;;) {
			if (poll(&p, 1, 60000) != 1)
				_exit(23);
			r = ferry_complete(c, &rep, 0);
			if (r == -EPIPE || (r == 0 && rep.status == -EPIPE))
				break;
			if (r != -ETIMEDOUT || ferry_child_fd_arm(c) < 0)
				_exit(24);
		}
		ferry_detach(c);
		_exit(0);
	}
	close(go[0]);
	close(ready[1]);
	ASSERT_EQ(0, ferry_broker_opts_init(&o));
	o.children = 0;
	o.helpers = 1;
	o.handler = handler;
	o.attach_path = path;
	o.max_attached = 1;
	o.gpu = FERRY_GPU_NONE;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	ASSERT_EQ(1, write(go[1], "x", 1));
	ASSERT_EQ(1, read(ready[0], &(char){ 0 }, 1));
	ferry_broker_stop(b);
	ASSERT_EQ(svc, waitpid(svc, &status, 0));
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
}

TEST_HARNESS_MAIN
