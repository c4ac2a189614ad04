// SPDX-License-Identifier: GPL-2.0
/*
 * session.c - who may use a session and how long what it made lives: a
 * session fd is worth nothing in any other process (fork, SCM_RIGHTS),
 * threads of the owner share it, the owner's exit or last close destroys
 * its regions while mappings already made keep them alive until munmap,
 * grants die with their grantee, and once everything is closed the module
 * holds nothing (debugfs stats back to zero).
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <pthread.h>
#include <sys/prctl.h>
#include <sys/socket.h>

FIXTURE(session) {
	int fd;
	size_t ps;
	struct ferry_peer peer;
	struct ferry_kids kids;	/* killed and reaped in the teardown */
};

FIXTURE_SETUP(session)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
}

FIXTURE_TEARDOWN(session)
{
	ferry_kids_reap(&self->kids);
	ferry_peer_release(&self->peer);
	if (self->fd > 0)
		close(self->fd);
}

#define REQUIRE_STATS() do {						\
	if (!ferry_have_stats())					\
		SKIP(return, FERRY_STATS_REASON);			\
} while (0)

/*
 * Every verb through @fd from a process that is not its owner: 0 when all
 * were refused with EPERM (ENOTTY for an unknown ioctl), else the number
 * of the first check that was not.
 */
static int foreign_session_checks(int fd, uint32_t id, uint64_t off,
				  size_t ps)
{
	struct ferry_version v;
	struct ferry_create c;
	struct ferry_info info;
	int memfd = ferry_memfd(1, F_SEAL_SHRINK, 1);
	int me = ferry_pidfd_open(getpid());
	void *p;

	if (memfd < 0 || me < 0)
		return 100;
	if (ferry_version(fd, &v) != -EPERM)
		return 1;
	if (ferry_create(fd, memfd, 0, &c) != -EPERM)
		return 2;
	if (ferry_info(fd, id, &info) != -EPERM)
		return 3;
	if (ferry_grant(fd, id, me, FERRY_RIGHT_READ) != -EPERM)
		return 4;
	if (ferry_revoke(fd, id, me) != -EPERM)
		return 5;
	if (ferry_destroy(fd, id) != -EPERM)
		return 6;
	if (ferry_map(fd, off, ps, PROT_READ, &p) != -EPERM)
		return 7;
	if (ferry_map(fd, off, ps, PROT_READ | PROT_WRITE, &p) != -EPERM)
		return 8;
	/* The command is checked before the caller. */
	if (ferry_ioctl(fd, _IO(FERRY_IOC_MAGIC, 0x7f), NULL) != -ENOTTY)
		return 9;
	return 0;
}

TEST_F(session, inherited_fd_is_useless_after_fork)
{
	struct ferry_test_region r;
	struct ferry_info info;
	pid_t pid;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 4, &r));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(foreign_session_checks(self->fd, r.id, r.off, self->ps));
	ferry_kids_add(&self->kids, pid);
	EXPECT_EQ(0, ferry_kids_wait(&self->kids, pid));
	/* The child's attempts and its exit changed nothing here. */
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(0u, info.nr_maps);
	EXPECT_EQ(0u, info.nr_grants);
	ferry_region_close_memfd(&r);
}

static int send_fd(int sock, int fd)
{
	char data = 'f';
	struct iovec iov = { .iov_base = &data, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);

	memset(&u, 0, sizeof(u));
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -errno;
}

static int recv_fd(int sock)
{
	char data;
	struct iovec iov = { .iov_base = &data, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cmsg;
	int fd;

	if (recvmsg(sock, &msg, 0) != 1)
		return -errno;
	cmsg = CMSG_FIRSTHDR(&msg);
	if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS)
		return -EPROTO;
	memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
	return fd;
}

