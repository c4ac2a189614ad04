// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The broker's dispatch thread.  One loop, one place it sleeps:
 *
 *   replies:  helper rings -> children (tag mapped back);
 *   requests: ready children, round-robin, a window of requests per child per turn,
 *             to the next helper with room (helper_depth); a request waits
 *             in its child's ring while no helper has room, so queueing
 *             costs nothing and order within a child is FIFO;
 *   deaths:   pidfds (and attached connections) in the same io_uring as
 *             the doorbells.
 *
 * Work per message is O(1): fired doorbells put a child on the ready list,
 * a child whose ring ran dry goes on the arm list, and only those get their
 * waits armed before a sleep; slots come off a free stack.  Only the spin
 * phase looks at every ring, and only while idle.
 *
 * An alive child is always in one of these states, so none is forgotten:
 * ready (on the ready list), armed (its bell is in the io_uring), parked
 * (window full: slot_done() settles it when a reply frees room), or on the
 * arm list.
 */
#include <errno.h>
#include <stddef.h>
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "broker_internal.h"

#define NONE UINT32_MAX

/* Descriptors waiting from child @i; a corrupt ring counts as none. */
static uint32_t child_pending(struct ferry_broker *b, uint32_t i)
{
	uint32_t n = ferry_chan_pending(&b->child[i].chan.ch, FERRY_TO_BROKER);

	return n > b->nslots_child ? 0 : n;
}

static void ready_push(struct ferry_broker *b, uint32_t i)
{
	struct bchild *c = &b->child[i];

	if (c->ready || !c->alive || c->corrupt)
		return;
	c->ready = true;
	c->next_ready = NONE;
	b->nready++;
	if (b->ready_tail == NONE)
		b->ready_head = i;
	else
		b->child[b->ready_tail].next_ready = i;
	b->ready_tail = i;
}

/* Needs its waits (bell, pidfd, connection) armed before the next sleep. */
static void arm_push(struct ferry_broker *b, uint32_t i)
{
	struct bchild *c = &b->child[i];

	if (c->on_arm)
		return;
	c->on_arm = true;
	b->arm[b->narm++] = i;	/* at most one entry per child: it fits */
}

/* Take @i off the arm list (deaths only, so O(n) is fine). */
static void arm_remove(struct ferry_broker *b, uint32_t i)
{
	for (unsigned int k = 0; k < b->narm; k++) {
		if (b->arm[k] == i) {
			b->arm[k] = b->arm[--b->narm];
			break;
		}
	}
	b->child[i].on_arm = false;
}

/* Where child @i goes after it was looked at and is not on the ready list. */
static void settle(struct ferry_broker *b, uint32_t i)
{
	struct bchild *c = &b->child[i];

	if (!c->alive || c->corrupt || c->ready)
		return;
	if (c->in_flight >= b->o.window)
		return;			/* parked: slot_done() settles it */
	if (child_pending(b, i))
		ready_push(b, i);
	else if (!c->chan.bell_armed)
		arm_push(b, i);
}

static uint32_t ready_pop(struct ferry_broker *b)
{
	uint32_t i = b->ready_head;

	if (i == NONE)
		return NONE;
	b->ready_head = b->child[i].next_ready;
	if (b->ready_head == NONE)
		b->ready_tail = NONE;
	b->child[i].ready = false;
	b->nready--;
	return i;
}

/* Reply to child @i (if it can still hear it). */
static void to_child(struct ferry_broker *b, uint32_t i, struct ferry_desc *d)
{
	struct bchild *c = &b->child[i];

	if (!c->alive) {
		b->st.dropped++;
		return;
	}
	uint64_t rung = c->chan.ch.wakes;

	if (ferry_chan_send(&c->chan.ch, d) < 0) {
		/* A child with more outstanding than its ring: its own fault. */
		b->st.dropped++;
		return;
	}
	b->st.replies++;
	b->st.bells += c->chan.ch.wakes - rung;
}

static void fail_back(struct ferry_broker *b, uint32_t i, uint32_t op, uint64_t tag, int err)
{
	struct ferry_desc d = { .op = op, .tag = tag, .region = i, .status = err };

	b->st.failed_back++;
	to_child(b, i, &d);
}

/*
 * Now, to within a turn of the loop (a turn takes microseconds): what
 * stamps requests, learns from replies and tracks gaps reads the clock
 * once per turn, not once per descriptor.
 */
static uint64_t turn_now(struct ferry_broker *b)
{
	if (!b->turn_ns)
		b->turn_ns = ferry_now_ns();
	return b->turn_ns;
}

/*
 * When the helper began the request in @sl, as far as the broker can
 * tell: when it was sent, or when the helper's reply before it came if
 * it was queued behind others (a CPU helper answers its queue in turn; a
 * GPU helper's deferred replies come in the order their streams finish,
 * so for it the queue is part of the time learned).
 */
static uint64_t started(const struct ferry_broker *b, const struct bslot *sl)
{
	uint64_t last = b->helper[sl->helper].last_reply_ns;

	if (b->ngpus && ferry_helper_gpu_of(b, sl->helper) >= 0)
		return sl->sent_ns;
	return last > sl->sent_ns ? last : sl->sent_ns;
}

