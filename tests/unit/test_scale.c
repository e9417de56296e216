/*
 * test_scale.c - deep stacks: 128 layers (Docker's limit) and 1,000 (past
 * kernel overlayfs's 500).  Correctness only; nothing here is timed.
 *
 * Every layer i holds:
 *   shared            "i"             only layer 0's is visible
 *   d/own<i>                          d merges across all layers
 *   deep/a/b/c/                       a directory in every layer
 * and in addition:
 *   bottom-only       in the bottom layer only, deep/a/b/c/bottom too
 *   gone              in every layer below W, whited out at W (char 0/0)
 *   o/                opaque at layer P: o/own<i> for every i, only
 *                     layers 0..P visible
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

struct deep {
	struct lfs_fs *fs;
	int n, whiteout_at, opaque_at;
};

static struct deep deep_stack(struct t *t, int n)
{
	size_t cap = (size_t)n * 200 + 256, len = 0;
	char *spec = t_own(t, malloc(cap));
	struct deep s = { .n = n, .whiteout_at = n / 2, .opaque_at = n / 10 };

#define ADD(...) \
	(len += (size_t)snprintf(spec + len, cap - len, __VA_ARGS__))
	for (int i = 0; i < n; i++) {
		ADD("L%d f shared \"%d\"\n", i, i);
		ADD("L%d f d/own%d\n", i, i);
		ADD("L%d d deep/a/b/c\n", i);
		ADD("L%d f o/own%d\n", i, i);
		if (i == s.opaque_at)
			ADD("L%d opq o\n", i);
		if (i == s.whiteout_at)
			ADD("L%d wh gone\n", i);
		else if (i > s.whiteout_at)
			ADD("L%d f gone\n", i);
	}
	ADD("L%d f bottom-only \"bottom\"\n", n - 1);
	ADD("L%d f deep/a/b/c/bottom \"deep bottom\"\n", n - 1);
#undef ADD
	if (len >= cap)
		FAIL("spec buffer too small");
	s.fs = t_fs(t, spec);
	return s;
}

static void check_deep_stack(struct t *t, struct deep s)
{
	struct lfs_fs *fs = s.fs;

	CHECK_INT(lfs_fs_stack(fs)->n_layers, s.n);
	/* a bottom-only name is found, from the bottom layer */
	CHECK_STR(t_cat(t, fs, "bottom-only"), "bottom");
	CHECK_INT(t_layer(t, fs, "bottom-only"), s.n - 1);
	CHECK_STR(t_cat(t, fs, "deep/a/b/c/bottom"), "deep bottom");
	CHECK_INT(t_layer(t, fs, "deep/a/b/c/bottom"), s.n - 1);
	CHECK_INT(t_layer(t, fs, "deep/a/b/c"), 0);
	CHECK_INT(t_stat(t, fs, "deep/a/b/c").st_nlink, 1);
	/* the top-most of n copies wins */
	CHECK_STR(t_cat(t, fs, "shared"), "0");
	/* absent everywhere */
	CHECK_ERR(t_lookup(fs, "nowhere"), ENOENT);
	CHECK_ERR(t_lookup(fs, "deep/a/b/c/nowhere"), ENOENT);
	/* a whiteout in the middle hides all the layers below it */
	CHECK_ERR(t_lookup(fs, "gone"), ENOENT);
	/* d merges all n layers: n names, each once, each from its layer */
	struct t_dirent *v;
	size_t nv = t_readdir(t, fs, "d", &v);
	CHECK_INT(nv, 2 + (size_t)s.n);
	char *seen = t_own(t, calloc((size_t)s.n, 1));
	for (size_t i = 2; i < nv; i++) {
		int k = atoi(v[i].name + 3);
		CHECKF(strncmp(v[i].name, "own", 3) == 0 && k >= 0 && k < s.n &&
			       !seen[k],
		       "unexpected or repeated d/%s", v[i].name);
		seen[k] = 1;
	}
	CHECK_INT(t_layer(t, fs, "d/own0"), 0);
	CHECK_INT(t_layer(t, fs, t_printf(t, "d/own%d", s.n - 1)), s.n - 1);
	/* the opaque layer and those above contribute, none below */
	nv = t_readdir(t, fs, "o", &v);
	CHECK_INT(nv, 2 + (size_t)s.opaque_at + 1);
	CHECK_OK(t_lookup(fs, t_printf(t, "o/own%d", s.opaque_at)));
	CHECK_ERR(t_lookup(fs, t_printf(t, "o/own%d", s.opaque_at + 1)), ENOENT);
	CHECK_ERR(t_lookup(fs, t_printf(t, "o/own%d", s.n - 1)), ENOENT);
}

TEST(stack_of_128_layers)
{
	check_deep_stack(t, deep_stack(t, 128));
}

TEST(stack_of_1000_layers)
{
	check_deep_stack(t, deep_stack(t, 1000));
}
