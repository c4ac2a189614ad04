// SPDX-License-Identifier: GPL-2.0
/*
 * The broker end to end: children and helpers forked for real, every reply
 * checked byte for byte, processes killed mid-request, hostile descriptors,
 * services attaching over the socket.  Runs on whichever backend AUTO picks
 * (memfd on a host, kmod in the VM with the module loaded); what only kmod
 * can show (rights to pin) SKIPs on the host.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chan.h"
#include "ferry.h"
#include "kselftest_harness.h"
#include "pin.h"

enum { OP_XFORM = 1, OP_SLEEP = 2, OP_WHO = 3, OP_TOUCH = 4, OP_ONCPU = 5, OP_PIN = 6 };

/* out[i] = in[i] ^ key, and a checksum of the input in arg[2]. */
static int handler(struct ferry_helper *h, const struct ferry_desc *req,
		   struct ferry_desc *rep, void *arg)
{
	(void)arg;
	switch (req->op) {
	case OP_XFORM: {
		const uint8_t *in = ferry_helper_data(h, req, req->offset, req->len);
		uint8_t *out = ferry_helper_data(h, req, req->arg[0], req->len);
		uint64_t sum = 0;
		uint8_t key = (uint8_t)req->arg[1];

		if (!in || !out)
			return -EFAULT;
		for (uint64_t i = 0; i < req->len; i++) {
			sum = sum * 31 + in[i];
			out[i] = in[i] ^ key;
		}
		rep->arg[2] = sum;
		return 0;
	}
	case OP_SLEEP:
		usleep((useconds_t)req->arg[0] * 1000);
		return 0;
	case OP_WHO:
		rep->arg[0] = (uint64_t)getpid();
		rep->arg[1] = ferry_helper_index(h);
		return 0;
	case OP_ONCPU: {	/* may this helper run on CPU arg[0]? */
		cpu_set_t set;

		if (sched_getaffinity(0, sizeof(set), &set))
			return -errno;
		rep->arg[1] = CPU_ISSET((int)req->arg[0], &set);
		return 0;
	}
	case OP_PIN: {	/* may this helper pin the bytes named (vmsplice)? */
		const uint8_t *p = ferry_helper_data(h, req, req->offset, req->len);

		return p ? pin_probe_vmsplice(p, req->len) : -EINVAL;
	}
	case OP_TOUCH:	/* offset only checked by the broker, not the heap */
		return ferry_helper_data(h, req, req->offset, req->len ? req->len : 1) ?
		       0 : -EFAULT;
	}
	return -EOPNOTSUPP;
}

struct work {
	unsigned int requests;	/* per child */
	unsigned int max_len;
	bool async;
	unsigned int sleep_first_ms;	/* OP_SLEEP before the real work */
	bool retry_epipe;	/* resubmit what a dying helper failed back */
	bool child0_endless;	/* child 0 goes on until it is killed */
	_Atomic int *stop;	/* non-NULL: go on until it is set, then finish */
};

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct buf {
	uint8_t *in, *out;
	uint64_t len, sum;
	uint8_t key;
	bool busy;
};

static void fill(struct buf *b, uint64_t *seed, unsigned int max_len)
{
	b->len = 1 + rng(seed) % max_len;
	b->key = (uint8_t)(1 + rng(seed) % 255);
	b->sum = 0;
	for (uint64_t i = 0; i < b->len; i++) {
		b->in[i] = (uint8_t)rng(seed);
		b->sum = b->sum * 31 + b->in[i];
	}
}

static bool verify(struct ferry_child *c, const struct buf *b, const struct ferry_desc *rep)
{
	if (rep->status != 0 || rep->arg[2] != b->sum || rep->op != OP_XFORM ||
	    rep->region != ferry_child_index(c))
		return false;
	for (uint64_t i = 0; i < b->len; i++)
		if (b->out[i] != (uint8_t)(b->in[i] ^ b->key))
			return false;
	return true;
}

static void req_of(struct ferry_child *c, const struct buf *b, uint64_t tag, struct ferry_desc *d)
{
	*d = (struct ferry_desc){
		.op = OP_XFORM, .tag = tag, .offset = ferry_offset(c, b->in), .len = b->len,
		.arg = { ferry_offset(c, b->out), b->key },
	};
}

