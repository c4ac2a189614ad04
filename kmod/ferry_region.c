// SPDX-License-Identifier: GPL-2.0
/*
 * ferry_region.c - regions: checking a memfd before trusting it, the id
 * table, what each session and user is charged, destroy, info and the
 * final free.
 *
 * A region holds its own reference to the memfd's file and a "writable
 * mapping" count on it.  The count keeps F_SEAL_WRITE from being added for
 * as long as the region exists, so writable mappings handed out by ferry
 * can never contradict a seal added later.  F_SEAL_SHRINK is required up
 * front so nobody can truncate pages out from under a mapping (and SIGBUS
 * a peer that trusted the region's size), and CREATE adds
 * F_SEAL_FUTURE_WRITE itself: without it the owner could punch a hole
 * (fallocate, MADV_REMOVE) under a grantee's mapping.  Shmem's own
 * invalidation cannot reach ferry's mappings (they live in the region's
 * address space, and unpinnable ones hold PFN entries that must never be
 * in the memfd's), so no page may leave the memfd while a region of it
 * exists.  The seal is ferry's: mappings of the region stay writable, and
 * more regions may be made of the memfd while one of them lives.
 */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/mm.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/shmem_fs.h>
#include <linux/slab.h>
#include <uapi/linux/fcntl.h>

#include "ferry.h"

/* Ids are the mmap offset's top bits; keep the offset a positive off_t. */
#define FERRY_MAX_ID	((1U << (63 - FERRY_MMAP_SHIFT)) - 1)

/* Is some region (live or still mapped) already built on @inode? */
static bool ferry_inode_backs_region(struct inode *inode)
{
	struct ferry_region *r;
	bool found = false;

	mutex_lock(&ferry_global_lock);
	list_for_each_entry(r, &ferry_all_regions, all_node) {
		if (file_inode(r->file) == inode) {
			found = true;
			break;
		}
	}
	mutex_unlock(&ferry_global_lock);
	return found;
}

/*
 * Check @file is a memfd we can build on and take the writable-mapping
 * count on it.  *size comes in as the caller's request (0 = whole file) and
 * leaves as the region's size.  Returns with the inode locked on success,
 * so that the create can finish, and seal, before anyone else adds seals.
 */
static int ferry_memfd_claim(struct file *file, u64 *size)
{
	struct inode *inode = file_inode(file);
	unsigned int seals;
	loff_t isize;
	int ret = 0;

	/* The owner gets a writable mapping: it must hold a writable fd. */
	if ((file->f_mode & (FMODE_READ | FMODE_WRITE)) !=
	    (FMODE_READ | FMODE_WRITE))
		return -EBADF;
	/* Only shmem files (memfd) carry seals and pages we can hand out. */
	if (inode->i_sb->s_magic != TMPFS_MAGIC || !S_ISREG(inode->i_mode))
		return -EINVAL;

	/* memfd_add_seals() takes the inode lock: check and claim as one. */
	inode_lock(inode);
	seals = READ_ONCE(SHMEM_I(inode)->seals);
	isize = i_size_read(inode);
	if (!(seals & F_SEAL_SHRINK) || (seals & F_SEAL_WRITE))
		ret = -EINVAL;
	else if ((seals & F_SEAL_FUTURE_WRITE) &&
		 !ferry_inode_backs_region(inode))
		ret = -EINVAL;	/* someone else's promise: nobody writes */
	else if (!(seals & F_SEAL_FUTURE_WRITE) && (seals & F_SEAL_SEAL))
		ret = -EPERM;	/* we could not seal it against hole punching */
	else if (isize <= 0 || !PAGE_ALIGNED(isize))
		ret = -EINVAL;
	else if (*size && (!PAGE_ALIGNED(*size) || *size > isize))
		ret = -EINVAL;
	else if ((*size ? *size : isize) > FERRY_REGION_MAX_SIZE)
		ret = -EINVAL;
	else if (mapping_map_writable(file->f_mapping))
		ret = -EINVAL;	/* write-denied: a seal is being added */
	if (ret) {
		inode_unlock(inode);
		return ret;
	}
	if (!*size)
		*size = isize;
	return 0;
}

/* The last VMA of the region is gone and the region let go of the file. */
static int ferry_vfile_release(struct inode *inode, struct file *file)
{
	/* NULL: a file that lost the race to become the region's vfile. */
	if (file->private_data)
		kmem_cache_free(ferry_region_cache, file->private_data);
	return 0;
}

static const struct file_operations ferry_vfile_fops = {
	.owner		= THIS_MODULE,
	.release	= ferry_vfile_release,
	/* no .mmap: remap_file_pages() and friends get -ENODEV */
};

