// SPDX-License-Identifier: LGPL-2.1-or-later
/* ferry-demo's model: CPU reference and the GPU path (see demo_model.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_api.h"
#include "demo_model.h"

/* The PTX of demo_kernels.cu, made at build time (empty without nvcc). */
extern const char ferry_demo_ptx[];

static uint64_t next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Uniform in [lo, hi). */
static float uniform(uint64_t *s, float lo, float hi)
{
	return lo + (hi - lo) * (float)(next(s) >> 40) / (float)(1u << 24);
}

void demo_weights_make(struct demo_weights *w)
{
	uint64_t s = 0x5eed0fe11f00dULL;
	/* Scaled by fan-in so activations stay near 1. */
	float a1 = 1.0f / sqrtf((float)DEMO_IN), a2 = 1.0f / sqrtf((float)DEMO_HID);

	for (size_t i = 0; i < DEMO_IN * DEMO_HID; i++)
		w->w1[i] = uniform(&s, -a1, a1) * 2;
	for (size_t i = 0; i < DEMO_HID; i++)
		w->b1[i] = uniform(&s, -0.1f, 0.1f);
	for (size_t i = 0; i < DEMO_HID * DEMO_OUT; i++)
		w->w2[i] = uniform(&s, -a2, a2) * 2;
	for (size_t i = 0; i < DEMO_OUT; i++)
		w->b2[i] = uniform(&s, -0.1f, 0.1f);
}

void demo_images(float *x, unsigned int n, uint64_t stream, uint64_t seq)
{
	uint64_t s = (stream + 1) * 0x9e3779b97f4a7c15ULL ^ (seq + 1) * 0xbf58476d1ce4e5b9ULL;

	if (!s)
		s = 1;
	for (size_t i = 0; i < (size_t)n * DEMO_IN; i++)
		x[i] = uniform(&s, 0.0f, 1.0f);
}

/*
 * y[n][out] = x[n][in] W + b, in the kernel's summation order: each y[o]
 * starts from b[o] and adds k ascending.  The loop over o is innermost so
 * that it runs over consecutive weights (the compiler vectorises it); the
 * order of the additions into each y[o], and so every rounding, is the
 * same as one output at a time.
 */
static void dense(const float *x, const float *w, const float *b, float *y, unsigned int n,
		  unsigned int in, unsigned int out, int relu)
{
	float acc[DEMO_HID];

	for (unsigned int r = 0; r < n; r++) {
		const float *xr = x + (size_t)r * in;

		for (unsigned int o = 0; o < out; o++)
			acc[o] = b[o];
		for (unsigned int k = 0; k < in; k++) {
			const float *wk = w + (size_t)k * out;
			float xk = xr[k];

			for (unsigned int o = 0; o < out; o++)
				acc[o] += xk * wk[o];
		}
		for (unsigned int o = 0; o < out; o++)
			y[(size_t)r * out + o] = relu && acc[o] < 0.f ? 0.f : acc[o];
	}
}

void demo_forward_cpu(const struct demo_weights *w, const float *x, unsigned int n,
		      float *logits)
{
	float hid[DEMO_HID * 64];

	/* In slices of 64 images: the hidden layer stays on the stack. */
	for (unsigned int r = 0; r < n; r += 64) {
		unsigned int m = n - r < 64 ? n - r : 64;

		dense(x + (size_t)r * DEMO_IN, w->w1, w->b1, hid, m, DEMO_IN, DEMO_HID, 1);
		dense(hid, w->w2, w->b2, logits + (size_t)r * DEMO_OUT, m, DEMO_HID, DEMO_OUT, 0);
	}
}

unsigned int demo_mismatches(const float *want, const float *got, unsigned int n)
{
	unsigned int bad = 0;

	for (size_t i = 0; i < (size_t)n * DEMO_OUT; i++)
		if (!(fabsf(want[i] - got[i]) <= 1e-3f * (1.0f + fabsf(want[i]))))
			bad++;
	return bad;
}

int demo_gpu_built(void)
{
	return ferry_demo_ptx[0] != 0;
}

int demo_gpu_use(unsigned int dev)
{
	struct ferry_cuda *cu;
	int err = ferry_cuda_get(&cu);

	if (!err)
		err = ferry_cuda_use_device(cu, (int)dev);
	if (err)
		fprintf(stderr, "ferry-demo: GPU %u: %s\n", dev, ferry_cuda_why());
	return err;
}

struct demo_gpu {
	struct ferry_cuda *cu;
	CUmodule mod;
	CUfunction dense;
	CUdeviceptr w1, b1, w2, b2;
	unsigned int max_batch, nslots;
	struct { CUdeviceptr x, hid, out; } *slot;
	CUstream own;		/* demo_gpu_run()'s stream, made on first use */
	uint64_t copied;	/* bytes queued host<->device so far */
};

#define CU_TRY(call) do { if ((r = (call)) != CUDA_SUCCESS) goto fail; } while (0)

static CUdeviceptr upload(struct ferry_cuda *cu, const void *src, size_t n, CUresult *r)
{
	CUdeviceptr d = 0;

	*r = cu->cuMemAlloc(&d, n);
	if (*r == CUDA_SUCCESS)
		*r = cu->cuMemcpyHtoD(d, src, n);
	return d;
}

