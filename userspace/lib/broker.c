// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The broker: owns every region and channel, forks helpers then children,
 * and runs one dispatch thread (dispatch.c).  This file sets peers up and
 * tears them down; the order is what keeps isolation:
 *   1. create the region, format its channel (and heap);
 *   2. fork: the new process holds only its control socket;
 *   3. grant the region to the new pid (kmod) and send it what it may map.
 * Rights (kmod): helpers get READ|WRITE|PIN on every region they map (CUDA
 * registers child regions, and a helper waits on futexes in its channel);
 * a child gets READ|WRITE on its region, so its heap stays out of reach
 * of get_user_pages (no pin outlives its revoke), and READ|WRITE|PIN on
 * the region's head alone, the channel words it sleeps on.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <numa.h>

#include "broker.h"

#define DEFAULT_WINDOW 8
#define DEFAULT_DEPTH 8
#define DEFAULT_SPIN_NS 20000
#define DEFAULT_STREAMS 4

void ferry_broker_opts_init(struct ferry_broker_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->children = 1;
	o->helpers = 1;
	o->region_size = 16u << 20;
	o->window = DEFAULT_WINDOW;
	o->helper_depth = DEFAULT_DEPTH;
	o->backend = FERRY_BACKEND_AUTO;
	o->spin_ns = UINT64_MAX;	/* "not set": $FERRY_SPIN_NS or default */
	o->max_attached = 4;
	o->numa_node = -1;
	o->dispatch_cpu = FERRY_CPU_AUTO;
	o->gpu = FERRY_GPU_AUTO;
	o->streams = DEFAULT_STREAMS;
}

/* CPUs this process may run on (its peers inherit the mask). */
static unsigned int ferry_cpus_usable(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned int)CPU_COUNT(&set);
	return 1;
}

/*
 * Decide which CPU the dispatch thread gets to itself.  Auto: only when
 * the peers would otherwise crowd it (oversubscribed) and enough CPUs are
 * left for them (4 or more in the mask); the last CPU of the mask, which
 * is the one least likely to be a housekeeping CPU.
 */
static int pick_dispatch_cpu(struct ferry_broker *b)
{
	const char *env = getenv("FERRY_DISPATCH_CPU");
	int want = b->o.dispatch_cpu, last = -1;
	cpu_set_t mine;

	b->dispatch_cpu = -1;
	if (env && *env) {
		char *end;
		long v;

		if (strcmp(env, "auto") == 0) {
			want = FERRY_CPU_AUTO;
		} else if (strcmp(env, "none") == 0) {
			want = FERRY_CPU_NONE;
		} else {
			v = strtol(env, &end, 10);
			if (*end || v < 0 || v >= CPU_SETSIZE) {
				fprintf(stderr, "ferry: FERRY_DISPATCH_CPU=%s: want auto, none "
					"or a CPU number\n", env);
				return -EINVAL;
			}
			want = (int)v;
		}
	}
	if (want == FERRY_CPU_NONE)
		return 0;
	if (want < FERRY_CPU_NONE || want >= CPU_SETSIZE)
		return -EINVAL;
	if (sched_getaffinity(0, sizeof(mine), &mine))
		return want == FERRY_CPU_AUTO ? 0 : -errno;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &mine))
			last = c;
	if (want == FERRY_CPU_AUTO) {
		if (!b->oversub || CPU_COUNT(&mine) < 4)
			return 0;
		want = last;
	} else if (!CPU_ISSET(want, &mine) || CPU_COUNT(&mine) < 2) {
		/* Asked for by number: say so rather than run somewhere else. */
		return -EINVAL;
	}
	b->dispatch_cpu = want;
	b->peer_cpus = mine;
	CPU_CLR(want, &b->peer_cpus);
	return 0;
}

int ferry_broker_dispatch_cpu(const struct ferry_broker *b)
{
	return b ? b->dispatch_cpu : -1;
}

