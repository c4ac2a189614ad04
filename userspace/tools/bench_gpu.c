// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench gpu: moving tensors between two processes on one GPU, each
 * way next to its baseline measured in the same run.
 *
 *   (a) legacy  per-tensor CUDA IPC: the owner gets a handle for the
 *               tensor, sends it, the peer opens it, uses it, closes it
 *               and answers (what Triton's python backend did before its
 *               pool);
 *   (b) ferry   the owner allocates the tensor in a pool the peer imported
 *               once and sends (offset, len); the peer adds its base.
 *   Both carry their 64-byte descriptor over the same ferry channel, so
 *   the difference is what naming a tensor costs.  "control" = the whole
 *   round trip with no data touched; "use" = the peer also copies the
 *   tensor on the GPU (bandwidth by size).
 *   (c) host -> device and back from a child region (a memfd mapping as
 *   the broker makes them): pageable, after the helper's registration
 *   (pinned region), and from cuMemAllocHost memory as the reference.
 *
 * The peer is forked before this process touches CUDA (CUDA state does not
 * survive fork).  Without a GPU: one line saying so, exit status 1.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "bench_plot.h"
#include "chan.h"
#include "cuda_api.h"
#include "ferry.h"

enum { OP_QUIT = 1, OP_LEGACY, OP_POOL };
#define FLAG_USE 1u		/* arg[0]: copy the tensor on the GPU too */

#define MIN_SIZE (4u << 10)
#define MAX_SIZE (256u << 20)
#define POOL_SIZE (1ull << 30)
#define H2D_SIZE (256u << 20)

/* Shared with the peer (MAP_SHARED before fork). */
struct shared {
	union {
		CUipcMemHandle handle;	/* legacy: the tensor's handle for this request */
		char line[FERRY_CHAN_LINE];	/* the channel starts on a line */
	};
	char chan[];		/* the descriptor channel */
};

#define CU(call) do {							\
	CUresult r_ = (call);						\
	if (r_ != CUDA_SUCCESS) {					\
		const char *s_ = "?";					\
		cu->cuGetErrorString(r_, &s_);				\
		fprintf(stderr, "ferry-bench gpu: %s: %s\n", #call, s_);	\
		return -EIO;						\
	}								\
} while (0)

