/*
 * layerfs.h - the union core's public interface.
 *
 * The core merges an ordered stack of read-only layer directories (top-most
 * first) into one tree, following the rules written in README.md ("Union
 * rules").  It knows nothing of FUSE: the adapter in fs/fuse_*.c, the unit
 * tests and the tools all call this interface.
 *
 * Conventions, used by every function here:
 *   - return 0 (or a count) on success and -errno on failure;
 *   - ret_* parameters are written only on success;
 *   - "owned" means the callee frees it, "borrowed" means it does not.
 *
 * Identity spaces (where they meet, see fs/node.c and fs/inomap.c):
 *   layer (st_dev, st_ino)  - a real object inside one layer directory;
 *   struct lfs_node *       - one merged name (parent + name), refcounted;
 *                             the FUSE adapter uses its address as fuse_ino_t;
 *   reported st_ino         - what stat() and readdir show: derived from the
 *                             providing layer's (st_dev, st_ino) so that hard
 *                             links share it and it is stable for the mount.
 */
#ifndef LAYERFS_H
#define LAYERFS_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#define LAYERFS_VERSION "0.1.0"

/* An error message buffer: core set-up functions explain failures here. */
#define LFS_ERRLEN 512

/* ------------------------------------------------------------------ */
/* options.c: the fuse-overlayfs-compatible command line               */

struct lfs_options {
	char **lowerdirs;      /* owned; top-most first */
	size_t n_lowerdirs;
	char *upperdir;        /* owned or NULL */
	char *workdir;         /* owned or NULL */
	char *mountpoint;      /* owned */
	char *index_cache;     /* owned; index cache dir, "off", or NULL for
				  the default */
	char *whiteout;        /* owned; whiteout=chardev|oci, or NULL: the
				  best the upper allows (probed at mount) */
	bool fsync;            /* fsync=0 turns off syncing copied-up data */
	bool metacopy;         /* metacopy=on: metadata-only copy-ups */
	/* Ownership and engine options, as fuse-overlayfs spells them: */
	char *uidmapping;      /* owned: "DISK:SHOWN:LEN[:DISK:SHOWN:LEN...]" */
	char *gidmapping;      /* owned: the same for groups */
	bool squash_to_root;   /* every object shows owner 0:0 */
	long squash_to_uid;    /* every object shows this uid, or -1 */
	long squash_to_gid;    /* ... this gid, or -1 */
	bool static_nlink;     /* directories report st_nlink 1 */
	bool noacl;            /* no POSIX ACLs (hidden, not enforced) */
	bool noxattrs;         /* no xattrs at all through the mount */
	int xattr_permissions; /* 0, or 1/2: owner and mode kept in an xattr */
	bool volatile_upper;   /* volatile: no syncs; a dirty upper refused */
	bool threaded;         /* threaded=0 serves on one thread (like -s) */
	bool writeback;        /* writeback=1: the kernel's writeback cache */
	bool copyup_on_open;   /* copyup_on_open: an open for writing copies
				  up at once, as the kernel does (costs an
				  OPEN and RELEASE request per open(2)) */
	double timeout;        /* kernel cache timeout, seconds */
	bool foreground;       /* -f */
	bool debug;            /* -d: libfuse request log, implies -f */
	bool single_threaded;  /* -s: serve requests on one thread */
	bool show_version;     /* --version */
	bool show_help;        /* -h, --help */
	char **fuse_opts;      /* owned; mount options handed to libfuse */
	size_t n_fuse_opts;
	char **unknown_opts;   /* owned; accepted, warned about once */
	size_t n_unknown_opts;
};

/*
 * Parse argv (fuse-overlayfs spelling).  On failure returns -EINVAL and
 * writes a message naming the offending argument into err.
 * On success *ret is filled and owned by the caller (lfs_options_free).
 */
int lfs_options_parse(int argc, char *const argv[], struct lfs_options *ret,
		      char err[LFS_ERRLEN]);