TEST_F(session, fd_passed_over_scm_rights_is_useless)
{
	struct ferry_test_region r;
	struct ferry_info info;
	int sv[2];
	pid_t pid;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 4, &r));
	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		int got, own, ret;

		/* Hold nothing of the parent's but the socket. */
		ferry_close_inherited(sv[1], -1);
		got = recv_fd(sv[1]);
		if (got < 0)
			_exit(101);
		ret = foreign_session_checks(got, r.id, r.off, ferry_page());
		if (ret)
			_exit(ret);
		/* Its own session is fine, but the region is not its own. */
		own = ferry_open();
		if (own < 0)
			_exit(102);
		if (ferry_destroy(own, r.id) != -EPERM)
			_exit(103);
		if (ferry_info(own, r.id, &info) != -EACCES)
			_exit(104);
		_exit(0);
	}
	ferry_kids_add(&self->kids, pid);
	close(sv[1]);
	ASSERT_EQ(0, send_fd(sv[0], self->fd));
	EXPECT_EQ(0, ferry_kids_wait(&self->kids, pid));
	close(sv[0]);
	EXPECT_EQ(0, ferry_info(self->fd, r.id, &info));
	ferry_region_close_memfd(&r);
}

struct thread_work {
	int fd;
	size_t ps;
	int ret;		/* 0, or the number of the step that failed */
	uint32_t id;
};

static void *owner_thread(void *arg)
{
	struct thread_work *w = arg;
	struct ferry_test_region r;
	struct ferry_version v;
	void *p;

	w->ret = 1;
	if (ferry_version(w->fd, &v))
		return NULL;
	w->ret = 2;
	if (ferry_region_new(w->fd, 2, 12, &r))
		return NULL;
	ferry_region_close_memfd(&r);
	w->ret = 3;
	if (ferry_map(w->fd, r.off, r.size, PROT_READ | PROT_WRITE, &p))
		return NULL;
	w->ret = 4;
	if (ferry_probe_check(p, r.size, 12, 0))
		return NULL;
	munmap(p, r.size);
	w->id = r.id;
	w->ret = 0;
	return NULL;
}

TEST_F(session, threads_of_the_owner_share_the_session)
{
	struct thread_work w = { .fd = self->fd, .ps = self->ps };
	struct ferry_info info;
	pthread_t t;

	ASSERT_EQ(0, pthread_create(&t, NULL, owner_thread, &w));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, w.ret);
	/* Owned by the process, not the thread that made it. */
	ASSERT_EQ(0, ferry_info(self->fd, w.id, &info));
	EXPECT_EQ(getpid(), info.owner_pid);
	EXPECT_EQ(0, ferry_destroy(self->fd, w.id));
}

TEST_F(session, dup_in_the_owner_is_the_same_session)
{
	struct ferry_test_region r;
	struct ferry_info info;
	int dupfd = dup(self->fd);

	ASSERT_LE(0, dupfd);
	ASSERT_EQ(0, ferry_region_new(dupfd, 1, 2, &r));
	close(self->fd);
	self->fd = -1;
	/* The file is still open through the dup: nothing was released. */
	EXPECT_EQ(0, ferry_info(dupfd, r.id, &info));
	close(dupfd);
	EXPECT_EQ(0, fcntl(r.memfd, F_ADD_SEALS, F_SEAL_WRITE));
	ferry_region_close_memfd(&r);
}

