/*
 * harness.c - runner, per-test resources, the layer-spec builder and the
 * merged-view helpers of the unit tests (see harness.h).
 *
 * Usage: build/unit_tests [SUBSTRING...]  runs the tests whose name
 * contains one of the substrings (all of them without arguments).
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* ---- registry ---------------------------------------------------------- */

struct t_case {
	const char *name;
	t_fn fn;
	const char *file;
	int line;
};

static struct t_case *cases;
static size_t n_cases, cap_cases;

void t_register(const char *name, t_fn fn, const char *file, int line)
{
	if (n_cases == cap_cases) {
		cap_cases = cap_cases ? 2 * cap_cases : 64;
		cases = realloc(cases, cap_cases * sizeof(*cases));
		if (!cases) {
			perror("unit: realloc");
			exit(2);
		}
	}
	cases[n_cases++] = (struct t_case){ name, fn, file, line };
}

/* Source order: by file, then by line. */
static int case_cmp(const void *a, const void *b)
{
	const struct t_case *x = a, *y = b;
	int c = strcmp(x->file, y->file);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* ---- one running test --------------------------------------------------- */

enum t_status { T_PASS, T_FAIL, T_SKIP };

struct t_deferred {
	void (*fn)(void *a, void *b);
	void *a, *b;
};

struct t {
	const char *name;
	char tmp[64];
	jmp_buf jb;
	enum t_status status;
	char msg[1024];
	struct t_deferred *defers;
	size_t n_defers, cap_defers;
	/* the last t_fs_rw*: for t_reopen_* */
	int rw_layers;
	enum lfs_whiteout_format rw_format;
};

const char *t_errname(int err)
{
	static _Thread_local char buf[32];
	static const struct {
		int e;
		const char *name;
	} names[] = {
		{ ENOENT, "ENOENT" },   { ENOTDIR, "ENOTDIR" },
		{ EISDIR, "EISDIR" },   { EINVAL, "EINVAL" },
		{ EROFS, "EROFS" },     { ENODATA, "ENODATA" },
		{ ERANGE, "ERANGE" },   { ENAMETOOLONG, "ENAMETOOLONG" },
		{ ENOMEM, "ENOMEM" },   { EPERM, "EPERM" },
		{ EACCES, "EACCES" },   { ELOOP, "ELOOP" },
		{ EEXIST, "EEXIST" },   { E2BIG, "E2BIG" },
		{ ENOTSUP, "ENOTSUP" }, { EBADF, "EBADF" },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++)
		if (names[i].e == err)
			return names[i].name;
	snprintf(buf, sizeof(buf), "errno %d", err);
	return buf;
}

bool t_contains(const char *haystack, const char *needle)
{
	return haystack && strstr(haystack, needle) != NULL;
}

_Noreturn static void t_end(struct t *t, enum t_status status)
{
	t->status = status;
	longjmp(t->jb, 1);
}

void t_fail_at(struct t *t, const char *file, int line, const char *fmt, ...)
{
	const char *base = strrchr(file, '/');
	int n = snprintf(t->msg, sizeof(t->msg), "%s:%d: ",
			 base ? base + 1 : file, line);
	va_list ap;

	va_start(ap, fmt);
	if (n >= 0 && (size_t)n < sizeof(t->msg))
		vsnprintf(t->msg + n, sizeof(t->msg) - (size_t)n, fmt, ap);
	va_end(ap);
	t_end(t, T_FAIL);
}

void t_skip(struct t *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->msg, sizeof(t->msg), fmt, ap);
	va_end(ap);
	t_end(t, T_SKIP);
}

const char *t_tmp(struct t *t)
{
	return t->tmp;
}

void t_defer(struct t *t, void (*fn)(void *a, void *b), void *a, void *b)
{
	if (t->n_defers == t->cap_defers) {
		size_t cap = t->cap_defers ? 2 * t->cap_defers : 16;
		struct t_deferred *grown =
			realloc(t->defers, cap * sizeof(*grown));
		if (!grown) {
			fn(a, b);
			FAIL("out of memory");
		}
		t->defers = grown;
		t->cap_defers = cap;
	}
	t->defers[t->n_defers++] = (struct t_deferred){ fn, a, b };
}

static void free_a(void *a, void *b)
{
	(void)b;
	free(a);
}

void *t_own(struct t *t, void *p)
{
	if (!p)
		FAIL("out of memory");
	t_defer(t, free_a, p, NULL);
	return p;
}

char *t_printf(struct t *t, const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return t_own(t, n < 0 ? NULL : s);
}

static int rm_one(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *path)
{
	nftw(path, rm_one, 64, FTW_DEPTH | FTW_PHYS);
}

static void rm_rf_deferred(void *a, void *b)
{
	(void)b;
	rm_rf(a);
	free(a);
}

