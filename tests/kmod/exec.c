// SPDX-License-Identifier: GPL-2.0
/*
 * exec.c - rights end at exec.  A grant is bound to the grantee process
 * and to the program it ran when it was granted; a session to the program
 * that opened it.  After execve() - of a setuid program, or after dropping
 * privileges, or of anything - the new program holds no grant (INFO and
 * mmap: -EACCES) and an inherited session fd is useless (-EPERM), while
 * the same process before its exec, privileges dropped or not, keeps what
 * it was given.  Before, grants were bound to the pid alone and survived.
 *
 * The program after the exec is this binary again: a constructor sees
 * FERRY_EXEC_PROBE in the environment, probes, reports and exits.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <grp.h>

#define E_NOBODY	65534

/* What the program after the exec saw. */
struct probe_res {
	int32_t info;		/* INFO of the region from a new session */
	int32_t map;		/* mmap of it from a new session */
	int32_t destroy;	/* DESTROY of it from a new session */
	int32_t inherited;	/* VERSION on the inherited session fd */
	uint32_t ruid, euid;
};

/* What the process saw before its exec. */
struct before_res {
	int32_t info;		/* INFO as granted */
	int32_t info_dropped;	/* INFO again after dropping privileges */
};

__attribute__((constructor)) static void exec_probe(void)
{
	const char *env = getenv("FERRY_EXEC_PROBE");
	struct probe_res r = { -EPROTO, -EPROTO, -EPROTO, -EPROTO, 0, 0 };
	unsigned long long off;
	int res, inh, fd;
	unsigned int id;
	void *v;

	if (!env)
		return;
	if (sscanf(env, "%d %u %llu %d", &res, &id, &off, &inh) != 4)
		_exit(90);
	r.ruid = getuid();
	r.euid = geteuid();
	fd = ferry_open();
	if (fd >= 0) {
		struct ferry_info info;

		r.info = ferry_info(fd, id, &info);
		r.map = ferry_map(fd, off, ferry_page(), PROT_READ, &v);
		if (!r.map)
			munmap(v, ferry_page());
		r.destroy = ferry_destroy(fd, id);
	}
	if (inh >= 0) {
		struct ferry_version ver;

		r.inherited = ferry_version(inh, &ver);
	}
	_exit(ferry_write_full(res, &r, sizeof(r)) ? 91 : 0);
}

enum how { PLAIN, SETUID, DROP_THEN_EXEC };

FIXTURE(exec) {
	int fd;
	struct ferry_test_region r;
	char suid[64];
};

FIXTURE_SETUP(exec)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->r.memfd = -1;
	self->suid[0] = 0;
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, ferry_region_new(self->fd, 2, 5, &self->r));
}

FIXTURE_TEARDOWN(exec)
{
	if (self->suid[0])
		unlink(self->suid);
	ferry_region_close_memfd(&self->r);
	if (self->fd > 0)
		close(self->fd);
}

/* A setuid-root copy of this binary, for the exec that gains privileges. */
static int make_suid_copy(char *path, size_t len)
{
	static char buf[1 << 16];
	int in, out, ret = 0;
	ssize_t n;

	snprintf(path, len, "/tmp/ferry-exec-suid.%d", getpid());
	in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -errno;
	out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
	if (out < 0) {
		ret = -errno;
		close(in);
		return ret;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n) {
			ret = -EIO;
			break;
		}
	if (n < 0)
		ret = -errno;
	if (!ret && (fchown(out, 0, 0) || fchmod(out, 04755)))
		ret = -errno;
	close(in);
	close(out);
	return ret;
}

/* Become uid nobody, keeping gid 0 so /dev/ferry (root:root 0660) opens. */
static int drop_to_nobody(void)
{
	if (setgroups(0, NULL) || setresgid(0, 0, 0) ||
	    setresuid(E_NOBODY, E_NOBODY, E_NOBODY))
		return -errno;
	return 0;
}

/*
 * A child, granted READ on the region, that reports what it sees, then
 * execs @prog (this binary, or its setuid copy) whose probe reports again.
 */
static void run_grantee(struct __test_metadata *_metadata,
			FIXTURE_DATA(exec) *self, enum how how,
			const char *prog, struct before_res *before,
			struct probe_res *after)
{
	int go[2], res[2], pidfd;
	pid_t pid;
	char c = 'g';

	ASSERT_EQ(0, pipe2(go, O_CLOEXEC));
	ASSERT_EQ(0, pipe(res));	/* the probe's end survives exec */
	fflush(stdout);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct before_res b = { -EPROTO, -EPROTO };
		struct ferry_info info;
		char env[128];
		char *argv[] = { (char *)prog, NULL };
		char *envp[] = { env, NULL };
		int fd;

