/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The non-broker ends: children, attached services, helpers. */
#ifndef FERRY_PEER_H
#define FERRY_PEER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "expect.h"
#include "chan.h"
#include "ferry.h"
#include "internal.h"
#include "proto.h"

/*
 * All a forked peer takes from the broker, filled before the fork: the
 * peer's code (helper.c, helper_gpu.c, child.c) never sees struct
 * ferry_broker.  Everything else comes over its control socket.
 */
struct ferry_peer_cfg {
	unsigned int index;		/* helper, or child slot */
	/* a helper's */
	ferry_handler_fn handler;
	ferry_batch_fn batch_handler;	/* or this, with up to helper_batch */
	unsigned int helper_batch;
	ferry_helper_init_fn helper_init;
	void *helper_arg;
	int gpu;			/* the GPU it serves; -1: a CPU helper */
	unsigned int streams;		/* CUDA streams it makes */
	unsigned int helper_depth;	/* requests it may hold at once */
	/* a child's */
	ferry_child_fn child_fn;
	void *child_arg;
};

/* Bodies of forked peers (helper.c, child.c); they never return. */
_Noreturn void ferry_helper_main(const struct ferry_peer_cfg *cfg, int ctl);
_Noreturn void ferry_child_main(const struct ferry_peer_cfg *cfg, int ctl);

struct ferry_child {
	unsigned int index;
	bool attached;
	int ctl;			/* control socket to the broker */
	struct ferry_rctx *rc;
	struct ferry_region *region;	/* [channel | heap] */
	void *base;
	size_t size;
	uint64_t heap_off;
	struct ferry_chan ch;
	int efd[2];
	unsigned int window;
	pthread_mutex_t heap_lock;
	pthread_cond_t heap_freed;	/* CLOCK_MONOTONIC: ferry_malloc_timeout */
	/*
	 * Requests and replies (child_calls.c), shared by the threads of a
	 * service: everything below is under io_lock; one thread at a time
	 * (@receiving) reads the channel and hands each reply to whoever
	 * waits for it.
	 */
	pthread_mutex_t io_lock;
	pthread_cond_t io_cond;
	bool receiving;
	unsigned int outstanding;	/* sent, reply not yet taken or dropped */
	/* the broker's pool (child_pool.c): described at setup, imported on use */
	struct ferry_pool_ref pool_ref;	/* kind 0: none */
	bool pool_mappable;		/* FERRY_CHILDREN_MAP_POOL: it may import it */
	int pool_fd;
	struct ferry_pool *pool;
	uint64_t internal_seq;
	/* replies to ferry_submit()ed requests, for ferry_complete(): FIFO */
	struct ferry_desc *stash;
	unsigned int nstash;
	/* tags of calls that timed out (ferry_call_timeout): their replies,
	 * when they come, are dropped; each holds a place in the window */
	uint64_t *late;
	unsigned int nlate;
	/*
	 * How long calls of each op took (child_calls.c), so a wait can sleep
	 * until shortly before the reply is due instead of spinning first
	 * (child.c): EWMA per op, by op % FERRY_EXPECT_OPS, with the EWMA of
	 * how far calls strayed from it; the end the call being waited for is
	 * expected at (0: none) and its spread.  wake_late_ns: how late this
	 * child's timed sleeps ended (a CPU in a deep idle state wakes tens
	 * of microseconds after its timer), so the next one starts earlier.
	 */
	struct ferry_expect expect[FERRY_EXPECT_OPS];
	_Atomic uint64_t expect_start_ns, expect_end_ns, expect_dev_ns;	/* read by the receiver */
	uint64_t wake_late_ns;
	/* calls waiting for their reply, by internal tag (window at most) */
	struct ferry_waiter { uint64_t tag; bool used, done; struct ferry_desc rep; } *waiter;
	unsigned int nwaiters;		/* used entries */
	struct ferry_child_fd *pfd;	/* child_fd.c: made by ferry_child_fd() */
};

/* child.c: the next reply from the broker (no bookkeeping). */
int ferry_child_recv(struct ferry_child *c, struct ferry_desc *rep, int64_t timeout_ns);
/*
 * child_calls.c: send @d under an internal tag and wait for its reply,
 * into @d: 0 (the reply's status is in d->status) or -errno.
 */
int ferry_child_call_internal(struct ferry_child *c, struct ferry_desc *d, int64_t timeout_ns);
/*
 * child_fd.c, called under io_lock by a thread that is about to receive
 * and may sleep on the bell (yield: the fd gives its wait on the bell up)
 * and after any receive (received: the fd is told when it waits without
 * the bell).  ferry_child_fd_free(): from ferry_child_fini().
 */
void ferry_child_fd_yield(struct ferry_child *c);
void ferry_child_fd_received(struct ferry_child *c);
void ferry_child_fd_free(struct ferry_child *c);

struct hregion {
	struct ferry_region *r;
	uint8_t *base;
	size_t size;
	uint64_t heap_off;
	bool pinned;			/* registered with CUDA */
};

/* A reply waiting for the work queued on a stream (an event) to finish. */
/* A request in hand: what its handler made of it. */
struct hreq {
	bool deferred;			/* its reply was deferred */
	unsigned int ngrant;		/* pool blocks made for it */
	uint64_t grant_off[FERRY_HELPER_ALLOCS_MAX], grant_len[FERRY_HELPER_ALLOCS_MAX];
};

