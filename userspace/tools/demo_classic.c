// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-demo's classic path: the seed design ferry replaces, for the same
 * job.  A broker process has a pipe each way to every child (worker) and
 * to every model server; tensors travel through the pipes, so each one is
 * copied into the kernel and out again at every hop (child -> broker ->
 * server, and the logits back).  The broker poll()s all its pipes, reads
 * and writes without blocking, keeps a FIFO of requests while every
 * server is busy, and gives a server one request at a time.
 *
 * Every byte that goes through read() or write() is counted (r->copied);
 * that is the copying the classic design does and ferry does not.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "demo_paths.h"

#define CMSG_REQ 0x52455131u	/* "REQ1" */
#define CMSG_REP 0x52455031u	/* "REP1" */

/* One message on a pipe: this header, then @len bytes of tensor. */
struct cmsg {
	uint32_t kind;
	uint32_t child;		/* set by the broker: whose request */
	uint32_t tag, n;	/* the child's slot, images in the batch */
	int32_t status;		/* reply: 0 or -errno */
	uint32_t pad;
	uint64_t seq, t_start, t_end, len;
	uint64_t reserved;
};
_Static_assert(sizeof(struct cmsg) == 64, "a header is one descriptor's size");

/* --- counted I/O: every byte read() or write() moves is a copy --- */

static void count(struct demo_run *r, ssize_t n)
{
	if (n > 0)
		atomic_fetch_add_explicit(&r->copied, (uint64_t)n, memory_order_relaxed);
}

