// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Helpers on a GPU, through the broker (skipped with the reason where there
 * is no GPU): each child region is registered with CUDA (pinned) by every
 * helper; requests copy a child's random bytes host -> device -> host on
 * the helper's streams with deferred replies, checked byte for byte; a
 * child that exits is unregistered; a helper killed mid-run is replaced by
 * one that registers the regions again.
 *
 * The broker forks its helpers: this process must not touch CUDA before,
 * so the GPU is looked for in a throwaway child.
 */
#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cuda_api.h"
#include "ferry.h"
#include "kselftest_harness.h"

enum { OP_COPY = 1, OP_PINNED = 2, OP_WHERE = 3, OP_POOL_COPY = 4, OP_POOL_MAKE = 5,
       OP_HOLD = 6, OP_WORK = 7, OP_BOUNCE = 8 };
#define SCRATCH (4u << 20)

/* GPUs seen by a forked child (CUDA stays out of this process); why if none. */
static int gpus_elsewhere(char *why, size_t len)
{
	int p[2], n = 0, status;
	pid_t pid;

	if (pipe(p))
		return -errno;
	pid = fork();
	if (pid == 0) {
		int c = ferry_gpu_count();
		const char *w = c > 0 ? "" : ferry_gpu_status();

		if (write(p[1], &c, sizeof(c)) != sizeof(c) ||
		    write(p[1], w, strlen(w) + 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(p[1]);
	if (read(p[0], &n, sizeof(n)) != sizeof(n))
		n = -EIO;
	why[0] = 0;
	if (read(p[0], why, len - 1) < 0)
		why[0] = 0;
	why[len - 1] = 0;
	close(p[0]);
	waitpid(pid, &status, 0);
	return n;
}

#define NEED_GPU()								\
	do {									\
		char why_[256];							\
		if (gpus_elsewhere(why_, sizeof(why_)) < 1)			\
			SKIP(return, "no usable GPU: %s", why_);		\
	} while (0)

static CUdeviceptr scratch;	/* per helper process, made in helper_init */

/*
 * A stream kept busy after the reply (OP_HOLD): a host function that
 * returns once @release is set, in memory shared by the test's processes.
 */
struct hold {
	_Atomic int release, phase;
	_Atomic uint64_t block;
};
static struct hold *hold;

static void CUDA_CB hold_stream(void *arg)
{
	struct hold *hd = arg;

	for (int i = 0; i < 60000 && !atomic_load(&hd->release); i++)
		usleep(1000);
}
/* OP_WORK: the stream is busy arg[0] us (a host function that sleeps). */
static void CUDA_CB work_stream(void *arg)
{
	uint64_t us = (uint64_t)(uintptr_t)arg;
	struct timespec ts = { .tv_sec = (time_t)(us / 1000000),
			       .tv_nsec = (long)(us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *streams_seen[4];	/* the helper's streams, in the order met */

static int helper_init(struct ferry_helper *h, void *arg)
{
	struct ferry_cuda *cu;

	(void)arg;
	if (ferry_helper_gpu(h) < 0 || ferry_cuda_get(&cu))
		return -ENODEV;
	return ferry_cuda_errno(cu->cuMemAlloc(&scratch, SCRATCH));
}

/*
 * OP_COPY: [offset, len) -> device -> [arg[0], len) on one of the helper's
 * streams, replied to when the stream is done; arg[1] says which stream.
 * OP_PINNED: arg[0] = this region pinned?, arg[1] = pid, arg[2] = count.
 */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	struct ferry_cuda *cu;
	void *in, *out, *st;
	CUdeviceptr dev;
	unsigned int k;

	(void)arg;
	if (ferry_cuda_get(&cu))
		return -ENODEV;
	if (req->op == OP_WHERE) {
		/* arg[0]: node of the region's page at offset; arg[1]: CPUs this
		 * helper may use that are on another node. */
		void *page = ferry_helper_data(h, req, req->offset, 1);
		int node = -1, off_node = 0;
		cpu_set_t set;

		if (!page || move_pages(0, 1, &page, NULL, &node, 0) ||
		    sched_getaffinity(0, sizeof(set), &set))
			return -EFAULT;
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &set) && numa_node_of_cpu(c) != node)
				off_node++;
		rep->arg[0] = (uint64_t)node;
		rep->arg[1] = (uint64_t)off_node;
		return 0;
	}
	if (req->op == OP_POOL_COPY) {
		/* Device to device inside the pool: table entry 0 -> entry 1. */
		const struct ferry_tensor *t;
		CUdeviceptr a, z;

		if (ferry_helper_tensors(h, req, &t) != 2 || t[0].nbytes != t[1].nbytes)
			return -EINVAL;
		a = ferry_helper_tensor_addr(h, req, &t[0]);
		z = ferry_helper_tensor_addr(h, req, &t[1]);
		if (!a || !z)
			return -EFAULT;
		st = ferry_helper_stream(h);
		if (cu->cuMemcpyDtoDAsync(z, a, t[0].nbytes, (CUstream)st))
			return -EIO;
		rep->arg[1] = (uint64_t)getpid();
		return ferry_helper_defer(h, rep, st) ? -EIO : FERRY_DEFERRED;
	}
	if (req->op == OP_POOL_MAKE) {
		/* An output only the helper sizes: arg[0] bytes of arg[1]. */
		uint64_t off;
		int err;

		st = ferry_helper_stream(h);
		err = ferry_helper_pool_alloc(h, req, req->arg[0], st, &off);
		if (err)
			return err;
		dev = ferry_helper_pool_addr(h, off, req->arg[0]);
		if (!dev || cu->cuMemsetD8Async(dev, (unsigned char)req->arg[1], req->arg[0],
						(CUstream)st))
			return -EIO;
		rep->flags = FERRY_DESC_POOL;
		rep->offset = off;
		rep->len = req->arg[0];
		return ferry_helper_defer(h, rep, st) ? -EIO : FERRY_DEFERRED;
	}
	if (req->op == OP_HOLD) {
		/* Work left on a stream, and a reply that does not wait for it. */
		st = ferry_helper_stream(h);
		if (!hold || cu->cuLaunchHostFunc((CUstream)st, hold_stream, hold))
			return -EIO;
		return 0;
	}
	if (req->op == OP_WORK) {
		/* arg[1], arg[2]: the CPU time of the helper's thread (the one
		 * that waits; the driver's threads are the driver's) and the
		 * time, now. */
		st = ferry_helper_stream(h);
		if (req->arg[0] > 1000000 ||
		    cu->cuLaunchHostFunc((CUstream)st, work_stream, (void *)(uintptr_t)req->arg[0]))
			return -EINVAL;
		rep->arg[1] = clock_ns(CLOCK_THREAD_CPUTIME_ID);
		rep->arg[2] = clock_ns(CLOCK_MONOTONIC);
		return ferry_helper_defer(h, rep, st) ? -EIO : FERRY_DEFERRED;
	}
	if (req->op == OP_PINNED) {
		rep->arg[0] = ferry_helper_pinned(h, req);
		rep->arg[1] = (uint64_t)getpid();
		rep->arg[2] = ferry_helper_pinned_count(h);
		return 0;
	}
	in = ferry_helper_data(h, req, req->offset, req->len);
	out = ferry_helper_data(h, req, req->arg[0], req->len);
	if (!in || !out || req->len > SCRATCH / 4)
		return -EFAULT;
	if (!ferry_helper_pinned(h, req))
		return -ENOLINK;
	st = ferry_helper_stream(h);
	/* A quarter of the scratch per stream: work on one stream runs in
	 * order, work on different streams never shares device bytes. */
	for (k = 0; k < 4 && streams_seen[k] && streams_seen[k] != st; k++)
		;
	if (k == 4)
		return -ENOSPC;	/* more streams than opts.streams */
	streams_seen[k] = st;
	dev = scratch + k * (SCRATCH / 4);
	if (cu->cuMemcpyHtoDAsync(dev, in, req->len, (CUstream)st) ||
	    cu->cuMemcpyDtoHAsync(out, dev, req->len, (CUstream)st))
		return -EIO;
	rep->arg[1] = (uint64_t)(uintptr_t)st;
	if (ferry_helper_defer(h, rep, st))
		return -EIO;
	return FERRY_DEFERRED;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		p[i] = (uint8_t)(seed >> 24);
	}
}

#define NBUF 4

/* Windows of 4 copies of random sizes, every byte checked; distinct streams seen. */
static int copier(struct ferry_child *c, void *arg)
{
	uint8_t *in[NBUF], *out[NBUF];
	uint64_t streams[8] = { 0 };
	unsigned int nstreams = 0;
	struct ferry_desc d, rep;

	(void)arg;
	for (int k = 0; k < NBUF; k++) {
		in[k] = ferry_malloc(c, 1 << 20);
		out[k] = ferry_malloc(c, 1 << 20);
		if (!in[k] || !out[k])
			return 2;
	}
	for (unsigned int round = 0; round < 50; round++) {
		size_t len[NBUF];

		for (int k = 0; k < NBUF; k++) {
			len[k] = 1 + (round * 7919u + k * 104729u) % (1 << 20);
			fill(in[k], len[k], round * NBUF + k + 1);
			memset(out[k], 0, len[k]);
			d = (struct ferry_desc){ .op = OP_COPY, .tag = (uint64_t)k,
				.offset = ferry_offset(c, in[k]), .len = len[k],
				.arg = { ferry_offset(c, out[k]) } };
			if (ferry_submit(c, &d))
				return 3;
		}
		for (int k = 0; k < NBUF; k++) {
			unsigned int s;

			if (ferry_complete(c, &rep, -1) || rep.status)
				return 4;
			if (rep.tag >= NBUF || memcmp(in[rep.tag], out[rep.tag], len[rep.tag]))
				return 5;
			for (s = 0; s < nstreams && streams[s] != rep.arg[1]; s++)
				;
			if (s == nstreams && nstreams < 8)
				streams[nstreams++] = rep.arg[1];
		}
	}
	return nstreams >= 2 ? 0 : 6;
}

static void opts_for(struct ferry_broker_opts *o, unsigned int children, unsigned int helpers)
{
	ferry_broker_opts_init(o);
	o->children = children;
	o->helpers = helpers;
	o->region_size = 16u << 20;	/* 8 MiB of buffers + the heap's own */
	o->window = NBUF;
	o->handler = handler;
	o->helper_init = helper_init;
	o->gpu = FERRY_GPU_AUTO;
	o->streams = 4;
}

TEST(pinned_regions_copied_on_streams_with_deferred_replies)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	NEED_GPU();
	opts_for(&o, 3, 2);
	o.child_fn = copier;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(3 * 50 * NBUF, st.replies);
	EXPECT_EQ(0, st.failed_back);
	ferry_broker_stop(b);
}

/*
 * A batch handler over the same ops: each request's reply deferred on its
 * own stream; those with arg[2] set are then answered at once after all
 * (-ECANCELED): that reply goes once, its deferred one never.
 */
static void batch(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		  unsigned int n, void *arg)
{
	const struct ferry_desc *bounce[64];
	unsigned int m = 0;

	/* OP_BOUNCE: table entry 0 of each into the scratch at once, back
	 * into entry 1 of each, on one stream (always the same: batches
	 * share the scratch, so they go in stream order); every reply
	 * deferred there. */
	static void *bounce_stream;

	for (unsigned int k = 0; k < n && m < 64; k++)
		if (req[k].op == OP_BOUNCE)
			bounce[m++] = &req[k];
	if (m) {
		void *st = bounce_stream ? bounce_stream : (bounce_stream = ferry_helper_stream(h));
		int64_t got = ferry_helper_gather(h, bounce, m, 0, scratch, SCRATCH, st);

		if (got > 0)
			got = ferry_helper_scatter(h, bounce, m, 1, scratch, (size_t)got, st);
		struct ferry_desc *reps[64];
		int err = 0;

		for (unsigned int k = 0; k < m; k++)
			reps[k] = &rep[bounce[k] - req];
		/* All at once (one wake-up); twice is refused. */
		if (got >= 0)
			err = ferry_helper_defer_all(h, reps, m, st);
		if (!err && ferry_helper_defer_all(h, reps, m, st) != -EINVAL)
			err = -EPROTO;
		for (unsigned int k = 0; k < m; k++)
			reps[k]->status = got < 0 ? (int32_t)got : err ? err : FERRY_DEFERRED;
	}
	for (unsigned int k = 0; k < n; k++) {
		if (req[k].op == OP_BOUNCE)
			continue;
		rep[k].status = handler(h, &req[k], &rep[k], arg);
		if (req[k].arg[2] && rep[k].status == FERRY_DEFERRED)
			rep[k].status = -ECANCELED;
	}
}

/* Windows of 4 copies; the second and fourth are cancelled after deferral. */
static int batch_copier(struct ferry_child *c, void *arg)
{
	uint8_t *in[NBUF], *out[NBUF];
	struct ferry_desc d, rep;

	(void)arg;
	for (int k = 0; k < NBUF; k++) {
		in[k] = ferry_malloc(c, 1 << 16);
		out[k] = ferry_malloc(c, 1 << 16);
		if (!in[k] || !out[k])
			return 2;
	}
	for (unsigned int round = 0; round < 50; round++) {
		unsigned int seen = 0;

		for (int k = 0; k < NBUF; k++) {
			fill(in[k], 1 << 16, round * NBUF + k + 1);
			memset(out[k], 0, 1 << 16);
			d = (struct ferry_desc){ .op = OP_COPY, .tag = (uint64_t)k,
				.offset = ferry_offset(c, in[k]), .len = 1 << 16,
				.arg = { ferry_offset(c, out[k]), 0, k & 1 } };
			if (ferry_submit(c, &d))
				return 3;
		}
		for (int k = 0; k < NBUF; k++) {
			if (ferry_complete(c, &rep, -1) || rep.tag >= NBUF || seen & (1u << rep.tag))
				return 4;
			seen |= 1u << rep.tag;
			if (rep.tag & 1 ? rep.status != -ECANCELED :
			    rep.status || memcmp(in[rep.tag], out[rep.tag], 1 << 16))
				return 5;
		}
	}
	return ferry_outstanding(c) ? 6 : 0;
}

/* Rounds of 4 bounces of mixed sizes through the device, gathered. */
static int bouncer(struct ferry_child *c, void *arg)
{
	struct ferry_tensor *t[NBUF];
	uint8_t *x[NBUF], *y[NBUF];
	struct ferry_desc d, rep;

	(void)arg;
	for (int k = 0; k < NBUF; k++) {
		t[k] = ferry_malloc(c, 2 * sizeof(**t));
		x[k] = ferry_malloc(c, 1 << 16);
		y[k] = ferry_malloc(c, 1 << 16);
		if (!t[k] || !x[k] || !y[k])
			return 2;
	}
	for (unsigned int round = 0; round < 50; round++) {
		for (int k = 0; k < NBUF; k++) {
			uint64_t len = 1 + (round * 7919u + k * 104729u) % (1 << 16);

			fill(x[k], len, round * NBUF + k + 1);
			memset(y[k], 0, len);
			for (int e = 0; e < 2; e++)
				t[k][e] = (struct ferry_tensor){ .where = FERRY_IN_REGION,
					.dtype = FERRY_DT_U8, .ndim = 1,
					.offset = ferry_offset(c, e ? y[k] : x[k]), .nbytes = len,
					.shape = { (int64_t)len } };
			d = (struct ferry_desc){ .op = OP_BOUNCE, .tag = (uint64_t)k,
				.flags = FERRY_DESC_TENSORS, .offset = ferry_offset(c, t[k]),
				.len = 2 * sizeof(**t) };
			if (ferry_submit(c, &d))
				return 3;
		}
		for (int k = 0; k < NBUF; k++) {
			if (ferry_complete(c, &rep, -1) || rep.status || rep.tag >= NBUF)
				return 4;
			if (memcmp(x[rep.tag], y[rep.tag], t[rep.tag][0].nbytes))
				return 5;
		}
	}
	return 0;
}

TEST(batches_gathered_to_the_device_and_scattered_back)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	NEED_GPU();
	opts_for(&o, 3, 1);
	o.handler = NULL;
	o.batch_handler = batch;
	o.helper_depth = 12;
	o.child_fn = bouncer;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(3 * 50 * NBUF, st.replies);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

TEST(batch_handlers_defer_each_request_on_its_stream)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	NEED_GPU();
	opts_for(&o, 3, 1);
	o.handler = NULL;
	o.batch_handler = batch;
	o.helper_depth = 12;
	o.child_fn = batch_copier;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(3 * 50 * NBUF, st.replies);
	EXPECT_EQ(0, st.bad_reply);
	EXPECT_EQ(0, st.failed_back);
	ferry_broker_stop(b);
}

