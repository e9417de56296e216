/*
 * xattr.c - extended attributes of merged objects.
 *
 * Values come from the providing layer's object.  The overlay's own
 * bookkeeping xattrs ({trusted,user}.overlay.*) describe the layers, not
 * the file, so they are neither listed nor readable through the merge.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/xattr.h>

#include "layerfs_i.h"

static const char *const private_prefixes[] = {
	"trusted.overlay.",
	"user.overlay.",
	"user.fuseoverlayfs.",    /* an upper written by fuse-overlayfs */
	/* xattr_permissions' records of owner and mode (owner.c) */
	"security.fuseoverlayfs.override_stat",
	"user.containers.override_stat",
};

bool lfs_xattr_is_acl(const char *name)
{
	return strncmp(name, "system.posix_acl_", 17) == 0;
}

bool lfs_xattr_is_private(const char *name)
{
	for (size_t i = 0;
	     i < sizeof(private_prefixes) / sizeof(*private_prefixes); i++)
		if (strncmp(name, private_prefixes[i],
			    strlen(private_prefixes[i])) == 0)
			return true;
	return false;
}

/*
 * Where node's xattrs are read, decided under the ns lock and used after
 * it (a rename meanwhile makes a path-based call fail, as a rename racing
 * a path-based call does anywhere):
 * - a regular file's cached data fd, where it names the object (metadata
 *   and data in one layer): no path to walk.  The kernel asks for
 *   security.capability before every write, so this is the write path.
 * - else its layer root and path, through getxattrat(2)/listxattrat(2)
 *   (Linux 6.13), which walk only that path: 1.5 us a call here, against
 *   4 us through /proc/self/fd/<root>/<path>.  A build's diff asks this
 *   for every file of two trees.
 * - else (an older kernel, an orphan) that /proc path; an orphan's is its
 *   /proc/self/fd link, followed (the l* calls would act on the link).
 */
struct xattr_src {
	int fd;                /* borrowed, or -1 */
	int dir_fd;            /* layer root for rel, or -1 */
	char rel[PATH_MAX];
	bool follow;           /* path is a link to follow */
	char path[PATH_MAX];
};

#ifndef SYS_getxattrat
#define SYS_getxattrat 464    /* the same number on every architecture */
#endif
#ifndef SYS_listxattrat
#define SYS_listxattrat 465
#endif

/* struct xattr_args of <linux/xattr.h>, which Debian 12's headers lack. */
struct lfs_xattr_args {
	uint64_t value;
	uint32_t size;
	uint32_t flags;
};

static atomic_bool no_xattrat;    /* the kernel said ENOSYS once */

static int xattr_src_of(struct lfs_fs *fs, struct lfs_node *node,
			struct xattr_src *s)
{
	int r = 0;

	s->dir_fd = -1;
	s->follow = false;
	lfs_ns_rdlock(fs);
	/* A copy-up moves layer and fd together under the write lock; the
	 * fd, once borrowed, stays open while the node lives. */
	s->fd = atomic_load(&node->data_fd);
	if (node->type != DT_REG || lfs_node_data_layer(node) != node->layer)
		s->fd = -1;
	if (s->fd >= 0) {
		/* nothing more */
	} else if (node->is_orphan) {
		s->follow = true;
		r = node->orphan_fd < 0 ? -ESTALE
					: lfs_proc_path(s->path, node->orphan_fd,
							"");
	} else if ((r = lfs_node_path(node, s->rel, sizeof(s->rel))) == 0) {
		s->dir_fd = fs->stack->layers[node->layer].root_fd;
		r = lfs_proc_path(s->path, s->dir_fd, s->rel);
	}
	lfs_ns_unlock(fs);
	return r;
}

/* Whether to try the *xattrat call; false after the kernel said ENOSYS
 * (r is its result, checked by the caller). */
static bool use_xattrat(const struct xattr_src *s)
{
	return s->dir_fd >= 0 && !atomic_load_explicit(&no_xattrat,
						       memory_order_relaxed);
}

