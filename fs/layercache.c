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
 *            then n_entries times: struct entry_record, name + NUL
 * A cache is used only if its digest and the layer root's device, inode
 * and ctime match, and every record lies inside the file; anything else
 * counts as no cache.  Files are written under a temporary name and
 * renamed into place, so a reader never sees half a file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layerfs_i.h"

#define CACHE_MAGIC "LFSIDX01"
#define CACHE_VERSION 1u

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

struct cached_dir {
	UT_hash_handle hh;
	const char *path;          /* points into the mapping */
	size_t entries_off;        /* first entry_record */
	uint32_t n_entries;
	bool opaque;
};

struct lfs_layercache {
	const uint8_t *map;        /* owned mapping of the whole file */
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
			if (er.name_len == 0 || er.name_len >= c->size - off ||
			    c->map[off + er.name_len] ||
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
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(h) ||
	    pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    !header_matches(&h, (size_t)st.st_size, L)) {
		close(fd);
		return -ESTALE;
	}
	if (!(c = calloc(1, sizeof(*c)))) {
		close(fd);
		return -ENOMEM;
	}
	c->size = (size_t)st.st_size;
	c->map = mmap(NULL, c->size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (c->map == MAP_FAILED) {
		free(c);
		return -ENOMEM;
	}
	r = cache_index_dirs(c, h.n_dirs);
	if (r < 0) {
		lfs_layercache_free(c);
		return r;
	}
	*ret = c;
	return 0;
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
	munmap((void *)c->map, c->size);
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
	ret->kind = (enum lfs_entry_kind)er.kind;
	ret->type = er.type;
	ret->name = (const char *)d->cache->map + d->next_off + sizeof(er);
	*ret_ino = er.ino;
	d->next_off += sizeof(er) + er.name_len + 1;
	d->remaining--;
	return 1;
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

/* Record directory relpath (open as fd, which this takes) and, depth
 * first, every directory below it. */
static int record_dir(struct out_buf *b, uint32_t *n_dirs, int fd,
		      const char *relpath, const atomic_bool *stop)
{
	struct lfs_dir_marks marks;
	struct dir_record dr = { 0 };
	size_t dr_off = b->len, n_entries = 0;
	char **subdirs = NULL;
	size_t n_subdirs = 0;
	DIR *dir;
	struct dirent *de;
	int r = lfs_whiteout_read_dir_marks(fd, &marks);

	if (r < 0 || !(dir = fdopendir(fd))) {
		close(fd);
		return r < 0 ? r : -errno;
	}
	dr.path_len = (uint32_t)strlen(relpath);
	if ((r = out_put(b, &dr, sizeof(dr))) < 0 ||
	    (r = out_put(b, relpath, dr.path_len + 1)) < 0)
		goto out;
	dr.opaque = marks.opaque;
	errno = 0;
	while ((de = readdir(dir)) != NULL) {
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
			goto out;
		if (c.kind == LFS_ENTRY_OPAQUE_MARK)
			dr.opaque = 1;
		if (c.kind != LFS_ENTRY_OBJECT && c.kind != LFS_ENTRY_WHITEOUT)
			continue;
		er.ino = de->d_ino;
		er.kind = (uint8_t)c.kind;
		er.type = c.type;
		er.name_len = (uint16_t)strlen(c.name);
		if ((r = out_put(b, &er, sizeof(er))) < 0 ||
		    (r = out_put(b, c.name, er.name_len + 1u)) < 0)
			goto out;
		n_entries++;
		if (c.kind == LFS_ENTRY_OBJECT && c.type == DT_DIR) {
			char **grown = realloc(subdirs, (n_subdirs + 1) *
							       sizeof(*subdirs));
			if (!grown) {
				r = -ENOMEM;
				goto out;
			}
			subdirs = grown;
			if (!(subdirs[n_subdirs] = strdup(de->d_name))) {
				r = -ENOMEM;
				goto out;
			}
			n_subdirs++;
		}
		errno = 0;
	}
	r = errno ? -errno : 0;
	dr.n_entries = (uint32_t)n_entries;
	memcpy(b->data + dr_off, &dr, sizeof(dr));
	(*n_dirs)++;
	/* Children after the parent's record is complete; the parent's DIR
	 * stays open meanwhile so the children resolve beneath it. */
	for (size_t i = 0; r == 0 && i < n_subdirs; i++) {
		char child[PATH_MAX];
		int n = strcmp(relpath, ".") == 0
				? snprintf(child, sizeof(child), "%s", subdirs[i])
				: snprintf(child, sizeof(child), "%s/%s", relpath,
					   subdirs[i]);
		if (n < 0 || n >= (int)sizeof(child)) {
			r = -ENAMETOOLONG;
			break;
		}
		int cfd = openat(dirfd(dir), subdirs[i],
				 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (cfd < 0) {
			r = -errno;
			break;
		}
		r = record_dir(b, n_dirs, cfd, child, stop);
	}
out:
	for (size_t i = 0; i < n_subdirs; i++)
		free(subdirs[i]);
	free(subdirs);
	closedir(dir);
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
	if (r < 0)
		goto out;
	int root = openat(L->root_fd, ".",
			  O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		r = -errno;
		goto out;
	}
	r = record_dir(&b, &n_dirs, root, ".", stop);
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
	if (r == 0 && close(fd) < 0)
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
