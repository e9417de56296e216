/*
 * layercache.c - a layer's directories, recorded once, keyed by its digest.
 *
 * A layer named by its sha256 digest never changes, so what one readdir of
 * each of its directories says (already classified by whiteout.c) can be
 * kept in a file and reused by every later mount.  After a cache drop,
 * building one merged directory of a 128-layer stack then costs no
 * directory reads at all instead of one per layer, and lookups cost what
 * they cost in one layer.  Nothing here decides union rules: dirindex.c
 * merges cached records exactly as it merges live ones.
 *
 * The file, <cache dir>/<digest>.idx, native byte order (a local cache):
 *   header   magic "LFSIDX01", then struct file_header
 *   per dir  struct dir_record, the dir's path ("." for the root) + NUL,
 *            then n_entries times: struct entry_record, for an object its
 *            struct stat_record, then the name + NUL
 * Recording attributes too means a stat through the merge reads nothing of
 * the layer at all (atime is as recorded).
 * A cache is used only if its digest and the layer root's device, inode
 * and ctime match, every record lies inside the file and every name is one
 * readdir could return; anything else counts as no cache.  Files are written under a temporary name and
 * renamed into place, so a reader never sees half a file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layerfs_i.h"

#define CACHE_MAGIC "LFSIDX01"
#define CACHE_VERSION 2u

struct file_header {
	char magic[8];
	uint32_t version;
	uint32_t n_dirs;
	uint64_t file_size;
	uint64_t root_dev;
	uint64_t root_ino;
	int64_t root_ctime_sec;
	int64_t root_ctime_nsec;
	char digest[64];
};

struct dir_record {
	uint32_t path_len;     /* without the NUL */
	uint32_t n_entries;
	uint8_t opaque;
	uint8_t pad[7];
};

struct entry_record {
	uint64_t ino;
	uint16_t name_len;     /* without the NUL */
	uint8_t kind;          /* LFS_ENTRY_OBJECT or LFS_ENTRY_WHITEOUT */
	uint8_t type;          /* DT_* */
	uint8_t pad[4];
};

/* After an object's entry_record, before its name: its lstat(2). */
struct stat_record {
	uint64_t size, blocks, rdev, nlink;
	int64_t atime_sec, mtime_sec, ctime_sec;
	uint32_t atime_nsec, mtime_nsec, ctime_nsec;
	uint32_t mode, uid, gid, blksize;
};

struct cached_dir {
	UT_hash_handle hh;
	const char *path;          /* points into the mapping */
	size_t entries_off;        /* first entry_record */
	uint32_t n_entries;
	bool opaque;
};

struct lfs_layercache {
	const uint8_t *map;        /* owned copy of the whole file (read, not
				      mapped: a file cut short under us must
				      not raise SIGBUS in the daemon) */
	size_t size;
	struct cached_dir *dirs;   /* owned; uthash by path */
};

/* ------------------------------------------------------------------ */
/* Reading                                                             */

static bool header_matches(const struct file_header *h, size_t size,
			   const struct lfs_layer *L)
{
	return memcmp(h->magic, CACHE_MAGIC, 8) == 0 &&
	       h->version == CACHE_VERSION && h->file_size == size &&
	       memcmp(h->digest, L->digest, 64) == 0 &&
	       h->root_dev == (uint64_t)L->dev &&
	       h->root_ino == (uint64_t)L->root_ino &&
	       h->root_ctime_sec == (int64_t)L->root_ctime.tv_sec &&
	       h->root_ctime_nsec == (int64_t)L->root_ctime.tv_nsec;
}

/* A name readdir could have returned: 1..NAME_MAX bytes, NUL-terminated
 * right after them, no '/', not "." or "..". */
