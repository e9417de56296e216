/*
 * test_identity.c - reported inode numbers, link counts (README rule 8) and
 * merged directory listings.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

static struct stat real_stat(struct t *t, const char *path)
{
	struct stat st;

	if (lstat(path, &st) < 0)
		FAIL("lstat %s: %s", path, strerror(errno));
	return st;
}

/* ---- st_ino ------------------------------------------------------------- */

TEST(st_ino_is_the_layer_inode_on_one_filesystem)
{
	struct lfs_fs *fs = t_fs(t, "L0 f top\n"
				    "L1 f d/bottom\n"
				    "L0 d d\n");
	const char *tmp = t_tmp(t);

	CHECK_U64(t_stat(t, fs, "top").st_ino,
		  real_stat(t, t_printf(t, "%s/L0/top", tmp)).st_ino);
	CHECK_U64(t_stat(t, fs, "d/bottom").st_ino,
		  real_stat(t, t_printf(t, "%s/L1/d/bottom", tmp)).st_ino);
	/* a merged directory: its top-most layer's inode */
	CHECK_U64(t_stat(t, fs, "d").st_ino,
		  real_stat(t, t_printf(t, "%s/L0/d", tmp)).st_ino);
	CHECK_U64(t_stat(t, fs, "").st_ino,
		  real_stat(t, t_printf(t, "%s/L0", tmp)).st_ino);
}

TEST(hard_links_share_st_ino)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a/file \"data\"\n"
				    "L0 h a/hardlink = a/file\n"
				    "L0 h b/elsewhere = a/file\n"
				    "L1 f b/lower\n");
	struct stat file = t_stat(t, fs, "a/file");
	struct stat link = t_stat(t, fs, "a/hardlink");
	struct stat far = t_stat(t, fs, "b/elsewhere");

	CHECK_U64(link.st_ino, file.st_ino);
	CHECK_U64(far.st_ino, file.st_ino);
	CHECK_INT(file.st_nlink, 3);
	CHECK_STR(t_cat(t, fs, "b/elsewhere"), "data");
}

TEST(distinct_files_have_distinct_st_ino)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\nL0 f b\nL0 d dir\n"
				    "L1 f c\nL1 f dir/d\nL1 l e -> a\n"
				    "L2 f f\nL2 f dir/g\nL2 p h\n");
	const char *paths[] = { "", "a", "b", "dir", "c", "dir/d", "e", "f",
				"dir/g", "h" };
	size_t n = sizeof(paths) / sizeof(*paths);
	uint64_t ino[sizeof(paths) / sizeof(*paths)];

	for (size_t i = 0; i < n; i++) {
		ino[i] = t_stat(t, fs, paths[i]).st_ino;
		for (size_t j = 0; j < i; j++)
			CHECKF(ino[i] != ino[j], "\"%s\" and \"%s\" share st_ino %llu",
			       paths[i], paths[j], (unsigned long long)ino[i]);
	}
}

TEST(st_ino_is_stable_across_repeated_lookups)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/a\nL1 f d/b\nL1 f d/sub/c\n");
	const char *paths[] = { "d", "d/a", "d/b", "d/sub", "d/sub/c" };

	for (size_t i = 0; i < sizeof(paths) / sizeof(*paths); i++) {
		/* the first lookup's node dies before the second */
		uint64_t first = t_stat(t, fs, paths[i]).st_ino;
		uint64_t second = t_stat(t, fs, paths[i]).st_ino;
		struct lfs_node *n = t_node(t, fs, paths[i]);
		struct stat st;

		CHECK_U64(second, first);
		CHECK_OK(lfs_getattr(fs, n, &st));
		CHECK_U64(st.st_ino, first);
	}
}