/* Exit codes tell the parent what went wrong. */
static int child_body(struct ferry_child *c, void *arg)
{
	const struct work *w = arg;
	unsigned int k = w->async ? ferry_window(c) : 1;
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ (ferry_child_index(c) + 1) * 7919;
	struct buf *bufs = calloc(k, sizeof(*bufs));
	unsigned int sent = 0, done = 0;
	struct ferry_desc d, rep;

	if (!bufs)
		return 10;
	for (unsigned int i = 0; i < k; i++) {
		bufs[i].in = ferry_malloc(c, w->max_len);
		bufs[i].out = ferry_malloc(c, w->max_len);
		if (!bufs[i].in || !bufs[i].out)
			return 11;
	}
	if (w->sleep_first_ms) {
		d = (struct ferry_desc){ .op = OP_SLEEP, .arg = { w->sleep_first_ms } };
		if (ferry_call(c, &d, &rep) || rep.status)
			return 12;
	}
	unsigned int requests = (w->child0_endless && ferry_child_index(c) == 0) || w->stop ?
				UINT_MAX : w->requests;

	while (done < requests) {
		bool stop = w->stop && atomic_load(w->stop);

		if (stop && done == sent)
			break;
		while (!stop && sent < requests && ferry_outstanding(c) < k) {
			unsigned int slot = 0;

			while (bufs[slot].busy)
				slot++;
			fill(&bufs[slot], &seed, w->max_len);
			req_of(c, &bufs[slot], slot, &d);
			if (ferry_submit(c, &d))
				return 13;
			bufs[slot].busy = true;
			sent++;
		}
		if (ferry_complete(c, &rep, 30LL * 1000000000))
			return 14;
		if (rep.tag >= k || !bufs[rep.tag].busy)
			return 15;
		if (w->retry_epipe && rep.status == -EPIPE) {
			req_of(c, &bufs[rep.tag], rep.tag, &d);
			if (ferry_submit(c, &d))
				return 13;
			continue;
		}
		if (!verify(c, &bufs[rep.tag], &rep))
			return 16;
		bufs[rep.tag].busy = false;
		done++;
	}
	if (w->async) {
		/* A full window refuses more: K outstanding, K+1 is -EAGAIN. */
		d = (struct ferry_desc){ .op = OP_SLEEP, .arg = { 1 } };
		for (unsigned int i = 0; i < k; i++)
			if (ferry_submit(c, &d))
				return 17;
		if (ferry_submit(c, &d) != -EAGAIN)
			return 18;
		for (unsigned int i = 0; i < k; i++)
			if (ferry_complete(c, &rep, 30LL * 1000000000) || rep.status)
				return 19;
	}
	return 0;
}

static void opts_for(struct ferry_broker_opts *o, unsigned int children, unsigned int helpers,
		     struct work *w)
{
	ferry_broker_opts_init(o);
	o->children = children;
	o->helpers = helpers;
	o->region_size = 4u << 20;
	o->window = 8;
	o->handler = handler;
	o->child_fn = child_body;
	o->child_arg = w;
}

