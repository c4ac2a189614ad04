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
 * else.  A page is installed only under the region lock, after the rights
 * check; a revoke that takes the lock for writing and then zaps therefore
 * leaves no page behind.
 *
 * Two kinds of mapping, chosen at mmap by the caller's rights:
 *  - pinnable (the owner, grantees holding FERRY_RIGHT_PIN): the memfd's
 *    own pages inserted as ordinary pages (VM_MIXEDMAP), so
 *    get_user_pages works on them (cuMemHostRegister, O_DIRECT, futexes).
 *    Pins taken that way outlive a revoke: only trusted grantees get PIN.
 *  - unpinnable (every other grantee): PFN entries (VM_PFNMAP), which
 *    get_user_pages refuses, fast path and slow; a process can then reach
 *    the pages only through its page tables, and a revoke's zap ends that.
 *    A PFN entry holds no page reference and is invisible to reclaim and
 *    migration, so the region keeps one reference per page it handed out
 *    (r->pages) until it is freed.  (PFN entries must never sit in the
 *    memfd's own address_space: an rmap walk there would take them for
 *    the page's mappings and drop references they never held.)
 */
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/shmem_fs.h>
#include <linux/slab.h>
#include <uapi/linux/fcntl.h>

#include "ferry.h"

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
		ferry_vma_set(vma, FERRY_VMA(WIPEONFORK));
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

/* Rights needed for @vma, writable or not; called under region->lock. */
static bool ferry_map_allows(const struct ferry_map *map,
			     const struct vm_area_struct *vma, bool write)
{
	u32 need = FERRY_RIGHT_READ;

	if (write)
		need |= FERRY_RIGHT_WRITE;
	/* A pinnable mapping stays one only while the grant carries PIN. */
	if (map->pinnable)
		need |= FERRY_RIGHT_PIN;
	/* Copied into a child despite VM_DONTCOPY (MADV_DOFORK): no. */
	if (vma->vm_mm != map->mm)
		return false;
	if (!map->access)
		return true;
	return !map->access->revoked && (map->access->rights & need) == need;
}

/* Pinnable mapping: the memfd's page itself, as an ordinary page. */
static vm_fault_t ferry_fault_page(struct vm_fault *vmf, struct ferry_region *r)
{
	struct address_space *mapping = r->file->f_mapping;
	struct folio *folio;
	struct page *page;
	vm_fault_t ret;

	page = shmem_read_mapping_page_gfp(mapping, vmf->pgoff,
					   mapping_gfp_mask(mapping));
	if (IS_ERR(page))
		return vmf_error(PTR_ERR(page));
	folio = page_folio(page);
	folio_lock(folio);
	/* Off the file meanwhile (the seals forbid it): look again. */
	if (folio->mapping == mapping)
		ret = vmf_insert_page(vmf->vma, vmf->address, page);
	else
		ret = VM_FAULT_NOPAGE;
	folio_unlock(folio);
	put_page(page);
	return ret;
}

/*
 * Unpinnable mapping: a PFN entry for the page, which the region holds
 * (r->pages) from its first use until it is freed.  The seals keep the
 * page in the file meanwhile, and the reference keeps reclaim, migration
 * and THP collapse from replacing it, so the memfd and every mapping see
 * the same page.
 */
static vm_fault_t ferry_fault_pfn(struct vm_fault *vmf, struct ferry_region *r)
{
	struct address_space *mapping = r->file->f_mapping;
	struct page *page, *old;

	page = xa_load(&r->pages, vmf->pgoff);
	if (!page) {
		page = shmem_read_mapping_page_gfp(mapping, vmf->pgoff,
						   mapping_gfp_mask(mapping));
		if (IS_ERR(page))
			return vmf_error(PTR_ERR(page));
		old = xa_cmpxchg(&r->pages, vmf->pgoff, NULL, page,
				 GFP_KERNEL_ACCOUNT);
		if (xa_is_err(old)) {
			put_page(page);
			return vmf_error(xa_err(old));
		}
		if (old) {		/* a racing fault stored it first */
			put_page(page);
			page = old;
		}
	}
	return vmf_insert_pfn(vmf->vma, vmf->address, page_to_pfn(page));
}

static vm_fault_t ferry_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct ferry_map *map = vma->vm_private_data;
	struct ferry_region *r = map->region;
	vm_fault_t ret;

	if (vmf->pgoff >= (r->size >> PAGE_SHIFT))
		return VM_FAULT_SIGBUS;

	down_read(&r->lock);
	if (!ferry_map_allows(map, vma, ferry_vma_test(vma, FERRY_VMA(WRITE))))
		ret = VM_FAULT_SIGBUS;
	else if (map->pinnable)
		ret = ferry_fault_page(vmf, r);
	else
		ret = ferry_fault_pfn(vmf, r);
	up_read(&r->lock);
	return ret;
}

