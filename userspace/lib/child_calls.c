// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A child's requests and replies: ferry_submit/ferry_complete (a window
 * of asynchronous requests), ferry_call (one request, its reply) and its
 * deadline, shared safely by the threads of a service.
 *
 * The channel is single-producer, single-consumer: sends are made under
 * io_lock, and one thread at a time reads replies (the receiver) while
 * the others wait on io_cond.  The receiver hands each reply on by its
 * tag: a call's reply (internal tag) to the call waiting for it, a late
 * reply (its call timed out) to nowhere, any other to the FIFO that
 * ferry_complete() takes from.  Calls and asynchronous requests can mix,
 * from any threads.  Uncontended, the lock costs two atomic operations
 * per request and per reply.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "peer.h"

/* Internal tags: top bits 11 (pool calls use 10). */
#define CALL_TAG (3ull << 62)

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

unsigned int ferry_outstanding(const struct ferry_child *c)
{
	struct ferry_child *m = (struct ferry_child *)c;	/* the lock only */
	unsigned int n;

	pthread_mutex_lock(&m->io_lock);
	n = c->outstanding;
	pthread_mutex_unlock(&m->io_lock);
	return n;
}

/* Under io_lock. */
static int send_locked(struct ferry_child *c, const struct ferry_desc *d)
{
	int err;

	if (c->outstanding >= c->window)
		return -EAGAIN;
	err = ferry_chan_send(&c->ch, d);
	if (!err)
		c->outstanding++;
	return err;
}

int ferry_submit(struct ferry_child *c, const struct ferry_desc *req)
{
	int err;

	if (req->tag >> 62 == 3)	/* ours: its reply would go astray */
		return -EINVAL;
	pthread_mutex_lock(&c->io_lock);
	err = send_locked(c, req);
	pthread_mutex_unlock(&c->io_lock);
	return err;
}

/* Hand @rep on (under io_lock): to its call, to nowhere, or to the FIFO. */
static void route_locked(struct ferry_child *c, const struct ferry_desc *rep)
{
	for (unsigned int i = 0; i < c->nlate; i++) {
		if (c->late[i] == rep->tag) {
			c->late[i] = c->late[--c->nlate];
			c->outstanding--;
			return;
		}
	}
	for (unsigned int i = 0; c->nwaiters && i < c->window; i++) {
		struct ferry_waiter *w = &c->waiter[i];

		if (w->used && !w->done && w->tag == rep->tag) {
			w->rep = *rep;
			w->done = true;
			pthread_cond_broadcast(&c->io_cond);
			return;
		}
	}
	/* Room: at most window requests are outstanding. */
	if (c->nstash < c->window)
		c->stash[c->nstash++] = *rep;
	pthread_cond_broadcast(&c->io_cond);
}

/*
 * Wait (under io_lock, which it drops while reading or waiting) until
 * @ready says the caller's reply is there, or @end passes: 0, -ETIMEDOUT,
 * or the channel's error (-EPIPE: the broker is gone).
 */
static int wait_locked(struct ferry_child *c, bool (*ready)(struct ferry_child *, void *),
		       void *arg, uint64_t end)
{
	/* Past the deadline, still take what is already queued (timeout 0). */
	bool drained = false;

	for (;;) {
		struct ferry_desc rep;
		uint64_t now;
		bool expired;
		int err;

		if (ready(c, arg))
			return 0;
		now = end == UINT64_MAX ? 0 : mono_ns();
		expired = end != UINT64_MAX && now >= end;
		if (expired && (drained || c->receiving))
			return -ETIMEDOUT;
		if (c->receiving) {
			if (end == UINT64_MAX) {
				pthread_cond_wait(&c->io_cond, &c->io_lock);
			} else {
				struct timespec ts;

				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_sec += (time_t)((end - now) / 1000000000u);
				ts.tv_nsec += (long)((end - now) % 1000000000u);
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000;
				}
				pthread_cond_timedwait(&c->io_cond, &c->io_lock, &ts);
			}
			continue;
		}
		c->receiving = true;
		if (c->pfd && !expired)
			ferry_child_fd_yield(c);	/* this thread may sleep on the bell */
		pthread_mutex_unlock(&c->io_lock);
		err = ferry_child_recv(c, &rep, end == UINT64_MAX ? -1 :
					       expired ? 0 : (int64_t)(end - now));
		pthread_mutex_lock(&c->io_lock);
		c->receiving = false;
		pthread_cond_broadcast(&c->io_cond);	/* someone else may read now */
		if (c->pfd)
			ferry_child_fd_received(c);
		if (!err)
			route_locked(c, &rep);
		else if (err != -ETIMEDOUT)
			return err;
		else
			drained = true;
	}
}

