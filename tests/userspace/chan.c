// SPDX-License-Identifier: GPL-2.0
/*
 * Channels (userspace/lib/chan.c): layout checks, ordering, full and empty
 * rings, index wrap-around, corrupt shared indices, blocking receives
 * (timeout, dead flag, signals), cross-process ping-pong in both bell
 * modes, and a round-trip latency measurement printed as a TAP comment.
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest_harness.h"

#include "chan.h"

#define PAGE 4096u

/* A TAP comment that survives the harness's _exit() in the test child. */
#define note(...) do { ksft_print_msg(__VA_ARGS__); fflush(stdout); } while (0)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* A descriptor whose every field depends on @i. */
static void fill_desc(struct ferry_desc *d, uint64_t i)
{
	d->op = (uint32_t)(i * 7 + 1);
	d->flags = 0;
	d->tag = i | (~i << 40);
	d->region = (uint32_t)(i ^ 0x5a5a5a5a);
	d->status = -(int32_t)(i % 4096);
	d->offset = i * 64;
	d->len = i * 3 + 1;
	d->arg[0] = i + 1;
	d->arg[1] = i * i;
	d->arg[2] = ~i;
}

static bool desc_is(const struct ferry_desc *d, uint64_t i)
{
	struct ferry_desc want;

	fill_desc(&want, i);
	return memcmp(d, &want, sizeof(want)) == 0;
}

static struct ferry_chan_ctl *ctl_of(void *mem, uint32_t nslots, enum ferry_chan_dir dir)
{
	return (struct ferry_chan_ctl *)((char *)mem + ferry_chan_ring_off(nslots, dir));
}

/* Shared anonymous memory with a PROT_NONE page on each side. */
static void *map_guarded(size_t bytes, void **map_out, size_t *len_out)
{
	size_t len = bytes + 2 * PAGE;
	char *m = mmap(NULL, len, PROT_NONE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		return NULL;
	if (mprotect(m + PAGE, bytes, PROT_READ | PROT_WRITE)) {
		munmap(m, len);
		return NULL;
	}
	*map_out = m;
	*len_out = len;
	return m + PAGE;
}

TEST(bytes_rejects_bad_nslots)
{
	uint32_t bad[] = { 0, 1, 3, 6, 100, 65537, 131072, UINT32_MAX };
	uint32_t good[] = { 2, 4, 64, 1024, 65536 };
	unsigned int i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint32_t n = bad[i];

		EXPECT_EQ(0, ferry_chan_bytes(n)) TH_LOG("nslots %u", n);
	}
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		size_t b = ferry_chan_bytes(good[i]);

		EXPECT_NE(0, b);
		EXPECT_EQ(0, b % PAGE);
		EXPECT_GE(b, ferry_chan_ring_off(good[i], FERRY_TO_PEER) +
			  sizeof(struct ferry_chan_ctl) + good[i] * FERRY_DESC_SIZE);
	}
}