char *t_mkdtemp(struct t *t, const char *under)
{
	char *path = NULL;

	if (asprintf(&path, "%s/lfs-unit-XXXXXX", under) < 0)
		FAIL("out of memory");
	if (!mkdtemp(path)) {
		int e = errno;
		free(path);
		t_skip(t, "cannot make a temporary dir under %s: %s", under,
		       strerror(e));
	}
	t_defer(t, rm_rf_deferred, path, NULL);
	return path;
}

static void run_defers(struct t *t)
{
	while (t->n_defers > 0) {
		struct t_deferred d = t->defers[--t->n_defers];
		d.fn(d.a, d.b);
	}
	free(t->defers);
	t->defers = NULL;
	t->cap_defers = 0;
}

/* The test body; a failed check jumps back here. */
static void run_body(struct t *t, t_fn fn)
{
	if (setjmp(t->jb) == 0)
		fn(t);
}

static enum t_status run_case(const struct t_case *c, char *msg, size_t len)
{
	static struct t t_storage;
	struct t *t = &t_storage;

	memset(t, 0, sizeof(*t));
	t->name = c->name;
	t->status = T_PASS;
	snprintf(t->tmp, sizeof(t->tmp), "/tmp/lfs-unit-XXXXXX");
	if (!mkdtemp(t->tmp)) {
		snprintf(msg, len, "mkdtemp /tmp: %s", strerror(errno));
		return T_FAIL;
	}
	run_body(t, c->fn);
	run_defers(t);
	rm_rf(t->tmp);
	/* one line per test: escape what a message quotes */
	size_t o = 0;
	for (const char *p = t->msg; *p && o + 3 < len; p++) {
		if (*p == '\n' || *p == '\r') {
			msg[o++] = '\\';
			msg[o++] = *p == '\n' ? 'n' : 'r';
		} else {
			msg[o++] = *p;
		}
	}
	msg[o] = '\0';
	return t->status;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	size_t passed = 0, failed = 0, skipped = 0;
	double start = now_s();
	char msg[1024];

	/* Some tests open a thousand layers: take the hard limit. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	qsort(cases, n_cases, sizeof(*cases), case_cmp);
	for (size_t i = 0; i < n_cases; i++) {
		bool wanted = argc < 2;
		for (int a = 1; a < argc && !wanted; a++)
			wanted = strstr(cases[i].name, argv[a]) != NULL;
		if (!wanted)
			continue;
		switch (run_case(&cases[i], msg, sizeof(msg))) {
		case T_PASS:
			printf("PASS %s\n", cases[i].name);
			passed++;
			break;
		case T_FAIL:
			printf("FAIL %s: %s\n", cases[i].name, msg);
			failed++;
			break;
		case T_SKIP:
			printf("SKIP %s: %s\n", cases[i].name, msg);
			skipped++;
			break;
		}
		fflush(stdout);
	}
	fprintf(stderr, "unit: %zu passed, %zu failed, %zu skipped (%.1f s)\n",
		passed, failed, skipped, now_s() - start);
	free(cases);
	return failed ? 1 : 0;
}

/* ---- the layer-spec builder -------------------------------------------- */

struct spec_line {
	int lineno;
	char *tok[8];
	int n;
};

/* Split one line into tokens; quotes and escapes as in harness.h. */
static int spec_tokenize(char *s, struct spec_line *ln)
{
	ln->n = 0;
	for (;;) {
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0' || *s == '#')
			return 0;
		if (ln->n == (int)(sizeof(ln->tok) / sizeof(*ln->tok)))
			return -1;
		if (*s == '"') {
			char *out = ++s;
			ln->tok[ln->n++] = out;
			while (*s && *s != '"') {
				if (*s == '\\' && s[1]) {
					s++;
					*out++ = *s == 'n' ? '\n'
						 : *s == 't' ? '\t' : *s;
					s++;
				} else {
					*out++ = *s++;
				}
			}
			if (*s != '"')
				return -1;
			s++;
			*out = '\0';
			if (*s && *s != ' ' && *s != '\t')
				return -1;
			if (*s)
				s++;
		} else {
			ln->tok[ln->n++] = s;
			while (*s && *s != ' ' && *s != '\t')
				s++;
			if (*s)
				*s++ = '\0';
		}
	}
}

struct builder {
	struct t *t;
	const char *base;
	int lineno;
	const char *line;   /* for messages */
};

_Noreturn static void build_fail(struct builder *b, const char *what,
				 const char *path, int err)
{
	struct t *t = b->t;

	if (err == EPERM || err == ENOTSUP || err == EOPNOTSUPP)
		t_skip(t, "layer spec line %d (%s): %s %s: %s (needs root / "
			  "xattr support)", b->lineno, b->line, what, path,
		       strerror(err));
	FAIL("layer spec line %d (%s): %s %s: %s", b->lineno, b->line, what,
	     path, strerror(err));
}

/* mkdir -p, touching only the missing part of the path. */
static void mkdir_p(struct builder *b, char *path)
{
	struct stat st;

	if (mkdir(path, 0755) == 0)
		return;
	if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return;
	if (errno != ENOENT)
		build_fail(b, "mkdir", path, errno);
	char *slash = strrchr(path, '/');
	if (!slash || slash == path)
		build_fail(b, "mkdir", path, ENOENT);
	*slash = '\0';
	mkdir_p(b, path);
	*slash = '/';
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		build_fail(b, "mkdir", path, errno);
}

/* base/L<layer>/<rel>, its parent made; rel "." is the layer root. */
static char *layer_file(struct builder *b, int layer, const char *rel)
{
	struct t *t = b->t;
	char *path = strcmp(rel, ".") == 0
			     ? t_printf(t, "%s/L%d", b->base, layer)
			     : t_printf(t, "%s/L%d/%s", b->base, layer, rel);
	char *parent = t_printf(t, "%s", path);
	char *slash = strrchr(parent, '/');

	*slash = '\0';
	mkdir_p(b, parent);
	return path;
}

static char *parent_of(struct t *t, const char *path)
{
	char *p = t_printf(t, "%s", path);

	*strrchr(p, '/') = '\0';
	return p;
}

/* dir/.wh.<base> for path dir/<base> */
static char *oci_name(struct t *t, const char *path, const char *prefix)
{
	const char *slash = strrchr(path, '/');

	return t_printf(t, "%.*s/%s%s", (int)(slash - path), path, prefix,
			slash + 1);
}

static void write_file(struct builder *b, const char *path,
		       const char *content)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	size_t len = strlen(content);

