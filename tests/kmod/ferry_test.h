/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ferry_test.h - what every ferry.ko selftest shares: the device and its
 * verbs as functions returning 0 or -errno, sealed memfds with a known byte
 * pattern, a fault probe that turns SIGBUS into a return value, debugfs
 * stats and module parameters, and a "peer": a child process with its own
 * /dev/ferry session that runs one verb at a time on request, so a test can
 * assert on what another process sees without sharing its address space.
 *
 * Each test binary includes this first (after defining _GNU_SOURCE) and
 * gets the kselftest harness with it.  Every case skips, with the reason,
 * where /dev/ferry does not exist.
 */
#ifndef FERRY_TEST_H
#define FERRY_TEST_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before including ferry_test.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/ferry.h>
#include <linux/futex.h>

/*
 * The harness is not ours and Debian 6.1's copy trips -Wunused-parameter
 * (__timeout_handler's ucontext); keep our own code under -Wextra -Werror.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "kselftest_harness.h"
#pragma GCC diagnostic pop

#ifdef FIXTURE_TEARDOWN_PARENT
/*
 * The 6.9+ harness's TEST_F wrapper keeps a local (child) across its own
 * setjmp(); at -O2 GCC flags that in every file using it.  The warning is
 * about harness code expanded into ours, so it is off for the whole file;
 * our own sigsetjmp() users, the fault probes, keep what they need
 * volatile.
 */
#pragma GCC diagnostic ignored "-Wclobbered"
#endif

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif

#define FERRY_DEV_PATH		"/dev/" FERRY_DEVICE_NAME
#define FERRY_DEBUGFS_DIR	"/sys/kernel/debug/" FERRY_DEVICE_NAME
#define FERRY_STATS_PATH	FERRY_DEBUGFS_DIR "/stats"
#define FERRY_PARAM_DIR		"/sys/module/" FERRY_DEVICE_NAME "/parameters"

/* Bits [0, FERRY_MMAP_SHIFT) of an mmap offset: the offset inside a region. */
#define FERRY_OFF_MASK		(FERRY_REGION_MAX_SIZE - 1)

static inline size_t ferry_page(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static inline bool ferry_present(void)
{
	return access(FERRY_DEV_PATH, F_OK) == 0;
}

/*
 * Skipping from FIXTURE_SETUP.  The 6.9+ harness runs setup in its own
 * child and stops after a SKIP there; the older one (Debian 6.1's) carries
 * on into the test body, so there the only way out is to exit with the
 * status it reads as "skip" (255).
 */
#ifdef FIXTURE_TEARDOWN_PARENT
#define FERRY_SETUP_SKIP(fmt, ...)	SKIP(return, fmt, ##__VA_ARGS__)
#else
#define FERRY_SETUP_SKIP(fmt, ...)	SKIP(_exit(255), fmt, ##__VA_ARGS__)
#endif

/*
 * Whether the running kernel is at least @major.@minor, from uname's
 * release ("7.3.4+deb13-amd64", "6.1.0-57-amd64").  For behaviour the
 * kernel itself changed, where a case asserts the one this kernel has.
 */
static inline bool ferry_kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma, mi;

	if (uname(&u) || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

#define FERRY_NO_DEVICE_REASON \
	FERRY_DEV_PATH " does not exist (ferry.ko not loaded)"

/* In FIXTURE_SETUP: skip the case where the module is not loaded. */
#define FERRY_SETUP_REQUIRE_DEVICE() do {				\
	if (!ferry_present())						\
		FERRY_SETUP_SKIP(FERRY_NO_DEVICE_REASON);		\
} while (0)

/* In a TEST() body: the same. */
#define FERRY_REQUIRE_DEVICE() do {					\
	if (!ferry_present())						\
		SKIP(return, FERRY_NO_DEVICE_REASON);			\
} while (0)

/*
 * A case that proves a module bug found while writing these tests and not
 * fixed yet.  It skips, naming the bug, unless FERRY_TEST_KNOWN_BUGS=1 is
 * in the environment; set that to check a fix, and drop the marker once
 * the fix is in.
 */
#define FERRY_KNOWN_BUG(what) do {					\
	const char *ferry_kb_on = getenv("FERRY_TEST_KNOWN_BUGS");	\
									\
	if (!ferry_kb_on || strcmp(ferry_kb_on, "1"))			\
		SKIP(return, "known module bug: %s "			\
		     "(FERRY_TEST_KNOWN_BUGS=1 runs it)", what);		\
} while (0)

/* ---- the device and its verbs ---------------------------------------- */