TEST(readdir_d_ino_equals_st_ino)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/top\nL0 h d/top-link = d/top\n"
				    "L1 f d/middle\nL1 d d/sub\nL1 f d/sub/x\n"
				    "L2 l d/bottom -> top\nL2 f d/sub/y\n"
				    "L2 c d/dev 1 3\n");
	const char *dirs[] = { "", "d", "d/sub" };

	for (size_t k = 0; k < sizeof(dirs) / sizeof(*dirs); k++) {
		struct t_dirent *v;
		size_t n = t_readdir(t, fs, dirs[k], &v);
		const char *dir = dirs[k];
		char *parent = t_printf(t, "%s", dir);
		char *slash = strrchr(parent, '/');

		*(slash ? slash : parent) = '\0';
		CHECK_U64(v[0].ino, t_stat(t, fs, dir).st_ino);
		CHECK_U64(v[1].ino, t_stat(t, fs, parent).st_ino);
		for (size_t i = 2; i < n; i++) {
			char *path = dir[0] ? t_printf(t, "%s/%s", dir, v[i].name)
					    : v[i].name;
			struct stat st = t_stat(t, fs, path);
			CHECKF(v[i].ino == st.st_ino,
			       "%s: d_ino %llu, st_ino %llu", path,
			       (unsigned long long)v[i].ino,
			       (unsigned long long)st.st_ino);
			CHECKF(v[i].type == IFTODT(st.st_mode),
			       "%s: d_type %d, st_mode %o", path, v[i].type,
			       st.st_mode);
		}
	}
}

/* Layers on two filesystems: numbers stay unique and d_ino == st_ino. */
TEST(st_ino_unique_across_filesystems)
{
	char *other = t_mkdtemp(t, "/dev/shm");
	struct stat a, b;

	if (stat(t_tmp(t), &a) < 0 || stat(other, &b) < 0)
		FAIL("stat: %s", strerror(errno));
	if (a.st_dev == b.st_dev)
		t_skip(t, "%s and /dev/shm are one filesystem", t_tmp(t));
	/* Several files each, so that small inode numbers collide if the
	 * filesystem were not encoded. */
	const char *spec = "L0 f f1\nL0 f f2\nL0 f f3\nL0 d dir\n"
			   "L0 f dir/g1\nL0 f dir/g2\n";
	t_build(t, t_tmp(t), spec);
	t_build(t, other, spec);
	char *paths[] = { t_layer_path(t, t_tmp(t), 0),
			  t_layer_path(t, other, 0) };
	/* rename so each layer's names differ but dir merges */
	CHECK(rename(t_printf(t, "%s/f1", paths[1]),
		     t_printf(t, "%s/h1", paths[1])) == 0);
	CHECK(rename(t_printf(t, "%s/f2", paths[1]),
		     t_printf(t, "%s/h2", paths[1])) == 0);
	CHECK(rename(t_printf(t, "%s/f3", paths[1]),
		     t_printf(t, "%s/h3", paths[1])) == 0);
	CHECK(rename(t_printf(t, "%s/dir/g1", paths[1]),
		     t_printf(t, "%s/dir/k1", paths[1])) == 0);
	CHECK(rename(t_printf(t, "%s/dir/g2", paths[1]),
		     t_printf(t, "%s/dir/k2", paths[1])) == 0);
	struct lfs_fs *fs = t_open_paths(t, paths, 2);
	CHECK_INT(lfs_fs_stack(fs)->n_filesystems, 2);
	CHECK_STR(t_ls(t, fs, ""), "dir f1 f2 f3 h1 h2 h3");
	CHECK_STR(t_ls(t, fs, "dir"), "g1 g2 k1 k2");

	const char *names[] = { "", "f1", "f2", "f3", "h1", "h2", "h3", "dir",
				"dir/g1", "dir/g2", "dir/k1", "dir/k2" };
	size_t n = sizeof(names) / sizeof(*names);
	uint64_t ino[sizeof(names) / sizeof(*names)];
	for (size_t i = 0; i < n; i++) {
		ino[i] = t_stat(t, fs, names[i]).st_ino;
		for (size_t j = 0; j < i; j++)
			CHECKF(ino[i] != ino[j], "\"%s\" and \"%s\" share st_ino %llu",
			       names[i], names[j], (unsigned long long)ino[i]);
	}
	struct t_dirent *v;
	size_t nv = t_readdir(t, fs, "dir", &v);
	for (size_t i = 2; i < nv; i++)
		CHECK_U64(v[i].ino,
			  t_stat(t, fs, t_printf(t, "dir/%s", v[i].name)).st_ino);
}

