// SPDX-License-Identifier: GPL-2.0
/*
 * limits.c - one user cannot take what every user shares.  Sessions,
 * regions and region bytes are capped per real uid over all its sessions
 * (max_user_sessions -> -EMFILE, max_user_regions -> -ENOSPC,
 * max_user_bytes -> -EDQUOT); a region costs no file until it is first
 * mapped; the module's objects are charged to the creator's memory
 * cgroup.  Before, limits were per session and sessions free: one process
 * with 25 fds made 96,773 regions of one 4 KiB memfd and the host's file
 * table ran out for everyone.
 *
 * The users are forked children that set their uid (keeping gid 0, so the
 * root:root 0660 device still opens) and report over a pipe.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <grp.h>
#include <sys/mount.h>

#define UID_A	4101
#define UID_B	4102
#define MAX_OPS	64

FIXTURE(user_limits) {
	unsigned long long sessions, regions, bytes;
	size_t ps;
};

FIXTURE_SETUP(user_limits)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	ASSERT_EQ(0, ferry_param_read("max_user_sessions", &self->sessions));
	ASSERT_EQ(0, ferry_param_read("max_user_regions", &self->regions));
	ASSERT_EQ(0, ferry_param_read("max_user_bytes", &self->bytes));
}

FIXTURE_TEARDOWN(user_limits)
{
	ferry_param_write("max_user_sessions", self->sessions);
	ferry_param_write("max_user_regions", self->regions);
	ferry_param_write("max_user_bytes", self->bytes);
}

/*
 * As @uid: open @nsess sessions, then create regions of @pages pages in
 * turn across them, @nreg times; the first error stops it.  The results:
 * out[0] = sessions opened or the error of the one that failed, out[1..]
 * = each create's result.  @hold: wait for a byte on @hold_fd before
 * exiting (so another user acts while these are held).
 */
struct usage { int32_t r[MAX_OPS + 1]; };

static pid_t act_as(uid_t uid, int nsess, int nreg, size_t pages,
		    int res_fd, int hold_fd)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid)
		return pid;
	{
		struct usage u;
		int fds[MAX_OPS], n = 0;
		char c;

		ferry_close_inherited(res_fd, hold_fd);
		memset(&u, 0, sizeof(u));
		if (setgroups(0, NULL) || setresgid(0, 0, 0) ||
		    setresuid(uid, uid, uid))
			_exit(70);
		for (; n < nsess && n < MAX_OPS; n++) {
			fds[n] = ferry_open();
			if (fds[n] < 0)
				break;
		}
		u.r[0] = n < nsess ? fds[n] : n;
		for (int i = 0; n && i < nreg && i < MAX_OPS; i++) {
			struct ferry_test_region reg;

			u.r[1 + i] = ferry_region_new(fds[i % n], pages, 0, &reg);
			ferry_region_close_memfd(&reg);
			if (u.r[1 + i])
				break;
		}
		if (ferry_write_full(res_fd, &u, sizeof(u)))
			_exit(71);
		if (hold_fd >= 0 && read(hold_fd, &c, 1) < 0)
			_exit(72);
		_exit(0);
	}
}

/* Run @uid's usage and keep it held; returns the pid, fills @u. */
static pid_t held(struct __test_metadata *_metadata, uid_t uid, int nsess,
		  int nreg, size_t pages, struct usage *u, int *release)
{
	int res[2], hold[2];
	pid_t pid;

	ASSERT_EQ(0, pipe2(res, O_CLOEXEC));
	ASSERT_EQ(0, pipe2(hold, O_CLOEXEC));
	pid = act_as(uid, nsess, nreg, pages, res[1], hold[0]);
	ASSERT_LE(0, pid);
	close(res[1]);
	close(hold[0]);
	ASSERT_EQ(0, ferry_read_full(res[0], u, sizeof(*u)));
	close(res[0]);
	*release = hold[1];
	return pid;
}

static void let_go(struct __test_metadata *_metadata, pid_t pid, int release)
{
	close(release);
	EXPECT_EQ(0, ferry_wait(pid));
}