void ferry_peer_affinity(const struct ferry_broker *b, int node)
{
	cpu_set_t set = b->peer_cpus;
	struct bitmask *cpus;

	if (b->dispatch_cpu < 0)
		sched_getaffinity(0, sizeof(set), &set);
	/* A helper stays on its GPU's node, where its CPUs allow any of it. */
	if (node >= 0 && numa_available() >= 0 && (cpus = numa_allocate_cpumask())) {
		cpu_set_t on_node;

		CPU_ZERO(&on_node);
		if (numa_node_to_cpus(node, cpus) == 0)
			for (unsigned int c = 0; c < cpus->size && c < CPU_SETSIZE; c++)
				if (numa_bitmask_isbitset(cpus, c) && CPU_ISSET(c, &set))
					CPU_SET(c, &on_node);
		numa_free_cpumask(cpus);
		if (CPU_COUNT(&on_node))
			set = on_node;
	}
	if (b->dispatch_cpu >= 0 || node >= 0)
		sched_setaffinity(0, sizeof(set), &set);
}

int ferry_helper_gpu_of(const struct ferry_broker *b, unsigned int h)
{
	if (!b->ngpus)
		return -1;
	return b->o.gpu >= 0 ? b->o.gpu : (int)(h % (unsigned int)b->ngpus);
}

int ferry_node_of_helper(const struct ferry_broker *b, unsigned int h)
{
	int g = ferry_helper_gpu_of(b, h);

	if (b->o.numa_node >= 0 || g < 0)
		return b->o.numa_node;
	return g < b->ngpus ? b->gpu_node[g] : -1;
}

int ferry_node_of_child(const struct ferry_broker *b, unsigned int i)
{
	/* Next to the GPU that serves it: with GPU i % ngpus's helpers. */
	if (b->o.numa_node >= 0 || !b->ngpus)
		return b->o.numa_node;
	return b->o.gpu >= 0 ? (b->o.gpu < b->ngpus ? b->gpu_node[b->o.gpu] : -1) :
			       b->gpu_node[i % (unsigned int)b->ngpus];
}

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 2;

	while (p < n)
		p <<= 1;
	return p;
}

int ferry_bchan_create(struct ferry_broker *b, struct bchan *bc, size_t bytes, uint32_t nslots,
		       int node)
{
	size_t cb = ferry_chan_bytes(nslots);
	int err;

	bc->efd[0] = bc->efd[1] = -1;
	bc->bell_armed = false;
	err = ferry_region_create(b->rc, bytes, node, &bc->region);
	if (err)
		return err;
	err = ferry_chan_format(ferry_region_base(bc->region), cb, nslots);
	if (err)
		goto fail;
	if (b->mode == FERRY_BELL_EVENTFD) {
		for (int d = 0; d < 2; d++) {
			bc->efd[d] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
			if (bc->efd[d] < 0) {
				err = -errno;
				goto fail;
			}
		}
	}
	err = ferry_chan_attach(&bc->ch, ferry_region_base(bc->region), cb, true,
				b->mode, bc->efd);
	if (err)
		goto fail;
	bc->ch.spin_ns = 0;	/* the dispatch loop does its own spinning */
	if (b->mode == FERRY_BELL_FUTEX) {
		/* Wakes of sleeping peers go out batched through the io_uring. */
		bc->ch.wake_hook = ferry_dispatch_queue_wake;
		bc->ch.wake_arg = b;
	}
	return 0;
fail:
	ferry_bchan_destroy(bc);
	return err;
}

void ferry_bchan_destroy(struct bchan *bc)
{
	for (int d = 0; d < 2; d++) {
		if (bc->efd[d] >= 0)
			close(bc->efd[d]);
		bc->efd[d] = -1;
	}
	ferry_region_close(bc->region);
	bc->region = NULL;
}

/* The SETUP message telling a peer what its channel (and region) is. */
/* @pool_fd: the pool's fd when m's pool fields (filled by the caller) say
 * IMPORT with an fd, else -1. */
static int send_setup(struct ferry_broker *b, int sock, unsigned int index,
		      struct bchan *bc, uint32_t nslots, size_t chan_bytes,
		      struct ferry_ctl *m, int pool_fd)
{
	int fds[FERRY_CTL_MAX_FDS];
	unsigned int n = 0;

