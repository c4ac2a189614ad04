// SPDX-License-Identifier: GPL-2.0
/*
 * stress.c - numbers and races: a thousand regions in one session, 64
 * sessions at once, grants and revokes racing grantees that map, read and
 * unmap, creates and destroys racing faults and debugfs readers, owners
 * dying under their grantees.  Every case ends by checking, through
 * debugfs, that everything it made was freed.
 *
 * Durations are short on purpose: under qemu TCG everything runs 10-50x
 * slower, and the whole file must stay within ~20 s there.
 */
#define _GNU_SOURCE
#include "ferry_test.h"

#include <pthread.h>
#include <time.h>

#define RACE_MS		1500

FIXTURE(stress) {
	int fd;
	size_t ps;
	bool stats;
	struct ferry_stats base;	/* with this fixture's session open */
};

FIXTURE_SETUP(stress)
{
	FERRY_SETUP_REQUIRE_DEVICE();
	self->ps = ferry_page();
	self->fd = ferry_open_setup();
	ASSERT_LE(0, self->fd);
	self->stats = ferry_have_stats();
	if (self->stats)
		ASSERT_EQ(0, ferry_stats_read(&self->base));
}

FIXTURE_TEARDOWN(stress)
{
	if (self->fd > 0)
		close(self->fd);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Everything the case made is gone: stats as at setup (fixture fd open). */
#define EXPECT_BACK_TO_BASE() do {					\
	struct ferry_stats __st;					\
									\
	if (!self->stats)						\
		break;							\
	ASSERT_EQ(0, ferry_stats_read(&__st));				\
	EXPECT_EQ(self->base.sessions, __st.sessions);			\
	EXPECT_EQ(self->base.regions, __st.regions);			\
	EXPECT_EQ(self->base.live_regions, __st.live_regions);		\
	EXPECT_EQ(self->base.bytes, __st.bytes);			\
	EXPECT_EQ(self->base.maps, __st.maps);				\
	EXPECT_EQ(self->base.grants, __st.grants);			\
} while (0)

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

TEST_F_TIMEOUT(stress, a_thousand_regions_in_one_session, 120)
{
	struct ferry_version v;
	struct ferry_info info;
	struct ferry_stats st;
	uint32_t *ids, *sorted;
	size_t n = 1000;
	int fd = ferry_open();

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ferry_version(fd, &v));
	if (v.max_regions < n)
		n = v.max_regions;
	ASSERT_LE(2u, n);
	ids = calloc(n, sizeof(*ids));
	sorted = calloc(n, sizeof(*sorted));
	ASSERT_NE(NULL, ids);
	ASSERT_NE(NULL, sorted);

	for (size_t i = 0; i < n; i++) {
		struct ferry_create c;
		int memfd = ferry_memfd(1, F_SEAL_SHRINK, 0);

		ASSERT_LE(0, memfd);
		ASSERT_EQ(0, ferry_create(fd, memfd, 0, &c)) {
			TH_LOG("region %zu of %zu", i, n);
		}
		close(memfd);
		ids[i] = c.id;
	}
	memcpy(sorted, ids, n * sizeof(*ids));
	qsort(sorted, n, sizeof(*sorted), cmp_u32);
	for (size_t i = 1; i < n; i++)
		ASSERT_NE(sorted[i - 1], sorted[i]);
	if (self->stats) {
		ASSERT_EQ(0, ferry_stats_read(&st));
		EXPECT_EQ(self->base.live_regions + (long long)n,
			  st.live_regions);
		EXPECT_EQ(self->base.bytes + (long long)(n * self->ps),
			  st.bytes);
	}

	/* A sample of them works. */
	for (size_t i = 0; i < n; i += n / 10) {
		void *p;

		ASSERT_EQ(0, ferry_info(fd, ids[i], &info));
		EXPECT_EQ(self->ps, info.size);
		ASSERT_EQ(0, ferry_map(fd, (uint64_t)ids[i] << FERRY_MMAP_SHIFT,
				       self->ps, PROT_READ | PROT_WRITE, &p));
		EXPECT_EQ(0, ferry_probe_write(p, (uint8_t)i));
		munmap(p, self->ps);
	}
	/* Half go by DESTROY, the rest with the session. */
	for (size_t i = 0; i < n; i += 2)
		ASSERT_EQ(0, ferry_destroy(fd, ids[i]));
	EXPECT_EQ(-ENOENT, ferry_info(fd, ids[0], &info));
	EXPECT_EQ(0, ferry_info(fd, ids[1], &info));
	close(fd);
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, ids[1], &info));
	EXPECT_EQ(-ENOENT, ferry_info(self->fd, ids[n - 1], &info));
	free(ids);
	free(sorted);
	EXPECT_BACK_TO_BASE();
}