/*
 * The sleeping dispatch's prediction (see ferry_broker.svc): a reply
 * sooner than expected pulls the estimate down fast, a later one pushes
 * it up slowly, as the children do (expect.h).
 */
static void svc_learn(struct ferry_broker *b, uint32_t op, uint64_t ns)
{
	ferry_expect_learn(&b->svc[op % FERRY_EXPECT_OPS], op, ns);
}

/*
 * The first reply of a request at a helper whose op has a history: when
 * it is due less the margin (expect.h), and in *@spin the spin through
 * it; UINT64_MAX when none has one.  *@unknown: some request has none
 * (its op is new, or it was sent before the history).  Ops that take
 * @min_ns or less do not count (a spin catches them); those that take
 * FERRY_EXPECT_LONG_NS or more count as due that long after they were
 * sent, with no spin: their replies are far, and the bell wakes the loop.
 * Nor do requests already later than their prediction and its spin (at
 * @now): waiting for them is the bell's, not a poll's.
 */
static uint64_t svc_first(struct ferry_broker *b, uint64_t min_ns, uint64_t now, uint64_t *spin,
			  bool *unknown)
{
	uint64_t best = UINT64_MAX;

	*spin = 0;
	*unknown = false;
	for (uint32_t s = 0; s < b->nslot; s++) {
		const struct bslot *sl = &b->slot[s];
		const struct ferry_expect *e = &b->svc[sl->op % FERRY_EXPECT_OPS];
		uint64_t at, sp = 0;

		if (!sl->used)
			continue;
		if (!sl->sent_ns || e->op != sl->op || !e->ewma_ns) {
			*unknown = true;
			continue;
		}
		if (e->ewma_ns <= min_ns)
			continue;
		if (e->ewma_ns >= FERRY_EXPECT_LONG_NS) {
			at = started(b, sl) + FERRY_EXPECT_LONG_NS;
		} else {
			at = started(b, sl) + e->ewma_ns -
			     ferry_expect_margin(e->ewma_ns, e->dev_ns, b->wake_late_ns);
			sp = ferry_expect_spin(e->ewma_ns, e->dev_ns, b->wake_late_ns);
		}
		/* Later than predicted, spin included (which starts when the
		 * timed sleep ends, late_ns after it was due): the bell's. */
		if (at + b->wake_late_ns + sp + FERRY_EXPECT_MARGIN_NS < now)
			continue;
		if (at < best) {
			best = at;
			*spin = sp;
		}
	}
	return best;
}

/* Polling for replies ends this long after the last descriptor moved. */
#define FERRY_AWAIT_MAX_NS	1000000ull
/* A predicted reply sooner than this is polled for, not slept for. */
#define FERRY_AWAIT_NEAR_NS	(2 * FERRY_EXPECT_MARGIN_NS)

/* Await mode: gaps between requests up to this long are spun through. */
#define FERRY_AWAIT_GAP_MAX_NS	100000ull

/*
 * Await mode, nothing at a helper: how long to look for the next request
 * before sleeping.  Twice the gaps seen lately, and the margin, when
 * they are short (a child woken by its reply sends again within
 * microseconds, and catching that costs less CPU than its wake-up of the
 * dispatch thread would), nothing when they are not.
 */
static uint64_t gap_spin(const struct ferry_broker *b)
{
	uint64_t g = b->gap.ewma_ns, s;

	if (!b->await || !g || g > FERRY_AWAIT_GAP_MAX_NS)
		return 0;
	s = 2 * g + FERRY_EXPECT_MARGIN_NS;
	return s < FERRY_AWAIT_GAP_MAX_NS ? s : FERRY_AWAIT_GAP_MAX_NS;
}

/* Await mode: learn the gap that ends now, or note that one begins. */
static void gap_track(struct ferry_broker *b, bool moved)
{
	if (moved) {
		uint64_t now = turn_now(b);

		if (b->quiet_ns) {
			uint64_t g = now - b->quiet_ns;

			/* An idle spell says only "long": not how long to unlearn. */
			if (g > 2 * FERRY_AWAIT_GAP_MAX_NS)
				g = 2 * FERRY_AWAIT_GAP_MAX_NS;
			ferry_expect_learn(&b->gap, 0, g);
			b->quiet_ns = 0;
		}
		b->moved_ns = now;
	} else if (!b->quiet_ns && !b->st.in_flight) {
		b->quiet_ns = b->moved_ns;
	}
}

/*
 * Await mode (b->await): poll rather than sleep now?  While requests are
 * at helpers, something moved within FERRY_AWAIT_MAX_NS, and their first
 * reply is near or some reply has no prediction.  A reply predicted
 * further off is slept for (svc_due), a long one waits for its bell.
 */
static bool awaiting(struct ferry_broker *b, uint64_t now)
{
	uint64_t spin, first;
	bool unknown;

	if (!b->await || !b->st.in_flight || now - b->moved_ns >= FERRY_AWAIT_MAX_NS)
		return false;
	first = svc_first(b, 0, now, &spin, &unknown);
	return unknown || first < now + FERRY_AWAIT_NEAR_NS;
}