/* A new session: an fd, or -errno. */
static inline int ferry_open(void)
{
	int fd = open(FERRY_DEV_PATH, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

/*
 * In FIXTURE_SETUP: the case's own session, asked for again while opening
 * fails with ENOMEM.  Under fault injection the module's allocations fail
 * at random; a case whose setup gave up on that tested nothing.
 */
static inline int ferry_open_setup(void)
{
	int fd = ferry_open();

	for (int tries = 0; fd == -ENOMEM && tries < 1000; tries++)
		fd = ferry_open();
	return fd;
}

static inline int ferry_ioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? -errno : 0;
}

static inline int ferry_version(int fd, struct ferry_version *v)
{
	memset(v, 0, sizeof(*v));
	return ferry_ioctl(fd, FERRY_IOC_VERSION, v);
}

/* CREATE with every input field spelled out; *c is the kernel's answer. */
static inline int ferry_create_raw(int fd, int memfd, uint64_t size,
				   uint32_t flags, uint32_t pad,
				   struct ferry_create *c)
{
	memset(c, 0, sizeof(*c));
	c->memfd = memfd;
	c->size = size;
	c->flags = flags;
	c->pad = pad;
	return ferry_ioctl(fd, FERRY_IOC_CREATE, c);
}

static inline int ferry_create(int fd, int memfd, uint64_t size,
			       struct ferry_create *c)
{
	return ferry_create_raw(fd, memfd, size, 0, 0, c);
}

static inline int ferry_grant_raw(int fd, uint32_t id, int pidfd,
				  uint32_t rights, uint32_t flags)
{
	struct ferry_grant g = {
		.id = id, .pidfd = pidfd, .rights = rights, .flags = flags,
	};

	return ferry_ioctl(fd, FERRY_IOC_GRANT, &g);
}

static inline int ferry_grant(int fd, uint32_t id, int pidfd, uint32_t rights)
{
	return ferry_grant_raw(fd, id, pidfd, rights, 0);
}

static inline int ferry_revoke_raw(int fd, uint32_t id, int pidfd,
				   uint32_t flags, uint32_t pad)
{
	struct ferry_revoke r = {
		.id = id, .pidfd = pidfd, .flags = flags, .pad = pad,
	};

	return ferry_ioctl(fd, FERRY_IOC_REVOKE, &r);
}

static inline int ferry_revoke(int fd, uint32_t id, int pidfd)
{
	return ferry_revoke_raw(fd, id, pidfd, 0, 0);
}

static inline int ferry_info_raw(int fd, uint32_t id, uint32_t flags,
				 struct ferry_info *info)
{
	memset(info, 0, sizeof(*info));
	info->id = id;
	info->flags = flags;
	return ferry_ioctl(fd, FERRY_IOC_INFO, info);
}

static inline int ferry_info(int fd, uint32_t id, struct ferry_info *info)
{
	return ferry_info_raw(fd, id, 0, info);
}

static inline int ferry_destroy_raw(int fd, uint32_t id, uint32_t flags)
{
	struct ferry_destroy d = { .id = id, .flags = flags };

	return ferry_ioctl(fd, FERRY_IOC_DESTROY, &d);
}

static inline int ferry_destroy(int fd, uint32_t id)
{
	return ferry_destroy_raw(fd, id, 0);
}

/* MAP_SHARED mapping of @len bytes at mmap offset @off: 0 or -errno. */
static inline int ferry_map(int fd, uint64_t off, size_t len, int prot,
			    void **addr)
{
	void *p = mmap(NULL, len, prot, MAP_SHARED, fd, (off_t)off);

	if (p == MAP_FAILED) {
		*addr = NULL;
		return -errno;
	}
	*addr = p;
	return 0;
}

/* ---- processes ------------------------------------------------------- */

/* A pidfd for @pid, or -errno. */
static inline int ferry_pidfd_open(pid_t pid)
{
	long fd = syscall(__NR_pidfd_open, pid, 0);

	return fd < 0 ? -errno : (int)fd;
}

/* Reap @pid: its exit status, 128 + signal when killed, or -errno. */
static inline int ferry_wait(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return -ECHILD;
}

/*
 * The processes a test forks itself (peers have their own bookkeeping):
 * ferry_kids_add() right after fork(), ferry_kids_wait() instead of
 * ferry_wait() to reap one, and ferry_kids_reap() in FIXTURE_TEARDOWN,
 * which SIGKILLs whatever is left, then reaps it in the order added.  An
 * ASSERT jumps straight to the teardown, so no child (and the /dev/ferry session
 * or memfd it inherited, which would keep rmmod from working) outlives a
 * case that failed half-way.  Add a parent before the processes it forks:
 * once it is reaped, its orphans are ours to reap where the test is a
 * subreaper (PR_SET_CHILD_SUBREAPER); elsewhere they are init's, and
 * waitpid() just says ECHILD.
 */
#define FERRY_KIDS_MAX	8

struct ferry_kids {
	pid_t pid[FERRY_KIDS_MAX];
	int n;
};

static inline void ferry_kids_add(struct ferry_kids *k, pid_t pid)
{
	if (pid > 0 && k->n < FERRY_KIDS_MAX)
		k->pid[k->n++] = pid;
}

static inline void ferry_kids_forget(struct ferry_kids *k, pid_t pid)
{
	for (int i = 0; i < k->n; i++)
		if (k->pid[i] == pid) {
			memmove(&k->pid[i], &k->pid[i + 1],
				(size_t)(k->n - i - 1) * sizeof(pid_t));
			k->n--;
			return;
		}
}

static inline int ferry_kids_wait(struct ferry_kids *k, pid_t pid)
{
	int ret = ferry_wait(pid);

	ferry_kids_forget(k, pid);
	return ret;
}

static inline void ferry_kids_reap(struct ferry_kids *k)
{
	for (int i = 0; i < k->n; i++)
		kill(k->pid[i], SIGKILL);
	for (int i = 0; i < k->n; i++)
		ferry_wait(k->pid[i]);
	k->n = 0;
}

/* Wait until the process behind @pidfd has exited (a zombie, unreaped). */
static inline int ferry_wait_exited(int pidfd, int timeout_ms)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	int n = poll(&p, 1, timeout_ms);

	return n == 1 ? 0 : n == 0 ? -ETIMEDOUT : -errno;
}

