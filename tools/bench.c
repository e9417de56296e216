/*
 * bench.c - `layerctl bench`: layerfs against kernel overlayfs and
 * fuse-overlayfs on the same layer stacks, with the layerfs counters that
 * explain each figure (README.md, "layerctl bench").
 *
 * In order: every argument is checked before anything is touched; DIR is
 * locked and whatever an interrupted run left mounted under DIR/mnt is
 * unmounted; missing layers are generated (DIR/layers/<hex>, shared by
 * every height of one shape: layer i depends only on the shape and the
 * layers below it); the union core resolves each stack's merged tree
 * without a mount, which picks the workload paths, gives the answers every
 * system must return and, as a mount would, records the layers' index
 * caches; then per stack, workload and system (taking turns going first):
 * drop caches, mount, one cold pass, the warm passes, unmount.  The figures
 * come out as a table or JSON, and as an SVG plot of lookup time against
 * layer count.
 *
 * Every mount is taken down on every path out, SIGINT and SIGTERM
 * included: signals only set a flag that the loops test.  layerctl makes
 * itself a child subreaper, so a FUSE daemon that forks into the
 * background becomes its child, and waits for exactly that process after
 * unmounting (ending it by pid if it does not exit).
 *
 * Not here: the full suite with its targets and the big-file read
 * (benchmarks/run), the write path (benchmarks/writebench.py).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>     /* frexp, which libc has: the tools do not link libm */
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "layerctl.h"
#include "layerfs.h"

#define GEN_VERSION 2          /* bump when generated layers change shape */
#define MAX_LAYERS 2000
#define MOUNT_TIMEOUT_S 60
#define DAEMON_EXIT_S 10
#define SMALL_FILE_MAX (64 * 1024)

static const char *const USAGE =
	"usage: layerctl bench [--layers N[,N...]] [--base-files N] [--files N]\n"
	"        [--depth N] [--override R] [--whiteout R] [--opaque R]\n"
	"        [--seed N] | [--lowerdir L1:L2:...] | [--image IMAGE]\n"
	"        [--systems layerfs,kernel,fuse-overlayfs] [--paths N]\n"
	"        [--reps N] [--warm N] [--no-cold] [--no-index-cache]\n"
	"        [--dir DIR] [--json] [--plot FILE.svg]\n"
	"\n"
	"Generates (or takes) a layer stack, mounts it with layerfs, kernel\n"
	"overlayfs and fuse-overlayfs, times lookup-heavy workloads cold and warm,\n"
	"and prints each figure, its ratio to layerfs's (peer time / layerfs time:\n"
	"above 1.00x layerfs is faster) and the layerfs counters behind it.\n"
	"\n"
	"  --layers N,N     stack heights to generate (default 1,16,64)\n"
	"  --base-files N   files in the bottom layer (default 2000)\n"
	"  --files N        entries in each layer above it (default 20)\n"
	"  --depth N        directory nesting below the top level (default 4)\n"
	"  --override R     share of a layer's entries replacing a file below (0.3)\n"
	"  --whiteout R     share that are whiteouts of a file below; a layer also\n"
	"                   whites out a whole directory with chance R/2 (0.1)\n"
	"  --opaque R       chance that a layer makes a directory opaque (0.1)\n"
	"  --seed N         generator seed (default 1)\n"
	"  --lowerdir DIRS  measure these layer directories (top-most first)\n"
	"  --image IMAGE    measure an image of the store (--store)\n"
	"  --systems LIST   systems to measure (default all found)\n"
	"  --paths N        paths per lookup and read list (default 500)\n"
	"  --reps N         fresh mounts per workload and system (default 3)\n"
	"  --warm N         warm passes per mount (default 3)\n"
	"  --no-cold        skip cold figures (always skipped when not root)\n"
	"  --no-index-cache measure layerfs without its layer index cache\n"
	"  --dir DIR        stacks, mount points, caches (default\n"
	"                   /var/tmp/layerfs-bench-ctl)\n"
	"  --json           print JSON instead of the table\n"
	"  --plot FILE.svg  plot lookup time against layer count\n";

/* Set by SIGINT, SIGTERM and SIGHUP; every loop tests it, and the run
 * unmounts and stops.  A second signal ends the process at once. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	if (interrupted) {
		signal(sig, SIG_DFL);
		raise(sig);
	}
	interrupted = 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* small containers                                                    */

/* A growable array of owned strings. */
struct strv {
	char **v;
	size_t n, cap;
};

/* Takes ownership of s (NULL: out of memory); -ENOMEM frees it. */
static int strv_push(struct strv *sv, char *s)
{
	if (!s)
		return -ENOMEM;
	if (sv->n == sv->cap) {
		size_t cap = sv->cap ? sv->cap * 2 : 64;
		char **v = realloc(sv->v, cap * sizeof(*v));
		if (!v) {
			free(s);
			return -ENOMEM;
		}
		sv->v = v;
		sv->cap = cap;
	}
	sv->v[sv->n++] = s;
	return 0;
}

static void strv_free(struct strv *sv)
{
	for (size_t i = 0; i < sv->n; i++)
		free(sv->v[i]);
	free(sv->v);
	memset(sv, 0, sizeof(*sv));
}

static char *xprintf(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* A deterministic generator (splitmix64), seeded from text. */
struct rng {
	uint64_t s;
};

static void rng_seed(struct rng *r, const char *text)
{
	uint64_t h = 0xcbf29ce484222325u;

	for (const unsigned char *p = (const unsigned char *)text; *p; p++)
		h = (h ^ *p) * 0x100000001b3u;
	r->s = h;
}

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15u);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static size_t rng_below(struct rng *r, size_t n)
{
	return n ? (size_t)(rng_next(r) % n) : 0;
}

static double rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static void shuffle(struct strv *sv, struct rng *r)
{
	for (size_t i = sv->n; i > 1; i--) {
		size_t j = rng_below(r, i);
		char *t = sv->v[i - 1];
		sv->v[i - 1] = sv->v[j];
		sv->v[j] = t;
	}
}

/* Natural logarithm without libm (the tools do not link it): frexp is in
 * libc, and the atanh series converges fast on [0.5, 1). */
static double ln(double x)
{
	int e;
	double m = frexp(x, &e), y = (m - 1) / (m + 1), y2 = y * y, sum = 0;
	double term = y;

	for (int k = 1; k < 60; k += 2) {
		sum += term / k;
		term *= y2;
	}
	return 2 * sum + e * 0.69314718055994530942;
}

/* ------------------------------------------------------------------ */
/* the run's settings                                                  */

enum sys_id { SYS_LAYERFS, SYS_KERNEL, SYS_FUSE, N_SYS };
static const char *const sys_name[N_SYS] = { "layerfs", "kernel",
					     "fuse-overlayfs" };
static const char *const sys_column[N_SYS] = { "layerfs", "kernel",
					       "fuse-ovl" };

enum wl_id { WL_MOUNT, WL_STAT_ALL, WL_STAT_BOTTOM, WL_NEGATIVE, WL_WALK,
	     WL_SMALL, WL_TAR, N_WL };

struct workload {
	const char *key;     /* JSON */
	const char *title;   /* the table, with its unit */
	const char *name;    /* the counters' table */
	const char *unit;    /* JSON */
};

static const struct workload workloads[N_WL] = {
	{ "mount", "mount, to first reply (ms)", "mount", "ms" },
	{ "stat_all", "stat every path (\u00b5s/op)", "stat every path",
	  "us/op" },
	{ "stat_bottom", "stat bottom-layer files (\u00b5s/op)",
	  "stat bottom-layer files", "us/op" },
	{ "negative", "negative lookups (\u00b5s/op)", "negative lookups",
	  "us/op" },
	{ "walk", "readdir walk, whole tree (ms)", "readdir walk", "ms" },
	{ "small_read", "open+read small files (\u00b5s/file)",
	  "open+read small files", "us/file" },
	{ "tar", "tar -cf - . (ms)", "tar -cf - .", "ms" },
};

enum { COLD, WARM, N_STATES };
static const char *const state_name[N_STATES] = { "cold", "warm" };

/* What a generated stack is made of; everything but the height names its
 * layers, so stacks of one shape share them. */
struct shape {
	unsigned base_files;   /* files in the bottom layer */
	unsigned files;        /* entries in each layer above it */
	unsigned depth;        /* directory nesting below the top level */
	double override, whiteout, opaque;
	unsigned seed;
	bool oci;              /* .wh. whiteouts: not root (no mknod, no
				  trusted.* xattrs) */
};

struct options {
	unsigned layers[64];   /* ascending, distinct */
	size_t n_layers;
	bool layers_given, shape_given;
	struct shape shape;
	const char *lowerdir, *image;   /* borrowed from argv */
	bool want[N_SYS];
	unsigned paths, reps, warm;
	bool no_cold, no_index_cache, json;
	const char *dir, *plot;         /* borrowed */
};

/* ------------------------------------------------------------------ */
/* arguments                                                           */

static int bad_arg(char err[ERRLEN], const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int bad_arg(char err[ERRLEN], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, ERRLEN, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static bool parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *ret)
{
	char *end;
	unsigned long v;

	if (!s[0] || s[0] == '-' || s[0] == '+' || s[0] == ' ')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return false;
	*ret = (unsigned)v;
	return true;
}

static bool parse_ratio(const char *s, double *ret)
{
	char *end;
	double v;

	if (!s[0] || s[0] == ' ')
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || !(v >= 0 && v <= 1))
		return false;
	*ret = v;
	return true;
}

static int parse_layers(struct options *o, const char *arg, char err[ERRLEN])
{
	char *copy = strdup(arg), *save = NULL;
	int r = 0;

	if (!copy)
		return -ENOMEM;
	o->n_layers = 0;
	for (char *t = strtok_r(copy, ",", &save); t && r == 0;
	     t = strtok_r(NULL, ",", &save)) {
		unsigned v;
		size_t i;
		if (!parse_uint(t, 1, MAX_LAYERS, &v))
			r = bad_arg(err, "--layers: '%s' is not a layer count "
				    "(1 to %d)", t, MAX_LAYERS);
		else if (o->n_layers == sizeof(o->layers) / sizeof(*o->layers))
			r = bad_arg(err, "--layers: at most %zu heights",
				    sizeof(o->layers) / sizeof(*o->layers));
		for (i = 0; r == 0 && i < o->n_layers && o->layers[i] < v; i++)
			;
		if (r == 0 && (i == o->n_layers || o->layers[i] != v)) {
			memmove(o->layers + i + 1, o->layers + i,
				(o->n_layers - i) * sizeof(*o->layers));
			o->layers[i] = v;
			o->n_layers++;
		}
	}
	if (r == 0 && o->n_layers == 0)
		r = bad_arg(err, "--layers: give one or more layer counts, "
			    "e.g. 1,16,64");
	free(copy);
	return r;
}

static int parse_systems(struct options *o, const char *arg, char err[ERRLEN])
{
	char *copy = strdup(arg), *save = NULL;
	int r = 0, n = 0;

	if (!copy)
		return -ENOMEM;
	memset(o->want, 0, sizeof(o->want));
	for (char *t = strtok_r(copy, ",", &save); t && r == 0;
	     t = strtok_r(NULL, ",", &save)) {
		int k = -1;
		for (int i = 0; i < N_SYS; i++)
			if (!strcmp(t, sys_name[i]))
				k = i;
		if (k < 0)
			r = bad_arg(err, "--systems: unknown system '%s' "
				    "(layerfs, kernel, fuse-overlayfs)", t);
		else
			o->want[k] = true, n++;
	}
	if (r == 0 && n == 0)
		r = bad_arg(err, "--systems: name one or more of layerfs, "
			    "kernel, fuse-overlayfs");
	free(copy);
	return r;
}

/* "--key value" or "--key=value": the value, or NULL with err set. */
static const char *option_value(int argc, char **argv, int *i,
				const char *key, char err[ERRLEN])
{
	const char *a = argv[*i], *eq = strchr(a, '=');

	if (eq)
		return eq + 1;
	if (*i + 1 >= argc) {
		bad_arg(err, "%s needs a value", key);
		return NULL;
	}
	return argv[++*i];
}