TEST(format_rejects_bad_args)
{
	size_t bytes = ferry_chan_bytes(64);
	char *m = mmap(NULL, bytes + PAGE, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(MAP_FAILED, m);
	EXPECT_EQ(-EINVAL, ferry_chan_format(NULL, bytes, 64));
	EXPECT_EQ(-EINVAL, ferry_chan_format(m, bytes, 0));
	EXPECT_EQ(-EINVAL, ferry_chan_format(m, bytes, 48));
	EXPECT_EQ(-EINVAL, ferry_chan_format(m, bytes, 1));
	EXPECT_EQ(-EINVAL, ferry_chan_format(m, bytes - 1, 64));
	EXPECT_EQ(-EINVAL, ferry_chan_format(m, ferry_chan_bytes(32), 64));
	EXPECT_EQ(-EINVAL, ferry_chan_format(m + 64, bytes, 64));
	EXPECT_EQ(0, ferry_chan_format(m, bytes, 64));
	EXPECT_EQ(0, ferry_chan_format(m, bytes + PAGE, 64));
	munmap(m, bytes + PAGE);
}

TEST(attach_rejects_garbage_header)
{
	size_t bytes = ferry_chan_bytes(64);
	char *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_chan_hdr *h = (struct ferry_chan_hdr *)m;
	int efd[2] = { -1, -1 };
	struct ferry_chan c;
	unsigned int i;

	ASSERT_NE(MAP_FAILED, m);
	/* Never formatted: zeros. */
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	/* Random bytes. */
	srand(1);
	for (i = 0; i < bytes; i++)
		m[i] = (char)rand();
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));

	ASSERT_EQ(0, ferry_chan_format(m, bytes, 64));
	EXPECT_EQ(0, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(64, c.nslots);
	/* Caller's arguments. */
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, NULL, bytes, true, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m + 8, bytes, true, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, 16, true, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes - 1, true, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, 0, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, 3, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_EVENTFD, NULL));
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_EVENTFD, efd));

	/* One field wrong at a time. */
	h->magic ^= 1;
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->magic ^= 1;
	h->version = 2;
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->version = FERRY_CHAN_VERSION;
	h->desc_size = 128;
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->desc_size = FERRY_DESC_SIZE;
	h->nslots = 48;
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->nslots = 1u << 20;	/* bigger than the memory */
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->nslots = 128;	/* valid, but the header's byte count disagrees */
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->nslots = 64;
	h->bytes = bytes + PAGE;
	EXPECT_EQ(-EINVAL, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	h->bytes = bytes;
	EXPECT_EQ(0, ferry_chan_attach(&c, m, bytes, false, FERRY_BELL_FUTEX, NULL));

	/* Impossible indices at attach time. */
	atomic_store(&ctl_of(m, 64, FERRY_TO_PEER)->tail, 65);
	EXPECT_EQ(-EPROTO, ferry_chan_attach(&c, m, bytes, false, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(-EPROTO, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	atomic_store(&ctl_of(m, 64, FERRY_TO_PEER)->tail, 64);
	EXPECT_EQ(0, ferry_chan_attach(&c, m, bytes, true, FERRY_BELL_FUTEX, NULL));
	EXPECT_EQ(64, ferry_chan_pending(&c, FERRY_TO_PEER));
	munmap(m, bytes);
}

FIXTURE(chan) {
	void *map;
	size_t maplen;
	void *mem;
	size_t bytes;
	uint32_t nslots;
	int efd[2];
	struct ferry_chan b, p;		/* broker end, peer end */
	struct shared_stats {
		uint64_t sent, received, wakes, sleeps;
		int32_t fail_at;
	} *peer;			/* what a forked peer reports */
};

FIXTURE_VARIANT(chan) {
	enum ferry_bell_mode mode;
};

FIXTURE_VARIANT_ADD(chan, futex) {
	.mode = FERRY_BELL_FUTEX,
};

FIXTURE_VARIANT_ADD(chan, eventfd) {
	.mode = FERRY_BELL_EVENTFD,
};

/* (Re)format with every index at @start, then attach both ends. */
static int setup_chan(FIXTURE_DATA(chan) *self, enum ferry_bell_mode mode, uint32_t start)
{
	enum ferry_chan_dir d;
	int r;

	r = ferry_chan_format(self->mem, self->bytes, self->nslots);
	if (r)
		return r;
	for (d = FERRY_TO_BROKER; d <= FERRY_TO_PEER; d++) {
		atomic_store(&ctl_of(self->mem, self->nslots, d)->tail, start);
		atomic_store(&ctl_of(self->mem, self->nslots, d)->head, start);
	}
	r = ferry_chan_attach(&self->b, self->mem, self->bytes, true, mode, self->efd);
	if (r)
		return r;
	return ferry_chan_attach(&self->p, self->mem, self->bytes, false, mode, self->efd);
}

FIXTURE_SETUP(chan)
{
	self->nslots = 64;
	self->bytes = ferry_chan_bytes(self->nslots);
	self->mem = map_guarded(self->bytes, &self->map, &self->maplen);
	ASSERT_NE(NULL, self->mem);
	self->peer = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->peer);
	self->efd[0] = self->efd[1] = -1;
	if (variant->mode == FERRY_BELL_EVENTFD) {
		self->efd[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		self->efd[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		ASSERT_LE(0, self->efd[0]);
		ASSERT_LE(0, self->efd[1]);
	}
	ASSERT_EQ(0, setup_chan(self, variant->mode, 0));
}

FIXTURE_TEARDOWN(chan)
{
	if (self->efd[0] >= 0)
		close(self->efd[0]);
	if (self->efd[1] >= 0)
		close(self->efd[1]);
	munmap(self->peer, PAGE);
	munmap(self->map, self->maplen);
}

TEST_F(chan, send_recv_keeps_order_both_ways)
{
	struct ferry_desc d;
	uint64_t i;

	EXPECT_EQ(FERRY_TO_BROKER, self->b.rx_dir);
	EXPECT_EQ(FERRY_TO_PEER, self->p.rx_dir);
	for (i = 0; i < 10; i++) {
		fill_desc(&d, i);
		ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
		fill_desc(&d, 1000 + i);
		ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	}
	EXPECT_EQ(10, ferry_chan_pending(&self->b, FERRY_TO_PEER));
	EXPECT_EQ(10, ferry_chan_pending(&self->p, FERRY_TO_PEER));
	EXPECT_EQ(10, ferry_chan_pending(&self->b, FERRY_TO_BROKER));
	for (i = 0; i < 10; i++) {
		memset(&d, 0xee, sizeof(d));
		ASSERT_EQ(0, ferry_chan_recv(&self->p, &d));
		EXPECT_TRUE(desc_is(&d, i));
		ASSERT_EQ(0, ferry_chan_recv(&self->b, &d));
		EXPECT_TRUE(desc_is(&d, 1000 + i));
	}
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->p, &d));
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->b, &d));
	EXPECT_EQ(10, self->b.sent);
	EXPECT_EQ(10, self->b.received);
	EXPECT_EQ(10, self->p.sent);
	EXPECT_EQ(10, self->p.received);
	/* Nobody announced a sleep, so no bell rang. */
	EXPECT_EQ(0, self->b.wakes);
	EXPECT_EQ(0, self->p.wakes);
}

