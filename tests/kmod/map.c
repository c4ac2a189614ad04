// SPDX-License-Identifier: GPL-2.0
/*
 * map.c - the owner's mappings of its own regions: what mmap() accepts and
 * refuses, that the mapping and the memfd are the same pages both ways,
 * partial mappings, VMA splits and moves, get_user_pages through the
 * mapping, fork, and a mapping outliving DESTROY until its munmap frees the
 * region.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <sys/statvfs.h>
#include <sys/uio.h>

#define MAP_PAGES	4
#define MAP_SEED	11

FIXTURE(map) {
	int fd;
	size_t ps;
	struct ferry_test_region r;
};

FIXTURE_SETUP(map)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->r.memfd = -1;
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, ferry_region_new(self->fd, MAP_PAGES, MAP_SEED, &self->r));
}

FIXTURE_TEARDOWN(map)
{
	ferry_region_close_memfd(&self->r);
	if (self->fd > 0)
		close(self->fd);
}

TEST_F(map, owner_rw_mapping_is_the_memfd_both_ways)
{
	size_t len = MAP_PAGES * self->ps;
	struct ferry_create c;
	uint8_t *p, *shm, b;
	int memfd;
	void *v;

	/* The memfd is written only through mappings once CREATE sealed it. */
	memfd = ferry_memfd(MAP_PAGES, F_SEAL_SHRINK, MAP_SEED);
	ASSERT_LE(0, memfd);
	shm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	ASSERT_NE(MAP_FAILED, shm);
	ASSERT_EQ(0, ferry_create(self->fd, memfd, 0, &c));
	ASSERT_EQ(0, ferry_map(self->fd, c.mmap_offset, len,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	EXPECT_EQ(0, ferry_probe_check(p, len, MAP_SEED, 0));

	/* memfd -> mapping */
	EXPECT_EQ(0, ferry_probe_fill(shm + self->ps, self->ps, 77, self->ps));
	EXPECT_EQ(0, ferry_probe_check(p + self->ps, self->ps, 77, self->ps));

	/* mapping -> memfd */
	EXPECT_EQ(0, ferry_probe_fill(p + 3 * self->ps, self->ps, 78,
				      3 * self->ps));
	EXPECT_EQ(0, ferry_check_fd(memfd, 3 * self->ps, self->ps, 78));
	p[5] = 0xa5;
	ASSERT_EQ(1, pread(memfd, &b, 1, 5));
	EXPECT_EQ(0xa5, b);
	munmap(p, len);
	munmap(shm, len);
	close(memfd);
}

TEST_F(map, private_mapping_einval)
{
	void *p;

	p = mmap(NULL, self->ps, PROT_READ, MAP_PRIVATE, self->fd,
		 (off_t)self->r.off);
	EXPECT_EQ(MAP_FAILED, p);
	EXPECT_EQ(EINVAL, errno);
	p = mmap(NULL, self->ps, PROT_READ | PROT_WRITE, MAP_PRIVATE,
		 self->fd, (off_t)self->r.off);
	EXPECT_EQ(MAP_FAILED, p);
	EXPECT_EQ(EINVAL, errno);
}

TEST_F(map, exec_refused)
{
	struct statvfs sv;
	int want = EACCES;
	void *p;

	/* A noexec /dev stops PROT_EXEC before the driver sees it. */
	ASSERT_EQ(0, statvfs(FERRY_DEV_PATH, &sv));
	if (sv.f_flag & ST_NOEXEC)
		want = EPERM;
	EXPECT_EQ(-want, ferry_map(self->fd, self->r.off, self->ps,
				   PROT_READ | PROT_EXEC, &p));
	EXPECT_EQ(-want, ferry_map(self->fd, self->r.off, self->ps,
				   PROT_READ | PROT_WRITE | PROT_EXEC, &p));

	/* Nor can a mapping become executable later. */
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps, PROT_READ, &p));
	EXPECT_EQ(-1, mprotect(p, self->ps, PROT_READ | PROT_EXEC));
	EXPECT_EQ(EACCES, errno);
	munmap(p, self->ps);
}

