// SPDX-License-Identifier: GPL-2.0
/*
 * Regions through both backends: picking one, creating, importing in
 * another process, rights (pinning among them), the channel head, revoke,
 * and what a forked process inherits.
 * kmod cases SKIP where /dev/ferry is absent (the host); in the VM with
 * the module loaded they run.
 */
#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry.h"
#include "internal.h"
#include "kselftest_harness.h"
#include "pin.h"

static int pidfd_of(pid_t pid)
{
	return (int)syscall(434 /* pidfd_open */, pid, 0);
}

static sigjmp_buf fault_jmp;
static void on_fault(int sig)
{
	siglongjmp(fault_jmp, sig);
}

/* 0 if *p can be read, else the signal the read raised. */
static int probe_read(volatile uint8_t *p)
{
	struct sigaction sa = { .sa_handler = on_fault }, old_segv, old_bus;
	int sig;

	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGBUS, &sa, &old_bus);
	sig = sigsetjmp(fault_jmp, 1);
	if (!sig)
		(void)*p;
	sigaction(SIGSEGV, &old_segv, NULL);
	sigaction(SIGBUS, &old_bus, NULL);
	return sig;
}

static int probe_write(volatile uint8_t *p)
{
	struct sigaction sa = { .sa_handler = on_fault }, old_segv, old_bus;
	int sig;

	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGBUS, &sa, &old_bus);
	sig = sigsetjmp(fault_jmp, 1);
	if (!sig)
		*p = 1;
	sigaction(SIGSEGV, &old_segv, NULL);
	sigaction(SIGBUS, &old_bus, NULL);
	return sig;
}

static bool kmod_usable(void)
{
	return ferry_backend_resolve(FERRY_BACKEND_KMOD) == FERRY_BACKEND_KMOD;
}

TEST(backend_names_and_parse)
{
	EXPECT_STREQ("kmod", ferry_backend_name(FERRY_BACKEND_KMOD));
	EXPECT_STREQ("memfd", ferry_backend_name(FERRY_BACKEND_MEMFD));
	EXPECT_STREQ("auto", ferry_backend_name(FERRY_BACKEND_AUTO));
	EXPECT_EQ(FERRY_BACKEND_MEMFD, ferry_backend_parse("memfd"));
	EXPECT_EQ(FERRY_BACKEND_KMOD, ferry_backend_parse("kmod"));
	EXPECT_EQ(-EINVAL, ferry_backend_parse("shm"));
	EXPECT_EQ(-EINVAL, ferry_backend_parse(NULL));
}

TEST(backend_auto_follows_env_and_module)
{
	char *saved = getenv("FERRY_BACKEND") ? strdup(getenv("FERRY_BACKEND")) : NULL;

	unsetenv("FERRY_BACKEND");
	EXPECT_EQ(kmod_usable() ? FERRY_BACKEND_KMOD : FERRY_BACKEND_MEMFD,
		  ferry_backend_resolve(FERRY_BACKEND_AUTO));
	if (!kmod_usable())
		EXPECT_EQ(-ENODEV, ferry_backend_resolve(FERRY_BACKEND_KMOD));
	setenv("FERRY_BACKEND", "memfd", 1);
	EXPECT_EQ(FERRY_BACKEND_MEMFD, ferry_backend_resolve(FERRY_BACKEND_AUTO));
	setenv("FERRY_BACKEND", "bogus", 1);
	EXPECT_EQ(-EINVAL, ferry_backend_resolve(FERRY_BACKEND_AUTO));
	/* an explicit choice beats the environment */
	EXPECT_EQ(FERRY_BACKEND_MEMFD, ferry_backend_resolve(FERRY_BACKEND_MEMFD));
	if (saved)
		setenv("FERRY_BACKEND", saved, 1);
	else
		unsetenv("FERRY_BACKEND");
	free(saved);
}

FIXTURE(regions)
{
	struct ferry_rctx *rc;
};

FIXTURE_VARIANT(regions)
{
	enum ferry_backend backend;
};

FIXTURE_VARIANT_ADD(regions, memfd) { .backend = FERRY_BACKEND_MEMFD };
FIXTURE_VARIANT_ADD(regions, kmod) { .backend = FERRY_BACKEND_KMOD };

