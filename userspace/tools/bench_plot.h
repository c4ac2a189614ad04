/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* ferry-bench --plot: curves drawn by gnuplot into a .png or .svg. */
#ifndef FERRY_BENCH_PLOT_H
#define FERRY_BENCH_PLOT_H

#include <stdbool.h>
#include <stddef.h>

struct plot_series {
	const char *name;
	const double *x, *y;
	size_t n;
};

struct plot {
	const char *title, *xlabel, *ylabel;
	bool logx, logy;
};

/* The program named in messages ("ferry-bench" unless set). */
extern const char *bench_plot_who;

/* Whether @path can be drawn (extension, gnuplot there): 0 or -errno and
 * a line on stderr.  Benchmarks ask before they run, not after. */
int bench_plot_check(const char *path);
/* 0, or -errno with a line on stderr (no gnuplot, unknown extension...). */
int bench_plot(const char *path, const struct plot *p, const struct plot_series *s, size_t ns);
/*
 * The distribution of @n samples (ns) as a curve: the fraction of them in
 * each of 20 log-spaced bins per decade, x in microseconds.  Fills @x/@y
 * (BENCH_HIST_BINS each) and returns how many points.
 */
#define BENCH_HIST_BINS 160
size_t bench_hist(const unsigned long long *ns, size_t n, double *x, double *y);

#endif
