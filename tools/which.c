/*
 * which.c - `layerctl which IMAGE PATH`: the layer that provides PATH in
 * the image's merged view, the copies below it that it shadows, and the
 * whiteouts and opaque directories that hide it.  The merged answer comes
 * from the union core itself (the same lookups the mount does); each
 * layer's own view from lfs_layer_view.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layerctl.h"
#include "layerfs.h"

static const char *type_name(unsigned char type)
{
	switch (type) {
	case DT_REG: return "regular file";
	case DT_DIR: return "directory";
	case DT_LNK: return "symbolic link";
	case DT_CHR: return "character device";
	case DT_BLK: return "block device";
	case DT_FIFO: return "fifo";
	case DT_SOCK: return "socket";
	default: return "object";
	}
}

/* Look path up through the merge; *ret_layer is the providing layer. */
static int merged_lookup(struct lfs_fs *fs, const char *path,
			 uint32_t *ret_layer)
{
	char *copy = strdup(path), *save = NULL;
	struct lfs_node *node = lfs_fs_root(fs), *next;
	struct stat st;
	int r = copy ? 0 : -ENOMEM;

	for (char *c = copy ? strtok_r(copy, "/", &save) : NULL; c && r == 0;
	     c = strtok_r(NULL, "/", &save)) {
		r = lfs_lookup(fs, node, c, &next, &st);
		if (r == 0) {
			if (node != lfs_fs_root(fs))
				lfs_node_unref(fs, node, 1);
			node = next;
		}
	}
	if (r == 0)
		*ret_layer = lfs_node_layer(node);
	if (node != lfs_fs_root(fs))
		lfs_node_unref(fs, node, 1);
	free(copy);
	return r;
}

/* The image's layer directories, top-most first (owned). */
static int image_layers(const struct store *s, const char *image,
			char ***ret_paths, char (**ret_diff)[HEXLEN + 1],
			size_t *ret_n, char err[ERRLEN])
{
	char id[HEXLEN + 1], (*diff)[HEXLEN + 1] = NULL;
	json_t *config = NULL;
	size_t n = 0;
	char **paths;

	if (store_resolve_image(s, image, id, err) < 0 ||
	    !(config = store_load_config(s, id, err)) ||
	    config_diff_ids(config, &diff, &n, err) < 0) {
		json_decref(config);
		return -EINVAL;
	}
	json_decref(config);
	paths = calloc(n, sizeof(*paths));
	for (size_t i = 0; paths && i < n; i++) {
		/* diff ids are bottom first; layerfs stacks top first. */
		paths[i] = store_path(s, "layers/sha256/%s", diff[n - 1 - i]);
		if (!store_has_layer(s, diff[n - 1 - i])) {
			snprintf(err, ERRLEN, "layer sha256:%s of %s is missing "
				 "from the store", diff[n - 1 - i], image);
			for (size_t j = 0; j <= i; j++)
				free(paths[j]);
			free(paths);
			free(diff);
			return -ENOENT;
		}
	}
	if (!paths) {
		free(diff);
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	*ret_paths = paths;
	*ret_diff = diff;
	*ret_n = n;
	return 0;
}

int cmd_which(struct store *s, int argc, char **argv)
{
	char err[ERRLEN] = "", **paths = NULL, (*diff)[HEXLEN + 1] = NULL;
	struct lfs_stack *stack = NULL;
	struct lfs_fs *fs = NULL;
	struct lfs_fs_config config = { .read_only = true, .max_data_fds = 4 };
	size_t n = 0;
	uint32_t provider = UINT32_MAX;
	int r;

	if (argc != 3)
		return fail_verb("which", "usage: layerctl which IMAGE PATH");
	const char *path = argv[2];
	while (path[0] == '/')
		path++;
	if (!path[0])
		return fail_verb("which", "PATH names the root, which every layer provides");
	r = image_layers(s, argv[1], &paths, &diff, &n, err);
	if (r == 0 && (r = lfs_stack_open(&stack, paths, n, err)) == 0 &&
	    (r = lfs_fs_new(&fs, stack, &config, (char[LFS_ERRLEN]){ 0 })) < 0) {
		snprintf(err, ERRLEN, "%s", strerror(-r));
		lfs_stack_free(stack);
	}
	for (size_t i = 0; paths && i < n; i++)
		free(paths[i]);
	free(paths);
	if (r < 0) {
		free(diff);
		return fail_verb("which", err);
	}
	int found = merged_lookup(fs, path, &provider);
	printf("/%s in %s: ", path, argv[1]);
	if (found == 0)
		printf("provided by layer %u (sha256:%s)\n", provider,
		       diff[n - 1 - provider]);
	else
		printf("not in the merged view (%s)\n", strerror(-found));
	/* Every layer that mentions the name, top-most first. */
	for (uint32_t l = 0; l < n; l++) {
		struct lfs_layer_view v;
		const char *role;
		if (lfs_layer_view(lfs_fs_stack(fs), l, path, &v) < 0)
			continue;
		if (v.what == LFS_VIEW_ABSENT && !v.parent_opaque)
			continue;
		if (v.what == LFS_VIEW_WHITEOUT)
			role = "whiteout";
		else if (v.what == LFS_VIEW_ABSENT)
			role = "-";
		else if (l == provider)
			role = "provides";
		else if (found == 0 && l > provider)
			role = "shadowed";
		else
			role = "hidden";
		printf("  layer %-4u sha256:%.12s  %-9s %s%s%s\n", l,
		       diff[n - 1 - l], role,
		       v.what == LFS_VIEW_OBJECT ? type_name(v.type)
		       : v.what == LFS_VIEW_WHITEOUT ? v.format : "",
		       v.what != LFS_VIEW_ABSENT && v.parent_opaque ? ", " : "",
		       v.parent_opaque ? "parent directory opaque: layers below "
					 "do not show through" : "");
	}
	lfs_fs_free(fs);
	free(diff);
	return found == 0 ? 0 : 1;
}
