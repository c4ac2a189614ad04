// SPDX-License-Identifier: LGPL-2.1-or-later
/* Control messages with fds, over SOCK_SEQPACKET (see proto.h). */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto.h"

ssize_t ferry_send_fds(int sock, const void *buf, size_t len, const int *fds, unsigned int nfds)
{
	return ferry_send_fds_flags(sock, buf, len, fds, nfds, 0);
}

ssize_t ferry_send_fds_flags(int sock, const void *buf, size_t len, const int *fds,
			     unsigned int nfds, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * FERRY_FDS_MAX)];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds > FERRY_FDS_MAX)
		return -EINVAL;
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
		n = sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
	} while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

int ferry_recv_fds(int sock, void *buf, size_t len, int *fds, unsigned int max,
		   unsigned int *kept, unsigned int *arrived, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * FERRY_FDS_MAX)];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	unsigned int got = 0, all = 0;
	ssize_t n;

	*kept = 0;
	if (arrived)
		*arrived = 0;
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
			all++;
			if (got < max && fds)
				fds[got++] = fd;
			else
				close(fd);
		}
	}
	if (n != (ssize_t)len || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		for (unsigned int i = 0; i < got; i++)
			close(fds[i]);
		return -EPROTO;
	}
	*kept = got;
	if (arrived)
		*arrived = all;
	return 0;
}

int ferry_ctl_send(int sock, const struct ferry_ctl *m, const int *fds, unsigned int nfds)
{
	return ferry_ctl_send_flags(sock, m, fds, nfds, 0);
}

int ferry_ctl_send_flags(int sock, const struct ferry_ctl *m, const int *fds, unsigned int nfds,
			 int flags)
{
	struct ferry_ctl out = *m;
	ssize_t n;

	if (nfds > FERRY_CTL_MAX_FDS)
		return -EINVAL;
	/* Every message carries them; senders only fill in what they mean. */
	out.magic = FERRY_PROTO_MAGIC;
	out.version = FERRY_PROTO_VERSION;
	out.nfds = nfds;
	n = ferry_send_fds_flags(sock, &out, sizeof(out), fds, nfds, flags);
	if (n < 0)
		return (int)n;
	return n == (ssize_t)sizeof(out) ? 0 : -EIO;
}

int ferry_ctl_recv(int sock, struct ferry_ctl *m, int *fds, unsigned int *nfds_out, int flags)
{
	unsigned int got = 0;
	int err = ferry_recv_fds(sock, m, sizeof(*m), fds, FERRY_CTL_MAX_FDS, &got, NULL, flags);

	if (!err && (m->magic != FERRY_PROTO_MAGIC || m->version != FERRY_PROTO_VERSION ||
		     m->nfds != got)) {
		for (unsigned int i = 0; i < got; i++)
			close(fds[i]);
		got = 0;
		err = -EPROTO;
	}
	if (nfds_out)
		*nfds_out = got;
	return err;
}

int ferry_ctl_regions_send(int sock, const struct ferry_ctl_regions *m, const int *fds,
			   unsigned int nfds, int flags)
{
	struct ferry_ctl_regions out = *m;
	ssize_t n;

	if (nfds > FERRY_CTL_BATCH || m->count == 0 || m->count > FERRY_CTL_BATCH)
		return -EINVAL;
	out.magic = FERRY_PROTO_MAGIC;
	out.version = FERRY_PROTO_VERSION;
	out.type = FERRY_CTL_REGIONS;
	out.nfds = nfds;
	n = ferry_send_fds_flags(sock, &out, sizeof(out), fds, nfds, flags);
	if (n < 0)
		return (int)n;
	return n == (ssize_t)sizeof(out) ? 0 : -EIO;
}

static bool regions_valid(const struct ferry_ctl_regions *m, unsigned int got)
{
	if (m->magic != FERRY_PROTO_MAGIC || m->version != FERRY_PROTO_VERSION ||
	    m->type != FERRY_CTL_REGIONS || m->nfds != got || m->count == 0 ||
	    m->count > FERRY_CTL_BATCH)
		return false;
	for (uint32_t k = 0; k < m->count; k++) {
		const struct ferry_ctl_region *e = &m->r[k];

		if ((e->op != FERRY_REGION_ADD && e->op != FERRY_REGION_DROP) ||
		    e->fd < -1 || e->fd >= (int)got || e->reserved)
			return false;
	}
	return true;
}

int ferry_ctl_regions_recv(int sock, struct ferry_ctl_regions *m, int *fds,
			   unsigned int *nfds_out, int flags)
{
	unsigned int got = 0;
	int err = ferry_recv_fds(sock, m, sizeof(*m), fds, FERRY_CTL_BATCH, &got, NULL, flags);

	if (!err && !regions_valid(m, got)) {
		for (unsigned int i = 0; i < got; i++)
			close(fds[i]);
		got = 0;
		err = -EPROTO;
	}
	*nfds_out = got;
	return err;
}
