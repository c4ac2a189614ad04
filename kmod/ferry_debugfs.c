// SPDX-License-Identifier: GPL-2.0
/*
 * ferry_debugfs.c - a read-only view of sessions, regions and grants under
 * <debugfs>/ferry/, for operators (ferryctl) and for tests that must prove
 * something was freed.  Pids are shown as the initial pid namespace sees
 * them.  Values are read without the objects' own locks: a snapshot that
 * may be a moment stale, never a wrong pointer (the lists are walked under
 * ferry_global_lock, which every object holds its place on until freed).
 */
#include <linux/debugfs.h>
#include <linux/err.h>
#include <linux/pid.h>
#include <linux/seq_file.h>

#include "ferry.h"

static struct dentry *ferry_debugfs_dir;

static int ferry_stats_show(struct seq_file *m, void *unused)
{
	unsigned long sessions = 0, regions = 0, live = 0, maps = 0, grants = 0;
	struct ferry_session *s;
	struct ferry_region *r;
	u64 bytes = 0;

	mutex_lock(&ferry_global_lock);
	list_for_each_entry(s, &ferry_sessions, node)
		sessions++;
	list_for_each_entry(r, &ferry_all_regions, all_node) {
		regions++;
		live += READ_ONCE(r->live);
		bytes += r->size;
		maps += atomic_read(&r->nr_maps);
		grants += READ_ONCE(r->nr_grants);
	}
	mutex_unlock(&ferry_global_lock);

	seq_printf(m, "sessions %lu\nregions %lu\nlive_regions %lu\n",
		   sessions, regions, live);
	seq_printf(m, "bytes %llu\nmaps %lu\ngrants %lu\n", bytes, maps,
		   grants);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ferry_stats);

static int ferry_sessions_show(struct seq_file *m, void *unused)
{
	struct ferry_session *s;

	mutex_lock(&ferry_global_lock);
	list_for_each_entry(s, &ferry_sessions, node)
		seq_printf(m, "session %llu owner_pid %d regions %u bytes %llu%s\n",
			   s->serial, pid_nr(s->owner),
			   READ_ONCE(s->nr_regions), READ_ONCE(s->bytes),
			   READ_ONCE(s->closed) ? " closed" : "");
	mutex_unlock(&ferry_global_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ferry_sessions);

static int ferry_regions_show(struct seq_file *m, void *unused)
{
	struct ferry_region *r;

	mutex_lock(&ferry_global_lock);
	list_for_each_entry(r, &ferry_all_regions, all_node)
		seq_printf(m, "region %u size %llu owner_pid %d session %llu maps %d grants %u %s\n",
			   r->id, r->size, pid_nr(r->owner), r->session->serial,
			   atomic_read(&r->nr_maps), READ_ONCE(r->nr_grants),
			   READ_ONCE(r->live) ? "live" : "destroyed");
	mutex_unlock(&ferry_global_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ferry_regions);

static int ferry_grants_show(struct seq_file *m, void *unused)
{
	struct ferry_access *a;
	struct ferry_region *r;

	mutex_lock(&ferry_global_lock);
	list_for_each_entry(r, &ferry_all_regions, all_node) {
		/* The grant list itself changes only under the region lock. */
		down_read(&r->lock);
		list_for_each_entry(a, &r->grants, node)
			seq_printf(m, "grant region %u pid %d rights %s%s%s\n",
				   r->id, pid_nr(a->pid),
				   a->rights & FERRY_RIGHT_READ ? "r" : "",
				   a->rights & FERRY_RIGHT_WRITE ? "w" : "",
				   a->rights & FERRY_RIGHT_PIN ? "p" : "");
		up_read(&r->lock);
	}
	mutex_unlock(&ferry_global_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ferry_grants);

static int ferry_users_debugfs_show(struct seq_file *m, void *unused)
{
	ferry_users_show(m);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ferry_users_debugfs);

bool ferry_debugfs_init(void)
{
	struct dentry *dir = debugfs_create_dir(FERRY_DEVICE_NAME, NULL);

	if (IS_ERR_OR_NULL(dir))
		return false;
	debugfs_create_file("stats", 0444, dir, NULL, &ferry_stats_fops);
	debugfs_create_file("sessions", 0444, dir, NULL, &ferry_sessions_fops);
	debugfs_create_file("regions", 0444, dir, NULL, &ferry_regions_fops);
	debugfs_create_file("grants", 0444, dir, NULL, &ferry_grants_fops);
	debugfs_create_file("users", 0444, dir, NULL, &ferry_users_debugfs_fops);
	ferry_debugfs_dir = dir;
	return true;
}

void ferry_debugfs_exit(void)
{
	debugfs_remove_recursive(ferry_debugfs_dir);
	ferry_debugfs_dir = NULL;
}
