// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench e2e: a request as an inference worker makes it.  A child
 * (no CUDA) sends a tensor in its region to a GPU helper, which copies it
 * host -> device and back device -> host into the child's output buffer
 * on its stream and replies when the stream is done (deferred).  Against
 * the physical floor measured in the same run: the same two copies in one
 * process from cuMemAllocHost memory.  Then the aggregate of 32 children
 * x 2 helpers on one GPU (GB/s in + out).  Each line has CPU-us per
 * request of children, dispatch and helpers.  The last line is key=value.
 *
 * The brokers run in processes forked before this one touches CUDA.
 */
#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cpu_clock.h"
#include "bench.h"
#include "cuda_api.h"
#include "ferry.h"

#define NSIZES 4
static const size_t sizes[NSIZES] = { 4u << 10, 1u << 20, 16u << 20, 256u << 20 };
#define AGG_CHILDREN 32
#define AGG_HELPERS 2
#define AGG_SIZE (1u << 20)
#define MAX_STREAMS 4

struct e2e_shared {
	_Atomic int status;
	double seconds;			/* aggregate run length */
	unsigned int rounds[NSIZES];
	double p50_us[NSIZES], p99_us[NSIZES];
	double copy_us[NSIZES];		/* the copies alone, inside the helper */
	struct bench_cpu cpu[NSIZES];
	uint64_t child_ns[AGG_CHILDREN];	/* each child's CPU in its phase */
	uint64_t reqs[AGG_CHILDREN];
	uint64_t bytes[AGG_CHILDREN];
	_Atomic int started, stop;
	_Atomic int timing, sampled;	/* a phase's timed part starts: CPU read */
	double agg_gbps;
	struct bench_cpu agg_cpu;
	uint64_t t[];			/* latency samples of one size */
};

/* Per helper: one device buffer per stream, as large as the largest tensor. */
static CUdeviceptr scratch[MAX_STREAMS];
static void *scratch_stream[MAX_STREAMS];

static int helper_init(struct ferry_helper *h, void *arg)
{
	struct ferry_cuda *cu;
	size_t max = *(size_t *)arg;

	if (ferry_helper_gpu(h) < 0 || ferry_cuda_get(&cu))
		return -ENODEV;
	for (int k = 0; k < MAX_STREAMS; k++) {
		scratch_stream[k] = ferry_helper_stream(h);
		if (cu->cuMemAlloc(&scratch[k], max))
			return -ENOMEM;
	}
	return 0;
}

/*
 * Op 1: (offset, len) -> device -> (arg[0], len), on one stream, deferred.
 * Op 2: the same copies, waited for in the handler and timed there
 * (arg[1]: ns): what they cost from the region without the transport.
 */
static int handler(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		   void *arg)
{
	void *in = ferry_helper_data(h, req, req->offset, req->len);
	void *out = ferry_helper_data(h, req, req->arg[0], req->len);
	void *st = ferry_helper_stream(h);
	struct ferry_cuda *cu;
	int k;

	(void)arg;
	if (!in || !out || ferry_cuda_get(&cu))
		return -EFAULT;
	for (k = 0; k < MAX_STREAMS && scratch_stream[k] != st; k++)
		;
	if (k == MAX_STREAMS)
		return -ENOSPC;
	uint64_t t0 = bench_now_ns();

	if (cu->cuMemcpyHtoDAsync(scratch[k], in, req->len, (CUstream)st) ||
	    cu->cuMemcpyDtoHAsync(out, scratch[k], req->len, (CUstream)st))
		return -EIO;
	if (req->op == 2) {
		if (cu->cuStreamSynchronize((CUstream)st))
			return -EIO;
		rep->arg[1] = bench_now_ns() - t0;
		return 0;
	}
	return ferry_helper_defer(h, rep, st) ? -EIO : FERRY_DEFERRED;
}

static unsigned int rounds_for(size_t len)
{
	return len >= (256u << 20) ? 20 : len >= (16u << 20) ? 100 : 2000;
}

static int call_op(struct ferry_child *c, uint32_t op, uint8_t *in, uint8_t *out, size_t len,
		   uint64_t *copy_ns)
{
	struct ferry_desc d = { .op = op, .offset = ferry_offset(c, in), .len = len,
				.arg = { ferry_offset(c, out) } }, rep;

	if (ferry_call(c, &d, &rep) || rep.status)
		return -1;
	if (copy_ns)
		*copy_ns = rep.arg[1];
	return 0;
}

