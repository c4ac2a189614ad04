// SPDX-License-Identifier: GPL-2.0
/*
 * The io_uring waitset (userspace/lib/waitset.c): futex-armed keys
 * (IORING_OP_FUTEX_WAIT, 6.7+; skipped elsewhere), eventfd-armed and
 * poll-armed keys, disarm and its races, key limits, timeouts, and the
 * broker pattern over 256 channels fed by several processes with no lost
 * wake-up.  Each case runs with the futex path and with the eventfd path
 * (forced), which is the only path on a 6.1 kernel.
 */
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest_harness.h"

#include "chan.h"
#include "waitset.h"

#define MS (1000ull * 1000)
#define SEC (1000ull * MS)

#define note(...) do { ksft_print_msg(__VA_ARGS__); fflush(stdout); } while (0)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static void *map_shared(size_t bytes)
{
	void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return m == MAP_FAILED ? NULL : m;
}

static void futex_wake_shared(_Atomic uint32_t *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void efd_write(int efd)
{
	uint64_t one = 1;

	if (write(efd, &one, sizeof(one)) != sizeof(one))
		abort();
}

/* Fork a child that runs @fn(@arg) after @delay_ms and exits. */
static pid_t later(int delay_ms, void (*fn)(void *), void *arg)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		usleep(delay_ms * 1000);
		if (fn)
			fn(arg);
		_exit(0);
	}
	return pid;
}

static void do_wake(void *w)
{
	futex_wake_shared(w);
}

static void do_set_and_wake(void *w)
{
	atomic_fetch_add((_Atomic uint32_t *)w, 1);
	futex_wake_shared(w);
}

static void do_efd_write(void *p)
{
	efd_write(*(int *)p);
}

static int reap_child(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

TEST(create_rejects_bad_args)
{
	struct ferry_waitset *ws = NULL;

	EXPECT_EQ(-EINVAL, ferry_waitset_create(0, false, &ws));
	EXPECT_EQ(-EINVAL, ferry_waitset_create(FERRY_WAITSET_MAX_SOURCES + 1, false, &ws));
	EXPECT_EQ(-EINVAL, ferry_waitset_create(4, false, NULL));
	EXPECT_EQ(NULL, ws);
	ASSERT_EQ(0, ferry_waitset_create(FERRY_WAITSET_MAX_SOURCES, false, &ws));
	ferry_waitset_destroy(ws);
	ferry_waitset_destroy(NULL);
}

TEST(mode_is_probed_and_can_be_forced)
{
	struct ferry_waitset *ws;
	struct utsname u;

	uname(&u);
	ASSERT_EQ(0, ferry_waitset_create(4, false, &ws));
	note("waitset on kernel %s: %s\n", u.release,
	     ferry_waitset_mode(ws) == FERRY_BELL_FUTEX ?
	     "io_uring FUTEX_WAIT path" : "eventfd path (no IORING_OP_FUTEX_WAIT)");
	EXPECT_LE(0, ferry_waitset_fd(ws));
	ferry_waitset_destroy(ws);

	ASSERT_EQ(0, ferry_waitset_create(4, true, &ws));
	EXPECT_EQ(FERRY_BELL_EVENTFD, ferry_waitset_mode(ws));
	ferry_waitset_destroy(ws);

	setenv("FERRY_WAITSET_FORCE_EVENTFD", "1", 1);
	ASSERT_EQ(0, ferry_waitset_create(4, false, &ws));
	EXPECT_EQ(FERRY_BELL_EVENTFD, ferry_waitset_mode(ws));
	ferry_waitset_destroy(ws);
	unsetenv("FERRY_WAITSET_FORCE_EVENTFD");
}

FIXTURE(ws) {
	struct ferry_waitset *ws;
	_Atomic uint32_t *words;	/* a shared page of futex words */
	int efd[4];
};

FIXTURE_VARIANT(ws) {
	bool force_eventfd;
};

FIXTURE_VARIANT_ADD(ws, futex) {
	.force_eventfd = false,
};

FIXTURE_VARIANT_ADD(ws, eventfd) {
	.force_eventfd = true,
};

FIXTURE_SETUP(ws)
{
	unsigned int i;

	ASSERT_EQ(0, ferry_waitset_create(64, variant->force_eventfd, &self->ws));
	self->words = map_shared(4096);
	ASSERT_NE(NULL, self->words);
	for (i = 0; i < 4; i++) {
		self->efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		ASSERT_LE(0, self->efd[i]);
	}
}

FIXTURE_TEARDOWN(ws)
{
	unsigned int i;

	ferry_waitset_destroy(self->ws);
	munmap((void *)self->words, 4096);
	for (i = 0; i < 4; i++)
		close(self->efd[i]);
}

/* The futex variant needs IORING_OP_FUTEX_WAIT (Linux 6.7+). */
#define REQUIRE_VARIANT_MODE() do { \
	if (!variant->force_eventfd && ferry_waitset_mode(self->ws) != FERRY_BELL_FUTEX) { \
		struct utsname u_; \
		uname(&u_); \
		SKIP(return, "kernel %s: io_uring has no FUTEX_WAIT (needs 6.7+)", u_.release); \
	} \
	ASSERT_EQ(variant->force_eventfd ? FERRY_BELL_EVENTFD : FERRY_BELL_FUTEX, \
		  ferry_waitset_mode(self->ws)); \
} while (0)

