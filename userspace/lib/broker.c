// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The broker's life: options, start (placement, pools, helpers, then
 * children, then the dispatch thread), wait, stats and stop.  Peers are
 * set up and torn down in peers.c, placed by placement.c, served by the
 * dispatch thread (dispatch.c).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker_internal.h"
#include "sized.h"

#define DEFAULT_WINDOW 8
#define DEFAULT_DEPTH 8
#define DEFAULT_SPIN_NS 20000
#define DEFAULT_STREAMS 4

/* The one place the options' defaults live (sized.c hands them out). */
void ferry_broker_opts_defaults(struct ferry_broker_opts *o)
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

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 2;

	while (p < n)
		p <<= 1;
	return p;
}

int ferry_broker_start_opts(const struct ferry_broker_opts *o, struct ferry_broker **out)
{
	struct ferry_broker *b;
	const char *env;
	int err;

	if (!o || !out || o->helpers == 0 || !o->handler == !o->batch_handler ||
	    o->helper_batch > o->helper_depth || (o->children && !o->child_fn) ||
	    o->window == 0 || o->window > 4096 || o->helper_depth == 0 ||
	    o->helper_depth > 1024 || o->region_size == 0 || o->children > 65536 ||
	    o->helpers > 4096 || o->max_attached > 65536 || o->gpu < FERRY_GPU_NONE ||
	    o->streams == 0 || o->streams > 64 ||
	    (o->flags & ~(FERRY_HELPERS_EXACT | FERRY_CHILDREN_MAP_POOL | FERRY_DISPATCH_POLL |
			  FERRY_DISPATCH_SLEEP)) ||
	    (o->flags & FERRY_DISPATCH_POLL && o->flags & FERRY_DISPATCH_SLEEP) ||
	    (o->pool_size && o->helper_pool_bytes > o->pool_size))
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->o = *o;
	b->listen_fd = b->stop_efd = b->stats_fd = -1;
	b->spawner = b->spawner_pidfd = -1;
	b->ready_head = b->ready_tail = UINT32_MAX;
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	if (b->o.spin_ns == UINT64_MAX) {
		env = getenv("FERRY_SPIN_NS");
		b->o.spin_ns = env && *env ? strtoull(env, NULL, 0) : DEFAULT_SPIN_NS;
	}
	b->oversub = o->children + o->helpers + 1 > ferry_cpus_usable();
	err = ferry_place_dispatch_cpu(b);
	if (err)
		goto fail;
	env = getenv("FERRY_DISPATCH_POLL");
	if (env && *env) {
		b->poll = strcmp(env, "0") != 0;
		b->await = false;
	} else {
		b->poll = o->flags & FERRY_DISPATCH_POLL ? true :
			  o->flags & FERRY_DISPATCH_SLEEP ? false : b->dispatch_cpu >= 0;
		b->await = !b->poll && !(o->flags & FERRY_DISPATCH_SLEEP);
	}
	err = ferry_place_gpus(b);
	if (err)
		goto fail;
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
	err = ferry_peers_fit_nofile(b);
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
	err = ferry_helpers_ready(b);
	if (err)
		goto fail;
	err = ferry_children_start(b);
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

void ferry_broker_stats_read(struct ferry_broker *b, struct ferry_broker_stats *out)
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
			kill_reap(c->pid, c->pidfd, false);	/* the spawner's to reap */
		if (c->pidfd >= 0)
			close(c->pidfd);
		if (c->ctl >= 0)
			close(c->ctl);
		if (c->chan.region)
			ferry_bchan_destroy(&c->chan);
	}
	ferry_spawner_stop(b);
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
