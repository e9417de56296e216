/*
 * test_differential.c - the core against a naive reference resolver on
 * random layer stacks.
 *
 * For each seed, a stack of 2-12 layers is generated (depth <= 4, five
 * shared names so that layers collide, and every kind of entry: files,
 * directories, symlinks, FIFOs, devices, whiteouts in all three formats
 * with and without the "x" mark, opaque directories in all three formats,
 * a name next to its own OCI whiteout, reserved ".wh." names, opaque layer
 * roots).  Both sides then describe the whole merged tree, one line per
 * visible path: "path type layer size data" - and the descriptions must be
 * equal.
 *
 * The reference knows nothing of the core: for every path it starts again
 * from the root and asks every layer, by absolute path (lstat, lgetxattr,
 * readdir), what README.md's union rules say.  No index, no cache.
 *
 * The core side walks lfs_opendir/lfs_readdir_at and lfs_lookup, checks on
 * the way that "." and ".." come first, that no name repeats, that d_ino
 * equals st_ino and d_type matches st_mode, and that every pool name not
 * listed (and its ".wh." spelling) fails to look up.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "harness.h"

#define N_SEEDS 30
#define MAX_LAYERS 12
#define MAX_DEPTH 4

static const char *const pool[] = { "a", "b", "c", "d", "e" };
#define N_POOL (sizeof(pool) / sizeof(*pool))

/* ---- a growable text buffer ---------------------------------------------- */

struct text {
	char *s;
	size_t len, cap;
};

__attribute__((format(printf, 2, 3)))
static void text_add(struct text *x, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(x->s ? x->s + x->len : NULL,
			      x->s ? x->cap - x->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			abort();
		if (x->s && x->len + (size_t)n < x->cap)
			break;
		size_t cap = (x->cap + (size_t)n + 1) * 2;
		char *grown = realloc(x->s, cap);
		if (!grown)
			abort();
		x->s = grown;
		x->cap = cap;
	}
	x->len += (size_t)n;
}

/* ---- the generator ---------------------------------------------------- */

