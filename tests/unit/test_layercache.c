/*
 * test_layercache.c - the per-layer index cache (fs/layercache.c).
 *
 * The cache may change how fast a directory is indexed, never what the
 * merge shows: every test here compares a cached mount with an uncached
 * one of the same layers, and checks that a cache which no longer fits
 * its layer is not used.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "layerfs_i.h"

/* Every rule's format in one stack, so a cache must record each of them. */
static const char *const rules_spec =
	"L0 f etc/os-release \"top\"\n"
	"L0 wh etc/gone\n"
	"L0 ociwh usr/old\n"
	"L0 opq opaque\n"
	"L0 f opaque/mine \"0\"\n"
	"L0 ociopq ociopaque\n"
	"L0 f ociopaque/mine \"0\"\n"
	"L0 xwh xw/hidden\n"
	"L0 l link -> etc/os-release\n"
	"L0 h etc/hard = etc/os-release\n"
	"L0 p fifo\n"
	"L1 f etc/os-release \"mid\"\n"
	"L1 f etc/gone \"mid\"\n"
	"L1 f usr/old \"mid\"\n"
	"L1 f usr/kept \"mid\"\n"
	"L1 f opaque/below \"1\"\n"
	"L1 f ociopaque/below \"1\"\n"
	"L1 f xw/hidden \"1\"\n"
	"L1 f xw/shown \"1\"\n"
	"L2 d deep/a/b/c\n"
	"L2 f deep/a/b/c/leaf \"2\"\n"
	"L2 f etc/base \"2\"\n";

/* Layer i of base renamed to a digest-like name so it gets cached. */
static char *digest_layer(struct t *t, const char *base, int i)
{
	char *from = t_layer_path(t, base, i);
	char *to = t_printf(t, "%s/%064x", base, i + 1);

	CHECKF(rename(from, to) == 0, "rename %s: %s", from, strerror(errno));
	return to;
}

static struct lfs_fs *open_cached(struct t *t, char **paths, int n,
				  const char *cache_dir)
{
	struct lfs_stack *stack;
	struct lfs_fs *fs;
	char err[LFS_ERRLEN];
	struct lfs_fs_config config = {
		.read_only = true,
		.max_data_fds = 16,
		.index_cache_dir = cache_dir,
	};

	CHECK_OK(lfs_stack_open(&stack, paths, (size_t)n, err));
	CHECK_OK(lfs_fs_new(&fs, stack, &config, (char[LFS_ERRLEN]){ 0 }));
	return fs;
}

/* Mount once with background building, so the caches get written. */
static void build_caches(struct t *t, char **paths, int n,
			 const char *cache_dir)
{
	struct lfs_fs *fs = open_cached(t, paths, n, cache_dir);

	CHECK_OK(lfs_fs_start_background(fs));
	lfs_fs_finish_background(fs);
	lfs_fs_free(fs);
}

static int count_idx_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	if (!d)
		return 0;
	while ((de = readdir(d)))
		n += strstr(de->d_name, ".idx") && de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* A canonical dump of the merged tree: path, attributes, providing layer. */
