// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A child's pollable fd, for event loops (asyncio, epoll, libuv):
 * ferry_child_fd() and ferry_child_fd_arm().
 *
 * Replies arrive on a shared-memory ring whose doorbell is a futex word
 * (or, on kernels whose io_uring cannot wait on futexes, an eventfd): a
 * plain fd cannot wait on either.  The fd is the ring fd of a small
 * io_uring of the child's own (a waitset, waitset.c) that polls readable
 * when one of its waits completes:
 *   BELL  a FUTEX_WAIT (or eventfd read) on the reply ring's doorbell,
 *         armed after ferry_chan_prepare_sleep() said the ring is empty
 *         and announced the sleep, so a reply sent after it rings;
 *   KICK  an eventfd of ours, written when a reply may have reached the
 *         FIFO of ferry_complete() without ringing the bell for us;
 *   CTL   (attached services) the control socket, which polls readable
 *         or hung up when the broker goes: ferry_complete() then says
 *         -EPIPE.
 *
 * The ring has one consumer at a time (child_calls.c: @receiving), and a
 * doorbell wakes one sleeper: while the fd waits on the bell, no other
 * thread may also sleep on it, or one of them would miss its wake.  So a
 * thread that is about to receive and may sleep takes the bell back
 * (ferry_child_fd_yield: cancel our wait, withdraw the announcement) and,
 * when it is done, kicks the fd if the fd is still waiting, so that the
 * event loop looks at the FIFO and arms again.  Everything here runs
 * under the child's io_lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "peer.h"
#include "waitset.h"

enum { KEY_BELL = 1, KEY_KICK = 2, KEY_CTL = 3 };

struct ferry_child_fd {
	struct ferry_waitset *ws;
	int kick;		/* eventfd */
	bool armed;		/* ferry_child_fd_arm() returned 0, not reaped since */
	bool bell;		/* KEY_BELL armed, the sleep announced on the ring */
	bool hup;		/* the control socket polled readable: the broker is gone */
};

/* Under io_lock. */
static int fd_make(struct ferry_child *c)
{
	struct ferry_child_fd *f;
	int err;

	if (c->pfd)
		return 0;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	err = ferry_waitset_create(3, false, &f->ws);
	if (err)
		goto out_free;
	/* Futex bells need a ring that can wait on futexes; eventfds do not. */
	if (c->ch.mode == FERRY_BELL_FUTEX && ferry_waitset_mode(f->ws) != FERRY_BELL_FUTEX) {
		err = -EOPNOTSUPP;
		goto out_ws;
	}
	f->kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (f->kick < 0) {
		err = -errno;
		goto out_ws;
	}
	c->pfd = f;
	return 0;
out_ws:
	ferry_waitset_destroy(f->ws);
out_free:
	free(f);
	return err;
}

int ferry_child_fd(struct ferry_child *c)
{
	int err;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->io_lock);
	err = fd_make(c);
	if (!err)
		err = ferry_waitset_fd(c->pfd->ws);
	pthread_mutex_unlock(&c->io_lock);
	return err;
}

static void bell_drop(struct ferry_child *c)
{
	struct ferry_child_fd *f = c->pfd;

	if (!f->bell)
		return;
	ferry_waitset_disarm(f->ws, KEY_BELL);
	ferry_chan_end_sleep(&c->ch);
	f->bell = false;
}

static void kick(struct ferry_child_fd *f)
{
	uint64_t one = 1;

	/* EAGAIN: the count is huge, the fd is readable anyway. */
	if (write(f->kick, &one, sizeof(one)) < 0)
		return;
}

/* Take what fired (none of it waits any more). */
static int reap(struct ferry_child *c)
{
	struct ferry_child_fd *f = c->pfd;
	uint32_t keys[3];
	uint64_t v;
	int n;

	n = ferry_waitset_wait(f->ws, keys, 3, 0);
	if (n < 0)
		return n == -EINTR ? 0 : n;
	for (int i = 0; i < n; i++) {
		if (keys[i] == KEY_BELL && f->bell) {
			ferry_chan_end_sleep(&c->ch);
			f->bell = false;
		} else if (keys[i] == KEY_KICK) {
			if (read(f->kick, &v, sizeof(v)) < 0)
				v = 0;	/* EAGAIN: nothing to consume */
		} else if (keys[i] == KEY_CTL) {
			f->hup = true;
		}
	}
	return 0;
}

/* Replies of submitted requests that may still come. */
static bool submitted(const struct ferry_child *c)
{
	return c->outstanding > c->nstash + c->nlate + c->nwaiters;
}

static int arm_locked(struct ferry_child *c)
{
	struct ferry_child_fd *f;
	uint32_t seq;
	int err;

	err = fd_make(c);
	if (err)
		return err;
	f = c->pfd;
	f->armed = false;
	err = reap(c);
	if (err)
		return err;
	if (c->nstash)
		return 1;
	if (f->hup)	/* the broker is gone: only what was sent may still say so */
		return submitted(c) ? 1 : -EPIPE;
	/* Something on the ring for someone: whoever takes it routes it. */
	if (submitted(c) && !c->receiving && ferry_chan_pending(&c->ch, FERRY_TO_PEER))
		return 1;
	if (!ferry_waitset_armed(f->ws, KEY_KICK)) {
		err = ferry_waitset_arm_eventfd(f->ws, KEY_KICK, f->kick);
		if (err)
			return err;
	}
	if (c->attached && !ferry_waitset_armed(f->ws, KEY_CTL)) {
		err = ferry_waitset_arm_poll(f->ws, KEY_CTL, c->ctl);
		if (err)
			return err;
	}
	/*
	 * The bell only while nobody else receives (that thread tells us by
	 * the kick when it is done) and only for replies that can come.
	 */
	if (!f->bell && !c->receiving && submitted(c)) {
		if (!ferry_chan_prepare_sleep(&c->ch, &seq))
			return 1;	/* a reply arrived meanwhile */
		if (c->ch.mode == FERRY_BELL_FUTEX)
			err = ferry_waitset_arm_futex(f->ws, KEY_BELL,
						      ferry_chan_bell_word(&c->ch, FERRY_TO_PEER),
						      seq);
		else
			err = ferry_waitset_arm_eventfd(f->ws, KEY_BELL, c->ch.efd[FERRY_TO_PEER]);
		if (err) {
			ferry_chan_end_sleep(&c->ch);
			return err;
		}
		f->bell = true;
	}
	err = ferry_waitset_flush(f->ws);
	if (err) {
		bell_drop(c);
		return err;
	}
	f->armed = true;
	return 0;
}

int ferry_child_fd_arm(struct ferry_child *c)
{
	int r;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->io_lock);
	r = arm_locked(c);
	pthread_mutex_unlock(&c->io_lock);
	return r;
}

void ferry_child_fd_yield(struct ferry_child *c)
{
	bell_drop(c);
}

void ferry_child_fd_received(struct ferry_child *c)
{
	struct ferry_child_fd *f = c->pfd;

	/* Waiting without the bell: only we can say that something changed. */
	if (f->armed && !f->bell)
		kick(f);
}

void ferry_child_fd_free(struct ferry_child *c)
{
	struct ferry_child_fd *f = c->pfd;

	if (!f)
		return;
	if (f->bell)
		ferry_chan_end_sleep(&c->ch);
	ferry_waitset_destroy(f->ws);
	close(f->kick);
	free(f);
	c->pfd = NULL;
}