struct rng {
	uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int pick(struct rng *r, int n)
{
	return (int)(rnd(r) % (uint64_t)n);
}

static void gen_file(struct rng *r, struct text *spec, int layer,
		     const char *path)
{
	int pad = pick(r, 24);

	text_add(spec, "L%d f %s L%d:%s:%.*s\n", layer, path, layer, path, pad,
		 "xxxxxxxxxxxxxxxxxxxxxxxx");
}

/* Marks of one directory of one layer ("." is the layer root). */
static void gen_marks(struct rng *r, struct text *spec, int layer,
		      const char *path)
{
	int k = pick(r, 100);
	const char *x_ns = "trusted";

	if (k < 10) {
		text_add(spec, "L%d opq %s\n", layer, path);
		x_ns = "user";
	} else if (k < 15) {
		text_add(spec, "L%d uopq %s\n", layer, path);
	} else if (k < 23) {
		text_add(spec, "L%d ociopq %s\n", layer, path);
	}
	if (pick(r, 100) < 30)
		text_add(spec, "L%d x %s %s.overlay.opaque=x\n", layer, path,
			 pick(r, 2) ? x_ns : "user");
}

static void gen_dir(struct rng *r, struct text *spec, int layer,
		    const char *dir, int depth);

/* dir/name, or name when dir is the layer root "." */
static void join_path(char *out, size_t size, const char *dir,
		      const char *name)
{
	bool root = strcmp(dir, ".") == 0;

	snprintf(out, size, "%s%s%s", root ? "" : dir, root ? "" : "/", name);
}

static void gen_entry(struct rng *r, struct text *spec, int layer,
		      const char *dir, const char *name, int depth)
{
	int k = pick(r, 100);
	bool can_dir = depth <= MAX_DEPTH;
	char path[64];

	join_path(path, sizeof(path), dir, name);

	if (k < 24 || (!can_dir && k < 54)) {
		gen_file(r, spec, layer, path);
	} else if (k < 54) {
		text_add(spec, "L%d d %s\n", layer, path);
		if (depth < MAX_DEPTH)
			gen_dir(r, spec, layer, path, depth);
	} else if (k < 59) {
		text_add(spec, "L%d l %s -> t%d\n", layer, path, pick(r, 9));
	} else if (k < 65) {
		text_add(spec, "L%d wh %s\n", layer, path);
	} else if (k < 71) {
		text_add(spec, "L%d ociwh %s\n", layer, path);
	} else if (k < 78) {
		/* an xattr whiteout: counts only if the dir got the x mark */
		text_add(spec, "L%d f %s\nL%d x %s %s.overlay.whiteout=\n",
			 layer, path, layer, path,
			 pick(r, 2) ? "trusted" : "user");
	} else if (k < 88) {
		/* a name and its own OCI whiteout in one layer */
		if (can_dir && pick(r, 4) != 0) {
			text_add(spec, "L%d d %s\n", layer, path);
			if (depth < MAX_DEPTH)
				gen_dir(r, spec, layer, path, depth);
		} else {
			gen_file(r, spec, layer, path);
		}
		text_add(spec, "L%d ociwh %s\n", layer, path);
	} else if (k < 91) {
		/* not empty: never a whiteout */
		gen_file(r, spec, layer, path);
		text_add(spec, "L%d x %s trusted.overlay.whiteout=\n", layer,
			 path);
	} else if (k < 94) {
		text_add(spec, "L%d p %s\n", layer, path);
	} else if (k < 97) {
		text_add(spec, "L%d c %s 1 %d\n", layer, path, 3 + pick(r, 3));
	} else {
		/* reserved names, never visible */
		char reserved[64];
		join_path(reserved, sizeof(reserved), dir, ".wh..wh.plnk");
		text_add(spec, "L%d f %s\n", layer, reserved);
		join_path(reserved, sizeof(reserved), dir, ".wh.");
		text_add(spec, "L%d f %s\n", layer, reserved);
		text_add(spec, "L%d ociwh %s_\n", layer, path);
	}
}

static void gen_dir(struct rng *r, struct text *spec, int layer,
		    const char *dir, int depth)
{
	gen_marks(r, spec, layer, dir);
	for (size_t i = 0; i < N_POOL; i++) {
		if (pick(r, 100) >= 75)
			continue;
		gen_entry(r, spec, layer, dir, pool[i], depth + 1);
	}
}

/* ---- the reference ------------------------------------------------------ */

struct ref {
	const char *base;
	int n_layers;
};

/* base/L<layer>[/rel][/name] */
static void lpath(char *buf, const struct ref *R, int layer, const char *rel,
		  const char *name)
{
	if (snprintf(buf, PATH_MAX, "%s/L%d%s%s%s%s", R->base, layer,
		     rel[0] ? "/" : "", rel, name ? "/" : "",
		     name ? name : "") >= PATH_MAX)
		abort();
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* Does the layer's directory carry {trusted,user}.overlay.opaque=<v>? */
static bool dir_mark(const struct ref *R, int layer, const char *dir, char v)
{
	static const char *const names[] = { "trusted.overlay.opaque",
					     "user.overlay.opaque" };
	char path[PATH_MAX];

	lpath(path, R, layer, dir, NULL);
	for (int i = 0; i < 2; i++) {
		char value[8];
		ssize_t n = lgetxattr(path, names[i], value, sizeof(value));
		if (n == 1 && value[0] == v)
			return true;
	}
	return false;
}

static bool dir_opaque(const struct ref *R, int layer, const char *dir)
{
	char path[PATH_MAX];

	lpath(path, R, layer, dir, ".wh..wh..opq");
	return dir_mark(R, layer, dir, 'y') || exists(path);
}

enum ref_kind { R_ABSENT, R_OBJECT, R_WHITEOUT };

/* What one layer's directory says about name: absent, an object (then
 * *st, and *closes if the layer also whites the name out below it), or a
 * whiteout. */
static enum ref_kind ref_kind(const struct ref *R, int layer, const char *dir,
			      const char *name, struct stat *st, bool *closes)
{
	char path[PATH_MAX], wh[PATH_MAX], whname[NAME_MAX + 8];

	lpath(path, R, layer, dir, name);
	snprintf(whname, sizeof(whname), ".wh.%s", name);
	lpath(wh, R, layer, dir, whname);
	if (lstat(path, st) < 0)
		return exists(wh) ? R_WHITEOUT : R_ABSENT;
	if (S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0))
		return R_WHITEOUT;
	if (S_ISREG(st->st_mode) && st->st_size == 0 &&
	    (lgetxattr(path, "trusted.overlay.whiteout", NULL, 0) >= 0 ||
	     lgetxattr(path, "user.overlay.whiteout", NULL, 0) >= 0) &&
	    dir_mark(R, layer, dir, 'x'))
		return R_WHITEOUT;
	*closes = exists(wh);
	return R_OBJECT;
}

struct ref_res {
	int layer;             /* providing layer */
	struct stat st;        /* its lstat */
	int layers[MAX_LAYERS + 1];  /* dir: contributing layers */
	int n;
};

/* Resolve path ("" is the root) from scratch: 0, -ENOENT or -ENOTDIR. */
static int ref_resolve(const struct ref *R, const char *path,
		       struct ref_res *res)
{
	char cur[PATH_MAX] = "", root[PATH_MAX];
	const char *p = path;

