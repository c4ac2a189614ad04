/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ferry: regions built from sealed memfds, mapped by the processes the
 * region's owner granted them to.
 *
 * open("/dev/ferry") makes a session bound to the opening process (its
 * thread group) and the program it runs.  Every ioctl and mmap on that
 * file from any other process, or from the same process after an exec,
 * fails with -EPERM, so a session fd inherited across fork() or exec, or
 * received over SCM_RIGHTS, is worth nothing.  The session's regions are
 * destroyed once no thread of the owner holds the fd any more (close,
 * exit, exec of an O_CLOEXEC fd), whoever else still has a copy.
 *
 * A region's memfd must be sealed with F_SEAL_SHRINK (not F_SEAL_WRITE or
 * F_SEAL_SEAL); CREATE adds F_SEAL_FUTURE_WRITE to it, so from then on no
 * one can write(), punch a hole in, or newly map writable the memfd
 * itself: its pages change only through mappings, and no page can leave
 * it under a mapping.  More regions may be made of a memfd while one
 * lives.  Grants end at the grantee's exit or exec.
 *
 * Mappings a grantee makes without FERRY_RIGHT_PIN hold PFN entries:
 * get_user_pages() fails on them (-EFAULT from vmsplice, O_DIRECT,
 * io_uring fixed buffers, process_vm_readv, shared futexes), so nothing
 * outlives a revoke.  With FERRY_RIGHT_PIN the mapping holds ordinary
 * pages that can be pinned (cuMemHostRegister needs that); pins taken
 * survive a revoke until they are released.
 *
 * Rules common to every struct below:
 *  - fields marked "in" are read, fields marked "out" are written;
 *  - @flags must be 0 today and @pad must be 0; anything else is -EINVAL,
 *    so later versions can give those bits a meaning safely;
 *  - errors are negative errno values from ioctl(2)/mmap(2).
 *
 * A region is mapped with mmap(devfd, len, prot, MAP_SHARED, off) where off
 * is the region's @mmap_offset plus a page-aligned offset inside the region.
 * MAP_PRIVATE and PROT_EXEC are refused.
 */
#ifndef _UAPI_LINUX_FERRY_H
#define _UAPI_LINUX_FERRY_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define FERRY_DEVICE_NAME	"ferry"
#define FERRY_ABI_VERSION	1

/*
 * Rights a grant carries.  READ is required; WRITE and PIN add to it.
 * PIN: the grantee's mappings may be pinned (get_user_pages); such pins
 * outlive a revoke.  The owner holds every right.
 */
#define FERRY_RIGHT_READ	(1U << 0)
#define FERRY_RIGHT_WRITE	(1U << 1)
#define FERRY_RIGHT_PIN		(1U << 2)
#define FERRY_RIGHTS_ALL	(FERRY_RIGHT_READ | FERRY_RIGHT_WRITE | \
				 FERRY_RIGHT_PIN)

/* Features reported by FERRY_IOC_VERSION. */
#define FERRY_FEAT_REGIONS	(1ULL << 0)	/* create/destroy/info/mmap */
#define FERRY_FEAT_GRANTS	(1ULL << 1)	/* grant/revoke by pidfd */
#define FERRY_FEAT_REVOKE_ZAP	(1ULL << 2)	/* revoke zaps live mappings */
#define FERRY_FEAT_DEBUGFS	(1ULL << 3)	/* <debugfs>/ferry/ is present */
#define FERRY_FEAT_PIN		(1ULL << 4)	/* FERRY_RIGHT_PIN; others unpinnable */
#define FERRY_FEAT_USER_LIMITS	(1ULL << 5)	/* per-uid caps (module parameters) */
#define FERRY_FEAT_EXEC_ENDS	(1ULL << 6)	/* exec ends grants and sessions */
#define FERRY_FEAT_SEAL_WRITES	(1ULL << 7)	/* CREATE adds F_SEAL_FUTURE_WRITE */

/*
 * mmap offsets: region id in the bits at and above FERRY_MMAP_SHIFT, byte
 * offset inside the region below.  This caps a region at 1 TiB.
 */
#define FERRY_MMAP_SHIFT	40
#define FERRY_REGION_MAX_SIZE	(1ULL << FERRY_MMAP_SHIFT)

struct ferry_version {
	__u32 abi_version;	/* out: FERRY_ABI_VERSION */
	__u32 flags;		/* in: 0 */
	__u64 features;		/* out: FERRY_FEAT_* */
	__u64 max_regions;	/* out: per-session region limit in force */
	__u64 max_bytes;	/* out: per-session byte limit in force */
};

struct ferry_create {
	__s32 memfd;		/* in: memfd sealed with F_SEAL_SHRINK */
	__u32 flags;		/* in: 0 */
	__u64 size;		/* in: bytes from offset 0, 0 = whole file;
				 * out: the region's size */
	__u32 id;		/* out: region id, never 0 */
	__u32 pad;		/* in: 0 */
	__u64 mmap_offset;	/* out: mmap() offset of the region's start */
};

struct ferry_grant {
	__u32 id;		/* in: region owned by the caller */
	__s32 pidfd;		/* in: pidfd of the grantee process */
	__u32 rights;		/* in: FERRY_RIGHT_READ [| _WRITE] [| _PIN] */
	__u32 flags;		/* in: 0 */
};

struct ferry_revoke {
	__u32 id;		/* in: region owned by the caller */
	__s32 pidfd;		/* in: pidfd of the grantee process */
	__u32 flags;		/* in: 0 */
	__u32 pad;		/* in: 0 */
};

struct ferry_info {
	__u32 id;		/* in */
	__u32 flags;		/* in: 0 */
	__u64 size;		/* out */
	__u64 mmap_offset;	/* out */
	__u32 rights;		/* out: the caller's rights */
	__s32 owner_pid;	/* out: in the caller's pid namespace, 0 when
				 * the owner is not visible there or exited */
	__u32 nr_grants;	/* out: grants held by live processes */
	__u32 nr_maps;		/* out: live mappings of the region */
};

struct ferry_destroy {
	__u32 id;		/* in: region owned by the caller */
	__u32 flags;		/* in: 0 */
};

#define FERRY_IOC_MAGIC		0xF7
#define FERRY_IOC_VERSION	_IOWR(FERRY_IOC_MAGIC, 0x00, struct ferry_version)
#define FERRY_IOC_CREATE	_IOWR(FERRY_IOC_MAGIC, 0x01, struct ferry_create)
#define FERRY_IOC_GRANT		_IOW(FERRY_IOC_MAGIC, 0x02, struct ferry_grant)
#define FERRY_IOC_REVOKE	_IOW(FERRY_IOC_MAGIC, 0x03, struct ferry_revoke)
#define FERRY_IOC_INFO		_IOWR(FERRY_IOC_MAGIC, 0x04, struct ferry_info)
#define FERRY_IOC_DESTROY	_IOW(FERRY_IOC_MAGIC, 0x05, struct ferry_destroy)

#endif /* _UAPI_LINUX_FERRY_H */
