/*
 * test_options.c - the fuse-overlayfs command line (lfs_options_parse) and
 * lowerdir splitting (lfs_split_lowerdir).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static void free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void free_opts(void *a, void *b)
{
	(void)b;
	lfs_options_free(a);
	free(a);
}

/* Parse a NULL-terminated argv (argv[0] is added); the result is freed
 * when the test ends.  Returns the parser's result, 0 or -errno. */
static int parse(struct t *t, struct lfs_options **ret, char *err,
		 const char *first, ...)
{
	char *argv[32];
	int argc = 0;
	va_list ap;
	struct lfs_options *o = calloc(1, sizeof(*o));

	if (!o)
		FAIL("out of memory");
	argv[argc++] = "layerfs";
	va_start(ap, first);
	for (const char *a = first; a && argc < 31; a = va_arg(ap, const char *))
		argv[argc++] = (char *)a;
	va_end(ap);
	argv[argc] = NULL;
	int r = lfs_options_parse(argc, argv, o, err);
	if (r == 0)
		t_defer(t, free_opts, o, NULL);
	else
		free(o);
	*ret = r == 0 ? o : NULL;
	return r;
}

/* The strings of a list joined by " | " */
static char *join(struct t *t, char **v, size_t n)
{
	char *out = t_printf(t, "%s", "");

	for (size_t i = 0; i < n; i++)
		out = t_printf(t, "%s%s%s", out, i ? " | " : "", v[i]);
	return out;
}

/* ---- lfs_split_lowerdir --------------------------------------------------- */

TEST(split_lowerdir_at_colons)
{
	char **v;
	size_t n;

	CHECK_OK(lfs_split_lowerdir("/a:/b:/c", &v, &n));
	CHECK_STR(join(t, v, n), "/a | /b | /c");
	free_list(v, n);
	CHECK_OK(lfs_split_lowerdir("/only", &v, &n));
	CHECK_STR(join(t, v, n), "/only");
	free_list(v, n);
}

TEST(split_lowerdir_backslash_escapes_a_colon)
{
	char **v;
	size_t n;

	CHECK_OK(lfs_split_lowerdir("/a:/b\\:c:/d", &v, &n));
	CHECK_STR(join(t, v, n), "/a | /b:c | /d");
	free_list(v, n);
	/* an escaped backslash before a separator */
	CHECK_OK(lfs_split_lowerdir("/a\\\\:/b", &v, &n));
	CHECK_STR(join(t, v, n), "/a\\ | /b");
	free_list(v, n);
}

TEST(split_lowerdir_refuses_empty_elements)
{
	const char *bad[] = { "", ":", "/a::/b", ":/a", "/a:" };
	char **v = NULL;
	size_t n = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		int r = lfs_split_lowerdir(bad[i], &v, &n);
		CHECKF(r == -EINVAL, "\"%s\": %s, want EINVAL", bad[i],
		       r < 0 ? t_errname(-r) : "accepted");
	}
}

/* ---- lfs_options_parse ---------------------------------------------------- */

TEST(options_lowerdir_and_mountpoint)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-o", "lowerdir=/top:/mid:/base", "/mnt",
		       NULL));
	CHECK_STR(join(t, o->lowerdirs, o->n_lowerdirs), "/top | /mid | /base");
	CHECK_STR(o->mountpoint, "/mnt");
	CHECK(o->upperdir == NULL && o->workdir == NULL);
	CHECK_INT(o->n_unknown_opts, 0);
	CHECK(!o->foreground && !o->debug);
}

TEST(options_escaped_colon_and_comma_in_lowerdir)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-o", "lowerdir=/a\\:b:/c\\,d,ro", "/mnt",
		       NULL));
	CHECK_STR(join(t, o->lowerdirs, o->n_lowerdirs), "/a:b | /c,d");
	CHECK_STR(join(t, o->fuse_opts, o->n_fuse_opts), "ro");
}

TEST(options_attached_o_and_repeated_o)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-olowerdir=/a", "-o", "allow_other",
		       "-f", "/mnt", NULL));
	CHECK_STR(join(t, o->lowerdirs, o->n_lowerdirs), "/a");
	CHECK_STR(join(t, o->fuse_opts, o->n_fuse_opts), "allow_other");
	CHECK(o->foreground);
}

