// SPDX-License-Identifier: GPL-2.0
/*
 * ioctl/mmap fuzzer for /dev/ferry: random sequences of every ioctl with
 * random and boundary arguments, unknown commands and bad pointers, random
 * mmap/munmap/mprotect/touch of region offsets, sessions opened and closed
 * at random points, grant/revoke/destroy racing between threads, and forks
 * whose children act on inherited fds.  Seeded and reproducible per thread
 * (FERRY_FUZZ_SEED; the seed is printed); runs FERRY_FUZZ_SECONDS (10 by
 * default: the short run in make check) or FERRY_FUZZ_CALLS calls, across
 * FERRY_FUZZ_THREADS threads (default 3).  The kernel's own checkers (the
 * debug kernel's KASAN, lockdep, kmemleak) and the VM runner's dmesg scan
 * judge the run; here every call must return (no hang) and the module's
 * counters must come back to zero once everything is closed.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NFD 4
#define NID 16
#define NMAP 8

struct fstate {
	uint64_t rng;
	int fd[NFD];
	uint32_t id[NID];
	struct { void *p; size_t len; } map[NMAP];
	int pidfd;		/* a child that lives as long as this thread */
	pid_t child;
	uint64_t calls;
};

static _Atomic uint64_t total_calls;
static _Atomic int stop_all;
static __thread sigjmp_buf fault_jmp;
static __thread volatile int fault_armed;

static void on_fault(int sig)
{
	(void)sig;
	if (fault_armed)
		siglongjmp(fault_jmp, 1);
	_exit(99);
}

static uint64_t rnd(struct fstate *s)
{
	s->rng ^= s->rng << 13;
	s->rng ^= s->rng >> 7;
	s->rng ^= s->rng << 17;
	return s->rng;
}

/* Sizes and values near the edges as often as in the middle. */
static uint64_t edgy(struct fstate *s)
{
	static const uint64_t e[] = {
		0, 1, 4095, 4096, 4097, 65536, 1ull << 20, (1ull << 40) - 1, 1ull << 40,
		(1ull << 40) + 4096, UINT32_MAX, (uint64_t)INT32_MAX + 1, UINT64_MAX,
		UINT64_MAX - 4095,
	};

	return rnd(s) & 1 ? e[rnd(s) % (sizeof(e) / sizeof(e[0]))] : rnd(s) % (4u << 20);
}

static int any_fd(struct fstate *s)
{
	int fd = s->fd[rnd(s) % NFD];

	return fd >= 0 ? fd : (int)(rnd(s) % 64) - 2;
}

static uint32_t any_id(struct fstate *s)
{
	return rnd(s) % 4 ? s->id[rnd(s) % NID] : (uint32_t)edgy(s);
}

static int new_memfd(struct fstate *s)
{
	int fd = memfd_create("fz", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	uint64_t size = rnd(s) % 3 ? (rnd(s) % 64 + 1) * 4096 : edgy(s) % (8u << 20);

	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)size) == 0 && rnd(s) % 4)
		fcntl(fd, F_ADD_SEALS, rnd(s) % 3 ? F_SEAL_SHRINK : F_SEAL_SHRINK | F_SEAL_GROW);
	return fd;
}

