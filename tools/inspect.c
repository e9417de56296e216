/*
 * inspect.c - `layerctl images` and `layerctl inspect IMAGE`: what the
 * store holds, in the shape `docker images` / `docker inspect` use.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layerctl.h"

/* A layerdb field of one chain id as a number, or -1. */
static long long layerdb_number(const struct store *s, const char *chain,
				const char *field)
{
	char err[ERRLEN];
	char *path = store_path(s, "layerdb/sha256/%s/%s", chain, field);
	char *text = path ? read_file(path, NULL, err) : NULL;
	long long v = text ? strtoll(text, NULL, 10) : -1;

	free(path);
	free(text);
	return v;
}

/* The inspect object of image id (owned). */
static json_t *image_json(const struct store *s, const char *id, json_t *repos,
			  char err[ERRLEN])
{
	json_t *config = store_load_config(s, id, err);
	char (*diff)[HEXLEN + 1] = NULL, (*chain)[HEXLEN + 1] = NULL;
	json_t *out = NULL, *tags, *layers, *details;
	size_t n = 0;
	long long total = 0;
	char value[HEXLEN + 8];

	if (!config || config_diff_ids(config, &diff, &n, err) < 0)
		goto fail;
	chain = calloc(n, sizeof(*chain));
	if (!chain)
		goto fail;
	chain_ids(diff, n, chain);
	snprintf(value, sizeof(value), "sha256:%s", id);
	tags = json_array();
	const char *key;
	json_t *v;
	json_object_foreach(repos, key, v)
		if (json_string_value(v) && !strcmp(json_string_value(v), value))
			json_array_append_new(tags, json_string(key));
	layers = json_array();
	details = json_array();
	for (size_t i = 0; i < n; i++) {
		char d[HEXLEN + 8], c[HEXLEN + 8];
		long long size = layerdb_number(s, chain[i], "size");
		long long files = layerdb_number(s, chain[i], "files");
		snprintf(d, sizeof(d), "sha256:%s", diff[i]);
		snprintf(c, sizeof(c), "sha256:%s", chain[i]);
		json_array_append_new(layers, json_string(d));
		json_array_append_new(details,
				      json_pack("{s:s, s:s, s:I, s:I}", "DiffID", d,
						"ChainID", c, "Size",
						(json_int_t)size, "Files",
						(json_int_t)files));
		total += size > 0 ? size : 0;
	}
	out = json_pack("{s:s, s:o, s:O, s:O, s:O, s:I, s:{s:s, s:o}, s:o}",
			"Id", value, "RepoTags", tags,
			"Created", json_object_get(config, "created")
					   ? json_object_get(config, "created")
					   : json_null(),
			"Architecture", json_object_get(config, "architecture")
						? json_object_get(config, "architecture")
						: json_null(),
			"Os", json_object_get(config, "os")
				      ? json_object_get(config, "os")
				      : json_null(),
			"Size", (json_int_t)total, "RootFS", "Type", "layers",
			"Layers", layers, "LayerDetails", details);
fail:
	if (!out && !err[0])
		snprintf(err, ERRLEN, "out of memory");
	free(diff);
	free(chain);
	json_decref(config);
	return out;
}

int cmd_inspect(struct store *s, int argc, char **argv)
{
	char err[ERRLEN] = "", id[HEXLEN + 1];
	json_t *repos, *all = json_array();

	if (argc < 2)
		return fail_verb("inspect", "usage: layerctl inspect IMAGE...");
	if (!(repos = store_load_repos(s, err)))
		return fail_verb("inspect", err);
	for (int i = 1; i < argc; i++) {
		json_t *one;
		if (store_resolve_image(s, argv[i], id, err) < 0 ||
		    !(one = image_json(s, id, repos, err))) {
			json_decref(repos);
			json_decref(all);
			return fail_verb("inspect", err);
		}
		json_array_append_new(all, one);
	}
	json_dumpf(all, stdout, JSON_INDENT(4));
	putchar('\n');
	json_decref(repos);
	json_decref(all);
	return 0;
}

int cmd_images(struct store *s, int argc, char **argv)
{
	char err[ERRLEN] = "";
	json_t *repos = store_load_repos(s, err);
	const char *tag;
	json_t *value;

	(void)argc, (void)argv;
	if (!repos)
		return fail_verb("images", err);
	printf("%-30s %-15s %-14s %-22s %s\n", "REPOSITORY", "TAG", "IMAGE ID",
	       "CREATED", "SIZE");
	json_object_foreach(repos, tag, value) {
		char id[HEXLEN + 1], name[512];
		json_t *info;
		if (!digest_parse(json_string_value(value), id) ||
		    !(info = image_json(s, id, repos, err)))
			continue;
		snprintf(name, sizeof(name), "%s", tag);
		char *colon = strrchr(name, ':');
		if (colon)
			*colon = '\0';
		printf("%-30s %-15s %-14.12s %-22.22s %lld\n", name,
		       colon ? colon + 1 : "", id,
		       json_string_value(json_object_get(info, "Created"))
			       ? json_string_value(json_object_get(info, "Created"))
			       : "-",
		       (long long)json_integer_value(json_object_get(info, "Size")));
		json_decref(info);
	}
	json_decref(repos);
	return 0;
}

/*
 * `layerctl history IMAGE`: the config's history, newest first, as
 * `docker history` shows it; each entry that made a layer (no
 * empty_layer) is matched with that layer's diff_id, bottom up.
 */
int cmd_history(struct store *s, int argc, char **argv)
{
	char err[ERRLEN] = "", id[HEXLEN + 1];
	char (*diff)[HEXLEN + 1] = NULL;
	size_t n_diff = 0, n_hist, layer = 0;
	json_t *config, *history, *h;

	if (argc != 2)
		return fail_verb("history", "usage: layerctl history IMAGE");
	if (store_resolve_image(s, argv[1], id, err) < 0 ||
	    !(config = store_load_config(s, id, err)))
		return fail_verb("history", err);
	if (config_diff_ids(config, &diff, &n_diff, err) < 0) {
		json_decref(config);
		return fail_verb("history", err);
	}
	history = json_object_get(config, "history");
	n_hist = json_is_array(history) ? json_array_size(history) : 0;
	/* Which layer each entry made, counted from the bottom. */
	const char **made = calloc(n_hist + 1, sizeof(*made));
	if (!made) {
		free(diff);
		json_decref(config);
		return fail_verb("history", "out of memory");
	}
	for (size_t i = 0; i < n_hist; i++) {
		h = json_array_get(history, i);
		if (!json_is_true(json_object_get(h, "empty_layer")) &&
		    layer < n_diff)
			made[i] = diff[layer++];
	}
	printf("%-14s %-22s %-45s %s\n", "LAYER", "CREATED", "CREATED BY",
	       "COMMENT");
	for (size_t i = n_hist; i-- > 0;) {
		h = json_array_get(history, i);
		const char *created = json_string_value(json_object_get(h, "created"));
		const char *by = json_string_value(json_object_get(h, "created_by"));
		const char *comment = json_string_value(json_object_get(h, "comment"));
		printf("%-14.12s %-22.20s %-45.45s %s\n", made[i] ? made[i] : "-",
		       created ? created : "", by ? by : "",
		       comment ? comment : "");
	}
	if (n_hist == 0)
		printf("(the image config records no history; %zu layers)\n",
		       n_diff);
	free(made);
	free(diff);
	json_decref(config);
	return 0;
}