FIXTURE_SETUP(regions)
{
	if (variant->backend == FERRY_BACKEND_KMOD && !kmod_usable())
		SKIP(return, "/dev/ferry is not usable here (module not loaded)");
	ASSERT_EQ(0, ferry_rctx_open(variant->backend, &self->rc));
	ASSERT_EQ(variant->backend, ferry_rctx_backend(self->rc));
}

FIXTURE_TEARDOWN(regions)
{
	ferry_rctx_close(self->rc);
}

/* 6.1's harness runs the body even after SKIP() in the setup. */
#define NEED_BACKEND() \
	do { if (!self->rc) SKIP(return, "backend not usable here"); } while (0)

TEST_F(regions, create_rounds_to_pages_and_maps_rw)
{
	struct ferry_region *r;
	uint8_t *p;

	NEED_BACKEND();
	EXPECT_EQ(-EINVAL, ferry_region_create(self->rc, 0, -1, &r));
	ASSERT_EQ(0, ferry_region_create(self->rc, 5000, -1, &r));
	EXPECT_EQ(8192, ferry_region_size(r));
	p = ferry_region_base(r);
	memset(p, 0x5a, 8192);
	EXPECT_EQ(0x5a, p[8191]);
	ferry_region_close(r);
}

TEST_F(regions, numa_bind_node0)
{
	struct ferry_region *r;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 1 << 20, 0, &r));
	memset(ferry_region_base(r), 1, 1 << 20);
	ferry_region_close(r);
	EXPECT_EQ(-EINVAL, ferry_region_create(self->rc, 1 << 20, 100000, &r));
}

/*
 * Pages land on the node asked for: node 1 where there are two (the VM
 * runs with two), node 0 on one-node hosts (then the policy itself is what
 * is checked).  move_pages() with no target reports where each page is.
 */
TEST_F(regions, numa_pages_land_on_the_node_asked)
{
	enum { N = 64 };
	int node = numa_available() >= 0 && numa_max_node() >= 1 ? 1 : 0;
	unsigned long mask[16] = { 0 };
	struct ferry_region *r;
	void *pages[N];
	int status[N], mode = -1;
	uint8_t *p;

	NEED_BACKEND();
	TH_LOG("%d node(s), binding to node %d", numa_available() >= 0 ? numa_max_node() + 1 : 1,
	       node);
	ASSERT_EQ(0, ferry_region_create(self->rc, N * 4096, node, &r));
	p = ferry_region_base(r);
	ASSERT_EQ(0, get_mempolicy(&mode, mask, sizeof(mask) * 8, p, MPOL_F_ADDR));
	EXPECT_EQ(MPOL_BIND, mode);
	EXPECT_EQ(1UL << node, mask[0]);
	memset(p, 7, N * 4096);
	for (int i = 0; i < N; i++)
		pages[i] = p + i * 4096;
	ASSERT_EQ(0, move_pages(0, N, pages, NULL, status, 0));
	for (int i = 0; i < N; i++) {
		if (status[i] != node)
			TH_LOG("page %d is on %d", i, status[i]);
		ASSERT_EQ(node, status[i]);
	}
	ferry_region_close(r);
}

