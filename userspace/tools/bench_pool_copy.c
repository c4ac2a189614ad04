// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench gpu, part (d): ferry_child_pool_put/_get as a child makes
 * them, through a real broker: the child has no CUDA context, the helper
 * copies between the child's pinned region and a block of the GPU pool
 * on its stream and answers when the copy is done.  The whole round trip
 * is timed from the child, so the number includes the request, the copy
 * and the deferred reply.
 *
 * It runs in a process of its own, forked before the bench touches CUDA
 * (the broker forks helpers, and CUDA state does not survive a fork).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "ferry.h"

#define COPY_BYTES (256u << 20)
#define ROUNDS 9

struct copy_result {
	_Atomic int status;	/* 0: measured; else the step that failed */
	double put_gbps, get_gbps;
};

static int no_ops(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		  void *arg)
{
	(void)h, (void)req, (void)rep, (void)arg;
	return -EOPNOTSUPP;
}

/* One copy, through the helper, timed. */
static int64_t one_copy(struct ferry_child *c, enum ferry_pool_copy dir, void *buf,
			uint64_t off)
{
	struct ferry_desc d, rep;
	uint64_t t0 = bench_now_ns();

	if (ferry_child_pool_copy_desc(c, dir, buf, COPY_BYTES, off, &d) ||
	    ferry_call(c, &d, &rep) || rep.status)
		return -1;
	return (int64_t)(bench_now_ns() - t0);
}

static int measure(struct ferry_child *c, void *arg)
{
	struct copy_result *res = arg;
	uint8_t *buf = ferry_malloc(c, COPY_BYTES);
	uint64_t off, t[2][ROUNDS];

	if (!buf)
		return 1;
	memset(buf, 0x3c, COPY_BYTES);
	if (ferry_child_pool_alloc(c, COPY_BYTES, &off))
		return 2;
	for (int dir = 0; dir < 2; dir++) {
		for (int i = 0; i < 1 + ROUNDS; i++) {	/* the first one warms up */
			int64_t ns = one_copy(c, dir ? FERRY_POOL_GET : FERRY_POOL_PUT, buf, off);

			if (ns < 0)
				return 3;
			if (i)
				t[dir][i - 1] = (uint64_t)ns;
		}
	}
	res->put_gbps = COPY_BYTES / bench_median_ns(t[0], ROUNDS);
	res->get_gbps = COPY_BYTES / bench_median_ns(t[1], ROUNDS);
	ferry_child_pool_free(c, off);
	return 0;
}

static int run_broker(struct copy_result *res)
{
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	int err;

	ferry_broker_opts_init(&o);
	o.children = 1;
	o.helpers = 1;
	o.region_size = COPY_BYTES + (8u << 20);	/* the buffer and the heap's own */
	o.window = 2;
	o.handler = no_ops;
	o.child_fn = measure;
	o.child_arg = res;
	o.pool_size = 2ull * COPY_BYTES;
	err = ferry_broker_start(&o, &b);
	if (err)
		return 10;
	err = ferry_broker_wait(b, 300LL * 1000000000);
	ferry_broker_stop(b);
	return err ? 11 : 0;
}

int bench_pool_copies(double *put_gbps, double *get_gbps)
{
	struct copy_result *res = mmap(NULL, sizeof(*res), PROT_READ | PROT_WRITE,
				       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int status = 0, rc;
	pid_t pid;

	if (res == MAP_FAILED)
		return -errno;
	memset(res, 0, sizeof(*res));
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		munmap(res, sizeof(*res));
		return -errno;
	}
	if (pid == 0)
		_exit(run_broker(res));
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
	*put_gbps = res->put_gbps;
	*get_gbps = res->get_gbps;
	munmap(res, sizeof(*res));
	if (rc)
		fprintf(stderr, "ferry-bench gpu: pool copies through a broker failed (%d)\n", rc);
	return rc ? -EIO : 0;
}