/*
 * In a freshly forked child: close every inherited descriptor but @keep_a
 * and @keep_b, so that a copy of a session fd or memfd cannot keep the
 * parent's objects alive behind the test's back.
 */
static inline void ferry_close_inherited(int keep_a, int keep_b)
{
	for (int fd = 3; fd < 1024; fd++)
		if (fd != keep_a && fd != keep_b)
			close(fd);
}

static inline int ferry_write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static inline int ferry_read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- memfds and the byte pattern ------------------------------------- */

/* The byte a region filled with @seed holds at byte offset @off. */
static inline uint8_t ferry_pat(unsigned int seed, uint64_t off)
{
	return (uint8_t)(seed * 131u + off * 7u + (off >> 12) * 13u + 1u);
}

static inline int ferry_fill_fd(int fd, uint64_t off, size_t len,
				unsigned int seed)
{
	uint8_t buf[4096];

	while (len) {
		size_t n = len < sizeof(buf) ? len : sizeof(buf);

		for (size_t i = 0; i < n; i++)
			buf[i] = ferry_pat(seed, off + i);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			return -EIO;
		off += n;
		len -= n;
	}
	return 0;
}

/* 0 when @fd holds @seed's pattern over [off, off + len), else -EIO/1. */
static inline int ferry_check_fd(int fd, uint64_t off, size_t len,
				 unsigned int seed)
{
	uint8_t buf[4096];

	while (len) {
		size_t n = len < sizeof(buf) ? len : sizeof(buf);

		if (pread(fd, buf, n, (off_t)off) != (ssize_t)n)
			return -EIO;
		for (size_t i = 0; i < n; i++)
			if (buf[i] != ferry_pat(seed, off + i))
				return 1;
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * A memfd of @pages pages carrying @seals (0: unsealed).  Filled with the
 * pattern of @seed when @seed is not 0 (before sealing, so F_SEAL_WRITE
 * works too).  An fd, or -errno.
 */
static inline int ferry_memfd(size_t pages, unsigned int seals,
			      unsigned int seed)
{
	size_t len = pages * ferry_page();
	int fd, ret;

	fd = memfd_create("ferry-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)len)) {
		ret = -errno;
		goto fail;
	}
	if (seed) {
		ret = ferry_fill_fd(fd, 0, len, seed);
		if (ret)
			goto fail;
	}
	if (seals && fcntl(fd, F_ADD_SEALS, seals)) {
		ret = -errno;
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return ret;
}

/* A region and the memfd behind it. */
struct ferry_test_region {
	uint32_t id;
	uint64_t off;		/* mmap offset of the region's start */
	uint64_t size;
	int memfd;		/* -1 once closed */
	unsigned int seed;
};

/*
 * A region of @pages pages from a fresh F_SEAL_SHRINK memfd filled with
 * @seed's pattern; the memfd stays open in @r.  0 or -errno.
 */
static inline int ferry_region_new(int fd, size_t pages, unsigned int seed,
				   struct ferry_test_region *r)
{
	struct ferry_create c;
	int memfd, ret;

	memset(r, 0, sizeof(*r));
	r->memfd = -1;
	memfd = ferry_memfd(pages, F_SEAL_SHRINK, seed);
	if (memfd < 0)
		return memfd;
	ret = ferry_create(fd, memfd, 0, &c);
	if (ret) {
		close(memfd);
		return ret;
	}
	r->id = c.id;
	r->off = c.mmap_offset;
	r->size = c.size;
	r->memfd = memfd;
	r->seed = seed;
	return 0;
}

static inline void ferry_region_close_memfd(struct ferry_test_region *r)
{
	if (r->memfd >= 0)
		close(r->memfd);
	r->memfd = -1;
}

/* ---- faults as return values ----------------------------------------- */

static sigjmp_buf ferry_probe_env __attribute__((unused));
static volatile sig_atomic_t ferry_probe_sig __attribute__((unused));

static inline void ferry_probe_handler(int sig)
{
	ferry_probe_sig = sig;
	siglongjmp(ferry_probe_env, 1);
}

enum ferry_probe_op { FERRY_PROBE_READ, FERRY_PROBE_CHECK, FERRY_PROBE_FILL };

/*
 * Touch [p, p + len) with SIGBUS and SIGSEGV caught.  READ: returns the
 * first byte.  CHECK: 0 when every byte is @seed's pattern for region
 * offsets starting at @base, 1 when one is not.  FILL: writes the pattern,
 * returns 0.  Any fault: -SIGBUS or -SIGSEGV, never stale data.
 */
static inline int ferry_probe(enum ferry_probe_op op, volatile uint8_t *p,
			      size_t len, unsigned int seed, uint64_t base)
{
	struct sigaction sa, old_bus, old_segv;
	volatile int ret = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = ferry_probe_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_bus);
	sigaction(SIGSEGV, &sa, &old_segv);
	if (sigsetjmp(ferry_probe_env, 1) == 0) {
		switch (op) {
		case FERRY_PROBE_READ:
			ret = p[0];
			break;
		case FERRY_PROBE_CHECK:
			for (size_t i = 0; i < len; i++) {
				if (p[i] != ferry_pat(seed, base + i)) {
					ret = 1;
					break;
				}
			}
			break;
		case FERRY_PROBE_FILL:
			for (size_t i = 0; i < len; i++)
				p[i] = ferry_pat(seed, base + i);
			break;
		}
	} else {
		ret = -ferry_probe_sig;
	}
	sigaction(SIGBUS, &old_bus, NULL);
	sigaction(SIGSEGV, &old_segv, NULL);
	return ret;
}

/* One byte at @p (0..255), or -SIGBUS/-SIGSEGV. */
static inline int ferry_probe_read(const void *p)
{
	return ferry_probe(FERRY_PROBE_READ, (volatile uint8_t *)p, 1, 0, 0);
}

/* Store @val at @p: 0, or -SIGBUS/-SIGSEGV. */
static inline int ferry_probe_write(void *p, uint8_t val)
{
	struct sigaction sa, old_bus, old_segv;
	volatile int ret = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = ferry_probe_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_bus);
	sigaction(SIGSEGV, &sa, &old_segv);
	if (sigsetjmp(ferry_probe_env, 1) == 0)
		*(volatile uint8_t *)p = val;
	else
		ret = -ferry_probe_sig;
	sigaction(SIGBUS, &old_bus, NULL);
	sigaction(SIGSEGV, &old_segv, NULL);
	return ret;
}

/* @len bytes at @p hold @seed's pattern from region offset @base? */
static inline int ferry_probe_check(const void *p, size_t len,
				    unsigned int seed, uint64_t base)
{
	return ferry_probe(FERRY_PROBE_CHECK, (volatile uint8_t *)p, len,
			   seed, base);
}

static inline int ferry_probe_fill(void *p, size_t len, unsigned int seed,
				   uint64_t base)
{
	return ferry_probe(FERRY_PROBE_FILL, (volatile uint8_t *)p, len, seed,
			   base);
}

/* ---- debugfs and module parameters ----------------------------------- */

struct ferry_stats {
	long long sessions;
	long long regions;	/* not yet freed, destroyed ones included */
	long long live_regions;	/* in the id table */
	long long bytes;
	long long maps;
	long long grants;
};

static inline bool ferry_have_stats(void)
{
	return access(FERRY_STATS_PATH, R_OK) == 0;
}

/* One key of <debugfs>/ferry/stats: its value, or -errno. */
static inline long long ferry_stat(const char *key)
{
	char name[64];
	long long val;
	FILE *f = fopen(FERRY_STATS_PATH, "re");
	long long ret = -ENOENT;

	if (!f)
		return -errno;
	while (fscanf(f, "%63s %lld", name, &val) == 2) {
		if (!strcmp(name, key)) {
			ret = val;
			break;
		}
	}
	fclose(f);
	return ret;
}

/* All of <debugfs>/ferry/stats at once: 0 or -errno. */
static inline int ferry_stats_read(struct ferry_stats *st)
{
	struct { const char *key; long long *val; } keys[] = {
		{ "sessions", &st->sessions },
		{ "regions", &st->regions },
		{ "live_regions", &st->live_regions },
		{ "bytes", &st->bytes },
		{ "maps", &st->maps },
		{ "grants", &st->grants },
	};
	unsigned int found = 0;
	char name[64];
	long long val;
	FILE *f = fopen(FERRY_STATS_PATH, "re");

	if (!f)
		return -errno;
	memset(st, 0, sizeof(*st));
	while (fscanf(f, "%63s %lld", name, &val) == 2) {
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			if (!strcmp(name, keys[i].key)) {
				*keys[i].val = val;
				found |= 1u << i;
			}
		}
	}
	fclose(f);
	return found == (1u << (sizeof(keys) / sizeof(keys[0]))) - 1 ?
	       0 : -EPROTO;
}