static int parse_args(struct options *o, int argc, char **argv,
		      bool *ret_help, char err[ERRLEN])
{
	*o = (struct options){
		.layers = { 1, 16, 64 }, .n_layers = 3,
		.shape = { .base_files = 2000, .files = 20, .depth = 4,
			   .override = 0.3, .whiteout = 0.1, .opaque = 0.1,
			   .seed = 1 },
		.want = { true, true, true },
		.paths = 500, .reps = 3, .warm = 3,
	};
	*ret_help = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		char key[32];
		size_t klen = strcspn(a, "=");

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			*ret_help = true;
			return 0;
		}
		if (strncmp(a, "--", 2) != 0 || klen >= sizeof(key))
			return bad_arg(err, "unexpected argument '%s' (see "
				       "layerctl bench --help)", a);
		memcpy(key, a, klen);
		key[klen] = '\0';
		if (!strcmp(key, "--json") || !strcmp(key, "--no-cold") ||
		    !strcmp(key, "--no-index-cache")) {
			if (a[klen])
				return bad_arg(err, "%s takes no value", key);
			if (!strcmp(key, "--json"))
				o->json = true;
			else if (!strcmp(key, "--no-cold"))
				o->no_cold = true;
			else
				o->no_index_cache = true;
			continue;
		}
		static const char *const valued[] = {
			"--layers", "--base-files", "--files", "--depth",
			"--override", "--whiteout", "--opaque", "--seed",
			"--lowerdir", "--image", "--systems", "--paths",
			"--reps", "--warm", "--dir", "--plot",
		};
		bool known = false;
		for (size_t k = 0; k < sizeof(valued) / sizeof(*valued); k++)
			known |= !strcmp(key, valued[k]);
		if (!known)
			return bad_arg(err, "unknown option %s (see layerctl "
				       "bench --help)", key);
		if (!(v = option_value(argc, argv, &i, key, err)))
			return -EINVAL;
		int r = 0;
		struct shape *sh = &o->shape;
		if (!strcmp(key, "--layers")) {
			o->layers_given = true;
			r = parse_layers(o, v, err);
		} else if (!strcmp(key, "--base-files")) {
			o->shape_given = true;
			if (!parse_uint(v, 1, 1000000, &sh->base_files))
				r = bad_arg(err, "--base-files: '%s' is not a "
					    "count from 1 to 1000000", v);
		} else if (!strcmp(key, "--files")) {
			o->shape_given = true;
			if (!parse_uint(v, 0, 100000, &sh->files))
				r = bad_arg(err, "--files: '%s' is not a count "
					    "from 0 to 100000", v);
		} else if (!strcmp(key, "--depth")) {
			o->shape_given = true;
			if (!parse_uint(v, 1, 32, &sh->depth))
				r = bad_arg(err, "--depth: '%s' is not a depth "
					    "from 1 to 32", v);
		} else if (!strcmp(key, "--override") ||
			   !strcmp(key, "--whiteout") ||
			   !strcmp(key, "--opaque")) {
			double *dst = !strcmp(key, "--override") ? &sh->override
				      : !strcmp(key, "--whiteout") ? &sh->whiteout
				      : &sh->opaque;
			o->shape_given = true;
			if (!parse_ratio(v, dst))
				r = bad_arg(err, "%s: '%s' is not a ratio from "
					    "0 to 1", key, v);
		} else if (!strcmp(key, "--seed")) {
			o->shape_given = true;
			if (!parse_uint(v, 0, UINT_MAX, &sh->seed))
				r = bad_arg(err, "--seed: '%s' is not a number",
					    v);
		} else if (!strcmp(key, "--lowerdir")) {
			if (!v[0])
				r = bad_arg(err, "--lowerdir: empty");
			o->lowerdir = v;
		} else if (!strcmp(key, "--image")) {
			if (!v[0])
				r = bad_arg(err, "--image: empty");
			o->image = v;
		} else if (!strcmp(key, "--systems")) {
			r = parse_systems(o, v, err);
		} else if (!strcmp(key, "--paths")) {
			if (!parse_uint(v, 1, 1000000, &o->paths))
				r = bad_arg(err, "--paths: '%s' is not a count "
					    "from 1 to 1000000", v);
		} else if (!strcmp(key, "--reps")) {
			if (!parse_uint(v, 1, 100, &o->reps))
				r = bad_arg(err, "--reps: '%s' is not a count "
					    "from 1 to 100", v);
		} else if (!strcmp(key, "--warm")) {
			if (!parse_uint(v, 0, 100, &o->warm))
				r = bad_arg(err, "--warm: '%s' is not a count "
					    "from 0 to 100", v);
		} else if (!strcmp(key, "--dir")) {
			if (!v[0])
				r = bad_arg(err, "--dir: empty");
			o->dir = v;
		} else if (!strcmp(key, "--plot")) {
			size_t n = strlen(v);
			if (n < 5 || strcmp(v + n - 4, ".svg") != 0)
				r = bad_arg(err, "--plot: '%s': the plot is SVG; "
					    "name the file *.svg", v);
			o->plot = v;
		}
		if (r < 0)
			return r;
	}
	if (o->lowerdir && o->image)
		return bad_arg(err, "--lowerdir and --image both name the stack "
			       "to measure: give one");
	if ((o->lowerdir || o->image) && (o->layers_given || o->shape_given))
		return bad_arg(err, "--layers and the shape options generate a "
			       "stack; --lowerdir and --image take one: not both");
	if (o->shape.override + o->shape.whiteout > 1)
		return bad_arg(err, "--override and --whiteout add up to more "
			       "than 1");
	if (o->warm == 0 && o->no_cold)
		return bad_arg(err, "--warm 0 with --no-cold leaves nothing "
			       "to measure");
	return 0;
}

/* ------------------------------------------------------------------ */
/* the run                                                             */

/* layerfs counters (README.md, "Counters"), per workload pass. */
enum { CT_REQUESTS, CT_POSITIVE, CT_NEGATIVE, CT_INDEX_ANSWERS,
       CT_INDEX_BUILT, CT_DIRS_READ, CT_DIRS_CACHED, CT_STATS,
       CT_STATS_CACHED, N_CTR };
static const char *const ctr_key[N_CTR] = {
	"requests", "lookups_positive", "lookups_negative", "index_answers",
	"indexes_built", "layer_dirs_read", "layer_dirs_from_cache",
	"object_stats", "stats_from_cache",
};

/* One stack to measure. */
struct stack {
	unsigned n_layers;
	char **layers;          /* owned; absolute layer dirs, top-most first */
	char *key;              /* owned; names dir */
	char *dir;              /* owned; DIR/stacks/<key>: "0".."n-1" link to
				   the layers, top-most first, "e" is empty
				   (kernel overlayfs's mount data is one page,
				   and it wants two layers without an upper) */
	bool generated;
	size_t model_entries;   /* generated: what the generator expects */
	/* From the union core's resolution of the merged tree: */
	size_t entries, dirs, files, bottom_only;
	struct strv all;        /* every merged path, in tree order */
	struct strv bottom;     /* files only the bottom layer has */
	struct strv negative;   /* names in no layer */
	struct strv small;      /* regular files of at most 64 KiB */
	uint64_t small_bytes;   /* what reading all of small returns */
};

/* The figures of one (stack, workload, state, system). */
struct cell {
	double *v;              /* owned; samples */
	size_t n, cap;
	uint64_t bad;           /* answers that contradict the core's */
	unsigned ctr_passes;    /* layerfs: passes summed into ctr */
	uint64_t ctr[N_CTR];
	uint64_t *per_layer;    /* owned; probes per layer, summed */
};

struct bench {
	const struct options *o;
	struct store *store;      /* borrowed */
	char *dir;                /* owned; absolute */
	char *index_dir;          /* owned; NULL: layerfs without it */
	bool root, cold, tty;
	bool active[N_SYS];       /* wanted and available */
	char *program[N_SYS];     /* owned; FUSE programs */
	char *mnt[N_SYS];         /* owned; DIR/mnt/<system> */
	pid_t daemon[N_SYS][8];   /* FUSE daemons of the live mount */
	int n_daemons[N_SYS];
	struct stack *stacks;     /* owned */
	size_t n_stacks;
	struct cell *cells;       /* owned; [stack][workload][state][system] */
	bool *failed;             /* owned; [stack][system]: cannot mount */
	struct strv notes;
	unsigned rotation;
	size_t step, n_steps;
	uint64_t t0;
};

static struct cell *cell_at(struct bench *b, size_t s, int w, int state, int k)
{
	return &b->cells[((s * N_WL + (size_t)w) * N_STATES + (size_t)state) *
			 N_SYS + (size_t)k];
}

