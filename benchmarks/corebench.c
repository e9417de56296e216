/*
 * corebench.c - the union core's lookup path, timed without a mount.
 *
 * What the core promises is that a lookup through 128 layers costs what
 * one through 1 layer costs.  This measures that promise alone, with no
 * FUSE round trip and no kernel caches in the way: for stacks of several
 * heights it times, in-process,
 *   first lookups   every bottom-only file once, on a fresh filesystem
 *                   object, so each directory's index is built on the way;
 *   positive        the same lookups again (index built: hash + fstatat);
 *   negative        absent names in directories every layer shares.
 * The directories are held between lookups, as the kernel holds them.
 * The page cache is warm; `benchmarks/run` measures the mounted,
 * cache-dropped picture against kernel overlayfs and fuse-overlayfs.
 *
 * usage: corebench [--layers 1,16,128,500] [--files N] [--dir DIR]
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "layerfs.h"

#define N_DIRS 16         /* directories every layer has */
#define UPPER_FILES 16    /* files each upper layer adds */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "corebench: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* printf into a PATH_MAX buffer; a path that does not fit is fatal. */
__attribute__((format(printf, 2, 3)))
static void pathf(char buf[4096], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, 4096, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= 4096) {
		errno = ENAMETOOLONG;
		die(fmt);
	}
}

static void touch(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);

	if (fd < 0 || write(fd, "x", 1) != 1)
		die(path);
	close(fd);
}

static void make_dir(const char *path)
{
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		die(path);
}

/* Layer i of a stack under dir: the bottom one holds n_files files,
 * every other one UPPER_FILES; all share the same N_DIRS directories.
 * A stamp file marks a stack as complete, so reruns skip generation. */
static void generate(const char *dir, int n_layers, int n_files)
{
	char path[4096];

	pathf(path, "%s/complete", dir);
	if (access(path, F_OK) == 0)
		return;
	make_dir(dir);
	for (int l = 0; l < n_layers; l++) {
		bool bottom = l == n_layers - 1;
		int files = bottom ? n_files : UPPER_FILES;
		pathf(path, "%s/L%d", dir, l);
		make_dir(path);
		for (int d = 0; d < N_DIRS; d++) {
			pathf(path, "%s/L%d/d%d", dir, l, d);
			make_dir(path);
		}
		for (int f = 0; f < files; f++) {
			pathf(path, "%s/L%d/d%d/%s%d", dir, l,
				 f % N_DIRS, bottom ? "base" : "up", f);
			touch(path);
		}
	}
	pathf(path, "%s/complete", dir);
	touch(path);
}

static struct lfs_fs *open_fs(const char *dir, int n_layers)
{
	char **paths = calloc((size_t)n_layers, sizeof(*paths));
	char err[LFS_ERRLEN];
	struct lfs_stack *stack;
	struct lfs_fs *fs;
	struct lfs_fs_config config = { .read_only = true, .max_data_fds = 64 };

	for (int l = 0; l < n_layers; l++)
		if (asprintf(&paths[l], "%s/L%d", dir, l) < 0)
			die("asprintf");
	if (lfs_stack_open(&stack, paths, (size_t)n_layers, err) < 0) {
		fprintf(stderr, "corebench: %s\n", err);
		exit(1);
	}
	if (lfs_fs_new(&fs, stack, &config, (char[LFS_ERRLEN]){ 0 }) < 0)
		die("lfs_fs_new");
	for (int l = 0; l < n_layers; l++)
		free(paths[l]);
	free(paths);
	return fs;
}

/*
 * The shared directories, looked up once and held, as the kernel holds
 * the inodes of directories it has looked up (a node's index lives as
 * long as the node; see fs/node.c).
 */
static void hold_dirs(struct lfs_fs *fs, struct lfs_node *dirs[N_DIRS])
{
	for (int d = 0; d < N_DIRS; d++) {
		char dname[16];
		struct stat st;
		snprintf(dname, sizeof(dname), "d%d", d);
		if (lfs_lookup(fs, lfs_fs_root(fs), dname, &dirs[d], &st) < 0) {
			fprintf(stderr, "corebench: lookup %s failed\n", dname);
			exit(1);
		}
	}
}

/* ns per lookup of every bottom-only file (or, negative, of absent names)
 * in the held directories; the kernel would forget each file at once. */
static double time_lookups(struct lfs_fs *fs, struct lfs_node *dirs[N_DIRS],
			   int n_files, bool negative)
{
	char name[32];
	double t0 = now_ns();

	for (int f = 0; f < n_files; f++) {
		struct lfs_node *node;
		struct stat st;
		snprintf(name, sizeof(name), negative ? "absent%d" : "base%d", f);
		int r = lfs_lookup(fs, dirs[f % N_DIRS], name, &node, &st);
		if (negative ? r != -ENOENT : r != 0) {
			fprintf(stderr, "corebench: lookup d%d/%s: %d\n",
				f % N_DIRS, name, r);
			exit(1);
		}
		if (r == 0)
			lfs_node_unref(fs, node, 1);
	}
	return (now_ns() - t0) / n_files;
}

int main(int argc, char **argv)
{
	const char *layers = "1,16,128,500";
	const char *base = "/var/tmp/layerfs-corebench";
	int n_files = 3000;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--layers"))
			layers = argv[i + 1];
		else if (!strcmp(argv[i], "--files"))
			n_files = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--dir"))
			base = argv[i + 1];
	}
	make_dir(base);
	printf("union core, no mount: ns per lookup of a name in a directory "
	       "that every layer has\n(%d files in the bottom layer over %d "
	       "such directories; first = on a fresh filesystem,\nindexes "
	       "built on the way; positive/negative = indexes built, best of "
	       "5)\n\n", n_files, N_DIRS);
	printf("%7s %16s %12s %12s %20s\n", "layers", "first (builds)",
	       "positive", "negative", "positive vs 1 layer");
	char *list = strdup(layers);
	double base_pos = 0;
	for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
		int n = atoi(tok);
		char dir[4096];
		if (n < 1)
			continue;
		pathf(dir, "%s/L%d-f%d", base, n, n_files);
		generate(dir, n, n_files);
		struct lfs_fs *fs = open_fs(dir, n);
		struct lfs_node *dirs[N_DIRS];
		double t0 = now_ns();
		hold_dirs(fs, dirs);
		double first = time_lookups(fs, dirs, n_files, false) +
			       (now_ns() - t0) / n_files;
		double pos = 1e30, neg = 1e30;
		for (int rep = 0; rep < 5; rep++) {
			double p = time_lookups(fs, dirs, n_files, false);
			double q = time_lookups(fs, dirs, n_files, true);
			pos = p < pos ? p : pos;
			neg = q < neg ? q : neg;
		}
		if (base_pos == 0)
			base_pos = pos;
		printf("%7d %16.0f %12.0f %12.0f %19.2fx\n", n, first, pos, neg,
		       pos / base_pos);
		for (int d = 0; d < N_DIRS; d++)
			lfs_node_unref(fs, dirs[d], 1);
		lfs_fs_free(fs);
	}
	free(list);
	return 0;
}
