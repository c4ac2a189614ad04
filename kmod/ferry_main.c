// SPDX-License-Identifier: GPL-2.0
/*
 * ferry_main.c - the /dev/ferry misc device: limits, sessions, the ioctl
 * switch, module init and exit.
 *
 * A session belongs to the thread group that opened the device, and to
 * the program it was running then.  Every ioctl and mmap checks the caller
 * against that owner, so an fd that leaked into another process (fork,
 * SCM_RIGHTS) or survived an exec is useless there: access is decided by
 * who calls, not by who holds the fd.
 */
#include <linux/atomic.h>
#include <linux/compat.h>
#include <linux/fdtable.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "ferry.h"

unsigned int ferry_max_regions = 65536;
module_param_named(max_regions, ferry_max_regions, uint, 0644);
MODULE_PARM_DESC(max_regions, "Regions one session may hold (default 65536)");

unsigned long long ferry_max_bytes = 64ULL << 30;
module_param_named(max_bytes, ferry_max_bytes, ullong, 0644);
MODULE_PARM_DESC(max_bytes, "Bytes of regions one session may hold (default 64 GiB)");

unsigned int ferry_max_grants = 1024;
module_param_named(max_grants, ferry_max_grants, uint, 0644);
MODULE_PARM_DESC(max_grants, "Grants one region may carry (default 1024)");

unsigned int ferry_max_user_sessions = 16384;
module_param_named(max_user_sessions, ferry_max_user_sessions, uint, 0644);
MODULE_PARM_DESC(max_user_sessions, "Sessions one uid may hold open (default 16384)");

unsigned int ferry_max_user_regions = 65536;
module_param_named(max_user_regions, ferry_max_user_regions, uint, 0644);
MODULE_PARM_DESC(max_user_regions, "Regions one uid may hold over all its sessions (default 65536)");

unsigned long long ferry_max_user_bytes = 1ULL << 40;
module_param_named(max_user_bytes, ferry_max_user_bytes, ullong, 0644);
MODULE_PARM_DESC(max_user_bytes, "Bytes of regions one uid may hold over all its sessions (default 1 TiB)");

DEFINE_MUTEX(ferry_global_lock);
LIST_HEAD(ferry_sessions);
LIST_HEAD(ferry_all_regions);
DEFINE_XARRAY_ALLOC1(ferry_regions);

struct kmem_cache *ferry_session_cache, *ferry_region_cache;
struct kmem_cache *ferry_access_cache, *ferry_map_cache;

/*
 * Charged to the allocating task's memory cgroup (SLAB_ACCOUNT): what a
 * user makes here counts against its own memory limit.  Unmerged, so the
 * caches keep their names and a leftover object is reported at unload.
 * Before 6.5 there is no such flag: SLUB may merge them into same-sized
 * caches unless a debug flag is set on them (as slub_debug=A,ferry_* does
 * for fault injection).
 */
#ifdef SLAB_NO_MERGE
#define FERRY_CACHE_FLAGS (SLAB_ACCOUNT | SLAB_NO_MERGE)
#else
#define FERRY_CACHE_FLAGS SLAB_ACCOUNT
#endif

static void ferry_caches_destroy(void)
{
	kmem_cache_destroy(ferry_map_cache);
	kmem_cache_destroy(ferry_access_cache);
	kmem_cache_destroy(ferry_region_cache);
	kmem_cache_destroy(ferry_session_cache);
}

static int ferry_caches_init(void)
{
	ferry_session_cache = KMEM_CACHE(ferry_session, FERRY_CACHE_FLAGS);
	ferry_region_cache = KMEM_CACHE(ferry_region, FERRY_CACHE_FLAGS);
	ferry_access_cache = KMEM_CACHE(ferry_access, FERRY_CACHE_FLAGS);
	ferry_map_cache = KMEM_CACHE(ferry_map, FERRY_CACHE_FLAGS);
	if (ferry_session_cache && ferry_region_cache && ferry_access_cache &&
	    ferry_map_cache)
		return 0;
	ferry_caches_destroy();
	return -ENOMEM;
}

static atomic64_t ferry_session_serial = ATOMIC64_INIT(0);
static bool ferry_have_debugfs;

bool ferry_caller_is(struct pid *tgid)
{
	return task_tgid(current) == tgid;
}

/*
 * The caller is @tgid and still runs the program it ran when @exec_id was
 * read: exec bumps self_exec_id, and every thread of a group carries the
 * same value (threads copy it at clone; exec leaves one thread).
 */
bool ferry_caller_is_image(struct pid *tgid, u64 exec_id)
{
	return ferry_caller_is(tgid) && READ_ONCE(current->self_exec_id) == exec_id;
}

