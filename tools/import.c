/*
 * import.c - `layerctl import FILE|DIR [NAME:TAG]`: a `docker save` archive
 * or an OCI image layout into the layer store.
 *
 * Order of work, so that a bad input changes nothing:
 *   1. an archive is unpacked into a staging directory (extract.c: files
 *      and directories only, no "..", no absolute names, nothing through
 *      a symlink);
 *   2. the manifest is read into a list of images (config + layer blobs),
 *      the index, manifests and configs checked against their digests and
 *      every layer blob opened (a regular file beneath the input);
 *   3. each layer blob is read once (extract.c): its sha256, its
 *      decompressed sha256 and, if the store lacks the layer, the layer
 *      extracted into staging (every entry checked: no "..", no absolute
 *      names, bounded names, hard links inside the layer, nothing through
 *      a symlink, devices only where we may make them) and its tar layout
 *      recorded, all from the same bytes; then an OCI blob's sha256 is
 *      compared with its digest and the decompressed sha256 with the
 *      config's rootfs.diff_ids, and a mismatch fails the import (what
 *      was extracted goes with the staging directory);
 *   4. only then are layers, layerdb entries, the config and the tags
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include <archive.h>
#include <archive_entry.h>

#include "layerctl.h"

struct layer_src {
	char *blob;                  /* owned path (for an input blob, where
					it was when opened: fd is what counts) */
	int fd;                      /* the blob, opened and checked */
	bool fd_open;
	char *name;                  /* owned: as the input names it */
	char digest[HEXLEN + 1];     /* the blob's own digest, or "" */
	bool check_digest;           /* an OCI blob: digest must match */
	char diff[HEXLEN + 1];       /* from the config */
	char *staged;                /* owned: extracted here, or NULL */
	const struct layer_src *twin;   /* staged by this earlier one */
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


/*
 * The input, as import reads it.  Every file is opened once, beneath the
 * input directory (openat2: no "..", no symlink anywhere on the path),
 * must be a regular file (no FIFO to hang on, no device to read forever),
 * and what was hashed is what gets used: the index, manifests and configs
 * through a copy in staging that nobody else can change, a layer blob
 * through its fd, read once, its digests computed from the very bytes
 * that are extracted (stage_layer).  An archive input is unpacked into
 * staging in the first place (regular files and directories only), so
 * its files are used where they are.
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

/* The file rel of the input, opened as described above; -1 and err if it
 * is not a regular file reached without a link. */
static int input_open(const char *rel, char err[ERRLEN])
{
	struct open_how how = {
		.flags = O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
			   RESOLVE_NO_MAGICLINKS,
	};
	struct stat st;
	int fd;

	if (!path_is_safe_relative(rel)) {
		snprintf(err, ERRLEN, "manifest names an unsafe path: %s",
			 rel ? rel : "(none)");
		return -1;
	}
	fd = (int)syscall(SYS_openat2, in_ctx.dir_fd, rel, &how, sizeof(how));
	if (fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", rel,
			 errno == ELOOP || errno == EXDEV
				 ? "reached through a symbolic link"
				 : strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    fcntl(fd, F_SETFL, 0) < 0) {
		snprintf(err, ERRLEN, "%s: not a regular file", rel);
		close(fd);
		return -1;
	}
	return fd;
}

/* A layer blob of the input: opened now, read once later (stage_layer),
 * hashing what it extracts, so no copy is needed: what was hashed is what
 * was extracted. */
