// SPDX-License-Identifier: GPL-2.0
/*
 * create.c - FERRY_IOC_VERSION, CREATE, INFO and DESTROY on one session:
 * every memfd the module must refuse (and with which errno), the fields it
 * must fill in, the ioctl number and argument checks, and the per-session
 * limits set by the max_regions / max_bytes module parameters.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <limits.h>
#include <linux/magic.h>
#include <sys/statfs.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

FIXTURE(create) {
	int fd;
	size_t ps;
	struct ferry_version v;
};

FIXTURE_SETUP(create)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd) TH_LOG("open %s: %s", FERRY_DEV_PATH,
				       strerror(-self->fd));
	ASSERT_EQ(0, ferry_version(self->fd, &self->v));
}

FIXTURE_TEARDOWN(create)
{
	if (self->fd > 0)
		close(self->fd);
}

/* Create from a fresh memfd of @pages pages with @seals; -errno or 0. */
static int create_from(int fd, size_t pages, unsigned int seals,
		       uint64_t size, struct ferry_create *c)
{
	int memfd = ferry_memfd(pages, seals, 0);
	int ret;

	if (memfd < 0)
		return memfd;
	ret = ferry_create(fd, memfd, size, c);
	close(memfd);
	return ret;
}

TEST_F(create, version_reports_abi_1_and_features)
{
	const uint64_t need = FERRY_FEAT_REGIONS | FERRY_FEAT_GRANTS |
			      FERRY_FEAT_REVOKE_ZAP;
	unsigned long long param;

	EXPECT_EQ((__u32)FERRY_ABI_VERSION, self->v.abi_version);
	EXPECT_EQ(1u, self->v.abi_version);
	EXPECT_EQ(need, self->v.features & need);
	if (ferry_have_stats())
		EXPECT_TRUE(!!(self->v.features & FERRY_FEAT_DEBUGFS));
	EXPECT_LT(0u, self->v.max_regions);
	EXPECT_LT(0u, self->v.max_bytes);
	if (!ferry_param_read("max_regions", &param))
		EXPECT_EQ(param, self->v.max_regions);
	if (!ferry_param_read("max_bytes", &param))
		EXPECT_EQ(param, self->v.max_bytes);
}

TEST_F(create, version_rejects_flags)
{
	struct ferry_version v = { .flags = 1 };

	EXPECT_EQ(-EINVAL, ferry_ioctl(self->fd, FERRY_IOC_VERSION, &v));
	v.flags = 0x80000000u;
	EXPECT_EQ(-EINVAL, ferry_ioctl(self->fd, FERRY_IOC_VERSION, &v));
	EXPECT_EQ(0u, v.abi_version);	/* nothing written on failure */
}

TEST_F(create, whole_file_when_size_is_zero)
{
	struct ferry_create c;

	ASSERT_EQ(0, create_from(self->fd, 4, F_SEAL_SHRINK, 0, &c));
	EXPECT_NE(0u, c.id);
	EXPECT_EQ(4 * self->ps, c.size);
	EXPECT_EQ((uint64_t)c.id << FERRY_MMAP_SHIFT, c.mmap_offset);
	EXPECT_EQ(0u, c.mmap_offset & FERRY_OFF_MASK);
	EXPECT_EQ(0, ferry_destroy(self->fd, c.id));
}

TEST_F(create, explicit_size_takes_a_prefix)
{
	struct ferry_create c;
	struct ferry_info info;

	ASSERT_EQ(0, create_from(self->fd, 4, F_SEAL_SHRINK, 2 * self->ps, &c));
	EXPECT_EQ(2 * self->ps, c.size);
	ASSERT_EQ(0, ferry_info(self->fd, c.id, &info));
	EXPECT_EQ(2 * self->ps, info.size);
	ASSERT_EQ(0, create_from(self->fd, 4, F_SEAL_SHRINK, 4 * self->ps, &c));
	EXPECT_EQ(4 * self->ps, c.size);
}

TEST_F(create, size_beyond_file_einval)
{
	struct ferry_create c;

	EXPECT_EQ(-EINVAL, create_from(self->fd, 4, F_SEAL_SHRINK,
				       5 * self->ps, &c));
	EXPECT_EQ(-EINVAL, create_from(self->fd, 1, F_SEAL_SHRINK,
				       FERRY_REGION_MAX_SIZE, &c));
}

