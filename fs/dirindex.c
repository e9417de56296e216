/*
 * dirindex.c - the index of one merged directory: name -> providing layer.
 *
 * Built once per merged directory from one readdir of each contributing
 * layer, top-most first, so that every later lookup in the directory -
 * positive or negative - is one hash probe, whatever the depth of the
 * stack.  The merge rules applied here are README.md's "Union rules":
 *   - the first layer (top-most) to show a name provides it;
 *   - a whiteout hides the name in every layer below it;
 *   - a directory merges with same-named directories below it down to a
 *     non-directory or whiteout of that name (merge_limit), and its own
 *     index later stops at the first opaque layer.
 * Whiteouts stay in the hash (they answer negative lookups) but not in the
 * visible list that a read-only mount's readdir walks.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerfs_i.h"

_Thread_local bool lfs_hash_oom;

struct lfs_entry *lfs_dirindex_find(const struct lfs_dirindex *index,
				    const char *name)
{
	struct lfs_entry *e = NULL;

	HASH_FIND_STR(index->by_name, name, e);
	return e;
}

static int layer_list_append(struct lfs_layer_list *list, uint32_t layer)
{
	/* Grow at powers of two: most lists hold one or two layers. */
	if ((list->n & (list->n - 1)) == 0) {
		uint32_t cap = list->n ? list->n * 2 : 1;
		uint32_t *grown = realloc(list->layers, cap * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		list->layers = grown;
	}
	list->layers[list->n++] = layer;
	return 0;
}

static int entry_add(struct lfs_dirindex *index,
		     const struct lfs_classified *c, struct lfs_entry **ret)
{
	size_t len = strlen(c->name);
	struct lfs_entry *e = calloc(1, sizeof(*e) + len + 1);

	if (!e)
		return -ENOMEM;
	e->merge_limit = UINT32_MAX;
	memcpy(e->name, c->name, len + 1);
	lfs_hash_oom = false;
	HASH_ADD_KEYPTR(hh, index->by_name, e->name, len, e);
	if (lfs_hash_oom) {
		free(e);
		return -ENOMEM;
	}
	if (index->n_order == index->cap_order) {
		size_t cap = index->cap_order ? index->cap_order * 2 : 16;
		struct lfs_entry **grown = realloc(index->order,
						   cap * sizeof(*grown));
		if (!grown) {
			HASH_DEL(index->by_name, e);
			free(e);
			return -ENOMEM;
		}
		index->order = grown;
		index->cap_order = cap;
	}
	index->order[index->n_order++] = e;
	index->n_entries++;
	index->bytes += sizeof(*e) + len + 1;
	*ret = e;
	return 0;
}

/* Make e describe what layer shows; e was just added or was a whiteout of
 * the same layer that a real entry now overrides. */
static int entry_set_object(struct lfs_entry *e,
			    const struct lfs_classified *c, uint32_t layer,
			    uint64_t real_ino)
{
	e->is_whiteout = false;
	e->layer = layer;
	e->type = c->type;
	e->real_ino = real_ino;
	e->stat_rec = c->stat_rec;
	if (c->type == DT_DIR)
		return layer_list_append(&e->dir_layers, layer);
	return 0;
}

/* Record what the top-most layer below layer 0 says of the name: were the
 * upper layer silent, would the name show?  (Only writable mounts, whose
 * layer 0 is the upper, use the answer.)  Within one layer an object wins
 * over a whiteout of the same name, whichever readdir returned first. */
static void note_lower(struct lfs_entry *e, bool is_whiteout, uint32_t layer)
{
	if (layer == 0)
		return;
	if (e->lower_layer == 0) {
		e->lower_layer = layer;
		e->lower_visible = !is_whiteout;
	} else if (e->lower_layer == layer && !is_whiteout) {
		e->lower_visible = true;
	}
}

/* Apply one entry of `layer` to the index (layers arrive top-most first). */
static int index_apply(struct lfs_dirindex *index,
		       const struct lfs_classified *c, uint32_t layer,
		       uint64_t real_ino)
{
	struct lfs_entry *e = lfs_dirindex_find(index, c->name);
	bool is_whiteout = c->kind == LFS_ENTRY_WHITEOUT;
	int r;

	if (!e) {
		r = entry_add(index, c, &e);
		if (r < 0)
			return r;
		note_lower(e, is_whiteout, layer);
		if (is_whiteout) {
			e->is_whiteout = true;
			e->upper_whiteout = layer == 0;
			e->layer = layer;
			return 0;
		}
		return entry_set_object(e, c, layer, real_ino);
	}
	note_lower(e, is_whiteout, layer);
	if (e->is_whiteout && e->layer == layer && !is_whiteout) {
		/* Both "x" and ".wh.x" in one layer: the whiteout applies to
		 * the layers below, the real entry is what this layer shows. */
		r = entry_set_object(e, c, layer, real_ino);
		e->merge_limit = layer;
		e->upper_whiteout = false;
		return r;
	}
	/* Otherwise only a directory still merging cares. */
	if (e->is_whiteout || e->type != DT_DIR || layer > e->merge_limit)
		return 0;
	if (is_whiteout) {
		/* Hides the layers below; this layer's own "x" still counts,
		 * whichever of the two readdir returned first. */
		e->merge_limit = layer;
		return 0;
	}
	if (c->type != DT_DIR) {
		e->merge_limit = layer - 1;    /* layer > e->layer >= 0 */
		return 0;
	}
	if (layer == e->layer)
		return 0;
	return layer_list_append(&e->dir_layers, layer);
}

