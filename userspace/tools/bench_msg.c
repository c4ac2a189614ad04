// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench msg: message round trips, each next to its baseline measured
 * in the same run (the baselines are in bench_pipe.c).
 *   broker  a child's ferry_call() through the broker to a helper and back,
 *           against the same path over pipes and poll() (the seed design)
 *   pair    two processes over one ferry channel, against a pipe pair
 *   agg     C children x H helpers, asynchronous windows: round trips/s
 * ferry-bench msg --scale: the broker's CPU per request with 4, 16, 64 and
 * 256 children (--scale-max 1024 or 4096 adds those), against 4.  The
 * last line is key=value pairs.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cpu_clock.h"
#include "bench.h"
#include "bench_plot.h"
#include "chan.h"
#include "ferry.h"

#define MAX_WINDOWS 64u
#define MAX_ROUNDS 32u

struct msg_opts {
	unsigned int n, children, helpers, window, depth;	/* 0: the library's */
	unsigned int agg_children, agg_helpers, rounds;
	double seconds;			/* latency runs: at most; steady windows: exactly */
	uint64_t spin_ns;		/* UINT64_MAX: the library's */
	bool scale, agg;
	unsigned int scale_max;	/* --scale: the largest child count */
	struct bench_service sv;	/* --service-us: what each request costs a helper */
	const char *plot;
};

static uint64_t deadline(const struct msg_opts *o)
{
	return o->seconds > 0 ? bench_now_ns() + (uint64_t)(o->seconds * 1e9) : UINT64_MAX;
}

static int pair_rt(const struct msg_opts *o, struct bench_lat *out)
{
	size_t bytes = ferry_chan_bytes(64);
	void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t spin = o->spin_ns == UINT64_MAX ? FERRY_CHAN_SPIN_NS_DEFAULT : o->spin_ns;
	uint64_t *t = calloc(o->n, sizeof(*t)), end = deadline(o);
	struct ferry_chan c;
	struct ferry_desc d = { .op = 1 };
	unsigned int cnt = 0;
	int err = 0;
	pid_t pid;

	if (mem == MAP_FAILED || !t || ferry_chan_format(mem, bytes, 64)) {
		err = -ENOMEM;
		goto out;
	}
	pid = fork();
	if (pid == 0) {
		if (ferry_chan_attach(&c, mem, bytes, false, FERRY_BELL_FUTEX, NULL))
			_exit(1);
		c.spin_ns = spin;
		/* Echo until a descriptor with op 0 says stop. */
		while (!ferry_chan_recv_wait(&c, &d, -1, NULL) && d.op)
			if (ferry_chan_send(&c, &d))
				_exit(1);
		_exit(0);
	}
	if (pid < 0) {
		err = -errno;
		goto out;
	}
	if (ferry_chan_attach(&c, mem, bytes, true, FERRY_BELL_FUTEX, NULL)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		err = -EIO;
		goto out;
	}
	c.spin_ns = spin;
	for (unsigned int i = 0; i < o->n && bench_now_ns() < end; i++) {
		uint64_t t0 = bench_now_ns();

		d.tag = i;
		if (ferry_chan_send(&c, &d) || ferry_chan_recv_wait(&c, &d, -1, NULL) ||
		    d.tag != i) {
			err = -EIO;
			break;
		}
		t[cnt++] = bench_now_ns() - t0;
	}
	d.op = 0;
	ferry_chan_send(&c, &d);
	waitpid(pid, NULL, 0);
	if (!err)
		err = bench_lat_collect(out, t, &cnt, 1, o->n);
out:
	free(t);
	if (mem != MAP_FAILED)
		munmap(mem, bytes);
	return err;
}

/* @arg: the struct bench_service of --service-us (NULL: none). */
static int echo(struct ferry_helper *h, const struct ferry_desc *req,
		struct ferry_desc *rep, void *arg)
{
	(void)h; (void)req; (void)rep;
	bench_serve(arg);
	return 0;
}

