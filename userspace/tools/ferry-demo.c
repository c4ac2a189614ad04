// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-demo: the main job, over ferry and over the classic design, in
 * one run.  N children make batches of images; M servers run a small
 * classifier on them (on their GPU through CUDA where there is one, on
 * the CPU otherwise) and send the logits back.  First over ferry
 * (demo_ferry.c: the tensors stay in each child's region), then the same
 * job over the seed design (demo_classic.c: a broker with pipes, tensors
 * copied through them); then both side by side: throughput, round trips,
 * the transport's share of them (round trip less the model's own time,
 * measured in the server), CPU spent in transport and bytes copied,
 * counted.  Each child checks every result against the model run on the
 * CPU once the clock has stopped; the exit status is 0 only if every
 * result on both paths matched.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_plot.h"
#include "demo_paths.h"
#include "ferry.h"

static struct demo_cfg cfg;
static const char *device;	/* where the model ran, in words */

/* --- the clock, shared by both paths --- */

/* The 1-minute load average, or -1: other work on the machine skews the
 * comparison (the paths run one after the other), so it is shown. */
static double load_average(void)
{
	FILE *f = fopen("/proc/loadavg", "r");
	double l = -1;

	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

void demo_say_start(const char *path, const char *how)
{
	printf("%-8s %s (load average %.2f)\n", path, how, load_average());
	fflush(stdout);
}

/* One line per interval: its requests/s and its own p50/p99 (not the
 * run's so far, which settles after a second and stops moving). */
static void progress(const struct demo_cfg *c, struct demo_run *r, const char *path, bool tty,
		     uint64_t t0, uint64_t *last_req, uint64_t *last_t)
{
	static uint64_t prev[DEMO_HBINS];
	uint64_t now = demo_now_ns(), req = atomic_load(&r->requests);
	double dt = (now - *last_t) / 1e9, p50, p99;

	if (*last_req == 0)
		memset(prev, 0, sizeof(prev));	/* a new path's run */
	demo_hist_since(r, prev, &p50, &p99);
	if (c->json)
		return;
	fprintf(stderr, "%s[%5.1fs] %-8s %9llu requests %8.0f/s  p50 %9.1f us  p99 %9.1f us%s",
		tty ? "\r" : "", (now - t0) / 1e9, path, (unsigned long long)req,
		dt > 0 ? (req - *last_req) / dt : 0, p50, p99, tty ? "   " : "\n");
	fflush(stderr);
	*last_req = req;
	*last_t = now;
}

/* Whether @pid (0: none to watch) is still running; it stays reapable. */
static bool alive(pid_t pid)
{
	siginfo_t si = { 0 };

	return !pid || (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
			si.si_pid == 0);
}

/* Until @pred holds for @r, @broker ends, or @timeout_ns passes. */
static bool wait_for(struct demo_run *r, bool (*pred)(const struct demo_run *, unsigned int),
		     unsigned int arg, pid_t broker, uint64_t timeout_ns)
{
	uint64_t end = demo_now_ns() + timeout_ns;

	while (!pred(r, arg)) {
		if (!alive(broker) || demo_now_ns() > end)
			return false;
		usleep(1000);
	}
	return true;
}

static bool all_ready(const struct demo_run *r, unsigned int n)
{
	return atomic_load(&r->ready) >= n;
}

static bool all_drained(const struct demo_run *r, unsigned int n)
{
	return atomic_load(&r->drained) >= n;
}

double demo_timed_part(const struct demo_cfg *c, struct demo_run *r, const char *path,
		       pid_t broker)
{
	bool tty = isatty(STDERR_FILENO);
	uint64_t t0, last_t, last_req = 0, end;

	/* The classic servers load their model (CUDA) first, as ferry's do. */
	if (broker && !wait_for(r, all_ready, c->helpers + 1, broker, 120ull * 1000000000))
		return -1;
	t0 = last_t = demo_now_ns();
	end = t0 + (uint64_t)c->seconds * 1000000000u;
	atomic_store(&r->go, 1);
	while (demo_now_ns() < end && alive(broker)) {
		uint64_t step = tty ? 250000000u : 1000000000u, left = end - demo_now_ns();

		usleep((useconds_t)((left < step ? left : step) / 1000));
		progress(c, r, path, tty, t0, &last_req, &last_t);
	}
	atomic_store(&r->stop, 1);
	/* Each child drains its window; the clock stops with the last one. */
	if (!wait_for(r, all_drained, c->children, broker, 120ull * 1000000000))
		return -1;
	if (tty && !c->json)
		fputc('\n', stderr);
	return (demo_now_ns() - t0) / 1e9;
}

/* --- options --- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-demo [options]\n"
		"  --children N   child processes (default: sized to the machine)\n"
		"  --helpers M    helper (model server) processes (default: 2 per GPU, or CPUs/2)\n"
		"  --seconds S    how long each path sends requests (default 5)\n"
		"  --size B       images per request (3x32x32 floats each; default 8)\n"
		"  --backend X    auto, kmod or memfd (default auto)\n"
		"  --no-classic   run over ferry only, not also over pipes\n"
		"  --plot F       draw both paths' round-trip distributions into F (.png or .svg)\n"
		"  --json         the summary as one JSON object on stdout\n"
		"  --stats PATH   serve the ferry broker's counters at PATH (ferryctl stats)\n"
		"  --inject-fault N  servers spoil every Nth result (to see the check fail)\n"
		"The same job runs over ferry, then over the classic design (a broker\n"
		"with pipes to children and servers, tensors copied through them), and\n"
		"both are printed side by side; the last line is key=value.  Every\n"
		"result is checked in the child against the model run on the CPU,\n"
		"once the clock has stopped; the exit status is 0 only if all matched.\n");
}

static const char *opt_name(int o)
{
	return o == 'c' ? "children" : o == 'm' ? "helpers" : o == 's' ? "seconds" :
	       o == 'b' ? "size" : "inject-fault";
}

static int parse_number(int o, const char *arg)
{
	char *end = NULL;
	unsigned long v = arg ? strtoul(arg, &end, 10) : 0;

	if (!arg || !*arg || *end || v == 0 || v > 100000 || *arg == '-') {
		fprintf(stderr, "ferry-demo: --%s wants a number from 1 to 100000, not '%s'\n",
			opt_name(o), arg ? arg : "");
		return -EINVAL;
	}
	if (o == 'f') cfg.inject = (unsigned int)v;
	if (o == 'c') cfg.children = (unsigned int)v;
	if (o == 'm') cfg.helpers = (unsigned int)v;
	if (o == 's') cfg.seconds = (unsigned int)v;
	if (o == 'b') cfg.batch = (unsigned int)v;
	return 0;
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
		{ "no-classic", no_argument, NULL, 'n' },
		{ "plot", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int o, err;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': case 'm': case 's': case 'b': case 'f':
			if (parse_number(o, optarg))
				return -EINVAL;
			break;
		case 'k':
			err = ferry_backend_parse(optarg);
			cfg.backend = err;
			if (err < 0) {
				fprintf(stderr, "ferry-demo: --backend wants auto, kmod or memfd, "
					"not '%s'\n", optarg);
				return -EINVAL;
			}
			break;
		case 'j': cfg.json = true; break;
		case 'p': cfg.stats_path = optarg; break;
		case 'n': cfg.classic = false; break;
		case 'P': cfg.plot = optarg; break;
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
	/* Asked before the run, not after it. */
	if (cfg.plot && bench_plot_check(cfg.plot))
		return -EINVAL;
	return 0;
}

