/*
 * import.c - `layerctl import FILE|DIR [NAME:TAG]`: a `docker save` archive
 * or an OCI image layout into the layer store.
 *
 * Order of work, so that a bad input changes nothing:
 *   1. an archive is unpacked into a staging directory (libarchive, with
 *      its guards against "..", absolute names and writing through
 *      symlinks);
 *   2. the manifest is read into a list of images (config + layer blobs);
 *   3. every blob is checked: an OCI blob's sha256 against its digest, a
 *      config against the name it is stored under, every layer's
 *      decompressed sha256 against the config's rootfs.diff_ids;
 *   4. each new layer is extracted into staging, its entries checked one
 *      by one (no "..", no absolute names, bounded names, hard links inside
 *      the layer, devices only where we may make them);
 *   5. only then are layers, layerdb entries, the config and the tags
 *      renamed or written into place.  The staging directory goes at the
 *      end, whatever happened.
 * Whiteouts stay as OCI ".wh." entries, which layerfs reads as they are.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include <archive.h>
#include <archive_entry.h>

#include "layerctl.h"

struct layer_src {
	char *blob;                  /* owned path of our copy */
	char *name;                  /* owned: as the input names it */
	char digest[HEXLEN + 1];     /* the blob's own digest, or "" */
	char diff[HEXLEN + 1];       /* from the config */
	char *staged;                /* owned: extracted here, or NULL */
	long long size;              /* bytes of the layer's tree, or -1 */
	long long files;             /* entries of the layer's tree, or -1 */
};

struct image_src {
	char *config;                /* owned path of our copy */
	char *config_name;           /* owned: as the input names it */
	char config_digest[HEXLEN + 1];   /* the name it was stored under */
	char id[HEXLEN + 1];
	char *config_bytes;          /* owned */
	size_t config_len;
	json_t *tags;                /* owned array of "name:tag" */
	struct layer_src *layers;    /* owned, bottom first */
	size_t n_layers;
};

/* ---- progress on a terminal ------------------------------------------- */

/* Shown only when stderr is a terminal: large images take a while, and a
 * script reading our output wants none of it. */
static struct {
	bool on;
	size_t layer, n_layers;     /* the layer being extracted, 1-based */
	long long bytes, shown;     /* extracted so far; at the last line */
} progress;

static void progress_add(long long bytes, bool force)
{
	if (!progress.on)
		return;
	progress.bytes += bytes;
	if (!force && progress.bytes - progress.shown < (4 << 20))
		return;
	progress.shown = progress.bytes;
	fprintf(stderr, "\rimport: layer %zu/%zu, %lld MiB extracted ",
		progress.layer, progress.n_layers, progress.bytes >> 20);
}

static void progress_end(void)
{
	if (progress.on && progress.shown > 0)
		fputc('\n', stderr);
	progress.on = false;
}

/* ---- safe paths inside the input ------------------------------------- */

/* A relative path with no "..": what a manifest may name. */
static bool is_safe_relative(const char *p)
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

/*
 * The input, as import reads it.  Every file is opened once, beneath the
 * input directory (openat2: no "..", no symlink anywhere on the path),
 * must be a regular file (no FIFO to hang on, no device to read forever),
 * and is then used only through a copy in staging that nobody else can
 * change: what was hashed is what gets extracted.  An archive input is
 * unpacked into staging in the first place (regular files and directories
 * only), so its files are used where they are.
 */
static struct {
	int dir_fd;              /* the input directory */
	const char *staging;     /* borrowed */
	bool copy;               /* a directory input: copy into staging */
	unsigned n_copies;
	char last_hex[HEXLEN + 1];   /* sha256 of the last file taken */
} in_ctx = { .dir_fd = -1 };

/* Copy (or just read) fd to a new staging file, hashing; *ret_path owned. */
static int take_fd(int fd, const char *rel, char **ret_path, char err[ERRLEN])
{
	struct sha256 *h = sha256_new();
	char buf[1 << 16], *path = NULL;
	int out = -1, r = 0;
	ssize_t n;

	if (!h)
		return -ENOMEM;
	if (in_ctx.copy) {
		if (asprintf(&path, "%s/in-%u", in_ctx.staging, in_ctx.n_copies++) < 0)
			path = NULL;
		out = path ? open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
				  0600) : -1;
		if (out < 0)
			r = -errno;
	}
	while (r == 0 && (n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			r = -errno;
			break;
		}
		sha256_update(h, buf, (size_t)n);
		if (out >= 0 && write(out, buf, (size_t)n) != n)
			r = errno ? -errno : -EIO;
	}
	sha256_final_hex(h, in_ctx.last_hex);
	if (out >= 0 && close(out) < 0 && r == 0)
		r = -errno;
	if (r < 0) {
		snprintf(err, ERRLEN, "%s: %s", rel, strerror(-r));
		free(path);
		return r;
	}
	*ret_path = path;
	return 0;
}