/* n > 0: n timed ferry_call()s; n == 0: full windows until told to stop. */
static int rt_child(struct ferry_child *c, void *arg)
{
	struct bench_samples *r = arg;
	struct ferry_desc d = { .op = 1 }, rep;
	unsigned int me = ferry_child_index(c);

	if (r->n) {
		uint64_t *t = r->t + (size_t)me * r->n;

		for (unsigned int i = 0; i < r->n && bench_now_ns() < r->deadline_ns; i++) {
			uint64_t t0 = bench_now_ns();

			d.tag = i;
			if (ferry_call(c, &d, &rep) || rep.status || rep.tag != i)
				return 1;
			t[r->cnt[me]++] = bench_now_ns() - t0;
		}
		r->cpu_ns[me] = bench_self_cpu_ns();
		return 0;
	}
	/* Until told to stop, then collect what is outstanding. */
	while (ferry_outstanding(c) || !r->stop) {
		while (!r->stop && ferry_outstanding(c) < ferry_window(c))
			if (ferry_submit(c, &d))
				return 1;
		if (!ferry_outstanding(c))
			continue;
		if (ferry_complete(c, &rep, -1) || rep.status)
			return 1;
	}
	return 0;
}

struct steady {
	double rps, cpu_ns_per_req, bells_per_req;
	int dispatch_cpu;
};

static int start(const struct msg_opts *mo, unsigned int children, unsigned int helpers,
		 struct bench_samples *r, struct ferry_broker **b)
{
	struct ferry_broker_opts o;

	ferry_broker_opts_init(&o);
	o.children = children;
	o.helpers = helpers;
	o.region_size = 64 << 10;
	o.handler = echo;
	o.helper_arg = (void *)&mo->sv;
	o.child_fn = rt_child;
	o.child_arg = r;
	o.gpu = FERRY_GPU_NONE;	/* messages only: helpers need no CUDA */
	o.spin_ns = mo->spin_ns;
	if (mo->window)
		o.window = mo->window;
	if (mo->depth)
		o.helper_depth = mo->depth;
	return ferry_broker_start(&o, b);
}

/* Synchronous ferry_call()s: every child's round trips, timed. */
static int broker_rt(const struct msg_opts *mo, struct bench_lat *out)
{
	struct bench_samples *r = bench_samples_map(mo->children, mo->n, deadline(mo));
	struct ferry_broker *b;
	int err;

	if (!r)
		return -ENOMEM;
	uint64_t helper_ns = 0, child_ns = 0, reqs = 0;
	struct ferry_broker_stats st = { 0 };

	err = start(mo, mo->children, mo->helpers, r, &b);
	if (!err) {
		err = ferry_broker_wait(b, -1) ? -EIO : 0;
		/* Helpers live until stop: their CPU from /proc. */
		for (unsigned int h = 0; h < mo->helpers; h++)
			helper_ns += tools_pid_cpu_ns(ferry_broker_helper_pid(b, h));
		ferry_broker_stats(b, &st);
		ferry_broker_stop(b);
	}
	for (unsigned int i = 0; i < mo->children; i++) {
		child_ns += r->cpu_ns[i];
		reqs += r->cnt[i];
	}
	if (!err)
		err = bench_samples_collect(r, out);
	if (!err && reqs)
		out->cpu = (struct bench_cpu){
			.child_us = child_ns / 1e3 / reqs, .dispatch_us = st.dispatch_cpu_ns / 1e3 / reqs,
			.helper_us = helper_ns / 1e3 / reqs,
		};
	bench_samples_unmap(r);
	return err;
}

/*
 * Asynchronous children with full windows.  The rate and the broker's CPU
 * per reply are taken over @seconds after start-up and before the end, so
 * forking and reaping children does not count.
 */
