/*
 * file.c - data and metadata of the object a node's layer provides.
 *
 * Files are opened in their layer directly (the adapter splices their
 * pages to the kernel).  Opening for writing (or O_TRUNC) copies the file
 * up first; without an upper layer that is EROFS.
 *
 * A read-only mount tells the kernel to skip OPEN and RELEASE altogether
 * (two round trips per open(2) saved); reads then arrive without a handle
 * and use a read fd cached on the node.  Those fds are bounded by
 * max_data_fds, set at mount from RLIMIT_NOFILE: past it a read opens and
 * closes its own fd, slower but never failing for want of descriptors.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/statvfs.h>

#include "layerfs_i.h"

static int node_layer_fd(struct lfs_fs *fs, const struct lfs_node *node)
{
	return fs->stack->layers[node->layer].root_fd;
}

static bool changes_data(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* Open the node's object (ns lock held): through its path in its layer,
 * or, for an orphan, through its O_PATH fd. */
static int open_object(struct lfs_fs *fs, struct lfs_node *node, int flags)
{
	char path[PATH_MAX];
	/* Reads of a metadata-only copy come from the layer with the data. */
	int dir_fd = fs->stack->layers[lfs_node_data_layer(node)].root_fd;
	int r, fd;

	if (node->is_orphan) {
		if (node->orphan_fd < 0)
			return -ESTALE;
		r = lfs_proc_path(path, node->orphan_fd, "");
		dir_fd = AT_FDCWD;
		flags &= ~O_NOFOLLOW;    /* /proc/self/fd links are followed */
	} else {
		r = lfs_node_path(node, path, sizeof(path));
	}
	if (r < 0)
		return r;
	fd = openat(dir_fd, path, flags);
	if (fd < 0 && errno == EPERM && (flags & O_NOATIME))
		fd = openat(dir_fd, path, flags & ~O_NOATIME);
	return fd < 0 ? -errno : fd;
}

int lfs_open(struct lfs_fs *fs, struct lfs_node *node, int flags)
{
	int fd, r;
	/* What the caller may ask for; O_APPEND is left out because the
	 * kernel sends every write with its offset, append or not. */
	int keep = O_DIRECT | O_NOATIME | O_DIRECTORY | O_NONBLOCK;

	if (changes_data(flags)) {
		if (!fs->writable)
			return -EROFS;
		if (node->type == DT_DIR)
			return -EISDIR;
		if (!node->is_orphan) {
			r = lfs_copy_up(fs, node, !(flags & O_TRUNC));
			if (r < 0)
				return r;
		} else if (node->layer != 0) {
			return -ESTALE;
		}
		keep |= O_ACCMODE | O_TRUNC | O_SYNC | O_DSYNC;
	} else if (fs->writable && node->layer > 0 && node->type == DT_REG) {
		/* Reading a lower hard link another name has copied up? */
		struct stat st;
		r = lfs_getattr(fs, node, &st);
		if (r < 0)
			return r;
	}
	lfs_ns_rdlock(fs);
	fd = open_object(fs, node, (flags & keep) | O_NOFOLLOW | O_CLOEXEC);
	lfs_ns_unlock(fs);
	return fd;
}

int lfs_data_fd(struct lfs_fs *fs, struct lfs_node *node, int *ret_fd,
		bool *ret_owned)
{
	int fd = atomic_load_explicit(&node->data_fd, memory_order_acquire);
	int expected = -1;

	if (fd >= 0) {
		*ret_fd = fd;
		*ret_owned = false;
		return 0;
	}
	fd = lfs_open(fs, node, O_RDONLY);
	if (fd < 0)
		return fd;
	/* Over budget: the caller reads through a one-off fd instead. */
	if (atomic_fetch_add(&fs->n_data_fds, 1) >= fs->config.max_data_fds) {
		atomic_fetch_sub(&fs->n_data_fds, 1);
		*ret_fd = fd;
		*ret_owned = true;
		return 0;
	}
	if (!atomic_compare_exchange_strong(&node->data_fd, &expected, fd)) {
		/* Another reader cached one first: use it. */
		atomic_fetch_sub(&fs->n_data_fds, 1);
		close(fd);
		fd = expected;
	}
	*ret_fd = fd;
	*ret_owned = false;
	return 0;
}

void lfs_node_close_data_fd(struct lfs_fs *fs, struct lfs_node *node)
{
	int fd = atomic_exchange(&node->data_fd, -1);

	if (fd >= 0) {
		close(fd);
		atomic_fetch_sub(&fs->n_data_fds, 1);
	}
}

int lfs_readlink(struct lfs_fs *fs, struct lfs_node *node, char *buf,
		 size_t size)
{
	char path[PATH_MAX];
	ssize_t len;
	int r;

	if (node->type != DT_LNK)
		return -EINVAL;
	lfs_ns_rdlock(fs);
	if (node->is_orphan)
		len = node->orphan_fd < 0 ? (errno = ESTALE, -1)
					  : readlinkat(node->orphan_fd, "", buf,
						       size);
	else if ((r = lfs_node_path(node, path, sizeof(path))) < 0)
		len = (errno = -r, -1);
	else
		len = readlinkat(node_layer_fd(fs, node), path, buf, size);
	lfs_ns_unlock(fs);
	if (len < 0)
		return -errno;
	return (int)len;
}

int lfs_statfs(struct lfs_fs *fs, struct statvfs *ret)
{
	struct statvfs st;

	if (fstatvfs(fs->stack->layers[0].root_fd, &st) < 0)
		return -errno;
	*ret = st;
	return 0;
}

int lfs_access(struct lfs_fs *fs, struct lfs_node *node, int mask)
{
	char path[PATH_MAX];
	int r;

	if ((mask & W_OK) && fs->config.read_only)
		return -EROFS;
	lfs_ns_rdlock(fs);
	r = node->is_orphan ? -ESTALE : lfs_node_path(node, path, sizeof(path));
	if (r == 0 && faccessat(node_layer_fd(fs, node), path, mask,
				AT_SYMLINK_NOFOLLOW) < 0)
		r = -errno;
	lfs_ns_unlock(fs);
	return r;
}
