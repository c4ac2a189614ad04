// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A child's end: its own region (channel at the front, heap behind it),
 * requests out, replies in.  Attached services use the same code; only
 * how they got their control socket differs (attach.c).  On kmod the
 * channel part is mapped a second time, over the first, from the region's
 * head (broker.c): the futex words must be pinnable, the heap is not.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "peer.h"

static bool valid_setup(const struct ferry_ctl *m)
{
	return m->type == FERRY_CTL_SETUP &&
	       (m->backend == FERRY_BACKEND_KMOD || m->backend == FERRY_BACKEND_MEMFD) &&
	       (m->bell_mode == FERRY_BELL_FUTEX || m->bell_mode == FERRY_BELL_EVENTFD) &&
	       m->nslots >= 2 && m->nslots <= 65536 && !(m->nslots & (m->nslots - 1)) &&
	       m->chan_bytes >= ferry_chan_bytes(m->nslots) &&
	       m->chan_bytes <= m->region.size &&
	       (m->head_id == 0 ||
		(m->backend == FERRY_BACKEND_KMOD &&
		 m->chan_bytes == ferry_page_round(m->chan_bytes))) &&
	       m->pool_op <= FERRY_POOL_OP_DESCRIBE &&
	       (m->pool_op == FERRY_POOL_OP_NONE ||
		((m->pool.kind == FERRY_POOL_CPU || m->pool.kind == FERRY_POOL_CUDA) &&
		 m->pool.size > 0)) &&
	       m->nfds == (m->backend == FERRY_BACKEND_MEMFD) +
			  2u * (m->bell_mode == FERRY_BELL_EVENTFD) +
			  (m->pool_op == FERRY_POOL_OP_IMPORT && m->pool.fd >= 0);
}

int ferry_peer_setup(int ctl, struct ferry_ctl *m, struct ferry_rctx **rc,
		     struct ferry_region **region, struct ferry_chan *ch, int efd[2],
		     int *pool_fd)
{
	int fds[FERRY_CTL_MAX_FDS];
	unsigned int nfds = 0, next = 0;
	struct ferry_region_ref ref;
	int err;

	efd[0] = efd[1] = -1;
	*pool_fd = -1;
	*rc = NULL;
	*region = NULL;
	err = ferry_ctl_recv(ctl, m, fds, &nfds, 0);
	if (err)
		return err;
	if (m->type == FERRY_CTL_REFUSED) {
		err = m->status < 0 ? m->status : -EPROTO;
		goto out_fds;
	}
	if (!valid_setup(m)) {
		err = -EPROTO;
		goto out_fds;
	}
	ref = m->region;
	ref.fd = -1;
	if (m->backend == FERRY_BACKEND_MEMFD)
		ref.fd = fds[next++];
	if (m->bell_mode == FERRY_BELL_EVENTFD) {
		efd[0] = fds[next++];
		efd[1] = fds[next++];
	}
	if (m->pool_op == FERRY_POOL_OP_IMPORT && m->pool.fd >= 0)
		*pool_fd = fds[next++];
	err = ferry_rctx_open((enum ferry_backend)m->backend, rc);
	if (err)
		goto out_fds;
	err = ferry_region_import(*rc, &ref, FERRY_READ | FERRY_WRITE, region);
	if (ref.fd >= 0)
		close(ref.fd);	/* the mapping is all we keep */
	if (err)
		goto out_rc;
	err = ferry_region_map_head(*region, m->head_id, m->chan_bytes);
	if (err)
		goto out_region;
	err = ferry_chan_attach(ch, ferry_region_base(*region), ferry_chan_bytes(m->nslots),
				false, (enum ferry_bell_mode)m->bell_mode, efd);
	if (err)
		goto out_region;
	ch->spin_ns = m->spin_ns;
	ch->pause_ns = m->pause_ns;
	return 0;
out_region:
	ferry_region_close(*region);
	*region = NULL;
out_rc:
	ferry_rctx_close(*rc);
	*rc = NULL;
	for (int d = 0; d < 2; d++)
		if (efd[d] >= 0)
			close(efd[d]);
	efd[0] = efd[1] = -1;
	if (*pool_fd >= 0)
		close(*pool_fd);
	*pool_fd = -1;
	return err;
out_fds:
	for (unsigned int i = 0; i < nfds; i++)
		close(fds[i]);
	*pool_fd = -1;
	return err;
}

