/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * ferry-demo's measurements, shared by its two paths (ferry and the
 * classic pipes design): what the job is (struct demo_cfg), what one run
 * counts in memory mapped before the fork (struct demo_run), a child's
 * side of it (timing every reply, keeping its logits to check once the
 * clock has stopped) and the summary both paths print (struct demo_result).
 */
#ifndef FERRY_DEMO_RUN_H
#define FERRY_DEMO_RUN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "demo_model.h"

struct demo_cfg {
	unsigned int children, helpers, seconds, batch, window;
	int backend;		/* enum ferry_backend */
	bool json, gpu, classic;
	int ngpus;
	unsigned int inject;	/* --inject-fault: spoil every Nth result */
	const char *stats_path;	/* --stats: the broker's counters socket */
	const char *plot;	/* --plot: the two distributions */
	const struct demo_weights *w;	/* made before fork: every process has them */
};

static inline size_t demo_in_bytes(const struct demo_cfg *c)
{
	return (size_t)c->batch * DEMO_IN * sizeof(float);
}

static inline size_t demo_out_bytes(const struct demo_cfg *c)
{
	return (size_t)c->batch * DEMO_OUT * sizeof(float);
}

/* The live histogram: 64 bins per octave from 1 us, so p50 moves by ~1%. */
#define DEMO_BINS_PER_OCTAVE 64
#define DEMO_HBINS (DEMO_BINS_PER_OCTAVE * 28)

/* One reply as the child saw it (ns). */
struct demo_sample {
	uint64_t rtt;		/* submit -> reply in the child */
	uint64_t model;		/* measured in the server around the model */
	uint64_t reply;		/* model done -> reply in the child */
};

/* What a child kept of its replies: all of them up to @keep, then a
 * uniform sample (reservoir), so the percentiles are exact in most runs. */
struct demo_child_lat {
	uint64_t seen, kept, rng;
};

struct demo_run {
	_Atomic int go, stop;			/* set by the main process */
	_Atomic unsigned int drained;		/* children past the timed part */
	_Atomic unsigned int ready;		/* classic: servers up, + 1 once all forked */
	_Atomic uint64_t requests, bad, errors, verified;
	_Atomic uint64_t copied;	/* bytes through read()/write()/memcpy */
	_Atomic uint64_t dma;		/* bytes host<->GPU (both paths have them) */
	_Atomic uint64_t model_cpu_ns;	/* CPU the model itself took in servers */
	_Atomic uint64_t child_cpu_ns;	/* children's timed part, less making images */
	_Atomic uint64_t hist[DEMO_HBINS];
	/* Filled at the end by whoever ran the broker: */
	uint64_t broker_cpu_ns;
	_Atomic uint64_t server_cpu_ns;
	int broker_err;
	unsigned int children, keep;
	struct demo_child_lat *lat;	/* [children], in the mapping */
	struct demo_sample *s;		/* [children * keep], in the mapping */
};

/* Zeroed shared memory for one path's run; NULL (errno) on failure. */
struct demo_run *demo_run_map(unsigned int children);
void demo_run_unmap(struct demo_run *r);

uint64_t demo_now_ns(void);
uint64_t demo_thread_cpu_ns(void);
uint64_t demo_process_cpu_ns(void);

/* The progress line's p50/p99 (us) of the round trips since the last
 * call: @prev (DEMO_HBINS counts, zeroed at first) is updated. */
void demo_hist_since(struct demo_run *r, uint64_t *prev, double *p50_us, double *p99_us);

/*
 * A child's side: demo_child_open() waits for the go, demo_child_images()
 * makes a request's images (its CPU time is the workload's, not the
 * transport's), demo_child_reply() records one reply (times, status) and
 * keeps its logits; demo_child_close() marks the end of the timed part,
 * then checks every kept reply against the CPU model.  The exit status
 * for the child: 0 only if every result matched.
 */
struct demo_child;
struct demo_child *demo_child_open(const struct demo_cfg *c, struct demo_run *r,
				   unsigned int idx);
void demo_child_images(struct demo_child *k, float *x, uint64_t seq);
void demo_child_reply(struct demo_child *k, uint64_t seq, const float *logits, int status,
		      uint64_t t0, uint64_t t_start, uint64_t t_end);
bool demo_child_stopping(const struct demo_child *k);
int demo_child_close(struct demo_child *k);

/*
 * A server's side: demo_serve_cpu() runs the model on the CPU for one
 * request and times it (wall, for the round trip; CPU, to take out of the
 * server's CPU); @spoil: a wrong result on purpose (--inject-fault).
 */
void demo_serve_cpu(const struct demo_cfg *c, struct demo_run *r, const float *x,
		    unsigned int n, float *y, bool spoil, uint64_t *t_start, uint64_t *t_end);
/* Whether this server's next result is to be spoiled (--inject-fault). */
bool demo_spoil_next(const struct demo_cfg *c);

/* What one path measured, for printing side by side. */
struct demo_result {
	bool ran, ok;
	const char *name;
	uint64_t requests, bad, errors, verified, copied, dma;
	double seconds, rps, mbps;
	double p50_us, p99_us;			/* round trip */
	double over_p50_us, over_p99_us;	/* round trip - model */
	double reply_p50_us;			/* model done -> child */
	double model_p50_us;
	double cpu_child_us, cpu_broker_us, cpu_server_us;	/* transport, per request */
	uint64_t *rtt_ns, *over_ns;	/* the samples, for the plot (malloc'd) */
	size_t n;
	int failed_children;
};

/* Summarise @r (a run of @seconds) into @out; 0 or -ENOMEM. */
int demo_result_make(const struct demo_cfg *c, struct demo_run *r, double seconds,
		     struct demo_result *out);
void demo_result_free(struct demo_result *out);

#endif
