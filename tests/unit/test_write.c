/*
 * test_write.c - the writable upper layer (include/layerfs.h, "dir.c,
 * inode.c: changes, which land in the upper layer"), one property per
 * test, through the core API; the upper, the lower layers and the work
 * dir are also inspected on disk.
 *
 * In every stack here L0 is the upper layer and L1... are read-only lower
 * layers; t_fs_rw writes char device whiteouts unless a test asks for the
 * OCI format.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "harness.h"

/* Owner of the objects the tests create: not the test's own, so that a
 * missing chown shows. */
static const struct lfs_cred cred = { .uid = 4321, .gid = 8765 };

/* lfs_create of name in the merged directory dir (a path), as cred;
 * returns the open fd.  The fd is closed and the new node dropped when
 * the test ends. */
static int create_at(struct t *t, struct lfs_fs *fs, const char *dir,
		     const char *name, mode_t mode, int flags,
		     struct stat *ret_st)
{
	struct lfs_node *node;
	struct stat st;
	int fd = lfs_create(fs, t_node(t, fs, dir), name, mode, flags, &cred,
			    &node, &st);

	if (fd < 0)
		FAIL("lfs_create %s/%s: %s", dir, name, t_errname(-fd));
	t_keep_node(t, fs, node);
	t_keep_fd(t, fd);
	if (ret_st)
		*ret_st = st;
	return fd;
}

/* lfs_mkdir name in dir; the node is dropped at test end. */
static int mkdir_at(struct lfs_fs *fs, struct lfs_node *dir, const char *name,
		    mode_t mode)
{
	struct lfs_node *node;
	struct stat st;
	int r = lfs_mkdir(fs, dir, name, mode, &cred, &node, &st);

	if (r == 0)
		lfs_node_unref(fs, node, 1);
	return r;
}

static void set_times(struct t *t, const char *path, time_t atime,
		      time_t mtime)
{
	struct timespec ts[2] = { { .tv_sec = atime }, { .tv_sec = mtime } };

	if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		FAIL("utimensat %s: %s", path, strerror(errno));
}

static void set_owner_mode(struct t *t, const char *path, uid_t uid,
			   gid_t gid, mode_t mode)
{
	if (lchown(path, uid, gid) < 0)
		FAIL("lchown %s: %s", path, strerror(errno));
	if (chmod(path, mode) < 0)
		FAIL("chmod %s: %s", path, strerror(errno));
}

/* The st_ino the merged view reports for path now (no reference kept). */
static uint64_t ino_of(struct t *t, struct lfs_fs *fs, const char *path)
{
	return t_stat(t, fs, path).st_ino;
}

#define CHECK_WORK_EMPTY() CHECK_STR(t_work_ls(t), "")

/* ---- creating ------------------------------------------------------------- */

TEST(create_lands_in_the_upper_with_the_callers_owner)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d .\nL1 f other\n");
	struct stat st;
	int fd = create_at(t, fs, "", "new", 0640, O_WRONLY, &st);

	t_pwrite_str(t, fd, "fresh");
	CHECK(S_ISREG(st.st_mode));
	CHECK_INT(st.st_uid, cred.uid);
	CHECK_INT(st.st_gid, cred.gid);
	struct stat up = t_lstat(t, t_upper(t, "new"));
	CHECK(S_ISREG(up.st_mode));
	CHECK_INT(up.st_mode & 07777, 0640);
	CHECK_INT(up.st_uid, cred.uid);
	CHECK_INT(up.st_gid, cred.gid);
	CHECK_STR(t_disk_cat(t, t_upper(t, "new")), "fresh");
	CHECK_STR(t_cat(t, fs, "new"), "fresh");
	CHECK_INT(t_layer(t, fs, "new"), 0);
	CHECK(!t_exists(t_lower(t, 1, "new")));
	CHECK_WORK_EMPTY();
}

TEST(create_returns_the_attributes_lookup_reports)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/x\n");
	struct stat created, looked;

	create_at(t, fs, "d", "new", 0600, O_RDWR, &created);
	looked = t_stat(t, fs, "d/new");
	CHECK_U64(created.st_ino, looked.st_ino);
	CHECK_INT(created.st_mode, looked.st_mode);
	CHECK_INT(created.st_uid, looked.st_uid);
}

TEST(create_in_lower_only_dir_copies_dir_up_with_mode_owner_times)
{
	struct lfs_fs *fs;
	struct stat lower_a;

	t_build(t, t_tmp(t), "L0 d .\n"
			     "L1 f a/b/keep \"k\"\n"
			     "L1 x a/b user.dirattr=v\n");
	set_owner_mode(t, t_lower(t, 1, "a/b"), 1001, 1002, 02751);
	set_owner_mode(t, t_lower(t, 1, "a"), 1003, 1004, 0705);
	set_times(t, t_lower(t, 1, "a/b"), 1000000000, 1100000000);
	set_times(t, t_lower(t, 1, "a"), 1200000000, 1300000000);
	lower_a = t_lstat(t, t_lower(t, 1, "a"));
	fs = t_fs_rw(t, "");

	create_at(t, fs, "a/b", "new", 0644, O_WRONLY, NULL);

	/* the parent and the grandparent are copied up ... */
	struct stat a = t_lstat(t, t_upper(t, "a"));
	struct stat b = t_lstat(t, t_upper(t, "a/b"));
	CHECK(S_ISDIR(a.st_mode) && S_ISDIR(b.st_mode));
	CHECK_INT(b.st_mode & 07777, 02751);
	CHECK_INT(b.st_uid, 1001);
	CHECK_INT(b.st_gid, 1002);
	CHECK_STR(t_disk_xattr(t, t_upper(t, "a/b"), "user.dirattr"), "v");
	CHECK_INT(a.st_mode & 07777, 0705);
	CHECK_INT(a.st_uid, 1003);
	CHECK_INT(a.st_gid, 1004);
	/* ... the grandparent's times kept (nothing visible changed in it);
	 * the parent's mtime is the create's own, so not checked */
	CHECK_INT(a.st_mtim.tv_sec, lower_a.st_mtim.tv_sec);
	CHECK_INT(a.st_mtim.tv_nsec, lower_a.st_mtim.tv_nsec);
	/* ... with only the new name: the lower one stays below */
	CHECK_STR(t_disk_ls(t, t_upper(t, "a/b")), "new");
	CHECK_STR(t_ls(t, fs, "a/b"), "keep new");
	CHECK_STR(t_cat(t, fs, "a/b/keep"), "k");
	CHECK_WORK_EMPTY();
}

TEST(copied_up_dir_reports_its_lower_attributes_through_the_merge)
{
	struct lfs_fs *fs;

	t_build(t, t_tmp(t), "L0 d .\nL1 f a/b/keep\n");
	set_owner_mode(t, t_lower(t, 1, "a"), 1003, 1004, 0705);
	set_times(t, t_lower(t, 1, "a"), 1200000000, 1300000000);
	fs = t_fs_rw(t, "");
	struct stat before = t_stat(t, fs, "a");

	create_at(t, fs, "a/b", "new", 0644, O_WRONLY, NULL);
	struct stat after = t_stat(t, fs, "a");
	CHECK_INT(t_layer(t, fs, "a"), 0);
	CHECK_U64(after.st_ino, before.st_ino);
	CHECK_INT(after.st_mode, before.st_mode);
	CHECK_INT(after.st_uid, 1003);
	CHECK_INT(after.st_gid, 1004);
	CHECK_INT(after.st_mtim.tv_sec, 1300000000);
}

TEST(create_over_upper_chardev_whiteout_replaces_it)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 wh f\n"
				       "L1 f f \"lower\"\n");

	CHECK_ERR(t_lookup(fs, "f"), ENOENT);
	int fd = create_at(t, fs, "", "f", 0644, O_RDWR, NULL);
	t_pwrite_str(t, fd, "new");

	struct stat up = t_lstat(t, t_upper(t, "f"));
	CHECK(S_ISREG(up.st_mode));
	CHECK(!t_exists(t_upper(t, ".wh.f")));
	CHECK_STR(t_disk_cat(t, t_upper(t, "f")), "new");
	CHECK_STR(t_cat(t, fs, "f"), "new");
	CHECK_STR(t_ls(t, fs, ""), "f");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "f")), "lower");
	CHECK_WORK_EMPTY();
}

TEST(create_over_lower_whiteout_shows_the_new_file)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d .\n"
				       "L1 wh f\n"
				       "L2 f f \"bottom\"\n");

	CHECK_ERR(t_lookup(fs, "f"), ENOENT);
	t_pwrite_str(t, create_at(t, fs, "", "f", 0644, O_WRONLY, NULL), "n");
	CHECK_STR(t_cat(t, fs, "f"), "n");
	CHECK_STR(t_disk_cat(t, t_upper(t, "f")), "n");
}

TEST(create_exclusive_of_a_visible_name_is_eexist)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f f \"lower\"\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_ERR(lfs_create(fs, lfs_fs_root(fs), "f", 0644,
			     O_WRONLY | O_CREAT | O_EXCL, &cred, &node, &st),
		  EEXIST);
	CHECK(!t_exists(t_upper(t, "f")));
	CHECK_STR(t_cat(t, fs, "f"), "lower");
}

TEST(create_without_excl_of_a_lower_file_opens_it_copied_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f f \"lower\"\n");
	struct lfs_node *node;
	struct stat st;
	uint64_t ino = ino_of(t, fs, "f");
	int fd = lfs_create(fs, lfs_fs_root(fs), "f", 0600, O_RDWR | O_CREAT,
			    &cred, &node, &st);

	t_keep_fd(t, fd);
	t_keep_node(t, fs, node);
	CHECK_STR(t_pread_all(t, fd), "lower");
	CHECK_U64(st.st_ino, ino);
	t_pwrite_str(t, fd, "LOWER");
	CHECK_STR(t_disk_cat(t, t_upper(t, "f")), "LOWER");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "f")), "lower");
}

TEST(create_of_a_reserved_whiteout_name_is_einval)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f f\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_ERR(lfs_create(fs, lfs_fs_root(fs), ".wh.f", 0644, O_WRONLY,
			     &cred, &node, &st), EINVAL);
	CHECK(!t_exists(t_upper(t, ".wh.f")));
	CHECK_OK(t_lookup(fs, "f"));
}

TEST(create_in_setgid_dir_takes_the_dirs_group)
{
	struct lfs_fs *fs;
	struct stat st;

	t_build(t, t_tmp(t), "L0 d .\nL1 d g\n");
	set_owner_mode(t, t_lower(t, 1, "g"), 0, 777, 02775);
	fs = t_fs_rw(t, "");
	create_at(t, fs, "g", "new", 0644, O_WRONLY, &st);
	CHECK_INT(st.st_uid, cred.uid);
	CHECK_INT(st.st_gid, 777);
	CHECK_INT(t_lstat(t, t_upper(t, "g/new")).st_gid, 777);
}