static void note(struct bench *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void note(struct bench *b, const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (!s)
		return;
	for (size_t i = 0; i < b->notes.n; i++)
		if (!strcmp(b->notes.v[i], s)) {
			free(s);
			return;
		}
	strv_push(&b->notes, s);
}

/* The progress line: stderr, and only on a terminal. */
static void progress(struct bench *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void progress(struct bench *b, const char *fmt, ...)
{
	va_list ap;

	if (!b->tty)
		return;
	fprintf(stderr, "\r\033[Kbench [%3.0fs] ",
		(double)(now_ns() - b->t0) / 1e9);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fflush(stderr);
}

static void progress_done(struct bench *b)
{
	if (b->tty) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
}

/* ------------------------------------------------------------------ */
/* generation: a model of the merged tree, and each layer's entries    */

/* Every layer carries these, as package layers do, so that a lookup in
 * them has to consult the whole stack. */
static const char *const hot_dirs[] = { "etc", "usr/bin", "usr/lib" };
#define N_HOT (sizeof(hot_dirs) / sizeof(*hot_dirs))
static const char *const top_dirs[] = { "opt", "srv", "usr", "var" };
static const char *const exts[] = { "", ".so", ".conf", ".txt", ".h", ".py" };

/* touched: 1 + the layer that last wrote the entry, 0 for none. */
struct gdir {
	char *path;
	unsigned depth;
	bool hot;
	unsigned touched;
};

struct gfile {
	char *path;
	bool symlink;
	unsigned touched;
};

/* The merged tree as the generator builds it (the root not counted). */
struct model {
	struct gdir *dirs;
	size_t n_dirs, cap_dirs;
	struct gfile *files;
	size_t n_files, cap_files;
};

enum op_kind { OP_DIR, OP_OPAQUE, OP_FILE, OP_SYMLINK, OP_WHITEOUT };

struct op {
	enum op_kind kind;
	char *path;       /* owned; relative to the layer root */
	char *target;     /* owned; a symlink's */
	size_t size;      /* a file's */
};

struct layer_ops {
	struct op *v;
	size_t n, cap;
};

static int ops_add(struct layer_ops *ops, enum op_kind kind, const char *path,
		   const char *target, size_t size)
{
	if (ops->n == ops->cap) {
		size_t cap = ops->cap ? ops->cap * 2 : 64;
		struct op *v = realloc(ops->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		ops->v = v;
		ops->cap = cap;
	}
	struct op *op = &ops->v[ops->n];
	op->kind = kind;
	op->size = size;
	op->path = strdup(path);
	op->target = target ? strdup(target) : NULL;
	if (!op->path || (target && !op->target)) {
		free(op->path);
		free(op->target);
		return -ENOMEM;
	}
	ops->n++;
	return 0;
}

static void ops_free(struct layer_ops *ops)
{
	for (size_t i = 0; i < ops->n; i++) {
		free(ops->v[i].path);
		free(ops->v[i].target);
	}
	free(ops->v);
	memset(ops, 0, sizeof(*ops));
}

/* Takes ownership of path. */
static int model_dir(struct model *m, char *path, unsigned depth, bool hot,
		     unsigned touched)
{
	if (!path)
		return -ENOMEM;
	if (m->n_dirs == m->cap_dirs) {
		size_t cap = m->cap_dirs ? m->cap_dirs * 2 : 64;
		struct gdir *v = realloc(m->dirs, cap * sizeof(*v));
		if (!v) {
			free(path);
			return -ENOMEM;
		}
		m->dirs = v;
		m->cap_dirs = cap;
	}
	m->dirs[m->n_dirs++] = (struct gdir){ path, depth, hot, touched };
	return 0;
}

/* Takes ownership of path. */
static int model_file(struct model *m, char *path, bool symlink,
		      unsigned touched)
{
	if (!path)
		return -ENOMEM;
	if (m->n_files == m->cap_files) {
		size_t cap = m->cap_files ? m->cap_files * 2 : 256;
		struct gfile *v = realloc(m->files, cap * sizeof(*v));
		if (!v) {
			free(path);
			return -ENOMEM;
		}
		m->files = v;
		m->cap_files = cap;
	}
	m->files[m->n_files++] = (struct gfile){ path, symlink, touched };
	return 0;
}

static bool is_under(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* Forget everything below dir (and dir itself if self): an opaque dir, a
 * whiteout of a dir.  Swap-removal: indexes change. */
static void model_remove_under(struct model *m, const char *dir, bool self)
{
	char *keep = strdup(dir);    /* dir may be one of the paths freed */

	if (!keep)
		return;
	for (size_t i = m->n_files; i-- > 0;)
		if (is_under(m->files[i].path, keep)) {
			free(m->files[i].path);
			m->files[i] = m->files[--m->n_files];
		}
	for (size_t i = m->n_dirs; i-- > 0;)
		if (is_under(m->dirs[i].path, keep) ||
		    (self && !strcmp(m->dirs[i].path, keep))) {
			free(m->dirs[i].path);
			m->dirs[i] = m->dirs[--m->n_dirs];
		}
	free(keep);
}

static void model_free(struct model *m)
{
	for (size_t i = 0; i < m->n_dirs; i++)
		free(m->dirs[i].path);
	for (size_t i = 0; i < m->n_files; i++)
		free(m->files[i].path);
	free(m->dirs);
	free(m->files);
	memset(m, 0, sizeof(*m));
}

static size_t file_size(struct rng *r)
{
	size_t s = (size_t)32 << rng_below(r, 10);    /* 32 B .. 32 KiB */

	return s + rng_below(r, s);
}

static const char *dir_prefix(const char *dir)
{
	return dir[0] ? "/" : "";
}

/* The bottom layer: top-level and hot directories, a tree of directories
 * up to the shape's depth, base_files files (5% symlinks), 40% of them in
 * the hot directories. */
static int plan_bottom(struct model *m, const struct shape *sh, struct rng *r,
		       struct layer_ops *ops)
{
	size_t n_tree = sh->base_files / 25 > 3 ? sh->base_files / 25 : 3;
	size_t *parents = calloc(n_tree + 8, sizeof(*parents)), n_parents = 0;
	size_t *plain = calloc(n_tree + 8, sizeof(*plain)), n_plain = 0;
	int rc = parents && plain ? 0 : -ENOMEM;

	for (size_t i = 0; rc == 0 && i < 4; i++) {
		rc = model_dir(m, strdup(top_dirs[i]), 1, false, 1);
		if (sh->depth > 1)
			parents[n_parents++] = m->n_dirs - 1;
		plain[n_plain++] = m->n_dirs - 1;
	}
	for (size_t i = 0; rc == 0 && i < N_HOT; i++)
		rc = model_dir(m, strdup(hot_dirs[i]),
			       strchr(hot_dirs[i], '/') ? 2 : 1, true, 1);
	for (size_t j = 0; rc == 0 && j < n_tree; j++) {
		const struct gdir *p = n_parents
			? &m->dirs[parents[rng_below(r, n_parents)]] : NULL;
		unsigned depth = p ? p->depth + 1 : 1;
		rc = model_dir(m, xprintf("%s%sd%04zu", p ? p->path : "",
					  p ? "/" : "", j), depth, false, 1);
		if (rc == 0 && depth < sh->depth)
			parents[n_parents++] = m->n_dirs - 1;
		plain[n_plain++] = m->n_dirs - 1;
	}
	for (size_t i = 0; rc == 0 && i < m->n_dirs; i++)
		rc = ops_add(ops, OP_DIR, m->dirs[i].path, NULL, 0);
	for (unsigned i = 0; rc == 0 && i < sh->base_files; i++) {
		const char *d = rng_unit(r) < 0.4
			? hot_dirs[rng_below(r, N_HOT)]
			: m->dirs[plain[rng_below(r, n_plain)]].path;
		char *path = xprintf("%s/f%05u%s", d, i,
				     exts[rng_below(r, sizeof(exts) / sizeof(*exts))]);
		bool link = rng_unit(r) < 0.05;
		if (!path) {
			rc = -ENOMEM;
		} else if (link) {
			char target[32];
			snprintf(target, sizeof(target), "f%05zu",
				 rng_below(r, sh->base_files));
			rc = ops_add(ops, OP_SYMLINK, path, target, 0);
		} else {
			rc = ops_add(ops, OP_FILE, path, NULL, file_size(r));
		}
		if (rc == 0)
			rc = model_file(m, path, link, 1);
		else
			free(path);
	}
	free(parents);
	free(plain);
	return rc;
}

/* A random directory an upper layer may make opaque or white out: not a
 * hot or top-level one, not written by this layer; -1 if none. */
static ssize_t pick_tree_dir(const struct model *m, struct rng *r,
			     unsigned touched)
{
	size_t n = 0, k;

	for (size_t i = 0; i < m->n_dirs; i++)
		n += !m->dirs[i].hot && m->dirs[i].depth >= 2 &&
		     m->dirs[i].touched != touched;
	if (n == 0)
		return -1;
	k = rng_below(r, n);
	for (size_t i = 0; i < m->n_dirs; i++)
		if (!m->dirs[i].hot && m->dirs[i].depth >= 2 &&
		    m->dirs[i].touched != touched && k-- == 0)
			return (ssize_t)i;
	return -1;
}

/* A random file not written by this layer (a regular one if regular). */
static ssize_t pick_file(const struct model *m, struct rng *r,
			 unsigned touched, bool regular)
{
	for (int tries = 0; tries < 16 && m->n_files; tries++) {
		size_t i = rng_below(r, m->n_files);
		if (m->files[i].touched != touched &&
		    !(regular && m->files[i].symlink))
			return (ssize_t)i;
	}
	return -1;
}

/* Upper layer i (1 and up): the hot directories; at most one change to a
 * whole directory (made opaque with 1-3 new files with chance opaque, else
 * whited out with chance whiteout/2, as benchmarks/stackgen.py does); then
 * sh->files entries: whiteouts of files below, overrides of files below,
 * and new files (half in the hot directories). */
static int plan_upper(struct model *m, const struct shape *sh, struct rng *r,
		      unsigned i, struct layer_ops *ops)
{
	const unsigned me = i + 1;
	int rc = 0;

	for (size_t h = 0; rc == 0 && h < N_HOT; h++)
		rc = ops_add(ops, OP_DIR, hot_dirs[h], NULL, 0);
	double r_opaque = rng_unit(r), r_dirwh = rng_unit(r);
	ssize_t d = rc == 0 && (r_opaque < sh->opaque || r_dirwh < sh->whiteout / 2)
		    ? pick_tree_dir(m, r, me) : -1;
	if (d >= 0 && r_opaque < sh->opaque) {
		char *dir = strdup(m->dirs[d].path);
		m->dirs[d].touched = me;
		model_remove_under(m, dir, false);
		rc = dir ? ops_add(ops, OP_OPAQUE, dir, NULL, 0) : -ENOMEM;
		for (size_t k = 0, n = 1 + rng_below(r, 3); rc == 0 && k < n; k++) {
			char *path = xprintf("%s/o%04u_%zu.txt", dir, i, k);
			rc = path ? ops_add(ops, OP_FILE, path, NULL,
					    file_size(r)) : -ENOMEM;
			if (rc == 0)
				rc = model_file(m, path, false, me);
			else
				free(path);
		}
		free(dir);
	} else if (d >= 0) {
		char *dir = strdup(m->dirs[d].path);
		rc = dir ? ops_add(ops, OP_WHITEOUT, dir, NULL, 0) : -ENOMEM;
		if (rc == 0)
			model_remove_under(m, dir, true);
		free(dir);
	}
	/* Directories stay as they are from here on. */
	size_t *hot = calloc(N_HOT, sizeof(*hot)), n_hot = 0;
	if (rc == 0 && !hot)
		rc = -ENOMEM;
	for (size_t k = 0; rc == 0 && k < m->n_dirs; k++)
		if (m->dirs[k].hot)
			hot[n_hot++] = k;
	for (unsigned j = 0; rc == 0 && j < sh->files; j++) {
		double x = rng_unit(r);
		ssize_t f;
		if (x < sh->whiteout) {
			if ((f = pick_file(m, r, me, false)) >= 0) {
				rc = ops_add(ops, OP_WHITEOUT, m->files[f].path,
					     NULL, 0);
				free(m->files[f].path);
				m->files[f] = m->files[--m->n_files];
			}
		} else if (x < sh->whiteout + sh->override) {
			if ((f = pick_file(m, r, me, true)) >= 0) {
				rc = ops_add(ops, OP_FILE, m->files[f].path,
					     NULL, file_size(r));
				m->files[f].touched = me;
			}
		} else {
			const struct gdir *g = rng_unit(r) < 0.5 && n_hot
				? &m->dirs[hot[rng_below(r, n_hot)]]
				: &m->dirs[rng_below(r, m->n_dirs)];
			char *path = xprintf("%s/n%04u_%04u%s", g->path, i, j,
					     exts[rng_below(r, sizeof(exts) /
							    sizeof(*exts))]);
			rc = path ? ops_add(ops, OP_FILE, path, NULL,
					    file_size(r)) : -ENOMEM;
			if (rc == 0)
				rc = model_file(m, path, false, me);
			else
				free(path);
		}
	}
	free(hot);
	return rc;
}

static int make_parent(const char *path)
{
	char *copy = strdup(path), *slash;
	int r = 0;

	if (!copy)
		return -ENOMEM;
	slash = strrchr(copy, '/');
	if (slash && slash != copy) {
		*slash = '\0';
		r = make_dirs(copy, 0755);
	}
	free(copy);
	return r;
}

static int write_content(const char *path, const char *tag, size_t size)
{
	char buf[8192];
	size_t tlen = strlen(tag), fill = 0;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		return -errno;
	if (tlen == 0)
		memset(buf, 0, sizeof(buf));
	while (tlen && fill < sizeof(buf)) {
		size_t n = tlen < sizeof(buf) - fill ? tlen : sizeof(buf) - fill;
		memcpy(buf + fill, tag, n);
		fill += n;
	}
	for (size_t done = 0; done < size;) {
		size_t n = size - done < sizeof(buf) ? size - done : sizeof(buf);
		ssize_t w = write(fd, buf, n);
		if (w < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		done += (size_t)w;
	}
	return close(fd) < 0 ? -errno : 0;
}

/* Write one layer's entries under root (kernel overlayfs's formats as
 * root, OCI's otherwise). */
static int write_layer(const char *root, const struct layer_ops *ops,
		       unsigned layer, bool oci, char err[ERRLEN])
{
	for (size_t i = 0; i < ops->n; i++) {
		const struct op *op = &ops->v[i];
		char *path = xprintf("%s/%s", root, op->path), *aux = NULL;
		int r = path ? make_parent(path) : -ENOMEM;

		if (r == 0) {
			switch (op->kind) {
			case OP_DIR:
				r = make_dirs(path, 0755);
				break;
			case OP_OPAQUE:
				r = make_dirs(path, 0755);
				if (r == 0 && oci) {
					aux = xprintf("%s/.wh..wh..opq", path);
					r = aux ? write_content(aux, "", 0) : -ENOMEM;
				} else if (r == 0 &&
					   setxattr(path, "trusted.overlay.opaque",
						    "y", 1, 0) < 0) {
					r = -errno;
				}
				break;
			case OP_FILE:
				aux = xprintf("%u:%s\n", layer, op->path);
				r = aux ? write_content(path, aux, op->size)
					: -ENOMEM;
				break;
			case OP_SYMLINK:
				r = symlink(op->target, path) < 0 ? -errno : 0;
				break;
			case OP_WHITEOUT:
				if (oci) {
					char *slash = strrchr(path, '/');
					*slash = '\0';
					aux = xprintf("%s/.wh.%s", path, slash + 1);
					*slash = '/';
					r = aux ? write_content(aux, "", 0) : -ENOMEM;
				} else if (mknod(path, S_IFCHR | 0600,
						 makedev(0, 0)) < 0) {
					r = -errno;
				}
				break;
			}
		}
		if (r < 0)
			snprintf(err, ERRLEN, "generating %s: %s", path ? path : "",
				 strerror(-r));
		free(path);
		free(aux);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Everything but the height, which names a shape's layers. */
static char *shape_desc(const struct shape *sh)
{
	return xprintf("layerctl-bench g%d b%u f%u d%u o%g w%g q%g s%u %s",
		       GEN_VERSION, sh->base_files, sh->files, sh->depth,
		       sh->override, sh->whiteout, sh->opaque, sh->seed,
		       sh->oci ? "oci" : "chr");
}

/*
 * Make sure layers 0..n-1 (bottom first) of shape exist under
 * DIR/layers/<hex>, hex a sha256 of the shape and the layer's number (a
 * name layerfs takes as a digest: it keys the layer index cache).  A layer
 * is written under a temporary name and renamed into place, so one that
 * exists is complete and is reused.  ret_hex[i] gets layer i's name and
 * ret_entries[i] the number of merged entries the model expects at height
 * i + 1.
 */
static int generate_layers(struct bench *b, const struct shape *sh, unsigned n,
			   char (*ret_hex)[HEXLEN + 1], size_t *ret_entries,
			   char err[ERRLEN])
{
	struct model m = { 0 };
	char *desc = shape_desc(sh);
	unsigned written = 0;
	int rc = desc ? 0 : -ENOMEM;

	for (unsigned i = 0; rc == 0 && i < n; i++) {
		struct layer_ops ops = { 0 };
		struct rng r;
		char *seed = xprintf("%s layer %u", desc, i), *final = NULL,
		     *tmp = NULL;
		struct stat st;

		if (interrupted) {
			free(seed);
			rc = -EINTR;
			break;
		}
		if (!seed) {
			rc = -ENOMEM;
			break;
		}
		rng_seed(&r, seed);
		sha256_hex_of(seed, strlen(seed), ret_hex[i]);
		rc = i == 0 ? plan_bottom(&m, sh, &r, &ops)
			    : plan_upper(&m, sh, &r, i, &ops);
		ret_entries[i] = m.n_dirs + m.n_files;
		final = xprintf("%s/layers/%s", b->dir, ret_hex[i]);
		tmp = xprintf("%s/layers/.tmp-%s", b->dir, ret_hex[i]);
		if (rc == 0 && (!final || !tmp))
			rc = -ENOMEM;
		if (rc == 0 && stat(final, &st) < 0) {
			progress(b, "generating layer %u of %u", i + 1, n);
			remove_tree(tmp);
			if (make_dirs(tmp, 0755) < 0) {
				rc = -errno;
				snprintf(err, ERRLEN, "%s: %s", tmp, strerror(errno));
			} else if ((rc = write_layer(tmp, &ops, i, sh->oci, err)) == 0 &&
				   rename(tmp, final) < 0) {
				rc = -errno;
				snprintf(err, ERRLEN, "rename %s: %s", tmp,
					 strerror(errno));
			}
			if (rc < 0)
				remove_tree(tmp);
			written++;
		}
		if (rc == -ENOMEM)
			snprintf(err, ERRLEN, "out of memory");
		ops_free(&ops);
		free(seed);
		free(final);
		free(tmp);
	}
	if (rc == -EINTR)
		snprintf(err, ERRLEN, "interrupted");
	if (written)
		sync();
	model_free(&m);
	free(desc);
	return rc;
}

/* ------------------------------------------------------------------ */
/* stacks: their directory, and their merged tree from the union core  */

static void stack_free(struct stack *st)
{
	for (unsigned i = 0; st->layers && i < st->n_layers; i++)
		free(st->layers[i]);
	free(st->layers);
	free(st->key);
	free(st->dir);
	strv_free(&st->all);
	strv_free(&st->bottom);
	strv_free(&st->negative);
	strv_free(&st->small);
}

/* DIR/stacks/<key>: short names for the kernel, built beside and renamed
 * into place.  links[i] is what "i" points to (top-most first). */
static int make_stack_dir(struct bench *b, struct stack *st,
			  char *const *links, char err[ERRLEN])
{
	char *tmp = NULL, *p = NULL, *last = NULL;
	struct stat sb;
	int r = 0;

	st->dir = xprintf("%s/stacks/%s", b->dir, st->key);
	last = st->dir ? xprintf("%s/%u", st->dir, st->n_layers - 1) : NULL;
	if (!last) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (lstat(last, &sb) == 0) {
		free(last);
		return 0;
	}
	free(last);
	tmp = xprintf("%s/stacks/.tmp-%s", b->dir, st->key);
	p = tmp ? xprintf("%s/e", tmp) : NULL;
	if (!p) {
		free(tmp);
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	remove_tree(tmp);
	if (make_dirs(p, 0755) < 0)
		r = -errno;
	for (unsigned i = 0; r == 0 && i < st->n_layers; i++) {
		free(p);
		p = xprintf("%s/%u", tmp, i);
		if (!p)
			r = -ENOMEM;
		else if (symlink(links[i], p) < 0)
			r = -errno;
	}
	if (r == 0 && rename(tmp, st->dir) < 0)
		r = -errno;
	if (r < 0) {
		snprintf(err, ERRLEN, "%s: %s", tmp, strerror(-r));
		remove_tree(tmp);
	}
	free(p);
	free(tmp);
	return r;
}

/* The stacks of a generated shape: one per height, sharing layers. */
static int setup_generated(struct bench *b, char err[ERRLEN])
{
	const struct options *o = b->o;
	unsigned n_max = o->layers[o->n_layers - 1];
	char (*hex)[HEXLEN + 1] = calloc(n_max, sizeof(*hex));
	size_t *entries = calloc(n_max, sizeof(*entries));
	struct shape sh = o->shape;
	int r = hex && entries ? 0 : -ENOMEM;

	sh.oci = !b->root;
	if (r == 0)
		r = generate_layers(b, &sh, n_max, hex, entries, err);
	for (size_t s = 0; r == 0 && s < b->n_stacks; s++) {
		struct stack *st = &b->stacks[s];
		unsigned n = o->layers[s];
		char **links = calloc(n, sizeof(*links));

		st->generated = true;
		st->n_layers = n;
		st->model_entries = entries[n - 1];
		st->layers = calloc(n, sizeof(*st->layers));
		st->key = xprintf("g%d-L%u-b%u-f%u-d%u-o%g-w%g-q%g-s%u-%s",
				  GEN_VERSION, n, sh.base_files, sh.files,
				  sh.depth, sh.override, sh.whiteout, sh.opaque,
				  sh.seed, sh.oci ? "oci" : "chr");
		r = links && st->layers && st->key ? 0 : -ENOMEM;
		/* Top-most first: layer n-1 of the shape is the top. */
		for (unsigned i = 0; r == 0 && i < n; i++) {
			st->layers[i] = xprintf("%s/layers/%s", b->dir,
						hex[n - 1 - i]);
			links[i] = xprintf("../../layers/%s", hex[n - 1 - i]);
			if (!st->layers[i] || !links[i])
				r = -ENOMEM;
		}
		if (r == -ENOMEM)
			snprintf(err, ERRLEN, "out of memory");
		if (r == 0)
			r = make_stack_dir(b, st, links, err);
		for (unsigned i = 0; links && i < n; i++)
			free(links[i]);
		free(links);
	}
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	free(hex);
	free(entries);
	return r;
}

/* A stack taken as it is: --lowerdir (top-most first) or --image. */
static int setup_taken(struct bench *b, char err[ERRLEN])
{
	struct stack *st = &b->stacks[0];
	char **dirs = NULL;
	size_t n = 0;
	int r = 0;

	if (b->o->image) {
		char id[HEXLEN + 1], (*diff)[HEXLEN + 1] = NULL;
		json_t *config = NULL;
		if (store_resolve_image(b->store, b->o->image, id, err) < 0 ||
		    !(config = store_load_config(b->store, id, err)) ||
		    config_diff_ids(config, &diff, &n, err) < 0) {
			json_decref(config);
			return -EINVAL;
		}
		json_decref(config);
		if (n == 0) {
			free(diff);
			snprintf(err, ERRLEN, "%s has no layers", b->o->image);
			return -EINVAL;
		}
		dirs = calloc(n, sizeof(*dirs));
		for (size_t i = 0; dirs && i < n; i++) {
			/* diff ids are bottom first. */
			if (!store_has_layer(b->store, diff[n - 1 - i])) {
				snprintf(err, ERRLEN, "layer sha256:%s of %s is "
					 "missing from the store",
					 diff[n - 1 - i], b->o->image);
				r = -ENOENT;
				break;
			}
			dirs[i] = store_path(b->store, "layers/sha256/%s",
					     diff[n - 1 - i]);
			if (!dirs[i])
				r = -ENOMEM;
		}
		if (!dirs)
			r = -ENOMEM;
		free(diff);
	} else {
		r = lfs_split_lowerdir(b->o->lowerdir, &dirs, &n);
		if (r == -EINVAL)
			snprintf(err, ERRLEN, "--lowerdir: empty layer path in "
				 "'%s'", b->o->lowerdir);
	}
	if (r == 0 && n > MAX_LAYERS) {
		snprintf(err, ERRLEN, "%zu layers: at most %d", n, MAX_LAYERS);
		r = -EINVAL;
	}
	st->n_layers = (unsigned)n;
	st->layers = r == 0 ? calloc(n, sizeof(*st->layers)) : NULL;
	if (r == 0 && !st->layers)
		r = -ENOMEM;
	struct sha256 *h = r == 0 ? sha256_new() : NULL;
	for (size_t i = 0; r == 0 && i < n; i++) {
		struct stat sb;
		st->layers[i] = realpath(dirs[i], NULL);
		if (!st->layers[i] || stat(st->layers[i], &sb) < 0 ||
		    !S_ISDIR(sb.st_mode)) {
			snprintf(err, ERRLEN, "layer %s: %s", dirs[i],
				 st->layers[i] ? "not a directory"
					       : strerror(errno));
			r = -EINVAL;
		} else if (h) {
			sha256_update(h, st->layers[i], strlen(st->layers[i]) + 1);
		}
	}
	if (h) {
		char hex[HEXLEN + 1];
		sha256_final_hex(h, hex);
		st->key = r == 0 ? xprintf("taken-%.16s", hex) : NULL;
		if (r == 0 && !st->key)
			r = -ENOMEM;
	}
	if (r == -ENOMEM)
		snprintf(err, ERRLEN, "out of memory");
	if (r == 0)
		r = make_stack_dir(b, st, st->layers, err);
	for (size_t i = 0; dirs && i < n; i++)
		free(dirs[i]);
	free(dirs);
	return r;
}

/* What the walk of the merged tree collects. */
struct walk {
	struct lfs_fs *fs;
	struct stack *st;
	uint32_t bottom;          /* the bottom layer's index */
	struct strv dirs;         /* merged directories, "" for the root */
	struct strv bottom_files; /* non-directories the bottom layer provides */
	struct strv small_files;  /* regular files up to SMALL_FILE_MAX */
	uint64_t *small_sizes;
	size_t small_cap;
};

static int walk_dir(struct walk *w, struct lfs_node *dir, const char *prefix,
		    unsigned depth)
{
	struct strv names = { 0 };
	struct lfs_dirent de;
	off_t off = 0;
	int r;

	if (depth > 256)
		return -ELOOP;
	while ((r = lfs_readdir_node(w->fs, dir, off, &de)) == 1) {
		off = de.next_off;
		if (strcmp(de.name, ".") && strcmp(de.name, "..") &&
		    (r = strv_push(&names, strdup(de.name))) < 0)
			break;
	}
	if (r < 0) {
		strv_free(&names);
		return r;
	}
	if (names.n)
		qsort(names.v, names.n, sizeof(*names.v), cmp_str);
	for (size_t i = 0; r == 0 && i < names.n && !interrupted; i++) {
		struct lfs_node *child;
		struct stat sb;
		char *path = xprintf("%s%s%s", prefix, dir_prefix(prefix),
				     names.v[i]);
		if (!path) {
			r = -ENOMEM;
			break;
		}
		if ((r = lfs_lookup(w->fs, dir, names.v[i], &child, &sb)) < 0) {
			free(path);
			break;
		}
		w->st->entries++;
		if (S_ISDIR(sb.st_mode)) {
			w->st->dirs++;
			r = strv_push(&w->dirs, strdup(path));
			if (r == 0)
				r = walk_dir(w, child, path, depth + 1);
		} else {
			w->st->files++;
			if (lfs_node_layer(child) == w->bottom)
				r = strv_push(&w->bottom_files, strdup(path));
			if (r == 0 && S_ISREG(sb.st_mode) &&
			    sb.st_size <= SMALL_FILE_MAX) {
				if (w->small_files.n == w->small_cap) {
					size_t cap = w->small_cap ? w->small_cap * 2 : 256;
					uint64_t *v = realloc(w->small_sizes,
							      cap * sizeof(*v));
					if (!v)
						r = -ENOMEM;
					else
						w->small_sizes = v, w->small_cap = cap;
				}
				if (r == 0) {
					w->small_sizes[w->small_files.n] =
						(uint64_t)sb.st_size;
					r = strv_push(&w->small_files, strdup(path));
				}
			}
		}
		if (r == 0)
			r = strv_push(&w->st->all, path);
		else
			free(path);
		lfs_node_unref(w->fs, child, 1);
	}
	strv_free(&names);
	return interrupted ? -EINTR : r;
}

/*
 * Resolve st's merged tree with the union core (the lookups a mount makes,
 * without one) and draw the workload lists from it, seeded, so that every
 * system is asked the same things and every answer can be checked.  With
 * the index cache on, this also records the layers' index caches, as a
 * first mount would have: the figures are then those of a host that has
 * used the image before.
 */
static int resolve_stack(struct bench *b, struct stack *st, char err[ERRLEN])
{
	struct lfs_stack *ls = NULL;
	struct lfs_fs *fs = NULL;
	struct lfs_fs_config config = { .read_only = true, .max_data_fds = 4,
					.index_cache_dir = b->index_dir };
	struct walk w = { .st = st, .bottom = st->n_layers - 1 };
	char lerr[LFS_ERRLEN] = "";
	unsigned n = b->o->paths;
	struct rng r;
	int rc;

	progress(b, "%u layers: resolving the merged tree", st->n_layers);
	rc = lfs_stack_open(&ls, st->layers, st->n_layers, lerr);
	if (rc == 0 && (rc = lfs_fs_new(&fs, ls, &config, lerr)) < 0)
		lfs_stack_free(ls);
	if (rc < 0) {
		snprintf(err, ERRLEN, "%s", lerr[0] ? lerr : strerror(-rc));
		return rc;
	}
	w.fs = fs;
	rc = strv_push(&w.dirs, strdup(""));
	if (rc == 0)
		rc = walk_dir(&w, lfs_fs_root(fs), "", 0);
	if (rc == 0 && b->index_dir) {
		progress(b, "%u layers: recording layer index caches",
			 st->n_layers);
		if (lfs_fs_start_background(fs) == 0)
			lfs_fs_finish_background(fs);
	}
	lfs_fs_free(fs);
	if (rc < 0) {
		snprintf(err, ERRLEN, "resolving the merged tree of %s: %s",
			 st->dir, strerror(-rc));
		goto out;
	}
	if (st->generated && st->entries != st->model_entries) {
		snprintf(err, ERRLEN, "the union core finds %zu merged entries "
			 "in %s where the generator made %zu (a bug in one of "
			 "them)", st->entries, st->dir, st->model_entries);
		rc = -EPROTO;
		goto out;
	}
	st->bottom_only = w.bottom_files.n;

	/* Bottom-layer files: a seeded sample. */
	rng_seed(&r, "bottom");
	shuffle(&w.bottom_files, &r);
	for (size_t i = 0; rc == 0 && i < w.bottom_files.n && i < n; i++)
		rc = strv_push(&st->bottom, strdup(w.bottom_files.v[i]));

	/* Names in no layer: half in directories the whole stack shares (a
	 * generated stack's hot ones; else those of bottom-layer files),
	 * half anywhere. */
	rng_seed(&r, "negative");
	for (size_t i = 0; rc == 0 && i < n; i++) {
		const char *d;
		char *dup = NULL;
		if (i % 2 == 0 && st->generated) {
			d = hot_dirs[rng_below(&r, N_HOT)];
		} else if (i % 2 == 0 && w.bottom_files.n) {
			dup = strdup(w.bottom_files.v[rng_below(&r,
							       w.bottom_files.n)]);
			char *slash = dup ? strrchr(dup, '/') : NULL;
			if (slash)
				*slash = '\0';
			else if (dup)
				dup[0] = '\0';
			d = dup ? dup : "";
		} else {
			d = w.dirs.v[rng_below(&r, w.dirs.n)];
		}
		rc = strv_push(&st->negative, xprintf("%s%snx-%05zu.absent", d,
						       dir_prefix(d), i));
		free(dup);
	}

	/* Small files: a seeded sample, with the bytes they hold. */
	size_t m = w.small_files.n, *idx = calloc(m ? m : 1, sizeof(*idx));
	if (!idx && rc == 0)
		rc = -ENOMEM;
	rng_seed(&r, "small");
	for (size_t i = 0; idx && i < m; i++)
		idx[i] = i;
	for (size_t i = 0; rc == 0 && i < m && i < n; i++) {
		size_t j = i + rng_below(&r, m - i), t = idx[i];
		idx[i] = idx[j];
		idx[j] = t;
		st->small_bytes += w.small_sizes[idx[i]];
		rc = strv_push(&st->small, strdup(w.small_files.v[idx[i]]));
	}
	free(idx);
	if (rc < 0)
		snprintf(err, ERRLEN, "out of memory");
out:
	strv_free(&w.dirs);
	strv_free(&w.bottom_files);
	strv_free(&w.small_files);
	free(w.small_sizes);
	return rc;
}

/* Read every file of every layer once, bypassing the mounts: dropping
 * caches empties this kernel's cache but not a VM host's, which would
 * otherwise favour whichever system reads a file second. */
static uint64_t preread_bytes;

static int preread_one(const char *path, const struct stat *sb, int type,
		       struct FTW *ftw)
{
	static char buf[1 << 16];
	ssize_t got;
	int fd;

	(void)ftw;
	if (interrupted)
		return 1;
	if (type != FTW_F || !S_ISREG(sb->st_mode))
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return 0;
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		preread_bytes += (uint64_t)got;
	close(fd);
	return 0;
}

static void preread(struct bench *b, const struct stack *st)
{
	progress(b, "%u layers: reading the layers once", st->n_layers);
	for (unsigned i = 0; i < st->n_layers && !interrupted; i++)
		nftw(st->layers[i], preread_one, 32, FTW_PHYS);
}

/* ------------------------------------------------------------------ */
/* systems: mounting, unmounting, the daemons                          */

/* Mount points in /proc/self/mountinfo (octal escapes decoded) that are
 * path, or below it with under; the count, or -errno. */
static int mountinfo_find(const char *path, bool under, struct strv *ret)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0, plen = strlen(path);
	int found = 0;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		char *save = NULL, *field = strtok_r(line, " ", &save);
		for (int i = 0; field && i < 4; i++)
			field = strtok_r(NULL, " ", &save);
		if (!field)
			continue;
		char *o = field;
		for (const char *c = field; *c; c++) {
			if (c[0] == '\\' && c[1] >= '0' && c[1] <= '3' &&
			    c[2] >= '0' && c[2] <= '7' && c[3] >= '0' &&
			    c[3] <= '7') {
				*o++ = (char)((c[1] - '0') * 64 + (c[2] - '0') * 8 +
					      (c[3] - '0'));
				c += 3;
			} else {
				*o++ = *c;
			}
		}
		*o = '\0';
		bool hit = under ? strncmp(field, path, plen) == 0 &&
				   field[plen] == '/'
				 : strcmp(field, path) == 0;
		if (hit) {
			found++;
			if (ret)
				strv_push(ret, strdup(field));
		}
	}
	free(line);
	fclose(f);
	return found;
}

static bool is_mounted(const char *path)
{
	return mountinfo_find(path, false, NULL) > 0;
}

struct children {
	pid_t *out;
	int n, max;
};

/* Record pid if this process is its parent; stop when out is full. */
static bool add_if_child(const char *pid, void *arg)
{
	struct children *c = arg;
	char *stat = proc_read(pid, "stat", NULL);
	/* The name in parentheses may hold spaces: fields follow the last ')'. */
	char *rp = stat ? strrchr(stat, ')') : NULL;
	char state;
	int ppid;

	if (rp && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 &&
	    ppid == getpid())
		c->out[c->n++] = (pid_t)atoi(pid);
	free(stat);
	return c->n >= c->max;
}

/* Children of this process: FUSE daemons re-parented to it. */
static int list_children(pid_t *out, int max)
{
	struct children c = { .out = out, .max = max };

	if (max > 0)
		proc_each_pid(add_if_child, &c);
	return c.n;
}

/* Run argv (in cwd if given) with its output in a temporary file; 0 if it
 * exited 0, else -EIO with the last line of its output in err. */
static int run_command(struct bench *b, char *const argv[], char err[ERRLEN])
{
	char tmpl[PATH_MAX];
	int out, status = 0;
	pid_t pid;

	snprintf(tmpl, sizeof(tmpl), "%s/.out-XXXXXX", b->dir);
	out = mkostemp(tmpl, O_CLOEXEC);
	if (out < 0) {
		snprintf(err, ERRLEN, "%.900s: %s", tmpl, strerror(errno));
		return -errno;
	}
	unlink(tmpl);
	pid = fork();
	if (pid < 0) {
		close(out);
		snprintf(err, ERRLEN, "fork: %s", strerror(errno));
		return -EAGAIN;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		if (null >= 0)
			dup2(null, 0);
		dup2(out, 1);
		dup2(out, 2);
		execvp(argv[0], argv);
		fprintf(stderr, "%s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		close(out);
		return 0;
	}
	/* The last non-empty line says why. */
	char buf[4096];
	ssize_t n = pread(out, buf, sizeof(buf) - 1, 0);
	off_t size = lseek(out, 0, SEEK_END);
	if (size > (off_t)sizeof(buf) - 1)
		n = pread(out, buf, sizeof(buf) - 1, size - (off_t)sizeof(buf) + 1);
	close(out);
	buf[n > 0 ? n : 0] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	char *last = strrchr(buf, '\n');
	if (WIFEXITED(status))
		snprintf(err, ERRLEN, "exit %d: %.900s", WEXITSTATUS(status),
			 last ? last + 1 : buf);
	else
		snprintf(err, ERRLEN, "killed by signal %d", WTERMSIG(status));
	return -EIO;
}

/* "a:b" with ':', ',' and '\' escaped (the option syntax of -o). */
static char *escape_opt(const char *s)
{
	char *out = malloc(2 * strlen(s) + 1), *o = out;

	if (!out)
		return NULL;
	for (; *s; s++) {
		if (*s == ':' || *s == ',' || *s == '\\')
			*o++ = '\\';
		*o++ = *s;
	}
	*o = '\0';
	return out;
}

/* The FUSE programs' lowerdir=..., plus layerfs's index_cache. */
static char *fuse_options(struct bench *b, const struct stack *st, int k)
{
	size_t cap = 64 + (b->index_dir ? 2 * strlen(b->index_dir) : 0);
	for (unsigned i = 0; i < st->n_layers; i++)
		cap += 2 * strlen(st->layers[i]) + 1;
	char *opts = malloc(cap), *o = opts;

	if (!opts)
		return NULL;
	o += sprintf(o, "lowerdir=");
	for (unsigned i = 0; i < st->n_layers; i++) {
		char *e = escape_opt(st->layers[i]);
		if (!e) {
			free(opts);
			return NULL;
		}
		o += sprintf(o, "%s%s", i ? ":" : "", e);
		free(e);
	}
	if (k == SYS_LAYERFS) {
		char *e = b->index_dir ? escape_opt(b->index_dir) : NULL;
		o += sprintf(o, ",index_cache=%s", e ? e : "off");
		free(e);
	}
	return opts;
}

/* The kernel's: the stack directory's short names. */
static char *kernel_options(const struct stack *st)
{
	char *opts = malloc(32 + 12 * (size_t)st->n_layers), *o = opts;

	if (!opts)
		return NULL;
	o += sprintf(o, "lowerdir=%s", st->n_layers == 1 ? "e:" : "");
	for (unsigned i = 0; i < st->n_layers; i++)
		o += sprintf(o, "%s%u", i ? ":" : "", i);
	return opts;
}

static void drop_caches(struct bench *b)
{
	int fd;

	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "3\n", 2) != 2)
		note(b, "dropping caches failed: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void reap_daemons(struct bench *b, int k)
{
	for (int i = 0; i < b->n_daemons[k]; i++) {
		pid_t pid = b->daemon[k][i];
		bool gone = false;
		for (int t = 0; t < DAEMON_EXIT_S * 200 && !gone; t++) {
			pid_t got = waitpid(pid, NULL, WNOHANG);
			gone = got == pid || (got < 0 && errno == ECHILD);
			if (!gone)
				usleep(5000);
		}
		if (gone)
			continue;
		note(b, "%s daemon pid %d still running %d s after unmount; "
		     "ended it", sys_name[k], (int)pid, DAEMON_EXIT_S);
		kill(pid, SIGTERM);
		for (int t = 0; t < 400; t++) {
			if (waitpid(pid, NULL, WNOHANG) != 0)
				break;
			usleep(5000);
		}
		if (kill(pid, SIGKILL) == 0)
			waitpid(pid, NULL, 0);
	}
	b->n_daemons[k] = 0;
}

/* Take mnt down: plain unmounts while it is busy for a few seconds, then
 * a lazy one, which always works. */
static void unmount_path(struct bench *b, const char *mnt, bool fuse)
{
	for (int attempt = 0; attempt < 50 && is_mounted(mnt); attempt++) {
		if (b->root) {
			umount2(mnt, 0);
		} else if (fuse) {
			char err[ERRLEN];
			char *argv[] = { "fusermount3", "-u", (char *)mnt, NULL };
			run_command(b, argv, err);
		}
		if (is_mounted(mnt))
			usleep(100000);
	}
	if (is_mounted(mnt)) {
		note(b, "%s stayed busy; detached it lazily", mnt);
		if (b->root) {
			umount2(mnt, MNT_DETACH);
		} else {
			char err[ERRLEN];
			char *argv[] = { "fusermount3", "-uz", (char *)mnt, NULL };
			run_command(b, argv, err);
		}
	}
}

static void sys_unmount(struct bench *b, int k)
{
	unmount_path(b, b->mnt[k], k != SYS_KERNEL);
	reap_daemons(b, k);
}

/* Everything mounted under DIR/mnt: an interrupted run's leftovers, or
 * this run's on the way out. */
static void unmount_all(struct bench *b)
{
	char *root = xprintf("%s/mnt", b->dir);
	struct strv found = { 0 };

	if (root && mountinfo_find(root, true, &found) > 0)
		for (size_t i = found.n; i-- > 0;)
			unmount_path(b, found.v[i], true);
	for (int k = 0; k < N_SYS; k++)
		reap_daemons(b, k);
	strv_free(&found);
	free(root);
}

/*
 * Mount st with system k on its mount point; *ret_ms is the time from the
 * start of the mount (the program's exec for FUSE, mount(2) for the
 * kernel, as container engines do it) until the mount is in mountinfo and
 * a stat of its root has been answered.
 */
static int sys_mount(struct bench *b, const struct stack *st, int k,
		     double *ret_ms, char err[ERRLEN])
{
	const char *mnt = b->mnt[k];
	uint64_t t0;
	int r = 0;

	if (is_mounted(mnt)) {
		snprintf(err, ERRLEN, "%s is already a mount point", mnt);
		return -EBUSY;
	}
	if (k == SYS_KERNEL) {
		char *opts = kernel_options(st);
		int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (!opts || cwd < 0) {
			free(opts);
			if (cwd >= 0)
				close(cwd);
			snprintf(err, ERRLEN, "%s", strerror(opts ? errno : ENOMEM));
			return -ENOMEM;
		}
		t0 = now_ns();
		if (chdir(st->dir) < 0 ||
		    mount("overlay", mnt, "overlay", 0, opts) < 0) {
			r = -errno;
			snprintf(err, ERRLEN, "mount -t overlay: %s%s",
				 strerror(errno), st->n_layers > 500
				 ? " (kernel overlayfs takes at most 500 "
				   "lower layers)" : "");
		}
		if (fchdir(cwd) < 0 && r == 0)
			r = -errno;
		close(cwd);
		free(opts);
	} else {
		char *opts = fuse_options(b, st, k);
		char *argv[] = { b->program[k], "-o", opts, (char *)mnt, NULL };
		if (!opts) {
			snprintf(err, ERRLEN, "out of memory");
			return -ENOMEM;
		}
		t0 = now_ns();
		r = run_command(b, argv, err);
		free(opts);
		/* The daemon forked away from the command: ours now. */
		b->n_daemons[k] = list_children(b->daemon[k], 8);
	}
	while (r == 0 && !is_mounted(mnt)) {
		if (now_ns() - t0 > (uint64_t)MOUNT_TIMEOUT_S * 1000000000u) {
			snprintf(err, ERRLEN, "the mount command returned but "
				 "nothing was mounted after %d s",
				 MOUNT_TIMEOUT_S);
			r = -ETIMEDOUT;
		}
		usleep(1000);
	}
	struct stat sb;
	if (r == 0 && stat(mnt, &sb) < 0) {
		r = -errno;
		snprintf(err, ERRLEN, "stat of the mount root: %s",
			 strerror(errno));
	}
	if (r == 0) {
		*ret_ms = (double)(now_ns() - t0) / 1e6;
		return 0;
	}
	sys_unmount(b, k);
	return r;
}

/* ------------------------------------------------------------------ */
/* layerfs counters: the layerfs.stats xattr of the mount root         */

static uint64_t json_u64(json_t *obj, const char *a, const char *b2)
{
	json_t *v = json_object_get(obj, a);

	if (b2)
		v = json_object_get(v, b2);
	return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

/* c gets the counters, per_layer (n entries) the probes of each layer. */
static int read_counters(const char *mnt, uint64_t c[N_CTR],
			 uint64_t *per_layer, unsigned n)
{
	ssize_t len = getxattr(mnt, "layerfs.stats", NULL, 0);
	char *buf;
	json_t *j, *v;
	const char *key;

	if (len < 0)
		return -errno;
	buf = malloc((size_t)len + 4096);
	if (!buf)
		return -ENOMEM;
	len = getxattr(mnt, "layerfs.stats", buf, (size_t)len + 4096);
	j = len > 0 ? json_loadb(buf, (size_t)len, 0, NULL) : NULL;
	free(buf);
	if (!j)
		return len < 0 ? -errno : -EPROTO;
	memset(c, 0, N_CTR * sizeof(*c));
	/* The counters' own read (GETXATTR) is not the workload's. */
	json_object_foreach(json_object_get(j, "requests"), key, v)
		if (strcmp(key, "GETXATTR") != 0)
			c[CT_REQUESTS] += json_u64(v, "count", NULL);
	c[CT_POSITIVE] = json_u64(j, "lookups", "positive");
	c[CT_NEGATIVE] = json_u64(j, "lookups", "negative");
	c[CT_INDEX_ANSWERS] = json_u64(j, "index", "answers");
	c[CT_INDEX_BUILT] = json_u64(j, "index", "built");
	c[CT_DIRS_READ] = json_u64(j, "probes", "layer_dirs_read");
	c[CT_DIRS_CACHED] = json_u64(j, "probes", "layer_dirs_from_cache");
	c[CT_STATS] = json_u64(j, "probes", "object_stats");
	c[CT_STATS_CACHED] = json_u64(j, "probes", "stats_from_cache");
	json_t *pl = json_object_get(json_object_get(j, "probes"), "per_layer");
	for (unsigned i = 0; i < n; i++) {
		json_t *e = json_array_get(pl, i);
		per_layer[i] = json_is_integer(e) ? (uint64_t)json_integer_value(e)
						  : 0;
	}
	json_decref(j);
	return 0;
}

/* ------------------------------------------------------------------ */
/* the workloads: one pass each, on a mounted stack                    */

struct pass {
	uint64_t ns, ops, bad;
};

/* fstatat every path; each should exist, or (negative) not. */
static void run_stat(int rootfd, const struct strv *paths, bool exist,
		     struct pass *p)
{
	struct stat sb;
	uint64_t t0 = now_ns();

	for (size_t i = 0; i < paths->n && !interrupted; i++) {
		int rc = fstatat(rootfd, paths->v[i], &sb, AT_SYMLINK_NOFOLLOW);
		if (exist ? rc != 0 : !(rc != 0 && errno == ENOENT))
			p->bad++;
	}
	p->ns = now_ns() - t0;
	p->ops = paths->n;
}

/* open, read to the end, close; all of it must come back. */
static void run_read(int rootfd, const struct strv *paths, uint64_t want,
		     struct pass *p)
{
	static char buf[1 << 16];
	uint64_t t0 = now_ns(), bytes = 0;

	for (size_t i = 0; i < paths->n && !interrupted; i++) {
		int fd = openat(rootfd, paths->v[i],
				O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		ssize_t got;
		if (fd < 0) {
			p->bad++;
			continue;
		}
		while ((got = read(fd, buf, sizeof(buf))) > 0)
			bytes += (uint64_t)got;
		if (got < 0)
			p->bad++;
		close(fd);
	}
	p->ns = now_ns() - t0;
	p->ops = paths->n;
	if (bytes != want && !interrupted)
		p->bad++;
}

/* readdir of dfd (consumed) and every directory below it, by d_type. */
static void walk_tree(int dfd, uint64_t *entries, struct pass *p)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;

	if (!d) {
		close(dfd);
		p->bad++;
		return;
	}
	while (!interrupted && (errno = 0, de = readdir(d)) != NULL) {
		bool is_dir;
		if (de->d_name[0] == '.' && (de->d_name[1] == '\0' ||
		    (de->d_name[1] == '.' && de->d_name[2] == '\0')))
			continue;
		(*entries)++;
		if (de->d_type == DT_UNKNOWN) {
			struct stat sb;
			if (fstatat(dirfd(d), de->d_name, &sb,
				    AT_SYMLINK_NOFOLLOW) != 0) {
				p->bad++;
				continue;
			}
			is_dir = S_ISDIR(sb.st_mode);
		} else {
			is_dir = de->d_type == DT_DIR;
		}
		if (is_dir) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY |
					 O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				p->bad++;
			else
				walk_tree(sub, entries, p);
		}
	}
	if (errno != 0 && !interrupted)
		p->bad++;
	closedir(d);
}

static void run_walk(int rootfd, size_t want, struct pass *p)
{
	uint64_t t0 = now_ns(), entries = 0;
	int fd = openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		p->bad++;
	else
		walk_tree(fd, &entries, p);
	p->ns = now_ns() - t0;
	p->ops = 1;
	if (entries != want && !interrupted)
		p->bad++;
}

/* tar -cf - . into a pipe this process drains (GNU tar reads no data when
 * the archive is /dev/null). */
static void run_tar(const char *mnt, struct pass *p)
{
	uint64_t t0 = now_ns(), bytes = 0;
	int fds[2], status = 0;
	pid_t pid;

	p->ops = 1;
	if (pipe2(fds, O_CLOEXEC) < 0) {
		p->bad++;
		return;
	}
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 2);
		}
		dup2(fds[1], 1);
		execlp("tar", "tar", "-C", mnt, "-cf", "-", ".", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	if (pid < 0) {
		close(fds[0]);
		p->bad++;
		return;
	}
	static char buf[1 << 16];
	for (;;) {
		ssize_t got = read(fds[0], buf, sizeof(buf));
		if (got > 0)
			bytes += (uint64_t)got;
		else if (got == 0 || errno != EINTR || interrupted)
			break;
	}
	close(fds[0]);
	if (interrupted)
		kill(pid, SIGTERM);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	p->ns = now_ns() - t0;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || bytes == 0)
		p->bad++;
}

/* One pass of workload w; its figure in the workload's unit. */
static double run_pass(struct bench *b, const struct stack *st, int w, int k,
		       int rootfd, uint64_t *ret_bad)
{
	struct pass p = { 0 };

	switch (w) {
	case WL_STAT_ALL:
		run_stat(rootfd, &st->all, true, &p);
		break;
	case WL_STAT_BOTTOM:
		run_stat(rootfd, &st->bottom, true, &p);
		break;
	case WL_NEGATIVE:
		run_stat(rootfd, &st->negative, false, &p);
		break;
	case WL_WALK:
		run_walk(rootfd, st->entries, &p);
		break;
	case WL_SMALL:
		run_read(rootfd, &st->small, st->small_bytes, &p);
		break;
	case WL_TAR:
		run_tar(b->mnt[k], &p);
		break;
	}
	*ret_bad = p.bad;
	if (w == WL_WALK || w == WL_TAR)
		return (double)p.ns / 1e6;
	return p.ops ? (double)p.ns / (double)p.ops / 1e3 : 0;
}

static void cell_add(struct cell *c, double v, uint64_t bad)
{
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 8;
		double *nv = realloc(c->v, cap * sizeof(*nv));
		if (!nv)
			return;
		c->v = nv;
		c->cap = cap;
	}
	c->v[c->n++] = v;
	c->bad += bad;
}

static void cell_add_counters(struct cell *c, const uint64_t *before,
			      const uint64_t *after, const uint64_t *pl_before,
			      const uint64_t *pl_after, unsigned n_layers)
{
	if (!c->per_layer && !(c->per_layer = calloc(n_layers, sizeof(uint64_t))))
		return;
	for (int i = 0; i < N_CTR; i++)
		c->ctr[i] += after[i] - before[i];
	for (unsigned i = 0; i < n_layers; i++)
		c->per_layer[i] += pl_after[i] - pl_before[i];
	c->ctr_passes++;
}

/* The median of the cell's samples (sorts them). */
static double cell_value(struct cell *c)
{
	if (c->n == 0)
		return 0;
	qsort(c->v, c->n, sizeof(*c->v), cmp_double);
	return c->n % 2 ? c->v[c->n / 2]
			: (c->v[c->n / 2 - 1] + c->v[c->n / 2]) / 2;
}

/*
 * One fresh mount of stack s by system k for workload w: caches dropped
 * (cold runs), mount, pass 0 (cold, or discarded without cold), the warm
 * passes, unmount.  For layerfs the counters are read around every pass.
 */
static void measure(struct bench *b, size_t s, int w, int k)
{
	struct stack *st = &b->stacks[s];
	unsigned nl = st->n_layers;
	uint64_t before[N_CTR], after[N_CTR];
	uint64_t *pl_before = calloc(nl, sizeof(uint64_t));
	uint64_t *pl_after = calloc(nl, sizeof(uint64_t));
	char err[ERRLEN] = "";
	double ms;
	int rootfd;

	if (!pl_before || !pl_after || b->failed[s * N_SYS + (size_t)k])
		goto out;
	if (b->cold)
		drop_caches(b);
	if (sys_mount(b, st, k, &ms, err) < 0) {
		b->failed[s * N_SYS + (size_t)k] = true;
		note(b, "%s cannot mount the %u-layer stack: %s", sys_name[k],
		     nl, err);
		goto out;
	}
	cell_add(cell_at(b, s, WL_MOUNT, b->cold ? COLD : WARM, k), ms, 0);
	rootfd = open(b->mnt[k], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	bool counted = k == SYS_LAYERFS && rootfd >= 0 &&
		       read_counters(b->mnt[k], before, pl_before, nl) == 0;
	if (k == SYS_LAYERFS && !counted)
		note(b, "layerfs: cannot read the layerfs.stats counters of "
		     "the mount root");
	for (unsigned p = 0; rootfd >= 0 && p <= b->o->warm && !interrupted; p++) {
		uint64_t bad;
		double v = run_pass(b, st, w, k, rootfd, &bad);
		int state = p > 0 ? WARM : b->cold ? COLD : -1;
		if (interrupted)
			break;
		if (state >= 0)
			cell_add(cell_at(b, s, w, state, k), v, bad);
		if (state >= 0 && bad)
			note(b, "%s, %u layers, %s (%s): answers disagree with "
			     "the union core's view of the stack", sys_name[k],
			     nl, workloads[w].name, state_name[state]);
		if (counted && read_counters(b->mnt[k], after, pl_after, nl) == 0) {
			if (state >= 0)
				cell_add_counters(cell_at(b, s, w, state, k),
						  before, after, pl_before,
						  pl_after, nl);
			memcpy(before, after, sizeof(before));
			memcpy(pl_before, pl_after, nl * sizeof(uint64_t));
		}
	}
	if (rootfd >= 0)
		close(rootfd);
	else
		note(b, "%s: cannot open the mount root: %s", sys_name[k],
		     strerror(errno));
	sys_unmount(b, k);
out:
	free(pl_before);
	free(pl_after);
}

static void run_stack(struct bench *b, size_t s)
{
	const struct stack *st = &b->stacks[s];
	int order[N_SYS], n = 0;

	for (int k = 0; k < N_SYS; k++)
		if (b->active[k])
			order[n++] = k;
	preread(b, st);
	for (int w = WL_STAT_ALL; w < N_WL && !interrupted; w++) {
		for (unsigned rep = 0; rep < b->o->reps && !interrupted; rep++) {
			/* Take turns going first. */
			unsigned first = b->rotation++ % (unsigned)n;
			for (int i = 0; i < n && !interrupted; i++) {
				int k = order[(first + (unsigned)i) % (unsigned)n];
				b->step++;
				progress(b, "%u layers: %s, %s (%zu/%zu)",
					 st->n_layers, workloads[w].key,
					 sys_name[k], b->step, b->n_steps);
				measure(b, s, w, k);
			}
		}
	}
}

/* ------------------------------------------------------------------ */
/* output: the table, JSON, the plot                                   */

/* s padded with spaces to width characters (UTF-8 aware), right-aligned
 * if right. */
static void put_cell(const char *s, int width, bool right)
{
	int chars = 0;

	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		chars += (*c & 0xc0) != 0x80;
	if (right)
		printf("%*s%s", width > chars ? width - chars : 0, "", s);
	else
		printf("%s%*s", s, width > chars ? width - chars : 0, "");
}

static void fmt_value(char *buf, size_t size, double v)
{
	if (v >= 100)
		snprintf(buf, size, "%.0f", v);
	else if (v >= 10)
		snprintf(buf, size, "%.1f", v);
	else
		snprintf(buf, size, "%.2f", v);
}

static bool has_ratios(const struct bench *b)
{
	return b->active[SYS_LAYERFS] && (b->active[SYS_KERNEL] ||
					   b->active[SYS_FUSE]);
}

static void print_row_head(const char *title, const char *state,
			   unsigned layers)
{
	char n[16];

	snprintf(n, sizeof(n), "%u", layers);
	put_cell(title, 36, false);
	put_cell(state, 5, false);
	put_cell(n, 7, true);
}

static void print_table(struct bench *b)
{
	const struct options *o = b->o;
	char buf[64];

	printf("layerctl bench: ");
	for (int k = 0, first = 1; k < N_SYS; k++)
		if (b->active[k]) {
			printf("%s%s", first ? "" : ", ",
			       k == SYS_KERNEL ? "kernel overlayfs" : sys_name[k]);
			first = 0;
		}
	if (b->stacks[0].generated)
		printf(" on generated stacks: %u base files, %u entries a layer "
		       "(override %g, whiteout %g, opaque %g), depth %u, "
		       "seed %u\n", o->shape.base_files, o->shape.files,
		       o->shape.override, o->shape.whiteout, o->shape.opaque,
		       o->shape.depth, o->shape.seed);
	else
		printf(" on %s\n", o->image ? o->image : "the given layers");
	for (size_t s = 0; s < b->n_stacks; s++) {
		const struct stack *st = &b->stacks[s];
		printf("  %4u layers: %zu merged entries (%zu directories), "
		       "%zu bottom-layer files; %s\n", st->n_layers, st->entries,
		       st->dirs, st->bottom_only, st->dir);
	}
	printf("cold = caches dropped, fresh mount, first pass; warm = %u more "
	       "passes on that mount; median of %u mount%s per workload and "
	       "system\n", o->warm, o->reps, o->reps == 1 ? "" : "s");
	if (b->active[SYS_LAYERFS])
		printf("layerfs: %s, layer index cache %s\n",
		       b->program[SYS_LAYERFS],
		       b->index_dir ? "recorded beforehand (a host that has "
				      "used the image before)" : "off");
	if (has_ratios(b))
		printf("vs PEER = PEER's time / layerfs's time: above 1.00x "
		       "layerfs is faster\n");
	printf("\n");

	put_cell("workload", 36, false);
	put_cell("state", 5, false);
	put_cell("layers", 7, true);
	for (int k = 0; k < N_SYS; k++)
		if (b->active[k])
			put_cell(sys_column[k], 11, true);
	for (int k = SYS_KERNEL; has_ratios(b) && k < N_SYS; k++)
		if (b->active[k]) {
			snprintf(buf, sizeof(buf), "vs %s", sys_column[k]);
			put_cell(buf, 13, true);
		}
	printf("\n");
	for (int w = 0; w < N_WL; w++)
		for (int state = 0; state < N_STATES; state++)
			for (size_t s = 0; s < b->n_stacks; s++) {
				double v[N_SYS] = { 0 };
				bool any = false;
				for (int k = 0; k < N_SYS; k++) {
					struct cell *c = cell_at(b, s, w, state, k);
					if (c->n) {
						v[k] = cell_value(c);
						any = true;
					}
				}
				if (!any)
					continue;
				print_row_head(workloads[w].title,
					       state_name[state],
					       b->stacks[s].n_layers);
				for (int k = 0; k < N_SYS; k++) {
					if (!b->active[k])
						continue;
					struct cell *c = cell_at(b, s, w, state, k);
					if (c->n) {
						fmt_value(buf, sizeof(buf) - 1, v[k]);
						if (c->bad)
							strcat(buf, "!");
					} else {
						strcpy(buf, "n/a");
					}
					put_cell(buf, 11, true);
				}
				for (int k = SYS_KERNEL; has_ratios(b) && k < N_SYS; k++) {
					if (!b->active[k])
						continue;
					if (v[SYS_LAYERFS] > 0 && v[k] > 0)
						snprintf(buf, sizeof(buf), "%.2fx",
							 v[k] / v[SYS_LAYERFS]);
					else
						strcpy(buf, "n/a");
					put_cell(buf, 13, true);
				}
				printf("\n");
			}

	if (b->active[SYS_LAYERFS]) {
		static const char *const head[] = {
			"requests", "lookups", "negative", "idx hits", "built",
			"dirs read", "cached", "stats", "cached", "layers",
		};
		printf("\nlayerfs counters per pass (the layerfs.stats xattr "
		       "before and after each pass)\n");
		put_cell("workload", 36, false);
		put_cell("state", 5, false);
		put_cell("layers", 7, true);
		for (size_t i = 0; i < sizeof(head) / sizeof(*head); i++)
			put_cell(head[i], i == 0 ? 10 : 11, true);
		printf("\n");
		for (int w = WL_STAT_ALL; w < N_WL; w++)
			for (int state = 0; state < N_STATES; state++)
				for (size_t s = 0; s < b->n_stacks; s++) {
					struct cell *c = cell_at(b, s, w, state,
								 SYS_LAYERFS);
					unsigned nl = b->stacks[s].n_layers, probed = 0;
					static const int cols[] = {
						CT_REQUESTS, -1, CT_NEGATIVE,
						CT_INDEX_ANSWERS, CT_INDEX_BUILT,
						CT_DIRS_READ, CT_DIRS_CACHED,
						CT_STATS, CT_STATS_CACHED,
					};
					uint64_t total = 0;
					for (int i = 0; i < N_CTR; i++)
						total += c->ctr[i];
					/* Warm passes usually never reach FUSE. */
					if (!c->ctr_passes || (state == WARM && !total))
						continue;
					print_row_head(workloads[w].name,
						       state_name[state], nl);
					for (size_t i = 0; i < sizeof(cols) / sizeof(*cols); i++) {
						uint64_t sum = cols[i] < 0
							? c->ctr[CT_POSITIVE] + c->ctr[CT_NEGATIVE]
							: c->ctr[cols[i]];
						snprintf(buf, sizeof(buf), "%.0f",
							 (double)sum / c->ctr_passes);
						put_cell(buf, i == 0 ? 10 : 11, true);
					}
					for (unsigned i = 0; i < nl; i++)
						probed += c->per_layer[i] > 0;
					snprintf(buf, sizeof(buf), "%u/%u", probed, nl);
					put_cell(buf, 11, true);
					printf("\n");
				}
		printf("  requests: FUSE requests served; lookups: names looked "
		       "up, negative: not found; idx hits: lookups\n"
		       "  answered by a merged directory's index without "
		       "touching a layer; built: indexes built; dirs\n"
		       "  read / cached: layer directories read for them, live "
		       "or from the layer index cache; stats /\n"
		       "  cached: objects' attributes read from a layer, live "
		       "or from the cache; layers: layers probed\n"
		       "  at all / layers in the stack.  Warm rows are shown "
		       "only where a warm pass reached layerfs\n"
		       "  at all; otherwise the kernel's caches answered "
		       "every call.\n");
	}
	bool bad = false;
	for (size_t i = 0; i < b->n_stacks * N_WL * N_STATES * N_SYS; i++)
		bad |= b->cells[i].bad > 0;
	if (bad)
		note(b, "! marks a figure whose answers disagree with the "
		     "union core's resolution of the stack (wrong files, "
		     "missing entries, failed reads)");
	if (b->notes.n) {
		printf("\nnotes:\n");
		for (size_t i = 0; i < b->notes.n; i++)
			printf("  - %s\n", b->notes.v[i]);
	}
	printf("\n%.1f s\n", (double)(now_ns() - b->t0) / 1e9);
}

static json_t *json_counters(const struct cell *c, unsigned nl)
{
	json_t *j = json_object(), *pl = json_array();
	unsigned probed = 0;

	for (int i = 0; i < N_CTR; i++)
		json_object_set_new(j, ctr_key[i],
				    json_real((double)c->ctr[i] / c->ctr_passes));
	for (unsigned i = 0; i < nl; i++) {
		probed += c->per_layer[i] > 0;
		json_array_append_new(pl, json_real((double)c->per_layer[i] /
						    c->ctr_passes));
	}
	json_object_set_new(j, "layers_probed", json_integer(probed));
	json_object_set_new(j, "probes_per_layer", pl);
	json_object_set_new(j, "passes", json_integer(c->ctr_passes));
	return j;
}

static json_t *json_report(struct bench *b)
{
	const struct options *o = b->o;
	json_t *root = json_object(), *systems = json_object();
	json_t *stacks = json_array(), *results = json_array();
	json_t *notes = json_array();
	struct utsname un;

	json_object_set_new(root, "layerctl_bench", json_integer(1));
	uname(&un);
	json_object_set_new(root, "kernel", json_string(un.release));
	json_object_set_new(root, "cpus", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
	json_object_set_new(root, "cold", json_boolean(b->cold));
	json_object_set_new(root, "warm_passes", json_integer(o->warm));
	json_object_set_new(root, "reps", json_integer(o->reps));
	json_object_set_new(root, "paths", json_integer(o->paths));
	json_object_set_new(root, "index_cache", json_boolean(b->index_dir));
	json_object_set_new(root, "dir", json_string(b->dir));
	json_object_set_new(root, "ratio", json_string(
		"peer's time / layerfs's time: above 1 layerfs is faster"));
	if (b->stacks[0].generated)
		json_object_set_new(root, "shape", json_pack(
			"{s:i, s:i, s:i, s:f, s:f, s:f, s:i, s:s}",
			"base_files", (json_int_t)o->shape.base_files,
			"files", (json_int_t)o->shape.files,
			"depth", (json_int_t)o->shape.depth,
			"override", o->shape.override,
			"whiteout", o->shape.whiteout,
			"opaque", o->shape.opaque,
			"seed", (json_int_t)o->shape.seed,
			"whiteouts", b->root ? "chardev" : "oci"));
	for (int k = 0; k < N_SYS; k++) {
		json_t *sj = json_object();
		json_object_set_new(sj, "measured", json_boolean(b->active[k]));
		if (b->program[k])
			json_object_set_new(sj, "program", json_string(b->program[k]));
		json_object_set_new(systems, sys_name[k], sj);
	}
	json_object_set_new(root, "systems", systems);
	for (size_t s = 0; s < b->n_stacks; s++) {
		const struct stack *st = &b->stacks[s];
		json_t *failed = json_array();
		for (int k = 0; k < N_SYS; k++)
			if (b->failed[s * N_SYS + (size_t)k])
				json_array_append_new(failed, json_string(sys_name[k]));
		json_array_append_new(stacks, json_pack(
			"{s:i, s:s, s:b, s:i, s:i, s:i, s:i, s:{s:i, s:i, s:i, s:i}, s:o}",
			"layers", (json_int_t)st->n_layers, "dir", st->dir,
			"generated", st->generated,
			"entries", (json_int_t)st->entries,
			"dirs", (json_int_t)st->dirs,
			"non_dirs", (json_int_t)st->files,
			"bottom_only_files", (json_int_t)st->bottom_only,
			"lists", "all", (json_int_t)st->all.n,
			"bottom", (json_int_t)st->bottom.n,
			"negative", (json_int_t)st->negative.n,
			"small", (json_int_t)st->small.n,
			"failed_to_mount", failed));
	}
	json_object_set_new(root, "stacks", stacks);
	for (int w = 0; w < N_WL; w++)
		for (int state = 0; state < N_STATES; state++)
			for (size_t s = 0; s < b->n_stacks; s++) {
				json_t *per = json_object();
				double lfs = 0;
				struct cell *lc = cell_at(b, s, w, state, SYS_LAYERFS);
				if (lc->n)
					lfs = cell_value(lc);
				for (int k = 0; k < N_SYS; k++) {
					struct cell *c = cell_at(b, s, w, state, k);
					if (!c->n)
						continue;
					double v = cell_value(c);
					json_t *sj = json_object(), *smp = json_array();
					for (size_t i = 0; i < c->n; i++)
						json_array_append_new(smp, json_real(c->v[i]));
					json_object_set_new(sj, "value", json_real(v));
					json_object_set_new(sj, "samples", smp);
					json_object_set_new(sj, "bad", json_integer((json_int_t)c->bad));
					if (lfs > 0 && v > 0)
						json_object_set_new(sj, "ratio",
								    json_real(v / lfs));
					if (c->ctr_passes)
						json_object_set_new(sj, "counters",
							json_counters(c, b->stacks[s].n_layers));
					json_object_set_new(per, sys_name[k], sj);
				}
				if (json_object_size(per) == 0) {
					json_decref(per);
					continue;
				}
				json_array_append_new(results, json_pack(
					"{s:s, s:s, s:s, s:s, s:i, s:o}",
					"workload", workloads[w].key,
					"title", workloads[w].title,
					"unit", workloads[w].unit,
					"state", state_name[state],
					"layers", (json_int_t)b->stacks[s].n_layers,
					"systems", per));
			}
	json_object_set_new(root, "results", results);
	for (size_t i = 0; i < b->notes.n; i++)
		json_array_append_new(notes, json_string(b->notes.v[i]));
	json_object_set_new(root, "notes", notes);
	json_object_set_new(root, "seconds",
			    json_real((double)(now_ns() - b->t0) / 1e9));
	return root;
}

/* ---- the plot ---------------------------------------------------------- */

static const char *const sys_color[N_SYS] = { "#1f77b4", "#2ca02c", "#d62728" };

struct axis {
	double lo, hi;      /* data range, log scale */
	double p0, p1;      /* pixels */
};

static double axis_px(const struct axis *a, double v)
{
	return a->p0 + (ln(v) - ln(a->lo)) / (ln(a->hi) - ln(a->lo)) *
		       (a->p1 - a->p0);
}

static void svg_fmt(char *buf, size_t size, double v)
{
	if (v >= 1)
		snprintf(buf, size, "%.0f", v);
	else
		snprintf(buf, size, "%g", v);
}

/*
 * An SVG of lookup time (µs per lookup, log scale) against layer count
 * (log scale), one panel per state (cold, warm), one colour per system;
 * solid lines for bottom-layer files, dashed for negative lookups.
 */
static int write_plot(struct bench *b, const char *path, char err[ERRLEN])
{
	static const int series[] = { WL_STAT_BOTTOM, WL_NEGATIVE };
	const double pw = 420, ph = 300, left = 80, top = 84, gap = 90;
	int states[N_STATES], n_states = 0;
	double vmin = 0, vmax = 0;
	unsigned lmin = UINT_MAX, lmax = 0;

	for (int state = 0; state < N_STATES; state++) {
		bool any = false;
		for (size_t s = 0; s < b->n_stacks; s++)
			for (size_t i = 0; i < 2; i++)
				for (int k = 0; k < N_SYS; k++) {
					struct cell *c = cell_at(b, s, series[i], state, k);
					if (!c->n)
						continue;
					double v = cell_value(c);
					if (v <= 0)
						continue;
					any = true;
					vmin = vmin == 0 || v < vmin ? v : vmin;
					vmax = v > vmax ? v : vmax;
					unsigned l = b->stacks[s].n_layers;
					lmin = l < lmin ? l : lmin;
					lmax = l > lmax ? l : lmax;
				}
		if (any)
			states[n_states++] = state;
	}
	if (n_states == 0) {
		snprintf(err, ERRLEN, "--plot: no lookup figures to plot");
		return -ENODATA;
	}
	/* Whole decades on y; a little room either side on x. */
	struct axis y = { 1, 10, top + ph, top };
	while (y.lo > vmin)
		y.lo /= 10;
	while (y.lo * 10 <= vmin)
		y.lo *= 10;
	y.hi = y.lo * 10;
	while (y.hi < vmax)
		y.hi *= 10;
	struct axis x = { lmin / 1.25, lmax * 1.25, 0, pw };

	double width = left + n_states * (pw + gap), height = top + ph + 120;
	char *tmp = xprintf("%s.tmp", path);
	FILE *f = tmp ? fopen(tmp, "we") : NULL;
	char buf[64];

	if (!f) {
		snprintf(err, ERRLEN, "--plot: %s: %s", tmp ? tmp : path,
			 strerror(tmp ? errno : ENOMEM));
		free(tmp);
		return -EIO;
	}
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
		"height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
		"font-family=\"sans-serif\" font-size=\"12\">\n"
		"<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
		"<text x=\"%.0f\" y=\"24\" font-size=\"16\">layerctl bench: "
		"lookup time against layer count</text>\n"
		"<text x=\"%.0f\" y=\"44\" fill=\"#555\">\u00b5s per lookup "
		"(median), log scales; solid: stat of bottom-layer files, "
		"dashed: negative lookups</text>\n",
		width, height, width, height, left, left);
	for (int p = 0; p < n_states; p++) {
		int state = states[p];
		double ox = left + p * (pw + gap);
		x.p0 = ox;
		x.p1 = ox + pw;
		fprintf(f, "<g>\n<text x=\"%.1f\" y=\"%.1f\" font-weight=\"bold\">"
			"%s</text>\n", ox, top - 10, state == COLD
			? "cold: caches dropped, fresh mount"
			: "warm: the same mount, again");
		fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
			"height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n",
			ox, top, pw, ph);
		/* y grid and labels: 1, 2, 5 per decade */
		for (double d = y.lo; d < y.hi * 1.01; d *= 10)
			for (int m = 1; m <= 5; m += m == 1 ? 1 : 3) {
				double v = d * m, py;
				if (v > y.hi * 1.01)
					break;
				py = axis_px(&y, v);
				fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
					"y2=\"%.1f\" stroke=\"%s\"/>\n", ox, py,
					ox + pw, py, m == 1 ? "#ccc" : "#eee");
				svg_fmt(buf, sizeof(buf), v);
				fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" "
					"text-anchor=\"end\">%s</text>\n",
					ox - 6, py + 4, buf);
			}
		/* x ticks at the measured heights */
		for (size_t s = 0; s < b->n_stacks; s++) {
			double px = axis_px(&x, b->stacks[s].n_layers);
			fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
				"y2=\"%.1f\" stroke=\"#eee\"/>\n<text x=\"%.1f\" "
				"y=\"%.1f\" text-anchor=\"middle\">%u</text>\n",
				px, top, px, top + ph, px, top + ph + 16,
				b->stacks[s].n_layers);
		}
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">"
			"layers</text>\n", ox + pw / 2, top + ph + 34);
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
			"transform=\"rotate(-90 %.1f %.1f)\">\u00b5s per lookup"
			"</text>\n", ox - 50, top + ph / 2, ox - 50, top + ph / 2);
		for (int k = 0; k < N_SYS; k++)
			for (size_t i = 0; i < 2; i++) {
				bool started = false;
				for (size_t s = 0; s < b->n_stacks; s++) {
					struct cell *c = cell_at(b, s, series[i], state, k);
					if (!c->n || cell_value(c) <= 0)
						continue;
					if (!started)
						fprintf(f, "<polyline fill=\"none\" "
							"stroke=\"%s\" stroke-width=\"2\"%s "
							"points=\"", sys_color[k], i
							? " stroke-dasharray=\"6 4\"" : "");
					fprintf(f, "%s%.1f,%.1f", started ? " " : "",
						axis_px(&x, b->stacks[s].n_layers),
						axis_px(&y, cell_value(c)));
					started = true;
				}
				if (started)
					fprintf(f, "\"/>\n");
				for (size_t s = 0; s < b->n_stacks; s++) {
					struct cell *c = cell_at(b, s, series[i], state, k);
					if (!c->n || cell_value(c) <= 0)
						continue;
					fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" "
						"r=\"3.5\" fill=\"%s\" stroke=\"%s\" "
						"stroke-width=\"1.5\"><title>%s, %s, "
						"%u layers: %.3g \u00b5s</title></circle>\n",
						axis_px(&x, b->stacks[s].n_layers),
						axis_px(&y, cell_value(c)),
						i ? "white" : sys_color[k], sys_color[k],
						sys_name[k],
						i ? "negative lookup" : "bottom-layer file",
						b->stacks[s].n_layers, cell_value(c));
				}
			}
		fprintf(f, "</g>\n");
	}
	/* legend */
	double lx = left, ly = top + ph + 70;
	for (int k = 0; k < N_SYS; k++) {
		if (!b->active[k])
			continue;
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
			"stroke=\"%s\" stroke-width=\"3\"/>\n<text x=\"%.1f\" "
			"y=\"%.1f\">%s</text>\n", lx, ly, lx + 30, ly,
			sys_color[k], lx + 38, ly + 4,
			k == SYS_KERNEL ? "kernel overlayfs" : sys_name[k]);
		lx += 190;
	}
	fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">%s</text>\n",
		left, ly + 28, b->index_dir
		? "layerfs with its layer index cache recorded beforehand"
		: "layerfs without its layer index cache");
	fprintf(f, "</svg>\n");
	bool failed = fflush(f) != 0 || ferror(f);
	failed |= fclose(f) != 0;
	if (failed || rename(tmp, path) < 0) {
		snprintf(err, ERRLEN, "--plot: %s: %s", path, strerror(errno));
		unlink(tmp);
		free(tmp);
		return -EIO;
	}
	free(tmp);
	return 0;
}