/*
 * Nanoseconds the loop may sleep before the first reply of a request at
 * a helper is due (less the margin), -1 when no prediction applies, 0
 * when one is due now (spin instead); sets spin_after_ns for the spin
 * that follows (expect.h).  Only requests whose op has a history shorter
 * than FERRY_EXPECT_LONG_NS count; in await mode also where peers
 * outnumber CPUs and with spin_ns 0 (the loop would poll otherwise).
 */
static int64_t svc_due(struct ferry_broker *b)
{
	uint64_t now, best, best_spin;
	bool unknown;

	/* Not where peers outnumber CPUs: the spin would take a helper's CPU. */
	if (b->poll || !b->st.in_flight || (!b->await && (b->oversub || !b->o.spin_ns)))
		return -1;
	now = ferry_now_ns();
	best = svc_first(b, b->await ? 0 : b->o.spin_ns, now, &best_spin, &unknown);
	if (best == UINT64_MAX || !best_spin)
		return -1;
	b->spin_after_ns = best_spin;
	return best > now ? (int64_t)(best - now) : 0;
}

/* After a predicted sleep: how late it ended, for the next one. */
static void svc_woke(struct ferry_broker *b)
{
	if (!b->predicted_ns)
		return;
	ferry_expect_woke(&b->wake_late_ns, b->predicted_ns, ferry_now_ns());
	b->predicted_ns = 0;
}

static void slot_done(struct ferry_broker *b, uint32_t s)
{
	struct bslot *sl = &b->slot[s];
	struct bchild *c = &b->child[sl->child];

	if (sl->block != UINT64_MAX)
		ferry_bpool_release(b, sl->child, sl->block);
	ferry_btensors_release(b, s);
	if (sl->ngrant)
		ferry_bpool_grants_settle(b, sl->helper, sl->child, sl, false);
	sl->used = false;
	sl->gen++;
	b->slot_free[b->nslot_free++] = s;
	b->helper[sl->helper].in_flight--;
	c->in_flight--;
	b->st.in_flight--;
	if (!c->alive && c->used && c->in_flight == 0)
		ferry_child_reclaim(b, sl->child);
	else
		settle(b, sl->child);	/* maybe held back by its window */
}

/* Drain helper @h's replies. */
static bool drain_helper(struct ferry_broker *b, uint32_t h)
{
	struct bhelper *hp = &b->helper[h];
	struct ferry_desc d;
	bool any = false, learned = false;
	uint64_t now = 0;

	while (hp->alive && !hp->corrupt) {
		int err = ferry_chan_recv(&hp->chan.ch, &d);

		if (err == -EAGAIN)
			break;
		if (err) {
			/* Our own helper broke its ring: restart it. */
			b->st.bad_reply++;
			hp->corrupt = true;
			ferry_pidfd_kill(hp->pidfd, SIGKILL);
			break;
		}
		uint32_t s = (uint32_t)(d.tag & 0xffffffffu);
		uint16_t gen = (uint16_t)(d.tag >> 32);
		struct bslot *sl = s < b->nslot ? &b->slot[s] : NULL;

		any = true;
		hp->ready = true;	/* it answers: its init went through */
		if (!sl || !sl->used || sl->gen != gen || sl->helper != h) {
			b->st.bad_reply++;
			continue;
		}
		if (d.op == FERRY_OP_POOL_GRANT) {
			/* A block it made for this request's child: held for the reply. */
			if (sl->ngrant < FERRY_HELPER_ALLOCS_MAX &&
			    ferry_bpool_grant_ok(b, h, d.offset, d.len)) {
				sl->grant[sl->ngrant].off = d.offset;
				sl->grant[sl->ngrant++].size = d.len;
			} else {
				b->st.bad_reply++;
			}
			continue;
		}
		ferry_bpool_grants_settle(b, h, sl->child, sl, d.status == 0);
		/*
		 * Only the first reply of a pass teaches: the others came
		 * before it was read, at times nobody saw (they would teach
		 * about 0 ns).
		 */
		if (!b->poll && sl->sent_ns && !learned) {
			now = turn_now(b);
			svc_learn(b, sl->op, now - started(b, sl));
			learned = true;
		}
		d.tag = sl->child_tag;
		d.region = sl->child;
		d.op = sl->op;
		hp->served++;
		b->served[h]++;
		to_child(b, sl->child, &d);
		slot_done(b, s);
	}
	if (learned)
		hp->last_reply_ns = now;
	return any;
}

/*
 * The next helper with room, round robin; on a host with several GPUs only
 * among the helpers of GPU @gpu (a child's requests go to the GPU next to
 * its region, whose pool its offsets name).  -1 if none has room.
 */
