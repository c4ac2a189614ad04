// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Starting the broker's processes.  A forked peer keeps nothing of the
 * broker's but one control socket (moved to fd 3): regions, channels and
 * eventfds reach it afterwards through that socket, so a child holds
 * exactly what it was given.  It dies with the thread that forked it
 * (PR_SET_PDEATHSIG), which is how "the broker's exit takes every process
 * with it" holds even when the broker is SIGKILLed.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker_internal.h"

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_pidfd_send_signal
#define __NR_pidfd_send_signal 424
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif

int ferry_pidfd_open(pid_t pid)
{
	int fd = (int)syscall(__NR_pidfd_open, pid, 0);

	return fd < 0 ? -errno : fd;
}

int ferry_pidfd_kill(int pidfd, int sig)
{
	return syscall(__NR_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

/* Close every fd from @lo up; close_range(2) where the kernel has it. */
void ferry_close_from(int lo)
{
	if (syscall(__NR_close_range, lo, ~0U, 0) == 0)
		return;
	for (int fd = lo; fd < 65536; fd++)
		close(fd);
}

/*
 * Fork a peer.  In the parent: returns the pid, *pidfd_out and *ctl_out
 * (the broker's end of the control socket).  In the new process: returns 0
 * with *ctl_out = 3, every other fd above stderr closed.
 */
pid_t ferry_spawn(int *pidfd_out, int *ctl_out)
{
	pid_t parent = getpid(), pid;
	int sv[2], pidfd;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	/* Else the child inherits unwritten stdio buffers and writes them twice. */
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		int err = -errno;

		close(sv[0]);
		close(sv[1]);
		return err;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)	/* the broker died before prctl */
			_exit(127);
		if (dup2(sv[1], 3) < 0)
			_exit(127);
		ferry_close_from(4);
		*ctl_out = 3;
		return 0;
	}
	close(sv[1]);
	pidfd = ferry_pidfd_open(pid);
	if (pidfd < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(sv[0]);
		return pidfd;
	}
	*pidfd_out = pidfd;
	*ctl_out = sv[0];
	return pid;
}