/* ------------------------------------------------------------------ */
/* the verb                                                            */

/* bin/layerfs next to this program, else layerfs on PATH (as mount.c). */
static char *find_layerfs(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			char *p = xprintf("%s/layerfs", self);
			if (p && access(p, X_OK) == 0)
				return p;
			free(p);
		}
	}
	return NULL;
}

/* An executable name on PATH (owned), or NULL. */
static char *find_on_path(const char *name)
{
	const char *path = getenv("PATH");
	char *copy = strdup(path && path[0] ? path : "/usr/local/bin:/usr/bin:/bin");
	char *save = NULL, *found = NULL;

	for (char *d = copy ? strtok_r(copy, ":", &save) : NULL; d && !found;
	     d = strtok_r(NULL, ":", &save)) {
		char *p = xprintf("%s/%s", d, name);
		struct stat sb;
		if (p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode) &&
		    access(p, X_OK) == 0)
			found = p;
		else
			free(p);
	}
	free(copy);
	return found;
}

/* Leftovers of an interrupted run: temporary layers and stack dirs. */
static void remove_stale(struct bench *b, const char *sub)
{
	char *d = xprintf("%s/%s", b->dir, sub);
	DIR *dir = d ? opendir(d) : NULL;
	struct dirent *de;

	while (dir && (de = readdir(dir)))
		if (!strncmp(de->d_name, ".tmp-", 5)) {
			char *p = xprintf("%s/%s", d, de->d_name);
			if (p)
				remove_tree(p);
			free(p);
		}
	if (dir)
		closedir(dir);
	free(d);
}

