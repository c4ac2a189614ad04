/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Channels: SPSC descriptor rings in shared memory and their doorbells.
 *
 * Layout and the trust model are described in chan.h.  The one subtle part
 * is the bell, a Dekker-style handshake between two sides that each write
 * one word and then read the other's, with a full fence in between:
 *
 *   producer                          consumer (about to sleep)
 *   slot = d; tail = t+1 (release)    waiting = 1
 *   fence                             fence
 *   if (xchg(waiting, 0))             s = seq (acquire)
 *           seq++; wake(seq)          if (ring not empty) don't sleep
 *                                     else sleep while seq == s
 *
 * The fences guarantee that at least one side sees the other's write: the
 * consumer sees the new tail, or the producer sees waiting == 1.  In the
 * latter case the producer bumps seq before waking, so a consumer that read
 * s before the bump either finds seq != s when the kernel compares (futex
 * -EAGAIN) or is already queued when the wake arrives; a consumer that read
 * s after the bump also sees the tail (the bump is a release after it).  An
 * eventfd keeps its count until read, so it cannot lose a wake either.
 * The producer clears "waiting" as it rings: the next sends of a burst see
 * 0 and skip the system call, since one wake is already on its way.
 */
#include "chan.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct ferry_chan_hdr) == FERRY_CHAN_LINE, "header is one line");
_Static_assert(sizeof(struct ferry_chan_ctl) == 3 * FERRY_CHAN_LINE, "ctl is three lines");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "futex words are 32 bits");

#define CHAN_ROUND 4096u

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	atomic_signal_fence(memory_order_seq_cst);
#endif
}

static bool nslots_valid(uint32_t n)
{
	return n >= FERRY_CHAN_MIN_SLOTS && n <= FERRY_CHAN_MAX_SLOTS && !(n & (n - 1));
}

size_t ferry_chan_bytes(uint32_t nslots)
{
	size_t b;

	if (!nslots_valid(nslots))
		return 0;
	b = ferry_chan_ring_off(nslots, FERRY_TO_PEER) + sizeof(struct ferry_chan_ctl) +
	    (size_t)nslots * FERRY_DESC_SIZE;
	return (b + CHAN_ROUND - 1) & ~(size_t)(CHAN_ROUND - 1);
}

int ferry_chan_format(void *mem, size_t bytes, uint32_t nslots)
{
	size_t need = ferry_chan_bytes(nslots);
	struct ferry_chan_hdr *h = mem;

	if (!mem || !need || bytes < need || ((uintptr_t)mem % FERRY_CHAN_LINE))
		return -EINVAL;
	memset(mem, 0, need);
	h->version = FERRY_CHAN_VERSION;
	h->nslots = nslots;
	h->desc_size = FERRY_DESC_SIZE;
	h->bytes = need;
	/* The magic goes last: a header that has it is complete. */
	atomic_thread_fence(memory_order_release);
	h->magic = FERRY_CHAN_MAGIC;
	return 0;
}

static struct ferry_chan_ctl *ring_ctl(void *mem, uint32_t nslots, enum ferry_chan_dir dir)
{
	return (struct ferry_chan_ctl *)((char *)mem + ferry_chan_ring_off(nslots, dir));
}

static inline enum ferry_chan_dir tx_dir(const struct ferry_chan *c)
{
	return c->rx_dir == FERRY_TO_BROKER ? FERRY_TO_PEER : FERRY_TO_BROKER;
}

int ferry_chan_attach(struct ferry_chan *c, void *mem, size_t bytes, bool is_broker,
		      enum ferry_bell_mode mode, const int efd[2])
{
	struct ferry_chan_hdr h;
	struct ferry_chan_ctl *rx, *tx;
	enum ferry_chan_dir rd, td;
	uint32_t n, tx_tail, tx_head, rx_head, rx_tail;
	size_t need;

	if (!c || !mem || ((uintptr_t)mem % FERRY_CHAN_LINE) || bytes < sizeof(h))
		return -EINVAL;
	if (mode != FERRY_BELL_FUTEX && mode != FERRY_BELL_EVENTFD)
		return -EINVAL;
	if (mode == FERRY_BELL_EVENTFD && (!efd || efd[0] < 0 || efd[1] < 0))
		return -EINVAL;

