/*
 * copyup.c - giving a lower object its copy in the upper layer.
 *
 * A copy is built in the work directory with the object's data, owner,
 * mode, times and xattrs (but the overlay's private ones), then renamed
 * into place, so the merged view shows the old object or the complete
 * new one, never a part.  Parents are copied up first.
 *
 * Data: FICLONE where the filesystems allow it (probed at mount), else
 * copy_file_range over the source's data extents only (holes stay holes),
 * else read/write.  No data is copied when the caller is about to discard
 * it (open O_TRUNC, truncate to 0).
 *
 * Hard links: a lower file with several names is copied up once.  The
 * copy is also linked into <workdir>/index under its lower inode's
 * (st_dev, st_ino); a later copy-up of another name links that entry
 * instead of copying, and a lookup of another name finds the entry and
 * does so at once, so every name shows the same data, as kernel
 * overlayfs does with index=on.  The copy records in a private xattr how
 * many lower names are still to come, which keeps st_nlink right.
 *
 * Locks: a file's copy-up holds its node's copyup_mu throughout, and
 * fs->ns_lock for writing only to look at and to change the tree, not
 * while copying data, so lookups go on during a long copy.  Directories
 * are cheap and are copied with the ns lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>

#include "layerfs_i.h"

#define COPY_CHUNK (1u << 20)

/* What the copy-up running on this thread did, for the counters: one
 * copy-up runs on one thread from start to end. */
static _Thread_local struct {
	enum lfs_counter method;    /* LFS_C_COPYUP_{REFLINK,RANGE,RW,META,LINK} */
	off_t bytes;                /* data copied */
} copy_report;

/* ------------------------------------------------------------------ */
/* Attributes                                                          */

/* The xattr calls on a source path: l* ones, or for a /proc/self/fd link
 * (which the l* ones would take for the link itself) the following ones. */
static ssize_t src_listxattr(const char *path, bool follow, char *list,
			     size_t size)
{
	return follow ? listxattr(path, list, size)
		      : llistxattr(path, list, size);
}

static ssize_t src_getxattr(const char *path, bool follow, const char *name,
			    void *value, size_t size)
{
	return follow ? getxattr(path, name, value, size)
		      : lgetxattr(path, name, value, size);
}

static int copy_xattrs(const char *src_path, bool src_follow,
		       const char *dst_path)
{
	ssize_t len = src_listxattr(src_path, src_follow, NULL, 0);
	char *names = NULL, *value = NULL;
	size_t value_cap = 0;
	int r = 0;

	if (len <= 0)
		return len < 0 && errno != ENOTSUP ? -errno : 0;
	names = malloc((size_t)len);
	if (!names)
		return -ENOMEM;
	len = src_listxattr(src_path, src_follow, names, (size_t)len);
	if (len < 0) {
		r = -errno;
		goto out;
	}
	for (char *n = names; n < names + len; n += strlen(n) + 1) {
		if (lfs_xattr_is_private(n))
			continue;
		ssize_t vlen = src_getxattr(src_path, src_follow, n, NULL, 0);
		if (vlen < 0)
			continue;    /* gone, or a namespace we may not read */
		if ((size_t)vlen > value_cap) {
			char *grown = realloc(value, (size_t)vlen);
			if (!grown) {
				r = -ENOMEM;
				goto out;
			}
			value = grown;
			value_cap = (size_t)vlen;
		}
		vlen = src_getxattr(src_path, src_follow, n, value,
				    (size_t)vlen);
		if (vlen < 0)
			continue;
		/* An upper that cannot hold a namespace (trusted.* for a
		 * user, security.* on some filesystems) loses only that. */
		if (lsetxattr(dst_path, n, value, (size_t)vlen, 0) < 0 &&
		    errno != ENOTSUP && errno != EPERM) {
			r = -errno;
			goto out;
		}
	}
out:
	free(names);
	free(value);
	return r;
}

int lfs_copy_xattrs(const char *src_path, const char *dst_path)
{
	return copy_xattrs(src_path, false, dst_path);
}

/* Give work/tmp the attributes st (and the xattrs of src_proc).  Order
 * matters: chown first (it clears set-id bits and file capabilities),
 * then the xattrs (security.capability among them), then the mode, then
 * the times (which every other change touches). */