TEST(mkdir_over_whiteout_makes_an_opaque_dir)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 wh d\n"
				       "L1 f d/old\n"
				       "L1 d d/olddir\n");

	CHECK_OK(mkdir_at(fs, lfs_fs_root(fs), "d", 0755));
	CHECK(S_ISDIR(t_lstat(t, t_upper(t, "d")).st_mode));
	CHECK_STR(t_disk_xattr(t, t_upper(t, "d"), "trusted.overlay.opaque"),
		  "y");
	CHECK_STR(t_ls(t, fs, "d"), "");
	CHECK_ERR(t_lookup(fs, "d/old"), ENOENT);
	CHECK_STR(t_ls(t, t_reopen_ro(t), "d"), "");
	CHECK_WORK_EMPTY();
}

TEST(mkdir_of_a_new_name_is_not_opaque)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f other\n");

	CHECK_OK(mkdir_at(fs, lfs_fs_root(fs), "d", 0750));
	struct stat st = t_lstat(t, t_upper(t, "d"));
	CHECK(S_ISDIR(st.st_mode));
	CHECK_INT(st.st_mode & 07777, 0750);
	CHECK_INT(st.st_uid, cred.uid);
	CHECK(t_disk_xattr(t, t_upper(t, "d"), "trusted.overlay.opaque") ==
	      NULL);
	CHECK(lfs_node_is_dir(t_node(t, fs, "d")));
}

TEST(mkdir_after_rmdir_hides_the_old_lower_entries)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/old \"o\"\n");
	struct lfs_node *d = t_node(t, fs, "d");

	CHECK_OK(lfs_unlink(fs, d, "old"));
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK_OK(mkdir_at(fs, lfs_fs_root(fs), "d", 0755));
	CHECK_STR(t_ls(t, fs, "d"), "");
	CHECK_ERR(t_lookup(fs, "d/old"), ENOENT);
	CHECK_STR(t_ls(t, t_reopen_ro(t), "d"), "");
	CHECK_WORK_EMPTY();
}

TEST(mkdir_of_an_existing_name_is_eexist)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\nL1 f f\n");

	CHECK_ERR(mkdir_at(fs, lfs_fs_root(fs), "d", 0755), EEXIST);
	CHECK_ERR(mkdir_at(fs, lfs_fs_root(fs), "f", 0755), EEXIST);
	CHECK(!t_exists(t_upper(t, "d")));
	CHECK(!t_exists(t_upper(t, "f")));
}

TEST(symlink_is_created_in_the_upper)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_OK(lfs_symlink(fs, t_node(t, fs, "d"), "lnk", "../target",
			     &cred, &node, &st));
	t_keep_node(t, fs, node);
	CHECK(S_ISLNK(st.st_mode));
	CHECK_STR(t_readlink(t, fs, "d/lnk"), "../target");
	char buf[64] = "";
	CHECK_INT(readlink(t_upper(t, "d/lnk"), buf, sizeof(buf) - 1), 9);
	CHECK_STR(buf, "../target");
	CHECK_INT(t_lstat(t, t_upper(t, "d/lnk")).st_uid, cred.uid);
}

TEST(mknod_makes_fifos_and_regular_files)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_OK(lfs_mknod(fs, t_node(t, fs, "d"), "fifo", S_IFIFO | 0640, 0,
			   &cred, &node, &st));
	lfs_node_unref(fs, node, 1);
	CHECK(S_ISFIFO(st.st_mode));
	CHECK(S_ISFIFO(t_lstat(t, t_upper(t, "d/fifo")).st_mode));
	CHECK_OK(lfs_mknod(fs, t_node(t, fs, "d"), "reg", 0600, 0, &cred,
			   &node, &st));
	lfs_node_unref(fs, node, 1);
	CHECK(S_ISREG(t_lstat(t, t_upper(t, "d/reg")).st_mode));
	CHECK_STR(t_ls(t, fs, "d"), "fifo reg");
}

TEST(mknod_of_a_char_device_is_not_taken_for_a_whiteout_unless_0_0)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f null \"lower\"\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_OK(lfs_mknod(fs, lfs_fs_root(fs), "dev", S_IFCHR | 0600,
			   makedev(1, 3), &cred, &node, &st));
	lfs_node_unref(fs, node, 1);
	st = t_stat(t, fs, "dev");
	CHECK(S_ISCHR(st.st_mode));
	CHECK_INT(major(st.st_rdev), 1);
	CHECK_INT(minor(st.st_rdev), 3);
	CHECK_STR(t_ls(t, t_reopen_ro(t), ""), "dev null");
}

TEST(link_of_a_lower_file_shares_its_st_ino_and_data)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\nL1 d d\n");
	struct lfs_node *node;
	struct stat st;
	uint64_t ino = ino_of(t, fs, "a");

	CHECK_OK(lfs_link(fs, t_node(t, fs, "a"), t_node(t, fs, "d"), "b",
			  &node, &st));
	t_keep_node(t, fs, node);
	CHECK_U64(st.st_ino, ino);
	CHECK_U64(ino_of(t, fs, "d/b"), ino);
	CHECK_U64(ino_of(t, fs, "a"), ino);
	CHECK_INT(t_stat(t, fs, "a").st_nlink, 2);
	struct stat ua = t_lstat(t, t_upper(t, "a"));
	struct stat ub = t_lstat(t, t_upper(t, "d/b"));
	CHECK_U64(ua.st_ino, ub.st_ino);
	int fd = t_keep_fd(t, lfs_open(fs, t_node(t, fs, "d/b"), O_WRONLY));
	t_pwrite_str(t, fd, "DATA");
	CHECK_STR(t_cat(t, fs, "a"), "DATA");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "data");
	CHECK_WORK_EMPTY();
}

TEST(link_of_a_directory_is_eperm)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_ERR(lfs_link(fs, t_node(t, fs, "d"), lfs_fs_root(fs), "d2",
			   &node, &st), EPERM);
}

/* ---- removing ------------------------------------------------------------- */

TEST(unlink_lower_file_writes_a_chardev_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"lower\"\nL1 f b\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_STR(t_ls(t, fs, ""), "b");
	CHECK_ERR(t_lookup(t_reopen_ro(t), "a"), ENOENT);
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "lower");
	CHECK_WORK_EMPTY();
}

TEST(unlink_in_lower_only_dir_copies_the_dir_up_and_whites_out)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/a\nL1 f d/b\n");

	CHECK_OK(lfs_unlink(fs, t_node(t, fs, "d"), "a"));
	CHECK(S_ISDIR(t_lstat(t, t_upper(t, "d")).st_mode));
	CHECK(t_is_chardev_whiteout(t_upper(t, "d/a")));
	CHECK_STR(t_ls(t, fs, "d"), "b");
	CHECK_STR(t_ls(t, t_reopen_ro(t), "d"), "b");
}

TEST(unlink_upper_only_file_leaves_no_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"up\"\nL1 f b\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(!t_exists(t_upper(t, "a")));
	CHECK(!t_exists(t_upper(t, ".wh.a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_STR(t_disk_ls(t, t_upper(t, "")), "");
	CHECK_WORK_EMPTY();
}

TEST(unlink_of_a_file_created_on_this_mount_leaves_no_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f b\n");

	create_at(t, fs, "", "a", 0644, O_WRONLY, NULL);
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(!t_exists(t_upper(t, "a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
}

TEST(unlink_upper_file_shadowing_a_lower_one_writes_a_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"up\"\nL1 f a \"low\"\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "a"), ENOENT);
	CHECK_WORK_EMPTY();
}

TEST(unlink_of_a_copied_up_file_writes_a_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"low\"\n");

	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));
	CHECK(S_ISREG(t_lstat(t, t_upper(t, "a")).st_mode));
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "a"), ENOENT);
}

TEST(unlink_of_a_name_whited_out_below_needs_no_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"up\"\n"
				       "L1 wh a\n"
				       "L2 f a \"bottom\"\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(!t_exists(t_upper(t, "a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "a"), ENOENT);
}

TEST(unlink_of_a_missing_name_is_enoent)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 wh gone\nL1 f gone\n");

	CHECK_ERR(lfs_unlink(fs, lfs_fs_root(fs), "none"), ENOENT);
	CHECK_ERR(lfs_unlink(fs, lfs_fs_root(fs), "gone"), ENOENT);
	CHECK(t_is_chardev_whiteout(t_upper(t, "gone")));
}

TEST(unlink_of_a_dir_is_eisdir_and_rmdir_of_a_file_is_enotdir)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\nL1 f f\n");

	CHECK_ERR(lfs_unlink(fs, lfs_fs_root(fs), "d"), EISDIR);
	CHECK_ERR(lfs_rmdir(fs, lfs_fs_root(fs), "f"), ENOTDIR);
	CHECK_OK(t_lookup(fs, "d"));
	CHECK_OK(t_lookup(fs, "f"));
	CHECK(!t_exists(t_upper(t, "d")) && !t_exists(t_upper(t, "f")));
}

TEST(rmdir_of_non_empty_merged_dir_is_enotempty)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d d\nL1 f d/x\nL1 f e/y\n");

	CHECK_ERR(lfs_rmdir(fs, lfs_fs_root(fs), "d"), ENOTEMPTY);
	CHECK_ERR(lfs_rmdir(fs, lfs_fs_root(fs), "e"), ENOTEMPTY);
	CHECK_STR(t_ls(t, fs, "d"), "x");
	CHECK_STR(t_ls(t, fs, "e"), "y");
	CHECK(S_ISDIR(t_lstat(t, t_upper(t, "d")).st_mode));
}

TEST(rmdir_of_dir_whose_entries_are_all_whited_out_replaces_it_by_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d d\n"
				       "L0 wh d/x\n"
				       "L1 f d/x\n");

	CHECK_STR(t_ls(t, fs, "d"), "");
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "d")));
	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK_STR(t_ls(t, fs, ""), "");
	CHECK_ERR(t_lookup(t_reopen_ro(t), "d"), ENOENT);
	CHECK_WORK_EMPTY();
}

TEST(rmdir_after_unlinking_every_lower_entry_succeeds)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/x\nL1 f d/y\nL2 f d/z\n");
	struct lfs_node *d = t_node(t, fs, "d");

	CHECK_OK(lfs_unlink(fs, d, "x"));
	CHECK_ERR(lfs_rmdir(fs, lfs_fs_root(fs), "d"), ENOTEMPTY);
	CHECK_OK(lfs_unlink(fs, d, "y"));
	CHECK_OK(lfs_unlink(fs, d, "z"));
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "d")));
	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "d"), ENOENT);
	CHECK_WORK_EMPTY();
}

TEST(rmdir_of_upper_only_empty_dir_leaves_nothing)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d d\nL1 f other\n");

	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK(!t_exists(t_upper(t, "d")));
	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK_WORK_EMPTY();
}

TEST(rmdir_of_lower_only_empty_dir_writes_a_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\n");

	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "d")));
	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK(S_ISDIR(t_lstat(t, t_lower(t, 1, "d")).st_mode));
}