	if (fd < 0)
		build_fail(b, "create", path, errno);
	if (write(fd, content, len) != (ssize_t)len) {
		int e = errno;
		close(fd);
		build_fail(b, "write", path, e);
	}
	close(fd);
}

static void set_xattr(struct builder *b, const char *path, const char *name,
		      const char *value)
{
	if (lsetxattr(path, name, value, strlen(value), 0) < 0)
		build_fail(b, name, path, errno);
}

static void spec_apply(struct builder *b, struct spec_line *ln, int layer)
{
	struct t *t = b->t;
	const char *op = ln->tok[1];
	int n = ln->n;
	char *path;

#define WANT(k)                                                            \
	do {                                                               \
		if (n != (k))                                              \
			FAIL("layer spec line %d (%s): %s takes %d words", \
			     b->lineno, b->line, op, (k) - 2);             \
	} while (0)

	if (n < 3)
		FAIL("layer spec line %d (%s): want L<n> OP PATH ...", b->lineno,
		     b->line);
	path = layer_file(b, layer, ln->tok[2]);

	if (strcmp(op, "f") == 0) {
		if (n != 3)
			WANT(4);
		write_file(b, path, n == 4 ? ln->tok[3] : "");
	} else if (strcmp(op, "d") == 0) {
		WANT(3);
		mkdir_p(b, path);
	} else if (strcmp(op, "l") == 0) {
		WANT(5);
		if (strcmp(ln->tok[3], "->") != 0)
			FAIL("layer spec line %d: want l PATH -> TARGET",
			     b->lineno);
		if (symlink(ln->tok[4], path) < 0)
			build_fail(b, "symlink", path, errno);
	} else if (strcmp(op, "h") == 0) {
		WANT(5);
		if (strcmp(ln->tok[3], "=") != 0)
			FAIL("layer spec line %d: want h PATH = EXISTING",
			     b->lineno);
		char *old = t_printf(t, "%s/L%d/%s", b->base, layer, ln->tok[4]);
		if (link(old, path) < 0)
			build_fail(b, "link", path, errno);
	} else if (strcmp(op, "c") == 0 || strcmp(op, "wh") == 0) {
		unsigned maj = 0, min = 0;
		if (op[0] == 'c') {
			WANT(5);
			maj = (unsigned)strtoul(ln->tok[3], NULL, 10);
			min = (unsigned)strtoul(ln->tok[4], NULL, 10);
		} else {
			WANT(3);
		}
		if (mknod(path, S_IFCHR | 0644, makedev(maj, min)) < 0)
			build_fail(b, "mknod", path, errno);
	} else if (strcmp(op, "p") == 0) {
		WANT(3);
		if (mkfifo(path, 0644) < 0)
			build_fail(b, "mkfifo", path, errno);
	} else if (strcmp(op, "ociwh") == 0) {
		WANT(3);
		write_file(b, oci_name(t, path, ".wh."), "");
	} else if (strcmp(op, "xwh") == 0 || strcmp(op, "uxwh") == 0) {
		const char *ns = op[0] == 'u' ? "user" : "trusted";
		WANT(3);
		write_file(b, path, "");
		set_xattr(b, path, t_printf(t, "%s.overlay.whiteout", ns), "");
		set_xattr(b, parent_of(t, path),
			  t_printf(t, "%s.overlay.opaque", ns), "x");
	} else if (strcmp(op, "opq") == 0 || strcmp(op, "uopq") == 0) {
		WANT(3);
		mkdir_p(b, path);
		set_xattr(b, path,
			  op[0] == 'u' ? "user.overlay.opaque"
				       : "trusted.overlay.opaque", "y");
	} else if (strcmp(op, "ociopq") == 0) {
		WANT(3);
		mkdir_p(b, path);
		write_file(b, t_printf(t, "%s/.wh..wh..opq", path), "");
	} else if (strcmp(op, "x") == 0) {
		WANT(4);
		char *eq = strchr(ln->tok[3], '=');
		if (!eq)
			FAIL("layer spec line %d: want x PATH NAME=VALUE",
			     b->lineno);
		*eq = '\0';
		struct stat st;
		if (lstat(path, &st) < 0)
			FAIL("layer spec line %d (%s): x needs an existing PATH "
			     "(make it with f or d first)", b->lineno, b->line);
		set_xattr(b, path, ln->tok[3], eq + 1);
	} else {
		FAIL("layer spec line %d (%s): unknown op %s", b->lineno,
		     b->line, op);
	}
#undef WANT
}

