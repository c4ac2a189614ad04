// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A helper's end: one channel to the broker, every child region mapped
 * (told in batches by REGIONS messages on the control socket, announced in
 * order on the channel by FERRY_OP_CTRL), and the user's handler in a loop.
 * Children's memory is untrusted: requests reach tensor bytes only through
 * ferry_helper_data(), which checks bounds and the child's heap.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer.h"

static void region_drop(struct ferry_helper *h, uint32_t i)
{
	if (i < h->nregions && h->regions[i].r) {
		ferry_hgpu_unpin(h, &h->regions[i]);
		ferry_region_close(h->regions[i].r);
		memset(&h->regions[i], 0, sizeof(h->regions[i]));
	}
}

static int region_add(struct ferry_helper *h, const struct ferry_ctl_regions *m,
		      const struct ferry_ctl_region *e, int fd)
{
	struct ferry_region_ref ref = { .id = e->id, .fd = fd, .size = e->size };
	struct ferry_region *r;
	int err;

	if (e->index >= (1u << 24) || m->chan_bytes >= e->size)
		return -EPROTO;
	if (e->index >= h->nregions) {
		unsigned int n = e->index + 16;
		struct hregion *t = realloc(h->regions, n * sizeof(*t));

		if (!t)
			return -ENOMEM;
		memset(t + h->nregions, 0, (n - h->nregions) * sizeof(*t));
		h->regions = t;
		h->nregions = n;
	}
	region_drop(h, e->index);
	err = ferry_region_import(h->rc, &ref, FERRY_READ | FERRY_WRITE, &r);
	if (err)
		return err;
	h->regions[e->index] = (struct hregion){
		.r = r, .base = ferry_region_base(r), .size = ferry_region_size(r),
		.heap_off = m->chan_bytes,
	};
	ferry_hgpu_pin(h, &h->regions[e->index]);
	return 0;
}

/*
 * Apply one REGIONS message.  A region whose child died between the
 * broker's sending the ADD and this import is gone on kmod (-ENOENT), or
 * still there but revoked from us (-EACCES: the broker grants before it
 * queues an ADD and revokes only when it reclaims the slot): nothing will
 * name it, and its DROP follows.  Other errors are the broker's bug,
 * reported.
 */
static void apply_regions(struct ferry_helper *h, const struct ferry_ctl_regions *m,
			  const int *fds)
{
	for (uint32_t k = 0; k < m->count; k++) {
		const struct ferry_ctl_region *e = &m->r[k];
		int err = 0;

		if (e->op == FERRY_REGION_ADD)
			err = region_add(h, m, e, e->fd >= 0 ? fds[e->fd] : -1);
		else
			region_drop(h, e->index);
		if (err && err != -ENOENT && err != -EACCES)
			fprintf(stderr, "ferry: helper %u: region %u from message %u: %s\n",
				h->index, e->index, m->seq, strerror(-err));
	}
}

/*
 * Read the control socket: every message up to number @want (the
 * FERRY_OP_CTRL descriptor's arg[0]: written before it, so the wait is
 * short), then whatever else is there without waiting.
 */
static void read_ctl(struct ferry_helper *h, uint32_t want)
{
	for (;;) {
		bool owed = (int32_t)(want - h->ctl_seq) > 0;
		struct ferry_ctl_regions m;
		int fds[FERRY_CTL_BATCH];
		unsigned int nfds = 0;
		int err = ferry_ctl_regions_recv(h->ctl, &m, fds, &nfds, owed ? 0 : MSG_DONTWAIT);

		if (err == -EAGAIN || err == -EINTR) {
			if (owed)
				continue;
			return;
		}
		if (err == -ECONNRESET) {
			ferry_hgpu_exit(h);
			_exit(0);	/* the broker is gone */
		}
		if (!err && m.seq != h->ctl_seq + 1)
			err = -EPROTO;
		if (err) {
			/* The broker's bug: we cannot know what we missed. */
			fprintf(stderr, "ferry: helper %u: control message after %u: %s\n",
				h->index, h->ctl_seq, strerror(-err));
			for (unsigned int i = 0; i < nfds; i++)
				close(fds[i]);
			_exit(1);
		}
		apply_regions(h, &m, fds);
		for (unsigned int i = 0; i < nfds; i++)
			close(fds[i]);
		h->ctl_seq = m.seq;
	}
}

