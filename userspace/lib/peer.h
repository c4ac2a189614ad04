/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The non-broker ends: children, attached services, helpers. */
#ifndef FERRY_PEER_H
#define FERRY_PEER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "chan.h"
#include "ferry.h"
#include "proto.h"

struct ferry_child {
	unsigned int index;
	bool attached;
	int ctl;			/* control socket to the broker */
	struct ferry_rctx *rc;
	struct ferry_region *region;	/* [channel | heap] */
	void *base;
	size_t size;
	uint64_t heap_off;
	struct ferry_chan ch;
	int efd[2];
	unsigned int window, outstanding;
	pthread_mutex_t heap_lock;
};

struct hregion {
	struct ferry_region *r;
	uint8_t *base;
	size_t size;
	uint64_t heap_off;
	bool pinned;			/* registered with CUDA */
};

/* A reply waiting for the work queued on a stream (an event) to finish. */
struct hdefer {
	void *event;			/* CUevent, made once */
	struct ferry_desc rep;
};

struct ferry_helper {
	unsigned int index;
	int ctl;
	struct ferry_rctx *rc;
	struct ferry_region *chanreg;
	struct ferry_chan ch;
	int efd[2];
	struct hregion *regions;
	unsigned int nregions;
	uint64_t rejected;		/* ferry_helper_data() refusals */
	const struct ferry_desc *cur;	/* the request being handled */
	bool deferred_cur;		/* ... and its reply was deferred */
	/* GPU (helper_gpu.c); gpu < 0: none */
	int gpu;
	struct ferry_cuda *cu;
	void **streams;			/* CUstreams */
	unsigned int nstreams, next_stream;
	struct hdefer *defer;		/* [0, ndefer) pending, oldest first */
	unsigned int ndefer, ndefer_max;
	unsigned int npinned, pin_failed;
};

/* helper_gpu.c */
struct ferry_broker;
int ferry_hgpu_init(struct ferry_helper *h, const struct ferry_broker *b);
void ferry_hgpu_pin(struct ferry_helper *h, struct hregion *r);
void ferry_hgpu_unpin(struct ferry_helper *h, struct hregion *r);
void ferry_hgpu_exit(struct ferry_helper *h);
unsigned int ferry_hgpu_poll(struct ferry_helper *h, bool wait);

/*
 * Receive and apply a SETUP message on @ctl: open the backend it names,
 * map the region, attach the channel.  Fills *@region, *@ch, @efd.
 */
int ferry_peer_setup(int ctl, struct ferry_ctl *m, struct ferry_rctx **rc,
		     struct ferry_region **region, struct ferry_chan *ch, int efd[2]);

#endif /* FERRY_PEER_H */
