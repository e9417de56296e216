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

struct lfs_upper;

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

/* Writing, into the upper layer, in the format probed at mount (upper.c).
 * dir_fd is the upper directory holding name. */
int lfs_whiteout_write(const struct lfs_upper *u, int dir_fd,
		       const char *name);
/* Make a whiteout named tmp in the work directory, to be renamed over an
 * upper object (char device format only: -ENOTSUP otherwise). */
int lfs_whiteout_write_tmp(const struct lfs_upper *u, const char *tmp);
/* Remove the OCI ".wh.<name>" of name, if any (0 when there is none). */
int lfs_whiteout_remove_oci(int dir_fd, const char *name);
/* Mark the upper directory dir_fd opaque. */
int lfs_whiteout_mark_opaque(const struct lfs_upper *u, int dir_fd);

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
	/* Writable mounts (layer 0 is the upper): */
	bool upper_whiteout;   /* the upper holds a whiteout of name */
	bool lower_visible;    /* a lower layer would show name were the
				  upper silent: removing it needs a whiteout */
	uint32_t lower_layer;  /* the layer that decided lower_visible, or 0 */
	uint64_t ino_override; /* reported st_ino kept across a copy-up, or 0 */
	uint32_t data_layer;   /* a metadata-only upper copy: the lower layer
				  holding the data (same path), else 0 */
	char name[];
};

/*
 * On a writable mount an index changes in place (under fs->ns_lock held
 * for writing) and its entries are never freed before the index: nodes
 * borrow them.  A removed name stays as a hidden entry.
 */
