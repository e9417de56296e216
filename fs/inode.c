/*
 * inode.c - changes to an object's attributes and xattrs.
 *
 * A change to a lower object copies it up first, then changes the upper
 * copy: with metacopy=on, its metadata only unless the change is to its
 * size (copyup.c, "Metadata-only copies").
 *
 * An orphan (a removed name the kernel still holds) is changed through
 * its O_PATH fd; a removed lower object cannot be copied up any more.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "layerfs_i.h"

/* Where to apply a change: (dir_fd, path) beneath the upper root, or an
 * orphan's /proc path (followed). */
struct target {
	int dir_fd;
	char path[PATH_MAX];
	int nofollow;     /* AT_SYMLINK_NOFOLLOW unless through /proc */
};

static int upper_target(struct lfs_fs *fs, struct lfs_node *node,
			struct target *t)
{
	if (node->is_orphan) {
		if (node->layer != 0 || node->orphan_fd < 0)
			return -ESTALE;
		t->dir_fd = AT_FDCWD;
		t->nofollow = 0;
		return lfs_proc_path(t->path, node->orphan_fd, "");
	}
	if (node->layer != 0)
		return -ESTALE;    /* a copy-up did not happen */
	t->dir_fd = fs->upper.root_fd;
	t->nofollow = AT_SYMLINK_NOFOLLOW;
	return lfs_node_path(node, t->path, sizeof(t->path));
}

/* Copy node up for a change: its data too only if the change is to the
 * data (a size), else its metadata alone where the mount allows it. */
static int copy_up_for_change(struct lfs_fs *fs, struct lfs_node *node,
			      bool data_change, bool with_data)
{
	if (!fs->writable)
		return -EROFS;
	/* An orphan is changed where it is (upper), or first becomes a
	 * nameless upper copy (a lower file; others: ESTALE below). */
	if (node->is_orphan)
		return node->type == DT_REG ? lfs_copy_up_orphan(fs, node) : 0;
	return data_change ? lfs_copy_up(fs, node, with_data)
			   : lfs_copy_up_meta(fs, node);
}

static int set_size(const struct target *t, off_t size, int fd)
{
	int own = -1, r = 0;

	if (fd < 0) {
		own = openat(t->dir_fd, t->path, O_WRONLY | O_CLOEXEC |
				(t->nofollow ? O_NOFOLLOW : 0));
		if (own < 0)
			return -errno;
		fd = own;
	}
	if (ftruncate(fd, size) < 0)
		r = -errno;
	if (own >= 0)
		close(own);
	return r;
}

static struct timespec time_arg(unsigned to_set, unsigned set_bit,
				unsigned now_bit, struct timespec value)
{
	if (to_set & now_bit)
		return (struct timespec){ .tv_nsec = UTIME_NOW };
	if (to_set & set_bit)
		return value;
	return (struct timespec){ .tv_nsec = UTIME_OMIT };
}

/* xattr_permissions: owner and mode go to the override xattr, starting
 * from what it (or the object) says now. */
static int override_attrs(const struct lfs_owner_policy *p,
			  const struct target *t, const struct stat *attr,
			  unsigned to_set)
{
	char path[PATH_MAX];
	bool follow = t->dir_fd == AT_FDCWD;
	struct stat st;
	int r;

	if (follow)
		snprintf(path, sizeof(path), "%s", t->path);
	else if ((r = lfs_proc_path(path, t->dir_fd, t->path)) < 0)
		return r;
	if ((follow ? stat(path, &st) : lstat(path, &st)) < 0)
		return -errno;
	lfs_owner_read_override(p, path, follow, &st);
	if (to_set & LFS_SET_UID)
		st.st_uid = attr->st_uid;
	if (to_set & LFS_SET_GID)
		st.st_gid = attr->st_gid;
	if (to_set & LFS_SET_MODE)
		st.st_mode = attr->st_mode;
	return lfs_owner_write_override(p, path, follow, st.st_uid, st.st_gid,
					st.st_mode);
}