TEST_F(create, size_not_page_multiple_einval)
{
	struct ferry_create c;

	EXPECT_EQ(-EINVAL, create_from(self->fd, 4, F_SEAL_SHRINK,
				       self->ps / 2, &c));
	EXPECT_EQ(-EINVAL, create_from(self->fd, 4, F_SEAL_SHRINK,
				       self->ps + 1, &c));
	EXPECT_EQ(-EINVAL, create_from(self->fd, 4, F_SEAL_SHRINK,
				       2 * self->ps - 1, &c));
}

TEST_F(create, file_not_page_multiple_einval)
{
	struct ferry_create c;
	int memfd = ferry_memfd(0, 0, 0);

	ASSERT_LE(0, memfd);
	ASSERT_EQ(0, ftruncate(memfd, (off_t)self->ps + 100));
	ASSERT_EQ(0, fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK));
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, memfd, 0, &c));
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, memfd, self->ps, &c));
	close(memfd);
}

TEST_F(create, zero_size_file_einval)
{
	struct ferry_create c;

	EXPECT_EQ(-EINVAL, create_from(self->fd, 0, F_SEAL_SHRINK, 0, &c));
	EXPECT_EQ(-EINVAL, create_from(self->fd, 0, F_SEAL_SHRINK,
				       self->ps, &c));
}

TEST_F(create, unsealed_memfd_einval)
{
	struct ferry_create c;

	EXPECT_EQ(-EINVAL, create_from(self->fd, 2, 0, 0, &c));
	/* Sealed, but not against shrinking. */
	EXPECT_EQ(-EINVAL, create_from(self->fd, 2, F_SEAL_GROW, 0, &c));
	EXPECT_EQ(-EINVAL, create_from(self->fd, 2, F_SEAL_SEAL, 0, &c));
}

TEST_F(create, write_sealed_memfd_einval)
{
	struct ferry_create c;

	EXPECT_EQ(-EINVAL, create_from(self->fd, 2,
				       F_SEAL_SHRINK | F_SEAL_WRITE, 0, &c));
	EXPECT_EQ(-EINVAL, create_from(self->fd, 2,
				       F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE,
				       0, &c));
}

TEST_F(create, other_seals_are_fine)
{
	struct ferry_create c;

	EXPECT_EQ(0, create_from(self->fd, 2, F_SEAL_SHRINK | F_SEAL_GROW,
				 0, &c));
	EXPECT_EQ(2 * self->ps, c.size);
}

/*
 * CREATE must add F_SEAL_FUTURE_WRITE (so no hole can be punched under a
 * mapping); a memfd that forbids more seals cannot be used.
 */
TEST_F(create, seal_seal_without_future_write_eperm)
{
	struct ferry_create c;

	EXPECT_EQ(-EPERM, create_from(self->fd, 2,
				      F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL,
				      0, &c));
}

TEST_F(create, pipe_ebadf)
{
	struct ferry_create c;
	int p[2];

	/* Each end is open for one direction only. */
	ASSERT_EQ(0, pipe(p));
	EXPECT_EQ(-EBADF, ferry_create(self->fd, p[0], 0, &c));
	EXPECT_EQ(-EBADF, ferry_create(self->fd, p[1], 0, &c));
	close(p[0]);
	close(p[1]);
}

TEST_F(create, not_a_regular_shmem_file_einval)
{
	struct ferry_create c;
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

	ASSERT_LE(0, devnull);
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, devnull, 0, &c));
	close(devnull);
	/* The session fd itself is a character device too. */
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, self->fd, 0, &c));
}

TEST_F(create, tmpfs_file_that_is_not_a_memfd_einval)
{
	static const char *const dirs[] = { "/dev/shm", "/tmp", "/run", "/dev" };
	struct ferry_create c;
	struct statfs sfs;
	int tfd = -1;

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]) && tfd < 0; i++) {
		if (statfs(dirs[i], &sfs) || sfs.f_type != TMPFS_MAGIC)
			continue;
		tfd = open(dirs[i], O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	}
	if (tfd < 0)
		SKIP(return, "no writable tmpfs directory for an O_TMPFILE");
	ASSERT_EQ(0, ftruncate(tfd, (off_t)self->ps));
	/* Same filesystem as a memfd, but it can never carry F_SEAL_SHRINK. */
	EXPECT_EQ(-1, fcntl(tfd, F_ADD_SEALS, F_SEAL_SHRINK));
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, tfd, 0, &c));
	close(tfd);
}

