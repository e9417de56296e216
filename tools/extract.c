/*
 * extract.c - one pass over a layer blob: its bytes are read once, and
 * from those same bytes come the blob's sha256, the decompressed stream's
 * sha256 (the diff_id), the extracted tree and the tar layout record
 * (tarsplit.c).  Nothing is trusted before the caller has compared both
 * digests: the tree is extracted into staging, which the caller throws
 * away if either digest is wrong.
 *
 * Two threads, because decompressing and hashing cost about as much as
 * creating the files on a fast disk:
 *   - the reader reads the blob (pread: the caller's fd offset is left
 *     alone), hashes it, decompresses it with libarchive (any filter,
 *     "raw" format), hashes the result and hands it on in 1 MiB slots;
 *   - the caller's thread parses the tar with libarchive's reader (no
 *     hand-written tar parsing), fed from those slots, feeds the same
 *     bytes to the tarsplit writer and creates each entry itself.
 *
 * The extractor: each entry is created relative to an O_PATH fd of its
 * parent directory, opened with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS) from the layer root (kept in a small cache), with
 * openat(O_CREAT|O_EXCL|O_NOFOLLOW), mkdirat, symlinkat, linkat (the
 * target's parent found the same way), mknodat; owner, mode, xattrs, ACLs
 * and times with fchown/fchmod/fsetxattr/futimens (the *at forms for
 * what cannot be opened).  What libarchive's archive_write_disk did with
 * the options import used (SECURE_SYMLINKS, SECURE_NODOTDOT,
 * SECURE_NOABSOLUTEPATHS, PERM, TIME, XATTR, ACL, OWNER as root) is kept:
 * an existing entry is replaced (a directory only by rmdir, so never one
 * with content), an entry below a non-directory is refused, missing
 * parents are made (0777 & ~umask),
 * nothing is created or linked through a symbolic link, directories get
 * their mode and times at the end (deepest first, so that a read-only
 * directory can still be filled and the times stay), POSIX ACL xattrs in
 * SCHILY.xattr records are skipped as libarchive skips them and tar ACLs
 * (SCHILY.acl) are set, and failures to set metadata are not errors (they
 * were warnings).  One difference: owners are the numeric ids of the tar
 * header, as every container engine takes them, not looked up by user
 * name on this host.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <linux/openat2.h>

#include <archive.h>
#include <archive_entry.h>

#include "layerctl.h"

/* ---- the reader thread -------------------------------------------------- */

#define SLOT_SIZE (1 << 20)
#define N_SLOTS 4

struct feed {
	int fd;
	off_t off;                   /* next byte of the blob to read */
	struct sha256 *blob_h, *diff_h;   /* blob_h NULL: not wanted */
	long long diff_len;
	unsigned char rbuf[1 << 17];

	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned char *slot[N_SLOTS];
	size_t slot_len[N_SLOTS];
	size_t head, count;          /* filled slots: head .. head+count-1 */
	bool holding;                /* the tar reader has slot[head] */
	bool done;                   /* the reader has filled its last slot */
	int err;                     /* the reader's failure, -errno */
	char errmsg[ERRLEN];
	const char *what;
};

static la_ssize_t blob_read(struct archive *a, void *arg, const void **buf)
{
	struct feed *f = arg;
	ssize_t n;

	do
		n = pread(f->fd, f->rbuf, sizeof(f->rbuf), f->off);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		archive_set_error(a, errno, "%s", strerror(errno));
		return -1;
	}
	f->off += n;
	if (f->blob_h)
		sha256_update(f->blob_h, f->rbuf, (size_t)n);
	*buf = f->rbuf;
	return n;
}

/* Wait for a free slot; NULL if the tar side went away (never: it
 * drains). */
static unsigned char *slot_to_fill(struct feed *f)
{
	unsigned char *s;

	pthread_mutex_lock(&f->mu);
	while (f->count == N_SLOTS)
		pthread_cond_wait(&f->cv, &f->mu);
	s = f->slot[(f->head + f->count) % N_SLOTS];
	pthread_mutex_unlock(&f->mu);
	return s;
}

static void slot_filled(struct feed *f, size_t len)
{
	pthread_mutex_lock(&f->mu);
	f->slot_len[(f->head + f->count) % N_SLOTS] = len;
	f->count++;
	pthread_cond_broadcast(&f->cv);
	pthread_mutex_unlock(&f->mu);
}