/* Which systems run, and whether cold figures can be had. */
static int choose_systems(struct bench *b, char err[ERRLEN])
{
	const struct options *o = b->o;
	int n = 0;

	b->program[SYS_LAYERFS] = find_layerfs();
	if (!b->program[SYS_LAYERFS])
		b->program[SYS_LAYERFS] = find_on_path("layerfs");
	b->program[SYS_FUSE] = find_on_path("fuse-overlayfs");
	for (int k = 0; k < N_SYS; k++) {
		if (!o->want[k])
			continue;
		if (k == SYS_KERNEL && !b->root)
			note(b, "kernel overlayfs skipped: mounting it needs root");
		else if (k != SYS_KERNEL && !b->program[k])
			note(b, "%s skipped: not found%s", sys_name[k],
			     k == SYS_LAYERFS ? " next to layerctl or on PATH"
					      : " on PATH");
		else
			b->active[k] = true, n++;
	}
	if (n == 0)
		return bad_arg(err, "no system to measure (see the notes: %s)",
			       b->notes.n ? b->notes.v[b->notes.n - 1] : "");
	b->cold = !o->no_cold;
	if (b->cold && !b->root) {
		b->cold = false;
		note(b, "cold figures skipped: dropping caches needs root");
	} else if (b->cold && access("/proc/sys/vm/drop_caches", W_OK) < 0) {
		b->cold = false;
		note(b, "cold figures skipped: /proc/sys/vm/drop_caches is not "
		     "writable here");
	}
	if (!b->cold && o->warm == 0)
		return bad_arg(err, "without cold figures, --warm 0 leaves "
			       "nothing to measure");
	return 0;
}

