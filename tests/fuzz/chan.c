// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer: a channel whose shared memory the other side filled with
 * anything.  The input becomes the channel's bytes (after a valid header,
 * or over it), then this end attaches, receives until the ring says empty
 * or corrupt, sends, and reads the indices back.  The memory is a heap
 * allocation of exactly the channel's size: ASan catches any access past
 * it, and the calls must end (a corrupt ring reads as -EPROTO, not a loop).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chan.h"

#define NSLOTS 8u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	size_t bytes = ferry_chan_bytes(NSLOTS);
	uint8_t *mem = aligned_alloc(FERRY_CHAN_LINE, bytes);
	struct ferry_chan c;
	struct ferry_desc d = { .op = 1 };
	size_t keep;

	if (!mem || len < 1) {
		free(mem);
		return 0;
	}
	ferry_chan_format(mem, bytes, NSLOTS);
	/* Byte 0: keep the header (1) or let the input overwrite it (0). */
	keep = data[0] & 1 ? FERRY_CHAN_LINE : 0;
	data++;
	len--;
	memcpy(mem + keep, data, len > bytes - keep ? bytes - keep : len);
	for (int broker = 0; broker < 2; broker++) {
		if (ferry_chan_attach(&c, mem, bytes, broker, FERRY_BELL_FUTEX, NULL))
			continue;
		c.spin_ns = 0;
		for (unsigned int i = 0; i < 4 * NSLOTS; i++)
			if (ferry_chan_recv(&c, &d))
				break;
		for (unsigned int i = 0; i < 2; i++)
			if (ferry_chan_send(&c, &d) == -EPROTO)
				break;
		ferry_chan_pending(&c, FERRY_TO_BROKER);
		ferry_chan_pending(&c, FERRY_TO_PEER);
	}
	free(mem);
	return 0;
}