static void *read_blob(void *arg)
{
	struct feed *f = arg;
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	unsigned char *s = NULL;
	size_t used = 0;
	int r = 0;

	if (!a) {
		r = -ENOMEM;
		snprintf(f->errmsg, ERRLEN, "%s: out of memory", f->what);
		goto out;
	}
	/* "raw": the decompressed stream itself, whatever it holds. */
	archive_read_support_filter_all(a);
	archive_read_support_format_raw(a);
	if (archive_read_open(a, f, NULL, blob_read, NULL) != ARCHIVE_OK ||
	    archive_read_next_header(a, &e) != ARCHIVE_OK) {
		r = -EIO;
		snprintf(f->errmsg, ERRLEN, "%s: %s", f->what,
			 archive_error_string(a));
		goto out;
	}
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int ar = archive_read_data_block(a, &buf, &len, &off);
		if (ar == ARCHIVE_EOF)
			break;
		if (ar != ARCHIVE_OK || off != f->diff_len) {
			r = -EIO;
			snprintf(f->errmsg, ERRLEN, "%s: %s", f->what,
				 ar != ARCHIVE_OK ? archive_error_string(a)
						  : "decompressed stream has a gap");
			goto out;
		}
		sha256_update(f->diff_h, buf, len);
		f->diff_len += (long long)len;
		for (const unsigned char *p = buf; len > 0;) {
			if (!s) {
				s = slot_to_fill(f);
				used = 0;
			}
			size_t take = SLOT_SIZE - used < len ? SLOT_SIZE - used : len;
			memcpy(s + used, p, take);
			used += take;
			p += take;
			len -= take;
			if (used == SLOT_SIZE) {
				slot_filled(f, used);
				s = NULL;
			}
		}
	}
	if (s && used > 0)
		slot_filled(f, used);
out:
	/* The blob's digest covers all of it, read or not by the decompressor
	 * (trailing bytes, or the rest after a decompression error). */
	while (f->blob_h) {
		ssize_t n = pread(f->fd, f->rbuf, sizeof(f->rbuf), f->off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n < 0 && r == 0) {
				r = -EIO;
				snprintf(f->errmsg, ERRLEN, "%s: %s", f->what,
					 strerror(errno));
			}
			break;
		}
		f->off += n;
		sha256_update(f->blob_h, f->rbuf, (size_t)n);
	}
	if (a)
		archive_read_free(a);
	pthread_mutex_lock(&f->mu);
	f->err = r;
	f->done = true;
	pthread_cond_broadcast(&f->cv);
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

/* The next slot of decompressed bytes for the tar side (the previous one
 * is given back); NULL at the end (f->err says whether all was read). */
static const unsigned char *feed_next(struct feed *f, size_t *len)
{
	const unsigned char *s = NULL;

	pthread_mutex_lock(&f->mu);
	if (f->holding) {
		f->head = (f->head + 1) % N_SLOTS;
		f->count--;
		f->holding = false;
		pthread_cond_broadcast(&f->cv);
	}
	while (f->count == 0 && !f->done)
		pthread_cond_wait(&f->cv, &f->mu);
	if (f->count > 0) {
		s = f->slot[f->head];
		*len = f->slot_len[f->head];
		f->holding = true;
	}
	pthread_mutex_unlock(&f->mu);
	return s;
}

/* ---- the extractor ---------------------------------------------------- */

/* A cache of O_PATH fds of parent directories, by path relative to the
 * root.  It is emptied before the next entry whenever an entry replaced
 * something that existed (rare), so that no fd stands for a directory
 * that is no longer at its path, and when it is half full; never while an
 * entry is being made, so the fds an entry got stay open for it. */
#define DIRCACHE_SLOTS 512    /* at most half used */

struct dircache_slot {
	char *path;
	int fd;
};

struct fixup {                /* a directory's mode and times, for the end */
	char *path;               /* "" for the root */
	size_t seq;
	mode_t mode;
	bool times;
	struct timespec ts[2];
	unsigned char *acl_access, *acl_default;   /* xattr values, owned */
	size_t acl_access_len, acl_default_len;
};

struct xtr {
	int root;                 /* O_PATH fd of the destination */
	const char *what;
	bool outer, as_root;
	uid_t euid;
	gid_t egid;
	mode_t umask;
	time_t start;
	struct dircache_slot cache[DIRCACHE_SLOTS];
	size_t cached;
	bool stale;               /* something was replaced: clear the cache */
	struct fixup *fix;
	size_t n_fix, cap_fix;
	char *skipped;            /* messages for devices skipped (owned) */
	size_t skipped_len;
	void (*progress)(long long bytes);
	char *err;
};

static uint32_t path_hash(const char *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 16777619u;
	return h;
}

static void cache_clear(struct xtr *x)
{
	for (size_t i = 0; i < DIRCACHE_SLOTS; i++) {
		if (x->cache[i].path) {
			free(x->cache[i].path);
			close(x->cache[i].fd);
			x->cache[i].path = NULL;
		}
	}
	x->cached = 0;
}

static int cache_get(struct xtr *x, const char *dir, size_t n)
{
	for (uint32_t i = path_hash(dir, n) % DIRCACHE_SLOTS;;
	     i = (i + 1) % DIRCACHE_SLOTS) {
		const char *p = x->cache[i].path;
		if (!p)
			return -1;
		if (strlen(p) == n && memcmp(p, dir, n) == 0)
			return x->cache[i].fd;
	}
}

/* Takes fd; it stays open (in the cache) until the cache is cleared.  An
 * entry adds at most two (its parent, a hard link target's parent). */
static bool cache_put(struct xtr *x, const char *dir, size_t n, int fd)
{
	char *copy = strndup(dir, n);
	if (!copy)
		return false;
	uint32_t i = path_hash(dir, n) % DIRCACHE_SLOTS;
	while (x->cache[i].path)
		i = (i + 1) % DIRCACHE_SLOTS;
	x->cache[i].path = copy;
	x->cache[i].fd = fd;
	x->cached++;
	return true;
}