	res->layer = 0;
	res->n = R->n_layers;
	for (int i = 0; i < R->n_layers; i++)
		res->layers[i] = i;     /* the root: opacity ignored */
	lpath(root, R, 0, "", NULL);
	if (lstat(root, &res->st) < 0)
		return -errno;
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		char name[NAME_MAX + 1];
		struct ref_res next = { .layer = -1 };

		snprintf(name, sizeof(name), "%.*s", (int)len, p);
		p += len + (slash != NULL);
		if (!S_ISDIR(res->st.st_mode))
			return -ENOTDIR;
		if (strncmp(name, ".wh.", 4) == 0)
			return -ENOENT;
		for (int i = 0; i < res->n && next.layer < 0; i++) {
			bool closes = false;
			enum ref_kind k = ref_kind(R, res->layers[i], cur, name,
						   &next.st, &closes);
			if (k == R_ABSENT)
				continue;
			if (k == R_WHITEOUT)
				return -ENOENT;
			next.layer = res->layers[i];
			if (!S_ISDIR(next.st.st_mode))
				break;
			/* a directory: which layers below merge into it */
			next.layers[next.n++] = next.layer;
			for (int j = i + 1; j < res->n && !closes; j++) {
				struct stat st;
				k = ref_kind(R, res->layers[j], cur, name, &st,
					     &closes);
				if (k == R_ABSENT)
					continue;
				if (k == R_WHITEOUT || !S_ISDIR(st.st_mode))
					break;
				next.layers[next.n++] = res->layers[j];
			}
		}
		if (next.layer < 0)
			return -ENOENT;
		if (cur[0])
			strcat(cur, "/");
		strcat(cur, name);
		/* opacity: the first opaque layer is the last to contribute */
		for (int i = 0; i < next.n; i++)
			if (dir_opaque(R, next.layers[i], cur)) {
				next.n = i + 1;
				break;
			}
		*res = next;
	}
	return 0;
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char type_char(mode_t mode)
{
	return S_ISDIR(mode) ? 'd' : S_ISREG(mode) ? 'f' : S_ISLNK(mode) ? 'l'
	       : S_ISFIFO(mode) ? 'p' : S_ISCHR(mode) ? 'c' : '?';
}

/* "data": a file's content, a link's target, a device's numbers */
static void ref_data(const struct ref *R, const char *path,
		     const struct ref_res *res, char *out, size_t size)
{
	char real[PATH_MAX];
	ssize_t n = 0;

	out[0] = '\0';
	lpath(real, R, res->layer, path, NULL);
	if (S_ISREG(res->st.st_mode)) {
		int fd = open(real, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			n = read(fd, out, size - 1);
			close(fd);
		}
	} else if (S_ISLNK(res->st.st_mode)) {
		n = readlink(real, out, size - 1);
	} else if (S_ISCHR(res->st.st_mode)) {
		n = snprintf(out, size, "%u:%u", major(res->st.st_rdev),
			     minor(res->st.st_rdev));
	}
	out[n > 0 ? n : 0] = '\0';
}

/* Describe the merged tree under dir (a visible directory) into out. */
static void ref_tree(const struct ref *R, const char *dir, struct text *out)
{
	struct ref_res res;
	char **names = NULL;
	size_t n = 0, cap = 0;

	if (ref_resolve(R, dir, &res) < 0)
		return;
	/* every name any contributing layer has */
	for (int i = 0; i < res.n; i++) {
		char path[PATH_MAX];
		lpath(path, R, res.layers[i], dir, NULL);
		DIR *d = opendir(path);
		struct dirent *de;
		while (d && (de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 ||
			    strcmp(de->d_name, "..") == 0)
				continue;
			if (n == cap) {
				cap = cap ? 2 * cap : 16;
				names = realloc(names, cap * sizeof(*names));
				if (!names)
					abort();
			}
			names[n++] = strdup(de->d_name);
		}
		if (d)
			closedir(d);
	}
	if (n)
		qsort(names, n, sizeof(*names), str_cmp);
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && strcmp(names[i], names[i - 1]) == 0)
			continue;
		char path[PATH_MAX], data[256];
		struct ref_res c;
		snprintf(path, sizeof(path), "%s%s%s", dir, dir[0] ? "/" : "",
			 names[i]);
		if (ref_resolve(R, path, &c) < 0)
			continue;
		ref_data(R, path, &c, data, sizeof(data));
		text_add(out, "%s %c L%d %lld %s\n", path,
			 type_char(c.st.st_mode), c.layer,
			 S_ISDIR(c.st.st_mode) ? 0LL : (long long)c.st.st_size,
			 data);
		if (S_ISDIR(c.st.st_mode))
			ref_tree(R, path, out);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* ---- the core side ------------------------------------------------------ */

struct core_entry {
	char *name;
	uint64_t ino;
	unsigned char type;
};

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct core_entry *)a)->name,
		      ((const struct core_entry *)b)->name);
}

