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

void lfs_present_stat(struct lfs_fs *fs, int dir_fd, const char *rel,
		      struct stat *st)
{
	const struct lfs_owner_policy *owner = fs->config.owner;
	char path[PATH_MAX];

	if (owner) {
		/* xattr_permissions: owner and mode as recorded, if they are */
		if (owner->override_xattr &&
		    lfs_proc_path(path, dir_fd, rel) == 0)
			lfs_owner_read_override(owner, path, !*rel, st);
		lfs_owner_show(owner, st);
	}
	if (fs->config.static_nlink && S_ISDIR(st->st_mode))
		st->st_nlink = 1;
}

/* Attributes of the object that node's top-most layer provides. */
static int node_stat(struct lfs_fs *fs, struct lfs_node *node,
		     struct stat *ret_st)
{
	char path[PATH_MAX] = ".";
	struct stat st;
	int r;

	/* A layer's recorded attributes spare reading its inode: after a
	 * cache drop that is most of what a stat costs. */
	if (node->is_orphan) {
		if (node->orphan_fd < 0 ||
		    fstatat(node->orphan_fd, "", &st, AT_EMPTY_PATH) < 0)
			return -ESTALE;
	} else if (node->stat_rec) {
		lfs_layercache_decode_stat(node->stat_rec, &st);
		lfs_count(fs, LFS_C_STATS_CACHED, 1);
		lfs_stats_layer(fs, node->layer);
	} else {
		lfs_count(fs, LFS_C_OBJECT_STATS, 1);
		lfs_stats_layer(fs, node->layer);
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
	else if (fs->writable && node->layer == 0 && st.st_nlink > 1)
		lfs_fix_indexed_nlink(fs, node, path, &st);
	if (fs->config.owner || fs->config.static_nlink) {
		/* The path was not needed for recorded attributes. */
		if (node->is_orphan)
			lfs_present_stat(fs, node->orphan_fd, "", &st);
		else if (node->stat_rec &&
			 lfs_node_path(node, path, sizeof(path)) < 0)
			return -ENAMETOOLONG;
		else
			lfs_present_stat(fs, fs->stack->layers[node->layer].root_fd,
					 path, &st);
	}
	*ret_st = st;
	return 0;
}

int lfs_getattr_locked(struct lfs_fs *fs, struct lfs_node *node,
		       struct stat *ret_st)
{
	return node_stat(fs, node, ret_st);
}

int lfs_getattr(struct lfs_fs *fs, struct lfs_node *node, struct stat *ret_st)
{
	lfs_ns_rdlock(fs);
	int r = node_stat(fs, node, ret_st);
	lfs_ns_unlock(fs);
	/* Another name of this lower hard link was copied up: so is this. */
	if (r == 0 && lfs_copy_up_if_linked(fs, node, ret_st) > 0) {
		lfs_ns_rdlock(fs);
		r = node_stat(fs, node, ret_st);
		lfs_ns_unlock(fs);
	}
	return r;
}

int lfs_lookup_locked(struct lfs_fs *fs, struct lfs_node *parent,
		      const char *name, struct lfs_node **ret_node,
		      struct stat *ret_st)
{
	struct lfs_dirindex *index;
	struct lfs_node *child = NULL;
	struct lfs_entry *e;
	int r;

	if (lfs_whiteout_is_reserved_name(name)) {
		lfs_count(fs, LFS_C_LOOKUP_NEG, 1);
		return -ENOENT;
	}
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (atomic_load_explicit(&parent->index, memory_order_relaxed))
		lfs_count(fs, LFS_C_INDEX_ANSWERS, 1);
	r = lfs_node_index(fs, parent, &index);
	if (r < 0)
		return r;
	e = lfs_dirindex_find(index, name);
	if (!e || e->is_whiteout) {
		lfs_count(fs, LFS_C_LOOKUP_NEG, 1);
		return -ENOENT;
	}
	lfs_count(fs, LFS_C_LOOKUP_POS, 1);

	r = lfs_node_child(fs, parent, e, &child);
	if (r < 0)
		return r;

	r = node_stat(fs, child, ret_st);
	if (r < 0) {
		lfs_node_unref_locked(fs, child, 1);
		return r;
	}
	*ret_node = child;
	return 0;
}

int lfs_lookup(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       struct lfs_node **ret_node, struct stat *ret_st)
{
	struct lfs_node *node;
	struct stat st;

	lfs_ns_rdlock(fs);
	int r = lfs_lookup_locked(fs, parent, name, &node, &st);
	lfs_ns_unlock(fs);
	if (r < 0)
		return r;
	r = lfs_copy_up_if_linked(fs, node, &st);
	if (r > 0)
		r = lfs_getattr(fs, node, &st);
	if (r < 0) {
		lfs_node_unref(fs, node, 1);
		return r;
	}
	*ret_node = node;
	*ret_st = st;
	return 0;
}