struct plan {
	_Atomic int phase;	/* 1: child 0 saw the others go; 2: helper killed */
	_Atomic int others_done;
};

static int ask(struct ferry_child *c, struct ferry_desc *rep)
{
	struct ferry_desc d = { .op = OP_PINNED };

	return ferry_call(c, &d, rep) ? -1 : rep->status;
}

/*
 * Child 0: waits for the others to exit, then sees the helper's count of
 * pinned regions fall to its own one; after the helper is killed, a new
 * helper (another pid) answers with its region pinned again.
 */
static int watcher(struct ferry_child *c, void *arg)
{
	struct plan *p = arg;
	struct ferry_desc rep;
	uint64_t first_pid;
	int tries;

	if (ferry_child_index(c) != 0) {
		int bad = ask(c, &rep) || !rep.arg[0];	/* pinned while alive */

		atomic_fetch_add(&p->others_done, 1);	/* done either way: nobody waits */
		return bad ? 10 : 0;
	}
	while (atomic_load(&p->others_done) < 2)
		usleep(1000);
	for (tries = 0; tries < 1000; tries++) {
		if (ask(c, &rep))
			return 11;
		if (rep.arg[0] == 1 && rep.arg[2] == 1)
			break;
		usleep(10000);
	}
	if (tries == 1000)
		return 12;	/* the exited children's regions stayed pinned */
	first_pid = rep.arg[1];
	atomic_store(&p->phase, 1);
	while (atomic_load(&p->phase) != 2)
		usleep(1000);
	for (tries = 0; tries < 3000; tries++) {
		int err = ask(c, &rep);

		if (err == 0 && rep.arg[1] != first_pid)
			return rep.arg[0] == 1 && rep.arg[2] == 1 ? 0 : 13;
		if (err && err != -EPIPE)
			return 14;
		usleep(10000);
	}
	return 15;
}