/* The file rel of the input, checked and taken (see above); owned path. */
static char *input_path(const char *dir, const char *rel, char err[ERRLEN])
{
	struct open_how how = {
		.flags = O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
			   RESOLVE_NO_MAGICLINKS,
	};
	struct stat st;
	char *path = NULL;
	int fd;

	if (!is_safe_relative(rel)) {
		snprintf(err, ERRLEN, "manifest names an unsafe path: %s",
			 rel ? rel : "(none)");
		return NULL;
	}
	fd = (int)syscall(SYS_openat2, in_ctx.dir_fd, rel, &how, sizeof(how));
	if (fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", rel,
			 errno == ELOOP || errno == EXDEV
				 ? "reached through a symbolic link"
				 : strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    fcntl(fd, F_SETFL, 0) < 0) {
		snprintf(err, ERRLEN, "%s: not a regular file", rel);
		close(fd);
		return NULL;
	}
	int r = take_fd(fd, rel, &path, err);
	close(fd);
	if (r < 0)
		return NULL;
	if (!path && asprintf(&path, "%s/%s", dir, rel) < 0) {
		snprintf(err, ERRLEN, "out of memory");
		return NULL;
	}
	return path;
}

/* "blobs/sha256/<hex>" or "<hex>.json" or "<hex>/layer.tar": the digest a
 * docker-save name carries, if any. */
static void digest_from_name(const char *rel, char hex[HEXLEN + 1])
{
	const char *base = strrchr(rel, '/');
	char buf[HEXLEN + 1];

	hex[0] = '\0';
	if (strncmp(rel, "blobs/sha256/", 13) == 0 && is_hex64(rel + 13)) {
		memcpy(hex, rel + 13, HEXLEN + 1);
		return;
	}
	base = base ? base + 1 : rel;
	if (strlen(base) == HEXLEN + 5 && !strcmp(base + HEXLEN, ".json")) {
		memcpy(buf, base, HEXLEN);
		buf[HEXLEN] = '\0';
		if (is_hex64(buf))
			memcpy(hex, buf, HEXLEN + 1);
	}
}

/* ---- unpacking an archive -------------------------------------------- */

static int check_entry_name(const char *name, const char *what,
			    char err[ERRLEN])
{
	if (!name)
		return 0;
	if (name[0] == '/') {
		snprintf(err, ERRLEN, "%s: entry %s: absolute path", what, name);
		return -EINVAL;
	}
	if (!is_safe_relative(name) && strcmp(name, ".") && strcmp(name, "./")) {
		snprintf(err, ERRLEN, "%s: entry %.300s: %s", what, name,
			 strlen(name) >= PATH_MAX ? "name too long"
			 : strstr(name, "..") ? "path escapes the layer (..)"
					      : "name component too long");
		return -EINVAL;
	}
	return 0;
}

static int extract_here(int fd, const char *what, bool outer,
			long long *ret_files, long long *ret_size,
			char err[ERRLEN]);

/*
 * Extract the tar (any compression) at path into dest, checking every
 * entry.  Counts the files and bytes extracted.  libarchive's guards work
 * on relative names, so extraction runs with dest as the working
 * directory (layerctl is single-threaded).
 */
static int extract_tar(const char *path, const char *dest, const char *what,
		       bool outer, long long *ret_files, long long *ret_size,
		       char err[ERRLEN])
{
	int in_fd = open(path, O_RDONLY | O_CLOEXEC);
	int saved = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	int r;

	if (in_fd < 0 || saved < 0 || chdir(dest) < 0) {
		r = -errno;
		snprintf(err, ERRLEN, "%s: %s", in_fd < 0 ? path : dest,
			 strerror(errno));
		goto out;
	}
	r = extract_here(in_fd, what, outer, ret_files, ret_size, err);
	if (fchdir(saved) < 0 && r == 0) {
		snprintf(err, ERRLEN, "cannot return to the working directory");
		r = -EIO;
	}
out:
	if (in_fd >= 0)
		close(in_fd);
	if (saved >= 0)
		close(saved);
	return r;
}

/* outer: the image archive itself, which may hold only files and
 * directories (its manifest and blobs); a layer may hold anything. */