/* Shared both ways with a forked peer that imports it. */
TEST_F(regions, import_in_other_process)
{
	struct ferry_region *r;
	struct ferry_region_ref ref;
	volatile uint8_t *p;
	int go[2], pidfd, status;
	pid_t pid;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 1 << 16, -1, &r));
	p = ferry_region_base(r);
	p[100] = 42;
	ferry_region_ref(r, &ref);
	ASSERT_EQ(0, pipe(go));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_rctx *rc;
		struct ferry_region *mine;
		char c;
		volatile uint8_t *q;

		/* the parent's mapping did not come along (MADV_DONTFORK) */
		if (probe_read(p) == 0)
			_exit(1);
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		if (ferry_rctx_open(variant->backend, &rc))
			_exit(3);
		if (ferry_region_import(rc, &ref, FERRY_READ | FERRY_WRITE, &mine))
			_exit(4);
		q = ferry_region_base(mine);
		if (q[100] != 42)
			_exit(5);
		q[200] = 43;
		ferry_region_close(mine);
		_exit(0);
	}
	pidfd = pidfd_of(pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ | FERRY_WRITE));
	ASSERT_EQ(1, write(go[1], "g", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_EQ(0, WEXITSTATUS(status));
	EXPECT_EQ(43, p[200]);
	close(pidfd);
	ferry_region_close(r);
}

TEST_F(regions, read_only_import_cannot_write)
{
	struct ferry_region *r;
	struct ferry_region_ref ref;
	int go[2], pidfd, status;
	pid_t pid;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 4096, -1, &r));
	ferry_region_ref(r, &ref);
	ASSERT_EQ(0, pipe(go));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_rctx *rc;
		struct ferry_region *mine;
		char c;

		if (read(go[0], &c, 1) != 1 || ferry_rctx_open(variant->backend, &rc))
			_exit(2);
		if (variant->backend == FERRY_BACKEND_KMOD &&
		    ferry_region_import(rc, &ref, FERRY_READ | FERRY_WRITE, &mine) != -EACCES)
			_exit(3);	/* the kernel refuses more than granted */
		if (ferry_region_import(rc, &ref, FERRY_READ, &mine))
			_exit(4);
		if (probe_read(ferry_region_base(mine)) != 0)
			_exit(5);
		if (probe_write(ferry_region_base(mine)) != SIGSEGV)
			_exit(6);
		_exit(0);
	}
	pidfd = pidfd_of(pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ));
	ASSERT_EQ(1, write(go[1], "g", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_EQ(0, WEXITSTATUS(status));
	close(pidfd);
	ferry_region_close(r);
}

TEST_F(regions, revoke)
{
	struct ferry_region *r;
	struct ferry_region_ref ref;
	int go[2], back[2], pidfd, status;
	pid_t pid;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 4096, -1, &r));
	ferry_region_ref(r, &ref);
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(back));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_rctx *rc;
		struct ferry_region *mine;
		char c;

		if (read(go[0], &c, 1) != 1 || ferry_rctx_open(variant->backend, &rc))
			_exit(2);
		if (ferry_region_import(rc, &ref, FERRY_READ, &mine))
			_exit(3);
		if (probe_read(ferry_region_base(mine)) != 0)
			_exit(4);
		if (write(back[1], "m", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(5);
		/* kmod: revoked, the next access faults; memfd: cannot revoke */
		_exit(probe_read(ferry_region_base(mine)) == SIGBUS ? 0 : 6);
	}
	pidfd = pidfd_of(pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ));
	ASSERT_EQ(1, write(go[1], "g", 1));
	char c;
	ASSERT_EQ(1, read(back[0], &c, 1));
	if (variant->backend == FERRY_BACKEND_KMOD) {
		EXPECT_EQ(0, ferry_region_revoke(r, pidfd));
		ASSERT_EQ(1, write(go[1], "g", 1));
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
		EXPECT_EQ(0, WEXITSTATUS(status));
	} else {
		EXPECT_EQ(-EOPNOTSUPP, ferry_region_revoke(r, pidfd));
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}
	close(pidfd);
	ferry_region_close(r);
}

TEST_F(regions, bad_imports)
{
	struct ferry_region *r;
	struct ferry_region_ref ref = { .size = 4096, .fd = -1 };

	NEED_BACKEND();
	EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, 0, &r));
	EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, FERRY_WRITE, &r));
	EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, FERRY_READ | 8, &r));
	ref.size = 100;
	EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
	ref.size = 4096;
	if (variant->backend == FERRY_BACKEND_MEMFD) {
		int fd = memfd_create("unsealed", MFD_ALLOW_SEALING);

		EXPECT_EQ(-EBADF, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
		ASSERT_LE(0, fd);
		ASSERT_EQ(0, ftruncate(fd, 4096));
		ref.fd = fd;
		/* not sealed against shrinking: a peer could SIGBUS us */
		EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
		ASSERT_EQ(0, fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK));
		ref.size = 8192;	/* bigger than the file */
		EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
		ref.size = 4096;
		EXPECT_EQ(0, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
		ferry_region_close(r);
		close(fd);
	} else {
		ref.id = 0;
		EXPECT_EQ(-EINVAL, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
		ref.id = 0x7fffff;
		EXPECT_EQ(-ENOENT, ferry_region_import(self->rc, &ref, FERRY_READ, &r));
	}
}

TEST_F(regions, grant_checks_rights)
{
	struct ferry_region *r;
	int pidfd = pidfd_of(getppid());

	NEED_BACKEND();
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_create(self->rc, 4096, -1, &r));
	EXPECT_EQ(-EINVAL, ferry_region_grant(r, pidfd, 0));
	EXPECT_EQ(-EINVAL, ferry_region_grant(r, pidfd, FERRY_WRITE));
	EXPECT_EQ(-EINVAL, ferry_region_grant(r, pidfd, 8 | FERRY_READ));
	EXPECT_EQ(-EINVAL, ferry_region_grant(r, pidfd, FERRY_PIN));
	EXPECT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ));
	EXPECT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ | FERRY_WRITE | FERRY_PIN));
	ferry_region_close(r);
	close(pidfd);
}