static void ferry_session_release(struct kref *ref)
{
	struct ferry_session *s = container_of(ref, struct ferry_session, ref);

	mutex_lock(&ferry_global_lock);
	list_del(&s->node);
	mutex_unlock(&ferry_global_lock);
	ferry_user_close_session(s->user);
	put_pid(s->owner);
	kmem_cache_free(ferry_session_cache, s);
}

void ferry_session_put(struct ferry_session *s)
{
	kref_put(&s->ref, ferry_session_release);
}

static int ferry_open(struct inode *inode, struct file *file)
{
	struct ferry_session *s;
	int ret;

	s = kmem_cache_zalloc(ferry_session_cache, GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	ret = ferry_user_open_session(&s->user);	/* -EMFILE past the cap */
	if (ret) {
		kmem_cache_free(ferry_session_cache, s);
		return ret;
	}
	kref_init(&s->ref);
	s->owner = get_pid(task_tgid(current));
	s->owner_exec = READ_ONCE(current->self_exec_id);
	s->serial = atomic64_inc_return(&ferry_session_serial);
	mutex_init(&s->lock);
	INIT_LIST_HEAD(&s->regions);

	mutex_lock(&ferry_global_lock);
	list_add_tail(&s->node, &ferry_sessions);
	mutex_unlock(&ferry_global_lock);

	file->private_data = s;
	return 0;
}

static int ferry_same_file(const void *file, struct file *f, unsigned int fd)
{
	return f == file;
}

/* Whether some thread of the caller's group still has @file in its fd table. */
static bool ferry_group_holds(struct file *file)
{
	struct files_struct *seen = NULL;
	struct task_struct *t;
	bool held = false;

	rcu_read_lock();
	for_each_thread(current, t) {
		/* ->files goes NULL, under task_lock, as a thread exits. */
		task_lock(t);
		if (t->files && t->files != seen) {
			seen = t->files;	/* threads mostly share one table */
			held = iterate_fd(t->files, 0, ferry_same_file, file);
		}
		task_unlock(t);
		if (held)
			break;
	}
	rcu_read_unlock();
	return held;
}

/*
 * The owner let go of the session: its regions go, even when a copy of the
 * fd lives on in a child that inherited it (a copy that is useless there:
 * every verb checks the caller).  flush() runs on every close of every
 * copy, before release() and also when the process exits; the close being
 * flushed is already out of the fd table.  A thread with its own fd table
 * closing its copy is not the owner letting go while another thread still
 * holds one.
 */
static int ferry_flush(struct file *file, fl_owner_t id)
{
	struct ferry_session *s = file->private_data;

	if (ferry_caller_is(s->owner) && !ferry_group_holds(file))
		ferry_session_destroy_regions(s);
	return 0;
}

static int ferry_release(struct inode *inode, struct file *file)
{
	struct ferry_session *s = file->private_data;

	ferry_session_destroy_regions(s);
	ferry_session_put(s);
	return 0;
}

static int ferry_ioc_version(struct ferry_version *arg)
{
	if (arg->flags)
		return -EINVAL;
	arg->abi_version = FERRY_ABI_VERSION;
	arg->features = FERRY_FEAT_REGIONS | FERRY_FEAT_GRANTS |
			FERRY_FEAT_REVOKE_ZAP | FERRY_FEAT_PIN |
			FERRY_FEAT_USER_LIMITS | FERRY_FEAT_EXEC_ENDS |
			FERRY_FEAT_SEAL_WRITES;
	if (ferry_have_debugfs)
		arg->features |= FERRY_FEAT_DEBUGFS;
	arg->max_regions = READ_ONCE(ferry_max_regions);
	arg->max_bytes = READ_ONCE(ferry_max_bytes);
	return 0;
}

/* Look a region up for a verb only its owner may use. */
static int ferry_owned_region(u32 id, struct ferry_region **out)
{
	struct ferry_region *r = ferry_region_get(id);

	if (!r)
		return -ENOENT;
	if (!ferry_caller_owns(r)) {
		ferry_region_put(r);
		return -EPERM;
	}
	*out = r;
	return 0;
}

static int ferry_ioc_grant(const struct ferry_grant *arg)
{
	struct ferry_region *r;
	int ret;

	if (arg->flags)
		return -EINVAL;
	ret = ferry_owned_region(arg->id, &r);
	if (ret)
		return ret;
	ret = ferry_region_grant(r, arg->pidfd, arg->rights);
	ferry_region_put(r);
	return ret;
}

static int ferry_ioc_revoke(const struct ferry_revoke *arg)
{
	struct ferry_region *r;
	int ret;

	if (arg->flags || arg->pad)
		return -EINVAL;
	ret = ferry_owned_region(arg->id, &r);
	if (ret)
		return ret;
	ret = ferry_region_revoke(r, arg->pidfd);
	ferry_region_put(r);
	return ret;
}

static int ferry_ioc_destroy(const struct ferry_destroy *arg)
{
	struct ferry_region *r;
	int ret;

	if (arg->flags)
		return -EINVAL;
	ret = ferry_owned_region(arg->id, &r);
	if (ret)
		return ret;
	ret = ferry_region_destroy(r);
	ferry_region_put(r);
	return ret;
}

static int ferry_ioc_info(struct ferry_info *arg)
{
	struct ferry_region *r;
	int ret;

	if (arg->flags)
		return -EINVAL;
	r = ferry_region_get(arg->id);
	if (!r)
		return -ENOENT;
	ret = ferry_region_info(r, arg);
	ferry_region_put(r);
	return ret;
}

static long ferry_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct ferry_session *s = file->private_data;
	void __user *uptr = (void __user *)uarg;
	union {
		struct ferry_version version;
		struct ferry_create create;
		struct ferry_grant grant;
		struct ferry_revoke revoke;
		struct ferry_info info;
		struct ferry_destroy destroy;
	} arg;
	unsigned int size = _IOC_SIZE(cmd);
	long ret;

	switch (cmd) {
	case FERRY_IOC_VERSION:
	case FERRY_IOC_CREATE:
	case FERRY_IOC_GRANT:
	case FERRY_IOC_REVOKE:
	case FERRY_IOC_INFO:
	case FERRY_IOC_DESTROY:
		break;
	default:
		return -ENOTTY;
	}
	if (!ferry_caller_is_image(s->owner, s->owner_exec))
		return -EPERM;
	if (copy_from_user(&arg, uptr, size))
		return -EFAULT;

	switch (cmd) {
	case FERRY_IOC_VERSION:
		ret = ferry_ioc_version(&arg.version);
		break;
	case FERRY_IOC_CREATE:
		ret = ferry_region_create(s, &arg.create);
		break;
	case FERRY_IOC_GRANT:
		ret = ferry_ioc_grant(&arg.grant);
		break;
	case FERRY_IOC_REVOKE:
		ret = ferry_ioc_revoke(&arg.revoke);
		break;
	case FERRY_IOC_INFO:
		ret = ferry_ioc_info(&arg.info);
		break;
	default:
		ret = ferry_ioc_destroy(&arg.destroy);
		break;
	}
	if (ret)
		return ret;

	if ((_IOC_DIR(cmd) & _IOC_READ) && copy_to_user(uptr, &arg, size)) {
		/*
		 * The region exists but the caller cannot learn its id; do
		 * not leave it charged to the session behind its back.
		 */
		if (cmd == FERRY_IOC_CREATE) {
			struct ferry_region *r = ferry_region_get(arg.create.id);

			if (r) {
				ferry_region_destroy(r);
				ferry_region_put(r);
			}
		}
		return -EFAULT;
	}
	return 0;
}