static bool xattrat_missing(ssize_t r)
{
	if (r >= 0 || errno != ENOSYS)
		return false;
	atomic_store(&no_xattrat, true);
	return true;
}

static ssize_t src_getxattr(const struct xattr_src *s, const char *name,
			    void *value, size_t size)
{
	if (s->fd >= 0)
		return fgetxattr(s->fd, name, value, size);
	if (use_xattrat(s)) {
		struct lfs_xattr_args args = {
			.value = (uint64_t)(uintptr_t)value,
			.size = (uint32_t)size,
		};
		ssize_t r = syscall(SYS_getxattrat, s->dir_fd, s->rel,
				    AT_SYMLINK_NOFOLLOW, name, &args,
				    sizeof(args));
		if (!xattrat_missing(r))
			return r;
	}
	return s->follow ? getxattr(s->path, name, value, size)
			 : lgetxattr(s->path, name, value, size);
}

static ssize_t src_listxattr(const struct xattr_src *s, char *list,
			     size_t size)
{
	if (s->fd >= 0)
		return flistxattr(s->fd, list, size);
	if (use_xattrat(s)) {
		ssize_t r = syscall(SYS_listxattrat, s->dir_fd, s->rel,
				    AT_SYMLINK_NOFOLLOW, list, size);
		if (!xattrat_missing(r))
			return r;
	}
	return s->follow ? listxattr(s->path, list, size)
			 : llistxattr(s->path, list, size);
}

ssize_t lfs_getxattr(struct lfs_fs *fs, struct lfs_node *node,
		     const char *name, void *value, size_t size)
{
	struct xattr_src src;
	ssize_t len;
	int r;

	if (fs->config.noxattrs)
		return -EOPNOTSUPP;
	if (lfs_xattr_is_private(name) ||
	    (fs->config.noacl && lfs_xattr_is_acl(name)))
		return -ENODATA;
	r = xattr_src_of(fs, node, &src);
	if (r < 0)
		return r;
	len = src_getxattr(&src, name, value, size);
	return len < 0 ? -errno : len;
}

/* Drop the private names (and ACLs with noacl) from a list of
 * NUL-terminated names, in place. */
static size_t filter_private(char *list, size_t len, bool noacl)
{
	size_t out = 0;

	for (size_t in = 0; in < len;) {
		size_t n = strnlen(list + in, len - in) + 1;
		if (!lfs_xattr_is_private(list + in) &&
		    !(noacl && lfs_xattr_is_acl(list + in))) {
			memmove(list + out, list + in, n);
			out += n;
		}
		in += n;
	}
	return out;
}

ssize_t lfs_listxattr(struct lfs_fs *fs, struct lfs_node *node, char *list,
		      size_t size)
{
	struct xattr_src src;
	char *buf = NULL;
	ssize_t len;
	int r;

	if (fs->config.noxattrs)
		return -EOPNOTSUPP;
	r = xattr_src_of(fs, node, &src);

	if (r < 0)
		return r;
	/* The filtered list can be shorter than the real one, so the real
	 * one is always read in full, even when only the size is asked. */
	for (;;) {
		len = src_listxattr(&src, NULL, 0);
		if (len <= 0) {
			r = len < 0 ? -errno : 0;
			free(buf);
			return r;
		}
		char *grown = realloc(buf, (size_t)len);
		if (!grown) {
			free(buf);
			return -ENOMEM;
		}
		buf = grown;
		ssize_t got = src_listxattr(&src, buf, (size_t)len);
		if (got >= 0) {
			len = got;
			break;
		}
		if (errno != ERANGE) {
			r = -errno;
			free(buf);
			return r;
		}
	}
	len = (ssize_t)filter_private(buf, (size_t)len, fs->config.noacl);
	if (size > 0) {
		if ((size_t)len > size)
			len = -ERANGE;
		else
			memcpy(list, buf, (size_t)len);
	}
	free(buf);
	return len;
}