#define NR_SESSIONS		64
#define REGIONS_PER_SESSION	4

/* One of many sessions: make regions, use them, hold them until told. */
/* A session's regions made, mapped and checked: 0, or where it failed. */
static int session_setup(int idx, int fd)
{
	struct ferry_test_region r[REGIONS_PER_SESSION];
	size_t ps = ferry_page();

	if (fd < 0)
		return 1;
	for (int i = 0; i < REGIONS_PER_SESSION; i++) {
		unsigned int seed = (unsigned int)(idx * REGIONS_PER_SESSION + i + 1);
		void *p;

		if (ferry_region_new(fd, 1, seed, &r[i]))
			return 2;
		if (ferry_map(fd, r[i].off, ps, PROT_READ | PROT_WRITE, &p))
			return 3;
		if (ferry_probe_check(p, ps, seed, 0))
			return 4;
		if (ferry_probe_fill(p, ps, seed + 1000, 0) ||
		    ferry_check_fd(r[i].memfd, 0, ps, seed + 1000))
			return 5;
		ferry_region_close_memfd(&r[i]);
	}
	return 0;
}

/*
 * One byte on @ready either way ('r' ready, 'f' failed), so the test never
 * waits for a worker that gave up (under fault injection, say).
 */
static int session_worker(int idx, int ready, int go)
{
	int err = session_setup(idx, ferry_open());
	char c;

	if (write(ready, err ? "f" : "r", 1) != 1)
		return 6;
	if (err)
		return err;
	/* Hold everything until the test has looked; EOF means go. */
	if (read(go, &c, 1) != 0)
		return 7;
	return 0;	/* exit closes and unmaps it all */
}

TEST_F_TIMEOUT(stress, sixty_four_sessions_at_once, 120)
{
	pid_t pids[NR_SESSIONS];
	int ready[2], go[2];
	struct ferry_stats st;

	ASSERT_EQ(0, pipe(ready));
	ASSERT_EQ(0, pipe(go));
	for (int i = 0; i < NR_SESSIONS; i++) {
		pids[i] = fork();
		ASSERT_LE(0, pids[i]);
		if (pids[i] == 0) {
			close(ready[0]);
			close(go[1]);
			ferry_close_inherited(ready[1], go[0]);
			_exit(session_worker(i, ready[1], go[0]));
		}
	}
	close(ready[1]);
	close(go[0]);
	int failed = 0;

	for (int i = 0; i < NR_SESSIONS; i++) {
		char c;

		ASSERT_EQ(1, read(ready[0], &c, 1)) {
			TH_LOG("only %d sessions answered", i);
		}
		failed += c != 'r';
	}
	EXPECT_EQ(0, failed);
	if (self->stats && !failed) {
		ASSERT_EQ(0, ferry_stats_read(&st));
		EXPECT_EQ(self->base.sessions + NR_SESSIONS, st.sessions);
		EXPECT_EQ(self->base.live_regions +
			  NR_SESSIONS * REGIONS_PER_SESSION, st.live_regions);
		EXPECT_EQ(self->base.maps + NR_SESSIONS * REGIONS_PER_SESSION,
			  st.maps);
	}
	close(go[1]);
	for (int i = 0; i < NR_SESSIONS; i++)
		EXPECT_EQ(0, ferry_wait(pids[i]));
	close(ready[0]);
	EXPECT_BACK_TO_BASE();
}

