/*
 * fsbench: the timing loops of the layerfs benchmark suite.
 *
 * benchmarks/run drives this program; it mounts, drops caches and picks the
 * paths, and this program only times file-system calls on an already mounted
 * tree.  The loops live in C because a Python interpreter adds a few
 * microseconds per call, as much as a warm FUSE lookup costs.
 *
 * Every subcommand runs PASSES passes over the same work and prints one line
 * per pass, "key=value" pairs separated by spaces:
 *
 *   pass=N ns=ELAPSED ops=CALLS bad=UNEXPECTED bytes=READ entries=E dirs=D
 *
 * Pass 0 is the first touch after mounting (the cold pass when the caller
 * dropped caches and mounted freshly); later passes are warm.  Only the loop
 * itself is timed: reading the path list happens before the clock starts.
 * "bad" counts results that contradict the generator's model of the merged
 * tree (a path that should exist but does not, a read error, ...), so a wrong
 * answer is never reported as a fast one.
 *
 * Not in here: mounting, cache dropping, tar and any statistics; those are
 * the driver's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The result of one pass; fields a subcommand does not use stay 0. */
struct pass_result {
	uint64_t ns;
	uint64_t ops;
	uint64_t bad;
	uint64_t bytes;
	uint64_t entries;
	uint64_t dirs;
};

/* Paths relative to the mount root, one per line; owns buf and v. */
struct path_list {
	char *buf;
	char **v;
	size_t n;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "fsbench: %s: %s: %s\n", what, arg, strerror(errno));
	exit(2);
}

static void print_pass(int pass, const struct pass_result *r)
{
	printf("pass=%d ns=%llu ops=%llu bad=%llu bytes=%llu entries=%llu dirs=%llu\n",
	       pass, (unsigned long long)r->ns, (unsigned long long)r->ops,
	       (unsigned long long)r->bad, (unsigned long long)r->bytes,
	       (unsigned long long)r->entries, (unsigned long long)r->dirs);
	fflush(stdout);
}

/* Reads FILE whole into *ret (empty lines skipped); exits on failure. */
static void load_paths(const char *file, struct path_list *ret)
{
	FILE *f = fopen(file, "r");
	size_t cap = 0, len = 0, n = 1, i;
	char *buf = NULL;

	if (!f)
		die("open", file);
	for (;;) {
		if (len + 65536 + 1 > cap) {
			cap = cap ? cap * 2 : 1 << 20;
			buf = realloc(buf, cap);
			if (!buf)
				die("realloc", file);
		}
		size_t got = fread(buf + len, 1, cap - len - 1, f);
		if (got == 0)
			break;
		len += got;
	}
	if (ferror(f))
		die("read", file);
	fclose(f);
	buf[len] = '\0';

	for (i = 0; i < len; i++)
		if (buf[i] == '\n')
			n++;
	ret->v = calloc(n + 1, sizeof(*ret->v));
	if (!ret->v)
		die("calloc", file);
	ret->n = 0;
	for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save))
		ret->v[ret->n++] = line;
	ret->buf = buf;
}

static int open_root(const char *root)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		die("open", root);
	return fd;
}

/* fstatat every path; EXPECT_EXIST says whether each should exist. */
static void run_stat(int rootfd, const struct path_list *pl, int expect_exist,
		     struct pass_result *r)
{
	struct stat st;
	uint64_t t0 = now_ns();

	for (size_t i = 0; i < pl->n; i++) {
		int rc = fstatat(rootfd, pl->v[i], &st, AT_SYMLINK_NOFOLLOW);
		if (expect_exist ? rc != 0 : !(rc != 0 && errno == ENOENT))
			r->bad++;
	}
	r->ns = now_ns() - t0;
	r->ops = pl->n;
}

