/*
 * fuse_ops.c - the thin adapter between FUSE requests and the union core.
 *
 * Each handler decodes its request, calls one core function that returns
 * 0 or -errno, and replies exactly once.  A fuse_ino_t is the address of a
 * struct lfs_node (FUSE_ROOT_ID stands for the root); the kernel's lookup
 * count is one node reference, given back by forget.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fuse_i.h"

static struct lfs_fuse *ctx(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/*
 * Every request is timed into the core's counters (README.md, "Counters"):
 * two clock reads, a few tens of nanoseconds against the microseconds a
 * FUSE round trip takes.  The handlers reply before they return, so the
 * time is the service time of the request.
 */
enum op_kind {
	K_LOOKUP,
	K_FORGET,
	K_FORGET_MULTI,
	K_GETATTR,
	K_READLINK,
	K_OPENDIR,
	K_READDIR,
	K_READDIRPLUS,
	K_RELEASEDIR,
	K_OPEN,
	K_READ,
	K_RELEASE,
	K_FLUSH,
	K_FSYNC,
	K_FSYNCDIR,
	K_STATFS,
	K_GETXATTR,
	K_LISTXATTR,
	K_ACCESS,
	K_LSEEK,
	K_SETATTR,
	K_MKNOD,
	K_MKDIR,
	K_SYMLINK,
	K_LINK,
	K_UNLINK,
	K_RMDIR,
	K_RENAME,
	K_CREATE,
	K_SETXATTR,
	K_REMOVEXATTR,
	K_WRITE_BUF,
	K_FALLOCATE,
	K_COPY_FILE_RANGE,
	N_KINDS
};

static const char *const kind_names[N_KINDS] = {
	[K_LOOKUP] = "LOOKUP",
	[K_FORGET] = "FORGET",
	[K_FORGET_MULTI] = "BATCH_FORGET",
	[K_GETATTR] = "GETATTR",
	[K_READLINK] = "READLINK",
	[K_OPENDIR] = "OPENDIR",
	[K_READDIR] = "READDIR",
	[K_READDIRPLUS] = "READDIRPLUS",
	[K_RELEASEDIR] = "RELEASEDIR",
	[K_OPEN] = "OPEN",
	[K_READ] = "READ",
	[K_RELEASE] = "RELEASE",
	[K_FLUSH] = "FLUSH",
	[K_FSYNC] = "FSYNC",
	[K_FSYNCDIR] = "FSYNCDIR",
	[K_STATFS] = "STATFS",
	[K_GETXATTR] = "GETXATTR",
	[K_LISTXATTR] = "LISTXATTR",
	[K_ACCESS] = "ACCESS",
	[K_LSEEK] = "LSEEK",
	[K_SETATTR] = "SETATTR",
	[K_MKNOD] = "MKNOD",
	[K_MKDIR] = "MKDIR",
	[K_SYMLINK] = "SYMLINK",
	[K_LINK] = "LINK",
	[K_UNLINK] = "UNLINK",
	[K_RMDIR] = "RMDIR",
	[K_RENAME] = "RENAME",
	[K_CREATE] = "CREATE",
	[K_SETXATTR] = "SETXATTR",
	[K_REMOVEXATTR] = "REMOVEXATTR",
	[K_WRITE_BUF] = "WRITE",
	[K_FALLOCATE] = "FALLOCATE",
	[K_COPY_FILE_RANGE] = "COPY_FILE_RANGE",
};

struct op_clock {
	struct lfs_fs *fs;
	unsigned kind;
	struct timespec t0;
};

static void op_clock_done(struct op_clock *c)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	lfs_stats_request(c->fs, c->kind,
			  (uint64_t)((t1.tv_sec - c->t0.tv_sec) * 1000000000LL +
				     (t1.tv_nsec - c->t0.tv_nsec)));
}

#define TIMED(req, k)                                                      \
	__attribute__((cleanup(op_clock_done))) struct op_clock op_clock_ = { \
		.fs = ctx(req)->fs, .kind = (k) };                         \
	clock_gettime(CLOCK_MONOTONIC, &op_clock_.t0)

static struct lfs_node *node_of(fuse_req_t req, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return lfs_fs_root(ctx(req)->fs);
	return (struct lfs_node *)(uintptr_t)ino;
}