int t_build(struct t *t, const char *base, const char *spec)
{
	struct builder b = { .t = t, .base = base };
	char *copy = t_printf(t, "%s", spec);
	int n_layers = 0;
	char *save = NULL;

	for (char *line = strtok_r(copy, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		struct spec_line ln;
		int layer;
		char *end;

		b.lineno++;
		b.line = t_printf(t, "%s", line);
		if (spec_tokenize(line, &ln) < 0)
			FAIL("layer spec line %d (%s): bad quoting or too many "
			     "words", b.lineno, b.line);
		if (ln.n == 0)
			continue;
		if (ln.tok[0][0] != 'L' ||
		    (layer = (int)strtol(ln.tok[0] + 1, &end, 10)) < 0 ||
		    *end != '\0' || end == ln.tok[0] + 1)
			FAIL("layer spec line %d (%s): want L<n> first",
			     b.lineno, b.line);
		/* Every layer up to this one exists, even if empty. */
		for (int i = n_layers; i <= layer; i++) {
			char *dir = t_printf(t, "%s/L%d", base, i);
			mkdir_p(&b, dir);
		}
		if (layer + 1 > n_layers)
			n_layers = layer + 1;
		spec_apply(&b, &ln, layer);
	}
	return n_layers;
}

char *t_layer_path(struct t *t, const char *base, int i)
{
	return t_printf(t, "%s/L%d", base, i);
}

static void fs_free_deferred(void *a, void *b)
{
	(void)b;
	lfs_fs_free(a);
}

struct lfs_fs *t_open_paths(struct t *t, char *const *paths, size_t n)
{
	struct lfs_fs_config config = { .read_only = true,
					.max_data_fds = 64 };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack;
	struct lfs_fs *fs;
	int r = lfs_stack_open(&stack, paths, n, err);

	if (r < 0)
		FAIL("lfs_stack_open: %s (%s)", t_errname(-r), err);
	r = lfs_fs_new(&fs, stack, &config, (char[LFS_ERRLEN]){ 0 });
	if (r < 0) {
		lfs_stack_free(stack);
		FAIL("lfs_fs_new: %s", t_errname(-r));
	}
	t_defer(t, fs_free_deferred, fs, NULL);
	return fs;
}

struct lfs_fs *t_open(struct t *t, const char *base, int n_layers)
{
	char **paths = t_own(t, calloc((size_t)n_layers, sizeof(*paths)));

	for (int i = 0; i < n_layers; i++) {
		paths[i] = t_layer_path(t, base, i);
		struct stat st;
		if (stat(paths[i], &st) < 0 && mkdir(paths[i], 0755) < 0)
			FAIL("mkdir %s: %s", paths[i], strerror(errno));
	}
	return t_open_paths(t, paths, (size_t)n_layers);
}

struct lfs_fs *t_fs_n(struct t *t, int n_layers, const char *spec)
{
	int n = t_build(t, t_tmp(t), spec);

	if (n > n_layers)
		FAIL("spec names %d layers, more than %d", n, n_layers);
	return t_open(t, t_tmp(t), n_layers);
}

struct lfs_fs *t_fs(struct t *t, const char *spec)
{
	int n = t_build(t, t_tmp(t), spec);

	if (n == 0)
		FAIL("empty layer spec");
	return t_open(t, t_tmp(t), n);
}

/* ---- the merged view --------------------------------------------------- */

int t_walk(struct lfs_fs *fs, const char *path, struct lfs_node **ret,
	   struct stat *ret_st)
{
	struct lfs_node *node = lfs_fs_root(fs);
	struct stat st;
	char name[NAME_MAX * 2 + 2];
	int r = lfs_getattr(fs, node, &st);

	if (r < 0)
		return r;
	while (*path == '/')
		path++;
	if (strcmp(path, ".") == 0)
		path = "";
	while (*path) {
		const char *slash = strchr(path, '/');
		size_t len = slash ? (size_t)(slash - path) : strlen(path);
		struct lfs_node *child;

		if (len >= sizeof(name)) {
			lfs_node_unref(fs, node, 1);
			return -ENAMETOOLONG;
		}
		memcpy(name, path, len);
		name[len] = '\0';
		r = lfs_lookup(fs, node, name, &child, &st);
		lfs_node_unref(fs, node, 1);   /* no-op for the root */
		if (r < 0)
			return r;
		node = child;
		path += len;
		while (*path == '/')
			path++;
	}
	if (ret_st)
		*ret_st = st;
	if (ret)
		*ret = node;
	else
		lfs_node_unref(fs, node, 1);
	return 0;
}

int t_lookup(struct lfs_fs *fs, const char *path)
{
	return t_walk(fs, path, NULL, NULL);
}

static void unref_deferred(void *a, void *b)
{
	lfs_node_unref(a, b, 1);
}

struct lfs_node *t_node(struct t *t, struct lfs_fs *fs, const char *path)
{
	struct lfs_node *node;
	int r = t_walk(fs, path, &node, NULL);

	if (r < 0)
		FAIL("lookup %s: %s", path, t_errname(-r));
	t_defer(t, unref_deferred, fs, node);
	return node;
}

struct stat t_stat(struct t *t, struct lfs_fs *fs, const char *path)
{
	struct stat st;
	int r = t_walk(fs, path, NULL, &st);

	if (r < 0)
		FAIL("lookup %s: %s", path, t_errname(-r));
	return st;
}

uint32_t t_layer(struct t *t, struct lfs_fs *fs, const char *path)
{
	return lfs_node_layer(t_node(t, fs, path));
}

static void close_deferred(void *a, void *b)
{
	(void)b;
	close((int)(intptr_t)a);
}

char *t_cat(struct t *t, struct lfs_fs *fs, const char *path)
{
	struct lfs_node *node = t_node(t, fs, path);
	int fd = lfs_open(fs, node, O_RDONLY);
	char *buf;
	size_t len = 0, cap = 256;
	ssize_t n;

	if (fd < 0)
		FAIL("lfs_open %s: %s", path, t_errname(-fd));
	t_defer(t, close_deferred, (void *)(intptr_t)fd, NULL);
	buf = t_own(t, malloc(cap));
	while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
		len += (size_t)n;
		if (len + 1 == cap) {
			char *big = t_own(t, malloc(cap * 2));
			memcpy(big, buf, len);
			buf = big;
			cap *= 2;
		}
	}
	if (n < 0)
		FAIL("read %s: %s", path, strerror(errno));
	buf[len] = '\0';
	return buf;
}