static int call(struct ferry_child *c, uint8_t *in, uint8_t *out, size_t len)
{
	return call_op(c, 1, in, out, len, NULL);
}

/* Latency child: every size, timed; what the timed calls brought back is checked. */
static int lat_child(struct ferry_child *c, void *arg)
{
	struct e2e_shared *sh = arg;
	uint8_t *in = ferry_malloc(c, sizes[NSIZES - 1]), *out = ferry_malloc(c, sizes[NSIZES - 1]);

	if (!in || !out)
		return 1;
	for (int s = 0; s < NSIZES; s++) {
		size_t len = sizes[s];
		unsigned int n = rounds_for(len);
		uint64_t cpu0;

		for (size_t i = 0; i < len; i++)
			in[i] = (uint8_t)(i * 31 + s);
		for (unsigned int r = 0; r < 5; r++)	/* warm up */
			if (call(c, in, out, len))
				return 2;
		memset(out, 0, len);	/* the timed calls bring it back */
		/* The parent reads the others' CPU clocks as timing starts. */
		atomic_store(&sh->timing, s + 1);
		while (atomic_load(&sh->sampled) != s + 1)
			usleep(50);
		cpu0 = bench_self_cpu_ns();
		for (unsigned int r = 0; r < n; r++) {
			uint64_t t0 = bench_now_ns();

			if (call(c, in, out, len))
				return 3;
			sh->t[r] = bench_now_ns() - t0;
		}
		sh->child_ns[0] = bench_self_cpu_ns() - cpu0;
		if (memcmp(in, out, len))
			return 4;	/* the bytes came back */
		sh->p50_us[s] = bench_pct_ns(sh->t, n, 50) / 1e3;
		sh->p99_us[s] = bench_pct_ns(sh->t, n, 99) / 1e3;
		sh->rounds[s] = n;
		/* Where the rest goes: the copies timed inside the helper. */
		atomic_store(&sh->started, s + 1);
		while (atomic_load(&sh->stop) != s + 1)
			usleep(100);
		for (unsigned int r = 0; r < n; r++)
			if (call_op(c, 2, in, out, len, &sh->t[r]))
				return 5;
		sh->copy_us[s] = bench_pct_ns(sh->t, n, 50) / 1e3;
	}
	return 0;
}

/* Aggregate child: 1 MiB requests until told to stop. */
static int agg_child(struct ferry_child *c, void *arg)
{
	struct e2e_shared *sh = arg;
	unsigned int me = ferry_child_index(c);
	uint8_t *in = ferry_malloc(c, AGG_SIZE), *out = ferry_malloc(c, AGG_SIZE);
	uint64_t cpu0;

	if (!in || !out)
		return 1;
	memset(in, (int)me, AGG_SIZE);
	atomic_fetch_add(&sh->started, 1);
	while (atomic_load(&sh->started) < AGG_CHILDREN)
		usleep(100);
	cpu0 = bench_self_cpu_ns();
	while (!atomic_load(&sh->stop)) {
		if (call(c, in, out, AGG_SIZE))
			return 2;
		sh->reqs[me]++;
	}
	sh->child_ns[me] = bench_self_cpu_ns() - cpu0;
	return memcmp(in, out, AGG_SIZE) ? 3 : 0;
}

static uint64_t helpers_cpu(struct ferry_broker *b, unsigned int n)
{
	uint64_t ns = 0;

	for (unsigned int h = 0; h < n; h++)
		ns += tools_pid_cpu_ns(ferry_broker_helper_pid(b, h));
	return ns;
}

