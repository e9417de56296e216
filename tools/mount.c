/*
 * mount.c - `layerctl mount IMAGE MOUNTPOINT [--name C] [--read-only]` and
 * `layerctl umount MOUNTPOINT`: run layerfs over an image's layers, top-most
 * first, with container C's upper and work directories.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layerctl.h"

/* bin/layerfs next to this program, else layerfs on PATH. */
static char *layerfs_program(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *p = NULL;

	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if (asprintf(&p, "%s/layerfs", self) >= 0 &&
			    access(p, X_OK) == 0)
				return p;
			free(p);
		}
	}
	return strdup("layerfs");
}

static int run(char *const argv[])
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execvp(argv[0], argv);
		fprintf(stderr, "layerctl: %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* "L_top:...:L_bottom" with ':' escaped (store paths rarely have one). */
static char *lowerdir_of(const struct store *s, char (*diff)[HEXLEN + 1],
			 size_t n)
{
	size_t cap = 1;
	for (size_t i = 0; i < n; i++)
		cap += 2 * (strlen(s->root) + HEXLEN + 32);
	char *out = calloc(1, cap), *o = out;

	if (!out)
		return NULL;
	for (size_t i = n; i-- > 0;) {
		char *p = store_path(s, "layers/sha256/%s", diff[i]);
		if (!p) {
			free(out);
			return NULL;
		}
		for (char *c = p; *c; c++) {
			if (*c == ':' || *c == ',' || *c == '\\')
				*o++ = '\\';
			*o++ = *c;
		}
		if (i > 0)
			*o++ = ':';
		free(p);
	}
	return out;
}

int cmd_mount(struct store *s, int argc, char **argv)
{
	const char *image = NULL, *mnt = NULL, *name = NULL;
	bool read_only = false;
	char err[ERRLEN] = "", id[HEXLEN + 1];
	char (*diff)[HEXLEN + 1] = NULL;
	size_t n = 0;
	int r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--name") && i + 1 < argc)
			name = argv[++i];
		else if (!strcmp(argv[i], "--read-only"))
			read_only = true;
		else if (!image)
			image = argv[i];
		else if (!mnt)
			mnt = argv[i];
		else
			return fail_verb("mount", "usage: layerctl mount IMAGE "
					 "MOUNTPOINT [--name C] [--read-only]");
	}
	if (!image || !mnt)
		return fail_verb("mount", "usage: layerctl mount IMAGE MOUNTPOINT "
				 "[--name C] [--read-only]");
	json_t *config = NULL;
	if (store_resolve_image(s, image, id, err) < 0 ||
	    !(config = store_load_config(s, id, err)) ||
	    config_diff_ids(config, &diff, &n, err) < 0) {
		json_decref(config);
		return fail_verb("mount", err);
	}
	json_decref(config);
	for (size_t i = 0; i < n; i++)
		if (!store_has_layer(s, diff[i])) {
			snprintf(err, ERRLEN, "layer sha256:%s of %s is missing "
				 "from the store", diff[i], image);
			free(diff);
			return fail_verb("mount", err);
		}
	char *lower = lowerdir_of(s, diff, n), *opts = NULL, *upper = NULL,
	     *work = NULL, *prog = layerfs_program();
	free(diff);
	if (!read_only) {
		char cname[32];
		if (!name) {
			snprintf(cname, sizeof(cname), "%.12s", id);
			name = cname;
		}
		if (strchr(name, '/') || !strcmp(name, "..") || !strcmp(name, ".")) {
			free(lower);
			free(prog);
			return fail_verb("mount", "container name must be a plain name");
		}
		upper = store_path(s, "containers/%s/upper", name);
		work = store_path(s, "containers/%s/work", name);
		if (!upper || !work || make_dirs(upper, 0755) < 0 ||
		    make_dirs(work, 0700) < 0) {
			snprintf(err, ERRLEN, "container %s: cannot create its "
				 "directories", name);
			r = -EIO;
			goto out;
		}
	}
	if (!lower ||
	    (upper ? asprintf(&opts, "lowerdir=%s,upperdir=%s,workdir=%s", lower,
			      upper, work)
		   : asprintf(&opts, "lowerdir=%s", lower)) < 0) {
		opts = NULL;
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	char *args[] = { prog, "-o", opts, (char *)mnt, NULL };
	r = run(args);
	if (r < 0)
		snprintf(err, ERRLEN, "%s on %s: layerfs failed", image, mnt);
out:
	free(lower);
	free(opts);
	free(upper);
	free(work);
	free(prog);
	return r < 0 ? fail_verb("mount", err) : 0;
}

/* Is path (made absolute) a mount point?  From /proc/self/mountinfo. */
static bool is_mounted(const char *path)
{
	char real[PATH_MAX], *line = NULL;
	size_t cap = 0;
	bool found = false;
	FILE *f;

	if (!realpath(path, real) || !(f = fopen("/proc/self/mountinfo", "re")))
		return false;
	while (!found && getline(&line, &cap, f) > 0) {
		char *save = NULL, *field = strtok_r(line, " ", &save);
		for (int i = 0; field && i < 4; i++)
			field = strtok_r(NULL, " ", &save);
		/* Mount points with spaces are escaped as \040: compare the
		 * plain ones only; fusermount3 handles the rest. */
		found = field && strcmp(field, real) == 0;
	}
	free(line);
	fclose(f);
	return found;
}

int cmd_umount(struct store *s, int argc, char **argv)
{
	char err[ERRLEN];

	(void)s;
	if (argc != 2)
		return fail_verb("umount", "usage: layerctl umount MOUNTPOINT");
	if (!strpbrk(argv[1], " \t\n\\") && !is_mounted(argv[1])) {
		snprintf(err, sizeof(err), "%s: not mounted", argv[1]);
		return fail_verb("umount", err);
	}
	char *args[] = { "fusermount3", "-u", argv[1], NULL };
	if (run(args) < 0) {
		snprintf(err, sizeof(err), "%s: fusermount3 -u failed", argv[1]);
		return fail_verb("umount", err);
	}
	return 0;
}