static fuse_ino_t ino_of(struct lfs_fuse *f, struct lfs_node *node)
{
	return node == lfs_fs_root(f->fs) ? FUSE_ROOT_ID
					  : (fuse_ino_t)(uintptr_t)node;
}

/* Errors (and 0, for requests whose only reply is success). */
static void reply_err(fuse_req_t req, int r)
{
	fuse_reply_err(req, -r);
}

/*
 * How long the kernel may keep attributes.  The kernel makes one inode per
 * node, that is per name, so on a writable mount the names of a hard link
 * are separate inodes: a change through one (its link count, its data)
 * would not reach the others' cached attributes.  Their attributes are
 * therefore never cached, and with auto_inval_data (op_init) a changed
 * mtime or size also drops their cached pages.
 */
static double attr_timeout(const struct lfs_fuse *f, const struct stat *st)
{
	if (!f->read_only && !S_ISDIR(st->st_mode) && st->st_nlink > 1)
		return 0;
	return f->timeout;
}

static void fill_entry(struct lfs_fuse *f, struct fuse_entry_param *e,
		       struct lfs_node *node, const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->ino = ino_of(f, node);
	e->attr = *st;
	e->attr_timeout = attr_timeout(f, st);
	e->entry_timeout = f->timeout;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct lfs_fuse *f = userdata;

	/* Skipping OPEN/OPENDIR needs the kernel to take ENOSYS for "no
	 * handle needed" (Linux 4.20 and 5.1); older ones would fail them. */
	f->skip_open = !f->copyup_on_open &&
		       (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT);
	f->skip_opendir = !f->copyup_on_open &&
			  (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT);
	/* With atomic O_TRUNC the kernel leaves truncation to an OPEN it
	 * no longer sends: let it truncate through SETATTR instead. */
	if (f->skip_open)
		conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
	/* Read replies splice the layer file's pages straight to the kernel. */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* Attributes with every listing batch, not the first only (the
	 * kernel's "auto" mode): a name listed without them costs a LOOKUP
	 * when it is opened or stat'ed, as find | xargs and tar do. */
	if (conn->capable & FUSE_CAP_READDIRPLUS) {
		conn->want |= FUSE_CAP_READDIRPLUS;
		conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	}
	/* ACLs: the kernel checks them (default_permissions) and leaves the
	 * umask to us, as an ACL may say otherwise. */
	f->acl = f->acl && (conn->capable & FUSE_CAP_POSIX_ACL);
	if (f->acl)
		conn->want |= FUSE_CAP_POSIX_ACL;
	f->writeback = f->writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE);
	if (f->writeback)
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
	/* Layers never change behind our back: no invalidation on mtime.
	 * A writable mount needs it for hard links (see attr_timeout). */
	if (f->read_only)
		conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	else if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA)
		conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	TIMED(req, K_LOOKUP);
	struct lfs_fuse *f = ctx(req);
	struct fuse_entry_param e;
	struct lfs_node *node;
	struct stat st;
	int r = lfs_lookup(f->fs, node_of(req, parent), name, &node, &st);

	if (r == -ENOENT) {
		/* Ino 0 with a timeout: the kernel caches the negative. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = f->timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fill_entry(f, &e, node, &st);
	if (fuse_reply_entry(req, &e) != 0)
		lfs_node_unref(f->fs, node, 1);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	TIMED(req, K_FORGET);
	lfs_node_unref(ctx(req)->fs, node_of(req, ino), nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *forgets)
{
	TIMED(req, K_FORGET_MULTI);
	for (size_t i = 0; i < count; i++)
		lfs_node_unref(ctx(req)->fs, node_of(req, forgets[i].ino),
			       forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	TIMED(req, K_GETATTR);
	struct stat st;
	int r = lfs_getattr(ctx(req)->fs, node_of(req, ino), &st);

	(void)fi;
	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_attr(req, &st, attr_timeout(ctx(req), &st));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	TIMED(req, K_READLINK);
	char buf[PATH_MAX + 1];
	int r = lfs_readlink(ctx(req)->fs, node_of(req, ino), buf,
			     sizeof(buf) - 1);

	if (r < 0) {
		reply_err(req, r);
		return;
	}
	buf[r] = '\0';
	fuse_reply_readlink(req, buf);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	TIMED(req, K_OPENDIR);
	struct lfs_dir *dir;
	int r;

	if (ctx(req)->skip_opendir) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	r = lfs_opendir(ctx(req)->fs, node_of(req, ino), &dir);
	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)dir;
	/* A read-only merge never changes: the kernel may keep listings. */
	fi->cache_readdir = ctx(req)->read_only;
	fi->keep_cache = ctx(req)->read_only;
	if (fuse_reply_open(req, fi) != 0)
		lfs_closedir(ctx(req)->fs, dir);
}

