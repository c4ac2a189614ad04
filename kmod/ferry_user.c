// SPDX-License-Identifier: GPL-2.0
/*
 * ferry_user.c - what each user (real uid) holds across all its sessions:
 * sessions, regions and region bytes, each capped by a module parameter.
 *
 * Per-session limits alone bound nothing: sessions are free, so one user
 * opening many of them could fill the id space, the host's file table or
 * slab memory for everyone.  Every session charges its opener's user here
 * when it is opened and every region charges its session's user when it is
 * created; both are uncharged when the object is freed, not merely closed
 * or destroyed, because until then they still hold what they were charged
 * for.  The module's objects are also charged to the memory cgroup of the
 * task that allocates them (SLAB_ACCOUNT caches, __GFP_ACCOUNT).
 */
#include <linux/cred.h>
#include <linux/hashtable.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uidgid.h>

#include "ferry.h"

static DEFINE_HASHTABLE(ferry_users, 6);
/* The table and every counter of every ferry_user; a leaf lock. */
static DEFINE_SPINLOCK(ferry_users_lock);

static struct ferry_user *ferry_user_find_locked(kuid_t uid)
{
	struct ferry_user *u;

	hash_for_each_possible(ferry_users, u, node, __kuid_val(uid))
		if (uid_eq(u->uid, uid))
			return u;
	return NULL;
}

/* The last session of @u is gone: forget the user. */
static void ferry_user_drop_locked(struct ferry_user *u)
{
	if (u->nr_sessions || u->nr_regions)
		return;
	hash_del(&u->node);
	kfree(u);
}

int ferry_user_open_session(struct ferry_user **out)
{
	kuid_t uid = current_uid();
	struct ferry_user *u, *fresh;
	int ret = 0;

	fresh = kzalloc(sizeof(*fresh), GFP_KERNEL_ACCOUNT);
	if (!fresh)
		return -ENOMEM;
	spin_lock(&ferry_users_lock);
	u = ferry_user_find_locked(uid);
	if (!u) {
		u = fresh;
		fresh = NULL;
		u->uid = uid;
		hash_add(ferry_users, &u->node, __kuid_val(uid));
	}
	if (u->nr_sessions >= READ_ONCE(ferry_max_user_sessions)) {
		ret = -EMFILE;
		ferry_user_drop_locked(u);
	} else {
		u->nr_sessions++;
		*out = u;
	}
	spin_unlock(&ferry_users_lock);
	kfree(fresh);
	return ret;
}

void ferry_user_close_session(struct ferry_user *u)
{
	spin_lock(&ferry_users_lock);
	u->nr_sessions--;
	ferry_user_drop_locked(u);
	spin_unlock(&ferry_users_lock);
}

int ferry_user_charge_region(struct ferry_user *u, u64 size)
{
	u64 max_bytes = READ_ONCE(ferry_max_user_bytes);
	int ret = 0;

	spin_lock(&ferry_users_lock);
	if (u->nr_regions >= READ_ONCE(ferry_max_user_regions))
		ret = -ENOSPC;
	else if (u->bytes > max_bytes || size > max_bytes - u->bytes)
		ret = -EDQUOT;
	else {
		u->nr_regions++;
		u->bytes += size;
	}
	spin_unlock(&ferry_users_lock);
	return ret;
}

void ferry_user_uncharge_region(struct ferry_user *u, u64 size)
{
	spin_lock(&ferry_users_lock);
	u->nr_regions--;
	u->bytes -= size;
	spin_unlock(&ferry_users_lock);
}

void ferry_users_show(struct seq_file *m)
{
	struct ferry_user *u;
	int bkt;

	spin_lock(&ferry_users_lock);
	hash_for_each(ferry_users, bkt, u, node)
		seq_printf(m, "user %u sessions %u regions %u bytes %llu\n",
			   from_kuid_munged(&init_user_ns, u->uid),
			   u->nr_sessions, u->nr_regions, u->bytes);
	spin_unlock(&ferry_users_lock);
}