static void one(struct fstate *s)
{
	int fd = any_fd(s);

	switch (rnd(s) % 16) {
	case 0: {	/* a session opens or closes */
		int k = (int)(rnd(s) % NFD);

		if (s->fd[k] >= 0) {
			close(s->fd[k]);
			s->fd[k] = -1;
		} else {
			s->fd[k] = open("/dev/ferry", O_RDWR | O_CLOEXEC);
		}
		break;
	}
	case 1: {
		struct ferry_version v = { .flags = rnd(s) % 8 ? 0 : (uint32_t)rnd(s) };

		ioctl(fd, FERRY_IOC_VERSION, &v);
		break;
	}
	case 2: case 3: {
		int m = rnd(s) % 8 ? new_memfd(s) : (int)(rnd(s) % 64) - 2;
		struct ferry_create c = {
			.memfd = m, .size = rnd(s) % 3 ? 0 : edgy(s),
			.flags = rnd(s) % 8 ? 0 : (uint32_t)rnd(s),
			.pad = rnd(s) % 8 ? 0 : 1,
		};

		if (ioctl(fd, FERRY_IOC_CREATE, &c) == 0)
			s->id[rnd(s) % NID] = c.id;
		if (m > 2)
			close(m);	/* the region holds its own reference */
		break;
	}
	case 4: case 5: {
		struct ferry_grant g = {
			.id = any_id(s), .pidfd = rnd(s) % 4 ? s->pidfd : any_fd(s),
			.rights = (uint32_t)(rnd(s) % 5), .flags = rnd(s) % 8 ? 0 : 1,
		};

		ioctl(fd, FERRY_IOC_GRANT, &g);
		break;
	}
	case 6: {
		struct ferry_revoke r = {
			.id = any_id(s), .pidfd = rnd(s) % 4 ? s->pidfd : any_fd(s),
			.flags = rnd(s) % 8 ? 0 : 1,
		};

		ioctl(fd, FERRY_IOC_REVOKE, &r);
		break;
	}
	case 7: {
		struct ferry_info i = { .id = any_id(s), .flags = rnd(s) % 8 ? 0 : 1 };

		ioctl(fd, FERRY_IOC_INFO, &i);
		break;
	}
	case 8: {
		struct ferry_destroy d = { .id = any_id(s), .flags = rnd(s) % 8 ? 0 : 1 };

		ioctl(fd, FERRY_IOC_DESTROY, &d);
		break;
	}
	case 9: {	/* unknown commands, wrong sizes, bad pointers */
		unsigned long cmd = rnd(s) % 2 ? _IOC(rnd(s) % 4, FERRY_IOC_MAGIC, rnd(s) % 16,
						      rnd(s) % 64) : (unsigned long)rnd(s);
		void *arg = rnd(s) % 3 == 0 ? NULL : rnd(s) % 2 ? (void *)16 : (void *)-4096L;

		ioctl(fd, cmd, arg);
		break;
	}
	case 10: case 11: {	/* map a region, or anything */
		int k = (int)(rnd(s) % NMAP);
		uint64_t off = rnd(s) % 4 ? ((uint64_t)any_id(s) << FERRY_MMAP_SHIFT) +
					    (rnd(s) % 2 ? 0 : edgy(s) & ~4095ull) : edgy(s);
		size_t len = rnd(s) % 3 ? (size_t)(rnd(s) % 16 + 1) * 4096 : (size_t)edgy(s);
		int prot = (int)(rnd(s) % 4) & (PROT_READ | PROT_WRITE);
		void *p;

		if (s->map[k].p) {
			munmap(s->map[k].p, s->map[k].len);
			s->map[k].p = NULL;
		}
		p = mmap(NULL, len, prot, rnd(s) % 4 ? MAP_SHARED : MAP_PRIVATE, fd, (off_t)off);
		if (p != MAP_FAILED) {
			s->map[k].p = p;
			s->map[k].len = len;
		}
		break;
	}
	case 12: {	/* touch, protect, partly unmap, advise */
		int k = (int)(rnd(s) % NMAP);
		volatile uint8_t *p = s->map[k].p;

		if (!p)
			break;
		switch (rnd(s) % 4) {
		case 0:
			/* A revoked or read-only mapping faults: survive it. */
			fault_armed = 1;
			if (!sigsetjmp(fault_jmp, 1))
				p[rnd(s) % s->map[k].len] ^= 1;
			fault_armed = 0;
			break;
		case 1:
			mprotect((void *)p, s->map[k].len, (int)(rnd(s) % 4));
			break;
		case 2:
			if (s->map[k].len > 4096) {
				munmap((void *)p, 4096);
				s->map[k].p = (void *)(p + 4096);
				s->map[k].len -= 4096;
			}
			break;
		default:
			madvise((void *)p, s->map[k].len,
				rnd(s) % 2 ? MADV_DONTFORK : MADV_DOFORK);
		}
		break;
	}
	case 13: {	/* a fork acts on what it inherited, then goes */
		pid_t pid;

		if (rnd(s) % 8)
			break;
		pid = fork();
		if (pid == 0) {
			for (int i = 0; i < 20; i++)
				one(s);
			_exit(0);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
		break;
	}
	default: {	/* the same id, twice at once: grant then destroy */
		uint32_t id = any_id(s);
		struct ferry_grant g = { .id = id, .pidfd = s->pidfd, .rights = FERRY_RIGHT_READ };
		struct ferry_destroy d = { .id = id };

		ioctl(fd, FERRY_IOC_GRANT, &g);
		ioctl(any_fd(s), FERRY_IOC_DESTROY, &d);
		break;
	}
	}
	s->calls++;
}

struct targ {
	uint64_t seed, max_calls;
	time_t until;
};

static void *worker(void *arg)
{
	struct targ *t = arg;
	struct fstate s = { .rng = t->seed ? t->seed : 1, .pidfd = -1 };
	int go[2] = { -1, -1 };

	for (int k = 0; k < NFD; k++)
		s.fd[k] = k < 2 ? open("/dev/ferry", O_RDWR | O_CLOEXEC) : -1;
	/* A grantee that lives as long as this thread. */
	if (pipe(go) == 0) {
		s.child = fork();
		if (s.child == 0) {
			char c;

			/* Keep nothing else: another thread's grantee holding our
			 * pipe's write end (or we theirs) would never see EOF. */
			if (dup2(go[0], 3) < 0)
				_exit(1);
			syscall(SYS_close_range, 4, ~0U, 0);
			_exit(read(3, &c, 1) < 0);
		}
		close(go[0]);
		s.pidfd = (int)syscall(SYS_pidfd_open, s.child, 0);
	}
	while (!atomic_load(&stop_all) && time(NULL) < t->until &&
	       (!t->max_calls || s.calls < t->max_calls))
		one(&s);
	for (int k = 0; k < NMAP; k++)
		if (s.map[k].p)
			munmap(s.map[k].p, s.map[k].len);
	for (int k = 0; k < NFD; k++)
		if (s.fd[k] >= 0)
			close(s.fd[k]);
	if (go[1] >= 0)
		close(go[1]);
	/* A failed fork left no grantee (and waitpid(-1) would take any). */
	if (s.child > 0)
		waitpid(s.child, NULL, 0);
	if (s.pidfd >= 0)
		close(s.pidfd);
	atomic_fetch_add(&total_calls, s.calls);
	return NULL;
}

static unsigned long long envnum(const char *name, unsigned long long dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

/* The 6.1 harness has timeouts only for fixture tests: an empty fixture. */
FIXTURE(fz) {};
FIXTURE_SETUP(fz) {}
FIXTURE_TEARDOWN(fz) {}

TEST_F_TIMEOUT(fz, random_ioctl_mmap_fork_sequences, 600)
{
	unsigned long long seed = envnum("FERRY_FUZZ_SEED", (unsigned long long)time(NULL));
	unsigned int nthreads = (unsigned int)envnum("FERRY_FUZZ_THREADS", 3);
	struct targ t[16];
	pthread_t th[16];
	struct sigaction sa = { .sa_handler = on_fault };
	char stats[256] = "";
	int fd;

	/*
	 * Under fault injection a session's allocation fails now and then
	 * (ENOMEM): that is no reason to skip, ask again.
	 */
	for (int tries = 0; (fd = open("/dev/ferry", O_RDWR)) < 0 &&
	     errno == ENOMEM && tries < 1000; tries++)
		;
	if (fd < 0)
		SKIP(return, "/dev/ferry: %s (module not loaded)", strerror(errno));
	close(fd);
	if (nthreads < 1 || nthreads > 16)
		nthreads = 3;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	TH_LOG("seed %llu, %u threads (FERRY_FUZZ_SEED to repeat)", seed, nthreads);
	for (unsigned int i = 0; i < nthreads; i++) {
		t[i] = (struct targ){
			.seed = seed * 0x9e3779b97f4a7c15ULL + i + 1,
			/* Rounded up: at least the calls asked for, in all. */
			.max_calls = (envnum("FERRY_FUZZ_CALLS", 0) + nthreads - 1) / nthreads,
			.until = time(NULL) + (time_t)envnum("FERRY_FUZZ_SECONDS", 10),
		};
		ASSERT_EQ(0, pthread_create(&th[i], NULL, worker, &t[i]));
	}
	for (unsigned int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	TH_LOG("%llu calls", (unsigned long long)atomic_load(&total_calls));
	EXPECT_LT(0, atomic_load(&total_calls));
	/* Everything closed: nothing of ours may be left in the module. */
	fd = open("/sys/kernel/debug/ferry/stats", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, stats, sizeof(stats) - 1);

		close(fd);
		if (n > 0)
			stats[n] = 0;
		EXPECT_NE(NULL, strstr(stats, "sessions 0\n")) TH_LOG("%s", stats);
		EXPECT_NE(NULL, strstr(stats, "regions 0\n")) TH_LOG("%s", stats);
	}
}

TEST_HARNESS_MAIN
