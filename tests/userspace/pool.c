// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * CPU pools (ferry_pool_* with FERRY_POOL_CPU): the offsets protocol the
 * GPU pool uses, end to end without a GPU.  Export/import across fork with
 * the fd passed by SCM_RIGHTS, tensors in both directions checked byte for
 * byte on random data, owner-only allocation, bounds of addresses, -ENOMEM
 * and reuse, and imports of fds that are not safe (unsealed, too short).
 * Also: without a CUDA driver, GPU entry points say -ENODEV and why.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"
#include "scm.h"

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(xs(&seed) >> 24);
}

static size_t first_diff(const uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(xs(&seed) >> 24))
			return i;
	return SIZE_MAX;
}

TEST(bad_arguments)
{
	struct ferry_pool *p;
	struct ferry_pool_ref ref = { .kind = FERRY_POOL_CPU, .device = -1, .size = 4096, .fd = -1 };
	uint64_t off;

	EXPECT_EQ(-EINVAL, ferry_pool_create(FERRY_POOL_CPU, -1, 0, &p));
	EXPECT_EQ(-EINVAL, ferry_pool_create((enum ferry_pool_kind)7, 0, 4096, &p));
	EXPECT_EQ(-EINVAL, ferry_pool_create(FERRY_POOL_CUDA, -1, 4096, &p));
	EXPECT_EQ(-EINVAL, ferry_pool_create(FERRY_POOL_CPU, -1, 4096, NULL));
	EXPECT_EQ(-EBADF, ferry_pool_import(&ref, &p));
	ref.size = 0;
	EXPECT_EQ(-EINVAL, ferry_pool_import(&ref, &p));
	ref.size = 4096;
	ref.legacy = 1;
	EXPECT_EQ(-EINVAL, ferry_pool_import(&ref, &p));
	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CPU, -1, 1 << 20, &p));
	EXPECT_EQ(FERRY_POOL_CPU, ferry_pool_kind(p));
	EXPECT_EQ(1 << 20, ferry_pool_size(p));
	/* CPU pools have no streams. */
	EXPECT_EQ(-EINVAL, ferry_pool_alloc(p, 64, (void *)1, &off));
	EXPECT_EQ(-EINVAL, ferry_pool_alloc(p, 0, NULL, &off));
	EXPECT_EQ(-ENOENT, ferry_pool_free(p, 0));
	EXPECT_EQ(0, ferry_pool_addr(p, 1 << 20, 1));
	EXPECT_EQ(0, ferry_pool_addr(p, 1, UINT64_MAX));
	EXPECT_NE(0, ferry_pool_addr(p, (1 << 20) - 1, 1));
	ferry_pool_close(p);
	ferry_pool_close(NULL);
}

TEST(unsafe_fds_are_not_imported)
{
	struct ferry_pool_ref ref = { .kind = FERRY_POOL_CPU, .device = -1, .size = 1 << 20 };
	struct ferry_pool *p, *q;
	int fd = memfd_create("not-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ftruncate(fd, 1 << 20));
	ref.fd = fd;
	/* It could shrink under the importer: refused. */
	EXPECT_EQ(-EINVAL, ferry_pool_import(&ref, &p));
	close(fd);
	/* A ref that claims more than the fd holds: refused. */
	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CPU, -1, 1 << 20, &p));
	ASSERT_EQ(0, ferry_pool_export(p, &ref));
	ref.size = 2 << 20;
	EXPECT_EQ(-EINVAL, ferry_pool_import(&ref, &q));
	ref.size = 1 << 20;
	ASSERT_EQ(0, ferry_pool_import(&ref, &q));
	/* Importers map; only the owner allocates. */
	EXPECT_EQ(-EPERM, ferry_pool_alloc(q, 64, NULL, &(uint64_t){ 0 }));
	EXPECT_EQ(-EPERM, ferry_pool_free(q, 0));
	close(ref.fd);
	ferry_pool_close(q);
	ferry_pool_close(p);
}

