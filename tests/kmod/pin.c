// SPDX-License-Identifier: GPL-2.0
/*
 * pin.c - what revoke reaches.  A grantee without FERRY_RIGHT_PIN maps PFN
 * entries that get_user_pages refuses, so it can keep no reference to a
 * region page past a revoke: not through a pipe (vmsplice), io_uring
 * fixed buffers, a futex key or process_vm_readv.  Before, a read-only
 * grantee vmspliced its mapping into a pipe and, after the revoke, read
 * from the pipe what the owner wrote later.  With FERRY_RIGHT_PIN the
 * mapping holds ordinary pages, pinnable (CUDA host registration needs
 * that), and such pins outlive a revoke: the documented price of PIN.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#define P_PAGES	4
#define P_SEED	31
#define RW	(PROT_READ | PROT_WRITE)

FIXTURE(pin) {
	int fd;
	size_t ps, len;
	struct ferry_test_region r;
	uint8_t *own;		/* the owner's ferry mapping */
	struct ferry_peer peer;
};

FIXTURE_SETUP(pin)
{
	void *v;

	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->len = P_PAGES * self->ps;
	self->r.memfd = -1;
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, ferry_region_new(self->fd, P_PAGES, P_SEED, &self->r));
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->len, RW, &v));
	self->own = v;
	ASSERT_EQ(0, ferry_peer_start(&self->peer));
}

FIXTURE_TEARDOWN(pin)
{
	ferry_peer_release(&self->peer);
	if (self->own)
		munmap(self->own, self->len);
	ferry_region_close_memfd(&self->r);
	if (self->fd > 0)
		close(self->fd);
}

#define PEER	(&self->peer)

static void grant_map(struct __test_metadata *_metadata,
		      FIXTURE_DATA(pin) *self, uint32_t rights, int prot)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, self->peer.pidfd, rights));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len, prot));
}

/* The attack: vmsplice by a read-only grantee, revoke, new owner data. */
TEST_F(pin, revoked_reader_keeps_nothing_in_a_pipe)
{
	grant_map(_metadata, self, FERRY_RIGHT_READ, PROT_READ);
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, P_SEED));
	EXPECT_EQ(-EFAULT, ferry_peer_gup(PEER, 0, self->ps, self->ps,
					  FERRY_GUP_VMSPLICE));
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, self->peer.pidfd));
	EXPECT_EQ(-SIGBUS, ferry_peer_read(PEER, 0, self->ps));
	EXPECT_EQ(0, ferry_probe_fill(self->own + self->ps, self->ps, 90,
				      self->ps));
	/* No pipe was ever filled: nothing shows the new bytes. */
	EXPECT_EQ(-ENOENT, ferry_peer_pipe_check(PEER, self->ps, self->ps, 90));
}

/* Every get_user_pages path refuses an unpinnable mapping. */
TEST_F(pin, unpinnable_mapping_refuses_every_gup)
{
	grant_map(_metadata, self, FERRY_RIGHT_READ | FERRY_RIGHT_WRITE, RW);
	/* Faulted in first: the fast path sees present entries, and refuses. */
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, P_SEED));
	EXPECT_EQ(-EFAULT, ferry_peer_gup(PEER, 0, 0, self->ps,
					  FERRY_GUP_VMSPLICE));
	EXPECT_EQ(-EFAULT, ferry_peer_gup(PEER, 0, 0, self->ps,
					  FERRY_GUP_FUTEX));
	EXPECT_EQ(-EFAULT, ferry_peer_gup(PEER, 0, 0, self->len,
					  FERRY_GUP_REMOTE));
	/* 6.1 refuses shmem fixed buffers anyway (EOPNOTSUPP); none work. */
	EXPECT_NE(0, ferry_peer_gup(PEER, 0, 0, self->len, FERRY_GUP_IOURING));
	/* Untouched pages: the slow path refuses too. */
	ASSERT_EQ(0, ferry_peer_map(PEER, 1, self->r.off, self->len, PROT_READ));
	EXPECT_EQ(-EFAULT, ferry_peer_gup(PEER, 1, 3 * self->ps, self->ps,
					  FERRY_GUP_VMSPLICE));
	/* Plain loads and stores are what the grant is for. */
	EXPECT_EQ(0, ferry_peer_fill(PEER, 0, 2 * self->ps, self->ps, 33));
	EXPECT_EQ(0, ferry_probe_check(self->own + 2 * self->ps, self->ps, 33,
				       2 * self->ps));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, 2 * self->ps, self->ps, 33));
	EXPECT_EQ(0, ferry_probe_fill(self->own + 3 * self->ps, self->ps, 34,
				      3 * self->ps));
	EXPECT_EQ(0, ferry_peer_check(PEER, 1, 3 * self->ps, self->ps, 34));
}