static bool stash_ready(struct ferry_child *c, void *arg)
{
	(void)arg;
	return c->nstash > 0;
}

int ferry_complete(struct ferry_child *c, struct ferry_desc *rep, int64_t timeout_ns)
{
	uint64_t end = timeout_ns < 0 ? UINT64_MAX : mono_ns() + (uint64_t)timeout_ns;
	int err;

	pthread_mutex_lock(&c->io_lock);
	/* Nothing submitted to wait for (calls and late ones are not). */
	if (!c->nstash && c->outstanding <= c->nlate + c->nwaiters) {
		pthread_mutex_unlock(&c->io_lock);
		return -ENOENT;
	}
	err = wait_locked(c, stash_ready, NULL, end);
	if (!err) {
		*rep = c->stash[0];
		memmove(c->stash, c->stash + 1, --c->nstash * sizeof(*c->stash));
		c->outstanding--;
	}
	pthread_mutex_unlock(&c->io_lock);
	return err;
}

static bool waiter_done(struct ferry_child *c, void *arg)
{
	(void)c;
	return ((struct ferry_waiter *)arg)->done;
}

int ferry_child_call_internal(struct ferry_child *c, struct ferry_desc *d, int64_t timeout_ns)
{
	uint64_t end = timeout_ns < 0 ? UINT64_MAX : mono_ns() + (uint64_t)timeout_ns, t0;
	uint32_t op = d->op;
	struct ferry_expect *e;
	struct ferry_waiter *w = NULL;
	int err;

	pthread_mutex_lock(&c->io_lock);
	for (unsigned int i = 0; i < c->window && !w; i++)
		if (!c->waiter[i].used)
			w = &c->waiter[i];
	d->tag = CALL_TAG | ++c->internal_seq;
	err = w ? send_locked(c, d) : -EAGAIN;
	if (err) {
		pthread_mutex_unlock(&c->io_lock);
		return err;
	}
	*w = (struct ferry_waiter){ .tag = d->tag, .used = true };
	c->nwaiters++;
	e = &c->expect[op % FERRY_EXPECT_OPS];
	t0 = mono_ns();
	c->expect_start_ns = t0;
	c->expect_dev_ns = e->dev_ns;
	c->expect_end_ns = e->op == op && e->ewma_ns ? t0 + e->ewma_ns : 0;
	err = wait_locked(c, waiter_done, w, end);
	c->expect_end_ns = 0;
	if (!err && w->done) {
		uint64_t rtt = mono_ns() - t0;

		*d = w->rep;
		c->outstanding--;
		ferry_expect_learn(e, op, rtt);
	} else if (err == -ETIMEDOUT) {
		c->late[c->nlate++] = w->tag;	/* dropped when it comes */
	}
	w->used = false;
	c->nwaiters--;
	pthread_mutex_unlock(&c->io_lock);
	return err;
}

int ferry_call_timeout(struct ferry_child *c, const struct ferry_desc *req,
		       struct ferry_desc *rep, int64_t timeout_ns)
{
	struct ferry_desc d = *req;
	int err = ferry_child_call_internal(c, &d, timeout_ns);

	if (err)
		return err;
	d.tag = req->tag;
	*rep = d;
	return 0;
}

int ferry_call(struct ferry_child *c, const struct ferry_desc *req, struct ferry_desc *rep)
{
	return ferry_call_timeout(c, req, rep, -1);
}
