/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The broker's private state: struct ferry_broker and what its files
 * (broker, peers, placement, dispatch, helper_ctl, broker_pool, attach,
 * stats_socket, proc) call of each other.  Forked peers never see it: they
 * get a struct ferry_peer_cfg (peer.h).  Not for tools or tests.
 */
#ifndef FERRY_BROKER_INTERNAL_H
#define FERRY_BROKER_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "expect.h"
#include "chan.h"
#include "ferry.h"
#include "internal.h"
#include "proto.h"
#include "waitset.h"

#define FERRY_MAX_GPUS 64

/* waitset keys: kind in the top byte, index below. */
enum {
	KEY_CHILD_BELL = 1, KEY_CHILD_PIDFD, KEY_CHILD_CONN,
	KEY_HELPER_BELL, KEY_HELPER_PIDFD,
	KEY_LISTEN, KEY_STOP, KEY_STATS, KEY_HELPER_CTL,
};
#define KEY(kind, i)	(((uint32_t)(kind) << 24) | (uint32_t)(i))
#define KEY_KIND(k)	((k) >> 24)
#define KEY_INDEX(k)	((k) & 0xffffffu)

/* Both ends of one channel as the broker holds it. */
struct bchan {
	struct ferry_region *region;	/* channel lives at its offset 0 */
	struct ferry_chan ch;
	int efd[2];			/* EVENTFD mode, else -1 */
	bool bell_armed;
};

/* A child: forked (index < nchildren) or an attached service. */
struct bchild {
	bool used;		/* slot holds a peer (alive or being reclaimed) */
	bool alive;
	bool attached;
	bool ready;		/* on the ready list */
	bool exited_counted;
	pid_t pid;
	int pidfd;		/* forked children */
	int ctl;		/* control socket / attached connection */
	int exit_status;	/* wait status, from the spawner */
	bool exit_known;	/* ... has arrived */
	struct bchan chan;	/* channel at the start of the child's region */
	unsigned int in_flight;	/* at helpers */
	uint32_t next_ready;
	bool on_arm;		/* on the arm list */
	bool pidfd_armed, conn_armed;
	bool corrupt;		/* broke its ring: killed, waiting for its pidfd */
	struct bblock *blocks;	/* pool blocks it holds */
	unsigned int nblocks, cap_blocks;
};

/* A pool block a child holds, and how many requests naming it are at helpers. */
struct bblock {
	uint64_t off, size;
	uint32_t inflight;
	int32_t arena;		/* a helper made it (its pool's arena index), or -1 */
};

/*
 * A helper's arena (ferry_helper_pool_alloc): a range of its pool that
 * the helper sub-allocates on its own.  The blocks it gives children are
 * theirs (bblock.arena); when freed they go back to the helper through
 * its ferry_arena_shm.  An arena outlives a dead helper while children
 * hold blocks of it (@helper -1: orphaned), then returns to the pool.
 */
struct barena {
	bool used;
	uint64_t off, size;
	int32_t helper;		/* the incarnation's slot, -1: orphaned */
	uint32_t live;		/* blocks of it children hold */
	/* returns the helper's shm had no room for, oldest first */
	uint64_t *backlog;
	unsigned int nbacklog, capbacklog;
};

/* One pool (broker_pool.c). */
struct bpool {
	bool made;
	struct ferry_pool_ref ref;	/* fd: kept by the broker, -1 if none */
	struct ferry_pool *cpu;		/* the CPU pool, made here */
	struct ferry_palloc *alloc;	/* offsets */
	/* POOL_ALLOCs that wait for room (ferry_child_pool_alloc_timeout),
	 * oldest first. */
	struct bpool_waiter {
		uint32_t child;
		uint64_t tag, len;
		uint64_t deadline;	/* CLOCK_MONOTONIC ns; UINT64_MAX: none */
		bool fenced;		/* its timeout came: streams fenced, last try */
	} *waiters;
	unsigned int nwait, capwait;
	struct barena *arenas;
	unsigned int narenas;
	/*
	 * GPU pools: blocks children freed, held until every helper of the
	 * pool has fenced its streams past the free (struct ferry_arena_shm's
	 * fence_want/_done), oldest first, so that no block is handed out
	 * again while a stream a handler queued work on may still touch it
	 * (its reply need not have been deferred).  @epoch: the last free's;
	 * @asked: the epoch asked of the helpers; @asked_ns: when.
	 */
	struct bquar { uint64_t off, size, epoch; int32_t arena; } *quar;
	unsigned int nquar, capquar;
	uint64_t epoch, asked, asked_ns;
};