/* Children, helpers and the device, sized to this machine. */
static void size_to_machine(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (ncpu < 1)
		ncpu = 1;
	/* Counted by a throwaway process: CUDA must stay out of this one. */
	cfg.ngpus = ferry_gpu_count_forked();
	cfg.gpu = cfg.ngpus > 0 && demo_gpu_built();
	if (!cfg.helpers)
		cfg.helpers = cfg.gpu ? 2u * (unsigned int)cfg.ngpus :
				(ncpu >= 4 ? (unsigned int)ncpu / 2 : 1);
	if (!cfg.children)
		cfg.children = cfg.gpu ? (ncpu * 2 < 32 ? (unsigned int)ncpu * 2 : 32) :
				 (ncpu >= 2 ? (unsigned int)ncpu : 2);
	device = cfg.gpu ? "GPU (CUDA)" : cfg.ngpus > 0 ? "CPU (GPU found, but built without nvcc)" :
		 "CPU (no GPU found)";
}

/* --- the summary --- */

struct path_run {
	struct demo_run *r;
	struct demo_path_info info;
	struct demo_result res;
	int err;
};

static bool path_ok(const struct path_run *p)
{
	const struct demo_result *x = &p->res;

	return !p->err && x->ran && p->info.failed == 0 && p->info.bad_desc == 0 && x->bad == 0 &&
	       x->errors == 0 && x->requests > 0 && x->verified == x->requests;
}

