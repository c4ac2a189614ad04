/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ferry.h - objects shared by the files of ferry.ko.
 *
 * A session is one open() of /dev/ferry, bound to the opening thread group.
 * A region wraps a sealed memfd; it is owned by a process and charged to the
 * session that created it.  An access is one grant: the rights a grantee
 * process holds on one region.  A map is what one mmap() made; VMAs split
 * from it by munmap/mremap share it.
 *
 * A user is everything one real uid holds (ferry_user.c).
 *
 * Lifetimes (each object is freed when its last reference goes):
 *   user:    while it has a session
 *   session: the open file + every region charged to it
 *   region:  the id table while live + every map + short lookups
 *   access:  the region's grant list while granted + every map made under it
 *   map:     every VMA that points at it
 *
 * Lock order: memfd inode lock -> session->lock -> ferry_regions (xarray
 * spinlock), ferry_global_lock, ferry_users_lock;
 * mmap_lock -> region->lock -> folio lock -> page table lock.
 * ferry_global_lock (object lists for debugfs) is a leaf except for the
 * xarray.  No lock here is held across copy_to_user()/copy_from_user().
 */
#ifndef FERRY_H
#define FERRY_H

#include <linux/atomic.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/types.h>
#include <linux/uidgid.h>
#include <linux/xarray.h>
#include <linux/ferry.h>

#include "compat.h"

struct file;
struct mm_struct;
struct pid;
struct seq_file;
struct vm_area_struct;

/* Module parameters (ferry_main.c); read with READ_ONCE, root may change. */
extern unsigned int ferry_max_regions;
extern unsigned long long ferry_max_bytes;
extern unsigned int ferry_max_grants;
extern unsigned int ferry_max_user_sessions;
extern unsigned int ferry_max_user_regions;
extern unsigned long long ferry_max_user_bytes;

/* Every object below is on one of these lists so debugfs can show it. */
extern struct mutex ferry_global_lock;
extern struct list_head ferry_sessions;
extern struct list_head ferry_all_regions;
/* Live regions by id; an entry holds one region reference. */
extern struct xarray ferry_regions;
/*
 * One slab cache per object kind, named ferry_<kind>: kmemleak and
 * /proc/slabinfo name our objects, and slub_debug=A,ferry_* with failslab's
 * cache-filter aims fault injection at this module's allocations alone.
 */
extern struct kmem_cache *ferry_session_cache, *ferry_region_cache;
extern struct kmem_cache *ferry_access_cache, *ferry_map_cache;

/* What one real uid holds; counters under ferry_users_lock. */
struct ferry_user {
	struct hlist_node node;
	kuid_t uid;
	unsigned int nr_sessions;
	unsigned int nr_regions;
	u64 bytes;
};

struct ferry_session {
	struct kref ref;
	struct pid *owner;		/* thread group that opened it */
	u64 owner_exec;			/* its self_exec_id then (exec ends it) */
	struct ferry_user *user;	/* charged for the session, its regions */
	u64 serial;			/* for debugfs only */
	struct mutex lock;		/* the fields below */
	struct list_head regions;	/* live regions created here */
	unsigned int nr_regions;	/* charged: until each is freed */
	u64 bytes;			/* charged: until each is freed */
	bool closed;			/* no new regions once set */
	struct list_head node;		/* ferry_sessions */
};

struct ferry_access {
	struct kref ref;
	struct list_head node;		/* region->grants while granted */
	struct pid *pid;		/* grantee thread group */
	u64 exec_id;			/* its self_exec_id at grant: exec lapses it */
	u32 rights;			/* FERRY_RIGHT_*, under region->lock */
	bool revoked;			/* under region->lock */
};

struct ferry_region {
	struct kref ref;
	u32 id;
	u64 size;
	struct file *file;		/* the memfd; our own reference */
	/*
	 * What ferry VMAs point at instead of the memfd: a file of our own
	 * whose mmap refuses and whose address_space holds exactly this
	 * region's VMAs, so remap_file_pages() cannot turn a ferry mapping
	 * into an unchecked shmem one, and a zap reaches only our mappings.
	 * Made at the first mmap (a region never mapped costs no file);
	 * once it exists, @r is freed by its release, when the last VMA let
	 * go.
	 */
	struct file *vfile;
	struct address_space vmap;
	/*
	 * Pages handed to unpinnable mappings (ferry_mmap.c), one reference
	 * each, by page index: their page-table entries are PFN entries that
	 * hold no reference and that reclaim cannot see, so the region holds
	 * the pages until it is freed.
	 */
	struct xarray pages;
	struct pid *owner;
	u64 owner_exec;			/* owner's self_exec_id at create */
	struct ferry_session *session;	/* charged; holds a reference */
	/*
	 * Taken for reading by every fault that installs a page and for
	 * writing by anything that takes rights away, so no page can be
	 * installed under rights that are already gone.
	 */
	struct rw_semaphore lock;
	struct list_head grants;	/* ferry_access, under lock */
	unsigned int nr_grants;		/* under lock */
	atomic_t nr_maps;		/* VMAs mapping the region */
	bool live;			/* in the id table; session->lock */
	struct list_head session_node;	/* session->regions while live */
	struct list_head all_node;	/* ferry_all_regions */
};

struct ferry_map {
	struct kref ref;
	struct ferry_region *region;
	struct ferry_access *access;	/* NULL: mapped by the owner */
	struct mm_struct *mm;		/* the address space it was made for */
	bool pinnable;			/* ordinary pages, not PFN entries */
};

/* ferry_main.c */
bool ferry_caller_is(struct pid *tgid);
bool ferry_caller_is_image(struct pid *tgid, u64 exec_id);
void ferry_session_put(struct ferry_session *s);

/* ferry_user.c */
int ferry_user_open_session(struct ferry_user **out);
void ferry_user_close_session(struct ferry_user *u);
int ferry_user_charge_region(struct ferry_user *u, u64 size);
void ferry_user_uncharge_region(struct ferry_user *u, u64 size);
void ferry_users_show(struct seq_file *m);

/* ferry_region.c */
int ferry_region_create(struct ferry_session *s, struct ferry_create *arg);
struct ferry_region *ferry_region_get(u32 id);
void ferry_region_put(struct ferry_region *r);
int ferry_region_destroy(struct ferry_region *r);
void ferry_session_destroy_regions(struct ferry_session *s);
int ferry_region_info(struct ferry_region *r, struct ferry_info *arg);
bool ferry_caller_owns(struct ferry_region *r);
u32 ferry_region_rights_locked(struct ferry_region *r);
struct file *ferry_region_vfile(struct ferry_region *r);
void ferry_region_zap(struct ferry_region *r);

/* ferry_grant.c */
int ferry_region_grant(struct ferry_region *r, int pidfd, u32 rights);
int ferry_region_revoke(struct ferry_region *r, int pidfd);
struct ferry_access *ferry_access_find_locked(struct ferry_region *r,
					      struct pid *tgid);
struct ferry_access *ferry_access_of_caller_locked(struct ferry_region *r);
unsigned int ferry_region_prune_grants_locked(struct ferry_region *r);
void ferry_region_drop_grants(struct ferry_region *r);
void ferry_access_put(struct ferry_access *a);

/* ferry_mmap.c */
int ferry_mmap(struct file *file, struct vm_area_struct *vma);

/* ferry_debugfs.c */
bool ferry_debugfs_init(void);
void ferry_debugfs_exit(void);

#endif /* FERRY_H */