/* ---- renaming ------------------------------------------------------------- */

TEST(rename_upper_file_over_lower_file)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL1 f b \"B\"\n");
	uint64_t ino_a = ino_of(t, fs, "a");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK_U64(ino_of(t, fs, "b"), ino_a);
	CHECK(!t_exists(t_upper(t, "a")));    /* nothing below to hide */
	CHECK_STR(t_disk_cat(t, t_upper(t, "b")), "A");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "b")), "B");
	CHECK_STR(t_ls(t, fs, ""), "b");
	CHECK_STR(t_ls(t, t_reopen_ro(t), ""), "b");
	CHECK_WORK_EMPTY();
}

TEST(rename_lower_file_over_lower_file)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"A\"\nL2 f b \"B\"\n");
	uint64_t ino_a = ino_of(t, fs, "a");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK_U64(ino_of(t, fs, "b"), ino_a);
	CHECK(t_is_chardev_whiteout(t_upper(t, "a")));
	CHECK_STR(t_disk_cat(t, t_upper(t, "b")), "A");
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_ERR(t_lookup(fresh, "a"), ENOENT);
	CHECK_STR(t_cat(t, fresh, "b"), "A");
	CHECK_WORK_EMPTY();
}

TEST(rename_into_another_dir_moves_the_node)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f src/a \"A\"\nL1 d dst\n");
	struct lfs_node *a = t_node(t, fs, "src/a");
	char path[256];

	CHECK_OK(lfs_rename(fs, t_node(t, fs, "src"), "a", t_node(t, fs, "dst"),
			    "moved", 0));
	CHECK_OK(lfs_node_path(a, path, sizeof(path)));
	CHECK_STR(path, "dst/moved");
	CHECK_STR(t_cat(t, fs, "dst/moved"), "A");
	CHECK_ERR(t_lookup(fs, "src/a"), ENOENT);
	CHECK(t_is_chardev_whiteout(t_upper(t, "src/a")));
	CHECK_STR(t_ls(t, fs, "src"), "");
	CHECK_STR(t_ls(t, fs, "dst"), "moved");
}

TEST(unlink_after_rename_over_lower_file_writes_a_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL1 f b \"B\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "b"));
	CHECK_ERR(t_lookup(fs, "b"), ENOENT);
	CHECK(t_is_chardev_whiteout(t_upper(t, "b")));
	CHECK_ERR(t_lookup(t_reopen_ro(t), "b"), ENOENT);
}

TEST(rename_noreplace_onto_a_visible_name_is_eexist)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL1 f b \"B\"\n");

	CHECK_ERR(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b",
			     RENAME_NOREPLACE), EEXIST);
	CHECK_STR(t_cat(t, fs, "a"), "A");
	CHECK_STR(t_cat(t, fs, "b"), "B");
	CHECK(!t_exists(t_upper(t, "b")));
	CHECK_WORK_EMPTY();
}

TEST(rename_noreplace_onto_a_whited_out_name_succeeds)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL0 wh b\nL1 f b \"B\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b",
			    RENAME_NOREPLACE));
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK(S_ISREG(t_lstat(t, t_upper(t, "b")).st_mode));
	CHECK_STR(t_cat(t, t_reopen_ro(t), "b"), "A");
}

TEST(rename_exchange_swaps_two_files)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL1 f b \"B\"\n");
	uint64_t ino_a = ino_of(t, fs, "a"), ino_b = ino_of(t, fs, "b");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b",
			    RENAME_EXCHANGE));
	CHECK_STR(t_cat(t, fs, "a"), "B");
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK_U64(ino_of(t, fs, "a"), ino_b);
	CHECK_U64(ino_of(t, fs, "b"), ino_a);
	CHECK_STR(t_disk_cat(t, t_upper(t, "a")), "B");
	CHECK_STR(t_disk_cat(t, t_upper(t, "b")), "A");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "b")), "B");
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_STR(t_cat(t, fresh, "a"), "B");
	CHECK_STR(t_cat(t, fresh, "b"), "A");
	CHECK_WORK_EMPTY();
}

TEST(rename_exchange_swaps_a_dir_and_a_file)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/in \"i\"\n"
				       "L1 f f \"F\"\n"
				       "L2 f f/below \"hidden by L1 f\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "d", lfs_fs_root(fs), "f",
			    RENAME_EXCHANGE));
	CHECK(S_ISREG(t_stat(t, fs, "d").st_mode));
	CHECK_STR(t_cat(t, fs, "d"), "F");
	CHECK_STR(t_ls(t, fs, "f"), "in");
	CHECK_STR(t_cat(t, fs, "f/in"), "i");
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_STR(t_cat(t, fresh, "d"), "F");
	CHECK_STR(t_ls(t, fresh, "f"), "in");
}

TEST(rename_exchange_with_a_missing_target_is_enoent)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a\n");

	CHECK_ERR(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "none",
			     RENAME_EXCHANGE), ENOENT);
	CHECK_OK(t_lookup(fs, "a"));
	CHECK_ERR(t_lookup(fs, "none"), ENOENT);
}

TEST(rename_of_lower_directory_moves_its_whole_merged_tree)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f d/top \"0\"\n"
				       "L1 f d/f1 \"1\"\n"
				       "L1 f d/sub/f2 \"2\"\n"
				       "L2 f d/f3 \"3\"\n"
				       "L2 f d/sub/f4 \"4\"\n"
				       "L2 wh d/gone\n"
				       "L3 f d/gone \"hidden\"\n");
	uint64_t ino_d = ino_of(t, fs, "d");
	uint64_t ino_f1 = ino_of(t, fs, "d/f1");
	uint64_t ino_f4 = ino_of(t, fs, "d/sub/f4");

	/* the kernel knows d and the files it looked up */
	t_node(t, fs, "d/f1");
	t_node(t, fs, "d/sub/f4");
	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "d", lfs_fs_root(fs), "e", 0));
	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK_STR(t_ls(t, fs, ""), "e");
	CHECK_STR(t_ls(t, fs, "e"), "f1 f3 sub top");
	CHECK_STR(t_ls(t, fs, "e/sub"), "f2 f4");
	CHECK_STR(t_cat(t, fs, "e/f3"), "3");
	CHECK_STR(t_cat(t, fs, "e/sub/f4"), "4");
	CHECK_ERR(t_lookup(fs, "e/gone"), ENOENT);
	CHECK_U64(ino_of(t, fs, "e"), ino_d);
	CHECK_U64(ino_of(t, fs, "e/f1"), ino_f1);
	CHECK_U64(ino_of(t, fs, "e/sub/f4"), ino_f4);
	/* on disk: the tree is in the upper, the old name whited out */
	CHECK(t_is_chardev_whiteout(t_upper(t, "d")));
	CHECK_STR(t_disk_cat(t, t_upper(t, "e/sub/f4")), "4");
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_ERR(t_lookup(fresh, "d"), ENOENT);
	CHECK_STR(t_ls(t, fresh, "e"), "f1 f3 sub top");
	CHECK_STR(t_ls(t, fresh, "e/sub"), "f2 f4");
	CHECK_WORK_EMPTY();
}

TEST(renamed_directory_keeps_st_ino_after_its_nodes_are_dropped)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/f1 \"1\"\nL1 f d/sub/f2\n");
	uint64_t ino_d = ino_of(t, fs, "d");
	uint64_t ino_f1 = ino_of(t, fs, "d/f1");
	uint64_t ino_f2 = ino_of(t, fs, "d/sub/f2");

	/* no reference is kept by ino_of: the rename looks d up itself */
	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "d", lfs_fs_root(fs), "e", 0));
	CHECK_U64(ino_of(t, fs, "e"), ino_d);
	CHECK_U64(ino_of(t, fs, "e/f1"), ino_f1);
	CHECK_U64(ino_of(t, fs, "e/sub/f2"), ino_f2);
}

TEST(rename_dir_onto_whited_out_lower_dir_does_not_merge_its_entries)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 wh dst\n"
				       "L1 f dst/old \"old\"\n"
				       "L1 f src/new \"new\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "src", lfs_fs_root(fs), "dst",
			    0));
	CHECK_STR(t_ls(t, fs, "dst"), "new");
	CHECK_ERR(t_lookup(fs, "dst/old"), ENOENT);
	CHECK_ERR(t_lookup(fs, "src"), ENOENT);
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_STR(t_ls(t, fresh, "dst"), "new");
	CHECK_ERR(t_lookup(fresh, "src"), ENOENT);
	CHECK_WORK_EMPTY();
}

TEST(rename_dir_over_dir_that_merges_to_nothing_replaces_it)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d dst\n"
				       "L0 wh dst/x\n"
				       "L1 f dst/x \"x\"\n"
				       "L0 f src/y \"y\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "src", lfs_fs_root(fs), "dst",
			    0));
	CHECK_STR(t_ls(t, fs, "dst"), "y");
	CHECK_ERR(t_lookup(fs, "dst/x"), ENOENT);
	CHECK_ERR(t_lookup(fs, "src"), ENOENT);
	CHECK_STR(t_ls(t, t_reopen_ro(t), "dst"), "y");
	CHECK_WORK_EMPTY();
}

TEST(rename_dir_over_non_empty_dir_is_enotempty)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f dst/x\nL1 f src/y\n");

	CHECK_ERR(lfs_rename(fs, lfs_fs_root(fs), "src", lfs_fs_root(fs), "dst",
			     0), ENOTEMPTY);
	CHECK_STR(t_ls(t, fs, "dst"), "x");
	CHECK_STR(t_ls(t, fs, "src"), "y");
}

TEST(rename_file_over_dir_is_eisdir_and_dir_over_file_is_enotdir)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\nL1 f f\n");

	CHECK_ERR(lfs_rename(fs, lfs_fs_root(fs), "f", lfs_fs_root(fs), "d", 0),
		  EISDIR);
	CHECK_ERR(lfs_rename(fs, lfs_fs_root(fs), "d", lfs_fs_root(fs), "f", 0),
		  ENOTDIR);
	CHECK(lfs_node_is_dir(t_node(t, fs, "d")));
	CHECK(!lfs_node_is_dir(t_node(t, fs, "f")));
}

/* ---- inode numbers -------------------------------------------------------- */

TEST(st_ino_is_unchanged_by_copy_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\nL1 f d/b \"b\"\n");
	uint64_t ino_a = ino_of(t, fs, "a"), ino_b = ino_of(t, fs, "d/b");
	struct lfs_node *a = t_node(t, fs, "a"), *b = t_node(t, fs, "d/b");
	struct stat st;

	t_keep_fd(t, lfs_open(fs, a, O_WRONLY));
	t_keep_fd(t, lfs_open(fs, b, O_RDWR));
	CHECK_INT(lfs_node_layer(a), 0);
	CHECK_OK(lfs_getattr(fs, a, &st));
	CHECK_U64(st.st_ino, ino_a);
	CHECK_OK(lfs_getattr(fs, b, &st));
	CHECK_U64(st.st_ino, ino_b);
}