char *t_readlink(struct t *t, struct lfs_fs *fs, const char *path)
{
	char *buf = t_own(t, malloc(PATH_MAX + 1));
	int r = lfs_readlink(fs, t_node(t, fs, path), buf, PATH_MAX);

	if (r < 0)
		FAIL("lfs_readlink %s: %s", path, t_errname(-r));
	buf[r] = '\0';
	return buf;
}

static void closedir_deferred(void *a, void *b)
{
	lfs_closedir(a, b);
}

size_t t_readdir(struct t *t, struct lfs_fs *fs, const char *path,
		 struct t_dirent **ret)
{
	struct lfs_node *node = t_node(t, fs, path);
	struct lfs_dir *dir;
	struct t_dirent *v = NULL;
	size_t n = 0, cap = 0;
	struct lfs_dirent de;
	off_t off = 0;
	int r;

	r = lfs_opendir(fs, node, &dir);
	if (r < 0)
		FAIL("lfs_opendir %s: %s", path, t_errname(-r));
	t_defer(t, closedir_deferred, fs, dir);
	while ((r = lfs_readdir_at(dir, off, &de)) == 1) {
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			struct t_dirent *grown = t_own(t, malloc(cap * sizeof(*v)));
			if (n)
				memcpy(grown, v, n * sizeof(*v));
			v = grown;
		}
		v[n].name = t_printf(t, "%s", de.name);
		v[n].ino = de.ino;
		v[n].type = de.type;
		v[n].next_off = de.next_off;
		n++;
		if (de.next_off <= off)
			FAIL("readdir %s: next_off %lld after offset %lld", path,
			     (long long)de.next_off, (long long)off);
		off = de.next_off;
		if (n > 1000000)
			FAIL("readdir %s: endless listing", path);
	}
	if (r < 0)
		FAIL("lfs_readdir_at %s @%lld: %s", path, (long long)off,
		     t_errname(-r));
	*ret = v;
	return n;
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

