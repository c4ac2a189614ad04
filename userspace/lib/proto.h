/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The broker's control protocol: small fixed-size messages on a
 * SOCK_SEQPACKET socket per peer (a socketpair for forked peers, the
 * accepted connection for attached services), carrying the fds a peer
 * needs through SCM_RIGHTS.  Everything received is validated before use.
 */
#ifndef FERRY_PROTO_H
#define FERRY_PROTO_H

#include <stdint.h>
#include <sys/types.h>

#include "ferry.h"

/* Internal descriptor ops (users' ops stay below FERRY_OP_FIRST_INTERNAL). */
#define FERRY_OP_FIRST_INTERNAL	0xff000000u
#define FERRY_OP_CTRL		0xff000001u	/* helper: read control messages up to arg[0] */
#define FERRY_OP_POOL_ALLOC	0xff000002u	/* child -> broker: len bytes of the pool */
#define FERRY_OP_POOL_FREE	0xff000003u	/* child -> broker: the block at offset */
/* child -> helper: copy (offset, len) of the child's region into (PUT) or
 * out of (GET) the child's pool block at arg[0]; the helper copies, on its
 * stream for a GPU pool, so that children never need CUDA. */
#define FERRY_OP_POOL_PUT	0xff000004u
#define FERRY_OP_POOL_GET	0xff000005u
/* helper -> broker, ahead of the reply to request @tag: the block at
 * offset (len bytes, from the helper's arena) is for that request's child
 * (ferry_helper_pool_alloc). */
#define FERRY_OP_POOL_GRANT	0xff000006u

/*
 * A helper's arena: the part of its pool from which it allocates outputs
 * for children without asking the broker (ferry_helper_pool_alloc).  Kept
 * at the end of the helper's channel region, written by the broker (which
 * owns the pool's offsets) and read by the helper: where the arena is, and
 * the blocks children freed, which the helper takes back before it
 * allocates.  Single producer (broker: head), single consumer (helper:
 * tail), on their own cache lines.
 */
#define FERRY_ARENA_RETURNS 4096
struct ferry_arena_shm {
	uint64_t off, size;		/* valid once @ready is 1 */
	uint32_t ready;
	uint8_t pad0[44];
	uint64_t head;			/* broker: returns written */
	uint8_t pad1[56];
	uint64_t tail;			/* helper: returns taken back */
	uint8_t pad2[56];
	/*
	 * Stream fences (GPU pools): the broker asks for epoch @fence_want
	 * (it holds blocks children freed since), the helper records an
	 * event on each of its streams and, once all have completed, says
	 * @fence_done: no work it queued before the ask still runs.
	 */
	uint64_t fence_want;		/* broker */
	uint8_t pad3[56];
	uint64_t fence_done;		/* helper */
	uint8_t pad4[56];
	uint64_t ret[FERRY_ARENA_RETURNS];	/* block offsets, pool-relative */
};
/* Its bytes at the end of the helper's channel region (whole pages). */
#define ferry_arena_shm_bytes() ferry_page_round(sizeof(struct ferry_arena_shm))

enum ferry_ctl_type {
	FERRY_CTL_HELLO = 1,		/* service -> broker: please attach me */
	FERRY_CTL_SETUP = 2,		/* broker -> peer: your channel (+region) */
	/* 3, 4: single-region ADD/DROP of protocol 2, replaced by REGIONS. */
	FERRY_CTL_REFUSED = 5,		/* broker -> service: -errno in @status */
	FERRY_CTL_POOL = 6,		/* helper -> broker: the pool it made */
	FERRY_CTL_READY = 7,		/* helper -> broker: init done, -errno in @status */
	FERRY_CTL_REGIONS = 8,		/* broker -> helper: struct ferry_ctl_regions */
};

/* SETUP's pool_op: what the peer does about the pool. */
enum ferry_pool_op {
	FERRY_POOL_OP_NONE = 0,		/* there is none */
	FERRY_POOL_OP_IMPORT = 1,	/* @pool describes it (its fd comes last) */
	FERRY_POOL_OP_CREATE = 2,	/* helper: make one like @pool, send it back */
	FERRY_POOL_OP_DESCRIBE = 3,	/* child: there is one (kind, size, device
					 * only): reach it through helpers */
};

#define FERRY_PROTO_MAGIC 0x46525259u	/* "FRRY" */
/* 2: SETUP names a region head the child must map (head_id).
 * 3: regions are announced to helpers in batches (FERRY_CTL_REGIONS).
 * 4: a helper's channel region ends in its arena page (ferry_arena_shm). */
#define FERRY_PROTO_VERSION 4
#define FERRY_CTL_MAX_FDS 4