TEST(enomem_then_reuse)
{
	struct ferry_pool *p;
	uint64_t a, b, live = 1, deferred = 1;

	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CPU, -1, 1 << 20, &p));
	ASSERT_EQ(0, ferry_pool_alloc(p, 1 << 20, NULL, &a));
	EXPECT_EQ(-ENOMEM, ferry_pool_alloc(p, 64, NULL, &b));
	ASSERT_EQ(0, ferry_pool_usage(p, &live, &deferred));
	EXPECT_EQ(1 << 20, live);
	EXPECT_EQ(0, deferred);
	ASSERT_EQ(0, ferry_pool_free(p, a));
	ASSERT_EQ(0, ferry_pool_alloc(p, 4096, NULL, &b));
	EXPECT_EQ(a, b);
	EXPECT_EQ(0, ferry_pool_free(p, b));
	ferry_pool_close(p);
}

/* What the two sides say over the socket. */
struct msg {
	uint64_t off, len, seed;
	int32_t status;
};

/*
 * Both directions across fork, the pool fd passed by SCM_RIGHTS:
 *  owner -> child: owner allocates and fills, sends the offset; the child
 *    checks through its own import;
 *  child -> owner: the child asks for n bytes, gets an offset, fills the
 *    block; the owner checks and frees.
 */
TEST(offsets_both_directions_across_fork)
{
	enum { ROUNDS = 64 };
	struct ferry_pool *p;
	struct ferry_pool_ref ref;
	int sv[2], status;
	pid_t pid;

	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CPU, -1, 16 << 20, &p));
	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct ferry_pool_ref r;
		struct ferry_pool *q;
		struct msg m;
		int fd;

		close(sv[0]);
		if (recv_fd(sv[1], &fd, &r, sizeof(r)) || fd < 0)
			_exit(10);
		r.fd = fd;
		if (ferry_pool_import(&r, &q))
			_exit(11);
		close(fd);
		for (int i = 0; i < ROUNDS; i++) {
			uint8_t *ptr;

			/* owner -> child */
			if (recv_fd(sv[1], &fd, &m, sizeof(m)))
				_exit(12);
			ptr = (uint8_t *)(uintptr_t)ferry_pool_addr(q, m.off, m.len);
			m.status = !ptr ? -EFAULT :
				   first_diff(ptr, m.len, m.seed) == SIZE_MAX ? 0 : -EBADMSG;
			if (send_fd(sv[1], -1, &m, sizeof(m)))
				_exit(13);
			/* child -> owner: ask for room, fill it, say so */
			m = (struct msg){ .len = 1 + (uint64_t)i * 4099, .seed = 1000 + i };
			if (send_fd(sv[1], -1, &m, sizeof(m)) || recv_fd(sv[1], &fd, &m, sizeof(m)))
				_exit(14);
			if (m.status)
				_exit(15);
			ptr = (uint8_t *)(uintptr_t)ferry_pool_addr(q, m.off, m.len);
			if (!ptr)
				_exit(16);
			fill(ptr, m.len, m.seed);
			if (send_fd(sv[1], -1, &m, sizeof(m)))
				_exit(17);
		}
		ferry_pool_close(q);
		_exit(0);
	}
	close(sv[1]);
	ASSERT_EQ(0, ferry_pool_export(p, &ref));
	ASSERT_EQ(0, send_fd(sv[0], ref.fd, &ref, sizeof(ref)));
	close(ref.fd);
	for (int i = 0; i < ROUNDS; i++) {
		struct msg m = { .len = 1 + (uint64_t)i * 7919, .seed = 7 + i };
		uint8_t *ptr;
		int fd;

		ASSERT_EQ(0, ferry_pool_alloc(p, m.len, NULL, &m.off));
		ptr = (uint8_t *)(uintptr_t)ferry_pool_addr(p, m.off, m.len);
		ASSERT_NE(NULL, ptr);
		fill(ptr, m.len, m.seed);
		ASSERT_EQ(0, send_fd(sv[0], -1, &m, sizeof(m)));
		ASSERT_EQ(0, recv_fd(sv[0], &fd, &m, sizeof(m)));
		EXPECT_EQ(0, m.status) TH_LOG("round %d: child saw %d", i, m.status);
		ASSERT_EQ(0, ferry_pool_free(p, m.off));

		ASSERT_EQ(0, recv_fd(sv[0], &fd, &m, sizeof(m)));
		m.status = ferry_pool_alloc(p, m.len, NULL, &m.off);
		ASSERT_EQ(0, send_fd(sv[0], -1, &m, sizeof(m)));
		ASSERT_EQ(0, recv_fd(sv[0], &fd, &m, sizeof(m)));
		ptr = (uint8_t *)(uintptr_t)ferry_pool_addr(p, m.off, m.len);
		ASSERT_NE(NULL, ptr);
		EXPECT_EQ(SIZE_MAX, first_diff(ptr, m.len, m.seed)) TH_LOG("round %d", i);
		ASSERT_EQ(0, ferry_pool_free(p, m.off));
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
		TH_LOG("child status %#x", status);
	close(sv[0]);
	ferry_pool_close(p);
}