char *t_ls(struct t *t, struct lfs_fs *fs, const char *path)
{
	struct t_dirent *v;
	size_t n = t_readdir(t, fs, path, &v);
	char **names;
	size_t len = 1;

	if (n < 2 || strcmp(v[0].name, ".") != 0 || strcmp(v[1].name, "..") != 0)
		FAIL("listing of %s does not start with \".\", \"..\"", path);
	names = t_own(t, calloc(n, sizeof(*names)));
	for (size_t i = 2; i < n; i++) {
		names[i - 2] = v[i].name;
		len += strlen(v[i].name) + 1;
	}
	qsort(names, n - 2, sizeof(*names), str_cmp);
	char *out = t_own(t, malloc(len));
	out[0] = '\0';
	for (size_t i = 0; i < n - 2; i++) {
		if (i > 0 && strcmp(names[i - 1], names[i]) == 0)
			FAIL("listing of %s shows \"%s\" twice", path, names[i]);
		if (i > 0)
			strcat(out, " ");
		strcat(out, names[i]);
	}
	return out;
}

/* ---- writable stacks ------------------------------------------------------ */

struct lfs_fs *t_open_rw(struct t *t, const char *base, int n_layers,
			 const char *workdir, enum lfs_whiteout_format format)
{
	struct lfs_fs_config config = { .read_only = false,
					.workdir = workdir,
					.whiteout = format,
					.no_fsync = true,
					.max_data_fds = 64 };
	char **paths = t_own(t, calloc((size_t)n_layers, sizeof(*paths)));
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack;
	struct lfs_fs *fs;
	struct stat st;
	int r;

	for (int i = 0; i < n_layers; i++) {
		paths[i] = t_layer_path(t, base, i);
		if (stat(paths[i], &st) < 0 && mkdir(paths[i], 0755) < 0)
			FAIL("mkdir %s: %s", paths[i], strerror(errno));
	}
	if (stat(workdir, &st) < 0 && mkdir(workdir, 0755) < 0)
		FAIL("mkdir %s: %s", workdir, strerror(errno));
	r = lfs_stack_open(&stack, paths, (size_t)n_layers, err);
	if (r < 0)
		FAIL("lfs_stack_open: %s (%s)", t_errname(-r), err);
	r = lfs_fs_new(&fs, stack, &config, err);
	if (r < 0) {
		lfs_stack_free(stack);
		if (r == -EPERM && format == LFS_WHITEOUT_CHARDEV)
			t_skip(t, "lfs_fs_new: %s (char device whiteouts need "
				  "mknod)", err);
		FAIL("lfs_fs_new (writable): %s (%s)", t_errname(-r), err);
	}
	t_defer(t, fs_free_deferred, fs, NULL);
	return fs;
}

struct lfs_fs *t_fs_rw_fmt(struct t *t, enum lfs_whiteout_format format,
			   const char *spec)
{
	int n = t_build(t, t_tmp(t), spec);
	struct stat st;

	/* Layers the test built before count too. */
	while (stat(t_layer_path(t, t_tmp(t), n), &st) == 0)
		n++;
	if (n == 0)
		FAIL("empty layer spec");
	t->rw_layers = n;
	t->rw_format = format;
	return t_open_rw(t, t_tmp(t), n, t_workdir(t), format);
}

struct lfs_fs *t_fs_rw(struct t *t, const char *spec)
{
	return t_fs_rw_fmt(t, LFS_WHITEOUT_CHARDEV, spec);
}

struct lfs_fs *t_fs_rw_n(struct t *t, int n_layers, const char *spec)
{
	int n = t_build(t, t_tmp(t), spec);

	if (n > n_layers)
		FAIL("spec names %d layers, more than %d", n, n_layers);
	t->rw_layers = n_layers;
	t->rw_format = LFS_WHITEOUT_CHARDEV;
	return t_open_rw(t, t_tmp(t), n_layers, t_workdir(t),
			 LFS_WHITEOUT_CHARDEV);
}

struct lfs_fs *t_reopen_ro(struct t *t)
{
	if (t->rw_layers == 0)
		FAIL("t_reopen_ro: no t_fs_rw before");
	return t_open(t, t_tmp(t), t->rw_layers);
}

struct lfs_fs *t_reopen_rw(struct t *t)
{
	if (t->rw_layers == 0)
		FAIL("t_reopen_rw: no t_fs_rw before");
	return t_open_rw(t, t_tmp(t), t->rw_layers, t_workdir(t),
			 t->rw_format);
}

char *t_lower(struct t *t, int layer, const char *rel)
{
	if (!rel || rel[0] == '\0' || strcmp(rel, ".") == 0)
		return t_printf(t, "%s/L%d", t_tmp(t), layer);
	return t_printf(t, "%s/L%d/%s", t_tmp(t), layer, rel);
}

char *t_upper(struct t *t, const char *rel)
{
	return t_lower(t, 0, rel);
}

const char *t_workdir(struct t *t)
{
	return t_printf(t, "%s/W", t_tmp(t));
}

char *t_work_subdir(struct t *t)
{
	return t_printf(t, "%s/W/work", t_tmp(t));
}

/* ---- the layers on disk ------------------------------------------------ */

struct stat t_lstat(struct t *t, const char *path)
{
	struct stat st;

	if (lstat(path, &st) < 0)
		FAIL("lstat %s: %s", path, strerror(errno));
	return st;
}

bool t_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