/*
 * Give back the pages unpinnable mappings used.  Their PFN entries never
 * marked the pages dirty, so do it now: a clean shmem page can be dropped
 * by reclaim, and these may hold data written through those entries.
 */
static void ferry_region_release_pages(struct ferry_region *r)
{
	struct page *page;
	unsigned long index;

	xa_for_each(&r->pages, index, page) {
		set_page_dirty_lock(page);
		put_page(page);
	}
	xa_destroy(&r->pages);
}

static void ferry_region_release(struct kref *ref)
{
	struct ferry_region *r = container_of(ref, struct ferry_region, ref);
	struct ferry_session *s = r->session;

	/* Off the debugfs list before the grants it walks are freed. */
	mutex_lock(&ferry_global_lock);
	list_del(&r->all_node);
	mutex_unlock(&ferry_global_lock);

	ferry_region_drop_grants(r);
	/* Every map held a reference: no VMA, hence no PFN entry, is left. */
	ferry_region_release_pages(r);
	mapping_unmap_writable(r->file->f_mapping);
	fput(r->file);
	put_pid(r->owner);

	mutex_lock(&s->lock);
	s->nr_regions--;
	s->bytes -= r->size;
	mutex_unlock(&s->lock);
	ferry_user_uncharge_region(s->user, r->size);

	ferry_session_put(s);
	if (r->vfile)
		fput(r->vfile);	/* frees @r once VMAs dropped theirs too */
	else
		kmem_cache_free(ferry_region_cache, r);
}

void ferry_region_put(struct ferry_region *r)
{
	kref_put(&r->ref, ferry_region_release);
}

struct ferry_region *ferry_region_get(u32 id)
{
	struct ferry_region *r;

	/* The table's reference cannot go while we hold its lock. */
	xa_lock(&ferry_regions);
	r = xa_load(&ferry_regions, id);
	if (r)
		kref_get(&r->ref);
	xa_unlock(&ferry_regions);
	return r;
}

/* Charge @s for a region of @size; called with s->lock held. */
static int ferry_session_charge(struct ferry_session *s, u64 size)
{
	u64 max_bytes = READ_ONCE(ferry_max_bytes);

	if (s->closed)
		return -EBADF;
	if (s->nr_regions >= READ_ONCE(ferry_max_regions))
		return -ENOSPC;
	if (s->bytes > max_bytes || size > max_bytes - s->bytes)
		return -EDQUOT;
	return 0;
}

int ferry_region_create(struct ferry_session *s, struct ferry_create *arg)
{
	struct ferry_region *r;
	struct inode *inode;
	struct file *file;
	u64 size = arg->size;
	int ret;

	if (arg->flags || arg->pad)
		return -EINVAL;
	if (arg->memfd < 0)
		return -EBADF;
	file = fget(arg->memfd);
	if (!file)
		return -EBADF;
	inode = file_inode(file);

	r = kmem_cache_zalloc(ferry_region_cache, GFP_KERNEL);
	if (!r) {
		ret = -ENOMEM;
		goto put_file;
	}
	ret = ferry_memfd_claim(file, &size);	/* locks the inode */
	if (ret)
		goto free_region;

	address_space_init_once(&r->vmap);
	xa_init(&r->pages);
	kref_init(&r->ref);		/* the id table's reference */
	r->size = size;
	r->file = file;
	r->owner = get_pid(s->owner);
	r->owner_exec = s->owner_exec;
	r->session = s;
	init_rwsem(&r->lock);
	INIT_LIST_HEAD(&r->grants);
	atomic_set(&r->nr_maps, 0);

	mutex_lock(&s->lock);
	ret = ferry_session_charge(s, size);
	if (ret)
		goto unlock;
	ret = ferry_user_charge_region(s->user, size);
	if (ret)
		goto unlock;
	ret = xa_alloc(&ferry_regions, &r->id, r, XA_LIMIT(1, FERRY_MAX_ID),
		       GFP_KERNEL_ACCOUNT);
	if (ret) {
		ferry_user_uncharge_region(s->user, size);
		ret = ret == -EBUSY ? -ENOSPC : ret;
		goto unlock;
	}
	r->live = true;
	s->nr_regions++;
	s->bytes += size;
	kref_get(&s->ref);
	list_add_tail(&r->session_node, &s->regions);
	mutex_lock(&ferry_global_lock);
	list_add_tail(&r->all_node, &ferry_all_regions);
	mutex_unlock(&ferry_global_lock);

	arg->id = r->id;
	arg->size = size;
	arg->mmap_offset = (u64)r->id << FERRY_MMAP_SHIFT;
	mutex_unlock(&s->lock);
	/* Nothing can fail any more: seal, as memfd_add_seals() would. */
	WRITE_ONCE(SHMEM_I(inode)->seals,
		   SHMEM_I(inode)->seals | F_SEAL_FUTURE_WRITE);
	inode_unlock(inode);
	return 0;

unlock:
	mutex_unlock(&s->lock);
	put_pid(r->owner);
	mapping_unmap_writable(file->f_mapping);
	inode_unlock(inode);
free_region:
	kmem_cache_free(ferry_region_cache, r);
put_file:
	fput(file);
	return ret;
}