	m->type = FERRY_CTL_SETUP;
	m->index = index;
	m->backend = ferry_rctx_backend(b->rc);
	m->bell_mode = b->mode;
	m->nslots = nslots;
	m->window = b->o.window;
	m->spin_ns = b->o.spin_ns;
	m->chan_bytes = chan_bytes;
	m->pause_ns = b->oversub ? 0 : FERRY_CHAN_PAUSE_NS_DEFAULT;
	m->head_id = ferry_region_head_id(bc->region);
	ferry_region_ref(bc->region, &m->region);
	if (m->region.fd >= 0) {
		fds[n] = m->region.fd;
		m->region.fd = (int32_t)n++;
	}
	if (b->mode == FERRY_BELL_EVENTFD) {
		fds[n++] = bc->efd[0];
		fds[n++] = bc->efd[1];
	}
	if (pool_fd >= 0)
		fds[n++] = pool_fd;
	return ferry_ctl_send(sock, m, fds, n);
}

/*
 * Region + channel head + heap for child slot @i (forked or attached).
 * Always a new region of a new memfd: the one a dead peer held is
 * destroyed by ferry_child_reclaim(), never handed to the next peer (a
 * pin the old one may still hold is on pages nobody else is given).
 */
int ferry_child_slot_setup(struct ferry_broker *b, unsigned int i)
{
	struct bchild *c = &b->child[i];
	size_t total = b->chan_bytes_child + ferry_page_round(b->o.region_size);
	int err;

	memset(c, 0, sizeof(*c));
	c->pidfd = c->ctl = -1;
	c->next_ready = UINT32_MAX;
	err = ferry_bchan_create(b, &c->chan, total, b->nslots_child, ferry_node_of_child(b, i));
	if (err)
		return err;
	/* The channel words, which the child waits on: pinnable, unlike its heap. */
	err = ferry_region_add_head(c->chan.region, b->chan_bytes_child);
	if (!err)
		err = ferry_heap_format(ferry_region_base(c->chan.region), total,
					b->chan_bytes_child);
	if (err) {
		ferry_bchan_destroy(&c->chan);
		return err;
	}
	c->used = true;
	return 0;
}

/* Grant child @i's region to it and to every helper, then tell them. */
int ferry_child_send_setup(struct ferry_broker *b, unsigned int i, int pidfd)
{
	struct bchild *c = &b->child[i];
	int err = ferry_region_grant(c->chan.region, pidfd, FERRY_READ | FERRY_WRITE);

	if (!err)
		err = ferry_region_grant_head(c->chan.region, pidfd,
					      FERRY_READ | FERRY_WRITE | FERRY_PIN);
	if (err)
		return err;
	for (unsigned int h = 0; h < b->o.helpers; h++)
		ferry_helper_ctl_queue(b, h, i, true);
	struct ferry_ctl m = { 0 };
	int pool_fd = ferry_bpool_for_child(b, i, &m);

	return send_setup(b, c->ctl, i, &c->chan, b->nslots_child, b->chan_bytes_child, &m,
			  pool_fd);
}

/*
 * FERRY_CTL_SNDBUF=bytes: a smaller send buffer on the broker's end of
 * each helper's control socket, so that tests fill it with a few
 * announcements (the default holds about 100 messages of 64 regions).
 */
