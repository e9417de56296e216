/*
 * test_explain.c - lfs_layer_view: what one layer alone says about a path,
 * for every on-disk format (layerctl which shows these to people).
 */
#include <errno.h>
#include <string.h>

#include "harness.h"

static struct lfs_layer_view view(struct t *t, struct lfs_fs *fs,
				  uint32_t layer, const char *path)
{
	struct lfs_layer_view v;

	CHECK_OK(lfs_layer_view(lfs_fs_stack(fs), layer, path, &v));
	return v;
}

TEST(layer_view_names_objects_and_each_whiteout_format)
{
	struct lfs_fs *fs = t_fs(t,
		"L0 wh etc/chr\n"
		"L0 ociwh etc/oci\n"
		"L0 xwh etc/x\n"
		"L0 f etc/file \"0\"\n"
		"L1 f etc/chr \"1\"\n"
		"L1 l etc/link -> file\n");
	struct lfs_layer_view v;

	v = view(t, fs, 0, "etc/chr");
	CHECK_INT(v.what, LFS_VIEW_WHITEOUT);
	CHECK(strstr(v.format, "0/0"));
	v = view(t, fs, 0, "/etc/oci");
	CHECK_INT(v.what, LFS_VIEW_WHITEOUT);
	CHECK(strstr(v.format, "OCI"));
	v = view(t, fs, 0, "etc/x");
	CHECK_INT(v.what, LFS_VIEW_WHITEOUT);
	CHECK(strstr(v.format, "xattr"));
	v = view(t, fs, 0, "etc/file");
	CHECK_INT(v.what, LFS_VIEW_OBJECT);
	CHECK_INT(v.type, DT_REG);
	v = view(t, fs, 1, "etc/chr");
	CHECK_INT(v.what, LFS_VIEW_OBJECT);
	v = view(t, fs, 1, "etc/link");
	CHECK_INT(v.type, DT_LNK);
	v = view(t, fs, 1, "etc/absent");
	CHECK_INT(v.what, LFS_VIEW_ABSENT);
	CHECK(v.parent_exists);
	v = view(t, fs, 1, "nodir/x");
	CHECK(!v.parent_exists);
	CHECK_ERR(lfs_layer_view(lfs_fs_stack(fs), 2, "etc", &v), EINVAL);
}

TEST(layer_view_reports_opaque_parents_in_both_formats)
{
	struct lfs_fs *fs = t_fs(t,
		"L0 opq a\n"
		"L0 f a/x \"0\"\n"
		"L1 ociopq b\n"
		"L1 f b/y \"1\"\n"
		"L2 f a/x \"2\"\n");

	CHECK(view(t, fs, 0, "a/x").parent_opaque);
	CHECK(view(t, fs, 1, "b/y").parent_opaque);
	CHECK(!view(t, fs, 2, "a/x").parent_opaque);
}
