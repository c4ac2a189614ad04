/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One io_uring that waits for many things at once: channel doorbells
 * (IORING_OP_FUTEX_WAIT where the kernel has it, else a read of the
 * channel's eventfd) and readable fds (pidfds of children and helpers, a
 * listening socket) through IORING_OP_POLL_ADD.  The broker's dispatch
 * thread sleeps in exactly one place: ferry_waitset_wait().
 *
 * The futex opcodes are newer than bookworm's liburing 2.3 and its kernel
 * headers, so their SQEs are filled by hand with the values of the
 * kernel's uAPI; which path is used is decided at run time by probing
 * (io_uring's opcode probe, then one real FUTEX_WAIT that must fail with
 * -EAGAIN).
 *
 * Not thread-safe: one thread arms, disarms and waits (io_uring ties each
 * request to the thread that submitted it; if that thread exits, its waits
 * are cancelled).  The ring fd is close-on-exec but survives fork(): a
 * forked process that does not use the waitset should close
 * ferry_waitset_fd().
 *
 * The broker pattern, per channel c with key k:
 *     if (ferry_chan_prepare_sleep(c, &seq)) arm(k, ferry_chan_bell_word(c,
 *         FERRY_TO_BROKER), seq)  [or arm_eventfd(k, efd[FERRY_TO_BROKER])]
 *     else: c has work, drain it first
 *   ferry_waitset_wait(); for each fired k: ferry_chan_end_sleep(c), drain c,
 *   then prepare_sleep and arm again.
 */
#ifndef FERRY_WAITSET_H
#define FERRY_WAITSET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chan.h"

struct ferry_waitset;

#define FERRY_WAITSET_MAX_SOURCES 16384u

/* Up to @max_sources (1..FERRY_WAITSET_MAX_SOURCES) armed at once.
 * FERRY_WAITSET_FORCE_EVENTFD=1 in the environment (or @force_eventfd)
 * skips the futex path, for tests.  -EOPNOTSUPP when the kernel's io_uring
 * lacks READ/POLL_ADD/ASYNC_CANCEL (older than 5.6). */
int ferry_waitset_create(unsigned int max_sources, bool force_eventfd,
			 struct ferry_waitset **out);
/* Cancels whatever is armed. */
void ferry_waitset_destroy(struct ferry_waitset *ws);
/* The doorbell mode channels served by this waitset must use. */
enum ferry_bell_mode ferry_waitset_mode(const struct ferry_waitset *ws);
/* The io_uring's fd (for closing in a forked process). */
int ferry_waitset_fd(const struct ferry_waitset *ws);

/*
 * Arm a one-shot wait for @key (any uint32_t, chosen by the caller):
 *  - on a futex word (4-byte aligned, normally in MAP_SHARED memory, waited
 *    on as a shared futex): completes when *word != @val or a wake arrives;
 *    -EOPNOTSUPP in FERRY_BELL_EVENTFD mode;
 *  - on an eventfd: completes when it becomes readable (the count is
 *    consumed);
 *  - on any fd: completes when it polls readable (POLLIN; also fires on
 *    POLLERR/POLLHUP).
 * Each completion reports its key once, whatever its result (a wait that
 * failed, e.g. on a closed fd, fires too); re-arm to wait again.  Arming
 * only prepares a submission; ferry_waitset_wait() submits.  -EBUSY if
 * @key is already armed, -ENOSPC when max_sources keys are armed, -EINVAL
 * for a bad word or fd.
 */
int ferry_waitset_arm_futex(struct ferry_waitset *ws, uint32_t key,
			    _Atomic uint32_t *word, uint32_t val);
int ferry_waitset_arm_eventfd(struct ferry_waitset *ws, uint32_t key, int efd);
int ferry_waitset_arm_poll(struct ferry_waitset *ws, uint32_t key, int fd);
/* The same for POLLOUT: completes when @fd has room (a full socket drained). */
int ferry_waitset_arm_poll_out(struct ferry_waitset *ws, uint32_t key, int fd);
/*
 * Cancel an armed key (e.g. its fd is about to close): the key is free at
 * once (it may be armed again right away) and never reports the old wait,
 * even if that completed meanwhile.  The cancellation is submitted before
 * returning.  -ENOENT if not armed (including: it fired and was reported).
 */
int ferry_waitset_disarm(struct ferry_waitset *ws, uint32_t key);
bool ferry_waitset_armed(const struct ferry_waitset *ws, uint32_t key);

/*
 * Queue a wake of up to @n sleepers on a shared futex @word (FUTEX mode
 * only: IORING_OP_FUTEX_WAKE, no completion on success).  It goes out with
 * the next ferry_waitset_flush() or ferry_waitset_wait(), so many wakes
 * cost one system call.  -EOPNOTSUPP in EVENTFD mode, -EAGAIN when no
 * submission slot is free: wake directly then.
 */
int ferry_waitset_wake_futex(struct ferry_waitset *ws, _Atomic uint32_t *word, int n);
/* Submit whatever is queued (wakes, arms) without waiting; 0 or -errno. */
int ferry_waitset_flush(struct ferry_waitset *ws);

/*
 * Submit what was armed and wait until at least one key fires or
 * @timeout_ns passes (<0: forever, 0: don't wait).  Writes up to @max
 * (>= 1) fired keys to @keys and returns how many (0 on timeout), or
 * -errno (-EINTR when a signal interrupted the wait).  Fired keys beyond
 * @max stay queued for the next call.
 */
int ferry_waitset_wait(struct ferry_waitset *ws, uint32_t *keys, unsigned int max,
		       int64_t timeout_ns);
/*
 * Whether a wait has fired since the last ferry_waitset_wait() took it: a
 * look at the completion ring in shared memory, no system call.  (A wait
 * armed but not yet submitted cannot have fired.)
 */
bool ferry_waitset_fired(struct ferry_waitset *ws);

#endif /* FERRY_WAITSET_H */
