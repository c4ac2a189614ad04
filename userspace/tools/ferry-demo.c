// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-demo: the main job.  A broker starts N children and M helpers;
 * each child makes batches of images in its own region, helpers run a
 * small classifier on them (on their GPU through CUDA where there is one,
 * on the CPU otherwise) and write the logits back into the child's region;
 * each child checks every result against the model run by itself on the
 * CPU.  Live progress while it runs, a summary at the end; exit status 0
 * only if every result checked out.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "demo_model.h"
#include "ferry.h"

#define OP_CLASSIFY 1
#define HBINS 256		/* round-trip histogram: 8 bins per octave from 1 us */

struct shared {
	_Atomic int stop;
	_Atomic uint64_t requests, bad_results, errors, bytes;
	_Atomic uint64_t hist[HBINS];
};

struct cfg {
	unsigned int children, helpers, seconds, batch, window;
	enum ferry_backend backend;
	bool json, gpu;
	unsigned int inject;	/* --inject-fault: spoil every Nth result */
	const char *stats_path;	/* --stats: the broker's counters socket */
};

static struct cfg cfg;
static struct shared *sh;
static struct demo_weights *weights;	/* made before fork: every process has them */
static struct demo_gpu *gpu;		/* in a GPU helper */
static void *gpu_streams[64];		/* ... its streams, in the order met */
static uint64_t handled;		/* requests this helper answered */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned int hbin(uint64_t ns)
{
	double b = ns <= 1000 ? 0 : 8 * log2((double)ns / 1000);

	return b >= HBINS - 1 ? HBINS - 1 : (unsigned int)b;
}

/* The round trip below which a fraction @q of them were, in us. */
static double percentile_us(const uint64_t *h, double q)
{
	uint64_t total = 0, acc = 0;

	for (unsigned int i = 0; i < HBINS; i++)
		total += h[i];
	if (!total)
		return 0;
	for (unsigned int i = 0; i < HBINS; i++) {
		acc += h[i];
		if (acc >= q * total)
			return exp2((i + 1) / 8.0);	/* the bin's upper edge */
	}
	return exp2(HBINS / 8.0);
}

static size_t in_bytes(void)
{
	return (size_t)cfg.batch * DEMO_IN * sizeof(float);
}

static size_t out_bytes(void)
{
	return (size_t)cfg.batch * DEMO_OUT * sizeof(float);
}

/* --- helpers --- */

static int helper_init(struct ferry_helper *h, void *arg)
{
	(void)arg;
	if (!cfg.gpu)
		return 0;
	if (ferry_helper_gpu(h) < 0)
		return -ENODEV;
	return demo_gpu_open(weights, cfg.batch, 64, &gpu);
}

static int classify(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
		    void *arg)
{
	unsigned int n = (unsigned int)req->arg[1];
	const float *x;
	float *y;
	void *st;
	unsigned int s;
	int err;

	(void)arg;
	if (req->op != OP_CLASSIFY || n == 0 || n > cfg.batch)
		return -EINVAL;
	x = ferry_helper_data(h, req, req->offset, (size_t)n * DEMO_IN * sizeof(float));
	y = ferry_helper_data(h, req, req->arg[0], (size_t)n * DEMO_OUT * sizeof(float));
	if (!x || !y)
		return -EFAULT;
	if (cfg.inject && ++handled % cfg.inject == 0) {
		/* A wrong answer on purpose: the child's check must catch it. */
		demo_forward_cpu(weights, x, n, y);
		y[0] += 1.0f;
		return 0;
	}
	if (!gpu) {
		demo_forward_cpu(weights, x, n, y);
		return 0;
	}
	/* Device buffers per stream: work on one stream runs in order. */
	st = ferry_helper_stream(h);
	for (s = 0; s < 64 && gpu_streams[s] && gpu_streams[s] != st; s++)
		;
	if (s == 64)
		return -ENOSPC;
	gpu_streams[s] = st;
	err = demo_gpu_queue(gpu, s, st, x, n, y);
	if (!err)
		err = ferry_helper_defer(h, rep, st);
	return err ? err : FERRY_DEFERRED;
}

