// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The process that forks the broker's children.
 *
 * A fork costs what the forking process holds: its fd table (each child
 * closes every inherited fd) and its mappings (copied, then dropped: the
 * regions are MADV_DONTFORK).  Forked by the broker itself, child n paid
 * for the pidfd and region of every child before it: start-up grew with
 * the square of the children (4096 children: ~13 s on 2 cores, most of it
 * in filp_close and dup_mmap).  The spawner is forked once, before any
 * child exists, and holds a socket and little else; each child is forked
 * from it and costs the same.
 *
 * Protocol, SOCK_SEQPACKET: the broker sends SPAWN (slot index, the child's
 * end of its control socket attached); the spawner forks and answers
 * STARTED with the pid and a pidfd (opened before the child can be
 * reaped, so it names that process), or the error.  When a child ends the
 * spawner reaps it and sends EXITED with its wait status; the broker reads
 * those when the child's pidfd fires (or stashes them while waiting for
 * something else).  The children are the spawner's: it dies with the
 * broker's thread (PR_SET_PDEATHSIG) and they die with it.  QUIT, or the
 * broker closing the socket: reap every child, then exit.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker_internal.h"
#include "peer.h"

enum { SPAWN = 1, QUIT = 2, STARTED = 3, EXITED = 4 };

struct spawn_msg {
	uint32_t type;
	uint32_t index;		/* child slot */
	int32_t pid;
	int32_t status;		/* EXITED: wait status; STARTED: 0 or -errno */
};

/* In the spawner: fork child @index on @ctl; its pid, or -errno. */
static pid_t fork_child(const struct ferry_broker *b, uint32_t index, int ctl,
			const sigset_t *mask)
{
	pid_t parent = getpid(), pid = fork();

	if (pid != 0)
		return pid < 0 ? -errno : pid;
	struct ferry_peer_cfg cfg = {
		.index = index, .child_fn = b->o.child_fn, .child_arg = b->o.child_arg,
	};

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)	/* the spawner died before prctl */
		_exit(127);
	sigprocmask(SIG_SETMASK, mask, NULL);
	if (dup2(ctl, 3) < 0)	/* over the spawner's socket */
		_exit(127);
	ferry_close_from(4);
	ferry_peer_affinity(b, -1);
	ferry_child_main(&cfg, 3);
}

static void send_msg(int sock, uint32_t type, uint32_t index, pid_t pid, int status, int fd)
{
	struct spawn_msg m = { .type = type, .index = index, .pid = pid, .status = status };

	/* Blocking: the broker reads these; a broker gone is EPIPE, ignored. */
	ferry_send_fds(sock, &m, sizeof(m), fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0);
}

/* Reap what ended; tell the broker (@tell) which slot it was. */
static unsigned int reap(int sock, pid_t *pids, unsigned int n, bool tell, int flags)
{
	unsigned int reaped = 0;
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, flags)) > 0) {
		reaped++;
		for (unsigned int i = 0; i < n; i++) {
			if (pids[i] != pid)
				continue;
			pids[i] = 0;
			if (tell)
				send_msg(sock, EXITED, i, pid, st, -1);
			break;
		}
	}
	return reaped;
}

