/*
 * layerfs_i.h - internals of the union core, grouped by the file that
 * defines them, so this header reads as the core's table of contents.
 * Nothing here includes FUSE (`make core-is-fuse-free` checks it).
 */
#ifndef LAYERFS_I_H
#define LAYERFS_I_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

/* uthash must never abort the daemon: on ENOMEM it leaves the item out and
 * calls this hook, and the caller turns the flag into -ENOMEM. */
extern _Thread_local bool lfs_hash_oom;
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) do { (void)(obj); lfs_hash_oom = true; } while (0)
#include <uthash.h>

#include "layerfs.h"

/* ------------------------------------------------------------------ */
/* whiteout.c: the only code that knows the on-disk encodings          */

/* What one directory entry of one layer means to the union. */
enum lfs_entry_kind {
	LFS_ENTRY_OBJECT,      /* a real name: file, dir, link, device... */
	LFS_ENTRY_WHITEOUT,    /* hides `name` in lower layers */
	LFS_ENTRY_OPAQUE_MARK, /* OCI ".wh..wh..opq": this dir is opaque */
	LFS_ENTRY_IGNORED,     /* other ".wh..wh.*" metadata: never shown */
};

/* Directory-level markers read from a layer directory's xattrs. */
struct lfs_dir_marks {
	bool opaque;          /* overlay.opaque=y: lower layers are hidden */
	bool has_xwhiteouts;  /* overlay.opaque=x: holds xattr whiteouts */
};

struct lfs_classified {
	enum lfs_entry_kind kind;
	const char *name;     /* borrowed; for a whiteout, the hidden name */
	unsigned char type;   /* DT_* of the object (resolved if DT_UNKNOWN) */
	const void *stat_rec; /* borrowed: the object's attributes as a layer
				 index cache recorded them, or NULL */
};

/* Read the opaque xattrs of an open layer directory. */
int lfs_whiteout_read_dir_marks(int dir_fd, struct lfs_dir_marks *ret);
/* Classify entry `name` (d_type `type`) of the layer directory dir_fd.
 * Costs a syscall only for DT_CHR, DT_UNKNOWN, and regular files in a
 * directory with has_xwhiteouts. */
int lfs_whiteout_classify(int dir_fd, const struct lfs_dir_marks *marks,
			  const char *name, unsigned char type,
			  struct lfs_classified *ret);
/* True for names that are never visible nor looked up (".wh.*"). */
bool lfs_whiteout_is_reserved_name(const char *name);

/* ------------------------------------------------------------------ */
/* layercache.c: a digest-named layer's directories, recorded once     */

struct lfs_layercache;

/* A cursor over one recorded directory. */
struct lfs_cached_dir {
	const struct lfs_layercache *cache;  /* borrowed */
	bool opaque;
	uint32_t remaining;
	size_t next_off;
};

/* -ENOENT: no cache; -ESTALE/-EBADMSG: one that must not be used. */
int lfs_layercache_load(const char *cache_dir, const struct lfs_layer *L,
			struct lfs_layercache **ret);
void lfs_layercache_free(struct lfs_layercache *cache);
/* Attributes as recorded (st_ino and st_dev are the caller's business). */
void lfs_layercache_decode_stat(const void *stat_rec, struct stat *ret);
/* Ask the kernel to start reading layer L's cache file now, so that the
 * first directory built from it finds it in memory. */
void lfs_layercache_prefetch(const char *cache_dir, const struct lfs_layer *L);
/* 1 and *ret set if the layer has directory relpath, else 0. */
int lfs_layercache_find_dir(const struct lfs_layercache *cache,
			    const char *relpath, struct lfs_cached_dir *ret);
/* 1 and the next recorded entry (name borrowed from the cache), or 0. */
int lfs_cached_dir_next(struct lfs_cached_dir *dir, struct lfs_classified *ret,
			uint64_t *ret_ino);
/* Walk the layer and write its cache file atomically; stops early with
 * -ECANCELED when *stop becomes true. */
int lfs_layercache_build(const char *cache_dir, const struct lfs_layer *L,
			 const atomic_bool *stop);

/* ------------------------------------------------------------------ */
/* dirindex.c: one merged directory, indexed by name                   */

/* A layer list: the layers whose same-named directories merge into one
 * merged directory, top-most first. */
struct lfs_layer_list {
	uint32_t *layers;     /* owned */
	uint32_t n;
};

struct lfs_entry {
	UT_hash_handle hh;
	uint64_t real_ino;     /* d_ino in the providing layer */
	uint32_t layer;        /* top-most layer providing the name */
	unsigned char type;    /* DT_* */
	bool is_whiteout;      /* the name is hidden: lookups fail */
	uint32_t merge_limit;  /* dir: the lowest layer that may still merge
				  (a lower whiteout or non-dir sets it) */
	struct lfs_layer_list dir_layers;  /* dir: candidate layers */
	struct lfs_node *node; /* live node for this name or NULL;
				  protected by the directory node's mu */
	const void *stat_rec;  /* borrowed from a layer cache, or NULL */
	char name[];
};