/* --- children --- */

struct slot {
	float *in, *out;
	uint64_t seq, t0;
};

static int child(struct ferry_child *c, void *arg)
{
	unsigned int k = ferry_window(c), idx = ferry_child_index(c);
	struct slot *sl = calloc(k, sizeof(*sl));
	float *ref = malloc(out_bytes());
	uint64_t seq = 0;
	struct ferry_desc d, rep;

	(void)arg;
	if (!sl || !ref)
		return 2;
	for (unsigned int i = 0; i < k; i++) {
		sl[i].in = ferry_malloc(c, in_bytes());
		sl[i].out = ferry_malloc(c, out_bytes());
		if (!sl[i].in || !sl[i].out)
			return 3;
	}
	for (unsigned int free_slot = 0;;) {
		/* Keep the window full until told to stop. */
		while (!atomic_load_explicit(&sh->stop, memory_order_relaxed) &&
		       ferry_outstanding(c) < k) {
			struct slot *s = &sl[free_slot];

			s->seq = seq++;
			demo_images(s->in, cfg.batch, idx, s->seq);
			d = (struct ferry_desc){
				.op = OP_CLASSIFY, .tag = free_slot, .offset = ferry_offset(c, s->in),
				.len = in_bytes(), .arg = { ferry_offset(c, s->out), cfg.batch },
			};
			s->t0 = now_ns();
			if (ferry_submit(c, &d))
				return 4;
			free_slot = (free_slot + 1) % k;
		}
		if (!ferry_outstanding(c))
			break;
		if (ferry_complete(c, &rep, -1) || rep.tag >= k)
			return 5;
		struct slot *s = &sl[rep.tag];

		atomic_fetch_add_explicit(&sh->hist[hbin(now_ns() - s->t0)], 1,
					  memory_order_relaxed);
		if (rep.status) {
			atomic_fetch_add(&sh->errors, 1);
		} else {
			demo_forward_cpu(weights, s->in, cfg.batch, ref);
			if (demo_mismatches(ref, s->out, cfg.batch))
				atomic_fetch_add(&sh->bad_results, 1);
		}
		atomic_fetch_add(&sh->bytes, in_bytes() + out_bytes());
		atomic_fetch_add(&sh->requests, 1);
		/* Slots complete in order per helper, not overall: reuse this one. */
		free_slot = (unsigned int)rep.tag;
	}
	return atomic_load(&sh->bad_results) || atomic_load(&sh->errors) ? 1 : 0;
}

