// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-demo's ferry path: a ferry broker with N children and M helpers.
 * Each child makes its images in its own region and sends a descriptor;
 * a helper runs the model on the tensor where it lies (on the CPU, or on
 * its GPU straight from the pinned region) and writes the logits into the
 * child's region.  No tensor byte is copied by this code on the way: the
 * only copies are the GPU's DMA (counted apart, as on the classic path).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_clock.h"
#include "demo_paths.h"
#include "ferry.h"

#define OP_CLASSIFY 1

/* After the logits in a child's output block: the server's clock stamps. */
struct stamps {
	uint64_t t_start, t_end;
};

struct ferry_ctx {
	const struct demo_cfg *c;
	struct demo_run *r;
};

/* In a GPU helper: the model, its streams in the order met, and what it
 * had copied host<->device when it last said so. */
static struct demo_gpu *gpu;
static void *gpu_streams[64];
static uint64_t gpu_copied_told;

static size_t out_block(const struct demo_cfg *c)
{
	return demo_out_bytes(c) + sizeof(struct stamps);
}

static int helper_init(struct ferry_helper *h, void *arg)
{
	const struct ferry_ctx *x = arg;

	if (!x->c->gpu)
		return 0;
	if (ferry_helper_gpu(h) < 0)
		return -ENODEV;
	return demo_gpu_open(x->c->w, x->c->batch, 64, &gpu);
}

/* Queue the model on one of the helper's streams; the reply goes once the
 * stream has copied the logits back (and stamped the time). */
static int classify_gpu(struct ferry_helper *h, const struct ferry_ctx *x, const float *in,
			unsigned int n, float *y, struct stamps *ts, struct ferry_desc *rep)
{
	void *st = ferry_helper_stream(h);
	unsigned int s;
	int err;

	/* Device buffers per stream: work on one stream runs in order. */
	for (s = 0; s < 64 && gpu_streams[s] && gpu_streams[s] != st; s++)
		;
	if (s == 64)
		return -ENOSPC;
	gpu_streams[s] = st;
	ts->t_start = demo_now_ns();
	ts->t_end = 0;
	err = demo_gpu_queue(gpu, s, st, in, n, y, &ts->t_end);
	if (!err)
		err = ferry_helper_defer(h, rep, st);
	atomic_fetch_add(&x->r->dma, demo_gpu_copied(gpu) - gpu_copied_told);
	gpu_copied_told = demo_gpu_copied(gpu);
	return err ? err : FERRY_DEFERRED;
}

static int classify(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		    void *arg)
{
	const struct ferry_ctx *x = arg;
	unsigned int n = (unsigned int)req->arg[1];
	const float *in;
	float *y;
	struct stamps *ts;
	bool spoil;

	if (req->op != OP_CLASSIFY || n == 0 || n > x->c->batch)
		return -EINVAL;
	/* The descriptor names the tensors; ferry checks they are the child's. */
	in = ferry_helper_data(h, req, req->offset, (size_t)n * DEMO_IN * sizeof(float));
	y = ferry_helper_data(h, req, req->arg[0], out_block(x->c));
	if (!in || !y)
		return -EFAULT;
	ts = (struct stamps *)(y + (size_t)n * DEMO_OUT);
	spoil = demo_spoil_next(x->c);
	if (gpu && !spoil)
		return classify_gpu(h, x, in, n, y, ts, rep);
	/* On the CPU, in place: the region is the helper's to read.  A result
	 * to spoil (--inject-fault) is made here on a GPU helper too. */
	demo_serve_cpu(x->c, x->r, in, n, y, spoil, &ts->t_start, &ts->t_end);
	return 0;
}

struct slot {
	float *in, *out;
	uint64_t seq, t0;
};

/* Fill the window: make each request's images in place and send it. */
static int submit_more(struct ferry_child *fc, struct demo_child *k, const struct demo_cfg *c,
		       struct slot *sl, unsigned int *free_slot, uint64_t *seq)
{
	unsigned int win = ferry_window(fc);

	while (!demo_child_stopping(k) && ferry_outstanding(fc) < win) {
		struct slot *s = &sl[*free_slot];
		struct ferry_desc d;

		s->seq = (*seq)++;
		demo_child_images(k, s->in, s->seq);
		d = (struct ferry_desc){
			.op = OP_CLASSIFY, .tag = *free_slot, .offset = ferry_offset(fc, s->in),
			.len = demo_in_bytes(c), .arg = { ferry_offset(fc, s->out), c->batch },
		};
		s->t0 = demo_now_ns();
		if (ferry_submit(fc, &d))
			return -EIO;
		*free_slot = (*free_slot + 1) % win;
	}
	return 0;
}

