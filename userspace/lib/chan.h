/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Channels: a pair of single-producer/single-consumer rings of 64-byte
 * descriptors in shared memory between the broker and one peer, and a
 * doorbell per direction.  Internal to libferry.
 *
 * Shared memory is untrusted: the peer on the other side may be hostile.
 * So every index read from it is bounds-checked against the ring size this
 * process recorded at attach time (never re-read from shared memory), each
 * end keeps the index it owns in private memory (the shared copy is only
 * written), and every descriptor is copied out once before anyone looks at
 * it.  A ring whose shared index is impossible reads as corrupt (-EPROTO);
 * slots are always indexed with & (nslots - 1), so nothing outside the
 * slot array is ever touched.  What a descriptor says is not checked here:
 * that is the broker's and the helper's job.
 *
 * Doorbells: the producer publishes, then (after a full fence) looks at the
 * consumer's "waiting" flag; only if it is set does it take it (so a burst
 * of sends rings once per sleep), bump the 32-bit sequence word and wake
 * the consumer.  The consumer sets "waiting", fences,
 * reads the sequence word, re-checks the ring, and only then sleeps on that
 * sequence value: a futex wait on the word (shared futex: the word lives in
 * MAP_SHARED memory), or (FERRY_BELL_EVENTFD) a read of an eventfd the
 * producer writes, for kernels whose io_uring cannot wait on futexes.
 * Waiting is adaptive: spin for spin_ns, then sleep.
 *
 * Not thread-safe: one thread sends on an end and one thread receives on
 * it (they may be different threads).
 */
#ifndef FERRY_CHAN_H
#define FERRY_CHAN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"

enum ferry_bell_mode {
	FERRY_BELL_FUTEX = 1,
	FERRY_BELL_EVENTFD = 2,
};

/* Directions, seen from the broker. */
enum ferry_chan_dir {
	FERRY_TO_BROKER = 0,	/* peer produces, broker consumes */
	FERRY_TO_PEER = 1,	/* broker produces, peer consumes */
};

#define FERRY_CHAN_MIN_SLOTS 2u
#define FERRY_CHAN_MAX_SLOTS 65536u
/* Spin this long before sleeping unless told otherwise (c->spin_ns). */
#define FERRY_CHAN_SPIN_NS_DEFAULT 30000u
/* Of that, spin with pause this long, then yield between looks (c->pause_ns). */
#define FERRY_CHAN_PAUSE_NS_DEFAULT 5000u

/*
 * Shared layout, version 1 (everything little-endian, one host):
 *   [0, 128)                     struct ferry_chan_hdr
 *   ferry_chan_ring_off(n, dir)  struct ferry_chan_ctl, then n descriptors
 * Words written by different sides sit FERRY_CHAN_LINE apart (two 64-byte
 * lines, so the adjacent-line prefetcher does not make them share).
 */
#define FERRY_CHAN_MAGIC	0x4e414843u	/* "CHAN" */
#define FERRY_CHAN_VERSION	1u
#define FERRY_CHAN_LINE		128u

struct ferry_chan_hdr {
	uint32_t magic;
	uint32_t version;
	uint32_t nslots;
	uint32_t desc_size;	/* FERRY_DESC_SIZE */
	uint64_t bytes;		/* ferry_chan_bytes(nslots) */
	uint8_t pad[FERRY_CHAN_LINE - 24];
};

struct ferry_chan_ctl {
	_Atomic uint32_t tail;		/* written by the producer only */
	uint8_t pad0[FERRY_CHAN_LINE - 4];
	_Atomic uint32_t head;		/* written by the consumer only */
	uint8_t pad1[FERRY_CHAN_LINE - 4];
	_Atomic uint32_t seq;		/* doorbell: bumped before each wake */
	_Atomic uint32_t waiting;	/* consumer announced it may sleep */
	uint8_t pad2[FERRY_CHAN_LINE - 8];
	/* struct ferry_desc slot[nslots] follows */
};

/* Where direction @dir's ring starts, from the channel's base. */
static inline size_t ferry_chan_ring_off(uint32_t nslots, enum ferry_chan_dir dir)
{
	return FERRY_CHAN_LINE + (size_t)dir * (sizeof(struct ferry_chan_ctl) +
						(size_t)nslots * FERRY_DESC_SIZE);
}

/* Bytes of shared memory a channel with @nslots per ring needs (a power of
 * two >= 2, <= 65536), a multiple of 4096; 0 if @nslots is invalid. */
size_t ferry_chan_bytes(uint32_t nslots);
/* Lay a channel out in @mem (aligned to FERRY_CHAN_LINE, page-aligned is
 * best, at least ferry_chan_bytes() long).  -EINVAL otherwise. */
int ferry_chan_format(void *mem, size_t bytes, uint32_t nslots);

