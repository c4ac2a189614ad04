// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench msg's baselines: the seed design, pipes and poll().
 *   pair    two processes, one pipe each way: what a ferry channel pair
 *           replaces.
 *   broker  the path ferry_call takes, child -> broker -> helper -> broker
 *           -> child, with 64-byte messages: the broker poll()s every
 *           child's and every helper's pipe and keeps a FIFO of requests
 *           while no helper is free, as the classic design did.
 * Every message is one 64-byte write, so reads never see half of one
 * (PIPE_BUF is at least 512).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

struct pmsg {
	uint32_t child, seq;
	uint8_t payload[56];
};
_Static_assert(sizeof(struct pmsg) == 64, "a pipe message is one descriptor's size");

static int put(int fd, const struct pmsg *m)
{
	return write(fd, m, sizeof(*m)) == sizeof(*m) ? 0 : -EIO;
}

/* 1: a message, 0: end of file, -EIO: anything else. */
static int get(int fd, struct pmsg *m)
{
	ssize_t r = read(fd, m, sizeof(*m));

	return r == sizeof(*m) ? 1 : r == 0 ? 0 : -EIO;
}

static int wait_in(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, -1) == 1 ? 0 : -EIO;
}

int bench_pipe_pair(unsigned int n, uint64_t deadline_ns, struct bench_lat *out)
{
	uint64_t *t = calloc(n, sizeof(*t));
	struct pmsg m = { 0 };
	int a[2], b[2], st = 0, err;
	unsigned int cnt = 0;
	pid_t pid;

	if (!t)
		return -ENOMEM;
	if (pipe(a)) {
		free(t);
		return -errno;
	}
	if (pipe(b)) {
		close(a[0]); close(a[1]);
		free(t);
		return -errno;
	}
	pid = fork();
	if (pid == 0) {
		close(a[1]); close(b[0]);
		/* Echo until the other end closes. */
		while (wait_in(a[0]) == 0 && get(a[0], &m) == 1)
			if (put(b[1], &m))
				_exit(1);
		_exit(0);
	}
	close(a[0]); close(b[1]);
	err = pid < 0 ? -errno : 0;
	for (unsigned int i = 0; !err && i < n && bench_now_ns() < deadline_ns; i++) {
		uint64_t c0 = bench_now_ns();

		m.seq = i;
		if (put(a[1], &m) || wait_in(b[0]) || get(b[0], &m) != 1 || m.seq != i)
			err = -EIO;
		else
			t[cnt++] = bench_now_ns() - c0;
	}
	close(a[1]);	/* the echo process sees end of file */
	if (pid > 0 && (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)))
		err = err ? err : -EIO;
	if (!err)
		err = bench_lat_collect(out, t, &cnt, 1, n);
	close(b[0]);
	free(t);
	return err;
}

struct pipes {
	unsigned int children, helpers;
	int (*creq)[2], (*crep)[2];	/* per child: requests in, replies out */
	int (*hreq)[2], (*hrep)[2];	/* per helper */
	pid_t *pid;			/* helpers, then children */
};

static void close_pair(int p[2])
{
	for (int k = 0; k < 2; k++)
		if (p[k] >= 0) {
			close(p[k]);
			p[k] = -1;
		}
}

/* In a forked process: every pipe end but @keep0 and @keep1. */
static void close_others(struct pipes *p, int keep0, int keep1)
{
	int *all[] = { &p->creq[0][0], &p->crep[0][0], &p->hreq[0][0], &p->hrep[0][0] };
	unsigned int cnt[] = { p->children, p->children, p->helpers, p->helpers };

	for (int a = 0; a < 4; a++)
		for (unsigned int i = 0; i < 2 * cnt[a]; i++) {
			int fd = all[a][i];

			if (fd >= 0 && fd != keep0 && fd != keep1)
				close(fd);
		}
}

static void pipe_helper(struct pipes *p, unsigned int h, const struct bench_service *sv)
{
	struct pmsg m;
	int in = p->hreq[h][0], out = p->hrep[h][1], r;

	close_others(p, in, out);
	while (wait_in(in) == 0 && (r = get(in, &m)) == 1) {
		bench_serve(sv);
		if (put(out, &m))
			_exit(1);
	}
	_exit(0);
}