static int run_brokers(struct e2e_shared *sh)
{
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;
	size_t max = sizes[NSIZES - 1], agg = AGG_SIZE;
	uint64_t disp0, help0, reqs = 0, t0, t1;

	ferry_broker_opts_init(&o);
	o.children = 1;
	o.helpers = 1;
	o.region_size = 2 * max + (16u << 20);
	o.handler = handler;
	o.helper_init = helper_init;
	o.helper_arg = &max;
	o.child_fn = lat_child;
	o.child_arg = sh;
	o.streams = MAX_STREAMS;
	if (ferry_broker_start(&o, &b))
		return 10;
	for (int s = 0; s < NSIZES; s++) {
		while (atomic_load(&sh->timing) != s + 1 && ferry_broker_wait(b, 0) == -ETIMEDOUT)
			usleep(50);
		ferry_broker_stats(b, &st);
		disp0 = st.dispatch_cpu_ns;
		help0 = helpers_cpu(b, 1);
		atomic_store(&sh->sampled, s + 1);
		while (atomic_load(&sh->started) != s + 1 && ferry_broker_wait(b, 0) == -ETIMEDOUT)
			usleep(100);
		if (atomic_load(&sh->started) != s + 1)
			return 11;
		ferry_broker_stats(b, &st);
		sh->cpu[s] = (struct bench_cpu){
			.child_us = sh->child_ns[0] / 1e3 / sh->rounds[s],
			.dispatch_us = (st.dispatch_cpu_ns - disp0) / 1e3 / sh->rounds[s],
			.helper_us = (helpers_cpu(b, 1) - help0) / 1e3 / sh->rounds[s],
		};
		atomic_store(&sh->stop, s + 1);
	}
	if (ferry_broker_wait(b, 300LL * 1000000000))
		return 12;
	ferry_broker_stop(b);

	memset(sh->child_ns, 0, sizeof(sh->child_ns));
	atomic_store(&sh->started, 0);
	atomic_store(&sh->stop, 0);
	o.children = AGG_CHILDREN;
	o.helpers = AGG_HELPERS;
	o.region_size = 2 * AGG_SIZE + (4u << 20);
	o.helper_arg = &agg;
	o.child_fn = agg_child;
	if (ferry_broker_start(&o, &b))
		return 13;
	while (atomic_load(&sh->started) < AGG_CHILDREN && ferry_broker_wait(b, 0) == -ETIMEDOUT)
		usleep(100);
	ferry_broker_stats(b, &st);
	disp0 = st.dispatch_cpu_ns;
	help0 = helpers_cpu(b, AGG_HELPERS);
	memset(sh->reqs, 0, sizeof(sh->reqs));
	t0 = bench_now_ns();
	usleep((useconds_t)(sh->seconds * 1e6));
	for (int i = 0; i < AGG_CHILDREN; i++)
		reqs += sh->reqs[i];
	t1 = bench_now_ns();
	ferry_broker_stats(b, &st);
	sh->agg_cpu.dispatch_us = (st.dispatch_cpu_ns - disp0) / 1e3;
	sh->agg_cpu.helper_us = (helpers_cpu(b, AGG_HELPERS) - help0) / 1e3;
	atomic_store(&sh->stop, 1);
	if (ferry_broker_wait(b, 300LL * 1000000000))
		return 14;
	ferry_broker_stop(b);
	if (!reqs)
		return 15;
	sh->agg_gbps = 2.0 * reqs * AGG_SIZE / (double)(t1 - t0);
	uint64_t cns = 0, all = 0;

	for (int i = 0; i < AGG_CHILDREN; i++) {
		cns += sh->child_ns[i];
		all += sh->reqs[i];
	}
	sh->agg_cpu.child_us = cns / 1e3 / all;
	sh->agg_cpu.dispatch_us /= reqs;
	sh->agg_cpu.helper_us /= reqs;
	return 0;
}

/* The floor: H2D + D2H from cuMemAllocHost memory in this process, p50 (us). */
static int floor_us(double out[NSIZES])
{
	size_t max = sizes[NSIZES - 1];
	struct ferry_cuda *cu;
	void *hin, *hout;
	CUdeviceptr dev;
	CUstream st;
	uint64_t *t = malloc(2000 * sizeof(*t));

	if (!t || ferry_cuda_get(&cu) || ferry_cuda_use_device(cu, 0) ||
	    cu->cuMemAllocHost(&hin, max) || cu->cuMemAllocHost(&hout, max) ||
	    cu->cuMemAlloc(&dev, max) || cu->cuStreamCreate(&st, CU_STREAM_NON_BLOCKING))
		return -ENODEV;
	memset(hin, 1, max);
	for (int s = 0; s < NSIZES; s++) {
		unsigned int n = rounds_for(sizes[s]);

		for (unsigned int r = 0; r < n + 5; r++) {
			uint64_t t0 = bench_now_ns();

			if (cu->cuMemcpyHtoDAsync(dev, hin, sizes[s], st) ||
			    cu->cuMemcpyDtoHAsync(hout, dev, sizes[s], st) ||
			    cu->cuStreamSynchronize(st))
				return -EIO;
			if (r >= 5)
				t[r - 5] = bench_now_ns() - t0;
		}
		out[s] = bench_pct_ns(t, n, 50) / 1e3;
	}
	free(t);
	return 0;
}