/* Send a reply; room is guaranteed by helper_depth, so wait if the broker lags. */
static void reply(struct ferry_helper *h, const struct ferry_desc *rep)
{
	while (ferry_chan_send(&h->ch, rep) == -EAGAIN)
		sched_yield();
}

/* Something besides a request needs this helper: a reply or a fence. */
static bool attention(void *arg)
{
	return ferry_hgpu_any_done(arg) || ferry_hgpu_fence_due(arg);
}

/*
 * While deferred replies are pending and the earliest has a prediction
 * (its op's stream work took about as long before): sleep until shortly
 * before it is due, unless a request, a completion or a fence comes
 * first.  Returns what the wait got (a request, -EALREADY, an error), or
 * -EAGAIN to go on with the ordinary wait, in *@spin_after how long its
 * spin should be to catch the reply without a wake-up (expect.h).  Where
 * peers outnumber CPUs (pause_ns 0) it does not spin longer than usual:
 * the CPU may be the one a child needs.
 */
static int predicted_wait(struct ferry_helper *h, struct ferry_desc *req, uint64_t *spin_after)
{
	uint64_t now = ferry_now_ns(), after = 0;
	int64_t pre = ferry_hgpu_due_in(h, now, &after);
	int err;

	if (pre < 0 || !h->ch.spin_ns)
		return -EAGAIN;	/* no prediction; spin_ns 0: sleep at once */
	if (pre > 0) {
		err = ferry_chan_recv_wait_spin(&h->ch, req, pre, 0, attention, h);
		if (err != -ETIMEDOUT)
			return err;
		ferry_expect_woke(&h->wake_late_ns, now + (uint64_t)pre, ferry_now_ns());
	}
	if (h->ch.pause_ns)
		*spin_after = after;
	return -EAGAIN;
}

/*
 * The next request; while deferred replies are pending, send each as its
 * work completes, and step the broker's stream fences.  The wait spins
 * (spin_ns), then sleeps on the ring's bell, which the stream work's host
 * functions also ring (helper_gpu.c), and the broker's kick when it asks
 * for a fence: a helper whose GPU is busy holds no CPU.  Work whose time
 * is known is awaited by predicted_wait() first, so that its reply does
 * not wait for the host function's wake-up.  Without host functions it
 * polls its events, yielding.
 */
static int next_request(struct ferry_helper *h, struct ferry_desc *req)
{
	int err;

	for (;;) {
		bool fencing = ferry_hgpu_fence(h);
		bool pending = h->ndefer && ferry_hgpu_poll(h, false);
		uint64_t spin = h->ch.spin_ns, spin_after = 0;

		if ((pending || fencing) && !h->host_wake) {
			err = ferry_chan_recv(&h->ch, req);
			if (err != -EAGAIN)
				return err;
			sched_yield();
			continue;
		}
		if (pending) {
			err = predicted_wait(h, req, &spin_after);
			if (err == -EALREADY)
				continue;
			if (err != -EAGAIN)
				return err;
		}
		/* Also the broker's kick when it asks for a fence. */
		err = ferry_chan_recv_wait_spin(&h->ch, req, -1, spin_after > spin ? spin_after : spin,
						attention, h);
		if (err != -EALREADY)
			return err;
	}
}

/*
 * Behind reqs[0], the requests already waiting in the ring, up to @nmax in
 * all (1 without a batch handler): how many there are.  A FERRY_OP_CTRL
 * marker ends the take (in *@ctrl, else its op is 0): the regions it
 * announces or drops come after these requests, so it is read after they
 * are served, as one at a time would.
 */
static unsigned int take_waiting(struct ferry_helper *h, struct ferry_desc *reqs,
				 unsigned int nmax, struct ferry_desc *ctrl)
{
	unsigned int n = 1;

	ctrl->op = 0;
	while (n < nmax && ferry_chan_recv(&h->ch, &reqs[n]) == 0) {
		if (reqs[n].op == FERRY_OP_CTRL) {
			*ctrl = reqs[n];
			break;
		}
		n++;
	}
	return n;
}