static void ctl_sndbuf(int sock)
{
	const char *env = getenv("FERRY_CTL_SNDBUF");
	int bytes = env && *env ? atoi(env) : 0;

	if (bytes > 0)
		setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

int ferry_helper_start(struct ferry_broker *b, unsigned int h)
{
	struct bhelper *hp = &b->helper[h];
	size_t bytes = ferry_chan_bytes(b->nslots_helper);
	pid_t pid;
	int err, ctl;

	unsigned int quick = hp->quick_deaths;

	ferry_helper_ctl_reset(b, h);
	memset(hp, 0, sizeof(*hp));
	hp->pidfd = hp->ctl = -1;
	hp->quick_deaths = quick;	/* backoff outlives the incarnation */
	err = ferry_bchan_create(b, &hp->chan, bytes, b->nslots_helper,
				 ferry_node_of_helper(b, h));
	if (err)
		return err;
	pid = ferry_spawn(&hp->pidfd, &ctl);
	if (pid < 0) {
		ferry_bchan_destroy(&hp->chan);
		return (int)pid;
	}
	if (pid == 0) {
		ferry_peer_affinity(b, ferry_node_of_helper(b, h));
		ferry_helper_main(b, h, ctl);
	}
	hp->pid = pid;
	hp->ctl = ctl;
	hp->alive = true;
	ctl_sndbuf(ctl);
	err = ferry_region_grant(hp->chan.region, hp->pidfd, FERRY_READ | FERRY_WRITE | FERRY_PIN);
	if (!err) {
		struct ferry_ctl m = { 0 };
		int pool_fd = ferry_bpool_for_helper(b, h, &m);

		err = send_setup(b, hp->ctl, h, &hp->chan, b->nslots_helper, bytes, &m, pool_fd);
		/* Its GPU has no pool yet: this helper makes it. */
		if (!err && m.pool_op == FERRY_POOL_OP_CREATE) {
			err = ferry_bpool_take_created(b, h, hp->ctl);
			if (err)
				fprintf(stderr, "ferry: helper %u could not make the pool of GPU %d: "
					"%s\n", h, m.pool.device, strerror(-err));
		}
	}
	if (err)
		return err;	/* the caller kills what was started */
	/* Queued only: the dispatch loop sends them (start-up too). */
	for (unsigned int i = 0; i < b->nslots_total; i++)
		if (b->child[i].used && b->child[i].alive)
			ferry_helper_ctl_queue(b, h, i, true);
	return 0;
}

/*
 * Child @i is dead and nothing of it is at a helper: free its region (and
 * head).  The slot's next peer gets new ones from ferry_child_slot_setup().
 */
void ferry_child_reclaim(struct ferry_broker *b, unsigned int i)
{
	struct bchild *c = &b->child[i];

	for (unsigned int h = 0; h < b->o.helpers; h++) {
		if (!b->helper[h].alive)
			continue;
		ferry_region_revoke(c->chan.region, b->helper[h].pidfd);
		ferry_helper_ctl_queue(b, h, i, false);
	}
	if (c->pidfd_armed)
		ferry_waitset_disarm(b->ws, KEY(KEY_CHILD_PIDFD, i));
	if (c->conn_armed)
		ferry_waitset_disarm(b->ws, KEY(KEY_CHILD_CONN, i));
	if (c->chan.bell_armed)
		ferry_waitset_disarm(b->ws, KEY(KEY_CHILD_BELL, i));
	ferry_bchan_destroy(&c->chan);
	ferry_bpool_child_gone(b, i);
	if (c->pidfd >= 0)
		close(c->pidfd);
	if (c->ctl >= 0)
		close(c->ctl);
	c->pidfd = c->ctl = -1;
	c->used = false;
}

/*
 * Wait for every helper's READY: its init (CUDA, pool, the user's
 * helper_init) went through, or the first error, which start returns
 * (before, a helper that could not start was restarted ~2800 times a
 * second while start returned 0).  A helper that says nothing within
 * HELPER_READY_TIMEOUT_MS, or dies first, fails start too.
 */
#define HELPER_READY_TIMEOUT_MS 120000

static int helpers_ready(struct ferry_broker *b)
{
	for (unsigned int h = 0; h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];
		struct pollfd p = { .fd = hp->ctl, .events = POLLIN };
		struct ferry_ctl m;
		int fds[FERRY_CTL_MAX_FDS], r;
		unsigned int nfds = 0;

		do
			r = poll(&p, 1, HELPER_READY_TIMEOUT_MS);
		while (r < 0 && errno == EINTR);
		if (r == 0) {
			fprintf(stderr, "ferry: helper %u did not finish starting in %d s\n", h,
				HELPER_READY_TIMEOUT_MS / 1000);
			return -ETIMEDOUT;
		}
		r = r < 0 ? -errno : ferry_ctl_recv(hp->ctl, &m, fds, &nfds, 0);
		for (unsigned int i = 0; i < nfds; i++)
			close(fds[i]);
		if (r) {
			fprintf(stderr, "ferry: helper %u died while starting (%s)\n", h,
				strerror(-r));
			return r == -ECONNRESET ? -ECHILD : r;
		}
		if (m.type != FERRY_CTL_READY)
			return -EPROTO;
		if (m.status < 0) {
			fprintf(stderr, "ferry: helper %u could not start: %s\n", h,
				strerror(-m.status));
			return m.status;
		}
		hp->ready = true;
	}
	return 0;
}

