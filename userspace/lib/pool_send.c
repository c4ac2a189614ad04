// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Handing a pool to another process over a unix socket: the reference and,
 * where the pool has one, its fd (SCM_RIGHTS) in one message.  What arrives
 * is checked before it is imported; a message without the fd its reference
 * promises, or with fds it does not, is refused and every fd closed.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ferry.h"
#include "proto.h"

#define POOL_MSG_MAGIC 0x4c4f4f50u	/* "POOL" */
#define POOL_MSG_VERSION 1u

struct pool_msg {
	uint32_t magic;
	uint32_t version;
	struct ferry_pool_ref ref;	/* fd: 1 if one travels with it, else -1 */
};

int ferry_pool_send(int sock, const struct ferry_pool *p)
{
	struct pool_msg m = { .magic = POOL_MSG_MAGIC, .version = POOL_MSG_VERSION };
	int fd, err = ferry_pool_export(p, &m.ref);
	ssize_t n;

	if (err)
		return err;
	fd = m.ref.fd;
	if (fd >= 0)
		m.ref.fd = 1;
	n = ferry_send_fds(sock, &m, sizeof(m), &fd, fd >= 0 ? 1 : 0);
	err = n < 0 ? (int)n : n != (ssize_t)sizeof(m) ? -EMSGSIZE : 0;
	if (fd >= 0)
		close(fd);
	return err;
}

int ferry_pool_recv(int sock, struct ferry_pool **out)
{
	struct pool_msg m;
	unsigned int kept, arrived;
	int fd = -1, err;

	if (!out)
		return -EINVAL;
	err = ferry_recv_fds(sock, &m, sizeof(m), &fd, 1, &kept, &arrived, 0);
	if (err)
		return err;
	if (m.magic != POOL_MSG_MAGIC || m.version != POOL_MSG_VERSION ||
	    arrived != (m.ref.fd >= 0 ? 1u : 0u)) {
		err = -EPROTO;
	} else {
		m.ref.fd = kept ? fd : -1;
		err = ferry_pool_import(&m.ref, out);
	}
	if (kept)
		close(fd);
	return err;
}