/* ---- st_nlink ----------------------------------------------------------- */

TEST(directory_merged_from_several_layers_has_nlink_1)
{
	struct lfs_fs *fs = t_fs(t, "L0 d d/s1\nL0 d d/s2\nL1 d d/s3\n");

	CHECK_INT(t_stat(t, fs, "d").st_nlink, 1);
}

TEST(root_merged_from_several_layers_has_nlink_1)
{
	struct lfs_fs *fs = t_fs(t, "L0 d a\nL1 d b\n");

	CHECK_INT(t_stat(t, fs, "").st_nlink, 1);
}

TEST(directory_from_one_layer_has_its_own_nlink)
{
	struct lfs_fs *fs = t_fs(t, "L0 f top\n"
				    "L1 d d/s1\nL1 d d/s2\nL1 f d/f\n");

	CHECK_INT(t_stat(t, fs, "d").st_nlink, 4);
}

/* An opaque directory is not merged: only its own layer contributes, so
 * (as kernel overlayfs does, and as for any one-layer directory) it
 * reports its own link count even when lower layers have the name. */
TEST(opaque_directory_over_lower_directory_has_its_own_nlink)
{
	struct lfs_fs *fs = t_fs(t, "L0 opq d\nL0 d d/s1\nL0 d d/s2\n"
				    "L1 d d/lower\n");

	CHECK_STR(t_ls(t, fs, "d"), "s1 s2");
	CHECK_INT(t_stat(t, fs, "d").st_nlink, 4);
}

/* ---- listings ----------------------------------------------------------- */

TEST(listing_is_dot_dotdot_then_the_visible_names)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/a\nL1 f d/b\nL1 wh d/c\nL2 f d/c\n");
	struct t_dirent *v;
	size_t n = t_readdir(t, fs, "d", &v);

	CHECK_INT(n, 4);
	CHECK_STR(v[0].name, ".");
	CHECK_STR(v[1].name, "..");
	CHECK_INT(v[0].type, DT_DIR);
	CHECK_INT(v[1].type, DT_DIR);
	CHECK_STR(t_ls(t, fs, "d"), "a b");
}

TEST(listing_shows_each_name_once)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/a\nL0 d d/s\n"
				    "L1 f d/a\nL1 d d/s\nL1 f d/b\n"
				    "L2 f d/a\nL2 d d/s\nL2 f d/b\nL2 f d/c\n"
				    "L3 d d/a\nL3 f d/s\n");
	struct t_dirent *v;
	size_t n = t_readdir(t, fs, "d", &v);

	CHECK_INT(n, 2 + 4);
	CHECK_STR(t_ls(t, fs, "d"), "a b c s");
}

TEST(dotdot_is_the_parent_and_root_is_its_own_parent)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a/b/c\nL1 d a/b\n");
	struct t_dirent *v;

	t_readdir(t, fs, "a/b", &v);
	CHECK_U64(v[1].ino, t_stat(t, fs, "a").st_ino);
	t_readdir(t, fs, "", &v);
	CHECK_U64(v[0].ino, t_stat(t, fs, "").st_ino);
	CHECK_U64(v[1].ino, t_stat(t, fs, "").st_ino);
}

static struct lfs_fs *many_names(struct t *t, int n)
{
	char *spec = t_printf(t, "%s", "");

	for (int i = 0; i < n; i++)
		spec = t_printf(t, "%sL%d f d/name%03d\n", spec, i % 4, i);
	return t_fs(t, spec);
}

