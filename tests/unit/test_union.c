/*
 * test_union.c - the union rules (README.md, "Union rules"), one property
 * per test, through the core API.
 */
#include <errno.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "harness.h"

/* ---- rule 1: top-most wins --------------------------------------------- */

TEST(top_most_layer_provides_a_name)
{
	struct lfs_fs *fs = t_fs(t, "L0 f etc/os-release \"top\"\n"
				    "L1 f etc/os-release \"middle\"\n"
				    "L2 f etc/os-release \"bottom\"\n");

	CHECK_STR(t_cat(t, fs, "etc/os-release"), "top");
	CHECK_INT(t_layer(t, fs, "etc/os-release"), 0);
}

TEST(name_only_in_a_lower_layer_comes_from_it)
{
	struct lfs_fs *fs = t_fs(t, "L0 f top-only \"0\"\n"
				    "L2 f bottom-only \"2\"\n");

	CHECK_STR(t_cat(t, fs, "bottom-only"), "2");
	CHECK_INT(t_layer(t, fs, "bottom-only"), 2);
	CHECK_INT(t_layer(t, fs, "top-only"), 0);
}

TEST(top_most_layer_provides_attributes)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"12345\"\n"
				    "L1 f a \"1\"\n");
	struct stat st = t_stat(t, fs, "a");

	CHECK_INT(st.st_size, 5);
	CHECK(S_ISREG(st.st_mode));
}

/* ---- rule 2: a non-directory hides everything below -------------------- */

TEST(file_hides_lower_directory)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d \"file\"\n"
				    "L1 f d/inside\n");
	struct stat st = t_stat(t, fs, "d");

	CHECK(S_ISREG(st.st_mode));
	CHECK_STR(t_cat(t, fs, "d"), "file");
	CHECK_ERR(t_lookup(fs, "d/inside"), ENOTDIR);
	CHECK_STR(t_ls(t, fs, ""), "d");
}

TEST(symlink_hides_lower_directory)
{
	struct lfs_fs *fs = t_fs(t, "L0 l d -> elsewhere\n"
				    "L1 f d/inside\n");

	CHECK(S_ISLNK(t_stat(t, fs, "d").st_mode));
	CHECK_STR(t_readlink(t, fs, "d"), "elsewhere");
	CHECK_ERR(t_lookup(fs, "d/inside"), ENOTDIR);
}

TEST(device_and_fifo_hide_lower_names)
{
	struct lfs_fs *fs = t_fs(t, "L0 c dev 1 3\n"
				    "L0 p fifo\n"
				    "L1 f dev/x\n"
				    "L1 f fifo \"lower\"\n");
	struct stat st = t_stat(t, fs, "dev");

	CHECK(S_ISCHR(st.st_mode));
	CHECK_INT(major(st.st_rdev), 1);
	CHECK_INT(minor(st.st_rdev), 3);
	CHECK(S_ISFIFO(t_stat(t, fs, "fifo").st_mode));
	CHECK_INT(t_layer(t, fs, "fifo"), 0);
}

/* ---- rule 3: directories merge ------------------------------------------ */

TEST(directories_merge_across_layers)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/top\n"
				    "L1 f d/middle\n"
				    "L2 f d/bottom\n"
				    "L2 f d/sub/deep \"deep\"\n"
				    "L0 d d/sub\n");

	CHECK_STR(t_ls(t, fs, "d"), "bottom middle sub top");
	CHECK_STR(t_cat(t, fs, "d/sub/deep"), "deep");
	CHECK_INT(t_layer(t, fs, "d/sub/deep"), 2);
}

TEST(merged_directory_is_provided_by_its_top_most_layer)
{
	struct lfs_fs *fs = t_fs(t, "L1 f d/x\n"
				    "L2 f d/y\n");

	CHECK(lfs_node_is_dir(t_node(t, fs, "d")));
	CHECK_INT(t_layer(t, fs, "d"), 1);
}

TEST(directory_over_lower_non_directory_ends_merge)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/top\n"
				    "L1 f d \"a file\"\n"
				    "L2 f d/below-the-file\n");

	CHECK_STR(t_ls(t, fs, "d"), "top");
	CHECK_ERR(t_lookup(fs, "d/below-the-file"), ENOENT);
}

TEST(directory_over_lower_symlink_ends_merge)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/top\n"
				    "L1 l d -> /etc\n"
				    "L2 f d/below-the-link\n");

	CHECK_STR(t_ls(t, fs, "d"), "top");
}

