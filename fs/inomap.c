/*
 * inomap.c - the st_ino that the merged view reports.
 *
 * Hard links must share st_ino, and readdir's d_ino must equal stat's
 * st_ino without a stat per entry, so the number is a pure function of
 * what readdir already gives: the providing layer's (filesystem, d_ino).
 *   - all layers on one filesystem: the real inode number, unchanged
 *     (as kernel overlayfs does when its layers share a filesystem);
 *   - several filesystems: the filesystem's index goes in the top fs_bits
 *     bits.  A real number that already uses those bits cannot be
 *     encoded; it gets the next number of a reserved range instead,
 *     remembered in a table so it stays the same for the mount.
 */
#include <errno.h>
#include <stdlib.h>

#include "layerfs_i.h"

struct lfs_ino_overflow {
	UT_hash_handle hh;
	struct {
		uint64_t real_ino;
		uint32_t fs_index;
	} key;
	uint64_t ino;
};

int lfs_inomap_init(struct lfs_inomap *map, uint32_t n_filesystems)
{
	unsigned bits = 0;

	/* One extra filesystem index is reserved for overflow numbers. */
	while (n_filesystems > 1 && (1u << bits) < n_filesystems + 1)
		bits++;
	map->fs_bits = bits;
	map->overflow = NULL;
	map->next_overflow = 1;
	return -pthread_mutex_init(&map->mu, NULL);
}

void lfs_inomap_destroy(struct lfs_inomap *map)
{
	struct lfs_ino_overflow *o, *tmp;

	HASH_ITER(hh, map->overflow, o, tmp) {
		HASH_DEL(map->overflow, o);
		free(o);
	}
	pthread_mutex_destroy(&map->mu);
}

static uint64_t overflow_ino(struct lfs_inomap *map, uint32_t fs_index,
			     uint64_t real_ino)
{
	struct lfs_ino_overflow key = { 0 }, *o;
	uint64_t reserved = ((1ull << map->fs_bits) - 1) << (64 - map->fs_bits);
	uint64_t ino;

	key.key.real_ino = real_ino;
	key.key.fs_index = fs_index;
	pthread_mutex_lock(&map->mu);
	HASH_FIND(hh, map->overflow, &key.key, sizeof(key.key), o);
	if (!o && (o = calloc(1, sizeof(*o))) != NULL) {
		o->key = key.key;
		o->ino = reserved | map->next_overflow++;
		lfs_hash_oom = false;
		HASH_ADD(hh, map->overflow, key, sizeof(o->key), o);
		if (lfs_hash_oom) {
			free(o);
			o = NULL;
		}
	}
	/* Out of memory: a number that is at least stable, if not unique. */
	ino = o ? o->ino : reserved | (real_ino & ~reserved);
	pthread_mutex_unlock(&map->mu);
	return ino;
}

uint64_t lfs_inomap_get(struct lfs_inomap *map, uint32_t fs_index,
			uint64_t real_ino)
{
	if (map->fs_bits == 0)
		return real_ino;
	if (real_ino >> (64 - map->fs_bits))
		return overflow_ino(map, fs_index, real_ino);
	return ((uint64_t)fs_index << (64 - map->fs_bits)) | real_ino;
}
