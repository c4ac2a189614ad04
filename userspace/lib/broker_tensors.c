// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * FERRY_DESC_TENSORS on the broker's side.  A child's table lies in its own
 * heap, which it can change at any time, so the broker copies it once,
 * into a place in the helper's channel region that only the broker writes
 * (the helper maps it, no child does), and checks the copy: every entry's
 * shape inside its bytes, its bytes in the child's heap or in one of the
 * child's pool blocks (held until the reply, like a FERRY_DESC_POOL
 * block).  The descriptor the helper gets names the copy.  Each helper has
 * one place per request it may hold (opts.helper_depth).
 */
#include <errno.h>
#include <string.h>

#include "broker_internal.h"

size_t ferry_helper_region_bytes(const struct ferry_broker *b, size_t *chan_bytes)
{
	*chan_bytes = ferry_page_round(ferry_chan_bytes(b->nslots_helper));
	return *chan_bytes + ferry_page_round((size_t)b->o.helper_depth * FERRY_TABLE_BYTES) +
	       ferry_arena_shm_bytes();
}

static int place_take(struct bhelper *hp, unsigned int depth)
{
	for (unsigned int k = 0; k < depth; k++) {
		if (!(hp->table_used[k / 64] & (1ull << (k % 64)))) {
			hp->table_used[k / 64] |= 1ull << (k % 64);
			return (int)k;
		}
	}
	return -1;
}

static void place_put(struct bhelper *hp, int k)
{
	hp->table_used[k / 64] &= ~(1ull << (k % 64));
}

static void release_blocks(struct ferry_broker *b, struct bslot *sl, uint32_t i)
{
	for (unsigned int k = 0; k < sl->ntblock; k++)
		ferry_bpool_release(b, i, sl->tblock[k]);
	sl->ntblock = 0;
}

int ferry_btensors_take(struct ferry_broker *b, uint32_t i, uint32_t h, uint32_t s,
			struct ferry_desc *d)
{
	struct bhelper *hp = &b->helper[h];
	struct bslot *sl = &b->slot[s];
	struct bchild *c = &b->child[i];
	uint8_t *base = ferry_region_base(c->chan.region);
	unsigned int n = (unsigned int)(d->len / sizeof(struct ferry_tensor));
	struct ferry_tensor *t;
	int place;

	sl->table = -1;
	sl->ntblock = 0;
	if (!d->len || d->len % sizeof(struct ferry_tensor) || n > FERRY_TENSORS_MAX ||
	    !ferry_child_heap_has(b, i, d->offset, d->len) || d->offset % 8)
		return -EINVAL;
	place = place_take(hp, b->o.helper_depth);
	if (place < 0)
		return -EINVAL;	/* cannot be: a place per request it may hold */
	t = (struct ferry_tensor *)(hp->tables + (size_t)place * FERRY_TABLE_BYTES);
	memcpy(t, base + d->offset, d->len);	/* once: the checks are on the copy */
	for (unsigned int k = 0; k < n; k++) {
		uint64_t block;

		if (ferry_tensor_check(&t[k]))
			goto bad;
		if (t[k].where == FERRY_IN_REGION) {
			if (!ferry_child_heap_has(b, i, t[k].offset, t[k].nbytes))
				goto bad;	/* nbytes > 0: ferry_tensor_check */
			continue;
		}
		if (ferry_bpool_hold(b, i, t[k].offset, t[k].nbytes, &block))
			goto bad;
		sl->tblock[sl->ntblock++] = block;
	}
	sl->table = (int16_t)place;
	/* The helper finds the copy at offset (from its tables' start). */
	d->offset = (uint64_t)place * FERRY_TABLE_BYTES;
	return 0;
bad:
	release_blocks(b, sl, i);
	place_put(hp, place);
	return -EINVAL;
}

void ferry_btensors_release(struct ferry_broker *b, uint32_t s)
{
	struct bslot *sl = &b->slot[s];

	release_blocks(b, sl, sl->child);
	if (sl->table >= 0)
		place_put(&b->helper[sl->helper], sl->table);
	sl->table = -1;
}
