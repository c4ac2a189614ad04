// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Where the broker's processes and memory go: the CPU the dispatch thread
 * keeps to itself, the CPUs and NUMA node each peer runs on, the GPU each
 * helper serves (helper h: GPU h % ngpus) and the node a child's region
 * is placed on (next to the GPU whose helpers serve it).  Policy only;
 * gpu_probe.c asks which GPUs there are.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <numa.h>

#include "broker_internal.h"

/* CPUs this process may run on (its peers inherit the mask). */
unsigned int ferry_cpus_usable(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned int)CPU_COUNT(&set);
	return 1;
}

/*
 * Decide which CPU the dispatch thread gets to itself.  Auto: only when
 * the peers would otherwise crowd it (oversubscribed) and enough CPUs are
 * left for them (4 or more in the mask); the last CPU of the mask, which
 * is the one least likely to be a housekeeping CPU.
 */
int ferry_place_dispatch_cpu(struct ferry_broker *b)
{
	const char *env = getenv("FERRY_DISPATCH_CPU");
	int want = b->o.dispatch_cpu, last = -1;
	cpu_set_t mine;

	b->dispatch_cpu = -1;
	if (env && *env) {
		char *end;
		long v;

		if (strcmp(env, "auto") == 0) {
			want = FERRY_CPU_AUTO;
		} else if (strcmp(env, "none") == 0) {
			want = FERRY_CPU_NONE;
		} else {
			v = strtol(env, &end, 10);
			if (*end || v < 0 || v >= CPU_SETSIZE) {
				fprintf(stderr, "ferry: FERRY_DISPATCH_CPU=%s: want auto, none "
					"or a CPU number\n", env);
				return -EINVAL;
			}
			want = (int)v;
		}
	}
	if (want == FERRY_CPU_NONE)
		return 0;
	if (want < FERRY_CPU_NONE || want >= CPU_SETSIZE)
		return -EINVAL;
	if (sched_getaffinity(0, sizeof(mine), &mine))
		return want == FERRY_CPU_AUTO ? 0 : -errno;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &mine))
			last = c;
	if (want == FERRY_CPU_AUTO) {
		if (!b->oversub || CPU_COUNT(&mine) < 4)
			return 0;
		want = last;
	} else if (!CPU_ISSET(want, &mine) || CPU_COUNT(&mine) < 2) {
		/* Asked for by number: say so rather than run somewhere else. */
		return -EINVAL;
	}
	b->dispatch_cpu = want;
	b->peer_cpus = mine;
	CPU_CLR(want, &b->peer_cpus);
	return 0;
}

int ferry_broker_dispatch_cpu(const struct ferry_broker *b)
{
	return b ? b->dispatch_cpu : -1;
}

void ferry_peer_affinity(const struct ferry_broker *b, int node)
{
	cpu_set_t set = b->peer_cpus;
	struct bitmask *cpus;

	if (b->dispatch_cpu < 0)
		sched_getaffinity(0, sizeof(set), &set);
	/* A helper stays on its GPU's node, where its CPUs allow any of it. */
	if (node >= 0 && numa_available() >= 0 && (cpus = numa_allocate_cpumask())) {
		cpu_set_t on_node;

		CPU_ZERO(&on_node);
		if (numa_node_to_cpus(node, cpus) == 0)
			for (unsigned int c = 0; c < cpus->size && c < CPU_SETSIZE; c++)
				if (numa_bitmask_isbitset(cpus, c) && CPU_ISSET(c, &set))
					CPU_SET(c, &on_node);
		numa_free_cpumask(cpus);
		if (CPU_COUNT(&on_node))
			set = on_node;
	}
	if (b->dispatch_cpu >= 0 || node >= 0)
		sched_setaffinity(0, sizeof(set), &set);
}

int ferry_helper_gpu_of(const struct ferry_broker *b, unsigned int h)
{
	if (!b->ngpus)
		return -1;
	return b->o.gpu >= 0 ? b->o.gpu : (int)(h % (unsigned int)b->ngpus);
}

int ferry_node_of_helper(const struct ferry_broker *b, unsigned int h)
{
	int g = ferry_helper_gpu_of(b, h);

	if (b->o.numa_node >= 0 || g < 0)
		return b->o.numa_node;
	return g < b->ngpus ? b->gpu_node[g] : -1;
}

int ferry_node_of_child(const struct ferry_broker *b, unsigned int i)
{
	/* Next to the GPU that serves it: with GPU i % ngpus's helpers. */
	if (b->o.numa_node >= 0 || !b->ngpus)
		return b->o.numa_node;
	return b->o.gpu >= 0 ? (b->o.gpu < b->ngpus ? b->gpu_node[b->o.gpu] : -1) :
			       b->gpu_node[i % (unsigned int)b->ngpus];
}

/*
 * The GPUs the helpers serve (none unless opts.gpu asks) and their nodes,
 * and the helper count that gives each GPU one.  0 or -errno (said on
 * stderr).
 */
int ferry_place_gpus(struct ferry_broker *b)
{
	if (b->o.gpu == FERRY_GPU_NONE)
		return 0;
	b->ngpus = ferry_gpu_probe(b->gpu_node);
	if (b->ngpus < 0)
		b->ngpus = 0;
	if (b->o.gpu >= 0 && b->o.gpu >= b->ngpus) {
		fprintf(stderr, "ferry: GPU %d asked for, %d found\n", b->o.gpu, b->ngpus);
		return -ENODEV;
	}
	/*
	 * Every GPU gets a helper: helper h serves GPU h % ngpus and
	 * child i is placed on GPU i % ngpus, so with fewer helpers
	 * than GPUs the children of a GPU without one were never
	 * served.  Start one per GPU at least, and say so.
	 */
	if (b->o.gpu == FERRY_GPU_AUTO && b->ngpus > (int)b->o.helpers &&
	    (b->o.flags & FERRY_HELPERS_EXACT)) {
		fprintf(stderr, "ferry: %d GPUs and exactly %u helper(s) asked for: "
			"the children of %d GPU(s) would have no helper\n",
			b->ngpus, b->o.helpers, b->ngpus - (int)b->o.helpers);
		return -EINVAL;
	}
	if (b->o.gpu == FERRY_GPU_AUTO && b->ngpus > (int)b->o.helpers) {
		fprintf(stderr, "ferry: %d GPUs, %u helper(s) asked for: starting %d, "
			"one per GPU\n", b->ngpus, b->o.helpers, b->ngpus);
		b->o.helpers = (unsigned int)b->ngpus;
		b->oversub = b->o.children + b->o.helpers + 1 > ferry_cpus_usable();
	}
	return 0;
}