TEST_F(create, memfd_reopened_read_only_or_write_only_ebadf)
{
	struct ferry_create c;
	char path[64];
	int memfd = ferry_memfd(2, F_SEAL_SHRINK, 0);
	int rd, wr, rw;

	ASSERT_LE(0, memfd);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	rd = open(path, O_RDONLY | O_CLOEXEC);
	wr = open(path, O_WRONLY | O_CLOEXEC);
	rw = open(path, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, rd);
	ASSERT_LE(0, wr);
	ASSERT_LE(0, rw);
	EXPECT_EQ(-EBADF, ferry_create(self->fd, rd, 0, &c));
	EXPECT_EQ(-EBADF, ferry_create(self->fd, wr, 0, &c));
	/* The same memfd through a read-write open is good. */
	EXPECT_EQ(0, ferry_create(self->fd, rw, 0, &c));
	close(rd);
	close(wr);
	close(rw);
	close(memfd);
}

TEST_F(create, o_path_fd_ebadf)
{
	struct ferry_create c;
	int pfd = open("/dev/null", O_PATH | O_CLOEXEC);

	ASSERT_LE(0, pfd);
	EXPECT_EQ(-EBADF, ferry_create(self->fd, pfd, 0, &c));
	close(pfd);
}

TEST_F(create, closed_or_negative_fd_ebadf)
{
	struct ferry_create c;
	int memfd = ferry_memfd(1, F_SEAL_SHRINK, 0);

	ASSERT_LE(0, memfd);
	close(memfd);
	EXPECT_EQ(-EBADF, ferry_create(self->fd, memfd, 0, &c));
	EXPECT_EQ(-EBADF, ferry_create(self->fd, -1, 0, &c));
	EXPECT_EQ(-EBADF, ferry_create(self->fd, INT_MIN, 0, &c));
	EXPECT_EQ(-EBADF, ferry_create(self->fd, INT_MAX, 0, &c));
}

TEST_F(create, hugetlb_memfd_einval)
{
	struct ferry_create c;
	const size_t huge = 2UL << 20;
	int memfd = memfd_create("ferry-huge", MFD_CLOEXEC |
				 MFD_ALLOW_SEALING | MFD_HUGETLB);

	if (memfd < 0)
		SKIP(return, "no hugetlb memfd here: %s", strerror(errno));
	if (ftruncate(memfd, (off_t)huge) ||
	    fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK)) {
		close(memfd);
		SKIP(return, "cannot size or seal a hugetlb memfd");
	}
	/* Only shmem memfds: hugetlbfs pages are not ours to insert. */
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, memfd, 0, &c));
	close(memfd);
}

TEST_F(create, larger_than_region_max_einval)
{
	struct ferry_create c;
	int memfd = ferry_memfd(0, 0, 0);

	ASSERT_LE(0, memfd);
	/* Sparse: nothing is allocated. */
	ASSERT_EQ(0, ftruncate(memfd, (off_t)(FERRY_REGION_MAX_SIZE +
					      self->ps)));
	ASSERT_EQ(0, fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK));
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, memfd, 0, &c));
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, memfd,
					FERRY_REGION_MAX_SIZE + self->ps, &c));
	/* A small prefix of the same file is fine. */
	EXPECT_EQ(0, ferry_create(self->fd, memfd, self->ps, &c));
	EXPECT_EQ(self->ps, c.size);
	close(memfd);
}

TEST_F(create, over_max_bytes_edquot)
{
	struct ferry_create c;
	uint64_t len = self->v.max_bytes + self->ps;
	int memfd;

	len &= ~(uint64_t)(self->ps - 1);
	if (len > FERRY_REGION_MAX_SIZE)
		SKIP(return, "max_bytes %llu is at the region size cap",
		     (unsigned long long)self->v.max_bytes);
	memfd = ferry_memfd(0, 0, 0);
	ASSERT_LE(0, memfd);
	ASSERT_EQ(0, ftruncate(memfd, (off_t)len));
	ASSERT_EQ(0, fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK));
	EXPECT_EQ(-EDQUOT, ferry_create(self->fd, memfd, 0, &c));
	EXPECT_EQ(0, ferry_create(self->fd, memfd, self->ps, &c));
	close(memfd);
}