static double total_cpu(const struct demo_result *x)
{
	return x->cpu_child_us + x->cpu_broker_us + x->cpu_server_us;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

/* One row: a label, then the ferry and classic columns. */
static void row(const char *label, const char *fmt, double f, double k, bool classic)
{
	char a[32], b[32];

	snprintf(a, sizeof(a), fmt, f);
	snprintf(b, sizeof(b), fmt, k);
	printf("  %-40s %14s %14s\n", label, a, classic ? b : "-");
}

static void print_table(const struct path_run *f, const struct path_run *k, bool ok)
{
	const struct demo_result *a = &f->res, *b = &k->res;
	bool c = b->ran;

	printf("\n  %-40s %14s %14s\n", "", "ferry", "classic");
	printf("  %-40s %14s %14s\n", "transport", f->info.backend, c ? "pipes+poll" : "-");
	row("requests", "%.0f", (double)a->requests, (double)b->requests, c);
	row("throughput (requests/s)", "%.1f", a->rps, b->rps, c);
	row("tensor MB/s (in + out)", "%.1f", a->mbps, b->mbps, c);
	row("round trip p50 (us)", "%.1f", a->p50_us, b->p50_us, c);
	row("round trip p99 (us)", "%.1f", a->p99_us, b->p99_us, c);
	row("model time p50 (us, in the server)", "%.1f", a->model_p50_us, b->model_p50_us, c);
	row("transport+queue p50 (us, rtt - model)", "%.1f", a->over_p50_us, b->over_p50_us, c);
	row("transport+queue p99 (us, rtt - model)", "%.1f", a->over_p99_us, b->over_p99_us, c);
	row("reply leg p50 (us, model done -> child)", "%.1f", a->reply_p50_us, b->reply_p50_us, c);
	row("transport CPU/request: children (us)", "%.1f", a->cpu_child_us, b->cpu_child_us, c);
	row("transport CPU/request: broker (us)", "%.1f", a->cpu_broker_us, b->cpu_broker_us, c);
	row(cfg.gpu ? "transport CPU/request: servers (us)" :
	    "transport CPU/request: servers-model (us)", "%.1f", a->cpu_server_us,
	    b->cpu_server_us, c);
	row("transport CPU/request: total (us)", "%.1f", total_cpu(a), total_cpu(b), c);
	row("bytes copied (read/write/memcpy)", "%.0f", (double)a->copied, (double)b->copied, c);
	row("bytes copied per request", "%.0f", ratio((double)a->copied, (double)a->requests),
	    ratio((double)b->copied, (double)b->requests), c);
	if (cfg.gpu)
		row("bytes host<->GPU (DMA, both need it)", "%.0f", (double)a->dma, (double)b->dma, c);
	row("results checked", "%.0f", (double)a->verified, (double)b->verified, c);
	row("results wrong or failed", "%.0f", (double)(a->bad + a->errors),
	    (double)(b->bad + b->errors), c);
	if (c)
		printf("  %-40s %.2fx throughput, %.2fx less transport+queue p50, "
		       "%.2fx less transport CPU\n", "ferry vs classic", ratio(a->rps, b->rps),
		       ratio(b->over_p50_us, a->over_p50_us), ratio(total_cpu(b), total_cpu(a)));
	printf("  %-40s %s\n", "verdict", ok ? "OK: every result verified" :
	       "FAILED: see the counts above");
}

static void print_path_json(const char *name, const struct path_run *p)
{
	const struct demo_result *x = &p->res;

	printf("\"%s\":{\"requests\":%llu,\"requests_per_s\":%.1f,\"mb_per_s\":%.1f,"
	       "\"p50_us\":%.1f,\"p99_us\":%.1f,\"model_p50_us\":%.1f,\"overhead_p50_us\":%.1f,"
	       "\"overhead_p99_us\":%.1f,\"reply_p50_us\":%.1f,\"cpu_child_us\":%.2f,"
	       "\"cpu_broker_us\":%.2f,\"cpu_server_us\":%.2f,\"bytes_copied\":%llu,"
	       "\"bytes_dma\":%llu,\"verified\":%llu,\"bad_results\":%llu,\"errors\":%llu,"
	       "\"failed_children\":%d,\"ok\":%s}", name, (unsigned long long)x->requests, x->rps,
	       x->mbps, x->p50_us, x->p99_us, x->model_p50_us, x->over_p50_us, x->over_p99_us,
	       x->reply_p50_us, x->cpu_child_us, x->cpu_broker_us, x->cpu_server_us,
	       (unsigned long long)x->copied, (unsigned long long)x->dma,
	       (unsigned long long)x->verified, (unsigned long long)x->bad,
	       (unsigned long long)x->errors, p->info.failed, path_ok(p) ? "true" : "false");
}

static void print_json(const struct path_run *f, const struct path_run *k, bool ok)
{
	printf("{\"backend\":\"%s\",\"device\":\"%s\",\"children\":%u,\"helpers\":%u,"
	       "\"images_per_request\":%u,\"seconds\":%u,", f->info.backend,
	       cfg.gpu ? "gpu" : "cpu", cfg.children, cfg.helpers, cfg.batch, cfg.seconds);
	print_path_json("ferry", f);
	if (k->res.ran) {
		putchar(',');
		print_path_json("classic", k);
		printf(",\"ratio_rps\":%.3f", ratio(f->res.rps, k->res.rps));
	}
	printf(",\"bad_results\":%llu,\"ok\":%s}\n",
	       (unsigned long long)(f->res.bad + f->res.errors + k->res.bad + k->res.errors),
	       ok ? "true" : "false");
}

/* The last line: key=value, for scripts. */
static void print_keys(const struct path_run *f, const struct path_run *k, bool ok)
{
	const struct demo_result *a = &f->res, *b = &k->res;

	printf("demo=%s backend=%s children=%u helpers=%u images=%u seconds=%u ferry_rps=%.1f "
	       "ferry_p50_us=%.1f ferry_p99_us=%.1f ferry_overhead_p50_us=%.1f "
	       "ferry_cpu_us=%.2f ferry_copied_bytes=%llu", cfg.gpu ? "gpu" : "cpu",
	       f->info.backend, cfg.children, cfg.helpers, cfg.batch, cfg.seconds, a->rps,
	       a->p50_us, a->p99_us, a->over_p50_us, total_cpu(a), (unsigned long long)a->copied);
	if (b->ran)
		printf(" classic_rps=%.1f classic_p50_us=%.1f classic_p99_us=%.1f "
		       "classic_overhead_p50_us=%.1f classic_cpu_us=%.2f classic_copied_bytes=%llu "
		       "ratio_rps=%.3f ratio_overhead_p50=%.3f ratio_cpu=%.3f", b->rps, b->p50_us,
		       b->p99_us, b->over_p50_us, total_cpu(b), (unsigned long long)b->copied,
		       ratio(a->rps, b->rps), ratio(b->over_p50_us, a->over_p50_us),
		       ratio(total_cpu(b), total_cpu(a)));
	else
		printf(" classic=%s", cfg.classic ? "not_run" : "skipped");
	printf(" verified=%llu bad=%llu ok=%d\n", (unsigned long long)(a->verified + b->verified),
	       (unsigned long long)(a->bad + a->errors + b->bad + b->errors), ok ? 1 : 0);
}

/* --plot: round trips and their transport share, both paths. */
static int plot(const struct path_run *f, const struct path_run *k)
{
	static double x[4][BENCH_HIST_BINS], y[4][BENCH_HIST_BINS];
	const struct demo_result *res[4] = { &f->res, &k->res, &f->res, &k->res };
	static const char *const what[4] = {
		"ferry: round trip", "classic (pipes): round trip",
		"ferry: transport+queue (rtt - model)", "classic: transport+queue (rtt - model)",
	};
	char names[4][96];
	struct plot_series s[4];
	size_t ns = 0;
	const struct plot p = {
		.title = "ferry-demo: the same job over ferry and over pipes, share of requests per bin",
		.xlabel = "microseconds (log)", .ylabel = "share of requests", .logx = true,
	};

	for (int i = 0; i < 4; i++) {
		const uint64_t *v = i < 2 ? res[i]->rtt_ns : res[i]->over_ns;

		if (!res[i]->ran || !res[i]->n)
			continue;
		snprintf(names[ns], sizeof(names[ns]), "%s (median %.1f us)", what[i],
			 i < 2 ? res[i]->p50_us : res[i]->over_p50_us);
		s[ns] = (struct plot_series){ .name = names[ns], .x = x[ns], .y = y[ns] };
		s[ns].n = bench_hist((const unsigned long long *)v, res[i]->n, x[ns], y[ns]);
		ns++;
	}
	return bench_plot(cfg.plot, &p, s, ns);
}

static void run_path(struct path_run *p, bool classic)
{
	p->r = demo_run_map(cfg.children);
	if (!p->r) {
		p->err = -ENOMEM;
		perror("ferry-demo");
		return;
	}
	p->err = classic ? demo_classic_run(&cfg, p->r, &p->info) :
		 demo_ferry_run(&cfg, p->r, &p->info);
	if (p->err && p->err != -ETIMEDOUT)
		fprintf(stderr, "ferry-demo: the %s path failed: %s\n",
			classic ? "classic" : "ferry", strerror(-p->err));
	if (p->err == -ETIMEDOUT)
		fprintf(stderr, "ferry-demo: the %s path's children did not finish in time\n",
			classic ? "classic" : "ferry");
	if (p->info.seconds > 0 && demo_result_make(&cfg, p->r, p->info.seconds, &p->res))
		p->err = -ENOMEM;
}

int main(int argc, char **argv)
{
	static struct demo_weights weights;
	struct path_run f = { 0 }, k = { 0 };
	bool ok;

	bench_plot_who = "ferry-demo";
	cfg.seconds = 5;
	cfg.batch = 8;
	cfg.window = 4;
	cfg.backend = FERRY_BACKEND_AUTO;
	cfg.classic = true;
	if (parse(argc, argv))
		return 2;
	size_to_machine();
	demo_weights_make(&weights);
	cfg.w = &weights;
	if (!cfg.json)
		printf("ferry-demo: %u children, %u helpers, model on %s, %u images (%.1f KiB) "
		       "per request, window %u, %u s per path\n", cfg.children, cfg.helpers,
		       device, cfg.batch, demo_in_bytes(&cfg) / 1024.0, cfg.window, cfg.seconds);
	run_path(&f, false);
	if (cfg.classic && !f.err)
		run_path(&k, true);
	ok = path_ok(&f) && (!cfg.classic || path_ok(&k));
	if (!f.info.backend[0])	/* the ferry broker did not start */
		snprintf(f.info.backend, sizeof(f.info.backend), "none");
	if (cfg.json) {
		print_json(&f, &k, ok);
	} else {
		if (f.res.ran)	/* a table of zeros would say nothing */
			print_table(&f, &k, ok);
		print_keys(&f, &k, ok);
	}
	if (cfg.plot && (f.res.ran || k.res.ran) && plot(&f, &k))
		ok = false;
	demo_result_free(&f.res);
	demo_result_free(&k.res);
	demo_run_unmap(f.r);
	demo_run_unmap(k.r);
	return ok ? 0 : 1;
}