TEST(unpinned_when_a_child_goes_and_pinned_again_by_a_new_helper)
{
	struct plan *p = mmap(NULL, sizeof(*p), PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct timespec t0, t;
	pid_t old;

	NEED_GPU();
	ASSERT_NE(MAP_FAILED, p);
	opts_for(&o, 3, 1);
	o.child_fn = watcher;
	o.child_arg = p;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		usleep(1000);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (atomic_load(&p->phase) != 1 && t.tv_sec - t0.tv_sec < 60);
	ASSERT_EQ(1, atomic_load(&p->phase));
	old = ferry_broker_helper_pid(b, 0);
	ASSERT_EQ(0, kill(old, SIGKILL));
	atomic_store(&p->phase, 2);
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	EXPECT_NE(old, ferry_broker_helper_pid(b, 0));
	ferry_broker_stop(b);
	munmap(p, sizeof(*p));
}

/* The region's pages and the helper's CPUs are on one node (the GPU's). */
static int placed(struct ferry_child *c, void *arg)
{
	uint8_t *buf = ferry_malloc(c, 1 << 16);
	struct ferry_desc d = { .op = OP_WHERE }, rep;

	(void)arg;
	if (!buf)
		return 2;
	memset(buf, 1, 1 << 16);	/* first touch here, after the bind */
	d.offset = ferry_offset(c, buf);
	d.len = 1;
	if (ferry_call(c, &d, &rep) || rep.status)
		return 3;
	printf("# child %u: region page on node %llu, helper CPUs off that node: %llu\n",
	       ferry_child_index(c), (unsigned long long)rep.arg[0],
	       (unsigned long long)rep.arg[1]);
	return rep.arg[1] == 0 ? 0 : 4;
}

TEST(regions_and_helpers_on_the_gpus_node)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	NEED_GPU();
	opts_for(&o, 2, 2);
	o.child_fn = placed;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stop(b);
}

