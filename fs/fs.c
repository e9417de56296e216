/*
 * fs.c - one merged filesystem: the layer stack, the root node and the
 * policy decided once at mount.
 */
#include <errno.h>
#include <stdlib.h>

#include "layerfs_i.h"

int lfs_fs_new(struct lfs_fs **ret, struct lfs_stack *stack,
	       const struct lfs_fs_config *config)
{
	struct lfs_fs *fs = calloc(1, sizeof(*fs));
	int r;

	if (!fs)
		return -ENOMEM;
	fs->config = *config;
	fs->all_layers.n = stack->n_layers;
	fs->all_layers.layers = calloc(stack->n_layers,
				       sizeof(*fs->all_layers.layers));
	if (!fs->all_layers.layers) {
		free(fs);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < stack->n_layers; i++)
		fs->all_layers.layers[i] = i;
	r = lfs_inomap_init(&fs->inomap, stack->n_filesystems);
	if (r < 0)
		goto fail;
	fs->stack = stack;
	fs->root = lfs_node_new_root(fs);
	if (!fs->root) {
		r = -ENOMEM;
		lfs_inomap_destroy(&fs->inomap);
		goto fail;
	}
	*ret = fs;
	return 0;
fail:
	free(fs->all_layers.layers);
	free(fs);
	return r;
}

void lfs_fs_free(struct lfs_fs *fs)
{
	if (!fs)
		return;
	/* Nodes the kernel never forgot die with the mount; the caller has
	 * stopped all request threads by now. */
	lfs_node_free_root(fs, fs->root);
	lfs_inomap_destroy(&fs->inomap);
	lfs_stack_free(fs->stack);
	free(fs->all_layers.layers);
	free(fs);
}

struct lfs_node *lfs_fs_root(struct lfs_fs *fs)
{
	return fs->root;
}

const struct lfs_stack *lfs_fs_stack(const struct lfs_fs *fs)
{
	return fs->stack;
}

bool lfs_fs_is_read_only(const struct lfs_fs *fs)
{
	return fs->config.read_only;
}

uint64_t lfs_fs_ino(struct lfs_fs *fs, uint32_t layer, uint64_t real_ino)
{
	return lfs_inomap_get(&fs->inomap, fs->stack->layers[layer].fs_index,
			      real_ino);
}