struct lfs_dirindex {
	struct lfs_entry *by_name;    /* uthash head, in insertion order */
	struct lfs_entry **visible;   /* owned array, readdir order; read-only
					 mounts only (writable ones list
					 order, below) */
	size_t n_visible;
	/* Every entry, hidden ones too, in insertion order (writable
	 * mounts): an entry's place never changes, as entries are only
	 * added, so a position is a listing offset that stays valid while
	 * names come and go (readdir.c). */
	struct lfs_entry **order;     /* owned */
	size_t n_order, cap_order;
	size_t n_entries;             /* including whiteouts */
	size_t bytes;                 /* memory of the entries (counters) */
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
/* Make name show the upper layer's new object (created, or renamed
 * here); *ret is its entry, reused if name had one. */
int lfs_dirindex_put_upper(struct lfs_dirindex *index, const char *name,
			   unsigned char type, uint64_t real_ino,
			   struct lfs_entry **ret);
/* The entry's object now has an upper copy with inode upper_ino; it keeps
 * reporting reported_ino. */
int lfs_entry_copied_up(struct lfs_entry *e, uint64_t upper_ino,
			uint64_t reported_ino);
/* Hide the entry's name; upper_whiteout: a whiteout was written for it. */
void lfs_entry_hide(struct lfs_entry *e, bool upper_whiteout);
/* Every name now lives in the upper copy of the directory alone. */
void lfs_dirindex_drop_lower(struct lfs_dirindex *index,
			     struct lfs_entry *dir_entry);
/* True when no name is visible. */
bool lfs_dirindex_is_empty(const struct lfs_dirindex *index);
/* The st_ino the entry's object reports. */
uint64_t lfs_entry_ino(struct lfs_fs *fs, const struct lfs_entry *e);

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
	_Atomic int data_fd;       /* file: cached data fd or -1; see file.c */
	atomic_bool data_fd_writable;  /* data_fd is open read-write */
	const void *stat_rec;      /* borrowed: recorded attributes or NULL */
	/* Writable mounts.  Lock order: copyup_mu, then fs->ns_lock, then
	 * node mu's (one at a time). */
	pthread_mutex_t copyup_mu; /* one copy-up of this file at a time */
	bool is_orphan;            /* its name was removed or replaced while
				      the kernel still knew it */
	int orphan_fd;             /* orphan: O_PATH on its object, or -1 */
	uint32_t data_layer;       /* metadata-only copy: where the data is
				      (same path), else 0; see copyup.c */
	struct lfs_node *orphan_next, *orphan_prev;  /* fs->orphans list */
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
/* The live node of entry e in parent, +1 reference (ns lock held). */
int lfs_node_child(struct lfs_fs *fs, struct lfs_node *parent,
		   struct lfs_entry *e, struct lfs_node **ret);
/* Variants for callers already holding fs->ns_lock (either way). */
void lfs_node_unref_locked(struct lfs_fs *fs, struct lfs_node *node,
			   uint64_t n);
void lfs_node_ref_locked(struct lfs_fs *fs, struct lfs_node *node);
/* ns lock held for writing: the entry's name is gone or replaced; the
 * node stays usable through an O_PATH fd on its object, opened now. */
void lfs_node_orphan(struct lfs_fs *fs, struct lfs_node *node);
/* ns lock held for writing: node's name is now entry e of newparent. */
void lfs_node_move(struct lfs_fs *fs, struct lfs_node *node,
		   struct lfs_node *newparent, struct lfs_entry *e);
/* lookup.c: lfs_lookup and lfs_getattr for holders of the ns lock. */
int lfs_lookup_locked(struct lfs_fs *fs, struct lfs_node *parent,
		      const char *name, struct lfs_node **ret_node,
		      struct stat *ret_st);
int lfs_getattr_locked(struct lfs_fs *fs, struct lfs_node *node,
		       struct stat *ret_st);
/* Attributes as the mount shows them (ownership options, static_nlink):
 * the object is rel under dir_fd ("" rel: dir_fd's own object). */
void lfs_present_stat(struct lfs_fs *fs, int dir_fd, const char *rel,
		      struct stat *st);

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
/* upper.c: the writable upper layer, its work directory and policy    */

/* Decided once at mount; the hot paths only read these flags. */
struct lfs_upper {
	int root_fd;               /* borrowed: layer 0's root (O_PATH) */
	int work_fd;               /* owned: <workdir>/work (O_PATH) */
	bool whiteout_chardev;     /* write char 0/0 whiteouts, else OCI */
	const char *opaque_xattr;  /* static: the opaque xattr we can set, or
				      NULL for OCI ".wh..wh..opq" files */
	bool can_reflink;          /* FICLONE from the lower layers works */
	atomic_bool can_copy_range; /* copy_file_range works (cleared on the
				       first failure) */
	bool fsync;                /* fsync copied-up data before publishing */
	uid_t uid;                 /* the daemon's own ids: what a new object */
	gid_t gid;                 /* gets without a chown */
	atomic_uint tmp_seq;       /* names of work files */
	/* Hard links of lower files (copyup.c, "Hard links"): */
	int index_fd;              /* owned: <workdir>/index (O_PATH), or -1 */
	atomic_bool has_index;     /* the index holds an entry */
	const char *links_xattr;   /* static: where an indexed copy records
				      its lower names not yet copied up */
	const char *origin_xattr;  /* static: where a copy records the lower
				      object it came from, or NULL */
	const char *metacopy_xattr; /* static: marks a metadata-only copy
				       (kernel overlayfs's name), or NULL */
	bool metacopy;             /* make metadata-only copies */
	bool volatile_marked;      /* work/incompat/volatile is ours to remove
				      at a clean unmount */
};

int lfs_upper_open(struct lfs_upper *u, const struct lfs_layer *upper,
		   const struct lfs_layer *lower, const char *workdir,
		   enum lfs_whiteout_format format, bool volatile_upper,
		   char err[LFS_ERRLEN]);
void lfs_upper_close(struct lfs_upper *u);
/* A fresh name for a file in the work directory. */
void lfs_upper_tmpname(struct lfs_upper *u, char buf[32]);
/* rm -rf name under dir_fd (for the work directory). */
int lfs_upper_remove_tree(int dir_fd, const char *name);
/* O_PATH fd on the upper copy of directory relpath. */
int lfs_upper_open_dir(const struct lfs_upper *u, const char *relpath);

/* ------------------------------------------------------------------ */
/* copyup.c: giving a lower object its upper copy                      */

/* Copy node up (parents first).  A regular file's data is copied unless
 * with_data is false (open O_TRUNC, truncate to 0).  Takes the locks it
 * needs: the caller holds no ns lock. */
int lfs_copy_up(struct lfs_fs *fs, struct lfs_node *node, bool with_data);
/* Copy node's metadata up without its data where the mount allows it
 * (metacopy=on, a regular file with one name), else as lfs_copy_up. */
int lfs_copy_up_meta(struct lfs_fs *fs, struct lfs_node *node);
/* An orphan's lower file becomes a nameless upper copy, to be changed. */
int lfs_copy_up_orphan(struct lfs_fs *fs, struct lfs_node *node);
/* The same for directories, with the ns lock held for writing. */
int lfs_copy_up_dir_locked(struct lfs_fs *fs, struct lfs_node *dir);
/* Copy up dir and everything visible below it, so that the upper copy
 * alone holds the merged tree (before a directory rename). */
int lfs_copy_up_tree(struct lfs_fs *fs, struct lfs_node *dir);
/* A lower hard link whose inode another name already copied up (see
 * "Hard links" in copyup.c) is copied up now, by linking, so that every
 * name shows the one copy.  st: the node's attributes as just read.
 * Returns 1 if it did (st is then stale), 0 if nothing was needed. */
int lfs_copy_up_if_linked(struct lfs_fs *fs, struct lfs_node *node,
			  const struct stat *st);
/* The link count of an upper file that has an index entry: its upper
 * names plus the lower names not yet copied up (ns lock held). */
void lfs_fix_indexed_nlink(struct lfs_fs *fs, struct lfs_node *node,
			   const char *relpath, struct stat *st);
/* A lower name of an indexed inode was removed (ns lock held for
 * writing): one lower name less is pending. */
void lfs_index_forget_lower_name(struct lfs_fs *fs, uint32_t layer,
				 uint64_t real_ino);
/* Upper objects that are copies keep the st_ino of their lower origin
 * across mounts: set e->ino_override of each upper entry of the index of
 * the directory relpath from the origin its copy-up recorded. */
void lfs_read_origins(struct lfs_fs *fs, const char *relpath,
		      struct lfs_dirindex *index);
/* Copy the xattrs of src_path to dst_path (both /proc paths), but the
 * private ones. */
int lfs_copy_xattrs(const char *src_path, const char *dst_path);

/* ------------------------------------------------------------------ */
/* owner.c: ids as the mount shows them (the policy is in layerfs.h)   */

/* Ids on disk -> ids shown (maps, overflow id, squash). */
void lfs_owner_show(const struct lfs_owner_policy *p, struct stat *st);
/* Ids the caller gave -> ids on disk ((uid_t)-1 stays); -EINVAL for an
 * id no map covers. */
int lfs_owner_to_disk(const struct lfs_owner_policy *p, uid_t *uid,
		      gid_t *gid);
/* xattr_permissions: owner and mode from the override xattr of path, if
 * it has one (true). */
bool lfs_owner_read_override(const struct lfs_owner_policy *p,
			     const char *path, bool follow, struct stat *st);
int lfs_owner_write_override(const struct lfs_owner_policy *p,
			     const char *path, bool follow, uid_t uid,
			     gid_t gid, mode_t mode);

/* ------------------------------------------------------------------ */
/* stats.c: live counters, one block per thread                        */

enum lfs_counter {
	LFS_C_LOOKUP_POS, LFS_C_LOOKUP_NEG,
	LFS_C_INDEX_ANSWERS,     /* lookups answered by a built index */
	LFS_C_INDEX_BUILT, LFS_C_INDEX_ENTRIES, LFS_C_INDEX_BYTES,
	LFS_C_DIR_READS,         /* layer directories read (readdir) */
	LFS_C_DIR_CACHE_READS,   /* ... or taken from a layer index cache */
	LFS_C_OBJECT_STATS,      /* fstatat of an object in a layer */
	LFS_C_STATS_CACHED,      /* ... answered from a layer index cache */
	LFS_C_COPYUPS, LFS_C_COPYUP_BYTES, LFS_C_COPYUP_NS,
	LFS_C_COPYUP_REFLINK, LFS_C_COPYUP_RANGE, LFS_C_COPYUP_RW,
	LFS_C_COPYUP_META, LFS_C_COPYUP_LINK,
	LFS_C_WHITEOUTS, LFS_C_OPAQUES,
	LFS_C_OPENS, LFS_C_RELEASES,
	LFS_N_COUNTERS
};

struct lfs_stats_block;

struct lfs_stats {
	uint64_t gen;                    /* tells this fs's blocks apart */
	uint32_t n_layers;
	pthread_mutex_t mu;              /* protects blocks (the list) */
	struct lfs_stats_block *blocks;  /* owned, one per counting thread */
};

int lfs_stats_init(struct lfs_stats *s, uint32_t n_layers);
void lfs_stats_destroy(struct lfs_stats *s);
struct lfs_stats_block *lfs_stats_block_slow(struct lfs_stats *s);
/* One probe of layer (a directory read or an object's stat). */
void lfs_stats_layer(struct lfs_fs *fs, uint32_t layer);

extern _Thread_local struct lfs_stats_block *lfs_stats_tl_block;
extern _Thread_local uint64_t lfs_stats_tl_gen;

/* This thread's block for s: a compare on the hot path. */
static inline struct lfs_stats_block *lfs_stats_block(struct lfs_stats *s)
{
	if (__builtin_expect(lfs_stats_tl_gen == s->gen, 1))
		return lfs_stats_tl_block;
	return lfs_stats_block_slow(s);
}

/* Add n to counter k (the block's first member is the counter array). */
#define lfs_count(fs, k, n) \
	(((uint64_t *)lfs_stats_block(&(fs)->stats))[(k)] += (uint64_t)(n))

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