struct hdefer {
	void *event;			/* CUevent, made once */
	struct ferry_desc rep;
	uint64_t t0_ns;			/* when it was deferred */
	uint32_t op;			/* the request's, for the prediction */
	int stream;			/* index in streams[], -1: another stream */
};

struct ferry_helper {
	unsigned int index;
	int ctl;
	struct ferry_rctx *rc;
	struct ferry_region *chanreg;
	struct ferry_chan ch;
	int efd[2];
	struct hregion *regions;
	unsigned int nregions;
	uint32_t ctl_seq;		/* REGIONS messages applied */
	const uint8_t *tables;		/* checked tensor tables, written by the broker */
	size_t tables_bytes;
	uint64_t rejected;		/* ferry_helper_data() refusals */
	/* The requests being handled, [0, ncur): one for a handler, a batch
	 * for a batch handler; their replies and what was made of each. */
	const struct ferry_desc *cur;
	struct ferry_desc *cur_rep;
	struct hreq *cur_st;
	unsigned int ncur;
	/* GPU (helper_gpu.c); gpu < 0: none */
	int gpu;
	struct ferry_cuda *cu;
	void **streams;			/* CUstreams */
	unsigned int nstreams, next_stream;
	struct hdefer *defer;		/* [0, ndefer) pending, oldest first */
	unsigned int ndefer, ndefer_max;
	/* Each deferred reply's stream work ends with a host function that
	 * wakes this helper's ring wait: false if they cannot be launched
	 * (or $FERRY_HELPER_POLL is set), and the helper polls instead. */
	bool host_wake;
	/* How long each op's stream work took, and how late this helper's
	 * timed sleeps end (expect.h): it sleeps until a reply is due and
	 * catches it spinning, the host function being the backstop. */
	struct ferry_expect expect[FERRY_EXPECT_OPS];
	uint64_t wake_late_ns;
	/* Per stream of streams[]: when its last deferred work was seen
	 * done (work queued behind it started no sooner). */
	uint64_t *stream_done_ns;
	/*
	 * Stream fences the broker asks for (struct ferry_arena_shm): one
	 * event per stream and one for the legacy default stream; the epoch
	 * being fenced (0: none).
	 */
	void **fence_ev;
	uint64_t fence_pending;
	unsigned int npinned, pin_failed;
	struct ferry_pool *pool;	/* the broker's pool of this helper's GPU */
	/* its arena of the pool (helper_pool.c): NULL until first used */
	struct ferry_arena_shm *arena_shm;	/* the broker's page about it */
	struct ferry_palloc *arena;
	uint64_t arena_off, arena_size;
};

/* Which of the requests being handled @req is (a pointer the handler was
 * given), or -1. */
static inline int ferry_hcur_index(const struct ferry_helper *h, const struct ferry_desc *req)
{
	for (unsigned int k = 0; k < h->ncur; k++)
		if (req == &h->cur[k])
			return (int)k;
	return -1;
}

/* helper_gpu.c */
int ferry_hgpu_init(struct ferry_helper *h, const struct ferry_peer_cfg *cfg);
void ferry_hgpu_pin(struct ferry_helper *h, struct hregion *r);
void ferry_hgpu_unpin(struct ferry_helper *h, struct hregion *r);
void ferry_hgpu_exit(struct ferry_helper *h);
unsigned int ferry_hgpu_poll(struct ferry_helper *h, bool wait);
/* Forget the deferred reply of the request tagged @tag (answered at once
 * after all): its stream work still runs, its reply is not sent.  false
 * when it is not pending: sent already. */
bool ferry_hgpu_undefer(struct ferry_helper *h, uint64_t tag);
/* The pool's [off, off + len) where request @k in hand names it. */
uint64_t ferry_hpool_addr(struct ferry_helper *h, int k, uint64_t off, uint64_t len);
/*
 * ns until the earliest pending deferred reply is worth looking for (its
 * op's learned time, less the margin), and in *@spin how long to spin for
 * it then; -1 when none has a prediction short enough to wait for so.
 */
int64_t ferry_hgpu_due_in(struct ferry_helper *h, uint64_t now, uint64_t *spin);
/* Whether some deferred reply's work has completed (poll would send it). */
bool ferry_hgpu_any_done(struct ferry_helper *h);
/* Step the broker's stream fence: true while one is pending. */
bool ferry_hgpu_fence(struct ferry_helper *h);
/* Whether the fence needs a step (asked for, or its events done). */
bool ferry_hgpu_fence_due(struct ferry_helper *h);
/* FERRY_OP_POOL_PUT / _GET, as a handler would: 0, FERRY_DEFERRED, -errno. */
int ferry_hgpu_copy(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep);
/* Import the pool SETUP described, or make it and send it to the broker. */
int ferry_hgpu_pool(struct ferry_helper *h, const struct ferry_ctl *m, int pool_fd);

/*
 * Receive and apply a SETUP message on @ctl: open the backend it names,
 * map the region, attach the channel.  Fills *@region, *@ch, @efd, and
 * *@pool_fd with the pool's fd when one came (m->pool says what it is).
 */
int ferry_peer_setup(int ctl, struct ferry_ctl *m, struct ferry_rctx **rc,
		     struct ferry_region **region, struct ferry_chan *ch, int efd[2],
		     int *pool_fd);

#endif /* FERRY_PEER_H */