struct pool_plan {
	_Atomic int phase;	/* 1: blocks written, checked; 2: the maker is dead */
	_Atomic int others_done;
};

/* Copy in -> out inside the pool (asking the helper), then check out. */
static int pool_copy(struct ferry_child *c, struct ferry_cuda *cu, struct ferry_pool *p,
		     uint64_t in, uint64_t out, const uint8_t *want, uint8_t *got, size_t n,
		     uint64_t *pid)
{
	struct ferry_tensor *t = ferry_malloc(c, 2 * sizeof(*t));
	struct ferry_desc d = { .op = OP_POOL_COPY, .flags = FERRY_DESC_TENSORS }, rep;
	int err;

	if (!t)
		return -ENOMEM;
	for (int k = 0; k < 2; k++)
		t[k] = (struct ferry_tensor){ .where = FERRY_IN_POOL, .dtype = FERRY_DT_U8,
					      .ndim = 1, .offset = k ? out : in, .nbytes = n,
					      .shape = { (int64_t)n } };
	d.offset = ferry_offset(c, t);
	d.len = 2 * sizeof(*t);
	err = ferry_call(c, &d, &rep);
	ferry_free(c, t);

	if (err || rep.status)
		return err ? err : rep.status;
	*pid = rep.arg[1];
	memset(got, 0, n);
	if (cu->cuMemcpyDtoH(got, ferry_pool_addr(p, out, n), n))
		return -EIO;
	return memcmp(want, got, n) ? -EILSEQ : 0;
}

