// SPDX-License-Identifier: LGPL-2.1-or-later
/* Unix sockets for attach, stats and ferryctl (see unix_socket.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "unix_socket.h"

static int sun_path(const char *path, struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (!path || !*path || strlen(path) >= sizeof(a->sun_path))
		return -ENAMETOOLONG;
	strcpy(a->sun_path, path);
	return 0;
}

int ferry_unix_listen(const char *path, char **bound, int *fd_out)
{
	struct sockaddr_un a;
	int fd, err = sun_path(path, &a);

	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	err = bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ? -errno : 0;
	if (err == -EADDRINUSE) {
		/* A stale socket from a dead broker may be replaced; a live one not. */
		int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof(a)) == 0;

		if (probe >= 0)
			close(probe);
		if (!live) {
			unlink(a.sun_path);
			err = bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ? -errno : 0;
		}
	}
	if (!err && listen(fd, 64) < 0)
		err = -errno;
	if (!err && !(*bound = strdup(a.sun_path)))
		err = -ENOMEM;
	if (err) {
		close(fd);
		return err;
	}
	*fd_out = fd;
	return 0;
}

int ferry_unix_connect(const char *path)
{
	struct sockaddr_un a;
	int fd, err = sun_path(path, &a);

	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Same user or root, as SO_PEERCRED says. */
bool ferry_peer_trusted(int fd, struct ucred *cred)
{
	socklen_t len = sizeof(*cred);

	return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) == 0 &&
	       (cred->uid == geteuid() || cred->uid == 0);
}