void lfs_options_free(struct lfs_options *opts);

/* Split "a:b\:c" into {"a", "b:c"}; empty elements are an error (-EINVAL). */
int lfs_split_lowerdir(const char *spec, char ***ret_dirs, size_t *ret_n);

/* ------------------------------------------------------------------ */
/* owner.c: who owns what, as the mount shows it                       */

struct lfs_id_range {
	uint32_t disk, shown, len;
};

/* Decided once at mount from the ownership options.  Ids on disk are
 * shown through the maps (unmapped ones as the overflow id 65534), then
 * squashed; ids the caller gives (chown, the creator) go back through the
 * maps to disk.  With xattr_permissions, owner and mode live in an xattr
 * instead (for stores where chown is impossible). */
struct lfs_owner_policy {
	struct lfs_id_range *uids, *gids;   /* owned */
	size_t n_uids, n_gids;
	long squash_uid, squash_gid;        /* -1: none */
	const char *override_xattr;         /* static, or NULL */
};

/* Fill ret from the options; err names a bad mapping.  ret is set to all
 * "as on disk" when no option asks for anything (then has_any is false). */
int lfs_owner_policy_init(struct lfs_owner_policy *ret,
			  const struct lfs_options *o, bool *has_any,
			  char err[LFS_ERRLEN]);
void lfs_owner_policy_free(struct lfs_owner_policy *p);
/* Parse "D:S:L[:D:S:L...]"; -EINVAL on anything else. */
int lfs_parse_id_map(const char *spec, struct lfs_id_range **ret,
		     size_t *ret_n);

/* ------------------------------------------------------------------ */
/* layer.c: the layer stack                                            */

struct lfs_layer {
	int root_fd;          /* owned; O_PATH|O_DIRECTORY on the layer root */
	char *path;           /* owned; as given by the user */
	char digest[65];      /* sha256 hex naming the layer, or "" */
	dev_t dev;            /* st_dev of the layer root */
	ino_t root_ino;       /* st_ino of the layer root */
	struct timespec root_ctime;  /* validates the layer's index cache */
	uint32_t fs_index;    /* which distinct filesystem (for st_ino) */
};

struct lfs_stack {
	struct lfs_layer *layers;  /* owned; [0] is the top-most layer */
	uint32_t n_layers;
	uint32_t n_filesystems;    /* distinct st_dev values among layers */
};

/* Open and validate every layer directory.  Errors name the layer. */
int lfs_stack_open(struct lfs_stack **ret, char *const *paths, size_t n,
		   char err[LFS_ERRLEN]);
void lfs_stack_free(struct lfs_stack *stack);

/* If name (or, for ".../<digest>/diff", its parent) is 64 hex digits, copy
 * it to digest and return true. */
bool lfs_layer_digest_from_path(const char *path, char digest[65]);

/* ------------------------------------------------------------------ */
/* explain.c: what one layer alone says about a path (layerctl which)  */

struct lfs_layer_view {
	bool parent_exists;    /* the path's directory exists in the layer */
	bool parent_opaque;    /* ... and is marked opaque there */
	enum { LFS_VIEW_ABSENT, LFS_VIEW_OBJECT, LFS_VIEW_WHITEOUT } what;
	unsigned char type;    /* DT_* of an object */
	const char *format;    /* a whiteout's on-disk format, static text */
};

/* path relative to the layer root ("a/b"; leading slashes ignored). */
int lfs_layer_view(const struct lfs_stack *stack, uint32_t layer,
		   const char *path, struct lfs_layer_view *ret);

/* ------------------------------------------------------------------ */
/* fs.c: one merged filesystem                                         */

struct lfs_fs;
struct lfs_node;

