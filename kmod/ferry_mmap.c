// SPDX-License-Identifier: GPL-2.0
/*
 * ferry_mmap.c - mapping regions: the mmap check, and the fault handler
 * that re-checks rights before every page it installs.
 *
 * The VMA is re-pointed at the region's own pseudo file (ferry.h: vfile),
 * not at the memfd: that file cannot be mmapped, so remap_file_pages() or
 * a mapping re-created from vm_file cannot escape these checks, and its
 * address_space holds exactly the region's VMAs, so one
 * unmap_mapping_range() reaches every mapping of the region and nothing
 * else.  Pages are the memfd's own shmem pages, inserted with
 * vm_insert_page (VM_MIXEDMAP), so get_user_pages works on them; the price
 * is that reclaim cannot unmap them from our VMAs while they are mapped.
 * A page is installed only under the region lock, after the rights check;
 * a revoke that takes the lock for writing and then zaps therefore leaves
 * no page behind.
 */
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/shmem_fs.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <uapi/linux/fcntl.h>

#include "ferry.h"

static void ferry_vma_mod_flags(struct vm_area_struct *vma, vm_flags_t set,
				vm_flags_t clear)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_mod(vma, set, clear);
#else
	vma->vm_flags = (vma->vm_flags | set) & ~clear;
#endif
}

static void ferry_map_release(struct kref *ref)
{
	struct ferry_map *map = container_of(ref, struct ferry_map, ref);

	if (map->access)
		ferry_access_put(map->access);
	mmdrop(map->mm);
	ferry_region_put(map->region);
	kmem_cache_free(ferry_map_cache, map);
}

/*
 * A VMA was split off or moved, and shares the map; or fork() copied it
 * into a child because MADV_DOFORK undid our VM_DONTCOPY.  The child may
 * not use its copy (ferry_map_allows() refuses another mm), and it must not
 * inherit the page-table entries either: fork copies those of a
 * VM_MIXEDMAP VMA unless the copy is VM_WIPEONFORK, which fork looks at
 * after calling open.  (That order is mainline's since 6.9 and 6.1.y's
 * again in recent updates, Debian's 6.1.192 among them; a 6.1.y between
 * the backport's revert and its return calls open after copying.)
 */
static void ferry_vm_open(struct vm_area_struct *vma)
{
	struct ferry_map *map = vma->vm_private_data;

	if (vma->vm_mm != map->mm)
		ferry_vma_mod_flags(vma, VM_WIPEONFORK, 0);
	kref_get(&map->ref);
	atomic_inc(&map->region->nr_maps);
	__module_get(THIS_MODULE);
}

static void ferry_vm_close(struct vm_area_struct *vma)
{
	struct ferry_map *map = vma->vm_private_data;

	atomic_dec(&map->region->nr_maps);
	kref_put(&map->ref, ferry_map_release);
	/* Our vm_ops outlive the fd, so each VMA pins the module. */
	module_put(THIS_MODULE);
}

/* Rights needed for @vma's protection; called under region->lock. */
static bool ferry_map_allows(const struct ferry_map *map,
			     const struct vm_area_struct *vma,
			     vm_flags_t vm_flags)
{
	u32 need = FERRY_RIGHT_READ;

	if (vm_flags & VM_WRITE)
		need |= FERRY_RIGHT_WRITE;
	/* Copied into a child despite VM_DONTCOPY (MADV_DOFORK): no. */
	if (vma->vm_mm != map->mm)
		return false;
	if (!map->access)
		return true;
	return !map->access->revoked && (map->access->rights & need) == need;
}

static vm_fault_t ferry_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct ferry_map *map = vma->vm_private_data;
	struct ferry_region *r = map->region;
	struct address_space *mapping = r->file->f_mapping;
	struct folio *folio;
	struct page *page;
	vm_fault_t ret;

	if (vmf->pgoff >= (r->size >> PAGE_SHIFT))
		return VM_FAULT_SIGBUS;

	down_read(&r->lock);
	if (!ferry_map_allows(map, vma, vma->vm_flags)) {
		ret = VM_FAULT_SIGBUS;
		goto unlock;
	}
	page = shmem_read_mapping_page_gfp(mapping, vmf->pgoff,
					   mapping_gfp_mask(mapping));
	if (IS_ERR(page)) {
		ret = vmf_error(PTR_ERR(page));
		goto unlock;
	}
	folio = page_folio(page);
	folio_lock(folio);
	/* A hole punched meanwhile took the page out of the file: retry. */
	if (folio->mapping == mapping)
		ret = vmf_insert_page(vma, vmf->address, page);
	else
		ret = VM_FAULT_NOPAGE;
	folio_unlock(folio);
	put_page(page);
