// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The broker's peers: a slot per child (forked or attached) and per
 * helper, each with its region and channel; how a peer is started (its
 * ferry_peer_cfg filled, forked, granted, told its SETUP), how a dead
 * one's slot is reclaimed, and how a helper is restarted (at once, or
 * with backoff while it keeps failing its init).  The order is what
 * keeps isolation:
 *   1. create the region, format its channel (and heap);
 *   2. fork: the new process holds only its control socket;
 *   3. grant the region to the new pid (kmod) and send it what it may map.
 * Rights (kmod): helpers get READ|WRITE|PIN on every region they map (CUDA
 * registers child regions, and a helper waits on futexes in its channel);
 * a child gets READ|WRITE on its region, so its heap stays out of reach
 * of get_user_pages (no pin outlives its revoke), and READ|WRITE|PIN on
 * the region's head alone, the channel words it sleeps on.  What helpers
 * are told of child regions is helper_ctl.c's.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker_internal.h"
#include "peer.h"

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

bool ferry_child_heap_has(const struct ferry_broker *b, uint32_t i, uint64_t off, uint64_t len)
{
	size_t rsize = ferry_region_size(b->child[i].chan.region);

	return !len || (off >= b->chan_bytes_child && off <= rsize && len <= rsize - off);
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
	size_t chan_bytes, bytes = ferry_helper_region_bytes(b, &chan_bytes);
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
	hp->tables = (uint8_t *)ferry_region_base(hp->chan.region) + chan_bytes;
	hp->arena = -1;
	hp->arena_shm = (struct ferry_arena_shm *)((uint8_t *)ferry_region_base(hp->chan.region) +
						   bytes - ferry_arena_shm_bytes());
	struct ferry_peer_cfg cfg = {
		.index = h, .handler = b->o.handler, .helper_init = b->o.helper_init,
		.batch_handler = b->o.batch_handler,
		.helper_batch = b->o.helper_batch ? b->o.helper_batch : b->o.helper_depth,
		.helper_arg = b->o.helper_arg, .gpu = ferry_helper_gpu_of(b, h),
		.streams = b->o.streams, .helper_depth = b->o.helper_depth,
	};

	pid = ferry_spawn(&hp->pidfd, &ctl);
	if (pid < 0) {
		ferry_bchan_destroy(&hp->chan);
		return (int)pid;
	}
	if (pid == 0) {
		ferry_peer_affinity(b, ferry_node_of_helper(b, h));
		ferry_helper_main(&cfg, ctl);
	}
	hp->pid = pid;
	hp->ctl = ctl;
	hp->alive = true;
	ctl_sndbuf(ctl);
	err = ferry_region_grant(hp->chan.region, hp->pidfd, FERRY_READ | FERRY_WRITE | FERRY_PIN);
	if (!err) {
		struct ferry_ctl m = { 0 };
		int pool_fd = ferry_bpool_for_helper(b, h, &m);

		err = send_setup(b, hp->ctl, h, &hp->chan, b->nslots_helper, chan_bytes, &m,
				 pool_fd);
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
	ferry_bpool_helper_arena(b, h);
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

int ferry_helpers_ready(struct ferry_broker *b)
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
 * pidfd and a control socket; each peer adds its region's memfd (on kmod
 * too: ferry_region_create keeps it open) and two eventfds in eventfd
 * mode (Debian 12's 6.1 kernel); a helper may add a pool fd.  Raise the soft RLIMIT_NOFILE to the hard one (the default soft 1024
 * ran out at ~250 children in eventfd mode), and say so when even that is
 * too few: -EMFILE from start, not a failure half-way through.
 */
int ferry_peers_fit_nofile(const struct ferry_broker *b)
{
	unsigned int per = 2 + 2 * (b->mode == FERRY_BELL_EVENTFD);
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

int ferry_children_start(struct ferry_broker *b)
{
	int err;

	if (!b->nchildren)
		return 0;
	/* Before any child's region exists: the spawner holds none of them. */
	err = ferry_spawner_start(b);
	if (err)
		return err;
	for (unsigned int i = 0; i < b->nchildren; i++) {
		struct bchild *c = &b->child[i];
		pid_t pid;
		int ctl, sv[2];

		err = ferry_child_slot_setup(b, i);
		if (err)
			return err;
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			return -errno;
		pid = ferry_spawner_spawn(b, i, sv[1], &c->pidfd);
		close(sv[1]);
		if (pid < 0) {
			close(sv[0]);
			return (int)pid;
		}
		ctl = sv[0];
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

/*
 * Restart backoff.  A helper that dies before its init went through (an
 * init that fails, CUDA that cannot start: no READY with status 0 on its
 * control socket) is restarted after 50 ms, doubling up to 5 s while it
 * keeps failing: at most 20 restarts a second, never a fork loop.  One
 * that had started restarts at once.  Requests wait for a live helper
 * meanwhile.
 */
#define HELPER_BACKOFF_MIN_NS	50000000ull
#define HELPER_BACKOFF_MAX_NS	5000000000ull

/* A READY with status 0 waits in the helper's control socket. */
bool ferry_helper_said_ready(int sock)
{
	struct ferry_ctl m;
	int fds[FERRY_CTL_MAX_FDS];
	unsigned int nfds;

	for (int n = 0; n < 16; n++) {	/* a POOL may come first */
		nfds = 0;
		if (ferry_ctl_recv(sock, &m, fds, &nfds, MSG_DONTWAIT))
			return false;
		for (unsigned int i = 0; i < nfds; i++)
			close(fds[i]);
		if (m.type == FERRY_CTL_READY)
			return m.status == 0;
	}
	return false;
}

static void start_helper_now(struct ferry_broker *b, uint32_t h);

void ferry_helper_restart(struct ferry_broker *b, uint32_t h)
{
	struct bhelper *hp = &b->helper[h];
	unsigned int q = hp->quick_deaths;

	if (q) {
		uint64_t delay = q > 8 ? HELPER_BACKOFF_MAX_NS : HELPER_BACKOFF_MIN_NS << (q - 1);

		if (delay > HELPER_BACKOFF_MAX_NS)
			delay = HELPER_BACKOFF_MAX_NS;
		if (!hp->restart_pending)
			b->restarts_pending++;
		hp->restart_pending = true;
		hp->restart_ns = ferry_now_ns() + delay;
		b->st.helper_backoffs++;
		return;
	}
	start_helper_now(b, h);
}

static void start_helper_now(struct ferry_broker *b, uint32_t h)
{
	if (ferry_helper_start(b, h) == 0) {
		b->st.helper_restarts++;
	} else if (b->helper[h].pid > 0) {
		/* Half-started: kill it; its pidfd fires and we try again. */
		ferry_pidfd_kill(b->helper[h].pidfd, SIGKILL);
	} else {
		/* Not even forked (out of memory, processes): later. */
		b->helper[h].quick_deaths++;
		ferry_helper_restart(b, h);
	}
}

/* Restart the helpers whose backoff ended; ns until the next one, or -1. */
int64_t ferry_helper_restart_due(struct ferry_broker *b)
{
	uint64_t now = ferry_now_ns(), next = UINT64_MAX;

	if (!b->restarts_pending)
		return -1;
	for (uint32_t h = 0; h < b->o.helpers; h++) {
		struct bhelper *hp = &b->helper[h];

		if (!hp->restart_pending)
			continue;
		if (hp->restart_ns <= now) {
			hp->restart_pending = false;
			b->restarts_pending--;
			start_helper_now(b, h);
		}
		if (hp->restart_pending && hp->restart_ns < next)
			next = hp->restart_ns;
	}
	return next == UINT64_MAX ? -1 : (int64_t)(next > now ? next - now : 0);
}