static int apply_attrs(const struct lfs_owner_policy *owner,
		       const struct target *t, const struct stat *attr,
		       unsigned to_set, int fd, bool is_link)
{
	const unsigned perms = LFS_SET_UID | LFS_SET_GID | LFS_SET_MODE;

	if (owner && owner->override_xattr && (to_set & perms) && !is_link) {
		int r = override_attrs(owner, t, attr, to_set);
		if (r < 0)
			return r;
		to_set &= ~perms;
	}
	if (to_set & (LFS_SET_UID | LFS_SET_GID)) {
		uid_t uid = (to_set & LFS_SET_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (to_set & LFS_SET_GID) ? attr->st_gid : (gid_t)-1;
		int r = owner ? lfs_owner_to_disk(owner, &uid, &gid) : 0;
		if (r < 0)
			return r;
		if (fchownat(t->dir_fd, t->path, uid, gid, t->nofollow) < 0)
			return -errno;
	}
	if (to_set & LFS_SET_MODE) {
		if (is_link)
			return -EOPNOTSUPP;
		if (fchmodat(t->dir_fd, t->path, attr->st_mode & 07777, 0) < 0)
			return -errno;
	}
	if (to_set & LFS_SET_SIZE) {
		int r = set_size(t, attr->st_size, fd);
		if (r < 0)
			return r;
	}
	if (to_set & (LFS_SET_ATIME | LFS_SET_MTIME | LFS_SET_ATIME_NOW |
		      LFS_SET_MTIME_NOW)) {
		struct timespec times[2] = {
			time_arg(to_set, LFS_SET_ATIME, LFS_SET_ATIME_NOW,
				 attr->st_atim),
			time_arg(to_set, LFS_SET_MTIME, LFS_SET_MTIME_NOW,
				 attr->st_mtim),
		};
		if (utimensat(t->dir_fd, t->path, times, t->nofollow) < 0)
			return -errno;
	}
	return 0;
}

int lfs_setattr(struct lfs_fs *fs, struct lfs_node *node,
		const struct stat *attr, unsigned to_set, int fd,
		struct stat *ret_st)
{
	bool truncates = (to_set & LFS_SET_SIZE) && attr->st_size == 0;
	struct target t;
	int r;

	if ((to_set & LFS_SET_SIZE) && node->type == DT_DIR)
		return -EISDIR;
	r = copy_up_for_change(fs, node, to_set & LFS_SET_SIZE, !truncates);
	if (r < 0)
		return r;
	lfs_ns_rdlock(fs);
	r = upper_target(fs, node, &t);
	if (r == 0)
		r = apply_attrs(fs->config.owner, &t, attr, to_set, fd,
				node->type == DT_LNK);
	if (r == 0)
		r = lfs_getattr_locked(fs, node, ret_st);
	lfs_ns_unlock(fs);
	return r;
}

static int xattr_change(struct lfs_fs *fs, struct lfs_node *node,
			const char *name, const void *value, size_t size,
			int flags, bool remove)
{
	char path[PATH_MAX];
	struct target t;
	int r;

	if (lfs_xattr_is_private(name) || fs->config.noxattrs ||
	    (fs->config.noacl && lfs_xattr_is_acl(name)))
		return -EOPNOTSUPP;
	r = copy_up_for_change(fs, node, false, true);
	if (r < 0)
		return r;
	lfs_ns_rdlock(fs);
	r = upper_target(fs, node, &t);
	if (r == 0 && t.dir_fd != AT_FDCWD)
		r = lfs_proc_path(path, t.dir_fd, t.path);
	else if (r == 0)
		snprintf(path, sizeof(path), "%s", t.path);
	if (r == 0) {
		/* An orphan's /proc/self/fd link must be followed; a path
		 * beneath the upper root must not. */
		bool follow = t.dir_fd == AT_FDCWD;
		int res = remove ? (follow ? removexattr(path, name)
					   : lremovexattr(path, name))
				 : (follow ? setxattr(path, name, value, size, flags)
					   : lsetxattr(path, name, value, size,
						       flags));
		r = res < 0 ? -errno : 0;
	}
	lfs_ns_unlock(fs);
	return r;
}

int lfs_setxattr(struct lfs_fs *fs, struct lfs_node *node, const char *name,
		 const void *value, size_t size, int flags)
{
	return xattr_change(fs, node, name, value, size, flags, false);
}

int lfs_removexattr(struct lfs_fs *fs, struct lfs_node *node,
		    const char *name)
{
	/* Removing what the object does not have needs no copy-up. */
	ssize_t len = lfs_getxattr(fs, node, name, NULL, 0);

	if (len < 0)
		return (int)len;
	return xattr_change(fs, node, name, NULL, 0, 0, true);
}

int lfs_fsyncdir(struct lfs_fs *fs, struct lfs_node *node, bool datasync)
{
	char path[PATH_MAX];
	int fd, r;

	if (!fs->writable)
		return 0;
	lfs_ns_rdlock(fs);
	r = node->layer != 0 || node->is_orphan
		    ? 1 : lfs_node_path(node, path, sizeof(path));
	lfs_ns_unlock(fs);
	if (r != 0)
		return r < 0 ? r : 0;    /* nothing of ours to sync */
	fd = openat(fs->upper.root_fd, path,
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	close(fd);
	return r;
}
