/*
 * mount.c - `layerctl mount IMAGE MOUNTPOINT [--name C] [--read-only]` and
 * `layerctl umount MOUNTPOINT`: run layerfs over an image's layers, top-most
 * first, with container C's upper and work directories.
 */
#include <dirent.h>
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

/* containers/<name>/container.json: which image the container runs. */
static int record_container(const struct store *s, const char *name,
			    const char *id, const char *ref, char err[ERRLEN])
{
	char *path = store_path(s, "containers/%s/container.json", name);
	char image[HEXLEN + 8];
	json_t *j;
	char *text;
	int r;

	snprintf(image, sizeof(image), "sha256:%s", id);
	j = json_pack("{s:s, s:s, s:s}", "Name", name, "Image", image,
		      "ImageRef", ref);
	text = j ? json_dumps(j, JSON_SORT_KEYS) : NULL;
	r = path && text ? write_file_atomic(path, text, strlen(text), err)
			 : -ENOMEM;
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	json_decref(j);
	free(text);
	free(path);
	return r;
}

struct mount_search {
	char needle[PATH_MAX + 16];     /* "upperdir=<upper>" */
	char *found;                    /* owned */
};

/* Is pid a layerfs whose options name the upper?  Its mount point is its
 * last argument (argv: ... -o OPTIONS MOUNTPOINT). */
static bool match_mount(const char *pid, void *arg)
{
	struct mount_search *m = arg;
	size_t len, n = strlen(m->needle);
	char *argv = proc_layerfs_argv(pid, &len);
	bool names_upper = false;
	const char *last = argv;

	for (const char *a = argv; argv && a < argv + len; a += strlen(a) + 1) {
		const char *hit = strstr(a, m->needle);
		if (hit && (hit[n] == ',' || hit[n] == '\0'))
			names_upper = true;
		last = a;
	}
	if (names_upper)
		m->found = strdup(last);
	free(argv);
	return m->found != NULL;
}

/* The mount point of the running layerfs whose options name upper, or
 * NULL (owned). */
static char *mount_of(const char *upper)
{
	struct mount_search m = { .found = NULL };

	snprintf(m.needle, sizeof(m.needle), "upperdir=%s", upper);
	proc_each_pid(match_mount, &m);
	return m.found;
}

int cmd_ps(struct store *s, int argc, char **argv)
{
	char *dir_path = store_path(s, "containers");
	DIR *dir = dir_path ? opendir(dir_path) : NULL;
	struct dirent *de;

	(void)argv;
	if (argc != 1) {
		free(dir_path);
		return fail_verb("ps", "usage: layerctl ps");
	}
	printf("%-20s %-14s %-30s %s\n", "NAME", "IMAGE ID", "IMAGE", "MOUNTED ON");
	while (dir && (de = readdir(dir))) {
		char err[ERRLEN], *cfg, *upper;
		json_t *j;
		if (de->d_name[0] == '.')
			continue;
		cfg = store_path(s, "containers/%s/container.json", de->d_name);
		upper = store_path(s, "containers/%s/upper", de->d_name);
		char *text = cfg ? read_file(cfg, NULL, err) : NULL;
		j = text ? json_loads(text, 0, NULL) : NULL;
		char *real = upper ? realpath(upper, NULL) : NULL;
		char *mnt = real ? mount_of(real) : NULL;
		const char *image = json_string_value(json_object_get(j, "Image"));
		printf("%-20s %-14.12s %-30s %s\n", de->d_name,
		       image && strlen(image) > 7 ? image + 7 : "-",
		       json_string_value(json_object_get(j, "ImageRef"))
			       ? json_string_value(json_object_get(j, "ImageRef"))
			       : "-",
		       mnt ? mnt : "-");
		json_decref(j);
		free(text);
		free(cfg);
		free(upper);
		free(real);
		free(mnt);
	}
	if (dir)
		closedir(dir);
	free(dir_path);
	return 0;
}

int cmd_mount(struct store *s, int argc, char **argv)
{
	const char *image = NULL, *mnt = NULL, *name = NULL;
	bool read_only = false;
	const char *extra = NULL;    /* -o: more layerfs options */
	char err[ERRLEN] = "", id[HEXLEN + 1];
	char (*diff)[HEXLEN + 1] = NULL;
	size_t n = 0;
	int r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--name") && i + 1 < argc)
			name = argv[++i];
		else if (!strcmp(argv[i], "--read-only"))
			read_only = true;
		else if (!strcmp(argv[i], "-o") && i + 1 < argc)
			extra = argv[++i];
		else if (!image)
			image = argv[i];
		else if (!mnt)
			mnt = argv[i];
		else
			return fail_verb("mount", "usage: layerctl mount IMAGE "
					 "MOUNTPOINT [--name C] [--read-only] "
					 "[-o LAYERFS_OPTIONS]");
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
	/* cname lives as long as name may point at it (record_container). */
	char cname[32];
	if (!read_only) {
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
	    (upper ? asprintf(&opts, "lowerdir=%s,upperdir=%s,workdir=%s%s%s",
			      lower, upper, work, extra ? "," : "",
			      extra ? extra : "")
		   : asprintf(&opts, "lowerdir=%s%s%s", lower, extra ? "," : "",
			      extra ? extra : "")) < 0) {
		opts = NULL;
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	char *real = realpath(mnt, NULL);
	char *args[] = { prog, "-o", opts, real ? real : (char *)mnt, NULL };
	r = run(args);
	free(real);
	if (r < 0)
		snprintf(err, ERRLEN, "%s on %s: layerfs failed", image, mnt);
	if (r == 0 && upper)
		r = record_container(s, name, id, image, err);
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
