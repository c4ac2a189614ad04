// SPDX-License-Identifier: GPL-2.0
/*
 * grant.c - GRANT and REVOKE between two processes: the owner (the test)
 * and a peer with its own session.  What a grant lets the peer map, what
 * it does not, that revoking or downgrading reaches mappings the peer
 * already has (SIGBUS, never stale data), and every argument GRANT and
 * REVOKE refuse.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#define G_PAGES		4
#define G_SEED		21

FIXTURE(grant) {
	int fd;
	size_t ps;
	size_t len;
	struct ferry_test_region r;
	struct ferry_peer peer;
	unsigned long long max_grants;	/* restored when saved */
	bool max_grants_saved;
};

FIXTURE_SETUP(grant)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->len = G_PAGES * self->ps;
	self->r.memfd = -1;
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, ferry_region_new(self->fd, G_PAGES, G_SEED, &self->r));
	ASSERT_EQ(0, ferry_peer_start(&self->peer));
}

FIXTURE_TEARDOWN(grant)
{
	if (self->max_grants_saved)
		ferry_param_write("max_grants", self->max_grants);
	ferry_peer_release(&self->peer);
	ferry_region_close_memfd(&self->r);
	if (self->fd > 0)
		close(self->fd);
}

#define PEER	(&self->peer)
#define PIDFD	(self->peer.pidfd)
#define RW	(PROT_READ | PROT_WRITE)

TEST_F(grant, read_grant_maps_read_only)
{
	void *v;

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len,
				    PROT_READ));
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, G_SEED));
	EXPECT_EQ(-SIGSEGV, ferry_peer_write(PEER, 0, 0, 1));
	/*
	 * A later write by the owner is seen: same pages, not a copy.  (The
	 * memfd itself is sealed against write() since CREATE: the owner
	 * writes through its mapping.)
	 */
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->len, RW, &v));
	ASSERT_EQ(0, ferry_probe_fill((uint8_t *)v + self->ps, self->ps, 8,
				      self->ps));
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, self->ps, self->ps, 8));
	munmap(v, self->len);
}

TEST_F(grant, read_grant_refuses_writable_mapping)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off, self->len, RW));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off, self->ps,
					  PROT_WRITE));
}

TEST_F(grant, read_grant_refuses_mprotect_to_write)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len,
				    PROT_READ));
	EXPECT_EQ(-EACCES, ferry_peer_mprotect(PEER, 0, RW));
	EXPECT_EQ(-EACCES, ferry_peer_mprotect(PEER, 0, PROT_READ | PROT_EXEC));
	EXPECT_EQ(-SIGSEGV, ferry_peer_write(PEER, 0, 0, 1));
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, G_SEED));
}

TEST_F(grant, rw_grant_writes_reach_the_owner)
{
	uint8_t *p;
	void *v;

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHT_READ | FERRY_RIGHT_WRITE));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len, RW));
	ASSERT_EQ(0, ferry_peer_fill(PEER, 0, self->ps, self->ps, 99));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, self->ps, self->ps, 99));

	/* And the other way, through the owner's own mapping. */
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->len, RW, &v));
	p = v;
	EXPECT_EQ(0, ferry_probe_check(p + self->ps, self->ps, 99, self->ps));
	ASSERT_EQ(0, ferry_probe_fill(p + 2 * self->ps, self->ps, 98,
				      2 * self->ps));
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 2 * self->ps, self->ps, 98));
	munmap(v, self->len);
}

TEST_F(grant, ungranted_process_cannot_map_or_info)
{
	struct ferry_info info;

	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off, self->len,
					  PROT_READ));
	EXPECT_EQ(-EACCES, ferry_peer_info(PEER, self->r.id, &info));
	/* It knows the id is there (ENOENT would say otherwise). */
	EXPECT_EQ(-ENOENT, ferry_peer_info(PEER, 0, &info));
}

TEST_F(grant, grant_is_per_region)
{
	struct ferry_test_region other;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 3, &other));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, other.off, self->ps,
					  PROT_READ));
	EXPECT_EQ(0, ferry_peer_map(PEER, 1, self->r.off, self->ps, PROT_READ));
	ferry_region_close_memfd(&other);
}