struct lfs_dirindex {
	struct lfs_entry *by_name;    /* uthash head */
	struct lfs_entry **visible;   /* owned array, readdir order */
	size_t n_visible;
	size_t n_entries;             /* including whiteouts */
	uint32_t n_layers_read;       /* after opaque truncation */
};

/* Build the index of the directory at relpath over the candidate layers
 * (top-most first), from each layer's index cache where fs has one, else
 * by readdir.  is_root disables opacity, as in kernel overlayfs. */
int lfs_dirindex_build(struct lfs_fs *fs, const char *relpath,
		       const struct lfs_layer_list *candidates, bool is_root,
		       struct lfs_dirindex **ret);
void lfs_dirindex_free(struct lfs_dirindex *index);
struct lfs_entry *lfs_dirindex_find(const struct lfs_dirindex *index,
				    const char *name);

/* ------------------------------------------------------------------ */
/* node.c: merged names, their lifetime and paths                      */

struct lfs_node {
	struct lfs_node *parent;   /* holds one reference; NULL for root */
	struct lfs_entry *entry;   /* borrowed from parent's index; NULL root */
	const char *name;          /* borrowed: entry->name, "" for root */
	uint64_t ino;              /* reported st_ino */
	uint32_t layer;            /* top-most providing layer */
	unsigned char type;        /* DT_* */
	uint64_t refs;             /* kernel lookups + children + handles;
				      protected by parent->mu (root: own mu) */
	pthread_mutex_t mu;        /* protects index build and, for each
				      child, entry->node and child->refs.
				      Never held while taking another node's
				      mu, so there is no lock order. */
	/* dir: built lazily under mu, then published for lock-free reads */
	_Atomic(struct lfs_dirindex *) index;
	const struct lfs_layer_list *dir_layers;  /* dir: borrowed */
	_Atomic int data_fd;       /* file: cached read fd or -1; see file.c */
	const void *stat_rec;      /* borrowed: recorded attributes or NULL */
};

struct lfs_node *lfs_node_new_root(struct lfs_fs *fs);
void lfs_node_free_root(struct lfs_fs *fs, struct lfs_node *root);
/* Return the live node of entry in parent, creating it; +1 reference.
 * Caller holds parent->mu and a reference on parent. */
int lfs_node_get_child(struct lfs_fs *fs, struct lfs_node *parent,
		       struct lfs_entry *entry, struct lfs_node **ret,
		       bool *ret_created);
/* Build node's directory index if needed; returns it (borrowed). */
int lfs_node_index(struct lfs_fs *fs, struct lfs_node *node,
		   struct lfs_dirindex **ret);

/* ------------------------------------------------------------------ */
/* inomap.c: reported inode numbers                                    */

struct lfs_inomap {
	unsigned fs_bits;          /* high bits naming the filesystem */
	pthread_mutex_t mu;        /* protects overflow */
	struct lfs_ino_overflow *overflow;  /* uthash: big inos -> numbers */
	uint64_t next_overflow;
};

int lfs_inomap_init(struct lfs_inomap *map, uint32_t n_filesystems);
void lfs_inomap_destroy(struct lfs_inomap *map);
uint64_t lfs_inomap_get(struct lfs_inomap *map, uint32_t fs_index,
			uint64_t real_ino);

/* ------------------------------------------------------------------ */
/* fs.c: the filesystem instance                                       */

struct lfs_fs {
	struct lfs_stack *stack;        /* owned */
	struct lfs_layer_list all_layers; /* root's candidates: every layer */
	struct lfs_node *root;          /* owned */
	struct lfs_inomap inomap;
	struct lfs_fs_config config;
	char *index_cache_dir;          /* owned copy of config's, or NULL */
	atomic_uint n_data_fds;         /* cached data fds open, see file.c */

	/* Layer index caches, loaded on first use (layer_cache_mu). */
	_Atomic(struct lfs_layercache *) *layer_caches;  /* owned, n_layers */
	atomic_bool *layer_cache_tried;                   /* owned, n_layers */
	pthread_mutex_t layer_cache_mu;

	/* The background cache builder (lfs_fs_start_background). */
	pthread_t builder;
	bool builder_running;
	atomic_bool builder_stop;
};

/* The index cache of layer, loaded on first use; NULL if it has none. */
struct lfs_layercache *lfs_fs_layercache(struct lfs_fs *fs, uint32_t layer);

/* file.c: give back node's cached data fd when the node dies. */
void lfs_node_close_data_fd(struct lfs_fs *fs, struct lfs_node *node);

/* Reported inode number of the object (layer, real_ino). */
uint64_t lfs_fs_ino(struct lfs_fs *fs, uint32_t layer, uint64_t real_ino);

/* ------------------------------------------------------------------ */
/* pathbuf.c: fd-relative access beneath a layer root                  */

/* "/proc/self/fd/<fd>/<rel>" for the *xattr(2) calls that lack an *at()
 * form; -ENAMETOOLONG if it does not fit. */
int lfs_proc_path(char buf[PATH_MAX], int dir_fd, const char *rel);

#endif /* LAYERFS_I_H */