/* How whiteouts are written into the upper layer (read: every format). */
enum lfs_whiteout_format {
	LFS_WHITEOUT_AUTO,     /* char device 0/0 if mknod allows it, else OCI */
	LFS_WHITEOUT_CHARDEV,  /* kernel overlayfs: char device 0/0 */
	LFS_WHITEOUT_OCI,      /* ".wh.<name>" files */
};

struct lfs_fs_config {
	bool read_only;       /* no upper layer: every change is EROFS;
				 otherwise layer 0 is the writable upper */
	const char *workdir;  /* borrowed; with an upper: its work directory,
				 on the same filesystem */
	enum lfs_whiteout_format whiteout;
	bool no_fsync;        /* do not fsync copied-up data (fsync=0) */
	bool metacopy;        /* chmod/chown/utimes/xattrs of a lower file
				 copy its metadata only (metacopy=on) */
	const struct lfs_owner_policy *owner;  /* borrowed; NULL: ids as on
						  disk (see owner.c) */
	bool static_nlink;    /* directories report st_nlink 1 */
	bool noxattrs;        /* every xattr call is ENOTSUP */
	bool noacl;           /* system.posix_acl_* hidden */
	bool volatile_upper;  /* refuse an upper a volatile mount left dirty;
				 mark this one until a clean unmount */
	unsigned max_data_fds;  /* budget of cached per-node data fds */
	const char *index_cache_dir;  /* borrowed; NULL: no layer index cache */
};

/* Takes ownership of stack on success.  With an upper layer, prepares the
 * work directory (emptied: what a crash left there is dropped) and probes
 * once what the upper's filesystem allows; err names what failed. */
int lfs_fs_new(struct lfs_fs **ret, struct lfs_stack *stack,
	       const struct lfs_fs_config *config, char err[LFS_ERRLEN]);
void lfs_fs_free(struct lfs_fs *fs);

/* Start the background work of a mount: recording, at idle I/O priority,
 * the index cache of each digest-named layer that has none yet (used from
 * the next mount on).  Call after any fork(); lfs_fs_free stops it. */
int lfs_fs_start_background(struct lfs_fs *fs);
/* Wait until the background work is done (tests, tools). */
void lfs_fs_finish_background(struct lfs_fs *fs);

struct lfs_node *lfs_fs_root(struct lfs_fs *fs);
const struct lfs_stack *lfs_fs_stack(const struct lfs_fs *fs);
bool lfs_fs_is_read_only(const struct lfs_fs *fs);

/* ------------------------------------------------------------------ */
/* node.c / lookup.c: merged names                                     */

/*
 * Look name up in directory parent.  On success *ret_node holds one new
 * reference (drop it with lfs_node_unref) and *ret_st its attributes.
 * -ENOENT for absent and whited-out names, -ENOTDIR if parent is not a
 * directory.
 */
int lfs_lookup(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       struct lfs_node **ret_node, struct stat *ret_st);

/* Attributes of node as the merged view reports them. */
int lfs_getattr(struct lfs_fs *fs, struct lfs_node *node, struct stat *ret_st);

/* Drop n references (the kernel's forget carries a count). */
void lfs_node_unref(struct lfs_fs *fs, struct lfs_node *node, uint64_t n);
void lfs_node_ref(struct lfs_fs *fs, struct lfs_node *node);

/* The layer index providing node (0 = top-most) and its type (DT_*). */
uint32_t lfs_node_layer(const struct lfs_node *node);
/* The layer holding node's data: its own, or for a metadata-only upper
 * copy (metacopy=on) the lower one still holding it. */
uint32_t lfs_node_data_layer(const struct lfs_node *node);
bool lfs_node_is_dir(const struct lfs_node *node);

/* The node's path relative to every layer root ("." for the root).
 * -ENAMETOOLONG when it does not fit in size bytes. */
