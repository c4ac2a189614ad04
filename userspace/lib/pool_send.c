// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Handing a pool to another process over a unix socket: the reference and,
 * where the pool has one, its fd (SCM_RIGHTS) in one message.  What arrives
 * is checked before it is imported; a message without the fd its reference
 * promises, or with fds it does not, is refused and every fd closed.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry.h"

#define POOL_MSG_MAGIC 0x4c4f4f50u	/* "POOL" */
#define POOL_MSG_VERSION 1u

struct pool_msg {
	uint32_t magic;
	uint32_t version;
	struct ferry_pool_ref ref;	/* fd: 1 if one travels with it, else -1 */
};

int ferry_pool_send(int sock, const struct ferry_pool *p)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct pool_msg m = { .magic = POOL_MSG_MAGIC, .version = POOL_MSG_VERSION };
	struct iovec iov = { .iov_base = &m, .iov_len = sizeof(m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fd, err = ferry_pool_export(p, &m.ref);
	ssize_t n;

	if (err)
		return err;
	fd = m.ref.fd;
	if (fd >= 0) {
		struct cmsghdr *cm;

		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
		m.ref.fd = 1;
	}
	do {
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	err = n < 0 ? -errno : n != (ssize_t)sizeof(m) ? -EMSGSIZE : 0;
	if (fd >= 0)
		close(fd);
	return err;
}

int ferry_pool_recv(int sock, struct ferry_pool **out)
{
	char cbuf[CMSG_SPACE(4 * sizeof(int))];
	struct pool_msg m;
	struct iovec iov = { .iov_base = &m, .iov_len = sizeof(m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	int fds[4], nfds = 0, err;
	ssize_t n;

	if (!out)
		return -EINVAL;
	do {
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t k = 0; k < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int) && nfds < 4; k++)
			memcpy(&fds[nfds++], CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
	}
	if (n == 0)
		err = -ECONNRESET;
	else if (n != (ssize_t)sizeof(m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
		 m.magic != POOL_MSG_MAGIC || m.version != POOL_MSG_VERSION ||
		 nfds != (m.ref.fd >= 0 ? 1 : 0))
		err = -EPROTO;
	else {
		m.ref.fd = nfds ? fds[0] : -1;
		err = ferry_pool_import(&m.ref, out);
	}
	for (int k = 0; k < nfds; k++)
		close(fds[k]);
	return err;
}