/* ---- grants and revokes racing grantees ------------------------------ */

#define NR_GRANTEES	4
#define RACE_REGIONS	2
#define RACE_PAGES	4

/* A grantee that was refused every time: legal, but proves nothing. */
#define GRANTEE_SAW_NOTHING	27

struct race_region {
	uint32_t id;
	uint64_t off;
	unsigned int seed;
};

/*
 * A grantee: map, read every page, maybe write the same bytes back,
 * info, unmap, over and over.  Refusals and SIGBUS are expected (the
 * owner keeps revoking); wrong data never is.  Exit 0 when it saw data at
 * least once and never a wrong byte.
 */
static int grantee_worker(const struct race_region *reg, uint64_t deadline)
{
	size_t ps = ferry_page(), len = RACE_PAGES * ps;
	unsigned long ok = 0, iter = 0;
	int fd = ferry_open();

	if (fd < 0)
		return 20;
	while (now_ms() < deadline) {
		const struct race_region *r = &reg[iter % RACE_REGIONS];
		int prot = (iter / RACE_REGIONS) % 2 ?
			   PROT_READ | PROT_WRITE : PROT_READ;
		struct ferry_info info;
		uint8_t *p;
		void *v;
		int ret;

		iter++;
		ret = ferry_map(fd, r->off, len, prot, &v);
		if (ret == -EACCES)
			continue;
		if (ret)
			return 21;
		p = v;
		ret = ferry_probe_check(p, len, r->seed, 0);
		if (ret == 1)
			return 22;	/* stale or foreign data */
		if (ret == 0)
			ok++;
		if (prot & PROT_WRITE) {
			size_t at = (iter % RACE_PAGES) * ps + iter % ps;

			ret = ferry_probe_write(p + at, ferry_pat(r->seed, at));
			if (ret && ret != -SIGBUS)
				return 23;
		}
		ret = ferry_info(fd, r->id, &info);
		if (ret && ret != -EACCES)
			return 24;
		if (!ret && info.size != len)
			return 25;
		if (munmap(p, len))
			return 26;
	}
	return ok ? 0 : GRANTEE_SAW_NOTHING;
}

struct owner_race {
	int fd;
	const struct race_region *reg;
	const int *pidfds;
	uint64_t deadline;
	int err;		/* 0 or the first unexpected result */
	unsigned long rounds;
};

static void *granting_thread(void *arg)
{
	struct owner_race *o = arg;
	unsigned int x = 1;

	while (now_ms() < o->deadline && !o->err) {
		x = x * 1103515245u + 12345u;
		for (int g = 0; g < NR_GRANTEES; g++) {
			const struct race_region *r = &o->reg[(x >> 8) % RACE_REGIONS];
			int ret;

			switch ((x >> 12) % 4) {
			case 0:
				ret = ferry_grant(o->fd, r->id, o->pidfds[g],
						  FERRY_RIGHT_READ);
				break;
			case 1:
				ret = ferry_grant(o->fd, r->id, o->pidfds[g],
						  FERRY_RIGHTS_ALL);
				break;
			default:
				ret = ferry_revoke(o->fd, r->id, o->pidfds[g]);
				if (ret == -ENOENT)
					ret = 0;
				break;
			}
			/* A grantee that is done is gone: ESRCH is fine. */
			if (ret && ret != -ESRCH) {
				o->err = ret;
				break;
			}
			x = x * 1103515245u + 12345u;
		}
		o->rounds++;
		/* Leave each state standing a moment for the grantees. */
		usleep(200);
	}
	return NULL;
}