TEST(st_ino_of_a_copied_up_file_survives_dropping_its_node)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\n");
	struct lfs_node *a;
	struct stat st;

	CHECK_OK(t_walk(fs, "a", &a, &st));
	uint64_t ino = st.st_ino;
	int fd = lfs_open(fs, a, O_WRONLY);
	CHECK_OK(fd);
	close(fd);
	lfs_node_unref(fs, a, 1);
	CHECK_U64(ino_of(t, fs, "a"), ino);
}

TEST(st_ino_of_a_copied_up_file_survives_dropping_its_parents_node)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/sub/a \"data\"\n");
	struct lfs_node *a;
	struct stat st;

	CHECK_OK(t_walk(fs, "d/sub/a", &a, &st));
	uint64_t ino = st.st_ino;
	int fd = lfs_open(fs, a, O_WRONLY);
	CHECK_OK(fd);
	close(fd);
	/* the last reference: a, sub and d all die */
	lfs_node_unref(fs, a, 1);
	CHECK_U64(ino_of(t, fs, "d/sub/a"), ino);
}

TEST(readdir_inos_match_stat_after_changes)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/lower \"l\"\n"
				       "L1 f d/moved \"m\"\n"
				       "L0 f d/upper \"u\"\n");
	struct lfs_node *d = t_node(t, fs, "d");
	struct t_dirent *v;

	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "d/lower"), O_WRONLY));
	create_at(t, fs, "d", "created", 0644, O_WRONLY, NULL);
	CHECK_OK(lfs_rename(fs, d, "moved", d, "renamed", 0));
	size_t n = t_readdir(t, fs, "d", &v);
	CHECK_INT(n, 6);
	for (size_t i = 0; i < n; i++) {
		const char *path = strcmp(v[i].name, ".") == 0 ? "d"
				   : strcmp(v[i].name, "..") == 0
					   ? ""
					   : t_printf(t, "d/%s", v[i].name);
		struct stat st = t_stat(t, fs, path);
		CHECKF(v[i].ino == st.st_ino, "%s: readdir ino %llu, stat %llu",
		       v[i].name, (unsigned long long)v[i].ino,
		       (unsigned long long)st.st_ino);
		CHECKF(v[i].type == IFTODT(st.st_mode), "%s: type %u vs mode %o",
		       v[i].name, v[i].type, (unsigned)st.st_mode);
	}
}

/* ---- copy-up -------------------------------------------------------------- */

TEST(copy_up_keeps_mode_owner_mtime_and_user_xattrs)
{
	struct lfs_fs *fs;

	t_build(t, t_tmp(t), "L0 d .\n"
			     "L1 f a \"data\"\n"
			     "L1 x a user.k=v\n"
			     "L1 x a user.empty=\n");
	set_owner_mode(t, t_lower(t, 1, "a"), 1234, 2345, 04750);
	set_times(t, t_lower(t, 1, "a"), 1111111111, 1222222222);
	fs = t_fs_rw(t, "");

	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));
	struct stat up = t_lstat(t, t_upper(t, "a"));
	CHECK(S_ISREG(up.st_mode));
	CHECK_INT(up.st_mode & 07777, 04750);
	CHECK_INT(up.st_uid, 1234);
	CHECK_INT(up.st_gid, 2345);
	CHECK_INT(up.st_mtim.tv_sec, 1222222222);
	CHECK_INT(up.st_size, 4);
	CHECK_STR(t_disk_cat(t, t_upper(t, "a")), "data");
	CHECK_STR(t_disk_xattr(t, t_upper(t, "a"), "user.k"), "v");
	CHECK_STR(t_disk_xattr(t, t_upper(t, "a"), "user.empty"), "");
	/* and the merged view reports the same */
	struct stat st = t_stat(t, fs, "a");
	CHECK_INT(st.st_mode & 07777, 04750);
	CHECK_INT(st.st_uid, 1234);
	CHECK_INT(st.st_mtim.tv_sec, 1222222222);
	char buf[8] = "";
	CHECK_INT(lfs_getxattr(fs, t_node(t, fs, "a"), "user.k", buf,
			       sizeof(buf)), 1);
	CHECK_STR(buf, "v");
	CHECK_WORK_EMPTY();
}

TEST(chown_of_lower_symlink_copies_it_up_keeping_target_and_group)
{
	struct lfs_fs *fs;

	t_build(t, t_tmp(t), "L0 d .\nL1 l lnk -> some/where\n");
	if (lchown(t_lower(t, 1, "lnk"), 55, 66) < 0)
		FAIL("lchown: %s", strerror(errno));
	fs = t_fs_rw(t, "");
	struct stat attr = { 0 };
	struct stat st;

	attr.st_uid = 77;
	CHECK_OK(lfs_setattr(fs, t_node(t, fs, "lnk"), &attr, LFS_SET_UID, -1,
			     &st));
	struct stat up = t_lstat(t, t_upper(t, "lnk"));
	CHECK(S_ISLNK(up.st_mode));
	CHECK_INT(up.st_uid, 77);
	CHECK_INT(up.st_gid, 66);
	CHECK_STR(t_readlink(t, fs, "lnk"), "some/where");
	CHECK_INT(t_lstat(t, t_lower(t, 1, "lnk")).st_uid, 55);
}

TEST(copy_up_leaves_private_overlay_xattrs_behind)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\n"
				       "L1 x a trusted.overlay.origin=xyz\n"
				       "L1 x a user.overlay.foo=bar\n"
				       "L1 x a user.keep=1\n");

	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));
	CHECK(t_disk_xattr(t, t_upper(t, "a"), "trusted.overlay.origin") ==
	      NULL);
	CHECK(t_disk_xattr(t, t_upper(t, "a"), "user.overlay.foo") == NULL);
	CHECK_STR(t_disk_xattr(t, t_upper(t, "a"), "user.keep"), "1");
}

TEST(open_o_trunc_copies_no_data)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"lower data\"\n");
	int fd = t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"),
				       O_WRONLY | O_TRUNC));

	CHECK_INT(t_lstat(t, t_upper(t, "a")).st_size, 0);
	CHECK_STR(t_disk_cat(t, t_upper(t, "a")), "");
	CHECK_INT(t_stat(t, fs, "a").st_size, 0);
	CHECK_STR(t_cat(t, fs, "a"), "");
	t_pwrite_str(t, fd, "x");
	CHECK_STR(t_cat(t, fs, "a"), "x");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "lower data");
}

TEST(open_read_only_does_not_copy_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/a \"lower\"\n");

	CHECK_STR(t_cat(t, fs, "d/a"), "lower");
	CHECK(!t_exists(t_upper(t, "d")));
	CHECK_INT(t_layer(t, fs, "d/a"), 1);
}

TEST(open_for_writing_copies_data_and_writes_reach_only_the_upper)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/a \"lower data\"\n");
	struct lfs_node *a = t_node(t, fs, "d/a");
	int fd = t_keep_fd(t, lfs_open(fs, a, O_RDWR));

	CHECK_STR(t_pread_all(t, fd), "lower data");
	t_pwrite_str(t, fd, "UPPER");
	CHECK_STR(t_cat(t, fs, "d/a"), "UPPER data");
	CHECK_STR(t_disk_cat(t, t_upper(t, "d/a")), "UPPER data");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "d/a")), "lower data");
	CHECK_INT(lfs_node_layer(a), 0);
}

TEST(copy_up_keeps_a_sparse_files_data_and_size)
{
	struct lfs_fs *fs;
	char *path;
	int fd;

	t_build(t, t_tmp(t), "L0 d .\nL1 f sparse\n");
	path = t_lower(t, 1, "sparse");
	fd = open(path, O_WRONLY);
	CHECK(fd >= 0);
	CHECK_INT(pwrite(fd, "head", 4, 0), 4);
	CHECK_INT(pwrite(fd, "tail", 4, 8 << 20), 4);
	close(fd);
	fs = t_fs_rw(t, "");

	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "sparse"), O_WRONLY));
	struct stat up = t_lstat(t, t_upper(t, "sparse"));
	CHECK_INT(up.st_size, (8 << 20) + 4);
	fd = t_keep_fd(t, open(t_upper(t, "sparse"), O_RDONLY));
	char buf[5] = "";
	CHECK_INT(pread(fd, buf, 4, 0), 4);
	CHECK_STR(buf, "head");
	CHECK_INT(pread(fd, buf, 4, 8 << 20), 4);
	CHECK_STR(buf, "tail");
	CHECK_INT(pread(fd, buf, 4, 4 << 20), 4);
	CHECK(memcmp(buf, "\0\0\0\0", 4) == 0);
}

/* ---- attributes ----------------------------------------------------------- */

TEST(setattr_mode_of_lower_file_copies_up_and_changes_only_the_upper)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\n");
	struct stat attr = { .st_mode = 0600 }, st;

	CHECK_OK(lfs_setattr(fs, t_node(t, fs, "a"), &attr, LFS_SET_MODE, -1,
			     &st));
	CHECK_INT(st.st_mode & 07777, 0600);
	CHECK_INT(t_stat(t, fs, "a").st_mode & 07777, 0600);
	CHECK_INT(t_lstat(t, t_upper(t, "a")).st_mode & 07777, 0600);
	CHECK_INT(t_lstat(t, t_lower(t, 1, "a")).st_mode & 07777, 0644);
	CHECK_STR(t_disk_cat(t, t_upper(t, "a")), "data");
}

TEST(setattr_size_zero_of_lower_file_copies_no_data)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\n");
	struct stat attr = { .st_size = 0 }, st;

	CHECK_OK(lfs_setattr(fs, t_node(t, fs, "a"), &attr, LFS_SET_SIZE, -1,
			     &st));
	CHECK_INT(st.st_size, 0);
	CHECK_INT(t_lstat(t, t_upper(t, "a")).st_size, 0);
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "data");
}

TEST(setattr_times_of_lower_dir_copies_it_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/x\n");
	struct stat attr = { 0 }, st;

	attr.st_mtim.tv_sec = 1500000000;
	attr.st_atim.tv_sec = 1400000000;
	CHECK_OK(lfs_setattr(fs, t_node(t, fs, "d"), &attr,
			     LFS_SET_MTIME | LFS_SET_ATIME, -1, &st));
	CHECK_INT(st.st_mtim.tv_sec, 1500000000);
	CHECK_INT(t_lstat(t, t_upper(t, "d")).st_mtim.tv_sec, 1500000000);
	CHECK_STR(t_ls(t, fs, "d"), "x");
}

