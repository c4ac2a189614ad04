// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The broker's counters for tools (ferryctl stats): a unix socket at
 * opts.stats_path where connecting is the whole request.  The dispatch
 * thread answers each connection (same user or root) with one message of
 * "key value" lines, then one "helper" line per helper, and closes it; it
 * never reads from the client, so a client cannot stall it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker_internal.h"
#include "unix_socket.h"

#define STATS_MAX 65536		/* one message; helpers past it are left out */

int ferry_stats_listen(struct ferry_broker *b)
{
	return ferry_unix_listen(b->o.stats_path, &b->stats_path, &b->stats_fd);
}

struct text {
	char *buf;
	size_t len;
	bool full;
};

static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->full)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->buf + t->len, STATS_MAX - t->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= STATS_MAX - t->len)
		t->full = true;	/* the last line is cut: drop it */
	else
		t->len += (size_t)n;
}

static void render(struct ferry_broker *b, struct text *t)
{
	const struct ferry_broker_stats *s = &b->st;
	uint64_t queued = 0;
	struct timespec ts;

	for (uint32_t i = b->ready_head; i != UINT32_MAX; i = b->child[i].next_ready)
		queued += ferry_chan_pending(&b->child[i].chan.ch, FERRY_TO_BROKER);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	put(t, "pid %d\nbackend %s\nchildren %u\nattach_slots %u\nhelpers %u\n", (int)getpid(),
	    ferry_backend_name(ferry_rctx_backend(b->rc)), b->nchildren,
	    b->nslots_total - b->nchildren, b->o.helpers);
	put(t, "gpus %d\ndispatch_cpu %d\nwindow %u\nhelper_depth %u\n", b->ngpus,
	    b->dispatch_cpu, b->o.window, b->o.helper_depth);
	put(t, "requests %llu\nreplies %llu\nqueued %llu\nin_flight %llu\n",
	    (unsigned long long)s->requests, (unsigned long long)s->replies,
	    (unsigned long long)queued, (unsigned long long)s->in_flight);
	put(t, "failed_back %llu\nbad_desc %llu\nbad_reply %llu\ndropped %llu\n",
	    (unsigned long long)s->failed_back, (unsigned long long)s->bad_desc,
	    (unsigned long long)s->bad_reply, (unsigned long long)s->dropped);
	put(t, "child_exits %llu\nchild_deaths %llu\nhelper_deaths %llu\nhelper_restarts %llu\n",
	    (unsigned long long)s->child_exits, (unsigned long long)s->child_deaths,
	    (unsigned long long)s->helper_deaths, (unsigned long long)s->helper_restarts);
	put(t, "attached %llu\nattach_refused %llu\nwakeups %llu\nbells %llu\n",
	    (unsigned long long)s->attached, (unsigned long long)s->attach_refused,
	    (unsigned long long)s->wakeups, (unsigned long long)s->bells);
	put(t, "pool_allocs %llu\npool_frees %llu\npool_oom %llu\npool_waits %llu\n"
	    "dispatch_cpu_ns %llu\n",
	    (unsigned long long)s->pool_allocs, (unsigned long long)s->pool_frees,
	    (unsigned long long)s->pool_oom, (unsigned long long)s->pool_waits,
	    (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
	for (unsigned int h = 0; h < b->o.helpers; h++) {
		const struct bhelper *hp = &b->helper[h];

		put(t, "helper %u pid %d alive %d gpu %d in_flight %u served %llu\n", h,
		    (int)hp->pid, hp->alive, ferry_helper_gpu_of(b, h), hp->in_flight,
		    (unsigned long long)b->served[h]);
	}
}

void ferry_stats_serve(struct ferry_broker *b)
{
	struct ucred cred;
	struct text t = { .buf = malloc(STATS_MAX) };
	int fd;

	if (!t.buf)
		return;
	for (;;) {
		fd = accept4(b->stats_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			break;	/* EAGAIN: all answered */
		if (ferry_peer_trusted(fd, &cred)) {
			t.len = 0;
			t.full = false;
			render(b, &t);
			/* Non-blocking: a client that does not read loses its answer. */
			(void)send(fd, t.buf, t.len, MSG_DONTWAIT | MSG_NOSIGNAL);
		}
		close(fd);
	}
	free(t.buf);
}
