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
/* In a process of its own (not a ferry helper): load CUDA and make GPU
 * @dev's primary context current; 0 or -errno (and a reason on stderr). */
int demo_gpu_use(unsigned int dev);
/* 0, or -ENODEV (and a reason on stderr) when the kernels are not built in. */
int demo_gpu_open(const struct demo_weights *w, unsigned int max_batch, unsigned int streams,
		  struct demo_gpu **out);
/*
 * Queue one batch on @stream (stream slot @slot < streams): @x (pinned host,
 * the child's region) -> device -> model -> @logits (host).  Nothing waits.
 * @done_ns (or NULL): CLOCK_MONOTONIC is written there once the stream has
 * copied the logits back, so the model's time is measured where it ran.
 */
int demo_gpu_queue(struct demo_gpu *g, unsigned int slot, void *stream, const float *x,
		   unsigned int n, float *logits, uint64_t *done_ns);
/* One batch on a stream of its own (slot 0), waiting for it: 0 or -errno. */
int demo_gpu_run(struct demo_gpu *g, const float *x, unsigned int n, float *logits);
/* Bytes this helper queued host->device and device->host so far. */
uint64_t demo_gpu_copied(const struct demo_gpu *g);

#endif