static void pipe_child(struct pipes *p, struct bench_samples *s, unsigned int c)
{
	uint64_t *t = s->t + (size_t)c * s->n;
	struct pmsg m = { 0 };
	int out = p->creq[c][1], in = p->crep[c][0];

	close_others(p, out, in);
	for (unsigned int i = 0; i < s->n && bench_now_ns() < s->deadline_ns; i++) {
		uint64_t t0 = bench_now_ns();

		m.seq = i;
		if (put(out, &m) || wait_in(in) || get(in, &m) != 1 || m.seq != i)
			_exit(1);
		t[s->cnt[c]++] = bench_now_ns() - t0;
	}
	s->cpu_ns[c] = bench_self_cpu_ns();
	_exit(0);
}

/*
 * The broker's loop: requests from children go to a free helper or wait in
 * a FIFO (at most one per child: children are synchronous); a helper's
 * reply goes back to the child it names and frees the helper for the
 * oldest waiting request.  Ends when every child has closed its pipe.
 */
static int pipe_dispatch(struct pipes *p)
{
	unsigned int nfd = p->children + p->helpers, open = p->children;
	unsigned int nfree = 0, qhead = 0, qlen = 0;
	struct pollfd *pfd = calloc(nfd, sizeof(*pfd));
	struct pmsg *queue = calloc(p->children, sizeof(*queue));
	unsigned int *idle = calloc(p->helpers, sizeof(*idle));
	int err = 0;

	if (!pfd || !queue || !idle) {
		err = -ENOMEM;
		goto out;
	}
	for (unsigned int i = 0; i < p->children; i++)
		pfd[i] = (struct pollfd){ .fd = p->creq[i][0], .events = POLLIN };
	for (unsigned int h = 0; h < p->helpers; h++) {
		pfd[p->children + h] = (struct pollfd){ .fd = p->hrep[h][0], .events = POLLIN };
		idle[nfree++] = h;
	}
	while (open && !err) {
		if (poll(pfd, nfd, -1) < 0) {
			err = errno == EINTR ? 0 : -errno;
			continue;
		}
		for (unsigned int i = 0; i < nfd && !err; i++) {
			struct pmsg m;
			int r;

			if (!pfd[i].revents)
				continue;
			r = get(pfd[i].fd, &m);
			if (i >= p->children) {		/* a helper's reply */
				unsigned int h = i - p->children;

				if (r != 1 || m.child >= p->children) {
					err = -EIO;
				} else if (!(err = put(p->crep[m.child][1], &m))) {
					if (qlen) {
						err = put(p->hreq[h][1], &queue[qhead]);
						qhead = (qhead + 1) % p->children;
						qlen--;
					} else {
						idle[nfree++] = h;
					}
				}
			} else if (r == 0) {		/* the child is done */
				pfd[i].fd = -1;
				open--;
			} else if (r < 0) {
				err = r;
			} else {
				m.child = i;
				if (nfree)
					err = put(p->hreq[idle[--nfree]][1], &m);
				else
					queue[(qhead + qlen++) % p->children] = m;
			}
		}
	}
out:
	free(pfd);
	free(queue);
	free(idle);
	return err;
}

static int pipes_alloc(struct pipes *p, unsigned int children, unsigned int helpers)
{
	p->children = children;
	p->helpers = helpers;
	p->creq = malloc(children * sizeof(*p->creq));
	p->crep = malloc(children * sizeof(*p->crep));
	p->hreq = malloc(helpers * sizeof(*p->hreq));
	p->hrep = malloc(helpers * sizeof(*p->hrep));
	p->pid = malloc((children + helpers) * sizeof(*p->pid));
	if (!p->creq || !p->crep || !p->hreq || !p->hrep || !p->pid) {
		p->children = p->helpers = 0;	/* no pipe to close */
		return -ENOMEM;
	}
	memset(p->creq, -1, children * sizeof(*p->creq));
	memset(p->crep, -1, children * sizeof(*p->crep));
	memset(p->hreq, -1, helpers * sizeof(*p->hreq));
	memset(p->hrep, -1, helpers * sizeof(*p->hrep));
	for (unsigned int i = 0; i < children + helpers; i++)
		p->pid[i] = -1;
	for (unsigned int i = 0; i < children; i++)
		if (pipe(p->creq[i]) || pipe(p->crep[i]))
			return -errno;
	for (unsigned int h = 0; h < helpers; h++)
		if (pipe(p->hreq[h]) || pipe(p->hrep[h]))
			return -errno;
	return 0;
}