/* Send request @k's reply unless it went deferred (ferry_hgpu_poll sends it). */
static void finish(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		   const struct hreq *st)
{
	if (rep->status == FERRY_DEFERRED && st->deferred)
		return;
	/* Deferred, then answered: once only.  Gone from the table means it
	 * was sent already (a full table is drained while deferring). */
	if (st->deferred && !ferry_hgpu_undefer(h, req->tag))
		return;
	if (!st->deferred && rep->status == FERRY_DEFERRED)
		rep->status = -EPROTO;	/* promised a deferred reply, made none */
	rep->tag = req->tag;
	rep->region = req->region;
	reply(h, rep);
}

/* reqs[0, n) in hand at once, reps[] their replies: the handler's turn. */
static void hand_over(struct ferry_helper *h, const struct ferry_peer_cfg *cfg,
		      struct ferry_desc *reqs, struct ferry_desc *reps, struct hreq *st,
		      unsigned int n, bool copy)
{
	for (unsigned int k = 0; k < n; k++) {
		reps[k] = reqs[k];
		reps[k].status = 0;
		st[k] = (struct hreq){ 0 };
	}
	h->cur = reqs;
	h->cur_rep = reps;
	h->cur_st = st;
	h->ncur = n;
	if (copy)
		reps[0].status = ferry_hgpu_copy(h, &reqs[0], &reps[0]);
	else if (cfg->batch_handler)
		cfg->batch_handler(h, reqs, reps, n, cfg->helper_arg);
	else
		reps[0].status = cfg->handler(h, &reqs[0], &reps[0], cfg->helper_arg);
	h->ncur = 0;
	for (unsigned int k = 0; k < n; k++)
		finish(h, &reqs[k], &reps[k], &st[k]);
}

/*
 * Serve reqs[0, n) in ring order: the library's own copy requests one by
 * one, the runs of requests between them with the handler (one call each)
 * or the batch handler (one call per run): a copy a child queued behind a
 * request that writes its block sees what that request wrote.
 */
static void serve(struct ferry_helper *h, const struct ferry_peer_cfg *cfg,
		  struct ferry_desc *reqs, struct ferry_desc *reps, struct hreq *st, unsigned int n)
{
	unsigned int run = 0;	/* start of the run of handler requests */

	for (unsigned int k = 0; k <= n; k++) {
		bool copy = k < n && (reqs[k].op == FERRY_OP_POOL_PUT ||
				      reqs[k].op == FERRY_OP_POOL_GET);

		if (k < n && !copy)
			continue;
		if (k > run)
			hand_over(h, cfg, reqs + run, reps + run, st + run, k - run, false);
		if (copy)
			hand_over(h, cfg, reqs + k, reps + k, st + k, 1, true);
		run = k + 1;
	}
}