/*
 * kmod: CREATE seals the memfd against write() (F_SEAL_FUTURE_WRITE) and
 * the library seals the seals only after it; the owner's mapping, made
 * before, stays writable.  memfd: sealed at once, writes go through.
 */
TEST_F(regions, create_seals_and_owner_mapping_stays_writable)
{
	unsigned int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
	bool kmod = variant->backend == FERRY_BACKEND_KMOD;
	struct ferry_region *r;
	uint8_t *p;
	int fd, seals;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 2 * 4096, -1, &r));
	fd = ferry_region_memfd(r);
	seals = fcntl(fd, F_GET_SEALS);
	ASSERT_LE(0, seals);
	if (kmod)
		want |= F_SEAL_FUTURE_WRITE;
	EXPECT_EQ(want, (unsigned int)seals & (want | F_SEAL_WRITE));
	p = ferry_region_base(r);
	memset(p, 0x6b, 2 * 4096);
	EXPECT_EQ(0x6b, p[4097]);
	if (kmod) {
		EXPECT_EQ(-1, pwrite(fd, "x", 1, 0));
		EXPECT_EQ(EPERM, errno);
	} else {
		EXPECT_EQ(1, pwrite(fd, "x", 1, 0));
		EXPECT_EQ('x', p[0]);
	}

	/* A head is one more region of the same (by now F_SEAL_SEALed) memfd. */
	EXPECT_EQ(0, ferry_region_add_head(r, 4096));
	EXPECT_EQ(kmod ? -EINVAL : 0, ferry_region_add_head(r, 4096));	/* one head */
	ferry_region_close(r);
}

/*
 * A grantee's mapping can be pinned (vmsplice, shared futexes) only where
 * its grant carries FERRY_PIN; the owner's always can.  memfd: FERRY_PIN
 * has no effect, everything can be.
 */