int ferry_child_init(struct ferry_child *c, int ctl, bool attached)
{
	struct ferry_ctl m;
	int err;

	memset(c, 0, sizeof(*c));
	c->ctl = ctl;
	c->pool_fd = -1;
	c->attached = attached;
	err = ferry_peer_setup(ctl, &m, &c->rc, &c->region, &c->ch, c->efd, &c->pool_fd);
	if (err)
		return err;
	if (m.pool_op == FERRY_POOL_OP_IMPORT || m.pool_op == FERRY_POOL_OP_DESCRIBE) {
		c->pool_ref = m.pool;
		c->pool_mappable = m.pool_op == FERRY_POOL_OP_IMPORT;
	}
	c->index = m.index;
	c->base = ferry_region_base(c->region);
	c->size = ferry_region_size(c->region);
	c->heap_off = m.chan_bytes;
	c->window = m.window ? m.window : 1;
	if (c->window > m.nslots)
		c->window = m.nslots;
	pthread_mutex_init(&c->heap_lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&c->heap_freed, &ca);
		pthread_condattr_destroy(&ca);
	}
	pthread_mutex_init(&c->io_lock, NULL);
	pthread_cond_init(&c->io_cond, NULL);
	c->stash = calloc(c->window, sizeof(*c->stash));
	c->late = calloc(c->window, sizeof(*c->late));
	c->waiter = calloc(c->window, sizeof(*c->waiter));
	if (!c->stash || !c->late || !c->waiter) {
		ferry_child_fini(c);
		return -ENOMEM;
	}
	return 0;
}

void ferry_child_fini(struct ferry_child *c)
{
	ferry_child_fd_free(c);
	if (c->pool)
		ferry_pool_close(c->pool);
	if (c->pool_fd >= 0)
		close(c->pool_fd);
	free(c->stash);
	free(c->late);
	free(c->waiter);
	ferry_region_close(c->region);
	ferry_rctx_close(c->rc);
	for (int d = 0; d < 2; d++)
		if (c->efd[d] >= 0)
			close(c->efd[d]);
	if (c->ctl >= 0)
		close(c->ctl);
	pthread_mutex_destroy(&c->heap_lock);
	pthread_cond_destroy(&c->heap_freed);
	pthread_mutex_destroy(&c->io_lock);
	pthread_cond_destroy(&c->io_cond);
}

_Noreturn void ferry_child_main(const struct ferry_peer_cfg *cfg, int ctl)
{
	struct ferry_child c;
	int ret;

	/*
	 * Its sleeps end when a reply is due (predicted_wait): without this a
	 * timed sleep may end up to 50 us late (the default timer slack).
	 */
	prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
	ret = ferry_child_init(&c, ctl, false);
	if (ret) {
		fprintf(stderr, "ferry: child %u setup failed: %s\n", cfg->index, strerror(-ret));
		_exit(126);
	}
	ret = cfg->child_fn(&c, cfg->child_arg);
	ferry_child_fini(&c);
	fflush(NULL);
	_exit(ret & 0xff);
}

unsigned int ferry_child_index(const struct ferry_child *c)
{
	return c->index;
}

void *ferry_malloc(struct ferry_child *c, size_t n)
{
	return ferry_malloc_timeout(c, n, 0);
}

/*
 * The heap is the child's own: room comes back only when another thread
 * of this process frees, which wakes every waiter to try again.  A
 * request larger than the heap could ever hold fails at once.
 */
