// SPDX-License-Identifier: GPL-2.0
/*
 * ferry_grant.c - grants: naming a process by pidfd, granting, revoking,
 * and forgetting grants whose process has exited.
 *
 * A grant holds a reference to the grantee's struct pid, never a pid
 * number, so a recycled number can never inherit someone else's rights.
 * Maps made under a grant hold a reference to it: revoking marks it
 * revoked and their next fault fails even if the process is granted again
 * later (it must map again).  A grant is also bound to the program the
 * grantee runs when it is made: an exec (setuid or not, after a privilege
 * drop or not) ends it, as an exit does, so a new program never inherits
 * rights to tensors.
 */
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/pid.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "ferry.h"

/* A referenced struct pid for @fd, or -EBADF when it is not a pidfd. */
static struct pid *ferry_pidfd_pid(int fd)
{
	struct pid *pid = NULL;
	struct file *f;

	if (fd < 0)
		return ERR_PTR(-EBADF);
	f = fget(fd);
	if (!f)
		return ERR_PTR(-EBADF);
	pid = ferry_pidfd_file_pid(f);
	if (pid)
		get_pid(pid);
	fput(f);
	return pid ? pid : ERR_PTR(-EBADF);
}

/*
 * Is the thread group led by @pid still running (not exited or reaped)?
 * If so, *exec_id is the program it runs (its leader's self_exec_id).
 */
static bool ferry_tgid_alive(struct pid *pid, u64 *exec_id)
{
	struct task_struct *task;
	bool alive;

	rcu_read_lock();
	task = pid_task(pid, PIDTYPE_TGID);
	alive = task && !(task->exit_state && thread_group_empty(task));
	if (alive)
		*exec_id = READ_ONCE(task->self_exec_id);
	rcu_read_unlock();
	return alive;
}

/* The grantee of @a still runs the program it was granted to. */
static bool ferry_access_current(struct ferry_access *a)
{
	u64 exec_id;

	return ferry_tgid_alive(a->pid, &exec_id) && exec_id == a->exec_id;
}

static void ferry_access_release(struct kref *ref)
{
	struct ferry_access *a = container_of(ref, struct ferry_access, ref);

	put_pid(a->pid);
	kmem_cache_free(ferry_access_cache, a);
}

void ferry_access_put(struct ferry_access *a)
{
	kref_put(&a->ref, ferry_access_release);
}

struct ferry_access *ferry_access_find_locked(struct ferry_region *r,
					      struct pid *tgid)
{
	struct ferry_access *a;

	list_for_each_entry(a, &r->grants, node)
		if (a->pid == tgid)
			return a;
	return NULL;
}

/* The caller's grant on @r, unless an exec since ended it. */
struct ferry_access *ferry_access_of_caller_locked(struct ferry_region *r)
{
	struct ferry_access *a = ferry_access_find_locked(r, task_tgid(current));

	if (a && READ_ONCE(current->self_exec_id) != a->exec_id)
		return NULL;
	return a;
}

/* Take @a off the region's list; its maps now fault SIGBUS. */
static void ferry_access_unlink_locked(struct ferry_region *r,
				       struct ferry_access *a)
{
	list_del(&a->node);
	r->nr_grants--;
	a->revoked = true;
}

/* Grants die with their process or program; returns the grants left. */
unsigned int ferry_region_prune_grants_locked(struct ferry_region *r)
{
	struct ferry_access *a, *tmp;

	list_for_each_entry_safe(a, tmp, &r->grants, node) {
		if (ferry_access_current(a))
			continue;
		ferry_access_unlink_locked(r, a);
		ferry_access_put(a);
	}
	return r->nr_grants;
}

/* The region is being freed: no map is left to use its grants. */
void ferry_region_drop_grants(struct ferry_region *r)
{
	struct ferry_access *a, *tmp;

	list_for_each_entry_safe(a, tmp, &r->grants, node) {
		ferry_access_unlink_locked(r, a);
		ferry_access_put(a);
	}
}

int ferry_region_grant(struct ferry_region *r, int pidfd, u32 rights)
{
	struct ferry_access *fresh = NULL, *a;
	struct pid *pid;
	bool zap = false;
	u64 exec_id;
	int ret = 0;

	if (!(rights & FERRY_RIGHT_READ) || (rights & ~FERRY_RIGHTS_ALL))
		return -EINVAL;
	pid = ferry_pidfd_pid(pidfd);
	if (IS_ERR(pid))
		return PTR_ERR(pid);
	if (pid == r->owner) {
		ret = -EINVAL;
		goto put_pid;
	}
	if (!ferry_tgid_alive(pid, &exec_id)) {
		ret = -ESRCH;
		goto put_pid;
	}
	fresh = kmem_cache_zalloc(ferry_access_cache, GFP_KERNEL);
	if (!fresh) {
		ret = -ENOMEM;
		goto put_pid;
	}

	down_write(&r->lock);
	ferry_region_prune_grants_locked(r);
	a = ferry_access_find_locked(r, pid);
	if (a) {
		/* Taking rights away must reach mappings made under them. */
		zap = a->rights & ~rights;
		a->rights = rights;
	} else if (r->nr_grants >= READ_ONCE(ferry_max_grants)) {
		ret = -ENOSPC;
	} else {
		kref_init(&fresh->ref);
		fresh->pid = pid;
		fresh->exec_id = exec_id;
		fresh->rights = rights;
		list_add_tail(&fresh->node, &r->grants);
		r->nr_grants++;
		fresh = NULL;
		pid = NULL;	/* the grant owns the reference now */
	}
	up_write(&r->lock);

	if (zap)
		ferry_region_zap(r);
	if (fresh)	/* unlike kfree(), this one takes no NULL */
		kmem_cache_free(ferry_access_cache, fresh);
put_pid:
	put_pid(pid);
	return ret;
}

int ferry_region_revoke(struct ferry_region *r, int pidfd)
{
	struct ferry_access *a;
	struct pid *pid;

	/* A pidfd of an exited process still names it: no liveness check. */
	pid = ferry_pidfd_pid(pidfd);
	if (IS_ERR(pid))
		return PTR_ERR(pid);

	down_write(&r->lock);
	a = ferry_access_find_locked(r, pid);
	if (a)
		ferry_access_unlink_locked(r, a);
	up_write(&r->lock);
	put_pid(pid);
	if (!a)
		return -ENOENT;

	ferry_region_zap(r);
	ferry_access_put(a);
	return 0;
}
