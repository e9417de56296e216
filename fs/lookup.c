/*
 * lookup.c - finding a name in a merged directory, and its attributes.
 *
 * A lookup is one hash probe in the parent's index (built on first use),
 * then one fstatat() in the single layer that provides the name (none when
 * the layer's index cache recorded its attributes): the cost does not grow
 * with the number of layers.  Negative answers (absent,
 * whited out, reserved ".wh." names) cost no syscall at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "layerfs_i.h"

/*
 * A directory merged from several layers has no meaningful link count;
 * like kernel overlayfs, it reports 1 ("unknown" to find(1)).  Whether it
 * is merged depends on its own opacity, which its index knows: a directory
 * with several candidate layers is indexed now, as its first lookup inside
 * would do anyway.
 */
static bool is_merged_dir(struct lfs_fs *fs, struct lfs_node *node)
{
	struct lfs_dirindex *index;

	if (!node->dir_layers || node->dir_layers->n < 2)
		return false;
	/* The root's opacity is ignored: every layer merges into it, and a
	 * stat of the mount (which engines do first) reads no directory. */
	if (!node->parent)
		return true;
	if (lfs_node_index(fs, node, &index) < 0)
		return true;
	return index->n_layers_read > 1;
}

/* Attributes of the object that node's top-most layer provides. */
static int node_stat(struct lfs_fs *fs, struct lfs_node *node,
		     struct stat *ret_st)
{
	char path[PATH_MAX];
	struct stat st;
	int r;

	/* A layer's recorded attributes spare reading its inode: after a
	 * cache drop that is most of what a stat costs. */
	if (node->stat_rec) {
		lfs_layercache_decode_stat(node->stat_rec, &st);
	} else {
		r = lfs_node_path(node, path, sizeof(path));
		if (r < 0)
			return r;
		if (fstatat(fs->stack->layers[node->layer].root_fd, path, &st,
			    AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	st.st_ino = node->ino;
	if (S_ISDIR(st.st_mode) && is_merged_dir(fs, node))
		st.st_nlink = 1;
	*ret_st = st;
	return 0;
}

int lfs_getattr(struct lfs_fs *fs, struct lfs_node *node, struct stat *ret_st)
{
	return node_stat(fs, node, ret_st);
}

/* The live node for entry e of parent, with one new reference. */
static int child_of(struct lfs_fs *fs, struct lfs_node *parent,
		    struct lfs_entry *e, struct lfs_node **ret)
{
	bool created = false;
	int r;

	*ret = NULL;
	/* Usually the kernel asks again for a name it knows: one lock. */
	pthread_mutex_lock(&parent->mu);
	if (e->node) {
		e->node->refs++;
		*ret = e->node;
	}
	pthread_mutex_unlock(&parent->mu);
	if (*ret)
		return 0;
	/* A new child holds a reference on its parent, taken before
	 * parent->mu so that no two node locks are ever held together (see
	 * node.c); given back if another thread created the child first. */
	lfs_node_ref(fs, parent);
	pthread_mutex_lock(&parent->mu);
	r = lfs_node_get_child(fs, parent, e, ret, &created);
	pthread_mutex_unlock(&parent->mu);
	if (r < 0 || !created)
		lfs_node_unref(fs, parent, 1);
	return r;
}

int lfs_lookup(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       struct lfs_node **ret_node, struct stat *ret_st)
{
	struct lfs_dirindex *index;
	struct lfs_node *child = NULL;
	struct lfs_entry *e;
	int r;

	if (lfs_whiteout_is_reserved_name(name))
		return -ENOENT;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	r = lfs_node_index(fs, parent, &index);
	if (r < 0)
		return r;
	e = lfs_dirindex_find(index, name);
	if (!e || e->is_whiteout)
		return -ENOENT;

	r = child_of(fs, parent, e, &child);
	if (r < 0)
		return r;

	r = node_stat(fs, child, ret_st);
	if (r < 0) {
		lfs_node_unref(fs, child, 1);
		return r;
	}
	*ret_node = child;
	return 0;
}