/* Descriptors open in this process now. */
static unsigned int fds_open(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned int n = 0;

	if (!d)
		return 64;	/* a guess: /proc is not mounted */
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/*
 * The broker holds per forked child a pidfd (its control socket is closed
 * once SETUP is sent), per attached service its connection, per helper a
 * pidfd and a control socket; each peer adds its region's memfd on the
 * memfd backend and two eventfds in eventfd mode (Debian 12's 6.1
 * kernel); a helper may add a pool fd.  Raise the soft RLIMIT_NOFILE to the hard one (the default soft 1024
 * ran out at ~250 children in eventfd mode), and say so when even that is
 * too few: -EMFILE from start, not a failure half-way through.
 */
static int fit_nofile(const struct ferry_broker *b)
{
	unsigned int per = 1 + (ferry_rctx_backend(b->rc) == FERRY_BACKEND_MEMFD) +
			   2 * (b->mode == FERRY_BELL_EVENTFD);
	uint64_t need = (uint64_t)(b->nslots_total + b->o.helpers) * per + 2 * b->o.helpers +
			fds_open() + 16;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return -errno;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			return -errno;
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		fprintf(stderr, "ferry: %u children and %u helpers need about %llu file "
			"descriptors; RLIMIT_NOFILE allows %llu (raise its hard limit)\n",
			b->nslots_total, b->o.helpers, (unsigned long long)need,
			(unsigned long long)rl.rlim_cur);
		return -EMFILE;
	}
	return 0;
}

static int start_children(struct ferry_broker *b)
{
	for (unsigned int i = 0; i < b->nchildren; i++) {
		struct bchild *c = &b->child[i];
		int err = ferry_child_slot_setup(b, i);
		pid_t pid;
		int ctl;

		if (err)
			return err;
		pid = ferry_spawn(&c->pidfd, &ctl);
		if (pid < 0)
			return (int)pid;
		if (pid == 0) {
			ferry_peer_affinity(b, -1);
			ferry_child_main(b, i, ctl);
		}
		c->pid = pid;
		c->ctl = ctl;
		c->alive = true;
		err = ferry_child_send_setup(b, i, c->pidfd);
		if (err)
			return err;
		/*
		 * A forked child needs nothing more on it (its death shows on
		 * the pidfd, the broker's on its PDEATHSIG): closed, so that
		 * the children forked after it do not each inherit and close
		 * one more fd.  (Fork cost grows with the broker's fd table.)
		 */
		close(c->ctl);
		c->ctl = -1;
	}
	return 0;
}