bool t_is_chardev_whiteout(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0 && S_ISCHR(st.st_mode) &&
	       st.st_rdev == makedev(0, 0);
}

static int str_cmp(const void *a, const void *b);

/* Join n strings with sep (owned by the test). */
static char *join(struct t *t, char **v, size_t n, const char *sep)
{
	size_t len = 1;

	for (size_t i = 0; i < n; i++)
		len += strlen(v[i]) + strlen(sep);
	char *out = t_own(t, malloc(len));
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			strcat(out, sep);
		strcat(out, v[i]);
	}
	return out;
}

/* A growing array of strings owned by the test. */
struct strv {
	char **v;
	size_t n, cap;
};

static void strv_add(struct t *t, struct strv *sv, char *s)
{
	if (sv->n == sv->cap) {
		size_t cap = sv->cap ? 2 * sv->cap : 32;
		char **grown = t_own(t, malloc(cap * sizeof(*grown)));
		if (sv->n)
			memcpy(grown, sv->v, sv->n * sizeof(*grown));
		sv->v = grown;
		sv->cap = cap;
	}
	sv->v[sv->n++] = s;
}

static void strv_names(struct t *t, const char *dir, struct strv *sv)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (!d)
		FAIL("opendir %s: %s", dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		strv_add(t, sv, t_printf(t, "%s", de->d_name));
	}
	closedir(d);
	if (sv->n > 1)
		qsort(sv->v, sv->n, sizeof(*sv->v), str_cmp);
}

char *t_disk_ls(struct t *t, const char *dir)
{
	struct strv sv = { 0 };

	strv_names(t, dir, &sv);
	return join(t, sv.v, sv.n, " ");
}

char *t_disk_cat(struct t *t, const char *path)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		FAIL("open %s: %s", path, strerror(errno));
	t_defer(t, close_deferred, (void *)(intptr_t)fd, NULL);
	return t_pread_all(t, fd);
}

char *t_disk_xattr(struct t *t, const char *path, const char *name)
{
	ssize_t len = lgetxattr(path, name, NULL, 0);

	if (len < 0) {
		if (errno == ENODATA)
			return NULL;
		FAIL("lgetxattr %s %s: %s", path, name, strerror(errno));
	}
	char *v = t_own(t, calloc(1, (size_t)len + 1));
	len = lgetxattr(path, name, v, (size_t)len);
	if (len < 0)
		FAIL("lgetxattr %s %s: %s", path, name, strerror(errno));
	v[len] = '\0';
	return v;
}

/* Printable form of bytes: \xNN for what is not. */
static char *escaped(struct t *t, const char *s, size_t len)
{
	char *out = t_own(t, malloc(4 * len + 1));
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			out[o++] = (char)c;
		else
			o += (size_t)sprintf(out + o, "\\x%02x", c);
	}
	out[o] = '\0';
	return out;
}

static char *disk_xattrs(struct t *t, const char *path)
{
	ssize_t len = llistxattr(path, NULL, 0);
	struct strv sv = { 0 };

	if (len <= 0)
		return "";
	char *names = t_own(t, malloc((size_t)len));
	len = llistxattr(path, names, (size_t)len);
	if (len < 0)
		FAIL("llistxattr %s: %s", path, strerror(errno));
	for (char *n = names; n < names + len; n += strlen(n) + 1) {
		ssize_t vlen = lgetxattr(path, n, NULL, 0);
		if (vlen < 0)
			FAIL("lgetxattr %s %s: %s", path, n, strerror(errno));
		char *v = t_own(t, malloc((size_t)vlen + 1));
		vlen = lgetxattr(path, n, v, (size_t)vlen);
		if (vlen < 0)
			FAIL("lgetxattr %s %s: %s", path, n, strerror(errno));
		strv_add(t, &sv, t_printf(t, "%s=%s", n,
					  escaped(t, v, (size_t)vlen)));
	}
	if (sv.n > 1)
		qsort(sv.v, sv.n, sizeof(*sv.v), str_cmp);
	return join(t, sv.v, sv.n, ",");
}

static void disk_tree_add(struct t *t, const char *root, const char *rel,
			  struct strv *out)
{
	char *path = rel[0] ? t_printf(t, "%s/%s", root, rel)
			    : t_printf(t, "%s", root);
	struct stat st = t_lstat(t, path);
	char *what = "";

