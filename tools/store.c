/*
 * store.c - the sha256 layer store, laid out like Docker's own
 * (README.md, "The layer store"):
 *   layers/sha256/<diff_id>/           an extracted layer (a layerfs lower)
 *   layerdb/sha256/<chain_id>/{diff,parent,size,files}
 *   imagedb/sha256/<image_id>.json     an image config, byte for byte
 *   repositories.json                  {"name:tag": "sha256:<image_id>"}
 *   containers/<name>/{upper,work}     a container's writable layer
 *   tmp/                               staging; emptied of leftovers
 * Everything that enters the store is built under tmp/ and renamed into
 * place, so a failed command leaves nothing half-written.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layerctl.h"

int make_dirs(const char *path, mode_t mode)
{
	char *buf = strdup(path);
	int r = 0;

	if (!buf)
		return -ENOMEM;
	for (char *p = buf + 1; *p && r == 0; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			r = -errno;
		*p = '/';
	}
	if (r == 0 && mkdir(buf, mode) < 0 && errno != EEXIST)
		r = -errno;
	free(buf);
	return r;
}

/* Parents before children, so undoing walks it backwards. */
static const char *const skeleton[] = { "", "layers", "layers/sha256",
					"layerdb", "layerdb/sha256", "imagedb",
					"imagedb/sha256", "containers", "tmp" };
#define N_SKELETON (sizeof(skeleton) / sizeof(*skeleton))

int store_open(struct store *s, const char *root, bool create,
	       char err[ERRLEN])
{
	struct stat st;

	s->created = 0;
	/* Absolute, so the paths handed to layerfs (which moves to "/") and
	 * found later in its command line are the same strings. */
	if (root[0] == '/') {
		s->root = strdup(root);
	} else {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof(cwd)) ||
		    asprintf(&s->root, "%s/%s", cwd, root) < 0)
			s->root = NULL;
	}
	if (!s->root) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (!create) {
		if (stat(root, &st) < 0) {
			snprintf(err, ERRLEN, "store %s: %s", root,
				 strerror(errno));
			return -errno;
		}
		return 0;
	}
	for (size_t i = 0; i < N_SKELETON; i++) {
		char *p = store_path(s, "%s", skeleton[i]);
		int r = p ? 0 : -ENOMEM;
		if (r == 0 && stat(p, &st) < 0) {
			r = make_dirs(p, 0700);
			if (r == 0)
				s->created |= 1u << i;
		}
		free(p);
		if (r < 0) {
			snprintf(err, ERRLEN, "store %s: %s", root, strerror(-r));
			return r;
		}
	}
	return 0;
}

void store_undo_skeleton(struct store *s)
{
	for (size_t i = N_SKELETON; i-- > 0;) {
		if (!(s->created & (1u << i)))
			continue;
		char *p = store_path(s, "%s", skeleton[i]);
		if (p)
			rmdir(p);
		free(p);
	}
	s->created = 0;
}

