/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Predicted waits, shared by the three waiters of a round trip: a child
 * waiting for its reply, the dispatch thread for a helper's, a GPU helper
 * for its stream.  Each learns how long that kind of wait took (by op) and
 * how far it strays, and how late its own timed sleeps end (a CPU in a
 * deep idle state wakes tens of microseconds after its timer).  A wait
 * then sleeps until shortly before its end is due and spins through it:
 * no wake-up on the path, and a bounded spin.  A wait that came back
 * sooner than expected pulls the estimate down fast, a later one pushes
 * it up slowly: one caught late (the waiter woke after the event) measures
 * the waiter's lateness, not the work, and must not teach a later sleep.
 */
#ifndef FERRY_EXPECT_H
#define FERRY_EXPECT_H

#include <stdint.h>

#define FERRY_EXPECT_OPS 8			/* by op % FERRY_EXPECT_OPS */
#define FERRY_EXPECT_LONG_NS (10ULL * 1000 * 1000)	/* longer: sleep at once */
#define FERRY_EXPECT_MARGIN_NS (10ULL * 1000)
#define FERRY_EXPECT_LATE_MAX_NS (200ULL * 1000)

struct ferry_expect {
	uint32_t op;
	uint64_t ewma_ns, dev_ns;
};

static inline void ferry_expect_learn(struct ferry_expect *e, uint32_t op, uint64_t ns)
{
	uint64_t dev;

	if (e->op != op || !e->ewma_ns) {
		*e = (struct ferry_expect){ .op = op, .ewma_ns = ns };
		return;
	}
	dev = ns > e->ewma_ns ? ns - e->ewma_ns : e->ewma_ns - ns;
	e->dev_ns = e->dev_ns - e->dev_ns / 4 + dev / 4;
	if (ns < e->ewma_ns)
		e->ewma_ns -= (e->ewma_ns - ns) / 2;
	else
		e->ewma_ns += (ns - e->ewma_ns) / 8;
}

/* The spread a wait of @expected allows for: at most a sixteenth of it. */
static inline uint64_t ferry_expect_jitter(uint64_t expected, uint64_t dev)
{
	return dev < expected / 16 ? dev : expected / 16;
}

/* How long before the due time the sleep ends (at most half the wait). */
static inline uint64_t ferry_expect_margin(uint64_t expected, uint64_t dev, uint64_t late)
{
	uint64_t m = FERRY_EXPECT_MARGIN_NS + ferry_expect_jitter(expected, dev) + late;

	return m < expected / 2 ? m : expected / 2;
}

/* How long to spin once awake: through the due time and the spread. */
static inline uint64_t ferry_expect_spin(uint64_t expected, uint64_t dev, uint64_t late)
{
	uint64_t s = 2 * FERRY_EXPECT_MARGIN_NS + 2 * ferry_expect_jitter(expected, dev) + late / 2;
	uint64_t cap = expected / 4 + FERRY_EXPECT_MARGIN_NS;

	return s < cap ? s : cap;
}

/* A timed sleep meant to end at @meant ended at @woke: learn the lateness. */
static inline void ferry_expect_woke(uint64_t *late, uint64_t meant, uint64_t woke)
{
	uint64_t l = woke > meant ? woke - meant : 0;

	if (l > FERRY_EXPECT_LATE_MAX_NS)
		l = FERRY_EXPECT_LATE_MAX_NS;
	*late = *late - *late / 4 + l / 4;
}

#endif /* FERRY_EXPECT_H */