static int input_layer(const char *dir, const char *rel, struct layer_src *L,
		       char err[ERRLEN])
{
	int fd = input_open(rel, err);

	if (fd < 0)
		return -EINVAL;
	L->fd = fd;
	L->fd_open = true;
	if (!(L->blob = path_join(dir, rel)) || !(L->name = strdup(rel))) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

/* The file rel of the input, checked and taken (see above); owned path. */
static char *input_path(const char *dir, const char *rel, char err[ERRLEN])
{
	char *path = NULL;
	int fd = input_open(rel, err);

	if (fd < 0)
		return NULL;
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

/* An image archive (a tar, any compression) into dir: files and
 * directories only, every entry checked (extract.c). */
static int unpack_archive(const char *input, const char *dir, char err[ERRLEN])
{
	struct layer_pass p = { .what = input, .dest = dir, .outer = true,
				.no_blob_digest = true };
	int fd = open(input, O_RDONLY | O_CLOEXEC);
	int r;

	if (fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", input, strerror(errno));
		return -errno;
	}
	r = layer_pass_run(fd, &p);
	close(fd);
	if (r < 0)
		snprintf(err, ERRLEN, "%s", p.read_r ? p.read_err : p.extract_err);
	free(p.skipped);
	return r;
}

/* ---- reading the manifests ------------------------------------------- */

static void image_free(struct image_src *im)
{
	for (size_t i = 0; i < im->n_layers; i++) {
		free(im->layers[i].blob);
		free(im->layers[i].name);
		free(im->layers[i].staged);
		if (im->layers[i].fd_open)
			close(im->layers[i].fd);
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
			if (input_layer(dir, rel, &im->layers[j], err) < 0)
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
		char rel[HEXLEN + 20];
		/* Its digest is checked as it is read (stage_layer). */
		if (!digest_parse(d, im->layers[j].digest)) {
			snprintf(err, ERRLEN, "layer: not a sha256 digest: %s",
				 d ? d : "(none)");
			goto out;
		}
		snprintf(rel, sizeof(rel), "blobs/sha256/%s", im->layers[j].digest);
		if (input_layer(dir, rel, &im->layers[j], err) < 0)
			goto out;
		im->layers[j].check_digest = true;
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

static void show_progress(long long bytes)
{
	progress_add(bytes, false);
}

/*
 * Read a layer blob once: check its digest (an OCI blob) and its
 * decompressed digest (the config's diff_id), extracting it meanwhile
 * into staging if the store lacks it and no earlier layer of this import
 * (twin) has staged it.  A failure is told in the order the checks were
 * always made: blob digest, decompression, diff_id, then the tar's
 * entries; whatever was extracted goes with the staging directory.
 */
static int stage_layer(const struct store *s, const char *staging,
		       struct layer_src *L, const struct layer_src *twin,
		       char err[ERRLEN])
{
	static unsigned n_staged;
	struct layer_pass p = { .what = L->name, .progress = show_progress,
				.no_blob_digest = !L->check_digest };
	char *split = NULL;
	int fd = L->fd_open ? L->fd : open(L->blob, O_RDONLY | O_CLOEXEC);
	int r = 0;

	if (fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", L->name, strerror(errno));
		return -errno;
	}
	if (twin || store_has_layer(s, L->diff)) {
		L->size = L->files = -1;    /* counted if a new chain needs it */
		L->twin = twin;
	} else {
		if (asprintf(&L->staged, "%s/layer-%u-%s", staging, n_staged++,
			     L->diff) < 0) {
			L->staged = NULL;
			r = -ENOMEM;
			goto out;
		}
		if (mkdir(L->staged, 0755) < 0) {
			r = -errno;
			snprintf(err, ERRLEN, "%s: %s", L->staged, strerror(errno));
			goto out;
		}
		/* So that export can give back these very bytes (tarsplit.c). */
		if (asprintf(&split, "%s.tarsplit", L->staged) < 0) {
			split = NULL;
			r = -ENOMEM;
			goto out;
		}
		p.dest = L->staged;
		p.tarsplit = split;
	}
	layer_pass_run(fd, &p);
	if (L->check_digest && strcmp(p.blob_hex, L->digest) != 0) {
		snprintf(err, ERRLEN, "layer %s: digest mismatch: expected "
			 "sha256:%s, got sha256:%s", L->name, L->digest,
			 p.blob_hex);
		r = -EINVAL;
	} else if (p.read_r) {
		snprintf(err, ERRLEN, "%s", p.read_err);
		r = p.read_r;
	} else if (strcmp(p.diff_hex, L->diff) != 0) {
		snprintf(err, ERRLEN, "layer %s: diff_id mismatch: expected "
			 "sha256:%s, got sha256:%s", L->name, L->diff, p.diff_hex);
		r = -EINVAL;
	} else if (p.extract_r) {
		snprintf(err, ERRLEN, "%s", p.extract_err);
		r = p.extract_r;
	} else if (p.record_r == -EAGAIN) {
		/* A layout libarchive's positions did not explain: recorded
		 * in two passes, as it always was. */
		r = tarsplit_record_fd(fd, L->name, split, err);
		if (r == -ENOTSUP)
			r = 0;
	} else if (p.record_r) {
		snprintf(err, ERRLEN, "%s", p.record_err);
		r = p.record_r;
	}
	if (r == 0 && p.dest) {
		L->files = p.files;
		L->size = p.size;
	}
	if (r == 0 && p.skipped)
		fputs(p.skipped, stderr);
	free(p.skipped);
out:
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	free(split);
	/* Read once: not needed again. */
	L->fd_open = false;
	close(fd);
	return r;
}

/* An earlier layer of this import (images before im, or im's own lower
 * layers) that staged the same diff_id. */
static const struct layer_src *staged_twin(const struct image_src *ims,
					   size_t im, size_t layer)
{
	const char *diff = ims[im].layers[layer].diff;

	for (size_t i = 0; i <= im; i++)
		for (size_t j = 0; j < (i < im ? ims[i].n_layers : layer); j++)
			if (ims[i].layers[j].staged &&
			    strcmp(ims[i].layers[j].diff, diff) == 0)
				return &ims[i].layers[j];
	return NULL;
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
		if (!im->layers[i].staged && !im->layers[i].twin &&
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

/* Commit staged images under the store lock (tags are a read-modify-
 * write): layers, layerdb, configs, then the tags.  *ret_lock and
 * *ret_repos are the caller's to release, whatever happens. */
static int commit_images(struct store *s, const char *staging,
			 struct image_src *ims, size_t n_ims, const char *tag,
			 int *ret_lock, json_t **ret_repos, char err[ERRLEN])
{
	int r = 0;

	*ret_lock = store_lock(s, err);
	if (*ret_lock < 0)
		return *ret_lock;
	if (!(*ret_repos = store_load_repos(s, err)))
		return -EINVAL;
	/* From here on the store may change: keep the skeleton it needs. */
	s->created = 0;
	for (size_t i = 0; i < n_ims && r == 0; i++)
		r = commit_image(s, staging, &ims[i], tag, *ret_repos, err);
	if (r == 0)
		r = store_save_repos(s, *ret_repos, err);
	return r;
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
	/* Every layer blob stays open from the manifest's reading until it
	 * is read: allow as many as we may. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (stat(input, &st) < 0) {
		snprintf(err, ERRLEN, "%s: %s", input, strerror(errno));
		return fail_verb("import", err);
	}
	if (!(staging = store_staging(s, err)))
		return fail_verb("import", err);
	if (S_ISDIR(st.st_mode)) {
		dir = strdup(input);
	} else {
		dir = path_join(staging, "input");
		r = dir && mkdir(dir, 0700) == 0
			    ? unpack_archive(input, dir, err)
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
			r = stage_layer(s, staging, &ims[i].layers[j],
					staged_twin(ims, i, j), err);
			progress_add(0, true);
		}
	}
	progress_end();
	if (r < 0)
		goto out;
	r = commit_images(s, staging, ims, n_ims, tag, &lock, &repos, err);
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
	r = stage_layer(s, staging, top, NULL, err);
	if (r < 0)
		goto out;
	r = commit_images(s, staging, &im, 1, tag, &lock, &repos, err);
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
