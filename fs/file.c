/*
 * file.c - data and metadata of the object a node's layer provides.
 *
 * Files are opened in their layer directly (the adapter splices their
 * pages to the kernel).  Opening for writing (or O_TRUNC) copies the file
 * up first; without an upper layer that is EROFS.
 *
 * Requests usually arrive without an open handle: the adapter tells the
 * kernel to skip OPEN and RELEASE (two round trips per open(2) saved), so
 * reads and writes use an fd cached on the node.  In a lower layer it is
 * read-only; in the upper layer it is read-write where the daemon may
 * open it so (data_fd_writable), so writes use it too.  When a copy-up
 * moves the data, the cached fd is pointed at the upper copy in place
 * (dup3 over its number): a read going on through the old number keeps
 * its file, and no number is ever closed under a reader.  Those fds are
 * bounded by max_data_fds, set at mount from RLIMIT_NOFILE: past it a
 * request opens and closes its own fd, slower but never failing for want
 * of descriptors.
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

/* Whether node's data is in the upper layer (ns lock held). */
static bool data_in_upper(const struct lfs_fs *fs, const struct lfs_node *node)
{
	return fs->writable && lfs_node_data_layer(node) == 0;
}

/* Errors of a read-write open that a read-only one may not meet: the
 * daemon lacks write permission on an upper file it may read. */
static bool write_refused(int err)
{
	return err == -EACCES || err == -EPERM || err == -ETXTBSY;
}

/* Make fd (owned) node's cached data fd if the budget allows and no other
 * thread cached one first.  Sets *ret_fd to the fd to use and *ret_owned
 * to whether the caller closes it; returns true if fd is now cached. */
static bool cache_data_fd(struct lfs_fs *fs, struct lfs_node *node, int fd,
			  int *ret_fd, bool *ret_owned)
{
	int expected = -1;

	*ret_fd = fd;
	*ret_owned = true;
	if (atomic_fetch_add(&fs->n_data_fds, 1) >= fs->config.max_data_fds) {
		atomic_fetch_sub(&fs->n_data_fds, 1);
		return false;
	}
	if (atomic_compare_exchange_strong(&node->data_fd, &expected, fd)) {
		*ret_owned = false;
		return true;
	}
	atomic_fetch_sub(&fs->n_data_fds, 1);
	close(fd);
	*ret_fd = expected;
	*ret_owned = false;
	return false;
}

/*
 * The slow path of lfs_data_fd and lfs_write_fd: open node's data and
 * cache the fd.  Under the ns read lock, so no copy-up moves the data
 * between the open and the caching (lfs_node_data_moved runs under the
 * write lock and fixes what was cached before it).
 */
static int open_data_fd(struct lfs_fs *fs, struct lfs_node *node, bool write,
			int *ret_fd, bool *ret_owned)
{
	const int common = O_NOFOLLOW | O_CLOEXEC;
	int fd, r = 0;

	lfs_ns_rdlock(fs);
	bool upper = data_in_upper(fs, node);
	if (write && !upper) {
		r = -ESTALE;    /* an orphan never copied up */
		goto out;
	}
	fd = open_object(fs, node, (upper ? O_RDWR : O_RDONLY) | common);
	if (fd >= 0) {
		if (cache_data_fd(fs, node, fd, ret_fd, ret_owned) && upper)
			atomic_store(&node->data_fd_writable, true);
		else if (write && !*ret_owned &&
			 !atomic_load(&node->data_fd_writable))
			r = -EAGAIN;    /* another's read-only fd: see below */
	} else if (!write && write_refused(fd)) {
		fd = open_object(fs, node, O_RDONLY | common);
		*ret_fd = fd;
		*ret_owned = true;
	}
	if (fd < 0)
		r = fd;
out:
	lfs_ns_unlock(fs);
	return r;
}