/*
 * FERRY_RIGHT_PIN: get_user_pages works, and what was pinned outlives the
 * revoke (the pipe shows what the owner wrote after it).  This is the
 * behaviour the README documents for PIN; only trusted grantees get it.
 */
TEST_F(pin, pin_grant_pins_and_pins_outlive_revoke)
{
	int64_t ring;

	grant_map(_metadata, self, FERRY_RIGHTS_ALL, RW);
	EXPECT_EQ(0, ferry_peer_gup(PEER, 0, self->ps, self->ps,
				    FERRY_GUP_VMSPLICE));
	EXPECT_EQ(-EAGAIN, ferry_peer_gup(PEER, 0, 0, self->ps,
					  FERRY_GUP_FUTEX));
	EXPECT_EQ(0, ferry_peer_gup(PEER, 0, 0, self->len, FERRY_GUP_REMOTE));
	ring = ferry_peer_gup(PEER, 0, 0, self->len, FERRY_GUP_IOURING);
	EXPECT_TRUE(ring == 0 || ring == -EOPNOTSUPP) {
		TH_LOG("io_uring fixed buffers on a PIN mapping: %lld",
		       (long long)ring);
	}
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, self->peer.pidfd));
	EXPECT_EQ(-SIGBUS, ferry_peer_read(PEER, 0, self->ps));
	EXPECT_EQ(0, ferry_probe_fill(self->own + self->ps, self->ps, 91,
				      self->ps));
	EXPECT_EQ(0, ferry_peer_pipe_check(PEER, self->ps, self->ps, 91));
}

/*
 * Taking PIN away (a grant again without it) ends the pinnable mappings
 * made under it; a new mapping is unpinnable.
 */
TEST_F(pin, dropping_pin_ends_pinnable_mappings)
{
	grant_map(_metadata, self, FERRY_RIGHTS_ALL, RW);
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, P_SEED));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, self->peer.pidfd,
				 FERRY_RIGHT_READ | FERRY_RIGHT_WRITE));
	EXPECT_EQ(-SIGBUS, ferry_peer_read(PEER, 0, 0));
	ASSERT_EQ(0, ferry_peer_map(PEER, 1, self->r.off, self->len, RW));
	EXPECT_EQ(0, ferry_peer_check(PEER, 1, 0, self->len, P_SEED));
	EXPECT_EQ(-EFAULT, ferry_peer_gup(PEER, 1, 0, self->ps,
					  FERRY_GUP_VMSPLICE));
}

/* The owner's mappings are always pinnable (it holds every right). */
TEST_F(pin, owner_mapping_is_pinnable)
{
	struct iovec iov = { .iov_base = self->own, .iov_len = self->ps };
	struct ferry_info info;
	int fds[2];

	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(FERRY_RIGHTS_ALL, info.rights);
	ASSERT_EQ(0, pipe(fds));
	EXPECT_EQ((ssize_t)self->ps, vmsplice(fds[1], &iov, 1, 0));
	close(fds[0]);
	close(fds[1]);
}

static long long shmem_kib(void)
{
	char line[256];
	long long kib = -1;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Shmem: %lld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/*
 * The region holds a reference on each page an unpinnable mapping used,
 * until it is freed; then the pages go with the memfd.  Waits (bounded)
 * for the kernel's deferred file release.
 */
TEST_F(pin, unpinnable_pages_are_given_back)
{
	const size_t pages = 512;
	struct ferry_test_region big;
	long long before, now = -1;

	before = shmem_kib();
	ASSERT_LE(0, before);
	ASSERT_EQ(0, ferry_region_new(self->fd, pages, 0, &big));
	ASSERT_EQ(0, ferry_grant(self->fd, big.id, self->peer.pidfd,
				 FERRY_RIGHT_READ | FERRY_RIGHT_WRITE));
	ASSERT_EQ(0, ferry_peer_map(PEER, 2, big.off, pages * self->ps, RW));
	ASSERT_EQ(0, ferry_peer_fill(PEER, 2, 0, pages * self->ps, 35));
	EXPECT_LE(before + (long long)(pages * self->ps / 1024) / 2,
		  shmem_kib());
	ASSERT_EQ(0, ferry_peer_unmap(PEER, 2));
	/* What was written through PFN entries is in the file. */
	EXPECT_EQ(0, ferry_check_fd(big.memfd, 0, pages * self->ps, 35));
	ASSERT_EQ(0, ferry_destroy(self->fd, big.id));
	ferry_region_close_memfd(&big);
	for (int i = 0; i < 500; i++) {
		now = shmem_kib();
		if (now < before + (long long)(pages * self->ps / 1024) / 4)
			break;
		usleep(10000);
	}
	EXPECT_GT(before + (long long)(pages * self->ps / 1024) / 4, now) {
		TH_LOG("Shmem %lld kB before, %lld kB after the region went",
		       before, now);
	}
}

TEST_HARNESS_MAIN
