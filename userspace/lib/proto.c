// SPDX-License-Identifier: LGPL-2.1-or-later
/* Control messages with fds, over SOCK_SEQPACKET (see proto.h). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto.h"

int ferry_ctl_send(int sock, const struct ferry_ctl *m, const int *fds, unsigned int nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * FERRY_CTL_MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct ferry_ctl out = *m;
	struct iovec iov = { .iov_base = &out, .iov_len = sizeof(out) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds > FERRY_CTL_MAX_FDS)
		return -EINVAL;
	/* Every message carries them; senders only fill in what they mean. */
	out.magic = FERRY_PROTO_MAGIC;
	out.version = FERRY_PROTO_VERSION;
	out.nfds = nfds;
	if (nfds) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	do {
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n == (ssize_t)sizeof(out) ? 0 : -EIO;
}

int ferry_ctl_recv(int sock, struct ferry_ctl *m, int *fds, unsigned int *nfds_out, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 16)];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = m, .iov_len = sizeof(*m) };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	unsigned int got = 0;
	ssize_t n;
	int err = 0;

	do {
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ECONNRESET;
	/* Take every fd that arrived, keep what fits, close the rest. */
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		for (size_t i = 0; i < cnt; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (got < FERRY_CTL_MAX_FDS && fds)
				fds[got++] = fd;
			else
				close(fd);
		}
	}
	if (n != (ssize_t)sizeof(*m) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
	    m->magic != FERRY_PROTO_MAGIC || m->version != FERRY_PROTO_VERSION ||
	    m->nfds != got)
		err = -EPROTO;
	if (err) {
		for (unsigned int i = 0; i < got; i++)
			close(fds[i]);
		got = 0;
	}
	if (nfds_out)
		*nfds_out = got;
	return err;
}