/* --- the main job --- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-demo [options]\n"
		"  --children N   child processes (default: sized to the machine)\n"
		"  --helpers M    helper processes (default: 2 per GPU, or CPUs/2)\n"
		"  --seconds S    how long to send requests (default 10)\n"
		"  --size B       images per request (3x32x32 floats each; default 8)\n"
		"  --backend X    auto, kmod or memfd (default auto)\n"
		"  --json         the summary as one JSON object on stdout\n"
		"  --stats PATH   serve the broker's counters at PATH (ferryctl stats)\n"
		"  --inject-fault N  helpers spoil every Nth result (to see the check fail)\n"
		"Every result is checked in the child against the model run on the CPU;\n"
		"the exit status is 0 only if all of them matched.\n");
}

static int parse(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "children", required_argument, NULL, 'c' },
		{ "helpers", required_argument, NULL, 'm' },
		{ "seconds", required_argument, NULL, 's' },
		{ "size", required_argument, NULL, 'b' },
		{ "backend", required_argument, NULL, 'k' },
		{ "json", no_argument, NULL, 'j' },
		{ "inject-fault", required_argument, NULL, 'f' },
		{ "stats", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int o, err;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		char *end = NULL;
		unsigned long v = optarg ? strtoul(optarg, &end, 10) : 0;
		bool num_ok = optarg && *optarg && !*end && v > 0 && v <= 100000;

		switch (o) {
		case 'c': case 'm': case 's': case 'b': case 'f':
			if (!num_ok) {
				fprintf(stderr, "ferry-demo: --%s wants a number from 1 to 100000, "
					"not '%s'\n", o == 'c' ? "children" : o == 'm' ? "helpers" :
					o == 's' ? "seconds" : o == 'b' ? "size" : "inject-fault", optarg);
				return -EINVAL;
			}
			if (o == 'f') cfg.inject = (unsigned int)v;
			if (o == 'c') cfg.children = (unsigned int)v;
			if (o == 'm') cfg.helpers = (unsigned int)v;
			if (o == 's') cfg.seconds = (unsigned int)v;
			if (o == 'b') cfg.batch = (unsigned int)v;
			break;
		case 'k':
			err = ferry_backend_parse(optarg);
			cfg.backend = (enum ferry_backend)err;
			if (err < 0) {
				fprintf(stderr, "ferry-demo: --backend wants auto, kmod or memfd, "
					"not '%s'\n", optarg);
				return -EINVAL;
			}
			break;
		case 'j':
			cfg.json = true;
			break;
		case 'p':
			cfg.stats_path = optarg;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ferry-demo: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	if (cfg.batch > 1024) {
		fprintf(stderr, "ferry-demo: --size is at most 1024 images\n");
		return -EINVAL;
	}
	return 0;
}

static void progress(bool tty, uint64_t t_start, uint64_t *last_req, uint64_t *last_t)
{
	uint64_t h[HBINS], now = now_ns(), req = atomic_load(&sh->requests);
	double dt = (now - *last_t) / 1e9;

	for (unsigned int i = 0; i < HBINS; i++)
		h[i] = atomic_load_explicit(&sh->hist[i], memory_order_relaxed);
	fprintf(stderr, "%s[%5.1fs] %10llu requests  %9.0f/s  p50 %8.1f us  p99 %8.1f us  "
		"bad %llu%s", tty ? "\r" : "", (now - t_start) / 1e9, (unsigned long long)req,
		dt > 0 ? (req - *last_req) / dt : 0, percentile_us(h, 0.5), percentile_us(h, 0.99),
		(unsigned long long)(atomic_load(&sh->bad_results) + atomic_load(&sh->errors)),
		tty ? "   " : "\n");
	fflush(stderr);
	*last_req = req;
	*last_t = now;
}

int main(int argc, char **argv)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	uint64_t t0, t1, last_req = 0, last_t, h[HBINS], req, bytes, bad, errs;
	const char *device;
	int ngpus, failed, err;
	bool tty = isatty(STDERR_FILENO), ok;

	cfg.seconds = 10;
	cfg.batch = 8;
	cfg.window = 4;
	cfg.backend = FERRY_BACKEND_AUTO;
	if (parse(argc, argv))
		return 2;
	/* Counted by a throwaway process: CUDA must stay out of this one. */
	ngpus = ferry_gpu_count_forked();
	cfg.gpu = ngpus > 0 && demo_gpu_built();
	if (ncpu < 1)
		ncpu = 1;
	if (!cfg.helpers)
		cfg.helpers = cfg.gpu ? 2u * (unsigned int)ngpus :
				(ncpu >= 4 ? (unsigned int)ncpu / 2 : 1);
	if (!cfg.children)
		cfg.children = cfg.gpu ? (ncpu * 2 < 32 ? (unsigned int)ncpu * 2 : 32) :
				 (ncpu >= 2 ? (unsigned int)ncpu : 2);
	device = cfg.gpu ? "GPU (CUDA)" : ngpus > 0 ? "CPU (GPU found, but built without nvcc)" :
		 "CPU (no GPU found)";

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	weights = malloc(sizeof(*weights));
	if (sh == MAP_FAILED || !weights) {
		perror("ferry-demo");
		return 1;
	}
	demo_weights_make(weights);

	ferry_broker_opts_init(&o);
	o.children = cfg.children;
	o.helpers = cfg.helpers;
	o.window = cfg.window;
	o.region_size = cfg.window * (in_bytes() + out_bytes()) + (1u << 20);
	o.backend = cfg.backend;
	o.handler = classify;
	o.helper_init = helper_init;
	o.child_fn = child;
	o.gpu = cfg.gpu ? FERRY_GPU_AUTO : FERRY_GPU_NONE;
	o.stats_path = cfg.stats_path;
	err = ferry_broker_start(&o, &b);
	if (err) {
		fprintf(stderr, "ferry-demo: cannot start the broker: %s\n", strerror(-err));
		return 1;
	}
	if (!cfg.json)
		printf("ferry-demo: %u children, %u helpers, backend %s, model on %s, "
		       "%u images (%.1f KiB) per request, %u s\n", cfg.children, cfg.helpers,
		       ferry_backend_name(ferry_broker_backend(b)), device, cfg.batch,
		       in_bytes() / 1024.0, cfg.seconds);
	fflush(stdout);
	t0 = last_t = now_ns();
	while (now_ns() - t0 < (uint64_t)cfg.seconds * 1000000000u) {
		usleep(tty ? 250000 : 1000000);
		if (!cfg.json)
			progress(tty, t0, &last_req, &last_t);
	}
	atomic_store(&sh->stop, 1);
	failed = ferry_broker_wait(b, 120LL * 1000000000);
	t1 = now_ns();
	ferry_broker_stats(b, &st);
	if (tty && !cfg.json)
		fputc('\n', stderr);

	for (unsigned int i = 0; i < HBINS; i++)
		h[i] = atomic_load(&sh->hist[i]);
	req = atomic_load(&sh->requests);
	bytes = atomic_load(&sh->bytes);
	bad = atomic_load(&sh->bad_results);
	errs = atomic_load(&sh->errors);
	ok = failed == 0 && bad == 0 && errs == 0 && req > 0 && st.bad_desc == 0;
	if (cfg.json) {
		printf("{\"backend\":\"%s\",\"device\":\"%s\",\"children\":%u,\"helpers\":%u,"
		       "\"images_per_request\":%u,\"seconds\":%.3f,\"requests\":%llu,"
		       "\"bytes\":%llu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"requests_per_s\":%.1f,"
		       "\"mb_per_s\":%.1f,\"copies_avoided\":%llu,\"bad_results\":%llu,"
		       "\"errors\":%llu,\"failed_children\":%d,\"ok\":%s}\n",
		       ferry_backend_name(ferry_broker_backend(b)), cfg.gpu ? "gpu" : "cpu",
		       cfg.children, cfg.helpers, cfg.batch, (t1 - t0) / 1e9,
		       (unsigned long long)req, (unsigned long long)bytes, percentile_us(h, 0.5),
		       percentile_us(h, 0.99), req / ((t1 - t0) / 1e9),
		       bytes / ((t1 - t0) / 1e9) / 1e6, (unsigned long long)req * 4,
		       (unsigned long long)bad, (unsigned long long)errs, failed,
		       ok ? "true" : "false");
	} else {
		printf("\n  %-34s %s\n", "backend", ferry_backend_name(ferry_broker_backend(b)));
		printf("  %-34s %s\n", "model ran on", device);
		printf("  %-34s %u x %u\n", "children x helpers", cfg.children, cfg.helpers);
		printf("  %-34s %llu (%u images each)\n", "requests", (unsigned long long)req,
		       cfg.batch);
		printf("  %-34s %.1f MB\n", "tensor bytes moved (in + out)", bytes / 1e6);
		printf("  %-34s %.1f / %.1f us\n", "round trip p50 / p99",
		       percentile_us(h, 0.5), percentile_us(h, 0.99));
		printf("  %-34s %.0f requests/s, %.1f MB/s\n", "throughput",
		       req / ((t1 - t0) / 1e9), bytes / ((t1 - t0) / 1e9) / 1e6);
		printf("  %-34s %llu (%.1f MB): tensors stayed in the child's region\n",
		       "copies avoided vs pipes", (unsigned long long)req * 4, 2 * bytes / 1e6);
		printf("  %-34s %llu of %llu checked against the CPU reference\n",
		       "results correct", (unsigned long long)(req - bad - errs),
		       (unsigned long long)req);
		printf("  %-34s %s\n", "verdict", ok ? "OK: every result verified" :
		       "FAILED: see the counts above");
	}
	ferry_broker_stop(b);
	return ok ? 0 : 1;
}