/* In FIXTURE_SETUP / TEST bodies: skip where debugfs stats are missing. */
#define FERRY_STATS_REASON \
	FERRY_STATS_PATH " is not readable (debugfs not mounted?)"

static inline int ferry_param_read(const char *name, unsigned long long *val)
{
	char path[256];
	FILE *f;
	int ret = 0;

	snprintf(path, sizeof(path), FERRY_PARAM_DIR "/%s", name);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	if (fscanf(f, "%llu", val) != 1)
		ret = -EPROTO;
	fclose(f);
	return ret;
}

static inline int ferry_param_write(const char *name, unsigned long long val)
{
	char path[256], buf[32];
	int fd, len, ret = 0;

	snprintf(path, sizeof(path), FERRY_PARAM_DIR "/%s", name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = snprintf(buf, sizeof(buf), "%llu\n", val);
	if (write(fd, buf, (size_t)len) != len)
		ret = -errno;
	close(fd);
	return ret;
}

/* ---- what the kernel said about itself -------------------------------- */

/* /proc/sys/kernel/tainted, or -errno. */
static inline long long ferry_tainted(void)
{
	long long v = -EPROTO;
	FILE *f = fopen("/proc/sys/kernel/tainted", "re");

	if (!f)
		return -errno;
	if (fscanf(f, "%lld", &v) != 1)
		v = -EPROTO;
	fclose(f);
	return v;
}

/*
 * Does the kernel log (syslog(2), all of it still buffered) contain
 * @needle?  1 or 0, or -errno where it cannot be read.
 */
static inline int ferry_dmesg_has(const char *needle)
{
	int len = (int)syscall(SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0);
	char *buf;
	int n, found;

	if (len <= 0)
		return len < 0 ? -errno : 0;
	buf = malloc((size_t)len + 1);
	if (!buf)
		return -ENOMEM;
	n = (int)syscall(SYS_syslog, 3 /* READ_ALL */, buf, len);
	if (n < 0) {
		free(buf);
		return -errno;
	}
	buf[n] = 0;
	found = strstr(buf, needle) != NULL;
	free(buf);
	return found;
}

/* ---- the peer: another process with its own session ------------------ */

enum ferry_peer_op {
	FERRY_PEER_MAP,		/* slot, off, len, prot -> 0/-errno */
	FERRY_PEER_UNMAP,	/* slot -> 0/-errno */
	FERRY_PEER_READ,	/* slot, off -> byte/-signal */
	FERRY_PEER_WRITE,	/* slot, off, val -> 0/-signal */
	FERRY_PEER_CHECK,	/* slot, off, len, seed -> 0/1/-signal */
	FERRY_PEER_FILL,	/* slot, off, len, seed -> 0/-signal */
	FERRY_PEER_MPROTECT,	/* slot, prot -> 0/-errno */
	FERRY_PEER_INFO,	/* id -> 0/-errno, info */
	FERRY_PEER_CREATE,	/* len (pages), seed -> 0/-errno, id, off */
	FERRY_PEER_GRANT,	/* id, rights: to the peer's parent */
	FERRY_PEER_REVOKE,	/* id: from the peer's parent */
	FERRY_PEER_DESTROY,	/* id */
	FERRY_PEER_REMAP,	/* slot, off, len, val: remap_file_pages()
				 * of [off, off + len) to file page val */
	FERRY_PEER_EXIT,	/* exits with status val */
	FERRY_PEER_GUP,		/* slot, off, len, val (enum ferry_gup) ->
				 * 0/-errno: get_user_pages on the mapping */
	FERRY_PEER_PIPE_CHECK,	/* len, seed, off: the vmsplice pipe holds
				 * @seed's pattern for offsets from off ->
				 * 0/1/-errno */
};

/*
 * Ways a process takes references on its own pages (FERRY_PEER_GUP), all
 * through get_user_pages: fast path first, then the slow one.
 */
enum ferry_gup {
	FERRY_GUP_VMSPLICE = 1,	/* into a pipe the peer keeps */
	FERRY_GUP_FUTEX,	/* a shared futex key: FUTEX_WAIT on a value
				 * that does not match, -EAGAIN means the key
				 * was made */
	FERRY_GUP_IOURING,	/* io_uring fixed buffers (long-term pin) */
	FERRY_GUP_REMOTE,	/* process_vm_readv on itself */
};

#define FERRY_PEER_SLOTS	8

struct ferry_peer_cmd {
	uint32_t op;
	uint32_t slot;
	uint32_t id;
	uint32_t rights;
	uint64_t off;
	uint64_t len;
	int32_t prot;
	uint32_t seed;
	uint32_t val;
	uint32_t pad;
};

struct ferry_peer_res {
	int64_t ret;
	uint32_t id;
	uint32_t pad;
	uint64_t off;
	struct ferry_info info;
};

struct ferry_peer {
	bool started;		/* ferry_peer_start() was called */
	pid_t pid;		/* 0: not running */
	int cmd;		/* write end */
	int res;		/* read end */
	int pidfd;
};

/* The transport failed: the peer died or never answered. */
#define FERRY_PEER_LOST		INT64_MIN

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif
#define FERRY_IORING_REGISTER_BUFFERS 0

/* get_user_pages on [p, p + len) as @how does it; 0 or -errno. */
static inline int ferry_gup(int how, uint8_t *p, size_t len, int *pipe_rd)
{
	struct iovec iov = { .iov_base = p, .iov_len = len };
	uint32_t params[30];	/* struct io_uring_params: 120 bytes */
	static uint8_t buf[65536];
	int ret, fds[2], ring;

	switch (how) {
	case FERRY_GUP_VMSPLICE:
		if (pipe2(fds, O_CLOEXEC))
			return -errno;
		ret = vmsplice(fds[1], &iov, 1, 0) == (ssize_t)len ? 0 : -errno;
		close(fds[1]);
		if (ret || *pipe_rd >= 0) {
			close(fds[0]);
			return ret ? ret : -EBUSY;
		}
		*pipe_rd = fds[0];
		return 0;
	case FERRY_GUP_FUTEX:
		ret = (int)syscall(SYS_futex, p, FUTEX_WAIT,
				   ~*(volatile uint32_t *)p, NULL, NULL, 0);
		return ret ? -errno : -EPROTO;
	case FERRY_GUP_IOURING:
		memset(params, 0, sizeof(params));
		ring = (int)syscall(__NR_io_uring_setup, 4, params);
		if (ring < 0)
			return -errno;
		ret = (int)syscall(__NR_io_uring_register, ring,
				   FERRY_IORING_REGISTER_BUFFERS, &iov, 1);
		ret = ret ? -errno : 0;
		close(ring);
		return ret;
	case FERRY_GUP_REMOTE: {
		struct iovec local = { .iov_base = buf, .iov_len = len };

		if (len > sizeof(buf))
			return -E2BIG;
		return process_vm_readv(getpid(), &local, 1, &iov, 1, 0) ==
		       (ssize_t)len ? 0 : -errno;
	}
	}
	return -EINVAL;
}

static inline int ferry_peer_serve(int cmd_fd, int res_fd)
{
	struct { uint8_t *addr; size_t len; uint64_t base; } map[FERRY_PEER_SLOTS];
	struct ferry_peer_cmd c;
	struct ferry_peer_res r;
	int pipe_rd = -1;
	int fd = ferry_open();
	int parent = ferry_pidfd_open(getppid());

	memset(map, 0, sizeof(map));
	memset(&r, 0, sizeof(r));
	r.ret = fd < 0 ? fd : parent < 0 ? parent : 0;
	if (ferry_write_full(res_fd, &r, sizeof(r)) || r.ret)
		return 1;

	while (!ferry_read_full(cmd_fd, &c, sizeof(c))) {
		uint8_t *at = NULL;
		void *addr;

		memset(&r, 0, sizeof(r));
		if (c.slot >= FERRY_PEER_SLOTS) {
			r.ret = -EINVAL;
			goto reply;
		}
		if (map[c.slot].addr)
			at = map[c.slot].addr + c.off;
		switch (c.op) {
		case FERRY_PEER_MAP:
			r.ret = ferry_map(fd, c.off, c.len, c.prot, &addr);
			if (!r.ret) {
				map[c.slot].addr = addr;
				map[c.slot].len = c.len;
				map[c.slot].base = c.off & FERRY_OFF_MASK;
			}
			break;
		case FERRY_PEER_UNMAP:
			r.ret = munmap(map[c.slot].addr, map[c.slot].len) ?
				-errno : 0;
			map[c.slot].addr = NULL;
			break;
		case FERRY_PEER_READ:
			r.ret = at ? ferry_probe_read(at) : -EFAULT;
			break;
		case FERRY_PEER_WRITE:
			r.ret = at ? ferry_probe_write(at, (uint8_t)c.val) :
				-EFAULT;
			break;
		case FERRY_PEER_CHECK:
			r.ret = at ? ferry_probe_check(at, c.len, c.seed,
						map[c.slot].base + c.off) :
				-EFAULT;
			break;
		case FERRY_PEER_FILL:
			r.ret = at ? ferry_probe_fill(at, c.len, c.seed,
						map[c.slot].base + c.off) :
				-EFAULT;
			break;
		case FERRY_PEER_MPROTECT:
			r.ret = mprotect(map[c.slot].addr, map[c.slot].len,
					 c.prot) ? -errno : 0;
			break;
		case FERRY_PEER_INFO:
			r.ret = ferry_info(fd, c.id, &r.info);
			break;
		case FERRY_PEER_CREATE: {
			struct ferry_test_region reg;

			r.ret = ferry_region_new(fd, c.len, c.seed, &reg);
			ferry_region_close_memfd(&reg);
			r.id = reg.id;
			r.off = reg.off;
			break;
		}
		case FERRY_PEER_GRANT:
			r.ret = ferry_grant(fd, c.id, parent, c.rights);
			break;
		case FERRY_PEER_REVOKE:
			r.ret = ferry_revoke(fd, c.id, parent);
			break;
		case FERRY_PEER_DESTROY:
			r.ret = ferry_destroy(fd, c.id);
			break;
		case FERRY_PEER_REMAP:
			r.ret = !at ? -EFAULT :
				syscall(SYS_remap_file_pages, at, c.len, 0,
					c.val, 0) ? -errno : 0;
			break;
		case FERRY_PEER_EXIT:
			_exit((int)c.val);
		case FERRY_PEER_GUP:
			r.ret = at ? ferry_gup((int)c.val, at, c.len, &pipe_rd) :
				-EFAULT;
			break;
		case FERRY_PEER_PIPE_CHECK: {
			uint8_t b;

			r.ret = pipe_rd < 0 ? -ENOENT : 0;
			for (uint64_t i = 0; !r.ret && i < c.len; i++) {
				if (read(pipe_rd, &b, 1) != 1)
					r.ret = -EIO;
				else if (b != ferry_pat(c.seed, c.off + i))
					r.ret = 1;
			}
			if (pipe_rd >= 0)
				close(pipe_rd);
			pipe_rd = -1;
			break;
		}
		default:
			r.ret = -EINVAL;
			break;
		}
reply:
		if (ferry_write_full(res_fd, &r, sizeof(r)))
			return 1;
	}
	return 0;	/* the test closed its end: done */
}

/* Fork a peer; 0 once it has its own session, or -errno. */
static inline int ferry_peer_start(struct ferry_peer *p)
{
	struct ferry_peer_res r;
	int c[2], s[2], ret;
	pid_t pid;

	memset(p, 0, sizeof(*p));
	p->started = true;
	p->cmd = p->res = p->pidfd = -1;
	/* A peer that died must read as FERRY_PEER_LOST, not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	if (pipe2(c, O_CLOEXEC))
		return -errno;
	if (pipe2(s, O_CLOEXEC)) {
		ret = -errno;
		close(c[0]);
		close(c[1]);
		return ret;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		close(c[0]); close(c[1]); close(s[0]); close(s[1]);
		return ret;
	}
	if (pid == 0) {
		ferry_close_inherited(c[0], s[1]);
		_exit(ferry_peer_serve(c[0], s[1]));
	}
	close(c[0]);
	close(s[1]);
	p->pid = pid;
	p->cmd = c[1];
	p->res = s[0];
	p->pidfd = ferry_pidfd_open(pid);
	ret = ferry_read_full(p->res, &r, sizeof(r));
	if (!ret)
		ret = (int)r.ret;
	if (!ret && p->pidfd < 0)
		ret = p->pidfd;
	return ret;
}

static inline int64_t ferry_peer_call(struct ferry_peer *p,
				      const struct ferry_peer_cmd *c,
				      struct ferry_peer_res *out)
{
	struct ferry_peer_res r;

	if (ferry_write_full(p->cmd, c, sizeof(*c)) ||
	    ferry_read_full(p->res, &r, sizeof(r)))
		return FERRY_PEER_LOST;
	if (out)
		*out = r;
	return r.ret;
}

static inline int64_t ferry_peer_map(struct ferry_peer *p, uint32_t slot,
				     uint64_t off, uint64_t len, int prot)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_MAP, .slot = slot,
				    .off = off, .len = len, .prot = prot };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_unmap(struct ferry_peer *p, uint32_t slot)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_UNMAP, .slot = slot };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_read(struct ferry_peer *p, uint32_t slot,
				      uint64_t off)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_READ, .slot = slot,
				    .off = off };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_write(struct ferry_peer *p, uint32_t slot,
				       uint64_t off, uint8_t val)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_WRITE, .slot = slot,
				    .off = off, .val = val };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_check(struct ferry_peer *p, uint32_t slot,
				       uint64_t off, uint64_t len,
				       unsigned int seed)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_CHECK, .slot = slot,
				    .off = off, .len = len, .seed = seed };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_fill(struct ferry_peer *p, uint32_t slot,
				      uint64_t off, uint64_t len,
				      unsigned int seed)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_FILL, .slot = slot,
				    .off = off, .len = len, .seed = seed };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_mprotect(struct ferry_peer *p,
					  uint32_t slot, int prot)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_MPROTECT, .slot = slot,
				    .prot = prot };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_info(struct ferry_peer *p, uint32_t id,
				      struct ferry_info *info)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_INFO, .id = id };
	struct ferry_peer_res r;
	int64_t ret = ferry_peer_call(p, &c, &r);

	if (info && ret != FERRY_PEER_LOST)
		*info = r.info;
	return ret;
}

static inline int64_t ferry_peer_remap(struct ferry_peer *p, uint32_t slot,
				       uint64_t off, uint64_t len,
				       uint32_t pgoff)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_REMAP, .slot = slot,
				    .off = off, .len = len, .val = pgoff };

	return ferry_peer_call(p, &c, NULL);
}

/* get_user_pages on the peer's mapping in @slot, the way @how does it. */
static inline int64_t ferry_peer_gup(struct ferry_peer *p, uint32_t slot,
				     uint64_t off, uint64_t len, int how)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_GUP, .slot = slot,
				    .off = off, .len = len, .val = (uint32_t)how };

	return ferry_peer_call(p, &c, NULL);
}