static int broker_steady(const struct msg_opts *mo, unsigned int children,
			 unsigned int helpers, struct steady *out)
{
	struct bench_samples *r = bench_samples_map(0, 0, UINT64_MAX);	/* none timed */
	struct ferry_broker_stats s0, s1, first;
	double secs = mo->seconds > 0 ? mo->seconds : 1.0;
	uint64_t t0, t1, replies, cost[MAX_WINDOWS];
	struct ferry_broker *b;
	unsigned int nwin;
	int err;

	if (!r)
		return -ENOMEM;
	err = start(mo, children, helpers, r, &b);
	if (err) {
		bench_samples_unmap(r);
		return err;
	}
	out->dispatch_cpu = ferry_broker_dispatch_cpu(b);
	usleep(300000);
	/*
	 * Windows of 0.2 s: the cost is their median, so a burst of noise from
	 * the rest of the machine in one of them does not move it.
	 */
	nwin = (unsigned int)(secs / 0.2 + 0.5);
	nwin = nwin < 1 ? 1 : nwin > MAX_WINDOWS ? MAX_WINDOWS : nwin;
	ferry_broker_stats(b, &s0);
	first = s0;
	t0 = bench_now_ns();
	for (unsigned int k = 0; k < nwin; k++) {
		usleep((useconds_t)(secs / nwin * 1e6));
		ferry_broker_stats(b, &s1);
		replies = s1.replies - s0.replies;
		cost[k] = replies ? (uint64_t)((s1.dispatch_cpu_ns - s0.dispatch_cpu_ns) * 1000 /
					       replies) : UINT64_MAX;
		s0 = s1;
	}
	t1 = bench_now_ns();
	r->stop = 1;
	err = ferry_broker_wait(b, -1) ? -EIO : 0;
	ferry_broker_stop(b);
	bench_samples_unmap(r);
	replies = s1.replies - first.replies;
	if (!err && !replies)
		err = -EIO;
	if (err)
		return err;
	out->rps = replies / ((t1 - t0) / 1e9);
	out->cpu_ns_per_req = bench_pct_ns(cost, nwin, 50) / 1000.0;	/* ns, from ps */
	out->bells_per_req = (double)(s1.bells - first.bells) / replies;
	return 0;
}

/* The round-trip distributions of this run, side by side. */
static int plot_latency(const char *path, const struct bench_lat *l[4])
{
	static double x[4][BENCH_HIST_BINS], y[4][BENCH_HIST_BINS];
	static const char *const what[4] = {
		"child-broker-helper over pipes+poll, baseline",
		"ferry_call via the broker",
		"pipe pair, baseline",
		"ferry channel pair",
	};
	char names[4][96];
	struct plot_series s[4];
	const struct plot p = {
		.title = "ferry-bench msg: round-trip time, share of round trips per bin",
		.xlabel = "round trip (us, log)", .ylabel = "share of round trips", .logx = true,
	};

	for (int k = 0; k < 4; k++) {
		snprintf(names[k], sizeof(names[k]), "%s (median %.2f us)", what[k], l[k]->p50_us);
		s[k].name = names[k];
		s[k].x = x[k];
		s[k].y = y[k];
		s[k].n = bench_hist((const unsigned long long *)l[k]->t, l[k]->n, x[k], y[k]);
	}
	return bench_plot(path, &p, s, 4);
}

/*
 * Each round starts a broker for every child count in turn; a count's cost
 * is its median over the rounds, so a slow phase of the machine (these are
 * shared, noisy hosts) weighs on all counts alike instead of on one.
 */
static int run_scale(const struct msg_opts *o)
{
	static const unsigned int counts[] = { 4, 16, 64, 256, 1024, 4096 };
	enum { NC = sizeof(counts) / sizeof(counts[0]) };
	uint64_t cost[NC][MAX_ROUNDS], wakes[NC][MAX_ROUNDS];	/* ps, per mille */
	double med[NC], rps[NC] = { 0 };
	int n = 0;

	while (n < NC && counts[n] <= o->scale_max)
		n++;
	for (unsigned int r = 0; r < o->rounds; r++) {
		for (int k = 0; k < n; k++) {
			struct steady s;
			int err = broker_steady(o, counts[k], 4, &s);

			if (err) {
				fprintf(stderr, "ferry-bench msg --scale: %u children: %s\n",
					counts[k], strerror(-err));
				return 1;
			}
			cost[k][r] = (uint64_t)(s.cpu_ns_per_req * 1000);
			wakes[k][r] = (uint64_t)(s.bells_per_req * 1000);
			rps[k] += s.rps / o->rounds;
		}
	}
	for (int k = 0; k < n; k++) {
		med[k] = bench_pct_ns(cost[k], o->rounds, 50) / 1000;
		printf("broker CPU per request, %4u children x 4 helpers  %7.0f ns  (%.2fx of 4 "
		       "children; %.2f wakes/reply, %.0f round trips/s)\n", counts[k], med[k],
		       med[k] / med[0], bench_pct_ns(wakes[k], o->rounds, 50) / 1000, rps[k]);
	}
	printf("bench=msg-scale");
	for (int k = 0; k < n; k++)
		printf(" cost_%u_ns=%.0f", counts[k], med[k]);
	for (int k = 1; k < n; k++)
		printf(" cost_ratio_%u_vs_4=%.2f", counts[k], med[k] / med[0]);
	printf(" rounds=%u\n", o->rounds);
	return 0;
}