/*
 * A GPU pool through the broker: the child puts random bytes in (one
 * copy), a helper copies them on the device, the child reads them back.
 * After the helper that made the pool is killed, its replacement copies
 * the same block: the pool outlived its maker.
 */
static int pool_user_steps(struct ferry_child *c, struct pool_plan *pp)
{
	const size_t n = 3u << 20;
	uint8_t *want = malloc(n), *got = malloc(n);
	struct ferry_pool *p;
	struct ferry_cuda *cu;
	uint64_t in, out, pid0 = 0, pid = 0;
	int err;

	if (!want || !got)
		return 2;
	fill(want, n, 77 + ferry_child_index(c));
	if (ferry_child_pool(c, &p) || ferry_cuda_get(&cu) ||
	    ferry_cuda_use_device(cu, 0) || ferry_pool_kind(p) != FERRY_POOL_CUDA)
		return 3;
	if (ferry_child_pool_put(c, want, n, &in) || ferry_child_pool_alloc(c, n, &out))
		return 4;
	for (int k = 0; k < 4; k++) {
		err = pool_copy(c, cu, p, in, out, want, got, n, &pid0);
		if (err)
			return 5;
	}
	if (ferry_child_index(c) != 0) {
		atomic_fetch_add(&pp->others_done, 1);
		return 0;
	}
	/* None mid-request at the kill; a failed one ends the wait. */
	while (atomic_load(&pp->others_done) != 2 && atomic_load(&pp->phase) >= 0)
		usleep(1000);
	if (atomic_load(&pp->phase) < 0)
		return 0;
	atomic_store(&pp->phase, 1);
	while (atomic_load(&pp->phase) != 2)
		usleep(1000);
	for (int tries = 0; tries < 3000; tries++) {
		err = pool_copy(c, cu, p, in, out, want, got, n, &pid);
		if (err == 0 && pid != pid0)
			return 0;
		if (err && err != -EPIPE)
			return 6;
		usleep(10000);
	}
	return 7;
}