/* Checked tensor tables per helper: one place per request it may hold. */
#define FERRY_TABLE_BYTES (FERRY_TENSORS_MAX * sizeof(struct ferry_tensor))
#define FERRY_TABLES_MAX 1024	/* opts.helper_depth's limit */

struct bhelper {
	bool alive;
	pid_t pid;
	int pidfd;
	int ctl;
	struct bchan chan;
	unsigned int in_flight;
	/* When its last reply came: a request queued behind others starts
	 * then, not when it was sent (dispatch.c, svc_learn). */
	uint64_t last_reply_ns;
	/* Region announcements (helper_ctl.c): ops (slot << 1 | add) not yet
	 * sent, from outhead to nout. */
	uint32_t *outbox;
	unsigned int nout, capout, outhead;
	uint32_t ctl_sent;	/* REGIONS messages sent to this incarnation */
	uint32_t ctl_marked;	/* ... of them announced by a FERRY_OP_CTRL */
	bool ctl_poll_armed;	/* its socket is full: POLLOUT armed */
	uint64_t ctl_blocked_ns;	/* since when its socket refuses (0: it doesn't) */
	uint64_t ctl_retry_ns;	/* flush again at (0: no timer) */
	bool ctl_stuck;		/* could not be told: killed, dying */
	/* Restart backoff: kept across incarnations (ferry_helper_start). */
	bool ready;		/* its READY (status 0) was read at start */
	bool timed_out;		/* killed by the watchdog: fail back -ETIMEDOUT */
	unsigned int quick_deaths;	/* in a row, each before its init went through */
	bool restart_pending;	/* dead, restarted at restart_ns */
	uint64_t restart_ns;
	uint64_t served;
	bool pidfd_armed;
	bool corrupt;
	/* Tensor tables (broker_tensors.c): places in use, and where the
	 * first is in the broker's mapping of its channel region. */
	uint64_t table_used[FERRY_TABLES_MAX / 64];
	uint8_t *tables;
	/* Its arena (broker_pool.c): index in its pool's arenas, -1: none;
	 * and the shared page that tells the helper about it. */
	int32_t arena;
	struct ferry_arena_shm *arena_shm;
	uint64_t fence_base;	/* its pool's epoch when this incarnation began */
};

/* A request at a helper. */
struct bslot {
	bool used;
	uint16_t gen;
	uint32_t child;
	uint32_t helper;
	uint32_t op;
	uint64_t child_tag;
	uint64_t block;		/* pool block the request names, UINT64_MAX: none */
	uint64_t sent_ns;	/* when it went to the helper (watchdog on only) */
	/* FERRY_DESC_TENSORS (broker_tensors.c): its table's place at the
	 * helper (-1: none) and the pool blocks its entries hold. */
	int16_t table;
	uint8_t ntblock;
	uint64_t tblock[FERRY_TENSORS_MAX];
	/* Blocks the helper made for this request's child (FERRY_OP_POOL_GRANT):
	 * the child's once the reply is a success, back to the arena if not. */
	uint8_t ngrant;
	struct { uint64_t off, size; } grant[FERRY_HELPER_ALLOCS_MAX];
};