TEST_F(chan, full_ring_refuses_and_loses_nothing)
{
	struct ferry_desc d;
	uint64_t i, next = 0, sent = 0;
	int round;

	for (round = 0; round < 3; round++) {
		for (i = 0; i < self->nslots; i++) {
			fill_desc(&d, sent);
			ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
			sent++;
		}
		fill_desc(&d, 999999);
		EXPECT_EQ(-EAGAIN, ferry_chan_send(&self->b, &d));
		EXPECT_EQ(-EAGAIN, ferry_chan_send(&self->b, &d));
		EXPECT_EQ(self->nslots, ferry_chan_pending(&self->p, FERRY_TO_PEER));
		/* Take a few, refill exactly that many, full again. */
		for (i = 0; i < 5; i++) {
			ASSERT_EQ(0, ferry_chan_recv(&self->p, &d));
			EXPECT_TRUE(desc_is(&d, next++));
		}
		for (i = 0; i < 5; i++) {
			fill_desc(&d, sent++);
			ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
		}
		fill_desc(&d, 999999);
		EXPECT_EQ(-EAGAIN, ferry_chan_send(&self->b, &d));
		while (ferry_chan_recv(&self->p, &d) == 0)
			EXPECT_TRUE(desc_is(&d, next++)) TH_LOG("at %llu", (unsigned long long)next);
		EXPECT_EQ(sent, next);
	}
	EXPECT_EQ(9, self->b.full);
	EXPECT_EQ(sent, self->b.sent);
}

TEST_F(chan, empty_ring_is_eagain)
{
	struct ferry_desc d;

	memset(&d, 0x77, sizeof(d));
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->b, &d));
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->p, &d));
	EXPECT_EQ(0x77777777u, d.op);	/* untouched */
	EXPECT_EQ(0, ferry_chan_pending(&self->b, FERRY_TO_BROKER));
	EXPECT_EQ(0, ferry_chan_pending(&self->b, FERRY_TO_PEER));
	EXPECT_EQ(-ETIMEDOUT, ferry_chan_recv_wait(&self->b, &d, 0, NULL));
}