TEST(readdir_offsets_resume_mid_listing)
{
	struct lfs_fs *fs = many_names(t, 50);
	struct t_dirent *all;
	size_t n = t_readdir(t, fs, "d", &all);
	struct lfs_dir *dir;

	CHECK_INT(n, 52);
	CHECK_OK(lfs_opendir(fs, t_node(t, fs, "d"), &dir));
	/* From each entry's next_off, the rest of the listing follows. */
	for (size_t k = 0; k < n; k++) {
		off_t off = all[k].next_off;
		struct lfs_dirent de;
		size_t i = k + 1;
		int r;

		while ((r = lfs_readdir_at(dir, off, &de)) == 1) {
			CHECKF(i < n, "resuming after entry %zu: extra entry %s",
			       k, de.name);
			CHECKF(strcmp(de.name, all[i].name) == 0 &&
				       de.ino == all[i].ino,
			       "resuming after entry %zu: got %s, want %s", k,
			       de.name, all[i].name);
			off = de.next_off;
			i++;
		}
		CHECK_OK(r);
		CHECK_INT(i, n);
	}
	lfs_closedir(fs, dir);
}

TEST(readdir_offsets_stay_valid_across_opens)
{
	struct lfs_fs *fs = many_names(t, 20);
	struct lfs_node *d = t_node(t, fs, "d");
	struct lfs_dir *dir;
	struct lfs_dirent de;
	char *seen = t_printf(t, "%s", "");
	off_t off = 0;

	/* read 5 entries per open, resuming at the saved offset */
	for (;;) {
		int r = 0;
		CHECK_OK(lfs_opendir(fs, d, &dir));
		for (int i = 0; i < 5 && (r = lfs_readdir_at(dir, off, &de)) == 1;
		     i++) {
			seen = t_printf(t, "%s%s ", seen, de.name);
			off = de.next_off;
		}
		lfs_closedir(fs, dir);
		CHECK_OK(r);
		if (r == 0)
			break;
	}
	struct t_dirent *all;
	size_t n = t_readdir(t, fs, "d", &all);
	char *want = t_printf(t, "%s", "");
	for (size_t i = 0; i < n; i++)
		want = t_printf(t, "%s%s ", want, all[i].name);
	CHECK_STR(seen, want);
}

TEST(readdir_past_the_end_and_negative_offsets)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/a\n");
	struct lfs_dir *dir;
	struct lfs_dirent de;

	CHECK_OK(lfs_opendir(fs, t_node(t, fs, "d"), &dir));
	CHECK_INT(lfs_readdir_at(dir, 2, &de), 1);
	CHECK_INT(lfs_readdir_at(dir, 3, &de), 0);
	CHECK_INT(lfs_readdir_at(dir, 1000, &de), 0);
	CHECK_ERR(lfs_readdir_at(dir, -1, &de), EINVAL);
	lfs_closedir(fs, dir);
}

TEST(readdir_without_a_handle_matches_the_handle)
{
	struct lfs_fs *fs = many_names(t, 12);
	struct lfs_node *d = t_node(t, fs, "d");
	struct t_dirent *all;
	size_t n = t_readdir(t, fs, "d", &all);
	struct lfs_dirent de;
	size_t i = 0;
	off_t off = 0;
	int r;

	while ((r = lfs_readdir_node(fs, d, off, &de)) == 1) {
		CHECK(i < n);
		CHECK_STR(de.name, all[i].name);
		CHECK_U64(de.ino, all[i].ino);
		off = de.next_off;
		i++;
	}
	CHECK_OK(r);
	CHECK_INT(i, n);
}

TEST(opendir_of_a_file_is_enotdir)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\n");
	struct lfs_dir *dir = NULL;

	CHECK_ERR(lfs_opendir(fs, t_node(t, fs, "a"), &dir), ENOTDIR);
	CHECK(dir == NULL);
}