static bool alive(pid_t pid)
{
	return pid > 0 && kill(pid, 0) == 0;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* The 6.1 harness has timeouts only for fixture tests: an empty fixture. */
FIXTURE(load) {};
FIXTURE_SETUP(load) {}
FIXTURE_TEARDOWN(load) {}

TEST(sync_round_trips_checked)
{
	struct work w = { .requests = 2000, .max_len = 4096 };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	opts_for(&o, 2, 2, &w);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	TH_LOG("backend %s", ferry_backend_name(ferry_broker_backend(b)));
	EXPECT_EQ(0, ferry_broker_wait(b, 120LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(4000, st.requests);
	EXPECT_EQ(4000, st.replies);
	EXPECT_EQ(0, st.bad_desc);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

/*
 * The load: 32 children x 4 helpers, >= 100k requests, all
 * checked.  $FERRY_LOAD_REQUESTS (per child, default 3200) makes it
 * lighter where only the kernel's checkers are wanted (the debug kernel).
 */
TEST_F_TIMEOUT(load, thirty_two_children_four_helpers_100k, 600)
{
	const char *env = getenv("FERRY_LOAD_REQUESTS");
	unsigned int per = env && atoi(env) > 0 ? (unsigned int)atoi(env) : 3200;
	struct work w = { .requests = per, .max_len = 512, .async = true };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	struct timespec t0, t1;
	uint64_t served = 0;

	opts_for(&o, 32, 4, &w);
	o.region_size = 1u << 20;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 500LL * 1000000000));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ferry_broker_stats(b, &st);
	EXPECT_EQ(32 * (per + 8), st.requests);
	EXPECT_EQ(st.requests, st.replies);
	for (unsigned int h = 0; h < 4; h++) {
		uint64_t s = ferry_broker_helper_served(b, h);

		EXPECT_LT(0, s);	/* every helper took a share */
		served += s;
	}
	EXPECT_EQ(st.requests, served);
	TH_LOG("%llu requests in %.2f s (%.0f/s), %llu wakeups",
	       (unsigned long long)st.requests,
	       (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
	       st.requests / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9),
	       (unsigned long long)st.wakeups);
	ferry_broker_stop(b);
}

static int hostile_body(struct ferry_child *c, void *arg)
{
	uint8_t *blk = ferry_malloc(c, 4096);
	uint64_t off = ferry_offset(c, blk);
	struct ferry_desc rep, d;
	int bad = 0;

	(void)arg;
	if (!blk)
		return 20;
	/* flags must be 0 */
	d = (struct ferry_desc){ .op = OP_XFORM, .flags = 1, .offset = off, .len = 16, .arg = { off } };
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		bad |= 1;
	/* offset past the end of the region */
	d = (struct ferry_desc){ .op = OP_TOUCH, .offset = 1ULL << 40, .len = 1 };
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		bad |= 2;
	/* length that wraps around */
	d = (struct ferry_desc){ .op = OP_TOUCH, .offset = off, .len = UINT64_MAX - 8 };
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		bad |= 4;
	/* our internal op codes are not for children */
	d = (struct ferry_desc){ .op = 0xff000001u, .offset = off, .len = 1 };
	if (ferry_call(c, &d, &rep) || rep.status != -EINVAL)
		bad |= 8;
	/* in bounds but not a live heap block: the helper refuses */
	d = (struct ferry_desc){ .op = OP_XFORM, .offset = off, .len = 16, .arg = { off + 8192 } };
	if (ferry_call(c, &d, &rep) || rep.status != -EFAULT)
		bad |= 16;
	/* a lie about our region: the broker overwrites it */
	memset(blk, 7, 64);
	d = (struct ferry_desc){ .op = OP_XFORM, .region = 1, .offset = off, .len = 64,
				 .arg = { off, 0 } };
	if (ferry_call(c, &d, &rep) || rep.status != 0 || rep.region != ferry_child_index(c))
		bad |= 32;
	/* and a good one still works */
	d = (struct ferry_desc){ .op = OP_WHO };
	if (ferry_call(c, &d, &rep) || rep.status != 0)
		bad |= 64;
	return bad;
}

TEST(malformed_descriptors_rejected_and_counted)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	opts_for(&o, 2, 1, NULL);
	o.child_fn = hostile_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(2 * 4, st.bad_desc);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

/*
 * A child holds nothing of the others: no fds beyond its own, and its only
 * region mappings are one unbroken span starting at its own region's base
 * (two mappings on kmod: the channel head over the start of the region).
 */
static int isolation_body(struct ferry_child *c, void *arg)
{
	DIR *d = opendir("/proc/self/fd");
	uint8_t *blk = ferry_malloc(c, 64);
	uintptr_t base, end = 0;
	struct dirent *e;
	int n = 0, bad = 0;
	FILE *maps;
	char line[512];

	(void)arg;
	if (!d || !blk)
		return 30;
	base = (uintptr_t)blk - ferry_offset(c, blk);
	while ((e = readdir(d))) {
		char path[300], target[256];
		ssize_t len;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len < 0)
			continue;
		target[len] = 0;
		/* another child's region would show up as a memfd here */
		if (strstr(target, "memfd:"))
			bad |= 1;
	}
	closedir(d);
	maps = fopen("/proc/self/maps", "r");
	if (!maps)
		return 31;
	while (fgets(line, sizeof(line), maps)) {
		unsigned long lo, hi;

		if (!strstr(line, "ferry-region") && !strstr(line, "/dev/ferry"))
			continue;
		if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || lo != (n ? end : base))
			bad |= 2;	/* not where our region is, or a gap */
		end = hi;
		n++;
	}
	fclose(maps);
	if (n == 0)
		bad |= 4;
	return bad;
}

TEST(child_reaches_only_its_own_region)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	opts_for(&o, 4, 2, NULL);
	o.child_fn = isolation_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stop(b);
}

/*
 * kmod: a child's heap is out of get_user_pages' reach (its grant has no
 * FERRY_PIN), its channel head is not (its futexes work), and a helper,
 * granted PIN, can pin the child's tensors.  Exit codes say which failed.
 */
static int pin_failed(int code, const char *what, int err)
{
	fprintf(stderr, "# pin check %d: %s: %s\n", code, what, strerror(-err));
	return code;
}

static int pin_body(struct ferry_child *c, void *arg)
{
	uint8_t *buf = ferry_malloc(c, 4096);
	struct ferry_desc d, rep;
	const uint8_t *base;
	int err;

	(void)arg;
	if (!buf)
		return 50;
	base = buf - ferry_offset(c, buf);
	memset(buf, 0x3c, 4096);
	if ((err = pin_probe_vmsplice(buf, 4096)) != -EFAULT)
		return pin_failed(51, "vmsplice of the heap, want EFAULT", err);
	if ((err = pin_probe_futex(buf)) != -EFAULT)
		return pin_failed(52, "futex in the heap, want EFAULT", err);
	/* The channel header: the first bytes of the head. */
	if ((err = pin_probe_vmsplice(base, 64)))
		return pin_failed(53, "vmsplice of the channel head", err);
	if ((err = pin_probe_futex(base)))
		return pin_failed(54, "futex in the channel head", err);
	d = (struct ferry_desc){ .op = OP_PIN, .offset = ferry_offset(c, buf), .len = 4096 };
	if ((err = ferry_call(c, &d, &rep)) || (err = rep.status))
		return pin_failed(55, "the helper's vmsplice of the heap", err);
	return 0;
}