TEST(options_refuse_an_empty_lowerdir)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=", "/mnt", NULL), EINVAL);
	CHECKF(t_contains(err, "lowerdir"), "err: %s", err);
	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir", "/mnt", NULL), EINVAL);
	CHECK_ERR(parse(t, &o, err, "/mnt", NULL), EINVAL);
	CHECKF(t_contains(err, "lowerdir"), "err: %s", err);
}

TEST(options_refuse_an_empty_lowerdir_element)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a::/b", "/mnt", NULL),
		  EINVAL);
	CHECKF(t_contains(err, "lowerdir"), "err: %s", err);
	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a:", "/mnt", NULL), EINVAL);
}

TEST(options_refuse_a_timeout_that_is_not_a_number)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,timeout=abc", "/mnt",
			NULL), EINVAL);
	CHECKF(t_contains(err, "timeout") && t_contains(err, "abc"), "err: %s",
	       err);
	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,timeout=", "/mnt",
			NULL), EINVAL);
	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,timeout=-1", "/mnt",
			NULL), EINVAL);
}

TEST(options_accept_a_timeout_in_seconds)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-o", "lowerdir=/a,timeout=2.5", "/mnt",
		       NULL));
	CHECK(o->timeout == 2.5);
}

TEST(options_refuse_upperdir_without_workdir)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,upperdir=/u", "/mnt",
			NULL), EINVAL);
	CHECKF(t_contains(err, "workdir"), "err: %s", err);
	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,workdir=/w", "/mnt",
			NULL), EINVAL);
	CHECKF(t_contains(err, "upperdir"), "err: %s", err);
}

TEST(options_accept_upperdir_with_workdir)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-o", "lowerdir=/a,upperdir=/u,workdir=/w",
		       "/mnt", NULL));
	CHECK_STR(o->upperdir, "/u");
	CHECK_STR(o->workdir, "/w");
}

TEST(options_collect_unknown_options)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	/* podman's SELinux label arrives split at its comma */
	CHECK_OK(parse(t, &o, err, "-o",
		       "lowerdir=/a,context=\"system_u:object_r:"
		       "container_file_t:s0:c1,c2\",volatile,"
		       "xattr_permissions=2",
		       "/mnt", NULL));
	CHECK_STR(join(t, o->unknown_opts, o->n_unknown_opts),
		  "context=\"system_u:object_r:container_file_t:s0:c1 | c2\"");
	CHECK_STR(join(t, o->lowerdirs, o->n_lowerdirs), "/a");
	CHECK_INT(o->n_fuse_opts, 0);
	/* The engine options layerfs knows are taken, not warned about. */
	CHECK(o->volatile_upper);
	CHECK_INT(o->xattr_permissions, 2);
}

TEST(options_parse_ownership_options)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-o",
		       "lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,"
		       "gidmapping=0:1000:1,squash_to_uid=7,squash_to_gid=8,"
		       "static_nlink,noacl,noxattrs,threaded=0,writeback=1",
		       "/mnt", NULL));
	CHECK_STR(o->uidmapping, "0:1000:1:1:100000:65536");
	CHECK_STR(o->gidmapping, "0:1000:1");
	CHECK_INT(o->squash_to_uid, 7);
	CHECK_INT(o->squash_to_gid, 8);
	CHECK(o->static_nlink && o->noacl && o->noxattrs && !o->threaded &&
	      o->writeback);
	CHECK_INT(o->n_unknown_opts, 0);
}

TEST(options_refuse_bad_ownership_values)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,xattr_permissions=3",
			"/mnt", NULL), EINVAL);
	CHECKF(t_contains(err, "xattr_permissions"), "err: %s", err);
	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a,squash_to_uid=x",
			"/mnt", NULL), EINVAL);
	CHECKF(t_contains(err, "squash_to_uid"), "err: %s", err);
}