/*
 * The region's own file, made on first use.  Two racing first mmaps may
 * both make one; the loser's is dropped before it ever holds a VMA.
 */
struct file *ferry_region_vfile(struct ferry_region *r)
{
	/* Pairs with the cmpxchg below: a file seen is fully set up. */
	struct file *f = smp_load_acquire(&r->vfile);

	if (f)
		return f;
	f = anon_inode_getfile("[ferry-region]", &ferry_vfile_fops, NULL, O_RDWR);
	if (IS_ERR(f))
		return f;
	/*
	 * Borrow what the mm looks up through a mapping from the anon inode
	 * (one inode for all anon files: racing writers store the same).
	 */
	r->vmap.host = file_inode(f);
	r->vmap.a_ops = r->vmap.host->i_mapping->a_ops;
	r->vmap.flags = r->vmap.host->i_mapping->flags;
	f->f_mapping = &r->vmap;
	f->private_data = r;
	if (cmpxchg(&r->vfile, NULL, f)) {
		f->private_data = NULL;
		fput(f);
		/* The winner's file, published by its cmpxchg. */
		return smp_load_acquire(&r->vfile);
	}
	return f;
}

/* Take @r out of the id table; maps made earlier keep it alive. */
int ferry_region_destroy(struct ferry_region *r)
{
	struct ferry_session *s = r->session;

	mutex_lock(&s->lock);
	if (!r->live) {
		mutex_unlock(&s->lock);
		return -ENOENT;
	}
	r->live = false;
	list_del_init(&r->session_node);
	xa_erase(&ferry_regions, r->id);
	mutex_unlock(&s->lock);

	ferry_region_put(r);		/* the id table's reference */
	return 0;
}

/* The session's owner exited or its last fd closed: its regions go. */
void ferry_session_destroy_regions(struct ferry_session *s)
{
	struct ferry_region *r, *tmp;
	LIST_HEAD(doomed);

	mutex_lock(&s->lock);
	s->closed = true;
	list_for_each_entry(r, &s->regions, session_node) {
		r->live = false;
		xa_erase(&ferry_regions, r->id);
	}
	list_splice_init(&s->regions, &doomed);
	mutex_unlock(&s->lock);

	/* Puts may free regions, whose release takes s->lock. */
	list_for_each_entry_safe(r, tmp, &doomed, session_node) {
		list_del_init(&r->session_node);
		ferry_region_put(r);
	}
}

/* The caller is the region's owner, still running the program it ran. */
bool ferry_caller_owns(struct ferry_region *r)
{
	return ferry_caller_is_image(r->owner, r->owner_exec);
}

/* The caller's rights on @r. */
u32 ferry_region_rights_locked(struct ferry_region *r)
{
	struct ferry_access *a;

	if (ferry_caller_owns(r))
		return FERRY_RIGHTS_ALL;
	a = ferry_access_of_caller_locked(r);
	return a ? a->rights : 0;
}

int ferry_region_info(struct ferry_region *r, struct ferry_info *arg)
{
	unsigned int nr_grants;
	u32 rights;

	down_write(&r->lock);
	rights = ferry_region_rights_locked(r);
	nr_grants = ferry_region_prune_grants_locked(r);
	up_write(&r->lock);
	if (!rights)
		return -EACCES;

	arg->size = r->size;
	arg->mmap_offset = (u64)r->id << FERRY_MMAP_SHIFT;
	arg->rights = rights;
	arg->owner_pid = pid_has_task(r->owner, PIDTYPE_TGID) ?
			 pid_vnr(r->owner) : 0;
	arg->nr_grants = nr_grants;
	arg->nr_maps = atomic_read(&r->nr_maps);
	return 0;
}

/*
 * Remove every page table entry that maps @r, in every process.  Mappings
 * that still have rights simply fault the pages back in; the others get
 * SIGBUS from ferry_vm_fault().  Called after rights changed under the
 * region lock, so no fault can reinstall a page under the old rights.
 */
void ferry_region_zap(struct ferry_region *r)
{
	unmap_mapping_range(&r->vmap, 0, r->size, 0);
}