struct ferry_broker {
	struct ferry_broker_opts o;
	struct ferry_rctx *rc;
	struct ferry_waitset *ws;
	enum ferry_bell_mode mode;
	uint32_t nslots_child, nslots_helper;
	size_t chan_bytes_child;	/* page-rounded channel part of a child region */
	unsigned int nchildren;		/* forked */
	unsigned int nslots_total;	/* forked + attachable */
	struct bchild *child;
	struct bhelper *helper;
	struct bslot *slot;
	unsigned int nslot;
	uint32_t *slot_free;		/* stack of unused slot numbers */
	unsigned int nslot_free;
	uint32_t ready_head, ready_tail;	/* UINT32_MAX: empty */
	unsigned int nready;
	uint32_t *arm;			/* children whose waits need arming */
	unsigned int narm;
	unsigned int rr_helper;
	int listen_fd;
	int stop_efd;
	pthread_t thread;
	bool thread_started;
	bool thread_done;		/* under lock: snap has its final CPU time */
	clockid_t cpu_clock;		/* the dispatch thread's CPU clock */
	uint64_t snap_ns;		/* when snap was last refreshed */
	uint64_t queued_ns;		/* when st.queued was last counted */
	bool wakes_queued;		/* futex wakes wait in the io_uring's SQ */
	unsigned int restarts_pending;	/* helpers waiting out a backoff */
	uint64_t watch_ns;		/* the watchdog's last look */
	/*
	 * More busy processes than CPUs (children + helpers + the dispatch
	 * thread): whoever waits yields at once instead of spinning with
	 * pause, so that the peer it waits for can have the CPU.
	 */
	bool oversub;
	/*
	 * The dispatch thread never sleeps while it runs (it polls, looking
	 * for deaths and stop between spins): no wake-up on the request or
	 * the reply path.  Default where it has a CPU of its own
	 * (dispatch_cpu); FERRY_DISPATCH_POLL / _SLEEP or $FERRY_DISPATCH_POLL
	 * (1 or 0) decide otherwise.
	 */
	bool poll;
	/*
	 * Otherwise, unless FERRY_DISPATCH_SLEEP (or $FERRY_DISPATCH_POLL=0)
	 * says so, it polls while requests are at helpers and their replies
	 * are near or not predicted, for at most FERRY_AWAIT_MAX_NS after
	 * anything last moved (dispatch.c, awaiting()): the reply path then
	 * costs no wake-up of the dispatch thread, and an idle broker (or one
	 * whose helpers work for milliseconds) holds no CPU.  moved_ns: when
	 * a descriptor last went through.
	 */
	bool await;
	uint64_t moved_ns;
	/* The clock, read once per turn of the dispatch loop when something
	 * needs it (0: not yet this turn): dispatch.c, turn_now(). */
	uint64_t turn_ns;
	/*
	 * Await mode, when nothing is at a helper: how long the loop went
	 * without work before the next descriptor came (the gap a child
	 * needs to wake for its reply and send again), learned as the other
	 * waits are (expect.h); quiet_ns: when the current gap began (0:
	 * none).  A short gap is spun through (spin()), a long one slept.
	 */
	struct ferry_expect gap;
	uint64_t quiet_ns;
	/*
	 * Sleeping dispatch (!poll): how long helpers took per op (EWMA by op
	 * % 8, and its spread), so that with requests at helpers the thread
	 * sleeps only until shortly before the first reply is due and spins
	 * through it, instead of sleeping until the helper's bell (a wake-up
	 * per reply, tens of microseconds from a deep idle state).
	 * wake_late_ns: how late those timed sleeps ended; predicted_ns: the
	 * end of the sleep now taken (0: none); spin_after_ns: the spin that
	 * follows it.
	 */
	struct ferry_expect svc[FERRY_EXPECT_OPS];
	uint64_t wake_late_ns, predicted_ns, spin_after_ns;
	/*
	 * The CPU reserved for the dispatch thread (-1: none) and the mask its
	 * peers run on (the broker's own mask without it): a single dispatch
	 * thread is what every message goes through, and on a machine with
	 * more runnable peers than CPUs the scheduler would give it only its
	 * fair share of one.
	 */
	int dispatch_cpu;
	cpu_set_t peer_cpus;
	/*
	 * GPUs the helpers serve (0: CPU helpers) and each one's NUMA node
	 * (-1: not known): helper h serves GPU h % ngpus and runs on its node's
	 * CPUs; child i's region is placed on the node of GPU i % ngpus.
	 */
	int ngpus;
	int gpu_node[FERRY_MAX_GPUS];
	struct bpool *pool;		/* opts.pool_size: one per GPU, or one CPU pool */
	unsigned int npools;
	pthread_mutex_t lock;		/* guards stats + exited for other threads */
	pthread_cond_t cond;
	unsigned int exited;		/* forked children that ended */
	unsigned int failed;		/* ... of them non-zero or killed */
	struct ferry_broker_stats st;	/* dispatch thread's own, unlocked */
	uint64_t *served;		/* per helper slot, all incarnations */
	/* What other threads read: copies of the two above, under lock. */
	struct ferry_broker_stats snap;
	uint64_t *served_snap;
	/* The process forking the children (spawner.c); -1: none. */
	int spawner;
	pid_t spawner_pid;
	int spawner_pidfd;
	char *attach_path;
	int stats_fd;			/* opts.stats_path's socket, or -1 */
	char *stats_path;
};