TEST_F(grant, info_reports_grantee_rights_and_owner)
{
	struct ferry_info info;

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_info(PEER, self->r.id, &info));
	EXPECT_EQ(FERRY_RIGHT_READ, info.rights);
	EXPECT_EQ(getpid(), info.owner_pid);
	EXPECT_EQ(self->len, info.size);
	EXPECT_EQ(self->r.off, info.mmap_offset);
	EXPECT_EQ(1u, info.nr_grants);

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->ps, PROT_READ));
	ASSERT_EQ(0, ferry_peer_info(PEER, self->r.id, &info));
	EXPECT_EQ(FERRY_RIGHTS_ALL, info.rights);
	EXPECT_EQ(1u, info.nr_grants);	/* regrant: still one grant */
	EXPECT_EQ(1u, info.nr_maps);

	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(FERRY_RIGHTS_ALL, info.rights);
	EXPECT_EQ(1u, info.nr_grants);
}

TEST_F(grant, grant_to_self_einval)
{
	int me = ferry_pidfd_open(getpid());

	ASSERT_LE(0, me);
	EXPECT_EQ(-EINVAL, ferry_grant(self->fd, self->r.id, me,
				       FERRY_RIGHT_READ));
	EXPECT_EQ(-EINVAL, ferry_grant(self->fd, self->r.id, me,
				       FERRY_RIGHTS_ALL));
	close(me);
}

TEST_F(grant, bad_rights_einval)
{
	static const uint32_t bad[] = {
		0, FERRY_RIGHT_WRITE, FERRY_RIGHT_PIN,
		FERRY_RIGHT_WRITE | FERRY_RIGHT_PIN, 1u << 3,
		FERRY_RIGHT_READ | (1u << 3), FERRY_RIGHTS_ALL | 0x80000000u,
		0xffffffffu,
	};
	struct ferry_info info;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		EXPECT_EQ(-EINVAL, ferry_grant(self->fd, self->r.id, PIDFD,
					       bad[i])) {
			TH_LOG("rights %#x", bad[i]);
		}
	}
	/* Nothing was granted along the way. */
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(0u, info.nr_grants);
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off, self->ps,
					  PROT_READ));
}

TEST_F(grant, grant_rejects_flags)
{
	EXPECT_EQ(-EINVAL, ferry_grant_raw(self->fd, self->r.id, PIDFD,
					   FERRY_RIGHT_READ, 1));
	EXPECT_EQ(-EINVAL, ferry_grant_raw(self->fd, self->r.id, PIDFD,
					   FERRY_RIGHT_READ, 0x80000000u));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off, self->ps,
					  PROT_READ));
}

TEST_F(grant, pidfd_that_is_not_a_pidfd_ebadf)
{
	char path[64];
	int procdir, closed;

	snprintf(path, sizeof(path), "/proc/%d", self->peer.pid);
	procdir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ASSERT_LE(0, procdir);
	closed = ferry_pidfd_open(self->peer.pid);
	ASSERT_LE(0, closed);
	close(closed);

	EXPECT_EQ(-EBADF, ferry_grant(self->fd, self->r.id, self->r.memfd,
				      FERRY_RIGHT_READ));
	EXPECT_EQ(-EBADF, ferry_grant(self->fd, self->r.id, self->fd,
				      FERRY_RIGHT_READ));
	EXPECT_EQ(-EBADF, ferry_grant(self->fd, self->r.id, procdir,
				      FERRY_RIGHT_READ));
	EXPECT_EQ(-EBADF, ferry_grant(self->fd, self->r.id, closed,
				      FERRY_RIGHT_READ));
	EXPECT_EQ(-EBADF, ferry_grant(self->fd, self->r.id, -1,
				      FERRY_RIGHT_READ));
	EXPECT_EQ(-EBADF, ferry_revoke(self->fd, self->r.id, self->r.memfd));
	EXPECT_EQ(-EBADF, ferry_revoke(self->fd, self->r.id, -1));
	close(procdir);
}

