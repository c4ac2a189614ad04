/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tests' side channel: one message, with or without one fd, over the
 * library's own fd-passing transport (proto.h).
 */
#ifndef FERRY_TEST_SCM_H
#define FERRY_TEST_SCM_H

#include "proto.h"

static inline int send_fd(int sock, int fd, const void *msg, size_t len)
{
	return ferry_send_fds(sock, msg, len, &fd, fd >= 0 ? 1 : 0) == (ssize_t)len ? 0 : -1;
}

static inline int recv_fd(int sock, int *fd, void *msg, size_t len)
{
	unsigned int kept;

	*fd = -1;
	return ferry_recv_fds(sock, msg, len, fd, 1, &kept, NULL, 0) ? -1 : 0;
}

#endif /* FERRY_TEST_SCM_H */
