/* SPDX-License-Identifier: GPL-2.0 */
/*
 * compat.h - the kernel interfaces that changed within the range ferry
 * supports (5.16 to 7.x), each spelt once here so the rest of the module
 * reads the same on every kernel.
 *
 * The floor, 5.16, is where the newest interface the module cannot do
 * without appeared: folios (page_folio(), folio_lock()).  Before that
 * 5.11 brought vm_operations_struct.mprotect and vma_set_file(), 5.5
 * compat_ptr_ioctl(), 5.3 pidfds, 5.1 F_SEAL_FUTURE_WRITE.  kmod/Kbuild
 * refuses older kernels with one line before anything is compiled; the
 * #error below is for builds that bypass it.
 */
#ifndef FERRY_COMPAT_H
#define FERRY_COMPAT_H

#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/mm.h>
#include <linux/pid.h>
#include <linux/string.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 16, 0)
#error "ferry needs Linux 5.16 or later (folios)"
#endif

/*
 * VMA flags, named by their bit: FERRY_VMA(DONTCOPY) and so on, set,
 * cleared and tested one at a time.  7.3 keeps them in a bitmap
 * (vma->flags, vma_flag_t bit numbers) with accessors of their own;
 * vm_flags_set() and reads of vma->vm_flags still work there but are on
 * their way out.  6.3 to 7.2: vm_flags_set()/vm_flags_clear(), which take
 * the VMA's write lock (vma_start_write(), done by hand for the bitmap).
 * Before 6.3: vma->vm_flags itself.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 3, 0)
#define FERRY_VMA(name)			VMA_##name##_BIT
#define ferry_vma_test(vma, bit)	vma_test(vma, bit)
static inline void ferry_vma_set(struct vm_area_struct *vma, vma_flag_t bit)
{
	vma_start_write(vma);
	vma_set_flags(vma, bit);
}

static inline void ferry_vma_clear(struct vm_area_struct *vma, vma_flag_t bit)
{
	vma_start_write(vma);
	vma_clear_flags(vma, bit);
}
#else
#define FERRY_VMA(name)			VM_##name
#define ferry_vma_test(vma, flag)	(!!((vma)->vm_flags & (flag)))
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define ferry_vma_set(vma, flag)	vm_flags_set(vma, flag)
#define ferry_vma_clear(vma, flag)	vm_flags_clear(vma, flag)
#else
#define ferry_vma_set(vma, flag)	((vma)->vm_flags |= (flag))
#define ferry_vma_clear(vma, flag)	((vma)->vm_flags &= ~(flag))
#endif
#endif

/*
 * The struct pid a pidfd names, or NULL when @f is no pidfd.  The kernel
 * exports no pidfd-to-pid helper to modules, so recognise pidfds by what
 * they are: since 6.9 files of the pidfs filesystem whose inode carries
 * the pid, before that files of the anon-inode filesystem named "[pidfd]"
 * whose private data is the pid.  (No probe file made at load time to
 * learn the anon inode: its deferred fput() would outlive a load that
 * fails later.)
 */
static inline struct pid *ferry_pidfd_file_pid(struct file *f)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
	if (file_inode(f)->i_sb->s_magic != ANON_INODE_FS_MAGIC ||
	    strcmp(f->f_path.dentry->d_name.name, "[pidfd]"))
		return NULL;
	return f->private_data;
#else
	if (file_inode(f)->i_sb->s_magic != PID_FS_MAGIC)
		return NULL;
	return file_inode(f)->i_private;
#endif
}

#endif /* FERRY_COMPAT_H */
