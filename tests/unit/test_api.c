/*
 * test_api.c - the rest of the core interface: files, links, xattrs (README
 * rule 7), node paths and references, the layer stack.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

/* ---- files --------------------------------------------------------------- */

TEST(open_for_writing_is_erofs)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"data\"\n");
	struct lfs_node *a = t_node(t, fs, "a");

	CHECK_ERR(lfs_open(fs, a, O_WRONLY), EROFS);
	CHECK_ERR(lfs_open(fs, a, O_RDWR), EROFS);
	CHECK_ERR(lfs_open(fs, a, O_RDONLY | O_TRUNC), EROFS);
	CHECK_ERR(lfs_open(fs, a, O_WRONLY | O_TRUNC), EROFS);
	CHECK_ERR(lfs_open(fs, a, O_RDWR | O_CREAT), EROFS);
	CHECK_STR(t_cat(t, fs, "a"), "data");
}

TEST(open_read_only_reads_the_providing_layer)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"upper\"\nL1 f a \"lower\"\n"
				    "L1 f b \"only lower\"\n");

	CHECK_STR(t_cat(t, fs, "a"), "upper");
	CHECK_STR(t_cat(t, fs, "b"), "only lower");
}

TEST(open_directory_read_only)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/a\n");
	int fd = lfs_open(fs, t_node(t, fs, "d"), O_RDONLY | O_DIRECTORY);

	CHECK_OK(fd);
	close(fd);
}

TEST(data_fd_is_cached_per_node_within_budget)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"cached\"\n");
	struct lfs_node *a = t_node(t, fs, "a");
	int fd1, fd2;
	bool owned1, owned2;
	char buf[16] = "";

	CHECK_OK(lfs_data_fd(fs, a, &fd1, &owned1));
	CHECK_OK(lfs_data_fd(fs, a, &fd2, &owned2));
	CHECK(!owned1 && !owned2);
	CHECK_INT(fd2, fd1);
	CHECK_INT(pread(fd1, buf, sizeof(buf) - 1, 0), 6);
	CHECK_STR(buf, "cached");
}

TEST(data_fd_over_budget_is_owned_by_the_caller)
{
	char *spec = t_printf(t, "%s", "");
	struct lfs_fs *fs;
	struct lfs_node *n;
	int fd;
	bool owned;

	/* t_open's budget is 64 cached fds */
	for (int i = 0; i < 70; i++)
		spec = t_printf(t, "%sL0 f f%d \"%d\"\n", spec, i, i);
	fs = t_fs(t, spec);
	for (int i = 0; i < 70; i++) {
		char buf[8] = "";
		n = t_node(t, fs, t_printf(t, "f%d", i));
		CHECK_OK(lfs_data_fd(fs, n, &fd, &owned));
		CHECKF(owned == (i >= 64), "f%d: owned %d", i, owned);
		CHECK(pread(fd, buf, sizeof(buf) - 1, 0) > 0);
		CHECK_INT(atoi(buf), i);
		if (owned)
			close(fd);
	}
}

TEST(data_fd_is_closed_when_its_node_dies)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a \"x\"\n");
	struct lfs_node *a;
	int fd;
	bool owned;

	CHECK_OK(t_walk(fs, "a", &a, NULL));
	CHECK_OK(lfs_data_fd(fs, a, &fd, &owned));
	CHECK(!owned);
	CHECK(fcntl(fd, F_GETFD) >= 0);
	lfs_node_unref(fs, a, 1);
	CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF);
}

TEST(readlink_returns_the_target)
{
	struct lfs_fs *fs = t_fs(t, "L0 l lnk -> target\n"
				    "L1 l lnk -> lower-target\n"
				    "L1 l abs -> /etc/passwd\n"
				    "L0 f file\n");
	char buf[8];

	CHECK_STR(t_readlink(t, fs, "lnk"), "target");
	CHECK_STR(t_readlink(t, fs, "abs"), "/etc/passwd");
	CHECK_ERR(lfs_readlink(fs, t_node(t, fs, "file"), buf, sizeof(buf)),
		  EINVAL);
}

TEST(open_of_a_symlink_does_not_follow_it)
{
	struct lfs_fs *fs = t_fs(t, "L0 l lnk -> target\nL0 f target \"t\"\n");

	CHECK_ERR(lfs_open(fs, t_node(t, fs, "lnk"), O_RDONLY), ELOOP);
}

TEST(access_for_writing_is_erofs)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\n");
	struct lfs_node *a = t_node(t, fs, "a");

	CHECK_OK(lfs_access(fs, a, R_OK));
	CHECK_ERR(lfs_access(fs, a, W_OK), EROFS);
}

/* ---- xattrs (rule 7) ------------------------------------------------------ */