static int child(struct ferry_child *fc, void *arg)
{
	const struct ferry_ctx *x = arg;
	const struct demo_cfg *c = x->c;
	unsigned int win = ferry_window(fc), free_slot = 0;
	struct slot *sl = calloc(win, sizeof(*sl));
	struct demo_child *k = demo_child_open(c, x->r, ferry_child_index(fc));
	uint64_t seq = 0;
	struct ferry_desc rep;

	if (!sl || !k)
		return 2;
	for (unsigned int i = 0; i < win; i++) {
		sl[i].in = ferry_malloc(fc, demo_in_bytes(c));
		sl[i].out = ferry_malloc(fc, out_block(c));
		if (!sl[i].in || !sl[i].out)
			return 3;
	}
	for (;;) {
		const struct stamps *ts;
		struct slot *s;

		if (submit_more(fc, k, c, sl, &free_slot, &seq))
			return 4;
		if (!ferry_outstanding(fc))
			break;
		if (ferry_complete(fc, &rep, -1) || rep.tag >= win)
			return 5;
		s = &sl[rep.tag];
		ts = (const struct stamps *)(s->out + (size_t)c->batch * DEMO_OUT);
		demo_child_reply(k, s->seq, s->out, rep.status, s->t0, ts->t_start, ts->t_end);
		/* Slots complete in order per helper, not overall: reuse this one. */
		free_slot = (unsigned int)rep.tag;
	}
	free(sl);
	return demo_child_close(k);
}

/* Each helper's CPU so far (ns); helpers are alive until the broker stops. */
static uint64_t helpers_cpu_ns(struct ferry_broker *b, unsigned int helpers)
{
	uint64_t ns = 0;

	for (unsigned int i = 0; i < helpers; i++) {
		pid_t pid = ferry_broker_helper_pid(b, i);

		ns += pid > 0 ? tools_pid_cpu_ns(pid) : 0;
	}
	return ns;
}

int demo_ferry_run(const struct demo_cfg *c, struct demo_run *r, struct demo_path_info *info)
{
	static struct ferry_ctx x;
	struct ferry_broker_opts o;
	struct ferry_broker_stats st;
	struct ferry_broker *b;
	uint64_t disp0, help0;
	int err;

	x = (struct ferry_ctx){ .c = c, .r = r };
	ferry_broker_opts_init(&o);
	o.children = c->children;
	o.helpers = c->helpers;
	o.window = c->window;
	o.region_size = c->window * (demo_in_bytes(c) + out_block(c)) + (1u << 20);
	o.backend = (enum ferry_backend)c->backend;
	o.handler = classify;
	o.helper_init = helper_init;
	o.helper_arg = &x;
	o.child_fn = child;
	o.child_arg = &x;
	o.gpu = c->gpu ? FERRY_GPU_AUTO : FERRY_GPU_NONE;
	o.stats_path = c->stats_path;
	err = ferry_broker_start(&o, &b);
	if (err) {
		fprintf(stderr, "ferry-demo: cannot start the broker: %s\n", strerror(-err));
		return err;
	}
	snprintf(info->backend, sizeof(info->backend), "%s",
		 ferry_backend_name(ferry_broker_backend(b)));
	if (!c->json) {
		char how[128];

		snprintf(how, sizeof(how), "%s regions, descriptors on shared rings: tensors "
			 "stay in the child's region", info->backend);
		demo_say_start("ferry", how);
	}
	/* CPU from the go on: start-up (CUDA, forks) is not transport. */
	ferry_broker_stats(b, &st);
	disp0 = st.dispatch_cpu_ns;
	help0 = helpers_cpu_ns(b, c->helpers);
	info->seconds = demo_timed_part(c, r, "ferry", 0);
	/* Counted now, before the children check their results: a dispatch
	 * thread that polls would count the checking time too. */
	ferry_broker_stats(b, &st);
	r->broker_cpu_ns = st.dispatch_cpu_ns - disp0;
	r->server_cpu_ns = helpers_cpu_ns(b, c->helpers) - help0;
	info->failed = ferry_broker_wait(b, 600LL * 1000000000);
	ferry_broker_stats(b, &st);
	info->bad_desc = st.bad_desc + st.bad_reply;
	ferry_broker_stop(b);
	return info->seconds < 0 ? -ETIMEDOUT : 0;
}
