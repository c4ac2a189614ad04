// SPDX-License-Identifier: GPL-2.0
/*
 * Kill under load: 32 peers x 4 helpers keep requests flowing while the
 * test SIGKILLs random helpers, services and children (100 times here;
 * FERRY_KILLS=1000 for the long run).  Services (attached over the socket)
 * that die are replaced, so the load never stops; the broker restarts
 * helpers itself.  Then:
 *   - every request of every peer that lived to the end was answered with
 *     the right bytes or failed with -EPIPE (its helper died): none lost,
 *     none answered twice, none wrong;
 *   - once they are gone, a new service still gets served;
 *   - after stop: no fd, no shared memory (Shmem in /proc/meminfo) and no
 *     /dev/shm file left behind.
 * Runs on the memfd backend on the host and on kmod in the VM (where the
 * module's debugfs counters are checked after all tests too).
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"
#include "kselftest_harness.h"

#define FORKED 8		/* children the broker forks */
#define SERVICES 24		/* attached services kept alive */
#define HELPERS 4
#define WINDOW 4
#define MAXLEN 4096
#define SLOTS 4096		/* peers over the whole run */
#define OP_MIX 7

/* out (arg[0]) = in ^ arg[1]; arg[2] = a checksum of in. */
static int mix(struct ferry_helper *h, const struct ferry_desc *req, struct ferry_desc *rep,
	       void *arg)
{
	const uint8_t *in = ferry_helper_data(h, req, req->offset, req->len);
	uint8_t *out = ferry_helper_data(h, req, req->arg[0], req->len);
	uint64_t sum = 0;

	(void)arg;
	if (req->op != OP_MIX || !in || !out)
		return -EINVAL;
	for (uint64_t i = 0; i < req->len; i++) {
		sum = sum * 131 + in[i];
		out[i] = in[i] ^ (uint8_t)req->arg[1];
	}
	rep->arg[2] = sum;
	return 0;
}

struct tally {
	_Atomic uint64_t sent, ok, epipe, wrong, unknown_tag;
	_Atomic int done;	/* 1: finished cleanly, every request settled */
};

struct shared {
	_Atomic int stop;	/* the peers of the kill phase */
	_Atomic int stop_late;	/* the service started after it */
	_Atomic unsigned int next_slot;
	struct tally t[SLOTS];
};

static struct shared *sh;

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Requests until told to stop, then every outstanding one settled. */
static int peer_body(struct ferry_child *c, struct tally *t, uint64_t seed, _Atomic int *stop)
{
	struct { uint8_t *in, *out; uint64_t sum, seq; size_t len; bool busy; } w[WINDOW];
	struct ferry_desc d, rep;
	uint64_t seq = 1;

	for (int k = 0; k < WINDOW; k++) {
		w[k].in = ferry_malloc(c, MAXLEN);
		w[k].out = ferry_malloc(c, MAXLEN);
		w[k].busy = false;
		if (!w[k].in || !w[k].out)
			return 2;
	}
	for (;;) {
		bool stopping = atomic_load_explicit(stop, memory_order_relaxed);

		for (int k = 0; k < WINDOW && !stopping; k++) {
			if (w[k].busy)
				continue;
			w[k].len = 1 + xorshift(&seed) % MAXLEN;
			w[k].sum = 0;
			for (size_t i = 0; i < w[k].len; i++) {
				w[k].in[i] = (uint8_t)xorshift(&seed);
				w[k].sum = w[k].sum * 131 + w[k].in[i];
			}
			w[k].seq = seq++;
			d = (struct ferry_desc){ .op = OP_MIX, .tag = w[k].seq,
				.offset = ferry_offset(c, w[k].in), .len = w[k].len,
				.arg = { ferry_offset(c, w[k].out), w[k].seq & 0xff } };
			if (ferry_submit(c, &d))
				return 3;
			w[k].busy = true;
			atomic_fetch_add(&t->sent, 1);
		}
		if (!ferry_outstanding(c))
			break;
		if (ferry_complete(c, &rep, -1))
			return 4;
		int k;

		for (k = 0; k < WINDOW && !(w[k].busy && w[k].seq == rep.tag); k++)
			;
		if (k == WINDOW) {
			atomic_fetch_add(&t->unknown_tag, 1);	/* answered twice, or never asked */
			continue;
		}
		w[k].busy = false;
		if (rep.status == -EPIPE) {
			atomic_fetch_add(&t->epipe, 1);
			continue;
		}
		bool good = rep.status == 0 && rep.arg[2] == w[k].sum;

		for (size_t i = 0; good && i < w[k].len; i++)
			good = w[k].out[i] == (uint8_t)(w[k].in[i] ^ (w[k].seq & 0xff));
		atomic_fetch_add(good ? &t->ok : &t->wrong, 1);
	}
	atomic_store(&t->done, 1);
	return 0;
}

