// SPDX-License-Identifier: GPL-2.0
/*
 * A hostile child next to honest ones.  It goes around the library: floods
 * its ring past its window straight through the channel, never reads its
 * replies, forges descriptors (other regions, impossible ranges, internal
 * ops, unknown flags), and attacks its own region's memfd (shrink, write
 * seal).  Each attempt must fail cleanly (and be counted by the broker
 * where it is the broker's to count); the honest children's requests, made
 * meanwhile, must all come back with the right bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chan.h"
#include "ferry.h"
#include "kselftest_harness.h"
#include "peer.h"
#include "proto.h"

#define OP_SUM 9

/* arg[2] = sum of the bytes; arg[0] = a second range's first byte + 1. */
static int sum(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
	       void *arg)
{
	const uint8_t *p = ferry_helper_data(h, req, req->offset, req->len);
	uint64_t s = 0;

	(void)arg;
	if (req->op != OP_SUM || !p)
		return -EFAULT;
	for (uint64_t i = 0; i < req->len; i++)
		s = s * 31 + p[i];
	rep->arg[2] = s;
	return 0;
}

struct verdict {
	_Atomic int hostile_done;
	_Atomic unsigned int refused;		/* attacks that failed cleanly */
	_Atomic unsigned int succeeded;		/* attacks that should have failed */
	_Atomic unsigned int honest_ok, honest_bad;
};

static struct verdict *v;

static void attack(bool refused)
{
	atomic_fetch_add(refused ? &v->refused : &v->succeeded, 1);
}

/* The memfd behind our own region, as root can reach it. */
static int own_memfd(struct ferry_child *c)
{
	char path[128];

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)c->base, (unsigned long)c->base + c->size);
	return open(path, O_RDWR | O_CLOEXEC);
}

static int hostile(struct ferry_child *c)
{
	struct ferry_desc d = { .op = OP_SUM, .len = 64 };
	uint8_t *buf = ferry_malloc(c, 4096);
	int fd;

	if (!buf)
		return 2;
	/* Forged descriptors, straight onto the ring. */
	struct ferry_desc forged[] = {
		{ .op = OP_SUM, .offset = c->size - 8, .len = 64 },		/* past the end */
		{ .op = OP_SUM, .offset = 64, .len = UINT64_MAX - 32 },	/* wraps */
		{ .op = OP_SUM, .offset = 0, .len = 64 },		/* its channel part */
		{ .op = FERRY_OP_CTRL, .offset = ferry_offset(c, buf), .len = 8 },	/* internal */
		{ .op = OP_SUM, .flags = 0x80, .offset = ferry_offset(c, buf), .len = 8 },
		{ .op = OP_SUM, .flags = FERRY_DESC_POOL, .offset = 0, .len = 8 },	/* no pool */
	};
	for (size_t k = 0; k < sizeof(forged) / sizeof(forged[0]); k++) {
		struct ferry_desc rep;

		if (ferry_chan_send(&c->ch, &forged[k]) ||
		    ferry_chan_recv_wait(&c->ch, &rep, 5000000000LL, NULL))
			return 3;
		attack(rep.status == -EINVAL);
	}
	/* Its own memfd: it may not shrink it or seal it against writes. */
	fd = own_memfd(c);
	if (fd >= 0) {
		attack(ftruncate(fd, 4096) < 0);
		attack(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) < 0);
		close(fd);
	}
	atomic_store(&v->hostile_done, 1);
	/* Flood until killed: past its window, straight onto the ring, replies
	 * never read (the broker drops them once its reply ring is full). */
	d.offset = ferry_offset(c, buf);
	for (;;) {
		while (ferry_chan_send(&c->ch, &d) == 0)
			;
		sched_yield();
	}
	return 0;
}

static int honest(struct ferry_child *c)
{
	uint8_t *buf = ferry_malloc(c, 8192);

	if (!buf)
		return 2;
	for (unsigned int round = 0; round < 400 || !atomic_load(&v->hostile_done); round++) {
		struct ferry_desc d = { .op = OP_SUM, .offset = ferry_offset(c, buf),
					.len = 1 + round % 8192 }, rep;
		uint64_t want = 0;

		for (uint64_t i = 0; i < d.len; i++) {
			buf[i] = (uint8_t)(i * 7 + round + ferry_child_index(c));
			want = want * 31 + buf[i];
		}
		if (ferry_call(c, &d, &rep))
			return 3;
		atomic_fetch_add(rep.status == 0 && rep.arg[2] == want ? &v->honest_ok :
				 &v->honest_bad, 1);
		if (round > 100000)
			return 4;
	}
	return 0;
}

static int body(struct ferry_child *c, void *arg)
{
	(void)arg;
	return ferry_child_index(c) == 0 ? hostile(c) : honest(c);
}

TEST(hostile_child_fails_cleanly_honest_ones_unharmed)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	int failed;

	v = mmap(NULL, sizeof(*v), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, v);
	ferry_broker_opts_init(&o);
	o.children = 4;
	o.helpers = 2;
	o.window = 4;
	o.region_size = 1u << 20;
	o.handler = sum;
	o.child_fn = body;
	o.gpu = FERRY_GPU_NONE;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	for (int t = 0; t < 60000 && !atomic_load(&v->hostile_done); t++)
		usleep(1000);
	ASSERT_EQ(1, atomic_load(&v->hostile_done));
	/* The honest ones finish while the hostile one sits on a full ring. */
	for (int t = 0; t < 60000 && atomic_load(&v->honest_ok) < 3 * 400; t++)
		usleep(1000);
	kill(ferry_broker_child_pid(b, 0), SIGKILL);
	failed = ferry_broker_wait(b, 120LL * 1000000000);
	ferry_broker_stats(b, &st);
	ferry_broker_stop(b);
	TH_LOG("attacks refused %u, succeeded %u; honest requests right %u, wrong %u; "
	       "broker: bad_desc %llu dropped %llu", atomic_load(&v->refused),
	       atomic_load(&v->succeeded), atomic_load(&v->honest_ok), atomic_load(&v->honest_bad),
	       (unsigned long long)st.bad_desc, (unsigned long long)st.dropped);
	EXPECT_EQ(1, failed);	/* only the hostile one, killed */
	EXPECT_EQ(0, atomic_load(&v->succeeded));
	EXPECT_LE(6, atomic_load(&v->refused));
	EXPECT_LE(3 * 400, atomic_load(&v->honest_ok));
	EXPECT_EQ(0, atomic_load(&v->honest_bad));
	EXPECT_LE(6, st.bad_desc);	/* every forged descriptor counted */
	munmap(v, sizeof(*v));
}

TEST_HARNESS_MAIN
