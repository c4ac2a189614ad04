// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * What the broker tells its helpers about child regions, and how it gets
 * there without ever blocking the broker.
 *
 * Each helper has an outbox of region operations (map child slot i, unmap
 * it).  Queueing one costs an append; the dispatch loop flushes outboxes
 * in FERRY_CTL_REGIONS messages of up to FERRY_CTL_BATCH entries (their
 * memfds attached), sent with MSG_DONTWAIT.  A full socket arms a POLLOUT
 * wait in the dispatch thread's io_uring and the flush resumes when it
 * fires; nothing else waits on a helper.  After each flush one
 * FERRY_OP_CTRL descriptor on the helper's channel carries the number of
 * messages written so far: the helper reads its socket up to there before
 * the request that follows, so a request never outruns its region.  No
 * request goes to a helper while its outbox is not empty.
 *
 * Before (protocol 2) every region was one blocking send, and a helper
 * read its socket only on a marker the dispatch thread sent once it ran:
 * start-up at 279 children filled the socket and hung.
 *
 * An ADD names a slot, not a region: at flush time the slot's current
 * region is sent, and a slot freed meanwhile is skipped (its DROP, queued
 * after, follows).  The grant is made when the ADD is queued.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "broker_internal.h"

/* A helper that leaves its socket full this long is hung: killed
 * (opts.helper_timeout_ns instead, when set and the helper is known to
 * be past its init). */
#define CTL_STUCK_NS	30000000000ull
/* After ETOOMANYREFS (too many fds in flight for this user) or a POLLOUT
 * that could not be armed: try again this much later. */
#define CTL_RETRY_NS	1000000ull

#define OP_ADD 1u

static void kill_stuck(struct ferry_broker *b, unsigned int h, const char *why)
{
	struct bhelper *hp = &b->helper[h];

	if (why)
		fprintf(stderr, "ferry: helper %u %s: killed\n", h, why);
	hp->ctl_stuck = true;
	hp->nout = hp->outhead = 0;
	ferry_pidfd_kill(hp->pidfd, SIGKILL);	/* its pidfd fires: restart */
}

int ferry_helper_ctl_queue(struct ferry_broker *b, unsigned int h, unsigned int ci, bool add)
{
	struct bhelper *hp = &b->helper[h];

	if (!hp->alive || hp->ctl_stuck)
		return 0;	/* dying: its restart queues every region again */
	if (add && ferry_region_grant(b->child[ci].chan.region, hp->pidfd,
				      FERRY_READ | FERRY_WRITE | FERRY_PIN))
		return 0;	/* the helper is dying (its pidfd says so soon) */
	if (hp->nout == hp->capout) {
		unsigned int cap = hp->capout ? 2 * hp->capout : 64;
		uint32_t *t;

		/* Compact what was sent before growing. */
		if (hp->outhead) {
			memmove(hp->outbox, hp->outbox + hp->outhead,
				(hp->nout - hp->outhead) * sizeof(*hp->outbox));
			hp->nout -= hp->outhead;
			hp->outhead = 0;
		}
		if (hp->nout == hp->capout) {
			t = realloc(hp->outbox, cap * sizeof(*t));
			if (!t) {
				kill_stuck(b, h, "could not be told of a region (out of memory)");
				return -ENOMEM;
			}
			hp->outbox = t;
			hp->capout = cap;
		}
	}
	hp->outbox[hp->nout++] = (uint32_t)ci << 1 | (add ? OP_ADD : 0);
	return 0;
}

/* The next message from the outbox into @m/@fds; entries it covers are
 * counted in *used (stale ADDs included). */
static void build_batch(struct ferry_broker *b, struct bhelper *hp, struct ferry_ctl_regions *m,
			int *fds, unsigned int *nfds, unsigned int *used)
{
	unsigned int k = hp->outhead;

	memset(m, 0, sizeof(*m));
	m->backend = ferry_rctx_backend(b->rc);
	m->chan_bytes = b->chan_bytes_child;
	*nfds = 0;
	for (; k < hp->nout && m->count < FERRY_CTL_BATCH; k++) {
		uint32_t op = hp->outbox[k], ci = op >> 1;
		struct ferry_ctl_region *e = &m->r[m->count];
		struct bchild *c = &b->child[ci];

		e->index = ci;
		e->fd = -1;
		if (op & OP_ADD) {
			struct ferry_region_ref ref;

			if (!c->used || !c->chan.region)
				continue;	/* freed since: its DROP follows */
			ferry_region_ref(c->chan.region, &ref);
			e->op = FERRY_REGION_ADD;
			e->id = ref.id;
			e->size = ref.size;
			if (ref.fd >= 0) {
				fds[*nfds] = ref.fd;
				e->fd = (int16_t)(*nfds)++;
			}
		} else {
			e->op = FERRY_REGION_DROP;
		}
		m->count++;
	}
	*used = k - hp->outhead;
}