/* open, read to EOF and close every path. */
static void run_read(int rootfd, const struct path_list *pl, struct pass_result *r)
{
	static char buf[1 << 16];
	uint64_t t0 = now_ns();

	for (size_t i = 0; i < pl->n; i++) {
		int fd = openat(rootfd, pl->v[i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		ssize_t got;

		if (fd < 0) {
			r->bad++;
			continue;
		}
		while ((got = read(fd, buf, sizeof(buf))) > 0)
			r->bytes += (uint64_t)got;
		if (got < 0)
			r->bad++;
		close(fd);
	}
	r->ns = now_ns() - t0;
	r->ops = pl->n;
}

/* Sequential read of one file with a BUFSIZE buffer. */
static void run_seqread(const char *path, char *buf, size_t bufsize, struct pass_result *r)
{
	uint64_t t0 = now_ns();
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got;

	if (fd < 0) {
		r->bad++;
		r->ns = now_ns() - t0;
		return;
	}
	while ((got = read(fd, buf, bufsize)) > 0) {
		r->bytes += (uint64_t)got;
		r->ops++;
	}
	if (got < 0)
		r->bad++;
	close(fd);
	r->ns = now_ns() - t0;
}

/* Readdir of the directory DFD (consumed), recursing on directories. */
static void walk_dir(int dfd, struct pass_result *r)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;

	if (!d) {
		close(dfd);
		r->bad++;
		return;
	}
	r->dirs++;
	while ((errno = 0, de = readdir(d)) != NULL) {
		int is_dir;

		if (de->d_name[0] == '.' && (de->d_name[1] == '\0' ||
		    (de->d_name[1] == '.' && de->d_name[2] == '\0')))
			continue;
		r->entries++;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;

			if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
				r->bad++;
				continue;
			}
			is_dir = S_ISDIR(st.st_mode);
		} else {
			is_dir = de->d_type == DT_DIR;
		}
		if (is_dir) {
			int sub = openat(dirfd(d), de->d_name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				r->bad++;
			else
				walk_dir(sub, r);
		}
	}
	if (errno != 0)
		r->bad++;
	closedir(d);
}

static void run_walk(const char *root, struct pass_result *r)
{
	uint64_t t0 = now_ns();
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		r->bad++;
	else
		walk_dir(fd, r);
	r->ns = now_ns() - t0;
	r->ops = r->dirs;
}

static int usage(void)
{
	fputs("usage: fsbench stat ROOT LIST PASSES exist|absent\n"
	      "       fsbench read ROOT LIST PASSES\n"
	      "       fsbench seqread FILE PASSES BUFKIB\n"
	      "       fsbench walk ROOT PASSES\n", stderr);
	return 2;
}

static int parse_count(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < 1 || v > 1000000) {
		fprintf(stderr, "fsbench: bad count: %s\n", s);
		exit(2);
	}
	return (int)v;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	const char *cmd = argv[1];

	if (strcmp(cmd, "stat") == 0 && argc == 6) {
		struct path_list pl;
		int rootfd, passes = parse_count(argv[4]);
		int expect_exist;

		if (strcmp(argv[5], "exist") == 0)
			expect_exist = 1;
		else if (strcmp(argv[5], "absent") == 0)
			expect_exist = 0;
		else
			return usage();
		load_paths(argv[3], &pl);
		rootfd = open_root(argv[2]);
		for (int p = 0; p < passes; p++) {
			struct pass_result r = {0};
			run_stat(rootfd, &pl, expect_exist, &r);
			print_pass(p, &r);
		}
		return 0;
	}
	if (strcmp(cmd, "read") == 0 && argc == 5) {
		struct path_list pl;
		int rootfd, passes = parse_count(argv[4]);

		load_paths(argv[3], &pl);
		rootfd = open_root(argv[2]);
		for (int p = 0; p < passes; p++) {
			struct pass_result r = {0};
			run_read(rootfd, &pl, &r);
			print_pass(p, &r);
		}
		return 0;
	}
	if (strcmp(cmd, "seqread") == 0 && argc == 5) {
		int passes = parse_count(argv[3]);
		size_t bufsize = (size_t)parse_count(argv[4]) * 1024;
		char *buf = malloc(bufsize);

		if (!buf)
			die("malloc", argv[4]);
		for (int p = 0; p < passes; p++) {
			struct pass_result r = {0};
			run_seqread(argv[2], buf, bufsize, &r);
			print_pass(p, &r);
		}
		free(buf);
		return 0;
	}
	if (strcmp(cmd, "walk") == 0 && argc == 4) {
		int passes = parse_count(argv[3]);

		for (int p = 0; p < passes; p++) {
			struct pass_result r = {0};
			run_walk(argv[2], &r);
			print_pass(p, &r);
		}
		return 0;
	}
	return usage();
}
