// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-demo's measurements (see demo_run.h): the shared run record, the
 * child's timing and deferred checking of replies, the server's timed
 * model, and the summary of one path.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "demo_run.h"

/* Samples kept across all children: exact percentiles up to this many. */
#define KEEP_TOTAL (1u << 21)
#define KEEP_MIN 1024u
/* Logits a child keeps to check after the clock stops; past this it
 * checks each new reply at once (off the timing, not off the pace). */
#define LOG_BYTES_MAX (64u << 20)

uint64_t demo_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t demo_thread_cpu_ns(void)
{
	return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

uint64_t demo_process_cpu_ns(void)
{
	return clock_ns(CLOCK_PROCESS_CPUTIME_ID);
}

static size_t run_bytes(unsigned int children, unsigned int keep)
{
	return sizeof(struct demo_run) + children * sizeof(struct demo_child_lat) +
	       (size_t)children * keep * sizeof(struct demo_sample);
}

struct demo_run *demo_run_map(unsigned int children)
{
	unsigned int keep = KEEP_TOTAL / (children ? children : 1);
	struct demo_run *r;

	keep = keep < KEEP_MIN ? KEEP_MIN : keep;
	r = mmap(NULL, run_bytes(children, keep), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return NULL;
	r->children = children;
	r->keep = keep;
	r->lat = (struct demo_child_lat *)(r + 1);
	r->s = (struct demo_sample *)(r->lat + children);
	for (unsigned int i = 0; i < children; i++)
		r->lat[i].rng = 0x9e3779b97f4a7c15ULL * (i + 1);
	return r;
}

void demo_run_unmap(struct demo_run *r)
{
	if (r)
		munmap(r, run_bytes(r->children, r->keep));
}

static unsigned int hbin(uint64_t ns)
{
	double b = ns <= 1000 ? 0 : DEMO_BINS_PER_OCTAVE * log2((double)ns / 1000);

	return b >= DEMO_HBINS - 1 ? DEMO_HBINS - 1 : (unsigned int)b;
}

/* The @q quantile (us) of histogram @h (the bin's middle), 0 if empty. */
static double hist_pct_us(const uint64_t *h, uint64_t total, double q)
{
	uint64_t acc = 0;

	for (unsigned int i = 0; total && i < DEMO_HBINS; i++) {
		acc += h[i];
		if (acc >= q * total)
			return exp2((i + 0.5) / DEMO_BINS_PER_OCTAVE);
	}
	return 0;
}

void demo_hist_since(struct demo_run *r, uint64_t *prev, double *p50_us, double *p99_us)
{
	uint64_t d[DEMO_HBINS], total = 0;

	for (unsigned int i = 0; i < DEMO_HBINS; i++) {
		uint64_t now = atomic_load_explicit(&r->hist[i], memory_order_relaxed);

		total += d[i] = now - prev[i];
		prev[i] = now;
	}
	*p50_us = hist_pct_us(d, total, 0.5);
	*p99_us = hist_pct_us(d, total, 0.99);
}

/* --- a child --- */

struct kept_reply {
	uint64_t seq;
	float logits[];
};

struct demo_child {
	const struct demo_cfg *c;
	struct demo_run *r;
	unsigned int idx;
	uint64_t image_cpu_ns, cpu0;
	size_t entry, nlog, cap;	/* the log of replies to check */
	unsigned char *log;
	float *x, *ref;			/* for checking */
	uint64_t bad, errors, verified;
};

struct demo_child *demo_child_open(const struct demo_cfg *c, struct demo_run *r,
				   unsigned int idx)
{
	struct demo_child *k = calloc(1, sizeof(*k));

	if (!k)
		return NULL;
	k->c = c;
	k->r = r;
	k->idx = idx;
	k->entry = sizeof(struct kept_reply) + demo_out_bytes(c);
	k->cap = LOG_BYTES_MAX / k->entry;
	k->log = malloc(k->cap < 4096 ? k->cap * k->entry : 4096 * k->entry);
	k->x = malloc(demo_in_bytes(c));
	k->ref = malloc(demo_out_bytes(c));
	if (!k->log || !k->x || !k->ref) {
		free(k->log); free(k->x); free(k->ref); free(k);
		return NULL;
	}
	k->cap = k->cap < 4096 ? k->cap : 4096;	/* grows by doubling */
	/* Every child starts on the same signal, so the clock is fair. */
	while (!atomic_load(&r->go) && !atomic_load(&r->stop))
		usleep(1000);
	k->cpu0 = demo_process_cpu_ns();
	return k;
}

void demo_child_images(struct demo_child *k, float *x, uint64_t seq)
{
	uint64_t t = demo_thread_cpu_ns();

	demo_images(x, k->c->batch, k->idx, seq);
	k->image_cpu_ns += demo_thread_cpu_ns() - t;
}

bool demo_child_stopping(const struct demo_child *k)
{
	return atomic_load_explicit(&k->r->stop, memory_order_relaxed);
}

static void check_one(struct demo_child *k, uint64_t seq, const float *logits)
{
	demo_images(k->x, k->c->batch, k->idx, seq);
	demo_forward_cpu(k->c->w, k->x, k->c->batch, k->ref);
	if (demo_mismatches(k->ref, logits, k->c->batch))
		k->bad++;
	k->verified++;
}

/* Keep the logits for the check after the timed part: 0, or -1 when the
 * log is full (at LOG_BYTES_MAX) and the caller must check it now. */
static int keep_reply(struct demo_child *k, uint64_t seq, const float *logits)
{
	struct kept_reply *e;

	if (k->nlog == k->cap) {
		size_t cap = k->cap * 2;
		unsigned char *p;

		if (cap * k->entry > LOG_BYTES_MAX)
			return -1;
		p = realloc(k->log, cap * k->entry);
		if (!p)
			return -1;
		k->log = p;
		k->cap = cap;
	}
	e = (struct kept_reply *)(k->log + k->nlog++ * k->entry);
	e->seq = seq;
	memcpy(e->logits, logits, demo_out_bytes(k->c));	/* the check's copy, not the path's */
	return 0;
}

static void sample_keep(struct demo_child *k, const struct demo_sample *s)
{
	struct demo_child_lat *l = &k->r->lat[k->idx];
	struct demo_sample *mine = k->r->s + (size_t)k->idx * k->r->keep;
	uint64_t j;

	if (l->kept < k->r->keep) {
		mine[l->kept++] = *s;
	} else {
		/* Reservoir: the n-th reply replaces a kept one with chance keep/n. */
		l->rng ^= l->rng << 13;
		l->rng ^= l->rng >> 7;
		l->rng ^= l->rng << 17;
		j = l->rng % (l->seen + 1);
		if (j < k->r->keep)
			mine[j] = *s;
	}
	l->seen++;
}

void demo_child_reply(struct demo_child *k, uint64_t seq, const float *logits, int status,
		      uint64_t t0, uint64_t t_start, uint64_t t_end)
{
	uint64_t now = demo_now_ns();
	struct demo_sample s = { .rtt = now - t0 };

	/* The server's clock is the same CLOCK_MONOTONIC; a reply that does
	 * not order its stamps inside the round trip counts model time 0. */
	if (t0 <= t_start && t_start <= t_end && t_end <= now) {
		s.model = t_end - t_start;
		s.reply = now - t_end;
	}
	atomic_fetch_add_explicit(&k->r->hist[hbin(s.rtt)], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&k->r->requests, 1, memory_order_relaxed);
	sample_keep(k, &s);
	if (status) {
		k->errors++;
		return;
	}
	if (keep_reply(k, seq, logits))
		check_one(k, seq, logits);
}

int demo_child_close(struct demo_child *k)
{
	uint64_t cpu = demo_process_cpu_ns() - k->cpu0;
	int rc;

	atomic_fetch_add(&k->r->child_cpu_ns, cpu > k->image_cpu_ns ? cpu - k->image_cpu_ns : 0);
	atomic_fetch_add(&k->r->drained, 1);
	/* The clock has stopped: now every kept result is checked. */
	for (size_t i = 0; i < k->nlog; i++) {
		const struct kept_reply *e = (const void *)(k->log + i * k->entry);

		check_one(k, e->seq, e->logits);
	}
	atomic_fetch_add(&k->r->bad, k->bad);
	atomic_fetch_add(&k->r->errors, k->errors);
	atomic_fetch_add(&k->r->verified, k->verified);
	rc = k->bad || k->errors ? 1 : 0;
	free(k->log); free(k->x); free(k->ref); free(k);
	return rc;
}

/* --- a server --- */

bool demo_spoil_next(const struct demo_cfg *c)
{
	static uint64_t handled;	/* per process: each server counts its own */

	return c->inject && ++handled % c->inject == 0;
}

void demo_serve_cpu(const struct demo_cfg *c, struct demo_run *r, const float *x,
		    unsigned int n, float *y, bool spoil, uint64_t *t_start, uint64_t *t_end)
{
	uint64_t cpu = demo_thread_cpu_ns();

	*t_start = demo_now_ns();
	demo_forward_cpu(c->w, x, n, y);
	if (spoil)
		y[0] += 1.0f;	/* a wrong answer on purpose: the check must catch it */
	*t_end = demo_now_ns();
	atomic_fetch_add_explicit(&r->model_cpu_ns, demo_thread_cpu_ns() - cpu,
				  memory_order_relaxed);
}

/* --- the summary --- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The @q quantile (0..1) of @n sorted samples, in us. */
static double pct_us(const uint64_t *v, size_t n, double q)
{
	size_t k = (size_t)(q * (double)n);

	return n ? (double)v[k < n ? k : n - 1] / 1000.0 : 0;
}

static double per_req_us(uint64_t ns, uint64_t req)
{
	return req ? ns / 1e3 / (double)req : 0;
}

enum field { RTT, OVERHEAD, REPLY, MODEL };

/* One field of every kept sample, sorted; NULL without memory. */
static uint64_t *sorted(const struct demo_run *r, enum field f, size_t *n)
{
	uint64_t *v;

	*n = 0;
	for (unsigned int i = 0; i < r->children; i++)
		*n += r->lat[i].kept;
	v = malloc((*n ? *n : 1) * sizeof(*v));
	if (!v)
		return NULL;
	*n = 0;
	for (unsigned int i = 0; i < r->children; i++)
		for (uint64_t k = 0; k < r->lat[i].kept; k++) {
			const struct demo_sample *s = &r->s[(size_t)i * r->keep + k];

			v[(*n)++] = f == RTT ? s->rtt : f == OVERHEAD ? s->rtt - s->model :
				    f == REPLY ? s->reply : s->model;
		}
	qsort(v, *n, sizeof(*v), cmp_u64);
	return v;
}

int demo_result_make(const struct demo_cfg *c, struct demo_run *r, double seconds,
		     struct demo_result *out)
{
	uint64_t model_cpu = atomic_load(&r->model_cpu_ns), *reply, *model;
	size_t n;

	out->rtt_ns = sorted(r, RTT, &n);
	out->over_ns = sorted(r, OVERHEAD, &n);
	reply = sorted(r, REPLY, &n);
	model = sorted(r, MODEL, &n);
	if (!out->rtt_ns || !out->over_ns || !reply || !model) {
		free(reply);
		free(model);
		demo_result_free(out);
		return -ENOMEM;
	}
	out->n = n;
	out->p50_us = pct_us(out->rtt_ns, n, 0.5);
	out->p99_us = pct_us(out->rtt_ns, n, 0.99);
	out->over_p50_us = pct_us(out->over_ns, n, 0.5);
	out->over_p99_us = pct_us(out->over_ns, n, 0.99);
	out->reply_p50_us = pct_us(reply, n, 0.5);
	out->model_p50_us = pct_us(model, n, 0.5);
	free(reply);
	free(model);
	out->ran = true;
	out->requests = atomic_load(&r->requests);
	out->bad = atomic_load(&r->bad);
	out->errors = atomic_load(&r->errors);
	out->verified = atomic_load(&r->verified);
	out->copied = atomic_load(&r->copied);
	out->dma = atomic_load(&r->dma);
	out->seconds = seconds;
	out->rps = seconds > 0 ? out->requests / seconds : 0;
	out->mbps = out->rps * (double)(demo_in_bytes(c) + demo_out_bytes(c)) / 1e6;
	out->cpu_child_us = per_req_us(atomic_load(&r->child_cpu_ns), out->requests);
	out->cpu_broker_us = per_req_us(r->broker_cpu_ns, out->requests);
	/* A CPU model's own time is the workload's; on a GPU every CPU
	 * microsecond of a server is orchestration, so none is taken out. */
	out->cpu_server_us = per_req_us(r->server_cpu_ns > model_cpu ? r->server_cpu_ns - model_cpu :
					0, out->requests);
	return 0;
}

void demo_result_free(struct demo_result *out)
{
	free(out->rtt_ns);
	free(out->over_ns);
	out->rtt_ns = out->over_ns = NULL;
	out->n = 0;
}