/* Futex arming only: no eventfd variant. */
FIXTURE(fws) {
	struct ferry_waitset *ws;
	_Atomic uint32_t *words;
};

FIXTURE_SETUP(fws)
{
	ASSERT_EQ(0, ferry_waitset_create(8, false, &self->ws));
	self->words = map_shared(4096);
	ASSERT_NE(NULL, self->words);
}

FIXTURE_TEARDOWN(fws)
{
	ferry_waitset_destroy(self->ws);
	munmap((void *)self->words, 4096);
}

#define REQUIRE_FUTEX() do { \
	if (ferry_waitset_mode(self->ws) != FERRY_BELL_FUTEX) { \
		struct utsname u_; \
		uname(&u_); \
		SKIP(return, "kernel %s: io_uring has no FUTEX_WAIT (needs 6.7+)", u_.release); \
	} \
} while (0)

TEST_F(fws, futex_key_fires_on_wake_from_another_process)
{
	_Atomic uint32_t *w = &self->words[0];
	uint32_t keys[4];
	pid_t pid;

	REQUIRE_FUTEX();
	ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 7, w, 0));
	EXPECT_TRUE(ferry_waitset_armed(self->ws, 7));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 20 * MS));
	EXPECT_TRUE(ferry_waitset_armed(self->ws, 7));

	/* Value changed, then woken. */
	pid = later(30, do_set_and_wake, (void *)w);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 10 * SEC));
	EXPECT_EQ(7, keys[0]);
	EXPECT_FALSE(ferry_waitset_armed(self->ws, 7));
	EXPECT_EQ(0, reap_child(pid));
	EXPECT_EQ(1, atomic_load(w));

	/* Woken with the value unchanged: a wake is a wake. */
	ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 8, w, 1));
	pid = later(30, do_wake, (void *)w);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 10 * SEC));
	EXPECT_EQ(8, keys[0]);
	EXPECT_EQ(0, reap_child(pid));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
}

/*
 * Regions are memfds mapped at different addresses in different
 * processes: the wait must be a shared futex (keyed by the page, not by
 * the address) or the wake would miss it.
 */
TEST_F(fws, futex_key_is_shared_across_mappings_of_one_memfd)
{
	int fd = memfd_create("ferry-test", MFD_CLOEXEC);
	_Atomic uint32_t *a, *b;
	uint32_t keys[4];
	pid_t pid;

	REQUIRE_FUTEX();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ftruncate(fd, 4096));
	a = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, a);
	b = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, b);
	ASSERT_NE(a, b);
	ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 5, &a[16], 0));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
	munmap((void *)a, 4096);	/* the wait holds the page, not the address */
	pid = later(30, do_wake, (void *)&b[16]);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 10 * SEC));
	EXPECT_EQ(5, keys[0]);
	EXPECT_EQ(0, reap_child(pid));
	munmap((void *)b, 4096);
	close(fd);
}

