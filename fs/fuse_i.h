/*
 * fuse_i.h - the FUSE adapter's own declarations (fuse_ops.c, fuse_main.c).
 * Only the adapter includes FUSE headers; the core never does.
 */
#ifndef LAYERFS_FUSE_I_H
#define LAYERFS_FUSE_I_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "layerfs.h"

struct lfs_fuse {
	struct lfs_fs *fs;       /* owned by fuse_main.c */
	double timeout;          /* entry, attribute and negative caching */
	bool read_only;
	bool writeback;          /* writeback=1: the kernel's write cache */
	bool acl;                /* POSIX ACLs enforced by the kernel (when
				    it can): creates apply the umask */
	/* Answer OPEN with ENOSYS so the kernel stops sending it and its
	 * RELEASE (files then carry no handle: reads and writes use the
	 * node's cached fd), keeping pages cached.  Decided at init. */
	bool skip_open;
	bool copyup_on_open;     /* -o copyup_on_open: never skip_open */
	/* The same for OPENDIR (listings need no handle, see readdir.c). */
	bool skip_opendir;
};

/* fuse_ops.c: the request handlers, for fuse_session_new(). */
extern const struct fuse_lowlevel_ops lfs_fuse_ops;

#endif /* LAYERFS_FUSE_I_H */