TEST_F(create, rejects_flags_and_pad)
{
	struct ferry_create c;
	int memfd = ferry_memfd(1, F_SEAL_SHRINK, 0);

	ASSERT_LE(0, memfd);
	EXPECT_EQ(-EINVAL, ferry_create_raw(self->fd, memfd, 0, 1, 0, &c));
	EXPECT_EQ(-EINVAL, ferry_create_raw(self->fd, memfd, 0, 0x80000000u,
					    0, &c));
	EXPECT_EQ(-EINVAL, ferry_create_raw(self->fd, memfd, 0, 0, 1, &c));
	EXPECT_EQ(-EINVAL, ferry_create_raw(self->fd, memfd, 0, 0,
					    0xffffffffu, &c));
	/* Checked before the fd: even a bad fd gets EINVAL. */
	EXPECT_EQ(-EINVAL, ferry_create_raw(self->fd, -1, 0, 1, 0, &c));
	EXPECT_EQ(0, ferry_create_raw(self->fd, memfd, 0, 0, 0, &c));
	close(memfd);
}

TEST_F(create, info_and_destroy_reject_flags)
{
	struct ferry_test_region r;
	struct ferry_info info;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 3, &r));
	EXPECT_EQ(-EINVAL, ferry_info_raw(self->fd, r.id, 1, &info));
	EXPECT_EQ(-EINVAL, ferry_destroy_raw(self->fd, r.id, 1));
	EXPECT_EQ(-EINVAL, ferry_destroy_raw(self->fd, r.id, 0x80000000u));
	/* Nothing happened to the region. */
	EXPECT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(0, ferry_destroy(self->fd, r.id));
	ferry_region_close_memfd(&r);
}

TEST_F(create, unknown_ioctl_enotty)
{
	struct ferry_version v;
	uint64_t word = 0;

	memset(&v, 0, sizeof(v));
	EXPECT_EQ(-ENOTTY, ferry_ioctl(self->fd,
				       _IOWR(FERRY_IOC_MAGIC, 0x06,
					     struct ferry_version), &v));
	EXPECT_EQ(-ENOTTY, ferry_ioctl(self->fd,
				       _IOWR(FERRY_IOC_MAGIC, 0xff, uint64_t),
				       &word));
	/* Right number, wrong direction or size: a different command. */
	EXPECT_EQ(-ENOTTY, ferry_ioctl(self->fd, _IO(FERRY_IOC_MAGIC, 0x00),
				       NULL));
	EXPECT_EQ(-ENOTTY, ferry_ioctl(self->fd,
				       _IOWR(FERRY_IOC_MAGIC, 0x00, uint64_t),
				       &word));
	EXPECT_EQ(-ENOTTY, ferry_ioctl(self->fd,
				       _IOR(FERRY_IOC_MAGIC, 0x01,
					    struct ferry_create), &word));
	EXPECT_EQ(-ENOTTY, ferry_ioctl(self->fd, 0, NULL));
}

TEST_F(create, bad_argument_pointer_efault)
{
	EXPECT_EQ(-EFAULT, ferry_ioctl(self->fd, FERRY_IOC_VERSION, NULL));
	EXPECT_EQ(-EFAULT, ferry_ioctl(self->fd, FERRY_IOC_CREATE, NULL));
	EXPECT_EQ(-EFAULT, ferry_ioctl(self->fd, FERRY_IOC_INFO, NULL));
	EXPECT_EQ(-EFAULT, ferry_ioctl(self->fd, FERRY_IOC_GRANT,
				       (void *)16));
	EXPECT_EQ(-EFAULT, ferry_ioctl(self->fd, FERRY_IOC_DESTROY, NULL));
}

/*
 * CREATE whose answer cannot be written back must not leave a region the
 * caller cannot name: the module destroys it, and its claim on the memfd
 * goes with it (F_SEAL_WRITE can be added again).
 */
TEST_F(create, unwritable_argument_efault_and_leaks_nothing)
{
	struct ferry_stats before, after;
	struct ferry_create *c;
	bool stats = ferry_have_stats();
	int memfd = ferry_memfd(2, F_SEAL_SHRINK, 0);

	ASSERT_LE(0, memfd);
	c = mmap(NULL, self->ps, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, c);
	c->memfd = memfd;
	ASSERT_EQ(0, mprotect(c, self->ps, PROT_READ));
	if (stats)
		ASSERT_EQ(0, ferry_stats_read(&before));

	EXPECT_EQ(-EFAULT, ferry_ioctl(self->fd, FERRY_IOC_CREATE, c));

	if (stats) {
		ASSERT_EQ(0, ferry_stats_read(&after));
		EXPECT_EQ(before.regions, after.regions);
		EXPECT_EQ(before.bytes, after.bytes);
	}
	EXPECT_EQ(0, fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE));
	munmap(c, self->ps);
	close(memfd);
}

