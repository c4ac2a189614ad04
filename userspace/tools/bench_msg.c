// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench msg: message round trips, each next to its baseline measured
 * in the same run.
 *   pipe    two processes, 16 bytes each way over pipes, poll() then read()
 *   pair    the same two processes over one ferry channel (spin, then sleep)
 *   broker  a child's ferry_call() through the broker to a helper and back
 *   agg     C children x H helpers, asynchronous windows: round trips/s
 *   scale   broker CPU per request with 4 and with 256 children
 * Medians of per-round-trip times; the last line is key=value pairs.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "bench_plot.h"
#include "chan.h"
#include "ferry.h"

static double median_us(uint64_t *v, size_t n)
{
	return bench_median_ns(v, n) / 1000.0;
}

/* @t: n samples (ns) out. */
static double pipe_rt(unsigned int n, uint64_t *t)
{
	int a[2], b[2];
	char msg[16] = "ping";
	pid_t pid;
	double med;

	if (pipe(a) || pipe(b))
		return -1;
	pid = fork();
	if (pid == 0) {
		struct pollfd p = { .fd = a[0], .events = POLLIN };

		for (unsigned int i = 0; i < n; i++) {
			if (poll(&p, 1, -1) != 1 || read(a[0], msg, 16) != 16 ||
			    write(b[1], msg, 16) != 16)
				_exit(1);
		}
		_exit(0);
	}
	for (unsigned int i = 0; i < n; i++) {
		struct pollfd p = { .fd = b[0], .events = POLLIN };
		uint64_t t0 = bench_now_ns();

		if (write(a[1], msg, 16) != 16 || poll(&p, 1, -1) != 1 || read(b[0], msg, 16) != 16)
			return -1;
		t[i] = bench_now_ns() - t0;
	}
	waitpid(pid, NULL, 0);
	close(a[0]); close(a[1]); close(b[0]); close(b[1]);
	med = median_us(t, n);
	return med;
}

static double pair_rt(unsigned int n, uint64_t spin_ns, uint64_t *t)
{
	size_t bytes = ferry_chan_bytes(64);
	void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_chan c;
	struct ferry_desc d = { .op = 1 };
	pid_t pid;
	double med;

	if (mem == MAP_FAILED || ferry_chan_format(mem, bytes, 64))
		return -1;
	pid = fork();
	if (pid == 0) {
		if (ferry_chan_attach(&c, mem, bytes, false, FERRY_BELL_FUTEX, NULL))
			_exit(1);
		c.spin_ns = spin_ns;
		for (unsigned int i = 0; i < n; i++)
			if (ferry_chan_recv_wait(&c, &d, -1, NULL) || ferry_chan_send(&c, &d))
				_exit(1);
		_exit(0);
	}
	if (ferry_chan_attach(&c, mem, bytes, true, FERRY_BELL_FUTEX, NULL))
		return -1;
	c.spin_ns = spin_ns;
	for (unsigned int i = 0; i < n; i++) {
		uint64_t t0 = bench_now_ns();

		d.tag = i;
		if (ferry_chan_send(&c, &d) || ferry_chan_recv_wait(&c, &d, -1, NULL) || d.tag != i)
			return -1;
		t[i] = bench_now_ns() - t0;
	}
	waitpid(pid, NULL, 0);
	munmap(mem, bytes);
	med = median_us(t, n);
	return med;
}

static int echo(struct ferry_helper *h, const struct ferry_desc *req,
		struct ferry_desc *rep, void *arg)
{
	(void)h; (void)req; (void)rep; (void)arg;
	return 0;
}

/* Shared with the children (MAP_SHARED before fork). */
struct results {
	unsigned int n, async;
	_Atomic int stop;	/* timed runs: children loop until it is set */
	uint64_t t[];	/* sync: per-call ns of child 0 */
};

static int rt_child(struct ferry_child *c, void *arg)
{
	struct results *r = arg;
	struct ferry_desc d = { .op = 1 }, rep;

	if (!r->async) {
		for (unsigned int i = 0; i < r->n; i++) {
			uint64_t t0 = bench_now_ns();

			if (ferry_call(c, &d, &rep) || rep.status)
				return 1;
			if (ferry_child_index(c) == 0)
				r->t[i] = bench_now_ns() - t0;
		}
		return 0;
	}
	/* n == 0: until told to stop, then collect what is outstanding. */
	for (unsigned int sent = 0, done = 0; r->n ? done < r->n : ferry_outstanding(c) || !r->stop;) {
		while ((r->n ? sent < r->n : !r->stop) && ferry_outstanding(c) < ferry_window(c)) {
			if (ferry_submit(c, &d))
				return 1;
			sent++;
		}
		if (!ferry_outstanding(c))
			continue;
		if (ferry_complete(c, &rep, -1) || rep.status)
			return 1;
		done++;
	}
	return 0;
}