/* A forked child and an attached service alike: their setup is one. */
TEST(kmod_child_heap_unpinnable_channel_head_and_helper_pinnable)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	char path[64];
	pid_t svc;
	int status;

	if (ferry_backend_resolve(FERRY_BACKEND_KMOD) != FERRY_BACKEND_KMOD)
		SKIP(return, "no usable /dev/ferry: the memfd backend pins anything, "
			     "nothing to tell apart");
	snprintf(path, sizeof(path), "/tmp/ferry-test-pin-%d.sock", getpid());
	opts_for(&o, 1, 1, NULL);
	o.backend = FERRY_BACKEND_KMOD;
	o.child_fn = pin_body;
	o.attach_path = path;
	o.max_attached = 1;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	svc = fork();
	ASSERT_LE(0, svc);
	if (svc == 0) {
		struct ferry_child *c;
		int ret;

		if (ferry_attach(path, &c))
			_exit(40);
		ret = pin_body(c, NULL);
		ferry_detach(c);
		_exit(ret);
	}
	ASSERT_EQ(svc, waitpid(svc, &status, 0));
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status)) TH_LOG("attached service");
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000)) TH_LOG("forked child");
	ferry_broker_stop(b);
}

static int sleepy_body(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_SLEEP, .arg = { 60000 } }, rep;

	(void)arg;
	(void)c;
	ferry_call(c, &d, &rep);
	return 0;
}