static int32_t pick_helper(struct ferry_broker *b, int gpu)
{
	for (unsigned int n = 0; n < b->o.helpers; n++) {
		uint32_t h = (b->rr_helper + n) % b->o.helpers;
		struct bhelper *hp = &b->helper[h];

		if (b->ngpus > 1 && ferry_helper_gpu_of(b, h) != gpu)
			continue;
		if (hp->alive && hp->in_flight < b->o.helper_depth &&
		    (!ferry_helper_ctl_owes(hp) || ferry_helper_ctl_flush(b, h))) {
			b->rr_helper = (h + 1) % b->o.helpers;
			return (int32_t)h;
		}
	}
	return -1;
}

static uint32_t free_slot(struct ferry_broker *b)
{
	return b->nslot_free ? b->slot_free[--b->nslot_free] : NONE;
}

static void child_died(struct ferry_broker *b, uint32_t i);

/*
 * A child's turn takes up to its whole window (at most this many requests).
 * Round robin stays fair; a child's requests then go out (and come back)
 * together, so a child that sleeps is woken once for a window of replies
 * instead of once for each.  Measured on the 16-core host with 32 children
 * x 4 helpers, window 8: one request per turn woke a child for 0.3 of the
 * replies (about 1M round trips/s), a whole window per turn for almost
 * none (about 3M/s).
 */
#ifndef DISPATCH_QUANTUM_MAX
#define DISPATCH_QUANTUM_MAX 16
#endif

/*
 * Every range @d names is the sender's: (offset, len) in its heap, or
 * (FERRY_DESC_POOL) in one of its pool blocks, which then stays held
 * until the reply (*block); a PUT/GET names both, its heap range and, at
 * arg[0], as many bytes of one of its blocks.  Users' ops stay below the
 * internal ones.  0, or -EINVAL with nothing held.
 */
static int check_ranges(struct ferry_broker *b, uint32_t i, const struct ferry_desc *d,
			uint64_t *block)
{
	bool copy = d->op == FERRY_OP_POOL_PUT || d->op == FERRY_OP_POOL_GET;

	*block = UINT64_MAX;
	if ((d->flags & ~(FERRY_DESC_POOL | FERRY_DESC_TENSORS)) ||
	    d->flags == (FERRY_DESC_POOL | FERRY_DESC_TENSORS))
		return -EINVAL;
	if (copy) {
		if (d->flags || !d->len || !ferry_child_heap_has(b, i, d->offset, d->len))
			return -EINVAL;
		return ferry_bpool_hold(b, i, d->arg[0], d->len, block) ? -EINVAL : 0;
	}
	if (d->op >= FERRY_OP_FIRST_INTERNAL)
		return -EINVAL;
	if (d->flags & FERRY_DESC_TENSORS)
		return 0;	/* the table: ferry_btensors_take() */
	if (d->flags & FERRY_DESC_POOL)
		return ferry_bpool_hold(b, i, d->offset, d->len, block) ? -EINVAL : 0;
	return ferry_child_heap_has(b, i, d->offset, d->len) ? 0 : -EINVAL;
}

/*
 * Take one request from child @i and hand it to helper @h.  1 if a request
 * was taken (dispatched or failed back), 0 if the ring is empty, -1 if the
 * child broke its ring (it is being killed).
 */
static int dispatch_one(struct ferry_broker *b, uint32_t i, int32_t h)
{
	struct bchild *c = &b->child[i];
	struct ferry_desc d;
	uint64_t rung, block;
	uint32_t s;

	switch (ferry_chan_recv(&c->chan.ch, &d)) {
	case 0:
		break;
	case -EAGAIN:
		return 0;
	default:
		/* It scribbled over its ring's indices: it goes. */
		b->st.bad_desc++;
		c->corrupt = true;
		if (c->attached)
			child_died(b, i);
		else
			ferry_pidfd_kill(c->pidfd, SIGKILL);
		return -1;
	}
	if (d.op == FERRY_OP_POOL_ALLOC || d.op == FERRY_OP_POOL_FREE) {
		/* The broker owns the pool's offsets: answered here (or,
		 * for an ALLOC waiting for room, when room comes). */
		if (ferry_bpool_request(b, i, &d))
			to_child(b, i, &d);
		return 1;
	}
	if (check_ranges(b, i, &d, &block)) {
		b->st.bad_desc++;
		fail_back(b, i, d.op, d.tag, -EINVAL);
		return 1;
	}
	s = free_slot(b);	/* there is one: in_flight < depth */
	b->slot[s] = (struct bslot){
		.used = true, .gen = b->slot[s].gen, .child = i,
		.helper = (uint32_t)h, .op = d.op, .child_tag = d.tag, .block = block,
		.sent_ns = b->o.helper_timeout_ns || !b->poll ? turn_now(b) : 0, .table = -1,
	};
	if ((d.flags & FERRY_DESC_TENSORS) && ferry_btensors_take(b, i, (uint32_t)h, s, &d)) {
		b->slot[s].used = false;
		b->slot_free[b->nslot_free++] = s;
		b->st.bad_desc++;
		fail_back(b, i, d.op, d.tag, -EINVAL);
		return 1;
	}
	d.region = i;
	d.tag = ((uint64_t)b->slot[s].gen << 32) | s;
	ferry_bpool_arena_flush(b, (unsigned int)h);	/* before it may allocate */
	rung = b->helper[h].chan.ch.wakes;
	if (ferry_chan_send(&b->helper[h].chan.ch, &d) < 0) {
		b->slot[s].used = false;
		b->slot_free[b->nslot_free++] = s;
		if (block != UINT64_MAX)
			ferry_bpool_release(b, i, block);
		ferry_btensors_release(b, s);
		fail_back(b, i, d.op, b->slot[s].child_tag, -EAGAIN);
		return 1;
	}
	b->st.bells += b->helper[h].chan.ch.wakes - rung;
	b->helper[h].in_flight++;
	c->in_flight++;
	b->st.requests++;
	b->st.in_flight++;
	return 1;
}