TEST_F(fws, futex_key_fires_at_once_when_value_already_differs)
{
	_Atomic uint32_t *w = &self->words[1];
	uint32_t keys[4];
	uint64_t t0;

	REQUIRE_FUTEX();
	atomic_store(w, 5);
	ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 1, w, 4));
	/* The kernel's compare fails (-EAGAIN): that completion fires. */
	EXPECT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 0));
	EXPECT_EQ(1, keys[0]);
	ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 1, w, 6));
	t0 = now_ns();
	EXPECT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 5 * SEC));
	EXPECT_LT(now_ns() - t0, 1 * SEC);
}

TEST_F(ws, futex_arm_checks_word_and_mode)
{
	REQUIRE_VARIANT_MODE();
	if (variant->force_eventfd) {
		EXPECT_EQ(-EOPNOTSUPP, ferry_waitset_arm_futex(self->ws, 1, &self->words[0], 0));
		return;
	}
	EXPECT_EQ(-EINVAL, ferry_waitset_arm_futex(self->ws, 1, NULL, 0));
	EXPECT_EQ(-EINVAL, ferry_waitset_arm_futex(self->ws, 1,
			   (_Atomic uint32_t *)((char *)self->words + 2), 0));
	EXPECT_FALSE(ferry_waitset_armed(self->ws, 1));
}

TEST_F(ws, eventfd_key_fires_on_write_and_consumes_it)
{
	uint32_t keys[4];
	uint64_t v;
	pid_t pid;

	REQUIRE_VARIANT_MODE();
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 100, self->efd[0]));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 10 * MS));
	pid = later(30, do_efd_write, &self->efd[0]);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 10 * SEC));
	EXPECT_EQ(100, keys[0]);
	EXPECT_EQ(0, reap_child(pid));
	EXPECT_EQ(-1, read(self->efd[0], &v, sizeof(v)));
	EXPECT_EQ(EAGAIN, errno);

	/* Already readable: fires on the first wait. */
	efd_write(self->efd[0]);
	efd_write(self->efd[0]);
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 100, self->efd[0]));
	EXPECT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 0));
	EXPECT_EQ(-1, read(self->efd[0], &v, sizeof(v)));
	EXPECT_EQ(-EINVAL, ferry_waitset_arm_eventfd(self->ws, 101, -1));
}

TEST_F(ws, poll_key_fires_when_a_child_exits)
{
	uint32_t keys[4];
	pid_t pid;
	int pidfd;

	REQUIRE_VARIANT_MODE();
	pid = later(50, NULL, NULL);
	ASSERT_LT(0, pid);
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_waitset_arm_poll(self->ws, 0xffffffffu, pidfd));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 10 * SEC));
	EXPECT_EQ(0xffffffffu, keys[0]);
	EXPECT_EQ(0, reap_child(pid));
	close(pidfd);
	EXPECT_EQ(-EINVAL, ferry_waitset_arm_poll(self->ws, 1, -1));
}

TEST_F(ws, arm_twice_is_ebusy_and_disarm_unknown_is_enoent)
{
	uint32_t keys[4];

	REQUIRE_VARIANT_MODE();
	EXPECT_EQ(-ENOENT, ferry_waitset_disarm(self->ws, 3));
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 3, self->efd[0]));
	EXPECT_EQ(-EBUSY, ferry_waitset_arm_eventfd(self->ws, 3, self->efd[1]));
	EXPECT_EQ(-EBUSY, ferry_waitset_arm_poll(self->ws, 3, self->efd[1]));
	EXPECT_TRUE(ferry_waitset_armed(self->ws, 3));
	EXPECT_EQ(0, ferry_waitset_disarm(self->ws, 3));
	EXPECT_FALSE(ferry_waitset_armed(self->ws, 3));
	EXPECT_EQ(-ENOENT, ferry_waitset_disarm(self->ws, 3));
	/* Fired and reported: no longer armed. */
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 3, self->efd[0]));
	efd_write(self->efd[0]);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 5 * SEC));
	EXPECT_EQ(-ENOENT, ferry_waitset_disarm(self->ws, 3));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
}