TEST_F_TIMEOUT(load, kill_child_mid_request, 120)
{
	/* Child 0 never finishes on its own, however fast the machine. */
	struct work w = { .requests = 3000, .max_len = 1024, .async = true, .child0_endless = true };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	int fds0;

	opts_for(&o, 3, 2, &w);
	fds0 = count_fds();
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	/* Kill child 0 while it is busy; 1 and 2 finish their work. */
	usleep(100 * 1000);
	ASSERT_EQ(0, kill(ferry_broker_child_pid(b, 0), SIGKILL));
	EXPECT_EQ(1, ferry_broker_wait(b, 100LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(1, st.child_deaths);
	EXPECT_EQ(3, st.child_exits);
	EXPECT_EQ(0, st.helper_deaths);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
	EXPECT_EQ(fds0, count_fds());	/* nothing of the broker's left open */
}

TEST_F_TIMEOUT(load, kill_helper_mid_request_fails_back_and_restarts, 120)
{
	struct work w = { .requests = 500, .max_len = 256, .async = false };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	pid_t victim;

	/* One helper, one child stuck in a 60 s request on it. */
	opts_for(&o, 1, 1, &w);
	o.child_fn = sleepy_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	victim = ferry_broker_helper_pid(b, 0);
	for (int i = 0; i < 200; i++) {
		ferry_broker_stats(b, &st);
		if (st.in_flight)
			break;
		usleep(10 * 1000);
	}
	ASSERT_EQ(1, st.in_flight);
	ASSERT_EQ(0, kill(victim, SIGKILL));
	/* The child gets -EPIPE back (sleepy_body ignores it) and exits 0. */
	EXPECT_EQ(0, ferry_broker_wait(b, 30LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(1, st.helper_deaths);
	EXPECT_EQ(1, st.helper_restarts);
	EXPECT_EQ(1, st.failed_back);
	EXPECT_NE(victim, ferry_broker_helper_pid(b, 0));
	EXPECT_TRUE(alive(ferry_broker_helper_pid(b, 0)));
	ferry_broker_stop(b);
}

/* After a helper restart the new helper serves every child again. */
/* Poll the broker's counters (refreshed within 1 ms) until @cond holds. */
#define WAIT_FOR(b, st, cond, secs) ({					\
	bool ok_ = false;						\
	for (int i_ = 0; i_ < (secs) * 2000 && !ok_; i_++) {		\
		ferry_broker_stats((b), &(st));				\
		ok_ = (cond);						\
		if (!ok_)						\
			usleep(500);					\
	}								\
	ok_;								\
})

/*
 * The kill lands while requests are at the helper, however fast the
 * machine: it waits for counters, not for time (20,000 requests used to
 * finish before a 50 ms sleep ended on the 16-core machine).
 */
TEST_F_TIMEOUT(load, restarted_helper_serves, 120)
{
	struct work w = { .requests = 4000, .max_len = 256, .async = true, .sleep_first_ms = 300 };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	uint64_t before;

	opts_for(&o, 2, 1, &w);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	/* Both children's 300 ms sleeps are at the helper (it runs one at a
	 * time, the other waits in its ring): kill it under them. */
	ASSERT_TRUE(WAIT_FOR(b, st, st.in_flight == 2, 60));
	ASSERT_EQ(0, kill(ferry_broker_helper_pid(b, 0), SIGKILL));
	/* Their first call fails back with -EPIPE: child_body returns 12. */
	EXPECT_EQ(2, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(1, st.helper_restarts);
	ferry_broker_stop(b);

	/* Under load: children that resubmit what failed back finish every
	 * request, checked, with the restarted helper taking its share.  They
	 * go on until the restarted helper has served 100 more, however fast
	 * or slow the machine (a fixed count ran out of time on the debug
	 * kernel under TCG), then finish what they have in flight. */
	_Atomic int *stop = mmap(NULL, sizeof(*stop), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(MAP_FAILED, stop);
	atomic_store(stop, 0);
	w = (struct work){ .max_len = 256, .async = true, .retry_epipe = true, .stop = stop };
	opts_for(&o, 2, 2, &w);
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	ASSERT_TRUE(WAIT_FOR(b, st, ferry_broker_helper_served(b, 1) > 0 && st.in_flight > 0, 60));
	ASSERT_EQ(0, kill(ferry_broker_helper_pid(b, 1), SIGKILL));
	ASSERT_TRUE(WAIT_FOR(b, st, st.helper_restarts == 1, 60));
	before = ferry_broker_helper_served(b, 1);
	EXPECT_TRUE(WAIT_FOR(b, st, ferry_broker_helper_served(b, 1) >= before + 100, 60));
	atomic_store(stop, 1);
	EXPECT_EQ(0, ferry_broker_wait(b, 100LL * 1000000000));
	munmap((void *)stop, sizeof(*stop));
	ferry_broker_stats(b, &st);
	EXPECT_LT(before, ferry_broker_helper_served(b, 1));
	EXPECT_EQ(1, st.helper_restarts);
	EXPECT_EQ(st.requests, st.replies);
	EXPECT_EQ(0, st.dropped);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

/* Exit status: 0, or the step that went wrong. */
static int deadline_body(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_SLEEP, .tag = 7, .arg = { 300 } }, rep;

	(void)arg;
	/* A 300 ms request, a 20 ms deadline. */
	if (ferry_call_timeout(c, &d, &rep, 20 * 1000000LL) != -ETIMEDOUT)
		return 20;
	if (ferry_outstanding(c) != 1)
		return 21;	/* it is still at the helper */
	if (ferry_complete(c, &rep, 0) != -ENOENT)
		return 22;	/* nothing the caller waits for */
	/* The next call works, and gets its own reply, not the late one. */
	d = (struct ferry_desc){ .op = OP_WHO, .tag = 8 };
	if (ferry_call(c, &d, &rep) || rep.status || rep.tag != 8 || rep.op != OP_WHO)
		return 23;
	if (ferry_outstanding(c) != 0)
		return 24;	/* the late reply came first (one helper, in order): dropped */
	d = (struct ferry_desc){ .op = OP_WHO, .tag = 9 };
	if (ferry_call_timeout(c, &d, &rep, 10LL * 1000000000) || rep.tag != 9)
		return 25;
	return 0;
}

/* A call with a deadline returns -ETIMEDOUT; its late reply harms nothing. */
TEST(call_timeout_and_late_reply)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	opts_for(&o, 2, 1, NULL);
	o.child_fn = deadline_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(st.requests, st.replies);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

/* Exit status: 0, or the step that went wrong. */
static int hung_body(struct ferry_child *c, void *arg)
{
	struct ferry_desc d = { .op = OP_SLEEP, .tag = 1, .arg = { 60000 } }, rep;

	(void)arg;
	/* A request that would take a minute: the watchdog ends it. */
	if (ferry_call(c, &d, &rep) || rep.status != -ETIMEDOUT)
		return 30;
	/* The restarted helper serves the next one. */
	d = (struct ferry_desc){ .op = OP_WHO, .tag = 2 };
	if (ferry_call(c, &d, &rep) || rep.status || rep.tag != 2)
		return 31;
	return 0;
}

/* opts.helper_timeout_ns: a hung helper is killed and restarted. */
TEST_F_TIMEOUT(load, hung_helper_killed_by_the_watchdog, 60)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	opts_for(&o, 1, 1, NULL);
	o.child_fn = hung_body;
	o.helper_timeout_ns = 300 * 1000000ULL;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 50LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(1, st.helper_timeouts);
	EXPECT_EQ(1, st.helper_restarts);
	ferry_broker_stop(b);
}

#define THREADS 8
#define THREAD_CALLS 400

struct thread_arg { struct ferry_child *c; unsigned int id; int result; };

/* One thread of a service: its own buffers, calls checked byte for byte. */
static void *caller_thread(void *p)
{
	struct thread_arg *t = p;
	uint64_t seed = 0x51ed270b27ULL * (t->id + 1);
	struct buf b = { .in = ferry_malloc(t->c, 512), .out = ferry_malloc(t->c, 512) };
	struct ferry_desc d, rep;

	t->result = 0;
	if (!b.in || !b.out) {
		t->result = 40;
		return NULL;
	}
	for (unsigned int k = 0; k < THREAD_CALLS; k++) {
		fill(&b, &seed, 512);
		req_of(t->c, &b, ((uint64_t)t->id << 32) | k, &d);
		if (ferry_call(t->c, &d, &rep) || rep.tag != d.tag || !verify(t->c, &b, &rep)) {
			t->result = 41;
			return NULL;
		}
	}
	return NULL;
}

/* Exit status: 0, or what went wrong. */
static int threads_body(struct ferry_child *c, void *arg)
{
	struct thread_arg t[THREADS];
	pthread_t th[THREADS];
	struct timespec t0, t1;
	int n = 200000;

	(void)arg;
	for (unsigned int i = 0; i < THREADS; i++) {
		t[i] = (struct thread_arg){ .c = c, .id = i };
		if (pthread_create(&th[i], NULL, caller_thread, &t[i]))
			return 42;
	}
	for (unsigned int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		if (t[i].result)
			return t[i].result;
	}
	if (ferry_outstanding(c) != 0)
		return 43;
	/* What the sharing costs a lone thread: the lock, taken once per
	 * request and once per reply (ferry_outstanding takes it once). */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++)
		if (ferry_outstanding(c))
			return 44;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("# shared child handle: the lock, uncontended: %.1f ns per request "
	       "(two takes)\n", 2 * ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
	fflush(stdout);
	return 0;
}

/* A child handle shared by 8 threads: every call gets its own reply. */
TEST_F_TIMEOUT(load, eight_threads_share_a_child_handle, 120)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;

	opts_for(&o, 2, 2, NULL);
	o.child_fn = threads_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(0, ferry_broker_wait(b, 100LL * 1000000000));
	ferry_broker_stats(b, &st);
	EXPECT_EQ(2ULL * THREADS * THREAD_CALLS, st.replies);
	EXPECT_EQ(0, st.bad_reply);
	ferry_broker_stop(b);
}

/* A socket that takes connections and never answers: attach times out. */
TEST(attach_to_a_silent_broker_times_out)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct ferry_child *c = NULL;
	struct timespec t0, t1;
	double secs;
	int fd;

	snprintf(a.sun_path, sizeof(a.sun_path), "/tmp/ferry-silent-%d", getpid());
	unlink(a.sun_path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, bind(fd, (struct sockaddr *)&a, sizeof(a)));
	ASSERT_EQ(0, listen(fd, 4));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	EXPECT_EQ(-ETIMEDOUT, ferry_attach_timeout(a.sun_path, 200 * 1000000LL, &c));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	EXPECT_LE(0.15, secs);
	EXPECT_GE(10.0, secs);
	EXPECT_EQ(NULL, c);
	EXPECT_EQ(-EINVAL, ferry_attach_timeout(a.sun_path, 0, &c));
	close(fd);
	unlink(a.sun_path);
}

static int init_fails(struct ferry_helper *h, void *arg)
{
	(void)h;
	(void)arg;
	return -ENOTRECOVERABLE;
}

/* A helper that cannot start makes start fail with its error, cleanly. */
TEST(failing_helper_init_fails_start)
{
	struct work w = { .requests = 1, .max_len = 64 };
	struct ferry_broker_opts o;
	struct ferry_broker *b = NULL;
	int before = count_fds();

	opts_for(&o, 4, 2, &w);
	o.helper_init = init_fails;
	EXPECT_EQ(-ENOTRECOVERABLE, ferry_broker_start(&o, &b));
	EXPECT_EQ(NULL, b);
	EXPECT_EQ(before, count_fds());
	EXPECT_EQ(-1, waitpid(-1, NULL, WNOHANG));	/* nothing left to reap */
	EXPECT_EQ(ECHILD, errno);
}

/* Incarnations after the first fail their init: counted in shared memory. */
static int init_fails_after_first(struct ferry_helper *h, void *arg)
{
	_Atomic unsigned int *tries = arg;

	(void)h;
	return atomic_fetch_add(tries, 1) == 0 ? 0 : -EIO;
}

/*
 * A helper whose restarts keep failing is restarted with a growing delay
 * (50 ms, 100 ms, 200 ms...), counted in helper_backoffs: at most 20
 * restarts a second, not a fork loop (it was ~2800 a second).
 */
TEST_F_TIMEOUT(load, failing_restarts_back_off, 60)
{
	_Atomic unsigned int *tries = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
					    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	struct timespec t0, t1;
	double secs;

	ASSERT_NE(MAP_FAILED, tries);
	opts_for(&o, 0, 1, NULL);
	o.helper_init = init_fails_after_first;
	o.helper_arg = (void *)tries;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(1, *tries);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ASSERT_EQ(0, kill(ferry_broker_helper_pid(b, 0), SIGKILL));
	/* Killed after its init: restarted at once; that one fails, and so
	 * does every later one, each after a longer wait. */
	ASSERT_TRUE(WAIT_FOR(b, st, st.helper_backoffs >= 4, 30));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	TH_LOG("%u inits, %llu deaths, %llu restarts, %llu backoffs in %.2f s", *tries,
	       (unsigned long long)st.helper_deaths, (unsigned long long)st.helper_restarts,
	       (unsigned long long)st.helper_backoffs, secs);
	EXPECT_LE(*tries, 7u);			/* 1 + the restarts so far */
	EXPECT_LE(0.35, secs);			/* 50 + 100 + 200 ms of backoff */
	EXPECT_GE(20.0, st.helper_restarts / secs);
	ferry_broker_stop(b);
	munmap((void *)tries, 4096);
}

TEST(stop_leaves_no_process)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	pid_t pids[6];

	opts_for(&o, 4, 2, NULL);
	o.child_fn = sleepy_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	for (int i = 0; i < 4; i++)
		pids[i] = ferry_broker_child_pid(b, i);
	pids[4] = ferry_broker_helper_pid(b, 0);
	pids[5] = ferry_broker_helper_pid(b, 1);
	for (int i = 0; i < 6; i++)
		ASSERT_TRUE(alive(pids[i]));
	ferry_broker_stop(b);
	for (int i = 0; i < 6; i++)
		EXPECT_FALSE(alive(pids[i]));
}