_Noreturn void ferry_helper_main(const struct ferry_peer_cfg *cfg, int ctl)
{
	unsigned int idx = cfg->index;
	struct ferry_helper h = { .index = idx, .ctl = ctl, .gpu = -1 };
	unsigned int nmax = cfg->batch_handler ? cfg->helper_batch : 1, n;
	struct ferry_desc *reqs = calloc(nmax, sizeof(*reqs)), *reps = calloc(nmax, sizeof(*reps));
	struct hreq *st = calloc(nmax, sizeof(*st));
	struct ferry_desc ctrl = { 0 };
	struct ferry_ctl m;
	int err, pool_fd;

	/* A handler's timed sleeps (and the helper's own) end on time, not
	 * up to 50 us late (the default slack): the child's wait predicts them. */
	prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
	if (!reqs || !reps || !st) {
		fprintf(stderr, "ferry: helper %u: no memory for %u requests\n", idx, nmax);
		_exit(126);
	}
	err = ferry_peer_setup(ctl, &m, &h.rc, &h.chanreg, &h.ch, h.efd, &pool_fd);
	if (!err) {
		uint8_t *base = ferry_region_base(h.chanreg);
		size_t size = ferry_region_size(h.chanreg);

		/* After the channel: the broker's checked copies of tensor
		 * tables, then the page about this helper's arena. */
		if (size < m.chan_bytes + ferry_arena_shm_bytes()) {
			err = -EPROTO;
		} else {
			h.tables = base + m.chan_bytes;
			h.tables_bytes = size - m.chan_bytes - ferry_arena_shm_bytes();
			h.arena_shm = (struct ferry_arena_shm *)(base + size - ferry_arena_shm_bytes());
		}
	}
	if (!err)
		err = ferry_hgpu_init(&h, cfg);
	if (!err)
		err = ferry_hgpu_pool(&h, &m, pool_fd);
	if (!err && cfg->helper_init)
		err = cfg->helper_init(&h, cfg->helper_arg);
	/* The broker's start waits for this: a first helper that cannot
	 * start makes ferry_broker_start() fail with its error. */
	ferry_ctl_send(ctl, &(struct ferry_ctl){ .type = FERRY_CTL_READY, .index = idx,
						 .status = err, .region.fd = -1 }, NULL, 0);
	if (err) {
		fprintf(stderr, "ferry: helper %u setup failed: %s\n", idx, strerror(-err));
		_exit(126);
	}
	for (;;) {
		err = next_request(&h, &reqs[0]);
		if (err == -EINTR)
			continue;
		if (err) {
			fprintf(stderr, "ferry: helper %u: channel: %s\n", idx, strerror(-err));
			_exit(1);
		}
		if (reqs[0].op == FERRY_OP_CTRL) {
			read_ctl(&h, (uint32_t)reqs[0].arg[0]);
			continue;
		}
		n = take_waiting(&h, reqs, nmax, &ctrl);
		serve(&h, cfg, reqs, reps, st, n);
		if (ctrl.op == FERRY_OP_CTRL)
			read_ctl(&h, (uint32_t)ctrl.arg[0]);
	}
}

unsigned int ferry_helper_index(const struct ferry_helper *h)
{
	return h->index;
}

unsigned int ferry_helper_waiting(const struct ferry_helper *h)
{
	uint32_t n;

	if (!h)
		return 0;
	n = ferry_chan_pending(&h->ch, FERRY_TO_PEER);
	return n > h->ch.nslots ? 0 : n;	/* corrupt: the next take says so */
}

void *ferry_helper_data(struct ferry_helper *h, const struct ferry_desc *req,
			uint64_t off, uint64_t len)
{
	const struct hregion *r;

	if (req->region >= h->nregions || !h->regions[req->region].r)
		goto bad;
	r = &h->regions[req->region];
	if (len == 0 || off < r->heap_off || off > r->size || len > r->size - off)
		goto bad;
	if (ferry_heap_check(r->base, r->size, off, len))
		goto bad;
	return r->base + off;
bad:
	h->rejected++;
	return NULL;
}

int ferry_helper_tensors(struct ferry_helper *h, const struct ferry_desc *req,
			 const struct ferry_tensor **t)
{
	if (!h || !req || !t || !(req->flags & FERRY_DESC_TENSORS) || !req->len ||
	    req->len % sizeof(struct ferry_tensor) ||
	    req->len > FERRY_TENSORS_MAX * sizeof(struct ferry_tensor) ||
	    req->offset > h->tables_bytes || req->len > h->tables_bytes - req->offset)
		return -EINVAL;
	*t = (const struct ferry_tensor *)(h->tables + req->offset);
	return (int)(req->len / sizeof(struct ferry_tensor));
}

uint64_t ferry_helper_tensor_addr(struct ferry_helper *h, const struct ferry_desc *req,
				  const struct ferry_tensor *t)
{
	if (!h || !req || !t)
		return 0;
	if (t->where == FERRY_IN_POOL) {
		int k = ferry_hcur_index(h, req);

		return k < 0 ? 0 : ferry_hpool_addr(h, k, t->offset, t->nbytes);
	}
	return (uint64_t)(uintptr_t)ferry_helper_data(h, req, t->offset, t->nbytes);
}