TEST_F(chan, indices_wrap_past_uint32_max)
{
	const uint32_t start = UINT32_MAX - 10;
	struct ferry_desc d;
	uint64_t sent = 0, got = 0, psent = 0, pgot = 0;
	unsigned int round, k, batch;

	ASSERT_EQ(0, setup_chan(self, variant->mode, start));
	for (round = 0; round < 20 * self->nslots / 8; round++) {
		batch = 1 + (round * 7) % self->nslots;	/* 1 .. nslots, full rings too */
		for (k = 0; k < batch; k++) {
			fill_desc(&d, sent);
			ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
			sent++;
			fill_desc(&d, psent + 77);
			ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
			psent++;
		}
		EXPECT_EQ(batch, ferry_chan_pending(&self->p, FERRY_TO_PEER));
		for (k = 0; k < batch; k++) {
			ASSERT_EQ(0, ferry_chan_recv(&self->p, &d));
			ASSERT_TRUE(desc_is(&d, got)) TH_LOG("desc %llu", (unsigned long long)got);
			got++;
			ASSERT_EQ(0, ferry_chan_recv(&self->b, &d));
			ASSERT_TRUE(desc_is(&d, pgot + 77));
			pgot++;
		}
		EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->p, &d));
	}
	EXPECT_GT(sent, 20 * self->nslots);
	EXPECT_EQ((uint32_t)(start + sent),
		  atomic_load(&ctl_of(self->mem, self->nslots, FERRY_TO_PEER)->tail));
	EXPECT_EQ((uint32_t)(start + sent),
		  atomic_load(&ctl_of(self->mem, self->nslots, FERRY_TO_PEER)->head));
	EXPECT_LT(atomic_load(&ctl_of(self->mem, self->nslots, FERRY_TO_BROKER)->tail), start);
}

TEST_F(chan, corrupt_tail_is_eproto_and_reads_stay_inside)
{
	struct ferry_chan_ctl *k = ctl_of(self->mem, self->nslots, FERRY_TO_BROKER);
	uint32_t bad[] = { 65, 66, 1000, 0x80000000u, UINT32_MAX, UINT32_MAX - 63 };
	struct ferry_desc d;
	uint32_t seq;
	unsigned int i;

	/* The broker consumes TO_BROKER with head 0; a hostile peer writes tail. */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint32_t t = bad[i];

		atomic_store(&k->tail, t);
		EXPECT_EQ(-EPROTO, ferry_chan_recv(&self->b, &d)) TH_LOG("tail %u", t);
		EXPECT_GT(ferry_chan_pending(&self->b, FERRY_TO_BROKER), self->nslots);
		EXPECT_FALSE(ferry_chan_prepare_sleep(&self->b, &seq));
		EXPECT_EQ(0, atomic_load(&k->waiting));
		EXPECT_EQ(-EPROTO, ferry_chan_recv_wait(&self->b, &d, 1000000000, NULL));
	}
	/* A full ring of garbage is legal: every slot read, none beyond. */
	memset((char *)(k + 1), 0xab, (size_t)self->nslots * FERRY_DESC_SIZE);
	atomic_store(&k->tail, self->nslots);
	for (i = 0; i < self->nslots; i++) {
		ASSERT_EQ(0, ferry_chan_recv(&self->b, &d));
		EXPECT_EQ(0xababababu, d.op);
	}
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->b, &d));
	/* Going backwards is as impossible as jumping too far. */
	atomic_store(&k->tail, self->nslots - 1);
	EXPECT_EQ(-EPROTO, ferry_chan_recv(&self->b, &d));
	atomic_store(&k->tail, self->nslots + 3);
	for (i = 0; i < 3; i++)
		EXPECT_EQ(0, ferry_chan_recv(&self->b, &d));
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->b, &d));
	/* The shared copy of our own head is only written, never trusted. */
	atomic_store(&k->head, 12345);
	atomic_store(&k->tail, self->nslots + 4);
	EXPECT_EQ(0, ferry_chan_recv(&self->b, &d));
	EXPECT_EQ(self->nslots + 4, atomic_load(&k->head));
}