/* SIGKILL of the broker itself: its processes follow (PDEATHSIG). */
TEST(broker_death_takes_everything)
{
	int pfd[2];
	pid_t broker, pids[3];

	ASSERT_EQ(0, pipe(pfd));
	broker = fork();
	ASSERT_LE(0, broker);
	if (broker == 0) {
		struct ferry_broker_opts o;
		struct ferry_broker *b;

		opts_for(&o, 2, 1, NULL);
		o.child_fn = sleepy_body;
		if (ferry_broker_start(&o, &b))
			_exit(1);
		pids[0] = ferry_broker_child_pid(b, 0);
		pids[1] = ferry_broker_child_pid(b, 1);
		pids[2] = ferry_broker_helper_pid(b, 0);
		if (write(pfd[1], pids, sizeof(pids)) != sizeof(pids))
			_exit(1);
		pause();
		_exit(0);
	}
	ASSERT_EQ(sizeof(pids), read(pfd[0], pids, sizeof(pids)));
	kill(broker, SIGKILL);
	waitpid(broker, NULL, 0);
	for (int t = 0; t < 100; t++) {
		if (!alive(pids[0]) && !alive(pids[1]) && !alive(pids[2]))
			break;
		usleep(20 * 1000);
	}
	for (int i = 0; i < 3; i++)
		EXPECT_FALSE(alive(pids[i]));
}