/* One process's end of a channel.  Plain struct, lives in private memory. */
struct ferry_chan {
	void *mem;			/* shared */
	uint32_t nslots;		/* recorded at attach; never re-read */
	enum ferry_chan_dir rx_dir;	/* which ring this end consumes */
	enum ferry_bell_mode mode;
	int efd[2];			/* eventfd per direction (EVENTFD mode), else -1 */
	uint64_t spin_ns;		/* adaptive wait: spin this long first (tunable) */
	uint64_t pause_ns;		/* ... the first pause_ns without yielding */
	/*
	 * FUTEX mode, optional: called to wake up to @n sleepers on @word
	 * instead of a FUTEX_WAKE system call (the broker queues the wake on
	 * its io_uring and submits a pass's wakes at once).  Returns 0 if it
	 * took the wake; otherwise the system call is made.
	 */
	int (*wake_hook)(void *arg, _Atomic uint32_t *word, int n);
	void *wake_arg;
	/* counters, private */
	uint64_t sent, received;
	uint64_t wakes;			/* bells rung by this end (futex wakes, eventfd writes) */
	uint64_t sleeps;		/* times this end announced it would sleep */
	uint64_t full;			/* sends refused with -EAGAIN */
	/* private state: set by attach, not to be touched by callers */
	struct ferry_chan_ctl *ctl[2];	/* shared, per direction */
	struct ferry_desc *slot[2];	/* shared, per direction */
	uint32_t tx_tail;		/* our producer index (shared copy only written) */
	uint32_t tx_head;		/* consumer index as last read and validated */
	uint32_t rx_head;		/* our consumer index (shared copy only written) */
	uint32_t rx_tail;		/* producer index as last read and validated */
};

/*
 * Attach to a formatted channel as the broker (is_broker) or the peer.
 * -EINVAL when the shared header does not describe a channel that fits in
 * @bytes, or for a bad @mode / missing eventfds; -EPROTO when the shared
 * indices are already impossible.  Records the current indices, so
 * attaching to a channel in use (a restarted peer) continues where it was.
 * @efd: eventfds for EVENTFD mode (indexed by enum ferry_chan_dir), may be
 * NULL in FUTEX mode.  The struct does not own the fds.  Eventfds should be
 * EFD_NONBLOCK.  spin_ns and pause_ns start at their defaults.
 */
int ferry_chan_attach(struct ferry_chan *c, void *mem, size_t bytes, bool is_broker,
		      enum ferry_bell_mode mode, const int efd[2]);

/* Publish one descriptor and ring the bell if the consumer sleeps.
 * -EAGAIN when the ring is full (nothing written), -EPROTO when the
 * consumer's shared index is impossible. */
int ferry_chan_send(struct ferry_chan *c, const struct ferry_desc *d);
/* Take one descriptor if there is one: 0, -EAGAIN when empty, -EPROTO
 * when the producer's shared index is impossible. */
int ferry_chan_recv(struct ferry_chan *c, struct ferry_desc *out);
/*
 * Take one descriptor, waiting up to @timeout_ns (<0: forever, 0: just
 * try): spin c->spin_ns, then sleep on the bell.  -ETIMEDOUT; -EINTR when
 * a signal handler interrupted the sleep (the kernel may itself restart an
 * untimed futex sleep under SA_RESTART); -EPROTO on a corrupt ring.  Also returns -EPIPE when *@dead
 * becomes true while waiting (pass NULL to ignore); whoever sets it must
 * then ring ferry_chan_kick() on this end's receive direction.
 * Descriptors already queued are returned before -EPIPE.
 */
int ferry_chan_recv_wait(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
			 const _Atomic bool *dead);
/*
 * The same (without @dead), for a consumer that also waits for something
 * else: -EALREADY (nothing received) once @other(@arg) is true.  It is
 * asked between looks while spinning and after the sleep is announced, so
 * whatever makes it true must then call ferry_chan_wake_self().
 */
int ferry_chan_recv_wait_or(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
			    bool (*other)(void *), void *arg);
/*
 * ferry_chan_recv_wait_or() with this wait's spin instead of c->spin_ns
 * (0: sleep at once; @other may be NULL): a waiter that predicted when
 * its descriptor is due sleeps until shortly before, then spins through
 * it (expect.h).
 */
int ferry_chan_recv_wait_spin(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
			      uint64_t spin_ns, bool (*other)(void *), void *arg);
/*
 * Wake this end's own receive wait if it announced a sleep (as a sender
 * would): from any thread, e.g. a CUDA host function.  Touches no counter.
 */
void ferry_chan_wake_self(struct ferry_chan *c);
/* Wake whoever sleeps consuming direction @dir, unconditionally
 * (shutdown, or after setting a recv_wait's *dead).  Any end may call it. */
void ferry_chan_kick(struct ferry_chan *c, enum ferry_chan_dir dir);
/* Number of descriptors waiting in direction @dir (a snapshot); a value
 * above nslots means the ring is corrupt (send/recv say -EPROTO). */
uint32_t ferry_chan_pending(const struct ferry_chan *c, enum ferry_chan_dir dir);

/*
 * For the broker's io_uring: the futex word of direction @dir and the value
 * to wait on.  ferry_chan_prepare_sleep() announces that this end's
 * consumer is going to sleep and puts the value to wait on in *@seq_out;
 * it returns false (and withdraws the announcement itself) if descriptors
 * arrived meanwhile or the ring is corrupt: do not sleep, receive.
 * After a true return, arm the wait (futex on the word with *@seq_out, or
 * the eventfd of this end's receive direction); when it fires (or you
 * stop waiting) call ferry_chan_end_sleep(), then receive.  Arm only after
 * a true prepare_sleep: that is what makes a lost wake-up impossible.
 */
_Atomic uint32_t *ferry_chan_bell_word(struct ferry_chan *c, enum ferry_chan_dir dir);
bool ferry_chan_prepare_sleep(struct ferry_chan *c, uint32_t *seq_out);
void ferry_chan_end_sleep(struct ferry_chan *c);

#endif /* FERRY_CHAN_H */