/* Add one entry to buf; returns its size, or 0 when it does not fit (the
 * caller stops there and the kernel asks again from that offset). */
static size_t add_plain(fuse_req_t req, char *buf, size_t room,
			const struct lfs_dirent *d)
{
	struct stat st = { .st_ino = d->ino, .st_mode = DTTOIF(d->type) };
	size_t need = fuse_add_direntry(req, NULL, 0, d->name, NULL, 0);

	if (need > room)
		return 0;
	return fuse_add_direntry(req, buf, room, d->name, &st, d->next_off);
}

/* Add one entry with its attributes.  The lookup count it gives the
 * kernel is recorded in *ret_node, to be taken back if the reply fails. */
static size_t add_plus(fuse_req_t req, char *buf, size_t room,
		       struct lfs_node *dir, const struct lfs_dirent *d,
		       struct lfs_node **ret_node)
{
	struct lfs_fuse *f = ctx(req);
	struct fuse_entry_param e = { 0 };
	struct lfs_node *node = NULL;
	size_t need = fuse_add_direntry_plus(req, NULL, 0, d->name, NULL, 0);
	bool dot = strcmp(d->name, ".") == 0 || strcmp(d->name, "..") == 0;

	if (need > room)
		return 0;
	struct stat st;
	*ret_node = NULL;
	if (!dot && lfs_lookup(f->fs, dir, d->name, &node, &st) == 0) {
		fill_entry(f, &e, node, &st);
		*ret_node = node;
	} else {
		/* "." and "..", or a name that cannot be looked up now (a
		 * path too long, say): listed without attributes.  Ino 0
		 * tells the kernel to make no entry, so no count is taken. */
		e.attr.st_ino = d->ino;
		e.attr.st_mode = DTTOIF(d->type);
	}
	return fuse_add_direntry_plus(req, buf, room, d->name, &e, d->next_off);
}

/* Entry off of the directory: through the handle, or without one when
 * the kernel skips OPENDIR (skip_opendir). */