TEST(setxattr_and_removexattr_change_only_the_upper_copy)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\nL1 x a user.old=1\n");
	struct lfs_node *a = t_node(t, fs, "a");
	char buf[16];

	CHECK_OK(lfs_setxattr(fs, a, "user.new", "2", 1, 0));
	CHECK_OK(lfs_removexattr(fs, a, "user.old"));
	CHECK_ERR(lfs_getxattr(fs, a, "user.old", buf, sizeof(buf)), ENODATA);
	CHECK_INT(lfs_getxattr(fs, a, "user.new", buf, sizeof(buf)), 1);
	CHECK_STR(t_disk_xattr(t, t_upper(t, "a"), "user.new"), "2");
	CHECK(t_disk_xattr(t, t_upper(t, "a"), "user.old") == NULL);
	CHECK_STR(t_disk_xattr(t, t_lower(t, 1, "a"), "user.old"), "1");
	CHECK(t_disk_xattr(t, t_lower(t, 1, "a"), "user.new") == NULL);
	CHECK_STR(t_disk_cat(t, t_upper(t, "a")), "data");
}

TEST(setxattr_of_a_private_overlay_name_is_refused)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\n");
	struct lfs_node *d = t_node(t, fs, "d");

	CHECK(lfs_setxattr(fs, d, "trusted.overlay.opaque", "y", 1, 0) < 0);
	CHECK(lfs_setxattr(fs, d, "user.overlay.opaque", "y", 1, 0) < 0);
	CHECK(!t_exists(t_upper(t, "d")) ||
	      t_disk_xattr(t, t_upper(t, "d"), "trusted.overlay.opaque") ==
		      NULL);
}

TEST(removexattr_of_a_missing_name_does_not_copy_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a\n");

	CHECK_ERR(lfs_removexattr(fs, t_node(t, fs, "a"), "user.none"), ENODATA);
	CHECK(!t_exists(t_upper(t, "a")));
}

/* ---- open directories and removed names ----------------------------------- */

static void closedir_deferred(void *a, void *b)
{
	lfs_closedir(a, b);
}

/* Close dir when the test ends. */
static void keep_dir(struct t *t, struct lfs_fs *fs, struct lfs_dir *dir)
{
	t_defer(t, closedir_deferred, fs, dir);
}

/* The names of an open lfs_dir from offset off to the end, in order. */
static char *read_from(struct t *t, struct lfs_dir *dir, off_t off)
{
	struct lfs_dirent de;
	char *out = t_printf(t, "%s", "");
	int r;

	while ((r = lfs_readdir_at(dir, off, &de)) == 1) {
		out = t_printf(t, "%s%s%s", out, out[0] ? " " : "", de.name);
		if (de.next_off <= off)
			FAIL("next_off %lld after %lld", (long long)de.next_off,
			     (long long)off);
		off = de.next_off;
	}
	if (r < 0)
		FAIL("lfs_readdir_at @%lld: %s", (long long)off, t_errname(-r));
	return out;
}

static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
		if ((p == list || p[-1] == ' ') && (p[n] == ' ' || !p[n]))
			return true;
	return false;
}

TEST(readdir_snapshot_does_not_show_a_new_name_until_offset_0)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a\nL1 f b\nL1 f c\n");
	struct lfs_dir *dir;
	struct lfs_dirent de;

	CHECK_OK(lfs_opendir(fs, lfs_fs_root(fs), &dir));
	keep_dir(t, fs, dir);
	CHECK_INT(lfs_readdir_at(dir, 0, &de), 1);
	CHECK_STR(de.name, ".");
	CHECK_INT(lfs_readdir_at(dir, 1, &de), 1);
	create_at(t, fs, "", "new", 0644, O_WRONLY, NULL);
	char *rest = read_from(t, dir, 2);
	CHECKF(!has_word(rest, "new"), "snapshot shows \"%s\"", rest);
	CHECKF(has_word(rest, "a") && has_word(rest, "b") &&
	       has_word(rest, "c"), "snapshot shows \"%s\"", rest);
	char *again = read_from(t, dir, 0);
	CHECKF(has_word(again, "new"), "after offset 0: \"%s\"", again);
	CHECK_STR(t_ls(t, fs, ""), "a b c new");
}

TEST(readdir_snapshot_is_renewed_at_offset_0_after_an_unlink)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a\nL1 f b\n");
	struct lfs_dir *dir;

	CHECK_OK(lfs_opendir(fs, lfs_fs_root(fs), &dir));
	keep_dir(t, fs, dir);
	char *first = read_from(t, dir, 0);
	CHECKF(has_word(first, "a") && has_word(first, "b"), "%s", first);
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	char *again = read_from(t, dir, 0);
	CHECKF(!has_word(again, "a") && has_word(again, "b"), "%s", again);
}

TEST(open_dir_of_a_removed_directory_lists_only_dot_and_dotdot)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 d up\nL1 d low\n");
	struct lfs_dir *dup, *dlow;

	CHECK_OK(lfs_opendir(fs, t_node(t, fs, "up"), &dup));
	keep_dir(t, fs, dup);
	CHECK_OK(lfs_opendir(fs, t_node(t, fs, "low"), &dlow));
	keep_dir(t, fs, dlow);
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "up"));
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "low"));
	CHECK_STR(read_from(t, dup, 0), ". ..");
	CHECK_STR(read_from(t, dlow, 0), ". ..");
}

TEST(open_dir_of_a_dir_removed_after_reading_lists_only_dot_and_dotdot)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/x\n");
	struct lfs_node *d = t_node(t, fs, "d");
	struct lfs_dir *dir;

	CHECK_OK(lfs_opendir(fs, d, &dir));
	keep_dir(t, fs, dir);
	CHECK_STR(read_from(t, dir, 0), ". .. x");
	CHECK_OK(lfs_unlink(fs, d, "x"));
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK_STR(read_from(t, dir, 0), ". ..");
}

TEST(unlinked_upper_file_with_a_live_node_can_be_stat_and_read)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"hello\"\n");
	struct lfs_node *a = t_node(t, fs, "a");
	int fd = t_keep_fd(t, lfs_open(fs, a, O_RDONLY));
	struct stat st;

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_OK(lfs_getattr(fs, a, &st));
	CHECK(S_ISREG(st.st_mode));
	CHECK_INT(st.st_size, 5);
	CHECK_STR(t_pread_all(t, fd), "hello");
	int fd2 = t_keep_fd(t, lfs_open(fs, a, O_RDONLY));
	CHECK_STR(t_pread_all(t, fd2), "hello");
}

TEST(unlinked_lower_file_with_a_live_node_can_be_stat_and_read)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"lower\"\n");
	struct lfs_node *a = t_node(t, fs, "a");
	int fd = t_keep_fd(t, lfs_open(fs, a, O_RDONLY));
	uint64_t ino = ino_of(t, fs, "a");
	struct stat st;

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_OK(lfs_getattr(fs, a, &st));
	CHECK(S_ISREG(st.st_mode));
	CHECK_INT(st.st_size, 5);
	CHECK_U64(st.st_ino, ino);
	CHECK_STR(t_pread_all(t, fd), "lower");
}

TEST(file_written_after_unlink_through_an_open_fd_keeps_its_data)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"lower\"\n");
	struct lfs_node *a = t_node(t, fs, "a");
	int fd = t_keep_fd(t, lfs_open(fs, a, O_RDWR));
	struct stat st;

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	t_pwrite_str(t, fd, "LOWER+more");
	CHECK_OK(lfs_getattr(fs, a, &st));
	CHECK_INT(st.st_size, 10);
	CHECK_STR(t_pread_all(t, fd), "LOWER+more");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "lower");
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
}

TEST(node_replaced_by_rename_keeps_its_old_object)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL0 f b \"B\"\n");
	struct lfs_node *b = t_node(t, fs, "b");
	int fd = t_keep_fd(t, lfs_open(fs, b, O_RDONLY));
	struct stat st;

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK_OK(lfs_getattr(fs, b, &st));
	CHECK_INT(st.st_size, 1);
	CHECK_STR(t_pread_all(t, fd), "B");
}

/* ---- the OCI whiteout format ---------------------------------------------- */

TEST(oci_format_unlink_writes_a_wh_file_and_hides_the_lower_name)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L1 f a \"lower\"\nL1 f d/x\nL1 f k\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	struct stat wh = t_lstat(t, t_upper(t, ".wh.a"));
	CHECK(S_ISREG(wh.st_mode));
	CHECK(!t_exists(t_upper(t, "a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_STR(t_ls(t, fs, ""), "d k");
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_ERR(t_lookup(fresh, "a"), ENOENT);
	CHECK_STR(t_ls(t, fresh, ""), "d k");
	CHECK_WORK_EMPTY();
}

TEST(oci_format_rmdir_writes_a_wh_file_for_the_dir)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI, "L1 f d/x\n");

	CHECK_OK(lfs_unlink(fs, t_node(t, fs, "d"), "x"));
	CHECK(S_ISREG(t_lstat(t, t_upper(t, "d/.wh.x")).st_mode));
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK(S_ISREG(t_lstat(t, t_upper(t, ".wh.d")).st_mode));
	CHECK(!t_exists(t_upper(t, "d")));
	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "d"), ENOENT);
	CHECK_WORK_EMPTY();
}

TEST(oci_format_unlink_of_upper_file_shadowing_lower_one)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L0 f a \"up\"\nL1 f a \"low\"\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(!t_exists(t_upper(t, "a")));
	CHECK(t_exists(t_upper(t, ".wh.a")));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "a"), ENOENT);
}

TEST(oci_format_create_over_wh_file_removes_it)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L1 f a \"lower\"\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	t_pwrite_str(t, create_at(t, fs, "", "a", 0644, O_WRONLY, NULL), "new");
	CHECK(!t_exists(t_upper(t, ".wh.a")));
	CHECK_STR(t_disk_cat(t, t_upper(t, "a")), "new");
	CHECK_STR(t_cat(t, fs, "a"), "new");
	CHECK_STR(t_cat(t, t_reopen_ro(t), "a"), "new");
}

TEST(oci_format_rename_of_a_lower_file_whites_out_the_old_name)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L1 f a \"A\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK(t_exists(t_upper(t, ".wh.a")));
	CHECK(!t_is_chardev_whiteout(t_upper(t, "a")));
	CHECK_STR(t_ls(t, fs, ""), "b");
	CHECK_STR(t_ls(t, t_reopen_ro(t), ""), "b");
}

TEST(oci_format_mkdir_over_wh_file_is_opaque)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L0 ociwh d\nL1 f d/old\n");

	CHECK_ERR(t_lookup(fs, "d"), ENOENT);
	CHECK_OK(mkdir_at(fs, lfs_fs_root(fs), "d", 0755));
	CHECK(!t_exists(t_upper(t, ".wh.d")));
	CHECK_STR(t_ls(t, fs, "d"), "");
	CHECK_STR(t_ls(t, t_reopen_ro(t), "d"), "");
}

TEST(oci_format_writes_no_char_devices)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L1 f a\nL1 f b\nL1 f d/x\nL1 f e\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "b", lfs_fs_root(fs), "c", 0));
	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "d", lfs_fs_root(fs), "d2", 0));
	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "e", lfs_fs_root(fs), "c", 0));
	char *tree = t_disk_tree(t, t_upper(t, ""));
	CHECKF(!strstr(tree, "mode=20"), "a char device in the upper:\n%s",
	       tree);
	CHECK_STR(t_ls(t, fs, ""), "c d2");
	CHECK_STR(t_ls(t, t_reopen_ro(t), ""), "c d2");
}

