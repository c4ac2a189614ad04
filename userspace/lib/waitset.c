/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The broker's waitset: one io_uring, one one-shot request per armed key.
 *
 * Each armed key owns a source slot; its request's user_data is
 * (generation << 32 | slot).  The generation is a counter bumped at every
 * arm, so a completion that belongs to a wait the caller already disarmed
 * (its cancellation raced with the completion, or the slot was reused
 * since) is recognised as stale and dropped.  Internal requests
 * (cancellations, the start-up probe) carry user_data 0, generation 0.
 *
 * Keys are found through a small open-addressing table (linear probing,
 * backward-shift deletion) that stores slot numbers, so source slots never
 * move: an eventfd read in flight may still write into its slot's buffer
 * after a disarm, which is harmless because nobody reads it.
 */
#include "waitset.h"

#include <errno.h>
#include <linux/futex.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * Futex opcodes of include/uapi/linux/io_uring.h (6.7+), unknown to
 * liburing 2.3 and linux-libc-dev 6.1.  The SQE layout, from
 * io_uring/futex.c: fd = FUTEX2_* flags, addr = word, addr2 = expected
 * value, addr3 = wake mask; len, futex_flags, buf_index and file_index
 * must be 0.
 */
#define FERRY_IORING_OP_FUTEX_WAIT 51
#define FERRY_IORING_OP_FUTEX_WAKE 52
#define FERRY_IORING_OP_FUTEX_WAITV 53
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#if defined(IO_URING_VERSION_MAJOR) && \
	(IO_URING_VERSION_MAJOR > 2 || (IO_URING_VERSION_MAJOR == 2 && IO_URING_VERSION_MINOR >= 5))
_Static_assert(IORING_OP_FUTEX_WAIT == FERRY_IORING_OP_FUTEX_WAIT, "uAPI opcode");
#endif

enum src_kind { SRC_FUTEX = 1, SRC_EVENTFD = 2, SRC_POLL = 3 };

struct ws_src {
	uint64_t buf;		/* an eventfd's count lands here, unread */
	uint32_t key;
	uint32_t gen;		/* high half of the armed request's user_data */
	bool armed;
	uint8_t kind;
};

struct ferry_waitset {
	struct io_uring ring;
	enum ferry_bell_mode mode;
	unsigned int max;
	uint32_t gen;
	unsigned int tbits;	/* table has 1 << tbits entries */
	uint32_t *table;	/* source slot + 1; 0: empty */
	uint32_t *free;		/* stack of free source slots */
	unsigned int nfree;
	struct ws_src *src;
};

static bool submit_error_fatal(int r)
{
	/* -EBUSY/-EAGAIN: CQ backlog or memory; reaping makes room. */
	return r < 0 && r != -EBUSY && r != -EAGAIN && r != -EINTR;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t tmask(const struct ferry_waitset *ws)
{
	return (1u << ws->tbits) - 1;
}

static uint32_t thash(const struct ferry_waitset *ws, uint32_t key)
{
	return (uint32_t)(key * 0x9e3779b1u) >> (32 - ws->tbits);
}

/* Table position holding @key, or -1. */
static int64_t tfind(const struct ferry_waitset *ws, uint32_t key)
{
	uint32_t i, v;

	/* The table is at least twice max: an empty entry always ends the probe. */
	for (i = thash(ws, key);; i = (i + 1) & tmask(ws)) {
		v = ws->table[i];
		if (!v)
			return -1;
		if (ws->src[v - 1].key == key)
			return i;
	}
}

static void tinsert(struct ferry_waitset *ws, uint32_t key, uint32_t slot)
{
	uint32_t i;

	for (i = thash(ws, key); ws->table[i]; i = (i + 1) & tmask(ws))
		;
	ws->table[i] = slot + 1;
}

/* Backward-shift deletion keeps every probe chain unbroken. */
static void tremove(struct ferry_waitset *ws, uint32_t i)
{
	uint32_t m = tmask(ws), j = i, v, home;

	for (;;) {
		j = (j + 1) & m;
		v = ws->table[j];
		if (!v)
			break;
		home = thash(ws, ws->src[v - 1].key);
		if (((j - home) & m) >= ((j - i) & m)) {
			ws->table[i] = v;
			i = j;
		}
	}
	ws->table[i] = 0;
}

/* Forget the armed key at table position @pos. */
static void release(struct ferry_waitset *ws, uint32_t pos)
{
	uint32_t slot = ws->table[pos] - 1;

	tremove(ws, pos);
	ws->src[slot].armed = false;
	ws->free[ws->nfree++] = slot;
}

static struct io_uring_sqe *get_sqe(struct ferry_waitset *ws)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ws->ring);

	if (!sqe) {
		/* The SQ holds at least max + 1: only many disarms fill it. */
		io_uring_submit(&ws->ring);
		sqe = io_uring_get_sqe(&ws->ring);
	}
	return sqe;
}