static int dir_entry(fuse_req_t req, struct lfs_node *node,
		     struct fuse_file_info *fi, off_t off, struct lfs_dirent *d)
{
	if (fi->fh)
		return lfs_readdir_at((struct lfs_dir *)(uintptr_t)fi->fh, off, d);
	return lfs_readdir_node(ctx(req)->fs, node, off, d);
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi, bool plus)
{
	struct lfs_fuse *f = ctx(req);
	struct lfs_node *dir = node_of(req, ino);
	char *buf = malloc(size);
	/* Every entry takes at least 24 bytes, so size/24 bounds the nodes
	 * a readdirplus reply can hand out. */
	struct lfs_node **given = plus ? calloc(size / 24 + 1, sizeof(*given))
				       : NULL;
	size_t pos = 0, n_given = 0;
	int r = 0;

	if (!buf || (plus && !given)) {
		free(buf);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (;;) {
		struct lfs_dirent d;
		struct lfs_node *node = NULL;
		size_t added;

		r = dir_entry(req, dir, fi, off, &d);
		if (r <= 0)
			break;
		added = plus ? add_plus(req, buf + pos, size - pos, dir, &d, &node)
			     : add_plain(req, buf + pos, size - pos, &d);
		if (node)
			given[n_given++] = node;
		if (added == 0)
			break;
		pos += added;
		off = d.next_off;
	}
	/* An error after some entries is reported by the next call.  If the
	 * reply does not reach the kernel, its lookup counts are void. */
	if (r < 0 && pos == 0)
		reply_err(req, r);
	else if (fuse_reply_buf(req, buf, pos) != 0)
		for (size_t i = 0; i < n_given; i++)
			lfs_node_unref(f->fs, given[i], 1);
	free(given);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	TIMED(req, K_READDIR);
	readdir_common(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	TIMED(req, K_READDIRPLUS);
	readdir_common(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	TIMED(req, K_RELEASEDIR);
	(void)ino;
	lfs_closedir(ctx(req)->fs, (struct lfs_dir *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* With the writeback cache the kernel reads pages of files opened for
 * writing only: open them read-write. */
static int open_flags(fuse_req_t req, int flags)
{
	if (ctx(req)->writeback && (flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	return flags;
}

/*
 * Open file handles, made only where the kernel sends OPEN (with
 * -o copyup_on_open, or a kernel without no-open support; see skip_open):
 * otherwise requests carry no handle and use the node's cached fd.  On a
 * read-only mount the handle is the fd.  On a writable one it is a struct
 * open_file: a file opened for reading in a lower layer and copied up
 * since (written through another open) is read from its upper copy from
 * then on, as kernel overlayfs does, so a reader tailing a file sees what
 * is appended to it.
 */
struct open_file {
	_Atomic int fd;
	_Atomic int old_fd;    /* the lower fd it replaced, closed at release */
	bool lower;            /* opened in a lower layer */
};

/* Make the handle for fd (owned by the handle from now on). */
static int handle_new(fuse_req_t req, struct lfs_node *node, int fd,
		      uint64_t *ret_fh)
{
	struct open_file *h;

	if (ctx(req)->read_only) {
		*ret_fh = (uint64_t)fd;
		lfs_stats_open_file(ctx(req)->fs, 1);
		return 0;
	}
	h = malloc(sizeof(*h));
	if (!h)
		return -ENOMEM;
	atomic_init(&h->fd, fd);
	atomic_init(&h->old_fd, -1);
	h->lower = lfs_node_data_layer(node) != 0;
	*ret_fh = (uint64_t)(uintptr_t)h;
	lfs_stats_open_file(ctx(req)->fs, 1);
	return 0;
}

static void handle_close(fuse_req_t req, uint64_t fh)
{
	struct open_file *h = (struct open_file *)(uintptr_t)fh;

	lfs_stats_open_file(ctx(req)->fs, -1);
	if (ctx(req)->read_only) {
		close((int)fh);
		return;
	}
	close(atomic_load(&h->fd));
	if (atomic_load(&h->old_fd) >= 0)
		close(atomic_load(&h->old_fd));
	free(h);
}

/* The fd of an open handle (borrowed), following a copy-up. */
static int handle_fd(fuse_req_t req, fuse_ino_t ino, uint64_t fh)
{
	struct open_file *h = (struct open_file *)(uintptr_t)fh;
	int fd, expected;

	if (ctx(req)->read_only)
		return (int)fh;
	fd = atomic_load(&h->fd);
	if (!h->lower || atomic_load(&h->old_fd) >= 0 ||
	    lfs_node_data_layer(node_of(req, ino)) != 0)
		return fd;
	/* Copied up since this open: reopen the upper copy, once. */
	int upper = lfs_open(ctx(req)->fs, node_of(req, ino), O_RDONLY);
	if (upper < 0)
		return fd;    /* keep reading the lower copy */
	expected = fd;
	if (!atomic_compare_exchange_strong(&h->fd, &expected, upper)) {
		close(upper);
		return expected;
	}
	atomic_store(&h->old_fd, fd);    /* in use by concurrent reads */
	return upper;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(req, K_OPEN);
	int fd, r;

	/* Once is enough: the kernel opens every file without us from then
	 * on (this one included), writes too; see skip_open. */
	if (ctx(req)->skip_open) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fd = lfs_open(ctx(req)->fs, node_of(req, ino), open_flags(req, fi->flags));
	if (fd < 0) {
		reply_err(req, fd);
		return;
	}
	r = handle_new(req, node_of(req, ino), fd, &fi->fh);
	if (r < 0) {
		close(fd);
		reply_err(req, r);
		return;
	}
	/* Lower layers are immutable and the upper changes only through
	 * this mount, whose writes keep the kernel's pages current. */
	fi->keep_cache = 1;
	fi->noflush = 1;
	if (fuse_reply_open(req, fi) != 0)
		handle_close(req, fi->fh);
}

/* Whether a request on a file carries an open handle: files opened by
 * CREATE have one; with skip_open, other files have none (fh 0). */
static bool has_handle(fuse_req_t req, const struct fuse_file_info *fi)
{
	return fi && (!ctx(req)->skip_open || fi->fh != 0);
}

/* The fd behind a request: its open handle's, or the node's cached fd
 * (for writing: on the upper copy, made now if need be).  *ret_owned:
 * the caller must close it. */
static int file_fd(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		   bool write, int *ret_fd, bool *ret_owned)
{
	struct lfs_node *node = node_of(req, ino);

	if (has_handle(req, fi)) {
		*ret_fd = handle_fd(req, ino, fi->fh);
		*ret_owned = false;
		return 0;
	}
	return write ? lfs_write_fd(ctx(req)->fs, node, ret_fd, ret_owned)
		     : lfs_data_fd(ctx(req)->fs, node, ret_fd, ret_owned);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	TIMED(req, K_READ);
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	bool owned;
	int fd;
	int r = file_fd(req, ino, fi, false, &fd, &owned);

	if (r < 0) {
		reply_err(req, r);
		return;
	}
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
	if (owned)
		close(fd);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	TIMED(req, K_RELEASE);
	(void)ino;
	if (has_handle(req, fi))
		handle_close(req, fi->fh);
	fuse_reply_err(req, 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	TIMED(req, K_FLUSH);
	(void)ino;
	(void)fi;
	/* Nothing is buffered here; ENOSYS makes the kernel stop asking, one
	 * round trip less for every close(2). */
	fuse_reply_err(req, ENOSYS);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	TIMED(req, K_FSYNC);
	int fd;

	if (!has_handle(req, fi)) {
		reply_err(req, lfs_fsync(ctx(req)->fs, node_of(req, ino),
					 datasync != 0));
		return;
	}
	/* Lower layers are never written: only an upper file has anything
	 * to sync, and a read-only mount has no handles to write through. */
	if (ctx(req)->read_only) {
		fuse_reply_err(req, 0);
		return;
	}
	fd = handle_fd(req, ino, fi->fh);
	fuse_reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? errno
								       : 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			struct fuse_file_info *fi)
{
	TIMED(req, K_FSYNCDIR);
	(void)fi;
	reply_err(req, lfs_fsyncdir(ctx(req)->fs, node_of(req, ino),
				    datasync != 0));
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	TIMED(req, K_STATFS);
	struct statvfs st;
	int r = lfs_statfs(ctx(req)->fs, &st);

	(void)ino;
	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_statfs(req, &st);
}

/*
 * getxattr and listxattr share their reply: size 0 asks only for the
 * length.  name NULL means list.
 */
static void reply_xattr_query(fuse_req_t req, fuse_ino_t ino,
			      const char *name, size_t size)
{
	char *buf = size ? malloc(size) : NULL;
	struct lfs_node *node = node_of(req, ino);
	ssize_t len;

	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	len = name ? lfs_getxattr(ctx(req)->fs, node, name, buf, size)
		   : lfs_listxattr(ctx(req)->fs, node, buf, size);
	if (len < 0)
		reply_err(req, (int)len);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)len);
	else
		fuse_reply_buf(req, buf, (size_t)len);
	free(buf);
}

/* getfattr -n layerfs.stats /mnt: the counters as JSON.  The name has no
 * namespace a real file could carry, so it can shadow nothing. */
#define STATS_XATTR "layerfs.stats"

static void reply_stats(fuse_req_t req, size_t size)
{
	char *json;
	size_t len;
	int r = lfs_stats_json(ctx(req)->fs, kind_names, N_KINDS, &json, &len);

	/* Counters move between a caller's size query and its read (the
	 * query itself is a request): promise room to spare. */
	if (r < 0)
		reply_err(req, r);
	else if (size == 0)
		fuse_reply_xattr(req, len + 4096);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, json, len);
	if (r == 0)
		free(json);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	TIMED(req, K_GETXATTR);
	if (ino == FUSE_ROOT_ID && strcmp(name, STATS_XATTR) == 0) {
		reply_stats(req, size);
		return;
	}
	reply_xattr_query(req, ino, name, size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	TIMED(req, K_LISTXATTR);
	reply_xattr_query(req, ino, NULL, size);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	TIMED(req, K_ACCESS);
	fuse_reply_err(req, -lfs_access(ctx(req)->fs, node_of(req, ino), mask));
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	TIMED(req, K_LSEEK);
	bool owned;
	int fd;
	int r = file_fd(req, ino, fi, false, &fd, &owned);

	if (r < 0) {
		reply_err(req, r);
		return;
	}
	/* The kernel keeps the caller's file position; ours is scratch. */
	off_t res = lseek(fd, off, whence);
	if (res < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, res);
	if (owned)
		close(fd);
}

/* ------------------------------------------------------------------ */
/* Changes (the core answers EROFS on a read-only mount)               */

static struct lfs_cred cred_of(fuse_req_t req)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);

	return (struct lfs_cred){ .uid = c->uid, .gid = c->gid };
}

/* The mode of a new object: with ACLs on, the kernel leaves the caller's
 * umask to us (an ACL default of the parent would override it; layerfs
 * applies the umask regardless, the stricter choice). */
static mode_t new_mode(fuse_req_t req, mode_t mode)
{
	if (!ctx(req)->acl)
		return mode;
	return mode & ~(fuse_req_ctx(req)->umask & 0777);
}


/* Reply to a request that made a new name: its node and attributes. */
static void reply_new_entry(fuse_req_t req, int r, struct lfs_node *node,
			    const struct stat *st)
{
	struct lfs_fuse *f = ctx(req);
	struct fuse_entry_param e;

	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fill_entry(f, &e, node, st);
	if (fuse_reply_entry(req, &e) != 0)
		lfs_node_unref(f->fs, node, 1);
}

static unsigned setattr_mask(int to_set)
{
	unsigned m = 0;

	m |= (to_set & FUSE_SET_ATTR_MODE) ? LFS_SET_MODE : 0;
	m |= (to_set & FUSE_SET_ATTR_UID) ? LFS_SET_UID : 0;
	m |= (to_set & FUSE_SET_ATTR_GID) ? LFS_SET_GID : 0;
	m |= (to_set & FUSE_SET_ATTR_SIZE) ? LFS_SET_SIZE : 0;
	m |= (to_set & FUSE_SET_ATTR_ATIME) ? LFS_SET_ATIME : 0;
	m |= (to_set & FUSE_SET_ATTR_MTIME) ? LFS_SET_MTIME : 0;
	m |= (to_set & FUSE_SET_ATTR_ATIME_NOW) ? LFS_SET_ATIME_NOW : 0;
	m |= (to_set & FUSE_SET_ATTR_MTIME_NOW) ? LFS_SET_MTIME_NOW : 0;
	return m;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	TIMED(req, K_SETATTR);
	struct stat st;
	int r = lfs_setattr(ctx(req)->fs, node_of(req, ino), attr,
			    setattr_mask(to_set),
			    has_handle(req, fi) ? handle_fd(req, ino, fi->fh)
						: -1,
			    &st);

	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_attr(req, &st, attr_timeout(ctx(req), &st));
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	TIMED(req, K_MKNOD);
	struct lfs_cred c = cred_of(req);
	struct lfs_node *node = NULL;
	struct stat st;
	int r = lfs_mknod(ctx(req)->fs, node_of(req, parent), name,
			  new_mode(req, mode), rdev, &c, &node, &st);

	reply_new_entry(req, r, node, &st);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	TIMED(req, K_MKDIR);
	struct lfs_cred c = cred_of(req);
	struct lfs_node *node = NULL;
	struct stat st;
	int r = lfs_mkdir(ctx(req)->fs, node_of(req, parent), name,
			  new_mode(req, mode), &c, &node, &st);

	reply_new_entry(req, r, node, &st);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	TIMED(req, K_SYMLINK);
	struct lfs_cred c = cred_of(req);
	struct lfs_node *node = NULL;
	struct stat st;
	int r = lfs_symlink(ctx(req)->fs, node_of(req, parent), name, link, &c,
			    &node, &st);

	reply_new_entry(req, r, node, &st);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	TIMED(req, K_LINK);
	struct lfs_node *node = NULL;
	struct stat st;
	int r = lfs_link(ctx(req)->fs, node_of(req, ino),
			 node_of(req, newparent), newname, &node, &st);

	reply_new_entry(req, r, node, &st);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	TIMED(req, K_UNLINK);
	reply_err(req, lfs_unlink(ctx(req)->fs, node_of(req, parent), name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	TIMED(req, K_RMDIR);
	reply_err(req, lfs_rmdir(ctx(req)->fs, node_of(req, parent), name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	TIMED(req, K_RENAME);
	reply_err(req, lfs_rename(ctx(req)->fs, node_of(req, parent), name,
				  node_of(req, newparent), newname, flags));
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	TIMED(req, K_CREATE);
	struct lfs_fuse *f = ctx(req);
	struct lfs_cred c = cred_of(req);
	struct fuse_entry_param e;
	struct lfs_node *node;
	struct stat st;
	int flags = open_flags(req, fi->flags);

	/* Without handles (skip_open) the fd becomes the node's, for reads
	 * and writes alike: the kernel sends no RELEASE for it. */
	if (f->skip_open)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	int fd = lfs_create(f->fs, node_of(req, parent), name,
			    new_mode(req, mode), flags, &c, &node, &st);

	if (fd < 0) {
		reply_err(req, fd);
		return;
	}
	fill_entry(f, &e, node, &st);
	fi->keep_cache = 1;
	fi->noflush = 1;
	if (f->skip_open) {
		lfs_adopt_data_fd(f->fs, node, fd);
		fi->fh = 0;
		if (fuse_reply_create(req, &e, fi) != 0)
			lfs_node_unref(f->fs, node, 1);
		return;
	}
	int r = handle_new(req, node, fd, &fi->fh);
	if (r < 0) {
		close(fd);
		lfs_node_unref(f->fs, node, 1);
		reply_err(req, r);
		return;
	}
	if (fuse_reply_create(req, &e, fi) != 0) {
		handle_close(req, fi->fh);
		lfs_node_unref(f->fs, node, 1);
	}
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	TIMED(req, K_SETXATTR);
	reply_err(req, lfs_setxattr(ctx(req)->fs, node_of(req, ino), name,
				    value, size, flags));
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	TIMED(req, K_REMOVEXATTR);
	reply_err(req, lfs_removexattr(ctx(req)->fs, node_of(req, ino), name));
}

/* Data written to an upper file: its fd takes it, spliced from the
 * request when the kernel sent it that way. */
static void op_write_buf(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_bufvec *in, off_t off,
			 struct fuse_file_info *fi)
{
	TIMED(req, K_WRITE_BUF);
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t n;
	bool owned;
	int fd;
	int r = file_fd(req, ino, fi, true, &fd, &owned);

	if (r < 0) {
		reply_err(req, r);
		return;
	}
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = fd;
	out.buf[0].pos = off;
	n = fuse_buf_copy(&out, in, 0);
	if (n < 0)
		reply_err(req, (int)n);
	else
		fuse_reply_write(req, (size_t)n);
	if (owned)
		close(fd);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode,
			 off_t offset, off_t length, struct fuse_file_info *fi)
{
	TIMED(req, K_FALLOCATE);
	bool owned;
	int fd;
	int r = file_fd(req, ino, fi, true, &fd, &owned);

	if (r == 0) {
		if (fallocate(fd, mode, offset, length) < 0)
			r = -errno;
		if (owned)
			close(fd);
	}
	reply_err(req, r);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in,
			       off_t off_in, struct fuse_file_info *fi_in,
			       fuse_ino_t ino_out, off_t off_out,
			       struct fuse_file_info *fi_out, size_t len,
			       int flags)
{
	TIMED(req, K_COPY_FILE_RANGE);
	loff_t in = off_in, out = off_out;
	int fd_in = -1, fd_out = -1;
	bool own_in = false, own_out = false;
	ssize_t n = 0;
	int r = file_fd(req, ino_in, fi_in, false, &fd_in, &own_in);

	if (r == 0)
		r = file_fd(req, ino_out, fi_out, true, &fd_out, &own_out);
	if (r == 0) {
		n = copy_file_range(fd_in, &in, fd_out, &out, len,
				    (unsigned)flags);
		r = n < 0 ? -errno : 0;
	}
	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_write(req, (size_t)n);
	if (own_in)
		close(fd_in);
	if (own_out)
		close(fd_out);
}

const struct fuse_lowlevel_ops lfs_fuse_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.flush = op_flush,
	.fsync = op_fsync,
	.statfs = op_statfs,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.access = op_access,
	.lseek = op_lseek,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
	.write_buf = op_write_buf,
	.fallocate = op_fallocate,
	.copy_file_range = op_copy_file_range,
};