static void bench_free(struct bench *b)
{
	for (size_t s = 0; s < b->n_stacks; s++)
		stack_free(&b->stacks[s]);
	free(b->stacks);
	size_t n_cells = b->n_stacks * N_WL * N_STATES * N_SYS;

	for (size_t i = 0; b->cells && i < n_cells; i++) {
		free(b->cells[i].v);
		free(b->cells[i].per_layer);
	}
	free(b->cells);
	free(b->failed);
	for (int k = 0; k < N_SYS; k++) {
		free(b->program[k]);
		free(b->mnt[k]);
	}
	free(b->dir);
	free(b->index_dir);
	strv_free(&b->notes);
}

int cmd_bench(struct store *s, int argc, char **argv)
{
	struct options o;
	struct bench b = { .o = &o, .store = s, .t0 = now_ns() };
	struct sigaction sa = { .sa_handler = on_signal }, old[3];
	static const int sigs[3] = { SIGINT, SIGTERM, SIGHUP };
	char err[ERRLEN] = "";
	bool help;
	int lock = -1, rc = 0;

	/* bench reads the store only for --image: leave no new one behind. */
	store_undo_skeleton(s);
	if (parse_args(&o, argc, argv, &help, err) < 0)
		return fail_verb("bench", err);
	if (help) {
		fputs(USAGE, stdout);
		return 0;
	}
	b.root = geteuid() == 0;
	b.tty = isatty(2);
	if (choose_systems(&b, err) < 0) {
		bench_free(&b);
		return fail_verb("bench", err);
	}

	/* DIR, locked: runs share its stacks and mount points. */
	char *dir = o.dir ? strdup(o.dir)
		  : b.root ? strdup("/var/tmp/layerfs-bench-ctl")
			   : xprintf("/var/tmp/layerfs-bench-ctl-%u",
				     (unsigned)geteuid());
	char *lockp = NULL;
	if (!dir || make_dirs(dir, 0755) < 0 || !(b.dir = realpath(dir, NULL))) {
		snprintf(err, ERRLEN, "--dir %s: %s", dir ? dir : "",
			 strerror(dir ? errno : ENOMEM));
		rc = -EINVAL;
	}
	free(dir);
	if (rc == 0 && (!(lockp = xprintf("%s/.lock", b.dir)) ||
			(lock = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0 ||
			flock(lock, LOCK_EX | LOCK_NB) < 0)) {
		snprintf(err, ERRLEN, errno == EWOULDBLOCK
			 ? "another layerctl bench is using %s" : "%s: %s",
			 b.dir, strerror(errno));
		rc = -EBUSY;
	}
	free(lockp);
	for (int k = 0; rc == 0 && k < N_SYS; k++) {
		b.mnt[k] = xprintf("%s/mnt/%s", b.dir, sys_name[k]);
		if (!b.mnt[k] || make_dirs(b.mnt[k], 0755) < 0) {
			snprintf(err, ERRLEN, "%s: %s", b.mnt[k] ? b.mnt[k] : "",
				 strerror(b.mnt[k] ? errno : ENOMEM));
			rc = -EIO;
		}
	}
	if (rc == 0 && !o.no_index_cache &&
	    !(b.index_dir = xprintf("%s/index", b.dir)))
		rc = -ENOMEM;
	if (rc == 0) {
		char *l = xprintf("%s/layers", b.dir), *t = xprintf("%s/stacks", b.dir);
		if (!l || !t || make_dirs(l, 0755) < 0 || make_dirs(t, 0755) < 0) {
			snprintf(err, ERRLEN, "%s: %s", b.dir, strerror(errno));
			rc = -EIO;
		}
		free(l);
		free(t);
	}
	if (rc < 0) {
		if (lock >= 0)
			close(lock);
		bench_free(&b);
		return fail_verb("bench", err[0] ? err : strerror(-rc));
	}

	/* From here on every way out unmounts. */
	sigemptyset(&sa.sa_mask);
	for (int i = 0; i < 3; i++)
		sigaction(sigs[i], &sa, &old[i]);
	prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	unmount_all(&b);
	remove_stale(&b, "layers");
	remove_stale(&b, "stacks");

	bool taken = o.lowerdir || o.image;
	b.n_stacks = taken ? 1 : o.n_layers;
	b.stacks = calloc(b.n_stacks, sizeof(*b.stacks));
	b.cells = calloc(b.n_stacks * N_WL * N_STATES * N_SYS, sizeof(*b.cells));
	b.failed = calloc(b.n_stacks * N_SYS, sizeof(*b.failed));
	if (!b.stacks || !b.cells || !b.failed) {
		snprintf(err, ERRLEN, "out of memory");
		rc = -ENOMEM;
	}
	if (rc == 0)
		rc = taken ? setup_taken(&b, err) : setup_generated(&b, err);
	for (size_t i = 0; rc == 0 && i < b.n_stacks; i++)
		rc = resolve_stack(&b, &b.stacks[i], err);
	if (rc == 0) {
		int n_active = 0;
		for (int k = 0; k < N_SYS; k++)
			n_active += b.active[k];
		b.n_steps = b.n_stacks * (N_WL - 1) * o.reps * (size_t)n_active;
		for (size_t i = 0; i < b.n_stacks && !interrupted; i++)
			run_stack(&b, i);
	}
	unmount_all(&b);
	progress_done(&b);
	for (int i = 0; i < 3; i++)
		sigaction(sigs[i], &old[i], NULL);
	if (interrupted) {
		close(lock);
		bench_free(&b);
		fail_verb("bench", "interrupted; everything is unmounted");
		return 130;
	}
	if (rc == 0 && o.plot && write_plot(&b, o.plot, err) < 0)
		rc = -EIO;
	if (rc == 0 && o.json) {
		json_t *j = json_report(&b);
		if (!j || json_dumpf(j, stdout, JSON_INDENT(1) |
				     JSON_REAL_PRECISION(6)) < 0) {
			snprintf(err, ERRLEN, "writing JSON failed");
			rc = -EIO;
		}
		printf("\n");
		json_decref(j);
	} else if (rc == 0) {
		print_table(&b);
	}
	if (rc == 0 && fflush(stdout) != 0) {
		snprintf(err, ERRLEN, "writing the report: %s", strerror(errno));
		rc = -EIO;
	}
	bool measured = false;
	for (size_t i = 0; rc == 0 && i < b.n_stacks * N_WL * N_STATES * N_SYS; i++)
		measured |= b.cells[i].n > 0;
	if (rc == 0 && !measured) {
		snprintf(err, ERRLEN, "nothing could be measured (see the notes)");
		rc = -EIO;
	}
	close(lock);
	bench_free(&b);
	return rc < 0 ? fail_verb("bench", err) : 0;
}