static void print_cpu(const struct bench_cpu *c)
{
	printf("%-52s child %.2f  dispatch %.2f  helper %.2f  (CPU-us per request)\n", "",
	       c->child_us, c->dispatch_us, c->helper_us);
}

static int fail(const char *what, int err)
{
	fprintf(stderr, "ferry-bench msg: %s: %s\n", what, strerror(-err));
	return 1;
}

static int run_msg(const struct msg_opts *o)
{
	struct bench_lat base = { 0 }, rt = { 0 }, pbase = { 0 }, pair = { 0 };
	struct steady agg = { .dispatch_cpu = -1 };
	int err, rc = 1;

	double svc_us = o->sv.ns / 1e3;

	if ((err = bench_pipe_broker(o->children, o->helpers, o->n, deadline(o), &o->sv, &base))) {
		fail("pipe+poll baseline", err);
		goto out;
	}
	printf("%-52s p50 %7.2f us  p99 %7.2f us"
	       "  %8.0f round trips/s\n", "child->broker->helper->child, pipes+poll (baseline)", base.p50_us, base.p99_us, base.rps);
	print_cpu(&base.cpu);
	if ((err = broker_rt(o, &rt))) {
		fail("ferry_call via the broker", err);
		goto out;
	}
	printf("%-52s p50 %7.2f us  p99 %7.2f us"
	       "  %8.0f round trips/s  (%.1fx baseline)\n", "ferry_call via the broker (same path)", rt.p50_us, rt.p99_us, rt.rps,
	       base.p50_us / rt.p50_us);
	print_cpu(&rt.cpu);
	if (o->sv.ns) {
		/* What the transport adds to a request that takes svc_us itself. */
		printf("service %.0f us (%s): overhead p50 %.2f us (pipes+poll %.2f us, %.1fx less), "
		       "p99 %.2f us (pipes+poll %.2f us)\n", svc_us, o->sv.sleep ? "sleeping" : "busy",
		       rt.p50_us - svc_us, base.p50_us - svc_us,
		       (base.p50_us - svc_us) / (rt.p50_us - svc_us), rt.p99_us - svc_us,
		       base.p99_us - svc_us);
	}
	if ((err = bench_pipe_pair(o->n, deadline(o), &pbase))) {
		fail("pipe pair baseline", err);
		goto out;
	}
	printf("%-52s p50 %7.2f us  p99 %7.2f us\n",
	       "pipe pair, poll (baseline)", pbase.p50_us, pbase.p99_us);
	if ((err = pair_rt(o, &pair))) {
		fail("ferry channel pair", err);
		goto out;
	}
	printf("%-52s p50 %7.2f us  p99 %7.2f us"
	       "  (%.1fx pipe pair)\n", "ferry channel pair", pair.p50_us, pair.p99_us, pbase.p50_us / pair.p50_us);
	if (o->agg) {
		if ((err = broker_steady(o, o->agg_children, o->agg_helpers, &agg))) {
			fail("aggregate run", err);
			goto out;
		}
		printf("aggregate, %u children x %u helpers, windows full  %10.0f round trips/s "
		       "(dispatch CPU %s, %.2f wakes/reply)\n", o->agg_children, o->agg_helpers,
		       agg.rps, agg.dispatch_cpu >= 0 ? "reserved" : "shared", agg.bells_per_req);
	}
	printf("bench=msg rtt_p50_us=%.2f rtt_p99_us=%.2f baseline_rtt_p50_us=%.2f "
	       "baseline_rtt_p99_us=%.2f speedup=%.2f rps=%.0f baseline_rps=%.0f children=%u "
	       "helpers=%u pair_rtt_p50_us=%.2f pair_baseline_p50_us=%.2f pair_speedup=%.2f "
	       "agg_rps=%.0f agg_children=%u agg_helpers=%u agg_dispatch_cpu=%d ",
	       rt.p50_us, rt.p99_us, base.p50_us, base.p99_us, base.p50_us / rt.p50_us, rt.rps,
	       base.rps, o->children, o->helpers, pair.p50_us, pbase.p50_us,
	       pbase.p50_us / pair.p50_us, o->agg ? agg.rps : 0, o->agg ? o->agg_children : 0,
	       o->agg ? o->agg_helpers : 0, agg.dispatch_cpu);
	/* Same line: the last line is the one scripts read. */
	printf("service_us=%.0f service=%s overhead_p50_us=%.2f "
	       "baseline_overhead_p50_us=%.2f overhead_p99_us=%.2f baseline_overhead_p99_us=%.2f "
	       "overhead_ratio=%.2f cpu_child_us=%.2f cpu_dispatch_us=%.2f cpu_helper_us=%.2f "
	       "baseline_cpu_child_us=%.2f baseline_cpu_dispatch_us=%.2f baseline_cpu_helper_us=%.2f\n",
	       svc_us, o->sv.sleep ? "sleep" : "busy", rt.p50_us - svc_us, base.p50_us - svc_us,
	       rt.p99_us - svc_us, base.p99_us - svc_us, (base.p50_us - svc_us) / (rt.p50_us - svc_us),
	       rt.cpu.child_us, rt.cpu.dispatch_us, rt.cpu.helper_us, base.cpu.child_us,
	       base.cpu.dispatch_us, base.cpu.helper_us);
	fflush(stdout);
	rc = 0;
	if (o->plot) {
		const struct bench_lat *l[4] = { &base, &rt, &pbase, &pair };

		rc = plot_latency(o->plot, l) ? 1 : 0;
	}
out:
	free(base.t);
	free(rt.t);
	free(pbase.t);
	free(pair.t);
	return rc;
}