int ferry_broker_start(const struct ferry_broker_opts *o, struct ferry_broker **out)
{
	struct ferry_broker *b;
	const char *env;
	int err;

	if (!o || !out || o->helpers == 0 || !o->handler || (o->children && !o->child_fn) ||
	    o->window == 0 || o->window > 4096 || o->helper_depth == 0 ||
	    o->helper_depth > 1024 || o->region_size == 0 || o->children > 65536 ||
	    o->helpers > 4096 || o->max_attached > 65536 || o->gpu < FERRY_GPU_NONE ||
	    o->streams == 0 || o->streams > 64 || (o->flags & ~FERRY_HELPERS_EXACT))
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->o = *o;
	b->listen_fd = b->stop_efd = b->stats_fd = -1;
	b->ready_head = b->ready_tail = UINT32_MAX;
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	if (b->o.spin_ns == UINT64_MAX) {
		env = getenv("FERRY_SPIN_NS");
		b->o.spin_ns = env && *env ? strtoull(env, NULL, 0) : DEFAULT_SPIN_NS;
	}
	b->oversub = o->children + o->helpers + 1 > ferry_cpus_usable();
	err = pick_dispatch_cpu(b);
	if (err)
		goto fail;
	if (o->gpu != FERRY_GPU_NONE) {
		b->ngpus = ferry_gpu_probe(b->gpu_node);
		if (b->ngpus < 0)
			b->ngpus = 0;
		if (o->gpu >= 0 && o->gpu >= b->ngpus) {
			fprintf(stderr, "ferry: GPU %d asked for, %d found\n", o->gpu, b->ngpus);
			err = -ENODEV;
			goto fail;
		}
		/*
		 * Every GPU gets a helper: helper h serves GPU h % ngpus and
		 * child i is placed on GPU i % ngpus, so with fewer helpers
		 * than GPUs the children of a GPU without one were never
		 * served.  Start one per GPU at least, and say so.
		 */
		if (o->gpu == FERRY_GPU_AUTO && b->ngpus > (int)b->o.helpers &&
		    (o->flags & FERRY_HELPERS_EXACT)) {
			fprintf(stderr, "ferry: %d GPUs and exactly %u helper(s) asked for: "
				"the children of %d GPU(s) would have no helper\n",
				b->ngpus, b->o.helpers, b->ngpus - (int)b->o.helpers);
			err = -EINVAL;
			goto fail;
		}
		if (o->gpu == FERRY_GPU_AUTO && b->ngpus > (int)b->o.helpers) {
			fprintf(stderr, "ferry: %d GPUs, %u helper(s) asked for: starting %d, "
				"one per GPU\n", b->ngpus, b->o.helpers, b->ngpus);
			b->o.helpers = (unsigned int)b->ngpus;
			b->oversub = o->children + b->o.helpers + 1 > ferry_cpus_usable();
		}
	}
	b->nchildren = o->children;
	b->nslots_total = o->children + (o->attach_path ? o->max_attached : 0);
	b->nslots_child = pow2_at_least(o->window);
	b->nslots_helper = pow2_at_least(o->helper_depth + 2 * b->nslots_total + 8);
	if (b->nslots_helper > 65536)
		b->nslots_helper = 65536;
	b->chan_bytes_child = ferry_page_round(ferry_chan_bytes(b->nslots_child));
	b->nslot = b->o.helpers * o->helper_depth;
	b->child = calloc(b->nslots_total ? b->nslots_total : 1, sizeof(*b->child));
	b->helper = calloc(b->o.helpers, sizeof(*b->helper));
	b->slot = calloc(b->nslot, sizeof(*b->slot));
	b->slot_free = calloc(b->nslot, sizeof(*b->slot_free));
	b->arm = calloc(b->nslots_total ? b->nslots_total : 1, sizeof(*b->arm));
	b->served = calloc(b->o.helpers, sizeof(*b->served));
	b->served_snap = calloc(b->o.helpers, sizeof(*b->served_snap));
	if (!b->child || !b->helper || !b->slot || !b->slot_free || !b->arm || !b->served ||
	    !b->served_snap) {
		err = -ENOMEM;
		goto fail;
	}
	for (unsigned int s = b->nslot; s-- > 0;)
		b->slot_free[b->nslot_free++] = s;
	for (unsigned int i = 0; i < b->nslots_total; i++)
		b->child[i].pidfd = b->child[i].ctl = -1;
	for (unsigned int h = 0; h < b->o.helpers; h++)
		b->helper[h].pidfd = b->helper[h].ctl = -1;
	err = ferry_rctx_open(o->backend, &b->rc);
	if (err)
		goto fail;
	/* Sources: a bell + a pidfd/conn per peer, a helper's full control
	 * socket, the listening and stats sockets, the stop fd. */
	err = ferry_waitset_create(2 * b->nslots_total + 3 * b->o.helpers + 4, false, &b->ws);
	if (err)
		goto fail;
	b->mode = ferry_waitset_mode(b->ws);
	err = fit_nofile(b);
	if (err)
		goto fail;
	b->stop_efd = eventfd(0, EFD_CLOEXEC);
	if (b->stop_efd < 0) {
		err = -errno;
		goto fail;
	}
	err = ferry_bpool_setup(b);
	if (err)
		goto fail;
	/* Helpers first: children's regions are then added to running helpers. */
	for (unsigned int h = 0; h < b->o.helpers; h++) {
		err = ferry_helper_start(b, h);
		if (err)
			goto fail;
	}
	err = helpers_ready(b);
	if (err)
		goto fail;
	err = start_children(b);
	if (err)
		goto fail;
	if (o->attach_path) {
		err = ferry_attach_listen(b);
		if (err)
			goto fail;
	}
	if (o->stats_path) {
		err = ferry_stats_listen(b);
		if (err)
			goto fail;
	}
	err = pthread_create(&b->thread, NULL, ferry_dispatch_main, b);
	if (err) {
		err = -err;
		goto fail;
	}
	b->thread_started = true;
	if (pthread_getcpuclockid(b->thread, &b->cpu_clock))
		b->cpu_clock = (clockid_t)-1;
	*out = b;
	return 0;
fail:
	ferry_broker_stop(b);
	return err;
}

enum ferry_backend ferry_broker_backend(const struct ferry_broker *b)
{
	return ferry_rctx_backend(b->rc);
}