/* A child that fails says so in the phase (-its step), so nobody waits for it. */
static int pool_user(struct ferry_child *c, void *arg)
{
	struct pool_plan *pp = arg;
	int step = pool_user_steps(c, pp);

	if (step)
		atomic_store(&pp->phase, -step);
	return step;
}

TEST(gpu_pool_both_ways_outlives_its_maker)
{
	struct pool_plan *pp = mmap(NULL, sizeof(*pp), PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	pid_t maker;

	NEED_GPU();
	ASSERT_NE(MAP_FAILED, pp);
	opts_for(&o, 3, 1);
	o.child_fn = pool_user;
	o.child_arg = pp;
	o.pool_size = 64u << 20;
	o.flags |= FERRY_CHILDREN_MAP_POOL;	/* these children map it themselves */
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	for (int t = 0; t < 60000 && atomic_load(&pp->phase) == 0; t++)
		usleep(1000);
	ASSERT_EQ(1, atomic_load(&pp->phase)) TH_LOG("a child failed at step %d", -atomic_load(&pp->phase));
	maker = ferry_broker_helper_pid(b, 0);
	ASSERT_EQ(0, kill(maker, SIGKILL));
	atomic_store(&pp->phase, 2);
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(6, st.pool_allocs);
	EXPECT_EQ(0, st.bad_desc);
	ferry_broker_stop(b);
	munmap(pp, sizeof(*pp));
}

/* Whether this process has CUDA (the driver, or the fake one) mapped. */
static bool cuda_loaded(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	bool found = false;

	while (f && !found && fgets(line, sizeof(line), f))
		found = strstr(line, "cuda") != NULL;
	if (f)
		fclose(f);
	return found;
}

#define COPY_BYTES (32u << 20)

/* Put 32 MiB into a block of the GPU pool and get it back, by the helper. */
static int without_cuda(struct ferry_child *c, void *arg)
{
	uint8_t *src = malloc(COPY_BYTES), *back = malloc(COPY_BYTES);
	uint64_t off;

	(void)arg;
	if (!src || !back)
		return 1;
	fill(src, COPY_BYTES, 5 + ferry_child_index(c));
	memset(back, 0, COPY_BYTES);
	if (ferry_child_pool_put(c, src, COPY_BYTES, &off))
		return 2;
	if (ferry_child_pool_get(c, off, back, COPY_BYTES) || memcmp(src, back, COPY_BYTES))
		return 3;
	if (ferry_child_pool_free(c, off))
		return 4;
	return cuda_loaded() ? 5 : 0;	/* the copies were the helper's */
}

TEST(children_copy_through_helpers_without_cuda)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	NEED_GPU();
	opts_for(&o, 2, 1);
	o.child_fn = without_cuda;
	o.pool_size = 128u << 20;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(2, st.pool_allocs);
	EXPECT_EQ(0, st.bad_desc);
	ferry_broker_stop(b);
}

