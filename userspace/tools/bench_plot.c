// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-bench --plot: the data go to a temporary file, one block per curve,
 * and gnuplot (Debian's gnuplot-nox) draws them; the terminal follows the
 * output's extension.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_plot.h"

const char *bench_plot_who = "ferry-bench";

size_t bench_hist(const unsigned long long *ns, size_t n, double *x, double *y)
{
	size_t count[BENCH_HIST_BINS] = { 0 }, pts = 0, lo = BENCH_HIST_BINS, hi = 0;

	/* Bin b holds [10^(b/20), 10^((b+1)/20)) ns: 1 ns to 10^8 ns. */
	for (size_t i = 0; i < n; i++) {
		double l = ns[i] ? 20 * log10((double)ns[i]) : 0;
		size_t b = l < 0 ? 0 : l >= BENCH_HIST_BINS ? BENCH_HIST_BINS - 1 : (size_t)l;

		count[b]++;
		lo = b < lo ? b : lo;
		hi = b > hi ? b : hi;
	}
	for (size_t b = lo; n && b <= hi; b++) {
		x[pts] = pow(10, (b + 0.5) / 20) / 1000;
		y[pts++] = (double)count[b] / n;
	}
	return pts;
}

static const char *terminal(const char *path)
{
	const char *dot = strrchr(path, '.');

	if (dot && strcmp(dot, ".png") == 0)
		return "pngcairo noenhanced size 960,540 font ',11'";
	if (dot && strcmp(dot, ".svg") == 0)
		return "svg noenhanced size 960,540 dynamic font ',11'";
	return NULL;
}

int bench_plot_check(const char *path)
{
	if (!terminal(path)) {
		fprintf(stderr, "%s: --plot %s: the name must end in .png or .svg\n", bench_plot_who,
			path);
		return -EINVAL;
	}
	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		fprintf(stderr, "%s: --plot needs gnuplot (apt-get install gnuplot-nox)\n",
			bench_plot_who);
		return -ENOENT;
	}
	return 0;
}

int bench_plot(const char *path, const struct plot *p, const struct plot_series *s, size_t ns)
{
	char data[] = "/tmp/ferry-plot-XXXXXX";
	const char *term = terminal(path);
	FILE *d, *g;
	int fd, rc = bench_plot_check(path);

	if (rc)
		return rc;
	fd = mkstemp(data);
	if (fd < 0 || !(d = fdopen(fd, "w")))
		return -errno;
	for (size_t k = 0; k < ns; k++) {
		for (size_t i = 0; i < s[k].n; i++)
			fprintf(d, "%.6g %.6g\n", s[k].x[i], s[k].y[i]);
		fprintf(d, "\n\n");	/* the next gnuplot "index" */
	}
	fclose(d);
	g = popen("gnuplot", "w");
	if (!g) {
		unlink(data);
		return -errno;
	}
	fprintf(g, "set terminal %s\nset output '%s'\nset title '%s'\n", term, path, p->title);
	fprintf(g, "set xlabel '%s'\nset ylabel '%s'\nset grid\nset key top right\n",
		p->xlabel, p->ylabel);
	if (p->logx)
		fprintf(g, "set logscale x\n");
	if (p->logy)
		fprintf(g, "set logscale y\n");
	fprintf(g, "plot ");
	for (size_t k = 0; k < ns; k++)
		fprintf(g, "%s'%s' index %zu with linespoints pt 7 ps 0.6 lw 2 title '%s'",
			k ? ", " : "", data, k, s[k].name);
	fprintf(g, "\n");
	rc = pclose(g);
	unlink(data);
	if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc)) {
		fprintf(stderr, "%s: gnuplot failed drawing %s\n", bench_plot_who, path);
		return -EIO;
	}
	return 0;
}