TEST(attach_over_socket)
{
	char path[64];
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	pid_t svc;
	int status;

	snprintf(path, sizeof(path), "/tmp/ferry-test-%d.sock", getpid());
	opts_for(&o, 0, 2, NULL);
	o.attach_path = path;
	o.max_attached = 1;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	/* A service that the broker did not fork. */
	svc = fork();
	ASSERT_LE(0, svc);
	if (svc == 0) {
		struct ferry_child *c, *c2;
		struct work w = { .requests = 500, .max_len = 2048, .async = true };
		int ret;

		if (ferry_attach(path, &c))
			_exit(40);
		/* the only attach slot is taken: a second one is refused */
		if (ferry_attach(path, &c2) != -EBUSY)
			_exit(41);
		ret = child_body(c, &w);
		ferry_detach(c);
		_exit(ret);
	}
	ASSERT_EQ(svc, waitpid(svc, &status, 0));
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
	for (int t = 0; t < 100; t++) {
		ferry_broker_stats(b, &st);
		if (st.child_exits)
			break;
		usleep(10 * 1000);
	}
	EXPECT_EQ(1, st.attached);
	EXPECT_EQ(1, st.attach_refused);
	EXPECT_EQ(1, st.child_exits);	/* the detach */
	EXPECT_EQ(0, st.child_deaths);
	EXPECT_EQ(508, st.requests);
	ferry_broker_stop(b);
	EXPECT_NE(0, access(path, F_OK));	/* the socket is gone */
}

static int quiet_body(struct ferry_child *c, void *arg)
{
	(void)c;
	(void)arg;
	return 0;	/* exits through the library, which flushes stdio */
}

/*
 * Output the parent buffered but had not written yet must appear once,
 * not once more per forked helper and child.
 */
TEST(buffered_output_not_repeated_by_forks)
{
	char path[] = "/tmp/ferry-stdout-XXXXXX", buf[4096];
	int fd = mkstemp(path), saved = dup(STDOUT_FILENO), count = 0;
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	ssize_t n;

	ASSERT_LE(0, fd);
	ASSERT_LE(0, saved);
	unlink(path);
	fflush(stdout);
	ASSERT_LE(0, dup2(fd, STDOUT_FILENO));
	/* A file: stdout is fully buffered, so the line sits in the buffer. */
	setvbuf(stdout, NULL, _IOFBF, BUFSIZ);
	printf("ferry-marker\n");
	opts_for(&o, 3, 2, NULL);
	o.child_fn = quiet_body;
	if (ferry_broker_start(&o, &b) == 0) {
		ferry_broker_wait(b, 60LL * 1000000000);
		ferry_broker_stop(b);
	}
	fflush(stdout);
	dup2(saved, STDOUT_FILENO);
	close(saved);
	setvbuf(stdout, NULL, _IOLBF, BUFSIZ);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	ASSERT_LT(0, n);
	buf[n] = 0;
	for (char *p = buf; (p = strstr(p, "ferry-marker")); p++)
		count++;
	EXPECT_EQ(1, count);
}