/*
 * Hand ready children's requests to helpers while both exist.  With one
 * group of helpers, stop at the first child no helper has room for; with
 * a group per GPU, such a child goes to the back of the list and the loop
 * stops once every ready child was looked at without one moving.
 */
static bool dispatch(struct ferry_broker *b)
{
	unsigned int quantum = b->o.window < DISPATCH_QUANTUM_MAX ? b->o.window :
				DISPATCH_QUANTUM_MAX;
	unsigned int misses = 0;
	bool any = false;

	while (b->ready_head != NONE && misses <= b->nready) {
		int gpu = b->ngpus > 1 ? (int)ferry_bpool_of_child(b, b->ready_head) : -1;
		int32_t h = pick_helper(b, gpu);
		uint32_t i;
		int r = 0;

		if (h < 0) {
			if (b->ngpus <= 1)
				break;
			i = ready_pop(b);
			ready_push(b, i);
			misses++;
			continue;
		}
		misses = 0;
		i = ready_pop(b);
		for (unsigned int q = 0; q < quantum; q++) {
			if (q && (h = pick_helper(b, gpu)) < 0)
				break;
			if (!b->child[i].alive || b->child[i].in_flight >= b->o.window)
				break;	/* parked: back on the list when a reply frees room */
			r = dispatch_one(b, i, h);
			if (r <= 0)
				break;
			any = true;
		}
		if (r >= 0)
			settle(b, i);
	}
	return any;
}

/* Copy the counters for other threads to read; caller holds b->lock. */
static void snapshot_locked(struct ferry_broker *b)
{
	b->snap = b->st;
	memcpy(b->served_snap, b->served, b->o.helpers * sizeof(*b->served));
}

/*
 * Refresh the readers' snapshot if counters moved: before each sleep, and
 * at most once a millisecond while busy.  (The CPU time is read by the
 * readers themselves, from this thread's clock.)  Counting what waits in
 * the ready children's rings touches one ring per child, so while busy
 * that count is refreshed only every 100 ms: per request, the broker's
 * cost must not grow with the number of children.
 */
static void publish(struct ferry_broker *b, bool sleeping)
{
	uint64_t queued = 0, now = ferry_now_ns();

	if (!sleeping && now - b->snap_ns < 1000000)
		return;
	b->snap_ns = now;
	if (sleeping || now - b->queued_ns >= 100000000) {
		b->queued_ns = now;
		for (uint32_t i = b->ready_head; i != NONE; i = b->child[i].next_ready)
			queued += child_pending(b, i);
		b->st.queued = queued;
	}
	/* Only this thread writes snap: reading it unlocked here is fine. */
	if (memcmp(&b->snap, &b->st, offsetof(struct ferry_broker_stats, wakeups)) == 0)
		return;
	pthread_mutex_lock(&b->lock);
	snapshot_locked(b);
	pthread_mutex_unlock(&b->lock);
}

/* Take @i off the ready list (rare: deaths only, so O(n) is fine). */
static void ready_remove(struct ferry_broker *b, uint32_t i)
{
	uint32_t head = b->ready_head;

	b->ready_head = b->ready_tail = NONE;
	b->nready = 0;
	for (uint32_t j = head, next; j != NONE; j = next) {
		next = b->child[j].next_ready;
		b->child[j].ready = false;
		if (j != i)
			ready_push(b, j);
	}
	b->child[i].ready = false;
}

static void child_died(struct ferry_broker *b, uint32_t i)
{
	struct bchild *c = &b->child[i];
	int status = 0;

	if (!c->alive)
		return;
	ready_remove(b, i);
	arm_remove(b, i);
	c->alive = false;
	b->st.child_exits++;
	b->st.dropped += child_pending(b, i);
	if (!c->attached) {
		status = ferry_spawner_wait(b, i);
		if (WIFSIGNALED(status))
			b->st.child_deaths++;
		pthread_mutex_lock(&b->lock);
		b->exited++;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			b->failed++;
		/* Whoever ferry_broker_wait() wakes sees counters up to here. */
		snapshot_locked(b);
		pthread_cond_broadcast(&b->cond);
		pthread_mutex_unlock(&b->lock);
	}
	if (c->in_flight == 0)
		ferry_child_reclaim(b, i);
	/* else: reclaimed by slot_done() when its last request comes back */
}

