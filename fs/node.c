/*
 * node.c - merged names: creation, reference counting, paths.
 *
 * A node is one name in the merged tree (parent + name), the unit the
 * kernel looks up and forgets.  Its references are: the kernel's lookup
 * count, one per live child (child->parent), one per open handle.  A node
 * with no references is unlinked from its parent's index entry and freed,
 * and then drops its own reference on the parent.
 *
 * Locking: node->refs is protected by the parent's mu, because the
 * parent's index entry is where lookups find the node; so a lookup that
 * finds a live node and takes a reference, and an unref that unlinks the
 * node, exclude each other.  No function holds two node locks at once.
 *
 * On a writable mount a node's parent and entry change (rename), so every
 * reader of node->parent holds fs->ns_lock for reading, and the changes
 * hold it for writing.  A node whose name is removed while the kernel
 * still knows it becomes an orphan: detached from its entry, kept on
 * fs->orphans, reached through an O_PATH fd on its object.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerfs_i.h"

struct lfs_node *lfs_node_new_root(struct lfs_fs *fs)
{
	struct lfs_node *root = calloc(1, sizeof(*root));
	struct stat st;

	if (!root)
		return NULL;
	if (fstatat(fs->stack->layers[0].root_fd, "", &st, AT_EMPTY_PATH) < 0) {
		free(root);
		return NULL;
	}
	pthread_mutex_init(&root->mu, NULL);
	pthread_mutex_init(&root->copyup_mu, NULL);
	atomic_init(&root->data_fd, -1);
	root->orphan_fd = -1;
	root->name = "";
	root->type = DT_DIR;
	root->layer = 0;
	root->ino = lfs_fs_ino(fs, 0, st.st_ino);
	root->refs = 1;
	root->dir_layers = &fs->all_layers;
	return root;
}

static void orphan_list_remove(struct lfs_fs *fs, struct lfs_node *node)
{
	pthread_mutex_lock(&fs->orphan_mu);
	if (node->orphan_prev)
		node->orphan_prev->orphan_next = node->orphan_next;
	else
		fs->orphans = node->orphan_next;
	if (node->orphan_next)
		node->orphan_next->orphan_prev = node->orphan_prev;
	pthread_mutex_unlock(&fs->orphan_mu);
}

static void node_free(struct lfs_fs *fs, struct lfs_node *node)
{
	if (node->is_orphan) {
		orphan_list_remove(fs, node);
		if (node->orphan_fd >= 0)
			close(node->orphan_fd);
	}
	lfs_node_close_data_fd(fs, node);
	lfs_dirindex_free(atomic_load(&node->index));
	pthread_mutex_destroy(&node->mu);
	pthread_mutex_destroy(&node->copyup_mu);
	free(node);
}

/* Free node and every descendant the kernel still held: at unmount the
 * kernel may not have sent all its forgets.  Each live node is reached
 * once: through its entry, or (an orphan) through fs->orphans. */
static void node_free_tree(struct lfs_fs *fs, struct lfs_node *node)
{
	struct lfs_dirindex *index = atomic_load(&node->index);
	struct lfs_entry *e, *tmp;

	if (index)
		HASH_ITER(hh, index->by_name, e, tmp)
			if (e->node)
				node_free_tree(fs, e->node);
	node_free(fs, node);
}

void lfs_node_free_root(struct lfs_fs *fs, struct lfs_node *root)
{
	if (root)
		node_free_tree(fs, root);
	/* Orphans outlive their old parents' indexes only in memory order:
	 * none of them is reachable from the tree any more. */
	while (fs->orphans) {
		struct lfs_node *o = fs->orphans;
		fs->orphans = o->orphan_next;
		o->orphan_prev = NULL;
		o->orphan_next = NULL;
		o->is_orphan = false;
		if (o->orphan_fd >= 0)
			close(o->orphan_fd);
		node_free_tree(fs, o);
	}
}

int lfs_node_get_child(struct lfs_fs *fs, struct lfs_node *parent,
		       struct lfs_entry *entry, struct lfs_node **ret,
		       bool *ret_created)
{
	struct lfs_node *child = entry->node;

	if (child) {
		child->refs++;
		*ret = child;
		*ret_created = false;
		return 0;
	}
	child = calloc(1, sizeof(*child));
	if (!child)
		return -ENOMEM;
	pthread_mutex_init(&child->mu, NULL);
	pthread_mutex_init(&child->copyup_mu, NULL);
	atomic_init(&child->data_fd, -1);
	child->orphan_fd = -1;
	child->parent = parent;
	child->entry = entry;
	child->name = entry->name;
	child->layer = entry->layer;
	child->type = entry->type;
	child->stat_rec = entry->stat_rec;
	child->data_layer = entry->data_layer;
	child->ino = lfs_entry_ino(fs, entry);
	child->refs = 1;
	if (entry->type == DT_DIR)
		child->dir_layers = &entry->dir_layers;
	entry->node = child;
	*ret = child;
	*ret_created = true;
	return 0;
}

void lfs_node_ref_locked(struct lfs_fs *fs, struct lfs_node *node)
{
	(void)fs;
	if (!node->parent)
		return;    /* the root is never freed */
	pthread_mutex_lock(&node->parent->mu);
	node->refs++;
	pthread_mutex_unlock(&node->parent->mu);
}