TEST_F(session, info_owner_pid_is_the_owner)
{
	struct ferry_info info;
	uint32_t id;
	uint64_t off;

	ASSERT_EQ(0, ferry_peer_start(&self->peer));
	ASSERT_EQ(0, ferry_peer_create(&self->peer, 2, 5, &id, &off));
	ASSERT_EQ(0, ferry_peer_grant(&self->peer, id, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_info(self->fd, id, &info));
	EXPECT_EQ(self->peer.pid, info.owner_pid);
	EXPECT_EQ(FERRY_RIGHT_READ, info.rights);
	EXPECT_EQ(2 * self->ps, info.size);
	EXPECT_EQ(off, info.mmap_offset);
	EXPECT_EQ(1u, info.nr_grants);
}

/*
 * The owner exits while the test (its grantee) has the region mapped: the
 * region leaves the id table at once, the mapping keeps reading the right
 * data, and the last munmap frees it all.
 */
TEST_F(session, owner_exit_keeps_grantee_mapping_until_munmap)
{
	struct ferry_stats base, st;
	struct ferry_info info;
	size_t len = 3 * self->ps;
	uint32_t id;
	uint64_t off;
	void *p;

	REQUIRE_STATS();
	ASSERT_EQ(0, ferry_stats_read(&base));
	ASSERT_EQ(0, ferry_peer_start(&self->peer));
	ASSERT_EQ(0, ferry_peer_create(&self->peer, 3, 61, &id, &off));
	ASSERT_EQ(0, ferry_peer_grant(&self->peer, id, FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_map(self->fd, off, len, PROT_READ, &p));
	ASSERT_EQ(0, ferry_probe_check(p, self->ps, 61, 0));

	ASSERT_EQ(0, ferry_peer_stop(&self->peer));
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, id, &info));
	/* All pages, including the two never touched before the exit. */
	EXPECT_EQ(0, ferry_probe_check(p, len, 61, 0));
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(base.regions + 1, st.regions);
	EXPECT_EQ(base.live_regions, st.live_regions);
	EXPECT_EQ(base.bytes + (long long)len, st.bytes);
	EXPECT_EQ(base.maps + 1, st.maps);

	ASSERT_EQ(0, munmap(p, len));
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(base.sessions, st.sessions);
	EXPECT_EQ(base.regions, st.regions);
	EXPECT_EQ(base.bytes, st.bytes);
	EXPECT_EQ(base.maps, st.maps);
	EXPECT_EQ(base.grants, st.grants);
}

/*
 * Closing the owner's only fd destroys its regions, but the owner's own
 * mappings keep working until munmap.
 */
TEST_F(session, last_close_keeps_owner_mapping_until_munmap)
{
	struct ferry_stats base, st;
	struct ferry_test_region r;
	struct ferry_info info;
	int fd2, probe;
	void *p;

	REQUIRE_STATS();
	fd2 = ferry_open();
	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ferry_stats_read(&base));
	ASSERT_EQ(0, ferry_region_new(fd2, 2, 71, &r));
	ASSERT_EQ(0, ferry_map(fd2, r.off, r.size, PROT_READ | PROT_WRITE, &p));
	close(fd2);

	EXPECT_EQ(-ENOENT, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(0, ferry_probe_check(p, r.size, 71, 0));
	EXPECT_EQ(0, ferry_probe_fill(p, self->ps, 72, 0));
	EXPECT_EQ(0, ferry_check_fd(r.memfd, 0, self->ps, 72));
	probe = fcntl(r.memfd, F_ADD_SEALS, F_SEAL_WRITE);
	EXPECT_EQ(-1, probe);	/* the mapping still holds the region */

	ASSERT_EQ(0, munmap(p, r.size));
	ASSERT_EQ(0, ferry_stats_read(&st));
	/* fd2's session went with its last region. */
	EXPECT_EQ(base.sessions - 1, st.sessions);
	EXPECT_EQ(base.regions, st.regions);
	EXPECT_EQ(base.bytes, st.bytes);
	EXPECT_EQ(base.maps, st.maps);
	EXPECT_EQ(0, fcntl(r.memfd, F_ADD_SEALS, F_SEAL_WRITE));
	ferry_region_close_memfd(&r);
}

/*
 * A child that inherited the owner's session fd does not keep the owner's
 * regions alive: they go when the owner exits, not when the child does.
 */