static void helper_died(struct ferry_broker *b, uint32_t h)
{
	struct bhelper *hp = &b->helper[h];

	if (!hp->alive)
		return;
	hp->alive = false;
	b->st.helper_deaths++;
	while (waitpid(hp->pid, NULL, 0) < 0 && errno == EINTR)
		;
	/* Everything it held fails back: a clear error, never a hang. */
	for (uint32_t s = 0; s < b->nslot; s++) {
		struct bslot *sl = &b->slot[s];

		if (sl->used && sl->helper == h) {
			fail_back(b, sl->child, sl->op, sl->child_tag,
				  hp->timed_out ? -ETIMEDOUT : -EPIPE);
			slot_done(b, s);
		}
	}
	if (hp->chan.bell_armed)
		ferry_waitset_disarm(b->ws, KEY(KEY_HELPER_BELL, h));
	if (hp->pidfd_armed)
		ferry_waitset_disarm(b->ws, KEY(KEY_HELPER_PIDFD, h));
	ferry_helper_ctl_reset(b, h);
	ferry_bpool_helper_gone(b, h);
	/* Did this incarnation finish its init?  Only then restart at once. */
	if (hp->ready || ferry_helper_said_ready(hp->ctl))
		hp->quick_deaths = 0;
	else
		hp->quick_deaths++;
	close(hp->pidfd);
	close(hp->ctl);
	hp->pidfd = hp->ctl = -1;
	ferry_bchan_destroy(&hp->chan);
	ferry_helper_restart(b, h);
}

/*
 * Announce sleep on @bc's to-broker bell and arm it under @key.  False
 * when descriptors arrived meanwhile or the wait could not be armed: then
 * the caller must not sleep on it.
 */
static bool arm_bell(struct ferry_broker *b, struct bchan *bc, uint32_t key)
{
	uint32_t seq;
	int err;

	if (!ferry_chan_prepare_sleep(&bc->ch, &seq))
		return false;
	if (b->mode == FERRY_BELL_FUTEX)
		err = ferry_waitset_arm_futex(b->ws, key,
					      ferry_chan_bell_word(&bc->ch, FERRY_TO_BROKER), seq);
	else
		err = ferry_waitset_arm_eventfd(b->ws, key, bc->efd[FERRY_TO_BROKER]);
	if (err) {
		ferry_chan_end_sleep(&bc->ch);
		return false;
	}
	bc->bell_armed = true;
	return true;
}

/*
 * Arm what the arm list names, and the helpers' waits; false if something
 * arrived meanwhile or could not be armed (then do not sleep).  Cost: the
 * children that changed state since the last sleep, not all of them.
 */
static bool arm_all(struct ferry_broker *b, bool bells)
{
	unsigned int n = b->narm;
	bool quiet = true;

	/* Re-pushes land at or below the entry being read: safe in place. */
	b->narm = 0;
	for (unsigned int k = 0; k < n; k++) {
		uint32_t i = b->arm[k];
		struct bchild *c = &b->child[i];

		c->on_arm = false;
		if (!c->used || !c->alive)
			continue;
		if (!c->attached && !c->pidfd_armed) {
			if (ferry_waitset_arm_poll(b->ws, KEY(KEY_CHILD_PIDFD, i), c->pidfd)) {
				arm_push(b, i);
				quiet = false;
				continue;
			}
			c->pidfd_armed = true;
		}
		if (c->attached && !c->conn_armed) {
			if (ferry_waitset_arm_poll(b->ws, KEY(KEY_CHILD_CONN, i), c->ctl)) {
				arm_push(b, i);
				quiet = false;
				continue;
			}
			c->conn_armed = true;
		}
		/* Full window: slot_done() settles it when a reply frees room. */
		if (c->chan.bell_armed || c->ready || c->corrupt || c->in_flight >= b->o.window)
			continue;
		/* Polling: no bell (its sends make no system call); spin() looks. */
		if (!bells) {
			arm_push(b, i);
			continue;
		}
		if (!arm_bell(b, &c->chan, KEY(KEY_CHILD_BELL, i))) {
			ready_push(b, i);
			quiet = false;
		}
	}
	for (uint32_t h = 0; h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];

		if (!hp->alive)
			continue;
		if (!hp->pidfd_armed &&
		    ferry_waitset_arm_poll(b->ws, KEY(KEY_HELPER_PIDFD, h), hp->pidfd) == 0)
			hp->pidfd_armed = true;
		if (hp->chan.bell_armed || hp->corrupt || !bells)
			continue;
		if (!arm_bell(b, &hp->chan, KEY(KEY_HELPER_BELL, h)))
			quiet = false;
	}
	return quiet;
}

/* One pass over replies and requests; true if anything moved. */
static bool service(struct ferry_broker *b)
{
	bool any = false;

	for (uint32_t h = 0; h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];

		any |= drain_helper(b, h);
		/* Announcements first: requests wait for them. */
		if (hp->alive && ferry_helper_ctl_owes(hp))
			ferry_helper_ctl_flush(b, h);
	}
	any |= dispatch(b);
	return any;
}