static void dump_tree(struct t *t, struct lfs_fs *fs, const char *path,
		      char **out, size_t *len)
{
	struct t_dirent *ents;
	size_t n = t_readdir(t, fs, path, &ents);

	for (size_t i = 2; i < n; i++) {
		char *child = path[0] ? t_printf(t, "%s/%s", path, ents[i].name)
				      : t_printf(t, "%s", ents[i].name);
		struct stat st = t_stat(t, fs, child);
		/* Everything stat reports but atime, which reads change. */
		char *line = t_printf(
			t, "%s %o %u %lld %llu %u:%u n%lu b%lld r%llu m%lld.%ld c%lld.%ld\n",
			child, st.st_mode, t_layer(t, fs, child),
			(long long)st.st_size, (unsigned long long)st.st_ino,
			st.st_uid, st.st_gid, (unsigned long)st.st_nlink,
			(long long)st.st_blocks, (unsigned long long)st.st_rdev,
			(long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
			(long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
		size_t l = strlen(line);
		*out = realloc(*out, *len + l + 1);
		CHECK(*out);
		memcpy(*out + *len, line, l + 1);
		*len += l;
		if (S_ISDIR(st.st_mode))
			dump_tree(t, fs, child, out, len);
	}
}

static char *dump(struct t *t, struct lfs_fs *fs)
{
	char *out = NULL;
	size_t len = 0;

	dump_tree(t, fs, "", &out, &len);
	return t_own(t, out ? out : strdup(""));
}

static void free_fs(void *fs, void *unused)
{
	(void)unused;
	lfs_fs_free(fs);
}

static struct lfs_fs *owned(struct t *t, struct lfs_fs *fs)
{
	t_defer(t, free_fs, fs, NULL);
	return fs;
}

/* rules_spec in t_tmp with digest-named layers; returns the number of
 * layers (paths filled) and where their caches go. */
static int rules_stack(struct t *t, char *paths[3], char **ret_cache)
{
	const char *base = t_tmp(t);
	int n = t_build(t, base, rules_spec);

	CHECK(n <= 3);
	for (int i = 0; i < n; i++)
		paths[i] = digest_layer(t, base, i);
	*ret_cache = t_printf(t, "%s/cache", base);
	return n;
}

TEST(layer_cache_is_written_for_digest_layers_and_then_used)
{
	char *paths[3], *cache;
	int n = rules_stack(t, paths, &cache);
	struct lfs_fs *live = owned(t, open_cached(t, paths, n, NULL));
	build_caches(t, paths, n, cache);
	CHECK_INT(count_idx_files(cache), n);

	struct lfs_fs *cached = owned(t, open_cached(t, paths, n, cache));
	for (int i = 0; i < n; i++)
		CHECKF(lfs_fs_layercache(cached, (uint32_t)i) != NULL,
		       "layer %d has no cache", i);
	CHECK_STR(dump(t, cached), dump(t, live));
	/* ... and attributes come from the records, not the layers. */
	CHECK(t_node(t, cached, "etc/os-release")->stat_rec != NULL);
	CHECK(t_node(t, live, "etc/os-release")->stat_rec == NULL);
	CHECK_STR(t_ls(t, cached, "opaque"), "mine");
	CHECK_STR(t_ls(t, cached, "xw"), "shown");
	CHECK_ERR(t_lookup(cached, "etc/gone"), ENOENT);
}

TEST(layer_cache_of_a_changed_layer_is_not_used)
{
	char *paths[3], *cache;
	int n = rules_stack(t, paths, &cache);
	build_caches(t, paths, n, cache);
	/* A new name in layer 1's root changes that root's ctime. */
	char *added = t_printf(t, "%s/added", paths[1]);
	int fd = open(added, O_CREAT | O_WRONLY, 0644);
	CHECK(fd >= 0);
	close(fd);

	struct lfs_fs *fs = owned(t, open_cached(t, paths, n, cache));
	CHECK(lfs_fs_layercache(fs, 0) != NULL);
	CHECK(lfs_fs_layercache(fs, 1) == NULL);
	CHECK_OK(t_lookup(fs, "added"));
}

TEST(damaged_layer_cache_is_not_used)
{
	char *paths[3], *cache;
	int n = rules_stack(t, paths, &cache);
	struct lfs_fs *live = owned(t, open_cached(t, paths, n, NULL));
	build_caches(t, paths, n, cache);

	/* Layer 0: cut short.  Layer 2: a record's length made absurd. */
	char *f0 = t_printf(t, "%s/%064x.idx", cache, 1);
	struct stat st;
	CHECK(stat(f0, &st) == 0);
	CHECK(truncate(f0, st.st_size - 3) == 0);
	char *f2 = t_printf(t, "%s/%064x.idx", cache, 3);
	int fd = open(f2, O_RDWR);
	CHECK(fd >= 0);
	uint32_t huge = 0xfffffff0u;
	/* The first directory record (its path_len first) starts right
	 * after the 120-byte header. */
	CHECK(pwrite(fd, &huge, sizeof(huge), 120) == (ssize_t)sizeof(huge));
	close(fd);

	struct lfs_fs *fs = owned(t, open_cached(t, paths, n, cache));
	CHECK(lfs_fs_layercache(fs, 0) == NULL);
	CHECK(lfs_fs_layercache(fs, 1) != NULL);
	CHECK(lfs_fs_layercache(fs, 2) == NULL);
	CHECK_STR(dump(t, fs), dump(t, live));
}

/* A chain of `depth` directories "a/a/a/..." under dir. */
static void make_chain(struct t *t, const char *dir, int depth)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);

	CHECK(fd >= 0);
	for (int i = 0; i < depth; i++) {
		CHECK(mkdirat(fd, "a", 0755) == 0);
		int next = openat(fd, "a", O_RDONLY | O_DIRECTORY);
		close(fd);
		CHECK(next >= 0);
		fd = next;
	}
	close(fd);
}

/* Remove a chain made by make_chain: fd by fd, since its paths are too
 * long for path-based removal. */
static void remove_chain(void *dir, void *depth_ptr)
{
	int depth = *(int *)depth_ptr;
	int *fds = calloc((size_t)depth + 1, sizeof(*fds));

	if (!fds)
		return;
	fds[0] = open(dir, O_RDONLY | O_DIRECTORY);
	int n = 0;
	while (n < depth && fds[n] >= 0 &&
	       (fds[n + 1] = openat(fds[n], "a", O_RDONLY | O_DIRECTORY)) >= 0)
		n++;
	for (int i = n; i > 0; i--) {
		close(fds[i]);
		unlinkat(fds[i - 1], "a", AT_REMOVEDIR);
	}
	if (fds[0] >= 0)
		close(fds[0]);
	free(fds);
}

/* Nesting is data: no depth may exhaust the builder (it once recursed
 * per level), and a tree deeper than PATH_MAX is simply not cached. */
TEST(deeply_nested_layers_are_cached_or_skipped_without_crashing)
{
	const char *base = t_tmp(t);
	char *cache = t_printf(t, "%s/cache", base);
	char *paths[2];

	for (int i = 0; i < 2; i++) {
		paths[i] = t_printf(t, "%s/%064x", base, i + 1);
		CHECK(mkdir(paths[i], 0755) == 0);
	}
	static int depths[2] = { 2000, 2100 };
	for (int i = 0; i < 2; i++)
		t_defer(t, remove_chain, paths[i], &depths[i]);
	make_chain(t, paths[0], depths[0]);    /* "a/a/...": 3,999 bytes */
	make_chain(t, paths[1], depths[1]);    /* past PATH_MAX */
	build_caches(t, paths, 2, cache);
	CHECK(access(t_printf(t, "%s/%064x.idx", cache, 1), F_OK) == 0);
	CHECK(access(t_printf(t, "%s/%064x.idx", cache, 2), F_OK) != 0);

	struct lfs_fs *fs = owned(t, open_cached(t, paths, 1, cache));
	struct lfs_layercache *c = lfs_fs_layercache(fs, 0);
	struct lfs_cached_dir dir;
	char *deepest = t_own(t, calloc(1, 4000));
	for (int i = 0; i < 2000; i++)
		strcat(deepest, i ? "/a" : "a");
	CHECK(c != NULL);
	CHECK_INT(lfs_layercache_find_dir(c, deepest, &dir), 1);
	CHECK_INT(dir.remaining, 0);
}

TEST(layers_without_a_digest_are_never_cached)
{
	const char *base = t_tmp(t);
	char *cache = t_printf(t, "%s/cache", base);
	int n = t_build(t, base, rules_spec);
	char *paths[3];

	for (int i = 0; i < n; i++)
		paths[i] = t_layer_path(t, base, i);
	build_caches(t, paths, n, cache);
	CHECK_INT(count_idx_files(cache), 0);
}

/* What one name is in one random layer. */
static size_t random_name(char *out, size_t room, int layer, const char *path,
			  bool may_nest, bool *ret_is_dir)
{
	int kind = rand() % (may_nest ? 8 : 6);

	*ret_is_dir = kind >= 5;
	switch (kind) {
	case 0:
		return 0;    /* absent */
	case 1:
		return (size_t)snprintf(out, room, "L%d f %s \"%d\"\n", layer,
					path, layer);
	case 2:
		return (size_t)snprintf(out, room, "L%d wh %s\n", layer, path);
	case 3:
		return (size_t)snprintf(out, room, "L%d ociwh %s\n", layer, path);
	case 4:
		return (size_t)snprintf(out, room, "L%d l %s -> %d\n", layer,
					path, layer);
	case 5:
		return (size_t)snprintf(out, room, "L%d d %s\n", layer, path);
	case 6:
		return (size_t)snprintf(out, room, "L%d opq %s\n", layer, path);
	default:
		return (size_t)snprintf(out, room, "L%d ociopq %s\n", layer,
					path);
	}
}

/* A random layer: top-level names of every kind, and inside the ones that
 * are directories, names of every kind again. */
static size_t random_layer(char *out, size_t room, int layer)
{
	static const char *const names[] = { "a", "b", "c", "d" };
	size_t len = (size_t)snprintf(out, room, "L%d d .\n", layer);

	for (int i = 0; i < 4; i++) {
		bool is_dir, child_is_dir;
		len += random_name(out + len, room - len, layer, names[i], true,
				   &is_dir);
		for (int j = 0; is_dir && j < 4; j++) {
			char child[8];
			snprintf(child, sizeof(child), "%s/%s", names[i],
				 names[j]);
			len += random_name(out + len, room - len, layer, child,
					   false, &child_is_dir);
		}
	}
	return len;
}

/* Seeded random stacks: cached and live merges agree everywhere. */
TEST(layer_cache_agrees_with_live_reads_on_random_stacks)
{
	for (unsigned seed = 1; seed <= 12; seed++) {
		char *base = t_printf(t, "%s/s%u", t_tmp(t), seed);
		char *cache = t_printf(t, "%s/cache", base);
		char *spec = t_own(t, calloc(1, 16384));
		size_t len = 0;
		int n_layers = 2 + (int)(seed % 5);
		char *paths[8];

		CHECK(mkdir(base, 0755) == 0);
		srand(seed);
		for (int i = 0; i < n_layers; i++)
			len += random_layer(spec + len, 16384 - len, i);
		int n = t_build(t, base, spec);
		for (int i = 0; i < n; i++)
			paths[i] = digest_layer(t, base, i);
		struct lfs_fs *live = owned(t, open_cached(t, paths, n, NULL));
		build_caches(t, paths, n, cache);
		struct lfs_fs *cached =
			owned(t, open_cached(t, paths, n, cache));
		for (int i = 0; i < n; i++)
			CHECK(lfs_fs_layercache(cached, (uint32_t)i) != NULL);
		char *want = dump(t, live), *got = dump(t, cached);
		CHECKF(strcmp(got, want) == 0,
		       "seed %u: cached merge differs\nspec:\n%s\ncached:\n%s\nlive:\n%s",
		       seed, spec, got, want);
	}
}