int demo_gpu_open(const struct demo_weights *w, unsigned int max_batch, unsigned int streams,
		  struct demo_gpu **out)
{
	struct demo_gpu *g;
	const char *why = "?";
	CUresult r = CUDA_SUCCESS;
	int err;

	if (!ferry_demo_ptx[0]) {
		fprintf(stderr, "ferry-demo: built without nvcc: no GPU kernels\n");
		return -ENODEV;
	}
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	err = ferry_cuda_get(&g->cu);
	if (err) {
		free(g);
		return err;
	}
	g->max_batch = max_batch;
	g->nslots = streams;
	g->slot = calloc(streams, sizeof(*g->slot));
	if (!g->slot) {
		free(g);
		return -ENOMEM;
	}
	CU_TRY(g->cu->cuModuleLoadData(&g->mod, ferry_demo_ptx));
	CU_TRY(g->cu->cuModuleGetFunction(&g->dense, g->mod, "ferry_demo_dense"));
	g->w1 = upload(g->cu, w->w1, sizeof(w->w1), &r);
	if (r == CUDA_SUCCESS)
		g->b1 = upload(g->cu, w->b1, sizeof(w->b1), &r);
	if (r == CUDA_SUCCESS)
		g->w2 = upload(g->cu, w->w2, sizeof(w->w2), &r);
	if (r == CUDA_SUCCESS)
		g->b2 = upload(g->cu, w->b2, sizeof(w->b2), &r);
	if (r != CUDA_SUCCESS)
		goto fail;
	for (unsigned int s = 0; s < streams; s++) {
		CU_TRY(g->cu->cuMemAlloc(&g->slot[s].x, (size_t)max_batch * DEMO_IN * 4));
		CU_TRY(g->cu->cuMemAlloc(&g->slot[s].hid, (size_t)max_batch * DEMO_HID * 4));
		CU_TRY(g->cu->cuMemAlloc(&g->slot[s].out, (size_t)max_batch * DEMO_OUT * 4));
	}
	*out = g;
	return 0;
fail:
	g->cu->cuGetErrorString(r, &why);
	fprintf(stderr, "ferry-demo: GPU model: %s\n", why);
	/* The helper exits on this error; its process takes the rest along. */
	free(g->slot);
	free(g);
	return ferry_cuda_errno(r) ? ferry_cuda_errno(r) : -EIO;
}

static CUresult launch(struct demo_gpu *g, CUstream st, CUdeviceptr x, CUdeviceptr w,
		       CUdeviceptr b, CUdeviceptr y, unsigned int n, int in, int out, int relu)
{
	void *args[] = { &x, &w, &b, &y, &in, &out, &relu };
	unsigned int threads = 64;

	return g->cu->cuLaunchKernel(g->dense, ((unsigned int)out + threads - 1) / threads, n, 1,
				     threads, 1, 1, 0, st, args, NULL);
}

/* Runs on a CUDA driver thread once the stream reaches it: no CUDA calls. */
static void CUDA_CB stamp_done(void *arg)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	*(volatile uint64_t *)arg = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int demo_gpu_queue(struct demo_gpu *g, unsigned int slot, void *stream, const float *x,
		   unsigned int n, float *logits, uint64_t *done_ns)
{
	CUstream st = (CUstream)stream;
	CUresult r;

	if (slot >= g->nslots || n == 0 || n > g->max_batch)
		return -EINVAL;
	r = g->cu->cuMemcpyHtoDAsync(g->slot[slot].x, x, (size_t)n * DEMO_IN * 4, st);
	if (r == CUDA_SUCCESS)
		r = launch(g, st, g->slot[slot].x, g->w1, g->b1, g->slot[slot].hid, n, DEMO_IN,
			   DEMO_HID, 1);
	if (r == CUDA_SUCCESS)
		r = launch(g, st, g->slot[slot].hid, g->w2, g->b2, g->slot[slot].out, n, DEMO_HID,
			   DEMO_OUT, 0);
	if (r == CUDA_SUCCESS)
		r = g->cu->cuMemcpyDtoHAsync(logits, g->slot[slot].out, (size_t)n * DEMO_OUT * 4,
					     st);
	if (r == CUDA_SUCCESS && done_ns)
		r = g->cu->cuLaunchHostFunc(st, stamp_done, done_ns);
	if (r == CUDA_SUCCESS)
		g->copied += (uint64_t)n * (DEMO_IN + DEMO_OUT) * 4;
	return ferry_cuda_errno(r);
}

int demo_gpu_run(struct demo_gpu *g, const float *x, unsigned int n, float *logits)
{
	CUresult r = CUDA_SUCCESS;
	int err;

	if (!g->own)
		r = g->cu->cuStreamCreate(&g->own, CU_STREAM_NON_BLOCKING);
	if (r != CUDA_SUCCESS)
		return ferry_cuda_errno(r);
	err = demo_gpu_queue(g, 0, g->own, x, n, logits, NULL);
	return err ? err : ferry_cuda_errno(g->cu->cuStreamSynchronize(g->own));
}

uint64_t demo_gpu_copied(const struct demo_gpu *g)
{
	return g->copied;
}