	/* The writable upper layer (!config.read_only). */
	bool writable;
	struct lfs_upper upper;
	/* The namespace lock of a writable mount: held for reading by every
	 * request that reads the tree (lookups, paths, listings), for
	 * writing by every change to it.  Read-only mounts never take it. */
	pthread_rwlock_t ns_lock;
	pthread_mutex_t orphan_mu;      /* protects orphans */
	struct lfs_node *orphans;       /* nodes whose names were removed */

	struct lfs_stats stats;

	/* The background cache builder (lfs_fs_start_background). */
	pthread_t builder;
	bool builder_running;
	atomic_bool builder_stop;
};

/* The index cache of layer, loaded on first use; NULL if it has none. */
struct lfs_layercache *lfs_fs_layercache(struct lfs_fs *fs, uint32_t layer);

/* file.c: give back node's cached data fd when the node dies. */
void lfs_node_close_data_fd(struct lfs_fs *fs, struct lfs_node *node);
/* file.c: node's data now comes from another place (a copy-up, with the
 * ns lock held for writing): make its cached fd name the new place. */
void lfs_node_data_moved(struct lfs_fs *fs, struct lfs_node *node);

/* Reported inode number of the object (layer, real_ino). */
uint64_t lfs_fs_ino(struct lfs_fs *fs, uint32_t layer, uint64_t real_ino);

static inline void lfs_ns_rdlock(struct lfs_fs *fs)
{
	if (fs->writable)
		pthread_rwlock_rdlock(&fs->ns_lock);
}

static inline void lfs_ns_wrlock(struct lfs_fs *fs)
{
	pthread_rwlock_wrlock(&fs->ns_lock);
}

static inline void lfs_ns_unlock(struct lfs_fs *fs)
{
	if (fs->writable)
		pthread_rwlock_unlock(&fs->ns_lock);
}

/* ------------------------------------------------------------------ */
/* pathbuf.c: fd-relative access beneath a layer root                  */

/* "/proc/self/fd/<fd>/<rel>" for the *xattr(2) calls that lack an *at()
 * form ("" rel: the fd's own object); -ENAMETOOLONG if it does not fit. */
int lfs_proc_path(char buf[PATH_MAX], int dir_fd, const char *rel);

#endif /* LAYERFS_I_H */