TEST_F(create, seal_write_refused_while_region_exists)
{
	struct ferry_test_region r;

	ASSERT_EQ(0, ferry_region_new(self->fd, 2, 5, &r));
	EXPECT_EQ(-1, fcntl(r.memfd, F_ADD_SEALS, F_SEAL_WRITE));
	EXPECT_EQ(EBUSY, errno);
	ASSERT_EQ(0, ferry_destroy(self->fd, r.id));
	/* Destroyed and unmapped: freed, and the claim is gone. */
	EXPECT_EQ(0, fcntl(r.memfd, F_ADD_SEALS, F_SEAL_WRITE));
	ferry_region_close_memfd(&r);
}

/*
 * The same memfd may back two regions; both hold a claim, so the seal
 * stays refused until the last of them goes.
 */
TEST_F(create, one_memfd_two_regions)
{
	struct ferry_create a, b;
	int memfd = ferry_memfd(2, F_SEAL_SHRINK, 0);

	ASSERT_LE(0, memfd);
	ASSERT_EQ(0, ferry_create(self->fd, memfd, 0, &a));
	ASSERT_EQ(0, ferry_create(self->fd, memfd, self->ps, &b));
	EXPECT_NE(a.id, b.id);
	EXPECT_EQ(0, ferry_destroy(self->fd, a.id));
	EXPECT_EQ(-1, fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE));
	EXPECT_EQ(0, ferry_destroy(self->fd, b.id));
	EXPECT_EQ(0, fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE));
	close(memfd);
}

TEST_F(create, region_keeps_memfd_after_close)
{
	struct ferry_test_region r;
	struct ferry_info info;
	void *p;

	ASSERT_EQ(0, ferry_region_new(self->fd, 2, 9, &r));
	ferry_region_close_memfd(&r);
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(2 * self->ps, info.size);
	ASSERT_EQ(0, ferry_map(self->fd, r.off, r.size, PROT_READ, &p));
	EXPECT_EQ(0, ferry_probe_check(p, r.size, 9, 0));
	munmap(p, r.size);
}

TEST_F(create, ids_are_unique_and_offsets_follow)
{
	struct ferry_test_region r[16];

	for (int i = 0; i < 16; i++) {
		ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[i]));
		ferry_region_close_memfd(&r[i]);
		EXPECT_NE(0u, r[i].id);
		EXPECT_EQ((uint64_t)r[i].id << FERRY_MMAP_SHIFT, r[i].off);
		for (int j = 0; j < i; j++)
			EXPECT_NE(r[j].id, r[i].id);
	}
}

TEST_F(create, info_reports_the_region)
{
	struct ferry_test_region r;
	struct ferry_info info;
	void *p;

	ASSERT_EQ(0, ferry_region_new(self->fd, 3, 4, &r));
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(r.id, info.id);
	EXPECT_EQ(3 * self->ps, info.size);
	EXPECT_EQ(r.off, info.mmap_offset);
	EXPECT_EQ(FERRY_RIGHTS_ALL, info.rights);
	EXPECT_EQ(getpid(), info.owner_pid);
	EXPECT_EQ(0u, info.nr_grants);
	EXPECT_EQ(0u, info.nr_maps);
	EXPECT_EQ(0u, info.flags);

	ASSERT_EQ(0, ferry_map(self->fd, r.off, r.size, PROT_READ, &p));
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(1u, info.nr_maps);
	munmap(p, r.size);
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(0u, info.nr_maps);
	ferry_region_close_memfd(&r);
}

TEST_F(create, info_unknown_id_enoent)
{
	struct ferry_info info;

	EXPECT_EQ(-ENOENT, ferry_info(self->fd, 0, &info));
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, 0xffffffffu, &info));
	EXPECT_EQ(-ENOENT, ferry_destroy(self->fd, 0));
	EXPECT_EQ(-ENOENT, ferry_destroy(self->fd, 0xffffffffu));
}