TEST_F(ws, disarmed_key_never_fires_and_can_be_rearmed)
{
	_Atomic uint32_t *w = &self->words[2];
	uint32_t keys[4];

	REQUIRE_VARIANT_MODE();
	/* Disarmed before the event: the event stays for the next arm. */
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 9, self->efd[0]));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));	/* submitted */
	EXPECT_EQ(0, ferry_waitset_disarm(self->ws, 9));
	efd_write(self->efd[0]);
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 30 * MS));
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 9, self->efd[0]));
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 5 * SEC));
	EXPECT_EQ(9, keys[0]);

	/* Disarm then re-arm the same key at once, before any wait. */
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 9, self->efd[1]));
	EXPECT_EQ(0, ferry_waitset_disarm(self->ws, 9));
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 9, self->efd[2]));
	efd_write(self->efd[1]);	/* the old wait's fd: must not fire 9 */
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 30 * MS));
	efd_write(self->efd[2]);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 5 * SEC));
	EXPECT_EQ(9, keys[0]);

	/* Completed but not yet reported, then disarmed: dropped. */
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 10, self->efd[0]));
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 11, self->efd[3]));
	efd_write(self->efd[0]);
	efd_write(self->efd[3]);
	ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 1, 5 * SEC));
	usleep(10 * 1000);
	EXPECT_EQ(0, ferry_waitset_disarm(self->ws, keys[0] == 10 ? 11 : 10));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 30 * MS));

	if (variant->force_eventfd)
		return;
	/* A disarmed futex wait ignores wakes. */
	ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 12, w, 0));
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
	EXPECT_EQ(0, ferry_waitset_disarm(self->ws, 12));
	do_set_and_wake((void *)w);
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 30 * MS));
}

TEST_F(ws, many_fired_keys_come_out_max_at_a_time)
{
	enum { N = 40 };
	int efd[N];
	uint32_t keys[16], seen[N] = { 0 };
	unsigned int i, total = 0;
	int n;

	REQUIRE_VARIANT_MODE();
	for (i = 0; i < N; i++) {
		efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		ASSERT_LE(0, efd[i]);
		ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 1000 + i * 977, efd[i]));
	}
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 16, 0));
	for (i = 0; i < N; i++)
		efd_write(efd[i]);
	usleep(10 * 1000);
	while (total < N) {
		n = ferry_waitset_wait(self->ws, keys, 16, 5 * SEC);
		ASSERT_LT(0, n);
		ASSERT_GE(16, n);
		for (i = 0; i < (unsigned int)n; i++) {
			uint32_t k = keys[i] - 1000;

			ASSERT_EQ(0, k % 977);
			ASSERT_GT(N, k / 977);
			seen[k / 977]++;
		}
		total += n;
	}
	for (i = 0; i < N; i++) {
		EXPECT_EQ(1, seen[i]);
		close(efd[i]);
	}
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 16, 0));
}