static void pipes_free(struct pipes *p)
{
	for (unsigned int i = 0; p->creq && p->crep && i < p->children; i++) {
		close_pair(p->creq[i]);
		close_pair(p->crep[i]);
	}
	for (unsigned int h = 0; p->hreq && p->hrep && h < p->helpers; h++) {
		close_pair(p->hreq[h]);
		close_pair(p->hrep[h]);
	}
	free(p->creq); free(p->crep); free(p->hreq); free(p->hrep); free(p->pid);
	memset(p, 0, sizeof(*p));
}

int bench_pipe_broker(unsigned int children, unsigned int helpers, unsigned int n,
		      uint64_t deadline_ns, const struct bench_service *sv, struct bench_lat *out)
{
	uint64_t helper_ns = 0, child_ns = 0, disp_ns = 0, reqs = 0;
	struct bench_samples *s = bench_samples_map(children, n, deadline_ns);
	struct pipes p = { 0 };
	int err;

	if (!s)
		return -ENOMEM;
	err = pipes_alloc(&p, children, helpers);
	if (err) {
		pipes_free(&p);
		bench_samples_unmap(s);
		return err;
	}
	/* Helpers first, then children, as the broker forks them. */
	for (unsigned int k = 0; !err && k < helpers + children; k++) {
		pid_t pid = fork();

		if (pid == 0) {
			if (k < helpers)
				pipe_helper(&p, k, sv);
			pipe_child(&p, s, k - helpers);
		}
		if (pid < 0)
			err = -errno;
		p.pid[k] = pid;
	}
	/* The broker keeps its own ends only, so children's exits read as EOF. */
	for (unsigned int i = 0; i < children; i++) {
		close(p.creq[i][1]); p.creq[i][1] = -1;
		close(p.crep[i][0]); p.crep[i][0] = -1;
	}
	for (unsigned int h = 0; h < helpers; h++) {
		close(p.hreq[h][0]); p.hreq[h][0] = -1;
		close(p.hrep[h][1]); p.hrep[h][1] = -1;
	}
	if (!err) {
		struct timespec a, z;

		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
		err = pipe_dispatch(&p);
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &z);
		disp_ns = (uint64_t)((z.tv_sec - a.tv_sec) * 1000000000LL + (z.tv_nsec - a.tv_nsec));
	}
	if (err)	/* nobody is left waiting on a broker that gave up */
		for (unsigned int k = 0; k < helpers + children; k++)
			if (p.pid[k] > 0)
				kill(p.pid[k], SIGKILL);
	for (unsigned int h = 0; h < helpers; h++)
		close_pair(p.hreq[h]);	/* helpers see end of file */
	for (unsigned int k = 0; k < helpers + children; k++) {
		struct rusage ru;
		int st;

		if (p.pid[k] > 0 && (wait4(p.pid[k], &st, 0, &ru) != p.pid[k] ||
				     !WIFEXITED(st) || WEXITSTATUS(st)))
			err = err ? err : -EIO;
		else if (p.pid[k] > 0 && k < helpers)
			helper_ns += (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
				     (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
	}
	for (unsigned int i = 0; i < children; i++) {
		child_ns += s->cpu_ns[i];
		reqs += s->cnt[i];
	}
	if (!err)
		err = bench_samples_collect(s, out);
	if (!err && reqs)
		out->cpu = (struct bench_cpu){
			.child_us = child_ns / 1e3 / reqs, .dispatch_us = disp_ns / 1e3 / reqs,
			.helper_us = helper_ns / 1e3 / reqs,
		};
	pipes_free(&p);
	bench_samples_unmap(s);
	return err;
}