/* Read every debugfs file while things change underneath. */
static void *debugfs_thread(void *arg)
{
	static const char *const files[] = {
		FERRY_DEBUGFS_DIR "/stats", FERRY_DEBUGFS_DIR "/sessions",
		FERRY_DEBUGFS_DIR "/regions", FERRY_DEBUGFS_DIR "/grants",
	};
	struct owner_race *o = arg;
	char buf[8192];

	while (now_ms() < o->deadline && !o->err) {
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			int fd = open(files[i], O_RDONLY | O_CLOEXEC);

			if (fd < 0)
				continue;
			while (read(fd, buf, sizeof(buf)) > 0)
				;
			close(fd);
		}
		for (int i = 0; i < RACE_REGIONS; i++) {
			struct ferry_info info;
			int ret = ferry_info(o->fd, o->reg[i].id, &info);

			if (ret) {
				o->err = ret;
				break;
			}
		}
		o->rounds++;
	}
	return NULL;
}

TEST_F_TIMEOUT(stress, grant_revoke_races_grantees, 120)
{
	struct race_region reg[RACE_REGIONS];
	struct ferry_test_region r[RACE_REGIONS];
	int pidfds[NR_GRANTEES];
	pid_t pids[NR_GRANTEES];
	struct owner_race granter, reader;
	struct ferry_info info;
	pthread_t tg, tr;
	uint64_t deadline;
	int saw_data = 0;

	for (int i = 0; i < RACE_REGIONS; i++) {
		ASSERT_EQ(0, ferry_region_new(self->fd, RACE_PAGES, 31 + i, &r[i]));
		reg[i].id = r[i].id;
		reg[i].off = r[i].off;
		reg[i].seed = r[i].seed;
	}
	deadline = now_ms() + RACE_MS;
	for (int g = 0; g < NR_GRANTEES; g++) {
		pids[g] = fork();
		ASSERT_LE(0, pids[g]);
		if (pids[g] == 0) {
			ferry_close_inherited(-1, -1);
			_exit(grantee_worker(reg, deadline));
		}
		pidfds[g] = ferry_pidfd_open(pids[g]);
		ASSERT_LE(0, pidfds[g]);
		/* Start granted, so every grantee gets somewhere. */
		ASSERT_EQ(0, ferry_grant(self->fd, reg[g % RACE_REGIONS].id,
					 pidfds[g], FERRY_RIGHT_READ));
	}
	granter = (struct owner_race){ .fd = self->fd, .reg = reg,
				       .pidfds = pidfds, .deadline = deadline };
	reader = granter;
	ASSERT_EQ(0, pthread_create(&tg, NULL, granting_thread, &granter));
	ASSERT_EQ(0, pthread_create(&tr, NULL, debugfs_thread, &reader));
	ASSERT_EQ(0, pthread_join(tg, NULL));
	ASSERT_EQ(0, pthread_join(tr, NULL));
	EXPECT_EQ(0, granter.err);
	EXPECT_EQ(0, reader.err);
	EXPECT_LT(0u, granter.rounds);
	for (int g = 0; g < NR_GRANTEES; g++) {
		int status = ferry_wait(pids[g]);

		EXPECT_TRUE(status == 0 || status == GRANTEE_SAW_NOTHING) {
			TH_LOG("grantee %d: exit status %d", g, status);
		}
		saw_data += status == 0;
		close(pidfds[g]);
	}
	/* At least one grantee got to read through a grant. */
	EXPECT_LT(0, saw_data);
	/* The grantees are gone, and so are their grants and maps. */
	for (int i = 0; i < RACE_REGIONS; i++) {
		ASSERT_EQ(0, ferry_info(self->fd, reg[i].id, &info));
		EXPECT_EQ(0u, info.nr_grants);
		EXPECT_EQ(0u, info.nr_maps);
		/* Grantees only ever wrote back what was there. */
		EXPECT_EQ(0, ferry_check_fd(r[i].memfd, 0, RACE_PAGES * self->ps,
					    r[i].seed));
		EXPECT_EQ(0, ferry_destroy(self->fd, reg[i].id));
		ferry_region_close_memfd(&r[i]);
	}
	EXPECT_BACK_TO_BASE();
}