TEST_F(ws, key_table_survives_arm_disarm_churn)
{
	uint32_t keys[64], k;
	unsigned int i, round;
	bool armed[64] = { false };

	REQUIRE_VARIANT_MODE();
	/* Keys chosen to collide in a small table; arms never fire (POLLIN on
	 * an empty eventfd). */
	srand(42);
	for (round = 0; round < 2000; round++) {
		i = (unsigned int)rand() % 64;
		k = i << 26 | i;
		if (armed[i]) {
			ASSERT_EQ(0, ferry_waitset_disarm(self->ws, k));
		} else {
			ASSERT_EQ(0, ferry_waitset_arm_poll(self->ws, k, self->efd[3]));
		}
		armed[i] = !armed[i];
		if (round % 97 == 0) {
			for (i = 0; i < 64; i++)
				ASSERT_EQ(armed[i], ferry_waitset_armed(self->ws, i << 26 | i));
			ASSERT_EQ(0, ferry_waitset_wait(self->ws, keys, 64, 0));
		}
	}
	for (i = 0; i < 64; i++)
		if (!armed[i])
			ASSERT_EQ(0, ferry_waitset_arm_poll(self->ws, i << 26 | i, self->efd[3]));
	EXPECT_EQ(-ENOSPC, ferry_waitset_arm_poll(self->ws, 12345, self->efd[3]));
	/* Everything fires now. */
	efd_write(self->efd[3]);
	k = 0;
	while (k < 64) {
		int n = ferry_waitset_wait(self->ws, keys, 64, 5 * SEC);

		ASSERT_LT(0, n);
		k += n;
	}
	EXPECT_EQ(64, k);
	EXPECT_EQ(0, ferry_waitset_arm_poll(self->ws, 12345, self->efd[3]));
}

TEST_F(ws, timeouts)
{
	uint32_t keys[4];
	uint64_t t0, el;
	pid_t pid;

	REQUIRE_VARIANT_MODE();
	/* Nothing armed. */
	t0 = now_ns();
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 0));
	EXPECT_LT(now_ns() - t0, 100 * MS);
	t0 = now_ns();
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 30 * MS));
	el = now_ns() - t0;
	EXPECT_GE(el, 30 * MS);
	EXPECT_LT(el, 3 * SEC);
	/* Armed, nothing happens. */
	ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 1, self->efd[0]));
	t0 = now_ns();
	EXPECT_EQ(0, ferry_waitset_wait(self->ws, keys, 4, 50 * MS));
	el = now_ns() - t0;
	EXPECT_GE(el, 50 * MS);
	EXPECT_LT(el, 3 * SEC);
	/* Forever, until something happens. */
	pid = later(30, do_efd_write, &self->efd[0]);
	EXPECT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, -1));
	EXPECT_EQ(0, reap_child(pid));
	EXPECT_EQ(-EINVAL, ferry_waitset_wait(self->ws, keys, 0, 0));
	EXPECT_EQ(-EINVAL, ferry_waitset_wait(self->ws, NULL, 4, 0));
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * One channel, a forked echo peer that always sleeps (spin 0), and this
 * process waiting for each reply in the waitset, as the dispatch thread
 * does: the cost of a doorbell through io_uring, printed as a TAP comment.
 */