struct run {
	double med_us, rps, cpu_ns_per_req, bells_per_req;
	int dispatch_cpu;
	uint64_t *t;	/* sync runs: child 0's n samples (ns) out, if set */
};

/*
 * n > 0: every child makes n calls (sync: child 0's are timed).  n == 0:
 * asynchronous children run until stopped, and the broker's CPU per reply
 * is taken between two samples, after start-up and before the end, so
 * forking and reaping children does not count.
 */
static unsigned int opt_window, opt_depth;	/* 0: the library's defaults */

static int broker_run(unsigned int children, unsigned int helpers, unsigned int n,
		      bool async, uint64_t spin_ns, struct run *out)
{
	size_t bytes = sizeof(struct results) + n * sizeof(uint64_t);
	struct results *r = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	uint64_t t0, t1;
	int err;

	if (r == MAP_FAILED)
		return -ENOMEM;
	r->n = n;
	r->async = async;
	ferry_broker_opts_init(&o);
	o.children = children;
	o.helpers = helpers;
	o.region_size = 64 << 10;
	o.handler = echo;
	o.child_fn = rt_child;
	o.child_arg = r;
	o.gpu = FERRY_GPU_NONE;	/* messages only: helpers need no CUDA */
	if (spin_ns != UINT64_MAX)
		o.spin_ns = spin_ns;
	if (opt_window)
		o.window = opt_window;
	if (opt_depth)
		o.helper_depth = opt_depth;
	t0 = bench_now_ns();
	err = ferry_broker_start(&o, &b);
	if (err)
		return err;
	out->dispatch_cpu = ferry_broker_dispatch_cpu(b);
	if (n == 0) {
		struct ferry_broker_stats s0;

		usleep(300000);
		ferry_broker_stats(b, &s0);
		t0 = bench_now_ns();
		usleep(1000000);
		ferry_broker_stats(b, &st);
		t1 = bench_now_ns();
		r->stop = 1;
		err = ferry_broker_wait(b, -1);
		ferry_broker_stop(b);
		if (err)
			return -EIO;
		out->med_us = 0;
		out->rps = (st.replies - s0.replies) / ((t1 - t0) / 1e9);
		out->cpu_ns_per_req = st.replies > s0.replies ?
			(double)(st.dispatch_cpu_ns - s0.dispatch_cpu_ns) / (st.replies - s0.replies) : 0;
		out->bells_per_req = st.replies > s0.replies ?
			(double)(st.bells - s0.bells) / (st.replies - s0.replies) : 0;
		munmap(r, bytes);
		return 0;
	}
	err = ferry_broker_wait(b, -1);
	t1 = bench_now_ns();
	ferry_broker_stats(b, &st);
	ferry_broker_stop(b);
	if (err)
		return -EIO;
	out->med_us = async ? 0 : median_us(r->t, n);
	if (!async && out->t)
		memcpy(out->t, r->t, n * sizeof(*out->t));
	out->rps = st.replies / ((t1 - t0) / 1e9);
	out->cpu_ns_per_req = st.replies ? (double)st.dispatch_cpu_ns / st.replies : 0;
	munmap(r, bytes);
	return 0;
}

/* The three round-trip distributions of this run, side by side. */
static int plot_latency(const char *path, uint64_t *t[3], unsigned int n, double pipe_us,
			double pair_us, double rt_us)
{
	static double x[3][BENCH_HIST_BINS], y[3][BENCH_HIST_BINS];
	char names[3][96];
	struct plot_series s[3];
	const struct plot p = {
		.title = "ferry-bench msg: round-trip time, share of round trips per bin",
		.xlabel = "round trip (us, log)", .ylabel = "share of round trips", .logx = true,
	};

	snprintf(names[0], sizeof(names[0]), "pipe+poll, baseline (median %.2f us)", pipe_us);
	snprintf(names[1], sizeof(names[1]), "ferry channel pair (median %.2f us)", pair_us);
	snprintf(names[2], sizeof(names[2]), "ferry_call via the broker (median %.2f us)", rt_us);
	for (int k = 0; k < 3; k++) {
		s[k].name = names[k];
		s[k].x = x[k];
		s[k].y = y[k];
		s[k].n = bench_hist((const unsigned long long *)t[k], n, x[k], y[k]);
	}
	return bench_plot(path, &p, s, 3);
}