/* Outputs the helper sizes and makes on its stream, read back by copies. */
static int outputs(struct ferry_child *c, void *arg)
{
	uint8_t *back = malloc(4u << 20);
	uint64_t n;

	(void)arg;
	if (!back)
		return 1;
	for (unsigned int k = 0; k < 200; k++) {
		struct ferry_desc d = { .op = OP_POOL_MAKE }, rep;

		n = 1 + (k * 104729u) % (4u << 20);
		d.arg[0] = n;
		d.arg[1] = k & 0xff;
		if (ferry_call(c, &d, &rep) || rep.status || rep.flags != FERRY_DESC_POOL)
			return 2;
		memset(back, ~k & 0xff, n);
		if (ferry_child_pool_get(c, rep.offset, back, n))
			return 3;
		for (uint64_t i = 0; i < n; i++)
			if (back[i] != (k & 0xff))
				return 4;
		if (ferry_child_pool_free(c, rep.offset))
			return 5;
	}
	free(back);
	return cuda_loaded() ? 6 : 0;
}

TEST(outputs_made_by_gpu_helpers_for_children)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	NEED_GPU();
	opts_for(&o, 2, 2);
	o.child_fn = outputs;
	o.pool_size = 128u << 20;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(400, st.pool_allocs);
	EXPECT_EQ(400, st.pool_frees);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

#define HOLD_BYTES (40u << 20)	/* of a 64 MiB pool: one fits at a time */

static bool wait_phase(int want)
{
	for (int i = 0; i < 60000; i++) {
		if (atomic_load(&hold->phase) >= want)
			return true;
		usleep(1000);
	}
	return false;
}

static uint64_t ms_since(struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (uint64_t)(t1.tv_sec - t0->tv_sec) * 1000 + (uint64_t)(t1.tv_nsec / 1000000) -
	       (uint64_t)(t0->tv_nsec / 1000000);
}

/*
 * Child 0 has a helper leave work on a stream that names its block, and
 * frees the block; child 1 must not get those bytes while the stream
 * runs (its allocations fail after their timeout, the one that does not
 * wait included), and gets them once it ends.
 */
static int holder(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_HOLD, .flags = FERRY_DESC_POOL, .len = HOLD_BYTES }, rep;
	struct timespec t0;
	uint64_t off;

	(void)arg;
	if (ferry_child_index(c) == 0) {
		if (ferry_child_pool_alloc(c, HOLD_BYTES, &off))
			return 10;
		d.offset = off;
		atomic_store(&hold->block, off);
		if (ferry_call(c, &d, &rep) || rep.status)
			return 11;
		if (ferry_child_pool_free(c, off))
			return 12;	/* nothing of it is at a helper: no -EBUSY */
		atomic_store(&hold->phase, 1);
		return wait_phase(3) ? 0 : 13;
	}
	if (!wait_phase(1))
		return 20;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (ferry_child_pool_alloc_timeout(c, HOLD_BYTES, 50LL * 1000000, &off) != -ENOMEM)
		return 21;	/* handed out under the stream's feet */
	if (ms_since(&t0) < 50)
		return 22;
	if (ferry_child_pool_alloc(c, HOLD_BYTES, &off) != -ENOMEM)
		return 23;
	atomic_store(&hold->release, 1);
	if (ferry_child_pool_alloc_timeout(c, HOLD_BYTES, 30LL * 1000000000, &off))
		return 24;	/* the fence came: the block is free */
	if (off != atomic_load(&hold->block))
		return 25;
	if (ferry_child_pool_free(c, off))
		return 26;
	atomic_store(&hold->phase, 3);
	return 0;
}

