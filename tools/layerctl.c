/*
 * layerctl.c - the image tools: option parsing and a table of verbs, one
 * file per concern (import.c, inspect.c, mount.c, export.c, maintain.c).
 *
 *   layerctl [--store DIR] VERB ARGS...
 * The store defaults to /var/lib/layerfs for root and
 * $XDG_DATA_HOME/layerfs (or ~/.local/share/layerfs) otherwise.
 */
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerctl.h"

struct verb {
	const char *name;
	int (*run)(struct store *s, int argc, char **argv);
	bool creates_store;
	const char *usage;
};

static const struct verb verbs[] = {
	{ "import", cmd_import, true, "import FILE|DIR [NAME:TAG]" },
	{ "images", cmd_images, false, "images" },
	{ "inspect", cmd_inspect, false, "inspect IMAGE..." },
	{ "history", cmd_history, false, "history IMAGE" },
	{ "mount", cmd_mount, false,
	  "mount IMAGE MOUNTPOINT [--name C] [--read-only] [-o LAYERFS_OPTIONS]" },
	{ "umount", cmd_umount, false, "umount MOUNTPOINT" },
	{ "ps", cmd_ps, false, "ps" },
	{ "which", cmd_which, false, "which IMAGE PATH" },
	{ "export", cmd_export, false, "export IMAGE FILE|DIR [--format docker|oci]" },
	{ "rm", cmd_rm, false, "rm IMAGE..." },
	{ "gc", cmd_gc, false, "gc" },
	{ "verify", cmd_verify, false, "verify IMAGE..." },
	{ "commit", cmd_commit, false, "commit CONTAINER NAME:TAG [--message TEXT]" },
	{ "bench", cmd_bench, true, "bench [--layers N,N] [--json] [--plot FILE.svg] ... (bench --help)" },
};

int fail_verb(const char *verb, const char *msg)
{
	fprintf(stderr, "layerctl: %s: %s\n", verb, msg);
	return 1;
}

static void usage(FILE *out)
{
	fprintf(out, "usage: layerctl [--store DIR] VERB ...\n");
	for (size_t i = 0; i < sizeof(verbs) / sizeof(*verbs); i++)
		fprintf(out, "  layerctl %s\n", verbs[i].usage);
}

static char *default_store(void)
{
	const char *base;
	char *p = NULL;

	if (geteuid() == 0)
		return strdup("/var/lib/layerfs");
	if ((base = getenv("XDG_DATA_HOME")) && base[0] == '/')
		return asprintf(&p, "%s/layerfs", base) < 0 ? NULL : p;
	if ((base = getenv("HOME")) && base[0] == '/')
		return asprintf(&p, "%s/.local/share/layerfs", base) < 0 ? NULL : p;
	return NULL;
}

int main(int argc, char **argv)
{
	char *root = NULL;
	int i = 1;

	/* Layer tars carry UTF-8 names (pax headers): libarchive converts
	 * them to the locale's charset, so the charset must be UTF-8. */
	if (!setlocale(LC_CTYPE, "C.UTF-8"))
		setlocale(LC_CTYPE, "");
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--store") && i + 1 < argc) {
			free(root);
			root = strdup(argv[++i]);
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "layerctl: unknown option %s\n", argv[i]);
			usage(stderr);
			return 1;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 1;
	}
	if (!root && !(root = default_store()))
		return fail_verb(argv[i], "no store: give --store DIR");
	for (size_t v = 0; v < sizeof(verbs) / sizeof(*verbs); v++) {
		if (strcmp(argv[i], verbs[v].name) != 0)
			continue;
		struct store s;
		char err[ERRLEN];
		int r;
		if (store_open(&s, root, verbs[v].creates_store, err) < 0) {
			free(root);
			store_close(&s);
			return fail_verb(argv[i], err);
		}
		free(root);
		r = verbs[v].run(&s, argc - i, argv + i);
		store_close(&s);
		return r;
	}
	fprintf(stderr, "layerctl: unknown verb %s\n", argv[i]);
	usage(stderr);
	free(root);
	return 1;
}
