/*
 * readdir.c - listing a merged directory.
 *
 * The listing is the directory index's visible entries, in the index's
 * fixed order, after "." and "..".  An offset is a position in that list,
 * so it stays valid across calls and across opens: the index of a
 * read-only merge never changes once built.
 *
 * On a writable mount the index changes.  Listings without a handle walk
 * the index's insertion order, hidden entries skipped: an entry keeps its
 * place for the index's life (names removed stay as hidden entries, new
 * ones are appended or take their old name's place), so an offset stays
 * valid however names come and go, and a name present throughout a
 * listing is listed exactly once, as POSIX asks.  A listing through a
 * handle (a kernel that cannot skip OPENDIR) reads a snapshot taken at
 * offset 0 (opendir, rewinddir), as kernel overlayfs caches a merged
 * listing per open directory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layerfs_i.h"

struct snap_entry {
	size_t name_off;               /* in names */
	uint64_t ino;
	unsigned char type;
};

struct lfs_dir {
	struct lfs_fs *fs;             /* borrowed */
	struct lfs_node *node;         /* holds one reference */
	/* Writable mounts: the listing as of the last offset 0. */
	struct snap_entry *snap;       /* owned */
	size_t n_snap;
	char *names;                   /* owned */
	uint64_t parent_ino;
};

/* Take a snapshot of the listing (writable mounts). */
static int dir_snapshot(struct lfs_dir *dir)
{
	struct lfs_fs *fs = dir->fs;
	struct lfs_dirindex *index;
	struct lfs_entry *e, *tmp;
	size_t n = 0, bytes = 0, i = 0, pos = 0;
	int r;

	lfs_ns_rdlock(fs);
	r = dir->node->is_orphan ? 0 : lfs_node_index(fs, dir->node, &index);
	if (r < 0 || dir->node->is_orphan)
		goto out;
	HASH_ITER(hh, index->by_name, e, tmp)
		if (!e->is_whiteout) {
			n++;
			bytes += strlen(e->name) + 1;
		}
	struct snap_entry *snap = malloc((n ? n : 1) * sizeof(*snap));
	char *names = malloc(bytes ? bytes : 1);
	if (!snap || !names) {
		free(snap);
		free(names);
		r = -ENOMEM;
		goto out;
	}
	HASH_ITER(hh, index->by_name, e, tmp) {
		if (e->is_whiteout)
			continue;
		size_t len = strlen(e->name) + 1;
		memcpy(names + pos, e->name, len);
		snap[i].name_off = pos;
		snap[i].ino = lfs_entry_ino(fs, e);
		snap[i].type = e->type;
		pos += len;
		i++;
	}
	free(dir->snap);
	free(dir->names);
	dir->snap = snap;
	dir->names = names;
	dir->n_snap = n;
out:
	if (r == 0 && dir->node->is_orphan) {
		dir->n_snap = 0;    /* removed: only "." and ".." */
	}
	dir->parent_ino = dir->node->parent ? dir->node->parent->ino
					    : dir->node->ino;
	lfs_ns_unlock(fs);
	return r;
}

static int readdir_snapshot(struct lfs_dir *dir, off_t off,
			    struct lfs_dirent *ret)
{
	int r;

	if (off < 0)
		return -EINVAL;
	if (off == 0 || !dir->names) {
		r = dir_snapshot(dir);
		if (r < 0)
			return r;
	}
	if (off < 2) {
		ret->name = off == 0 ? "." : "..";
		ret->ino = off == 0 ? dir->node->ino : dir->parent_ino;
		ret->type = DT_DIR;
		ret->next_off = off + 1;
		return 1;
	}
	if ((size_t)(off - 2) >= dir->n_snap)
		return 0;
	const struct snap_entry *e = &dir->snap[off - 2];
	ret->name = dir->names + e->name_off;
	ret->ino = e->ino;
	ret->type = e->type;
	ret->next_off = off + 1;
	return 1;
}

int lfs_opendir(struct lfs_fs *fs, struct lfs_node *node, struct lfs_dir **ret)
{
	struct lfs_dirindex *index;
	struct lfs_dir *dir;
	int r;

	lfs_ns_rdlock(fs);
	r = node->is_orphan ? 0 : lfs_node_index(fs, node, &index);
	lfs_ns_unlock(fs);
	if (r < 0)
		return r;
	dir = calloc(1, sizeof(*dir));
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
	free(dir->snap);
	free(dir->names);
	free(dir);
}

int lfs_readdir_at(struct lfs_dir *dir, off_t off, struct lfs_dirent *ret)
{
	if (dir->fs->writable)
		return readdir_snapshot(dir, off, ret);
	return lfs_readdir_node(dir->fs, dir->node, off, ret);
}

/* "." (off 0) or ".." (off 1) of node, without a handle.  On a writable
 * mount the caller holds the ns lock: a rename may change node->parent. */
static void dot_entry(const struct lfs_node *node, off_t off,
		      struct lfs_dirent *ret)
{
	const struct lfs_node *target = off == 0 || !node->parent
						? node : node->parent;

	ret->name = off == 0 ? "." : "..";
	ret->ino = target->ino;
	ret->type = DT_DIR;
	ret->next_off = off + 1;
}

/* A writable mount's listing without a handle (see the top). */
static int readdir_live(struct lfs_fs *fs, struct lfs_node *node, off_t off,
			struct lfs_dirent *ret)
{
	struct lfs_dirindex *index;
	size_t pos = (size_t)off - 2;
	int r = 0;

	lfs_ns_rdlock(fs);
	if (off < 2) {
		dot_entry(node, off, ret);
		r = 1;
		goto out;
	}
	if (node->is_orphan)
		goto out;    /* removed: only "." and ".." */
	r = lfs_node_index(fs, node, &index);
	if (r < 0)
		goto out;
	while (pos < index->n_order && index->order[pos]->is_whiteout)
		pos++;
	if (pos >= index->n_order)
		goto out;
	/* The name stays valid after the unlock: entries live as long as
	 * the index, which lives as long as the node the caller holds. */
	const struct lfs_entry *e = index->order[pos];
	ret->name = e->name;
	ret->ino = lfs_entry_ino(fs, e);
	ret->type = e->type;
	ret->next_off = (off_t)pos + 3;
	r = 1;
out:
	lfs_ns_unlock(fs);
	return r;
}

int lfs_readdir_node(struct lfs_fs *fs, struct lfs_node *node, off_t off,
		     struct lfs_dirent *ret)
{
	struct lfs_dirindex *index;
	int r;

	if (off < 0)
		return -EINVAL;
	if (fs->writable)
		return readdir_live(fs, node, off, ret);
	if (off < 2) {
		dot_entry(node, off, ret);
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