TEST_F(chan, corrupt_head_is_eproto_for_the_sender)
{
	struct ferry_chan_ctl *k = ctl_of(self->mem, self->nslots, FERRY_TO_BROKER);
	struct ferry_desc d;
	unsigned int ok = 0;
	int r;

	/* The peer produces TO_BROKER; a hostile broker side writes head. */
	atomic_store(&k->head, 0x40000000);
	EXPECT_GT(ferry_chan_pending(&self->p, FERRY_TO_BROKER), self->nslots);
	fill_desc(&d, 1);
	while ((r = ferry_chan_send(&self->p, &d)) == 0 && ok <= self->nslots)
		ok++;
	EXPECT_EQ(-EPROTO, r);
	EXPECT_LE(ok, self->nslots);
	/* Head ahead of tail by one is impossible too. */
	atomic_store(&k->head, ok + 1);
	EXPECT_EQ(-EPROTO, ferry_chan_send(&self->p, &d));
	/* Restored, the ring works again. */
	atomic_store(&k->head, ok);
	EXPECT_EQ(0, ferry_chan_send(&self->p, &d));
}

TEST_F(chan, recv_wait_times_out)
{
	struct ferry_desc d;
	uint64_t t0, el;

	/* Spinning only. */
	self->b.spin_ns = 50 * 1000 * 1000;
	t0 = now_ns();
	EXPECT_EQ(-ETIMEDOUT, ferry_chan_recv_wait(&self->b, &d, 20 * 1000 * 1000, NULL));
	el = now_ns() - t0;
	EXPECT_GE(el, 20 * 1000 * 1000);
	EXPECT_LT(el, 2000ull * 1000 * 1000);
	EXPECT_EQ(0, self->b.sleeps);
	/* Sleeping only. */
	self->b.spin_ns = 0;
	t0 = now_ns();
	EXPECT_EQ(-ETIMEDOUT, ferry_chan_recv_wait(&self->b, &d, 30 * 1000 * 1000, NULL));
	el = now_ns() - t0;
	EXPECT_GE(el, 30 * 1000 * 1000);
	EXPECT_LT(el, 2000ull * 1000 * 1000);
	EXPECT_LE(1, self->b.sleeps);
	EXPECT_EQ(0, atomic_load(&ctl_of(self->mem, self->nslots, FERRY_TO_BROKER)->waiting));
	/* Zero: just a try. */
	t0 = now_ns();
	EXPECT_EQ(-ETIMEDOUT, ferry_chan_recv_wait(&self->b, &d, 0, NULL));
	EXPECT_LT(now_ns() - t0, 100ull * 1000 * 1000);
	/* Something queued comes back at once. */
	fill_desc(&d, 5);
	ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	EXPECT_EQ(0, ferry_chan_recv_wait(&self->b, &d, 0, NULL));
	EXPECT_TRUE(desc_is(&d, 5));
}

TEST_F(chan, prepare_sleep_makes_the_producer_ring)
{
	_Atomic uint32_t *word = ferry_chan_bell_word(&self->b, FERRY_TO_BROKER);
	struct ferry_desc d;
	uint32_t seq, before;

	fill_desc(&d, 1);
	ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	EXPECT_FALSE(ferry_chan_prepare_sleep(&self->b, &seq));
	ASSERT_EQ(0, ferry_chan_recv(&self->b, &d));
	EXPECT_EQ(0, self->p.wakes);

	before = atomic_load(word);
	EXPECT_TRUE(ferry_chan_prepare_sleep(&self->b, &seq));
	EXPECT_EQ(before, seq);
	EXPECT_EQ(1, self->b.sleeps);
	ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	EXPECT_EQ(1, self->p.wakes);
	EXPECT_NE(seq, atomic_load(word));	/* a futex wait on seq would not sleep */
	if (variant->mode == FERRY_BELL_EVENTFD) {
		uint64_t v = 0;

		EXPECT_EQ(8, read(self->efd[FERRY_TO_BROKER], &v, 8));
		EXPECT_EQ(1, v);
	}
	/* The rest of a burst finds the bell already rung for this sleep. */
	ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	EXPECT_EQ(1, self->p.wakes);
	ferry_chan_end_sleep(&self->b);
	ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	EXPECT_EQ(1, self->p.wakes);	/* nobody waits any more */
	for (int i = 0; i < 3; i++)
		EXPECT_EQ(0, ferry_chan_recv(&self->b, &d));
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->b, &d));
	/* The next sleep gets its own ring. */
	EXPECT_TRUE(ferry_chan_prepare_sleep(&self->b, &seq));
	ASSERT_EQ(0, ferry_chan_send(&self->p, &d));
	EXPECT_EQ(2, self->p.wakes);
	ferry_chan_end_sleep(&self->b);
}