TEST_F(session, owner_exit_destroys_regions_a_child_still_has_fd_to)
{
	int idpipe[2], hold[2];
	struct ferry_info info;
	uint32_t id = 0;
	pid_t owner, holder = 0;

	/* The holder outlives its parent, the owner: let it come to us. */
	ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
	ASSERT_EQ(0, pipe(idpipe));
	ASSERT_EQ(0, pipe(hold));
	owner = fork();
	ASSERT_LE(0, owner);
	if (owner == 0) {
		struct ferry_test_region r;
		int fd = ferry_open();
		int parent = ferry_pidfd_open(getppid());

		if (fd < 0 || parent < 0 || ferry_region_new(fd, 1, 8, &r) ||
		    ferry_grant(fd, r.id, parent, FERRY_RIGHT_READ))
			_exit(1);
		holder = fork();
		if (holder < 0)
			_exit(2);
		if (holder == 0) {
			struct ferry_version v;
			char c;

			/*
			 * Keep only the session fd and the pipe it waits on:
			 * no copy of a write end, so a test that failed
			 * half-way (its end closed) lets it go.
			 */
			ferry_close_inherited(hold[0], fd);
			/* Hold the inherited fd until told; it stays useless. */
			if (read(hold[0], &c, 1) != 1)
				_exit(3);
			_exit(ferry_version(fd, &v) == -EPERM ? 0 : 4);
		}
		if (ferry_write_full(idpipe[1], &r.id, sizeof(r.id)) ||
		    ferry_write_full(idpipe[1], &holder, sizeof(holder)))
			_exit(5);
		_exit(0);	/* with its fd still open */
	}
	ferry_kids_add(&self->kids, owner);
	close(idpipe[1]);
	close(hold[0]);
	ASSERT_EQ(0, ferry_read_full(idpipe[0], &id, sizeof(id)));
	ASSERT_EQ(0, ferry_read_full(idpipe[0], &holder, sizeof(holder)));
	ferry_kids_add(&self->kids, holder);
	close(idpipe[0]);
	ASSERT_EQ(0, ferry_kids_wait(&self->kids, owner));

	EXPECT_EQ(-ENOENT, ferry_info(self->fd, id, &info));

	/* Reparented to us; its inherited fd is still refused. */
	ASSERT_EQ(1, write(hold[1], "x", 1));
	close(hold[1]);
	EXPECT_EQ(0, ferry_kids_wait(&self->kids, holder));
}

/*
 * Regression (was a bug): if the owner closed its copy of the session fd
 * before exiting while another process held a copy, ferry_flush() never
 * saw the owner exit, and the owner's regions outlived it (still in the id
 * table, still mappable by grantees, owner_pid 0) until that copy closed.
 * Now the owner's last close ends them.
 */
TEST_F(session, owner_exit_destroys_regions_after_owner_closed_its_copy)
{
	int idpipe[2], hold[2];
	struct ferry_info info;
	uint32_t id = 0;
	pid_t owner, holder = 0;

	/* The holder outlives its parent, the owner: let it come to us. */
	ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
	ASSERT_EQ(0, pipe(idpipe));
	ASSERT_EQ(0, pipe(hold));
	owner = fork();
	ASSERT_LE(0, owner);
	if (owner == 0) {
		struct ferry_test_region r;
		int fd = ferry_open();
		int parent = ferry_pidfd_open(getppid());

		if (fd < 0 || parent < 0 || ferry_region_new(fd, 1, 8, &r) ||
		    ferry_grant(fd, r.id, parent, FERRY_RIGHT_READ))
			_exit(1);
		holder = fork();
		if (holder < 0)
			_exit(2);
		if (holder == 0) {
			char c;

			/* The copy of the fd, and no write end to wait on. */
			ferry_close_inherited(hold[0], fd);
			_exit(read(hold[0], &c, 1) == 1 ? 0 : 3);
		}
		close(fd);
		if (ferry_write_full(idpipe[1], &r.id, sizeof(r.id)) ||
		    ferry_write_full(idpipe[1], &holder, sizeof(holder)))
			_exit(5);
		_exit(0);
	}
	ferry_kids_add(&self->kids, owner);
	close(idpipe[1]);
	close(hold[0]);
	ASSERT_EQ(0, ferry_read_full(idpipe[0], &id, sizeof(id)));
	ASSERT_EQ(0, ferry_read_full(idpipe[0], &holder, sizeof(holder)));
	ferry_kids_add(&self->kids, holder);
	close(idpipe[0]);
	ASSERT_EQ(0, ferry_kids_wait(&self->kids, owner));
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, id, &info)) {
		TH_LOG("region %u still there, owner_pid %d", id,
		       info.owner_pid);
	}
	ASSERT_EQ(1, write(hold[1], "x", 1));
	close(hold[1]);
	EXPECT_EQ(0, ferry_kids_wait(&self->kids, holder));
}

/*
 * The owner's last close ends its regions at once, while it lives on and a
 * forked child still holds a copy of the fd (useless to the child).
 */
