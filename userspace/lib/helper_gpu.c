// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * A helper's GPU: which device it serves, its streams, the child regions
 * it registered with CUDA (pinned, so copies from a child's tensors run at
 * full DMA bandwidth instead of through the driver's staging buffers), and
 * replies deferred until a stream's work completes.
 *
 * CUDA is initialised here, in the helper, after fork: the broker never
 * touches it.  Registration happens once per region, when the broker
 * announces it (a REGIONS ADD), and is undone when the region is dropped
 * (child death or exit: the broker drops a region only after every request
 * of it came back, so no copy can still be running) and when the helper
 * exits; if the helper is killed, the driver releases what it held.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_api.h"
#include "peer.h"

int ferry_hgpu_init(struct ferry_helper *h, const struct ferry_peer_cfg *cfg)
{
	int gpu = cfg->gpu;
	struct ferry_cuda *cu;
	int err;

	h->gpu = -1;
	if (gpu < 0)
		return 0;	/* no GPU (or none wanted): a CPU helper */
	err = ferry_cuda_get(&cu);
	if (err) {
		fprintf(stderr, "ferry: helper %u: GPU %d: %s\n", h->index, gpu, ferry_cuda_why());
		return err;
	}
	h->gpu = gpu;
	err = ferry_cuda_use_device(cu, h->gpu);
	if (err) {
		fprintf(stderr, "ferry: helper %u: GPU %d: %s\n", h->index, h->gpu, strerror(-err));
		h->gpu = -1;
		return err;
	}
	h->cu = cu;
	h->nstreams = cfg->streams;
	h->ndefer_max = cfg->helper_depth;
	h->streams = calloc(h->nstreams, sizeof(*h->streams));
	h->stream_done_ns = calloc(h->nstreams, sizeof(*h->stream_done_ns));
	h->defer = calloc(h->ndefer_max, sizeof(*h->defer));
	if (!h->streams || !h->stream_done_ns || !h->defer)
		return -ENOMEM;
	for (unsigned int s = 0; s < h->nstreams; s++) {
		err = ferry_cuda_errno(cu->cuStreamCreate((CUstream *)&h->streams[s],
							  CU_STREAM_NON_BLOCKING));
		if (err)
			return err;
	}
	h->fence_ev = calloc(h->nstreams + 1, sizeof(*h->fence_ev));
	if (!h->fence_ev)
		return -ENOMEM;
	for (unsigned int s = 0; s <= h->nstreams; s++) {
		err = ferry_cuda_errno(cu->cuEventCreate((CUevent *)&h->fence_ev[s],
							 CU_EVENT_DISABLE_TIMING));
		if (err)
			return err;
	}
	/* Blocking sync: a helper that waits for a full table sleeps too. */
	for (unsigned int k = 0; k < h->ndefer_max; k++) {
		err = ferry_cuda_errno(cu->cuEventCreate((CUevent *)&h->defer[k].event,
							 CU_EVENT_DISABLE_TIMING |
							 CU_EVENT_BLOCKING_SYNC));
		if (err)
			return err;
	}
	h->host_wake = !getenv("FERRY_HELPER_POLL") || !*getenv("FERRY_HELPER_POLL") ||
		       !strcmp(getenv("FERRY_HELPER_POLL"), "0");
	return 0;
}

/* A CUDA host function, on the driver's thread once a deferred reply's
 * work is done: wake the helper if it sleeps (it sends the reply). */
static void CUDA_CB wake_helper(void *arg)
{
	struct ferry_helper *h = arg;

	ferry_chan_wake_self(&h->ch);
}

/*
 * When @d's work began, as far as the helper can tell: when it was
 * deferred, or when the work before it on the same stream was seen done
 * (a stream runs its work in turn), so that queueing is not learned as
 * the work's own time.
 */
static uint64_t defer_started(const struct ferry_helper *h, const struct hdefer *d)
{
	uint64_t done = d->stream >= 0 ? h->stream_done_ns[d->stream] : 0;

	return done > d->t0_ns ? done : d->t0_ns;
}

int64_t ferry_hgpu_due_in(struct ferry_helper *h, uint64_t now, uint64_t *spin)
{
	uint64_t first = UINT64_MAX;

	for (unsigned int k = 0; k < h->ndefer; k++) {
		const struct hdefer *d = &h->defer[k];
		const struct ferry_expect *e = &h->expect[d->op % FERRY_EXPECT_OPS];
		uint64_t at;

		/* Unknown, or long enough that the host function's wake-up is noise. */
		if (e->op != d->op || !e->ewma_ns || e->ewma_ns >= FERRY_EXPECT_LONG_NS)
			continue;
		at = defer_started(h, d) + e->ewma_ns -
		     ferry_expect_margin(e->ewma_ns, e->dev_ns, h->wake_late_ns);
		if (at < first) {
			first = at;
			*spin = ferry_expect_spin(e->ewma_ns, e->dev_ns, h->wake_late_ns);
		}
	}
	if (first == UINT64_MAX)
		return -1;
	return first > now ? (int64_t)(first - now) : 0;
}

bool ferry_hgpu_any_done(struct ferry_helper *h)
{
	for (unsigned int k = 0; k < h->ndefer; k++)
		if (h->cu->cuEventQuery((CUevent)h->defer[k].event) != CUDA_ERROR_NOT_READY)
			return true;
	return false;
}

/*
 * The broker holds pool blocks children freed until this helper says no
 * work it had queued by then still runs (broker_pool.c, quarantine): an
 * event on each of its streams and on the legacy default stream (which
 * orders after every blocking stream, where torch's default work goes),
 * and fence_done once all have completed.  Work on other non-blocking
 * streams is the handler's to defer its reply on.
 */
static CUstream fence_stream(const struct ferry_helper *h, unsigned int s)
{
	return s < h->nstreams ? (CUstream)h->streams[s] : CU_STREAM_LEGACY;
}

/* Tell the broker: nothing queued before its ask for @epoch still runs. */
static void fence_said(struct ferry_arena_shm *shm, uint64_t epoch)
{
	atomic_store_explicit((_Atomic uint64_t *)&shm->fence_done, epoch, memory_order_release);
}

bool ferry_hgpu_fence_due(struct ferry_helper *h)
{
	struct ferry_arena_shm *shm = h->arena_shm;

	if (h->gpu < 0 || !shm || !h->fence_ev)
		return false;
	if (h->fence_pending) {
		for (unsigned int s = 0; s <= h->nstreams; s++)
			if (h->cu->cuEventQuery((CUevent)h->fence_ev[s]) == CUDA_ERROR_NOT_READY)
				return false;
		return true;
	}
	return atomic_load_explicit((_Atomic uint64_t *)&shm->fence_want, memory_order_acquire) >
	       shm->fence_done;
}

bool ferry_hgpu_fence(struct ferry_helper *h)
{
	struct ferry_arena_shm *shm = h->arena_shm;
	uint64_t want;
	bool queued = false;

	if (!ferry_hgpu_fence_due(h))
		return h->fence_pending != 0;
	if (h->fence_pending) {
		fence_said(shm, h->fence_pending);
		h->fence_pending = 0;
	}
	want = atomic_load_explicit((_Atomic uint64_t *)&shm->fence_want, memory_order_acquire);
	if (want <= shm->fence_done)
		return false;
	for (unsigned int s = 0; s <= h->nstreams; s++) {
		CUevent ev = (CUevent)h->fence_ev[s];
		CUstream st = fence_stream(h, s);

		if (h->cu->cuEventRecord(ev, st)) {
			/* Cannot fence by events: wait for the whole context. */
			h->cu->cuCtxSynchronize();
			fence_said(shm, want);
			return false;
		}
		if (h->cu->cuEventQuery(ev) == CUDA_ERROR_NOT_READY) {
			queued = true;
			if (h->host_wake)
				h->cu->cuLaunchHostFunc(st, wake_helper, h);
		}
	}
	if (!queued) {
		/* Every stream was idle: nothing of before still runs. */
		fence_said(shm, want);
		return false;
	}
	h->fence_pending = want;
	return true;
}

void ferry_hgpu_pin(struct ferry_helper *h, struct hregion *r)
{
	int err;

	if (h->gpu < 0)
		return;
	err = ferry_cuda_errno(h->cu->cuMemHostRegister(r->base, r->size,
							CU_MEMHOSTREGISTER_PORTABLE));
	if (err) {
		/* Copies still work, through the driver's staging: say so once. */
		if (!h->pin_failed++)
			fprintf(stderr, "ferry: helper %u: cannot pin a child region (%s); "
				"copies from it will be pageable\n", h->index, strerror(-err));
		return;
	}
	r->pinned = true;
	h->npinned++;
}

void ferry_hgpu_unpin(struct ferry_helper *h, struct hregion *r)
{
	if (!r->pinned)
		return;
	h->cu->cuMemHostUnregister(r->base);
	r->pinned = false;
	h->npinned--;
}

void ferry_hgpu_exit(struct ferry_helper *h)
{
	for (unsigned int i = 0; i < h->nregions; i++)
		if (h->regions[i].r)
			ferry_hgpu_unpin(h, &h->regions[i]);
}

/*
 * Completed deferred replies, oldest first, go to the broker.  @wait: block
 * for the oldest (the table is full).  Returns how many are still pending.
 */
unsigned int ferry_hgpu_poll(struct ferry_helper *h, bool wait)
{
	unsigned int k = 0;
	uint64_t now = 0;

	while (k < h->ndefer) {
		struct hdefer *d = &h->defer[k];
		CUresult r = wait && k == 0 ? h->cu->cuEventSynchronize((CUevent)d->event) :
					      h->cu->cuEventQuery((CUevent)d->event);

		if (r == CUDA_ERROR_NOT_READY) {
			k++;
			continue;
		}
		if (r != CUDA_SUCCESS && !d->rep.status)
			d->rep.status = ferry_cuda_errno(r);
		/* Seen late (after a sleep) it teaches little: expect.h weighs it so. */
		if (!now)
			now = ferry_now_ns();
		uint64_t began = defer_started(h, d);

		if (r == CUDA_SUCCESS && now > began)
			ferry_expect_learn(&h->expect[d->op % FERRY_EXPECT_OPS], d->op, now - began);
		if (d->stream >= 0)
			h->stream_done_ns[d->stream] = now;
		/* Room is guaranteed by helper_depth; wait if the broker lags. */
		while (ferry_chan_send(&h->ch, &d->rep) == -EAGAIN)
			sched_yield();
		/* Keep the table dense; the event moves with the slot it swaps to. */
		h->ndefer--;
		if (k != h->ndefer) {
			struct hdefer t = *d;

			*d = h->defer[h->ndefer];
			h->defer[h->ndefer] = t;
		}
	}
	return h->ndefer;
}

bool ferry_hgpu_undefer(struct ferry_helper *h, uint64_t tag)
{
	for (unsigned int k = h->ndefer; k-- > 0;) {
		if (h->defer[k].rep.tag != tag)
			continue;
		/* Dense as ferry_hgpu_poll() keeps it; the event moves along. */
		struct hdefer t = h->defer[k];

		h->ndefer--;
		h->defer[k] = h->defer[h->ndefer];
		h->defer[h->ndefer] = t;
		return true;
	}
	return false;
}

int ferry_hgpu_pool(struct ferry_helper *h, const struct ferry_ctl *m, int pool_fd)
{
	struct ferry_ctl out = { .type = FERRY_CTL_POOL, .index = h->index };
	struct ferry_pool_ref ref;
	int err;

	if (m->pool_op == FERRY_POOL_OP_IMPORT) {
		ref = m->pool;
		ref.fd = pool_fd;
		err = ferry_pool_import(&ref, &h->pool);
		if (pool_fd >= 0)
			close(pool_fd);
		return err;
	}
	if (m->pool_op != FERRY_POOL_OP_CREATE)
		return 0;
	/* Made on this helper's GPU, exported once; the broker keeps the fd. */
	err = h->gpu == m->pool.device ? 0 : -ENODEV;
	if (!err)
		err = ferry_pool_create(FERRY_POOL_CUDA, h->gpu, m->pool.size, &h->pool);
	if (!err)
		err = ferry_pool_export(h->pool, &out.pool);
	if (err) {
		out.status = err;
		out.pool.fd = -1;
		ferry_ctl_send(h->ctl, &out, NULL, 0);	/* so the broker need not wait */
		return err;
	}
	pool_fd = out.pool.fd;
	out.pool.fd = pool_fd >= 0 ? 1 : -1;
	err = ferry_ctl_send(h->ctl, &out, &pool_fd, pool_fd >= 0 ? 1 : 0);
	if (pool_fd >= 0)
		close(pool_fd);
	return err;
}

/* [off, off + len) inside [at, at + n)? */
static bool inside(uint64_t off, uint64_t len, uint64_t at, uint64_t n)
{
	return off >= at && off - at <= n && len <= n - (off - at);
}

/*
 * Whether request @k of those being handled names [off, off + len) of the
 * pool in a place the broker checked against its sender's blocks: its own
 * range (FERRY_DESC_POOL), the block of a copy request, a pool entry of
 * its tensor table; or in a block this helper made for it.  arg[] is
 * never one: an offset a child put there may be anybody's.
 */
static bool request_names(struct ferry_helper *h, unsigned int k, uint64_t off, uint64_t len)
{
	const struct ferry_desc *q = &h->cur[k];
	const struct hreq *st = &h->cur_st[k];
	const struct ferry_tensor *t;
	int n;

	if ((q->flags & FERRY_DESC_POOL) && inside(off, len, q->offset, q->len))
		return true;
	if ((q->op == FERRY_OP_POOL_PUT || q->op == FERRY_OP_POOL_GET) &&
	    inside(off, len, q->arg[0], q->len))
		return true;
	n = (q->flags & FERRY_DESC_TENSORS) ? ferry_helper_tensors(h, q, &t) : 0;
	for (int e = 0; e < n; e++)
		if (t[e].where == FERRY_IN_POOL && inside(off, len, t[e].offset, t[e].nbytes))
			return true;
	for (unsigned int g = 0; g < st->ngrant; g++)
		if (inside(off, len, st->grant_off[g], st->grant_len[g]))
			return true;
	return false;
}

/* The pool's [off, off + len) where request @k in hand names it. */
uint64_t ferry_hpool_addr(struct ferry_helper *h, int k, uint64_t off, uint64_t len)
{
	bool named = false;

	if (h && h->pool && len && k >= 0 && (unsigned int)k < h->ncur)
		named = request_names(h, (unsigned int)k, off, len);
	if (named)
		return ferry_pool_addr(h->pool, off, len);
	if (h)
		h->rejected++;
	return 0;
}

/* In a batch there is no telling whose offset it is: nothing (see ferry.h). */
uint64_t ferry_helper_pool_addr(struct ferry_helper *h, uint64_t off, uint64_t len)
{
	if (h && h->ncur != 1) {
		h->rejected++;
		return 0;
	}
	return ferry_hpool_addr(h, 0, off, len);
}

uint64_t ferry_helper_req_pool_addr(struct ferry_helper *h, const struct ferry_desc *req,
				    uint64_t off, uint64_t len)
{
	int k = h && req ? ferry_hcur_index(h, req) : -1;

	if (k < 0) {
		if (h)
			h->rejected++;
		return 0;
	}
	return ferry_hpool_addr(h, k, off, len);
}

int ferry_helper_gpu(const struct ferry_helper *h)
{
	return h ? h->gpu : -1;
}

void *ferry_helper_stream(struct ferry_helper *h)
{
	if (!h || h->gpu < 0)
		return NULL;
	return h->streams[h->next_stream++ % h->nstreams];
}

/* Which request in hand @rep replies to (a handler's may be a copy; a
 * batch's must be one of rep[]), or -1, also when deferred already. */
static int reply_index(const struct ferry_helper *h, const struct ferry_desc *rep)
{
	int k = h->ncur == 1 ? 0 : -1;

	for (unsigned int i = 0; k < 0 && i < h->ncur; i++)
		if (rep == &h->cur_rep[i])
			k = (int)i;
	return k >= 0 && !h->cur_st[k].deferred ? k : -1;
}

/* Request @k's reply @rep, pending behind an event on @stream. */
static int defer_one(struct ferry_helper *h, int k, const struct ferry_desc *rep, void *stream)
{
	const struct ferry_desc *q = &h->cur[k];
	struct hdefer *d;
	int err;

	if (h->ndefer == h->ndefer_max)
		ferry_hgpu_poll(h, true);
	d = &h->defer[h->ndefer];
	err = ferry_cuda_errno(h->cu->cuEventRecord((CUevent)d->event, (CUstream)stream));
	if (err)
		return err;
	d->rep = *rep;
	d->t0_ns = ferry_now_ns();
	d->op = q->op;
	d->stream = -1;
	for (unsigned int s = 0; s < h->nstreams; s++)
		if (h->streams[s] == stream)
			d->stream = (int)s;
	d->rep.tag = q->tag;	/* the broker's, whatever the handler did */
	d->rep.region = q->region;
	d->rep.status = 0;
	h->ndefer++;
	h->cur_st[k].deferred = true;
	return 0;
}

/* After the events in stream order: they have completed when this runs. */
static void wake_after(struct ferry_helper *h, void *stream)
{
	if (h->host_wake && h->cu->cuLaunchHostFunc((CUstream)stream, wake_helper, h)) {
		fprintf(stderr, "ferry: helper %u: no CUDA host functions; polling its "
			"streams instead of sleeping\n", h->index);
		h->host_wake = false;
	}
}

int ferry_helper_defer(struct ferry_helper *h, const struct ferry_desc *rep, void *stream)
{
	int k, err;

	if (!h || !rep)
		return -EINVAL;
	if (h->gpu < 0)
		return -ENODEV;
	k = reply_index(h, rep);
	if (k < 0)
		return -EINVAL;	/* outside a handler, or twice for one request */
	err = defer_one(h, k, rep, stream);
	if (!err)
		wake_after(h, stream);
	return err;
}

int ferry_helper_defer_all(struct ferry_helper *h, struct ferry_desc *const *rep, unsigned int n,
			   void *stream)
{
	unsigned int done = 0;
	int err = 0;

	if (!h || !rep || !n || n > h->ncur)
		return -EINVAL;
	if (h->gpu < 0)
		return -ENODEV;
	for (unsigned int i = 0; i < n; i++) {
		if (!rep[i] || reply_index(h, rep[i]) < 0)
			return -EINVAL;
		for (unsigned int j = 0; j < i; j++)
			if (rep[j] == rep[i])
				return -EINVAL;	/* the same reply twice */
	}
	for (; done < n && !err; done++)
		err = defer_one(h, reply_index(h, rep[done]), rep[done], stream);
	/* One wake-up for all: their events complete together. */
	if (done > (err ? 1u : 0u))
		wake_after(h, stream);
	return err;
}
bool ferry_helper_pinned(const struct ferry_helper *h, const struct ferry_desc *req)
{
	return h && req && req->region < h->nregions && h->regions[req->region].r &&
	       h->regions[req->region].pinned;
}

unsigned int ferry_helper_pinned_count(const struct ferry_helper *h)
{
	return h ? h->npinned : 0;
}

int ferry_hgpu_copy(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep)
{
	bool put = req->op == FERRY_OP_POOL_PUT;
	uint8_t *host = ferry_helper_data(h, req, req->offset, req->len);
	uint64_t dev = ferry_helper_pool_addr(h, req->arg[0], req->len);
	void *stream;
	int err;

	if (!host || !dev)
		return -EFAULT;
	if (ferry_pool_kind(h->pool) == FERRY_POOL_CPU) {
		if (put)
			memcpy((void *)(uintptr_t)dev, host, req->len);
		else
			memcpy(host, (const void *)(uintptr_t)dev, req->len);
		return 0;
	}
	/* From the child's region, pinned where CUDA could register it. */
	stream = ferry_helper_stream(h);
	err = ferry_cuda_errno(put ?
		h->cu->cuMemcpyHtoDAsync((CUdeviceptr)dev, host, req->len, (CUstream)stream) :
		h->cu->cuMemcpyDtoHAsync(host, (CUdeviceptr)dev, req->len, (CUstream)stream));
	if (!err)
		err = ferry_helper_defer(h, rep, stream);
	return err ? err : FERRY_DEFERRED;
}