TEST(user_xattrs_are_visible)
{
	struct lfs_fs *fs = t_fs(t, "L0 f file\n"
				    "L0 x file user.k=v\n"
				    "L1 f file\n"
				    "L1 x file user.lower=no\n");
	struct lfs_node *file = t_node(t, fs, "file");
	char buf[16] = "";

	CHECK_INT(lfs_getxattr(fs, file, "user.k", NULL, 0), 1);
	CHECK_INT(lfs_getxattr(fs, file, "user.k", buf, sizeof(buf)), 1);
	CHECK_STR(buf, "v");
	/* the xattrs are the providing layer's, not a merge */
	CHECK_ERR(lfs_getxattr(fs, file, "user.lower", buf, sizeof(buf)),
		  ENODATA);
}

TEST(getxattr_with_a_small_buffer_is_erange)
{
	struct lfs_fs *fs = t_fs(t, "L0 f file\nL0 x file user.k=value\n");
	char buf[2];

	CHECK_ERR(lfs_getxattr(fs, t_node(t, fs, "file"), "user.k", buf,
			       sizeof(buf)), ERANGE);
}

TEST(private_xattrs_are_hidden_from_getxattr)
{
	struct lfs_fs *fs = t_fs(t, "L0 opq d\n"
				    "L0 x d user.overlay.opaque=y\n"
				    "L0 x d trusted.overlay.custom=1\n"
				    "L0 f empty\n"
				    "L0 x empty trusted.overlay.whiteout=\n"
				    "L0 x empty user.overlay.whiteout=\n");
	struct lfs_node *d = t_node(t, fs, "d"), *e = t_node(t, fs, "empty");
	char buf[16];

	CHECK_ERR(lfs_getxattr(fs, d, "trusted.overlay.opaque", buf,
			       sizeof(buf)), ENODATA);
	CHECK_ERR(lfs_getxattr(fs, d, "trusted.overlay.opaque", NULL, 0),
		  ENODATA);
	CHECK_ERR(lfs_getxattr(fs, d, "user.overlay.opaque", buf, sizeof(buf)),
		  ENODATA);
	CHECK_ERR(lfs_getxattr(fs, d, "trusted.overlay.custom", buf,
			       sizeof(buf)), ENODATA);
	CHECK_ERR(lfs_getxattr(fs, e, "trusted.overlay.whiteout", buf,
			       sizeof(buf)), ENODATA);
	CHECK_ERR(lfs_getxattr(fs, e, "user.overlay.whiteout", buf,
			       sizeof(buf)), ENODATA);
}

/* The names in a listxattr buffer, space-separated, or "" */
static char *xattr_names(struct t *t, const char *list, ssize_t len)
{
	char *out = t_printf(t, "%s", "");

	for (ssize_t i = 0; i < len; i += (ssize_t)strlen(list + i) + 1)
		out = t_printf(t, "%s%s%s", out, out[0] ? " " : "", list + i);
	return out;
}

TEST(private_xattrs_are_hidden_from_listxattr)
{
	struct lfs_fs *fs = t_fs(t, "L0 opq d\n"
				    "L0 x d user.overlay.opaque=y\n"
				    "L0 x d user.a=1\n"
				    "L0 x d trusted.overlay.custom=1\n"
				    "L0 x d user.b=2\n"
				    "L0 x d trusted.t=3\n");
	struct lfs_node *d = t_node(t, fs, "d");
	char list[256];
	ssize_t size = lfs_listxattr(fs, d, NULL, 0);
	ssize_t len = lfs_listxattr(fs, d, list, sizeof(list));

	CHECK_OK(len);
	CHECK_INT(size, len);
	char *names = xattr_names(t, list, len);
	CHECKF(!t_contains(names, ".overlay."), "listed: %s", names);
	CHECKF(t_contains(names, "user.a") && t_contains(names, "user.b") &&
		       t_contains(names, "trusted.t"),
	       "listed: %s", names);
	/* the exact size fits, one byte less does not */
	CHECK_INT(lfs_listxattr(fs, d, list, (size_t)len), len);
	CHECK_ERR(lfs_listxattr(fs, d, list, (size_t)len - 1), ERANGE);
}

TEST(listxattr_of_only_private_xattrs_is_empty)
{
	struct lfs_fs *fs = t_fs(t, "L0 opq d\nL0 f d/x\n");
	char list[64];

	CHECK_INT(lfs_listxattr(fs, t_node(t, fs, "d"), NULL, 0), 0);
	CHECK_INT(lfs_listxattr(fs, t_node(t, fs, "d"), list, sizeof(list)), 0);
}

TEST(xattr_privacy_is_by_prefix)
{
	CHECK(lfs_xattr_is_private("trusted.overlay.opaque"));
	CHECK(lfs_xattr_is_private("user.overlay.whiteout"));
	CHECK(lfs_xattr_is_private("trusted.overlay.redirect"));
	CHECK(!lfs_xattr_is_private("user.k"));
	CHECK(!lfs_xattr_is_private("trusted.overlayx"));
	CHECK(!lfs_xattr_is_private("security.selinux"));
}