TEST(id_maps_parse_triples_and_refuse_the_rest)
{
	struct lfs_id_range *v;
	size_t n;

	CHECK_OK(lfs_parse_id_map("0:1000:1:1:100000:65536", &v, &n));
	CHECK_INT(n, 2);
	CHECK_INT(v[1].disk, 1);
	CHECK_INT(v[1].shown, 100000);
	CHECK_INT(v[1].len, 65536);
	free(v);
	CHECK_ERR(lfs_parse_id_map("0:1000", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map("0:1000:0", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map("a:b:c", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map("", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map(":", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map("0:-1:5", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map("0: 1:5", &v, &n), EINVAL);
	CHECK_ERR(lfs_parse_id_map("0:1:5:7", &v, &n), EINVAL);
}

/* containers/storage writes the maps of --userns=keep-id and --uidmap
 * with a leading ':'; fuse-overlayfs skips empty fields, so do we. */
TEST(id_maps_skip_empty_fields_as_podman_writes_them)
{
	struct lfs_id_range *v;
	size_t n;

	CHECK_OK(lfs_parse_id_map(":0:1:4000:4000:0:1:4001:4001:61536", &v,
				  &n));
	CHECK_INT(n, 3);
	CHECK_INT(v[0].disk, 0);
	CHECK_INT(v[0].shown, 1);
	CHECK_INT(v[0].len, 4000);
	CHECK_INT(v[2].disk, 4001);
	CHECK_INT(v[2].shown, 4001);
	CHECK_INT(v[2].len, 61536);
	free(v);
	CHECK_OK(lfs_parse_id_map("0:0:65536:", &v, &n));
	CHECK_INT(n, 1);
	free(v);
}

TEST(options_collect_fuse_mount_options)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-o",
		       "allow_other,lowerdir=/a,ro,nodev,fsname=img", "/mnt",
		       NULL));
	CHECK_STR(join(t, o->fuse_opts, o->n_fuse_opts),
		  "allow_other | ro | nodev | fsname=img");
	CHECK_INT(o->n_unknown_opts, 0);
}

TEST(options_refuse_o_without_an_argument)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "/mnt", "-o", NULL), EINVAL);
	CHECKF(t_contains(err, "-o"), "err: %s", err);
}

TEST(options_accept_source_and_mountpoint)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "overlay", "/mnt", "-o", "lowerdir=/a",
		       NULL));
	CHECK_STR(o->mountpoint, "/mnt");
}

TEST(options_refuse_a_third_positional_argument)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a", "overlay", "/mnt",
			"/extra", NULL), EINVAL);
	CHECKF(t_contains(err, "/extra"), "err: %s", err);
}

TEST(options_refuse_a_missing_mountpoint)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a", NULL), EINVAL);
	CHECK(err[0] != '\0');
}

TEST(options_refuse_unknown_dash_arguments)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_ERR(parse(t, &o, err, "-o", "lowerdir=/a", "--bogus", "/mnt",
			NULL), EINVAL);
	CHECKF(t_contains(err, "--bogus"), "err: %s", err);
}

TEST(options_debug_implies_foreground)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "-d", "-o", "lowerdir=/a", "/mnt", NULL));
	CHECK(o->debug && o->foreground);
	CHECK_OK(parse(t, &o, err, "-o", "lowerdir=/a,debug", "/mnt", NULL));
	CHECK(o->debug && o->foreground);
}

TEST(options_version_and_help_need_nothing_else)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options *o;

	CHECK_OK(parse(t, &o, err, "--version", NULL));
	CHECK(o->show_version);
	CHECK_OK(parse(t, &o, err, "-h", NULL));
	CHECK(o->show_help);
}

TEST(options_failure_leaves_the_result_untouched)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_options o;
	char *argv[] = { "layerfs", "-o", "timeout=x,lowerdir=/a", "/mnt",
			 NULL };

	memset(&o, 0xa5, sizeof(o));
	CHECK_ERR(lfs_options_parse(4, argv, &o, err), EINVAL);
	for (size_t i = 0; i < sizeof(o); i++)
		CHECKF(((unsigned char *)&o)[i] == 0xa5,
		       "byte %zu of the result was written", i);
}