struct waiter {
	struct ferry_chan *c;
	_Atomic bool *dead;
	int64_t timeout_ns;
	int ret;
	struct ferry_desc d;
};

static void *waiter_fn(void *arg)
{
	struct waiter *w = arg;

	w->ret = ferry_chan_recv_wait(w->c, &w->d, w->timeout_ns, w->dead);
	return NULL;
}

TEST_F(chan, recv_wait_ends_with_epipe_on_dead_and_kick)
{
	_Atomic bool dead = false;
	struct waiter w = { .c = &self->p, .dead = &dead, .timeout_ns = -1 };
	struct ferry_desc d;
	pthread_t t;

	/* Queued descriptors come first, even when dead is set. */
	fill_desc(&d, 3);
	ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
	atomic_store(&dead, true);
	EXPECT_EQ(0, ferry_chan_recv_wait(&self->p, &d, -1, &dead));
	EXPECT_TRUE(desc_is(&d, 3));
	EXPECT_EQ(-EPIPE, ferry_chan_recv_wait(&self->p, &d, -1, &dead));
	atomic_store(&dead, false);

	self->p.spin_ns = 0;
	ASSERT_EQ(0, pthread_create(&t, NULL, waiter_fn, &w));
	usleep(50 * 1000);
	atomic_store(&dead, true);
	ferry_chan_kick(&self->b, FERRY_TO_PEER);
	ASSERT_EQ(0, pthread_join(t, NULL));
	EXPECT_EQ(-EPIPE, w.ret);
	EXPECT_LE(1, self->p.sleeps);
}

static void on_usr1(int sig)
{
	(void)sig;
}

struct poker {
	pthread_t target;
	int delay_ms;
};

static void *poker_fn(void *arg)
{
	struct poker *k = arg;

	usleep(k->delay_ms * 1000);
	pthread_kill(k->target, SIGUSR1);
	return NULL;
}

TEST_F(chan, recv_wait_eintr_on_signal)
{
	struct sigaction sa = { .sa_handler = on_usr1 };	/* no SA_RESTART */
	struct poker k = { .target = pthread_self(), .delay_ms = 50 };
	struct ferry_desc d;
	pthread_t t;
	uint64_t t0;

	ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));
	self->b.spin_ns = 0;
	ASSERT_EQ(0, pthread_create(&t, NULL, poker_fn, &k));
	t0 = now_ns();
	EXPECT_EQ(-EINTR, ferry_chan_recv_wait(&self->b, &d, 5000ull * 1000 * 1000, NULL));
	EXPECT_LT(now_ns() - t0, 4000ull * 1000 * 1000);
	pthread_join(t, NULL);
	EXPECT_EQ(0, atomic_load(&ctl_of(self->mem, self->nslots, FERRY_TO_BROKER)->waiting));
}

TEST_F(chan, reattach_mid_stream_continues)
{
	struct ferry_desc d;
	uint64_t i;

	for (i = 0; i < 40; i++) {
		fill_desc(&d, i);
		ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
	}
	for (i = 0; i < 15; i++) {
		ASSERT_EQ(0, ferry_chan_recv(&self->p, &d));
		EXPECT_TRUE(desc_is(&d, i));
	}
	/* A restarted peer attaches again and picks up at descriptor 15. */
	ASSERT_EQ(0, ferry_chan_attach(&self->p, self->mem, self->bytes, false, variant->mode,
				       self->efd));
	EXPECT_EQ(25, ferry_chan_pending(&self->p, FERRY_TO_PEER));
	for (i = 15; i < 40; i++) {
		ASSERT_EQ(0, ferry_chan_recv(&self->p, &d));
		EXPECT_TRUE(desc_is(&d, i));
	}
	EXPECT_EQ(-EAGAIN, ferry_chan_recv(&self->p, &d));
}