/*
 * Idle: look for work for up to spin_ns before sleeping.  Spin with pause
 * for a few µs first, then yield between looks.  On an oversubscribed
 * machine, pause only while replies are due (a helper on another CPU
 * answers within µs) and yield at once otherwise: the child that is to
 * send the next request may be waiting for this very CPU.
 *
 * A look costs the helpers plus the children that changed state since the
 * last sleep (the arm list), not every child: a child whose bell is armed
 * rings it when it sends, and that shows in the completion ring; a parked
 * one (window full) comes back through slot_done().
 */
static bool spin(struct ferry_broker *b)
{
	uint64_t start = ferry_now_ns(), now, end, pause_ns;
	uint64_t idle = b->st.in_flight ? 0 : gap_spin(b);
	bool aw = awaiting(b, start);

	if (!b->o.spin_ns && !b->poll && !aw && !idle && !b->spin_after_ns)
		return false;
	pause_ns = !b->oversub ? FERRY_CHAN_PAUSE_NS_DEFAULT : b->st.in_flight ? 3000 : 0;
	/* Polling: a millisecond at a time, with pause only (its own CPU). */
	if (b->poll)
		pause_ns = UINT64_MAX;
	end = start + (b->poll ? 1000000 : b->o.spin_ns);
	/* Awaiting replies: until one comes, or nothing moved for the limit;
	 * idle: through the gap a request is expected in. */
	if (aw && b->moved_ns + FERRY_AWAIT_MAX_NS > end)
		end = b->moved_ns + FERRY_AWAIT_MAX_NS;
	if (idle && b->moved_ns + idle > end)
		end = b->moved_ns + idle;
	if (b->spin_after_ns && !b->poll) {
		/* Through the reply a predicted sleep woke up for. */
		if (start + b->spin_after_ns > end)
			end = start + b->spin_after_ns;
		b->spin_after_ns = 0;
	}
	do {
		for (uint32_t h = 0; h < b->o.helpers; h++)
			if (b->helper[h].alive && !b->helper[h].corrupt &&
			    ferry_chan_pending(&b->helper[h].chan.ch, FERRY_TO_BROKER))
				return true;
		if (ferry_waitset_fired(b->ws))
			return true;
		for (unsigned int k = 0; k < b->narm; k++) {
			uint32_t i = b->arm[k];
			struct bchild *c = &b->child[i];

			if (c->alive && !c->ready && c->in_flight < b->o.window &&
			    child_pending(b, i)) {
				ready_push(b, i);
				return true;
			}
		}
		/* Past pause_ns, let peers on the same cores run. */
		now = ferry_now_ns();
		if (now - start >= pause_ns)
			sched_yield();
		else
			__builtin_ia32_pause();
	} while (now < end);
	return false;
}

static void flush_wakes(struct ferry_broker *b);

/*
 * The watchdog (opts.helper_timeout_ns): kill a helper that has held a
 * request longer than the timeout; its death fails what it held back with
 * -ETIMEDOUT and restarts it.  Looks every eighth of the timeout (at most
 * every millisecond); returns how long the loop may sleep before the
 * next look, or -1 when nothing is in flight.
 */
static int64_t watchdog(struct ferry_broker *b)
{
	uint64_t limit = b->o.helper_timeout_ns, every = limit / 8, now;

	if (!limit || !b->st.in_flight)
		return -1;
	if (every < 1000000)
		every = 1000000;
	now = ferry_now_ns();
	if (now - b->watch_ns >= every) {
		b->watch_ns = now;
		for (uint32_t s = 0; s < b->nslot; s++) {
			struct bslot *sl = &b->slot[s];
			struct bhelper *hp = &b->helper[sl->helper];

			if (!sl->used || now - sl->sent_ns <= limit || !hp->alive ||
			    hp->timed_out)
				continue;
			fprintf(stderr, "ferry: helper %u held a request %llu ms: killed as hung\n",
				sl->helper, (unsigned long long)((now - sl->sent_ns) / 1000000));
			hp->timed_out = true;
			b->st.helper_timeouts++;
			ferry_pidfd_kill(hp->pidfd, SIGKILL);
		}
	}
	return (int64_t)every;
}