TEST_F(map, offset_or_length_outside_region_einval)
{
	size_t ps = self->ps;
	void *p;

	EXPECT_EQ(-EINVAL, ferry_map(self->fd, self->r.off + MAP_PAGES * ps,
				     ps, PROT_READ, &p));
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, self->r.off + 100 * ps,
				     ps, PROT_READ, &p));
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, self->r.off + 3 * ps,
				     2 * ps, PROT_READ, &p));
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, self->r.off,
				     (MAP_PAGES + 1) * ps, PROT_READ, &p));
	/* Just inside is fine. */
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off + 3 * ps, ps,
			       PROT_READ, &p));
	munmap(p, ps);
}

TEST_F(map, region_smaller_than_memfd_cannot_be_overmapped)
{
	struct ferry_create c;
	void *p;

	/* A 2-page region of the 4-page memfd. */
	ASSERT_EQ(0, ferry_create(self->fd, self->r.memfd, 2 * self->ps, &c));
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, c.mmap_offset, 3 * self->ps,
				     PROT_READ, &p));
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, c.mmap_offset + 2 * self->ps,
				     self->ps, PROT_READ, &p));
	ASSERT_EQ(0, ferry_map(self->fd, c.mmap_offset, 2 * self->ps,
			       PROT_READ, &p));
	EXPECT_EQ(0, ferry_probe_check(p, 2 * self->ps, MAP_SEED, 0));
	munmap(p, 2 * self->ps);
}

TEST_F(map, unknown_id_enoent)
{
	struct ferry_test_region gone;
	void *p;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &gone));
	ASSERT_EQ(0, ferry_destroy(self->fd, gone.id));
	EXPECT_EQ(-ENOENT, ferry_map(self->fd, gone.off, self->ps, PROT_READ,
				     &p));
	/* Id 0 is never handed out. */
	EXPECT_EQ(-ENOENT, ferry_map(self->fd, 0, self->ps, PROT_READ, &p));
	EXPECT_EQ(-ENOENT, ferry_map(self->fd, (uint64_t)0x7fffff
				     << FERRY_MMAP_SHIFT, self->ps,
				     PROT_READ, &p));
	ferry_region_close_memfd(&gone);
}

TEST_F(map, partial_mapping_at_a_page_offset)
{
	size_t ps = self->ps;
	uint8_t *p;
	void *v;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off + 2 * ps, 2 * ps,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	EXPECT_EQ(0, ferry_probe_check(p, 2 * ps, MAP_SEED, 2 * ps));
	EXPECT_EQ(0, ferry_probe_fill(p, ps, 90, 2 * ps));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, 2 * ps, ps, 90));
	/* Pages before the mapped window are untouched. */
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, 0, 2 * ps, MAP_SEED));
	munmap(p, 2 * ps);
}

TEST_F(map, owner_read_only_mapping_may_become_writable)
{
	uint8_t *p;
	void *v;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps, PROT_READ, &v));
	p = v;
	EXPECT_EQ(-SIGSEGV, ferry_probe_write(p, 1));
	ASSERT_EQ(0, mprotect(p, self->ps, PROT_READ | PROT_WRITE));
	EXPECT_EQ(0, ferry_probe_write(p, 0x3c));
	EXPECT_EQ(0x3c, ferry_probe_read(p));
	munmap(p, self->ps);
}