int store_lock(const struct store *s, char err[ERRLEN])
{
	char *p = store_path(s, "lock");
	int fd = p ? open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;

	if (fd < 0 || flock(fd, LOCK_EX) < 0) {
		snprintf(err, ERRLEN, "store lock %s: %s", p ? p : "",
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		free(p);
		return -errno;
	}
	free(p);
	return fd;
}

void store_unlock(int fd)
{
	if (fd >= 0)
		close(fd);    /* releases the flock */
}

void store_close(struct store *s)
{
	free(s->root);
	s->root = NULL;
}

char *store_path(const struct store *s, const char *fmt, ...)
{
	char *rel = NULL, *path = NULL;
	va_list ap;

	va_start(ap, fmt);
	int n = vasprintf(&rel, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	if (asprintf(&path, "%s/%s", s->root, rel) < 0)
		path = NULL;
	free(rel);
	return path;
}

char *path_join(const char *dir, const char *rel)
{
	char *p = NULL;

	return asprintf(&p, "%s/%s", dir, rel) < 0 ? NULL : p;
}

char *store_staging(const struct store *s, char err[ERRLEN])
{
	char *tmpl = store_path(s, "tmp/stage.XXXXXX");

	if (!tmpl || !mkdtemp(tmpl)) {
		snprintf(err, ERRLEN, "staging directory in %s/tmp: %s",
			 s->root, strerror(errno));
		free(tmpl);
		return NULL;
	}
	return tmpl;
}

bool store_has_layer(const struct store *s, const char *diff_hex)
{
	char *p = store_path(s, "layers/sha256/%s", diff_hex);
	struct stat st;
	bool has = p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);

	free(p);
	return has;
}

char *read_file(const char *path, size_t *ret_len, char err[ERRLEN])
{
	/* No FIFO to block on, no symlink to follow out of the store. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
	struct stat st;
	char *buf = NULL;

	if (fd < 0 || fstat(fd, &st) < 0) {
		snprintf(err, ERRLEN, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
		snprintf(err, ERRLEN, "%s: not a regular file of at most 64 MiB",
			 path);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf || read(fd, buf, (size_t)st.st_size) != st.st_size) {
		snprintf(err, ERRLEN, "%s: %s", path,
			 buf ? "short read" : "out of memory");
		free(buf);
		buf = NULL;
		goto out;
	}
	buf[st.st_size] = '\0';
	if (ret_len)
		*ret_len = (size_t)st.st_size;
out:
	if (fd >= 0)
		close(fd);
	return buf;
}

int write_file_atomic(const char *path, const void *data, size_t len,
		      char err[ERRLEN])
{
	char *tmp = NULL;
	int fd = -1, r = 0;

	if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) < 0)
		r = -errno;
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		snprintf(err, ERRLEN, "%s: %s", path, strerror(-r ? -r : EIO));
	}
	free(tmp);
	return r;
}

static int remove_one(const char *path, const struct stat *st, int flag,
		      struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

int remove_tree(const char *path)
{
	/* Layers may hold directories without write permission: FTW_DEPTH
	 * removes contents first, as root may. */
	return nftw(path, remove_one, 64, FTW_DEPTH | FTW_PHYS) < 0 ? -errno : 0;
}

json_t *store_load_repos(const struct store *s, char err[ERRLEN])
{
	char *path = store_path(s, "repositories.json");
	json_error_t jerr;
	json_t *repos;

	if (!path) {
		snprintf(err, ERRLEN, "out of memory");
		return NULL;
	}
	if (access(path, F_OK) < 0) {
		free(path);
		return json_object();
	}
	repos = json_load_file(path, 0, &jerr);
	if (!repos || !json_is_object(repos)) {
		snprintf(err, ERRLEN, "%s: %s", path,
			 repos ? "not a JSON object" : jerr.text);
		json_decref(repos);
		repos = NULL;
	}
	free(path);
	return repos;
}

int store_save_repos(const struct store *s, json_t *repos, char err[ERRLEN])
{
	char *text = json_dumps(repos, JSON_SORT_KEYS | JSON_INDENT(2));
	char *path = store_path(s, "repositories.json");
	int r;

	if (!text || !path) {
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
	} else {
		r = write_file_atomic(path, text, strlen(text), err);
	}
	free(text);
	free(path);
	return r;
}

char *normalize_tag(const char *ref)
{
	const char *slash = strrchr(ref, '/');
	const char *colon = strrchr(slash ? slash : ref, ':');
	char *out = NULL;

	if (colon)
		return strdup(ref);
	return asprintf(&out, "%s:latest", ref) < 0 ? NULL : out;
}

/* Every image id in imagedb whose hex starts with prefix. */
static int find_by_prefix(const struct store *s, const char *prefix,
			  char id[HEXLEN + 1], char err[ERRLEN])
{
	char *dir_path = store_path(s, "imagedb/sha256");
	DIR *dir = dir_path ? opendir(dir_path) : NULL;
	struct dirent *de;
	int found = 0;

	free(dir_path);
	if (!dir) {
		snprintf(err, ERRLEN, "no images in %s", s->root);
		return -ENOENT;
	}
	while ((de = readdir(dir))) {
		size_t len = strlen(de->d_name);
		if (len != HEXLEN + 5 || strcmp(de->d_name + HEXLEN, ".json") ||
		    strncmp(de->d_name, prefix, strlen(prefix)))
			continue;
		if (found++ == 0) {
			memcpy(id, de->d_name, HEXLEN);
			id[HEXLEN] = '\0';
		}
	}
	closedir(dir);
	if (found == 1)
		return 0;
	snprintf(err, ERRLEN, "%s: %s", prefix,
		 found ? "ambiguous image id prefix" : "no such image");
	return found ? -EINVAL : -ENOENT;
}

int store_resolve_image(const struct store *s, const char *ref,
			char id[HEXLEN + 1], char err[ERRLEN])
{
	size_t len = strlen(ref);
	bool hexy = len >= 12 && len <= HEXLEN &&
		    strspn(ref, "0123456789abcdef") == len;

	if (strncmp(ref, "sha256:", 7) == 0)
		return find_by_prefix(s, ref + 7, id, err);
	json_t *repos = store_load_repos(s, err);
	if (!repos)
		return -EINVAL;
	char *tag = normalize_tag(ref);
	const char *value = tag ? json_string_value(json_object_get(repos, tag))
				: NULL;
	int r;
	if (value && digest_parse(value, id))
		r = 0;
	else if (hexy)
		r = find_by_prefix(s, ref, id, err);
	else {
		snprintf(err, ERRLEN, "%s: no such image", ref);
		r = -ENOENT;
	}
	free(tag);
	json_decref(repos);
	return r;
}

json_t *store_load_config(const struct store *s, const char *id,
			  char err[ERRLEN])
{
	char *path = store_path(s, "imagedb/sha256/%s.json", id);
	json_error_t jerr;
	json_t *config = path ? json_load_file(path, 0, &jerr) : NULL;

	if (!config)
		snprintf(err, ERRLEN, "image config %s: %s", id,
			 path ? jerr.text : "out of memory");
	free(path);
	return config;
}

int config_diff_ids(json_t *config, char (**ret)[HEXLEN + 1], size_t *ret_n,
		    char err[ERRLEN])
{
	json_t *ids = json_object_get(json_object_get(config, "rootfs"),
				      "diff_ids");
	size_t n = json_array_size(ids);
	char (*out)[HEXLEN + 1];

	if (!json_is_array(ids) || n == 0) {
		snprintf(err, ERRLEN, "image config: no rootfs.diff_ids");
		return -EINVAL;
	}
	out = calloc(n, sizeof(*out));
	if (!out) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		if (!digest_parse(json_string_value(json_array_get(ids, i)),
				  out[i])) {
			snprintf(err, ERRLEN,
				 "image config: rootfs.diff_ids[%zu] is not a "
				 "sha256 digest", i);
			free(out);
			return -EINVAL;
		}
	}
	*ret = out;
	*ret_n = n;
	return 0;
}

void chain_ids(char (*diff)[HEXLEN + 1], size_t n, char (*chain)[HEXLEN + 1])
{
	for (size_t i = 0; i < n; i++) {
		if (i == 0) {
			memcpy(chain[0], diff[0], HEXLEN + 1);
			continue;
		}
		char text[2 * (HEXLEN + 7) + 2];
		snprintf(text, sizeof(text), "sha256:%s sha256:%s", chain[i - 1],
			 diff[i]);
		sha256_hex_of(text, strlen(text), chain[i]);
	}
}