void *ferry_dispatch_main(void *arg)
{
	struct ferry_broker *b = arg;
	uint32_t keys[256];
	bool stop = false;

	if (b->dispatch_cpu >= 0) {
		cpu_set_t one;

		CPU_ZERO(&one);
		CPU_SET(b->dispatch_cpu, &one);
		pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
	}
	/* Its predicted sleeps (svc_due) end when a reply is due, not up to
	 * 50 us later (the default timer slack of a thread). */
	prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
	ferry_waitset_arm_eventfd(b->ws, KEY(KEY_STOP, 0), b->stop_efd);
	if (b->listen_fd >= 0)
		ferry_waitset_arm_poll(b->ws, KEY(KEY_LISTEN, 0), b->listen_fd);
	if (b->stats_fd >= 0)
		ferry_waitset_arm_poll(b->ws, KEY(KEY_STATS, 0), b->stats_fd);
	/* Everything starts ready (requests may already be waiting) and
	 * needs its pidfd watched. */
	for (uint32_t i = 0; i < b->nslots_total; i++)
		if (b->child[i].used && b->child[i].alive)
			ferry_dispatch_adopt(b, i);

	unsigned int busy = 0;

	while (!stop) {
		int64_t timeout = -1, due;
		bool moved;

		b->turn_ns = 0;
		moved = service(b);
		int n;

		flush_wakes(b);
		/*
		 * While requests flow, stay off system calls: deaths, attaches
		 * and stop are looked at every 64 busy turns, not every turn.
		 */
		if (b->await)
			gap_track(b, moved);
		if (moved && ++busy < 64)
			continue;
		busy = 0;
		/* Before arming: a helper restarted now gets its pidfd armed. */
		due = b->restarts_pending ? ferry_helper_restart_due(b) : -1;
		if (moved || spin(b)) {
			timeout = 0;	/* still poll for deaths, don't sleep */
		} else {
			bool aw = awaiting(b, ferry_now_ns());

			if (!arm_all(b, !b->poll && !aw) || b->poll || aw)
				timeout = 0;
		}
		if (due >= 0 && (timeout < 0 || due < timeout))
			timeout = due;
		due = watchdog(b);
		if (due >= 0 && (timeout < 0 || due < timeout))
			timeout = due;
		due = ferry_helper_ctl_due(b);
		if (due >= 0 && (timeout < 0 || due < timeout))
			timeout = due;
		due = ferry_bpool_due(b);
		if (due >= 0 && (timeout < 0 || due < timeout))
			timeout = due;
		if (timeout != 0 && (due = svc_due(b)) >= 0 && (timeout < 0 || due <= timeout)) {
			/* Wake shortly before the first reply is due and spin. */
			timeout = due;
			b->predicted_ns = ferry_now_ns() + (uint64_t)due;
		} else {
			b->spin_after_ns = 0;
		}
		publish(b, timeout != 0);
		n = ferry_waitset_wait(b->ws, keys, sizeof(keys) / sizeof(keys[0]), timeout);
		if (n < 0 && n != -EINTR)
			break;
		if (b->predicted_ns) {
			if (n == 0)
				svc_woke(b);	/* the timer, not a bell: keep its spin */
			else
				b->predicted_ns = b->spin_after_ns = 0;
		}
		if (n > 0)
			b->st.wakeups++;
		for (int k = 0; k < n; k++) {
			uint32_t idx = KEY_INDEX(keys[k]);

			switch (KEY_KIND(keys[k])) {
			case KEY_CHILD_BELL:
				b->child[idx].chan.bell_armed = false;
				if (b->child[idx].used) {
					ferry_chan_end_sleep(&b->child[idx].chan.ch);
					ready_push(b, idx);
				}
				break;
			case KEY_HELPER_BELL:
				b->helper[idx].chan.bell_armed = false;
				if (b->helper[idx].alive)
					ferry_chan_end_sleep(&b->helper[idx].chan.ch);
				break;
			case KEY_CHILD_PIDFD:
				b->child[idx].pidfd_armed = false;
				child_died(b, idx);
				break;
			case KEY_CHILD_CONN:
				b->child[idx].conn_armed = false;
				child_died(b, idx);
				break;
			case KEY_HELPER_CTL:
				ferry_helper_ctl_writable(b, idx);
				break;
			case KEY_HELPER_PIDFD:
				b->helper[idx].pidfd_armed = false;
				helper_died(b, idx);
				break;
			case KEY_LISTEN:
				ferry_attach_accept(b);
				ferry_waitset_arm_poll(b->ws, KEY(KEY_LISTEN, 0), b->listen_fd);
				break;
			case KEY_STATS:
				ferry_stats_serve(b);
				ferry_waitset_arm_poll(b->ws, KEY(KEY_STATS, 0), b->stats_fd);
				break;
			case KEY_STOP:
				stop = true;
				break;
			}
		}
	}
	{
		struct timespec ts;

		publish(b, true);
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
		pthread_mutex_lock(&b->lock);
		b->st.dispatch_cpu_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
		snapshot_locked(b);
		b->thread_done = true;
		pthread_mutex_unlock(&b->lock);
	}
	return NULL;
}

int ferry_dispatch_queue_wake(void *broker, _Atomic uint32_t *word, int n)
{
	struct ferry_broker *b = broker;
	int err = ferry_waitset_wake_futex(b->ws, word, n);

	if (!err)
		b->wakes_queued = true;
	return err;
}

/* Send the wakes a pass queued: one system call for all of them. */
static void flush_wakes(struct ferry_broker *b)
{
	if (b->wakes_queued) {
		b->wakes_queued = false;
		ferry_waitset_flush(b->ws);
	}
}

void ferry_dispatch_reply(struct ferry_broker *b, uint32_t i, struct ferry_desc *d)
{
	to_child(b, i, d);
}

void ferry_dispatch_adopt(struct ferry_broker *b, uint32_t i)
{
	ready_push(b, i);
	arm_push(b, i);
}
