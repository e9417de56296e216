/*
 * xattr.c - extended attributes of merged objects.
 *
 * Values come from the providing layer's object.  The overlay's own
 * bookkeeping xattrs ({trusted,user}.overlay.*) describe the layers, not
 * the file, so they are neither listed nor readable through the merge.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
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

/* The path of node's object for the *xattr(2) calls: taken under the ns
 * lock, used after it (a rename meanwhile makes the call fail, as a
 * rename racing a path-based call does anywhere). */
static int node_proc_path(struct lfs_fs *fs, struct lfs_node *node,
			  char buf[PATH_MAX], bool *ret_follow)
{
	char rel[PATH_MAX];
	int r;

	/* An orphan's path is its /proc/self/fd link, to be followed (the
	 * l* calls would act on the link itself). */
	*ret_follow = node->is_orphan;
	lfs_ns_rdlock(fs);
	if (node->is_orphan)
		r = node->orphan_fd < 0 ? -ESTALE
					: lfs_proc_path(buf, node->orphan_fd, "");
	else if ((r = lfs_node_path(node, rel, sizeof(rel))) == 0)
		r = lfs_proc_path(buf, fs->stack->layers[node->layer].root_fd,
				  rel);
	lfs_ns_unlock(fs);
	return r;
}

/* Where node's xattrs are read: its cached data fd where that names the
 * object (a regular file whose metadata and data are in one layer), with
 * no path to walk, else its path.  The kernel asks security.capability
 * before every write, so this is on the write path. */
struct xattr_src {
	int fd;                /* borrowed, or -1: use path */
	bool follow;
	char path[PATH_MAX];
};

static int xattr_src_of(struct lfs_fs *fs, struct lfs_node *node,
			struct xattr_src *s)
{
	lfs_ns_rdlock(fs);
	/* A copy-up moves layer and fd together under the write lock; the
	 * fd, once borrowed, stays open while the node lives. */
	s->fd = atomic_load(&node->data_fd);
	if (node->type != DT_REG || lfs_node_data_layer(node) != node->layer)
		s->fd = -1;
	lfs_ns_unlock(fs);
	if (s->fd >= 0)
		return 0;
	return node_proc_path(fs, node, s->path, &s->follow);
}

static ssize_t src_getxattr(const struct xattr_src *s, const char *name,
			    void *value, size_t size)
{
	if (s->fd >= 0)
		return fgetxattr(s->fd, name, value, size);
	return s->follow ? getxattr(s->path, name, value, size)
			 : lgetxattr(s->path, name, value, size);
}

static ssize_t src_listxattr(const struct xattr_src *s, char *list,
			     size_t size)
{
	if (s->fd >= 0)
		return flistxattr(s->fd, list, size);
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