/* The peer: imports the pool once, then answers until told to quit. */
static int peer(struct shared *sh, size_t chan_bytes, int sock)
{
	struct ferry_pool *pool;
	struct ferry_cuda *cu;
	struct ferry_chan ch;
	struct ferry_desc d;
	CUdeviceptr scratch;
	CUstream st;
	int err = ferry_pool_recv(sock, &pool);

	if (err == -ECONNRESET)
		return 0;	/* the owner found no GPU */
	if (err) {
		fprintf(stderr, "ferry-bench gpu: peer: pool import: %s\n", strerror(-err));
		return 1;
	}
	if (ferry_cuda_get(&cu) || ferry_cuda_use_device(cu, 0))
		return 1;
	CU(cu->cuStreamCreate(&st, CU_STREAM_NON_BLOCKING));
	CU(cu->cuMemAlloc(&scratch, MAX_SIZE));
	if (ferry_chan_attach(&ch, sh->chan, chan_bytes, false, FERRY_BELL_FUTEX, NULL))
		return 1;
	ch.spin_ns = 1000000000;	/* both sides spin: wakes are not what we measure */
	for (;;) {
		CUdeviceptr p = 0;

		if (ferry_chan_recv_wait(&ch, &d, -1, NULL))
			return 1;
		if (d.op == OP_QUIT)
			break;
		d.status = 0;
		if (d.op == OP_LEGACY) {
			CU(cu->cuIpcOpenMemHandle(&p, sh->handle,
						  CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
		} else {
			p = ferry_pool_addr(pool, d.offset, d.len);
			if (!p)
				d.status = -EINVAL;
		}
		if (p && (d.arg[0] & FLAG_USE)) {
			CU(cu->cuMemcpyDtoDAsync(scratch, p, d.len, st));
			CU(cu->cuStreamSynchronize(st));
		}
		if (d.op == OP_LEGACY)
			CU(cu->cuIpcCloseMemHandle(p));
		if (ferry_chan_send(&ch, &d))
			return 1;
	}
	ferry_pool_close(pool);
	return 0;
}

struct side {
	struct ferry_cuda *cu;
	struct ferry_chan ch;
	struct shared *sh;
	struct ferry_pool *pool;
	CUstream st;
};

/* One tensor of @len bytes to the peer and back, the @op way; ns or <0. */
static int64_t one(struct side *s, uint32_t op, CUdeviceptr legacy_buf, size_t len, bool use)
{
	struct ferry_cuda *cu = s->cu;
	struct ferry_desc d = { .op = op, .len = len, .arg = { use ? FLAG_USE : 0 } };
	uint64_t t0 = bench_now_ns(), off = 0;
	int err;

	if (op == OP_LEGACY) {
		CU(cu->cuIpcGetMemHandle(&s->sh->handle, legacy_buf));
	} else {
		err = ferry_pool_alloc(s->pool, len, s->st, &off);
		if (err)
			return err;
		d.offset = off;
	}
	if (ferry_chan_send(&s->ch, &d) || ferry_chan_recv_wait(&s->ch, &d, -1, NULL) ||
	    d.status)
		return d.status ? d.status : -EPROTO;
	if (op == OP_POOL) {
		err = ferry_pool_free(s->pool, off);
		if (err)
			return err;
	}
	return (int64_t)(bench_now_ns() - t0);
}

/* Median ns of @n tensors of @len the @op way (after 3 to warm up). */
static double timed(struct side *s, uint32_t op, size_t len, bool use, unsigned int n)
{
	struct ferry_cuda *cu = s->cu;
	CUdeviceptr buf = 0;
	uint64_t *t = calloc(n, sizeof(*t));
	double med = -1;

	if (!t)
		return -1;
	if (op == OP_LEGACY && cu->cuMemAlloc(&buf, len) != CUDA_SUCCESS)
		goto out;
	for (unsigned int i = 0; i < 3; i++)
		if (one(s, op, buf, len, use) < 0)
			goto out;
	for (unsigned int i = 0; i < n; i++) {
		int64_t ns = one(s, op, buf, len, use);

		if (ns < 0)
			goto out;
		t[i] = (uint64_t)ns;
	}
	med = bench_median_ns(t, n);
out:
	if (buf)
		cu->cuMemFree(buf);
	free(t);
	return med;
}

enum { SRC_PAGEABLE, SRC_PINNED_REGION, SRC_ALLOC_HOST };

/* Median GB/s of host->device (@h2d) or back over @len bytes from @host. */
static double copy_gbps(struct side *s, void *host, CUdeviceptr dev, size_t len, bool h2d)
{
	struct ferry_cuda *cu = s->cu;
	uint64_t t[9];

	for (unsigned int i = 0; i < 1 + 9; i++) {
		uint64_t t0 = bench_now_ns();
		CUresult r = h2d ? cu->cuMemcpyHtoDAsync(dev, host, len, s->st) :
				   cu->cuMemcpyDtoHAsync(host, dev, len, s->st);

		if (r != CUDA_SUCCESS || cu->cuStreamSynchronize(s->st) != CUDA_SUCCESS)
			return -1;
		if (i)
			t[i - 1] = bench_now_ns() - t0;
	}
	return len / bench_median_ns(t, 9);	/* bytes per ns = GB/s */
}

/*
 * (c): a child region as the broker makes it (memfd backend: a sealed
 * memfd mapped shared), copied from as it is, then after registration the
 * way a helper pins it; cuMemAllocHost memory as the reference.
 */
static int host_copies(struct side *s, double gbps[3][2])
{
	struct ferry_cuda *cu = s->cu;
	struct ferry_rctx *rc;
	struct ferry_region *r;
	CUdeviceptr dev;
	void *ref, *base;
	int err = ferry_rctx_open(FERRY_BACKEND_MEMFD, &rc);

	if (err)
		return err;
	err = ferry_region_create(rc, H2D_SIZE, -1, &r);
	if (err) {
		ferry_rctx_close(rc);
		return err;
	}
	base = ferry_region_base(r);
	memset(base, 0x5a, H2D_SIZE);
	CU(cu->cuMemAlloc(&dev, H2D_SIZE));
	CU(cu->cuMemAllocHost(&ref, H2D_SIZE));
	memset(ref, 0x5a, H2D_SIZE);
	for (int dir = 0; dir < 2; dir++)
		gbps[SRC_PAGEABLE][dir] = copy_gbps(s, base, dev, H2D_SIZE, dir == 0);
	CU(cu->cuMemHostRegister(base, H2D_SIZE, CU_MEMHOSTREGISTER_PORTABLE));
	for (int dir = 0; dir < 2; dir++) {
		gbps[SRC_PINNED_REGION][dir] = copy_gbps(s, base, dev, H2D_SIZE, dir == 0);
		gbps[SRC_ALLOC_HOST][dir] = copy_gbps(s, ref, dev, H2D_SIZE, dir == 0);
	}
	CU(cu->cuMemHostUnregister(base));
	cu->cuMemFreeHost(ref);
	cu->cuMemFree(dev);
	ferry_region_close(r);
	ferry_rctx_close(rc);
	return 0;
}

#define NSIZES 9	/* MIN_SIZE .. MAX_SIZE by 4x */

/* Per-tensor time by size, both ways, control only and with a device copy. */
static int plot_sizes(const char *path, double xs[NSIZES], double us[4][NSIZES], size_t n)
{
	static const char *names[4] = {
		"legacy per-tensor CUDA IPC, control", "ferry pool offset, control",
		"legacy, with a device copy of the tensor", "ferry, with a device copy of the tensor",
	};
	struct plot_series sr[4];
	const struct plot p = {
		.title = "ferry-bench gpu: per-tensor time by tensor size (two processes, one GPU)",
		.xlabel = "tensor size (KiB, log)", .ylabel = "per tensor (us, log)",
		.logx = true, .logy = true,
	};

	for (int k = 0; k < 4; k++)
		sr[k] = (struct plot_series){ .name = names[k], .x = xs, .y = us[k], .n = n };
	return bench_plot(path, &p, sr, 4);
}

static int owner(struct side *s, int sock, unsigned int n, const char *plot)
{
	struct ferry_cuda *cu;
	double worst_pool = 0, best_legacy = 1e18, gbps[3][2], xs[NSIZES], us[4][NSIZES];
	double put = 0, get = 0;
	size_t nsz = 0;
	int err = ferry_gpu_count_forked() > 0 ? bench_pool_copies(&put, &get) : 0;

	if (err)
		return 1;
	err = ferry_cuda_get(&cu);
	if (err) {
		printf("ferry-bench gpu: no GPU here (%s); nothing measured\n", ferry_cuda_why());
		return 1;
	}
	s->cu = cu;
	if (ferry_cuda_use_device(cu, 0))
		return 1;
	CU(cu->cuStreamCreate(&s->st, CU_STREAM_NON_BLOCKING));
	err = ferry_pool_create(FERRY_POOL_CUDA, 0, POOL_SIZE, &s->pool);
	if (!err)
		err = ferry_pool_send(sock, s->pool);
	if (err) {
		fprintf(stderr, "ferry-bench gpu: pool: %s\n", strerror(-err));
		return 1;
	}
	printf("# ferry-bench gpu: GPU 0, pool %llu MiB, %u tensors per control measurement\n",
	       POOL_SIZE >> 20, n);
	printf("%10s %14s %14s %8s %14s %14s\n", "tensor", "legacy ctl us", "ferry ctl us",
	       "ratio", "legacy GB/s", "ferry GB/s");
	for (size_t len = MIN_SIZE; len <= MAX_SIZE; len *= 4) {
		unsigned int nuse = len >= (64u << 20) ? 20 : len >= (1u << 20) ? 100 : n / 4;
		double lc = timed(s, OP_LEGACY, len, false, n);
		double pc = timed(s, OP_POOL, len, false, n);
		double lu = timed(s, OP_LEGACY, len, true, nuse);
		double pu = timed(s, OP_POOL, len, true, nuse);

		if (lc < 0 || pc < 0 || lu < 0 || pu < 0)
			return 1;
		printf("%9zuK %14.2f %14.2f %7.1fx %14.2f %14.2f\n", len >> 10, lc / 1e3,
		       pc / 1e3, lc / pc, len / lu, len / pu);
		if (nsz < NSIZES) {
			xs[nsz] = len / 1024.0;
			us[0][nsz] = lc / 1e3;
			us[1][nsz] = pc / 1e3;
			us[2][nsz] = lu / 1e3;
			us[3][nsz] = pu / 1e3;
			nsz++;
		}
		if (pc > worst_pool)
			worst_pool = pc;
		if (lc < best_legacy)
			best_legacy = lc;
	}
	err = host_copies(s, gbps);
	if (err) {
		fprintf(stderr, "ferry-bench gpu: host copies: %s\n", strerror(-err));
		return 1;
	}
	printf("%u MiB from a child region       H2D GB/s   D2H GB/s\n", H2D_SIZE >> 20);
	printf("  pageable (baseline)           %8.2f   %8.2f\n", gbps[0][0], gbps[0][1]);
	printf("  ferry pinned region           %8.2f   %8.2f\n", gbps[1][0], gbps[1][1]);
	printf("  cuMemAllocHost (reference)    %8.2f   %8.2f\n", gbps[2][0], gbps[2][1]);
	printf("  ferry put/get by the helper   %8.2f   %8.2f  (%.0f%% / %.0f%% of the reference)\n",
	       put, get, 100 * put / gbps[2][0], 100 * get / gbps[2][1]);
	/* Conservative: ferry's worst size against legacy's best. */
	printf("bench=gpu overhead_us=%.2f legacy_overhead_us=%.2f speedup=%.1f h2d_gbps=%.2f "
	       "pinned_ref_gbps=%.2f h2d_ratio=%.3f pageable_gbps=%.2f d2h_gbps=%.2f "
	       "d2h_ref_gbps=%.2f put_gbps=%.2f get_gbps=%.2f put_ratio=%.3f get_ratio=%.3f\n",
	       worst_pool / 1e3, best_legacy / 1e3,
	       best_legacy / worst_pool, gbps[1][0], gbps[2][0], gbps[1][0] / gbps[2][0],
	       gbps[0][0], gbps[1][1], gbps[2][1], put, get, put / gbps[2][0], get / gbps[2][1]);
	return plot && plot_sizes(plot, xs, us, nsz) ? 1 : 0;
}

static void gpu_usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-bench gpu [options]\n"
		"  -n N        tensors per size for the control measurement (default 400)\n"
		"  --plot F    draw per-tensor time by size into F (.png or .svg, gnuplot)\n"
		"  --help      this text\n"
		"Between two processes on GPU 0, for tensors of 4 KiB to 256 MiB: per-tensor\n"
		"CUDA IPC (get handle, send, open, use, close: the baseline) against offsets\n"
		"into a pool imported once; then host<->device copies of 256 MiB from a child\n"
		"region: pageable, pinned the way helpers pin it, and cuMemAllocHost.  The last\n"
		"line is key=value pairs.  Without a GPU: one line saying so, exit status 1.\n");
}