TEST(directory_over_lower_whiteout_ends_merge)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/top\n"
				    "L1 wh d\n"
				    "L2 f d/below-the-whiteout\n");

	CHECK_STR(t_ls(t, fs, "d"), "top");
	CHECK_ERR(t_lookup(fs, "d/below-the-whiteout"), ENOENT);
}

TEST(merge_continues_past_layers_without_the_directory)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/top\n"
				    "L1 f other\n"
				    "L2 f d/bottom\n");

	CHECK_STR(t_ls(t, fs, "d"), "bottom top");
}

/* ---- rule 4: whiteouts -------------------------------------------------- */

TEST(whiteout_char_device_hides_lower_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 wh etc/old\n"
				    "L1 f etc/old\n"
				    "L1 f etc/kept\n");

	CHECK_ERR(t_lookup(fs, "etc/old"), ENOENT);
	CHECK_STR(t_ls(t, fs, "etc"), "kept");
}

TEST(whiteout_oci_hides_lower_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 ociwh etc/old\n"
				    "L1 f etc/old\n"
				    "L1 f etc/kept\n");

	CHECK_ERR(t_lookup(fs, "etc/old"), ENOENT);
	CHECK_STR(t_ls(t, fs, "etc"), "kept");
}

TEST(whiteout_trusted_xattr_hides_lower_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 xwh etc/old\n"
				    "L0 f etc/new\n"
				    "L1 f etc/old\n"
				    "L1 f etc/kept\n");

	CHECK_ERR(t_lookup(fs, "etc/old"), ENOENT);
	CHECK_STR(t_ls(t, fs, "etc"), "kept new");
}

TEST(whiteout_user_xattr_hides_lower_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 uxwh etc/old\n"
				    "L1 f etc/old\n"
				    "L1 f etc/kept\n");

	CHECK_ERR(t_lookup(fs, "etc/old"), ENOENT);
	CHECK_STR(t_ls(t, fs, "etc"), "kept");
}

TEST(whiteout_xattr_at_layer_root_hides_lower_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 xwh old\n"
				    "L1 f old\n"
				    "L1 f kept\n");

	CHECK_ERR(t_lookup(fs, "old"), ENOENT);
	CHECK_STR(t_ls(t, fs, ""), "kept");
}

TEST(xattr_whiteout_without_x_mark_is_a_visible_empty_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 f etc/old\n"
				    "L0 x etc/old trusted.overlay.whiteout=\n"
				    "L1 f etc/old \"lower\"\n");
	struct stat st = t_stat(t, fs, "etc/old");

	CHECK(S_ISREG(st.st_mode));
	CHECK_INT(st.st_size, 0);
	CHECK_INT(t_layer(t, fs, "etc/old"), 0);
	CHECK_STR(t_ls(t, fs, "etc"), "old");
}

TEST(xattr_whiteout_that_is_not_empty_is_a_visible_file)
{
	struct lfs_fs *fs = t_fs(t, "L0 xwh etc/gone\n"
				    "L0 f etc/kept \"data\"\n"
				    "L0 x etc/kept trusted.overlay.whiteout=\n"
				    "L1 f etc/kept \"lower\"\n"
				    "L1 f etc/gone\n");

	CHECK_STR(t_cat(t, fs, "etc/kept"), "data");
	CHECK_STR(t_ls(t, fs, "etc"), "kept");
}

TEST(opaque_x_mark_alone_hides_nothing)
{
	struct lfs_fs *fs = t_fs(t, "L0 f etc/top\n"
				    "L0 x etc trusted.overlay.opaque=x\n"
				    "L1 f etc/bottom\n");

	CHECK_STR(t_ls(t, fs, "etc"), "bottom top");
}

TEST(char_device_other_than_0_0_is_not_a_whiteout)
{
	struct lfs_fs *fs = t_fs(t, "L0 c null 1 3\n"
				    "L1 f null\n");

	CHECK(S_ISCHR(t_stat(t, fs, "null").st_mode));
	CHECK_STR(t_ls(t, fs, ""), "null");
}

TEST(whiteout_hides_a_whole_lower_directory)
{
	struct lfs_fs *fs = t_fs(t, "L0 wh usr/share\n"
				    "L1 f usr/share/doc/README\n"
				    "L1 f usr/bin/sh\n");

	CHECK_ERR(t_lookup(fs, "usr/share"), ENOENT);
	CHECK_ERR(t_lookup(fs, "usr/share/doc/README"), ENOENT);
	CHECK_STR(t_ls(t, fs, "usr"), "bin");
}

TEST(whiteout_hides_every_layer_below_it)
{
	struct lfs_fs *fs = t_fs(t, "L1 ociwh a\n"
				    "L2 f a\n"
				    "L3 f a\n"
				    "L4 d a\n");

	CHECK_ERR(t_lookup(fs, "a"), ENOENT);
}

