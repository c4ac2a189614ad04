/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The unix sockets the broker listens on (attach, stats) and its clients
 * connect to: SOCK_SEQPACKET, close-on-exec, a path that must fit.
 * Shared by the library and ferryctl; nothing of the broker's state here.
 */
#ifndef FERRY_UNIX_SOCKET_H
#define FERRY_UNIX_SOCKET_H

#include <stdbool.h>

/* A listening socket at @path (non-blocking; a stale one from a dead
 * broker is replaced, a live one is -EADDRINUSE); *@bound: its path,
 * malloc'd.  0 or -errno (-ENAMETOOLONG: no path or one too long). */
int ferry_unix_listen(const char *path, char **bound, int *fd_out);
/* A connected socket (blocking), or -errno. */
int ferry_unix_connect(const char *path);
struct ucred;
/* The peer of @fd runs as our user or root (SO_PEERCRED, into @cred). */
bool ferry_peer_trusted(int fd, struct ucred *cred);

#endif /* FERRY_UNIX_SOCKET_H */