TEST_F(user_limits, sessions_per_user_emfile)
{
	struct usage a, a2, b;
	int ra, ra2, rb;
	pid_t pa, pa2, pb;

	ASSERT_EQ(0, ferry_param_write("max_user_sessions", 4));
	pa = held(_metadata, UID_A, 5, 0, 1, &a, &ra);
	EXPECT_EQ(-EMFILE, a.r[0]);
	/* The cap is the user's, over its processes... */
	pa2 = held(_metadata, UID_A, 1, 0, 1, &a2, &ra2);
	EXPECT_EQ(-EMFILE, a2.r[0]);
	/* ...and not anyone else's. */
	pb = held(_metadata, UID_B, 4, 0, 1, &b, &rb);
	EXPECT_EQ(4, b.r[0]);
	let_go(_metadata, pa2, ra2);
	let_go(_metadata, pb, rb);
	let_go(_metadata, pa, ra);
	/* Freed sessions are given back. */
	pa = held(_metadata, UID_A, 4, 0, 1, &a, &ra);
	EXPECT_EQ(4, a.r[0]);
	let_go(_metadata, pa, ra);
}

TEST_F(user_limits, regions_per_user_enospc_across_sessions)
{
	struct usage a, b;
	int ra, rb;
	pid_t pa, pb;

	ASSERT_EQ(0, ferry_param_write("max_user_regions", 6));
	pa = held(_metadata, UID_A, 3, 7, 1, &a, &ra);
	ASSERT_EQ(3, a.r[0]);
	for (int i = 1; i <= 6; i++)
		EXPECT_EQ(0, a.r[i]);
	EXPECT_EQ(-ENOSPC, a.r[7]);
	pb = held(_metadata, UID_B, 1, 6, 1, &b, &rb);
	for (int i = 1; i <= 6; i++)
		EXPECT_EQ(0, b.r[i]);
	let_go(_metadata, pb, rb);
	let_go(_metadata, pa, ra);
}

TEST_F(user_limits, bytes_per_user_edquot_across_sessions)
{
	struct usage a;
	int ra;
	pid_t pa;

	ASSERT_EQ(0, ferry_param_write("max_user_bytes", 8 * self->ps));
	pa = held(_metadata, UID_A, 2, 3, 4, &a, &ra);
	EXPECT_EQ(0, a.r[1]);
	EXPECT_EQ(0, a.r[2]);
	EXPECT_EQ(-EDQUOT, a.r[3]);
	let_go(_metadata, pa, ra);
}

static long long files_in_use(void)
{
	long long used = -1, unused, max;
	FILE *f = fopen("/proc/sys/fs/file-nr", "re");

	if (!f)
		return -1;
	if (fscanf(f, "%lld %lld %lld", &used, &unused, &max) != 3)
		used = -1;
	fclose(f);
	return used;
}

/*
 * Regions of one memfd cost no file each until mapped (the attack made a
 * file per region); mapping one makes its file, once.  file-nr is a
 * per-CPU counter read without summing, and frees can lag: the bounds
 * leave it n/8 either way.
 */
TEST_F(user_limits, unmapped_regions_cost_no_files)
{
	const int n = 1024;
	static struct ferry_create c[1024];
	long long before, made, mapped;
	int fd, memfd;
	void *v;

	fd = ferry_open();
	ASSERT_LE(0, fd);
	memfd = ferry_memfd(1, F_SEAL_SHRINK, 0);
	ASSERT_LE(0, memfd);
	before = files_in_use();
	ASSERT_LE(0, before);
	for (int i = 0; i < n; i++)
		ASSERT_EQ(0, ferry_create(fd, memfd, 0, &c[i]));
	made = files_in_use();
	EXPECT_GT(before + n / 8, made) {
		TH_LOG("files in use: %lld before, %lld after %d regions",
		       before, made, n);
	}
	for (int i = 0; i < n / 2; i++) {
		ASSERT_EQ(0, ferry_map(fd, c[i].mmap_offset, self->ps,
				       PROT_READ, &v));
		ASSERT_EQ(0, ferry_map(fd, c[i].mmap_offset, self->ps,
				       PROT_READ, &v));	/* same file again */
	}
	mapped = files_in_use();
	EXPECT_LE(made + n / 2 - n / 8, mapped) {
		TH_LOG("files in use: %lld with %d regions, %lld with %d of them mapped",
		       made, n, mapped, n / 2);
	}
	EXPECT_GT(made + n / 2 + n / 8, mapped);
	close(memfd);
	close(fd);	/* the mappings keep their regions until exit */
}