struct ferry_ctl {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t index;		/* child index / helper index / region index */
	int32_t status;
	uint32_t backend;	/* enum ferry_backend */
	uint32_t bell_mode;	/* enum ferry_bell_mode */
	uint32_t nslots;	/* channel ring slots */
	uint32_t window;	/* child: outstanding requests allowed */
	uint64_t spin_ns;
	uint64_t chan_bytes;	/* channel occupies [0, chan_bytes) of its region */
	struct ferry_region_ref region;	/* fd field: index into the fds sent, or -1 */
	uint32_t nfds;		/* fds attached: [region memfd?] [efd0 efd1]? [pool fd?] */
	uint32_t pause_ns;	/* of spin_ns, spin this long before yielding */
	uint32_t pool_op;	/* enum ferry_pool_op */
	/*
	 * SETUP, kmod child: the region over [0, chan_bytes) of @region that it
	 * may pin (its futex words live there), to map over its start; 0: none.
	 */
	uint32_t head_id;
	struct ferry_pool_ref pool;	/* fd field: 1 if its fd is attached, else -1 */
};

/*
 * Broker -> helper, after SETUP: up to FERRY_CTL_BATCH child regions to map
 * or unmap, in order, memfds attached (one per ADD on the memfd backend).
 * Messages are numbered from 1 per helper incarnation; the FERRY_OP_CTRL
 * descriptor on the helper's channel says (arg[0]) how many have been
 * written before it, so a helper applies them before any request that
 * follows.  One message for 64 regions: start-up at 4096 children sends
 * 64 per helper instead of 4096.
 */
#define FERRY_CTL_BATCH 64
enum ferry_region_op { FERRY_REGION_ADD = 1, FERRY_REGION_DROP = 2 };

struct ferry_ctl_region {
	uint32_t index;		/* child slot */
	uint16_t op;		/* enum ferry_region_op */
	int16_t fd;		/* ADD: index into the message's fds, or -1 (kmod) */
	uint32_t id;		/* ADD: kmod region id */
	uint32_t reserved;	/* 0 */
	uint64_t size;		/* ADD: region bytes */
};

struct ferry_ctl_regions {
	uint32_t magic;
	uint16_t version;
	uint16_t type;		/* FERRY_CTL_REGIONS */
	uint32_t seq;		/* 1, 2, ... */
	uint32_t count;		/* entries used, 1..FERRY_CTL_BATCH */
	uint32_t nfds;
	uint32_t backend;	/* enum ferry_backend */
	uint64_t chan_bytes;	/* a child region's channel part (its heap follows) */
	struct ferry_ctl_region r[FERRY_CTL_BATCH];
};

/* Send / receive one REGIONS message (magic, version, type, nfds filled in
 * and checked; every entry's op and fd index checked on receive). */
int ferry_ctl_regions_send(int sock, const struct ferry_ctl_regions *m, const int *fds,
			   unsigned int nfds, int flags);
int ferry_ctl_regions_recv(int sock, struct ferry_ctl_regions *m, int *fds,
			   unsigned int *nfds_out, int flags);

/*
 * One SOCK_SEQPACKET message and its fds (SCM_RIGHTS), the transport under
 * both the control protocol and ferry_pool_send/recv.  Send: bytes sent or
 * -errno (-EINVAL for more than FERRY_FDS_MAX fds).  Receive: 0 when exactly
 * @len bytes arrived whole; fds beyond @max (or all, with @fds NULL) are
 * closed, *@kept says how many landed in @fds and *@arrived (may be NULL)
 * how many came; -EPROTO (kept fds closed) for a short or truncated
 * message, -ECONNRESET at end of stream, -errno.  Received fds are
 * close-on-exec.
 */
#define FERRY_FDS_MAX FERRY_CTL_BATCH
ssize_t ferry_send_fds(int sock, const void *buf, size_t len, const int *fds, unsigned int nfds);
/* The same with sendmsg @flags added (MSG_DONTWAIT: -EAGAIN when full). */
ssize_t ferry_send_fds_flags(int sock, const void *buf, size_t len, const int *fds,
			     unsigned int nfds, int flags);
int ferry_recv_fds(int sock, void *buf, size_t len, int *fds, unsigned int max,
		   unsigned int *kept, unsigned int *arrived, int flags);

/* Send @m with @nfds fds (magic, version and nfds are filled in); 0 or -errno. */
int ferry_ctl_send(int sock, const struct ferry_ctl *m, const int *fds, unsigned int nfds);
int ferry_ctl_send_flags(int sock, const struct ferry_ctl *m, const int *fds, unsigned int nfds,
			 int flags);
/*
 * Receive one message and its fds (up to FERRY_CTL_MAX_FDS, the rest are
 * closed); -EPROTO on a malformed message, -ECONNRESET on EOF.  Received
 * fds are close-on-exec.  *@nfds_out says how many landed in @fds.
 */
int ferry_ctl_recv(int sock, struct ferry_ctl *m, int *fds, unsigned int *nfds_out, int flags);

#endif /* FERRY_PROTO_H */
