/*
 * file.c - data and metadata of the object a node's layer provides.
 *
 * Read-only for now: without an upper layer every change is EROFS, and
 * files are opened in their layer directly (the adapter splices their
 * pages to the kernel).
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

int lfs_open(struct lfs_fs *fs, struct lfs_node *node, int flags)
{
	char path[PATH_MAX];
	int r, fd;

	if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_CREAT)))
		return -EROFS;
	r = lfs_node_path(node, path, sizeof(path));
	if (r < 0)
		return r;
	/* O_NOATIME and O_DIRECT are the caller's to ask for; everything
	 * that would change the layer has been refused above. */
	flags &= O_DIRECT | O_NOATIME | O_DIRECTORY | O_NONBLOCK;
	fd = openat(node_layer_fd(fs, node), path,
		    O_RDONLY | O_NOFOLLOW | O_CLOEXEC | flags);
	if (fd < 0 && errno == EPERM && (flags & O_NOATIME))
		fd = openat(node_layer_fd(fs, node), path,
			    O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
				    (flags & ~O_NOATIME));
	return fd < 0 ? -errno : fd;
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
	int r = lfs_node_path(node, path, sizeof(path));
	ssize_t len;

	if (r < 0)
		return r;
	if (node->type != DT_LNK)
		return -EINVAL;
	len = readlinkat(node_layer_fd(fs, node), path, buf, size);
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
	r = lfs_node_path(node, path, sizeof(path));
	if (r < 0)
		return r;
	if (faccessat(node_layer_fd(fs, node), path, mask,
		      AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}
