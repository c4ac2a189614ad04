// SPDX-License-Identifier: GPL-2.0
/*
 * holes.c - nothing takes a page out of a region's memfd while the region
 * exists.  Shmem's hole punch (fallocate, MADV_REMOVE) cannot reach
 * ferry's mappings; before CREATE sealed the memfd with
 * F_SEAL_FUTURE_WRITE, an owner's punch under a grantee's mapping left a
 * page mapped after it left the page cache ("BUG: Bad page cache ... still
 * mapped when deleted", TAINT_BAD_PAGE; VM_BUG_ON_FOLIO and a hung inode
 * on the debug kernel), and the grantee kept a page nobody else saw.  Each
 * case checks the kernel log and the taint flags after the attack.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <linux/falloc.h>

#define H_PAGES	4
#define H_SEED	23

FIXTURE(holes) {
	int fd;
	size_t ps, len;
	int memfd;
	uint8_t *shm;		/* the owner's own mapping of the memfd */
	struct ferry_create c;
	struct ferry_peer peer;
	long long taint;
};

FIXTURE_SETUP(holes)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->len = H_PAGES * self->ps;
	self->taint = ferry_tainted();
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
	self->memfd = ferry_memfd(H_PAGES, F_SEAL_SHRINK, H_SEED);
	ASSERT_LE(0, self->memfd);
	self->shm = mmap(NULL, self->len, PROT_READ | PROT_WRITE, MAP_SHARED,
			 self->memfd, 0);
	ASSERT_NE(MAP_FAILED, self->shm);
	ASSERT_EQ(0, ferry_create(self->fd, self->memfd, 0, &self->c));
	ASSERT_EQ(0, ferry_peer_start(&self->peer));
}

FIXTURE_TEARDOWN(holes)
{
	ferry_peer_release(&self->peer);
	if (self->shm && self->shm != MAP_FAILED)
		munmap(self->shm, self->len);
	if (self->memfd > 0)
		close(self->memfd);
	if (self->fd > 0)
		close(self->fd);
}

/* The kernel is unharmed: no bad page reported, no new taint. */
#define EXPECT_KERNEL_CLEAN() do {					\
	EXPECT_EQ(0, ferry_dmesg_has("Bad page"));			\
	EXPECT_EQ(0, ferry_dmesg_has("still mapped when deleted"));	\
	EXPECT_EQ(self->taint, ferry_tainted());			\
} while (0)

static void grant_and_map(struct __test_metadata *_metadata,
			  FIXTURE_DATA(holes) *self, uint32_t rights, int prot)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->c.id, self->peer.pidfd, rights));
	ASSERT_EQ(0, ferry_peer_map(&self->peer, 0, self->c.mmap_offset,
				    self->len, prot));
	/* Every page faulted in before the attack. */
	ASSERT_EQ(0, ferry_peer_check(&self->peer, 0, 0, self->len, H_SEED));
}

/* The attack itself: fallocate(PUNCH_HOLE) by the owner is refused. */
TEST_F(holes, punch_under_unpinnable_grantee_refused)
{
	grant_and_map(_metadata, self, FERRY_RIGHT_READ, PROT_READ);
	EXPECT_EQ(-1, fallocate(self->memfd, FALLOC_FL_PUNCH_HOLE |
				FALLOC_FL_KEEP_SIZE, self->ps, self->ps));
	EXPECT_EQ(EPERM, errno);
	/* The owner's new data reaches the grantee: one page, not two. */
	EXPECT_EQ(0, ferry_probe_fill(self->shm + self->ps, self->ps, 61,
				      self->ps));
	EXPECT_EQ(0, ferry_peer_check(&self->peer, 0, self->ps, self->ps, 61));
	EXPECT_EQ(0, ferry_peer_check(&self->peer, 0, 0, self->ps, H_SEED));
	EXPECT_KERNEL_CLEAN();
}

TEST_F(holes, punch_under_pinnable_grantee_refused)
{
	grant_and_map(_metadata, self, FERRY_RIGHTS_ALL, PROT_READ | PROT_WRITE);
	EXPECT_EQ(-1, fallocate(self->memfd, FALLOC_FL_PUNCH_HOLE |
				FALLOC_FL_KEEP_SIZE, 0, self->len));
	EXPECT_EQ(EPERM, errno);
	/* The grantee's writes stay in the file. */
	EXPECT_EQ(0, ferry_peer_fill(&self->peer, 0, 2 * self->ps, self->ps, 62));
	EXPECT_EQ(0, ferry_check_fd(self->memfd, 2 * self->ps, self->ps, 62));
	EXPECT_KERNEL_CLEAN();
}

/* MADV_REMOVE on the owner's own mapping is a hole punch too. */
TEST_F(holes, madv_remove_refused)
{
	grant_and_map(_metadata, self, FERRY_RIGHT_READ | FERRY_RIGHT_WRITE,
		      PROT_READ | PROT_WRITE);
	EXPECT_EQ(-1, madvise(self->shm, self->len, MADV_REMOVE));
	EXPECT_EQ(EPERM, errno);
	EXPECT_EQ(0, ferry_peer_check(&self->peer, 0, 0, self->len, H_SEED));
	EXPECT_EQ(0, ferry_check_fd(self->memfd, 0, self->len, H_SEED));
	EXPECT_KERNEL_CLEAN();
}

/* Shrinking was refused before (F_SEAL_SHRINK) and still is. */
TEST_F(holes, truncate_refused)
{
	grant_and_map(_metadata, self, FERRY_RIGHT_READ, PROT_READ);
	EXPECT_EQ(-1, ftruncate(self->memfd, (off_t)self->ps));
	EXPECT_EQ(EPERM, errno);
	EXPECT_EQ(0, ferry_peer_check(&self->peer, 0, 0, self->len, H_SEED));
	EXPECT_KERNEL_CLEAN();
}

/*
 * The seal is for good: after the region is destroyed and unmapped the
 * memfd still refuses a punch (seals cannot be taken off).
 */
TEST_F(holes, seal_outlives_the_region)
{
	grant_and_map(_metadata, self, FERRY_RIGHT_READ, PROT_READ);
	ASSERT_EQ(0, ferry_peer_unmap(&self->peer, 0));
	ASSERT_EQ(0, ferry_destroy(self->fd, self->c.id));
	EXPECT_EQ(-1, fallocate(self->memfd, FALLOC_FL_PUNCH_HOLE |
				FALLOC_FL_KEEP_SIZE, 0, self->ps));
	EXPECT_EQ(EPERM, errno);
	EXPECT_NE(0, fcntl(self->memfd, F_GET_SEALS) & F_SEAL_FUTURE_WRITE);
	EXPECT_KERNEL_CLEAN();
}

TEST_HARNESS_MAIN