static void msg_usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-bench msg [options]\n"
		"  -n N        round trips per measurement (default 20000, at least 100)\n"
		"  -c N        children in the aggregate run (default 32)\n"
		"  -h N        helpers in the aggregate run (default 4)\n"
		"  -w K        requests outstanding per child (default: the library's)\n"
		"  -d D        requests queued at one helper (default: the library's)\n"
		"  --plot F    draw the round-trip distributions into F (.png or .svg, gnuplot)\n"
		"  --help      this text\n"
		"Measures pipe+poll (the baseline), a ferry channel pair, ferry_call through the\n"
		"broker, the aggregate rate of C children x H helpers and the broker's CPU per\n"
		"request with 4 and 256 children, each next to the baseline of the same run.\n"
		"The last line is key=value pairs.\n");
}

int ferry_bench_msg(int argc, char **argv)
{
	unsigned int n = 20000, agg_children = 32, agg_helpers = 4;
	struct run br = { 0 }, agg = { 0 }, s4 = { 0 }, s256 = { 0 };
	double pipe_us, pair_us;
	const char *plot = NULL;
	uint64_t *t[3];
	int opt;
	static const struct option longs[] = {
		{ "plot", required_argument, NULL, 'P' }, { "help", no_argument, NULL, 'H' }, { 0 }
	};

	while ((opt = getopt_long(argc, argv, "n:c:h:w:d:", longs, NULL)) != -1) {
		switch (opt) {
		case 'n': n = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'c': agg_children = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'h': agg_helpers = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'w': opt_window = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'd': opt_depth = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'P': plot = optarg; break;
		case 'H': msg_usage(stdout); return 0;
		default: msg_usage(stderr); return 2;
		}
	}
	if (n < 100) {
		fprintf(stderr, "ferry-bench msg: -n must be at least 100\n");
		return 2;
	}
	if (plot && bench_plot_check(plot))
		return 2;
	for (int k = 0; k < 3; k++)
		if (!(t[k] = calloc(n, sizeof(*t[k]))))
			return 1;
	printf("# ferry-bench msg: %u round trips per measurement, %ld CPUs\n", n,
	       sysconf(_SC_NPROCESSORS_ONLN));
	pipe_us = pipe_rt(n, t[0]);
	printf("pipe+poll round trip (baseline)      median %8.2f us\n", pipe_us);
	pair_us = pair_rt(n, FERRY_CHAN_SPIN_NS_DEFAULT, t[1]);
	printf("ferry channel pair, default spin     median %8.2f us  (%.1fx pipe)\n",
	       pair_us, pipe_us / pair_us);
	br.t = t[2];
	if (broker_run(1, 1, n, false, UINT64_MAX, &br))
		return 1;
	printf("ferry_call via broker, 1 child 1 helper median %5.2f us  (%.1fx pipe)\n",
	       br.med_us, pipe_us / br.med_us);
	/* Steady state: 1 s between two samples, after start-up. */
	if (broker_run(agg_children, agg_helpers, 0, true, UINT64_MAX, &agg))
		return 1;
	printf("aggregate, %u children x %u helpers    %10.0f round trips/s (dispatch CPU %s, "
	       "%.2f wakes/reply)\n", agg_children, agg_helpers, agg.rps,
	       agg.dispatch_cpu >= 0 ? "reserved" : "shared", agg.bells_per_req);
	/* Broker cost per request must not grow with the number of peers. */
	if (broker_run(4, 4, 0, true, 0, &s4) || broker_run(256, 4, 0, true, 0, &s256))
		return 1;
	printf("broker CPU per request: 4 children %.0f ns, 256 children %.0f ns (%.2fx); "
	       "wakes/reply %.2f and %.2f\n", s4.cpu_ns_per_req, s256.cpu_ns_per_req,
	       s256.cpu_ns_per_req / s4.cpu_ns_per_req, s4.bells_per_req, s256.bells_per_req);
	printf("bench=msg pipe_rt_us=%.2f pair_rt_us=%.2f pair_speedup=%.2f rt_us=%.2f "
	       "speedup=%.2f agg_rps=%.0f agg_children=%u agg_helpers=%u cost4_ns=%.0f "
	       "cost256_ns=%.0f cost_ratio=%.2f agg_dispatch_cpu=%d\n",
	       pipe_us, pair_us, pipe_us / pair_us, br.med_us, pipe_us / br.med_us, agg.rps,
	       agg_children, agg_helpers, s4.cpu_ns_per_req, s256.cpu_ns_per_req,
	       s256.cpu_ns_per_req / s4.cpu_ns_per_req, agg.dispatch_cpu);
	if (plot && plot_latency(plot, t, n, pipe_us, pair_us, br.med_us))
		return 1;
	for (int k = 0; k < 3; k++)
		free(t[k]);
	return 0;
}
