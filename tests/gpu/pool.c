// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * GPU pools on a real GPU (skipped with the reason where there is none):
 * export once / import once across fork with random data checked byte for
 * byte in both directions (VMM fd by SCM_RIGHTS, and the legacy cuIpc
 * fallback), and the stream-safe allocator's deferred free made
 * observable: stream B is held by a slow host function, then writes a
 * block freed meanwhile on stream A; a new allocation must not get that
 * block (and runs out of room instead) until B's work completed, and B's
 * bytes must be intact afterwards.
 *
 * CUDA does not survive fork(): each case forks its importer before the
 * parent first touches CUDA.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cuda_api.h"
#include "ferry.h"
#include "kselftest_harness.h"
#include "../userspace/scm.h"

#define MIB (1024ull * 1024)

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		p[i] = (uint8_t)(seed >> 24);
	}
}

/* Skip (from the case's own process) when this machine has no GPU. */
#define NEED_GPU()								\
	do {									\
		if (ferry_gpu_count() < 1)					\
			SKIP(return, "no usable GPU: %s", ferry_gpu_status());	\
	} while (0)

struct msg {
	uint64_t off, len, seed;
	int32_t status;
};

/* The importer: maps the pool, checks what the owner wrote, writes back. */
static int importer(int sock, int rounds)
{
	struct ferry_pool_ref ref;
	struct ferry_pool *q;
	struct ferry_cuda *cu;
	int fd;

	if (recv_fd(sock, &fd, &ref, sizeof(ref)))
		return 10;
	ref.fd = fd;	/* -1 for legacy handles */
	if (ferry_pool_import(&ref, &q))
		return 11;
	if (fd >= 0)
		close(fd);
	if (ferry_cuda_get(&cu))
		return 12;
	for (int i = 0; i < rounds; i++) {
		struct msg m;
		uint8_t *want, *got;

		if (recv_fd(sock, &fd, &m, sizeof(m)))
			return 13;
		want = malloc(m.len);
		got = malloc(m.len);
		if (!want || !got)
			return 14;
		fill(want, m.len, m.seed);
		m.status = cu->cuMemcpyDtoH(got, (CUdeviceptr)ferry_pool_addr(q, m.off, m.len),
					    m.len) != CUDA_SUCCESS ? -EIO :
			   memcmp(want, got, m.len) ? -EBADMSG : 0;
		/* Now the other way: overwrite it with our own bytes. */
		fill(want, m.len, m.seed ^ 0xfeed);
		if (!m.status && cu->cuMemcpyHtoD((CUdeviceptr)ferry_pool_addr(q, m.off, m.len),
						  want, m.len) != CUDA_SUCCESS)
			m.status = -EIO;
		free(want);
		free(got);
		if (send_fd(sock, -1, &m, sizeof(m)))
			return 15;
	}
	ferry_pool_close(q);
	return 0;
}

static void both_directions(struct __test_metadata *_metadata, bool legacy)
{
	enum { ROUNDS = 16 };
	struct ferry_pool *p;
	struct ferry_pool_ref ref;
	struct ferry_cuda *cu;
	int sv[2], status;
	pid_t pid;

	if (legacy)
		setenv("FERRY_POOL_LEGACY_IPC", "1", 1);
	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv));
	pid = fork();	/* before this process touches CUDA */
	ASSERT_LE(0, pid);
	if (pid == 0) {
		close(sv[0]);
		_exit(importer(sv[1], ROUNDS));
	}
	close(sv[1]);
	if (ferry_gpu_count() < 1) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		SKIP(return, "no usable GPU: %s", ferry_gpu_status());
	}
	ASSERT_EQ(0, ferry_cuda_get(&cu));
	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CUDA, 0, 64 * MIB, &p));
	ASSERT_EQ(0, ferry_pool_export(p, &ref));
	EXPECT_EQ(legacy, ref.legacy);
	ASSERT_EQ(0, send_fd(sv[0], ref.fd, &ref, sizeof(ref)));
	if (ref.fd >= 0)
		close(ref.fd);
	for (int i = 0; i < ROUNDS; i++) {
		struct msg m = { .len = 1 + (uint64_t)i * 65537 * 3, .seed = 99 + i };
		uint8_t *buf = malloc(m.len), *want = malloc(m.len);
		int fd;

		ASSERT_NE(NULL, buf);
		ASSERT_NE(NULL, want);
		ASSERT_EQ(0, ferry_pool_alloc(p, m.len, NULL, &m.off));
		fill(buf, m.len, m.seed);
		ASSERT_EQ(CUDA_SUCCESS, cu->cuMemcpyHtoD((CUdeviceptr)ferry_pool_addr(p, m.off, m.len),
							 buf, m.len));
		ASSERT_EQ(0, send_fd(sv[0], -1, &m, sizeof(m)));
		ASSERT_EQ(0, recv_fd(sv[0], &fd, &m, sizeof(m)));
		EXPECT_EQ(0, m.status) TH_LOG("round %d: importer saw %d", i, m.status);
		fill(want, m.len, m.seed ^ 0xfeed);
		ASSERT_EQ(CUDA_SUCCESS, cu->cuMemcpyDtoH(buf, (CUdeviceptr)ferry_pool_addr(p, m.off, m.len),
							 m.len));
		EXPECT_EQ(0, memcmp(buf, want, m.len)) TH_LOG("round %d: importer's bytes", i);
		ASSERT_EQ(0, ferry_pool_free(p, m.off));
		free(buf);
		free(want);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) TH_LOG("importer %#x", status);
	close(sv[0]);
	ferry_pool_close(p);
}