	/* Read the header once; from here on only the private copy counts. */
	memcpy(&h, mem, sizeof(h));
	atomic_thread_fence(memory_order_acquire);
	if (h.magic != FERRY_CHAN_MAGIC || h.version != FERRY_CHAN_VERSION ||
	    h.desc_size != FERRY_DESC_SIZE)
		return -EINVAL;
	n = h.nslots;
	need = ferry_chan_bytes(n);
	if (!need || h.bytes != need || bytes < need)
		return -EINVAL;

	rd = is_broker ? FERRY_TO_BROKER : FERRY_TO_PEER;
	td = is_broker ? FERRY_TO_PEER : FERRY_TO_BROKER;
	rx = ring_ctl(mem, n, rd);
	tx = ring_ctl(mem, n, td);
	tx_tail = atomic_load_explicit(&tx->tail, memory_order_acquire);
	tx_head = atomic_load_explicit(&tx->head, memory_order_acquire);
	rx_head = atomic_load_explicit(&rx->head, memory_order_acquire);
	rx_tail = atomic_load_explicit(&rx->tail, memory_order_acquire);
	if (tx_tail - tx_head > n || rx_tail - rx_head > n)
		return -EPROTO;

	memset(c, 0, sizeof(*c));
	c->mem = mem;
	c->nslots = n;
	c->rx_dir = rd;
	c->mode = mode;
	c->efd[0] = mode == FERRY_BELL_EVENTFD ? efd[0] : -1;
	c->efd[1] = mode == FERRY_BELL_EVENTFD ? efd[1] : -1;
	c->spin_ns = FERRY_CHAN_SPIN_NS_DEFAULT;
	c->pause_ns = FERRY_CHAN_PAUSE_NS_DEFAULT;
	c->ctl[FERRY_TO_BROKER] = ring_ctl(mem, n, FERRY_TO_BROKER);
	c->ctl[FERRY_TO_PEER] = ring_ctl(mem, n, FERRY_TO_PEER);
	c->slot[FERRY_TO_BROKER] = (struct ferry_desc *)(c->ctl[FERRY_TO_BROKER] + 1);
	c->slot[FERRY_TO_PEER] = (struct ferry_desc *)(c->ctl[FERRY_TO_PEER] + 1);
	c->tx_tail = tx_tail;
	c->tx_head = tx_head;
	c->rx_head = rx_head;
	c->rx_tail = rx_tail;
	return 0;
}