		close(go[1]);
		close(res[0]);
		if (how == SETUID && drop_to_nobody())
			_exit(80);
		if (read(go[0], &c, 1) != 1)
			_exit(81);
		fd = ferry_open();
		if (fd < 0)
			_exit(82);
		b.info = ferry_info(fd, self->r.id, &info);
		if (how == DROP_THEN_EXEC) {
			if (drop_to_nobody())
				_exit(83);
			b.info_dropped = ferry_info(fd, self->r.id, &info);
		}
		if (ferry_write_full(res[1], &b, sizeof(b)))
			_exit(84);
		snprintf(env, sizeof(env), "FERRY_EXEC_PROBE=%d %u %llu -1",
			 res[1], self->r.id, (unsigned long long)self->r.off);
		execve(prog, argv, envp);
		_exit(85);
	}
	close(go[0]);
	close(res[1]);
	pidfd = ferry_pidfd_open(pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ferry_grant(self->fd, self->r.id, pidfd, FERRY_RIGHT_READ));
	ASSERT_EQ(1, write(go[1], &c, 1));
	close(go[1]);
	ASSERT_EQ(0, ferry_read_full(res[0], before, sizeof(*before)));
	ASSERT_EQ(0, ferry_read_full(res[0], after, sizeof(*after)));
	close(res[0]);
	EXPECT_EQ(0, ferry_wait(pid));
	close(pidfd);
}

TEST_F(exec, grant_ends_at_exec)
{
	struct before_res b;
	struct probe_res a;

	run_grantee(_metadata, self, PLAIN, "/proc/self/exe", &b, &a);
	EXPECT_EQ(0, b.info);		/* granted, before its exec */
	EXPECT_EQ(-EACCES, a.info);
	EXPECT_EQ(-EACCES, a.map);
	EXPECT_EQ(-EPERM, a.destroy);
}

/* Above all an exec that gains privileges inherits nothing. */
TEST_F(exec, grant_ends_at_setuid_exec)
{
	struct before_res b;
	struct probe_res a;

	ASSERT_EQ(0, make_suid_copy(self->suid, sizeof(self->suid)));
	run_grantee(_metadata, self, SETUID, self->suid, &b, &a);
	EXPECT_EQ(0, b.info);
	EXPECT_EQ((uint32_t)E_NOBODY, a.ruid);
	EXPECT_EQ(0u, a.euid);		/* the exec did gain root */
	EXPECT_EQ(-EACCES, a.info);
	EXPECT_EQ(-EACCES, a.map);
}

/*
 * Dropping privileges alone keeps the grant (same program); the exec that
 * follows ends it.
 */
TEST_F(exec, privilege_drop_keeps_grant_exec_ends_it)
{
	struct before_res b;
	struct probe_res a;

	run_grantee(_metadata, self, DROP_THEN_EXEC, "/proc/self/exe", &b, &a);
	EXPECT_EQ(0, b.info);
	EXPECT_EQ(0, b.info_dropped);
	EXPECT_EQ((uint32_t)E_NOBODY, a.euid);
	EXPECT_EQ(-EACCES, a.info);
	EXPECT_EQ(-EACCES, a.map);
}

/*
 * A session fd kept across exec (no O_CLOEXEC) is useless to the new
 * program, and the regions it made are not the new program's own: -EPERM
 * to DESTROY, -EACCES to INFO and mmap.  They go when the fd closes.
 */
TEST_F(exec, session_fd_kept_across_exec_is_useless)
{
	struct ferry_test_region mine;
	struct probe_res a;
	int res[2], fd;
	pid_t pid;

	ASSERT_EQ(0, pipe(res));
	fflush(stdout);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		char env[128];
		char *argv[] = { "/proc/self/exe", NULL };
		char *envp[] = { env, NULL };

		close(res[0]);
		fd = open(FERRY_DEV_PATH, O_RDWR);	/* inherited by exec */
		if (fd < 0 || ferry_region_new(fd, 1, 6, &mine))
			_exit(80);
		snprintf(env, sizeof(env), "FERRY_EXEC_PROBE=%d %u %llu %d",
			 res[1], mine.id, (unsigned long long)mine.off, fd);
		execve(argv[0], argv, envp);
		_exit(81);
	}
	close(res[1]);
	ASSERT_EQ(0, ferry_read_full(res[0], &a, sizeof(a)));
	close(res[0]);
	EXPECT_EQ(0, ferry_wait(pid));
	EXPECT_EQ(-EPERM, a.inherited);
	EXPECT_EQ(-EACCES, a.info);
	EXPECT_EQ(-EACCES, a.map);
	EXPECT_EQ(-EPERM, a.destroy);
}

TEST_HARNESS_MAIN