TEST_F(create, destroy_then_info_enoent)
{
	struct ferry_test_region r;
	struct ferry_info info;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 2, &r));
	ASSERT_EQ(0, ferry_destroy(self->fd, r.id));
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(-ENOENT, ferry_destroy(self->fd, r.id));
	ferry_region_close_memfd(&r);
}

TEST_F(create, close_frees_the_sessions_regions)
{
	struct ferry_test_region r;
	struct ferry_info info;
	int fd2 = ferry_open();

	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ferry_region_new(fd2, 2, 2, &r));
	/* Regions belong to the process: visible through either session. */
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	close(fd2);
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, r.id, &info));
	/* Freed, not just out of the table: the claim is gone. */
	EXPECT_EQ(0, fcntl(r.memfd, F_ADD_SEALS, F_SEAL_WRITE));
	ferry_region_close_memfd(&r);
}

/* ---- limits: module parameters lowered for the case, restored after --- */

FIXTURE(limits) {
	int fd;
	size_t ps;
	unsigned long long max_regions, max_bytes;
	bool saved;
};

FIXTURE_SETUP(limits)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	if (access(FERRY_PARAM_DIR "/max_regions", W_OK) ||
	    access(FERRY_PARAM_DIR "/max_bytes", W_OK))
		FERRY_SETUP_SKIP("cannot write " FERRY_PARAM_DIR " (not root?)");
	ASSERT_EQ(0, ferry_param_read("max_regions", &self->max_regions));
	ASSERT_EQ(0, ferry_param_read("max_bytes", &self->max_bytes));
	self->saved = true;
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
}

FIXTURE_TEARDOWN(limits)
{
	if (self->fd > 0)
		close(self->fd);
	if (self->saved) {
		ferry_param_write("max_regions", self->max_regions);
		ferry_param_write("max_bytes", self->max_bytes);
	}
}

TEST_F(limits, max_regions_enospc)
{
	struct ferry_test_region r[3];
	struct ferry_version v;

	ASSERT_EQ(0, ferry_param_write("max_regions", 2));
	ASSERT_EQ(0, ferry_version(self->fd, &v));
	EXPECT_EQ(2u, v.max_regions);
	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[0]));
	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[1]));
	EXPECT_EQ(-ENOSPC, ferry_region_new(self->fd, 1, 1, &r[2]));
	ASSERT_EQ(0, ferry_destroy(self->fd, r[0].id));
	EXPECT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[2]));
	for (int i = 0; i < 3; i++)
		ferry_region_close_memfd(&r[i]);
}

TEST_F(limits, max_regions_zero_refuses_all)
{
	struct ferry_test_region r;

	ASSERT_EQ(0, ferry_param_write("max_regions", 0));
	EXPECT_EQ(-ENOSPC, ferry_region_new(self->fd, 1, 1, &r));
}

TEST_F(limits, max_bytes_edquot)
{
	struct ferry_test_region r[4];
	struct ferry_version v;

	ASSERT_EQ(0, ferry_param_write("max_bytes", 3 * self->ps));
	ASSERT_EQ(0, ferry_version(self->fd, &v));
	EXPECT_EQ(3 * self->ps, v.max_bytes);
	ASSERT_EQ(0, ferry_region_new(self->fd, 2, 1, &r[0]));
	EXPECT_EQ(-EDQUOT, ferry_region_new(self->fd, 2, 1, &r[1]));
	EXPECT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[2]));
	EXPECT_EQ(-EDQUOT, ferry_region_new(self->fd, 1, 1, &r[3]));
	ASSERT_EQ(0, ferry_destroy(self->fd, r[0].id));
	EXPECT_EQ(0, ferry_region_new(self->fd, 2, 1, &r[1]));
	for (int i = 0; i < 4; i++)
		ferry_region_close_memfd(&r[i]);
}

TEST_F(limits, limits_are_per_session)
{
	struct ferry_test_region r[3];
	int fd2 = ferry_open();

	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ferry_param_write("max_regions", 1));
	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[0]));
	EXPECT_EQ(-ENOSPC, ferry_region_new(self->fd, 1, 1, &r[1]));
	EXPECT_EQ(0, ferry_region_new(fd2, 1, 1, &r[2]));
	close(fd2);
	ferry_region_close_memfd(&r[0]);
	ferry_region_close_memfd(&r[2]);
}

