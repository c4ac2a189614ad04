// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Services the broker did not fork attach over a unix socket.  The broker
 * checks who connected (SO_PEERCRED: same user or root), gives it a region
 * and a channel exactly like a forked child's (fds by SCM_RIGHTS, kmod
 * grants by pidfd), and treats the connection closing as its death.
 * The connection itself is the request to attach: the broker never blocks
 * reading from a client.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker_internal.h"
#include "peer.h"
#include "unix_socket.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

int ferry_attach_listen(struct ferry_broker *b)
{
	return ferry_unix_listen(b->o.attach_path, &b->attach_path, &b->listen_fd);
}

static void refuse(int fd, int status)
{
	struct ferry_ctl m = {
		.type = FERRY_CTL_REFUSED, .status = status,
	};

	ferry_ctl_send(fd, &m, NULL, 0);
	close(fd);
}

void ferry_attach_accept(struct ferry_broker *b)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	unsigned int i;
	int fd, pidfd = -1, err;

	for (;;) {
		fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			return;	/* EAGAIN: all taken */
		if (!ferry_peer_trusted(fd, &cred)) {
			b->st.attach_refused++;
			refuse(fd, -EACCES);
			continue;
		}
		for (i = b->nchildren; i < b->nslots_total; i++)
			if (!b->child[i].used)
				break;
		if (i >= b->nslots_total) {
			b->st.attach_refused++;
			refuse(fd, -EBUSY);
			continue;
		}
		/* The kernel's pidfd of the peer where it has one: no pid reuse race. */
		len = sizeof(pidfd);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0)
			pidfd = ferry_pidfd_open(cred.pid);
		if (pidfd < 0) {
			b->st.attach_refused++;
			refuse(fd, -ESRCH);
			continue;
		}
		err = ferry_child_slot_setup(b, i);
		if (err) {
			close(pidfd);
			b->st.attach_refused++;
			refuse(fd, err);
			continue;
		}
		b->child[i].attached = true;
		b->child[i].alive = true;
		b->child[i].pid = cred.pid;
		b->child[i].pidfd = pidfd;
		b->child[i].ctl = fd;
		err = ferry_child_send_setup(b, i, pidfd);
		if (err) {
			b->child[i].alive = false;
			ferry_child_reclaim(b, i);
			b->st.attach_refused++;
			continue;
		}
		b->st.attached++;
		ferry_dispatch_adopt(b, i);
	}
}

/*
 * The broker answers HELLO from its dispatch thread; a broker that never
 * does (wedged, stopped with SIGSTOP) must not hang the service: the
 * setup's reads time out (SO_RCVTIMEO), and the socket blocks again
 * afterwards, as a child's control socket does.
 */
int ferry_attach_timeout(const char *path, int64_t timeout_ns, struct ferry_child **out)
{
	struct timeval tv = { 0 };
	struct ferry_child *c;
	int fd, err;

	if (!out || timeout_ns == 0)
		return -EINVAL;
	fd = ferry_unix_connect(path);
	if (fd < 0)
		return fd;
	if (timeout_ns > 0) {
		tv.tv_sec = (time_t)(timeout_ns / 1000000000);
		tv.tv_usec = (suseconds_t)(timeout_ns % 1000000000 / 1000);
		if (!tv.tv_sec && !tv.tv_usec)
			tv.tv_usec = 1;
		if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))) {
			err = -errno;
			close(fd);
			return err;
		}
	}
	c = malloc(sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	err = ferry_child_init(c, fd, true);
	if (err) {
		close(fd);
		free(c);
		return err == -EAGAIN ? -ETIMEDOUT : err;
	}
	tv = (struct timeval){ 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	*out = c;
	return 0;
}

int ferry_attach(const char *path, struct ferry_child **out)
{
	return ferry_attach_timeout(path, FERRY_ATTACH_TIMEOUT_NS, out);
}

void ferry_detach(struct ferry_child *c)
{
	if (!c)
		return;
	ferry_child_fini(c);
	free(c);
}