/* ---- more on names -------------------------------------------------------- */

TEST(rename_between_two_hard_links_of_one_file_keeps_both_names)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL0 h b = a\n");

	/* rename(2): "if oldpath and newpath are existing hard links
	 * referring to the same file, rename() does nothing" */
	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK(t_exists(t_upper(t, "a")) && t_exists(t_upper(t, "b")));
	CHECK_STR(t_tree(t, fs), t_tree(t, t_reopen_ro(t)));
	CHECK_STR(t_ls(t, fs, ""), "a b");
}

TEST(mknod_of_a_0_0_char_device_is_eperm)
{
	/* kernel overlayfs: "Don't allow creation of whiteout on overlay" */
	struct lfs_fs *fs = t_fs_rw(t, "L1 f other\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_ERR(lfs_mknod(fs, lfs_fs_root(fs), "wh", S_IFCHR | 0600,
			    makedev(0, 0), &cred, &node, &st), EPERM);
	CHECK(!t_exists(t_upper(t, "wh")));
	CHECK_STR(t_tree(t, fs), t_tree(t, t_reopen_ro(t)));
}

TEST(rename_onto_itself_changes_nothing)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"A\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "a", 0));
	CHECK_STR(t_cat(t, fs, "a"), "A");
	CHECK_STR(t_ls(t, fs, ""), "a");
	CHECK_STR(t_tree(t, fs), t_tree(t, t_reopen_ro(t)));
}

TEST(node_inside_a_renamed_dir_follows_it)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/sub/f \"lower\"\n");
	struct lfs_node *f = t_node(t, fs, "d/sub/f");
	char path[256];

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "d", lfs_fs_root(fs), "e", 0));
	CHECK_OK(lfs_node_path(f, path, sizeof(path)));
	CHECK_STR(path, "e/sub/f");
	int fd = t_keep_fd(t, lfs_open(fs, f, O_WRONLY));
	t_pwrite_str(t, fd, "UPPER");
	CHECK_STR(t_cat(t, fs, "e/sub/f"), "UPPER");
	CHECK_STR(t_disk_cat(t, t_upper(t, "e/sub/f")), "UPPER");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "d/sub/f")), "lower");
}

TEST(create_in_a_removed_directory_is_enoent)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 d d\nL0 d u\n");
	struct lfs_node *d = t_node(t, fs, "d"), *u = t_node(t, fs, "u");
	struct lfs_node *node;
	struct stat st;

	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "d"));
	CHECK_OK(lfs_rmdir(fs, lfs_fs_root(fs), "u"));
	CHECK_ERR(lfs_create(fs, d, "x", 0644, O_WRONLY, &cred, &node, &st),
		  ENOENT);
	CHECK_ERR(lfs_mkdir(fs, u, "x", 0755, &cred, &node, &st), ENOENT);
	CHECK(!t_exists(t_upper(t, "d/x")));
	CHECK(t_is_chardev_whiteout(t_upper(t, "d")));
	CHECK(!t_exists(t_upper(t, "u")));
	CHECK_WORK_EMPTY();
}

TEST(new_file_at_an_unlinked_name_does_not_disturb_the_old_node)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"old\"\n");
	struct lfs_node *old = t_node(t, fs, "a");
	int fd = t_keep_fd(t, lfs_open(fs, old, O_RDONLY));
	struct stat st;

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	t_pwrite_str(t, create_at(t, fs, "", "a", 0600, O_WRONLY, NULL),
		     "new file");
	CHECK_STR(t_cat(t, fs, "a"), "new file");
	CHECK_OK(lfs_getattr(fs, old, &st));
	CHECK_INT(st.st_size, 3);
	CHECK_STR(t_pread_all(t, fd), "old");
	CHECK(t_node(t, fs, "a") != old);
}

TEST(link_over_a_whiteout_shows_the_linked_file)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"A\"\nL0 wh b\nL1 f b \"B\"\n");
	struct lfs_node *node;
	struct stat st;

	CHECK_OK(lfs_link(fs, t_node(t, fs, "a"), lfs_fs_root(fs), "b", &node,
			  &st));
	t_keep_node(t, fs, node);
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK(S_ISREG(t_lstat(t, t_upper(t, "b")).st_mode));
	CHECK_STR(t_cat(t, t_reopen_ro(t), "b"), "A");
	CHECK_WORK_EMPTY();
}

TEST(unlink_in_an_opaque_upper_dir_needs_no_whiteout)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 opq d\n"
				       "L0 f d/a \"up\"\n"
				       "L1 f d/a \"low\"\n");

	CHECK_OK(lfs_unlink(fs, t_node(t, fs, "d"), "a"));
	CHECK(!t_exists(t_upper(t, "d/a")));
	CHECK_ERR(t_lookup(fs, "d/a"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "d/a"), ENOENT);
}

TEST(failed_changes_leave_the_work_dir_empty)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/x\nL1 f f\nL1 d e\n");
	struct lfs_node *root = lfs_fs_root(fs), *node;
	struct stat st;

	CHECK_ERR(lfs_create(fs, root, "f", 0644, O_WRONLY | O_EXCL, &cred,
			     &node, &st), EEXIST);
	CHECK_ERR(mkdir_at(fs, root, "d", 0755), EEXIST);
	CHECK_ERR(lfs_rmdir(fs, root, "d"), ENOTEMPTY);
	CHECK_ERR(lfs_rename(fs, root, "e", root, "d", 0), ENOTEMPTY);
	CHECK_ERR(lfs_rename(fs, root, "f", root, "d", 0), EISDIR);
	CHECK_ERR(lfs_rename(fs, root, "f", root, "e", RENAME_NOREPLACE),
		  EEXIST);
	CHECK_ERR(lfs_unlink(fs, root, "none"), ENOENT);
	CHECK_WORK_EMPTY();
	CHECK_STR(t_tree(t, fs), t_tree(t, t_reopen_ro(t)));
}

TEST(refused_create_and_rmdir_copy_nothing_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f p/d/x\nL1 f p/f\n");
	struct lfs_node *p = t_node(t, fs, "p"), *node;
	struct stat st;

	CHECK_ERR(lfs_create(fs, p, "f", 0644, O_WRONLY | O_EXCL, &cred, &node,
			     &st), EEXIST);
	CHECK_ERR(mkdir_at(fs, p, "d", 0755), EEXIST);
	CHECK_ERR(lfs_rmdir(fs, p, "d"), ENOTEMPTY);
	CHECK_ERR(lfs_unlink(fs, p, "none"), ENOENT);
	CHECK_STR(t_disk_ls(t, t_upper(t, "")), "");
}

TEST(refused_rename_copies_nothing_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f p/d/x\nL1 f p/e/y\nL1 f p/f\n");
	struct lfs_node *p = t_node(t, fs, "p");

	CHECK_ERR(lfs_rename(fs, p, "e", p, "d", 0), ENOTEMPTY);
	CHECK_ERR(lfs_rename(fs, p, "f", p, "e", RENAME_NOREPLACE), EEXIST);
	CHECK_ERR(lfs_rename(fs, p, "f", p, "d", 0), EISDIR);
	CHECK_STR(t_disk_ls(t, t_upper(t, "")), "");
}

TEST(st_ino_of_a_copied_up_file_survives_a_remount)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/a \"data\"\nL1 f d/b\n");
	uint64_t ino = ino_of(t, fs, "d/a");
	int fd = lfs_open(fs, t_node(t, fs, "d/a"), O_WRONLY);

	CHECK_OK(fd);
	close(fd);
	CHECK_U64(ino_of(t, t_reopen_rw(t), "d/a"), ino);
}

/* ---- more on copy-up and attributes --------------------------------------- */

TEST(copy_up_of_a_file_keeps_its_parents_times)
{
	struct lfs_fs *fs;

	t_build(t, t_tmp(t), "L0 d .\nL1 f d/a \"a\"\n");
	set_times(t, t_lower(t, 1, "d"), 1000000000, 1000000001);
	fs = t_fs_rw(t, "");

	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "d/a"), O_WRONLY));
	struct stat up = t_lstat(t, t_upper(t, "d"));
	CHECK_INT(up.st_mtim.tv_sec, 1000000001);
	CHECK_INT(t_stat(t, fs, "d").st_mtim.tv_sec, 1000000001);
}

TEST(copy_up_of_a_fifo_keeps_its_type)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 p fifo\n");
	struct stat attr = { .st_mode = 0600 }, st;

	CHECK_OK(lfs_setattr(fs, t_node(t, fs, "fifo"), &attr, LFS_SET_MODE, -1,
			     &st));
	struct stat up = t_lstat(t, t_upper(t, "fifo"));
	CHECK(S_ISFIFO(up.st_mode));
	CHECK_INT(up.st_mode & 07777, 0600);
	CHECK(S_ISFIFO(st.st_mode));
}

TEST(setattr_size_of_lower_file_keeps_the_head)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"abcdef\"\n");
	struct stat attr = { .st_size = 2 }, st;

	CHECK_OK(lfs_setattr(fs, t_node(t, fs, "a"), &attr, LFS_SET_SIZE, -1,
			     &st));
	CHECK_INT(st.st_size, 2);
	CHECK_STR(t_cat(t, fs, "a"), "ab");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "abcdef");
}

TEST(unlinked_file_with_a_live_node_keeps_its_xattrs)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"up\"\nL0 x a user.k=v\n");
	struct lfs_node *a = t_node(t, fs, "a");
	char buf[16] = "";

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_INT(lfs_getxattr(fs, a, "user.k", buf, sizeof(buf)), 1);
	CHECK_STR(buf, "v");
}

TEST(setxattr_on_an_unlinked_file_with_a_live_node)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"up\"\n");
	struct lfs_node *a = t_node(t, fs, "a");
	int fd = t_keep_fd(t, lfs_open(fs, a, O_RDONLY));
	char buf[16] = "";

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_OK(lfs_setxattr(fs, a, "user.k", "v", 1, 0));
	CHECK_INT(fgetxattr(fd, "user.k", buf, sizeof(buf)), 1);
	CHECK_STR(buf, "v");
}

TEST(setattr_on_an_unlinked_file_with_a_live_node)
{
	struct lfs_fs *fs = t_fs_rw(t, "L0 f a \"up\"\n");
	struct lfs_node *a = t_node(t, fs, "a");
	int fd = t_keep_fd(t, lfs_open(fs, a, O_RDWR));
	struct stat attr = { .st_mode = 0604, .st_size = 1 }, st;

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_OK(lfs_setattr(fs, a, &attr, LFS_SET_MODE | LFS_SET_SIZE, fd,
			     &st));
	CHECK_INT(st.st_mode & 07777, 0604);
	CHECK_INT(st.st_size, 1);
	CHECK_STR(t_pread_all(t, fd), "u");
}

/* ---- lower hard links (README "Writing", rule 5) -------------------------- */