void *ferry_malloc_timeout(struct ferry_child *c, size_t n, int64_t timeout_ns)
{
	struct timespec end;
	int64_t off;

	if (timeout_ns > 0) {
		clock_gettime(CLOCK_MONOTONIC, &end);
		end.tv_sec += timeout_ns / 1000000000;
		end.tv_nsec += timeout_ns % 1000000000;
		if (end.tv_nsec >= 1000000000) {
			end.tv_sec++;
			end.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&c->heap_lock);
	for (;;) {
		off = ferry_heap_alloc(c->base, c->size, n);
		if (off != -ENOMEM || timeout_ns == 0 || n > c->size - c->heap_off)
			break;
		if (timeout_ns < 0) {
			pthread_cond_wait(&c->heap_freed, &c->heap_lock);
		} else if (pthread_cond_timedwait(&c->heap_freed, &c->heap_lock, &end) == ETIMEDOUT) {
			off = ferry_heap_alloc(c->base, c->size, n);	/* one last try */
			break;
		}
	}
	pthread_mutex_unlock(&c->heap_lock);
	if (off < 0) {
		errno = (int)-off;
		return NULL;
	}
	return (uint8_t *)c->base + off;
}

void ferry_free(struct ferry_child *c, void *p)
{
	uint64_t off = ferry_offset(c, p);

	if (!p || off == UINT64_MAX)
		return;
	pthread_mutex_lock(&c->heap_lock);
	ferry_heap_free(c->base, c->size, off);
	pthread_cond_broadcast(&c->heap_freed);
	pthread_mutex_unlock(&c->heap_lock);
}

uint64_t ferry_offset(const struct ferry_child *c, const void *p)
{
	uintptr_t a = (uintptr_t)p, lo = (uintptr_t)c->base;

	if (a < lo + c->heap_off || a >= lo + c->size)
		return UINT64_MAX;
	return a - lo;
}

void *ferry_ptr(const struct ferry_child *c, uint64_t off)
{
	if (off < c->heap_off || off >= c->size)
		return NULL;
	return (uint8_t *)c->base + off;
}

unsigned int ferry_window(const struct ferry_child *c)
{
	return c->window;
}

/* Attached services have no PDEATHSIG: notice the broker hanging up. */
static bool broker_gone(const struct ferry_child *c)
{
	struct pollfd p = { .fd = c->ctl, .events = POLLIN };

	return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLIN));
}

/*
 * Waiting for a call whose op took about as long before (expect_end_ns):
 * spinning first only pays for replies due within the spin.  A call
 * expected to take FERRY_EXPECT_LONG_NS or more sleeps at once; one
 * expected past the spin but sooner sleeps until shortly before it is due
 * (or until a descriptor rings the bell, whichever is first), then spins
 * through it, so its reply is caught without a wake-up (expect.h).
 */
static int predicted_wait(struct ferry_child *c, struct ferry_desc *rep, int64_t *timeout_ns,
			  bool *no_spin, uint64_t *spin_after)
{
	uint64_t until = c->expect_end_ns, expected = until - c->expect_start_ns, now, woke;
	uint64_t spin = c->ch.spin_ns, dev = c->expect_dev_ns, margin;
	int64_t pre;
	int err;

	/* spin_ns 0 asks for no spinning at all: sleep at once, once. */
	if (!until || !spin || expected <= spin)
		return -EAGAIN;
	if (expected >= FERRY_EXPECT_LONG_NS) {
		*no_spin = true;
		return -EAGAIN;
	}
	margin = ferry_expect_margin(expected, dev, c->wake_late_ns);
	now = ferry_now_ns();
	if (until < now + margin)
		return -EAGAIN;
	pre = (int64_t)(until - margin - now);
	if (*timeout_ns >= 0 && pre > *timeout_ns)
		pre = *timeout_ns;
	err = ferry_chan_recv_wait_spin(&c->ch, rep, pre, 0, NULL, NULL);
	if (err != -ETIMEDOUT)
		return err;
	woke = ferry_now_ns();
	ferry_expect_woke(&c->wake_late_ns, now + (uint64_t)pre, woke);
	/* Not where peers outnumber CPUs (pause_ns 0): the spin would take
	 * the CPU of the helper it waits for. */
	if (c->ch.pause_ns)
		*spin_after = ferry_expect_spin(expected, dev, c->wake_late_ns);
	if (*timeout_ns >= 0) {
		*timeout_ns -= (int64_t)(woke - now);
		if (*timeout_ns <= 0)
			return -ETIMEDOUT;
	}
	return -EAGAIN;
}

int ferry_child_recv(struct ferry_child *c, struct ferry_desc *rep, int64_t timeout_ns)
{
	const int64_t slice = 50 * 1000 * 1000;
	uint64_t spin = c->ch.spin_ns, spin_after = 0;
	bool no_spin = false;
	int err = predicted_wait(c, rep, &timeout_ns, &no_spin, &spin_after);

	if (err != -EAGAIN)
		return err;
	for (;;) {
		int64_t t = timeout_ns;

		if (c->attached && (t < 0 || t > slice))
			t = slice;
		/* Once: the wait the prediction set up. */
		err = ferry_chan_recv_wait_spin(&c->ch, rep, t,
						no_spin ? 0 : spin_after > spin ? spin_after : spin,
						NULL, NULL);
		spin_after = 0;
		if (err != -ETIMEDOUT || !c->attached)
			break;
		if (broker_gone(c))
			return -EPIPE;
		if (timeout_ns >= 0) {
			timeout_ns -= t;
			if (timeout_ns <= 0)
				break;
		}
	}
	return err;
}

