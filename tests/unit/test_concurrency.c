/*
 * test_concurrency.c - many threads on one filesystem.
 *
 * Threads look up paths, list directories, take and drop extra references
 * and read through cached data fds, all at once on a fresh fs (so directory
 * indexes are built while others wait for them).  Every answer is compared
 * with what a second fs instance gave single-threaded.  Afterwards no node
 * may be alive: every reference taken was dropped, so each node must have
 * been freed by lfs_node_unref, not left for lfs_fs_free (this one check
 * reads the core's internals).  ASan and valgrind catch the rest.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "layerfs_i.h"

#define N_THREADS 8
#define N_ITER 1000

struct expect {
	char *path;
	uint64_t ino;
	bool is_dir;
	char *listing;     /* dir: sorted names, space-separated */
	char *content;     /* regular file */
};

struct shared {
	struct lfs_fs *fs;
	struct expect *e;
	size_t n;
	pthread_barrier_t start;
};

struct worker {
	struct shared *sh;
	int id;
	unsigned errors;
	char first[256];
	unsigned long ops;
};

__attribute__((format(printf, 2, 3)))
static void werr(struct worker *w, const char *fmt, ...)
{
	va_list ap;

	if (w->errors++ == 0) {
		va_start(ap, fmt);
		vsnprintf(w->first, sizeof(w->first), fmt, ap);
		va_end(ap);
	}
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted listing of node, or NULL on error; *ret_err gets problems. */
static char *listing(struct lfs_fs *fs, struct lfs_node *node, int *ret_err,
		     bool check_inos)
{
	struct lfs_dir *d;
	struct lfs_dirent de;
	char *names[256];
	size_t n = 0, len = 1;
	off_t off = 0;
	int r;

	*ret_err = 0;
	if ((r = lfs_opendir(fs, node, &d)) < 0) {
		*ret_err = r;
		return NULL;
	}
	while ((r = lfs_readdir_at(d, off, &de)) == 1 && n < 256) {
		off = de.next_off;
		if (off <= 2)
			continue;
		if (check_inos) {
			struct lfs_node *child;
			struct stat st;
			int lr = lfs_lookup(fs, node, de.name, &child, &st);
			if (lr < 0 || st.st_ino != de.ino)
				*ret_err = lr < 0 ? lr : -EIO;
			if (lr == 0)
				lfs_node_unref(fs, child, 1);
		}
		names[n] = strdup(de.name);
		len += strlen(de.name) + 1;
		n++;
	}
	lfs_closedir(fs, d);
	if (r < 0)
		*ret_err = r;
	qsort(names, n, sizeof(*names), name_cmp);
	char *out = malloc(len);
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i)
			strcat(out, " ");
		strcat(out, names[i]);
		free(names[i]);
	}
	return out;
}

static char *read_all(struct lfs_fs *fs, struct lfs_node *node, bool data_fd)
{
	char buf[256];
	bool owned = true;
	int fd = -1;
	ssize_t n;

	if (data_fd) {
		if (lfs_data_fd(fs, node, &fd, &owned) < 0)
			return NULL;
	} else if ((fd = lfs_open(fs, node, O_RDONLY)) < 0) {
		return NULL;
	}
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (owned)
		close(fd);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	return strdup(buf);
}

static void *work(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = w->sh;
	struct lfs_fs *fs = sh->fs;
	uint64_t s = 0x12345u + (uint64_t)w->id * 7919u;

	pthread_barrier_wait(&sh->start);
	for (int it = 0; it < N_ITER; it++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		const struct expect *e = &sh->e[(s >> 33) % sh->n];
		int action = (int)((s >> 20) % 5);
		struct lfs_node *node;
		struct stat st;
		int r = t_walk(fs, e->path, &node, &st);

		w->ops++;
		if (r < 0) {
			werr(w, "lookup %s: %s", e->path, t_errname(-r));
			continue;
		}
		if (st.st_ino != e->ino)
			werr(w, "%s: st_ino %llu, want %llu", e->path,
			     (unsigned long long)st.st_ino,
			     (unsigned long long)e->ino);
		if (action == 0 && e->is_dir) {
			int err;
			char *ls = listing(fs, node, &err, (s >> 40) & 1);
			if (!ls || err || strcmp(ls, e->listing) != 0)
				werr(w, "ls %s: \"%s\" (%s), want \"%s\"", e->path,
				     ls ? ls : "", err ? t_errname(-err) : "ok",
				     e->listing);
			free(ls);
		} else if (action == 1) {
			/* the kernel's lookup count: several refs, one forget */
			lfs_node_ref(fs, node);
			lfs_node_ref(fs, node);
			if (lfs_getattr(fs, node, &st) < 0 || st.st_ino != e->ino)
				werr(w, "getattr %s", e->path);
			lfs_node_unref(fs, node, 2);
		} else if (action == 2 && e->content) {
			char *c = read_all(fs, node, (s >> 41) & 1);
			if (!c || strcmp(c, e->content) != 0)
				werr(w, "read %s: \"%s\"", e->path, c ? c : "");
			free(c);
		} else if (action == 3 && e->is_dir) {
			struct lfs_node *child;
			r = lfs_lookup(fs, node, "no-such-name", &child, &st);
			if (r != -ENOENT)
				werr(w, "%s/no-such-name: %d", e->path, r);
			r = lfs_lookup(fs, node, ".wh.f0", &child, &st);
			if (r != -ENOENT)
				werr(w, "%s/.wh.f0: %d", e->path, r);
		} else if (action == 4 && e->is_dir) {
			/* readdir without a handle, while others use one */
			struct lfs_dirent de;
			off_t off = 0;
			size_t count = 0;
			while ((r = lfs_readdir_node(fs, node, off, &de)) == 1) {
				off = de.next_off;
				count++;
			}
			size_t want = 2;
			for (const char *p = e->listing; *p; p++)
				want += *p == ' ';
			want += e->listing[0] != '\0';
			if (r < 0 || count != want)
				werr(w, "readdir_node %s: %zu entries, want %zu",
				     e->path, count, want);
		}
		lfs_node_unref(fs, node, 1);
	}
	return NULL;
}