struct echo {
	struct ferry_chan *c;
	unsigned int n;
	int ret;
};

static void *echo_fn(void *arg)
{
	struct echo *e = arg;
	struct ferry_desc d;
	unsigned int i;

	for (i = 0; i < e->n; i++) {
		e->ret = ferry_chan_recv_wait(e->c, &d, 10ll * 1000 * 1000 * 1000, NULL);
		if (e->ret)
			return NULL;
		if (!desc_is(&d, i)) {
			e->ret = -EBADMSG;
			return NULL;
		}
		e->ret = ferry_chan_send(e->c, &d);
		if (e->ret)
			return NULL;
	}
	return NULL;
}

/* Eventfds made without EFD_NONBLOCK (as a broker might) must work too. */
TEST_F(chan, threads_ping_pong_sleeping_with_blocking_eventfds)
{
	struct echo e = { .c = &self->p, .n = 2000 };
	struct ferry_desc d;
	unsigned int i;
	pthread_t t;

	if (variant->mode == FERRY_BELL_EVENTFD) {
		close(self->efd[0]);
		close(self->efd[1]);
		self->efd[0] = eventfd(0, EFD_CLOEXEC);
		self->efd[1] = eventfd(0, EFD_CLOEXEC);
		ASSERT_LE(0, self->efd[0]);
		ASSERT_LE(0, self->efd[1]);
		ASSERT_EQ(0, setup_chan(self, variant->mode, 0));
	}
	self->b.spin_ns = self->p.spin_ns = 0;
	ASSERT_EQ(0, pthread_create(&t, NULL, echo_fn, &e));
	for (i = 0; i < e.n; i++) {
		fill_desc(&d, i);
		ASSERT_EQ(0, ferry_chan_send(&self->b, &d));
		ASSERT_EQ(0, ferry_chan_recv_wait(&self->b, &d, 10ll * 1000 * 1000 * 1000, NULL));
		ASSERT_TRUE(desc_is(&d, i));
	}
	ASSERT_EQ(0, pthread_join(t, NULL));
	EXPECT_EQ(0, e.ret);
	EXPECT_GT(self->b.sleeps + self->p.sleeps, 0);
}

/*
 * Ping-pong between this process (broker end) and a forked peer: the
 * broker sends i, the peer checks it and answers i + 2^32.  Stops after
 * @n round trips or when @budget_ns has passed (for slow emulators); an
 * op of 0 tells the peer to stop.  Round-trip times go to @rtt (if not
 * NULL).  Returns the number of round trips, or -1 on failure.
 */
#define STOP_OP 0u

static int64_t ping_pong(struct __test_metadata *_metadata, FIXTURE_DATA(chan) *self,
			 uint64_t n, uint64_t budget_ns, uint64_t spin_ns, uint32_t *rtt)
{
	const int64_t tmo = 10ull * 1000 * 1000 * 1000;
	uint64_t i, t0, end;
	struct ferry_desc d;
	pid_t pid;
	int st;

	memset(self->peer, 0, sizeof(*self->peer));
	self->peer->fail_at = -1;
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		struct ferry_chan *c = &self->p;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		c->spin_ns = spin_ns;
		for (i = 0;; i++) {
			if (ferry_chan_recv_wait(c, &d, tmo, NULL)) {
				self->peer->fail_at = (int32_t)i;
				_exit(1);
			}
			if (d.op == STOP_OP)
				break;
			if (!desc_is(&d, i)) {
				self->peer->fail_at = (int32_t)i;
				_exit(2);
			}
			fill_desc(&d, i + (1ull << 32));
			if (ferry_chan_send(c, &d)) {
				self->peer->fail_at = (int32_t)i;
				_exit(3);
			}
		}
		self->peer->sent = c->sent;
		self->peer->received = c->received;
		self->peer->wakes = c->wakes;
		self->peer->sleeps = c->sleeps;
		_exit(0);
	}

	self->b.spin_ns = spin_ns;
	end = now_ns() + budget_ns;
	for (i = 0; i < n; i++) {
		t0 = now_ns();
		fill_desc(&d, i);
		if (ferry_chan_send(&self->b, &d))
			break;
		if (ferry_chan_recv_wait(&self->b, &d, tmo, NULL))
			break;
		if (rtt)
			rtt[i] = (uint32_t)(now_ns() - t0);
		if (!desc_is(&d, i + (1ull << 32))) {
			TH_LOG("reply %llu is wrong", (unsigned long long)i);
			break;
		}
		if ((i & 255) == 0 && t0 > end) {
			i++;
			break;
		}
	}
	memset(&d, 0, sizeof(d));
	d.op = STOP_OP;
	ferry_chan_send(&self->b, &d);
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		TH_LOG("peer failed: status %#x at %d", st, self->peer->fail_at);
		return -1;
	}
	if (self->peer->received != i + 1 || self->peer->sent != i) {
		TH_LOG("peer saw %llu, sent %llu, broker did %llu",
		       (unsigned long long)self->peer->received,
		       (unsigned long long)self->peer->sent, (unsigned long long)i);
		return -1;
	}
	return (int64_t)i;
}

