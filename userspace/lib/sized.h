/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The rules for the structs a caller allocates and the library reads or
 * fills (ferry.h, "ABI"), in one place.  Each struct has one layout per
 * release that changed it: its size then, and the END of the fields that
 * release knew (what lies between END and the size is reserved: 0).
 *
 * Appending a field to one of these structs (sized.c's static asserts
 * fail the build until it is done):
 *   1. add it at the end of the struct in ferry.h (never in the middle,
 *      never into the old trailing padding: name padding "reserved");
 *   2. in sized.c, write the table's last row (sizeof and END, which are
 *      about to change) as the numbers they are now, for the release that
 *      had them, and add a new last row { sizeof, FERRY_*_END };
 *   3. move the FERRY_*_END macro below to the new last field;
 *   4. give it a default in ferry_broker_opts_defaults() when 0 is not one.
 * Older callers then get the default, newer ones are checked (sized.c).
 */
#ifndef FERRY_SIZED_H
#define FERRY_SIZED_H

#include <stddef.h>

#include "ferry.h"

#define ferry_offsetofend(type, member) \
	(offsetof(type, member) + sizeof(((type *)0)->member))

/*
 * 0.1 (FERRY_0 symbols, abi_v0.c): the structs' sizes and ENDs then.
 * The opts of 0.1 had 4 bytes of trailing padding, which its callers
 * never had to zero: their tail is ignored, not checked.
 */
#define FERRY_OPTS_SIZE_V0		144
#define FERRY_OPTS_END_V0		ferry_offsetofend(struct ferry_broker_opts, flags)
#define FERRY_BROKER_STATS_SIZE_V0	176
#define FERRY_HEAP_STATS_SIZE_V0	48

/* This library's: where the fields it knows end. */
#define FERRY_OPTS_END			ferry_offsetofend(struct ferry_broker_opts, reserved2)
#define FERRY_BROKER_STATS_END		ferry_offsetofend(struct ferry_broker_stats, pool_waits)
#define FERRY_HEAP_STATS_END		ferry_offsetofend(struct ferry_heap_stats, free_blocks)

/* One release's layout of one struct. */
struct ferry_layout {
	size_t size;	/* sizeof the struct in that release's ferry.h */
	size_t end;	/* end of the fields it had; [end, size) is 0 */
};

/*
 * The END of the fields a caller with a struct of @usize bytes has, from
 * @rows (releases, oldest first; the last is this library's): a size
 * some release had, or anything above this library's (a newer caller:
 * @usize itself).  0 when no release had that size.
 */
size_t ferry_layout_end(const struct ferry_layout *rows, size_t nrows, size_t usize);

/*
 * A caller's struct into the library's @dst, which already holds the
 * defaults: [0, min(uend, kend)) is copied; every byte from there to
 * @usize must be 0 (the caller's reserved fields, or fields of a newer
 * release this library does not know), or -E2BIG and @dst is unchanged.
 */
int ferry_copy_in(void *dst, size_t kend, const void *src, size_t usize, size_t uend);
/* The library's @src out to a caller's struct of @usize bytes: what both
 * know is copied, the rest of the caller's bytes zeroed. */
void ferry_copy_out(void *dst, size_t usize, size_t uend, const void *src, size_t kend);

/* The defaults (broker.c) and the unsized work behind the entry points. */
void ferry_broker_opts_defaults(struct ferry_broker_opts *o);
int ferry_broker_start_opts(const struct ferry_broker_opts *o, struct ferry_broker **out);
void ferry_broker_stats_read(struct ferry_broker *b, struct ferry_broker_stats *out);
int ferry_heap_stats_read(const void *base, uint64_t size, struct ferry_heap_stats *out);

#endif /* FERRY_SIZED_H */