TEST_F(session, owner_close_ends_regions_a_child_still_has_fd_to)
{
	struct ferry_test_region r;
	struct ferry_info info;
	int hold[2], other = ferry_open();
	pid_t holder;

	ASSERT_LE(0, other);
	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 14, &r));
	ASSERT_EQ(0, pipe(hold));
	holder = fork();
	ASSERT_LE(0, holder);
	if (holder == 0) {
		char c;

		close(hold[1]);
		_exit(read(hold[0], &c, 1) == 1 ? 0 : 3);
	}
	ferry_kids_add(&self->kids, holder);
	close(hold[0]);
	EXPECT_EQ(0, ferry_info(other, r.id, &info));
	close(self->fd);
	self->fd = -1;
	EXPECT_EQ(-ENOENT, ferry_info(other, r.id, &info));
	ASSERT_EQ(1, write(hold[1], "x", 1));
	close(hold[1]);
	EXPECT_EQ(0, ferry_kids_wait(&self->kids, holder));
	close(other);
	ferry_region_close_memfd(&r);
}

static void *unshare_files_thread(void *arg)
{
	int *ret = arg;

	/* This thread now has a private copy of the fd table... */
	*ret = unshare(CLONE_FILES) ? -errno : 0;
	return NULL;	/* ...which closes, session fd and all, as it exits. */
}

/*
 * Regression (was a bug): ferry_flush() takes "the caller is the owner and PF_EXITING"
 * for "the owner exits", but one thread with its own fd table exiting
 * fits that too: the session is closed and every region destroyed while
 * the process goes on.
 */
TEST_F(session, exiting_thread_with_own_fd_table_does_not_end_session)
{
	struct ferry_test_region r, r2;
	struct ferry_info info;
	pthread_t t;
	int ret = 1;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 6, &r));
	ASSERT_EQ(0, pthread_create(&t, NULL, unshare_files_thread, &ret));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, ret);
	EXPECT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(0, ferry_region_new(self->fd, 1, 6, &r2));
	ferry_region_close_memfd(&r);
	ferry_region_close_memfd(&r2);
}

/*
 * info.owner_pid is in the caller's pid namespace: 0 for a grantee that
 * cannot see the owner.
 */
TEST_F(session, owner_pid_is_zero_outside_the_owners_pid_namespace)
{
	struct ferry_test_region r;
	int report[2], go[2];
	pid_t mid, inner = 0;
	int pidfd, status;

	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 13, &r));
	ASSERT_EQ(0, pipe(report));
	ASSERT_EQ(0, pipe(go));
	mid = fork();
	ASSERT_LE(0, mid);
	if (mid == 0) {
		pid_t child;

		/*
		 * No copy of go's write end here or below: the inner child
		 * sees EOF when the test closes its end (or fails and exits)
		 * instead of waiting for ever with the test's session fd.
		 */
		ferry_close_inherited(report[1], go[0]);
		if (unshare(CLONE_NEWPID))
			_exit(errno == EPERM ? 99 : 98);
		child = fork();
		if (child < 0)
			_exit(97);
		if (child == 0) {
			struct ferry_info info;
			int fd;
			char c;

			ferry_close_inherited(go[0], -1);
			/* Wait for the grant, then look from inside. */
			if (read(go[0], &c, 1) != 1)
				_exit(1);
			fd = ferry_open();
			if (fd < 0)
				_exit(2);
			if (ferry_info(fd, r.id, &info))
				_exit(3);
			if (info.owner_pid != 0)
				_exit(4);
			if (info.rights != FERRY_RIGHT_READ)
				_exit(5);
			_exit(getpid() == 1 ? 0 : 6);
		}
		ferry_write_full(report[1], &child, sizeof(child));
		_exit(ferry_wait(child));
	}
	ferry_kids_add(&self->kids, mid);
	close(report[1]);
	close(go[0]);
	if (ferry_read_full(report[0], &inner, sizeof(inner))) {
		status = ferry_kids_wait(&self->kids, mid);
		if (status == 99)
			SKIP(return, "cannot unshare a pid namespace (not root?)");
		ASSERT_EQ(0, status);
	}
	/* Not our child (mid's): the teardown kills it, mid reaps it. */
	ferry_kids_add(&self->kids, inner);
	pidfd = ferry_pidfd_open(inner);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_grant(self->fd, r.id, pidfd, FERRY_RIGHT_READ));
	ASSERT_EQ(1, write(go[1], "g", 1));
	EXPECT_EQ(0, ferry_kids_wait(&self->kids, mid));
	ferry_kids_forget(&self->kids, inner);	/* mid reaped it */
	close(pidfd);
	close(go[1]);
	close(report[0]);
	ferry_region_close_memfd(&r);
}