/* Blocking: all of @iov, or -EIO. */
static int write_all(struct demo_run *r, int fd, struct iovec *iov, int cnt)
{
	while (cnt > 0) {
		ssize_t w = writev(fd, iov, cnt);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -EIO;
		count(r, w);
		while (cnt > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

/* Blocking: 1 and all @n bytes, 0 at end of file before any, -EIO else. */
static int read_all(struct demo_run *r, int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t k = read(fd, (char *)p + got, n - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k == 0 && got == 0 ? 0 : -EIO;
		count(r, k);
		got += (size_t)k;
	}
	return 1;
}

static int send_msg(struct demo_run *r, int fd, struct cmsg *h, const void *data)
{
	struct iovec iov[2] = { { h, sizeof(*h) }, { (void *)data, h->len } };

	return write_all(r, fd, iov, h->len ? 2 : 1);
}

/* --- a child (worker) --- */

struct cslot {
	float *in, *out;
	uint64_t seq, t0;
};

/* Keep @win requests in flight: make images, write header and tensor. */
static int child_submit(const struct demo_cfg *c, struct demo_run *r, struct demo_child *k,
			int out, struct cslot *sl, unsigned int *free_tags, unsigned int *nfree,
			uint64_t *seq)
{
	while (*nfree && !demo_child_stopping(k)) {
		unsigned int tag = free_tags[--*nfree];
		struct cslot *s = &sl[tag];
		struct cmsg h = { .kind = CMSG_REQ, .tag = tag, .n = c->batch,
				  .len = demo_in_bytes(c) };

		s->seq = h.seq = (*seq)++;
		demo_child_images(k, s->in, s->seq);
		s->t0 = demo_now_ns();
		if (send_msg(r, out, &h, s->in))
			return -EIO;
	}
	return 0;
}

/* One reply: header, then the logits straight into the slot it names. */
static int child_receive(const struct demo_cfg *c, struct demo_run *r, struct demo_child *k,
			 int in, struct cslot *sl, unsigned int win, unsigned int *tag)
{
	struct cmsg h;
	int err = read_all(r, in, &h, sizeof(h));

	if (err <= 0 || h.kind != CMSG_REP || h.tag >= win ||
	    h.len != (h.status ? 0 : demo_out_bytes(c)))
		return -EPROTO;
	if (h.len && read_all(r, in, sl[h.tag].out, h.len) != 1)
		return -EIO;
	demo_child_reply(k, sl[h.tag].seq, sl[h.tag].out, h.status, sl[h.tag].t0, h.t_start,
			 h.t_end);
	*tag = h.tag;
	return 0;
}

static int classic_child(const struct demo_cfg *c, struct demo_run *r, unsigned int idx,
			 int out, int in)
{
	unsigned int win = c->window, nfree = win, busy = 0, *free_tags;
	struct cslot *sl = calloc(win, sizeof(*sl));
	struct demo_child *k;
	uint64_t seq = 0;

	free_tags = calloc(win, sizeof(*free_tags));
	if (!sl || !free_tags)
		return 2;
	for (unsigned int i = 0; i < win; i++) {
		sl[i].in = malloc(demo_in_bytes(c));
		sl[i].out = malloc(demo_out_bytes(c));
		if (!sl[i].in || !sl[i].out)
			return 3;
		free_tags[i] = win - 1 - i;
	}
	k = demo_child_open(c, r, idx);
	if (!k)
		return 2;
	for (;;) {
		unsigned int tag;

		if (child_submit(c, r, k, out, sl, free_tags, &nfree, &seq))
			return 4;
		busy = win - nfree;
		if (!busy)
			break;
		if (child_receive(c, r, k, in, sl, win, &tag))
			return 5;
		free_tags[nfree++] = tag;
	}
	/* End of file for the broker: this child's timed part is over. */
	close(out);
	return demo_child_close(k);
}

/* --- a model server --- */

static int classic_server(const struct demo_cfg *c, struct demo_run *r, unsigned int idx,
			  int in, int out)
{
	float *x = malloc(demo_in_bytes(c)), *y = malloc(demo_out_bytes(c));
	struct demo_gpu *g = NULL;
	uint64_t cpu0 = 0, told = 0;
	struct cmsg h;
	int rc;

	if (!x || !y)
		return 2;
	if (c->gpu && (demo_gpu_use(idx % (unsigned int)c->ngpus) ||
		       demo_gpu_open(c->w, c->batch, 1, &g)))
		return 3;
	atomic_fetch_add(&r->ready, 1);
	while ((rc = read_all(r, in, &h, sizeof(h))) == 1) {
		bool spoil = demo_spoil_next(c);

		if (!cpu0)	/* from its first request: start-up is not transport */
			cpu0 = demo_process_cpu_ns();
		if (h.kind != CMSG_REQ || h.n == 0 || h.n > c->batch ||
		    h.len != (uint64_t)h.n * DEMO_IN * sizeof(float) ||
		    read_all(r, in, x, h.len) != 1)
			return 4;
		h.kind = CMSG_REP;
		if (g && !spoil) {
			h.t_start = demo_now_ns();
			h.status = demo_gpu_run(g, x, h.n, y);
			h.t_end = demo_now_ns();
			atomic_fetch_add(&r->dma, demo_gpu_copied(g) - told);
			told = demo_gpu_copied(g);
		} else {
			demo_serve_cpu(c, r, x, h.n, y, spoil, &h.t_start, &h.t_end);
			h.status = 0;
		}
		h.len = h.status ? 0 : (uint64_t)h.n * DEMO_OUT * sizeof(float);
		if (send_msg(r, out, &h, y))
			return 5;
	}
	if (cpu0)
		atomic_fetch_add(&r->server_cpu_ns, demo_process_cpu_ns() - cpu0);
	return rc == 0 ? 0 : 6;
}

/* --- the broker --- */

/* A message in the broker: read into it once, written out from it. */
struct msg {
	struct msg *next;
	size_t size, done;	/* header + tensor; bytes read (or written) */
	union {
		struct cmsg h;
		unsigned char bytes[sizeof(struct cmsg)];
	} u;			/* the tensor follows the header */
};

struct queue {
	struct msg *head, *tail;
};

struct peer {
	int rd, wr;		/* the broker's ends of its two pipes */
	struct msg *in;		/* being read */
	struct queue out;	/* to be written, in order */
	bool busy;		/* a server with a request */
	bool closed;		/* a child that has finished */
};

struct broker {
	const struct demo_cfg *c;
	struct demo_run *r;
	unsigned int nc, ns;	/* children, servers */
	struct peer *p;		/* children, then servers */
	struct queue waiting;	/* requests while every server is busy */
	unsigned int open, idle;
	pid_t *pid;		/* servers, then children */
};

static void push(struct queue *q, struct msg *m)
{
	m->next = NULL;
	if (q->tail)
		q->tail->next = m;
	else
		q->head = m;
	q->tail = m;
}

static struct msg *pop(struct queue *q)
{
	struct msg *m = q->head;

	if (m) {
		q->head = m->next;
		if (!q->head)
			q->tail = NULL;
	}
	return m;
}

static size_t max_payload(const struct broker *b, unsigned int i)
{
	return i < b->nc ? demo_in_bytes(b->c) : demo_out_bytes(b->c);
}

/* The request (from a child) or reply (from a server) is sound. */
static bool msg_ok(const struct broker *b, unsigned int i, const struct cmsg *h)
{
	if (i < b->nc)
		return h->kind == CMSG_REQ && h->n && h->n <= b->c->batch &&
		       h->len == (uint64_t)h->n * DEMO_IN * sizeof(float);
	return h->kind == CMSG_REP && h->child < b->nc && h->n && h->n <= b->c->batch &&
	       h->len == (h->status ? 0 : (uint64_t)h->n * DEMO_OUT * sizeof(float));
}

/* Give @m to server @s, which takes one request at a time. */
static void to_server(struct broker *b, unsigned int s, struct msg *m)
{
	m->done = 0;
	b->p[b->nc + s].busy = true;
	b->idle--;
	push(&b->p[b->nc + s].out, m);
}

static void route(struct broker *b, unsigned int i, struct msg *m)
{
	if (i < b->nc) {		/* a request: to an idle server or the FIFO */
		m->u.h.child = i;
		for (unsigned int s = 0; b->idle && s < b->ns; s++)
			if (!b->p[b->nc + s].busy) {
				to_server(b, s, m);
				return;
			}
		push(&b->waiting, m);
		return;
	}
	/* A reply: to its child; the server takes the oldest waiting request. */
	b->p[i].busy = false;
	b->idle++;
	m->done = 0;
	push(&b->p[m->u.h.child].out, m);
	if ((m = pop(&b->waiting)))
		to_server(b, i - b->nc, m);
}

/* Read what peer @i has sent, without blocking: 0, or -errno; a child's
 * end of file closes it. */
static int broker_read(struct broker *b, unsigned int i)
{
	struct peer *p = &b->p[i];

	for (;;) {
		struct msg *m = p->in;
		size_t want = m->done < sizeof(struct cmsg) ? sizeof(struct cmsg) : m->size;
		ssize_t k = read(p->rd, m->u.bytes + m->done, want - m->done);

		if (k < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -errno;
		if (k == 0) {
			if (i >= b->nc || m->done)
				return -EPIPE;	/* a server gone, or half a message */
			p->closed = true;
			b->open--;
			return 0;
		}
		count(b->r, k);
		m->done += (size_t)k;
		if (m->done == sizeof(struct cmsg)) {
			if (!msg_ok(b, i, &m->u.h))
				return -EPROTO;
			m->size = sizeof(struct cmsg) + m->u.h.len;
		}
		if (m->done < sizeof(struct cmsg) || m->done < m->size)
			continue;
		p->in = malloc(sizeof(struct msg) + max_payload(b, i));
		if (!p->in)
			return -ENOMEM;
		p->in->done = 0;
		route(b, i, m);
	}
}

/* Write what is queued for peer @i, without blocking: 0 or -errno. */
static int broker_write(struct broker *b, unsigned int i)
{
	struct peer *p = &b->p[i];
	struct msg *m;

	while ((m = p->out.head)) {
		ssize_t k = write(p->wr, m->u.bytes + m->done, m->size - m->done);

		if (k < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -errno;
		count(b->r, k);
		m->done += (size_t)k;
		if (m->done == m->size)
			free(pop(&p->out));
	}
	return 0;
}

/* Poll every pipe until every child has finished; 0 or -errno. */
static int broker_loop(struct broker *b)
{
	unsigned int n = b->nc + b->ns;
	struct pollfd *pfd = calloc(2 * (size_t)n, sizeof(*pfd));
	int err = 0;

	if (!pfd)
		return -ENOMEM;
	while (!err && b->open) {
		for (unsigned int i = 0; i < n; i++) {
			struct peer *p = &b->p[i];

			pfd[2 * i] = (struct pollfd){ .fd = p->closed ? -1 : p->rd, .events = POLLIN };
			pfd[2 * i + 1] = (struct pollfd){ .fd = p->out.head ? p->wr : -1,
							  .events = POLLOUT };
		}
		if (poll(pfd, 2 * n, -1) < 0) {
			err = errno == EINTR ? 0 : -errno;
			continue;
		}
		for (unsigned int i = 0; i < n && !err; i++) {
			if (pfd[2 * i].revents)
				err = broker_read(b, i);
			if (!err && (pfd[2 * i + 1].revents || b->p[i].out.head))
				err = broker_write(b, i);
		}
	}
	free(pfd);
	return err;
}

static void free_queue(struct queue *q)
{
	struct msg *m;

	while ((m = pop(q)))
		free(m);
}

static void broker_free(struct broker *b)
{
	for (unsigned int i = 0; b->p && i < b->nc + b->ns; i++) {
		if (b->p[i].rd >= 0)
			close(b->p[i].rd);
		if (b->p[i].wr >= 0)
			close(b->p[i].wr);
		free(b->p[i].in);
		free_queue(&b->p[i].out);
	}
	free_queue(&b->waiting);
	free(b->p);
	free(b->pid);
}

/* In a new process: die with the broker, keep only @keep0/@keep1. */
static void forked(struct broker *b, int keep0, int keep1)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (unsigned int i = 0; i < b->nc + b->ns; i++) {
		if (b->p[i].rd >= 0 && b->p[i].rd != keep0 && b->p[i].rd != keep1)
			close(b->p[i].rd);
		if (b->p[i].wr >= 0 && b->p[i].wr != keep0 && b->p[i].wr != keep1)
			close(b->p[i].wr);
	}
}

/*
 * Peer @i's pipes: the broker's ends (rd, wr, non-blocking) in b->p[i],
 * the peer's ends in @their[2] (what it reads, what it writes).
 */
static int make_pipes(struct broker *b, unsigned int i, int their[2])
{
	int to_peer[2], from_peer[2];

	if (pipe2(to_peer, O_CLOEXEC))
		return -errno;
	if (pipe2(from_peer, O_CLOEXEC)) {
		close(to_peer[0]);
		close(to_peer[1]);
		return -errno;
	}
	b->p[i].rd = from_peer[0];
	b->p[i].wr = to_peer[1];
	their[0] = to_peer[0];
	their[1] = from_peer[1];
	fcntl(b->p[i].rd, F_SETFL, O_NONBLOCK);
	fcntl(b->p[i].wr, F_SETFL, O_NONBLOCK);
	return 0;
}

/* Start server or child @k (servers first, as the seed broker did). */
static int start_peer(struct broker *b, unsigned int k)
{
	unsigned int i = k < b->ns ? b->nc + k : k - b->ns;	/* index in b->p */
	int their[2] = { -1, -1 }, err = make_pipes(b, i, their);
	pid_t pid;

	if (err)
		return err;
	pid = fork();
	if (pid == 0) {
		forked(b, their[0], their[1]);
		_exit(k < b->ns ? classic_server(b->c, b->r, k, their[0], their[1]) :
		      classic_child(b->c, b->r, k - b->ns, their[1], their[0]));
	}
	close(their[0]);
	close(their[1]);
	if (pid < 0)
		return -errno;
	b->pid[k] = pid;
	return 0;
}

static int broker_init(struct broker *b, const struct demo_cfg *c, struct demo_run *r)
{
	*b = (struct broker){ .c = c, .r = r, .nc = c->children, .ns = c->helpers,
			      .open = c->children, .idle = c->helpers };
	b->p = calloc(b->nc + b->ns, sizeof(*b->p));
	b->pid = calloc(b->nc + b->ns, sizeof(*b->pid));
	if (!b->p || !b->pid)
		return -ENOMEM;
	for (unsigned int i = 0; i < b->nc + b->ns; i++) {
		b->p[i].rd = b->p[i].wr = -1;
		b->p[i].in = malloc(sizeof(struct msg) + max_payload(b, i));
		if (!b->p[i].in)
			return -ENOMEM;
		b->p[i].in->done = 0;
	}
	return 0;
}

/* Wait for every process; the number of children that failed, or -1
 * when a server failed. */
static int reap(struct broker *b)
{
	int failed = 0;

	for (unsigned int k = 0; k < b->nc + b->ns; k++) {
		int st;

		if (b->pid[k] <= 0 || waitpid(b->pid[k], &st, 0) != b->pid[k])
			continue;
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			if (k < b->ns)
				return -1;
			failed++;
		}
	}
	return failed;
}

/* The broker process: exit status 0, or the number of failed children
 * (capped), or 100 + errno of its own failure. */
static int classic_broker(const struct demo_cfg *c, struct demo_run *r)
{
	struct broker b;
	uint64_t cpu0;
	int err, failed;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGPIPE, SIG_IGN);	/* a dead child's pipe is an error, not a death */
	err = broker_init(&b, c, r);
	for (unsigned int k = 0; !err && k < b.ns + b.nc; k++)
		err = start_peer(&b, k);
	atomic_fetch_add(&r->ready, 1);	/* every peer forked */
	cpu0 = demo_process_cpu_ns();
	if (!err)
		err = broker_loop(&b);
	r->broker_cpu_ns = demo_process_cpu_ns() - cpu0;
	if (err) {
		r->broker_err = err;
		fprintf(stderr, "ferry-demo: classic broker: %s\n", strerror(-err));
		for (unsigned int k = 0; k < b.nc + b.ns; k++)
			if (b.pid[k] > 0)
				kill(b.pid[k], SIGKILL);
	}
	/* Servers see end of file and add their CPU; children check results. */
	for (unsigned int s = 0; s < b.ns; s++) {
		close(b.p[b.nc + s].wr);
		b.p[b.nc + s].wr = -1;
	}
	failed = reap(&b);
	broker_free(&b);
	if (err)
		return 100 + (-err > 100 ? 100 : -err);
	return failed < 0 ? 99 : failed > 98 ? 98 : failed;
}

int demo_classic_run(const struct demo_cfg *c, struct demo_run *r, struct demo_path_info *info)
{
	pid_t pid;
	int st;

	/* Its own process, as the seed's broker: this one keeps the clock. */
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0)
		_exit(classic_broker(c, r));
	snprintf(info->backend, sizeof(info->backend), "pipes");
	if (!c->json)
		demo_say_start("classic", "a broker process, pipes + poll(): tensors copied through the pipes");
	info->seconds = demo_timed_part(c, r, "classic", pid);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) {
		fprintf(stderr, "ferry-demo: the classic broker died\n");
		return -ECHILD;
	}
	st = WEXITSTATUS(st);
	info->failed = st >= 99 ? (int)c->children : st;
	if (st >= 100)
		return -(st - 100);
	return info->seconds < 0 ? -ETIMEDOUT : 0;
}