/*
 * mprotect() may not add rights the grant does not carry.  @newflags is
 * still a vm_flags_t word on every kernel (7.3's bitmap keeps its first
 * word in the legacy layout).
 */
static int ferry_vm_mprotect(struct vm_area_struct *vma, unsigned long start,
			     unsigned long end, unsigned long newflags)
{
	struct ferry_map *map = vma->vm_private_data;
	struct ferry_region *r = map->region;
	bool ok;

	if (newflags & VM_EXEC)
		return -EACCES;
	down_read(&r->lock);
	ok = ferry_map_allows(map, vma, newflags & VM_WRITE);
	up_read(&r->lock);
	return ok ? 0 : -EACCES;
}

static const struct vm_operations_struct ferry_vm_ops = {
	.open		= ferry_vm_open,
	.close		= ferry_vm_close,
	.fault		= ferry_vm_fault,
	.mprotect	= ferry_vm_mprotect,
};

/*
 * Called with the caller already checked against the session's owner.
 * Rights are checked before anything about the region is: a process
 * without a grant learns nothing (not its size, not its seals) but
 * -EACCES, or -ENOENT for an id that names no region at all.
 */
int ferry_mmap(struct file *file, struct vm_area_struct *vma)
{
	u64 off = (u64)vma->vm_pgoff << PAGE_SHIFT;
	u64 start = off & (FERRY_REGION_MAX_SIZE - 1);
	u64 len = vma->vm_end - vma->vm_start;
	struct ferry_access *a = NULL;
	struct ferry_region *r;
	struct ferry_map *map;
	struct file *vfile;
	bool pinnable = true, readonly = false;
	int ret;

	/* A private copy of a region would escape revoke: shared only. */
	if (!ferry_vma_test(vma, FERRY_VMA(MAYSHARE)))
		return -EINVAL;
	if (ferry_vma_test(vma, FERRY_VMA(EXEC)))
		return -EACCES;
	r = ferry_region_get(off >> FERRY_MMAP_SHIFT);
	if (!r)
		return -ENOENT;

	if (!ferry_caller_owns(r)) {
		down_read(&r->lock);
		a = ferry_access_of_caller_locked(r);
		if (a && !(a->rights & FERRY_RIGHT_WRITE)) {
			/* No later mprotect(PROT_WRITE) either. */
			readonly = true;
			if (ferry_vma_test(vma, FERRY_VMA(WRITE)))
				a = NULL;
		}
		if (a) {
			kref_get(&a->ref);
			pinnable = a->rights & FERRY_RIGHT_PIN;
		}
		up_read(&r->lock);
		if (!a) {
			ret = -EACCES;
			goto put_region;
		}
	}
	/*
	 * Only now what the caller may know.  No write seal needs checking:
	 * the region's writable-mapping count keeps F_SEAL_WRITE off, and
	 * F_SEAL_FUTURE_WRITE is ferry's own (ferry_region.c).
	 */
	if (start >= r->size || len > r->size - start) {
		ret = -EINVAL;
		goto put_access;
	}
	vfile = ferry_region_vfile(r);
	if (IS_ERR(vfile)) {
		ret = PTR_ERR(vfile);
		goto put_access;
	}
	map = kmem_cache_zalloc(ferry_map_cache, GFP_KERNEL);
	if (!map) {
		ret = -ENOMEM;
		goto put_access;
	}

	kref_init(&map->ref);
	map->region = r;		/* the lookup's reference moves here */
	map->access = a;		/* and the grant's */
	map->mm = vma->vm_mm;
	map->pinnable = pinnable;
	mmgrab(map->mm);

	ferry_vma_clear(vma, FERRY_VMA(MAYEXEC));
	if (readonly)
		ferry_vma_clear(vma, FERRY_VMA(MAYWRITE));
	/* VM_MIXEDMAP, VM_PFNMAP, VM_DONTEXPAND keep the VMA from merging. */
	ferry_vma_set(vma, FERRY_VMA(DONTEXPAND));
	ferry_vma_set(vma, FERRY_VMA(DONTCOPY));
	if (pinnable) {
		ferry_vma_set(vma, FERRY_VMA(MIXEDMAP));
	} else {
		ferry_vma_set(vma, FERRY_VMA(PFNMAP));
		ferry_vma_set(vma, FERRY_VMA(DONTDUMP));
	}
	vma->vm_pgoff = start >> PAGE_SHIFT;
	vma_set_file(vma, vfile);
	vma->vm_ops = &ferry_vm_ops;
	vma->vm_private_data = map;
	atomic_inc(&r->nr_maps);
	__module_get(THIS_MODULE);
	return 0;

put_access:
	if (a)
		ferry_access_put(a);
put_region:
	ferry_region_put(r);
	return ret;
}