static int copy_attrs_from(struct lfs_upper *u, const char *tmp,
			   const struct stat *st, const char *src_proc,
			   bool src_follow)
{
	char dst_proc[PATH_MAX];
	struct timespec times[2] = { st->st_atim, st->st_mtim };
	int r = lfs_proc_path(dst_proc, u->work_fd, tmp);

	if (r < 0)
		return r;
	if (fchownat(u->work_fd, tmp, st->st_uid, st->st_gid,
		     AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	r = copy_xattrs(src_proc, src_follow, dst_proc);
	if (r < 0)
		return r;
	if (!S_ISLNK(st->st_mode) &&
	    fchmodat(u->work_fd, tmp, st->st_mode & 07777, 0) < 0)
		return -errno;
	if (utimensat(u->work_fd, tmp, times, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

static int copy_attrs(struct lfs_upper *u, const char *tmp,
		      const struct stat *st, const char *src_proc)
{
	return copy_attrs_from(u, tmp, st, src_proc, false);
}

/* ------------------------------------------------------------------ */
/* Origins: the st_ino a copy keeps across mounts                      */

static void origin_value(char buf[48], const struct stat *st)
{
	snprintf(buf, 48, "%llx-%llx", (unsigned long long)st->st_dev,
		 (unsigned long long)st->st_ino);
}

/* Record on work/tmp the lower object st it copies. */
static void set_origin(struct lfs_upper *u, const char *tmp,
		       const struct stat *st)
{
	char path[PATH_MAX], value[48];

	if (!u->origin_xattr || lfs_proc_path(path, u->work_fd, tmp) < 0)
		return;
	origin_value(value, st);
	/* Best effort: without it st_ino changes at the next mount only. */
	lsetxattr(path, u->origin_xattr, value, strlen(value), 0);
}

void lfs_read_origins(struct lfs_fs *fs, const char *relpath,
		      struct lfs_dirindex *index)
{
	struct lfs_upper *u = &fs->upper;
	struct lfs_entry *e, *tmp;
	char path[PATH_MAX], value[48];
	int dir_fd;

	if (!u->origin_xattr)
		return;
	dir_fd = lfs_upper_open_dir(u, relpath);
	if (dir_fd < 0)
		return;
	HASH_ITER(hh, index->by_name, e, tmp) {
		unsigned long long dev, ino;
		ssize_t len;
		if (e->is_whiteout || e->layer != 0 || e->ino_override ||
		    lfs_proc_path(path, dir_fd, e->name) < 0)
			continue;
		/* A metadata-only copy: its data is in the layer below that
		 * has the name (what made the copy). */
		if (u->metacopy && e->type == DT_REG && e->lower_visible &&
		    lgetxattr(path, u->metacopy_xattr, NULL, 0) >= 0)
			e->data_layer = e->lower_layer;
		len = lgetxattr(path, u->origin_xattr, value, sizeof(value) - 1);
		if (len <= 0)
			continue;
		value[len] = '\0';
		if (sscanf(value, "%llx-%llx", &dev, &ino) != 2)
			continue;
		for (uint32_t i = 1; i < fs->stack->n_layers; i++)
			if (fs->stack->layers[i].dev == (dev_t)dev) {
				e->ino_override = lfs_fs_ino(fs, i, ino);
				break;
			}
	}
	close(dir_fd);
}

/* ------------------------------------------------------------------ */
/* Data                                                                */

static int copy_range_rw(int src, int dst, off_t off, off_t len)
{
	char *buf = malloc(COPY_CHUNK);
	int r = 0;

	if (!buf)
		return -ENOMEM;
	while (len > 0) {
		size_t want = len < COPY_CHUNK ? (size_t)len : COPY_CHUNK;
		ssize_t got = pread(src, buf, want, off);
		if (got < 0) {
			r = -errno;
			break;
		}
		if (got == 0)
			break;    /* the source shrank: what is there is all */
		for (ssize_t done = 0; done < got;) {
			ssize_t n = pwrite(dst, buf + done, (size_t)(got - done),
					   off + done);
			if (n < 0) {
				r = -errno;
				goto out;
			}
			done += n;
		}
		off += got;
		len -= got;
	}
out:
	free(buf);
	return r;
}

static int copy_range(struct lfs_upper *u, int src, int dst, off_t off,
		      off_t len)
{
	while (len > 0 && atomic_load_explicit(&u->can_copy_range,
					       memory_order_relaxed)) {
		loff_t in = off, out = off;
		ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)len, 0);
		if (n > 0) {
			off += n;
			len -= n;
			copy_report.method = LFS_C_COPYUP_RANGE;
			continue;
		}
		if (n == 0)
			return 0;
		if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
		    errno == EINVAL) {
			/* Not between these filesystems: stop trying. */
			atomic_store(&u->can_copy_range, false);
			break;
		}
		return -errno;
	}
	if (len > 0)
		copy_report.method = LFS_C_COPYUP_RW;
	return len > 0 ? copy_range_rw(src, dst, off, len) : 0;
}

/* Copy size bytes of data, keeping holes. */
static int copy_data(struct lfs_upper *u, int src, int dst, off_t size)
{
	off_t off = 0;
	int r;

	copy_report.bytes = size;
	if (size == 0)
		return 0;
	if (u->can_reflink && ioctl(dst, FICLONE, src) == 0) {
		copy_report.method = LFS_C_COPYUP_REFLINK;
		return 0;
	}
	while (off < size) {
		off_t data = lseek(src, off, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break;    /* a hole up to the end */
		if (data < 0) {
			/* No SEEK_DATA here: all of it is data. */
			r = copy_range(u, src, dst, off, size - off);
			if (r < 0)
				return r;
			break;
		}
		off_t hole = lseek(src, data, SEEK_HOLE);
		if (hole < 0 || hole > size)
			hole = size;
		r = copy_range(u, src, dst, data, hole - data);
		if (r < 0)
			return r;
		off = hole;
	}
	return ftruncate(dst, size) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------ */
/* Publishing                                                          */

/* Rename work/tmp to relpath in the upper, keeping the times of the
 * upper parent (a copy-up changes nothing the merge shows). */
static int publish(struct lfs_fs *fs, const char *tmp, const char *relpath,
		   struct stat *ret_st)
{
	struct lfs_upper *u = &fs->upper;
	char parent[PATH_MAX];
	struct stat pst;
	const char *slash = strrchr(relpath, '/');
	int have_parent_times;

	if (slash) {
		memcpy(parent, relpath, (size_t)(slash - relpath));
		parent[slash - relpath] = '\0';
	} else {
		strcpy(parent, ".");
	}
	have_parent_times = fstatat(u->root_fd, parent, &pst,
				    AT_SYMLINK_NOFOLLOW) == 0;
	if (renameat(u->work_fd, tmp, u->root_fd, relpath) < 0)
		return -errno;
	if (have_parent_times) {
		struct timespec times[2] = { pst.st_atim, pst.st_mtim };
		utimensat(u->root_fd, parent, times, AT_SYMLINK_NOFOLLOW);
	}
	if (fstatat(u->root_fd, relpath, ret_st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

/* The tree now shows node's upper copy (ns lock held for writing). */
static int mark_copied_up(struct lfs_fs *fs, struct lfs_node *node,
			  const struct stat *upper_st)
{
	int r = lfs_entry_copied_up(node->entry, upper_st->st_ino, node->ino);

	if (r < 0)
		return r;
	node->layer = 0;
	node->stat_rec = NULL;
	if (node->type == DT_DIR) {
		struct lfs_dirindex *index = atomic_load(&node->index);
		if (index)
			index->n_layers_read++;    /* the upper merges in */
	}
	lfs_node_data_moved(fs, node);
	return 0;
}

/* With the ns lock held for writing: publish work/tmp, built with result
 * r, as node's upper copy (or throw it away). */
static int publish_copy(struct lfs_fs *fs, struct lfs_node *node,
		       const char *tmp, int r)
{
	char path[PATH_MAX];
	struct stat upper_st;

	if (r == 0 && node->is_orphan)
		r = -ESTALE;    /* removed meanwhile: nothing to publish */
	if (r == 0)
		r = lfs_node_path(node, path, sizeof(path));
	if (r == 0)
		r = publish(fs, tmp, path, &upper_st);
	if (r == 0)
		return mark_copied_up(fs, node, &upper_st);
	unlinkat(fs->upper.work_fd, tmp, 0);
	return r;
}

/* ------------------------------------------------------------------ */
/* Directories                                                         */

int lfs_copy_up_dir_locked(struct lfs_fs *fs, struct lfs_node *dir)
{
	struct lfs_upper *u = &fs->upper;
	char path[PATH_MAX], src_proc[PATH_MAX], tmp[32];
	struct stat st, upper_st;
	int r;

	if (dir->layer == 0)
		return 0;    /* the root is always in the upper */
	if (dir->is_orphan)
		return -ENOENT;
	r = lfs_copy_up_dir_locked(fs, dir->parent);
	if (r < 0)
		return r;
	r = lfs_node_path(dir, path, sizeof(path));
	if (r < 0)
		return r;
	int lower_fd = fs->stack->layers[dir->layer].root_fd;
	if (fstatat(lower_fd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	r = lfs_proc_path(src_proc, lower_fd, path);
	if (r < 0)
		return r;
	lfs_upper_tmpname(u, tmp);
	if (mkdirat(u->work_fd, tmp, 0700) < 0)
		return -errno;
	r = copy_attrs(u, tmp, &st, src_proc);
	if (r == 0)
		set_origin(u, tmp, &st);
	if (r == 0)
		r = publish(fs, tmp, path, &upper_st);
	if (r < 0) {
		unlinkat(u->work_fd, tmp, AT_REMOVEDIR);
		return r;
	}
	lfs_count(fs, LFS_C_COPYUPS, 1);
	lfs_count(fs, LFS_C_COPYUP_META, 1);
	return mark_copied_up(fs, dir, &upper_st);
}

/* ------------------------------------------------------------------ */
/* Hard links                                                          */

static void index_key(char buf[48], dev_t dev, uint64_t ino)
{
	snprintf(buf, 48, "%llx-%llx", (unsigned long long)dev,
		 (unsigned long long)ino);
}

static bool index_has(struct lfs_upper *u, const char *key)
{
	struct stat st;

	return u->index_fd >= 0 &&
	       fstatat(u->index_fd, key, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* The lower names still to be copied up, as the copy records them. */
static long pending_links(struct lfs_upper *u, const char *proc_path)
{
	char value[24];
	ssize_t len;

	if (!u->links_xattr)
		return -1;
	/* Regular files only: following the last component (an orphan's
	 * /proc/self/fd link) is what we want. */
	len = getxattr(proc_path, u->links_xattr, value, sizeof(value) - 1);
	if (len <= 0)
		return -1;
	value[len] = '\0';
	return strtol(value, NULL, 10);
}

static void set_pending_links(struct lfs_upper *u, const char *proc_path,
			      long n)
{
	char value[24];

	if (!u->links_xattr)
		return;
	snprintf(value, sizeof(value), "%ld", n < 0 ? 0 : n);
	lsetxattr(proc_path, u->links_xattr, value, strlen(value), 0);
}

static void index_add_pending(struct lfs_upper *u, const char *key, long delta)
{
	char path[PATH_MAX];
	long n;

	if (lfs_proc_path(path, u->index_fd, key) < 0)
		return;
	n = pending_links(u, path);
	if (n >= 0)
		set_pending_links(u, path, n + delta);
}

/* Make work/tmp the copy of a lower hard link (lst: its attributes):
 * a link of the index entry if another name made one, else a new copy
 * entered into the index. */
static int build_linked_copy(struct lfs_fs *fs, uint32_t src_layer,
			     const char *path, const char *tmp,
			     const struct stat *lst, bool with_data);

static int build_copy(struct lfs_fs *fs, uint32_t src_layer, const char *path,
		      const char *tmp, bool with_data);

static int build_any_copy(struct lfs_fs *fs, uint32_t src_layer,
			  const char *path, const char *tmp, bool with_data)
{
	struct lfs_upper *u = &fs->upper;
	struct stat lst;

	if (u->index_fd >= 0 &&
	    fstatat(fs->stack->layers[src_layer].root_fd, path, &lst,
		    AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(lst.st_mode) && lst.st_nlink > 1)
		return build_linked_copy(fs, src_layer, path, tmp, &lst,
					 with_data);
	return build_copy(fs, src_layer, path, tmp, with_data);
}

static int build_linked_copy(struct lfs_fs *fs, uint32_t src_layer,
			     const char *path, const char *tmp,
			     const struct stat *lst, bool with_data)
{
	struct lfs_upper *u = &fs->upper;
	char key[48], proc[PATH_MAX];
	int r;

	index_key(key, lst->st_dev, lst->st_ino);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (linkat(u->index_fd, key, u->work_fd, tmp, 0) == 0) {
			index_add_pending(u, key, -1);
			copy_report.method = LFS_C_COPYUP_LINK;
			return 0;
		}
		if (errno != ENOENT)
			return -errno;
		/* The first name: a real copy, entered into the index. */
		r = build_copy(fs, src_layer, path, tmp, with_data);
		if (r < 0)
			return r;
		if (lfs_proc_path(proc, u->work_fd, tmp) == 0)
			set_pending_links(u, proc, (long)lst->st_nlink - 1);
		if (linkat(u->work_fd, tmp, u->index_fd, key, 0) == 0) {
			atomic_store(&u->has_index, true);
			return 0;
		}
		r = -errno;
		unlinkat(u->work_fd, tmp, 0);
		if (r != -EEXIST)
			return r;
		/* Another name's copy-up won the race: link to it. */
	}
	return -EEXIST;
}

int lfs_copy_up_if_linked(struct lfs_fs *fs, struct lfs_node *node,
			  const struct stat *st)
{
	char key[48];

	if (!fs->writable || node->layer == 0 || node->type != DT_REG ||
	    st->st_nlink < 2 || node->is_orphan || !node->entry ||
	    !atomic_load_explicit(&fs->upper.has_index, memory_order_relaxed))
		return 0;
	index_key(key, fs->stack->layers[node->layer].dev,
		  node->entry->real_ino);
	if (!index_has(&fs->upper, key))
		return 0;
	int r = lfs_copy_up(fs, node, true);
	return r < 0 ? r : 1;
}

void lfs_fix_indexed_nlink(struct lfs_fs *fs, struct lfs_node *node,
			   const char *relpath, struct stat *st)
{
	char path[PATH_MAX];
	long pending;

	if (!S_ISREG(st->st_mode) || st->st_nlink < 2 ||
	    !atomic_load_explicit(&fs->upper.has_index, memory_order_relaxed))
		return;
	if (node->is_orphan ? lfs_proc_path(path, node->orphan_fd, "") < 0
			    : lfs_proc_path(path, fs->upper.root_fd, relpath) < 0)
		return;
	pending = pending_links(&fs->upper, path);
	if (pending >= 0)    /* minus the index's own link */
		st->st_nlink = st->st_nlink - 1 + (nlink_t)pending;
}

void lfs_index_forget_lower_name(struct lfs_fs *fs, uint32_t layer,
				 uint64_t real_ino)
{
	char key[48];

	if (!atomic_load_explicit(&fs->upper.has_index, memory_order_relaxed))
		return;
	index_key(key, fs->stack->layers[layer].dev, real_ino);
	if (index_has(&fs->upper, key))
		index_add_pending(&fs->upper, key, -1);
}

/* ------------------------------------------------------------------ */
/* Files, symlinks, devices                                            */

/* Build the copy of the object at path in layer src_layer as work/tmp. */
static int build_copy(struct lfs_fs *fs, uint32_t src_layer, const char *path,
		      const char *tmp, bool with_data)
{
	struct lfs_upper *u = &fs->upper;
	int lower_fd = fs->stack->layers[src_layer].root_fd;
	char src_proc[PATH_MAX], target[PATH_MAX + 1];
	struct stat st;
	int src = -1, dst = -1, r;

	r = lfs_proc_path(src_proc, lower_fd, path);
	if (r < 0)
		return r;
	if (fstatat(lower_fd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		src = openat(lower_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (src < 0)
			return -errno;
		dst = openat(u->work_fd, tmp,
			     O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		if (dst < 0) {
			r = -errno;
			goto out;
		}
		if (with_data)
			r = copy_data(u, src, dst, st.st_size);
		if (r == 0 && with_data && u->fsync && fsync(dst) < 0)
			r = -errno;
	} else if (S_ISLNK(st.st_mode)) {
		ssize_t len = readlinkat(lower_fd, path, target,
					 sizeof(target) - 1);
		if (len < 0)
			return -errno;
		target[len] = '\0';
		if (symlinkat(target, u->work_fd, tmp) < 0)
			return -errno;
	} else {
		if (mknodat(u->work_fd, tmp, st.st_mode & S_IFMT, st.st_rdev) < 0)
			return -errno;
	}
	if (r == 0)
		r = copy_attrs(u, tmp, &st, src_proc);
	if (r == 0)
		set_origin(u, tmp, &st);    /* symlinks: only trusted.* */
out:
	if (src >= 0)
		close(src);
	if (dst >= 0)
		close(dst);
	return r;
}

/* ------------------------------------------------------------------ */
/* Metadata-only copies (metacopy=on)                                  */

/*
 * A chmod, chown, utimes or xattr change of a lower regular file with one
 * name copies only its metadata: an empty upper file of the same size
 * (sparse), with the attributes, and the xattr overlay.metacopy saying its
 * data is still in the lower layer below at the same path, as kernel
 * overlayfs writes with metacopy=on.  The data follows on the first change
 * that needs it (open for writing, truncate, rename, link): copied into
 * the upper file in place, synced, and only then the mark removed, so a
 * crash leaves the lower data showing, never a half-filled file.
 */
static int fill_data(struct lfs_fs *fs, struct lfs_node *node, bool with_data)
{
	struct lfs_upper *u = &fs->upper;
	char path[PATH_MAX], proc[PATH_MAX];
	uint32_t data_layer;
	int src = -1, dst = -1, r;
	struct stat st;

	lfs_ns_rdlock(fs);
	data_layer = node->data_layer;
	r = data_layer == 0 ? 1 : node->is_orphan ? -ESTALE
			  : lfs_node_path(node, path, sizeof(path));
	lfs_ns_unlock(fs);
	if (r != 0)
		return r < 0 ? r : 0;
	dst = openat(u->root_fd, path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (dst < 0)
		return -errno;
	if (with_data) {
		src = openat(fs->stack->layers[data_layer].root_fd, path,
			     O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		r = src < 0 ? -errno : fstat(src, &st) < 0 ? -errno : 0;
		if (r == 0)
			r = copy_data(u, src, dst, st.st_size);
	} else {
		r = ftruncate(dst, 0) < 0 ? -errno : 0;
	}
	if (r == 0 && u->fsync && fsync(dst) < 0)
		r = -errno;
	if (r == 0)
		r = lfs_proc_path(proc, u->root_fd, path);
	if (r == 0 && lremovexattr(proc, u->metacopy_xattr) < 0 &&
	    errno != ENODATA)
		r = -errno;
	if (src >= 0)
		close(src);
	close(dst);
	if (r < 0)
		return r;
	lfs_ns_wrlock(fs);
	node->data_layer = 0;
	if (!node->is_orphan)
		node->entry->data_layer = 0;
	lfs_node_data_moved(fs, node);
	lfs_ns_unlock(fs);
	return 0;
}

/* Build work/tmp as a metadata-only copy of the file at path in layer
 * src_layer (lst: its attributes). */
static int build_meta_copy(struct lfs_fs *fs, uint32_t src_layer,
			   const char *path, const char *tmp,
			   const struct stat *lst)
{
	struct lfs_upper *u = &fs->upper;
	char src_proc[PATH_MAX], dst_proc[PATH_MAX];
	int fd, r;

	r = lfs_proc_path(src_proc, fs->stack->layers[src_layer].root_fd, path);
	if (r == 0)
		r = lfs_proc_path(dst_proc, u->work_fd, tmp);
	if (r < 0)
		return r;
	fd = openat(u->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC,
		    0600);
	if (fd < 0)
		return -errno;
	r = ftruncate(fd, lst->st_size) < 0 ? -errno : 0;
	close(fd);
	if (r == 0 && lsetxattr(dst_proc, u->metacopy_xattr, "", 0, 0) < 0)
		r = -errno;
	if (r == 0)
		r = copy_attrs(u, tmp, lst, src_proc);
	if (r == 0)
		set_origin(u, tmp, lst);
	return r;
}

int lfs_copy_up_meta(struct lfs_fs *fs, struct lfs_node *node)
{
	struct lfs_upper *u = &fs->upper;
	char path[PATH_MAX], tmp[32];
	struct stat lst;
	uint32_t src_layer;
	int r;

	if (!fs->writable)
		return -EROFS;
	if (!u->metacopy || node->type != DT_REG)
		return lfs_copy_up(fs, node, true);
	pthread_mutex_lock(&node->copyup_mu);
	lfs_ns_wrlock(fs);
	r = node->is_orphan ? -ESTALE : 0;
	if (r == 0 && node->layer == 0)
		goto unlock;    /* copied up already, with or without data */
	if (r == 0)
		r = lfs_copy_up_dir_locked(fs, node->parent);
	if (r == 0)
		r = lfs_node_path(node, path, sizeof(path));
	src_layer = node->layer;
	lfs_ns_unlock(fs);
	if (r == 0 && fstatat(fs->stack->layers[src_layer].root_fd, path, &lst,
			      AT_SYMLINK_NOFOLLOW) < 0)
		r = -errno;
	if (r == 0 && lst.st_nlink > 1) {
		/* Hard links take the index's way: a full copy. */
		pthread_mutex_unlock(&node->copyup_mu);
		return lfs_copy_up(fs, node, true);
	}
	if (r < 0)
		goto out;
	lfs_upper_tmpname(u, tmp);
	r = build_meta_copy(fs, src_layer, path, tmp, &lst);
	lfs_ns_wrlock(fs);
	/* Set before publishing, so that the node's cached fd stays on the
	 * data (lfs_node_data_moved). */
	node->data_layer = src_layer;
	r = publish_copy(fs, node, tmp, r);
	if (r < 0)
		node->data_layer = 0;
	if (r == 0) {
		node->entry->data_layer = src_layer;
		lfs_count(fs, LFS_C_COPYUPS, 1);
		lfs_count(fs, LFS_C_COPYUP_META, 1);
	}
unlock:
	lfs_ns_unlock(fs);
out:
	pthread_mutex_unlock(&node->copyup_mu);
	return r;
}

int lfs_copy_up(struct lfs_fs *fs, struct lfs_node *node, bool with_data)
{
	struct lfs_upper *u = &fs->upper;
	char path[PATH_MAX], tmp[32];
	uint32_t src_layer;
	int r;

	if (!fs->writable)
		return -EROFS;
	if (node->type == DT_DIR) {
		lfs_ns_wrlock(fs);
		r = lfs_copy_up_dir_locked(fs, node);
		lfs_ns_unlock(fs);
		return r;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	copy_report.method = LFS_C_COPYUP_META;
	copy_report.bytes = 0;
	pthread_mutex_lock(&node->copyup_mu);
	lfs_ns_wrlock(fs);
	r = node->is_orphan ? -ESTALE : 0;
	if (r == 0 && node->layer == 0) {
		/* Copied up already; a metadata-only copy gets its data. */
		bool meta = node->data_layer != 0;
		lfs_ns_unlock(fs);
		if (meta)
			r = fill_data(fs, node, with_data);
		goto out;
	}
	if (r == 0)
		r = lfs_copy_up_dir_locked(fs, node->parent);
	if (r == 0)
		r = lfs_node_path(node, path, sizeof(path));
	src_layer = node->layer;
	lfs_ns_unlock(fs);
	if (r < 0)
		goto out;

	/* The slow part, with lookups going on: lower layers never change,
	 * so the source is the same whatever happens to names meanwhile. */
	lfs_upper_tmpname(u, tmp);
	r = build_any_copy(fs, src_layer, path, tmp, with_data);

	lfs_ns_wrlock(fs);
	r = publish_copy(fs, node, tmp, r);
	if (r == 0) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		lfs_count(fs, LFS_C_COPYUPS, 1);
		lfs_count(fs, copy_report.method, 1);
		if (copy_report.method != LFS_C_COPYUP_LINK)
			lfs_count(fs, LFS_C_COPYUP_BYTES, copy_report.bytes);
		lfs_count(fs, LFS_C_COPYUP_NS,
			  (t1.tv_sec - t0.tv_sec) * 1000000000LL +
				  (t1.tv_nsec - t0.tv_nsec));
	}
	lfs_ns_unlock(fs);
out:
	pthread_mutex_unlock(&node->copyup_mu);
	return r;
}

/*
 * A lower file whose name was removed while it was open is changed (files
 * are opened without copy-up, see file.c): it becomes a nameless upper
 * file, made in the work dir and unlinked there at once, as if kernel
 * overlayfs had copied it up at open and then unlinked it (nlink 0).
 */
static int build_orphan_copy(struct lfs_fs *fs, const char *src_proc,
			     int *ret_fd)
{
	struct lfs_upper *u = &fs->upper;
	char tmp[32];
	struct stat st;
	int src, dst = -1, r;

	src = open(src_proc, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return -errno;
	r = fstat(src, &st) < 0 ? -errno : 0;
	if (r == 0) {
		lfs_upper_tmpname(u, tmp);
		dst = openat(u->work_fd, tmp,
			     O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
		r = dst < 0 ? -errno : 0;
	}
	if (r == 0)
		r = copy_data(u, src, dst, st.st_size);
	if (r == 0)
		r = copy_attrs_from(u, tmp, &st, src_proc, true);
	if (dst >= 0)
		unlinkat(u->work_fd, tmp, 0);
	close(src);
	if (r < 0 && dst >= 0)
		close(dst);
	*ret_fd = r < 0 ? -1 : dst;
	return r;
}

int lfs_copy_up_orphan(struct lfs_fs *fs, struct lfs_node *node)
{
	char src_proc[PATH_MAX];
	int fd = -1, r;

	if (!fs->writable)
		return -EROFS;
	pthread_mutex_lock(&node->copyup_mu);
	lfs_ns_rdlock(fs);
	r = node->layer == 0 ? 1
	    : node->type != DT_REG || node->orphan_fd < 0
		    ? -ESTALE
		    : lfs_proc_path(src_proc, node->orphan_fd, "");
	lfs_ns_unlock(fs);
	if (r == 0)
		r = build_orphan_copy(fs, src_proc, &fd);
	if (r == 0) {
		lfs_ns_wrlock(fs);
		/* The copy takes the orphan fd's number, as a request may
		 * be using a /proc path through it right now (inode.c,
		 * xattr.c): it then reaches the copy, never another file
		 * that got the number.  Should that fail, the old fd is left
		 * open rather than freed for reuse. */
		if (dup3(fd, node->orphan_fd, O_CLOEXEC) == node->orphan_fd)
			close(fd);
		else
			node->orphan_fd = fd;
		node->layer = 0;
		node->data_layer = 0;
		node->stat_rec = NULL;
		lfs_node_data_moved(fs, node);
		lfs_ns_unlock(fs);
		lfs_count(fs, LFS_C_COPYUPS, 1);
	}
	pthread_mutex_unlock(&node->copyup_mu);
	return r < 0 ? r : 0;
}

/* ------------------------------------------------------------------ */
/* Whole trees                                                         */

/* The names visible in dir now (a copy: the index may change). */
static int snapshot_names(struct lfs_dirindex *index, char ***ret,
			  size_t *ret_n)
{
	struct lfs_entry *e, *tmp;
	size_t n = 0, i = 0;
	char **names;

	HASH_ITER(hh, index->by_name, e, tmp)
		n += !e->is_whiteout;
	names = calloc(n + 1, sizeof(*names));
	if (!names)
		return -ENOMEM;
	HASH_ITER(hh, index->by_name, e, tmp) {
		if (e->is_whiteout || i == n)
			continue;
		names[i] = strdup(e->name);
		if (!names[i]) {
			for (size_t j = 0; j < i; j++)
				free(names[j]);
			free(names);
			return -ENOMEM;
		}
		i++;
	}
	*ret = names;
	*ret_n = i;
	return 0;
}

static bool is_upper_only(struct lfs_node *dir, struct lfs_dirindex *index)
{
	return dir->layer == 0 && index->n_layers_read <= 1;
}

int lfs_copy_up_tree(struct lfs_fs *fs, struct lfs_node *dir)
{
	struct lfs_dirindex *index;
	char **names = NULL;
	size_t n = 0;
	int r;

	lfs_ns_wrlock(fs);
	r = lfs_copy_up_dir_locked(fs, dir);
	if (r == 0)
		r = lfs_node_index(fs, dir, &index);
	if (r == 0 && !is_upper_only(dir, index))
		r = snapshot_names(index, &names, &n);
	lfs_ns_unlock(fs);
	if (r < 0 || !names)
		return r;

	for (size_t i = 0; i < n && r == 0; i++) {
		struct lfs_node *child;
		struct stat st;
		r = lfs_lookup(fs, dir, names[i], &child, &st);
		if (r == -ENOENT) {
			r = 0;    /* removed meanwhile */
			continue;
		}
		if (r < 0)
			break;
		r = child->type == DT_DIR ? lfs_copy_up_tree(fs, child)
					  : lfs_copy_up(fs, child, true);
		lfs_node_unref(fs, child, 1);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	if (r < 0)
		return r;
	/* Every name is in the upper copy now: it alone is the directory. */
	lfs_ns_wrlock(fs);
	if (!dir->is_orphan && lfs_node_index(fs, dir, &index) == 0)
		lfs_dirindex_drop_lower(index, dir->entry);
	lfs_ns_unlock(fs);
	return 0;
}