static void core_data(struct lfs_fs *fs, struct lfs_node *node,
		      const struct stat *st, char *out, size_t size)
{
	ssize_t n = 0;

	out[0] = '\0';
	if (S_ISREG(st->st_mode)) {
		int fd = lfs_open(fs, node, O_RDONLY);
		if (fd >= 0) {
			n = read(fd, out, size - 1);
			close(fd);
		}
	} else if (S_ISLNK(st->st_mode)) {
		n = lfs_readlink(fs, node, out, size - 1);
	} else if (S_ISCHR(st->st_mode)) {
		n = snprintf(out, size, "%u:%u", major(st->st_rdev),
			     minor(st->st_rdev));
	}
	out[n > 0 ? n : 0] = '\0';
}

/* Describe the merged tree under node (whose path is dir) into out;
 * anything the listing itself gets wrong goes in as a "!" line, which the
 * reference never writes. */
static void core_tree(struct lfs_fs *fs, struct lfs_node *node,
		      const char *dir, struct text *out)
{
	struct lfs_dir *d;
	struct lfs_dirent de;
	struct core_entry *v = NULL;
	size_t n = 0, cap = 0;
	off_t off = 0;
	struct stat dst;
	int r;

	if ((r = lfs_opendir(fs, node, &d)) < 0 ||
	    (r = lfs_getattr(fs, node, &dst)) < 0) {
		text_add(out, "! %s: opendir/getattr: %s\n", dir, t_errname(-r));
		return;
	}
	while ((r = lfs_readdir_at(d, off, &de)) == 1) {
		if (off == 0 && (strcmp(de.name, ".") != 0 || de.ino != dst.st_ino))
			text_add(out, "! %s: entry 0 is %s ino %llu\n", dir,
				 de.name, (unsigned long long)de.ino);
		if (off == 1 && strcmp(de.name, "..") != 0)
			text_add(out, "! %s: entry 1 is %s\n", dir, de.name);
		if (off >= 2) {
			if (n == cap) {
				cap = cap ? 2 * cap : 16;
				v = realloc(v, cap * sizeof(*v));
				if (!v)
					abort();
			}
			v[n++] = (struct core_entry){ strdup(de.name), de.ino,
						      de.type };
		}
		off = de.next_off;
	}
	if (r < 0)
		text_add(out, "! %s: readdir: %s\n", dir, t_errname(-r));
	lfs_closedir(fs, d);
	if (n)
		qsort(v, n, sizeof(*v), entry_cmp);
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX], data[256];
		struct lfs_node *child;
		struct stat st;

		snprintf(path, sizeof(path), "%s%s%s", dir, dir[0] ? "/" : "",
			 v[i].name);
		if (i > 0 && strcmp(v[i].name, v[i - 1].name) == 0) {
			text_add(out, "! %s: listed twice\n", path);
			continue;
		}
		r = lfs_lookup(fs, node, v[i].name, &child, &st);
		if (r < 0) {
			text_add(out, "! %s: listed, lookup %s\n", path,
				 t_errname(-r));
			continue;
		}
		if (v[i].ino != st.st_ino)
			text_add(out, "! %s: d_ino %llu, st_ino %llu\n", path,
				 (unsigned long long)v[i].ino,
				 (unsigned long long)st.st_ino);
		if (v[i].type != IFTODT(st.st_mode))
			text_add(out, "! %s: d_type %d, mode %o\n", path,
				 v[i].type, st.st_mode);
		core_data(fs, child, &st, data, sizeof(data));
		text_add(out, "%s %c L%u %lld %s\n", path, type_char(st.st_mode),
			 lfs_node_layer(child),
			 S_ISDIR(st.st_mode) ? 0LL : (long long)st.st_size, data);
		if (S_ISDIR(st.st_mode))
			core_tree(fs, child, path, out);
		lfs_node_unref(fs, child, 1);
	}
	/* names that are not listed do not look up either */
	for (size_t p = 0; p < N_POOL; p++) {
		bool listed = false;
		for (size_t i = 0; i < n && !listed; i++)
			listed = strcmp(v[i].name, pool[p]) == 0;
		char wh[16];
		snprintf(wh, sizeof(wh), ".wh.%s", pool[p]);
		const char *names[] = { listed ? NULL : pool[p], wh };
		for (int k = 0; k < 2; k++) {
			struct lfs_node *child;
			struct stat st;
			if (names[k] &&
			    (r = lfs_lookup(fs, node, names[k], &child, &st)) != -ENOENT) {
				text_add(out, "! %s/%s: not listed, lookup %s\n",
					 dir, names[k],
					 r < 0 ? t_errname(-r) : "found");
				if (r == 0)
					lfs_node_unref(fs, child, 1);
			}
		}
	}
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