int lfs_data_fd(struct lfs_fs *fs, struct lfs_node *node, int *ret_fd,
		bool *ret_owned)
{
	int fd = atomic_load_explicit(&node->data_fd, memory_order_acquire);

	if (fd >= 0) {
		*ret_fd = fd;
		*ret_owned = false;
		return 0;
	}
	if (fs->writable && node->layer > 0 && node->type == DT_REG) {
		/* Reading a lower hard link another name has copied up? */
		struct stat st;
		int r = lfs_getattr(fs, node, &st);
		if (r < 0)
			return r;
	}
	return open_data_fd(fs, node, false, ret_fd, ret_owned);
}

/* A read-write fd of its own on node's upper data (ns lock not held). */
static int open_own_write_fd(struct lfs_fs *fs, struct lfs_node *node,
			     int *ret_fd, bool *ret_owned)
{
	lfs_ns_rdlock(fs);
	int fd = data_in_upper(fs, node)
			 ? open_object(fs, node, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
			 : -ESTALE;
	lfs_ns_unlock(fs);
	*ret_fd = fd;
	*ret_owned = true;
	return fd < 0 ? fd : 0;
}

int lfs_write_fd(struct lfs_fs *fs, struct lfs_node *node, int *ret_fd,
		 bool *ret_owned)
{
	int fd, r;

	if (!fs->writable)
		return -EROFS;
	if (node->type != DT_REG)
		return -EBADF;
	lfs_ns_rdlock(fs);
	bool upper = data_in_upper(fs, node);
	bool orphan = node->is_orphan;
	/* Once the data is up, the cached fd never changes again. */
	fd = atomic_load(&node->data_fd);
	bool usable = upper && fd >= 0 && atomic_load(&node->data_fd_writable);
	lfs_ns_unlock(fs);
	if (usable) {
		*ret_fd = fd;
		*ret_owned = false;
		return 0;
	}
	if (!upper) {
		r = orphan ? lfs_copy_up_orphan(fs, node)
			   : lfs_copy_up(fs, node, true);
		if (r < 0)
			return r;
	}
	r = open_data_fd(fs, node, true, ret_fd, ret_owned);
	/* The cached fd is read-only (the daemon could not open it for
	 * writing then): try a read-write one of this write's own. */
	if (r == -EAGAIN)
		r = open_own_write_fd(fs, node, ret_fd, ret_owned);
	return r;
}

void lfs_adopt_data_fd(struct lfs_fs *fs, struct lfs_node *node, int fd)
{
	bool owned;
	int use;

	if (cache_data_fd(fs, node, fd, &use, &owned))
		atomic_store(&node->data_fd_writable, true);
	else if (owned)
		close(fd);
}

int lfs_fsync(struct lfs_fs *fs, struct lfs_node *node, bool datasync)
{
	bool owned;
	int fd, r;

	lfs_ns_rdlock(fs);
	bool upper = data_in_upper(fs, node);
	lfs_ns_unlock(fs);
	if (!upper || node->type != DT_REG)
		return 0;    /* lower layers are never written */
	r = lfs_data_fd(fs, node, &fd, &owned);
	if (r < 0)
		return r;
	r = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	if (owned)
		close(fd);
	return r;
}

void lfs_node_data_moved(struct lfs_fs *fs, struct lfs_node *node)
{
	int old = atomic_load(&node->data_fd);
	int fd;

	if (old < 0)
		return;
	if (node->type != DT_REG) {
		lfs_node_close_data_fd(fs, node);
		return;
	}
	/* Metadata copied up, data still below: the fd reads the right copy. */
	if (!data_in_upper(fs, node))
		return;
	fd = open_object(fs, node, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	atomic_store(&node->data_fd_writable, fd >= 0);
	if (write_refused(fd))
		fd = open_object(fs, node, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 && dup3(fd, old, O_CLOEXEC) == old) {
		close(fd);
		return;
	}
	if (fd >= 0)
		close(fd);
	/* Out of fds, most likely.  The old number may be in use by a read
	 * right now, so it is not closed: it leaks, and the next request
	 * opens the upper copy again. */
	atomic_store(&node->data_fd_writable, false);
	atomic_store(&node->data_fd, -1);
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
