/*
 * export.c - `layerctl export IMAGE FILE|DIR [--format docker|oci]`: an
 * image of the store as a `docker save` archive (the default) or an OCI
 * image layout, as a directory (FILE ends in '/' or is an existing
 * directory) or a tar file.
 *
 * The store keeps extracted layers, not their tars, so each layer tar is
 * re-packed from STORE/layers/sha256/<diff_id>/ and must hash to the
 * stored diff_id, or the config's rootfs.diff_ids would lie.  It does only
 * when the original tar was written in the canonical form below; any other
 * layer is refused with both digests named (a later issue may keep the
 * original tars).
 *
 * Canonical layer tar (what export writes, with libarchive):
 *   - pax format as libarchive's "pax restricted" writer makes it: plain
 *     ustar headers, a pax extended header only where ustar cannot say it
 *     (long or non-ASCII names, big numbers, xattrs);
 *   - no entry for the layer root; names relative, no "./" prefix;
 *   - depth first, pre-order: a directory's entry, then its children, the
 *     children sorted by name bytes (strcmp) - so directories come before
 *     their contents;
 *   - mode, uid, gid and mtime (whole seconds) from the extracted file; no
 *     atime, ctime, user or group names; size only for regular files;
 *     symlink targets; device numbers for character and block devices;
 *   - a file with several names: the first name in that order carries the
 *     data, later ones are hard links to it (size 0);
 *   - xattrs as SCHILY.xattr.<name> pax records only;
 *   - libarchive's default 10240-byte blocking.
 *
 * The output is built under "<target>.export-tmp.<pid>" next to the target
 * and renamed into place at the end, so an error leaves no half-written
 * output.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "layerctl.h"

#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_CONFIG "application/vnd.oci.image.config.v1+json"
#define MT_LAYER "application/vnd.oci.image.layer.v1.tar"
#define REF_NAME "org.opencontainers.image.ref.name"

/* ---- a tar being written: to an fd, hashed as it goes ----------------- */

struct sink {
	int fd;
	struct sha256 *h;
	long long size;
	int err;    /* errno of a failed write */
};

static la_ssize_t sink_write(struct archive *a, void *data, const void *buf,
			     size_t len)
{
	struct sink *k = data;
	const char *p = buf;
	size_t left = len;

	(void)a;
	while (left > 0) {
		ssize_t n = write(k->fd, p, left);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			k->err = errno;
			return -1;
		}
		p += n;
		left -= (size_t)n;
	}
	if (k->h)
		sha256_update(k->h, buf, len);
	k->size += (long long)len;
	return (la_ssize_t)len;
}

/* ---- walking a tree in the canonical order ---------------------------- */

struct link_seen {
	dev_t dev;
	ino_t ino;
	char *name;    /* owned: the first name, relative */
};

struct walk {
	struct archive *a;
	const char *what;       /* for errors */
	bool plain;             /* outer archive: fixed owner, mode, mtime */
	bool upper;             /* a container's upper dir (commit.c): its
				   whiteouts and opaque marks become OCI
				   ".wh." entries, overlay xattrs are left
				   out, metadata-only copies get their data
				   from lowers */
	char *const *lowers;    /* upper: the image's layer dirs, top first */
	size_t n_lowers;
	struct link_seen *links;
	size_t n_links, cap_links;
	char *err;
};

static int cmp_names(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The names in dirfd, sorted by bytes (owned array of owned strings). */
static int sorted_names(int dirfd, char ***ret, size_t *ret_n)
{
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, cap = 0;

	if (!d) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return -e;
	}
	while ((errno = 0, de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			char **nn = realloc(names, cap * sizeof(*names));
			if (!nn)
				goto nomem;
			names = nn;
		}
		if (!(names[n] = strdup(de->d_name)))
			goto nomem;
		n++;
	}
	closedir(d);
	qsort(names, n, sizeof(*names), cmp_names);
	*ret = names;
	*ret_n = n;
	return 0;
nomem:
	closedir(d);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return -ENOMEM;
}

