/*
 * explain.c - what one layer, on its own, says about a path: the
 * diagnostic side of the union rules (layerctl which).
 *
 * The merged answer comes from lookup.c; this looks at a single layer
 * without the index, so that a person can see every layer that mentions a
 * name: the one that provides it, the copies it shadows, and the whiteouts
 * and opaque directories that hide it.  Not on any hot path.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "layerfs_i.h"

/* Split path into its parent ("." for top level) and last name. */
static int split_path(const char *path, char parent[PATH_MAX],
		      const char **ret_name)
{
	const char *slash = strrchr(path, '/');
	size_t len = slash ? (size_t)(slash - path) : 0;

	if (strlen(path) >= PATH_MAX)
		return -ENAMETOOLONG;
	if (!slash) {
		strcpy(parent, ".");
		*ret_name = path;
		return 0;
	}
	memcpy(parent, path, len);
	parent[len] = '\0';
	*ret_name = slash + 1;
	return 0;
}

/* Does directory dir_fd of a layer carry an OCI opaque marker? */
static bool has_oci_opaque(int dir_fd)
{
	return faccessat(dir_fd, ".wh..wh..opq", F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

int lfs_layer_view(const struct lfs_stack *stack, uint32_t layer,
		   const char *path, struct lfs_layer_view *ret)
{
	struct lfs_layer_view v = { .what = LFS_VIEW_ABSENT };
	char parent[PATH_MAX], oci[NAME_MAX + 1];
	struct lfs_dir_marks marks;
	struct lfs_classified c;
	struct stat st;
	const char *name;
	int fd, r;

	if (layer >= stack->n_layers)
		return -EINVAL;
	while (path[0] == '/')
		path++;
	if (!path[0])
		return -EINVAL;
	r = split_path(path, parent, &name);
	if (r < 0)
		return r;
	fd = openat(stack->layers[layer].root_fd, parent,
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		*ret = v;    /* no such directory in this layer */
		return 0;
	}
	v.parent_exists = true;
	r = lfs_whiteout_read_dir_marks(fd, &marks);
	if (r < 0)
		goto out;
	v.parent_opaque = marks.opaque || has_oci_opaque(fd);
	if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		r = lfs_whiteout_classify(fd, &marks, name, IFTODT(st.st_mode),
					  &c);
		if (r < 0)
			goto out;
		v.type = c.type;
		v.what = c.kind == LFS_ENTRY_WHITEOUT ? LFS_VIEW_WHITEOUT
						      : LFS_VIEW_OBJECT;
		v.format = c.kind != LFS_ENTRY_WHITEOUT ? NULL
			   : S_ISCHR(st.st_mode) ? "character device 0/0"
						 : "overlay.whiteout xattr";
	} else if (snprintf(oci, sizeof(oci), ".wh.%s", name) <
			   (int)sizeof(oci) &&
		   faccessat(fd, oci, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		v.what = LFS_VIEW_WHITEOUT;
		v.format = "OCI .wh. file";
	}
	r = 0;
out:
	close(fd);
	if (r == 0)
		*ret = v;
	return r;
}