static void futex_wake(_Atomic uint32_t *word, int n)
{
	/* Shared futex (no FUTEX_PRIVATE_FLAG): the sleeper is another process. */
	syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

static void ring_bell(struct ferry_chan *c, enum ferry_chan_dir dir, int nwake)
{
	struct ferry_chan_ctl *k = c->ctl[dir];

	atomic_fetch_add_explicit(&k->seq, 1, memory_order_seq_cst);
	if (c->mode == FERRY_BELL_FUTEX) {
		if (!c->wake_hook || c->wake_hook(c->wake_arg, &k->seq, nwake))
			futex_wake(&k->seq, nwake);
	} else {
		uint64_t one = 1;
		ssize_t r = write(c->efd[dir], &one, sizeof(one));

		/* -EAGAIN means the count is huge: the consumer wakes anyway. */
		(void)r;
	}
	c->wakes++;
}

int ferry_chan_send(struct ferry_chan *c, const struct ferry_desc *d)
{
	enum ferry_chan_dir dir = tx_dir(c);
	struct ferry_chan_ctl *k = c->ctl[dir];
	uint32_t tail = c->tx_tail;

	/* Read the consumer's index only when our last view says full. */
	if (tail - c->tx_head >= c->nslots) {
		uint32_t head = atomic_load_explicit(&k->head, memory_order_acquire);

		if (tail - head > c->nslots)
			return -EPROTO;
		c->tx_head = head;
		if (tail - head == c->nslots) {
			c->full++;
			return -EAGAIN;
		}
	}
	memcpy(&c->slot[dir][tail & (c->nslots - 1)], d, sizeof(*d));
	c->tx_tail = tail + 1;
	atomic_store_explicit(&k->tail, tail + 1, memory_order_release);
	c->sent++;

	atomic_thread_fence(memory_order_seq_cst);
	/* Look before the locked exchange: the sleeper is the rare case. */
	if (atomic_load_explicit(&k->waiting, memory_order_relaxed) &&
	    atomic_exchange_explicit(&k->waiting, 0, memory_order_relaxed))
		ring_bell(c, dir, 1);
	return 0;
}

/* 1 when something can be received, 0 when empty, -EPROTO when corrupt. */
static int rx_ready(struct ferry_chan *c)
{
	uint32_t head = c->rx_head, tail;

	if (head != c->rx_tail)
		return 1;
	tail = atomic_load_explicit(&c->ctl[c->rx_dir]->tail, memory_order_acquire);
	if (tail - head > c->nslots)
		return -EPROTO;
	c->rx_tail = tail;
	return tail != head;
}

int ferry_chan_recv(struct ferry_chan *c, struct ferry_desc *out)
{
	enum ferry_chan_dir dir = c->rx_dir;
	uint32_t head = c->rx_head;
	int r = rx_ready(c);

	if (r <= 0)
		return r ? r : -EAGAIN;
	/* Copy out once; the producer may scribble on the slot meanwhile. */
	memcpy(out, &c->slot[dir][head & (c->nslots - 1)], sizeof(*out));
	c->rx_head = head + 1;
	atomic_store_explicit(&c->ctl[dir]->head, head + 1, memory_order_release);
	c->received++;
	return 0;
}

uint32_t ferry_chan_pending(const struct ferry_chan *c, enum ferry_chan_dir dir)
{
	const struct ferry_chan_ctl *k = c->ctl[dir];

	if (dir == c->rx_dir)
		return atomic_load_explicit(&k->tail, memory_order_acquire) - c->rx_head;
	return c->tx_tail - atomic_load_explicit(&k->head, memory_order_acquire);
}

_Atomic uint32_t *ferry_chan_bell_word(struct ferry_chan *c, enum ferry_chan_dir dir)
{
	return &c->ctl[dir]->seq;
}

void ferry_chan_end_sleep(struct ferry_chan *c)
{
	atomic_store_explicit(&c->ctl[c->rx_dir]->waiting, 0, memory_order_relaxed);
}

bool ferry_chan_prepare_sleep(struct ferry_chan *c, uint32_t *seq_out)
{
	struct ferry_chan_ctl *k = c->ctl[c->rx_dir];

	if (c->rx_head != c->rx_tail)
		return false;
	atomic_store_explicit(&k->waiting, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst);
	*seq_out = atomic_load_explicit(&k->seq, memory_order_acquire);
	if (rx_ready(c)) {
		ferry_chan_end_sleep(c);
		return false;
	}
	c->sleeps++;
	return true;
}

void ferry_chan_kick(struct ferry_chan *c, enum ferry_chan_dir dir)
{
	ring_bell(c, dir, INT_MAX);
}

/*
 * Sleep until the bell of our receive direction rings, it already rang
 * since @seq was read, or @rem_ns (<0: forever) passes.  0 on a (possibly
 * spurious) wake, -ETIMEDOUT, -EINTR, -EBADF for a dead eventfd, or
 * another -errno where the wait itself cannot work (-EFAULT: the bell
 * word sits in a mapping the kernel cannot pin, e.g. a kmod grant without
 * FERRY_PIN), which must not turn into a spin.
 */
static int bell_sleep(struct ferry_chan *c, uint32_t seq, int64_t rem_ns)
{
	struct timespec ts, *tsp = NULL;
	int r;

	if (rem_ns >= 0) {
		ts.tv_sec = rem_ns / 1000000000;
		ts.tv_nsec = rem_ns % 1000000000;
		tsp = &ts;
	}
	if (c->mode == FERRY_BELL_FUTEX) {
		/* Relative timeout, CLOCK_MONOTONIC; shared futex. */
		r = (int)syscall(SYS_futex, &c->ctl[c->rx_dir]->seq, FUTEX_WAIT, seq, tsp,
				 NULL, 0);
		if (r == 0 || errno == EAGAIN)
			return 0;
		return -errno;
	} else {
		struct pollfd p = { .fd = c->efd[c->rx_dir], .events = POLLIN };
		uint64_t v;
		struct iovec iov = { .iov_base = &v, .iov_len = sizeof(v) };

		r = ppoll(&p, 1, tsp, NULL);
		if (r < 0)
			return errno == EINTR ? -EINTR : -errno;
		if (r == 0)
			return -ETIMEDOUT;
		if (p.revents & POLLNVAL)
			return -EBADF;
		/*
		 * Consume the count without ever blocking, even on an eventfd
		 * made without EFD_NONBLOCK; EAGAIN (nothing there) is harmless.
		 */
		if (preadv2(p.fd, &iov, 1, -1, RWF_NOWAIT) < 0 && errno == EOPNOTSUPP)
			r = (int)read(p.fd, &v, sizeof(v));
		return 0;
	}
}

void ferry_chan_wake_self(struct ferry_chan *c)
{
	struct ferry_chan_ctl *k = c->ctl[c->rx_dir];

	atomic_thread_fence(memory_order_seq_cst);
	/* As a sender would: only a consumer that announced its sleep. */
	if (!atomic_load_explicit(&k->waiting, memory_order_relaxed) ||
	    !atomic_exchange_explicit(&k->waiting, 0, memory_order_relaxed))
		return;
	atomic_fetch_add_explicit(&k->seq, 1, memory_order_seq_cst);
	if (c->mode == FERRY_BELL_FUTEX) {
		futex_wake(&k->seq, INT_MAX);
	} else {
		uint64_t one = 1;
		ssize_t r = write(c->efd[c->rx_dir], &one, sizeof(one));

		(void)r;
	}
}

static int recv_wait(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
		     uint64_t spin_ns, const _Atomic bool *dead, bool (*other)(void *), void *arg);

int ferry_chan_recv_wait(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
			 const _Atomic bool *dead)
{
	return recv_wait(c, out, timeout_ns, c->spin_ns, dead, NULL, NULL);
}

int ferry_chan_recv_wait_or(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
			    bool (*other)(void *), void *arg)
{
	return recv_wait(c, out, timeout_ns, c->spin_ns, NULL, other, arg);
}

int ferry_chan_recv_wait_spin(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
			      uint64_t spin_ns, bool (*other)(void *), void *arg)
{
	return recv_wait(c, out, timeout_ns, spin_ns, NULL, other, arg);
}

static int recv_wait(struct ferry_chan *c, struct ferry_desc *out, int64_t timeout_ns,
		     uint64_t spin_ns, const _Atomic bool *dead, bool (*other)(void *), void *arg)
{
	uint64_t start, deadline, spin_end, now;
	unsigned int i;
	int r;

	r = ferry_chan_recv(c, out);
	if (r != -EAGAIN)
		return r;
	if (dead && atomic_load(dead))
		return -EPIPE;
	if (timeout_ns == 0)
		return -ETIMEDOUT;

	start = now = now_ns();
	deadline = timeout_ns < 0 ? UINT64_MAX : start + (uint64_t)timeout_ns;
	spin_end = spin_ns > deadline - start ? deadline : start + spin_ns;

	/*
	 * Spin: a reply that comes within spin_ns costs no system call.  After
	 * the first pause_ns, yield between looks: on an idle machine
	 * sched_yield() returns at once, on a busy one it lets the peer (who
	 * may be waiting for this very CPU) run instead of burning its slice.
	 */
	for (i = 0;; i++) {
		bool yielding = now - start >= c->pause_ns;

		/* A yield may last a time slice: look at the clock after each. */
		if (yielding || (i & 15) == 0) {
			now = now_ns();
			if (now >= spin_end)
				break;
			if (dead && atomic_load_explicit(dead, memory_order_relaxed))
				return -EPIPE;
		}
		if (yielding)
			sched_yield();
		else
			cpu_relax();
		r = ferry_chan_recv(c, out);
		if (r != -EAGAIN)
			return r;
		if (other && other(arg))
			return -EALREADY;
	}

	for (;;) {
		uint32_t seq;
		int slept;

		now = now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		if (!ferry_chan_prepare_sleep(c, &seq)) {
			r = ferry_chan_recv(c, out);
			if (r != -EAGAIN)
				return r;
			continue;
		}
		/* After the seq read: a kicker sets *dead before bumping seq. */
		if (dead && atomic_load(dead)) {
			ferry_chan_end_sleep(c);
			return -EPIPE;
		}
		/* Likewise whoever makes other() true calls ferry_chan_wake_self()
		 * after: it happened before this look, or the wake comes. */
		if (other && other(arg)) {
			ferry_chan_end_sleep(c);
			return -EALREADY;
		}
		slept = bell_sleep(c, seq, deadline == UINT64_MAX ? -1 : (int64_t)(deadline - now));
		ferry_chan_end_sleep(c);
		r = ferry_chan_recv(c, out);
		if (r != -EAGAIN)
			return r;
		/* -ETIMEDOUT: the deadline check returns on the next turn. */
		if (slept < 0 && slept != -ETIMEDOUT)
			return slept;
	}
}