TEST(freed_blocks_wait_for_the_helpers_streams)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;

	NEED_GPU();
	hold = mmap(NULL, sizeof(*hold), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, hold);
	opts_for(&o, 2, 1);
	o.child_fn = holder;
	o.pool_size = 64u << 20;
	o.helper_pool_bytes = 4u << 20;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(2, st.pool_allocs);
	EXPECT_EQ(2, st.pool_frees);
	EXPECT_EQ(2, st.pool_oom);
	atomic_store(&hold->release, 1);
	ferry_broker_stop(b);
	munmap(hold, sizeof(*hold));
	hold = NULL;
}

/*
 * A helper waiting for its stream holds no CPU of its own: its thread's
 * CPU time over calls whose stream work takes
 * 20 ms (past FERRY_EXPECT_LONG_NS: it sleeps at once, woken by the host
 * function), then 1 ms (it learns the time, sleeps until shortly before
 * the reply is due and spins through it, at most about a quarter of the
 * wait).  Every reply is the one asked for.
 */
struct work_run {
	uint64_t cpu_ns, wall_ns, rtt_p50_ns;
};
static struct work_run *work_runs;

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int work_phase(struct ferry_child *c, uint64_t us, unsigned int n, struct work_run *out)
{
	uint64_t rtt[200], cpu0 = 0, wall0 = 0;

	for (unsigned int i = 0; i < n && i < 200; i++) {
		struct ferry_desc d = { .op = OP_WORK, .tag = i, .arg = { us } }, rep;
		uint64_t t0 = clock_ns(CLOCK_MONOTONIC);

		if (ferry_call(c, &d, &rep) || rep.status || rep.tag != i)
			return 1;
		rtt[i] = clock_ns(CLOCK_MONOTONIC) - t0;
		if (rtt[i] < us * 1000)
			return 2;	/* answered before its stream was done */
		if (i == 0) {
			cpu0 = rep.arg[1];
			wall0 = rep.arg[2];
		}
		out->cpu_ns = rep.arg[1] - cpu0;
		out->wall_ns = rep.arg[2] - wall0;
	}
	qsort(rtt, n, sizeof(rtt[0]), cmp_u64);
	out->rtt_p50_ns = rtt[n / 2];
	return 0;
}

static int worker(struct ferry_child *c, void *arg)
{
	(void)arg;
	if (work_phase(c, 20000, 12, &work_runs[0]))
		return 1;
	return work_phase(c, 1000, 150, &work_runs[1]) ? 2 : 0;
}

TEST(helpers_sleep_while_their_streams_work)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	NEED_GPU();
	work_runs = mmap(NULL, 2 * sizeof(*work_runs), PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, work_runs);
	opts_for(&o, 1, 1);
	o.child_fn = worker;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stop(b);
	for (int k = 0; k < 2; k++) {
		struct work_run *r = &work_runs[k];

		TH_LOG("stream work %s: helper CPU %.1f%% of the wall time, round trip p50 %.0f us",
		       k ? "1 ms" : "20 ms", r->wall_ns ? 100.0 * r->cpu_ns / r->wall_ns : -1.0,
		       r->rtt_p50_ns / 1e3);
		ASSERT_LT(0, r->wall_ns);
	}
	/* 20 ms: sleeps through; 1 ms: a bounded spin (a quarter, plus its margin). */
	EXPECT_GE(work_runs[0].wall_ns / 10, work_runs[0].cpu_ns);
	EXPECT_GE(work_runs[1].wall_ns * 2 / 5, work_runs[1].cpu_ns);
	munmap(work_runs, 2 * sizeof(*work_runs));
}

TEST(defer_refused_without_a_gpu)
{
	EXPECT_EQ(-EINVAL, ferry_helper_defer(NULL, NULL, NULL));
	EXPECT_EQ(-EINVAL, ferry_helper_defer_all(NULL, NULL, 1, NULL));
	EXPECT_EQ(-1, ferry_helper_gpu(NULL));
	EXPECT_EQ(NULL, ferry_helper_stream(NULL));
}

TEST_HARNESS_MAIN