bool ferry_helper_ctl_flush(struct ferry_broker *b, unsigned int h)
{
	struct bhelper *hp = &b->helper[h];

	if (!hp->alive || hp->ctl_stuck)
		return false;
	while (hp->outhead < hp->nout && !hp->ctl_poll_armed && !hp->ctl_retry_ns) {
		struct ferry_ctl_regions m;
		int fds[FERRY_CTL_BATCH], err;
		unsigned int nfds, used;

		build_batch(b, hp, &m, fds, &nfds, &used);
		if (m.count) {
			m.seq = hp->ctl_sent + 1;
			err = ferry_ctl_regions_send(hp->ctl, &m, fds, nfds, MSG_DONTWAIT);
			if (err == -EAGAIN) {
				if (!hp->ctl_blocked_ns)
					hp->ctl_blocked_ns = ferry_now_ns();
				if (ferry_waitset_arm_poll_out(b->ws, KEY(KEY_HELPER_CTL, h), hp->ctl))
					hp->ctl_retry_ns = ferry_now_ns() + CTL_RETRY_NS;
				else
					hp->ctl_poll_armed = true;
				break;
			}
			if (err == -ETOOMANYREFS) {
				if (!hp->ctl_blocked_ns)
					hp->ctl_blocked_ns = ferry_now_ns();
				hp->ctl_retry_ns = ferry_now_ns() + CTL_RETRY_NS;
				break;
			}
			if (err) {
				/* -EPIPE and the like: it is dying; its restart re-adds. */
				kill_stuck(b, h, NULL);
				return false;
			}
			hp->ctl_sent++;
			hp->ctl_blocked_ns = 0;
		}
		hp->outhead += used;
	}
	if (hp->outhead == hp->nout)
		hp->outhead = hp->nout = 0;
	if (hp->ctl_marked != hp->ctl_sent) {
		struct ferry_desc d = { .op = FERRY_OP_CTRL, .arg = { hp->ctl_sent } };

		if (ferry_chan_send(&hp->chan.ch, &d) == 0)
			hp->ctl_marked = hp->ctl_sent;
	}
	return !ferry_helper_ctl_owes(hp);
}

void ferry_helper_ctl_writable(struct ferry_broker *b, unsigned int h)
{
	b->helper[h].ctl_poll_armed = false;
	ferry_helper_ctl_flush(b, h);
}

int64_t ferry_helper_ctl_due(struct ferry_broker *b)
{
	uint64_t now = 0, next = UINT64_MAX;
	uint64_t stuck;

	for (unsigned int h = 0; h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];
		uint64_t at;

		if (!hp->alive || hp->ctl_stuck || !hp->ctl_blocked_ns)
			continue;
		/* One not known to be past its init (a restart that has not
		 * answered yet: CUDA may take seconds) gets the 30 s. */
		stuck = b->o.helper_timeout_ns && hp->ready ? b->o.helper_timeout_ns : CTL_STUCK_NS;
		if (!now)
			now = ferry_now_ns();
		if (now - hp->ctl_blocked_ns >= stuck) {
			char why[96];

			snprintf(why, sizeof(why), "left its control socket full for %llu ms: hung",
				 (unsigned long long)(stuck / 1000000));
			b->st.helper_timeouts++;
			kill_stuck(b, h, why);
			continue;
		}
		if (hp->ctl_retry_ns && hp->ctl_retry_ns <= now) {
			hp->ctl_retry_ns = 0;
			ferry_helper_ctl_flush(b, h);
		}
		at = hp->ctl_retry_ns ? hp->ctl_retry_ns : hp->ctl_blocked_ns + stuck;
		if (hp->ctl_blocked_ns && at < next)
			next = at;
	}
	return next == UINT64_MAX ? -1 : (int64_t)(next > now ? next - now : 0);
}

void ferry_helper_ctl_reset(struct ferry_broker *b, unsigned int h)
{
	struct bhelper *hp = &b->helper[h];

	if (hp->ctl_poll_armed)
		ferry_waitset_disarm(b->ws, KEY(KEY_HELPER_CTL, h));
	free(hp->outbox);
	hp->outbox = NULL;
	hp->nout = hp->capout = hp->outhead = 0;
	hp->ctl_poll_armed = false;
	hp->ctl_blocked_ns = hp->ctl_retry_ns = 0;
	hp->ctl_sent = hp->ctl_marked = 0;
}