TEST_F_TIMEOUT(ws, round_trip_through_the_waitset, 60)
{
	const unsigned int n = 5000;
	size_t bytes = ferry_chan_bytes(16);
	void *mem = map_shared(bytes);
	uint32_t *rtt = calloc(n, sizeof(*rtt)), keys[4], seq;
	int efd[2] = { -1, -1 };
	enum ferry_bell_mode mode;
	struct ferry_chan b, p;
	struct ferry_desc d;
	uint64_t end, t0;
	unsigned int i;
	pid_t pid;

	REQUIRE_VARIANT_MODE();
	ASSERT_NE(NULL, mem);
	ASSERT_NE(NULL, rtt);
	mode = ferry_waitset_mode(self->ws);
	if (mode == FERRY_BELL_EVENTFD) {
		efd[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		efd[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	}
	ASSERT_EQ(0, ferry_chan_format(mem, bytes, 16));
	ASSERT_EQ(0, ferry_chan_attach(&b, mem, bytes, true, mode, efd));
	ASSERT_EQ(0, ferry_chan_attach(&p, mem, bytes, false, mode, efd));
	fflush(stdout);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		p.spin_ns = 0;
		for (;;) {
			if (ferry_chan_recv_wait(&p, &d, 10 * SEC, NULL))
				_exit(1);
			if (d.op == 0)
				_exit(0);
			if (ferry_chan_send(&p, &d))
				_exit(2);
		}
	}
	end = now_ns() + 2 * SEC;
	for (i = 0; i < n && now_ns() < end; i++) {
		memset(&d, 0, sizeof(d));
		d.op = 1;
		d.tag = i;
		t0 = now_ns();
		ASSERT_EQ(0, ferry_chan_send(&b, &d));
		while (ferry_chan_recv(&b, &d) == -EAGAIN) {
			if (!ferry_chan_prepare_sleep(&b, &seq))
				continue;
			if (mode == FERRY_BELL_FUTEX) {
				ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, 1,
					  ferry_chan_bell_word(&b, FERRY_TO_BROKER), seq));
			} else {
				ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, 1,
					  efd[FERRY_TO_BROKER]));
			}
			ASSERT_EQ(1, ferry_waitset_wait(self->ws, keys, 4, 10 * SEC));
			ferry_chan_end_sleep(&b);
		}
		rtt[i] = (uint32_t)(now_ns() - t0);
		ASSERT_EQ(i, d.tag);
	}
	memset(&d, 0, sizeof(d));
	ASSERT_EQ(0, ferry_chan_send(&b, &d));
	EXPECT_EQ(0, reap_child(pid));
	ASSERT_LT(10, i);
	qsort(rtt, i, sizeof(*rtt), cmp_u32);
	note("round trip through the waitset (%s, peer sleeps): median %.2f us, p90 %.2f us over %u\n",
	     mode == FERRY_BELL_FUTEX ? "io_uring FUTEX_WAIT" : "io_uring eventfd read",
	     rtt[i / 2] / 1000.0, rtt[i * 9 / 10] / 1000.0, i);
	EXPECT_LT(rtt[i / 2], 50 * MS);
	if (efd[0] >= 0) {
		close(efd[0]);
		close(efd[1]);
	}
	free(rtt);
	munmap(mem, bytes);
}

TEST(full_waitset_is_enospc)
{
	struct ferry_waitset *ws;
	uint32_t keys[8];
	int efd = eventfd(0, EFD_NONBLOCK);
	unsigned int i;

	ASSERT_LE(0, efd);
	ASSERT_EQ(0, ferry_waitset_create(4, false, &ws));
	for (i = 0; i < 4; i++)
		ASSERT_EQ(0, ferry_waitset_arm_poll(ws, i, efd));
	EXPECT_EQ(-ENOSPC, ferry_waitset_arm_poll(ws, 4, efd));
	EXPECT_EQ(-EBUSY, ferry_waitset_arm_poll(ws, 3, efd));
	EXPECT_EQ(0, ferry_waitset_disarm(ws, 2));
	EXPECT_EQ(0, ferry_waitset_arm_poll(ws, 4, efd));
	efd_write(efd);
	for (i = 0; i < 4;) {
		int n = ferry_waitset_wait(ws, keys, 8, 5 * SEC);

		ASSERT_LT(0, n);
		i += n;
	}
	EXPECT_EQ(4, i);
	/* Arm and disarm many times between waits: more SQEs than the ring has. */
	for (i = 0; i < 100; i++) {
		ASSERT_EQ(0, ferry_waitset_arm_poll(ws, 7, efd));
		ASSERT_EQ(0, ferry_waitset_disarm(ws, 7));
	}
	EXPECT_EQ(0, ferry_waitset_wait(ws, keys, 8, 0));
	ferry_waitset_destroy(ws);
	close(efd);
}

/*
 * The broker pattern: NCHAN channels, NPROC producer processes each owning
 * NCHAN / NPROC of them, sending MSGS requests per channel on random
 * channels with a window of WINDOW per channel and waiting for the echo.
 * This process is the broker: it waits on every doorbell through one
 * waitset, drains fired channels, echoes, and re-arms.  A lost wake-up
 * shows as a 10 s wait with nothing to do.
 */
#define NCHAN 256
#define NPROC 4
#ifndef MSGS
#define MSGS 300
#endif
#define WINDOW 4
#define NSLOTS 16