TEST(vmm_pool_export_import_both_directions)
{
	both_directions(_metadata, false);
}

TEST(legacy_ipc_pool_both_directions)
{
	both_directions(_metadata, true);
}

static void CUDA_CB hold_stream(void *arg)
{
	usleep((useconds_t)(uintptr_t)arg);
}

TEST(deferred_free_not_reused_before_the_foreign_stream_finished)
{
	struct ferry_cuda *cu;
	struct ferry_pool *p;
	CUstream a, b;
	uint64_t x, y, z, live, deferred;
	size_t half;
	uint8_t *buf;

	NEED_GPU();
	ASSERT_EQ(0, ferry_cuda_get(&cu));
	ASSERT_EQ(0, ferry_pool_create(FERRY_POOL_CUDA, 0, 2 * MIB, &p));
	half = ferry_pool_size(p) / 2;
	ASSERT_EQ(CUDA_SUCCESS, cu->cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
	ASSERT_EQ(CUDA_SUCCESS, cu->cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));

	ASSERT_EQ(0, ferry_pool_alloc(p, half, a, &x));
	/* B: busy for 300 ms, then writes 0xb1 over x. */
	ASSERT_EQ(CUDA_SUCCESS, cu->cuLaunchHostFunc(b, hold_stream, (void *)(uintptr_t)300000));
	ASSERT_EQ(CUDA_SUCCESS, cu->cuMemsetD8Async((CUdeviceptr)ferry_pool_addr(p, x, half),
						    0xb1, half, b));
	ASSERT_EQ(0, ferry_pool_record_stream(p, x, b));
	ASSERT_EQ(0, ferry_pool_free(p, x));	/* deferred: B still holds it */
	ASSERT_EQ(0, ferry_pool_usage(p, &live, &deferred));
	EXPECT_EQ(half, deferred);

	/* A allocates again: never x, and the other half is all there is. */
	ASSERT_EQ(0, ferry_pool_alloc(p, half, a, &y));
	EXPECT_NE(x, y);
	ASSERT_EQ(CUDA_SUCCESS, cu->cuMemsetD8Async((CUdeviceptr)ferry_pool_addr(p, y, half),
						    0xa2, half, a));
	EXPECT_EQ(-ENOMEM, ferry_pool_alloc(p, half, a, &z));

	/* Once B is done, the same request reclaims x and succeeds. */
	ASSERT_EQ(CUDA_SUCCESS, cu->cuStreamSynchronize(b));
	ASSERT_EQ(0, ferry_pool_alloc(p, half, a, &z));
	EXPECT_EQ(x, z);
	ASSERT_EQ(CUDA_SUCCESS, cu->cuStreamSynchronize(a));
	buf = malloc(half);
	ASSERT_NE(NULL, buf);
	/* B's bytes survived: nothing of A's was written over them. */
	ASSERT_EQ(CUDA_SUCCESS, cu->cuMemcpyDtoH(buf, (CUdeviceptr)ferry_pool_addr(p, x, half), half));
	for (size_t i = 0; i < half; i++)
		if (buf[i] != 0xb1) {
			EXPECT_EQ(0xb1, buf[i]) TH_LOG("byte %zu of the deferred block", i);
			break;
		}
	free(buf);
	ferry_pool_free(p, y);
	ferry_pool_free(p, z);
	cu->cuStreamDestroy(a);
	cu->cuStreamDestroy(b);
	ferry_pool_close(p);
}

TEST_HARNESS_MAIN
