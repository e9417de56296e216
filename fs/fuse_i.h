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
	/* Answer OPEN and OPENDIR with ENOSYS so the kernel stops sending
	 * them (and their RELEASEs), keeping pages and listings cached.
	 * Decided at mount: only a read-only merge can do without handles. */
	bool zero_message_open;
};

/* fuse_ops.c: the request handlers, for fuse_session_new(). */
extern const struct fuse_lowlevel_ops lfs_fuse_ops;

#endif /* LAYERFS_FUSE_I_H */