struct fleet {
	void *mem;
	size_t per;		/* bytes per channel */
	int (*efd)[2];		/* per channel, EVENTFD mode only */
	enum ferry_bell_mode mode;
};

static void *chan_mem(struct fleet *f, unsigned int ch)
{
	return (char *)f->mem + (size_t)ch * f->per;
}

static int producer(struct fleet *f, unsigned int first, unsigned int n, unsigned int seed)
{
	struct ferry_chan c[NCHAN / NPROC];
	uint32_t next_send[NCHAN / NPROC] = { 0 }, next_recv[NCHAN / NPROC] = { 0 };
	unsigned int i, done = 0, rounds = 0;
	struct ferry_desc d;

	for (i = 0; i < n; i++)
		if (ferry_chan_attach(&c[i], chan_mem(f, first + i), f->per, false, f->mode,
				      f->efd ? f->efd[first + i] : NULL))
			return 10;
	srand(seed);
	while (done < n * MSGS) {
		unsigned int start = (unsigned int)rand() % n, k;
		bool sent = false;

		/* Send on a random channel whose window has room. */
		for (k = 0; k < n && !sent; k++) {
			i = (start + k) % n;
			if (next_send[i] < MSGS && next_send[i] - next_recv[i] < WINDOW) {
				memset(&d, 0, sizeof(d));
				d.op = 1;
				d.tag = (uint64_t)(first + i) << 32 | next_send[i];
				d.offset = next_send[i];
				if (ferry_chan_send(&c[i], &d))
					return 11;
				next_send[i]++;
				sent = true;
			}
		}
		/* Now and then pause, so the broker runs out of work and sleeps. */
		if (++rounds % 64 == 0)
			usleep((unsigned int)rand() % 300);
		/* Collect echoes; block on one channel when nothing could be sent. */
		for (i = 0; i < n; i++) {
			int r;

			while (next_recv[i] < next_send[i]) {
				if (sent)
					r = ferry_chan_recv(&c[i], &d);
				else
					r = ferry_chan_recv_wait(&c[i], &d, 10 * SEC, NULL);
				if (r == -EAGAIN)
					break;
				if (r)
					return 12;
				if (d.tag != ((uint64_t)(first + i) << 32 | next_recv[i]) ||
				    d.status != 7)
					return 13;
				next_recv[i]++;
				done++;
				sent = true;	/* block only once per round */
			}
		}
	}
	return 0;
}