static bool is_valid_name(const char *name, size_t len)
{
	return len > 0 && len <= NAME_MAX && name[len] == '\0' &&
	       memchr(name, '\0', len) == NULL && memchr(name, '/', len) == NULL &&
	       strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* Index every directory record; -EBADMSG if any lies outside the file. */
static int cache_index_dirs(struct lfs_layercache *c, uint32_t n_dirs)
{
	size_t off = sizeof(struct file_header);

	for (uint32_t i = 0; i < n_dirs; i++) {
		struct dir_record dr;
		struct cached_dir *d;

		if (off + sizeof(dr) > c->size)
			return -EBADMSG;
		memcpy(&dr, c->map + off, sizeof(dr));
		off += sizeof(dr);
		if (dr.path_len >= c->size - off || c->map[off + dr.path_len])
			return -EBADMSG;
		if (!(d = calloc(1, sizeof(*d))))
			return -ENOMEM;
		d->path = (const char *)c->map + off;
		d->opaque = dr.opaque;
		d->n_entries = dr.n_entries;
		off += dr.path_len + 1;
		d->entries_off = off;
		lfs_hash_oom = false;
		HASH_ADD_KEYPTR(hh, c->dirs, d->path, dr.path_len, d);
		if (lfs_hash_oom) {
			free(d);
			return -ENOMEM;
		}
		for (uint32_t j = 0; j < dr.n_entries; j++) {
			struct entry_record er;
			if (off + sizeof(er) > c->size)
				return -EBADMSG;
			memcpy(&er, c->map + off, sizeof(er));
			off += sizeof(er);
			if (er.kind == LFS_ENTRY_OBJECT) {
				struct stat_record sr;
				if (off + sizeof(sr) > c->size)
					return -EBADMSG;
				memcpy(&sr, c->map + off, sizeof(sr));
				if (IFTODT(sr.mode) != er.type)
					return -EBADMSG;
				off += sizeof(sr);
			}
			if (er.name_len >= c->size - off ||
			    !is_valid_name((const char *)c->map + off,
					   er.name_len) ||
			    (er.kind != LFS_ENTRY_OBJECT &&
			     er.kind != LFS_ENTRY_WHITEOUT))
				return -EBADMSG;
			off += er.name_len + 1;
		}
	}
	return off == c->size ? 0 : -EBADMSG;
}

int lfs_layercache_load(const char *cache_dir, const struct lfs_layer *L,
			struct lfs_layercache **ret)
{
	char path[PATH_MAX];
	struct lfs_layercache *c;
	struct file_header h;
	struct stat st;
	int fd, r;

	if (!L->digest[0])
		return -ENOENT;
	if (snprintf(path, sizeof(path), "%s/%s.idx", cache_dir, L->digest) >=
	    (int)sizeof(path))
		return -ENAMETOOLONG;
	/* O_NONBLOCK: a FIFO planted there must not hang the mount. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (size_t)st.st_size < sizeof(h) ||
	    pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    !header_matches(&h, (size_t)st.st_size, L)) {
		close(fd);
		return -ESTALE;
	}
	if (!(c = calloc(1, sizeof(*c))) ||
	    !(c->map = malloc((size_t)st.st_size))) {
		free(c);
		close(fd);
		return -ENOMEM;
	}
	c->size = (size_t)st.st_size;
	r = pread(fd, (void *)c->map, c->size, 0) == (ssize_t)c->size
		    ? 0 : -ESTALE;
	close(fd);
	if (r == 0)
		r = cache_index_dirs(c, h.n_dirs);
	if (r < 0) {
		lfs_layercache_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

void lfs_layercache_prefetch(const char *cache_dir, const struct lfs_layer *L)
{
	char path[PATH_MAX];
	int fd;

	if (!L->digest[0] ||
	    snprintf(path, sizeof(path), "%s/%s.idx", cache_dir, L->digest) >=
		    (int)sizeof(path))
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return;
	posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
	close(fd);
}

void lfs_layercache_free(struct lfs_layercache *c)
{
	struct cached_dir *d, *tmp;

	if (!c)
		return;
	HASH_ITER(hh, c->dirs, d, tmp) {
		HASH_DEL(c->dirs, d);
		free(d);
	}
	free((void *)c->map);
	free(c);
}

int lfs_layercache_find_dir(const struct lfs_layercache *c,
			    const char *relpath, struct lfs_cached_dir *ret)
{
	struct cached_dir *d = NULL;

	HASH_FIND_STR(c->dirs, relpath, d);
	if (!d)
		return 0;
	ret->cache = c;
	ret->opaque = d->opaque;
	ret->remaining = d->n_entries;
	ret->next_off = d->entries_off;
	return 1;
}

int lfs_cached_dir_next(struct lfs_cached_dir *d, struct lfs_classified *ret,
			uint64_t *ret_ino)
{
	struct entry_record er;

	if (d->remaining == 0)
		return 0;
	/* Bounds were checked when the file was loaded. */
	memcpy(&er, d->cache->map + d->next_off, sizeof(er));
	d->next_off += sizeof(er);
	ret->kind = (enum lfs_entry_kind)er.kind;
	ret->type = er.type;
	ret->stat_rec = NULL;
	if (er.kind == LFS_ENTRY_OBJECT) {
		ret->stat_rec = d->cache->map + d->next_off;
		d->next_off += sizeof(struct stat_record);
	}
	ret->name = (const char *)d->cache->map + d->next_off;
	*ret_ino = er.ino;
	d->next_off += er.name_len + 1u;
	d->remaining--;
	return 1;
}

void lfs_layercache_decode_stat(const void *stat_rec, struct stat *ret)
{
	struct stat_record sr;
	struct stat st = { 0 };

	memcpy(&sr, stat_rec, sizeof(sr));
	st.st_mode = sr.mode;
	st.st_uid = sr.uid;
	st.st_gid = sr.gid;
	st.st_size = (off_t)sr.size;
	st.st_blocks = (blkcnt_t)sr.blocks;
	st.st_blksize = (blksize_t)sr.blksize;
	st.st_rdev = (dev_t)sr.rdev;
	st.st_nlink = (nlink_t)sr.nlink;
	st.st_atim.tv_sec = sr.atime_sec;
	st.st_atim.tv_nsec = sr.atime_nsec;
	st.st_mtim.tv_sec = sr.mtime_sec;
	st.st_mtim.tv_nsec = sr.mtime_nsec;
	st.st_ctim.tv_sec = sr.ctime_sec;
	st.st_ctim.tv_nsec = sr.ctime_nsec;
	*ret = st;
}

static void encode_stat(const struct stat *st, struct stat_record *sr)
{
	memset(sr, 0, sizeof(*sr));
	sr->mode = st->st_mode;
	sr->uid = st->st_uid;
	sr->gid = st->st_gid;
	sr->size = (uint64_t)st->st_size;
	sr->blocks = (uint64_t)st->st_blocks;
	sr->blksize = (uint32_t)st->st_blksize;
	sr->rdev = (uint64_t)st->st_rdev;
	sr->nlink = (uint64_t)st->st_nlink;
	sr->atime_sec = st->st_atim.tv_sec;
	sr->atime_nsec = (uint32_t)st->st_atim.tv_nsec;
	sr->mtime_sec = st->st_mtim.tv_sec;
	sr->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
	sr->ctime_sec = st->st_ctim.tv_sec;
	sr->ctime_nsec = (uint32_t)st->st_ctim.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */

struct out_buf {
	uint8_t *data;
	size_t len, cap;
};

static int out_put(struct out_buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *grown = realloc(b->data, cap);
		if (!grown)
			return -ENOMEM;
		b->data = grown;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

/* Directories still to record, breadth first: a queue of paths, so that
 * no depth of nesting in a layer can exhaust the builder's stack. */
struct dir_queue {
	char **paths;          /* owned */
	size_t head, n, cap;
};

static int queue_push(struct dir_queue *q, char *path)
{
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 64;
		char **grown = realloc(q->paths, cap * sizeof(*grown));
		if (!grown) {
			free(path);
			return -ENOMEM;
		}
		q->paths = grown;
		q->cap = cap;
	}
	q->paths[q->n++] = path;
	return 0;
}

static void queue_free(struct dir_queue *q)
{
	for (size_t i = q->head; i < q->n; i++)
		free(q->paths[i]);
	free(q->paths);
}

/* "relpath/name", or just "name" under the root; NULL when it would not
 * fit in PATH_MAX (a live read could not open it either). */
static char *child_path(const char *relpath, const char *name)
{
	char *p = NULL;
	int n = strcmp(relpath, ".") == 0 ? asprintf(&p, "%s", name)
					  : asprintf(&p, "%s/%s", relpath, name);

	if (n < 0)
		return NULL;
	if (n >= PATH_MAX) {
		free(p);
		return NULL;
	}
	return p;
}

/* Record one directory of the layer, queueing its subdirectories. */
static int record_dir(struct out_buf *b, const struct lfs_layer *L,
		      const char *relpath, struct dir_queue *q,
		      const atomic_bool *stop)
{
	struct lfs_dir_marks marks;
	struct dir_record dr = { 0 };
	size_t dr_off = b->len, n_entries = 0;
	struct dirent *de;
	DIR *dir;
	int fd = openat(L->root_fd, relpath,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int r;

	if (fd < 0)
		return -errno;
	r = lfs_whiteout_read_dir_marks(fd, &marks);
	if (r < 0 || !(dir = fdopendir(fd))) {
		if (r == 0)
			r = -errno;
		close(fd);
		return r;
	}
	dr.path_len = (uint32_t)strlen(relpath);
	if ((r = out_put(b, &dr, sizeof(dr))) < 0 ||
	    (r = out_put(b, relpath, dr.path_len + 1)) < 0)
		goto out;
	dr.opaque = marks.opaque;
	for (errno = 0; (de = readdir(dir)) != NULL; errno = 0) {
		struct lfs_classified c;
		struct entry_record er = { 0 };

		if (stop && atomic_load(stop)) {
			r = -ECANCELED;
			goto out;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		r = lfs_whiteout_classify(dirfd(dir), &marks, de->d_name,
					  de->d_type, &c);
		if (r < 0)
			goto out;    /* a layer that changes is not cached */
		if (c.kind == LFS_ENTRY_OPAQUE_MARK)
			dr.opaque = 1;
		if (c.kind != LFS_ENTRY_OBJECT && c.kind != LFS_ENTRY_WHITEOUT)
			continue;
		er.ino = de->d_ino;
		er.kind = (uint8_t)c.kind;
		er.type = c.type;
		er.name_len = (uint16_t)strlen(c.name);
		if ((r = out_put(b, &er, sizeof(er))) < 0)
			goto out;
		if (c.kind == LFS_ENTRY_OBJECT) {
			struct stat st;
			struct stat_record sr;
			if (fstatat(dirfd(dir), de->d_name, &st,
				    AT_SYMLINK_NOFOLLOW) < 0) {
				r = -errno;
				goto out;
			}
			if (IFTODT(st.st_mode) != c.type) {
				r = -ESTALE;    /* changed under us */
				goto out;
			}
			encode_stat(&st, &sr);
			if ((r = out_put(b, &sr, sizeof(sr))) < 0)
				goto out;
		}
		if ((r = out_put(b, c.name, er.name_len + 1u)) < 0)
			goto out;
		n_entries++;
		if (c.kind == LFS_ENTRY_OBJECT && c.type == DT_DIR) {
			char *child = child_path(relpath, de->d_name);
			r = child ? queue_push(q, child) : -ENAMETOOLONG;
			if (r < 0)
				goto out;
		}
	}
	r = errno ? -errno : 0;
	dr.n_entries = (uint32_t)n_entries;
	memcpy(b->data + dr_off, &dr, sizeof(dr));
out:
	closedir(dir);
	return r;
}

/* Record every directory of the layer; returns how many, or -errno. */
static int record_layer(struct out_buf *b, const struct lfs_layer *L,
			const atomic_bool *stop, uint32_t *ret_n_dirs)
{
	struct dir_queue q = { 0 };
	uint32_t n_dirs = 0;
	char *root = strdup(".");
	int r = root ? queue_push(&q, root) : -ENOMEM;

	while (r == 0 && q.head < q.n) {
		char *path = q.paths[q.head++];
		r = record_dir(b, L, path, &q, stop);
		free(path);
		n_dirs++;
	}
	queue_free(&q);
	if (r == 0)
		*ret_n_dirs = n_dirs;
	return r;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int lfs_layercache_build(const char *cache_dir, const struct lfs_layer *L,
			 const atomic_bool *stop)
{
	struct out_buf b = { 0 };
	struct file_header h = { 0 };
	char tmp[PATH_MAX], final[PATH_MAX];
	uint32_t n_dirs = 0;
	int fd = -1, r;

	if (!L->digest[0])
		return -EINVAL;
	if (snprintf(final, sizeof(final), "%s/%s.idx", cache_dir, L->digest) >=
		    (int)sizeof(final) ||
	    snprintf(tmp, sizeof(tmp), "%s/.%s.%d.tmp", cache_dir, L->digest,
		     (int)getpid()) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	r = out_put(&b, &h, sizeof(h));
	if (r == 0)
		r = record_layer(&b, L, stop, &n_dirs);
	if (r < 0)
		goto out;

	memcpy(h.magic, CACHE_MAGIC, 8);
	h.version = CACHE_VERSION;
	h.n_dirs = n_dirs;
	h.file_size = b.len;
	h.root_dev = (uint64_t)L->dev;
	h.root_ino = (uint64_t)L->root_ino;
	h.root_ctime_sec = (int64_t)L->root_ctime.tv_sec;
	h.root_ctime_nsec = (int64_t)L->root_ctime.tv_nsec;
	memcpy(h.digest, L->digest, 64);
	memcpy(b.data, &h, sizeof(h));

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		  0644);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	r = write_all(fd, b.data, b.len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	fd = -1;
	if (r == 0 && rename(tmp, final) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
out:
	if (fd >= 0) {
		close(fd);
		unlink(tmp);
	}
	free(b.data);
	return r;
}
