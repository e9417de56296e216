/*
 * commit.c - `layerctl commit CONTAINER NAME:TAG [--message TEXT]`: like
 * `docker commit`, a container's upper directory becomes a new layer on
 * top of its image, and a new image names the lot.
 *
 * The layer tar is export's canonical form (export.c) with the upper's
 * whiteouts and opaque marks written as OCI ".wh.<name>" and
 * ".wh..wh..opq" entries and the overlay's own xattrs left out, its
 * entries in name order: the same upper always gives the same bytes, so
 * the same diff_id.  The new config is the image's with the diff_id and a
 * history entry added; the image enters the store like an import (all or
 * nothing, under the store lock).
 *
 * A running container keeps writing to its upper: commit it unmounted, or
 * accept what a live copy catches (docker pauses the container; we cannot).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "layerctl.h"

static void rfc3339_now(char buf[40])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(buf, 40, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The image config with the new layer (owned serialisation). */
static char *new_config(json_t *config, const char *diff, const char *message,
			size_t *ret_len, char err[ERRLEN])
{
	json_t *c = json_deep_copy(config), *rootfs, *ids, *history, *h;
	char created[40], value[HEXLEN + 8];
	char *text = NULL;

	if (!c)
		goto nomem;
	rootfs = json_object_get(c, "rootfs");
	ids = rootfs ? json_object_get(rootfs, "diff_ids") : NULL;
	if (!json_is_array(ids)) {
		snprintf(err, ERRLEN, "image config has no rootfs.diff_ids");
		json_decref(c);
		return NULL;
	}
	snprintf(value, sizeof(value), "sha256:%s", diff);
	rfc3339_now(created);
	history = json_object_get(c, "history");
	if (!json_is_array(history)) {
		history = json_array();
		if (!history || json_object_set_new(c, "history", history) < 0)
			goto nomem;
	}
	h = json_pack("{s:s, s:s}", "created", created, "created_by",
		      "layerctl commit");
	if (!h || (message && json_object_set_new(h, "comment",
						  json_string(message)) < 0) ||
	    json_array_append_new(history, h) < 0 ||
	    json_array_append_new(ids, json_string(value)) < 0 ||
	    json_object_set_new(c, "created", json_string(created)) < 0)
		goto nomem;
	text = json_dumps(c, JSON_COMPACT);
	json_decref(c);
	if (!text)
		goto nomem;
	*ret_len = strlen(text);
	return text;
nomem:
	json_decref(c);
	snprintf(err, ERRLEN, "out of memory");
	return NULL;
}

/* The image id a container runs ("Image" of its container.json). */
static int container_image(const struct store *s, const char *name,
			   char id[HEXLEN + 1], char err[ERRLEN])
{
	char *path = store_path(s, "containers/%s/container.json", name);
	char *text = path ? read_file(path, NULL, err) : NULL;
	json_t *j = text ? json_loads(text, 0, NULL) : NULL;
	const char *image = json_string_value(json_object_get(j, "Image"));
	int r = 0;

	if (!path)
		snprintf(err, ERRLEN, "out of memory");
	else if (!text)
		snprintf(err, ERRLEN, "no container %s", name);
	else if (!image || !digest_parse(image, id))
		snprintf(err, ERRLEN, "container %s: container.json names no "
			 "image", name);
	if (!path || !text || !image || !digest_parse(image, id))
		r = -ENOENT;
	json_decref(j);
	free(text);
	free(path);
	return r;
}

/* The image's layer directories, top-most first (owned array). */
static int image_layer_dirs(const struct store *s, json_t *config,
			    char ***ret, size_t *ret_n, char err[ERRLEN])
{
	char (*diff)[HEXLEN + 1] = NULL;
	size_t n = 0;
	int r = config_diff_ids(config, &diff, &n, err);
	char **dirs = r == 0 ? calloc(n + 1, sizeof(*dirs)) : NULL;

	if (r == 0 && !dirs)
		r = -ENOMEM;
	for (size_t i = 0; r == 0 && i < n; i++)
		if (!(dirs[i] = store_path(s, "layers/sha256/%s",
					   diff[n - 1 - i])))
			r = -ENOMEM;
	free(diff);
	if (r < 0) {
		for (size_t i = 0; dirs && i < n; i++)
			free(dirs[i]);
		free(dirs);
		return r;
	}
	*ret = dirs;
	*ret_n = n;
	return 0;
}

int cmd_commit(struct store *s, int argc, char **argv)
{
	const char *name = NULL, *tag = NULL, *message = NULL;
	char err[ERRLEN] = "", id[HEXLEN + 1], diff[HEXLEN + 1];
	char new_id[HEXLEN + 1];
	char *upper = NULL, *staging = NULL, *tar = NULL, *text = NULL;
	char **lowers = NULL;
	size_t n_lowers = 0;
	json_t *config = NULL;
	long long size = 0;
	size_t len = 0;
	struct stat st;
	int r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--message") && i + 1 < argc)
			message = argv[++i];
		else if (!name)
			name = argv[i];
		else if (!tag)
			tag = argv[i];
		else
			name = NULL, i = argc;
	}
	if (!name || !tag)
		return fail_verb("commit", "usage: layerctl commit CONTAINER "
				 "NAME:TAG [--message TEXT]");
	if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return fail_verb("commit", "container name must be a plain name");
	r = container_image(s, name, id, err);
	if (r == 0 && !(config = store_load_config(s, id, err)))
		r = -ENOENT;
	if (r == 0 && !(upper = store_path(s, "containers/%s/upper", name)))
		r = -ENOMEM;
	if (r == 0 && (stat(upper, &st) < 0 || !S_ISDIR(st.st_mode))) {
		snprintf(err, ERRLEN, "container %s has no upper directory", name);
		r = -ENOENT;
	}
	if (r == 0 && !(staging = store_staging(s, err)))
		r = -EIO;
	if (r == 0 && !(tar = path_join(staging, "layer.tar")))
		r = -ENOMEM;
	if (r == 0)
		r = image_layer_dirs(s, config, &lowers, &n_lowers, err);
	if (r == 0)
		r = tar_upper_layer(upper, lowers, n_lowers, tar, diff, &size, err);
	if (r == 0 && !(text = new_config(config, diff, message, &len, err)))
		r = -EINVAL;
	if (r == 0)
		r = import_image_with_layer(s, text, len, tar, tag, new_id, err);
	if (r == 0)
		printf("sha256:%s\n", new_id);
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	json_decref(config);
	for (size_t i = 0; i < n_lowers; i++)
		free(lowers[i]);
	free(lowers);
	free(text);
	free(tar);
	free(upper);
	if (staging) {
		remove_tree(staging);
		free(staging);
	}
	return r < 0 ? fail_verb("commit", err) : 0;
}