/* proc.c */
int ferry_pidfd_open(pid_t pid);
int ferry_pidfd_kill(int pidfd, int sig);
pid_t ferry_spawn(int *pidfd_out, int *ctl_out);
/* Close every fd from @lo up. */
void ferry_close_from(int lo);
/* spawner.c: children are forked by one small process, not the broker */
int ferry_spawner_start(struct ferry_broker *b);
/* Fork child @i on control socket @ctl: its pid and *pidfd_out, or -errno. */
pid_t ferry_spawner_spawn(struct ferry_broker *b, unsigned int i, int ctl, int *pidfd_out);
/* Child @i's wait status (it has ended: its pidfd fired). */
int ferry_spawner_wait(struct ferry_broker *b, unsigned int i);
/* Reap every child (the caller killed them) and the spawner. */
void ferry_spawner_stop(struct ferry_broker *b);
/* In a forked peer: keep off the dispatch thread's CPU, if one is reserved;
 * a helper (@node >= 0) also stays on its GPU's node. */
void ferry_peer_affinity(const struct ferry_broker *b, int node);
/* broker_pool.c */
struct ferry_ctl;
int ferry_bpool_setup(struct ferry_broker *b);
void ferry_bpool_destroy(struct ferry_broker *b);
unsigned int ferry_bpool_of_child(const struct ferry_broker *b, unsigned int i);
unsigned int ferry_bpool_of_helper(const struct ferry_broker *b, unsigned int h);
/* Fill SETUP's pool fields; returns the fd to attach, or -1. */
int ferry_bpool_for_helper(const struct ferry_broker *b, unsigned int h, struct ferry_ctl *m);
int ferry_bpool_for_child(const struct ferry_broker *b, unsigned int i, struct ferry_ctl *m);
int ferry_bpool_take_created(struct ferry_broker *b, unsigned int h, int sock);
/* A POOL_ALLOC/_FREE: false when the answer is deferred (an ALLOC that
 * waits for room; answered later through ferry_dispatch_reply). */
bool ferry_bpool_request(struct ferry_broker *b, unsigned int i, struct ferry_desc *d);
/* Waiting ALLOCs past their deadline answered; ns until the next, or -1. */
int64_t ferry_bpool_due(struct ferry_broker *b);
int ferry_bpool_hold(struct ferry_broker *b, unsigned int i, uint64_t off, uint64_t len,
		     uint64_t *block);
void ferry_bpool_release(struct ferry_broker *b, unsigned int i, uint64_t block);
void ferry_bpool_child_gone(struct ferry_broker *b, unsigned int i);
/* Helper @h (its region's arena page at @shm) gets an arena, if its pool
 * has one made and room for it; called for each incarnation. */
void ferry_bpool_helper_arena(struct ferry_broker *b, unsigned int h);
/* Helper @h is dead: its arena is orphaned (or back to the pool). */
void ferry_bpool_helper_gone(struct ferry_broker *b, unsigned int h);
/* A GRANT from helper @h: is [off, off + len) a block of its arena? */
bool ferry_bpool_grant_ok(const struct ferry_broker *b, unsigned int h, uint64_t off,
			  uint64_t len);
/* Returns to helper @h that its arena page had no room for, now. */
void ferry_bpool_arena_flush(struct ferry_broker *b, unsigned int h);
/* A request's granted blocks: to child @i (@keep) or back to @h's arena. */
void ferry_bpool_grants_settle(struct ferry_broker *b, unsigned int h, unsigned int i,
			       struct bslot *sl, bool keep);
/* gpu_probe.c: GPUs (0 where none) and their nodes, without CUDA here. */
int ferry_gpu_probe(int nodes[FERRY_MAX_GPUS]);

/* placement.c */
unsigned int ferry_cpus_usable(void);
/* b->dispatch_cpu and b->peer_cpus from opts (and $FERRY_DISPATCH_CPU). */
int ferry_place_dispatch_cpu(struct ferry_broker *b);
/* b->ngpus, b->gpu_node, and b->o.helpers raised to one per GPU. */
int ferry_place_gpus(struct ferry_broker *b);
/* The GPU helper @h serves and the node its or child @i's memory goes on. */
int ferry_helper_gpu_of(const struct ferry_broker *b, unsigned int h);
int ferry_node_of_child(const struct ferry_broker *b, unsigned int i);
int ferry_node_of_helper(const struct ferry_broker *b, unsigned int h);