TEST_F(grant, grant_to_exited_process_esrch)
{
	struct ferry_peer_cmd bye = { .op = FERRY_PEER_EXIT };

	ASSERT_EQ(0, ferry_write_full(self->peer.cmd, &bye, sizeof(bye)));
	ASSERT_EQ(0, ferry_wait_exited(PIDFD, 10000));
	/* A zombie: exited, not reaped. */
	EXPECT_EQ(-ESRCH, ferry_grant(self->fd, self->r.id, PIDFD,
				      FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_wait(self->peer.pid));
	self->peer.pid = 0;
	/* Reaped: the pidfd still names it, and it is still gone. */
	EXPECT_EQ(-ESRCH, ferry_grant(self->fd, self->r.id, PIDFD,
				      FERRY_RIGHTS_ALL));
	/* Revoke does not care whether it lives, only whether it was granted. */
	EXPECT_EQ(-ENOENT, ferry_revoke(self->fd, self->r.id, PIDFD));
}

TEST_F(grant, non_owner_cannot_grant_revoke_or_destroy)
{
	struct ferry_info info;

	/* Even with every right, the grantee is not the owner. */
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	EXPECT_EQ(-EPERM, ferry_peer_grant(PEER, self->r.id, FERRY_RIGHT_READ));
	EXPECT_EQ(-EPERM, ferry_peer_revoke(PEER, self->r.id));
	EXPECT_EQ(-EPERM, ferry_peer_destroy(PEER, self->r.id));
	/* Unknown ids are unknown, whoever asks. */
	EXPECT_EQ(-ENOENT, ferry_peer_destroy(PEER, 0));
	EXPECT_EQ(-ENOENT, ferry_peer_grant(PEER, 0, FERRY_RIGHT_READ));
	/* And the region is untouched. */
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(1u, info.nr_grants);
}

TEST_F(grant, unknown_region_enoent)
{
	struct ferry_test_region gone;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 1, &gone));
	ASSERT_EQ(0, ferry_destroy(self->fd, gone.id));
	EXPECT_EQ(-ENOENT, ferry_grant(self->fd, gone.id, PIDFD,
				       FERRY_RIGHT_READ));
	EXPECT_EQ(-ENOENT, ferry_grant(self->fd, 0, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ(-ENOENT, ferry_revoke(self->fd, gone.id, PIDFD));
	ferry_region_close_memfd(&gone);
}

TEST_F(grant, revoke_turns_live_mapping_into_sigbus)
{
	struct ferry_info info;
	uint8_t *own;
	void *v;

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len,
				    PROT_READ));
	/* Fault every page in first: revoke must take them away again. */
	ASSERT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, G_SEED));
	ASSERT_EQ(0, ferry_map(self->fd, self->r.off, self->len, RW, &v));
	own = v;

	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	for (size_t pg = 0; pg < G_PAGES; pg++) {
		EXPECT_EQ(-SIGBUS, ferry_peer_read(PEER, 0, pg * self->ps)) {
			TH_LOG("page %zu", pg);
		}
	}
	EXPECT_EQ(-EACCES, ferry_peer_info(PEER, self->r.id, &info));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 1, self->r.off, self->ps,
					  PROT_READ));
	/* The owner's mapping does not care. */
	EXPECT_EQ(0, ferry_probe_check(own, self->len, G_SEED, 0));
	EXPECT_EQ(0, ferry_peer_unmap(PEER, 0));
	munmap(v, self->len);
}

TEST_F(grant, revoke_stops_writes_too)
{
	uint8_t b;

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len, RW));
	ASSERT_EQ(0, ferry_peer_write(PEER, 0, 0, 0x11));
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	EXPECT_EQ(-SIGBUS, ferry_peer_write(PEER, 0, 0, 0x22));
	EXPECT_EQ(-SIGBUS, ferry_peer_write(PEER, 0, self->ps, 0x22));
	/* The write before the revoke landed, the one after did not. */
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, self->ps, self->ps, G_SEED));
	ASSERT_EQ(1, pread(self->r.memfd, &b, 1, 0));
	EXPECT_EQ(0x11, b);
}

TEST_F(grant, revoke_without_grant_enoent)
{
	EXPECT_EQ(-ENOENT, ferry_revoke(self->fd, self->r.id, PIDFD));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	EXPECT_EQ(-ENOENT, ferry_revoke(self->fd, self->r.id, PIDFD));
}

TEST_F(grant, revoke_rejects_flags_and_pad)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ(-EINVAL, ferry_revoke_raw(self->fd, self->r.id, PIDFD, 1, 0));
	EXPECT_EQ(-EINVAL, ferry_revoke_raw(self->fd, self->r.id, PIDFD, 0, 1));
	EXPECT_EQ(-EINVAL, ferry_revoke_raw(self->fd, self->r.id, PIDFD,
					    0, 0x80000000u));
	/* Still granted. */
	EXPECT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->ps, PROT_READ));
	EXPECT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
}