static int forked_child(struct ferry_child *c, void *arg)
{
	(void)arg;
	return peer_body(c, &sh->t[ferry_child_index(c)], 0x9e37 + ferry_child_index(c), &sh->stop);
}

/* A service: attaches, runs the same body until *@stop, detaches. */
static pid_t spawn_service(const char *path, _Atomic int *stop)
{
	unsigned int slot = atomic_fetch_add(&sh->next_slot, 1);
	pid_t pid;

	if (slot >= SLOTS)
		return -1;
	pid = fork();
	if (pid == 0) {
		struct ferry_child *c;
		int rc, err, tries = 0;

		/*
		 * A killed one's slot is reclaimed shortly (-EBUSY until then);
		 * a broker busy restarting helpers may answer late.  A slow
		 * guest (debug kernel under TCG) needs the minute.
		 */
		while ((err = ferry_attach(path, &c)) == -EBUSY || err == -ETIMEDOUT ||
		       err == -EAGAIN) {
			if (tries++ >= 6000)
				break;
			usleep(10000);
		}
		if (err) {
			fprintf(stderr, "service %u: attach: %s\n", slot, strerror(-err));
			_exit(20);
		}
		rc = peer_body(c, &sh->t[slot], 0x51ed + slot, stop);
		if (rc)
			fprintf(stderr, "service %u: failed at step %d\n", slot, rc);
		ferry_detach(c);
		_exit(rc);
	}
	return pid;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static long shmem_kib(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	long v = -1;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Shmem: %ld kB", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static int count_dev_shm(void)
{
	DIR *d = opendir("/dev/shm");
	int n = 0;

	if (!d)
		return 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

FIXTURE(load) {};
FIXTURE_SETUP(load) {}
FIXTURE_TEARDOWN(load) {}

TEST_F_TIMEOUT(load, sigkill_helpers_services_children_under_load, 900)
{
	const char *env = getenv("FERRY_KILLS");
	unsigned int kills = env && atoi(env) > 0 ? (unsigned int)atoi(env) : 100;
	char dir[] = "/tmp/ferry-killload-XXXXXX", path[64];
	int fds0 = count_fds(), shm0 = count_dev_shm();
	long shmem0 = shmem_kib();
	pid_t svc[SERVICES];
	struct ferry_broker_opts o;
	struct ferry_broker *b;
	struct ferry_broker_stats st;
	uint64_t seed = (uint64_t)time(NULL), sent = 0, ok = 0, epipe = 0;
	unsigned int killed_helpers = 0, killed_services = 0, killed_children = 0, peers = 0;
	int status;

	TH_LOG("%u kills, seed %llu", kills, (unsigned long long)seed);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, sh);
	sh->next_slot = FORKED;
	ASSERT_NE(NULL, mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/broker.sock", dir);
	ferry_broker_opts_init(&o);
	o.children = FORKED;
	o.helpers = HELPERS;
	o.window = WINDOW;
	o.region_size = 1u << 20;
	o.handler = mix;
	o.child_fn = forked_child;
	o.attach_path = path;
	o.max_attached = SERVICES + 8;
	o.gpu = FERRY_GPU_NONE;
	ASSERT_EQ(0, ferry_broker_start(&o, &b));
	for (int s = 0; s < SERVICES; s++)
		ASSERT_LT(0, svc[s] = spawn_service(path, &sh->stop));

	for (unsigned int k = 0; k < kills; k++) {
		unsigned int r = (unsigned int)(xorshift(&seed) % 100);

		usleep(2000 + xorshift(&seed) % 8000);
		if (r < 45) {
			pid_t h = ferry_broker_helper_pid(b, (unsigned int)(xorshift(&seed) % HELPERS));

			if (h > 0 && kill(h, SIGKILL) == 0)
				killed_helpers++;
		} else if (r < 95) {
			int s = (int)(xorshift(&seed) % SERVICES);

			kill(svc[s], SIGKILL);
			waitpid(svc[s], NULL, 0);
			killed_services++;
			svc[s] = spawn_service(path, &sh->stop);
			ASSERT_LT(0, svc[s]);
		} else {
			pid_t c = ferry_broker_child_pid(b, (unsigned int)(xorshift(&seed) % FORKED));

			if (c > 0 && kill(c, SIGKILL) == 0)
				killed_children++;
		}
	}
	/*
	 * Still serving: once the peers of the kill phase have settled and
	 * gone, a new service gets its requests answered (alone, so that a
	 * slow guest -- a debug kernel under TCG serves a few requests a
	 * second under the full load -- still gets through them).
	 */
	atomic_store(&sh->stop, 1);
	for (int s = 0; s < SERVICES; s++) {
		EXPECT_EQ(svc[s], waitpid(svc[s], &status, 0));
		EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	pid_t late = spawn_service(path, &sh->stop_late);
	unsigned int late_slot = atomic_load(&sh->next_slot) - 1;

	ASSERT_LT(0, late);
	/* Fast where the machine is; two minutes for a starved guest. */
	for (int t = 0; t < 120000 && atomic_load(&sh->t[late_slot].ok) < 200; t++)
		usleep(1000);
	EXPECT_LE(200, atomic_load(&sh->t[late_slot].ok));
	atomic_store(&sh->stop_late, 1);
	EXPECT_EQ(late, waitpid(late, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ferry_broker_wait(b, 120LL * 1000000000);
	ferry_broker_stats(b, &st);
	ferry_broker_stop(b);

	/* Peers that lived to the end: every request settled, right or -EPIPE. */
	for (unsigned int i = 0; i < atomic_load(&sh->next_slot) && i < SLOTS; i++) {
		struct tally *t = &sh->t[i];

		EXPECT_EQ(0, atomic_load(&t->wrong));
		EXPECT_EQ(0, atomic_load(&t->unknown_tag));
		if (!atomic_load(&t->done))
			continue;	/* killed: its open requests died with it */
		peers++;
		EXPECT_EQ(atomic_load(&t->sent), atomic_load(&t->ok) + atomic_load(&t->epipe))
			TH_LOG("peer %u lost requests", i);
		sent += atomic_load(&t->sent);
		ok += atomic_load(&t->ok);
		epipe += atomic_load(&t->epipe);
	}
	TH_LOG("killed %u helpers, %u services, %u children; %u peers to the end: "
	       "%llu requests, %llu answered right, %llu failed with -EPIPE, 0 lost",
	       killed_helpers, killed_services, killed_children, peers,
	       (unsigned long long)sent, (unsigned long long)ok, (unsigned long long)epipe);
	TH_LOG("broker: %llu helper restarts, %llu replies, %llu failed back, %llu dropped",
	       (unsigned long long)st.helper_restarts, (unsigned long long)st.replies,
	       (unsigned long long)st.failed_back, (unsigned long long)st.dropped);
	EXPECT_LE(1, peers);
	EXPECT_EQ(0, st.bad_desc);
	EXPECT_EQ(0, st.bad_reply);

	/* Nothing left behind. */
	EXPECT_EQ(fds0, count_fds());
	EXPECT_EQ(shm0, count_dev_shm());
	for (int t = 0; t < 100 && shmem_kib() > shmem0 + 4096; t++)
		usleep(20000);	/* the last pages go as the last processes are reaped */
	EXPECT_GE(shmem0 + 4096, shmem_kib())
		TH_LOG("Shmem %ld kB before, %ld kB after", shmem0, shmem_kib());
	munmap(sh, sizeof(*sh));
	rmdir(dir);
}

TEST_HARNESS_MAIN
