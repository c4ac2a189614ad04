// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer: the control protocol a peer and the broker speak (setup,
 * attach, pools), fed whatever a hostile or broken peer could send: the
 * input is one SOCK_SEQPACKET message (maybe truncated or oversized) read
 * by ferry_ctl_recv and by the setup a child runs on it, by the helper's
 * receiver of region batches and by the pool receiver.  Nothing may crash, leak an fd or map anything it did not
 * validate; errors are the only outcome (no fds travel here).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer.h"
#include "proto.h"

static void send_input(int sock, const uint8_t *data, size_t len)
{
	/* Loose framing: the first input byte picks the message's length. */
	if (len > 4096)
		len = 4096;
	if (send(sock, data, len, MSG_DONTWAIT) < 0)
		return;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	int sv[2], fds[FERRY_CTL_MAX_FDS], efd[2], pool_fd;
	unsigned int nfds = 0;
	struct ferry_ctl m;
	struct ferry_rctx *rc;
	struct ferry_region *region;
	struct ferry_chan ch;
	struct ferry_pool *pool;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return 0;
	/* 1: the raw receiver. */
	send_input(sv[0], data, len);
	if (ferry_ctl_recv(sv[1], &m, fds, &nfds, MSG_DONTWAIT) == 0)
		for (unsigned int i = 0; i < nfds; i++)
			close(fds[i]);
	/* 2: a peer's setup on the same bytes, made to look like a message. */
	if (len >= sizeof(m)) {
		memcpy(&m, data, sizeof(m));
		m.nfds = 0;
		m.region.fd = -1;
		ferry_ctl_send(sv[0], &m, NULL, 0);
		if (ferry_peer_setup(sv[1], &m, &rc, &region, &ch, efd, &pool_fd) == 0) {
			/* Validated and mapped: what it got must be usable and freed. */
			ferry_region_close(region);
			ferry_rctx_close(rc);
			if (pool_fd >= 0)
				close(pool_fd);
		}
	}
	/* 3: a batch of region announcements, as a helper reads them. */
	send_input(sv[0], data, len);
	{
		static struct ferry_ctl_regions rm;
		int rfds[FERRY_CTL_BATCH];
		unsigned int rn = 0;

		if (ferry_ctl_regions_recv(sv[1], &rm, rfds, &rn, MSG_DONTWAIT) == 0)
			for (unsigned int i = 0; i < rn; i++)
				close(rfds[i]);
	}
	/* 4: a pool reference. */
	send_input(sv[0], data, len);
	if (ferry_pool_recv(sv[1], &pool) == 0)
		ferry_pool_close(pool);
	close(sv[0]);
	close(sv[1]);
	return 0;
}