/* ---- the test ------------------------------------------------------------ */

static void free_text(void *a, void *b)
{
	(void)b;
	free(((struct text *)a)->s);
}

/* The first line where a and b differ, for the failure message. */
static void first_difference(const char *a, const char *b, char *out,
			     size_t size)
{
	const char *la = a, *lb = b;
	int line = 1;

	while (*a && *a == *b) {
		if (*a == '\n') {
			line++;
			la = a + 1;
			lb = b + 1;
		}
		a++;
		b++;
	}
	snprintf(out, size, "line %d: core \"%.*s\", reference \"%.*s\"", line,
		 (int)strcspn(la, "\n"), la, (int)strcspn(lb, "\n"), lb);
}

TEST(differential_against_a_naive_resolver)
{
	char *failures = t_printf(t, "%s", "");
	int n_failed = 0;
	uint64_t first_seed = 1;
	const char *env = getenv("LFS_UNIT_SEED");

	int n_seeds = N_SEEDS;
	if (env) {            /* replay one seed */
		first_seed = strtoull(env, NULL, 0);
		n_seeds = 1;
	}
	if (getenv("LFS_UNIT_SEEDS"))     /* soak: more seeds */
		n_seeds = atoi(getenv("LFS_UNIT_SEEDS"));
	for (uint64_t seed = first_seed; seed < first_seed + (uint64_t)n_seeds;
	     seed++) {
		struct rng r = { seed * 0x1000193ull };
		struct text *spec = t_own(t, calloc(3, sizeof(*spec)));
		struct text *want = spec + 1, *got = spec + 2;
		int n_layers = 2 + pick(&r, MAX_LAYERS - 1);
		char *base = t_printf(t, "%s/seed%llu", t_tmp(t),
				      (unsigned long long)seed);

		for (int i = 0; i < 3; i++)
			t_defer(t, free_text, spec + i, NULL);
		for (int l = 0; l < n_layers; l++) {
			text_add(spec, "L%d d .\n", l);
			gen_dir(&r, spec, l, ".", 0);
		}
		t_build(t, base, spec->s);
		struct ref R = { base, n_layers };
		text_add(want, "%s", "");
		ref_tree(&R, "", want);

		struct lfs_fs *fs = t_open(t, base, n_layers);
		text_add(got, "%s", "");
		core_tree(fs, lfs_fs_root(fs), "", got);

		if (strcmp(got->s, want->s) != 0) {
			char diff[600];
			first_difference(got->s, want->s, diff, sizeof(diff));
			failures = t_printf(t, "%s%s seed %llu (%d layers) %s",
					    failures, n_failed ? ";" : "",
					    (unsigned long long)seed, n_layers,
					    diff);
			n_failed++;
			if (getenv("LFS_UNIT_VERBOSE"))
				fprintf(stderr, "--- spec\n%s--- core\n%s"
						"--- reference\n%s",
					spec->s, got->s, want->s);
		}
	}
	CHECKF(n_failed == 0,
	       "%d of %d seeds differ (replay: LFS_UNIT_SEED=N "
	       "LFS_UNIT_VERBOSE=1 build/unit_tests differential):%s",
	       n_failed, n_seeds, failures);
}