/* Claim a slot for @key and an SQE for its request. */
static int arm_begin(struct ferry_waitset *ws, uint32_t key, enum src_kind kind,
		     struct io_uring_sqe **sqe_out, struct ws_src **src_out)
{
	struct io_uring_sqe *sqe;
	struct ws_src *s;
	uint32_t slot;

	if (tfind(ws, key) >= 0)
		return -EBUSY;
	if (!ws->nfree)
		return -ENOSPC;
	sqe = get_sqe(ws);
	if (!sqe)
		return -EAGAIN;
	slot = ws->free[--ws->nfree];
	s = &ws->src[slot];
	if (++ws->gen == 0)
		ws->gen = 1;
	s->key = key;
	s->gen = ws->gen;
	s->kind = kind;
	s->armed = true;
	tinsert(ws, key, slot);
	*sqe_out = sqe;
	*src_out = s;
	return 0;
}

static uint64_t src_udata(const struct ferry_waitset *ws, const struct ws_src *s)
{
	return (uint64_t)s->gen << 32 | (uint64_t)(s - ws->src);
}

int ferry_waitset_wake_futex(struct ferry_waitset *ws, _Atomic uint32_t *word, int n)
{
	struct io_uring_sqe *sqe;

	if (ws->mode != FERRY_BELL_FUTEX)
		return -EOPNOTSUPP;
	if (!word || ((uintptr_t)word & 3) || n <= 0)
		return -EINVAL;
	sqe = io_uring_get_sqe(&ws->ring);
	if (!sqe)
		return -EAGAIN;
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = FERRY_IORING_OP_FUTEX_WAKE;
	sqe->fd = FUTEX2_SIZE_U32;		/* shared futex */
	sqe->addr = (uint64_t)(uintptr_t)word;
	sqe->off = (uint64_t)n;			/* addr2: how many to wake */
	sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
	/* user_data 0: reap() ignores it; a failure's completion is harmless. */
	sqe->user_data = 0;
	sqe->flags = IOSQE_CQE_SKIP_SUCCESS;
	return 0;
}

int ferry_waitset_flush(struct ferry_waitset *ws)
{
	int r;

	if (!io_uring_sq_ready(&ws->ring))
		return 0;
	r = io_uring_submit(&ws->ring);
	return submit_error_fatal(r) ? r : 0;
}

static void prep_futex_wait(struct io_uring_sqe *sqe, _Atomic uint32_t *word, uint32_t val)
{
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = FERRY_IORING_OP_FUTEX_WAIT;
	/* Shared (no FUTEX2_PRIVATE): the word is written by other processes. */
	sqe->fd = FUTEX2_SIZE_U32;
	sqe->addr = (uint64_t)(uintptr_t)word;
	sqe->off = val;				/* addr2 */
	sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
}

int ferry_waitset_arm_futex(struct ferry_waitset *ws, uint32_t key,
			    _Atomic uint32_t *word, uint32_t val)
{
	struct io_uring_sqe *sqe;
	struct ws_src *s;
	int r;

	if (ws->mode != FERRY_BELL_FUTEX)
		return -EOPNOTSUPP;
	if (!word || ((uintptr_t)word & 3))
		return -EINVAL;
	r = arm_begin(ws, key, SRC_FUTEX, &sqe, &s);
	if (r)
		return r;
	prep_futex_wait(sqe, word, val);
	io_uring_sqe_set_data64(sqe, src_udata(ws, s));
	return 0;
}

int ferry_waitset_arm_eventfd(struct ferry_waitset *ws, uint32_t key, int efd)
{
	struct io_uring_sqe *sqe;
	struct ws_src *s;
	int r;

	if (efd < 0)
		return -EINVAL;
	r = arm_begin(ws, key, SRC_EVENTFD, &sqe, &s);
	if (r)
		return r;
	io_uring_prep_read(sqe, efd, &s->buf, sizeof(s->buf), 0);
	io_uring_sqe_set_data64(sqe, src_udata(ws, s));
	return 0;
}