int ferry_bench_e2e(int argc, char **argv)
{
	size_t bytes = sizeof(struct e2e_shared) + 2000 * sizeof(uint64_t);
	struct e2e_shared *sh;
	double fl[NSIZES];
	int status = 0, rc, opt;
	double seconds = 3;
	pid_t pid;

	while ((opt = getopt(argc, argv, "t:")) != -1) {
		if (opt != 't' || (seconds = strtod(optarg, NULL)) <= 0 || seconds > 600) {
			fprintf(stderr, "usage: ferry-bench e2e [-t SECONDS of the aggregate run]\n"
				"child -> GPU helper -> child with H2D + D2H of the tensor (4 KiB to\n"
				"256 MiB) against the same copies from cuMemAllocHost memory in one\n"
				"process; then 32 children x 2 helpers on GPU 0.  Needs a GPU.\n");
			return 2;
		}
	}
	if (ferry_gpu_count_forked() <= 0) {
		printf("ferry-bench e2e: no GPU here (%s); nothing measured\n", ferry_gpu_status());
		return 1;
	}
	sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;
	memset(sh, 0, bytes);
	sh->seconds = seconds;
	fflush(NULL);
	pid = fork();
	if (pid == 0)
		_exit(run_brokers(sh));
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
	if (rc) {
		fprintf(stderr, "ferry-bench e2e: the broker runs failed (%d)\n", rc);
		return 1;
	}
	if (floor_us(fl)) {
		fprintf(stderr, "ferry-bench e2e: the floor could not be measured\n");
		return 1;
	}
	printf("# ferry-bench e2e: child -> GPU helper (H2D + D2H on its stream) -> child, "
	       "1 child x 1 helper, p50\n");
	printf("%10s %12s %12s %12s %8s %13s %28s\n", "tensor", "ferry p50 us", "ferry p99 us",
	       "floor p50 us", "ratio", "in-helper us", "CPU-us/req child/disp/helper");
	for (int s = 0; s < NSIZES; s++)
		printf("%9zuK %12.1f %12.1f %12.1f %7.2fx %13.1f %10.1f %6.1f %6.1f\n",
		       sizes[s] >> 10, sh->p50_us[s], sh->p99_us[s], fl[s], sh->p50_us[s] / fl[s],
		       sh->copy_us[s], sh->cpu[s].child_us, sh->cpu[s].dispatch_us,
		       sh->cpu[s].helper_us);
	printf("(in-helper: the same copies waited for inside the handler, from the child's "
	       "region, no transport)\n");
	printf("aggregate %d children x %d helpers, %u KiB each way: %.2f GB/s in + out "
	       "(CPU-us/req child %.1f dispatch %.1f helper %.1f)\n", AGG_CHILDREN, AGG_HELPERS,
	       AGG_SIZE >> 10, sh->agg_gbps, sh->agg_cpu.child_us, sh->agg_cpu.dispatch_us,
	       sh->agg_cpu.helper_us);
	printf("bench=e2e");
	for (int s = 0; s < NSIZES; s++)
		printf(" p50_%zuk_us=%.1f floor_%zuk_us=%.1f ratio_%zuk=%.3f copy_%zuk_us=%.1f "
		       "cpu_helper_%zuk_us=%.1f", sizes[s] >> 10, sh->p50_us[s], sizes[s] >> 10,
		       fl[s], sizes[s] >> 10, sh->p50_us[s] / fl[s], sizes[s] >> 10,
		       sh->copy_us[s], sizes[s] >> 10, sh->cpu[s].helper_us);
	printf(" agg_gbps=%.2f agg_cpu_child_us=%.1f agg_cpu_dispatch_us=%.1f agg_cpu_helper_us=%.1f\n",
	       sh->agg_gbps, sh->agg_cpu.child_us, sh->agg_cpu.dispatch_us, sh->agg_cpu.helper_us);
	munmap(sh, bytes);
	return 0;
}