static int extract_here(int fd, const char *what, bool outer,
			long long *ret_files, long long *ret_size,
			char err[ERRLEN])
{
	struct archive *in = archive_read_new();
	struct archive *out = archive_write_disk_new();
	struct archive_entry *e;
	long long files = 0, size = 0;
	bool root = geteuid() == 0;
	int r = 0, ar;

	if (!in || !out) {
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto done;
	}
	archive_read_support_filter_all(in);
	archive_read_support_format_tar(in);
	archive_write_disk_set_options(
		out, ARCHIVE_EXTRACT_SECURE_SYMLINKS |
			     ARCHIVE_EXTRACT_SECURE_NODOTDOT |
			     ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
			     ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
			     ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_ACL |
			     (root ? ARCHIVE_EXTRACT_OWNER : 0));
	archive_write_disk_set_standard_lookup(out);
	if (archive_read_open_fd(in, fd, 1 << 16) != ARCHIVE_OK) {
		snprintf(err, ERRLEN, "%s: %s", what, archive_error_string(in));
		r = -EIO;
		goto done;
	}
	while ((ar = archive_read_next_header(in, &e)) == ARCHIVE_OK) {
		const char *name = archive_entry_pathname(e);
		const char *link = archive_entry_hardlink(e);
		mode_t type = archive_entry_filetype(e);

		if ((r = check_entry_name(name, what, err)) < 0 ||
		    (r = check_entry_name(link, what, err)) < 0)
			goto done;
		if (outer && (link || (type != AE_IFREG && type != AE_IFDIR))) {
			snprintf(err, ERRLEN, "%s: entry %.300s: an image archive "
				 "holds only files and directories", what, name);
			r = -EINVAL;
			goto done;
		}
		if ((type == AE_IFCHR || type == AE_IFBLK) && !root) {
			/* Not ours to create: skipped, as rootless engines do. */
			fprintf(stderr, "layerctl: import: %s: skipping device "
				"%s (not root)\n", what, name);
			continue;
		}
		ar = archive_write_header(out, e);
		if (ar == ARCHIVE_OK && archive_entry_size(e) > 0) {
			const void *buf;
			size_t len;
			la_int64_t off;
			while ((ar = archive_read_data_block(
					in, &buf, &len, &off)) == ARCHIVE_OK) {
				if (archive_write_data_block(out, buf, len,
							     off) != ARCHIVE_OK) {
					ar = ARCHIVE_FATAL;
					break;
				}
				progress_add((long long)len, false);
			}
			if (ar == ARCHIVE_EOF)
				ar = ARCHIVE_OK;
		}
		if (ar == ARCHIVE_OK)
			ar = archive_write_finish_entry(out);
		if (ar < ARCHIVE_WARN) {
			const char *why = archive_error_string(out);
			if (!why)
				why = archive_error_string(in);
			snprintf(err, ERRLEN, "%s: entry %.300s: %s", what, name,
				 why ? why : "cannot extract");
			r = -EIO;
			goto done;
		}
		files++;
		size += archive_entry_size(e);
	}
	if (ar != ARCHIVE_EOF) {
		snprintf(err, ERRLEN, "%s: %s", what, archive_error_string(in));
		r = -EIO;
	}
done:
	if (out) {
		archive_write_close(out);
		archive_write_free(out);
	}
	if (in)
		archive_read_free(in);
	if (r == 0) {
		*ret_files = files;
		*ret_size = size;
	}
	return r;
}

/* ---- reading the manifests ------------------------------------------- */

static void image_free(struct image_src *im)
{
	for (size_t i = 0; i < im->n_layers; i++) {
		free(im->layers[i].blob);
		free(im->layers[i].name);
		free(im->layers[i].staged);
	}
	free(im->layers);
	free(im->config);
	free(im->config_name);
	free(im->config_bytes);
	json_decref(im->tags);
}

static void images_free(struct image_src *ims, size_t n)
{
	for (size_t i = 0; ims && i < n; i++)
		image_free(&ims[i]);
	free(ims);
}

static json_t *load_json(const char *path, const char *what, char err[ERRLEN])
{
	json_error_t jerr;
	size_t len;
	char *text = read_file(path, &len, err);
	json_t *j = text ? json_loadb(text, len, 0, &jerr) : NULL;

	if (text && !j)
		snprintf(err, ERRLEN, "%s: bad JSON: %s (line %d)", what,
			 jerr.text, jerr.line);
	free(text);
	return j;
}