/* The overlay's own bookkeeping: describes the layer, not the file. */
static bool is_overlay_xattr(const char *name)
{
	return !strncmp(name, "trusted.overlay.", 16) ||
	       !strncmp(name, "user.overlay.", 13) ||
	       !strncmp(name, "user.fuseoverlayfs.", 19);
}

/* An upper directory marked opaque, by xattr or by an OCI marker file. */
static bool upper_dir_is_opaque(int dirfd, const char *name)
{
	static const char *const marks[] = {
		"trusted.overlay.opaque", "user.overlay.opaque",
		"user.fuseoverlayfs.opaque",
	};
	char proc[PATH_MAX], value[4];
	int fd = openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW |
					     O_CLOEXEC);
	bool opaque = false;
	struct stat st;

	if (fd < 0)
		return false;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	for (size_t i = 0; i < 3 && !opaque; i++)
		opaque = getxattr(proc, marks[i], value, sizeof(value)) == 1 &&
			 value[0] == 'y';
	if (!opaque)
		opaque = fstatat(fd, ".wh..wh..opq", &st, AT_SYMLINK_NOFOLLOW) == 0;
	close(fd);
	return opaque;
}

/* An empty regular entry: an OCI whiteout or opaque marker. */
static int add_marker(struct walk *w, const char *rel, const struct stat *st)
{
	struct archive_entry *e = archive_entry_new();
	int r = 0;

	if (!e) {
		snprintf(w->err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	archive_entry_set_pathname(e, rel);
	archive_entry_set_mode(e, AE_IFREG | 0644);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	archive_entry_set_mtime(e, st->st_mtime, 0);
	archive_entry_set_size(e, 0);
	if (archive_write_header(w->a, e) < ARCHIVE_WARN) {
		snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
			 archive_error_string(w->a));
		r = -EIO;
	}
	archive_entry_free(e);
	return r;
}

static int add_xattrs(struct walk *w, int dirfd, const char *name,
		      const char *rel, struct archive_entry *e)
{
	char proc[64], list[1 << 16];
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		goto fail;
	/* O_PATH fds take no f*xattr calls: go through /proc, following
	 * the link (the l* calls would read the /proc link itself; the fd,
	 * opened O_NOFOLLOW, already names a symlink, not its target). */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = listxattr(proc, list, sizeof(list));
	if (n < 0 && (errno == ENOTSUP || errno == EOPNOTSUPP))
		n = 0;
	if (n < 0)
		goto fail;
	/* Names in the order listed is not canonical: sort them. */
	char *names[1024];
	size_t count = 0;
	for (char *p = list; p < list + n && count < 1024; p += strlen(p) + 1)
		names[count++] = p;
	qsort(names, count, sizeof(*names), cmp_names);
	for (size_t i = 0; i < count; i++) {
		char value[1 << 16];
		if (w->upper && is_overlay_xattr(names[i]))
			continue;
		ssize_t len = getxattr(proc, names[i], value, sizeof(value));
		if (len < 0)
			goto fail;
		archive_entry_xattr_add_entry(e, names[i], value, (size_t)len);
	}
	close(fd);
	return 0;
fail:;
	int e2 = errno;
	if (fd >= 0)
		close(fd);
	snprintf(w->err, ERRLEN, "%s: %s: xattrs: %s", w->what, rel,
		 strerror(e2));
	return -e2;
}

/* Is the upper file dirfd/name a metadata-only copy (metacopy=on), whose
 * data is still in a lower layer at the same path? */
static bool is_metacopy(int dirfd, const char *name)
{
	char proc[PATH_MAX];
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	bool meta;

	if (fd < 0)
		return false;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	meta = getxattr(proc, "trusted.overlay.metacopy", NULL, 0) >= 0 ||
	       getxattr(proc, "user.overlay.metacopy", NULL, 0) >= 0;
	close(fd);
	return meta;
}

/* Open the data of a metadata-only copy: the top-most lower layer with a
 * regular file at rel. */
static int open_lower_data(struct walk *w, const char *rel)
{
	for (size_t i = 0; i < w->n_lowers; i++) {
		int dir = open(w->lowers[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
		int fd = dir < 0 ? -1 : openat(dir, rel, O_RDONLY | O_NOFOLLOW |
							 O_CLOEXEC);
		struct stat st;
		if (dir >= 0)
			close(dir);
		if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
			return fd;
		if (fd >= 0)
			close(fd);
	}
	snprintf(w->err, ERRLEN, "%s: %s: metadata-only copy whose data is in "
		 "no lower layer", w->what, rel);
	return -ENOENT;
}

static int write_data(struct walk *w, int dirfd, const char *name,
		      const char *rel, long long size)
{
	char buf[1 << 16];
	int fd = w->upper && is_metacopy(dirfd, name)
			 ? open_lower_data(w, rel)
			 : openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	long long done = 0;

	if (fd == -ENOENT)
		return fd;
	if (fd < 0) {
		snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
			 strerror(errno));
		return -errno;
	}
	while (done < size) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
				 n < 0 ? strerror(errno) : "file shrank");
			close(fd);
			return -EIO;
		}
		if (n > size - done)
			n = (ssize_t)(size - done);
		if (archive_write_data(w->a, buf, (size_t)n) != n) {
			snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
				 archive_error_string(w->a));
			close(fd);
			return -EIO;
		}
		done += n;
	}
	close(fd);
	return 0;
}