TEST_F(grant, downgrade_to_read_zaps_writable_mappings)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHT_READ | FERRY_RIGHT_WRITE));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len, RW));
	ASSERT_EQ(0, ferry_peer_write(PEER, 0, 0, 0x33));
	ASSERT_EQ(0, ferry_peer_map(PEER, 1, self->r.off, self->len,
				    PROT_READ));
	ASSERT_EQ(0, ferry_peer_check(PEER, 1, self->ps, self->ps, G_SEED));

	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	/* The writable mapping is dead for writes and reads alike... */
	EXPECT_EQ(-SIGBUS, ferry_peer_write(PEER, 0, 0, 0x44));
	EXPECT_EQ(-SIGBUS, ferry_peer_read(PEER, 0, self->ps));
	/* ...the read-only one lives on... */
	EXPECT_EQ(0, ferry_peer_check(PEER, 1, self->ps, self->ps, G_SEED));
	EXPECT_EQ(0x33, ferry_peer_read(PEER, 1, 0));
	/* ...and the writable one may live on as read-only, no further. */
	EXPECT_EQ(0, ferry_peer_mprotect(PEER, 0, PROT_READ));
	EXPECT_EQ(0x33, ferry_peer_read(PEER, 0, 0));
	EXPECT_EQ(-EACCES, ferry_peer_mprotect(PEER, 0, RW));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 2, self->r.off, self->ps, RW));
}

TEST_F(grant, upgrade_to_write_needs_a_new_mapping)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len,
				    PROT_READ));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	/* Mapped under READ: never writable, whatever the grant says now. */
	EXPECT_EQ(-EACCES, ferry_peer_mprotect(PEER, 0, RW));
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, G_SEED));
	ASSERT_EQ(0, ferry_peer_map(PEER, 1, self->r.off, self->len, RW));
	EXPECT_EQ(0, ferry_peer_write(PEER, 1, 3 * self->ps, 0x55));
	EXPECT_EQ(0x55, ferry_peer_read(PEER, 0, 3 * self->ps));
}

TEST_F(grant, regrant_after_revoke_needs_a_new_mapping)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len,
				    PROT_READ));
	ASSERT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, G_SEED));
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	/* The old mapping was made under the revoked grant. */
	EXPECT_EQ(-SIGBUS, ferry_peer_read(PEER, 0, 0));
	ASSERT_EQ(0, ferry_peer_map(PEER, 1, self->r.off, self->len,
				    PROT_READ));
	EXPECT_EQ(0, ferry_peer_check(PEER, 1, 0, self->len, G_SEED));
}

TEST_F(grant, nr_grants_counts_grantees)
{
	struct ferry_peer second;
	struct ferry_info info;

	ASSERT_EQ(0, ferry_peer_start(&second));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, second.pidfd,
				 FERRY_RIGHTS_ALL));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(2u, info.nr_grants);
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	ASSERT_EQ(0, ferry_info(self->fd, self->r.id, &info));
	EXPECT_EQ(1u, info.nr_grants);
	/* The other grantee is unaffected. */
	EXPECT_EQ(0, ferry_peer_map(&second, 0, self->r.off, self->len, RW));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off, self->len,
					  PROT_READ));
	ferry_peer_release(&second);
}

TEST_F(grant, max_grants_enospc)
{
	struct ferry_peer second;

	if (access(FERRY_PARAM_DIR "/max_grants", W_OK))
		SKIP(return, "cannot write " FERRY_PARAM_DIR "/max_grants");
	ASSERT_EQ(0, ferry_param_read("max_grants", &self->max_grants));
	self->max_grants_saved = true;
	ASSERT_EQ(0, ferry_peer_start(&second));
	ASSERT_EQ(0, ferry_param_write("max_grants", 1));
	EXPECT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHT_READ));
	EXPECT_EQ(-ENOSPC, ferry_grant(self->fd, self->r.id, second.pidfd,
				       FERRY_RIGHT_READ));
	/* Changing an existing grant is not a new one. */
	EXPECT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	EXPECT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	EXPECT_EQ(0, ferry_grant(self->fd, self->r.id, second.pidfd,
				 FERRY_RIGHT_READ));
	ferry_peer_release(&second);
}

/* DESTROY takes the id away; mappings made before stay, grants with them. */
TEST_F(grant, destroy_keeps_grantee_mapping)
{
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, self->r.off, self->len,
				    PROT_READ));
	ASSERT_EQ(0, ferry_destroy(self->fd, self->r.id));
	EXPECT_EQ(0, ferry_peer_check(PEER, 0, 0, self->len, G_SEED));
	EXPECT_EQ(-ENOENT, ferry_revoke(self->fd, self->r.id, PIDFD));
	EXPECT_EQ(-ENOENT, ferry_peer_map(PEER, 1, self->r.off, self->ps,
					  PROT_READ));
	EXPECT_EQ(0, ferry_peer_unmap(PEER, 0));
}