/* Read a key of a cgroup's memory.stat-like file, or -errno. */
static long long cg_read(const char *dir, const char *file, const char *key)
{
	char path[256], name[64];
	long long v, found = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	if (!key) {
		if (fscanf(f, "%lld", &found) != 1)
			found = -EPROTO;
	} else {
		while (fscanf(f, "%63s %lld", name, &v) == 2)
			if (!strcmp(name, key))
				found = v;
	}
	fclose(f);
	return found;
}

static int cg_write(const char *dir, const char *file, const char *val)
{
	char path[256];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) != (ssize_t)strlen(val))
		ret = -errno;
	close(fd);
	return ret;
}

/*
 * Regions are charged to the memory cgroup of the task that makes them
 * (SLAB_ACCOUNT caches, accounted id-table nodes): 2048 regions of one
 * memfd made inside a fresh cgroup show up in its memory.current.
 */
TEST_F(user_limits, regions_are_charged_to_the_memory_cgroup)
{
	const char *root = "/tmp/ferry-cg", *cg = "/tmp/ferry-cg/ferry-test";
	const int n = 2048;
	int go[2], done[2], fd, memfd;
	long long before, after;
	char c = 'x', pidbuf[32];
	bool mounted = false;
	pid_t pid;

	mkdir(root, 0755);
	if (cg_read(root, "cgroup.controllers", NULL) == -ENOENT) {
		if (mount("none", root, "cgroup2", 0, NULL))
			SKIP(return, "no cgroup2 here (%s)", strerror(errno));
		mounted = true;
	}
	if (cg_write(root, "cgroup.subtree_control", "+memory")) {
		if (mounted)
			umount(root);
		SKIP(return, "no memory controller in this kernel");
	}
	ASSERT_TRUE(mkdir(cg, 0755) == 0 || errno == EEXIST);
	ASSERT_EQ(0, pipe2(go, O_CLOEXEC));
	ASSERT_EQ(0, pipe2(done, O_CLOEXEC));
	fflush(stdout);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_create cr;

		close(go[1]);
		close(done[0]);
		fd = ferry_open();
		memfd = ferry_memfd(1, F_SEAL_SHRINK, 0);
		if (fd < 0 || memfd < 0 || read(go[0], &c, 1) != 1)
			_exit(60);
		if (write(done[1], &c, 1) != 1)	/* in the cgroup now */
			_exit(61);
		if (read(go[0], &c, 1) != 1)
			_exit(62);
		for (int i = 0; i < n; i++)
			if (ferry_create(fd, memfd, 0, &cr))
				_exit(63);
		if (write(done[1], &c, 1) != 1 || read(go[0], &c, 1) < 0)
			_exit(64);
		_exit(0);
	}
	close(go[0]);
	close(done[1]);
	snprintf(pidbuf, sizeof(pidbuf), "%d", pid);
	ASSERT_EQ(0, cg_write(cg, "cgroup.procs", pidbuf));
	ASSERT_EQ(1, write(go[1], &c, 1));
	ASSERT_EQ(1, read(done[0], &c, 1));
	before = cg_read(cg, "memory.current", NULL);
	ASSERT_EQ(1, write(go[1], &c, 1));
	ASSERT_EQ(1, read(done[0], &c, 1));
	after = cg_read(cg, "memory.current", NULL);
	/* At least a quarter of what the region objects alone take. */
	EXPECT_LE(before + (long long)n * 64, after) {
		TH_LOG("memory.current %lld -> %lld for %d regions",
		       before, after, n);
	}
	close(go[1]);
	EXPECT_EQ(0, ferry_wait(pid));
	close(done[0]);
	rmdir(cg);
	if (mounted)
		umount(root);
}

TEST_HARNESS_MAIN