TEST_F(map, mapping_survives_destroy_until_munmap)
{
	struct ferry_stats base, st;
	struct ferry_info info;
	size_t len = MAP_PAGES * self->ps;
	uint8_t *p;
	void *v;

	if (!ferry_have_stats())
		SKIP(return, FERRY_STATS_REASON);
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, len,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	ASSERT_EQ(0, ferry_stats_read(&base));
	ASSERT_EQ(0, ferry_destroy(self->fd, self->r.id));
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, self->r.id, &info));

	/* Still the same pages, both ways. */
	EXPECT_EQ(0, ferry_probe_check(p, len, MAP_SEED, 0));
	EXPECT_EQ(0, ferry_probe_fill(p, self->ps, 33, 0));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, 0, self->ps, 33));

	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(base.regions, st.regions);
	EXPECT_EQ(base.live_regions - 1, st.live_regions);
	EXPECT_EQ(base.maps, st.maps);

	ASSERT_EQ(0, munmap(p, len));
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(base.regions - 1, st.regions);
	EXPECT_EQ(base.bytes - (long long)len, st.bytes);
	EXPECT_EQ(base.maps - 1, st.maps);
}

/*
 * get_user_pages on the mapping: another process reads and writes it
 * through process_vm_readv/writev, which fault pages in remotely.
 */
TEST_F(map, remote_gup_process_vm_readv_writev)
{
	size_t len = MAP_PAGES * self->ps;
	uint8_t *p;
	void *v;
	pid_t pid;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, len,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	/* Nothing faulted in yet: the child's GUP has to fault. */
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		static uint8_t buf[4 * 65536];
		struct iovec local = { .iov_base = buf, .iov_len = len };
		struct iovec remote = { .iov_base = p, .iov_len = len };

		if (len > sizeof(buf))
			_exit(10);
		if (process_vm_readv(getppid(), &local, 1, &remote, 1, 0) !=
		    (ssize_t)len)
			_exit(11);
		for (size_t i = 0; i < len; i++)
			if (buf[i] != ferry_pat(MAP_SEED, i))
				_exit(12);
		for (size_t i = 0; i < self->ps; i++)
			buf[i] = ferry_pat(55, 2 * self->ps + i);
		local.iov_len = self->ps;
		remote.iov_base = p + 2 * self->ps;
		remote.iov_len = self->ps;
		if (process_vm_writev(getppid(), &local, 1, &remote, 1, 0) !=
		    (ssize_t)self->ps)
			_exit(13);
		_exit(0);
	}
	ASSERT_EQ(0, ferry_wait(pid));
	EXPECT_EQ(0, ferry_probe_check(p + 2 * self->ps, self->ps, 55,
				       2 * self->ps));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, 2 * self->ps, self->ps, 55));
	munmap(p, len);
}

/* vmsplice() takes page references through get_user_pages. */
TEST_F(map, gup_vmsplice_into_pipe)
{
	uint8_t *p, buf[4096];
	struct iovec iov;
	int pipefd[2];
	void *v;

	ASSERT_GE(sizeof(buf), self->ps);
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off + self->ps, self->ps,
			       PROT_READ, &v));
	p = v;
	ASSERT_EQ(0, pipe(pipefd));
	iov.iov_base = p;
	iov.iov_len = self->ps;
	ASSERT_EQ((ssize_t)self->ps, vmsplice(pipefd[1], &iov, 1, 0));
	ASSERT_EQ((ssize_t)self->ps, read(pipefd[0], buf, self->ps));
	for (size_t i = 0; i < self->ps; i++)
		ASSERT_EQ(ferry_pat(MAP_SEED, self->ps + i), buf[i]);
	close(pipefd[0]);
	close(pipefd[1]);
	munmap(p, self->ps);
}

/* The mapping as the buffer of read()/write(): copy_{to,from}_user faults. */
TEST_F(map, mapping_as_syscall_buffer)
{
	size_t ps = self->ps;
	uint8_t *p, buf[4096];
	int pipefd[2];
	void *v;

	ASSERT_GE(sizeof(buf), ps);
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, 2 * ps,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	ASSERT_EQ(0, pipe(pipefd));
	/* write(): from page 0 of the mapping into the pipe. */
	ASSERT_EQ((ssize_t)ps, write(pipefd[1], p, ps));
	ASSERT_EQ((ssize_t)ps, read(pipefd[0], buf, ps));
	for (size_t i = 0; i < ps; i++)
		ASSERT_EQ(ferry_pat(MAP_SEED, i), buf[i]);
	/* read(): from the pipe into page 1 of the mapping. */
	for (size_t i = 0; i < ps; i++)
		buf[i] = ferry_pat(66, ps + i);
	ASSERT_EQ((ssize_t)ps, write(pipefd[1], buf, ps));
	ASSERT_EQ((ssize_t)ps, read(pipefd[0], p + ps, ps));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, ps, ps, 66));
	close(pipefd[0]);
	close(pipefd[1]);
	munmap(p, 2 * ps);
}