static int walk_dir(struct walk *w, int dirfd, const char *prefix);

static int walk_one(struct walk *w, int dirfd, const char *name,
		    const char *rel)
{
	struct stat st;
	struct archive_entry *e;
	int r = 0;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
			 strerror(errno));
		return -errno;
	}
	if (S_ISSOCK(st.st_mode))
		return 0;    /* tar has no sockets; import never makes one */
	if (w->upper && S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
		/* A kernel-style whiteout: the OCI spelling in the tar. */
		const char *slash = strrchr(rel, '/');
		char *wh = NULL;
		if (asprintf(&wh, "%.*s.wh.%s", slash ? (int)(slash - rel + 1) : 0,
			     rel, name) < 0) {
			snprintf(w->err, ERRLEN, "out of memory");
			return -ENOMEM;
		}
		r = add_marker(w, wh, &st);
		free(wh);
		return r;
	}
	/* Written below, after its directory's entry, from the mark. */
	if (w->upper && !strcmp(name, ".wh..wh..opq"))
		return 0;
	if (!(e = archive_entry_new())) {
		snprintf(w->err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	archive_entry_set_pathname(e, rel);
	if (w->plain) {
		archive_entry_set_mode(e, S_ISDIR(st.st_mode) ? AE_IFDIR | 0755
							      : AE_IFREG | 0644);
		archive_entry_set_mtime(e, 0, 0);
	} else {
		archive_entry_set_mode(e, st.st_mode);
		archive_entry_set_uid(e, st.st_uid);
		archive_entry_set_gid(e, st.st_gid);
		archive_entry_set_mtime(e, st.st_mtime, 0);
	}
	bool data = false;
	if (S_ISREG(st.st_mode)) {
		const char *first = NULL;
		if (!w->plain && st.st_nlink > 1) {
			for (size_t i = 0; i < w->n_links && !first; i++)
				if (w->links[i].dev == st.st_dev &&
				    w->links[i].ino == st.st_ino)
					first = w->links[i].name;
			if (!first) {
				if (w->n_links == w->cap_links) {
					size_t cap = w->cap_links ? 2 * w->cap_links : 16;
					struct link_seen *nl = realloc(
						w->links, cap * sizeof(*nl));
					if (!nl) {
						r = -ENOMEM;
						goto out;
					}
					w->links = nl;
					w->cap_links = cap;
				}
				struct link_seen *L = &w->links[w->n_links];
				if (!(L->name = strdup(rel))) {
					r = -ENOMEM;
					goto out;
				}
				L->dev = st.st_dev;
				L->ino = st.st_ino;
				w->n_links++;
			}
		}
		if (first) {
			archive_entry_set_hardlink(e, first);
			archive_entry_set_size(e, 0);
		} else {
			archive_entry_set_size(e, st.st_size);
			data = st.st_size > 0;
		}
	} else if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(dirfd, name, target, PATH_MAX);
		if (n < 0) {
			snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
				 strerror(errno));
			r = -errno;
			goto out;
		}
		target[n] = '\0';
		archive_entry_set_symlink(e, target);
	} else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
		archive_entry_set_rdevmajor(e, major(st.st_rdev));
		archive_entry_set_rdevminor(e, minor(st.st_rdev));
	}
	if (!w->plain && (r = add_xattrs(w, dirfd, name, rel, e)) < 0)
		goto out;
	if (archive_write_header(w->a, e) < ARCHIVE_WARN) {
		snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
			 archive_error_string(w->a));
		r = -EIO;
		goto out;
	}
	if (data && (r = write_data(w, dirfd, name, rel, st.st_size)) < 0)
		goto out;
	if (w->upper && S_ISDIR(st.st_mode) && upper_dir_is_opaque(dirfd, name)) {
		char *opq = NULL;
		if (asprintf(&opq, "%s/.wh..wh..opq", rel) < 0) {
			r = -ENOMEM;
			goto out;
		}
		r = add_marker(w, opq, &st);
		free(opq);
		if (r < 0)
			goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		int sub = openat(dirfd, name,
				 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0) {
			snprintf(w->err, ERRLEN, "%s: %s: %s", w->what, rel,
				 strerror(errno));
			r = -errno;
			goto out;
		}
		r = walk_dir(w, sub, rel);
		close(sub);
	}