/* peers.c */
int ferry_bchan_create(struct ferry_broker *b, struct bchan *bc, size_t bytes, uint32_t nslots,
		       int node);
void ferry_bchan_destroy(struct bchan *bc);
/* (@off, @len) lies in child @i's heap, past its channel (len 0: yes). */
bool ferry_child_heap_has(const struct ferry_broker *b, uint32_t i, uint64_t off, uint64_t len);
int ferry_child_slot_setup(struct ferry_broker *b, unsigned int i);
int ferry_child_send_setup(struct ferry_broker *b, unsigned int i, int pidfd);
/* Fork every child (start-up); the first error. */
int ferry_children_start(struct ferry_broker *b);
int ferry_helper_start(struct ferry_broker *b, unsigned int h);
/* Every helper's READY at start-up: 0, or the first helper's error. */
int ferry_helpers_ready(struct ferry_broker *b);
/* Raise RLIMIT_NOFILE for what the peers need, or -EMFILE (said why). */
int ferry_peers_fit_nofile(const struct ferry_broker *b);
void ferry_child_reclaim(struct ferry_broker *b, unsigned int i);
/* Dead helper @h: start it again, now or after its backoff. */
void ferry_helper_restart(struct ferry_broker *b, uint32_t h);
/* Start the helpers whose backoff ended; ns until the next one, or -1. */
int64_t ferry_helper_restart_due(struct ferry_broker *b);
/* Its control socket holds a READY with status 0 (its init went through). */
bool ferry_helper_said_ready(int sock);

/* dispatch.c */
void *ferry_dispatch_main(void *arg);
/* chan wake_hook: queue a peer's wake for the dispatch loop's next flush. */
int ferry_dispatch_queue_wake(void *broker, _Atomic uint32_t *word, int n);
/* Reply @d to child @i (if it can still hear it). */
void ferry_dispatch_reply(struct ferry_broker *b, uint32_t i, struct ferry_desc *d);
/* A newly attached child slot @i: watch its connection and its bell. */
void ferry_dispatch_adopt(struct ferry_broker *b, uint32_t i);

/* broker_tensors.c */
/* Bytes of a helper's channel region: the channel, its tables, then its
 * arena page (struct ferry_arena_shm) at the end. */
size_t ferry_helper_region_bytes(const struct ferry_broker *b, size_t *chan_bytes);
/* Copy child @i's table that @d names to helper @h's place for slot @s,
 * check it and hold its pool blocks; @d then names the copy.  0 or -EINVAL
 * (nothing held). */
int ferry_btensors_take(struct ferry_broker *b, uint32_t i, uint32_t h, uint32_t s,
			struct ferry_desc *d);
/* Slot @s is done: its blocks and its table's place go back. */
void ferry_btensors_release(struct ferry_broker *b, uint32_t s);

/* helper_ctl.c: child regions announced to helpers, never blocking */
/* @hp has announcements not yet sent, or a marker not yet on its ring. */
static inline bool ferry_helper_ctl_owes(const struct bhelper *hp)
{
	return hp->nout || hp->ctl_marked != hp->ctl_sent;
}
/* Queue "map (@add) / unmap child slot @ci" for helper @h (granting it now). */
int ferry_helper_ctl_queue(struct ferry_broker *b, unsigned int h, unsigned int ci, bool add);
/* Send what the socket takes and the marker; true when nothing is owed
 * (only then may requests go to @h). */
bool ferry_helper_ctl_flush(struct ferry_broker *b, unsigned int h);
/* Its POLLOUT wait fired. */
void ferry_helper_ctl_writable(struct ferry_broker *b, unsigned int h);
/* Retry timers and the hung-socket check: ns until the next, or -1. */
int64_t ferry_helper_ctl_due(struct ferry_broker *b);
/* Forget the outbox (the helper is gone or starts again). */
void ferry_helper_ctl_reset(struct ferry_broker *b, unsigned int h);

/* attach.c */
int ferry_attach_listen(struct ferry_broker *b);
void ferry_attach_accept(struct ferry_broker *b);
/* stats_socket.c */
int ferry_stats_listen(struct ferry_broker *b);
void ferry_stats_serve(struct ferry_broker *b);


#endif /* FERRY_BROKER_INTERNAL_H */