/* Does the peer's vmsplice pipe hold @seed's pattern from region @off? */
static inline int64_t ferry_peer_pipe_check(struct ferry_peer *p,
					    uint64_t off, uint64_t len,
					    unsigned int seed)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_PIPE_CHECK, .off = off,
				    .len = len, .seed = seed };

	return ferry_peer_call(p, &c, NULL);
}

/* The peer creates a region of @pages pages with @seed's pattern. */
static inline int64_t ferry_peer_create(struct ferry_peer *p, size_t pages,
					unsigned int seed, uint32_t *id,
					uint64_t *off)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_CREATE, .len = pages,
				    .seed = seed };
	struct ferry_peer_res r;
	int64_t ret = ferry_peer_call(p, &c, &r);

	*id = r.id;
	*off = r.off;
	return ret;
}

/* The peer grants region @id to its parent (the test). */
static inline int64_t ferry_peer_grant(struct ferry_peer *p, uint32_t id,
				       uint32_t rights)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_GRANT, .id = id,
				    .rights = rights };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_revoke(struct ferry_peer *p, uint32_t id)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_REVOKE, .id = id };

	return ferry_peer_call(p, &c, NULL);
}

static inline int64_t ferry_peer_destroy(struct ferry_peer *p, uint32_t id)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_DESTROY, .id = id };

	return ferry_peer_call(p, &c, NULL);
}

/*
 * Ask the peer to exit and reap it: its exit status (the value asked
 * for), or what ferry_wait() says.  Leaves @p->pidfd open (a pidfd of a
 * dead process is a test input too); ferry_peer_release() closes it.
 */
static inline int ferry_peer_stop(struct ferry_peer *p)
{
	struct ferry_peer_cmd c = { .op = FERRY_PEER_EXIT, .val = 0 };
	int ret;

	if (!p->pid)
		return -ECHILD;
	ferry_write_full(p->cmd, &c, sizeof(c));
	close(p->cmd);
	close(p->res);
	p->cmd = p->res = -1;
	ret = ferry_wait(p->pid);
	p->pid = 0;
	return ret;
}

/* Teardown: stop the peer if it still runs and close what is left. */
static inline void ferry_peer_release(struct ferry_peer *p)
{
	if (!p->started)
		return;
	if (p->pid)
		ferry_peer_stop(p);
	if (p->cmd >= 0)
		close(p->cmd);
	if (p->res >= 0)
		close(p->res);
	p->cmd = p->res = -1;
	if (p->pidfd >= 0)
		close(p->pidfd);
	p->pidfd = -1;
	p->started = false;
}

#endif /* FERRY_TEST_H */