static int ferry_mmap_checked(struct file *file, struct vm_area_struct *vma)
{
	struct ferry_session *s = file->private_data;

	if (!ferry_caller_is_image(s->owner, s->owner_exec))
		return -EPERM;
	return ferry_mmap(file, vma);
}

static const struct file_operations ferry_fops = {
	.owner		= THIS_MODULE,
	.open		= ferry_open,
	.flush		= ferry_flush,
	.release	= ferry_release,
	.unlocked_ioctl	= ferry_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.mmap		= ferry_mmap_checked,
	.llseek		= noop_llseek,
};

static struct miscdevice ferry_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= FERRY_DEVICE_NAME,
	.fops	= &ferry_fops,
	.mode	= 0660,
};

static int __init ferry_init(void)
{
	int ret;

	ret = ferry_caches_init();
	if (ret)
		return ret;
	ferry_have_debugfs = ferry_debugfs_init();
	ret = misc_register(&ferry_misc);
	if (ret) {
		ferry_debugfs_exit();
		ferry_caches_destroy();
		return ret;
	}
	return 0;
}

static void __exit ferry_exit(void)
{
	misc_deregister(&ferry_misc);
	ferry_debugfs_exit();
	/* Every session and map held a module reference: all are gone. */
	WARN_ON(!xa_empty(&ferry_regions));
	xa_destroy(&ferry_regions);
	/*
	 * An object still allocated here makes SLUB complain: the VM tests
	 * fail on that.
	 */
	ferry_caches_destroy();
}

module_init(ferry_init);
module_exit(ferry_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ferry: sealed-memfd regions mapped by the processes granted them");
MODULE_AUTHOR("ferry developers");
MODULE_VERSION("1");