static _Noreturn void spawner_main(const struct ferry_broker *b, int sock)
{
	unsigned int n = b->nchildren;
	pid_t *pids = calloc(n ? n : 1, sizeof(*pids));
	sigset_t chld, old;
	struct pollfd p[2];

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old);
	p[0] = (struct pollfd){ .fd = sock, .events = POLLIN };
	p[1] = (struct pollfd){ .fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK),
				.events = POLLIN };
	if (!pids || p[1].fd < 0)
		_exit(127);
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents) {
			struct signalfd_siginfo si;

			while (read(p[1].fd, &si, sizeof(si)) == sizeof(si))
				;
			reap(sock, pids, n, true, WNOHANG);
		}
		if (!p[0].revents)
			continue;
		struct spawn_msg m;
		int fd = -1;
		unsigned int got = 0;

		if (ferry_recv_fds(sock, &m, sizeof(m), &fd, 1, &got, NULL, 0) || m.type != SPAWN)
			break;	/* QUIT, the broker gone, or nonsense */
		if (!got || m.index >= n || pids[m.index]) {
			if (got)
				close(fd);
			send_msg(sock, STARTED, m.index, 0, -EINVAL, -1);
			continue;
		}
		pid_t pid = fork_child(b, m.index, fd, &old);
		int pidfd = pid > 0 ? ferry_pidfd_open(pid) : -1;

		close(fd);
		if (pid > 0 && pidfd < 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			send_msg(sock, STARTED, m.index, 0, pidfd, -1);
			continue;
		}
		if (pid > 0)
			pids[m.index] = pid;
		send_msg(sock, STARTED, m.index, pid > 0 ? pid : 0, pid > 0 ? 0 : pid, pidfd);
		if (pidfd >= 0)
			close(pidfd);
	}
	/* The broker killed the children it stops; take every one of them. */
	close(sock);
	reap(-1, pids, n, false, 0);
	_exit(0);
}

int ferry_spawner_start(struct ferry_broker *b)
{
	int sock, pidfd;
	pid_t pid = ferry_spawn(&pidfd, &sock);

	if (pid < 0)
		return (int)pid;
	if (pid == 0)
		spawner_main(b, 3);
	b->spawner_pid = pid;
	b->spawner_pidfd = pidfd;
	b->spawner = sock;
	return 0;
}

/* Take one message; an EXITED one is stashed in its slot. */
static int read_msg(struct ferry_broker *b, struct spawn_msg *m, int *fd)
{
	unsigned int got = 0;
	int err;

	*fd = -1;
	err = ferry_recv_fds(b->spawner, m, sizeof(*m), fd, 1, &got, NULL, 0);
	if (err)
		return err;
	if (m->type == EXITED && m->index < b->nchildren && b->child[m->index].pid == m->pid) {
		b->child[m->index].exit_status = m->status;
		b->child[m->index].exit_known = true;
	}
	return 0;
}

pid_t ferry_spawner_spawn(struct ferry_broker *b, unsigned int i, int ctl, int *pidfd_out)
{
	struct spawn_msg m = { .type = SPAWN, .index = i };
	ssize_t n = ferry_send_fds(b->spawner, &m, sizeof(m), &ctl, 1);
	int fd, err;

	if (n < 0)
		return (pid_t)n;
	for (;;) {
		err = read_msg(b, &m, &fd);
		if (err)
			return err == -ECONNRESET ? -ECHILD : err;
		if (m.type == STARTED && m.index == i)
			break;
		if (fd >= 0)
			close(fd);
	}
	if (m.status < 0 || m.pid <= 0 || fd < 0) {
		if (fd >= 0)
			close(fd);
		return m.status < 0 ? m.status : -EPROTO;
	}
	*pidfd_out = fd;
	return m.pid;
}

int ferry_spawner_wait(struct ferry_broker *b, unsigned int i)
{
	struct bchild *c = &b->child[i];

	while (!c->exit_known) {
		struct spawn_msg m;
		int fd = -1;

		if (b->spawner < 0 || read_msg(b, &m, &fd)) {
			/* The spawner is gone, and with it the status: killed. */
			fprintf(stderr, "ferry: child %u: its exit status was lost\n", i);
			c->exit_status = SIGKILL;
			c->exit_known = true;
		}
		if (fd >= 0)
			close(fd);
	}
	return c->exit_status;
}

void ferry_spawner_stop(struct ferry_broker *b)
{
	struct spawn_msg m = { .type = QUIT };

	if (b->spawner < 0)
		return;
	ferry_send_fds(b->spawner, &m, sizeof(m), NULL, 0);
	close(b->spawner);	/* so that it never blocks telling us */
	b->spawner = -1;
	while (waitpid(b->spawner_pid, NULL, 0) < 0 && errno == EINTR)
		;
	close(b->spawner_pidfd);
	b->spawner_pidfd = -1;
}