TEST(bad_options)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;

	opts_for(&o, 1, 0, NULL);
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
	opts_for(&o, 1, 1, NULL);
	o.handler = NULL;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
	opts_for(&o, 1, 1, NULL);
	o.window = 0;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
	opts_for(&o, 1, 1, NULL);
	o.child_fn = NULL;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
	EXPECT_EQ(-ENAMETOOLONG, ferry_attach("", &(struct ferry_child *){ NULL }));
	EXPECT_EQ(-ENOENT, ferry_attach("/tmp/ferry-no-such-socket", &(struct ferry_child *){ NULL }));
}

/* Exit 0 if neither this child nor the helper may run on CPU *arg. */
static int offcpu_body(struct ferry_child *c, void *arg)
{
	int cpu = *(int *)arg;
	struct ferry_desc d = { .op = OP_ONCPU, .arg = { (uint64_t)cpu } }, rep;
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) || CPU_ISSET(cpu, &set))
		return 1;
	if (ferry_call(c, &d, &rep) || rep.status || rep.arg[1] != 0)
		return 2;
	return 0;
}

/*
 * The dispatch thread can have a CPU to itself: children and helpers are
 * kept off it.  Bad settings are refused, not ignored.
 */
TEST(dispatch_cpu_kept_off_for_peers)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	cpu_set_t mine;
	int last = -1;

	ASSERT_EQ(0, sched_getaffinity(0, sizeof(mine), &mine));
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &mine))
			last = c;
	if (CPU_COUNT(&mine) < 2)
		SKIP(return, "one usable CPU: nothing to reserve");

	opts_for(&o, 2, 1, NULL);
	o.child_fn = offcpu_body;
	o.child_arg = &last;
	o.dispatch_cpu = last;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(last, ferry_broker_dispatch_cpu(b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stop(b);

	/* Not asked for: nothing reserved, peers keep the whole mask. */
	opts_for(&o, 1, 1, NULL);
	o.dispatch_cpu = FERRY_CPU_NONE;
	o.child_fn = quiet_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	EXPECT_EQ(-1, ferry_broker_dispatch_cpu(b));
	EXPECT_EQ(0, ferry_broker_wait(b, 60LL * 1000000000));
	ferry_broker_stop(b);

	opts_for(&o, 1, 1, NULL);
	o.dispatch_cpu = CPU_SETSIZE;
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
	setenv("FERRY_DISPATCH_CPU", "sometimes", 1);
	opts_for(&o, 1, 1, NULL);
	EXPECT_EQ(-EINVAL, ferry_broker_start(&o, &b));
	unsetenv("FERRY_DISPATCH_CPU");
}

/* A child that scribbles impossible indices over its own ring. */
static int scribbler_body(struct ferry_child *c, void *arg)
{
	uint8_t *blk = ferry_malloc(c, 64);
	uint8_t *base = blk - ferry_offset(c, blk);
	const struct ferry_chan_hdr *hdr = (const void *)base;
	struct ferry_chan_ctl *req = (void *)(base + ferry_chan_ring_off(hdr->nslots, FERRY_TO_BROKER));
	struct ferry_chan_ctl *rep = (void *)(base + ferry_chan_ring_off(hdr->nslots, FERRY_TO_PEER));
	struct ferry_desc d = { .op = OP_WHO }, r;

	(void)arg;
	/* one honest call first, so the broker knows us */
	if (ferry_call(c, &d, &r) || r.status)
		return 1;
	for (int i = 0; i < 200; i++) {
		atomic_store(&req->tail, atomic_load(&req->head) + 1000 + i);
		atomic_store(&rep->head, 0xdeadbeef);
		atomic_fetch_add(&req->seq, 1);
		usleep(1000);
	}
	return 0;
}

static int mixed_body(struct ferry_child *c, void *arg)
{
	return ferry_child_index(c) == 2 ? scribbler_body(c, arg) : child_body(c, arg);
}

/* Children 0 and 1 do checked work next to child 2 breaking its ring. */
TEST_F_TIMEOUT(load, corrupt_ring_harms_no_one, 120)
{
	struct work w = { .requests = 3000, .max_len = 512, .async = true };
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	int failed;

	opts_for(&o, 3, 2, &w);
	o.child_fn = mixed_body;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	failed = ferry_broker_wait(b, 100LL * 1000000000);
	ferry_broker_stats(b, &st);
	/* The scribbler may be killed for it; nobody else may fail. */
	EXPECT_GE(1, failed);
	EXPECT_EQ((uint64_t)failed, st.child_deaths);
	EXPECT_EQ(0, st.bad_reply);
	EXPECT_EQ(st.requests, st.replies);
	TH_LOG("scribbler %s, bad_desc %llu", failed ? "killed" : "ignored",
	       (unsigned long long)st.bad_desc);
	ferry_broker_stop(b);	/* and the broker still stops */
}

TEST_HARNESS_MAIN
