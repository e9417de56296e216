/*
 * fs.c - one merged filesystem: the layer stack, the root node, the policy
 * decided once at mount, and the layer index caches (see layercache.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "layerfs_i.h"

static int fs_init_caches(struct lfs_fs *fs, uint32_t n_layers)
{
	fs->layer_caches = calloc(n_layers, sizeof(*fs->layer_caches));
	fs->layer_cache_tried = calloc(n_layers, sizeof(*fs->layer_cache_tried));
	if (!fs->layer_caches || !fs->layer_cache_tried)
		return -ENOMEM;
	for (uint32_t i = 0; i < n_layers; i++) {
		atomic_init(&fs->layer_caches[i], NULL);
		atomic_init(&fs->layer_cache_tried[i], false);
	}
	if (fs->config.index_cache_dir &&
	    !(fs->index_cache_dir = strdup(fs->config.index_cache_dir)))
		return -ENOMEM;
	fs->config.index_cache_dir = fs->index_cache_dir;
	return -pthread_mutex_init(&fs->layer_cache_mu, NULL);
}

static void fs_free_caches(struct lfs_fs *fs, uint32_t n_layers)
{
	for (uint32_t i = 0; fs->layer_caches && i < n_layers; i++)
		lfs_layercache_free(atomic_load(&fs->layer_caches[i]));
	free(fs->layer_caches);
	free(fs->layer_cache_tried);
	free(fs->index_cache_dir);
}

/* The writable upper layer: layer 0, with its work directory.  Readers
 * are preferred so that a lookup that already holds the ns lock may take
 * it again (unref after a failed stat) even with a writer waiting. */
static int fs_init_upper(struct lfs_fs *fs, struct lfs_stack *stack,
			 char err[LFS_ERRLEN])
{
	pthread_rwlockattr_t attr;
	int r;

	/* The upper changes: its index is never cached by digest. */
	stack->layers[0].digest[0] = '\0';
	if (!fs->config.workdir) {
		snprintf(err, LFS_ERRLEN, "an upper layer needs a workdir");
		return -EINVAL;
	}
	r = lfs_upper_open(&fs->upper, &stack->layers[0],
			   stack->n_layers > 1 ? &stack->layers[1] : NULL,
			   fs->config.workdir, fs->config.whiteout,
			   fs->config.volatile_upper, err);
	if (r < 0)
		return r;
	fs->upper.fsync = !fs->config.no_fsync;
	fs->upper.metacopy = fs->config.metacopy && fs->upper.metacopy_xattr;
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_READER_NP);
	pthread_rwlock_init(&fs->ns_lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	pthread_mutex_init(&fs->orphan_mu, NULL);
	fs->writable = true;
	return 0;
}

static void fs_free_upper(struct lfs_fs *fs)
{
	if (!fs->writable)
		return;
	lfs_upper_close(&fs->upper);
	pthread_rwlock_destroy(&fs->ns_lock);
	pthread_mutex_destroy(&fs->orphan_mu);
}

int lfs_fs_new(struct lfs_fs **ret, struct lfs_stack *stack,
	       const struct lfs_fs_config *config, char err[LFS_ERRLEN])
{
	struct lfs_fs *fs = calloc(1, sizeof(*fs));
	int r = -ENOMEM;

	snprintf(err, LFS_ERRLEN, "out of memory");
	if (!fs)
		return -ENOMEM;
	fs->config = *config;
	fs->config.workdir = NULL;    /* borrowed: used only here */
	fs->upper.work_fd = -1;
	fs->upper.index_fd = -1;
	if (!config->read_only) {
		fs->config.workdir = config->workdir;
		r = fs_init_upper(fs, stack, err);
		fs->config.workdir = NULL;
		if (r < 0) {
			free(fs);
			return r;
		}
		r = -ENOMEM;
	}
	fs->all_layers.n = stack->n_layers;
	fs->all_layers.layers = calloc(stack->n_layers,
				       sizeof(*fs->all_layers.layers));
	if (!fs->all_layers.layers)
		goto fail;
	for (uint32_t i = 0; i < stack->n_layers; i++)
		fs->all_layers.layers[i] = i;
	r = fs_init_caches(fs, stack->n_layers);
	if (r < 0)
		goto fail;
	r = lfs_inomap_init(&fs->inomap, stack->n_filesystems);
	if (r < 0)
		goto fail_mutex;
	r = lfs_stats_init(&fs->stats, stack->n_layers);
	if (r < 0) {
		lfs_inomap_destroy(&fs->inomap);
		goto fail_mutex;
	}
	fs->stack = stack;
	fs->root = lfs_node_new_root(fs);
	if (!fs->root) {
		r = -ENOMEM;
		lfs_stats_destroy(&fs->stats);
		lfs_inomap_destroy(&fs->inomap);
		goto fail_mutex;
	}
	*ret = fs;
	return 0;
fail_mutex:
	pthread_mutex_destroy(&fs->layer_cache_mu);
fail:
	fs_free_caches(fs, stack->n_layers);
	free(fs->all_layers.layers);
	fs_free_upper(fs);
	free(fs);
	snprintf(err, LFS_ERRLEN, "%s", strerror(-r));
	return r;
}