static int fail(struct xtr *x, int r, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(struct xtr *x, int r, const char *name, const char *fmt, ...)
{
	char why[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(x->err, ERRLEN, "%s: entry %.300s: %s", x->what, name, why);
	return r;
}

bool path_is_safe_relative(const char *p)
{
	if (!p || !*p || p[0] == '/')
		return false;
	for (const char *c = p; *c;) {
		const char *end = strchr(c, '/');
		size_t len = end ? (size_t)(end - c) : strlen(c);
		if ((len == 2 && c[0] == '.' && c[1] == '.') || len > NAME_MAX)
			return false;
		c += len + (end ? 1 : 0);
	}
	return strlen(p) < PATH_MAX;
}

static int check_entry_name(const char *name, const char *what,
			    char err[ERRLEN])
{
	if (!name)
		return 0;
	if (name[0] == '/') {
		snprintf(err, ERRLEN, "%s: entry %s: absolute path", what, name);
		return -EINVAL;
	}
	if (!path_is_safe_relative(name) && strcmp(name, ".") && strcmp(name, "./")) {
		snprintf(err, ERRLEN, "%s: entry %.300s: %s", what, name,
			 strlen(name) >= PATH_MAX ? "name too long"
			 : strstr(name, "..") ? "path escapes the layer (..)"
					      : "name component too long");
		return -EINVAL;
	}
	return 0;
}

/* name (checked) without "." components, empty ones and trailing '/';
 * "" is the root. */
static void normalize(const char *name, char out[PATH_MAX])
{
	size_t n = 0;

	for (const char *c = name; *c;) {
		const char *end = strchr(c, '/');
		size_t len = end ? (size_t)(end - c) : strlen(c);
		if (len > 0 && !(len == 1 && c[0] == '.')) {
			if (n > 0)
				out[n++] = '/';
			memcpy(out + n, c, len);
			n += len;
		}
		c += len + (end ? 1 : 0);
	}
	out[n] = '\0';
}

static const struct open_how dir_how = {
	.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
	.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
};

static int openat2_dir(int at, const char *path)
{
	return (int)syscall(SYS_openat2, at, path, &dir_how, sizeof(dir_how));
}

static int add_fixup(struct xtr *x, const char *path, size_t n, mode_t mode,
		     const struct timespec ts[2], bool times,
		     struct fixup **ret)
{
	if (x->n_fix == x->cap_fix) {
		size_t cap = x->cap_fix ? x->cap_fix * 2 : 64;
		struct fixup *grown = realloc(x->fix, cap * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		x->fix = grown;
		x->cap_fix = cap;
	}
	struct fixup *f = &x->fix[x->n_fix];
	memset(f, 0, sizeof(*f));
	if (!(f->path = strndup(path, n)))
		return -ENOMEM;
	f->seq = x->n_fix++;
	f->mode = mode;
	f->times = times;
	if (times)
		memcpy(f->ts, ts, sizeof(f->ts));
	if (ret)
		*ret = f;
	return 0;
}

/*
 * The O_PATH fd of directory dir (n bytes of a normalized path) beneath
 * the root, made if missing (as libarchive made them: 0777 & ~umask), a
 * non-directory in the way replaced; never through a symbolic link.
 * Borrowed (cached), or x->root.
 */
static int parent_dir(struct xtr *x, const char *dir, size_t n,
		      const char *name, bool create)
{
	char path[PATH_MAX];
	int fd;

	if (n == 0)
		return x->root;
	if ((fd = cache_get(x, dir, n)) >= 0)
		return fd;
	memcpy(path, dir, n);
	path[n] = '\0';
	fd = openat2_dir(x->root, path);
	if (fd < 0 && (errno == ENOENT || errno == ENOTDIR) && create) {
		/* One component at a time, making what is missing. */
		int cur = x->root;
		for (char *c = path; *c;) {
			char *end = strchr(c, '/');
			if (end)
				*end = '\0';
			int next = openat2_dir(cur, c);
			/* (A file where a directory goes is refused, as
			 * libarchive refused it: ENOTDIR.) */
			if (next < 0 && errno == ENOENT) {
				mode_t m = 0777 & ~x->umask;
				size_t plen = (size_t)(c - path) + strlen(c);
				if (mkdirat(cur, c, m | 0700) < 0)
					; /* errno says why */
				else if ((m & 0700) != 0700 &&
					 add_fixup(x, path, plen, m, NULL, false,
						   NULL) < 0)
					errno = ENOMEM;
				else
					next = openat2_dir(cur, c);
			}
			int e = errno;
			if (cur != x->root)
				close(cur);
			cur = next;
			if (next < 0) {
				errno = e;
				break;
			}
			if (!end)
				break;
			*end = '/';
			c = end + 1;
		}
		fd = cur;
		memcpy(path, dir, n);
		path[n] = '\0';
	}
	if (fd < 0) {
		if (errno == ELOOP || errno == EXDEV)
			return fail(x, -ELOOP, name, "cannot extract through "
				    "symlink %.300s", path);
		if (errno == ENOTDIR)
			return fail(x, -ENOTDIR, name, "cannot extract through "
				    "%.300s: not a directory", path);
		return fail(x, -errno, name, "%.300s: %s", path, strerror(errno));
	}
	if (!cache_put(x, dir, n, fd)) {
		close(fd);
		return fail(x, -ENOMEM, name, "out of memory");
	}
	return fd;
}

/* Make room for a new entry base in dir: an existing non-directory is
 * removed, an existing directory too unless want_dir (then *exists). */
static int make_room(struct xtr *x, int dir, const char *base, bool want_dir,
		     bool *exists)
{
	struct stat st;

	*exists = false;
	if (fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(st.st_mode) && want_dir) {
		*exists = true;
		return 0;
	}
	if (unlinkat(dir, base, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0)
		return -errno;
	x->stale = true;    /* it may have been a cached parent */
	return 0;
}

static void entry_times(struct xtr *x, struct archive_entry *e,
			struct timespec ts[2], bool *set)
{
	*set = archive_entry_atime_is_set(e) || archive_entry_mtime_is_set(e);
	ts[0].tv_sec = ts[1].tv_sec = x->start;
	ts[0].tv_nsec = ts[1].tv_nsec = 0;
	if (archive_entry_atime_is_set(e)) {
		ts[0].tv_sec = archive_entry_atime(e);
		ts[0].tv_nsec = archive_entry_atime_nsec(e);
	}
	if (archive_entry_mtime_is_set(e)) {
		ts[1].tv_sec = archive_entry_mtime(e);
		ts[1].tv_nsec = archive_entry_mtime_nsec(e);
	}
}

/* A tar ACL (SCHILY.acl, libarchive's entry ACLs) as the value of a
 * system.posix_acl_* xattr; 0 if the entry has none of that type. */
static size_t acl_value(struct archive_entry *e, int type,
			unsigned char **ret)
{
	struct ent { uint16_t tag, perm; uint32_t id; } *v = NULL;
	int count = archive_entry_acl_reset(e, type);
	int atype, permset, tag, qual;
	const char *name;
	size_t n = 0;
	bool have_mask = false, need_mask = false;
	uint16_t group_class = 0;

	*ret = NULL;
	if (count <= (type == ARCHIVE_ENTRY_ACL_TYPE_ACCESS ? 3 : 0))
		return 0;
	v = calloc((size_t)count + 4, sizeof(*v));
	if (!v)
		return 0;
	while (n < (size_t)count + 3 &&
	       archive_entry_acl_next(e, type, &atype, &permset, &tag, &qual,
				      &name) == ARCHIVE_OK) {
		uint16_t t;
		switch (tag) {
		case ARCHIVE_ENTRY_ACL_USER_OBJ: t = 0x01; break;
		case ARCHIVE_ENTRY_ACL_USER: t = 0x02; break;
		case ARCHIVE_ENTRY_ACL_GROUP_OBJ: t = 0x04; break;
		case ARCHIVE_ENTRY_ACL_GROUP: t = 0x08; break;
		case ARCHIVE_ENTRY_ACL_MASK: t = 0x10; break;
		case ARCHIVE_ENTRY_ACL_OTHER: t = 0x20; break;
		default: continue;
		}
		uint16_t perm = (uint16_t)(((permset & ARCHIVE_ENTRY_ACL_READ) ? 4 : 0) |
			((permset & ARCHIVE_ENTRY_ACL_WRITE) ? 2 : 0) |
			((permset & ARCHIVE_ENTRY_ACL_EXECUTE) ? 1 : 0));
		v[n].tag = t;
		v[n].perm = perm;
		v[n].id = (t == 0x02 || t == 0x08) ? (uint32_t)qual : UINT32_MAX;
		if (t == 0x10)
			have_mask = true;
		if (t == 0x02 || t == 0x08)
			need_mask = true;
		if (t == 0x02 || t == 0x04 || t == 0x08)
			group_class |= perm;
		n++;
	}
	if (need_mask && !have_mask) {
		v[n].tag = 0x10;
		v[n].perm = group_class;
		v[n].id = UINT32_MAX;
		n++;
	}
	/* The kernel wants them by tag, then id. */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 &&
		     (v[j - 1].tag > v[j].tag ||
		      (v[j - 1].tag == v[j].tag && v[j - 1].id > v[j].id)); j--) {
			struct ent t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	size_t len = 4 + n * 8;
	unsigned char *out = malloc(len);
	if (!out) {
		free(v);
		return 0;
	}
	out[0] = 2, out[1] = out[2] = out[3] = 0;    /* version 2, little endian */
	for (size_t i = 0; i < n; i++) {
		unsigned char *p = out + 4 + i * 8;
		p[0] = v[i].tag & 0xff, p[1] = v[i].tag >> 8;
		p[2] = v[i].perm & 0xff, p[3] = v[i].perm >> 8;
		for (int b = 0; b < 4; b++)
			p[4 + b] = (unsigned char)(v[i].id >> (8 * b));
	}
	free(v);
	*ret = out;
	return len;
}

/* Set one xattr on fd, or (fd < 0) on base in dir without following it. */
static void set_xattr(int fd, int dir, const char *base, const char *name,
		      const void *value, size_t size)
{
	if (fd >= 0) {
		(void)fsetxattr(fd, name, value, size, 0);
		return;
	}
	char proc[PATH_MAX + 64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d/%s", dir, base);
	(void)lsetxattr(proc, name, value, size, 0);
}

/* The entry's xattrs (as libarchive set them: POSIX ACL xattrs skipped)
 * and, with acls, its tar access ACL.  Failures are not errors. */
static void set_xattrs(struct archive_entry *e, int fd, int dir,
		       const char *base, bool acls)
{
	const char *name;
	const void *value;
	size_t size;
	int n = archive_entry_xattr_reset(e);

	while (n-- > 0) {
		archive_entry_xattr_next(e, &name, &value, &size);
		if (!name ||
		    !strcmp(name, "system.posix_acl_access") ||
		    !strcmp(name, "system.posix_acl_default") ||
		    !strcmp(name, "trusted.SGI_ACL_DEFAULT") ||
		    !strcmp(name, "trusted.SGI_ACL_FILE") ||
		    !strncmp(name, "xfsroot.", 8))
			continue;
		set_xattr(fd, dir, base, name, value, size);
	}
	if (!acls)
		return;
	unsigned char *v;
	size_t len = acl_value(e, ARCHIVE_ENTRY_ACL_TYPE_ACCESS, &v);
	if (len) {
		set_xattr(fd, dir, base, "system.posix_acl_access", v, len);
		free(v);
	}
}

/* Setuid and setgid only on what has the tar's owner (as libarchive
 * did: without root, or if the chown failed, the bits would give the
 * extracting user's ids away). */
static mode_t owner_checked(struct archive_entry *e, int fd, int dir,
			    const char *base, mode_t mode)
{
	struct stat st;
	int r;

	if (!(mode & (S_ISUID | S_ISGID)))
		return mode;
	r = fd >= 0 ? fstat(fd, &st) : fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW);
	if (r < 0 || st.st_uid != (uid_t)archive_entry_uid(e))
		mode &= ~(mode_t)S_ISUID;
	if (r < 0 || st.st_gid != (gid_t)archive_entry_gid(e))
		mode &= ~(mode_t)S_ISGID;
	return mode;
}

/* Owner (as root), mode, xattrs, times of what was just made at base in
 * dir; fd open on it, or -1 (a symlink or a device: the *at calls). */
static void set_meta(struct xtr *x, struct archive_entry *e, int fd, int dir,
		     const char *base, mode_t created)
{
	mode_t mode = archive_entry_mode(e) & 07777;
	bool is_link = archive_entry_filetype(e) == AE_IFLNK;
	uid_t uid = (uid_t)archive_entry_uid(e);
	gid_t gid = (gid_t)archive_entry_gid(e);
	struct timespec ts[2];
	bool times;

	if (x->as_root && (uid != x->euid || gid != x->egid)) {
		if (fd >= 0)
			(void)fchown(fd, uid, gid);
		else
			(void)fchownat(dir, base, uid, gid, AT_SYMLINK_NOFOLLOW);
		created &= 0777;    /* a chown clears setuid and setgid */
	}
	if (!is_link)
		mode = owner_checked(e, fd, dir, base, mode);
	if (!is_link && mode != created) {
		if (fd >= 0)
			(void)fchmod(fd, mode);
		else
			(void)fchmodat(dir, base, mode, 0);   /* ours, not a link */
	}
	set_xattrs(e, fd, dir, base, !is_link);
	entry_times(x, e, ts, &times);
	if (times) {
		if (fd >= 0)
			(void)futimens(fd, ts);
		else
			(void)utimensat(dir, base, ts, AT_SYMLINK_NOFOLLOW);
	}
}

/* Write the entry's data to fd (which was truncated or is new). */
static int write_data(struct xtr *x, struct archive *a, struct archive_entry *e,
		      int fd, const char *name)
{
	long long end = 0, size = archive_entry_size(e);
	const void *buf;
	size_t len;
	la_int64_t off;
	int ar;

	while ((ar = archive_read_data_block(a, &buf, &len, &off)) == ARCHIVE_OK) {
		for (size_t done = 0; done < len;) {
			ssize_t w = pwrite(fd, (const char *)buf + done, len - done,
					   off + (off_t)done);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return fail(x, w < 0 ? -errno : -EIO, name, "%s",
					    w < 0 ? strerror(errno) : "short write");
			done += (size_t)w;
		}
		if (off + (long long)len > end)
			end = off + (long long)len;
		if (x->progress)
			x->progress((long long)len);
	}
	if (ar < ARCHIVE_WARN) {
		const char *why = archive_error_string(a);
		return fail(x, -EIO, name, "%s", why ? why : "cannot read");
	}
	/* A sparse file's last hole. */
	if (end < size && ftruncate(fd, size) < 0)
		return fail(x, -errno, name, "%s", strerror(errno));
	return 0;
}

static int make_file(struct xtr *x, struct archive *a, struct archive_entry *e,
		     int dir, const char *base, const char *name)
{
	mode_t mode = archive_entry_mode(e) & 0777;
	bool exists;
	int fd, r;

	for (int tries = 0;; tries++) {
		fd = openat(dir, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
				       O_CLOEXEC, mode);
		if (fd >= 0 || errno != EEXIST || tries > 0)
			break;
		if ((r = make_room(x, dir, base, false, &exists)) < 0)
			return fail(x, r, name, "cannot replace it: %s",
				    strerror(-r));
	}
	if (fd < 0)
		return fail(x, -errno, name, "%s", strerror(errno));
	r = write_data(x, a, e, fd, name);
	if (r == 0)
		set_meta(x, e, fd, dir, base, mode & ~x->umask);
	if (close(fd) < 0 && r == 0)
		r = fail(x, -errno, name, "%s", strerror(errno));
	return r;
}

static int make_dir(struct xtr *x, struct archive_entry *e, int dir,
		    const char *base, const char *norm, const char *name)
{
	uid_t uid = (uid_t)archive_entry_uid(e);
	gid_t gid = (gid_t)archive_entry_gid(e);
	struct timespec ts[2];
	struct fixup *f;
	bool exists = false, times;
	int r;

	if (*norm) {
		if (mkdirat(dir, base, 0700) < 0) {
			if (errno != EEXIST)
				return fail(x, -errno, name, "%s", strerror(errno));
			if ((r = make_room(x, dir, base, true, &exists)) < 0)
				return fail(x, r, name, "cannot replace it: %s",
					    strerror(-r));
			if (!exists && mkdirat(dir, base, 0700) < 0)
				return fail(x, -errno, name, "%s", strerror(errno));
		}
	} else {
		base = ".";    /* the layer's root ("./" in the tar) */
	}
	if (x->as_root && (uid != x->euid || gid != x->egid))
		(void)fchownat(dir, base, uid, gid, AT_SYMLINK_NOFOLLOW);
	if (archive_entry_xattr_count(e) > 0) {
		int fd = openat(dir, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					   O_CLOEXEC);
		if (fd >= 0) {
			/* ACLs at the end: a default ACL would change
			 * what is created inside. */
			set_xattrs(e, fd, dir, base, false);
			close(fd);
		}
	}
	entry_times(x, e, ts, &times);
	/* (libarchive checked no owner before a directory's setgid.) */
	if (add_fixup(x, norm, strlen(norm), archive_entry_mode(e) & 07777, ts,
		      times, &f) < 0)
		return fail(x, -ENOMEM, name, "out of memory");
	f->acl_access_len = acl_value(e, ARCHIVE_ENTRY_ACL_TYPE_ACCESS,
				      &f->acl_access);
	f->acl_default_len = acl_value(e, ARCHIVE_ENTRY_ACL_TYPE_DEFAULT,
				       &f->acl_default);
	return 0;
}

static int make_other(struct xtr *x, struct archive_entry *e, int dir,
		      const char *base, const char *name)
{
	mode_t type = archive_entry_filetype(e);
	bool exists;
	int r;

	for (int tries = 0;; tries++) {
		if (type == AE_IFLNK) {
			const char *target = archive_entry_symlink(e);
			r = symlinkat(target ? target : "", dir, base);
		} else {
			r = mknodat(dir, base, type | (archive_entry_mode(e) & 0777),
				    archive_entry_rdev(e));
		}
		if (r == 0 || errno != EEXIST || tries > 0)
			break;
		if ((r = make_room(x, dir, base, false, &exists)) < 0)
			return fail(x, r, name, "cannot replace it: %s",
				    strerror(-r));
	}
	if (r < 0)
		return fail(x, -errno, name, "%s", strerror(errno));
	set_meta(x, e, -1, dir, base,
		 type == AE_IFLNK ? 0 : archive_entry_mode(e) & 0777 & ~x->umask);
	return 0;
}

static int make_hardlink(struct xtr *x, struct archive *a,
			 struct archive_entry *e, int dir, const char *base,
			 const char *norm, const char *name)
{
	const char *link = archive_entry_hardlink(e);
	char target[PATH_MAX];
	struct stat st, tst;
	bool exists;
	int r;

	normalize(link, target);
	if (!*target)
		return fail(x, -EINVAL, name, "hard link to the layer's root");
	if (strcmp(target, norm) == 0)
		return 0;    /* a link to itself: there it is */
	const char *slash = strrchr(target, '/');
	const char *tbase = slash ? slash + 1 : target;
	size_t tn = slash ? (size_t)(slash - target) : 0;
	int tdir = parent_dir(x, target, tn, name, false);
	if (tdir < 0)
		return tdir;
	for (int tries = 0;; tries++) {
		r = linkat(tdir, tbase, dir, base, 0);
		if (r == 0 || errno != EEXIST || tries > 0)
			break;
		if (fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    fstatat(tdir, tbase, &tst, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_dev == tst.st_dev && st.st_ino == tst.st_ino)
			return 0;    /* linked already */
		if ((r = make_room(x, dir, base, false, &exists)) < 0)
			return fail(x, r, name, "cannot replace it: %s",
				    strerror(-r));
	}
	if (r < 0)
		return fail(x, -errno, name, "hard link to %.300s: %s", link,
			    strerror(errno));
	if (archive_entry_size(e) > 0) {
		/* A hard link with data (pax allows it): written into the
		 * linked file, never through a symbolic link. */
		int fd = openat(dir, base, O_WRONLY | O_TRUNC | O_NOFOLLOW |
					   O_CLOEXEC);
		if (fd < 0)
			return fail(x, -errno, name, "%s", strerror(errno));
		r = write_data(x, a, e, fd, name);
		if (r == 0)
			set_meta(x, e, fd, dir, base, 07777);
		close(fd);
		return r;
	}
	return 0;
}

static int extract_entry(struct xtr *x, struct archive *a,
			 struct archive_entry *e, const char *name)
{
	char norm[PATH_MAX];
	mode_t type = archive_entry_filetype(e);
	int dir;

	if (x->stale || x->cached >= DIRCACHE_SLOTS / 2) {
		cache_clear(x);
		x->stale = false;
	}
	normalize(name, norm);
	const char *slash = strrchr(norm, '/');
	const char *base = slash ? slash + 1 : norm;
	if (!*norm && (type != AE_IFDIR || archive_entry_hardlink(e)))
		return fail(x, -EINVAL, name, "cannot replace the layer's root");
	dir = parent_dir(x, norm, slash ? (size_t)(slash - norm) : 0, name, true);
	if (dir < 0)
		return dir;
	if (archive_entry_hardlink(e))
		return make_hardlink(x, a, e, dir, base, norm, name);
	switch (type) {
	case AE_IFDIR:
		return make_dir(x, e, dir, base, norm, name);
	case AE_IFLNK:
	case AE_IFCHR:
	case AE_IFBLK:
	case AE_IFIFO:
		return make_other(x, e, dir, base, name);
	default:    /* regular, and (as libarchive did) anything else */
		return make_file(x, a, e, dir, base, name);
	}
}

static int fixup_cmp(const void *pa, const void *pb)
{
	const struct fixup *a = pa, *b = pb;
	int c = strcmp(b->path, a->path);    /* deepest first */

	if (c)
		return c;
	return a->seq < b->seq ? 1 : a->seq > b->seq ? -1 : 0;   /* last first */
}

/* Directories' modes, ACLs and times, children before parents. */
static void apply_fixups(struct xtr *x)
{
	static const struct open_how how = {
		.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
			   RESOLVE_NO_MAGICLINKS,
	};

	if (x->n_fix == 0)
		return;
	qsort(x->fix, x->n_fix, sizeof(*x->fix), fixup_cmp);
	for (size_t i = 0; i < x->n_fix; i++) {
		struct fixup *f = &x->fix[i];
		if (i > 0 && strcmp(f->path, x->fix[i - 1].path) == 0)
			continue;    /* an earlier entry for the same directory */
		int fd = (int)syscall(SYS_openat2, x->root,
				      *f->path ? f->path : ".", &how, sizeof(how));
		if (fd < 0)
			continue;    /* replaced since by a non-directory */
		(void)fchmod(fd, f->mode);
		if (f->acl_access_len)
			(void)fsetxattr(fd, "system.posix_acl_access",
					f->acl_access, f->acl_access_len, 0);
		if (f->acl_default_len)
			(void)fsetxattr(fd, "system.posix_acl_default",
					f->acl_default, f->acl_default_len, 0);
		if (f->times)
			(void)futimens(fd, f->ts);
		close(fd);
	}
}

static void xtr_free(struct xtr *x)
{
	cache_clear(x);
	for (size_t i = 0; i < x->n_fix; i++) {
		free(x->fix[i].path);
		free(x->fix[i].acl_access);
		free(x->fix[i].acl_default);
	}
	free(x->fix);
	if (x->root >= 0)
		close(x->root);
}

static void note_skipped(struct xtr *x, const char *name)
{
	char line[PATH_MAX + 256];
	int n = snprintf(line, sizeof(line), "layerctl: import: %s: skipping "
			 "device %s (not root)\n", x->what, name);
	char *grown = n > 0 ? realloc(x->skipped, x->skipped_len + (size_t)n + 1)
			    : NULL;

	if (!grown)
		return;
	memcpy(grown + x->skipped_len, line, (size_t)n + 1);
	x->skipped = grown;
	x->skipped_len += (size_t)n;
}

/* ---- the pass ------------------------------------------------------------ */

struct tar_src {
	struct feed *feed;
	struct tarsplit_writer *ts;
};

static la_ssize_t tar_read(struct archive *a, void *arg, const void **buf)
{
	struct tar_src *src = arg;
	size_t len;
	const unsigned char *s = feed_next(src->feed, &len);

	if (!s) {
		if (src->feed->err) {
			archive_set_error(a, EIO, "%s", src->feed->errmsg);
			return -1;
		}
		return 0;
	}
	tarsplit_writer_feed(src->ts, s, len);
	*buf = s;
	return (la_ssize_t)len;
}

/* Parse and extract everything the feed brings; x->err on failure. */
static int extract_stream(struct xtr *x, struct tar_src *src, const char *dest,
			  long long *ret_files, long long *ret_size)
{
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	long long files = 0, size = 0;
	int r = 0, ar;

	if (!a) {
		snprintf(x->err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	x->root = open(dest, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (x->root < 0) {
		r = -errno;
		snprintf(x->err, ERRLEN, "%s: %s", dest, strerror(errno));
		goto out;
	}
	archive_read_support_format_tar(a);
	if (archive_read_open(a, src, NULL, tar_read, NULL) != ARCHIVE_OK) {
		snprintf(x->err, ERRLEN, "%s: %s", x->what, archive_error_string(a));
		r = -EIO;
		goto out;
	}
	while ((ar = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		const char *name = archive_entry_pathname(e);
		const char *link = archive_entry_hardlink(e);
		mode_t type = archive_entry_filetype(e);
		bool content = type == AE_IFREG && !link;

		tarsplit_writer_entry(src->ts, archive_read_header_position(a),
				      archive_filter_bytes(a, 0),
				      content ? name : NULL,
				      content ? archive_entry_size(e) : 0,
				      archive_entry_sparse_count(e) > 0);
		if (!name) {
			snprintf(x->err, ERRLEN, "%s: an entry without a name",
				 x->what);
			r = -EINVAL;
			goto out;
		}
		if ((r = check_entry_name(name, x->what, x->err)) < 0 ||
		    (r = check_entry_name(link, x->what, x->err)) < 0)
			goto out;
		if (x->outer && (link || (type != AE_IFREG && type != AE_IFDIR))) {
			snprintf(x->err, ERRLEN, "%s: entry %.300s: an image archive "
				 "holds only files and directories", x->what, name);
			r = -EINVAL;
			goto out;
		}
		if ((type == AE_IFCHR || type == AE_IFBLK) && !x->as_root) {
			/* Not ours to create: skipped, as rootless engines do. */
			note_skipped(x, name);
			continue;
		}
		if ((r = extract_entry(x, a, e, name)) < 0)
			goto out;
		files++;
		size += archive_entry_size(e);
	}
	if (ar != ARCHIVE_EOF) {
		snprintf(x->err, ERRLEN, "%s: %s", x->what, archive_error_string(a));
		r = -EIO;
		goto out;
	}
	tarsplit_writer_end(src->ts, archive_read_header_position(a));
	apply_fixups(x);
	*ret_files = files;
	*ret_size = size;
out:
	archive_read_free(a);
	return r;
}

int layer_pass_run(int fd, struct layer_pass *p)
{
	struct feed *f = calloc(1, sizeof(*f));
	struct xtr x = { .root = -1 };
	struct tar_src src = { .feed = f };
	pthread_t thread;
	bool started = false;
	int r = 0;

	p->read_r = p->extract_r = p->record_r = 0;
	p->read_err[0] = p->extract_err[0] = p->record_err[0] = '\0';
	p->blob_hex[0] = p->diff_hex[0] = '\0';
	p->files = p->size = 0;
	p->recorded = false;
	p->skipped = NULL;
	if (!f || pthread_mutex_init(&f->mu, NULL) != 0) {
		free(f);
		snprintf(p->read_err, ERRLEN, "out of memory");
		return p->read_r = -ENOMEM;
	}
	pthread_cond_init(&f->cv, NULL);
	f->fd = fd;
	f->what = p->what;
	f->blob_h = p->no_blob_digest ? NULL : sha256_new();
	f->diff_h = sha256_new();
	for (int i = 0; i < N_SLOTS; i++)
		if (!(f->slot[i] = malloc(SLOT_SIZE)))
			r = -ENOMEM;
	if (r < 0 || (!f->blob_h && !p->no_blob_digest) || !f->diff_h) {
		snprintf(p->read_err, ERRLEN, "out of memory");
		p->read_r = -ENOMEM;
		goto out;
	}
	if ((r = pthread_create(&thread, NULL, read_blob, f)) != 0) {
		snprintf(p->read_err, ERRLEN, "cannot start a thread: %s",
			 strerror(r));
		p->read_r = -r;
		goto out;
	}
	started = true;

	if (p->dest) {
		mode_t old = umask(0);
		umask(old);
		x.what = p->what;
		x.outer = p->outer;
		x.euid = geteuid();
		x.egid = getegid();
		x.as_root = x.euid == 0;
		x.umask = old;
		x.start = time(NULL);
		x.progress = p->progress;
		x.err = p->extract_err;
		if (p->tarsplit &&
		    !(src.ts = tarsplit_writer_new(p->tarsplit, p->record_err)))
			p->record_r = -EIO;
		p->extract_r = extract_stream(&x, &src, p->dest, &p->files,
					      &p->size);
	}
	/* The rest (all of it without dest, or after a failure, or what
	 * follows the tar's end) is read for the digests and the record. */
	size_t len;
	const unsigned char *s;
	while ((s = feed_next(f, &len)) != NULL)
		if (p->extract_r == 0)
			tarsplit_writer_feed(src.ts, s, len);
	if (src.ts) {
		r = tarsplit_writer_finish(src.ts, p->extract_r == 0 && f->err == 0,
					   p->record_err);
		p->recorded = r == 0;
		if (p->extract_r == 0 && f->err == 0 && r != -ENOTSUP)
			p->record_r = r;    /* -EAGAIN: the caller records again */
	}
out:
	if (started) {
		pthread_join(thread, NULL);
		if (f->err) {
			p->read_r = f->err;
			memcpy(p->read_err, f->errmsg, ERRLEN);
		}
	}
	if (f->blob_h)
		sha256_final_hex(f->blob_h, p->blob_hex);
	if (f->diff_h)
		sha256_final_hex(f->diff_h, p->diff_hex);
	for (int i = 0; i < N_SLOTS; i++)
		free(f->slot[i]);
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	free(f);
	if (p->dest) {
		p->skipped = x.skipped;
		xtr_free(&x);
	}
	return p->read_r ? p->read_r : p->extract_r ? p->extract_r : p->record_r;
}