int ferry_bench_gpu(int argc, char **argv)
{
	size_t chan_bytes = ferry_chan_bytes(64), bytes = sizeof(struct shared) + chan_bytes;
	unsigned int n = 400;
	const char *plot = NULL;
	static const struct option longs[] = {
		{ "plot", required_argument, NULL, 'P' }, { "help", no_argument, NULL, 'H' }, { 0 }
	};
	struct side s = { 0 };
	struct ferry_desc quit = { .op = OP_QUIT };
	int sv[2], opt, rc, status;
	pid_t pid;

	while ((opt = getopt_long(argc, argv, "n:", longs, NULL)) != -1) {
		if (opt == 'P') {
			plot = optarg;
			continue;
		}
		if (opt == 'H') {
			gpu_usage(stdout);
			return 0;
		}
		if (opt != 'n') {
			gpu_usage(stderr);
			return 2;
		}
		n = (unsigned int)strtoul(optarg, NULL, 0);
	}
	if (plot && bench_plot_check(plot))
		return 2;
	if (n < 20) {
		fprintf(stderr, "ferry-bench gpu: -n must be at least 20\n");
		return 2;
	}
	s.sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s.sh == MAP_FAILED || ferry_chan_format(s.sh->chan, chan_bytes, 64) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
		perror("ferry-bench gpu: setup");
		return 1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		perror("ferry-bench gpu: fork");
		return 1;
	}
	if (pid == 0) {
		close(sv[0]);
		_exit(peer(s.sh, chan_bytes, sv[1]));
	}
	close(sv[1]);
	if (ferry_chan_attach(&s.ch, s.sh->chan, chan_bytes, true, FERRY_BELL_FUTEX, NULL))
		return 1;
	s.ch.spin_ns = 1000000000;
	rc = owner(&s, sv[0], n, plot);
	close(sv[0]);	/* a peer still waiting for the pool sees the end */
	if (s.pool)
		ferry_chan_send(&s.ch, &quit);
	waitpid(pid, &status, 0);
	if (s.pool)
		ferry_pool_close(s.pool);
	if (rc == 0 && (!WIFEXITED(status) || WEXITSTATUS(status)))
		rc = 1;
	return rc;
}