/* ---- create, map, destroy, unmap from many threads ------------------- */

#define NR_CHURN	4

struct churn {
	int fd;
	unsigned int idx;
	uint64_t deadline;
	int err;		/* step that failed, 0 if none */
	unsigned long rounds;
};

/*
 * No fault is expected on the owner's own mappings, so plain loads and
 * stores (a fault kills the case, as it should).
 */
static void *churn_thread(void *arg)
{
	struct churn *c = arg;
	size_t ps = ferry_page();

	while (now_ms() < c->deadline && !c->err) {
		size_t pages = 1 + (c->rounds + c->idx) % 3, len = pages * ps;
		unsigned int seed = c->idx * 1000 + (unsigned int)c->rounds % 1000 + 1;
		struct ferry_test_region r;
		uint8_t *p, b[2];
		void *v;

		if (ferry_region_new(c->fd, pages, seed, &r)) {
			c->err = 1;
			break;
		}
		if (ferry_map(c->fd, r.off, len, PROT_READ | PROT_WRITE, &v)) {
			c->err = 2;
			break;
		}
		p = v;
		for (size_t i = 0; i < len; i += 512)
			if (p[i] != ferry_pat(seed, i))
				c->err = 3;
		p[len - 1] = 0x5c;
		if (ferry_destroy(c->fd, r.id))
			c->err = 4;
		/*
		 * Not "the id is now ENOENT": ids are reused at once, and
		 * another thread may already own this one.
		 */
		/* Destroyed, still mapped: still the same pages. */
		p[0] = 0xc5;
		if (ferry_check_fd(r.memfd, 1, len - 2, seed))
			c->err = 6;
		if (pread(r.memfd, &b[0], 1, 0) != 1 ||
		    pread(r.memfd, &b[1], 1, (off_t)len - 1) != 1 ||
		    b[0] != 0xc5 || b[1] != 0x5c)
			c->err = 7;
		munmap(p, len);
		ferry_region_close_memfd(&r);
		c->rounds++;
	}
	return NULL;
}

TEST_F_TIMEOUT(stress, create_map_destroy_from_many_threads, 120)
{
	struct churn c[NR_CHURN];
	struct owner_race reader;
	struct ferry_test_region keep;
	struct race_region reg[RACE_REGIONS];
	pthread_t t[NR_CHURN], tr;
	uint64_t deadline = now_ms() + RACE_MS;

	/* The debugfs reader also checks a region that must stay put. */
	ASSERT_EQ(0, ferry_region_new(self->fd, 1, 2, &keep));
	for (int i = 0; i < RACE_REGIONS; i++)
		reg[i] = (struct race_region){ .id = keep.id, .off = keep.off };
	reader = (struct owner_race){ .fd = self->fd, .reg = reg,
				      .deadline = deadline };
	for (int i = 0; i < NR_CHURN; i++) {
		c[i] = (struct churn){ .fd = self->fd, .idx = (unsigned int)i,
				       .deadline = deadline };
		ASSERT_EQ(0, pthread_create(&t[i], NULL, churn_thread, &c[i]));
	}
	ASSERT_EQ(0, pthread_create(&tr, NULL, debugfs_thread, &reader));
	for (int i = 0; i < NR_CHURN; i++) {
		ASSERT_EQ(0, pthread_join(t[i], NULL));
		EXPECT_EQ(0, c[i].err) {
			TH_LOG("thread %d failed at step %d after %lu rounds",
			       i, c[i].err, c[i].rounds);
		}
		EXPECT_LT(0u, c[i].rounds);
	}
	ASSERT_EQ(0, pthread_join(tr, NULL));
	EXPECT_EQ(0, reader.err);
	ASSERT_EQ(0, ferry_destroy(self->fd, keep.id));
	ferry_region_close_memfd(&keep);
	EXPECT_BACK_TO_BASE();
}