/*
 * Regression (was a bug): ferry_region_zap() passes even_cows=1 to
 * unmap_mapping_range(), so a revoke also throws away the private
 * (copy-on-write) pages of anyone's MAP_PRIVATE mapping of the memfd.
 */
TEST_F(grant, revoke_keeps_private_cow_pages)
{
	uint8_t *priv;

	priv = mmap(NULL, self->ps, RW, MAP_PRIVATE, self->r.memfd, 0);
	ASSERT_NE(MAP_FAILED, priv);
	priv[0] = (uint8_t)~ferry_pat(G_SEED, 0);
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD,
				 FERRY_RIGHTS_ALL));
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ((uint8_t)~ferry_pat(G_SEED, 0), priv[0]);
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	EXPECT_EQ((uint8_t)~ferry_pat(G_SEED, 0), priv[0]);
	munmap(priv, self->ps);
}

/*
 * Regression (was a bug): the VMA's file is the memfd itself, so remap_file_pages()
 * on a ferry mapping makes a plain shmem mapping of the memfd: any page of
 * it (beyond the region too), writable after mprotect() even under a READ
 * grant, and out of revoke's reach.
 */
TEST_F(grant, remap_file_pages_cannot_escape_the_grant)
{
	struct ferry_create c;
	int64_t remapped;

	/* A 2-page region: pages 0-1 of the 4-page memfd. */
	ASSERT_EQ(0, ferry_create(self->fd, self->r.memfd, 2 * self->ps, &c));
	ASSERT_EQ(0, ferry_grant(self->fd, c.id, PIDFD, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(PEER, 0, c.mmap_offset, 2 * self->ps,
				    PROT_READ));
	/* Point the whole mapping at memfd pages 2-3, outside the region. */
	remapped = ferry_peer_remap(PEER, 0, 0, 2 * self->ps, 2);
	if (remapped == 0) {
		/* If it is allowed at all, it must stay a ferry mapping. */
		EXPECT_NE(ferry_pat(G_SEED, 2 * self->ps),
			  ferry_peer_read(PEER, 0, 0));
		ferry_peer_mprotect(PEER, 0, RW);
		EXPECT_NE(0, ferry_peer_write(PEER, 0, 0, 0xee));
	}
	ASSERT_EQ(0, ferry_revoke(self->fd, c.id, PIDFD));
	EXPECT_GT(0, ferry_peer_read(PEER, 0, 0));
	EXPECT_EQ(0, ferry_check_fd(self->r.memfd, 0, self->len, G_SEED));
}

/*
 * mmap checks rights before anything else: a process without a grant gets
 * -EACCES whatever offset, length or protection it asks for, so it cannot
 * learn a region's size (bounds: -EINVAL) or its seals; a read-only
 * grantee asking for a writable mapping past the end learns no more.  The
 * owner still gets -EINVAL for bounds.  (Before, a stranger found the size
 * in ~20 calls.)
 */
TEST_F(grant, mmap_tells_a_stranger_nothing)
{
	const uint64_t big = 1ULL << 30;
	const struct { uint64_t off, len; int prot; } ask[] = {
		{ 0, self->ps, PROT_READ },
		{ 0, self->len, PROT_READ },
		{ 0, self->len + self->ps, PROT_READ },
		{ self->len, self->ps, PROT_READ },
		{ big, self->ps, PROT_READ },
		{ 0, self->ps, RW },
		{ self->len - self->ps, 2 * self->ps, RW },
	};
	void *v;

	for (size_t i = 0; i < sizeof(ask) / sizeof(ask[0]); i++) {
		EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off + ask[i].off,
						  ask[i].len, ask[i].prot)) {
			TH_LOG("stranger: off %llu len %llu prot %d",
			       (unsigned long long)ask[i].off,
			       (unsigned long long)ask[i].len, ask[i].prot);
		}
	}
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, PIDFD, FERRY_RIGHT_READ));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off + self->len,
					  self->ps, RW));
	EXPECT_EQ(-EINVAL, ferry_peer_map(PEER, 0, self->r.off + self->len,
					  self->ps, PROT_READ));
	ASSERT_EQ(0, ferry_revoke(self->fd, self->r.id, PIDFD));
	EXPECT_EQ(-EACCES, ferry_peer_map(PEER, 0, self->r.off + self->len,
					  self->ps, PROT_READ));
	/* The owner may know its own region's size. */
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, self->r.off + self->len, self->ps,
				     PROT_READ, &v));
	EXPECT_EQ(-EINVAL, ferry_map(self->fd, self->r.off, self->len + self->ps,
				     PROT_READ, &v));
}

TEST_HARNESS_MAIN