TEST_F(map, munmap_in_the_middle_splits_the_map)
{
	size_t ps = self->ps;
	struct ferry_info info;
	uint8_t *p;
	void *v;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, MAP_PAGES * ps,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	ASSERT_EQ(0, munmap(p + ps, ps));
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(2u, info.nr_maps);
	EXPECT_EQ(0, ferry_probe_check(p, ps, MAP_SEED, 0));
	EXPECT_EQ(0, ferry_probe_check(p + 2 * ps, 2 * ps, MAP_SEED, 2 * ps));
	EXPECT_EQ(-SIGSEGV, ferry_probe_read(p + ps));
	/* mprotect on part of a VMA splits it too. */
	ASSERT_EQ(0, mprotect(p + 3 * ps, ps, PROT_READ));
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(3u, info.nr_maps);
	ASSERT_EQ(0, munmap(p, MAP_PAGES * ps));
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(0u, info.nr_maps);
}

TEST_F(map, mremap_moves_but_never_grows)
{
	size_t ps = self->ps;
	struct ferry_info info;
	void *v, *moved, *grown;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, 2 * ps,
			       PROT_READ | PROT_WRITE, &v));
	grown = mremap(v, 2 * ps, 3 * ps, MREMAP_MAYMOVE);
	EXPECT_EQ(MAP_FAILED, grown);
	EXPECT_EQ(EFAULT, errno);

	/* Make room elsewhere and move the mapping there. */
	moved = mmap(NULL, 2 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	ASSERT_NE(MAP_FAILED, moved);
	ASSERT_EQ(moved, mremap(v, 2 * ps, 2 * ps,
				MREMAP_MAYMOVE | MREMAP_FIXED, moved));
	EXPECT_EQ(0, ferry_probe_check(moved, 2 * ps, MAP_SEED, 0));
	EXPECT_EQ(0, ferry_probe_write(moved, 0x42));
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(1u, info.nr_maps);
	munmap(moved, 2 * ps);
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(0u, info.nr_maps);
}

TEST_F(map, madv_dontneed_refaults_the_same_pages)
{
	size_t len = MAP_PAGES * self->ps;
	uint8_t *p;
	void *v;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, len,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	ASSERT_EQ(0, ferry_probe_fill(p, len, 44, 0));
	ASSERT_EQ(0, madvise(p, len, MADV_DONTNEED));
	EXPECT_EQ(0, ferry_probe_check(p, len, 44, 0));
	munmap(p, len);
}

TEST_F(map, two_regions_of_one_memfd_share_pages)
{
	struct ferry_create c;
	uint8_t *a, *b;
	void *va, *vb;

	ASSERT_EQ(0, ferry_create(self->fd, self->r.memfd, 0, &c));
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps,
			       PROT_READ | PROT_WRITE, &va));
	ASSERT_EQ(0, ferry_map(self->fd, c.mmap_offset, self->ps, PROT_READ,
			       &vb));
	a = va;
	b = vb;
	a[17] = 0x5a;
	EXPECT_EQ(0x5a, ferry_probe_read(b + 17));
	munmap(va, self->ps);
	munmap(vb, self->ps);
}

TEST_F(map, mapping_is_not_inherited_by_fork)
{
	void *v;
	pid_t pid;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps, PROT_READ, &v));
	EXPECT_EQ(ferry_pat(MAP_SEED, 0), ferry_probe_read(v));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(ferry_probe_read(v) == -SIGSEGV ? 0 : 1);
	EXPECT_EQ(0, ferry_wait(pid));
	munmap(v, self->ps);
}