/* docker save: manifest.json = [{Config, RepoTags, Layers}, ...] */
static int read_docker_save(const char *dir, struct image_src **ret,
			    size_t *ret_n, char err[ERRLEN])
{
	char *mpath = input_path(dir, "manifest.json", err);
	json_t *m = mpath ? load_json(mpath, "manifest.json", err) : NULL;
	struct image_src *ims = NULL;
	size_t n = 0;
	int r = -EINVAL;

	free(mpath);
	if (!m)
		return -EINVAL;
	if (!json_is_array(m) || json_array_size(m) == 0) {
		snprintf(err, ERRLEN, "manifest.json: not a non-empty array");
		goto out;
	}
	n = json_array_size(m);
	ims = calloc(n, sizeof(*ims));
	if (!ims) {
		snprintf(err, ERRLEN, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *item = json_array_get(m, i);
		const char *config = json_string_value(json_object_get(item, "Config"));
		json_t *layers = json_object_get(item, "Layers");
		json_t *tags = json_object_get(item, "RepoTags");
		struct image_src *im = &ims[i];

		if (!config || !json_is_array(layers)) {
			snprintf(err, ERRLEN,
				 "manifest.json: entry %zu lacks Config or Layers", i);
			goto out;
		}
		if (!(im->config = input_path(dir, config, err)) ||
		    !(im->config_name = strdup(config)))
			goto out;
		digest_from_name(config, im->config_digest);
		im->tags = json_is_array(tags) ? json_deep_copy(tags) : json_array();
		im->n_layers = json_array_size(layers);
		im->layers = calloc(im->n_layers ? im->n_layers : 1,
				    sizeof(*im->layers));
		if (!im->layers || !im->tags) {
			snprintf(err, ERRLEN, "out of memory");
			goto out;
		}
		for (size_t j = 0; j < im->n_layers; j++) {
			const char *rel = json_string_value(json_array_get(layers, j));
			if (!(im->layers[j].blob = input_path(dir, rel, err)) ||
			    !(im->layers[j].name = strdup(rel)))
				goto out;
			if (strncmp(rel, "blobs/sha256/", 13) == 0)
				digest_from_name(rel, im->layers[j].digest);
		}
	}
	r = 0;
out:
	json_decref(m);
	if (r < 0) {
		images_free(ims, n);
		return r;
	}
	*ret = ims;
	*ret_n = n;
	return 0;
}

/* A blob of an OCI layout, its digest checked now. */
static char *oci_blob(const char *dir, const char *digest, const char *what,
		      char hex[HEXLEN + 1], char err[ERRLEN])
{
	char rel[HEXLEN + 20], actual[HEXLEN + 1];
	char *path;

	if (!digest_parse(digest, hex)) {
		snprintf(err, ERRLEN, "%s: not a sha256 digest: %s", what,
			 digest ? digest : "(none)");
		return NULL;
	}
	snprintf(rel, sizeof(rel), "blobs/sha256/%s", hex);
	if (!(path = input_path(dir, rel, err)))
		return NULL;
	memcpy(actual, in_ctx.last_hex, sizeof(actual));
	if (strcmp(actual, hex) != 0) {
		snprintf(err, ERRLEN, "%s %s: digest mismatch: expected "
			 "sha256:%s, got sha256:%s", what, rel, hex, actual);
		free(path);
		return NULL;
	}
	return path;
}

/* One manifest of an OCI layout into im. */
static int read_oci_manifest(const char *dir, json_t *desc,
			     struct image_src *im, char err[ERRLEN])
{
	char hex[HEXLEN + 1];
	const char *digest = json_string_value(json_object_get(desc, "digest"));
	char *mpath = oci_blob(dir, digest, "manifest", hex, err);
	char what[HEXLEN + 32];
	snprintf(what, sizeof(what), "manifest sha256:%s", hex);
	json_t *m = mpath ? load_json(mpath, what, err) : NULL;
	json_t *layers = json_object_get(m, "layers");
	const char *ref = json_string_value(json_object_get(
		json_object_get(desc, "annotations"),
		"org.opencontainers.image.ref.name"));
	int r = -EINVAL;

	free(mpath);
	if (!m)
		return -EINVAL;
	if (!json_is_array(layers)) {
		snprintf(err, ERRLEN, "manifest %s: no layers", digest);
		goto out;
	}
	im->config = oci_blob(dir, json_string_value(json_object_get(
					   json_object_get(m, "config"), "digest")),
			      "config", im->config_digest, err);
	if (!im->config ||
	    asprintf(&im->config_name, "blobs/sha256/%s", im->config_digest) < 0)
		goto out;
	im->tags = json_array();
	if (ref) {
		char *tag = normalize_tag(ref);
		json_array_append_new(im->tags, json_string(tag ? tag : ref));
		free(tag);
	}
	im->n_layers = json_array_size(layers);
	im->layers = calloc(im->n_layers ? im->n_layers : 1, sizeof(*im->layers));
	if (!im->layers) {
		snprintf(err, ERRLEN, "out of memory");
		goto out;
	}
	for (size_t j = 0; j < im->n_layers; j++) {
		const char *d = json_string_value(
			json_object_get(json_array_get(layers, j), "digest"));
		if (!(im->layers[j].blob =
			      oci_blob(dir, d, "layer", im->layers[j].digest, err)) ||
		    asprintf(&im->layers[j].name, "blobs/sha256/%s",
			     im->layers[j].digest) < 0)
			goto out;
	}
	r = 0;
out:
	json_decref(m);
	return r;
}

static int read_oci(const char *dir, struct image_src **ret, size_t *ret_n,
		    char err[ERRLEN])
{
	char *ipath = input_path(dir, "index.json", err);
	json_t *index = ipath ? load_json(ipath, "index.json", err) : NULL;
	json_t *manifests = json_object_get(index, "manifests");
	struct image_src *ims = NULL;
	size_t n = json_array_size(manifests);
	int r = -EINVAL;

	free(ipath);
	if (!index)
		return -EINVAL;
	if (n == 0) {
		snprintf(err, ERRLEN, "index.json: no manifests");
		goto out;
	}
	ims = calloc(n, sizeof(*ims));
	if (!ims) {
		snprintf(err, ERRLEN, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (read_oci_manifest(dir, json_array_get(manifests, i), &ims[i],
				      err) < 0)
			goto out;
	r = 0;
out:
	json_decref(index);
	if (r < 0) {
		images_free(ims, n);
		return r;
	}
	*ret = ims;
	*ret_n = n;
	return 0;
}

/* ---- checking and staging -------------------------------------------- */

static int check_config(struct image_src *im, char err[ERRLEN])
{
	char (*diff)[HEXLEN + 1] = NULL;
	size_t n_diff = 0;
	json_error_t jerr;
	json_t *config;
	int r;

	im->config_bytes = read_file(im->config, &im->config_len, err);
	if (!im->config_bytes)
		return -EIO;
	sha256_hex_of(im->config_bytes, im->config_len, im->id);
	if (im->config_digest[0] && strcmp(im->config_digest, im->id) != 0) {
		snprintf(err, ERRLEN, "config %s: digest mismatch: expected "
			 "sha256:%s, got sha256:%s", im->config_name,
			 im->config_digest, im->id);
		return -EINVAL;
	}
	config = json_loadb(im->config_bytes, im->config_len, 0, &jerr);
	if (!config) {
		snprintf(err, ERRLEN, "config %s: bad JSON: %s", im->config_name,
			 jerr.text);
		return -EINVAL;
	}
	r = config_diff_ids(config, &diff, &n_diff, err);
	json_decref(config);
	if (r < 0)
		return r;
	if (n_diff != im->n_layers) {
		snprintf(err, ERRLEN, "config %s: %zu diff_ids for %zu layers",
			 im->config_name, n_diff, im->n_layers);
		free(diff);
		return -EINVAL;
	}
	for (size_t i = 0; i < n_diff; i++)
		memcpy(im->layers[i].diff, diff[i], HEXLEN + 1);
	free(diff);
	return 0;
}

/* Check a layer's decompressed digest; extract it if the store lacks it. */
static int stage_layer(const struct store *s, const char *staging,
		       struct layer_src *L, size_t index, char err[ERRLEN])
{
	char actual[HEXLEN + 1];
	int r = sha256_decompressed(L->blob, L->name, actual, err);

	if (r < 0)
		return r;
	if (strcmp(actual, L->diff) != 0) {
		snprintf(err, ERRLEN, "layer %s: diff_id mismatch: expected "
			 "sha256:%s, got sha256:%s", L->name, L->diff, actual);
		return -EINVAL;
	}
	if (store_has_layer(s, L->diff)) {
		L->size = L->files = -1;    /* counted if a new chain needs it */
		return 0;
	}
	if (asprintf(&L->staged, "%s/layer-%zu-%s", staging, index, L->diff) < 0) {
		L->staged = NULL;
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (mkdir(L->staged, 0755) < 0) {
		snprintf(err, ERRLEN, "%s: %s", L->staged, strerror(errno));
		return -errno;
	}
	r = extract_tar(L->blob, L->staged, L->name, false, &L->files, &L->size,
			err);
	if (r < 0)
		return r;
	/* So that export can give back these very bytes (tarsplit.c). */
	char *split = NULL;
	if (asprintf(&split, "%s.tarsplit", L->staged) < 0) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	r = tarsplit_record(L->blob, split, err);
	free(split);
	return r == -ENOTSUP ? 0 : r;
}

/* ---- committing into the store --------------------------------------- */

/* What this import has put into the store so far: taken out again if a
 * later step fails (an archive of several images commits them one by
 * one), so that a refused import leaves the store as it was. */
static struct {
	char **paths;    /* owned */
	size_t n;
} made;

static void made_note(const char *path)
{
	char **grown = realloc(made.paths, (made.n + 1) * sizeof(*grown));

	if (!grown)
		return;    /* cannot undo it then; the import still fails or not */
	made.paths = grown;
	if ((made.paths[made.n] = strdup(path)) != NULL)
		made.n++;
}

static void made_finish(bool undo)
{
	for (size_t i = made.n; i-- > 0;) {
		if (undo)
			remove_tree(made.paths[i]);
		free(made.paths[i]);
	}
	free(made.paths);
	made.paths = NULL;
	made.n = 0;
}

static int write_text(const char *dir, const char *name, const char *text,
		      char err[ERRLEN])
{
	char *p = path_join(dir, name);
	int r = p ? write_file_atomic(p, text, strlen(text), err) : -ENOMEM;

	free(p);
	return r;
}

/* Entries and bytes of a tree already in the store (nftw has no user
 * pointer, hence the statics; layerctl is single-threaded). */
static long long walk_files, walk_size;

static int count_one(const char *path, const struct stat *st, int flag,
		     struct FTW *ftw)
{
	(void)path, (void)flag;
	if (ftw->level > 0) {
		walk_files++;
		if (S_ISREG(st->st_mode))
			walk_size += st->st_size;
	}
	return 0;
}

static int tree_stats(const char *dir, long long *ret_files,
		      long long *ret_size)
{
	walk_files = walk_size = 0;
	if (nftw(dir, count_one, 64, FTW_PHYS) < 0)
		return -errno;
	*ret_files = walk_files;
	*ret_size = walk_size;
	return 0;
}

/* layerdb/sha256/<chain>/{diff,parent,size,files} for each layer. */
static int commit_layerdb(const struct store *s, const char *staging,
			  struct image_src *im, char err[ERRLEN])
{
	char (*diff)[HEXLEN + 1] = calloc(im->n_layers, sizeof(*diff));
	char (*chain)[HEXLEN + 1] = calloc(im->n_layers, sizeof(*chain));
	int r = 0;

	if (!diff || !chain) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < im->n_layers; i++)
		memcpy(diff[i], im->layers[i].diff, HEXLEN + 1);
	chain_ids(diff, im->n_layers, chain);
	for (size_t i = 0; i < im->n_layers && r == 0; i++) {
		char *final = store_path(s, "layerdb/sha256/%s", chain[i]);
		char *tmp = NULL, text[160];
		struct stat st;
		if (!final || stat(final, &st) == 0) {
			free(final);
			continue;    /* already recorded */
		}
		if (asprintf(&tmp, "%s/chain-%s", staging, chain[i]) < 0 ||
		    mkdir(tmp, 0700) < 0) {
			r = -errno;
			snprintf(err, ERRLEN, "layerdb: %s", strerror(errno));
		}
		snprintf(text, sizeof(text), "sha256:%s", diff[i]);
		if (r == 0)
			r = write_text(tmp, "diff", text, err);
		if (r == 0 && i > 0) {
			snprintf(text, sizeof(text), "sha256:%s", chain[i - 1]);
			r = write_text(tmp, "parent", text, err);
		}
		struct layer_src *L = &im->layers[i];
		if (r == 0 && L->files < 0) {
			char *dir = store_path(s, "layers/sha256/%s", L->diff);
			r = dir ? tree_stats(dir, &L->files, &L->size) : -ENOMEM;
			free(dir);
			if (r < 0)
				snprintf(err, ERRLEN, "layer sha256:%s: %s",
					 L->diff, strerror(-r));
		}
		snprintf(text, sizeof(text), "%lld", L->size);
		if (r == 0)
			r = write_text(tmp, "size", text, err);
		snprintf(text, sizeof(text), "%lld", L->files);
		if (r == 0)
			r = write_text(tmp, "files", text, err);
		/* Recorded meanwhile by another import: same content. */
		if (r == 0 && rename(tmp, final) < 0) {
			if (errno != EEXIST && errno != ENOTEMPTY) {
				r = -errno;
				snprintf(err, ERRLEN, "%s: %s", final,
					 strerror(errno));
			}
		} else if (r == 0) {
			made_note(final);
		}
		free(tmp);
		free(final);
	}
out:
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	free(diff);
	free(chain);
	return r;
}

static int commit_image(const struct store *s, const char *staging,
			struct image_src *im, const char *tag_override,
			json_t *repos, char err[ERRLEN])
{
	int r = 0;

	/* A layer found in the store before the lock was taken may have
	 * been collected since (layerctl gc): check again, under the lock. */
	for (size_t i = 0; i < im->n_layers; i++) {
		if (!im->layers[i].staged &&
		    !store_has_layer(s, im->layers[i].diff)) {
			snprintf(err, ERRLEN, "layer sha256:%s left the store "
				 "during the import (gc?); import again",
				 im->layers[i].diff);
			return -EAGAIN;
		}
	}

	for (size_t i = 0; i < im->n_layers && r == 0; i++) {
		struct layer_src *L = &im->layers[i];
		if (!L->staged)
			continue;
		char *final = store_path(s, "layers/sha256/%s", L->diff);
		char *split = NULL, *final_split = NULL;
		/* The layout record first: a layer in the store has its
		 * record, if it ever gets one. */
		if (final && asprintf(&split, "%s.tarsplit", L->staged) >= 0 &&
		    asprintf(&final_split, "%s.tarsplit", final) >= 0 &&
		    access(split, F_OK) == 0) {
			if (rename(split, final_split) < 0) {
				r = -errno;
				snprintf(err, ERRLEN, "%s: %s", final_split,
					 strerror(errno));
			} else {
				made_note(final_split);
			}
		}
		free(split);
		free(final_split);
		if (r < 0) {
			free(final);
			break;
		}
		if (!final)
			r = -ENOMEM;
		else if (rename(L->staged, final) < 0) {
			/* Another import placed it meanwhile: keep theirs. */
			if (errno != EEXIST && errno != ENOTEMPTY) {
				r = -errno;
				snprintf(err, ERRLEN, "%s: %s", final,
					 strerror(errno));
			}
		} else {
			made_note(final);
			free(L->staged);
			L->staged = NULL;
		}
		free(final);
	}
	if (r == 0)
		r = commit_layerdb(s, staging, im, err);
	char *config_path = store_path(s, "imagedb/sha256/%s.json", im->id);
	bool config_existed = config_path && access(config_path, F_OK) == 0;
	if (r == 0)
		r = config_path ? write_file_atomic(config_path, im->config_bytes,
						    im->config_len, err)
				: -ENOMEM;
	if (r == 0 && !config_existed)
		made_note(config_path);
	free(config_path);
	if (r < 0)
		return r;
	char value[HEXLEN + 8];
	snprintf(value, sizeof(value), "sha256:%s", im->id);
	if (tag_override) {
		char *tag = normalize_tag(tag_override);
		json_decref(im->tags);
		im->tags = json_array();
		json_array_append_new(im->tags, json_string(tag ? tag : ""));
		free(tag);
	}
	size_t i;
	json_t *tag;
	json_array_foreach(im->tags, i, tag)
		if (json_string_value(tag))
			json_object_set_new(repos, json_string_value(tag),
					    json_string(value));
	return 0;
}

/* ---- the verb ----------------------------------------------------------- */

static int read_input(const char *dir, const char *input,
		      struct image_src **ims, size_t *n, char err[ERRLEN])
{
	char *index = path_join(dir, "index.json");
	char *manifest = path_join(dir, "manifest.json");
	bool oci = index && access(index, F_OK) == 0;
	bool docker = manifest && access(manifest, F_OK) == 0;
	int r;

	free(index);
	free(manifest);
	/* Docker 25+ writes both; the OCI side names every blob by digest. */
	if (oci)
		r = read_oci(dir, ims, n, err);
	else if (docker)
		r = read_docker_save(dir, ims, n, err);
	else {
		snprintf(err, ERRLEN, "%s: neither an OCI layout (index.json) "
			 "nor a docker save archive (manifest.json)", input);
		r = -EINVAL;
	}
	return r;
}

int cmd_import(struct store *s, int argc, char **argv)
{
	struct image_src *ims = NULL;
	size_t n_ims = 0;
	char err[ERRLEN] = "", *staging = NULL, *dir = NULL;
	const char *input, *tag = NULL;
	json_t *repos = NULL;
	struct stat st;
	int r = -EINVAL, lock = -1;

	if (argc < 2 || argc > 3)
		return fail_verb("import", "usage: layerctl import FILE|DIR [NAME:TAG]");
	input = argv[1];
	tag = argc == 3 ? argv[2] : NULL;
	if (stat(input, &st) < 0) {
		snprintf(err, ERRLEN, "%s: %s", input, strerror(errno));
		return fail_verb("import", err);
	}
	if (!(staging = store_staging(s, err)))
		return fail_verb("import", err);
	if (S_ISDIR(st.st_mode)) {
		dir = strdup(input);
	} else {
		long long files, size;
		dir = path_join(staging, "input");
		r = dir && mkdir(dir, 0700) == 0
			    ? extract_tar(input, dir, input, true, &files, &size,
					  err)
			    : -ENOMEM;
		if (r < 0)
			goto out;
	}
	in_ctx.dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	in_ctx.staging = staging;
	in_ctx.copy = S_ISDIR(st.st_mode);    /* not ours: take copies */
	in_ctx.n_copies = 0;
	if (in_ctx.dir_fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", dir, strerror(errno));
		r = -errno;
		goto out;
	}
	if ((r = read_input(dir, input, &ims, &n_ims, err)) < 0)
		goto out;
	if (tag && n_ims != 1) {
		snprintf(err, ERRLEN, "%s holds %zu images: a NAME:TAG names "
			 "one", input, n_ims);
		r = -EINVAL;
		goto out;
	}
	progress.on = isatty(STDERR_FILENO);
	for (size_t i = 0; i < n_ims && r == 0; i++) {
		r = check_config(&ims[i], err);
		progress.n_layers = ims[i].n_layers;
		for (size_t j = 0; j < ims[i].n_layers && r == 0; j++) {
			progress.layer = j + 1;
			r = stage_layer(s, staging, &ims[i].layers[j], j, err);
			progress_add(0, true);
		}
	}
	progress_end();
	if (r < 0)
		goto out;
	/* Commit under the store lock: tags are a read-modify-write. */
	lock = store_lock(s, err);
	if (lock < 0) {
		r = lock;
		goto out;
	}
	if (!(repos = store_load_repos(s, err))) {
		r = -EINVAL;
		goto out;
	}
	/* From here on the store may change: keep the skeleton it needs. */
	s->created = 0;
	for (size_t i = 0; i < n_ims && r == 0; i++)
		r = commit_image(s, staging, &ims[i], tag, repos, err);
	if (r == 0)
		r = store_save_repos(s, repos, err);
	for (size_t i = 0; i < n_ims && r == 0; i++) {
		const char *t = json_string_value(json_array_get(ims[i].tags, 0));
		if (t)
			printf("Loaded image: %s (sha256:%s)\n", t, ims[i].id);
		else
			printf("Loaded image ID: sha256:%s\n", ims[i].id);
	}
out:
	if (in_ctx.dir_fd >= 0)
		close(in_ctx.dir_fd);
	in_ctx.dir_fd = -1;
	store_unlock(lock);
	json_decref(repos);
	images_free(ims, n_ims);
	free(dir);
	if (staging) {
		remove_tree(staging);
		free(staging);
	}
	made_finish(r < 0);
	if (r < 0) {
		store_undo_skeleton(s);
		return fail_verb("import", err);
	}
	return 0;
}

/* ---- an image made here (layerctl commit) ------------------------------- */

int import_image_with_layer(struct store *s, const char *config_bytes,
			    size_t config_len, const char *new_layer,
			    const char *tag, char id[HEXLEN + 1],
			    char err[ERRLEN])
{
	struct image_src im = { 0 };
	char (*diff)[HEXLEN + 1] = NULL;
	char *staging = NULL;
	json_t *config = NULL, *repos = NULL;
	json_error_t jerr;
	size_t n = 0;
	int r = -ENOMEM, lock = -1;

	config = json_loadb(config_bytes, config_len, 0, &jerr);
	if (!config) {
		snprintf(err, ERRLEN, "new config: %s", jerr.text);
		return -EINVAL;
	}
	r = config_diff_ids(config, &diff, &n, err);
	json_decref(config);
	if (r < 0)
		return r;
	if (n == 0) {
		free(diff);
		snprintf(err, ERRLEN, "new config has no layers");
		return -EINVAL;
	}
	r = -ENOMEM;
	im.n_layers = n;
	im.layers = calloc(n, sizeof(*im.layers));
	im.config_bytes = malloc(config_len);
	im.tags = json_array();
	if (!im.layers || !im.config_bytes || !im.tags)
		goto out;
	memcpy(im.config_bytes, config_bytes, config_len);
	im.config_len = config_len;
	sha256_hex_of(config_bytes, config_len, im.id);
	for (size_t i = 0; i < n; i++) {
		memcpy(im.layers[i].diff, diff[i], HEXLEN + 1);
		im.layers[i].size = im.layers[i].files = -1;
	}
	struct layer_src *top = &im.layers[n - 1];
	if (!(top->blob = strdup(new_layer)) || !(top->name = strdup("new layer")))
		goto out;
	if (!(staging = store_staging(s, err))) {
		r = -EIO;
		goto out;
	}
	/* Checks the tar against the diff_id once more, and extracts it
	 * unless the store has it (the same upper committed twice). */
	r = stage_layer(s, staging, top, n - 1, err);
	if (r < 0)
		goto out;
	lock = store_lock(s, err);
	if (lock < 0) {
		r = lock;
		goto out;
	}
	if (!(repos = store_load_repos(s, err))) {
		r = -EINVAL;
		goto out;
	}
	s->created = 0;
	r = commit_image(s, staging, &im, tag, repos, err);
	if (r == 0 && tag)
		r = store_save_repos(s, repos, err);
	if (r == 0)
		memcpy(id, im.id, HEXLEN + 1);
out:
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	store_unlock(lock);
	json_decref(repos);
	image_free(&im);
	free(diff);
	if (staging) {
		remove_tree(staging);
		free(staging);
	}
	made_finish(r < 0);
	return r;
}