/* ---- nodes ---------------------------------------------------------------- */

TEST(node_path_of_nested_nodes)
{
	struct lfs_fs *fs = t_fs(t, "L0 f usr/share/doc/README\n"
				    "L1 d usr/share\n");
	struct lfs_node *deep = t_node(t, fs, "usr/share/doc/README");
	char buf[64];

	CHECK_OK(lfs_node_path(deep, buf, sizeof(buf)));
	CHECK_STR(buf, "usr/share/doc/README");
	CHECK_OK(lfs_node_path(t_node(t, fs, "usr/share"), buf, sizeof(buf)));
	CHECK_STR(buf, "usr/share");
	CHECK_OK(lfs_node_path(t_node(t, fs, "usr"), buf, sizeof(buf)));
	CHECK_STR(buf, "usr");
	CHECK_OK(lfs_node_path(lfs_fs_root(fs), buf, sizeof(buf)));
	CHECK_STR(buf, ".");
}

TEST(node_path_that_does_not_fit_is_enametoolong)
{
	struct lfs_fs *fs = t_fs(t, "L0 f ab/cd\n");
	struct lfs_node *n = t_node(t, fs, "ab/cd");
	char buf[16];

	CHECK_OK(lfs_node_path(n, buf, 6));   /* "ab/cd" and its NUL */
	CHECK_STR(buf, "ab/cd");
	CHECK_ERR(lfs_node_path(n, buf, 5), ENAMETOOLONG);
	CHECK_ERR(lfs_node_path(n, buf, 2), ENAMETOOLONG);
	CHECK_ERR(lfs_node_path(lfs_fs_root(fs), buf, 1), ENAMETOOLONG);
}

TEST(repeated_lookups_return_the_same_node)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/a\n");
	struct lfs_node *d = t_node(t, fs, "d"), *a1, *a2;
	struct stat st;

	CHECK_OK(lfs_lookup(fs, d, "a", &a1, &st));
	CHECK_OK(lfs_lookup(fs, d, "a", &a2, &st));
	CHECK(a1 == a2);
	/* the kernel forgets several lookups at once */
	lfs_node_unref(fs, a1, 2);
}

TEST(node_outlives_its_lookup_while_referenced)
{
	struct lfs_fs *fs = t_fs(t, "L0 f d/e/a \"alive\"\n");
	struct lfs_node *a;
	char buf[32];

	CHECK_OK(t_walk(fs, "d/e/a", &a, NULL));   /* parents unref'd */
	lfs_node_ref(fs, a);
	lfs_node_unref(fs, a, 1);
	CHECK_OK(lfs_node_path(a, buf, sizeof(buf)));
	CHECK_STR(buf, "d/e/a");
	int fd = lfs_open(fs, a, O_RDONLY);
	CHECK_OK(fd);
	CHECK_INT(read(fd, buf, sizeof(buf)), 5);
	close(fd);
	lfs_node_unref(fs, a, 1);
}

/* ---- the layer stack ------------------------------------------------------ */

TEST(stack_open_names_a_missing_layer)
{
	char *good = t_printf(t, "%s/good", t_tmp(t));
	char *missing = t_printf(t, "%s/no-such-layer", t_tmp(t));
	char *paths[] = { good, missing };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack = NULL;

	CHECK(mkdir(good, 0755) == 0);
	CHECK_ERR(lfs_stack_open(&stack, paths, 2, err), ENOENT);
	CHECKF(t_contains(err, missing), "err: %s", err);
	CHECK(stack == NULL);
}

TEST(stack_open_names_a_layer_that_is_not_a_directory)
{
	char *good = t_printf(t, "%s/good", t_tmp(t));
	char *file = t_printf(t, "%s/a-file", t_tmp(t));
	char *paths[] = { good, file, good };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack = NULL;

	CHECK(mkdir(good, 0755) == 0);
	int fd = open(file, O_WRONLY | O_CREAT, 0644);
	CHECK(fd >= 0);
	close(fd);
	CHECK_ERR(lfs_stack_open(&stack, paths, 3, err), ENOTDIR);
	CHECKF(t_contains(err, file), "err: %s", err);
	CHECK(stack == NULL);
}

TEST(stack_open_refuses_no_layers)
{
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *stack = NULL;

	CHECK_ERR(lfs_stack_open(&stack, NULL, 0, err), EINVAL);
	CHECK(err[0] != '\0');
}

