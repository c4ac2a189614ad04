/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * ferry-demo's model: a small image classifier (a 3x32x32 image -> 64
 * hidden units, ReLU -> 10 logits), weights made from a fixed seed so that
 * helpers and children hold the same ones without sending them.  Children
 * compute the reference on the CPU; helpers run it on the CPU or, through
 * the CUDA driver API, on their GPU.
 */
#ifndef FERRY_DEMO_MODEL_H
#define FERRY_DEMO_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define DEMO_IN (3 * 32 * 32)
#define DEMO_HID 64
#define DEMO_OUT 10

struct demo_weights {
	float w1[DEMO_IN * DEMO_HID], b1[DEMO_HID];
	float w2[DEMO_HID * DEMO_OUT], b2[DEMO_OUT];
};

void demo_weights_make(struct demo_weights *w);
/* A batch of @n images, pixels in [0, 1), from (@stream, @seq). */
void demo_images(float *x, unsigned int n, uint64_t stream, uint64_t seq);
/* logits[n][DEMO_OUT] of @n images. */
void demo_forward_cpu(const struct demo_weights *w, const float *x, unsigned int n,
		      float *logits);
/* How many logits of @n images differ beyond rounding (GPU sums use FMA). */
unsigned int demo_mismatches(const float *want, const float *got, unsigned int n);

/* The GPU side, in one helper: weights uploaded once, buffers per stream. */
struct demo_gpu;
/* Whether the kernels were built in (nvcc was there at build time). */
int demo_gpu_built(void);
/* 0, or -ENODEV (and a reason on stderr) when the kernels are not built in. */
int demo_gpu_open(const struct demo_weights *w, unsigned int max_batch, unsigned int streams,
		  struct demo_gpu **out);
/*
 * Queue one batch on @stream (stream slot @slot < streams): @x (pinned host,
 * the child's region) -> device -> model -> @logits (host).  Nothing waits.
 */
int demo_gpu_queue(struct demo_gpu *g, unsigned int slot, void *stream, const float *x,
		   unsigned int n, float *logits);

#endif