TEST_F_TIMEOUT(chan, fork_ping_pong_100k, 120)
{
	int64_t n = ping_pong(_metadata, self, 100000, 10ull * 1000 * 1000 * 1000,
			      FERRY_CHAN_SPIN_NS_DEFAULT, NULL);

	ASSERT_LT(0, n);
	if (n < 100000)
		note("ping-pong: only %lld round trips in 10 s (slow machine)\n",
			       (long long)n);
	EXPECT_GE(n, 1000);
	EXPECT_EQ(n + 1, self->b.sent);	/* + the stop descriptor */
	EXPECT_EQ(n, self->b.received);
}

TEST_F_TIMEOUT(chan, spin_zero_always_sleeps, 120)
{
	int64_t n = ping_pong(_metadata, self, 5000, 4ull * 1000 * 1000 * 1000, 0, NULL);

	ASSERT_LT(0, n);
	EXPECT_GE(n, 100);
	/* Every receive that found nothing slept, so bells rang on both sides. */
	EXPECT_GT(self->b.sleeps, 0);
	EXPECT_GT(self->peer->sleeps, 0);
	EXPECT_GT(self->b.wakes + self->peer->wakes, 0);
	note("spin 0 (%s): %lld round trips, broker slept %llu, peer slept %llu, bells %llu\n",
		       variant->mode == FERRY_BELL_FUTEX ? "futex" : "eventfd", (long long)n,
		       (unsigned long long)self->b.sleeps, (unsigned long long)self->peer->sleeps,
		       (unsigned long long)(self->b.wakes + self->peer->wakes));
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

TEST_F_TIMEOUT(chan, round_trip_latency, 120)
{
	const uint64_t n = 20000;
	uint32_t *rtt = calloc(n, sizeof(*rtt));
	static const struct { const char *name; uint64_t spin_ns; } modes[] = {
		{ "spin", FERRY_CHAN_SPIN_NS_DEFAULT },
		{ "sleep", 0 },
	};
	unsigned int m;

	ASSERT_NE(NULL, rtt);
	for (m = 0; m < 2; m++) {
		int64_t got = ping_pong(_metadata, self, n, 2ull * 1000 * 1000 * 1000,
					modes[m].spin_ns, rtt);
		uint64_t sleeps = self->b.sleeps;

		ASSERT_LT(10, got);
		qsort(rtt, (size_t)got, sizeof(*rtt), cmp_u32);
		note("round trip (%s, %s, spin %llu ns): median %.2f us, p90 %.2f us, p99 %.2f us over %lld (broker slept %llu times)\n",
			       variant->mode == FERRY_BELL_FUTEX ? "futex" : "eventfd",
			       modes[m].name, (unsigned long long)modes[m].spin_ns,
			       rtt[got / 2] / 1000.0, rtt[got * 9 / 10] / 1000.0,
			       rtt[got * 99 / 100] / 1000.0, (long long)got,
			       (unsigned long long)sleeps);
		/* Very generous: a sleeping round trip on a slow VM is ~100 us. */
		EXPECT_LT(rtt[got / 2], 50 * 1000 * 1000);
		ASSERT_EQ(0, setup_chan(self, variant->mode, 0));
	}
	free(rtt);
}

TEST_HARNESS_MAIN