void lfs_fs_free(struct lfs_fs *fs)
{
	if (!fs)
		return;
	if (fs->builder_running) {
		atomic_store(&fs->builder_stop, true);
		pthread_join(fs->builder, NULL);
	}
	/* Nodes the kernel never forgot die with the mount; the caller has
	 * stopped all request threads by now. */
	lfs_node_free_root(fs, fs->root);
	lfs_inomap_destroy(&fs->inomap);
	lfs_stats_destroy(&fs->stats);
	fs_free_caches(fs, fs->stack->n_layers);
	pthread_mutex_destroy(&fs->layer_cache_mu);
	lfs_stack_free(fs->stack);
	free(fs->all_layers.layers);
	fs_free_upper(fs);
	free(fs);
}

struct lfs_layercache *lfs_fs_layercache(struct lfs_fs *fs, uint32_t layer)
{
	struct lfs_layercache *cache;

	if (!fs->index_cache_dir || !fs->stack->layers[layer].digest[0])
		return NULL;
	if (atomic_load_explicit(&fs->layer_cache_tried[layer],
				 memory_order_acquire))
		return atomic_load_explicit(&fs->layer_caches[layer],
					    memory_order_relaxed);
	pthread_mutex_lock(&fs->layer_cache_mu);
	if (!atomic_load(&fs->layer_cache_tried[layer])) {
		/* Missing, stale or damaged: the layer is read live. */
		if (lfs_layercache_load(fs->index_cache_dir,
					&fs->stack->layers[layer], &cache) == 0)
			atomic_store(&fs->layer_caches[layer], cache);
		atomic_store_explicit(&fs->layer_cache_tried[layer], true,
				      memory_order_release);
	}
	cache = atomic_load(&fs->layer_caches[layer]);
	pthread_mutex_unlock(&fs->layer_cache_mu);
	return cache;
}

/* mkdir -p, for the cache directory. */
static int make_dirs(const char *path)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* First, at normal priority: start reading every layer's cache file at
 * once, so that a stack's first lookups do not wait for one file read
 * after another (after a cache drop: 18 ms for 128 layers, 6 ms so).
 * Then record the caches that are missing, quietly: at idle priority the
 * thread yields the disk and the CPU to the requests the mount serves. */
static void *build_caches(void *arg)
{
	struct lfs_fs *fs = arg;
	const int ioprio_idle = 3 << 13;    /* IOPRIO_CLASS_IDLE, level 0 */

	for (uint32_t i = 0; i < fs->stack->n_layers; i++)
		if (!atomic_load(&fs->layer_cache_tried[i]))
			lfs_layercache_prefetch(fs->index_cache_dir,
						&fs->stack->layers[i]);

	syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, ioprio_idle);
	setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
	if (make_dirs(fs->index_cache_dir) < 0)
		return NULL;
	for (uint32_t i = 0; i < fs->stack->n_layers; i++) {
		const struct lfs_layer *L = &fs->stack->layers[i];
		struct lfs_layercache *cache;

		if (atomic_load(&fs->builder_stop))
			break;
		if (!L->digest[0])
			continue;
		if (lfs_layercache_load(fs->index_cache_dir, L, &cache) == 0) {
			lfs_layercache_free(cache);
			continue;
		}
		/* A failure leaves no file; the next mount tries again. */
		lfs_layercache_build(fs->index_cache_dir, L, &fs->builder_stop);
	}
	return NULL;
}

int lfs_fs_start_background(struct lfs_fs *fs)
{
	if (!fs->index_cache_dir || fs->builder_running)
		return 0;
	atomic_store(&fs->builder_stop, false);
	int r = pthread_create(&fs->builder, NULL, build_caches, fs);
	if (r != 0)
		return -r;
	fs->builder_running = true;
	return 0;
}

void lfs_fs_finish_background(struct lfs_fs *fs)
{
	if (fs->builder_running) {
		pthread_join(fs->builder, NULL);
		fs->builder_running = false;
	}
}

struct lfs_node *lfs_fs_root(struct lfs_fs *fs)
{
	return fs->root;
}

const struct lfs_stack *lfs_fs_stack(const struct lfs_fs *fs)
{
	return fs->stack;
}

bool lfs_fs_is_read_only(const struct lfs_fs *fs)
{
	return fs->config.read_only;
}

uint64_t lfs_fs_ino(struct lfs_fs *fs, uint32_t layer, uint64_t real_ino)
{
	return lfs_inomap_get(&fs->inomap, fs->stack->layers[layer].fs_index,
			      real_ino);
}