TEST(whiteout_does_not_hide_the_layers_above_it)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"above\"\n"
				    "L1 wh a\n"
				    "L2 f a \"below\"\n");

	CHECK_STR(t_cat(t, fs, "a"), "above");
}

TEST(whiteout_itself_is_never_shown)
{
	struct lfs_fs *fs = t_fs(t, "L0 wh nothing-below-1\n"
				    "L0 ociwh nothing-below-2\n"
				    "L0 xwh nothing-below-3\n"
				    "L0 f shown\n");

	CHECK_STR(t_ls(t, fs, ""), "shown");
	CHECK_ERR(t_lookup(fs, "nothing-below-1"), ENOENT);
	CHECK_ERR(t_lookup(fs, "nothing-below-3"), ENOENT);
}

TEST(name_and_its_oci_whiteout_in_one_layer)
{
	/* The layer shows its own "x"; the whiteout hides the lower ones. */
	struct lfs_fs *fs = t_fs(t, "L0 f x \"mine\"\n"
				    "L0 ociwh x\n"
				    "L1 f x \"lower\"\n"
				    "L0 f d/top\n"
				    "L0 ociwh d\n"
				    "L1 f d/lower\n");

	CHECK_STR(t_cat(t, fs, "x"), "mine");
	CHECK_INT(t_layer(t, fs, "x"), 0);
	CHECK_STR(t_ls(t, fs, "d"), "top");
	CHECK_ERR(t_lookup(fs, "d/lower"), ENOENT);
}

TEST(whiteout_then_recreate_in_a_higher_layer)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"new\"\n"
				    "L1 wh a\n"
				    "L2 f a \"old\"\n"
				    "L0 f d/new\n"
				    "L1 ociwh d\n"
				    "L2 f d/old\n");

	CHECK_STR(t_cat(t, fs, "a"), "new");
	CHECK_STR(t_ls(t, fs, "d"), "new");
	CHECK_ERR(t_lookup(fs, "d/old"), ENOENT);
}

/* ---- rule 5: opaque directories ----------------------------------------- */

TEST(opaque_trusted_xattr_hides_lower_directories)
{
	struct lfs_fs *fs = t_fs(t, "L0 opq etc\n"
				    "L0 f etc/top\n"
				    "L1 f etc/lower\n");

	CHECK_STR(t_ls(t, fs, "etc"), "top");
	CHECK_ERR(t_lookup(fs, "etc/lower"), ENOENT);
}

TEST(opaque_user_xattr_hides_lower_directories)
{
	struct lfs_fs *fs = t_fs(t, "L0 uopq etc\n"
				    "L0 f etc/top\n"
				    "L1 f etc/lower\n");

	CHECK_STR(t_ls(t, fs, "etc"), "top");
}

TEST(opaque_oci_marker_hides_lower_directories)
{
	struct lfs_fs *fs = t_fs(t, "L0 ociopq etc\n"
				    "L0 f etc/top\n"
				    "L1 f etc/lower\n");

	CHECK_STR(t_ls(t, fs, "etc"), "top");
	CHECK_ERR(t_lookup(fs, "etc/lower"), ENOENT);
}

TEST(opaque_directory_and_the_layers_above_it_contribute)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/above\n"
				    "L1 opq d\n"
				    "L1 f d/own\n"
				    "L2 f d/below\n");

	CHECK_STR(t_ls(t, fs, "d"), "above own");
}

TEST(empty_opaque_directory_is_empty)
{
	struct lfs_fs *fs = t_fs(t, "L0 ociopq d\n"
				    "L1 f d/below\n");

	CHECK_STR(t_ls(t, fs, "d"), "");
}

TEST(opaque_at_depth)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a/b/c/top\n"
				    "L1 opq a/b/c\n"
				    "L1 f a/b/c/own\n"
				    "L1 f a/b/sibling1\n"
				    "L2 f a/b/c/below\n"
				    "L2 f a/b/sibling2\n"
				    "L2 f a/x\n");

	CHECK_STR(t_ls(t, fs, "a/b/c"), "own top");
	/* only c is opaque: its parents still merge */
	CHECK_STR(t_ls(t, fs, "a/b"), "c sibling1 sibling2");
	CHECK_STR(t_ls(t, fs, "a"), "b x");
}

TEST(opacity_of_a_layer_root_is_ignored)
{
	struct lfs_fs *fs = t_fs(t, "L0 opq .\n"
				    "L0 f top\n"
				    "L1 ociopq .\n"
				    "L1 f middle\n"
				    "L2 uopq .\n"
				    "L2 f bottom\n"
				    "L3 f lowest\n");

	CHECK_STR(t_ls(t, fs, ""), "bottom lowest middle top");
	CHECK_INT(t_layer(t, fs, "lowest"), 3);
}

