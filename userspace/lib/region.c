// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Regions behind one interface, two backends:
 *  - kmod:  the owner hands its sealed memfd to /dev/ferry and grants
 *           peers by pidfd; peers map through their own session, and the
 *           kernel checks the calling process on every mmap and fault.
 *  - memfd: holding the memfd is the right to map it; isolation comes from
 *           who the fd reaches (inheritance, SCM_RIGHTS) and from closing
 *           it in processes that must not have it.
 *
 * Owners always map their memfd directly: that is where a NUMA policy is
 * set (shmem keeps it per file, so it holds for faults through the module
 * too).  Every mapping is MADV_DONTFORK: a process forked later starts with
 * no region and must be given its own.
 *
 * kmod: a grantee's mapping is unpinnable unless its grant carries
 * FERRY_PIN, and shared futexes need pinnable pages.  A region whose
 * first bytes hold futex words (a child's channel) gets a "head": a second
 * kmod region of the same memfd covering just those bytes, granted with
 * PIN and mapped by the importer over the start of its mapping, so the
 * words can be waited on while the rest stays out of get_user_pages' reach.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/ferry.h>
#include <numaif.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry.h"
#include "internal.h"

/* The library's rights are the module's, bit for bit. */
_Static_assert(FERRY_READ == FERRY_RIGHT_READ && FERRY_WRITE == FERRY_RIGHT_WRITE &&
	       FERRY_PIN == FERRY_RIGHT_PIN, "rights match the uAPI");

struct ferry_rctx {
	enum ferry_backend backend;
	int devfd;		/* kmod: this process's own session */
	uint64_t features;	/* kmod: FERRY_FEAT_* of the module */
};

struct ferry_region {
	struct ferry_rctx *rc;
	bool owner;
	uint32_t id;		/* kmod region id; 0 under memfd */
	uint32_t head_id;	/* kmod: the head region (see the top), or 0 */
	int fd;			/* owner's memfd (both backends), else -1 */
	int prot;		/* importer: what the mapping was made with */
	void *base;
	size_t size;
};

static const char *const backend_names[] = {
	[FERRY_BACKEND_AUTO] = "auto",
	[FERRY_BACKEND_KMOD] = "kmod",
	[FERRY_BACKEND_MEMFD] = "memfd",
};

const char *ferry_backend_name(enum ferry_backend b)
{
	if ((unsigned int)b >= sizeof(backend_names) / sizeof(backend_names[0]))
		return "invalid";
	return backend_names[b];
}

int ferry_backend_parse(const char *s)
{
	for (unsigned int i = 0; i < sizeof(backend_names) / sizeof(backend_names[0]); i++)
		if (s && strcmp(s, backend_names[i]) == 0)
			return (int)i;
	return -EINVAL;
}

/* Open our own session and check that it speaks ABI 1; *@features: its own. */
static int kmod_open(uint64_t *features)
{
	struct ferry_version v = { 0 };
	int fd = open("/dev/" FERRY_DEVICE_NAME, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (ioctl(fd, FERRY_IOC_VERSION, &v) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	if (v.abi_version != FERRY_ABI_VERSION ||
	    (v.features & (FERRY_FEAT_REGIONS | FERRY_FEAT_GRANTS)) !=
	    (FERRY_FEAT_REGIONS | FERRY_FEAT_GRANTS)) {
		close(fd);
		return -EPROTO;
	}
	if (features)
		*features = v.features;
	return fd;
}

int ferry_backend_resolve(enum ferry_backend want)
{
	const char *env = getenv("FERRY_BACKEND");
	int fd;

	if (want == FERRY_BACKEND_AUTO && env && *env) {
		int b = ferry_backend_parse(env);

		if (b < 0)
			return -EINVAL;
		want = (enum ferry_backend)b;
	}
	switch (want) {
	case FERRY_BACKEND_MEMFD:
		return FERRY_BACKEND_MEMFD;
	case FERRY_BACKEND_KMOD:
	case FERRY_BACKEND_AUTO:
		fd = kmod_open(NULL);
		if (fd >= 0) {
			close(fd);
			return FERRY_BACKEND_KMOD;
		}
		return want == FERRY_BACKEND_KMOD ? -ENODEV : FERRY_BACKEND_MEMFD;
	}
	return -EINVAL;
}

int ferry_rctx_open(enum ferry_backend want, struct ferry_rctx **out)
{
	struct ferry_rctx *rc;
	int b = ferry_backend_resolve(want);

	if (b < 0)
		return b;
	rc = calloc(1, sizeof(*rc));
	if (!rc)
		return -ENOMEM;
	rc->backend = (enum ferry_backend)b;
	rc->devfd = -1;
	if (rc->backend == FERRY_BACKEND_KMOD) {
		rc->devfd = kmod_open(&rc->features);
		if (rc->devfd < 0) {
			int err = rc->devfd;

			free(rc);
			return err;
		}
	}
	*out = rc;
	return 0;
}

void ferry_rctx_close(struct ferry_rctx *rc)
{
	if (!rc)
		return;
	if (rc->devfd >= 0)
		close(rc->devfd);
	free(rc);
}

enum ferry_backend ferry_rctx_backend(const struct ferry_rctx *rc)
{
	return rc->backend;
}

int ferry_rctx_devfd(const struct ferry_rctx *rc)
{
	return rc->devfd;
}

/* Bind [base, base+len) to @node before the first touch. */
static int bind_node(void *base, size_t len, int node)
{
	unsigned long mask[16] = { 0 };

	if (node < 0)
		return 0;
	if ((size_t)node >= sizeof(mask) * 8)
		return -EINVAL;
	mask[node / (8 * sizeof(long))] = 1UL << (node % (8 * sizeof(long)));
	if (mbind(base, len, MPOL_BIND, mask, sizeof(mask) * 8, 0) < 0)
		return -errno;
	return 0;
}

int ferry_region_create(struct ferry_rctx *rc, size_t size, int numa_node,
			struct ferry_region **out)
{
	struct ferry_region *r;
	unsigned int seals = F_SEAL_SHRINK | F_SEAL_GROW;
	int err;

	if (!rc || !out || size == 0 || size > FERRY_REGION_MAX_SIZE)
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->rc = rc;
	r->owner = true;
	r->size = ferry_page_round(size);
	r->base = MAP_FAILED;
	r->fd = memfd_create("ferry-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (r->fd < 0) {
		err = -errno;
		goto fail;
	}
	/*
	 * Fixed size for good: a peer can never SIGBUS another by truncating.
	 * kmod: F_SEAL_SEAL only once CREATE has added its F_SEAL_FUTURE_WRITE
	 * (it refuses a memfd it could no longer seal).
	 */
	if (rc->backend != FERRY_BACKEND_KMOD)
		seals |= F_SEAL_SEAL;
	if (ftruncate(r->fd, (off_t)r->size) < 0 || fcntl(r->fd, F_ADD_SEALS, seals) < 0) {
		err = -errno;
		goto fail;
	}
	/*
	 * Made before CREATE, so it stays writable: afterwards the memfd
	 * takes no write(), and no new writable mapping.
	 */
	r->base = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	if (r->base == MAP_FAILED) {
		err = -errno;
		goto fail;
	}
	madvise(r->base, r->size, MADV_DONTFORK);
	err = bind_node(r->base, r->size, numa_node);
	if (err)
		goto fail;
	if (rc->backend == FERRY_BACKEND_KMOD) {
		struct ferry_create c = { .memfd = r->fd, .size = r->size };

		if (ioctl(rc->devfd, FERRY_IOC_CREATE, &c) < 0) {
			err = -errno;
			goto fail;
		}
		r->id = c.id;
		if (fcntl(r->fd, F_ADD_SEALS, F_SEAL_SEAL) < 0) {
			err = -errno;
			goto fail_destroy;
		}
	}
	*out = r;
	return 0;
fail_destroy:
	ioctl(rc->devfd, FERRY_IOC_DESTROY, &(struct ferry_destroy){ .id = r->id });
fail:
	if (r->base != MAP_FAILED)
		munmap(r->base, r->size);
	if (r->fd >= 0)
		close(r->fd);
	free(r);
	return err;
}

void ferry_region_ref(const struct ferry_region *r, struct ferry_region_ref *out)
{
	out->id = r->id;
	out->fd = r->rc->backend == FERRY_BACKEND_MEMFD ? r->fd : -1;
	out->size = r->size;
}

int ferry_region_memfd(const struct ferry_region *r)
{
	return r->fd;
}

/*
 * @rights as the module takes them.  One without FERRY_FEAT_PIN made every
 * mapping pinnable and knows no PIN right: the bit is dropped, not refused.
 */
static int kmod_grant(const struct ferry_rctx *rc, uint32_t id, int pidfd, unsigned int rights)
{
	struct ferry_grant g = { .id = id, .pidfd = pidfd, .rights = rights };

	if (!(rc->features & FERRY_FEAT_PIN))
		g.rights &= ~FERRY_PIN;
	if (ioctl(rc->devfd, FERRY_IOC_GRANT, &g) < 0)
		return -errno;
	return 0;
}

static bool rights_valid(unsigned int rights)
{
	return (rights & FERRY_READ) && !(rights & ~(FERRY_READ | FERRY_WRITE | FERRY_PIN));
}

int ferry_region_grant(struct ferry_region *r, int pidfd, unsigned int rights)
{
	if (!r->owner)
		return -EPERM;
	if (!rights_valid(rights))
		return -EINVAL;
	if (r->rc->backend != FERRY_BACKEND_KMOD)
		return 0;
	return kmod_grant(r->rc, r->id, pidfd, rights);
}

int ferry_region_revoke(struct ferry_region *r, int pidfd)
{
	struct ferry_revoke rv = { .id = r->id, .pidfd = pidfd };

	if (!r->owner)
		return -EPERM;
	if (r->rc->backend != FERRY_BACKEND_KMOD)
		return -EOPNOTSUPP;
	if (ioctl(r->rc->devfd, FERRY_IOC_REVOKE, &rv) < 0)
		return -errno;
	return 0;
}

int ferry_region_import(struct ferry_rctx *rc, const struct ferry_region_ref *ref,
			unsigned int rights, struct ferry_region **out)
{
	int prot = PROT_READ | ((rights & FERRY_WRITE) ? PROT_WRITE : 0);
	struct ferry_region *r;
	void *base;
	int err;

	/* FERRY_PIN changes nothing here: the grant makes the mapping what it is. */
	if (!rc || !ref || !out || !rights_valid(rights) || ref->size == 0 ||
	    ref->size != ferry_page_round(ref->size) || ref->size > FERRY_REGION_MAX_SIZE)
		return -EINVAL;
	if (rc->backend == FERRY_BACKEND_KMOD) {
		if (ref->id == 0)
			return -EINVAL;
		base = mmap(NULL, ref->size, prot, MAP_SHARED, rc->devfd,
			    (off_t)((uint64_t)ref->id << FERRY_MMAP_SHIFT));
	} else {
		struct stat st;
		int seals = fcntl(ref->fd, F_GET_SEALS);

		/* Only a memfd nobody can shrink is safe to touch. */
		if (seals < 0)
			return errno == EBADF ? -EBADF : -EINVAL;
		if (!(seals & F_SEAL_SHRINK) || fstat(ref->fd, &st) < 0 ||
		    (uint64_t)st.st_size < ref->size)
			return -EINVAL;
		base = mmap(NULL, ref->size, prot, MAP_SHARED, ref->fd, 0);
	}
	if (base == MAP_FAILED)
		return -errno;
	madvise(base, ref->size, MADV_DONTFORK);
	r = calloc(1, sizeof(*r));
	if (!r) {
		err = -ENOMEM;
		munmap(base, ref->size);
		return err;
	}
	r->rc = rc;
	r->id = ref->id;
	r->fd = -1;
	r->prot = prot;
	r->base = base;
	r->size = ref->size;
	*out = r;
	return 0;
}

void *ferry_region_base(const struct ferry_region *r)
{
	return r->base;
}

size_t ferry_region_size(const struct ferry_region *r)
{
	return r->size;
}

uint32_t ferry_region_id(const struct ferry_region *r)
{
	return r->id;
}

/*
 * The head: the owner's region @r gets a second kmod region of the same
 * memfd over its first @bytes, which ferry_region_grant_head() grants on
 * its own.  Without FERRY_FEAT_PIN every mapping is pinnable already, and
 * the memfd backend has no rights to split: both need none (0, no head).
 */
int ferry_region_add_head(struct ferry_region *r, size_t bytes)
{
	struct ferry_create c = { .memfd = r->fd, .size = bytes };

	if (!r->owner || r->head_id || bytes == 0 || bytes != ferry_page_round(bytes) ||
	    bytes > r->size)
		return -EINVAL;
	if (r->rc->backend != FERRY_BACKEND_KMOD || !(r->rc->features & FERRY_FEAT_PIN))
		return 0;
	if (ioctl(r->rc->devfd, FERRY_IOC_CREATE, &c) < 0)
		return -errno;
	r->head_id = c.id;
	return 0;
}

int ferry_region_grant_head(struct ferry_region *r, int pidfd, unsigned int rights)
{
	if (!r->owner)
		return -EPERM;
	if (!rights_valid(rights))
		return -EINVAL;
	if (!r->head_id)
		return 0;
	return kmod_grant(r->rc, r->head_id, pidfd, rights);
}

uint32_t ferry_region_head_id(const struct ferry_region *r)
{
	return r->head_id;
}

/*
 * Importer: map head region @head_id over the first @bytes of @r's
 * mapping, with the protection @r was imported with.  MAP_FIXED replaces
 * what was there; if the kernel then refuses, that range may be left
 * unmapped, so a failure here means the caller closes @r.
 */
int ferry_region_map_head(struct ferry_region *r, uint32_t head_id, size_t bytes)
{
	void *p;

	if (head_id == 0)
		return 0;
	/* An id above the offset's bits would wrap into another region's. */
	if (r->owner || r->head_id || r->rc->backend != FERRY_BACKEND_KMOD ||
	    head_id >= 1u << (63 - FERRY_MMAP_SHIFT) || bytes == 0 ||
	    bytes != ferry_page_round(bytes) || bytes > r->size)
		return -EINVAL;
	p = mmap(r->base, bytes, r->prot, MAP_SHARED | MAP_FIXED, r->rc->devfd,
		 (off_t)((uint64_t)head_id << FERRY_MMAP_SHIFT));
	if (p == MAP_FAILED)
		return -errno;
	madvise(p, bytes, MADV_DONTFORK);
	r->head_id = head_id;
	return 0;
}

void ferry_region_close(struct ferry_region *r)
{
	if (!r)
		return;
	munmap(r->base, r->size);	/* the head's mapping too, it lies inside */
	if (r->owner && r->rc->backend == FERRY_BACKEND_KMOD) {
		struct ferry_destroy d = { .id = r->id };

		if (r->head_id)
			ioctl(r->rc->devfd, FERRY_IOC_DESTROY,
			      &(struct ferry_destroy){ .id = r->head_id });
		ioctl(r->rc->devfd, FERRY_IOC_DESTROY, &d);
	}
	if (r->fd >= 0)
		close(r->fd);
	free(r);
}