TEST_F_TIMEOUT(ws, broker_pattern_256_channels_loses_no_wakeup, 180)
{
	struct ferry_chan *c = calloc(NCHAN, sizeof(*c));
	uint32_t next[NCHAN] = { 0 }, keys[64];
	unsigned int ready[NCHAN], nready = 0, i, p;
	bool is_ready[NCHAN] = { false };
	uint64_t total = 0, waits = 0, fired = 0, t0;
	struct fleet f;
	pid_t pid[NPROC];
	struct rlimit rl;

	REQUIRE_VARIANT_MODE();
	ASSERT_NE(NULL, c);
	f.mode = ferry_waitset_mode(self->ws);
	f.per = ferry_chan_bytes(NSLOTS);
	f.mem = map_shared(f.per * NCHAN);
	ASSERT_NE(NULL, f.mem);
	f.efd = NULL;
	if (f.mode == FERRY_BELL_EVENTFD) {
		/* Two eventfds per channel. */
		if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < 4 * NCHAN) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		f.efd = calloc(NCHAN, sizeof(*f.efd));
		ASSERT_NE(NULL, f.efd);
		for (i = 0; i < NCHAN; i++) {
			f.efd[i][0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
			f.efd[i][1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
			ASSERT_LE(0, f.efd[i][0]);
			ASSERT_LE(0, f.efd[i][1]);
		}
	}
	ferry_waitset_destroy(self->ws);
	ASSERT_EQ(0, ferry_waitset_create(NCHAN, variant->force_eventfd, &self->ws));
	for (i = 0; i < NCHAN; i++) {
		ASSERT_EQ(0, ferry_chan_format(chan_mem(&f, i), f.per, NSLOTS));
		ASSERT_EQ(0, ferry_chan_attach(&c[i], chan_mem(&f, i), f.per, true, f.mode,
					       f.efd ? f.efd[i] : NULL));
		c[i].spin_ns = 0;
	}

	t0 = now_ns();
	fflush(stdout);
	for (p = 0; p < NPROC; p++) {
		pid[p] = fork();
		ASSERT_LE(0, pid[p]);
		if (pid[p] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			close(ferry_waitset_fd(self->ws));
			_exit(producer(&f, p * (NCHAN / NPROC), NCHAN / NPROC, p + 1));
		}
	}

	/* Every channel starts out waiting (or ready, if a producer was quick). */
	for (i = 0; i < NCHAN; i++) {
		ready[nready++] = i;
		is_ready[i] = true;
	}
	while (total < (uint64_t)NCHAN * MSGS) {
		unsigned int still = 0;
		int n;

		/* Drain the ready channels; each one either re-arms or stays ready. */
		for (unsigned int r = 0; r < nready; r++) {
			struct ferry_desc d;
			uint32_t seq;
			int x;

			i = ready[r];
			while ((x = ferry_chan_recv(&c[i], &d)) == 0) {
				ASSERT_EQ(((uint64_t)i << 32) | next[i], d.tag);
				ASSERT_EQ(next[i], d.offset);
				next[i]++;
				total++;
				d.status = 7;
				ASSERT_EQ(0, ferry_chan_send(&c[i], &d));
			}
			ASSERT_EQ(-EAGAIN, x);
			if (!ferry_chan_prepare_sleep(&c[i], &seq)) {
				ready[still++] = i;
				continue;
			}
			is_ready[i] = false;
			if (f.mode == FERRY_BELL_FUTEX) {
				ASSERT_EQ(0, ferry_waitset_arm_futex(self->ws, i,
					  ferry_chan_bell_word(&c[i], FERRY_TO_BROKER), seq));
			} else {
				ASSERT_EQ(0, ferry_waitset_arm_eventfd(self->ws, i,
					  f.efd[i][FERRY_TO_BROKER]));
			}
		}
		nready = still;
		if (total == (uint64_t)NCHAN * MSGS)
			break;

		n = ferry_waitset_wait(self->ws, keys, 64, nready ? 0 : 10 * SEC);
		waits++;
		ASSERT_LE(0, n);
		ASSERT_TRUE(n > 0 || nready > 0)
			TH_LOG("lost wake-up? %llu of %u received, nothing fired in 10 s",
			       (unsigned long long)total, NCHAN * MSGS);
		for (int k = 0; k < n; k++) {
			ASSERT_GT(NCHAN, keys[k]);
			ASSERT_FALSE(is_ready[keys[k]]);
			ferry_chan_end_sleep(&c[keys[k]]);
			is_ready[keys[k]] = true;
			ready[nready++] = keys[k];
			fired++;
		}
	}
	for (p = 0; p < NPROC; p++)
		EXPECT_EQ(0, reap_child(pid[p])) TH_LOG("producer %u", p);
	for (i = 0; i < NCHAN; i++)
		EXPECT_EQ(MSGS, next[i]);
	note("broker pattern (%s): %u channels, %llu requests echoed in %.2f s, %llu waits, %llu keys fired\n",
	     f.mode == FERRY_BELL_FUTEX ? "futex" : "eventfd", NCHAN,
	     (unsigned long long)total, (now_ns() - t0) / 1e9, (unsigned long long)waits,
	     (unsigned long long)fired);
	if (f.efd) {
		for (i = 0; i < NCHAN; i++) {
			close(f.efd[i][0]);
			close(f.efd[i][1]);
		}
		free(f.efd);
	}
	munmap(f.mem, f.per * NCHAN);
	free(c);
}

TEST_HARNESS_MAIN