TEST_F(session, grants_and_maps_die_with_the_grantee)
{
	struct ferry_test_region r;
	struct ferry_stats base, st;
	struct ferry_info info;
	bool stats = ferry_have_stats();

	if (stats)
		ASSERT_EQ(0, ferry_stats_read(&base));
	ASSERT_EQ(0, ferry_region_new(self->fd, 2, 14, &r));
	ASSERT_EQ(0, ferry_peer_start(&self->peer));
	ASSERT_EQ(0, ferry_grant(self->fd, r.id, self->peer.pidfd,
				 FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(&self->peer, 0, r.off, r.size, PROT_READ));
	ASSERT_EQ(0, ferry_peer_check(&self->peer, 0, 0, r.size, 14));
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(1u, info.nr_grants);
	EXPECT_EQ(1u, info.nr_maps);

	ASSERT_EQ(0, ferry_peer_stop(&self->peer));
	ASSERT_EQ(0, ferry_info(self->fd, r.id, &info));
	EXPECT_EQ(0u, info.nr_grants);
	EXPECT_EQ(0u, info.nr_maps);
	/* Gone for good: nothing to revoke. */
	EXPECT_EQ(-ENOENT, ferry_revoke(self->fd, r.id, self->peer.pidfd));
	if (stats) {
		ASSERT_EQ(0, ferry_stats_read(&st));
		EXPECT_EQ(base.grants, st.grants);
		EXPECT_EQ(base.maps, st.maps);
		EXPECT_EQ(base.regions + 1, st.regions);
		EXPECT_EQ(base.sessions, st.sessions);	/* the peer's went */
	}
	ferry_region_close_memfd(&r);
}

/*
 * With every fd closed and every mapping gone the module holds nothing.
 * Nothing else may use ferry meanwhile: the tests run one at a time.
 */
TEST_F(session, closing_everything_frees_everything)
{
	struct ferry_test_region r[3];
	struct ferry_stats st;
	void *p;

	REQUIRE_STATS();
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(0, ferry_region_new(self->fd, (size_t)i + 1, 3, &r[i]));
	ASSERT_EQ(0, ferry_peer_start(&self->peer));
	ASSERT_EQ(0, ferry_grant(self->fd, r[0].id, self->peer.pidfd,
				 FERRY_RIGHTS_ALL));
	ASSERT_EQ(0, ferry_grant(self->fd, r[1].id, self->peer.pidfd,
				 FERRY_RIGHT_READ));
	ASSERT_EQ(0, ferry_peer_map(&self->peer, 0, r[0].off, r[0].size,
				    PROT_READ | PROT_WRITE));
	ASSERT_EQ(0, ferry_peer_map(&self->peer, 1, r[1].off, r[1].size,
				    PROT_READ));
	ASSERT_EQ(0, ferry_map(self->fd, r[2].off, r[2].size, PROT_READ, &p));
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_LE(3, st.regions);
	EXPECT_LE(3, st.maps);
	EXPECT_LE(2, st.grants);

	ASSERT_EQ(0, ferry_peer_stop(&self->peer));
	close(self->fd);
	self->fd = -1;
	munmap(p, r[2].size);
	ASSERT_EQ(0, ferry_stats_read(&st));
	EXPECT_EQ(0, st.sessions);
	EXPECT_EQ(0, st.regions);
	EXPECT_EQ(0, st.live_regions);
	EXPECT_EQ(0, st.bytes);
	EXPECT_EQ(0, st.maps);
	EXPECT_EQ(0, st.grants);
	for (int i = 0; i < 3; i++) {
		/* And each memfd is released: the seal can go on again. */
		EXPECT_EQ(0, fcntl(r[i].memfd, F_ADD_SEALS, F_SEAL_WRITE));
		ferry_region_close_memfd(&r[i]);
	}
}

TEST_HARNESS_MAIN
