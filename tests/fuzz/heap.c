// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer: the region heap's checks on metadata a hostile child rewrote.
 * A heap is formatted, a few blocks allocated and freed, then the input is
 * written over the heap's first bytes (its header and block headers), and
 * ranges taken from the input are checked the way a helper checks them.
 * The region is a heap allocation of exactly its size, so ASan catches any
 * read outside it; the checks and the stats must never crash or loop.
 * The child's own calls (alloc, free) on the spoiled heap must not write
 * outside it either.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

#define SIZE (64u << 10)
#define HEAP_OFF 4096u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	uint8_t *base = malloc(SIZE);
	struct ferry_heap_stats st;
	int64_t a, b;

	if (!base)
		return 0;
	memset(base, 0, SIZE);
	if (ferry_heap_format(base, SIZE, HEAP_OFF)) {
		free(base);
		return 0;
	}
	a = ferry_heap_alloc(base, SIZE, 100);
	b = ferry_heap_alloc(base, SIZE, 3000);
	ferry_heap_alloc(base, SIZE, 64);
	if (a > 0)
		ferry_heap_free(base, SIZE, (uint64_t)a);
	/* The first half of the input spoils metadata, the rest names ranges. */
	size_t spoil = len / 2 > SIZE - HEAP_OFF ? SIZE - HEAP_OFF : len / 2;

	memcpy(base + HEAP_OFF, data, spoil);
	for (size_t i = spoil; i + 16 <= len; i += 16) {
		uint64_t off, n;

		memcpy(&off, data + i, 8);
		memcpy(&n, data + i + 8, 8);
		ferry_heap_check(base, SIZE, off % (2 * SIZE), n % (2 * SIZE));
		ferry_heap_check(base, SIZE, off, n);
	}
	if (b > 0)
		ferry_heap_check(base, SIZE, (uint64_t)b, 3000);
	ferry_heap_stats(base, SIZE, &st);
	a = ferry_heap_alloc(base, SIZE, 200);
	if (a > 0)
		ferry_heap_free(base, SIZE, (uint64_t)a);
	if (b > 0)
		ferry_heap_free(base, SIZE, (uint64_t)b);
	free(base);
	return 0;
}