/* A destroyed region still mapped is still charged until its last unmap. */
TEST_F(limits, charge_held_until_last_unmap)
{
	struct ferry_test_region r, r2;
	void *p;

	ASSERT_EQ(0, ferry_param_write("max_regions", 1));
	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &r));
	ASSERT_EQ(0, ferry_map(self->fd, r.off, r.size, PROT_READ, &p));
	ASSERT_EQ(0, ferry_destroy(self->fd, r.id));
	EXPECT_EQ(-ENOSPC, ferry_region_new(self->fd, 1, 1, &r2));
	ASSERT_EQ(0, munmap(p, r.size));
	EXPECT_EQ(0, ferry_region_new(self->fd, 1, 1, &r2));
	ferry_region_close_memfd(&r);
	ferry_region_close_memfd(&r2);
}

TEST_F(limits, lowering_a_limit_keeps_existing_regions)
{
	struct ferry_test_region r[4];
	struct ferry_info info;

	for (int i = 0; i < 3; i++)
		ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &r[i]));
	ASSERT_EQ(0, ferry_param_write("max_regions", 2));
	EXPECT_EQ(-ENOSPC, ferry_region_new(self->fd, 1, 1, &r[3]));
	for (int i = 0; i < 3; i++) {
		EXPECT_EQ(0, ferry_info(self->fd, r[i].id, &info));
		ferry_region_close_memfd(&r[i]);
	}
}

/*
 * CREATE seals the memfd with F_SEAL_FUTURE_WRITE: write() and new
 * writable shmem mappings are refused from then on, a mapping made before
 * keeps working, and ferry's own mappings stay writable (the seal is
 * ferry's).  Adding the seal again changes nothing.
 */
TEST_F(create, create_adds_future_write_seal)
{
	size_t len = 2 * self->ps;
	struct ferry_create c;
	uint8_t *before, *mine;
	uint8_t b = 1;
	void *v;
	int memfd;

	memfd = ferry_memfd(2, F_SEAL_SHRINK, 0);
	ASSERT_LE(0, memfd);
	before = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	ASSERT_NE(MAP_FAILED, before);
	EXPECT_EQ(0, fcntl(memfd, F_GET_SEALS) & F_SEAL_FUTURE_WRITE);
	ASSERT_EQ(0, ferry_create(self->fd, memfd, 0, &c));
	EXPECT_NE(0, fcntl(memfd, F_GET_SEALS) & F_SEAL_FUTURE_WRITE);

	EXPECT_EQ(-1, pwrite(memfd, &b, 1, 0));
	EXPECT_EQ(EPERM, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, len, PROT_READ | PROT_WRITE,
				   MAP_SHARED, memfd, 0));
	EXPECT_EQ(0, fcntl(memfd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE));

	ASSERT_EQ(0, ferry_map(self->fd, c.mmap_offset, len,
			       PROT_READ | PROT_WRITE, &v));
	mine = v;
	before[7] = 0x17;			/* the earlier mapping still writes */
	EXPECT_EQ(0x17, ferry_probe_read(mine + 7));
	mine[self->ps + 3] = 0x29;		/* and ferry's too */
	EXPECT_EQ(0x29, before[self->ps + 3]);
	ASSERT_EQ(1, pread(memfd, &b, 1, self->ps + 3));
	EXPECT_EQ(0x29, b);
	munmap(v, len);
	munmap(before, len);
	close(memfd);
}

/*
 * A memfd sealed F_SEAL_FUTURE_WRITE by someone else promised that nobody
 * writes it any more: refused.  One sealed by a live region of ferry's may
 * back more regions.
 */
TEST_F(create, future_write_is_ferrys_only_while_a_region_lives)
{
	struct ferry_create a, b;
	struct ferry_destroy d;
	int memfd = ferry_memfd(2, F_SEAL_SHRINK, 0);

	ASSERT_LE(0, memfd);
	ASSERT_EQ(0, ferry_create(self->fd, memfd, 0, &a));
	ASSERT_EQ(0, ferry_create(self->fd, memfd, self->ps, &b));
	memset(&d, 0, sizeof(d));
	d.id = a.id;
	ASSERT_EQ(0, ferry_ioctl(self->fd, FERRY_IOC_DESTROY, &d));
	d.id = b.id;
	ASSERT_EQ(0, ferry_ioctl(self->fd, FERRY_IOC_DESTROY, &d));
	EXPECT_EQ(-EINVAL, ferry_create(self->fd, memfd, 0, &a));
	close(memfd);
}

TEST_HARNESS_MAIN