/* ---- owners dying under their grantees ------------------------------- */

#define NR_OWNERS	6
#define OWNER_PAGES	8

struct reader {
	const uint8_t *p;
	size_t len;
	unsigned int seed;
	volatile int stop;
	volatile int bad;		/* a wrong byte was seen */
	volatile unsigned long passes;
};

static void *reader_thread(void *arg)
{
	struct reader *rd = arg;

	while (!rd->stop) {
		for (size_t i = 0; i < rd->len; i += 64)
			if (rd->p[i] != ferry_pat(rd->seed, i))
				rd->bad = 1;
		rd->passes++;
	}
	return NULL;
}

TEST_F_TIMEOUT(stress, owners_die_under_their_grantees, 120)
{
	size_t len = OWNER_PAGES * self->ps;

	for (int round = 0; round < NR_OWNERS; round++) {
		unsigned int seed = 50 + (unsigned int)round;
		struct reader rd = { .len = len, .seed = seed };
		struct ferry_info info;
		unsigned long seen;
		int idpipe[2], go[2];
		uint32_t id;
		pthread_t t;
		pid_t owner;
		void *v, *late;
		int ret;

		ASSERT_EQ(0, pipe(idpipe));
		ASSERT_EQ(0, pipe(go));
		owner = fork();
		ASSERT_LE(0, owner);
		if (owner == 0) {
			struct ferry_test_region r;
			int fd, parent;
			char c;

			ferry_close_inherited(idpipe[1], go[0]);
			fd = ferry_open();
			parent = ferry_pidfd_open(getppid());
			if (fd < 0 || parent < 0 ||
			    ferry_region_new(fd, OWNER_PAGES, seed, &r) ||
			    ferry_grant(fd, r.id, parent, FERRY_RIGHT_READ) ||
			    ferry_write_full(idpipe[1], &r.id, sizeof(r.id)))
				_exit(1);
			/* Block until killed. */
			while (read(go[0], &c, 1) > 0)
				;
			_exit(0);
		}
		close(idpipe[1]);
		close(go[0]);
		ASSERT_EQ(0, ferry_read_full(idpipe[0], &id, sizeof(id)));
		close(idpipe[0]);
		ASSERT_EQ(0, ferry_map(self->fd, (uint64_t)id << FERRY_MMAP_SHIFT,
				       len, PROT_READ, &v));
		rd.p = v;
		ASSERT_EQ(0, pthread_create(&t, NULL, reader_thread, &rd));
		/* Let the reader fault some pages in, then kill the owner. */
		while (rd.passes < 2)
			usleep(1000);
		ASSERT_EQ(0, kill(owner, SIGKILL));
		/* Meanwhile map again: it works until the owner is gone. */
		ret = ferry_map(self->fd, (uint64_t)id << FERRY_MMAP_SHIFT,
				len, PROT_READ, &late);
		EXPECT_TRUE(ret == 0 || ret == -ENOENT) {
			TH_LOG("late map: %d", ret);
		}
		ASSERT_EQ(128 + SIGKILL, ferry_wait(owner));
		close(go[1]);
		EXPECT_EQ(-ENOENT, ferry_info(self->fd, id, &info));
		/* Keep reading a little after the owner is gone. */
		seen = rd.passes;
		while (rd.passes < seen + 2)
			usleep(1000);
		rd.stop = 1;
		ASSERT_EQ(0, pthread_join(t, NULL));
		EXPECT_EQ(0, rd.bad);
		if (ret == 0) {
			EXPECT_EQ(0, ferry_probe_check(late, len, seed, 0));
			munmap(late, len);
		}
		munmap(v, len);
	}
	EXPECT_BACK_TO_BASE();
}

TEST_HARNESS_MAIN