pid_t ferry_broker_child_pid(const struct ferry_broker *b, unsigned int i)
{
	return i < b->nslots_total && b->child[i].used ? b->child[i].pid : -1;
}

pid_t ferry_broker_helper_pid(const struct ferry_broker *b, unsigned int i)
{
	return i < b->o.helpers && b->helper[i].alive ? b->helper[i].pid : -1;
}

int ferry_broker_wait(struct ferry_broker *b, int64_t timeout_ns)
{
	struct timespec dl;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &dl);
	if (timeout_ns >= 0) {
		dl.tv_sec += timeout_ns / 1000000000;
		dl.tv_nsec += timeout_ns % 1000000000;
		if (dl.tv_nsec >= 1000000000) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&b->lock);
	while (b->exited < b->nchildren && ret == 0) {
		if (timeout_ns < 0)
			pthread_cond_wait(&b->cond, &b->lock);
		else if (pthread_cond_timedwait(&b->cond, &b->lock, &dl) == ETIMEDOUT)
			ret = -ETIMEDOUT;
	}
	if (ret == 0)
		ret = (int)b->failed;
	pthread_mutex_unlock(&b->lock);
	return ret;
}

int ferry_broker_stats(struct ferry_broker *b, struct ferry_broker_stats *out)
{
	struct timespec ts;

	pthread_mutex_lock(&b->lock);
	*out = b->snap;
	/*
	 * The dispatch thread's CPU time is read here, from its clock, rather
	 * than by the thread itself (a system call per turn).  While we hold
	 * the lock it cannot finish: it takes the lock to set thread_done.
	 */
	if (b->thread_started && !b->thread_done && b->cpu_clock != (clockid_t)-1 &&
	    clock_gettime(b->cpu_clock, &ts) == 0)
		out->dispatch_cpu_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	pthread_mutex_unlock(&b->lock);
	return 0;
}

uint64_t ferry_broker_helper_served(struct ferry_broker *b, unsigned int i)
{
	uint64_t v = 0;

	pthread_mutex_lock(&b->lock);
	if (i < b->o.helpers)
		v = b->served_snap[i];
	pthread_mutex_unlock(&b->lock);
	return v;
}

static void kill_reap(pid_t pid, int pidfd, bool ours)
{
	if (pidfd >= 0)
		ferry_pidfd_kill(pidfd, SIGKILL);
	if (ours && pid > 0)
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
}

void ferry_broker_stop(struct ferry_broker *b)
{
	if (!b)
		return;
	if (b->thread_started) {
		uint64_t one = 1;

		if (write(b->stop_efd, &one, sizeof(one)) < 0)
			abort();	/* an eventfd write of 1 cannot fail */
		pthread_join(b->thread, NULL);
	}
	for (unsigned int h = 0; b->helper && h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];

		if (hp->pid > 0 && hp->alive)
			kill_reap(hp->pid, hp->pidfd, true);
		if (hp->pidfd >= 0)
			close(hp->pidfd);
		if (hp->ctl >= 0)
			close(hp->ctl);
		if (hp->chan.region)
			ferry_bchan_destroy(&hp->chan);
		free(hp->outbox);
	}
	for (unsigned int i = 0; b->child && i < b->nslots_total; i++) {
		struct bchild *c = &b->child[i];

		if (c->alive && !c->attached)
			kill_reap(c->pid, c->pidfd, true);
		if (c->pidfd >= 0)
			close(c->pidfd);
		if (c->ctl >= 0)
			close(c->ctl);
		if (c->chan.region)
			ferry_bchan_destroy(&c->chan);
	}
	if (b->listen_fd >= 0) {
		close(b->listen_fd);
		if (b->attach_path)
			unlink(b->attach_path);
	}
	free(b->attach_path);
	if (b->stats_fd >= 0) {
		close(b->stats_fd);
		unlink(b->stats_path);
	}
	free(b->stats_path);
	if (b->stop_efd >= 0)
		close(b->stop_efd);
	if (b->ws)
		ferry_waitset_destroy(b->ws);
	ferry_bpool_destroy(b);
	ferry_rctx_close(b->rc);
	pthread_mutex_destroy(&b->lock);
	pthread_cond_destroy(&b->cond);
	free(b->child);
	free(b->helper);
	free(b->slot);
	free(b->slot_free);
	free(b->arm);
	free(b->served);
	free(b->served_snap);
	free(b);
}