TEST_F(regions, only_a_pin_grant_lets_the_grantee_pin)
{
	bool kmod = variant->backend == FERRY_BACKEND_KMOD;
	struct ferry_region *plain, *pinned;
	struct ferry_region_ref ref[2];
	int go[2], pidfd, status;
	pid_t pid;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 4096, -1, &plain));
	ASSERT_EQ(0, ferry_region_create(self->rc, 4096, -1, &pinned));
	memset(ferry_region_base(plain), 0x11, 4096);
	memset(ferry_region_base(pinned), 0x22, 4096);
	EXPECT_EQ(0, pin_probe_vmsplice(ferry_region_base(plain), 4096));
	EXPECT_EQ(0, pin_probe_futex(ferry_region_base(plain)));
	ferry_region_ref(plain, &ref[0]);
	ferry_region_ref(pinned, &ref[1]);
	ASSERT_EQ(0, pipe(go));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_rctx *rc;
		struct ferry_region *a, *b;
		uint8_t *pa, *pb;
		char c;

		if (read(go[0], &c, 1) != 1 || ferry_rctx_open(variant->backend, &rc))
			_exit(2);
		if (ferry_region_import(rc, &ref[0], FERRY_READ | FERRY_WRITE, &a) ||
		    ferry_region_import(rc, &ref[1], FERRY_READ | FERRY_WRITE | FERRY_PIN, &b))
			_exit(3);
		pa = ferry_region_base(a);
		pb = ferry_region_base(b);
		/* Not pinnable, but an ordinary mapping otherwise. */
		if (pa[100] != 0x11 || pb[100] != 0x22)
			_exit(4);
		pa[200] = 0x33;
		if (pin_probe_vmsplice(pa, 4096) != (kmod ? -EFAULT : 0))
			_exit(5);
		if (pin_probe_futex(pa) != (kmod ? -EFAULT : 0))
			_exit(6);
		if (pin_probe_vmsplice(pb, 4096) || pin_probe_futex(pb))
			_exit(7);
		ferry_region_close(a);
		ferry_region_close(b);
		_exit(0);
	}
	pidfd = pidfd_of(pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_grant(plain, pidfd, FERRY_READ | FERRY_WRITE));
	ASSERT_EQ(0, ferry_region_grant(pinned, pidfd, FERRY_READ | FERRY_WRITE | FERRY_PIN));
	ASSERT_EQ(1, write(go[1], "g", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
	EXPECT_EQ(0x33, ((uint8_t *)ferry_region_base(plain))[200]);
	close(pidfd);
	close(go[0]);
	close(go[1]);
	ferry_region_close(plain);
	ferry_region_close(pinned);
}

/*
 * The channel head (broker.c): a grantee of the region without PIN maps
 * the head, granted with PIN, over its first page; that page can then be
 * pinned and the rest still cannot, and both show the owner's bytes.
 */
TEST_F(regions, head_over_an_unpinnable_import_is_pinnable)
{
	bool kmod = variant->backend == FERRY_BACKEND_KMOD;
	struct ferry_region_ref ref;
	struct ferry_region *r;
	int go[2], pidfd, status;
	uint32_t head;
	uint8_t *p;
	pid_t pid;

	NEED_BACKEND();
	ASSERT_EQ(0, ferry_region_create(self->rc, 4 * 4096, -1, &r));
	EXPECT_EQ(-EINVAL, ferry_region_add_head(r, 100));
	EXPECT_EQ(-EINVAL, ferry_region_add_head(r, 8 * 4096));
	ASSERT_EQ(0, ferry_region_add_head(r, 4096));
	head = ferry_region_head_id(r);
	/* memfd: nothing to split, so no head */
	EXPECT_EQ(kmod, head != 0);
	p = ferry_region_base(r);
	for (int i = 0; i < 4 * 4096; i++)
		p[i] = (uint8_t)(i * 7);
	ferry_region_ref(r, &ref);
	ASSERT_EQ(0, pipe(go));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_rctx *rc;
		struct ferry_region *mine;
		uint8_t *q;
		char c;

		if (read(go[0], &c, 1) != 1 || ferry_rctx_open(variant->backend, &rc))
			_exit(2);
		if (ferry_region_import(rc, &ref, FERRY_READ | FERRY_WRITE, &mine))
			_exit(3);
		if (ferry_region_map_head(mine, head, 4096))
			_exit(4);
		q = ferry_region_base(mine);
		for (int i = 0; i < 4 * 4096; i++)
			if (q[i] != (uint8_t)(i * 7))
				_exit(5);
		q[8] = 0xa1;		/* through the head */
		q[4096 + 8] = 0xa2;	/* through the rest */
		if (pin_probe_vmsplice(q, 4096) || pin_probe_futex(q + 4092))
			_exit(6);
		if (pin_probe_vmsplice(q + 4096, 4096) != (kmod ? -EFAULT : 0) ||
		    pin_probe_futex(q + 4096) != (kmod ? -EFAULT : 0))
			_exit(7);
		ferry_region_close(mine);
		_exit(0);
	}
	pidfd = pidfd_of(pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_region_grant(r, pidfd, FERRY_READ | FERRY_WRITE));
	ASSERT_EQ(0, ferry_region_grant_head(r, pidfd, FERRY_READ | FERRY_WRITE | FERRY_PIN));
	ASSERT_EQ(1, write(go[1], "g", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
	EXPECT_EQ(0xa1, p[8]);
	EXPECT_EQ(0xa2, p[4096 + 8]);
	close(pidfd);
	close(go[0]);
	close(go[1]);
	ferry_region_close(r);
}

TEST_HARNESS_MAIN