/* ferry_pool_send/recv: one message carries the reference and its fd;
 * anything else on the socket is refused. */
TEST(send_and_recv_over_a_socket)
{
	struct ferry_pool *p, *q;
	uint64_t off;
	uint8_t *a, *b;
	int sv[2];

	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv));
	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CPU, -1, 1 << 20, &p));
	ASSERT_EQ(0, ferry_pool_send(sv[0], p));
	ASSERT_EQ(0, ferry_pool_recv(sv[1], &q));
	EXPECT_EQ(ferry_pool_size(p), ferry_pool_size(q));
	ASSERT_EQ(0, ferry_pool_alloc(p, 4096, NULL, &off));
	a = (uint8_t *)(uintptr_t)ferry_pool_addr(p, off, 4096);
	b = (uint8_t *)(uintptr_t)ferry_pool_addr(q, off, 4096);
	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	fill(a, 4096, 7);
	EXPECT_EQ(SIZE_MAX, first_diff(b, 4096, 7));	/* the same bytes, two mappings */
	ferry_pool_close(q);

	ASSERT_EQ(3, send(sv[0], "bad", 3, 0));
	EXPECT_EQ(-EPROTO, ferry_pool_recv(sv[1], &q));
	EXPECT_EQ(-EINVAL, ferry_pool_recv(sv[1], NULL));
	close(sv[0]);
	EXPECT_EQ(-ECONNRESET, ferry_pool_recv(sv[1], &q));
	close(sv[1]);
	ferry_pool_free(p, off);
	ferry_pool_close(p);
}

TEST(gpu_entry_points_say_enodev_without_a_driver)
{
	struct ferry_pool *p;

	/* A library that is not there, then one that is not a CUDA driver. */
	setenv("FERRY_CUDA_LIB", "/nonexistent/libcuda.so.1", 1);
	EXPECT_EQ(-ENODEV, ferry_gpu_count());
	EXPECT_NE(NULL, strstr(ferry_gpu_status(), "cannot load"));
	EXPECT_EQ(-ENODEV, ferry_pool_create(FERRY_POOL_CUDA, 0, 1 << 20, &p));
}

/* build/tests/fixtures/libnotcuda.so (make build-tests), found from here. */
TEST(gpu_entry_points_name_a_library_without_cuda)
{
	char path[512];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 40);
	char *slash;

	ASSERT_LT(0, n);
	path[n] = 0;
	slash = strrchr(path, '/');
	ASSERT_NE(NULL, slash);
	strcpy(slash + 1, "../fixtures/libnotcuda.so");
	if (access(path, R_OK))
		SKIP(return, "no ../fixtures/libnotcuda.so beside this test (make build-tests)");
	setenv("FERRY_CUDA_LIB", path, 1);
	EXPECT_EQ(-ENODEV, ferry_gpu_count());
	EXPECT_NE(NULL, strstr(ferry_gpu_status(), "has no cuInit"))
		TH_LOG("status: %s", ferry_gpu_status());
}

TEST_HARNESS_MAIN