/* Read one layer's copy of the directory from its index cache. */
static int index_read_cached(struct lfs_dirindex *index,
			     const struct lfs_layercache *cache, uint32_t layer,
			     const char *relpath, bool is_root,
			     bool *ret_opaque)
{
	struct lfs_cached_dir dir;
	struct lfs_classified c;
	uint64_t ino;
	int r;

	if (!lfs_layercache_find_dir(cache, relpath, &dir))
		return 0;    /* as a live read finding no directory */
	while (lfs_cached_dir_next(&dir, &c, &ino) > 0) {
		r = index_apply(index, &c, layer, ino);
		if (r < 0)
			return r;
	}
	*ret_opaque = dir.opaque && !is_root;
	return 0;
}

/* Read one layer's copy of the directory into the index. */
static int index_read_layer(struct lfs_dirindex *index,
			    const struct lfs_layer *L, uint32_t layer,
			    const char *relpath, bool is_root,
			    bool *ret_opaque)
{
	int fd = openat(L->root_fd, relpath,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct lfs_dir_marks marks;
	bool opaque;
	int r;

	if (fd < 0) {
		/* The parent saw a directory here; a layer changed under us. */
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	}
	r = lfs_whiteout_read_dir_marks(fd, &marks);
	if (r < 0) {
		close(fd);
		return r;
	}
	opaque = marks.opaque;

	DIR *dir = fdopendir(fd);
	if (!dir) {
		r = -errno;
		close(fd);
		return r;
	}
	struct dirent *de;
	for (errno = 0; (de = readdir(dir)) != NULL; errno = 0) {
		const char *name = de->d_name;
		struct lfs_classified c;

		if (name[0] == '.' && (name[1] == '\0' ||
				       (name[1] == '.' && name[2] == '\0')))
			continue;
		r = lfs_whiteout_classify(dirfd(dir), &marks, name,
					  de->d_type, &c);
		if (r == -ENOENT)
			continue;
		if (r < 0)
			goto out;
		if (c.kind == LFS_ENTRY_OPAQUE_MARK) {
			opaque = true;
			continue;
		}
		if (c.kind == LFS_ENTRY_IGNORED)
			continue;
		r = index_apply(index, &c, layer, de->d_ino);
		if (r < 0)
			goto out;
	}
	r = errno ? -errno : 0;
out:
	closedir(dir);
	if (r == 0)
		*ret_opaque = opaque && !is_root;
	return r;
}

/* A read-only index never changes: its insertion order, whiteouts left
 * out, becomes the visible list in place.  A writable one keeps the whole
 * order, which its listings walk (readdir.c). */
static void index_make_visible_list(struct lfs_dirindex *index)
{
	size_t n = 0;

	for (size_t i = 0; i < index->n_order; i++)
		if (!index->order[i]->is_whiteout)
			index->order[n++] = index->order[i];
	if (n == 0) {
		free(index->order);
		index->visible = NULL;
	} else {
		/* Give back the growth slack: the list lives as long as the
		 * index.  Keep the larger array if shrinking fails. */
		struct lfs_entry **fitted = realloc(index->order,
						    n * sizeof(*fitted));
		index->visible = fitted ? fitted : index->order;
	}
	index->n_visible = n;
	index->order = NULL;
	index->n_order = index->cap_order = 0;
}

int lfs_dirindex_build(struct lfs_fs *fs, const char *relpath,
		       const struct lfs_layer_list *candidates, bool is_root,
		       struct lfs_dirindex **ret)
{
	const struct lfs_stack *stack = fs->stack;
	struct lfs_dirindex *index = calloc(1, sizeof(*index));
	int r = 0;

	if (!index)
		return -ENOMEM;
	for (uint32_t i = 0; i < candidates->n; i++) {
		uint32_t layer = candidates->layers[i];
		bool opaque = false;

		struct lfs_layercache *cache = lfs_fs_layercache(fs, layer);
		lfs_count(fs, cache ? LFS_C_DIR_CACHE_READS : LFS_C_DIR_READS, 1);
		lfs_stats_layer(fs, layer);
		r = cache ? index_read_cached(index, cache, layer, relpath,
					      is_root, &opaque)
			  : index_read_layer(index, &stack->layers[layer], layer,
					     relpath, is_root, &opaque);
		if (r < 0)
			goto fail;
		index->n_layers_read = i + 1;
		if (opaque)
			break;
	}
	/* Upper copies report their lower origin's st_ino (copyup.c). */
	if (fs->writable && candidates->n > 0 && candidates->layers[0] == 0)
		lfs_read_origins(fs, relpath, index);
	if (!fs->writable)
		index_make_visible_list(index);
	lfs_count(fs, LFS_C_INDEX_BUILT, 1);
	lfs_count(fs, LFS_C_INDEX_ENTRIES, index->n_entries);
	lfs_count(fs, LFS_C_INDEX_BYTES,
		  index->bytes + (index->n_visible + index->cap_order) *
					 sizeof(void *));
	*ret = index;
	return 0;
fail:
	lfs_dirindex_free(index);
	return r;
}

void lfs_dirindex_free(struct lfs_dirindex *index)
{
	struct lfs_entry *e, *tmp;

	if (!index)
		return;
	HASH_ITER(hh, index->by_name, e, tmp) {
		HASH_DEL(index->by_name, e);
		free(e->dir_layers.layers);
		free(e);
	}
	free(index->visible);
	free(index->order);
	free(index);
}

/* ------------------------------------------------------------------ */
/* Changes, on writable mounts (fs->ns_lock held for writing)          */

int lfs_dirindex_put_upper(struct lfs_dirindex *index, const char *name,
			   unsigned char type, uint64_t real_ino,
			   struct lfs_entry **ret)
{
	struct lfs_entry *e = lfs_dirindex_find(index, name);
	int r;

	if (!e) {
		struct lfs_classified c = { .name = name, .type = type };
		r = entry_add(index, &c, &e);
		if (r < 0)
			return r;
	}
	e->is_whiteout = false;
	e->upper_whiteout = false;
	e->layer = 0;
	e->type = type;
	e->real_ino = real_ino;
	e->stat_rec = NULL;
	e->ino_override = 0;
	e->data_layer = 0;
	e->merge_limit = 0;
	e->dir_layers.n = 0;
	if (type == DT_DIR) {
		r = layer_list_append(&e->dir_layers, 0);
		if (r < 0)
			return r;
	}
	*ret = e;
	return 0;
}

int lfs_entry_copied_up(struct lfs_entry *e, uint64_t upper_ino,
			uint64_t reported_ino)
{
	if (e->type == DT_DIR) {
		/* The new upper copy merges on top of the lower ones. */
		int r = layer_list_append(&e->dir_layers, 0);
		if (r < 0)
			return r;
		memmove(e->dir_layers.layers + 1, e->dir_layers.layers,
			(e->dir_layers.n - 1) * sizeof(uint32_t));
		e->dir_layers.layers[0] = 0;
	}
	e->layer = 0;
	e->real_ino = upper_ino;
	e->ino_override = reported_ino;
	e->stat_rec = NULL;
	return 0;
}

void lfs_entry_hide(struct lfs_entry *e, bool upper_whiteout)
{
	e->is_whiteout = true;
	e->upper_whiteout = upper_whiteout;
	e->layer = 0;
	e->ino_override = 0;
	e->data_layer = 0;
	e->stat_rec = NULL;
	e->dir_layers.n = 0;
	e->node = NULL;
}

void lfs_dirindex_drop_lower(struct lfs_dirindex *index,
			     struct lfs_entry *dir_entry)
{
	struct lfs_entry *e, *tmp;

	HASH_ITER(hh, index->by_name, e, tmp) {
		e->lower_visible = false;
		if (e->is_whiteout && e->layer > 0)
			e->layer = 0;
	}
	index->n_layers_read = 1;
	if (dir_entry && dir_entry->dir_layers.n > 1)
		dir_entry->dir_layers.n = 1;    /* [0] is the upper */
}

bool lfs_dirindex_is_empty(const struct lfs_dirindex *index)
{
	struct lfs_entry *e, *tmp;

	HASH_ITER(hh, index->by_name, e, tmp)
		if (!e->is_whiteout)
			return false;
	return true;
}

uint64_t lfs_entry_ino(struct lfs_fs *fs, const struct lfs_entry *e)
{
	return e->ino_override ? e->ino_override
			       : lfs_fs_ino(fs, e->layer, e->real_ino);
}