TEST(lower_hard_links_show_one_file_after_one_name_is_copied_up)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\nL1 h d/b = a\n");
	uint64_t ino = ino_of(t, fs, "a");

	CHECK_U64(ino_of(t, fs, "d/b"), ino);
	int fd = t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));
	t_pwrite_str(t, fd, "DATA");
	CHECK_STR(t_cat(t, fs, "d/b"), "DATA");
	CHECK_STR(t_cat(t, fs, "a"), "DATA");
	CHECK_U64(ino_of(t, fs, "a"), ino);
	CHECK_U64(ino_of(t, fs, "d/b"), ino);
	CHECK_INT(t_stat(t, fs, "a").st_nlink, 2);
	CHECK_INT(t_stat(t, fs, "d/b").st_nlink, 2);
	CHECK_U64(t_lstat(t, t_upper(t, "a")).st_ino,
		  t_lstat(t, t_upper(t, "d/b")).st_ino);
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "a")), "data");
	CHECK_WORK_EMPTY();
}

TEST(lower_hard_link_names_join_the_copy_on_a_later_mount)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\nL1 h b = a\n");
	int fd = lfs_open(fs, t_node(t, fs, "a"), O_WRONLY);

	CHECK_OK(fd);
	t_pwrite_str(t, fd, "DATA");
	close(fd);
	struct lfs_fs *again = t_reopen_rw(t);
	CHECK_STR(t_cat(t, again, "b"), "DATA");
	CHECK_U64(ino_of(t, again, "b"), ino_of(t, again, "a"));
	CHECK_INT(t_stat(t, again, "a").st_nlink, 2);
}

TEST(nlink_of_a_copied_up_hard_link_drops_when_a_lower_name_is_unlinked)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\n"
				       "L1 h b = a\n"
				       "L1 h c = a\n");

	CHECK_INT(t_stat(t, fs, "a").st_nlink, 3);
	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));
	CHECK_INT(t_stat(t, fs, "a").st_nlink, 3);
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "c"));
	CHECK_INT(t_stat(t, fs, "a").st_nlink, 2);
	CHECK_INT(t_stat(t, fs, "b").st_nlink, 2);
}

TEST(nlink_of_a_hard_link_copied_up_after_an_unlink_counts_the_names_left)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\n"
				       "L1 h b = a\n"
				       "L1 h c = a\n");

	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "c"));
	t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));
	CHECK_INT(t_stat(t, fs, "a").st_nlink, 2);
	CHECK_INT(t_stat(t, fs, "b").st_nlink, 2);
}

TEST(unlinking_a_copied_up_hard_link_name_keeps_the_other)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f a \"data\"\nL1 h b = a\n");
	int fd = t_keep_fd(t, lfs_open(fs, t_node(t, fs, "a"), O_WRONLY));

	t_pwrite_str(t, fd, "DATA");
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
	CHECK_STR(t_cat(t, fs, "b"), "DATA");
	CHECK_INT(t_stat(t, fs, "b").st_nlink, 1);
	CHECK_STR(t_cat(t, t_reopen_rw(t), "b"), "DATA");
}

/* ---- more on the OCI format ----------------------------------------------- */

TEST(oci_format_create_over_a_chardev_whiteout_of_an_earlier_writer)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L0 wh f\nL0 wh d\n"
					"L1 f f \"lower\"\nL1 f d/old\n");

	t_pwrite_str(t, create_at(t, fs, "", "f", 0644, O_WRONLY, NULL), "n");
	CHECK_OK(mkdir_at(fs, lfs_fs_root(fs), "d", 0755));
	CHECK(S_ISREG(t_lstat(t, t_upper(t, "f")).st_mode));
	CHECK(S_ISDIR(t_lstat(t, t_upper(t, "d")).st_mode));
	CHECK_STR(t_cat(t, fs, "f"), "n");
	CHECK_STR(t_ls(t, fs, "d"), "");
	struct lfs_fs *fresh = t_reopen_ro(t);
	CHECK_STR(t_cat(t, fresh, "f"), "n");
	CHECK_STR(t_ls(t, fresh, "d"), "");
}

TEST(oci_format_rename_onto_a_whited_out_name_removes_its_wh_file)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
					"L0 f a \"A\"\nL0 ociwh b\n"
					"L1 f b \"B\"\n");

	CHECK_OK(lfs_rename(fs, lfs_fs_root(fs), "a", lfs_fs_root(fs), "b", 0));
	CHECK(!t_exists(t_upper(t, ".wh.b")));
	CHECK_STR(t_disk_ls(t, t_upper(t, "")), "b");
	CHECK_STR(t_cat(t, fs, "b"), "A");
	CHECK_STR(t_cat(t, t_reopen_ro(t), "b"), "A");
}

/* ---- mounting writable ------------------------------------------------------ */

TEST(writable_mount_without_a_workdir_is_einval)
{
	char *paths[] = { t_upper(t, ""), t_lower(t, 1, "") };
	struct lfs_fs_config config = { .read_only = false };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack;
	struct lfs_fs *fs;

	t_build(t, t_tmp(t), "L0 d .\nL1 d .\n");
	CHECK_OK(lfs_stack_open(&stack, paths, 2, err));
	int r = lfs_fs_new(&fs, stack, &config, err);
	if (r == 0)
		lfs_fs_free(fs);
	else
		lfs_stack_free(stack);
	CHECK_ERR(r, EINVAL);
	CHECK(err[0] != '\0');
}

TEST(writable_mount_needs_the_workdir_on_the_uppers_filesystem)
{
	char *other = t_mkdtemp(t, "/dev/shm");
	struct stat a, b;

	t_build(t, t_tmp(t), "L0 d .\nL1 d .\n");
	if (stat(other, &a) < 0 || stat(t_tmp(t), &b) < 0 ||
	    a.st_dev == b.st_dev)
		t_skip(t, "/dev/shm is not another filesystem here");
	char *paths[] = { t_upper(t, ""), t_lower(t, 1, "") };
	struct lfs_fs_config config = { .read_only = false, .workdir = other };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack;
	struct lfs_fs *fs;

	CHECK_OK(lfs_stack_open(&stack, paths, 2, err));
	int r = lfs_fs_new(&fs, stack, &config, err);
	if (r == 0)
		lfs_fs_free(fs);
	else
		lfs_stack_free(stack);
	CHECK_ERR(r, EXDEV);
	CHECKF(t_contains(err, "same filesystem"), "err: %s", err);
}

TEST(writable_mount_empties_the_work_dir)
{
	char *work = t_work_subdir(t);

	t_build(t, t_tmp(t), "L0 d .\nL1 f a\n");
	CHECK(mkdir(t_workdir(t), 0755) == 0);
	CHECK(mkdir(work, 0700) == 0);
	CHECK(mkdir(t_printf(t, "%s/leftover", work), 0700) == 0);
	CHECK(close(creat(t_printf(t, "%s/leftover/f", work), 0600)) == 0);
	CHECK(close(creat(t_printf(t, "%s/#lfs.3", work), 0600)) == 0);
	struct lfs_fs *fs = t_fs_rw(t, "");
	CHECK_WORK_EMPTY();
	CHECK_STR(t_ls(t, fs, ""), "a");
}

TEST(auto_whiteout_format_writes_char_devices_where_mknod_works)
{
	struct lfs_fs *fs = t_fs_rw_fmt(t, LFS_WHITEOUT_AUTO, "L1 f a\n");

	if (mknod(t_printf(t, "%s/probe", t_tmp(t)), S_IFCHR | 0600,
		  makedev(0, 0)) < 0)
		t_skip(t, "mknod not allowed here");
	CHECK_OK(lfs_unlink(fs, lfs_fs_root(fs), "a"));
	CHECK(t_is_chardev_whiteout(t_upper(t, "a")));
	CHECK(!t_exists(t_upper(t, ".wh.a")));
}

/* ---- invariants over sequences of changes --------------------------------- */

static const char *const busy_spec =
	"L0 f top \"t\"\n"
	"L0 d etc\n"
	"L0 wh etc/removed\n"
	"L1 f etc/removed \"r\"\n"
	"L1 f etc/passwd \"root\"\n"
	"L1 f etc/group \"wheel\"\n"
	"L1 l etc/link -> passwd\n"
	"L1 f usr/bin/sh \"sh\"\n"
	"L1 f usr/lib/libc \"libc\"\n"
	"L1 x usr/lib/libc user.a=1\n"
	"L2 f usr/bin/ls \"ls\"\n"
	"L2 f usr/share/doc/README \"doc\"\n"
	"L2 f var/log/old \"old\"\n"
	"L2 f opt/x \"x\"\n";

/* One step of the busy sequence; step < 0: how many there are. */
static int busy_step(struct t *t, struct lfs_fs *fs, int step)
{
	struct lfs_node *node;
	struct stat st, attr = { 0 };
	int fd, r = 0;

#define ROOT lfs_fs_root(fs)
#define N(p) t_node(t, fs, p)
	switch (step) {
	case 0:
		fd = t_keep_fd(t, lfs_open(fs, N("etc/passwd"), O_RDWR));
		t_pwrite_str(t, fd, "ROOT");
		break;
	case 1:
		r = lfs_unlink(fs, N("etc"), "group");
		break;
	case 2:
		fd = lfs_create(fs, N("usr/share/doc"), "NEW", 0600, O_WRONLY,
				&cred, &node, &st);
		t_keep_fd(t, fd);
		t_keep_node(t, fs, node);
		break;
	case 3:
		r = lfs_rename(fs, N("usr"), "bin", ROOT, "bin", 0);
		break;
	case 4:
		r = mkdir_at(fs, N("var"), "cache", 0700);
		break;
	case 5:
		r = lfs_rename(fs, N("var/log"), "old", N("var/cache"), "old2",
			       0);
		break;
	case 6:
		r = lfs_rmdir(fs, N("var"), "log");
		break;
	case 7:
		r = lfs_symlink(fs, ROOT, "sh", "bin/sh", &cred, &node, &st);
		if (r == 0)
			lfs_node_unref(fs, node, 1);
		break;
	case 8:
		r = lfs_link(fs, N("usr/lib/libc"), N("usr/lib"), "libc.so",
			     &node, &st);
		if (r == 0)
			lfs_node_unref(fs, node, 1);
		break;
	case 9:
		r = lfs_rename(fs, ROOT, "top", N("etc"), "removed",
			       RENAME_NOREPLACE);
		break;
	case 10:
		r = lfs_rename(fs, ROOT, "opt", ROOT, "etc", RENAME_EXCHANGE);
		break;
	case 11:
		attr.st_mode = 0700;
		r = lfs_setattr(fs, N("usr/share"), &attr, LFS_SET_MODE, -1,
				&st);
		break;
	case 12:
		r = lfs_setxattr(fs, N("usr/lib/libc"), "user.b", "2", 1, 0);
		break;
	case 13:
		r = lfs_unlink(fs, N("bin"), "ls");
		break;
	case 14:
		r = lfs_mknod(fs, N("var"), "fifo", S_IFIFO | 0600, 0, &cred,
			      &node, &st);
		if (r == 0)
			lfs_node_unref(fs, node, 1);
		break;
	case 15:
		r = lfs_rename(fs, N("opt"), "link", N("var/cache"), "link", 0);
		break;
	default:
		return 16;
	}
#undef ROOT
#undef N
	return r;
}