TEST(stack_layers_keep_order_and_digests)
{
	const char *hex = "0123456789abcdef0123456789abcdef"
			  "0123456789abcdef0123456789abcdef";
	char *a = t_printf(t, "%s/%s", t_tmp(t), hex);
	char *b = t_printf(t, "%s/docker/%s/diff", t_tmp(t), hex);
	char *c = t_printf(t, "%s/plain", t_tmp(t));
	char *paths[] = { a, b, c };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *s;

	CHECK(mkdir(a, 0755) == 0);
	CHECK(mkdir(t_printf(t, "%s/docker", t_tmp(t)), 0755) == 0);
	CHECK(mkdir(t_printf(t, "%s/docker/%s", t_tmp(t), hex), 0755) == 0);
	CHECK(mkdir(b, 0755) == 0);
	CHECK(mkdir(c, 0755) == 0);
	CHECK_OK(lfs_stack_open(&s, paths, 3, err));
	CHECK_INT(s->n_layers, 3);
	CHECK_INT(s->n_filesystems, 1);
	CHECK_STR(s->layers[0].path, a);
	CHECK_STR(s->layers[2].path, c);
	CHECK_STR(s->layers[0].digest, hex);
	CHECK_STR(s->layers[1].digest, hex);
	CHECK_STR(s->layers[2].digest, "");
	lfs_stack_free(s);
}

TEST(digest_from_path)
{
	const char *hex = "0123456789abcdef0123456789abcdef"
			  "0123456789abcdef0123456789abcdef";
	char d[65];

	CHECK(lfs_layer_digest_from_path(hex, d));
	CHECK_STR(d, hex);
	memset(d, 0, sizeof(d));
	CHECK(lfs_layer_digest_from_path(t_printf(t, "/store/%s", hex), d));
	CHECK_STR(d, hex);
	memset(d, 0, sizeof(d));
	CHECK(lfs_layer_digest_from_path(t_printf(t, "/o2/%s/diff", hex), d));
	CHECK_STR(d, hex);
	memset(d, 0, sizeof(d));
	CHECK(lfs_layer_digest_from_path(t_printf(t, "/o2/%s/diff/", hex), d));
	CHECK_STR(d, hex);
}

TEST(digest_from_path_refuses_non_digests)
{
	const char *hex = "0123456789abcdef0123456789abcdef"
			  "0123456789abcdef0123456789abcdef";
	char d[65] = "untouched";

	/* uppercase */
	CHECK(!lfs_layer_digest_from_path(
		"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
		d));
	/* 63 and 65 digits */
	CHECK(!lfs_layer_digest_from_path(t_printf(t, "/s/%.63s", hex), d));
	CHECK(!lfs_layer_digest_from_path(t_printf(t, "/s/%s0", hex), d));
	/* not hex */
	CHECK(!lfs_layer_digest_from_path(t_printf(t, "/s/%.63sg", hex), d));
	/* the digest must be the last component (or before "diff") */
	CHECK(!lfs_layer_digest_from_path(t_printf(t, "/s/%s/other", hex), d));
	CHECK(!lfs_layer_digest_from_path(t_printf(t, "/s/%s/diff/x", hex), d));
	CHECK(!lfs_layer_digest_from_path("diff", d));
	CHECK(!lfs_layer_digest_from_path("/", d));
	CHECK(!lfs_layer_digest_from_path("", d));
	CHECK_STR(d, "untouched");
}

TEST(fs_reports_its_stack_and_read_only_policy)
{
	struct lfs_fs *fs = t_fs(t, "L0 f a\nL3 f b\n");
	struct statvfs sv;

	CHECK_INT(lfs_fs_stack(fs)->n_layers, 4);
	CHECK(lfs_fs_is_read_only(fs));
	CHECK_OK(lfs_statfs(fs, &sv));
	CHECK(lfs_node_is_dir(lfs_fs_root(fs)));
	CHECK_INT(lfs_node_layer(lfs_fs_root(fs)), 0);
}

TEST(stack_digest_read_through_a_layer_symlink)
{
	/* containers/storage passes short links: l/<id> -> ../<digest>/diff */
	const char *hex = "fedcba9876543210fedcba9876543210"
			  "fedcba9876543210fedcba9876543210";
	char *diff = t_printf(t, "%s/%s/diff", t_tmp(t), hex);
	char *link = t_printf(t, "%s/l/SHORTID", t_tmp(t));
	char *paths[] = { link };
	char err[LFS_ERRLEN] = "";
	struct lfs_stack *s;

	CHECK(mkdir(t_printf(t, "%s/%s", t_tmp(t), hex), 0755) == 0);
	CHECK(mkdir(diff, 0755) == 0);
	CHECK(mkdir(t_printf(t, "%s/l", t_tmp(t)), 0755) == 0);
	CHECK(symlink(t_printf(t, "../%s/diff", hex), link) == 0);
	CHECK_OK(lfs_stack_open(&s, paths, 1, err));
	CHECK_STR(s->layers[0].path, link);
	CHECK_STR(s->layers[0].digest, hex);
	lfs_stack_free(s);
}