TEST(negative_lookup_below_an_opaque_directory)
{
	struct lfs_fs *fs = t_fs(t, "L1 opq d\n"
				    "L1 f d/visible\n"
				    "L2 f d/secret\n"
				    "L2 f d/sub/deeper\n");

	CHECK_ERR(t_lookup(fs, "d/secret"), ENOENT);
	CHECK_ERR(t_lookup(fs, "d/sub"), ENOENT);
	CHECK_ERR(t_lookup(fs, "d/sub/deeper"), ENOENT);
	CHECK_OK(t_lookup(fs, "d/visible"));
}

/* ---- rule 6: reserved names --------------------------------------------- */

TEST(wh_names_are_never_listed)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/.wh.orphan\n"
				    "L0 f d/.wh..wh.plnk\n"
				    "L0 f d/.wh.\n"
				    "L0 f d/real\n"
				    "L1 f d/.wh.lower-reserved\n"
				    "L0 ociopq o\n"
				    "L0 f o/real\n");

	CHECK_STR(t_ls(t, fs, "d"), "real");
	CHECK_STR(t_ls(t, fs, "o"), "real");
}

TEST(wh_names_cannot_be_looked_up)
{
	struct lfs_fs *fs = t_fs(t, "L0 f .wh.orphan\n"
				    "L0 f .wh..wh.plnk\n"
				    "L0 ociopq d\n"
				    "L1 f .wh.lower\n");

	CHECK_ERR(t_lookup(fs, ".wh.orphan"), ENOENT);
	CHECK_ERR(t_lookup(fs, ".wh..wh.plnk"), ENOENT);
	CHECK_ERR(t_lookup(fs, "d/.wh..wh..opq"), ENOENT);
	CHECK_ERR(t_lookup(fs, ".wh.lower"), ENOENT);
	CHECK_ERR(t_lookup(fs, ".wh.absent"), ENOENT);
}

/* ---- lookups ------------------------------------------------------------ */

TEST(absent_name_is_enoent)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\nL1 d d\n");

	CHECK_ERR(t_lookup(fs, "b"), ENOENT);
	CHECK_ERR(t_lookup(fs, "d/b"), ENOENT);
}

TEST(lookup_inside_a_file_is_enotdir)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\n");
	struct lfs_node *a = t_node(t, fs, "a"), *child = NULL;
	struct stat st;

	CHECK_ERR(lfs_lookup(fs, a, "x", &child, &st), ENOTDIR);
	CHECK(child == NULL);
}

TEST(name_longer_than_255_is_enametoolong)
{
	char name[300];
	struct lfs_node *child = NULL;
	struct stat st;

	memset(name, 'n', 255);
	name[255] = '\0';
	struct lfs_fs *fs = t_fs(t, t_printf(t, "L0 f %s \"max\"\n", name));
	CHECK_STR(t_cat(t, fs, name), "max");

	memset(name, 'n', 256);
	name[256] = '\0';
	CHECK_ERR(lfs_lookup(fs, lfs_fs_root(fs), name, &child, &st),
		  ENAMETOOLONG);
	CHECK(child == NULL);
}

/* A lower layer holding both "d" and ".wh.d": the whiteout hides the
 * layers below that layer, while the layer's own d still merges in (as in
 * the top-most layer, test name_and_its_oci_whiteout_in_one_layer).  The
 * pair is written for twenty names, so that both orders in which a layer's
 * readdir can return "d" and ".wh.d" occur. */
TEST(lower_layer_with_a_directory_and_its_whiteout_contributes)
{
	char *spec = t_printf(t, "%s", "");
	int broken = 0;
	char *which = t_printf(t, "%s", "");

	for (int i = 0; i < 20; i++)
		spec = t_printf(t, "%sL0 f d%d/top\nL1 ociwh d%d\n"
				   "L1 f d%d/middle\nL2 f d%d/bottom\n",
				spec, i, i, i, i);
	struct lfs_fs *fs = t_fs(t, spec);
	for (int i = 0; i < 20; i++) {
		char *ls = t_ls(t, fs, t_printf(t, "d%d", i));
		if (strcmp(ls, "middle top") != 0) {
			broken++;
			which = t_printf(t, "%s d%d=\"%s\"", which, i, ls);
		}
	}
	CHECKF(broken == 0, "%d of 20 listings differ from \"middle top\":%s",
	       broken, which);
}