TEST(work_dir_is_empty_after_each_change)
{
	struct lfs_fs *fs = t_fs_rw_n(t, 3, busy_spec);
	int n = busy_step(t, fs, -1);

	CHECK_WORK_EMPTY();
	for (int i = 0; i < n; i++) {
		int r = busy_step(t, fs, i);
		CHECKF(r >= 0, "step %d: %s", i, t_errname(-r));
		char *left = t_work_ls(t);
		CHECKF(left[0] == '\0', "after step %d the work dir holds %s",
		       i, left);
	}
}

TEST(lower_layers_are_unchanged_by_changes)
{
	t_build(t, t_tmp(t), busy_spec);
	char *l1 = t_disk_tree(t, t_lower(t, 1, ""));
	char *l2 = t_disk_tree(t, t_lower(t, 2, ""));
	struct lfs_fs *fs = t_fs_rw_n(t, 3, "");
	int n = busy_step(t, fs, -1);

	for (int i = 0; i < n; i++) {
		int r = busy_step(t, fs, i);
		CHECKF(r >= 0, "step %d: %s", i, t_errname(-r));
	}
	/* and read everything through the merge once more */
	(void)t_tree(t, fs);
	CHECK_STR(t_disk_tree(t, t_lower(t, 1, "")), l1);
	CHECK_STR(t_disk_tree(t, t_lower(t, 2, "")), l2);
}

TEST(index_stays_exact_after_a_sequence_of_changes)
{
	struct lfs_fs *fs = t_fs_rw_n(t, 3, busy_spec);
	int n = busy_step(t, fs, -1);

	for (int i = 0; i < n; i++) {
		int r = busy_step(t, fs, i);
		CHECKF(r >= 0, "step %d: %s", i, t_errname(-r));
		char *live = t_tree(t, fs);
		char *fresh = t_tree(t, t_reopen_ro(t));
		CHECKF(strcmp(live, fresh) == 0,
		       "after step %d:\nlive:\n%s\nfrom disk:\n%s", i, live,
		       fresh);
	}
}

TEST(index_stays_exact_after_a_sequence_of_changes_oci)
{
	struct lfs_fs *fs;
	int n;

	/* busy_spec's upper whiteout, in the OCI format */
	fs = t_fs_rw_fmt(t, LFS_WHITEOUT_OCI,
			 "L0 f top \"t\"\n"
			 "L0 d etc\n"
			 "L0 ociwh etc/removed\n"
			 "L1 f etc/removed \"r\"\n"
			 "L1 f etc/passwd \"root\"\n"
			 "L1 f etc/group \"wheel\"\n"
			 "L1 l etc/link -> passwd\n"
			 "L1 f usr/bin/sh \"sh\"\n"
			 "L1 f usr/lib/libc \"libc\"\n"
			 "L1 x usr/lib/libc user.a=1\n"
			 "L2 f usr/bin/ls \"ls\"\n"
			 "L2 f usr/share/doc/README \"doc\"\n"
			 "L2 f var/log/old \"old\"\n"
			 "L2 f opt/x \"x\"\n");
	n = busy_step(t, fs, -1);
	for (int i = 0; i < n; i++) {
		int r = busy_step(t, fs, i);
		CHECKF(r >= 0, "step %d: %s", i, t_errname(-r));
		char *live = t_tree(t, fs);
		char *fresh = t_tree(t, t_reopen_ro(t));
		CHECKF(strcmp(live, fresh) == 0,
		       "after step %d:\nlive:\n%s\nfrom disk:\n%s", i, live,
		       fresh);
	}
	CHECK_WORK_EMPTY();
}

TEST(index_stays_exact_across_a_writable_remount)
{
	struct lfs_fs *fs = t_fs_rw_n(t, 3, busy_spec);
	int n = busy_step(t, fs, -1);

	for (int i = 0; i < n; i++)
		CHECK_OK(busy_step(t, fs, i));
	char *live = t_tree(t, fs);
	struct lfs_fs *again = t_reopen_rw(t);
	CHECK_STR(t_tree(t, again), live);
	/* and the remount can go on changing what the first one made */
	CHECK_OK(lfs_unlink(again, t_node(t, again, "var/cache"), "old2"));
	CHECK_OK(lfs_unlink(again, t_node(t, again, "var/cache"), "link"));
	CHECK_OK(lfs_rmdir(again, t_node(t, again, "var"), "cache"));
	CHECK_ERR(t_lookup(again, "var/cache"), ENOENT);
	CHECK_ERR(t_lookup(t_reopen_ro(t), "var/cache"), ENOENT);
}

/* ---- read-only mounts ------------------------------------------------------ */

TEST(changes_on_a_read_only_mount_are_erofs)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\nL0 d d\n");
	struct lfs_node *root = lfs_fs_root(fs), *node;
	struct stat st, attr = { .st_mode = 0600 };

	CHECK_ERR(lfs_create(fs, root, "n", 0644, O_WRONLY, &cred, &node, &st),
		  EROFS);
	CHECK_ERR(lfs_mkdir(fs, root, "n", 0755, &cred, &node, &st), EROFS);
	CHECK_ERR(lfs_mknod(fs, root, "n", S_IFIFO | 0644, 0, &cred, &node,
			    &st), EROFS);
	CHECK_ERR(lfs_symlink(fs, root, "n", "x", &cred, &node, &st), EROFS);
	CHECK_ERR(lfs_link(fs, t_node(t, fs, "a"), root, "n", &node, &st),
		  EROFS);
	CHECK_ERR(lfs_unlink(fs, root, "a"), EROFS);
	CHECK_ERR(lfs_rmdir(fs, root, "d"), EROFS);
	CHECK_ERR(lfs_rename(fs, root, "a", root, "b", 0), EROFS);
	CHECK_ERR(lfs_setattr(fs, t_node(t, fs, "a"), &attr, LFS_SET_MODE, -1,
			      &st), EROFS);
	CHECK_ERR(lfs_setxattr(fs, t_node(t, fs, "a"), "user.x", "1", 1, 0),
		  EROFS);
	CHECK_STR(t_ls(t, fs, ""), "a d");
}

/* ---- requests without open handles (fs/file.c, fs/readdir.c) ---------- */

static char *pread_str(struct t *t, int fd)
{
	char *buf = t_own(t, calloc(1, 256));
	ssize_t n = pread(fd, buf, 255, 0);

	if (n < 0)
		FAIL("pread: %s", strerror(errno));
	return buf;
}

TEST(cached_data_fd_moves_to_the_upper_copy_under_the_same_number)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f f \"lower\"\n");
	struct lfs_node *node = t_node(t, fs, "f");
	int rfd, wfd;
	bool rowned, wowned;

	CHECK_OK(lfs_data_fd(fs, node, &rfd, &rowned));
	CHECK(!rowned);
	CHECK_STR(pread_str(t, rfd), "lower");
	/* A write copies the file up; the fd a read borrowed a moment ago
	 * now reads the upper copy (a concurrent read never meets a closed
	 * number). */
	CHECK_OK(lfs_write_fd(fs, node, &wfd, &wowned));
	CHECK(!wowned);
	CHECK_INT(wfd, rfd);
	CHECK(pwrite(wfd, "UPPER", 5, 0) == 5);
	CHECK_STR(pread_str(t, rfd), "UPPER");
	CHECK_STR(t_disk_cat(t, t_upper(t, "f")), "UPPER");
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "f")), "lower");
	CHECK_WORK_EMPTY();
}

TEST(write_fd_of_a_removed_lower_file_is_a_nameless_upper_copy)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/f \"lower\"\n");
	struct lfs_node *node = t_node(t, fs, "d/f");
	struct stat st;
	bool owned;
	int fd;

	CHECK_OK(lfs_unlink(fs, t_node(t, fs, "d"), "f"));
	CHECK_OK(lfs_write_fd(fs, node, &fd, &owned));
	CHECK(pwrite(fd, "X", 1, 0) == 1);
	CHECK_STR(pread_str(t, fd), "Xower");
	CHECK_OK(lfs_getattr(fs, node, &st));
	CHECK_INT(st.st_nlink, 0);
	if (owned)
		close(fd);
	CHECK_STR(t_disk_cat(t, t_lower(t, 1, "d/f")), "lower");
	CHECK_ERR(t_lookup(fs, "d/f"), ENOENT);
	CHECK_WORK_EMPTY();
}

/* Names listed from offset off on, without a handle, joined by ' '. */
static char *list_from(struct t *t, struct lfs_fs *fs, struct lfs_node *d,
		       off_t off, off_t *ret_first_off)
{
	char *out = t_own(t, calloc(1, 4096));
	struct lfs_dirent de;
	int r;

	while ((r = lfs_readdir_node(fs, d, off, &de)) == 1) {
		if (ret_first_off) {
			*ret_first_off = de.next_off;
			ret_first_off = NULL;
		}
		if (strcmp(de.name, ".") != 0 && strcmp(de.name, "..") != 0) {
			strcat(out, de.name);
			strcat(out, " ");
		}
		off = de.next_off;
	}
	if (r < 0)
		FAIL("lfs_readdir_node: %s", t_errname(-r));
	return out;
}

TEST(listing_offsets_stay_valid_when_earlier_names_go)
{
	struct lfs_fs *fs = t_fs_rw(t, "L1 f d/a \"\"\nL1 f d/b \"\"\n"
				       "L1 f d/c \"\"\nL0 f d/u \"\"\n");
	struct lfs_node *d = t_node(t, fs, "d");
	struct lfs_dirent de;
	char *all = list_from(t, fs, d, 0, NULL);
	off_t off = 2;
	char first[16];

	/* Read the first name, then remove it and another before going
	 * on: the rest is listed, nothing skipped, nothing twice. */
	CHECK_INT(lfs_readdir_node(fs, d, off, &de), 1);
	snprintf(first, sizeof(first), "%s", de.name);
	off = de.next_off;
	const char *other = strcmp(first, "a") == 0 ? "b" : "a";
	CHECK_OK(lfs_unlink(fs, d, first));
	CHECK_OK(lfs_unlink(fs, d, other));
	create_at(t, fs, "d", "new", 0644, O_RDWR | O_CREAT | O_EXCL, NULL);
	char *rest = list_from(t, fs, d, off, NULL);
	char *want = t_own(t, calloc(1, 4096));
	for (char *n = strtok(t_printf(t, "%s", all), " "); n;
	     n = strtok(NULL, " "))
		if (strcmp(n, first) != 0 && strcmp(n, other) != 0)
			strcat(strcat(want, n), " ");
	strcat(want, "new ");
	CHECK_STR(rest, want);
}
