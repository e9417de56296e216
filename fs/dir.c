/*
 * dir.c - changes to names: create, mkdir, mknod, symlink, link, unlink,
 * rmdir, rename.  Every change lands in the upper layer (layer 0) and in
 * the directory index, in place: no change reads a lower layer again.
 *
 * The rules (README.md, "Writing"), as kernel overlayfs has them:
 *   - a name is created in the upper copy of its directory, which is
 *     copied up first; over an upper whiteout, the new object replaces
 *     the whiteout in one rename, and a new directory there is opaque;
 *   - a removed name that a lower layer would show again gets a
 *     whiteout; one that only the upper had is simply removed;
 *   - a directory is renamed once its whole merged tree is in its upper
 *     copy (copyup.c), and it is marked opaque where the target name has
 *     lower history, so nothing below merges into it at its new place.
 * Every function holds fs->ns_lock for writing while it changes the tree;
 * copy-ups run before, without it (see copyup.c for the lock order).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "layerfs_i.h"

/* One directory being changed: its index and its upper copy. */
struct dir_op {
	struct lfs_node *dir;
	struct lfs_dirindex *index;
	int upper_fd;             /* O_PATH on the upper copy of dir */
	bool own_fd;              /* upper_fd is ours to close (else dir's) */
};

/* The directory's index: enough to check a change before making it. */
static int dir_op_look(struct lfs_fs *fs, struct lfs_node *dir,
		       struct dir_op *op)
{
	op->upper_fd = -1;
	op->own_fd = false;
	op->dir = dir;
	if (dir->type != DT_DIR)
		return -ENOTDIR;
	if (dir->is_orphan)
		return -ENOENT;
	return lfs_node_index(fs, dir, &op->index);
}

/*
 * ... and its upper copy, made now, to change it.  A directory node keeps
 * an O_PATH fd on its upper copy (in data_fd, unused by directories
 * otherwise, within the same budget of fds), so that a burst of creates
 * does not walk the path from the upper root each time; the fd follows
 * the directory through renames.
 */
static int dir_op_upper(struct lfs_fs *fs, struct dir_op *op)
{
	char path[PATH_MAX];
	int r = lfs_copy_up_dir_locked(fs, op->dir);
	int fd, expected = -1;

	if (r < 0)
		return r;
	fd = atomic_load(&op->dir->data_fd);
	if (fd >= 0) {
		op->upper_fd = fd;
		op->own_fd = false;
		return 0;
	}
	r = lfs_node_path(op->dir, path, sizeof(path));
	if (r == 0)
		r = fd = lfs_upper_open_dir(&fs->upper, path);
	if (r < 0)
		return r;
	op->upper_fd = fd;
	op->own_fd = true;
	if (atomic_fetch_add(&fs->n_data_fds, 1) < fs->config.max_data_fds &&
	    atomic_compare_exchange_strong(&op->dir->data_fd, &expected, fd)) {
		op->own_fd = false;    /* the node's now */
		return 0;
	}
	atomic_fetch_sub(&fs->n_data_fds, 1);
	return 0;
}

static void dir_op_end(struct dir_op *op)
{
	if (op->upper_fd >= 0 && op->own_fd)
		close(op->upper_fd);
	op->upper_fd = -1;
}