static void msg_usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-bench msg [options]\n"
		"  -n N             round trips per child per latency run (default 20000, >= 100)\n"
		"  -t, --seconds S  latency runs stop after S seconds at most (default: when\n"
		"                   their -n round trips are done); the aggregate and --scale\n"
		"                   runs measure S seconds of steady state (default 1)\n"
		"  -c, --children N children in the round-trip runs (default 1, at most %u)\n"
		"  -h, --helpers N  helpers in the round-trip runs (default 1)\n"
		"  -w, --window K   requests outstanding per child (default: the library's)\n"
		"  -d, --depth D    requests queued at one helper (default: the library's)\n"
		"  --spin-ns NS     spin this long before sleeping (default: the library's,\n"
		"                   $FERRY_SPIN_NS; 0 sleeps at once)\n"
		"  --sleep          the same as --spin-ns 0\n"
		"  --service-us N   each request takes the helper N us (busy: spins on the\n"
		"                   clock), in both ferry's and the pipes' runs; the overhead\n"
		"                   printed is the round trip minus N\n"
		"  --service-sleep  the helper sleeps its N us instead of spinning\n"
		"  --agg CxH        children x helpers of the aggregate run (default 32x4)\n"
		"  --no-agg         skip the aggregate run\n"
		"  --scale          only the broker's CPU per request at 4, 16, 64, 256 children\n"
		"  --scale-max N    --scale up to N children: 256 (default), 1024 or 4096\n"
		"  --rounds R       --scale: medians over R rounds of every count (default 3)\n"
		"  --plot F         draw the round-trip distributions into F (.png or .svg)\n"
		"  --help           this text\n"
		"Measures child->broker->helper->broker->child round trips through ferry and\n"
		"through pipes+poll (the baseline, same path, same run), a ferry channel pair\n"
		"against a pipe pair, and the aggregate rate of C children x H helpers.\n"
		"The last line is key=value pairs; speedup = baseline p50 / ferry p50.\n",
		BENCH_CHILDREN_MAX);
}

static int parse_uint(const char *s, unsigned int min, unsigned int max, unsigned int *v)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(s, &end, 0);
	if (errno || end == s || *end || *s == '-' || x < min || x > max)
		return -1;
	*v = (unsigned int)x;
	return 0;
}