void lfs_node_ref(struct lfs_fs *fs, struct lfs_node *node)
{
	lfs_ns_rdlock(fs);
	lfs_node_ref_locked(fs, node);
	lfs_ns_unlock(fs);
}

void lfs_node_unref_locked(struct lfs_fs *fs, struct lfs_node *node,
			   uint64_t n)
{
	while (node && node->parent) {
		struct lfs_node *parent = node->parent;
		bool dead;

		pthread_mutex_lock(&parent->mu);
		node->refs -= n;
		dead = node->refs == 0;
		if (dead && node->entry->node == node)
			node->entry->node = NULL;
		pthread_mutex_unlock(&parent->mu);
		if (!dead)
			return;
		node_free(fs, node);
		node = parent;    /* the dead child's reference on it */
		n = 1;
	}
	/* The root lives as long as the filesystem: its count is not kept. */
}

void lfs_node_unref(struct lfs_fs *fs, struct lfs_node *node, uint64_t n)
{
	lfs_ns_rdlock(fs);
	lfs_node_unref_locked(fs, node, n);
	lfs_ns_unlock(fs);
}

int lfs_node_child(struct lfs_fs *fs, struct lfs_node *parent,
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
	 * parent->mu so that no two node locks are ever held together; given
	 * back if another thread created the child first. */
	lfs_node_ref_locked(fs, parent);
	pthread_mutex_lock(&parent->mu);
	r = lfs_node_get_child(fs, parent, e, ret, &created);
	pthread_mutex_unlock(&parent->mu);
	if (r < 0 || !created)
		lfs_node_unref_locked(fs, parent, 1);
	return r;
}

void lfs_node_orphan(struct lfs_fs *fs, struct lfs_node *node)
{
	char path[PATH_MAX];

	if (node->is_orphan)
		return;
	if (lfs_node_path(node, path, sizeof(path)) == 0)
		node->orphan_fd = openat(fs->stack->layers[node->layer].root_fd,
					 path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	pthread_mutex_lock(&node->parent->mu);
	if (node->entry->node == node)
		node->entry->node = NULL;
	pthread_mutex_unlock(&node->parent->mu);
	node->is_orphan = true;
	pthread_mutex_lock(&fs->orphan_mu);
	node->orphan_prev = NULL;
	node->orphan_next = fs->orphans;
	if (fs->orphans)
		fs->orphans->orphan_prev = node;
	fs->orphans = node;
	pthread_mutex_unlock(&fs->orphan_mu);
}

void lfs_node_move(struct lfs_fs *fs, struct lfs_node *node,
		   struct lfs_node *newparent, struct lfs_entry *e)
{
	struct lfs_node *oldparent = node->parent;

	pthread_mutex_lock(&oldparent->mu);
	if (node->entry->node == node)
		node->entry->node = NULL;
	pthread_mutex_unlock(&oldparent->mu);
	if (newparent != oldparent)
		lfs_node_ref_locked(fs, newparent);
	pthread_mutex_lock(&newparent->mu);
	node->parent = newparent;
	node->entry = e;
	node->name = e->name;
	e->node = node;
	if (node->type == DT_DIR)
		node->dir_layers = &e->dir_layers;
	pthread_mutex_unlock(&newparent->mu);
	if (newparent != oldparent)
		lfs_node_unref_locked(fs, oldparent, 1);
}

int lfs_node_index(struct lfs_fs *fs, struct lfs_node *node,
		   struct lfs_dirindex **ret)
{
	int r = 0;

	if (node->type != DT_DIR)
		return -ENOTDIR;
	/* Fast path: an index, once published, never changes (read-only
	 * layers).  The acquire pairs with the release below. */
	struct lfs_dirindex *index =
		atomic_load_explicit(&node->index, memory_order_acquire);
	if (index) {
		*ret = index;
		return 0;
	}
	pthread_mutex_lock(&node->mu);
	if (!node->index) {
		char path[PATH_MAX];
		r = lfs_node_path(node, path, sizeof(path));
		if (r == 0)
			r = lfs_dirindex_build(fs, path, node->dir_layers,
					       node->parent == NULL, &index);
		if (r == 0)
			atomic_store_explicit(&node->index, index,
					      memory_order_release);
	}
	index = atomic_load_explicit(&node->index, memory_order_relaxed);
	pthread_mutex_unlock(&node->mu);
	if (r == 0)
		*ret = index;
	return r;
}

int lfs_node_path(const struct lfs_node *node, char *buf, size_t size)
{
	size_t pos = size;

	if (size < 2)
		return -ENAMETOOLONG;
	if (!node->parent) {
		strcpy(buf, ".");
		return 0;
	}
	/* Names are written from the end of buf backwards, then moved. */
	buf[--pos] = '\0';
	for (const struct lfs_node *n = node; n->parent; n = n->parent) {
		size_t len = strlen(n->name);
		bool first = n == node;
		if (len + !first > pos)
			return -ENAMETOOLONG;
		if (!first)
			buf[--pos] = '/';
		pos -= len;
		memcpy(buf + pos, n->name, len);
	}
	memmove(buf, buf + pos, size - pos);
	return 0;
}

uint32_t lfs_node_layer(const struct lfs_node *node)
{
	return node->layer;
}

uint32_t lfs_node_data_layer(const struct lfs_node *node)
{
	return node->data_layer ? node->data_layer : node->layer;
}

bool lfs_node_is_dir(const struct lfs_node *node)
{
	return node->type == DT_DIR;
}