static int arm_poll_events(struct ferry_waitset *ws, uint32_t key, int fd, unsigned int events)
{
	struct io_uring_sqe *sqe;
	struct ws_src *s;
	int r;

	if (fd < 0)
		return -EINVAL;
	r = arm_begin(ws, key, SRC_POLL, &sqe, &s);
	if (r)
		return r;
	io_uring_prep_poll_add(sqe, fd, events);
	io_uring_sqe_set_data64(sqe, src_udata(ws, s));
	return 0;
}

int ferry_waitset_arm_poll(struct ferry_waitset *ws, uint32_t key, int fd)
{
	return arm_poll_events(ws, key, fd, POLLIN);
}

int ferry_waitset_arm_poll_out(struct ferry_waitset *ws, uint32_t key, int fd)
{
	return arm_poll_events(ws, key, fd, POLLOUT);
}

int ferry_waitset_disarm(struct ferry_waitset *ws, uint32_t key)
{
	int64_t pos = tfind(ws, key);
	struct io_uring_sqe *sqe;
	uint64_t ud;

	if (pos < 0)
		return -ENOENT;
	ud = src_udata(ws, &ws->src[ws->table[pos] - 1]);
	release(ws, (uint32_t)pos);
	/*
	 * Cancel now, so the request lets go of its file or futex.  Its
	 * completion (-ECANCELED, or a real one that won the race) is stale
	 * from here on: the generation no longer matches.  Without an SQE the
	 * request simply stays until it completes, and is dropped then.
	 */
	sqe = get_sqe(ws);
	if (sqe) {
		io_uring_prep_cancel64(sqe, ud, 0);
		io_uring_sqe_set_data64(sqe, 0);
		io_uring_submit(&ws->ring);
	}
	return 0;
}

bool ferry_waitset_armed(const struct ferry_waitset *ws, uint32_t key)
{
	return tfind(ws, key) >= 0;
}

/* Move completions to @keys, up to @max; stale and internal ones vanish. */
static unsigned int reap(struct ferry_waitset *ws, uint32_t *keys, unsigned int max)
{
	struct io_uring_cqe *cqes[64];
	unsigned int n = 0, got, i;

	while (n < max) {
		got = io_uring_peek_batch_cqe(&ws->ring, cqes, 64);
		if (!got)
			break;
		for (i = 0; i < got && n < max; i++) {
			uint64_t ud = cqes[i]->user_data;
			uint32_t slot = (uint32_t)ud, gen = (uint32_t)(ud >> 32);
			struct ws_src *s;
			int64_t pos;

			if (!gen || slot >= ws->max)
				continue;
			s = &ws->src[slot];
			if (!s->armed || s->gen != gen)
				continue;
			/*
			 * Any result fires: 0 (futex woken), -EAGAIN (the word
			 * had already changed), 8 (eventfd read), a poll mask,
			 * or an error; the caller re-checks and re-arms.
			 */
			pos = tfind(ws, s->key);
			keys[n++] = s->key;
			release(ws, (uint32_t)pos);
		}
		io_uring_cq_advance(&ws->ring, i);
	}
	return n;
}


int ferry_waitset_wait(struct ferry_waitset *ws, uint32_t *keys, unsigned int max,
		       int64_t timeout_ns)
{
	uint64_t deadline = 0, now;
	unsigned int n;
	int r;

	if (!ws || !keys || !max)
		return -EINVAL;
	if (timeout_ns > 0)
		deadline = now_ns() + (uint64_t)timeout_ns;

	for (;;) {
		n = reap(ws, keys, max);
		if (n)
			return (int)n;
		if (timeout_ns == 0 || (timeout_ns > 0 && (now = now_ns()) >= deadline)) {
			if (io_uring_sq_ready(&ws->ring)) {
				r = io_uring_submit(&ws->ring);
				if (submit_error_fatal(r))
					return r;
			}
			return (int)reap(ws, keys, max);
		}
		if (timeout_ns < 0) {
			r = io_uring_submit_and_wait(&ws->ring, 1);
		} else {
			struct __kernel_timespec ts;
			struct io_uring_cqe *cqe;
			uint64_t rem = deadline - now;

			ts.tv_sec = (int64_t)(rem / 1000000000u);
			ts.tv_nsec = (long long)(rem % 1000000000u);
			r = io_uring_submit_and_wait_timeout(&ws->ring, &cqe, 1, &ts, NULL);
			if (r == -ETIME)
				r = 0;
		}
		if (r == -EINTR) {
			n = reap(ws, keys, max);
			return n ? (int)n : -EINTR;
		}
		if (submit_error_fatal(r))
			return r;
	}
}