int ferry_bench_msg(int argc, char **argv)
{
	struct msg_opts o = {
		.n = 20000, .children = 1, .helpers = 1, .agg_children = 32, .agg_helpers = 4,
		.spin_ns = UINT64_MAX, .agg = true, .rounds = 3, .scale_max = 256,
	};
	static const struct option longs[] = {
		{ "seconds", required_argument, NULL, 't' },
		{ "children", required_argument, NULL, 'c' },
		{ "helpers", required_argument, NULL, 'h' },
		{ "window", required_argument, NULL, 'w' },
		{ "depth", required_argument, NULL, 'd' },
		{ "spin-ns", required_argument, NULL, 'S' },
		{ "sleep", no_argument, NULL, 'Z' },
		{ "service-us", required_argument, NULL, 'U' },
		{ "service-sleep", no_argument, NULL, 'Y' },
		{ "agg", required_argument, NULL, 'A' },
		{ "no-agg", no_argument, NULL, 'N' },
		{ "scale", no_argument, NULL, 's' },
		{ "scale-max", required_argument, NULL, 'M' },
		{ "rounds", required_argument, NULL, 'R' },
		{ "plot", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	const char *bad = NULL;
	int opt;

	while (!bad && (opt = getopt_long(argc, argv, "n:t:c:h:w:d:", longs, NULL)) != -1) {
		char *end;

		switch (opt) {
		case 'n': bad = parse_uint(optarg, 100, 100000000, &o.n) ? "-n" : NULL; break;
		case 'c':
			bad = parse_uint(optarg, 1, BENCH_CHILDREN_MAX, &o.children) ? "--children" : NULL;
			break;
		case 'h': bad = parse_uint(optarg, 1, 1024, &o.helpers) ? "--helpers" : NULL; break;
		case 'w': bad = parse_uint(optarg, 1, 65536, &o.window) ? "--window" : NULL; break;
		case 'd': bad = parse_uint(optarg, 1, 1024, &o.depth) ? "--depth" : NULL; break;
		case 't':
			o.seconds = strtod(optarg, &end);
			bad = end == optarg || *end || !(o.seconds > 0 && o.seconds <= 3600) ?
				"--seconds" : NULL;
			break;
		case 'S':
			errno = 0;
			o.spin_ns = strtoull(optarg, &end, 0);
			bad = errno || end == optarg || *end || *optarg == '-' ||
			      o.spin_ns == UINT64_MAX ? "--spin-ns" : NULL;
			break;
		case 'Z': o.spin_ns = 0; break;
		case 'U': {
			unsigned int us;

			bad = parse_uint(optarg, 0, 10000000, &us) ? "--service-us" : NULL;
			o.sv.ns = (uint64_t)us * 1000;
			break;
		}
		case 'Y': o.sv.sleep = true; break;
		case 'A':
			if (sscanf(optarg, "%ux%u", &o.agg_children, &o.agg_helpers) != 2 ||
			    !o.agg_children || o.agg_children > 65536 || !o.agg_helpers ||
			    o.agg_helpers > 1024 || strspn(optarg, "0123456789x") != strlen(optarg))
				bad = "--agg";
			break;
		case 'N': o.agg = false; break;
		case 's': o.scale = true; break;
		case 'M':
			o.scale_max = (unsigned int)strtoul(optarg, NULL, 0);
			if (o.scale_max < 256 || o.scale_max > 4096) {
				fprintf(stderr, "ferry-bench msg: --scale-max wants 256..4096\n");
				return 2;
			}
			break;
		case 'R':
			bad = parse_uint(optarg, 1, MAX_ROUNDS, &o.rounds) ? "--rounds" : NULL;
			break;
		case 'P': o.plot = optarg; break;
		case 'H': msg_usage(stdout); return 0;
		default: msg_usage(stderr); return 2;
		}
	}
	if (bad) {
		fprintf(stderr, "ferry-bench msg: bad value for %s: '%s' (see --help)\n", bad, optarg);
		return 2;
	}
	if (optind < argc) {
		fprintf(stderr, "ferry-bench msg: unexpected argument '%s' (see --help)\n",
			argv[optind]);
		return 2;
	}
	if (o.plot && bench_plot_check(o.plot))
		return 2;
	printf("# ferry-bench msg%s: %ld CPUs, spin %s", o.scale ? " --scale" : "",
	       sysconf(_SC_NPROCESSORS_ONLN), o.spin_ns == UINT64_MAX ? "library default" : "");
	if (o.spin_ns != UINT64_MAX)
		printf("%llu ns", (unsigned long long)o.spin_ns);
	if (!o.scale)
		printf(", %u round trips per child per run, %u children x %u helpers",
		       o.n, o.children, o.helpers);
	if (o.sv.ns)
		printf(", service %llu us %s", (unsigned long long)(o.sv.ns / 1000),
		       o.sv.sleep ? "sleeping" : "busy");
	printf("\n");
	fflush(stdout);
	return o.scale ? run_scale(&o) : run_msg(&o);
}
