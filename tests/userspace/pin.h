/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tests' probes of whether memory can be pinned (get_user_pages): what a
 * kmod grant without FERRY_PIN forbids.  vmsplice() takes page references
 * and a shared futex looks its page up the same way; both answer -EFAULT
 * on a mapping that holds PFN entries.
 */
#ifndef FERRY_TEST_PIN_H
#define FERRY_TEST_PIN_H

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/*
 * 0 when vmsplice() took all @len bytes at @p (at most 4096) and the pipe
 * gave back exactly what is there, else -errno (-EIO: wrong bytes).
 */
static inline int pin_probe_vmsplice(const void *p, size_t len)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = len };
	uint8_t back[4096];
	int pfd[2], err = 0;
	ssize_t n;

	if (len > sizeof(back))
		return -EINVAL;
	if (pipe2(pfd, O_CLOEXEC))
		return -errno;
	n = vmsplice(pfd[1], &iov, 1, 0);
	if (n < 0)
		err = -errno;
	else if (n != (ssize_t)len || read(pfd[0], back, len) != (ssize_t)len ||
		 memcmp(back, p, len))
		err = -EIO;
	close(pfd[0]);
	close(pfd[1]);
	return err;
}

/* 0 when a shared FUTEX_WAKE (nobody waits) accepts @word, else -errno. */
static inline int pin_probe_futex(const void *word)
{
	if (syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0) < 0)
		return -errno;
	return 0;
}

#endif /* FERRY_TEST_PIN_H */