int lfs_node_path(const struct lfs_node *node, char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* file.c: data and metadata of the providing layer's object           */

/* Open node's object with open(2) flags; returns an fd (owned by the
 * caller) or -errno.  Write access or O_TRUNC copies the object up first
 * (O_TRUNC copies no data); on a read-only mount they are -EROFS. */
int lfs_open(struct lfs_fs *fs, struct lfs_node *node, int flags);
/*
 * An fd to read node's data from, for requests that carry no open handle.
 * Set *ret_owned: true means the caller closes it; false means it is the
 * node's cached fd (kept until the node is freed, within a budget of open
 * files set at mount), borrowed.
 */
int lfs_data_fd(struct lfs_fs *fs, struct lfs_node *node, int *ret_fd,
		bool *ret_owned);
/* The same for writing: the file is copied up first (with its data), and
 * the fd is open read-write on the upper copy.  -EROFS on a read-only
 * mount. */
int lfs_write_fd(struct lfs_fs *fs, struct lfs_node *node, int *ret_fd,
		 bool *ret_owned);
/* Give node fd (read-write, on its upper copy, just created) as its
 * cached data fd; closed if it cannot be cached. */
void lfs_adopt_data_fd(struct lfs_fs *fs, struct lfs_node *node, int fd);
/* fsync(2) of node's data (a file's upper copy; nothing to do below). */
int lfs_fsync(struct lfs_fs *fs, struct lfs_node *node, bool datasync);
int lfs_readlink(struct lfs_fs *fs, struct lfs_node *node, char *buf,
		 size_t size);
int lfs_statfs(struct lfs_fs *fs, struct statvfs *ret);
/* access(2) semantics on the merged object (mask of R_OK|W_OK|X_OK). */
int lfs_access(struct lfs_fs *fs, struct lfs_node *node, int mask);

/* ------------------------------------------------------------------ */
/* xattr.c: extended attributes with the private overlay ones hidden   */

/* Like getxattr(2): size 0 asks for the length.  Returns length or -errno. */
ssize_t lfs_getxattr(struct lfs_fs *fs, struct lfs_node *node,
		     const char *name, void *value, size_t size);
ssize_t lfs_listxattr(struct lfs_fs *fs, struct lfs_node *node, char *list,
		      size_t size);
/* True for the xattrs layerfs keeps to itself (overlay whiteout/opaque...). */
bool lfs_xattr_is_private(const char *name);
/* True for POSIX ACLs (system.posix_acl_*). */
bool lfs_xattr_is_acl(const char *name);

/* ------------------------------------------------------------------ */
/* dir.c, inode.c: changes, which land in the upper layer               */

/*
 * Every function here returns -EROFS on a read-only mount.  Objects are
 * created by the daemon and then given to cred's owner, as the kernel's
 * overlay does; permission checks are the kernel's (default_permissions).
 */
struct lfs_cred {
	uid_t uid;
	gid_t gid;
};

/* Create and open a regular file; returns the open fd (owned by the
 * caller) with *ret_node (+1 reference) and *ret_st, or -errno.  Without
 * O_EXCL an existing name is opened as lfs_open would. */
int lfs_create(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       mode_t mode, int flags, const struct lfs_cred *cred,
	       struct lfs_node **ret_node, struct stat *ret_st);
/* mknod (any type but directories), mkdir, symlink: *ret_node +1 ref. */
int lfs_mknod(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	      mode_t mode, dev_t rdev, const struct lfs_cred *cred,
	      struct lfs_node **ret_node, struct stat *ret_st);
int lfs_mkdir(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	      mode_t mode, const struct lfs_cred *cred,
	      struct lfs_node **ret_node, struct stat *ret_st);
int lfs_symlink(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
		const char *target, const struct lfs_cred *cred,
		struct lfs_node **ret_node, struct stat *ret_st);
/* A new name for node (copied up first).  *ret_node is node itself, +1
 * reference, so that the caller sees one object with two names. */
int lfs_link(struct lfs_fs *fs, struct lfs_node *node,
	     struct lfs_node *newparent, const char *newname,
	     struct lfs_node **ret_node, struct stat *ret_st);
int lfs_unlink(struct lfs_fs *fs, struct lfs_node *parent, const char *name);
int lfs_rmdir(struct lfs_fs *fs, struct lfs_node *parent, const char *name);
/* flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE. */
int lfs_rename(struct lfs_fs *fs, struct lfs_node *parent, const char *name,
	       struct lfs_node *newparent, const char *newname,
	       unsigned flags);

/* What lfs_setattr changes (several may be set at once). */
enum {
	LFS_SET_MODE = 1 << 0,
	LFS_SET_UID = 1 << 1,
	LFS_SET_GID = 1 << 2,
	LFS_SET_SIZE = 1 << 3,
	LFS_SET_ATIME = 1 << 4,    /* st_atim, or now with ATIME_NOW */
	LFS_SET_MTIME = 1 << 5,
	LFS_SET_ATIME_NOW = 1 << 6,
	LFS_SET_MTIME_NOW = 1 << 7,
	LFS_SET_CTIME = 1 << 8,    /* ctime alone: touched by any change */
};
/* Change node's attributes (copying it up first); fd, if >= 0, is an
 * open handle of the file for a size change (an unlinked file has no
 * other).  *ret_st: the attributes after the change. */
int lfs_setattr(struct lfs_fs *fs, struct lfs_node *node,
		const struct stat *attr, unsigned to_set, int fd,
		struct stat *ret_st);
int lfs_setxattr(struct lfs_fs *fs, struct lfs_node *node, const char *name,
		 const void *value, size_t size, int flags);
int lfs_removexattr(struct lfs_fs *fs, struct lfs_node *node,
		    const char *name);
/* fsync the upper copy of a directory (nothing to do for a lower one). */
int lfs_fsyncdir(struct lfs_fs *fs, struct lfs_node *node, bool datasync);

/* ------------------------------------------------------------------ */
/* stats.c: live counters (README.md, "Counters")                     */

#define LFS_MAX_REQUEST_KINDS 40

/* Record one request of kind (< LFS_MAX_REQUEST_KINDS; the caller names
 * the kinds) that took ns nanoseconds. */
void lfs_stats_request(struct lfs_fs *fs, unsigned kind, uint64_t ns);
/* An open file handle came (+1) or went (-1). */
void lfs_stats_open_file(struct lfs_fs *fs, int delta);
/* Every counter as one JSON object (owned text, *ret_len bytes). */
int lfs_stats_json(struct lfs_fs *fs, const char *const *kind_names,
		   unsigned n_kinds, char **ret, size_t *ret_len);

/* ------------------------------------------------------------------ */
/* readdir.c: merged directory listings                                */

struct lfs_dirent {
	const char *name;     /* borrowed: valid while the dir handle lives */
	uint64_t ino;         /* reported st_ino, equal to stat's */
	unsigned char type;   /* DT_* */
	off_t next_off;       /* offset that resumes after this entry */
};

struct lfs_dir;   /* an open directory: keeps its listing stable (on a
		     writable mount, a snapshot renewed at offset 0) */

int lfs_opendir(struct lfs_fs *fs, struct lfs_node *node,
		struct lfs_dir **ret);
void lfs_closedir(struct lfs_fs *fs, struct lfs_dir *dir);

/*
 * Read the entry at offset off ("." is 0, ".." 1, then the merged names in
 * a fixed order).  Returns 1 with *ret filled, 0 at the end, or -errno.
 */
int lfs_readdir_at(struct lfs_dir *dir, off_t off, struct lfs_dirent *ret);
/* The same without a handle: offsets stay valid as names come and go, so
 * a name present throughout a listing is listed once (see readdir.c). */
int lfs_readdir_node(struct lfs_fs *fs, struct lfs_node *node, off_t off,
		     struct lfs_dirent *ret);


#endif /* LAYERFS_H */