static void collect(struct t *t, struct lfs_fs *fs, const char *dir,
		    struct expect **v, size_t *n, size_t *cap)
{
	struct t_dirent *ents;
	size_t ne = t_readdir(t, fs, dir, &ents);

	for (size_t i = 2; i < ne; i++) {
		char *path = dir[0] ? t_printf(t, "%s/%s", dir, ents[i].name)
				    : ents[i].name;
		struct stat st = t_stat(t, fs, path);
		if (*n == *cap) {
			*cap = *cap ? 2 * *cap : 64;
			struct expect *grown = t_own(t, calloc(*cap, sizeof(**v)));
			if (*n)
				memcpy(grown, *v, *n * sizeof(**v));
			*v = grown;
		}
		struct expect *e = &(*v)[(*n)++];
		e->path = path;
		e->ino = st.st_ino;
		e->is_dir = S_ISDIR(st.st_mode);
		e->listing = e->is_dir ? t_ls(t, fs, path) : NULL;
		e->content = S_ISREG(st.st_mode) ? t_cat(t, fs, path) : NULL;
		if (e->is_dir)
			collect(t, fs, path, v, n, cap);
	}
}

/* Live nodes under a directory node (internals: index entries' nodes). */
static size_t live_nodes(struct lfs_node *dir)
{
	struct lfs_dirindex *index = atomic_load(&dir->index);
	size_t n = 0;

	for (size_t i = 0; index && i < index->n_visible; i++) {
		struct lfs_node *child = index->visible[i]->node;
		if (child)
			n += 1 + live_nodes(child);
	}
	return n;
}

TEST(concurrent_lookups_listings_and_unrefs)
{
	char *spec = t_printf(t, "%s", "");

	for (int d = 0; d < 6; d++) {
		for (int f = 0; f < 10; f++)
			spec = t_printf(t, "%sL%d f d%d/f%d \"%d/%d@%d\"\n", spec,
					(d + f) % 5, d, f, d, f, (d + f) % 5);
		for (int s = 0; s < 3; s++)
			spec = t_printf(t, "%sL%d f d%d/s%d/g \"g%d\"\nL%d d d%d/s%d\n",
					spec, s, d, s, s, (s + 2) % 5, d, s);
		/* f<6 - d%5> lives in L1: white it out in L0 */
		spec = t_printf(t, "%sL0 wh d%d/f%d\nL2 opq d%d/s1\n", spec, d,
				6 - d % 5, d);
	}
	int n_layers = t_build(t, t_tmp(t), spec);
	struct lfs_fs *ref = t_open(t, t_tmp(t), n_layers);
	struct expect *e = NULL;
	size_t n = 0, cap = 0;
	collect(t, ref, "", &e, &n, &cap);
	CHECK_INT(n, 6 * (1 + 9 + 3 + 3));

	/* a fresh fs, not freed by the harness: its teardown is checked */
	struct lfs_stack *stack;
	struct lfs_fs *fs;
	char err[LFS_ERRLEN];
	char **paths = t_own(t, calloc((size_t)n_layers, sizeof(*paths)));
	for (int i = 0; i < n_layers; i++)
		paths[i] = t_layer_path(t, t_tmp(t), i);
	CHECK_OK(lfs_stack_open(&stack, paths, (size_t)n_layers, err));
	struct lfs_fs_config config = { .read_only = true, .max_data_fds = 16 };
	CHECK_OK(lfs_fs_new(&fs, stack, &config, (char[LFS_ERRLEN]){ 0 }));

	struct shared sh = { .fs = fs, .e = e, .n = n };
	struct worker w[N_THREADS];
	pthread_t th[N_THREADS];
	pthread_barrier_init(&sh.start, NULL, N_THREADS);
	for (int i = 0; i < N_THREADS; i++) {
		w[i] = (struct worker){ .sh = &sh, .id = i };
		if (pthread_create(&th[i], NULL, work, &w[i]) != 0)
			FAIL("pthread_create: %s", strerror(errno));
	}
	for (int i = 0; i < N_THREADS; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&sh.start);

	unsigned errors = 0;
	const char *first = "";
	for (int i = 0; i < N_THREADS; i++) {
		if (w[i].errors && !errors)
			first = w[i].first;
		errors += w[i].errors;
	}
	size_t live = live_nodes(lfs_fs_root(fs));
	unsigned data_fds = atomic_load(&fs->n_data_fds);
	lfs_fs_free(fs);
	CHECKF(errors == 0, "%u wrong answers, first: %s", errors, first);
	CHECKF(live == 0, "%zu nodes still alive after every reference was "
			  "dropped", live);
	CHECKF(data_fds == 0, "%u cached data fds still counted", data_fds);
}
