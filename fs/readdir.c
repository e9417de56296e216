/*
 * readdir.c - listing a merged directory.
 *
 * The listing is the directory index's visible entries, in the index's
 * fixed order, after "." and "..".  An offset is a position in that list,
 * so it stays valid across calls and across opens: the index of a
 * read-only merge never changes once built.
 */
#include <errno.h>
#include <stdlib.h>

#include "layerfs_i.h"

struct lfs_dir {
	struct lfs_fs *fs;             /* borrowed */
	struct lfs_node *node;         /* holds one reference */
};

int lfs_opendir(struct lfs_fs *fs, struct lfs_node *node, struct lfs_dir **ret)
{
	struct lfs_dirindex *index;
	struct lfs_dir *dir;
	int r = lfs_node_index(fs, node, &index);

	if (r < 0)
		return r;
	dir = malloc(sizeof(*dir));
	if (!dir)
		return -ENOMEM;
	lfs_node_ref(fs, node);
	dir->fs = fs;
	dir->node = node;
	*ret = dir;
	return 0;
}

void lfs_closedir(struct lfs_fs *fs, struct lfs_dir *dir)
{
	if (!dir)
		return;
	lfs_node_unref(fs, dir->node, 1);
	free(dir);
}

int lfs_readdir_at(struct lfs_dir *dir, off_t off, struct lfs_dirent *ret)
{
	return lfs_readdir_node(dir->fs, dir->node, off, ret);
}

int lfs_readdir_node(struct lfs_fs *fs, struct lfs_node *node, off_t off,
		     struct lfs_dirent *ret)
{
	struct lfs_dirindex *index;
	int r;

	if (off < 0)
		return -EINVAL;
	if (off < 2) {
		struct lfs_node *target = off == 0 || !node->parent
						  ? node : node->parent;
		ret->name = off == 0 ? "." : "..";
		ret->ino = target->ino;
		ret->type = DT_DIR;
		ret->next_off = off + 1;
		return 1;
	}
	r = lfs_node_index(fs, node, &index);
	if (r < 0)
		return r;
	if ((size_t)(off - 2) >= index->n_visible)
		return 0;
	const struct lfs_entry *e = index->visible[off - 2];
	ret->name = e->name;
	ret->ino = lfs_fs_ino(fs, e->layer, e->real_ino);
	ret->type = e->type;
	ret->next_off = off + 1;
	return 1;
}