static int check_new_name(const char *name)
{
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	/* ".wh." names are the whiteout format itself: never shown. */
	if (lfs_whiteout_is_reserved_name(name))
		return -EINVAL;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Creating                                                            */

enum make_kind { MAKE_FILE, MAKE_NODE, MAKE_DIR, MAKE_SYMLINK, MAKE_LINK };

struct make_args {
	enum make_kind kind;
	mode_t mode;
	dev_t rdev;
	int flags;                /* MAKE_FILE: open flags */
	const char *target;       /* MAKE_SYMLINK */
	const char *link_path;    /* MAKE_LINK: upper relpath of the source */
	const struct lfs_cred *cred;  /* owner; NULL for links */
	uid_t daemon_uid;             /* what objects get without a chown */
	gid_t daemon_gid;
	/* xattr_permissions: the owner and mode go into an xattr */
	const struct lfs_owner_policy *override;
};

/* Make the object at dir_fd/name; MAKE_FILE returns its open fd. */
static int make_object(struct lfs_fs *fs, int dir_fd, const char *name,
		       const struct make_args *a)
{
	int fd;

	switch (a->kind) {
	case MAKE_FILE:
		fd = openat(dir_fd, name,
			    (a->flags & (O_ACCMODE | O_DIRECT | O_NOATIME |
					 O_SYNC | O_DSYNC | O_NONBLOCK)) |
				    O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    a->mode & 07777);
		return fd < 0 ? -errno : fd;
	case MAKE_NODE:
		return mknodat(dir_fd, name, a->mode, a->rdev) < 0 ? -errno : 0;
	case MAKE_DIR:
		return mkdirat(dir_fd, name, a->mode & 07777) < 0 ? -errno : 0;
	case MAKE_SYMLINK:
		return symlinkat(a->target, dir_fd, name) < 0 ? -errno : 0;
	case MAKE_LINK:
		return linkat(fs->upper.root_fd, a->link_path, dir_fd, name, 0) < 0
			       ? -errno : 0;
	}
	return -EINVAL;
}

/* Whether objects made for cred need a chown: not when the daemon's own
 * ids are the caller's (root making files for root). */
static bool needs_owner(const struct make_args *a)
{
	return a->cred && (a->override || a->cred->uid != a->daemon_uid ||
			   a->cred->gid != a->daemon_gid);
}

/* Give a new object to the caller, as the kernel would have created it:
 * the group stays the directory's where it is set-group-ID.  With
 * xattr_permissions the owner and the mode asked for are recorded in the
 * override xattr (symlinks have none: they show the daemon's ids). */
static int give_owner(int dir_fd, const char *name, const struct make_args *a,
		      const struct stat *dir_st)
{
	if (!needs_owner(a))
		return 0;
	gid_t gid = (dir_st->st_mode & S_ISGID) ? (gid_t)-1 : a->cred->gid;
	if (a->override) {
		char path[PATH_MAX];
		if (a->kind == MAKE_SYMLINK || a->kind == MAKE_LINK)
			return 0;
		if (gid == (gid_t)-1)
			gid = dir_st->st_gid;
		int r = lfs_proc_path(path, dir_fd, name);
		return r < 0 ? r : lfs_owner_write_override(a->override, path,
							    false, a->cred->uid,
							    gid, a->mode);
	}
	if (fchownat(dir_fd, name, a->cred->uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

/* Make name in op's upper directory, replacing the upper whiteout e may
 * have; returns an fd for MAKE_FILE, else 0. */
static int place_object(struct lfs_fs *fs, struct dir_op *op,
			const char *name, struct lfs_entry *e,
			const struct make_args *a)
{
	struct lfs_upper *u = &fs->upper;
	bool over_whiteout = e && e->upper_whiteout;
	struct stat dir_st = { 0 };
	char tmp[32];
	int fd, r;

	if (needs_owner(a) &&
	    fstatat(op->upper_fd, "", &dir_st, AT_EMPTY_PATH) < 0)
		return -errno;
	if (!over_whiteout || !u->whiteout_chardev) {
		/* In place; an OCI ".wh.name" goes after the object is there
		 * (both in one layer: the object shows, lower ones do not). */
		fd = make_object(fs, op->upper_fd, name, a);
		if (fd == -EEXIST && over_whiteout) {
			/* A char device whiteout from an earlier writer. */
			unlinkat(op->upper_fd, name, 0);
			fd = make_object(fs, op->upper_fd, name, a);
		}
		if (fd < 0)
			return fd;
		r = give_owner(op->upper_fd, name, a, &dir_st);
		if (r == 0 && over_whiteout && a->kind == MAKE_DIR) {
			int dfd = openat(op->upper_fd, name,
					 O_PATH | O_DIRECTORY | O_NOFOLLOW |
						 O_CLOEXEC);
			r = dfd < 0 ? -errno : lfs_whiteout_mark_opaque(u, dfd);
			if (dfd >= 0)
				close(dfd);
			if (r == 0)
				lfs_count(fs, LFS_C_OPAQUES, 1);
		}
		if (r == 0 && over_whiteout)
			r = lfs_whiteout_remove_oci(op->upper_fd, name);
		if (r < 0) {
			if (a->kind == MAKE_FILE)
				close(fd);
			unlinkat(op->upper_fd, name,
				 a->kind == MAKE_DIR ? AT_REMOVEDIR : 0);
			return r;
		}
		return fd;
	}
	/* Over a char device whiteout: built aside, then swapped in. */
	lfs_upper_tmpname(u, tmp);
	fd = make_object(fs, u->work_fd, tmp, a);
	if (fd < 0)
		return fd;
	r = give_owner(u->work_fd, tmp, a, &dir_st);
	if (r == 0 && a->kind == MAKE_DIR) {
		int dfd = openat(u->work_fd, tmp, O_PATH | O_DIRECTORY |
							  O_NOFOLLOW | O_CLOEXEC);
		r = dfd < 0 ? -errno : lfs_whiteout_mark_opaque(u, dfd);
		if (dfd >= 0)
			close(dfd);
		if (r == 0)
			lfs_count(fs, LFS_C_OPAQUES, 1);
	}
	if (r == 0 && a->kind == MAKE_DIR) {
		/* A directory cannot replace a file: exchange, then drop the
		 * whiteout that lands in the work directory. */
		if (renameat2(u->work_fd, tmp, op->upper_fd, name,
			      RENAME_EXCHANGE) == 0)
			unlinkat(u->work_fd, tmp, 0);
		else if (errno != ENOENT ||
			 renameat(u->work_fd, tmp, op->upper_fd, name) < 0)
			r = -errno;
	} else if (r == 0) {
		if (renameat(u->work_fd, tmp, op->upper_fd, name) < 0)
			r = -errno;
	}
	if (r == 0)
		r = lfs_whiteout_remove_oci(op->upper_fd, name);
	if (r < 0) {
		if (fd > 0)
			close(fd);
		lfs_upper_remove_tree(u->work_fd, tmp);
		return r;
	}
	return fd;
}

/* The index and a node for the object just placed at op/name. */
static int show_created(struct lfs_fs *fs, struct dir_op *op,
			const char *name, int fd, uint64_t keep_ino,
			struct lfs_node **ret_node, struct stat *ret_st)
{
	struct lfs_entry *e;
	struct lfs_node *node;
	struct stat st;
	int r;

	if ((fd >= 0 ? fstat(fd, &st)
		     : fstatat(op->upper_fd, name, &st, AT_SYMLINK_NOFOLLOW)) < 0)
		return -errno;
	r = lfs_dirindex_put_upper(op->index, name, IFTODT(st.st_mode),
				   st.st_ino, &e);
	if (r < 0)
		return r;
	e->ino_override = keep_ino;
	r = lfs_node_child(fs, op->dir, e, &node);
	if (r < 0)
		return r;
	st.st_ino = node->ino;
	lfs_present_stat(fs, op->upper_fd, name, &st);
	*ret_node = node;
	*ret_st = st;
	return 0;
}

/* Create name in parent; returns the fd of MAKE_FILE, else 0. */
static int create_common(struct lfs_fs *fs, struct lfs_node *parent,
			 const char *name, const struct make_args *a,
			 uint64_t keep_ino, struct lfs_node **ret_node,
			 struct stat *ret_st)
{
	struct dir_op op;
	struct lfs_entry *e;
	int fd, r;

	if (!fs->writable)
		return -EROFS;
	r = check_new_name(name);
	if (r < 0)
		return r;
	struct make_args args = *a;
	struct lfs_cred disk_cred;
	args.daemon_uid = fs->upper.uid;
	args.daemon_gid = fs->upper.gid;
	if (a->cred && fs->config.owner) {
		/* The caller's ids as they go to disk. */
		disk_cred = *a->cred;
		/* A creator no map covers gets the daemon's own ids, as
		 * the kernel gives an unmapped creator the overflow id. */
		if (lfs_owner_to_disk(fs->config.owner, &disk_cred.uid,
				      &disk_cred.gid) < 0) {
			disk_cred.uid = fs->upper.uid;
			disk_cred.gid = fs->upper.gid;
		}
		args.cred = &disk_cred;
		args.override = fs->config.owner->override_xattr ? fs->config.owner
								 : NULL;
	}
	a = &args;
	lfs_ns_wrlock(fs);
	r = dir_op_look(fs, parent, &op);
	if (r < 0)
		goto out;
	e = lfs_dirindex_find(op.index, name);
	if (e && !e->is_whiteout) {
		r = -EEXIST;
		goto out;
	}
	r = dir_op_upper(fs, &op);
	if (r < 0)
		goto out;
	fd = r = place_object(fs, &op, name, e, a);
	if (r < 0)
		goto out;
	r = show_created(fs, &op, name, a->kind == MAKE_FILE ? fd : -1,
			 keep_ino, ret_node, ret_st);
	if (r < 0) {
		/* On disk but not in the index: only ENOMEM gets here, and
		 * the next mount shows the object. */
		if (a->kind == MAKE_FILE)
			close(fd);
		goto out;
	}
	r = fd;
out:
	dir_op_end(&op);
	lfs_ns_unlock(fs);
	return r;
}

int lfs_create(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       mode_t mode, int flags, const struct lfs_cred *cred,
	       struct lfs_node **ret_node, struct stat *ret_st)
{
	struct make_args a = { .kind = MAKE_FILE, .mode = mode,
			       .flags = flags, .cred = cred };
	int r = create_common(fs, parent, name, &a, 0, ret_node, ret_st);

	if (r != -EEXIST || (flags & O_EXCL))
		return r;
	/* Created by someone else since the kernel looked: open it. */
	struct lfs_node *node;
	struct stat st;
	r = lfs_lookup(fs, parent, name, &node, &st);
	if (r < 0)
		return r;
	int fd = lfs_open(fs, node, flags & ~(O_CREAT | O_EXCL));
	if (fd < 0) {
		lfs_node_unref(fs, node, 1);
		return fd;
	}
	r = lfs_getattr(fs, node, ret_st);
	if (r < 0) {
		close(fd);
		lfs_node_unref(fs, node, 1);
		return r;
	}
	*ret_node = node;
	return fd;
}

int lfs_mknod(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	      mode_t mode, dev_t rdev, const struct lfs_cred *cred,
	      struct lfs_node **ret_node, struct stat *ret_st)
{
	struct make_args a = { .kind = MAKE_NODE, .mode = mode, .rdev = rdev,
			       .cred = cred };

	if (S_ISDIR(mode))
		return -EINVAL;
	/* A char device 0/0 is a whiteout on disk: it could never be seen
	 * again (kernel overlayfs refuses it too). */
	if (S_ISCHR(mode) && rdev == 0)
		return -EPERM;
	if (S_ISREG(mode) || (mode & S_IFMT) == 0)
		a.mode = (mode & 07777) | S_IFREG;
	return create_common(fs, parent, name, &a, 0, ret_node, ret_st);
}

int lfs_mkdir(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	      mode_t mode, const struct lfs_cred *cred,
	      struct lfs_node **ret_node, struct stat *ret_st)
{
	struct make_args a = { .kind = MAKE_DIR, .mode = mode, .cred = cred };

	return create_common(fs, parent, name, &a, 0, ret_node, ret_st);
}

int lfs_symlink(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
		const char *target, const struct lfs_cred *cred,
		struct lfs_node **ret_node, struct stat *ret_st)
{
	struct make_args a = { .kind = MAKE_SYMLINK, .target = target,
			       .cred = cred };

	return create_common(fs, parent, name, &a, 0, ret_node, ret_st);
}

int lfs_link(struct lfs_fs *fs, struct lfs_node *node,
	     struct lfs_node *newparent, const char *newname,
	     struct lfs_node **ret_node, struct stat *ret_st)
{
	char path[PATH_MAX];
	int r;

	if (!fs->writable)
		return -EROFS;
	if (node->type == DT_DIR)
		return -EPERM;
	r = lfs_copy_up(fs, node, true);
	if (r < 0)
		return r;
	lfs_ns_rdlock(fs);
	r = node->is_orphan ? -ENOENT : lfs_node_path(node, path, sizeof(path));
	lfs_ns_unlock(fs);
	if (r < 0)
		return r;
	/* The source keeps its path: the kernel holds it locked. */
	struct make_args a = { .kind = MAKE_LINK, .link_path = path };
	struct lfs_node *child;
	struct stat st;
	r = create_common(fs, newparent, newname, &a, node->ino, &child, &st);
	if (r < 0)
		return r;
	/* The kernel gets the source's node back, so that it sees one inode
	 * with two names, as a hard link is: its link count and its cached
	 * pages stay one.  The new name's own node goes. */
	lfs_node_unref(fs, child, 1);
	r = lfs_getattr(fs, node, &st);
	if (r < 0)
		return r;
	lfs_node_ref(fs, node);
	*ret_node = node;
	*ret_st = st;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Removing                                                            */

/* Is the merged directory of entry e (in dir) empty? */
static int merged_dir_is_empty(struct lfs_fs *fs, struct lfs_node *dir,
			       struct lfs_entry *e)
{
	struct lfs_dirindex *index;
	char path[PATH_MAX];
	int r;

	if (e->node) {
		r = lfs_node_index(fs, e->node, &index);
		return r < 0 ? r : lfs_dirindex_is_empty(index);
	}
	r = lfs_node_path(dir, path, sizeof(path));
	if (r < 0)
		return r;
	size_t len = strlen(path);
	if (strcmp(path, ".") == 0)
		len = 0, path[0] = '\0';
	if (len + 1 + strlen(e->name) >= sizeof(path))
		return -ENAMETOOLONG;
	snprintf(path + len, sizeof(path) - len, "%s%s", len ? "/" : "",
		 e->name);
	r = lfs_dirindex_build(fs, path, &e->dir_layers, false, &index);
	if (r < 0)
		return r;
	r = lfs_dirindex_is_empty(index);
	lfs_dirindex_free(index);
	return r;
}

/* Take the upper object dir_fd/name away for good: a directory (holding
 * only whiteouts) is moved to the work directory first, so it vanishes
 * at once. */
static int remove_upper(struct lfs_fs *fs, int dir_fd, const char *name,
			bool is_dir)
{
	char tmp[32];

	if (!is_dir)
		return unlinkat(dir_fd, name, 0) < 0 ? -errno : 0;
	lfs_upper_tmpname(&fs->upper, tmp);
	if (renameat(dir_fd, name, fs->upper.work_fd, tmp) < 0)
		return -errno;
	lfs_upper_remove_tree(fs->upper.work_fd, tmp);
	return 0;
}

/* Replace the upper object dir_fd/name by a whiteout, in one step where
 * the format allows it. */
static int replace_with_whiteout(struct lfs_fs *fs, int dir_fd,
				 const char *name, bool is_dir)
{
	struct lfs_upper *u = &fs->upper;
	char tmp[32];
	int r;

	if (!u->whiteout_chardev) {
		r = lfs_whiteout_write(u, dir_fd, name);
		return r < 0 ? r : remove_upper(fs, dir_fd, name, is_dir);
	}
	lfs_upper_tmpname(u, tmp);
	r = lfs_whiteout_write_tmp(u, tmp);
	if (r < 0)
		return r;
	if (is_dir) {
		if (renameat2(u->work_fd, tmp, dir_fd, name, RENAME_EXCHANGE) < 0) {
			r = -errno;
			unlinkat(u->work_fd, tmp, 0);
			return r;
		}
		lfs_upper_remove_tree(u->work_fd, tmp);
		return 0;
	}
	if (renameat(u->work_fd, tmp, dir_fd, name) < 0) {
		r = -errno;
		unlinkat(u->work_fd, tmp, 0);
		return r;
	}
	return 0;
}

static int remove_name(struct lfs_fs *fs, struct lfs_node *parent,
		       const char *name, bool is_dir)
{
	struct dir_op op = { .upper_fd = -1, .own_fd = false };
	struct lfs_entry *e;
	int r;

	if (!fs->writable)
		return -EROFS;
	if (lfs_whiteout_is_reserved_name(name))
		return -ENOENT;
	lfs_ns_wrlock(fs);
	r = dir_op_look(fs, parent, &op);
	if (r < 0)
		goto out;
	e = lfs_dirindex_find(op.index, name);
	if (!e || e->is_whiteout) {
		r = -ENOENT;
		goto out;
	}
	if (is_dir && e->type != DT_DIR) {
		r = -ENOTDIR;
		goto out;
	}
	if (!is_dir && e->type == DT_DIR) {
		r = -EISDIR;
		goto out;
	}
	if (is_dir) {
		r = merged_dir_is_empty(fs, parent, e);
		if (r == 0)
			r = -ENOTEMPTY;
		if (r < 0)
			goto out;
	}
	/* Checked: now the parent needs its upper copy. */
	r = dir_op_upper(fs, &op);
	if (r < 0)
		goto out;
	bool needs_whiteout = e->layer > 0 || e->lower_visible;
	if (e->node)
		lfs_node_orphan(fs, e->node);
	if (e->layer > 0 && e->type == DT_REG)
		lfs_index_forget_lower_name(fs, e->layer, e->real_ino);
	if (e->layer > 0)
		r = lfs_whiteout_write(&fs->upper, op.upper_fd, name);
	else if (needs_whiteout)
		r = replace_with_whiteout(fs, op.upper_fd, name, is_dir);
	else
		r = remove_upper(fs, op.upper_fd, name, is_dir);
	if (r == 0)
		lfs_entry_hide(e, needs_whiteout);
	if (r == 0 && needs_whiteout)
		lfs_count(fs, LFS_C_WHITEOUTS, 1);
out:
	dir_op_end(&op);
	lfs_ns_unlock(fs);
	return r;
}

int lfs_unlink(struct lfs_fs *fs, struct lfs_node *parent, const char *name)
{
	struct lfs_node *node;
	struct stat st;

	/* A lower file with other names: copy it up (into the index) first,
	 * so that the index counts the names left, as kernel overlayfs
	 * does with index=on. */
	if (fs->writable && fs->upper.index_fd >= 0 &&
	    lfs_lookup(fs, parent, name, &node, &st) == 0) {
		int r = 0;
		if (node->layer > 0 && node->type == DT_REG && st.st_nlink > 1)
			r = lfs_copy_up(fs, node, true);
		lfs_node_unref(fs, node, 1);
		if (r < 0)
			return r;
	}
	return remove_name(fs, parent, name, false);
}

int lfs_rmdir(struct lfs_fs *fs, struct lfs_node *parent, const char *name)
{
	return remove_name(fs, parent, name, true);
}

/* ------------------------------------------------------------------ */
/* Renaming                                                            */

/* Copy up what a rename moves: a directory with its whole tree. */
static int copy_up_moved(struct lfs_fs *fs, struct lfs_node *node)
{
	return node->type == DT_DIR ? lfs_copy_up_tree(fs, node)
				    : lfs_copy_up(fs, node, true);
}

static int mark_opaque_at(struct lfs_fs *fs, int dir_fd, const char *name)
{
	int fd = openat(dir_fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW |
					      O_CLOEXEC);
	int r;

	if (fd < 0)
		return -errno;
	r = lfs_whiteout_mark_opaque(&fs->upper, fd);
	close(fd);
	if (r == 0)
		lfs_count(fs, LFS_C_OPAQUES, 1);
	return r;
}

/* An upper directory that merges to nothing holds only whiteouts: hide
 * what is below it (opaque), then empty it, so a rename can replace it. */
static int empty_upper_dir(struct lfs_fs *fs, int dir_fd, const char *name)
{
	char tmp[32];
	int r;

	r = mark_opaque_at(fs, dir_fd, name);
	if (r < 0)
		return r;
	/* Move the old one aside and put an empty opaque one in its place
	 * would need two renames; removing whiteouts in place is simpler
	 * and, with the mark set first, changes nothing visible. */
	int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					      O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	struct dirent *de;
	r = 0;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fs->upper.opaque_xattr == NULL &&
		    strcmp(de->d_name, ".wh..wh..opq") == 0)
			continue;
		lfs_upper_tmpname(&fs->upper, tmp);
		if (renameat(dirfd(d), de->d_name, fs->upper.work_fd, tmp) < 0) {
			r = -errno;
			break;
		}
		lfs_upper_remove_tree(fs->upper.work_fd, tmp);
	}
	closedir(d);
	return r;
}

/*
 * A directory moved as a whole tree holds, in its upper copy, the
 * whiteouts that hid lower names at its old place.  At the new place
 * nothing is below them (the directory is opaque there, or has no lower
 * history), and kernel overlayfs shows whiteouts of such a directory as
 * raw entries: remove them, all the way down.
 */
static void purge_whiteouts(struct lfs_fs *fs, int parent_fd, const char *name,
			    struct lfs_node *node)
{
	int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
						 O_CLOEXEC);
	DIR *d;
	struct dirent *de;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		struct lfs_classified c;
		struct lfs_dir_marks marks = { 0 };
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (de->d_type == DT_DIR) {
			purge_whiteouts(fs, dirfd(d), de->d_name, NULL);
			continue;
		}
		if (lfs_whiteout_classify(dirfd(d), &marks, de->d_name,
					  de->d_type, &c) == 0 &&
		    c.kind == LFS_ENTRY_WHITEOUT)
			unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	/* The node's own index: no upper whiteout is left to replace. */
	struct lfs_dirindex *index = node ? atomic_load(&node->index) : NULL;
	if (index) {
		struct lfs_entry *e, *tmp;
		HASH_ITER(hh, index->by_name, e, tmp)
			e->upper_whiteout = false;
	}
}

struct rename_op {
	struct lfs_node *src, *dst;       /* dst: the visible target, or NULL */
	struct dir_op from, to;
	struct lfs_entry *ea, *eb;        /* eb: NULL if no layer has newname */
	const char *name, *newname;
};

static int do_move(struct lfs_fs *fs, struct rename_op *o)
{
	struct lfs_upper *u = &fs->upper;
	bool src_is_dir = o->src->type == DT_DIR;
	bool target_visible = o->eb && !o->eb->is_whiteout;
	bool needs_whiteout = o->ea->lower_visible;
	struct stat st;
	int r = 0;

	if (target_visible && o->eb->type == DT_DIR && o->eb->layer == 0)
		r = empty_upper_dir(fs, o->to.upper_fd, o->newname);
	/* Lower layers may have history under the new name: hide it. */
	if (r == 0 && src_is_dir && o->eb)
		r = mark_opaque_at(fs, o->from.upper_fd, o->name);
	/* A directory cannot replace a char device whiteout. */
	if (r == 0 && src_is_dir && o->eb && o->eb->upper_whiteout &&
	    unlinkat(o->to.upper_fd, o->newname, 0) < 0 && errno != ENOENT)
		r = -errno;
	if (r == 0 && needs_whiteout && !u->whiteout_chardev)
		r = lfs_whiteout_write(u, o->from.upper_fd, o->name);
	if (r < 0)
		return r;
	/* Before the target's object goes: the orphan keeps a handle on it. */
	if (o->dst)
		lfs_node_orphan(fs, o->dst);

	if (needs_whiteout && u->whiteout_chardev) {
		if (renameat2(o->from.upper_fd, o->name, o->to.upper_fd,
			      o->newname, RENAME_WHITEOUT) < 0) {
			if (errno != EINVAL)
				return -errno;
			/* No RENAME_WHITEOUT here: two steps. */
			if (renameat(o->from.upper_fd, o->name, o->to.upper_fd,
				     o->newname) < 0)
				return -errno;
			r = lfs_whiteout_write(u, o->from.upper_fd, o->name);
		}
	} else if (renameat(o->from.upper_fd, o->name, o->to.upper_fd,
			    o->newname) < 0) {
		return -errno;
	}
	if (r == 0 && o->eb && o->eb->upper_whiteout)
		r = lfs_whiteout_remove_oci(o->to.upper_fd, o->newname);
	if (fstatat(o->to.upper_fd, o->newname, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;

	if (needs_whiteout)
		lfs_count(fs, LFS_C_WHITEOUTS, 1);
	/* The tree: the source's node moves to the target's entry. */
	struct lfs_entry *eb;
	int rr = lfs_dirindex_put_upper(o->to.index, o->newname,
					IFTODT(st.st_mode), st.st_ino, &eb);
	if (rr < 0)
		return rr;
	eb->ino_override = o->src->ino;
	lfs_node_move(fs, o->src, o->to.dir, eb);
	lfs_entry_hide(o->ea, needs_whiteout);
	if (src_is_dir)
		purge_whiteouts(fs, o->to.upper_fd, o->newname, o->src);
	return r;
}

static void swap_objects(struct lfs_entry *a, struct lfs_entry *b)
{
	struct lfs_layer_list dl = a->dir_layers;
	unsigned char type = a->type;
	uint64_t real_ino = a->real_ino, ino = a->ino_override;

	a->dir_layers = b->dir_layers;
	a->type = b->type;
	a->real_ino = b->real_ino;
	a->ino_override = b->ino_override;
	b->dir_layers = dl;
	b->type = type;
	b->real_ino = real_ino;
	b->ino_override = ino;
}

static int do_exchange(struct lfs_fs *fs, struct rename_op *o)
{
	int r = 0;

	/* Each directory lands where the other's lower history may be. */
	if (o->src->type == DT_DIR)
		r = mark_opaque_at(fs, o->from.upper_fd, o->name);
	if (r == 0 && o->dst->type == DT_DIR)
		r = mark_opaque_at(fs, o->to.upper_fd, o->newname);
	if (r < 0)
		return r;
	if (renameat2(o->from.upper_fd, o->name, o->to.upper_fd, o->newname,
		      RENAME_EXCHANGE) < 0)
		return -errno;
	o->ea->ino_override = o->src->ino;
	o->eb->ino_override = o->dst->ino;
	swap_objects(o->ea, o->eb);
	lfs_node_move(fs, o->src, o->to.dir, o->eb);
	lfs_node_move(fs, o->dst, o->from.dir, o->ea);
	if (o->src->type == DT_DIR)
		purge_whiteouts(fs, o->to.upper_fd, o->newname, o->src);
	if (o->dst->type == DT_DIR)
		purge_whiteouts(fs, o->from.upper_fd, o->name, o->dst);
	return 0;
}

/* The checks of a rename, changing nothing (ns lock held either way):
 * 1 when there is nothing to do, 0 to go on, or -errno.  Run before the
 * copy-ups, so that a refused rename copies nothing, and again after. */
static int rename_check(struct lfs_fs *fs, struct rename_op *o,
			unsigned flags)
{
	int r;

	if (o->src->is_orphan || (o->dst && o->dst->is_orphan))
		return -ENOENT;
	r = dir_op_look(fs, o->from.dir, &o->from);
	if (r == 0)
		r = dir_op_look(fs, o->to.dir, &o->to);
	if (r < 0)
		return r;
	o->ea = o->src->entry;
	o->eb = lfs_dirindex_find(o->to.index, o->newname);
	if (o->ea == o->eb)
		return 1;
	bool target_visible = o->eb && !o->eb->is_whiteout;
	if ((flags & RENAME_NOREPLACE) && target_visible)
		return -EEXIST;
	if (flags & RENAME_EXCHANGE) {
		if (!target_visible || !o->dst || o->eb->node != o->dst)
			return -ENOENT;
		return 0;
	}
	if (!target_visible)
		return 0;
	bool src_dir = o->src->type == DT_DIR;
	bool dst_dir = o->eb->type == DT_DIR;
	if (src_dir && !dst_dir)
		return -ENOTDIR;
	if (!src_dir && dst_dir)
		return -EISDIR;
	/* Two names of one file (in the upper, or in one lower layer): POSIX
	 * says there is nothing to do. */
	if (!src_dir && o->ea->layer == o->eb->layer &&
	    o->ea->real_ino == o->eb->real_ino)
		return 1;
	if (dst_dir) {
		r = merged_dir_is_empty(fs, o->to.dir, o->eb);
		if (r < 0)
			return r;
		if (!r)
			return -ENOTEMPTY;
	}
	return 0;
}

/* A lower file with other names about to be replaced: copy it up (into
 * the index) first, so that its other names count one name less, as
 * with unlink. */
static int copy_up_replaced_link(struct lfs_fs *fs, struct lfs_node *dir,
				 const char *name)
{
	struct lfs_node *node;
	struct stat st;
	int r = 0;

	if (fs->upper.index_fd < 0 || lfs_lookup(fs, dir, name, &node, &st) < 0)
		return 0;
	if (node->layer > 0 && node->type == DT_REG && st.st_nlink > 1)
		r = lfs_copy_up(fs, node, true);
	lfs_node_unref(fs, node, 1);
	return r;
}

/* With the ns lock held for writing: check and carry out the rename. */
static int rename_locked(struct lfs_fs *fs, struct rename_op *o,
			 unsigned flags)
{
	int r = rename_check(fs, o, flags);

	if (r != 0)
		return r < 0 ? r : 0;
	r = dir_op_upper(fs, &o->from);
	if (r == 0)
		r = dir_op_upper(fs, &o->to);
	if (r < 0)
		return r;
	if (flags & RENAME_EXCHANGE)
		return do_exchange(fs, o);
	/* The node the kernel knows for the target, if any. */
	if (!o->dst && o->eb && !o->eb->is_whiteout && o->eb->node) {
		o->dst = o->eb->node;
		lfs_node_ref_locked(fs, o->dst);
	}
	return do_move(fs, o);
}

int lfs_rename(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       struct lfs_node *newparent, const char *newname,
	       unsigned flags)
{
	struct rename_op o = {
		.name = name, .newname = newname,
		.from = { .upper_fd = -1 }, .to = { .upper_fd = -1 },
	};
	struct stat st;
	int r;

	if (!fs->writable)
		return -EROFS;
	if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	r = check_new_name(newname);
	if (r < 0)
		return r;
	r = lfs_lookup(fs, parent, name, &o.src, &st);
	if (r < 0)
		return r;
	if (flags & RENAME_EXCHANGE) {
		r = lfs_lookup(fs, newparent, newname, &o.dst, &st);
		if (r < 0)
			goto out;
	}
	o.from.dir = parent;
	o.to.dir = newparent;
	lfs_ns_rdlock(fs);
	r = rename_check(fs, &o, flags);
	lfs_ns_unlock(fs);
	if (r != 0) {
		r = r < 0 ? r : 0;
		goto out;
	}
	r = copy_up_moved(fs, o.src);
	if (r == 0 && o.dst)
		r = copy_up_moved(fs, o.dst);
	if (r == 0 && !o.dst)
		r = copy_up_replaced_link(fs, newparent, newname);
	if (r < 0)
		goto out;

	lfs_ns_wrlock(fs);
	r = rename_locked(fs, &o, flags);
	dir_op_end(&o.from);
	dir_op_end(&o.to);
	lfs_ns_unlock(fs);
out:
	if (o.dst)
		lfs_node_unref(fs, o.dst, 1);
	lfs_node_unref(fs, o.src, 1);
	return r;
}