out:
	if (r == -ENOMEM)
		snprintf(w->err, ERRLEN, "out of memory");
	archive_entry_free(e);
	return r;
}

static int walk_dir(struct walk *w, int dirfd, const char *prefix)
{
	char **names = NULL;
	size_t n = 0;
	int r = sorted_names(dirfd, &names, &n);

	if (r < 0) {
		snprintf(w->err, ERRLEN, "%s: %s: %s", w->what,
			 *prefix ? prefix : ".", strerror(-r));
		return r;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		char *rel = NULL;
		if (asprintf(&rel, "%s%s%s", prefix, *prefix ? "/" : "",
			     names[i]) < 0) {
			snprintf(w->err, ERRLEN, "out of memory");
			r = -ENOMEM;
			break;
		}
		r = walk_one(w, dirfd, names[i], rel);
		free(rel);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return r;
}

/*
 * Tar the tree at src into the file dest (created, mode 0644).  plain: the
 * outer archive (owner 0, fixed modes and mtime, no links or xattrs).
 * hex, if given, receives the sha256 of the tar; size its length.
 */
static int tar_any(const char *src, const char *dest, const char *what,
		   bool plain, bool upper, char *const *lowers, size_t n_lowers,
		   char hex[HEXLEN + 1], long long *size, char err[ERRLEN])
{
	struct sink k = { .fd = -1 };
	struct walk w = { .what = what, .plain = plain, .upper = upper,
			  .lowers = lowers, .n_lowers = n_lowers, .err = err };
	int dirfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = 0;

	if (dirfd < 0) {
		snprintf(err, ERRLEN, "%s: %s: %s", what, src, strerror(errno));
		return -errno;
	}
	k.fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	k.h = hex ? sha256_new() : NULL;
	w.a = archive_write_new();
	if (k.fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", dest, strerror(errno));
		r = -errno;
		goto out;
	}
	if (!w.a || (hex && !k.h)) {
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	if (archive_write_set_format_pax_restricted(w.a) != ARCHIVE_OK ||
	    archive_write_set_format_option(w.a, "pax", "xattrheader",
					    "SCHILY") != ARCHIVE_OK ||
	    archive_write_add_filter_none(w.a) != ARCHIVE_OK ||
	    archive_write_open(w.a, &k, NULL, sink_write, NULL) != ARCHIVE_OK) {
		snprintf(err, ERRLEN, "%s: %s", what, archive_error_string(w.a));
		r = -EIO;
		goto out;
	}
	r = walk_dir(&w, dirfd, "");
	if (r == 0 && archive_write_close(w.a) != ARCHIVE_OK) {
		snprintf(err, ERRLEN, "%s: %s: %s", what, dest,
			 k.err ? strerror(k.err) : archive_error_string(w.a));
		r = -EIO;
	}
	if (r == 0 && fsync(k.fd) < 0) {
		snprintf(err, ERRLEN, "%s: %s", dest, strerror(errno));
		r = -errno;
	}
	if (r == 0 && size)
		*size = k.size;
out:
	if (w.a)
		archive_write_free(w.a);
	if (k.h) {
		char tmp[HEXLEN + 1];
		sha256_final_hex(k.h, hex ? hex : tmp);
	}
	if (k.fd >= 0 && close(k.fd) < 0 && r == 0) {
		snprintf(err, ERRLEN, "%s: %s", dest, strerror(errno));
		r = -errno;
	}
	for (size_t i = 0; i < w.n_links; i++)
		free(w.links[i].name);
	free(w.links);
	close(dirfd);
	return r;
}

static int tar_tree(const char *src, const char *dest, const char *what,
		    bool plain, char hex[HEXLEN + 1], long long *size,
		    char err[ERRLEN])
{
	return tar_any(src, dest, what, plain, false, NULL, 0, hex, size, err);
}

int tar_upper_layer(const char *upper, char *const *lowers, size_t n_lowers,
		    const char *dest, char hex[HEXLEN + 1], long long *size,
		    char err[ERRLEN])
{
	return tar_any(upper, dest, "upper", false, true, lowers, n_lowers, hex,
		       size, err);
}

/* ---- the image's parts ------------------------------------------------ */

static int put_file(const char *dir, const char *rel, const void *data,
		    size_t len, char err[ERRLEN])
{
	char *p = path_join(dir, rel);
	int fd = p ? open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644) : -1;
	int r = 0;

	if (!p) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (fd < 0 || write(fd, data, len) != (ssize_t)len)
		r = errno ? -errno : -EIO;
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		snprintf(err, ERRLEN, "%s: %s", p, strerror(-r));
	free(p);
	return r;
}

static int put_json(const char *dir, const char *rel, json_t *j,
		    char hex[HEXLEN + 1], size_t *len, char err[ERRLEN])
{
	char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	int r;

	if (!text) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (hex)
		sha256_hex_of(text, strlen(text), hex);
	if (len)
		*len = strlen(text);
	char *name = NULL;
	if (hex && asprintf(&name, "blobs/sha256/%s", hex) < 0)
		name = NULL;
	r = put_file(dir, hex ? name : rel, text, strlen(text), err);
	free(name);
	free(text);
	return r;
}

/* Tags of image id: the one asked for first (if it is one), then the rest
 * sorted. */
static json_t *image_tags(const struct store *s, const char *id,
			  const char *ref, char err[ERRLEN])
{
	json_t *repos = store_load_repos(s, err);
	json_t *tags = json_array();
	const char *key;
	json_t *value;
	char want[HEXLEN + 8];
	char **list = NULL;
	size_t n = 0;

	if (!repos || !tags) {
		json_decref(repos);
		json_decref(tags);
		return NULL;
	}
	snprintf(want, sizeof(want), "sha256:%s", id);
	list = calloc(json_object_size(repos) + 1, sizeof(*list));
	json_object_foreach(repos, key, value)
		if (list && !strcmp(json_string_value(value) ?
				    json_string_value(value) : "", want))
			list[n++] = (char *)key;
	qsort(list, n, sizeof(*list), cmp_names);
	char *asked = strncmp(ref, "sha256:", 7) ? normalize_tag(ref) : NULL;
	for (size_t i = 0; asked && i < n; i++)
		if (!strcmp(list[i], asked))
			json_array_append_new(tags, json_string(asked));
	for (size_t i = 0; i < n; i++)
		if (!asked || strcmp(list[i], asked))
			json_array_append_new(tags, json_string(list[i]));
	free(asked);
	free(list);
	json_decref(repos);
	return tags;
}

/* Re-pack layer diff into dest and check it hashes to diff. */
static int export_layer(const struct store *s, const char *diff,
			const char *dest, long long *size, char err[ERRLEN])
{
	char *src = store_path(s, "layers/sha256/%s", diff);
	char what[HEXLEN + 16], hex[HEXLEN + 1];
	int r;

	snprintf(what, sizeof(what), "layer sha256:%s", diff);
	if (!src) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	/* The imported bytes themselves, where import recorded their layout;
	 * else the canonical re-pack below. */
	char *split = store_path(s, "layers/sha256/%s.tarsplit", diff);
	char why[ERRLEN] = "";
	if (split && access(split, F_OK) == 0) {
		int fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		r = fd < 0 ? -errno
			   : tarsplit_rebuild(split, src, fd, hex, size, err);
		if (fd >= 0) {
			if (fsync(fd) < 0 && r == 0)
				r = -errno;
			if (close(fd) < 0 && r == 0)
				r = -errno;
		}
		if (r == 0 && strcmp(hex, diff) == 0) {
			free(split);
			free(src);
			return 0;
		}
		/* The layer changed, or the record did: say why below. */
		if (r < 0)
			snprintf(why, sizeof(why), "; from its tar layout record: "
				 "%.400s", err[0] ? err : strerror(-r));
		else
			snprintf(why, sizeof(why), "; its tar layout record "
				 "rebuilt sha256:%s", hex);
		unlink(dest);
		err[0] = '\0';
	}
	free(split);
	r = tar_tree(src, dest, what, false, hex, size, err);
	free(src);
	if (r == 0 && strcmp(hex, diff) != 0) {
		snprintf(err, ERRLEN, "layer sha256:%s: re-packed tar has "
			 "digest sha256:%s, not the stored diff_id%.600s", diff, hex,
			 why);
		r = -EINVAL;
	}
	return r;
}

static int write_docker(const struct store *s, const char *dir,
			const char *id, const char *config, size_t config_len,
			char (*diff)[HEXLEN + 1], size_t n, json_t *tags,
			char err[ERRLEN])
{
	json_t *layers = json_array(), *item = json_object();
	json_t *manifest = json_array();
	char name[HEXLEN + 16];
	int r = 0;

	snprintf(name, sizeof(name), "%s.json", id);
	r = put_file(dir, name, config, config_len, err);
	for (size_t i = 0; i < n && r == 0; i++) {
		char *ldir = path_join(dir, diff[i]);
		char *tar = ldir ? path_join(ldir, "layer.tar") : NULL;
		long long size;
		if (!tar)
			r = -ENOMEM;
		else if (mkdir(ldir, 0755) < 0 && errno != EEXIST) {
			r = -errno;
			snprintf(err, ERRLEN, "%s: %s", ldir, strerror(errno));
		} else if (access(tar, F_OK) < 0) {    /* a repeated layer */
			r = export_layer(s, diff[i], tar, &size, err);
		}
		snprintf(name, sizeof(name), "%s/layer.tar", diff[i]);
		json_array_append_new(layers, json_string(name));
		free(tar);
		free(ldir);
	}
	if (r == 0) {
		snprintf(name, sizeof(name), "%s.json", id);
		json_object_set_new(item, "Config", json_string(name));
		json_object_set(item, "RepoTags", tags);
		json_object_set(item, "Layers", layers);
		json_array_append(manifest, item);
		r = put_json(dir, "manifest.json", manifest, NULL, NULL, err);
	}
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	json_decref(manifest);
	json_decref(item);
	json_decref(layers);
	return r;
}

static json_t *descriptor(const char *media_type, const char *hex,
			  long long size)
{
	char digest[HEXLEN + 8];

	snprintf(digest, sizeof(digest), "sha256:%s", hex);
	return json_pack("{s:s, s:s, s:I}", "mediaType", media_type, "digest",
			 digest, "size", (json_int_t)size);
}

static int write_oci(const struct store *s, const char *dir, const char *id,
		     const char *config, size_t config_len, json_t *config_json,
		     char (*diff)[HEXLEN + 1], size_t n, json_t *tags,
		     char err[ERRLEN])
{
	char *blobs = path_join(dir, "blobs/sha256");
	char *blobs_parent = path_join(dir, "blobs");
	json_t *layers = json_array();
	char name[HEXLEN + 16], man_hex[HEXLEN + 1];
	size_t man_len = 0;
	int r = 0;

	if (!blobs || !blobs_parent || mkdir(blobs_parent, 0755) < 0 ||
	    mkdir(blobs, 0755) < 0) {
		r = blobs ? -errno : -ENOMEM;
		snprintf(err, ERRLEN, "%s: %s", blobs ? blobs : dir,
			 strerror(-r));
		goto out;
	}
	static const char layout[] = "{\"imageLayoutVersion\":\"1.0.0\"}";
	r = put_file(dir, "oci-layout", layout, strlen(layout), err);
	snprintf(name, sizeof(name), "blobs/sha256/%s", id);
	if (r == 0)
		r = put_file(dir, name, config, config_len, err);
	for (size_t i = 0; i < n && r == 0; i++) {
		char *tar = path_join(blobs, diff[i]);
		struct stat st;
		long long size = 0;
		if (!tar)
			r = -ENOMEM;
		else if (stat(tar, &st) == 0)    /* a repeated layer */
			size = st.st_size;
		else
			r = export_layer(s, diff[i], tar, &size, err);
		json_array_append_new(layers, descriptor(MT_LAYER, diff[i], size));
		free(tar);
	}
	if (r < 0)
		goto out;
	json_t *manifest = json_pack("{s:i, s:s, s:o, s:O}", "schemaVersion", 2,
				     "mediaType", MT_MANIFEST, "config",
				     descriptor(MT_CONFIG, id, (long long)config_len),
				     "layers", layers);
	r = manifest ? put_json(dir, NULL, manifest, man_hex, &man_len, err)
		     : -ENOMEM;
	json_decref(manifest);
	if (r < 0)
		goto out;
	json_t *desc = descriptor(MT_MANIFEST, man_hex, (long long)man_len);
	const char *arch = json_string_value(json_object_get(config_json,
							     "architecture"));
	const char *os = json_string_value(json_object_get(config_json, "os"));
	if (desc && arch && os)
		json_object_set_new(desc, "platform",
				    json_pack("{s:s, s:s}", "architecture", arch,
					      "os", os));
	if (desc && json_array_size(tags) > 0)
		json_object_set_new(desc, "annotations",
				    json_pack("{s:O}", REF_NAME,
					      json_array_get(tags, 0)));
	json_t *index = desc ? json_pack("{s:i, s:s, s:[o]}", "schemaVersion",
					 2, "mediaType", MT_INDEX, "manifests",
					 desc)
			     : NULL;
	r = index ? put_json(dir, "index.json", index, NULL, NULL, err)
		  : -ENOMEM;
	json_decref(index);
out:
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	json_decref(layers);
	free(blobs);
	free(blobs_parent);
	return r;
}

/* ---- the verb ----------------------------------------------------------- */

static int usage_error(void)
{
	return fail_verb("export", "usage: layerctl export IMAGE FILE|DIR "
			 "[--format docker|oci]");
}

int cmd_export(struct store *s, int argc, char **argv)
{
	const char *ref = NULL, *target = NULL, *format = "docker";
	char err[ERRLEN] = "", id[HEXLEN + 1];
	char (*diff)[HEXLEN + 1] = NULL;
	size_t n = 0, config_len = 0;
	char *config = NULL, *tmp_dir = NULL, *tmp_tar = NULL, *path = NULL;
	json_t *config_json = NULL, *tags = NULL;
	json_error_t jerr;
	struct stat st;
	bool as_dir;
	int r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--format") && i + 1 < argc)
			format = argv[++i];
		else if (!strncmp(argv[i], "--format=", 9))
			format = argv[i] + 9;
		else if (argv[i][0] == '-' && argv[i][1])
			return usage_error();
		else if (!ref)
			ref = argv[i];
		else if (!target)
			target = argv[i];
		else
			return usage_error();
	}
	if (!ref || !target || !*target)
		return usage_error();
	if (strcmp(format, "docker") && strcmp(format, "oci")) {
		snprintf(err, ERRLEN, "--format %s: want docker or oci", format);
		return fail_verb("export", err);
	}
	as_dir = target[strlen(target) - 1] == '/' ||
		 (stat(target, &st) == 0 && S_ISDIR(st.st_mode));

	if ((r = store_resolve_image(s, ref, id, err)) < 0)
		goto out;
	if (!(path = store_path(s, "imagedb/sha256/%s.json", id)) ||
	    !(config = read_file(path, &config_len, err))) {
		if (!path)
			snprintf(err, ERRLEN, "out of memory");
		r = -EIO;
		goto out;
	}
	if (!(config_json = json_loadb(config, config_len, 0, &jerr))) {
		snprintf(err, ERRLEN, "image config %s: bad JSON: %s", id,
			 jerr.text);
		r = -EINVAL;
		goto out;
	}
	if ((r = config_diff_ids(config_json, &diff, &n, err)) < 0)
		goto out;
	for (size_t i = 0; i < n; i++)
		if (!store_has_layer(s, diff[i])) {
			snprintf(err, ERRLEN, "layer sha256:%s: not in the store",
				 diff[i]);
			r = -ENOENT;
			goto out;
		}
	if (!(tags = image_tags(s, id, ref, err))) {
		r = -EINVAL;
		goto out;
	}

	/* The final name, without a trailing '/'. */
	char *final = strdup(target);
	if (!final) {
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	for (size_t len = strlen(final); len > 1 && final[len - 1] == '/';)
		final[--len] = '\0';
	if (asprintf(&tmp_dir, "%s.export-tmp.%d", final, (int)getpid()) < 0 ||
	    (!as_dir && asprintf(&tmp_tar, "%s.tar", tmp_dir) < 0)) {
		free(final);
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	if (mkdir(tmp_dir, 0755) < 0) {
		snprintf(err, ERRLEN, "%s: cannot write next to it: %s", final,
			 strerror(errno));
		r = -errno;
		free(final);
		free(tmp_dir);
		tmp_dir = NULL;
		goto out;
	}
	if (!strcmp(format, "docker"))
		r = write_docker(s, tmp_dir, id, config, config_len, diff, n,
				 tags, err);
	else
		r = write_oci(s, tmp_dir, id, config, config_len, config_json,
			      diff, n, tags, err);
	if (r == 0 && !as_dir)
		r = tar_tree(tmp_dir, tmp_tar, final, true, NULL, NULL, err);
	if (r == 0) {
		const char *from = as_dir ? tmp_dir : tmp_tar;
		/* An existing (empty) target directory is replaced; a
		 * non-empty one makes rename fail, which is reported. */
		if (as_dir && stat(final, &st) == 0 && S_ISDIR(st.st_mode) &&
		    rmdir(final) < 0) {
			snprintf(err, ERRLEN, "%s: %s", final,
				 errno == ENOTEMPTY || errno == EEXIST
					 ? "a directory that is not empty"
					 : strerror(errno));
			r = -errno;
		} else if (rename(from, final) < 0) {
			snprintf(err, ERRLEN, "%s: %s", final, strerror(errno));
			r = -errno;
		} else if (as_dir) {
			free(tmp_dir);
			tmp_dir = NULL;
		}
	}
	if (r == 0)
		printf("Exported sha256:%s to %s (%s)\n", id, final, format);
	free(final);
out:
	if (tmp_dir) {
		remove_tree(tmp_dir);
		free(tmp_dir);
	}
	if (tmp_tar) {
		unlink(tmp_tar);
		free(tmp_tar);
	}
	free(path);
	free(config);
	free(diff);
	json_decref(config_json);
	json_decref(tags);
	return r < 0 ? fail_verb("export", err) : 0;
}