unlock:
	up_read(&r->lock);
	return ret;
}

/* mprotect() may not add rights the grant does not carry. */
static int ferry_vm_mprotect(struct vm_area_struct *vma, unsigned long start,
			     unsigned long end, unsigned long newflags)
{
	struct ferry_map *map = vma->vm_private_data;
	struct ferry_region *r = map->region;
	bool ok;

	if (newflags & VM_EXEC)
		return -EACCES;
	down_read(&r->lock);
	ok = ferry_map_allows(map, vma, newflags);
	up_read(&r->lock);
	return ok ? 0 : -EACCES;
}

static const struct vm_operations_struct ferry_vm_ops = {
	.open		= ferry_vm_open,
	.close		= ferry_vm_close,
	.fault		= ferry_vm_fault,
	.mprotect	= ferry_vm_mprotect,
};

/* Called with the caller already checked against the session's owner. */
int ferry_mmap(struct file *file, struct vm_area_struct *vma)
{
	u64 off = (u64)vma->vm_pgoff << PAGE_SHIFT;
	u64 start = off & (FERRY_REGION_MAX_SIZE - 1);
	u64 len = vma->vm_end - vma->vm_start;
	vm_flags_t clear = VM_MAYEXEC;
	struct ferry_access *a = NULL;
	struct ferry_region *r;
	struct ferry_map *map;
	int ret;

	/* A private copy of a region would escape revoke: shared only. */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (vma->vm_flags & VM_EXEC)
		return -EACCES;
	r = ferry_region_get(off >> FERRY_MMAP_SHIFT);
	if (!r)
		return -ENOENT;
	if (start >= r->size || len > r->size - start) {
		ret = -EINVAL;
		goto put_region;
	}
	map = kmem_cache_zalloc(ferry_map_cache, GFP_KERNEL);
	if (!map) {
		ret = -ENOMEM;
		goto put_region;
	}

	/*
	 * Write seals added after create bind us as they bind shmem's own
	 * mmap: no new writable mapping, no mprotect to writable later.
	 */
	if (READ_ONCE(SHMEM_I(file_inode(r->file))->seals) &
	    (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) {
		if (vma->vm_flags & VM_WRITE) {
			ret = -EPERM;
			goto free_map;
		}
		clear |= VM_MAYWRITE;
	}

	if (!ferry_caller_is(r->owner)) {
		down_read(&r->lock);
		a = ferry_access_find_locked(r, task_tgid(current));
		if (a && !(a->rights & FERRY_RIGHT_WRITE)) {
			/* No later mprotect(PROT_WRITE) either. */
			clear |= VM_MAYWRITE;
			if (vma->vm_flags & VM_WRITE)
				a = NULL;
		}
		if (a)
			kref_get(&a->ref);
		up_read(&r->lock);
		if (!a) {
			ret = -EACCES;
			goto free_map;
		}
	}

	kref_init(&map->ref);
	map->region = r;		/* the lookup's reference moves here */
	map->access = a;
	map->mm = vma->vm_mm;
	mmgrab(map->mm);

	/* VM_MIXEDMAP and VM_DONTEXPAND also keep the VMA from merging. */
	ferry_vma_mod_flags(vma, VM_MIXEDMAP | VM_DONTEXPAND | VM_DONTCOPY,
			    clear);
	vma->vm_pgoff = start >> PAGE_SHIFT;
	vma_set_file(vma, r->vfile);
	vma->vm_ops = &ferry_vm_ops;
	vma->vm_private_data = map;
	atomic_inc(&r->nr_maps);
	__module_get(THIS_MODULE);
	return 0;

free_map:
	kmem_cache_free(ferry_map_cache, map);
put_region:
	ferry_region_put(r);
	return ret;
}