/*
 * MADV_DOFORK on a ferry mapping, which the module made VM_DONTCOPY.  What
 * stops a child from reaching the region's pages depends on the kernel:
 *  - since 7.0 the kernel refuses MADV_DOFORK on VM_SPECIAL mappings
 *    (ferry's are VM_MIXEDMAP or VM_PFNMAP, and VM_DONTEXPAND) with
 *    EINVAL, so the VMA stays VM_DONTCOPY and fork gives the child no
 *    mapping at all: the address is unmapped there (SIGSEGV);
 *  - before, madvise succeeds and fork copies the VMA; the module's guard
 *    must then hold: ferry_vm_open makes the copy VM_WIPEONFORK (no page
 *    table entries) and the fault handler refuses any other mm (SIGBUS).
 * Each case asserts the behaviour of the kernel it runs on.  Returns the
 * signal the child must get touching the mapping.
 */
static int dofork_expect(struct __test_metadata *_metadata, void *p,
			 size_t len)
{
	int ret = madvise(p, len, MADV_DOFORK);

	if (ferry_kernel_at_least(7, 0)) {
		TH_LOG("kernel >= 7.0: MADV_DOFORK must be refused (EINVAL)");
		EXPECT_EQ(-1, ret);
		EXPECT_EQ(EINVAL, errno);
		return SIGSEGV;
	}
	TH_LOG("kernel < 7.0: MADV_DOFORK accepted, the module's guard holds");
	EXPECT_EQ(0, ret);
	return SIGBUS;
}

/*
 * A child of a MADV_DOFORK'd mapping is not the address space the map was
 * made for: it may not fault pages in.
 */
TEST_F(map, dofork_child_cannot_fault_pages_in)
{
	uint8_t *p;
	void *v;
	pid_t pid;
	int sig;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, 2 * self->ps,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	sig = dofork_expect(_metadata, p, 2 * self->ps);
	/* Page 1 is never touched by the parent. */
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(ferry_probe_read(p + self->ps) == -sig ? 0 : 1);
	EXPECT_EQ(0, ferry_wait(pid));
	munmap(p, 2 * self->ps);
}

/*
 * Regression (was a bug, on kernels that accept MADV_DOFORK here): with
 * VM_MIXEDMAP, fork copied the parent's page table entries into a
 * MADV_DOFORK child, so the child read (and wrote) pages the parent had
 * faulted in, although ferry_map_allows() refuses any other mm.  The
 * child's copy is now VM_WIPEONFORK: no entries, and its faults are
 * refused.  The parent's mapping is untouched either way.
 */
TEST_F(map, dofork_child_gets_no_prefaulted_pages)
{
	uint8_t *p;
	void *v;
	pid_t pid;
	int sig;

	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps,
			       PROT_READ | PROT_WRITE, &v));
	p = v;
	ASSERT_EQ(ferry_pat(MAP_SEED, 0), ferry_probe_read(p));
	sig = dofork_expect(_metadata, p, self->ps);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(ferry_probe_read(p) == -sig ? 0 : 1);
	EXPECT_EQ(0, ferry_wait(pid));
	EXPECT_EQ(ferry_pat(MAP_SEED, 0), ferry_probe_read(p));
	munmap(p, self->ps);
}

TEST_F(map, stats_count_maps_and_bytes)
{
	struct ferry_stats base, st;
	void *a, *b;

	if (!ferry_have_stats())
		SKIP(return, FERRY_STATS_REASON);
	ASSERT_EQ(0, ferry_stats_read(&base));
	EXPECT_LE(1, base.live_regions);
	EXPECT_LE((long long)(MAP_PAGES * self->ps), base.bytes);
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps, PROT_READ, &a));
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->ps, PROT_READ, &b));
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(base.maps + 2, st.maps);
	munmap(a, self->ps);
	munmap(b, self->ps);
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(base.maps, st.maps);
}

TEST_HARNESS_MAIN