/* One FUTEX_WAIT on a word that differs: the kernel must say -EAGAIN. */
static bool futex_wait_works(struct ferry_waitset *ws)
{
	_Atomic uint32_t word = 1;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ws->ring);
	struct io_uring_cqe *cqe;
	int res;

	if (!sqe)
		return false;
	prep_futex_wait(sqe, &word, 0);
	io_uring_sqe_set_data64(sqe, 0);
	if (io_uring_submit_and_wait(&ws->ring, 1) < 0)
		return false;
	if (io_uring_peek_cqe(&ws->ring, &cqe))
		return false;
	res = cqe->res;
	io_uring_cqe_seen(&ws->ring, cqe);
	return res == -EAGAIN;
}

static bool env_force_eventfd(void)
{
	const char *e = getenv("FERRY_WAITSET_FORCE_EVENTFD");

	return e && *e && strcmp(e, "0") != 0;
}

int ferry_waitset_create(unsigned int max_sources, bool force_eventfd,
			 struct ferry_waitset **out)
{
	struct io_uring_params p;
	struct io_uring_probe *probe;
	struct ferry_waitset *ws;
	unsigned int entries = 8, i;
	bool futex = false;
	int r;

	if (!out || !max_sources || max_sources > FERRY_WAITSET_MAX_SOURCES)
		return -EINVAL;
	ws = calloc(1, sizeof(*ws));
	if (!ws)
		return -ENOMEM;
	ws->max = max_sources;
	for (ws->tbits = 3; (1u << ws->tbits) < 2 * max_sources; ws->tbits++)
		;
	ws->table = calloc((size_t)1 << ws->tbits, sizeof(*ws->table));
	ws->free = calloc(max_sources, sizeof(*ws->free));
	ws->src = calloc(max_sources, sizeof(*ws->src));
	r = -ENOMEM;
	if (!ws->table || !ws->free || !ws->src)
		goto err_free;
	for (i = 0; i < max_sources; i++)
		ws->free[i] = max_sources - 1 - i;
	ws->nfree = max_sources;

	/* Room to arm every key between two waits, plus a cancellation. */
	while (entries < max_sources + 1)
		entries *= 2;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CLAMP;
	r = io_uring_queue_init_params(entries, &ws->ring, &p);
	if (r < 0)
		goto err_free;

	r = -EOPNOTSUPP;
	probe = io_uring_get_probe_ring(&ws->ring);
	if (!probe)
		goto err_ring;
	if (!io_uring_opcode_supported(probe, IORING_OP_READ) ||
	    !io_uring_opcode_supported(probe, IORING_OP_POLL_ADD) ||
	    !io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL)) {
		io_uring_free_probe(probe);
		goto err_ring;
	}
	/* liburing 2.3 checks op <= last_op, so an opcode it does not know works. */
	if (!force_eventfd && !env_force_eventfd() &&
	    io_uring_opcode_supported(probe, FERRY_IORING_OP_FUTEX_WAIT))
		futex = futex_wait_works(ws);
	io_uring_free_probe(probe);
	ws->mode = futex ? FERRY_BELL_FUTEX : FERRY_BELL_EVENTFD;
	*out = ws;
	return 0;

err_ring:
	io_uring_queue_exit(&ws->ring);
err_free:
	free(ws->src);
	free(ws->free);
	free(ws->table);
	free(ws);
	return r;
}

void ferry_waitset_destroy(struct ferry_waitset *ws)
{
	if (!ws)
		return;
	/* Closing the ring cancels every request still in flight. */
	io_uring_queue_exit(&ws->ring);
	free(ws->src);
	free(ws->free);
	free(ws->table);
	free(ws);
}

enum ferry_bell_mode ferry_waitset_mode(const struct ferry_waitset *ws)
{
	return ws->mode;
}

int ferry_waitset_fd(const struct ferry_waitset *ws)
{
	return ws->ring.ring_fd;
}

bool ferry_waitset_fired(struct ferry_waitset *ws)
{
	return io_uring_cq_ready(&ws->ring) > 0;
}