	if (S_ISREG(st.st_mode)) {
		char *data = t_disk_cat(t, path);
		what = t_printf(t, "data=%s", escaped(t, data, strlen(data)));
	} else if (S_ISLNK(st.st_mode)) {
		char buf[PATH_MAX + 1];
		ssize_t n = readlink(path, buf, PATH_MAX);
		if (n < 0)
			FAIL("readlink %s: %s", path, strerror(errno));
		what = t_printf(t, "target=%s", escaped(t, buf, (size_t)n));
	}
	strv_add(t, out, t_printf(t,
		"%s mode=%o uid=%u gid=%u size=%lld nlink=%lu rdev=%u:%u "
		"mtime=%lld.%09ld ctime=%lld.%09ld ino=%llu xattrs={%s} %s",
		rel[0] ? rel : ".", (unsigned)st.st_mode, (unsigned)st.st_uid,
		(unsigned)st.st_gid, (long long)st.st_size,
		(unsigned long)st.st_nlink, major(st.st_rdev),
		minor(st.st_rdev), (long long)st.st_mtim.tv_sec,
		st.st_mtim.tv_nsec, (long long)st.st_ctim.tv_sec,
		st.st_ctim.tv_nsec, (unsigned long long)st.st_ino,
		disk_xattrs(t, path), what));
	if (S_ISDIR(st.st_mode)) {
		struct strv names = { 0 };
		strv_names(t, path, &names);
		for (size_t i = 0; i < names.n; i++)
			disk_tree_add(t, root,
				      rel[0] ? t_printf(t, "%s/%s", rel,
							names.v[i])
					     : names.v[i],
				      out);
	}
}

char *t_disk_tree(struct t *t, const char *dir)
{
	struct strv out = { 0 };

	disk_tree_add(t, dir, "", &out);
	return join(t, out.v, out.n, "\n");
}

char *t_work_ls(struct t *t)
{
	return t_disk_ls(t, t_work_subdir(t));
}

/* ---- the merged view, whole ----------------------------------------------- */

static void tree_add(struct t *t, struct lfs_fs *fs, const char *rel,
		     struct strv *out)
{
	struct lfs_node *node;
	struct stat st;
	char *what = "";
	int r = t_walk(fs, rel, &node, &st);

	if (r < 0)
		FAIL("tree: lookup %s: %s", rel, t_errname(-r));
	t_keep_node(t, fs, node);
	if (S_ISREG(st.st_mode)) {
		char *data = t_cat(t, fs, rel);
		what = t_printf(t, "data=%s", escaped(t, data, strlen(data)));
	} else if (S_ISLNK(st.st_mode)) {
		char *target = t_readlink(t, fs, rel);
		what = t_printf(t, "target=%s",
				escaped(t, target, strlen(target)));
	}
	strv_add(t, out, t_printf(t,
		"%s mode=%o uid=%u gid=%u size=%lld rdev=%u:%u %s",
		rel[0] ? rel : ".", (unsigned)st.st_mode, (unsigned)st.st_uid,
		(unsigned)st.st_gid,
		S_ISDIR(st.st_mode) ? 0LL : (long long)st.st_size,
		major(st.st_rdev), minor(st.st_rdev), what));
	if (S_ISDIR(st.st_mode)) {
		struct t_dirent *v;
		size_t n = t_readdir(t, fs, rel, &v);
		for (size_t i = 0; i < n; i++) {
			if (strcmp(v[i].name, ".") == 0 ||
			    strcmp(v[i].name, "..") == 0)
				continue;
			tree_add(t, fs,
				 rel[0] ? t_printf(t, "%s/%s", rel, v[i].name)
					: v[i].name,
				 out);
		}
	}
}

char *t_tree(struct t *t, struct lfs_fs *fs)
{
	struct strv out = { 0 };

	tree_add(t, fs, "", &out);
	if (out.n > 1)
		qsort(out.v, out.n, sizeof(*out.v), str_cmp);
	return join(t, out.v, out.n, "\n");
}

/* ---- handles ------------------------------------------------------------- */

int t_keep_fd_at(struct t *t, const char *file, int line, int fd,
		 const char *what)
{
	if (fd < 0)
		t_fail_at(t, file, line, "%s failed: %s", what,
			  t_errname(-fd));
	t_defer(t, close_deferred, (void *)(intptr_t)fd, NULL);
	return fd;
}

struct lfs_node *t_keep_node(struct t *t, struct lfs_fs *fs,
			     struct lfs_node *node)
{
	t_defer(t, unref_deferred, fs, node);
	return node;
}

char *t_pread_all(struct t *t, int fd)
{
	size_t len = 0, cap = 256;
	char *buf = malloc(cap);
	ssize_t n;

	if (!buf)
		FAIL("out of memory");
	while ((n = pread(fd, buf + len, cap - len - 1, (off_t)len)) > 0) {
		len += (size_t)n;
		if (len + 1 == cap) {
			char *big = realloc(buf, cap * 2);
			if (!big) {
				free(buf);
				FAIL("out of memory");
			}
			buf = big;
			cap *= 2;
		}
	}
	if (n < 0) {
		int e = errno;
		free(buf);
		FAIL("pread fd %d: %s", fd, strerror(e));
	}
	buf[len] = '\0';
	return t_own(t, buf);
}

void t_pwrite_str(struct t *t, int fd, const char *s)
{
	size_t len = strlen(s), done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, s + done, len - done, (off_t)done);
		if (n < 0)
			FAIL("pwrite fd %d: %s", fd, strerror(errno));
		done += (size_t)n;
	}
}
