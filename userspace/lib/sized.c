// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * The sized entry points of ferry.h (ferry_*_sized): each finds which
 * release's layout the caller's struct has, then reads it over the
 * defaults or fills it, by the rules of sized.h.  The kernel's
 * copy_struct_from_user() is the model: older is fine, newer is fine
 * while what it adds is 0.
 */
#include <errno.h>
#include <string.h>

#include "sized.h"

/* Each table: one row per release that changed the struct, oldest first.
 * The sized functions came in 0.2: no caller of them has an older layout. */
static const struct ferry_layout opts_rows[] = {
	{ sizeof(struct ferry_broker_opts), FERRY_OPTS_END },		/* 0.2 */
};
static const struct ferry_layout broker_stats_rows[] = {
	{ sizeof(struct ferry_broker_stats), FERRY_BROKER_STATS_END },	/* 0.2 */
};
static const struct ferry_layout heap_stats_rows[] = {
	{ sizeof(struct ferry_heap_stats), FERRY_HEAP_STATS_END },	/* 0.2 */
};
#define NROWS(t) (sizeof(t) / sizeof((t)[0]))

/* The layouts of 0.1 are prefixes of today's (abi_v0.c relies on it). */
_Static_assert(FERRY_OPTS_END_V0 <= FERRY_OPTS_END, "opts only grow");
_Static_assert(FERRY_OPTS_SIZE_V0 <= sizeof(struct ferry_broker_opts), "opts only grow");
_Static_assert(FERRY_BROKER_STATS_SIZE_V0 <= FERRY_BROKER_STATS_END, "stats only grow");
_Static_assert(FERRY_HEAP_STATS_SIZE_V0 <= FERRY_HEAP_STATS_END, "stats only grow");
/*
 * Each END is where this library's last field ends (a field appended
 * without moving it fails here).  Stats are all uint64_t, so their END is
 * their size; opts end in reserved: no trailing padding, so a newer
 * caller's fields can never hide in bytes we ignore.
 */
_Static_assert(sizeof(struct ferry_broker_stats) == FERRY_BROKER_STATS_END,
	       "a field after FERRY_BROKER_STATS_END: move it (sized.h) and add a row");
_Static_assert(sizeof(struct ferry_heap_stats) == FERRY_HEAP_STATS_END,
	       "a field after FERRY_HEAP_STATS_END: move it (sized.h) and add a row");
_Static_assert(FERRY_OPTS_END == sizeof(struct ferry_broker_opts) ||
	       (FERRY_OPTS_END == offsetof(struct ferry_broker_opts, reserved) &&
		sizeof(struct ferry_broker_opts) ==
		ferry_offsetofend(struct ferry_broker_opts, reserved)),
	       "opts: a field after FERRY_OPTS_END, or trailing padding (name it reserved)");

size_t ferry_layout_end(const struct ferry_layout *rows, size_t nrows, size_t usize)
{
	size_t i;

	if (usize >= rows[nrows - 1].size)
		return usize > rows[nrows - 1].size ? usize : rows[nrows - 1].end;
	for (i = 0; i + 1 < nrows; i++)
		if (rows[i].size == usize)
			return rows[i].end;
	return 0;
}

int ferry_copy_in(void *dst, size_t kend, const void *src, size_t usize, size_t uend)
{
	size_t n = uend < kend ? uend : kend, i;
	const unsigned char *s = src;

	for (i = n; i < usize; i++)
		if (s[i])
			return -E2BIG;
	memcpy(dst, src, n);
	return 0;
}

void ferry_copy_out(void *dst, size_t usize, size_t uend, const void *src, size_t kend)
{
	size_t n = uend < kend ? uend : kend;

	memcpy(dst, src, n);
	memset((unsigned char *)dst + n, 0, usize - n);
}

int ferry_broker_opts_init_sized(struct ferry_broker_opts *o, size_t size)
{
	size_t uend = ferry_layout_end(opts_rows, NROWS(opts_rows), size);
	struct ferry_broker_opts d;

	if (!o || !uend)
		return -EINVAL;
	ferry_broker_opts_defaults(&d);
	ferry_copy_out(o, size, uend, &d, FERRY_OPTS_END);
	return 0;
}

int ferry_broker_start_sized(const struct ferry_broker_opts *o, size_t size,
			     struct ferry_broker **out)
{
	size_t uend = ferry_layout_end(opts_rows, NROWS(opts_rows), size);
	struct ferry_broker_opts k;
	int err;

	if (!o || !out || !uend)
		return -EINVAL;
	ferry_broker_opts_defaults(&k);
	err = ferry_copy_in(&k, FERRY_OPTS_END, o, size, uend);
	if (err)
		return err;
	/* Named padding between fields: 0, like bytes past the known END. */
	if (k.reserved || k.reserved2)
		return -E2BIG;
	return ferry_broker_start_opts(&k, out);
}

int ferry_broker_stats_sized(struct ferry_broker *b, struct ferry_broker_stats *out, size_t size)
{
	size_t uend = ferry_layout_end(broker_stats_rows, NROWS(broker_stats_rows), size);
	struct ferry_broker_stats k;

	if (!b || !out || !uend)
		return -EINVAL;
	ferry_broker_stats_read(b, &k);
	ferry_copy_out(out, size, uend, &k, FERRY_BROKER_STATS_END);
	return 0;
}

int ferry_heap_stats_sized(const void *base, uint64_t size, struct ferry_heap_stats *out,
			   size_t out_size)
{
	size_t uend = ferry_layout_end(heap_stats_rows, NROWS(heap_stats_rows), out_size);
	struct ferry_heap_stats k;
	int err;

	if (!out || !uend)
		return -EINVAL;
	err = ferry_heap_stats_read(base, size, &k);
	if (err)
		return err;
	ferry_copy_out(out, out_size, uend, &k, FERRY_HEAP_STATS_END);
	return 0;
}

uint32_t ferry_version(void)
{
	return FERRY_VERSION;
}
